//! Errors that say what to do: admin commands run by a user who may not
//! reach the instance say so (and never write its store behind its back),
//! errors about files name the file and the fix, and `check-config` refuses
//! everything `serve` refuses. The permission cases run the command line as
//! a real unprivileged user, which this test makes (it runs as root, as the
//! README's test command does) and removes again; it fails, never skips,
//! when it cannot.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use e2e::support::LocalUser;
use e2e::{Site, bin};

/// Runs the gateway command line for `instance` of `site` as `user`.
fn gateway_as(user: &LocalUser, site: &Site, instance: &str, args: &[&str]) -> Output {
    user.command(bin("gateway"))
        .arg("--config")
        .arg(&site.config)
        .args(["--instance", instance])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("this test needs `runuser` (util-linux): {e}"))
}

/// Gives `path` (recursively) to `user`.
fn chown(user: &LocalUser, path: &Path) {
    let done = Command::new("chown")
        .arg("-R")
        .arg(format!("{0}:{0}", user.name))
        .arg(path)
        .status()
        .unwrap();
    assert!(done.success());
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A site the unprivileged user can reach the configuration file of.
fn open_site(instances: &[&str], extra: &str) -> Site {
    let site = Site::new(instances, extra);
    std::fs::set_permissions(site.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&site.config, std::fs::Permissions::from_mode(0o644)).unwrap();
    site
}

// Regression: a non-root user running `gateway status` on a running
// instance was told "not running", and `gateway maintenance on` tried to
// write the store directly and failed with "attempt to write a readonly
// database" four times over.
#[test]
fn a_user_who_may_not_reach_the_instance_is_told_so_and_writes_nothing() {
    let user = LocalUser::create("adm");
    let site = open_site(&["gw-a"], "");
    site.activate("gw-a", "03", 1, 2);
    let gw = site.start("gw-a");
    let socket = site.data_dir("gw-a").join("gw-a.admin.sock");
    let expected = format!(
        "permission denied on the admin socket {}: run as the service user or root",
        socket.display()
    );
    for args in [
        &["status"][..],
        &["maintenance", "on"],
        &["license", "show"],
        &["pipeline", "pause"],
        &["device", "list"],
        &["db", "check"],
    ] {
        let out = gateway_as(&user, &site, "gw-a", args);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert_ne!(out.status.code(), Some(3), "{args:?}: not 'not running'");
        let msg = stderr(&out);
        assert!(msg.contains(&expected), "{args:?}: {msg}");
        assert!(!msg.contains("readonly database"), "{args:?}: {msg}");
        assert!(!String::from_utf8_lossy(&out.stdout).contains("not running"));
        assert_eq!(msg.trim().lines().count(), 1, "{args:?}: one line: {msg}");
    }
    // Nothing changed behind the running server's back.
    let status: serde_json::Value =
        serde_json::from_str(&site.cli_ok("gw-a", &["status", "--json"])).unwrap();
    assert_eq!(status["maintenance"], false);
    assert_eq!(status["pipeline_paused"], false);
    assert_eq!(gw.health().0, 200);
}

#[test]
fn errors_about_files_name_the_file_and_the_fix() {
    let user = LocalUser::create("file");

    // A missing configuration file: said once, with the way out.
    let out = Command::new(bin("gateway"))
        .args(["--config", "/nonexistent/gateway.toml", "status"])
        .output()
        .unwrap();
    let msg = stderr(&out);
    assert!(!out.status.success());
    assert!(
        msg.contains("cannot read configuration file /nonexistent/gateway.toml"),
        "{msg}"
    );
    assert!(msg.contains("check the path given to --config"), "{msg}");
    assert_eq!(
        msg.matches("no such file").count() + msg.matches("No such file").count(),
        1,
        "the cause is said once: {msg}"
    );

    // A data_dir that is a file: serve, check-config and the admin commands.
    let site = Site::new(&["gw-a"], "");
    let data_dir = site.data_dir("gw-a");
    std::fs::write(&data_dir, b"not a directory").unwrap();
    for args in [&["serve"][..], &["check-config"], &["status"]] {
        let out = site.cli("gw-a", args);
        assert!(!out.status.success(), "{args:?}");
        let msg = stderr(&out);
        assert!(
            msg.contains(&format!(
                "data_dir {} is a file, not a directory",
                data_dir.display()
            )),
            "{args:?}: {msg}"
        );
        assert!(
            msg.contains("set data_dir to a directory"),
            "{args:?}: {msg}"
        );
        assert!(!String::from_utf8_lossy(&out.stdout).contains("valid"));
    }

    // A data directory the user running serve may not write.
    let site = open_site(&["gw-a"], "");
    let data_dir = site.data_dir("gw-a");
    std::fs::create_dir(&data_dir).unwrap();
    std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    for args in [&["serve"][..], &["check-config"]] {
        let out = gateway_as(&user, &site, "gw-a", args);
        assert!(!out.status.success(), "{args:?}");
        let msg = stderr(&out);
        assert!(
            msg.contains(&data_dir.display().to_string()),
            "{args:?}: {msg}"
        );
        assert!(msg.contains("run as the service user"), "{args:?}: {msg}");
    }

    // A store the user may read but not write.
    let site = open_site(&["gw-a"], "");
    site.activate("gw-a", "03", 1, 2);
    let data_dir = site.data_dir("gw-a");
    chown(&user, &data_dir);
    let store = data_dir.join("gw-a.sqlite");
    for f in ["gw-a.sqlite-wal", "gw-a.sqlite-shm"] {
        let _ = std::fs::remove_file(data_dir.join(f));
    }
    assert!(
        Command::new("chown")
            .arg("root:root")
            .arg(&store)
            .status()
            .unwrap()
            .success()
    );
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = gateway_as(&user, &site, "gw-a", &["license", "show"]);
    assert!(!out.status.success());
    let msg = stderr(&out);
    assert!(
        msg.contains(&format!("cannot open the store {}", store.display())),
        "{msg}"
    );
    assert!(msg.contains("run as the service user"), "{msg}");
    assert!(msg.matches("readonly").count() <= 1, "said once: {msg}");
}

/// Writes `[instances.NAME]` settings into the site's file.
fn configure(site: &Site, instance: &str, settings: &str) {
    let header = format!("[instances.{instance}]\n");
    let text = std::fs::read_to_string(&site.config)
        .unwrap()
        .replace(&header, &format!("{header}{settings}\n"));
    std::fs::write(&site.config, text).unwrap();
}

/// `check-config` refuses, with the same reason, what `serve` refuses.
fn both_refuse(site: &Site, instance: &str, expected: &str) {
    for args in [&["check-config"][..], &["serve"]] {
        let out = site.cli(instance, args);
        assert!(!out.status.success(), "{args:?} accepted it");
        let msg = stderr(&out);
        assert!(msg.contains(expected), "{args:?}: {msg}");
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("is valid"),
            "{args:?}"
        );
    }
}

// Regression: check-config said "valid" for configurations serve refused
// (unreadable or mismatched TLS files, ports it cannot listen on).
#[test]
fn check_config_refuses_what_serve_refuses() {
    let site = Site::new(&["gw-a", "gw-b", "gw-c", "gw-d", "gw-e", "gw-f"], "");
    let out = site.cli_ok("gw-a", &["check-config"]);
    assert!(out.contains("is valid for instance gw-a"), "{out}");
    assert!(out.contains("will generate a self-signed one"), "{out}");

    // Two self-signed pairs, made by serve itself.
    for name in ["gw-a", "gw-b"] {
        let mut gw = site.start(name);
        gw.stop();
    }
    let cert_a = site.data_dir("gw-a").join("tls/gw-a.cert.pem");
    let key_a = site.data_dir("gw-a").join("tls/gw-a.key.pem");
    let key_b = site.data_dir("gw-b").join("tls/gw-b.key.pem");

    configure(
        &site,
        "gw-c",
        &format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"",
            cert_a.display(),
            key_b.display()
        ),
    );
    both_refuse(&site, "gw-c", "do not form a usable pair");

    configure(
        &site,
        "gw-d",
        &format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"",
            site.dir.path().join("missing.pem").display(),
            key_a.display()
        ),
    );
    both_refuse(&site, "gw-d", "cannot read certificate");

    // A port another program listens on.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    configure(&site, "gw-e", &format!("listen = \"127.0.0.1:{port}\""));
    let out = site.cli("gw-e", &["check-config"]);
    assert!(!out.status.success());
    let msg = stderr(&out);
    assert!(
        msg.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{msg}"
    );
    assert!(msg.contains("another program listens there"), "{msg}");
    let serve = site.cli("gw-e", &["serve"]);
    assert!(!serve.status.success(), "serve refuses the same port");

    // The pair port too: serve binds it, so check-config tests it.
    configure(
        &site,
        "gw-f",
        &format!("pair = {{ listen = \"127.0.0.1:{port}\", peer = \"127.0.0.1:9\" }}"),
    );
    let out = site.cli("gw-f", &["check-config"]);
    assert!(!out.status.success());
    let msg = stderr(&out);
    assert!(
        msg.contains(&format!("pair.listen: cannot listen on 127.0.0.1:{port}")),
        "{msg}"
    );
    let serve = site.cli("gw-f", &["serve"]);
    assert!(!serve.status.success(), "serve refuses the same pair port");
    assert!(
        stderr(&serve).contains("cannot listen on the pair port"),
        "{}",
        stderr(&serve)
    );
    drop(taken);

    // A valid file with matching files is valid, and serve starts on it.
    configure(
        &site,
        "gw-b",
        &format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"",
            cert_a.display(),
            key_a.display()
        ),
    );
    let out = site.cli_ok("gw-b", &["check-config"]);
    assert!(out.contains("is valid for instance gw-b"), "{out}");
    let gw = site.start("gw-b");
    assert_eq!(gw.health().1["instance"], "gw-b");
}
