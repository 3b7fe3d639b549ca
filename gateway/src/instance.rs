//! One running gateway instance: the components (role, data service, web
//! service, configuration, pipeline workers, admin channel) wired together,
//! the start-up order, and the clean shutdown. `gateway serve` calls
//! [`serve`]; tests call [`Gateway::build`] and drive the parts directly.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use chrono::{DateTime, Utc};
use licensing::{TrustedKeys, VendorPublicKey};
use plugins::{Registry, RegistrySettings};
use serde::Serialize;
use tokio::sync::{Notify, watch};

use crate::data::DataService;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::paths::InstancePaths;
use crate::role::{self, LicenseContext, RoleSnapshot, RoleState, ServerRole};
use crate::settings::Settings;
use crate::site::{self, ActiveConfig, ConfigCell};
use crate::web::limits::{LoginLimiter, UploadClaims};
use crate::web::serve::{BoundListener, WebService};
use crate::{admin, tls, web, workers};

const MAINTENANCE_KEY: &str = "maintenance";

/// The running instance, shared by every task as `Arc<Gateway>`.
pub struct Gateway {
    pub settings: Settings,
    pub paths: InstancePaths,
    pub license: LicenseContext,
    pub role: RoleState,
    pub data: DataService,
    pub web: WebService,
    pub config: ConfigCell,
    pub registry: Arc<Registry>,
    pub metrics: Metrics,
    pub uploads: UploadClaims,
    pub logins: LoginLimiter,
    /// Wakes an idle pipeline worker when a job was committed.
    pub job_ready: Notify,
    pub cert_path: PathBuf,
    pub started_at: DateTime<Utc>,
    maintenance: AtomicBool,
    /// Set by an admin to hold accepted jobs (e.g. while a delivery target
    /// is down); intake goes on, workers take no new jobs.
    pipeline_paused: AtomicBool,
    /// The data-service generation whose contents are loaded, and the lock
    /// that makes loading happen once per generation.
    loaded_generation: tokio::sync::Mutex<u64>,
    shutdown: watch::Sender<bool>,
}

/// The instance's state as `/health` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct Health {
    pub instance: String,
    pub role: ServerRole,
    pub epoch: u64,
    pub web: &'static str,
    pub data: &'static str,
    pub maintenance: bool,
    pub accepting: bool,
    pub reason: Option<&'static str>,
    pub version: &'static str,
    pub config_version: u64,
    pub capabilities: Vec<plugins::Capability>,
}

impl Gateway {
    /// Builds the instance from validated settings: data directory, OCR
    /// capability probe, file workflows checked, TLS material. Starts nothing.
    pub async fn build(settings: Settings) -> anyhow::Result<Arc<Gateway>> {
        let name = settings.instance.name.to_string();
        let paths = InstancePaths::new(&settings.instance.data_dir, &name);
        for dir in [
            &paths.data_dir,
            &paths.logs,
            &paths.tls,
            &paths.temp,
            &paths.delivered,
        ] {
            std::fs::create_dir_all(dir).with_context(|| {
                format!(
                    "cannot create {} — check that the service user owns the data directory",
                    dir.display()
                )
            })?;
        }
        let registry = Arc::new(
            Registry::detect(RegistrySettings {
                tesseract_path: settings.instance.tesseract.clone(),
                ocr_parallelism: settings.instance.ocr_parallelism,
                ..RegistrySettings::default()
            })
            .await,
        );
        site::check_workflows(&settings.site, &registry, &paths.data_dir)
            .map_err(|e| anyhow::anyhow!("configuration {}: {e}", settings.source))?;

        let mut trusted = TrustedKeys::builtin();
        for text in &settings.trusted_vendor_keys {
            trusted = trusted
                .with(VendorPublicKey::from_text(text).context("licensing.trusted_vendor_keys")?);
        }
        let license = LicenseContext {
            trusted,
            instance: name.clone(),
            install_id: role::install_id(&paths.data_dir, &name),
        };
        let hostnames: Vec<String> = settings
            .instance
            .listeners
            .iter()
            .filter(|l| !l.addr.ip().is_unspecified())
            .map(|l| l.addr.ip().to_string())
            .collect();
        let material = tls::load(&settings.instance.tls, &paths.tls, &name, &hostnames)?;
        if material.generated {
            tracing::warn!(
                certificate = %material.cert_path.display(),
                "no TLS certificate configured: generated a self-signed one; give this file to devices to trust, \
                 or set tls_cert and tls_key"
            );
        }
        let web = WebService::new(settings.instance.listeners.clone(), material.config.clone());
        let logins = LoginLimiter::new(settings.instance.login_failures_per_minute);
        Ok(Arc::new(Gateway {
            role: RoleState::new(RoleSnapshot {
                role: ServerRole::Unlicensed,
                epoch: 0,
                license: None,
                license_problem: Some("not read yet: the data service is starting".into()),
            }),
            data: DataService::new(paths.clone()),
            web,
            config: ConfigCell::default(),
            registry,
            metrics: Metrics::default(),
            uploads: UploadClaims::default(),
            logins,
            job_ready: Notify::new(),
            cert_path: material.cert_path,
            started_at: Utc::now(),
            maintenance: AtomicBool::new(false),
            pipeline_paused: AtomicBool::new(false),
            loaded_generation: tokio::sync::Mutex::new(0),
            shutdown: watch::Sender::new(false),
            license,
            paths,
            settings,
        }))
    }

    pub fn name(&self) -> &str {
        self.settings.instance.name.as_str()
    }

    /// The configuration in use; without one (the data service never came
    /// up) nothing that needs it can be answered.
    pub fn active_config(&self) -> Result<Arc<ActiveConfig>, ApiError> {
        self.config
            .current()
            .ok_or_else(|| ApiError::DataServiceDown {
                cause: "the configuration has not been loaded yet".into(),
            })
    }

    pub fn in_maintenance(&self) -> bool {
        self.maintenance.load(Ordering::SeqCst)
    }

    /// Whether new logins and jobs are taken, and why not. The order matters
    /// to devices: maintenance is announced first (an admin's choice), then a
    /// broken data service, then a missing license.
    pub fn refusal(&self) -> Option<ApiError> {
        if self.in_maintenance() {
            return Some(ApiError::Maintenance {
                retry_after: self.settings.instance.maintenance_retry_after_secs,
            });
        }
        if !self.data.state().up {
            return Some(ApiError::DataServiceDown {
                cause: self.data.down_cause(),
            });
        }
        if self.config.current().is_none() {
            return Some(ApiError::DataServiceDown {
                cause: "the configuration is still loading".into(),
            });
        }
        let role = self.role.snapshot();
        if !role.licensed() {
            let why = role
                .license_problem
                .unwrap_or_else(|| "no license is activated".into());
            return Some(ApiError::NotLicensed(why));
        }
        None
    }

    /// Refuses the request when the instance does not take new work.
    pub fn check_accepting(&self) -> Result<(), ApiError> {
        self.refusal().map_or(Ok(()), Err)
    }

    /// The health report.
    pub fn health(&self) -> Health {
        let role = self.role.snapshot();
        let data_up = self.data.state().up;
        let reason = self.refusal().map(|e| match e {
            ApiError::Maintenance { .. } => "maintenance",
            ApiError::DataServiceDown { .. } => "data-service-down",
            _ => "not-licensed",
        });
        Health {
            instance: self.name().to_owned(),
            role: role.role,
            epoch: role.epoch,
            web: if self.web.state().up { "up" } else { "down" },
            data: if data_up { "up" } else { "down" },
            maintenance: self.in_maintenance(),
            accepting: reason.is_none(),
            reason,
            version: env!("CARGO_PKG_VERSION"),
            config_version: self.config.current().map_or(0, |c| c.meta.version),
            capabilities: self.registry.capabilities(),
        }
    }

    /// Everything that depends on the store, done each time the data service
    /// comes up: read the license and role, import the file's configuration
    /// as the role allows, load the configuration in use, restore the
    /// maintenance flag.
    pub async fn on_data_up(&self) -> Result<(), String> {
        let ctx = self.license.clone();
        let site = self.settings.site.clone();
        let instance = self.name().to_owned();
        let registry = self.registry.clone();
        let data_dir = self.paths.data_dir.clone();
        let (role, config, maintenance) = self
            .data
            .run(move |store| {
                let role = role::read_role(store, &ctx, Utc::now().date_naive())?;
                if let Some(version) = site::import_site_config(store, &site, &role, &instance)? {
                    tracing::info!(
                        version,
                        role = role.role.as_str(),
                        "configuration imported from the file"
                    );
                }
                let config = site::load_active(store, &registry, &data_dir);
                let maintenance = store.local_get(MAINTENANCE_KEY)?.as_deref() == Some("on");
                Ok((role, config, maintenance))
            })
            .await
            .map_err(|e| e.to_string())?;
        self.role.publish(role);
        self.maintenance.store(maintenance, Ordering::SeqCst);
        let config = config?;
        tracing::info!(
            version = config.meta.version,
            epoch = config.meta.epoch,
            workflows = config.workflows.len(),
            users = config.users.len(),
            "configuration loaded"
        );
        self.config.replace(config);
        Ok(())
    }

    /// Loads the store-dependent state for data-service `generation` once,
    /// however many tasks ask (start-up and the worker pool both do).
    pub async fn load_generation(&self, generation: u64) -> Result<(), String> {
        let mut loaded = self.loaded_generation.lock().await;
        if *loaded == generation {
            return Ok(());
        }
        self.on_data_up().await?;
        *loaded = generation;
        Ok(())
    }

    /// Re-reads the role (after an activation, or for license expiry).
    pub async fn refresh_role(&self) -> Result<RoleSnapshot, String> {
        let ctx = self.license.clone();
        let role = self
            .data
            .run(move |store| role::read_role(store, &ctx, Utc::now().date_naive()))
            .await
            .map_err(|e| e.to_string())?;
        if self.role.publish(role.clone()) {
            tracing::warn!(
                role = role.role.as_str(),
                epoch = role.epoch,
                "role changed"
            );
        }
        Ok(role)
    }

    /// Turns maintenance mode on or off. New logins and jobs are refused
    /// while it is on; jobs already accepted keep running (drain). The flag
    /// survives a restart when the data service is up to record it.
    pub async fn set_maintenance(&self, on: bool) -> bool {
        self.maintenance.store(on, Ordering::SeqCst);
        tracing::warn!(on, "maintenance mode changed");
        let value = if on { "on" } else { "off" };
        self.data
            .run(move |store| store.local_set(MAINTENANCE_KEY, Some(value)))
            .await
            .is_ok()
    }

    pub fn pipeline_paused(&self) -> bool {
        self.pipeline_paused.load(Ordering::SeqCst)
    }

    /// Pauses or resumes the pipeline. Jobs being processed finish their
    /// current run; no new job is taken while paused. Not persisted: a
    /// restart resumes processing.
    pub fn set_pipeline_paused(&self, paused: bool) {
        self.pipeline_paused.store(paused, Ordering::SeqCst);
        tracing::warn!(paused, "pipeline pause changed");
        if !paused {
            self.job_ready.notify_waiters();
        }
    }

    /// Asks every task to finish.
    pub fn request_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }
}

/// What `serve` reports once it listens.
#[derive(Debug, Clone, Serialize)]
pub struct RunInfo {
    pub instance: String,
    pub pid: u32,
    pub listeners: Vec<BoundListener>,
    pub admin_socket: PathBuf,
    pub certificate: PathBuf,
    pub started_at: DateTime<Utc>,
}

/// Runs an instance until SIGINT/SIGTERM or an admin's shutdown request.
pub async fn serve(settings: Settings) -> anyhow::Result<()> {
    let gw = Gateway::build(settings).await?;
    let admin = admin::server::bind(&gw).await?;
    start_background(&gw);

    // Devices are let in only once the role and configuration are known, so
    // the first health answer is already the true one.
    match gw.data.start().await {
        Ok(()) => {
            if let Err(e) = gw.load_generation(gw.data.state().generation).await {
                tracing::error!(error = e, "the store's contents could not be loaded");
            }
        }
        Err(cause) => tracing::error!(cause, "data service did not start; it will be retried"),
    }
    let listeners = gw
        .web
        .start(web::app(gw.clone()))
        .await
        .context("starting the web service")?;
    let info = RunInfo {
        instance: gw.name().to_owned(),
        pid: std::process::id(),
        listeners,
        admin_socket: gw.paths.admin_socket.clone(),
        certificate: gw.cert_path.clone(),
        started_at: gw.started_at,
    };
    write_run_file(&gw.paths.run_file, &info)?;
    tracing::info!(pid = info.pid, certificate = %info.certificate.display(), "instance running");

    let admin_task = tokio::spawn(admin::server::run(gw.clone(), admin));
    let mut shutdown = gw.shutdown_signal();
    tokio::select! {
        _ = wait_for_signal() => tracing::info!("shutdown requested by signal"),
        _ = shutdown.wait_for(|s| *s) => tracing::info!("shutdown requested by an admin"),
    }
    gw.request_shutdown();
    gw.web.stop().await;
    admin_task.abort();
    let _ = std::fs::remove_file(&gw.paths.run_file);
    let _ = std::fs::remove_file(&gw.paths.admin_socket);
    tracing::info!("instance stopped");
    Ok(())
}

/// The tasks that run beside the services: the data-service supervisor,
/// the pipeline worker pool (which also loads role and configuration each
/// time the data service comes up) and the license re-check.
pub fn start_background(gw: &Arc<Gateway>) {
    tokio::spawn(gw.data.clone().supervise(gw.shutdown_signal()));
    tokio::spawn(workers::run_pool(gw.clone()));
    tokio::spawn(recheck_license(gw.clone()));
}

/// Licenses can expire while the server runs: check hourly.
async fn recheck_license(gw: Arc<Gateway>) {
    let mut shutdown = gw.shutdown_signal();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(3600)) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let _ = gw.refresh_role().await;
    }
}

fn write_run_file(path: &std::path::Path, info: &RunInfo) -> anyhow::Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(info)?)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
