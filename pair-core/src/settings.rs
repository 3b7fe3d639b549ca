//! The validated settings a pair node runs with: its identity and the
//! heartbeat timing. Parsing configuration files and environment overrides
//! is the gateway's job; this module only refuses impossible values once,
//! so the node never re-checks them.

use crate::epoch::ServerId;

/// Why settings were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    /// A zero interval would send heartbeats in a busy loop.
    #[error("heartbeat_interval_ms must be at least 1")]
    ZeroInterval,
    /// DEAD must take more than one missed heartbeat, or every late beat is
    /// a false DEAD.
    #[error(
        "dead_threshold_ms ({dead_threshold_ms}) must be more than heartbeat_interval_ms \
         ({heartbeat_interval_ms}); three or more intervals avoid false DEAD under load"
    )]
    ThresholdTooShort {
        heartbeat_interval_ms: u64,
        dead_threshold_ms: u64,
    },
    /// A zero pull period would ask for snapshots in a busy loop.
    #[error("replication_period_ms must be at least 1")]
    ZeroPullPeriod,
    /// The server's own id cannot be the peer.
    #[error("the pinned peer id is this server's own id")]
    PeerIsSelf,
}

/// Heartbeat and replication timing, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Timing {
    heartbeat_interval_ms: u64,
    dead_threshold_ms: u64,
    replication_period_ms: u64,
}

impl Timing {
    /// Checked timing: a positive interval, a DEAD threshold longer than one
    /// interval, a positive pull period (seed 004's ReplicationPeriod: how
    /// often a secondary that is behind asks again for the configuration).
    pub fn new(
        heartbeat_interval_ms: u64,
        dead_threshold_ms: u64,
        replication_period_ms: u64,
    ) -> Result<Timing, SettingsError> {
        if heartbeat_interval_ms == 0 {
            return Err(SettingsError::ZeroInterval);
        }
        if dead_threshold_ms <= heartbeat_interval_ms {
            return Err(SettingsError::ThresholdTooShort {
                heartbeat_interval_ms,
                dead_threshold_ms,
            });
        }
        if replication_period_ms == 0 {
            return Err(SettingsError::ZeroPullPeriod);
        }
        Ok(Timing {
            heartbeat_interval_ms,
            dead_threshold_ms,
            replication_period_ms,
        })
    }

    pub fn heartbeat_interval_ms(&self) -> u64 {
        self.heartbeat_interval_ms
    }

    pub fn dead_threshold_ms(&self) -> u64 {
        self.dead_threshold_ms
    }

    pub fn replication_period_ms(&self) -> u64 {
        self.replication_period_ms
    }

    /// How long a lease granted by the peer runs on the holder's clock,
    /// from its ask: the DEAD threshold, so waiting for a silent owner's
    /// lease adds little to noticing that it is DEAD.
    pub fn lease_ms(&self) -> u64 {
        self.dead_threshold_ms
    }

    /// What the granter adds to a lease before it takes the holder's jobs:
    /// a tenth of the lease, at least 10 ms, for clocks that run at
    /// slightly different rates (real clocks differ by far less than 1 %).
    pub fn lease_margin_ms(&self) -> u64 {
        (self.lease_ms() / 10).max(10)
    }

    /// How long a peer never heard since this server started (or woke from
    /// a stall) counts as still coming: twice the DEAD threshold.
    pub fn first_contact_ms(&self) -> u64 {
        self.dead_threshold_ms.saturating_mul(2)
    }
}

/// Deliberate protocol faults, so that tests and the model check can prove
/// they would notice each one. Never set outside tests.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Faults {
    /// Hand durable state to the driver only on the next tick (a write-back
    /// cache), so a promotion writes before its epoch is on disk.
    pub persist_on_tick_only: bool,
    /// Accept messages and changes from epochs older than the highest seen.
    pub accept_stale_epochs: bool,
    /// A primary that meets a newer primary keeps going instead of stepping
    /// down.
    pub never_fence: bool,
    /// A primary fenced by any newer epoch, even a secondary's (the undone
    /// promotion then leaves the pair without a primary).
    pub fence_on_any_newer_epoch: bool,
    /// Take a silent peer's jobs as soon as it is silent, without waiting
    /// for the last lease granted to it to be over.
    pub takeover_without_lease_wait: bool,
}

/// Everything a node needs to know about itself.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PairSettings {
    server: ServerId,
    instance: String,
    software_major: u32,
    timing: Timing,
    peer: Option<ServerId>,
    faults: Faults,
}

impl PairSettings {
    pub fn new(
        server: ServerId,
        instance: impl Into<String>,
        software_major: u32,
        timing: Timing,
    ) -> PairSettings {
        PairSettings {
            server,
            instance: instance.into(),
            software_major,
            timing,
            peer: None,
            faults: Faults::default(),
        }
    }

    /// Accept messages only from this server (the pinned peer). Without it
    /// the node takes whoever the authenticated link connects.
    pub fn with_peer(mut self, peer: ServerId) -> Result<PairSettings, SettingsError> {
        if peer == self.server {
            return Err(SettingsError::PeerIsSelf);
        }
        self.peer = Some(peer);
        Ok(self)
    }

    #[doc(hidden)]
    pub fn with_faults(mut self, faults: Faults) -> PairSettings {
        self.faults = faults;
        self
    }

    pub fn server(&self) -> ServerId {
        self.server
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    pub fn software_major(&self) -> u32 {
        self.software_major
    }

    pub fn timing(&self) -> Timing {
        self.timing
    }

    pub fn peer(&self) -> Option<ServerId> {
        self.peer
    }

    pub(crate) fn faults(&self) -> Faults {
        self.faults
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn impossible_timing_is_refused() {
        assert_eq!(Timing::new(0, 300, 1000), Err(SettingsError::ZeroInterval));
        assert!(matches!(
            Timing::new(100, 100, 1000),
            Err(SettingsError::ThresholdTooShort { .. })
        ));
        assert_eq!(Timing::new(100, 300, 0), Err(SettingsError::ZeroPullPeriod));
        assert!(Timing::new(100, 300, 1000).is_ok());
    }

    #[test]
    fn a_server_cannot_pin_itself() {
        let a = ServerId::from_u128(1);
        let s = PairSettings::new(a, "gw-a", 1, Timing::new(100, 300, 1000).unwrap());
        assert_eq!(s.with_peer(a), Err(SettingsError::PeerIsSelf));
    }
}
