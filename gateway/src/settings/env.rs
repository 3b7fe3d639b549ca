//! The `SCANGW_*` environment variables: the one table of those the gateway
//! knows, and the environment as the loader reads it (so tests can give
//! their own). Unknown or unreadable `SCANGW_*` variables are errors naming
//! them; applying the values is the loader's.

use std::collections::BTreeMap;

use super::{SettingsError, invalid};

/// What a `SCANGW_*` environment variable stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvTarget {
    /// A command-line option that clap reads from the environment itself
    /// (`gateway/src/cli/args.rs`); listed so that it is not an unknown
    /// variable here.
    CommandLine(&'static str),
    /// An instance setting (a key of `[defaults]` / `[instances.NAME]`).
    Instance(&'static str),
}

/// Every `SCANGW_*` environment variable the gateway knows. It is the one
/// list the loader consults: a variable with the prefix that is not here is
/// refused by name (a typo such as `SCANGW_WORKER=4` must not be ignored
/// silently), and every variable here that names a setting overrides it.
/// A new setting gets its variable by adding a row (and a target variant,
/// for a new table).
pub const ENV_VARS: &[(&str, EnvTarget)] = &[
    ("SCANGW_CONFIG", EnvTarget::CommandLine("--config")),
    ("SCANGW_INSTANCE", EnvTarget::CommandLine("--instance")),
    ("SCANGW_DATA_DIR", EnvTarget::Instance("data_dir")),
    ("SCANGW_LISTEN", EnvTarget::Instance("listen")),
    ("SCANGW_LISTEN_PLAIN", EnvTarget::Instance("listen_plain")),
    ("SCANGW_LISTEN_PROXY", EnvTarget::Instance("listen_proxy")),
    ("SCANGW_TLS_CERT", EnvTarget::Instance("tls_cert")),
    ("SCANGW_TLS_KEY", EnvTarget::Instance("tls_key")),
    ("SCANGW_WORKERS", EnvTarget::Instance("workers")),
    ("SCANGW_TIME_ZONE", EnvTarget::Instance("time_zone")),
    ("SCANGW_LOG_FORMAT", EnvTarget::Instance("log_format")),
    ("SCANGW_LOG_LEVEL", EnvTarget::Instance("log_level")),
    ("SCANGW_TESSERACT", EnvTarget::Instance("tesseract")),
    (
        "SCANGW_OCR_PARALLELISM",
        EnvTarget::Instance("ocr_parallelism"),
    ),
    ("SCANGW_MAX_ATTEMPTS", EnvTarget::Instance("max_attempts")),
    (
        "SCANGW_MAX_UPLOADS_IN_FLIGHT",
        EnvTarget::Instance("max_uploads_in_flight"),
    ),
    (
        "SCANGW_UPLOAD_SLOT_WAIT_MS",
        EnvTarget::Instance("upload_slot_wait_ms"),
    ),
    (
        "SCANGW_STEP_TIMEOUT_SECS",
        EnvTarget::Instance("step_timeout_secs"),
    ),
    (
        "SCANGW_MAINTENANCE_RETRY_AFTER_SECS",
        EnvTarget::Instance("maintenance_retry_after_secs"),
    ),
    (
        "SCANGW_LOGIN_FAILURES_PER_MINUTE",
        EnvTarget::Instance("login_failures_per_minute"),
    ),
    (
        "SCANGW_OUTBOX_REPLAY_WINDOW_SECS",
        EnvTarget::Instance("outbox_replay_window_secs"),
    ),
    ("SCANGW_PAIR_LISTEN", EnvTarget::Instance("pair_listen")),
    ("SCANGW_PAIR_PEER", EnvTarget::Instance("pair_peer")),
    (
        "SCANGW_PAIR_HEARTBEAT_INTERVAL_MS",
        EnvTarget::Instance("pair_heartbeat_interval_ms"),
    ),
    (
        "SCANGW_PAIR_DEAD_THRESHOLD_MS",
        EnvTarget::Instance("pair_dead_threshold_ms"),
    ),
    (
        "SCANGW_PAIR_REPLICATION_PERIOD_SECS",
        EnvTarget::Instance("pair_replication_period_secs"),
    ),
    (
        "SCANGW_PAIR_MAX_CLOCK_SKEW_MS",
        EnvTarget::Instance("pair_max_clock_skew_ms"),
    ),
    ("SCANGW_PAIR_ACK", EnvTarget::Instance("pair_ack")),
    (
        "SCANGW_PAIR_PEER_ACK_TIMEOUT_MS",
        EnvTarget::Instance("pair_peer_ack_timeout_ms"),
    ),
    (
        "SCANGW_PAIR_REPLICA_RETENTION_SECS",
        EnvTarget::Instance("pair_replica_retention_secs"),
    ),
    (
        "SCANGW_PAIR_HANDOVER_DRAIN_SECS",
        EnvTarget::Instance("pair_handover_drain_secs"),
    ),
];

/// The prefix of the gateway's environment variables.
pub const ENV_PREFIX: &str = "SCANGW_";

/// The `SCANGW_*` variables of an environment, taken once so the loader can
/// both look values up and refuse the names it does not know.
#[derive(Debug, Clone, Default)]
pub struct Env {
    vars: BTreeMap<String, String>,
    /// Variables with the prefix whose name or value is not UTF-8.
    unreadable: Vec<String>,
}

impl Env {
    /// The process environment.
    pub fn process() -> Env {
        let mut env = Env::default();
        for (name, value) in std::env::vars_os() {
            let name_text = name.to_string_lossy();
            if !name_text.starts_with(ENV_PREFIX) {
                continue;
            }
            match (name.into_string(), value.into_string()) {
                (Ok(name), Ok(value)) => {
                    env.vars.insert(name, value);
                }
                (Ok(name), Err(_)) => env.unreadable.push(name),
                (Err(name), _) => env.unreadable.push(name.to_string_lossy().into_owned()),
            }
        }
        env
    }

    /// No variables at all (embedded defaults, tests).
    pub fn none() -> Env {
        Env::default()
    }

    /// The given variables (tests).
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Env {
        Env {
            vars: pairs
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            unreadable: Vec::new(),
        }
    }

    pub(super) fn get(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }

    /// Refuses a `SCANGW_*` variable that is not in [`ENV_VARS`], or that
    /// cannot be read as text.
    pub(super) fn check_known(&self) -> Result<(), SettingsError> {
        if let Some(name) = self.unreadable.first() {
            return Err(invalid(
                format!("environment variable {name}"),
                "is not valid UTF-8 text",
            ));
        }
        for name in self.vars.keys().filter(|n| n.starts_with(ENV_PREFIX)) {
            if !ENV_VARS.iter().any(|(known, _)| known == name) {
                let known: Vec<&str> = ENV_VARS.iter().map(|(n, _)| *n).collect();
                return Err(invalid(
                    format!("environment variable {name}"),
                    format!(
                        "is not a setting of the gateway; unset it or use one of: {}",
                        known.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }
}
