//! The composition root: builds one instance's parts (data directory, engine
//! probe, TLS material, the core), wires the adapters to it (web service,
//! pipeline workers, admin channel), and runs the start-up order and the
//! clean shutdown. It decides nothing itself. `gateway serve` calls
//! [`serve`]; `gateway check-config` runs the same checks through
//! [`check`], so it never calls valid what `serve` would refuse.
//!
//! It also owns the instance lock ([`InstanceLock`]): one process per
//! instance and data directory, for the life of that process.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use licensing::{TrustedKeys, VendorPublicKey};
use plugins::{Registry, RegistrySettings};
use serde::Serialize;
use serde_json::Value;

use crate::admin::pair::PairSlot;
use crate::admin::server::{BoxFuture, WebSwitch};
use crate::clock::SystemClock;
use crate::core::{Core, CoreParts};
use crate::data::SupervisorTiming;
use crate::license::{self, LicenseContext};
use crate::pair::PairLink;
use crate::paths::InstancePaths;
use crate::settings::{ListenerKind, Settings, TlsSource};
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

/// Whether [`preflight`] makes what is missing (`serve`) or only checks
/// that it could (`check-config`, which must change nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Create,
    Inspect,
}

/// What the checks shared by `serve` and `check-config` found.
struct Preflight {
    paths: InstancePaths,
    registry: Arc<Registry>,
    trusted: TrustedKeys,
    /// The TLS material; `None` only when inspecting an instance whose
    /// self-signed certificate does not exist yet (`serve` makes it).
    material: Option<tls::TlsMaterial>,
    notes: Vec<String>,
}

/// Every check `serve` makes before it starts anything: the data directory
/// and its subdirectories, the admin socket path, the workflows against the
/// engines found, the trusted vendor keys, and the TLS certificate and key
/// (readable, and a matching pair). With [`Mode::Create`] missing
/// directories and the self-signed certificate are made.
async fn preflight(settings: &Settings, mode: Mode) -> anyhow::Result<Preflight> {
    let name = settings.instance.name.to_string();
    let paths = InstancePaths::new(&settings.instance.data_dir, &name);
    let mut notes = Vec::new();
    for dir in [
        &paths.data_dir,
        &paths.logs,
        &paths.tls,
        &paths.temp,
        &paths.delivered,
    ] {
        match mode {
            Mode::Create => prepare_dir(dir, &paths.data_dir)?,
            Mode::Inspect => check_dir_usable(dir, &paths.data_dir)?,
        }
    }
    admin::server::check_socket_path(&paths.admin_socket)?;
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
    let hostnames: Vec<String> = settings
        .instance
        .listeners
        .iter()
        .filter(|l| !l.addr.ip().is_unspecified())
        .map(|l| l.addr.ip().to_string())
        .collect();
    let self_signed_missing = matches!(settings.instance.tls, TlsSource::SelfSigned)
        && !(paths.tls.join(format!("{name}.cert.pem")).exists()
            && paths.tls.join(format!("{name}.key.pem")).exists());
    let material = if mode == Mode::Inspect && self_signed_missing {
        notes.push(format!(
            "no TLS certificate configured: serve will generate a self-signed one in {}",
            paths.tls.display()
        ));
        None
    } else {
        Some(tls::load(
            &settings.instance.tls,
            &paths.tls,
            &name,
            &hostnames,
        )?)
    };
    Ok(Preflight {
        paths,
        registry,
        trusted,
        material,
        notes,
    })
}

/// What `check-config` reports beyond "valid".
pub struct CheckReport {
    pub capabilities: Vec<plugins::Capability>,
    /// Things `serve` will do or could not be checked now, in words.
    pub notes: Vec<String>,
}

/// Checks everything `serve` checks, changing nothing: the same
/// [`preflight`] as [`Instance::build`], without creating, plus the
/// listening addresses, which are bound for a moment when the instance is
/// not running (a port in use or one below 1024 without the right to bind
/// it is refused, as `serve` would be).
pub async fn check(settings: &Settings) -> anyhow::Result<CheckReport> {
    let name = settings.instance.name.as_str();
    let mut pre = preflight(settings, Mode::Inspect).await?;
    match InstanceLock::holder(&pre.paths, name) {
        Ok(Some(pid)) => pre.notes.push(format!(
            "the instance runs (pid {}): its listening addresses were not bound to test them",
            pid.map_or_else(|| "unknown".to_owned(), |p| p.to_string())
        )),
        Ok(None) => {
            let mut addresses: Vec<(&str, std::net::SocketAddr)> = settings
                .instance
                .listeners
                .iter()
                .map(|l| {
                    let key = match l.kind {
                        ListenerKind::Https => "listen",
                        ListenerKind::Plain => "listen_plain",
                        ListenerKind::ProxyHttps => "listen_proxy",
                    };
                    (key, l.addr)
                })
                .collect();
            // The pair port is bound by `serve` too, and must be free.
            if let Some(pair) = &settings.instance.pair {
                addresses.push(("pair.listen", pair.listen));
            }
            for (key, addr) in addresses {
                if addr.port() == 0 {
                    continue;
                }
                if let Err(e) = std::net::TcpListener::bind(addr) {
                    let hint = match e.kind() {
                        std::io::ErrorKind::AddrInUse => {
                            "another program listens there; stop it or choose another port"
                        }
                        std::io::ErrorKind::PermissionDenied => {
                            "ports below 1024 need root or the CAP_NET_BIND_SERVICE capability"
                        }
                        std::io::ErrorKind::AddrNotAvailable => {
                            "that address is not one of this machine's"
                        }
                        _ => "choose another address",
                    };
                    bail!(
                        "{key}: cannot listen on {addr}: {} — {hint}",
                        plugins::fsutil::io_cause(&e)
                    );
                }
            }
        }
        Err(e) => pre.notes.push(format!(
            "cannot tell whether the instance runs ({e}); listening addresses not tested"
        )),
    }
    Ok(CheckReport {
        capabilities: pre.registry.capabilities(),
        notes: pre.notes,
    })
}

impl Instance {
    /// Builds the instance from validated settings: data directory, OCR
    /// capability probe, file workflows checked, TLS material. Starts nothing.
    pub async fn build(settings: Settings) -> anyhow::Result<Instance> {
        let name = settings.instance.name.to_string();
        let Preflight {
            paths,
            registry,
            trusted,
            material,
            notes: _,
        } = preflight(&settings, Mode::Create).await?;
        let material = material.context("TLS material is made in create mode")?;
        let license = LicenseContext {
            trusted,
            instance: name.clone(),
            install_id: license::install_id(&paths.data_dir, &name),
        };
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
/// `lock` is the instance lock [`InstanceLock::acquire`] took; it is held
/// until everything below has stopped.
///
/// Shutdown is one ordered sequence, and nothing is restarted once it
/// began: the shutdown signal is raised first (the worker pool and the
/// data-service supervisor start nothing after it), then the web service
/// stops taking connections, then the pipeline workers stop (a step cut
/// short is recorded as interrupted), then the data service closes, and
/// only then are the admin socket, the run file and the lock let go.
pub async fn serve(settings: Settings, lock: InstanceLock) -> anyhow::Result<()> {
    // Installed first, so a SIGTERM during start-up is a clean stop once
    // start-up is done, not the default death.
    let mut signals = Signals::install()?;
    let Instance { core, web } = Instance::build(settings).await?;
    let admin = admin::server::bind(&core).await?;
    let background = start_background(&core);

    // Devices are let in only once the role and configuration are known, so
    // the first health answer is already the true one.
    match core.data.resume().await {
        Ok(true) => {
            if let Err(e) = core.load_generation(core.data.state().generation).await {
                tracing::error!(error = e, "the store's contents could not be loaded");
            }
        }
        Ok(false) => tracing::warn!(
            "data service stopped by an admin before this start; `gateway service start data` starts it"
        ),
        Err(cause) => tracing::error!(cause, "data service did not start; it will be retried"),
    }
    // The pair link needs this server's id, so it starts once the store has
    // been read: now, or (when the data service is down at start-up) as
    // soon as it comes up.
    let pair: PairSlot = Arc::default();
    if let Some(settings) = core.settings.instance.pair.clone() {
        if core.server_id().is_some() {
            let link = PairLink::start(core.clone(), settings).context("starting the pair link")?;
            core.set_change_route(Arc::new(link.clone()));
            let _ = pair.set(link);
        } else {
            let (core, pair) = (core.clone(), pair.clone());
            tokio::spawn(async move {
                core.server_id_known().await;
                match PairLink::start(core.clone(), settings) {
                    Ok(link) => {
                        core.set_change_route(Arc::new(link.clone()));
                        let _ = pair.set(link);
                    }
                    Err(e) => {
                        tracing::error!(error = %format!("{e:#}"), "the pair link could not start")
                    }
                }
            });
        }
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
    let admin_task = tokio::spawn(admin::server::run(
        core.clone(),
        switch,
        pair.clone(),
        admin,
    ));
    let mut shutdown = core.shutdown_signal();
    let by = tokio::select! {
        _ = signals.recv() => "signal",
        _ = shutdown.wait_for(|s| *s) => "an admin",
    };
    // Raised before it is logged: whatever the pool starts is logged
    // before this line or not at all.
    core.request_shutdown();
    tracing::info!(by, "shutdown requested");
    // The peer hears of the clean stop first: it shows CLOSE, not DEAD.
    if let Some(link) = pair.get() {
        link.shutdown().await;
    }
    web.stop().await;
    background.stop().await;
    core.data.close().await;
    admin_task.abort();
    let _ = admin_task.await;
    let _ = std::fs::remove_file(&core.paths.run_file);
    let _ = std::fs::remove_file(&core.paths.admin_socket);
    tracing::info!("instance stopped");
    drop(lock);
    Ok(())
}

/// The tasks that run beside the services.
pub struct Background {
    supervisor: tokio::task::JoinHandle<()>,
    pool: tokio::task::JoinHandle<()>,
    stop_workers: tokio::sync::watch::Sender<bool>,
    license: tokio::task::JoinHandle<()>,
}

impl Background {
    /// Stops the pipeline workers and waits for the tasks to end; the
    /// caller has raised the shutdown signal (so nothing starts again) and
    /// stopped the web service.
    pub async fn stop(self) {
        self.stop_workers.send_replace(true);
        let _ = self.pool.await;
        let _ = self.supervisor.await;
        let _ = self.license.await;
    }
}

/// The tasks that run beside the services: the data-service supervisor,
/// the pipeline worker pool (which also loads role and configuration each
/// time the data service comes up) and the license re-check.
pub fn start_background(core: &Arc<Core>) -> Background {
    let (stop_workers, stop) = tokio::sync::watch::channel(false);
    Background {
        supervisor: tokio::spawn(core.data.clone().supervise(core.shutdown_signal())),
        pool: tokio::spawn(workers::run_pool(core.clone(), stop)),
        stop_workers,
        license: tokio::spawn(recheck_license(core.clone())),
    }
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

/// SIGTERM and SIGINT, caught from the start of `serve`.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("installing a SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing a SIGINT handler")?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

// ----- the data directory and the instance lock -----------------------------------

/// The exclusive lock one process holds on an instance's lock file
/// (`NAME.lock` in its data directory) for as long as it serves the
/// instance, or for as long as an admin command works on its store offline.
/// It is an `flock(2)` lock: the kernel drops it when the process ends,
/// however it ends, so a crash never leaves it behind. The holder writes
/// its pid into the file so that others can name it.
///
/// The lock, not the admin socket, says whether the instance runs: the
/// socket is a file anyone with the rights can remove.
pub struct InstanceLock {
    file: File,
    path: PathBuf,
}

/// What [`InstanceLock::try_acquire`] found.
pub enum LockAttempt {
    /// This process holds the lock now.
    Acquired(InstanceLock),
    /// Another process holds it: the instance runs (or an admin command is
    /// working on it offline). The pid it wrote, when readable.
    Held { pid: Option<u32>, path: PathBuf },
}

impl InstanceLock {
    /// The lock file of `instance`.
    pub fn path(paths: &InstancePaths, instance: &str) -> PathBuf {
        paths.data_dir.join(format!("{instance}.lock"))
    }

    /// Takes the lock without waiting, creating the data directory (0700)
    /// and the lock file (0600) when missing.
    pub fn try_acquire(paths: &InstancePaths, instance: &str) -> anyhow::Result<LockAttempt> {
        prepare_dir(&paths.data_dir, &paths.data_dir)?;
        let path = Self::path(paths, instance);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(plugins::fsutil::PRIVATE_FILE_MODE)
            .open(&path)
            .map_err(|e| file_error(&path, "open the instance lock", &e, &paths.data_dir))?;
        // `File::try_lock` is std's `flock(2)` (Rust 1.89, the workspace's
        // `rust-version`).
        let locked = file.try_lock();
        match locked {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Ok(LockAttempt::Held {
                    pid: read_pid(&path),
                    path,
                });
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(file_error(&path, "lock", &e, &paths.data_dir));
            }
        }
        let mut lock = InstanceLock { file, path };
        lock.write_pid()
            .map_err(|e| file_error(&lock.path, "write", &e, &paths.data_dir))?;
        Ok(LockAttempt::Acquired(lock))
    }

    /// Takes the lock for `gateway serve`; refuses, naming the holder's
    /// pid, when another process has it.
    pub fn acquire(paths: &InstancePaths, instance: &str) -> anyhow::Result<InstanceLock> {
        match Self::try_acquire(paths, instance)? {
            LockAttempt::Acquired(lock) => Ok(lock),
            LockAttempt::Held { pid, path } => bail!(
                "instance `{instance}` is already running{} (it holds the instance lock {}); \
                 stop it first, or see it with `gateway status`",
                pid.map(|p| format!(" as pid {p}")).unwrap_or_default(),
                path.display()
            ),
        }
    }

    /// Who holds the lock, without taking it for longer than a moment and
    /// without creating anything: `None` when nobody does (or there is no
    /// lock file yet), `Some(pid)` when a process does.
    pub fn holder(paths: &InstancePaths, instance: &str) -> std::io::Result<Option<Option<u32>>> {
        let path = Self::path(paths, instance);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let locked = file.try_lock_shared();
        match locked {
            Ok(()) => Ok(None),
            Err(std::fs::TryLockError::WouldBlock) => Ok(Some(read_pid(&path))),
            Err(std::fs::TryLockError::Error(e)) => Err(e),
        }
    }

    fn write_pid(&mut self) -> std::io::Result<()> {
        self.file.set_len(0)?;
        self.file.rewind()?;
        writeln!(self.file, "{}", std::process::id())?;
        self.file.sync_all()
    }
}

fn read_pid(path: &Path) -> Option<u32> {
    let mut text = String::new();
    File::open(path).ok()?.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

/// Makes `dir` (part of the data directory `data_dir`) ready: created 0700
/// when missing, tightened to 0700 when it exists. Errors name the
/// directory and the fix.
pub fn prepare_dir(dir: &Path, data_dir: &Path) -> anyhow::Result<()> {
    if let Ok(meta) = std::fs::metadata(dir)
        && !meta.is_dir()
    {
        bail!("{}", not_a_directory(dir, data_dir));
    }
    let action = if dir.exists() {
        "make private (mode 0700)"
    } else {
        "create"
    };
    plugins::fsutil::create_private_dir_all(dir).map_err(|e| file_error(dir, action, &e, data_dir))
}

/// `check-config`'s side of [`prepare_dir`]: whether `serve` could create
/// or use `dir`, tested with a probe file that is removed at once.
fn check_dir_usable(dir: &Path, data_dir: &Path) -> anyhow::Result<()> {
    // The nearest part of the path that exists is where serve would create.
    let mut existing = dir;
    while !existing.exists() {
        match existing.parent() {
            Some(p) if !p.as_os_str().is_empty() => existing = p,
            _ => break,
        }
    }
    let meta =
        std::fs::metadata(existing).map_err(|e| file_error(existing, "look at", &e, data_dir))?;
    if !meta.is_dir() {
        bail!("{}", not_a_directory(existing, data_dir));
    }
    let probe = existing.join(format!(".check-config.{}", std::process::id()));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(plugins::fsutil::PRIVATE_FILE_MODE)
        .open(&probe)
        .map_err(|e| file_error(existing, "write in", &e, data_dir))?;
    let mine = file.metadata().map(|m| m.uid()).unwrap_or(0);
    drop(file);
    let _ = std::fs::remove_file(&probe);
    // serve makes an existing directory 0700, which only its owner (or
    // root) may do.
    if existing == dir && mine != 0 && meta.uid() != mine {
        bail!(
            "{} belongs to uid {}, not to this user (uid {mine}): run as the service user that owns it, \
             or give it to that user (chown -R USER {})",
            dir.display(),
            meta.uid(),
            data_dir.display()
        );
    }
    Ok(())
}

fn not_a_directory(path: &Path, data_dir: &Path) -> String {
    if path == data_dir {
        format!(
            "data_dir {} is a file, not a directory: set data_dir to a directory (or move the file away)",
            path.display()
        )
    } else {
        format!(
            "{} is a file where the instance needs a directory: move it away, or set data_dir to another directory",
            path.display()
        )
    }
}

/// An I/O error on a file or directory of the data directory, naming the
/// file and what to do.
pub fn file_error(path: &Path, action: &str, e: &std::io::Error, data_dir: &Path) -> anyhow::Error {
    use std::io::ErrorKind as K;
    let cause = plugins::fsutil::io_cause(e);
    let fix = match e.kind() {
        K::PermissionDenied => format!(
            "run as the service user that owns {} (or root), or give the directory to that user (chown -R USER {})",
            data_dir.display(),
            data_dir.display()
        ),
        K::ReadOnlyFilesystem => {
            "the file system is mounted read-only: remount it writable or set data_dir elsewhere"
                .to_owned()
        }
        K::NotADirectory => format!(
            "a part of the path is a file, not a directory: move it away, or set data_dir to another directory than {}",
            data_dir.display()
        ),
        K::StorageFull | K::QuotaExceeded => "free some space on that disk".to_owned(),
        _ => "check that the service user owns the data directory".to_owned(),
    };
    anyhow::anyhow!("cannot {action} {}: {cause} — {fix}", path.display())
}
