//! Prometheus metrics: a few counters and one histogram kept in atomics,
//! rendered in the text exposition format at `/metrics`. Gauges that describe
//! state (queue depth, service states) are read at scrape time by the caller.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds (seconds) of the upload latency histogram.
const LATENCY_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The instance's counters.
#[derive(Default)]
pub struct Metrics {
    jobs_accepted: AtomicU64,
    jobs_replayed: AtomicU64,
    jobs_refused: Mutex<BTreeMap<&'static str, u64>>,
    upload_bytes: AtomicU64,
    upload_buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    upload_count: AtomicU64,
    upload_sum_micros: AtomicU64,
    jobs_done: AtomicU64,
    jobs_failed: AtomicU64,
    logins_ok: AtomicU64,
    logins_failed: AtomicU64,
    pair_events: Mutex<BTreeMap<&'static str, u64>>,
}

/// State read at scrape time.
pub struct Gauges<'a> {
    pub instance: &'a str,
    pub role: &'a str,
    pub epoch: u64,
    pub queue_depth: Option<u64>,
    pub data_up: bool,
    pub maintenance: bool,
    pub config_version: u64,
    /// Jobs accepted here that the peer has no copy of, and whether a job
    /// was acknowledged without the peer's copy since the stream last
    /// caught up; `None` without a pair link.
    pub replication: Option<(u64, bool)>,
    /// Batches the job commit has made since the data service last
    /// started; `None` while it is down.
    pub commit_batches: Option<u64>,
}

impl Metrics {
    /// A job was acknowledged as new after `elapsed` of upload.
    pub fn job_accepted(&self, bytes: u64, elapsed: Duration) {
        self.jobs_accepted.fetch_add(1, Relaxed);
        self.upload_bytes.fetch_add(bytes, Relaxed);
        let secs = elapsed.as_secs_f64();
        for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
            if secs <= *bound {
                self.upload_buckets[i].fetch_add(1, Relaxed);
            }
        }
        self.upload_count.fetch_add(1, Relaxed);
        self.upload_sum_micros
            .fetch_add(elapsed.as_micros() as u64, Relaxed);
    }

    /// A resubmitted job id got its original acknowledgement.
    pub fn job_replayed(&self) {
        self.jobs_replayed.fetch_add(1, Relaxed);
    }

    /// A job submission was refused with `code`.
    pub fn job_refused(&self, code: &'static str) {
        *self
            .jobs_refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(code)
            .or_default() += 1;
    }

    /// A job's pipeline ended.
    pub fn job_finished(&self, ok: bool) {
        if ok {
            &self.jobs_done
        } else {
            &self.jobs_failed
        }
        .fetch_add(1, Relaxed);
    }

    /// A login attempt ended.
    pub fn login(&self, ok: bool) {
        if ok {
            &self.logins_ok
        } else {
            &self.logins_failed
        }
        .fetch_add(1, Relaxed);
    }

    /// Something happened on the pair link (`peer_dead`, `peer_live`,
    /// `fenced`, ...).
    pub fn pair_event(&self, event: &'static str) {
        *self
            .pair_events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(event)
            .or_default() += 1;
    }

    /// Jobs accepted so far (for status output).
    pub fn accepted(&self) -> u64 {
        self.jobs_accepted.load(Relaxed)
    }

    /// The text exposition.
    pub fn render(&self, g: &Gauges<'_>) -> String {
        let mut out = String::new();
        let inst = g.instance;
        let mut family = |name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        family(
            "scangw_info",
            "gauge",
            "Instance, role and epoch of this gateway.",
        );
        let _ = writeln!(
            out,
            "scangw_info{{instance=\"{inst}\",role=\"{}\",version=\"{}\"}} 1",
            g.role,
            env!("CARGO_PKG_VERSION")
        );
        let mut line = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{instance=\"{inst}\"}} {value}"
            );
        };
        line(
            "scangw_epoch",
            "gauge",
            "Epoch of the primary this server follows or is.",
            g.epoch.to_string(),
        );
        line(
            "scangw_config_version",
            "gauge",
            "Version of the configuration set in use.",
            g.config_version.to_string(),
        );
        line(
            "scangw_data_service_up",
            "gauge",
            "1 when the data service is up.",
            u8::from(g.data_up).to_string(),
        );
        line(
            "scangw_maintenance",
            "gauge",
            "1 when the server is in maintenance mode.",
            u8::from(g.maintenance).to_string(),
        );
        if let Some((unreplicated, degraded)) = g.replication {
            line(
                "scangw_jobs_unreplicated",
                "gauge",
                "Jobs accepted here that the peer has no copy of yet.",
                unreplicated.to_string(),
            );
            line(
                "scangw_replication_degraded",
                "gauge",
                "1 while a job acknowledged without the peer's copy waits for it.",
                u8::from(degraded).to_string(),
            );
        }
        if let Some(depth) = g.queue_depth {
            line(
                "scangw_queue_depth",
                "gauge",
                "Jobs received or processing.",
                depth.to_string(),
            );
        }
        if let Some(batches) = g.commit_batches {
            line(
                "scangw_commit_batches_total",
                "counter",
                "Batches of the job commit (jobs and copies durable together) since the data service started; with scangw_jobs_accepted_total, how many jobs share a batch.",
                batches.to_string(),
            );
        }
        line(
            "scangw_jobs_accepted_total",
            "counter",
            "Jobs acknowledged as new.",
            self.jobs_accepted.load(Relaxed).to_string(),
        );
        line(
            "scangw_jobs_replayed_total",
            "counter",
            "Resubmitted job ids answered with the original acknowledgement.",
            self.jobs_replayed.load(Relaxed).to_string(),
        );
        line(
            "scangw_upload_bytes_total",
            "counter",
            "Page bytes of accepted jobs.",
            self.upload_bytes.load(Relaxed).to_string(),
        );
        line(
            "scangw_jobs_done_total",
            "counter",
            "Jobs whose pipeline completed.",
            self.jobs_done.load(Relaxed).to_string(),
        );
        line(
            "scangw_jobs_failed_total",
            "counter",
            "Jobs moved to the dead-letter state.",
            self.jobs_failed.load(Relaxed).to_string(),
        );
        line(
            "scangw_logins_total",
            "counter",
            "Successful logins.",
            self.logins_ok.load(Relaxed).to_string(),
        );
        line(
            "scangw_login_failures_total",
            "counter",
            "Failed logins.",
            self.logins_failed.load(Relaxed).to_string(),
        );

        let _ = writeln!(
            out,
            "# HELP scangw_jobs_refused_total Job submissions refused, by error code."
        );
        let _ = writeln!(out, "# TYPE scangw_jobs_refused_total counter");
        for (code, n) in self
            .jobs_refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "scangw_jobs_refused_total{{instance=\"{inst}\",reason=\"{code}\"}} {n}"
            );
        }

        let _ = writeln!(
            out,
            "# HELP scangw_pair_events_total Pair link events (liveness changes, fencing, refusals), by event."
        );
        let _ = writeln!(out, "# TYPE scangw_pair_events_total counter");
        for (event, n) in self
            .pair_events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "scangw_pair_events_total{{instance=\"{inst}\",event=\"{event}\"}} {n}"
            );
        }

        let _ = writeln!(
            out,
            "# HELP scangw_upload_seconds Time from request start to acknowledgement of accepted jobs."
        );
        let _ = writeln!(out, "# TYPE scangw_upload_seconds histogram");
        for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "scangw_upload_seconds_bucket{{instance=\"{inst}\",le=\"{bound}\"}} {}",
                self.upload_buckets[i].load(Relaxed)
            );
        }
        let count = self.upload_count.load(Relaxed);
        let _ = writeln!(
            out,
            "scangw_upload_seconds_bucket{{instance=\"{inst}\",le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "scangw_upload_seconds_sum{{instance=\"{inst}\"}} {}",
            self.upload_sum_micros.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "scangw_upload_seconds_count{{instance=\"{inst}\"}} {count}"
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_counters_histogram_and_refusals() {
        let m = Metrics::default();
        m.job_accepted(1000, Duration::from_millis(30));
        m.job_accepted(500, Duration::from_secs(2));
        m.job_refused("maintenance");
        m.job_refused("maintenance");
        m.job_refused("job_too_large");
        let text = m.render(&Gauges {
            instance: "gw-a",
            role: "primary",
            epoch: 2,
            queue_depth: Some(4),
            data_up: true,
            maintenance: false,
            config_version: 7,
            replication: Some((3, true)),
            commit_batches: Some(5),
        });
        assert!(text.contains("scangw_commit_batches_total{instance=\"gw-a\"} 5"));
        assert!(text.contains("scangw_jobs_unreplicated{instance=\"gw-a\"} 3"));
        assert!(text.contains("scangw_replication_degraded{instance=\"gw-a\"} 1"));
        assert!(text.contains("scangw_jobs_accepted_total{instance=\"gw-a\"} 2"));
        assert!(text.contains("scangw_upload_bytes_total{instance=\"gw-a\"} 1500"));
        assert!(
            text.contains("scangw_jobs_refused_total{instance=\"gw-a\",reason=\"maintenance\"} 2")
        );
        assert!(text.contains("scangw_upload_seconds_bucket{instance=\"gw-a\",le=\"0.05\"} 1"));
        assert!(text.contains("scangw_upload_seconds_bucket{instance=\"gw-a\",le=\"2.5\"} 2"));
        assert!(text.contains("scangw_upload_seconds_bucket{instance=\"gw-a\",le=\"+Inf\"} 2"));
        assert!(text.contains("scangw_queue_depth{instance=\"gw-a\"} 4"));
        // Every sample line belongs to a declared family.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let name = l.split(['{', ' ']).next().unwrap();
            let family = name
                .trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count");
            assert!(
                text.contains(&format!("# TYPE {family} ")),
                "{name} has no TYPE line"
            );
        }
    }
}
