//! The simulated devices of a fault scenario: one `mfd-sim run` process per
//! run, every device with the real failover client and a durable outbox
//! under the scenario's directory (kept across runs, so a run after a
//! kill -9 sends what the killed one left queued, with the same ids). It
//! reads what each device reported — every job id, acknowledged or not —
//! from each run's event stream (acknowledgements and rejections, written
//! as they happen, so a killed run leaves them too) and the outboxes (what
//! is still queued or was rejected). No report file is asked for: its
//! reconciliation would query servers the scenario may still hold down.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use uuid::Uuid;

use super::Scenario;
use crate::bin;

/// What one device run does.
#[derive(Clone, Copy, Debug)]
pub struct RunSpec {
    /// Jobs scanned in total across the devices.
    pub jobs: u64,
    /// The workflow of every job.
    pub workflow: &'static str,
    /// Pause between two scans of one person.
    pub scan_interval_ms: u64,
    /// Jobs per person (log in, scan, log out: what lets a device fail
    /// back).
    pub jobs_per_session: u64,
    /// Bytes of the one page of every job (random pixels), or `None` for a
    /// rendered text page (for OCR).
    pub page_bytes: Option<u64>,
}

impl RunSpec {
    /// `jobs` one-page jobs through the workflow without OCR.
    pub fn plain(jobs: u64) -> RunSpec {
        RunSpec {
            jobs,
            workflow: super::WORKFLOW,
            scan_interval_ms: 20,
            jobs_per_session: 5,
            page_bytes: Some(12_000),
        }
    }
}

/// What a device said about one job.
#[derive(Clone, Debug, Default)]
pub struct DeviceJob {
    pub device: String,
    /// The last outcome a run reported (`acknowledged`, `replayed`,
    /// `rejected`, `queued`) or `outbox` (still in an outbox, no report).
    pub outcome: String,
    /// Some run saw it acknowledged (201 or 200).
    pub acknowledged: bool,
    /// The server that acknowledged it, as the device named it.
    pub server: Option<String>,
}

/// One `mfd-sim run` process.
pub struct DeviceRun {
    pub index: usize,
    child: Option<Child>,
    pub report: PathBuf,
    pub events: PathBuf,
    pub log: PathBuf,
    pub spec: RunSpec,
    pub started: Instant,
    /// How the process ended (`exit 0`, `killed`, `timed out`).
    pub ended: Option<String>,
}

impl DeviceRun {
    pub(super) fn start(s: &Scenario, index: usize, spec: RunSpec) -> DeviceRun {
        let dir = s.dir();
        let report = dir.join(format!("devices-{index}.report.json"));
        let events = dir.join(format!("devices-{index}.events.jsonl"));
        let log = dir.join(format!("devices-{index}.log"));
        let mut cmd = Command::new(bin("mfd-sim"));
        cmd.arg("run");
        for url in s.device_urls() {
            cmd.args(["--server", &url]);
        }
        cmd.arg("--ca")
            .arg(&s.trust)
            .arg("--devices-file")
            .arg(&s.devices_file)
            .args(["--user", super::USER, "--password", super::PASSWORD])
            .args(["--workflow", spec.workflow])
            .args(["--jobs", &spec.jobs.to_string(), "--pages", "1"])
            .args(["--scan-interval-ms", &spec.scan_interval_ms.to_string()])
            .args(["--jobs-per-session", &spec.jobs_per_session.to_string()])
            .args(["--failback-probe-interval-ms", "200"])
            .args(["--failback-good-probes", "3"])
            // Every device keeps trying for a long time: an outage of a
            // scenario must not turn into jobs given up on.
            .args(["--max-attempts", "60"])
            .arg("--outbox")
            .arg(&s.outbox)
            .arg("--events")
            .arg(&events)
            .arg("--quiet")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null());
        match spec.page_bytes {
            Some(bytes) => cmd.args([
                "--page-source",
                "random",
                "--page-bytes",
                &bytes.to_string(),
            ]),
            None => cmd.args(["--page-source", "text"]),
        };
        let file = std::fs::File::create(&log).expect("device log");
        let child = cmd
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("start mfd-sim");
        DeviceRun {
            index,
            child: Some(child),
            report,
            events,
            log,
            spec,
            started: Instant::now(),
            ended: None,
        }
    }

    pub fn running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => match c.try_wait() {
                Ok(Some(status)) => {
                    self.ended = Some(format!("{status}"));
                    self.child = None;
                    false
                }
                _ => true,
            },
            None => false,
        }
    }

    /// Waits for the process to end; kills it when `within` passed.
    /// Returns how it ended.
    pub fn wait(&mut self, within: Duration) -> String {
        let deadline = Instant::now() + within;
        while self.running() {
            if Instant::now() > deadline {
                self.kill9();
                self.ended = Some(format!("killed after {within:?} (still running)"));
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.ended.clone().unwrap_or_default()
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            self.ended = Some("killed".to_owned());
        }
    }

    /// Jobs acknowledged so far, from the event stream.
    pub fn acknowledged_so_far(&self) -> usize {
        read_jsonl(&self.events)
            .iter()
            .filter(|e| e["event"] == "acknowledged")
            .count()
    }

    /// The run's summary, when it finished and wrote one.
    pub fn summary(&self) -> Option<Value> {
        serde_json::from_slice(&std::fs::read(&self.report).ok()?).ok()
    }

    /// The device log's text.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn read_jsonl(path: &Path) -> Vec<Value> {
    let Ok(f) = std::fs::File::open(path) else {
        return Vec::new();
    };
    BufReader::new(f)
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| serde_json::from_str(&l).ok())
        .collect()
}

/// Every job any device reported in any run, and what is still in the
/// outboxes: the device side's whole account.
pub fn device_jobs(runs: &[DeviceRun], outbox: &Path) -> BTreeMap<Uuid, DeviceJob> {
    let mut jobs: BTreeMap<Uuid, DeviceJob> = BTreeMap::new();
    for run in runs {
        for e in read_jsonl(&run.events) {
            let Some(id) = e["job_id"].as_str().and_then(|s| Uuid::parse_str(s).ok()) else {
                continue;
            };
            let j = jobs.entry(id).or_default();
            j.device = e["device"].as_str().unwrap_or_default().to_owned();
            match e["event"].as_str() {
                Some("acknowledged") => {
                    j.acknowledged = true;
                    j.outcome = if e["replayed"] == true {
                        "replayed"
                    } else {
                        "acknowledged"
                    }
                    .to_owned();
                    j.server = e["server"].as_str().map(str::to_owned);
                }
                Some("rejected") if !j.acknowledged => j.outcome = "rejected".to_owned(),
                _ => {}
            }
        }
        if let Some(summary) = run.summary() {
            for r in summary["job_reports"].as_array().into_iter().flatten() {
                let Some(id) = r["job_id"].as_str().and_then(|s| Uuid::parse_str(s).ok()) else {
                    continue;
                };
                let j = jobs.entry(id).or_default();
                j.device = r["device"].as_str().unwrap_or_default().to_owned();
                let outcome = r["outcome"].as_str().unwrap_or_default();
                if matches!(outcome, "acknowledged" | "replayed") {
                    j.acknowledged = true;
                    j.server = r["server"].as_str().map(str::to_owned);
                }
                if !j.acknowledged || matches!(outcome, "acknowledged" | "replayed") {
                    j.outcome = outcome.to_owned();
                }
            }
        }
    }
    // Scanned and never reported (a run killed before it could say).
    for device in std::fs::read_dir(outbox).into_iter().flatten().flatten() {
        for sub in ["jobs", "rejected"] {
            for entry in std::fs::read_dir(device.path().join(sub))
                .into_iter()
                .flatten()
                .flatten()
            {
                let name = entry.file_name().to_string_lossy().into_owned();
                if let Some(id) = super::uuid_in(&name) {
                    let j = jobs.entry(id).or_default();
                    if j.device.is_empty() {
                        j.device = device.file_name().to_string_lossy().into_owned();
                    }
                    if j.outcome.is_empty() {
                        j.outcome = "outbox".to_owned();
                    }
                }
            }
        }
    }
    jobs
}

/// Every acknowledgement of every run so far: (device clock in Unix
/// microseconds, index of the server in the devices' list).
pub fn acknowledgements(runs: &[DeviceRun]) -> Vec<(i64, u64)> {
    let mut acks: Vec<(i64, u64)> = runs
        .iter()
        .flat_map(|r| read_jsonl(&r.events))
        .filter(|e| e["event"] == "acknowledged")
        .filter_map(|e| Some((e["at_unix_us"].as_i64()?, e["server_index"].as_u64()?)))
        .collect();
    acks.sort_unstable();
    acks
}
