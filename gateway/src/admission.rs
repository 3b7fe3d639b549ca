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

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
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
    pub fn new(
        login_failures_per_minute: u32,
        max_uploads_in_flight: usize,
        upload_slot_wait: Duration,
    ) -> Admission {
        Admission {
            maintenance: AtomicBool::new(false),
            pipeline_paused: AtomicBool::new(false),
            web_up: AtomicBool::new(false),
            uploads: UploadClaims::default(),
            in_flight: InFlight::new(max_uploads_in_flight, upload_slot_wait),
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

/// Uploads streaming in right now, at most `limit`, so memory stays
/// bounded in a rush: one more waits (its body unread, in the kernel's
/// socket buffer rather than this process) for a slot, up to `wait`, and
/// is then turned away (`503 busy`); the device retries the same server a
/// moment later. Slots go in the order asked for.
#[derive(Debug)]
pub struct InFlight {
    limit: usize,
    wait: Duration,
    slots: Arc<Semaphore>,
    waiting: AtomicUsize,
}

/// Held while one upload streams in; released on drop.
#[derive(Debug)]
pub struct InFlightSlot(#[allow(dead_code)] OwnedSemaphorePermit);

impl InFlight {
    pub fn new(limit: usize, wait: Duration) -> InFlight {
        InFlight {
            limit,
            wait,
            slots: Arc::new(Semaphore::new(limit)),
            waiting: AtomicUsize::new(0),
        }
    }

    /// A slot for one more upload: at once when fewer than `limit` are
    /// streaming, else the first to free up within `wait`; `None` after.
    pub async fn enter(&self) -> Option<InFlightSlot> {
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            return Some(InFlightSlot(permit));
        }
        self.waiting.fetch_add(1, Ordering::AcqRel);
        let permit = tokio::time::timeout(self.wait, self.slots.clone().acquire_owned()).await;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        match permit {
            Ok(Ok(permit)) => Some(InFlightSlot(permit)),
            _ => None,
        }
    }

    /// Uploads streaming in right now.
    pub fn current(&self) -> usize {
        self.limit - self.slots.available_permits()
    }

    /// Uploads waiting for a slot right now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// How long an upload waits for a slot before it is turned away.
    pub fn wait(&self) -> Duration {
        self.wait
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

    #[tokio::test(start_paused = true)]
    async fn uploads_beyond_the_limit_wait_for_a_slot_and_are_turned_away_after_the_wait() {
        let in_flight = Arc::new(InFlight::new(2, Duration::from_secs(5)));
        let a = in_flight.enter().await.unwrap();
        let _b = in_flight.enter().await.unwrap();
        assert_eq!(in_flight.current(), 2);
        // A third waits, and gets the first slot that frees up.
        let third = tokio::spawn({
            let in_flight = in_flight.clone();
            async move { in_flight.enter().await }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(in_flight.waiting(), 1);
        drop(a);
        let _third = third
            .await
            .unwrap()
            .expect("the waiting upload got the freed slot");
        assert_eq!(in_flight.waiting(), 0);
        assert_eq!(in_flight.current(), 2, "the slot passed on, not returned");
        // With every slot held for longer than the wait, one more is
        // turned away once the wait is over.
        let started = tokio::time::Instant::now();
        assert!(in_flight.enter().await.is_none());
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        assert_eq!(in_flight.waiting(), 0);
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
