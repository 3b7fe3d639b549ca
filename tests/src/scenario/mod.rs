//! The fault scenarios' world: a paired site of two real `gateway`
//! processes, each reachable by the devices only through a fault proxy of
//! its own and by its peer only through another; simulated devices (the
//! `mfd-sim` binary: the real failover client and its durable outbox)
//! submitting throughout; a pipeline delivering to a shared folder, a mail
//! sink and a webhook sink; and the faults a scenario injects — kill -9,
//! SIGSTOP/SIGCONT, clean stop, the data service stopped, maintenance, a
//! spool made unwritable, a full disk, blackholes and partitions, promotion,
//! time zones. Every random choice comes from one printed seed. It owns no
//! verdict: [`check`] decides whether the claims held.

pub mod check;
pub mod devices;
pub mod rng;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::fault::{FaultProxy, Mode};
use crate::pair::PairLinkProxies;
use crate::support::{SmtpSink, WebhookReceiver};
use crate::{Instance, Site, Vendor, bin, eventually, free_port, password_hash};

pub use check::{CheckReport, Evidence};
pub use devices::{DeviceRun, RunSpec};
pub use rng::{Rng, SEED_ENV, seed_from_env};

/// The two servers, by index: 0 is `gw-a` (activated `03`), 1 is `gw-b`
/// (`04`).
pub const SERVERS: [&str; 2] = ["gw-a", "gw-b"];

/// The workflow without OCR: assembly and the three deliveries.
pub const WORKFLOW: &str = "faults";
/// The same with OCR first.
pub const OCR_WORKFLOW: &str = "faults-ocr";

/// The user every simulated person logs in as.
const USER: &str = "alice";
const PASSWORD: &str = crate::PASSWORD;
const HOOK_SECRET: &str = "0123456789abcdef0123456789abcdef";
/// The pair's heartbeat timing (the defaults, written out).
pub const HEARTBEAT_MS: u64 = 100;
pub const DEAD_THRESHOLD_MS: u64 = 600;

/// How a scenario's site is built.
#[derive(Clone, Debug)]
pub struct Options {
    /// Simulated devices.
    pub devices: usize,
    /// Size of a small tmpfs to mount as gw-a's data directory (for the
    /// full-disk and unwritable-spool faults), in MiB.
    pub tmpfs_a_mib: Option<u64>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            devices: 4,
            tmpfs_a_mib: None,
        }
    }
}

/// The three destinations both servers deliver to.
pub struct Sinks {
    /// Runs the webhook receiver.
    _runtime: tokio::runtime::Runtime,
    pub smtp: SmtpSink,
    pub hook: WebhookReceiver,
    /// The folder both servers write (a shared mount, in production).
    pub shared: tempfile::TempDir,
}

impl Sinks {
    fn start() -> Sinks {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("tokio runtime for the webhook sink");
        let hook = runtime.block_on(WebhookReceiver::start(Vec::new()));
        Sinks {
            _runtime: runtime,
            smtp: SmtpSink::start(),
            hook,
            shared: tempfile::Builder::new()
                .prefix("sgw-shared-")
                .tempdir()
                .expect("shared folder"),
        }
    }
}

/// The ports of one server, fixed so that a restarted server is found at
/// its old addresses.
#[derive(Clone, Copy, Debug)]
struct Ports {
    https: u16,
    plain: u16,
    pair: u16,
}

/// What the watcher saw while the scenario ran.
#[derive(Default, Debug)]
pub struct Watch {
    /// Moments both servers said `primary` while each heard the other LIVE.
    pub two_primaries: Vec<String>,
    /// Health samples taken.
    pub samples: u64,
}

/// A paired site under faults.
pub struct Scenario {
    pub name: String,
    pub seed: u64,
    pub rng: Rng,
    pub site: Site,
    /// The running servers by index; `None` while stopped or killed.
    pub servers: [Option<Instance>; 2],
    /// In front of each server's HTTPS port: the devices' only way in.
    pub to_server: [FaultProxy; 2],
    /// In front of each server's pair port.
    pub link: PairLinkProxies,
    pub sinks: Sinks,
    /// Device name and token.
    pub devices: Vec<(String, String)>,
    pub devices_file: PathBuf,
    /// Both servers' certificates.
    pub trust: PathBuf,
    pub outbox: PathBuf,
    /// Device runs so far (running or finished).
    pub runs: Vec<DeviceRun>,
    /// Faults injected, by kind.
    pub faults: BTreeMap<String, u64>,
    /// What happened when, for the failure report.
    pub timeline: Arc<Mutex<Vec<String>>>,
    /// (epoch, version) → configuration checksums seen under it.
    pub stamps: BTreeMap<(String, u64), BTreeMap<String, String>>,
    pub watch: Arc<Mutex<Watch>>,
    watching: Arc<AtomicBool>,
    watcher: Option<std::thread::JoinHandle<()>>,
    ports: [Ports; 2],
    /// gw-a's data directory, when it is a tmpfs mount.
    tmpfs: Option<PathBuf>,
    /// Read-only bind mounts made over a spool, undone on drop.
    ro_mounts: Vec<PathBuf>,
    /// Filler files that make a disk full, removed on drop.
    fillers: Vec<PathBuf>,
    /// Time zones written into the file, per server.
    time_zones: [String; 2],
    started: Instant,
    vendor_key_serial: u32,
    /// The password hash written into the file (kept, so that rewriting
    /// the file changes only what a scenario changes).
    hash: String,
}

impl Scenario {
    /// Builds and pairs the site, registers the devices on the primary and
    /// waits until both servers hold the same configuration. Prints the
    /// seed first.
    pub fn start(name: &str, seed: u64, options: Options) -> Scenario {
        eprintln!("scenario {name}: seed {seed} (rerun with {SEED_ENV}={seed})");
        let sinks = Sinks::start();
        let dir = tempfile::Builder::new()
            .prefix("sgw-faults-")
            .tempdir()
            .expect("temp dir");
        let vendor = Vendor::new();
        let ports = [0, 1].map(|_| Ports {
            https: free_port(),
            plain: free_port(),
            pair: free_port(),
        });
        let local = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        let link = PairLinkProxies {
            to_a: FaultProxy::start(local(ports[0].pair)),
            to_b: FaultProxy::start(local(ports[1].pair)),
        };
        let to_server = [
            FaultProxy::start(local(ports[0].https)),
            FaultProxy::start(local(ports[1].https)),
        ];
        let config = dir.path().join("gateway.toml");
        let site = Site {
            dir,
            vendor,
            config,
        };
        let zone = "UTC".to_owned();
        let mut s = Scenario {
            name: name.to_owned(),
            seed,
            rng: Rng::new(seed),
            outbox: site.dir.path().join("outbox"),
            devices_file: site.dir.path().join("devices.json"),
            trust: site.dir.path().join("trust.pem"),
            site,
            servers: [None, None],
            to_server,
            link,
            sinks,
            devices: Vec::new(),
            runs: Vec::new(),
            faults: BTreeMap::new(),
            timeline: Arc::new(Mutex::new(Vec::new())),
            stamps: BTreeMap::new(),
            watch: Arc::new(Mutex::new(Watch::default())),
            watching: Arc::new(AtomicBool::new(true)),
            watcher: None,
            ports,
            tmpfs: None,
            ro_mounts: Vec::new(),
            fillers: Vec::new(),
            time_zones: [zone.clone(), zone],
            started: Instant::now(),
            vendor_key_serial: 10,
            hash: password_hash(PASSWORD),
        };
        s.write_config();
        if let Some(mib) = options.tmpfs_a_mib {
            s.mount_tmpfs_a(mib);
        }
        s.site.activate("gw-a", "03", 1, 200);
        s.site.activate("gw-b", "04", 2, 200);
        let a = s.site.start("gw-a");
        let b = s.site.start("gw-b");
        crate::pair::pair(&s.site, &a, &b);
        s.servers = [Some(a), Some(b)];
        crate::pair::wait_in_sync(&s.site, "gw-a", "gw-b", Duration::from_secs(30));
        for i in 1..=options.devices {
            let name = format!("mfd-{i:02}");
            let token = s.site.add_device("gw-a", &name);
            s.devices.push((name, token));
        }
        crate::pair::wait_in_sync(&s.site, "gw-a", "gw-b", Duration::from_secs(30));
        let list: Vec<Value> = s
            .devices
            .iter()
            .map(|(n, t)| json!({"name": n, "token": t}))
            .collect();
        std::fs::write(&s.devices_file, serde_json::to_vec(&list).unwrap()).unwrap();
        let mut pem = Vec::new();
        for gw in s.servers.iter().flatten() {
            pem.extend(std::fs::read(gw.certificate()).expect("server certificate"));
        }
        std::fs::write(&s.trust, pem).unwrap();
        s.start_watcher();
        s.sample_config();
        s.note("paired; devices registered on both");
        s
    }

    /// The configuration file: both instances, fixed ports, the pair link
    /// through the proxies, the two workflows, the time zones.
    fn write_config(&self) {
        let hash = &self.hash;
        let shared = self.sinks.shared.path().display();
        let deliveries = format!(
            r#"  {{ plugin = "folder", root = "{shared}", name = "{{job_id}}.pdf" }},
  {{ plugin = "mail", host = "127.0.0.1", port = {port}, tls = "none", from = "scanner@example.test", to = ["archive@example.test"] }},
  {{ plugin = "webhook", url = "{url}", secret = "{HOOK_SECRET}" }},"#,
            port = self.sinks.smtp.port,
            url = self.sinks.hook.url()
        );
        let mut text = format!(
            r#"[licensing]
trusted_vendor_keys = ["{vendor}"]

[users.{USER}]
password_hash = "{hash}"

[workflows.{WORKFLOW}]
steps = [
  {{ plugin = "assemble" }},
{deliveries}
]

[workflows.{OCR_WORKFLOW}]
steps = [
  {{ plugin = "ocr", languages = ["eng"] }},
  {{ plugin = "assemble" }},
{deliveries}
]

[defaults]
data_dir = "{{instance}}"
maintenance_retry_after_secs = 1

[defaults.pair]
heartbeat_interval_ms = {HEARTBEAT_MS}
dead_threshold_ms = {DEAD_THRESHOLD_MS}
replication_period_secs = 1
"#,
            vendor = self.site.vendor.public_text(),
        );
        let peer_proxy = [self.link.to_b.addr(), self.link.to_a.addr()];
        for (i, name) in SERVERS.iter().enumerate() {
            let p = self.ports[i];
            text += &format!(
                "\n[instances.{name}]\nlisten = \"127.0.0.1:{}\"\nlisten_plain = \"127.0.0.1:{}\"\ntime_zone = \"{}\"\n\
                 \n[instances.{name}.pair]\nlisten = \"127.0.0.1:{}\"\npeer = \"{}\"\n",
                p.https, p.plain, self.time_zones[i], p.pair, peer_proxy[i]
            );
        }
        std::fs::write(&self.site.config, text).expect("write the configuration file");
    }

    /// Records a line of the timeline (also printed, so a failing run
    /// shows what led to it).
    pub fn note(&self, what: &str) {
        let line = format!("{:>8.1}s  {what}", self.started.elapsed().as_secs_f64());
        eprintln!("[{}] {line}", self.name);
        self.timeline.lock().unwrap().push(line);
    }

    fn count(&mut self, kind: &str) {
        *self.faults.entry(kind.to_owned()).or_default() += 1;
    }

    pub fn server(&self, i: usize) -> &Instance {
        self.servers[i]
            .as_ref()
            .unwrap_or_else(|| panic!("{} is not running", SERVERS[i]))
    }

    /// `127.0.0.1:port` of server `i`'s plain listener (fixed).
    pub fn plain(&self, i: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ports[i].plain))
    }

    /// The devices' server list, primary first: through the proxies.
    pub fn device_urls(&self) -> Vec<String> {
        self.to_server
            .iter()
            .map(|p| format!("https://{}", p.addr()))
            .collect()
    }

    // ---- devices ----

    /// Starts a device run in the background.
    pub fn start_devices(&mut self, spec: RunSpec) -> usize {
        let index = self.runs.len();
        let run = DeviceRun::start(self, index, spec);
        self.note(&format!(
            "device run {index}: {} jobs on {} devices ({})",
            spec.jobs,
            self.devices.len(),
            spec.workflow
        ));
        self.runs.push(run);
        index
    }

    /// Waits for device run `index` to finish (bounded).
    pub fn wait_devices(&mut self, index: usize, within: Duration) {
        let finished = self.runs[index].wait(within);
        self.note(&format!("device run {index} finished: {finished}"));
    }

    /// Waits until device run `index` has had `n` jobs acknowledged (or it
    /// ended, or the time is up).
    pub fn wait_acknowledged(&mut self, index: usize, n: usize, within: Duration) -> usize {
        let deadline = Instant::now() + within;
        loop {
            let acked = self.runs[index].acknowledged_so_far();
            if acked >= n || Instant::now() > deadline || !self.runs[index].running() {
                return acked;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// kill -9 of a device run's process (its outbox stays on disk).
    pub fn kill_devices(&mut self, index: usize) {
        self.runs[index].kill9();
        self.count("device_kill9");
        self.note(&format!("device run {index} killed with kill -9"));
    }

    // ---- process faults ----

    /// kill -9 of server `i`.
    pub fn kill9(&mut self, i: usize) {
        if let Some(gw) = self.servers[i].as_mut() {
            gw.kill9();
        }
        self.servers[i] = None;
        self.count("kill9");
        self.note(&format!("{} killed with kill -9", SERVERS[i]));
    }

    /// Starts server `i` again at its old addresses.
    pub fn restart(&mut self, i: usize) {
        assert!(self.servers[i].is_none(), "{} is running", SERVERS[i]);
        let gw = self.site.start(SERVERS[i]);
        self.servers[i] = Some(gw);
        self.note(&format!("{} started again", SERVERS[i]));
    }

    /// A clean stop (SIGTERM) of server `i`.
    pub fn stop(&mut self, i: usize) {
        if let Some(gw) = self.servers[i].as_mut() {
            gw.stop();
        }
        self.servers[i] = None;
        self.count("clean_stop");
        self.note(&format!("{} stopped cleanly", SERVERS[i]));
    }

    /// SIGSTOP of server `i` for `pause` (longer than the DEAD threshold
    /// when the scenario wants a takeover), then SIGCONT.
    pub fn freeze(&mut self, i: usize, pause: Duration) {
        self.server(i).sigstop();
        self.count("sigstop");
        self.note(&format!("{} frozen (SIGSTOP) for {pause:?}", SERVERS[i]));
        std::thread::sleep(pause);
        self.server(i).sigcont();
        self.note(&format!("{} thawed (SIGCONT)", SERVERS[i]));
    }

    /// Runs the command line of server `i`, bounded in time (a frozen
    /// server never answers). `None` when it did not finish in time.
    pub fn cli(&self, i: usize, args: &[&str], within: Duration) -> Option<Output> {
        let mut child = Command::new(bin("gateway"))
            .arg("--config")
            .arg(&self.site.config)
            .args(["--instance", SERVERS[i]])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run gateway");
        // Both pipes are drained while the command runs: an answer larger
        // than a pipe's buffer must not block the command's exit.
        let drain = |pipe: Option<Box<dyn Read + Send>>| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                if let Some(mut p) = pipe {
                    let _ = p.read_to_end(&mut buf);
                }
                buf
            })
        };
        let stdout = drain(
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        );
        let stderr = drain(
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        );
        let deadline = Instant::now() + within;
        let status = loop {
            if let Ok(Some(status)) = child.try_wait() {
                break Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let (stdout, stderr) = (
            stdout.join().unwrap_or_default(),
            stderr.join().unwrap_or_default(),
        );
        status.map(|status| Output {
            status,
            stdout,
            stderr,
        })
    }

    /// The command line of server `i`, which must succeed; stdout.
    pub fn cli_ok(&self, i: usize, args: &[&str]) -> String {
        let out = self
            .cli(i, args, Duration::from_secs(60))
            .unwrap_or_else(|| panic!("gateway {args:?} on {} hung for 60 s", SERVERS[i]));
        assert!(
            out.status.success(),
            "gateway {args:?} on {} failed: {}{}",
            SERVERS[i],
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Maintenance of server `i` on or off.
    pub fn maintenance(&mut self, i: usize, on: bool) {
        self.cli_ok(i, &["maintenance", if on { "on" } else { "off" }]);
        if on {
            self.count("maintenance");
        }
        self.note(&format!(
            "{} maintenance {}",
            SERVERS[i],
            if on { "on" } else { "off" }
        ));
    }

    /// The data service of server `i` stopped or started.
    pub fn data_service(&mut self, i: usize, up: bool) {
        self.cli_ok(i, &["service", if up { "start" } else { "stop" }, "data"]);
        if !up {
            self.count("data_service_stopped");
        }
        self.note(&format!(
            "{} data service {}",
            SERVERS[i],
            if up { "started" } else { "stopped" }
        ));
    }

    // ---- network faults ----

    /// The devices' path to server `i`: `Mode::Pass`, `Blackhole`, ...
    pub fn device_path(&mut self, i: usize, mode: Mode) {
        self.to_server[i].set_mode(mode);
        if mode != Mode::Pass {
            self.to_server[i].cut();
            self.count(&format!("device_path_{}", mode_name(mode)));
        }
        self.note(&format!("devices → {}: {mode:?}", SERVERS[i]));
    }

    /// The pair link cut both ways while both servers stay up.
    pub fn partition(&mut self) {
        self.link.partition();
        self.count("partition");
        self.note("pair link partitioned");
    }

    pub fn heal(&mut self) {
        self.link.heal();
        self.note("pair link healed");
    }

    // ---- administration ----

    /// A configuration change made on server `i` (registering a device
    /// nobody uses); `None` when the server refused it (read-only, fenced)
    /// or did not answer.
    pub fn config_change(&mut self, i: usize) -> Option<String> {
        let name = format!("cfg-{}-{}", SERVERS[i], self.rng.range(0, u64::MAX >> 1));
        let out = self.cli(i, &["device", "add", &name], Duration::from_secs(30))?;
        let ok = out.status.success();
        self.note(&format!(
            "configuration change on {}: device add {name} → {}",
            SERVERS[i],
            if ok {
                "made".to_owned()
            } else {
                String::from_utf8_lossy(&out.stderr).trim().to_owned()
            }
        ));
        ok.then_some(name)
    }

    /// Promotes server `i` (a secondary) with an `03` key, in one step.
    pub fn promote(&mut self, i: usize) {
        self.vendor_key_serial += 1;
        let key = self.site.vendor.key("03", self.vendor_key_serial, 200);
        self.cli_ok(i, &["license", "promote", &key]);
        self.count("promotion");
        self.note(&format!("{} promoted with an 03 key", SERVERS[i]));
    }

    /// A fenced former primary rejoins as secondary, as operations.md
    /// says: its license released, then an `04` key activated.
    pub fn rejoin_as_secondary(&mut self, i: usize) {
        self.vendor_key_serial += 1;
        let key = self.site.vendor.key("04", self.vendor_key_serial, 200);
        self.cli_ok(i, &["license", "deactivate"]);
        self.cli_ok(i, &["license", "activate", &key]);
        self.note(&format!(
            "{} rejoined as secondary with an 04 key",
            SERVERS[i]
        ));
    }

    /// Server `i` gets time zone `zone` in the file and is restarted with
    /// it (a clean stop, then a start).
    pub fn set_time_zone(&mut self, i: usize, zone: &str) {
        self.time_zones[i] = zone.to_owned();
        self.write_config();
        if self.servers[i].is_some() {
            self.stop(i);
        }
        self.restart(i);
        self.count("time_zone_change");
        self.note(&format!("{} now runs with time zone {zone}", SERVERS[i]));
    }

    // ---- disk faults ----

    /// Mounts a small tmpfs as gw-a's data directory (before its first
    /// start). We run as root; when the mount fails the scenario fails
    /// saying so: the fault it needs cannot be made here.
    fn mount_tmpfs_a(&mut self, mib: u64) {
        let dir = self.site.data_dir("gw-a");
        std::fs::create_dir_all(&dir).unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={mib}m,mode=0700"),
                "tmpfs",
            ])
            .arg(&dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "this scenario needs a small tmpfs for gw-a's data directory and could not mount \
             one (it must run as root, with mount(8)): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.tmpfs = Some(dir);
    }

    /// Fills gw-a's tmpfs data directory until writes fail with ENOSPC.
    pub fn fill_disk_a(&mut self) {
        let dir = self
            .tmpfs
            .clone()
            .expect("gw-a's data directory is a tmpfs");
        let filler = dir.join("filler.bin");
        let mut file = std::fs::File::create(&filler).expect("filler file");
        let chunk = vec![0u8; 1 << 20];
        while file.write_all(&chunk).is_ok() {}
        // The last partial chunk, byte by byte down to the block.
        let _ = file.write_all(&chunk[..4096]);
        let _ = file.sync_all();
        self.fillers.push(filler);
        self.count("disk_full");
        self.note("gw-a's disk is full");
    }

    /// Frees gw-a's disk again.
    pub fn free_disk_a(&mut self) {
        for f in self.fillers.drain(..) {
            let _ = std::fs::remove_file(&f);
        }
        self.note("gw-a's disk has room again");
    }

    /// Makes gw-a's spool read-only (a read-only bind mount over it: root
    /// ignores permission bits, a read-only mount it cannot). Fails the
    /// scenario when the mount cannot be made.
    pub fn spool_unwritable_a(&mut self) {
        if let Err(e) = self.try_spool_unwritable_a() {
            panic!("{e}");
        }
    }

    /// As [`Scenario::spool_unwritable_a`], saying why when the mount
    /// could not be made (the kernel refuses a read-only remount while a
    /// file under it is open for writing; tried for a few seconds). Nothing
    /// is left mounted then.
    pub fn try_spool_unwritable_a(&mut self) -> Result<(), String> {
        let spool = self.site.data_dir("gw-a").join("gw-a-spool");
        if !spool.is_dir() {
            return Err(format!("no spool at {}", spool.display()));
        }
        mount(&["--bind"], &spool, &spool)?;
        self.ro_mounts.push(spool.clone());
        let mut last = String::new();
        for _ in 0..30 {
            match mount(&["-o", "remount,bind,ro"], &spool, Path::new("")) {
                Ok(()) => {
                    self.count("spool_unwritable");
                    self.note("gw-a's spool is read-only");
                    return Ok(());
                }
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.spool_writable_a();
        Err(last)
    }

    pub fn spool_writable_a(&mut self) {
        for m in self.ro_mounts.drain(..) {
            let out = Command::new("umount").arg(&m).output().expect("umount");
            assert!(
                out.status.success(),
                "umount {}: {}",
                m.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        self.note("gw-a's spool is writable again");
    }

    // ---- observation ----

    /// Samples both servers' configuration stamp and checksum, to prove
    /// that no (epoch, version) ever named two configurations.
    pub fn sample_config(&mut self) {
        for (i, name) in SERVERS.iter().enumerate() {
            if self.servers[i].is_none() {
                continue;
            }
            if let Some((epoch, version, sum)) = self.config_stamp(i) {
                self.stamps
                    .entry((epoch, version))
                    .or_default()
                    .insert(sum, (*name).to_owned());
            }
        }
    }

    /// (epoch, version, checksum) of the configuration server `i` holds,
    /// all three from one `config export` (its first line names the
    /// version and the epoch of the primary that wrote it).
    pub fn config_stamp(&self, i: usize) -> Option<(String, u64, String)> {
        let out = self.cli(i, &["config", "export"], Duration::from_secs(15))?;
        if !out.status.success() {
            return None;
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let (version, epoch) = export_stamp(&text)?;
        Some((epoch, version, checksum(&out.stdout)))
    }

    fn start_watcher(&mut self) {
        let plains = [self.plain(0), self.plain(1)];
        let (watch, on) = (self.watch.clone(), self.watching.clone());
        let timeline = self.timeline.clone();
        let started = self.started;
        self.watcher = Some(std::thread::spawn(move || {
            while on.load(Ordering::Relaxed) {
                let [a, b] = plains.map(health);
                if let (Some(a), Some(b)) = (&a, &b) {
                    let primary = |h: &Value| h["role"] == "primary";
                    let live = |h: &Value| h["pair"] == "live";
                    let mut w = watch.lock().unwrap();
                    w.samples += 1;
                    if primary(a) && primary(b) && live(a) && live(b) {
                        let line = format!(
                            "{:.1}s: both primary and LIVE: gw-a {a} / gw-b {b}",
                            started.elapsed().as_secs_f64()
                        );
                        timeline.lock().unwrap().push(line.clone());
                        w.two_primaries.push(line);
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }));
    }

    /// Every server running, every path passing, the pair LIVE and in
    /// sync: the end of every scenario, before the check.
    pub fn heal_everything(&mut self) {
        if !self.ro_mounts.is_empty() {
            self.spool_writable_a();
        }
        if !self.fillers.is_empty() {
            self.free_disk_a();
        }
        for i in 0..2 {
            self.to_server[i].set_mode(Mode::Pass);
        }
        self.link.heal();
        for i in 0..2 {
            if self.servers[i].is_none() {
                self.restart(i);
            }
        }
        for i in 0..2 {
            let _ = self.cli(i, &["maintenance", "off"], Duration::from_secs(30));
            let _ = self.cli(i, &["service", "start", "data"], Duration::from_secs(30));
        }
        self.note("everything healed");
    }

    /// Waits until both servers are LIVE and hold one configuration.
    pub fn wait_converged(&self, within: Duration) {
        crate::pair::wait_pair(self.server(0), "live", within);
        crate::pair::wait_pair(self.server(1), "live", within);
        crate::pair::wait_in_sync(&self.site, "gw-a", "gw-b", within);
    }

    /// Everything the checker reads, gathered after the scenario.
    pub fn evidence(&mut self) -> Evidence {
        check::gather(self)
    }

    /// The tail of both servers' logs.
    /// Every line of both servers' logs that names one of `jobs`, in time
    /// order, at most `per_job` lines each (the story of the jobs a check
    /// failed on).
    pub fn job_lines(
        &self,
        jobs: &std::collections::BTreeSet<uuid::Uuid>,
        per_job: usize,
    ) -> String {
        let mut text = String::new();
        for job in jobs.iter().take(5) {
            let needle = job.to_string();
            let mut lines: Vec<String> = Vec::new();
            for name in SERVERS {
                let log = self
                    .site
                    .data_dir(name)
                    .join("logs")
                    .join(format!("{name}.log"));
                let body = std::fs::read_to_string(&log).unwrap_or_default();
                lines.extend(
                    body.lines()
                        .filter(|l| l.contains(&needle))
                        .map(str::to_owned),
                );
            }
            lines.sort();
            text += &format!("---- job {job}: {} log line(s) ----\n", lines.len());
            for l in lines.iter().take(per_job) {
                text += l;
                text.push('\n');
            }
        }
        text
    }

    pub fn logs(&self) -> String {
        let mut text = String::new();
        for name in SERVERS {
            let log = std::fs::read_dir(self.site.dir.path())
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{name}.")))
                        && p.extension().is_some_and(|e| e == "log")
                })
                .collect::<Vec<_>>();
            for path in log {
                let body = std::fs::read_to_string(&path).unwrap_or_default();
                let tail: Vec<&str> = body.lines().rev().take(80).collect();
                text += &format!("---- {} (last lines) ----\n", path.display());
                for l in tail.iter().rev() {
                    text += l;
                    text.push('\n');
                }
            }
        }
        text
    }

    /// The scenario's site directory (logs, reports, outboxes).
    pub fn dir(&self) -> &Path {
        self.site.dir.path()
    }
}

impl Drop for Scenario {
    fn drop(&mut self) {
        self.watching.store(false, Ordering::Relaxed);
        if let Some(w) = self.watcher.take() {
            let _ = w.join();
        }
        for run in &mut self.runs {
            run.kill9();
        }
        for gw in self.servers.iter_mut().flatten() {
            // A frozen process cannot die of SIGKILL until it is thawed.
            let _ = Command::new("kill")
                .args(["-CONT", &gw.pid().to_string()])
                .status();
            gw.kill9();
        }
        for m in self.ro_mounts.drain(..) {
            let _ = Command::new("umount").arg("-l").arg(&m).status();
        }
        if let Some(dir) = self.tmpfs.take() {
            let _ = Command::new("umount").arg("-l").arg(&dir).status();
        }
    }
}

fn mount(args: &[&str], source: &Path, target: &Path) -> Result<(), String> {
    let mut cmd = Command::new("mount");
    cmd.args(args).arg(source);
    if !target.as_os_str().is_empty() {
        cmd.arg(target);
    }
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run mount(8): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "mount {args:?} {} failed (this fault needs root and mount(8)): {}",
            source.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Pass => "pass",
        Mode::Refuse => "refuse",
        Mode::Blackhole => "blackhole",
        Mode::DropToUpstream => "drop_to_upstream",
        Mode::Stall => "stall",
        Mode::Delay(_) => "delay",
    }
}

/// The first job id in a text (`<id@host>`, `id.pdf`, `id-step`).
pub fn uuid_in(text: &str) -> Option<uuid::Uuid> {
    text.split(|c: char| !(c.is_ascii_hexdigit() || c == '-'))
        .filter(|s| s.len() >= 36)
        .find_map(|s| uuid::Uuid::parse_str(&s[..36]).ok())
}

/// (version, epoch) from the first line of `config export`:
/// `# The shared configuration, version 7 of epoch 1/…`.
pub fn export_stamp(text: &str) -> Option<(u64, String)> {
    let line = text.lines().next()?;
    let rest = line.split("version ").nth(1)?;
    let (version, epoch) = rest.split_once(" of epoch ")?;
    Some((
        version.trim().parse().ok()?,
        epoch.trim().trim_end_matches('.').to_owned(),
    ))
}

/// FNV-1a, 64 bits, as 16 hex digits: enough to tell two exports apart.
pub fn checksum(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// `GET /health` with a short timeout (a frozen server must not stall the
/// watcher); `None` when there is no answer.
pub fn health(addr: SocketAddr) -> Option<Value> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(800))).ok()?;
    s.set_write_timeout(Some(Duration::from_millis(800))).ok()?;
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf);
    let body = text.split("\r\n\r\n").nth(1)?;
    serde_json::from_str(body).ok()
}

/// Waits for `f`; panics with `what` and the scenario's logs when the time
/// is up.
pub fn expect_within<T>(
    s: &Scenario,
    within: Duration,
    what: &str,
    f: impl FnMut() -> Option<T>,
) -> T {
    eventually(within, f).unwrap_or_else(|| {
        panic!(
            "scenario {} (seed {}): {what} within {within:?}\n{}",
            s.name,
            s.seed,
            s.logs()
        )
    })
}
