//! The web service's listeners: accept loops for HTTPS, plain HTTP (loopback
//! only) and HTTPS behind a PROXY-protocol load balancer, each connection
//! served by hyper with the axum router. The service can be stopped and
//! started while the process runs (failover cause 2: "web service down"): a
//! stop closes the listening sockets, so a device's connect is refused, and
//! lets open requests finish; a start binds the same addresses again.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, watch};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::proxy_protocol;
use crate::settings::{ListenerKind, ListenerSettings};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// hyper grows a connection's read buffer while a large body streams in;
/// capping it keeps many concurrent uploads within bounded memory.
const MAX_READ_BUFFER: usize = 128 * 1024;
/// How long a stop waits for open requests (uploads) to finish.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// The address a request came from, as the handlers see it: the client's
/// own address, also behind a PROXY-protocol load balancer.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

/// A bound listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BoundListener {
    pub kind: ListenerKind,
    pub addr: SocketAddr,
}

/// Whether the web service is up and where it listens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WebState {
    pub up: bool,
    pub listeners: Vec<BoundListener>,
}

struct Running {
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

/// The listeners of one instance.
pub struct WebService {
    configured: Vec<ListenerSettings>,
    tls: TlsAcceptor,
    state: watch::Sender<WebState>,
    running: Mutex<Option<Running>>,
}

impl WebService {
    pub fn new(configured: Vec<ListenerSettings>, tls: Arc<rustls::ServerConfig>) -> WebService {
        WebService {
            configured,
            tls: TlsAcceptor::from(tls),
            state: watch::Sender::new(WebState {
                up: false,
                listeners: Vec::new(),
            }),
            running: Mutex::new(None),
        }
    }

    pub fn state(&self) -> WebState {
        self.state.borrow().clone()
    }

    /// Binds every listener and starts serving `app`. Port 0 in the
    /// configuration picks a free port on the first start; later starts bind
    /// the same port again, so devices find the service where it was.
    pub async fn start(&self, app: Router) -> std::io::Result<Vec<BoundListener>> {
        let mut running = self.running.lock().await;
        if running.is_some() {
            return Ok(self.state().listeners);
        }
        let previous = self.state().listeners;
        let mut bound = Vec::new();
        let mut sockets = Vec::new();
        for (i, l) in self.configured.iter().enumerate() {
            let addr = previous.get(i).map_or(l.addr, |b| b.addr);
            let listener = TcpListener::bind(addr).await.map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("cannot listen on {addr} ({:?}): {e}", l.kind),
                )
            })?;
            let addr = listener.local_addr()?;
            bound.push(BoundListener { kind: l.kind, addr });
            sockets.push((listener, l.kind));
        }
        let (stop, _) = watch::channel(false);
        let mut tasks = JoinSet::new();
        for (listener, kind) in sockets {
            tasks.spawn(accept_loop(
                listener,
                kind,
                self.tls.clone(),
                app.clone(),
                stop.subscribe(),
            ));
        }
        *running = Some(Running { stop, tasks });
        self.state.send_replace(WebState {
            up: true,
            listeners: bound.clone(),
        });
        for b in &bound {
            tracing::info!(kind = ?b.kind, addr = %b.addr, "web service listening");
        }
        Ok(bound)
    }

    /// Closes the listeners at once and waits (bounded) for open requests.
    pub async fn stop(&self) {
        let mut running = self.running.lock().await;
        let Some(Running { stop, mut tasks }) = running.take() else {
            return;
        };
        self.state.send_modify(|s| s.up = false);
        let _ = stop.send(true);
        while tasks.join_next().await.is_some() {}
        tracing::warn!("web service stopped");
    }
}

async fn accept_loop(
    listener: TcpListener,
    kind: ListenerKind,
    tls: TlsAcceptor,
    app: Router,
    mut stop: watch::Receiver<bool>,
) {
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let _ = tcp.set_nodelay(true);
                    tokio::spawn(handle_connection(tcp, peer, kind, tls.clone(), app.clone(), graceful.watcher()));
                }
                Err(e) => {
                    // Out of file descriptors and the like: wait a little
                    // instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("open connections did not finish within {DRAIN_TIMEOUT:?}; closing them");
    }
}

async fn handle_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    kind: ListenerKind,
    tls: TlsAcceptor,
    app: Router,
    watcher: Watcher,
) {
    match kind {
        ListenerKind::Plain => serve_http(tcp, peer, app, watcher).await,
        ListenerKind::Https => match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(tcp)).await
        {
            Ok(Ok(stream)) => serve_http(stream, peer, app, watcher).await,
            Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
        },
        ListenerKind::ProxyHttps => {
            let (header, rest) = match proxy_protocol::read_header(tcp, HANDSHAKE_TIMEOUT).await {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "connection refused: bad or missing PROXY header");
                    return;
                }
            };
            // LOCAL headers come from the balancer's own health checks.
            let client = header.source.unwrap_or(peer);
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(rest)).await {
                Ok(Ok(stream)) => serve_http(stream, client, app, watcher).await,
                Ok(Err(e)) => {
                    tracing::debug!(%client, via = %peer, error = %e, "TLS handshake failed")
                }
                Err(_) => tracing::debug!(%client, via = %peer, "TLS handshake timed out"),
            }
        }
    }
}

async fn serve_http<I>(io: I, client: SocketAddr, app: Router, watcher: Watcher)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ClientAddr(client));
        req.extensions_mut().insert(ConnectInfo(client));
        app.clone().oneshot(req)
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_READ_BUFFER)
        .serve_connection(TokioIo::new(io), service);
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(%client, error = %e, "connection ended with an error");
    }
}
