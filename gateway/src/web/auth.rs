//! Who is calling: the device (by its bearer token) and, for work done on a
//! person's behalf, the user session (a signed token in `X-Scan-Session`).

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::HeaderMap;
use axum::http::request::Parts;

use crate::core::Core;
use crate::security::{Session, SessionError, tokens};
use crate::store::{Device, DeviceStatus};
use crate::web::error::ApiError;

pub const SESSION_HEADER: &str = "x-scan-session";
/// A job's number within the session it was scanned under (from 1), sent
/// with jobs a device replays from its outbox.
pub const JOB_SEQ_HEADER: &str = "x-scan-job-seq";
/// At logout: how many jobs the session scanned.
pub const SESSION_JOBS_HEADER: &str = "x-scan-session-jobs";

/// A whole number in a header, from 1 up to a million.
pub fn count_header(headers: &HeaderMap, name: &str) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get(name) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|n| (1..=1_000_000).contains(n))
        .map(Some)
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "the {name} header must be a whole number from 1 to 1000000"
            ))
        })
}

/// A device that presented a known token, whatever its approval state.
pub struct AnyDevice(pub Device);

/// A device that presented a known token and is approved.
pub struct ApprovedDevice(pub Device);

fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or(ApiError::DeviceTokenMissing)?
        .to_str()
        .map_err(|_| ApiError::BadRequest("the Authorization header is not ASCII text".into()))?;
    let (scheme, token) = value.split_once(' ').ok_or(ApiError::DeviceTokenMissing)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(ApiError::DeviceTokenMissing);
    }
    Ok(token.trim())
}

impl FromRequestParts<Arc<Core>> for AnyDevice {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, core: &Arc<Core>) -> Result<Self, ApiError> {
        let token = bearer(&parts.headers)?;
        // A token of the wrong shape cannot exist in the store: refuse it
        // without a database round trip.
        if !tokens::looks_like_device_token(token) {
            return Err(ApiError::DeviceTokenInvalid);
        }
        let digest = tokens::token_digest(token);
        let device = core
            .data
            .run(move |s| s.device_by_token(&digest))
            .await?
            .ok_or(ApiError::DeviceTokenInvalid)?;
        Ok(AnyDevice(device))
    }
}

impl FromRequestParts<Arc<Core>> for ApprovedDevice {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, core: &Arc<Core>) -> Result<Self, ApiError> {
        let AnyDevice(device) = AnyDevice::from_request_parts(parts, core).await?;
        match device.status {
            DeviceStatus::Approved => Ok(ApprovedDevice(device)),
            DeviceStatus::Pending => Err(ApiError::DevicePending(device.id.to_string())),
            DeviceStatus::Revoked => Err(ApiError::DeviceRevoked),
        }
    }
}

/// Refuses a device beyond the license's seats.
pub async fn check_seat(core: &Core, device: &Device) -> Result<(), ApiError> {
    let seats = core.role.snapshot().seats();
    let id = device.id;
    let rank = core.data.run(move |s| s.seat_rank(id)).await?;
    match rank {
        Some(rank) if rank <= u64::from(seats) => Ok(()),
        _ => Err(ApiError::SeatLimit { seats }),
    }
}

/// Verifies the user session sent with a request by `device`.
pub async fn verify_session(
    core: &Core,
    headers: &HeaderMap,
    device: &Device,
) -> Result<Session, ApiError> {
    verify_session_for(core, headers, device, None).await
}

/// Verifies the session of a job submission: as [`verify_session`], and a
/// job with an `X-Scan-Job-Seq` may be a replay from the device's outbox.
pub async fn verify_job_session(
    core: &Core,
    headers: &HeaderMap,
    device: &Device,
) -> Result<Session, ApiError> {
    let seq = count_header(headers, JOB_SEQ_HEADER)?;
    verify_session_for(core, headers, device, seq).await
}

async fn verify_session_for(
    core: &Core,
    headers: &HeaderMap,
    device: &Device,
    job_seq: Option<u64>,
) -> Result<Session, ApiError> {
    let token = headers
        .get(SESSION_HEADER)
        .ok_or(ApiError::SessionMissing)?
        .to_str()
        .map_err(|_| {
            ApiError::SessionInvalid("the session header is not ASCII text: log in again".into())
        })?;
    let config = core.active_config()?;
    let now = core.clock.now();
    // A job replayed from the device's outbox may come after its session
    // ended: by logout (then only jobs numbered up to the count the device
    // gave at logout) or by expiry (then only within the replay window).
    // Everything else needs a live session.
    let replay = match job_seq {
        Some(seq) => Some((
            seq,
            config
                .session_key
                .verify_signature(token)
                .map_err(|e| ApiError::SessionInvalid(e.to_string()))?,
        )),
        None => None,
    };
    let replay_seq = replay.as_ref().map(|(seq, _)| *seq);
    let session = match replay {
        Some((_, session)) => session,
        None => config.session_key.verify(token, now).map_err(|e| match e {
            SessionError::Expired(_) => ApiError::SessionExpired(e.to_string()),
            other => ApiError::SessionInvalid(other.to_string()),
        })?,
    };
    // A session is only as good as its user: one removed from the
    // configuration (or never in it, e.g. a token signed before the key was
    // shared with a server that does not know the user) ends at once instead
    // of lasting until it expires.
    if !config.users.contains_key(&session.user) {
        return Err(ApiError::SessionInvalid(
            "the session's user is no longer configured on this server: log in again".into(),
        ));
    }
    if session.device != device.id {
        return Err(ApiError::SessionInvalid(
            "the session was started at another device: log in at this device".into(),
        ));
    }
    let sid = session.id.to_string();
    let ended = core.data.run(move |s| s.session_end(&sid)).await?;
    let window = core.settings.instance.outbox_replay_window_secs as i64;
    let expired_for = now.timestamp() - session.exp;
    match (replay_seq, ended) {
        (None, None) => {}
        (None, Some(_)) => {
            return Err(ApiError::SessionExpired(
                "the session was ended by logging out: log in again".into(),
            ));
        }
        (Some(_), _) if expired_for >= window => {
            return Err(ApiError::SessionExpired(format!(
                "the session this job was scanned in expired more than {window} seconds ago; \
                 it can no longer be replayed: scan it again"
            )));
        }
        (Some(seq), Some(scanned)) if scanned.is_none_or(|n| seq > n) => {
            return Err(ApiError::SessionExpired(format!(
                "the session was ended by logging out and job {seq} was not among the {} it scanned: log in again",
                scanned.map_or_else(|| "jobs".to_owned(), |n| n.to_string())
            )));
        }
        (Some(_), _) => {}
    }
    Ok(session)
}
