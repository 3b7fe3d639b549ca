//! Test servers on 127.0.0.1 that speak the documented device API (or fail in
//! the ways the failover rules care about), and a multipart parser written
//! independently of the one under test. Every server runs in a task that is
//! aborted when the handle is dropped, so no loop outlives its test.

use std::{
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderMap, Method, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use mfd_sim::{
    client::GatewayClient,
    transport::{Timeouts, TlsTrust},
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
    task::JoinHandle,
};

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    /// Path and query.
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Answers a request; `None` drops the connection without an answer, which
/// is what a crashing web service looks like to the device.
pub type Handler = Arc<dyn Fn(&Recorded) -> Option<Response<Full<Bytes>>> + Send + Sync>;

pub fn handler(
    f: impl Fn(&Recorded) -> Option<Response<Full<Bytes>>> + Send + Sync + 'static,
) -> Handler {
    Arc::new(f)
}

pub struct TestServer {
    pub url: String,
    requests: Arc<Mutex<Vec<Recorded>>>,
    connections: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn tls_acceptor(cert: &str, key: &str) -> tokio_rustls::TlsAcceptor {
    let certs = CertificateDer::pem_file_iter(fixture(cert))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(fixture(key)).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

impl TestServer {
    pub async fn http(handler: Handler) -> Self {
        Self::start(handler, None).await
    }

    /// HTTPS with the test-only gateway certificate.
    pub async fn https(handler: Handler) -> Self {
        Self::start(
            handler,
            Some(tls_acceptor(
                "gateway-test-cert.pem",
                "gateway-test-key.pem",
            )),
        )
        .await
    }

    /// HTTPS with a certificate the clients do not trust.
    pub async fn https_untrusted(handler: Handler) -> Self {
        Self::start(
            handler,
            Some(tls_acceptor("other-test-cert.pem", "other-test-key.pem")),
        )
        .await
    }

    async fn start(handler: Handler, tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let url = format!(
            "{}://127.0.0.1:{port}",
            if tls.is_some() { "https" } else { "http" }
        );
        let requests = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let (rec, conns) = (requests.clone(), connections.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                conns.fetch_add(1, Ordering::SeqCst);
                let (handler, rec, tls) = (handler.clone(), rec.clone(), tls.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: hyper::Request<Incoming>| {
                        let (handler, rec) = (handler.clone(), rec.clone());
                        async move {
                            let (parts, body) = req.into_parts();
                            // An upload whose body did not arrive completely is
                            // not recorded, as a gateway would not store it.
                            let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
                                return Err("incomplete request body");
                            };
                            let recorded = Recorded {
                                method: parts.method,
                                path: parts
                                    .uri
                                    .path_and_query()
                                    .map(|p| p.to_string())
                                    .unwrap_or_default(),
                                headers: parts.headers,
                                body,
                            };
                            rec.lock().unwrap().push(recorded.clone());
                            handler(&recorded).ok_or("dropping the connection without an answer")
                        }
                    });
                    let builder = http1::Builder::new();
                    match tls {
                        None => {
                            let _ = builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                let _ = builder
                                    .serve_connection(TokioIo::new(stream), service)
                                    .await;
                            }
                        }
                    }
                });
            }
        });
        TestServer {
            url,
            requests,
            connections,
            task,
        }
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// What a raw TCP server does with each connection.
#[derive(Clone, Copy, Debug)]
pub enum RawBehaviour {
    /// Accepts and closes at once.
    Close,
    /// Accepts and never says anything.
    Silent,
    /// Answers with text that is not HTTP.
    Garbage,
    /// Answers the first request of each connection with `200 {}` and
    /// closes the connection when the next request arrives, without
    /// answering it: a kept-alive connection lost in a race.
    AnswerOnceThenDrop,
}

pub struct RawServer {
    pub url: String,
    pub connections: Arc<AtomicUsize>,
    pub requests: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for RawServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawServer {
    pub async fn start(behaviour: RawBehaviour) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let (conns, reqs) = (connections.clone(), requests.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                conns.fetch_add(1, Ordering::SeqCst);
                let reqs = reqs.clone();
                tokio::spawn(async move {
                    match behaviour {
                        RawBehaviour::Close => drop(stream),
                        RawBehaviour::Silent => {
                            // Held open until the test ends and aborts the task.
                            tokio::time::sleep(Duration::from_secs(60)).await;
                            drop(stream);
                        }
                        RawBehaviour::Garbage => {
                            let mut buf = [0u8; 1024];
                            let _ = stream.read(&mut buf).await;
                            let _ = stream.write_all(b"SSH-2.0-OpenSSH_9.6\r\n\r\n").await;
                        }
                        RawBehaviour::AnswerOnceThenDrop => {
                            let mut seen = Vec::new();
                            let mut buf = [0u8; 4096];
                            let mut answered = false;
                            while let Ok(n) = stream.read(&mut buf).await {
                                if n == 0 {
                                    return;
                                }
                                seen.extend_from_slice(&buf[..n]);
                                if seen.windows(4).any(|w| w == b"\r\n\r\n") {
                                    reqs.fetch_add(1, Ordering::SeqCst);
                                    if answered {
                                        return;
                                    }
                                    answered = true;
                                    seen.clear();
                                    let _ = stream
                                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 31\r\n\r\n{\"workflows\": [\"scan-to-mail\"]}")
                                        .await;
                                }
                            }
                        }
                    }
                });
            }
        });
        RawServer {
            url,
            connections,
            requests,
            task,
        }
    }
}

/// A URL on which nothing listens: a port the OS handed out and took back.
pub async fn refused_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

pub fn trust() -> TlsTrust {
    TlsTrust::from_pem_file(&fixture("gateway-test-cert.pem")).unwrap()
}

pub fn quick() -> Timeouts {
    Timeouts {
        connect: Duration::from_secs(2),
        response: Duration::from_secs(5),
        liveness_check_after: Some(Duration::from_millis(250)),
    }
}

pub fn client(url: &str) -> GatewayClient {
    let trust = trust();
    GatewayClient::new(url, Some(&trust), quick()).unwrap()
}

pub fn json(status: u16, value: serde_json::Value) -> Option<Response<Full<Bytes>>> {
    Some(
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(value.to_string())))
            .unwrap(),
    )
}

pub fn api_error(
    status: u16,
    code: &str,
    retry_after: Option<&str>,
) -> Option<Response<Full<Bytes>>> {
    let mut r = Response::builder()
        .status(StatusCode::from_u16(status).unwrap())
        .header("content-type", "application/json");
    if let Some(s) = retry_after {
        r = r.header("retry-after", s);
    }
    let body = serde_json::json!({"error": {"code": code, "message": format!("test says {code}")}});
    Some(r.body(Full::new(Bytes::from(body.to_string()))).unwrap())
}

pub fn health(
    accepting: bool,
    data: &str,
    maintenance: bool,
    reason: Option<&str>,
) -> Option<Response<Full<Bytes>>> {
    json(
        if accepting { 200 } else { 503 },
        serde_json::json!({
            "instance": "gw-test", "role": "primary", "epoch": 1, "web": "up", "data": data,
            "maintenance": maintenance, "accepting": accepting, "reason": reason, "version": "0.1.0",
            "capabilities": []
        }),
    )
}

pub fn ack(job_path: &str, status: u16) -> Option<Response<Full<Bytes>>> {
    let id = job_path.rsplit('/').next().unwrap();
    json(
        status,
        serde_json::json!({
            "job_id": id, "state": "received", "accepted_by": "gw-test", "role": "primary", "epoch": 1,
            "received_at": "2025-01-01T00:00:00Z", "pages": 1, "bytes": 10
        }),
    )
}

pub fn session() -> Option<Response<Full<Bytes>>> {
    json(
        201,
        serde_json::json!({"session": "sess-1", "user": "alice", "expires_at": "2030-01-01T00:00:00Z"}),
    )
}

/// One part of a multipart body.
#[derive(Debug)]
pub struct Part {
    pub name: String,
    pub data: Bytes,
}

/// Parses `multipart/form-data` strictly: the body must start with the first
/// delimiter, every part must have a `name`, and the close delimiter must end
/// the body.
pub fn parse_multipart(content_type: &str, body: &Bytes) -> Vec<Part> {
    let boundary = content_type
        .strip_prefix("multipart/form-data; boundary=")
        .unwrap_or_else(|| panic!("not multipart/form-data: {content_type}"));
    let delimiter = format!("--{boundary}");
    let between = format!("\r\n--{boundary}");
    assert!(
        body.starts_with(delimiter.as_bytes()),
        "body must open with the delimiter"
    );
    let find = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).position(|w| w == needle);
    let mut at = delimiter.len();
    let mut parts = Vec::new();
    loop {
        let rest = &body[at..];
        if rest == b"--\r\n" {
            return parts;
        }
        assert!(rest.starts_with(b"\r\n"), "CRLF after delimiter");
        let head_end = find(&rest[2..], b"\r\n\r\n").expect("part headers end") + 2;
        let head = std::str::from_utf8(&rest[2..head_end]).unwrap();
        let name = head
            .split("name=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .expect("part has a name")
            .to_owned();
        let data_start = head_end + 4;
        let data_len = find(&rest[data_start..], between.as_bytes()).expect("part is closed");
        parts.push(Part {
            name,
            data: body.slice(at + data_start..at + data_start + data_len),
        });
        at += data_start + data_len + between.len();
    }
}

/// A listener that never accepts, with its accept queue filled: further
/// connection attempts get no answer at all (the kernel drops their SYNs),
/// which is how a silent drop looks to the device.
pub struct Blackhole {
    pub url: String,
    _listener: tokio::net::TcpListener,
    _fillers: Vec<tokio::net::TcpStream>,
}

impl Blackhole {
    pub async fn start() -> Self {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(1).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut fillers = Vec::new();
        // Connect until a connect does not complete: the queue is full.
        for _ in 0..16 {
            match tokio::time::timeout(
                Duration::from_millis(200),
                tokio::net::TcpStream::connect(addr),
            )
            .await
            {
                Ok(Ok(s)) => fillers.push(s),
                _ => break,
            }
        }
        Blackhole {
            url: format!("http://{addr}"),
            _listener: listener,
            _fillers: fillers,
        }
    }
}

/// The test-only gateway certificate's SHA-256 fingerprint.
pub fn gateway_cert_fingerprint() -> [u8; 32] {
    let der = CertificateDer::pem_file_iter(fixture("gateway-test-cert.pem"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    mfd_sim::transport::certificate_fingerprint(der.as_ref())
}

/// What a [`FaultProxy`] does with the traffic it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyMode {
    /// Forwards everything both ways.
    Pass,
    /// The server vanished silently: no new connection is accepted (the
    /// listen queue is filled, so new connects get no answer at all), and
    /// nothing more moves on the connections already open (they stay open).
    Silent,
    /// Each connection forwards at most 512 more bytes from the device, then
    /// holds the rest: an upload stalled in the middle.
    StallUploads,
}

/// A TCP proxy on 127.0.0.1 in front of a server, whose behaviour a test
/// switches. It remembers the job ids of the uploads it saw begin.
pub struct FaultProxy {
    pub url: String,
    mode: tokio::sync::watch::Sender<ProxyMode>,
    held: Arc<std::sync::atomic::AtomicBool>,
    uploads: Arc<Mutex<Vec<String>>>,
    addr: std::net::SocketAddr,
    accept: JoinHandle<()>,
    fillers: Mutex<Vec<tokio::net::TcpStream>>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl FaultProxy {
    /// A proxy to `upstream` (`http://HOST:PORT`), passing everything.
    pub async fn start(upstream: &str) -> Self {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        // A short listen queue, so that going silent fills it quickly.
        let listener = Arc::new(socket.listen(1).unwrap());
        let addr = listener.local_addr().unwrap();
        let upstream = upstream.trim_start_matches("http://").to_owned();
        let (mode, watch) = tokio::sync::watch::channel(ProxyMode::Pass);
        let held = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let uploads = Arc::new(Mutex::new(Vec::new()));
        let accept = {
            let (held, uploads) = (held.clone(), uploads.clone());
            tokio::spawn(async move {
                let mut conns = tokio::task::JoinSet::new();
                let mut silent = watch.clone();
                loop {
                    let device = tokio::select! {
                        accepted = listener.accept() => match accepted {
                            Ok((device, _)) => Some(device),
                            Err(_) => return,
                        },
                        // Silent: accept nothing more, keep the listener
                        // bound and every connection open.
                        gone = silent.wait_for(|m| *m == ProxyMode::Silent) => {
                            drop(gone);
                            None
                        }
                    };
                    let Some(device) = device else {
                        std::future::pending::<()>().await;
                        return;
                    };
                    if *watch.borrow() == ProxyMode::Silent {
                        // Accepted in the instant of going silent: held
                        // open, never answered.
                        conns.spawn(async move {
                            let _held = device;
                            std::future::pending::<()>().await;
                        });
                        continue;
                    }
                    let (upstream, watch, held, uploads) = (
                        upstream.clone(),
                        watch.clone(),
                        held.clone(),
                        uploads.clone(),
                    );
                    conns.spawn(async move {
                        let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                            return;
                        };
                        let (dr, dw) = device.into_split();
                        let (sr, sw) = server.into_split();
                        let up = pipe(dr, sw, watch.clone(), Some((held, uploads)));
                        let down = pipe(sr, dw, watch, None);
                        let _ = tokio::join!(up, down);
                    });
                }
            })
        };
        FaultProxy {
            url: format!("http://{addr}"),
            mode,
            held,
            uploads,
            addr,
            accept,
            fillers: Mutex::new(Vec::new()),
        }
    }

    /// Switches what the proxy does from now on.
    pub async fn set(&self, mode: ProxyMode) {
        self.mode.send_replace(mode);
        if mode == ProxyMode::Silent {
            // Connect until a connect does not complete: the queue is full
            // and the kernel drops further SYNs.
            for _ in 0..16 {
                match tokio::time::timeout(
                    Duration::from_millis(200),
                    tokio::net::TcpStream::connect(self.addr),
                )
                .await
                {
                    Ok(Ok(s)) => self.fillers.lock().unwrap().push(s),
                    _ => break,
                }
            }
        }
    }

    /// Whether a stalled upload is being held.
    pub fn holding(&self) -> bool {
        self.held.load(Ordering::SeqCst)
    }

    /// The job ids of the uploads seen to begin, in order.
    pub fn uploads(&self) -> Vec<String> {
        self.uploads.lock().unwrap().clone()
    }
}

/// Where the device's direction of a proxied connection notes whether it
/// holds bytes back, and the job ids of the uploads it saw begin.
type UploadWatch = (Arc<std::sync::atomic::AtomicBool>, Arc<Mutex<Vec<String>>>);

/// Copies one direction of a proxied connection, following the mode; when
/// `watch_uploads` is given (the device's direction), notes the job ids of
/// uploads and whether bytes are held back.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: tokio::sync::watch::Receiver<ProxyMode>,
    watch_uploads: Option<UploadWatch>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut allowance: Option<usize> = None;
    loop {
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            changed = mode.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
        };
        let current = *mode.borrow();
        if let Some((_, uploads)) = &watch_uploads {
            let text = String::from_utf8_lossy(&buf[..n]);
            for part in text.split("PUT /api/v1/jobs/").skip(1) {
                uploads
                    .lock()
                    .unwrap()
                    .push(part.chars().take(36).collect());
            }
        }
        let forward = match current {
            ProxyMode::Pass => n,
            ProxyMode::Silent => 0,
            ProxyMode::StallUploads if watch_uploads.is_some() => {
                let left = allowance.get_or_insert(512);
                let now = (*left).min(n);
                *left -= now;
                now
            }
            ProxyMode::StallUploads => n,
        };
        if forward > 0 && to.write_all(&buf[..forward]).await.is_err() {
            return;
        }
        if forward < n {
            if let Some((held, _)) = &watch_uploads {
                held.store(true, Ordering::SeqCst);
            }
            // Nothing more moves; both sockets stay open until the test ends.
            let _keep = (from, to);
            std::future::pending::<()>().await;
            return;
        }
    }
}
