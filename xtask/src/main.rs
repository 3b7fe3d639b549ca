//! The task runner: one entry point for people and CI.
//!
//! - `cargo xtask test`  — install what is missing, then fmt, clippy and every test;
//! - `cargo xtask demo`  — a local pair of gateways with simulated devices;
//! - `cargo xtask bench` — the benchmarks behind BENCHMARKS.md;
//! - `cargo xtask soak`  — thousands of jobs under a seeded fault schedule, then the checker;
//! - `cargo xtask fuzz`  — the fuzz targets of `fuzz/`, each for a while;
//! - `cargo xtask setup` — only the installation step.

mod bench;
mod bench_config;
mod bench_failover;
mod bench_pair;
mod bench_replication;
mod bench_takeover;
mod demo;
mod fuzz;
mod measure;
mod pair_site;
mod setup;
mod site;
mod soak;
mod table;

use std::process::{Command, ExitCode};

pub type Result<T = ()> = std::result::Result<T, String>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => test(),
        Some("setup") => setup_all(),
        Some("demo") => demo::run(&args[1..]),
        Some("bench") => bench::run(&args[1..]),
        Some("soak") => soak::run(&args[1..]),
        Some("fuzz") => fuzz::run(&args[1..]),
        _ => Err("usage: cargo xtask <test|demo|bench|soak|fuzz|setup>\n  test   install what is missing, then fmt, clippy and all tests\n  demo   run a local gateway pair with simulated devices (--help for options)\n  bench  run the benchmarks (intake, ocr, pair, config, replication, takeover, failover, or all of them and their table; --help for options)\n  soak   thousands of jobs under seeded faults, then the fault suite's checker (--jobs N, --seed S)\n  fuzz   run the fuzz targets of fuzz/ in turn ([TARGET...] [--seconds N], default 60 each)\n  setup  install system packages and Rust tools only".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

fn setup_all() -> Result {
    setup::apt(setup::TEST_PACKAGES)?;
    setup::python_tools()?;
    setup::rust_tools()
}

fn test() -> Result {
    setup_all()?;
    exec(Command::new("cargo").args(["fmt", "--all", "--", "--check"]))
        .map_err(|e| format!("{e}\nformatting differs: run `cargo fmt --all`"))?;
    exec(Command::new("cargo").args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The end-to-end tests start these binaries as real processes.
    exec(Command::new("cargo").args(["build", "--workspace", "--bins"]))?;
    exec(Command::new("cargo").args(["nextest", "run", "--workspace", "--no-fail-fast"]))?;
    // The README's first command, end to end: a pair, the primary killed
    // and restarted, devices failing over and back, every job reconciled.
    demo::run(&["--json".to_owned()])
        .map_err(|e| format!("{e}\nthe demo (`cargo xtask demo`) failed inside the test run"))
}

/// Runs a command, failing with its name when it fails.
pub fn exec(cmd: &mut Command) -> Result {
    let shown = format!("{cmd:?}");
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run {shown}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{shown} failed ({status})"))
    }
}

/// Whether a command runs and exits 0 (output discarded).
pub fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The workspace root (xtask runs from anywhere inside it).
pub fn root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_owned()
}
