//! Test support shared by the end-to-end tests and the plugins' integration
//! tests: checks for required tools (which fail naming the package to
//! install, never pass silently), a real SMTP server, an in-test webhook
//! receiver, the character error rate of recognised text, and file helpers.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

/// Fails the test, naming the package to install, when `tool` is missing.
/// Tests never pass silently without the tools they exercise.
pub fn require(tool: &str, args: &[&str], install: &str) {
    let found = Command::new(tool)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "`{tool}` is required by this test: install {install}"
    );
}

pub fn require_tesseract() {
    require(
        "tesseract",
        &["--version"],
        "the Debian packages tesseract-ocr and tesseract-ocr-eng",
    );
}

pub fn require_qpdf() {
    require("qpdf", &["--version"], "the Debian package qpdf");
}

pub fn require_poppler() {
    require("pdftotext", &["-v"], "the Debian package poppler-utils");
}

pub fn require_aiosmtpd() {
    require(
        "python3",
        &["-c", "import aiosmtpd"],
        "python3 and the pip package aiosmtpd (pip install aiosmtpd)",
    );
}

/// Character error rate of `actual` against `expected`, both with
/// whitespace runs collapsed to one space.
pub fn cer(expected: &str, actual: &str) -> f64 {
    let norm = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    let (e, a): (Vec<char>, Vec<char>) = (
        norm(expected).chars().collect(),
        norm(actual).chars().collect(),
    );
    let mut previous: Vec<usize> = (0..=a.len()).collect();
    for (i, ec) in e.iter().enumerate() {
        let mut current = vec![i + 1; a.len() + 1];
        for (j, ac) in a.iter().enumerate() {
            let substitution = previous[j] + usize::from(ec != ac);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        previous = current;
    }
    previous[a.len()] as f64 / e.len().max(1) as f64
}

/// Runs a command and returns its stdout, failing the test with its stderr.
pub fn output_of(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every regular file under `root`, recursively.
pub fn files_under(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

/// The mail sink (`tests/fixtures/smtp_sink.py` under aiosmtpd), stopped on drop.
pub struct SmtpSink {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl SmtpSink {
    pub fn start() -> SmtpSink {
        Self::start_with(&[])
    }

    /// A sink that requires STARTTLS with `cert`/`key` and AUTH with
    /// `user`/`password`.
    pub fn start_tls(cert: &Path, key: &Path, user: &str, password: &str) -> SmtpSink {
        Self::start_with(&[
            cert.to_str().unwrap(),
            key.to_str().unwrap(),
            user,
            password,
        ])
    }

    fn start_with(extra: &[&str]) -> SmtpSink {
        require_aiosmtpd();
        let dir = tempfile::tempdir().unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/smtp_sink.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg(dir.path())
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 is required: install python3 and pip install aiosmtpd");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("the SMTP sink did not start: {line:?}"));
        SmtpSink { child, port, dir }
    }

    /// The messages received so far, in order.
    pub fn messages(&self) -> Vec<String> {
        files_under(self.dir.path())
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "eml"))
            .map(|p| String::from_utf8_lossy(&std::fs::read(p).unwrap()).into_owned())
            .collect()
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A header's value in a raw message.
pub fn header(message: &str, name: &str) -> Option<String> {
    let prefix = format!("{}:", name.to_ascii_lowercase());
    message
        .lines()
        .take_while(|l| !l.is_empty())
        .find(|l| l.to_ascii_lowercase().starts_with(&prefix))
        .map(|l| l[prefix.len()..].trim().to_string())
}

/// One request the webhook receiver got.
#[derive(Clone, Debug)]
pub struct Received {
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// An in-test HTTP receiver answering with scripted status codes (then 200).
pub struct WebhookReceiver {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl WebhookReceiver {
    pub async fn start(script: Vec<u16>) -> WebhookReceiver {
        Self::start_with_delay(script, Duration::ZERO).await
    }

    /// A receiver that records each request at once and answers it only
    /// after `delay` (a destination that accepted the document and is slow
    /// to say so).
    pub async fn start_with_delay(script: Vec<u16>, delay: Duration) -> WebhookReceiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(std::collections::VecDeque::from(script)));
        let log = Arc::clone(&received);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (log, script) = (Arc::clone(&log), Arc::clone(&script));
                tokio::spawn(async move {
                    let service =
                        service_fn(move |request: http::Request<hyper::body::Incoming>| {
                            let (log, script) = (Arc::clone(&log), Arc::clone(&script));
                            async move {
                                let (parts, body) = request.into_parts();
                                let body = body.collect().await?.to_bytes();
                                log.lock().unwrap().push(Received {
                                    headers: parts.headers,
                                    body,
                                });
                                let status = script.lock().unwrap().pop_front().unwrap_or(200);
                                tokio::time::sleep(delay).await;
                                let answer = http::Response::builder()
                                    .status(status)
                                    .body(Full::new(Bytes::from(format!("answer {status}"))))
                                    .unwrap();
                                Ok::<_, hyper::Error>(answer)
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        WebhookReceiver {
            addr,
            received,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hooks/scan", self.addr)
    }

    pub fn requests(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An unprivileged local user that exists for the life of the value (the
/// test command runs as root; a test that cannot make one fails saying so).
pub struct LocalUser {
    pub name: String,
}

impl LocalUser {
    /// `tag` keeps the users of tests running side by side apart.
    pub fn create(tag: &str) -> LocalUser {
        let name = format!("sgw-{tag}-{}", std::process::id());
        let created = std::process::Command::new("useradd")
            .args(["--no-create-home", "--shell", "/bin/sh", "--user-group"])
            .arg(&name)
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "this test needs `useradd` (package passwd) and root to make an unprivileged \
                     user; run it as root, as `cargo xtask test` does: {e}"
                )
            });
        assert!(
            created.status.success(),
            "useradd {name} failed — this test must run as root (as `cargo xtask test` does): {}",
            String::from_utf8_lossy(&created.stderr)
        );
        LocalUser { name }
    }

    /// A command run as this user (with `runuser`, from util-linux).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> std::process::Command {
        let mut cmd = std::process::Command::new("runuser");
        cmd.args(["-u", &self.name, "--"]).arg(program);
        cmd
    }
}

impl Drop for LocalUser {
    fn drop(&mut self) {
        let _ = std::process::Command::new("userdel")
            .arg(&self.name)
            .status();
    }
}
