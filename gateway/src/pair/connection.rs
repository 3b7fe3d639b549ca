//! The pair port's connections: the listener (whose TLS handshake refuses
//! anyone but the pinned peer, or an unknown certificate only while a
//! pairing code is open), the pairing exchange such a certificate is limited
//! to, the dialer, and the reader and writer tasks of an authenticated
//! connection. They report to the driver and decide nothing about the
//! protocol.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use pair_core::ServerId;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::frame;
use super::identity::{PairIdentity, fingerprint, pair_name};
use super::pairing::{JoinAnswer, JoinRequest};
use super::trust::{self, ListenerTrust};
use super::wire::Wire;

/// How long a TLS handshake on the pair port may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the frames of one connection go. Two queues on one connection:
/// control frames (heartbeats, protocol messages, acknowledgements) always
/// leave before bulk frames (job pages, in chunks of at most
/// [`BULK_CHUNK_BYTES`]), so a heartbeat waits behind at most one chunk and
/// a large job never makes the peer judge this server DEAD.
#[derive(Clone)]
pub struct LinkWriter {
    pub control: mpsc::Sender<Vec<u8>>,
    pub bulk: mpsc::Sender<Vec<u8>>,
}

/// The largest piece of page data one bulk frame carries.
pub const BULK_CHUNK_BYTES: usize = 256 << 10;

/// What the connection tasks report to the driver.
pub enum LinkEvent {
    Up {
        generation: u64,
        writer: LinkWriter,
        from: SocketAddr,
    },
    Frame {
        generation: u64,
        wire: Wire,
    },
    Down {
        generation: u64,
        why: String,
    },
    /// An unknown certificate connected while a code was open: it may only
    /// try the code.
    JoinAttempt {
        request: JoinRequest,
        fingerprint: [u8; 32],
        from: SocketAddr,
        reply: oneshot::Sender<JoinAnswer>,
    },
}

/// Accepts connections on the pair port. The handshake itself refuses
/// clients without a certificate or with one that is neither pinned nor
/// allowed by an open pairing code; every refusal is logged with the
/// address it came from.
pub async fn accept_loop(
    listener: TcpListener,
    identity: Arc<PairIdentity>,
    trust: Arc<RwLock<ListenerTrust>>,
    events: mpsc::UnboundedSender<LinkEvent>,
) {
    let config = match trust::server_config(&identity, trust.clone()) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "the pair listener's TLS set-up failed");
            return;
        }
    };
    let acceptor = TlsAcceptor::from(config);
    let mut generation = 1u64 << 32;
    loop {
        let (tcp, from) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "pair accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        generation += 1;
        let (acceptor, trust, events) = (acceptor.clone(), trust.clone(), events.clone());
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::warn!(%from, error = %e, "pair connection refused in the TLS handshake");
                    return;
                }
                Err(_) => {
                    tracing::warn!(%from, "pair connection refused: the TLS handshake timed out");
                    return;
                }
            };
            let Some(peer_fp) = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| fingerprint(c.as_ref()))
            else {
                return;
            };
            let pinned = trust.read().unwrap_or_else(|p| p.into_inner()).pinned;
            if pinned == Some(peer_fp) {
                run_connection(tls, from, generation, events);
            } else {
                pairing_exchange(tls, from, peer_fp, events).await;
            }
        });
    }
}

/// The only thing an unknown certificate may do: present a pairing proof.
async fn pairing_exchange<S>(
    mut tls: S,
    from: SocketAddr,
    fp: [u8; 32],
    events: mpsc::UnboundedSender<LinkEvent>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let request: JoinRequest = match tokio::time::timeout(HANDSHAKE_TIMEOUT, frame::read(&mut tls))
        .await
    {
        Ok(Ok(Some(r))) => r,
        _ => {
            tracing::warn!(%from, "pair connection refused: an unknown certificate sent no pairing request");
            return;
        }
    };
    let (reply, answer) = oneshot::channel();
    if events
        .send(LinkEvent::JoinAttempt {
            request,
            fingerprint: fp,
            from,
            reply,
        })
        .is_err()
    {
        return;
    }
    if let Ok(answer) = answer.await {
        let _ = frame::write(&mut tls, &answer).await;
    }
}

/// Runs one authenticated connection: a reader that hands messages to the
/// driver and a writer fed by it.
fn run_connection<S>(
    tls: S,
    from: SocketAddr,
    generation: u64,
    events: mpsc::UnboundedSender<LinkEvent>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let (mut reader, mut writer) = tokio::io::split(tls);
    let (control, mut control_rx) = mpsc::channel::<Vec<u8>>(1024);
    // A few chunks in flight: enough to keep the link busy, few enough
    // that memory stays flat whatever the size of the jobs.
    let (bulk, mut bulk_rx) = mpsc::channel::<Vec<u8>>(4);
    if events
        .send(LinkEvent::Up {
            generation,
            writer: LinkWriter { control, bulk },
            from,
        })
        .is_err()
    {
        return;
    }
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        loop {
            let bytes = tokio::select! {
                biased;
                Some(b) = control_rx.recv() => b,
                Some(b) = bulk_rx.recv() => b,
                else => break,
            };
            if writer.write_all(&bytes).await.is_err() || writer.flush().await.is_err() {
                break;
            }
        }
        let _ = writer.shutdown().await;
    });
    tokio::spawn(async move {
        let why = loop {
            match frame::read::<_, Wire>(&mut reader).await {
                Ok(Some(wire)) => {
                    if events.send(LinkEvent::Frame { generation, wire }).is_err() {
                        return;
                    }
                }
                Ok(None) => break "the peer closed the connection".to_owned(),
                Err(e) => break e.to_string(),
            }
        };
        let _ = events.send(LinkEvent::Down { generation, why });
    });
}

/// Connects to the peer whenever the driver wants a link and has none.
pub async fn dial_loop(
    identity: Arc<PairIdentity>,
    mut want: watch::Receiver<Option<(String, [u8; 32], ServerId)>>,
    events: mpsc::UnboundedSender<LinkEvent>,
    retry: Duration,
    connect_timeout: Duration,
) {
    let mut generation = 0u64;
    let mut last_attempt: Option<Instant> = None;
    loop {
        // Never more than one attempt per `retry`: a peer that accepts the
        // TCP connection and then refuses this server's certificate (TLS 1.3
        // tells the client only after its handshake) must not make a loop.
        if let Some(at) = last_attempt {
            let since = at.elapsed();
            if since < retry {
                tokio::time::sleep(retry - since).await;
            }
        }
        let target = want.borrow_and_update().clone();
        let Some((address, fp, server)) = target else {
            if want.changed().await.is_err() {
                return;
            }
            continue;
        };
        let attempt = async {
            let config = trust::client_config(&identity, fp).map_err(|e| e.to_string())?;
            let tcp = tokio::time::timeout(connect_timeout, TcpStream::connect(&address))
                .await
                .map_err(|_| "connect timed out".to_owned())?
                .map_err(|e| e.to_string())?;
            let _ = tcp.set_nodelay(true);
            let from = tcp.peer_addr().map_err(|e| e.to_string())?;
            let name = rustls_pki_types::ServerName::try_from(pair_name(server))
                .map_err(|e| e.to_string())?;
            let tls = tokio::time::timeout(
                connect_timeout,
                TlsConnector::from(config).connect(name, tcp),
            )
            .await
            .map_err(|_| "TLS handshake timed out".to_owned())?
            .map_err(|e| e.to_string())?;
            Ok::<_, String>((tls, from))
        };
        last_attempt = Some(Instant::now());
        match attempt.await {
            Ok((tls, from)) => {
                generation += 1;
                run_connection(tls, from, generation, events.clone());
                // Wait until the driver wants a link again.
                if want.changed().await.is_err() {
                    return;
                }
            }
            Err(why) => {
                tracing::debug!(address, why, "pair dial failed");
                tokio::select! {
                    _ = tokio::time::sleep(retry) => {}
                    changed = want.changed() => if changed.is_err() { return },
                }
            }
        }
    }
}
