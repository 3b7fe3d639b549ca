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

/// The digest of the device token a request carries, as the store keys
/// devices by it.
fn device_token_digest(headers: &HeaderMap) -> Result<String, ApiError> {
    let token = bearer(headers)?;
    // A token of the wrong shape cannot exist in the store: refuse it
    // without a database round trip.
    if !tokens::looks_like_device_token(token) {
        return Err(ApiError::DeviceTokenInvalid);
    }
    Ok(tokens::token_digest(token))
}

impl FromRequestParts<Arc<Core>> for AnyDevice {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, core: &Arc<Core>) -> Result<Self, ApiError> {
        let digest = device_token_digest(&parts.headers)?;
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
        approved(device).map(ApprovedDevice)
    }
}

fn approved(device: Device) -> Result<Device, ApiError> {
    match device.status {
        DeviceStatus::Approved => Ok(device),
        DeviceStatus::Pending => Err(ApiError::DevicePending(device.id.to_string())),
        DeviceStatus::Revoked => Err(ApiError::DeviceRevoked),
    }
}

/// Refuses a device beyond the license's seats.
pub async fn check_seat(core: &Core, device: &Device) -> Result<(), ApiError> {
    let id = device.id;
    let rank = core.data.run(move |s| s.seat_rank(id)).await?;
    seat_held(core, rank)
}

/// Whether a device of this approval rank holds one of the license's seats.
fn seat_held(core: &Core, rank: Option<u64>) -> Result<(), ApiError> {
    let seats = core.role.snapshot().seats();
    match rank {
        Some(rank) if rank <= u64::from(seats) => Ok(()),
        _ => Err(ApiError::SeatLimit { seats }),
    }
}

/// The checks of a job upload — the device's token and approval, its seat,
/// the user session — with the store asked once (one trip to the blocking
/// pool, where the separate checks take three). Refusals come in the order
/// the separate checks give them.
pub async fn admit_job_upload(
    core: &Core,
    headers: &HeaderMap,
) -> Result<(Device, Session), ApiError> {
    let digest = device_token_digest(headers)?;
    // Checked before the store is asked; its refusal waits its turn.
    let claims = session_claims(core, headers, true);
    let session_id = claims.as_ref().ok().map(|(s, _)| s.id.to_string());
    let (device, rank, ended) = core
        .data
        .run(move |s| {
            let Some(device) = s.device_by_token(&digest)? else {
                return Ok((None, None, None));
            };
            let rank = s.seat_rank(device.id)?;
            let ended = match session_id {
                Some(id) => s.session_end(&id)?,
                None => None,
            };
            Ok((Some(device), rank, ended))
        })
        .await?;
    let device = approved(device.ok_or(ApiError::DeviceTokenInvalid)?)?;
    seat_held(core, rank)?;
    let (session, replay_seq) = claims?;
    session_standing(core, &session, &device, replay_seq, ended)?;
    Ok((device, session))
}

/// Verifies the user session sent with a request by `device`.
pub async fn verify_session(
    core: &Core,
    headers: &HeaderMap,
    device: &Device,
) -> Result<Session, ApiError> {
    let (session, replay_seq) = session_claims(core, headers, false)?;
    let sid = session.id.to_string();
    let ended = core.data.run(move |s| s.session_end(&sid)).await?;
    session_standing(core, &session, device, replay_seq, ended)?;
    Ok(session)
}

/// What the session token says, checked without the store: its signature,
/// and its expiry unless it comes with a job replayed from the device's
/// outbox (`X-Scan-Job-Seq`, read for a job upload only), whose number is
/// returned beside it.
fn session_claims(
    core: &Core,
    headers: &HeaderMap,
    job_upload: bool,
) -> Result<(Session, Option<u64>), ApiError> {
    let job_seq = if job_upload {
        count_header(headers, JOB_SEQ_HEADER)?
    } else {
        None
    };
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
    let session = match job_seq {
        Some(_) => config
            .session_key
            .verify_signature(token)
            .map_err(|e| ApiError::SessionInvalid(e.to_string()))?,
        None => config.session_key.verify(token, now).map_err(|e| match e {
            SessionError::Expired(_) => ApiError::SessionExpired(e.to_string()),
            other => ApiError::SessionInvalid(other.to_string()),
        })?,
    };
    Ok((session, job_seq))
}

/// Whether a session with valid claims may act at `device` now: its user
/// still configured, started at this device, and not ended by logout
/// (`ended`: the store's record of its logout, with the jobs it scanned) —
/// or, for a job replayed from the outbox, within what the replay rules
/// allow.
fn session_standing(
    core: &Core,
    session: &Session,
    device: &Device,
    replay_seq: Option<u64>,
    ended: Option<Option<u64>>,
) -> Result<(), ApiError> {
    let config = core.active_config()?;
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
    let window = core.settings.instance.outbox_replay_window_secs as i64;
    let expired_for = core.clock.now().timestamp() - session.exp;
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
    Ok(())
}
