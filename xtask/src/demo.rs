//! `cargo xtask demo`: the product's main job on embedded defaults. It builds
//! the binaries, makes a throw-away vendor key and licenses (`03` for the
//! primary, `04` for the secondary), writes one shared configuration file
//! for both instances, starts them on free loopback ports, provisions
//! simulated devices on the primary and lets them scan text pages through
//! OCR into searchable PDFs. Everything lives under `target/demo/`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Result, exec, root, setup};

struct Options {
    devices: u32,
    jobs: u32,
    pages: u32,
    keep_running: bool,
}

fn parse(args: &[String]) -> Result<Options> {
    let mut o = Options {
        devices: 4,
        jobs: 3,
        pages: 2,
        keep_running: false,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut number = |name: &str| -> Result<u32> {
            it.next()
                .and_then(|v| v.parse().ok())
                .filter(|n| (1..=1000).contains(n))
                .ok_or_else(|| format!("{name} needs a number from 1 to 1000"))
        };
        match a.as_str() {
            "--devices" => o.devices = number("--devices")?,
            "--jobs" => o.jobs = number("--jobs")?,
            "--pages" => o.pages = number("--pages")?,
            "--keep-running" => o.keep_running = true,
            "--help" | "-h" => {
                return Err("usage: cargo xtask demo [--devices N] [--jobs N per device] [--pages N per job] [--keep-running]".into());
            }
            other => return Err(format!("unknown demo option `{other}`; try --help")),
        }
    }
    Ok(o)
}

fn bin(name: &str) -> PathBuf {
    root().join("target/debug").join(name)
}

fn output(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {shown}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{shown} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn gateway(dir: &Path, instance: &str) -> Command {
    let mut c = Command::new(bin("gateway"));
    c.arg("--config")
        .arg(dir.join("gateway.toml"))
        .arg("--instance")
        .arg(instance);
    c
}

/// Stops gateways a previous demo left running.
fn stop_leftovers(dir: &Path) {
    for instance in ["gw-primary", "gw-secondary"] {
        let run_file = dir
            .join("data")
            .join(instance)
            .join(format!("{instance}.run.json"));
        if let Ok(text) = std::fs::read_to_string(&run_file)
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
            && let Some(pid) = v["pid"].as_u64()
        {
            let _ = Command::new("kill").arg(pid.to_string()).status();
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

fn wait_for_run_file(dir: &Path, instance: &str, child: &mut Child) -> Result<serde_json::Value> {
    let path = dir
        .join("data")
        .join(instance)
        .join(format!("{instance}.run.json"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "{instance} exited ({status}); see {}",
                dir.join(format!("{instance}.log")).display()
            ));
        }
        if let Ok(text) = std::fs::read_to_string(&path)
            && let Ok(v) = serde_json::from_str(&text)
        {
            return Ok(v);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!(
        "{instance} did not start within 30 s; see its log in {}",
        dir.display()
    ))
}

pub fn run(args: &[String]) -> Result {
    let opts = parse(args)?;
    setup::apt(setup::DEMO_PACKAGES)?;
    exec(Command::new("cargo").args([
        "build",
        "--bins",
        "-p",
        "gateway",
        "-p",
        "mfd-sim",
        "-p",
        "licensing",
    ]))?;

    let dir = root().join("target/demo");
    stop_leftovers(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;

    // A vendor key of our own, and one license per server.
    output(
        Command::new(bin("license-tool"))
            .arg("keygen")
            .arg("--out")
            .arg(dir.join("vendor")),
    )?;
    let vendor_pub =
        std::fs::read_to_string(dir.join("vendor/vendor.pub")).map_err(|e| e.to_string())?;
    let issue = |role: &str, serial: &str| {
        output(
            Command::new(bin("license-tool"))
                .arg("issue")
                .arg("--vendor-key")
                .arg(dir.join("vendor/vendor.key"))
                .args([
                    "--role",
                    role,
                    "--serial",
                    serial,
                    "--seats",
                    &opts.devices.to_string(),
                ]),
        )
    };
    let key_primary = issue("03", "1001")?;
    let key_secondary = issue("04", "1002")?;

    // The demo user's password is hashed with fewer iterations than the
    // production default so that many simulated logins stay quick.
    let mut hasher = Command::new(bin("gateway"))
        .args(["user", "hash-password", "--iterations", "10000"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    std::io::Write::write_all(&mut hasher.stdin.take().expect("piped"), b"demo")
        .map_err(|e| e.to_string())?;
    let hash_out = hasher.wait_with_output().map_err(|e| e.to_string())?;
    let hash = String::from_utf8_lossy(&hash_out.stdout).trim().to_owned();

    std::fs::write(
        dir.join("gateway.toml"),
        format!(
            r#"# Demo configuration: one file for both servers of the pair.
[licensing]
trusted_vendor_keys = ["{pub_key}"]

[users.demo]
password_hash = "{hash}"
display_name = "Demo User"

[workflows.scan-to-searchable-pdf]
steps = [
  {{ plugin = "ocr", languages = ["eng"] }},
  {{ plugin = "assemble" }},
  {{ plugin = "folder", root = "{{data_dir}}/delivered", name = "{{date}}/{{device}}-{{user}}-{{job_id}}.pdf" }},
]

[workflows.scan-to-folder]
steps = [
  {{ plugin = "assemble" }},
  {{ plugin = "folder", root = "{{data_dir}}/delivered" }},
]

[defaults]
data_dir = "data/{{instance}}"
listen = "127.0.0.1:0"

[instances.gw-primary]
[instances.gw-secondary]
"#,
            pub_key = vendor_pub.trim(),
        ),
    )
    .map_err(|e| e.to_string())?;

    output(gateway(&dir, "gw-primary").args(["license", "activate", &key_primary]))?;
    output(gateway(&dir, "gw-secondary").args(["license", "activate", &key_secondary]))?;
    let mut devices = Vec::new();
    for i in 1..=opts.devices {
        let name = format!("mfd-{i:02}");
        let added = output(gateway(&dir, "gw-primary").args(["device", "add", &name]))?;
        let v: serde_json::Value = serde_json::from_str(&added).map_err(|e| e.to_string())?;
        devices.push(serde_json::json!({"name": name, "token": v["token"]}));
    }
    std::fs::write(
        dir.join("devices.json"),
        serde_json::to_vec_pretty(&devices).expect("json"),
    )
    .map_err(|e| e.to_string())?;

    let mut children = Vec::new();
    let mut urls = Vec::new();
    for instance in ["gw-primary", "gw-secondary"] {
        let log = std::fs::File::create(dir.join(format!("{instance}.log")))
            .map_err(|e| e.to_string())?;
        let mut child = gateway(&dir, instance)
            .arg("serve")
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {instance}: {e}"))?;
        let info = wait_for_run_file(&dir, instance, &mut child)?;
        let addr = info["listeners"][0]["addr"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        println!("{instance} listening on https://{addr} (log: target/demo/{instance}.log)");
        urls.push((
            format!("https://{addr}"),
            info["certificate"].as_str().unwrap_or_default().to_owned(),
        ));
        children.push(child);
    }

    println!(
        "\n{} simulated devices scan {} jobs of {} text pages each into the primary; OCR makes searchable PDFs.\n",
        opts.devices,
        opts.devices * opts.jobs,
        opts.pages
    );
    let sim = exec(
        Command::new(bin("mfd-sim"))
            .arg("run")
            .args(["--server", &urls[0].0, "--ca", &urls[0].1])
            .arg("--devices-file")
            .arg(dir.join("devices.json"))
            .args([
                "--user",
                "demo",
                "--password",
                "demo",
                "--workflow",
                "scan-to-searchable-pdf",
            ])
            .args([
                "--jobs",
                &(opts.devices * opts.jobs).to_string(),
                "--pages",
                &opts.pages.to_string(),
            ])
            .args(["--page-source", "text", "--wait"]),
    );

    println!();
    for instance in ["gw-primary", "gw-secondary"] {
        let _ = Command::new(bin("gateway"))
            .arg("--config")
            .arg(dir.join("gateway.toml"))
            .args(["--instance", instance, "status"])
            .status();
        println!();
    }
    let delivered = dir.join("data/gw-primary/delivered");
    let mut pdfs: Vec<PathBuf> = walk(&delivered);
    pdfs.sort();
    println!(
        "{} searchable PDFs delivered under {}",
        pdfs.len(),
        delivered.display()
    );
    if let Some(first) = pdfs.first()
        && let Ok(text) = output(Command::new("pdftotext").arg(first).arg("-"))
    {
        let excerpt: String = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .take(3)
            .collect::<Vec<_>>()
            .join(" / ");
        println!(
            "text of {}: {excerpt}",
            first.file_name().unwrap_or_default().to_string_lossy()
        );
    }

    if opts.keep_running {
        println!(
            "\nthe pair keeps running; stop it with: kill {}",
            children
                .iter()
                .map(|c| c.id().to_string())
                .collect::<Vec<_>>()
                .join(" ")
        );
        return sim;
    }
    for child in &mut children {
        let _ = Command::new("kill").arg(child.id().to_string()).status();
        let _ = child.wait();
    }
    println!(
        "\nthe pair was stopped; everything it wrote is in {}",
        dir.display()
    );
    sim
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else if p.extension().is_some_and(|x| x == "pdf") {
                out.push(p);
            }
        }
    }
    out
}
