//! `cargo xtask bench takeover`: how long the jobs of a server killed with
//! kill -9 wait until its peer has delivered them, split into the parts the
//! protocol adds (noticing the silence, waiting out the lease, running the
//! pipeline), set beside a healthy owner delivering the same job in the same
//! run. It writes nothing into the repository and talks only to loopback.
//!
//! Two release `gateway` processes, `gw-a` (03, the owner of every job) and
//! `gw-b` (04), paired with `gateway pair init` / `gateway pair join` on
//! ports the OS chose, heartbeat every 100 ms, DEAD after 600 ms, logging
//! one JSON object per line to files. Their workflow assembles the page into
//! a PDF and POSTs it to a webhook receiver in this process, which stamps
//! every request as it arrives and counts requests per job
//! (`Idempotency-Key`).
//!
//! Each round, once both are LIVE, in sync and hold a lease from each other:
//! the baseline (one job to `gw-a` with its pipeline running, timed from
//! sending it to the webhook's request), then `gw-a`'s pipeline is paused, a few one-page
//! jobs are submitted to it (each `201` must say `"replicated": true`, so
//! each is on `gw-b` too), and `gw-a` is killed with SIGKILL. The round ends
//! when every job reached the webhook (or its time is up); `gw-b`'s log
//! gives when it saw `gw-a` DEAD (`peer_dead`) and when it took the jobs
//! over (`takeover`). Then `gw-a` is started again on the same data, learns
//! that its jobs were taken, and the pair must be leased again before the
//! next round. Its pipeline runs again in the next round's baseline, so a
//! job it delivered again would show at the webhook as a second request.
//!
//! Every wait is bounded (each round by [`ROUND_LIMIT`], the run by
//! [`RUN_LIMIT`]), and every process started here is stopped when its guard
//! is dropped, on failure too.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::Result;
use crate::measure::{cpu_jiffies, io, summary, utc_ns};
use crate::pair_site::{STEP_LIMIT, pair_status, stop, timed, wait_in_sync};
use crate::site::{Tools, listener};

/// The heartbeat timing of the site: the defaults, as in the pair bench.
const HEARTBEAT_INTERVAL_MS: u64 = 100;
const DEAD_THRESHOLD_MS: u64 = 600;
/// The longest one round may take, from the restart of `gw-a` to the last
/// delivery.
const ROUND_LIMIT: Duration = Duration::from_secs(30);
/// The longest the whole series of rounds may take.
const RUN_LIMIT: Duration = Duration::from_secs(600);
/// After the last round: how long the restarted owner runs its pipeline
/// before the requests per job are counted.
const SETTLE: Duration = Duration::from_secs(3);
/// The webhook's signing key (the receiver does not check it).
const SECRET: &str = "bench-takeover-webhook-secret-0123456789";
/// HAProxy's default check timing, cited, not measured here: a server is
/// DOWN after `fall` (3) failed probes `inter` (2 s) apart.
const HAPROXY_DEFAULT_MS: f64 = 6000.0;

pub const USAGE: &str = "  takeover: [--rounds N (20)] [--jobs N (4 per round)]";

struct Options {
    rounds: u32,
    jobs: usize,
}

fn parse(args: &[String]) -> Result<Options> {
    let mut o = Options {
        rounds: 20,
        jobs: 4,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str, range: std::ops::RangeInclusive<u64>| -> Result<u64> {
            it.next()
                .and_then(|v| v.parse().ok())
                .filter(|n| range.contains(n))
                .ok_or_else(|| {
                    format!(
                        "{name} needs a number from {} to {}",
                        range.start(),
                        range.end()
                    )
                })
        };
        match a.as_str() {
            "--rounds" => o.rounds = value("--rounds", 1..=100)? as u32,
            // Each round adds jobs + 1 to the done list the bench reads,
            // which shows 1000 jobs at most.
            "--jobs" => o.jobs = value("--jobs", 1..=8)? as usize,
            other => {
                return Err(format!(
                    "unknown option `{other}` for bench takeover\nusage: cargo xtask bench takeover [options]\n{USAGE}"
                ));
            }
        }
    }
    Ok(o)
}

/// Nanoseconds since the Unix epoch now: the clock the gateways' log
/// timestamps come from.
fn wall_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `later - earlier` in milliseconds, negative when `later` is earlier.
fn ms_between(earlier: Instant, later: Instant) -> f64 {
    match later.checked_duration_since(earlier) {
        Some(d) => ms(d),
        None => -ms(earlier.duration_since(later)),
    }
}

/// One request the webhook receiver took, stamped when its head had
/// arrived.
#[derive(Clone)]
struct Arrival {
    /// The `Idempotency-Key`: the job id.
    key: String,
    at: Instant,
    wall_ns: i64,
}

type Arrivals = Arc<Mutex<Vec<Arrival>>>;

fn lock(arrivals: &Arrivals) -> std::sync::MutexGuard<'_, Vec<Arrival>> {
    arrivals.lock().unwrap_or_else(|p| p.into_inner())
}

/// The delivery destination: an HTTP/1.1 server on a loopback port the OS
/// chose that answers every request `200` and keeps when it arrived. One
/// thread per connection, so a slow sender holds up nobody else.
struct Webhook {
    url: String,
    arrivals: Arrivals,
    stopping: Arc<AtomicBool>,
    addr: std::net::SocketAddr,
    thread: Option<JoinHandle<()>>,
}

impl Webhook {
    fn start() -> Result<Webhook> {
        let listener = TcpListener::bind("127.0.0.1:0").map_err(io)?;
        let addr = listener.local_addr().map_err(io)?;
        let arrivals = Arrivals::default();
        let stopping = Arc::new(AtomicBool::new(false));
        let thread = {
            let (arrivals, stopping) = (arrivals.clone(), stopping.clone());
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stopping.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(conn) = conn {
                        let arrivals = arrivals.clone();
                        std::thread::spawn(move || receive(conn, &arrivals));
                    }
                }
            })
        };
        Ok(Webhook {
            url: format!("http://{addr}/hook"),
            arrivals,
            stopping,
            addr,
            thread: Some(thread),
        })
    }

    fn arrivals(&self) -> Vec<Arrival> {
        lock(&self.arrivals).clone()
    }

    /// The requests for each of `jobs` so far, in order of arrival.
    fn of(&self, jobs: &[String]) -> Vec<Arrival> {
        lock(&self.arrivals)
            .iter()
            .filter(|a| jobs.contains(&a.key))
            .cloned()
            .collect()
    }

    /// Waits until every one of `jobs` has arrived at least once, or
    /// `deadline` passed; returns whether they all did.
    fn wait_for(&self, jobs: &[String], deadline: Instant) -> bool {
        loop {
            let arrived = self.of(jobs);
            if jobs.iter().all(|j| arrived.iter().any(|a| &a.key == j)) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        // Wakes the accepting thread so that it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads one request (head, then `Content-Length` bytes of body), stamps
/// it, answers `200` and closes.
fn receive(mut conn: TcpStream, arrivals: &Arrivals) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let (at, wall) = (Instant::now(), wall_ns());
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    };
    let length: usize = header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf.len() - head_end;
    while body < length {
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => body += n,
        }
    }
    lock(arrivals).push(Arrival {
        key: header("idempotency-key").unwrap_or_default(),
        at,
        wall_ns: wall,
    });
    let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    let _ = conn.shutdown(Shutdown::Both);
}

/// One request to a gateway's plain listener (`Connection: close`): the
/// status and the body.
fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("{addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(io)?;
    s.set_write_timeout(Some(Duration::from_secs(10)))
        .map_err(io)?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head += &format!("{k}: {v}\r\n");
    }
    head += "\r\n";
    let mut request = head.into_bytes();
    request.extend_from_slice(body);
    s.write_all(&request).map_err(io)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .map_err(|e| format!("{method} {path}: {e}"))?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("{method} {path}: no complete answer"))?;
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("{method} {path}: no status in {head:?}"))?;
    let body = &raw[split + 4..];
    let body = if head.contains("transfer-encoding: chunked") {
        dechunk(body)
    } else {
        body.to_vec()
    };
    Ok((status, body))
}

/// The data of a chunked body.
fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = data.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&data[..eol]).trim(), 16).unwrap_or(0);
        let Some(chunk) = data.get(eol + 2..eol + 2 + size) else {
            break;
        };
        if size == 0 {
            break;
        }
        out.extend_from_slice(chunk);
        data = data.get(eol + 4 + size..).unwrap_or_default();
    }
    out
}

/// A random (version 4) UUID, from the kernel's random source.
fn new_job_id() -> Result<String> {
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(|e| format!("/dev/urandom: {e}"))?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    ))
}

/// A valid greyscale PNG of `side` × `side` pixels (a gradient), its image
/// data in stored (uncompressed) deflate blocks: a small scanned page.
fn png(side: u32) -> Vec<u8> {
    let mut raw = Vec::new();
    for y in 0..side {
        raw.push(0); // filter type 0 (none) for each row
        raw.extend((0..side).map(|x| ((x + y) * 255 / (2 * side)) as u8));
    }
    // zlib: deflate with a 32 KiB window, then stored blocks of at most
    // 65535 bytes, then the Adler-32 of the raw data.
    let mut zlib = vec![0x78, 0x01];
    let blocks = raw.chunks(65_535).count();
    for (i, block) in raw.chunks(65_535).enumerate() {
        let len = block.len() as u16;
        zlib.push(u8::from(i + 1 == blocks));
        zlib.extend_from_slice(&len.to_le_bytes());
        zlib.extend_from_slice(&(!len).to_le_bytes());
        zlib.extend_from_slice(block);
    }
    let (mut a, mut b) = (1u32, 0u32);
    for &byte in &raw {
        a = (a + u32::from(byte)) % 65_521;
        b = (b + a) % 65_521;
    }
    zlib.extend_from_slice(&((b << 16) | a).to_be_bytes());
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = side.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&side.to_be_bytes());
    // Bit depth 8, greyscale, deflate, adaptive filtering, no interlace.
    ihdr.extend_from_slice(&[8, 0, 0, 0, 0]);
    png_chunk(&mut out, b"IHDR", &ihdr);
    png_chunk(&mut out, b"IDAT", &zlib);
    png_chunk(&mut out, b"IEND", &[]);
    out
}

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let from = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crc32(&out[from..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// CRC-32 (IEEE), bit by bit: the pages are small.
fn crc32(bytes: &[u8]) -> u32 {
    let mut c = !0u32;
    for &byte in bytes {
        c ^= u32::from(byte);
        for _ in 0..8 {
            c = if c & 1 == 1 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

const BOUNDARY: &str = "bench-takeover-7d1c";

/// The multipart body of a one-page job for `workflow`.
fn job_body(workflow: &str, page: &[u8]) -> Vec<u8> {
    let manifest = json!({"workflow": workflow, "page_count": 1}).to_string();
    let mut body = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"manifest\"\r\n\
         Content-Type: application/json\r\n\r\n{manifest}\r\n--{BOUNDARY}\r\n\
         Content-Disposition: form-data; name=\"page\"; filename=\"page-0001\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(page);
    body.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    body
}

/// One running `gateway serve`, stopped when dropped (unless it was
/// killed).
struct Server {
    child: Child,
    /// The plain listener's address.
    plain: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        stop(&mut self.child, "-TERM");
    }
}

impl Server {
    /// SIGKILL (std sends it directly, no helper process), then reaps.
    /// Returns when the signal was sent, by both clocks.
    fn kill9(&mut self) -> Result<(Instant, i64)> {
        let (at, wall) = (Instant::now(), wall_ns());
        self.child.kill().map_err(io)?;
        self.child.wait().map_err(io)?;
        Ok((at, wall))
    }
}

/// The device the jobs come from, as the gateway's device API sees it.
struct Device {
    token: String,
    page: Vec<u8>,
}

/// What one submission returned.
struct Submitted {
    job: String,
    sent: Instant,
    acked: Instant,
    replicated: bool,
}

impl Device {
    /// A user session on `server`.
    fn login(&self, server: &Server) -> Result<String> {
        let auth = format!("Bearer {}", self.token);
        let (status, body) = http(
            &server.plain,
            "POST",
            "/api/v1/sessions",
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            br#"{"user":"bench","password":"bench"}"#,
        )?;
        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        match (status, v["session"].as_str()) {
            (201, Some(s)) => Ok(s.to_owned()),
            _ => Err(format!(
                "login answered {status}: {}",
                String::from_utf8_lossy(&body)
            )),
        }
    }

    /// Submits one job; it must be acknowledged (`201`).
    fn submit(&self, server: &Server, session: &str) -> Result<Submitted> {
        let job = new_job_id()?;
        let auth = format!("Bearer {}", self.token);
        let ctype = format!("multipart/form-data; boundary={BOUNDARY}");
        let body = job_body("bench", &self.page);
        let sent = Instant::now();
        let (status, answer) = http(
            &server.plain,
            "PUT",
            &format!("/api/v1/jobs/{job}"),
            &[
                ("Authorization", &auth),
                ("X-Scan-Session", session),
                ("Content-Type", &ctype),
            ],
            &body,
        )?;
        let acked = Instant::now();
        let v: Value = serde_json::from_slice(&answer).unwrap_or(Value::Null);
        if status != 201 {
            return Err(format!(
                "job {job} answered {status}: {}",
                String::from_utf8_lossy(&answer)
            ));
        }
        Ok(Submitted {
            job,
            sent,
            acked,
            replicated: v["replicated"] == true,
        })
    }
}

/// The two instances, their configuration file and logs.
struct Site {
    tools: Tools,
    dir: PathBuf,
    config: PathBuf,
}

impl Site {
    fn cli(&self, instance: &str, args: &[&str]) -> Result<String> {
        timed(self.tools.gateway(&self.config, instance).args(args)).map(|(out, _)| out)
    }

    fn log(&self, instance: &str) -> PathBuf {
        self.dir.join(format!("{instance}.log"))
    }

    /// Starts `gateway serve` for `name` (JSON lines appended to its log)
    /// and waits until its run file names its plain listener.
    fn start(&self, name: &str) -> Result<Server> {
        let run_file = self.dir.join(name).join(format!("{name}.run.json"));
        // A killed server leaves its run file behind.
        let _ = std::fs::remove_file(&run_file);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log(name))
            .map_err(io)?;
        let child = self
            .tools
            .gateway(&self.config, name)
            .arg("serve")
            // The environment must not change the format or hide the lines
            // this bench reads.
            .env("SCANGW_LOG_FORMAT", "json")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(io)?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {name}: {e}"))?;
        let mut server = Server {
            child,
            plain: String::new(),
        };
        let log = self.log(name);
        let info = crate::pair_site::wait_started(&mut server.child, &run_file, name, &log, |i| {
            !listener(i, "plain").is_empty()
        })?;
        server.plain = listener(&info, "plain");
        Ok(server)
    }

    /// Waits until both servers are LIVE, in sync on one configuration
    /// version, each holds a lease from the other, and `gw-a` has applied
    /// `applied` takeovers of its jobs.
    fn wait_leased(&self, applied: u64, deadline: Instant) -> Result {
        let left = deadline.saturating_duration_since(Instant::now());
        wait_in_sync(&self.tools, &self.config, left)?;
        let mut last = (Value::Null, Value::Null);
        while Instant::now() < deadline {
            let (a, b) = (
                pair_status(&self.tools, &self.config, "gw-a")?,
                pair_status(&self.tools, &self.config, "gw-b")?,
            );
            let ok = |p: &Value| p["state"] == "live" && p["jobs"]["permit"] == "leased";
            if ok(&a) && ok(&b) && a["jobs"]["takeovers_applied"].as_u64() == Some(applied) {
                return Ok(());
            }
            last = (a, b);
            std::thread::sleep(Duration::from_millis(20));
        }
        let brief = |p: &Value| {
            format!(
                "state {}, permit {}, takeovers applied {}",
                p["state"], p["jobs"]["permit"], p["jobs"]["takeovers_applied"]
            )
        };
        Err(format!(
            "the pair did not hold leases both ways in time (gw-a: {}; gw-b: {}; {} takeovers \
             of gw-a's jobs expected applied on gw-a)",
            brief(&last.0),
            brief(&last.1),
            applied
        ))
    }

    /// Waits until `instance` lists `job` as done (the peer's copy counts):
    /// a job the peer still thinks unfinished would be taken over again.
    fn wait_done(&self, instance: &str, job: &str, deadline: Instant) -> Result {
        loop {
            let list = self.cli(instance, &["job", "list", "--state", "done"])?;
            if list.contains(job) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("{instance} never listed job {job} as done"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A vendor key of the site's own, the configuration with both instances,
/// their pair ports, the user and the workflow delivering to `hook`, and
/// both licenses activated.
fn make_site(tools: Tools, dir: &Path, hook: &str) -> Result<Site> {
    let hash = tools.hash_password("bench")?;
    let body = format!(
        r#"[users.bench]
password_hash = "{hash}"

[workflows.bench]
steps = [ {{ plugin = "assemble" }}, {{ plugin = "webhook", url = "{hook}", secret = "{SECRET}" }} ]

[defaults]
data_dir = "{{instance}}"
listen = "127.0.0.1:0"
listen_plain = "127.0.0.1:0"
log_level = "info"

[defaults.pair]
heartbeat_interval_ms = {HEARTBEAT_INTERVAL_MS}
dead_threshold_ms = {DEAD_THRESHOLD_MS}
"#
    );
    let (config, key_a, key_b) = crate::pair_site::pair_config(&tools, dir, 5, &body)?;
    let site = Site {
        tools,
        dir: dir.to_owned(),
        config,
    };
    site.cli("gw-a", &["license", "activate", &key_a])?;
    site.cli("gw-b", &["license", "activate", &key_b])?;
    Ok(site)
}

/// The length of a log now: where the lines of the next round begin.
fn log_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// The first line logged after `from` whose `event` is `kind`: its
/// timestamp (ns since the epoch) and its message.
fn logged_event(path: &Path, from: u64, kind: &str) -> Option<(i64, String)> {
    let mut text = String::new();
    let mut file = std::fs::File::open(path).ok()?;
    file.seek(SeekFrom::Start(from)).ok()?;
    file.read_to_string(&mut text).ok()?;
    text.lines()
        .filter(|l| l.contains(kind))
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["event"] == kind)
        .and_then(|v| {
            let (ns, _) = utc_ns(v["ts"].as_str()?)?;
            Some((ns, v["message"].as_str().unwrap_or_default().to_owned()))
        })
}

/// The number in "took over N unfinished job(s)".
fn taken_count(message: &str) -> Option<usize> {
    message
        .split_once("took over ")?
        .1
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The figures of one round, in milliseconds.
#[derive(Default)]
struct Round {
    /// Healthy owner, from sending the job: to the webhook's request, and
    /// to the `201`; and from the `201` to the webhook's request (negative
    /// when the job was delivered before the answer came).
    healthy_sent_to_hook: f64,
    healthy_sent_to_ack: f64,
    healthy_ack_to_hook: f64,
    /// kill -9 to `gw-b`'s `peer_dead` line, to its `takeover` line.
    to_dead: Option<f64>,
    to_takeover: Option<f64>,
    /// kill -9 to the first request of one of the round's jobs, and to
    /// the last of them (every job once).
    to_first: Option<f64>,
    to_all: Option<f64>,
    /// The first request's wall clock, for the split against the log.
    first_wall_ns: Option<i64>,
    dead_ns: Option<i64>,
    takeover_ns: Option<i64>,
    /// What `gw-b` said it took over.
    taken: Option<usize>,
}

pub fn run(args: &[String]) -> Result {
    let o = parse(args)?;
    let tools = Tools::build("release")?;
    // Outside the repository: nothing this bench writes belongs there.
    let dir = std::env::temp_dir().join("scangw-bench-takeover");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(io)?;
    eprintln!("bench takeover: site and logs in {}", dir.display());
    let hook = Webhook::start()?;
    let site = make_site(tools, &dir, &hook.url)?;
    let started = Instant::now();

    let mut a = site.start("gw-a")?;
    let _b = site.start("gw-b")?;
    let code = site.cli("gw-a", &["pair", "init"])?;
    site.cli("gw-b", &["pair", "join", code.trim()])?;
    wait_in_sync(&site.tools, &site.config, STEP_LIMIT)?;
    let added = site.cli("gw-a", &["device", "add", "bench-mfd"])?;
    let token = serde_json::from_str::<Value>(&added)
        .ok()
        .and_then(|v| v["token"].as_str().map(str::to_owned))
        .ok_or_else(|| format!("`device add` answered no token: {added}"))?;
    let device = Device {
        token,
        page: png(200),
    };

    let mut rounds: Vec<Round> = Vec::new();
    let mut problems: Vec<String> = Vec::new();
    let mut submitted: Vec<String> = Vec::new();
    // Takeovers gw-b logged: gw-a must have applied as many before it gets
    // a lease again.
    let mut takeovers = 0u64;
    let cpu_before = cpu_jiffies();
    let series = Instant::now();
    for round in 1..=o.rounds {
        if series.elapsed() > RUN_LIMIT {
            problems.push(format!(
                "stopped after {} rounds: the run took longer than {} s",
                round - 1,
                RUN_LIMIT.as_secs()
            ));
            break;
        }
        let deadline = Instant::now() + ROUND_LIMIT;
        if round > 1 {
            a = site.start("gw-a")?;
        }
        site.wait_leased(takeovers, deadline)?;
        let session = device.login(&a)?;

        // The baseline: the owner healthy, its pipeline running.
        site.cli("gw-a", &["pipeline", "resume"])?;
        let healthy = device.submit(&a, &session)?;
        submitted.push(healthy.job.clone());
        if !healthy.replicated {
            problems.push(format!(
                "round {round}: the baseline job {} was acknowledged without `\"replicated\": true`",
                healthy.job
            ));
        }
        if !hook.wait_for(std::slice::from_ref(&healthy.job), deadline) {
            return Err(format!(
                "round {round}: the healthy owner did not deliver job {} within the round's {} s",
                healthy.job,
                ROUND_LIMIT.as_secs()
            ));
        }
        let delivered = hook.of(std::slice::from_ref(&healthy.job))[0].at;
        // Done on both before the owner is killed: otherwise it is an
        // unfinished job to gw-b and is taken over (and sent) again.
        site.wait_done("gw-b", &healthy.job, deadline)?;
        site.cli("gw-a", &["pipeline", "pause"])?;

        // The takeover: jobs held on the owner, each already on gw-b.
        let mut jobs = Vec::new();
        for _ in 0..o.jobs {
            let s = device.submit(&a, &session)?;
            if !s.replicated {
                return Err(format!(
                    "round {round}: job {} was acknowledged without `\"replicated\": true`",
                    s.job
                ));
            }
            jobs.push(s.job);
        }
        submitted.extend(jobs.iter().cloned());
        let p = pair_status(&site.tools, &site.config, "gw-a")?;
        if p["state"] != "live" || p["jobs"]["permit"] != "leased" {
            return Err(format!(
                "round {round}: gw-a was not LIVE with a lease just before the kill: {p}"
            ));
        }
        let from = log_len(&site.log("gw-b"));
        let (killed, kill_wall_ns) = a.kill9()?;
        let all = hook.wait_for(&jobs, deadline);
        let arrived = hook.of(&jobs);
        let mut r = Round {
            healthy_sent_to_hook: ms_between(healthy.sent, delivered),
            healthy_sent_to_ack: ms_between(healthy.sent, healthy.acked),
            healthy_ack_to_hook: ms_between(healthy.acked, delivered),
            ..Round::default()
        };
        if let Some(early) = arrived.iter().find(|x| x.at < killed) {
            problems.push(format!(
                "round {round}: job {} reached the webhook before gw-a was killed (its pipeline was paused)",
                early.key
            ));
        }
        if let Some(first) = arrived.iter().min_by_key(|x| x.at) {
            r.to_first = Some(ms(first.at.saturating_duration_since(killed)));
            r.first_wall_ns = Some(first.wall_ns);
        }
        if all {
            let last = jobs
                .iter()
                .filter_map(|j| arrived.iter().find(|x| &x.key == j).map(|x| x.at))
                .max();
            r.to_all = last.map(|l| ms(l.saturating_duration_since(killed)));
        } else {
            problems.push(format!(
                "round {round}: {} of {} jobs reached the webhook within the round's {} s",
                jobs.iter()
                    .filter(|j| arrived.iter().any(|x| &x.key == *j))
                    .count(),
                jobs.len(),
                ROUND_LIMIT.as_secs()
            ));
        }
        // gw-b logs the takeover before it runs the jobs, and DEAD before
        // that; a moment for the last line to be written.
        let lines_by = Instant::now() + Duration::from_secs(2);
        loop {
            let dead = logged_event(&site.log("gw-b"), from, "peer_dead");
            let took = logged_event(&site.log("gw-b"), from, "takeover");
            if (dead.is_some() && took.is_some()) || Instant::now() > lines_by {
                r.dead_ns = dead.map(|(ns, _)| ns);
                r.to_dead = r.dead_ns.map(|ns| (ns - kill_wall_ns) as f64 / 1e6);
                r.taken = took.as_ref().and_then(|(_, m)| taken_count(m));
                r.takeover_ns = took.map(|(ns, _)| ns);
                r.to_takeover = r.takeover_ns.map(|ns| (ns - kill_wall_ns) as f64 / 1e6);
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if r.takeover_ns.is_none() {
            problems.push(format!("round {round}: gw-b logged no `takeover`"));
        } else {
            takeovers += 1;
        }
        if r.takeover_ns.is_some() && r.taken != Some(jobs.len()) {
            problems.push(format!(
                "round {round}: gw-b took over {:?} jobs, {} were submitted",
                r.taken,
                jobs.len()
            ));
        }
        let show = |v: Option<f64>| v.map_or("?".to_owned(), |v| format!("{v:.0}"));
        eprintln!(
            "bench takeover: round {round}: kill -9 → DEAD {} ms → takeover {} ms → first delivery \
             {} ms, all {} delivered {} ms; healthy owner: job sent → webhook {:.1} ms \
             (201 → webhook {:.1} ms)",
            show(r.to_dead),
            show(r.to_takeover),
            show(r.to_first),
            jobs.len(),
            show(r.to_all),
            r.healthy_sent_to_hook,
            r.healthy_ack_to_hook
        );
        rounds.push(r);
    }
    let series_secs = series.elapsed().as_secs_f64();
    let cpu_busy = cpu_before
        .zip(cpu_jiffies())
        .filter(|((_, t0), (_, t1))| t1 > t0)
        .map(|((b0, t0), (b1, t1))| 100.0 * (b1 - b0) as f64 / (t1 - t0) as f64);

    // The owner back once more, its pipeline running: whatever it would
    // still deliver of the jobs taken from it shows up now.
    let deadline = Instant::now() + ROUND_LIMIT;
    let _owner = site.start("gw-a")?;
    site.wait_leased(takeovers, deadline)?;
    site.cli("gw-a", &["pipeline", "resume"])?;
    std::thread::sleep(SETTLE);
    let events = |instance: &str| -> Result<BTreeMap<String, usize>> {
        let text = site.cli(instance, &["pair", "events", "--json", "--limit", "100000"])?;
        let v: Value = serde_json::from_str(&text).map_err(|e| format!("{text}: {e}"))?;
        let mut counts = BTreeMap::new();
        for e in v["events"].as_array().into_iter().flatten() {
            *counts
                .entry(e["kind"].as_str().unwrap_or("?").to_owned())
                .or_insert(0) += 1;
        }
        Ok(counts)
    };
    let (events_a, events_b) = (events("gw-a")?, events("gw-b")?);

    let mut per_job: BTreeMap<String, usize> = BTreeMap::new();
    for x in hook.arrivals() {
        *per_job.entry(x.key).or_insert(0) += 1;
    }
    let twice: Vec<String> = per_job
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(j, n)| format!("{j} ({n}×)"))
        .collect();
    let unknown = per_job.keys().filter(|k| !submitted.contains(k)).count();
    let never = submitted
        .iter()
        .filter(|j| !per_job.contains_key(*j))
        .count();

    report(&o, &rounds, series_secs, cpu_busy);
    println!(
        "webhook: {} requests for {} jobs submitted ({} of them taken over); delivered more than \
         once: {}; never delivered: {never}; requests for jobs not submitted: {unknown}",
        per_job.values().sum::<usize>(),
        submitted.len(),
        rounds.len() * o.jobs,
        if twice.is_empty() {
            "none".to_owned()
        } else {
            twice.join(", ")
        }
    );
    println!("pair events on gw-a: {events_a:?}; on gw-b: {events_b:?}");
    println!(
        "whole run {:.0} s (site, pairing and the final check included); logs: {} and {}",
        started.elapsed().as_secs_f64(),
        site.log("gw-a").display(),
        site.log("gw-b").display()
    );
    if !twice.is_empty() {
        problems.push(format!(
            "jobs delivered more than once: {}",
            twice.join(", ")
        ));
    }
    if never > 0 {
        problems.push(format!("{never} submitted jobs never reached the webhook"));
    }
    if unknown > 0 {
        problems.push(format!(
            "the webhook received requests for {unknown} jobs that were never submitted"
        ));
    }
    let recorded = events_b.get("takeover").copied().unwrap_or(0);
    if recorded as u64 != takeovers {
        problems.push(format!(
            "gw-b recorded {recorded} takeover events and logged {takeovers} takeovers"
        ));
    }
    for (instance, counts) in [("gw-a", &events_a), ("gw-b", &events_b)] {
        if let Some(n) = counts.get("possible_duplicate") {
            problems.push(format!("{instance} recorded {n} possible_duplicate events"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

/// A table row: `digits` after the point (0 for figures from the logs'
/// whole milliseconds).
fn row(what: &str, samples: &[f64], digits: usize) {
    match summary(samples) {
        Some(s) => println!(
            "| {what} | {} | {:.digits$} | {:.digits$} | {:.digits$} | {:.digits$} |",
            s.n, s.p50, s.p99, s.min, s.max
        ),
        None => println!("| {what} | 0 | - | - | - | - |"),
    }
}

fn report(o: &Options, rounds: &[Round], series_secs: f64, cpu_busy: Option<f64>) {
    let collect = |f: &dyn Fn(&Round) -> Option<f64>| rounds.iter().filter_map(f).collect();
    let to_dead: Vec<f64> = collect(&|r| r.to_dead);
    let lease: Vec<f64> = collect(&|r| Some((r.takeover_ns? - r.dead_ns?) as f64 / 1e6));
    let run: Vec<f64> = collect(&|r| Some((r.first_wall_ns? - r.takeover_ns?) as f64 / 1e6));
    let first: Vec<f64> = collect(&|r| r.to_first);
    let all: Vec<f64> = collect(&|r| r.to_all);
    let healthy: Vec<f64> = collect(&|r| Some(r.healthy_sent_to_hook));
    let healthy_ack: Vec<f64> = collect(&|r| Some(r.healthy_sent_to_ack));
    let healthy_ack_to_hook: Vec<f64> = collect(&|r| Some(r.healthy_ack_to_hook));
    let kill_to_takeover: Vec<f64> = collect(&|r| r.to_takeover);
    let lease_ms = DEAD_THRESHOLD_MS as f64;
    let margin_ms = (lease_ms / 10.0).max(10.0);

    println!(
        "## takeover after kill -9 of the owner on loopback: {} rounds of {} one-page jobs held on \
         gw-a (pipeline paused, each `201` with `\"replicated\": true`), then kill -9 of gw-a; \
         heartbeat {HEARTBEAT_INTERVAL_MS} ms, DEAD after {DEAD_THRESHOLD_MS} ms, lease \
         {lease_ms:.0} ms + {margin_ms:.0} ms margin; {series_secs:.1} s for the rounds, CPU busy \
         {} ({} cores, by /proc/stat)",
        rounds.len(),
        o.jobs,
        cpu_busy.map_or("?".to_owned(), |b| format!("{b:.0}%")),
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    println!(
        "command: cargo xtask bench takeover --rounds {} --jobs {}",
        o.rounds, o.jobs
    );
    println!(
        "kill and webhook arrivals stamped by this process (µs); gw-b's `peer_dead` and \
         `takeover` by its log timestamps (whole ms, ±1 ms); p99 is the nearest rank"
    );
    println!();
    println!("| measured | rounds | p50 ms | p99 ms | min ms | max ms |");
    println!("|---|---|---|---|---|---|");
    row(
        "kill -9 → gw-b logs `peer_dead` (silence → DEAD)",
        &to_dead,
        0,
    );
    row("`peer_dead` → `takeover` (the lease wait)", &lease, 0);
    row("`takeover` → first taken-over job at the webhook", &run, 0);
    row("kill -9 → `takeover`", &kill_to_takeover, 0);
    row(
        "**kill -9 → first taken-over job at the webhook**",
        &first,
        1,
    );
    row(
        &format!("kill -9 → all {} jobs of the round at the webhook", o.jobs),
        &all,
        1,
    );
    row(
        "baseline: healthy owner (pipeline running), job sent → job at the webhook",
        &healthy,
        1,
    );
    row(
        "baseline: healthy owner, job sent → its `201` (`\"replicated\": true`)",
        &healthy_ack,
        1,
    );
    row(
        "baseline: healthy owner, `201` → job at the webhook (< 0: delivered before the answer)",
        &healthy_ack_to_hook,
        1,
    );
    if let (Some(f), Some(h)) = (summary(&first), summary(&healthy)) {
        crate::table::row(
            format!(
                "takeover: kill -9 of a job's owner → first of its {} jobs delivered by the survivor (heartbeat {HEARTBEAT_INTERVAL_MS} ms, DEAD after {DEAD_THRESHOLD_MS} ms)",
                o.jobs
            ),
            crate::table::p50_p99(&f),
            format!(
                "healthy owner, job sent → delivered: {}",
                crate::table::p50_p99(&h)
            ),
            crate::table::ratio(f.p50, h.p50),
        );
    }
    println!(
        "| floor: `dead_threshold_ms`, the silence any DEAD waits for (configured) | – | {DEAD_THRESHOLD_MS} | | | |"
    );
    println!(
        "| floor: lease + margin after the last grant (configured) | – | {:.0} | | | |",
        lease_ms + margin_ms
    );
    println!(
        "| HAProxy default checks, inter 2 s × fall 3 (cited, not measured) | – | ≈ {HAPROXY_DEFAULT_MS:.0} | | | |"
    );
    println!();
    println!(
        "the healthy owner's job reached the webhook before its `201` reached the device in {} of \
         {} rounds (a delivery step starts only once gw-b holds the copy and confirmed the step began; the `201` waits for the copy only)",
        healthy_ack_to_hook.iter().filter(|d| **d < 0.0).count(),
        healthy_ack_to_hook.len()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_is_a_well_formed_png() {
        let p = png(200);
        assert_eq!(&p[..8], b"\x89PNG\r\n\x1a\n");
        // IEND's CRC is fixed by the format.
        assert_eq!(&p[p.len() - 4..], &[0xae, 0x42, 0x60, 0x82]);
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }

    #[test]
    fn job_ids_are_version_4_uuids() {
        let id = new_job_id().unwrap();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert!("89ab".contains(&id[19..20]));
        assert_ne!(id, new_job_id().unwrap());
    }

    #[test]
    fn the_takeover_line_gives_its_count() {
        let m = "gw-b took over 4 unfinished job(s) of gw-a, silent and its lease over (takeover 1 at epoch 1); ...";
        assert_eq!(taken_count(m), Some(4));
        assert_eq!(taken_count("gw-a is back"), None);
    }

    #[test]
    fn a_chunked_answer_is_joined() {
        assert_eq!(dechunk(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"), b"abcde");
    }

    #[test]
    fn the_webhook_stamps_each_request_with_its_key() {
        let hook = Webhook::start().unwrap();
        let addr = hook
            .url
            .trim_start_matches("http://")
            .trim_end_matches("/hook");
        let (status, _) = http(
            addr,
            "POST",
            "/hook",
            &[("Idempotency-Key", "job-1")],
            b"body",
        )
        .unwrap();
        assert_eq!(status, 200);
        let keys: Vec<String> = hook.arrivals().into_iter().map(|a| a.key).collect();
        assert_eq!(keys, ["job-1"]);
    }
}
