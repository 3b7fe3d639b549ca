//! The driver's jobs side of the link: the frames of the job replication
//! stream, the peer's questions about job ids, logouts and OCR pages are
//! passed to the tasks that own them (`pair::jobs`, `pair::ocr`) or
//! recorded here; ended sessions are exchanged on each new connection.

use super::Driver;
use crate::pair::wire::Wire;
use crate::pair::{duplicates, jobs, ocr};

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
            Wire::JobStored { job, .. } => self.on_job_stored(job).await,
            Wire::JobNews(news) => {
                if let Some(sender) = self.peer.as_ref().map(|p| p.server) {
                    let _ = self.incoming.send(jobs::Incoming::News { sender, news });
                }
            }
            Wire::SessionsEnded(sessions) => self.on_sessions_ended(sessions).await,
            Wire::JobQuery { job } => {
                let known = self.core.data.run(move |s| s.job(job)).await;
                match known {
                    Ok(found) => self.send_wire(&Wire::JobKnown {
                        job,
                        known: found.as_ref().map(crate::peer_ack::KnownJob::of),
                    }),
                    // No answer: the asker accepts after its wait.
                    Err(e) => {
                        tracing::warn!(%job, error = %e, "the peer's question about a job could not be answered")
                    }
                }
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
                    if let Err(e) =
                        duplicates::on_answer(&self.core, job, self.me, peer, keeper).await
                    {
                        tracing::error!(%job, error = %e, "the peer's decision on a duplicate job could not be recorded");
                    }
                    self.core.peer_acks.release(job);
                    let _ = self.answers.send(jobs::Answer::Stored(job));
                }
            }
            Wire::JobNewsStored { job, rev } => {
                let marked = self.core.data.run(move |s| s.mark_peer_rev(job, rev)).await;
                if marked.is_ok() {
                    self.core.peer_acks.news_acknowledged(job, rev);
                }
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

    /// Sessions the peer ended: ended here too.
    pub(super) async fn on_sessions_ended(&mut self, sessions: Vec<crate::peer_ack::EndedSession>) {
        let now = self.core.clock.now();
        let keep = self.core.settings.instance.outbox_replay_window_secs;
        let count = sessions.len();
        let result = self
            .core
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

    /// The peer stored its copy of a job this server accepted: recorded
    /// first, then the waiting acknowledgement and the sender learn of it.
    pub(super) async fn on_job_stored(&mut self, job: uuid::Uuid) {
        let me = self.me;
        let marked = self
            .core
            .data
            .run(move |s| {
                s.mark_replicated(job)?;
                s.count_unreplicated(me)
            })
            .await;
        match marked {
            Ok(left) => {
                self.core.peer_acks.set_unreplicated(left);
                self.core.peer_acks.stored(job);
                self.core.peer_acks.release(job);
            }
            Err(e) => tracing::error!(%job, error = %e, "the peer's copy could not be recorded"),
        }
        let _ = self.answers.send(jobs::Answer::Stored(job));
    }
}
