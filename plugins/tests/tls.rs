//! Deliveries over TLS to servers with a private CA: the webhook over https
//! and mail over STARTTLS with authentication, each trusting only the
//! configured `ca_file`; and the failures an admin sees when the trust or
//! the password is wrong.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use plugins::runner::MemoryStore;
use plugins::{JobOutcome, JobRunner, Registry, RegistrySettings, RetryPolicy, WorkflowSpec};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

fn policy() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 2,
        base_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(50),
        step_timeout: Duration::from_secs(30),
    }
}

/// A self-signed certificate for 127.0.0.1 and localhost, written as PEM
/// files; it is its own CA.
fn certificate(
    dir: &Path,
) -> (
    CertificateDer<'static>,
    PrivateKeyDer<'static>,
    std::path::PathBuf,
    std::path::PathBuf,
) {
    let issued =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap();
    let cert_path = dir.join("server.pem");
    let key_path = dir.join("server.key");
    std::fs::write(&cert_path, issued.cert.pem()).unwrap();
    std::fs::write(&key_path, issued.signing_key.serialize_pem()).unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(issued.signing_key.serialize_der()));
    (issued.cert.der().clone(), key, cert_path, key_path)
}

/// An https server answering 200 to every request, counting them.
async fn https_receiver(
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
) -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = Arc::clone(&count);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (acceptor, seen) = (acceptor.clone(), Arc::clone(&seen));
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let service = service_fn(move |_request: http::Request<hyper::body::Incoming>| {
                    seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    async {
                        Ok::<_, hyper::Error>(http::Response::new(Full::new(Bytes::from_static(
                            b"ok",
                        ))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (port, count)
}

async fn run(toml_steps: &str, scratch: &Path) -> JobOutcome {
    let registry = Registry::detect(RegistrySettings::default()).await;
    let spec: WorkflowSpec =
        toml::from_str(&format!("[[steps]]\nplugin = \"assemble\"\n{toml_steps}")).unwrap();
    let workflow = registry.build_workflow("tls", &spec).unwrap();
    let job = job(&scratch.join("work"), small_upload(&scratch.join("spool")));
    JobRunner::new(policy())
        .run(&workflow, &job, Arc::new(MemoryStore::new()))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_trusts_exactly_the_configured_ca() {
    let scratch = tempfile::tempdir().unwrap();
    let (cert, key, cert_path, _) = certificate(scratch.path());
    let (port, count) = https_receiver(cert, key).await;
    let url = format!("https://127.0.0.1:{port}/hook");

    let trusted = format!(
        "[[steps]]\nplugin = \"webhook\"\nurl = \"{url}\"\nsecret = \"s\"\nca_file = \"{}\"",
        cert_path.display()
    );
    assert_eq!(
        run(&trusted, &scratch.path().join("a")).await,
        JobOutcome::Done
    );
    assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 1);

    // Without the private CA the system roots do not know the server: a
    // permanent failure that says what to do.
    let untrusted = format!("[[steps]]\nplugin = \"webhook\"\nurl = \"{url}\"\nsecret = \"s\"");
    let JobOutcome::DeadLetter { reason, .. } = run(&untrusted, &scratch.path().join("b")).await
    else {
        panic!("an untrusted server was accepted")
    };
    assert!(
        reason.starts_with(&format!(
            "webhook POST to {url} failed: TLS handshake failed ("
        )),
        "{reason}"
    );
    assert!(
        reason.ends_with("check the server's certificate or set `ca_file`"),
        "{reason}"
    );
    assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_goes_out_over_starttls_with_login_and_a_wrong_password_is_named() {
    let scratch = tempfile::tempdir().unwrap();
    let (_, _, cert_path, key_path) = certificate(scratch.path());
    let smtp = SmtpSink::start_tls(&cert_path, &key_path, "scanner", "correct horse");
    let step = |password: &str| {
        format!(
            "[[steps]]\nplugin = \"mail\"\nhost = \"127.0.0.1\"\nport = {}\ntls = \"starttls\"\n\
             username = \"scanner\"\npassword = \"{password}\"\nca_file = \"{}\"\n\
             from = \"scanner@example.org\"\nto = [\"a@example.org\"]",
            smtp.port,
            cert_path.display()
        )
    };
    assert_eq!(
        run(&step("correct horse"), &scratch.path().join("a")).await,
        JobOutcome::Done
    );
    assert_eq!(smtp.messages().len(), 1);

    let outcome = run(&step("wrong"), &scratch.path().join("b")).await;
    let JobOutcome::DeadLetter {
        step: 1, reason, ..
    } = outcome
    else {
        panic!("{outcome:?}")
    };
    assert!(
        reason.starts_with(&format!(
            "mail to smtp://127.0.0.1:{} failed: authentication failed: ",
            smtp.port
        )),
        "{reason}"
    );
    assert!(
        !reason.contains("wrong"),
        "the password leaked into the reason: {reason}"
    );
    assert_eq!(smtp.messages().len(), 1);
}
