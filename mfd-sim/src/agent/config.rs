//! Owns the device agent's configuration: the TOML file, the
//! `MFD_SIM_AGENT_*` environment overrides, and their validation into
//! [`AgentSettings`] once at start-up. It must not open sockets or talk to
//! gateways; the rest of the agent never re-checks these values.
//!
//! Every key, its default and its environment variable are listed in
//! `docs/agent.md`. An environment variable replaces the file's value; an
//! unknown `MFD_SIM_AGENT_*` variable is an error (a typo must not be
//! silently ignored), and so is an unknown key in the file.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

use crate::{
    pages::ScanFormat,
    transport::{Timeouts, TlsTrust, parse_fingerprint},
};

/// The prefix of the agent's environment variables.
pub const ENV_PREFIX: &str = "MFD_SIM_AGENT_";

/// The most pages one generated scan may have.
pub const MAX_GENERATED_PAGES: usize = 50;

/// A configuration that cannot be used, with what to change.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read the agent configuration {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has an unknown or mistyped key.
    #[error("the agent configuration {} is not valid: {detail}", path.display())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// What the parser objected to (it names the key and line).
        detail: String,
    },
    /// An environment variable is unknown or its value does not fit.
    #[error("environment variable {name}: {detail}")]
    Env {
        /// The variable.
        name: String,
        /// What is wrong.
        detail: String,
    },
    /// A value is missing or out of range.
    #[error("{key}: {detail}")]
    Invalid {
        /// The key, as written in the file.
        key: String,
        /// What is wrong and what to write instead.
        detail: String,
    },
}

fn invalid(key: impl Into<String>, detail: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        detail: detail.into(),
    }
}

/// The file as written; every key optional so that the environment can
/// supply it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<String>,
    token_file: Option<PathBuf>,
    outbox_dir: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    #[serde(default)]
    gateways: Vec<RawGateway>,
    #[serde(default)]
    scan: RawScan,
    #[serde(default)]
    failover: RawFailover,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGateway {
    url: String,
    ca_file: Option<PathBuf>,
    pinned_sha256: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScan {
    source: Option<String>,
    directory: Option<PathBuf>,
    pages: Option<u64>,
    format: Option<String>,
    dpi: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFailover {
    connect_timeout_ms: Option<u64>,
    response_timeout_secs: Option<u64>,
    liveness_check_after_ms: Option<u64>,
    failback_probe_interval_ms: Option<u64>,
    failback_good_probes: Option<u64>,
    session_idle_limit_secs: Option<u64>,
    delivery_retry_interval_ms: Option<u64>,
}

/// How an environment variable's value is read.
#[derive(Clone, Copy)]
enum EnvKind {
    Text,
    Path,
    Number,
    /// Comma-separated gateway URLs, replacing the `[[gateways]]` list.
    Gateways,
}

/// Every `MFD_SIM_AGENT_*` variable: (variable, key path in the file, kind).
const ENV_VARS: &[(&str, &[&str], EnvKind)] = &[
    ("MFD_SIM_AGENT_LISTEN", &["listen"], EnvKind::Text),
    ("MFD_SIM_AGENT_TOKEN_FILE", &["token_file"], EnvKind::Path),
    ("MFD_SIM_AGENT_OUTBOX_DIR", &["outbox_dir"], EnvKind::Path),
    ("MFD_SIM_AGENT_CA_FILE", &["ca_file"], EnvKind::Path),
    ("MFD_SIM_AGENT_GATEWAYS", &["gateways"], EnvKind::Gateways),
    (
        "MFD_SIM_AGENT_SCAN_SOURCE",
        &["scan", "source"],
        EnvKind::Text,
    ),
    (
        "MFD_SIM_AGENT_SCAN_DIRECTORY",
        &["scan", "directory"],
        EnvKind::Path,
    ),
    (
        "MFD_SIM_AGENT_SCAN_PAGES",
        &["scan", "pages"],
        EnvKind::Number,
    ),
    (
        "MFD_SIM_AGENT_SCAN_FORMAT",
        &["scan", "format"],
        EnvKind::Text,
    ),
    ("MFD_SIM_AGENT_SCAN_DPI", &["scan", "dpi"], EnvKind::Number),
    (
        "MFD_SIM_AGENT_CONNECT_TIMEOUT_MS",
        &["failover", "connect_timeout_ms"],
        EnvKind::Number,
    ),
    (
        "MFD_SIM_AGENT_RESPONSE_TIMEOUT_SECS",
        &["failover", "response_timeout_secs"],
        EnvKind::Number,
    ),
    (
        "MFD_SIM_AGENT_LIVENESS_CHECK_AFTER_MS",
        &["failover", "liveness_check_after_ms"],
        EnvKind::Number,
    ),
    (
        "MFD_SIM_AGENT_FAILBACK_PROBE_INTERVAL_MS",
        &["failover", "failback_probe_interval_ms"],
        EnvKind::Number,
    ),
    (
        "MFD_SIM_AGENT_FAILBACK_GOOD_PROBES",
        &["failover", "failback_good_probes"],
        EnvKind::Number,
    ),
    (
        "MFD_SIM_AGENT_SESSION_IDLE_LIMIT_SECS",
        &["failover", "session_idle_limit_secs"],
        EnvKind::Number,
    ),
    (
        "MFD_SIM_AGENT_DELIVERY_RETRY_INTERVAL_MS",
        &["failover", "delivery_retry_interval_ms"],
        EnvKind::Number,
    ),
];

/// One gateway of the ordered list and what the device trusts for it.
#[derive(Debug, Clone)]
pub struct GatewaySetting {
    /// Its base URL.
    pub url: String,
    /// The trust for `https://`; `None` for plain `http://`.
    pub trust: Option<TlsTrust>,
}

/// Where the pages of a scan come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanSourceSetting {
    /// Every image or PDF file in the directory, in name order, is one page.
    Directory(PathBuf),
    /// Rendered text pages.
    Generated {
        /// Pages per scan.
        pages: usize,
        /// File format.
        format: ScanFormat,
        /// Resolution.
        dpi: u32,
    },
}

/// The validated configuration of one device agent.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    /// The panel's address.
    pub listen: SocketAddr,
    /// The gateways in order of preference, the primary first.
    pub gateways: Vec<GatewaySetting>,
    /// The device token (read from `token_file`; a credential).
    pub token: String,
    /// The outbox directory.
    pub outbox_dir: PathBuf,
    /// Where scanned pages come from.
    pub scan: ScanSourceSetting,
    /// Timeouts of every request to a gateway.
    pub timeouts: Timeouts,
    /// Between two failback probes of the servers above the current one.
    pub failback_probe_interval: Duration,
    /// Consecutive good probes before failing back.
    pub failback_good_probes: u32,
    /// A session idle this long has ended.
    pub session_idle_limit: Duration,
    /// Between two attempts to send what waits in the outbox.
    pub delivery_retry_interval: Duration,
}

impl AgentSettings {
    /// Reads `path`, applies the process environment's `MFD_SIM_AGENT_*`
    /// variables and validates the result.
    pub fn load(path: &Path) -> Result<AgentSettings, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let env: BTreeMap<String, String> = std::env::vars()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX))
            .collect();
        Self::from_text(&text, path, &env)
    }

    /// As [`AgentSettings::load`] with the file's text and the variables
    /// given (tests pass their own). Relative paths in the file are taken
    /// relative to the file's directory.
    pub fn from_text(
        text: &str,
        path: &Path,
        env: &BTreeMap<String, String>,
    ) -> Result<AgentSettings, ConfigError> {
        let syntax = |detail: String| ConfigError::Syntax {
            path: path.to_owned(),
            detail,
        };
        let mut table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| syntax(e.to_string().trim_end().to_owned()))?;
        for (name, value) in env {
            apply_env(&mut table, name, value)?;
        }
        let raw: RawConfig = table
            .try_into()
            .map_err(|e: toml::de::Error| syntax(e.to_string().trim_end().to_owned()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        validate(raw, base)
    }
}

fn apply_env(table: &mut toml::Table, name: &str, value: &str) -> Result<(), ConfigError> {
    let env_error = |detail: String| ConfigError::Env {
        name: name.to_owned(),
        detail,
    };
    let Some((_, keys, kind)) = ENV_VARS.iter().find(|(n, _, _)| *n == name) else {
        let known: Vec<&str> = ENV_VARS.iter().map(|(n, _, _)| *n).collect();
        return Err(env_error(format!(
            "not a variable of the device agent; known: {}",
            known.join(", ")
        )));
    };
    let value = match kind {
        EnvKind::Text | EnvKind::Path => toml::Value::String(value.to_owned()),
        EnvKind::Number => toml::Value::Integer(
            value
                .trim()
                .parse::<i64>()
                .ok()
                .filter(|n| *n >= 0)
                .ok_or_else(|| env_error(format!("`{value}` is not a whole number")))?,
        ),
        EnvKind::Gateways => {
            let urls: Vec<toml::Value> = value
                .split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .map(|u| {
                    let mut t = toml::Table::new();
                    t.insert("url".into(), toml::Value::String(u.to_owned()));
                    toml::Value::Table(t)
                })
                .collect();
            if urls.is_empty() {
                return Err(env_error(
                    "give the gateway URLs separated by commas, the primary first".into(),
                ));
            }
            toml::Value::Array(urls)
        }
    };
    let (last, parents) = keys.split_last().expect("a key path is never empty");
    let mut at = table;
    for key in parents {
        let entry = at
            .entry(key.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        at = entry
            .as_table_mut()
            .ok_or_else(|| env_error(format!("`{key}` in the file is not a table")))?;
    }
    at.insert(last.to_string(), value);
    Ok(())
}

fn positive(key: &str, value: Option<u64>, default: u64) -> Result<u64, ConfigError> {
    match value.unwrap_or(default) {
        0 => Err(invalid(key, "must be at least 1")),
        n => Ok(n),
    }
}

fn validate(raw: RawConfig, base: &Path) -> Result<AgentSettings, ConfigError> {
    let resolve = |p: &Path| {
        if p.is_absolute() {
            p.to_owned()
        } else {
            base.join(p)
        }
    };
    let listen_text = raw.listen.as_deref().unwrap_or("127.0.0.1:8080");
    let listen: SocketAddr = listen_text.parse().map_err(|_| {
        invalid(
            "listen",
            format!("`{listen_text}` is not an address like 127.0.0.1:8080"),
        )
    })?;

    if raw.gateways.is_empty() {
        return Err(invalid(
            "gateways",
            "no gateway configured: add one [[gateways]] table per server, the primary first",
        ));
    }
    let default_trust = raw
        .ca_file
        .as_deref()
        .map(|p| load_trust("ca_file", &resolve(p)))
        .transpose()?;
    let mut gateways = Vec::with_capacity(raw.gateways.len());
    for (i, g) in raw.gateways.iter().enumerate() {
        let key = |k: &str| format!("gateways[{i}].{k}");
        let url = g.url.trim().to_owned();
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            return Err(invalid(
                key("url"),
                format!("`{url}` is not an http:// or https:// URL"),
            ));
        }
        let trust = match (&g.ca_file, &g.pinned_sha256) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    key("pinned_sha256"),
                    "give either ca_file or pinned_sha256 for one gateway, not both",
                ));
            }
            (Some(path), None) => Some(load_trust(&key("ca_file"), &resolve(path))?),
            (None, Some(fp)) => Some(TlsTrust::pinned_sha256(
                parse_fingerprint(fp).map_err(|e| invalid(key("pinned_sha256"), e))?,
            )),
            (None, None) => default_trust.clone(),
        };
        if url.starts_with("https://") && trust.is_none() {
            return Err(invalid(
                key("ca_file"),
                format!(
                    "{url} uses HTTPS: give the gateway's certificate or CA (ca_file, here or at the top) or its pinned_sha256"
                ),
            ));
        }
        gateways.push(GatewaySetting { url, trust });
    }

    let token_path = raw.token_file.as_deref().map(&resolve).ok_or_else(|| {
        invalid(
            "token_file",
            "missing: the file holding the device token the gateway issued",
        )
    })?;
    let token = std::fs::read_to_string(&token_path)
        .map_err(|e| {
            invalid(
                "token_file",
                format!("cannot read {}: {e}", token_path.display()),
            )
        })?
        .trim()
        .to_owned();
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(
            "token_file",
            format!(
                "{} must hold the device token alone (printable ASCII, no spaces)",
                token_path.display()
            ),
        ));
    }

    let outbox_dir = raw.outbox_dir.as_deref().map(&resolve).ok_or_else(|| {
        invalid(
            "outbox_dir",
            "missing: the directory where scans wait until a server acknowledged them",
        )
    })?;

    let scan = match raw.scan.source.as_deref().unwrap_or("generated") {
        "directory" => {
            let dir = raw.scan.directory.as_deref().map(&resolve).ok_or_else(|| {
                invalid(
                    "scan.directory",
                    "missing: the directory whose image files are the scanned pages",
                )
            })?;
            if !dir.is_dir() {
                return Err(invalid(
                    "scan.directory",
                    format!("{} is not a directory", dir.display()),
                ));
            }
            ScanSourceSetting::Directory(dir)
        }
        "generated" => {
            let pages = positive("scan.pages", raw.scan.pages, 1)?;
            if pages > MAX_GENERATED_PAGES as u64 {
                return Err(invalid(
                    "scan.pages",
                    format!("at most {MAX_GENERATED_PAGES} pages per scan"),
                ));
            }
            let format = match raw.scan.format.as_deref().unwrap_or("png") {
                "png" => ScanFormat::Png,
                "jpeg" => ScanFormat::Jpeg,
                "tiff" => ScanFormat::Tiff,
                other => {
                    return Err(invalid(
                        "scan.format",
                        format!("`{other}` is not one of png, jpeg, tiff"),
                    ));
                }
            };
            let dpi = raw.scan.dpi.unwrap_or(150);
            if !(72..=600).contains(&dpi) {
                return Err(invalid("scan.dpi", "must be between 72 and 600"));
            }
            ScanSourceSetting::Generated {
                pages: pages as usize,
                format,
                dpi: dpi as u32,
            }
        }
        other => {
            return Err(invalid(
                "scan.source",
                format!("`{other}` is not one of directory, generated"),
            ));
        }
    };

    let f = &raw.failover;
    let timeouts = Timeouts {
        connect: Duration::from_millis(positive(
            "failover.connect_timeout_ms",
            f.connect_timeout_ms,
            1000,
        )?),
        response: Duration::from_secs(positive(
            "failover.response_timeout_secs",
            f.response_timeout_secs,
            120,
        )?),
        liveness_check_after: match f.liveness_check_after_ms.unwrap_or(250) {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        },
    };
    let good = positive("failover.failback_good_probes", f.failback_good_probes, 3)?;
    Ok(AgentSettings {
        listen,
        gateways,
        token,
        outbox_dir,
        scan,
        timeouts,
        failback_probe_interval: Duration::from_millis(positive(
            "failover.failback_probe_interval_ms",
            f.failback_probe_interval_ms,
            5000,
        )?),
        failback_good_probes: u32::try_from(good)
            .map_err(|_| invalid("failover.failback_good_probes", "too large"))?,
        session_idle_limit: Duration::from_secs(positive(
            "failover.session_idle_limit_secs",
            f.session_idle_limit_secs,
            300,
        )?),
        delivery_retry_interval: Duration::from_millis(positive(
            "failover.delivery_retry_interval_ms",
            f.delivery_retry_interval_ms,
            2000,
        )?),
    })
}

fn load_trust(key: &str, path: &Path) -> Result<TlsTrust, ConfigError> {
    TlsTrust::from_pem_file(path).map_err(|e| invalid(key, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir {
        dir: tempfile::TempDir,
    }

    impl Dir {
        fn new() -> Dir {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("token"), "tok-123\n").unwrap();
            Dir { dir }
        }

        fn load(&self, text: &str, env: &[(&str, &str)]) -> Result<AgentSettings, ConfigError> {
            let env = env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            AgentSettings::from_text(text, &self.dir.path().join("agent.toml"), &env)
        }
    }

    const MINIMAL: &str = r#"
token_file = "token"
outbox_dir = "outbox"
[[gateways]]
url = "http://127.0.0.1:9001"
[[gateways]]
url = "http://127.0.0.1:9002"
"#;

    #[test]
    fn a_minimal_file_gets_the_documented_defaults() {
        let d = Dir::new();
        let s = d.load(MINIMAL, &[]).unwrap();
        assert_eq!(s.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(s.token, "tok-123");
        assert_eq!(s.outbox_dir, d.dir.path().join("outbox"));
        assert_eq!(s.gateways.len(), 2);
        assert_eq!(s.gateways[1].url, "http://127.0.0.1:9002");
        assert_eq!(
            s.scan,
            ScanSourceSetting::Generated {
                pages: 1,
                format: ScanFormat::Png,
                dpi: 150
            }
        );
        assert_eq!(s.failback_probe_interval, Duration::from_secs(5));
        assert_eq!(s.failback_good_probes, 3);
        assert_eq!(s.session_idle_limit, Duration::from_secs(300));
        assert_eq!(s.timeouts.connect, Duration::from_secs(1));
    }

    #[test]
    fn the_environment_overrides_the_file() {
        let d = Dir::new();
        let s = d
            .load(
                MINIMAL,
                &[
                    ("MFD_SIM_AGENT_LISTEN", "127.0.0.1:0"),
                    (
                        "MFD_SIM_AGENT_GATEWAYS",
                        "http://127.0.0.1:1, http://127.0.0.1:2",
                    ),
                    ("MFD_SIM_AGENT_SCAN_PAGES", "3"),
                    ("MFD_SIM_AGENT_FAILBACK_GOOD_PROBES", "1"),
                ],
            )
            .unwrap();
        assert_eq!(s.listen.port(), 0);
        assert_eq!(s.gateways[0].url, "http://127.0.0.1:1");
        assert!(matches!(
            s.scan,
            ScanSourceSetting::Generated { pages: 3, .. }
        ));
        assert_eq!(s.failback_good_probes, 1);
    }

    #[test]
    fn mistakes_are_refused_by_name() {
        let d = Dir::new();
        // (file, environment, what the error must name)
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
        let cases: &[Case] = &[
            (
                MINIMAL,
                &[("MFD_SIM_AGENT_LISTN", "x")],
                "MFD_SIM_AGENT_LISTN",
            ),
            (
                MINIMAL,
                &[("MFD_SIM_AGENT_SCAN_PAGES", "many")],
                "whole number",
            ),
            (
                "token_file = \"token\"\noutbox_dir = \"o\"\n",
                &[],
                "no gateway",
            ),
            (&format!("colour = 1\n{MINIMAL}"), &[], "colour"),
            (
                &MINIMAL.replace("http://127.0.0.1:9001", "https://gw"),
                &[],
                "HTTPS",
            ),
            (
                &MINIMAL.replace("http://127.0.0.1:9001", "ftp://gw"),
                &[],
                "not an http",
            ),
            (
                &MINIMAL.replace("\"token\"", "\"missing\""),
                &[],
                "token_file",
            ),
            (
                MINIMAL,
                &[("MFD_SIM_AGENT_SCAN_SOURCE", "camera")],
                "scan.source",
            ),
            (
                MINIMAL,
                &[("MFD_SIM_AGENT_SCAN_SOURCE", "directory")],
                "scan.directory",
            ),
            (MINIMAL, &[("MFD_SIM_AGENT_SCAN_PAGES", "0")], "scan.pages"),
            (MINIMAL, &[("MFD_SIM_AGENT_SCAN_DPI", "9000")], "scan.dpi"),
            (MINIMAL, &[("MFD_SIM_AGENT_LISTEN", "everywhere")], "listen"),
            (
                &MINIMAL.replace(
                    "url = \"http://127.0.0.1:9002\"",
                    "url = \"https://gw\"\npinned_sha256 = \"abc\"",
                ),
                &[],
                "SHA-256",
            ),
        ];
        for (text, env, needle) in cases {
            let e = d.load(text, env).unwrap_err().to_string();
            assert!(e.contains(needle), "expected `{needle}` in: {e}");
        }
    }

    #[test]
    fn every_variable_names_a_key_the_file_accepts() {
        // A variable pointing at a key the file refuses would make the
        // override itself an error; each must be accepted with some value.
        let d = Dir::new();
        std::fs::create_dir(d.dir.path().join("pages")).unwrap();
        for (name, _, kind) in ENV_VARS {
            let value = match (name, kind) {
                (_, EnvKind::Number) => "7",
                (&"MFD_SIM_AGENT_LISTEN", _) => "127.0.0.1:1",
                (&"MFD_SIM_AGENT_SCAN_SOURCE", _) => "generated",
                (&"MFD_SIM_AGENT_SCAN_FORMAT", _) => "tiff",
                (&"MFD_SIM_AGENT_GATEWAYS", _) => "http://127.0.0.1:3",
                (&"MFD_SIM_AGENT_CA_FILE", _) => continue,
                (&"MFD_SIM_AGENT_SCAN_DIRECTORY", _) => "pages",
                _ => "token",
            };
            let value = if *name == "MFD_SIM_AGENT_SCAN_DPI" {
                "100"
            } else {
                value
            };
            d.load(MINIMAL, &[(name, value)])
                .unwrap_or_else(|e| panic!("{name}={value}: {e}"));
        }
    }
}
