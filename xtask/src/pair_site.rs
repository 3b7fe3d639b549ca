//! What the pair benchmarks (`bench config`, `bench replication`, `bench
//! takeover`, `bench failover`) share about the two gateways they run: the
//! throw-away site's licences and configuration file, commands bounded in
//! time, stopping a process, and waiting until the pair is LIVE and holds
//! one configuration.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::Result;
use crate::measure::io;
use crate::site::Tools;

/// How long one command or one start-up may take.
pub const STEP_LIMIT: Duration = Duration::from_secs(30);

/// Sends `signal` (`-TERM`, `-INT`, `-KILL`) to one process started here.
pub fn signal(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([signal, &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// Asks a child to end with `first` (`-TERM`; `-INT` for tcpdump, which
/// then writes its counts), kills it if it has not ended within a few
/// seconds, and reaps it.
pub fn stop(child: &mut Child, first: &str) {
    if matches!(child.try_wait(), Ok(None)) {
        signal(child.id(), first);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
    }
    let _ = child.wait();
}

/// Runs `cmd` to its end (killed after [`STEP_LIMIT`]); its trimmed stdout
/// and the time from starting it to its exit.
pub fn timed(cmd: &mut Command) -> Result<(String, Duration)> {
    let shown = format!("{cmd:?}");
    let started = Instant::now();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {shown}: {e}"))?;
    // Until the child is reaped below its pid cannot be reused, so the
    // watchdog can only ever signal this command.
    let pid = child.id();
    let (done, watch) = mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if let Err(RecvTimeoutError::Timeout) = watch.recv_timeout(STEP_LIMIT) {
            signal(pid, "-KILL");
        }
    });
    let out = child.wait_with_output();
    let took = started.elapsed();
    let _ = done.send(());
    let _ = watchdog.join();
    let out = out.map_err(|e| format!("{shown}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{shown} failed ({}, after {} ms): {}{}",
            out.status,
            took.as_millis(),
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        ));
    }
    Ok((String::from_utf8_lossy(&out.stdout).trim().to_owned(), took))
}

/// The `pair` part of `gateway status --json` of `instance`.
pub fn pair_status(tools: &Tools, config: &Path, instance: &str) -> Result<Value> {
    let (text, _) = timed(tools.gateway(config, instance).args(["status", "--json"]))?;
    let v: Value =
        serde_json::from_str(&text).map_err(|e| format!("{instance} status {text}: {e}"))?;
    Ok(v["pair"].clone())
}

/// Waits until `gw-a` and `gw-b` are both LIVE with sync `ok` and hold the
/// same configuration version; returns that version.
pub fn wait_in_sync(tools: &Tools, config: &Path, within: Duration) -> Result<u64> {
    let deadline = Instant::now() + within;
    let ready = |p: &Result<Value>| {
        p.as_ref()
            .is_ok_and(|p| p["state"] == "live" && p["sync"] == "ok")
    };
    let version = |p: &Result<Value>| p.as_ref().ok()?["config_version"].as_u64();
    let mut last = (Ok(Value::Null), Ok(Value::Null));
    while Instant::now() < deadline {
        let (a, b) = (
            pair_status(tools, config, "gw-a"),
            pair_status(tools, config, "gw-b"),
        );
        if ready(&a)
            && ready(&b)
            && let Some(v) = version(&a)
            && version(&b) == Some(v)
        {
            return Ok(v);
        }
        last = (a, b);
        std::thread::sleep(Duration::from_millis(50));
    }
    // A stopped instance still answers `status`, without a pair part.
    let brief = |p: &Result<Value>| match p {
        Ok(p) if p.is_null() => "not running".to_owned(),
        Ok(p) => format!(
            "state {}, sync {}, version {}",
            p["state"], p["sync"], p["config_version"]
        ),
        Err(e) => format!("status failed: {e}"),
    };
    Err(format!(
        "the pair did not reach the same configuration version with sync ok within {} s \
         (gw-a: {}; gw-b: {})",
        within.as_secs(),
        brief(&last.0),
        brief(&last.1)
    ))
}

/// A throw-away pair for a benchmark: a vendor key of its own, the `03`
/// (`gw-a`) and `04` (`gw-b`) keys with `seats` each, and
/// `dir/gateway.toml`: the vendor's key as the one trusted, then `body`
/// (users, workflows, defaults, instance tables), then the two pair tables,
/// each naming the other's port (ports the OS hands out and that are free
/// now, so both are known before either server starts). Returns the file
/// and the two keys, to activate.
pub fn pair_config(
    tools: &Tools,
    dir: &Path,
    seats: u32,
    body: &str,
) -> Result<(PathBuf, String, String)> {
    let vendor = tools.vendor(dir)?;
    let key_a = tools.issue(&vendor, "03", 1, seats)?;
    let key_b = tools.issue(&vendor, "04", 2, seats)?;
    let free_port = || -> Result<u16> {
        let l = TcpListener::bind("127.0.0.1:0").map_err(io)?;
        Ok(l.local_addr().map_err(io)?.port())
    };
    let (pair_a, pair_b) = (free_port()?, free_port()?);
    let config = dir.join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[licensing]\ntrusted_vendor_keys = [\"{public}\"]\n\n{body}\n\
             [instances.gw-a.pair]\nlisten = \"127.0.0.1:{pair_a}\"\npeer = \"127.0.0.1:{pair_b}\"\n\n\
             [instances.gw-b.pair]\nlisten = \"127.0.0.1:{pair_b}\"\npeer = \"127.0.0.1:{pair_a}\"\n",
            public = vendor.public_key,
        ),
    )
    .map_err(io)?;
    Ok((config, key_a, key_b))
}

/// Waits until the `gateway serve` started as `child` has written its run
/// file and `ready` accepts it (at most [`STEP_LIMIT`]); returns the run
/// file's contents. A server that exits first, or is not ready in time, is
/// an error naming `name` and its `log`.
pub fn wait_started(
    child: &mut Child,
    run_file: &Path,
    name: &str,
    log: &Path,
    ready: impl Fn(&Value) -> bool,
) -> Result<Value> {
    let deadline = Instant::now() + STEP_LIMIT;
    loop {
        if let Ok(text) = std::fs::read_to_string(run_file)
            && let Ok(info) = serde_json::from_str::<Value>(&text)
            && ready(&info)
        {
            return Ok(info);
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "{name} exited at start-up ({status}); see {}",
                log.display()
            ));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{name} did not start within {} s; see {}",
                STEP_LIMIT.as_secs(),
                log.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
