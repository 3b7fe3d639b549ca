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
    /// Job ownership across the pair.
    pub jobs: JobsStatus,
}

/// Who may run jobs, and what moved between the two servers.
#[derive(Debug, Clone, Default, Serialize)]
pub struct JobsStatus {
    /// `leased` (the peer granted a lease), `alone` (the peer is silent or
    /// stopped), `waiting` (no lease yet: the pipeline waits) or
    /// `unpaired`.
    pub permit: &'static str,
    /// What is left of the lease, in milliseconds.
    pub lease_left_ms: Option<u64>,
    /// Takeovers of the peer's jobs made by this server.
    pub takeovers: u64,
    /// Takeovers of this server's jobs by the peer, applied here.
    pub takeovers_applied: u64,
    /// Jobs this server took over that are not finished yet.
    pub taken_over_open: u64,
    /// How many times each kind of event was recorded (`takeover`,
    /// `taken_over`, `handover`, `possible_duplicate`, ...).
    pub events: std::collections::BTreeMap<String, u64>,
    /// Workflows that deliver into each server's own `{data_dir}` folder:
    /// a job one server took over lands in its own folder, and the shared
    /// folder's refusal of a second copy does not reach them.
    pub per_server_folders: Vec<String>,
}
