//! The composition root: builds one instance's parts (data directory, engine
//! probe, TLS material, the core), wires the adapters to it (web service,
//! pipeline workers, admin channel), and runs the start-up order and the
//! clean shutdown. It decides nothing itself. `gateway serve` calls
//! [`serve`].

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use chrono::{DateTime, Utc};
use licensing::{TrustedKeys, VendorPublicKey};
use plugins::{Registry, RegistrySettings};
use serde::Serialize;
use serde_json::Value;

use crate::admin::server::{BoxFuture, WebSwitch};
use crate::clock::SystemClock;
use crate::core::{Core, CoreParts};
use crate::data::SupervisorTiming;
use crate::license::{self, LicenseContext};
use crate::paths::InstancePaths;
use crate::settings::Settings;
use crate::web::serve::{BoundListener, WebService};
use crate::{admin, site, tls, web, workers};

/// The web service wired to the core: starting it serves the router over
/// the core, and the core learns whether it is up (health reports it).
pub struct WebHandle {
    core: Arc<Core>,
    service: WebService,
}

impl WebHandle {
    pub async fn start(&self) -> std::io::Result<Vec<BoundListener>> {
        let bound = self.service.start(web::app(self.core.clone())).await?;
        self.core.admission.set_web_up(true);
        Ok(bound)
    }

    pub async fn stop(&self) {
        self.core.admission.set_web_up(false);
        self.service.stop().await;
    }
}

impl WebSwitch for WebHandle {
    fn start(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            WebHandle::start(self)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
    }

    fn stop(&self) -> BoxFuture<'_, ()> {
        Box::pin(WebHandle::stop(self))
    }

    fn state(&self) -> Value {
        serde_json::to_value(self.service.state()).expect("web state serialises")
    }
}

/// A built instance: the core and its web service, nothing started.
pub struct Instance {
    pub core: Arc<Core>,
    pub web: Arc<WebHandle>,
}

impl Instance {
    /// Builds the instance from validated settings: data directory, OCR
    /// capability probe, file workflows checked, TLS material. Starts nothing.
    pub async fn build(settings: Settings) -> anyhow::Result<Instance> {
        let name = settings.instance.name.to_string();
        let paths = InstancePaths::new(&settings.instance.data_dir, &name);
        for dir in [
            &paths.data_dir,
            &paths.logs,
            &paths.tls,
            &paths.temp,
            &paths.delivered,
        ] {
            // 0700: the data directory is the service user's alone.
            plugins::fsutil::create_private_dir_all(dir).with_context(|| {
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
            install_id: license::install_id(&paths.data_dir, &name),
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
        let service = WebService::new(settings.instance.listeners.clone(), material.config.clone());
        let core = Core::new(CoreParts {
            settings,
            paths,
            license,
            registry,
            certificate: material.cert_path,
            clock: Arc::new(SystemClock),
            timing: SupervisorTiming::default(),
        });
        let web = Arc::new(WebHandle {
            core: core.clone(),
            service,
        });
        Ok(Instance { core, web })
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
    let Instance { core, web } = Instance::build(settings).await?;
    let admin = admin::server::bind(&core).await?;
    start_background(&core);

    // Devices are let in only once the role and configuration are known, so
    // the first health answer is already the true one.
    match core.data.start().await {
        Ok(()) => {
            if let Err(e) = core.load_generation(core.data.state().generation).await {
                tracing::error!(error = e, "the store's contents could not be loaded");
            }
        }
        Err(cause) => tracing::error!(cause, "data service did not start; it will be retried"),
    }
    let listeners = web.start().await.context("starting the web service")?;
    let info = RunInfo {
        instance: core.name().to_owned(),
        pid: std::process::id(),
        listeners,
        admin_socket: core.paths.admin_socket.clone(),
        certificate: core.certificate.clone(),
        started_at: core.started_at,
    };
    write_run_file(&core.paths.run_file, &info)?;
    tracing::info!(pid = info.pid, certificate = %info.certificate.display(), "instance running");

    let switch: Arc<dyn WebSwitch> = web.clone();
    let admin_task = tokio::spawn(admin::server::run(core.clone(), switch, admin));
    let mut shutdown = core.shutdown_signal();
    tokio::select! {
        _ = wait_for_signal() => tracing::info!("shutdown requested by signal"),
        _ = shutdown.wait_for(|s| *s) => tracing::info!("shutdown requested by an admin"),
    }
    core.request_shutdown();
    web.stop().await;
    admin_task.abort();
    let _ = std::fs::remove_file(&core.paths.run_file);
    let _ = std::fs::remove_file(&core.paths.admin_socket);
    tracing::info!("instance stopped");
    Ok(())
}

/// The tasks that run beside the services: the data-service supervisor,
/// the pipeline worker pool (which also loads role and configuration each
/// time the data service comes up) and the license re-check.
pub fn start_background(core: &Arc<Core>) {
    tokio::spawn(core.data.clone().supervise(core.shutdown_signal()));
    tokio::spawn(workers::run_pool(core.clone()));
    tokio::spawn(recheck_license(core.clone()));
}

/// Licenses can expire while the server runs: check hourly.
async fn recheck_license(core: Arc<Core>) {
    let mut shutdown = core.shutdown_signal();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(3600)) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let _ = core.refresh_role().await;
    }
}

fn write_run_file(path: &std::path::Path, info: &RunInfo) -> anyhow::Result<()> {
    // Atomic (readers see the old or the new file) and private (0600).
    plugins::fsutil::write_atomic(path, &serde_json::to_vec_pretty(info)?, "run")
        .with_context(|| format!("cannot write {}", path.display()))
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
