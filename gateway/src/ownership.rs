//! Whether this server may start a pipeline step now, as the pair link
//! publishes it and the workers read it before every step: the permit of
//! the pair protocol (`pair_core::Permit`: a lease from the peer, alone,
//! or wait) and the drain of a clean stop. Also the one rule for which
//! steps deliver (a repeated delivery step is a possible duplicate the admin
//! is told about) and the record of such reports.
//!
//! An unpaired server, or one whose pair link never started, always has a
//! permit.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use pair_core::Permit;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::store::{Store, StoreError};

/// The plugins that hand a document to a destination outside the server.
pub const DELIVERY_PLUGINS: &[&str] = &["folder", "mail", "webhook"];

/// Whether `plugin` hands the document to a destination outside the server.
pub fn is_delivery(plugin: &str) -> bool {
    DELIVERY_PLUGINS.contains(&plugin)
}

/// The permit as the workers see it.
pub struct Ownership {
    state: Mutex<State>,
    changed: Notify,
}

struct State {
    permit: Permit,
    /// The instant the permit's milliseconds count from.
    base: Instant,
    /// A clean stop is handing work over: no step may start.
    draining: bool,
}

impl Default for Ownership {
    fn default() -> Ownership {
        Ownership {
            state: Mutex::new(State {
                permit: Permit::Unpaired,
                base: Instant::now(),
                draining: false,
            }),
            changed: Notify::new(),
        }
    }
}

impl Ownership {
    /// The pair link publishes the protocol's permit; `base` is the instant
    /// its clock counts from.
    pub fn publish(&self, permit: Permit, base: Instant) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let wakes = !s.permit.allows(ms_since(s.base)) && permit.allows(ms_since(base));
        s.permit = permit;
        s.base = base;
        drop(s);
        if wakes {
            self.changed.notify_waiters();
        }
    }

    /// A clean stop begins (`true`): no step may start from now on.
    pub fn set_draining(&self, draining: bool) {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .draining = draining;
        self.changed.notify_waiters();
    }

    /// Whether a step may start now; the error says why not.
    pub fn check(&self) -> Result<(), String> {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.draining {
            return Err("this server is stopping and hands its jobs to the peer".into());
        }
        if s.permit.allows(ms_since(s.base)) {
            return Ok(());
        }
        Err(match s.permit {
            Permit::Leased { .. } => {
                "the lease from the peer ran out; waiting for the peer to renew it".into()
            }
            _ => "the peer has not granted a lease yet (it may have taken over jobs of this server that it must report first)".into(),
        })
    }

    /// The permit as published, and whether a step may start now.
    pub fn view(&self) -> (Permit, bool, Option<u64>) {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = ms_since(s.base);
        let left = match s.permit {
            Permit::Leased { until_ms } => Some(until_ms.saturating_sub(now)),
            _ => None,
        };
        (s.permit, !s.draining && s.permit.allows(now), left)
    }

    /// Waits until a step may start, or `limit` passed.
    pub async fn wait(&self, limit: Duration) {
        let notified = self.changed.notified();
        if self.check().is_ok() {
            return;
        }
        let _ = tokio::time::timeout(limit, notified).await;
    }
}

fn ms_since(base: Instant) -> u64 {
    base.elapsed().as_millis() as u64
}

/// Step attempts cut short (`(job, step, plugin)`) that delivered, or may
/// have: each runs again, and the destination may get the document twice
/// (with the same idempotency key). Recorded and logged as
/// `possible_duplicate` — the first documented exception of the delivery
/// guarantee. `why` says what cut them short.
pub fn report_repeated_deliveries(
    store: &Store,
    attempts: &[(Uuid, u32, String)],
    peer: Option<&str>,
    why: &str,
    at: DateTime<Utc>,
) -> Result<u64, StoreError> {
    let mut n = 0;
    for (job, step, plugin) in attempts.iter().filter(|(_, _, p)| is_delivery(p)) {
        let detail = format!(
            "step {} ({plugin}) of job {job} {why}; it runs again, so its destination may receive the document twice, with the same idempotency key",
            step + 1
        );
        tracing::warn!(event = "possible_duplicate", %job, step = step + 1, plugin, "{detail}");
        store.record_pair_event(at, "possible_duplicate", Some(*job), peer, &detail)?;
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_needs_a_permit_and_no_drain() {
        let o = Ownership::default();
        assert!(o.check().is_ok(), "unpaired");
        o.publish(Permit::Wait, Instant::now());
        assert!(o.check().unwrap_err().contains("lease"));
        o.publish(Permit::Leased { until_ms: 60_000 }, Instant::now());
        assert!(o.check().is_ok());
        assert!(o.view().2.unwrap() > 50_000);
        o.publish(Permit::Leased { until_ms: 0 }, Instant::now());
        assert!(o.check().unwrap_err().contains("ran out"));
        o.publish(Permit::Alone { since_ms: 0 }, Instant::now());
        assert!(o.check().is_ok());
        o.set_draining(true);
        assert!(o.check().unwrap_err().contains("stopping"));
    }

    #[test]
    fn only_delivery_steps_are_reported_as_possible_duplicates() {
        assert!(is_delivery("mail") && is_delivery("folder") && is_delivery("webhook"));
        assert!(!is_delivery("ocr") && !is_delivery("assemble"));
        // A server stopped with an OCR step and a mail step running: at
        // recovery both are closed, only the mail is reported.
        let store = Store::open_in_memory().unwrap();
        let me = pair_core::ServerId::from_u128(1);
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        for (id, plugin) in [(a, "ocr"), (b, "mail")] {
            store
                .insert_job(&crate::store::jobs::sample_job(id))
                .unwrap();
            store
                .set_job_state(id, crate::store::JobState::Processing, None)
                .unwrap();
            assert!(
                store
                    .step_started(id, 2, plugin, 1, Utc::now(), me)
                    .unwrap()
            );
        }
        let closed = store.close_interrupted_attempts(Utc::now()).unwrap();
        assert_eq!(closed.len(), 2);
        let n =
            report_repeated_deliveries(&store, &closed, None, "was running", Utc::now()).unwrap();
        assert_eq!(n, 1);
        let events = store.pair_events(10).unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(
            (events[0].kind.as_str(), events[0].job_id),
            ("possible_duplicate", Some(b))
        );
        assert!(
            events[0].detail.contains("step 3 (mail)"),
            "{}",
            events[0].detail
        );
    }
}
