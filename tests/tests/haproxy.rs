//! A real HAProxy in TCP mode in front of two instances, running exactly the
//! shipped `deploy/haproxy.cfg` (and `deploy/haproxy-active-active.cfg`),
//! with its environment variables set to loopback addresses on ports the OS
//! chose: the PROXY protocol header gives the gateway the device's own
//! address, the `/health` probe takes an instance in maintenance out of
//! rotation and brings it back, failback can be held (per device, or by an
//! admin on the runtime API), and in the active-active file both servers
//! take devices. Job submissions, not only probes, move to the secondary
//! when the primary is in maintenance, has its data service stopped or is
//! killed with kill -9, and come back when it recovers.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use e2e::http::{BOUNDARY, job_body, png};
use e2e::pair::{pair_site, pair_up, wait_in_sync, wait_pair};
use e2e::{Instance, PASSWORD, Site, eventually, free_port};
use uuid::Uuid;

/// Every variable the shipped files read; cleared before each start so the
/// caller's environment cannot change what is tested.
const VARIABLES: &[&str] = &[
    "FRONTEND",
    "GATEWAY_A",
    "GATEWAY_B",
    "MONITOR",
    "ADMIN_SOCKET",
    "HOLD_FAILBACK",
];

/// A running `haproxy -db -f deploy/<file>`.
struct Haproxy {
    child: Child,
    frontend: u16,
    monitor: u16,
    socket: PathBuf,
    log: PathBuf,
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("---- haproxy output ----\n{text}");
        }
    }
}

fn shipped(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(file)
}

/// Starts HAProxy with the shipped `file` unchanged, its addresses given in
/// the environment, plus `extra` variables.
fn start_haproxy(
    dir: &Path,
    file: &str,
    a: &Instance,
    b: &Instance,
    extra: &[(&str, &str)],
) -> Haproxy {
    let path = shipped(file);
    let frontend = free_port();
    let monitor = free_port();
    let socket = dir.join(format!("{file}.sock"));
    let command = || {
        let mut c = Command::new("haproxy");
        for name in VARIABLES {
            c.env_remove(name);
        }
        c.env("FRONTEND", format!("127.0.0.1:{frontend}"))
            .env("GATEWAY_A", a.proxy())
            .env("GATEWAY_B", b.proxy())
            .env("MONITOR", format!("127.0.0.1:{monitor}"))
            .env("ADMIN_SOCKET", &socket)
            .envs(extra.iter().copied());
        c
    };
    let check = command()
        .arg("-c")
        .arg("-f")
        .arg(&path)
        .output()
        .unwrap_or_else(|_| {
            panic!("haproxy is not installed: install the Debian package `haproxy` (cargo xtask test does)")
        });
    let said = String::from_utf8_lossy(&check.stdout).into_owned()
        + &String::from_utf8_lossy(&check.stderr);
    assert!(
        check.status.success() && !said.contains("WARNING") && !said.contains("ALERT"),
        "haproxy does not take {} cleanly:\n{said}",
        path.display()
    );
    let log = dir.join(format!("{file}.log"));
    let out = std::fs::File::create(&log).unwrap();
    let child = command()
        .arg("-db")
        .arg("-f")
        .arg(&path)
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let lb = Haproxy {
        child,
        frontend,
        monitor,
        socket,
        log,
    };
    let listening = eventually(Duration::from_secs(10), || {
        TcpStream::connect(("127.0.0.1", frontend)).ok()
    });
    assert!(listening.is_some(), "haproxy never listened on {frontend}");
    lb
}

impl Haproxy {
    /// One command on the runtime API (the `stats socket` of the file).
    fn api(&self, command: &str) -> String {
        let mut s = UnixStream::connect(&self.socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(format!("{command}\n").as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    /// A column of `show stat` for one server of the backend.
    fn stat(&self, server: &str, column: &str) -> String {
        let csv = self.api("show stat");
        let mut lines = csv.lines();
        let header: Vec<&str> = lines
            .next()
            .unwrap()
            .trim_start_matches("# ")
            .split(',')
            .collect();
        let at = header.iter().position(|c| *c == column).unwrap();
        lines
            .map(|l| l.split(',').collect::<Vec<_>>())
            .find(|f| f.len() > at && f[0] == "gateway_pair" && f[1] == server)
            .map(|f| f[at].to_owned())
            .unwrap_or_default()
    }

    /// Waits until HAProxy's own view of `server` has `column` = `value`.
    fn wait_stat(&self, server: &str, column: &str, value: &str) -> bool {
        eventually(Duration::from_secs(15), || {
            (self.stat(server, column) == value).then_some(())
        })
        .is_some()
    }
}

/// `curl` through the balancer from a chosen source address.
fn curl(
    frontend: u16,
    source: &str,
    path: &str,
    cert_args: &[&str],
    extra: &[&str],
) -> (u16, String) {
    let out = Command::new("curl")
        .args([
            "-s",
            "-m",
            "10",
            "--interface",
            source,
            "-w",
            "\n%{http_code}",
        ])
        .args(cert_args)
        .args(extra)
        .arg(format!("https://localhost:{frontend}{path}"))
        .output()
        .expect("curl is installed (Debian package curl)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

/// The instance that answered `/health` for a device at `source`, if any.
fn health_from(frontend: u16, source: &str, cert_args: &[&str]) -> Option<String> {
    let (code, body) = curl(frontend, source, "/health", cert_args, &[]);
    if code != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v["instance"].as_str().map(str::to_owned)
}

/// Polls until a device at `source` is served by `name`.
fn served_by(frontend: u16, source: &str, cert_args: &[&str], name: &str) -> bool {
    eventually(Duration::from_secs(15), || {
        (health_from(frontend, source, cert_args).as_deref() == Some(name)).then_some(())
    })
    .is_some()
}

/// Gives every instance of `site` a PROXY protocol listener on a port of
/// its own, kept across restarts (HAProxy's file names it once).
fn with_proxy_listeners(site: &Site) {
    let mut text = std::fs::read_to_string(&site.config).unwrap();
    for name in ["gw-a", "gw-b", "gw-c"] {
        let table = format!("\n[instances.{name}]\n");
        let port = free_port();
        text = text.replace(
            &table,
            &format!("{table}listen_proxy = \"127.0.0.1:{port}\"\n"),
        );
    }
    std::fs::write(&site.config, text).unwrap();
}

fn pair() -> (Site, Instance, Instance, String) {
    let site = Site::new(&["gw-a", "gw-b"], "");
    with_proxy_listeners(&site);
    site.activate("gw-a", "03", 11, 5);
    site.activate("gw-b", "04", 12, 5);
    let token = site.add_device("gw-a", "mfd-1");
    let a = site.start("gw-a");
    let b = site.start("gw-b");
    (site, a, b, token)
}

/// A CA file trusting both instances' self-signed certificates.
fn trust_both(site: &Site, a: &Instance, b: &Instance) -> PathBuf {
    let both = site.dir.path().join("both.pem");
    let pem = std::fs::read_to_string(a.certificate()).unwrap()
        + &std::fs::read_to_string(b.certificate()).unwrap();
    std::fs::write(&both, pem).unwrap();
    both
}

#[test]
fn proxy_header_gives_the_gateway_the_devices_own_address() {
    let (site, a, b, token) = pair();
    let lb = start_haproxy(site.dir.path(), "haproxy.cfg", &a, &b, &[]);
    let frontend = lb.frontend;
    let cert = a.certificate();
    let cert_args = ["--cacert", cert.to_str().unwrap()];
    let up = eventually(Duration::from_secs(15), || {
        let (code, body) = curl(frontend, "127.0.0.2", "/health", &cert_args, &[]);
        (code == 200 && body.contains("\"gw-a\"")).then_some(())
    });
    assert!(up.is_some(), "HAProxy never routed a healthy probe to gw-a");

    // The TCP peer of the gateway is HAProxy at 127.0.0.1; the device speaks
    // from 127.0.0.3. The gateway must see 127.0.0.3.
    let auth = format!("Authorization: Bearer {token}");
    let (code, body) = curl(
        frontend,
        "127.0.0.3",
        "/api/v1/workflows",
        &cert_args,
        &["-H", &auth],
    );
    assert_eq!(code, 200, "{body}");
    assert!(
        a.wait_for_log("path=/api/v1/workflows status=200", Duration::from_secs(5)),
        "request not logged"
    );
    let log = a.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("path=/api/v1/workflows"))
        .unwrap();
    assert!(
        line.contains("client=127.0.0.3:"),
        "the logged client is the device, not the balancer: {line}"
    );

    // The node's liveness URL that keepalived's check script reads.
    let alive = Command::new("curl")
        .args(["-s", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("http://127.0.0.1:{}/alive", lb.monitor))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&alive.stdout), "200");

    // A connection to the PROXY listener without the header is refused.
    let mut raw = TcpStream::connect(a.proxy()).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    raw.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = Vec::new();
    // The gateway must close (or reset) the connection at once; a read
    // that merely times out would mean it is still waiting, which proves
    // nothing.
    match raw.read_to_end(&mut buf) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("the connection was neither closed nor reset: {e}"),
    }
    assert!(
        buf.is_empty(),
        "no answer without a PROXY header, got {:?}",
        String::from_utf8_lossy(&buf)
    );
}

#[test]
fn maintenance_takes_an_instance_out_of_rotation_and_back() {
    let (site, a, b, _) = pair();
    let lb = start_haproxy(site.dir.path(), "haproxy.cfg", &a, &b, &[]);
    // Both certificates are self-signed by their own instance; trust both.
    let both = trust_both(&site, &a, &b);
    let cert_args = ["--cacert", both.to_str().unwrap()];
    let served = |name: &str| served_by(lb.frontend, "127.0.0.2", &cert_args, name);
    assert!(served("gw-a"), "the primary serves first");
    site.cli_ok("gw-a", &["maintenance", "on"]);
    assert!(
        served("gw-b"),
        "after `fall` failed probes the backup takes the traffic"
    );
    site.cli_ok("gw-a", &["maintenance", "off"]);
    assert!(
        served("gw-a"),
        "after `rise` good probes the primary is back"
    );

    // An admin holds failback on the runtime API: the primary is set to
    // `drain` while it is away, passes its probes again (drain keeps them
    // running), and still takes no device until the admin sets it ready.
    site.cli_ok("gw-a", &["maintenance", "on"]);
    assert!(served("gw-b"));
    let said = lb.api("set server gateway_pair/gw-a state drain");
    assert!(said.trim().is_empty(), "runtime API said: {said}");
    site.cli_ok("gw-a", &["maintenance", "off"]);
    assert!(
        lb.wait_stat("gw-a", "check_status", "L7OK"),
        "the held primary passes its /health probe again"
    );
    // Longer than `rise` (5 x 200 ms): the probes alone would have brought
    // it back by now.
    std::thread::sleep(Duration::from_millis(1500));
    for _ in 0..5 {
        assert_eq!(
            health_from(lb.frontend, "127.0.0.2", &cert_args).as_deref(),
            Some("gw-b"),
            "failback is held while gw-a is drained"
        );
    }
    lb.api("set server gateway_pair/gw-a state ready");
    assert!(served("gw-a"), "the admin released the primary");
}

#[test]
fn hold_failback_keeps_each_device_on_the_backup_until_it_is_idle() {
    let (site, a, b, _) = pair();
    let idle = Duration::from_secs(3);
    let lb = start_haproxy(
        site.dir.path(),
        "haproxy.cfg",
        &a,
        &b,
        &[("HOLD_FAILBACK", "3s")],
    );
    let both = trust_both(&site, &a, &b);
    let cert_args = ["--cacert", both.to_str().unwrap()];
    let device = "127.0.0.2";
    assert!(served_by(lb.frontend, device, &cert_args, "gw-a"));
    site.cli_ok("gw-a", &["maintenance", "on"]);
    assert!(
        served_by(lb.frontend, device, &cert_args, "gw-b"),
        "the device fails over"
    );
    site.cli_ok("gw-a", &["maintenance", "off"]);
    assert!(
        lb.wait_stat("gw-a", "status", "UP"),
        "HAProxy sees the primary healthy again"
    );
    // The device keeps using the backup (each connection renews its entry).
    for _ in 0..5 {
        assert_eq!(
            health_from(lb.frontend, device, &cert_args).as_deref(),
            Some("gw-b"),
            "failback is held for a device that keeps working"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // A device that was not on the backup goes to the primary.
    assert_eq!(
        health_from(lb.frontend, "127.0.0.4", &cert_args).as_deref(),
        Some("gw-a")
    );
    // After HOLD_FAILBACK without a connection, the device goes back.
    std::thread::sleep(idle + Duration::from_millis(500));
    assert_eq!(
        health_from(lb.frontend, device, &cert_args).as_deref(),
        Some("gw-a"),
        "an idle device fails back"
    );
}

#[test]
fn active_active_spreads_devices_over_both_servers() {
    let (site, a, b, _) = pair();
    let lb = start_haproxy(site.dir.path(), "haproxy-active-active.cfg", &a, &b, &[]);
    let both = trust_both(&site, &a, &b);
    let cert_args = ["--cacert", both.to_str().unwrap()];
    assert!(lb.wait_stat("gw-a", "status", "UP"));
    assert!(lb.wait_stat("gw-b", "status", "UP"));
    // Sixteen devices, each on its own connection from its own address.
    let devices: Vec<String> = (2..18).map(|i| format!("127.0.0.{i}")).collect();
    let first: Vec<String> = devices
        .iter()
        .map(|d| {
            health_from(lb.frontend, d, &cert_args)
                .unwrap_or_else(|| panic!("no healthy answer for device {d}"))
        })
        .collect();
    assert!(
        first.iter().any(|s| s == "gw-a") && first.iter().any(|s| s == "gw-b"),
        "both servers take devices: {first:?}"
    );
    // Each device stays on its own server.
    for (d, server) in devices.iter().zip(&first) {
        assert_eq!(
            health_from(lb.frontend, d, &cert_args).as_ref(),
            Some(server),
            "device {d} moved"
        );
    }
    // One server in maintenance: every device goes to the other one.
    site.cli_ok("gw-a", &["maintenance", "on"]);
    assert!(lb.wait_stat("gw-a", "status", "DOWN"));
    for d in &devices {
        assert_eq!(
            health_from(lb.frontend, d, &cert_args).as_deref(),
            Some("gw-b")
        );
    }
}

/// The two HAProxy files differ only where the variant says: the balancing
/// lines and `backup` (comments aside), so a fix to one is not lost in the
/// other.
#[test]
fn the_active_active_file_is_the_primary_backup_file_but_for_the_backend() {
    let settings = |file: &str| -> Vec<String> {
        std::fs::read_to_string(shipped(file))
            .unwrap()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_owned)
            .collect()
    };
    let pb = settings("haproxy.cfg");
    let aa: Vec<String> = settings("haproxy-active-active.cfg")
        .into_iter()
        .filter(|l| l != "balance source" && l != "hash-type consistent")
        .map(|l| {
            if l == "server gw-b \"${GATEWAY_B}\" check" {
                format!("{l} backup")
            } else {
                l
            }
        })
        .collect();
    assert_eq!(pb, aa);
}

/// A device behind the balancer: its token, its session, its source
/// address and the CA file trusting both servers.
struct BalancedDevice<'a> {
    frontend: u16,
    source: &'a str,
    cert_args: [&'a str; 2],
    token: String,
    session: String,
    dir: PathBuf,
}

impl BalancedDevice<'_> {
    /// Submits one single-page job through the balancer; returns the
    /// status and the JSON answer (null when there was none).
    fn submit(&self, job: Uuid) -> (u16, serde_json::Value) {
        let manifest = serde_json::json!({"workflow": "scan-to-folder", "page_count": 1});
        let body = self.dir.join(format!("{job}.body"));
        std::fs::write(&body, job_body(&manifest, &[png(20_000, 7)])).unwrap();
        let auth = format!("Authorization: Bearer {}", self.token);
        let session = format!("X-Scan-Session: {}", self.session);
        let ctype = format!("Content-Type: multipart/form-data; boundary={BOUNDARY}");
        let data = format!("@{}", body.display());
        let (code, text) = curl(
            self.frontend,
            self.source,
            &format!("/api/v1/jobs/{job}"),
            &self.cert_args,
            &[
                "-X",
                "PUT",
                "-H",
                &auth,
                "-H",
                &session,
                "-H",
                &ctype,
                "--data-binary",
                &data,
            ],
        );
        (code, serde_json::from_str(&text).unwrap_or_default())
    }

    /// Submits new jobs until one is acknowledged by `server` (jobs refused
    /// on the way, while the balancer has not yet marked the primary down
    /// or up, are what a device retries); returns every acknowledged job.
    fn submit_until_accepted_by(&self, server: &str) -> Vec<(Uuid, String)> {
        let mut acked = Vec::new();
        let mut seen = Vec::new();
        let landed = eventually(Duration::from_secs(20), || {
            let job = Uuid::new_v4();
            let (code, ack) = self.submit(job);
            seen.push(format!("{code} {}", ack["error"]["code"]));
            if code == 201 {
                let by = ack["accepted_by"].as_str().unwrap_or_default().to_owned();
                acked.push((job, by.clone()));
                (by == server).then_some(())
            } else {
                std::thread::sleep(Duration::from_millis(100));
                None
            }
        });
        assert!(
            landed.is_some(),
            "no job submitted through HAProxy was acknowledged by {server}; answers: {seen:?}"
        );
        acked
    }
}

#[test]
fn job_submissions_move_to_the_secondary_and_back_through_the_shipped_file() {
    let site = pair_site(None, "");
    with_proxy_listeners(&site);
    let (mut a, b) = pair_up(&site);
    // Registered on the primary, replicated to the secondary with the
    // session key: one token and one session work on both.
    let token = site.add_device("gw-a", "mfd-1");
    wait_in_sync(&site, "gw-a", "gw-b", Duration::from_secs(20));
    let lb = start_haproxy(site.dir.path(), "haproxy.cfg", &a, &b, &[]);
    let both = trust_both(&site, &a, &b);
    let cert_args = ["--cacert", both.to_str().unwrap()];
    assert!(served_by(lb.frontend, "127.0.0.2", &cert_args, "gw-a"));

    let login = serde_json::json!({"user": "alice", "password": PASSWORD}).to_string();
    let auth = format!("Authorization: Bearer {token}");
    let (code, answer) = curl(
        lb.frontend,
        "127.0.0.2",
        "/api/v1/sessions",
        &cert_args,
        &[
            "-H",
            &auth,
            "-H",
            "Content-Type: application/json",
            "--data",
            &login,
        ],
    );
    assert_eq!(code, 201, "login through HAProxy: {answer}");
    let session: serde_json::Value = serde_json::from_str(&answer).unwrap();
    let device = BalancedDevice {
        frontend: lb.frontend,
        source: "127.0.0.2",
        cert_args,
        token,
        session: session["session"].as_str().unwrap().to_owned(),
        dir: site.dir.path().to_owned(),
    };
    let mut acked = device.submit_until_accepted_by("gw-a");

    // The gateway logs the device's own address, not the balancer's.
    let (first, _) = acked[0];
    let logged = eventually(Duration::from_secs(5), || {
        a.log_text()
            .lines()
            .find(|l| l.contains("job accepted") && l.contains(&first.to_string()))
            .map(str::to_owned)
    })
    .expect("the primary logs the accepted job");
    assert!(
        logged.contains("client=127.0.0.2:"),
        "the job's client is the device: {logged}"
    );

    // Maintenance on the primary.
    site.cli_ok("gw-a", &["maintenance", "on"]);
    acked.extend(device.submit_until_accepted_by("gw-b"));
    site.cli_ok("gw-a", &["maintenance", "off"]);
    acked.extend(device.submit_until_accepted_by("gw-a"));

    // The primary's data service stopped by an admin.
    site.cli_ok("gw-a", &["service", "stop", "data"]);
    acked.extend(device.submit_until_accepted_by("gw-b"));
    site.cli_ok("gw-a", &["service", "start", "data"]);
    acked.extend(device.submit_until_accepted_by("gw-a"));

    // The primary killed with kill -9, then started again.
    a.kill9();
    acked.extend(device.submit_until_accepted_by("gw-b"));
    let a = site.start("gw-a");
    wait_pair(&a, "live", Duration::from_secs(20));
    acked.extend(device.submit_until_accepted_by("gw-a"));

    // Every acknowledged job is known to the server that acknowledged it.
    // (A copy on the other server is not promised for a job that was done
    // before the two could talk again.)
    for (job, by) in &acked {
        let gw = if by == "gw-a" { &a } else { &b };
        let answer = e2e::http::Device::new(&gw.plain(), &device.token).job(*job);
        assert_eq!(
            answer.status,
            200,
            "job {job} acknowledged by {by}: {}",
            String::from_utf8_lossy(&answer.body)
        );
    }
}
