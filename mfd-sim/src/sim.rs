//! Owns the simulation of many devices: each logs a user in, submits jobs
//! under ids it chooses itself, retries a job under the same id after a
//! connection failure or a `503`, moves to the next server on a failover
//! cause, optionally waits for its jobs to finish, and reports what happened.
//! It must not print (the binary does) or speak HTTP itself (`client` does).

use std::{
    collections::BTreeMap,
    fmt,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use uuid::Uuid;

use crate::{
    classify::{Classification, classify_error},
    error::ClientError,
    multipart::{Manifest, MultipartForm, Page},
    progress::{Counter, Progress, ProgressStyle},
    servers::ServerList,
    stats::{Latencies, LatencySummary, megabytes_per_second, per_second},
};

mod delivery;
pub mod fleet;
pub mod reconcile;
mod wait;

pub use delivery::DeliverySummary;
pub use wait::{WaitPolicy, WaitSummary};

/// One simulated device, as listed in the devices file
/// (`[{"name": "mfd-1", "token": "…"}]`).
#[derive(Clone, Deserialize)]
pub struct DeviceCredentials {
    /// The device's name.
    pub name: String,
    /// Its device token.
    pub token: String,
}

impl fmt::Debug for DeviceCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceCredentials")
            .field("name", &self.name)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// How often and how patiently one job is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Upload attempts per job, the first included; at least 1.
    pub max_attempts: u32,
    /// The pause after the first failed attempt; it doubles per attempt.
    pub first_delay: Duration,
    /// No pause is longer, whatever `Retry-After` says.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 6,
            first_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// The pause after failed attempt number `attempt` (from 1): the server's
    /// `Retry-After` when it gave one, else exponential back-off; capped.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let backoff = || {
            let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(20));
            self.first_delay.saturating_mul(factor)
        };
        retry_after.unwrap_or_else(backoff).min(self.max_delay)
    }
}

/// Everything one simulation run needs, already validated.
#[derive(Debug, Clone)]
pub struct SimConfig {
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
    /// How many devices submit at the same time.
    pub concurrency: usize,
    /// Retries of one job.
    pub retry: RetryPolicy,
    /// Whether and how long to wait for jobs to finish.
    pub wait: Option<WaitPolicy>,
}

/// A run could not start.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The devices file lists no device.
    #[error(
        "no devices to simulate; the devices file must list at least one {{\"name\", \"token\"}}"
    )]
    NoDevices,
    /// A device's outbox cannot be opened.
    #[error("device `{device}`: {source}")]
    Outbox {
        /// The device's name.
        device: String,
        /// What is wrong.
        #[source]
        source: crate::outbox::OutboxError,
    },
    /// A device's token cannot be used.
    #[error("device `{device}`: {source}")]
    Device {
        /// The device's name.
        device: String,
        /// What is wrong.
        #[source]
        source: ClientError,
    },
}

/// What a run did.
#[derive(Debug, Clone, Serialize)]
pub struct SimSummary {
    /// Devices simulated.
    pub devices: usize,
    /// Jobs asked for.
    pub jobs: u64,
    /// Jobs for which at least one upload was attempted.
    pub submitted: u64,
    /// Jobs the gateway acknowledged (`201` or `200`).
    pub acknowledged: u64,
    /// Of those, acknowledged as a replay (`200`): an earlier attempt of the
    /// same job id had been stored although its answer was lost.
    pub replayed: u64,
    /// Jobs given up after their attempts.
    pub failed: u64,
    /// Failed jobs by the last error's code (the API's `code`, `http_<status>`,
    /// or the failover cause for connection failures).
    pub failed_by_code: BTreeMap<String, u64>,
    /// Upload attempts in total (logins not counted).
    pub attempts: u64,
    /// Times a device moved to another server.
    pub failovers: u64,
    /// Failover causes seen, per cause (R1: the device records them).
    pub causes_seen: BTreeMap<String, u64>,
    /// Page bytes of the acknowledged jobs.
    pub page_bytes: u64,
    /// Wall time of the submission phase.
    pub elapsed_seconds: f64,
    /// Acknowledged jobs per second.
    pub jobs_per_second: f64,
    /// Acknowledged page megabytes (10^6 bytes) per second.
    pub megabytes_per_second: f64,
    /// From a job's first attempt to its acknowledgement.
    pub latency: LatencySummary,
    /// The waiting phase, with `--wait`.
    pub wait: Option<WaitSummary>,
}

impl SimSummary {
    /// True when every job was acknowledged and, if waited for, is `done`.
    pub fn all_succeeded(&self) -> bool {
        self.acknowledged == self.jobs
            && self
                .wait
                .as_ref()
                .is_none_or(|w| w.done == self.acknowledged)
    }
}

impl fmt::Display for SimSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "devices       {}", self.devices)?;
        writeln!(
            f,
            "jobs          {} asked, {} submitted, {} acknowledged ({} replayed), {} failed",
            self.jobs, self.submitted, self.acknowledged, self.replayed, self.failed
        )?;
        for (code, n) in &self.failed_by_code {
            writeln!(f, "  failed      {n} × {code}")?;
        }
        writeln!(
            f,
            "attempts      {} (failovers {})",
            self.attempts, self.failovers
        )?;
        for (cause, n) in &self.causes_seen {
            writeln!(f, "  cause seen  {n} × {cause}")?;
        }
        writeln!(
            f,
            "throughput    {:.1} jobs/s, {:.2} MB/s over {:.2} s",
            self.jobs_per_second, self.megabytes_per_second, self.elapsed_seconds
        )?;
        writeln!(f, "latency       {}", self.latency.describe())?;
        if let Some(w) = &self.wait {
            write!(f, "{w}")?;
        }
        Ok(())
    }
}

/// What the devices share during a run.
struct Shared {
    config: SimConfig,
    next_job: AtomicU64,
    permits: Semaphore,
    done: Counter,
}

/// One device's state and tallies.
struct Device {
    name: String,
    servers: ServerList,
    current: usize,
    session: Option<String>,
    /// Set when the device cannot go on (revoked, wrong password…); its
    /// remaining share of jobs goes to the other devices.
    stopped: Option<String>,
    report: DeviceReport,
}

#[derive(Default)]
struct DeviceReport {
    submitted: u64,
    acknowledged: Vec<Uuid>,
    replayed: u64,
    failed_by_code: BTreeMap<String, u64>,
    attempts: u64,
    failovers: u64,
    causes_seen: BTreeMap<String, u64>,
    page_bytes: u64,
    latencies: Latencies,
}

/// What to do after a failed attempt.
enum Next {
    /// Try again at once (on another server that just said it accepts).
    RetryNow,
    /// Try again after the back-off pause.
    RetryLater,
    /// Stop trying this job.
    GiveUp,
}

/// Runs the simulation and returns its summary.
pub async fn run(config: SimConfig, style: ProgressStyle) -> Result<SimSummary, SimError> {
    if config.devices.is_empty() {
        return Err(SimError::NoDevices);
    }
    let mut devices = Vec::with_capacity(config.devices.len());
    for d in &config.devices {
        let servers = config
            .servers
            .with_token(&d.token)
            .map_err(|source| SimError::Device {
                device: d.name.clone(),
                source,
            })?;
        devices.push(Device {
            name: d.name.clone(),
            servers,
            current: 0,
            session: None,
            stopped: None,
            report: DeviceReport::default(),
        });
    }
    let progress = Progress::start("jobs", config.jobs, style);
    let shared = Arc::new(Shared {
        next_job: AtomicU64::new(0),
        permits: Semaphore::new(config.concurrency.max(1)),
        done: progress.counter(),
        config,
    });
    let started = Instant::now();
    let tasks: Vec<_> = devices
        .into_iter()
        .map(|device| tokio::spawn(submit_all(device, shared.clone())))
        .collect();
    let mut devices = Vec::with_capacity(tasks.len());
    for task in tasks {
        // A panicking device task is a defect; surface it rather than
        // silently counting its jobs as missing.
        devices.push(task.await.expect("device task panicked"));
    }
    let elapsed = started.elapsed();
    progress.finish().await;

    let config = &shared.config;
    let mut latencies = Latencies::new();
    let mut failed_by_code = BTreeMap::new();
    let mut causes_seen = BTreeMap::new();
    let (
        mut submitted,
        mut acknowledged,
        mut replayed,
        mut attempts,
        mut failovers,
        mut page_bytes,
    ) = (0, 0, 0, 0, 0, 0);
    for d in &mut devices {
        let r = &mut d.report;
        latencies.merge(std::mem::take(&mut r.latencies));
        submitted += r.submitted;
        acknowledged += r.acknowledged.len() as u64;
        replayed += r.replayed;
        attempts += r.attempts;
        failovers += r.failovers;
        page_bytes += r.page_bytes;
        merge_counts(&mut failed_by_code, &r.failed_by_code);
        merge_counts(&mut causes_seen, &r.causes_seen);
    }
    let mut summary = SimSummary {
        devices: devices.len(),
        jobs: config.jobs,
        submitted,
        acknowledged,
        replayed,
        failed: failed_by_code.values().sum(),
        failed_by_code,
        attempts,
        failovers,
        causes_seen,
        page_bytes,
        elapsed_seconds: elapsed.as_secs_f64(),
        jobs_per_second: per_second(acknowledged, elapsed),
        megabytes_per_second: megabytes_per_second(page_bytes, elapsed),
        latency: latencies.summary(),
        wait: None,
    };

    if let Some(policy) = config.wait {
        let pending = devices
            .into_iter()
            .map(|d| (d.servers, d.current, d.report.acknowledged))
            .collect();
        summary.wait = Some(wait::wait_for_jobs(pending, policy, style).await);
    }
    Ok(summary)
}

fn merge_counts(into: &mut BTreeMap<String, u64>, from: &BTreeMap<String, u64>) {
    for (k, v) in from {
        *into.entry(k.clone()).or_default() += v;
    }
}

/// One device's submission phase: take the next job number until all are
/// taken or the device cannot go on.
async fn submit_all(mut device: Device, shared: Arc<Shared>) -> Device {
    let config = &shared.config;
    while device.stopped.is_none() {
        let seq = shared.next_job.fetch_add(1, Ordering::Relaxed);
        if seq >= config.jobs {
            break;
        }
        let Ok(_permit) = shared.permits.acquire().await else {
            break;
        };
        device.submit_one(config, seq).await;
        shared.done.inc();
    }
    if let (Some(session), Some(client)) =
        (device.session.take(), device.servers.get(device.current))
    {
        // Ending the session is what lets a device fail back (R3); a failure
        // here changes nothing for the jobs, so it is only logged.
        if let Err(e) = client.logout(&session).await {
            tracing::debug!(device = %device.name, error = %e, "logout failed");
        }
    }
    device
}

impl Device {
    /// Submits one job, retrying under the same job id, and records the
    /// outcome. A new id is never chosen for a retry: if an earlier attempt
    /// was stored but its answer lost, the same id makes the gateway answer
    /// with the original acknowledgement instead of storing the job twice.
    async fn submit_one(&mut self, config: &SimConfig, seq: u64) {
        let job_id = Uuid::new_v4();
        let manifest = Manifest::new(config.workflow.clone(), config.pages.len())
            .with_metadata("sim.device", self.name.clone())
            .with_metadata("sim.seq", seq.to_string());
        self.report.submitted += 1;
        let form = match MultipartForm::job(&manifest, &config.pages) {
            Ok(form) => form,
            Err(e) => {
                tracing::warn!(device = %self.name, error = %e, "cannot build the upload");
                *self
                    .report
                    .failed_by_code
                    .entry("local".to_owned())
                    .or_default() += 1;
                return;
            }
        };
        let started = Instant::now();
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.report.attempts += 1;
            match self.attempt(config, job_id, &form).await {
                Ok(submitted) => {
                    self.report.latencies.record(started.elapsed());
                    self.report.acknowledged.push(job_id);
                    self.report.replayed += u64::from(submitted.replayed);
                    self.report.page_bytes += config.pages.iter().map(Page::len).sum::<u64>();
                    return;
                }
                Err(error) => {
                    let code = failure_code(&error);
                    tracing::info!(device = %self.name, %job_id, attempt, %error, "attempt failed");
                    let may_retry = attempt < config.retry.max_attempts;
                    match self.after_failure(&error, may_retry).await {
                        Next::RetryNow if may_retry => {}
                        Next::RetryLater if may_retry => {
                            let retry_after = error.http().and_then(|h| h.retry_after);
                            tokio::time::sleep(config.retry.delay(attempt, retry_after)).await;
                        }
                        _ => {
                            *self.report.failed_by_code.entry(code).or_default() += 1;
                            return;
                        }
                    }
                }
            }
        }
    }

    /// One attempt: log in if there is no session yet, then upload.
    async fn attempt(
        &mut self,
        config: &SimConfig,
        job_id: Uuid,
        form: &MultipartForm,
    ) -> Result<crate::api::Submitted, ClientError> {
        let client = self
            .servers
            .get(self.current)
            .expect("current server is in the list");
        let session = match &self.session {
            Some(s) => s.clone(),
            None => {
                let s = client.login(&config.user, &config.password).await?.session;
                self.session = Some(s.clone());
                s
            }
        };
        client.submit_form(job_id, &session, form).await
    }

    /// Decides about the next attempt and, when one may follow, moves to
    /// another server if the failure is a failover cause. The session is kept
    /// across servers: the pair shares the session key (R2).
    async fn after_failure(&mut self, error: &ClientError, may_retry: bool) -> Next {
        match classify_error(error) {
            Classification::Failover(cause) => {
                *self
                    .report
                    .causes_seen
                    .entry(cause.as_str().to_owned())
                    .or_default() += 1;
                if may_retry && self.servers.len() > 1 {
                    match self.servers.first_accepting().await {
                        Ok(found) if found.index != self.current => {
                            tracing::info!(device = %self.name, from = self.current, to = found.index, %cause, "failing over");
                            self.current = found.index;
                            self.report.failovers += 1;
                            // The other server accepts right now: no pause.
                            return Next::RetryNow;
                        }
                        Ok(_) => {}
                        Err(none) => tracing::info!(device = %self.name, "{none}"),
                    }
                }
                Next::RetryLater
            }
            // Not one of the four causes: this server's certificate is
            // refused, so another server is tried without counting a cause.
            Classification::CertificateRejected => {
                *self
                    .report
                    .causes_seen
                    .entry("certificate_rejected".to_owned())
                    .or_default() += 1;
                if may_retry && self.servers.len() > 1 {
                    let next = (self.current + 1) % self.servers.len();
                    self.current = next;
                    return Next::RetryNow;
                }
                Next::GiveUp
            }
            Classification::RetrySameServer | Classification::ServerError => Next::RetryLater,
            Classification::NotFailover => {
                let Some(http) = error.http() else {
                    return Next::GiveUp;
                };
                match http.code.as_deref() {
                    // Another upload of this very job is still streaming
                    // (an earlier attempt the device gave up on); it will
                    // finish or fail, and then the retry gets the answer.
                    Some("upload_in_progress") => Next::RetryLater,
                    Some("session_missing" | "session_invalid" | "session_expired") => {
                        self.session = None;
                        Next::RetryLater
                    }
                    Some(
                        code @ ("bad_credentials"
                        | "device_token_missing"
                        | "device_token_invalid"
                        | "device_pending"
                        | "device_revoked"
                        | "seat_limit"
                        | "rate_limited"),
                    ) => {
                        tracing::warn!(device = %self.name, code, "device stops submitting");
                        self.stopped = Some(code.to_owned());
                        Next::GiveUp
                    }
                    _ => Next::GiveUp,
                }
            }
        }
    }
}

/// The code a failed job is counted under.
fn failure_code(error: &ClientError) -> String {
    if let Some(http) = error.http() {
        return http
            .code
            .clone()
            .unwrap_or_else(|| format!("http_{}", http.status.as_u16()));
    }
    match classify_error(error) {
        Classification::Failover(cause) => cause.as_str().to_owned(),
        Classification::CertificateRejected => "certificate_rejected".to_owned(),
        Classification::RetrySameServer
        | Classification::ServerError
        | Classification::NotFailover => "local".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_back_off_and_respect_retry_after_up_to_the_cap() {
        let p = RetryPolicy {
            max_attempts: 5,
            first_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        };
        assert_eq!(p.delay(1, None), Duration::from_millis(100));
        assert_eq!(p.delay(3, None), Duration::from_millis(400));
        assert_eq!(p.delay(9, None), Duration::from_secs(1));
        assert_eq!(
            p.delay(1, Some(Duration::from_millis(300))),
            Duration::from_millis(300)
        );
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(60))),
            Duration::from_secs(1)
        );
        assert_eq!(p.delay(u32::MAX, None), Duration::from_secs(1));
    }

    #[test]
    fn devices_file_parses_and_hides_tokens() {
        let d: Vec<DeviceCredentials> =
            serde_json::from_str(r#"[{"name": "mfd-1", "token": "t0ken"}]"#).unwrap();
        assert_eq!(d[0].name, "mfd-1");
        assert!(!format!("{d:?}").contains("t0ken"));
    }
}
