//! The server's half of the failover causes (R1): maintenance, data service
//! down and not licensed each give 503 with their reason on `/health` and on
//! job submission; a stopped web service refuses connections.

use std::net::TcpStream;
use std::time::Duration;

use e2e::http::{Device, png};
use e2e::{Site, eventually};
use uuid::Uuid;

fn licensed() -> (Site, String) {
    let site = Site::new(&["gw-a"], "");
    site.activate("gw-a", "03", 7, 5);
    let token = site.add_device("gw-a", "mfd-1");
    (site, token)
}

#[test]
fn maintenance_refuses_logins_and_jobs_but_drains_accepted_jobs() {
    let (site, token) = licensed();
    let gw = site.start("gw-a");
    let dev = Device::new(&gw.plain(), &token);
    let session = dev.login("alice");
    // A job accepted before maintenance, held until maintenance is on.
    site.cli_ok("gw-a", &["pipeline", "pause"]);
    let queued = Uuid::new_v4();
    assert_eq!(
        dev.submit(&session, queued, "scan-to-folder", &[png(10_000, 1)])
            .status,
        201
    );

    site.cli_ok("gw-a", &["maintenance", "on"]);
    let (status, health) = gw.health();
    assert_eq!(status, 503);
    assert_eq!(health["reason"], "maintenance");
    assert_eq!(health["maintenance"], true);
    assert_eq!(health["accepting"], false);

    let refused = dev.submit(
        &session,
        Uuid::new_v4(),
        "scan-to-folder",
        &[png(10_000, 2)],
    );
    refused.assert_error(503, "maintenance");
    assert_eq!(refused.header("retry-after"), Some("60"));
    let body = serde_json::json!({"user": "alice", "password": e2e::PASSWORD}).to_string();
    dev.call(
        "POST",
        "/api/v1/sessions",
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    )
    .assert_error(503, "maintenance");

    // Drain: the accepted job still completes during maintenance.
    site.cli_ok("gw-a", &["pipeline", "resume"]);
    dev.wait_for_state(queued, "done", Duration::from_secs(30));

    // The flag survives a restart.
    let mut gw = gw;
    gw.stop();
    let gw = site.start("gw-a");
    assert_eq!(gw.health().1["reason"], "maintenance");
    site.cli_ok("gw-a", &["maintenance", "off"]);
    assert_eq!(gw.health().0, 200);
}

#[test]
fn data_service_stopped_by_an_admin_gives_503_and_comes_back_on_start() {
    let (site, token) = licensed();
    let gw = site.start("gw-a");
    let dev = Device::new(&gw.plain(), &token);
    let session = dev.login("alice");

    let out = site.cli_ok("gw-a", &["service", "stop", "data"]);
    assert!(out.contains("data service of gw-a: down"), "{out}");
    let (status, health) = gw.health();
    assert_eq!(
        (status, health["reason"].as_str(), health["data"].as_str()),
        (503, Some("data-service-down"), Some("down"))
    );
    assert_eq!(
        health["web"], "up",
        "web service up, data service down: failover cause 3"
    );
    dev.submit(
        &session,
        Uuid::new_v4(),
        "scan-to-folder",
        &[png(10_000, 1)],
    )
    .assert_error(503, "data_service_down");

    // That the supervisor never undoes an admin's stop is proven with
    // paused time in `gateway::data`'s unit tests, not by waiting here.

    site.cli_ok("gw-a", &["service", "start", "data"]);
    assert_eq!(gw.health().0, 200);
    assert_eq!(
        dev.submit(
            &session,
            Uuid::new_v4(),
            "scan-to-folder",
            &[png(10_000, 1)]
        )
        .status,
        201
    );
}

#[test]
fn unwritable_spool_takes_the_data_service_down_until_repaired() {
    let (site, token) = licensed();
    let gw = site.start("gw-a");
    let dev = Device::new(&gw.plain(), &token);
    let session = dev.login("alice");

    // Replace the spool directory with a file: every write into it fails,
    // for root too (permissions alone would not stop root).
    let spool = site.data_dir("gw-a").join("gw-a-spool");
    let moved = site.data_dir("gw-a").join("spool-moved-away");
    std::fs::rename(&spool, &moved).unwrap();
    std::fs::write(&spool, b"not a directory").unwrap();

    let down = eventually(Duration::from_secs(15), || {
        let (status, h) = gw.health();
        (status == 503 && h["reason"] == "data-service-down").then_some(h)
    });
    assert!(
        down.is_some(),
        "the write probe did not notice the broken spool"
    );
    let r = dev.submit(
        &session,
        Uuid::new_v4(),
        "scan-to-folder",
        &[png(10_000, 1)],
    );
    r.assert_error(503, "data_service_down");
    assert!(r.message().contains("spool"), "{}", r.message());
    let status = site.cli_ok("gw-a", &["status", "--json"]);
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["data"]["reason"], "failed");

    // Repair: the supervisor brings the service back by itself.
    std::fs::remove_file(&spool).unwrap();
    std::fs::rename(&moved, &spool).unwrap();
    let up = eventually(Duration::from_secs(40), || {
        (gw.health().0 == 200).then_some(())
    });
    assert!(
        up.is_some(),
        "the data service did not come back after the repair"
    );
    assert_eq!(
        dev.submit(
            &session,
            Uuid::new_v4(),
            "scan-to-folder",
            &[png(10_000, 1)]
        )
        .status,
        201
    );
}

#[test]
fn unlicensed_instance_serves_health_but_refuses_work() {
    let site = Site::new(&["gw-a"], "");
    let gw = site.start("gw-a");
    let (status, health) = gw.health();
    assert_eq!(status, 503);
    assert_eq!(health["reason"], "not-licensed");
    assert_eq!(health["role"], "unlicensed");
    // Devices cannot even be added: configuration belongs to the primary.
    let out = site.cli("gw-a", &["device", "add", "mfd-1"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("activate it with `gateway license activate <key>`")
    );
    // A device registration is refused with the same reason.
    let r = e2e::request(
        &gw.plain(),
        "POST",
        "/api/v1/devices/register",
        &[("Content-Type", "application/json")],
        br#"{"name":"mfd-9"}"#,
    );
    r.assert_error(503, "not_licensed");
    assert!(r.header("retry-after").is_some());

    // Activating on the running instance takes effect at once.
    site.activate("gw-a", "03", 8, 2);
    let (status, health) = gw.health();
    assert_eq!(
        (status, health["role"].as_str(), health["epoch"].as_u64()),
        (200, Some("primary"), Some(1))
    );
}

#[test]
fn stopped_web_service_refuses_connections_while_the_process_lives() {
    let (site, _) = licensed();
    let gw = site.start("gw-a");
    let addr = gw.plain();
    site.cli_ok("gw-a", &["service", "stop", "web"]);
    assert!(
        TcpStream::connect(&addr).is_err(),
        "connections must be refused (failover cause 2)"
    );
    let status = site.cli_ok("gw-a", &["status"]);
    assert!(status.contains("web:         down"), "{status}");
    site.cli_ok("gw-a", &["service", "start", "web"]);
    assert_eq!(
        gw.health().0,
        200,
        "the web service is back on the same address"
    );
}
