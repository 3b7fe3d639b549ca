//! Owns the failover rule of R1: which of the four causes a failed call or a
//! `/health` answer shows. It is a set of pure functions; it must not do I/O,
//! keep state, or decide what to do about a cause (that is the caller's).

use std::{fmt, io};

use http::StatusCode;
use serde::{Deserialize, Serialize};

use crate::{
    api::{Health, ServiceState},
    error::ClientError,
};

/// The four reasons a device leaves a server for the next one (R1, after the
/// failover chapter of the GlobalScan 2.0 guide).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailoverCause {
    /// 1. Network or other connection failure: no working connection could be
    ///    made to the server at all.
    Network,
    /// 2. The web service is down: something is reachable, but no HTTP
    ///    answer comes from the gateway's web service.
    WebServiceDown,
    /// 3. The web service is up, but the data service behind it is down.
    DataServiceDown,
    /// 4. Web and data service are up, but the server is in maintenance mode.
    Maintenance,
}

impl FailoverCause {
    /// The stable name used in logs, summaries and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            FailoverCause::Network => "network",
            FailoverCause::WebServiceDown => "web_service_down",
            FailoverCause::DataServiceDown => "data_service_down",
            FailoverCause::Maintenance => "maintenance",
        }
    }
}

impl fmt::Display for FailoverCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a failure means for the device: leave the server (and why), stay
/// and try again, or tell the person.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Classification {
    /// Another server may well succeed; the device moves on and records the
    /// cause.
    Failover(FailoverCause),
    /// The server's certificate failed verification. The device moves on to
    /// the next server without sending anything, and records the security
    /// event `certificate_rejected`; it is deliberately none of the four
    /// causes, so an attacker in the path cannot pass as a network failure.
    CertificateRejected,
    /// The server works but asks the device to come back: a `503` with code
    /// `busy` from an overloaded server, or `409 upload_in_progress` while
    /// an earlier upload of the same job is still streaming. The device waits
    /// (`Retry-After` when given) and retries the same server.
    RetrySameServer,
    /// A `500` or another 5xx that is not `502`, `503` or `504`: a defect or
    /// a passing failure of that server. One is retried on the same server;
    /// *repeated* ones mean its web service is not working, and the failover
    /// client, which counts them, then records
    /// [`FailoverCause::WebServiceDown`].
    ServerError,
    /// Trying another server would not help: the request itself is at fault
    /// (a 4xx, reported to the person) or the problem is on the device.
    NotFailover,
}

impl Classification {
    /// The cause, when this is a failover.
    pub fn cause(self) -> Option<FailoverCause> {
        match self {
            Classification::Failover(cause) => Some(cause),
            _ => None,
        }
    }
}

/// Classifies a failed call.
///
/// The rule, by how far the call got:
///
/// - **No path to the host** → [`FailoverCause::Network`]: the name did not
///   resolve, the host or network is unreachable, or the connect did not
///   finish within the connect timeout (what a silent drop looks like).
/// - **The host answers, the service does not** →
///   [`FailoverCause::WebServiceDown`]: the connection was refused (the
///   host's kernel answered for a port nobody listens on), reset or closed
///   before a complete answer (during the TLS handshake included), stalled
///   past the response timeout, or something that is not HTTP (or not a
///   working TLS server) answered. Closing and resetting are treated alike on
///   purpose: a server that closes with unread request bytes makes the kernel
///   send a reset instead of a close, so which one the device sees is a race,
///   not information.
/// - **The server falls silent during a request** ([`ClientError::Silent`]):
///   the cause the check on a new connection met, `network` when it could
///   not connect in time.
/// - **The certificate fails verification** →
///   [`Classification::CertificateRejected`], its own event.
/// - **An HTTP answer** from a proxy in front of the gateway: `502` and `504`
///   mean the proxy has no working web service behind it →
///   [`FailoverCause::WebServiceDown`].
/// - **`503`** carries the gateway's reason in `code`: `data_service_down` →
///   [`FailoverCause::DataServiceDown`], `maintenance` →
///   [`FailoverCause::Maintenance`], `busy` →
///   [`Classification::RetrySameServer`]. Any other `503` (`not_licensed`, or
///   a proxy's own 503 without the API's error body, which is what HAProxy
///   sends when no backend is up) means the job service at that address is
///   not available → [`FailoverCause::WebServiceDown`].
/// - **Other 5xx** → [`Classification::ServerError`] (repeated ones become
///   web service down in the failover client).
/// - **`409 upload_in_progress`** → [`Classification::RetrySameServer`].
/// - **Anything else** → [`Classification::NotFailover`]: 4xx answers
///   (401, 403, 404, 409, 413, 415, 422, 429) are about the request, the
///   device or the user, and the other server would say the same; a success
///   status with an unexpected body, a page file that cannot be read, or a bad
///   URL or token is a local problem.
pub fn classify_error(error: &ClientError) -> Classification {
    use Classification::{CertificateRejected, Failover, NotFailover};
    match error {
        ClientError::Resolve { .. } | ClientError::ConnectTimeout { .. } => {
            Failover(FailoverCause::Network)
        }
        ClientError::Connect { source, .. } => Failover(classify_connect(source.kind())),
        // A server that fell silent during a request is classified by what
        // the check on a new connection met: no connection in time is no
        // path to the host, a refusal or a stalled answer is the service.
        ClientError::Silent { check, .. } => match classify_error(check) {
            Failover(cause) => Failover(cause),
            _ => Failover(FailoverCause::Network),
        },
        ClientError::CertificateRejected { .. } => CertificateRejected,
        ClientError::Tls { .. }
        | ClientError::ConnectionLost { .. }
        | ClientError::Timeout { .. }
        | ClientError::NotHttp { .. } => Failover(FailoverCause::WebServiceDown),
        ClientError::Http(http) => classify_status(http.status, http.code.as_deref()),
        ClientError::InvalidUrl { .. }
        | ClientError::Trust { .. }
        | ClientError::NoTrust { .. }
        | ClientError::InvalidHeader { .. }
        | ClientError::Build { .. }
        | ClientError::UnexpectedAnswer { .. }
        | ClientError::Page { .. } => NotFailover,
    }
}

/// The cause of a TCP connect that failed with this error: the host's own
/// answer (refused, reset) means the host is there and the service is not;
/// everything else means there is no usable path to the host.
fn classify_connect(kind: io::ErrorKind) -> FailoverCause {
    match kind {
        io::ErrorKind::ConnectionRefused
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted => FailoverCause::WebServiceDown,
        _ => FailoverCause::Network,
    }
}

/// Classifies an HTTP error status with the API's error `code`, following the
/// rule documented at [`classify_error`].
pub fn classify_status(status: StatusCode, code: Option<&str>) -> Classification {
    use Classification::{Failover, NotFailover, RetrySameServer, ServerError};
    match status {
        StatusCode::BAD_GATEWAY | StatusCode::GATEWAY_TIMEOUT => {
            Failover(FailoverCause::WebServiceDown)
        }
        StatusCode::SERVICE_UNAVAILABLE => match code {
            Some("data_service_down") => Failover(FailoverCause::DataServiceDown),
            Some("maintenance") => Failover(FailoverCause::Maintenance),
            Some("busy") => RetrySameServer,
            _ => Failover(FailoverCause::WebServiceDown),
        },
        StatusCode::CONFLICT if code == Some("upload_in_progress") => RetrySameServer,
        s if s.is_server_error() => ServerError,
        _ => NotFailover,
    }
}

/// Classifies a `/health` answer.
///
/// A server that says `accepting: true` is fine → [`Classification::NotFailover`].
/// Otherwise the causes are checked in the order of the guide, each assuming
/// the previous ones are not the case: `web: down` →
/// [`FailoverCause::WebServiceDown`]; `data: down` (or reason
/// `data-service-down`) → [`FailoverCause::DataServiceDown`]; `maintenance:
/// true` (or reason `maintenance`) → [`FailoverCause::Maintenance`]. A server
/// that does not accept jobs for any other reason (`not-licensed`, `fenced`,
/// one this device does not know) has no working job service at that address
/// → [`FailoverCause::WebServiceDown`].
pub fn classify_health(health: &Health) -> Classification {
    if health.accepting {
        return Classification::NotFailover;
    }
    let reason = health.reason.as_deref();
    let cause = if health.web == ServiceState::Down {
        FailoverCause::WebServiceDown
    } else if health.data == ServiceState::Down || reason == Some("data-service-down") {
        FailoverCause::DataServiceDown
    } else if health.maintenance || reason == Some("maintenance") {
        FailoverCause::Maintenance
    } else {
        FailoverCause::WebServiceDown
    };
    Classification::Failover(cause)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{api::Role, error::HttpError};
    use Classification::{Failover, NotFailover};
    use FailoverCause::*;
    use std::{io, time::Duration};

    fn http(status: u16, code: Option<&str>) -> ClientError {
        ClientError::Http(Box::new(HttpError {
            server: "http://gw".into(),
            status: StatusCode::from_u16(status).unwrap(),
            code: code.map(str::to_owned),
            message: "m".into(),
            retry_after: None,
        }))
    }

    fn server() -> String {
        "http://gw".into()
    }

    #[test]
    fn no_path_to_the_host_is_network() {
        for kind in [
            io::ErrorKind::HostUnreachable,
            io::ErrorKind::NetworkUnreachable,
            io::ErrorKind::AddrNotAvailable,
            io::ErrorKind::TimedOut,
        ] {
            let e = ClientError::Connect {
                server: server(),
                source: kind.into(),
            };
            assert_eq!(classify_error(&e), Failover(Network), "{kind:?}");
        }
        let e = ClientError::ConnectTimeout {
            server: server(),
            after: Duration::from_secs(1),
        };
        assert_eq!(classify_error(&e), Failover(Network));
        let e = ClientError::Resolve {
            server: server(),
            detail: "failed to lookup address information".into(),
        };
        assert_eq!(classify_error(&e), Failover(Network));
    }

    #[test]
    fn a_host_that_refuses_or_resets_is_web_service_down() {
        for kind in [
            io::ErrorKind::ConnectionRefused,
            io::ErrorKind::ConnectionReset,
            io::ErrorKind::ConnectionAborted,
        ] {
            let e = ClientError::Connect {
                server: server(),
                source: kind.into(),
            };
            assert_eq!(classify_error(&e), Failover(WebServiceDown), "{kind:?}");
        }
        let e = ClientError::Tls {
            server: server(),
            source: io::Error::new(io::ErrorKind::InvalidData, "received fatal alert"),
        };
        assert_eq!(classify_error(&e), Failover(WebServiceDown));
    }

    #[test]
    fn a_rejected_certificate_is_its_own_event_and_no_cause() {
        let e = ClientError::CertificateRejected {
            server: server(),
            detail: "UnknownIssuer".into(),
        };
        assert_eq!(classify_error(&e), Classification::CertificateRejected);
        assert_eq!(classify_error(&e).cause(), None);
        assert!(
            e.to_string()
                .contains("the server's identity could not be verified")
        );
    }

    #[test]
    fn a_connection_without_an_http_answer_is_web_service_down() {
        let lost = ClientError::ConnectionLost {
            server: server(),
            detail: "connection closed before message completed".into(),
        };
        let stalled = ClientError::Timeout {
            server: server(),
            after: Duration::from_secs(1),
            during: "waiting for the answer",
        };
        let garbage = ClientError::NotHttp {
            server: server(),
            detail: "invalid HTTP version parsed".into(),
        };
        for e in [lost, stalled, garbage] {
            assert_eq!(classify_error(&e), Failover(WebServiceDown), "{e}");
        }
    }

    #[test]
    fn a_server_silent_during_a_request_is_classified_by_the_check() {
        let silent = |check: ClientError| ClientError::Silent {
            server: server(),
            waited: Duration::from_millis(250),
            check: Box::new(check),
        };
        let no_connect = silent(ClientError::ConnectTimeout {
            server: server(),
            after: Duration::from_secs(1),
        });
        assert_eq!(classify_error(&no_connect), Failover(Network));
        let refused = silent(ClientError::Connect {
            server: server(),
            source: io::ErrorKind::ConnectionRefused.into(),
        });
        assert_eq!(classify_error(&refused), Failover(WebServiceDown));
        let odd = silent(ClientError::Build { detail: "d".into() });
        assert_eq!(classify_error(&odd), Failover(Network));
    }

    #[test]
    fn proxy_errors_are_web_service_down() {
        assert_eq!(classify_error(&http(502, None)), Failover(WebServiceDown));
        assert_eq!(classify_error(&http(504, None)), Failover(WebServiceDown));
    }

    #[test]
    fn service_unavailable_is_split_by_code() {
        assert_eq!(
            classify_error(&http(503, Some("data_service_down"))),
            Failover(DataServiceDown)
        );
        assert_eq!(
            classify_error(&http(503, Some("maintenance"))),
            Failover(Maintenance)
        );
        assert_eq!(
            classify_error(&http(503, Some("not_licensed"))),
            Failover(WebServiceDown)
        );
        assert_eq!(classify_error(&http(503, None)), Failover(WebServiceDown));
        assert_eq!(
            classify_error(&http(503, Some("busy"))),
            Classification::RetrySameServer
        );
    }

    #[test]
    fn other_server_errors_are_counted_not_failed_over_at_once() {
        for status in [500, 501, 507] {
            assert_eq!(
                classify_error(&http(status, Some("internal"))),
                Classification::ServerError,
                "{status}"
            );
        }
    }

    #[test]
    fn an_upload_still_in_progress_is_retried_on_the_same_server() {
        assert_eq!(
            classify_error(&http(409, Some("upload_in_progress"))),
            Classification::RetrySameServer
        );
    }

    #[test]
    fn request_faults_are_not_failover() {
        for (status, code) in [
            (400, "bad_request"),
            (401, "session_expired"),
            (401, "device_token_invalid"),
            (403, "device_revoked"),
            (404, "not_found"),
            (409, "job_id_conflict"),
            (409, "read_only_secondary"),
            (413, "page_too_large"),
            (415, "unsupported_page_format"),
            (422, "unknown_workflow"),
            (429, "rate_limited"),
        ] {
            assert_eq!(
                classify_error(&http(status, Some(code))),
                NotFailover,
                "{status} {code}"
            );
        }
    }

    #[test]
    fn local_problems_are_not_failover() {
        let local = [
            ClientError::InvalidUrl {
                url: "x".into(),
                reason: "r".into(),
            },
            ClientError::Trust {
                path: "ca.pem".into(),
                reason: "r".into(),
            },
            ClientError::NoTrust { server: server() },
            ClientError::InvalidHeader {
                what: "device token",
            },
            ClientError::Build { detail: "d".into() },
            ClientError::UnexpectedAnswer {
                server: server(),
                status: StatusCode::OK,
                detail: "d".into(),
            },
            ClientError::Page {
                path: "p.png".into(),
                source: io::ErrorKind::NotFound.into(),
            },
        ];
        for e in local {
            assert_eq!(classify_error(&e), NotFailover, "{e}");
        }
    }

    fn health(
        web: ServiceState,
        data: ServiceState,
        maintenance: bool,
        reason: Option<&str>,
    ) -> Health {
        Health {
            instance: "gw-a".into(),
            role: Role::Primary,
            epoch: 1,
            web,
            data,
            maintenance,
            accepting: false,
            reason: reason.map(str::to_owned),
            version: "0.1.0".into(),
            capabilities: vec![],
        }
    }

    #[test]
    fn health_answers_follow_the_guides_order() {
        use ServiceState::{Down, Up};
        let mut ok = health(Up, Up, false, None);
        ok.accepting = true;
        assert_eq!(classify_health(&ok), NotFailover);
        assert_eq!(
            classify_health(&health(Down, Down, true, None)),
            Failover(WebServiceDown)
        );
        assert_eq!(
            classify_health(&health(Up, Down, true, Some("data-service-down"))),
            Failover(DataServiceDown)
        );
        assert_eq!(
            classify_health(&health(Up, Up, false, Some("data-service-down"))),
            Failover(DataServiceDown)
        );
        assert_eq!(
            classify_health(&health(Up, Up, true, None)),
            Failover(Maintenance)
        );
        assert_eq!(
            classify_health(&health(Up, Up, false, Some("maintenance"))),
            Failover(Maintenance)
        );
        assert_eq!(
            classify_health(&health(Up, Up, false, Some("fenced"))),
            Failover(WebServiceDown)
        );
        assert_eq!(
            classify_health(&health(Up, Up, false, Some("not-licensed"))),
            Failover(WebServiceDown)
        );
        assert_eq!(
            classify_health(&health(Up, Up, false, None)),
            Failover(WebServiceDown)
        );
    }

    #[test]
    fn cause_names_are_stable() {
        let names: Vec<_> = [Network, WebServiceDown, DataServiceDown, Maintenance]
            .iter()
            .map(|c| c.to_string())
            .collect();
        assert_eq!(
            names,
            [
                "network",
                "web_service_down",
                "data_service_down",
                "maintenance"
            ]
        );
        assert_eq!(
            serde_json::to_string(&Maintenance).unwrap(),
            "\"maintenance\""
        );
        assert_eq!(Failover(Network).cause(), Some(Network));
        assert_eq!(NotFailover.cause(), None);
    }
}
