//! A real HAProxy in TCP mode in front of two instances, with the backend
//! configuration from `docs/operations.md`: the PROXY protocol header gives
//! the gateway the device's own address, and the `/health` probe takes an
//! instance in maintenance out of rotation and brings it back.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use e2e::{Instance, Site, eventually, free_port};

struct Haproxy(Child);

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The documented backend with loopback addresses in place of the example ones.
fn documented_config(frontend: u16, a: &Instance, b: &Instance) -> String {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/operations.md"
    ))
    .unwrap();
    let start = doc
        .find("```haproxy\n")
        .expect("docs/operations.md has a haproxy block")
        + "```haproxy\n".len();
    let end = start + doc[start..].find("```").unwrap();
    let config = doc[start..end]
        .replace("192.0.2.10:443", &format!("127.0.0.1:{frontend}"))
        .replace("192.0.2.11:8444", &a.proxy())
        .replace("192.0.2.12:8444", &b.proxy());
    assert!(
        !config.contains("192.0.2."),
        "every example address was replaced:\n{config}"
    );
    config
}

fn start_haproxy(dir: &std::path::Path, config: &str) -> Haproxy {
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, config).unwrap();
    let check = Command::new("haproxy").arg("-c").arg("-f").arg(&path).output().unwrap_or_else(|_| {
        panic!("haproxy is not installed: install the Debian package `haproxy` (cargo xtask test does)")
    });
    assert!(
        check.status.success(),
        "haproxy rejects the documented config: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    let child = Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Haproxy(child)
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

fn pair() -> (Site, Instance, Instance, String) {
    let site = Site::new(&["gw-a", "gw-b"], "");
    let with_proxy = std::fs::read_to_string(&site.config).unwrap().replace(
        "listen_plain = \"127.0.0.1:0\"\n",
        "listen_plain = \"127.0.0.1:0\"\nlisten_proxy = \"127.0.0.1:0\"\n",
    );
    std::fs::write(&site.config, with_proxy).unwrap();
    site.activate("gw-a", "03", 11, 5);
    site.activate("gw-b", "04", 12, 5);
    let token = site.add_device("gw-a", "mfd-1");
    let a = site.start("gw-a");
    let b = site.start("gw-b");
    (site, a, b, token)
}

#[test]
fn proxy_header_gives_the_gateway_the_devices_own_address() {
    let (site, a, b, token) = pair();
    let frontend = free_port();
    let _lb = start_haproxy(site.dir.path(), &documented_config(frontend, &a, &b));
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
    let frontend = free_port();
    let _lb = start_haproxy(site.dir.path(), &documented_config(frontend, &a, &b));
    // Both certificates are self-signed by their own instance; trust both.
    let both = site.dir.path().join("both.pem");
    let pem = std::fs::read_to_string(a.certificate()).unwrap()
        + &std::fs::read_to_string(b.certificate()).unwrap();
    std::fs::write(&both, pem).unwrap();
    let cert_args = ["--cacert", both.to_str().unwrap()];
    let served_by = |name: &str| {
        eventually(Duration::from_secs(15), || {
            let (code, body) = curl(frontend, "127.0.0.2", "/health", &cert_args, &[]);
            (code == 200 && body.contains(&format!("\"instance\":\"{name}\""))).then_some(())
        })
        .is_some()
    };
    assert!(served_by("gw-a"), "the primary serves first");
    site.cli_ok("gw-a", &["maintenance", "on"]);
    assert!(
        served_by("gw-b"),
        "after `fall` failed probes the backup takes the traffic"
    );
    site.cli_ok("gw-a", &["maintenance", "off"]);
    assert!(
        served_by("gw-a"),
        "after `rise` good probes the primary is back"
    );
}
