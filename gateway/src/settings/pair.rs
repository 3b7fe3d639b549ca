//! The `[pair]` table of an instance: this server's side of the pair link
//! (addresses, heartbeat timing, replication, acknowledgement), validated
//! once. Local to each server, never replicated.

use super::types::{PairLinkSettings, PeerAck};
use super::{RawInstance, SettingsError, address, invalid, number, text};

/// The pair link is on when `pair.listen` is set; then `pair.peer` is
/// required, and the dead threshold must leave room for a few missed beats.
pub(super) fn validate_pair(
    raw: &RawInstance,
    key: &dyn Fn(&'static str) -> String,
) -> Result<Option<PairLinkSettings>, SettingsError> {
    let listen = text(&raw.pair_listen, key, "pair_listen")?;
    let peer = text(&raw.pair_peer, key, "pair_peer")?;
    let Some(listen) = listen else {
        if peer.is_some() {
            return Err(invalid(
                key("pair_peer"),
                "is set but pair.listen is not: set both to pair this server, or neither",
            ));
        }
        return Ok(None);
    };
    let listen = address(&listen, key("pair_listen"))?;
    let peer = peer.ok_or_else(|| {
        invalid(
            key("pair_peer"),
            "is required with pair.listen: the other server's pair address, e.g. 10.0.0.2:9443",
        )
    })?;
    let port_ok = peer
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
    if !port_ok {
        return Err(invalid(
            key("pair_peer"),
            format!("`{peer}` is not HOST:PORT (e.g. gw-b.example.net:9443)"),
        ));
    }
    let heartbeat_interval_ms = number(
        &raw.pair_heartbeat_interval_ms,
        key,
        "pair_heartbeat_interval_ms",
        100,
        10..=60_000,
    )?;
    let dead_threshold_ms = number(
        &raw.pair_dead_threshold_ms,
        key,
        "pair_dead_threshold_ms",
        600,
        30..=600_000,
    )?;
    if dead_threshold_ms < 3 * heartbeat_interval_ms {
        return Err(invalid(
            key("pair_dead_threshold_ms"),
            format!(
                "{dead_threshold_ms} is less than three heartbeat intervals ({}); one late beat would make the peer DEAD",
                3 * heartbeat_interval_ms
            ),
        ));
    }
    // Seed 004's ReplicationPeriod: how often the secondary asks again when
    // it sees it is behind (a push is at once).
    let replication_period_secs = number(
        &raw.pair_replication_period_secs,
        key,
        "pair_replication_period_secs",
        30,
        1..=86_400,
    )?;
    let max_clock_skew_ms = number(
        &raw.pair_max_clock_skew_ms,
        key,
        "pair_max_clock_skew_ms",
        1_000,
        10..=600_000,
    )?;
    let ack = match text(&raw.pair_ack, key, "pair_ack")?.as_deref() {
        None | Some("peer") => PeerAck::Peer,
        Some("local") => PeerAck::Local,
        Some(other) => {
            return Err(invalid(
                key("pair_ack"),
                format!(
                    "`{other}` is neither \"peer\" (a job is acknowledged once the peer stored a copy) nor \"local\" (once it is durable here)"
                ),
            ));
        }
    };
    let peer_ack_timeout_ms = number(
        &raw.pair_peer_ack_timeout_ms,
        key,
        "pair_peer_ack_timeout_ms",
        2_000,
        10..=60_000,
    )?;
    let replica_retention_secs = number(
        &raw.pair_replica_retention_secs,
        key,
        "pair_replica_retention_secs",
        3_600,
        0..=30 * 86_400,
    )?;
    let handover_drain_secs = number(
        &raw.pair_handover_drain_secs,
        key,
        "pair_handover_drain_secs",
        10,
        0..=600,
    )?;
    Ok(Some(PairLinkSettings {
        replica_retention_secs,
        handover_drain_secs,
        listen,
        peer,
        heartbeat_interval_ms,
        dead_threshold_ms,
        replication_period_secs,
        max_clock_skew_ms,
        configured_time_zone: None,
        ack,
        peer_ack_timeout_ms,
    }))
}
