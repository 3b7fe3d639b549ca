//! The core of one gateway server: its role, data service, configuration in
//! use, admission switches and metrics, held in one [`Core`] value that every
//! adapter (web, workers, admin, and the pair link) is given. It also owns
//! the policy that answers "do we take new work, and if not, why"
//! ([`Refusal`]) and the health report built from it.
//!
//! The core knows nothing of HTTP, of the admin channel or of worker tasks:
//! adapters turn its answers into theirs. Building a `Core` starts nothing
//! and opens no socket; [`Core::for_tests`] builds one with no TLS and no
//! engine probe.

use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use pair_core::{Epoch, ServerId};
use plugins::Registry;
use serde::Serialize;
use tokio::sync::{Notify, watch};

use crate::admission::Admission;
use crate::changes::{self, Applied, Change, ChangeError, ChangeRoute};
use crate::clock::{Clock, SystemClock};
use crate::data::{DataService, SupervisorTiming};
use crate::license::{self, LicenseContext, RoleError};
use crate::metrics::Metrics;
use crate::paths::InstancePaths;
use crate::role::{RoleSnapshot, RoleState, ServerRole};
use crate::settings::Settings;
use crate::site::{self, ActiveConfig, ConfigCell};

/// Local-state keys of the admin's switches. Each survives a restart until
/// an admin changes it (the data service's own stop is kept outside the
/// store, see `crate::data`).
pub const MAINTENANCE_KEY: &str = "maintenance";
pub const PIPELINE_PAUSED_KEY: &str = "pipeline.paused";

/// Why this server does not take new logins and jobs right now. One
/// vocabulary for `/health`, job submission and status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// An admin turned maintenance mode on.
    Maintenance { retry_after_secs: u32 },
    /// The database, spool or workers are down, or the configuration has
    /// not been loaded (yet).
    DataServiceDown { cause: String },
    /// No valid license: never activated, expired, moved to another install.
    NotLicensed { why: String },
}

impl Refusal {
    /// The one-word reason `/health` reports.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Maintenance { .. } => "maintenance",
            Refusal::DataServiceDown { .. } => "data-service-down",
            Refusal::NotLicensed { .. } => "not-licensed",
        }
    }

    /// Seconds after which asking again makes sense.
    pub fn retry_after_secs(&self) -> u32 {
        match self {
            Refusal::Maintenance { retry_after_secs } => *retry_after_secs,
            Refusal::DataServiceDown { .. } | Refusal::NotLicensed { .. } => 30,
        }
    }
}

/// What `/health` says about a fenced server: which epoch replaced it and
/// how to rejoin. It keeps taking jobs, so its health stays 200.
#[derive(Debug, Clone, Serialize)]
pub struct FencedNote {
    pub by_epoch: u64,
    pub rejoin: &'static str,
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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fenced: Option<FencedNote>,
    /// One word about the pair link (`live`, `dead`, `close`, `unknown`,
    /// `unpaired`); absent on a server without one. Never an address or a
    /// fingerprint: `/health` is unauthenticated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pair: Option<&'static str>,
    pub version: &'static str,
    pub config_version: u64,
    pub capabilities: Vec<plugins::Capability>,
    /// For the `Retry-After` header of a 503; not part of the body.
    #[serde(skip)]
    pub retry_after_secs: Option<u32>,
}

/// What a server is made of before it runs.
pub struct CoreParts {
    pub settings: Settings,
    pub paths: InstancePaths,
    pub license: LicenseContext,
    pub registry: Arc<Registry>,
    /// The TLS certificate devices should trust (shown in status).
    pub certificate: PathBuf,
    pub clock: Arc<dyn Clock>,
    pub timing: SupervisorTiming,
}

/// One running server's state, shared by every adapter as `Arc<Core>`.
pub struct Core {
    pub settings: Settings,
    pub paths: InstancePaths,
    pub license: LicenseContext,
    pub role: RoleState,
    pub data: DataService,
    pub config: ConfigCell,
    pub registry: Arc<Registry>,
    pub metrics: Metrics,
    pub admission: Admission,
    /// The replicated acknowledgement, shared by the intake and the pair
    /// link.
    pub peer_acks: crate::peer_ack::PeerAcks,
    /// Whether a pipeline step may start (the pair's lease, a clean stop's
    /// drain), shared by the pair link and the workers.
    pub ownership: crate::ownership::Ownership,
    /// Wakes an idle pipeline worker when a job was committed.
    pub job_ready: Notify,
    pub certificate: PathBuf,
    pub clock: Arc<dyn Clock>,
    pub started_at: DateTime<Utc>,
    /// This server's id, known once the store was first opened.
    server_id: watch::Sender<Option<ServerId>>,
    /// The pair link's one-word state, set by the pair adapter.
    pair_summary: std::sync::RwLock<Option<&'static str>>,
    /// Where configuration changes go once the pair link runs.
    change_route: std::sync::OnceLock<Arc<dyn ChangeRoute>>,
    /// Admin switches changed while the data service was down: written to
    /// the store when it comes back instead of being overwritten by what it
    /// held before.
    unsaved_switches: std::sync::Mutex<Vec<(&'static str, bool)>>,
    /// The runtime the core was built on, for work that must not run on an
    /// adapter's own thread (sending notifications).
    main_runtime: Option<tokio::runtime::Handle>,
    /// The data-service generation whose contents are loaded, and the lock
    /// that makes loading happen once per generation.
    loaded_generation: tokio::sync::Mutex<u64>,
    shutdown: watch::Sender<bool>,
}

/// Beyond the pair's DEAD threshold, how long jobs found unreplicated at
/// start-up wait for the peer to see them before they are processed anyway
/// (the peer is unreachable: this server cannot know, and goes on).
const UNCHECKED_JOBS_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

impl Core {
    pub fn new(parts: CoreParts) -> Arc<Core> {
        let logins = parts.settings.instance.login_failures_per_minute;
        let uploads_in_flight = parts.settings.instance.max_uploads_in_flight;
        let upload_slot_wait = parts.settings.instance.upload_slot_wait;
        Arc::new(Core {
            role: RoleState::new(RoleSnapshot::unlicensed(Some(
                "not read yet: the data service is starting".into(),
            ))),
            data: DataService::new(parts.paths.clone(), parts.timing),
            config: ConfigCell::default(),
            metrics: Metrics::default(),
            admission: Admission::new(logins, uploads_in_flight, upload_slot_wait),
            peer_acks: Default::default(),
            ownership: Default::default(),
            job_ready: Notify::new(),
            started_at: parts.clock.now(),
            server_id: watch::Sender::new(None),
            pair_summary: std::sync::RwLock::new(None),
            change_route: std::sync::OnceLock::new(),
            unsaved_switches: std::sync::Mutex::new(Vec::new()),
            main_runtime: tokio::runtime::Handle::try_current().ok(),
            loaded_generation: tokio::sync::Mutex::new(0),
            shutdown: watch::Sender::new(false),
            settings: parts.settings,
            paths: parts.paths,
            license: parts.license,
            registry: parts.registry,
            certificate: parts.certificate,
            clock: parts.clock,
        })
    }

    /// A core on `settings` with the given trusted vendor keys, no TLS
    /// material and no engine probe: for in-process tests of the router
    /// and the adapters. Nothing is started.
    pub fn for_tests(settings: Settings, trusted: licensing::TrustedKeys) -> Arc<Core> {
        Core::for_tests_with_clock(settings, trusted, Arc::new(SystemClock))
    }

    /// As [`Core::for_tests`], for `instance` with its data under `dir` (a
    /// configuration file is written there), `defaults` (TOML lines, may be
    /// empty) added to the `[defaults]` table, and the built-in vendor keys.
    pub fn for_tests_in(dir: &std::path::Path, instance: &str, defaults: &str) -> Arc<Core> {
        let file = dir.join("gateway.toml");
        std::fs::write(
            &file,
            format!(
                "[defaults]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"{}/{{instance}}\"\n{defaults}",
                dir.display()
            ),
        )
        .expect("the test's configuration file is written");
        let settings = crate::settings::load(
            crate::settings::Source::File(&file),
            Some(instance),
            &crate::settings::Env::none(),
        )
        .expect("the test's configuration loads");
        Core::for_tests(settings, licensing::TrustedKeys::builtin())
    }

    /// As [`Core::for_tests`], on the given clock.
    pub fn for_tests_with_clock(
        settings: Settings,
        trusted: licensing::TrustedKeys,
        clock: Arc<dyn Clock>,
    ) -> Arc<Core> {
        let data_dir = settings.instance.data_dir.clone();
        let data_dir = data_dir.as_path();
        let name = settings.instance.name.to_string();
        let paths = InstancePaths::new(data_dir, &name);
        let license = LicenseContext {
            trusted,
            instance: name.clone(),
            install_id: license::install_id(data_dir, &name),
        };
        Core::new(CoreParts {
            settings,
            paths,
            license,
            registry: Arc::new(Registry::without_engines()),
            certificate: PathBuf::new(),
            clock,
            timing: SupervisorTiming::default(),
        })
    }

    pub fn name(&self) -> &str {
        self.settings.instance.name.as_str()
    }

    /// This server's id, once the store has been opened.
    pub fn server_id(&self) -> Option<ServerId> {
        *self.server_id.borrow()
    }

    /// Waits until the store has been opened and this server's id is known.
    pub async fn server_id_known(&self) -> ServerId {
        let mut rx = self.server_id.subscribe();
        let id = *rx
            .wait_for(Option::is_some)
            .await
            .expect("the core owns the sender");
        id.expect("waited for it")
    }

    /// The runtime the core was built on.
    pub fn main_runtime(&self) -> Option<tokio::runtime::Handle> {
        self.main_runtime.clone()
    }

    /// Sets the pair link's one-word state for `/health`.
    pub fn set_pair_summary(&self, word: &'static str) {
        *self.pair_summary.write().unwrap_or_else(|p| p.into_inner()) = Some(word);
    }

    /// Sends every configuration change through `route` from now on (the
    /// pair link, which grants and replicates each one). Set once.
    pub fn set_change_route(&self, route: Arc<dyn ChangeRoute>) {
        let _ = self.change_route.set(route);
    }

    /// Makes a configuration change (R5: only the primary does) and loads
    /// the configuration it gives. On a paired server the pair link grants
    /// its (epoch, version) and pushes it to the secondary; otherwise the
    /// role alone decides and the store stamps it.
    pub async fn change_config(&self, change: Change) -> Result<Applied, ChangeError> {
        if let Some(route) = self.change_route.get() {
            return route.submit(change).await.unwrap_or_else(|_| {
                Err(ChangeError::Unavailable(
                    "the pair link is stopping; try again in a moment".into(),
                ))
            });
        }
        let role = self.role.snapshot();
        let instance = self.name().to_owned();
        let done = self
            .data
            .run(move |store| {
                Ok((|| {
                    let write = role.config_write(&instance)?;
                    changes::check(store, &change)?;
                    let device = changes::execute(store, &change, write)?;
                    let meta = store.config_meta()?;
                    Ok::<_, ChangeError>((device, meta))
                })())
            })
            .await
            .map_err(|e| ChangeError::Unavailable(e.to_string()))?;
        let (device, meta) = done?;
        self.reload_config()
            .await
            .map_err(ChangeError::Unavailable)?;
        Ok(Applied {
            version: Some(meta.version),
            epoch: meta.epoch.to_string(),
            device,
        })
    }

    /// The configuration in use; without one (the data service never came
    /// up) nothing that needs it can be answered.
    pub fn active_config(&self) -> Result<Arc<ActiveConfig>, Refusal> {
        self.config
            .current()
            .ok_or_else(|| Refusal::DataServiceDown {
                cause: "the configuration has not been loaded yet".into(),
            })
    }

    pub fn in_maintenance(&self) -> bool {
        self.admission.maintenance()
    }

    /// Whether new logins and jobs are taken, and why not. The order matters
    /// to devices: maintenance is announced first (an admin's choice), then a
    /// broken data service, then a missing license. A fenced server is
    /// licensed and takes jobs.
    pub fn refusal(&self) -> Option<Refusal> {
        if self.in_maintenance() {
            return Some(Refusal::Maintenance {
                retry_after_secs: self.settings.instance.maintenance_retry_after_secs,
            });
        }
        if !self.data.state().up {
            return Some(Refusal::DataServiceDown {
                cause: self.data.down_cause(),
            });
        }
        if self.config.current().is_none() {
            return Some(Refusal::DataServiceDown {
                cause: "the configuration is still loading".into(),
            });
        }
        let role = self.role.snapshot();
        if !role.licensed() {
            return Some(Refusal::NotLicensed {
                why: role
                    .license_problem
                    .unwrap_or_else(|| "no license is activated".into()),
            });
        }
        None
    }

    /// Refuses when the instance does not take new work.
    pub fn check_accepting(&self) -> Result<(), Refusal> {
        self.refusal().map_or(Ok(()), Err)
    }

    /// The health report.
    pub fn health(&self) -> Health {
        let role = self.role.snapshot();
        let refusal = self.refusal();
        Health {
            instance: self.name().to_owned(),
            role: role.role,
            epoch: role.epoch.number,
            web: if self.admission.web_up() {
                "up"
            } else {
                "down"
            },
            data: if self.data.state().up { "up" } else { "down" },
            maintenance: self.in_maintenance(),
            accepting: refusal.is_none(),
            reason: refusal.as_ref().map(Refusal::reason),
            fenced: role.fenced_by.map(|by| FencedNote {
                by_epoch: by.number,
                rejoin: "reactivate this server with an 04 key to rejoin as secondary",
            }),
            version: env!("CARGO_PKG_VERSION"),
            config_version: self.config.current().map_or(0, |c| c.meta.version),
            capabilities: self.registry.capabilities(),
            pair: *self.pair_summary.read().unwrap_or_else(|p| p.into_inner()),
            retry_after_secs: refusal.as_ref().map(Refusal::retry_after_secs),
        }
    }

    /// Everything that depends on the store, done each time the data service
    /// comes up: this server's id, the role, the file's configuration as
    /// the role and the import rule allow, the configuration in use, the
    /// admin's switches (maintenance, pipeline pause).
    pub async fn on_data_up(&self) -> Result<(), String> {
        let ctx = self.license.clone();
        let site = self.settings.site.clone();
        let instance = self.name().to_owned();
        let today = self.clock.now().date_naive();
        let unsaved = self
            .unsaved_switches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let (me, role, adopted, imported, (maintenance, paused, unchecked)) = self
            .data
            .run(move |store| {
                let me = license::server_id(store)?;
                let adopted = store.adopt_unowned_jobs(me)?;
                let role = license::read_role(store, &ctx, today)?;
                let imported = site::import_site_config(store, &site, &role, &instance)?;
                // An admin's change made while the store was away wins over
                // what the store held.
                for (key, on) in &unsaved {
                    store.local_set(key, Some(if *on { "on" } else { "off" }))?;
                }
                let maintenance = store.local_get(MAINTENANCE_KEY)?.as_deref() == Some("on");
                let paused = store.local_get(PIPELINE_PAUSED_KEY)?.as_deref() == Some("on");
                // Committed here but never seen by the peer (this server
                // died first): the peer may have accepted the same id since.
                let unchecked: Vec<uuid::Uuid> = store
                    .unreplicated_jobs(me, u32::MAX)?
                    .into_iter()
                    .filter(|j| j.state == crate::store::JobState::Received)
                    .map(|j| j.id)
                    .collect();
                Ok((
                    me,
                    role,
                    adopted,
                    imported,
                    (maintenance, paused, unchecked),
                ))
            })
            .await
            .map_err(|e| e.to_string())?;
        self.unsaved_switches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.server_id.send_replace(Some(me));
        if let Some(pair) = &self.settings.instance.pair
            && !unchecked.is_empty()
        {
            let limit =
                std::time::Duration::from_millis(pair.dead_threshold_ms) + UNCHECKED_JOBS_WAIT;
            tracing::info!(
                jobs = unchecked.len(),
                wait_ms = limit.as_millis() as u64,
                "jobs the peer has not seen wait until it has (or the wait is over) before they are processed"
            );
            self.peer_acks.hold(unchecked, limit);
        }
        if adopted > 0 {
            tracing::info!(
                jobs = adopted,
                server = %me,
                "jobs stored before ownership existed now belong to this server"
            );
        }
        if let Some(import) = imported {
            tracing::info!(
                version = import.version,
                changed = import.changed.join(","),
                role = role.role.as_str(),
                "configuration imported from the file"
            );
        }
        self.role.publish(role);
        self.admission.set_maintenance(maintenance);
        // Set before the worker pool starts (it waits for this load), so a
        // pause from before a restart holds from the first moment.
        self.admission.set_pipeline_paused(paused);
        self.reload_config().await
    }

    /// Rebuilds the configuration in use from the store.
    pub async fn reload_config(&self) -> Result<(), String> {
        let registry = self.registry.clone();
        let data_dir = self.paths.data_dir.clone();
        let config = self
            .data
            .run(move |store| Ok(site::load_active(store, &registry, &data_dir)))
            .await
            .map_err(|e| e.to_string())??;
        tracing::info!(
            version = config.meta.version,
            epoch = %config.meta.epoch.short(),
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
        let today = self.clock.now().date_naive();
        let role = self
            .data
            .run(move |store| license::read_role(store, &ctx, today))
            .await
            .map_err(|e| e.to_string())?;
        self.publish_role(role.clone());
        Ok(role)
    }

    fn publish_role(&self, role: RoleSnapshot) {
        if self.role.publish(role.clone()) {
            tracing::warn!(
                role = role.role.as_str(),
                epoch = %role.epoch.short(),
                "role changed"
            );
        }
    }

    /// Activates a license key. Never imports the configuration file: a
    /// server keeps the configuration it has (a promoted secondary keeps
    /// what the primary sent). Becoming primary records the file's hash,
    /// so its next restart does not import the file either unless the
    /// file changed.
    pub async fn activate_license(&self, key: String) -> Result<RoleSnapshot, RoleError> {
        let ctx = self.license.clone();
        let site = self.settings.site.clone();
        let now = self.clock.now();
        let role = self
            .data
            .run(move |store| {
                let role = license::activate_license(store, &ctx, &key, now);
                if let Ok(r) = &role
                    && r.role == ServerRole::Primary
                {
                    site::record_file_hash(store, &site)?;
                }
                Ok(role)
            })
            .await
            .map_err(|e| RoleError::DataServiceDown(e.to_string()))??;
        self.publish_role(role.clone());
        Ok(role)
    }

    /// Promotes this secondary to primary with an `03` key in one step (see
    /// [`license::promote`]); the role is published once, from secondary
    /// straight to primary.
    pub async fn promote(
        &self,
        key: String,
    ) -> Result<(licensing::Deactivation, RoleSnapshot), RoleError> {
        let ctx = self.license.clone();
        let site = self.settings.site.clone();
        let now = self.clock.now();
        let (released, role) = self
            .data
            .run(move |store| {
                let promoted = license::promote(store, &ctx, &key, now);
                if promoted.is_ok() {
                    site::record_file_hash(store, &site)?;
                }
                Ok(promoted)
            })
            .await
            .map_err(|e| RoleError::DataServiceDown(e.to_string()))??;
        self.publish_role(role.clone());
        Ok((released, role))
    }

    /// Releases the license.
    pub async fn deactivate_license(&self) -> Result<licensing::Deactivation, RoleError> {
        let now = self.clock.now();
        let released = self
            .data
            .run(move |store| Ok(license::deactivate_license(store, now)))
            .await
            .map_err(|e| RoleError::DataServiceDown(e.to_string()))?;
        let _ = self.refresh_role().await;
        released
    }

    /// Records that a newer epoch exists (the pair link reports a peer's)
    /// and re-reads the role: a primary of an older epoch is fenced.
    pub async fn note_epoch(&self, epoch: Epoch) -> Result<RoleSnapshot, String> {
        self.data
            .run(move |store| store.note_epoch(epoch))
            .await
            .map_err(|e| e.to_string())?;
        self.refresh_role().await
    }

    /// Turns maintenance mode on or off. New logins and jobs are refused
    /// while it is on; jobs already accepted keep running (drain). The flag
    /// survives a restart when the data service is up to record it.
    pub async fn set_maintenance(&self, on: bool) -> bool {
        self.admission.set_maintenance(on);
        tracing::warn!(on, "maintenance mode changed");
        self.record_switch(MAINTENANCE_KEY, on).await
    }

    /// Stores an admin switch; while the data service is down it is kept
    /// and written when the service comes back. Returns whether it was
    /// stored now.
    async fn record_switch(&self, key: &'static str, on: bool) -> bool {
        let value = if on { "on" } else { "off" };
        let stored = self
            .data
            .run(move |store| store.local_set(key, Some(value)))
            .await
            .is_ok();
        let mut unsaved = self
            .unsaved_switches
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        unsaved.retain(|(k, _)| *k != key);
        if !stored {
            unsaved.push((key, on));
        }
        stored
    }

    pub fn pipeline_paused(&self) -> bool {
        self.admission.pipeline_paused()
    }

    /// Pauses or resumes the pipeline. Jobs being processed finish their
    /// current run; no new job is taken while paused. Like maintenance, the
    /// switch survives a restart when the data service is up to record it;
    /// returns whether it was recorded.
    pub async fn set_pipeline_paused(&self, paused: bool) -> bool {
        self.admission.set_pipeline_paused(paused);
        tracing::warn!(paused, "pipeline pause changed");
        if !paused {
            self.job_ready.notify_waiters();
        }
        self.record_switch(PIPELINE_PAUSED_KEY, paused).await
    }

    /// Asks every task to finish. Returns once every task that checks the
    /// signal while starting something (the worker pool) has either seen it
    /// or finished starting, so whatever is logged after this call follows
    /// those starts.
    pub fn request_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// Whether shutdown has begun.
    pub fn shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }
}
