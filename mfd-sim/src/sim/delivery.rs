//! Owns the fleet's watch over acknowledged jobs until they are delivered:
//! each job is asked for on every server of its device's list (the job's
//! state follows every copy across the pair, and the server that took it
//! may be gone) until one says `done` or `failed`, while the devices are
//! still scanning and then until the wait's timeout. It must not submit
//! anything or decide what counts as lost (`reconcile` does).

use std::{collections::BTreeMap, fmt, time::Instant};

use serde::Serialize;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::{api::JobState, progress::Counter, servers::ServerList};

use super::WaitPolicy;

/// A job a server acknowledged, to be watched until delivered.
#[derive(Debug, Clone, Copy)]
pub(super) struct Acknowledged {
    /// The device's position in the run (its server list).
    pub(super) device: usize,
    /// The job.
    pub(super) job_id: Uuid,
    /// The server that acknowledged it: asked first.
    pub(super) server: usize,
}

/// What the watch saw.
#[derive(Debug, Clone, Serialize)]
pub struct DeliverySummary {
    /// Jobs some server reported `done`.
    pub done: u64,
    /// Jobs some server reported `failed` (dead-lettered).
    pub failed: u64,
    /// Jobs no server reported finished when the time was up.
    pub unfinished: u64,
    /// Failed jobs by the server's reason.
    pub failed_reasons: BTreeMap<String, u64>,
    /// From the end of the scans to the end of the watch.
    pub waited_secs: f64,
}

impl fmt::Display for DeliverySummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "finished      {} done, {} failed, {} unfinished ({:.1} s after the last scan)",
            self.done, self.failed, self.unfinished, self.waited_secs
        )?;
        for (reason, n) in &self.failed_reasons {
            writeln!(f, "  failed      {n} × {reason}")?;
        }
        Ok(())
    }
}

/// Watches the jobs that arrive on `acknowledged` until each is finished, or
/// until `policy.timeout` after the channel closed (the devices are done).
pub(super) async fn watch(
    lists: Vec<ServerList>,
    mut acknowledged: mpsc::UnboundedReceiver<Acknowledged>,
    policy: WaitPolicy,
    delivered: Counter,
) -> DeliverySummary {
    let mut pending: Vec<Acknowledged> = Vec::new();
    let (mut done, mut failed) = (0, 0);
    let mut failed_reasons = BTreeMap::new();
    let mut scans_ended: Option<Instant> = None;
    loop {
        // Take what was acknowledged since the last round.
        loop {
            match acknowledged.try_recv() {
                Ok(job) => pending.push(job),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    scans_ended.get_or_insert_with(Instant::now);
                    break;
                }
            }
        }
        let mut still = Vec::with_capacity(pending.len());
        for job in pending {
            match finished_state(&lists[job.device], job).await {
                Some((JobState::Done, _)) => {
                    done += 1;
                    delivered.inc();
                }
                Some((_, reason)) => {
                    failed += 1;
                    let reason = reason.unwrap_or_else(|| "no reason given".to_owned());
                    *failed_reasons
                        .entry(reason.chars().take(120).collect::<String>())
                        .or_default() += 1;
                }
                None => still.push(job),
            }
        }
        pending = still;
        if let Some(ended) = scans_ended
            && (pending.is_empty() || ended.elapsed() >= policy.timeout)
        {
            return DeliverySummary {
                done,
                failed,
                unfinished: pending.len() as u64,
                failed_reasons,
                waited_secs: ended.elapsed().as_secs_f64(),
            };
        }
        // Jobs acknowledged meanwhile join the next round; the end of the
        // scans ends the pause, so the last jobs are not kept waiting.
        let pause = tokio::time::sleep(policy.poll_interval);
        tokio::pin!(pause);
        while scans_ended.is_none() {
            tokio::select! {
                _ = &mut pause => break,
                job = acknowledged.recv() => match job {
                    Some(job) => pending.push(job),
                    None => scans_ended = Some(Instant::now()),
                },
            }
        }
        if scans_ended.is_some() && !pending.is_empty() {
            pause.await;
        }
    }
}

/// The job's final state and reason: `done` when any server of the list
/// says so (a copy another server superseded may say otherwise), else
/// `failed` when one says that; `None` while none reports it finished.
async fn finished_state(
    servers: &ServerList,
    job: Acknowledged,
) -> Option<(JobState, Option<String>)> {
    // The server that acknowledged it first, then the others in order.
    let order = std::iter::once(job.server).chain((0..servers.len()).filter(|&i| i != job.server));
    let mut failed = None;
    for index in order {
        let Some(client) = servers.get(index) else {
            continue;
        };
        match client.job(job.job_id).await {
            Ok(status) if status.state == JobState::Done => return Some((JobState::Done, None)),
            Ok(status) if status.state == JobState::Failed => {
                failed = Some((JobState::Failed, status.reason));
            }
            _ => {}
        }
    }
    failed
}
