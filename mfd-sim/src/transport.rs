//! Owns the way to one HTTP origin: parsing its base URL, the TLS trust, TCP
//! and TLS connection set-up, and one request/answer exchange with timeouts,
//! mapping low-level failures onto [`ClientError`]. It must not know the
//! gateway's API paths or JSON shapes (that is `client`).

use std::{
    io,
    path::Path,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode, Uri};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::{Body, Frame, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use rustls_pki_types::{CertificateDer, ServerName, pem::PemObject};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};
use tokio_rustls::TlsConnector;

use crate::{
    error::{ClientError, error_chain},
    multipart::{MultipartBody, PageReadError},
};

/// How long a device waits for the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// For the TCP connection and the TLS handshake together.
    pub connect: Duration,
    /// For one exchange: sending the request (page uploads included) and
    /// reading the whole answer.
    pub request: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(5),
            request: Duration::from_secs(120),
        }
    }
}

/// The certificates a device trusts for HTTPS: a CA certificate or the
/// gateway's own self-signed certificate, from PEM. Cheap to clone; every
/// client built from one shares the same TLS configuration.
#[derive(Clone)]
pub struct TlsTrust {
    config: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for TlsTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsTrust")
    }
}

impl TlsTrust {
    /// Loads every certificate in a PEM file.
    pub fn from_pem_file(path: &Path) -> Result<Self, ClientError> {
        let pem = std::fs::read(path).map_err(|e| ClientError::Trust {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        Self::from_pem(&pem).map_err(|reason| ClientError::Trust {
            path: path.to_owned(),
            reason,
        })
    }

    /// Loads every certificate in PEM text; the error says what is wrong.
    pub fn from_pem(pem: &[u8]) -> Result<Self, String> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| format!("not valid PEM: {e}"))?;
            roots
                .add(cert)
                .map_err(|e| format!("unusable certificate: {e}"))?;
        }
        if roots.is_empty() {
            return Err("no CERTIFICATE section in the file".to_owned());
        }
        // The provider is named explicitly so the configuration does not
        // depend on which crypto back-end features other crates enable.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS set-up: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsTrust {
            config: Arc::new(config),
        })
    }
}

/// One origin, parsed once from a base URL such as `https://gw-a:8443` or
/// `http://127.0.0.1:8080/prefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    secure: bool,
    host: String,
    port: u16,
    authority: String,
    prefix: String,
    base: String,
}

impl Endpoint {
    /// Parses and checks a base URL.
    pub fn parse(url: &str) -> Result<Self, ClientError> {
        let invalid = |reason: &str| ClientError::InvalidUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let uri: Uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| invalid(&e.to_string()))?;
        let secure = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            Some(_) => return Err(invalid("the scheme must be http or https")),
            None => return Err(invalid("missing http:// or https://")),
        };
        let authority = uri.authority().ok_or_else(|| invalid("missing host"))?;
        if authority.as_str().contains('@') {
            return Err(invalid("user names and passwords do not belong in the URL"));
        }
        if uri.query().is_some() {
            return Err(invalid("a base URL has no query"));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if host.is_empty() {
            return Err(invalid("missing host"));
        }
        let port = authority
            .port_u16()
            .unwrap_or(if secure { 443 } else { 80 });
        let prefix = uri.path().trim_end_matches('/').to_owned();
        Ok(Endpoint {
            secure,
            authority: authority.as_str().to_owned(),
            base: format!(
                "{}://{}{}",
                if secure { "https" } else { "http" },
                authority,
                prefix
            ),
            host,
            port,
            prefix,
        })
    }

    /// The base URL, normalised (no trailing slash).
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// Whether this origin uses TLS.
    pub fn is_secure(&self) -> bool {
        self.secure
    }

    /// The value for the `Host` header.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// The request path for an API path such as `/health`.
    pub fn path(&self, api_path: &str) -> String {
        format!("{}{}", self.prefix, api_path)
    }
}

/// Makes new connections to one origin.
pub(crate) struct Connector {
    endpoint: Endpoint,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    connect_timeout: Duration,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("endpoint", &self.endpoint.base)
            .field("tls", &self.tls.is_some())
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

impl Connector {
    pub(crate) fn new(
        endpoint: Endpoint,
        trust: Option<&TlsTrust>,
        connect_timeout: Duration,
    ) -> Result<Self, ClientError> {
        let tls = if endpoint.secure {
            let trust = trust.ok_or_else(|| ClientError::NoTrust {
                server: endpoint.base.clone(),
            })?;
            let name = ServerName::try_from(endpoint.host.clone()).map_err(|e| {
                ClientError::InvalidUrl {
                    url: endpoint.base.clone(),
                    reason: format!("host is not a valid TLS server name: {e}"),
                }
            })?;
            Some((TlsConnector::from(trust.config.clone()), name))
        } else {
            None
        };
        Ok(Connector {
            endpoint,
            tls,
            connect_timeout,
        })
    }

    pub(crate) fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Opens a new connection: TCP, then TLS for `https`, then HTTP/1.1.
    ///
    /// Failures are sorted here because only here is it known how far the
    /// connection got: before the TCP connection exists everything is a
    /// connect failure; once it exists, the peer closing or stalling is a
    /// lost connection or a timeout, and only a TLS error on its merits
    /// (certificate, protocol, alert) is a TLS failure.
    pub(crate) async fn connect(&self) -> Result<SendRequest<RequestBody>, ClientError> {
        let server = || self.endpoint.base.clone();
        let started = Instant::now();
        let addr = (self.endpoint.host.as_str(), self.endpoint.port);
        let tcp = match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await {
            Err(_) => {
                return Err(ClientError::ConnectTimeout {
                    server: server(),
                    after: self.connect_timeout,
                });
            }
            Ok(Err(source)) => {
                return Err(ClientError::Connect {
                    server: server(),
                    source,
                });
            }
            Ok(Ok(tcp)) => tcp,
        };
        // Small API requests should not wait for Nagle's algorithm.
        let _ = tcp.set_nodelay(true);
        let Some((connector, name)) = &self.tls else {
            return handshake(tcp, &self.endpoint.base).await;
        };
        let left = self.connect_timeout.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, connector.connect(name.clone(), tcp)).await {
            Err(_) => Err(ClientError::Timeout {
                server: server(),
                after: self.connect_timeout,
                during: "TLS handshake",
            }),
            // rustls reports its own errors (bad certificate, alerts, protocol
            // violations) as InvalidData; everything else is the transport.
            Ok(Err(source)) if source.kind() == io::ErrorKind::InvalidData => {
                Err(ClientError::Tls {
                    server: server(),
                    source,
                })
            }
            Ok(Err(e)) => Err(ClientError::ConnectionLost {
                server: server(),
                detail: format!("during the TLS handshake: {}", error_chain(&e)),
            }),
            Ok(Ok(tls)) => handshake(tls, &self.endpoint.base).await,
        }
    }
}

async fn handshake<S>(io: S, server: &str) -> Result<SendRequest<RequestBody>, ClientError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) =
        http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| ClientError::ConnectionLost {
                server: server.to_owned(),
                detail: error_chain(&e),
            })?;
    // The connection task ends by itself when the sender is dropped or the
    // peer closes, so it is never left behind.
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %error_chain(&e), "connection ended with an error");
        }
    });
    Ok(sender)
}

/// A complete answer.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

/// Sends one request on a connection and reads the whole answer, all within
/// `timeout`; an answer body larger than `max_body` is refused.
pub(crate) async fn exchange(
    sender: &mut SendRequest<RequestBody>,
    request: Request<RequestBody>,
    timeout: Duration,
    max_body: usize,
    server: &str,
) -> Result<Answer, ClientError> {
    let work = async {
        sender.ready().await.map_err(|e| map_hyper(&e, server))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| map_hyper(&e, server))?;
        let (parts, body) = response.into_parts();
        let body = Limited::new(body, max_body).collect().await.map_err(|e| {
            if e.downcast_ref::<LengthLimitError>().is_some() {
                ClientError::UnexpectedAnswer {
                    server: server.to_owned(),
                    status: parts.status,
                    detail: format!("answer body larger than {max_body} bytes"),
                }
            } else if let Some(h) = e.downcast_ref::<hyper::Error>() {
                map_hyper(h, server)
            } else {
                ClientError::ConnectionLost {
                    server: server.to_owned(),
                    detail: e.to_string(),
                }
            }
        })?;
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body: body.to_bytes(),
        })
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(result) => result,
        Err(_) => Err(ClientError::Timeout {
            server: server.to_owned(),
            after: timeout,
            during: "waiting for the answer",
        }),
    }
}

/// Sorts a hyper error: our own page-read failure, a peer that does not speak
/// HTTP, or a connection that went away.
fn map_hyper(error: &hyper::Error, server: &str) -> ClientError {
    let mut source = std::error::Error::source(error);
    while let Some(s) = source {
        if let Some(page) = s.downcast_ref::<PageReadError>() {
            return ClientError::Page {
                path: page.path.clone(),
                source: io::Error::new(page.source.kind(), page.source.to_string()),
            };
        }
        source = s.source();
    }
    if error.is_parse() || error.is_parse_status() || error.is_parse_too_large() {
        return ClientError::NotHttp {
            server: server.to_owned(),
            detail: error_chain(error),
        };
    }
    ClientError::ConnectionLost {
        server: server.to_owned(),
        detail: error_chain(error),
    }
}

/// Every request body the device sends.
#[derive(Debug)]
pub enum RequestBody {
    /// No body.
    Empty,
    /// One buffer, sent without copying (a JSON body, or a benchmark body
    /// shared by many requests).
    Full(Option<Bytes>),
    /// A job upload.
    Multipart(MultipartBody),
}

impl RequestBody {
    /// A body of one buffer.
    pub fn full(bytes: Bytes) -> Self {
        if bytes.is_empty() {
            RequestBody::Empty
        } else {
            RequestBody::Full(Some(bytes))
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = PageReadError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, PageReadError>>> {
        match self.get_mut() {
            RequestBody::Empty => Poll::Ready(None),
            RequestBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            RequestBody::Multipart(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Empty => true,
            RequestBody::Full(bytes) => bytes.is_none(),
            RequestBody::Multipart(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Empty => SizeHint::with_exact(0),
            RequestBody::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            RequestBody::Multipart(body) => body.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_are_parsed_and_normalised() {
        let e = Endpoint::parse("https://gw-a.example:8443/").unwrap();
        assert!(e.is_secure());
        assert_eq!((e.host.as_str(), e.port), ("gw-a.example", 8443));
        assert_eq!(e.base_url(), "https://gw-a.example:8443");
        assert_eq!(e.path("/health"), "/health");

        let e = Endpoint::parse("http://127.0.0.1:8080/gw/").unwrap();
        assert_eq!(e.path("/api/v1/device"), "/gw/api/v1/device");
        assert_eq!(e.authority(), "127.0.0.1:8080");

        let e = Endpoint::parse("https://[::1]").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("::1", 443));
    }

    #[test]
    fn unusable_urls_are_refused_with_a_reason() {
        for url in [
            "gw-a:8443",
            "ftp://gw-a",
            "https://u:p@gw-a",
            "http://gw-a/?x=1",
            "not a url",
        ] {
            assert!(
                matches!(Endpoint::parse(url), Err(ClientError::InvalidUrl { .. })),
                "{url} should be refused"
            );
        }
    }

    #[test]
    fn https_without_trust_is_refused_up_front() {
        let e = Endpoint::parse("https://gw-a").unwrap();
        assert!(matches!(
            Connector::new(e, None, Duration::from_secs(1)),
            Err(ClientError::NoTrust { .. })
        ));
    }

    #[test]
    fn trust_needs_at_least_one_certificate() {
        assert!(
            TlsTrust::from_pem(b"")
                .unwrap_err()
                .contains("no CERTIFICATE")
        );
        assert!(
            TlsTrust::from_pem(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
                .is_err()
        );
    }
}
