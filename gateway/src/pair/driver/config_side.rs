//! The driver's configuration side: configuration changes granted by the
//! protocol and carried out, the clock and time-zone probe that admits
//! sync, the conflict report the peer hands over, and going back to the
//! durable state when an output could not be carried out.

use std::time::Instant;

use pair_core::Input;
use pair_core::sync::{ClockSample, SyncBlock};
use tokio::sync::oneshot;

use super::Driver;
use crate::changes::{Applied, Change, ChangeError};
use crate::license;
use crate::pair::sync;
use crate::pair::wire::Wire;

impl Driver {
    /// Asks the peer for its clock and zone (the answer decides whether
    /// configuration may sync).
    pub(super) fn probe_clock(&mut self) {
        if self.link.is_none() {
            return;
        }
        let sent_ms = sync::wall_ms(&self.core);
        self.repl.probe_sent_ms = Some(sent_ms);
        self.repl.last_probe = Some(Instant::now());
        self.send_wire(&Wire::ClockProbe { sent_ms });
    }

    /// The peer's answer to the clock probe: the verdict goes to the node.
    pub(super) async fn on_clock_reply(
        &mut self,
        sent_ms: u64,
        wall_ms: u64,
        instance: String,
        time_zone: Option<String>,
    ) {
        if self.repl.probe_sent_ms != Some(sent_ms) {
            return;
        }
        self.repl.probe_sent_ms = None;
        let sample = ClockSample {
            sent_ms,
            peer_ms: wall_ms,
            received_ms: sync::wall_ms(&self.core),
        };
        let verdict = sync::verdict(
            self.core.name(),
            sync::time_zone(&self.settings),
            self.node.role().is_primary(),
            &instance,
            time_zone,
            sample,
            self.settings.max_clock_skew_ms,
        );
        // A round trip too long to judge says nothing new: the state stays
        // as it was (and the next probe tries again), so a stall does not
        // flap sync between blocked and resumed.
        if matches!(verdict, Err(SyncBlock::RoundTripTooLong { .. }))
            && !matches!(
                self.node.role_view().sync_blocked,
                Some(SyncBlock::NotChecked { .. })
            )
        {
            return;
        }
        let outputs = self.node.step(self.now_ms(), Input::SyncChecked(verdict));
        self.carry_out(outputs).await;
    }

    /// Conflicts the peer found in its own configuration: kept here too,
    /// so the primary can re-apply them.
    pub(super) async fn on_conflicts(&mut self, conflicts: Vec<crate::store::conflicts::Conflict>) {
        let count = conflicts.len();
        let added = self
            .core
            .data
            .run(move |store| store.record_conflicts(&conflicts))
            .await;
        match added {
            Ok(0) => {}
            Ok(added) => {
                self.repl.open_conflicts = sync::open_conflicts(&self.core).await;
                self.conflicts_found(added);
            }
            Err(e) => tracing::error!(error = %e, count, "the peer's conflicts could not be kept"),
        }
    }

    pub(super) fn conflicts_found(&self, added: usize) {
        let peer = self
            .peer
            .as_ref()
            .map_or_else(|| "the peer".to_owned(), |p| p.instance.clone());
        let text = format!(
            "{added} configuration change(s) made while {peer} and {} were cut off are not in the new primary's configuration; \
             review them with `gateway pair conflicts` and re-apply on the primary with `gateway pair conflicts apply ID`",
            self.core.name()
        );
        tracing::warn!(event = "config_conflicts", "{text}");
        self.core.metrics.pair_event("config_conflicts");
        crate::pair::notify::send(&self.core, "config_conflicts", text);
    }

    /// A change an admin or a device asked for: checked, granted by the
    /// node (only an unfenced primary is), stored under the granted stamp,
    /// pushed.
    pub(super) async fn on_change(
        &mut self,
        change: Change,
        reply: oneshot::Sender<Result<Applied, ChangeError>>,
    ) {
        if let Err(e) = sync::check(&self.core, &change).await {
            let _ = reply.send(Err(e));
            return;
        }
        self.repl.pending = Some((change, reply));
        let outputs = self.node.step(
            self.now_ms(),
            Input::LocalConfigWrite {
                payload: Vec::new(),
            },
        );
        self.carry_out(outputs).await;
        if let Some((_, reply)) = self.repl.pending.take() {
            let _ = reply.send(Err(ChangeError::Unavailable(
                "the change was neither granted nor refused; try again".into(),
            )));
        }
    }

    /// Goes back to the durable state after an output could not be carried
    /// out (see `PairNode::restore`).
    pub(super) async fn restore_node(&mut self) {
        let ctx = self.core.license.clone();
        let today = self.core.clock.now().date_naive();
        match self
            .core
            .data
            .run(move |store| license::pair_state(store, &ctx, today))
            .await
        {
            Ok(persisted) => self.node.restore(persisted),
            Err(e) => tracing::error!(error = %e, "the pair state could not be read back"),
        }
    }
}
