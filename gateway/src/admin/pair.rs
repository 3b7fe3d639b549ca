//! The admin channel's pair commands: status, opening a pairing code on the
//! primary, joining with it on the secondary, unpairing. The pair link
//! itself is the pair adapter's; this only answers admins.

use std::sync::{Arc, OnceLock};

use serde_json::{Value, json};

use super::ops::AdminError;
use crate::pair::PairLink;

/// Where the running instance keeps its pair link once it has started (it
/// starts when the store has been read, which may be after the admin channel
/// is up).
pub type PairSlot = Arc<OnceLock<PairLink>>;

fn link(slot: &PairSlot) -> Result<&PairLink, AdminError> {
    slot.get().ok_or_else(|| {
        AdminError::Refused(
            "this server has no pair link: set `listen` and `peer` in the [pair] table of its instance \
             (or SCANGW_PAIR_LISTEN and SCANGW_PAIR_PEER) and restart it"
                .into(),
        )
    })
}

/// The pair link's state, or `null` without one.
pub fn status(slot: &PairSlot) -> Value {
    slot.get().map_or(Value::Null, |l| {
        serde_json::to_value(l.status()).expect("pair status serialises")
    })
}

pub async fn init(slot: &PairSlot) -> Result<Value, AdminError> {
    let code = link(slot)?
        .init_pairing()
        .await
        .map_err(AdminError::Refused)?;
    Ok(json!({"code": code, "valid_secs": crate::pair::pairing::CODE_VALID_SECS}))
}

pub async fn join(slot: &PairSlot, code: &str) -> Result<Value, AdminError> {
    let peer = link(slot)?.join(code).await.map_err(AdminError::Refused)?;
    Ok(json!({"paired_with": peer}))
}

pub async fn unpair(slot: &PairSlot) -> Result<Value, AdminError> {
    // No work of this server is held by the peer yet (jobs are not
    // replicated over the link), so nothing can be stranded by unpairing.
    link(slot)?.unpair().await.map_err(AdminError::Refused)?;
    Ok(json!({"unpaired": true}))
}
