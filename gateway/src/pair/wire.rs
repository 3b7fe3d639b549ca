//! What travels in one frame of the pair link: the protocol's messages
//! (`pair_core::Message`, decided on by the node) and the driver's own
//! exchanges, which the protocol does not decide on: the clock and time-zone
//! probe that admits configuration sync (seed 002), the conflict report a
//! fenced server hands to the new primary, and the job replication stream
//! (a job offered, its pages in chunks, the peer's answer).

use chrono::{DateTime, Utc};
use pair_core::{Message, ServerId};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::peer_ack::{EndedSession, KnownJob};
use crate::store::conflicts::Conflict;
use crate::store::job_owners::{JobNews, TakenJob};

/// One frame's content.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Wire {
    /// A protocol message for the node.
    Protocol(Message),
    /// "What is your clock and zone?": `sent_ms` is the sender's wall clock
    /// (milliseconds since the Unix epoch), echoed in the reply.
    ClockProbe { sent_ms: u64 },
    /// The answer, sent at once: the replier's wall clock when it answered,
    /// its instance name and its IANA zone (`None`: it could not determine
    /// its system zone).
    ClockReply {
        sent_ms: u64,
        wall_ms: u64,
        instance: String,
        time_zone: Option<String>,
    },
    /// Configuration changes the sender made as a primary that was since
    /// replaced, for the receiver's conflict report.
    Conflicts(Vec<Conflict>),
    /// A job the sender accepted, for the receiver's replica; its pages
    /// follow as [`Wire::JobChunk`]s in order, then [`Wire::JobEnd`].
    JobOffer(Box<JobOffer>),
    /// Page data (base64), at most one bulk chunk.
    JobChunk { job: Uuid, page: u32, data: String },
    /// The last chunk of the offered job was sent.
    JobEnd { job: Uuid },
    /// The receiver stored the job durably as a replica.
    JobStored { job: Uuid, seq: u64 },
    /// The receiver did not store the job (a digest that does not match, a
    /// full disk); the sender offers it again later.
    JobRefused {
        job: Uuid,
        reason: String,
        disk_full: bool,
    },
    /// A job the receiver holds a copy of changed on the sender: its
    /// progress (state, step attempts) and owner, with the sender's
    /// revision. Sent until acknowledged.
    JobNews(Box<JobNews>),
    /// The receiver took the news (or knows better) up to `rev`.
    JobNewsStored { job: Uuid, rev: u64 },
    /// The sender took over the receiver's jobs (`count` takeovers in
    /// all): the receiver records them as the sender's, never runs them,
    /// and says so in its heartbeats before it gets a lease again.
    TakenOver { count: u64, jobs: Vec<TakenJob> },
    /// Sessions ended by logout on the sender: the receiver ends them too.
    /// Sent at each logout, and all of them on every new connection.
    SessionsEnded(Vec<EndedSession>),
    /// The receiver accepted the offered job id itself too (while the two
    /// were cut off): `keeper` is the server that keeps the job, the other
    /// one's copy is superseded; `None` when both had started delivering
    /// it (the partition exception, reported).
    JobDuplicate { job: Uuid, keeper: Option<ServerId> },
    /// A page for the receiver's OCR engine (the sender has none).
    OcrRequest {
        id: Uuid,
        languages: String,
        dpi: Option<u32>,
        /// The page image, base64.
        image: String,
    },
    /// The recognised page, or why not.
    OcrAnswer { id: Uuid, answer: PageAnswer },
    /// "Do you hold this job id?" (a device submits an id the sender does
    /// not know).
    JobQuery { job: Uuid },
    /// The answer: what the receiver holds under that id, if anything.
    JobKnown { job: Uuid, known: Option<KnownJob> },
}

/// A job as the replication stream offers it: everything its row holds
/// and each page's size and digest.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobOffer {
    pub id: Uuid,
    pub device_id: Uuid,
    pub user: String,
    pub workflow: String,
    pub manifest: String,
    pub manifest_sha256: String,
    pub bytes: u64,
    pub accepted_by: String,
    pub accepted_role: String,
    pub accepted_epoch: u64,
    pub client_addr: Option<String>,
    pub received_at: DateTime<Utc>,
    pub acceptor: ServerId,
    /// The acceptor's sequence number (the order of the stream).
    pub seq: u64,
    /// Whether the acceptor has started delivering it (decides which server
    /// keeps an id both accepted).
    pub started: bool,
    /// Done at the acceptor before it was copied: its pages are gone, so
    /// only the offer and the end travel. The peer keeps no copy; it only
    /// settles an id it accepted too (see `pair::duplicates`).
    #[serde(default)]
    pub done: bool,
    pub pages: Vec<OfferedPage>,
}

/// One page of an offered job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OfferedPage {
    pub seq: u32,
    pub file_name: String,
    pub format: String,
    pub bytes: u64,
    pub sha256: String,
}

/// The peer's answer to one page sent for OCR.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum PageAnswer {
    /// The page's searchable PDF (base64) and its text.
    Done {
        pdf: String,
        text: String,
    },
    Failed {
        why: String,
        permanent: bool,
    },
}
