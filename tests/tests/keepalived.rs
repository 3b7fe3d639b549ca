//! The shipped `deploy/keepalived.conf` passes `keepalived --config-test`,
//! and that check is a real one: broken copies of the same file fail it.
//! Its health check reads the liveness URL `deploy/haproxy.cfg` serves.

use std::path::{Path, PathBuf};
use std::process::Command;

use e2e::support::require;

const INTERFACE_LINE: &str = "$INTERFACE=eth0";

fn shipped(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(file)
}

/// keepalived checks that the interface exists; the file names `eth0`, the
/// machine may call its interface otherwise. The one definition line is
/// pointed at an interface this machine has (the default route's, else any
/// but loopback); nothing else changes.
fn local_interface() -> String {
    let routes = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    let default = routes.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 1 && f[1] == "00000000").then(|| f[0].to_owned())
    });
    default
        .or_else(|| {
            let mut names: Vec<String> = std::fs::read_dir("/sys/class/net")
                .ok()?
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n != "lo")
                .collect();
            names.sort();
            names.into_iter().next()
        })
        .expect("keepalived --config-test needs a network interface other than lo")
}

fn shipped_for_this_machine() -> String {
    let text = std::fs::read_to_string(shipped("keepalived.conf")).unwrap();
    assert_eq!(
        text.lines().filter(|l| *l == INTERFACE_LINE).count(),
        1,
        "keepalived.conf defines the interface in one line `{INTERFACE_LINE}`"
    );
    text.replace(INTERFACE_LINE, &format!("$INTERFACE={}", local_interface()))
}

/// Runs `keepalived --config-test` on `text`; returns whether it passed
/// without a word, and what it said.
fn config_test(dir: &Path, name: &str, text: &str) -> (bool, String) {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    // keepalived calls a missing file valid: make sure it is there.
    assert!(path.is_file());
    let out = Command::new("keepalived")
        .arg("--config-test")
        .arg("-f")
        .arg(&path)
        .output()
        .expect("run keepalived");
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success() && said.trim().is_empty(), said)
}

#[test]
fn the_keepalived_example_passes_its_config_test() {
    require(
        "keepalived",
        &["--version"],
        "the Debian package `keepalived` (cargo xtask test does)",
    );
    let dir = tempfile::tempdir().unwrap();
    let good = shipped_for_this_machine();
    let (ok, said) = config_test(dir.path(), "keepalived.conf", &good);
    assert!(ok, "keepalived rejects deploy/keepalived.conf:\n{said}");

    // The same file, broken in one place each: every copy must fail, or
    // the check above proves nothing.
    let broken: [(&str, String); 5] = [
        ("priority", good.replace("priority 100", "priority 300")),
        (
            "keyword",
            good.replace("advert_int 1", "advertisement_interval 1"),
        ),
        (
            "brace",
            good[..good.rfind('}').expect("a closing brace")].to_owned(),
        ),
        (
            "interface",
            good.replace(
                &format!("$INTERFACE={}", local_interface()),
                "$INTERFACE=no-such-if0",
            ),
        ),
        (
            "script",
            good.replace("/usr/bin/curl", "/usr/bin/no-such-checker"),
        ),
    ];
    for (what, text) in broken {
        assert_ne!(text, good, "the {what} change applies to the file");
        let (ok, said) = config_test(dir.path(), &format!("broken-{what}.conf"), &text);
        assert!(
            !ok,
            "a broken {what} passed keepalived --config-test: {said}"
        );
    }
}

#[test]
fn the_keepalived_check_reads_the_url_haproxy_serves() {
    let haproxy = std::fs::read_to_string(shipped("haproxy.cfg")).unwrap();
    let keepalived = std::fs::read_to_string(shipped("keepalived.conf")).unwrap();
    let monitor = haproxy
        .split("\"${MONITOR-")
        .nth(1)
        .and_then(|rest| rest.split('}').next())
        .expect("haproxy.cfg binds \"${MONITOR-default}\"");
    let uri = haproxy
        .lines()
        .find_map(|l| l.trim().strip_prefix("monitor-uri "))
        .expect("haproxy.cfg has a monitor-uri");
    let url = format!("http://{monitor}{}", uri.trim());
    assert!(
        keepalived.contains(&format!("-o /dev/null {url}\"")),
        "keepalived.conf checks {url}"
    );
}
