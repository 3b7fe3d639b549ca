//! The checker run after every fault scenario and at the end of the soak.
//! It reads every device's account of its jobs, both servers' status and
//! pair events, and every sink, and decides whether the product's claims
//! held:
//!
//! 1. every acknowledged job reached every destination of its workflow
//!    (the shared folder, the mail sink, the webhook sink), counting raw
//!    deliveries;
//! 2. any delivery beyond the first is one of the two documented
//!    exceptions: with the same idempotency key as the first, for a job
//!    the servers reported to the admin (`possible_duplicate`, or
//!    `second_copy_refused` where the shared folder refused the copy), and
//!    more than one extra at a destination only with as many reports
//!    naming that step;
//! 3. nothing was delivered that no device submitted;
//! 4. both servers hold the same configuration: version, epoch and the
//!    checksum of the exported configuration;
//! 5. no (epoch, version) ever named two different configurations (from
//!    samples taken through the scenario, and the end);
//! 6. two servers that could reach each other were never both primary
//!    (sampled by the scenario's watcher);
//! 7. no job ended dead-lettered on either server (the scenarios'
//!    workflows have no step that fails on its own).
//!
//! A failure names the scenario, its seed and the job ids involved. It never
//! relaxes a rule to fit what it sees.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::Duration;

use serde_json::Value;
use uuid::Uuid;

use super::devices::{DeviceJob, device_jobs};
use super::{SERVERS, Scenario, uuid_in};
use crate::support::{files_under, header};

/// The keys one job arrived with at each destination, one entry per raw
/// delivery.
#[derive(Clone, Debug, Default)]
pub struct Arrivals {
    /// File names in the shared folder.
    pub folder: Vec<String>,
    /// `Message-ID` of each mail.
    pub mail: Vec<String>,
    /// `Idempotency-Key` of each webhook request.
    pub webhook: Vec<String>,
    /// Hidden temporary files of folder attempts cut off by a crash
    /// (`.NAME.RANDOM.partial`, as the folder step documents): never a
    /// delivered document, so not counted as one.
    pub partials: Vec<String>,
}

impl Arrivals {
    fn counts(&self) -> [usize; 3] {
        [self.folder.len(), self.mail.len(), self.webhook.len()]
    }
}

/// One server's view at the end.
#[derive(Clone, Debug, Default)]
pub struct ServerView {
    pub status: Value,
    pub events: Vec<Value>,
    /// Dead-lettered jobs (`job list --state failed`): id and reason.
    pub failed: Vec<(Uuid, String)>,
    pub config_checksum: Option<String>,
    pub epoch: Option<String>,
    pub config_version: Option<u64>,
}

/// Everything the checker reads.
#[derive(Debug)]
pub struct Evidence {
    pub scenario: String,
    pub seed: u64,
    pub devices: BTreeMap<Uuid, DeviceJob>,
    pub arrivals: BTreeMap<Uuid, Arrivals>,
    /// Deliveries whose key names no job id at all.
    pub unreadable: Vec<String>,
    pub servers: [ServerView; 2],
    /// (epoch, version) → checksums seen under it (and by which server).
    pub stamps: BTreeMap<(String, u64), BTreeMap<String, String>>,
    pub two_primaries: Vec<String>,
    pub watch_samples: u64,
    pub timeline: Vec<String>,
}

/// What the checker found; `failures` empty means every claim held.
#[derive(Debug, Default)]
pub struct CheckReport {
    pub jobs_submitted: usize,
    pub jobs_acknowledged: usize,
    /// Acknowledged jobs missing at some destination.
    pub lost: Vec<Uuid>,
    /// Jobs delivered more than once somewhere.
    pub duplicated: Vec<Uuid>,
    /// Of those, the ones that are documented, reported exceptions.
    pub documented: Vec<Uuid>,
    /// Jobs delivered that no device submitted.
    pub unknown: Vec<Uuid>,
    pub failures: Vec<String>,
    /// Reported `possible_duplicate` events, by server.
    pub reported_duplicates: usize,
    pub second_copies_refused: usize,
}

impl CheckReport {
    pub fn ok(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Raw deliveries at the three sinks, per job.
pub fn arrivals(s: &Scenario) -> (BTreeMap<Uuid, Arrivals>, Vec<String>) {
    let mut map: BTreeMap<Uuid, Arrivals> = BTreeMap::new();
    let mut unreadable = Vec::new();
    for path in files_under(s.sinks.shared.path()) {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let partial = name.starts_with('.') && name.ends_with(".partial");
        match uuid_in(&name) {
            Some(id) if partial => map.entry(id).or_default().partials.push(name),
            Some(id) => map.entry(id).or_default().folder.push(name),
            None => unreadable.push(format!("folder file {name}")),
        }
    }
    for mail in s.sinks.smtp.messages() {
        let id = header(&mail, "Message-ID").unwrap_or_default();
        match uuid_in(&id) {
            Some(job) => map.entry(job).or_default().mail.push(id),
            None => unreadable.push(format!("mail with Message-ID {id:?}")),
        }
    }
    for r in s.sinks.hook.requests() {
        let key = r
            .headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        match uuid_in(&key) {
            Some(job) => map.entry(job).or_default().webhook.push(key),
            None => unreadable.push(format!("webhook with Idempotency-Key {key:?}")),
        }
    }
    (map, unreadable)
}

/// Waits (bounded) until every acknowledged job reached all three sinks,
/// then a little longer so late extra deliveries are counted too.
pub fn wait_delivered(s: &Scenario, within: Duration) {
    let acked: Vec<Uuid> = device_jobs(&s.runs, &s.outbox)
        .into_iter()
        .filter(|(_, j)| j.acknowledged)
        .map(|(id, _)| id)
        .collect();
    let done = crate::eventually(within, || {
        let (a, _) = arrivals(s);
        acked
            .iter()
            .all(|id| {
                a.get(id)
                    .is_some_and(|x| x.counts().iter().all(|n| *n >= 1))
            })
            .then_some(())
    });
    if done.is_none() {
        s.note(&format!(
            "not every acknowledged job reached every sink within {within:?}; checking anyway"
        ));
    }
    // Retries and a takeover's repeats come within a few seconds.
    std::thread::sleep(Duration::from_secs(3));
}

/// Reads everything: devices, sinks, both servers.
pub fn gather(s: &mut Scenario) -> Evidence {
    s.sample_config();
    let mut devices = device_jobs(&s.runs, &s.outbox);
    let (arrivals, unreadable) = arrivals(s);
    // A device client killed between clearing a job from its outbox and
    // writing the acknowledgement to its report leaves no record of the
    // job at the device. The servers know who submitted what: a delivered
    // job the reports do not name is looked up, with each device's token,
    // on both servers (a job is answered only to its own device).
    for id in arrivals
        .keys()
        .filter(|id| !devices.contains_key(*id))
        .copied()
        .collect::<Vec<_>>()
    {
        'found: for (i, server) in SERVERS.iter().enumerate() {
            if s.servers[i].is_none() {
                continue;
            }
            let addr = s.plain(i).to_string();
            for (name, token) in &s.devices {
                let answer = crate::http::Device::new(&addr, token).job(id);
                if answer.status == 200 {
                    s.note(&format!(
                        "job {id}: not in any device report; {server} holds it from device {name}"
                    ));
                    devices.insert(
                        id,
                        DeviceJob {
                            device: name.clone(),
                            outcome: "server".to_owned(),
                            acknowledged: false,
                            server: None,
                        },
                    );
                    break 'found;
                }
            }
        }
    }
    let mut servers: [ServerView; 2] = Default::default();
    for (i, view) in servers.iter_mut().enumerate() {
        let within = Duration::from_secs(30);
        if let Some(out) = s.cli(i, &["pair", "status", "--json"], within) {
            view.status = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        }
        // The admin channel answers at most 10 000 events.
        let asked = std::time::Instant::now();
        let events = s.cli(i, &["pair", "events", "--json", "--limit", "10000"], within);
        s.note(&format!(
            "{}: `pair events` answered in {:.1} s",
            SERVERS[i],
            asked.elapsed().as_secs_f64()
        ));
        match events {
            Some(out) if out.status.success() => {
                let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
                view.events = v["events"].as_array().cloned().unwrap_or_default();
            }
            other => s.note(&format!(
                "{}: `pair events` failed: {:?}",
                SERVERS[i],
                other.map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
            )),
        }
        match s.cli(i, &["job", "list", "--state", "failed"], within) {
            Some(out) if out.status.success() => {
                let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
                let jobs = v.as_array().or_else(|| v["jobs"].as_array());
                view.failed = jobs
                    .into_iter()
                    .flatten()
                    .filter_map(|j| {
                        let id = Uuid::parse_str(j["id"].as_str()?).ok()?;
                        Some((id, j["reason"].as_str().unwrap_or_default().to_owned()))
                    })
                    .collect();
            }
            other => s.note(&format!(
                "{}: `job list --state failed` failed: {:?}",
                SERVERS[i],
                other.map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
            )),
        }
        if let Some((epoch, version, sum)) = s.config_stamp(i) {
            view.epoch = Some(epoch);
            view.config_version = Some(version);
            view.config_checksum = Some(sum);
        }
    }
    let watch = s.watch.lock().unwrap();
    Evidence {
        scenario: s.name.clone(),
        seed: s.seed,
        devices,
        arrivals,
        unreadable,
        servers,
        stamps: s.stamps.clone(),
        two_primaries: watch.two_primaries.clone(),
        watch_samples: watch.samples,
        timeline: s.timeline.lock().unwrap().clone(),
    }
}

/// The destinations, in the order of [`Arrivals::counts`], as the
/// gateway's reports name their plugins.
const SINKS: [&str; 3] = ["folder", "mail", "webhook"];

/// Applies every rule to the evidence.
pub fn check(e: &Evidence) -> CheckReport {
    let mut r = CheckReport {
        jobs_submitted: e.devices.len(),
        jobs_acknowledged: e.devices.values().filter(|j| j.acknowledged).count(),
        ..CheckReport::default()
    };
    // Jobs the servers reported to the admin as possibly delivered twice.
    let mut reported: BTreeSet<Uuid> = BTreeSet::new();
    // Reports per (job, destination): each repeated delivery step is one.
    let mut reports_at: BTreeMap<(Uuid, usize), usize> = BTreeMap::new();
    let mut refused: BTreeSet<Uuid> = BTreeSet::new();
    for view in &e.servers {
        for ev in &view.events {
            let Some(id) = ev["job_id"].as_str().and_then(|t| Uuid::parse_str(t).ok()) else {
                continue;
            };
            match ev["kind"].as_str() {
                Some("possible_duplicate") => {
                    r.reported_duplicates += 1;
                    reported.insert(id);
                    // The report names the step's plugin: "step 4 (webhook) of job …".
                    let detail = ev["detail"].as_str().unwrap_or_default();
                    for (i, sink) in SINKS.iter().enumerate() {
                        if detail.contains(&format!("({sink})")) {
                            *reports_at.entry((id, i)).or_default() += 1;
                        }
                    }
                }
                Some("second_copy_refused") => {
                    r.second_copies_refused += 1;
                    refused.insert(id);
                }
                // One id accepted on both sides of a partition and started
                // on both (exception 2): the report covers every
                // destination of the job once.
                Some("job_delivered_by_both") => {
                    reported.insert(id);
                    for i in 0..SINKS.len() {
                        let told = reports_at.entry((id, i)).or_default();
                        *told = (*told).max(1);
                    }
                }
                _ => {}
            }
        }
    }

    // 1. Every acknowledged job at every destination.
    for (id, job) in e.devices.iter().filter(|(_, j)| j.acknowledged) {
        let counts = e.arrivals.get(id).map_or([0; 3], Arrivals::counts);
        if counts.contains(&0) {
            r.lost.push(*id);
            r.failures.push(format!(
                "acknowledged job {id} (device {}, acknowledged by {:?}) lost: deliveries \
                 (folder, mail, webhook) = {counts:?}",
                job.device, job.server
            ));
        }
    }

    // 2. Extra deliveries: the documented exceptions only.
    for (id, a) in &e.arrivals {
        let counts = a.counts();
        if counts.iter().all(|n| *n <= 1) {
            continue;
        }
        r.duplicated.push(*id);
        let mut why = Vec::new();
        // Every extra delivery matches a report the servers made of a
        // repeated step at that destination (a job cut short twice, by two
        // faults, may be repeated twice, and is then reported twice).
        for (i, sink) in SINKS.iter().enumerate() {
            let extra = counts[i].saturating_sub(1);
            let told = reports_at.get(&(*id, i)).copied().unwrap_or(0);
            if extra > 1 && extra > told {
                why.push(format!(
                    "{extra} extra deliveries to the {sink} sink, {told} reported \
                     (possible_duplicate events naming that step)"
                ));
            }
        }
        if a.folder.len() > 1 {
            why.push(format!(
                "two files in the shared folder, which must refuse a second copy: {:?}",
                a.folder
            ));
        }
        for (sink, keys) in [("mail", &a.mail), ("webhook", &a.webhook)] {
            if keys.windows(2).any(|w| w[0] != w[1]) {
                why.push(format!("{sink} copies with different keys: {keys:?}"));
            }
        }
        if !reported.contains(id) {
            why.push(format!(
                "delivered {counts:?} times and never reported to the admin \
                 (no possible_duplicate or job_delivered_by_both event on either server)"
            ));
        }
        if why.is_empty() {
            r.documented.push(*id);
        } else {
            r.failures.push(format!(
                "job {id}: silent or undocumented duplicate: {}",
                why.join("; ")
            ));
        }
    }
    // A second copy the folder refused is a second delivery attempt: it
    // must be one a server also reported.
    for id in &refused {
        if !reported.contains(id) {
            r.failures.push(format!(
                "job {id}: the shared folder refused a second copy, and no server reported \
                 the job as a possible duplicate"
            ));
        }
    }

    // 3. Nothing nobody submitted.
    for id in e.arrivals.keys() {
        if !e.devices.contains_key(id) {
            r.unknown.push(*id);
            r.failures
                .push(format!("job {id} was delivered but no device submitted it"));
        }
    }
    for u in &e.unreadable {
        r.failures.push(format!("a delivery names no job id: {u}"));
    }

    // 4. One configuration on both servers.
    let [a, b] = &e.servers;
    match (
        (&a.config_checksum, a.config_version, &a.epoch),
        (&b.config_checksum, b.config_version, &b.epoch),
    ) {
        ((Some(ca), Some(va), Some(ea)), (Some(cb), Some(vb), Some(eb))) => {
            if (ca, va, ea) != (cb, vb, eb) {
                r.failures.push(format!(
                    "configuration not converged: gw-a has version {va} of epoch {ea} \
                     (checksum {ca}), gw-b version {vb} of epoch {eb} (checksum {cb})"
                ));
            }
        }
        _ => r.failures.push(format!(
            "the configuration of both servers could not be read: gw-a {:?}, gw-b {:?}",
            (&a.config_checksum, a.config_version, &a.epoch),
            (&b.config_checksum, b.config_version, &b.epoch)
        )),
    }

    // 5. No (epoch, version) with two configurations.
    for ((epoch, version), sums) in &e.stamps {
        if sums.len() > 1 {
            r.failures.push(format!(
                "two different configurations carry epoch {epoch}, version {version}: {sums:?}"
            ));
        }
    }

    // 6. Never two primaries that reach each other.
    if e.watch_samples == 0 {
        r.failures
            .push("the watcher never read both servers' health: rule 6 unchecked".to_owned());
    }
    for line in &e.two_primaries {
        r.failures.push(format!("two primaries: {line}"));
    }

    // 7. No job dead-lettered: the scenarios' workflows have no step that
    // fails on its own, so a failed job is a fault the pair let through.
    for (view, name) in e.servers.iter().zip(SERVERS) {
        for (id, reason) in &view.failed {
            r.failures
                .push(format!("job {id} ended failed on {name}: {reason}"));
        }
    }
    r
}

/// Gathers, checks, prints a summary and panics on any failure with the
/// scenario, its seed, the jobs involved, the timeline and the logs.
pub fn assert_claims(s: &mut Scenario, within: Duration) -> CheckReport {
    wait_delivered(s, within);
    let e = gather(s);
    let r = check(&e);
    eprintln!("{}", summary(&e, &r));
    if !r.ok() {
        let mut text = format!(
            "scenario {} (seed {}; rerun with {}={}) broke a claim:\n",
            e.scenario,
            e.seed,
            super::SEED_ENV,
            e.seed
        );
        for f in &r.failures {
            let _ = writeln!(text, "  - {f}");
        }
        let _ = writeln!(text, "timeline:");
        for t in &e.timeline {
            let _ = writeln!(text, "  {t}");
        }
        for (i, v) in e.servers.iter().enumerate() {
            let _ = writeln!(text, "{} pair status: {}", SERVERS[i], v.status);
        }
        let involved: BTreeSet<Uuid> = r.failures.iter().filter_map(|f| uuid_in(f)).collect();
        text += &s.job_lines(&involved, 40);
        text += &s.logs();
        panic!("{text}");
    }
    r
}

/// One paragraph: what was submitted, acknowledged, delivered.
pub fn summary(e: &Evidence, r: &CheckReport) -> String {
    format!(
        "scenario {} (seed {}): {} jobs submitted, {} acknowledged; {} lost; {} delivered more \
         than once ({} documented exceptions, reported: {} possible_duplicate events, {} \
         second copies refused); {} delivered unsubmitted; {} hidden partial file(s) left in \
         the folder by cut-off attempts; configuration {:?} on both; {} watcher samples; {} \
         failure(s)",
        e.scenario,
        e.seed,
        r.jobs_submitted,
        r.jobs_acknowledged,
        r.lost.len(),
        r.duplicated.len(),
        r.documented.len(),
        r.reported_duplicates,
        r.second_copies_refused,
        r.unknown.len(),
        e.arrivals.values().map(|a| a.partials.len()).sum::<usize>(),
        e.servers
            .iter()
            .map(|v| (v.epoch.clone(), v.config_version, v.config_checksum.clone()))
            .collect::<Vec<_>>(),
        e.watch_samples,
        r.failures.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn evidence() -> Evidence {
        Evidence {
            scenario: "unit".into(),
            seed: 1,
            devices: BTreeMap::new(),
            arrivals: BTreeMap::new(),
            unreadable: Vec::new(),
            servers: Default::default(),
            stamps: BTreeMap::new(),
            two_primaries: Vec::new(),
            watch_samples: 1,
            timeline: Vec::new(),
        }
    }

    fn same_config(e: &mut Evidence) {
        for v in &mut e.servers {
            v.config_checksum = Some("c".into());
            v.config_version = Some(3);
            v.epoch = Some("1/x".into());
        }
    }

    fn acked(e: &mut Evidence, id: Uuid) {
        e.devices.insert(
            id,
            DeviceJob {
                device: "mfd-01".into(),
                outcome: "acknowledged".into(),
                acknowledged: true,
                server: None,
            },
        );
    }

    fn arrive(e: &mut Evidence, id: Uuid, folder: usize, mail: usize, hook: usize) {
        let a = e.arrivals.entry(id).or_default();
        a.folder.extend((0..folder).map(|_| format!("{id}.pdf")));
        a.mail.extend((0..mail).map(|_| format!("<{id}@x>")));
        a.webhook.extend((0..hook).map(|_| id.to_string()));
    }

    #[test]
    fn every_rule_fails_when_its_claim_is_broken() {
        let mut e = evidence();
        same_config(&mut e);
        let (ok, lost, dup, reported) = (
            Uuid::new_v4(),
            Uuid::new_v4(),
            Uuid::new_v4(),
            Uuid::new_v4(),
        );
        for id in [ok, lost, dup, reported] {
            acked(&mut e, id);
        }
        arrive(&mut e, ok, 1, 1, 1);
        arrive(&mut e, lost, 1, 0, 1);
        arrive(&mut e, dup, 1, 2, 1);
        arrive(&mut e, reported, 1, 1, 2);
        e.servers[1].events.push(serde_json::json!({
            "kind": "possible_duplicate", "job_id": reported.to_string()
        }));
        let stranger = Uuid::new_v4();
        arrive(&mut e, stranger, 1, 1, 1);
        let r = check(&e);
        assert_eq!(r.lost, vec![lost]);
        assert_eq!(r.documented, vec![reported]);
        assert_eq!(r.unknown, vec![stranger]);
        assert!(r.failures.iter().any(|f| f.contains(&dup.to_string())));
        assert_eq!(r.failures.len(), 3, "{:#?}", r.failures);

        // Two extra webhook deliveries: documented only when two reports
        // name the webhook step.
        let mut e = evidence();
        same_config(&mut e);
        acked(&mut e, reported);
        arrive(&mut e, reported, 1, 1, 3);
        let report = serde_json::json!({
            "kind": "possible_duplicate", "job_id": reported.to_string(),
            "detail": format!("step 4 (webhook) of job {reported} was cut short")
        });
        e.servers[0].events.push(report.clone());
        assert!(!check(&e).ok(), "one report, two extra deliveries");
        e.servers[1].events.push(report);
        assert!(check(&e).ok(), "{:?}", check(&e).failures);

        // Different keys on the two copies: not the documented exception.
        let mut e = evidence();
        same_config(&mut e);
        acked(&mut e, reported);
        arrive(&mut e, reported, 1, 1, 1);
        e.arrivals
            .get_mut(&reported)
            .unwrap()
            .webhook
            .push("other-key".into());
        e.servers[0].events.push(serde_json::json!({
            "kind": "possible_duplicate", "job_id": reported.to_string()
        }));
        assert!(!check(&e).ok());

        // Configuration: not converged; one stamp, two configurations;
        // two primaries.
        let mut e = evidence();
        same_config(&mut e);
        assert!(check(&e).ok(), "{:?}", check(&e).failures);
        e.servers[1].config_checksum = Some("d".into());
        assert!(!check(&e).ok());
        let mut e = evidence();
        same_config(&mut e);
        e.stamps.insert(
            ("1/x".into(), 4),
            BTreeMap::from([("x".into(), "gw-a".into()), ("y".into(), "gw-b".into())]),
        );
        assert!(!check(&e).ok());
        let mut e = evidence();
        same_config(&mut e);
        e.two_primaries.push("now".into());
        assert!(!check(&e).ok());
    }

    #[test]
    fn a_dead_lettered_job_is_a_failure_even_when_delivered() {
        let mut e = evidence();
        same_config(&mut e);
        let id = Uuid::new_v4();
        e.servers[1].failed.push((
            id,
            "step 1 (assemble) failed: cannot read page-0001.png".into(),
        ));
        let r = check(&e);
        assert!(
            r.failures
                .iter()
                .any(|f| f.contains(&id.to_string()) && f.contains("gw-b")),
            "{:?}",
            r.failures
        );
    }
}
