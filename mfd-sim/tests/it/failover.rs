//! The failover client and its outbox against in-test servers: each cause
//! moves the job on and is recorded, the certificate event is its own,
//! maintenance holds a server for its `Retry-After`, busy and single 5xx
//! answers stay on the server, refusals go to `rejected/`, the outbox
//! survives a client dropped mid-upload, a lost acknowledgement is replayed
//! once, and failback waits for the person's session to end.

use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::Method;
use mfd_sim::{
    classify::FailoverCause,
    client::GatewayClient,
    failover::{Delivery, EventKind, FailoverClient, FailoverSettings, RequestError},
    multipart::{Manifest, Page},
    outbox::{Outbox, OutboxLimits},
    servers::ServerList,
    transport::TlsTrust,
};

use crate::support::*;

fn settings() -> FailoverSettings {
    FailoverSettings {
        server_error_pause: Duration::from_millis(10),
        busy_wait: Duration::from_millis(10),
        failback_probe_interval: Duration::from_millis(50),
        failback_good_probes: 2,
        ..FailoverSettings::default()
    }
}

fn failover(urls: &[&str], settings: FailoverSettings) -> FailoverClient {
    let list = ServerList::new(urls.iter().map(|u| client(u)).collect())
        .unwrap()
        .with_token("t")
        .unwrap();
    FailoverClient::new(list, settings)
}

fn outbox() -> (tempfile::TempDir, Outbox) {
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(dir.path().join("outbox"), OutboxLimits::default()).unwrap();
    (dir, outbox)
}

fn pages() -> Vec<Page> {
    vec![Page::Memory(Bytes::from_static(b"page one"))]
}

fn manifest() -> Manifest {
    Manifest::new("scan-to-folder", 1)
}

/// A gateway that logs in, logs out, says it is healthy and answers uploads
/// with `put(n, request)` for the n-th upload (from 0).
fn gateway(
    put: impl Fn(usize, &Recorded) -> Option<http::Response<http_body_util::Full<Bytes>>>
    + Send
    + Sync
    + 'static,
) -> Handler {
    let uploads = Arc::new(AtomicUsize::new(0));
    handler(move |r| match (r.method.as_str(), r.path.as_str()) {
        ("POST", "/api/v1/sessions") => session(),
        ("DELETE", "/api/v1/sessions/current") => Some(
            http::Response::builder()
                .status(204)
                .body(Default::default())
                .unwrap(),
        ),
        ("GET", "/health") => health(true, "up", false, None),
        ("PUT", _) => put(uploads.fetch_add(1, Ordering::SeqCst), r),
        _ => api_error(404, "not_found", None),
    })
}

fn accepting() -> Handler {
    gateway(|_, r| ack(&r.path, 201))
}

fn puts(server: &TestServer) -> Vec<Recorded> {
    server
        .requests()
        .into_iter()
        .filter(|r| r.method == Method::PUT)
        .collect()
}

fn causes(c: &FailoverClient) -> Vec<(String, String)> {
    c.events()
        .into_iter()
        .map(|e| {
            let what = match e.kind {
                EventKind::Failover { cause, .. } => cause.to_string(),
                other => other.name().to_owned(),
            };
            (e.server, what)
        })
        .collect()
}

async fn scan_and_deliver(c: &FailoverClient, outbox: &Outbox) -> Result<Delivery, RequestError> {
    let job = c.scan(outbox, &manifest(), pages()).await.unwrap();
    c.deliver(outbox, &job).await
}

#[tokio::test]
async fn a_refused_primary_moves_the_job_to_the_secondary_and_records_web_service_down() {
    let primary = refused_url().await;
    let secondary = TestServer::http(accepting()).await;
    let c = failover(&[&primary, &secondary.url], settings());
    let (_d, outbox) = outbox();
    c.login("alice", "pw").await.unwrap();
    let Delivery::Acknowledged(d) = scan_and_deliver(&c, &outbox).await.unwrap() else {
        panic!("acknowledged")
    };
    assert_eq!((d.server_index, d.replayed), (1, false));
    assert_eq!(c.current_index(), 1);
    assert_eq!(
        causes(&c),
        [(primary.clone(), "web_service_down".to_owned())],
        "login met the refused primary once; the job went straight to the current server"
    );
    assert!(outbox.pending().unwrap().is_empty());
    let put = &puts(&secondary)[0];
    assert_eq!(put.header("x-scan-session"), Some("sess-1"));
    assert_eq!(put.header("x-scan-job-seq"), Some("1"));
    let json = serde_json::to_value(c.events()).unwrap();
    assert_eq!(json[0]["event"], "failover");
    assert_eq!(json[0]["cause"], "web_service_down");
    assert_eq!(json[0]["server"], primary);
}

#[tokio::test]
async fn a_silent_primary_is_left_after_the_connect_timeout_as_network() {
    let primary = Blackhole::start().await;
    let secondary = TestServer::http(accepting()).await;
    let list = ServerList::new(vec![
        GatewayClient::new(
            &primary.url,
            None,
            mfd_sim::transport::Timeouts {
                connect: Duration::from_millis(300),
                response: Duration::from_secs(30),
                liveness_check_after: None,
            },
        )
        .unwrap(),
        client(&secondary.url),
    ])
    .unwrap()
    .with_token("t")
    .unwrap();
    let c = FailoverClient::new(list, settings());
    let started = std::time::Instant::now();
    c.login("alice", "pw").await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(causes(&c), [(primary.url.clone(), "network".to_owned())]);
}

#[tokio::test]
async fn data_service_down_and_maintenance_are_recorded_and_maintenance_is_held_for_its_retry_after()
 {
    let primary = TestServer::http(gateway(|_, _| api_error(503, "maintenance", Some("60")))).await;
    // The secondary takes the first job and then loses its data service.
    let secondary = TestServer::http(gateway(|n, r| {
        if n == 0 {
            ack(&r.path, 201)
        } else {
            api_error(503, "data_service_down", Some("5"))
        }
    }))
    .await;
    let c = failover(&[&primary.url, &secondary.url], settings());
    let (_d, outbox) = outbox();
    c.login("alice", "pw").await.unwrap();
    assert!(matches!(
        scan_and_deliver(&c, &outbox).await.unwrap(),
        Delivery::Acknowledged(_)
    ));
    let e = scan_and_deliver(&c, &outbox).await.unwrap_err();
    let RequestError::NoServer {
        passed,
        retry_after,
    } = &e
    else {
        panic!("{e:?}")
    };
    // The primary said maintenance for 60 s: not asked again before that.
    assert_eq!(passed[1].reason, "held");
    assert!(
        retry_after.unwrap() > Duration::from_secs(50),
        "{retry_after:?}"
    );
    assert_eq!(puts(&primary).len(), 1);
    assert_eq!(
        causes(&c),
        [
            (primary.url.clone(), "maintenance".to_owned()),
            (secondary.url.clone(), "data_service_down".to_owned()),
        ]
    );
    assert_eq!(
        c.causes_seen().keys().copied().collect::<Vec<_>>(),
        [FailoverCause::DataServiceDown, FailoverCause::Maintenance]
    );
    // The job stays queued for later.
    assert_eq!(outbox.pending().unwrap().len(), 1);
    assert!(e.person_message().contains("kept on the device"));
}

#[tokio::test]
async fn a_rejected_certificate_moves_on_but_is_no_failover_cause() {
    let impostor = TestServer::https_untrusted(accepting()).await;
    let real = TestServer::https(accepting()).await;
    let c = failover(&[&impostor.url, &real.url], settings());
    let (_d, outbox) = outbox();
    c.login("alice", "pw").await.unwrap();
    assert!(matches!(
        scan_and_deliver(&c, &outbox).await.unwrap(),
        Delivery::Acknowledged(_)
    ));
    assert_eq!(
        causes(&c),
        [(impostor.url.clone(), "certificate_rejected".to_owned())]
    );
    assert!(c.causes_seen().is_empty(), "never counted as a cause");
    assert!(impostor.requests().is_empty(), "nothing was sent there");

    // With no server left, the person is told why.
    let alone = failover(&[&impostor.url], settings());
    let e = alone.login("alice", "pw").await.unwrap_err();
    assert_eq!(
        e.person_message(),
        "the server's identity could not be verified"
    );
}

#[tokio::test]
async fn a_pinned_certificate_fingerprint_is_trusted_and_any_other_is_rejected() {
    let real = TestServer::https(accepting()).await;
    let pinned = TlsTrust::pinned_sha256(gateway_cert_fingerprint());
    let c = GatewayClient::new(&real.url, Some(&pinned), quick()).unwrap();
    assert!(c.health().await.unwrap().accepting);

    let impostor = TestServer::https_untrusted(accepting()).await;
    let c = GatewayClient::new(&impostor.url, Some(&pinned), quick()).unwrap();
    let e = c.health().await.unwrap_err();
    assert!(
        matches!(e, mfd_sim::error::ClientError::CertificateRejected { .. }),
        "{e:?}"
    );
    assert!(impostor.requests().is_empty());
}

#[tokio::test]
async fn busy_and_a_single_server_error_are_retried_on_the_same_server() {
    let server = TestServer::http(gateway(|n, r| match n {
        0 => api_error(503, "busy", Some("0")),
        1 => api_error(409, "upload_in_progress", None),
        2 => api_error(500, "internal", None),
        _ => ack(&r.path, 201),
    }))
    .await;
    let other = TestServer::http(accepting()).await;
    let c = failover(&[&server.url, &other.url], settings());
    let (_d, outbox) = outbox();
    c.login("alice", "pw").await.unwrap();
    let Delivery::Acknowledged(d) = scan_and_deliver(&c, &outbox).await.unwrap() else {
        panic!()
    };
    assert_eq!(d.server_index, 0);
    assert!(c.events().is_empty(), "{:?}", c.events());
    assert!(puts(&other).is_empty());
    let ids: HashSet<_> = puts(&server).into_iter().map(|r| r.path).collect();
    assert_eq!(ids.len(), 1, "every retry carries the same job id");
}

#[tokio::test]
async fn repeated_server_errors_are_web_service_down() {
    let broken = TestServer::http(gateway(|_, _| api_error(500, "internal", None))).await;
    let other = TestServer::http(accepting()).await;
    let c = failover(&[&broken.url, &other.url], settings());
    let (_d, outbox) = outbox();
    c.login("alice", "pw").await.unwrap();
    let Delivery::Acknowledged(d) = scan_and_deliver(&c, &outbox).await.unwrap() else {
        panic!()
    };
    assert_eq!(d.server_index, 1);
    assert_eq!(puts(&broken).len(), 2);
    assert_eq!(
        causes(&c),
        [(broken.url.clone(), "web_service_down".to_owned())]
    );
}

#[tokio::test]
async fn a_refusal_retrying_cannot_fix_goes_to_rejected_and_others_stay_queued() {
    let server = TestServer::http(gateway(|n, _| {
        if n == 0 {
            api_error(422, "unknown_workflow", None)
        } else {
            api_error(401, "session_expired", None)
        }
    }))
    .await;
    let c = failover(&[&server.url], settings());
    let (_d, outbox) = outbox();
    c.login("alice", "pw").await.unwrap();
    let Delivery::Rejected(r) = scan_and_deliver(&c, &outbox).await.unwrap() else {
        panic!()
    };
    assert_eq!(
        (r.status, r.code.as_deref()),
        (422, Some("unknown_workflow"))
    );
    assert_eq!(outbox.rejected().unwrap().len(), 1);
    assert!(outbox.pending().unwrap().is_empty());

    let e = scan_and_deliver(&c, &outbox).await.unwrap_err();
    assert!(matches!(e, RequestError::Refused(_)), "{e:?}");
    assert_eq!(outbox.pending().unwrap().len(), 1, "kept for later");
    assert!(c.events().is_empty(), "a 4xx is no failover cause");
}

#[tokio::test]
async fn a_scan_needs_a_session_and_a_full_outbox_refuses_it() {
    let server = TestServer::http(accepting()).await;
    let c = failover(&[&server.url], settings());
    let dir = tempfile::tempdir().unwrap();
    let small = Outbox::open(dir.path(), OutboxLimits { max_bytes: Some(4) }).unwrap();
    let e = c.scan(&small, &manifest(), pages()).await.unwrap_err();
    assert!(matches!(e, RequestError::NoSession), "{e:?}");
    c.login("alice", "pw").await.unwrap();
    let e = c.scan(&small, &manifest(), pages()).await.unwrap_err();
    assert!(e.person_message().contains("is full"), "{e}");
}

/// A server stores the job but the answer never reaches the device; the
/// device sends the same id again and gets the original acknowledgement.
#[tokio::test]
async fn a_lost_acknowledgement_is_replayed_once_under_the_same_id() {
    let stored = Arc::new(Mutex::new(Vec::<String>::new()));
    let s = stored.clone();
    let server = TestServer::http(gateway(move |_, r| {
        let mut stored = s.lock().unwrap();
        if stored.contains(&r.path) {
            return ack(&r.path, 200);
        }
        stored.push(r.path.clone());
        None // stored, but the connection drops before the answer
    }))
    .await;
    // The same gateway reached twice (as through two addresses).
    let c = failover(&[&server.url, &server.url], settings());
    let (_d, outbox) = outbox();
    c.login("alice", "pw").await.unwrap();
    let Delivery::Acknowledged(d) = scan_and_deliver(&c, &outbox).await.unwrap() else {
        panic!()
    };
    assert!(d.replayed);
    assert_eq!(stored.lock().unwrap().len(), 1, "stored exactly once");
    assert!(outbox.pending().unwrap().is_empty());
}

/// The device crashes in the middle of an upload: the job is in the outbox,
/// and a client started afresh on the same outbox sends it with the same id
/// and session stamp, once.
#[tokio::test]
async fn the_outbox_survives_a_client_dropped_mid_upload() {
    let stalled = RawServer::start(RawBehaviour::Silent).await;
    let (dir, outbox) = outbox();
    // Log in where it works to get a session, then upload to a server that
    // takes the connection and never answers.
    let login = TestServer::http(accepting()).await;
    let c2 = failover(&[&login.url], settings());
    c2.login("alice", "pw").await.unwrap();
    let job = c2.scan(&outbox, &manifest(), pages()).await.unwrap();
    let job_id = job.job_id;
    let stalled_client = failover(&[&stalled.url], settings());
    let (o, j) = (outbox.clone(), job.clone());
    let upload = tokio::spawn(async move { stalled_client.deliver(&o, &j).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    upload.abort();
    let _ = upload.await;
    drop((c2, outbox));

    // Start-up after the crash.
    let server = TestServer::http(accepting()).await;
    let reopened = Outbox::open(dir.path().join("outbox"), OutboxLimits::default()).unwrap();
    let fresh = failover(&[&server.url], settings());
    let replayed = fresh.replay(&reopened).await.unwrap();
    assert_eq!(replayed.len(), 1);
    assert_eq!(replayed[0].0, job_id);
    assert!(matches!(replayed[0].1, Ok(Delivery::Acknowledged(_))));
    let put = puts(&server);
    assert_eq!(put.len(), 1, "sent once");
    assert_eq!(put[0].path, format!("/api/v1/jobs/{job_id}"));
    assert_eq!(put[0].header("x-scan-session"), Some("sess-1"));
    assert_eq!(put[0].header("x-scan-job-seq"), Some("1"));
    assert!(reopened.pending().unwrap().is_empty());
    assert!(
        fresh.replay(&reopened).await.unwrap().is_empty(),
        "nothing twice"
    );
}

/// A primary whose health and uploads follow a switch; while down it
/// answers `503 data_service_down` with `retry_after` when given.
fn switchable_with(up: Arc<AtomicBool>, retry_after: Option<&'static str>) -> Handler {
    handler(move |r| {
        let is_up = up.load(Ordering::SeqCst);
        match (r.method.as_str(), r.path.as_str()) {
            ("GET", "/health") if is_up => health(true, "up", false, None),
            ("GET", "/health") => health(false, "down", false, Some("data-service-down")),
            _ if !is_up => api_error(503, "data_service_down", retry_after),
            ("POST", "/api/v1/sessions") => session(),
            ("DELETE", _) => json(200, serde_json::json!({})),
            ("PUT", _) => ack(&r.path, 201),
            _ => api_error(404, "not_found", None),
        }
    })
}

/// A primary that follows a switch and sends no `Retry-After` (as the
/// gateway does for `data_service_down`).
fn switchable(up: Arc<AtomicBool>) -> Handler {
    switchable_with(up, None)
}

#[tokio::test]
async fn failback_waits_for_the_person_to_log_out() {
    let up = Arc::new(AtomicBool::new(false));
    let primary = TestServer::http(switchable(up.clone())).await;
    let secondary = TestServer::http(accepting()).await;
    let c = failover(&[&primary.url, &secondary.url], settings());
    let (_d, outbox) = outbox();
    c.login("alice", "pw").await.unwrap();
    assert_eq!(c.current_index(), 1);
    scan_and_deliver(&c, &outbox).await.unwrap();

    up.store(true, Ordering::SeqCst);
    // Plenty of probe rounds: the primary is healthy, but the person is
    // still at the panel.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(c.current_index(), 1, "never in the middle of a session");
    scan_and_deliver(&c, &outbox).await.unwrap();
    assert!(puts(&primary).is_empty());
    assert_eq!(puts(&secondary).len(), 2);

    c.logout().await.unwrap();
    assert_eq!(c.current_index(), 0, "back as soon as the session ended");
    let logout = secondary
        .requests()
        .into_iter()
        .find(|r| r.method == Method::DELETE)
        .unwrap();
    assert_eq!(logout.header("x-scan-session-jobs"), Some("2"));
    let names: Vec<_> = c.events().iter().map(|e| e.kind.name()).collect();
    assert_eq!(names, ["failover", "failback"]);
    assert_eq!(c.events()[1].server, primary.url);

    c.login("alice", "pw").await.unwrap();
    scan_and_deliver(&c, &outbox).await.unwrap();
    assert_eq!(puts(&primary).len(), 1);
}

#[tokio::test]
async fn failback_happens_after_an_idle_session_times_out() {
    let up = Arc::new(AtomicBool::new(false));
    let primary = TestServer::http(switchable(up.clone())).await;
    let secondary = TestServer::http(accepting()).await;
    let c = failover(
        &[&primary.url, &secondary.url],
        FailoverSettings {
            session_idle_limit: Duration::from_millis(300),
            ..settings()
        },
    );
    c.login("alice", "pw").await.unwrap();
    assert_eq!(c.current_index(), 1);
    up.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(c.current_index(), 1);
    let mut back = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if c.current_index() == 0 {
            back = true;
            break;
        }
    }
    assert!(
        back,
        "the walked-away session ended and the client failed back"
    );
    assert!(!c.session_active());
}

#[tokio::test]
async fn an_unhealthy_primary_is_not_failed_back_to() {
    let up = Arc::new(AtomicBool::new(false));
    let primary = TestServer::http(switchable(up)).await;
    let secondary = TestServer::http(accepting()).await;
    let c = failover(&[&primary.url, &secondary.url], settings());
    c.login("alice", "pw").await.unwrap();
    c.logout().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(c.current_index(), 1);
}

/// A server that asked for a pause with `Retry-After` is not failed back to
/// before the pause is over, however healthy it says it is.
#[tokio::test]
async fn failback_waits_out_a_retry_after_hold() {
    let up = Arc::new(AtomicBool::new(false));
    let primary = TestServer::http(switchable_with(up.clone(), Some("1"))).await;
    let secondary = TestServer::http(accepting()).await;
    let c = failover(&[&primary.url, &secondary.url], settings());
    let started = std::time::Instant::now();
    c.login("alice", "pw").await.unwrap();
    assert_eq!(c.current_index(), 1);
    up.store(true, Ordering::SeqCst);
    c.logout().await.unwrap();
    // Good probes every 50 ms, two needed: without the hold the client
    // would be back within about 150 ms.
    let mut back_after = None;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if c.current_index() == 0 {
            back_after = Some(started.elapsed());
            break;
        }
    }
    let back_after = back_after.expect("failed back once the hold was over");
    assert!(
        back_after >= Duration::from_secs(1),
        "failed back after {back_after:?}, inside the 1 s Retry-After"
    );
    assert_eq!(
        c.events().iter().map(|e| e.kind.name()).collect::<Vec<_>>(),
        ["failover", "failback"]
    );
}

/// The time from the start of a request that met a failover cause to the
/// other server's answer is kept, once per such request.
#[tokio::test]
async fn the_time_a_request_took_to_fail_over_is_recorded() {
    let primary = refused_url().await;
    let secondary = TestServer::http(accepting()).await;
    let c = failover(&[&primary, &secondary.url], settings());
    let (_d, outbox) = outbox();
    let started = std::time::Instant::now();
    c.login("alice", "pw").await.unwrap();
    scan_and_deliver(&c, &outbox).await.unwrap();
    let took = started.elapsed();
    let times = c.failover_times();
    assert_eq!(times.len(), 1, "the login failed over; the job did not");
    assert!(times[0] <= took, "{times:?} within {took:?}");
}

/// The primary ended the session and went silent before its answer came
/// back; the logout, repeated on the secondary, hears that the session is
/// over already. That is what the person asked for, and the secondary,
/// which answered, is where the next person starts: the client does not go
/// back to the server it just passed over.
#[tokio::test]
async fn a_logout_the_other_server_calls_over_already_succeeds_and_stays_there() {
    let gone = Arc::new(AtomicBool::new(false));
    let g = gone.clone();
    let switch = TestServer::http(handler(move |r| {
        if g.load(Ordering::SeqCst) {
            return None;
        }
        match (r.method.as_str(), r.path.as_str()) {
            ("POST", "/api/v1/sessions") => session(),
            ("GET", "/health") => health(true, "up", false, None),
            ("PUT", _) => ack(&r.path, 201),
            _ => api_error(404, "not_found", None),
        }
    }))
    .await;
    let secondary = TestServer::http(handler(|r| match (r.method.as_str(), r.path.as_str()) {
        ("DELETE", _) => api_error(401, "session_expired", None),
        ("POST", "/api/v1/sessions") => session(),
        ("GET", "/health") => health(true, "up", false, None),
        _ => api_error(404, "not_found", None),
    }))
    .await;
    let c = failover(&[&switch.url, &secondary.url], settings());
    c.login("alice", "pw").await.unwrap();
    gone.store(true, Ordering::SeqCst);
    c.logout().await.unwrap();
    assert!(!c.session_active());
    assert_eq!(c.current_index(), 1, "the server that answered");
    c.login("alice", "pw").await.unwrap();
    assert_eq!(
        c.events().len(),
        1,
        "the next login went straight to the secondary: {:?}",
        c.events()
    );
}
