//! Small measuring helpers the benchmarks share: reading the machine's
//! CPU time, parsing the gateways' log timestamps, and summarising samples
//! (nearest-rank percentiles).

/// An error as the text the benchmarks report.
pub fn io(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// (busy, total) jiffies over all cores, from `/proc/stat`: how busy the
/// machine was during the series, the bench and both servers included.
pub fn cpu_jiffies() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is
    // already in user).
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3)? + fields.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// Nanoseconds since the Unix epoch of an RFC 3339 UTC time
/// (`2026-12-01T16:40:58.023Z`), and how many fractional digits it has: the
/// resolution of the timestamp.
pub fn utc_ns(text: &str) -> Option<(i64, usize)> {
    let (date, time) = text.strip_suffix('Z')?.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.splitn(3, ':').map(|p| p.parse::<i64>().ok());
    let (h, min, s) = (t.next()??, t.next()??, t.next()??);
    if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let nanos: i64 = format!("{frac:0<9}").parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + day - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    let secs = days * 86_400 + h * 3600 + min * 60 + s;
    Some((secs * 1_000_000_000 + nanos, frac.len()))
}

/// p50, p99 (nearest rank), min and max.
pub struct Summary {
    pub n: usize,
    pub p50: f64,
    pub p99: f64,
    pub min: f64,
    pub max: f64,
}

/// The summary of `samples`; `None` when there are none.
pub fn summary(samples: &[f64]) -> Option<Summary> {
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    let (min, max) = (*s.first()?, *s.last()?);
    // The smallest sample with at least `percent`% of all at or below it,
    // in whole numbers: 0.99 * 200 in floating point is a hair above 198.
    let rank = |percent: usize| s[(percent * s.len()).div_ceil(100).max(1) - 1];
    Some(Summary {
        n: s.len(),
        p50: rank(50),
        p99: rank(99),
        min,
        max,
    })
}
