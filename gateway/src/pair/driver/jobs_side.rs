//! The driver's jobs side of the link: the frames of the job replication
//! stream, the peer's questions about job ids, logouts and OCR pages are
//! passed to the tasks that own them (`pair::jobs`, `pair::ocr`, and here
//! [`settle_loop`], which records the peer's answers); ended sessions are
//! exchanged on each new connection.
//!
//! Nothing here waits for the database on the driver's own task: a store
//! slowed by a backlog of work must never hold up heartbeats.

use std::sync::Arc;

use pair_core::ServerId;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::Driver;
use crate::core::Core;
use crate::pair::jobs::{Answer, LinkSlot};
use crate::pair::wire::Wire;
use crate::pair::{duplicates, frame, jobs, ocr};
use crate::peer_ack::{EndedSession, KnownJob};

/// Answers and questions of the peer that the store must record or answer,
/// handled in order by [`settle_loop`].
pub enum Settle {
    /// The peer stored its copy of a job this server accepted.
    Stored(Uuid),
    /// The peer stored a job's news up to a revision.
    NewsStored(Uuid, u64),
    /// The peer asks whether this server holds a job id.
    Query(Uuid),
    /// Sessions the peer ended.
    SessionsEnded(Vec<EndedSession>),
    /// The peer's decision on a job both servers accepted.
    Duplicate {
        job: Uuid,
        keeper: Option<ServerId>,
        peer: ServerId,
    },
}

/// Answers of one kind recorded in one transaction, at most.
const NEWS_ACKS_BATCH: usize = 512;

/// Records the peer's answers and answers its questions, in the order they
/// came, off the driver's task.
pub async fn settle_loop(
    core: Arc<Core>,
    me: ServerId,
    link: LinkSlot,
    answers: mpsc::UnboundedSender<Answer>,
    mut settle: mpsc::UnboundedReceiver<Settle>,
) {
    let mut lookahead: Option<Settle> = None;
    loop {
        let item = match lookahead.take() {
            Some(item) => item,
            None => match settle.recv().await {
                Some(item) => item,
                None => return,
            },
        };
        match item {
            Settle::Stored(job) => {
                let mut stored = vec![job];
                while stored.len() < NEWS_ACKS_BATCH {
                    match settle.try_recv() {
                        Ok(Settle::Stored(job)) => stored.push(job),
                        Ok(other) => {
                            lookahead = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                on_jobs_stored(&core, me, &answers, stored).await;
            }
            Settle::NewsStored(job, rev) => {
                let mut acks = vec![(job, rev)];
                while acks.len() < NEWS_ACKS_BATCH {
                    match settle.try_recv() {
                        Ok(Settle::NewsStored(job, rev)) => acks.push((job, rev)),
                        Ok(other) => {
                            lookahead = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                let marked = acks.clone();
                match core.data.run(move |s| s.mark_peer_revs(&marked)).await {
                    Ok(()) => {
                        for (job, rev) in acks {
                            core.peer_acks.news_acknowledged(job, rev);
                            let _ = answers.send(Answer::NewsStored(job, rev));
                        }
                    }
                    // Not recorded: the news is sent again and answered again.
                    Err(e) => {
                        tracing::warn!(count = acks.len(), error = %e, "the peer's answers to job news could not be recorded")
                    }
                }
            }
            Settle::Query(job) => match core.data.run(move |s| s.job(job)).await {
                Ok(found) => send(
                    &link,
                    &Wire::JobKnown {
                        job,
                        known: found.as_ref().map(KnownJob::of),
                    },
                ),
                // No answer: the asker accepts after its wait.
                Err(e) => {
                    tracing::warn!(%job, error = %e, "the peer's question about a job could not be answered")
                }
            },
            Settle::SessionsEnded(sessions) => on_sessions_ended(&core, sessions).await,
            Settle::Duplicate { job, keeper, peer } => {
                if let Err(e) = duplicates::on_answer(&core, job, me, peer, keeper).await {
                    tracing::error!(%job, error = %e, "the peer's decision on a duplicate job could not be recorded");
                }
                core.peer_acks.release(job);
                let _ = answers.send(Answer::Stored(job));
            }
        }
    }
}

fn send(link: &LinkSlot, wire: &Wire) {
    if let Some((_, writer)) = link.borrow().as_ref() {
        let _ = writer.control.try_send(frame::encode(wire));
    }
}

/// Sessions the peer ended: ended here too.
async fn on_sessions_ended(core: &Core, sessions: Vec<EndedSession>) {
    let now = core.clock.now();
    let keep = core.settings.instance.outbox_replay_window_secs;
    let count = sessions.len();
    let result = core
        .data
        .run(move |s| {
            for e in &sessions {
                s.end_session(&e.session, e.expires_at, e.jobs_scanned, now, keep)?;
            }
            Ok(())
        })
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, count, "sessions the peer ended could not be recorded");
    }
}

/// The peer stored its copies of jobs this server accepted. The waiting
/// acknowledgements learn of it at once: the peer answers only once its
/// copy is durable, so the device may be told so before this server's
/// record follows. The record (one transaction) comes next; the sender
/// learns of it last. Should the record fail, or this server stop before
/// it, the job is still marked unreplicated here, so it is offered again
/// and the peer answers that it holds it.
async fn on_jobs_stored(
    core: &Core,
    me: ServerId,
    answers: &mpsc::UnboundedSender<Answer>,
    jobs: Vec<Uuid>,
) {
    for &job in &jobs {
        core.peer_acks.stored(job);
    }
    let marked = {
        let jobs = jobs.clone();
        core.data
            .run(move |s| {
                s.mark_replicated_all(&jobs)?;
                s.count_unreplicated(me)
            })
            .await
    };
    match marked {
        Ok(left) => {
            core.peer_acks.set_unreplicated(left);
            for &job in &jobs {
                core.peer_acks.release(job);
            }
        }
        Err(e) => {
            tracing::error!(count = jobs.len(), error = %e, "the peer's copies could not be recorded")
        }
    }
    for job in jobs {
        let _ = answers.send(Answer::Stored(job));
    }
}

impl Driver {
    /// Frames of the jobs side of the link: the replication stream, job
    /// questions, logouts and OCR for the peer.
    pub(super) async fn on_job_wire(&mut self, wire: Wire) {
        match wire {
            Wire::JobOffer(offer) => {
                let _ = self.incoming.send(jobs::Incoming::Offer(offer));
            }
            Wire::JobChunk { job, page, data } => {
                let _ = self
                    .incoming
                    .send(jobs::Incoming::Chunk { job, page, data });
            }
            Wire::JobEnd { job } => {
                let _ = self.incoming.send(jobs::Incoming::End { job });
            }
            Wire::JobStored { job, .. } => {
                let _ = self.settle.send(Settle::Stored(job));
            }
            Wire::JobNews(news) => {
                if let Some(sender) = self.peer.as_ref().map(|p| p.server) {
                    let _ = self.incoming.send(jobs::Incoming::News { sender, news });
                }
            }
            Wire::SessionsEnded(sessions) => {
                let _ = self.settle.send(Settle::SessionsEnded(sessions));
            }
            Wire::JobQuery { job } => {
                let _ = self.settle.send(Settle::Query(job));
            }
            Wire::JobKnown { job, known } => self.core.peer_acks.answered(job, known),
            Wire::OcrRequest {
                id,
                languages,
                dpi,
                image,
            } => {
                let asker = self
                    .peer
                    .as_ref()
                    .map_or_else(|| "the peer".to_owned(), |p| p.instance.clone());
                tokio::spawn(ocr::serve(
                    self.core.clone(),
                    self.stream_link.subscribe(),
                    asker,
                    id,
                    languages,
                    dpi,
                    image,
                ));
            }
            Wire::OcrAnswer { id, answer } => self.peer_ocr.answered(id, answer),
            Wire::JobDuplicate { job, keeper } => {
                if let Some(peer) = self.peer.as_ref().map(|p| p.server) {
                    let _ = self.settle.send(Settle::Duplicate { job, keeper, peer });
                }
            }
            Wire::JobNewsStored { job, rev } => {
                let _ = self.settle.send(Settle::NewsStored(job, rev));
            }
            Wire::TakenOver { count, jobs } => self.on_taken_over(count, jobs).await,
            Wire::JobRefused {
                job,
                reason,
                disk_full,
            } => {
                let _ = self.answers.send(jobs::Answer::Refused {
                    job,
                    reason,
                    disk_full,
                });
            }
            // The configuration side's frames are handled in `on_event`.
            Wire::Protocol(_)
            | Wire::ClockProbe { .. }
            | Wire::ClockReply { .. }
            | Wire::Conflicts(_) => {}
        }
    }

    /// Every session ended here that is still remembered, to the peer: a
    /// logout made while the link was down reaches it now.
    pub(super) async fn send_ended_sessions(&mut self) {
        let all = self.core.data.run(|s| s.ended_sessions()).await;
        match all {
            Ok(all) if !all.is_empty() => {
                let sessions = all
                    .into_iter()
                    .map(
                        |(session, expires_at, jobs_scanned)| crate::peer_ack::EndedSession {
                            session,
                            expires_at,
                            jobs_scanned,
                        },
                    )
                    .collect();
                self.send_wire(&Wire::SessionsEnded(sessions));
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "ended sessions could not be read for the peer"),
        }
    }
}
