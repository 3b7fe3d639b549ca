//! The invariants of ARCHITECTURE.md that a machine can check: which crate
//! may depend on what, that SQL stays in the store module, and that every
//! source file says what it owns.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// Normal (non-dev) dependencies of a package, as `cargo tree` lists them.
fn deps(package: &str) -> Vec<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(root())
        .args([
            "tree", "-p", package, "-e", "normal", "--prefix", "none", "--format", "{p}",
        ])
        .output()
        .expect("cargo tree");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l.split_whitespace().next().unwrap_or_default().to_owned())
        .collect()
}

#[track_caller]
fn assert_not_in(package: &str, forbidden: &[&str]) {
    let deps = deps(package);
    for f in forbidden {
        assert!(
            !deps.iter().any(|d| d == f),
            "{package} must not depend on {f}"
        );
    }
}

#[test]
fn crate_boundaries_hold() {
    assert_not_in("licensing", &["axum", "hyper", "rusqlite", "tokio"]);
    assert_not_in("plugins", &["axum", "rusqlite", "licensing", "gateway"]);
    assert_not_in("mfd-sim", &["gateway", "plugins", "rusqlite", "axum"]);
    for package in ["licensing", "plugins", "gateway", "mfd-sim"] {
        assert_not_in(
            package,
            &[
                "aws-lc-rs",
                "aws-lc-sys",
                "openssl",
                "openssl-sys",
                "native-tls",
            ],
        );
    }
    assert!(deps("gateway").iter().any(|d| d == "rusqlite"));
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            if path
                .file_name()
                .is_some_and(|n| n == "target" || n == "fixtures")
            {
                continue;
            }
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn sql_stays_in_the_store_module() {
    let mut files = Vec::new();
    rust_files(&root().join("gateway/src"), &mut files);
    for file in files {
        if file.components().any(|c| c.as_os_str() == "store") {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        for needle in [
            "rusqlite::",
            "execute(\"",
            "SELECT ",
            "INSERT INTO",
            "UPDATE jobs",
        ] {
            assert!(
                !text.contains(needle),
                "{} contains `{needle}`: SQL belongs in gateway/src/store",
                file.display()
            );
        }
    }
}

#[test]
fn every_source_file_says_what_it_owns() {
    let mut files = Vec::new();
    for krate in [
        "licensing",
        "plugins",
        "gateway",
        "mfd-sim",
        "tests",
        "xtask",
    ] {
        rust_files(&root().join(krate), &mut files);
    }
    assert!(files.len() > 40, "found the sources");
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let first = text
            .lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or_default();
        assert!(
            first.starts_with("//!"),
            "{} must start with a `//!` line saying what it owns",
            file.display()
        );
    }
}
