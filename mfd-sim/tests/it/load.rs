//! The benchmark load client: exactly N requests, identical bodies, fresh
//! paths, counted outcomes.

use std::collections::{BTreeMap, HashSet};

use http::Method;
use mfd_sim::{
    load::{self, LoadBody, LoadConfig, LoadTarget},
    progress::ProgressStyle,
};
use uuid::Uuid;

use crate::support::*;

fn config(
    url: &str,
    target: LoadTarget,
    body: LoadBody,
    requests: u64,
    concurrency: usize,
) -> LoadConfig {
    LoadConfig {
        url: url.to_owned(),
        trust: Some(trust()),
        timeouts: quick(),
        method: Method::PUT,
        headers: vec![load::parse_header("X-Bench: run-1").unwrap()],
        target,
        body,
        requests,
        concurrency,
    }
}

#[tokio::test]
async fn plain_load_sends_exactly_n_identical_bodies_to_fresh_paths() {
    let server = TestServer::https(handler(|_| json(201, serde_json::json!({})))).await;
    let body = LoadBody::page(20_000).unwrap();
    let url = format!("{}/dav/uploads/", server.url);
    let summary = load::run(
        config(&url, LoadTarget::Plain, body.clone(), 25, 4),
        ProgressStyle::Off,
    )
    .await
    .unwrap();

    let reqs = server.requests();
    assert_eq!(reqs.len(), 25);
    assert_eq!(
        (summary.requests, summary.succeeded, summary.failed),
        (25, 25, 0)
    );
    assert_eq!(summary.outcomes, BTreeMap::from([("201".to_owned(), 25)]));
    assert_eq!(summary.latency.count, 25);
    assert_eq!(summary.body_bytes, 20_000);
    let mut paths = HashSet::new();
    for r in &reqs {
        assert_eq!(r.method, Method::PUT);
        assert_eq!(r.body, body.bytes, "every request carries the same bytes");
        assert_eq!(r.header("content-type"), Some("image/png"));
        assert_eq!(r.header("x-bench"), Some("run-1"));
        let id = r
            .path
            .strip_prefix("/dav/uploads/")
            .expect("under the base path");
        Uuid::parse_str(id).expect("a fresh uuid per request");
        paths.insert(r.path.clone());
    }
    assert_eq!(paths.len(), 25, "no path is used twice");
    assert!(
        server.connections() <= 4,
        "at most one connection per worker, kept alive"
    );
}

#[tokio::test]
async fn gateway_load_sends_proper_job_uploads_with_the_same_page() {
    let server = TestServer::http(handler(|r| ack(&r.path, 201))).await;
    let target = LoadTarget::gateway("dev-token", "sess-9").unwrap();
    let body = LoadBody::job("scan-to-folder", 3000).unwrap();
    let page = LoadBody::page(3000).unwrap();
    let summary = load::run(config(&server.url, target, body, 6, 2), ProgressStyle::Off)
        .await
        .unwrap();
    assert_eq!(summary.succeeded, 6);
    let reqs = server.requests();
    assert_eq!(reqs.len(), 6);
    for r in reqs {
        let id = r.path.strip_prefix("/api/v1/jobs/").unwrap();
        Uuid::parse_str(id).unwrap();
        assert_eq!(r.header("authorization"), Some("Bearer dev-token"));
        assert_eq!(r.header("x-scan-session"), Some("sess-9"));
        let parts = parse_multipart(r.header("content-type").unwrap(), &r.body);
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].name, "manifest");
        let manifest: serde_json::Value = serde_json::from_slice(&parts[0].data).unwrap();
        assert_eq!(
            manifest,
            serde_json::json!({"workflow": "scan-to-folder", "page_count": 1})
        );
        assert_eq!(parts[1].name, "page");
        assert_eq!(parts[1].data, page.bytes);
    }
}

#[tokio::test]
async fn failures_are_counted_by_status_and_connection_errors_by_cause() {
    let server = TestServer::http(handler(|_| api_error(507, "insufficient_storage", None))).await;
    let s = load::run(
        config(
            &server.url,
            LoadTarget::Plain,
            LoadBody::page(500).unwrap(),
            7,
            3,
        ),
        ProgressStyle::Off,
    )
    .await
    .unwrap();
    assert_eq!((s.requests, s.succeeded, s.failed), (7, 0, 7));
    assert_eq!(s.outcomes, BTreeMap::from([("507".to_owned(), 7)]));
    assert_eq!(s.latency.count, 0);

    let refused = refused_url().await;
    let s = load::run(
        config(
            &refused,
            LoadTarget::Plain,
            LoadBody::page(500).unwrap(),
            3,
            2,
        ),
        ProgressStyle::Off,
    )
    .await
    .unwrap();
    assert_eq!(
        s.outcomes,
        BTreeMap::from([("error:web_service_down".to_owned(), 3)])
    );
}
