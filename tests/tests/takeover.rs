//! Jobs across the pair, part 2, between two real `gateway` processes with a
//! shared folder, a mail sink and a webhook sink, counting raw deliveries at
//! every sink: the survivor takes over the jobs of an owner killed with
//! kill -9 and delivers each once, and the restarted owner never delivers
//! them again; an owner frozen (SIGSTOP) past DEAD and its lease wakes to
//! find its jobs taken and delivers nothing; a killed peer does not hold up
//! the owner's own deliveries beyond the bounded wait; a partition with
//! devices on both sides ends with every job delivered, any extra delivery
//! carrying the same key and reported; a clean stop hands work over.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use e2e::http::{Device, png};
use e2e::pair::{
    pair_site, pair_site_behind_proxies, pair_status, pair_up, wait_in_sync, wait_pair,
};
use e2e::support::{SmtpSink, WebhookReceiver, files_under, header};
use e2e::{Instance, Site, eventually};
use uuid::Uuid;

const SECRET: &str = "0123456789abcdef0123456789abcdef";

/// The three destinations both servers deliver to.
struct Sinks {
    _runtime: tokio::runtime::Runtime,
    smtp: SmtpSink,
    hook: WebhookReceiver,
    shared: tempfile::TempDir,
}

fn sinks() -> Sinks {
    sinks_with_slow_hook(Duration::ZERO)
}

/// Sinks whose webhook answers each request only after `delay`.
fn sinks_with_slow_hook(delay: Duration) -> Sinks {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let hook = runtime.block_on(WebhookReceiver::start_with_delay(Vec::new(), delay));
    Sinks {
        _runtime: runtime,
        smtp: SmtpSink::start(),
        hook,
        shared: tempfile::tempdir().unwrap(),
    }
}

impl Sinks {
    /// A workflow delivering to all three, the folder shared by both
    /// servers.
    fn workflow(&self) -> String {
        format!(
            r#"
[workflows.shared]
steps = [
  {{ plugin = "assemble" }},
  {{ plugin = "folder", root = "{root}", name = "{{job_id}}.pdf" }},
  {{ plugin = "mail", host = "127.0.0.1", port = {port}, tls = "none", from = "scanner@example.test", to = ["archive@example.test"] }},
  {{ plugin = "webhook", url = "{url}", secret = "{SECRET}" }},
]
"#,
            root = self.shared.path().display(),
            port = self.smtp.port,
            url = self.hook.url()
        )
    }

    /// Raw deliveries per job at each sink: (folder, mail, webhook).
    fn deliveries(&self) -> BTreeMap<Uuid, (usize, usize, usize)> {
        let mut counts: BTreeMap<Uuid, (usize, usize, usize)> = BTreeMap::new();
        for path in files_under(self.shared.path()) {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if let Some(id) = name
                .strip_suffix(".pdf")
                .and_then(|s| Uuid::parse_str(s).ok())
            {
                counts.entry(id).or_default().0 += 1;
            }
        }
        for mail in self.smtp.messages() {
            let id = header(&mail, "Message-ID").unwrap_or_default();
            if let Some(job) = uuid_in(&id) {
                counts.entry(job).or_default().1 += 1;
            }
        }
        for r in self.hook.requests() {
            let key = r
                .headers
                .get("idempotency-key")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            if let Some(job) = uuid_in(&key) {
                counts.entry(job).or_default().2 += 1;
            }
        }
        counts
    }

    /// Waits until every job in `jobs` reached every sink; returns when.
    fn wait_delivered(&self, jobs: &[Uuid], within: Duration, context: &dyn Fn() -> String) {
        let done = eventually(within, || {
            let d = self.deliveries();
            jobs.iter()
                .all(|j| d.get(j).is_some_and(|c| c.0 >= 1 && c.1 >= 1 && c.2 >= 1))
                .then_some(())
        });
        assert!(
            done.is_some(),
            "not every job reached every sink: {:?}\n{}",
            self.deliveries(),
            context()
        );
    }

    /// Every job in `jobs` reached each sink exactly once, and nothing
    /// else arrived.
    fn assert_once(&self, jobs: &[Uuid]) {
        let d = self.deliveries();
        for job in jobs {
            assert_eq!(
                d.get(job),
                Some(&(1, 1, 1)),
                "job {job} must reach the folder, the mail sink and the webhook once each: {d:?}"
            );
        }
        let unknown: Vec<_> = d.keys().filter(|k| !jobs.contains(k)).collect();
        assert!(
            unknown.is_empty(),
            "deliveries nobody submitted: {unknown:?}"
        );
    }
}

/// The first job id in a header value (`<id@host>`, `id`, `id-step`).
fn uuid_in(text: &str) -> Option<Uuid> {
    text.split(|c: char| !(c.is_ascii_hexdigit() || c == '-'))
        .filter(|s| s.len() >= 36)
        .find_map(|s| Uuid::parse_str(&s[..36]).ok())
}

/// A LIVE pair delivering to `s`, and the token of a device added on the
/// primary once both hold the same configuration (the device is known to
/// both).
fn paired(s: &Sinks) -> (Site, Instance, Instance, String) {
    let site = pair_site(None, &s.workflow());
    let (a, b) = pair_up(&site);
    wait_in_sync(&site, "gw-a", "gw-b", Duration::from_secs(10));
    let token = site.add_device("gw-a", "mfd-1");
    wait_in_sync(&site, "gw-a", "gw-b", Duration::from_secs(5));
    (site, a, b, token)
}

/// Submits `n` one-page jobs to `gw` as a new device session; each must be
/// acknowledged with the peer's copy stored when `replicated` says so.
fn submit(gw: &Instance, token: &str, n: usize, replicated: bool) -> Vec<Uuid> {
    let dev = Device::new(&gw.plain(), token);
    let session = dev.login("alice");
    (0..n)
        .map(|i| {
            let job = Uuid::new_v4();
            let ack = dev.submit(
                &session,
                job,
                "shared",
                &[png(20_000, job.as_u128() as u64 ^ i as u64)],
            );
            assert_eq!(ack.status, 201, "{}", String::from_utf8_lossy(&ack.body));
            assert_eq!(ack.json()["replicated"], replicated, "{}", ack.json());
            job
        })
        .collect()
}

fn events(site: &Site, instance: &str, kind: &str) -> u64 {
    pair_status(site, instance)["jobs"]["events"][kind]
        .as_u64()
        .unwrap_or(0)
}

/// Waits until `instance` counts `n` events of `kind` (status refreshes
/// the counts about once a second).
fn wait_events(site: &Site, instance: &str, kind: &str, n: u64) {
    let seen = eventually(Duration::from_secs(5), || {
        (events(site, instance, kind) == n).then_some(())
    });
    assert!(
        seen.is_some(),
        "{instance} counts {} `{kind}` event(s), not {n}: {}",
        events(site, instance, kind),
        pair_status(site, instance)
    );
}

fn logs(instances: &[&Instance]) -> String {
    instances
        .iter()
        .map(|i| format!("---- {} ----\n{}", i.name, i.log_text()))
        .collect()
}

#[test]
fn jobs_of_an_owner_killed_at_once_are_delivered_once_by_the_survivor_and_never_again() {
    let s = sinks();
    let (site, mut a, b, token) = paired(&s);
    // Held on the owner, so nothing is delivered before it dies.
    site.cli_ok("gw-a", &["pipeline", "pause"]);
    let jobs = submit(&a, &token, 4, true);
    let killed = Instant::now();
    a.kill9();

    s.wait_delivered(&jobs, Duration::from_secs(30), &|| logs(&[&b]));
    eprintln!(
        "kill -9 to every job delivered by the survivor: {:?}",
        killed.elapsed()
    );
    s.assert_once(&jobs);
    let status = pair_status(&site, "gw-b");
    assert_eq!(status["jobs"]["takeovers"], 1, "{status}");
    wait_events(&site, "gw-b", "takeover", 1);
    assert!(
        b.log_text()
            .contains("took over 4 unfinished job(s) of gw-a")
    );
    let history: serde_json::Value =
        serde_json::from_str(&site.cli_ok("gw-b", &["pair", "events", "--json"])).unwrap();
    let takeover = &history["events"][0];
    assert_eq!(takeover["kind"], "takeover", "{history}");
    assert_eq!(takeover["peer"], "gw-a", "{history}");
    assert!(
        takeover["detail"]
            .as_str()
            .unwrap()
            .contains("(takeover 1 at epoch"),
        "{history}"
    );
    let folders = eventually(Duration::from_secs(5), || {
        let f = pair_status(&site, "gw-b")["jobs"]["per_server_folders"].clone();
        (f == serde_json::json!(["scan-to-folder"])).then_some(())
    });
    assert!(
        folders.is_some(),
        "the {{data_dir}} folder workflow is pointed out, the shared one is not: {}",
        pair_status(&site, "gw-b")
    );
    let text = site.cli_ok("gw-b", &["pair", "events"]);
    assert!(text.contains("takeover") && text.contains("gw-a"), "{text}");

    // The owner comes back and resumes its pipeline: it learns the jobs
    // were taken and delivers none of them again.
    let a = site.start("gw-a");
    wait_pair(&a, "live", Duration::from_secs(10));
    site.cli_ok("gw-a", &["pipeline", "resume"]);
    let applied = eventually(Duration::from_secs(10), || {
        (pair_status(&site, "gw-a")["jobs"]["takeovers_applied"] == 1).then_some(())
    });
    assert!(applied.is_some(), "{}", logs(&[&a, &b]));
    assert!(a.wait_for_log("took over 4 job(s) of gw-a", Duration::from_secs(5)));
    std::thread::sleep(Duration::from_secs(3));
    s.assert_once(&jobs);
    // Both servers agree the jobs are done, and whose they are.
    let done = eventually(Duration::from_secs(10), || {
        let list = site.cli_ok("gw-a", &["job", "list", "--state", "done"]);
        jobs.iter()
            .all(|j| list.contains(&j.to_string()))
            .then_some(())
    });
    assert!(done.is_some(), "gw-a never learnt the jobs were done");
    // Both keep serving with leases again.
    let leased = eventually(Duration::from_secs(5), || {
        (pair_status(&site, "gw-a")["jobs"]["permit"] == "leased"
            && pair_status(&site, "gw-b")["jobs"]["permit"] == "leased")
            .then_some(())
    });
    assert!(leased.is_some(), "{}", logs(&[&a, &b]));
}

#[test]
fn a_frozen_owner_that_wakes_after_the_takeover_delivers_nothing_twice() {
    let s = sinks();
    let (site, a, b, token) = paired(&s);
    // Delivered normally first: the pipeline works on both.
    let warm = submit(&a, &token, 1, true);
    s.wait_delivered(&warm, Duration::from_secs(20), &|| logs(&[&a]));
    site.cli_ok("gw-a", &["pipeline", "pause"]);
    let jobs = submit(&a, &token, 3, true);

    // Frozen longer than DEAD (600 ms) plus the lease and its margin.
    a.sigstop();
    s.wait_delivered(&jobs, Duration::from_secs(30), &|| logs(&[&b]));
    std::thread::sleep(Duration::from_millis(500));
    a.sigcont();
    wait_pair(&a, "live", Duration::from_secs(10));
    wait_pair(&b, "live", Duration::from_secs(10));
    site.cli_ok("gw-a", &["pipeline", "resume"]);
    let applied = eventually(Duration::from_secs(10), || {
        (pair_status(&site, "gw-a")["jobs"]["takeovers_applied"] == 1).then_some(())
    });
    assert!(applied.is_some(), "{}", logs(&[&a, &b]));
    std::thread::sleep(Duration::from_secs(3));
    let all: Vec<Uuid> = warm.iter().chain(&jobs).copied().collect();
    s.assert_once(&all);
    wait_events(&site, "gw-b", "takeover", 1);
    assert_eq!(
        events(&site, "gw-a", "possible_duplicate"),
        0,
        "nothing ran on both"
    );
    // New work still flows through the woken owner.
    let after = submit(&a, &token, 1, true);
    s.wait_delivered(&after, Duration::from_secs(20), &|| logs(&[&a, &b]));
    let all: Vec<Uuid> = all.into_iter().chain(after).collect();
    s.assert_once(&all);
}

#[test]
fn a_killed_peer_holds_up_the_owners_deliveries_only_for_the_bounded_wait() {
    let s = sinks();
    let (site, a, mut b, token) = paired(&s);
    site.cli_ok("gw-a", &["pipeline", "pause"]);
    let jobs = submit(&a, &token, 3, true);
    b.kill9();
    let killed = Instant::now();
    // Resumed only once the lease the dead peer granted is over: every
    // delivery below starts without one.
    let lapsed = eventually(Duration::from_secs(10), || {
        (pair_status(&site, "gw-a")["jobs"]["permit"] != "leased").then_some(())
    });
    assert!(lapsed.is_some(), "{}", logs(&[&a]));
    site.cli_ok("gw-a", &["pipeline", "resume"]);
    s.wait_delivered(&jobs, Duration::from_secs(20), &|| logs(&[&a]));
    let took = killed.elapsed();
    s.assert_once(&jobs);
    // DEAD after 600 ms of silence; the lease ran out at about the same
    // time: the owner goes on alone well within a few seconds.
    assert!(
        took < Duration::from_secs(8),
        "the owner's deliveries waited {took:?} for a dead peer"
    );
    assert_eq!(pair_status(&site, "gw-a")["jobs"]["permit"], "alone");
    assert_eq!(pair_status(&site, "gw-a")["state"], "dead");
}

#[test]
fn a_clean_stop_hands_the_jobs_over_and_nothing_waits_for_the_stopped_server() {
    let s = sinks();
    let (site, mut a, b, token) = paired(&s);
    site.cli_ok("gw-a", &["pipeline", "pause"]);
    let jobs = submit(&a, &token, 3, true);
    let stopping = Instant::now();
    a.stop();
    let took = stopping.elapsed();
    wait_pair(&b, "close", Duration::from_secs(5));
    // The peer got them before the stop was announced and delivers them
    // without waiting for gw-a to return.
    s.wait_delivered(&jobs, Duration::from_secs(20), &|| logs(&[&b]));
    s.assert_once(&jobs);
    assert!(
        took < Duration::from_secs(10),
        "the clean stop took {took:?}"
    );
    assert!(
        a.log_text().contains("handed 3 unfinished job(s) to gw-b"),
        "{}",
        a.log_text()
    );
    let a = site.start("gw-a");
    wait_pair(&a, "live", Duration::from_secs(10));
    let recorded = eventually(Duration::from_secs(5), || {
        (events(&site, "gw-a", "handover") == 1).then_some(())
    });
    assert!(
        recorded.is_some(),
        "the handover is in gw-a's event history"
    );
    site.cli_ok("gw-a", &["pipeline", "resume"]);
    std::thread::sleep(Duration::from_secs(3));
    s.assert_once(&jobs);
    assert_eq!(
        events(&site, "gw-b", "takeover"),
        0,
        "a clean stop is no takeover"
    );
}

#[test]
fn a_partition_with_devices_on_both_sides_delivers_every_job_and_reports_any_extra_copy() {
    let s = sinks();
    let (site, proxies) = pair_site_behind_proxies(&s.workflow());
    let (a, b) = pair_up(&site);
    wait_in_sync(&site, "gw-a", "gw-b", Duration::from_secs(10));
    let token = site.add_device("gw-a", "mfd-1");
    wait_in_sync(&site, "gw-a", "gw-b", Duration::from_secs(5));
    // Replicated, then held on the owner while the two are cut apart.
    site.cli_ok("gw-a", &["pipeline", "pause"]);
    let before = submit(&a, &token, 2, true);
    proxies.partition();
    wait_pair(&a, "dead", Duration::from_secs(10));
    wait_pair(&b, "dead", Duration::from_secs(10));
    site.cli_ok("gw-a", &["pipeline", "resume"]);
    // Devices on both sides go on submitting.
    let on_a = submit(&a, &token, 2, false);
    let on_b = submit(&b, &token, 2, false);
    let all: Vec<Uuid> = before.iter().chain(&on_a).chain(&on_b).copied().collect();
    s.wait_delivered(&all, Duration::from_secs(30), &|| logs(&[&a, &b]));
    proxies.heal();
    wait_pair(&a, "live", Duration::from_secs(15));
    wait_pair(&b, "live", Duration::from_secs(15));
    let settled = eventually(Duration::from_secs(15), || {
        (pair_status(&site, "gw-a")["jobs"]["takeovers_applied"] == 1).then_some(())
    });
    assert!(settled.is_some(), "{}", logs(&[&a, &b]));
    std::thread::sleep(Duration::from_secs(2));

    // Every job delivered; an extra delivery only for the jobs both ran,
    // each with the same key (one folder file: the second copy refused),
    // and each reported by the owner that learnt of the takeover.
    let d = s.deliveries();
    let reported = events(&site, "gw-a", "possible_duplicate");
    eprintln!(
        "deliveries (folder, mail, webhook) per job: {d:?}; possible duplicates reported: {reported}"
    );
    let mut extra_jobs = 0;
    for job in &all {
        let (folder, mail, hook) = d[job];
        assert_eq!(folder, 1, "job {job}: one file in the shared folder: {d:?}");
        assert!(
            (1..=2).contains(&mail) && (1..=2).contains(&hook),
            "{job}: {d:?}"
        );
        if mail == 2 || hook == 2 {
            assert!(
                before.contains(job),
                "only a replicated job may run on both: {job}"
            );
            extra_jobs += 1;
        }
    }
    // The extra copies carry the very same keys as the first.
    for job in d
        .iter()
        .filter(|(_, c)| c.1 == 2 || c.2 == 2)
        .map(|(j, _)| *j)
    {
        let ids: Vec<String> = s
            .smtp
            .messages()
            .iter()
            .filter_map(|m| header(m, "Message-ID"))
            .filter(|h| uuid_in(h) == Some(job))
            .collect();
        assert!(ids.windows(2).all(|w| w[0] == w[1]), "{job}: {ids:?}");
        let keys: Vec<String> = s
            .hook
            .requests()
            .iter()
            .filter_map(|r| {
                r.headers
                    .get("idempotency-key")?
                    .to_str()
                    .ok()
                    .map(str::to_owned)
            })
            .filter(|k| uuid_in(k) == Some(job))
            .collect();
        assert!(keys.windows(2).all(|w| w[0] == w[1]), "{job}: {keys:?}");
    }
    let refused =
        events(&site, "gw-a", "second_copy_refused") + events(&site, "gw-b", "second_copy_refused");
    assert_eq!(
        refused as usize, extra_jobs,
        "each second copy of a document is refused by the shared folder and reported"
    );
    assert!(
        reported as usize >= extra_jobs,
        "{extra_jobs} job(s) delivered twice, {reported} reported:\n{}",
        logs(&[&a, &b])
    );
    let unknown: Vec<_> = d.keys().filter(|k| !all.contains(k)).collect();
    assert!(
        unknown.is_empty(),
        "deliveries nobody submitted: {unknown:?}"
    );
}

#[test]
fn an_owner_killed_while_a_destination_accepts_the_document_is_exception_one_reported_by_the_survivor()
 {
    // The webhook takes the document at once and answers after 5 s: the
    // owner dies inside the delivery step, after the destination has it.
    let s = sinks_with_slow_hook(Duration::from_secs(5));
    let (site, mut a, b, token) = paired(&s);
    let jobs = submit(&a, &token, 1, true);
    let reached = eventually(Duration::from_secs(20), || {
        (s.deliveries().get(&jobs[0]).is_some_and(|c| c.2 == 1)).then_some(())
    });
    assert!(reached.is_some(), "{}", logs(&[&a]));
    a.kill9();

    // The survivor knew the delivery step had begun (the owner starts a
    // delivery only once its peer confirmed that): it redoes it with the
    // same key, and says so.
    let twice = eventually(Duration::from_secs(30), || {
        (s.deliveries().get(&jobs[0]).is_some_and(|c| c.2 == 2)).then_some(())
    });
    assert!(twice.is_some(), "{:?}\n{}", s.deliveries(), logs(&[&b]));
    let keys: Vec<String> = s
        .hook
        .requests()
        .iter()
        .filter_map(|r| {
            r.headers
                .get("idempotency-key")?
                .to_str()
                .ok()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(keys.len(), 2);
    assert_eq!(
        keys[0], keys[1],
        "the repeated delivery carries the same key"
    );
    wait_events(&site, "gw-b", "possible_duplicate", 1);
    let history: serde_json::Value =
        serde_json::from_str(&site.cli_ok("gw-b", &["pair", "events", "--json"])).unwrap();
    let reported = history["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "possible_duplicate")
        .cloned()
        .unwrap();
    assert_eq!(reported["job_id"], jobs[0].to_string(), "{history}");
    assert!(
        reported["detail"].as_str().unwrap().contains("(webhook)"),
        "{reported}"
    );
    // The folder and the mail, done before the kill, were not repeated.
    let d = s.deliveries();
    assert_eq!((d[&jobs[0]].0, d[&jobs[0]].1), (1, 1), "{d:?}");
}
