//! Small measuring helpers the benchmarks share: reading the CPU time of
//! the machine and of processes, parsing the gateways' log timestamps,
//! summarising samples (nearest-rank percentiles) and picking the median
//! of repeated runs. They start nothing and print nothing.

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

/// User + system CPU time the processes `pids` have used so far, in clock
/// ticks (`utime` + `stime` of `/proc/<pid>/stat`); a process that is gone
/// counts nothing.
pub fn process_cpu_ticks(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|stat| stat_cpu_ticks(&stat))
        .sum()
}

/// `utime` + `stime` (fields 14 and 15) of one `/proc/<pid>/stat` line.
fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may itself hold
    // spaces and parentheses: fields are counted from the last `)`, after
    // which field 3 begins.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(field(14)? + field(15)?)
}

/// Clock ticks per second, the unit of [`process_cpu_ticks`], as
/// `getconf CLK_TCK` tells; `None` when it cannot be asked.
pub fn clock_ticks_per_second() -> Option<f64> {
    let out = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()?;
    let ticks: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
    (out.status.success() && ticks > 0.0).then_some(ticks)
}

/// The index of the median of `values`: the middle one by value, the lower
/// middle one of an even count; 0 when there are none.
pub fn median_index(values: &[f64]) -> usize {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|a, b| values[*a].total_cmp(&values[*b]));
    order
        .get(values.len().saturating_sub(1) / 2)
        .copied()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_run_is_the_middle_one_by_value() {
        assert_eq!(median_index(&[361.4, 350.1, 370.2]), 0);
        assert_eq!(median_index(&[5.0]), 0);
        assert_eq!(median_index(&[2.0, 1.0]), 1);
        assert_eq!(median_index(&[]), 0);
    }

    #[test]
    fn cpu_ticks_are_read_after_the_command_name() {
        let stat = "4242 (nginx: worker) S 4241 4241 4241 0 -1 4194624 1502 0 0 0 \
                    37 12 0 0 20 0 1 0 1234 10000 500";
        assert_eq!(stat_cpu_ticks(stat), Some(49));
        assert_eq!(stat_cpu_ticks("4242 (odd) name) R 1"), None);
    }
}
