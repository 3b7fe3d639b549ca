//! `cargo xtask bench`: the benchmarks whose figures BENCHMARKS.md records,
//! each measured side by side with its baseline in the same run.
//!
//! - `intake`: job uploads into the gateway vs. nginx writing the same bodies
//!   to disk (WebDAV PUT), same load client, same transport (plain HTTP and
//!   TLS, both with the same certificate); and the gateway's peak memory
//!   while many large uploads stream in at once.
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
//! Release builds, loopback only, every run bounded by its request count,
//! trial count or duration.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::site::{Tools, listener, output};
use crate::{Result, bench_pair, exec, root, setup};

struct Options {
    requests: u32,
    concurrency: u32,
    size: u64,
    memory_uploads: u32,
    memory_size: u64,
    pages: u32,
    pair: bench_pair::Options,
}

fn parse(args: &[String]) -> Result<(String, Options)> {
    let what = args.first().cloned().unwrap_or_else(|| "all".into());
    let mut o = Options {
        requests: 400,
        concurrency: 16,
        size: 1_000_000,
        memory_uploads: 200,
        memory_size: 20_000_000,
        pages: 16,
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
        match a.as_str() {
            "--requests" => o.requests = value("--requests")? as u32,
            "--concurrency" => o.concurrency = value("--concurrency")? as u32,
            "--size" => o.size = value("--size")?,
            "--memory-uploads" => o.memory_uploads = value("--memory-uploads")? as u32,
            "--memory-size" => o.memory_size = value("--memory-size")?,
            "--pages" => o.pages = value("--pages")? as u32,
            "--trials" => o.pair.trials = value("--trials")? as u32,
            "--haproxy-trials" => o.pair.haproxy_trials = value("--haproxy-trials")? as u32,
            "--soak-secs" => {
                // 0 skips the soak.
                o.pair.soak_secs = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .ok_or("--soak-secs needs a number of seconds (0: no soak)")?;
            }
            "--heartbeat-interval-ms" => {
                o.pair.heartbeat_interval_ms = value("--heartbeat-interval-ms")?;
            }
            "--dead-threshold-ms" => o.pair.dead_threshold_ms = value("--dead-threshold-ms")?,
            "--json" => o.pair.json = true,
            other => return Err(format!("unknown bench option `{other}`")),
        }
    }
    if !["intake", "ocr", "pair", "all"].contains(&what.as_str()) {
        return Err(format!("usage: cargo xtask bench [intake|ocr|pair|config|replication|takeover|failover|all] [options]
  intake: [--requests N] [--concurrency N] [--size BYTES] [--memory-uploads N] [--memory-size BYTES]
  ocr:    [--pages N]
  pair:   [--trials N (50 per fault)] [--haproxy-trials N (20 per fault)] [--soak-secs N (600; 0: none)]
          [--heartbeat-interval-ms N (100)] [--dead-threshold-ms N (600)] [--json]
{}
{}
{}
{}", crate::bench_config::USAGE, crate::bench_replication::USAGE, crate::bench_takeover::USAGE, crate::bench_failover::USAGE));
    }
    Ok((what, o))
}

pub fn run(args: &[String]) -> Result {
    if args.first().is_some_and(|a| a == "config") {
        return crate::bench_config::run(&args[1..]);
    }
    if args.first().is_some_and(|a| a == "replication") {
        return crate::bench_replication::run(&args[1..]);
    }
    if args.first().is_some_and(|a| a == "takeover") {
        return crate::bench_takeover::run(&args[1..]);
    }
    if args.first().is_some_and(|a| a == "failover") {
        return crate::bench_failover::run(&args[1..]);
    }
    let (what, opts) = parse(args)?;
    if what == "intake" || what == "all" {
        intake(&opts)?;
    }
    if what == "ocr" || what == "all" {
        setup::apt(setup::DEMO_PACKAGES)?;
        exec(Command::new("cargo").args([
            "run",
            "--release",
            "-p",
            "plugins",
            "--example",
            "ocr-bench",
            "--",
            "--pages",
            &opts.pages.to_string(),
            "--rounds",
            "4",
        ]))?;
    }
    if what == "pair" || what == "all" {
        bench_pair::run(&opts.pair)?;
    }
    Ok(())
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
