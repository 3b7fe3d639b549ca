//! `cargo xtask bench pair`: how quickly one server of a pair sees the other
//! die, set beside HAProxy's default health checks on the same fault, and
//! whether a saturated machine makes the pair report a DEAD that is not one.
//!
//! Two release `gateway` processes on loopback, `gw-a` (03) and `gw-b` (04),
//! paired with `gateway pair init` / `gateway pair join`. Each trial notes
//! the time, stops (`SIGSTOP`) or kills (`SIGKILL`) `gw-b`, and polls
//! `gw-a`'s `/health` on its plain listener every few milliseconds until its
//! `pair` word is `dead`; then `gw-b` is continued (or restarted) and both
//! must be LIVE again before the next trial. In the first trials of each
//! fault a real HAProxy, probing `gw-b`'s `/health` with its default timing
//! (inter 2 s, fall 3, rise 2), is watched through its stats socket on the
//! same fault until it marks `gw-b` DOWN.
//!
//! Then the soak: busy-loop threads (twice the number of cores) keep every
//! core saturated for a while the pair is up, and the DEAD reports in both
//! servers' logs are counted (the goal is none).
//!
//! Every wait is bounded; every process started here is stopped when its
//! guard is dropped, on failure too.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::site::{Tools, listener, output, target_dir};

mod haproxy;
mod soak;

use crate::{Result, exec, setup};
use haproxy::Haproxy;
use soak::{count_in_log, log_len, soak};

/// How often `gw-a`'s `/health` is asked during a trial: the resolution of
/// the gateway's figures.
const GATEWAY_POLL: Duration = Duration::from_millis(5);
/// How often HAProxy's stats socket is asked during a trial.
const HAPROXY_POLL: Duration = Duration::from_millis(10);
/// HAProxy's default probe interval (`inter`), written into its
/// configuration.
const HAPROXY_INTER_MS: u64 = 2000;
/// The longest any single wait in a trial may take.
const TRIAL_LIMIT: Duration = Duration::from_secs(30);
/// The backend and server names in the HAProxy configuration.
const BACKEND: &str = "gateway_pair";
const SERVER: &str = "gw-b";

pub struct Options {
    pub trials: u32,
    pub haproxy_trials: u32,
    pub soak_secs: u64,
    pub heartbeat_interval_ms: u64,
    pub dead_threshold_ms: u64,
    pub json: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            trials: 50,
            haproxy_trials: 20,
            soak_secs: 600,
            heartbeat_interval_ms: 100,
            dead_threshold_ms: 600,
            json: false,
        }
    }
}

fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

fn io(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// A started process, stopped when dropped: continued first (it may be
/// stopped), then asked to end with `SIGTERM`, then killed if it has not
/// ended within a few seconds.
struct Proc {
    child: Child,
    reaped: bool,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn signal(&self, sig: &str) -> Result {
        exec(
            Command::new("kill")
                .arg(sig)
                .arg(self.pid().to_string())
                .stderr(Stdio::null()),
        )
    }

    /// `SIGKILL` (std sends it directly, no helper process), then reaps.
    fn kill9(&mut self) -> Result {
        self.child.kill().map_err(io)?;
        self.child.wait().map_err(io)?;
        self.reaped = true;
        Ok(())
    }

    fn exited(&mut self) -> bool {
        self.reaped || matches!(self.child.try_wait(), Ok(Some(_)))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.exited() {
            return;
        }
        let _ = self.signal("-CONT");
        let _ = self.signal("-TERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One gateway instance of the bench site.
struct Gateway {
    name: &'static str,
    plain: String,
    proc: Option<Proc>,
}

/// The two instances, their configuration file and logs.
struct Site {
    tools: Tools,
    dir: PathBuf,
    config: PathBuf,
    a: Gateway,
    b: Gateway,
}

impl Site {
    fn cli(&self, instance: &str, args: &[&str]) -> Result<String> {
        output(self.tools.gateway(&self.config, instance).args(args))
    }

    fn log(&self, instance: &str) -> PathBuf {
        self.dir.join(format!("{instance}.log"))
    }

    /// Starts `gateway serve` for `instance` (its log appended to), waits
    /// until its run file appears.
    fn start(&self, instance: &str) -> Result<Proc> {
        let data = self.dir.join(instance);
        let run_file = data.join(format!("{instance}.run.json"));
        // A killed process leaves its run file behind.
        let _ = std::fs::remove_file(&run_file);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log(instance))
            .map_err(io)?;
        let child = self
            .tools
            .gateway(&self.config, instance)
            .arg("serve")
            .stdout(log.try_clone().map_err(io)?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {instance}: {e}"))?;
        let mut proc = Proc {
            child,
            reaped: false,
        };
        let deadline = Instant::now() + TRIAL_LIMIT;
        loop {
            if let Ok(text) = std::fs::read_to_string(&run_file)
                && let Ok(info) = serde_json::from_str::<Value>(&text)
                && !listener(&info, "plain").is_empty()
            {
                return Ok(proc);
            }
            if proc.exited() {
                return Err(format!(
                    "{instance} exited at start-up; see {}",
                    self.log(instance).display()
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{instance} did not start within {} s; see {}",
                    TRIAL_LIMIT.as_secs(),
                    self.log(instance).display()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Builds the site: a vendor key of its own, a configuration with both
/// instances and their pair ports, licenses activated, both started and
/// paired, both LIVE.
fn pair_site(tools: Tools, dir: &Path, o: &Options) -> Result<Site> {
    let vendor = tools.vendor(dir)?;
    let public = vendor.public_key.clone();
    let (key_a, key_b) = (
        tools.issue(&vendor, "03", 1, 5)?,
        tools.issue(&vendor, "04", 2, 5)?,
    );
    // Fixed plain ports: HAProxy probes gw-b at one address across restarts.
    let (plain_a, plain_b) = (free_port()?, free_port()?);
    let (pair_a, pair_b) = (free_port()?, free_port()?);
    let config = dir.join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            r#"[licensing]
trusted_vendor_keys = ["{public}"]

[defaults]
data_dir = "{{instance}}"
listen = "127.0.0.1:0"
log_level = "info"

[defaults.pair]
heartbeat_interval_ms = {hb}
dead_threshold_ms = {dead}

[instances.gw-a]
listen_plain = "127.0.0.1:{plain_a}"

[instances.gw-a.pair]
listen = "127.0.0.1:{pair_a}"
peer = "127.0.0.1:{pair_b}"

[instances.gw-b]
listen_plain = "127.0.0.1:{plain_b}"

[instances.gw-b.pair]
listen = "127.0.0.1:{pair_b}"
peer = "127.0.0.1:{pair_a}"
"#,
            public = public,
            hb = o.heartbeat_interval_ms,
            dead = o.dead_threshold_ms,
        ),
    )
    .map_err(io)?;
    let mut site = Site {
        tools,
        dir: dir.to_owned(),
        config,
        a: Gateway {
            name: "gw-a",
            plain: format!("127.0.0.1:{plain_a}"),
            proc: None,
        },
        b: Gateway {
            name: "gw-b",
            plain: format!("127.0.0.1:{plain_b}"),
            proc: None,
        },
    };
    site.cli("gw-a", &["license", "activate", &key_a])?;
    site.cli("gw-b", &["license", "activate", &key_b])?;
    site.a.proc = Some(site.start("gw-a")?);
    site.b.proc = Some(site.start("gw-b")?);
    let code = site.cli("gw-a", &["pair", "init"])?;
    site.cli("gw-b", &["pair", "join", code.trim()])?;
    wait_pair(&site.a, "live", TRIAL_LIMIT)?;
    wait_pair(&site.b, "live", TRIAL_LIMIT)?;
    Ok(site)
}

/// `GET /health` on a plain listener; the `pair` word of its answer.
fn pair_word(addr: &str) -> Result<String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("{addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(io)?;
    s.set_write_timeout(Some(Duration::from_secs(2)))
        .map_err(io)?;
    s.write_all(b"GET /health HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        .map_err(io)?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).map_err(io)?;
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let v: Value =
        serde_json::from_str(body).map_err(|e| format!("/health answer {answer:?}: {e}"))?;
    Ok(v["pair"].as_str().unwrap_or_default().to_owned())
}

/// Waits until `gw`'s pair word is `state`.
fn wait_pair(gw: &Gateway, state: &str, within: Duration) -> Result {
    let deadline = Instant::now() + within;
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Ok(word) = pair_word(&gw.plain) {
            if word == state {
                return Ok(());
            }
            last = word;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!(
        "{}'s pair state did not become {state} within {} s (last seen: {last:?})",
        gw.name,
        within.as_secs()
    ))
}

#[derive(Clone, Copy, PartialEq)]
enum Fault {
    Stop,
    Kill,
}

impl Fault {
    fn label(self) -> &'static str {
        match self {
            Fault::Stop => "SIGSTOP",
            Fault::Kill => "kill -9",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Fault::Stop => "sigstop",
            Fault::Kill => "kill9",
        }
    }
}

/// A number in `0..n`, random enough to spread trials over a probe cycle.
fn random_below(n: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    h.finish() % n
}

/// One trial's figures, in milliseconds since the time noted before the
/// signal was sent.
struct Trial {
    gateway_ms: f64,
    haproxy_ms: Option<f64>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// One fault on gw-b; gw-a (and HAProxy, when given) watched until each has
/// seen it; then gw-b back and LIVE (and UP) again.
fn trial(site: &mut Site, fault: Fault, haproxy: Option<&Haproxy>) -> Result<Trial> {
    if haproxy.is_some() {
        // The wait for UP before a trial ends just after a good probe: a
        // fault sent right then would always meet HAProxy at the same point
        // of its probe cycle. Wait a random part of one interval first, so
        // the fault falls anywhere in the cycle, as a real one does.
        std::thread::sleep(Duration::from_millis(random_below(HAPROXY_INTER_MS)));
    }
    let proc = site.b.proc.as_mut().ok_or("gw-b is not running")?;
    let started = Instant::now();
    match fault {
        Fault::Stop => proc.signal("-STOP")?,
        Fault::Kill => proc.kill9()?,
    }
    let deadline = started + TRIAL_LIMIT;
    let mut gateway = None;
    let mut balancer = None;
    let (mut next_gw, mut next_ha) = (started, started);
    while gateway.is_none() || (haproxy.is_some() && balancer.is_none()) {
        let now = Instant::now();
        if now > deadline {
            return Err(format!(
                "{} of gw-b: not seen within {} s (gateway: {gateway:?} ms, HAProxy: {balancer:?} ms)",
                fault.label(),
                TRIAL_LIMIT.as_secs()
            ));
        }
        if gateway.is_none() && now >= next_gw {
            if matches!(pair_word(&site.a.plain), Ok(w) if w == "dead") {
                gateway = Some(ms(started.elapsed()));
            }
            next_gw += GATEWAY_POLL;
        }
        if let Some(h) = haproxy
            && balancer.is_none()
            && now >= next_ha
        {
            if matches!(h.status(), Ok(s) if s.starts_with("DOWN")) {
                balancer = Some(ms(started.elapsed()));
            }
            next_ha += HAPROXY_POLL;
        }
        let next = match (gateway.is_none(), haproxy.is_some() && balancer.is_none()) {
            (true, true) => next_gw.min(next_ha),
            (true, false) => next_gw,
            (false, _) => next_ha,
        };
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    // Back to the starting point: gw-b running, both LIVE, HAProxy UP.
    match fault {
        Fault::Stop => site.b.proc.as_ref().ok_or("gw-b")?.signal("-CONT")?,
        Fault::Kill => site.b.proc = Some(site.start("gw-b")?),
    }
    wait_pair(&site.a, "live", TRIAL_LIMIT)?;
    wait_pair(&site.b, "live", TRIAL_LIMIT)?;
    if let Some(h) = haproxy {
        h.wait_status("UP", TRIAL_LIMIT)?;
    }
    Ok(Trial {
        gateway_ms: gateway.unwrap_or_default(),
        haproxy_ms: balancer,
    })
}

/// p50, p99 (nearest rank), min and max of `samples`.
fn summary(samples: &[f64]) -> Value {
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = |p: f64| {
        let i = ((p * s.len() as f64).ceil() as usize).clamp(1, s.len());
        s[i - 1]
    };
    if s.is_empty() {
        return json!({ "trials": 0 });
    }
    json!({
        "trials": s.len(),
        "p50_ms": rank(0.50),
        "p99_ms": rank(0.99),
        "min_ms": s[0],
        "max_ms": s[s.len() - 1],
        "mean_ms": s.iter().sum::<f64>() / s.len() as f64,
        "samples_ms": samples,
    })
}

pub fn run(o: &Options) -> Result {
    setup::apt(&["haproxy"])?;
    let tools = Tools::build("release")?;
    let dir = target_dir().join("bench-pair");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(io)?;
    eprintln!(
        "bench pair: site in {}; heartbeat every {} ms, DEAD after {} ms",
        dir.display(),
        o.heartbeat_interval_ms,
        o.dead_threshold_ms
    );
    let mut site = pair_site(tools, &dir, o)?;
    let haproxy = Haproxy::start(&dir, &site.b.plain)?;

    let mut results = Vec::new();
    let mut rows = Vec::new();
    // DEAD reports by gw-b itself about gw-a, which never stopped: a
    // continued process finds its peer silent for as long as it was stopped.
    let mut own_dead = Vec::new();
    for fault in [Fault::Stop, Fault::Kill] {
        let b_log = site.log("gw-b");
        let b_from = log_len(&b_log);
        let mut gateway = Vec::new();
        let mut balancer = Vec::new();
        for i in 0..o.trials.max(o.haproxy_trials) {
            let with_haproxy = i < o.haproxy_trials;
            let t = trial(&mut site, fault, with_haproxy.then_some(&haproxy))?;
            if i < o.trials {
                gateway.push(t.gateway_ms);
            }
            balancer.extend(t.haproxy_ms);
            eprintln!(
                "bench pair: {} trial {}: gateway {:.1} ms{}",
                fault.label(),
                i + 1,
                t.gateway_ms,
                t.haproxy_ms
                    .map(|h| format!(", HAProxy {h:.0} ms"))
                    .unwrap_or_default()
            );
        }
        let resumed = count_in_log(&b_log, b_from, "unreachable since");
        own_dead.push(json!({ "fault": fault.key(), "gw_b_dead_reports": resumed }));
        for (detector, samples) in [("gateway", gateway), ("haproxy", balancer)] {
            let s = summary(&samples);
            rows.push((fault, detector, s.clone()));
            results.push(json!({ "fault": fault.key(), "detector": detector, "summary": s }));
        }
    }
    drop(haproxy);

    let soak = if o.soak_secs > 0 {
        Some(soak(&site, o.soak_secs)?)
    } else {
        None
    };

    println!(
        "## pair DEAD detection on loopback: heartbeat every {} ms, DEAD after {} ms",
        o.heartbeat_interval_ms, o.dead_threshold_ms
    );
    println!(
        "resolution: gw-a's /health polled every {} ms, HAProxy's stats socket every {} ms",
        GATEWAY_POLL.as_millis(),
        HAPROXY_POLL.as_millis()
    );
    println!(
        "HAProxy: default checks (inter 2s, fall 3, rise 2, GET /health expecting 200), \
         measured in the first {} trials of each fault, each fault sent at a random point \
         of the probe cycle",
        o.haproxy_trials
    );
    println!(
        "{:<8} {:<34} {:>6} {:>9} {:>9} {:>9} {:>9}",
        "fault", "detector", "trials", "p50 ms", "p99 ms", "min ms", "max ms"
    );
    for (fault, detector, s) in &rows {
        let name = if *detector == "gateway" {
            "gateway pair heartbeat".to_owned()
        } else {
            "HAProxy default check (2s x 3)".to_owned()
        };
        let f = |k: &str| s[k].as_f64().map_or("-".to_owned(), |v| format!("{v:.0}"));
        println!(
            "{:<8} {:<34} {:>6} {:>9} {:>9} {:>9} {:>9}",
            fault.label(),
            name,
            s["trials"].as_u64().unwrap_or(0),
            f("p50_ms"),
            f("p99_ms"),
            f("min_ms"),
            f("max_ms")
        );
    }
    for r in &own_dead {
        println!(
            "{}: gw-b itself reported gw-a DEAD {} times over the trials (on resuming or restarting)",
            if r["fault"] == "sigstop" {
                "SIGSTOP"
            } else {
                "kill -9"
            },
            r["gw_b_dead_reports"]
        );
    }
    if let Some(s) = &soak {
        println!(
            "\n## false DEADs under load: {:.0} s paired with {} (CPU busy {}%)",
            s["seconds"].as_f64().unwrap_or(0.0),
            s["load"].as_str().unwrap_or_default(),
            s["cpu_busy_percent"]
                .as_f64()
                .map_or("?".to_owned(), |b| format!("{b:.1}"))
        );
        println!(
            "DEAD reports in the logs: gw-a {}, gw-b {} (goal 0); /health not `live` in {} of {} probes",
            s["dead_reports"]["gw-a"],
            s["dead_reports"]["gw-b"],
            s["health_not_live"],
            s["health_probes"]
        );
    }

    table_rows(o, &rows, soak.as_ref());

    let summary = json!({
        "heartbeat_interval_ms": o.heartbeat_interval_ms,
        "dead_threshold_ms": o.dead_threshold_ms,
        "gateway_poll_ms": GATEWAY_POLL.as_millis() as u64,
        "haproxy_poll_ms": HAPROXY_POLL.as_millis() as u64,
        "haproxy_checks": { "inter_ms": HAPROXY_INTER_MS, "fall": 3, "rise": 2 },
        "results": results,
        "faulted_server_reports": own_dead,
        "soak": soak,
    });
    let text = serde_json::to_string_pretty(&summary).map_err(io)?;
    std::fs::write(dir.join("summary.json"), &text).map_err(io)?;
    if o.json {
        println!("{text}");
    } else {
        println!("\nsummary: {}", dir.join("summary.json").display());
    }
    Ok(())
}

/// The benchmark table's rows: DEAD detection beside HAProxy's on each
/// fault, and the soak's false DEADs.
fn table_rows(o: &Options, rows: &[(Fault, &str, Value)], soak: Option<&Value>) {
    let cell = |s: &Value| match (s["p50_ms"].as_f64(), s["p99_ms"].as_f64()) {
        (Some(p50), Some(p99)) => format!(
            "p50 {} / p99 {} (n={})",
            crate::table::ms(p50),
            crate::table::ms(p99),
            s["trials"]
        ),
        _ => "no trials".to_owned(),
    };
    for fault in [Fault::Stop, Fault::Kill] {
        let of = |detector: &str| {
            rows.iter()
                .find(|(f, d, _)| *f == fault && *d == detector)
                .map(|(_, _, s)| s.clone())
                .unwrap_or(Value::Null)
        };
        let (gw, ha) = (of("gateway"), of("haproxy"));
        crate::table::row(
            format!(
                "pair heartbeat: {} of the peer → DEAD (heartbeat {} ms, DEAD after {} ms)",
                fault.label(),
                o.heartbeat_interval_ms,
                o.dead_threshold_ms
            ),
            cell(&gw),
            format!(
                "real HAProxy, default checks (inter 2 s, fall 3, rise 2), same fault → DOWN: {}",
                cell(&ha)
            ),
            crate::table::ratio(
                gw["p50_ms"].as_f64().unwrap_or(f64::NAN),
                ha["p50_ms"].as_f64().unwrap_or(f64::NAN),
            ),
        );
    }
    if let Some(s) = soak {
        crate::table::row(
            format!(
                "pair heartbeat: false DEADs in {:.0} s with both cores saturated ({})",
                s["seconds"].as_f64().unwrap_or(0.0),
                s["load"].as_str().unwrap_or_default()
            ),
            format!(
                "{} DEAD reports (gw-a {}, gw-b {}); /health not `live` in {} of {} probes",
                s["dead_reports"]["gw-a"].as_u64().unwrap_or(0)
                    + s["dead_reports"]["gw-b"].as_u64().unwrap_or(0),
                s["dead_reports"]["gw-a"],
                s["dead_reports"]["gw-b"],
                s["health_not_live"],
                s["health_probes"]
            ),
            format!(
                "goal 0; CPU busy {} over the soak",
                s["cpu_busy_percent"]
                    .as_f64()
                    .map_or("?".to_owned(), |b| format!("{b:.0}%"))
            ),
            "–",
        );
    }
}
