//! Owns the simulation of devices the way a real device agent works: each
//! device has its own [`FailoverClient`] and [`Outbox`]; at start it sends
//! whatever a previous run left in its outbox (same ids); then people take
//! turns at it, each logging in, scanning a batch of jobs into the outbox
//! (the client delivers each, failing over and back) and logging out, which
//! is what lets the device fail back; whatever is still queued at the end is
//! replayed from the outbox with the same ids. Optionally it waits until the
//! acknowledged jobs are delivered and reconciles them against every
//! server's job list and the destination folders. It reports jobs asked,
//! submitted, acknowledged and rejected, failovers by cause and their
//! duration, failbacks, acknowledgement latency and throughput, with every
//! job's id, server and outcome. It must not print (the binary does); what
//! happens as it happens goes to the caller's [`EventSink`].

use std::{
    collections::BTreeMap,
    fmt,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::{
    failover::{ClientEvent, Delivery, EventKind, FailoverClient, FailoverSettings, RequestError},
    multipart::{Manifest, Page},
    outbox::{Outbox, OutboxLimits},
    progress::{Counter, Progress, ProgressStyle},
    servers::ServerList,
    stats::{Latencies, LatencySummary, per_second},
};

use super::{
    DeviceCredentials, SimError, WaitPolicy,
    delivery::{self, Acknowledged, DeliverySummary},
    reconcile::{self, Reconciliation},
};

/// Where a run tells what happens as it happens: one JSON object per
/// acknowledgement, rejection and client event (failover, certificate,
/// failback), each with `event`, `device`, `at` and `at_unix_us`.
#[derive(Clone)]
pub struct EventSink(Arc<dyn Fn(&Value) + Send + Sync>);

impl EventSink {
    /// A sink that hands every event to `f`.
    pub fn new(f: impl Fn(&Value) + Send + Sync + 'static) -> Self {
        EventSink(Arc::new(f))
    }

    fn emit(&self, event: &Value) {
        (self.0)(event)
    }
}

impl fmt::Debug for EventSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EventSink")
    }
}

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
    /// replay of the outbox), with `retry_pause` between them; also the
    /// login attempts of one person.
    pub replay_rounds: u32,
    /// Pause between two replay rounds or login attempts.
    pub retry_pause: Duration,
    /// Jobs one person scans before logging out (the next person logs in
    /// for the next batch); 0: one session for the device's whole share.
    pub jobs_per_session: u64,
    /// The pause before each scan after a person's first: the time it takes
    /// to put the next document on the glass.
    pub scan_interval: Duration,
    /// Whether and how long to wait, after the scans, until the
    /// acknowledged jobs are done (delivered) or failed.
    pub wait: Option<WaitPolicy>,
    /// Whether to reconcile the acknowledged jobs against every server's
    /// job list and `delivered_dirs` at the end.
    pub reconcile: bool,
    /// Destination folders whose files name the job id they hold; a job
    /// counts as delivered when a file there names it.
    pub delivered_dirs: Vec<PathBuf>,
    /// Told of every acknowledgement and client event as it happens.
    pub events: Option<EventSink>,
    /// Set to stop scanning new jobs; what is queued is still delivered.
    pub stop: Arc<AtomicBool>,
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
    /// With reconciliation: the job's state on each server (`received`,
    /// `processing`, `done`, `failed`; `absent`; the API's error code when
    /// the server refused to say, e.g. `maintenance`; or `unreachable`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_servers: Option<BTreeMap<String, String>>,
    /// With reconciliation and destination folders: files naming the job.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files: Option<u64>,
    /// With reconciliation: `ok`, `lost` or `duplicated`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verdict: Option<String>,
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
    /// Jobs a previous run had left in the outboxes, sent first.
    pub jobs_resumed: u64,
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
    /// Requests that met a failover cause: from their start to the answer
    /// of another server, in milliseconds.
    pub failover_latency: LatencySummary,
    /// The same, every sample.
    pub failover_ms: Vec<f64>,
    /// Acknowledgement latency from the scan, in milliseconds.
    pub ack_latency: LatencySummary,
    /// Wall time of the scanning phase.
    pub elapsed_secs: f64,
    /// Acknowledged jobs per second of the scanning phase.
    pub jobs_per_second: f64,
    /// The waiting phase, when asked for.
    pub delivery: Option<DeliverySummary>,
    /// The reconciliation, when asked for.
    pub reconciliation: Option<Reconciliation>,
    /// Whether the run was told to stop before every job was scanned.
    pub stopped: bool,
    /// Every job, in the order the devices scanned them.
    pub job_reports: Vec<JobReport>,
}

impl FleetSummary {
    /// True when every job scanned was acknowledged (none rejected, none
    /// left queued) and every job asked for was scanned, unless the run was
    /// told to stop early.
    pub fn all_acknowledged(&self) -> bool {
        self.jobs_queued == 0
            && self.jobs_rejected == 0
            && (self.stopped || self.jobs_submitted >= self.jobs_asked)
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
        if self.jobs_resumed > 0 {
            writeln!(
                f,
                "  resumed     {} left in the outboxes by an earlier run",
                self.jobs_resumed
            )?;
        }
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
        if self.failover_latency.count > 0 {
            writeln!(f, "failover      {}", self.failover_latency.describe())?;
        }
        writeln!(f, "failbacks     {}", self.failbacks)?;
        writeln!(
            f,
            "throughput    {:.1} jobs/s over {:.2} s",
            self.jobs_per_second, self.elapsed_secs
        )?;
        writeln!(f, "ack latency   {}", self.ack_latency.describe())?;
        if let Some(d) = &self.delivery {
            write!(f, "{d}")?;
        }
        if let Some(r) = &self.reconciliation {
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

/// The counters behind the progress bars.
#[derive(Clone)]
struct Bars {
    submitted: Counter,
    acknowledged: Counter,
}

struct DeviceResult {
    reports: Vec<JobReport>,
    latencies: Latencies,
    events: Vec<EventKind>,
    failover_times: Vec<Duration>,
    resumed: u64,
}

/// Runs the fleet and returns its summary.
pub async fn run_fleet(
    config: FleetConfig,
    style: ProgressStyle,
) -> Result<FleetSummary, SimError> {
    if config.devices.is_empty() {
        return Err(SimError::NoDevices);
    }
    let mut bars = vec![("submitted", config.jobs), ("acknowledged", config.jobs)];
    if config.wait.is_some() {
        bars.push(("delivered", config.jobs));
    }
    let progress = Progress::start_bars(&bars, style);
    let counters = Bars {
        submitted: progress.counter_of(0),
        acknowledged: progress.counter_of(1),
    };
    let next = Arc::new(AtomicU64::new(0));
    let config = Arc::new(config);
    let mut lists = Vec::new();
    let mut outboxes = Vec::new();
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
        lists.push(servers);
        outboxes.push(outbox);
    }
    let (acked_tx, acked_rx) = mpsc::unbounded_channel::<Acknowledged>();
    let watcher = config.wait.map(|policy| {
        tokio::spawn(delivery::watch(
            lists.clone(),
            acked_rx,
            policy,
            progress.counter_of(2),
        ))
    });
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (index, (servers, outbox)) in lists.iter().cloned().zip(outboxes).enumerate() {
        let device = Device {
            index,
            name: config.devices[index].name.clone(),
            config: config.clone(),
            outbox,
            next: next.clone(),
            bars: counters.clone(),
            acked: config.wait.is_some().then(|| acked_tx.clone()),
            scanned_at: BTreeMap::new(),
            reports: Vec::new(),
            latencies: Latencies::new(),
            events_sent: 0,
        };
        tasks.push(tokio::spawn(async move {
            let client = FailoverClient::new(servers, device.config.failover);
            device.run(&client).await
        }));
    }
    drop(acked_tx);
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.expect("device task panicked"));
    }
    let elapsed = started.elapsed();
    let delivery = match watcher {
        Some(w) => Some(w.await.expect("delivery watcher panicked")),
        None => None,
    };
    progress.finish().await;

    let mut latencies = Latencies::new();
    let mut failover_times = Latencies::new();
    let mut failovers = BTreeMap::new();
    let (mut certificate_rejected, mut failbacks, mut resumed) = (0, 0, 0);
    let mut job_reports = Vec::new();
    let mut failover_ms = Vec::new();
    for r in results {
        latencies.merge(r.latencies);
        for t in r.failover_times {
            failover_times.record(t);
            failover_ms.push(t.as_secs_f64() * 1000.0);
        }
        resumed += r.resumed;
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
    let reconciliation = if config.reconcile {
        let device_of: BTreeMap<&str, usize> = config
            .devices
            .iter()
            .enumerate()
            .map(|(i, d)| (d.name.as_str(), i))
            .collect();
        let acknowledged: Vec<(Uuid, &ServerList)> = job_reports
            .iter()
            .filter(|r| matches!(r.outcome.as_str(), "acknowledged" | "replayed"))
            .filter_map(|r| Some((r.job_id, &lists[*device_of.get(r.device.as_str())?])))
            .collect();
        let (summary, checks) = reconcile::reconcile(&acknowledged, &config.delivered_dirs).await;
        for report in &mut job_reports {
            if let Some(check) = checks.get(&report.job_id) {
                report.on_servers = Some(check.on_servers.clone());
                report.files = check.files;
                report.verdict = Some(check.verdict.to_owned());
            }
        }
        Some(summary)
    } else {
        None
    };
    let count = |o: &str| job_reports.iter().filter(|j| j.outcome == o).count() as u64;
    let acknowledged = count("acknowledged") + count("replayed");
    Ok(FleetSummary {
        devices: config.devices.len(),
        jobs_asked: config.jobs,
        jobs_submitted: job_reports.len() as u64 - resumed,
        jobs_resumed: resumed,
        jobs_acknowledged: acknowledged,
        jobs_replayed: count("replayed"),
        jobs_rejected: count("rejected"),
        jobs_queued: count("queued"),
        failovers,
        certificate_rejected,
        failbacks,
        failover_latency: failover_times.summary(),
        failover_ms,
        ack_latency: latencies.summary(),
        elapsed_secs: elapsed.as_secs_f64(),
        jobs_per_second: per_second(acknowledged, elapsed),
        delivery,
        reconciliation,
        stopped: config.stop.load(Ordering::Relaxed),
        job_reports,
    })
}

/// One simulated device during a run.
struct Device {
    index: usize,
    name: String,
    config: Arc<FleetConfig>,
    outbox: Outbox,
    next: Arc<AtomicU64>,
    bars: Bars,
    /// Where acknowledged jobs go to be watched until delivered.
    acked: Option<mpsc::UnboundedSender<Acknowledged>>,
    scanned_at: BTreeMap<Uuid, Instant>,
    reports: Vec<JobReport>,
    latencies: Latencies,
    /// Client events already handed to the sink.
    events_sent: usize,
}

impl Device {
    async fn run(mut self, client: &FailoverClient) -> DeviceResult {
        let resumed = self.resume(client).await;
        let config = self.config.clone();
        let mut logged_in = false;
        let mut in_session = 0;
        while !self.config.stop.load(Ordering::Relaxed) {
            let seq = self.next.fetch_add(1, Ordering::Relaxed);
            if seq >= config.jobs {
                break;
            }
            if !logged_in {
                // A person comes to the device.
                if !self.login(client).await {
                    break;
                }
                (logged_in, in_session) = (true, 0);
            } else if !config.scan_interval.is_zero() {
                tokio::time::sleep(config.scan_interval).await;
            }
            in_session += 1;
            if !self.scan_and_deliver(client, seq).await {
                break;
            }
            if config.jobs_per_session > 0 && in_session >= config.jobs_per_session {
                // The person leaves: ending the session is what lets the
                // device fail back (R3).
                self.logout(client).await;
                logged_in = false;
            }
        }
        if logged_in {
            self.logout(client).await;
        }
        // Whatever is still queued goes out from the outbox, with the same ids.
        for round in 0..config.replay_rounds {
            if !self.reports.iter().any(|r| r.outcome == "queued") {
                break;
            }
            if round > 0 {
                tokio::time::sleep(config.retry_pause).await;
            }
            self.replay(client).await;
        }
        self.flush_events(client);
        DeviceResult {
            reports: self.reports,
            latencies: self.latencies,
            events: client.events().into_iter().map(|e| e.kind).collect(),
            failover_times: client.failover_times(),
            resumed,
        }
    }

    /// Sends what a previous run left in the outbox (a device that was
    /// switched off, or killed, with jobs queued), before anything new.
    async fn resume(&mut self, client: &FailoverClient) -> u64 {
        let reader = self.outbox.clone();
        let left = tokio::task::spawn_blocking(move || reader.pending())
            .await
            .expect("outbox read panicked")
            .map(|p| p.len())
            .unwrap_or(0);
        if left == 0 {
            return 0;
        }
        tracing::info!(
            device = self.name,
            jobs = left,
            "sending jobs left in the outbox"
        );
        self.replay(client).await;
        left as u64
    }

    /// Logs a person in, retrying a few times; false when no server took it.
    async fn login(&mut self, client: &FailoverClient) -> bool {
        let config = self.config.clone();
        for attempt in 0..config.replay_rounds.max(1) {
            if attempt > 0 {
                tokio::time::sleep(config.retry_pause).await;
            }
            let result = client.login(&config.user, &config.password).await;
            self.flush_events(client);
            match result {
                Ok(_) => return true,
                Err(e) => tracing::info!(device = self.name, error = %e, "login failed"),
            }
        }
        false
    }

    async fn logout(&mut self, client: &FailoverClient) {
        if let Err(e) = client.logout().await {
            tracing::debug!(device = self.name, error = %e, "logout failed");
        }
        self.flush_events(client);
    }

    /// Scans job number `seq` into the outbox and delivers it; false when
    /// the device cannot scan at all (a full outbox, say).
    async fn scan_and_deliver(&mut self, client: &FailoverClient, seq: u64) -> bool {
        let config = self.config.clone();
        let manifest = Manifest::new(config.workflow.clone(), config.pages.len())
            .with_metadata("sim.device", self.name.clone())
            .with_metadata("sim.seq", seq.to_string());
        let mut job = None;
        for attempt in 0..=config.replay_rounds {
            match client
                .scan(&self.outbox, &manifest, config.pages.clone())
                .await
            {
                Ok(j) => {
                    job = Some(j);
                    break;
                }
                // The session timed out while idle: the person logs in again.
                Err(RequestError::NoSession) if attempt < config.replay_rounds => {
                    if !self.login(client).await {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(device = self.name, error = %e, "scan refused");
                    break;
                }
            }
        }
        let Some(job) = job else {
            return false;
        };
        self.bars.submitted.inc();
        self.scanned_at.insert(job.job_id, Instant::now());
        let outcome = client.deliver(&self.outbox, &job).await;
        // The client's events (a failover on the way) go out before the
        // acknowledgement they led to, so the sink sees them in order.
        self.flush_events(client);
        self.record(job.job_id, outcome);
        true
    }

    async fn replay(&mut self, client: &FailoverClient) {
        let replayed = client.replay(&self.outbox).await;
        self.flush_events(client);
        let Ok(done) = replayed else {
            return;
        };
        for (job_id, outcome) in done {
            self.record(job_id, outcome);
        }
    }

    /// Hands the client's events recorded since the last call to the sink.
    fn flush_events(&mut self, client: &FailoverClient) {
        let events = client.events();
        if let Some(sink) = &self.config.events {
            for e in &events[self.events_sent.min(events.len())..] {
                sink.emit(&client_event_json(&self.name, e));
            }
        }
        self.events_sent = events.len();
    }

    fn record(&mut self, job_id: Uuid, outcome: Result<Delivery, RequestError>) {
        let device = self.name.clone();
        let report = match outcome {
            Ok(Delivery::Acknowledged(d)) => {
                let ack = self.scanned_at.get(&job_id).map(Instant::elapsed);
                if let Some(ack) = ack {
                    self.latencies.record(ack);
                }
                let known = self.reports.iter().any(|r| {
                    r.job_id == job_id && matches!(r.outcome.as_str(), "acknowledged" | "replayed")
                });
                if !known {
                    self.bars.acknowledged.inc();
                    if let Some(tx) = &self.acked {
                        let _ = tx.send(Acknowledged {
                            device: self.index,
                            job_id,
                            server: d.server_index,
                        });
                    }
                }
                if let Some(sink) = &self.config.events {
                    let now = Utc::now();
                    sink.emit(&json!({
                        "event": "acknowledged",
                        "device": device,
                        "at": now,
                        "at_unix_us": now.timestamp_micros(),
                        "job_id": job_id,
                        "server": d.server,
                        "server_index": d.server_index,
                        "replayed": d.replayed,
                        "ack_ms": ack.map(|a| a.as_secs_f64() * 1000.0),
                    }));
                }
                JobReport {
                    job_id,
                    device,
                    outcome: if d.replayed {
                        "replayed"
                    } else {
                        "acknowledged"
                    }
                    .to_owned(),
                    server: Some(d.server),
                    detail: None,
                    ack_ms: ack.map(|a| a.as_secs_f64() * 1000.0),
                    on_servers: None,
                    files: None,
                    verdict: None,
                }
            }
            Ok(Delivery::Rejected(r)) => {
                let code = r.code.unwrap_or_else(|| format!("http_{}", r.status));
                if let Some(sink) = &self.config.events {
                    let now = Utc::now();
                    sink.emit(&json!({
                        "event": "rejected",
                        "device": device,
                        "at": now,
                        "at_unix_us": now.timestamp_micros(),
                        "job_id": job_id,
                        "server": r.server,
                        "code": code,
                    }));
                }
                JobReport {
                    job_id,
                    device,
                    outcome: "rejected".to_owned(),
                    server: Some(r.server),
                    detail: Some(code),
                    ack_ms: None,
                    on_servers: None,
                    files: None,
                    verdict: None,
                }
            }
            Err(e) => JobReport {
                job_id,
                device,
                outcome: "queued".to_owned(),
                server: None,
                detail: Some(e.to_string()),
                ack_ms: None,
                on_servers: None,
                files: None,
                verdict: None,
            },
        };
        match self.reports.iter_mut().find(|r| r.job_id == job_id) {
            Some(existing) => *existing = report,
            None => self.reports.push(report),
        }
    }
}

/// A client event as a line of the event sink.
fn client_event_json(device: &str, e: &ClientEvent) -> Value {
    let mut v = serde_json::to_value(e).unwrap_or(Value::Null);
    if let Some(map) = v.as_object_mut() {
        map.insert("device".into(), json!(device));
        map.insert("at_unix_us".into(), json!(unix_us(e.at)));
    }
    v
}

fn unix_us(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}
