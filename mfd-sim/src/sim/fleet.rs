//! Owns the simulation of devices the way a real device agent works: each
//! device has its own [`FailoverClient`] and [`Outbox`], a person logs in,
//! scans jobs into the outbox, and the client delivers them, failing over
//! and back; whatever is still queued at the end is replayed from the outbox
//! with the same ids. It reports jobs asked, submitted, acknowledged and
//! rejected, failovers by cause, and acknowledgement latency, with every
//! job's id, server and outcome. It must not print (the binary does).

use std::{
    collections::BTreeMap,
    fmt,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use serde::Serialize;
use uuid::Uuid;

use crate::{
    failover::{Delivery, EventKind, FailoverClient, FailoverSettings, RequestError},
    multipart::{Manifest, Page},
    outbox::{Outbox, OutboxLimits},
    progress::{Progress, ProgressStyle},
    servers::ServerList,
    stats::{Latencies, LatencySummary, per_second},
};

use super::{DeviceCredentials, SimError};

/// One run through the failover client, validated.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// The gateways in order of preference (without device tokens).
    pub servers: ServerList,
    /// The simulated devices.
    pub devices: Vec<DeviceCredentials>,
    /// The user who logs in at every device.
    pub user: String,
    /// That user's password.
    pub password: String,
    /// The workflow every job goes to.
    pub workflow: String,
    /// Jobs in total, shared among the devices.
    pub jobs: u64,
    /// The pages of every job.
    pub pages: Vec<Page>,
    /// Each device's outbox is a directory `<outbox_root>/<device name>`.
    pub outbox_root: PathBuf,
    /// How each device's client behaves.
    pub failover: FailoverSettings,
    /// Delivery rounds for the jobs still queued after the scans (each a
    /// replay of the outbox), with `retry_pause` between them.
    pub replay_rounds: u32,
    /// Pause between two replay rounds.
    pub retry_pause: Duration,
}

/// What became of one job.
#[derive(Debug, Clone, Serialize)]
pub struct JobReport {
    /// The device-chosen job id.
    pub job_id: Uuid,
    /// The device that scanned it.
    pub device: String,
    /// `acknowledged`, `replayed` (acknowledged with `200`), `rejected`, or
    /// `queued` (still in the device's outbox at the end).
    pub outcome: String,
    /// The server that acknowledged or rejected it.
    pub server: Option<String>,
    /// Rejection code or the last error, when not acknowledged.
    pub detail: Option<String>,
    /// From the scan to the acknowledgement, in milliseconds.
    pub ack_ms: Option<f64>,
}

/// What a fleet run did; serialised as the `--report` file.
#[derive(Debug, Clone, Serialize)]
pub struct FleetSummary {
    /// Devices simulated.
    pub devices: usize,
    /// Jobs asked for.
    pub jobs_asked: u64,
    /// Jobs scanned into an outbox and attempted.
    pub jobs_submitted: u64,
    /// Jobs a server acknowledged (`201` or `200`).
    pub jobs_acknowledged: u64,
    /// Of those, acknowledged as a replay (`200`).
    pub jobs_replayed: u64,
    /// Jobs refused for good and moved to `rejected/`.
    pub jobs_rejected: u64,
    /// Jobs still queued in an outbox at the end.
    pub jobs_queued: u64,
    /// Failover events by cause.
    pub failovers: BTreeMap<String, u64>,
    /// Certificates that failed verification (not a failover cause).
    pub certificate_rejected: u64,
    /// Returns to a server higher up the list.
    pub failbacks: u64,
    /// Acknowledgement latency from the scan, in milliseconds.
    pub ack_latency: LatencySummary,
    /// Wall time of the run.
    pub elapsed_secs: f64,
    /// Acknowledged jobs per second.
    pub jobs_per_second: f64,
    /// Every job, in the order the devices scanned them.
    pub job_reports: Vec<JobReport>,
}

impl FleetSummary {
    /// True when every job asked for was acknowledged.
    pub fn all_acknowledged(&self) -> bool {
        self.jobs_acknowledged == self.jobs_asked
    }
}

impl fmt::Display for FleetSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "devices       {}", self.devices)?;
        writeln!(
            f,
            "jobs          {} asked, {} submitted, {} acknowledged ({} replayed), {} rejected, {} queued",
            self.jobs_asked,
            self.jobs_submitted,
            self.jobs_acknowledged,
            self.jobs_replayed,
            self.jobs_rejected,
            self.jobs_queued
        )?;
        for (cause, n) in &self.failovers {
            writeln!(f, "  failover    {n} × {cause}")?;
        }
        if self.certificate_rejected > 0 {
            writeln!(
                f,
                "  certificate {} × certificate_rejected",
                self.certificate_rejected
            )?;
        }
        writeln!(f, "failbacks     {}", self.failbacks)?;
        writeln!(
            f,
            "throughput    {:.1} jobs/s over {:.2} s",
            self.jobs_per_second, self.elapsed_secs
        )?;
        writeln!(f, "ack latency   {}", self.ack_latency.describe())
    }
}

struct DeviceResult {
    reports: Vec<JobReport>,
    latencies: Latencies,
    events: Vec<EventKind>,
}

/// Runs the fleet and returns its summary.
pub async fn run_fleet(
    config: FleetConfig,
    style: ProgressStyle,
) -> Result<FleetSummary, SimError> {
    if config.devices.is_empty() {
        return Err(SimError::NoDevices);
    }
    let progress = Progress::start("jobs", config.jobs, style);
    let counter = progress.counter();
    let next = Arc::new(AtomicU64::new(0));
    let config = Arc::new(config);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for device in &config.devices {
        let servers =
            config
                .servers
                .with_token(&device.token)
                .map_err(|source| SimError::Device {
                    device: device.name.clone(),
                    source,
                })?;
        let outbox = Outbox::open(
            config.outbox_root.join(&device.name),
            OutboxLimits::default(),
        )
        .map_err(|e| SimError::Outbox {
            device: device.name.clone(),
            source: e,
        })?;
        let (config, next, counter, name) = (
            config.clone(),
            next.clone(),
            counter.clone(),
            device.name.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let client = FailoverClient::new(servers, config.failover);
            run_device(&config, &client, &outbox, &name, &next, &counter).await
        }));
    }
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.expect("device task panicked"));
    }
    let elapsed = started.elapsed();
    progress.finish().await;

    let mut latencies = Latencies::new();
    let mut failovers = BTreeMap::new();
    let (mut certificate_rejected, mut failbacks) = (0, 0);
    let mut job_reports = Vec::new();
    for r in results {
        latencies.merge(r.latencies);
        for e in r.events {
            match e {
                EventKind::Failover { cause, .. } => {
                    *failovers.entry(cause.as_str().to_owned()).or_default() += 1
                }
                EventKind::CertificateRejected { .. } => certificate_rejected += 1,
                EventKind::Failback { .. } => failbacks += 1,
            }
        }
        job_reports.extend(r.reports);
    }
    let count = |o: &str| job_reports.iter().filter(|j| j.outcome == o).count() as u64;
    let acknowledged = count("acknowledged") + count("replayed");
    Ok(FleetSummary {
        devices: config.devices.len(),
        jobs_asked: config.jobs,
        jobs_submitted: job_reports.len() as u64,
        jobs_acknowledged: acknowledged,
        jobs_replayed: count("replayed"),
        jobs_rejected: count("rejected"),
        jobs_queued: count("queued"),
        failovers,
        certificate_rejected,
        failbacks,
        ack_latency: latencies.summary(),
        elapsed_secs: elapsed.as_secs_f64(),
        jobs_per_second: per_second(acknowledged, elapsed),
        job_reports,
    })
}

async fn run_device(
    config: &FleetConfig,
    client: &FailoverClient,
    outbox: &Outbox,
    name: &str,
    next: &AtomicU64,
    counter: &crate::progress::Counter,
) -> DeviceResult {
    let mut reports: Vec<JobReport> = Vec::new();
    let mut scanned_at: BTreeMap<Uuid, Instant> = BTreeMap::new();
    let mut latencies = Latencies::new();
    let mut logged_in = false;
    loop {
        let seq = next.fetch_add(1, Ordering::Relaxed);
        if seq >= config.jobs {
            break;
        }
        let manifest = Manifest::new(config.workflow.clone(), config.pages.len())
            .with_metadata("sim.device", name)
            .with_metadata("sim.seq", seq.to_string());
        let mut job = None;
        for attempt in 0..=config.replay_rounds {
            if attempt > 0 {
                tokio::time::sleep(config.retry_pause).await;
            }
            if !logged_in {
                match client.login(&config.user, &config.password).await {
                    Ok(_) => logged_in = true,
                    Err(e) => {
                        tracing::info!(device = name, error = %e, "login failed");
                        continue;
                    }
                }
            }
            match client.scan(outbox, &manifest, config.pages.clone()).await {
                Ok(j) => {
                    job = Some(j);
                    break;
                }
                // The session timed out while idle: log in again.
                Err(RequestError::NoSession) => logged_in = false,
                Err(e) => {
                    tracing::warn!(device = name, error = %e, "scan refused");
                    break;
                }
            }
        }
        counter.inc();
        let Some(job) = job else {
            continue;
        };
        scanned_at.insert(job.job_id, Instant::now());
        let outcome = client.deliver(outbox, &job).await;
        record(
            &mut reports,
            &mut latencies,
            &scanned_at,
            name,
            job.job_id,
            outcome,
        );
    }
    if logged_in {
        let _ = client.logout().await;
    }
    // Whatever is still queued goes out from the outbox, with the same ids.
    for round in 0..config.replay_rounds {
        let queued = reports.iter().any(|r| r.outcome == "queued");
        if !queued {
            break;
        }
        if round > 0 {
            tokio::time::sleep(config.retry_pause).await;
        }
        let Ok(done) = client.replay(outbox).await else {
            continue;
        };
        for (job_id, outcome) in done {
            record(
                &mut reports,
                &mut latencies,
                &scanned_at,
                name,
                job_id,
                outcome,
            );
        }
    }
    DeviceResult {
        reports,
        latencies,
        events: client.events().into_iter().map(|e| e.kind).collect(),
    }
}

fn record(
    reports: &mut Vec<JobReport>,
    latencies: &mut Latencies,
    scanned_at: &BTreeMap<Uuid, Instant>,
    device: &str,
    job_id: Uuid,
    outcome: Result<Delivery, RequestError>,
) {
    let report = match outcome {
        Ok(Delivery::Acknowledged(d)) => {
            let ack = scanned_at.get(&job_id).map(Instant::elapsed);
            if let Some(ack) = ack {
                latencies.record(ack);
            }
            JobReport {
                job_id,
                device: device.to_owned(),
                outcome: if d.replayed {
                    "replayed"
                } else {
                    "acknowledged"
                }
                .to_owned(),
                server: Some(d.server),
                detail: None,
                ack_ms: ack.map(|a| a.as_secs_f64() * 1000.0),
            }
        }
        Ok(Delivery::Rejected(r)) => JobReport {
            job_id,
            device: device.to_owned(),
            outcome: "rejected".to_owned(),
            server: Some(r.server),
            detail: Some(r.code.unwrap_or_else(|| format!("http_{}", r.status))),
            ack_ms: None,
        },
        Err(e) => JobReport {
            job_id,
            device: device.to_owned(),
            outcome: "queued".to_owned(),
            server: None,
            detail: Some(e.to_string()),
            ack_ms: None,
        },
    };
    match reports.iter_mut().find(|r| r.job_id == job_id) {
        Some(existing) => *existing = report,
        None => reports.push(report),
    }
}
