//! The configuration in use: the shared documents of the store (workflows,
//! users, limits, sessions, the session key), parsed and with every workflow
//! built by the plugin registry. Rebuilt whenever the documents change; request
//! handlers read one immutable snapshot.
//!
//! This module also imports the file's site configuration into the store.
//! The store's configuration is the truth; the file feeds it:
//! * the primary imports the file's site section at start-up only when its
//!   content differs from the one it last imported (the hash is stored), so
//!   a restart never re-imports an unchanged file over changes made since;
//! * any other server imports it only as the version-0 seed of an empty
//!   store (so a secondary can work alone until the primary's configuration
//!   arrives), never over configuration it received from a primary;
//! * a license activation or promotion never imports it; becoming primary
//!   records the file's hash, so the first restart as primary does not
//!   import it either.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use plugins::{Registry, Workflow, WorkflowSpec};
use serde::{Deserialize, Serialize};

use crate::role::{RoleSnapshot, ServerRole};
use crate::security::{PasswordHash, SessionKey, sha256_hex, tokens};
use crate::settings::{Limits, SiteConfig, UserEntry};
use crate::store::{ConfigMeta, Store, StoreError};

/// The hash of the file's site section that was imported last.
const FILE_HASH_KEY: &str = "config.file_sha256";

/// Names of the shared configuration documents.
pub const DOC_LIMITS: &str = "limits";
pub const DOC_SESSIONS: &str = "sessions";
pub const DOC_USERS: &str = "users";
pub const DOC_WORKFLOWS: &str = "workflows";
pub const DOC_SESSION_KEY: &str = "session_key";
pub const DOC_NOTIFY: &str = "notify";

#[derive(Debug, Serialize, Deserialize)]
struct SessionsDoc {
    ttl_secs: u64,
}

/// A user who may log in.
#[derive(Debug, Clone)]
pub struct User {
    pub hash: PasswordHash,
    pub display_name: Option<String>,
}

/// One immutable snapshot of the configuration in use.
pub struct ActiveConfig {
    pub meta: ConfigMeta,
    pub limits: Limits,
    pub session_ttl_secs: u64,
    pub users: BTreeMap<String, User>,
    pub workflows: BTreeMap<String, Arc<Workflow>>,
    /// Workflows this server could not build (e.g. a plugin setting it
    /// refuses), with the reason; jobs for them fail with that reason.
    pub broken_workflows: BTreeMap<String, String>,
    pub session_key: SessionKey,
    /// Where admins are told of pair events, when `[notify]` is set.
    pub notifier: Option<Arc<plugins::notify::Notifier>>,
    /// Workflows with a `folder` step under `{data_dir}`: each server of a
    /// pair delivers into its own directory, so the shared folder's
    /// protection against a second copy does not reach them (a job taken
    /// over lands in the other server's folder).
    pub per_server_folders: Vec<String>,
}

impl ActiveConfig {
    /// Names of the workflows devices may choose.
    pub fn workflow_names(&self) -> Vec<String> {
        self.workflows.keys().cloned().collect()
    }
}

/// The current snapshot, swapped as a whole.
#[derive(Default)]
pub struct ConfigCell(RwLock<Option<Arc<ActiveConfig>>>);

impl ConfigCell {
    pub fn current(&self) -> Option<Arc<ActiveConfig>> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn replace(&self, next: ActiveConfig) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(next));
    }
}

/// Builds every workflow of the file with the registry, so a bad workflow
/// stops start-up with its name, step and key instead of failing jobs later.
pub fn check_workflows(
    site: &SiteConfig,
    registry: &Registry,
    data_dir: &Path,
) -> Result<(), String> {
    for (name, raw) in &site.workflows {
        build_workflow(registry, name, raw, data_dir)?;
    }
    Ok(())
}

fn build_workflow(
    registry: &Registry,
    name: &str,
    raw: &serde_json::Value,
    data_dir: &Path,
) -> Result<Workflow, String> {
    // Only the steps' settings: index field labels and patterns are shown
    // to devices, which must never see this server's paths.
    let mut expanded = raw.clone();
    if let Some(steps) = expanded.get_mut("steps") {
        *steps = expand_placeholders(steps, data_dir);
    }
    let spec: WorkflowSpec =
        serde_json::from_value(expanded).map_err(|e| format!("workflows.{name}: {e}"))?;
    registry
        .build_workflow(name, &spec)
        .map_err(|e| e.to_string())
}

/// `{data_dir}` in the settings of a workflow's steps stands for this
/// server's data directory, so one shared definition can deliver into each
/// server's own directory. It is expanded when the workflow is built, never
/// stored.
fn expand_placeholders(value: &serde_json::Value, data_dir: &Path) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::String(s) => Value::String(s.replace("{data_dir}", &data_dir.display().to_string())),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| expand_placeholders(v, data_dir))
                .collect(),
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), expand_placeholders(v, data_dir)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// What an import changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    pub version: u64,
    /// The names of the documents that changed.
    pub changed: Vec<&'static str>,
}

/// The shared documents the file's site section stands for.
pub(crate) fn site_docs(site: &SiteConfig) -> Vec<(&'static str, String)> {
    vec![
        (DOC_LIMITS, json(&site.limits)),
        (
            DOC_SESSIONS,
            json(&SessionsDoc {
                ttl_secs: site.session_ttl_secs,
            }),
        ),
        (DOC_USERS, json(&site.users)),
        (DOC_WORKFLOWS, json(&site.workflows)),
        // `null` when there is no `[notify]`, so removing it is a change too.
        (DOC_NOTIFY, json(&site.notify)),
    ]
}

/// The hash of the file's site section, as imports compare it.
pub fn file_hash(site: &SiteConfig) -> String {
    let mut all = String::new();
    for (name, body) in site_docs(site) {
        all.push_str(name);
        all.push('\n');
        all.push_str(&body);
        all.push('\n');
    }
    sha256_hex(all.as_bytes())
}

/// Records the file's current hash as imported (on becoming primary).
pub fn record_file_hash(store: &Store, site: &SiteConfig) -> Result<(), StoreError> {
    store.local_set(FILE_HASH_KEY, Some(&file_hash(site)))
}

/// Writes the file's site configuration into the store as this server's
/// role and the rule in the module comment allow, creating the session key
/// if there is none. Returns what changed, if anything.
pub fn import_site_config(
    store: &Store,
    site: &SiteConfig,
    role: &RoleSnapshot,
    instance: &str,
) -> Result<Option<Imported>, StoreError> {
    let hash = file_hash(site);
    let empty = store.config_doc(DOC_SESSION_KEY)?.is_none();
    if role.role == ServerRole::Primary
        && !empty
        && store.local_get(FILE_HASH_KEY)?.as_deref() == Some(hash.as_str())
    {
        return Ok(None);
    }
    let mut docs = site_docs(site);
    // The session key is made once, by whoever seeds the configuration
    // first, and then travels with it; it is never derived from the file.
    if empty {
        docs.push((DOC_SESSION_KEY, B64.encode(tokens::random_key())));
    }
    let mut changed = Vec::new();
    for (name, body) in &docs {
        let same = store
            .config_doc(name)?
            .is_some_and(|d| d.sha256 == sha256_hex(body.as_bytes()));
        if !same {
            changed.push(*name);
        }
    }
    let version = store.put_config_docs(&docs, role.seed_write(instance))?;
    if role.role == ServerRole::Primary {
        store.local_set(FILE_HASH_KEY, Some(&hash))?;
    }
    Ok(version.map(|version| Imported { version, changed }))
}

/// Keys whose values are secrets wherever they stand in the configuration
/// (plugin settings, `[notify]`): exported as digests.
pub(crate) const SECRET_KEYS: &[&str] = &["secret", "password"];

/// `sha256:<hex>`: how an export writes a secret, so the file can be read
/// and shared without it.
fn digest_text(text: &str) -> String {
    format!("sha256:{}", sha256_hex(text.as_bytes()))
}

/// Replaces every secret in `value` by its digest, and drops nulls (TOML
/// has none: an absent key means the same).
fn export_value(value: &serde_json::Value) -> Option<serde_json::Value> {
    use serde_json::Value;
    match value {
        Value::Null => None,
        Value::Array(items) => Some(Value::Array(
            items.iter().filter_map(export_value).collect(),
        )),
        Value::Object(map) => Some(Value::Object(
            map.iter()
                .filter_map(|(k, v)| {
                    if SECRET_KEYS.contains(&k.as_str())
                        && let Value::String(secret) = v
                    {
                        return Some((k.clone(), Value::String(digest_text(secret))));
                    }
                    export_value(v).map(|v| (k.clone(), v))
                })
                .collect(),
        )),
        other => Some(other.clone()),
    }
}

/// The whole shared configuration as one TOML document, as the store holds
/// it: limits, sessions, users (their password hashes), workflows,
/// `[notify]` and the device registry (token digests), with every secret
/// (plugin secrets and passwords, the session key) written as a digest. The
/// first lines say which version and epoch it is.
pub fn export_toml(store: &Store) -> Result<String, String> {
    use serde_json::{Map, Value};
    let meta = store.config_meta().map_err(|e| e.to_string())?;
    let mut root = Map::new();
    for name in [
        DOC_LIMITS,
        DOC_SESSIONS,
        DOC_USERS,
        DOC_WORKFLOWS,
        DOC_NOTIFY,
    ] {
        let Some(doc) = store.config_doc(name).map_err(|e| e.to_string())? else {
            continue;
        };
        let value: Value = serde_json::from_str(&doc.body)
            .map_err(|e| format!("configuration document `{name}` is not valid: {e}"))?;
        if let Some(value) = export_value(&value) {
            root.insert(name.to_owned(), value);
        }
    }
    if let Some(key) = store
        .config_doc(DOC_SESSION_KEY)
        .map_err(|e| e.to_string())?
    {
        root.insert(
            DOC_SESSION_KEY.to_owned(),
            Value::String(digest_text(key.body.trim())),
        );
    }
    let mut devices = Map::new();
    let digests = store.device_token_digests().map_err(|e| e.to_string())?;
    for d in store.devices().map_err(|e| e.to_string())? {
        let mut row = Map::new();
        row.insert("id".into(), Value::String(d.id.to_string()));
        if let Some(serial) = d.serial {
            row.insert("serial".into(), Value::String(serial));
        }
        row.insert(
            "status".into(),
            serde_json::to_value(d.status).expect("statuses serialise"),
        );
        if let Some(digest) = digests.get(&d.id) {
            row.insert("token_sha256".into(), Value::String(digest.clone()));
        }
        row.insert(
            "created_at".into(),
            Value::String(crate::store::time_text(d.created_at)),
        );
        devices.insert(d.name, Value::Object(row));
    }
    if !devices.is_empty() {
        root.insert("devices".into(), Value::Object(devices));
    }
    let body = toml::to_string(&Value::Object(root))
        .map_err(|e| format!("the configuration cannot be written as TOML: {e}"))?;
    Ok(format!(
        "# The shared configuration, version {} of epoch {}.\n\
         # Secrets are written as sha256 digests; a digest stands for the value it was made from.\n\n{body}",
        meta.version,
        meta.epoch.short()
    ))
}

/// Reads the documents from the store and builds the snapshot.
pub fn load_active(
    store: &Store,
    registry: &Registry,
    data_dir: &Path,
) -> Result<ActiveConfig, String> {
    fn doc<T: for<'de> Deserialize<'de>>(store: &Store, name: &str) -> Result<Option<T>, String> {
        match store.config_doc(name).map_err(|e| e.to_string())? {
            None => Ok(None),
            Some(d) => serde_json::from_str(&d.body)
                .map(Some)
                .map_err(|e| format!("configuration document `{name}` is not valid: {e}")),
        }
    }
    let meta = store.config_meta().map_err(|e| e.to_string())?;
    let limits: Limits = doc(store, DOC_LIMITS)?.unwrap_or_default();
    let sessions: SessionsDoc = doc(store, DOC_SESSIONS)?.unwrap_or(SessionsDoc { ttl_secs: 3600 });
    let raw_users: BTreeMap<String, UserEntry> = doc(store, DOC_USERS)?.unwrap_or_default();
    let raw_workflows: BTreeMap<String, serde_json::Value> =
        doc(store, DOC_WORKFLOWS)?.unwrap_or_default();
    let key_text: String = store
        .config_doc(DOC_SESSION_KEY)
        .map_err(|e| e.to_string())?
        .map(|d| d.body)
        .ok_or("the configuration has no session key yet")?;
    let key = B64
        .decode(key_text.trim())
        .map_err(|_| "the session key in the configuration is not base64".to_string())?;

    let mut users = BTreeMap::new();
    for (name, entry) in raw_users {
        match PasswordHash::parse(&entry.password_hash) {
            Ok(hash) => {
                users.insert(
                    name,
                    User {
                        hash,
                        display_name: entry.display_name,
                    },
                );
            }
            Err(e) => tracing::warn!(
                user = name,
                problem = e,
                "user cannot log in: bad password hash"
            ),
        }
    }
    let mut workflows = BTreeMap::new();
    let mut broken = BTreeMap::new();
    let per_server_folders = raw_workflows
        .iter()
        .filter(|(_, raw)| folder_under_data_dir(raw))
        .map(|(name, _)| name.clone())
        .collect();
    for (name, raw) in raw_workflows {
        match build_workflow(registry, &name, &raw, data_dir) {
            Ok(w) => {
                workflows.insert(name, Arc::new(w));
            }
            Err(e) => {
                tracing::error!(
                    workflow = name,
                    problem = e,
                    "workflow cannot run on this server"
                );
                broken.insert(name, e);
            }
        }
    }
    let notify: Option<serde_json::Map<String, serde_json::Value>> =
        doc(store, DOC_NOTIFY)?.flatten();
    let notifier = match notify {
        None => None,
        Some(table) => match plugins::notify::NotifySettings::parse(&table)
            .and_then(plugins::notify::Notifier::new)
        {
            Ok(n) => Some(Arc::new(n)),
            Err(e) => {
                tracing::error!(problem = %e, "admin notifications cannot be sent: [notify] is not usable here");
                None
            }
        },
    };
    Ok(ActiveConfig {
        notifier,
        meta,
        limits,
        session_ttl_secs: sessions.ttl_secs,
        users,
        workflows,
        broken_workflows: broken,
        session_key: SessionKey::from_bytes(&key),
        per_server_folders,
    })
}

/// Whether a raw workflow has a `folder` step whose root is under
/// `{data_dir}` (each server's own directory).
fn folder_under_data_dir(raw: &serde_json::Value) -> bool {
    raw["steps"].as_array().is_some_and(|steps| {
        steps.iter().any(|step| {
            step["plugin"] == "folder"
                && step["root"]
                    .as_str()
                    .is_some_and(|root| root.contains("{data_dir}"))
        })
    })
}

fn json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("configuration documents serialise")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::role::RoleSnapshot;
    use crate::store::DeviceStatus;

    /// The export holds everything shared, with no secret in the clear,
    /// and reads back as TOML.
    #[test]
    fn the_export_is_the_whole_configuration_with_secrets_as_digests() {
        let store = Store::open_in_memory().unwrap();
        let write = |docs: &[(&str, String)]| {
            let w = RoleSnapshot::unlicensed(None)
                .replicated_write(
                    pair_core::Epoch::new(2, pair_core::ServerId::from_u128(7)),
                    store.config_meta().unwrap().version + 1,
                )
                .unwrap();
            store.put_config_docs(docs, w).unwrap();
        };
        write(&[
            (DOC_USERS, r#"{"ann":{"password_hash":"pbkdf2$1$x","display_name":null}}"#.into()),
            (
                DOC_WORKFLOWS,
                r#"{"to-hook":{"steps":[{"plugin":"webhook","url":"https://h","secret":"hook-secret-123"}]}}"#.into(),
            ),
            (
                DOC_NOTIFY,
                r#"{"mail":{"host":"smtp","from":"a@b","to":["c@d"],"password":"mail-pass-456","username":"u"}}"#.into(),
            ),
            (DOC_SESSION_KEY, "c2Vzc2lvbi1rZXktNzg5".into()),
            (DOC_LIMITS, r#"{"max_job_bytes":100,"max_pages":5,"max_page_bytes":50}"#.into()),
        ]);
        let w = RoleSnapshot::unlicensed(None)
            .replicated_write(
                pair_core::Epoch::new(2, pair_core::ServerId::from_u128(7)),
                store.config_meta().unwrap().version + 1,
            )
            .unwrap();
        store
            .insert_device(
                "mfd-1",
                Some("S1"),
                "tokendigest",
                DeviceStatus::Approved,
                w,
            )
            .unwrap();

        let text = export_toml(&store).unwrap();
        assert!(
            text.starts_with("# The shared configuration, version 2 of epoch 2"),
            "{text}"
        );
        for secret in ["hook-secret-123", "mail-pass-456", "c2Vzc2lvbi1rZXktNzg5"] {
            assert!(!text.contains(secret), "{secret} in the clear:\n{text}");
        }
        let parsed: toml::Table = toml::from_str(&text).unwrap();
        assert_eq!(
            parsed["users"]["ann"]["password_hash"].as_str(),
            Some("pbkdf2$1$x")
        );
        assert!(
            parsed["users"]["ann"].get("display_name").is_none(),
            "nulls are left out"
        );
        let secret = parsed["workflows"]["to-hook"]["steps"][0]["secret"]
            .as_str()
            .unwrap();
        assert_eq!(secret, digest_text("hook-secret-123"));
        assert!(
            parsed["notify"]["mail"]["password"]
                .as_str()
                .unwrap()
                .starts_with("sha256:")
        );
        assert_eq!(parsed["notify"]["mail"]["username"].as_str(), Some("u"));
        assert!(
            parsed["session_key"]
                .as_str()
                .unwrap()
                .starts_with("sha256:")
        );
        assert_eq!(parsed["limits"]["max_pages"].as_integer(), Some(5));
        let device = &parsed["devices"]["mfd-1"];
        assert_eq!(device["token_sha256"].as_str(), Some("tokendigest"));
        assert_eq!(device["status"].as_str(), Some("approved"));
        assert_eq!(device["serial"].as_str(), Some("S1"));
    }

    /// A workflow's index fields come out of the stored document with the
    /// workflow, and `{data_dir}` is expanded only in step settings: labels
    /// and patterns are shown to devices, which never see server paths.
    #[test]
    fn index_fields_are_built_with_the_workflow_and_never_expanded() {
        let store = Store::open_in_memory().unwrap();
        let w = RoleSnapshot::unlicensed(None)
            .replicated_write(
                pair_core::Epoch::new(1, pair_core::ServerId::from_u128(7)),
                1,
            )
            .unwrap();
        let workflows = serde_json::json!({"invoices": {
            "steps": [{"plugin": "assemble"}, {"plugin": "folder", "root": "{data_dir}/out"}],
            "fields": [
                {"name": "po_number", "label": "PO for {data_dir}", "type": "text", "required": true, "pattern": "[0-9]{6}"},
                {"name": "due", "label": "Due date", "type": "date"},
            ],
        }});
        store
            .put_config_docs(
                &[
                    (DOC_WORKFLOWS, workflows.to_string()),
                    (DOC_SESSION_KEY, "c2Vzc2lvbi1rZXktNzg5".into()),
                ],
                w,
            )
            .unwrap();
        let active =
            load_active(&store, &Registry::without_engines(), Path::new("/srv/gw-a")).unwrap();
        assert!(
            active.broken_workflows.is_empty(),
            "{:?}",
            active.broken_workflows
        );
        let fields = serde_json::to_value(active.workflows["invoices"].fields()).unwrap();
        assert_eq!(
            fields,
            serde_json::json!([
                {"name": "po_number", "label": "PO for {data_dir}", "type": "text", "required": true, "pattern": "[0-9]{6}", "choices": []},
                {"name": "due", "label": "Due date", "type": "date", "required": false, "pattern": null, "choices": []},
            ])
        );
        assert_eq!(active.per_server_folders, ["invoices"]);
    }

    /// A field name is a metadata key: the index field rule in `plugins`
    /// and the manifest's key rule in `names` accept the same names.
    #[test]
    fn field_names_follow_the_metadata_key_rule() {
        let long = "k".repeat(64);
        let too_long = "k".repeat(65);
        for name in [
            "po_number",
            "cost.center",
            "a-b",
            "9lives",
            "A",
            long.as_str(),
            too_long.as_str(),
            "",
            "-x",
            ".x",
            "_x",
            "a b",
            "a/b",
            "é",
            "a:b",
            "a\nb",
        ] {
            let spec = plugins::FieldSpec {
                name: name.to_owned(),
                label: "L".into(),
                kind: "text".into(),
                required: false,
                pattern: None,
                choices: None,
            };
            assert_eq!(
                plugins::IndexField::build(&spec).is_ok(),
                crate::names::check_metadata_key(name).is_ok(),
                "{name:?}"
            );
        }
    }
}
