//! The `webhook` delivery: the document POSTed to an HTTP(S) endpoint with a
//! signature, over hyper's HTTP/1 client (tokio-rustls for https). It must
//! not retry by itself; the runner does.
//!
//! The request, identical on every attempt for a job:
//! - body: `multipart/form-data` with two parts, `job` (JSON: `job_id`,
//!   `workflow`, `user`, `device`, `submitted_at`, `time_zone`, `metadata`,
//!   `pages`) and `document` (`application/pdf`, the assembled document);
//! - `Idempotency-Key: <job id>`: receivers keep the first request per key
//!   and acknowledge repeats without acting on them;
//! - `X-Scan-Signature: sha256=<hex>`: HMAC-SHA256 of the exact body bytes
//!   with the configured `secret`, so receivers can check the sender and that
//!   job fields and document belong together.
//!
//! Answers: 2xx is delivered (and recorded in the work directory, so a re-run
//! sends nothing); 5xx, 408 and 429 and connection failures are transient;
//! redirects and other 4xx are permanent.
//!
//! The endpoint, its TLS client and the signed POST live in
//! `WebhookTarget`, which the admin notifications (`crate::notify`) use
//! too, with their own JSON body.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use ring::hmac;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::record::DeliveryRecord;
use super::tls;
use crate::job::JobContext;
use crate::plugin::{Plugin, StepError, StepFuture};
use crate::settings::{self, Secret, SettingsError};

/// The header carrying the body's signature.
pub const SIGNATURE_HEADER: &str = "x-scan-signature";
/// How long a request may take unless configured.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// How much of an error answer's body is quoted in the reason.
const QUOTED_BODY: usize = 200;

/// The keys of a webhook table, read alike by the step and the admin
/// notifications (`crate::notify`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WebhookSettings {
    url: String,
    secret: Secret,
    #[serde(default)]
    ca_file: Option<PathBuf>,
    #[serde(default)]
    timeout_secs: Option<u64>,
}

/// A validated webhook endpoint with its signing key: everything needed to
/// POST a signed body but the body. Its `Debug` output shows no secret.
pub(crate) struct WebhookTarget {
    url: Uri,
    host: String,
    port: u16,
    tls: Option<Arc<rustls::ClientConfig>>,
    secret: Secret,
    timeout: Option<Duration>,
}

impl std::fmt::Debug for WebhookTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookTarget")
            .field("url", &self.url)
            .field("secret", &self.secret)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// The configured `webhook` step. Its `Debug` output shows no secret.
pub struct WebhookStep {
    step: usize,
    target: WebhookTarget,
}

impl std::fmt::Debug for WebhookStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookStep")
            .field("step", &self.step)
            .field("url", &self.target.url)
            .field("secret", &self.target.secret)
            .field("timeout", &self.target.timeout)
            .finish_non_exhaustive()
    }
}

/// `sha256=<hex>`: the signature of `body` under `secret`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let tag = hmac::sign(&key, body);
    let mut out = String::from("sha256=");
    for byte in tag.as_ref() {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

impl WebhookTarget {
    /// Parses and validates a webhook table (`url`, `secret`, `ca_file`,
    /// `timeout_secs`), building the TLS client for an https URL.
    pub(crate) fn from_table(table: &Map<String, Value>) -> Result<Self, SettingsError> {
        let parsed: WebhookSettings = settings::parse(table)?;
        let url: Uri = parsed.url.parse().map_err(|e| {
            SettingsError::bad("url", format!("`{}` is not a URL: {e}", parsed.url))
        })?;
        let https = match url.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => {
                return Err(SettingsError::bad(
                    "url",
                    "must start with http:// or https://",
                ));
            }
        };
        let authority = url
            .authority()
            .ok_or_else(|| SettingsError::bad("url", "must name a host"))?;
        if authority.as_str().contains('@') {
            return Err(SettingsError::bad(
                "url",
                "must not carry credentials; the request is authenticated by its signature (`secret`)",
            ));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        if parsed.secret.expose().is_empty() {
            return Err(SettingsError::bad("secret", "must not be empty"));
        }
        if parsed.ca_file.is_some() && !https {
            return Err(SettingsError::bad(
                "ca_file",
                "only applies to https:// URLs",
            ));
        }
        let tls = if https {
            let ca = match &parsed.ca_file {
                Some(path) => Some(
                    tls::read_pem_certificates(path)
                        .map_err(|e| SettingsError::bad("ca_file", e))?,
                ),
                None => None,
            };
            let roots =
                tls::root_store(ca.as_deref()).map_err(|e| SettingsError::bad("ca_file", e))?;
            Some(tls::client_config(roots).map_err(|e| SettingsError::bad("url", e))?)
        } else {
            None
        };
        Ok(WebhookTarget {
            url,
            host,
            port,
            tls,
            secret: parsed.secret,
            timeout: settings::timeout_from(parsed.timeout_secs)?,
        })
    }

    /// The configured `timeout_secs`.
    pub(crate) fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// The URL, for messages; it never carries credentials.
    pub(crate) fn url(&self) -> &Uri {
        &self.url
    }

    /// POSTs `body` with its signature and `Idempotency-Key: <key>`, giving
    /// up after `limit`. A 2xx answer is `Ok` with its status; any other
    /// answer or failure is sorted into retry (5xx, 408, 429, connection
    /// failures, the time limit) or give up (redirects, other 4xx, TLS).
    pub(crate) async fn post(
        &self,
        content_type: &str,
        body: Vec<u8>,
        idempotency_key: &str,
        limit: Duration,
    ) -> Result<StatusCode, StepError> {
        let url = self.url.to_string();
        let signature = sign(self.secret.expose().as_bytes(), &body);
        let authority = self
            .url
            .authority()
            .map(|a| a.as_str())
            .unwrap_or(&self.host);
        let path = self.url.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let request = Request::post(path)
            .header(http::header::HOST, authority)
            .header(http::header::CONTENT_TYPE, content_type)
            .header(http::header::USER_AGENT, "scan-gateway")
            .header("idempotency-key", idempotency_key)
            .header(SIGNATURE_HEADER, signature)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| {
                StepError::permanent(format!("webhook POST to {url}: bad request: {e}"))
            })?;
        let (status, answer) = tokio::time::timeout(limit, self.exchange(request, &url))
            .await
            .map_err(|_| {
                StepError::transient(format!(
                    "webhook POST to {url} failed: timed out after {limit:?}"
                ))
            })??;
        if status.is_success() {
            return Ok(status);
        }
        let reason = format!(
            "webhook POST to {url} failed: HTTP {status}{}",
            quote(&answer)
        );
        if status.is_server_error()
            || status == StatusCode::REQUEST_TIMEOUT
            || status == StatusCode::TOO_MANY_REQUESTS
        {
            Err(StepError::transient(reason))
        } else if status.is_redirection() {
            Err(StepError::permanent(format!(
                "{reason}; redirects are not followed: set `url` to the final address"
            )))
        } else {
            Err(StepError::permanent(reason))
        }
    }

    async fn exchange(
        &self,
        request: Request<Full<Bytes>>,
        url: &str,
    ) -> Result<(StatusCode, Bytes), StepError> {
        let failed = |e: &std::io::Error| {
            StepError::transient(format!(
                "webhook POST to {url} failed: {}",
                crate::fsutil::io_cause(e)
            ))
        };
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| failed(&e))?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => send(tcp, request, url).await,
            Some(config) => {
                let name =
                    rustls::pki_types::ServerName::try_from(self.host.clone()).map_err(|e| {
                        StepError::permanent(format!(
                            "webhook POST to {url}: `{}` is not a valid TLS server name: {e}",
                            self.host
                        ))
                    })?;
                let stream = tokio_rustls::TlsConnector::from(Arc::clone(config))
                    .connect(name, tcp)
                    .await
                    .map_err(|e| {
                        if e.kind() == std::io::ErrorKind::InvalidData {
                            StepError::permanent(format!(
                                "webhook POST to {url} failed: TLS handshake failed ({e}); check the server's certificate or set `ca_file`"
                            ))
                        } else {
                            failed(&e)
                        }
                    })?;
                send(stream, request, url).await
            }
        }
    }
}

impl WebhookStep {
    pub(crate) fn build(table: &Map<String, Value>, step: usize) -> Result<Self, SettingsError> {
        Ok(WebhookStep {
            step,
            target: WebhookTarget::from_table(table)?,
        })
    }

    fn body(&self, job: &JobContext, pdf: &[u8]) -> (String, Vec<u8>) {
        let fields = json!({
            "job_id": job.job_id,
            "workflow": job.workflow,
            "user": job.user,
            "device": job.device,
            "submitted_at": job.submitted_at.to_rfc3339(),
            "time_zone": job.time_zone.name(),
            "metadata": job.metadata,
            "pages": job.pages.len(),
        });
        // A fixed boundary per job keeps every attempt's body (and so its
        // signature) identical; it only has to be absent from the document.
        let mut boundary = format!("scan-{}", job.job_id.simple());
        while pdf
            .windows(boundary.len())
            .any(|w| w == boundary.as_bytes())
        {
            boundary.push('x');
        }
        let mut body = Vec::with_capacity(pdf.len() + 1024);
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"job\"\r\n\
                 Content-Type: application/json\r\n\r\n{fields}\r\n\
                 --{boundary}\r\nContent-Disposition: form-data; name=\"document\"; filename=\"scan-{}.pdf\"\r\n\
                 Content-Type: application/pdf\r\n\r\n",
                job.job_id
            )
            .as_bytes(),
        );
        body.extend_from_slice(pdf);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        (format!("multipart/form-data; boundary={boundary}"), body)
    }

    async fn deliver(&self, job: &JobContext) -> Result<(), StepError> {
        if DeliveryRecord::find(job, "webhook", self.step)
            .await
            .is_some()
        {
            tracing::info!(job = %job.job_id, url = %self.target.url(), "webhook already delivered; not posting again");
            return Ok(());
        }
        let url = self.target.url().to_string();
        let pdf = super::read_document(job, &url).await?;
        let (content_type, body) = self.body(job, &pdf);
        let limit = self.target.timeout().unwrap_or(DEFAULT_TIMEOUT);
        let status = self
            .target
            .post(&content_type, body, &job.job_id.to_string(), limit)
            .await?;
        tracing::info!(job = %job.job_id, %url, status = status.as_u16(), "webhook delivered");
        DeliveryRecord {
            plugin: "webhook".into(),
            step: self.step,
            destination: url,
            receipt: format!("HTTP {}", status.as_u16()),
            at: chrono::Utc::now(),
        }
        .store(job)
        .await
    }
}

async fn send<S>(
    stream: S,
    request: Request<Full<Bytes>>,
    url: &str,
) -> Result<(StatusCode, Bytes), StepError>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let http_failed = |e: hyper::Error| {
        StepError::transient(format!("webhook POST to {url} failed: {}", http_cause(&e)))
    };
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http_failed)?;
    // The connection is driven here rather than in a spawned task, so that
    // dropping this future (timeout, shutdown) closes the socket at once.
    let exchange = async move {
        let response = sender.send_request(request).await.map_err(http_failed)?;
        let status = response.status();
        let answer = Limited::new(response.into_body(), 64 * 1024)
            .collect()
            .await
            .map(|collected| collected.to_bytes())
            .unwrap_or_default();
        Ok::<_, StepError>((status, answer))
    };
    let (result, _) = tokio::join!(exchange, connection);
    result
}

fn http_cause(error: &hyper::Error) -> String {
    use std::error::Error as _;
    let mut source = error.source();
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return crate::fsutil::io_cause(io);
        }
        source = s.source();
    }
    if error.is_incomplete_message() {
        return "the server closed the connection before answering".to_string();
    }
    error.to_string()
}

fn quote(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(QUOTED_BODY)
        .collect();
    let text = text.trim();
    if text.is_empty() {
        String::new()
    } else {
        format!(" ({text})")
    }
}

impl Plugin for WebhookStep {
    fn name(&self) -> &'static str {
        "webhook"
    }

    fn timeout(&self) -> Option<Duration> {
        self.target.timeout()
    }

    fn run<'a>(&'a self, job: &'a JobContext) -> StepFuture<'a> {
        Box::pin(self.deliver(job))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_hmac_sha256_in_hex() {
        // RFC 4231, test case 2.
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn urls_with_credentials_or_other_schemes_are_refused() {
        for (url, expected) in [
            ("ftp://example.org/x", "must start with http:// or https://"),
            ("http://user:pw@example.org/x", "must not carry credentials"),
            ("not a url", "is not a URL"),
        ] {
            let table = serde_json::json!({ "url": url, "secret": "s" });
            let err = WebhookStep::build(table.as_object().unwrap(), 0).unwrap_err();
            assert!(err.to_string().contains(expected), "{url}: {err}");
        }
    }

    #[test]
    fn the_secret_never_shows_in_debug_output() {
        let table = serde_json::json!({ "url": "http://127.0.0.1:9/hook", "secret": "hunter2" });
        let step = WebhookStep::build(table.as_object().unwrap(), 0).unwrap();
        let shown = format!("{step:?}");
        assert!(
            !shown.contains("hunter2") && shown.contains("***"),
            "{shown}"
        );
    }
}
