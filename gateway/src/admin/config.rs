//! The admin channel's configuration commands: applying a declarative file
//! (`gateway config apply`) and the conflict report (`gateway pair
//! conflicts`). Planning is the `declared` module's, carrying a change out
//! the core's ([`Core::change_config`]): on a paired primary each change is
//! granted its (epoch, version) by the pair protocol and pushed to the
//! secondary.

use serde_json::{Value, json};

use super::ops::AdminError;
use crate::changes::Change;
use crate::core::Core;
use crate::store::conflicts::{Conflict, ConflictKind};
use crate::store::snapshot::stamp_text;
use crate::store::{Store, time_text};

async fn on_data<T, F>(core: &Core, f: F) -> Result<T, AdminError>
where
    T: Send + 'static,
    F: FnOnce(&Store) -> Result<T, AdminError> + Send + 'static,
{
    core.data
        .run(move |store| Ok(f(store)))
        .await
        .map_err(|e| {
            AdminError::Refused(format!("{e}; start it with `gateway service start data`"))
        })?
}

/// Plans `toml` against the running configuration and, unless `dry_run`,
/// applies it as one new version. Refused on any server but the primary.
pub async fn apply(core: &Core, toml: String, dry_run: bool) -> Result<Value, AdminError> {
    core.role.snapshot().config_write(core.name())?;
    let registry = core.registry.clone();
    let data_dir = core.paths.data_dir.clone();
    let (plan, current) = on_data(core, move |store| {
        let plan = crate::declared::plan(store, &toml, &registry, &data_dir)
            .map_err(AdminError::Invalid)?;
        Ok((plan, store.config_meta()?))
    })
    .await?;
    let diff = plan.diff.clone();
    if dry_run || plan.is_empty() {
        return Ok(json!({
            "dry_run": dry_run,
            "changed": false,
            "diff": diff,
            "version": current.version,
        }));
    }
    let applied = core.change_config(Change::Declared(plan)).await?;
    Ok(json!({
        "dry_run": false,
        "changed": true,
        "diff": diff,
        "version": applied.version,
        "epoch": applied.epoch,
    }))
}

/// Every entry of the conflict report. An open document conflict comes
/// with what re-applying it would change in this server's document (a
/// document is re-applied whole).
pub async fn conflicts(core: &Core) -> Result<Value, AdminError> {
    let entries = on_data(core, |store| {
        let mut entries = Vec::new();
        for c in store.conflicts()? {
            let diff = match (c.kind, &c.applied_at) {
                (ConflictKind::Document, None) => {
                    let current = store.config_doc(&c.name)?.map(|d| d.body);
                    Some(crate::declared::document_diff(
                        &c.name,
                        current.as_deref(),
                        &c.body,
                    ))
                }
                _ => None,
            };
            let mut entry = serde_json::to_value(&c).expect("conflicts serialise");
            if let Some(diff) = diff {
                entry["diff_if_applied"] = json!(diff);
            }
            entries.push(entry);
        }
        Ok(entries)
    })
    .await?;
    Ok(json!({ "conflicts": entries }))
}

/// Finds a conflict by its id (or an unambiguous prefix of at least 4).
pub fn find(all: Vec<Conflict>, id: &str) -> Result<Conflict, AdminError> {
    let mut matching: Vec<Conflict> = all
        .into_iter()
        .filter(|c| c.id == id || (id.len() >= 4 && c.id.starts_with(id)))
        .collect();
    match matching.len() {
        1 => Ok(matching.remove(0)),
        0 => Err(AdminError::NotFound(format!(
            "no conflict `{id}`; `gateway pair conflicts` lists them"
        ))),
        _ => Err(AdminError::Invalid(format!(
            "`{id}` matches more than one conflict; give more of its id"
        ))),
    }
}

/// Re-applies one conflict on this primary as a new change, after an
/// admin's review, and marks it applied.
pub async fn apply_conflict(core: &Core, id: String) -> Result<Value, AdminError> {
    let conflict = on_data(core, move |store| find(store.conflicts()?, &id)).await?;
    if let Some(stamp) = &conflict.applied_as {
        return Err(AdminError::Refused(format!(
            "conflict {} was already re-applied as version {stamp}",
            conflict.id
        )));
    }
    let applied = core
        .change_config(Change::Restore(conflict.clone()))
        .await?;
    let meta_epoch: pair_core::Epoch = applied
        .epoch
        .parse()
        .map_err(|e| AdminError::Refused(format!("the change's epoch: {e}")))?;
    let stamp = stamp_text(applied.version.unwrap_or_default(), meta_epoch);
    let at = time_text(core.clock.now());
    let (id, marked) = (conflict.id.clone(), stamp.clone());
    on_data(core, move |store| {
        Ok(store.mark_conflict_applied(&id, &marked, &at)?)
    })
    .await?;
    Ok(json!({
        "conflict": conflict.id,
        "kind": conflict.kind,
        "name": conflict.name,
        "applied_as": stamp,
        "device": applied.device,
    }))
}
