//! The admin channel of a running instance: HTTP over a Unix socket in the
//! data directory. No TCP port is opened for it. The socket is created with
//! mode 0600 and every connection's peer credentials are checked: only the
//! user the instance runs as, and root, may talk to it.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::sync::Arc;

use anyhow::{Context, bail};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Utc;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::UnixListener;
use tower::ServiceExt;

use super::ops::{self, AdminError};
use crate::instance::Gateway;
use crate::role;
use crate::store::{DeviceStatus, JobState};

/// The bound admin socket, with the uid allowed besides root.
pub struct AdminSocket {
    listener: UnixListener,
    owner_uid: u32,
}

/// Binds the socket, refusing to start when another process of the same
/// instance is already serving it.
pub async fn bind(gw: &Gateway) -> anyhow::Result<AdminSocket> {
    let path = &gw.paths.admin_socket;
    if path.as_os_str().len() > 100 {
        bail!(
            "the admin socket path {} is too long for a Unix socket (over 100 bytes); use a shorter data_dir",
            path.display()
        );
    }
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            bail!(
                "instance `{}` is already running (its admin socket {} answers); stop it first",
                gw.name(),
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove stale socket {}", path.display()))?;
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("cannot create admin socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot restrict {}", path.display()))?;
    let owner_uid = std::fs::metadata(path)?.uid();
    Ok(AdminSocket {
        listener,
        owner_uid,
    })
}

/// Serves admin requests until the task is aborted.
pub async fn run(gw: Arc<Gateway>, socket: AdminSocket) {
    let app = router(gw);
    loop {
        let Ok((stream, _)) = socket.listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        };
        match stream.peer_cred() {
            Ok(cred) if cred.uid() == socket.owner_uid || cred.uid() == 0 => {}
            Ok(cred) => {
                tracing::warn!(
                    uid = cred.uid(),
                    "admin connection refused: not the instance's user or root"
                );
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "admin connection refused: peer credentials unavailable");
                continue;
            }
        }
        let app = app.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| app.clone().oneshot(req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn router(gw: Arc<Gateway>) -> Router {
    Router::new()
        .route("/status", get(status))
        .route("/maintenance", post(maintenance))
        .route("/pipeline", post(pipeline))
        .route("/service/{name}/{action}", post(service))
        .route("/license", get(license_show))
        .route("/license/activate", post(license_activate))
        .route("/license/deactivate", post(license_deactivate))
        .route("/devices", get(devices).post(device_add))
        .route("/devices/{id}/{action}", post(device_action))
        .route("/jobs", get(jobs))
        .route("/jobs/{id}/retry", post(job_retry))
        .route("/db/check", get(db_check))
        .route("/shutdown", post(shutdown))
        .with_state(gw)
}

/// Admin answers: JSON on success, `{"error": {...}}` with a status otherwise.
struct AdminReply(Result<Value, (StatusCode, AdminError)>);

impl IntoResponse for AdminReply {
    fn into_response(self) -> Response {
        match self.0 {
            Ok(v) => Json(v).into_response(),
            Err((status, e)) => (
                status,
                Json(json!({"error": {"code": e.code(), "message": e.to_string()}})),
            )
                .into_response(),
        }
    }
}

fn reply(r: Result<Value, AdminError>) -> AdminReply {
    AdminReply(r.map_err(|e| {
        let status = match &e {
            AdminError::Invalid(_) => StatusCode::BAD_REQUEST,
            AdminError::NotFound(_) => StatusCode::NOT_FOUND,
            AdminError::Refused(_) => StatusCode::CONFLICT,
            AdminError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        (status, e)
    }))
}

/// Runs an operation on the store of the running data service.
async fn on_store<T, F>(gw: &Gateway, f: F) -> Result<T, AdminError>
where
    T: Send + 'static,
    F: FnOnce(&crate::store::Store) -> Result<T, AdminError> + Send + 'static,
{
    let parts = gw.data.parts().map_err(|e| {
        AdminError::Refused(format!("{e}; start it with `gateway service start data`"))
    })?;
    tokio::task::spawn_blocking(move || f(&parts.store))
        .await
        .map_err(|e| AdminError::Refused(format!("admin task failed: {e}")))?
}

fn to_json<T: serde::Serialize>(v: T) -> Value {
    serde_json::to_value(v).expect("admin replies serialise")
}

/// The full status of the instance.
pub async fn status_value(gw: &Gateway) -> Value {
    let data = gw.data.state();
    let (queue, failed) = if data.up {
        let q = gw.data.run(|s| s.queue_depth()).await.ok();
        let f = gw
            .data
            .run(|s| s.count_in_state(JobState::Failed))
            .await
            .ok();
        (q, f)
    } else {
        (None, None)
    };
    let config = gw.config.current();
    json!({
        "instance": gw.name(),
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        "started_at": gw.started_at,
        "role": gw.role.snapshot(),
        "web": gw.web.state(),
        "data": data,
        "maintenance": gw.in_maintenance(),
        "pipeline_paused": gw.pipeline_paused(),
        "accepting": gw.refusal().is_none(),
        "queue_depth": queue,
        "failed_jobs": failed,
        "jobs_accepted_since_start": gw.metrics.accepted(),
        "config": config.map(|c| json!({
            "version": c.meta.version,
            "epoch": c.meta.epoch,
            "workflows": c.workflow_names(),
            "broken_workflows": c.broken_workflows,
            "users": c.users.len(),
        })),
        "capabilities": gw.registry.capabilities(),
        "time_zone": gw.settings.instance.time_zone.name(),
        "data_dir": gw.paths.data_dir,
        "certificate": gw.cert_path,
        "config_source": gw.settings.source,
    })
}

async fn status(State(gw): State<Arc<Gateway>>) -> AdminReply {
    AdminReply(Ok(status_value(&gw).await))
}

#[derive(Deserialize)]
struct MaintenanceRequest {
    on: bool,
}

async fn maintenance(
    State(gw): State<Arc<Gateway>>,
    Json(req): Json<MaintenanceRequest>,
) -> AdminReply {
    let persisted = gw.set_maintenance(req.on).await;
    reply(Ok(json!({"maintenance": req.on, "persisted": persisted})))
}

#[derive(Deserialize)]
struct PipelineRequest {
    paused: bool,
}

async fn pipeline(State(gw): State<Arc<Gateway>>, Json(req): Json<PipelineRequest>) -> AdminReply {
    gw.set_pipeline_paused(req.paused);
    reply(Ok(json!({"pipeline_paused": gw.pipeline_paused()})))
}

async fn service(
    State(gw): State<Arc<Gateway>>,
    Path((name, action)): Path<(String, String)>,
) -> AdminReply {
    let result = match (name.as_str(), action.as_str()) {
        ("data", "stop") => {
            gw.data.stop().await;
            Ok(())
        }
        ("data", "start") => gw.data.start().await.map_err(AdminError::Refused),
        ("web", "stop") => {
            gw.web.stop().await;
            Ok(())
        }
        ("web", "start") => gw
            .web
            .start(crate::web::app(gw.clone()))
            .await
            .map(|_| ())
            .map_err(|e| AdminError::Refused(e.to_string())),
        ("data" | "web", "status") => Ok(()),
        _ => Err(AdminError::Invalid(format!(
            "unknown service command `{action} {name}`; use start, stop or status with web or data"
        ))),
    };
    reply(result.map(|()| json!({"web": gw.web.state(), "data": gw.data.state()})))
}

async fn license_show(State(gw): State<Arc<Gateway>>) -> AdminReply {
    reply(Ok(
        json!({"role": gw.role.snapshot(), "install_id": gw.license.install_id}),
    ))
}

#[derive(Deserialize)]
struct ActivateRequest {
    key: String,
}

async fn license_activate(
    State(gw): State<Arc<Gateway>>,
    Json(req): Json<ActivateRequest>,
) -> AdminReply {
    let ctx = gw.license.clone();
    let result = on_store(&gw, move |s| {
        role::activate_license(s, &ctx, &req.key, Utc::now())
            .map_err(|e| AdminError::Refused(e.to_string()))
    })
    .await;
    if result.is_ok() {
        // A new primary imports the file's configuration under its epoch.
        if let Err(e) = gw.on_data_up().await {
            tracing::error!(error = e, "reloading after activation failed");
        }
    }
    reply(result.map(|snapshot| {
        tracing::warn!(
            role = snapshot.role.as_str(),
            epoch = snapshot.epoch,
            "license activated"
        );
        to_json(snapshot)
    }))
}

async fn license_deactivate(State(gw): State<Arc<Gateway>>) -> AdminReply {
    let result = on_store(&gw, |s| {
        role::deactivate_license(s, Utc::now()).map_err(|e| AdminError::Refused(e.to_string()))
    })
    .await;
    let _ = gw.refresh_role().await;
    reply(result.map(|d| {
        tracing::warn!(serial = d.serial, "license deactivated");
        json!({"released_serial": d.serial, "released_role": d.role, "role": gw.role.snapshot()})
    }))
}

async fn devices(State(gw): State<Arc<Gateway>>) -> AdminReply {
    reply(on_store(&gw, |s| Ok(to_json(s.devices()?))).await)
}

#[derive(Deserialize)]
struct AddDevice {
    name: String,
    serial: Option<String>,
}

async fn device_add(State(gw): State<Arc<Gateway>>, Json(req): Json<AddDevice>) -> AdminReply {
    let role = gw.role.snapshot();
    let instance = gw.name().to_owned();
    reply(
        on_store(&gw, move |s| {
            Ok(to_json(ops::add_device(
                s,
                &role,
                &instance,
                &req.name,
                req.serial.as_deref(),
            )?))
        })
        .await,
    )
}

async fn device_action(
    State(gw): State<Arc<Gateway>>,
    Path((id, action)): Path<(String, String)>,
) -> AdminReply {
    let status = match action.as_str() {
        "approve" => DeviceStatus::Approved,
        "revoke" => DeviceStatus::Revoked,
        other => {
            return reply(Err(AdminError::Invalid(format!(
                "unknown device action `{other}`; use approve or revoke"
            ))));
        }
    };
    let role = gw.role.snapshot();
    let instance = gw.name().to_owned();
    reply(
        on_store(&gw, move |s| {
            Ok(to_json(ops::set_device_status(
                s, &role, &instance, &id, status,
            )?))
        })
        .await,
    )
}

#[derive(Deserialize)]
struct JobsQuery {
    state: Option<String>,
}

async fn jobs(State(gw): State<Arc<Gateway>>, Query(q): Query<JobsQuery>) -> AdminReply {
    let name = q.state.as_deref().unwrap_or("failed");
    let Some(state) = JobState::from_name(name) else {
        return reply(Err(AdminError::Invalid(format!(
            "unknown job state `{name}`"
        ))));
    };
    reply(on_store(&gw, move |s| Ok(to_json(s.jobs_in_state(state, 1000)?))).await)
}

async fn job_retry(State(gw): State<Arc<Gateway>>, Path(id): Path<String>) -> AdminReply {
    let result = on_store(&gw, move |s| ops::retry_job(s, &id)).await;
    gw.job_ready.notify_one();
    reply(result.map(to_json))
}

async fn db_check(State(gw): State<Arc<Gateway>>) -> AdminReply {
    let spool = gw.data.parts().ok().map(|p| p.spool.clone());
    reply(on_store(&gw, move |s| Ok(to_json(ops::db_check(s, spool.as_ref())?))).await)
}

async fn shutdown(State(gw): State<Arc<Gateway>>) -> AdminReply {
    gw.request_shutdown();
    reply(Ok(json!({"shutting_down": true})))
}
