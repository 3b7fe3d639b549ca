//! Real failures, made on loopback, classified by the documented rule.

use std::time::Duration;

use mfd_sim::{
    classify::{Classification, FailoverCause, classify_error},
    client::GatewayClient,
    error::ClientError,
    transport::Timeouts,
};

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
