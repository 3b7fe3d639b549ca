//! Device API handlers other than job submission: registration, login and
//! logout, workflows, job status. See `docs/API.md`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use crate::changes::{Applied, Change};
use crate::core::Core;
use crate::names::DeviceName;
use crate::role::ReadOnly;
use crate::security::{PasswordHash, passwords, tokens};
use crate::site::User;
use crate::store::{DeviceStatus, JobRecord, StepRow};
use crate::web::ApiJson;
use crate::web::auth::{
    AnyDevice, ApprovedDevice, SESSION_JOBS_HEADER, check_seat, count_header, verify_session,
};
use crate::web::error::ApiError;
use crate::web::redact::without_server_paths;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    name: String,
    #[serde(default)]
    serial: Option<String>,
}

pub async fn register(
    State(core): State<Arc<Core>>,
    ApiJson(req): ApiJson<RegisterRequest>,
) -> Result<impl IntoResponse, ApiError> {
    core.check_accepting()?;
    DeviceName::parse(&req.name).map_err(ApiError::BadRequest)?;
    if let Some(serial) = &req.serial
        && (serial.len() > 64 || serial.chars().any(char::is_control))
    {
        return Err(ApiError::BadRequest(
            "serial must be at most 64 characters without control characters".into(),
        ));
    }
    // Registration is a configuration change: only the primary makes it.
    let role = core.role.snapshot();
    if let Err(read_only) = role.config_write(core.name()) {
        return Err(match read_only {
            ReadOnly::Secondary => ApiError::ReadOnlySecondary(format!(
                "device registration needs the primary: {} is the read-only secondary. Register again \
                 when the primary is reachable, ask an admin to pre-provision the device there, or, if \
                 the primary is gone for good, promote this server (`gateway license promote <03 key>`)",
                core.name()
            )),
            other => other.into(),
        });
    }
    let token = tokens::new_device_token();
    let change = Change::AddDevice {
        name: req.name.clone(),
        serial: req.serial.clone(),
        token_sha256: tokens::token_digest(&token),
        status: DeviceStatus::Pending,
    };
    let outcome = match core.change_config(change).await {
        Ok(Applied {
            device: Some(device),
            ..
        }) => device,
        Ok(_) => {
            return Err(ApiError::Internal(anyhow::anyhow!(
                "the device was not registered"
            )));
        }
        Err(e) => return Err(e.into()),
    };
    tracing::info!(device = %outcome.id, name = outcome.name, "device registered, waiting for approval");
    Ok((
        StatusCode::ACCEPTED,
        Json(
            json!({"device_id": outcome.id, "name": outcome.name, "token": token, "status": "pending"}),
        ),
    ))
}

pub async fn device(
    State(core): State<Arc<Core>>,
    AnyDevice(device): AnyDevice,
) -> Result<impl IntoResponse, ApiError> {
    let within = match device.status {
        DeviceStatus::Approved => check_seat(&core, &device).await.is_ok(),
        _ => false,
    };
    Ok(Json(json!({
        "device_id": device.id,
        "name": device.name,
        "status": device.status,
        "within_seats": within,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    user: String,
    password: String,
}

impl std::fmt::Debug for LoginRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "LoginRequest {{ user: {:?}, password: <redacted> }}",
            self.user
        )
    }
}

/// The hash an unknown user's password is checked against, so that refusing
/// an unknown name costs what refusing a known one does and the time of a
/// refusal does not tell which users exist. It takes the iteration count
/// most configured users have (the higher one on a tie; the default when
/// there are none): users' hashes may have been made with another count
/// than today's default, and a decoy with a different count would differ in
/// time by the ratio of the two.
pub(crate) fn decoy_hash(users: &BTreeMap<String, User>) -> PasswordHash {
    let mut counts: BTreeMap<u32, usize> = BTreeMap::new();
    for user in users.values() {
        *counts.entry(user.hash.iterations()).or_default() += 1;
    }
    let iterations = counts
        .iter()
        .max_by_key(|(iterations, n)| (**n, **iterations))
        .map_or(passwords::DEFAULT_ITERATIONS, |(iterations, _)| *iterations);
    PasswordHash::decoy(iterations)
}

pub async fn login(
    State(core): State<Arc<Core>>,
    ApprovedDevice(device): ApprovedDevice,
    ApiJson(req): ApiJson<LoginRequest>,
) -> Result<impl IntoResponse, ApiError> {
    core.check_accepting()?;
    check_seat(&core, &device).await?;
    core.admission
        .logins
        .check(device.id, Instant::now())
        .map_err(|retry_after| ApiError::RateLimited { retry_after })?;
    if req.user.len() > 64 || req.password.len() > 1024 {
        return Err(ApiError::BadCredentials);
    }
    let config = core.active_config()?;
    let hash = match config.users.get(&req.user) {
        Some(u) => Ok(u.hash.clone()),
        None => Err(decoy_hash(&config.users)),
    };
    let password = req.password;
    let ok = tokio::task::spawn_blocking(move || match &hash {
        Ok(hash) => hash.verify(&password),
        Err(decoy) => {
            decoy.verify(&password);
            false
        }
    })
    .await
    .map_err(|e| ApiError::Internal(e.into()))?;
    core.metrics.login(ok);
    if !ok {
        core.admission.logins.failed(device.id, Instant::now());
        tracing::info!(device = %device.id, user = req.user, "login refused");
        return Err(ApiError::BadCredentials);
    }
    core.admission.logins.succeeded(device.id);
    let (token, session) = config.session_key.issue(
        &req.user,
        device.id,
        core.clock.now(),
        config.session_ttl_secs,
    );
    tracing::info!(device = %device.id, user = req.user, session = %session.id, "user logged in");
    let display = config
        .users
        .get(&req.user)
        .and_then(|u| u.display_name.clone());
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "session": token,
            "user": req.user,
            "display_name": display,
            "expires_at": session.expires_at(),
        })),
    ))
}

pub async fn logout(
    State(core): State<Arc<Core>>,
    ApprovedDevice(device): ApprovedDevice,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    let session = verify_session(&core, &headers, &device).await?;
    let scanned = count_header(&headers, SESSION_JOBS_HEADER)?;
    let (sid, exp) = (session.id.to_string(), session.exp);
    let now = core.clock.now();
    let keep = core.settings.instance.outbox_replay_window_secs;
    let ended = crate::peer_ack::EndedSession {
        session: sid.clone(),
        expires_at: exp,
        jobs_scanned: scanned,
    };
    core.data
        .run(move |s| s.end_session(&sid, exp, scanned, now, keep))
        .await?;
    // The other server of a pair ends it too.
    core.peer_acks.session_ended(ended);
    tracing::info!(device = %device.id, user = session.user, session = %session.id, "user logged out");
    Ok(StatusCode::NO_CONTENT)
}

pub async fn workflows(
    State(core): State<Arc<Core>>,
    ApprovedDevice(_): ApprovedDevice,
) -> Result<impl IntoResponse, ApiError> {
    let config = core.active_config()?;
    // `workflows` stays the list of names older clients read; `details`
    // has the same workflows in the same order, with their index fields.
    let details: Vec<serde_json::Value> = config
        .workflows
        .iter()
        .map(|(name, workflow)| json!({"name": name, "fields": workflow.fields()}))
        .collect();
    Ok(Json(
        json!({"workflows": config.workflow_names(), "details": details}),
    ))
}

/// A job as the device sees it.
#[derive(Serialize)]
pub struct JobView {
    job_id: Uuid,
    state: crate::store::JobState,
    reason: Option<String>,
    workflow: String,
    user: String,
    pages: u32,
    bytes: u64,
    received_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    accepted_by: String,
    accepted_role: String,
    accepted_epoch: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    steps: Option<Vec<StepRow>>,
}

impl JobView {
    /// The device's view of a job. Failure reasons are written for the
    /// server's log and may name files by their server path: devices see
    /// them without (the log and the admin's `job list` keep the detail).
    pub fn new(job: JobRecord, steps: Option<Vec<StepRow>>) -> JobView {
        let shown = |reason: Option<String>| reason.map(|r| without_server_paths(&r));
        JobView {
            job_id: job.id,
            state: job.state,
            reason: shown(job.reason),
            workflow: job.workflow,
            user: job.user,
            pages: job.page_count,
            bytes: job.bytes,
            received_at: job.received_at,
            updated_at: job.updated_at,
            accepted_by: job.accepted_by,
            accepted_role: job.accepted_role,
            accepted_epoch: job.accepted_epoch,
            // Steps are numbered from 1 wherever people read them.
            steps: steps.map(|rows| {
                rows.into_iter()
                    .map(|r| StepRow {
                        step: r.step + 1,
                        reason: shown(r.reason),
                        ..r
                    })
                    .collect()
            }),
        }
    }
}

pub fn parse_job_id(text: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(text).map_err(|_| ApiError::InvalidJobId(text.chars().take(64).collect()))
}

pub async fn job_status(
    State(core): State<Arc<Core>>,
    ApprovedDevice(device): ApprovedDevice,
    Path(job_id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let id = parse_job_id(&job_id)?;
    let found = core
        .data
        .run(move |s| match s.job(id)? {
            Some(job) => Ok(Some((job, s.job_steps(id)?))),
            None => Ok(None),
        })
        .await?;
    match found {
        // Another device's job is reported as absent, not as forbidden, so
        // job ids cannot be probed.
        Some((job, steps)) if job.device_id == device.id => {
            Ok(Json(JobView::new(job, Some(steps))))
        }
        _ => Err(ApiError::NotFound(format!("no job {id} from this device"))),
    }
}

pub async fn list_jobs(
    State(core): State<Arc<Core>>,
    ApprovedDevice(device): ApprovedDevice,
    Query(params): Query<BTreeMap<String, String>>,
) -> Result<impl IntoResponse, ApiError> {
    let limit = match params.get("limit") {
        None => 50,
        Some(v) => v
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=200).contains(n))
            .ok_or_else(|| {
                ApiError::BadRequest(format!("limit `{v}` must be a number from 1 to 200"))
            })?,
    };
    if let Some(other) = params.keys().find(|k| *k != "limit") {
        return Err(ApiError::BadRequest(format!(
            "unknown query parameter `{other}`; only `limit` is supported"
        )));
    }
    let id = device.id;
    let jobs = core.data.run(move |s| s.jobs_of_device(id, limit)).await?;
    let views: Vec<JobView> = jobs.into_iter().map(|j| JobView::new(j, None)).collect();
    Ok(Json(json!({"jobs": views})))
}
