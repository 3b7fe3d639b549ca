//! The driver's job-ownership side: taking over a silent peer's jobs when
//! the protocol says its lease is over, announcing those takeovers until
//! the peer applied them, applying the peer's takeovers of this server's
//! jobs, and the handover of a clean stop (running steps finish, the jobs
//! go to the LIVE peer, and only then is the stop announced). Each is
//! recorded as a pair event, logged and sent to admins. Also the warning
//! about workflows that deliver into each server's own folder.

use std::time::{Duration, Instant};

use pair_core::{Epoch, Input, Liveness, ServerId};
use tokio::sync::oneshot;
use uuid::Uuid;

use super::Driver;
use crate::pair::wire::Wire;
use crate::store::job_owners::TakenJob;

/// A clean stop under way.
pub(super) struct Stopping {
    pub reply: oneshot::Sender<()>,
    pub phase: StopPhase,
    pub deadline: Instant,
}

pub(super) enum StopPhase {
    /// No step starts; running ones finish; copies still on their way to
    /// the peer arrive.
    Draining,
    /// The jobs were handed over; waiting for the peer to take them.
    Handing(Vec<Uuid>),
}

impl Driver {
    fn peer_name(&self) -> String {
        self.peer
            .as_ref()
            .map_or_else(|| "the peer".to_owned(), |p| p.instance.clone())
    }

    /// Tells admins: log, the pair events history, a notice.
    async fn tell(&self, kind: &'static str, job: Option<Uuid>, text: String) {
        tracing::warn!(event = kind, "{text}");
        self.core.metrics.pair_event(kind);
        let (peer, detail, now) = (self.peer_name(), text.clone(), self.core.clock.now());
        let recorded = self
            .core
            .data
            .run(move |s| s.record_pair_event(now, kind, job, Some(&peer), &detail))
            .await;
        if let Err(e) = recorded {
            tracing::error!(error = %e, event = kind, "the event could not be recorded");
        }
        crate::pair::notify::send(&self.core, kind, text);
    }

    /// Warns (once per change) about workflows that deliver into each
    /// server's own `{data_dir}` folder while paired.
    pub(super) fn check_per_server_folders(&self) {
        let folders = self
            .core
            .config
            .current()
            .map(|c| c.per_server_folders.clone())
            .unwrap_or_default();
        let mut status = self.status.write().unwrap_or_else(|p| p.into_inner());
        if status.jobs.per_server_folders != folders {
            if !folders.is_empty() {
                tracing::warn!(
                    workflows = folders.join(","),
                    "these workflows deliver into each server's own {{data_dir}} folder: a job the peer takes over lands in the peer's folder, and a second copy is not refused across the pair; point `root` at a folder both servers share"
                );
            }
            status.jobs.per_server_folders = folders;
        }
    }

    /// Seed 001, on DEAD: the survivor starts the work. The protocol has
    /// persisted takeover `count`; the peer's unfinished jobs held here
    /// move to this server in one transaction.
    pub(super) async fn take_over(&mut self, from: ServerId, count: u64, epoch: Epoch) {
        let (me, now, peer) = (self.me, self.core.clock.now(), self.peer_name());
        let taken = {
            let peer = peer.clone();
            self.core
                .data
                .run(move |s| {
                    let taken = s.take_over_jobs(
                        me,
                        from,
                        count,
                        epoch,
                        now,
                        crate::ownership::DELIVERY_PLUGINS,
                    )?;
                    crate::ownership::report_repeated_deliveries(
                        s,
                        &taken.in_flight,
                        Some(&peer),
                        &format!("was running on {peer} when it went silent"),
                        now,
                    )?;
                    Ok(taken)
                })
                .await
        };
        match taken {
            Ok(taken) if taken.jobs.is_empty() => {
                tracing::info!(
                    count,
                    "{peer} is silent and its lease is over; it owned no unfinished job held here"
                );
            }
            Ok(taken) => {
                let text = format!(
                    "{me_name} took over {n} unfinished job(s) of {peer}, silent and its lease over (takeover {count} at epoch {epoch}); {me_name} processes them and stops taking over when {peer} is LIVE again",
                    me_name = self.core.name(),
                    n = taken.jobs.len(),
                    epoch = epoch.number,
                );
                self.tell("takeover", None, text).await;
                self.core.job_ready.notify_waiters();
            }
            Err(e) => {
                tracing::error!(error = %e, count, "the silent peer's jobs could not be taken over; they stay with it");
            }
        }
    }

    /// The peer has not applied every takeover of its jobs: it gets the
    /// whole list (it applies only what it holds in a lower term).
    pub(super) async fn announce_takeovers(&mut self, count: u64) {
        let Some(peer) = self.peer.as_ref().map(|p| p.server) else {
            return;
        };
        let me = self.me;
        match self
            .core
            .data
            .run(move |s| s.takeovers_for_peer(me, peer))
            .await
        {
            Ok(jobs) => self.send_wire(&Wire::TakenOver { count, jobs }),
            Err(e) => tracing::error!(error = %e, "the takeovers could not be read for the peer"),
        }
    }

    /// The peer took over jobs of this server while it was silent: they
    /// are the peer's from now on and never run here. A step this server
    /// ran that the peer also runs is a possible duplicate, reported.
    pub(super) async fn on_taken_over(&mut self, count: u64, jobs: Vec<TakenJob>) {
        let Some(taker) = self.peer.as_ref().map(|p| p.server) else {
            return;
        };
        let (now, peer) = (self.core.clock.now(), self.peer_name());
        let applied = {
            let peer = peer.clone();
            self.core
                .data
                .run(move |s| {
                    let applied = s.apply_takeovers(taker, &jobs)?;
                    let both: Vec<_> = applied
                        .both_ran
                        .iter()
                        .filter(|(_, _, p)| crate::ownership::is_delivery(p))
                        .cloned()
                        .collect();
                    for (job, _, _) in &both {
                        s.record_both_delivered(*job, taker)?;
                    }
                    crate::ownership::report_repeated_deliveries(
                        s,
                        &both,
                        Some(&peer),
                        &format!("ran here and also on {peer}, which had taken the job over"),
                        now,
                    )?;
                    Ok(applied)
                })
                .await
        };
        match applied {
            Ok(applied) => {
                if !applied.moved.is_empty() {
                    let text = format!(
                        "{peer} took over {} job(s) of {} while it was unreachable; they are {peer}'s now and are not processed here",
                        applied.moved.len(),
                        self.core.name()
                    );
                    self.tell("taken_over", None, text).await;
                }
                let outputs = self
                    .node
                    .step(self.now_ms(), Input::TakeoversApplied { count });
                self.carry_out(outputs).await;
            }
            Err(e) => {
                tracing::error!(error = %e, "the peer's takeovers could not be applied; no lease until they are")
            }
        }
    }

    /// A clean stop: with a LIVE peer, first hand the work over; without
    /// one, announce the stop at once.
    pub(super) fn begin_stop(&mut self, reply: oneshot::Sender<()>) -> Option<oneshot::Sender<()>> {
        let live = self.link.is_some() && self.node.liveness() == Liveness::Live;
        if !live {
            return Some(reply);
        }
        tracing::info!(
            drain_secs = self.settings.handover_drain_secs,
            "clean stop: running steps finish, then the jobs go to the peer"
        );
        self.core.ownership.set_draining(true);
        self.stopping = Some(Stopping {
            reply,
            phase: StopPhase::Draining,
            deadline: Instant::now() + Duration::from_secs(self.settings.handover_drain_secs),
        });
        None
    }

    /// Moves a clean stop on; returns the reply once the stop may be
    /// announced.
    pub(super) async fn advance_stop(&mut self) -> Option<oneshot::Sender<()>> {
        let stopping = self.stopping.as_mut()?;
        let me = self.me;
        let over = Instant::now() >= stopping.deadline;
        match &stopping.phase {
            StopPhase::Draining => {
                let busy = self
                    .core
                    .data
                    .run(move |s| Ok(s.processing_count(me)? + s.count_unreplicated(me)?))
                    .await
                    .unwrap_or(0);
                let half =
                    stopping.deadline - Duration::from_secs(self.settings.handover_drain_secs) / 2;
                if busy > 0 && Instant::now() < half {
                    return None;
                }
                let (Some(peer), true) =
                    (self.peer.as_ref().map(|p| p.server), self.link.is_some())
                else {
                    // No peer to take them: the jobs stay here for the
                    // restart.
                    return self.stopping.take().map(|s| s.reply);
                };
                let now = self.core.clock.now();
                let name = self.peer_name();
                let handed = self
                    .core
                    .data
                    .run(move |s| {
                        let handed = s.hand_over_jobs(me, peer, now)?;
                        crate::ownership::report_repeated_deliveries(
                            s,
                            &handed.in_flight,
                            Some(&name),
                            "was cut short by the clean stop and was handed to the peer",
                            now,
                        )?;
                        Ok(handed)
                    })
                    .await;
                match handed {
                    Ok(handed) => {
                        if !handed.jobs.is_empty() {
                            let text = format!(
                                "{} stops cleanly and handed {} unfinished job(s) to {}",
                                self.core.name(),
                                handed.jobs.len(),
                                self.peer_name()
                            );
                            self.tell("handover", None, text).await;
                        }
                        self.core.peer_acks.wake_stream();
                        if let Some(s) = self.stopping.as_mut() {
                            s.phase = StopPhase::Handing(handed.jobs);
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "the jobs could not be handed over; they stay here until the restart");
                        return self.stopping.take().map(|s| s.reply);
                    }
                }
                None
            }
            StopPhase::Handing(jobs) => {
                let jobs = jobs.clone();
                let left = self
                    .core
                    .data
                    .run(move |s| s.unacknowledged(&jobs))
                    .await
                    .unwrap_or(0);
                if left > 0 && !over && self.link.is_some() {
                    return None;
                }
                if left > 0 {
                    tracing::warn!(
                        jobs = left,
                        "the peer has not confirmed every job handed to it; it learns of them when the link is back"
                    );
                }
                self.stopping.take().map(|s| s.reply)
            }
        }
    }
}
