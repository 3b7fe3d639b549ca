//! `cargo xtask fuzz [TARGET...] [--seconds N] [--no-cmin]`: runs the
//! coverage-guided fuzz targets of `fuzz/` (cargo-fuzz over libFuzzer) one
//! after the other, each for a fixed time in one process, then minimises
//! its corpus (`cargo fuzz cmin`), and prints per target: executions,
//! exec/s, new corpus entries, corpus size and crashes.
//!
//! cargo-fuzz needs unstable compiler flags; on a stable toolchain they are
//! allowed with `RUSTC_BOOTSTRAP=1`. The targets are built without a
//! sanitizer (`--sanitizer none`): the code under test forbids `unsafe`, so
//! address sanitizing would find nothing the Rust checks do not, and costs
//! executions. Debug assertions and overflow checks stay on (cargo-fuzz's
//! default), so an arithmetic overflow is a crash.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::{Result, exec, root, succeeds};

/// Every target, in the order they run.
const TARGETS: &[&str] = &[
    "license_key",
    "manifest",
    "intake",
    "proxy_header",
    "settings",
    "pair_frames",
    "pairing_code",
    "page_image",
];

const DEFAULT_SECONDS: u64 = 60;

const USAGE: &str = "usage: cargo xtask fuzz [TARGET...] [--seconds N] [--no-cmin]
  runs each fuzz target of fuzz/ for N seconds (default 60) in one process,
  then minimises its corpus in fuzz/corpus/TARGET (unless --no-cmin)
  targets: license_key manifest intake proxy_header settings pair_frames pairing_code
           page_image";

/// What one run of one target did.
struct Outcome {
    target: String,
    seconds: f64,
    executions: u64,
    exec_per_sec: u64,
    new_entries: u64,
    corpus_files: usize,
    corpus_bytes: u64,
    crashes: Vec<PathBuf>,
}

pub fn run(args: &[String]) -> Result {
    let mut seconds = DEFAULT_SECONDS;
    let mut cmin = true;
    let mut targets = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seconds" => {
                seconds = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|&n| n > 0)
                    .ok_or_else(|| format!("--seconds needs a whole number of seconds\n{USAGE}"))?;
            }
            "--no-cmin" => cmin = false,
            "--help" | "-h" => return Err(USAGE.into()),
            name if TARGETS.contains(&name) => targets.push(name.to_owned()),
            other => return Err(format!("unknown fuzz target or option `{other}`\n{USAGE}")),
        }
    }
    if targets.is_empty() {
        targets = TARGETS.iter().map(|t| (*t).to_owned()).collect();
    }

    install_cargo_fuzz()?;
    let fuzz_dir = root().join("fuzz");
    let target_dir = target_dir();
    println!("building the fuzz targets (release, debug assertions, no sanitizer)");
    exec(&mut cargo_fuzz("build", &fuzz_dir, &target_dir))?;

    let mut outcomes = Vec::new();
    for target in &targets {
        println!("fuzzing {target} for {seconds} s");
        outcomes.push(fuzz_one(&fuzz_dir, &target_dir, target, seconds, cmin)?);
    }

    println!();
    println!(
        "{:<14} {:>8} {:>12} {:>10} {:>6} {:>15} {:>8}",
        "target", "seconds", "executions", "exec/s", "new", "corpus", "crashes"
    );
    for o in &outcomes {
        println!(
            "{:<14} {:>8.0} {:>12} {:>10} {:>6} {:>15} {:>8}",
            o.target,
            o.seconds,
            o.executions,
            o.exec_per_sec,
            o.new_entries,
            format!("{} / {} KB", o.corpus_files, o.corpus_bytes.div_ceil(1024)),
            o.crashes.len()
        );
    }
    let crashed: Vec<&Outcome> = outcomes.iter().filter(|o| !o.crashes.is_empty()).collect();
    if crashed.is_empty() {
        return Ok(());
    }
    let mut message = String::from("the fuzzers found crashes:");
    for o in crashed {
        for c in &o.crashes {
            message.push_str(&format!(
                "\n  {}: {} (reproduce: cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer none {} {})",
                o.target,
                c.display(),
                o.target,
                c.display()
            ));
        }
    }
    Err(message)
}

/// Installs cargo-fuzz when `cargo fuzz` is not there.
fn install_cargo_fuzz() -> Result {
    if succeeds(Command::new("cargo").args(["fuzz", "--version"])) {
        return Ok(());
    }
    println!("installing cargo-fuzz");
    exec(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))
}

/// Build output goes under the workspace's target directory, never into
/// `fuzz/target`.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
        .join("fuzz")
}

/// `cargo fuzz SUBCOMMAND` in `fuzz/`, with the flags every subcommand
/// shares (no sanitizer, the build under `target_dir`).
fn cargo_fuzz(subcommand: &str, fuzz_dir: &Path, target_dir: &Path) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(fuzz_dir)
        .env("RUSTC_BOOTSTRAP", "1")
        .args(["fuzz", subcommand, "--sanitizer", "none", "--target-dir"])
        .arg(target_dir);
    cmd
}

fn fuzz_one(
    fuzz_dir: &Path,
    target_dir: &Path,
    target: &str,
    seconds: u64,
    cmin: bool,
) -> Result<Outcome> {
    let corpus = fuzz_dir.join("corpus").join(target);
    let artifacts = fuzz_dir.join("artifacts").join(target);
    std::fs::create_dir_all(&artifacts)
        .map_err(|e| format!("cannot create {}: {e}", artifacts.display()))?;
    let before = files(&artifacts);

    let started = Instant::now();
    let output = cargo_fuzz("run", fuzz_dir, target_dir)
        .arg(target)
        .arg(&corpus)
        .args([
            "--",
            &format!("-max_total_time={seconds}"),
            "-timeout=10",
            "-print_final_stats=1",
        ])
        .output()
        .map_err(|e| format!("cannot run cargo fuzz: {e}"))?;
    let elapsed = started.elapsed().as_secs_f64();
    let log = String::from_utf8_lossy(&output.stderr);
    let log_path = target_dir.join(format!("{target}.log"));
    // The log is kept for a look after the run; failing to keep it is not
    // worth failing the run for.
    let _ = std::fs::write(&log_path, log.as_bytes());

    let crashes: Vec<PathBuf> = files(&artifacts)
        .into_iter()
        .filter(|f| !before.contains(f))
        .collect();
    if !output.status.success() && crashes.is_empty() {
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(format!(
            "cargo fuzz run {target} failed ({}) without a crash artifact; the end of its log ({}):\n{}",
            output.status,
            log_path.display(),
            tail.join("\n")
        ));
    }
    let stat = |name: &str| -> u64 {
        log.lines()
            .find_map(|l| l.strip_prefix(&format!("stat::{name}:")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    let executions = stat("number_of_executed_units");
    let exec_per_sec = stat("average_exec_per_sec");
    let new_entries = stat("new_units_added");

    if cmin && crashes.is_empty() {
        exec(
            cargo_fuzz("cmin", fuzz_dir, target_dir)
                .arg(target)
                .arg(&corpus)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null()),
        )?;
    }
    let corpus_files = files(&corpus);
    let corpus_bytes = corpus_files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum();
    Ok(Outcome {
        target: target.to_owned(),
        seconds: elapsed,
        executions,
        exec_per_sec,
        new_entries,
        corpus_files: corpus_files.len(),
        corpus_bytes,
        crashes,
    })
}

/// The files directly in `dir` (none when it does not exist).
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    out
}
