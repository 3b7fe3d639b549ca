//! The fault injector itself (`e2e::fault`), against small servers started in
//! each test: what every proxy mode does to new and to open connections,
//! `cut`, the counters, that dropping the proxy ends its links, and that the
//! silent listener makes connects time out. The partition tests rely on
//! these behaviours, so they are pinned here first.

use std::future::Future;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use e2e::fault::{FaultProxy, Mode, SilentListener};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, sleep, timeout};

/// No test here may run longer than this, whatever goes wrong.
const BOUND: Duration = Duration::from_secs(10);

/// How long a connection must stay silent to count as "never answers".
const QUIET: Duration = Duration::from_millis(500);

/// How long a reset or an expected answer may take on loopback.
const PROMPT: Duration = Duration::from_secs(1);

async fn bounded<F: Future>(test: F) -> F::Output {
    timeout(BOUND, test)
        .await
        .unwrap_or_else(|_| panic!("the test did not finish in {BOUND:?}"))
}

/// An echo server on `127.0.0.1:0`; counts the connections it accepted, so a
/// test can prove that nothing reached it.
async fn echo() -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicU64::new(0));
    let count = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let (mut read, mut write) = stream.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
            });
        }
    });
    (addr, accepted)
}

/// A server that sends "tick" every 50 ms on each connection and counts the
/// bytes it receives: it shows one direction working while the other drops.
async fn ticker() -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Arc::new(AtomicU64::new(0));
    let count = Arc::clone(&received);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let count = Arc::clone(&count);
            let (mut read, mut write) = stream.into_split();
            tokio::spawn(async move {
                let mut buf = [0; 1024];
                while let Ok(n @ 1..) = read.read(&mut buf).await {
                    count.fetch_add(n as u64, Ordering::SeqCst);
                }
            });
            tokio::spawn(async move {
                while write.write_all(b"tick").await.is_ok() {
                    sleep(Duration::from_millis(50)).await;
                }
            });
        }
    });
    (addr, received)
}

async fn connect(proxy: &FaultProxy) -> TcpStream {
    TcpStream::connect(proxy.addr()).await.unwrap()
}

/// Sends `bytes` and insists they come back promptly.
async fn round_trip(stream: &mut TcpStream, bytes: &[u8]) {
    stream.write_all(bytes).await.unwrap();
    let mut back = vec![0; bytes.len()];
    timeout(PROMPT, stream.read_exact(&mut back))
        .await
        .expect("no echo in time")
        .expect("echo read");
    assert_eq!(back, bytes);
}

/// Insists that nothing at all happens on `stream` for `quiet`: no data,
/// no end of stream, no error.
async fn assert_silent(stream: &mut TcpStream, quiet: Duration) {
    let mut buf = [0; 64];
    if let Ok(outcome) = timeout(quiet, stream.read(&mut buf)).await {
        panic!("expected silence for {quiet:?}, the read returned {outcome:?}");
    }
}

/// Insists that the peer reset the connection: the read fails with
/// `ConnectionReset` (an RST), promptly — not a clean end of stream (a FIN)
/// and not silence.
async fn assert_reset(stream: &mut TcpStream) {
    let mut buf = [0; 64];
    let outcome = timeout(PROMPT, stream.read(&mut buf))
        .await
        .expect("no reset in time");
    match outcome {
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        other => panic!("expected ConnectionReset, the read returned {other:?}"),
    }
}

/// Insists that a new connection to the proxy is reset on arrival. The RST
/// can overtake the client's own check of its connect (tokio reads the
/// socket's error once the handshake is reported), so the reset shows either
/// as the connect's error or as the first read's; both must be
/// `ConnectionReset`, and clients of the gateway meet both.
async fn assert_reset_on_arrival(proxy: &FaultProxy) {
    match TcpStream::connect(proxy.addr()).await {
        Ok(mut stream) => assert_reset(&mut stream).await,
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset, "connect: {e}"),
    }
}

/// Polls `condition` every 10 ms (the test's own bound limits the wait).
async fn until(condition: impl Fn() -> bool) {
    while !condition() {
        sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn pass_forwards_bytes_and_the_close_both_ways() {
    bounded(async {
        let (upstream, _) = echo().await;
        let proxy = FaultProxy::start(upstream);
        let mut stream = connect(&proxy).await;
        round_trip(&mut stream, b"hello").await;

        // Larger than a chunk and than the queue, written while it is read
        // back, so that chunking and back-pressure are exercised.
        let big: Vec<u8> = (0..1_048_576u32).map(|i| (i % 251) as u8).collect();
        let (mut read, mut write) = stream.split();
        let (_, back) = tokio::join!(write.write_all(&big), async {
            let mut back = vec![0; big.len()];
            read.read_exact(&mut back).await.map(|_| back)
        });
        assert!(back.unwrap() == big, "the large payload came back altered");

        // Our half-close reaches the echo server, whose close comes back.
        stream.shutdown().await.unwrap();
        let mut rest = Vec::new();
        let n = timeout(PROMPT, stream.read_to_end(&mut rest))
            .await
            .expect("no close in time")
            .unwrap();
        assert_eq!(n, 0);

        let total = 5 + big.len() as u64;
        let counters = proxy.counters();
        assert_eq!(counters.accepted, 1);
        assert_eq!(counters.to_upstream, total);
        assert_eq!(counters.to_client, total);
        assert_eq!(counters.dropped, 0);
        until(|| proxy.counters().live == 0).await;
    })
    .await;
}

#[tokio::test]
async fn refuse_resets_new_connections_at_once_and_spares_open_links() {
    bounded(async {
        let (upstream, reached) = echo().await;
        let proxy = FaultProxy::start(upstream);
        let mut open = connect(&proxy).await;
        round_trip(&mut open, b"before").await;

        proxy.set_mode(Mode::Refuse);
        let started = Instant::now();
        assert_reset_on_arrival(&proxy).await;
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "the reset took {:?}",
            started.elapsed()
        );
        assert_eq!(
            reached.load(Ordering::SeqCst),
            1,
            "a refused connection reached the upstream"
        );
        assert_eq!(proxy.counters().refused, 1);

        // Refuse is about new connections; the open link still works.
        round_trip(&mut open, b"after").await;
    })
    .await;
}

#[tokio::test]
async fn blackhole_accepts_and_then_neither_answers_nor_closes() {
    bounded(async {
        let (upstream, reached) = echo().await;
        let proxy = FaultProxy::start(upstream);
        proxy.set_mode(Mode::Blackhole);

        let mut stream = connect(&proxy).await;
        // Writes succeed: the bytes vanish inside the proxy.
        stream.write_all(b"anyone there?").await.unwrap();
        assert_silent(&mut stream, QUIET).await;

        assert_eq!(reached.load(Ordering::SeqCst), 0);
        let counters = proxy.counters();
        assert_eq!(counters.accepted, 1);
        assert_eq!(counters.live, 1);
        assert_eq!(counters.dropped, 13);
        assert_eq!(counters.to_upstream, 0);
    })
    .await;
}

#[tokio::test]
async fn blackhole_silences_a_link_that_was_already_open() {
    bounded(async {
        let (upstream, _) = echo().await;
        let proxy = FaultProxy::start(upstream);
        let mut stream = connect(&proxy).await;
        round_trip(&mut stream, b"ping").await;

        proxy.set_mode(Mode::Blackhole);
        stream.write_all(b"lost").await.unwrap();
        assert_silent(&mut stream, QUIET).await;
        assert_eq!(proxy.counters().dropped, 4);

        // Healed: the link forwards again, and what was sent during the
        // blackhole is gone for good (the documented gap).
        proxy.set_mode(Mode::Pass);
        round_trip(&mut stream, b"again").await;
    })
    .await;
}

#[tokio::test]
async fn delay_holds_each_direction_for_at_least_the_delay() {
    bounded(async {
        let (upstream, _) = echo().await;
        let proxy = FaultProxy::start(upstream);
        let mut stream = connect(&proxy).await;
        round_trip(&mut stream, b"warm").await;

        let delay = Duration::from_millis(200);
        proxy.set_mode(Mode::Delay(delay));
        let started = Instant::now();
        round_trip(&mut stream, b"slow").await;
        let took = started.elapsed();
        // Once on the way up, once on the way back.
        assert!(took >= 2 * delay, "a round trip took only {took:?}");
        assert!(took < 2 * delay + PROMPT / 2, "a round trip took {took:?}");

        proxy.set_mode(Mode::Pass);
        let started = Instant::now();
        round_trip(&mut stream, b"fast").await;
        assert!(started.elapsed() < delay, "still slow after Pass");
    })
    .await;
}

#[tokio::test]
async fn cut_resets_every_live_connection_but_not_later_ones() {
    bounded(async {
        let (upstream, _) = echo().await;
        let proxy = FaultProxy::start(upstream);
        let mut first = connect(&proxy).await;
        let mut second = connect(&proxy).await;
        round_trip(&mut first, b"one").await;
        round_trip(&mut second, b"two").await;
        // A connection held by the blackhole is live too, and cut as well.
        proxy.set_mode(Mode::Blackhole);
        let mut held = connect(&proxy).await;
        held.write_all(b"x").await.unwrap();
        until(|| proxy.counters().dropped == 1).await;

        proxy.cut();
        assert_reset(&mut first).await;
        assert_reset(&mut second).await;
        assert_reset(&mut held).await;
        until(|| proxy.counters().live == 0).await;
        assert_eq!(proxy.counters().cut, 3);

        // `cut` is an action, not a mode: later connections are served.
        proxy.set_mode(Mode::Pass);
        let mut later = connect(&proxy).await;
        round_trip(&mut later, b"later").await;
    })
    .await;
}

#[tokio::test]
async fn switching_back_to_pass_serves_new_connections() {
    bounded(async {
        let (upstream, _) = echo().await;
        let proxy = FaultProxy::start(upstream);

        proxy.set_mode(Mode::Refuse);
        assert_reset_on_arrival(&proxy).await;
        proxy.set_mode(Mode::Pass);
        round_trip(&mut connect(&proxy).await, b"after refuse").await;

        proxy.set_mode(Mode::Blackhole);
        let mut held = connect(&proxy).await;
        held.write_all(b"x").await.unwrap();
        until(|| proxy.counters().dropped == 1).await;
        proxy.set_mode(Mode::Pass);
        round_trip(&mut connect(&proxy).await, b"after blackhole").await;

        proxy.set_mode(Mode::Delay(Duration::from_millis(100)));
        round_trip(&mut connect(&proxy).await, b"delayed").await;
        proxy.set_mode(Mode::Pass);
        round_trip(&mut connect(&proxy).await, b"after delay").await;
    })
    .await;
}

#[tokio::test]
async fn stall_holds_bytes_and_delivers_them_intact_when_healed() {
    bounded(async {
        let (upstream, reached) = echo().await;
        let proxy = FaultProxy::start(upstream);
        let mut open = connect(&proxy).await;
        round_trip(&mut open, b"before").await;

        proxy.set_mode(Mode::Stall);
        open.write_all(b"held").await.unwrap();
        // Accepted while stalled: not linked to the upstream yet.
        let mut late = connect(&proxy).await;
        late.write_all(b"late").await.unwrap();
        assert_silent(&mut open, QUIET).await;
        assert_eq!(proxy.counters().to_upstream, 6);
        assert_eq!(reached.load(Ordering::SeqCst), 1);

        proxy.set_mode(Mode::Pass);
        for (stream, expected) in [(&mut open, b"held"), (&mut late, b"late")] {
            let mut back = [0; 4];
            timeout(PROMPT, stream.read_exact(&mut back))
                .await
                .expect("held bytes did not arrive after the stall")
                .unwrap();
            assert_eq!(&back, expected);
        }
        assert_eq!(proxy.counters().dropped, 0);
    })
    .await;
}

#[tokio::test]
async fn drop_to_upstream_loses_requests_but_not_replies() {
    bounded(async {
        let (upstream, received) = ticker().await;
        let proxy = FaultProxy::start(upstream);
        proxy.set_mode(Mode::DropToUpstream);
        let mut stream = connect(&proxy).await;
        stream.write_all(b"request").await.unwrap();

        let mut ticks = [0; 8];
        timeout(PROMPT, stream.read_exact(&mut ticks))
            .await
            .expect("the upstream's bytes did not arrive")
            .unwrap();
        assert_eq!(&ticks, b"ticktick");

        until(|| proxy.counters().dropped == 7).await;
        sleep(Duration::from_millis(100)).await;
        assert_eq!(received.load(Ordering::SeqCst), 0);
        assert_eq!(proxy.counters().to_upstream, 0);
    })
    .await;
}

#[tokio::test]
async fn a_reserved_proxy_resets_until_its_upstream_is_named() {
    bounded(async {
        let proxy = FaultProxy::reserve();
        assert_reset_on_arrival(&proxy).await;
        assert_eq!(proxy.counters().unreachable, 1);

        let (upstream, _) = echo().await;
        proxy.set_upstream(upstream);
        round_trip(&mut connect(&proxy).await, b"named").await;
    })
    .await;
}

#[tokio::test]
async fn an_upstream_that_is_down_gives_the_client_a_reset() {
    bounded(async {
        // A port that was just free: nothing listens on it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let proxy = FaultProxy::start(port);
        assert_reset_on_arrival(&proxy).await;
        assert_eq!(proxy.counters().unreachable, 1);
    })
    .await;
}

#[tokio::test]
async fn dropping_the_proxy_ends_its_links_and_closes_its_port() {
    bounded(async {
        let (upstream, _) = echo().await;
        let proxy = FaultProxy::start(upstream);
        let addr = proxy.addr();
        let mut stream = connect(&proxy).await;
        round_trip(&mut stream, b"alive").await;

        // Returns only once the proxy's thread, and every task on it, is gone.
        drop(proxy);
        let mut buf = [0; 8];
        match timeout(PROMPT, stream.read(&mut buf))
            .await
            .expect("the link outlived its proxy")
        {
            Ok(0) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            other => panic!("expected the link to end, the read returned {other:?}"),
        }
        let again = TcpStream::connect(addr).await;
        assert_eq!(
            again.map(|_| ()).unwrap_err().kind(),
            ErrorKind::ConnectionRefused
        );
    })
    .await;
}

#[tokio::test]
async fn connects_to_the_silent_listener_time_out() {
    bounded(async {
        let silent = SilentListener::start();
        // Twice: the first unanswered SYN does not make the next one work.
        for _ in 0..2 {
            let attempt = timeout(
                Duration::from_millis(300),
                TcpStream::connect(silent.addr()),
            )
            .await;
            assert!(
                attempt.is_err(),
                "the connect finished instead of hanging: {attempt:?}"
            );
        }
    })
    .await;
}
