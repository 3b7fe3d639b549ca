//! Whether the peer is LIVE, DEAD or CLOSE, from the times its messages
//! arrive (seed 001's heartbeat states). Owns only that judgement: it reads
//! no clock (times are passed in), sends nothing and notifies nobody; the
//! node turns its transitions into events.

use serde::{Deserialize, Serialize};

/// The peer's state as this server sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Liveness {
    /// Nothing heard from the peer since this server started.
    Unknown,
    /// The peer is sending (seed 001: "the monitored server has gone live").
    Live,
    /// Nothing heard for the dead threshold after being LIVE.
    Dead,
    /// The peer announced a clean shutdown.
    Close,
}

impl Liveness {
    /// The word status output and notifications use.
    pub fn word(&self) -> &'static str {
        match self {
            Liveness::Unknown => "unknown",
            Liveness::Live => "live",
            Liveness::Dead => "dead",
            Liveness::Close => "close",
        }
    }
}

/// What kind of message arrived, as far as liveness cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heard {
    /// The handshake of a new connection: the peer (re)started or reconnected.
    Hello,
    /// The clean-shutdown announcement.
    Closing,
    /// Anything else: heartbeats, configuration traffic.
    Other,
}

/// The peer's liveness and when it last spoke, in the caller's milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerLiveness {
    state: Liveness,
    /// When the state last changed.
    since_ms: u64,
    last_heard_ms: Option<u64>,
}

impl PeerLiveness {
    /// Nothing heard yet.
    pub fn new(now_ms: u64) -> PeerLiveness {
        PeerLiveness {
            state: Liveness::Unknown,
            since_ms: now_ms,
            last_heard_ms: None,
        }
    }

    pub fn state(&self) -> Liveness {
        self.state
    }

    /// When the current state began.
    pub fn since_ms(&self) -> u64 {
        self.since_ms
    }

    pub fn last_heard_ms(&self) -> Option<u64> {
        self.last_heard_ms
    }

    /// A message from the peer arrived at `now_ms`. Returns the new state if
    /// it changed.
    ///
    /// Rules (seed 001):
    /// - a Closing announcement makes the peer CLOSE, whatever it was;
    /// - once CLOSE, only a Hello (the peer restarted or reconnected) makes
    ///   it LIVE again: a heartbeat that was already on its way when the
    ///   peer said goodbye must not revive it, or the missed beats after it
    ///   would turn a clean stop into a DEAD;
    /// - from UNKNOWN or DEAD, any message makes it LIVE.
    pub fn heard(&mut self, now_ms: u64, what: Heard) -> Option<Liveness> {
        let next = match (self.state, what) {
            (_, Heard::Closing) => Liveness::Close,
            (Liveness::Close, Heard::Other) => Liveness::Close,
            _ => Liveness::Live,
        };
        if next == Liveness::Live {
            self.last_heard_ms = Some(now_ms);
        }
        self.set(now_ms, next)
    }

    /// Time has passed. Returns DEAD if the peer just became DEAD.
    ///
    /// Rule (seed 001): DEAD only after LIVE, when nothing was heard for
    /// `dead_threshold_ms`. An UNKNOWN peer (never heard) and a CLOSE peer
    /// (said goodbye) are not watched, so a clean stop never reads as DEAD.
    pub fn tick(&mut self, now_ms: u64, dead_threshold_ms: u64) -> Option<Liveness> {
        if self.state != Liveness::Live {
            return None;
        }
        let last = self.last_heard_ms.unwrap_or(self.since_ms);
        if now_ms.saturating_sub(last) >= dead_threshold_ms {
            self.set(now_ms, Liveness::Dead)
        } else {
            None
        }
    }

    /// This server itself was not running for a while (stopped, frozen):
    /// the peer's silence meanwhile says nothing about the peer, so a LIVE
    /// peer gets a whole threshold again from `now_ms`.
    pub fn restart_wait(&mut self, now_ms: u64) {
        if self.state == Liveness::Live {
            self.last_heard_ms = Some(now_ms);
        }
    }

    /// When [`PeerLiveness::tick`] would next turn the peer DEAD, if it is
    /// watched at all.
    pub fn dead_at_ms(&self, dead_threshold_ms: u64) -> Option<u64> {
        (self.state == Liveness::Live)
            .then(|| self.last_heard_ms.unwrap_or(self.since_ms) + dead_threshold_ms)
    }

    fn set(&mut self, now_ms: u64, next: Liveness) -> Option<Liveness> {
        if next == self.state {
            return None;
        }
        self.state = next;
        self.since_ms = now_ms;
        Some(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEAD_MS: u64 = 300;

    #[test]
    fn dead_exactly_at_the_threshold_after_live() {
        let mut p = PeerLiveness::new(0);
        assert_eq!(p.tick(10_000, DEAD_MS), None, "never heard: not watched");
        assert_eq!(p.heard(1_000, Heard::Other), Some(Liveness::Live));
        assert_eq!(p.tick(1_299, DEAD_MS), None);
        assert_eq!(p.dead_at_ms(DEAD_MS), Some(1_300));
        assert_eq!(p.tick(1_300, DEAD_MS), Some(Liveness::Dead));
        assert_eq!(p.since_ms(), 1_300);
        assert_eq!(p.tick(2_000, DEAD_MS), None, "DEAD is reported once");
        assert_eq!(p.heard(2_100, Heard::Other), Some(Liveness::Live));
    }

    #[test]
    fn each_heartbeat_restarts_the_wait() {
        let mut p = PeerLiveness::new(0);
        p.heard(0, Heard::Hello);
        for t in (100..=1_000).step_by(100) {
            p.heard(t, Heard::Other);
            assert_eq!(p.tick(t + 299, DEAD_MS), None);
        }
        assert_eq!(p.state(), Liveness::Live);
    }

    #[test]
    fn close_ignores_missed_beats_and_late_heartbeats() {
        let mut p = PeerLiveness::new(0);
        p.heard(0, Heard::Hello);
        assert_eq!(p.heard(50, Heard::Closing), Some(Liveness::Close));
        // A heartbeat sent before the goodbye, delivered after it.
        assert_eq!(p.heard(60, Heard::Other), None);
        assert_eq!(p.tick(60_000, DEAD_MS), None);
        assert_eq!(p.state(), Liveness::Close);
        // The peer restarts: its handshake makes it LIVE, and it is watched
        // again.
        assert_eq!(p.heard(70_000, Heard::Hello), Some(Liveness::Live));
        assert_eq!(p.tick(70_300, DEAD_MS), Some(Liveness::Dead));
    }
}
