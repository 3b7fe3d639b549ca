//! `cargo xtask demo`: the product's main job on embedded defaults. It builds
//! the binaries, makes a throw-away vendor key and licenses (`03` for the
//! primary, `04` for the secondary), writes one shared configuration file
//! for both instances, starts them on free loopback ports, provisions
//! simulated devices on the primary and lets them scan text pages through
//! OCR into searchable PDFs. Then the primary goes into maintenance: the
//! devices, through their failover client and outbox, fail over to the
//! secondary with the same tokens and sessions, and the secondary scans the
//! next round into PDFs of its own. Everything lives under `target/demo/`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::site::{Tools, listener, output};
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

pub fn run(args: &[String]) -> Result {
    let opts = parse(args)?;
    setup::apt(setup::DEMO_PACKAGES)?;
    let tools = Tools::build("debug")?;

    let dir = root().join("target/demo");
    stop_leftovers(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;

    // A vendor key of our own, and one license per server.
    let vendor = tools.vendor(&dir)?;
    let key_primary = tools.issue(&vendor, "03", 1001, opts.devices)?;
    let key_secondary = tools.issue(&vendor, "04", 1002, opts.devices)?;
    let hash = tools.hash_password("demo")?;
    let config = dir.join("gateway.toml");
    std::fs::write(
        &config,
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

[instances.gw-primary.pair]
listen = "127.0.0.1:{pair_a}"
peer = "127.0.0.1:{pair_b}"

[instances.gw-secondary.pair]
listen = "127.0.0.1:{pair_b}"
peer = "127.0.0.1:{pair_a}"
"#,
            pub_key = vendor.public_key,
            pair_a = free_port()?,
            pair_b = free_port()?,
        ),
    )
    .map_err(|e| e.to_string())?;

    output(
        tools
            .gateway(&config, "gw-primary")
            .args(["license", "activate", &key_primary]),
    )?;
    output(
        tools
            .gateway(&config, "gw-secondary")
            .args(["license", "activate", &key_secondary]),
    )?;
    let mut devices = Vec::new();
    for i in 1..=opts.devices {
        let name = format!("mfd-{i:02}");
        let added = output(
            tools
                .gateway(&config, "gw-primary")
                .args(["device", "add", &name]),
        )?;
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
        let log = dir.join(format!("{instance}.log"));
        let (child, info) =
            tools.serve(&config, instance, &dir.join("data").join(instance), &log)?;
        let addr = listener(&info, "https");
        println!("{instance} listening on https://{addr} (log: target/demo/{instance}.log)");
        urls.push((
            format!("https://{addr}"),
            info["certificate"].as_str().unwrap_or_default().to_owned(),
        ));
        children.push(child);
    }

    // Pair the two servers: a one-time code from the primary, joined on the
    // secondary; from then on each watches the other's heartbeats.
    let code = output(tools.gateway(&config, "gw-primary").args(["pair", "init"]))?;
    output(
        tools
            .gateway(&config, "gw-secondary")
            .args(["pair", "join", code.trim()]),
    )?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let status = output(
            tools
                .gateway(&config, "gw-primary")
                .args(["pair", "status", "--json"]),
        )?;
        let state: serde_json::Value = serde_json::from_str(&status).map_err(|e| e.to_string())?;
        let peer_state = serde_json::from_str::<serde_json::Value>(&output(
            tools
                .gateway(&config, "gw-secondary")
                .args(["pair", "status", "--json"]),
        )?)
        .map_err(|e| e.to_string())?;
        // Replicated: the secondary holds the primary's configuration (its
        // devices, users and session key), the clocks and zones agree.
        let in_sync = state["sync"] == "ok"
            && peer_state["sync"] == "ok"
            && state["config_version"].is_u64()
            && state["config_version"] == peer_state["config_version"];
        if state["state"] == "live" && in_sync {
            println!(
                "paired: gw-primary and gw-secondary see each other LIVE over their pair link; \
                 configuration version {} is on both (devices, users, session key)",
                state["config_version"]
            );
            break;
        }
        if std::time::Instant::now() > deadline {
            return Err(format!(
                "the pair did not become LIVE with the configuration on both: {status}\n{peer_state}"
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }

    println!(
        "\n{} simulated devices scan {} jobs of {} text pages each into the primary; OCR makes searchable PDFs.\n",
        opts.devices,
        opts.devices * opts.jobs,
        opts.pages
    );
    let sim = exec(
        Command::new(tools.bin("mfd-sim"))
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

    // Failover: the primary goes into maintenance (failover cause 4); the
    // devices, each through the failover client with its durable outbox,
    // move to the secondary, which holds the primary's configuration.
    let failover = if sim.is_ok() {
        failover_round(&tools, &config, &dir, &urls, &opts)
    } else {
        Ok(())
    };

    println!();
    for instance in ["gw-primary", "gw-secondary"] {
        let _ = tools.gateway(&config, instance).arg("status").status();
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
        return sim.and(failover);
    }
    for child in &mut children {
        let _ = Command::new("kill").arg(child.id().to_string()).status();
        let _ = child.wait();
    }
    println!(
        "\nthe pair was stopped; everything it wrote is in {}",
        dir.display()
    );
    sim.and(failover)
}

/// One round of scans while the primary is in maintenance: the devices'
/// failover client moves each to the secondary, which accepts and delivers
/// the jobs; then maintenance ends.
fn failover_round(
    tools: &Tools,
    config: &Path,
    dir: &Path,
    urls: &[(String, String)],
    opts: &Options,
) -> Result {
    output(
        tools
            .gateway(config, "gw-primary")
            .args(["maintenance", "on"]),
    )?;
    println!(
        "\ngw-primary is in maintenance: the devices fail over to gw-secondary, with the same tokens and sessions.\n"
    );
    // One trust file for both servers' self-signed certificates.
    let mut trust = Vec::new();
    for (_, cert) in urls {
        trust.extend(std::fs::read(cert).map_err(|e| format!("reading {cert}: {e}"))?);
    }
    let trust_file = dir.join("gateways-trust.pem");
    std::fs::write(&trust_file, trust).map_err(|e| e.to_string())?;
    let jobs = opts.devices;
    let run = exec(
        Command::new(tools.bin("mfd-sim"))
            .arg("run")
            .args(["--server", &urls[0].0, "--server", &urls[1].0])
            .arg("--ca")
            .arg(&trust_file)
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
                &jobs.to_string(),
                "--pages",
                &opts.pages.to_string(),
            ])
            .args(["--page-source", "text"])
            .arg("--outbox")
            .arg(dir.join("outbox"))
            .arg("--report")
            .arg(dir.join("failover-report.json")),
    );
    let _ = output(
        tools
            .gateway(config, "gw-primary")
            .args(["maintenance", "off"]),
    );
    run?;
    // The secondary owns the jobs it accepted and delivers them itself.
    let delivered = dir.join("data/gw-secondary/delivered");
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    let count = loop {
        let n = walk(&delivered).len();
        if n >= jobs as usize || std::time::Instant::now() > deadline {
            break n;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    println!(
        "failover: {count} of {jobs} jobs scanned during the maintenance were accepted and delivered by gw-secondary (under {})",
        delivered.display()
    );
    if count < jobs as usize {
        return Err(format!(
            "only {count} of {jobs} jobs were delivered by gw-secondary within 300 s; see target/demo/gw-secondary.log"
        ));
    }
    Ok(())
}

/// A free loopback port for a pair listener (the gateway binds it at once).
fn free_port() -> Result<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("cannot find a free port: {e}"))
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
