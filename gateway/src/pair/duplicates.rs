//! One job id accepted by both servers of the pair (while they were cut
//! off, or before the peer saw this server's copy): which server keeps it,
//! and what the other does with its copy. Decided by the server an offer
//! reaches ([`decide`]); the offering server takes the answer
//! ([`on_answer`]).
//!
//! Rules owned here:
//! * the server that has started delivering the job keeps it, else the one
//!   with the smaller server id; the decision is the same whichever side
//!   makes it first, and making it again gives the same answer;
//! * the other copy is superseded: never processed, its reason says why,
//!   counted; a copy a worker took meanwhile counts as started;
//! * both started: neither can be stopped; counted, logged and sent to
//!   admins (the partition exception of the delivery guarantee).

use pair_core::ServerId;
use uuid::Uuid;

use crate::core::Core;
use crate::store::{JobRecord, JobState};

/// Which server keeps a job id both servers accepted (`mine` is this
/// server's copy, offered by `sender` who has or has not `started` it):
/// the one that started delivering it, else the smaller server id; `None`
/// when both started. The copy that does not keep it is superseded here
/// when it is this server's; a copy a worker took in the meantime counts
/// as started. Already decided earlier: the same answer again.
pub async fn decide(
    core: &Core,
    mine: JobRecord,
    sender: ServerId,
    theirs_started: bool,
) -> Result<Option<ServerId>, crate::data::DataError> {
    let id = mine.id;
    let me = mine.acceptor_server;
    if let Some(keeper) = core.data.run(move |s| s.superseded_by(id)).await? {
        return Ok(Some(keeper));
    }
    let mine_started = mine.state != JobState::Received;
    let mut keeper = match (mine_started, theirs_started) {
        (true, true) => None,
        (true, false) => Some(me),
        (false, true) => Some(sender),
        (false, false) => Some(me.min(sender)),
    };
    if keeper == Some(sender) {
        let reason = superseded_reason(core, sender);
        let superseded = core
            .data
            .run(move |s| s.supersede_job(id, sender, &reason))
            .await?;
        if !superseded {
            // A worker took this copy after all.
            keeper = if theirs_started { None } else { Some(me) };
        }
    }
    match keeper {
        None => {
            record_both(core, id, sender).await?;
        }
        Some(k) if k == sender => {
            tracing::warn!(job = %id, "the same job id was accepted by both servers; the peer keeps it, this copy is superseded");
            core.metrics.pair_event("job_superseded");
        }
        Some(_) => {
            tracing::warn!(job = %id, "the same job id was accepted by both servers; this server keeps it");
        }
    }
    Ok(keeper)
}

/// The sender's side of [`decide`]: the peer says who keeps a
/// job this server offered.
pub async fn on_answer(
    core: &Core,
    id: Uuid,
    me: ServerId,
    peer: ServerId,
    keeper: Option<ServerId>,
) -> Result<(), crate::data::DataError> {
    let decided = core.data.run(move |s| s.superseded_by(id)).await?;
    if decided.is_some() {
        // This server already superseded its copy (it decided on the peer's
        // offer first): nothing more to do.
        return Ok(());
    }
    match keeper {
        Some(k) if k == peer => {
            let reason = superseded_reason(core, peer);
            let superseded = core
                .data
                .run(move |s| s.supersede_job(id, peer, &reason))
                .await?;
            if superseded {
                tracing::warn!(job = %id, "the same job id was accepted by both servers; the peer keeps it, this copy is superseded");
                core.metrics.pair_event("job_superseded");
            } else {
                record_both(core, id, peer).await?;
            }
        }
        Some(k) if k == me => {
            // The peer superseded its own copy of the same id: the id is
            // held there, and is no longer offered.
            core.data.run(move |s| s.mark_replicated(id)).await?;
        }
        _ => record_both(core, id, peer).await?,
    }
    Ok(())
}

fn superseded_reason(core: &Core, keeper: ServerId) -> String {
    format!(
        "superseded: the same job id was also accepted by the other server of the pair ({}) while the two were cut off; that server keeps and delivers it, {} never processes this copy",
        keeper.short(),
        core.name()
    )
}

/// Both servers accepted job `id` and started delivering it (exception 2):
/// recorded on the job and, the first time, in the admin's pair events,
/// the log and the notifications.
async fn record_both(core: &Core, id: Uuid, other: ServerId) -> Result<(), crate::data::DataError> {
    let text = format!(
        "job {id} was accepted by both servers while they were cut off and both had started delivering it: its destinations may receive it twice, with the same idempotency key"
    );
    let (at, detail) = (core.clock.now(), text.clone());
    let first = core
        .data
        .run(move |s| {
            let first = s.record_both_delivered(id, other)?;
            if first {
                s.record_pair_event(at, "job_delivered_by_both", Some(id), None, &detail)?;
            }
            Ok(first)
        })
        .await?;
    if first {
        tracing::warn!(event = "job_delivered_by_both", "{text}");
        core.metrics.pair_event("job_delivered_by_both");
        super::notify::send(core, "job_delivered_by_both", text);
    }
    Ok(())
}
