//! A deliberately small HTTP/1.1 client over plain TCP for the loopback
//! listener: requests go out byte for byte as the test wrote them, which the
//! malformed-input tests need. Plus the device calls most tests make.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::Value;
use uuid::Uuid;

use crate::PASSWORD;

/// A parsed answer.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {} body is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The stable error code of an error answer.
    pub fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The human message of an error answer.
    pub fn message(&self) -> String {
        self.json()["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Asserts status and error code, with the body in the failure message.
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(
            (self.status, self.code().as_str()),
            (status, code),
            "body: {}",
            String::from_utf8_lossy(&self.body)
        );
    }
}

/// Sends one request (with `Connection: close`) and reads the whole answer.
pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let mut stream = send(addr, method, path, headers, body, &mut |_| {})
        .unwrap_or_else(|e| panic!("send to {addr}: {e}"));
    read_response(&mut stream)
}

/// Sends one request as [`request`] does, but a failure is an answer rather
/// than a panic: a refused or reset connection, or an answer cut short (no
/// end of head, a body shorter than its `Content-Length`, a chunked body
/// without its last chunk) is an `Err`. So a test can tell an answer the
/// client fully received from one a crashed server never finished.
/// `on_sent` is told the size of each piece of the body once it is written,
/// so a test can follow an upload's progress.
pub fn try_request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    on_sent: &mut dyn FnMut(usize),
) -> std::io::Result<Response> {
    let mut stream = send(addr, method, path, headers, body, on_sent)?;
    let mut raw = Vec::new();
    // An error after the whole answer arrived (a reset as the server dies)
    // does not undo the answer: what was read is judged below.
    let read = stream.read_to_end(&mut raw);
    let cut_short = |what: &str| {
        std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("{what} ({} bytes read, {read:?})", raw.len()),
        )
    };
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| cut_short("the answer ended before its head did"))?;
    let response = parse_response(&raw).ok_or_else(|| cut_short("no status line"))?;
    let received = raw.len() - (split + 4);
    let complete = match response.header("content-length") {
        Some(len) => len.parse::<usize>().ok() == Some(received),
        None if response
            .header("transfer-encoding")
            .is_some_and(|v| v.contains("chunked")) =>
        {
            raw.ends_with(b"0\r\n\r\n")
        }
        // Delimited by the close: complete only if it closed cleanly.
        None => read.is_ok(),
    };
    if complete {
        Ok(response)
    } else {
        Err(cut_short("the answer's body was cut short"))
    }
}

/// Connects, writes the head and as much of the body as the server takes,
/// and returns the stream to read the answer from.
fn send(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    on_sent: &mut dyn FnMut(usize),
) -> std::io::Result<TcpStream> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    // A test may declare its own (even false) length.
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-length"))
    {
        head += &format!("Content-Length: {}\r\n", body.len());
    }
    for (k, v) in headers {
        head += &format!("{k}: {v}\r\n");
    }
    head += "\r\n";
    stream.write_all(head.as_bytes())?;
    // The server may answer (and close) before reading a body it refuses.
    for piece in body.chunks(64 * 1024) {
        if stream.write_all(piece).is_err() {
            break;
        }
        on_sent(piece.len());
    }
    Ok(stream)
}

/// Reads and parses an HTTP/1.1 answer until the connection closes.
pub fn read_response(stream: &mut impl Read) -> Response {
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    parse_response(&raw)
        .unwrap_or_else(|| panic!("no complete answer: {:?}", String::from_utf8_lossy(&raw)))
}

/// Parses a raw answer; `None` when its head is incomplete.
fn parse_response(raw: &[u8]) -> Option<Response> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| {
            l.split_once(':')
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        })
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    Some(Response {
        status,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = data.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&data[..eol]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.extend_from_slice(&data[eol + 2..eol + 2 + size]);
        data = &data[eol + 2 + size + 2..];
    }
    out
}

/// A page: a valid grey PNG of about `size` bytes (content differs by seed).
pub fn png(size: usize, seed: u64) -> Vec<u8> {
    mfd_sim::synthetic::noise_png(size.max(100), seed)
        .expect("png")
        .to_vec()
}

pub const BOUNDARY: &str = "sgw-test-boundary-7f3a9c";

/// A multipart body with the given parts, in order.
pub fn multipart(parts: &[(&str, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, content) in parts {
        let ctype = if *name == "manifest" {
            "application/json"
        } else {
            "application/octet-stream"
        };
        body.extend_from_slice(
            format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{name}\"\r\nContent-Type: {ctype}\r\n\r\n").as_bytes(),
        );
        body.extend_from_slice(content);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    body
}

/// A job body: the manifest then the pages.
pub fn job_body(manifest: &Value, pages: &[Vec<u8>]) -> Vec<u8> {
    let m = manifest.to_string();
    let mut parts: Vec<(&str, &[u8])> = vec![("manifest", m.as_bytes())];
    for p in pages {
        parts.push(("page", p));
    }
    multipart(&parts)
}

/// A device talking to one instance over its plain listener.
pub struct Device {
    pub addr: String,
    pub token: String,
}

impl Device {
    pub fn new(addr: &str, token: &str) -> Device {
        Device {
            addr: addr.to_owned(),
            token: token.to_owned(),
        }
    }

    fn auth(&self) -> String {
        format!("Bearer {}", self.token)
    }

    pub fn call(&self, method: &str, path: &str, extra: &[(&str, &str)], body: &[u8]) -> Response {
        let auth = self.auth();
        let mut headers = vec![("Authorization", auth.as_str())];
        headers.extend_from_slice(extra);
        request(&self.addr, method, path, &headers, body)
    }

    /// Logs `user` in; returns the session token.
    pub fn login(&self, user: &str) -> String {
        let body = serde_json::json!({"user": user, "password": PASSWORD}).to_string();
        let r = self.call(
            "POST",
            "/api/v1/sessions",
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        );
        assert_eq!(r.status, 201, "login: {}", String::from_utf8_lossy(&r.body));
        r.json()["session"].as_str().unwrap().to_owned()
    }

    /// Submits a job with a raw multipart body.
    pub fn submit_raw(&self, session: &str, job: Uuid, body: &[u8]) -> Response {
        let ctype = format!("multipart/form-data; boundary={BOUNDARY}");
        self.call(
            "PUT",
            &format!("/api/v1/jobs/{job}"),
            &[("Content-Type", &ctype), ("X-Scan-Session", session)],
            body,
        )
    }

    /// Submits a job as [`Device::submit`] does, through [`try_request`]: a
    /// connection that fails or an answer cut short is an `Err`, and
    /// `on_sent` follows the upload.
    pub fn try_submit(
        &self,
        session: &str,
        job: Uuid,
        workflow: &str,
        pages: &[Vec<u8>],
        on_sent: &mut dyn FnMut(usize),
    ) -> std::io::Result<Response> {
        let manifest = serde_json::json!({"workflow": workflow, "page_count": pages.len()});
        let auth = self.auth();
        let ctype = format!("multipart/form-data; boundary={BOUNDARY}");
        try_request(
            &self.addr,
            "PUT",
            &format!("/api/v1/jobs/{job}"),
            &[
                ("Authorization", &auth),
                ("Content-Type", &ctype),
                ("X-Scan-Session", session),
            ],
            &job_body(&manifest, pages),
            on_sent,
        )
    }

    /// Submits a job to `workflow` with the given pages.
    pub fn submit(&self, session: &str, job: Uuid, workflow: &str, pages: &[Vec<u8>]) -> Response {
        let manifest = serde_json::json!({"workflow": workflow, "page_count": pages.len()});
        self.submit_raw(session, job, &job_body(&manifest, pages))
    }

    /// The job's status.
    pub fn job(&self, job: Uuid) -> Response {
        self.call("GET", &format!("/api/v1/jobs/{job}"), &[], b"")
    }

    /// Waits until the job reaches `state`; returns its status.
    pub fn wait_for_state(&self, job: Uuid, state: &str, timeout: Duration) -> Value {
        let mut last = Value::Null;
        crate::eventually(timeout, || {
            let r = self.job(job);
            if r.status == 200 {
                last = r.json();
                (last["state"] == state).then(|| last.clone())
            } else {
                None
            }
        })
        .unwrap_or_else(|| panic!("job {job} did not reach `{state}`; last status: {last}"))
    }
}
