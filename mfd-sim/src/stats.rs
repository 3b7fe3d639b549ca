//! Owns the arithmetic of run summaries: latency percentiles and rates. It
//! must not do I/O or know what was measured.

use std::time::Duration;

use serde::Serialize;

/// Latency samples of one run.
#[derive(Debug, Clone, Default)]
pub struct Latencies {
    samples: Vec<Duration>,
}

/// Percentiles of a set of latencies, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LatencySummary {
    /// Number of samples.
    pub count: usize,
    /// Median.
    pub p50_ms: f64,
    /// 95th percentile.
    pub p95_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Slowest.
    pub max_ms: f64,
    /// Arithmetic mean.
    pub mean_ms: f64,
}

impl Latencies {
    /// No samples yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one sample.
    pub fn record(&mut self, latency: Duration) {
        self.samples.push(latency);
    }

    /// Adds all samples of another set.
    pub fn merge(&mut self, other: Latencies) {
        self.samples.extend(other.samples);
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// True without samples.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Percentiles by the nearest-rank method (the smallest sample with at
    /// least p% of the samples at or below it), so every reported value is a
    /// latency that really occurred. All zero without samples.
    pub fn summary(&self) -> LatencySummary {
        let mut sorted = self.samples.clone();
        sorted.sort_unstable();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let rank = |p: f64| -> f64 {
            if sorted.is_empty() {
                return 0.0;
            }
            let r = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
            ms(sorted[r.clamp(1, sorted.len()) - 1])
        };
        let mean = if sorted.is_empty() {
            0.0
        } else {
            sorted.iter().map(|d| ms(*d)).sum::<f64>() / sorted.len() as f64
        };
        LatencySummary {
            count: sorted.len(),
            p50_ms: rank(50.0),
            p95_ms: rank(95.0),
            p99_ms: rank(99.0),
            max_ms: sorted.last().map_or(0.0, |d| ms(*d)),
            mean_ms: mean,
        }
    }
}

impl LatencySummary {
    /// `p50 12.3 ms, p95 …` for the human-readable summaries.
    pub fn describe(&self) -> String {
        format!(
            "p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms, max {:.1} ms (mean {:.1} ms, {} samples)",
            self.p50_ms, self.p95_ms, self.p99_ms, self.max_ms, self.mean_ms, self.count
        )
    }
}

/// Events per second; zero for an empty interval.
pub fn per_second(count: u64, elapsed: Duration) -> f64 {
    let s = elapsed.as_secs_f64();
    if s > 0.0 { count as f64 / s } else { 0.0 }
}

/// Megabytes (10^6 bytes, as network throughput is usually quoted) per second.
pub fn megabytes_per_second(bytes: u64, elapsed: Duration) -> f64 {
    per_second(bytes, elapsed) / 1_000_000.0
}

/// FNV-1a over a body, printed by the load client so that two runs (gateway
/// and baseline) can be seen to have sent identical bytes. Not a security
/// hash; it only has to differ when the bytes do.
pub fn fnv1a64(data: &[u8]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325_u64;
    for &b in data {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn nearest_rank_percentiles() {
        let mut l = Latencies::new();
        for n in (1..=100).rev() {
            l.record(ms(n));
        }
        let s = l.summary();
        assert_eq!(
            (s.count, s.p50_ms, s.p95_ms, s.p99_ms, s.max_ms),
            (100, 50.0, 95.0, 99.0, 100.0)
        );
        assert!((s.mean_ms - 50.5).abs() < 1e-9);
    }

    #[test]
    fn small_sets_report_real_samples() {
        let mut l = Latencies::new();
        l.record(ms(10));
        l.record(ms(30));
        l.record(ms(20));
        let s = l.summary();
        assert_eq!(
            (s.p50_ms, s.p95_ms, s.p99_ms, s.max_ms),
            (20.0, 30.0, 30.0, 30.0)
        );
        let empty = Latencies::new().summary();
        assert_eq!((empty.count, empty.p99_ms, empty.mean_ms), (0, 0.0, 0.0));
    }

    #[test]
    fn merging_keeps_every_sample() {
        let mut a = Latencies::new();
        a.record(ms(1));
        let mut b = Latencies::new();
        b.record(ms(9));
        b.record(ms(5));
        a.merge(b);
        assert_eq!(a.len(), 3);
        assert_eq!(a.summary().max_ms, 9.0);
    }

    #[test]
    fn rates() {
        assert_eq!(per_second(50, Duration::from_secs(2)), 25.0);
        assert_eq!(per_second(50, Duration::ZERO), 0.0);
        assert_eq!(megabytes_per_second(3_000_000, Duration::from_secs(3)), 1.0);
    }

    #[test]
    fn fnv_reference_values() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }
}
