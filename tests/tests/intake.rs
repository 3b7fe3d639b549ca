//! Job intake end to end: an acknowledged job survives a crash, a job id is
//! accepted once, and an upload cut off midway leaves nothing behind.

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use e2e::http::{BOUNDARY, Device, job_body, png};
use e2e::support::files_under;
use e2e::{Site, eventually};
use serde_json::json;
use uuid::Uuid;

fn primary_site() -> (Site, String) {
    let site = Site::new(&["gw-a"], "");
    site.activate("gw-a", "03", 85, 10);
    let token = site.add_device("gw-a", "mfd-1");
    (site, token)
}

#[test]
fn acknowledged_job_survives_kill_9_right_after_the_ack() {
    let (site, token) = primary_site();
    // The pipeline is paused so the job is still queued, not yet delivered,
    // when the process dies: what must survive is the intake's promise.
    let mut gw = site.start("gw-a");
    site.cli_ok("gw-a", &["pipeline", "pause"]);
    let dev = Device::new(&gw.plain(), &token);
    let session = dev.login("alice");
    let job = Uuid::new_v4();
    let pages = vec![png(300_000, 1), png(200_000, 2)];
    let ack = dev.submit(&session, job, "scan-to-folder", &pages);
    assert_eq!(ack.status, 201, "{}", String::from_utf8_lossy(&ack.body));
    gw.kill9();

    let gw = site.start("gw-a");
    // The pause survives the restart (an admin's switch holds until
    // changed): resume to let the job through.
    site.cli_ok("gw-a", &["pipeline", "resume"]);
    let dev = Device::new(&gw.plain(), &token);
    let done = dev.wait_for_state(job, "done", Duration::from_secs(30));
    assert_eq!(done["pages"], 2);
    assert_eq!(done["bytes"], 500_000);
    let delivered = std::fs::read_dir(site.data_dir("gw-a").join("delivered"))
        .unwrap()
        .count();
    assert_eq!(delivered, 1, "one dated folder with the document");
    // The acknowledgement after the restart is the original one.
    let again = dev.submit(&dev.login("alice"), job, "scan-to-folder", &pages);
    assert_eq!(again.status, 200);
    assert_eq!(again.json()["received_at"], ack.json()["received_at"]);
    assert_eq!(again.json()["replayed"], true);
}

#[test]
fn resubmitted_job_id_is_accepted_once_and_delivered_once() {
    let (site, token) = primary_site();
    let gw = site.start("gw-a");
    let dev = Device::new(&gw.plain(), &token);
    let session = dev.login("alice");
    let job = Uuid::new_v4();
    let pages = vec![png(50_000, 3)];
    let first = dev.submit(&session, job, "scan-to-folder", &pages);
    assert_eq!(first.status, 201);
    for _ in 0..3 {
        let again = dev.submit(&session, job, "scan-to-folder", &pages);
        assert_eq!(
            again.status,
            200,
            "{}",
            String::from_utf8_lossy(&again.body)
        );
        assert_eq!(again.json()["job_id"], job.to_string());
    }
    dev.wait_for_state(job, "done", Duration::from_secs(30));
    let metrics =
        String::from_utf8(e2e::request(&gw.plain(), "GET", "/metrics", &[], b"").body).unwrap();
    for line in [
        "scangw_jobs_accepted_total{instance=\"gw-a\"} 1",
        "scangw_jobs_replayed_total{instance=\"gw-a\"} 3",
        "scangw_jobs_done_total{instance=\"gw-a\"} 1",
        "scangw_upload_seconds_count{instance=\"gw-a\"} 1",
        "scangw_data_service_up{instance=\"gw-a\"} 1",
    ] {
        assert!(metrics.contains(line), "missing `{line}` in:\n{metrics}");
    }
    let list = dev.call("GET", "/api/v1/jobs", &[], b"").json();
    assert_eq!(list["jobs"].as_array().unwrap().len(), 1);
    let files: Vec<_> = files_under(&site.data_dir("gw-a").join("delivered"));
    assert_eq!(files.len(), 1, "{files:?}");

    // The same id with another manifest is a different job: refused.
    let other = dev.submit(
        &session,
        job,
        "scan-to-folder",
        &[png(50_000, 3), png(50_000, 4)],
    );
    other.assert_error(409, "job_id_conflict");
    let metrics =
        String::from_utf8(e2e::request(&gw.plain(), "GET", "/metrics", &[], b"").body).unwrap();
    assert!(
        metrics
            .contains("scangw_jobs_refused_total{instance=\"gw-a\",reason=\"job_id_conflict\"} 1"),
        "{metrics}"
    );
}

#[test]
fn concurrent_uploads_of_one_job_id_store_it_once() {
    let (site, token) = primary_site();
    let gw = site.start("gw-a");
    let dev = Device::new(&gw.plain(), &token);
    let session = dev.login("alice");
    let job = Uuid::new_v4();
    let pages = vec![png(2_000_000, 5)];
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| s.spawn(|| dev.submit(&session, job, "scan-to-folder", &pages)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                let r = h.join().unwrap();
                if r.status == 409 {
                    assert_eq!(r.code(), "upload_in_progress");
                    assert_eq!(r.header("retry-after"), Some("1"));
                }
                r.status
            })
            .collect()
    });
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| [200, 201, 409].contains(s)),
        "{statuses:?}"
    );
    dev.wait_for_state(job, "done", Duration::from_secs(30));
    assert_eq!(
        files_under(&site.data_dir("gw-a").join("delivered")).len(),
        1
    );
}

#[test]
fn upload_cut_off_midway_leaves_nothing_and_the_retry_is_clean() {
    let (site, token) = primary_site();
    let gw = site.start("gw-a");
    site.cli_ok("gw-a", &["pipeline", "pause"]);
    let dev = Device::new(&gw.plain(), &token);
    let session = dev.login("alice");
    let job = Uuid::new_v4();
    let pages = vec![png(4_000_000, 6)];
    let body = job_body(
        &json!({"workflow": "scan-to-folder", "page_count": 1}),
        &pages,
    );

    // Send the headers and half the body, then drop the connection.
    let mut stream = TcpStream::connect(gw.plain()).unwrap();
    let head = format!(
        "PUT /api/v1/jobs/{job} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nX-Scan-Session: {session}\r\n\
         Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(&body[..body.len() / 2]).unwrap();
    stream.flush().unwrap();
    // The upload is in the spool before it is cut off; otherwise "nothing
    // left behind" below would prove nothing.
    let jobs_dir = site.data_dir("gw-a").join(format!("gw-a-spool/jobs/{job}"));
    let started = eventually(Duration::from_secs(10), || {
        jobs_dir.join("page-0001.png").exists().then_some(())
    });
    assert!(started.is_some(), "the upload never reached the spool");
    drop(stream);

    let emptied = eventually(Duration::from_secs(10), || {
        (!jobs_dir.exists()).then_some(())
    });
    assert!(
        emptied.is_some(),
        "the cut-off upload's files were not removed"
    );
    assert_eq!(dev.job(job).status, 404, "nothing was committed");

    let retry = dev.submit_raw(&session, job, &body);
    assert_eq!(retry.status, 201, "the retry is a fresh, complete upload");
    assert_eq!(
        std::fs::metadata(jobs_dir.join("page-0001.png"))
            .unwrap()
            .len(),
        4_000_000
    );
}
