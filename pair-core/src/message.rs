//! The messages two paired servers exchange, as plain values. This module
//! owns their shape only: it does not encode, frame, send or authenticate
//! them (the gateway's pair link does), and it decides nothing about them
//! (the node does).

use serde::{Deserialize, Serialize};

use crate::epoch::{Epoch, ServerId};
use crate::ownership::LeaseNews;
use crate::role::{ConfigStamp, Role};

/// An opaque configuration payload: a change or a whole snapshot, encoded by
/// the gateway. The protocol only stamps, orders and forwards it.
pub type Payload = Vec<u8>;

/// One message between the pair. Every message carries the sender's id, the
/// newest epoch it has seen and its role, so that any message, a heartbeat
/// included, can fence a stale primary or raise the receiver's epoch.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Message {
    pub from: ServerId,
    /// The sender's highest seen epoch. A receiver that has seen a newer one
    /// refuses the message's content.
    pub epoch: Epoch,
    pub role: Role,
    pub body: Body,
}

/// What a [`Message`] says.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Body {
    /// The first message on every new connection.
    Hello(Hello),
    /// "I am alive", every heartbeat interval, with the configuration the
    /// sender holds so that a secondary can see it is behind (the pull that
    /// heals a missed push), and the lease news of job ownership (see
    /// [`crate::ownership`]).
    Heartbeat {
        config: ConfigStamp,
        #[serde(default)]
        lease: LeaseNews,
    },
    /// The sender is stopping cleanly: the receiver marks it CLOSE and
    /// ignores missed heartbeats until it is LIVE again.
    Closing,
    /// A configuration change pushed by the primary.
    ConfigChange(ConfigChange),
    /// The secondary applied the configuration `stamp`.
    ConfigAck { stamp: ConfigStamp },
    /// The secondary holds `have` and cannot apply the primary's changes on
    /// top of it: it asks for the whole configuration.
    SnapshotRequest { have: ConfigStamp },
    /// The primary's whole configuration at `stamp`.
    ConfigSnapshot {
        stamp: ConfigStamp,
        payload: Payload,
    },
}

/// The handshake on a new connection.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Hello {
    /// The sender's instance name, for messages people read.
    pub instance: String,
    /// Servers of different major versions never pair.
    pub software_major: u32,
    pub config: ConfigStamp,
    /// How many takeovers of the sender's jobs by the receiver the sender
    /// has applied (the receiver announces any it has not).
    #[serde(default)]
    pub takeovers_seen: u64,
}

/// One configuration change: applied on top of `prev` it gives `stamp`.
/// `prev` lets the secondary tell "next in line" from "a different line"
/// (a partition-time change of a primary that was since replaced).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ConfigChange {
    pub stamp: ConfigStamp,
    pub prev: ConfigStamp,
    pub payload: Payload,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_through_json() {
        let a = ServerId::from_u128(0xa);
        let m = Message {
            from: a,
            epoch: Epoch::new(2, a),
            role: Role::Primary {
                term: Epoch::new(2, a),
            },
            body: Body::ConfigChange(ConfigChange {
                stamp: ConfigStamp {
                    version: 4,
                    epoch: Epoch::new(2, a),
                },
                prev: ConfigStamp {
                    version: 3,
                    epoch: Epoch::new(1, a),
                },
                payload: b"workflow".to_vec(),
            }),
        };
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<Message>(&json).unwrap(), m);
    }
}
