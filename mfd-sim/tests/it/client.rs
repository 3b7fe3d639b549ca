//! The client against in-test servers that speak docs/API.md.

use std::{io::Write, time::Duration};

use bytes::Bytes;
use http::StatusCode;
use mfd_sim::{
    api::{JobState, Role},
    error::ClientError,
    multipart::{Manifest, Page},
};
use uuid::Uuid;

use crate::support::*;

#[tokio::test]
async fn register_sends_name_and_serial_without_a_token() {
    let server = TestServer::http(handler(|_| {
        json(
            202,
            serde_json::json!({"device_id": "dev-7", "token": "tok", "status": "pending"}),
        )
    }))
    .await;
    let c = client(&server.url).with_token("must-not-be-sent").unwrap();
    let r = c.register("mfd-3rd-floor", Some("SN1")).await.unwrap();
    assert_eq!(
        (r.device_id.as_str(), r.token.as_str(), r.status.as_str()),
        ("dev-7", "tok", "pending")
    );
    let req = &server.requests()[0];
    assert_eq!(
        (req.method.as_str(), req.path.as_str()),
        ("POST", "/api/v1/devices/register")
    );
    assert_eq!(req.header("authorization"), None);
    assert_eq!(req.header("content-type"), Some("application/json"));
    let body: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"name": "mfd-3rd-floor", "serial": "SN1"})
    );
}

#[tokio::test]
async fn device_calls_carry_the_bearer_token_and_parse_the_documented_answers() {
    let job = Uuid::new_v4();
    let server = TestServer::http(handler(move |r| match r.path.as_str() {
        "/api/v1/device" => json(
            200,
            serde_json::json!({"device_id": "d1", "name": "mfd-1", "status": "approved", "within_seats": true}),
        ),
        "/api/v1/workflows" => json(200, serde_json::json!({"workflows": ["scan-to-folder", "scan-to-mail"]})),
        "/api/v1/jobs?limit=2" => json(200, serde_json::json!({"jobs": []})),
        p if p == format!("/api/v1/jobs/{job}") => json(
            200,
            serde_json::json!({
                "job_id": job, "state": "failed", "reason": "ocr: engine missing", "workflow": "scan-to-folder",
                "pages": 2, "received_at": "2025-01-01T00:00:00Z", "updated_at": "2025-01-01T00:00:05+01:00",
                "accepted_by": "gw-b",
                "steps": [{"step": 1, "plugin": "ocr", "attempt": 3, "outcome": "failed", "reason": "engine missing"}]
            }),
        ),
        _ => api_error(404, "not_found", None),
    }))
    .await;
    let c = client(&server.url).with_token("t0ken").unwrap();
    let d = c.device().await.unwrap();
    assert!(d.within_seats);
    assert_eq!(
        c.workflows().await.unwrap(),
        ["scan-to-folder", "scan-to-mail"]
    );
    assert!(c.jobs(2).await.unwrap().is_empty());
    let status = c.job(job).await.unwrap();
    assert_eq!(status.state, JobState::Failed);
    assert_eq!(status.steps[0].attempt, 3);
    assert_eq!(status.steps[0].step, 1);
    assert_eq!(
        (status.updated_at - status.received_at).num_seconds(),
        -3595
    );
    for req in server.requests() {
        assert_eq!(
            req.header("authorization"),
            Some("Bearer t0ken"),
            "{}",
            req.path
        );
        assert_eq!(
            req.header("host"),
            Some(server.url.trim_start_matches("http://"))
        );
    }
}

#[tokio::test]
async fn login_and_logout_carry_the_credentials_and_the_session() {
    let server = TestServer::http(handler(|r| match (r.method.as_str(), r.path.as_str()) {
        ("POST", "/api/v1/sessions") => session(),
        ("DELETE", "/api/v1/sessions/current") => Some(
            http::Response::builder()
                .status(204)
                .body(Default::default())
                .unwrap(),
        ),
        _ => api_error(404, "not_found", None),
    }))
    .await;
    let c = client(&server.url).with_token("t").unwrap();
    let s = c.login("alice", "pw").await.unwrap();
    assert_eq!((s.session.as_str(), s.user.as_str()), ("sess-1", "alice"));
    c.logout(&s.session).await.unwrap();
    let reqs = server.requests();
    let body: serde_json::Value = serde_json::from_slice(&reqs[0].body).unwrap();
    assert_eq!(body, serde_json::json!({"user": "alice", "password": "pw"}));
    assert_eq!(reqs[1].header("x-scan-session"), Some("sess-1"));
    assert_eq!(reqs[1].header("authorization"), Some("Bearer t"));
}

#[tokio::test]
async fn a_job_upload_is_the_manifest_first_then_every_page_in_order() {
    let server = TestServer::http(handler(|r| ack(&r.path, 201))).await;
    let mut file = tempfile::NamedTempFile::new().unwrap();
    let big: Vec<u8> = (0..1_500_000u32).map(|i| (i * 7 % 256) as u8).collect();
    file.write_all(&big).unwrap();
    let pages = vec![
        Page::Memory(Bytes::from_static(b"first page bytes")),
        Page::from_file(file.path()).await.unwrap(),
        Page::Memory(Bytes::from_static(b"third")),
    ];
    let manifest = Manifest::new("scan-to-folder", 3).with_metadata("matter", "A-17");
    let job_id = Uuid::new_v4();
    let c = client(&server.url).with_token("t").unwrap();
    let submitted = c
        .submit_job(job_id, "sess-1", &manifest, &pages)
        .await
        .unwrap();
    assert!(!submitted.replayed);
    assert_eq!(submitted.ack.job_id, job_id);
    assert_eq!(submitted.ack.role, Role::Primary);

    let req = &server.requests()[0];
    assert_eq!(
        (req.method.as_str(), req.path.clone()),
        ("PUT", format!("/api/v1/jobs/{job_id}"))
    );
    assert_eq!(req.header("x-scan-session"), Some("sess-1"));
    assert_eq!(
        req.header("content-length"),
        Some(req.body.len().to_string().as_str())
    );
    let parts = parse_multipart(req.header("content-type").unwrap(), &req.body);
    let names: Vec<_> = parts.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["manifest", "page", "page", "page"]);
    let sent: serde_json::Value = serde_json::from_slice(&parts[0].data).unwrap();
    assert_eq!(
        sent,
        serde_json::json!({"workflow": "scan-to-folder", "page_count": 3, "metadata": {"matter": "A-17"}})
    );
    assert_eq!(&parts[1].data[..], b"first page bytes");
    assert_eq!(parts[2].data, big);
    assert_eq!(&parts[3].data[..], b"third");
}

#[tokio::test]
async fn a_repeated_job_id_is_reported_as_a_replay() {
    let server = TestServer::http(handler(|r| ack(&r.path, 200))).await;
    let c = client(&server.url).with_token("t").unwrap();
    let page = [Page::Memory(Bytes::from_static(b"p"))];
    let s = c
        .submit_job(Uuid::new_v4(), "s", &Manifest::new("w", 1), &page)
        .await
        .unwrap();
    assert!(s.replayed);
}

#[tokio::test]
async fn error_bodies_become_typed_errors_with_status_code_message_and_retry_after() {
    let server = TestServer::http(handler(|r| match r.path.as_str() {
        "/api/v1/device" => api_error(503, "data_service_down", Some("30")),
        "/api/v1/workflows" => api_error(422, "unknown_workflow", None),
        _ => Some(
            http::Response::builder()
                .status(502)
                .body(Bytes::from_static(b"<html>502 Bad Gateway</html>").into())
                .unwrap(),
        ),
    }))
    .await;
    let c = client(&server.url).with_token("t").unwrap();
    let e = c.device().await.unwrap_err();
    let h = e.http().expect("an HTTP error");
    assert_eq!(h.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(h.code.as_deref(), Some("data_service_down"));
    assert_eq!(h.message, "test says data_service_down");
    assert_eq!(h.retry_after, Some(Duration::from_secs(30)));

    let h = c.workflows().await.unwrap_err();
    assert_eq!(h.http().unwrap().code.as_deref(), Some("unknown_workflow"));
    assert_eq!(h.http().unwrap().retry_after, None);

    let e = c.jobs(1).await.unwrap_err();
    let h = e.http().unwrap();
    assert_eq!((h.status.as_u16(), h.code.as_deref()), (502, None));
    assert!(h.message.contains("502 Bad Gateway"));
}

#[tokio::test]
async fn health_is_an_answer_for_200_and_503_and_an_error_otherwise() {
    let server = TestServer::http(handler(|r| {
        if r.path == "/health" {
            health(false, "down", false, Some("data-service-down"))
        } else {
            api_error(404, "not_found", None)
        }
    }))
    .await;
    let h = client(&server.url).health().await.unwrap();
    assert!(!h.accepting);
    assert_eq!(h.reason.as_deref(), Some("data-service-down"));
    assert_eq!(server.requests()[0].header("authorization"), None);

    let elsewhere = TestServer::http(handler(|_| api_error(404, "not_found", None))).await;
    let e = client(&elsewhere.url).health().await.unwrap_err();
    assert_eq!(e.http().unwrap().status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn https_works_with_the_gateways_certificate_and_reuses_one_connection() {
    let server = TestServer::https(handler(|_| health(true, "up", false, None))).await;
    let c = client(&server.url);
    for _ in 0..3 {
        assert!(c.health().await.unwrap().accepting);
    }
    assert_eq!(server.requests().len(), 3);
    assert_eq!(
        server.connections(),
        1,
        "calls should share one kept-alive connection"
    );
}

#[tokio::test]
async fn a_kept_alive_connection_lost_in_a_race_is_replaced_once() {
    let server = RawServer::start(RawBehaviour::AnswerOnceThenDrop).await;
    let c = client(&server.url).with_token("t").unwrap();
    assert_eq!(c.workflows().await.unwrap(), ["scan-to-mail"]);
    // The second call goes out on the kept-alive connection, which the
    // server drops; the client repeats it once on a new connection.
    assert_eq!(c.workflows().await.unwrap(), ["scan-to-mail"]);
    assert_eq!(
        server.connections.load(std::sync::atomic::Ordering::SeqCst),
        2
    );
    assert_eq!(server.requests.load(std::sync::atomic::Ordering::SeqCst), 3);
}

#[tokio::test]
async fn registration_is_never_repeated_on_a_lost_connection() {
    let server = RawServer::start(RawBehaviour::AnswerOnceThenDrop).await;
    let c = client(&server.url);
    c.workflows().await.unwrap();
    let e = c.register("mfd", None).await.unwrap_err();
    assert!(matches!(e, ClientError::ConnectionLost { .. }), "{e:?}");
    assert_eq!(
        server.connections.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
}

#[tokio::test]
async fn https_without_the_certificate_is_refused_before_connecting() {
    let e = mfd_sim::client::GatewayClient::new("https://127.0.0.1:1", None, quick()).unwrap_err();
    assert!(matches!(e, ClientError::NoTrust { .. }), "{e:?}");
}

#[tokio::test]
async fn a_page_file_that_cannot_be_read_is_a_local_error_not_a_failover() {
    let server = TestServer::http(handler(|r| ack(&r.path, 201))).await;
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(&[9u8; 1000]).unwrap();
    // Described as longer than it is: the upload must fail, not send short.
    let page = Page::File {
        path: file.path().to_owned(),
        len: 400_000,
    };
    let c = client(&server.url).with_token("t").unwrap();
    let e = c
        .submit_job(Uuid::new_v4(), "s", &Manifest::new("w", 1), &[page])
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::Page { path, .. } if path == file.path()),
        "{e:?}"
    );
    assert_eq!(
        mfd_sim::classify::classify_error(&e),
        mfd_sim::classify::Classification::NotFailover
    );
    assert!(
        server.requests().is_empty(),
        "a short upload must never reach the handler"
    );
}
