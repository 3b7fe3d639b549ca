//! What admins and `gateway status` see of the pair link: a plain value the
//! driver keeps up to date. No behaviour.

use std::net::SocketAddr;

use chrono::{DateTime, Utc};
use serde::Serialize;

/// What admins and `gateway status` see of the pair.
#[derive(Debug, Clone, Serialize)]
pub struct PairStatus {
    /// This server's pair address.
    pub listen: SocketAddr,
    /// The configured peer address.
    pub peer_address: String,
    /// The paired peer's instance name, once paired.
    pub peer: Option<String>,
    pub peer_server_id: Option<String>,
    pub peer_fingerprint: Option<String>,
    /// This server's own pair certificate fingerprint.
    pub fingerprint: String,
    /// `unpaired`, `unknown`, `live`, `dead` or `close`.
    pub state: &'static str,
    /// When `state` last changed.
    pub since: Option<DateTime<Utc>>,
    pub link: &'static str,
    /// The role the protocol gives this server.
    pub role: &'static str,
    /// Why the peer's messages are refused, when they are.
    pub refused: Option<String>,
    /// Whether a pairing code is open right now.
    pub pairing_open: bool,
    /// Configuration replication: versions, epochs, sync state, lag.
    #[serde(flatten)]
    pub replication: super::sync::SyncStatus,
}
