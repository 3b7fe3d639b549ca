//! In-process tests of the pair link: two cores in one process, each with
//! its own store, pair port and protocol thread, talking real mutual TLS on
//! loopback.

use std::sync::Arc;
use std::time::Duration;

use licensing::{KeySpec, Role, TrustedKeys, VendorKeyPair};

use super::PairLink;
use super::identity::PairIdentity;
use super::trust;
use crate::core::Core;
use crate::settings::{self, Source};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Server {
    _dir: tempfile::TempDir,
    core: Arc<Core>,
    link: PairLink,
}

async fn server(name: &str, vendor: &VendorKeyPair, role: Role, port: u16, peer: u16) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gateway.toml");
    std::fs::write(
        &file,
        format!(
            r#"
[defaults]
listen = "127.0.0.1:0"
data_dir = "{}/{{instance}}"

[defaults.pair]
listen = "127.0.0.1:{port}"
peer = "127.0.0.1:{peer}"
heartbeat_interval_ms = 50
dead_threshold_ms = 400

[workflows.scan-to-folder]
steps = [{{ plugin = "assemble" }}, {{ plugin = "folder", root = "{{data_dir}}/delivered" }}]
"#,
            dir.path().display()
        ),
    )
    .unwrap();
    let settings = settings::load(Source::File(&file), Some(name), &settings::Env::none()).unwrap();
    let pair = settings.instance.pair.clone().unwrap();
    let core = Core::for_tests(settings, TrustedKeys::builtin().with(vendor.public_key()));
    core.data.start().await.unwrap();
    core.load_generation(core.data.state().generation)
        .await
        .unwrap();
    let key = vendor
        .issue(&KeySpec {
            role,
            serial: 9,
            seats: 5,
            expires: None,
        })
        .unwrap();
    core.activate_license(key).await.unwrap();
    let link = PairLink::start(core.clone(), pair).unwrap();
    Server {
        _dir: dir,
        core,
        link,
    }
}

async fn pair_of() -> (Server, Server) {
    let (vendor, _) = VendorKeyPair::generate().unwrap();
    let (pa, pb) = (free_port(), free_port());
    let a = server("gw-a", &vendor, Role::Primary, pa, pb).await;
    let b = server("gw-b", &vendor, Role::Secondary, pb, pa).await;
    (a, b)
}

async fn wait_for(link: &PairLink, state: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while link.status().state != state {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the link never became {state}: {:?}",
            link.status()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pairing_pins_both_sides_and_a_clean_stop_shows_close() {
    let (a, b) = pair_of().await;
    assert_eq!(a.link.status().state, "unpaired");
    assert_eq!(a.core.health().pair, Some("unpaired"));

    // Pairing is started on the primary and joined from the secondary.
    let err = b.link.init_pairing().await.unwrap_err();
    assert!(err.contains("pairing starts on the primary"), "{err}");
    let code = a.link.init_pairing().await.unwrap();
    assert!(a.link.status().pairing_open);
    let peer = b.link.join(&code).await.unwrap();
    assert_eq!(peer.instance, "gw-a");
    assert!(!a.link.status().pairing_open, "a code opens once");

    wait_for(&a.link, "live").await;
    wait_for(&b.link, "live").await;
    let sa = a.link.status();
    assert_eq!(sa.peer.as_deref(), Some("gw-b"));
    assert_eq!(
        sa.peer_fingerprint.as_deref(),
        Some(b.link.status().fingerprint.as_str())
    );
    assert_eq!(a.core.health().pair, Some("live"));

    // A paired server does not pair again.
    let again = b.link.join(&code).await.unwrap_err();
    assert!(again.contains("already paired with gw-a"), "{again}");

    b.link.shutdown().await;
    wait_for(&a.link, "close").await;
    // CLOSE stays CLOSE: missed beats are ignored, no DEAD follows.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(a.link.status().state, "close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_and_expired_codes_are_refused_with_a_reason() {
    let (a, b) = pair_of().await;
    let code = a.link.init_pairing().await.unwrap();
    // Same primary, wrong secret.
    let mut parts: Vec<String> = code.split('.').map(str::to_owned).collect();
    parts[2] = "00".repeat(16);
    let err = b.link.join(&parts.join(".")).await.unwrap_err();
    assert!(err.contains("code is wrong"), "{err}");
    // An expired code is refused before anything is sent.
    parts = code.split('.').map(str::to_owned).collect();
    parts[3] = "1000".into();
    let err = b.link.join(&parts.join(".")).await.unwrap_err();
    assert!(err.contains("expired"), "{err}");
    // A code whose fingerprint is not the primary's never gets past TLS.
    parts = code.split('.').map(str::to_owned).collect();
    parts[1] = "ab".repeat(32);
    let err = b.link.join(&parts.join(".")).await.unwrap_err();
    assert!(err.contains("could not be verified"), "{err}");
    assert!(
        b.link
            .join("sgp1.nonsense")
            .await
            .unwrap_err()
            .contains("not a pairing code")
    );
    assert_eq!(b.link.status().state, "unpaired");

    // The right code pairs; used once, it opens nothing for a third server.
    assert!(
        a.link.status().pairing_open,
        "refused attempts leave the code open"
    );
    b.link.join(&code).await.unwrap();
    let (vendor, _) = VendorKeyPair::generate().unwrap();
    let c = server(
        "gw-c",
        &vendor,
        Role::Secondary,
        free_port(),
        a.link.status().listen.port(),
    )
    .await;
    let err = c.link.join(&code).await.unwrap_err();
    assert!(err.contains("no pairing code is open"), "{err}");
    assert_eq!(c.link.status().state, "unpaired");
}

/// Outside the pairing exchange, the pair port takes only the pinned peer:
/// a client with another certificate, or with none, fails the handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_and_clients_without_a_certificate_are_refused_in_the_handshake() {
    let (a, b) = pair_of().await;
    let code = a.link.init_pairing().await.unwrap();
    b.link.join(&code).await.unwrap();
    let port = a.link.status().listen;
    let a_fp = {
        let text = a.link.status().fingerprint;
        let hex = text.strip_prefix("sha256:").unwrap().to_owned();
        let mut fp = [0u8; 32];
        for (i, byte) in fp.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
        }
        fp
    };

    // A stranger with its own certificate.
    let dir = tempfile::tempdir().unwrap();
    let stranger =
        PairIdentity::load_or_create(dir.path(), pair_core::ServerId::from_u128(77)).unwrap();
    let config = trust::client_config(&stranger, a_fp).unwrap();
    let tcp = tokio::net::TcpStream::connect(port).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("x.pair.invalid").unwrap();
    let result = tokio_rustls::TlsConnector::from(config)
        .connect(name.clone(), tcp)
        .await;
    // TLS 1.3 may report the refusal on the first read instead.
    if let Ok(mut tls) = result {
        let read = super::frame::read::<_, serde_json::Value>(&mut tls).await;
        assert!(
            read.is_err() || read.unwrap().is_none(),
            "a stranger got an answer"
        );
    }

    // No certificate at all.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut no_cert = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    no_cert.alpn_protocols = vec![trust::ALPN.to_vec()];
    let tcp = tokio::net::TcpStream::connect(port).await.unwrap();
    let result = tokio_rustls::TlsConnector::from(Arc::new(no_cert))
        .connect(name, tcp)
        .await;
    assert!(
        result.is_err(),
        "the pair certificate is not in any root store"
    );
    // The pinned peer stays paired and live throughout.
    wait_for(&a.link, "live").await;
}
