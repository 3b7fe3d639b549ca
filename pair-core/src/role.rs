//! What a server is in the pair and what it may write: license activations,
//! the durable protocol state, the published role and the configuration
//! write permit. Pure values: nothing here persists, sends or reads a clock.
//!
//! Only [`crate::node`] decides roles; this module gives it the types and
//! makes the write permit impossible to forge outside the crate.

use serde::{Deserialize, Serialize};

use crate::epoch::Epoch;

/// What the admin's license activation made of this server (seed 002: an
/// `03` key makes the primary, an `04` key the secondary).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ActivationKind {
    /// No active license: the server takes part in nothing.
    None,
    /// Activated with an `03` key.
    Primary,
    /// Activated with an `04` key.
    Secondary,
}

/// The configuration a server holds: the version and the epoch of the
/// primary that wrote it. No two different configuration changes may ever
/// carry the same stamp; that is what the epoch in it is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ConfigStamp {
    pub version: u64,
    pub epoch: Epoch,
}

impl ConfigStamp {
    /// The empty configuration every server starts from.
    pub const EMPTY: ConfigStamp = ConfigStamp {
        version: 0,
        epoch: Epoch::ZERO,
    };
}

/// The protocol state a server must keep across restarts. Recovery after a
/// crash restores exactly this and nothing else, so everything the safety
/// rules depend on lives here.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Persisted {
    /// The newest epoch this server has seen anywhere. Never decreases, also
    /// across restarts: a promotion takes the epoch after it.
    pub highest_seen: Epoch,
    /// The current license activation.
    pub activation: ActivationKind,
    /// The epoch this server took when it was last activated as primary
    /// (or raised itself to, see the undone-promotion rule in
    /// [`crate::node`]). Meaningful only while `activation` is `Primary`.
    pub term: Epoch,
    /// Set when a primary of a newer epoch fenced this one; cleared only by
    /// a new activation.
    pub fenced_by: Option<Epoch>,
    /// The configuration this server holds.
    pub config: ConfigStamp,
    /// How many times this server took over its peer's jobs. Persisted
    /// before the jobs move, so the peer can be told of every one.
    #[serde(default)]
    pub takeovers: u64,
    /// How many of the peer's takeovers of this server's jobs were applied
    /// here (the jobs marked as the peer's).
    #[serde(default)]
    pub takeovers_applied: u64,
}

impl Default for Persisted {
    /// A server that has never been activated and holds no configuration.
    fn default() -> Persisted {
        Persisted {
            highest_seen: Epoch::ZERO,
            activation: ActivationKind::None,
            term: Epoch::ZERO,
            fenced_by: None,
            config: ConfigStamp::EMPTY,
            takeovers: 0,
            takeovers_applied: 0,
        }
    }
}

impl Persisted {
    /// The role these durable facts give.
    pub fn role(&self) -> Role {
        match (self.activation, self.fenced_by) {
            (ActivationKind::None, _) => Role::Inactive,
            (ActivationKind::Secondary, _) => Role::Secondary,
            (ActivationKind::Primary, None) => Role::Primary { term: self.term },
            (ActivationKind::Primary, Some(by)) => Role::Fenced {
                term: self.term,
                by,
            },
        }
    }
}

/// A server's role as it tells its peer and the rest of the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    /// No active license.
    Inactive,
    /// Read-only for configuration; takes jobs.
    Secondary,
    /// Owns configuration writes during `term`.
    Primary { term: Epoch },
    /// Was primary during `term` until it met the primary of the newer epoch
    /// `by`. Takes jobs as a secondary would, never writes configuration.
    Fenced { term: Epoch, by: Epoch },
}

impl Role {
    /// A primary that has not been fenced: the only role that may write
    /// configuration.
    pub fn is_primary(&self) -> bool {
        matches!(self, Role::Primary { .. })
    }

    /// One word for status output and the health summary.
    pub fn word(&self) -> &'static str {
        match self {
            Role::Inactive => "inactive",
            Role::Secondary => "secondary",
            Role::Primary { .. } => "primary",
            Role::Fenced { .. } => "fenced",
        }
    }
}

/// Permission to commit one configuration change under `stamp`. Only the
/// node makes one (the field is private), after it has checked that this
/// server is an unfenced primary and after the epoch in the stamp has been
/// handed out for persisting, so holding one is the proof the write is
/// allowed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WritePermit {
    stamp: ConfigStamp,
}

impl WritePermit {
    pub(crate) fn new(stamp: ConfigStamp) -> WritePermit {
        WritePermit { stamp }
    }

    /// The stamp the change must be stored and replicated under.
    pub fn stamp(&self) -> ConfigStamp {
        self.stamp
    }
}

/// Why a configuration write was refused. Each message names the rule and
/// what to do.
#[derive(Debug, Clone, PartialEq, Eq, Hash, thiserror::Error)]
pub enum WriteRefused {
    /// Seed 002: a server activated with an `04` key cannot update data.
    #[error(
        "read_only_secondary: this server is the secondary and cannot change configuration; \
         make the change on the primary, or promote this server \
         (gateway license promote) if the primary is gone"
    )]
    ReadOnlySecondary,
    /// A primary that met the primary of a newer epoch stepped down.
    #[error(
        "fenced: server {} was promoted at epoch {}; reactivate this server \
         with an 04 key to rejoin as secondary",
        by.server.short(),
        by.number
    )]
    Fenced { by: Epoch },
    /// No license is active.
    #[error("not_activated: this server has no active license; activate it with an 03 or 04 key")]
    NotActivated,
    /// The server announced a clean shutdown and takes no more changes.
    #[error("stopping: this server is shutting down")]
    Stopping,
}

impl WriteRefused {
    /// A stable machine-readable code for API errors.
    pub fn code(&self) -> &'static str {
        match self {
            WriteRefused::ReadOnlySecondary => "read_only_secondary",
            WriteRefused::Fenced { .. } => "fenced",
            WriteRefused::NotActivated => "not_activated",
            WriteRefused::Stopping => "stopping",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::epoch::ServerId;

    #[test]
    fn role_follows_activation_and_fence() {
        let a = ServerId::from_u128(0xa);
        let mut p = Persisted::default();
        assert_eq!(p.role(), Role::Inactive);
        p.activation = ActivationKind::Secondary;
        assert_eq!(p.role(), Role::Secondary);
        p.activation = ActivationKind::Primary;
        p.term = Epoch::new(1, a);
        assert!(p.role().is_primary());
        p.fenced_by = Some(Epoch::new(2, ServerId::from_u128(0xb)));
        assert!(!p.role().is_primary());
        assert_eq!(p.role().word(), "fenced");
    }

    #[test]
    fn refusals_name_the_rule_and_the_way_out() {
        let by = Epoch::new(3, ServerId::from_u128(0xb));
        let text = WriteRefused::Fenced { by }.to_string();
        assert!(text.starts_with("fenced: server 00000000 was promoted at epoch 3"));
        assert!(text.contains("04 key"));
        assert!(
            WriteRefused::ReadOnlySecondary
                .to_string()
                .contains("gateway license promote")
        );
        assert_eq!(
            WriteRefused::ReadOnlySecondary.code(),
            "read_only_secondary"
        );
    }
}
