//! Two (or three) real `gateway` processes set up as a pair on loopback:
//! the configuration file, the licenses, pairing with a one-time code, and
//! waiting for the link's state.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::fault::{FaultProxy, Mode};
use crate::support::WebhookReceiver;
use crate::{Instance, Site, eventually, free_port};

/// Instances `gw-a` (activated 03) and `gw-b` (04) with pair ports pointing
/// at each other, and `gw-c` (04), a server never paired that points at
/// `gw-a` too. Pair events go to `hook` when given; `extra` is appended to
/// the file (site sections, `[instances.X]` keys come first in it).
pub fn pair_site(hook: Option<&WebhookReceiver>, extra: &str) -> Site {
    pair_site_with(hook, extra, None)
}

/// The link between the two servers of a [`pair_site_behind_proxies`]: one
/// fault proxy in front of each server's pair port, so a test can cut them
/// apart while both stay up.
pub struct PairLinkProxies {
    /// In front of gw-a's pair port (gw-b's `peer`).
    pub to_a: FaultProxy,
    /// In front of gw-b's pair port (gw-a's `peer`).
    pub to_b: FaultProxy,
}

impl PairLinkProxies {
    /// A partition: every pair connection is reset and new ones refused.
    pub fn partition(&self) {
        for p in [&self.to_a, &self.to_b] {
            p.set_mode(Mode::Refuse);
            p.cut();
        }
    }

    /// The partition heals.
    pub fn heal(&self) {
        for p in [&self.to_a, &self.to_b] {
            p.set_mode(Mode::Pass);
        }
    }
}

/// As [`pair_site`], with each server reaching the other's pair port only
/// through a fault proxy.
pub fn pair_site_behind_proxies(extra: &str) -> (Site, PairLinkProxies) {
    let (pa, pb) = (free_port(), free_port());
    let local = |p: u16| std::net::SocketAddr::from(([127, 0, 0, 1], p));
    let proxies = PairLinkProxies {
        to_a: FaultProxy::start(local(pa)),
        to_b: FaultProxy::start(local(pb)),
    };
    let site = pair_site_with(
        None,
        extra,
        Some((
            (pa, proxies.to_b.addr().port()),
            (pb, proxies.to_a.addr().port()),
        )),
    );
    (site, proxies)
}

/// `ports`: gw-a's (listen, peer) and gw-b's (listen, peer), when given.
fn pair_site_with(
    hook: Option<&WebhookReceiver>,
    extra: &str,
    ports: Option<((u16, u16), (u16, u16))>,
) -> Site {
    let (pa, pb, pc) = (free_port(), free_port(), free_port());
    let ((pa, a_peer), (pb, b_peer)) = ports.unwrap_or(((pa, pb), (pb, pa)));
    let notify = hook.map_or_else(String::new, |h| {
        format!(
            "\n[notify.webhook]\nurl = \"{}\"\nsecret = \"0123456789abcdef0123456789abcdef\"\n",
            h.url()
        )
    });
    let site = Site::new(
        &["gw-a", "gw-b", "gw-c"],
        &format!(
            "{notify}{extra}\n[instances.gw-a.pair]\nlisten = \"127.0.0.1:{pa}\"\npeer = \"127.0.0.1:{a_peer}\"\n\
             \n[instances.gw-b.pair]\nlisten = \"127.0.0.1:{pb}\"\npeer = \"127.0.0.1:{b_peer}\"\n\
             \n[instances.gw-c.pair]\nlisten = \"127.0.0.1:{pc}\"\npeer = \"127.0.0.1:{pa}\"\n\
             \n[defaults.pair]\nheartbeat_interval_ms = 100\ndead_threshold_ms = 600\nreplication_period_secs = 1\n"
        ),
    );
    site.activate("gw-a", "03", 1, 5);
    site.activate("gw-b", "04", 2, 5);
    site.activate("gw-c", "04", 3, 5);
    site
}

/// The one-word pair state of `/health`.
pub fn pair_state(gw: &Instance) -> String {
    gw.health().1["pair"].as_str().unwrap_or("").to_owned()
}

/// Waits until `gw`'s pair state is `state`; returns how long it took.
pub fn wait_pair(gw: &Instance, state: &str, within: Duration) -> Duration {
    let started = Instant::now();
    let seen = eventually(within, || (pair_state(gw) == state).then_some(()));
    assert!(
        seen.is_some(),
        "{}'s pair state never became {state} (it is {}):\n{}",
        gw.name,
        pair_state(gw),
        gw.log_text()
    );
    started.elapsed()
}

/// Pairs two started instances with a one-time code and waits for LIVE.
pub fn pair(site: &Site, a: &Instance, b: &Instance) {
    assert_eq!(pair_state(a), "unpaired");
    let code = site.cli_ok(&a.name, &["pair", "init"]).trim().to_owned();
    assert!(code.starts_with("sgp1."), "{code}");
    let joined = site.cli_ok(&b.name, &["pair", "join", &code]);
    assert!(
        joined.contains(&format!("paired with {}", a.name)),
        "{joined}"
    );
    wait_pair(a, "live", Duration::from_secs(10));
    wait_pair(b, "live", Duration::from_secs(10));
}

/// Starts `gw-a` and `gw-b` and pairs them.
pub fn pair_up(site: &Site) -> (Instance, Instance) {
    let a = site.start("gw-a");
    let b = site.start("gw-b");
    pair(site, &a, &b);
    (a, b)
}

/// The `pair` block of `gateway status --json`.
pub fn pair_status(site: &Site, instance: &str) -> Value {
    let status: Value =
        serde_json::from_str(&site.cli_ok(instance, &["status", "--json"])).expect("status JSON");
    status["pair"].clone()
}

/// Waits until both servers report the same configuration (version and
/// epoch: no lag) with sync `ok`; returns the version.
pub fn wait_in_sync(site: &Site, a: &str, b: &str, within: Duration) -> u64 {
    let mut last = (Value::Null, Value::Null);
    let synced = eventually(within, || {
        let (sa, sb) = (pair_status(site, a), pair_status(site, b));
        let v = sa["config_version"].as_u64()?;
        // The same version number is not enough (two epochs can reach the
        // same number): lag 0 means both hold the same (version, epoch).
        let same = sb["config_version"].as_u64() == Some(v)
            && sa["sync"] == "ok"
            && sb["sync"] == "ok"
            && sa["peer_config_version"].as_u64() == Some(v)
            && sb["peer_config_version"].as_u64() == Some(v)
            && sa["lag_ms"] == 0
            && sb["lag_ms"] == 0;
        last = (sa, sb);
        same.then_some(v)
    });
    synced.unwrap_or_else(|| {
        panic!(
            "{a} and {b} never held the same configuration:\n{a}: {}\n{b}: {}",
            last.0, last.1
        )
    })
}
