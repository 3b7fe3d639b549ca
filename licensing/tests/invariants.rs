//! Mechanical checks of the crate's promises: the library stays pure (no server, database or async runtime crates, no file, network or clock access), every module says what it owns, and no private vendor key is left in the tree.

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every file under `dir`, recursively.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(files(&path));
        } else {
            found.push(path);
        }
    }
    found
}

fn rust_sources(dir: &Path) -> Vec<PathBuf> {
    files(dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .collect()
}

#[test]
fn the_library_does_not_depend_on_server_database_or_async_crates() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| env!("CARGO").to_owned());
    let output = Command::new(cargo)
        .args([
            "tree",
            "-p",
            "licensing",
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
    // The listing must be real, or the absence checks below prove nothing.
    assert!(crates.contains(&"licensing"), "{tree}");
    assert!(crates.contains(&"ring"), "{tree}");
    for forbidden in ["axum", "hyper", "rusqlite", "tokio"] {
        assert!(
            !crates.contains(&forbidden),
            "licensing depends on {forbidden}:\n{tree}"
        );
    }
}

#[test]
fn library_sources_touch_no_files_network_or_clock() {
    // The license-tool binary (src/bin) is the one place allowed to.
    let forbidden = [
        "std::fs",
        "std::net",
        "std::env",
        "std::process",
        "Utc::now",
        "Local::now",
        "SystemTime",
        "Instant::now",
    ];
    let bin_dir = crate_dir().join("src").join("bin");
    for path in rust_sources(&crate_dir().join("src")) {
        if path.starts_with(&bin_dir) {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for needle in forbidden {
            assert!(!text.contains(needle), "{} uses {needle}", path.display());
        }
    }
}

#[test]
fn every_module_says_what_it_owns() {
    for path in rust_sources(&crate_dir()) {
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with("//! "),
            "{} must start with a //! line saying what it owns and must not do",
            path.display()
        );
    }
}

#[test]
fn no_private_vendor_key_is_left_in_the_crate() {
    // Every Ed25519 PKCS#8 document starts with the same 16-byte header; the
    // first 15 of them encode to a fixed base64 prefix, whatever the key.
    // It is derived from a fresh key here rather than written out, so this
    // file does not match itself.
    let (_, pkcs8) = licensing::VendorKeyPair::generate().unwrap();
    let header = BASE64.encode(&pkcs8[..15]);
    for path in files(&crate_dir()) {
        assert_ne!(
            path.file_name().unwrap(),
            "vendor.key",
            "{}",
            path.display()
        );
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        assert!(
            !text.contains(&header),
            "{} contains a PKCS#8 private key; remove it: whoever holds it can issue licenses",
            path.display()
        );
    }
}
