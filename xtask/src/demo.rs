//! `cargo xtask demo`: the product's main job on embedded defaults. It builds
//! the binaries, makes a throw-away vendor key and licenses (`03` for the
//! primary, `04` for the secondary), writes one configuration file for both
//! instances (fixed loopback ports, so that a restarted server is found at
//! its old address; one delivery folder both servers write), starts them,
//! pairs them and provisions simulated devices. Then the story:
//!
//! 1. the devices scan text pages through OCR into searchable PDFs, each
//!    through its failover client and durable outbox, people taking turns
//!    (log in, scan a few, log out);
//! 2. part-way, the primary is killed with kill -9: the devices fail over to
//!    the secondary (same tokens, same sessions), and the secondary takes
//!    over the primary's unfinished jobs once it is DEAD and its lease over;
//! 3. the primary is started again, learns which of its jobs were taken,
//!    and the devices fail back to it as each person logs out;
//! 4. the primary goes into maintenance for one more round, which the
//!    secondary takes, and comes out of it.
//!
//! Every acknowledged job is then reconciled against both servers' job lists
//! and the delivery folder (lost: on neither server or never delivered;
//! duplicated: two documents), and the second copies the folder refused are
//! read from the servers' pair events. The demo fails unless nothing
//! acknowledged was lost and every duplicate is a reported one. Everything
//! lives under `target/demo/`.

use std::io::{BufRead, BufReader};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::measure::summary;
use crate::site::{Tools, output};
use crate::{Result, root, setup};

struct Options {
    devices: u32,
    jobs: u32,
    pages: u32,
    json: bool,
    keep_running: bool,
}

const USAGE: &str = "usage: cargo xtask demo [--devices N (4)] [--jobs N per device (12)] [--pages N per job (1)] [--json] [--keep-running]";

/// Jobs one person scans before logging out.
const JOBS_PER_SESSION: u32 = 3;
/// The pause between two scans of one person.
const SCAN_INTERVAL_MS: u32 = 700;
/// The devices' failback probes: every 200 ms, three good answers in a row.
const FAILBACK_PROBE_INTERVAL_MS: u32 = 200;
const FAILBACK_GOOD_PROBES: u32 = 3;
/// The pair's heartbeat timing, written out (the defaults).
const HEARTBEAT_INTERVAL_MS: u32 = 100;
const DEAD_THRESHOLD_MS: u32 = 600;
/// The longest the devices may take to deliver every acknowledged job.
const WAIT_SECS: u32 = 300;
const INSTANCES: [&str; 2] = ["gw-primary", "gw-secondary"];

fn parse(args: &[String]) -> Result<Options> {
    let mut o = Options {
        devices: 4,
        jobs: 12,
        pages: 1,
        json: false,
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
            "--json" => o.json = true,
            "--keep-running" => o.keep_running = true,
            "--help" | "-h" => return Err(USAGE.into()),
            other => return Err(format!("unknown demo option `{other}`\n{USAGE}")),
        }
    }
    Ok(o)
}

/// Stops gateways a previous demo left running.
fn stop_leftovers(dir: &Path) {
    for instance in INSTANCES {
        let run_file = run_file(dir, instance);
        if let Ok(text) = std::fs::read_to_string(&run_file)
            && let Ok(v) = serde_json::from_str::<Value>(&text)
            && let Some(pid) = v["pid"].as_u64()
        {
            let _ = Command::new("kill").arg(pid.to_string()).status();
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

fn run_file(dir: &Path, instance: &str) -> PathBuf {
    dir.join("data")
        .join(instance)
        .join(format!("{instance}.run.json"))
}

/// The demo's two servers and what the devices need to reach them.
struct Site {
    tools: Tools,
    dir: PathBuf,
    config: PathBuf,
    /// The HTTPS base URLs, primary first.
    urls: [String; 2],
    /// Both servers' certificates in one PEM file.
    trust: PathBuf,
    /// The folder both servers deliver into.
    delivered: PathBuf,
    /// The running servers, primary first; `None` while stopped.
    children: [Option<Child>; 2],
}

impl Drop for Site {
    fn drop(&mut self) {
        for child in self.children.iter_mut().flatten() {
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let _ = child.wait();
        }
    }
}

impl Site {
    fn gateway(&self, instance: &str) -> Command {
        self.tools.gateway(&self.config, instance)
    }

    /// Starts one server; returns its run file.
    fn start(&mut self, index: usize) -> Result<Value> {
        let instance = INSTANCES[index];
        // A killed server leaves its run file behind.
        let _ = std::fs::remove_file(run_file(&self.dir, instance));
        let log = self.dir.join(format!("{instance}.log"));
        let (child, info) = self.tools.serve(
            &self.config,
            instance,
            &self.dir.join("data").join(instance),
            &log,
        )?;
        self.children[index] = Some(child);
        Ok(info)
    }

    /// kill -9 of the primary; the wall-clock time just before.
    fn kill_primary(&mut self) -> Result<f64> {
        let mut child = self.children[0]
            .take()
            .ok_or("the primary is not running")?;
        let at = unix_ms();
        child
            .kill()
            .map_err(|e| format!("cannot kill gw-primary: {e}"))?;
        let _ = child.wait();
        Ok(at)
    }

    fn pair_status(&self, instance: &str) -> Result<Value> {
        let text = output(self.gateway(instance).args(["pair", "status", "--json"]))?;
        serde_json::from_str(&text).map_err(|e| format!("{instance} pair status: {e}"))
    }

    /// Waits until both servers see each other LIVE with sync `ok` and hold
    /// one configuration version.
    fn wait_paired(&self, within: Duration) -> Result<Value> {
        let deadline = Instant::now() + within;
        loop {
            let (a, b) = (
                self.pair_status("gw-primary"),
                self.pair_status("gw-secondary"),
            );
            if let (Ok(a), Ok(b)) = (&a, &b)
                && a["state"] == "live"
                && b["state"] == "live"
                && a["sync"] == "ok"
                && b["sync"] == "ok"
                && a["config_version"].is_u64()
                && a["config_version"] == b["config_version"]
            {
                return Ok(a.clone());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the pair did not become LIVE with one configuration within {} s: {a:?}\n{b:?}",
                    within.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `gateway pair events --json` of both servers, newest first.
    fn pair_events(&self) -> Vec<Value> {
        let mut all = Vec::new();
        for instance in INSTANCES {
            if let Ok(text) = output(
                self.gateway(instance)
                    .args(["pair", "events", "--json", "--limit", "1000"]),
            ) && let Ok(v) = serde_json::from_str::<Value>(&text)
            {
                for mut e in v["events"].as_array().cloned().unwrap_or_default() {
                    e["server"] = json!(instance);
                    all.push(e);
                }
            }
        }
        all
    }

    /// `mfd-sim run` for one round through the failover client, started in
    /// the background.
    fn devices(&self, round: &str, jobs: u32, opts: &Options) -> Result<Child> {
        let events = self.dir.join(format!("{round}-events.jsonl"));
        let _ = std::fs::remove_file(&events);
        let mut cmd = Command::new(self.tools.bin("mfd-sim"));
        cmd.arg("run")
            .args(["--server", &self.urls[0], "--server", &self.urls[1]])
            .arg("--ca")
            .arg(&self.trust)
            .arg("--devices-file")
            .arg(self.dir.join("devices.json"))
            .args(["--user", "demo", "--password", "demo"])
            .args(["--workflow", "scan-to-searchable-pdf"])
            .args(["--jobs", &jobs.to_string()])
            .args(["--pages", &opts.pages.to_string(), "--page-source", "text"])
            .arg("--outbox")
            .arg(self.dir.join("outbox"))
            .args(["--jobs-per-session", &JOBS_PER_SESSION.to_string()])
            .args(["--scan-interval-ms", &SCAN_INTERVAL_MS.to_string()])
            .args([
                "--failback-probe-interval-ms",
                &FAILBACK_PROBE_INTERVAL_MS.to_string(),
                "--failback-good-probes",
                &FAILBACK_GOOD_PROBES.to_string(),
            ])
            .args(["--wait", "--wait-timeout", &WAIT_SECS.to_string()])
            .arg("--delivered")
            .arg(&self.delivered)
            .arg("--events")
            .arg(&events)
            .arg("--report")
            .arg(self.dir.join(format!("{round}-report.json")))
            .stdin(Stdio::null());
        if opts.json {
            // Its summary goes to stderr with the progress, so that the
            // demo's own JSON stays the last line of stdout.
            cmd.stdout(Stdio::from(
                std::io::stderr()
                    .as_fd()
                    .try_clone_to_owned()
                    .map_err(|e| e.to_string())?,
            ));
        }
        cmd.spawn()
            .map_err(|e| format!("cannot start mfd-sim: {e}"))
    }

    fn report(&self, round: &str) -> Result<Value> {
        let path = self.dir.join(format!("{round}-report.json"));
        let text =
            std::fs::read(&path).map_err(|e| format!("no report {}: {e}", path.display()))?;
        serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// The events `mfd-sim --events` wrote so far.
fn read_events(path: &Path) -> Vec<Value> {
    let Ok(file) = std::fs::File::open(path) else {
        return Vec::new();
    };
    BufReader::new(file)
        .lines()
        .map_while(|l| l.ok())
        .filter_map(|l| serde_json::from_str(&l).ok())
        .collect()
}

fn unix_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// Prints a line of the story; on stderr with `--json`, so that stdout ends
/// with the JSON summary alone.
fn say(opts: &Options, text: &str) {
    if opts.json {
        eprintln!("{text}");
    } else {
        println!("{text}");
    }
}

pub fn run(args: &[String]) -> Result {
    let opts = parse(args)?;
    setup::apt(setup::DEMO_PACKAGES)?;
    let tools = Tools::build("debug")?;

    let dir = root().join("target/demo");
    stop_leftovers(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    let delivered = dir.join("delivered");
    std::fs::create_dir_all(&delivered)
        .map_err(|e| format!("cannot create {}: {e}", delivered.display()))?;

    // A vendor key of our own, and one license per server.
    let vendor = tools.vendor(&dir)?;
    let key_primary = tools.issue(&vendor, "03", 1001, opts.devices)?;
    let key_secondary = tools.issue(&vendor, "04", 1002, opts.devices)?;
    let hash = tools.hash_password("demo")?;
    let ports = [free_port()?, free_port()?];
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

# Both servers deliver into one folder; a document is created there without
# ever replacing one, so a second copy of a job is refused and reported.
[workflows.scan-to-searchable-pdf]
steps = [
  {{ plugin = "ocr", languages = ["eng"] }},
  {{ plugin = "assemble" }},
  {{ plugin = "folder", root = "{delivered}", name = "{{device}}-{{user}}-{{job_id}}.pdf" }},
]

[defaults]
data_dir = "data/{{instance}}"
# Devices asked to wait during maintenance come back after 2 s.
maintenance_retry_after_secs = 2

[defaults.pair]
heartbeat_interval_ms = {HEARTBEAT_INTERVAL_MS}
dead_threshold_ms = {DEAD_THRESHOLD_MS}

[instances.gw-primary]
listen = "127.0.0.1:{web_a}"

[instances.gw-primary.pair]
listen = "127.0.0.1:{pair_a}"
peer = "127.0.0.1:{pair_b}"

[instances.gw-secondary]
listen = "127.0.0.1:{web_b}"

[instances.gw-secondary.pair]
listen = "127.0.0.1:{pair_b}"
peer = "127.0.0.1:{pair_a}"
"#,
            pub_key = vendor.public_key,
            delivered = delivered.display(),
            web_a = ports[0],
            web_b = ports[1],
            pair_a = free_port()?,
            pair_b = free_port()?,
        ),
    )
    .map_err(|e| e.to_string())?;

    let mut site = Site {
        tools,
        dir: dir.clone(),
        config,
        urls: ports.map(|p| format!("https://127.0.0.1:{p}")),
        trust: dir.join("gateways-trust.pem"),
        delivered,
        children: [None, None],
    };
    output(
        site.gateway("gw-primary")
            .args(["license", "activate", &key_primary]),
    )?;
    output(
        site.gateway("gw-secondary")
            .args(["license", "activate", &key_secondary]),
    )?;
    let mut devices = Vec::new();
    for i in 1..=opts.devices {
        let name = format!("mfd-{i:02}");
        let added = output(site.gateway("gw-primary").args(["device", "add", &name]))?;
        let v: Value = serde_json::from_str(&added).map_err(|e| e.to_string())?;
        devices.push(json!({"name": name, "token": v["token"]}));
    }
    std::fs::write(
        dir.join("devices.json"),
        serde_json::to_vec_pretty(&devices).expect("json"),
    )
    .map_err(|e| e.to_string())?;

    let mut trust = Vec::new();
    for (i, instance) in INSTANCES.iter().enumerate() {
        // The self-signed certificate each server made on its first start.
        let info = site.start(i)?;
        let cert = PathBuf::from(info["certificate"].as_str().unwrap_or_default());
        trust.extend(std::fs::read(&cert).map_err(|e| format!("{}: {e}", cert.display()))?);
        say(
            &opts,
            &format!(
                "{instance} listening on {} (log: target/demo/{instance}.log)",
                site.urls[i]
            ),
        );
    }
    std::fs::write(&site.trust, trust).map_err(|e| e.to_string())?;

    // Pair the two servers: a one-time code from the primary, joined on the
    // secondary; from then on each watches the other's heartbeats.
    let code = output(site.gateway("gw-primary").args(["pair", "init"]))?;
    output(
        site.gateway("gw-secondary")
            .args(["pair", "join", code.trim()]),
    )?;
    let paired = site.wait_paired(Duration::from_secs(20))?;
    say(
        &opts,
        &format!(
            "paired: gw-primary and gw-secondary see each other LIVE over their pair link; \
             configuration version {} is on both (devices, users, session key)",
            paired["config_version"]
        ),
    );

    let story = run_story(&mut site, &opts);

    say(&opts, "");
    for instance in INSTANCES {
        if let Ok(text) = output(site.gateway(instance).arg("status")) {
            say(&opts, &text);
            say(&opts, "");
        }
    }
    let mut pdfs = walk(&site.delivered);
    pdfs.sort();
    say(
        &opts,
        &format!(
            "{} searchable PDFs delivered under {}",
            pdfs.len(),
            site.delivered.display()
        ),
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
        say(
            &opts,
            &format!(
                "text of {}: {excerpt}",
                first.file_name().unwrap_or_default().to_string_lossy()
            ),
        );
    }

    let result = story.and_then(|summary| {
        say(&opts, "");
        say(&opts, &describe(&summary));
        let ok = summary["ok"] == true;
        if opts.json {
            println!("{summary}");
        }
        if ok {
            Ok(())
        } else {
            Err(format!(
                "the demo failed: {} lost, {} duplicated ({} reported), {} failover(s), {} failback(s) (nothing lost, nothing duplicated beyond the reported exceptions, and at least one failover and one failback are required); see target/demo/*-report.json",
                summary["jobs_lost"],
                summary["jobs_duplicated"],
                summary["jobs_duplicated_reported"],
                summary["failovers"].as_object().map_or(0, |f| f.values().filter_map(|v| v.as_u64()).sum::<u64>()),
                summary["failbacks"]
            ))
        }
    });

    if opts.keep_running {
        if site.children[0].is_none() {
            site.start(0)?;
        }
        let pids: Vec<String> = site
            .children
            .iter_mut()
            .filter_map(|c| c.take())
            .map(|c| c.id().to_string())
            .collect();
        say(&opts, &keep_running_text(&site, &pids));
        return result;
    }
    for child in site.children.iter_mut() {
        if let Some(mut child) = child.take() {
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let _ = child.wait();
        }
    }
    say(
        &opts,
        &format!(
            "\nthe pair was stopped; everything it wrote is in {}",
            dir.display()
        ),
    );
    result
}

/// The rounds of the demo; returns the summary (the `--json` object).
fn run_story(site: &mut Site, opts: &Options) -> Result<Value> {
    let total = opts.devices * opts.jobs;
    say(
        opts,
        &format!(
            "\n{} simulated devices scan {total} jobs of {} text page(s) each, people taking turns \
             ({JOBS_PER_SESSION} scans each); OCR makes searchable PDFs. Part-way, gw-primary is \
             killed with kill -9.\n",
            opts.devices, opts.pages
        ),
    );
    let mut run = site.devices("failover", total, opts)?;
    let events = site.dir.join("failover-events.jsonl");
    let kill_after = (total / 3).max(1) as usize;
    let story = kill_and_restart(site, opts, &mut run, &events, kill_after);
    let status = run.wait().map_err(|e| e.to_string())?;
    let timeline = story?;
    if !status.success() {
        say(
            opts,
            &format!("the devices' run ended with {status}; its report is read all the same"),
        );
    }
    let failover = site.report("failover")?;

    // One more round with the primary in maintenance (cause 4).
    output(site.gateway("gw-primary").args(["maintenance", "on"]))?;
    say(
        opts,
        "\ngw-primary is in maintenance: the next round of scans goes to gw-secondary, with the \
         same tokens and sessions.\n",
    );
    let mut run = site.devices("maintenance", opts.devices, opts)?;
    let status = run.wait().map_err(|e| e.to_string())?;
    let _ = output(site.gateway("gw-primary").args(["maintenance", "off"]));
    if !status.success() {
        say(
            opts,
            &format!("the maintenance round ended with {status}; its report is read all the same"),
        );
    }
    let maintenance = site.report("maintenance")?;
    Ok(summarise(
        site,
        &[&failover, &maintenance],
        &timeline,
        opts.devices,
    ))
}

/// Watches the devices' events; kills the primary once `kill_after` jobs
/// are acknowledged, restarts it once the secondary has taken over, and
/// waits for the devices to fail back. Returns what it saw, in ms since the
/// kill.
fn kill_and_restart(
    site: &mut Site,
    opts: &Options,
    run: &mut Child,
    events: &Path,
    kill_after: usize,
) -> Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let acked = |events: &[Value]| {
        events
            .iter()
            .filter(|e| e["event"] == "acknowledged")
            .count()
    };
    loop {
        if acked(&read_events(events)) >= kill_after {
            break;
        }
        if let Ok(Some(status)) = run.try_wait() {
            return Err(format!(
                "the devices stopped ({status}) before {kill_after} jobs were acknowledged"
            ));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{kill_after} jobs were not acknowledged within 120 s"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let killed_at = site.kill_primary()?;
    say(
        opts,
        &format!(
            "\nkill -9 gw-primary after {} acknowledged jobs: the devices fail over to gw-secondary; \
             it takes over gw-primary's unfinished jobs once gw-primary is DEAD ({DEAD_THRESHOLD_MS} ms \
             of silence) and its lease is over.",
            acked(&read_events(events))
        ),
    );
    // Let the devices fail over and the secondary take the jobs over.
    let since = |at: f64| at - killed_at;
    let mut takeover_ms = None;
    let mut first_failover_ms = None;
    let limit = Instant::now() + Duration::from_secs(15);
    while Instant::now() < limit && (takeover_ms.is_none() || first_failover_ms.is_none()) {
        let seen = read_events(events);
        first_failover_ms = seen
            .iter()
            .filter(|e| e["event"] == "failover")
            .filter_map(|e| e["at_unix_us"].as_f64())
            .map(|us| since(us / 1000.0))
            .find(|ms| *ms >= 0.0);
        if takeover_ms.is_none()
            && site
                .pair_events()
                .iter()
                .any(|e| e["server"] == "gw-secondary" && e["kind"] == "takeover")
        {
            takeover_ms = Some(since(unix_ms()));
        }
        if matches!(run.try_wait(), Ok(Some(_))) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let first_ack_elsewhere_ms = read_events(events)
        .iter()
        .filter(|e| e["event"] == "acknowledged" && e["server_index"] == 1)
        .filter_map(|e| e["at_unix_us"].as_f64())
        .map(|us| since(us / 1000.0))
        .find(|ms| *ms >= 0.0);
    say(
        opts,
        &format!(
            "  first job acknowledged by gw-secondary {} after the kill; takeover seen {}",
            show_ms(first_ack_elsewhere_ms),
            show_ms(takeover_ms)
        ),
    );
    // The restarted server's log starts afresh: keep the killed one's.
    let log = site.dir.join("gw-primary.log");
    let _ = std::fs::rename(&log, site.dir.join("gw-primary.killed.log"));
    site.start(0)?;
    let restarted_ms = since(unix_ms());
    say(
        opts,
        &format!(
            "gw-primary started again ({restarted_ms:.0} ms after the kill); the devices return to it \
             after {FAILBACK_GOOD_PROBES} good health answers, each once its person has logged out."
        ),
    );
    let paired = site.wait_paired(Duration::from_secs(30));
    let mut failback_ms = None;
    while failback_ms.is_none() && matches!(run.try_wait(), Ok(None)) {
        failback_ms = read_events(events)
            .iter()
            .filter(|e| e["event"] == "failback")
            .filter_map(|e| e["at_unix_us"].as_f64())
            .map(|us| since(us / 1000.0))
            .find(|ms| *ms >= 0.0);
        std::thread::sleep(Duration::from_millis(50));
    }
    say(
        opts,
        &format!(
            "  pair LIVE again: {}; first failback {} after the kill\n",
            if paired.is_ok() { "yes" } else { "not yet" },
            show_ms(failback_ms)
        ),
    );
    Ok(json!({
        "first_failover_ms": first_failover_ms,
        "first_ack_on_secondary_ms": first_ack_elsewhere_ms,
        "takeover_seen_ms": takeover_ms,
        "primary_restarted_ms": restarted_ms,
        "first_failback_ms": failback_ms,
    }))
}

fn show_ms(ms: Option<f64>) -> String {
    ms.map_or("(not seen)".to_owned(), |ms| format!("{ms:.0} ms"))
}

/// The demo's summary from the rounds' reports and the pair events.
fn summarise(site: &Site, reports: &[&Value], timeline: &Value, devices: u32) -> Value {
    let sum = |key: &str| -> u64 { reports.iter().filter_map(|r| r[key].as_u64()).sum() };
    let rec = |key: &str| -> u64 {
        reports
            .iter()
            .filter_map(|r| r["reconciliation"][key].as_u64())
            .sum()
    };
    let mut failovers = serde_json::Map::new();
    for r in reports {
        for (cause, n) in r["failovers"].as_object().into_iter().flatten() {
            let before = failovers.get(cause).and_then(Value::as_u64).unwrap_or(0);
            failovers.insert(cause.clone(), json!(before + n.as_u64().unwrap_or(0)));
        }
    }
    let failover_ms: Vec<f64> = reports
        .iter()
        .flat_map(|r| r["failover_ms"].as_array().cloned().unwrap_or_default())
        .filter_map(|v| v.as_f64())
        .collect();
    let ack_ms: Vec<f64> = reports
        .iter()
        .flat_map(|r| r["job_reports"].as_array().cloned().unwrap_or_default())
        .filter_map(|j| j["ack_ms"].as_f64())
        .collect();
    let duplicated: Vec<String> = reports
        .iter()
        .flat_map(|r| {
            r["reconciliation"]["duplicated"]
                .as_object()
                .map(|m| m.keys().cloned().collect::<Vec<_>>())
                .unwrap_or_default()
        })
        .collect();
    let lost: Vec<Value> = reports
        .iter()
        .flat_map(|r| {
            r["reconciliation"]["lost"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .collect();
    // The documented exceptions, as the servers reported them.
    let events = site.pair_events();
    let mut reported: Vec<String> = events
        .iter()
        .filter(|e| e["kind"] == "possible_duplicate" || e["kind"] == "second_copy_refused")
        .filter_map(|e| e["job_id"].as_str().map(str::to_owned))
        .collect();
    reported.sort();
    reported.dedup();
    let kinds = |kind: &str| events.iter().filter(|e| e["kind"] == kind).count();
    let unreported = duplicated.iter().filter(|d| !reported.contains(d)).count();
    let checked = rec("jobs_checked");
    let lost_n = rec("jobs_lost");
    // The story must have happened, too: a device failed over and came
    // back.
    let ok = lost_n == 0
        && unreported == 0
        && checked == sum("jobs_acknowledged")
        && sum("jobs_queued") == 0
        && !failovers.is_empty()
        && sum("failbacks") > 0;
    let p = |samples: &[f64], which: fn(&crate::measure::Summary) -> f64| {
        summary(samples).map(|s| (which(&s) * 10.0).round() / 10.0)
    };
    json!({
        "ok": ok,
        "devices": devices,
        "jobs_asked": sum("jobs_asked"),
        "jobs_submitted": sum("jobs_submitted"),
        "jobs_acknowledged": sum("jobs_acknowledged"),
        "jobs_rejected": sum("jobs_rejected"),
        "jobs_queued": sum("jobs_queued"),
        "jobs_delivered": rec("jobs_delivered"),
        "jobs_lost": lost_n,
        "jobs_duplicated": rec("jobs_duplicated"),
        "jobs_duplicated_reported": reported.len(),
        "lost": lost,
        "failovers": failovers,
        "failover_ms_p50": p(&failover_ms, |s| s.p50),
        "failover_ms_p99": p(&failover_ms, |s| s.p99),
        "failbacks": sum("failbacks"),
        "ack_ms_p50": p(&ack_ms, |s| s.p50),
        "ack_ms_p99": p(&ack_ms, |s| s.p99),
        "jobs_per_second": reports.first().and_then(|r| r["jobs_per_second"].as_f64()),
        "takeovers": kinds("takeover"),
        "second_copies_refused": kinds("second_copy_refused"),
        "possible_duplicates": kinds("possible_duplicate"),
        "kill": timeline,
    })
}

/// The summary for a person.
fn describe(s: &Value) -> String {
    let mut out = String::from("demo summary\n");
    out += &format!(
        "  jobs        {} asked, {} submitted, {} acknowledged, {} rejected, {} delivered\n",
        s["jobs_asked"],
        s["jobs_submitted"],
        s["jobs_acknowledged"],
        s["jobs_rejected"],
        s["jobs_delivered"]
    );
    out += &format!(
        "  reconciled  {} lost, {} duplicated ({} second copies reported by the servers)\n",
        s["jobs_lost"], s["jobs_duplicated"], s["jobs_duplicated_reported"]
    );
    for (cause, n) in s["failovers"].as_object().into_iter().flatten() {
        out += &format!("  failover    {n} × {cause}\n");
    }
    out += &format!(
        "  failover    p50 {} ms, p99 {} ms (a device's request, from its start to the other server's answer)\n",
        s["failover_ms_p50"], s["failover_ms_p99"]
    );
    out += &format!("  failbacks   {}\n", s["failbacks"]);
    out += &format!(
        "  ack latency p50 {} ms, p99 {} ms (scan to acknowledgement)\n",
        s["ack_ms_p50"], s["ack_ms_p99"]
    );
    out += &format!(
        "  takeovers   {} (gw-secondary took gw-primary's unfinished jobs)",
        s["takeovers"]
    );
    out
}

fn keep_running_text(site: &Site, pids: &[String]) -> String {
    let mfd = site.tools.bin("mfd-sim");
    let gw = site.tools.bin("gateway");
    format!(
        "\nthe pair keeps running:\n\
         \x20 gw-primary    {}\n\
         \x20 gw-secondary  {}\n\
         \x20 certificates  {}\n\
         \x20 devices       {} (user demo, password demo)\n\
         more scans through the failover client:\n\
         \x20 {} run --server {} --server {} --ca {} --devices-file {} --user demo --password demo \
         --workflow scan-to-searchable-pdf --jobs 8 --outbox {} --delivered {} --wait --report {}\n\
         status and pair events:\n\
         \x20 {gw} --config {} --instance gw-primary status\n\
         \x20 {gw} --config {} --instance gw-secondary pair events\n\
         stop it with: kill {}",
        site.urls[0],
        site.urls[1],
        site.trust.display(),
        site.dir.join("devices.json").display(),
        mfd.display(),
        site.urls[0],
        site.urls[1],
        site.trust.display(),
        site.dir.join("devices.json").display(),
        site.dir.join("outbox").display(),
        site.delivered.display(),
        site.dir.join("more-report.json").display(),
        site.config.display(),
        site.config.display(),
        pids.join(" "),
        gw = gw.display(),
    )
}

/// A free loopback port (the gateway binds it at start).
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
