//! The receiving side of the job replication stream: stores each job the
//! peer offers as a replica (its pages checked against the offer, then the
//! group commit, beside the next copies streaming in), settles an id this
//! server accepted too, takes the peer's news, and answers each.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use pair_core::ServerId;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::{Incoming, LinkSlot, NEWS_WINDOW};
use crate::admission::UploadClaim;
use crate::commit::CommitError;
use crate::core::Core;
use crate::pair::frame;
use crate::pair::wire::{JobOffer, Wire};
use crate::spool::{PageWriter, SpoolUpload, SpooledPage};
use crate::store::job_owners::NewsTaken;
use crate::store::{NewJob, NewPage};

/// A job being received.
struct Receiving {
    offer: Box<JobOffer>,
    upload: SpoolUpload,
    /// The id's upload claim, held until the row is committed.
    _claim: UploadClaim,
    page: Option<(u32, PageWriter)>,
    done: Vec<SpooledPage>,
    /// Set once something failed: the rest of the job is skipped and the
    /// refusal sent at its end.
    failed: Option<(String, bool)>,
}

/// The receiving side: stores offered jobs as replicas and answers each.
pub async fn receive_loop(
    core: Arc<Core>,
    link: LinkSlot,
    mut incoming: mpsc::UnboundedReceiver<Incoming>,
) {
    let mut current: Option<Receiving> = None;
    // An offer of a job already held is answered at once; its chunks are
    // skipped.
    let mut skipping: Option<Uuid> = None;
    // Why the peer's news cannot be stored, while that lasts: the peer
    // sends it again every round, and one warning per cause is enough.
    let mut news_failing: Option<String> = None;
    // An item read while gathering news, handled next.
    let mut lookahead: Option<Incoming> = None;
    // Copies whose pages all arrived, being committed (at most the
    // sender's window of them).
    let mut committing = tokio::task::JoinSet::new();
    loop {
        while committing.try_join_next().is_some() {}
        let event = match lookahead.take() {
            Some(event) => event,
            None => match incoming.recv().await {
                Some(event) => event,
                None => return,
            },
        };
        match event {
            Incoming::Reset => {
                current = None;
                skipping = None;
            }
            Incoming::Offer(offer) => {
                current = None;
                skipping = None;
                let id = offer.id;
                let existing = core.data.run(move |s| s.job(id)).await;
                match existing {
                    // Held here already (this acceptor's copy), or done at
                    // the acceptor before it was copied with no id of this
                    // server's to settle (nothing to keep): answered at once.
                    Ok(ref held)
                        if held
                            .as_ref()
                            .map_or(offer.done, |j| j.acceptor_server == offer.acceptor) =>
                    {
                        skipping = Some(id);
                        answer(
                            &link,
                            Wire::JobStored {
                                job: id,
                                seq: offer.seq,
                            },
                        );
                    }
                    Ok(Some(mine)) => {
                        skipping = Some(id);
                        let sender = offer.acceptor;
                        let started = offer.started;
                        match crate::pair::duplicates::decide(&core, mine, sender, started).await {
                            Ok(keeper) => answer(&link, Wire::JobDuplicate { job: id, keeper }),
                            Err(e) => answer(
                                &link,
                                Wire::JobRefused {
                                    job: id,
                                    reason: format!("deciding which server keeps the job: {e}"),
                                    disk_full: false,
                                },
                            ),
                        }
                    }
                    Ok(None) => match begin(&core, id).await {
                        Ok((upload, claim)) => {
                            current = Some(Receiving {
                                offer,
                                upload,
                                _claim: claim,
                                page: None,
                                done: Vec::new(),
                                failed: None,
                            })
                        }
                        Err((reason, disk_full)) => {
                            skipping = Some(id);
                            answer(
                                &link,
                                Wire::JobRefused {
                                    job: id,
                                    reason,
                                    disk_full,
                                },
                            );
                        }
                    },
                    Err(e) => {
                        skipping = Some(id);
                        answer(
                            &link,
                            Wire::JobRefused {
                                job: id,
                                reason: e.to_string(),
                                disk_full: false,
                            },
                        );
                    }
                }
            }
            Incoming::Chunk { job, page, data } => {
                if skipping == Some(job) {
                    continue;
                }
                let Some(r) = current.as_mut().filter(|r| r.offer.id == job) else {
                    continue;
                };
                if r.failed.is_none()
                    && let Err(failure) = write_chunk(r, page, &data).await
                {
                    r.failed = Some(failure);
                }
            }
            Incoming::News { sender, news } => {
                // Every news already waiting from the same sender is taken
                // with it, in one transaction.
                // News may be about a copy still being committed: it is
                // taken once that copy is stored, as when copies were
                // committed one after the other.
                while committing.join_next().await.is_some() {}
                let mut batch = vec![*news];
                while batch.len() < NEWS_WINDOW {
                    match incoming.try_recv() {
                        Ok(Incoming::News { sender: s, news }) if s == sender => batch.push(*news),
                        Ok(other) => {
                            lookahead = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                take_news(&core, &link, sender, batch, &mut news_failing).await;
            }
            Incoming::End { job } => {
                if skipping == Some(job) {
                    skipping = None;
                    continue;
                }
                let Some(r) = current.take().filter(|r| r.offer.id == job) else {
                    continue;
                };
                // Committed beside the next copies streaming in, so the
                // copies in the sender's window share the commit's batches.
                let (core, link) = (core.clone(), link.clone());
                committing.spawn(async move {
                    let seq = r.offer.seq;
                    match finish(&core, r).await {
                        Ok(()) => answer(&link, Wire::JobStored { job, seq }),
                        Err((reason, disk_full)) => {
                            tracing::warn!(%job, reason, "a job copy from the peer was not stored");
                            answer(
                                &link,
                                Wire::JobRefused {
                                    job,
                                    reason,
                                    disk_full,
                                },
                            )
                        }
                    }
                });
            }
        }
    }
}

/// Stores a batch of the peer's news and answers each that was taken (or
/// that needs nothing: older news, or no such job), so the sender stops
/// sending it. News that must wait for a takeover announcement, and news
/// from a sender that has yet to apply one, are not answered, so they come
/// again.
async fn take_news(
    core: &Core,
    link: &LinkSlot,
    sender: ServerId,
    batch: Vec<crate::store::job_owners::JobNews>,
    failing: &mut Option<String>,
) {
    let revs: Vec<(Uuid, u64)> = batch.iter().map(|n| (n.job, n.rev)).collect();
    let now = core.clock.now();
    let applied = core
        .data
        .run(move |s| {
            s.apply_job_news_batch(sender, &batch, now, crate::ownership::DELIVERY_PLUGINS)
        })
        .await;
    let taken = match applied {
        Ok(taken) => taken,
        Err(e) => {
            let why = e.to_string();
            if failing.as_deref() != Some(why.as_str()) {
                tracing::warn!(
                    count = revs.len(),
                    error = why,
                    "the peer's news of jobs cannot be stored; it is taken when it comes again"
                );
                *failing = Some(why);
            }
            return;
        }
    };
    if let Some(why) = failing.take() {
        tracing::info!(why, "the peer's news of jobs is stored again");
    }
    let mut woken = false;
    for ((job, rev), taken) in revs.into_iter().zip(taken) {
        match taken {
            Ok(NewsTaken::Applied) => {
                woken = true;
                answer(link, Wire::JobNewsStored { job, rev });
            }
            Ok(NewsTaken::Stale) => answer(link, Wire::JobNewsStored { job, rev }),
            Ok(NewsTaken::NotYet | NewsTaken::Behind) => {}
            Err(e) => {
                tracing::warn!(%job, error = %e, "the peer's news of a job is not understood")
            }
        }
    }
    if woken {
        core.job_ready.notify_waiters();
    }
}

fn answer(link: &LinkSlot, wire: Wire) {
    if let Some((_, writer)) = link.borrow().as_ref() {
        let _ = writer.control.try_send(frame::encode(&wire));
    }
}

fn io_failure(what: &str, e: &std::io::Error) -> (String, bool) {
    let disk_full = e.raw_os_error() == Some(28);
    (format!("{what}: {e}"), disk_full)
}

/// Starts storing an offered copy: claims the id as the intake does (a
/// device uploading the same id here right now wins; the copy is offered
/// again), checks again under the claim that no row exists, and removes a
/// spool directory left by an attempt that never committed its row (an
/// upload cut off between its directory and its row), since a commit never
/// replaces one.
async fn begin(core: &Core, id: Uuid) -> Result<(SpoolUpload, UploadClaim), (String, bool)> {
    let claim = core.admission.uploads.claim(id).ok_or_else(|| {
        (
            "a device is uploading the same job id here right now".to_owned(),
            false,
        )
    })?;
    let parts = core.data.parts().map_err(|e| (e.to_string(), false))?;
    match core.data.run(move |s| s.job(id)).await {
        Ok(None) => {}
        Ok(Some(_)) => return Err(("the job was stored here meanwhile".to_owned(), false)),
        Err(e) => return Err((e.to_string(), false)),
    }
    let upload = parts
        .spool
        .begin_new(id)
        .map_err(|e| io_failure("removing an orphan job directory", &e))?;
    Ok((upload, claim))
}

async fn close_page(r: &mut Receiving) -> Result<(), (String, bool)> {
    if let Some((seq, writer)) = r.page.take() {
        let written = writer
            .finish()
            .await
            .map_err(|e| io_failure("writing a page", &e))?;
        let offered = r.offer.pages.iter().find(|p| p.seq == seq);
        match offered {
            Some(p) if p.sha256 == written.sha256 && p.bytes == written.bytes => {
                r.done.push(written)
            }
            _ => {
                return Err((
                    format!("page {seq} does not match its size and SHA-256 in the offer"),
                    false,
                ));
            }
        }
    }
    Ok(())
}

async fn write_chunk(r: &mut Receiving, page: u32, data: &str) -> Result<(), (String, bool)> {
    let bytes = B64
        .decode(data)
        .map_err(|_| (format!("page {page}: a chunk is not base64"), false))?;
    if r.page.as_ref().is_none_or(|(seq, _)| *seq != page) {
        close_page(r).await?;
        let Some(offered) = r.offer.pages.iter().find(|p| p.seq == page) else {
            return Err((format!("page {page} is not in the offer"), false));
        };
        let extension = offered
            .file_name
            .rsplit_once('.')
            .map_or("bin", |(_, e)| e)
            .to_owned();
        let writer = r.upload.page(page, &extension);
        r.page = Some((page, writer));
    }
    let (_, writer) = r.page.as_mut().expect("opened above");
    writer
        .write(&bytes)
        .await
        .map_err(|e| io_failure("writing a page", &e))
}

/// Checks every page, commits the directory and the replica row.
async fn finish(core: &Core, mut r: Receiving) -> Result<(), (String, bool)> {
    if let Some(failure) = r.failed.take() {
        return Err(failure);
    }
    close_page(&mut r).await?;
    if r.done.len() != r.offer.pages.len() {
        return Err((
            format!("{} of {} pages arrived", r.done.len(), r.offer.pages.len()),
            false,
        ));
    }
    let offer = r.offer;
    let parts = core.data.parts().map_err(|e| (e.to_string(), false))?;
    let id = offer.id;
    let job = NewJob {
        id,
        device_id: offer.device_id,
        user: offer.user.clone(),
        workflow: offer.workflow.clone(),
        manifest: offer.manifest.clone(),
        manifest_sha256: offer.manifest_sha256.clone(),
        bytes: offer.bytes,
        accepted_by: offer.accepted_by.clone(),
        accepted_role: offer.accepted_role.clone(),
        accepted_epoch: offer.accepted_epoch,
        client_addr: offer.client_addr.clone(),
        received_at: offer.received_at,
        acceptor: offer.acceptor,
        pages: offer
            .pages
            .iter()
            .map(|p| NewPage {
                seq: p.seq,
                file_name: p.file_name.clone(),
                format: p.format.clone(),
                bytes: p.bytes,
                sha256: p.sha256.clone(),
            })
            .collect(),
    };
    let seq = offer.seq;
    // Stored meanwhile (`Ok(false)`) is stored too: the peer may stop
    // sending it.
    match parts.committer.commit(r.upload, job, Some(seq)).await {
        Ok(_) => {
            tracing::info!(job = %id, seq, bytes = offer.bytes, accepted_by = offer.accepted_by, "replica stored");
            Ok(())
        }
        Err(CommitError::Spool { what, error }) => Err(io_failure(what, &error)),
        Err(e) => Err((format!("storing the copy: {e}"), false)),
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::started_core;
    use super::*;
    use crate::pair::wire::OfferedPage;
    use crate::spool::JobSpool;

    fn offer(pages: &[(&[u8], String)]) -> Box<JobOffer> {
        Box::new(JobOffer {
            id: Uuid::new_v4(),
            device_id: Uuid::new_v4(),
            user: "alice".into(),
            workflow: "w".into(),
            manifest: "{}".into(),
            manifest_sha256: String::new(),
            bytes: pages.iter().map(|(b, _)| b.len() as u64).sum(),
            accepted_by: "gw-a".into(),
            accepted_role: "primary".into(),
            accepted_epoch: 1,
            client_addr: None,
            received_at: chrono::Utc::now(),
            acceptor: ServerId::from_u128(1),
            seq: 1,
            started: false,
            done: false,
            pages: pages
                .iter()
                .enumerate()
                .map(|(i, (b, sum))| OfferedPage {
                    seq: i as u32 + 1,
                    file_name: format!("page-{:04}.png", i + 1),
                    format: "png".into(),
                    bytes: b.len() as u64,
                    sha256: sum.clone(),
                })
                .collect(),
        })
    }

    fn sha(b: &[u8]) -> String {
        crate::security::hex(ring::digest::digest(&ring::digest::SHA256, b).as_ref())
    }

    /// A copy of `offer` about to be received, its id claimed in `claims`.
    fn receiving(
        spool: &JobSpool,
        claims: &crate::admission::UploadClaims,
        offer: Box<JobOffer>,
    ) -> Receiving {
        Receiving {
            upload: spool.begin(offer.id),
            _claim: claims.claim(offer.id).unwrap(),
            offer,
            page: None,
            done: Vec::new(),
            failed: None,
        }
    }

    /// Pages arrive in chunks and each is checked against its offer: a page
    /// whose bytes do not match its digest is refused (and re-sent by the
    /// sender), never committed.
    #[tokio::test]
    async fn pages_are_checked_against_the_offer_chunk_by_chunk() {
        let tmp = tempfile::tempdir().unwrap();
        let spool = JobSpool::open(tmp.path()).unwrap();
        let claims = crate::admission::UploadClaims::default();
        let good = b"page one".as_slice();
        let other = b"page two".as_slice();
        let o = offer(&[(good, sha(good)), (other, sha(other))]);
        let mut r = receiving(&spool, &claims, o);
        write_chunk(&mut r, 1, &B64.encode(&good[..4]))
            .await
            .unwrap();
        write_chunk(&mut r, 1, &B64.encode(&good[4..]))
            .await
            .unwrap();
        write_chunk(&mut r, 2, &B64.encode(other)).await.unwrap();
        close_page(&mut r).await.unwrap();
        assert_eq!(r.done.len(), 2);

        let o = offer(&[(good, sha(b"something else"))]);
        let mut r = receiving(&spool, &claims, o);
        write_chunk(&mut r, 1, &B64.encode(good)).await.unwrap();
        let (why, disk_full) = close_page(&mut r).await.unwrap_err();
        assert!(why.contains("does not match"), "{why}");
        assert!(!disk_full);
        let (why, _) = write_chunk(&mut r, 7, &B64.encode(good)).await.unwrap_err();
        assert!(why.contains("not in the offer"), "{why}");
        assert!(write_chunk(&mut r, 1, "%%%").await.is_err(), "not base64");
    }

    /// A directory left by an attempt that never committed its row does not
    /// block the peer's copy forever; a device uploading the same id here
    /// right now does (the copy is offered again), and so does a row
    /// committed meanwhile.
    #[tokio::test]
    async fn an_orphan_directory_gives_way_to_the_peers_copy_but_a_live_upload_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let core = started_core(dir.path()).await;
        let spool = core.data.parts().unwrap().spool.clone();
        let id = Uuid::new_v4();
        let orphan = spool.job_dir(id);
        std::fs::create_dir_all(&orphan).unwrap();
        std::fs::write(orphan.join("page-0001.png"), b"half a job").unwrap();

        let held = core.admission.uploads.claim(id).unwrap();
        let (why, disk_full) = begin(&core, id).await.unwrap_err();
        assert!(why.contains("uploading the same job id"), "{why}");
        assert!(!disk_full);
        assert!(
            orphan.exists(),
            "a live upload's directory is never touched"
        );
        drop(held);

        let (mut upload, claim) = begin(&core, id).await.unwrap();
        assert!(!orphan.exists(), "the orphan was removed");
        let mut page = upload.page(1, "png");
        page.write(b"the copy").await.unwrap();
        page.finish().await.unwrap();
        let mut job = crate::store::jobs::sample_job(id);
        job.acceptor = pair_core::ServerId::from_u128(7);
        let parts = core.data.parts().unwrap();
        assert!(parts.committer.commit(upload, job, Some(1)).await.unwrap());
        assert_eq!(
            std::fs::read(orphan.join("page-0001.png")).unwrap(),
            b"the copy"
        );
        drop(claim);
        let (why, _) = begin(&core, id).await.unwrap_err();
        assert!(why.contains("stored here meanwhile"), "{why}");
        assert!(
            orphan.join("page-0001.png").exists(),
            "a stored job keeps its pages"
        );
    }
}
