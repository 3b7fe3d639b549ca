//! Settings: the TOML configuration file (one file may serve several named
//! instances), environment overrides, and the embedded defaults, turned once
//! at start-up into typed, validated values. Nothing after start-up reads raw
//! strings from the file again.
//!
//! The file has two kinds of content:
//! * instance settings (`[defaults]`, `[instances.NAME]`, `[licensing]`):
//!   where this server listens and keeps its data — local to each server;
//! * site configuration (`[limits]`, `[sessions]`, `[users]`, `[workflows]`):
//!   what the pair shares. The primary imports it into its store as a new
//!   configuration version; a secondary only uses it to seed an empty store.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::security::PasswordHash;

/// The configuration used when no file is given: one instance on loopback
/// with the built-in workflows.
pub const EMBEDDED_DEFAULTS: &str = include_str!("../default-config.toml");

/// A configuration problem, naming the key (or variable) and what to do.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The file cannot be read. The cause is part of the message and not
    /// a separate error source, so a printed chain says it once.
    #[error("cannot read configuration file {path}: {cause} — {fix}")]
    Read {
        path: PathBuf,
        cause: String,
        fix: &'static str,
    },
    #[error("configuration file {path} is not valid: {message}")]
    Parse { path: String, message: String },
    /// A value of the wrong type, found by the TOML decoder.
    #[error("{key}: {message} (line {line} of {path})")]
    WrongType {
        key: String,
        message: String,
        line: usize,
        path: String,
    },
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
    #[error("instance `{name}` is not in {path}; instances there: {known}")]
    UnknownInstance {
        name: String,
        path: String,
        known: String,
    },
    #[error("{path} defines several instances ({known}): choose one with --instance")]
    InstanceRequired { path: String, known: String },
}

fn read_error(path: &Path, e: &std::io::Error) -> SettingsError {
    use std::io::ErrorKind as K;
    let fix = match e.kind() {
        K::NotFound => {
            "check the path given to --config (or SCANGW_CONFIG); without either, the embedded defaults are used"
        }
        K::PermissionDenied => {
            "run as the service user or root, or let that user read the file (chmod o+r, or chgrp)"
        }
        K::IsADirectory => "--config names a directory; give the configuration file in it",
        _ => "check the path given to --config (or SCANGW_CONFIG)",
    };
    SettingsError::Read {
        path: path.to_owned(),
        cause: plugins::fsutil::io_cause(e),
        fix,
    }
}

/// The names of the instances a configuration file defines, in order; the
/// embedded defaults define none (their one instance is `gw1`). The file is
/// read and parsed, but no instance is validated.
pub fn instance_names(source: Source<'_>) -> Result<Vec<String>, SettingsError> {
    let (text, label) = match source {
        Source::File(path) => (
            std::fs::read_to_string(path).map_err(|e| read_error(path, &e))?,
            path.display().to_string(),
        ),
        Source::Embedded => (EMBEDDED_DEFAULTS.to_owned(), "embedded defaults".to_owned()),
    };
    let raw: RawFile = toml::from_str(&text).map_err(|e| decode_error(&text, &label, &e))?;
    Ok(raw.instances.keys().cloned().collect())
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> SettingsError {
    SettingsError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

// ----- raw file shape -------------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    licensing: RawLicensing,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    sessions: RawSessions,
    #[serde(default)]
    users: BTreeMap<String, RawUser>,
    #[serde(default)]
    workflows: BTreeMap<String, serde_json::Value>,
    /// Where admins are told of pair events (mail and/or webhook).
    #[serde(default)]
    notify: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    defaults: RawInstance,
    #[serde(default)]
    instances: BTreeMap<String, RawInstance>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLicensing {
    #[serde(default)]
    trusted_vendor_keys: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_job_bytes: Option<ByteSize>,
    max_pages: Option<Scalar>,
    max_page_bytes: Option<ByteSize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSessions {
    ttl_secs: Option<Scalar>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    password_hash: String,
    display_name: Option<String>,
}

/// Instance settings as written; every field optional so `[defaults]`,
/// `[instances.NAME]` and the environment can be layered. Every value is a
/// loose [`Scalar`] until validation, so a value of the wrong type is
/// reported like any other bad value: with the key (or variable) it came
/// from and the type expected.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInstance {
    data_dir: Option<Scalar>,
    listen: Option<Scalar>,
    listen_plain: Option<Scalar>,
    listen_proxy: Option<Scalar>,
    tls_cert: Option<Scalar>,
    tls_key: Option<Scalar>,
    workers: Option<Scalar>,
    time_zone: Option<Scalar>,
    log_format: Option<Scalar>,
    log_level: Option<Scalar>,
    tesseract: Option<Scalar>,
    ocr_parallelism: Option<Scalar>,
    max_attempts: Option<Scalar>,
    max_uploads_in_flight: Option<Scalar>,
    upload_slot_wait_ms: Option<Scalar>,
    step_timeout_secs: Option<Scalar>,
    maintenance_retry_after_secs: Option<Scalar>,
    login_failures_per_minute: Option<Scalar>,
    outbox_replay_window_secs: Option<Scalar>,
    /// The `pair` sub-table, as written; flattened into the `pair_*`
    /// fields below before layering.
    #[serde(default)]
    pair: Option<RawPair>,
    #[serde(skip)]
    pair_listen: Option<Scalar>,
    #[serde(skip)]
    pair_peer: Option<Scalar>,
    #[serde(skip)]
    pair_heartbeat_interval_ms: Option<Scalar>,
    #[serde(skip)]
    pair_dead_threshold_ms: Option<Scalar>,
    #[serde(skip)]
    pair_replication_period_secs: Option<Scalar>,
    #[serde(skip)]
    pair_max_clock_skew_ms: Option<Scalar>,
    #[serde(skip)]
    pair_ack: Option<Scalar>,
    #[serde(skip)]
    pair_peer_ack_timeout_ms: Option<Scalar>,
    #[serde(skip)]
    pair_replica_retention_secs: Option<Scalar>,
    #[serde(skip)]
    pair_handover_drain_secs: Option<Scalar>,
}

/// `[defaults.pair]` / `[instances.NAME.pair]`: this server's side of the
/// pair link. Local to each server, never replicated.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPair {
    listen: Option<Scalar>,
    peer: Option<Scalar>,
    heartbeat_interval_ms: Option<Scalar>,
    dead_threshold_ms: Option<Scalar>,
    replication_period_secs: Option<Scalar>,
    max_clock_skew_ms: Option<Scalar>,
    ack: Option<Scalar>,
    peer_ack_timeout_ms: Option<Scalar>,
    replica_retention_secs: Option<Scalar>,
    handover_drain_secs: Option<Scalar>,
}

impl RawInstance {
    /// Moves the `pair` sub-table's values into the flat `pair_*` fields,
    /// which layer like every other instance field.
    fn flatten_pair(mut self) -> RawInstance {
        if let Some(pair) = self.pair.take() {
            self.pair_listen = pair.listen;
            self.pair_peer = pair.peer;
            self.pair_heartbeat_interval_ms = pair.heartbeat_interval_ms;
            self.pair_dead_threshold_ms = pair.dead_threshold_ms;
            self.pair_replication_period_secs = pair.replication_period_secs;
            self.pair_max_clock_skew_ms = pair.max_clock_skew_ms;
            self.pair_ack = pair.ack;
            self.pair_peer_ack_timeout_ms = pair.peer_ack_timeout_ms;
            self.pair_replica_retention_secs = pair.replica_retention_secs;
            self.pair_handover_drain_secs = pair.handover_drain_secs;
        }
        self
    }
}

/// A value as written in the file (any TOML type), or as text from the
/// environment, before its type is checked.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Scalar {
    Int(i64),
    Float(f64),
    Bool(bool),
    Text(String),
    /// An array, a table or a date: never a valid setting value.
    Other(&'static str),
}

impl Scalar {
    /// How the value is shown in a message about its type.
    fn found(&self) -> String {
        match self {
            Scalar::Int(n) => format!("the whole number {n}"),
            Scalar::Float(f) => format!("the decimal number {f}"),
            Scalar::Bool(b) => format!("the boolean {b}"),
            Scalar::Text(t) => format!("the string \"{}\"", t.escape_debug()),
            Scalar::Other(what) => (*what).to_owned(),
        }
    }
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Loose;
        impl<'de> serde::de::Visitor<'de> for Loose {
            type Value = Scalar;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a value")
            }
            fn visit_bool<E>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar::Int(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Scalar, E> {
                Ok(i64::try_from(v).map_or(Scalar::Float(v as f64), Scalar::Int))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar::Float(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar::Text(v.to_owned()))
            }
            fn visit_string<E>(self, v: String) -> Result<Scalar, E> {
                Ok(Scalar::Text(v))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Scalar, A::Error> {
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(Scalar::Other("an array"))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Scalar, A::Error> {
                while map
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(Scalar::Other("a table or a date"))
            }
        }
        d.deserialize_any(Loose)
    }
}

// ----- loading --------------------------------------------------------------------

/// Where the configuration text comes from.
pub enum Source<'a> {
    File(&'a Path),
    Embedded,
}

/// Loads settings for one instance: file (or embedded defaults), then
/// `[defaults]`, then `[instances.NAME]`, then the environment.
pub fn load(
    source: Source<'_>,
    instance: Option<&str>,
    env: &Env,
) -> Result<Settings, SettingsError> {
    env.check_known()?;
    let (text, label, base_dir) = match source {
        Source::File(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| read_error(path, &e))?;
            let dir = path.parent().map(Path::to_owned).unwrap_or_default();
            (text, path.display().to_string(), dir)
        }
        Source::Embedded => (
            EMBEDDED_DEFAULTS.to_owned(),
            "embedded defaults".to_owned(),
            PathBuf::new(),
        ),
    };
    // Relative paths in the file are relative to the file; everything is made
    // absolute once here, so moving the working directory changes nothing.
    let base_dir = if base_dir.is_absolute() {
        base_dir
    } else {
        std::env::current_dir()
            .map_err(|e| {
                invalid(
                    "data_dir",
                    format!("cannot tell the current directory: {e}"),
                )
            })?
            .join(base_dir)
    };
    let raw: RawFile = toml::from_str(&text).map_err(|e| decode_error(&text, &label, &e))?;
    for key in raw.instances.keys() {
        InstanceName::parse(key).map_err(|m| invalid(format!("instances.{key}"), m))?;
    }
    let known = || raw.instances.keys().cloned().collect::<Vec<_>>().join(", ");
    let name = match instance {
        Some(n) => n.to_owned(),
        None if raw.instances.len() == 1 => {
            raw.instances.keys().next().cloned().unwrap_or_default()
        }
        None if raw.instances.is_empty() => "gw1".to_owned(),
        None => {
            return Err(SettingsError::InstanceRequired {
                path: label,
                known: known(),
            });
        }
    };
    let name = InstanceName::parse(&name).map_err(|m| invalid("--instance", m))?;
    if !raw.instances.is_empty() && !raw.instances.contains_key(name.as_str()) {
        return Err(SettingsError::UnknownInstance {
            name: name.to_string(),
            path: label,
            known: known(),
        });
    }

    // Layer defaults, the instance table and the environment, remembering
    // where each value came from so an error can name it.
    let mut origin: BTreeMap<&'static str, String> = BTreeMap::new();
    let mut merged = RawInstance::default();
    let layers = [
        ("defaults".to_owned(), Some(raw.defaults.clone())),
        (
            format!("instances.{name}"),
            raw.instances.get(name.as_str()).cloned(),
        ),
    ];
    for (prefix, layer) in layers {
        if let Some(layer) = layer {
            merge(&mut merged, &layer.flatten_pair(), &prefix, &mut origin);
        }
    }
    for (var, target) in ENV_VARS {
        if let (EnvTarget::Instance(field), Some(value)) = (target, env.get(var)) {
            set_instance_field(&mut merged, field, Scalar::Text(value.to_owned()));
            origin.insert(field, format!("environment variable {var}"));
        }
    }
    let key = |field: &'static str| {
        origin
            .get(field)
            .cloned()
            .unwrap_or_else(|| format!("defaults.{}", field.replacen("pair_", "pair.", 1)))
    };

    let instance = validate_instance(name, merged, &base_dir, &key)?;
    let site = validate_site(&raw)?;
    for (i, k) in raw.licensing.trusted_vendor_keys.iter().enumerate() {
        licensing::VendorPublicKey::from_text(k)
            .map_err(|e| invalid(format!("licensing.trusted_vendor_keys[{i}]"), e.to_string()))?;
    }
    Ok(Settings {
        instance,
        trusted_vendor_keys: raw.licensing.trusted_vendor_keys.clone(),
        site,
        source: label,
    })
}

fn merge(
    into: &mut RawInstance,
    layer: &RawInstance,
    prefix: &str,
    origin: &mut BTreeMap<&'static str, String>,
) {
    macro_rules! take {
        ($($f:ident),*) => {$(
            if let Some(v) = &layer.$f {
                into.$f = Some(v.clone());
                // `pair_listen` is written `pair.listen` in the file.
                let key = stringify!($f).replacen("pair_", "pair.", 1);
                origin.insert(stringify!($f), format!("{prefix}.{key}"));
            }
        )*};
    }
    take!(
        data_dir,
        listen,
        listen_plain,
        listen_proxy,
        tls_cert,
        tls_key,
        workers,
        time_zone,
        log_format,
        log_level,
        tesseract,
        ocr_parallelism,
        max_attempts,
        max_uploads_in_flight,
        upload_slot_wait_ms,
        step_timeout_secs,
        maintenance_retry_after_secs,
        login_failures_per_minute,
        outbox_replay_window_secs,
        pair_listen,
        pair_peer,
        pair_heartbeat_interval_ms,
        pair_dead_threshold_ms,
        pair_replication_period_secs,
        pair_max_clock_skew_ms,
        pair_ack,
        pair_peer_ack_timeout_ms,
        pair_replica_retention_secs,
        pair_handover_drain_secs
    );
}

fn set_instance_field(into: &mut RawInstance, field: &str, value: Scalar) {
    let slot = match field {
        "data_dir" => &mut into.data_dir,
        "listen" => &mut into.listen,
        "listen_plain" => &mut into.listen_plain,
        "listen_proxy" => &mut into.listen_proxy,
        "tls_cert" => &mut into.tls_cert,
        "tls_key" => &mut into.tls_key,
        "workers" => &mut into.workers,
        "time_zone" => &mut into.time_zone,
        "log_format" => &mut into.log_format,
        "log_level" => &mut into.log_level,
        "tesseract" => &mut into.tesseract,
        "ocr_parallelism" => &mut into.ocr_parallelism,
        "max_attempts" => &mut into.max_attempts,
        "max_uploads_in_flight" => &mut into.max_uploads_in_flight,
        "upload_slot_wait_ms" => &mut into.upload_slot_wait_ms,
        "step_timeout_secs" => &mut into.step_timeout_secs,
        "maintenance_retry_after_secs" => &mut into.maintenance_retry_after_secs,
        "login_failures_per_minute" => &mut into.login_failures_per_minute,
        "outbox_replay_window_secs" => &mut into.outbox_replay_window_secs,
        "pair_listen" => &mut into.pair_listen,
        "pair_peer" => &mut into.pair_peer,
        "pair_heartbeat_interval_ms" => &mut into.pair_heartbeat_interval_ms,
        "pair_dead_threshold_ms" => &mut into.pair_dead_threshold_ms,
        "pair_replication_period_secs" => &mut into.pair_replication_period_secs,
        "pair_max_clock_skew_ms" => &mut into.pair_max_clock_skew_ms,
        "pair_ack" => &mut into.pair_ack,
        "pair_peer_ack_timeout_ms" => &mut into.pair_peer_ack_timeout_ms,
        "pair_replica_retention_secs" => &mut into.pair_replica_retention_secs,
        "pair_handover_drain_secs" => &mut into.pair_handover_drain_secs,
        other => unreachable!("ENV_VARS names unknown instance setting {other}"),
    };
    *slot = Some(value);
}

/// A TOML decoding error, naming the key when the error is about a value
/// (the decoder itself only points at a line and column).
fn decode_error(text: &str, label: &str, error: &toml::de::Error) -> SettingsError {
    let message = error.message().trim_end().to_owned();
    if let Some(span) = error.span()
        && let Some((key, line)) = key_at(text, span.start)
    {
        return SettingsError::WrongType {
            key,
            message,
            line,
            path: label.to_owned(),
        };
    }
    SettingsError::Parse {
        path: label.to_owned(),
        message: error.to_string().trim_end().to_owned(),
    }
}

/// The dotted key whose value starts at byte `at` of `text` (`limits.max_pages`
/// for `max_pages = ...` under `[limits]`) and its line number; `None` when
/// `at` is not inside the value of a `key = value` line (a syntax error, or an
/// unknown key, which the decoder already names).
fn key_at(text: &str, at: usize) -> Option<(String, usize)> {
    let at = at.min(text.len());
    let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let line_no = text[..line_start].matches('\n').count() + 1;
    let (key, _) = text[line_start..at].split_once('=')?;
    let key = key.trim().trim_matches('"');
    if key.is_empty() {
        return None;
    }
    let table = text[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| {
            l.trim_matches(|c| c == '[' || c == ']')
                .trim()
                .replace('"', "")
        });
    let key = match table {
        Some(t) if !t.is_empty() => format!("{t}.{key}"),
        _ => key.to_owned(),
    };
    Some((key, line_no))
}

fn number(
    value: &Option<Scalar>,
    key: &dyn Fn(&'static str) -> String,
    field: &'static str,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Result<u64, SettingsError> {
    let n = match value {
        None => return Ok(default),
        Some(Scalar::Int(n)) => *n,
        Some(Scalar::Text(t)) => t
            .trim()
            .parse::<i64>()
            .map_err(|_| invalid(key(field), format!("`{t}` is not a whole number")))?,
        Some(other) => {
            return Err(invalid(
                key(field),
                format!("expected a whole number, found {}", other.found()),
            ));
        }
    };
    if n < 0 || !range.contains(&(n as u64)) {
        return Err(invalid(
            key(field),
            format!(
                "{n} is out of range; use {}..={}",
                range.start(),
                range.end()
            ),
        ));
    }
    Ok(n as u64)
}

/// A text setting; a value of another type is refused, naming the key.
fn text(
    value: &Option<Scalar>,
    key: &dyn Fn(&'static str) -> String,
    field: &'static str,
) -> Result<Option<String>, SettingsError> {
    match value {
        None => Ok(None),
        Some(Scalar::Text(t)) => Ok(Some(t.clone())),
        Some(other) => Err(invalid(
            key(field),
            format!("expected a string (in quotes), found {}", other.found()),
        )),
    }
}

fn address(value: &str, key: String) -> Result<SocketAddr, SettingsError> {
    value.trim().parse().map_err(|_| {
        invalid(
            key,
            format!("`{value}` is not an address:port such as 127.0.0.1:8443 or [::]:8443"),
        )
    })
}

fn validate_instance(
    name: InstanceName,
    raw: RawInstance,
    base_dir: &Path,
    key: &dyn Fn(&'static str) -> String,
) -> Result<InstanceSettings, SettingsError> {
    let listen = text(&raw.listen, key, "listen")?;
    let listen_plain = text(&raw.listen_plain, key, "listen_plain")?;
    let listen_proxy = text(&raw.listen_proxy, key, "listen_proxy")?;
    let tls_cert = text(&raw.tls_cert, key, "tls_cert")?;
    let tls_key = text(&raw.tls_key, key, "tls_key")?;
    let time_zone = text(&raw.time_zone, key, "time_zone")?;
    let log_format = text(&raw.log_format, key, "log_format")?;
    let log_level = text(&raw.log_level, key, "log_level")?;
    let tesseract = text(&raw.tesseract, key, "tesseract")?;
    let data_dir = text(&raw.data_dir, key, "data_dir")?
        .unwrap_or_else(|| "gateway-data/{instance}".to_owned())
        .replace("{instance}", name.as_str());
    if data_dir.trim().is_empty() {
        return Err(invalid(key("data_dir"), "must not be empty"));
    }
    let data_dir = base_dir.join(data_dir);

    let mut listeners = Vec::new();
    if let Some(v) = &listen {
        listeners.push(ListenerSettings {
            addr: address(v, key("listen"))?,
            kind: ListenerKind::Https,
        });
    }
    if let Some(v) = &listen_plain {
        let addr = address(v, key("listen_plain"))?;
        // Plain HTTP carries device tokens and passwords in the clear, so it
        // is only ever allowed where nothing leaves the machine.
        if !addr.ip().is_loopback() {
            return Err(invalid(
                key("listen_plain"),
                format!(
                    "plain HTTP is only allowed on a loopback address (127.0.0.1 or ::1), not {addr}; use `listen` for HTTPS"
                ),
            ));
        }
        listeners.push(ListenerSettings {
            addr,
            kind: ListenerKind::Plain,
        });
    }
    if let Some(v) = &listen_proxy {
        listeners.push(ListenerSettings {
            addr: address(v, key("listen_proxy"))?,
            kind: ListenerKind::ProxyHttps,
        });
    }
    if listeners.is_empty() {
        listeners.push(ListenerSettings {
            addr: "127.0.0.1:8443".parse().expect("literal address"),
            kind: ListenerKind::Https,
        });
    }
    for (i, a) in listeners.iter().enumerate() {
        if a.addr.port() != 0 && listeners[..i].iter().any(|b| b.addr == a.addr) {
            return Err(invalid(
                key("listen"),
                format!("{} is configured for two listeners", a.addr),
            ));
        }
    }

    let tls = match (&tls_cert, &tls_key) {
        (Some(c), Some(k)) => TlsSource::Files {
            cert: base_dir.join(c),
            key: base_dir.join(k),
        },
        (None, None) => TlsSource::SelfSigned,
        (Some(_), None) => {
            return Err(invalid(
                key("tls_cert"),
                "tls_cert is set but tls_key is not; set both or neither",
            ));
        }
        (None, Some(_)) => {
            return Err(invalid(
                key("tls_key"),
                "tls_key is set but tls_cert is not; set both or neither",
            ));
        }
    };

    let cores = std::thread::available_parallelism().map_or(2, |n| n.get()) as u64;
    let time_zone_text = time_zone.clone();
    let time_zone = match &time_zone {
        Some(tz) => tz.parse::<chrono_tz::Tz>().map_err(|_| {
            invalid(
                key("time_zone"),
                format!("`{tz}` is not an IANA time zone name such as Europe/Berlin or UTC"),
            )
        })?,
        None => system_time_zone(),
    };
    let log_format = match log_format.as_deref().unwrap_or("human") {
        "human" => LogFormat::Human,
        "json" => LogFormat::Json,
        other => {
            return Err(invalid(
                key("log_format"),
                format!("`{other}` is not a log format; use human or json"),
            ));
        }
    };
    let log_level = log_level.unwrap_or_else(|| "info".to_owned());
    if tracing_subscriber::EnvFilter::try_new(&log_level).is_err() {
        return Err(invalid(
            key("log_level"),
            format!("`{log_level}` is not a log filter such as info or gateway=debug"),
        ));
    }

    let mut pair = pair::validate_pair(&raw, key)?;
    if let (Some(pair), Some(_)) = (pair.as_mut(), &time_zone_text) {
        pair.configured_time_zone = Some(time_zone.name().to_owned());
    }
    Ok(InstanceSettings {
        pair,
        outbox_replay_window_secs: number(
            &raw.outbox_replay_window_secs,
            key,
            "outbox_replay_window_secs",
            86_400,
            0..=30 * 86_400,
        )?,
        workers: number(&raw.workers, key, "workers", cores * 2, 1..=256)? as usize,
        ocr_parallelism: number(&raw.ocr_parallelism, key, "ocr_parallelism", cores, 1..=256)?
            as usize,
        max_attempts: number(&raw.max_attempts, key, "max_attempts", 5, 1..=100)? as u32,
        max_uploads_in_flight: number(
            &raw.max_uploads_in_flight,
            key,
            "max_uploads_in_flight",
            32,
            1..=65_536,
        )? as usize,
        upload_slot_wait: Duration::from_millis(number(
            &raw.upload_slot_wait_ms,
            key,
            "upload_slot_wait_ms",
            30_000,
            0..=120_000,
        )?),
        step_timeout: Duration::from_secs(number(
            &raw.step_timeout_secs,
            key,
            "step_timeout_secs",
            600,
            1..=86_400,
        )?),
        maintenance_retry_after_secs: number(
            &raw.maintenance_retry_after_secs,
            key,
            "maintenance_retry_after_secs",
            60,
            1..=86_400,
        )? as u32,
        login_failures_per_minute: number(
            &raw.login_failures_per_minute,
            key,
            "login_failures_per_minute",
            10,
            1..=10_000,
        )? as u32,
        tesseract: PathBuf::from(tesseract.unwrap_or_else(|| "tesseract".to_owned())),
        name,
        data_dir,
        listeners,
        tls,
        time_zone,
        log_format,
        log_level,
    })
}

fn validate_site(raw: &RawFile) -> Result<SiteConfig, SettingsError> {
    let defaults = Limits::default();
    let limits = Limits {
        max_job_bytes: raw
            .limits
            .max_job_bytes
            .map_or(defaults.max_job_bytes, |b| b.0),
        max_pages: number(
            &raw.limits.max_pages,
            &|_| "limits.max_pages".to_owned(),
            "max_pages",
            u64::from(defaults.max_pages),
            1..=100_000,
        )? as u32,
        max_page_bytes: raw
            .limits
            .max_page_bytes
            .map_or(defaults.max_page_bytes, |b| b.0),
    };
    if limits.max_page_bytes > limits.max_job_bytes {
        return Err(invalid(
            "limits.max_page_bytes",
            format!(
                "{} is larger than limits.max_job_bytes ({}); a page cannot be larger than its job",
                ByteSize(limits.max_page_bytes),
                ByteSize(limits.max_job_bytes)
            ),
        ));
    }
    // Between a minute and 7 days.
    let session_ttl_secs = number(
        &raw.sessions.ttl_secs,
        &|_| "sessions.ttl_secs".to_owned(),
        "ttl_secs",
        3600,
        60..=7 * 86_400,
    )?;
    let mut users = BTreeMap::new();
    for (name, user) in &raw.users {
        crate::names::check_user_name(name).map_err(|m| invalid(format!("users.{name}"), m))?;
        PasswordHash::parse(&user.password_hash)
            .map_err(|m| invalid(format!("users.{name}.password_hash"), m))?;
        users.insert(
            name.clone(),
            UserEntry {
                password_hash: user.password_hash.clone(),
                display_name: user.display_name.clone(),
            },
        );
    }
    for name in raw.workflows.keys() {
        crate::names::check_workflow_name(name)
            .map_err(|m| invalid(format!("workflows.{name}"), m))?;
    }
    if let Some(table) = &raw.notify {
        plugins::notify::NotifySettings::parse(table)
            .map_err(|e| invalid("notify", e.to_string()))?;
    }
    Ok(SiteConfig {
        limits,
        session_ttl_secs,
        users,
        workflows: raw.workflows.clone(),
        notify: raw.notify.clone(),
    })
}

/// The zone this machine runs in: `TZ`, then `/etc/timezone`, then the
/// `/etc/localtime` link, then UTC.
pub fn system_time_zone() -> chrono_tz::Tz {
    system_time_zone_name()
        .and_then(|n| n.parse().ok())
        .unwrap_or(chrono_tz::UTC)
}

/// The IANA name of the zone this machine runs in, read now (`TZ`, then
/// `/etc/timezone`, then the `/etc/localtime` link), or `None` when it
/// cannot be determined: the pair's time-zone check reports that as such
/// rather than taking it as UTC.
pub fn system_time_zone_name() -> Option<String> {
    let candidates = [
        std::env::var("TZ")
            .ok()
            .map(|s| s.trim_start_matches(':').to_owned()),
        std::fs::read_to_string("/etc/timezone")
            .ok()
            .map(|s| s.trim().to_owned()),
        std::fs::read_link("/etc/localtime").ok().and_then(|p| {
            let s = p.to_string_lossy().into_owned();
            s.split_once("zoneinfo/").map(|(_, z)| z.to_owned())
        }),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|name| name.parse::<chrono_tz::Tz>().is_ok())
}

mod env;
mod pair;
#[cfg(test)]
mod tests;
mod types;

pub use env::{ENV_PREFIX, ENV_VARS, Env, EnvTarget};

pub use crate::names::InstanceName;
pub use types::*;
