//! The admin command line (R14) against real instances: status, licensing
//! and promotion, services, devices, dead-letter retries, database checks,
//! unit files, and configuration errors — on a running instance through its
//! admin socket and on a stopped one through its store.

use std::time::Duration;

use e2e::http::{Device, png};
use e2e::{Site, Vendor, bin};
use serde_json::Value;
use uuid::Uuid;

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn status_of_a_stopped_and_a_running_instance() {
    let site = Site::new(&["gw-a"], "");
    let out = site.cli("gw-a", &["status"]);
    assert_eq!(out.status.code(), Some(3), "not running is exit code 3");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("instance gw-a: not running"), "{text}");
    assert!(text.contains("role:        unlicensed"), "{text}");

    site.activate("gw-a", "03", 31, 4);
    let gw = site.start("gw-a");
    let status: Value = serde_json::from_str(&site.cli_ok("gw-a", &["status", "--json"])).unwrap();
    assert_eq!(status["instance"], "gw-a");
    assert_eq!(status["role"]["role"], "primary");
    assert_eq!(status["role"]["license"]["serial"], 31);
    assert_eq!(status["role"]["license"]["seats"], 4);
    assert_eq!(status["data"]["up"], true);
    assert_eq!(status["web"]["up"], true);
    assert_eq!(status["queue_depth"], 0);
    assert_eq!(status["pid"], gw.pid());
    assert!(
        !status.to_string().contains("SCANGWP"),
        "the license key itself is never shown"
    );
    let text = site.cli_ok("gw-a", &["status"]);
    for line in [
        "role:        primary (epoch 1)",
        "license:     serial 0000031, role 03, 4 device seats, no expiry",
        "data:        up",
        "accepting:   yes",
    ] {
        assert!(text.contains(line), "missing `{line}` in:\n{text}");
    }
}

#[test]
fn promotion_deactivate_04_activate_03_on_a_running_secondary() {
    let site = Site::new(&["gw-b"], "");
    site.activate("gw-b", "04", 45, 5);
    let gw = site.start("gw-b");
    assert_eq!(gw.health().1["role"], "secondary");
    let refused = site.cli("gw-b", &["device", "add", "mfd-1"]);
    assert!(!refused.status.success());
    let msg = stderr(&refused);
    assert!(
        msg.contains("the secondary cannot change configuration"),
        "{msg}"
    );
    assert!(msg.contains("gateway license deactivate"), "{msg}");

    // Activating over an active key is refused: deactivate first.
    let twice = site.cli(
        "gw-b",
        &["license", "activate", &site.vendor.key("03", 85, 5)],
    );
    assert!(!twice.status.success());
    assert!(
        stderr(&twice).contains("deactivate that key first"),
        "{}",
        stderr(&twice)
    );

    let out = site.cli_ok("gw-b", &["license", "deactivate"]);
    assert!(out.contains("released license serial 0000045"), "{out}");
    assert_eq!(gw.health().1["reason"], "not-licensed");
    site.activate("gw-b", "03", 85, 5);
    let (status, health) = gw.health();
    assert_eq!((status, health["role"].as_str()), (200, Some("primary")));
    assert!(health["epoch"].as_u64().unwrap() >= 1);
    // Now configuration writes are allowed.
    let token = site.add_device("gw-b", "mfd-1");
    let dev = Device::new(&gw.plain(), &token);
    let session = dev.login("alice");
    let ack = dev.submit(&session, Uuid::new_v4(), "scan-to-folder", &[png(5_000, 1)]);
    assert_eq!(ack.status, 201);
    assert_eq!(ack.json()["role"], "primary");
}

/// `license promote` swaps the 04 activation for an 03 one in one step:
/// `/health`, polled throughout, never says the server is unlicensed.
#[test]
fn one_step_promotion_never_answers_not_licensed() {
    let site = Site::new(&["gw-b"], "");
    site.activate("gw-b", "04", 45, 5);
    let gw = site.start("gw-b");
    let health_url = gw.plain();

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poller = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let probe = Device::new(&health_url, "none");
            let mut seen = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let r = probe.call("GET", "/health", &[], b"");
                let body = r.json();
                seen.push((r.status, body["role"].as_str().unwrap_or("").to_owned()));
            }
            seen
        })
    };

    // A key that is not an 03 key leaves the 04 activation in place.
    let dir = tempfile::tempdir().unwrap();
    let wrong = dir.path().join("wrong.key");
    std::fs::write(&wrong, site.vendor.key("04", 46, 5)).unwrap();
    let out = site.cli(
        "gw-b",
        &["license", "promote", "--key-file", wrong.to_str().unwrap()],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("needs an 03 key"), "{}", stderr(&out));
    assert_eq!(gw.health().1["role"], "secondary");

    // The 03 key comes from standard input, so it is never in the process list.
    let mut child = std::process::Command::new(bin("gateway"))
        .args([
            "--config",
            site.config.to_str().unwrap(),
            "--instance",
            "gw-b",
        ])
        .args(["license", "promote", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(site.vendor.key("03", 85, 5).as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("released license serial 0000045"), "{text}");
    assert!(text.contains("role:        primary"), "{text}");

    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let seen = poller.join().unwrap();
    assert!(seen.len() >= 3, "the poller saw too little: {seen:?}");
    assert!(
        seen.iter().all(|(status, _)| *status == 200),
        "a probe during the promotion was refused: {seen:?}"
    );
    assert_eq!(seen.first().unwrap().1, "secondary");
    assert!(
        seen.iter()
            .all(|(_, role)| role == "secondary" || role == "primary"),
        "{seen:?}"
    );
    let (status, health) = gw.health();
    assert_eq!((status, health["role"].as_str()), (200, Some("primary")));
    site.add_device("gw-b", "mfd-1");
}

#[test]
fn bad_license_keys_get_a_clear_one_line_reason() {
    let site = Site::new(&["gw-a"], "");
    let stranger = Vendor::new().key("03", 1, 1);
    let cases = [
        (stranger.as_str(), "does not trust"),
        ("SCANGWP03-garbage", "at character 11"),
    ];
    for (key, expected) in cases {
        let out = site.cli("gw-a", &["license", "activate", key]);
        assert!(!out.status.success());
        let msg = stderr(&out);
        assert!(msg.to_lowercase().contains(expected), "for {key}: {msg}");
        assert_eq!(msg.trim().lines().count(), 1, "one line: {msg}");
    }
    let mut typo = site.vendor.key("03", 1, 1).into_bytes();
    let i = typo.len() - 10;
    typo[i] = if typo[i] == b'A' { b'B' } else { b'A' };
    let out = site.cli(
        "gw-a",
        &["license", "activate", std::str::from_utf8(&typo).unwrap()],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("is mistyped"), "{}", stderr(&out));
}

#[test]
fn dead_lettered_job_is_listed_and_retried_by_an_admin() {
    // The folder root does not exist: delivery fails; one attempt only, so
    // the job is dead-lettered at once.
    let extra = r#"
[workflows.to-missing-share]
steps = [ { plugin = "assemble" }, { plugin = "folder", root = "/nonexistent-share-for-test" } ]
"#;
    let site = Site::new(&["gw-a"], extra);
    let text = std::fs::read_to_string(&site.config)
        .unwrap()
        .replace("[instances.gw-a]\n", "[instances.gw-a]\nmax_attempts = 1\n");
    std::fs::write(&site.config, text).unwrap();
    site.activate("gw-a", "03", 1, 2);
    let token = site.add_device("gw-a", "mfd-1");
    let gw = site.start("gw-a");
    let dev = Device::new(&gw.plain(), &token);
    let session = dev.login("alice");
    let job = Uuid::new_v4();
    assert_eq!(
        dev.submit(&session, job, "to-missing-share", &[png(5_000, 1)])
            .status,
        201
    );
    let failed = dev.wait_for_state(job, "failed", Duration::from_secs(30));
    let reason = failed["reason"].as_str().unwrap();
    assert!(reason.starts_with("step 2 (folder) failed:"), "{reason}");
    // Devices are never shown a server path; the name stays recognisable.
    assert!(
        reason.contains("the root nonexistent-share-for-test is not available")
            && !reason.contains("/nonexistent-share-for-test"),
        "the reason names the destination, without its path: {reason}"
    );

    let list: Value = serde_json::from_str(&site.cli_ok("gw-a", &["job", "list"])).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["id"], job.to_string());
    // The admin sees the whole reason, path included.
    assert!(
        list[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("/nonexistent-share-for-test")),
        "{list}"
    );
    let status = site.cli_ok("gw-a", &["status"]);
    assert!(status.contains("1 failed"), "{status}");

    // Retrying a job that is not failed is refused; this one goes back.
    let out = site.cli("gw-a", &["job", "retry", &Uuid::new_v4().to_string()]);
    assert!(!out.status.success());
    let retried: Value =
        serde_json::from_str(&site.cli_ok("gw-a", &["job", "retry", &job.to_string()])).unwrap();
    assert_eq!(retried["state"], "received");
    // It fails again the same way (the share is still missing), proving it ran again.
    let again = dev.wait_for_state(job, "failed", Duration::from_secs(30));
    let attempts = again["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["plugin"] == "folder")
        .count();
    assert_eq!(attempts, 1, "the retry got a fresh budget: {again}");
}

#[test]
fn db_check_finds_a_damaged_spool_and_db_schema_matches_its_golden_file() {
    let site = Site::new(&["gw-a"], "");
    site.activate("gw-a", "03", 1, 2);
    let token = site.add_device("gw-a", "mfd-1");
    let mut gw = site.start("gw-a");
    site.cli_ok("gw-a", &["pipeline", "pause"]);
    let dev = Device::new(&gw.plain(), &token);
    let session = dev.login("alice");
    let job = Uuid::new_v4();
    assert_eq!(
        dev.submit(&session, job, "scan-to-folder", &[png(20_000, 1)])
            .status,
        201
    );
    let out = site.cli_ok("gw-a", &["db", "check"]);
    assert!(out.contains("ok: no problems found"), "{out}");
    assert!(out.contains("1 unfinished jobs checked"), "{out}");
    gw.stop();

    // Offline: truncate the queued job's page behind the gateway's back.
    let page = site
        .data_dir("gw-a")
        .join(format!("gw-a-spool/jobs/{job}/page-0001.png"));
    std::fs::write(&page, b"short").unwrap();
    let out = site.cli("gw-a", &["db", "check"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("has 5 bytes, 20000 were recorded"), "{text}");

    let schema = site.cli_ok("gw-a", &["db", "schema"]);
    let golden = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("golden/db-schema.txt");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &schema).unwrap();
    }
    assert_eq!(
        schema,
        std::fs::read_to_string(&golden).unwrap(),
        "schema changed: review, then UPDATE_GOLDEN=1"
    );
}

#[test]
fn systemd_unit_install_and_uninstall() {
    let site = Site::new(&["gw-a"], "");
    let units = site.dir.path().join("units");
    let out = site.cli_ok(
        "gw-a",
        &[
            "service",
            "install",
            "--unit-dir",
            units.to_str().unwrap(),
            "--user",
            "scan",
        ],
    );
    assert!(
        out.contains("systemctl daemon-reload && systemctl enable --now scan-gateway-gw-a.service"),
        "{out}"
    );
    let unit = std::fs::read_to_string(units.join("scan-gateway-gw-a.service")).unwrap();
    let exec = format!(
        "ExecStart={} serve --config {} --instance gw-a",
        bin("gateway").display(),
        std::fs::canonicalize(&site.config).unwrap().display()
    );
    assert!(unit.contains(&exec), "{unit}");
    assert!(unit.contains("User=scan"));
    site.cli_ok(
        "gw-a",
        &[
            "service",
            "uninstall",
            "--unit-dir",
            units.to_str().unwrap(),
        ],
    );
    assert!(!units.join("scan-gateway-gw-a.service").exists());
    if !std::path::Path::new("/run/systemd/system").exists() {
        let out = site.cli("gw-a", &["service", "install"]);
        assert!(!out.status.success());
        assert!(
            stderr(&out).contains("systemd is not running on this machine"),
            "{}",
            stderr(&out)
        );
    }
}

#[test]
fn bad_configuration_is_refused_with_its_key_before_anything_starts() {
    let site = Site::new(
        &["gw-a"],
        "\n[workflows.broken]\nsteps = [ { plugin = \"ocr\" }, { plugin = \"fax\" } ]\n",
    );
    let check = site.cli("gw-a", &["check-config"]);
    assert!(!check.status.success());
    let msg = stderr(&check);
    assert!(msg.contains("workflow `broken`, step 2"), "{msg}");
    assert!(msg.contains("fax"), "{msg}");
    let serve = site.cli("gw-a", &["serve"]);
    assert!(
        !serve.status.success(),
        "serve refuses the same configuration"
    );
    assert!(
        stderr(&serve).contains("workflow `broken`, step 2"),
        "{}",
        stderr(&serve)
    );

    let site = Site::new(&["gw-a"], "\n[limits]\nmax_pages = 0\n");
    let msg = stderr(&site.cli("gw-a", &["status"]));
    assert!(
        msg.contains("limits.max_pages: 0 is out of range; use 1..=100000"),
        "{msg}"
    );
}

#[test]
fn rate_reports_jobs_and_megabytes_per_second() {
    let site = Site::new(&["gw-a"], "");
    let out: Value = serde_json::from_str(&site.cli_ok(
        "gw-a",
        &["rate", "--jobs", "5", "--size", "100KiB", "--json"],
    ))
    .unwrap();
    assert_eq!(out["jobs"], 5);
    assert!(out["jobs_per_second"].as_f64().unwrap() > 0.0);
    assert!(out["megabytes_per_second"].as_f64().unwrap() > 0.0);
    let bad = site.cli("gw-a", &["rate", "--size", "lots"]);
    assert!(
        stderr(&bad).contains("--size: `lots` is not a size"),
        "{}",
        stderr(&bad)
    );
}

#[test]
fn two_instances_share_one_file_and_keep_their_files_apart() {
    let site = Site::new(&["gw-a", "gw-b"], "");
    let out = std::process::Command::new(bin("gateway"))
        .arg("--config")
        .arg(&site.config)
        .arg("status")
        .output()
        .unwrap();
    assert!(
        stderr(&out).contains("choose one with --instance"),
        "{}",
        stderr(&out)
    );
    site.activate("gw-a", "03", 1, 2);
    site.activate("gw-b", "04", 2, 2);
    let a = site.start("gw-a");
    let b = site.start("gw-b");
    assert_eq!(a.health().1["instance"], "gw-a");
    assert_eq!(b.health().1["instance"], "gw-b");
    for (name, other) in [("gw-a", "gw-b"), ("gw-b", "gw-a")] {
        let dir = site.data_dir(name);
        for file in [
            format!("{name}.sqlite"),
            format!("{name}-spool"),
            format!("logs/{name}.log"),
            format!("{name}.admin.sock"),
        ] {
            assert!(dir.join(&file).exists(), "{name} has {file}");
        }
        assert!(!dir.join(format!("{other}.sqlite")).exists());
        let log = std::fs::read_to_string(dir.join(format!("logs/{name}.log"))).unwrap();
        assert!(
            log.lines().all(|l| l.contains(&format!(" {name} "))),
            "every log line carries the instance name"
        );
    }
}

#[test]
fn json_logs_are_one_object_per_line_with_the_instance_name() {
    let site = Site::new(&["gw-j"], "");
    let text = std::fs::read_to_string(&site.config).unwrap().replace(
        "[instances.gw-j]\n",
        "[instances.gw-j]\nlog_format = \"json\"\n",
    );
    std::fs::write(&site.config, text).unwrap();
    let gw = site.start("gw-j");
    assert_eq!(gw.health().0, 503, "unlicensed");
    assert!(gw.wait_for_log("web service listening", Duration::from_secs(5)));
    let log = std::fs::read_to_string(site.data_dir("gw-j").join("logs/gw-j.log")).unwrap();
    let mut lines = 0;
    for line in log.lines() {
        let v: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert_eq!(v["instance"], "gw-j");
        assert!(
            v["ts"].is_string() && v["level"].is_string() && v["message"].is_string(),
            "{line}"
        );
        lines += 1;
    }
    assert!(lines >= 3, "{log}");
}

/// `gateway config export` prints the shared configuration of a running
/// instance, and of a stopped one; `--out` writes a private file.
#[test]
fn config_export_prints_the_shared_configuration_running_or_not() {
    let site = Site::new(&["gw-a"], "");
    site.activate("gw-a", "03", 7, 2);
    let mut gw = site.start("gw-a");
    site.add_device("gw-a", "mfd-1");
    let text = site.cli_ok("gw-a", &["config", "export"]);
    assert!(
        text.starts_with("# The shared configuration, version"),
        "{text}"
    );
    let parsed: toml::Table = toml::from_str(&text).unwrap();
    assert!(
        parsed["workflows"].get("scan-to-folder").is_some(),
        "{text}"
    );
    assert!(parsed["users"].get("alice").is_some(), "{text}");
    assert!(parsed["devices"].get("mfd-1").is_some(), "{text}");
    assert!(
        parsed["session_key"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
    gw.stop();

    let out = site.dir.path().join("export.toml");
    let said = site.cli_ok(
        "gw-a",
        &["config", "export", "--out", out.to_str().unwrap()],
    );
    assert!(said.contains("configuration written to"), "{said}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        text,
        "the same document either way"
    );
}
