//! The `gateway` command line: `serve` and the admin commands (R14). Commands
//! that change a running instance go through its admin channel; when the
//! instance is not running, those that make sense offline (license,
//! maintenance, pipeline pause, devices, jobs, database) open its store
//! directly, holding the instance lock meanwhile so that no `serve` starts
//! under them.
//!
//! Whether the instance runs is decided by its lock (see
//! [`crate::instance::InstanceLock`]), never by the socket alone: a command
//! that finds the lock held but cannot reach the admin socket says so and
//! stops. It never writes the store of a running instance, and a
//! permission problem on the socket is reported as one, not as "not
//! running".

use std::io::Read;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::Utc;
use licensing::{TrustedKeys, VendorPublicKey};
use serde_json::{Value, json};

use crate::admin::client::{AdminCallError, AdminClient};
use crate::admin::ops;
use crate::instance::{InstanceLock, LockAttempt};
use crate::license::{self, LicenseContext};
use crate::paths::InstancePaths;
use crate::role::ServerRole;
use crate::security::{PasswordHash, passwords};
use crate::settings::{self, Settings, Source};
use crate::spool::JobSpool;
use crate::store::{DeviceStatus, FileTrouble, JobState, Store, StoreError};

mod activation;
mod args;
mod pair;
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

/// What an offline command needs: the store and the licensing identity,
/// and the instance lock that keeps `serve` away while it works.
struct Offline {
    store: Store,
    paths: InstancePaths,
    license: LicenseContext,
    instance: String,
    _lock: InstanceLock,
}

fn trusted_keys(settings: &Settings) -> anyhow::Result<TrustedKeys> {
    let mut trusted = TrustedKeys::builtin();
    for k in &settings.trusted_vendor_keys {
        trusted = trusted.with(VendorPublicKey::from_text(k)?);
    }
    Ok(trusted)
}

/// Opens the store of an instance that is not running; `lock` proves it.
fn offline(settings: &Settings, lock: InstanceLock) -> anyhow::Result<Offline> {
    let instance = settings.instance.name.to_string();
    let paths = InstancePaths::new(&settings.instance.data_dir, &instance);
    let store = Store::open(&paths.database)
        .map_err(|e| store_open_error(&paths.database, &e, &paths.data_dir))?;
    // SQLite opens a file it may not write read-only without a word; the
    // first write would fail deep inside a command. Prove it now, once.
    store
        .probe_write()
        .map_err(|e| store_open_error(&paths.database, &e, &paths.data_dir))?;
    let license = LicenseContext {
        trusted: trusted_keys(settings)?,
        instance: instance.clone(),
        install_id: license::install_id(&paths.data_dir, &instance),
    };
    Ok(Offline {
        store,
        paths,
        license,
        instance,
        _lock: lock,
    })
}

/// The largest declarative file `config apply` reads.
const MAX_CONFIG_FILE_BYTES: u64 = 16 << 20;

/// Reads the file `config apply` is given (`-`: standard input), refusing
/// what cannot be a configuration file before anything is sent.
fn read_config_file(path: &std::path::Path) -> anyhow::Result<String> {
    use std::io::Read;
    let mut bytes = Vec::new();
    if path.as_os_str() == "-" {
        std::io::stdin()
            .take(MAX_CONFIG_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .context("reading the configuration from standard input")?;
    } else {
        let file = std::fs::File::open(path)
            .with_context(|| format!("cannot open the configuration file {}", path.display()))?;
        file.take(MAX_CONFIG_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .with_context(|| format!("cannot read {}", path.display()))?;
    }
    if bytes.len() as u64 > MAX_CONFIG_FILE_BYTES {
        bail!(
            "{} is larger than {} MiB: not a configuration file `gateway config export` wrote",
            path.display(),
            MAX_CONFIG_FILE_BYTES >> 20
        );
    }
    String::from_utf8(bytes).map_err(|_| {
        anyhow::anyhow!(
            "{} is not UTF-8 text; give the TOML file `gateway config export` wrote",
            path.display()
        )
    })
}

/// A store that cannot be opened: the file, the cause once, and the fix.
fn store_open_error(
    path: &std::path::Path,
    e: &StoreError,
    data_dir: &std::path::Path,
) -> anyhow::Error {
    let fix = match e.file_trouble() {
        FileTrouble::NotWritable => format!(
            "the store and its directory must be writable by the user running this command: run as \
             the service user that owns {} (or root), or give the files back to that user \
             (chown USER {}*; chmod 600 {}*)",
            data_dir.display(),
            path.display(),
            path.display()
        ),
        FileTrouble::DiskFull => "free some space on that disk".to_owned(),
        FileTrouble::NotAStore => {
            "the file is not a gateway store: restore it from a backup, or move it away to start empty"
                .to_owned()
        }
        FileTrouble::Other => "check that the service user owns the data directory".to_owned(),
    };
    anyhow::anyhow!(
        "cannot open the store {}: {} — {fix}",
        path.display(),
        e.cause()
    )
}

/// How a command reaches the instance.
enum Reach {
    /// It runs: through its admin channel.
    Running(AdminClient),
    /// It does not run, and this process holds its lock.
    Stopped(InstanceLock),
}

/// How long a command waits for the admin socket of an instance whose lock
/// is held: it may be starting, or binding its socket again after the file
/// was removed (it checks every second).
const SOCKET_WAIT: Duration = Duration::from_secs(10);

/// Finds out whether the instance runs, by its lock, and connects to it if
/// so. Never `Stopped` while another process holds the lock.
async fn reach(settings: &Settings) -> anyhow::Result<Reach> {
    let name = settings.instance.name.as_str();
    let paths = InstancePaths::new(&settings.instance.data_dir, name);
    match AdminClient::connect(&paths.admin_socket).await {
        Ok(client) => return Ok(Reach::Running(client)),
        Err(e @ AdminCallError::PermissionDenied(_)) => return Err(call_error(e)),
        Err(_) => {}
    }
    let (pid, lock_path) = match InstanceLock::try_acquire(&paths, name)? {
        LockAttempt::Acquired(lock) => return Ok(Reach::Stopped(lock)),
        LockAttempt::Held { pid, path } => (pid, path),
    };
    let deadline = Instant::now() + SOCKET_WAIT;
    loop {
        match AdminClient::connect(&paths.admin_socket).await {
            Ok(client) => return Ok(Reach::Running(client)),
            Err(e @ AdminCallError::PermissionDenied(_)) => return Err(call_error(e)),
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(_) => bail!(
                "instance `{name}` is running{} (it holds {}), but its admin socket {} does not answer: \
                 a running instance binds it again within seconds of its removal, so try again; \
                 if it stays silent, restart the instance. Its store is not touched from here while it runs",
                pid.map(|p| format!(" as pid {p}")).unwrap_or_default(),
                lock_path.display(),
                paths.admin_socket.display()
            ),
        }
    }
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
            // The same checks as `serve` (see `instance::check`): what this
            // calls valid, serve starts.
            let report = crate::instance::check(&settings).await?;
            println!(
                "configuration {} is valid for instance {instance}: {} workflows, {} users, data in {}",
                settings.source,
                settings.site.workflows.len(),
                settings.site.users.len(),
                settings.instance.data_dir.display()
            );
            for c in report.capabilities {
                println!(
                    "  capability {}: {} ({})",
                    c.name,
                    if c.available { "available" } else { "absent" },
                    c.detail
                );
            }
            for note in report.notes {
                println!("  note: {note}");
            }
            Ok(0)
        }
        Command::Status { json } => match reach(&settings).await? {
            Reach::Running(client) => {
                let status = client.get("/status").await.map_err(call_error)?;
                if json {
                    print(&status);
                } else {
                    print!("{}", render_status(&status));
                }
                Ok(0)
            }
            Reach::Stopped(lock) => {
                let off = offline(&settings, lock)?;
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
        Command::License { action } => activation::license(target, &settings, action).await,
        Command::Maintenance { state } => {
            let on = matches!(state, OnOff::On);
            let word = if on { "on" } else { "off" };
            match reach(&settings).await? {
                Reach::Running(client) => {
                    let r = client
                        .post("/maintenance", json!({"on": on}))
                        .await
                        .map_err(call_error)?;
                    println!("maintenance {word} on running instance {instance}");
                    if r["persisted"] == json!(false) {
                        println!(
                            "note: the data service is down, so the setting lasts only until the instance restarts"
                        );
                    }
                }
                Reach::Stopped(lock) => {
                    let off = offline(&settings, lock)?;
                    off.store
                        .local_set(crate::core::MAINTENANCE_KEY, Some(word))?;
                    println!(
                        "maintenance {word} recorded for instance {instance} (not running; applies at its next start)"
                    );
                }
            }
            Ok(0)
        }
        Command::Pipeline { action } => {
            let paused = matches!(action, PauseResume::Pause);
            let what = if paused {
                "paused: accepted jobs wait"
            } else {
                "resumed"
            };
            match reach(&settings).await? {
                Reach::Running(client) => {
                    let r = client
                        .post("/pipeline", json!({"paused": paused}))
                        .await
                        .map_err(call_error)?;
                    println!("pipeline of {instance} {what}");
                    if r["persisted"] == json!(false) {
                        println!(
                            "note: the data service is down, so the setting lasts only until the instance restarts"
                        );
                    }
                }
                Reach::Stopped(lock) => {
                    let off = offline(&settings, lock)?;
                    off.store.local_set(
                        crate::core::PIPELINE_PAUSED_KEY,
                        Some(if paused { "on" } else { "off" }),
                    )?;
                    println!(
                        "pipeline of {instance} {what} (recorded; not running, applies at its next start)"
                    );
                }
            }
            Ok(0)
        }
        Command::Service { action } => service(&settings, target, action).await,
        Command::Db { action } => db(&settings, action).await,
        Command::Config {
            action:
                ConfigAction::Apply {
                    file,
                    dry_run,
                    json,
                },
        } => {
            let text = read_config_file(&file)?;
            let client = match reach(&settings).await? {
                Reach::Running(c) => c,
                Reach::Stopped(_) => {
                    println!(
                        "instance {instance} is not running: `config apply` validates the file with the server's plugins and pushes it to the secondary; start it with `gateway serve`"
                    );
                    return Ok(EXIT_NOT_RUNNING);
                }
            };
            let r = client
                .post("/config/apply", json!({"toml": text, "dry_run": dry_run}))
                .await
                .map_err(call_error)?;
            if json {
                print(&r);
            } else {
                print!("{}", render::apply_result(&r));
            }
            Ok(0)
        }
        Command::Config {
            action: ConfigAction::Export { out },
        } => {
            let toml = match reach(&settings).await? {
                Reach::Running(c) => c.get("/config/export").await.map_err(call_error)?["toml"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                Reach::Stopped(lock) => crate::site::export_toml(&offline(&settings, lock)?.store)
                    .map_err(|e| anyhow::anyhow!("{e}"))?,
            };
            match out {
                None => print!("{toml}"),
                Some(path) => {
                    plugins::fsutil::write_atomic(&path, toml.as_bytes(), "export").with_context(
                        || format!("cannot write the configuration to {}", path.display()),
                    )?;
                    println!("configuration written to {}", path.display());
                }
            }
            Ok(0)
        }
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
        Command::Pair { action } => match reach(&settings).await? {
            Reach::Running(client) => pair::run(client, action).await,
            Reach::Stopped(_) => {
                println!(
                    "instance {instance} is not running: pairing happens between running servers; start it with `gateway serve`"
                );
                Ok(EXIT_NOT_RUNNING)
            }
        },
    }
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
    let client = match reach(settings).await? {
        Reach::Running(client) => client,
        // An admin's stop of the data service is kept across restarts, so
        // it can be given (or taken back) while the instance is stopped.
        Reach::Stopped(_lock) if service == "data" && verb != "status" => {
            let paths = InstancePaths::new(&settings.instance.data_dir, instance);
            let file = crate::data::admin_stop_file(&paths);
            crate::data::record_admin_stop(&file, verb == "stop")
                .with_context(|| format!("cannot record the wish in {}", file.display()))?;
            if verb == "stop" {
                println!(
                    "data service of {instance} recorded as stopped by an admin (not running; it stays \
                     stopped at its next start until `gateway service start data`)"
                );
            } else {
                println!(
                    "data service of {instance} recorded as wanted (not running; it starts with the instance)"
                );
            }
            return Ok(0);
        }
        Reach::Stopped(_) => {
            println!(
                "instance {instance} is not running: start it with `gateway serve` (or its systemd unit)"
            );
            return Ok(EXIT_NOT_RUNNING);
        }
    };
    let r = client
        .post(&format!("/service/{service}/{verb}"), json!({}))
        .await
        .map_err(call_error)?;
    let up = r[service]["up"].as_bool().unwrap_or(false);
    let detail = match (r[service]["detail"].as_str(), r[service]["reason"].as_str()) {
        (Some(d), _) => format!(" ({d})"),
        (None, Some("stopped")) => {
            " (stopped by an admin; `gateway service start data` starts it)".to_owned()
        }
        _ => String::new(),
    };
    println!(
        "{service} service of {instance}: {}{detail}",
        if up { "up" } else { "down" }
    );
    if r["persisted"] == json!(false) {
        println!(
            "note: the stop could not be recorded, so a restart of the instance starts the data service"
        );
    }
    Ok(0)
}

async fn db(settings: &Settings, action: DbAction) -> anyhow::Result<i32> {
    let reached = reach(settings).await?;
    match action {
        DbAction::Schema { json } => {
            let tables = match reached {
                Reach::Running(c) => c.get("/db/schema").await.map_err(call_error)?,
                Reach::Stopped(lock) => {
                    serde_json::to_value(offline(settings, lock)?.store.schema()?)?
                }
            };
            let tables: Vec<crate::store::TableInfo> = serde_json::from_value(tables)?;
            if json {
                print(&serde_json::to_value(&tables)?);
            } else {
                print!("{}", render_schema(&tables));
            }
            Ok(0)
        }
        DbAction::Check => {
            let report = match reached {
                Reach::Running(c) => c.get("/db/check").await.map_err(call_error)?,
                Reach::Stopped(lock) => {
                    let off = offline(settings, lock)?;
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
    let value = match reach(settings).await? {
        Reach::Running(c) => match &action {
            DeviceAction::Add { name, serial } => c
                .post("/devices", json!({"name": name, "serial": serial}))
                .await
                .map_err(call_error)?,
            DeviceAction::Approve { device } => c
                .post(&format!("/devices/{device}/approve"), json!({}))
                .await
                .map_err(call_error)?,
            DeviceAction::Revoke { device } => c
                .post(&format!("/devices/{device}/revoke"), json!({}))
                .await
                .map_err(call_error)?,
            DeviceAction::List => c.get("/devices").await.map_err(call_error)?,
        },
        Reach::Stopped(lock) => {
            let off = offline(settings, lock)?;
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
    let value = match (action, reach(settings).await?) {
        (JobAction::List { state }, Reach::Running(c)) => c
            .get(&format!("/jobs?state={state}"))
            .await
            .map_err(call_error)?,
        (JobAction::Retry { job }, Reach::Running(c)) => c
            .post(&format!("/jobs/{job}/retry"), json!({}))
            .await
            .map_err(call_error)?,
        (JobAction::List { state }, Reach::Stopped(lock)) => {
            let Some(state) = JobState::from_name(&state) else {
                bail!("unknown job state `{state}`; use received, processing, done or failed");
            };
            serde_json::to_value(offline(settings, lock)?.store.jobs_in_state(state, 1000)?)?
        }
        (JobAction::Retry { job }, Reach::Stopped(lock)) => {
            serde_json::to_value(ops::retry_job(&offline(settings, lock)?.store, &job)?)?
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
