//! Owns the device client's error type and the parsing of the gateway's error
//! body (`{"error": {"code", "message"}}`) and `Retry-After`; it must not
//! decide what a failure means for failover (that is `classify`).

use std::{io, path::PathBuf, time::Duration};

use http::{HeaderMap, StatusCode, header::RETRY_AFTER};
use serde::Deserialize;

/// Everything that can go wrong when a device calls a gateway.
///
/// Connection-level failures (the first group of variants) are kept apart from
/// HTTP answers ([`ClientError::Http`]) because the failover rules treat them
/// differently: a refused connection says nothing about the service, an HTTP
/// error says exactly what the service thinks.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server address is not an `http://` or `https://` URL we can use.
    #[error("invalid server URL `{url}`: {reason}")]
    InvalidUrl {
        /// The address as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The CA/certificate file for TLS could not be used.
    #[error("cannot use {path} as TLS trust: {reason}")]
    Trust {
        /// The PEM file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// An `https://` server was given without a CA/certificate file to trust.
    #[error(
        "{server} uses https but no CA/certificate file was given; pass the gateway's certificate (PEM) as trust"
    )]
    NoTrust {
        /// The server's base URL.
        server: String,
    },
    /// The server's host name did not resolve to any address.
    #[error("cannot resolve the address of {server}: {detail}")]
    Resolve {
        /// The server's base URL.
        server: String,
        /// The resolver's complaint.
        detail: String,
    },
    /// The TCP connection could not be made: refused, unreachable or reset
    /// while connecting.
    #[error("cannot connect to {server}: {source}")]
    Connect {
        /// The server's base URL.
        server: String,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// The TCP connection was not established within the connect timeout.
    #[error("connecting to {server} timed out after {after:?}")]
    ConnectTimeout {
        /// The server's base URL.
        server: String,
        /// The connect timeout that expired.
        after: Duration,
    },
    /// The server's certificate failed verification: not signed by a trusted
    /// root, not for this host name, expired, or not the pinned certificate.
    /// Nothing was sent to that server.
    #[error("{server}: the server's identity could not be verified ({detail})")]
    CertificateRejected {
        /// The server's base URL.
        server: String,
        /// What the verifier objected to.
        detail: String,
    },
    /// The TLS handshake failed for a reason other than the certificate: a
    /// protocol error or an alert from the peer.
    #[error("TLS handshake with {server} failed: {source}")]
    Tls {
        /// The server's base URL.
        server: String,
        /// The TLS library's error.
        #[source]
        source: io::Error,
    },
    /// The connection was established but closed or reset before a complete
    /// HTTP answer arrived (including during the TLS handshake).
    #[error("connection to {server} was lost before a complete answer: {detail}")]
    ConnectionLost {
        /// The server's base URL.
        server: String,
        /// The low-level error chain.
        detail: String,
    },
    /// The connection was established but no complete answer arrived in time.
    #[error("{server} did not answer within {after:?} ({during})")]
    Timeout {
        /// The server's base URL.
        server: String,
        /// The timeout that expired.
        after: Duration,
        /// Which step was waiting.
        during: &'static str,
    },
    /// The server went silent during a request (no answer and no upload
    /// progress for a while), and a check of its `/health` on a new
    /// connection failed too: it is gone, not slow (see
    /// [`crate::transport::Timeouts`]).
    #[error(
        "{server} went silent for {waited:?} during the request, and a check on a new connection failed: {check}"
    )]
    Silent {
        /// The server's base URL.
        server: String,
        /// How long the request had heard nothing when the check began.
        waited: Duration,
        /// What the check met.
        check: Box<ClientError>,
    },
    /// Something answered, but not with HTTP.
    #[error("{server} answered with something that is not HTTP: {detail}")]
    NotHttp {
        /// The server's base URL.
        server: String,
        /// The parser's complaint.
        detail: String,
    },
    /// A token or session contains characters that cannot go into an HTTP
    /// header (a damaged devices file, say).
    #[error("the {what} contains characters that are not allowed in an HTTP header")]
    InvalidHeader {
        /// Which value: `device token` or `session token`.
        what: &'static str,
    },
    /// The request could not be put together (a manifest that does not
    /// serialise, a path that is not a valid URI).
    #[error("cannot build the request: {detail}")]
    Build {
        /// What went wrong.
        detail: String,
    },
    /// The server answered with an HTTP error status.
    #[error(transparent)]
    Http(Box<HttpError>),
    /// The server answered with a success status but a body that does not
    /// have the documented shape.
    #[error("unexpected answer from {server} (HTTP {status}): {detail}")]
    UnexpectedAnswer {
        /// The server's base URL.
        server: String,
        /// The status of the answer.
        status: StatusCode,
        /// What did not fit.
        detail: String,
    },
    /// A page file could not be read while building or streaming the upload.
    #[error("cannot read page file {}: {source}", path.display())]
    Page {
        /// The page file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
}

impl ClientError {
    /// The HTTP error, if the server answered with one.
    pub fn http(&self) -> Option<&HttpError> {
        match self {
            ClientError::Http(e) => Some(e),
            _ => None,
        }
    }
}

/// An HTTP error answer, with the API's stable `code` when the body had one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{server} answered HTTP {status}{}: {message}{}",
    code.as_deref().map(|c| format!(" ({c})")).unwrap_or_default(),
    retry_after.map(|d| format!("; retry after {}s", d.as_secs())).unwrap_or_default())]
pub struct HttpError {
    /// The server's base URL.
    pub server: String,
    /// The HTTP status.
    pub status: StatusCode,
    /// The stable machine-readable code from the error body; `None` when the
    /// body was not the API's error shape (a proxy's error page, say).
    pub code: Option<String>,
    /// The human-readable message, or the start of the body when it was not
    /// the API's error shape.
    pub message: String,
    /// `Retry-After`, when the answer carried one in a form we understand.
    pub retry_after: Option<Duration>,
}

impl HttpError {
    /// Builds the error from an answer's status, headers and body.
    pub fn from_answer(server: &str, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Self {
        #[derive(Deserialize)]
        struct Envelope {
            error: Inner,
        }
        #[derive(Deserialize)]
        struct Inner {
            code: String,
            #[serde(default)]
            message: String,
        }
        let (code, message) = match serde_json::from_slice::<Envelope>(body) {
            Ok(envelope) => (Some(envelope.error.code), envelope.error.message),
            Err(_) => (None, body_excerpt(body)),
        };
        let retry_after = headers
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, chrono::Utc::now()));
        HttpError {
            server: server.to_owned(),
            status,
            code,
            message,
            retry_after,
        }
    }

    /// True when the error carries this stable code.
    pub fn has_code(&self, code: &str) -> bool {
        self.code.as_deref() == Some(code)
    }
}

/// Parses `Retry-After` as delay-seconds (what the gateway sends) or as an
/// HTTP date (what a proxy in front of it may send); a date in the past means
/// "now".
pub fn parse_retry_after(value: &str, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let delta = at.with_timezone(&chrono::Utc) - now;
    Some(delta.to_std().unwrap_or(Duration::ZERO))
}

/// The first characters of a non-API body, as text, so that an error from a
/// proxy still says something useful without flooding the log.
fn body_excerpt(body: &[u8]) -> String {
    const MAX: usize = 200;
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return "(empty body)".to_owned();
    }
    let mut excerpt: String = text.chars().take(MAX).collect();
    if text.chars().count() > MAX {
        excerpt.push('…');
    }
    excerpt
}

/// Joins an error and its sources with `: `, the way `{:#}` does for anyhow.
pub(crate) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.ends_with(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn api_error_body_gives_code_message_and_retry_after() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        let body = br#"{"error": {"code": "maintenance", "message": "gw-a is in maintenance"}}"#;
        let e = HttpError::from_answer(
            "https://gw-a",
            StatusCode::SERVICE_UNAVAILABLE,
            &headers,
            body,
        );
        assert_eq!(e.code.as_deref(), Some("maintenance"));
        assert_eq!(e.message, "gw-a is in maintenance");
        assert_eq!(e.retry_after, Some(Duration::from_secs(7)));
        assert_eq!(
            e.to_string(),
            "https://gw-a answered HTTP 503 Service Unavailable (maintenance): gw-a is in maintenance; retry after 7s"
        );
    }

    #[test]
    fn proxy_page_keeps_status_and_an_excerpt() {
        let body = b"<html><body>502 Bad Gateway</body></html>";
        let e = HttpError::from_answer(
            "http://lb",
            StatusCode::BAD_GATEWAY,
            &HeaderMap::new(),
            body,
        );
        assert_eq!(e.code, None);
        assert_eq!(e.message, "<html><body>502 Bad Gateway</body></html>");
        assert_eq!(e.retry_after, None);
    }

    #[test]
    fn long_bodies_are_cut() {
        let body = vec![b'x'; 1000];
        let e = HttpError::from_answer(
            "http://lb",
            StatusCode::BAD_GATEWAY,
            &HeaderMap::new(),
            &body,
        );
        assert_eq!(e.message.chars().count(), 201);
    }

    #[test]
    fn retry_after_accepts_seconds_and_dates() {
        let now = chrono::DateTime::parse_from_rfc3339("2025-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        assert_eq!(
            parse_retry_after(" 30 ", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Wed, 01 Jan 2025 00:00:10 GMT", now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse_retry_after("Tue, 31 Dec 2024 23:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }
}
