//! The failover client against real `gateway` processes: the four causes
//! (maintenance, data service stopped by an admin, the process gone so its
//! port refuses, the network in front of it dropping everything silently)
//! are recorded as such, and a job whose acknowledgement was lost on the
//! way is accepted once. Jobs kept in the outbox while the gateway refused
//! them are replayed after the person logged out: accepted once when the
//! logout counted them, refused as `session_expired` (and kept queued)
//! otherwise. The outbox survives kill -9 of the device's process in the
//! middle of an upload, and failback to a recovered gateway waits for the
//! person's session to end. The other server of the list is an
//! in-test server, because two independent gateways do not share device
//! tokens (that needs a paired site, which the end-to-end tests build).
//!
//! The gateway binary must be built into the same target directory first
//! (`cargo build -p gateway --bins`).

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use licensing::{KeySpec, Role, VendorKeyPair};
use mfd_sim::{
    client::GatewayClient,
    failover::{Delivery, EventKind, FailoverClient, FailoverSettings, RequestError},
    multipart::{Manifest, Page},
    outbox::{Outbox, OutboxLimits, QueuedJob, SessionStamp},
    servers::ServerList,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use crate::support::*;

const PASSWORD: &str = "correct horse";

fn gateway_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().and_then(Path::parent).unwrap().join("gateway");
    assert!(
        path.exists(),
        "{} is missing: build it first with `cargo build -p gateway --bins` (same CARGO_TARGET_DIR)",
        path.display()
    );
    path
}

/// One licensed gateway instance with an approved device.
struct Gateway {
    dir: tempfile::TempDir,
    config: PathBuf,
    child: Option<Child>,
    plain: String,
    token: String,
}

impl Gateway {
    fn start() -> Gateway {
        Gateway::start_with("")
    }

    /// A gateway with `instance` added to its `[instances.gw-a]` section.
    fn start_with(instance: &str) -> Gateway {
        let bin = gateway_bin();
        let dir = tempfile::Builder::new()
            .prefix("mfd-gw-")
            .tempdir()
            .unwrap();
        let (vendor, _) = VendorKeyPair::generate().unwrap();
        let hash = {
            let mut child = Command::new(&bin)
                .args(["user", "hash-password", "--iterations", "10000"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            std::io::Write::write_all(&mut child.stdin.take().unwrap(), PASSWORD.as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success());
            String::from_utf8(out.stdout).unwrap().trim().to_owned()
        };
        let text = format!(
            "[licensing]\ntrusted_vendor_keys = [\"{}\"]\n\n[users.alice]\npassword_hash = \"{hash}\"\n\n\
             [workflows.scan-to-folder]\nsteps = [ {{ plugin = \"assemble\" }}, {{ plugin = \"folder\", root = \"{{data_dir}}/delivered\" }} ]\n\n\
             [defaults]\ndata_dir = \"{{instance}}\"\nlisten = \"127.0.0.1:0\"\nlisten_plain = \"127.0.0.1:0\"\n\n[instances.gw-a]\n{instance}",
            vendor.public_key().to_text()
        );
        let config = dir.path().join("gateway.toml");
        std::fs::write(&config, text).unwrap();
        let mut gw = Gateway {
            dir,
            config,
            child: None,
            plain: String::new(),
            token: String::new(),
        };
        let key = vendor
            .issue(&KeySpec {
                role: Role::Primary,
                serial: 7,
                seats: 5,
                expires: None,
            })
            .unwrap();
        gw.cli(&["license", "activate", &key]);
        let out = gw.cli(&["device", "add", "mfd-1"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        gw.token = v["token"].as_str().unwrap().to_owned();
        gw.serve();
        gw
    }

    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(gateway_bin())
            .arg("--config")
            .arg(&self.config)
            .args(["--instance", "gw-a"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "gateway {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn serve(&mut self) {
        let run_file = self.dir.path().join("gw-a").join("gw-a.run.json");
        let _ = std::fs::remove_file(&run_file);
        let log = std::fs::File::create(self.dir.path().join("gw-a.log")).unwrap();
        let child = Command::new(gateway_bin())
            .arg("--config")
            .arg(&self.config)
            .args(["--instance", "gw-a", "serve"])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(text) = std::fs::read_to_string(&run_file)
                && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
            {
                let plain = v["listeners"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|l| l["kind"] == "plain")
                    .expect("a plain listener")["addr"]
                    .as_str()
                    .unwrap()
                    .to_owned();
                self.plain = format!("http://{plain}");
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the gateway did not start: {}",
                std::fs::read_to_string(self.dir.path().join("gw-a.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn client(&self) -> GatewayClient {
        GatewayClient::new(&self.plain, None, quick())
            .unwrap()
            .with_token(&self.token)
            .unwrap()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!(
                "---- gateway log ----\n{}",
                std::fs::read_to_string(self.dir.path().join("gw-a.log")).unwrap_or_default()
            );
        }
    }
}

/// The in-test second server: logs in and acknowledges everything.
fn fallback() -> Handler {
    handler(|r| match (r.method.as_str(), r.path.as_str()) {
        ("POST", "/api/v1/sessions") => session(),
        ("GET", "/health") => health(true, "up", false, None),
        ("PUT", p) => ack(p, 201),
        _ => json(200, serde_json::json!({})),
    })
}

fn settings() -> FailoverSettings {
    FailoverSettings {
        failback_probe_interval: Duration::from_secs(3600),
        ..FailoverSettings::default()
    }
}

fn job_pages() -> Vec<Page> {
    vec![Page::Memory(
        mfd_sim::synthetic::noise_png(2000, 1).unwrap(),
    )]
}

async fn client_for(urls: &[String], token: &str) -> FailoverClient {
    let list = ServerList::new(
        urls.iter()
            .map(|u| GatewayClient::new(u, None, quick()).unwrap())
            .collect(),
    )
    .unwrap()
    .with_token(token)
    .unwrap();
    FailoverClient::new(list, settings())
}

/// Logs in on the gateway while it works, breaks it with `break_it`, then
/// scans and delivers one job; returns the recorded causes.
async fn cause_after(
    break_it: impl FnOnce(&mut Gateway) + Send + 'static,
) -> Vec<(String, String)> {
    let mut gw = tokio::task::spawn_blocking(Gateway::start).await.unwrap();
    let other = TestServer::http(fallback()).await;
    let c = client_for(&[gw.plain.clone(), other.url.clone()], &gw.token).await;
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(dir.path(), OutboxLimits::default()).unwrap();
    c.login("alice", PASSWORD).await.unwrap();
    assert_eq!(c.current_index(), 0, "the gateway took the login");
    let gw_url = gw.plain.clone();
    let mut gw = tokio::task::spawn_blocking(move || {
        break_it(&mut gw);
        gw
    })
    .await
    .unwrap();
    let job = c
        .scan(&outbox, &Manifest::new("scan-to-folder", 1), job_pages())
        .await
        .unwrap();
    let Delivery::Acknowledged(d) = c.deliver(&outbox, &job).await.unwrap() else {
        panic!("acknowledged by the other server")
    };
    assert_eq!(d.server_index, 1);
    assert!(outbox.pending().unwrap().is_empty());
    gw.kill9();
    c.events()
        .into_iter()
        .map(|e| {
            assert_eq!(e.server, gw_url);
            match e.kind {
                EventKind::Failover { cause, .. } => (e.server, cause.to_string()),
                other => (e.server, other.name().to_owned()),
            }
        })
        .collect()
}

#[tokio::test]
async fn a_gateway_in_maintenance_is_recorded_as_maintenance() {
    let causes = cause_after(|gw| {
        gw.cli(&["maintenance", "on"]);
    })
    .await;
    assert_eq!(causes.len(), 1);
    assert_eq!(causes[0].1, "maintenance");
}

#[tokio::test]
async fn a_gateway_whose_data_service_an_admin_stopped_is_recorded_as_data_service_down() {
    let causes = cause_after(|gw| {
        gw.cli(&["service", "stop", "data"]);
    })
    .await;
    assert_eq!(causes.len(), 1);
    assert_eq!(causes[0].1, "data_service_down");
}

#[tokio::test]
async fn a_killed_gateway_refuses_connections_and_is_recorded_as_web_service_down() {
    let causes = cause_after(Gateway::kill9).await;
    assert_eq!(causes.len(), 1);
    assert_eq!(causes[0].1, "web_service_down");
}

/// A TCP proxy that passes everything until it is armed; once armed, it
/// still forwards what the device sends but drops what the gateway answers
/// and closes the device's connection: an acknowledgement lost on the way.
async fn lossy_proxy(
    upstream: String,
    armed: Arc<AtomicBool>,
) -> (String, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let upstream = upstream.trim_start_matches("http://").to_owned();
    let task = tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            let (upstream, armed) = (upstream.clone(), armed.clone());
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    return;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let up = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut cr, &mut sw).await;
                });
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = match sr.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if armed.load(Ordering::SeqCst) {
                        break;
                    }
                    if cw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                up.abort();
            });
        }
    });
    (url, task)
}

#[tokio::test]
async fn a_job_whose_acknowledgement_was_lost_is_accepted_once_as_a_replay() {
    let gw = tokio::task::spawn_blocking(Gateway::start).await.unwrap();
    let armed = Arc::new(AtomicBool::new(false));
    let (proxy, _task) = lossy_proxy(gw.plain.clone(), armed.clone()).await;
    let c = client_for(&[proxy.clone(), gw.plain.clone()], &gw.token).await;
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(dir.path(), OutboxLimits::default()).unwrap();
    c.login("alice", PASSWORD).await.unwrap();
    assert_eq!(c.current_index(), 0);
    let job = c
        .scan(&outbox, &Manifest::new("scan-to-folder", 1), job_pages())
        .await
        .unwrap();
    armed.store(true, Ordering::SeqCst);
    let Delivery::Acknowledged(d) = c.deliver(&outbox, &job).await.unwrap() else {
        panic!("acknowledged")
    };
    assert!(d.replayed, "the gateway had stored it through the proxy");
    assert_eq!(d.server_index, 1);
    assert_eq!(d.ack.job_id, job.job_id);
    let jobs = gw.client().jobs(50).await.unwrap();
    let same: Vec<_> = jobs.iter().filter(|j| j.job_id == job.job_id).collect();
    assert_eq!(same.len(), 1, "stored once");
    assert_eq!(jobs.len(), 1);
    assert!(outbox.pending().unwrap().is_empty());
}

#[tokio::test]
async fn the_gateway_takes_a_job_replayed_from_the_outbox_after_a_restart() {
    let gw = tokio::task::spawn_blocking(Gateway::start).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let job_id = {
        let outbox = Outbox::open(dir.path(), OutboxLimits::default()).unwrap();
        let c = client_for(std::slice::from_ref(&gw.plain), &gw.token).await;
        c.login("alice", PASSWORD).await.unwrap();
        c.scan(&outbox, &Manifest::new("scan-to-folder", 1), job_pages())
            .await
            .unwrap()
            .job_id
        // The device goes down here, before the first attempt.
    };
    let outbox = Outbox::open(dir.path(), OutboxLimits::default()).unwrap();
    let c = client_for(std::slice::from_ref(&gw.plain), &gw.token).await;
    let done = c.replay(&outbox).await.unwrap();
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].0, job_id);
    let Ok(Delivery::Acknowledged(d)) = &done[0].1 else {
        panic!("{:?}", done[0].1)
    };
    assert!(!d.replayed);
    let again = c.replay(&outbox).await.unwrap();
    assert!(again.is_empty());
    let jobs = gw.client().jobs(50).await.unwrap();
    assert_eq!(jobs.iter().filter(|j| j.job_id == job_id).count(), 1);
}

/// A gateway that asks devices to wait only a second while in maintenance
/// (its `Retry-After`), so that a test can wait out the client's hold on it.
fn gateway_with_short_maintenance_hold() -> Gateway {
    Gateway::start_with("maintenance_retry_after_secs = 1\n")
}

/// Waits until the client may ask a server held by a maintenance answer of
/// [`gateway_with_short_maintenance_hold`] again.
async fn wait_out_maintenance_hold() {
    tokio::time::sleep(Duration::from_millis(1200)).await;
}

/// Turns maintenance on or off through the admin CLI.
async fn maintenance(gw: Gateway, on: bool) -> Gateway {
    tokio::task::spawn_blocking(move || {
        gw.cli(&["maintenance", if on { "on" } else { "off" }]);
        gw
    })
    .await
    .unwrap()
}

/// Delivers a job while the only server is in maintenance: it stays queued.
async fn deliver_refused_by_maintenance(c: &FailoverClient, outbox: &Outbox, job: &QueuedJob) {
    match c.deliver(outbox, job).await {
        Err(RequestError::NoServer { passed, .. }) => {
            assert_eq!(passed.len(), 1);
            assert!(
                ["maintenance", "held"].contains(&passed[0].reason.as_str()),
                "{passed:?}"
            );
        }
        other => panic!("the job should stay queued: {other:?}"),
    }
}

fn refused_as_session_expired(outcome: &Result<Delivery, RequestError>) -> String {
    match outcome {
        Err(RequestError::Refused(http)) => {
            assert_eq!(http.status.as_u16(), 401, "{http:?}");
            assert!(http.has_code("session_expired"), "{http:?}");
            http.message.clone()
        }
        other => panic!("expected 401 session_expired, got {other:?}"),
    }
}

#[tokio::test]
async fn jobs_queued_during_maintenance_are_replayed_after_logout_and_stored_once() {
    let gw = tokio::task::spawn_blocking(gateway_with_short_maintenance_hold)
        .await
        .unwrap();
    let c = client_for(std::slice::from_ref(&gw.plain), &gw.token).await;
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(dir.path(), OutboxLimits::default()).unwrap();
    let session = c.login("alice", PASSWORD).await.unwrap();
    let gw = maintenance(gw, true).await;

    let mut scanned = Vec::new();
    for _ in 0..2 {
        let job = c
            .scan(&outbox, &Manifest::new("scan-to-folder", 1), job_pages())
            .await
            .unwrap();
        deliver_refused_by_maintenance(&c, &outbox, &job).await;
        scanned.push(job.job_id);
    }
    let queued = outbox.pending().unwrap();
    assert_eq!(
        queued
            .iter()
            .map(|j| (j.job_id, j.session.seq))
            .collect::<Vec<_>>(),
        vec![(scanned[0], 1), (scanned[1], 2)]
    );
    assert!(queued.iter().all(|j| j.session.token == session.session));
    assert!(gw.client().jobs(50).await.unwrap().is_empty());

    // Logging out is not refused in maintenance; the client tells the
    // gateway that the session scanned two jobs.
    wait_out_maintenance_hold().await;
    c.logout().await.unwrap();
    assert!(!c.session_active());
    let gone = gw.client().logout(&session.session).await.unwrap_err();
    let gone = gone.http().expect("an HTTP refusal");
    assert!(
        gone.has_code("session_expired"),
        "the gateway ended the session: {gone:?}"
    );

    let gw = maintenance(gw, false).await;
    let done = c.replay(&outbox).await.unwrap();
    assert_eq!(done.len(), 2);
    for ((id, outcome), scanned) in done.iter().zip(&scanned) {
        assert_eq!(id, scanned);
        let Ok(Delivery::Acknowledged(d)) = outcome else {
            panic!("{outcome:?}")
        };
        assert!(!d.replayed, "201: stored now, not before");
        assert_eq!(d.ack.job_id, *scanned);
        assert_eq!(d.server_index, 0);
    }
    assert!(outbox.pending().unwrap().is_empty());
    assert!(outbox.rejected().unwrap().is_empty());
    assert!(c.replay(&outbox).await.unwrap().is_empty());

    let jobs = gw.client().jobs(50).await.unwrap();
    assert_eq!(jobs.len(), 2, "{jobs:?}");
    for id in &scanned {
        assert_eq!(jobs.iter().filter(|j| j.job_id == *id).count(), 1);
    }
    let causes: Vec<_> = c
        .events()
        .into_iter()
        .map(|e| match e.kind {
            EventKind::Failover { cause, .. } => cause.to_string(),
            other => other.name().to_owned(),
        })
        .collect();
    assert_eq!(
        causes,
        ["maintenance"],
        "only the first refusal was a cause"
    );
}

#[tokio::test]
async fn replays_outside_what_a_logout_allowed_are_refused_as_expired_and_kept_queued() {
    let gw = tokio::task::spawn_blocking(gateway_with_short_maintenance_hold)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(dir.path(), OutboxLimits::default()).unwrap();

    // Session 1 scans one job in maintenance and is ended by a logout that
    // carries no count.
    let c = client_for(std::slice::from_ref(&gw.plain), &gw.token).await;
    let first = c.login("alice", PASSWORD).await.unwrap();
    let gw = maintenance(gw, true).await;
    let uncounted = c
        .scan(&outbox, &Manifest::new("scan-to-folder", 1), job_pages())
        .await
        .unwrap();
    deliver_refused_by_maintenance(&c, &outbox, &uncounted).await;
    gw.client().logout(&first.session).await.unwrap();
    drop(c);

    // Session 2 scans one job and logs out with the count 1; a second job
    // under its token, numbered 2, was never counted.
    let gw = maintenance(gw, false).await;
    let c = client_for(std::slice::from_ref(&gw.plain), &gw.token).await;
    let second = c.login("alice", PASSWORD).await.unwrap();
    let gw = maintenance(gw, true).await;
    let counted = c
        .scan(&outbox, &Manifest::new("scan-to-folder", 1), job_pages())
        .await
        .unwrap();
    assert_eq!(counted.session.seq, 1);
    deliver_refused_by_maintenance(&c, &outbox, &counted).await;
    wait_out_maintenance_hold().await;
    c.logout().await.unwrap();
    let beyond = outbox
        .put(
            uuid::Uuid::new_v4(),
            &Manifest::new("scan-to-folder", 1),
            &job_pages(),
            SessionStamp {
                token: second.session.clone(),
                seq: 2,
            },
        )
        .unwrap();

    let gw = maintenance(gw, false).await;
    let done = c.replay(&outbox).await.unwrap();
    let ids: Vec<_> = done.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids, [uncounted.job_id, counted.job_id, beyond.job_id]);
    let why = refused_as_session_expired(&done[0].1);
    assert!(why.contains("logging out"), "{why}");
    let Ok(Delivery::Acknowledged(d)) = &done[1].1 else {
        panic!("job 1 of 1 is a replay the logout allowed: {:?}", done[1].1)
    };
    assert_eq!(d.ack.job_id, counted.job_id);
    let why = refused_as_session_expired(&done[2].1);
    assert!(
        why.contains("job 2") && why.contains("among the 1"),
        "{why}"
    );

    // 401 is the person's business: both stay queued, nothing is rejected,
    // and the gateway stored only the counted job.
    let mut left: Vec<_> = outbox.pending().unwrap().iter().map(|j| j.job_id).collect();
    left.sort();
    let mut expected = vec![uncounted.job_id, beyond.job_id];
    expected.sort();
    assert_eq!(left, expected);
    assert!(outbox.rejected().unwrap().is_empty());
    let jobs = gw.client().jobs(50).await.unwrap();
    assert_eq!(
        jobs.iter().map(|j| j.job_id).collect::<Vec<_>>(),
        [counted.job_id]
    );
}

#[tokio::test]
async fn a_person_who_scanned_nothing_logs_out_at_the_gateway() {
    let gw = tokio::task::spawn_blocking(Gateway::start).await.unwrap();
    let c = client_for(std::slice::from_ref(&gw.plain), &gw.token).await;
    let session = c.login("alice", PASSWORD).await.unwrap();
    c.logout().await.unwrap();
    let gone = gw.client().logout(&session.session).await.unwrap_err();
    let gone = gone.http().expect("an HTTP refusal");
    assert!(gone.has_code("session_expired"), "{gone:?}");
}

/// Cause 1 against a running gateway: the network between the device and
/// the gateway starts dropping everything silently (a proxy in front of it
/// stops accepting and stops moving bytes on the open connections). The
/// device's kept-alive connection hears nothing, its check on a new
/// connection gets no answer to its SYN, and the job goes to the other
/// server within about a second, recorded as `network`.
#[tokio::test]
async fn a_gateway_whose_network_drops_silently_is_recorded_as_network() {
    let gw = tokio::task::spawn_blocking(Gateway::start).await.unwrap();
    let proxy = FaultProxy::start(&gw.plain).await;
    let other = TestServer::http(fallback()).await;
    let c = client_for(&[proxy.url.clone(), other.url.clone()], &gw.token).await;
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(dir.path(), OutboxLimits::default()).unwrap();
    c.login("alice", PASSWORD).await.unwrap();
    assert_eq!(c.current_index(), 0, "the gateway took the login");
    let job = c
        .scan(&outbox, &Manifest::new("scan-to-folder", 1), job_pages())
        .await
        .unwrap();
    proxy.set(ProxyMode::Silent).await;
    let started = Instant::now();
    let Delivery::Acknowledged(d) = c.deliver(&outbox, &job).await.unwrap() else {
        panic!("acknowledged by the other server")
    };
    let took = started.elapsed();
    assert_eq!(d.server_index, 1);
    // The check waits 250 ms of silence, then up to the 2 s connect timeout
    // of these tests.
    assert!(took < Duration::from_secs(4), "took {took:?}");
    let causes: Vec<_> = c
        .events()
        .into_iter()
        .map(|e| match e.kind {
            EventKind::Failover { cause, .. } => (e.server, cause.to_string()),
            other => (e.server, other.name().to_owned()),
        })
        .collect();
    assert_eq!(causes, [(proxy.url.clone(), "network".to_owned())]);
    assert!(outbox.pending().unwrap().is_empty());
}

/// R3 against a running gateway: the device failed over while the gateway
/// was in maintenance; once the gateway is healthy again (and its
/// `Retry-After` is over) the device stays where it is for as long as the
/// person's session lasts, and returns the moment they log out.
#[tokio::test]
async fn failback_to_a_recovered_gateway_waits_until_the_person_logged_out() {
    let gw = tokio::task::spawn_blocking(gateway_with_short_maintenance_hold)
        .await
        .unwrap();
    let other = TestServer::http(fallback()).await;
    let list = ServerList::new(vec![
        GatewayClient::new(&gw.plain, None, quick()).unwrap(),
        GatewayClient::new(&other.url, None, quick()).unwrap(),
    ])
    .unwrap()
    .with_token(&gw.token)
    .unwrap();
    let c = FailoverClient::new(
        list,
        FailoverSettings {
            failback_probe_interval: Duration::from_millis(100),
            failback_good_probes: 3,
            ..FailoverSettings::default()
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(dir.path(), OutboxLimits::default()).unwrap();
    let gw = maintenance(gw, true).await;
    c.login("alice", PASSWORD).await.unwrap();
    assert_eq!(c.current_index(), 1, "failed over for maintenance");
    let gw = maintenance(gw, false).await;
    // The hold (1 s) and three good probes 100 ms apart are over.
    tokio::time::sleep(Duration::from_millis(1800)).await;
    assert!(gw.client().health().await.unwrap().accepting);
    assert_eq!(c.current_index(), 1, "never in the middle of a session");
    let job = c
        .scan(&outbox, &Manifest::new("scan-to-folder", 1), job_pages())
        .await
        .unwrap();
    let Delivery::Acknowledged(d) = c.deliver(&outbox, &job).await.unwrap() else {
        panic!("acknowledged")
    };
    assert_eq!(
        d.server_index, 1,
        "the session's jobs stay on the other server"
    );
    c.logout().await.unwrap();
    assert_eq!(c.current_index(), 0, "back once the person logged out");
    c.login("alice", PASSWORD).await.unwrap();
    let job = c
        .scan(&outbox, &Manifest::new("scan-to-folder", 1), job_pages())
        .await
        .unwrap();
    let Delivery::Acknowledged(d) = c.deliver(&outbox, &job).await.unwrap() else {
        panic!("acknowledged")
    };
    assert_eq!(d.server_index, 0);
    let jobs = gw.client().jobs(50).await.unwrap();
    assert_eq!(
        jobs.iter().map(|j| j.job_id).collect::<Vec<_>>(),
        [job.job_id]
    );
    let names: Vec<_> = c.events().iter().map(|e| e.kind.name()).collect();
    assert_eq!(names, ["failover", "failback"]);
}

/// The device's process is killed (SIGKILL) in the middle of an upload to a
/// running gateway. Started again on the same outbox, it sends what was
/// queued first, with the same ids: every job scanned ends up on the
/// gateway exactly once, none under a second id, and the outbox is empty.
#[tokio::test]
async fn the_outbox_survives_kill_9_of_the_device_process_mid_upload() {
    let gw = tokio::task::spawn_blocking(Gateway::start).await.unwrap();
    let proxy = FaultProxy::start(&gw.plain).await;
    let dir = tempfile::tempdir().unwrap();
    let devices = dir.path().join("devices.json");
    std::fs::write(
        &devices,
        serde_json::json!([{"name": "mfd-1", "token": gw.token}]).to_string(),
    )
    .unwrap();
    let outbox_root = dir.path().join("outbox");
    let run = |server: &str, jobs: &str, extra: &[&str]| {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_mfd-sim"));
        cmd.args(["run", "--server", server, "--devices-file"])
            .arg(&devices)
            .args(["--user", "alice", "--password", PASSWORD])
            .args(["--workflow", "scan-to-folder", "--jobs", jobs])
            .args(["--page-source", "random", "--page-bytes", "20000"])
            .arg("--outbox")
            .arg(&outbox_root)
            .args(["--quiet", "--json"])
            .args(extra)
            .env_remove("MFD_SIM_PASSWORD")
            .kill_on_drop(true)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    };
    let mut first = run(&proxy.url, "50", &["--scan-interval-ms", "20"])
        .spawn()
        .unwrap();
    // A few jobs go through, then uploads stall half-way.
    let deadline = Instant::now() + Duration::from_secs(30);
    while gw.client().jobs(50).await.map_or(0, |j| j.len()) < 3 {
        assert!(Instant::now() < deadline, "no jobs reached the gateway");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proxy.set(ProxyMode::StallUploads).await;
    while !proxy.holding() {
        assert!(Instant::now() < deadline, "no upload stalled");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    first.start_kill().unwrap(); // SIGKILL
    let status = first.wait().await.unwrap();
    assert!(!status.success());
    let stalled = proxy.uploads().last().cloned().unwrap();

    let queued: Vec<String> = std::fs::read_dir(outbox_root.join("mfd-1").join("jobs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        queued.contains(&stalled),
        "the job cut off mid-upload is in the outbox: {queued:?}, {stalled}"
    );
    let before: Vec<String> = gw
        .client()
        .jobs(200)
        .await
        .unwrap()
        .iter()
        .map(|j| j.job_id.to_string())
        .collect();
    assert!(
        !before.contains(&stalled),
        "the cut-off upload was not stored"
    );

    // The device starts again (straight to the gateway) and scans nothing new.
    let out = run(&gw.plain, "0", &[]).output().await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["jobs_resumed"], queued.len());
    assert_eq!(summary["jobs_acknowledged"], queued.len());
    assert_eq!(summary["jobs_queued"], 0);

    let after: Vec<String> = gw
        .client()
        .jobs(200)
        .await
        .unwrap()
        .iter()
        .map(|j| j.job_id.to_string())
        .collect();
    let mut unique = after.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), after.len());
    for id in &queued {
        assert_eq!(after.iter().filter(|a| *a == id).count(), 1, "{id}");
    }
    // Every upload the device began is on the gateway under its own id, and
    // nothing else is: no scan was lost, none stored twice.
    let mut begun = proxy.uploads();
    begun.sort();
    begun.dedup();
    let mut expected = begun.clone();
    expected.extend(queued.iter().cloned());
    expected.sort();
    expected.dedup();
    let mut stored = after.clone();
    stored.sort();
    assert_eq!(stored, expected);
    assert_eq!(
        std::fs::read_dir(outbox_root.join("mfd-1").join("jobs"))
            .unwrap()
            .count(),
        0
    );
}
