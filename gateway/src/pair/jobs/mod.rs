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
//!   [`crate::pair::duplicates`];
//! * both tasks run apart from the driver, so disk and network waits never
//!   delay heartbeats.
//!
//! The two sides live apart: [`send`] offers this server's jobs and their
//! news, [`receive`] stores the peer's; this module holds what both share
//! (the window, the messages the driver passes them) and the janitor of
//! replicas past their retention.

use std::sync::Arc;
use std::time::Duration;

use pair_core::ServerId;
use tokio::sync::watch;
use uuid::Uuid;

use super::connection::LinkWriter;
use super::wire::JobOffer;
use crate::core::Core;

mod receive;
mod send;

pub use receive::receive_loop;
pub use send::send_loop;

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

#[cfg(test)]
mod test_support {
    use super::*;

    /// A server's core with its data service started, its data under `dir`.
    pub async fn started_core(dir: &std::path::Path) -> Arc<Core> {
        let core = Core::for_tests_in(dir, "gw-b", "");
        core.data.start().await.unwrap();
        core
    }
}
