//! Shared helpers of the pipeline's integration tests: required tools, jobs
//! made of rendered pages, a real SMTP sink, an in-test webhook receiver,
//! fake OCR engines and the character error rate.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::TimeZone;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use mfd_sim::pages::{PageRenderer, ScanFormat};
use plugins::{JobContext, PageFile, PageFormat};

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

/// Known text, one entry per page, long enough to make a real page.
pub const PAGE_TEXTS: [&str; 4] = [
    "Quarterly report for the northern region.\n\
     Sales grew by twelve percent compared with the same quarter last year, \
     driven mostly by the new service contracts signed in April and May.\n\
     Reference number 4471-B, prepared by the finance office.",
    "Minutes of the safety committee meeting held on Tuesday.\n\
     Present were seven members and two guests from the maintenance team. \
     The committee reviewed the fire drill results and agreed to replace \
     the signs on the second floor before the end of the month.",
    "Delivery note for order 88213.\n\
     Two boxes of printer paper, one toner cartridge for the copier on the \
     ground floor, and a set of labels. Please check the items on arrival \
     and sign the attached form.",
    "Letter to all tenants of the building.\n\
     The heating will be serviced next Friday between eight and noon. \
     During that time the water may be cold. We apologise for the \
     inconvenience and thank you for your patience.",
];

/// A job with no pages yet, in `work_dir`.
pub fn job(work_dir: &Path, pages: Vec<PageFile>) -> JobContext {
    JobContext {
        job_id: uuid::Uuid::new_v4(),
        workflow: "scan-test".into(),
        user: "alice".into(),
        device: "mfd-3f".into(),
        submitted_at: chrono::Utc.with_ymd_and_hms(2024, 5, 17, 9, 41, 7).unwrap(),
        time_zone: chrono_tz::Europe::Berlin,
        metadata: BTreeMap::from([("cost_centre".to_string(), "4100".to_string())]),
        pages,
        work_dir: work_dir.to_path_buf(),
    }
}

/// Writes rendered pages as an upload would arrive: page 1 as PNG, pages 2
/// and 3 as one multi-page TIFF, page 4 as JPEG (at 300 dpi).
pub fn rendered_upload(dir: &Path, texts: &[&str; 4]) -> Vec<PageFile> {
    let renderer = PageRenderer::new().expect("install the Debian package fonts-dejavu-core");
    std::fs::create_dir_all(dir).unwrap();
    let png = dir.join("upload-1");
    std::fs::write(
        &png,
        renderer.render(texts[0], ScanFormat::Png, 300).unwrap(),
    )
    .unwrap();
    let tiff = dir.join("upload-2");
    std::fs::write(
        &tiff,
        renderer
            .render_multipage_tiff(&[texts[1], texts[2]], 300)
            .unwrap(),
    )
    .unwrap();
    let jpeg = dir.join("upload-3");
    std::fs::write(
        &jpeg,
        renderer.render(texts[3], ScanFormat::Jpeg, 300).unwrap(),
    )
    .unwrap();
    [png, tiff, jpeg]
        .into_iter()
        .map(|path| {
            // The format comes from the content, as at intake.
            let head = std::fs::read(&path).unwrap();
            let format = PageFormat::sniff(&head).unwrap();
            PageFile { path, format }
        })
        .collect()
}

/// One small rendered PNG page, for tests about delivery rather than OCR.
pub fn small_upload(dir: &Path) -> Vec<PageFile> {
    let renderer = PageRenderer::new().expect("install the Debian package fonts-dejavu-core");
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("page.png");
    std::fs::write(
        &path,
        renderer
            .render("A short page.", ScanFormat::Png, 100)
            .unwrap(),
    )
    .unwrap();
    vec![PageFile {
        path,
        format: PageFormat::Png,
    }]
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

/// The mail sink (`fixtures/smtp_sink.py` under aiosmtpd), stopped on drop.
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
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smtp_sink.py");
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

/// Writes an executable shell script.
pub fn script(path: &Path, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, format!("#!/bin/sh\n{body}")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.to_path_buf()
}

/// A fake engine that answers the start-up probes like tesseract 5, records
/// its process id in `pids`, and then hangs.
pub fn hung_engine(dir: &Path, pids: &Path) -> PathBuf {
    script(
        &dir.join("hung-tesseract"),
        &format!(
            "case \"$1\" in\n\
             --version) echo 'tesseract 5.3.0'; exit 0;;\n\
             --list-langs) echo 'List of available languages in \"/x\" (1):'; echo eng; exit 0;;\n\
             esac\n\
             echo $$ >> '{}'\n\
             exec sleep 600\n",
            pids.display()
        ),
    )
}

/// A wrapper around the real engine that counts the pages it recognises.
pub fn counting_engine(dir: &Path, counter: &Path) -> PathBuf {
    script(
        &dir.join("counting-tesseract"),
        &format!(
            "case \"$1\" in --version|--list-langs) exec tesseract \"$@\";; esac\n\
             echo \"$1\" >> '{}'\n\
             exec tesseract \"$@\"\n",
            counter.display()
        ),
    )
}

/// Lines in a file (0 when it does not exist).
pub fn line_count(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

/// Whether process `pid` is gone: no longer listed, or a zombie awaiting
/// its parent's reaping (it runs no code and holds no resources).
pub fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// Waits up to `limit` for `pid` to be gone.
pub async fn wait_gone(pid: u32, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if process_gone(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    process_gone(pid)
}

/// Reads the pids a fake engine recorded, waiting up to `limit` for `count`.
pub async fn wait_pids(path: &Path, count: usize, limit: Duration) -> Vec<u32> {
    let start = Instant::now();
    loop {
        let pids: Vec<u32> = std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        if pids.len() >= count || start.elapsed() > limit {
            return pids;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
