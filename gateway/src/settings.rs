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

/// Every environment variable that overrides an instance setting.
pub const ENV_OVERRIDES: &[(&str, &str)] = &[
    ("SCANGW_DATA_DIR", "data_dir"),
    ("SCANGW_LISTEN", "listen"),
    ("SCANGW_LISTEN_PLAIN", "listen_plain"),
    ("SCANGW_LISTEN_PROXY", "listen_proxy"),
    ("SCANGW_TLS_CERT", "tls_cert"),
    ("SCANGW_TLS_KEY", "tls_key"),
    ("SCANGW_WORKERS", "workers"),
    ("SCANGW_TIME_ZONE", "time_zone"),
    ("SCANGW_LOG_FORMAT", "log_format"),
    ("SCANGW_LOG_LEVEL", "log_level"),
    ("SCANGW_TESSERACT", "tesseract"),
    ("SCANGW_OCR_PARALLELISM", "ocr_parallelism"),
    ("SCANGW_MAX_ATTEMPTS", "max_attempts"),
    ("SCANGW_STEP_TIMEOUT_SECS", "step_timeout_secs"),
];

/// A configuration problem, naming the key (or variable) and what to do.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("cannot read configuration file {path}: {source} — check the path given to --config")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("configuration file {path} is not valid: {message}")]
    Parse { path: String, message: String },
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
    max_pages: Option<u32>,
    max_page_bytes: Option<ByteSize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSessions {
    ttl_secs: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    password_hash: String,
    display_name: Option<String>,
}

/// Instance settings as written; every field optional so `[defaults]`,
/// `[instances.NAME]` and the environment can be layered.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInstance {
    data_dir: Option<String>,
    listen: Option<String>,
    listen_plain: Option<String>,
    listen_proxy: Option<String>,
    tls_cert: Option<String>,
    tls_key: Option<String>,
    workers: Option<TomlScalar>,
    time_zone: Option<String>,
    log_format: Option<String>,
    log_level: Option<String>,
    tesseract: Option<String>,
    ocr_parallelism: Option<TomlScalar>,
    max_attempts: Option<TomlScalar>,
    step_timeout_secs: Option<TomlScalar>,
    maintenance_retry_after_secs: Option<TomlScalar>,
    login_failures_per_minute: Option<TomlScalar>,
}

/// A number as written in the file, or as text from the environment.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum TomlScalar {
    Int(i64),
    Text(String),
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
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Settings, SettingsError> {
    let (text, label, base_dir) = match source {
        Source::File(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
                path: path.to_owned(),
                source,
            })?;
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
    let raw: RawFile = toml::from_str(&text).map_err(|e| SettingsError::Parse {
        path: label.clone(),
        message: e.to_string().trim_end().to_owned(),
    })?;
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
        ("defaults".to_owned(), Some(&raw.defaults)),
        (
            format!("instances.{name}"),
            raw.instances.get(name.as_str()),
        ),
    ];
    for (prefix, layer) in layers {
        if let Some(layer) = layer {
            merge(&mut merged, layer, &prefix, &mut origin);
        }
    }
    for (var, field) in ENV_OVERRIDES {
        if let Some(value) = env(var) {
            set_text_field(&mut merged, field, value);
            origin.insert(field, format!("environment variable {var}"));
        }
    }
    let key = |field: &'static str| {
        origin
            .get(field)
            .cloned()
            .unwrap_or_else(|| format!("defaults.{field}"))
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
                origin.insert(stringify!($f), format!("{prefix}.{}", stringify!($f)));
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
        step_timeout_secs,
        maintenance_retry_after_secs,
        login_failures_per_minute
    );
}

fn set_text_field(into: &mut RawInstance, field: &str, value: String) {
    match field {
        "data_dir" => into.data_dir = Some(value),
        "listen" => into.listen = Some(value),
        "listen_plain" => into.listen_plain = Some(value),
        "listen_proxy" => into.listen_proxy = Some(value),
        "tls_cert" => into.tls_cert = Some(value),
        "tls_key" => into.tls_key = Some(value),
        "workers" => into.workers = Some(TomlScalar::Text(value)),
        "time_zone" => into.time_zone = Some(value),
        "log_format" => into.log_format = Some(value),
        "log_level" => into.log_level = Some(value),
        "tesseract" => into.tesseract = Some(value),
        "ocr_parallelism" => into.ocr_parallelism = Some(TomlScalar::Text(value)),
        "max_attempts" => into.max_attempts = Some(TomlScalar::Text(value)),
        "step_timeout_secs" => into.step_timeout_secs = Some(TomlScalar::Text(value)),
        other => unreachable!("ENV_OVERRIDES names unknown field {other}"),
    }
}

fn number(
    value: &Option<TomlScalar>,
    key: &dyn Fn(&'static str) -> String,
    field: &'static str,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Result<u64, SettingsError> {
    let n = match value {
        None => return Ok(default),
        Some(TomlScalar::Int(n)) => *n,
        Some(TomlScalar::Text(t)) => t
            .trim()
            .parse::<i64>()
            .map_err(|_| invalid(key(field), format!("`{t}` is not a whole number")))?,
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
    let data_dir = raw
        .data_dir
        .clone()
        .unwrap_or_else(|| "gateway-data/{instance}".to_owned())
        .replace("{instance}", name.as_str());
    if data_dir.trim().is_empty() {
        return Err(invalid(key("data_dir"), "must not be empty"));
    }
    let data_dir = base_dir.join(data_dir);

    let mut listeners = Vec::new();
    if let Some(v) = &raw.listen {
        listeners.push(ListenerSettings {
            addr: address(v, key("listen"))?,
            kind: ListenerKind::Https,
        });
    }
    if let Some(v) = &raw.listen_plain {
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
    if let Some(v) = &raw.listen_proxy {
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

    let tls = match (&raw.tls_cert, &raw.tls_key) {
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
    let time_zone = match &raw.time_zone {
        Some(tz) => tz.parse::<chrono_tz::Tz>().map_err(|_| {
            invalid(
                key("time_zone"),
                format!("`{tz}` is not an IANA time zone name such as Europe/Berlin or UTC"),
            )
        })?,
        None => system_time_zone(),
    };
    let log_format = match raw.log_format.as_deref().unwrap_or("human") {
        "human" => LogFormat::Human,
        "json" => LogFormat::Json,
        other => {
            return Err(invalid(
                key("log_format"),
                format!("`{other}` is not a log format; use human or json"),
            ));
        }
    };
    let log_level = raw.log_level.clone().unwrap_or_else(|| "info".to_owned());
    if tracing_subscriber::EnvFilter::try_new(&log_level).is_err() {
        return Err(invalid(
            key("log_level"),
            format!("`{log_level}` is not a log filter such as info or gateway=debug"),
        ));
    }

    Ok(InstanceSettings {
        workers: number(&raw.workers, key, "workers", cores * 2, 1..=256)? as usize,
        ocr_parallelism: number(&raw.ocr_parallelism, key, "ocr_parallelism", cores, 1..=256)?
            as usize,
        max_attempts: number(&raw.max_attempts, key, "max_attempts", 5, 1..=100)? as u32,
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
        tesseract: PathBuf::from(
            raw.tesseract
                .clone()
                .unwrap_or_else(|| "tesseract".to_owned()),
        ),
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
        max_pages: raw.limits.max_pages.unwrap_or(defaults.max_pages),
        max_page_bytes: raw
            .limits
            .max_page_bytes
            .map_or(defaults.max_page_bytes, |b| b.0),
    };
    if limits.max_pages == 0 || limits.max_pages > 100_000 {
        return Err(invalid("limits.max_pages", "must be between 1 and 100000"));
    }
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
    let session_ttl_secs = raw.sessions.ttl_secs.unwrap_or(3600);
    if !(60..=7 * 86_400).contains(&session_ttl_secs) {
        return Err(invalid(
            "sessions.ttl_secs",
            "must be between 60 and 604800 (7 days)",
        ));
    }
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
    Ok(SiteConfig {
        limits,
        session_ttl_secs,
        users,
        workflows: raw.workflows.clone(),
    })
}

/// The zone this machine runs in: `TZ`, then `/etc/timezone`, then the
/// `/etc/localtime` link, then UTC.
pub fn system_time_zone() -> chrono_tz::Tz {
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
        .find_map(|name| name.parse().ok())
        .unwrap_or(chrono_tz::UTC)
}

#[cfg(test)]
mod tests;
mod types;

pub use crate::names::InstanceName;
pub use types::*;
