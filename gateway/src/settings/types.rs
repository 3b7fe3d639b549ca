//! The typed, validated settings an instance runs with, and the value types
//! they are made of. Only `settings` builds them; everything else reads them.

use crate::names::InstanceName;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Scalar;

/// A size in bytes, written as a number or as text with a unit (`20MiB`, `1 GB`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Scalar::deserialize(d)? {
            Scalar::Int(n) if n > 0 => Ok(ByteSize(n as u64)),
            Scalar::Int(n) => Err(serde::de::Error::custom(format!(
                "size must be positive, found {n}"
            ))),
            Scalar::Text(s) => ByteSize::parse(&s).map_err(serde::de::Error::custom),
            other => Err(serde::de::Error::custom(format!(
                "expected a size such as 20MiB or 1048576, found {}",
                other.found()
            ))),
        }
    }
}

impl ByteSize {
    /// Parses `123`, `20MiB`, `20 MB`, `1.5GiB`, `512k`.
    pub fn parse(text: &str) -> Result<ByteSize, String> {
        let t = text.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let num: f64 = num
            .parse()
            .map_err(|_| format!("`{text}` is not a size; write e.g. 20MiB or 1048576"))?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" => 1_000,
            "kib" => 1 << 10,
            "m" | "mb" => 1_000_000,
            "mib" => 1 << 20,
            "g" | "gb" => 1_000_000_000,
            "gib" => 1 << 30,
            other => {
                return Err(format!(
                    "unknown size unit `{other}` in `{text}`; use B, KB, KiB, MB, MiB, GB or GiB"
                ));
            }
        };
        let bytes = (num * mult as f64).round();
        if !(1.0..=(u64::MAX as f64)).contains(&bytes) {
            return Err(format!("size `{text}` is out of range"));
        }
        Ok(ByteSize(bytes as u64))
    }
}

impl std::fmt::Display for ByteSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b = self.0;
        if b >= 1 << 30 && b.is_multiple_of(1 << 30) {
            write!(f, "{} GiB", b >> 30)
        } else if b >= 1 << 20 && b.is_multiple_of(1 << 20) {
            write!(f, "{} MiB", b >> 20)
        } else if b >= 1 << 10 && b.is_multiple_of(1 << 10) {
            write!(f, "{} KiB", b >> 10)
        } else {
            write!(f, "{b} bytes")
        }
    }
}

/// Everything an instance needs, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    pub instance: InstanceSettings,
    /// Extra vendor public keys (base64) trusted beside the built-in one.
    pub trusted_vendor_keys: Vec<String>,
    pub site: SiteConfig,
    /// Where the settings came from, for status output.
    pub source: String,
}

/// What kind of connections a listener takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ListenerKind {
    /// HTTPS.
    Https,
    /// Plain HTTP; only allowed on loopback addresses.
    Plain,
    /// HTTPS behind an L4 load balancer that prefixes each connection with a
    /// PROXY protocol (v1 or v2) header carrying the client's address.
    ProxyHttps,
}

/// One address to listen on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ListenerSettings {
    pub addr: SocketAddr,
    pub kind: ListenerKind,
}

/// Where the TLS certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsSource {
    /// PEM files given by the admin.
    Files { cert: PathBuf, key: PathBuf },
    /// Generated on first start in the data directory.
    SelfSigned,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

/// Local settings of one instance.
#[derive(Debug, Clone)]
pub struct InstanceSettings {
    pub name: InstanceName,
    pub data_dir: PathBuf,
    pub listeners: Vec<ListenerSettings>,
    pub tls: TlsSource,
    pub workers: usize,
    pub time_zone: chrono_tz::Tz,
    pub log_format: LogFormat,
    pub log_level: String,
    pub tesseract: PathBuf,
    pub ocr_parallelism: usize,
    pub max_attempts: u32,
    /// Uploads streaming in at once; one more waits for a slot.
    pub max_uploads_in_flight: usize,
    /// How long an upload waits for a slot before it is answered `503 busy`.
    pub upload_slot_wait: Duration,
    pub step_timeout: Duration,
    pub maintenance_retry_after_secs: u32,
    pub login_failures_per_minute: u32,
    /// How long after a session expired a device may still replay the jobs
    /// scanned in it from its outbox (server time).
    pub outbox_replay_window_secs: u64,
    /// The pair link, when this server is one of a pair.
    pub pair: Option<PairLinkSettings>,
}

/// This server's side of the pair link (`[pair]` of its instance table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairLinkSettings {
    /// The pair port: its own listener, not behind the load balancer.
    pub listen: SocketAddr,
    /// The other server's pair address, `HOST:PORT`.
    pub peer: String,
    pub heartbeat_interval_ms: u64,
    pub dead_threshold_ms: u64,
    /// How often a secondary that is behind asks for the configuration
    /// again (seed 004's ReplicationPeriod).
    pub replication_period_secs: u64,
    /// The largest clock difference between the two servers that still
    /// lets configuration sync (seed 002: same date and time zone).
    pub max_clock_skew_ms: u64,
    /// The instance's `time_zone` when it is configured; otherwise the
    /// system's zone is read at each check.
    pub configured_time_zone: Option<String>,
    /// When a device's job is acknowledged.
    pub ack: PeerAck,
    /// How long an acknowledgement waits for the peer's copy (`ack =
    /// "peer"`) before it is given on this server's disk alone.
    pub peer_ack_timeout_ms: u64,
    /// How long a replica's pages are kept after its owner reported the
    /// job done (the row stays, as history).
    pub replica_retention_secs: u64,
    /// How long a clean stop lets running steps finish and waits for the
    /// peer to take the jobs handed to it, before it stops anyway.
    pub handover_drain_secs: u64,
}

/// When a job is acknowledged to the device (`[pair] ack`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerAck {
    /// Once the peer stored a copy too (or the wait for it ran out, or the
    /// link is down: then `"replicated": false`).
    Peer,
    /// Once the job is durable on this server.
    Local,
}

/// Size and count limits on uploads (shared configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub max_job_bytes: u64,
    pub max_pages: u32,
    pub max_page_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_job_bytes: 512 << 20,
            max_pages: 500,
            max_page_bytes: 64 << 20,
        }
    }
}

/// A user who may log in at a panel.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UserEntry {
    pub password_hash: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
}

/// The configuration the pair shares, as read from the file.
#[derive(Debug, Clone, PartialEq)]
pub struct SiteConfig {
    pub limits: Limits,
    pub session_ttl_secs: u64,
    pub users: BTreeMap<String, UserEntry>,
    /// Workflow definitions as written; the plugin registry validates them
    /// at start-up (it knows which plugins and settings exist).
    pub workflows: BTreeMap<String, serde_json::Value>,
    /// The `[notify]` section as written (checked at load); shared like the
    /// rest of the site configuration.
    pub notify: Option<serde_json::Map<String, serde_json::Value>>,
}
