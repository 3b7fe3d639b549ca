//! End-to-end tests of the real `license-tool` binary in a temporary directory: keygen, issue and inspect for both roles, and the messages bad keys get. Uses only the binary's command line, never the library directly.

use std::path::Path;
use std::process::{Command, Output};

use tempfile::TempDir;

fn tool(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_license-tool"))
        .args(args)
        .output()
        .expect("license-tool runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}

/// Runs the tool and expects success; returns stdout.
fn ok(args: &[&str]) -> String {
    let output = tool(args);
    assert!(
        output.status.success(),
        "license-tool {args:?} failed:\n{}",
        stderr(&output)
    );
    stdout(&output)
}

/// Runs the tool and expects failure with a one-line message; returns it.
fn fails(args: &[&str]) -> String {
    let output = tool(args);
    assert!(
        !output.status.success(),
        "license-tool {args:?} should fail"
    );
    let message = stderr(&output);
    assert_eq!(message.lines().count(), 1, "one line expected: {message}");
    assert!(message.starts_with("error: "), "{message}");
    message.trim_end().to_owned()
}

struct Vendor {
    _dir: TempDir,
    key: String,
    public: String,
}

fn keygen() -> Vendor {
    let dir = TempDir::new().unwrap();
    let out = dir.path().join("vendor");
    let printed = ok(&["keygen", "--out", out.to_str().unwrap()]);
    let key = out.join("vendor.key");
    let public = out.join("vendor.pub");
    assert!(printed.contains(&key.display().to_string()), "{printed}");
    assert!(printed.contains(&public.display().to_string()), "{printed}");
    assert!(printed.contains("key id:"), "{printed}");
    Vendor {
        key: key.to_str().unwrap().to_owned(),
        public: public.to_str().unwrap().to_owned(),
        _dir: dir,
    }
}

fn issue(vendor: &Vendor, extra: &[&str]) -> String {
    let mut args = vec!["issue", "--vendor-key", vendor.key.as_str()];
    args.extend_from_slice(extra);
    let printed = ok(&args);
    assert_eq!(printed.lines().count(), 1, "{printed}");
    printed.trim_end().to_owned()
}

#[test]
fn keygen_writes_a_private_key_only_its_owner_can_read_and_never_overwrites() {
    let vendor = keygen();
    let public = std::fs::read_to_string(&vendor.public).unwrap();
    assert_eq!(public.trim().len(), 44, "base64 of 32 bytes: {public}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&vendor.key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let before = std::fs::read(&vendor.key).unwrap();
    let dir = Path::new(&vendor.key).parent().unwrap().to_str().unwrap();
    let message = fails(&["keygen", "--out", dir]);
    assert!(
        message.contains("already exists; refusing to overwrite a vendor key"),
        "{message}"
    );
    assert_eq!(std::fs::read(&vendor.key).unwrap(), before);
}

#[test]
fn keys_for_both_roles_are_issued_and_inspected() {
    let vendor = keygen();
    let primary = issue(
        &vendor,
        &["--role", "03", "--serial", "85", "--seats", "12"],
    );
    assert!(primary.starts_with("SCANGWP030000085-"), "{primary}");
    let shown = ok(&["inspect", &primary, "--vendor-pub", &vendor.public]);
    assert!(shown.contains("role:     primary (03)"), "{shown}");
    assert!(shown.contains("serial:   0000085"), "{shown}");
    assert!(shown.contains("seats:    12"), "{shown}");
    assert!(shown.contains("expires:  never"), "{shown}");

    let secondary = issue(
        &vendor,
        &[
            "--role",
            "secondary",
            "--serial",
            "45",
            "--expires",
            "2031-03-31",
        ],
    );
    assert!(secondary.starts_with("SCANGWP040000045-"), "{secondary}");
    let json = ok(&[
        "inspect",
        &secondary.to_lowercase().replace('-', " "),
        "--vendor-pub",
        &vendor.public,
        "--json",
        "--today",
        "2030-01-01",
    ]);
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(value["role"], "secondary");
    assert_eq!(value["role_code"], "04");
    assert_eq!(value["serial"], 45);
    assert_eq!(value["seats"], 1);
    assert_eq!(value["expires"], "2031-03-31");
    assert_eq!(value["product"], "SCANGWP");
    assert_eq!(value["key"], secondary.as_str());
}

#[test]
fn several_vendor_public_keys_can_be_trusted() {
    let old = keygen();
    let new = keygen();
    let key = issue(&old, &["--role", "04", "--serial", "7"]);
    let shown = ok(&[
        "inspect",
        &key,
        "--vendor-pub",
        &new.public,
        "--vendor-pub",
        &old.public,
    ]);
    assert!(shown.contains("role:     secondary (04)"), "{shown}");
}

#[test]
fn bad_keys_fail_with_distinct_clear_messages() {
    let vendor = keygen();
    let stranger = keygen();
    let key = issue(
        &vendor,
        &["--role", "03", "--serial", "85", "--expires", "2027-06-30"],
    );
    let trust = [
        "--vendor-pub",
        vendor.public.as_str(),
        "--today",
        "2027-01-01",
    ];

    // Character 40 is inside the fourth group; change it to another symbol.
    let mut changed: Vec<char> = key.chars().collect();
    changed[39] = if changed[39] == 'X' { 'Y' } else { 'X' };
    let changed: String = changed.into_iter().collect();
    let typo = fails(&[&["inspect", changed.as_str()][..], &trust[..]].concat());
    assert_eq!(
        typo,
        "error: license key rejected: character 40 of the license key is mistyped: compare it with the key you were given and correct it"
    );

    let foreign_key = issue(&stranger, &["--role", "03", "--serial", "85"]);
    let foreign = fails(&[&["inspect", foreign_key.as_str()][..], &trust[..]].concat());
    assert!(
        foreign
            .starts_with("error: license key rejected: the license key was signed by vendor key "),
        "{foreign}"
    );
    assert!(
        foreign.contains("which this server does not trust"),
        "{foreign}"
    );

    let expired = fails(&[
        "inspect",
        &key,
        "--vendor-pub",
        &vendor.public,
        "--today",
        "2027-07-01",
    ]);
    assert_eq!(
        expired,
        "error: license key rejected: the license key expired on 2027-06-30: ask the vendor for a renewed key"
    );

    let garbage = fails(&[&["inspect", "not-a-key!"][..], &trust[..]].concat());
    assert_eq!(
        garbage,
        "error: license key rejected: not a valid license key: '!' cannot appear in a license key (at character 10); copy the key again from the license document"
    );

    let messages = [&typo, &foreign, &expired, &garbage];
    for (i, a) in messages.iter().enumerate() {
        for b in &messages[i + 1..] {
            assert_ne!(a, b);
        }
    }
}

#[test]
fn without_vendor_pub_only_the_builtin_key_is_trusted() {
    let vendor = keygen();
    let key = issue(&vendor, &["--role", "03", "--serial", "1"]);
    let message = fails(&["inspect", &key]);
    assert!(
        message.contains("which this server does not trust"),
        "{message}"
    );
    assert!(
        !message.contains(&key),
        "messages never quote the key: {message}"
    );
}

#[test]
fn issue_refuses_out_of_range_values_with_clear_messages() {
    let vendor = keygen();
    let key = vendor.key.as_str();
    let output = tool(&[
        "issue",
        "--vendor-key",
        key,
        "--role",
        "03",
        "--serial",
        "10000000",
    ]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("the serial must be a whole number from 0 to 9999999"),
        "{}",
        stderr(&output)
    );
    let output = tool(&[
        "issue",
        "--vendor-key",
        key,
        "--role",
        "03",
        "--serial",
        "1",
        "--seats",
        "0",
    ]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("seats must be a whole number from 1 to 65535"));
    let output = tool(&[
        "issue",
        "--vendor-key",
        key,
        "--role",
        "05",
        "--serial",
        "1",
    ]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("unknown role code 05"));
    let output = tool(&[
        "issue",
        "--vendor-key",
        key,
        "--role",
        "03",
        "--serial",
        "1",
        "--expires",
        "2025-02-30",
    ]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("expected a date as YYYY-MM-DD"));
    let message = fails(&[
        "issue",
        "--vendor-key",
        key,
        "--role",
        "03",
        "--serial",
        "1",
        "--expires",
        "2000-01-01",
    ]);
    assert_eq!(
        message,
        "error: cannot issue a license key: expiry date 2000-01-01 is outside the range a key can carry (2000-01-02 to 2179-06-06)"
    );
}

#[test]
fn a_missing_or_wrong_vendor_key_file_is_explained() {
    let vendor = keygen();
    let message = fails(&[
        "issue",
        "--vendor-key",
        "/nonexistent/vendor.key",
        "--role",
        "03",
        "--serial",
        "1",
    ]);
    assert!(
        message.starts_with("error: cannot read vendor private key /nonexistent/vendor.key; pass the vendor.key written by `license-tool keygen`: "),
        "{message}"
    );
    // The public key is not a private key.
    let message = fails(&[
        "issue",
        "--vendor-key",
        &vendor.public,
        "--role",
        "03",
        "--serial",
        "1",
    ]);
    assert!(
        message.contains("not an Ed25519 PKCS#8 private key"),
        "{message}"
    );
    let key = issue(&vendor, &["--role", "03", "--serial", "1"]);
    let message = fails(&["inspect", &key, "--vendor-pub", &vendor.key]);
    assert!(
        message.contains("invalid vendor key: a vendor public key is 32 bytes"),
        "{message}"
    );
}
