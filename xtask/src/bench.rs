//! `cargo xtask bench`: the benchmarks whose figures BENCHMARKS.md records,
//! each measured side by side with its baseline in the same run.
//!
//! - `intake`: job uploads into the gateway vs. nginx writing the same bodies
//!   to disk (WebDAV PUT), same load client, same transport (plain HTTP and
//!   TLS, both with the same certificate), then small and large jobs (100 KB,
//!   1 MB, 20 MB) from 1, 10 and 100 devices at once over TLS; and the
//!   gateway's peak memory while many large uploads stream in at once.
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

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::site::{Tools, listener, output};
use crate::{Result, bench_pair, exec, root, setup, table};

struct Options {
    requests: u32,
    concurrency: u32,
    size: u64,
    memory_uploads: u32,
    memory_size: u64,
    /// The intake's job matrix shrunk to a few requests per point.
    quick: bool,
    pair: bench_pair::Options,
}

fn usage() -> String {
    format!(
        "usage: cargo xtask bench [intake|ocr|pair|config|replication|takeover|failover|all] [options]
  all:    [--quick] every benchmark in turn, then the table (target/bench/table.md, table.json);
          --quick shrinks each to seconds (figures marked quick: a check that all run)
  intake: [--requests N] [--concurrency N] [--size BYTES] [--memory-uploads N] [--memory-size BYTES] [--quick]
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
        &["--points", "100000:10:100,1000000:4:20,100000:1:20"],
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
    https: String,
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
    let text = output(
        Command::new(tools.bin("mfd-sim"))
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
            .args(extra),
    )?;
    serde_json::from_str(&text).map_err(|e| format!("load summary {text}: {e}"))
}

fn describe(v: &Value) -> String {
    format!(
        "{:.1} req/s, {:.1} MB/s, p50 {:.1} ms, p99 {:.1} ms, {} failed",
        v["requests_per_second"].as_f64().unwrap_or(0.0),
        v["megabytes_per_second"].as_f64().unwrap_or(0.0),
        v["latency"]["p50_ms"].as_f64().unwrap_or(0.0),
        v["latency"]["p99_ms"].as_f64().unwrap_or(0.0),
        v["failed"].as_u64().unwrap_or(0)
    )
}

fn intake(o: &Options) -> Result {
    setup::apt(setup::BENCH_PACKAGES)?;
    setup::apt(&["curl"])?;
    let tools = Tools::build("release")?;
    let dir = root().join("target/bench-intake");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let gw = start_gateway(&tools, &dir)?;
    let nginx = start_nginx(&dir.join("nginx"), &gw.cert, &gw.key)?;
    let gw_args = vec![
        "--multipart-gateway".to_owned(),
        format!("{},{},bench", gw.token, gw.session),
    ];
    let ng_args = vec![
        "--method".to_owned(),
        "PUT".to_owned(),
        "--multipart-body".to_owned(),
        "bench".to_owned(),
    ];

    println!(
        "## intake throughput: {} uploads of {} bytes, {} concurrent",
        o.requests, o.size, o.concurrency
    );
    for (transport, gw_url, ng_url) in [
        ("plain HTTP", gw.plain.clone(), nginx.plain.clone()),
        ("TLS", gw.https.clone(), nginx.https.clone()),
    ] {
        let ng = load(
            &tools,
            &ng_url,
            &gw.cert,
            &ng_args,
            o.requests,
            o.concurrency,
            o.size,
        )?;
        let g = load(
            &tools,
            &gw_url,
            &gw.cert,
            &gw_args,
            o.requests,
            o.concurrency,
            o.size,
        )?;
        let ratio = g["megabytes_per_second"].as_f64().unwrap_or(0.0)
            / ng["megabytes_per_second"].as_f64().unwrap_or(1.0);
        println!("{transport}: nginx    {}", describe(&ng));
        println!("{transport}: gateway  {}", describe(&g));
        println!("{transport}: gateway/nginx throughput ratio {ratio:.2}");
    }

    drop(nginx);
    drop(gw);

    matrix(&tools, &dir, o.quick)?;

    // Memory: the same number of concurrent uploads at two sizes, each on a
    // freshly started gateway and nginx so each peak is this run's own. If
    // uploads stream, the peak does not grow with the upload size.
    println!(
        "\n## memory: {} concurrent uploads, peak resident memory",
        o.memory_uploads
    );
    for size in [o.memory_size / 10, o.memory_size] {
        let run_dir = dir.join(format!("memory-{size}"));
        std::fs::create_dir_all(&run_dir).map_err(|e| e.to_string())?;
        let gw = start_gateway(&tools, &run_dir)?;
        let nginx = start_nginx(&run_dir.join("nginx"), &gw.cert, &gw.key)?;
        let gw_args = vec![
            "--multipart-gateway".to_owned(),
            format!("{},{},bench", gw.token, gw.session),
        ];
        let idle = peak_rss_mib(gw.child.id()).unwrap_or(0.0);
        let g = load(
            &tools,
            &gw.https,
            &gw.cert,
            &gw_args,
            o.memory_uploads,
            o.memory_uploads,
            size,
        )?;
        let peak = peak_rss_mib(gw.child.id()).unwrap_or(0.0);
        let workers = children(nginx.child.id());
        let ng_idle: f64 = workers.iter().filter_map(|p| peak_rss_mib(*p)).sum();
        let ng = load(
            &tools,
            &nginx.https,
            &gw.cert,
            &ng_args,
            o.memory_uploads,
            o.memory_uploads,
            size,
        )?;
        let ng_peak: f64 = workers.iter().filter_map(|p| peak_rss_mib(*p)).sum();
        let total_mb = f64::from(o.memory_uploads) * size as f64 / 1e6;
        table::row(
            format!(
                "memory: peak RSS while {} uploads of {} arrive at once (TLS)",
                o.memory_uploads,
                size_label(size)
            ),
            format!(
                "gateway {peak:.1} MiB (idle {idle:.1}); {:.0} MB/s",
                g["megabytes_per_second"].as_f64().unwrap_or(0.0)
            ),
            format!(
                "nginx {ng_peak:.1} MiB summed over {} workers (idle {ng_idle:.1}); {:.0} MB/s",
                workers.len(),
                ng["megabytes_per_second"].as_f64().unwrap_or(0.0)
            ),
            table::ratio(peak, ng_peak),
        );
        println!("{size} bytes each ({total_mb:.0} MB in all), TLS:");
        println!(
            "  gateway: peak RSS {peak:.1} MiB (idle {idle:.1} MiB); {}",
            describe(&g)
        );
        println!(
            "  nginx:   peak RSS {ng_peak:.1} MiB summed over {} workers (idle {ng_idle:.1} MiB); {}",
            workers.len(),
            describe(&ng)
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
/// nginx for each size, their data removed after it.
fn matrix(tools: &Tools, dir: &Path, quick: bool) -> Result {
    println!(
        "\n## intake by job size and devices at once, TLS{}",
        if quick {
            " (quick: few jobs per point)"
        } else {
            ""
        }
    );
    let ng_args = vec![
        "--method".to_owned(),
        "PUT".to_owned(),
        "--multipart-body".to_owned(),
        "bench".to_owned(),
    ];
    let mut sizes: Vec<u64> = MATRIX.iter().map(|p| p.0).collect();
    sizes.dedup();
    for size in sizes {
        let run_dir = dir.join(format!("matrix-{size}"));
        std::fs::create_dir_all(&run_dir).map_err(|e| e.to_string())?;
        let gw = start_gateway(tools, &run_dir)?;
        let nginx = start_nginx(&run_dir.join("nginx"), &gw.cert, &gw.key)?;
        let gw_args = vec![
            "--multipart-gateway".to_owned(),
            format!("{},{},bench", gw.token, gw.session),
        ];
        for &(_, devices, full, light) in MATRIX.iter().filter(|p| p.0 == size) {
            let requests = if quick { light } else { full };
            let ng = load(
                tools,
                &nginx.https,
                &gw.cert,
                &ng_args,
                requests,
                devices,
                size,
            )?;
            let g = load(
                tools, &gw.https, &gw.cert, &gw_args, requests, devices, size,
            )?;
            let label = format!("{} × {devices}", size_label(size));
            println!("{label}, {requests} jobs: nginx    {}", describe(&ng));
            println!("{label}, {requests} jobs: gateway  {}", describe(&g));
            let rate = |v: &Value| v["requests_per_second"].as_f64().unwrap_or(0.0);
            let cell = |name: &str, v: &Value| {
                let failed = v["failed"].as_u64().unwrap_or(0);
                format!(
                    "{name} {:.1} jobs/s ({:.0} MB/s), p50 {} / p99 {}{}",
                    rate(v),
                    v["megabytes_per_second"].as_f64().unwrap_or(0.0),
                    table::ms(v["latency"]["p50_ms"].as_f64().unwrap_or(0.0)),
                    table::ms(v["latency"]["p99_ms"].as_f64().unwrap_or(0.0)),
                    if failed > 0 {
                        format!(", **{failed} failed**")
                    } else {
                        String::new()
                    }
                )
            };
            table::row(
                format!(
                    "intake: {} jobs, {devices} device{} at once, {requests} jobs, TLS",
                    size_label(size),
                    if devices == 1 { "" } else { "s" }
                ),
                cell("gateway", &g),
                cell("nginx (WebDAV PUT)", &ng),
                table::ratio(rate(&g), rate(&ng)),
            );
        }
        drop(nginx);
        drop(gw);
        let _ = std::fs::remove_dir_all(&run_dir);
    }
    Ok(())
}
