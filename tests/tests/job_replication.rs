//! Jobs across the pair, between two real `gateway` processes on loopback:
//! with `ack = "peer"` a job acknowledged as `replicated: true` is stored on
//! the peer, page by page with the digests the device sent, and survives
//! the loss of the accepting server and its whole data directory; with the
//! peer stopped a job is acknowledged at once as `replicated: false`,
//! status and metrics say `degraded`, and the stream catches up when the
//! peer returns.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use e2e::http::{Device, png};
use e2e::pair::{pair_site, pair_status, pair_up, wait_in_sync};
use e2e::{Site, eventually, request};
use serde_json::Value;
use uuid::Uuid;

fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The job directory `instance` keeps for `job` in its spool.
fn spool_dir(site: &Site, instance: &str, job: Uuid) -> PathBuf {
    site.data_dir(instance)
        .join(format!("{instance}-spool"))
        .join("jobs")
        .join(job.to_string())
}

fn jobs_on(site: &Site, instance: &str) -> Vec<Value> {
    let list: Value =
        serde_json::from_str(&site.cli_ok(instance, &["job", "list", "--state", "received"]))
            .unwrap();
    list.as_array().cloned().unwrap_or_default()
}

/// `instance`'s row of `job` once it shows the job done (waiting at most
/// 10 s: a copy learns of it from the owner's news).
fn done_on(site: &Site, instance: &str, job: Uuid) -> Option<Value> {
    eventually(Duration::from_secs(10), || {
        let list: Value =
            serde_json::from_str(&site.cli_ok(instance, &["job", "list", "--state", "done"]))
                .ok()?;
        list.as_array()?
            .iter()
            .find(|j| j["id"] == job.to_string())
            .cloned()
    })
}

#[test]
fn a_job_acknowledged_as_replicated_survives_the_loss_of_the_accepting_server_and_its_disk() {
    let site = pair_site(None, "");
    let (mut a, _b) = pair_up(&site);
    wait_in_sync(&site, "gw-a", "gw-b", Duration::from_secs(10));
    // Held on the primary so the job is still queued when it dies.
    site.cli_ok("gw-a", &["pipeline", "pause"]);
    let token = site.add_device("gw-a", "mfd-1");
    let dev = Device::new(&a.plain(), &token);
    let session = dev.login("alice");
    let job = Uuid::new_v4();
    let pages = vec![png(700_000, 1), png(300_000, 2)];
    let ack = dev.submit(&session, job, "scan-to-folder", &pages);
    assert_eq!(ack.status, 201, "{}", String::from_utf8_lossy(&ack.body));
    assert_eq!(ack.json()["replicated"], true, "{}", ack.json());

    a.kill9();
    std::fs::remove_dir_all(site.data_dir("gw-a")).unwrap();

    // The survivor holds the copy: the row (a replica, owned by its
    // acceptor) and every page with the digest of what the device sent.
    let on_b = jobs_on(&site, "gw-b");
    let copy = on_b
        .iter()
        .find(|j| j["id"] == job.to_string())
        .unwrap_or_else(|| panic!("gw-b has no copy of {job}: {on_b:?}"));
    assert_eq!(copy["replica_state"], "replica", "{copy}");
    assert_eq!(copy["page_count"], 2);
    assert_eq!(copy["bytes"], 1_000_000);
    assert_eq!(copy["accepted_by"], "gw-a");
    let dir = spool_dir(&site, "gw-b", job);
    for (i, page) in pages.iter().enumerate() {
        let stored = std::fs::read(dir.join(format!("page-{:04}.png", i + 1))).unwrap();
        assert_eq!(sha256_hex(&stored), sha256_hex(page), "page {}", i + 1);
    }
    // The manifest travels in the job's row, not as a file.
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        pages.len(),
        "the copy's directory holds its pages, nothing else"
    );
}

#[test]
fn with_the_peer_stopped_a_job_is_acknowledged_at_once_and_the_stream_catches_up_later() {
    let site = pair_site(None, "");
    let (a, mut b) = pair_up(&site);
    wait_in_sync(&site, "gw-a", "gw-b", Duration::from_secs(10));
    let token = site.add_device("gw-a", "mfd-1");
    wait_in_sync(&site, "gw-a", "gw-b", Duration::from_secs(5));
    b.stop();
    e2e::pair::wait_pair(&a, "close", Duration::from_secs(5));
    // Held, so the job still needs its copy when the peer returns (a job
    // delivered first needs none: see the end of the test).
    site.cli_ok("gw-a", &["pipeline", "pause"]);

    let dev = Device::new(&a.plain(), &token);
    let session = dev.login("alice");
    let job = Uuid::new_v4();
    let started = Instant::now();
    let ack = dev.submit(&session, job, "scan-to-folder", &[png(50_000, 3)]);
    let took = started.elapsed();
    assert_eq!(ack.status, 201, "{}", String::from_utf8_lossy(&ack.body));
    assert_eq!(ack.json()["replicated"], false, "{}", ack.json());
    assert!(
        took < Duration::from_millis(1_500),
        "a closed link does not wait for the peer ({took:?}; the wait limit is 2 s)"
    );
    let s = pair_status(&site, "gw-a");
    assert_eq!(s["replication"], "degraded", "{s}");
    let metrics = String::from_utf8(request(&a.plain(), "GET", "/metrics", &[], b"").body).unwrap();
    assert!(
        metrics.contains("scangw_replication_degraded{instance=\"gw-a\"} 1"),
        "{metrics}"
    );

    // The peer returns: the stream catches up, and status says so.
    let b = site.start("gw-b");
    let caught_up = eventually(Duration::from_secs(15), || {
        let s = pair_status(&site, "gw-a");
        (s["replication"] == "ok" && s["unreplicated_jobs"] == 0).then_some(())
    });
    assert!(
        caught_up.is_some(),
        "gw-a never caught up: {}\n{}\n{}",
        pair_status(&site, "gw-a"),
        a.log_text(),
        b.log_text()
    );
    let on_b = jobs_on(&site, "gw-b");
    assert!(
        on_b.iter()
            .any(|j| j["id"] == job.to_string() && j["replica_state"] == "replica"),
        "{on_b:?}"
    );
    // The job itself is processed by its acceptor only: the copy on gw-b
    // follows its owner's progress to `done`, and nothing is delivered
    // from gw-b.
    site.cli_ok("gw-a", &["pipeline", "resume"]);
    dev.wait_for_state(job, "done", Duration::from_secs(30));
    let followed = done_on(&site, "gw-b", job);
    let copy = followed.expect("gw-b's copy follows the owner's progress to done");
    assert_eq!(copy["replica_state"], "replica", "{copy}");
    assert_eq!(
        copy["owner_server"], copy["acceptor_server"],
        "gw-a owns it: {copy}"
    );
    let delivered_on_b = site.data_dir("gw-b").join("delivered");
    assert!(
        e2e::support::files_under(&delivered_on_b).is_empty(),
        "gw-b delivered nothing itself"
    );

    // A job delivered before the peer could take a copy needs none: once
    // done, it no longer keeps replication degraded.
    let mut b = b;
    b.stop();
    e2e::pair::wait_pair(&a, "close", Duration::from_secs(5));
    let quick = Uuid::new_v4();
    let ack = dev.submit(&session, quick, "scan-to-folder", &[png(10_000, 4)]);
    assert_eq!(ack.json()["replicated"], false);
    dev.wait_for_state(quick, "done", Duration::from_secs(30));
    let settled = eventually(Duration::from_secs(5), || {
        let s = pair_status(&site, "gw-a");
        (s["replication"] == "ok" && s["unreplicated_jobs"] == 0).then_some(())
    });
    assert!(settled.is_some(), "{}", pair_status(&site, "gw-a"));
}

#[test]
fn the_owners_progress_reaches_the_replica_whose_pages_go_after_the_retention() {
    let site = pair_site(None, "");
    let a = site.start("gw-a");
    let b = site.start_with("gw-b", &[("SCANGW_PAIR_REPLICA_RETENTION_SECS", "1")]);
    e2e::pair::pair(&site, &a, &b);
    wait_in_sync(&site, "gw-a", "gw-b", Duration::from_secs(10));
    site.cli_ok("gw-a", &["pipeline", "pause"]);
    let token = site.add_device("gw-a", "mfd-1");
    let dev = Device::new(&a.plain(), &token);
    let session = dev.login("alice");
    let job = Uuid::new_v4();
    let ack = dev.submit(&session, job, "scan-to-folder", &[png(40_000, 5)]);
    assert_eq!(ack.json()["replicated"], true, "{}", ack.json());
    let dir = spool_dir(&site, "gw-b", job);
    assert!(dir.is_dir(), "the replica's pages are on gw-b");

    // Processed by its owner; the replica follows to `done`.
    site.cli_ok("gw-a", &["pipeline", "resume"]);
    dev.wait_for_state(job, "done", Duration::from_secs(30));
    let done_on_b = done_on(&site, "gw-b", job)
        .unwrap_or_else(|| panic!("the replica never became done on gw-b:\n{}", b.log_text()));
    assert_eq!(done_on_b["replica_state"], "replica");
    assert_eq!(done_on_b["accepted_by"], "gw-a");

    // After the retention its pages go; the row stays as history.
    let removed = eventually(Duration::from_secs(15), || (!dir.exists()).then_some(()));
    assert!(
        removed.is_some(),
        "the replica's pages are still on gw-b after the retention"
    );
    let list: Value =
        serde_json::from_str(&site.cli_ok("gw-b", &["job", "list", "--state", "done"])).unwrap();
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .any(|j| j["id"] == job.to_string())
    );
}

fn logout(dev: &Device, session: &str) {
    let r = dev.call(
        "DELETE",
        "/api/v1/sessions/current",
        &[("X-Scan-Session", session)],
        b"",
    );
    assert_eq!(r.status, 204, "{}", String::from_utf8_lossy(&r.body));
}

/// Logging out on one server ends the session on the other: at once while
/// the link is up, and when the link comes back for a logout made while
/// the peer was away.
#[test]
fn a_logout_on_either_server_ends_the_session_on_both() {
    let site = pair_site(None, "");
    let (a, b) = pair_up(&site);
    let token = site.add_device("gw-a", "mfd-1");
    wait_in_sync(&site, "gw-a", "gw-b", Duration::from_secs(10));
    let on_a = Device::new(&a.plain(), &token);
    let on_b = Device::new(&b.plain(), &token);
    // The answer's status and error code.
    let answer = |r: e2e::Response| {
        let code = r.json()["error"]["code"].as_str().map(str::to_owned);
        (r.status, code)
    };
    let submit_to_b = |session: &str| {
        answer(on_b.submit(session, Uuid::new_v4(), "scan-to-folder", &[png(2_000, 6)]))
    };
    let expired = (401, Some("session_expired".to_owned()));

    let session = on_a.login("alice");
    assert_eq!(submit_to_b(&session).0, 201);
    logout(&on_a, &session);
    let ended = eventually(Duration::from_secs(5), || {
        (submit_to_b(&session) == expired).then_some(())
    });
    assert!(ended.is_some(), "gw-b still takes the session gw-a ended");

    // The other way round, with the peer away during the logout.
    let session = on_b.login("bob");
    let mut a = a;
    a.stop();
    logout(&on_b, &session);
    let a = site.start("gw-a");
    e2e::pair::wait_pair(&a, "live", Duration::from_secs(10));
    let on_a = Device::new(&a.plain(), &token);
    let ended = eventually(Duration::from_secs(5), || {
        let r = on_a.submit(&session, Uuid::new_v4(), "scan-to-folder", &[png(2_000, 7)]);
        (answer(r) == expired).then_some(())
    });
    assert!(
        ended.is_some(),
        "gw-a still takes the session gw-b ended while it was away"
    );
}

/// Seed 000: a device that resubmits a job to the other server gets the
/// original acknowledgement, and the job is stored once — also when the
/// other server holds no copy (the job was delivered before the two could
/// talk): it asks its peer before taking the id.
#[test]
fn a_job_resubmitted_to_the_other_server_gets_the_original_acknowledgement() {
    let site = pair_site(None, "");
    let (a, b) = pair_up(&site);
    let token = site.add_device("gw-a", "mfd-1");
    wait_in_sync(&site, "gw-a", "gw-b", Duration::from_secs(10));
    let on_a = Device::new(&a.plain(), &token);
    let on_b = Device::new(&b.plain(), &token);
    let pages = vec![png(30_000, 8)];

    // Replicated: the copy on gw-b answers.
    let session = on_a.login("alice");
    let job = Uuid::new_v4();
    let first = on_a.submit(&session, job, "scan-to-folder", &pages);
    assert_eq!(first.status, 201);
    let again = on_b.submit(&session, job, "scan-to-folder", &pages);
    assert_eq!(
        again.status,
        200,
        "{}",
        String::from_utf8_lossy(&again.body)
    );
    assert_eq!(again.json()["accepted_by"], "gw-a");
    assert_eq!(again.json()["received_at"], first.json()["received_at"]);

    // Never copied (done on gw-a while gw-b was away): gw-b asks gw-a.
    let mut b = b;
    b.stop();
    e2e::pair::wait_pair(&a, "close", Duration::from_secs(5));
    let lone = Uuid::new_v4();
    let first = on_a.submit(&session, lone, "scan-to-folder", &pages);
    assert_eq!(first.json()["replicated"], false);
    on_a.wait_for_state(lone, "done", Duration::from_secs(30));
    let b = site.start("gw-b");
    e2e::pair::wait_pair(&b, "live", Duration::from_secs(10));
    let on_b = Device::new(&b.plain(), &token);
    let again = on_b.submit(&session, lone, "scan-to-folder", &pages);
    assert_eq!(
        again.status,
        200,
        "{}",
        String::from_utf8_lossy(&again.body)
    );
    assert_eq!(again.json()["accepted_by"], "gw-a");
    assert_eq!(again.json()["received_at"], first.json()["received_at"]);
    // The pages gw-b read while waiting for gw-a's answer go with the
    // dropped upload (removed on the blocking pool, just after the answer).
    let dir = spool_dir(&site, "gw-b", lone);
    assert!(
        eventually(Duration::from_secs(5), || (!dir.exists()).then_some(())).is_some(),
        "gw-b kept the pages of a job its peer holds: {}",
        dir.display()
    );
    let everywhere: Vec<Value> = ["received", "processing", "done", "failed"]
        .iter()
        .flat_map(|state| {
            let list: Value =
                serde_json::from_str(&site.cli_ok("gw-b", &["job", "list", "--state", state]))
                    .unwrap();
            list.as_array().cloned().unwrap_or_default()
        })
        .collect();
    assert!(
        !everywhere.iter().any(|j| j["id"] == lone.to_string()),
        "gw-b stored the job a second time: {everywhere:?}"
    );
    // Another manifest under the same id is a conflict, as on one server.
    let other = on_b.submit(
        &session,
        lone,
        "scan-to-folder",
        &[png(1_000, 9), png(1_000, 10)],
    );
    assert_eq!(
        other.status,
        409,
        "{}",
        String::from_utf8_lossy(&other.body)
    );
}

/// The same job id accepted by both servers while they were cut off (a
/// device failed over and resubmitted): when they meet, exactly one keeps
/// it and the other's copy is superseded, counted and never processed, so
/// the job is delivered once.
#[test]
fn one_id_accepted_on_both_sides_of_a_partition_is_kept_once() {
    let (site, link) = e2e::pair::pair_site_behind_proxies("");
    let (a, b) = pair_up(&site);
    let token = site.add_device("gw-a", "mfd-1");
    wait_in_sync(&site, "gw-a", "gw-b", Duration::from_secs(10));
    for gw in ["gw-a", "gw-b"] {
        site.cli_ok(gw, &["pipeline", "pause"]);
    }
    link.partition();
    e2e::pair::wait_pair(&a, "dead", Duration::from_secs(5));
    e2e::pair::wait_pair(&b, "dead", Duration::from_secs(5));

    let on_a = Device::new(&a.plain(), &token);
    let on_b = Device::new(&b.plain(), &token);
    let session = on_a.login("alice");
    let job = Uuid::new_v4();
    let pages = vec![png(20_000, 11)];
    assert_eq!(
        on_a.submit(&session, job, "scan-to-folder", &pages).status,
        201
    );
    let second = on_b.submit(&session, job, "scan-to-folder", &pages);
    assert_eq!(second.status, 201, "cut off, gw-b takes the id");
    assert_eq!(second.json()["accepted_by"], "gw-b");

    link.heal();
    let counted = eventually(Duration::from_secs(15), || {
        let (sa, sb) = (pair_status(&site, "gw-a"), pair_status(&site, "gw-b"));
        let superseded = sa["superseded_jobs"].as_u64()? + sb["superseded_jobs"].as_u64()?;
        let both =
            sa["jobs_delivered_by_both"].as_u64()? + sb["jobs_delivered_by_both"].as_u64()?;
        (superseded == 1 && both == 0).then_some(())
    });
    assert!(
        counted.is_some(),
        "not exactly one copy superseded:\n{}\n{}\n{}\n{}",
        pair_status(&site, "gw-a"),
        pair_status(&site, "gw-b"),
        a.log_text(),
        b.log_text()
    );

    for gw in ["gw-a", "gw-b"] {
        site.cli_ok(gw, &["pipeline", "resume"]);
    }
    // One server delivers it; the other's copy says why it never will.
    let delivered = eventually(Duration::from_secs(30), || {
        let done: Vec<&str> = [("gw-a", &on_a), ("gw-b", &on_b)]
            .iter()
            .filter(|(_, dev)| dev.job(job).json()["state"] == "done")
            .map(|(name, _)| *name)
            .collect();
        (done.len() == 1).then(|| done[0])
    })
    .expect("the job was delivered by exactly one server");
    std::thread::sleep(Duration::from_millis(1_500));
    let other = if delivered == "gw-a" { &on_b } else { &on_a };
    let copy = other.job(job).json();
    assert_eq!(copy["state"], "received", "{copy}");
    assert!(
        copy["reason"]
            .as_str()
            .unwrap_or("")
            .starts_with("superseded"),
        "{copy}"
    );
    let files: usize = ["gw-a", "gw-b"]
        .iter()
        .map(|gw| e2e::support::files_under(&site.data_dir(gw).join("delivered")).len())
        .sum();
    assert_eq!(files, 1, "delivered once");
}

/// Seed 000 after a crash: gw-a accepted a job and died before gw-b had a
/// copy; the device, failing over, gave the same job to gw-b, which
/// delivered it. When gw-a comes back it does not process its own copy
/// before asking gw-b, and gw-b's delivery stands: delivered once.
#[test]
fn a_restarted_server_asks_its_peer_before_processing_jobs_it_never_replicated() {
    let (site, link) = e2e::pair::pair_site_behind_proxies("");
    let (a, b) = pair_up(&site);
    let token = site.add_device("gw-a", "mfd-1");
    wait_in_sync(&site, "gw-a", "gw-b", Duration::from_secs(10));
    site.cli_ok("gw-a", &["pipeline", "pause"]);
    link.partition();
    e2e::pair::wait_pair(&a, "dead", Duration::from_secs(5));

    let on_a = Device::new(&a.plain(), &token);
    let session = on_a.login("alice");
    let job = Uuid::new_v4();
    let pages = vec![png(20_000, 12)];
    let first = on_a.submit(&session, job, "scan-to-folder", &pages);
    assert_eq!(first.json()["replicated"], false);
    let mut a = a;
    a.kill9();

    // The device fails over: gw-b takes the id and delivers it.
    let on_b = Device::new(&b.plain(), &token);
    assert_eq!(
        on_b.submit(&session, job, "scan-to-folder", &pages).status,
        201
    );
    on_b.wait_for_state(job, "done", Duration::from_secs(30));

    // gw-a returns with its pipeline running and the link healed.
    site.cli_ok("gw-a", &["pipeline", "resume"]);
    link.heal();
    let a = site.start("gw-a");
    let on_a = Device::new(&a.plain(), &token);
    let superseded = eventually(Duration::from_secs(15), || {
        let copy = on_a.job(job).json();
        copy["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("superseded"))
            .then_some(copy)
    })
    .unwrap_or_else(|| {
        panic!(
            "gw-a's copy was not superseded: {}\n{}",
            on_a.job(job).json(),
            a.log_text()
        )
    });
    assert_eq!(superseded["state"], "received", "never processed on gw-a");
    std::thread::sleep(Duration::from_millis(1_000));
    let files: usize = ["gw-a", "gw-b"]
        .iter()
        .map(|gw| e2e::support::files_under(&site.data_dir(gw).join("delivered")).len())
        .sum();
    assert_eq!(files, 1, "delivered once");
}
