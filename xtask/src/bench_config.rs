//! `cargo xtask bench config`: how long a configuration change committed on
//! the primary takes until the secondary has applied it, set beside the
//! admin command's own round trip and a loopback echo measured in the same
//! run. It writes nothing into the repository and talks only to loopback.
//!
//! Two release `gateway` processes, `gw-a` (03) and `gw-b` (04), paired with
//! `gateway pair init` / `gateway pair join` on ports the OS chose, logging
//! one JSON object per line. Once both are LIVE and hold the same
//! configuration version with sync `ok`, the bench makes one change after
//! another on `gw-a` (`gateway device add bench-N`, which talks to the
//! running instance's admin socket), pausing briefly after each, and reads
//! both servers' output as it comes: `gw-a`'s `configuration changed`
//! (committed and loaded) and `gw-b`'s `configuration applied from the
//! primary` (applied in one transaction and loaded), matched by version.
//! Both servers run on this machine, so their log timestamps share one
//! clock, at the logs' millisecond precision. The bench also stamps each
//! line with its own monotonic clock when it reads it: finer digits, but
//! with the delay before its reading thread runs.
//!
//! The site (configuration, data directories, logs) is a throw-away
//! directory under the system's temporary directory. Every wait is bounded,
//! and both servers are stopped when their guards are dropped, on failure
//! too.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufRead, BufReader, PipeReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::Result;
use crate::measure::{cpu_jiffies, io, summary, utc_ns};
use crate::pair_site::{STEP_LIMIT, stop, timed, wait_in_sync};
use crate::site::Tools;

/// What the primary logs once a change is committed and loaded.
const CHANGED: &str = "configuration changed";
/// What the secondary logs once a pushed snapshot is applied and loaded.
const APPLIED: &str = "configuration applied from the primary";
/// The longest the whole series of changes may take.
const RUN_LIMIT: Duration = Duration::from_secs(300);
/// The goal for the propagation's p99 on loopback.
const GOAL_P99_MS: f64 = 20.0;

struct Options {
    changes: u32,
    pause: Duration,
    echo_bytes: usize,
}

pub const USAGE: &str =
    "  config: [--changes N (200)] [--pause-ms N (20; 0: none)] [--echo-bytes N (65536)]";

fn parse(args: &[String]) -> Result<Options> {
    let mut o = Options {
        changes: 200,
        pause: Duration::from_millis(20),
        echo_bytes: 64 * 1024,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| -> Result<u64> {
            it.next()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("{name} needs a number"))
        };
        match a.as_str() {
            // Licenses carry at most 65535 seats; the series must also end
            // well within RUN_LIMIT.
            "--changes" => {
                o.changes = u32::try_from(value("--changes")?)
                    .ok()
                    .filter(|n| (1..=5000).contains(n))
                    .ok_or("--changes needs a number from 1 to 5000")?;
            }
            "--pause-ms" => o.pause = Duration::from_millis(value("--pause-ms")?.min(1000)),
            "--echo-bytes" => {
                o.echo_bytes = usize::try_from(value("--echo-bytes")?)
                    .ok()
                    .filter(|n| (1..=16 << 20).contains(n))
                    .ok_or("--echo-bytes needs a number from 1 to 16777216")?;
            }
            other => {
                return Err(format!(
                    "unknown option `{other}` for bench config\nusage: cargo xtask bench config [options]\n{USAGE}"
                ));
            }
        }
    }
    Ok(o)
}

/// A line of interest from a server's output, stamped when the bench read
/// it.
struct Seen {
    at: Instant,
    line: Value,
}

type Feed = Arc<Mutex<Vec<Seen>>>;

fn lock(feed: &Feed) -> std::sync::MutexGuard<'_, Vec<Seen>> {
    feed.lock().unwrap_or_else(|p| p.into_inner())
}

/// One running `gateway serve`, stopped when dropped: `SIGTERM`, then
/// `SIGKILL` if it has not ended within a few seconds; then the thread that
/// reads its output is joined (the pipe closes when the process ends).
struct Server {
    name: &'static str,
    child: Child,
    feed: Feed,
    reader: Option<JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        stop(&mut self.child, "-TERM");
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

/// Copies a server's output into `log` line by line, and keeps the two
/// lines this bench measures, stamped as soon as each is read. The gateway
/// writes each event to stderr with one unbuffered write, so a line is
/// readable here the moment it is logged.
fn follow(pipe: PipeReader, mut log: File, feed: Feed) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut pipe = BufReader::new(pipe);
        let mut line = String::new();
        loop {
            line.clear();
            match pipe.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let at = Instant::now();
            let _ = log.write_all(line.as_bytes());
            if (line.contains(CHANGED) || line.contains(APPLIED))
                && let Ok(v) = serde_json::from_str::<Value>(line.trim_end())
                && (v["message"] == CHANGED || v["message"] == APPLIED)
            {
                lock(&feed).push(Seen { at, line: v });
            }
        }
    })
}

/// The two instances and their configuration file.
struct Site {
    tools: Tools,
    dir: PathBuf,
    config: PathBuf,
}

impl Site {
    fn cli(&self, instance: &str, args: &[&str]) -> Result<String> {
        let (out, _) = timed(self.tools.gateway(&self.config, instance).args(args))?;
        Ok(out)
    }

    fn log(&self, instance: &str) -> PathBuf {
        self.dir.join(format!("{instance}.log"))
    }

    /// Starts `gateway serve` for `name` with its output read by this bench
    /// (and copied to its log), and waits until its run file appears.
    fn start(&self, name: &'static str) -> Result<Server> {
        let (reader, writer) = std::io::pipe().map_err(io)?;
        let child = {
            // The command holds the pipe's writing end until it is dropped:
            // only the server's own copies may keep it open, or the reader
            // never sees the end of the output.
            let mut cmd = self.tools.gateway(&self.config, name);
            cmd.arg("serve")
                // The environment must not change the format or hide the
                // info lines this bench reads.
                .env("SCANGW_LOG_FORMAT", "json")
                .env_remove("RUST_LOG")
                .stdin(Stdio::null())
                .stdout(writer.try_clone().map_err(io)?)
                .stderr(writer);
            cmd.spawn()
                .map_err(|e| format!("cannot start {name}: {e}"))?
        };
        let feed = Feed::default();
        let log = File::create(self.log(name)).map_err(io)?;
        let mut server = Server {
            name,
            child,
            feed: feed.clone(),
            reader: Some(follow(reader, log, feed)),
        };
        let run_file = self.dir.join(name).join(format!("{name}.run.json"));
        let log = self.log(name);
        crate::pair_site::wait_started(&mut server.child, &run_file, name, &log, |_| true)?;
        Ok(server)
    }
}

/// The baseline: a TCP echo over loopback through one open connection (as
/// the pair link is one open connection), Nagle off on both ends.
struct Echo {
    stream: TcpStream,
    payload: Vec<u8>,
    back: Vec<u8>,
    server: Option<JoinHandle<()>>,
}

impl Echo {
    fn start(bytes: usize) -> Result<Echo> {
        let listener = TcpListener::bind("127.0.0.1:0").map_err(io)?;
        let addr = listener.local_addr().map_err(io)?;
        let server = std::thread::spawn(move || {
            if let Ok((mut s, _)) = listener.accept() {
                let _ = s.set_nodelay(true);
                let mut buf = vec![0u8; bytes];
                while s.read_exact(&mut buf).is_ok() && s.write_all(&buf).is_ok() {}
            }
        });
        let stream = TcpStream::connect(addr).map_err(io)?;
        stream.set_nodelay(true).map_err(io)?;
        stream.set_read_timeout(Some(STEP_LIMIT)).map_err(io)?;
        stream.set_write_timeout(Some(STEP_LIMIT)).map_err(io)?;
        let mut echo = Echo {
            stream,
            payload: (0..bytes).map(|i| i as u8).collect(),
            back: vec![0u8; bytes],
            server: Some(server),
        };
        // The first round trips grow the connection's buffers; not counted.
        for _ in 0..5 {
            echo.round_trip()?;
        }
        Ok(echo)
    }

    fn round_trip(&mut self) -> Result<Duration> {
        let started = Instant::now();
        self.stream.write_all(&self.payload).map_err(io)?;
        self.stream.read_exact(&mut self.back).map_err(io)?;
        let took = started.elapsed();
        if self.back != self.payload {
            return Err("the loopback echo came back altered".into());
        }
        Ok(took)
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Both);
        if let Some(server) = self.server.take() {
            let _ = server.join();
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `later - earlier` in milliseconds, negative when `later` is earlier: the
/// bench reads each server's output on its own thread, and a thread that
/// was not scheduled for a moment reads its line late.
fn ms_between(earlier: Instant, later: Instant) -> f64 {
    match later.checked_duration_since(earlier) {
        Some(d) => ms(d),
        None => -ms(earlier.duration_since(later)),
    }
}

/// Sorted versions as ranges: `3, 7–9, 12`.
fn ranges(versions: &[u64]) -> String {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &v in versions {
        match out.last_mut() {
            Some((_, end)) if *end + 1 == v => *end = v,
            _ => out.push((v, v)),
        }
    }
    out.iter()
        .map(|&(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}–{b}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A field the gateway logs as a string (or, should that change, a number).
fn number(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| v.as_str()?.parse().ok())
}

/// One logged end of a change: the log's timestamp and when the bench read
/// the line.
struct End {
    logged_ns: i64,
    digits: usize,
    read: Instant,
}

fn end(seen: &Seen) -> Option<(u64, End)> {
    let (logged_ns, digits) = utc_ns(seen.line["ts"].as_str()?)?;
    let version = number(&seen.line["version"])?;
    Some((
        version,
        End {
            logged_ns,
            digits,
            read: seen.at,
        },
    ))
}

fn row(what: &str, samples: &[f64]) {
    match summary(samples) {
        Some(s) => println!(
            "| {what} | {} | {:.2} | {:.2} | {:.2} | {:.2} |",
            s.n, s.p50, s.p99, s.min, s.max
        ),
        None => println!("| {what} | 0 | - | - | - | - |"),
    }
}

pub fn run(args: &[String]) -> Result {
    let o = parse(args)?;
    let tools = Tools::build("release")?;
    // Outside the repository: nothing this bench writes belongs there.
    let dir = std::env::temp_dir().join("scangw-bench-config");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(io)?;
    eprintln!("bench config: site and logs in {}", dir.display());
    let site = make_site(tools, &dir, o.changes)?;

    let a = site.start("gw-a")?;
    let b = site.start("gw-b")?;
    let code = site.cli("gw-a", &["pair", "init"])?;
    site.cli("gw-b", &["pair", "join", code.trim()])?;
    let start_version = wait_in_sync(&site.tools, &site.config, STEP_LIMIT)?;
    eprintln!("bench config: paired, both at configuration version {start_version}, sync ok");

    let mut echo = Echo::start(o.echo_bytes)?;
    // Per change: when its command started and how long it took.
    let mut commands: Vec<(Instant, Duration)> = Vec::new();
    let mut echoes = Vec::new();
    let series = Instant::now();
    let cpu_before = cpu_jiffies();
    for i in 1..=o.changes {
        if series.elapsed() > RUN_LIMIT {
            return Err(format!(
                "{} changes took longer than {} s; stopped",
                i - 1,
                RUN_LIMIT.as_secs()
            ));
        }
        let name = format!("bench-{i}");
        let started = Instant::now();
        let (_, took) = timed(
            site.tools
                .gateway(&site.config, "gw-a")
                .args(["device", "add", &name]),
        )?;
        commands.push((started, took));
        std::thread::sleep(o.pause);
        echoes.push(ms(echo.round_trip()?));
        if i % 50 == 0 {
            eprintln!("bench config: {i} of {} changes made", o.changes);
        }
    }
    drop(echo);
    let series_secs = series.elapsed().as_secs_f64();
    let cpu_busy = cpu_before
        .zip(cpu_jiffies())
        .filter(|((_, t0), (_, t1))| t1 > t0)
        .map(|((b0, t0), (b1, t1))| 100.0 * (b1 - b0) as f64 / (t1 - t0) as f64);

    // The end of the series: the secondary caught up (or the wait ran out,
    // and the versions that never arrived are listed below).
    let caught_up = wait_in_sync(&site.tools, &site.config, STEP_LIMIT);
    let expected = start_version + u64::from(o.changes);
    let lines_by = Instant::now() + Duration::from_secs(5);
    while Instant::now() < lines_by
        && !lock(&b.feed)
            .iter()
            .any(|s| s.line["message"] == APPLIED && number(&s.line["version"]) >= Some(expected))
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let (a_name, b_name) = (a.name, b.name);
    let (a_feed, b_feed) = (a.feed.clone(), b.feed.clone());
    drop(a);
    drop(b);

    let mut changed: BTreeMap<u64, (End, String)> = BTreeMap::new();
    for seen in lock(&a_feed)
        .iter()
        .filter(|s| s.line["message"] == CHANGED)
    {
        if let Some((version, e)) = end(seen) {
            let what = seen.line["change"].as_str().unwrap_or_default().to_owned();
            changed.entry(version).or_insert((e, what));
        }
    }
    // The first apply of each version counts (the feed is in the order the
    // lines were read); another would be the same stamp pushed or pulled
    // again.
    let mut applied: BTreeMap<u64, End> = BTreeMap::new();
    let mut epochs = BTreeSet::new();
    let mut repeats = 0;
    for seen in lock(&b_feed)
        .iter()
        .filter(|s| s.line["message"] == APPLIED)
    {
        if let Some((version, e)) = end(seen) {
            epochs.insert(seen.line["epoch"].as_str().unwrap_or("?").to_owned());
            match applied.entry(version) {
                Entry::Vacant(slot) => {
                    slot.insert(e);
                }
                Entry::Occupied(_) => repeats += 1,
            }
        }
    }

    // Which change is which command: the primary names the device.
    let version_of: BTreeMap<String, u64> = changed
        .iter()
        .map(|(v, (_, what))| (what.clone(), *v))
        .collect();
    let mut by_log = Vec::new();
    let mut by_read = Vec::new();
    let mut typed_to_applied = Vec::new();
    let mut missing = Vec::new();
    let mut overlapped = 0;
    // (log ms, read ms, version), in version order.
    let mut per_version = Vec::new();
    for (version, (c, what)) in &changed {
        let Some(s) = applied.get(version) else {
            missing.push(*version);
            continue;
        };
        let logged = (s.logged_ns - c.logged_ns) as f64 / 1e6;
        let read = ms_between(c.read, s.read);
        by_log.push(logged);
        by_read.push(read);
        per_version.push((logged, read, *version));
        if let Some(i) = what
            .strip_prefix("register device bench-")
            .and_then(|n| n.parse::<usize>().ok())
            && let Some((started, _)) = i.checked_sub(1).and_then(|at| commands.get(at))
        {
            typed_to_applied.push(ms_between(*started, s.read));
            if commands.get(i).is_some_and(|(next, _)| *next < s.read) {
                overlapped += 1;
            }
        }
    }
    let unmatched: Vec<usize> = (1..=commands.len())
        .filter(|i| !version_of.contains_key(&format!("register device bench-{i}")))
        .collect();
    let digits = changed
        .values()
        .map(|(e, _)| e.digits)
        .chain(applied.values().map(|e| e.digits))
        .min()
        .unwrap_or(0);
    let resolution = 10f64.powi(3 - digits as i32);

    println!(
        "## configuration propagation {a_name} → {b_name} on loopback: {} changes \
         (`gateway device add` on {a_name}), {} ms pause after each, {series_secs:.1} s in all, \
         CPU busy {} over the series ({} cores, by /proc/stat)",
        o.changes,
        o.pause.as_millis(),
        cpu_busy.map_or("?".to_owned(), |b| format!("{b:.0}%")),
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    println!(
        "log timestamps carry {digits} fractional digits: their differences resolve {resolution} ms; \
         the bench's own stamps, taken as it reads each server's stderr, resolve 1 µs but carry \
         the delay before its reading thread runs (a busy machine can make one line late, even \
         the primary's after the secondary's: a negative difference)"
    );
    println!();
    println!("| measured | samples | p50 ms | p99 ms | min ms | max ms |");
    println!("|---|---|---|---|---|---|");
    row(
        &format!("propagation: {b_name} applied − {a_name} committed (log timestamps)"),
        &by_log,
    );
    row(
        "propagation, the same two lines as the bench read them",
        &by_read,
    );
    row(
        &format!("`device add` started → applied on {b_name} (bench clock)"),
        &typed_to_applied,
    );
    let round_trips: Vec<f64> = commands.iter().map(|(_, d)| ms(*d)).collect();
    row(
        "admin round trip: `gateway device add`, start to exit",
        &round_trips,
    );
    row(
        &format!(
            "baseline: loopback TCP echo of {} bytes, round trip",
            o.echo_bytes
        ),
        &echoes,
    );
    println!();
    // Each push carries the whole configuration, one device larger after
    // every change: whether the propagation grows with it shows here.
    println!(
        "propagation by position in the series (log timestamps; the configuration grows by one device per change):"
    );
    println!("| versions | devices added before | samples | p50 ms | p99 ms | max ms |");
    println!("|---|---|---|---|---|---|");
    let quarter = per_version.len().div_ceil(4).max(1);
    for part in per_version.chunks(quarter) {
        let samples: Vec<f64> = part.iter().map(|(l, _, _)| *l).collect();
        if let (Some(s), Some(first), Some(last)) = (summary(&samples), part.first(), part.last()) {
            println!(
                "| {}–{} | {}–{} | {} | {:.2} | {:.2} | {:.2} |",
                first.2,
                last.2,
                first.2.saturating_sub(start_version + 1),
                last.2.saturating_sub(start_version + 1),
                s.n,
                s.p50,
                s.p99,
                s.max
            );
        }
    }
    println!();
    let mut slowest = per_version.clone();
    slowest.sort_by(|x, y| y.0.total_cmp(&x.0).then(y.1.total_cmp(&x.1)));
    println!(
        "slowest propagations (log / bench read, ms): {}",
        slowest
            .iter()
            .take(5)
            .map(|(l, r, v)| format!("v{v} {l:.0} / {r:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "applies at epoch {}; repeated applies of one version: {repeats}; \
         applies that came after the next change had started: {overlapped}",
        epochs.into_iter().collect::<Vec<_>>().join(", ")
    );
    if let Some(s) = summary(&by_log) {
        println!(
            "goal p99 ≤ {GOAL_P99_MS} ms on loopback: {} (p99 {:.2} ms by the log timestamps, \
             {:.2} ms as read)",
            if s.p99 <= GOAL_P99_MS {
                "met"
            } else {
                "NOT met"
            },
            s.p99,
            summary(&by_read).map_or(0.0, |r| r.p99)
        );
    }
    println!(
        "logs: {} and {}",
        site.log("gw-a").display(),
        site.log("gw-b").display()
    );

    if let (Some(p), Some(e)) = (summary(&by_log), summary(&echoes)) {
        let admin = summary(&round_trips);
        crate::table::row(
            format!(
                "configuration propagation primary → secondary ({} changes, `device add`, {} ms apart)",
                o.changes,
                o.pause.as_millis()
            ),
            format!(
                "p50 {:.0} / p99 {:.0} ms (n={}; log timestamps, ±1 ms); goal p99 ≤ {GOAL_P99_MS:.0} ms",
                p.p50, p.p99, p.n
            ),
            format!(
                "loopback TCP echo of {} bytes: p50 {:.2} / p99 {:.2} ms{}",
                o.echo_bytes,
                e.p50,
                e.p99,
                admin.map_or(String::new(), |a| format!(
                    "; the admin command's own round trip p50 {:.2} / p99 {:.2} ms",
                    a.p50, a.p99
                ))
            ),
            crate::table::ratio(p.p50, e.p50),
        );
    }

    let mut problems = Vec::new();
    if !missing.is_empty() {
        let newest = applied.keys().next_back().copied().unwrap_or(0);
        problems.push(format!(
            "{} of {} versions committed on {a_name} were never applied on {b_name}: {} \
             (the newest {b_name} applied: {newest})",
            missing.len(),
            changed.len(),
            ranges(&missing)
        ));
    }
    if !unmatched.is_empty() {
        problems.push(format!(
            "{a_name} logged no `{CHANGED}` for bench changes {unmatched:?}"
        ));
    }
    if let Err(e) = caught_up {
        problems.push(e);
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

/// A vendor key of the site's own, the configuration with both instances
/// and their pair ports, and both licenses activated.
fn make_site(tools: Tools, dir: &Path, changes: u32) -> Result<Site> {
    // Enough seats for every device the bench adds.
    let seats = (changes + 10).min(u32::from(u16::MAX));
    let (config, key_a, key_b) = crate::pair_site::pair_config(
        &tools,
        dir,
        seats,
        "[defaults]\ndata_dir = \"{instance}\"\nlisten = \"127.0.0.1:0\"\nlog_level = \"info\"\n",
    )?;
    let site = Site {
        tools,
        dir: dir.to_owned(),
        config,
    };
    site.cli("gw-a", &["license", "activate", &key_a])?;
    site.cli("gw-b", &["license", "activate", &key_b])?;
    Ok(site)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_timestamps_read_as_utc_nanoseconds_with_their_resolution() {
        assert_eq!(
            utc_ns("2026-12-01T16:40:58.023Z"),
            Some((1_796_143_258_023_000_000, 3))
        );
        assert_eq!(
            utc_ns("2000-02-29T00:00:00Z"),
            Some((951_782_400_000_000_000, 0))
        );
        assert_eq!(
            utc_ns("2026-12-01T16:40:58.023456Z").map(|(_, digits)| digits),
            Some(6)
        );
        // Not UTC, or not a time: not guessed at.
        assert_eq!(utc_ns("2026-12-01T16:40:58.023+01:00"), None);
        assert_eq!(utc_ns("yesterday"), None);
    }

    #[test]
    fn missing_versions_are_listed_as_ranges() {
        assert_eq!(ranges(&[3, 7, 8, 9, 12]), "3, 7–9, 12");
        assert_eq!(ranges(&[]), "");
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let samples: Vec<f64> = (1..=200).map(f64::from).collect();
        let s = summary(&samples).unwrap();
        assert_eq!(
            (s.n, s.p50, s.p99, s.min, s.max),
            (200, 100.0, 198.0, 1.0, 200.0)
        );
        assert!(summary(&[]).is_none());
    }

    #[test]
    fn a_line_read_late_on_the_primary_gives_a_negative_difference() {
        let t = Instant::now();
        let later = t + Duration::from_micros(1500);
        assert_eq!(ms_between(t, later), 1.5);
        assert_eq!(ms_between(later, t), -1.5);
    }
}
