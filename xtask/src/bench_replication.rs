//! `cargo xtask bench replication`: what a job costs when the pair keeps a
//! copy of it on both servers. In one run it measures job intake into a
//! pair acknowledging after the peer's copy (`ack = "peer"`), into the same
//! pair acknowledging after the local commit (`ack = "local"`), and into
//! nginx writing the same bodies to disk, all with the intake bench's load
//! client (`mfd-sim load`) over TLS; and, with `ack = "local"`, how long
//! each job takes until the peer has stored its copy. It writes nothing
//! into the repository and talks only to loopback.
//!
//! Two release `gateway` processes, `gw-a` (03) and `gw-b` (04), paired with
//! `gateway pair init` / `gateway pair join` on ports the OS chose, logging
//! one JSON object per line to files. The device the load uses is
//! registered on `gw-a` once the pair is LIVE, and the loads start only when
//! `gw-b` holds the same configuration version. Every job goes to `gw-a`.
//! Both pipelines are paused, so that OCR and delivery do not compete with
//! the intake for the CPU.
//!
//! The runs are interleaved: a pair started with `ack = "peer"` takes every
//! point, then a new pair started with `SCANGW_PAIR_ACK=local` takes the
//! same points, then nginx does; this round is run three times (once with
//! `--quick`), and each point's figure per server is its median run by
//! jobs per second. Each pair starts on a fresh site (new data, new
//! pairing), and its data is removed once its loads are measured, so that
//! no run starts on a fuller disk or a larger job table than another, and
//! the disk does not fill; the logs are kept.
//!
//! Whether each acknowledgement said `"replicated": true` is read from
//! gw-a's `job accepted` log lines, which carry the same flag as the
//! answer. Replication lag is the peer's `replica stored` log timestamp
//! minus the acceptor's `job accepted` timestamp, matched by job id: both
//! servers run on this machine, so both stamps come from one clock, at the
//! logs' millisecond precision.
//!
//! The sites (configuration, data, logs) are throw-away directories under
//! the system's temporary directory. Every wait is bounded (a load that
//! overruns its limit has its load client killed), and every process
//! started here is stopped when its guard is dropped, on failure too.

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
use crate::measure::{cpu_jiffies, io, median_index, summary, utc_ns};
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

pub const USAGE: &str = "  replication: [--points SIZE:CONCURRENCY:JOBS,... (the intake's table: 100 KB, 1 MB and 20 MB at 1, 10 and 100 devices)] [--quick]
          --quick: one run per point and server instead of the median of three";

/// The loads of a default run: the intake bench's table (100 KB, 1 MB and
/// 20 MB jobs from 1, 10 and 100 devices), without 20 MB from 100 devices,
/// which would store 2 × 4 GB per run.
const DEFAULT_POINTS: &str = "100000:1:300,100000:10:2000,100000:100:2000,1000000:1:100,\
                              1000000:10:300,1000000:100:500,20000000:1:10,20000000:10:40";

/// Runs of each point and server; the figure is the median run.
const RUNS: usize = 3;

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

/// What the command line asks for.
struct Options {
    points: Vec<Point>,
    /// One run per point and server instead of [`RUNS`].
    quick: bool,
}

fn parse(args: &[String]) -> Result<Options> {
    let mut list = DEFAULT_POINTS.to_owned();
    let mut quick = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--points" => list = it.next().ok_or("--points needs a list")?.clone(),
            "--quick" => quick = true,
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
    Ok(Options { points, quick })
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
    /// `http://` and the plain listener's address (the login).
    plain: String,
    /// `https://` and the TLS listener's address (the loads).
    https: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        stop(&mut self.child, "-TERM");
    }
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

    /// The primary's certificate and key (made at its first start): the
    /// load client's `--ca`, and nginx's certificate.
    fn cert(&self) -> PathBuf {
        self.dir.join("gw-a/tls/gw-a.cert.pem")
    }

    fn key(&self) -> PathBuf {
        self.dir.join("gw-a/tls/gw-a.key.pem")
    }

    /// Removes both servers' data (stopped first): the logs stay.
    fn discard_data(&self) -> Result {
        for name in ["gw-a", "gw-b"] {
            let data = self.dir.join(name);
            if data.exists() {
                std::fs::remove_dir_all(&data)
                    .map_err(|e| format!("cannot remove {}: {e}", data.display()))?;
            }
        }
        Ok(())
    }

    /// Starts `gateway serve` for `name` (JSON lines appended to its log,
    /// `ack` in its environment) and waits until its run file names its
    /// listeners.
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
            https: String::new(),
        };
        let log = self.log(name);
        let info = crate::pair_site::wait_started(&mut server.child, &run_file, name, &log, |i| {
            !listener(i, "plain").is_empty() && !listener(i, "https").is_empty()
        })?;
        server.plain = format!("http://{}", listener(&info, "plain"));
        server.https = format!("https://{}", listener(&info, "https"));
        Ok(server)
    }

    /// Both servers started with `ack` and paired, pipelines paused, LIVE,
    /// sync `ok` and the same configuration version on both.
    fn start_pair(&self, ack: Ack) -> Result<(Server, Server)> {
        let a = self.start("gw-a", ack)?;
        let b = self.start("gw-b", ack)?;
        let code = self.cli("gw-a", &["pair", "init"])?;
        self.cli("gw-b", &["pair", "join", code.trim()])?;
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

/// What gw-a's `job accepted` lines of one load said.
struct Answers {
    logged: u64,
    replicated: u64,
    not_replicated: u64,
}

/// Counts the `job accepted` lines logged after `from` and their
/// `replicated` flags.
fn answers(path: &Path, from: u64) -> Result<Answers> {
    let mut text = String::new();
    let mut file = File::open(path).map_err(io)?;
    file.seek(SeekFrom::Start(from)).map_err(io)?;
    file.read_to_string(&mut text).map_err(io)?;
    let mut a = Answers {
        logged: 0,
        replicated: 0,
        not_replicated: 0,
    };
    for line in text.lines().filter(|l| l.contains(ACCEPTED)) {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if v["message"] != ACCEPTED {
            continue;
        }
        a.logged += 1;
        // The log writes every field as a string.
        match v["replicated"].as_str() {
            Some("true") => a.replicated += 1,
            Some("false") => a.not_replicated += 1,
            _ => {}
        }
    }
    Ok(a)
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
    /// Which round of the interleaved runs (1-based).
    pass: usize,
    load: Value,
    /// The acknowledgements' flags (gateway loads only).
    answers: Option<Answers>,
    cpu_busy: Option<f64>,
    /// Where the jobs went (gateway loads only).
    trace: Option<Traced>,
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

/// Runs one load against `url` (`args` select the body the load client
/// sends), timing the CPU of the whole machine.
fn measure(
    tools: &Tools,
    url: &str,
    ca: &Path,
    args: &[String],
    point: Point,
) -> Result<(Value, Option<f64>)> {
    let mut args = args.to_vec();
    args.extend([
        "--response-timeout".to_owned(),
        RESPONSE_TIMEOUT_SECS.to_owned(),
    ]);
    let before = cpu_jiffies();
    let result = {
        let _watchdog = LoadWatchdog::arm(LOAD_LIMIT);
        load(
            tools,
            url,
            ca,
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
    Ok((result?, cpu_busy))
}

/// Loads `gw-a` with `point`, then waits until the peer logged a copy of
/// every job it acknowledged.
fn gateway_load(
    site: &Site,
    a: &Server,
    ack: Ack,
    credentials: &str,
    point: Point,
    pass: usize,
) -> Result<Row> {
    let (from_a, from_b) = (log_len(&site.log("gw-a")), log_len(&site.log("gw-b")));
    let args = vec!["--multipart-gateway".to_owned(), credentials.to_owned()];
    let (load, cpu_busy) = measure(&site.tools, &a.https, &site.cert(), &args, point)?;
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
    let trace = Traced {
        accepted_rate: rate(accepted.iter().map(|(_, t)| *t)),
        stored_rate: rate(accepted.iter().filter_map(|(j, _)| stored.get(j).copied())),
        differences,
        missing,
        accepted: accepted.len(),
        digits: digits_a.min(digits_b),
    };
    Ok(Row {
        point,
        server: server_of(ack),
        pass,
        load,
        answers: Some(answers(&site.log("gw-a"), from_a)?),
        cpu_busy,
        trace: Some(trace),
    })
}

/// One pair on a fresh site in `dir`, started with `ack`, takes every
/// point; its data is removed afterwards.
fn pair_round(
    tools: &Tools,
    dir: &Path,
    ack: Ack,
    points: &[Point],
    pass: usize,
    rows: &mut Vec<Row>,
) -> Result<Site> {
    let site = make_site(tools, dir)?;
    {
        let (a, _b) = site.start_pair(ack)?;
        let token = site.register_device()?;
        let version = wait_in_sync(&site.tools, &site.config, STEP_LIMIT)?;
        eprintln!(
            "bench replication: run {pass}, ack = \"{}\": LIVE, sync ok, both at configuration \
             version {version} (the device included), pipelines paused",
            ack.word()
        );
        let credentials = format!("{token},{},bench", site.login(&a, &token)?);
        for &point in points {
            let row = gateway_load(&site, &a, ack, &credentials, point, pass)?;
            eprintln!(
                "bench replication: run {pass}, ack = \"{}\", {}: {:.1} jobs/s",
                ack.word(),
                point.label(),
                row.rate()
            );
            rows.push(row);
        }
        // Both servers stop here (guards dropped), before their data goes.
    }
    Ok(site)
}

pub fn run(args: &[String]) -> Result {
    let options = parse(args)?;
    let points = &options.points;
    let runs = if options.quick { 1 } else { RUNS };
    setup::apt(setup::BENCH_PACKAGES)?;
    setup::apt(&["curl"])?;
    let tools = Tools::build("release")?;
    // Outside the repository: nothing this bench writes belongs there.
    let dir = std::env::temp_dir().join("scangw-bench-replication");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(io)?;
    eprintln!(
        "bench replication: sites and logs in {}; {}",
        dir.display(),
        if runs == 1 {
            format!("quick: one run per point and server, not the median of {RUNS}")
        } else {
            format!(
                "{runs} interleaved runs per point and server (peer, local, nginx, ...); the \
                 median run is the figure"
            )
        }
    );
    // nginx serves TLS with the first pair's certificate.
    let tls = dir.join("tls");
    let mut rows = Vec::new();
    for pass in 1..=runs {
        for ack in [Ack::Peer, Ack::Local] {
            let site = pair_round(
                &tools,
                &dir.join(format!("run{pass}-{}", ack.word())),
                ack,
                points,
                pass,
                &mut rows,
            )?;
            if !tls.exists() {
                std::fs::create_dir_all(&tls).map_err(io)?;
                std::fs::copy(site.cert(), tls.join("cert.pem")).map_err(io)?;
                std::fs::copy(site.key(), tls.join("key.pem")).map_err(io)?;
            }
            site.discard_data()?;
        }
        let nginx_dir = dir.join(format!("run{pass}-nginx"));
        let nginx = start_nginx(&nginx_dir, &tls.join("cert.pem"), &tls.join("key.pem"))?;
        let args = ["--method", "PUT", "--multipart-body", "bench"].map(str::to_owned);
        for &point in points {
            let (load, cpu_busy) =
                measure(&tools, &nginx.https, &tls.join("cert.pem"), &args, point)?;
            let row = Row {
                point,
                server: NGINX.to_owned(),
                pass,
                load,
                answers: None,
                cpu_busy,
                trace: None,
            };
            eprintln!(
                "bench replication: run {pass}, nginx, {}: {:.1} jobs/s",
                point.label(),
                row.rate()
            );
            rows.push(row);
        }
        drop(nginx);
        std::fs::remove_dir_all(&nginx_dir)
            .map_err(|e| format!("cannot remove {}: {e}", nginx_dir.display()))?;
    }
    report(points, &rows, runs, &dir)
}

const NGINX: &str = "nginx, WebDAV PUT";

fn server_of(ack: Ack) -> String {
    format!("pair, ack = \"{}\"", ack.word())
}

/// The median run of `point` on `server` by jobs per second, and every
/// run's rate in the order they ran.
fn median_row<'a>(rows: &'a [Row], point: Point, server: &str) -> Option<(&'a Row, Vec<f64>)> {
    let runs: Vec<&Row> = rows
        .iter()
        .filter(|r| {
            r.point.size == point.size
                && r.point.concurrency == point.concurrency
                && r.server == server
        })
        .collect();
    let rates: Vec<f64> = runs.iter().map(|r| r.rate()).collect();
    let median = *runs.get(median_index(&rates))?;
    Some((median, rates))
}

fn answers_cell(row: &Row) -> String {
    match &row.answers {
        None => "–".to_owned(),
        Some(a) => {
            let mut cell = format!("{} / {}", a.replicated, a.not_replicated);
            let succeeded = row.load["succeeded"].as_u64().unwrap_or(0);
            if a.logged != succeeded || a.replicated + a.not_replicated != a.logged {
                cell += &format!(" (of {} logged)", a.logged);
            }
            cell
        }
    }
}

fn report(points: &[Point], rows: &[Row], runs: usize, dir: &Path) -> Result {
    let mut problems = Vec::new();
    // Every run must have succeeded, not only the median ones.
    for row in rows {
        let failed = row.load["failed"].as_u64().unwrap_or(0);
        if failed > 0 {
            problems.push(format!(
                "run {}, {} on {}: {failed} requests failed ({})",
                row.pass,
                row.point.label(),
                row.server,
                row.load["outcomes"]
            ));
        }
        if let Some(t) = &row.trace {
            if !t.missing.is_empty() {
                problems.push(format!(
                    "run {}, {} on {}: {} of {} acknowledged jobs were not stored on gw-b within \
                     {} s after the load (first: {})",
                    row.pass,
                    row.point.label(),
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
            let succeeded = row.load["succeeded"].as_u64().unwrap_or(0);
            if t.accepted as u64 != succeeded {
                println!(
                    "run {}, {} on {}: gw-a logged `{ACCEPTED}` {} times for {succeeded} \
                     successful answers",
                    row.pass,
                    row.point.label(),
                    row.server,
                    t.accepted
                );
            }
        }
    }
    let how = if runs == 1 {
        "one run each (quick)".to_owned()
    } else {
        format!("median of {runs} interleaved runs by jobs/s")
    };
    println!(
        "## jobs across the pair on loopback: every job to gw-a over TLS, same load client and \
         bodies for all; pipelines paused on both servers; {how}; {} cores",
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    println!(
        "acknowledgement latency: from sending the request to the complete answer (mfd-sim load); \
         `replicated` as gw-a logged each acknowledgement; CPU busy by /proc/stat over the load"
    );
    println!();
    println!(
        "| load (size × concurrent) | server | jobs | failed | jobs/s | MB/s | ack p50 ms | ack p99 ms | ack max ms | 201 `replicated` true / false | CPU busy | jobs/s of each run |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    let servers = [
        server_of(Ack::Peer),
        server_of(Ack::Local),
        NGINX.to_owned(),
    ];
    for &point in points {
        for server in &servers {
            let Some((row, rates)) = median_row(rows, point, server) else {
                continue;
            };
            println!(
                "| {} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} | {} |",
                point.label(),
                server,
                row.load["requests"].as_u64().unwrap_or(0),
                row.load["failed"].as_u64().unwrap_or(0),
                row.rate(),
                row.load["megabytes_per_second"].as_f64().unwrap_or(0.0),
                row.latency("p50_ms"),
                row.latency("p99_ms"),
                row.latency("max_ms"),
                answers_cell(row),
                row.cpu_busy.map_or("?".to_owned(), |b| format!("{b:.0}%")),
                rates
                    .iter()
                    .map(|r| format!("{r:.1}"))
                    .collect::<Vec<_>>()
                    .join(" / ")
            );
        }
    }
    println!();
    let median = |point: Point, server: &str| median_row(rows, point, server).map(|(r, _)| r);
    for &point in points {
        let (peer, local, nginx) = (
            median(point, &server_of(Ack::Peer)),
            median(point, &server_of(Ack::Local)),
            median(point, NGINX),
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
        format!(
            "{name} {:.1} jobs/s, p50 {} / p99 {}",
            r.rate(),
            crate::table::ms(r.latency("p50_ms")),
            crate::table::ms(r.latency("p99_ms")),
        )
    };
    for &point in points {
        let Some(n) = median(point, NGINX) else {
            continue;
        };
        for ack in [Ack::Peer, Ack::Local] {
            if let Some(r) = median(point, &server_of(ack)) {
                crate::table::row(
                    format!(
                        "intake into the pair, ack = \"{}\": {}, {} jobs, TLS, {how}",
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
    // The lag of the median ack = "local" run of each point.
    let local_traces: Vec<(Point, &Row, &Traced)> = points
        .iter()
        .filter_map(|&point| {
            let row = median(point, &server_of(Ack::Local))?;
            Some((point, row, row.trace.as_ref()?))
        })
        .collect();
    for (point, r, t) in &local_traces {
        let Some(s) = summary(&t.differences) else {
            continue;
        };
        crate::table::row(
            format!(
                "replication lag with ack = \"local\" (copy stored on the peer − job accepted): {}, {} jobs",
                point.label(),
                point.requests
            ),
            format!(
                "p50 {:.0} / p99 {:.0} ms (n={}; log timestamps, ±1 ms)",
                s.p50, s.p99, s.n,
            ),
            format!(
                "the same load's acknowledgement: p50 {} / p99 {}",
                crate::table::ms(r.latency("p50_ms")),
                crate::table::ms(r.latency("p99_ms"))
            ),
            crate::table::ratio(s.p50, r.latency("p50_ms")),
        );
    }

    let resolution = local_traces
        .iter()
        .map(|(_, _, t)| t.digits)
        .min()
        .unwrap_or(0);
    println!();
    println!(
        "## replication lag with ack = \"local\" (the median run of each point): gw-b's \
         `{STORED}` − gw-a's `{ACCEPTED}`, matched by job id; log timestamps with {resolution} \
         fractional digits, so each figure is whole milliseconds, ±1 ms"
    );
    println!();
    println!(
        "| load (size × concurrent) | jobs | lag p50 ms | lag p99 ms | lag max ms | lag min ms | p50 by quarter of the load | accepted on gw-a / stored on gw-b, jobs/s |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (point, _, t) in &local_traces {
        let quarters = t
            .differences
            .chunks(t.differences.len().div_ceil(4).max(1))
            .filter_map(|q| summary(q).map(|s| format!("{:.0}", s.p50)))
            .collect::<Vec<_>>()
            .join(" / ");
        if let Some(s) = summary(&t.differences) {
            println!(
                "| {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {quarters} | {} / {} |",
                point.label(),
                s.n,
                s.p50,
                s.p99,
                s.max,
                s.min,
                t.accepted_rate
                    .map_or("?".to_owned(), |r| format!("{r:.0}")),
                t.stored_rate.map_or("?".to_owned(), |r| format!("{r:.0}")),
            );
        }
    }
    println!();
    for &point in points {
        let Some(row) = median(point, &server_of(Ack::Peer)) else {
            continue;
        };
        let Some(t) = &row.trace else { continue };
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
    println!("logs: {}/run*/gw-a.log and gw-b.log", dir.display());
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
fn make_site(tools: &Tools, dir: &Path) -> Result<Site> {
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
    let (config, key_a, key_b) = crate::pair_site::pair_config(tools, dir, 5, &body)?;
    std::fs::create_dir_all(dir).map_err(io)?;
    let site = Site {
        tools: tools.clone(),
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
    fn acknowledgements_are_counted_from_the_log_after_an_offset() {
        let dir = std::env::temp_dir().join(format!("scangw-answers-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("gw-a.log");
        let earlier = r#"{"ts":"2026-12-02T06:00:00.000Z","message":"job accepted","job":"j0","replicated":"true"}"#;
        std::fs::write(&log, format!("{earlier}\n")).unwrap();
        let from = log_len(&log);
        let later = [
            r#"{"ts":"2026-12-02T06:00:01.000Z","message":"job accepted","job":"j1","replicated":"true"}"#,
            r#"{"ts":"2026-12-02T06:00:01.001Z","message":"replica stored","job":"j1"}"#,
            r#"{"ts":"2026-12-02T06:00:01.002Z","message":"job accepted","job":"j2","replicated":"false"}"#,
            r#"{"ts":"2026-12-02T06:00:01.003Z","message":"job accepted","job":"j3"}"#,
            "not json",
        ];
        std::fs::write(&log, format!("{earlier}\n{}\n", later.join("\n"))).unwrap();
        let a = answers(&log, from).unwrap();
        assert_eq!((a.logged, a.replicated, a.not_replicated), (3, 1, 1));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_median_run_of_each_point_and_server_is_chosen() {
        let point = Point {
            requests: 1,
            size: 100_000,
            concurrency: 1,
        };
        let row = |server: &str, rate: f64, pass: usize| Row {
            point,
            server: server.to_owned(),
            pass,
            load: serde_json::json!({ "requests_per_second": rate }),
            answers: None,
            cpu_busy: None,
            trace: None,
        };
        let rows = vec![
            row("a", 10.0, 1),
            row("b", 1.0, 1),
            row("a", 30.0, 2),
            row("a", 20.0, 3),
        ];
        let (median, runs) = median_row(&rows, point, "a").unwrap();
        assert_eq!((median.pass, runs.len()), (3, 3));
        assert_eq!(median_row(&rows, point, "b").unwrap().0.pass, 1);
        assert!(median_row(&rows, point, "c").is_none());
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
        let o = parse(&[]).unwrap();
        assert!(!o.quick);
        assert_eq!(o.points.len(), 8);
        assert_eq!(o.points[3].label(), "1 MB × 1");
        assert_eq!(o.points[3].requests, 100);
        assert!(parse(&["--quick".to_owned()]).unwrap().quick);
        let one = |list: &str| parse(&["--points".to_owned(), list.to_owned()]);
        assert!(one("100000:10").is_err());
        assert!(one("100000:0:5").is_err());
        assert!(one("100000:10:5,100000:10:7").is_err(), "listed twice");
    }
}
