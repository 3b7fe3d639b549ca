//! The `mfd-sim` binary end to end against in-test servers: arguments in,
//! output and exit status out.

use std::{io::Write, process::Output, time::Duration};

use http::Method;

use crate::support::*;

async fn mfd_sim(args: &[&str]) -> Output {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_mfd-sim"))
        .args(args)
        .env_remove("MFD_SIM_PASSWORD")
        .env_remove("MFD_SIM_TOKEN")
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("mfd-sim finished in time")
        .expect("mfd-sim started")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn load_prints_a_json_summary_of_exactly_the_requests_sent() {
    let server = TestServer::https(handler(|_| json(201, serde_json::json!({})))).await;
    let ca = fixture("gateway-test-cert.pem");
    let out = mfd_sim(&[
        "load",
        "--url",
        &server.url,
        "--ca",
        ca.to_str().unwrap(),
        "--size",
        "2k",
        "--requests",
        "5",
        "--concurrency",
        "2",
        "--header",
        "X-Run: cli",
        "--json",
        "--quiet",
    ])
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["succeeded"], 5);
    assert_eq!(summary["body_bytes"], 2000);
    assert_eq!(server.requests().len(), 5);
    assert!(
        server
            .requests()
            .iter()
            .all(|r| r.header("x-run") == Some("cli"))
    );
}

#[tokio::test]
async fn load_against_the_gateway_and_the_baseline_sends_identical_bodies() {
    let gateway = TestServer::http(handler(|r| ack(&r.path, 201))).await;
    let baseline = TestServer::http(handler(|_| json(201, serde_json::json!({})))).await;
    let g = mfd_sim(&[
        "load",
        "--url",
        &gateway.url,
        "--size",
        "3000",
        "--requests",
        "2",
        "--multipart-gateway",
        "tok,sess,scan-to-folder",
        "--json",
        "--quiet",
    ])
    .await;
    let b = mfd_sim(&[
        "load",
        "--url",
        &baseline.url,
        "--size",
        "3000",
        "--requests",
        "2",
        "--multipart-body",
        "scan-to-folder",
        "--json",
        "--quiet",
    ])
    .await;
    assert!(
        g.status.success() && b.status.success(),
        "{}{}",
        text(&g.stderr),
        text(&b.stderr)
    );
    let (g, b): (serde_json::Value, serde_json::Value) = (
        serde_json::from_slice(&g.stdout).unwrap(),
        serde_json::from_slice(&b.stdout).unwrap(),
    );
    assert_eq!(g["body_fnv1a64"], b["body_fnv1a64"]);
    assert_eq!(gateway.requests()[0].body, baseline.requests()[0].body);
    assert!(gateway.requests()[0].path.starts_with("/api/v1/jobs/"));
}

#[tokio::test]
async fn run_exits_non_zero_and_says_why_when_jobs_fail() {
    let server = TestServer::http(handler(|r| match (r.method.as_str(), r.path.as_str()) {
        ("POST", "/api/v1/sessions") => session(),
        ("PUT", _) => api_error(503, "data_service_down", Some("0")),
        _ => json(200, serde_json::json!({})),
    }))
    .await;
    let mut devices = tempfile::NamedTempFile::new().unwrap();
    devices
        .write_all(br#"[{"name": "mfd-1", "token": "t1"}]"#)
        .unwrap();
    let out = mfd_sim(&[
        "run",
        "--server",
        &server.url,
        "--devices-file",
        devices.path().to_str().unwrap(),
        "--user",
        "alice",
        "--password",
        "pw",
        "--workflow",
        "scan-to-folder",
        "--jobs",
        "1",
        "--pages",
        "1",
        "--page-source",
        "random",
        "--page-bytes",
        "1000",
        "--max-attempts",
        "2",
        "--quiet",
    ])
    .await;
    assert!(!out.status.success());
    let stdout = text(&out.stdout);
    assert!(stdout.contains("1 × data_service_down"), "{stdout}");
    assert!(
        text(&out.stderr).contains("mfd-sim: 0 of 1 jobs were acknowledged"),
        "{}",
        text(&out.stderr)
    );
    let puts = server
        .requests()
        .into_iter()
        .filter(|r| r.method == Method::PUT)
        .count();
    assert_eq!(puts, 2);
}

#[tokio::test]
async fn submit_prints_the_acknowledgement_and_status_prints_the_job() {
    let server = TestServer::http(handler(|r| match (r.method.as_str(), r.path.as_str()) {
        ("POST", "/api/v1/sessions") => session(),
        ("PUT", _) => ack(&r.path, 201),
        ("GET", p) if p.starts_with("/api/v1/jobs/") => json(
            200,
            serde_json::json!({
                "job_id": p.rsplit('/').next().unwrap(), "state": "done", "workflow": "scan-to-folder", "pages": 1,
                "received_at": "2025-01-01T00:00:00Z", "updated_at": "2025-01-01T00:00:01Z", "accepted_by": "gw-test"
            }),
        ),
        _ => json(200, serde_json::json!({})),
    }))
    .await;
    let mut page = tempfile::NamedTempFile::new().unwrap();
    page.write_all(b"%PDF-1.4 not really").unwrap();
    let id = "0b6f4a52-6d7e-4c1e-9d55-3f0a5a1f2c11";
    let out = mfd_sim(&[
        "submit",
        "--server",
        &server.url,
        "--token",
        "t",
        "--user",
        "alice",
        "--password",
        "pw",
        "--workflow",
        "scan-to-folder",
        "--page",
        page.path().to_str().unwrap(),
        "--job-id",
        id,
        "--meta",
        "matter=A-17",
    ])
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let ack: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ack["job_id"], id);
    let methods: Vec<_> = server
        .requests()
        .iter()
        .map(|r| r.method.to_string())
        .collect();
    assert_eq!(methods, ["POST", "PUT", "DELETE"], "login, upload, logout");

    let out = mfd_sim(&["status", "--server", &server.url, "--token", "t", id]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["state"], "done");
}

#[tokio::test]
async fn unusable_arguments_fail_with_a_message_that_says_what_to_do() {
    let out = mfd_sim(&[
        "load",
        "--url",
        "http://127.0.0.1:1",
        "--size",
        "10",
        "--requests",
        "1",
    ])
    .await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("must be between"),
        "{}",
        text(&out.stderr)
    );

    let out = mfd_sim(&[
        "status",
        "--server",
        "https://127.0.0.1:1",
        "--token",
        "t",
        "0b6f4a52-6d7e-4c1e-9d55-3f0a5a1f2c11",
    ])
    .await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no CA/certificate file was given"),
        "{}",
        text(&out.stderr)
    );
}

/// A secondary that stores jobs, writes `{job_id}.pdf` into `delivered`
/// for each (`copies` files for the job stored `twice_at`-th, from 0),
/// answers their status as `done`, and `404` for others.
fn storing_secondary(delivered: std::path::PathBuf, twice_at: Option<usize>) -> Handler {
    let stored = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    handler(move |r| {
        let id = r.path.rsplit('/').next().unwrap_or_default().to_owned();
        match (r.method.as_str(), r.path.as_str()) {
            ("POST", "/api/v1/sessions") => session(),
            ("PUT", _) => {
                let mut stored = stored.lock().unwrap();
                if !stored.contains(&id) {
                    std::fs::write(delivered.join(format!("{id}.pdf")), b"%PDF").unwrap();
                    if twice_at == Some(stored.len()) {
                        std::fs::write(delivered.join(format!("copy-{id}.pdf")), b"%PDF").unwrap();
                    }
                    stored.push(id);
                }
                ack(&r.path, 201)
            }
            ("GET", p) if p.starts_with("/api/v1/jobs/") => {
                if !stored.lock().unwrap().contains(&id) {
                    return api_error(404, "not_found", None);
                }
                json(
                    200,
                    serde_json::json!({
                        "job_id": id, "state": "done", "workflow": "scan-to-folder", "pages": 1,
                        "received_at": "2025-01-01T00:00:00Z", "updated_at": "2025-01-01T00:00:01Z",
                        "accepted_by": "gw-test", "steps": []
                    }),
                )
            }
            _ => json(200, serde_json::json!({})),
        }
    })
}

fn fleet_args<'a>(
    primary: &'a str,
    secondary: &'a str,
    devices: &'a tempfile::NamedTempFile,
    dir: &'a std::path::Path,
) -> Vec<String> {
    [
        "run",
        "--server",
        primary,
        "--server",
        secondary,
        "--devices-file",
        devices.path().to_str().unwrap(),
        "--user",
        "alice",
        "--password",
        "pw",
        "--workflow",
        "scan-to-folder",
        "--page-source",
        "random",
        "--page-bytes",
        "1000",
        "--outbox",
        dir.join("outbox").to_str().unwrap(),
        "--report",
        dir.join("report.json").to_str().unwrap(),
        "--delivered",
        dir.join("delivered").to_str().unwrap(),
        "--json",
        "--quiet",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn two_devices() -> tempfile::NamedTempFile {
    let mut devices = tempfile::NamedTempFile::new().unwrap();
    devices
        .write_all(br#"[{"name": "mfd-1", "token": "t1"}, {"name": "mfd-2", "token": "t2"}]"#)
        .unwrap();
    devices
}

#[tokio::test]
async fn run_with_an_outbox_fails_over_and_reports_every_job() {
    let primary = refused_url().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("delivered")).unwrap();
    let secondary = TestServer::http(storing_secondary(dir.path().join("delivered"), None)).await;
    let devices = two_devices();
    let events = dir.path().join("events.jsonl");
    let mut args = fleet_args(&primary, &secondary.url, &devices, dir.path());
    args.extend(
        [
            "--jobs",
            "6",
            "--jobs-per-session",
            "2",
            "--wait",
            "--wait-timeout",
            "10",
            "--events",
            events.to_str().unwrap(),
        ]
        .map(str::to_owned),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = mfd_sim(&args).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["jobs_acknowledged"], 6);
    assert_eq!(summary["jobs_submitted"], 6);
    assert!(
        summary["failovers"]["web_service_down"].as_u64().unwrap() >= 2,
        "at least once per device: {summary}"
    );
    assert_eq!(summary["delivery"]["done"], 6);
    let r = &summary["reconciliation"];
    assert_eq!(
        (
            &r["jobs_checked"],
            &r["jobs_delivered"],
            &r["jobs_lost"],
            &r["jobs_duplicated"]
        ),
        (&6.into(), &6.into(), &0.into(), &0.into()),
        "{r}"
    );
    assert_eq!(r["held_by_server"][secondary.url.as_str()], 6);
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("report.json")).unwrap()).unwrap();
    let jobs = report["job_reports"].as_array().unwrap();
    assert_eq!(jobs.len(), 6);
    for job in jobs {
        assert_eq!(job["outcome"], "acknowledged");
        assert_eq!(job["server"], secondary.url.as_str());
        assert_eq!(job["verdict"], "ok");
        assert_eq!(job["files"], 1);
        assert_eq!(job["on_servers"][secondary.url.as_str()], "done");
        assert_eq!(job["on_servers"][primary.as_str()], "unreachable");
    }
    let puts = secondary
        .requests()
        .into_iter()
        .filter(|r| r.method == Method::PUT)
        .count();
    assert_eq!(puts, 6);
    // One person (session) per batch of two jobs on each device.
    let logins = secondary
        .requests()
        .into_iter()
        .filter(|r| r.method == Method::POST)
        .count();
    let per_device = |d: &str| jobs.iter().filter(|j| j["device"] == d).count();
    assert_eq!(
        logins,
        per_device("mfd-1").div_ceil(2) + per_device("mfd-2").div_ceil(2)
    );
    let logouts = secondary
        .requests()
        .into_iter()
        .filter(|r| r.method == Method::DELETE)
        .count();
    assert_eq!(logouts, logins, "every person logged out");
    // Both outboxes are empty.
    for d in ["mfd-1", "mfd-2"] {
        let jobs = dir.path().join("outbox").join(d).join("jobs");
        assert_eq!(std::fs::read_dir(jobs).unwrap().count(), 0);
    }
    // The events file has every acknowledgement and the failovers, as JSON lines.
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&events)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let acks = lines
        .iter()
        .filter(|e| e["event"] == "acknowledged")
        .count();
    assert_eq!(acks, 6);
    let failover = lines.iter().find(|e| e["event"] == "failover").unwrap();
    assert_eq!(failover["cause"], "web_service_down");
    assert_eq!(failover["server"], primary.as_str());
    assert!(failover["at_unix_us"].as_i64().unwrap() > 0);
}

/// Two documents of one job in the destination folder are a duplicate: the
/// run says so and fails.
#[tokio::test]
async fn run_reports_a_job_delivered_twice_as_duplicated_and_fails() {
    let primary = refused_url().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("delivered")).unwrap();
    let secondary =
        TestServer::http(storing_secondary(dir.path().join("delivered"), Some(1))).await;
    let devices = two_devices();
    let mut args = fleet_args(&primary, &secondary.url, &devices, dir.path());
    args.extend(["--jobs", "3"].map(str::to_owned));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = mfd_sim(&args).await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr)
            .contains("0 acknowledged jobs lost (on no server, or never delivered), 1 duplicated"),
        "{}",
        text(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let r = &summary["reconciliation"];
    assert_eq!(
        (&r["jobs_duplicated"], &r["jobs_lost"]),
        (&1.into(), &0.into())
    );
    assert_eq!(r["duplicated"].as_object().unwrap().len(), 1);
}
