//! Owns the waiting phase of a simulation: polling each device's
//! acknowledged jobs until they are `done` or `failed` or the time is up. It
//! must not submit anything.

use std::{
    collections::BTreeMap,
    fmt,
    time::{Duration, Instant},
};

use serde::Serialize;
use uuid::Uuid;

use crate::{
    api::JobState,
    classify::classify_error,
    progress::{Counter, Progress, ProgressStyle},
    servers::ServerList,
    stats::{Latencies, LatencySummary},
};

/// How to wait for jobs to finish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitPolicy {
    /// Pause between two polling rounds of one device.
    pub poll_interval: Duration,
    /// When to stop waiting, from the start of the waiting phase.
    pub timeout: Duration,
}

/// What the waiting phase saw.
#[derive(Debug, Clone, Serialize)]
pub struct WaitSummary {
    /// Jobs that reached `done`.
    pub done: u64,
    /// Jobs that reached `failed` (dead-lettered).
    pub failed: u64,
    /// Jobs still `received` or `processing` when the time was up.
    pub unfinished: u64,
    /// Failed jobs by the gateway's reason.
    pub failed_reasons: BTreeMap<String, u64>,
    /// Processing time as the gateway recorded it, from `received_at` to
    /// `updated_at` of the final state, so polling granularity does not blur it.
    pub processing: LatencySummary,
    /// Wall time of the waiting phase.
    pub elapsed_seconds: f64,
}

impl fmt::Display for WaitSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "finished      {} done, {} failed, {} unfinished after {:.1} s",
            self.done, self.failed, self.unfinished, self.elapsed_seconds
        )?;
        for (reason, n) in &self.failed_reasons {
            writeln!(f, "  failed      {n} × {reason}")?;
        }
        writeln!(f, "processing    {}", self.processing.describe())
    }
}

#[derive(Default)]
struct Tally {
    done: u64,
    failed: u64,
    unfinished: u64,
    failed_reasons: BTreeMap<String, u64>,
    processing: Latencies,
}

/// Waits for every device's jobs; each entry is a device's servers, the
/// server it used last, and its acknowledged job ids.
pub(super) async fn wait_for_jobs(
    devices: Vec<(ServerList, usize, Vec<Uuid>)>,
    policy: WaitPolicy,
    style: ProgressStyle,
) -> WaitSummary {
    let total = devices.iter().map(|d| d.2.len() as u64).sum();
    let progress = Progress::start("finished", total, style);
    let started = Instant::now();
    let deadline = started + policy.timeout;
    let tasks: Vec<_> = devices
        .into_iter()
        .map(|(servers, current, jobs)| {
            tokio::spawn(wait_device(
                servers,
                current,
                jobs,
                policy,
                deadline,
                progress.counter(),
            ))
        })
        .collect();
    let mut all = Tally::default();
    for task in tasks {
        let t = task.await.expect("waiting task panicked");
        all.done += t.done;
        all.failed += t.failed;
        all.unfinished += t.unfinished;
        for (k, v) in t.failed_reasons {
            *all.failed_reasons.entry(k).or_default() += v;
        }
        all.processing.merge(t.processing);
    }
    progress.finish().await;
    WaitSummary {
        done: all.done,
        failed: all.failed,
        unfinished: all.unfinished,
        failed_reasons: all.failed_reasons,
        processing: all.processing.summary(),
        elapsed_seconds: started.elapsed().as_secs_f64(),
    }
}

async fn wait_device(
    servers: ServerList,
    mut current: usize,
    mut pending: Vec<Uuid>,
    policy: WaitPolicy,
    deadline: Instant,
    finished: Counter,
) -> Tally {
    let mut tally = Tally::default();
    while !pending.is_empty() && Instant::now() < deadline {
        let client = servers.get(current).expect("current server is in the list");
        let mut still = Vec::with_capacity(pending.len());
        let mut switch = false;
        for job_id in pending {
            if switch || Instant::now() >= deadline {
                still.push(job_id);
                continue;
            }
            match client.job(job_id).await {
                Ok(status) if status.state.is_terminal() => {
                    finished.inc();
                    let took = (status.updated_at - status.received_at)
                        .to_std()
                        .unwrap_or_default();
                    tally.processing.record(took);
                    if status.state == JobState::Done {
                        tally.done += 1;
                    } else {
                        tally.failed += 1;
                        let reason = status
                            .reason
                            .unwrap_or_else(|| "no reason given".to_owned());
                        *tally
                            .failed_reasons
                            .entry(reason.chars().take(120).collect())
                            .or_default() += 1;
                    }
                }
                Ok(_) => still.push(job_id),
                Err(e) => {
                    // A job the other server has not heard of yet answers
                    // 404; keep asking. A failover cause means this server
                    // is gone for now: ask the next accepting one.
                    still.push(job_id);
                    if classify_error(&e).cause().is_some() {
                        switch = true;
                    }
                }
            }
        }
        pending = still;
        if switch
            && servers.len() > 1
            && let Ok(found) = servers.first_accepting().await
        {
            current = found.index;
        }
        if !pending.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            tokio::time::sleep(policy.poll_interval.min(left)).await;
        }
    }
    tally.unfinished = pending.len() as u64;
    tally
}
