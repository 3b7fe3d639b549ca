//! Real failures, made on loopback, classified by the documented rule.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use mfd_sim::{
    classify::{Classification, FailoverCause, classify_error},
    client::GatewayClient,
    error::ClientError,
    transport::Timeouts,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

fn cause(e: &ClientError) -> Classification {
    classify_error(e)
}

/// A refused connection means the host is there (its kernel answered) and
/// the service is not: cause 2, not a network failure.
#[tokio::test]
async fn a_refused_connection_is_web_service_down() {
    let url = refused_url().await;
    let e = client(&url).health().await.unwrap_err();
    assert!(
        matches!(&e, ClientError::Connect { source, .. } if source.kind() == std::io::ErrorKind::ConnectionRefused),
        "{e:?}"
    );
    assert_eq!(
        cause(&e),
        Classification::Failover(FailoverCause::WebServiceDown)
    );
}

/// A listener whose accept queue is full drops new SYNs, which is what a
/// silently dropping network looks like: the connect timeout notices it.
#[tokio::test]
async fn a_silent_drop_at_connect_is_network_within_the_connect_timeout() {
    let blackhole = Blackhole::start().await;
    let timeouts = Timeouts {
        connect: Duration::from_millis(300),
        response: Duration::from_secs(30),
        liveness_check_after: None,
    };
    let c = GatewayClient::new(&blackhole.url, None, timeouts).unwrap();
    let started = std::time::Instant::now();
    let e = c.health().await.unwrap_err();
    let took = started.elapsed();
    assert!(matches!(e, ClientError::ConnectTimeout { .. }), "{e:?}");
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert_eq!(cause(&e), Classification::Failover(FailoverCause::Network));
}

#[tokio::test]
async fn a_name_that_does_not_resolve_is_network() {
    let c = GatewayClient::new("http://no-such-host.invalid:8080", None, quick()).unwrap();
    let e = c.health().await.unwrap_err();
    assert!(
        matches!(
            e,
            ClientError::Resolve { .. } | ClientError::ConnectTimeout { .. }
        ),
        "{e:?}"
    );
    assert_eq!(cause(&e), Classification::Failover(FailoverCause::Network));
}

#[tokio::test]
async fn a_server_that_accepts_and_closes_is_web_service_down() {
    let server = RawServer::start(RawBehaviour::Close).await;
    let e = client(&server.url).health().await.unwrap_err();
    assert!(matches!(e, ClientError::ConnectionLost { .. }), "{e:?}");
    assert_eq!(
        cause(&e),
        Classification::Failover(FailoverCause::WebServiceDown)
    );
}

#[tokio::test]
async fn a_tls_port_that_accepts_and_closes_is_web_service_down() {
    let server = RawServer::start(RawBehaviour::Close).await;
    let url = server.url.replace("http://", "https://");
    let e = client(&url).health().await.unwrap_err();
    assert!(matches!(e, ClientError::ConnectionLost { .. }), "{e:?}");
    assert_eq!(
        cause(&e),
        Classification::Failover(FailoverCause::WebServiceDown)
    );
}

#[tokio::test]
async fn a_server_that_never_answers_times_out_as_web_service_down() {
    let server = RawServer::start(RawBehaviour::Silent).await;
    let timeouts = Timeouts {
        connect: Duration::from_secs(2),
        response: Duration::from_millis(300),
        // Only the response timeout ends this wait.
        liveness_check_after: None,
    };
    let c = GatewayClient::new(&server.url, None, timeouts).unwrap();
    let started = std::time::Instant::now();
    let e = c.health().await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the request timeout must bound the call"
    );
    assert!(matches!(e, ClientError::Timeout { .. }), "{e:?}");
    assert_eq!(
        cause(&e),
        Classification::Failover(FailoverCause::WebServiceDown)
    );
}

#[tokio::test]
async fn something_that_is_not_http_is_web_service_down() {
    let server = RawServer::start(RawBehaviour::Garbage).await;
    let e = client(&server.url).health().await.unwrap_err();
    assert!(matches!(e, ClientError::NotHttp { .. }), "{e:?}");
    assert_eq!(
        cause(&e),
        Classification::Failover(FailoverCause::WebServiceDown)
    );
}

#[tokio::test]
async fn an_untrusted_certificate_is_rejected_and_is_no_failover_cause() {
    let server = TestServer::https_untrusted(handler(|_| health(true, "up", false, None))).await;
    let e = client(&server.url).health().await.unwrap_err();
    assert!(
        matches!(e, ClientError::CertificateRejected { .. }),
        "{e:?}"
    );
    assert_eq!(cause(&e), Classification::CertificateRejected);
    assert!(
        e.to_string()
            .contains("the server's identity could not be verified"),
        "{e}"
    );
    assert!(
        server.requests().is_empty(),
        "no request may pass an untrusted handshake"
    );
}

#[tokio::test]
async fn service_unavailable_answers_carry_their_cause() {
    let server = TestServer::http(handler(|r| match r.path.as_str() {
        "/api/v1/device" => api_error(503, "data_service_down", Some("5")),
        "/api/v1/workflows" => api_error(503, "maintenance", Some("60")),
        "/api/v1/jobs?limit=2" => api_error(503, "busy", Some("1")),
        _ => api_error(413, "page_too_large", None),
    }))
    .await;
    let c = client(&server.url).with_token("t").unwrap();
    let data = c.device().await.unwrap_err();
    assert_eq!(
        cause(&data),
        Classification::Failover(FailoverCause::DataServiceDown)
    );
    let maintenance = c.workflows().await.unwrap_err();
    assert_eq!(
        cause(&maintenance),
        Classification::Failover(FailoverCause::Maintenance)
    );
    let too_large = c.jobs(1).await.unwrap_err();
    assert_eq!(cause(&too_large), Classification::NotFailover);
    let busy = c.jobs(2).await.unwrap_err();
    assert_eq!(cause(&busy), Classification::RetrySameServer);
}

/// A server that vanishes without a trace while the device holds a
/// kept-alive connection to it: the next request is sent on that
/// connection and hears nothing, no connect happens, and the long response
/// timeout would hold the device for minutes. The liveness check on a new
/// connection finds no path to the host: cause 1, within the check's wait
/// plus the connect timeout.
#[tokio::test]
async fn a_server_that_vanishes_under_a_kept_alive_connection_is_network_within_a_second() {
    let server = TestServer::http(handler(|_| health(true, "up", false, None))).await;
    let proxy = FaultProxy::start(&server.url).await;
    let timeouts = Timeouts {
        connect: Duration::from_millis(500),
        response: Duration::from_secs(30),
        liveness_check_after: Some(Duration::from_millis(200)),
    };
    let c = GatewayClient::new(&proxy.url, None, timeouts).unwrap();
    c.health().await.unwrap();
    assert_eq!(server.connections(), 1);
    proxy.set(ProxyMode::Silent).await;
    let started = std::time::Instant::now();
    let e = c.health().await.unwrap_err();
    let took = started.elapsed();
    let ClientError::Silent { check, waited, .. } = &e else {
        panic!("{e:?}")
    };
    assert!(
        matches!(**check, ClientError::ConnectTimeout { .. }),
        "{check:?}"
    );
    assert!(*waited >= Duration::from_millis(200), "{waited:?}");
    assert!(
        took >= Duration::from_millis(700) && took < Duration::from_millis(1500),
        "took {took:?}"
    );
    assert_eq!(cause(&e), Classification::Failover(FailoverCause::Network));
    assert_eq!(server.connections(), 1, "no new connection got through");
}

/// A server that is merely slow to answer passes the liveness checks (its
/// `/health` answers on a new connection) and the request gets its answer.
#[tokio::test]
async fn a_slow_answer_from_a_server_that_is_there_is_waited_for() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let checks = Arc::new(AtomicUsize::new(0));
    let seen = checks.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let body = if head.starts_with(b"GET /health ") {
                    seen.fetch_add(1, Ordering::SeqCst);
                    r#"{"instance":"gw","role":"primary","web":"up","data":"up","maintenance":false,"accepting":true}"#
                } else {
                    tokio::time::sleep(Duration::from_millis(1300)).await;
                    r#"{"workflows":["scan-to-folder"]}"#
                };
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(answer.as_bytes()).await;
            });
        }
    });
    let timeouts = Timeouts {
        connect: Duration::from_millis(500),
        response: Duration::from_secs(30),
        liveness_check_after: Some(Duration::from_millis(200)),
    };
    let c = GatewayClient::new(&url, None, timeouts)
        .unwrap()
        .with_token("t")
        .unwrap();
    assert_eq!(c.workflows().await.unwrap(), ["scan-to-folder"]);
    // Checks after 200 ms of silence, then 400 ms after that one, then 800.
    let n = checks.load(Ordering::SeqCst);
    assert!((2..=3).contains(&n), "{n} checks");
    task.abort();
}
