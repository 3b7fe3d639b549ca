//! `cargo xtask bench failover`: the device-side time from the primary's
//! death to the next job acknowledged at the device, when the primary
//! refuses connections (its process killed with kill -9: the port is
//! closed) and when its packets silently disappear (a proxy in front of it
//! stops accepting, with its listen queue filled so that new connects get
//! no answer, and stops moving bytes on the connections already open), set
//! beside the acknowledgement latency of a healthy primary measured in the
//! same run and beside a device that reaches the pair through a real
//! HAProxy on the same faults: once with the shipped `deploy/haproxy.cfg`
//! unchanged, once with that file's check timing replaced by HAProxy's
//! defaults (`inter 2s fall 3 rise 2`). It writes nothing into the
//! repository and talks only to loopback.
//!
//! Two release `gateway` processes, `gw-a` (03) and `gw-b` (04), on fixed
//! loopback ports (a restarted `gw-a` is found at its old address), paired,
//! heartbeat every 100 ms, DEAD after 600 ms. One simulated device, the
//! release `mfd-sim run` through its failover client and outbox with the
//! client's default timeouts (connect 1 s, liveness check after 250 ms of
//! silence), scans one 20 kB page every 10 ms, five per person, and
//! writes every acknowledgement and client event with its time to a file
//! this process follows. Each trial starts once the device has been back on
//! `gw-a` for a few jobs; the fault is made and timed here, and the trial
//! ends with the first job `gw-b` acknowledged after it. Then `gw-a` is
//! started again (or the proxy passes again) and the device fails back.
//!
//! Behind HAProxy the device knows one address, HAProxy's; both gateways
//! take HAProxy's connections on their PROXY-protocol listeners, and for
//! the silent fault the proxy sits between HAProxy and `gw-a` (HAProxy's
//! probes of `gw-a` meet the same silence). A trial starts once HAProxy
//! sees `gw-a` UP again, the device's connections to `gw-b` are shut on
//! HAProxy's runtime API (HAProxy never moves an open connection back by
//! itself) and `gw-a` has accepted a few of its jobs; it ends with the
//! first job after the fault that `gw-b` accepted, by `gw-b`'s log.
//!
//! Every wait is bounded (each trial by [`TRIAL_LIMIT`], the run by
//! [`RUN_LIMIT`]), and every process started here is stopped when its guard
//! is dropped, on failure too.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::Result;
use crate::measure::{cpu_jiffies, io, summary};
use crate::pair_site::{STEP_LIMIT, stop, timed, wait_in_sync};
use crate::site::Tools;

const HEARTBEAT_INTERVAL_MS: u64 = 100;
const DEAD_THRESHOLD_MS: u64 = 600;
/// The longest one trial may take, from restoring the primary to the
/// first job acknowledged by the secondary after the next fault.
const TRIAL_LIMIT: Duration = Duration::from_secs(60);
/// The longest the whole run may take.
const RUN_LIMIT: Duration = Duration::from_secs(1800);
/// Jobs on the primary after it is back, before the next fault: the fault
/// comes in the middle of a person's five scans, while the device is
/// sending jobs.
const JOBS_BEFORE_FAULT: usize = 3;
/// The check timing of the shipped `deploy/haproxy.cfg`, and HAProxy's
/// defaults, which replace it for the `defaults` series.
const SHIPPED_TIMING: &str = "default-server inter 200ms fall 3 rise 5";
const DEFAULT_TIMING: &str = "default-server inter 2s fall 3 rise 2";
/// The design's goals, at p99.
const GOAL_REFUSED_MS: f64 = 300.0;
const GOAL_SILENT_MS: f64 = 1500.0;

pub const USAGE: &str = "  failover: [--trials N (50 per fault)] [--haproxy-trials N (10 per fault and HAProxy timing; 0: none)] [--json]";

struct Options {
    trials: u32,
    haproxy_trials: u32,
    json: bool,
}

fn parse(args: &[String]) -> Result<Options> {
    let mut o = Options {
        trials: 50,
        haproxy_trials: 10,
        json: false,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--trials" => {
                o.trials = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|n| (1..=500).contains(n))
                    .ok_or("--trials needs a number from 1 to 500")?;
            }
            "--haproxy-trials" => {
                o.haproxy_trials = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|n| (0..=100).contains(n))
                    .ok_or("--haproxy-trials needs a number from 0 to 100")?;
            }
            "--json" => o.json = true,
            other => {
                return Err(format!(
                    "unknown option `{other}` for bench failover\nusage: cargo xtask bench failover [options]\n{USAGE}"
                ));
            }
        }
    }
    Ok(o)
}

fn unix_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// One running `gateway serve`, stopped when dropped (unless killed).
struct Server {
    child: Option<Child>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            stop(child, "-TERM");
        }
    }
}

impl Server {
    /// SIGKILL (sent directly by std, no helper process), then reaps.
    fn kill9(&mut self) -> Result {
        if let Some(mut child) = self.child.take() {
            child.kill().map_err(io)?;
            child.wait().map_err(io)?;
        }
        Ok(())
    }
}

/// The site: both instances, their configuration, the device's files.
struct Site {
    tools: Tools,
    dir: PathBuf,
    config: PathBuf,
    /// The HTTPS ports, `gw-a` first.
    ports: [u16; 2],
    /// The PROXY-protocol ports HAProxy connects to, `gw-a` first.
    proxy_ports: [u16; 2],
}

impl Site {
    fn cli(&self, instance: &str, args: &[&str]) -> Result<String> {
        timed(self.tools.gateway(&self.config, instance).args(args)).map(|(out, _)| out)
    }

    fn start(&self, name: &str) -> Result<(Server, Value)> {
        let run_file = self.dir.join(name).join(format!("{name}.run.json"));
        // A killed server leaves its run file behind.
        let _ = std::fs::remove_file(&run_file);
        let (child, info) = self.tools.serve(
            &self.config,
            name,
            &self.dir.join(name),
            &self.dir.join(format!("{name}.log")),
        )?;
        Ok((Server { child: Some(child) }, info))
    }
}

fn make_site(tools: Tools, dir: &Path) -> Result<Site> {
    let hash = tools.hash_password("bench")?;
    let free_port = || -> Result<u16> {
        let l = TcpListener::bind("127.0.0.1:0").map_err(io)?;
        Ok(l.local_addr().map_err(io)?.port())
    };
    let ports = [free_port()?, free_port()?];
    let proxy_ports = [free_port()?, free_port()?];
    let delivered = dir.join("delivered");
    std::fs::create_dir_all(&delivered).map_err(io)?;
    let body = format!(
        r#"[users.bench]
password_hash = "{hash}"

[workflows.bench]
steps = [ {{ plugin = "assemble" }}, {{ plugin = "folder", root = "{delivered}", name = "{{job_id}}.pdf" }} ]

[defaults]
data_dir = "{{instance}}"
log_level = "info"

[defaults.pair]
heartbeat_interval_ms = {HEARTBEAT_INTERVAL_MS}
dead_threshold_ms = {DEAD_THRESHOLD_MS}

[instances.gw-a]
listen = "127.0.0.1:{web_a}"
listen_proxy = "127.0.0.1:{proxy_a}"

[instances.gw-b]
listen = "127.0.0.1:{web_b}"
listen_proxy = "127.0.0.1:{proxy_b}"
"#,
        delivered = delivered.display(),
        web_a = ports[0],
        web_b = ports[1],
        proxy_a = proxy_ports[0],
        proxy_b = proxy_ports[1],
    );
    let (config, key_a, key_b) = crate::pair_site::pair_config(&tools, dir, 5, &body)?;
    let site = Site {
        tools,
        dir: dir.to_owned(),
        config,
        ports,
        proxy_ports,
    };
    site.cli("gw-a", &["license", "activate", &key_a])?;
    site.cli("gw-b", &["license", "activate", &key_b])?;
    Ok(site)
}

/// What the proxy in front of `gw-a` shares with its threads.
#[derive(Default)]
struct ProxyState {
    silent: AtomicBool,
    stopping: AtomicBool,
    /// Every socket of every connection, to shut them all at the end.
    streams: Mutex<Vec<TcpStream>>,
    /// The connections that fill the listen queue while silent.
    fillers: Mutex<Vec<TcpStream>>,
}

/// A TCP proxy on a loopback port in front of `gw-a`'s HTTPS port. It
/// passes everything until [`FrontProxy::go_silent`]: from then on it
/// accepts nothing (and fills its listen queue, so that the kernel drops
/// further SYNs: connects get no answer at all) and moves no byte on the
/// connections already open, which stay open. That is what a server whose
/// packets silently disappear looks like from the device, except that the
/// kernel still acknowledges what the device sends on an open connection.
struct FrontProxy {
    addr: SocketAddr,
    state: Arc<ProxyState>,
    accept: Option<JoinHandle<()>>,
}

impl FrontProxy {
    fn start(addr: SocketAddr, upstream: SocketAddr) -> Result<FrontProxy> {
        // std sets SO_REUSEADDR, so the port of a proxy just shut can be
        // taken again at once.
        let listener = TcpListener::bind(addr).map_err(|e| format!("proxy on {addr}: {e}"))?;
        let addr = listener.local_addr().map_err(io)?;
        listener.set_nonblocking(true).map_err(io)?;
        let state = Arc::new(ProxyState::default());
        let accept = {
            let state = state.clone();
            std::thread::spawn(move || {
                while !state.stopping.load(Ordering::SeqCst) {
                    if state.silent.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(2));
                        continue;
                    }
                    match listener.accept() {
                        Ok((device, _)) => connect(device, upstream, &state),
                        Err(_) => std::thread::sleep(Duration::from_millis(1)),
                    }
                }
            })
        };
        Ok(FrontProxy {
            addr,
            state,
            accept: Some(accept),
        })
    }

    /// Silence from now on; returns once the listen queue is full.
    fn go_silent(&self) {
        self.state.silent.store(true, Ordering::SeqCst);
        let mut fillers = self.state.fillers.lock().unwrap_or_else(|p| p.into_inner());
        // std listens with a queue of 128: the kernel completes that many
        // handshakes (and one more) for nobody, then drops SYNs.
        for _ in 0..400 {
            match TcpStream::connect_timeout(&self.addr, Duration::from_millis(100)) {
                Ok(s) => fillers.push(s),
                Err(_) => break,
            }
        }
    }

    /// Closes the listener and every connection.
    fn shut(mut self) {
        self.state.stopping.store(true, Ordering::SeqCst);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        for s in self
            .state
            .streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            let _ = s.shutdown(Shutdown::Both);
        }
        self.state
            .fillers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
}

impl Drop for FrontProxy {
    fn drop(&mut self) {
        self.state.stopping.store(true, Ordering::SeqCst);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// Connects an accepted device connection to `upstream`, one thread per
/// direction.
fn connect(device: TcpStream, upstream: SocketAddr, state: &Arc<ProxyState>) {
    let _ = device.set_nonblocking(false);
    let Ok(server) = TcpStream::connect_timeout(&upstream, Duration::from_secs(1)) else {
        return;
    };
    let _ = device.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let clones = (
        device.try_clone(),
        server.try_clone(),
        device.try_clone(),
        server.try_clone(),
    );
    let (Ok(d2), Ok(s2), Ok(d3), Ok(s3)) = clones else {
        return;
    };
    state
        .streams
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .extend([d3, s3]);
    for (from, to) in [(device, server), (s2, d2)] {
        let state = state.clone();
        std::thread::spawn(move || pipe(from, to, &state));
    }
}

/// Copies one direction until either side closes or the proxy stops; while
/// silent, moves nothing and keeps both sockets open.
fn pipe(mut from: TcpStream, mut to: TcpStream, state: &ProxyState) {
    use std::io::Write;
    let _ = from.set_read_timeout(Some(Duration::from_millis(20)));
    let mut buf = vec![0u8; 64 * 1024];
    while !state.stopping.load(Ordering::SeqCst) {
        if state.silent.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        match from.read(&mut buf) {
            Ok(0) => {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            // Bytes read in the instant of going silent are dropped too.
            Ok(_) if state.silent.load(Ordering::SeqCst) => {}
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

/// The device's event file, read as it grows.
struct Events {
    path: PathBuf,
    offset: u64,
    all: Vec<Value>,
}

impl Events {
    fn new(path: PathBuf) -> Events {
        Events {
            path,
            offset: 0,
            all: Vec::new(),
        }
    }

    /// Reads the lines written since the last call (whole lines only).
    fn poll(&mut self) {
        let Ok(mut file) = std::fs::File::open(&self.path) else {
            return;
        };
        if file.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut reader = BufReader::new(&mut file);
        let mut line = String::new();
        while let Ok(n) = reader.read_line(&mut line) {
            if n == 0 || !line.ends_with('\n') {
                break;
            }
            self.offset += n as u64;
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                self.all.push(v);
            }
            line.clear();
        }
    }

    /// Acknowledgements by server `index` after `after_us`.
    fn acks_on(&self, index: u64, after_us: i64) -> impl Iterator<Item = &Value> {
        self.all.iter().filter(move |e| {
            e["event"] == "acknowledged"
                && e["server_index"] == index
                && e["at_unix_us"].as_i64().is_some_and(|t| t > after_us)
        })
    }
}

/// The job ids a gateway logged as accepted, read from its log as it
/// grows (a restarted `gw-a` starts a new log: read from its start again).
struct Accepted {
    path: PathBuf,
    offset: u64,
    ids: HashSet<String>,
}

impl Accepted {
    fn new(path: PathBuf) -> Accepted {
        Accepted {
            path,
            offset: 0,
            ids: HashSet::new(),
        }
    }

    fn poll(&mut self) {
        let Ok(mut file) = std::fs::File::open(&self.path) else {
            return;
        };
        let len = file.metadata().map_or(0, |m| m.len());
        if len < self.offset {
            self.offset = 0;
        }
        if file.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut reader = BufReader::new(&mut file);
        let mut line = String::new();
        while let Ok(n) = reader.read_line(&mut line) {
            if n == 0 || !line.ends_with('\n') {
                break;
            }
            self.offset += n as u64;
            if line.contains("job accepted") {
                self.ids.extend(uuids_in(&line));
            }
            line.clear();
        }
    }

    fn has(&self, job: &str) -> bool {
        self.ids.contains(job)
    }
}

/// The UUIDs (8-4-4-4-12 hex digits) in a line.
fn uuids_in(line: &str) -> Vec<String> {
    let b = line.as_bytes();
    let mut found = Vec::new();
    let mut i = 0;
    while i + 36 <= b.len() {
        let candidate = &b[i..i + 36];
        let ok = candidate.iter().enumerate().all(|(k, c)| match k {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        });
        if ok {
            found.push(line[i..i + 36].to_ascii_lowercase());
            i += 36;
        } else {
            i += 1;
        }
    }
    found
}

/// A real HAProxy running the shipped `deploy/haproxy.cfg` (or that file
/// with HAProxy's default check timing), its addresses from the
/// environment as the file documents; stopped when dropped.
struct Balancer {
    child: Option<Child>,
    frontend: u16,
    socket: PathBuf,
}

impl Drop for Balancer {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            stop(child, "-TERM");
        }
    }
}

impl Balancer {
    fn start(site: &Site, timing: Timing, gateway_a: SocketAddr) -> Result<Balancer> {
        let shipped = crate::root().join("deploy/haproxy.cfg");
        let text =
            std::fs::read_to_string(&shipped).map_err(|e| format!("{}: {e}", shipped.display()))?;
        if !text.contains(SHIPPED_TIMING) {
            return Err(format!(
                "{} no longer contains `{SHIPPED_TIMING}`: update the failover bench",
                shipped.display()
            ));
        }
        let file = match timing {
            Timing::Shipped => shipped,
            Timing::Defaults => {
                let file = site.dir.join("haproxy-defaults.cfg");
                std::fs::write(&file, text.replace(SHIPPED_TIMING, DEFAULT_TIMING)).map_err(io)?;
                file
            }
        };
        let free_port = || -> Result<u16> {
            let l = TcpListener::bind("127.0.0.1:0").map_err(io)?;
            Ok(l.local_addr().map_err(io)?.port())
        };
        let (frontend, monitor) = (free_port()?, free_port()?);
        let socket = site.dir.join(format!("haproxy-{}.sock", timing.name()));
        let command = || {
            let mut c = Command::new("haproxy");
            c.env_remove("HOLD_FAILBACK")
                .env("FRONTEND", format!("127.0.0.1:{frontend}"))
                .env("GATEWAY_A", gateway_a.to_string())
                .env("GATEWAY_B", format!("127.0.0.1:{}", site.proxy_ports[1]))
                .env("MONITOR", format!("127.0.0.1:{monitor}"))
                .env("ADMIN_SOCKET", &socket);
            c
        };
        crate::site::output(command().arg("-c").arg("-f").arg(&file))
            .map_err(|e| format!("haproxy rejects {}: {e}", file.display()))?;
        let log = std::fs::File::create(site.dir.join(format!("haproxy-{}.log", timing.name())))
            .map_err(io)?;
        let child = command()
            .arg("-db")
            .arg("-f")
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(io)?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start haproxy: {e}"))?;
        let lb = Balancer {
            child: Some(child),
            frontend,
            socket,
        };
        lb.wait_up("gw-a", Instant::now() + STEP_LIMIT)?;
        Ok(lb)
    }

    /// One command on the runtime API.
    fn api(&self, command: &str) -> Result<String> {
        use std::io::Write;
        let mut s = std::os::unix::net::UnixStream::connect(&self.socket)
            .map_err(|e| format!("{}: {e}", self.socket.display()))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(io)?;
        s.write_all(format!("{command}\n").as_bytes()).map_err(io)?;
        let mut out = String::new();
        s.read_to_string(&mut out).map_err(io)?;
        Ok(out)
    }

    /// HAProxy's status of `server` (`UP`, `DOWN`, `UP 1/3`, ...).
    fn status(&self, server: &str) -> Result<String> {
        let csv = self.api("show stat")?;
        let mut lines = csv.lines();
        let header: Vec<&str> = lines
            .next()
            .unwrap_or_default()
            .trim_start_matches("# ")
            .split(',')
            .collect();
        let at = header
            .iter()
            .position(|c| *c == "status")
            .ok_or_else(|| format!("unexpected `show stat`: {csv}"))?;
        lines
            .map(|l| l.split(',').collect::<Vec<_>>())
            .find(|f| f.len() > at && f[0] == "gateway_pair" && f[1] == server)
            .map(|f| f[at].to_owned())
            .ok_or_else(|| format!("no gateway_pair/{server} in `show stat`"))
    }

    fn wait_up(&self, server: &str, deadline: Instant) -> Result {
        let mut last = String::new();
        while Instant::now() < deadline {
            match self.status(server) {
                Ok(s) if s == "UP" => return Ok(()),
                Ok(s) => last = s,
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!(
            "HAProxy did not see {server} UP in time (last: {last})"
        ))
    }
}

/// One trial's figures.
struct Trial {
    /// Fault → first job acknowledged by `gw-b`, in ms.
    to_ack: f64,
    /// The cause the device recorded first after the fault.
    cause: String,
    /// That job's own time from its scan to its acknowledgement.
    job_ms: f64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// kill -9 of `gw-a`: its port refuses connections.
    Refused,
    /// The proxy in front of `gw-a` goes silent.
    Silent,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::Refused => "refused",
            Fault::Silent => "silent",
        }
    }
}

/// HAProxy's check timing in a balancer series.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Timing {
    /// The shipped file unchanged.
    Shipped,
    /// The shipped file with HAProxy's default timing.
    Defaults,
}

impl Timing {
    fn name(self) -> &'static str {
        match self {
            Timing::Shipped => "shipped",
            Timing::Defaults => "defaults",
        }
    }
}

/// How the device reaches the pair.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Front {
    /// Both addresses, through its own failover client.
    Device,
    /// One address, a real HAProxy's.
    Haproxy(Timing),
}

impl Front {
    fn name(self) -> String {
        match self {
            Front::Device => "device".to_owned(),
            Front::Haproxy(t) => format!("haproxy-{}", t.name()),
        }
    }
}

/// The outcome of one series of trials.
struct Series {
    trials: Vec<Trial>,
    problems: Vec<String>,
    /// Acknowledgement latency of jobs to a healthy `gw-a` during the series.
    healthy_ack_ms: Vec<f64>,
}

pub fn run(args: &[String]) -> Result {
    let o = parse(args)?;
    if o.haproxy_trials > 0 {
        crate::setup::apt(&["haproxy"])?;
    }
    let tools = Tools::build("release")?;
    let dir = std::env::temp_dir().join("scangw-bench-failover");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(io)?;
    eprintln!("bench failover: site and logs in {}", dir.display());
    let site = make_site(tools, &dir)?;
    let started = Instant::now();
    let (mut a, info_a) = site.start("gw-a")?;
    let (_b, info_b) = site.start("gw-b")?;
    let code = site.cli("gw-a", &["pair", "init"])?;
    site.cli("gw-b", &["pair", "join", code.trim()])?;
    wait_in_sync(&site.tools, &site.config, STEP_LIMIT)?;
    let added = site.cli("gw-a", &["device", "add", "bench-mfd"])?;
    let token = serde_json::from_str::<Value>(&added)
        .ok()
        .and_then(|v| v["token"].as_str().map(str::to_owned))
        .ok_or_else(|| format!("`device add` answered no token: {added}"))?;
    std::fs::write(
        dir.join("devices.json"),
        json!([{"name": "bench-mfd", "token": token}]).to_string(),
    )
    .map_err(io)?;
    let mut trust = Vec::new();
    for info in [&info_a, &info_b] {
        let cert = info["certificate"].as_str().unwrap_or_default();
        trust.extend(std::fs::read(cert).map_err(|e| format!("{cert}: {e}"))?);
    }
    std::fs::write(dir.join("trust.pem"), trust).map_err(io)?;
    // The secondary must hold the device (configuration version) first.
    wait_in_sync(&site.tools, &site.config, STEP_LIMIT)?;

    let cpu_before = cpu_jiffies();
    let refused = series(
        &site,
        &mut a,
        Fault::Refused,
        Front::Device,
        o.trials,
        started,
    )?;
    let silent = series(
        &site,
        &mut a,
        Fault::Silent,
        Front::Device,
        o.trials,
        started,
    )?;
    let mut balanced = Vec::new();
    if o.haproxy_trials > 0 {
        for timing in [Timing::Shipped, Timing::Defaults] {
            for fault in [Fault::Refused, Fault::Silent] {
                let front = Front::Haproxy(timing);
                let s = series(&site, &mut a, fault, front, o.haproxy_trials, started)?;
                balanced.push((timing, fault, s));
            }
        }
    }
    let cpu = cpu_jiffies()
        .zip(cpu_before)
        .map(|((b1, t1), (b0, t0))| 100.0 * (b1 - b0) as f64 / (t1 - t0).max(1) as f64);

    report(&o, &refused, &silent, &balanced, cpu, started.elapsed())
}

/// One device run through `trials` faults of one kind.
fn series(
    site: &Site,
    a: &mut Server,
    fault: Fault,
    front: Front,
    trials: u32,
    run_started: Instant,
) -> Result<Series> {
    let label = format!("{}-{}", front.name(), fault.name());
    // What the device (or HAProxy) connects to for gw-a: its HTTPS port,
    // or its PROXY-protocol port behind HAProxy.
    let upstream: SocketAddr = match front {
        Front::Device => format!("127.0.0.1:{}", site.ports[0]),
        Front::Haproxy(_) => format!("127.0.0.1:{}", site.proxy_ports[0]),
    }
    .parse()
    .map_err(io)?;
    let mut proxy = match fault {
        Fault::Silent => Some(FrontProxy::start(
            "127.0.0.1:0".parse().map_err(io)?,
            upstream,
        )?),
        Fault::Refused => None,
    };
    let proxy_addr = proxy.as_ref().map(|p| p.addr);
    let gateway_a = proxy_addr.unwrap_or(upstream);
    let balancer = match front {
        Front::Device => None,
        Front::Haproxy(timing) => Some(Balancer::start(site, timing, gateway_a)?),
    };
    let servers = match &balancer {
        None => vec![
            format!("https://{gateway_a}"),
            format!("https://127.0.0.1:{}", site.ports[1]),
        ],
        Some(lb) => vec![format!("https://127.0.0.1:{}", lb.frontend)],
    };
    let events_path = site.dir.join(format!("{label}-events.jsonl"));
    let mut device = DeviceRun::start(site, &label, &servers, &events_path, trials)?;
    let mut events = Events::new(events_path);
    let mut on_a = Accepted::new(site.dir.join("gw-a.log"));
    let mut on_b = Accepted::new(site.dir.join("gw-b.log"));
    let mut out = Series {
        trials: Vec::new(),
        problems: Vec::new(),
        healthy_ack_ms: Vec::new(),
    };
    let mut restored_us = unix_us();
    for trial in 1..=trials {
        if run_started.elapsed() > RUN_LIMIT {
            out.problems.push(format!(
                "{label}: stopped after {} trials: the run took longer than {} s",
                trial - 1,
                RUN_LIMIT.as_secs()
            ));
            break;
        }
        let deadline = Instant::now() + TRIAL_LIMIT;
        if let Some(lb) = &balancer {
            // HAProxy keeps an open connection on the server it went to:
            // the device's connections to gw-b are shut so that it
            // reconnects, to gw-a now that it is UP.
            lb.wait_up("gw-a", deadline)?;
            lb.api("shutdown sessions server gateway_pair/gw-b")?;
            restored_us = unix_us();
        }
        // The device back on gw-a for a few jobs.
        loop {
            events.poll();
            let back = match front {
                Front::Device => events.acks_on(0, restored_us).count(),
                Front::Haproxy(_) => {
                    on_a.poll();
                    events
                        .acks_on(0, restored_us)
                        .filter(|e| e["job_id"].as_str().is_some_and(|j| on_a.has(j)))
                        .count()
                }
            };
            if back >= JOBS_BEFORE_FAULT {
                break;
            }
            if device.exited() {
                return Err(format!(
                    "{label}: the device's run ended; see {}",
                    device.log.display()
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{label} trial {trial}: the device did not return to gw-a within {} s",
                    TRIAL_LIMIT.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let fault_us = unix_us();
        match (fault, &proxy) {
            (Fault::Refused, _) => a.kill9()?,
            (Fault::Silent, Some(p)) => p.go_silent(),
            (Fault::Silent, None) => unreachable!("a proxy for the silent fault"),
        }
        let mut measured = None;
        while measured.is_none() && Instant::now() < deadline {
            events.poll();
            let first = match front {
                Front::Device => events.acks_on(1, fault_us).next(),
                Front::Haproxy(_) => {
                    on_b.poll();
                    events
                        .acks_on(0, fault_us)
                        .find(|e| e["job_id"].as_str().is_some_and(|j| on_b.has(j)))
                }
            };
            measured = first.map(|e| {
                let at = e["at_unix_us"].as_i64().unwrap_or(fault_us);
                let cause = events
                    .all
                    .iter()
                    .filter(|c| c["event"] == "failover")
                    .find(|c| c["at_unix_us"].as_i64().is_some_and(|t| t >= fault_us))
                    .and_then(|c| c["cause"].as_str())
                    .unwrap_or("none")
                    .to_owned();
                Trial {
                    to_ack: (at - fault_us) as f64 / 1000.0,
                    cause,
                    job_ms: e["ack_ms"].as_f64().unwrap_or(0.0),
                }
            });
            if measured.is_none() {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        match &measured {
            Some(t) => eprintln!(
                "bench failover: {label} trial {trial}: fault → next job acknowledged by gw-b {:.1} ms",
                t.to_ack
            ),
            None => eprintln!("bench failover: {label} trial {trial}: no job acknowledged by gw-b"),
        }
        match measured {
            Some(t) => out.trials.push(t),
            None => out.problems.push(format!(
                "{label} trial {trial}: no job acknowledged by gw-b within the trial's time"
            )),
        }
        // Back to health: gw-a started again, or the proxy passing again.
        match fault {
            Fault::Refused => {
                *a = site.start("gw-a")?.0;
                wait_in_sync(&site.tools, &site.config, STEP_LIMIT)?;
            }
            Fault::Silent => {
                if let Some(p) = proxy.take() {
                    p.shut();
                }
                let addr = proxy_addr.expect("the silent series has a proxy");
                proxy = Some(FrontProxy::start(addr, upstream)?);
            }
        }
        restored_us = unix_us();
    }
    device.stop();
    drop(balancer);
    events.poll();
    if front == Front::Device {
        out.healthy_ack_ms = events
            .acks_on(0, 0)
            .filter_map(|e| e["ack_ms"].as_f64())
            .collect();
    }
    Ok(out)
}

/// The simulated device: `mfd-sim run`, stopped (SIGTERM, then killed)
/// when dropped.
struct DeviceRun {
    child: Option<Child>,
    log: PathBuf,
}

impl DeviceRun {
    fn start(
        site: &Site,
        label: &str,
        servers: &[String],
        events: &Path,
        trials: u32,
    ) -> Result<DeviceRun> {
        let log = site.dir.join(format!("{label}-device.log"));
        let file = std::fs::File::create(&log).map_err(io)?;
        // Bounded by its job count as well as by this bench: a few hundred
        // jobs per trial at most.
        let jobs = (trials as u64 * 500).to_string();
        let mut command = Command::new(site.tools.bin("mfd-sim"));
        command.arg("run");
        for server in servers {
            command.args(["--server", server]);
        }
        let child = command
            .arg("--ca")
            .arg(site.dir.join("trust.pem"))
            .arg("--devices-file")
            .arg(site.dir.join("devices.json"))
            .args([
                "--user",
                "bench",
                "--password",
                "bench",
                "--workflow",
                "bench",
            ])
            .args(["--jobs", &jobs, "--pages", "1"])
            .args(["--page-source", "random", "--page-bytes", "20000"])
            .arg("--outbox")
            .arg(site.dir.join(format!("{label}-outbox")))
            .args(["--jobs-per-session", "5", "--scan-interval-ms", "10"])
            .args([
                "--failback-probe-interval-ms",
                "100",
                "--failback-good-probes",
                "3",
                "--max-attempts",
                "20",
            ])
            .arg("--events")
            .arg(events)
            .args(["--quiet", "--json"])
            .env("MFD_SIM_LOG", "info")
            .stdin(Stdio::null())
            .stdout(file.try_clone().map_err(io)?)
            .stderr(file)
            .spawn()
            .map_err(|e| format!("cannot start mfd-sim: {e}"))?;
        Ok(DeviceRun {
            child: Some(child),
            log,
        })
    }

    fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_none_or(|c| matches!(c.try_wait(), Ok(Some(_))))
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop(&mut child, "-TERM");
        }
    }
}

impl Drop for DeviceRun {
    fn drop(&mut self) {
        self.stop();
    }
}

fn report(
    o: &Options,
    refused: &Series,
    silent: &Series,
    balanced: &[(Timing, Fault, Series)],
    cpu: Option<f64>,
    took: Duration,
) -> Result {
    let figures = |s: &Series| {
        let to_ack: Vec<f64> = s.trials.iter().map(|t| t.to_ack).collect();
        let job: Vec<f64> = s.trials.iter().map(|t| t.job_ms).collect();
        let mut causes = std::collections::BTreeMap::<String, usize>::new();
        for t in &s.trials {
            *causes.entry(t.cause.clone()).or_default() += 1;
        }
        (summary(&to_ack), summary(&job), causes)
    };
    let (r_ack, r_job, r_causes) = figures(refused);
    let (s_ack, s_job, s_causes) = figures(silent);
    let healthy: Vec<f64> = refused
        .healthy_ack_ms
        .iter()
        .chain(&silent.healthy_ack_ms)
        .copied()
        .collect();
    let healthy = summary(&healthy);
    let row = |label: &str, s: &Option<crate::measure::Summary>| match s {
        Some(s) => format!(
            "{label:<58} n={:<5} p50 {:>8.1} ms  p99 {:>8.1} ms  (min {:.1}, max {:.1})",
            s.n, s.p50, s.p99, s.min, s.max
        ),
        None => format!("{label:<58} no samples"),
    };
    println!("bench failover: {} s", took.as_secs());
    println!(
        "{}",
        row("refused (kill -9): fault -> next ack on gw-b", &r_ack)
    );
    println!(
        "{}",
        row(
            "  that job: its scan -> its ack (through the failover)",
            &r_job
        )
    );
    println!("  causes recorded first: {r_causes:?}");
    println!("{}", row("silent drop: fault -> next ack on gw-b", &s_ack));
    println!(
        "{}",
        row(
            "  that job: its scan -> its ack (through the failover)",
            &s_job
        )
    );
    println!("  causes recorded first: {s_causes:?}");
    println!(
        "{}",
        row("baseline: healthy gw-a, scan -> ack of a job", &healthy)
    );
    let through = |timing: Timing, fault: Fault| {
        balanced
            .iter()
            .find(|(t, f, _)| *t == timing && *f == fault)
            .map(|(_, _, s)| s)
    };
    let fault_to_ack = |s: Option<&Series>| {
        s.and_then(|s| summary(&s.trials.iter().map(|t| t.to_ack).collect::<Vec<_>>()))
    };
    for (timing, what) in [
        (Timing::Shipped, "the shipped deploy/haproxy.cfg"),
        (
            Timing::Defaults,
            "deploy/haproxy.cfg with HAProxy's default timing (inter 2s fall 3 rise 2)",
        ),
    ] {
        if o.haproxy_trials == 0 {
            break;
        }
        println!("device behind a real HAProxy, {what}:");
        for fault in [Fault::Refused, Fault::Silent] {
            println!(
                "{}",
                row(
                    &format!("  {}: fault -> next job accepted by gw-b", fault.name()),
                    &fault_to_ack(through(timing, fault))
                )
            );
        }
    }
    let verdict = |s: &Option<crate::measure::Summary>, goal: f64| match s {
        Some(s) if s.p99 < goal => format!("met (p99 {:.1} < {goal:.0} ms)", s.p99),
        Some(s) => format!("missed (p99 {:.1} >= {goal:.0} ms)", s.p99),
        None => "not measured".to_owned(),
    };
    println!(
        "goal refused p99 < {GOAL_REFUSED_MS} ms: {}",
        verdict(&r_ack, GOAL_REFUSED_MS)
    );
    println!(
        "goal silent p99 < {GOAL_SILENT_MS} ms: {}",
        verdict(&s_ack, GOAL_SILENT_MS)
    );
    if let Some(cpu) = cpu {
        println!("CPU busy during the series: {cpu:.0}%");
    }
    let problems: Vec<&String> = refused
        .problems
        .iter()
        .chain(&silent.problems)
        .chain(balanced.iter().flat_map(|(_, _, s)| &s.problems))
        .collect();
    for p in &problems {
        println!("problem: {p}");
    }
    let cell = |s: &Option<crate::measure::Summary>| {
        s.as_ref()
            .map_or("not measured".to_owned(), crate::table::p50_p99)
    };
    for (fault, direct, goal, what) in [
        (
            Fault::Refused,
            &r_ack,
            GOAL_REFUSED_MS,
            "refused (kill -9 of the primary)",
        ),
        (
            Fault::Silent,
            &s_ack,
            GOAL_SILENT_MS,
            "silent drop (the primary's packets dropped)",
        ),
    ] {
        let defaults = fault_to_ack(through(Timing::Defaults, fault));
        let shipped = fault_to_ack(through(Timing::Shipped, fault));
        let baseline = if o.haproxy_trials == 0 {
            "not measured (--haproxy-trials 0)".to_owned()
        } else {
            format!(
                "device behind a real HAProxy with default check timing (deploy/haproxy.cfg with inter 2s fall 3 rise 2), same fault: {}",
                cell(&defaults)
            )
        };
        let p50 = |s: &Option<crate::measure::Summary>| s.as_ref().map_or(f64::NAN, |s| s.p50);
        crate::table::row(
            format!(
                "device failover, {what}: fault → next job acknowledged by the secondary; the device's own failover client (both addresses); goal p99 < {goal:.0} ms"
            ),
            cell(direct),
            baseline.clone(),
            crate::table::ratio(p50(direct), p50(&defaults)),
        );
        if o.haproxy_trials > 0 {
            crate::table::row(
                format!(
                    "device failover, {what}: the same through a real HAProxy with the shipped deploy/haproxy.cfg (inter 200 ms, fall 3; one address)"
                ),
                cell(&shipped),
                baseline,
                crate::table::ratio(p50(&shipped), p50(&defaults)),
            );
        }
    }
    if o.json {
        let js = |s: &Option<crate::measure::Summary>| {
            s.as_ref().map(|s| json!({"n": s.n, "p50_ms": s.p50, "p99_ms": s.p99, "min_ms": s.min, "max_ms": s.max}))
        };
        println!(
            "{}",
            json!({
                "refused": {"fault_to_ack": js(&r_ack), "job": js(&r_job), "causes": r_causes},
                "silent": {"fault_to_ack": js(&s_ack), "job": js(&s_job), "causes": s_causes},
                "healthy_ack": js(&healthy),
                "haproxy": balanced.iter().map(|(t, f, s)| json!({
                    "timing": t.name(),
                    "fault": f.name(),
                    "fault_to_ack": js(&fault_to_ack(Some(s))),
                })).collect::<Vec<_>>(),
                "cpu_busy_percent": cpu,
                "problems": problems,
            })
        );
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err("some trials failed; see the problems above".into())
    }
}
