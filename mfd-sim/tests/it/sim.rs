//! The simulator: retries under the same job id, bounded attempts, failover,
//! sharing jobs among devices, waiting for jobs.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::Method;
use mfd_sim::{
    multipart::Page,
    progress::ProgressStyle,
    servers::ServerList,
    sim::{self, DeviceCredentials, RetryPolicy, SimConfig, WaitPolicy},
};

use crate::support::*;

fn config(urls: &[&str], devices: usize, jobs: u64, max_attempts: u32) -> SimConfig {
    SimConfig {
        servers: ServerList::new(urls.iter().map(|u| client(u)).collect()).unwrap(),
        devices: (0..devices)
            .map(|i| DeviceCredentials {
                name: format!("mfd-{i}"),
                token: format!("token-{i}"),
            })
            .collect(),
        user: "alice".into(),
        password: "pw".into(),
        workflow: "scan-to-folder".into(),
        jobs,
        pages: vec![
            Page::Memory(Bytes::from_static(b"page one")),
            Page::Memory(Bytes::from_static(b"page two")),
        ],
        concurrency: devices,
        retry: RetryPolicy {
            max_attempts,
            first_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(20),
        },
        wait: None,
    }
}

fn puts(server: &TestServer) -> Vec<String> {
    server
        .requests()
        .into_iter()
        .filter(|r| r.method == Method::PUT)
        .map(|r| r.path)
        .collect()
}

/// A gateway whose job uploads are answered by `put(n)` for the n-th upload
/// (from 0); logins always succeed and health says it accepts.
fn gateway(
    put: impl Fn(usize, &Recorded) -> Option<http::Response<http_body_util::Full<Bytes>>>
    + Send
    + Sync
    + 'static,
) -> Handler {
    let uploads = Arc::new(AtomicUsize::new(0));
    handler(move |r| match (r.method.as_str(), r.path.as_str()) {
        ("POST", "/api/v1/sessions") => session(),
        ("DELETE", "/api/v1/sessions/current") => json(200, serde_json::json!({})),
        ("GET", "/health") => health(true, "up", false, None),
        ("PUT", _) => put(uploads.fetch_add(1, Ordering::SeqCst), r),
        _ => api_error(404, "not_found", None),
    })
}

#[tokio::test]
async fn a_503_is_retried_under_the_same_job_id_and_given_up_after_max_attempts() {
    let server = TestServer::http(gateway(|_, _| {
        api_error(503, "data_service_down", Some("0"))
    }))
    .await;
    let summary = sim::run(config(&[&server.url], 1, 1, 3), ProgressStyle::Off)
        .await
        .unwrap();
    let puts = puts(&server);
    assert_eq!(puts.len(), 3, "exactly max_attempts uploads");
    assert!(
        puts.iter().all(|p| *p == puts[0]),
        "never a new job id: {puts:?}"
    );
    assert_eq!(
        (
            summary.submitted,
            summary.acknowledged,
            summary.failed,
            summary.attempts
        ),
        (1, 0, 1, 3)
    );
    assert_eq!(
        summary.failed_by_code,
        BTreeMap::from([("data_service_down".to_owned(), 1)])
    );
    assert_eq!(
        summary.causes_seen,
        BTreeMap::from([("data_service_down".to_owned(), 3)])
    );
    assert!(!summary.all_succeeded());
}

#[tokio::test]
async fn a_job_is_acknowledged_after_a_503_and_a_dropped_connection_under_one_id() {
    // The 503 closes its connection, so the dropped upload is on a fresh
    // connection: a drop on a kept-alive one would be repeated inside the
    // client (a documented, safe retry) and never reach the simulator.
    let server = TestServer::http(gateway(|n, r| match n {
        0 => api_error(503, "maintenance", Some("0")).map(|mut resp| {
            resp.headers_mut()
                .insert("connection", http::HeaderValue::from_static("close"));
            resp
        }),
        1 => None,
        _ => ack(&r.path, 201),
    }))
    .await;
    let summary = sim::run(config(&[&server.url], 1, 1, 5), ProgressStyle::Off)
        .await
        .unwrap();
    let puts = puts(&server);
    assert_eq!(puts.len(), 3);
    assert!(puts.iter().all(|p| *p == puts[0]), "{puts:?}");
    assert_eq!(
        (
            summary.acknowledged,
            summary.replayed,
            summary.failed,
            summary.attempts
        ),
        (1, 0, 0, 3)
    );
    assert_eq!(
        summary.causes_seen,
        BTreeMap::from([
            ("maintenance".to_owned(), 1),
            ("web_service_down".to_owned(), 1)
        ])
    );
    assert_eq!(summary.latency.count, 1);
    assert_eq!(summary.page_bytes, 16);
    assert!(summary.all_succeeded());
}

#[tokio::test]
async fn a_replayed_acknowledgement_is_counted_as_acknowledged_and_replayed() {
    let server = TestServer::http(gateway(
        |n, r| if n == 0 { None } else { ack(&r.path, 200) },
    ))
    .await;
    let s = sim::run(config(&[&server.url], 1, 1, 3), ProgressStyle::Off)
        .await
        .unwrap();
    assert_eq!((s.acknowledged, s.replayed), (1, 1));
}

#[tokio::test]
async fn failover_moves_to_the_secondary_and_keeps_the_job_id() {
    let primary = TestServer::http(handler(|r| match (r.method.as_str(), r.path.as_str()) {
        ("POST", "/api/v1/sessions") => session(),
        ("GET", "/health") => health(false, "up", true, Some("maintenance")),
        _ => api_error(503, "maintenance", Some("120")),
    }))
    .await;
    let secondary = TestServer::http(gateway(|_, r| ack(&r.path, 201))).await;
    let s = sim::run(
        config(&[&primary.url, &secondary.url], 1, 1, 3),
        ProgressStyle::Off,
    )
    .await
    .unwrap();
    assert_eq!((s.acknowledged, s.failovers, s.attempts), (1, 1, 2));
    assert_eq!(
        s.causes_seen,
        BTreeMap::from([("maintenance".to_owned(), 1)])
    );
    assert_eq!(
        puts(&primary),
        puts(&secondary),
        "the same job id on both servers"
    );
    // The session from the primary is used on the secondary (R2): no new login.
    let logins = secondary
        .requests()
        .iter()
        .filter(|r| r.method == Method::POST)
        .count();
    assert_eq!(logins, 0);
}

#[tokio::test]
async fn devices_share_the_jobs_with_unique_ids_and_log_out_at_the_end() {
    let server = TestServer::http(gateway(|_, r| ack(&r.path, 201))).await;
    let mut cfg = config(&[&server.url], 3, 10, 2);
    cfg.concurrency = 2;
    let s = sim::run(cfg, ProgressStyle::Off).await.unwrap();
    assert_eq!(
        (s.jobs, s.submitted, s.acknowledged, s.failed),
        (10, 10, 10, 0)
    );
    let reqs = server.requests();
    let ids: HashSet<_> = puts(&server).into_iter().collect();
    assert_eq!(ids.len(), 10, "every job has its own id");
    let tokens: HashSet<_> = reqs
        .iter()
        .filter_map(|r| r.header("authorization").map(str::to_owned))
        .collect();
    assert!(
        tokens.len() >= 2 && tokens.iter().all(|t| t.starts_with("Bearer token-")),
        "{tokens:?}"
    );
    let logouts = reqs.iter().filter(|r| r.method == Method::DELETE).count();
    let logins = reqs.iter().filter(|r| r.method == Method::POST).count();
    assert_eq!(logouts, logins, "every session that was opened is ended");
    for r in reqs.iter().filter(|r| r.method == Method::PUT) {
        let parts = parse_multipart(r.header("content-type").unwrap(), &r.body);
        let m: serde_json::Value = serde_json::from_slice(&parts[0].data).unwrap();
        assert_eq!(m["page_count"], 2);
        assert_eq!(&parts[2].data[..], b"page two");
    }
}

#[tokio::test]
async fn wrong_credentials_stop_the_device_instead_of_hammering_the_login() {
    let server = TestServer::http(handler(|_| api_error(401, "bad_credentials", None))).await;
    let s = sim::run(config(&[&server.url], 1, 5, 4), ProgressStyle::Off)
        .await
        .unwrap();
    assert_eq!(
        server.requests().len(),
        1,
        "one login, then the device stops"
    );
    assert_eq!((s.submitted, s.failed, s.acknowledged), (1, 1, 0));
    assert_eq!(
        s.failed_by_code,
        BTreeMap::from([("bad_credentials".to_owned(), 1)])
    );
}

#[tokio::test]
async fn waiting_reports_done_and_failed_jobs_with_processing_time() {
    // Job id -> (upload order, polls so far). Every job is `processing` when
    // first asked; then even uploads are `done` and odd ones `failed`.
    let jobs = Arc::new(Mutex::new(HashMap::<String, (usize, usize)>::new()));
    let server = TestServer::http(handler(move |r| {
        let id = r.path.rsplit('/').next().unwrap_or_default().to_owned();
        match (r.method.as_str(), r.path.as_str()) {
            ("POST", "/api/v1/sessions") => session(),
            ("DELETE", _) => json(200, serde_json::json!({})),
            ("PUT", _) => {
                let mut jobs = jobs.lock().unwrap();
                let order = jobs.len();
                jobs.insert(id, (order, 0));
                ack(&r.path, 201)
            }
            ("GET", p) if p.starts_with("/api/v1/jobs/") => {
                let mut jobs = jobs.lock().unwrap();
                let (order, polls) = jobs.get_mut(&id)?;
                *polls += 1;
                let state = match (*polls, *order % 2) {
                    (1, _) => "processing",
                    (_, 0) => "done",
                    _ => "failed",
                };
                json(
                    200,
                    serde_json::json!({
                        "job_id": id, "state": state,
                        "reason": (state == "failed").then_some("delivery: folder full"),
                        "workflow": "scan-to-folder", "pages": 2, "received_at": "2025-01-01T00:00:00Z",
                        "updated_at": "2025-01-01T00:00:02Z", "accepted_by": "gw-test", "steps": []
                    }),
                )
            }
            _ => api_error(404, "not_found", None),
        }
    }))
    .await;
    let mut cfg = config(&[&server.url], 2, 4, 2);
    cfg.wait = Some(WaitPolicy {
        poll_interval: Duration::from_millis(10),
        timeout: Duration::from_secs(10),
    });
    let s = sim::run(cfg, ProgressStyle::Off).await.unwrap();
    let w = s.wait.clone().expect("a wait summary");
    assert_eq!((w.done, w.failed, w.unfinished), (2, 2, 0));
    assert_eq!(
        w.failed_reasons,
        BTreeMap::from([("delivery: folder full".to_owned(), 2)])
    );
    assert_eq!((w.processing.count, w.processing.max_ms), (4, 2000.0));
    let polls = server
        .requests()
        .iter()
        .filter(|r| r.method == Method::GET)
        .count();
    assert_eq!(
        polls, 8,
        "each job is asked until it is finished, and then no more"
    );
    assert!(
        !s.all_succeeded(),
        "failed jobs mean the run did not fully succeed"
    );
}

#[tokio::test]
async fn waiting_gives_up_at_the_timeout() {
    let server = TestServer::http(gateway(|_, r| ack(&r.path, 201))).await;
    let mut cfg = config(&[&server.url], 1, 1, 1);
    cfg.wait = Some(WaitPolicy {
        poll_interval: Duration::from_millis(20),
        timeout: Duration::from_millis(200),
    });
    let started = std::time::Instant::now();
    let s = sim::run(cfg, ProgressStyle::Off).await.unwrap();
    // The fake answers job status with 404: never finished.
    assert_eq!(s.wait.unwrap().unfinished, 1);
    assert!(started.elapsed() < Duration::from_secs(3));
}
