//! The declarative configuration file: `gateway config apply FILE` reads a
//! document in the shape `gateway config export` writes and plans the change
//! against the stored configuration.
//!
//! This module owns reading that file and the [`plan`] made from it: which
//! configuration documents get a new body, which devices are new or changed,
//! and the diff people read before they apply. It reads the store and writes
//! nothing; carrying a plan out (and the permission to write) is the
//! caller's.
//!
//! The rules the plan follows:
//! * the file must be TOML with only the top-level keys an export writes
//!   (`limits`, `sessions`, `users`, `workflows`, `notify`, `session_key`,
//!   `devices`); each table is optional, and an absent one means what an
//!   export of a store without it means: the defaults, or nothing;
//! * each document's new body is built in the JSON shape the store holds
//!   (the shape `site` writes and reads) and is validated as a settings file
//!   is (ranges, names, password hashes, `[notify]`); every workflow must
//!   build with this server's plugin registry, `{data_dir}` expanded only for
//!   that check and never stored;
//! * a `sha256:<hex>` string under a `secret` or `password` key means "the
//!   stored secret at this path, unchanged" and is replaced by it; a digest
//!   that matches no stored secret there is refused, and any other value is
//!   the new secret;
//! * the session key is made once and travels with the configuration: the
//!   file may only leave it out or repeat the stored key's digest;
//! * a document is planned only when its body differs from the stored one as
//!   JSON values (nulls count as absent, as in the export);
//! * devices are keyed by name; apply never removes or renames a device and
//!   never changes its id or creation time; it adds new ones and changes a
//!   serial, status or token digest;
//! * the diff shows no secret in the clear.
//!
//! An exported file applied back unchanged plans nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::RangeInclusive;
use std::path::Path;

use chrono::{DateTime, Utc};
use plugins::Registry;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::names::{DeviceName, check_user_name, check_workflow_name};
use crate::security::{PasswordHash, sha256_hex};
use crate::settings::{ByteSize, Limits, SiteConfig, UserEntry};
use crate::site::{
    self, DOC_LIMITS, DOC_NOTIFY, DOC_SESSION_KEY, DOC_SESSIONS, DOC_USERS, DOC_WORKFLOWS,
};
use crate::store::{DeviceStatus, Store};

/// One device as the file declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclaredDevice {
    pub id: Uuid,
    pub name: String,
    pub serial: Option<String>,
    pub status: DeviceStatus,
    /// 64 lowercase hex.
    pub token_sha256: String,
    pub created_at: DateTime<Utc>,
    /// Not in the store yet.
    pub new: bool,
}

/// What applying the file would change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyPlan {
    /// Documents whose content changes: (document name, the full JSON body to store).
    pub docs: Vec<(String, String)>,
    /// Devices that are new or whose serial/status/token digest changes.
    pub devices: Vec<DeclaredDevice>,
    /// The diff against the running configuration, one line per change, for people.
    pub diff: Vec<String>,
}

impl ApplyPlan {
    /// Whether applying the file would change nothing.
    pub fn is_empty(&self) -> bool {
        self.docs.is_empty() && self.devices.is_empty()
    }
}

/// The top-level keys an export writes, in its order.
const TOP_LEVEL: &[&str] = &[
    DOC_LIMITS,
    DOC_SESSIONS,
    DOC_USERS,
    DOC_WORKFLOWS,
    DOC_NOTIFY,
    DOC_SESSION_KEY,
    "devices",
];

/// Keys that are not secrets but are shown in the diff only as changed: a
/// password hash is an offline attack target and should not land in a
/// terminal's scroll-back or a change ticket.
const HIDDEN_IN_DIFF: &[&str] = &["password_hash"];

/// The session lifetime when `[sessions]` does not say (as at start-up).
const DEFAULT_TTL_SECS: u64 = 3600;
/// Between a minute and 7 days, as the settings file allows.
const TTL_RANGE: RangeInclusive<u64> = 60..=7 * 86_400;
/// As the settings file allows.
const MAX_PAGES_RANGE: RangeInclusive<u64> = 1..=100_000;

const DEVICE_KEYS: &[&str] = &["id", "serial", "status", "token_sha256", "created_at"];

/// Plans applying the declarative file `text` to the configuration in
/// `store`: validates every value as start-up would, builds every workflow
/// with `registry` (expanding `{data_dir}` to `data_dir` for that check
/// only), and returns what would change. Reads the store, writes nothing.
/// The error names the key at fault and says what to do.
pub fn plan(
    store: &Store,
    text: &str,
    registry: &Registry,
    data_dir: &Path,
) -> Result<ApplyPlan, String> {
    let root: toml::Table = text.parse().map_err(|e| syntax_error(text, &e))?;
    if let Some(key) = root.keys().find(|k| !TOP_LEVEL.contains(&k.as_str())) {
        return Err(format!(
            "{key}: not part of the shared configuration; remove it (the file holds {})",
            listed(TOP_LEVEL, "and")
        ));
    }
    check_session_key(store, root.get(DOC_SESSION_KEY))?;

    let stored_workflows = stored_doc(store, DOC_WORKFLOWS)?;
    let stored_notify = stored_doc(store, DOC_NOTIFY)?;
    let declared = SiteConfig {
        limits: declared_limits(root.get(DOC_LIMITS))?,
        session_ttl_secs: declared_ttl(root.get(DOC_SESSIONS))?,
        users: declared_users(root.get(DOC_USERS))?,
        workflows: declared_workflows(root.get(DOC_WORKFLOWS), stored_workflows.as_ref())?,
        notify: declared_notify(root.get(DOC_NOTIFY), stored_notify.as_ref())?,
    };
    site::check_workflows(&declared, registry, data_dir)?;

    let mut plan = ApplyPlan::default();
    let defaults = site::site_docs(&SiteConfig {
        limits: Limits::default(),
        session_ttl_secs: DEFAULT_TTL_SECS,
        users: BTreeMap::new(),
        workflows: BTreeMap::new(),
        notify: None,
    });
    let parse = |body: &str| -> Value {
        serde_json::from_str(body).expect("a body just written reads back")
    };
    for ((name, body), (_, default)) in site::site_docs(&declared).into_iter().zip(defaults) {
        // A document the store does not have is read as its default, as the
        // configuration in use reads it, so declaring the default is no change.
        let old = stored_doc(store, name)?.unwrap_or_else(|| parse(&default));
        let (old, new) = (without_nulls(&old), without_nulls(&parse(&body)));
        if old != new {
            diff_value(name, old.as_ref(), new.as_ref(), false, &mut plan.diff);
            plan.docs.push((name.to_owned(), body));
        }
    }
    plan_devices(store, root.get("devices"), &mut plan)?;
    Ok(plan)
}

// ----- documents --------------------------------------------------------------

/// A stored document as JSON, or `None` when the store has none.
fn stored_doc(store: &Store, name: &str) -> Result<Option<Value>, String> {
    match store.config_doc(name).map_err(|e| read_error(&e))? {
        None => Ok(None),
        Some(doc) => serde_json::from_str(&doc.body).map(Some).map_err(|e| {
            format!(
                "configuration document `{name}` in the store is not valid JSON ({e}); the store is damaged, so restore it from a backup or from the other server before applying"
            )
        }),
    }
}

fn read_error(e: &crate::store::StoreError) -> String {
    format!("cannot read the stored configuration: {e}")
}

/// `session_key` may be left out or repeat the stored key's digest: the key
/// is made once, by whoever seeded the configuration, and is never taken
/// from a file.
fn check_session_key(store: &Store, declared: Option<&toml::Value>) -> Result<(), String> {
    let Some(declared) = declared else {
        return Ok(());
    };
    let stored = store
        .config_doc(DOC_SESSION_KEY)
        .map_err(|e| read_error(&e))?;
    let same = match (declared, stored) {
        (toml::Value::String(text), Some(doc)) => {
            digest_in(text).is_some_and(|digest| digest == sha256_hex(doc.body.trim().as_bytes()))
        }
        _ => false,
    };
    if same {
        return Ok(());
    }
    Err(
        "session_key: the session key cannot be changed by apply; it travels with the configuration and is made once — leave the key out or write the digest `gateway config export` shows"
            .to_owned(),
    )
}

fn declared_limits(value: Option<&toml::Value>) -> Result<Limits, String> {
    let defaults = Limits::default();
    let Some(value) = value else {
        return Ok(defaults);
    };
    let table = as_table(value, DOC_LIMITS)?;
    only_keys(
        table,
        DOC_LIMITS,
        &["max_job_bytes", "max_pages", "max_page_bytes"],
    )?;
    let size = |field: &str, default: u64| -> Result<u64, String> {
        let key = format!("limits.{field}");
        match table.get(field) {
            None => Ok(default),
            Some(toml::Value::Integer(n)) if *n > 0 => Ok(n.unsigned_abs()),
            Some(toml::Value::Integer(n)) => Err(format!(
                "{key}: size must be positive, found {n}; write e.g. 20MiB or 1048576"
            )),
            Some(toml::Value::String(s)) => ByteSize::parse(s)
                .map(|b| b.0)
                .map_err(|m| format!("{key}: {m}")),
            Some(other) => Err(format!(
                "{key}: expected a size such as 20MiB or 1048576, found {}",
                found(other)
            )),
        }
    };
    let limits = Limits {
        max_job_bytes: size("max_job_bytes", defaults.max_job_bytes)?,
        max_pages: whole(
            table.get("max_pages"),
            "limits.max_pages",
            u64::from(defaults.max_pages),
            MAX_PAGES_RANGE,
        )? as u32,
        max_page_bytes: size("max_page_bytes", defaults.max_page_bytes)?,
    };
    if limits.max_page_bytes > limits.max_job_bytes {
        return Err(format!(
            "limits.max_page_bytes: {} is larger than limits.max_job_bytes ({}); a page cannot be larger than its job",
            ByteSize(limits.max_page_bytes),
            ByteSize(limits.max_job_bytes)
        ));
    }
    Ok(limits)
}

fn declared_ttl(value: Option<&toml::Value>) -> Result<u64, String> {
    let Some(value) = value else {
        return Ok(DEFAULT_TTL_SECS);
    };
    let table = as_table(value, DOC_SESSIONS)?;
    only_keys(table, DOC_SESSIONS, &["ttl_secs"])?;
    whole(
        table.get("ttl_secs"),
        "sessions.ttl_secs",
        DEFAULT_TTL_SECS,
        TTL_RANGE,
    )
}

fn declared_users(value: Option<&toml::Value>) -> Result<BTreeMap<String, UserEntry>, String> {
    let mut users = BTreeMap::new();
    let Some(value) = value else {
        return Ok(users);
    };
    for (name, entry) in as_table(value, DOC_USERS)? {
        let at = format!("users.{name}");
        check_user_name(name).map_err(|m| format!("{at}: {m}"))?;
        let entry = as_table(entry, &at)?;
        only_keys(entry, &at, &["password_hash", "display_name"])?;
        let key = format!("{at}.password_hash");
        let hash = entry.get("password_hash").ok_or_else(|| {
            format!("{key}: missing; create one with `gateway user hash-password`")
        })?;
        let hash = as_text(hash, &key)?;
        PasswordHash::parse(hash).map_err(|m| format!("{key}: {m}"))?;
        let display_name = entry
            .get("display_name")
            .map(|v| as_text(v, &format!("{at}.display_name")))
            .transpose()?
            .map(str::to_owned);
        users.insert(
            name.clone(),
            UserEntry {
                password_hash: hash.to_owned(),
                display_name,
            },
        );
    }
    Ok(users)
}

/// The workflows as JSON with their secrets resolved; whether they build is
/// checked once all of the file is read.
fn declared_workflows(
    value: Option<&toml::Value>,
    stored: Option<&Value>,
) -> Result<BTreeMap<String, Value>, String> {
    let mut workflows = BTreeMap::new();
    let Some(value) = value else {
        return Ok(workflows);
    };
    for (name, raw) in as_table(value, DOC_WORKFLOWS)? {
        let at = format!("workflows.{name}");
        check_workflow_name(name).map_err(|m| format!("{at}: {m}"))?;
        as_table(raw, &at)?;
        let mut raw = to_json(raw, &at)?;
        resolve_secrets(&mut raw, stored.and_then(|s| s.get(name)), &at)?;
        workflows.insert(name.clone(), raw);
    }
    Ok(workflows)
}

fn declared_notify(
    value: Option<&toml::Value>,
    stored: Option<&Value>,
) -> Result<Option<Map<String, Value>>, String> {
    let Some(value) = value else {
        return Ok(None);
    };
    as_table(value, DOC_NOTIFY)?;
    let mut raw = to_json(value, DOC_NOTIFY)?;
    resolve_secrets(&mut raw, stored, DOC_NOTIFY)?;
    let Value::Object(table) = raw else {
        unreachable!("a TOML table becomes a JSON object");
    };
    plugins::notify::NotifySettings::parse(&table).map_err(|e| format!("notify: {e}"))?;
    Ok(Some(table))
}

// ----- secrets ----------------------------------------------------------------

/// The hex of `sha256:<64 hex>` (lower-cased), the form an export gives a
/// secret; `None` for anything else, which is a secret written out.
fn digest_in(text: &str) -> Option<String> {
    let digest = text.strip_prefix("sha256:")?;
    (digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| digest.to_ascii_lowercase())
}

/// Replaces every digest under a secret key by the stored secret at the
/// same path that it is the digest of. Only the same path counts: a digest
/// says "keep what is there", not "find this secret anywhere".
fn resolve_secrets(value: &mut Value, stored: Option<&Value>, path: &str) -> Result<(), String> {
    match value {
        Value::Object(map) => {
            for (key, item) in map.iter_mut() {
                let at = format!("{path}.{key}");
                let before = stored.and_then(|s| s.get(key));
                if site::SECRET_KEYS.contains(&key.as_str())
                    && let Value::String(text) = item
                    && let Some(digest) = digest_in(text)
                {
                    match before {
                        Some(Value::String(secret)) if sha256_hex(secret.as_bytes()) == digest => {
                            *item = Value::String(secret.clone());
                        }
                        _ => {
                            return Err(format!(
                                "{at}: this digest matches no stored secret at this path; write the secret itself instead of its digest"
                            ));
                        }
                    }
                    continue;
                }
                resolve_secrets(item, before, &at)?;
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                resolve_secrets(item, stored.and_then(|s| s.get(i)), &format!("{path}[{i}]"))?;
            }
        }
        _ => {}
    }
    Ok(())
}

// ----- devices ----------------------------------------------------------------

/// Adds the new and changed devices to the plan, refusing a file that
/// would remove, rename or re-identify a stored device.
fn plan_devices(
    store: &Store,
    declared: Option<&toml::Value>,
    plan: &mut ApplyPlan,
) -> Result<(), String> {
    let stored = store.devices().map_err(|e| read_error(&e))?;
    let digests = store.device_token_digests().map_err(|e| read_error(&e))?;
    let empty = toml::Table::new();
    let table = match declared {
        Some(value) => as_table(value, "devices")?,
        None => &empty,
    };
    let mut devices = Vec::new();
    let mut ids: BTreeMap<Uuid, &str> = BTreeMap::new();
    let mut tokens: BTreeMap<String, &str> = BTreeMap::new();
    for (name, value) in table {
        let device = declared_device(name, value)?;
        if let Some(other) = ids.insert(device.id, name) {
            return Err(format!(
                "devices.{name}.id: {} is also the id of devices.{other}; give each device its own id",
                device.id
            ));
        }
        if let Some(other) = tokens.insert(device.token_sha256.clone(), name) {
            return Err(format!(
                "devices.{name}.token_sha256: devices.{other} has the same token digest; each device needs a token of its own"
            ));
        }
        // Checked before a missing name, so a renamed device is told as a
        // rename and not as a removal.
        if let Some(other) = stored.iter().find(|s| s.id == device.id && s.name != *name) {
            return Err(format!(
                "devices.{name}.id: {} is already the id of device `{}`; renaming a device is not supported, and a new device needs an id of its own",
                device.id, other.name
            ));
        }
        devices.push(device);
    }
    for device in &stored {
        if !table.contains_key(&device.name) {
            return Err(format!(
                "devices.{}: the stored device is missing from the file; apply never removes a device; set its status to \"revoked\"",
                device.name
            ));
        }
    }
    for mut device in devices {
        let name = device.name.clone();
        let Some(before) = stored.iter().find(|s| s.name == name) else {
            plan.diff
                .push(format!("+ device {name} ({})", device.status.as_str()));
            device.new = true;
            plan.devices.push(device);
            continue;
        };
        if before.id != device.id {
            return Err(format!(
                "devices.{name}.id: the stored device has id {}; a device's id never changes, so write that id",
                before.id
            ));
        }
        if before.created_at != device.created_at {
            return Err(format!(
                "devices.{name}.created_at: the stored device was created at {}; the creation time cannot be changed, so write that time",
                crate::store::time_text(before.created_at)
            ));
        }
        let mut lines = Vec::new();
        if before.serial != device.serial {
            let shown = |s: &Option<String>| {
                s.as_deref()
                    .map_or("(none)".to_owned(), |s| format!("\"{}\"", s.escape_debug()))
            };
            lines.push(format!(
                "~ device {name} serial: {} → {}",
                shown(&before.serial),
                shown(&device.serial)
            ));
        }
        if before.status != device.status {
            lines.push(format!(
                "~ device {name} status: {} → {}",
                before.status.as_str(),
                device.status.as_str()
            ));
        }
        let old_token = digests.get(&before.id).map_or("", String::as_str);
        if old_token != device.token_sha256 {
            lines.push(format!(
                "~ device {name} token_sha256: {} → {}",
                short_digest(old_token),
                short_digest(&device.token_sha256)
            ));
        }
        if !lines.is_empty() {
            plan.diff.extend(lines);
            plan.devices.push(device);
        }
    }
    Ok(())
}

/// One `[devices.NAME]` table, checked; `new` is decided by the caller.
fn declared_device(name: &str, value: &toml::Value) -> Result<DeclaredDevice, String> {
    let at = format!("devices.{name}");
    DeviceName::parse(name).map_err(|m| format!("{at}: {m}"))?;
    let table = as_table(value, &at)?;
    only_keys(table, &at, DEVICE_KEYS)?;
    let required = |key: &str| {
        table.get(key).ok_or_else(|| {
            format!("{at}.{key}: missing; write it as `gateway config export` shows it")
        })
    };

    let id_key = format!("{at}.id");
    let id_text = as_text(required("id")?, &id_key)?;
    let id = Uuid::parse_str(id_text).map_err(|_| {
        format!("{id_key}: `{id_text}` is not a UUID; write one such as 67e55044-10b1-426f-9247-bb680e5fe0c8")
    })?;
    let serial = table
        .get("serial")
        .map(|v| as_text(v, &format!("{at}.serial")))
        .transpose()?
        .map(str::to_owned);
    let status_key = format!("{at}.status");
    let status_text = as_text(required("status")?, &status_key)?;
    let status = DeviceStatus::parse(status_text).ok_or_else(|| {
        format!(
            "{status_key}: `{}` is not a device status; use pending, approved or revoked",
            status_text.escape_debug()
        )
    })?;
    let token_key = format!("{at}.token_sha256");
    let token = as_text(required("token_sha256")?, &token_key)?;
    if token.len() != 64 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "{token_key}: expected the SHA-256 of the device's token as 64 hex digits; a token itself is never written here"
        ));
    }
    let created_key = format!("{at}.created_at");
    let created_text = match required("created_at")? {
        toml::Value::String(s) => s.clone(),
        toml::Value::Datetime(d) => d.to_string(),
        other => {
            return Err(format!(
                "{created_key}: expected an RFC 3339 time such as \"2024-05-01T12:00:00.000Z\", found {}",
                found(other)
            ));
        }
    };
    let created_at = DateTime::parse_from_rfc3339(&created_text)
        .map_err(|_| {
            format!(
                "{created_key}: `{}` is not an RFC 3339 time with a zone; write e.g. \"2024-05-01T12:00:00.000Z\"",
                created_text.escape_debug()
            )
        })?
        .with_timezone(&Utc);
    Ok(DeclaredDevice {
        id,
        name: name.to_owned(),
        serial,
        status,
        token_sha256: token.to_ascii_lowercase(),
        created_at,
        new: false,
    })
}

/// The first eight hex digits, enough to tell two digests apart by eye.
fn short_digest(digest: &str) -> String {
    match digest.get(..8) {
        Some(head) if digest.len() > 8 => format!("{head}…"),
        _ => digest.to_owned(),
    }
}

// ----- the diff ---------------------------------------------------------------

/// What replacing the stored document `name` (`current`, JSON text, if
/// any) by `proposed` would change, one line per changed leaf, secrets
/// never in the clear: how an admin reviews a conflict before re-applying
/// it (a document is re-applied whole).
pub fn document_diff(name: &str, current: Option<&str>, proposed: &str) -> Vec<String> {
    let parse = |text: &str| serde_json::from_str::<Value>(text).ok();
    let current = current.and_then(parse).and_then(|v| without_nulls(&v));
    let proposed = parse(proposed).and_then(|v| without_nulls(&v));
    let mut out = Vec::new();
    diff_value(name, current.as_ref(), proposed.as_ref(), false, &mut out);
    out
}

/// The value as an export would see it: nulls dropped (TOML has none, and
/// an absent key means the same), in objects and arrays alike.
fn without_nulls(value: &Value) -> Option<Value> {
    match value {
        Value::Null => None,
        Value::Array(items) => Some(Value::Array(
            items.iter().filter_map(without_nulls).collect(),
        )),
        Value::Object(map) => Some(Value::Object(
            map.iter()
                .filter_map(|(k, v)| without_nulls(v).map(|v| (k.clone(), v)))
                .collect(),
        )),
        other => Some(other.clone()),
    }
}

/// Appends one line per changed leaf under `path`. Tables are followed key
/// by key, arrays index by index when their length is the same; a value
/// under a secret key is never shown, only that it changed.
fn diff_value(
    path: &str,
    old: Option<&Value>,
    new: Option<&Value>,
    secret: bool,
    out: &mut Vec<String>,
) {
    let hidden = HIDDEN_IN_DIFF
        .iter()
        .any(|k| path.ends_with(&format!(".{k}")));
    match (old, new) {
        (None, None) => {}
        (None, Some(v)) => out.push(if secret {
            format!("+ {path} (secret)")
        } else if is_scalar(v) && !hidden {
            format!("+ {path}: {v}")
        } else {
            format!("+ {path}")
        }),
        (Some(_), None) => out.push(format!("- {path}")),
        (Some(a), Some(b)) if a == b => {}
        (Some(_), Some(_)) if secret => out.push(format!("~ {path} (secret changed)")),
        (Some(_), Some(_)) if hidden => out.push(format!("~ {path} (changed)")),
        (Some(Value::Object(a)), Some(Value::Object(b))) => {
            let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for key in keys {
                diff_value(
                    &format!("{path}.{key}"),
                    a.get(key),
                    b.get(key),
                    site::SECRET_KEYS.contains(&key.as_str()),
                    out,
                );
            }
        }
        (Some(Value::Array(a)), Some(Value::Array(b))) if a.len() == b.len() => {
            for (i, (a, b)) in a.iter().zip(b).enumerate() {
                diff_value(&format!("{path}[{i}]"), Some(a), Some(b), false, out);
            }
        }
        (Some(Value::Array(a)), Some(Value::Array(b))) => {
            out.push(format!("~ {path}: {} items → {} items", a.len(), b.len()));
        }
        (Some(a), Some(b)) if is_scalar(a) && is_scalar(b) => {
            out.push(format!("~ {path}: {a} → {b}"));
        }
        (Some(_), Some(_)) => out.push(format!("~ {path}")),
    }
}

fn is_scalar(value: &Value) -> bool {
    !matches!(value, Value::Array(_) | Value::Object(_))
}

// ----- reading TOML -----------------------------------------------------------

/// A parse error as one line: where, what, and what to do.
fn syntax_error(text: &str, error: &toml::de::Error) -> String {
    let message = error.message().trim_end().replace('\n', "; ");
    match error.span() {
        Some(span) => {
            let at = span.start.min(text.len());
            let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
            let line = text[..line_start].matches('\n').count() + 1;
            let column = text[line_start..at].chars().count() + 1;
            format!(
                "the file is not valid TOML at line {line}, column {column}: {message}; correct it there"
            )
        }
        None => format!("the file is not valid TOML: {message}; correct it and apply again"),
    }
}

/// The value as JSON, as the store keeps it; a TOML date becomes its text.
fn to_json(value: &toml::Value, at: &str) -> Result<Value, String> {
    Ok(match value {
        toml::Value::String(s) => Value::String(s.clone()),
        toml::Value::Integer(n) => Value::from(*n),
        toml::Value::Float(f) => serde_json::Number::from_f64(*f)
            .map(Value::Number)
            .ok_or_else(|| format!("{at}: {f} cannot be stored; write a finite number"))?,
        toml::Value::Boolean(b) => Value::Bool(*b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, v)| to_json(v, &format!("{at}[{i}]")))
                .collect::<Result<_, _>>()?,
        ),
        toml::Value::Table(table) => Value::Object(
            table
                .iter()
                .map(|(k, v)| Ok((k.clone(), to_json(v, &format!("{at}.{k}"))?)))
                .collect::<Result<_, String>>()?,
        ),
    })
}

/// How a value is named in a message about its type.
fn found(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => format!("the string \"{}\"", s.escape_debug()),
        toml::Value::Integer(n) => format!("the whole number {n}"),
        toml::Value::Float(f) => format!("the decimal number {f}"),
        toml::Value::Boolean(b) => format!("the boolean {b}"),
        toml::Value::Datetime(d) => format!("the date {d}"),
        toml::Value::Array(_) => "an array".to_owned(),
        toml::Value::Table(_) => "a table".to_owned(),
    }
}

fn as_table<'a>(value: &'a toml::Value, key: &str) -> Result<&'a toml::Table, String> {
    value.as_table().ok_or_else(|| {
        format!(
            "{key}: expected a table, found {}; write it as [{key}] with its keys below",
            found(value)
        )
    })
}

fn as_text<'a>(value: &'a toml::Value, key: &str) -> Result<&'a str, String> {
    value.as_str().ok_or_else(|| {
        format!(
            "{key}: expected a string (in quotes), found {}",
            found(value)
        )
    })
}

/// Refuses the first key of `table` that is not in `allowed`, by name.
fn only_keys(table: &toml::Table, at: &str, allowed: &[&str]) -> Result<(), String> {
    match table.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(key) => Err(format!(
            "{at}.{key}: unknown key; remove it or use {}",
            listed(allowed, "or")
        )),
        None => Ok(()),
    }
}

/// A whole number in `range`, or `default` when absent.
fn whole(
    value: Option<&toml::Value>,
    key: &str,
    default: u64,
    range: RangeInclusive<u64>,
) -> Result<u64, String> {
    let n = match value {
        None => return Ok(default),
        Some(toml::Value::Integer(n)) => *n,
        Some(other) => {
            return Err(format!(
                "{key}: expected a whole number, found {}",
                found(other)
            ));
        }
    };
    match u64::try_from(n) {
        Ok(n) if range.contains(&n) => Ok(n),
        _ => Err(format!(
            "{key}: {n} is out of range; use {}..={}",
            range.start(),
            range.end()
        )),
    }
}

/// `a, b and c`.
fn listed(items: &[&str], last: &str) -> String {
    match items {
        [] => String::new(),
        [one] => (*one).to_owned(),
        [rest @ .., end] => format!("{} {last} {end}", rest.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::role::RoleSnapshot;
    use crate::security::passwords::MIN_ITERATIONS;
    use crate::security::tokens;
    use pair_core::{Epoch, ServerId};

    #[test]
    fn a_document_diff_shows_what_re_applying_would_change_without_secrets() {
        let current = r#"{"ann":{"password_hash":"x"},"bob":{"password_hash":"y"}}"#;
        let proposed = r#"{"ann":{"password_hash":"x"},"cid":{"password_hash":"z"}}"#;
        let diff = super::document_diff("users", Some(current), proposed);
        assert_eq!(diff, vec!["- users.bob", "+ users.cid"]);
        let hooks = super::document_diff(
            "workflows",
            Some(r#"{"w":{"secret":"old"}}"#),
            r#"{"w":{"secret":"new"}}"#,
        );
        assert_eq!(hooks, vec!["~ workflows.w.secret (secret changed)"]);
        assert!(super::document_diff("limits", Some("{}"), "{}").is_empty());
    }

    const HOOK_SECRET: &str = "hook-secret-123";
    const NOTIFY_SECRET: &str = "notify-secret-456";
    const SESSION_KEY: &str = "c2Vzc2lvbi1rZXktNzg5";
    const HOOK_SECRET_PATH: &str = "workflows.to-hook.steps[1].secret";

    fn write(store: &Store, docs: &[(&str, String)]) {
        let w = RoleSnapshot::unlicensed(None)
            .replicated_write(
                Epoch::new(2, ServerId::from_u128(7)),
                store.config_meta().unwrap().version + 1,
            )
            .unwrap();
        store.put_config_docs(docs, w).unwrap();
    }

    fn add_device(store: &Store, name: &str, status: DeviceStatus) -> crate::store::Device {
        let w = RoleSnapshot::unlicensed(None)
            .replicated_write(
                Epoch::new(2, ServerId::from_u128(7)),
                store.config_meta().unwrap().version + 1,
            )
            .unwrap();
        let digest = tokens::token_digest(&tokens::new_device_token());
        store
            .insert_device(name, Some("S1"), &digest, status, w)
            .unwrap()
    }

    /// A store with every kind of document, secrets in two places, and one
    /// device.
    fn seeded() -> Store {
        let store = Store::open_in_memory().unwrap();
        let hash = PasswordHash::create("pw", MIN_ITERATIONS).to_text();
        write(
            &store,
            &[
                (
                    DOC_USERS,
                    format!(r#"{{"ann":{{"password_hash":"{hash}","display_name":null}}}}"#),
                ),
                (
                    DOC_WORKFLOWS,
                    format!(
                        r#"{{"to-hook":{{"steps":[{{"plugin":"assemble"}},{{"plugin":"webhook","url":"http://hook.example/in","secret":"{HOOK_SECRET}"}}]}},
                            "to-folder":{{"steps":[{{"plugin":"assemble"}},{{"plugin":"folder","root":"{{data_dir}}/out"}}]}}}}"#
                    ),
                ),
                (
                    DOC_NOTIFY,
                    format!(
                        r#"{{"webhook":{{"url":"http://notify.example/x","secret":"{NOTIFY_SECRET}"}}}}"#
                    ),
                ),
                (DOC_SESSION_KEY, SESSION_KEY.into()),
                (
                    DOC_LIMITS,
                    r#"{"max_job_bytes":1000,"max_pages":500,"max_page_bytes":50}"#.into(),
                ),
            ],
        );
        add_device(&store, "mfd-1", DeviceStatus::Approved);
        store
    }

    fn plan_of(store: &Store, text: &str) -> Result<ApplyPlan, String> {
        plan(
            store,
            text,
            &Registry::without_engines(),
            Path::new("/var/lib/gateway"),
        )
    }

    fn export(store: &Store) -> String {
        site::export_toml(store).unwrap()
    }

    /// Splits the table under `header` (up to the next table header) out of
    /// `text`: (the rest, that table).
    fn split_table(text: &str, header: &str) -> (String, String) {
        let (mut rest, mut table, mut inside) = (String::new(), String::new(), false);
        for line in text.lines() {
            if line.starts_with('[') {
                inside = line.trim() == header;
            }
            let into = if inside { &mut table } else { &mut rest };
            into.push_str(line);
            into.push('\n');
        }
        assert!(!table.is_empty(), "no {header} in:\n{text}");
        (rest, table)
    }

    /// The round-trip property: what export writes, apply reads back as no
    /// change at all (digests stand for the stored secrets, nulls for
    /// absent keys, `{data_dir}` stays unexpanded).
    #[test]
    fn an_exported_file_applied_back_plans_nothing() {
        let store = seeded();
        let plan = plan_of(&store, &export(&store)).unwrap();
        assert!(plan.is_empty(), "{plan:#?}");
        assert!(plan.diff.is_empty(), "{:?}", plan.diff);

        let empty = Store::open_in_memory().unwrap();
        let plan = plan_of(&empty, &export(&empty)).unwrap();
        assert!(plan.is_empty(), "an empty store round-trips too: {plan:#?}");
    }

    #[test]
    fn a_changed_limit_is_planned_and_shown() {
        let store = seeded();
        let text = export(&store).replace("max_pages = 500", "max_pages = 20");
        let plan = plan_of(&store, &text).unwrap();
        assert_eq!(
            plan.docs,
            vec![(
                DOC_LIMITS.to_owned(),
                r#"{"max_job_bytes":1000,"max_pages":20,"max_page_bytes":50}"#.to_owned()
            )]
        );
        assert_eq!(plan.diff, vec!["~ limits.max_pages: 500 → 20"]);
        assert!(plan.devices.is_empty());
    }

    #[test]
    fn a_digest_keeps_the_stored_secret() {
        let store = seeded();
        let text = export(&store).replace("http://hook.example/in", "http://hook.example/v2");
        let plan = plan_of(&store, &text).unwrap();
        assert_eq!(plan.docs.len(), 1, "{:?}", plan.docs);
        let (name, body) = &plan.docs[0];
        assert_eq!(name, DOC_WORKFLOWS);
        let body: Value = serde_json::from_str(body).unwrap();
        assert_eq!(
            body["to-hook"]["steps"][1]["secret"].as_str(),
            Some(HOOK_SECRET)
        );
        assert_eq!(
            body["to-folder"]["steps"][1]["root"].as_str(),
            Some("{data_dir}/out"),
            "placeholders are stored as written"
        );
        assert_eq!(
            plan.diff,
            vec![
                r#"~ workflows.to-hook.steps[1].url: "http://hook.example/in" → "http://hook.example/v2""#
            ]
        );
    }

    #[test]
    fn a_digest_of_no_stored_secret_is_refused_naming_the_path() {
        let store = seeded();
        let text = export(&store);
        let stored = format!("sha256:{}", sha256_hex(HOOK_SECRET.as_bytes()));
        let other = format!("sha256:{}", sha256_hex(b"some-other-secret"));
        assert!(text.contains(&stored), "{text}");
        let e = plan_of(&store, &text.replace(&stored, &other)).unwrap_err();
        assert!(e.starts_with(HOOK_SECRET_PATH), "{e}");
        assert!(e.contains("write the secret itself"), "{e}");
    }

    #[test]
    fn a_plain_new_secret_is_taken_and_not_shown() {
        let store = seeded();
        let stored = format!("sha256:{}", sha256_hex(NOTIFY_SECRET.as_bytes()));
        let text = export(&store).replace(&stored, "brand-new-notify-secret");
        let plan = plan_of(&store, &text).unwrap();
        assert_eq!(plan.docs.len(), 1, "{:?}", plan.docs);
        let (name, body) = &plan.docs[0];
        assert_eq!(name, DOC_NOTIFY);
        let body: Value = serde_json::from_str(body).unwrap();
        assert_eq!(
            body["webhook"]["secret"].as_str(),
            Some("brand-new-notify-secret")
        );
        assert_eq!(plan.diff, vec!["~ notify.webhook.secret (secret changed)"]);
        for line in &plan.diff {
            assert!(!line.contains("brand-new"), "{line}");
        }
    }

    #[test]
    fn a_device_left_out_is_refused() {
        let store = seeded();
        let (text, _) = split_table(&export(&store), "[devices.mfd-1]");
        let e = plan_of(&store, &text).unwrap_err();
        assert!(e.starts_with("devices.mfd-1:"), "{e}");
        assert!(e.contains("set its status to \"revoked\""), "{e}");
    }

    #[test]
    fn a_new_device_and_a_status_change_are_planned() {
        let store = seeded();
        let id = Uuid::new_v4();
        let digest = tokens::token_digest("sgd_new");
        let text = format!(
            "{}\n[devices.mfd-9]\nid = \"{id}\"\nstatus = \"approved\"\ntoken_sha256 = \"{digest}\"\ncreated_at = \"2024-05-01T12:00:00.000Z\"\n",
            export(&store).replace("status = \"approved\"", "status = \"revoked\"")
        );
        let plan = plan_of(&store, &text).unwrap();
        assert!(plan.docs.is_empty(), "{:?}", plan.docs);
        assert_eq!(
            plan.diff,
            vec![
                "~ device mfd-1 status: approved → revoked",
                "+ device mfd-9 (approved)"
            ]
        );
        let new = plan.devices.iter().find(|d| d.name == "mfd-9").unwrap();
        assert_eq!(
            new,
            &DeclaredDevice {
                id,
                name: "mfd-9".into(),
                serial: None,
                status: DeviceStatus::Approved,
                token_sha256: digest,
                created_at: "2024-05-01T12:00:00Z".parse().unwrap(),
                new: true,
            }
        );
        let old = plan.devices.iter().find(|d| d.name == "mfd-1").unwrap();
        assert_eq!(old.status, DeviceStatus::Revoked);
        assert!(!old.new);
    }

    #[test]
    fn a_renamed_device_is_refused() {
        let store = seeded();
        let text = export(&store).replace("[devices.mfd-1]", "[devices.mfd-2]");
        let e = plan_of(&store, &text).unwrap_err();
        assert!(e.starts_with("devices.mfd-2.id:"), "{e}");
        assert!(e.contains("renaming a device is not supported"), "{e}");

        // Keeping the old entry and reusing its id under a new name.
        let text = export(&store);
        let id = store.devices().unwrap()[0].id;
        let extra = format!(
            "{text}\n[devices.mfd-2]\nid = \"{id}\"\nstatus = \"approved\"\ntoken_sha256 = \"{}\"\ncreated_at = \"2024-05-01T12:00:00Z\"\n",
            "a".repeat(64)
        );
        let e = plan_of(&store, &extra).unwrap_err();
        assert!(e.starts_with("devices.mfd-2.id:"), "{e}");
    }

    /// Index fields travel in the workflows document: applied, exported
    /// and applied back they plan nothing and come out as written; a bad
    /// field is refused with the workflow and the field.
    #[test]
    fn index_fields_round_trip_through_apply_and_export() {
        let store = seeded();
        let fields = "\n[workflows.invoices]\nsteps = [{ plugin = \"assemble\" }, { plugin = \"folder\", root = \"/srv/invoices\" }]\n\
            \n[[workflows.invoices.fields]]\nname = \"po_number\"\nlabel = \"PO number\"\ntype = \"text\"\nrequired = true\npattern = 'INV\\.[0-9]{6}'\n\
            \n[[workflows.invoices.fields]]\nname = \"dept\"\nlabel = \"Department\"\ntype = \"choice\"\nchoices = [\"Sales\", \"R&D\"]\n";
        let plan = plan_of(&store, &format!("{}{fields}", export(&store))).unwrap();
        assert_eq!(plan.docs.len(), 1, "{plan:#?}");
        assert_eq!(plan.docs[0].0, DOC_WORKFLOWS);
        write(&store, &[(DOC_WORKFLOWS, plan.docs[0].1.clone())]);

        let exported = export(&store);
        let again = plan_of(&store, &exported).unwrap();
        assert!(again.is_empty(), "{again:#?}");
        let parsed: toml::Table = toml::from_str(&exported).unwrap();
        let written = &parsed["workflows"]["invoices"]["fields"];
        assert_eq!(written[0]["pattern"].as_str(), Some(r"INV\.[0-9]{6}"));
        assert_eq!(written[0]["required"].as_bool(), Some(true));
        assert_eq!(written[1]["choices"][1].as_str(), Some("R&D"));

        let bad = format!(
            "{exported}\n[workflows.more]\nsteps = [{{ plugin = \"assemble\" }}]\n\
             [[workflows.more.fields]]\nname = \"n\"\nlabel = \"N\"\ntype = \"number\"\nchoices = [\"1\"]\n"
        );
        let e = plan_of(&store, &bad).unwrap_err();
        assert!(
            e.contains("workflow `more`: index field `n`: `choices` is only for `choice` fields"),
            "{e}"
        );
    }

    #[test]
    fn a_workflow_with_an_unknown_plugin_is_refused_with_its_name() {
        let store = seeded();
        let text = format!(
            "{}\n[workflows.to-nowhere]\nsteps = [{{ plugin = \"teleport\" }}]\n",
            export(&store)
        );
        let e = plan_of(&store, &text).unwrap_err();
        assert!(e.contains("to-nowhere"), "{e}");
        assert!(e.contains("teleport"), "{e}");
    }

    #[test]
    fn an_unknown_top_level_key_is_refused_by_name() {
        let store = seeded();
        let text = format!("{}\n[licensing]\nkey = \"x\"\n", export(&store));
        let e = plan_of(&store, &text).unwrap_err();
        assert!(
            e.starts_with("licensing: not part of the shared configuration"),
            "{e}"
        );
    }

    #[test]
    fn the_session_key_cannot_be_changed() {
        let store = seeded();
        let stored = format!("sha256:{}", sha256_hex(SESSION_KEY.as_bytes()));
        let text = export(&store).replace(&stored, "bmV3LWtleQ==");
        let e = plan_of(&store, &text).unwrap_err();
        assert!(
            e.starts_with("session_key: the session key cannot be changed by apply"),
            "{e}"
        );

        // Leaving it out is no change.
        let without: String = export(&store)
            .lines()
            .filter(|l| !l.starts_with("session_key"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(plan_of(&store, &without).unwrap().is_empty());
    }

    #[test]
    fn bad_toml_is_refused_with_its_position() {
        let store = seeded();
        let e = plan_of(&store, "[limits]\nmax_pages = = 3\n").unwrap_err();
        assert!(e.contains("line 2, column"), "{e}");
        assert!(!e.contains('\n'), "one line: {e}");
    }

    #[test]
    fn values_are_checked_as_at_start_up() {
        let store = seeded();
        let e = plan_of(&store, "[sessions]\nttl_secs = 5\n").unwrap_err();
        assert!(e.starts_with("sessions.ttl_secs: 5 is out of range"), "{e}");
        let e = plan_of(&store, "[users.bob]\npassword_hash = \"nope\"\n").unwrap_err();
        assert!(e.starts_with("users.bob.password_hash:"), "{e}");
        let e = plan_of(
            &store,
            "[limits]\nmax_job_bytes = 10\nmax_page_bytes = 20\n",
        )
        .unwrap_err();
        assert!(e.starts_with("limits.max_page_bytes:"), "{e}");
    }

    /// A file without the tables resets them to what a store without the
    /// documents runs with; users and devices are shown one line each, and
    /// password hashes are not printed.
    #[test]
    fn a_sparse_file_plans_the_removals_it_means() {
        let store = seeded();
        let text = export(&store);
        let (_, devices) = split_table(&text, "[devices.mfd-1]");
        let session = text.lines().find(|l| l.starts_with("session_key")).unwrap();
        let hash = PasswordHash::create("pw2", MIN_ITERATIONS).to_text();
        let sparse = format!("{session}\n[users.carol]\npassword_hash = \"{hash}\"\n\n{devices}");
        let plan = plan_of(&store, &sparse).unwrap();
        let names: Vec<&str> = plan.docs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            vec![DOC_LIMITS, DOC_USERS, DOC_WORKFLOWS, DOC_NOTIFY]
        );
        assert!(
            plan.diff.contains(&"- users.ann".to_owned()),
            "{:?}",
            plan.diff
        );
        assert!(
            plan.diff.contains(&"+ users.carol".to_owned()),
            "{:?}",
            plan.diff
        );
        assert!(
            plan.diff.contains(&"- notify".to_owned()),
            "{:?}",
            plan.diff
        );
        assert!(
            plan.diff
                .contains(&"~ limits.max_job_bytes: 1000 → 536870912".to_owned()),
            "{:?}",
            plan.diff
        );
        let notify = &plan.docs.iter().find(|(n, _)| n == DOC_NOTIFY).unwrap().1;
        assert_eq!(notify, "null");
        for line in &plan.diff {
            assert!(!line.contains("pbkdf2"), "{line}");
        }
    }
}
