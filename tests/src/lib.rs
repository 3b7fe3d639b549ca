//! Harness for the end-to-end tests: real `gateway` processes on loopback
//! ports chosen by the OS, a configuration file per test, licenses from a
//! vendor key made for the test, and a small raw HTTP client for the plain
//! loopback listener (so malformed requests can be sent exactly as written).
//! Each instance's output goes to a log file that is printed when a test
//! fails.
//!
//! The binaries must be built first (`cargo build --workspace --bins`, which
//! `cargo xtask test` does).

pub mod browser;
pub mod fault;
pub mod http;
pub mod pair;
pub mod scenario;
pub mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use licensing::{KeySpec, Role, VendorKeyPair};
use serde_json::Value;

pub use http::{Response, request};

/// The password of the test user `alice` (and `bob`).
pub const PASSWORD: &str = "correct horse";

/// A free loopback port, for a server that must be told its address
/// before it starts (the port may be taken again by then; rarely). It is
/// chosen below the kernel's ephemeral range, so an outgoing connection of
/// a test (or one left in TIME_WAIT) never holds a port a server is told
/// to listen on, as a port the kernel hands out for `:0` can be.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static TURN: AtomicU64 = AtomicU64::new(0);
    let ephemeral_from = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    const LOWEST: u32 = 10_000;
    if ephemeral_from > LOWEST + 1_000 {
        let span = u64::from(ephemeral_from - LOWEST);
        let seed = u64::from(std::process::id()).wrapping_mul(0x9e37_79b9_7f4a_7c15)
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
        for _ in 0..64 {
            let turn = TURN.fetch_add(1, Ordering::Relaxed);
            let mixed = (seed ^ turn.wrapping_mul(0xbf58_476d_1ce4_e5b9))
                .wrapping_mul(0x94d0_49bb_1331_11eb);
            let port = (u64::from(LOWEST) + (mixed >> 17) % span) as u16;
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// Path of a workspace binary, built by `cargo build --workspace --bins`.
pub fn bin(name: &str) -> PathBuf {
    // Test executables live in target/<profile>/deps; the binaries one up.
    // A workspace binary that uses this library (`cargo xtask soak`, in
    // target/<profile>) finds them beside itself.
    let exe = std::env::current_exe().expect("test executable path");
    let beside = exe.parent().map(|d| d.join(name));
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let path = match beside {
        Some(p) if p.is_file() && exe.parent().is_some_and(|d| !d.ends_with("deps")) => p,
        _ => dir.join(name),
    };
    assert!(
        path.exists(),
        "{} is missing: build the binaries first with `cargo build --workspace --bins` (cargo xtask test does)",
        path.display()
    );
    path
}

/// A vendor key pair made for one test; it signs the test's licenses.
pub struct Vendor {
    pair: VendorKeyPair,
}

impl Default for Vendor {
    fn default() -> Self {
        Self::new()
    }
}

impl Vendor {
    pub fn new() -> Vendor {
        Vendor {
            pair: VendorKeyPair::generate().expect("vendor key").0,
        }
    }

    pub fn public_text(&self) -> String {
        self.pair.public_key().to_text()
    }

    /// A license key for `role` ("03" or "04").
    pub fn key(&self, role: &str, serial: u32, seats: u16) -> String {
        let role = if role == "03" {
            Role::Primary
        } else {
            Role::Secondary
        };
        self.pair
            .issue(&KeySpec {
                role,
                serial,
                seats,
                expires: None,
            })
            .expect("issue key")
    }
}

/// Hashes a password with the gateway's own command (few iterations, for speed).
pub fn password_hash(password: &str) -> String {
    let mut child = Command::new(bin("gateway"))
        .args(["user", "hash-password", "--iterations", "10000"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("gateway user hash-password");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), password.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A test site: a temporary directory with one configuration file for one or
/// more instances.
pub struct Site {
    pub dir: tempfile::TempDir,
    pub vendor: Vendor,
    pub config: PathBuf,
}

/// Workflow used by most intake tests: assemble the pages and put the PDF in
/// the instance's own folder.
pub const FOLDER_WORKFLOW: &str = r#"
[workflows.scan-to-folder]
steps = [ { plugin = "assemble" }, { plugin = "folder", root = "{data_dir}/delivered" } ]
"#;

impl Site {
    /// A site whose file has users alice and bob, the folder workflow, the
    /// given instances (each on `127.0.0.1:0` for HTTPS and plain HTTP) and
    /// `extra` TOML appended.
    pub fn new(instances: &[&str], extra: &str) -> Site {
        let dir = tempfile::Builder::new()
            .prefix("sgw-")
            .tempdir()
            .expect("temp dir");
        let vendor = Vendor::new();
        let hash = password_hash(PASSWORD);
        let mut text = format!(
            "[licensing]\ntrusted_vendor_keys = [\"{}\"]\n\n[users.alice]\npassword_hash = \"{hash}\"\n\n[users.bob]\npassword_hash = \"{hash}\"\n{FOLDER_WORKFLOW}\n[defaults]\ndata_dir = \"{{instance}}\"\nlisten = \"127.0.0.1:0\"\nlisten_plain = \"127.0.0.1:0\"\n",
            vendor.public_text()
        );
        for name in instances {
            text += &format!("\n[instances.{name}]\n");
        }
        text += extra;
        let config = dir.path().join("gateway.toml");
        std::fs::write(&config, text).unwrap();
        Site {
            dir,
            vendor,
            config,
        }
    }

    /// Runs the gateway command line for `instance`.
    pub fn cli(&self, instance: &str, args: &[&str]) -> Output {
        Command::new(bin("gateway"))
            .arg("--config")
            .arg(&self.config)
            .args(["--instance", instance])
            .args(args)
            .output()
            .expect("run gateway")
    }

    /// Runs the command line and insists it succeeds; returns stdout.
    pub fn cli_ok(&self, instance: &str, args: &[&str]) -> String {
        let out = self.cli(instance, args);
        assert!(
            out.status.success(),
            "gateway {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Activates a license on `instance` (offline or online).
    pub fn activate(&self, instance: &str, role: &str, serial: u32, seats: u16) {
        let key = self.vendor.key(role, serial, seats);
        self.cli_ok(instance, &["license", "activate", &key]);
    }

    /// Adds an approved device; returns its token.
    pub fn add_device(&self, instance: &str, name: &str) -> String {
        let out = self.cli_ok(instance, &["device", "add", name]);
        let v: Value = serde_json::from_str(&out).unwrap();
        v["token"].as_str().unwrap().to_owned()
    }

    pub fn data_dir(&self, instance: &str) -> PathBuf {
        self.dir.path().join(instance)
    }

    /// Starts `instance` and waits until it listens.
    pub fn start(&self, instance: &str) -> Instance {
        Instance::start(self, instance, &[])
    }

    /// Starts `instance` with extra environment variables.
    pub fn start_with(&self, instance: &str, env: &[(&str, &str)]) -> Instance {
        Instance::start(self, instance, env)
    }
}

/// A running `gateway serve` process.
pub struct Instance {
    pub name: String,
    child: Option<Child>,
    pub config: PathBuf,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    pub info: Value,
}

impl Instance {
    fn start(site: &Site, name: &str, env: &[(&str, &str)]) -> Instance {
        let data_dir = site.data_dir(name);
        let run_file = data_dir.join(format!("{name}.run.json"));
        let _ = std::fs::remove_file(&run_file);
        let log = site
            .dir
            .path()
            .join(format!("{name}.{}.log", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Command::new(bin("gateway"))
            .arg("--config")
            .arg(&site.config)
            .args(["--instance", name, "serve"])
            .env("SCANGW_LOG_LEVEL", "info")
            .envs(env.iter().copied())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("start gateway");
        let mut instance = Instance {
            name: name.to_owned(),
            child: Some(child),
            config: site.config.clone(),
            data_dir,
            log,
            info: Value::Null,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(text) = std::fs::read_to_string(&run_file)
                && let Ok(v) = serde_json::from_str::<Value>(&text)
            {
                instance.info = v;
                break;
            }
            if let Some(status) = instance.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "{name} exited at start-up ({status}):\n{}",
                    instance.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{name} did not start in 30 s:\n{}",
                instance.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        instance
    }

    fn listener(&self, kind: &str) -> String {
        self.info["listeners"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["kind"] == kind)
            .unwrap_or_else(|| panic!("{} has no {kind} listener", self.name))["addr"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// `127.0.0.1:port` of the plain HTTP listener.
    pub fn plain(&self) -> String {
        self.listener("plain")
    }

    /// `127.0.0.1:port` of the HTTPS listener.
    pub fn https(&self) -> String {
        self.listener("https")
    }

    /// `127.0.0.1:port` of the PROXY-protocol HTTPS listener.
    pub fn proxy(&self) -> String {
        self.listener("proxy-https")
    }

    /// The self-signed certificate devices must trust.
    pub fn certificate(&self) -> PathBuf {
        PathBuf::from(self.info["certificate"].as_str().unwrap())
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// `GET /health` on the plain listener.
    pub fn health(&self) -> (u16, Value) {
        let r = request(&self.plain(), "GET", "/health", &[], b"");
        (r.status, r.json())
    }

    /// Kills the process with SIGKILL, as a crash or power loss would.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the process (SIGSTOP), as a stalled server or a paused VM:
    /// it keeps its sockets and its state and does nothing.
    pub fn sigstop(&self) {
        self.signal("-STOP");
    }

    /// Lets a frozen process run again (SIGCONT).
    pub fn sigcont(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, which: &str) {
        let pid = self.pid().to_string();
        let ok = Command::new("kill").args([which, &pid]).status().unwrap();
        assert!(ok.success(), "kill {which} {pid} failed");
    }

    /// Stops the process with SIGTERM and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(40);
            while child.try_wait().unwrap().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log has a line containing `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(f) = std::fs::File::open(&self.log)
                && BufReader::new(f)
                    .lines()
                    .map_while(Result::ok)
                    .any(|l| l.contains(needle))
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            let text = self.log_text();
            let tail: Vec<&str> = text.lines().rev().take(60).collect();
            eprintln!("---- last log lines of {} ----", self.name);
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// Polls `f` until it returns `Some` or the time is up.
pub fn eventually<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
