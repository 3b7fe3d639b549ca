//! Configuration replication between two real `gateway` processes on
//! loopback: a change on the primary reaches the secondary at once; a
//! device registered and a user configured on the primary submit to the
//! secondary with the same token and session; the secondary refuses
//! configuration writes with the promotion hint; `config export` and
//! `config apply` round-trip without losing secrets; different time zones
//! and a shifted clock block sync on both sides with the reason, and fixing
//! the zone resumes it.

use std::time::Duration;

use e2e::http::{Device, png};
use e2e::pair::{pair, pair_site, pair_status, pair_up, wait_in_sync};
use e2e::{Site, eventually, request};
use serde_json::{Value, json};
use uuid::Uuid;

fn device_names(site: &Site, instance: &str) -> Vec<String> {
    let list: Value = serde_json::from_str(&site.cli_ok(instance, &["device", "list"])).unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap().to_owned())
        .collect()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout)
}

#[test]
fn a_device_of_the_primary_submits_to_the_secondary_with_the_same_token_and_session() {
    let site = pair_site(None, "");
    let (a, b) = pair_up(&site);
    let start = wait_in_sync(&site, "gw-a", "gw-b", Duration::from_secs(10));

    // A device registered on the running primary is on the secondary within
    // the push.
    let token = site.add_device("gw-a", "mfd-1");
    let seen = eventually(Duration::from_secs(5), || {
        device_names(&site, "gw-b")
            .contains(&"mfd-1".to_owned())
            .then_some(())
    });
    assert!(seen.is_some(), "gw-b never got mfd-1:\n{}", b.log_text());
    let version = wait_in_sync(&site, "gw-a", "gw-b", Duration::from_secs(5));
    assert_eq!(version, start + 1);

    // Log in on the primary; the same session works on the secondary.
    let on_a = Device::new(&a.plain(), &token);
    let session = on_a.login("alice");
    let on_b = Device::new(&b.plain(), &token);
    let job = Uuid::new_v4();
    let ack = on_b.submit(&session, job, "scan-to-folder", &[png(20_000, 1)]);
    assert_eq!(
        ack.status,
        201,
        "the secondary refused the primary's device or session: {}\n{}",
        String::from_utf8_lossy(&ack.body),
        b.log_text()
    );
    on_b.wait_for_state(job, "done", Duration::from_secs(30));

    // A user created on the primary (by `config apply`; the secondary's own
    // file does not have it) logs in on the secondary.
    let file = site.dir.path().join("with-carol.toml");
    site.cli_ok(
        "gw-a",
        &["config", "export", "--out", file.to_str().unwrap()],
    );
    let exported = std::fs::read_to_string(&file).unwrap();
    let parsed: toml::Table = toml::from_str(&exported).unwrap();
    let hash = parsed["users"]["alice"]["password_hash"].as_str().unwrap();
    std::fs::write(
        &file,
        format!("{exported}\n[users.carol]\npassword_hash = \"{hash}\"\n"),
    )
    .unwrap();
    site.cli_ok("gw-a", &["config", "apply", file.to_str().unwrap()]);
    wait_in_sync(&site, "gw-a", "gw-b", Duration::from_secs(5));
    let carol = on_b.login("carol");
    let ack = on_b.submit(&carol, Uuid::new_v4(), "scan-to-folder", &[png(5_000, 7)]);
    assert_eq!(ack.status, 201, "{}", String::from_utf8_lossy(&ack.body));

    // Revoking on the primary reaches the secondary too.
    site.cli_ok("gw-a", &["device", "revoke", "mfd-1"]);
    wait_in_sync(&site, "gw-a", "gw-b", Duration::from_secs(5));
    let refused = on_b.submit(&session, Uuid::new_v4(), "scan-to-folder", &[png(1_000, 2)]);
    assert_eq!(
        refused.status,
        403,
        "{}",
        String::from_utf8_lossy(&refused.body)
    );

    // The secondary refuses configuration writes, with the way out.
    let out = site.cli("gw-b", &["device", "add", "mfd-2"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("gateway license promote"),
        "{}",
        stderr(&out)
    );
    let register = request(
        &b.plain(),
        "POST",
        "/api/v1/devices/register",
        &[("Content-Type", "application/json")],
        json!({"name": "mfd-3"}).to_string().as_bytes(),
    );
    assert_eq!(register.status, 409);
    let body = register.json();
    assert_eq!(body["error"]["code"], "read_only_secondary");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("registration needs the primary"),
        "{body}"
    );

    // Both sides show the replication state.
    for (me, peer) in [("gw-a", "gw-b"), ("gw-b", "gw-a")] {
        let s = pair_status(&site, me);
        assert_eq!(s["sync"], "ok", "{me}: {s}");
        assert_eq!(s["lag_ms"], 0, "{me}: {s}");
        assert!(s["last_sync_at"].is_string(), "{me}: {s}");
        assert_eq!(s["peer"], peer, "{me}: {s}");
        assert!(s["epoch"].as_u64().unwrap() >= 1, "{me}: {s}");
        assert_eq!(s["epoch"], s["peer_epoch"], "{me}: {s}");
    }
    let text = site.cli_ok("gw-b", &["status"]);
    assert!(text.contains("sync:      ok"), "{text}");
}

#[test]
fn export_and_apply_round_trip_without_losing_secrets_and_the_change_propagates() {
    // A webhook workflow with a secret: the export writes its digest.
    let extra = "\n[workflows.to-hook]\nsteps = [ { plugin = \"assemble\" }, { plugin = \"webhook\", url = \"https://hooks.example.net/scan\", secret = \"s3cret-s3cret-s3cret-s3cret-s3cret\" } ]\n";
    let site = pair_site(None, extra);
    let (_a, _b) = pair_up(&site);
    let before = wait_in_sync(&site, "gw-a", "gw-b", Duration::from_secs(10));
    let file = site.dir.path().join("shared.toml");
    site.cli_ok(
        "gw-a",
        &["config", "export", "--out", file.to_str().unwrap()],
    );
    let exported = std::fs::read_to_string(&file).unwrap();
    assert!(!exported.contains("s3cret"), "{exported}");
    assert!(exported.contains("sha256:"), "{exported}");

    // Applied back unchanged: nothing to do, nothing lost.
    let same = site.cli_ok("gw-a", &["config", "apply", file.to_str().unwrap()]);
    assert!(same.contains("no changes"), "{same}");

    // A change: the dry run shows it and changes nothing.
    let changed = exported.replace("max_pages = 500", "max_pages = 7");
    assert_ne!(changed, exported, "the export has limits.max_pages = 500");
    std::fs::write(&file, &changed).unwrap();
    let dry = site.cli_ok(
        "gw-a",
        &["config", "apply", "--dry-run", file.to_str().unwrap()],
    );
    assert!(dry.contains("max_pages"), "{dry}");
    assert!(dry.contains("dry run"), "{dry}");
    assert_eq!(
        pair_status(&site, "gw-a")["config_version"].as_u64(),
        Some(before)
    );
    let applied = site.cli_ok("gw-a", &["config", "apply", file.to_str().unwrap()]);
    assert!(
        applied.contains(&format!("applied as version {}", before + 1)),
        "{applied}"
    );
    wait_in_sync(&site, "gw-a", "gw-b", Duration::from_secs(5));

    // The secondary holds the change and the untouched secret (its export
    // shows the same digest), and refuses to apply with the promotion hint.
    let from_b = site.cli_ok("gw-b", &["config", "export"]);
    assert!(from_b.contains("max_pages = 7"), "{from_b}");
    let digest_line = |t: &str| {
        t.lines()
            .find(|l| l.contains("secret = \"sha256:"))
            .map(str::to_owned)
    };
    assert_eq!(digest_line(&from_b), digest_line(&exported), "{from_b}");
    let out = site.cli("gw-b", &["config", "apply", file.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("gateway license promote"),
        "{}",
        stderr(&out)
    );

    // A bad file is refused with the key at fault, and nothing changes.
    std::fs::write(&file, changed.replace("max_pages = 7", "max_pages = 0")).unwrap();
    let out = site.cli("gw-a", &["config", "apply", file.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("max_pages"), "{}", stderr(&out));
    assert_eq!(
        pair_status(&site, "gw-a")["config_version"].as_u64(),
        Some(before + 1)
    );
}

/// Waits until `instance` reports sync `blocked` with a reason containing
/// `needle`; returns the reason.
fn wait_blocked(site: &Site, instance: &str, needle: &str) -> String {
    let mut last = Value::Null;
    let reason = eventually(Duration::from_secs(10), || {
        let s = pair_status(site, instance);
        let reason = s["reason"].as_str().map(str::to_owned);
        last = s.clone();
        (s["sync"] == "blocked" && reason.as_deref().is_some_and(|r| r.contains(needle)))
            .then(|| reason.unwrap())
    });
    reason.unwrap_or_else(|| panic!("{instance} never blocked with `{needle}`: {last}"))
}

#[test]
fn different_time_zones_block_sync_on_both_servers_and_fixing_the_zone_resumes_it() {
    let site = pair_site(None, "");
    let a = site.start_with("gw-a", &[("SCANGW_TIME_ZONE", "Europe/Berlin")]);
    let mut b = site.start_with("gw-b", &[("SCANGW_TIME_ZONE", "America/New_York")]);
    pair(&site, &a, &b);
    let expected = "time zone differs: primary gw-a Europe/Berlin, secondary gw-b America/New_York; set both to the same zone";
    assert_eq!(wait_blocked(&site, "gw-a", "time zone differs"), expected);
    assert_eq!(wait_blocked(&site, "gw-b", "time zone differs"), expected);
    assert!(
        a.wait_for_log(expected, Duration::from_secs(5)),
        "the block is in the log:\n{}",
        a.log_text()
    );

    // Heartbeats go on; configuration does not travel.
    assert_eq!(a.health().1["pair"], "live");
    site.add_device("gw-a", "mfd-1");
    std::thread::sleep(Duration::from_millis(1_500));
    assert!(!device_names(&site, "gw-b").contains(&"mfd-1".to_owned()));
    assert_eq!(pair_status(&site, "gw-b")["sync"], "blocked");

    // Fixing the zone (a restart with the right one) resumes sync.
    b.stop();
    let _b = site.start_with("gw-b", &[("SCANGW_TIME_ZONE", "Europe/Berlin")]);
    wait_in_sync(&site, "gw-a", "gw-b", Duration::from_secs(15));
    assert!(device_names(&site, "gw-b").contains(&"mfd-1".to_owned()));
}

#[test]
fn a_shifted_clock_blocks_sync_with_the_skew_in_the_reason() {
    // libfaketime shifts gw-b's clock 30 s ahead (preloaded into the
    // gateway itself, so the process the test holds is the gateway).
    let lib = std::fs::read_dir("/usr/lib")
        .unwrap()
        .flatten()
        .map(|d| d.path().join("faketime/libfaketime.so.1"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("this test needs libfaketime (apt-get install faketime; `cargo xtask setup` installs it)")
        });
    let site = pair_site(None, "");
    let a = site.start("gw-a");
    let b = site.start_with(
        "gw-b",
        &[
            ("LD_PRELOAD", lib.to_str().unwrap()),
            ("FAKETIME", "+30s"),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ],
    );
    pair(&site, &a, &b);
    let reason = wait_blocked(&site, "gw-a", "clock skew");
    assert!(reason.contains("exceeds 1000 ms"), "{reason}");
    wait_blocked(&site, "gw-b", "clock skew");
    assert_eq!(a.health().1["pair"], "live", "heartbeats go on");
}

fn role(gw: &e2e::Instance) -> String {
    gw.health().1["role"].as_str().unwrap_or("").to_owned()
}

fn wait_role(gw: &e2e::Instance, want: &str) {
    let seen = eventually(Duration::from_secs(10), || (role(gw) == want).then_some(()));
    assert!(
        seen.is_some(),
        "{} never became {want} (it is {}):\n{}",
        gw.name,
        role(gw),
        gw.log_text()
    );
}

fn conflicts(site: &Site, instance: &str) -> Vec<Value> {
    let r: Value =
        serde_json::from_str(&site.cli_ok(instance, &["pair", "conflicts", "--json"])).unwrap();
    r["conflicts"].as_array().unwrap().clone()
}

/// The partition story end to end. The secondary is promoted while cut off
/// from a primary that keeps writing; when they meet, the older epoch is
/// fenced (also after a restart), keeps taking jobs (its partition-time
/// device included), and its partition-time device is in the conflict
/// report on both servers; the new primary re-applies it after review, and
/// the old primary rejoins as secondary with the new primary's
/// configuration.
#[test]
fn a_promotion_during_a_partition_fences_the_old_primary_and_keeps_its_changes_as_conflicts() {
    let (site, link) = e2e::pair::pair_site_behind_proxies("");
    let (a, b) = pair_up(&site);
    let shared_token = site.add_device("gw-a", "mfd-shared");
    wait_in_sync(&site, "gw-a", "gw-b", Duration::from_secs(10));
    let epoch_before = pair_status(&site, "gw-a")["epoch"].as_u64().unwrap();

    link.partition();
    e2e::pair::wait_pair(&b, "dead", Duration::from_secs(5));
    e2e::pair::wait_pair(&a, "dead", Duration::from_secs(5));
    let promoted = site.cli_ok(
        "gw-b",
        &["license", "promote", &site.vendor.key("03", 7, 5)],
    );
    assert!(promoted.contains("role:        primary"), "{promoted}");
    assert_eq!(role(&a), "primary", "cut off, gw-a does not know yet");
    // Both write while cut off; no two changes share an (epoch, version).
    let a_token = site.add_device("gw-a", "mfd-a");
    let file = site.dir.path().join("partition-time.toml");
    site.cli_ok(
        "gw-a",
        &["config", "export", "--out", file.to_str().unwrap()],
    );
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, text.replace("max_pages = 500", "max_pages = 9")).unwrap();
    site.cli_ok("gw-a", &["config", "apply", file.to_str().unwrap()]);
    site.add_device("gw-b", "mfd-b");
    let (sa, sb) = (pair_status(&site, "gw-a"), pair_status(&site, "gw-b"));
    assert!(sb["epoch"].as_u64().unwrap() > epoch_before, "{sb}");
    assert_ne!(
        (sa["config_version"].clone(), sa["epoch"].clone()),
        (sb["config_version"].clone(), sb["epoch"].clone())
    );

    link.heal();
    wait_role(&a, "fenced");
    assert_eq!(role(&b), "primary");
    let (status, health) = a.health();
    assert_eq!(status, 200, "a fenced server still takes jobs: {health}");

    // The partition-time device is reported on both servers, never dropped.
    let reported = eventually(Duration::from_secs(10), || {
        let on_a = conflicts(&site, "gw-a");
        let on_b = conflicts(&site, "gw-b");
        let has = |list: &[Value]| {
            list.iter()
                .any(|c| c["name"] == "mfd-a" && c["kind"] == "device")
        };
        (has(&on_a) && has(&on_b)).then_some(on_b)
    })
    .unwrap_or_else(|| {
        panic!(
            "mfd-a never reached the conflict report:\na: {:?}\nb: {:?}\n{}",
            conflicts(&site, "gw-a"),
            conflicts(&site, "gw-b"),
            a.log_text()
        )
    });
    assert!(
        !reported.iter().any(|c| c["name"] == "mfd-shared"),
        "a change both servers hold is no conflict: {reported:?}"
    );
    // The partition-time limits change is a document conflict; the report
    // shows what re-applying it would change on the new primary.
    let limits = eventually(Duration::from_secs(10), || {
        conflicts(&site, "gw-b")
            .into_iter()
            .find(|c| c["kind"] == "document" && c["name"] == "limits")
    })
    .expect("the limits change is in the report");
    assert_eq!(
        limits["diff_if_applied"],
        json!(["~ limits.max_pages: 500 → 9"]),
        "{limits}"
    );
    let text = site.cli_ok("gw-b", &["pair", "conflicts"]);
    assert!(
        text.contains("re-applying it replaces the whole document here"),
        "{text}"
    );
    let text = site.cli_ok("gw-a", &["status"]);
    assert!(text.contains("conflicts: "), "{text}");

    // The fenced server keeps serving its own configuration: the device
    // registered there during the partition still submits to it.
    let on_a = Device::new(&a.plain(), &a_token);
    let session = on_a.login("alice");
    let ack = on_a.submit(&session, Uuid::new_v4(), "scan-to-folder", &[png(5_000, 3)]);
    assert_eq!(ack.status, 201, "{}", String::from_utf8_lossy(&ack.body));
    // And refuses configuration changes, naming the rule.
    let out = site.cli("gw-a", &["device", "add", "mfd-x"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("fenced"), "{}", stderr(&out));

    // After review, the new primary re-applies the conflict: the device
    // works there with its token.
    let id = reported.iter().find(|c| c["name"] == "mfd-a").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let applied = site.cli_ok("gw-b", &["pair", "conflicts", "apply", &id]);
    assert!(applied.contains("re-applied as version"), "{applied}");
    let again = site.cli("gw-b", &["pair", "conflicts", "apply", &id]);
    assert!(!again.status.success(), "a conflict is re-applied once");
    let on_b = Device::new(&b.plain(), &a_token);
    let session = on_b.login("alice");
    let ack = on_b.submit(&session, Uuid::new_v4(), "scan-to-folder", &[png(5_000, 4)]);
    assert_eq!(ack.status, 201, "{}", String::from_utf8_lossy(&ack.body));
    // The device both held before the partition works on the new primary.
    let shared = Device::new(&b.plain(), &shared_token);
    let s = shared.login("alice");
    let ack = shared.submit(&s, Uuid::new_v4(), "scan-to-folder", &[png(5_000, 5)]);
    assert_eq!(ack.status, 201, "{}", String::from_utf8_lossy(&ack.body));

    // Still fenced after a restart.
    let mut a = a;
    a.stop();
    let a = site.start("gw-a");
    assert_eq!(role(&a), "fenced");

    // Rejoining as secondary takes the new primary's configuration.
    site.cli_ok("gw-a", &["license", "deactivate"]);
    site.activate("gw-a", "04", 1, 5);
    wait_role(&a, "secondary");
    wait_in_sync(&site, "gw-b", "gw-a", Duration::from_secs(10));
    let names = device_names(&site, "gw-a");
    for name in ["mfd-shared", "mfd-a", "mfd-b"] {
        assert!(
            names.contains(&name.to_owned()),
            "{name} missing on gw-a: {names:?}"
        );
    }
    assert!(!names.contains(&"mfd-x".to_owned()));
    // Its own report follows: the re-applied device is resolved there too.
    let on_a = conflicts(&site, "gw-a");
    let entry = on_a.iter().find(|c| c["name"] == "mfd-a").unwrap();
    assert!(entry["applied_as"].is_string(), "{on_a:?}");
}

/// A promotion undone before the two servers meet: the original primary
/// stays primary (with an epoch above the undone one) and the pair
/// converges on its configuration.
#[test]
fn a_promotion_undone_before_the_servers_meet_leaves_the_original_primary_primary() {
    let (site, link) = e2e::pair::pair_site_behind_proxies("");
    let (a, b) = pair_up(&site);
    wait_in_sync(&site, "gw-a", "gw-b", Duration::from_secs(10));
    link.partition();
    e2e::pair::wait_pair(&b, "dead", Duration::from_secs(5));
    site.cli_ok(
        "gw-b",
        &["license", "promote", &site.vendor.key("03", 7, 5)],
    );
    let promoted_epoch = pair_status(&site, "gw-b")["epoch"].as_u64().unwrap();
    site.cli_ok("gw-b", &["license", "deactivate"]);
    site.activate("gw-b", "04", 2, 5);
    assert_eq!(role(&b), "secondary");
    site.add_device("gw-a", "mfd-1");

    link.heal();
    wait_in_sync(&site, "gw-a", "gw-b", Duration::from_secs(10));
    assert_eq!(role(&a), "primary");
    assert_eq!(role(&b), "secondary");
    assert!(pair_status(&site, "gw-a")["epoch"].as_u64().unwrap() > promoted_epoch);
    assert!(device_names(&site, "gw-b").contains(&"mfd-1".to_owned()));
    assert!(conflicts(&site, "gw-a").is_empty());
}
