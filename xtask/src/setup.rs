//! Installs what the tests, the demo and the benchmarks need and a fresh
//! machine lacks: Debian packages (through apt-get, as root), the Python SMTP
//! server the mail tests talk to, and the Rust tools (rustfmt, clippy,
//! cargo-nextest). Installs only what is missing, so it is quick when all is
//! there.

use std::process::Command;

use crate::{Result, exec, succeeds};

/// Debian packages the test suite uses: the OCR engine and its English data,
/// PDF checkers, the font the simulated scanner renders with, the load
/// balancer of the PROXY-protocol tests, keepalived (whose config test checks
/// the shipped example), and curl.
pub const TEST_PACKAGES: &[&str] = &[
    "tesseract-ocr",
    "tesseract-ocr-eng",
    "qpdf",
    "poppler-utils",
    "fonts-dejavu-core",
    "haproxy",
    "keepalived",
    "curl",
    // Shifts one process's clock for the pair's clock-skew test.
    "faketime",
    // The headless browser and its WebDriver of the panel's browser test.
    "chromium",
    "chromium-driver",
];

/// What the demo needs.
pub const DEMO_PACKAGES: &[&str] = &[
    "tesseract-ocr",
    "tesseract-ocr-eng",
    "poppler-utils",
    "fonts-dejavu-core",
];

/// What the benchmarks add: the nginx baseline and the process timer.
pub const BENCH_PACKAGES: &[&str] = &["nginx", "time"];

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Installs the missing Debian packages of `packages`.
pub fn apt(packages: &[&str]) -> Result {
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        return Err(format!(
            "these Debian packages are missing: {0}; install them with `sudo apt-get update && sudo apt-get install -y {0}` and run again",
            missing.join(" ")
        ));
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    exec(Command::new("apt-get").arg("update").arg("-q"))?;
    exec(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// The SMTP server the mail tests start (aiosmtpd, from PyPI).
pub fn python_tools() -> Result {
    if succeeds(Command::new("python3").args(["-c", "import aiosmtpd"])) {
        return Ok(());
    }
    eprintln!("xtask: installing aiosmtpd (pip)");
    exec(Command::new("python3").args(["-m", "pip", "install", "--quiet", "aiosmtpd"]))
}

/// rustfmt, clippy and cargo-nextest.
pub fn rust_tools() -> Result {
    for component in ["rustfmt", "clippy"] {
        let probe = if component == "rustfmt" {
            "fmt"
        } else {
            "clippy"
        };
        if !succeeds(Command::new("cargo").args([probe, "--version"])) {
            exec(Command::new("rustup").args(["component", "add", component]))?;
        }
    }
    if !succeeds(Command::new("cargo").args(["nextest", "--version"])) {
        eprintln!("xtask: installing cargo-nextest");
        exec(Command::new("cargo").args(["install", "cargo-nextest", "--locked"]))?;
    }
    Ok(())
}
