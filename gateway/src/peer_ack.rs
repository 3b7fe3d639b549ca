//! The replicated acknowledgement, as the intake and the pair link share it:
//! the intake waits here for the peer's copy of a job it just committed;
//! the pair link says here whether its link is up, learns here that a job
//! waits to be sent, and reports here when the peer stored one. A logout
//! passes here on its way to the peer too (a session ends on both servers),
//! and so does the intake's question whether the peer already holds a job
//! id (a device resubmitting to the other server gets the original
//! acknowledgement).
//!
//! Rules owned here:
//! * a wait is bounded (the caller gives the limit) and never starts while
//!   the link is down: a closed link degrades at once;
//! * a waiter is registered before the job is committed, so an answer that
//!   comes quickly is never missed;
//! * a waiting acknowledgement is released as soon as the peer says its
//!   copy is stored (it says so only once the copy is durable), before
//!   this server records it;
//! * this module only passes news between the two sides: whether a job is
//!   replicated is the store's record (`replica_state`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, oneshot};
use uuid::Uuid;

/// Between the intake and the pair link.
#[derive(Default)]
pub struct PeerAcks {
    waiters: Mutex<HashMap<Uuid, oneshot::Sender<()>>>,
    link_up: AtomicBool,
    /// Jobs accepted here that the peer has no copy of (as last counted).
    unreplicated: AtomicU64,
    /// A job was acknowledged without the peer's copy, and the stream has
    /// not caught up since.
    degraded: AtomicBool,
    /// Wakes the sender of the replication stream.
    pending: Notify,
    /// Sessions ended here, not yet handed to the pair link.
    ended: Mutex<Vec<EndedSession>>,
    /// Questions to the peer about job ids, waiting for its answer.
    queries: Mutex<HashMap<Uuid, Vec<oneshot::Sender<Option<KnownJob>>>>>,
    /// How questions reach the peer (the pair link, once it runs).
    asker: std::sync::OnceLock<Box<dyn Fn(Uuid) + Send + Sync>>,
    /// Jobs found unreplicated at start-up: not processed until the peer
    /// has seen them (it may hold the same id) or the deadline passed.
    held: Mutex<Held>,
    /// Delivery steps waiting for the peer to acknowledge their job's news:
    /// job → the highest revision acknowledged since the wait began.
    news_waits: Mutex<HashMap<Uuid, u64>>,
    news_acked: std::sync::Condvar,
}

#[derive(Default)]
struct Held {
    ids: std::collections::HashSet<Uuid>,
    until: Option<std::time::Instant>,
}

/// What a server says about a job id it holds: enough to answer the
/// device with the original acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KnownJob {
    pub id: Uuid,
    pub device_id: Uuid,
    pub manifest_sha256: String,
    pub accepted_by: String,
    pub accepted_role: String,
    pub accepted_epoch: u64,
    pub received_at: chrono::DateTime<chrono::Utc>,
    pub pages: u32,
    pub bytes: u64,
    /// Whether the other server holds a copy too.
    pub replicated: bool,
}

impl KnownJob {
    pub fn of(job: &crate::store::JobRecord) -> KnownJob {
        KnownJob {
            id: job.id,
            device_id: job.device_id,
            manifest_sha256: job.manifest_sha256.clone(),
            accepted_by: job.accepted_by.clone(),
            accepted_role: job.accepted_role.clone(),
            accepted_epoch: job.accepted_epoch,
            received_at: job.received_at,
            pages: job.page_count,
            bytes: job.bytes,
            replicated: job.replica_state != crate::store::ReplicaState::Local,
        }
    }

    /// A job about to be committed here: no peer holds it yet.
    pub fn of_new(job: &crate::store::NewJob) -> KnownJob {
        KnownJob {
            id: job.id,
            device_id: job.device_id,
            manifest_sha256: job.manifest_sha256.clone(),
            accepted_by: job.accepted_by.clone(),
            accepted_role: job.accepted_role.clone(),
            accepted_epoch: job.accepted_epoch,
            received_at: job.received_at,
            pages: job.pages.len() as u32,
            bytes: job.bytes,
            replicated: false,
        }
    }
}

/// A session ended by logout, as the pair exchanges it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EndedSession {
    pub session: String,
    /// When the session would have expired (Unix seconds, as signed in it).
    pub expires_at: i64,
    /// The jobs the device said it scanned in the session.
    pub jobs_scanned: Option<u64>,
}

/// A registered wait for the peer's copy of one job.
pub struct PeerWait {
    id: Uuid,
    rx: oneshot::Receiver<()>,
}

/// A question to the peer about one job id, asked and not yet answered.
pub struct Question<'a> {
    acks: &'a PeerAcks,
    id: Uuid,
    rx: oneshot::Receiver<Option<KnownJob>>,
    deadline: tokio::time::Instant,
}

impl Question<'_> {
    /// The peer's answer, waiting until the question's deadline at most.
    /// `None`: no answer in time (or the link went); `Some(None)`: the
    /// peer does not hold the job.
    pub async fn answer(mut self) -> Option<Option<KnownJob>> {
        tokio::time::timeout_at(self.deadline, &mut self.rx)
            .await
            .ok()?
            .ok()
    }
}

impl Drop for Question<'_> {
    /// An unanswered question leaves nothing behind: its slot goes, and
    /// the id's entry with it once no other question waits on it.
    fn drop(&mut self) {
        self.rx.close();
        let mut queries = self.acks.queries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(waiting) = queries.get_mut(&self.id) {
            waiting.retain(|tx| !tx.is_closed());
            if waiting.is_empty() {
                queries.remove(&self.id);
            }
        }
    }
}

impl PeerAcks {
    /// Whether the pair link is connected now.
    pub fn link_up(&self) -> bool {
        self.link_up.load(Ordering::Acquire)
    }

    /// The pair link reports its connection.
    pub fn set_link_up(&self, up: bool) {
        self.link_up.store(up, Ordering::Release);
    }

    /// Registers a wait for `id`, before the job is committed.
    pub fn register(&self, id: Uuid) -> PeerWait {
        let (tx, rx) = oneshot::channel();
        self.waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, tx);
        PeerWait { id, rx }
    }

    /// Forgets a wait that will not be needed (the commit failed, or the
    /// id was a replay).
    pub fn cancel(&self, wait: PeerWait) {
        self.waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&wait.id);
    }

    /// A job was committed: the replication stream has work (and the count
    /// of jobs without a copy grows until the next recount says better).
    pub fn job_committed(&self) {
        self.unreplicated.fetch_add(1, Ordering::AcqRel);
        self.pending.notify_one();
    }

    /// A logout here: the pair link passes it to the peer.
    pub fn session_ended(&self, ended: EndedSession) {
        self.ended
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(ended);
        self.pending.notify_one();
    }

    /// The logouts not yet handed to the peer.
    pub fn take_ended_sessions(&self) -> Vec<EndedSession> {
        std::mem::take(&mut *self.ended.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Holds `ids` from the pipeline until the peer has seen each (see
    /// [`PeerAcks::release`]) or `limit` passed, whichever comes first.
    pub fn hold(&self, ids: impl IntoIterator<Item = Uuid>, limit: Duration) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.ids.extend(ids);
        held.until = Some(std::time::Instant::now() + limit);
    }

    /// The peer has seen job `id` (stored it, or the two decided who keeps
    /// it): the pipeline may take it.
    pub fn release(&self, id: Uuid) {
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .ids
            .remove(&id);
    }

    /// Releases every held job (there is no peer to ask).
    pub fn release_all(&self) {
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .ids
            .clear();
    }

    /// The jobs the pipeline must not take now.
    pub fn held(&self) -> Vec<Uuid> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if held.until.is_some_and(|t| std::time::Instant::now() >= t) {
            held.ids.clear();
            held.until = None;
        }
        held.ids.iter().copied().collect()
    }

    /// The pair link says how a question reaches the peer. Set once.
    pub fn set_asker(&self, asker: Box<dyn Fn(Uuid) + Send + Sync>) {
        let _ = self.asker.set(asker);
    }

    /// Asks the peer whether it holds job `id`; the answer is awaited
    /// later ([`Question::answer`]), at most `limit` after this call, so
    /// the asker can do other work meanwhile. `None`: nobody to ask (no
    /// pair link, or its link is down).
    pub fn ask(&self, id: Uuid, limit: Duration) -> Option<Question<'_>> {
        let asker = self.asker.get()?;
        if !self.link_up() {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        self.queries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id)
            .or_default()
            .push(tx);
        asker(id);
        Some(Question {
            acks: self,
            id,
            rx,
            deadline: tokio::time::Instant::now() + limit,
        })
    }

    /// The peer's answer about job `id`.
    pub fn answered(&self, id: Uuid, known: Option<KnownJob>) {
        let waiting = self
            .queries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id)
            .unwrap_or_default();
        for tx in waiting {
            let _ = tx.send(known.clone());
        }
    }

    /// Jobs have news for the peer (a takeover, a handover): the stream
    /// sends it now rather than at its next round.
    pub fn wake_stream(&self) {
        self.pending.notify_one();
    }

    /// The sender of the replication stream waits here for work.
    pub async fn wait_for_jobs(&self) {
        self.pending.notified().await;
    }

    /// The peer acknowledged job `id`'s news up to `rev` (recorded in the
    /// store first): a delivery step waiting for it may start.
    pub fn news_acknowledged(&self, id: Uuid, rev: u64) {
        let mut waits = self.news_waits.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(acked) = waits.get_mut(&id) {
            *acked = (*acked).max(rev);
            self.news_acked.notify_all();
        }
    }

    /// Blocks (call it on the blocking pool) until the peer acknowledged
    /// job `id`'s news up to `rev`, `limit` passed, or `go_on` says to stop
    /// waiting (`Some(answer)`, looked at every 50 ms). `known` says
    /// whether the store already records the acknowledgement (it may have
    /// come before the wait was registered); it is looked at once after
    /// registering and then every half second.
    pub fn wait_news_acknowledged(
        &self,
        id: Uuid,
        rev: u64,
        limit: Duration,
        known: impl Fn() -> bool,
        go_on: impl Fn() -> Option<bool>,
    ) -> bool {
        let started = std::time::Instant::now();
        let mut waits = self.news_waits.lock().unwrap_or_else(|p| p.into_inner());
        waits.entry(id).or_insert(0);
        drop(waits);
        let mut last_look = std::time::Instant::now();
        let mut answer = known();
        while !answer {
            if let Some(a) = go_on() {
                answer = a;
                break;
            }
            if started.elapsed() >= limit {
                break;
            }
            self.wake_stream();
            let waits = self.news_waits.lock().unwrap_or_else(|p| p.into_inner());
            let (waits, _) = self
                .news_acked
                .wait_timeout_while(waits, Duration::from_millis(50), |w| {
                    w.get(&id).is_none_or(|acked| *acked < rev)
                })
                .unwrap_or_else(|p| p.into_inner());
            answer = waits.get(&id).is_some_and(|acked| *acked >= rev);
            drop(waits);
            if !answer && last_look.elapsed() >= Duration::from_millis(500) {
                last_look = std::time::Instant::now();
                answer = known();
            }
        }
        self.news_waits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        answer
    }

    /// The peer stored its copy of `id`.
    pub fn stored(&self, id: Uuid) {
        let waiter = self
            .waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        if let Some(tx) = waiter {
            let _ = tx.send(());
        }
    }

    /// Waits at most `limit` for the peer's copy; `true` when it came.
    /// Returns at once with `false` while the link is down.
    pub async fn wait(&self, wait: PeerWait, limit: Duration) -> bool {
        if !self.link_up() {
            self.cancel(wait);
            self.degraded.store(true, Ordering::Release);
            return false;
        }
        let id = wait.id;
        let stored = matches!(tokio::time::timeout(limit, wait.rx).await, Ok(Ok(())));
        if !stored {
            self.waiters
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
            self.degraded.store(true, Ordering::Release);
        }
        stored
    }

    /// The pair link's latest count of jobs the peer has no copy of; at
    /// zero the stream has caught up and replication is no longer
    /// degraded.
    pub fn set_unreplicated(&self, n: u64) {
        self.unreplicated.store(n, Ordering::Release);
        if n == 0 {
            self.degraded.store(false, Ordering::Release);
        }
    }

    /// Whether a job was acknowledged without the peer's copy and the
    /// stream has not caught up since (`replication: degraded`).
    pub fn degraded(&self) -> bool {
        self.degraded.load(Ordering::Acquire)
    }

    pub fn unreplicated(&self) -> u64 {
        self.unreplicated.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn a_wait_ends_with_the_copy_the_limit_or_at_once_without_a_link() {
        let acks = PeerAcks::default();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        // Link down: no wait at all.
        let w = acks.register(a);
        let t = std::time::Instant::now();
        assert!(!acks.wait(w, Duration::from_secs(5)).await);
        assert!(t.elapsed() < Duration::from_secs(1));

        acks.set_link_up(true);
        let w = acks.register(a);
        // The answer may come before the wait starts: it is not missed.
        acks.stored(a);
        assert!(acks.wait(w, Duration::from_secs(5)).await);

        let w = acks.register(b);
        assert!(!acks.wait(w, Duration::from_millis(20)).await);
        assert!(
            acks.waiters.lock().unwrap().is_empty(),
            "no waiter left behind"
        );
        assert!(acks.degraded());
        acks.set_unreplicated(1);
        assert!(acks.degraded(), "not caught up yet");
        acks.set_unreplicated(0);
        assert!(!acks.degraded());

        // Held jobs: released one by one, or all at the deadline.
        let (x, y) = (Uuid::new_v4(), Uuid::new_v4());
        acks.hold([x, y], Duration::from_millis(50));
        acks.release(x);
        assert_eq!(acks.held(), vec![y]);
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(acks.held().is_empty(), "the hold is bounded");
    }

    #[tokio::test]
    async fn a_question_is_answered_after_other_work_or_leaves_nothing_behind() {
        let acks = PeerAcks::default();
        let asked = Arc::new(Mutex::new(Vec::new()));
        let log = asked.clone();
        acks.set_asker(Box::new(move |id| log.lock().unwrap().push(id)));
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        // Link down: nobody is asked.
        assert!(acks.ask(a, Duration::from_secs(1)).is_none());
        assert!(asked.lock().unwrap().is_empty());

        acks.set_link_up(true);
        // Asked at once; the answer that comes before it is awaited is kept.
        let q = acks.ask(a, Duration::from_secs(5)).expect("the link is up");
        assert_eq!(*asked.lock().unwrap(), vec![a]);
        acks.answered(a, None);
        assert_eq!(q.answer().await, Some(None));

        // The limit runs from the question, not from the wait.
        let q = acks.ask(b, Duration::from_millis(30)).unwrap();
        tokio::time::sleep(Duration::from_millis(40)).await;
        let t = std::time::Instant::now();
        assert_eq!(q.answer().await, None);
        assert!(t.elapsed() < Duration::from_millis(20));

        // Two questions about one id: dropping one leaves the other's slot.
        let q1 = acks.ask(a, Duration::from_secs(5)).unwrap();
        let q2 = acks.ask(a, Duration::from_secs(5)).unwrap();
        drop(q1);
        assert_eq!(acks.queries.lock().unwrap()[&a].len(), 1);
        drop(q2);
        assert!(
            acks.queries.lock().unwrap().is_empty(),
            "no question left behind"
        );
    }
}
