//! The sending side of the job replication stream: offers every job this
//! server accepted that the peer has no copy of, in the acceptor's order
//! and within the window, and the news of jobs the peer holds a copy of;
//! learns from the driver what the peer answered.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use pair_core::ServerId;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::{
    Answer, DISK_FULL_BACKOFF, LOCAL_RETRY, LinkSlot, NEWS_RESEND, NEWS_WINDOW, RESCAN,
    STATE_BATCH, StreamState, WINDOW, WINDOW_BYTES,
};
use crate::core::Core;
use crate::pair::connection::{BULK_CHUNK_BYTES, LinkWriter};
use crate::pair::frame;
use crate::pair::wire::{JobOffer, OfferedPage, Wire};
use crate::store::{JobRecord, JobState, NewPage};

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

#[cfg(test)]
mod tests {
    use super::super::test_support::started_core;
    use super::*;

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
}
