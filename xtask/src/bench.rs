//! `cargo xtask bench`: the benchmarks whose figures BENCHMARKS.md records,
//! each measured side by side with its baseline in the same run.
//!
//! - `intake`: job uploads into the gateway vs. nginx writing the same bodies
//!   to disk (WebDAV PUT), same load client, same transport (plain HTTP and
//!   TLS, both with the same certificate); and the gateway's peak memory
//!   while many large uploads stream in at once.
//! - `ocr`: the OCR pipeline vs. the tesseract CLI on the same pages (the
//!   plugins crate's `ocr-bench`).
//!
//! Release builds, loopback only, every run bounded by its request count.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{Result, exec, root, setup};

struct Options {
    requests: u32,
    concurrency: u32,
    size: u64,
    memory_uploads: u32,
    memory_size: u64,
    pages: u32,
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
            other => return Err(format!("unknown bench option `{other}`")),
        }
    }
    if !["intake", "ocr", "all"].contains(&what.as_str()) {
        return Err("usage: cargo xtask bench [intake|ocr|all] [--requests N] [--concurrency N] [--size BYTES] \
                    [--memory-uploads N] [--memory-size BYTES] [--pages N]"
            .into());
    }
    Ok((what, o))
}

pub fn run(args: &[String]) -> Result {
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
    Ok(())
}

fn bin(name: &str) -> PathBuf {
    root().join("target/release").join(name)
}

fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

fn output(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {shown}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{shown} failed: {}{}",
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
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

fn start_gateway(dir: &Path) -> Result<Gateway> {
    let g = |args: &[&str]| {
        output(
            Command::new(bin("gateway"))
                .arg("--config")
                .arg(dir.join("gw.toml"))
                .args(args),
        )
    };
    output(
        Command::new(bin("license-tool"))
            .arg("keygen")
            .arg("--out")
            .arg(dir.join("vendor")),
    )?;
    let vendor_pub =
        std::fs::read_to_string(dir.join("vendor/vendor.pub")).map_err(|e| e.to_string())?;
    let key = output(
        Command::new(bin("license-tool"))
            .arg("issue")
            .arg("--vendor-key")
            .arg(dir.join("vendor/vendor.key"))
            .args(["--role", "03", "--serial", "1", "--seats", "5"]),
    )?;
    let mut hasher = Command::new(bin("gateway"))
        .args(["user", "hash-password", "--iterations", "10000"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    std::io::Write::write_all(&mut hasher.stdin.take().expect("piped"), b"bench")
        .map_err(|e| e.to_string())?;
    let hash =
        String::from_utf8_lossy(&hasher.wait_with_output().map_err(|e| e.to_string())?.stdout)
            .trim()
            .to_owned();
    // The pipeline is paused during the measurement (see below) so that it
    // does not compete with the intake for CPU; nginx runs no pipeline either.
    std::fs::write(
        dir.join("gw.toml"),
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
            vendor_pub.trim()
        ),
    )
    .map_err(|e| e.to_string())?;
    g(&["license", "activate", &key])?;
    let added: Value =
        serde_json::from_str(&g(&["device", "add", "bench-mfd"])?).map_err(|e| e.to_string())?;
    let token = added["token"].as_str().unwrap_or_default().to_owned();
    let log = std::fs::File::create(dir.join("gateway.log")).map_err(|e| e.to_string())?;
    let mut child = Command::new(bin("gateway"))
        .arg("--config")
        .arg(dir.join("gw.toml"))
        .arg("serve")
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .spawn()
        .map_err(|e| e.to_string())?;
    let run_file = dir.join("data/gw-bench.run.json");
    let pause = || g(&["pipeline", "pause"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let info: Value = loop {
        if let Ok(text) = std::fs::read_to_string(&run_file)
            && let Ok(v) = serde_json::from_str(&text)
        {
            break v;
        }
        if Instant::now() > deadline || child.try_wait().ok().flatten().is_some() {
            return Err(format!(
                "the gateway did not start; see {}",
                dir.join("gateway.log").display()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    pause()?;
    let https = format!(
        "https://{}",
        info["listeners"][0]["addr"].as_str().unwrap_or_default()
    );
    let plain = format!(
        "http://{}",
        info["listeners"][1]["addr"].as_str().unwrap_or_default()
    );
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

struct Nginx {
    child: Child,
    plain: String,
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

fn start_nginx(dir: &Path, cert: &Path, key: &Path) -> Result<Nginx> {
    let (p1, p2) = (free_port()?, free_port()?);
    for d in ["www", "body", "logs"] {
        std::fs::create_dir_all(dir.join(d)).map_err(|e| e.to_string())?;
    }
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            r#"worker_processes 2;
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

fn load(
    url: &str,
    cert: &Path,
    extra: &[String],
    requests: u32,
    concurrency: u32,
    size: u64,
) -> Result<Value> {
    let text = output(
        Command::new(bin("mfd-sim"))
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
        v["latency_ms"]["p50"].as_f64().unwrap_or(0.0),
        v["latency_ms"]["p99"].as_f64().unwrap_or(0.0),
        v["failed"].as_u64().unwrap_or(0)
    )
}

fn intake(o: &Options) -> Result {
    setup::apt(setup::BENCH_PACKAGES)?;
    setup::apt(&["curl"])?;
    exec(Command::new("cargo").args([
        "build",
        "--release",
        "--bins",
        "-p",
        "gateway",
        "-p",
        "mfd-sim",
        "-p",
        "licensing",
    ]))?;
    let dir = root().join("target/bench-intake");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let gw = start_gateway(&dir)?;
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
        (
            "plain HTTP",
            format!("{}/api/v1/jobs", gw.plain),
            nginx.plain.clone(),
        ),
        (
            "TLS",
            format!("{}/api/v1/jobs", gw.https),
            nginx.https.clone(),
        ),
    ] {
        let ng = load(
            &ng_url,
            &gw.cert,
            &ng_args,
            o.requests,
            o.concurrency,
            o.size,
        )?;
        let g = load(
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

    println!(
        "\n## memory: {} concurrent uploads of {} bytes",
        o.memory_uploads, o.memory_size
    );
    let idle = peak_rss_mib(gw.child.id()).unwrap_or(0.0);
    let g = load(
        &format!("{}/api/v1/jobs", gw.https),
        &gw.cert,
        &gw_args,
        o.memory_uploads,
        o.memory_uploads,
        o.memory_size,
    )?;
    let peak = peak_rss_mib(gw.child.id()).unwrap_or(0.0);
    println!(
        "gateway: peak RSS {peak:.1} MiB (before the load {idle:.1} MiB); {}",
        describe(&g)
    );
    let workers = children(nginx.child.id());
    let ng = load(
        &nginx.https,
        &gw.cert,
        &ng_args,
        o.memory_uploads,
        o.memory_uploads,
        o.memory_size,
    )?;
    let ng_peak: f64 = workers.iter().filter_map(|p| peak_rss_mib(*p)).sum();
    println!(
        "nginx:   peak RSS {ng_peak:.1} MiB summed over {} workers; {}",
        workers.len(),
        describe(&ng)
    );
    let total_mb = f64::from(o.memory_uploads) * o.memory_size as f64 / 1e6;
    println!("(data streamed per run: {total_mb:.0} MB)");
    Ok(())
}
