//! The benchmark table: the headline rows each benchmark records as it
//! finishes (what, figure, baseline measured in the same run, ratio, the
//! command that reproduces it), and the table they make with the machine
//! they were measured on, in Markdown and JSON. It measures nothing itself.
//!
//! The benchmarks run one after another in this process, so the rows live
//! in one list; `begin` names the command whose rows follow, and a
//! benchmark that fails has a row saying so instead of silently having
//! none.

use std::path::Path;
use std::process::Command;
use std::sync::Mutex;

use serde_json::{Value, json};

use crate::Result;
use crate::measure::{Summary, io};

/// One headline figure beside its baseline.
#[derive(Clone)]
pub struct Row {
    pub what: String,
    pub figure: String,
    pub baseline: String,
    /// Figure / baseline, or `–` where they are not two quantities of one
    /// kind.
    pub ratio: String,
    pub command: String,
    /// Whether the row reports a failure rather than a figure.
    pub failed: bool,
}

struct Rows {
    command: String,
    rows: Vec<Row>,
}

static ROWS: Mutex<Rows> = Mutex::new(Rows {
    command: String::new(),
    rows: Vec::new(),
});

fn rows() -> std::sync::MutexGuard<'static, Rows> {
    ROWS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Rows recorded from now on carry `command`; returns a mark for
/// [`since`].
pub fn begin(command: &str) -> usize {
    let mut r = rows();
    r.command = command.to_owned();
    r.rows.len()
}

/// Records one row for the command of the last [`begin`].
pub fn row(
    what: impl Into<String>,
    figure: impl Into<String>,
    baseline: impl Into<String>,
    ratio: impl Into<String>,
) {
    let mut r = rows();
    let command = r.command.clone();
    r.rows.push(Row {
        what: what.into(),
        figure: figure.into(),
        baseline: baseline.into(),
        ratio: ratio.into(),
        command,
        failed: false,
    });
}

/// Records that the benchmark `name` failed, with the first line of its
/// error (the whole error is printed where it happened).
pub fn failed(name: &str, error: &str) {
    let first = error.lines().next().unwrap_or_default();
    let mut short: String = first.chars().take(300).collect();
    if short.len() < first.len() || error.lines().count() > 1 {
        short.push_str(" …");
    }
    let mut r = rows();
    let command = r.command.clone();
    r.rows.push(Row {
        what: format!("**{name}: FAILED**"),
        figure: short.replace('|', "\\|"),
        baseline: "–".to_owned(),
        ratio: "–".to_owned(),
        command,
        failed: true,
    });
}

/// The rows recorded since `mark`.
pub fn since(mark: usize) -> Vec<Row> {
    rows().rows.get(mark..).unwrap_or_default().to_vec()
}

/// `a / b` with two significant decimals, or `–`.
pub fn ratio(a: f64, b: f64) -> String {
    if a.is_finite() && b.is_finite() && b > 0.0 {
        format!("{:.2}", a / b)
    } else {
        "–".to_owned()
    }
}

/// A duration in ms, in seconds from 10 s up.
pub fn ms(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.2} s", v / 1000.0)
    } else if v >= 100.0 {
        format!("{v:.0} ms")
    } else {
        format!("{v:.1} ms")
    }
}

/// `p50 X / p99 Y (n=N)`.
pub fn p50_p99(s: &Summary) -> String {
    format!("p50 {} / p99 {} (n={})", ms(s.p50), ms(s.p99), s.n)
}

/// The machine and the moment of a run.
pub struct Machine {
    pub date: String,
    pub commit: String,
    pub cores: String,
    pub memory: String,
    pub load: String,
}

fn first_line(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// The 1, 5 and 15 minute load averages (`/proc/loadavg`).
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "?".to_owned())
}

/// Reads the date, the commit (and whether the tree has changes on top of
/// it), the cores and the memory of this machine; `load` says what the
/// load average was.
pub fn machine(load: String) -> Machine {
    let root = crate::root();
    let date = first_line(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))
        .unwrap_or_else(|| "?".to_owned());
    let commit =
        first_line(
            Command::new("git")
                .arg("-C")
                .arg(&root)
                .args(["rev-parse", "--short", "HEAD"]),
        )
        .unwrap_or_else(|| "?".to_owned());
    let dirty = first_line(Command::new("git").arg("-C").arg(&root).args([
        "status",
        "--porcelain",
        "--untracked-files=no",
    ]))
    .is_some();
    let cores = first_line(&mut Command::new("nproc")).unwrap_or_else(|| "?".to_owned());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            let line = m.lines().find(|l| l.starts_with("MemTotal:"))?.to_owned();
            let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(format!("{:.1} GiB", kb / 1024.0 / 1024.0))
        })
        .unwrap_or_else(|| "?".to_owned());
    Machine {
        date,
        commit: if dirty {
            format!("{commit} (with uncommitted changes)")
        } else {
            commit
        },
        cores,
        memory,
        load,
    }
}

/// The table in Markdown: a line on the run and the machine, then one row
/// per figure.
pub fn markdown(title: &str, m: &Machine, rows: &[Row]) -> String {
    let mut out = format!(
        "{title}\n\nMeasured {}, commit {}, {} cores, {} memory; load average (1/5/15 min) {}.\n\n\
         | what | figure | baseline (same run) | ratio figure / baseline | command |\n\
         |---|---|---|---|---|\n",
        m.date, m.commit, m.cores, m.memory, m.load
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {} | `{}` |\n",
            r.what, r.figure, r.baseline, r.ratio, r.command
        ));
    }
    out
}

/// The same as JSON.
pub fn json(title: &str, m: &Machine, rows: &[Row]) -> Value {
    json!({
        "title": title,
        "date": m.date,
        "commit": m.commit,
        "cores": m.cores,
        "memory": m.memory,
        "load_average": m.load,
        "rows": rows.iter().map(|r| json!({
            "what": r.what,
            "figure": r.figure,
            "baseline": r.baseline,
            "ratio": r.ratio,
            "command": r.command,
            "failed": r.failed,
        })).collect::<Vec<_>>(),
    })
}

/// Writes `table.md` and `table.json` into `dir`.
pub fn write(dir: &Path, markdown: &str, json: &Value) -> Result {
    std::fs::create_dir_all(dir).map_err(io)?;
    std::fs::write(dir.join("table.md"), markdown).map_err(io)?;
    let text = serde_json::to_string_pretty(json).map_err(io)?;
    std::fs::write(dir.join("table.json"), text + "\n").map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_benchmark_keeps_its_row() {
        let mark = begin("cargo xtask bench nothing");
        row("a figure", "1 ms", "2 ms", ratio(1.0, 2.0));
        failed("nothing", "it broke | badly\nand more");
        let got = since(mark);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].ratio, "0.50");
        assert_eq!(got[0].command, "cargo xtask bench nothing");
        assert!(got[1].failed);
        assert_eq!(got[1].figure, "it broke \\| badly …");
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(ms(5.04), "5.0 ms");
        assert_eq!(ms(585.0), "585 ms");
        assert_eq!(ms(10_970.0), "10.97 s");
        assert_eq!(ratio(1.0, 0.0), "–");
    }
}
