//! The baseline of the pair benchmark: a real HAProxy probing `gw-b` with
//! its default health-check timing, watched through its stats socket.

use super::*;

/// A real HAProxy probing gw-b with its default check timing.
pub(super) struct Haproxy {
    socket: PathBuf,
    _proc: Proc,
}

impl Haproxy {
    pub(super) fn start(dir: &Path, backend: &str) -> Result<Haproxy> {
        let socket = dir.join("haproxy.sock");
        let config = dir.join("haproxy.cfg");
        let frontend = free_port()?;
        std::fs::write(
            &config,
            format!(
                r#"global
    stats socket {socket} level admin

defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s

frontend bench
    bind 127.0.0.1:{frontend}
    default_backend {BACKEND}

backend {BACKEND}
    option httpchk GET /health
    http-check expect status 200
    # HAProxy's own defaults, written out: a probe every 2 s, DOWN after 3
    # failed probes, UP again after 2 good ones. No `timeout check`, so a
    # probe may take up to `inter` before it counts as failed.
    default-server inter {HAPROXY_INTER_MS}ms fall 3 rise 2
    server {SERVER} {backend} check
"#,
                socket = socket.display(),
            ),
        )
        .map_err(io)?;
        output(Command::new("haproxy").arg("-c").arg("-f").arg(&config))
            .map_err(|e| format!("haproxy rejects its configuration: {e}"))?;
        let log = std::fs::File::create(dir.join("haproxy.log")).map_err(io)?;
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&config)
            .stdout(log.try_clone().map_err(io)?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start haproxy: {e}"))?;
        let haproxy = Haproxy {
            socket,
            _proc: Proc {
                child,
                reaped: false,
            },
        };
        haproxy.wait_status("UP", TRIAL_LIMIT)?;
        Ok(haproxy)
    }

    /// The `status` column of gw-b in `show stat` (`UP`, `UP 1/3`, `DOWN`,
    /// `DOWN 1/2`, ...).
    pub(super) fn status(&self) -> Result<String> {
        let mut s = UnixStream::connect(&self.socket)
            .map_err(|e| format!("{}: {e}", self.socket.display()))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .map_err(io)?;
        s.write_all(b"show stat\n").map_err(io)?;
        let mut csv = String::new();
        s.read_to_string(&mut csv).map_err(io)?;
        let mut lines = csv.lines();
        let header: Vec<&str> = lines
            .next()
            .unwrap_or_default()
            .trim_start_matches("# ")
            .split(',')
            .collect();
        let column = |name: &str| header.iter().position(|h| *h == name);
        let (px, sv, st) = match (column("pxname"), column("svname"), column("status")) {
            (Some(px), Some(sv), Some(st)) => (px, sv, st),
            _ => return Err(format!("unexpected `show stat` answer: {csv}")),
        };
        lines
            .map(|l| l.split(',').collect::<Vec<_>>())
            .find(|f| f.get(px) == Some(&BACKEND) && f.get(sv) == Some(&SERVER))
            .and_then(|f| f.get(st).map(|s| (*s).to_owned()))
            .ok_or_else(|| format!("no {BACKEND}/{SERVER} in `show stat`: {csv}"))
    }

    pub(super) fn wait_status(&self, want: &str, within: Duration) -> Result {
        let deadline = Instant::now() + within;
        let mut last = String::new();
        while Instant::now() < deadline {
            if let Ok(status) = self.status() {
                if status == want {
                    return Ok(());
                }
                last = status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!(
            "HAProxy did not see {SERVER} {want} within {} s (last: {last:?})",
            within.as_secs()
        ))
    }
}
