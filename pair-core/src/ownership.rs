//! Job ownership across the pair: the lease each server holds from its
//! peer, the permit it gives the pipeline, and the takeover of a silent
//! peer's jobs (seed 001: on DEAD the survivor starts the work; on LIVE it
//! stops). This module owns the rules and the bookkeeping; the node feeds it
//! messages and time, and the driver carries out what it asks for (the
//! store moves the jobs).
//!
//! # The rules
//!
//! - Each job has one owner, the server that accepted it, until a takeover
//!   or a handover moves it. Every server holds copies of its peer's jobs,
//!   so a server may start a step of any job only while it holds a
//!   **permit** ([`Permit`]).
//! - **The lease.** Every heartbeat asks the peer for a lease with the
//!   sender's own clock reading (`ask_ms`). The peer grants it by echoing
//!   that reading in one of its heartbeats; the holder's lease then runs
//!   until `ask_ms + lease_ms` *on its own clock*. The ask was sent before
//!   the grant, so the holder's lease always ends before
//!   `grant sent + lease_ms` on the granter's clock.
//! - **Takeover.** The granter takes over the peer's unfinished jobs only
//!   when the peer is silent (DEAD, or never heard for twice the DEAD
//!   threshold since this server started) and its last grant is
//!   certainly over: `last grant sent + lease_ms + margin` (the margin
//!   covers clocks that run at slightly different rates). A server that
//!   starts assumes it granted at that moment, since it cannot know what it
//!   granted before a crash. Each takeover is counted; the count is
//!   persisted before the jobs move.
//! - **No lease while the peer has not learned of a takeover.** The granter
//!   grants again only once the peer's messages say it has applied every
//!   takeover (`takeovers_seen`); until then it keeps announcing them.
//!   A stalled owner that wakes therefore finds its lease over and gets no
//!   new one before it has read which of its jobs were taken.
//! - **Alone.** A server whose peer is silent, or has announced a clean
//!   stop (CLOSE), goes on with its own jobs without a lease: a crashed
//!   peer never freezes them. If the peer was only cut off, it may have
//!   taken over the same jobs: that is the partition exception of the
//!   delivery guarantee, found and reported when the two meet again.
//! - **Stalls.** A node that was not stepped for the DEAD threshold or more
//!   (SIGSTOP, a frozen VM) restarts its judgement of the peer's silence:
//!   what the peer sent meanwhile is still in the socket, and it must be
//!   read before the peer can be called DEAD or the server may go on alone.

use serde::{Deserialize, Serialize};

/// What a heartbeat carries for job ownership.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct LeaseNews {
    /// The sender asks for a lease: its own clock when it sent this beat.
    #[serde(default)]
    pub ask_ms: Option<u64>,
    /// A lease for the receiver's ask sent at this time (the receiver's
    /// clock, echoed).
    #[serde(default)]
    pub grant_ms: Option<u64>,
    /// How many takeovers of the sender's jobs by the receiver the sender
    /// has applied.
    #[serde(default)]
    pub takeovers_seen: u64,
}

/// Whether this server may start a step of a job now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Permit {
    /// No peer is pinned: every job here is this server's alone.
    Unpaired,
    /// The peer granted a lease that runs until `until_ms` (this server's
    /// clock).
    Leased { until_ms: u64 },
    /// The peer is silent or stopped cleanly since `since_ms`: this server
    /// goes on with the jobs it owns.
    Alone { since_ms: u64 },
    /// The peer is heard but has not granted a lease (it is waiting for
    /// this server to learn of its takeovers, or the first grant is on its
    /// way): no step may start.
    Wait,
}

impl Permit {
    /// Whether a step may start at `now_ms`.
    pub fn allows(&self, now_ms: u64) -> bool {
        match self {
            Permit::Unpaired | Permit::Alone { .. } => true,
            Permit::Leased { until_ms } => now_ms < *until_ms,
            Permit::Wait => false,
        }
    }

    /// One word for status output.
    pub fn word(&self) -> &'static str {
        match self {
            Permit::Unpaired => "unpaired",
            Permit::Leased { .. } => "leased",
            Permit::Alone { .. } => "alone",
            Permit::Wait => "waiting",
        }
    }
}

/// The lease and takeover bookkeeping of one node, both as holder (of the
/// peer's lease) and as granter (of the peer's). Volatile: only the
/// takeover counts are persisted (in [`crate::Persisted`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Leases {
    /// Holder: the lease from the peer runs until then.
    pub until_ms: Option<u64>,
    /// Granter: the peer's latest ask on this connection, to echo.
    pub pending_ask: Option<u64>,
    /// Granter: when a grant last left (or this node started).
    pub last_grant_ms: u64,
    /// What the peer last said about the takeovers it applied.
    pub peer_seen: Option<u64>,
    /// Granter: when the takeovers were last announced on this connection.
    pub announced_ms: Option<u64>,
    /// Granter: the jobs of the current silence were taken over.
    pub took_over: bool,
    /// When the wait for a never-heard peer began (start, or a stall).
    pub waiting_since_ms: u64,
}

impl Leases {
    pub fn new(now_ms: u64) -> Leases {
        Leases {
            until_ms: None,
            pending_ask: None,
            last_grant_ms: now_ms,
            peer_seen: None,
            announced_ms: None,
            took_over: false,
            waiting_since_ms: now_ms,
        }
    }

    /// A new connection, or none: asks and announcements belong to one
    /// connection.
    pub fn connection_changed(&mut self) {
        self.pending_ask = None;
        self.announced_ms = None;
    }

    /// The holder's side of a grant: `grant_ms` echoes one of this
    /// server's asks. A reading from the future is not one of them.
    pub fn granted(&mut self, grant_ms: u64, now_ms: u64, lease_ms: u64) {
        if grant_ms <= now_ms {
            let until = grant_ms + lease_ms;
            self.until_ms = Some(self.until_ms.map_or(until, |u| u.max(until)));
        }
    }

    /// When the granter's last grant is certainly over on the holder.
    pub fn grant_over_at_ms(&self, lease_ms: u64, margin_ms: u64) -> u64 {
        self.last_grant_ms + lease_ms + margin_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_runs_from_the_ask_and_only_grows() {
        let mut l = Leases::new(0);
        l.granted(1_000, 1_050, 500);
        assert_eq!(l.until_ms, Some(1_500));
        // An older echo arriving late does not shorten it.
        l.granted(900, 1_100, 500);
        assert_eq!(l.until_ms, Some(1_500));
        // A reading from the future was never an ask of this server.
        l.granted(5_000, 1_200, 500);
        assert_eq!(l.until_ms, Some(1_500));
    }

    #[test]
    fn permits_say_when_a_step_may_start() {
        assert!(Permit::Unpaired.allows(0));
        assert!(Permit::Alone { since_ms: 0 }.allows(10));
        assert!(Permit::Leased { until_ms: 10 }.allows(9));
        assert!(!Permit::Leased { until_ms: 10 }.allows(10));
        assert!(!Permit::Wait.allows(0));
    }
}
