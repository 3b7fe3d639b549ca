//! One process per instance, state that survives, and shutdown in order,
//! against real `gateway` processes: the instance lock (not the admin
//! socket) tells running from stopped, a second `serve` refuses naming the
//! first one's pid, the admin's switches (maintenance, pipeline pause, data
//! service stopped) survive restarts, SIGTERM stops everything in one order
//! with nothing started after it, and one license serial activates one
//! instance of a configuration file.

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use e2e::http::{BOUNDARY, Device, job_body, png};
use e2e::{Site, eventually};
use serde_json::{Value, json};
use uuid::Uuid;

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn status_json(site: &Site, instance: &str) -> Value {
    serde_json::from_str(&site.cli_ok(instance, &["status", "--json"])).unwrap()
}

// Regression: the admin socket was the only guard. Once its file was
// removed, `status` said "not running" and a second `serve` started on the
// same store and emptied the spool's temporary directory under the first
// instance's upload in flight.
#[test]
fn a_removed_admin_socket_neither_hides_the_instance_nor_lets_a_second_one_start() {
    let site = Site::new(&["gw-a"], "");
    site.activate("gw-a", "03", 1, 2);
    let token = site.add_device("gw-a", "mfd-1");
    let gw = site.start("gw-a");
    let data_dir = site.data_dir("gw-a");
    let lock = std::fs::read_to_string(data_dir.join("gw-a.lock")).unwrap();
    assert_eq!(
        lock.trim(),
        gw.pid().to_string(),
        "the lock file names its holder"
    );

    // An upload in flight: half its body is in its spool directory.
    let dev = Device::new(&gw.plain(), &token);
    let session = dev.login("alice");
    let job = Uuid::new_v4();
    let body = job_body(
        &json!({"workflow": "scan-to-folder", "page_count": 1}),
        &[png(4_000_000, 1)],
    );
    let mut upload = TcpStream::connect(gw.plain()).unwrap();
    let head = format!(
        "PUT /api/v1/jobs/{job} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nX-Scan-Session: {session}\r\n\
         Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    upload.write_all(head.as_bytes()).unwrap();
    upload.write_all(&body[..body.len() / 2]).unwrap();
    upload.flush().unwrap();
    let page = data_dir.join(format!("gw-a-spool/jobs/{job}/page-0001.png"));
    let in_flight = eventually(Duration::from_secs(10), || page.exists().then_some(()));
    assert!(in_flight.is_some(), "the upload never reached the spool");

    let socket = data_dir.join("gw-a.admin.sock");
    std::fs::remove_file(&socket).unwrap();

    // A second serve refuses at once, naming the first one's pid, and
    // touches nothing (the upload's files stay).
    let second = site.cli("gw-a", &["serve"]);
    assert!(!second.status.success());
    let msg = stderr(&second);
    assert!(
        msg.contains("already running") && msg.contains(&format!("pid {}", gw.pid())),
        "{msg}"
    );
    assert!(msg.contains("gw-a.lock"), "{msg}");
    assert!(
        page.exists(),
        "the refused serve removed the upload's spool directory"
    );

    // status still says running, from the same process, and the socket is
    // back.
    let status = status_json(&site, "gw-a");
    assert_eq!(status["pid"], gw.pid(), "{status}");
    assert_eq!(status["data"]["up"], true);
    assert!(
        socket.exists(),
        "the running instance bound its socket again"
    );
    assert!(gw.wait_for_log("bound it again", Duration::from_secs(5)));

    // The upload finishes and the first instance keeps serving.
    upload.write_all(&body[body.len() / 2..]).unwrap();
    let ack = e2e::http::read_response(&mut upload);
    assert_eq!(ack.status, 201, "{}", String::from_utf8_lossy(&ack.body));
    dev.wait_for_state(job, "done", Duration::from_secs(60));
    assert_eq!(gw.health().0, 200);
}

// Regression: the pipeline pause was lost on restart while maintenance
// survived; an admin's stop of the data service was forgotten too.
#[test]
fn every_admin_switch_survives_a_restart_until_changed() {
    let site = Site::new(&["gw-a"], "");
    site.activate("gw-a", "03", 1, 2);
    let token = site.add_device("gw-a", "mfd-1");
    let mut gw = site.start("gw-a");
    site.cli_ok("gw-a", &["pipeline", "pause"]);
    site.cli_ok("gw-a", &["maintenance", "on"]);
    gw.stop();

    let mut gw = site.start("gw-a");
    let status = status_json(&site, "gw-a");
    assert_eq!(status["pipeline_paused"], true, "{status}");
    assert_eq!(status["maintenance"], true, "{status}");
    site.cli_ok("gw-a", &["maintenance", "off"]);
    // Paused: an accepted job waits.
    let dev = Device::new(&gw.plain(), &token);
    let session = dev.login("alice");
    let job = Uuid::new_v4();
    assert_eq!(
        dev.submit(&session, job, "scan-to-folder", &[png(5_000, 1)])
            .status,
        201
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(dev.job(job).json()["state"], "received");

    // The data service stopped by an admin stays stopped across a restart.
    let out = site.cli_ok("gw-a", &["service", "stop", "data"]);
    assert!(out.contains("data service of gw-a: down"), "{out}");
    gw.stop();
    let mut gw = site.start("gw-a");
    let (code, health) = gw.health();
    assert_eq!(
        (code, health["reason"].as_str()),
        (503, Some("data-service-down"))
    );
    let status = status_json(&site, "gw-a");
    assert_eq!(status["data"]["up"], false, "{status}");
    assert_eq!(status["data"]["reason"], "stopped", "{status}");
    assert_eq!(status["data_stopped_by_admin"], true, "{status}");
    let text = site.cli_ok("gw-a", &["status"]);
    assert!(text.contains("stopped by an admin"), "{text}");
    assert!(gw.wait_for_log(
        "data service stopped by an admin before this start",
        Duration::from_secs(5)
    ));

    site.cli_ok("gw-a", &["service", "start", "data"]);
    assert_eq!(gw.health().0, 200);
    // Still paused: that switch was not changed.
    assert_eq!(status_json(&site, "gw-a")["pipeline_paused"], true);
    gw.stop();

    // Offline, the switches are recorded for the next start.
    let out = site.cli_ok("gw-a", &["pipeline", "resume"]);
    assert!(out.contains("recorded"), "{out}");
    let gw = site.start("gw-a");
    let status = status_json(&site, "gw-a");
    assert_eq!(status["pipeline_paused"], false, "{status}");
    assert_eq!(status["data"]["up"], true, "{status}");
    let dev = Device::new(&gw.plain(), &token);
    dev.wait_for_state(job, "done", Duration::from_secs(60));
}

/// The log lines of each life of the instance, each ending with its
/// "instance stopped".
fn lives(log: &str) -> Vec<Vec<&str>> {
    let mut out: Vec<Vec<&str>> = vec![Vec::new()];
    for line in log.lines() {
        out.last_mut().unwrap().push(line);
        if line.contains("instance stopped") {
            out.push(Vec::new());
        }
    }
    out.pop();
    out
}

fn position(life: &[&str], needle: &str) -> Option<usize> {
    life.iter().position(|l| l.contains(needle))
}

// Regression: after SIGTERM, "pipeline workers started" was logged after
// "shutdown requested" in about half of the stops.
#[test]
fn sigterm_stops_everything_in_order_and_starts_nothing() {
    let site = Site::new(&["gw-a"], "");
    site.activate("gw-a", "03", 1, 2);
    let mut log = String::new();
    for _ in 0..10 {
        let mut gw = site.start("gw-a");
        gw.stop();
        log = gw.log_text();
    }
    let lives = lives(&log);
    assert!(lives.len() >= 10, "{log}");
    for (i, life) in lives.iter().enumerate() {
        let asked = position(life, "shutdown requested")
            .unwrap_or_else(|| panic!("life {i} has no shutdown:\n{}", life.join("\n")));
        let after = &life[asked..];
        assert!(
            !after.iter().any(|l| l.contains("pipeline workers started")),
            "life {i}: workers started after shutdown was requested:\n{}",
            life.join("\n")
        );
        let web = position(after, "web service stopped");
        let workers = position(after, "pipeline workers stopped");
        let data = position(after, "data service closed");
        let end = position(after, "instance stopped");
        let (web, data, end) = (
            web.expect("web stopped"),
            data.expect("data closed"),
            end.expect("instance stopped"),
        );
        assert!(web < data && data < end, "life {i}:\n{}", after.join("\n"));
        if let Some(workers) = workers {
            assert!(
                web < workers && workers < data,
                "life {i}:\n{}",
                after.join("\n")
            );
        }
        assert!(
            !after.iter().any(|l| l.contains("data service up")),
            "life {i}: the data service was started during shutdown:\n{}",
            after.join("\n")
        );
    }
}

// Regression: one `03` key activated any number of primaries of the same
// configuration file, each with the full seat count.
#[test]
fn one_license_serial_activates_one_instance_of_a_configuration_file() {
    let site = Site::new(&["gw-a", "gw-b"], "");
    let key = site.vendor.key("03", 77, 5);
    site.cli_ok("gw-a", &["license", "activate", &key]);

    // Offline: refused, naming the instance that holds it.
    let out = site.cli("gw-b", &["license", "activate", &key]);
    assert!(!out.status.success());
    let msg = stderr(&out);
    assert!(
        msg.contains("license serial 0000077 is already activated on instance `gw-a`"),
        "{msg}"
    );
    assert!(
        msg.contains("gateway --instance gw-a license deactivate"),
        "{msg}"
    );
    assert_eq!(msg.trim().lines().count(), 1, "one line: {msg}");

    // While gw-a runs (its store open for writing) and gw-b too, through
    // gw-b's admin channel.
    let _a = site.start("gw-a");
    let _b = site.start("gw-b");
    let out = site.cli("gw-b", &["license", "activate", &key]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("instance `gw-a`"), "{}", stderr(&out));
    assert_eq!(status_json(&site, "gw-b")["role"]["role"], "unlicensed");

    // Promotion with the other instance's key is refused the same way.
    site.activate("gw-b", "04", 78, 5);
    let out = site.cli("gw-b", &["license", "promote", &key]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("instance `gw-a`"), "{}", stderr(&out));
    assert_eq!(status_json(&site, "gw-b")["role"]["role"], "secondary");

    // Another serial is fine, and gw-a can still show its own.
    site.cli_ok(
        "gw-b",
        &["license", "promote", &site.vendor.key("03", 79, 5)],
    );
    assert_eq!(status_json(&site, "gw-a")["role"]["license"]["serial"], 77);
}

/// The pair's peer is the one exception: the promoted secondary may reuse
/// the primary's own `03` key (the pair's epoch rule orders the two).
#[test]
fn the_pair_peer_may_reuse_the_primarys_serial() {
    let ports: Vec<u16> = (0..3)
        .map(|_| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        })
        .collect();
    let (pa, pb, pc) = (ports[0], ports[1], ports[2]);
    let site = Site::new(
        &["gw-a", "gw-b", "gw-c"],
        &format!(
            "\n[instances.gw-a.pair]\nlisten = \"127.0.0.1:{pa}\"\npeer = \"127.0.0.1:{pb}\"\n\
             \n[instances.gw-b.pair]\nlisten = \"127.0.0.1:{pb}\"\npeer = \"127.0.0.1:{pa}\"\n\
             \n[instances.gw-c.pair]\nlisten = \"127.0.0.1:{pc}\"\npeer = \"127.0.0.1:{pa}\"\n"
        ),
    );
    let key = site.vendor.key("03", 5, 5);
    site.cli_ok("gw-a", &["license", "activate", &key]);
    site.activate("gw-b", "04", 6, 5);
    site.cli_ok("gw-b", &["license", "promote", &key]);
    // gw-c points at gw-a, but gw-a does not point back: not its peer.
    let out = site.cli("gw-c", &["license", "activate", &key]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("instance `gw-a`"), "{}", stderr(&out));
}
