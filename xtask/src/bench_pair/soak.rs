//! The soak of the pair benchmark: every core kept busy while the pair is
//! up, and the DEAD reports counted in both servers' logs.

use super::*;

/// Threads that keep every core busy until dropped.
struct Burners {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Burners {
    fn start(n: usize) -> Burners {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..n)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut x = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        for i in 0..100_000u64 {
                            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
                        }
                    }
                })
            })
            .collect();
        Burners { stop, threads }
    }
}

impl Drop for Burners {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// (busy, total) jiffies over all cores, from `/proc/stat`.
fn cpu_jiffies() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is
    // already in user).
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3)? + fields.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

pub(super) fn count_in_log(path: &Path, from: u64, needle: &str) -> usize {
    let text = std::fs::read(path).unwrap_or_default();
    let from = (from as usize).min(text.len());
    String::from_utf8_lossy(&text[from..])
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

pub(super) fn log_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// Saturates every core for `secs` seconds while the pair is up; counts the
/// DEAD (and LIVE) reports in both logs and how often `/health` said
/// anything but `live`.
pub(super) fn soak(site: &Site, secs: u64) -> Result<Value> {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let logs = [site.log("gw-a"), site.log("gw-b")];
    let offsets = [log_len(&logs[0]), log_len(&logs[1])];
    let before = cpu_jiffies();
    let burners = Burners::start(2 * cores);
    eprintln!(
        "bench pair: soak: {} busy-loop threads on {cores} cores for {secs} s",
        2 * cores
    );
    let started = Instant::now();
    let (mut probes, mut not_live) = (0u64, 0u64);
    while started.elapsed() < Duration::from_secs(secs) {
        for gw in [&site.a, &site.b] {
            probes += 1;
            if pair_word(&gw.plain).map_or(true, |w| w != "live") {
                not_live += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let took = started.elapsed();
    let after = cpu_jiffies();
    drop(burners);
    let busy = match (before, after) {
        (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => {
            Some(100.0 * (b1 - b0) as f64 / (t1 - t0) as f64)
        }
        _ => None,
    };
    let dead: Vec<usize> = logs
        .iter()
        .zip(offsets)
        .map(|(l, o)| count_in_log(l, o, "unreachable since"))
        .collect();
    let live: Vec<usize> = logs
        .iter()
        .zip(offsets)
        .map(|(l, o)| count_in_log(l, o, "is back (LIVE)"))
        .collect();
    Ok(json!({
        "seconds": took.as_secs_f64(),
        "load": format!("{} busy-loop threads (2 x {cores} cores)", 2 * cores),
        "cpu_busy_percent": busy,
        "dead_reports": { "gw-a": dead[0], "gw-b": dead[1] },
        "live_reports": { "gw-a": live[0], "gw-b": live[1] },
        "health_probes": probes,
        "health_not_live": not_live,
    }))
}
