//! `gateway license ...`: activating, releasing, promoting and showing a
//! license, on a running instance through its admin channel or on a stopped
//! one through its store; and reading secrets (keys, codes) from an
//! argument, a file or standard input.

use std::io::Read;

use anyhow::{Context, bail};
use chrono::Utc;
use serde_json::json;

use super::*;
use crate::license;

/// Reads a secret the command line takes as an argument, from a file
/// (`--key-file`, `--code-file`) or from standard input (`-`), so that it
/// need not appear in the process list. `what` names it in messages.
pub(crate) fn read_secret(
    arg: Option<&String>,
    file: Option<&std::path::Path>,
    what: &str,
    file_flag: &str,
) -> anyhow::Result<String> {
    let text = match (arg, file) {
        (Some(k), None) if k == "-" => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .with_context(|| format!("reading the {what} from standard input"))?;
            text
        }
        (Some(k), None) => k.clone(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the {what} file {}", path.display()))?,
        _ => bail!("give the {what}, `-` to read it from standard input, or {file_flag} FILE"),
    };
    let text = text.trim().to_owned();
    if text.is_empty() {
        bail!("the {what} is empty");
    }
    Ok(text)
}

/// Reads a license key as `KeyInput` says: the argument, a file or stdin.
fn read_key(input: &KeyInput) -> anyhow::Result<String> {
    read_secret(
        input.key.as_ref(),
        input.key_file.as_deref(),
        "license key",
        "--key-file",
    )
}

/// Refuses a key whose serial another instance of the same configuration
/// file holds: one key activates one server. The other instances' stores
/// are read offline and read-only, without their locks (a running one is
/// readable beside its writer in WAL mode), so this works whether they run
/// or not and disturbs none of them.
///
/// The pair's peer is the one exception: promoting the secondary may reuse
/// the primary's own `03` key, and the pair's epoch rule orders the two
/// (the older one is fenced). Here "peer" is read from the file alone (see
/// [`paired_in_file`]); across hosts the pair's handshake reports a shared
/// serial instead.
fn refuse_serial_held_elsewhere(
    target: &Target,
    settings: &Settings,
    key: &str,
) -> anyhow::Result<()> {
    // A key that does not verify is refused by the activation itself, with
    // its own precise reason.
    let Ok(verified) = licensing::verify(key, &trusted_keys(settings)?, Utc::now().date_naive())
    else {
        return Ok(());
    };
    let source = || match &target.config {
        Some(path) => Source::File(path),
        None => Source::Embedded,
    };
    let this = settings.instance.name.as_str();
    for other in settings::instance_names(source())? {
        if other == this {
            continue;
        }
        let other_settings = settings::load(source(), Some(&other), &settings::Env::process())?;
        let paths = InstancePaths::new(&other_settings.instance.data_dir, &other);
        if !paths.database.exists() {
            continue;
        }
        let store = Store::open_read_only(&paths.database)
            .map_err(|e| store_open_error(&paths.database, &e, &paths.data_dir))
            .with_context(|| {
                format!("checking that instance `{other}` does not hold this license already")
            })?;
        if let Some((role, serial)) = license::stored_serial(&store)
            && serial == verified.serial()
            && !paired_in_file(settings, &other_settings)
        {
            bail!(
                "license serial {serial:07} is already activated on instance `{other}` of {} (role {}, store {}): \
                 one key activates one server. Deactivate it there first \
                 (`gateway --instance {other} license deactivate`), or use another key",
                settings.source,
                role.code(),
                paths.database.display()
            );
        }
    }
    Ok(())
}

/// Whether two instances of one file are each other's pair peer: each one's
/// `pair.peer` is the other's `pair.listen`.
fn paired_in_file(a: &Settings, b: &Settings) -> bool {
    let (Some(a), Some(b)) = (&a.instance.pair, &b.instance.pair) else {
        return false;
    };
    let points_at = |peer: &str, listen: std::net::SocketAddr| {
        peer.parse::<std::net::SocketAddr>().ok() == Some(listen) || peer == listen.to_string()
    };
    points_at(&a.peer, b.listen) && points_at(&b.peer, a.listen)
}

pub(super) async fn license(
    target: &Target,
    settings: &Settings,
    action: LicenseAction,
) -> anyhow::Result<i32> {
    let reached = reach(settings).await?;
    let (client, lock) = match reached {
        Reach::Running(c) => (Some(c), None),
        Reach::Stopped(lock) => (None, Some(lock)),
    };
    let off = move || {
        offline(
            settings,
            lock.expect("stopped instances come with their lock"),
        )
    };
    let snapshot = match (action, client) {
        (LicenseAction::Activate { key }, Some(c)) => {
            let key = read_key(&key)?;
            refuse_serial_held_elsewhere(target, settings, &key)?;
            c.post("/license/activate", json!({"key": key}))
                .await
                .map_err(call_error)?
        }
        (LicenseAction::Activate { key }, None) => {
            let key = read_key(&key)?;
            refuse_serial_held_elsewhere(target, settings, &key)?;
            let off = off()?;
            let role = license::activate_license(&off.store, &off.license, &key, Utc::now())?;
            if role.role == ServerRole::Primary {
                crate::site::record_file_hash(&off.store, &settings.site)?;
            }
            serde_json::to_value(role)?
        }
        (LicenseAction::Promote { key }, Some(c)) => {
            let key = read_key(&key)?;
            refuse_serial_held_elsewhere(target, settings, &key)?;
            let r = c
                .post("/license/promote", json!({"key": key}))
                .await
                .map_err(call_error)?;
            println!(
                "released license serial {:07} (04); this server is now the primary",
                r["released_serial"].as_u64().unwrap_or(0)
            );
            r["role"].clone()
        }
        (LicenseAction::Promote { key }, None) => {
            let key = read_key(&key)?;
            refuse_serial_held_elsewhere(target, settings, &key)?;
            let off = off()?;
            let (released, role) = license::promote(&off.store, &off.license, &key, Utc::now())?;
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
            let off = off()?;
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
                    let off = off()?;
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
