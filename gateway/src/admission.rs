//! Who may come in, kept in memory: the admin's switches (maintenance,
//! pipeline pause), whether the web service is up, one upload at a time per
//! job id, a bound on the uploads streaming in at once (what bounds the
//! memory of a rush), and a limit on failed logins per device (which also bounds the
//! CPU an attacker can make us spend on password hashing). No I/O: the core
//! persists the switches.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use uuid::Uuid;

/// The switches that decide whether new work is let in.
pub struct Admission {
    maintenance: AtomicBool,
    /// Set by an admin to hold accepted jobs (e.g. while a delivery target
    /// is down); intake goes on, workers take no new jobs.
    pipeline_paused: AtomicBool,
    /// Whether the web service's listeners are up (set by the web adapter).
    web_up: AtomicBool,
    pub uploads: UploadClaims,
    pub in_flight: InFlight,
    pub logins: LoginLimiter,
}

impl Admission {
    pub fn new(login_failures_per_minute: u32, max_uploads_in_flight: usize) -> Admission {
        Admission {
            maintenance: AtomicBool::new(false),
            pipeline_paused: AtomicBool::new(false),
            web_up: AtomicBool::new(false),
            uploads: UploadClaims::default(),
            in_flight: InFlight::new(max_uploads_in_flight),
            logins: LoginLimiter::new(login_failures_per_minute),
        }
    }

    pub fn maintenance(&self) -> bool {
        self.maintenance.load(Ordering::SeqCst)
    }

    pub fn set_maintenance(&self, on: bool) {
        self.maintenance.store(on, Ordering::SeqCst);
    }

    pub fn pipeline_paused(&self) -> bool {
        self.pipeline_paused.load(Ordering::SeqCst)
    }

    pub fn set_pipeline_paused(&self, paused: bool) {
        self.pipeline_paused.store(paused, Ordering::SeqCst);
    }

    pub fn web_up(&self) -> bool {
        self.web_up.load(Ordering::SeqCst)
    }

    pub fn set_web_up(&self, up: bool) {
        self.web_up.store(up, Ordering::SeqCst);
    }
}

/// Uploads streaming in right now, at most `limit`: one more is turned
/// away (`503 busy`) instead of growing memory; the device retries the same
/// server a moment later.
#[derive(Debug)]
pub struct InFlight {
    limit: usize,
    now: Arc<AtomicUsize>,
}

/// Held while one upload streams in; released on drop.
#[derive(Debug)]
pub struct InFlightSlot(Arc<AtomicUsize>);

impl InFlight {
    pub fn new(limit: usize) -> InFlight {
        InFlight {
            limit,
            now: Arc::default(),
        }
    }

    /// A slot for one more upload, or `None` when `limit` are streaming.
    pub fn enter(&self) -> Option<InFlightSlot> {
        self.now
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.limit).then_some(n + 1)
            })
            .ok()
            .map(|_| InFlightSlot(self.now.clone()))
    }

    /// Uploads streaming in right now.
    pub fn current(&self) -> usize {
        self.now.load(Ordering::Acquire)
    }

    pub fn limit(&self) -> usize {
        self.limit
    }
}

impl Drop for InFlightSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Job ids with an upload streaming right now.
#[derive(Default, Clone, Debug)]
pub struct UploadClaims(Arc<Mutex<HashSet<Uuid>>>);

/// Held while an upload of a job id streams; released on drop.
#[derive(Debug)]
pub struct UploadClaim {
    claims: UploadClaims,
    id: Uuid,
}

impl UploadClaims {
    /// Claims `id`, or `None` when another upload of it is streaming.
    pub fn claim(&self, id: Uuid) -> Option<UploadClaim> {
        let fresh = self.0.lock().unwrap_or_else(|p| p.into_inner()).insert(id);
        fresh.then(|| UploadClaim {
            claims: self.clone(),
            id,
        })
    }
}

impl Drop for UploadClaim {
    fn drop(&mut self) {
        self.claims
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

const WINDOW: Duration = Duration::from_secs(60);

/// Failed logins per device in the last minute.
pub struct LoginLimiter {
    per_minute: u32,
    failures: Mutex<HashMap<Uuid, VecDeque<Instant>>>,
}

impl LoginLimiter {
    pub fn new(per_minute: u32) -> LoginLimiter {
        LoginLimiter {
            per_minute,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// `Err(seconds to wait)` when the device used up its failures.
    pub fn check(&self, device: Uuid, now: Instant) -> Result<(), u32> {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let Some(q) = map.get_mut(&device) else {
            return Ok(());
        };
        while q.front().is_some_and(|t| now.duration_since(*t) >= WINDOW) {
            q.pop_front();
        }
        if q.len() as u32 >= self.per_minute {
            let oldest = *q.front().expect("non-empty");
            let wait = WINDOW.saturating_sub(now.duration_since(oldest));
            return Err(wait.as_secs().max(1) as u32);
        }
        Ok(())
    }

    pub fn failed(&self, device: Uuid, now: Instant) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(device)
            .or_default()
            .push_back(now);
    }

    pub fn succeeded(&self, device: Uuid) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&device);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uploads_beyond_the_limit_are_turned_away_until_one_ends() {
        let in_flight = InFlight::new(2);
        let a = in_flight.enter().unwrap();
        let _b = in_flight.enter().unwrap();
        assert!(in_flight.enter().is_none());
        assert_eq!(in_flight.current(), 2);
        drop(a);
        assert!(in_flight.enter().is_some());
        assert_eq!(in_flight.current(), 1, "the slot taken above went with it");
    }

    #[test]
    fn one_upload_per_job_id() {
        let claims = UploadClaims::default();
        let id = Uuid::new_v4();
        let first = claims.claim(id).unwrap();
        assert!(claims.claim(id).is_none());
        assert!(claims.claim(Uuid::new_v4()).is_some());
        drop(first);
        assert!(claims.claim(id).is_some());
    }

    #[test]
    fn failures_expire_after_a_minute() {
        let limiter = LoginLimiter::new(2);
        let dev = Uuid::new_v4();
        let t0 = Instant::now();
        limiter.failed(dev, t0);
        assert!(limiter.check(dev, t0).is_ok());
        limiter.failed(dev, t0 + Duration::from_secs(10));
        let wait = limiter
            .check(dev, t0 + Duration::from_secs(20))
            .unwrap_err();
        assert_eq!(wait, 40);
        assert!(limiter.check(dev, t0 + Duration::from_secs(61)).is_ok());
        limiter.succeeded(dev);
        assert!(limiter.check(dev, t0 + Duration::from_secs(20)).is_ok());
    }
}
