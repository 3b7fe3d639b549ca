//! The admin channel of a running instance: HTTP over a Unix socket in the
//! data directory. No TCP port is opened for it. The socket is created with
//! mode 0600 and every connection's peer credentials are checked: only the
//! user the instance runs as, and root, may talk to it.
//!
//! The socket is how admins reach the instance, not what says it runs (the
//! instance lock does, see `crate::instance`): when its file is removed
//! from under the running server, the server notices within
//! [`SOCKET_CHECK_INTERVAL`] and binds it again.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::UnixListener;
use tower::ServiceExt;

use super::ops::{self, AdminError};
use super::pair::PairSlot;
use crate::core::Core;
use crate::store::{DeviceStatus, JobState};

/// The web service as the admin channel controls it: stopped and started
/// on an admin's request (failover cause 2 on purpose). The composition
/// root gives the admin channel an implementation, so this adapter needs
/// nothing of the web adapter.
pub trait WebSwitch: Send + Sync {
    fn start(&self) -> BoxFuture<'_, Result<(), String>>;
    fn stop(&self) -> BoxFuture<'_, ()>;
    /// Up or down and where it listens, as status shows it.
    fn state(&self) -> Value;
}

/// A future the switch returns.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// What the admin routes share.
#[derive(Clone)]
struct Admin {
    core: Arc<Core>,
    web: Arc<dyn WebSwitch>,
    pair: PairSlot,
}

/// How often the running server checks that its socket file is still there.
pub const SOCKET_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// The longest socket path the command line and the server accept (the
/// kernel's limit is 108 bytes with the terminating zero).
pub const MAX_SOCKET_PATH_BYTES: usize = 100;

/// The bound admin socket, with the uid allowed besides root.
pub struct AdminSocket {
    listener: UnixListener,
    path: PathBuf,
    /// Device and inode of the socket file this listener made, to tell it
    /// from a file someone put in its place.
    file_id: (u64, u64),
    owner_uid: u32,
}

/// Refuses a socket path the kernel cannot bind.
pub fn check_socket_path(path: &FsPath) -> anyhow::Result<()> {
    if path.as_os_str().len() > MAX_SOCKET_PATH_BYTES {
        bail!(
            "the admin socket path {} is too long for a Unix socket (over {MAX_SOCKET_PATH_BYTES} bytes); use a shorter data_dir",
            path.display()
        );
    }
    Ok(())
}

/// Binds the socket. The caller holds the instance lock, so a socket file
/// already there is a leftover of a process that is gone, and is replaced.
pub async fn bind(core: &Core) -> anyhow::Result<AdminSocket> {
    bind_path(&core.paths.admin_socket)
}

fn bind_path(path: &FsPath) -> anyhow::Result<AdminSocket> {
    check_socket_path(path)?;
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e)
                .with_context(|| format!("cannot remove stale socket {}", path.display()));
        }
        _ => {}
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("cannot create admin socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot restrict {}", path.display()))?;
    let meta = std::fs::metadata(path)?;
    Ok(AdminSocket {
        listener,
        path: path.to_owned(),
        file_id: (meta.dev(), meta.ino()),
        owner_uid: meta.uid(),
    })
}

impl AdminSocket {
    /// Whether the socket file at the path is still the one this listener
    /// made (it is gone, or replaced, after someone removed it).
    fn still_bound(&self) -> bool {
        std::fs::symlink_metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.file_id)
    }
}

/// Serves admin requests until the task is aborted, binding the socket
/// again whenever its file vanished.
pub async fn run(
    core: Arc<Core>,
    web: Arc<dyn WebSwitch>,
    pair: PairSlot,
    mut socket: AdminSocket,
) {
    let app = router(Admin { core, web, pair });
    let mut check = tokio::time::interval(SOCKET_CHECK_INTERVAL);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let accepted = tokio::select! {
            accepted = socket.listener.accept() => accepted,
            _ = check.tick() => {
                if !socket.still_bound() {
                    match bind_path(&socket.path) {
                        Ok(fresh) => {
                            tracing::warn!(
                                socket = %fresh.path.display(),
                                "the admin socket file was removed; bound it again"
                            );
                            socket = fresh;
                        }
                        Err(e) => tracing::error!(
                            error = format!("{e:#}"),
                            "the admin socket file was removed and cannot be bound again"
                        ),
                    }
                }
                continue;
            }
        };
        let Ok((stream, _)) = accepted else {
            tokio::time::sleep(Duration::from_millis(100)).await;
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

fn router(admin: Admin) -> Router {
    Router::new()
        .route("/status", get(status))
        .route("/maintenance", post(maintenance))
        .route("/pipeline", post(pipeline))
        .route("/service/{name}/{action}", post(service))
        .route("/license", get(license_show))
        .route("/license/activate", post(license_activate))
        .route("/license/deactivate", post(license_deactivate))
        .route("/license/promote", post(license_promote))
        .route("/devices", get(devices).post(device_add))
        .route("/devices/{id}/{action}", post(device_action))
        .route("/jobs", get(jobs))
        .route("/jobs/{id}/retry", post(job_retry))
        .route("/db/check", get(db_check))
        .route("/db/schema", get(db_schema))
        .route("/shutdown", post(shutdown))
        .route("/config/export", get(config_export))
        .route("/config/apply", post(config_apply))
        .route("/pair/conflicts", get(pair_conflicts))
        .route("/pair/events", get(pair_events))
        .route("/pair/conflicts/{id}/apply", post(pair_conflict_apply))
        .route("/pair", get(pair_status))
        .route("/pair/init", post(pair_init))
        .route("/pair/join", post(pair_join))
        .route("/pair/unpair", post(pair_unpair))
        .with_state(admin)
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
            AdminError::Refused(_) | AdminError::ReadOnly(_) => StatusCode::CONFLICT,
            AdminError::Store(crate::store::StoreError::Fenced { .. }) => StatusCode::CONFLICT,
            AdminError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        (status, e)
    }))
}

/// Runs an operation on the store of the running data service.
async fn on_store<T, F>(core: &Core, f: F) -> Result<T, AdminError>
where
    T: Send + 'static,
    F: FnOnce(&crate::store::Store) -> Result<T, AdminError> + Send + 'static,
{
    let parts = core.data.parts().map_err(|e| {
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
async fn status_value(core: &Core, web: &dyn WebSwitch, pair: &PairSlot) -> Value {
    let pair = super::pair::status(pair);
    let data = core.data.state();
    let (queue, failed) = if data.up {
        let q = core.data.run(|s| s.queue_depth()).await.ok();
        let f = core
            .data
            .run(|s| s.count_in_state(JobState::Failed))
            .await
            .ok();
        (q, f)
    } else {
        (None, None)
    };
    let config = core.config.current();
    json!({
        "instance": core.name(),
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        "started_at": core.started_at,
        "role": core.role.snapshot(),
        "server_id": core.server_id().map(|id| id.to_string()),
        "web": web.state(),
        "data": data,
        "data_stopped_by_admin": core.data.stopped_by_admin(),
        "maintenance": core.in_maintenance(),
        "pipeline_paused": core.pipeline_paused(),
        "accepting": core.refusal().is_none(),
        "queue_depth": queue,
        "failed_jobs": failed,
        "jobs_accepted_since_start": core.metrics.accepted(),
        "config": config.map(|c| json!({
            "version": c.meta.version,
            "epoch": c.meta.epoch.number,
            "epoch_id": c.meta.epoch.to_string(),
            "workflows": c.workflow_names(),
            "broken_workflows": c.broken_workflows,
            "users": c.users.len(),
        })),
        "capabilities": core.registry.capabilities(),
        "ocr_runs_on": core.registry.ocr_runs_on(),
        "pair": pair,
        "time_zone": core.settings.instance.time_zone.name(),
        "data_dir": core.paths.data_dir,
        "certificate": core.certificate,
        "config_source": core.settings.source,
    })
}

async fn status(State(a): State<Admin>) -> AdminReply {
    AdminReply(Ok(status_value(&a.core, a.web.as_ref(), &a.pair).await))
}

#[derive(Deserialize)]
struct MaintenanceRequest {
    on: bool,
}

async fn maintenance(State(a): State<Admin>, Json(req): Json<MaintenanceRequest>) -> AdminReply {
    let persisted = a.core.set_maintenance(req.on).await;
    reply(Ok(json!({"maintenance": req.on, "persisted": persisted})))
}

#[derive(Deserialize)]
struct PipelineRequest {
    paused: bool,
}

async fn pipeline(State(a): State<Admin>, Json(req): Json<PipelineRequest>) -> AdminReply {
    let persisted = a.core.set_pipeline_paused(req.paused).await;
    reply(Ok(
        json!({"pipeline_paused": a.core.pipeline_paused(), "persisted": persisted}),
    ))
}

async fn service(
    State(a): State<Admin>,
    Path((name, action)): Path<(String, String)>,
) -> AdminReply {
    let core = &a.core;
    let mut persisted = true;
    let result = match (name.as_str(), action.as_str()) {
        ("data", "stop") => {
            persisted = core.data.stop().await;
            Ok(())
        }
        // The answer waits until the role and configuration are loaded, so
        // the server takes jobs by the time the admin's command returns.
        ("data", "start") => match core.data.start().await {
            Ok(()) => core
                .load_generation(core.data.state().generation)
                .await
                .map_err(AdminError::Refused),
            Err(cause) => Err(AdminError::Refused(cause)),
        },
        ("web", "stop") => {
            a.web.stop().await;
            Ok(())
        }
        ("web", "start") => a.web.start().await.map_err(AdminError::Refused),
        ("data" | "web", "status") => Ok(()),
        _ => Err(AdminError::Invalid(format!(
            "unknown service command `{action} {name}`; use start, stop or status with web or data"
        ))),
    };
    reply(result.map(|()| {
        json!({
            "web": a.web.state(),
            "data": core.data.state(),
            "data_stopped_by_admin": core.data.stopped_by_admin(),
            "persisted": persisted,
        })
    }))
}

async fn license_show(State(a): State<Admin>) -> AdminReply {
    reply(Ok(
        json!({"role": a.core.role.snapshot(), "install_id": a.core.license.install_id}),
    ))
}

#[derive(Deserialize)]
struct KeyRequest {
    key: String,
}

/// Tells the pair protocol about a license change, so the peer learns the
/// new role at once.
fn tell_pair(a: &Admin, role: crate::role::ServerRole) {
    use crate::role::ServerRole;
    if let Some(link) = a.pair.get() {
        link.activated(match role {
            ServerRole::Primary | ServerRole::Fenced => pair_core::ActivationKind::Primary,
            ServerRole::Secondary => pair_core::ActivationKind::Secondary,
            ServerRole::Unlicensed => pair_core::ActivationKind::None,
        });
    }
}

async fn license_activate(State(a): State<Admin>, Json(req): Json<KeyRequest>) -> AdminReply {
    let result = a
        .core
        .activate_license(req.key)
        .await
        .map_err(|e| AdminError::Refused(e.to_string()));
    if let Ok(snapshot) = &result {
        tell_pair(&a, snapshot.role);
    }
    reply(result.map(|snapshot| {
        tracing::warn!(
            role = snapshot.role.as_str(),
            epoch = %snapshot.epoch.short(),
            "license activated"
        );
        to_json(snapshot)
    }))
}

async fn license_promote(State(a): State<Admin>, Json(req): Json<KeyRequest>) -> AdminReply {
    let result = a
        .core
        .promote(req.key)
        .await
        .map_err(|e| AdminError::Refused(e.to_string()));
    if let Ok((_, snapshot)) = &result {
        tell_pair(&a, snapshot.role);
    }
    reply(result.map(|(released, snapshot)| {
        tracing::warn!(
            released_serial = released.serial,
            epoch = %snapshot.epoch.short(),
            "promoted to primary"
        );
        json!({"released_serial": released.serial, "role": snapshot})
    }))
}

async fn license_deactivate(State(a): State<Admin>) -> AdminReply {
    let result = a
        .core
        .deactivate_license()
        .await
        .map_err(|e| AdminError::Refused(e.to_string()));
    if result.is_ok() {
        tell_pair(&a, a.core.role.snapshot().role);
    }
    reply(result.map(|d| {
        tracing::warn!(serial = d.serial, "license deactivated");
        json!({"released_serial": d.serial, "released_role": d.role, "role": a.core.role.snapshot()})
    }))
}

async fn devices(State(a): State<Admin>) -> AdminReply {
    reply(on_store(&a.core, |s| Ok(to_json(s.devices()?))).await)
}

#[derive(Deserialize)]
struct AddDevice {
    name: String,
    serial: Option<String>,
}

async fn device_add(State(a): State<Admin>, Json(req): Json<AddDevice>) -> AdminReply {
    let (change, token) = ops::add_device_change(&req.name, req.serial.as_deref());
    let done = a.core.change_config(change).await.map_err(AdminError::from);
    reply(done.and_then(|applied| {
        let device = applied
            .device
            .ok_or_else(|| AdminError::Refused("the device was not registered".into()))?;
        Ok(to_json(ops::ProvisionedDevice { device, token }))
    }))
}

async fn device_action(
    State(a): State<Admin>,
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
    let change = crate::changes::Change::SetDeviceStatus { device: id, status };
    let done = a.core.change_config(change).await.map_err(AdminError::from);
    reply(done.map(|applied| to_json(applied.device)))
}

#[derive(Deserialize)]
struct JobsQuery {
    state: Option<String>,
}

async fn jobs(State(a): State<Admin>, Query(q): Query<JobsQuery>) -> AdminReply {
    let name = q.state.as_deref().unwrap_or("failed");
    let Some(state) = JobState::from_name(name) else {
        return reply(Err(AdminError::Invalid(format!(
            "unknown job state `{name}`"
        ))));
    };
    reply(on_store(&a.core, move |s| Ok(to_json(s.jobs_in_state(state, 1000)?))).await)
}

async fn job_retry(State(a): State<Admin>, Path(id): Path<String>) -> AdminReply {
    let result = on_store(&a.core, move |s| ops::retry_job(s, &id)).await;
    a.core.job_ready.notify_one();
    reply(result.map(to_json))
}

async fn db_check(State(a): State<Admin>) -> AdminReply {
    let spool = a.core.data.parts().ok().map(|p| p.spool.clone());
    reply(
        on_store(&a.core, move |s| {
            Ok(to_json(ops::db_check(s, spool.as_ref())?))
        })
        .await,
    )
}

async fn db_schema(State(a): State<Admin>) -> AdminReply {
    reply(on_store(&a.core, |s| Ok(to_json(s.schema()?))).await)
}

async fn shutdown(State(a): State<Admin>) -> AdminReply {
    a.core.request_shutdown();
    reply(Ok(json!({"shutting_down": true})))
}

async fn pair_status(State(a): State<Admin>) -> AdminReply {
    reply(Ok(super::pair::status(&a.pair)))
}

async fn pair_init(State(a): State<Admin>) -> AdminReply {
    reply(super::pair::init(&a.pair).await)
}

#[derive(Deserialize)]
struct JoinRequest {
    code: String,
}

async fn pair_join(State(a): State<Admin>, Json(req): Json<JoinRequest>) -> AdminReply {
    reply(super::pair::join(&a.pair, &req.code).await)
}

async fn pair_unpair(State(a): State<Admin>) -> AdminReply {
    reply(super::pair::unpair(&a.pair).await)
}

#[derive(Deserialize)]
struct ApplyRequest {
    toml: String,
    #[serde(default)]
    dry_run: bool,
}

async fn config_apply(State(a): State<Admin>, Json(req): Json<ApplyRequest>) -> AdminReply {
    reply(super::config::apply(&a.core, req.toml, req.dry_run).await)
}

async fn pair_conflicts(State(a): State<Admin>) -> AdminReply {
    reply(super::config::conflicts(&a.core).await)
}

#[derive(Deserialize)]
struct EventsQuery {
    #[serde(default = "default_events_limit")]
    limit: u32,
}

fn default_events_limit() -> u32 {
    100
}

async fn pair_events(
    State(a): State<Admin>,
    axum::extract::Query(q): axum::extract::Query<EventsQuery>,
) -> AdminReply {
    let limit = q.limit.clamp(1, 10_000);
    reply(
        on_store(&a.core, move |s| {
            s.pair_events(limit)
                .map(|events| json!({"events": events}))
                .map_err(AdminError::from)
        })
        .await,
    )
}

async fn pair_conflict_apply(State(a): State<Admin>, Path(id): Path<String>) -> AdminReply {
    reply(super::config::apply_conflict(&a.core, id).await)
}

async fn config_export(State(a): State<Admin>) -> AdminReply {
    reply(
        on_store(&a.core, |s| {
            crate::site::export_toml(s)
                .map(|toml| json!({"toml": toml}))
                .map_err(AdminError::Refused)
        })
        .await,
    )
}
