//! Mechanical checks of the crate's promises: the protocol core stays pure
//! (no server, database, TLS or async runtime crates; no sockets, files or
//! clock reads in its sources), and every module says what it owns.

use std::path::{Path, PathBuf};
use std::process::Command;

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_sources(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(rust_sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
    found
}

#[test]
fn the_library_depends_on_no_server_database_tls_or_async_crate() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = Command::new(cargo)
        .args([
            "tree",
            "-p",
            "pair-core",
            "-e",
            "normal",
            "--prefix",
            "none",
        ])
        .current_dir(crate_dir())
        .output()
        .expect("cargo tree runs");
    assert!(
        output.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let tree = String::from_utf8(output.stdout).unwrap();
    let crates: Vec<&str> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    // The listing must be real, or the absence checks prove nothing.
    assert!(crates.contains(&"pair-core"), "{tree}");
    assert!(crates.contains(&"serde"), "{tree}");
    for forbidden in [
        "tokio",
        "rusqlite",
        "rustls",
        "axum",
        "hyper",
        "mio",
        "socket2",
        "stateright",
    ] {
        assert!(
            !crates.contains(&forbidden),
            "pair-core depends on {forbidden}:\n{tree}"
        );
    }
}

#[test]
fn library_sources_open_no_socket_file_or_clock() {
    let forbidden = [
        "std::net",
        "std::fs",
        "std::process",
        "std::thread",
        "SystemTime::now",
        "Instant::now",
        "tokio",
        "rusqlite",
    ];
    for path in rust_sources(&crate_dir().join("src")) {
        let text = std::fs::read_to_string(&path).unwrap();
        for word in forbidden {
            assert!(
                !text.contains(word),
                "{} mentions {word}: the protocol core must stay free of I/O and clocks",
                path.display()
            );
        }
    }
}

#[test]
fn every_module_starts_by_saying_what_it_owns() {
    let dir = crate_dir();
    let mut files = rust_sources(&dir.join("src"));
    files.extend(rust_sources(&dir.join("tests")));
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with("//! "),
            "{} must start with a `//!` line saying what it owns",
            path.display()
        );
    }
}
