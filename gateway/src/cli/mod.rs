//! The `gateway` command line: `serve` and the admin commands (R14). Commands
//! that change a running instance go through its admin channel; when the
//! instance is not running, those that make sense offline (license,
//! maintenance, devices, jobs, database) open its store directly.

use std::io::Read;

use anyhow::{Context, bail};
use chrono::Utc;
use licensing::{TrustedKeys, VendorPublicKey};
use serde_json::{Value, json};

use crate::admin::client::{AdminCallError, AdminClient};
use crate::admin::ops;
use crate::license::{self, LicenseContext};
use crate::paths::InstancePaths;
use crate::role::ServerRole;
use crate::security::{PasswordHash, passwords};
use crate::settings::{self, Settings, Source};
use crate::spool::JobSpool;
use crate::store::{DeviceStatus, JobState, Store};

mod args;
mod render;

pub use args::*;
pub use render::{render_role, render_schema, render_status};

/// Exit code of `status` when the instance is not running (as service
/// managers use it).
pub const EXIT_NOT_RUNNING: i32 = 3;

/// Loads the settings the command is about.
pub fn load_settings(target: &Target) -> anyhow::Result<Settings> {
    let source = match &target.config {
        Some(path) => Source::File(path),
        None => Source::Embedded,
    };
    Ok(settings::load(
        source,
        target.instance.as_deref(),
        &settings::Env::process(),
    )?)
}

/// What an offline command needs: the store and the licensing identity.
struct Offline {
    store: Store,
    paths: InstancePaths,
    license: LicenseContext,
    instance: String,
}

fn offline(settings: &Settings) -> anyhow::Result<Offline> {
    let instance = settings.instance.name.to_string();
    let paths = InstancePaths::new(&settings.instance.data_dir, &instance);
    plugins::fsutil::create_private_dir_all(&paths.data_dir)
        .with_context(|| format!("cannot create data directory {}", paths.data_dir.display()))?;
    let store = Store::open(&paths.database)
        .with_context(|| format!("cannot open {}", paths.database.display()))?;
    let mut trusted = TrustedKeys::builtin();
    for k in &settings.trusted_vendor_keys {
        trusted = trusted.with(VendorPublicKey::from_text(k)?);
    }
    let license = LicenseContext {
        trusted,
        instance: instance.clone(),
        install_id: license::install_id(&paths.data_dir, &instance),
    };
    Ok(Offline {
        store,
        paths,
        license,
        instance,
    })
}

/// Connects to the running instance, or `None` when it is not running.
async fn running(settings: &Settings) -> Option<AdminClient> {
    let paths = InstancePaths::new(&settings.instance.data_dir, settings.instance.name.as_str());
    AdminClient::connect(&paths.admin_socket).await.ok()
}

fn print(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("JSON prints")
    );
}

fn call_error(e: AdminCallError) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

/// Runs an admin command; returns the process exit code.
pub async fn run_admin(target: &Target, command: Command) -> anyhow::Result<i32> {
    if let Command::User {
        action: UserAction::HashPassword { iterations },
    } = command
    {
        return hash_password(iterations);
    }
    let settings = load_settings(target)?;
    let instance = settings.instance.name.to_string();
    match command {
        Command::Serve | Command::User { .. } => unreachable!("handled by the caller"),
        Command::CheckConfig => {
            let registry = plugins::Registry::detect(plugins::RegistrySettings {
                tesseract_path: settings.instance.tesseract.clone(),
                ocr_parallelism: settings.instance.ocr_parallelism,
                ..Default::default()
            })
            .await;
            crate::site::check_workflows(&settings.site, &registry, &settings.instance.data_dir)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            println!(
                "configuration {} is valid for instance {instance}: {} workflows, {} users, data in {}",
                settings.source,
                settings.site.workflows.len(),
                settings.site.users.len(),
                settings.instance.data_dir.display()
            );
            for c in registry.capabilities() {
                println!(
                    "  capability {}: {} ({})",
                    c.name,
                    if c.available { "available" } else { "absent" },
                    c.detail
                );
            }
            Ok(0)
        }
        Command::Status { json } => match running(&settings).await {
            Some(client) => {
                let status = client.get("/status").await.map_err(call_error)?;
                if json {
                    print(&status);
                } else {
                    print!("{}", render_status(&status));
                }
                Ok(0)
            }
            None => {
                let off = offline(&settings)?;
                let role = license::read_role(&off.store, &off.license, Utc::now().date_naive())?;
                let status = json!({
                    "instance": instance,
                    "running": false,
                    "role": role,
                    "data_dir": off.paths.data_dir,
                    "version": env!("CARGO_PKG_VERSION"),
                });
                if json {
                    print(&status);
                } else {
                    println!("instance {instance}: not running");
                    println!("role:        {} (epoch {})", role.role.as_str(), role.epoch);
                    if let Some(problem) = role.license_problem {
                        println!("license:     {problem}");
                    }
                    println!("data:        {}", off.paths.data_dir.display());
                }
                Ok(EXIT_NOT_RUNNING)
            }
        },
        Command::License { action } => license(&settings, action).await,
        Command::Maintenance { state } => {
            let on = matches!(state, OnOff::On);
            match running(&settings).await {
                Some(client) => {
                    let r = client
                        .post("/maintenance", json!({"on": on}))
                        .await
                        .map_err(call_error)?;
                    println!(
                        "maintenance {} on running instance {instance}",
                        if on { "on" } else { "off" }
                    );
                    if r["persisted"] == json!(false) {
                        println!(
                            "note: the data service is down, so the setting lasts only until the instance restarts"
                        );
                    }
                }
                None => {
                    let off = offline(&settings)?;
                    off.store
                        .local_set("maintenance", Some(if on { "on" } else { "off" }))?;
                    println!(
                        "maintenance {} recorded for instance {instance} (not running; applies at its next start)",
                        if on { "on" } else { "off" }
                    );
                }
            }
            Ok(0)
        }
        Command::Pipeline { action } => {
            let Some(client) = running(&settings).await else {
                println!("instance {instance} is not running; the pipeline runs when it does");
                return Ok(EXIT_NOT_RUNNING);
            };
            let paused = matches!(action, PauseResume::Pause);
            client
                .post("/pipeline", json!({"paused": paused}))
                .await
                .map_err(call_error)?;
            println!(
                "pipeline of {instance} {}",
                if paused {
                    "paused: accepted jobs wait"
                } else {
                    "resumed"
                }
            );
            Ok(0)
        }
        Command::Service { action } => service(&settings, target, action).await,
        Command::Db { action } => db(&settings, action).await,
        Command::Rate { jobs, size, json } => {
            let size =
                settings::ByteSize::parse(&size).map_err(|e| anyhow::anyhow!("--size: {e}"))?;
            if !(1..=100_000).contains(&jobs) {
                bail!("--jobs must be between 1 and 100000");
            }
            let paths = InstancePaths::new(&settings.instance.data_dir, &instance);
            std::fs::create_dir_all(&paths.temp)?;
            let r = crate::rate::rate(&paths.temp, jobs, size.0).await?;
            if json {
                print(&serde_json::to_value(&r)?);
            } else {
                println!(
                    "{} jobs of {} into {}: {:.1} jobs/s, {:.1} MB/s (p50 {:.1} ms, p95 {:.1} ms per job, fsync included)",
                    r.jobs,
                    size,
                    paths.temp.display(),
                    r.jobs_per_second,
                    r.megabytes_per_second,
                    r.p50_ms,
                    r.p95_ms
                );
            }
            Ok(0)
        }
        Command::Device { action } => device(&settings, action).await,
        Command::Job { action } => job(&settings, action).await,
    }
}

/// Reads a license key as `KeyInput` says: the argument, a file or stdin.
fn read_key(input: &KeyInput) -> anyhow::Result<String> {
    let text = match (&input.key, &input.key_file) {
        (Some(k), None) if k == "-" => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading the license key from standard input")?;
            text
        }
        (Some(k), None) => k.clone(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the license key file {}", path.display()))?,
        _ => bail!("give the key, `-` to read it from standard input, or --key-file FILE"),
    };
    let key = text.trim().to_owned();
    if key.is_empty() {
        bail!("the license key is empty");
    }
    Ok(key)
}

async fn license(settings: &Settings, action: LicenseAction) -> anyhow::Result<i32> {
    let client = running(settings).await;
    let snapshot = match (action, client) {
        (LicenseAction::Activate { key }, Some(c)) => c
            .post("/license/activate", json!({"key": read_key(&key)?}))
            .await
            .map_err(call_error)?,
        (LicenseAction::Activate { key }, None) => {
            let off = offline(settings)?;
            let role =
                license::activate_license(&off.store, &off.license, &read_key(&key)?, Utc::now())?;
            if role.role == ServerRole::Primary {
                crate::site::record_file_hash(&off.store, &settings.site)?;
            }
            serde_json::to_value(role)?
        }
        (LicenseAction::Promote { key }, Some(c)) => {
            let r = c
                .post("/license/promote", json!({"key": read_key(&key)?}))
                .await
                .map_err(call_error)?;
            println!(
                "released license serial {:07} (04); this server is now the primary",
                r["released_serial"].as_u64().unwrap_or(0)
            );
            r["role"].clone()
        }
        (LicenseAction::Promote { key }, None) => {
            let off = offline(settings)?;
            let (released, role) =
                license::promote(&off.store, &off.license, &read_key(&key)?, Utc::now())?;
            crate::site::record_file_hash(&off.store, &settings.site)?;
            println!(
                "released license serial {:07} (04); this server is now the primary",
                released.serial
            );
            serde_json::to_value(role)?
        }
        (LicenseAction::Deactivate, Some(c)) => {
            let r = c
                .post("/license/deactivate", json!({}))
                .await
                .map_err(call_error)?;
            println!(
                "released license serial {:07}",
                r["released_serial"].as_u64().unwrap_or(0)
            );
            r["role"].clone()
        }
        (LicenseAction::Deactivate, None) => {
            let off = offline(settings)?;
            let d = license::deactivate_license(&off.store, Utc::now())?;
            println!("released license serial {:07}", d.serial);
            serde_json::to_value(license::read_role(
                &off.store,
                &off.license,
                Utc::now().date_naive(),
            )?)?
        }
        (LicenseAction::Show { json }, client) => {
            let role = match client {
                Some(c) => c.get("/license").await.map_err(call_error)?["role"].clone(),
                None => {
                    let off = offline(settings)?;
                    serde_json::to_value(license::read_role(
                        &off.store,
                        &off.license,
                        Utc::now().date_naive(),
                    )?)?
                }
            };
            if json {
                print(&role);
                return Ok(0);
            }
            role
        }
    };
    print!("{}", render_role(&snapshot));
    Ok(0)
}

async fn service(
    settings: &Settings,
    target: &Target,
    action: ServiceAction,
) -> anyhow::Result<i32> {
    let instance = settings.instance.name.as_str();
    let (name, verb) = match &action {
        ServiceAction::Install { unit_dir, user } => {
            let config = target.config.as_deref().context(
                "service install needs --config FILE: the unit runs the instance from that file",
            )?;
            let path =
                crate::systemd::install(instance, config, user.as_deref(), unit_dir.as_deref())?;
            println!("wrote {}", path.display());
            println!(
                "next: systemctl daemon-reload && systemctl enable --now {}",
                crate::systemd::unit_name(instance)
            );
            return Ok(0);
        }
        ServiceAction::Uninstall { unit_dir } => {
            match crate::systemd::uninstall(instance, unit_dir.as_deref())? {
                Some(path) => {
                    println!("removed {}", path.display());
                    println!(
                        "next: systemctl daemon-reload (and stop the instance if it still runs)"
                    );
                }
                None => println!("no unit for instance {instance} was installed"),
            }
            return Ok(0);
        }
        ServiceAction::Start { service } => (*service, "start"),
        ServiceAction::Stop { service } => (*service, "stop"),
        ServiceAction::Status { service } => (*service, "status"),
    };
    let service = if name == ServiceName::Web {
        "web"
    } else {
        "data"
    };
    let Some(client) = running(settings).await else {
        println!(
            "instance {instance} is not running: start it with `gateway serve` (or its systemd unit)"
        );
        return Ok(EXIT_NOT_RUNNING);
    };
    let r = client
        .post(&format!("/service/{service}/{verb}"), json!({}))
        .await
        .map_err(call_error)?;
    let up = r[service]["up"].as_bool().unwrap_or(false);
    let detail = r[service]["detail"]
        .as_str()
        .map(|d| format!(" ({d})"))
        .unwrap_or_default();
    println!(
        "{service} service of {instance}: {}{detail}",
        if up { "up" } else { "down" }
    );
    Ok(0)
}

async fn db(settings: &Settings, action: DbAction) -> anyhow::Result<i32> {
    match action {
        DbAction::Schema { json } => {
            let off = offline(settings)?;
            let tables = off.store.schema()?;
            if json {
                print(&serde_json::to_value(&tables)?);
            } else {
                print!("{}", render_schema(&tables));
            }
            Ok(0)
        }
        DbAction::Check => {
            let report = match running(settings).await {
                Some(c) => c.get("/db/check").await.map_err(call_error)?,
                None => {
                    let off = offline(settings)?;
                    let spool = JobSpool::open(&off.paths.spool).ok();
                    serde_json::to_value(ops::db_check(&off.store, spool.as_ref())?)?
                }
            };
            let problems = report["problems"].as_array().cloned().unwrap_or_default();
            println!(
                "schema version {}, {} unfinished jobs checked against the spool",
                report["schema_version"], report["jobs_checked"]
            );
            if problems.is_empty() {
                println!("ok: no problems found");
                Ok(0)
            } else {
                for p in &problems {
                    println!("problem: {}", p.as_str().unwrap_or_default());
                }
                Ok(1)
            }
        }
    }
}

async fn device(settings: &Settings, action: DeviceAction) -> anyhow::Result<i32> {
    let client = running(settings).await;
    let value = match (&action, &client) {
        (DeviceAction::Add { name, serial }, Some(c)) => c
            .post("/devices", json!({"name": name, "serial": serial}))
            .await
            .map_err(call_error)?,
        (DeviceAction::Approve { device }, Some(c)) => c
            .post(&format!("/devices/{device}/approve"), json!({}))
            .await
            .map_err(call_error)?,
        (DeviceAction::Revoke { device }, Some(c)) => c
            .post(&format!("/devices/{device}/revoke"), json!({}))
            .await
            .map_err(call_error)?,
        (DeviceAction::List, Some(c)) => c.get("/devices").await.map_err(call_error)?,
        (_, None) => {
            let off = offline(settings)?;
            let role = license::read_role(&off.store, &off.license, Utc::now().date_naive())?;
            match &action {
                DeviceAction::Add { name, serial } => serde_json::to_value(ops::add_device(
                    &off.store,
                    &role,
                    &off.instance,
                    name,
                    serial.as_deref(),
                )?)?,
                DeviceAction::Approve { device } => serde_json::to_value(ops::set_device_status(
                    &off.store,
                    &role,
                    &off.instance,
                    device,
                    DeviceStatus::Approved,
                )?)?,
                DeviceAction::Revoke { device } => serde_json::to_value(ops::set_device_status(
                    &off.store,
                    &role,
                    &off.instance,
                    device,
                    DeviceStatus::Revoked,
                )?)?,
                DeviceAction::List => serde_json::to_value(off.store.devices()?)?,
            }
        }
    };
    print(&value);
    Ok(0)
}

async fn job(settings: &Settings, action: JobAction) -> anyhow::Result<i32> {
    let client = running(settings).await;
    let value = match (action, client) {
        (JobAction::List { state }, Some(c)) => c
            .get(&format!("/jobs?state={state}"))
            .await
            .map_err(call_error)?,
        (JobAction::Retry { job }, Some(c)) => c
            .post(&format!("/jobs/{job}/retry"), json!({}))
            .await
            .map_err(call_error)?,
        (JobAction::List { state }, None) => {
            let Some(state) = JobState::from_name(&state) else {
                bail!("unknown job state `{state}`; use received, processing, done or failed");
            };
            serde_json::to_value(offline(settings)?.store.jobs_in_state(state, 1000)?)?
        }
        (JobAction::Retry { job }, None) => {
            serde_json::to_value(ops::retry_job(&offline(settings)?.store, &job)?)?
        }
    };
    print(&value);
    Ok(0)
}

fn hash_password(iterations: u32) -> anyhow::Result<i32> {
    if iterations < passwords::MIN_ITERATIONS {
        bail!(
            "--iterations must be at least {}",
            passwords::MIN_ITERATIONS
        );
    }
    let mut password = String::new();
    std::io::stdin()
        .read_to_string(&mut password)
        .context("reading the password from stdin")?;
    let password = password.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        bail!(
            "no password on stdin: pipe it in, e.g. `printf %s 'secret' | gateway user hash-password`"
        );
    }
    println!("{}", PasswordHash::create(password, iterations).to_text());
    Ok(0)
}
