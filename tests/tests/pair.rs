//! The pair link between real `gateway` processes on loopback: pairing
//! with a one-time code, heartbeats, DEAD after kill -9 and after SIGSTOP
//! (no closed socket to help), LIVE when the peer returns, CLOSE (and no
//! DEAD) after a clean stop, a returning old primary fenced by the promoted
//! one, and a third server turned away.

use std::time::Duration;

use e2e::pair::{pair_site, pair_state, pair_up, wait_pair};
use e2e::support::WebhookReceiver;
use e2e::{Instance, eventually};

fn signal(gw: &Instance, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &gw.pid().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} failed");
}

/// The pair events gw-a sent to the webhook, in the order they happened
/// (notices are sent concurrently, so arrival order proves nothing).
fn events_from_gw_a(hook: &WebhookReceiver) -> Vec<String> {
    let mut events: Vec<(String, String)> = hook
        .requests()
        .iter()
        .filter_map(|r| serde_json::from_slice::<serde_json::Value>(&r.body).ok())
        .filter(|v| v["fields"]["instance"] == "gw-a")
        .map(|v| {
            (
                v["fields"]["at"].as_str().unwrap_or("").to_owned(),
                v["event"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    events.sort();
    events.into_iter().map(|(_, e)| e).collect()
}

#[test]
fn paired_servers_see_each_other_die_stall_return_and_stop_cleanly() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let hook = runtime.block_on(WebhookReceiver::start(Vec::new()));
    let site = pair_site(Some(&hook), "");
    let (a, mut b) = pair_up(&site);

    // Status shows the peer, its fingerprint and the state; /health only
    // one word.
    let status: serde_json::Value =
        serde_json::from_str(&site.cli_ok("gw-a", &["pair", "status", "--json"])).unwrap();
    assert_eq!(status["peer"], "gw-b");
    assert_eq!(status["state"], "live");
    assert!(
        status["peer_fingerprint"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
    let health = a.health().1.to_string();
    assert!(
        !health.contains("sha256") && !health.contains("127.0.0.1"),
        "{health}"
    );

    // SIGSTOP: the socket stays open, only the silence tells.
    signal(&b, "-STOP");
    let took = wait_pair(&a, "dead", Duration::from_secs(5));
    eprintln!("DEAD after SIGSTOP detected in {took:?}");
    signal(&b, "-CONT");
    wait_pair(&a, "live", Duration::from_secs(10));
    // The stopped server, resuming, reads what its peer sent meanwhile
    // before judging it: it never calls its healthy peer DEAD.
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !b.log_text().contains("gw-a unreachable since"),
        "{}",
        b.log_text()
    );

    // kill -9, then a restart: DEAD, then LIVE again.
    b.kill9();
    let took = wait_pair(&a, "dead", Duration::from_secs(5));
    eprintln!("DEAD after kill -9 detected in {took:?}");
    let mut b = site.start("gw-b");
    wait_pair(&a, "live", Duration::from_secs(15));
    wait_pair(&b, "live", Duration::from_secs(15));

    // A clean stop is CLOSE, and CLOSE never turns into DEAD.
    b.stop();
    wait_pair(&a, "close", Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(pair_state(&a), "close");
    // Exactly the two failures above were reported as DEAD, each followed
    // by LIVE; the clean stop was CLOSE. Admins got each as a notice.
    let deads = a.log_text().matches("unreachable since").count();
    assert_eq!(deads, 2, "{}", a.log_text());
    let sent = eventually(Duration::from_secs(10), || {
        let events = events_from_gw_a(&hook);
        events.contains(&"peer_close".to_owned()).then_some(events)
    })
    .unwrap_or_else(|| panic!("no CLOSE notice: {:?}", events_from_gw_a(&hook)));
    let pair_events: Vec<&str> = sent
        .iter()
        .map(String::as_str)
        .filter(|e| matches!(*e, "peer_live" | "peer_dead" | "peer_close"))
        .collect();
    assert_eq!(
        pair_events,
        [
            "peer_live",
            "peer_dead",
            "peer_live",
            "peer_dead",
            "peer_live",
            "peer_close"
        ],
        "{sent:?}"
    );
    let dead = hook
        .requests()
        .into_iter()
        .find(|r| String::from_utf8_lossy(&r.body).contains("peer_dead"))
        .unwrap();
    assert!(dead.headers.contains_key("idempotency-key"));
    assert!(
        String::from_utf8_lossy(&dead.body).contains("gw-b unreachable since"),
        "{}",
        String::from_utf8_lossy(&dead.body)
    );
}

/// The returning old primary meets the promoted secondary: the older epoch
/// is fenced, says so, keeps taking jobs, and stays fenced after a restart.
#[test]
fn a_returning_old_primary_is_fenced_by_the_promoted_secondary() {
    let site = pair_site(None, "");
    let (mut a, b) = pair_up(&site);
    a.stop();
    wait_pair(&b, "close", Duration::from_secs(5));
    let promoted = site.cli_ok(
        "gw-b",
        &["license", "promote", &site.vendor.key("03", 1, 5)],
    );
    assert!(promoted.contains("role:        primary"), "{promoted}");
    let b_epoch = b.health().1["epoch"].as_u64().unwrap();

    let a = site.start("gw-a");
    let fenced = eventually(Duration::from_secs(10), || {
        (a.health().1["role"] == "fenced").then_some(())
    });
    assert!(
        fenced.is_some(),
        "the old primary was not fenced:\n{}",
        a.log_text()
    );
    let (status, health) = a.health();
    assert_eq!(status, 200, "a fenced server still takes jobs: {health}");
    assert_eq!(health["fenced"]["by_epoch"], b_epoch);
    assert_eq!(b.health().1["role"], "primary");
    let refused = site.cli("gw-a", &["device", "add", "mfd-9"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("fenced"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    // Still fenced after a restart, with the peer away.
    let mut a = a;
    a.stop();
    let a = site.start("gw-a");
    assert_eq!(a.health().1["role"], "fenced");
}

/// Between real processes: a wrong code is refused with the reason on both
/// sides; once the pair is made no code can be opened, and a third server
/// is turned away in the TLS handshake, logged with its address.
#[test]
fn a_third_server_is_refused_and_the_refusal_is_logged() {
    let site = pair_site(None, "");
    let a = site.start("gw-a");
    let b = site.start("gw-b");
    let c = site.start("gw-c");

    let code = site.cli_ok("gw-a", &["pair", "init"]).trim().to_owned();
    let mut parts: Vec<String> = code.split('.').map(str::to_owned).collect();
    parts[2] = "00".repeat(16);
    let out = site.cli("gw-c", &["pair", "join", &parts.join(".")]);
    assert!(!out.status.success());
    let why = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(why.contains("the pairing code is wrong"), "{why}");
    assert!(
        a.wait_for_log("pairing refused", Duration::from_secs(5)),
        "{}",
        a.log_text()
    );

    // The wrong attempt did not use the code up: gw-b pairs with it.
    site.cli_ok("gw-b", &["pair", "join", &code]);
    wait_pair(&a, "live", Duration::from_secs(10));
    wait_pair(&b, "live", Duration::from_secs(10));

    // Paired: no new code is opened, and the used one lets nobody in.
    let refused = site.cli("gw-a", &["pair", "init"]);
    assert!(!refused.status.success());
    let why = String::from_utf8_lossy(&refused.stderr).into_owned();
    assert!(why.contains("already paired with gw-b"), "{why}");
    let out = site.cli("gw-c", &["pair", "join", &code]);
    assert!(!out.status.success());
    let why = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(why.contains("no pairing code is open"), "{why}");
    assert!(
        a.wait_for_log(
            "pair connection refused in the TLS handshake",
            Duration::from_secs(5)
        ),
        "{}",
        a.log_text()
    );

    // An expired code is refused before anything is sent.
    let mut parts: Vec<String> = code.split('.').map(str::to_owned).collect();
    parts[3] = "1000".into();
    let out = site.cli("gw-c", &["pair", "join", &parts.join(".")]);
    assert!(!out.status.success());
    let why = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(why.contains("the pairing code expired"), "{why}");

    // A client without a certificate fails the handshake on the pair port.
    let status: serde_json::Value =
        serde_json::from_str(&site.cli_ok("gw-a", &["pair", "status", "--json"])).unwrap();
    let port = status["listen"].as_str().expect("gw-a's pair address");
    let curl = std::process::Command::new("curl")
        .args(["-sk", "--max-time", "5", &format!("https://{port}/")])
        .output()
        .expect("curl is installed by `cargo xtask setup`");
    assert!(
        !curl.status.success() && curl.stdout.is_empty(),
        "a client without a certificate got an answer: {:?}",
        String::from_utf8_lossy(&curl.stdout)
    );
    let refusals = || {
        a.log_text()
            .matches("pair connection refused in the TLS handshake")
            .count()
    };
    let seen = eventually(Duration::from_secs(5), || (refusals() >= 2).then_some(()));
    assert!(seen.is_some(), "{}", a.log_text());

    assert_eq!(pair_state(&a), "live");
    assert_eq!(pair_state(&c), "unpaired");
}
