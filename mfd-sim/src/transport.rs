//! Owns the way to one HTTP origin: parsing its base URL, the TLS trust, TCP
//! and TLS connection set-up, and one request/answer exchange with timeouts,
//! mapping low-level failures onto [`ClientError`]. It must not know the
//! gateway's API paths or JSON shapes (that is `client`).

use std::{
    io,
    net::SocketAddr,
    path::Path,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode, Uri};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::{Body, Frame, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use rustls::{
    DigitallySignedStruct, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject};
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
///
/// The two limits are kept apart because they detect different things. A
/// connection to a live host is made in a few milliseconds even over a WAN,
/// so a short `connect` limit is what notices a server whose packets silently
/// disappear (a pulled cable, a dead VM behind a switch) and lets the device
/// move on within a second or so. Once a job has been sent, the gateway
/// acknowledges only after the pages are fsynced and the row is committed,
/// which for a large job on a busy disk can take long; a short limit there
/// would abandon uploads that were about to succeed.
///
/// That leaves one gap: a server that vanishes silently while a request is
/// out, or under a kept-alive connection the next request is sent on. No
/// connect happens, and the long `response` limit would hold the device for
/// minutes. So a request that has heard nothing (no answer, no upload
/// progress) for `liveness_check_after` makes the device ask the same server's
/// `/health` on a new connection, within `connect` for the connection and
/// again for the answer. Any answer means the server is there and merely slow:
/// the request goes on waiting (the next check after twice the wait, up to
/// [`MAX_LIVENESS_CHECK_INTERVAL`]). No answer means it is gone, and the
/// request fails with [`ClientError::Silent`], classified by what the check
/// met. Abandoning a request whose answer was only slow is safe: every
/// request a check can abandon is repeated under the same idempotency key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// For name resolution, the TCP connection and the TLS handshake
    /// together: short, it detects a silent drop.
    pub connect: Duration,
    /// For the answer after the request body has been sent completely; while
    /// the body is being sent, also the longest the upload may stall without
    /// the server taking any more bytes. Long: it covers the gateway's durable
    /// acknowledgement of a large job.
    pub response: Duration,
    /// Silence during a request after which the device checks on a new
    /// connection that the server is still there; `None`: never, only
    /// `response` ends the wait.
    pub liveness_check_after: Option<Duration>,
}

/// The longest pause between two liveness checks of one request.
pub const MAX_LIVENESS_CHECK_INTERVAL: Duration = Duration::from_secs(5);

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(1),
            response: Duration::from_secs(120),
            liveness_check_after: Some(Duration::from_millis(250)),
        }
    }
}

/// What a device trusts for one server's HTTPS: the CA certificates (or the
/// gateway's own self-signed certificate) in a PEM file, or one pinned
/// certificate named by the SHA-256 of its DER encoding. There is no way to
/// build a trust that accepts any certificate. Cheap to clone; every client
/// built from one shares the same TLS configuration.
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

    /// Trusts exactly the certificate whose DER encoding has this SHA-256,
    /// whatever its issuer, names or dates: the way to trust a gateway's
    /// self-signed certificate without copying the file to every device.
    /// The server must still prove it holds the certificate's private key.
    pub fn pinned_sha256(fingerprint: [u8; 32]) -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = PinnedCertificate {
            sha256: fingerprint,
            provider: provider.clone(),
        };
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default protocol versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        TlsTrust {
            config: Arc::new(config),
        }
    }
}

/// Parses a SHA-256 certificate fingerprint written as 64 hex digits, with
/// or without `:` between the bytes (the form `openssl x509 -fingerprint
/// -sha256` prints), optionally prefixed with `sha256:`.
pub fn parse_fingerprint(text: &str) -> Result<[u8; 32], String> {
    let text = text.trim();
    let text = text
        .strip_prefix("sha256:")
        .or_else(|| text.strip_prefix("SHA256:"))
        .unwrap_or(text);
    let hex: String = text.chars().filter(|c| *c != ':').collect();
    if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!(
            "`{text}` is not a SHA-256 fingerprint: expected 64 hex digits, with or without `:`"
        ));
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())?;
    }
    Ok(out)
}

/// The SHA-256 of a certificate's DER encoding: the value to pin.
pub fn certificate_fingerprint(der: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Accepts exactly one certificate. Handshake signatures are still checked
/// with the provider's algorithms, so a server that merely replays the
/// public certificate without its private key is refused.
#[derive(Debug)]
struct PinnedCertificate {
    sha256: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if certificate_fingerprint(end_entity.as_ref()) == self.sha256 {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
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

    /// Opens a new connection: name resolution, TCP, then TLS for `https`,
    /// then HTTP/1.1.
    ///
    /// Failures are sorted here because only here is it known how far the
    /// connection got: a name that does not resolve, a connection that is
    /// refused or unreachable, and a connect that does not finish in time are
    /// each their own error; once the TCP connection exists, the peer closing
    /// or stalling is a lost connection or a timeout, a certificate that fails
    /// verification is [`ClientError::CertificateRejected`], and any other TLS
    /// error on its merits (protocol, alert) is a TLS failure.
    pub(crate) async fn connect(&self) -> Result<SendRequest<RequestBody>, ClientError> {
        let server = || self.endpoint.base.clone();
        let started = Instant::now();
        let tcp = match tokio::time::timeout(self.connect_timeout, self.connect_tcp()).await {
            Err(_) => {
                return Err(ClientError::ConnectTimeout {
                    server: server(),
                    after: self.connect_timeout,
                });
            }
            Ok(result) => result?,
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
            // violations) as InvalidData wrapping a `rustls::Error`;
            // everything else is the transport.
            Ok(Err(source)) if source.kind() == io::ErrorKind::InvalidData => {
                match source
                    .get_ref()
                    .and_then(|e| e.downcast_ref::<rustls::Error>())
                {
                    Some(rustls::Error::InvalidCertificate(reason)) => {
                        Err(ClientError::CertificateRejected {
                            server: server(),
                            detail: format!("{reason:?}"),
                        })
                    }
                    _ => Err(ClientError::Tls {
                        server: server(),
                        source,
                    }),
                }
            }
            Ok(Err(e)) => Err(ClientError::ConnectionLost {
                server: server(),
                detail: format!("during the TLS handshake: {}", error_chain(&e)),
            }),
            Ok(Ok(tls)) => handshake(tls, &self.endpoint.base).await,
        }
    }

    /// Resolves the host and connects to its addresses in turn; the caller
    /// bounds the whole by the connect timeout.
    async fn connect_tcp(&self) -> Result<TcpStream, ClientError> {
        let server = || self.endpoint.base.clone();
        let addrs: Vec<SocketAddr> =
            tokio::net::lookup_host((self.endpoint.host.as_str(), self.endpoint.port))
                .await
                .map_err(|e| ClientError::Resolve {
                    server: server(),
                    detail: e.to_string(),
                })?
                .collect();
        let mut last = None;
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(tcp) => return Ok(tcp),
                Err(e) => last = Some(e),
            }
        }
        Err(match last {
            Some(source) => ClientError::Connect {
                server: server(),
                source,
            },
            None => ClientError::Resolve {
                server: server(),
                detail: "the name has no addresses".to_owned(),
            },
        })
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

/// Sends one request on a connection and reads the whole answer; an answer
/// body larger than `max_body` is refused. `timeout` is the response timeout
/// of [`Timeouts::response`]: the whole answer must arrive within it after
/// the request body has been sent, and while the body is being sent the
/// server must take more of it at least that often.
pub(crate) async fn exchange(
    sender: &mut SendRequest<RequestBody>,
    request: Request<RequestBody>,
    timeout: Duration,
    max_body: usize,
    server: &str,
) -> Result<Answer, ClientError> {
    exchange_watched(
        sender,
        request,
        timeout,
        max_body,
        server,
        None::<LivenessCheck<fn() -> std::future::Ready<Result<(), ClientError>>>>,
    )
    .await
}

/// How [`exchange_watched`] checks a silent server: after `after` without an
/// answer or upload progress it runs `check`, which must end within its own
/// limits; an error from it ends the exchange (see [`Timeouts`]).
pub(crate) struct LivenessCheck<F> {
    pub(crate) after: Duration,
    pub(crate) check: F,
}

/// [`exchange`], with the liveness check of [`Timeouts::liveness_check_after`]
/// while it waits.
pub(crate) async fn exchange_watched<F, Fut>(
    sender: &mut SendRequest<RequestBody>,
    request: Request<RequestBody>,
    timeout: Duration,
    max_body: usize,
    server: &str,
    liveness: Option<LivenessCheck<F>>,
) -> Result<Answer, ClientError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(), ClientError>>,
{
    let progress = Arc::new(SendProgress::new());
    let request = request.map(|body| {
        if body.is_end_stream() {
            progress.finish();
        }
        RequestBody::Tracked {
            inner: Box::new(body),
            progress: progress.clone(),
        }
    });
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
    tokio::pin!(work);
    let timed_out = || ClientError::Timeout {
        server: server.to_owned(),
        after: timeout,
        during: if progress.is_finished() {
            "waiting for the answer"
        } else {
            "sending the request: the server stopped taking it"
        },
    };
    // The wait before the next liveness check, and when the last one ended:
    // silence counts from the later of that and the last upload progress.
    let mut check_wait = liveness.as_ref().map(|l| l.after);
    let mut last_check: Option<Instant> = None;
    loop {
        let deadline = progress.last() + timeout;
        let quiet_since = || last_check.map_or(progress.last(), |c| c.max(progress.last()));
        let check_at = check_wait.map(|wait| quiet_since() + wait);
        tokio::select! {
            result = &mut work => return result,
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)) => {
                // The body may have moved on while the timer ran.
                if progress.last() + timeout <= Instant::now() {
                    return Err(timed_out());
                }
            }
            _ = sleep_until_some(check_at) => {
                let (Some(liveness), Some(wait)) = (&liveness, check_wait) else {
                    continue;
                };
                if quiet_since() + wait > Instant::now() {
                    continue; // the upload moved on while the timer ran
                }
                let silent_for = quiet_since().elapsed();
                let check = (liveness.check)();
                tokio::pin!(check);
                // The request may still be answered while the check runs.
                let checked = tokio::select! {
                    result = &mut work => return result,
                    checked = &mut check => checked,
                };
                match checked {
                    Ok(()) => {
                        tracing::debug!(server, ?silent_for, "slow answer; the server is there");
                        last_check = Some(Instant::now());
                        check_wait = Some((wait * 2).min(MAX_LIVENESS_CHECK_INTERVAL));
                    }
                    Err(check) => {
                        return Err(ClientError::Silent {
                            server: server.to_owned(),
                            waited: silent_for,
                            check: Box::new(check),
                        });
                    }
                }
            }
        }
    }
}

/// Sleeps until `at`, or forever without it.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

/// When the request body last moved, and whether it is all sent (kept by
/// [`exchange`] for its response timeout).
#[derive(Debug)]
pub struct SendProgress {
    last: Mutex<Instant>,
    finished: AtomicBool,
}

impl SendProgress {
    fn new() -> Self {
        SendProgress {
            last: Mutex::new(Instant::now()),
            finished: AtomicBool::new(false),
        }
    }

    fn touch(&self) {
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    fn finish(&self) {
        self.touch();
        self.finished.store(true, Ordering::Release);
    }

    fn last(&self) -> Instant {
        *self.last.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn is_finished(&self) -> bool {
        self.finished.load(Ordering::Acquire)
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
    /// Another body whose progress the exchange watches for its timeout.
    #[doc(hidden)]
    Tracked {
        /// The body.
        inner: Box<RequestBody>,
        /// Where its progress is recorded.
        progress: Arc<SendProgress>,
    },
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
            RequestBody::Tracked { inner, progress } => {
                let polled = Pin::new(inner.as_mut()).poll_frame(cx);
                match &polled {
                    Poll::Ready(Some(Ok(_))) => {
                        progress.touch();
                        if inner.is_end_stream() {
                            progress.finish();
                        }
                    }
                    Poll::Ready(None) => progress.finish(),
                    Poll::Ready(Some(Err(_))) | Poll::Pending => {}
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Empty => true,
            RequestBody::Full(bytes) => bytes.is_none(),
            RequestBody::Multipart(body) => body.is_end_stream(),
            RequestBody::Tracked { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Empty => SizeHint::with_exact(0),
            RequestBody::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            RequestBody::Multipart(body) => body.size_hint(),
            RequestBody::Tracked { inner, .. } => inner.size_hint(),
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
    fn fingerprints_parse_with_or_without_colons() {
        let hex = "ab".repeat(32);
        let colons = vec!["AB"; 32].join(":");
        assert_eq!(parse_fingerprint(&hex).unwrap(), [0xab; 32]);
        assert_eq!(parse_fingerprint(&colons).unwrap(), [0xab; 32]);
        assert_eq!(
            parse_fingerprint(&format!("sha256:{hex}")).unwrap(),
            [0xab; 32]
        );
        assert!(parse_fingerprint("ab:cd").is_err());
        assert!(parse_fingerprint(&"zz".repeat(32)).is_err());
        assert_eq!(
            certificate_fingerprint(b"abc")[..4],
            [0xba, 0x78, 0x16, 0xbf],
            "SHA-256 of `abc`"
        );
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
