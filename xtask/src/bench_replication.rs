//! `cargo xtask bench replication`: what a job costs when the pair keeps a
//! copy of it on both servers. In one run it measures job intake into a
//! pair acknowledging after the peer's copy (`ack = "peer"`), into the same
//! pair acknowledging after the local commit (`ack = "local"`), and into
//! nginx writing the same bodies to disk, all with the intake bench's load
//! client (`mfd-sim load`) over plain HTTP; and, with `ack = "local"`, how
//! long each job takes until the peer has stored its copy. It writes nothing
//! into the repository and talks only to loopback.
//!
//! Two release `gateway` processes, `gw-a` (03) and `gw-b` (04), paired with
//! `gateway pair init` / `gateway pair join` on ports the OS chose, logging
//! one JSON object per line to files. The device the load uses is
//! registered on `gw-a` once the pair is LIVE, and the load starts only when
//! `gw-b` holds the same configuration version. Every job goes to `gw-a`.
//! Both pipelines are paused, so that OCR and delivery do not compete with
//! the intake for the CPU. The loads run with `ack = "peer"` first; then
//! both servers are restarted with `SCANGW_PAIR_ACK=local` for the same
//! loads; then they are stopped and nginx takes the same loads.
//!
//! The load client reports statuses, not answer bodies, so the answers'
//! `"replicated"` flags are read from the wire: `tcpdump` records, on the
//! loopback interface, only the segments with data that the server's port
//! sends (the answers; the uploads are not recorded), and the recording is
//! searched for the flag. Capturing needs root, as installing the packages
//! here does; without it the flags are reported as not recorded and the
//! rest is measured. nginx's answers are recorded too, so that every load
//! carries the same recording.
//!
//! Replication lag is the peer's `replica stored` log timestamp minus the
//! acceptor's `job accepted` timestamp, matched by job id: both servers run
//! on this machine, so both stamps come from one clock, at the logs'
//! millisecond precision.
//!
//! The site (configuration, data, logs, recordings) is a throw-away
//! directory under the system's temporary directory. Every wait is bounded
//! (a load that overruns its limit has its load client killed), and every
//! process started here is stopped when its guard is dropped, on failure
//! too.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::bench::{load, start_nginx};
use crate::measure::{cpu_jiffies, io, summary, utc_ns};
use crate::pair_site::{STEP_LIMIT, signal, stop, timed, wait_in_sync};
use crate::site::{Tools, listener, output};
use crate::{Result, setup};

/// What the acceptor logs once a job is acknowledged (after the wait for
/// the peer's copy, with `ack = "peer"`).
const ACCEPTED: &str = "job accepted";
/// What the peer logs once it committed its copy of a job.
const STORED: &str = "replica stored";
/// The longest one load may take before its client is killed.
const LOAD_LIMIT: Duration = Duration::from_secs(180);
/// How long after a load every job it had acknowledged may take to be
/// stored on the peer; a job not stored by then fails the run.
const REPLICA_LIMIT: Duration = Duration::from_secs(60);
/// The load client's limit for one answer, in seconds: above the gateway's
/// default `peer_ack_timeout_ms` (2 s), far below the client's default.
const RESPONSE_TIMEOUT_SECS: &str = "10";
/// The gateway's default bound on the wait for the peer's copy.
const PEER_ACK_TIMEOUT_MS: f64 = 2000.0;

pub const USAGE: &str = "  replication: [--points SIZE:CONCURRENCY:JOBS,... (100000:10:2000,1000000:4:300,100000:1:300)]";

/// The loads of a default run: the main point, a larger job size, and one
/// device alone (no queue: the replication lag of a single job).
const DEFAULT_POINTS: &str = "100000:10:2000,1000000:4:300,100000:1:300";

/// One load: so many jobs of one size, so many at a time.
#[derive(Clone, Copy)]
struct Point {
    requests: u32,
    size: u64,
    concurrency: u32,
}

impl Point {
    fn label(self) -> String {
        let size = if self.size.is_multiple_of(1_000_000) {
            format!("{} MB", self.size / 1_000_000)
        } else if self.size.is_multiple_of(1000) {
            format!("{} KB", self.size / 1000)
        } else {
            format!("{} B", self.size)
        };
        format!("{size} × {}", self.concurrency)
    }
}

fn parse(args: &[String]) -> Result<Vec<Point>> {
    let mut list = DEFAULT_POINTS.to_owned();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--points" => list = it.next().ok_or("--points needs a list")?.clone(),
            other => {
                return Err(format!(
                    "unknown option `{other}` for bench replication\nusage: cargo xtask bench replication [options]\n{USAGE}"
                ));
            }
        }
    }
    let mut points: Vec<Point> = Vec::new();
    for text in list.split(',') {
        let point = point(text.trim()).ok_or_else(|| {
            format!(
                "`{text}` is not SIZE:CONCURRENCY:JOBS (size 1000 to 32000000 bytes, \
                 concurrency 1 to 200, jobs 1 to 100000)"
            )
        })?;
        if points
            .iter()
            .any(|p| (p.size, p.concurrency) == (point.size, point.concurrency))
        {
            return Err(format!(
                "`{text}`: this size and concurrency are listed twice"
            ));
        }
        points.push(point);
    }
    Ok(points)
}

/// `SIZE:CONCURRENCY:JOBS`, each within its range.
fn point(text: &str) -> Option<Point> {
    let mut parts = text.split(':').map(|p| p.parse::<u64>().ok());
    let (size, concurrency, requests) = (parts.next()??, parts.next()??, parts.next()??);
    let ok = parts.next().is_none()
        && (1000..=32_000_000).contains(&size)
        && (1..=200).contains(&concurrency)
        && (1..=100_000).contains(&requests);
    ok.then_some(Point {
        requests: requests as u32,
        size,
        concurrency: concurrency as u32,
    })
}

/// When the gateway answers a job: after the peer's copy or after the local
/// commit (`SCANGW_PAIR_ACK`).
#[derive(Clone, Copy, PartialEq)]
enum Ack {
    Peer,
    Local,
}

impl Ack {
    fn word(self) -> &'static str {
        match self {
            Ack::Peer => "peer",
            Ack::Local => "local",
        }
    }
}

/// One running `gateway serve`, stopped when dropped.
struct Server {
    child: Child,
    /// `http://` and the plain listener's address.
    plain: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        stop(&mut self.child, "-TERM");
    }
}

impl Server {
    fn port(&self) -> Result<u16> {
        port_of(&self.plain)
    }
}

/// The port of `http://host:port[/path]`.
fn port_of(url: &str) -> Result<u16> {
    url.trim_start_matches("http://")
        .split('/')
        .next()
        .and_then(|authority| authority.rsplit_once(':'))
        .and_then(|(_, port)| port.parse().ok())
        .ok_or_else(|| format!("no port in {url}"))
}

/// The two instances, their configuration file and logs.
struct Site {
    tools: Tools,
    dir: PathBuf,
    config: PathBuf,
}

impl Site {
    fn cli(&self, instance: &str, args: &[&str]) -> Result<String> {
        run_bounded(self.tools.gateway(&self.config, instance).args(args))
    }

    fn log(&self, instance: &str) -> PathBuf {
        self.dir.join(format!("{instance}.log"))
    }

    /// The primary's certificate, for the load client's `--ca` (unused over
    /// plain HTTP, but the client takes one).
    fn cert(&self) -> PathBuf {
        self.dir.join("gw-a/tls/gw-a.cert.pem")
    }

    /// Starts `gateway serve` for `name` (JSON lines appended to its log,
    /// `ack` in its environment) and waits until its run file names its
    /// plain listener.
    fn start(&self, name: &str, ack: Ack) -> Result<Server> {
        let run_file = self.dir.join(name).join(format!("{name}.run.json"));
        // A server that did not end cleanly leaves its run file behind.
        let _ = std::fs::remove_file(&run_file);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log(name))
            .map_err(io)?;
        let child = self
            .tools
            .gateway(&self.config, name)
            .arg("serve")
            // The environment must not change the format or hide the info
            // lines this bench reads.
            .env("SCANGW_LOG_FORMAT", "json")
            .env("SCANGW_PAIR_ACK", ack.word())
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(io)?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {name}: {e}"))?;
        let mut server = Server {
            child,
            plain: String::new(),
        };
        let log = self.log(name);
        let info = crate::pair_site::wait_started(&mut server.child, &run_file, name, &log, |i| {
            !listener(i, "plain").is_empty()
        })?;
        server.plain = format!("http://{}", listener(&info, "plain"));
        Ok(server)
    }

    /// Both servers started with `ack`, pipelines paused, LIVE, sync `ok`
    /// and the same configuration version on both.
    fn start_pair(&self, ack: Ack, pair_them: bool) -> Result<(Server, Server)> {
        let a = self.start("gw-a", ack)?;
        let b = self.start("gw-b", ack)?;
        if pair_them {
            let code = self.cli("gw-a", &["pair", "init"])?;
            self.cli("gw-b", &["pair", "join", code.trim()])?;
        }
        for name in ["gw-a", "gw-b"] {
            self.cli(name, &["pipeline", "pause"])?;
        }
        wait_in_sync(&self.tools, &self.config, STEP_LIMIT)?;
        Ok((a, b))
    }

    /// A user session for `token` on `server`.
    fn login(&self, server: &Server, token: &str) -> Result<String> {
        let answer = run_bounded(Command::new("curl").args([
            "-s",
            "--fail-with-body",
            "--max-time",
            "10",
            "-H",
            &format!("Authorization: Bearer {token}"),
            "-H",
            "Content-Type: application/json",
            "-d",
            r#"{"user":"bench","password":"bench"}"#,
            &format!("{}/api/v1/sessions", server.plain),
        ]))?;
        let v: Value =
            serde_json::from_str(&answer).map_err(|e| format!("login answer {answer}: {e}"))?;
        v["session"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("login answer without a session: {answer}"))
    }
}

/// Kills this process's own `mfd-sim` children (found by pid among its
/// children) if a load is still running when the limit passes. The load
/// then fails, and so does the run.
struct LoadWatchdog {
    done: mpsc::Sender<()>,
    thread: Option<JoinHandle<()>>,
}

impl LoadWatchdog {
    fn arm(limit: Duration) -> LoadWatchdog {
        let (done, watch) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            if let Err(RecvTimeoutError::Timeout) = watch.recv_timeout(limit) {
                for pid in own_children("mfd-sim") {
                    eprintln!(
                        "bench replication: the load ran longer than {} s; stopping its client",
                        limit.as_secs()
                    );
                    signal(pid, "-KILL");
                }
            }
        });
        LoadWatchdog {
            done,
            thread: Some(thread),
        }
    }
}

impl Drop for LoadWatchdog {
    fn drop(&mut self) {
        let _ = self.done.send(());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// This process's children whose command name is `name`.
fn own_children(name: &str) -> Vec<u32> {
    let me = std::process::id();
    let tasks = std::fs::read_dir(format!("/proc/{me}/task"))
        .into_iter()
        .flatten();
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok())
                .collect::<Vec<_>>()
        })
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == name)
        })
        .collect()
}

/// The answers a server sent during one load, recorded by `tcpdump` on the
/// loopback interface: only segments that carry data and come from the
/// server's port, so the uploads themselves are not recorded.
struct Capture {
    child: Child,
    file: PathBuf,
    errors: PathBuf,
}

/// What the recorded answers said.
struct Answers {
    created: u64,
    replicated: u64,
    not_replicated: u64,
    /// Packets the kernel dropped before tcpdump read them (the counts are
    /// then incomplete).
    dropped: u64,
}

impl Capture {
    fn start(dir: &Path, label: &str, port: u16) -> Result<Capture> {
        let file = dir.join(format!("answers-{label}.pcap"));
        let errors = dir.join(format!("answers-{label}.log"));
        let child = Command::new("tcpdump")
            // Immediate mode: each packet is read as it comes, so none is
            // still waiting in the kernel's ring when the recording ends.
            .args(["-i", "lo", "-n", "--immediate-mode", "-U", "-s", "0"])
            .args(["-B", "16384", "-w"])
            .arg(&file)
            .arg(format!(
                "tcp src port {port} and (ip[2:2] - ((ip[0] & 0xf) << 2) - ((tcp[12] & 0xf0) >> 2)) > 0"
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&errors).map_err(io)?)
            .spawn()
            .map_err(|e| format!("cannot start tcpdump: {e}"))?;
        let mut capture = Capture {
            child,
            file,
            errors,
        };
        // tcpdump says it listens once the capture is active.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let said = std::fs::read_to_string(&capture.errors).unwrap_or_default();
            if said.contains("listening on") {
                return Ok(capture);
            }
            if let Ok(Some(status)) = capture.child.try_wait() {
                return Err(format!("tcpdump exited ({status}): {}", said.trim()));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "tcpdump did not start within 10 s: {}",
                    said.trim()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Ends the recording (tcpdump writes its counts on `SIGINT`) and
    /// counts the answers.
    fn finish(mut self) -> Result<Answers> {
        // The last answers reached the client, so they passed the
        // interface; give tcpdump a moment to write them.
        std::thread::sleep(Duration::from_millis(300));
        stop(&mut self.child, "-INT");
        let bytes = std::fs::read(&self.file).map_err(io)?;
        let said = std::fs::read_to_string(&self.errors).unwrap_or_default();
        let dropped = said
            .lines()
            .filter(|l| l.contains("dropped by"))
            .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
            .sum();
        Ok(Answers {
            created: occurrences(&bytes, b"HTTP/1.1 201"),
            replicated: occurrences(&bytes, br#""replicated":true"#),
            not_replicated: occurrences(&bytes, br#""replicated":false"#),
            dropped,
        })
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        stop(&mut self.child, "-INT");
    }
}

fn occurrences(haystack: &[u8], needle: &[u8]) -> u64 {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count() as u64
}

/// The length of a log now: where the lines of the next load begin.
fn log_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// (job id, log timestamp in ns since the epoch) of the lines with
/// `message` logged after `from`, in log order (the first line of each job),
/// and the timestamps' fractional digits.
fn logged_jobs(path: &Path, from: u64, message: &str) -> Result<(Vec<(String, i64)>, usize)> {
    let mut text = String::new();
    let mut file = File::open(path).map_err(io)?;
    file.seek(SeekFrom::Start(from)).map_err(io)?;
    file.read_to_string(&mut text).map_err(io)?;
    let mut jobs = Vec::new();
    let mut seen = HashSet::new();
    let mut digits = usize::MAX;
    for line in text.lines().filter(|l| l.contains(message)) {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if v["message"] != message {
            continue;
        }
        if let (Some(job), Some((ns, d))) = (v["job"].as_str(), v["ts"].as_str().and_then(utc_ns))
            // A copy stored again would be a resend: the first counts.
            && seen.insert(job.to_owned())
        {
            jobs.push((job.to_owned(), ns));
            digits = digits.min(d);
        }
    }
    Ok((jobs, if digits == usize::MAX { 0 } else { digits }))
}

/// One load's figures.
struct Row {
    point: Point,
    server: String,
    load: Value,
    answers: Result<Answers>,
    cpu_busy: Option<f64>,
}

impl Row {
    fn rate(&self) -> f64 {
        self.load["requests_per_second"].as_f64().unwrap_or(0.0)
    }

    fn latency(&self, key: &str) -> f64 {
        self.load["latency"][key].as_f64().unwrap_or(0.0)
    }
}

/// Where the jobs of one gateway load ended up: each job's acknowledgement
/// on the acceptor and its copy on the peer, by log timestamp.
struct Traced {
    ack: Ack,
    /// `replica stored` − `job accepted`, ms, in the acceptor's order.
    differences: Vec<f64>,
    /// Jobs acknowledged whose copy the peer had not logged within
    /// REPLICA_LIMIT after the load.
    missing: Vec<String>,
    accepted: usize,
    digits: usize,
    /// Jobs per second by the log timestamps: acknowledged on gw-a (first
    /// to last `job accepted`) and stored on gw-b (first to last `replica
    /// stored` of the same jobs).
    accepted_rate: Option<f64>,
    stored_rate: Option<f64>,
}

/// Events per second over the span of their timestamps (ns).
fn rate(stamps: impl Iterator<Item = i64>) -> Option<f64> {
    let (mut n, mut first, mut last) = (0u64, i64::MAX, i64::MIN);
    for t in stamps {
        n += 1;
        first = first.min(t);
        last = last.max(t);
    }
    (n > 1 && last > first).then(|| (n - 1) as f64 / ((last - first) as f64 / 1e9))
}

/// Where one load goes: the load client's URL and target arguments, the
/// port whose answers are recorded, and the name in the table.
struct Target {
    url: String,
    args: Vec<String>,
    port: u16,
    server: String,
}

/// Runs one load against `target`, timing the CPU and recording the
/// answers.
fn measure(site: &Site, label: &str, target: &Target, point: Point) -> Result<Row> {
    let capture = Capture::start(&site.dir, label, target.port);
    let mut args = target.args.clone();
    args.extend([
        "--response-timeout".to_owned(),
        RESPONSE_TIMEOUT_SECS.to_owned(),
    ]);
    let before = cpu_jiffies();
    let result = {
        let _watchdog = LoadWatchdog::arm(LOAD_LIMIT);
        load(
            &site.tools,
            &target.url,
            &site.cert(),
            &args,
            point.requests,
            point.concurrency,
            point.size,
        )
    };
    let cpu_busy = before
        .zip(cpu_jiffies())
        .filter(|((_, t0), (_, t1))| t1 > t0)
        .map(|((b0, t0), (b1, t1))| 100.0 * (b1 - b0) as f64 / (t1 - t0) as f64);
    let answers = capture.and_then(Capture::finish);
    Ok(Row {
        point,
        server: target.server.clone(),
        load: result?,
        answers,
        cpu_busy,
    })
}

/// Loads `gw-a` with `point`, then waits until the peer logged a copy of
/// every job it acknowledged.
fn gateway_load(
    site: &Site,
    a: &Server,
    ack: Ack,
    credentials: &str,
    point: Point,
) -> Result<(Row, Traced)> {
    let (from_a, from_b) = (log_len(&site.log("gw-a")), log_len(&site.log("gw-b")));
    let label = format!("{}-{}-{}", ack.word(), point.size, point.concurrency);
    let target = Target {
        url: a.plain.clone(),
        args: vec!["--multipart-gateway".to_owned(), credentials.to_owned()],
        port: a.port()?,
        server: server_of(ack),
    };
    let row = measure(site, &label, &target, point)?;
    let (accepted, digits_a) = logged_jobs(&site.log("gw-a"), from_a, ACCEPTED)?;
    let deadline = Instant::now() + REPLICA_LIMIT;
    let (stored, digits_b) = loop {
        let (stored, digits) = logged_jobs(&site.log("gw-b"), from_b, STORED)?;
        let stored: HashMap<String, i64> = stored.into_iter().collect();
        if accepted.iter().all(|(j, _)| stored.contains_key(j)) || Instant::now() > deadline {
            break (stored, digits);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut differences = Vec::new();
    let mut missing = Vec::new();
    for (job, at) in &accepted {
        match stored.get(job) {
            Some(copy) => differences.push((copy - at) as f64 / 1e6),
            None => missing.push(job.clone()),
        }
    }
    let traced = Traced {
        accepted_rate: rate(accepted.iter().map(|(_, t)| *t)),
        stored_rate: rate(accepted.iter().filter_map(|(j, _)| stored.get(j).copied())),
        ack,
        differences,
        missing,
        accepted: accepted.len(),
        digits: digits_a.min(digits_b),
    };
    Ok((row, traced))
}

pub fn run(args: &[String]) -> Result {
    let points = parse(args)?;
    setup::apt(setup::BENCH_PACKAGES)?;
    setup::apt(&["curl", "tcpdump"])?;
    let tools = Tools::build("release")?;
    // Outside the repository: nothing this bench writes belongs there.
    let dir = std::env::temp_dir().join("scangw-bench-replication");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(io)?;
    eprintln!(
        "bench replication: site, logs and recordings in {}",
        dir.display()
    );
    let site = make_site(tools, &dir)?;

    let mut rows = Vec::new();
    let mut traces: Vec<(Point, Traced)> = Vec::new();
    let mut token = None;
    for ack in [Ack::Peer, Ack::Local] {
        // The first start pairs the two; the restart keeps the pairing.
        let (a, _b) = site.start_pair(ack, token.is_none())?;
        let token = match &token {
            Some(t) => t,
            None => token.insert(site.register_device()?),
        };
        let version = wait_in_sync(&site.tools, &site.config, STEP_LIMIT)?;
        eprintln!(
            "bench replication: ack = \"{}\": LIVE, sync ok, both at configuration version \
             {version} (the device included), pipelines paused",
            ack.word()
        );
        let credentials = format!("{token},{},bench", site.login(&a, token)?);
        for &point in &points {
            let (row, traced) = gateway_load(&site, &a, ack, &credentials, point)?;
            eprintln!(
                "bench replication: ack = \"{}\", {}: {:.1} jobs/s",
                ack.word(),
                point.label(),
                row.rate()
            );
            rows.push(row);
            traces.push((point, traced));
        }
        // Both servers stop here (guards dropped), before the next start.
    }

    // nginx serves TLS with the primary's certificate too (the bench uses
    // its plain listener only).
    let nginx = start_nginx(
        &dir.join("nginx"),
        &site.cert(),
        &dir.join("gw-a/tls/gw-a.key.pem"),
    )?;
    for &point in &points {
        let target = Target {
            url: nginx.plain.clone(),
            args: ["--method", "PUT", "--multipart-body", "bench"]
                .map(str::to_owned)
                .to_vec(),
            port: port_of(&nginx.plain)?,
            server: NGINX.to_owned(),
        };
        let row = measure(
            &site,
            &format!("nginx-{}-{}", point.size, point.concurrency),
            &target,
            point,
        )?;
        eprintln!(
            "bench replication: nginx, {}: {:.1} jobs/s",
            point.label(),
            row.rate()
        );
        rows.push(row);
    }
    drop(nginx);
    report(&points, &rows, &traces, &site)
}

const NGINX: &str = "nginx, WebDAV PUT";

fn server_of(ack: Ack) -> String {
    format!("pair, ack = \"{}\"", ack.word())
}

fn answers_cell(row: &Row) -> String {
    if row.server == NGINX {
        return "–".to_owned();
    }
    match &row.answers {
        Ok(a) => {
            let mut cell = format!("{} / {}", a.replicated, a.not_replicated);
            let succeeded = row.load["succeeded"].as_u64().unwrap_or(0);
            if a.created != succeeded || a.replicated + a.not_replicated != a.created {
                cell += &format!(" (of {} 201s recorded)", a.created);
            }
            if a.dropped > 0 {
                cell += &format!(" ({} packets dropped)", a.dropped);
            }
            cell
        }
        Err(_) => "not recorded".to_owned(),
    }
}

fn report(points: &[Point], rows: &[Row], traces: &[(Point, Traced)], site: &Site) -> Result {
    let mut problems = Vec::new();
    println!(
        "## jobs across the pair on loopback: every job to gw-a over plain HTTP, same load client \
         and bodies for all; pipelines paused on both servers; {} cores",
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    println!(
        "acknowledgement latency: from sending the request to the complete answer (mfd-sim load); \
         `replicated` read from the recorded answers; CPU busy by /proc/stat over the load"
    );
    println!();
    println!(
        "| load (size × concurrent) | server | jobs | failed | jobs/s | MB/s | ack p50 ms | ack p99 ms | ack max ms | 201 `replicated` true / false | CPU busy |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let mut notes = Vec::new();
    for row in rows {
        let failed = row.load["failed"].as_u64().unwrap_or(0);
        println!(
            "| {} | {} | {} | {failed} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} |",
            row.point.label(),
            row.server,
            row.load["requests"].as_u64().unwrap_or(0),
            row.rate(),
            row.load["megabytes_per_second"].as_f64().unwrap_or(0.0),
            row.latency("p50_ms"),
            row.latency("p99_ms"),
            row.latency("max_ms"),
            answers_cell(row),
            row.cpu_busy.map_or("?".to_owned(), |b| format!("{b:.0}%"))
        );
        if failed > 0 {
            problems.push(format!(
                "{} on {}: {failed} requests failed ({})",
                row.point.label(),
                row.server,
                row.load["outcomes"]
            ));
        }
        if let Err(e) = &row.answers
            && row.server != NGINX
        {
            notes.push(format!(
                "{}, {}: answers not recorded: {e}",
                row.point.label(),
                row.server
            ));
        }
    }
    for note in notes {
        println!("{note}");
    }
    println!();
    let find = |point: Point, server: &str| {
        rows.iter().find(|r| {
            r.point.size == point.size
                && r.point.concurrency == point.concurrency
                && r.server == server
        })
    };
    for &point in points {
        let (peer, local, nginx) = (
            find(point, &server_of(Ack::Peer)),
            find(point, &server_of(Ack::Local)),
            find(point, NGINX),
        );
        if let (Some(p), Some(l), Some(n)) = (peer, local, nginx) {
            println!(
                "{}: jobs/s peer / local {:.2}, peer / nginx {:.2}, local / nginx {:.2}; \
                 ack = \"peer\" adds {:+.1} ms at p50 and {:+.1} ms at p99 over \"local\"",
                point.label(),
                p.rate() / l.rate(),
                p.rate() / n.rate(),
                l.rate() / n.rate(),
                p.latency("p50_ms") - l.latency("p50_ms"),
                p.latency("p99_ms") - l.latency("p99_ms"),
            );
        }
        if let Some(p) = peer
            && p.latency("max_ms") >= PEER_ACK_TIMEOUT_MS
        {
            println!(
                "  ack = \"peer\", {}: the slowest answer took {:.0} ms, at or beyond the default \
                 peer_ack_timeout_ms ({PEER_ACK_TIMEOUT_MS:.0} ms): it may have said \
                 `replicated: false`",
                point.label(),
                p.latency("max_ms")
            );
        }
    }

    let cell = |name: &str, r: &Row| {
        let failed = r.load["failed"].as_u64().unwrap_or(0);
        format!(
            "{name} {:.1} jobs/s, p50 {} / p99 {}{}",
            r.rate(),
            crate::table::ms(r.latency("p50_ms")),
            crate::table::ms(r.latency("p99_ms")),
            if failed > 0 {
                format!(", **{failed} failed**")
            } else {
                String::new()
            }
        )
    };
    for &point in points {
        let Some(n) = find(point, NGINX) else {
            continue;
        };
        for ack in [Ack::Peer, Ack::Local] {
            if let Some(r) = find(point, &server_of(ack)) {
                crate::table::row(
                    format!(
                        "intake into the pair, ack = \"{}\": {}, {} jobs, plain HTTP",
                        ack.word(),
                        point.label(),
                        point.requests
                    ),
                    cell("pair", r),
                    cell("nginx (WebDAV PUT)", n),
                    crate::table::ratio(r.rate(), n.rate()),
                );
            }
        }
    }
    for (point, t) in traces.iter().filter(|(_, t)| t.ack == Ack::Local) {
        let (Some(s), Some(r)) = (
            summary(&t.differences),
            find(*point, &server_of(Ack::Local)),
        ) else {
            continue;
        };
        crate::table::row(
            format!(
                "replication lag with ack = \"local\" (copy stored on the peer − job accepted): {}, {} jobs",
                point.label(),
                point.requests
            ),
            format!(
                "p50 {:.0} / p99 {:.0} ms (n={}; log timestamps, ±1 ms){}",
                s.p50,
                s.p99,
                s.n,
                if t.missing.is_empty() {
                    String::new()
                } else {
                    format!(", **{} not stored**", t.missing.len())
                }
            ),
            format!(
                "the same load's acknowledgement: p50 {} / p99 {}",
                crate::table::ms(r.latency("p50_ms")),
                crate::table::ms(r.latency("p99_ms"))
            ),
            crate::table::ratio(s.p50, r.latency("p50_ms")),
        );
    }

    let resolution = traces.iter().map(|(_, t)| t.digits).min().unwrap_or(0);
    println!();
    println!(
        "## replication lag with ack = \"local\": gw-b's `{STORED}` − gw-a's `{ACCEPTED}`, matched \
         by job id; log timestamps with {resolution} fractional digits, so each figure is whole \
         milliseconds, ±1 ms"
    );
    println!();
    println!(
        "| load (size × concurrent) | jobs | lag p50 ms | lag p99 ms | lag max ms | lag min ms | p50 by quarter of the load | accepted on gw-a / stored on gw-b, jobs/s | not stored within {} s |",
        REPLICA_LIMIT.as_secs()
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (point, t) in traces.iter().filter(|(_, t)| t.ack == Ack::Local) {
        let quarters = t
            .differences
            .chunks(t.differences.len().div_ceil(4).max(1))
            .filter_map(|q| summary(q).map(|s| format!("{:.0}", s.p50)))
            .collect::<Vec<_>>()
            .join(" / ");
        match summary(&t.differences) {
            Some(s) => println!(
                "| {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {quarters} | {} / {} | {} |",
                point.label(),
                s.n,
                s.p50,
                s.p99,
                s.max,
                s.min,
                t.accepted_rate
                    .map_or("?".to_owned(), |r| format!("{r:.0}")),
                t.stored_rate.map_or("?".to_owned(), |r| format!("{r:.0}")),
                t.missing.len()
            ),
            None => println!(
                "| {} | 0 | - | - | - | - | - | - | {} |",
                point.label(),
                t.missing.len()
            ),
        }
    }
    println!();
    for (point, t) in traces {
        let Some(row) = find(*point, &server_of(t.ack)) else {
            continue;
        };
        let succeeded = row.load["succeeded"].as_u64().unwrap_or(0);
        if t.accepted as u64 != succeeded {
            println!(
                "{} on {}: gw-a logged `{ACCEPTED}` {} times for {succeeded} successful answers",
                point.label(),
                row.server,
                t.accepted
            );
        }
        if row.server == server_of(Ack::Peer) {
            let first = t.differences.iter().filter(|d| **d <= 0.0).count();
            println!(
                "ack = \"peer\", {}: gw-b logged `{STORED}` in the same millisecond as gw-a's \
                 `{ACCEPTED}` or before it for {first} of {} jobs{}",
                point.label(),
                t.differences.len(),
                summary(&t.differences).map_or(String::new(), |s| format!(
                    " (stored − accepted: p50 {:.0} ms, max {:.0} ms)",
                    s.p50, s.max
                ))
            );
        }
        if !t.missing.is_empty() {
            problems.push(format!(
                "{} on {}: {} of {} acknowledged jobs were not stored on gw-b within {} s after \
                 the load (first: {})",
                point.label(),
                row.server,
                t.missing.len(),
                t.accepted,
                REPLICA_LIMIT.as_secs(),
                t.missing
                    .iter()
                    .take(3)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    println!(
        "logs: {} and {}",
        site.log("gw-a").display(),
        site.log("gw-b").display()
    );
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

impl Site {
    /// Registers the load's device on the primary (the running instance,
    /// through its admin socket); its token.
    fn register_device(&self) -> Result<String> {
        let added = self.cli("gw-a", &["device", "add", "bench-mfd"])?;
        let v: Value = serde_json::from_str(&added).map_err(|e| format!("{added}: {e}"))?;
        v["token"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("`device add` answered no token: {added}"))
    }
}

/// A vendor key of the site's own, the configuration with both instances,
/// their pair ports, the load's user and workflow, and both licenses
/// activated.
fn make_site(tools: Tools, dir: &Path) -> Result<Site> {
    let hash = tools.hash_password("bench")?;
    // The workflow never runs: both pipelines are paused.
    let body = format!(
        r#"[limits]
max_job_bytes = "64MiB"
max_page_bytes = "32MiB"

[users.bench]
password_hash = "{hash}"

[workflows.bench]
steps = [ {{ plugin = "assemble" }}, {{ plugin = "folder", root = "{{data_dir}}/delivered" }} ]

[defaults]
data_dir = "{{instance}}"
listen = "127.0.0.1:0"
listen_plain = "127.0.0.1:0"
log_level = "info"
"#
    );
    let (config, key_a, key_b) = crate::pair_site::pair_config(&tools, dir, 5, &body)?;
    let site = Site {
        tools,
        dir: dir.to_owned(),
        config,
    };
    output(
        site.tools
            .gateway(&site.config, "gw-a")
            .args(["license", "activate", &key_a]),
    )?;
    output(
        site.tools
            .gateway(&site.config, "gw-b")
            .args(["license", "activate", &key_b]),
    )?;
    Ok(site)
}

/// Runs `cmd` to its end (killed after STEP_LIMIT); its trimmed stdout.
fn run_bounded(cmd: &mut Command) -> Result<String> {
    timed(cmd).map(|(out, _)| out)
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
        assert_eq!(utc_ns("2026-12-01T16:40:58.023+01:00"), None);
    }

    #[test]
    fn answers_are_counted_in_the_recorded_bytes() {
        let bytes = br#"..HTTP/1.1 201 Created..{"replayed":false,"replicated":true}..HTTP/1.1 201 Created..{"replicated":false}"#;
        assert_eq!(occurrences(bytes, b"HTTP/1.1 201"), 2);
        assert_eq!(occurrences(bytes, br#""replicated":true"#), 1);
        assert_eq!(occurrences(bytes, br#""replicated":false"#), 1);
    }

    #[test]
    fn points_are_labelled_by_size_and_concurrency() {
        let p = |size| Point {
            requests: 1,
            size,
            concurrency: 4,
        };
        assert_eq!(p(100_000).label(), "100 KB × 4");
        assert_eq!(p(1_000_000).label(), "1 MB × 4");
        assert_eq!(p(1500).label(), "1500 B × 4");
    }

    #[test]
    fn points_are_read_from_the_list() {
        let points = parse(&[]).unwrap();
        assert_eq!(points.len(), 3);
        assert_eq!(points[1].label(), "1 MB × 4");
        assert_eq!(points[1].requests, 300);
        let one = |list: &str| parse(&["--points".to_owned(), list.to_owned()]);
        assert!(one("100000:10").is_err());
        assert!(one("100000:0:5").is_err());
        assert!(one("100000:10:5,100000:10:7").is_err(), "listed twice");
    }

    #[test]
    fn a_url_gives_its_port() {
        assert_eq!(port_of("http://127.0.0.1:8080/upload"), Ok(8080));
        assert_eq!(port_of("http://127.0.0.1:80"), Ok(80));
        assert!(port_of("http://localhost/").is_err());
    }
}
