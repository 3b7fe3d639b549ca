//! Network fault injection for the end-to-end tests, on loopback only: a TCP
//! proxy placed between two parties (a device and a server, or two servers'
//! peer ports) whose behaviour can be switched while the test runs, and a
//! listener whose connects go unanswered. It owns no knowledge of the
//! gateway's protocols: it moves, delays, drops and resets bytes, nothing
//! more.
//!
//! Each proxy and each silent listener runs on its own thread with its own
//! small tokio runtime. That way the same type serves plain `#[test]`
//! functions (which block on std sockets and processes) and `#[tokio::test]`
//! functions alike, and a test that blocks its own runtime cannot stall the
//! network it is observing. Dropping the value stops the thread, and with it
//! every connection task, before `drop` returns.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, sleep_until, timeout};

/// How long the proxy waits for the upstream to answer a connect. A test's
/// upstream is a local process, so anything longer means it is wedged.
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Chunks read but not yet written, per direction. Bounded so that a slow
/// (delayed) path pushes back on the sender as a real one would, instead of
/// buffering without limit inside the proxy.
const QUEUE_CHUNKS: usize = 64;

const CHUNK_BYTES: usize = 16 * 1024;

/// What the proxy does with connections and bytes. Set with
/// [`FaultProxy::set_mode`]; a change reaches links that are already open at
/// once, except where a variant says it applies to new connections only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Forward bytes both ways unchanged.
    Pass,
    /// New connections are accepted and then reset at once (a real RST, as
    /// from a closed port or a crashed peer). The client sees
    /// `ConnectionReset` either from its connect (when the RST arrives
    /// before it checks the handshake's outcome, as tokio does) or from its
    /// first read or write. Links already open keep forwarding; call
    /// [`FaultProxy::cut`] to reset them too.
    Refuse,
    /// A partition: new connections are accepted but never answered, never
    /// forwarded and never closed; on open links the bytes in both
    /// directions are read and discarded, so senders see their writes
    /// succeed and nothing arrives. A link that lived through a blackhole has
    /// a gap in its byte stream when the mode goes back to `Pass` (real TCP
    /// would have retransmitted), so tests that heal a partition usually
    /// call [`FaultProxy::cut`] first; see also [`Mode::Stall`].
    Blackhole,
    /// One-way loss: bytes from the client towards the upstream are
    /// discarded, the upstream's bytes still reach the client. New
    /// connections are linked to the upstream as in `Pass`.
    DropToUpstream,
    /// A partition that heals intact: the proxy stops reading in both
    /// directions, so bytes wait in the kernel's buffers and the senders
    /// eventually block, as with a path that loses every segment while TCP
    /// keeps retransmitting. Back in `Pass`, everything arrives in order. A
    /// connection accepted while stalled is linked to the upstream only
    /// when the stall ends.
    Stall,
    /// Each chunk is forwarded this long after the proxy read it, in both
    /// directions. The handshake itself is not delayed.
    Delay(Duration),
}

impl Mode {
    fn drops(self, direction: Direction) -> bool {
        match self {
            Mode::Blackhole => true,
            Mode::DropToUpstream => direction == Direction::ToUpstream,
            _ => false,
        }
    }

    fn delay(self) -> Duration {
        match self {
            Mode::Delay(delay) => delay,
            _ => Duration::ZERO,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    ToUpstream,
    ToClient,
}

/// What the proxy has done so far; a snapshot from [`FaultProxy::counters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Connections accepted from clients, whatever happened to them next.
    pub accepted: u64,
    /// Connections reset on arrival because the mode was `Refuse`.
    pub refused: u64,
    /// Connections reset on arrival because the upstream could not be
    /// reached (down, or not named yet).
    pub unreachable: u64,
    /// Connections reset by [`FaultProxy::cut`].
    pub cut: u64,
    /// Connections the proxy holds open right now.
    pub live: u64,
    /// Bytes handed to the upstream.
    pub to_upstream: u64,
    /// Bytes handed to clients.
    pub to_client: u64,
    /// Bytes read and discarded by `Blackhole` or `DropToUpstream`.
    pub dropped: u64,
}

/// The switchable part of the proxy, watched by every link task so that a
/// change reaches them without polling.
#[derive(Clone, Copy, Debug)]
struct Control {
    mode: Mode,
    upstream: Option<SocketAddr>,
    /// Incremented by `cut`; a link resets itself when this differs from
    /// the value it was accepted under.
    cut_generation: u64,
}

struct Shared {
    control: watch::Sender<Control>,
    accepted: AtomicU64,
    refused: AtomicU64,
    unreachable: AtomicU64,
    cut: AtomicU64,
    live: AtomicU64,
    to_upstream: AtomicU64,
    to_client: AtomicU64,
    dropped: AtomicU64,
}

impl Shared {
    fn count(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// A TCP proxy on `127.0.0.1` with a port chosen by the OS, forwarding to
/// one upstream, whose [`Mode`] can be switched from any thread or task.
///
/// Point the client (a device, or a server's peer address) at
/// [`FaultProxy::addr`] instead of the real address. Dropping the proxy
/// closes its port and every connection through it.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    _runner: Runner,
}

impl FaultProxy {
    /// A proxy in `Pass` mode in front of `upstream`.
    pub fn start(upstream: SocketAddr) -> FaultProxy {
        Self::start_with(Some(upstream))
    }

    /// A proxy whose port exists before its upstream does: connections are
    /// reset, as if nothing listened yet, until [`FaultProxy::set_upstream`]
    /// names it. Two servers that must each be configured with the other's
    /// (proxied) peer address need this, since a server's own port is only
    /// known once it runs.
    pub fn reserve() -> FaultProxy {
        Self::start_with(None)
    }

    fn start_with(upstream: Option<SocketAddr>) -> FaultProxy {
        // Bound here, before the thread starts, so the port accepts (into
        // the kernel's queue) from the moment `start` returns.
        let listener =
            std::net::TcpListener::bind("127.0.0.1:0").expect("fault proxy: bind 127.0.0.1:0");
        listener
            .set_nonblocking(true)
            .expect("fault proxy: non-blocking listener");
        let addr = listener.local_addr().expect("fault proxy: local address");
        let (control, _) = watch::channel(Control {
            mode: Mode::Pass,
            upstream,
            cut_generation: 0,
        });
        let shared = Arc::new(Shared {
            control,
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            unreachable: AtomicU64::new(0),
            cut: AtomicU64::new(0),
            live: AtomicU64::new(0),
            to_upstream: AtomicU64::new(0),
            to_client: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        });
        let for_loop = Arc::clone(&shared);
        let runner = Runner::spawn(format!("fault-proxy-{}", addr.port()), move || {
            accept_loop(listener, for_loop)
        });
        FaultProxy {
            addr,
            shared,
            _runner: runner,
        }
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn mode(&self) -> Mode {
        self.shared.control.borrow().mode
    }

    pub fn set_mode(&self, mode: Mode) {
        self.shared.control.send_modify(|c| c.mode = mode);
    }

    /// Names (or changes) the upstream for connections accepted from now
    /// on; open links keep theirs.
    pub fn set_upstream(&self, upstream: SocketAddr) {
        self.shared
            .control
            .send_modify(|c| c.upstream = Some(upstream));
    }

    /// Resets every connection the proxy has accepted so far, on both sides
    /// (client and upstream each get an RST), whatever the mode. The mode is
    /// unchanged, so new connections behave as it says.
    pub fn cut(&self) {
        self.shared.control.send_modify(|c| c.cut_generation += 1);
    }

    pub fn counters(&self) -> Counters {
        let s = &self.shared;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Counters {
            accepted: get(&s.accepted),
            refused: get(&s.refused),
            unreachable: get(&s.unreachable),
            cut: get(&s.cut),
            live: get(&s.live),
            to_upstream: get(&s.to_upstream),
            to_client: get(&s.to_client),
            dropped: get(&s.dropped),
        }
    }
}

async fn accept_loop(listener: std::net::TcpListener, shared: Arc<Shared>) {
    let listener = TcpListener::from_std(listener).expect("fault proxy: register listener");
    loop {
        match listener.accept().await {
            Ok((client, _)) => {
                Shared::count(&shared.accepted, 1);
                // Taken at accept time, so a `cut` that comes before the task
                // first runs still reaches this connection.
                let generation = shared.control.borrow().cut_generation;
                tokio::spawn(link(client, Arc::clone(&shared), generation));
            }
            // Out of descriptors or a connection reset while queued: pause
            // instead of spinning, then go on serving.
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// How a link ends: a normal close (FIN) or a reset (RST) of both sides.
#[derive(Debug, PartialEq, Eq)]
enum End {
    Close,
    Reset,
}

/// Keeps `Counters::live` true even when the runtime drops a task midway.
struct Live<'a>(&'a AtomicU64);

impl<'a> Live<'a> {
    fn new(counter: &'a AtomicU64) -> Live<'a> {
        counter.fetch_add(1, Ordering::Relaxed);
        Live(counter)
    }
}

impl Drop for Live<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One client connection, from accept to close.
async fn link(mut client: TcpStream, shared: Arc<Shared>, generation: u64) {
    let _live = Live::new(&shared.live);
    let mut upstream = None;
    let mut control = shared.control.subscribe();
    let end = tokio::select! {
        end = serve(&mut client, &mut upstream, &shared) => end,
        _ = control.wait_for(|c| c.cut_generation != generation) => {
            Shared::count(&shared.cut, 1);
            End::Reset
        }
    };
    if end == End::Reset {
        // SO_LINGER 0 makes the close when the streams drop (at the end of
        // this function) send an RST instead of a FIN, which is what a
        // crashed peer or a middlebox dropping state looks like.
        let _ = client.set_zero_linger();
        if let Some(upstream) = &upstream {
            let _ = upstream.set_zero_linger();
        }
    }
}

async fn serve(
    client: &mut TcpStream,
    upstream_slot: &mut Option<TcpStream>,
    shared: &Shared,
) -> End {
    let mut control = shared.control.subscribe();
    let now = match control.wait_for(|c| c.mode != Mode::Stall).await {
        Ok(c) => *c,
        Err(_) => return End::Close,
    };
    match now.mode {
        Mode::Refuse => {
            Shared::count(&shared.refused, 1);
            return End::Reset;
        }
        Mode::Blackhole => return sink(client, shared).await,
        _ => {}
    }
    let Some(addr) = now.upstream else {
        Shared::count(&shared.unreachable, 1);
        return End::Reset;
    };
    let upstream = match timeout(UPSTREAM_CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(upstream)) => upstream,
        // The client already holds an established connection, so the
        // nearest the proxy can come to "connection refused" is a reset.
        _ => {
            Shared::count(&shared.unreachable, 1);
            return End::Reset;
        }
    };
    // Small writes (heartbeats, HTTP heads) should not wait for Nagle: the
    // proxy must add no latency that the mode did not ask for.
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let upstream = upstream_slot.insert(upstream);
    let (mut client_read, mut client_write) = client.split();
    let (mut upstream_read, mut upstream_write) = upstream.split();
    let both = tokio::try_join!(
        pump(
            &mut client_read,
            &mut upstream_write,
            Direction::ToUpstream,
            shared
        ),
        pump(
            &mut upstream_read,
            &mut client_write,
            Direction::ToClient,
            shared
        ),
    );
    match both {
        Ok(_) => End::Close,
        // One side reset or failed: pass that on to the other side rather
        // than a polite close, so neither end mistakes it for a clean end.
        Err(_) => End::Reset,
    }
}

/// A connection accepted while blackholed: everything the client sends is
/// discarded, nothing is sent back, and the proxy never closes its side, not
/// even after the client's FIN (a blackhole does not answer that either).
/// It ends only when the client resets, on `cut`, or when the proxy goes.
async fn sink(client: &mut TcpStream, shared: &Shared) -> End {
    let mut buf = vec![0; CHUNK_BYTES];
    loop {
        match client.read(&mut buf).await {
            Ok(0) => std::future::pending::<()>().await,
            Ok(n) => Shared::count(&shared.dropped, n),
            Err(_) => return End::Close,
        }
    }
}

/// Moves one direction of a link. Reading and writing are separate halves
/// joined by a bounded queue so that a delay is a latency (each chunk due a
/// fixed time after it was read) and not a throughput limit of one chunk
/// per delay.
async fn pump<R, W>(
    from: &mut R,
    to: &mut W,
    direction: Direction,
    shared: &Shared,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let forwarded = match direction {
        Direction::ToUpstream => &shared.to_upstream,
        Direction::ToClient => &shared.to_client,
    };
    let (queue, mut queued) = mpsc::channel::<(Instant, Vec<u8>)>(QUEUE_CHUNKS);
    let mut read_control = shared.control.subscribe();
    let mut write_control = shared.control.subscribe();

    let read = async move {
        let mut buf = vec![0; CHUNK_BYTES];
        loop {
            // While stalled nothing is read, so the bytes stay in the
            // kernel and the sender's window fills up.
            let _ = read_control.wait_for(|c| c.mode != Mode::Stall).await;
            let n = from.read(&mut buf).await?;
            let mode = read_control.borrow().mode;
            if n == 0 {
                // A FIN is a segment like any other: while this direction
                // drops, it is held back and delivered when the path heals,
                // as TCP's retransmission would.
                let _ = read_control
                    .wait_for(|c| !c.mode.drops(direction) && c.mode != Mode::Stall)
                    .await;
                return Ok::<(), io::Error>(());
            }
            if mode.drops(direction) {
                Shared::count(&shared.dropped, n);
                continue;
            }
            let due = Instant::now() + mode.delay();
            if queue.send((due, buf[..n].to_vec())).await.is_err() {
                // The writing half has failed and reports why.
                return Ok(());
            }
        }
    };

    let write = async move {
        while let Some((due, chunk)) = queued.recv().await {
            sleep_until(due).await;
            // The mode may have changed while the chunk waited: a path that
            // became a blackhole loses what was still in flight.
            let _ = write_control.wait_for(|c| c.mode != Mode::Stall).await;
            if write_control.borrow().mode.drops(direction) {
                Shared::count(&shared.dropped, chunk.len());
                continue;
            }
            // Counted before the write so that a test which has just
            // received the bytes never reads a counter that lags behind.
            Shared::count(forwarded, chunk.len());
            to.write_all(&chunk).await?;
        }
        // The reading half saw end of stream: pass the half-close on.
        to.shutdown().await
    };

    tokio::try_join!(read, write).map(|_| ())
}

/// A listener on `127.0.0.1` that never accepts and whose accept queue is
/// already full, so that a client's connect hangs: its SYN is dropped by the
/// kernel and goes unanswered, as with a host that has vanished or a
/// firewall that drops silently. This is a connect timeout, which
/// [`Mode::Blackhole`] cannot give: a proxy has to accept to be in the path
/// at all.
///
/// Built by listening with a backlog of 1 and opening connections to
/// itself until one of them goes unanswered; those first connections (Linux
/// completes the handshake for backlog + 1 of them, and may complete one
/// more in a race with a full queue) are held open for the listener's life
/// so the queue stays full. A client that got a handshake in that race sees
/// an established connection to which nothing ever answers.
///
/// A SYN is retried by the client after about 1 s, 3 s, 7 s...; while the
/// listener lives, every retry is dropped too. Once it is dropped, the port
/// is closed and the next retry is refused.
pub struct SilentListener {
    addr: SocketAddr,
    _runner: Runner,
}

/// How long a filling connect may take before it counts as unanswered.
/// Loopback handshakes take microseconds; the first SYN retry comes after
/// about a second, so there is no risk of a late answer.
const FILL_PROBE: Duration = Duration::from_millis(100);

/// Bound on filling connections: Linux needs backlog + 1 (+ 1 in a race).
const FILL_LIMIT: usize = 16;

impl SilentListener {
    pub fn start() -> SilentListener {
        let (ready, addr) = std::sync::mpsc::channel();
        let runner = Runner::spawn("silent-listener".to_owned(), move || async move {
            match fill_backlog().await {
                Ok((listener, fillers)) => {
                    let _ = ready.send(listener.local_addr());
                    std::future::pending::<()>().await;
                    drop((listener, fillers));
                }
                Err(e) => {
                    let _ = ready.send(Err(e));
                }
            }
        });
        let addr = addr
            .recv_timeout(Duration::from_secs(10))
            .expect("silent listener: no answer from its thread in 10 s")
            .unwrap_or_else(|e| panic!("silent listener: cannot fill the backlog: {e}"));
        SilentListener {
            addr,
            _runner: runner,
        }
    }

    /// The address whose connects hang.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

async fn fill_backlog() -> io::Result<(TcpListener, Vec<TcpStream>)> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    let listener = socket.listen(1)?;
    let addr = listener.local_addr()?;
    let mut fillers = Vec::new();
    for _ in 0..FILL_LIMIT {
        match timeout(FILL_PROBE, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => fillers.push(stream),
            Ok(Err(e)) => return Err(e),
            // This SYN went unanswered: the queue is full.
            Err(_) => return Ok((listener, fillers)),
        }
    }
    Err(io::Error::other(format!(
        "{FILL_LIMIT} connects to a listener with backlog 1 were all answered"
    )))
}

/// A thread running one future on its own current-thread runtime until the
/// owner is dropped. Dropping the runtime on that thread drops every task
/// spawned on it, and so closes their sockets, before `drop` returns.
struct Runner {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Runner {
    fn spawn<F, Fut>(name: String, task: F) -> Runner
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = thread::Builder::new()
            .name(name)
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("fault injection: tokio runtime");
                runtime.block_on(async move {
                    tokio::select! {
                        () = task() => {}
                        _ = stopped => {}
                    }
                });
            })
            .expect("fault injection: spawn thread");
        Runner {
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            // A panic on that thread has already been printed; re-raising
            // it here could abort a test that is itself unwinding.
            let _ = thread.join();
        }
    }
}
