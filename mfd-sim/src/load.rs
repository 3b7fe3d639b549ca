//! Owns the upload benchmark client: N uploads of one shared body over C
//! concurrent kept-alive connections, each to a fresh path, reporting request
//! rate, throughput and latency percentiles. It is used side by side against
//! the gateway and against a plain web server receiving the same bytes, so it
//! must not vary the body between requests or do per-request work (copying,
//! encoding) that would make the client the bottleneck.

use std::{
    collections::BTreeMap,
    fmt,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, header};
use hyper::client::conn::http1::SendRequest;
use serde::Serialize;
use uuid::Uuid;

use crate::{
    classify::classify_error,
    error::ClientError,
    multipart::{Manifest, MultipartForm, Page},
    progress::{Counter, Progress, ProgressStyle},
    stats::{Latencies, LatencySummary, fnv1a64, megabytes_per_second, per_second},
    synthetic::noise_png,
    transport::{Connector, Endpoint, RequestBody, Timeouts, TlsTrust, exchange},
};

/// The boundary of benchmark job bodies. It is fixed so that the gateway run
/// and the baseline run send byte-identical bodies.
pub const LOAD_BOUNDARY: &str = "mfd-sim-load-7f3c9a1e5b2d4c60";

/// The seed of the benchmark page, fixed for the same reason.
const LOAD_SEED: u64 = 0x5ca9_9a7e;

/// What every request carries.
#[derive(Debug, Clone)]
pub struct LoadBody {
    /// The body, shared by every request without copying.
    pub bytes: Bytes,
    /// Its `Content-Type`.
    pub content_type: String,
}

/// Why a benchmark body could not be made.
#[derive(Debug, thiserror::Error)]
pub enum LoadBodyError {
    /// The page size is out of range.
    #[error(transparent)]
    Size(#[from] crate::synthetic::SizeOutOfRange),
    /// The job form could not be built.
    #[error(transparent)]
    Form(#[from] crate::multipart::FormError),
}

impl LoadBody {
    /// A bare page: a valid PNG of exactly `size` bytes.
    pub fn page(size: usize) -> Result<Self, LoadBodyError> {
        Ok(LoadBody {
            bytes: noise_png(size, LOAD_SEED)?,
            content_type: "image/png".to_owned(),
        })
    }

    /// A one-page job for `workflow` whose page is the PNG of
    /// [`LoadBody::page`]: exactly the bytes the gateway receives, usable
    /// against a baseline server too.
    pub fn job(workflow: &str, size: usize) -> Result<Self, LoadBodyError> {
        let page = noise_png(size, LOAD_SEED)?;
        let form = MultipartForm::job_with_boundary(
            &Manifest::new(workflow, 1),
            &[Page::Memory(page)],
            LOAD_BOUNDARY,
        )?;
        Ok(LoadBody {
            bytes: form.to_bytes().expect("every part is in memory"),
            content_type: form.content_type(),
        })
    }
}

/// Where the requests go.
#[derive(Clone)]
pub enum LoadTarget {
    /// To `<url>/<uuid>`, e.g. an nginx WebDAV location.
    Plain,
    /// To `<url>/api/v1/jobs/<uuid>` as a job upload of one device and
    /// session; build it with [`LoadTarget::gateway`].
    Gateway {
        /// `Bearer <device token>`.
        authorization: HeaderValue,
        /// The user session token.
        session: HeaderValue,
    },
}

impl LoadTarget {
    /// The gateway target, with the credentials checked once here rather
    /// than on every request.
    pub fn gateway(token: &str, session: &str) -> Result<Self, ClientError> {
        let mut authorization =
            HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                ClientError::InvalidHeader {
                    what: "device token",
                }
            })?;
        authorization.set_sensitive(true);
        let mut session =
            HeaderValue::from_str(session).map_err(|_| ClientError::InvalidHeader {
                what: "session token",
            })?;
        session.set_sensitive(true);
        Ok(LoadTarget::Gateway {
            authorization,
            session,
        })
    }
}

impl fmt::Debug for LoadTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadTarget::Plain => f.write_str("Plain"),
            LoadTarget::Gateway { .. } => f.write_str("Gateway { .. }"),
        }
    }
}

/// One benchmark run, validated.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// The base URL.
    pub url: String,
    /// Trust for `https://`.
    pub trust: Option<TlsTrust>,
    /// Connect and per-request timeouts.
    pub timeouts: Timeouts,
    /// Usually `PUT`.
    pub method: Method,
    /// Extra headers on every request.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Plain server or gateway.
    pub target: LoadTarget,
    /// The body of every request.
    pub body: LoadBody,
    /// Requests in total.
    pub requests: u64,
    /// Concurrent connections.
    pub concurrency: usize,
}

/// What a benchmark run measured.
#[derive(Debug, Clone, Serialize)]
pub struct LoadSummary {
    /// The base URL.
    pub url: String,
    /// Requests sent.
    pub requests: u64,
    /// Answered with 2xx.
    pub succeeded: u64,
    /// Everything else.
    pub failed: u64,
    /// Outcomes: HTTP statuses (`"201"`) and connection failures
    /// (`"error:network"`, `"error:web_service_down"`).
    pub outcomes: BTreeMap<String, u64>,
    /// Concurrent connections.
    pub concurrency: usize,
    /// Size of one body.
    pub body_bytes: u64,
    /// FNV-1a of the body, to show two runs sent the same bytes.
    pub body_fnv1a64: String,
    /// Wall time.
    pub elapsed_seconds: f64,
    /// Successful requests per second.
    pub requests_per_second: f64,
    /// Body megabytes (10^6 bytes) of successful requests per second.
    pub megabytes_per_second: f64,
    /// Latency of successful requests, from sending to the complete answer.
    pub latency: LatencySummary,
}

impl fmt::Display for LoadSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "target        {}", self.url)?;
        writeln!(
            f,
            "body          {} bytes, fnv1a64 {}",
            self.body_bytes, self.body_fnv1a64
        )?;
        writeln!(
            f,
            "requests      {} sent, {} succeeded, {} failed, concurrency {}",
            self.requests, self.succeeded, self.failed, self.concurrency
        )?;
        for (outcome, n) in &self.outcomes {
            writeln!(f, "  outcome     {n} × {outcome}")?;
        }
        writeln!(
            f,
            "throughput    {:.1} requests/s, {:.2} MB/s over {:.2} s",
            self.requests_per_second, self.megabytes_per_second, self.elapsed_seconds
        )?;
        writeln!(f, "latency       {}", self.latency.describe())
    }
}

struct Shared {
    config: LoadConfig,
    endpoint: Endpoint,
    connector: Connector,
    next: AtomicU64,
    done: Counter,
}

#[derive(Default)]
struct WorkerReport {
    sent: u64,
    succeeded: u64,
    outcomes: BTreeMap<String, u64>,
    latencies: Latencies,
}

/// Runs the benchmark.
pub async fn run(config: LoadConfig, style: ProgressStyle) -> Result<LoadSummary, ClientError> {
    let endpoint = Endpoint::parse(&config.url)?;
    let connector = Connector::new(
        endpoint.clone(),
        config.trust.as_ref(),
        config.timeouts.connect,
    )?;
    let progress = Progress::start("requests", config.requests, style);
    let concurrency = config.concurrency.max(1);
    let shared = Arc::new(Shared {
        endpoint,
        connector,
        next: AtomicU64::new(0),
        done: progress.counter(),
        config,
    });
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| tokio::spawn(worker(shared.clone())))
        .collect();
    let mut total = WorkerReport::default();
    for w in workers {
        let r = w.await.expect("load worker panicked");
        total.sent += r.sent;
        total.succeeded += r.succeeded;
        total.latencies.merge(r.latencies);
        for (k, v) in r.outcomes {
            *total.outcomes.entry(k).or_default() += v;
        }
    }
    let elapsed = started.elapsed();
    progress.finish().await;
    let body = &shared.config.body.bytes;
    Ok(LoadSummary {
        url: shared.endpoint.base_url().to_owned(),
        requests: total.sent,
        succeeded: total.succeeded,
        failed: total.sent - total.succeeded,
        outcomes: total.outcomes,
        concurrency,
        body_bytes: body.len() as u64,
        body_fnv1a64: format!("{:016x}", fnv1a64(body)),
        elapsed_seconds: elapsed.as_secs_f64(),
        requests_per_second: per_second(total.succeeded, elapsed),
        megabytes_per_second: megabytes_per_second(total.succeeded * body.len() as u64, elapsed),
        latency: total.latencies.summary(),
    })
}

/// One connection's worth of requests, taken from the shared count until all
/// are taken. A failed connection is replaced by a new one for the next
/// request, so a server restart shows up as failed requests, not as a stall.
async fn worker(shared: Arc<Shared>) -> WorkerReport {
    let config = &shared.config;
    let mut report = WorkerReport::default();
    let mut connection: Option<SendRequest<RequestBody>> = None;
    while shared.next.fetch_add(1, Ordering::Relaxed) < config.requests {
        report.sent += 1;
        let started = Instant::now();
        let result = match connection.take().filter(|c| !c.is_closed()) {
            Some(c) => Ok(c),
            None => shared.connector.connect().await,
        };
        let outcome = match result {
            Ok(mut sender) => {
                let request = build_request(&shared);
                let answer = exchange(
                    &mut sender,
                    request,
                    config.timeouts.response,
                    1 << 20,
                    shared.endpoint.base_url(),
                )
                .await;
                if answer.is_ok() {
                    connection = Some(sender);
                }
                answer.map(|a| a.status)
            }
            Err(e) => Err(e),
        };
        let key = match outcome {
            Ok(status) => {
                if status.is_success() {
                    report.succeeded += 1;
                    report.latencies.record(started.elapsed());
                }
                status.as_u16().to_string()
            }
            Err(e) => {
                tracing::debug!(error = %e, "load request failed");
                let cause = classify_error(&e).cause().map_or("local", |c| c.as_str());
                format!("error:{cause}")
            }
        };
        *report.outcomes.entry(key).or_default() += 1;
        shared.done.inc();
    }
    report
}

fn build_request(shared: &Shared) -> Request<RequestBody> {
    let config = &shared.config;
    let id = Uuid::new_v4();
    let path = match &config.target {
        LoadTarget::Plain => shared.endpoint.path(&format!("/{id}")),
        LoadTarget::Gateway { .. } => shared.endpoint.path(&format!("/api/v1/jobs/{id}")),
    };
    let mut request = Request::builder()
        .method(config.method.clone())
        .uri(path)
        .header(header::HOST, shared.endpoint.authority())
        .header(
            header::USER_AGENT,
            concat!("mfd-sim-load/", env!("CARGO_PKG_VERSION")),
        )
        .header(header::CONTENT_TYPE, config.body.content_type.as_str())
        .header(header::CONTENT_LENGTH, config.body.bytes.len());
    if let LoadTarget::Gateway {
        authorization,
        session,
    } = &config.target
    {
        request = request
            .header(header::AUTHORIZATION, authorization.clone())
            .header("x-scan-session", session.clone());
    }
    for (name, value) in &config.headers {
        request = request.header(name, value);
    }
    request
        .body(RequestBody::full(config.body.bytes.clone()))
        .expect("the parts were validated when the configuration was built")
}

/// Parses a `--header 'Name: value'` argument.
pub fn parse_header(text: &str) -> Result<(HeaderName, HeaderValue), String> {
    let (name, value) = text
        .split_once(':')
        .ok_or_else(|| format!("header `{text}` is not `Name: value`"))?;
    let name = HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|e| format!("header name in `{text}`: {e}"))?;
    let value = HeaderValue::from_str(value.trim())
        .map_err(|e| format!("header value in `{text}`: {e}"))?;
    Ok((name, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_parse() {
        let (n, v) = parse_header("X-Test:  a b ").unwrap();
        assert_eq!((n.as_str(), v.to_str().unwrap()), ("x-test", "a b"));
        assert!(parse_header("no colon").is_err());
        assert!(parse_header("bad name: v").is_err());
    }

    #[test]
    fn job_body_wraps_the_page_body_byte_for_byte() {
        let page = LoadBody::page(5000).unwrap();
        let job = LoadBody::job("scan-to-folder", 5000).unwrap();
        assert_eq!(page.bytes.len(), 5000);
        assert!(job.content_type.ends_with(LOAD_BOUNDARY));
        let at = job
            .bytes
            .windows(page.bytes.len())
            .position(|w| w == page.bytes)
            .unwrap();
        assert!(job.bytes[..at].ends_with(b"\r\n\r\n"));
        assert_eq!(
            job.bytes,
            LoadBody::job("scan-to-folder", 5000).unwrap().bytes
        );
    }
}
