//! The job replication stream: every job this server accepted goes to the
//! peer, which stores it durably as a replica (not processed: its acceptor
//! owns it) and says so; the acceptor then records it as replicated and
//! the intake's waiting acknowledgement learns of it.
//!
//! Rules owned here:
//! * jobs leave in the order of the acceptor's sequence number, at most
//!   [`WINDOW`] jobs and [`WINDOW_BYTES`] unanswered at a time (one job of
//!   any size always), their pages in bulk chunks behind every control
//!   frame (heartbeats never wait behind a job);
//! * what has not been answered is offered again on the next connection
//!   (the stream resumes from the first job the peer has not stored; the
//!   peer answers an offer of a job it already holds at once);
//! * the receiver checks every page's size and SHA-256 against the offer
//!   before it commits anything, and a job directory and its row are made
//!   as an accepted job's are (page files fsynced, then the group commit:
//!   directory fsynced, row committed), each copy committed beside the next
//!   ones streaming in so the window's copies share commits, and the
//!   peer's news taken only once the copies before it are stored; a page
//!   that does not match is refused and re-sent, a full disk is reported
//!   as such;
//! * a job's news (state, step attempts, owner and ownership term) goes to
//!   the peer whenever the peer holds a copy and has not acknowledged the
//!   job's latest revision, whichever server changed it (so each server
//!   knows the other's jobs, their progress and who owns them, and a
//!   takeover skips the steps already done); the peer removes a copy's
//!   pages once it learnt the job is done elsewhere and the retention
//!   period passed, and keeps its row as history;
//! * an offered id this server accepted itself is settled by
//!   [`super::duplicates`];
//! * both tasks run apart from the driver, so disk and network waits never
//!   delay heartbeats.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use pair_core::ServerId;
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use super::connection::{BULK_CHUNK_BYTES, LinkWriter};
use super::frame;
use super::wire::{JobOffer, OfferedPage, Wire};
use crate::admission::UploadClaim;
use crate::commit::CommitError;
use crate::core::Core;
use crate::spool::{PageWriter, SpoolUpload, SpooledPage};
use crate::store::job_owners::NewsTaken;
use crate::store::{JobRecord, JobState, NewJob, NewPage};

/// Jobs offered and not yet answered, at most.
pub const WINDOW: usize = 16;
/// Bytes of page data offered and not yet answered, at most (one job is
/// always allowed, whatever its size): what the receiver may have to hold
/// while its disk catches up.
pub const WINDOW_BYTES: u64 = 16 << 20;
/// How often the sender looks for work it was not told about (jobs left
/// from before a restart, jobs refused earlier).
const RESCAN: Duration = Duration::from_secs(1);
/// How long a job that could not be read here waits before it is offered
/// again (the data service may have been stopped for a moment).
const LOCAL_RETRY: Duration = Duration::from_secs(5);
/// How long the sender waits after the peer said its disk is full.
const DISK_FULL_BACKOFF: Duration = Duration::from_secs(5);
/// State changes sent per round, at most.
const STATE_BATCH: u32 = 64;
/// State changes sent and not yet answered, at most: a peer slow to store
/// them is not buried under more.
const NEWS_WINDOW: usize = 256;
/// How long a state change sent waits for its answer before it is sent
/// again on the same connection.
const NEWS_RESEND: Duration = Duration::from_secs(5);
/// How often replicas whose retention ran out are looked for.
const JANITOR_EVERY: Duration = Duration::from_secs(10);

/// The current connection, as the stream's tasks see it.
pub type LinkSlot = watch::Receiver<Option<(u64, LinkWriter)>>;

/// What the driver passes to the sender.
#[derive(Debug)]
pub enum Answer {
    Stored(Uuid),
    /// The peer stored the job's news up to this revision.
    NewsStored(Uuid, u64),
    Refused {
        job: Uuid,
        reason: String,
        disk_full: bool,
    },
}

/// What the driver passes to the receiver.
#[derive(Debug)]
pub enum Incoming {
    Offer(Box<JobOffer>),
    Chunk {
        job: Uuid,
        page: u32,
        data: String,
    },
    End {
        job: Uuid,
    },
    /// A job's news from the paired peer `sender`.
    News {
        sender: ServerId,
        news: Box<crate::store::job_owners::JobNews>,
    },
    /// The connection changed: a job half received is dropped.
    Reset,
}

/// What status shows of the stream.
#[derive(Debug, Clone, Default)]
pub struct StreamState {
    /// The last refusal from the peer, until a job is stored again.
    pub last_error: Option<String>,
}

fn offer_of(job: &JobRecord, pages: Vec<NewPage>) -> JobOffer {
    JobOffer {
        id: job.id,
        device_id: job.device_id,
        user: job.user.clone(),
        workflow: job.workflow.clone(),
        manifest: job.manifest.clone(),
        manifest_sha256: job.manifest_sha256.clone(),
        bytes: job.bytes,
        accepted_by: job.accepted_by.clone(),
        accepted_role: job.accepted_role.clone(),
        accepted_epoch: job.accepted_epoch,
        client_addr: job.client_addr.clone(),
        received_at: job.received_at,
        acceptor: job.acceptor_server,
        seq: job.seq,
        started: job.state != JobState::Received,
        done: job.state == JobState::Done,
        pages: pages
            .into_iter()
            .map(|p| OfferedPage {
                seq: p.seq,
                file_name: p.file_name,
                format: p.format,
                bytes: p.bytes,
                sha256: p.sha256,
            })
            .collect(),
    }
}

/// The sending side: offers every job this server accepted that the peer
/// has no copy of, in order, while a link is up.
pub async fn send_loop(
    core: Arc<Core>,
    me: ServerId,
    mut link: LinkSlot,
    mut answers: mpsc::UnboundedReceiver<Answer>,
    state: Arc<std::sync::RwLock<StreamState>>,
) {
    loop {
        let Some((generation, writer)) = link.borrow_and_update().clone() else {
            if link.changed().await.is_err() {
                return;
            }
            continue;
        };
        let mut sent: HashSet<Uuid> = HashSet::new();
        let mut in_flight: VecDeque<(Uuid, u64)> = VecDeque::new();
        let room = |in_flight: &VecDeque<(Uuid, u64)>, next: u64| {
            let bytes: u64 = in_flight.iter().map(|(_, b)| b).sum();
            in_flight.is_empty() || (in_flight.len() < WINDOW && bytes + next <= WINDOW_BYTES)
        };
        let mut backoff_until: Option<tokio::time::Instant> = None;
        let mut news_sent = NewsSent::default();
        // Jobs that could not be read here (the data service down, a file
        // missing): offered again after `LOCAL_RETRY`, reported once.
        let mut unreadable: HashMap<Uuid, tokio::time::Instant> = HashMap::new();
        'connection: loop {
            // Offer what waits, up to the window.
            let may_send = backoff_until.is_none_or(|t| tokio::time::Instant::now() >= t);
            if may_send && in_flight.len() < WINDOW {
                let want =
                    (WINDOW - in_flight.len()) as u32 + sent.len() as u32 + unreadable.len() as u32;
                let now = tokio::time::Instant::now();
                let waiting = core
                    .data
                    .run(move |s| s.unreplicated_jobs(me, want.max(WINDOW as u32)))
                    .await
                    .unwrap_or_default();
                for job in waiting {
                    if !room(&in_flight, job.bytes) {
                        break;
                    }
                    if sent.contains(&job.id) || unreadable.get(&job.id).is_some_and(|t| *t > now) {
                        continue;
                    }
                    match send_job(&core, &writer, &job).await {
                        Ok(()) => {
                            unreadable.remove(&job.id);
                            sent.insert(job.id);
                            in_flight.push_back((job.id, job.bytes));
                        }
                        Err(SendError::LinkGone) => break 'connection,
                        Err(SendError::Local(why)) => {
                            if unreadable.insert(job.id, now + LOCAL_RETRY).is_none() {
                                tracing::error!(job = %job.id, why, "a job could not be read for the peer; it is offered again every few seconds");
                            }
                        }
                    }
                }
            }
            if let Err(SendError::LinkGone) = send_state_news(&core, &writer, &mut news_sent).await
            {
                break 'connection;
            }
            let ended = core.peer_acks.take_ended_sessions();
            if !ended.is_empty() {
                let _ = writer
                    .control
                    .try_send(frame::encode(&Wire::SessionsEnded(ended)));
            }
            tokio::select! {
                changed = link.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    if link.borrow().as_ref().map(|(g, _)| *g) != Some(generation) {
                        break 'connection;
                    }
                }
                answer = answers.recv() => {
                    let Some(first) = answer else { return };
                    // Every answer already there is taken before the next
                    // round (a batch of news answers comes at once).
                    let mut next = Some(first);
                    while let Some(answer) = next {
                        match answer {
                            Answer::NewsStored(job, rev) => news_sent.answered(job, rev),
                            Answer::Stored(id) => {
                                in_flight.retain(|(j, _)| *j != id);
                                sent.remove(&id);
                                state.write().unwrap_or_else(|p| p.into_inner()).last_error = None;
                            }
                            Answer::Refused { job, reason, disk_full } => {
                                in_flight.retain(|(j, _)| *j != job);
                                sent.remove(&job);
                                tracing::warn!(%job, reason, disk_full, "the peer did not store a job; it is offered again");
                                state.write().unwrap_or_else(|p| p.into_inner()).last_error = Some(
                                    if disk_full {
                                        format!("the peer's disk is full: {reason}")
                                    } else {
                                        format!("the peer refused a job copy: {reason}")
                                    },
                                );
                                let wait = if disk_full { DISK_FULL_BACKOFF } else { RESCAN };
                                backoff_until = Some(tokio::time::Instant::now() + wait);
                            }
                        }
                        next = answers.try_recv().ok();
                    }
                }
                _ = core.peer_acks.wait_for_jobs() => {}
                _ = tokio::time::sleep(RESCAN) => {}
            }
        }
    }
}

/// The state changes sent on one connection and not yet answered.
#[derive(Default)]
struct NewsSent {
    sent: HashMap<Uuid, (u64, tokio::time::Instant)>,
}

impl NewsSent {
    fn answered(&mut self, job: Uuid, rev: u64) {
        if self.sent.get(&job).is_some_and(|(sent, _)| *sent <= rev) {
            self.sent.remove(&job);
        }
    }

    /// Forgets what was sent longer ago than [`NEWS_RESEND`] (it is sent
    /// again if still unanswered) and returns what is still on its way.
    fn on_the_way(&mut self) -> HashMap<Uuid, u64> {
        let now = tokio::time::Instant::now();
        self.sent
            .retain(|_, (_, at)| now.duration_since(*at) < NEWS_RESEND);
        self.sent
            .iter()
            .map(|(job, (rev, _))| (*job, *rev))
            .collect()
    }
}

/// Sends the news of jobs the peer holds a copy of that it has not
/// acknowledged yet: what is not already on its way, while fewer than
/// [`NEWS_WINDOW`] wait for an answer; unanswered news is sent again after
/// [`NEWS_RESEND`] (taking it is idempotent).
async fn send_state_news(
    core: &Core,
    writer: &LinkWriter,
    sent: &mut NewsSent,
) -> Result<(), SendError> {
    let on_the_way = sent.on_the_way();
    let room = NEWS_WINDOW
        .saturating_sub(on_the_way.len())
        .min(STATE_BATCH as usize);
    if room == 0 {
        return Ok(());
    }
    let news = core
        .data
        .run(move |s| s.job_news(room as u32, &on_the_way))
        .await
        .unwrap_or_default();
    for item in news {
        let (job, rev) = (item.job, item.rev);
        send_bulk(writer, &Wire::JobNews(Box::new(item))).await?;
        sent.sent.insert(job, (rev, tokio::time::Instant::now()));
    }
    Ok(())
}

/// Removes the pages of replicas whose owner reported them done more than
/// `retention` ago; their rows stay.
pub async fn janitor_loop(core: Arc<Core>, retention: Duration) {
    loop {
        tokio::time::sleep(JANITOR_EVERY.min(retention.max(Duration::from_secs(1)))).await;
        let Ok(parts) = core.data.parts() else {
            continue;
        };
        let now = core.clock.now();
        let before = now - chrono::Duration::from_std(retention).unwrap_or_default();
        let due = core
            .data
            .run(move |s| s.replicas_done_before(before, 256))
            .await
            .unwrap_or_default();
        for id in due {
            match parts.spool.remove_job(id) {
                Ok(()) => {
                    let _ = core.data.run(move |s| s.mark_pages_removed(id, now)).await;
                }
                Err(e) => {
                    tracing::warn!(job = %id, error = %e, "a replica's pages could not be removed")
                }
            }
        }
    }
}

enum SendError {
    /// The connection is gone: the job is offered again on the next one.
    LinkGone,
    /// The job's own files cannot be read here.
    Local(String),
}

async fn send_bulk(writer: &LinkWriter, wire: &Wire) -> Result<(), SendError> {
    writer
        .bulk
        .send(frame::encode(wire))
        .await
        .map_err(|_| SendError::LinkGone)
}

/// Sends one job: the offer, each page in chunks, the end. Each chunk is
/// read and its frame encoded on the blocking pool, in one trip (the file
/// stays open from one chunk to the next), so the link's thread only
/// passes frames on: a job of one small page costs the store's trip for
/// its pages and one trip for its chunk.
async fn send_job(core: &Core, writer: &LinkWriter, job: &JobRecord) -> Result<(), SendError> {
    let id = job.id;
    let pages = core
        .data
        .run(move |s| s.job_pages(id))
        .await
        .map_err(|e| SendError::Local(e.to_string()))?;
    let dir = core
        .data
        .parts()
        .map_err(|e| SendError::Local(e.to_string()))?
        .spool
        .job_dir(id);
    send_bulk(
        writer,
        &Wire::JobOffer(Box::new(offer_of(job, pages.clone()))),
    )
    .await?;
    if job.state == JobState::Done {
        // Its pages went when it was done; the offer settles the id.
        return send_bulk(writer, &Wire::JobEnd { job: id }).await;
    }
    for page in &pages {
        let path = Arc::new(dir.join(&page.file_name));
        let (seq, size) = (page.seq, page.bytes);
        let mut file: Option<std::fs::File> = None;
        let mut sent = 0u64;
        while sent < size {
            let len = (size - sent).min(BULK_CHUNK_BYTES as u64) as usize;
            let at = path.clone();
            let read = tokio::task::spawn_blocking(move || {
                let mut f = match file {
                    Some(f) => f,
                    None => std::fs::File::open(&*at)?,
                };
                let mut data = vec![0u8; len];
                std::io::Read::read_exact(&mut f, &mut data)?;
                let chunk = Wire::JobChunk {
                    job: id,
                    page: seq,
                    data: B64.encode(&data),
                };
                Ok::<_, std::io::Error>((f, frame::encode(&chunk)))
            })
            .await
            .map_err(|e| SendError::Local(e.to_string()))?;
            let (f, chunk) = read.map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => SendError::Local(format!(
                    "{}: shorter than its recorded {size} bytes",
                    path.display()
                )),
                _ => SendError::Local(format!("{}: {e}", path.display())),
            })?;
            file = Some(f);
            sent += len as u64;
            writer
                .bulk
                .send(chunk)
                .await
                .map_err(|_| SendError::LinkGone)?;
        }
    }
    send_bulk(writer, &Wire::JobEnd { job: id }).await
}

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
                        match super::duplicates::decide(&core, mine, sender, started).await {
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
    use super::*;
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
        let mut r = Receiving {
            upload: spool.begin(o.id),
            _claim: claims.claim(o.id).unwrap(),
            offer: o,
            page: None,
            done: Vec::new(),
            failed: None,
        };
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
        let mut r = Receiving {
            upload: spool.begin(o.id),
            _claim: claims.claim(o.id).unwrap(),
            offer: o,
            page: None,
            done: Vec::new(),
            failed: None,
        };
        write_chunk(&mut r, 1, &B64.encode(good)).await.unwrap();
        let (why, disk_full) = close_page(&mut r).await.unwrap_err();
        assert!(why.contains("does not match"), "{why}");
        assert!(!disk_full);
        let (why, _) = write_chunk(&mut r, 7, &B64.encode(good)).await.unwrap_err();
        assert!(why.contains("not in the offer"), "{why}");
        assert!(write_chunk(&mut r, 1, "%%%").await.is_err(), "not base64");
    }

    /// A server's core with its data service started, its data under `dir`.
    async fn started_core(dir: &std::path::Path) -> Arc<Core> {
        let file = dir.join("gateway.toml");
        std::fs::write(
            &file,
            format!(
                "[defaults]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"{}/{{instance}}\"\n",
                dir.display()
            ),
        )
        .unwrap();
        let settings = crate::settings::load(
            crate::settings::Source::File(&file),
            Some("gw-b"),
            &crate::settings::Env::none(),
        )
        .unwrap();
        let core = Core::for_tests(settings, licensing::TrustedKeys::builtin());
        core.data.start().await.unwrap();
        core
    }

    /// A job's pages leave in chunks of at most the bulk size, in order, each
    /// as its own frame between the offer and the end; a page file shorter
    /// than its row says is this server's problem, not the link's.
    #[tokio::test]
    async fn a_job_is_sent_as_its_offer_its_chunks_and_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let core = started_core(dir.path()).await;
        let parts = core.data.parts().unwrap();
        let id = Uuid::new_v4();
        let big: Vec<u8> = (0..BULK_CHUNK_BYTES + 1000)
            .map(|i| (i % 251) as u8)
            .collect();
        let small = b"second page".to_vec();
        let mut upload = parts.spool.begin(id);
        let mut job = crate::store::jobs::sample_job(id);
        job.pages.clear();
        for (seq, bytes) in [(1u32, &big), (2, &small)] {
            let mut page = upload.page(seq, "png");
            page.write(bytes).await.unwrap();
            let done = page.finish().await.unwrap();
            job.pages.push(NewPage {
                seq,
                file_name: done.file_name,
                format: "png".into(),
                bytes: done.bytes,
                sha256: done.sha256,
            });
        }
        job.bytes = (big.len() + small.len()) as u64;
        let first_page = parts.spool.job_dir(id).join(&job.pages[0].file_name);
        assert!(parts.committer.commit(upload, job, None).await.unwrap());
        let record = core.data.run(move |s| s.job(id)).await.unwrap().unwrap();

        let (control, _control_rx) = mpsc::channel(8);
        let (bulk, mut bulk_rx) = mpsc::channel(64);
        let writer = LinkWriter { control, bulk };
        assert!(send_job(&core, &writer, &record).await.is_ok());
        drop(writer);
        let mut frames = Vec::new();
        while let Some(bytes) = bulk_rx.recv().await {
            let wire: Wire = frame::read(&mut bytes.as_slice()).await.unwrap().unwrap();
            frames.push(wire);
        }
        assert!(matches!(frames.first(), Some(Wire::JobOffer(o)) if o.id == id));
        assert!(matches!(frames.last(), Some(Wire::JobEnd { job }) if *job == id));
        let chunks: Vec<(u32, Vec<u8>)> = frames[1..frames.len() - 1]
            .iter()
            .map(|w| match w {
                Wire::JobChunk { job, page, data } if *job == id => {
                    (*page, B64.decode(data).unwrap())
                }
                other => panic!("not a chunk of the job: {other:?}"),
            })
            .collect();
        let sizes: Vec<(u32, usize)> = chunks.iter().map(|(p, d)| (*p, d.len())).collect();
        assert_eq!(
            sizes,
            vec![(1, BULK_CHUNK_BYTES), (1, 1000), (2, small.len())]
        );
        assert_eq!([&chunks[0].1[..], &chunks[1].1[..]].concat(), big);
        assert_eq!(chunks[2].1, small);

        // The first page cut short on disk: a local error naming the file.
        std::fs::write(&first_page, &big[..10]).unwrap();
        let (control, _control_rx) = mpsc::channel(8);
        let (bulk, _bulk_rx) = mpsc::channel(64);
        match send_job(&core, &LinkWriter { control, bulk }, &record).await {
            Err(SendError::Local(why)) => {
                assert!(why.contains("shorter than its recorded"), "{why}")
            }
            Err(SendError::LinkGone) => panic!("a short file is not the link's fault"),
            Ok(()) => panic!("a short file was sent"),
        }
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
