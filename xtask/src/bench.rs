//! `cargo xtask bench`: the benchmarks whose figures BENCHMARKS.md records,
//! each measured side by side with its baseline in the same run.
//!
//! - `intake`: job uploads into the gateway vs. nginx writing the same bodies
//!   to disk (WebDAV PUT), same load client, same transport (plain HTTP and
//!   TLS, both with the same certificate), then small and large jobs (100 KB,
//!   1 MB, 20 MB) from 1, 10 and 100 devices at once over TLS; and the
//!   gateway's peak memory while many large uploads stream in at once.
//!   Every point runs three times per server, interleaved (nginx, gateway,
//!   nginx, ...), and its figure is the median run (one run with
//!   `--quick`). Each run reports how many uploads were acknowledged (one
//!   missing fails the benchmark, after everything is printed) and the CPU
//!   time per job of each server's processes; at one device the gateway's
//!   acknowledgement latency is set beside its floor, one write + fsync of
//!   the same number of bytes on the same disk.
//! - `ocr`: the OCR pipeline vs. the tesseract CLI on the same pages (the
//!   plugins crate's `ocr-bench`).
//! - `pair` (`bench_pair`): DEAD detection time of the pair heartbeat after
//!   SIGSTOP and kill -9 of the peer vs. HAProxy's default health checks on
//!   the same fault, and false DEADs while every core is saturated.
//! - `config` (`bench_config`): how long a configuration change committed on
//!   the primary takes until the secondary has applied it, beside the admin
//!   command's round trip and a loopback TCP echo.
//! - `replication` (`bench_replication`): job intake into a pair that
//!   acknowledges after the peer's copy vs. after the local commit vs.
//!   nginx (same load client and bodies), and the lag of the peer's copy.
//! - `takeover` (`bench_takeover`): kill -9 of a job's owner to the peer's
//!   delivery of it, split into DEAD, the lease wait and the pipeline, vs. a
//!   healthy owner delivering the same job.
//! - `failover` (`bench_failover`): at the device, the primary's death
//!   (refused: kill -9; silent: its packets dropped) to the next job
//!   acknowledged by the secondary, vs. a healthy primary's acknowledgement
//!   and HAProxy's default check timing.
//!
//! - `all`: every benchmark above in turn, then one table of their headline
//!   figures (`table`), each beside its baseline, printed and written to
//!   `target/bench/table.md` and `table.json`; `all --quick` shrinks each
//!   to seconds, to check that every one runs. Each single benchmark prints
//!   its own rows of the table at its end.
//!
//! Release builds, loopback only, every run bounded by its request count,
//! trial count or duration.

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::measure::{
    Summary, clock_ticks_per_second, io, median_index, process_cpu_ticks, summary,
};
use crate::site::{Tools, listener, output};
use crate::{Result, bench_pair, exec, root, setup, table};

struct Options {
    requests: u32,
    concurrency: u32,
    size: u64,
    memory_uploads: u32,
    memory_size: u64,
    /// The intake's job matrix shrunk to a few requests per point, one run
    /// per point instead of the median of three.
    quick: bool,
    pair: bench_pair::Options,
}

fn usage() -> String {
    format!(
        "usage: cargo xtask bench [intake|ocr|pair|config|replication|takeover|failover|all] [options]
  all:    [--quick] every benchmark in turn, then the table (target/bench/table.md, table.json);
          --quick shrinks each to seconds (figures marked quick: a check that all run)
  intake: [--requests N] [--concurrency N] [--size BYTES] [--memory-uploads N] [--memory-size BYTES] [--quick]
          each point runs 3 times per server and the median run is reported;
          --quick: a few jobs per point, 1 run each
  ocr:    [--pages N (16)] [--rounds N (4)]
  pair:   [--trials N (50 per fault)] [--haproxy-trials N (20 per fault)] [--soak-secs N (600; 0: none)]
          [--heartbeat-interval-ms N (100)] [--dead-threshold-ms N (600)] [--json]
{}
{}
{}
{}",
        crate::bench_config::USAGE,
        crate::bench_replication::USAGE,
        crate::bench_takeover::USAGE,
        crate::bench_failover::USAGE
    )
}

fn parse(args: &[String]) -> Result<(String, Options)> {
    let what = args.first().cloned().unwrap_or_default();
    let mut o = Options {
        requests: 400,
        concurrency: 16,
        size: 1_000_000,
        memory_uploads: 200,
        memory_size: 20_000_000,
        quick: false,
        pair: bench_pair::Options::default(),
    };
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| -> Result<u64> {
            it.next()
                .and_then(|v| v.parse().ok())
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("{name} needs a positive number"))
        };
        match (what.as_str(), a.as_str()) {
            ("intake", "--requests") => o.requests = value("--requests")? as u32,
            ("intake", "--concurrency") => o.concurrency = value("--concurrency")? as u32,
            ("intake", "--size") => o.size = value("--size")?,
            ("intake", "--memory-uploads") => {
                o.memory_uploads = value("--memory-uploads")? as u32;
            }
            ("intake", "--memory-size") => o.memory_size = value("--memory-size")?,
            ("intake", "--quick") => {
                o.quick = true;
                o.requests = 40;
                o.memory_uploads = 20;
                o.memory_size = 2_000_000;
            }
            ("pair", "--trials") => o.pair.trials = value("--trials")? as u32,
            ("pair", "--haproxy-trials") => {
                o.pair.haproxy_trials = value("--haproxy-trials")? as u32;
            }
            ("pair", "--soak-secs") => {
                // 0 skips the soak.
                o.pair.soak_secs = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .ok_or("--soak-secs needs a number of seconds (0: no soak)")?;
            }
            ("pair", "--heartbeat-interval-ms") => {
                o.pair.heartbeat_interval_ms = value("--heartbeat-interval-ms")?;
            }
            ("pair", "--dead-threshold-ms") => {
                o.pair.dead_threshold_ms = value("--dead-threshold-ms")?;
            }
            ("pair", "--json") => o.pair.json = true,
            (_, other) => {
                return Err(format!(
                    "unknown option `{other}` for bench {what}\n{}",
                    usage()
                ));
            }
        }
    }
    Ok((what, o))
}

/// `bench ocr`: the plugins crate's `ocr-bench` (pipeline vs. the
/// tesseract CLI on the same pages), its figures read from its JSON.
fn ocr(args: &[String]) -> Result {
    let (mut pages, mut rounds) = (16u64, 4u64);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| -> Result<u64> {
            it.next()
                .and_then(|v| v.parse().ok())
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("{name} needs a positive number"))
        };
        match a.as_str() {
            "--pages" => pages = value("--pages")?,
            "--rounds" => rounds = value("--rounds")?,
            other => {
                return Err(format!(
                    "unknown option `{other}` for bench ocr\n{}",
                    usage()
                ));
            }
        }
    }
    setup::apt(setup::DEMO_PACKAGES)?;
    // The example's account of each round goes to stderr (shown as it
    // comes), its figures to stdout as one JSON object.
    let out = Command::new("cargo")
        .args([
            "run",
            "--release",
            "-p",
            "plugins",
            "--example",
            "ocr-bench",
            "--",
        ])
        .args([
            "--pages",
            &pages.to_string(),
            "--rounds",
            &rounds.to_string(),
            "--json",
        ])
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run the ocr-bench example: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "ocr-bench failed ({}): {}",
            out.status,
            text.trim()
        ));
    }
    let v: Value =
        serde_json::from_str(text.trim()).map_err(|e| format!("ocr-bench's JSON {text:?}: {e}"))?;
    println!(
        "{}",
        serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?
    );
    let (cli, piped) = (
        v["cli_pages_per_second"].as_f64().unwrap_or(0.0),
        v["pipeline_pages_per_second"].as_f64().unwrap_or(0.0),
    );
    table::row(
        format!(
            "OCR: pipeline (OCR + PDF assembly), {pages} A4 pages at 300 dpi × {rounds} round(s), \
             {} at a time",
            v["parallelism"]
        ),
        format!("{piped:.3} pages/s"),
        format!("tesseract CLI on the same pages, same parallelism: {cli:.3} pages/s"),
        table::ratio(piped, cli),
    );
    Ok(())
}

/// The benchmarks in the order `bench all` runs them, with the arguments it
/// gives each: its defaults, except where a default run is long (the pair's
/// 600 s soak and 20 HAProxy trials per fault, the failover's 50 trials per
/// fault), and the arguments of `bench all --quick`, which shrink each to
/// seconds (its figures are marked quick and are not the benchmarks').
const ALL: &[(&str, &[&str], &[&str])] = &[
    ("intake", &[], &["--quick"]),
    ("ocr", &[], &["--pages", "2", "--rounds", "1"]),
    (
        "pair",
        &[
            "--trials",
            "30",
            "--haproxy-trials",
            "6",
            "--soak-secs",
            "120",
        ],
        &["--trials", "3", "--haproxy-trials", "1", "--soak-secs", "5"],
    ),
    ("config", &[], &["--changes", "20"]),
    (
        "replication",
        &[],
        &[
            "--points",
            "100000:10:100,1000000:4:20,100000:1:20",
            "--quick",
        ],
    ),
    ("takeover", &[], &["--rounds", "2"]),
    (
        "failover",
        &["--trials", "30", "--haproxy-trials", "6"],
        &["--trials", "2", "--haproxy-trials", "1"],
    ),
];

pub fn run(args: &[String]) -> Result {
    match args.first().map(String::as_str) {
        None | Some("all") => all(args.get(1..).unwrap_or_default()),
        Some(name) if ALL.iter().any(|(n, _, _)| *n == name) => {
            let command = command_line(name, &args[1..]);
            let mark = table::begin(&command);
            let load_before = table::load_average();
            let result = one(name, &args[1..]);
            if let Err(e) = &result {
                table::failed(name, e);
            }
            let m = table::machine(format!(
                "{load_before} before, {} after",
                table::load_average()
            ));
            println!(
                "\n{}",
                table::markdown(
                    &format!("### Table rows of `{command}`"),
                    &m,
                    &table::since(mark)
                )
            );
            result
        }
        Some(other) => Err(format!("unknown benchmark `{other}`\n{}", usage())),
    }
}

fn command_line(name: &str, args: &[String]) -> String {
    let mut c = format!("cargo xtask bench {name}");
    for a in args {
        c.push(' ');
        c.push_str(a);
    }
    c
}

/// One benchmark with its own arguments.
fn one(name: &str, args: &[String]) -> Result {
    match name {
        "config" => crate::bench_config::run(args),
        "replication" => crate::bench_replication::run(args),
        "takeover" => crate::bench_takeover::run(args),
        "failover" => crate::bench_failover::run(args),
        "ocr" => ocr(args),
        _ => {
            let mut all = vec![name.to_owned()];
            all.extend(args.iter().cloned());
            let (what, opts) = parse(&all)?;
            if what == "intake" {
                intake(&opts)
            } else {
                bench_pair::run(&opts.pair)
            }
        }
    }
}

/// `bench all [--quick]`: every benchmark in turn, each failure recorded in
/// its row and the rest still run; then the table, printed and written to
/// `target/bench/table.md` and `table.json`.
fn all(args: &[String]) -> Result {
    let quick = match args {
        [] => false,
        [q] if q == "--quick" => true,
        _ => return Err(format!("`bench all` takes only --quick\n{}", usage())),
    };
    let started = std::time::Instant::now();
    let load_before = table::load_average();
    let mark = table::begin("");
    let mut failed = Vec::new();
    for (name, full, light) in ALL {
        let args: Vec<String> = if quick { *light } else { *full }
            .iter()
            .map(|a| (*a).to_owned())
            .collect();
        let command = command_line(name, &args);
        eprintln!("bench all: {command}");
        let bench_mark = table::begin(&command);
        let bench_started = std::time::Instant::now();
        // A panic in one benchmark (its processes stopped by their guards
        // as it unwinds) is that benchmark's failure, not the run's end.
        let result = std::panic::catch_unwind(|| one(name, &args)).unwrap_or_else(|p| {
            Err(p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .map_or("panicked".to_owned(), |m| format!("panicked: {m}")))
        });
        if let Err(e) = &result {
            eprintln!("bench all: {name} failed: {e}");
            table::failed(name, e);
            failed.push(*name);
        }
        let m = table::machine(table::load_average());
        println!(
            "\n{}",
            table::markdown(
                &format!(
                    "### Table rows of `{command}` ({:.0} s)",
                    bench_started.elapsed().as_secs_f64()
                ),
                &m,
                &table::since(bench_mark)
            )
        );
    }
    let took = started.elapsed().as_secs_f64();
    let load = format!("{load_before} before, {} after", table::load_average());
    let m = table::machine(load);
    let title = if quick {
        format!(
            "## Benchmark table — QUICK RUN (`cargo xtask bench all --quick`, {took:.0} s): \
             every benchmark shrunk to seconds to check that it runs; these are not the \
             benchmarks' figures"
        )
    } else {
        format!("## Benchmark table (`cargo xtask bench all`, {took:.0} s)")
    };
    let rows = table::since(mark);
    let md = table::markdown(&title, &m, &rows);
    let js = table::json(&title, &m, &rows);
    let dir = root().join("target/bench");
    table::write(&dir, &md, &js)?;
    println!("\n{md}");
    println!(
        "table written to {} and {}",
        dir.join("table.md").display(),
        dir.join("table.json").display()
    );
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("benchmarks failed: {}", failed.join(", ")))
    }
}

fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

/// Peak resident memory (VmHWM) of a process, in MiB.
fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Resets the peak resident memory (VmHWM) of a process to its present
/// resident memory, so that the next reading is the peak since now.
fn reset_peak_rss(pid: u32) -> Result {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
        .map_err(|e| format!("cannot reset the peak memory of process {pid}: {e}"))
}

/// Children of a process (nginx's workers).
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect()
}

struct Gateway {
    child: Child,
    https: String,
    plain: String,
    cert: PathBuf,
    key: PathBuf,
    token: String,
    session: String,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

fn start_gateway(tools: &Tools, dir: &Path) -> Result<Gateway> {
    let config = dir.join("gw.toml");
    let vendor = tools.vendor(dir)?;
    let key = tools.issue(&vendor, "03", 1, 5)?;
    let hash = tools.hash_password("bench")?;
    // The pipeline is paused during the measurement (see below) so that it
    // does not compete with the intake for CPU; nginx runs no pipeline either.
    std::fs::write(
        &config,
        format!(
            r#"[licensing]
trusted_vendor_keys = ["{}"]
[limits]
max_job_bytes = "64MiB"
max_page_bytes = "32MiB"
[users.bench]
password_hash = "{hash}"
[workflows.bench]
steps = [ {{ plugin = "assemble" }}, {{ plugin = "folder", root = "{{data_dir}}/delivered" }} ]
[instances.gw-bench]
data_dir = "data"
listen = "127.0.0.1:0"
listen_plain = "127.0.0.1:0"
log_level = "warn"
"#,
            vendor.public_key
        ),
    )
    .map_err(|e| e.to_string())?;
    let g = |args: &[&str]| output(tools.gateway(&config, "gw-bench").args(args));
    g(&["license", "activate", &key])?;
    let added: Value =
        serde_json::from_str(&g(&["device", "add", "bench-mfd"])?).map_err(|e| e.to_string())?;
    let token = added["token"].as_str().unwrap_or_default().to_owned();
    let (child, info) = tools.serve(
        &config,
        "gw-bench",
        &dir.join("data"),
        &dir.join("gateway.log"),
    )?;
    g(&["pipeline", "pause"])?;
    let https = format!("https://{}", listener(&info, "https"));
    let plain = format!("http://{}", listener(&info, "plain"));
    let login = output(Command::new("curl").args([
        "-s",
        "--fail-with-body",
        "-H",
        &format!("Authorization: Bearer {token}"),
        "-H",
        "Content-Type: application/json",
        "-d",
        r#"{"user":"bench","password":"bench"}"#,
        &format!("{plain}/api/v1/sessions"),
    ]))?;
    let session: Value =
        serde_json::from_str(&login).map_err(|e| format!("login answer {login}: {e}"))?;
    Ok(Gateway {
        https,
        plain,
        cert: dir.join("data/tls/gw-bench.cert.pem"),
        key: dir.join("data/tls/gw-bench.key.pem"),
        token,
        session: session["session"].as_str().unwrap_or_default().to_owned(),
        child,
    })
}

pub(crate) struct Nginx {
    child: Child,
    pub(crate) plain: String,
    pub(crate) https: String,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

pub(crate) fn start_nginx(dir: &Path, cert: &Path, key: &Path) -> Result<Nginx> {
    let (p1, p2) = (free_port()?, free_port()?);
    for d in ["www", "body", "logs"] {
        std::fs::create_dir_all(dir.join(d)).map_err(|e| e.to_string())?;
    }
    let conf = dir.join("nginx.conf");
    // Started as root, nginx would run its workers as `nobody`, who cannot
    // write into this directory: keep them as the invoking user.
    let user = output(Command::new("id").arg("-un"))?;
    let user_line = if user == "root" { "user root;\n" } else { "" };
    std::fs::write(
        &conf,
        format!(
            r#"{user_line}worker_processes 2;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/logs/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_max_body_size 100m;
  client_body_temp_path {dir}/body;
  server {{
    listen 127.0.0.1:{p1};
    listen 127.0.0.1:{p2} ssl;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    location /upload/ {{
      root {dir}/www;
      dav_methods PUT;
      create_full_put_path on;
    }}
  }}
}}
"#,
            dir = dir.display(),
            cert = cert.display(),
            key = key.display()
        ),
    )
    .map_err(|e| e.to_string())?;
    let child = Command::new("nginx")
        .arg("-c")
        .arg(&conf)
        .arg("-p")
        .arg(dir)
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start nginx: {e}"))?;
    std::thread::sleep(Duration::from_millis(500));
    Ok(Nginx {
        child,
        plain: format!("http://127.0.0.1:{p1}/upload"),
        https: format!("https://127.0.0.1:{p2}/upload"),
    })
}

/// One run of `mfd-sim load`: its JSON summary. A run in which uploads
/// failed still returns its summary (the load client exits non-zero after
/// printing it), so that the caller can report the failures beside the
/// figures; only a run without a summary is an error.
pub(crate) fn load(
    tools: &Tools,
    url: &str,
    cert: &Path,
    extra: &[String],
    requests: u32,
    concurrency: u32,
    size: u64,
) -> Result<Value> {
    // Each run starts with page-cache writeback done: otherwise one server's
    // unflushed writes slow down the next server's fsyncs.
    exec(&mut Command::new("sync"))?;
    let mut client = Command::new(tools.bin("mfd-sim"));
    client
        .arg("load")
        .args(["--url", url])
        .arg("--ca")
        .arg(cert)
        .args([
            "--size",
            &size.to_string(),
            "--requests",
            &requests.to_string(),
        ])
        .args([
            "--concurrency",
            &concurrency.to_string(),
            "--json",
            "--quiet",
        ])
        // A load client, not a device: hundreds of TLS handshakes at
        // once on two cores take longer than a device's 1 s connect
        // limit, and its liveness checks would add connections of
        // their own. Both servers get the same client.
        .args(["--connect-timeout", "10", "--liveness-check-after", "0"])
        .args(extra);
    let out = client
        .output()
        .map_err(|e| format!("cannot run {client:?}: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).map_err(|e| {
        format!(
            "{client:?} failed ({}) without a summary ({e}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            text.trim()
        )
    })
}

/// Runs of each intake point and server; the figure is the median run.
const RUNS: usize = 3;

/// A run that wrote this much has its files removed after it.
const DISCARD_AFTER_BYTES: u64 = 1_000_000_000;

/// How the load client reaches a server.
#[derive(Clone, Copy)]
enum Transport {
    Plain,
    Tls,
}

impl Transport {
    fn label(self) -> &'static str {
        match self {
            Transport::Plain => "plain HTTP",
            Transport::Tls => "TLS",
        }
    }
}

/// The two servers every intake figure compares.
#[derive(Clone, Copy)]
enum Side {
    Nginx,
    Gateway,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Nginx => "nginx",
            Side::Gateway => "gateway",
        }
    }
}

/// One load: `requests` uploads of `size` bytes, `concurrency` at once.
#[derive(Clone, Copy)]
struct Point {
    size: u64,
    concurrency: u32,
    requests: u32,
}

/// A gateway and nginx started side by side in one directory, nginx with
/// the gateway's certificate. Dropping it stops nginx, then the gateway.
struct Servers {
    nginx: Nginx,
    gateway: Gateway,
    dir: PathBuf,
}

impl Servers {
    fn start(tools: &Tools, dir: &Path) -> Result<Servers> {
        let gateway = start_gateway(tools, dir)?;
        let nginx = start_nginx(&dir.join("nginx"), &gateway.cert, &gateway.key)?;
        Ok(Servers {
            nginx,
            gateway,
            dir: dir.to_owned(),
        })
    }

    /// Removes the files a run left in `side`'s upload directory, so the
    /// runs of a point do not fill the disk (three runs of 200 uploads of
    /// 20 MB into each server are 24 GB). The gateway's pipeline stays
    /// paused, so nothing reads the job rows left without their pages.
    /// Only after runs of [`DISCARD_AFTER_BYTES`] or more: removing files
    /// costs the disk work of its own (this file system may discard the
    /// freed blocks), which would weigh on the small jobs' next runs.
    fn discard(&self, side: Side) -> Result {
        let uploads = match side {
            Side::Nginx => self.dir.join("nginx/www/upload"),
            Side::Gateway => self.dir.join("data/gw-bench-spool/jobs"),
        };
        let Ok(entries) = std::fs::read_dir(&uploads) else {
            return Ok(());
        };
        for entry in entries {
            let path = entry.map_err(|e| e.to_string())?.path();
            let removed = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            removed.map_err(|e| format!("cannot remove {}: {e}", path.display()))?;
        }
        Ok(())
    }

    /// Where the load client sends to `side`, and the arguments that make
    /// it send the same job body to both: a multipart upload as a device
    /// to the gateway, the same multipart bytes as a WebDAV PUT to nginx.
    fn target(&self, side: Side, transport: Transport) -> (&str, Vec<String>) {
        let tls = matches!(transport, Transport::Tls);
        match side {
            Side::Nginx => {
                let n = &self.nginx;
                let args = ["--method", "PUT", "--multipart-body", "bench"];
                (
                    if tls { &n.https } else { &n.plain },
                    args.map(str::to_owned).to_vec(),
                )
            }
            Side::Gateway => {
                let g = &self.gateway;
                (
                    if tls { &g.https } else { &g.plain },
                    vec![
                        "--multipart-gateway".to_owned(),
                        format!("{},{},bench", g.token, g.session),
                    ],
                )
            }
        }
    }

    /// The processes of `side` whose CPU time counts (nginx: its master and
    /// all its workers), and those whose peak memory does (nginx: its
    /// workers, where the uploads are handled).
    fn processes(&self, side: Side) -> (Vec<u32>, Vec<u32>) {
        match side {
            Side::Gateway => {
                let pid = self.gateway.child.id();
                (vec![pid], vec![pid])
            }
            Side::Nginx => {
                let master = self.nginx.child.id();
                let workers = children(master);
                let mut all = vec![master];
                all.extend(&workers);
                (all, workers)
            }
        }
    }

    /// The peak memory of `side` so far, in MiB: before any load, its idle
    /// memory.
    fn peak_mib(&self, side: Side) -> f64 {
        self.processes(side)
            .1
            .iter()
            .filter_map(|p| peak_rss_mib(*p))
            .sum()
    }
}

/// One load run against one server.
struct Run {
    /// The load client's JSON summary.
    load: Value,
    /// CPU time (user + system) of the server's processes over the run
    /// per job sent, in ms.
    cpu_ms_per_job: f64,
    /// The same in all, in clock ticks: its resolution.
    cpu_ticks: u64,
    /// Peak resident memory during the run, in MiB, summed over the
    /// server's processes (their high-water marks are reset before it).
    peak_mib: f64,
}

impl Run {
    fn number(&self, key: &str) -> f64 {
        self.load[key].as_f64().unwrap_or(0.0)
    }

    fn jobs_per_second(&self) -> f64 {
        self.number("requests_per_second")
    }

    fn megabytes_per_second(&self) -> f64 {
        self.number("megabytes_per_second")
    }

    fn latency_ms(&self, key: &str) -> f64 {
        self.load["latency"][key].as_f64().unwrap_or(0.0)
    }

    /// Uploads sent and uploads acknowledged (answered 2xx).
    fn acknowledged(&self) -> (u64, u64) {
        let sent = self.load["requests"].as_u64().unwrap_or(0);
        (
            sent,
            sent - self.load["failed"].as_u64().unwrap_or(0).min(sent),
        )
    }

    fn describe(&self) -> String {
        let (sent, acked) = self.acknowledged();
        format!(
            "{:.1} jobs/s, {:.1} MB/s, p50 {} / p99 {}, {acked} of {sent} acknowledged{}, \
             CPU {}/job ({} ticks), peak RSS {:.1} MiB",
            self.jobs_per_second(),
            self.megabytes_per_second(),
            table::ms(self.latency_ms("p50_ms")),
            table::ms(self.latency_ms("p99_ms")),
            if acked < sent { " (NOT ALL)" } else { "" },
            cpu_ms(self.cpu_ms_per_job),
            self.cpu_ticks,
            self.peak_mib
        )
    }
}

/// Each server's runs of one point, in the order they ran.
struct Compared {
    nginx: Vec<Run>,
    gateway: Vec<Run>,
}

impl Compared {
    /// The median run of each server by `key`: (gateway, nginx).
    fn median(&self, key: fn(&Run) -> f64) -> (&Run, &Run) {
        fn pick(runs: &[Run], key: fn(&Run) -> f64) -> &Run {
            let values: Vec<f64> = runs.iter().map(key).collect();
            &runs[median_index(&values)]
        }
        (pick(&self.gateway, key), pick(&self.nginx, key))
    }
}

/// Records a row of the table and prints it at once, so that each figure
/// can be read as soon as it is made.
fn report(what: String, figure: String, baseline: String, ratio: String) {
    println!("=> {what}\n   {figure}\n   beside {baseline}\n   ratio {ratio}");
    table::row(what, figure, baseline, ratio);
}

/// A CPU time in ms, with two decimals below 1 ms.
fn cpu_ms(v: f64) -> String {
    if v >= 1.0 {
        table::ms(v)
    } else {
        format!("{v:.2} ms")
    }
}

/// Every run's `key`, in the order they ran: the spread behind a median.
fn spread(runs: &[Run], key: fn(&Run) -> f64) -> String {
    let all: Vec<String> = runs.iter().map(|r| format!("{:.1}", key(r))).collect();
    all.join(" / ")
}

/// The start of a table cell: the runs in which not every upload was
/// acknowledged, in bold; nothing when all were.
fn unacknowledged_note(runs: &[Run]) -> String {
    let missing: Vec<String> = runs
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            let (sent, acked) = r.acknowledged();
            (acked < sent).then(|| format!("run {}: {acked} of {sent}", i + 1))
        })
        .collect();
    if missing.is_empty() {
        String::new()
    } else {
        format!("**NOT ALL UPLOADS ACKNOWLEDGED ({})** ", missing.join("; "))
    }
}

/// What the intake's measurements share: the binaries, the runs per point,
/// the clock tick of the CPU times, and the runs so far in which not every
/// upload was acknowledged.
struct Intake<'a> {
    tools: &'a Tools,
    quick: bool,
    runs: usize,
    tick_ms: f64,
    unacknowledged: Vec<String>,
}

impl Intake<'_> {
    /// `self.runs` runs of `point` into each server, interleaved (nginx,
    /// gateway, nginx, gateway, ...) so that a drift of the machine
    /// (writeback, other load) touches both alike; each printed as it ends.
    fn compare(
        &mut self,
        label: &str,
        servers: &Servers,
        transport: Transport,
        point: Point,
    ) -> Result<Compared> {
        let mut compared = Compared {
            nginx: Vec::new(),
            gateway: Vec::new(),
        };
        for i in 1..=self.runs {
            for side in [Side::Nginx, Side::Gateway] {
                let run = self.run(servers, side, transport, point)?;
                println!(
                    "{label}: {:<7} run {i}/{}: {}",
                    side.name(),
                    self.runs,
                    run.describe()
                );
                let (sent, acked) = run.acknowledged();
                if acked < sent {
                    self.unacknowledged.push(format!(
                        "{label}, {} run {i}: {acked} of {sent}",
                        side.name()
                    ));
                }
                match side {
                    Side::Nginx => compared.nginx.push(run),
                    Side::Gateway => compared.gateway.push(run),
                }
            }
        }
        Ok(compared)
    }

    fn run(&self, servers: &Servers, side: Side, transport: Transport, p: Point) -> Result<Run> {
        let (url, args) = servers.target(side, transport);
        let (cpu, memory) = servers.processes(side);
        for pid in &memory {
            reset_peak_rss(*pid)?;
        }
        let before = process_cpu_ticks(&cpu);
        let load = load(
            self.tools,
            url,
            &servers.gateway.cert,
            &args,
            p.requests,
            p.concurrency,
            p.size,
        )?;
        let ticks = process_cpu_ticks(&cpu).saturating_sub(before);
        if u64::from(p.requests) * p.size >= DISCARD_AFTER_BYTES {
            servers.discard(side)?;
        }
        Ok(Run {
            load,
            cpu_ms_per_job: ticks as f64 * self.tick_ms / f64::from(p.requests),
            cpu_ticks: ticks,
            peak_mib: memory.iter().filter_map(|p| peak_rss_mib(*p)).sum(),
        })
    }

    /// How a figure was made, for the table: "median of 3" or "1 run".
    fn runs_label(&self) -> String {
        if self.runs == 1 {
            "1 run (quick)".to_owned()
        } else {
            format!("median of {}", self.runs)
        }
    }
}

fn intake(o: &Options) -> Result {
    setup::apt(setup::BENCH_PACKAGES)?;
    setup::apt(&["curl"])?;
    let tools = Tools::build("release")?;
    let dir = root().join("target/bench-intake");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let (ticks, tick_source) = match clock_ticks_per_second() {
        Some(t) => (t, "getconf CLK_TCK"),
        None => (100.0, "getconf CLK_TCK unavailable: 100 assumed"),
    };
    let mut bench = Intake {
        tools: &tools,
        quick: o.quick,
        runs: if o.quick { 1 } else { RUNS },
        tick_ms: 1000.0 / ticks,
        unacknowledged: Vec::new(),
    };
    if o.quick {
        println!("quick: one run per point and server, not the median of {RUNS}");
    } else {
        println!(
            "each point: {RUNS} runs per server, interleaved (nginx, gateway, nginx, ...); \
             the median run is the figure"
        );
    }
    println!(
        "CPU time: utime + stime of /proc/<pid>/stat over the run, the gateway's process and \
         nginx's master and workers; {ticks} ticks/s ({tick_source}), so per run a process's \
         time is known to {:.0} ms",
        bench.tick_ms
    );

    let servers = Servers::start(&tools, &dir)?;
    println!(
        "\n## intake throughput: {} uploads of {} bytes, {} concurrent",
        o.requests, o.size, o.concurrency
    );
    let point = Point {
        size: o.size,
        concurrency: o.concurrency,
        requests: o.requests,
    };
    for transport in [Transport::Plain, Transport::Tls] {
        let label = transport.label();
        let compared = bench.compare(label, &servers, transport, point)?;
        let (g, ng) = compared.median(Run::megabytes_per_second);
        println!(
            "{label}: {}: gateway {:.1} MB/s, nginx {:.1} MB/s, gateway/nginx throughput \
             ratio {}",
            bench.runs_label(),
            g.megabytes_per_second(),
            ng.megabytes_per_second(),
            table::ratio(g.megabytes_per_second(), ng.megabytes_per_second())
        );
    }
    drop(servers);

    matrix(&mut bench, &dir)?;
    memory(&mut bench, &dir, o)?;

    if bench.unacknowledged.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "not every upload was acknowledged in {} run(s): {}",
            bench.unacknowledged.len(),
            bench.unacknowledged.join("; ")
        ))
    }
}

/// Memory: the same number of concurrent uploads at two sizes, each size
/// on a freshly started gateway and nginx whose idle memory is read before
/// any load. If uploads stream, the peak does not grow with the upload
/// size.
fn memory(bench: &mut Intake, dir: &Path, o: &Options) -> Result {
    println!(
        "\n## memory: {} concurrent uploads, peak resident memory",
        o.memory_uploads
    );
    for size in [o.memory_size / 10, o.memory_size] {
        let run_dir = dir.join(format!("memory-{size}"));
        std::fs::create_dir_all(&run_dir).map_err(|e| e.to_string())?;
        let servers = Servers::start(bench.tools, &run_dir)?;
        let (idle, ng_idle) = (
            servers.peak_mib(Side::Gateway),
            servers.peak_mib(Side::Nginx),
        );
        let workers = servers.processes(Side::Nginx).1.len();
        let total_mb = f64::from(o.memory_uploads) * size as f64 / 1e6;
        let label = format!(
            "{} × {} at once ({total_mb:.0} MB in all), TLS",
            size_label(size),
            o.memory_uploads
        );
        let point = Point {
            size,
            concurrency: o.memory_uploads,
            requests: o.memory_uploads,
        };
        let compared = bench.compare(&label, &servers, Transport::Tls, point)?;
        let peak = |r: &Run| r.peak_mib;
        let (g, ng) = compared.median(peak);
        report(
            format!(
                "memory: peak RSS while {} uploads of {} arrive at once (TLS), {}",
                o.memory_uploads,
                size_label(size),
                bench.runs_label()
            ),
            format!(
                "{}gateway {:.1} MiB (idle {idle:.1}; runs {}); {:.0} MB/s",
                unacknowledged_note(&compared.gateway),
                g.peak_mib,
                spread(&compared.gateway, peak),
                g.megabytes_per_second()
            ),
            format!(
                "{}nginx {:.1} MiB summed over {workers} workers (idle {ng_idle:.1}; runs {}); \
                 {:.0} MB/s",
                unacknowledged_note(&compared.nginx),
                ng.peak_mib,
                spread(&compared.nginx, peak),
                ng.megabytes_per_second()
            ),
            table::ratio(g.peak_mib, ng.peak_mib),
        );
    }
    Ok(())
}

/// The table's intake matrix: job size, devices sending at once, jobs (and
/// jobs with `--quick`). Enough jobs per point for a few seconds of load
/// each, and at least one per device.
const MATRIX: &[(u64, u32, u32, u32)] = &[
    (100_000, 1, 300, 10),
    (100_000, 10, 1000, 40),
    (100_000, 100, 2000, 200),
    (1_000_000, 1, 100, 5),
    (1_000_000, 10, 300, 20),
    (1_000_000, 100, 500, 100),
    (20_000_000, 1, 10, 2),
    (20_000_000, 10, 40, 10),
    (20_000_000, 100, 100, 100),
];

fn size_label(size: u64) -> String {
    if size >= 1_000_000 && size.is_multiple_of(1_000_000) {
        format!("{} MB", size / 1_000_000)
    } else if size.is_multiple_of(1000) {
        format!("{} KB", size / 1000)
    } else {
        format!("{size} B")
    }
}

/// Small and large jobs from 1, 10 and 100 devices at once, over TLS as
/// devices send them, into the gateway and into nginx; a fresh gateway and
/// nginx for each size, their data removed after it. Before the servers
/// start, the latency floor of that size on the same disk; at one device,
/// the gateway's acknowledgement is set beside it.
fn matrix(bench: &mut Intake, dir: &Path) -> Result {
    println!(
        "\n## intake by job size and devices at once, TLS{}",
        if bench.quick {
            " (quick: few jobs per point)"
        } else {
            ""
        }
    );
    let mut sizes: Vec<u64> = MATRIX.iter().map(|p| p.0).collect();
    sizes.dedup();
    for size in sizes {
        let run_dir = dir.join(format!("matrix-{size}"));
        std::fs::create_dir_all(&run_dir).map_err(|e| e.to_string())?;
        let floor = write_fsync_floor(&run_dir, size)?;
        println!(
            "floor: create + write + fsync of a new {} file on the same disk: {}",
            size_label(size),
            table::p50_p99(&floor)
        );
        let servers = Servers::start(bench.tools, &run_dir)?;
        for &(_, devices, full, light) in MATRIX.iter().filter(|p| p.0 == size) {
            let requests = if bench.quick { light } else { full };
            let label = format!("{} × {devices}, {requests} jobs", size_label(size));
            let point = Point {
                size,
                concurrency: devices,
                requests,
            };
            let compared = bench.compare(&label, &servers, Transport::Tls, point)?;
            let (g, ng) = compared.median(Run::jobs_per_second);
            let cpu_ratio = table::ratio(g.cpu_ms_per_job, ng.cpu_ms_per_job);
            report(
                format!(
                    "intake: {} jobs, {devices} device{} at once, {requests} jobs, TLS, {}",
                    size_label(size),
                    if devices == 1 { "" } else { "s" },
                    bench.runs_label()
                ),
                matrix_cell(
                    "gateway",
                    &compared.gateway,
                    g,
                    &format!(" (gateway / nginx {cpu_ratio})"),
                ),
                matrix_cell("nginx (WebDAV PUT)", &compared.nginx, ng, ""),
                table::ratio(g.jobs_per_second(), ng.jobs_per_second()),
            );
            if devices == 1 {
                floor_row(bench, size, g, &floor);
            }
        }
        drop(servers);
        let _ = std::fs::remove_dir_all(&run_dir);
    }
    Ok(())
}

/// A cell of the matrix's table row: `median`'s figures, CPU time per job
/// (with `cpu_note`) and every run's jobs/s.
fn matrix_cell(name: &str, runs: &[Run], median: &Run, cpu_note: &str) -> String {
    format!(
        "{}{name} {:.1} jobs/s ({:.0} MB/s), p50 {} / p99 {}, CPU {}/job{cpu_note}; runs {} jobs/s",
        unacknowledged_note(runs),
        median.jobs_per_second(),
        median.megabytes_per_second(),
        table::ms(median.latency_ms("p50_ms")),
        table::ms(median.latency_ms("p99_ms")),
        cpu_ms(median.cpu_ms_per_job),
        spread(runs, Run::jobs_per_second)
    )
}

/// The gateway's acknowledgement latency at one device beside the floor
/// (one write + fsync of the same bytes: what making them durable once
/// costs on this disk) and twice the floor.
fn floor_row(bench: &Intake, size: u64, gateway: &Run, floor: &Summary) {
    let p50 = gateway.latency_ms("p50_ms");
    report(
        format!(
            "intake: {} ack latency at one device vs one write+fsync of the same bytes, {}",
            size_label(size),
            bench.runs_label()
        ),
        format!(
            "gateway ack p50 {} (2× the floor: {})",
            table::ms(p50),
            table::ms(2.0 * floor.p50)
        ),
        format!(
            "create + write + fsync of a new {} file on the same disk: {}",
            size_label(size),
            table::p50_p99(floor)
        ),
        table::ratio(p50, floor.p50),
    );
}

/// The latency floor of a durable acknowledgement of `size` bytes: creating
/// a new file in `dir` (on the servers' disk), writing the bytes and
/// fsyncing it, timed in ms; 200 times, or fewer for large sizes so that
/// at most about 200 MB are written (at least 5).
fn write_fsync_floor(dir: &Path, size: u64) -> Result<Summary> {
    let repetitions = (200_000_000 / size).clamp(5, 200);
    // Not zeros: a disk or file system may store runs of zeros cheaply.
    let bytes: Vec<u8> = (0..size)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let path = dir.join("floor");
    let mut times = Vec::new();
    // Each time a new file, as each job's page is: its blocks are
    // allocated anew, not overwritten in place.
    for _ in 0..repetitions {
        let started = Instant::now();
        let mut file = std::fs::File::create(&path).map_err(io)?;
        file.write_all(&bytes).map_err(io)?;
        file.sync_all().map_err(io)?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        drop(file);
        std::fs::remove_file(&path).map_err(io)?;
    }
    summary(&times).ok_or_else(|| "no write + fsync timed".to_owned())
}
