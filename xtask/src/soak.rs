//! `cargo xtask soak`: thousands of jobs through a paired site while a
//! seeded schedule injects faults of every kind the fault suite knows
//! (kill -9, SIGSTOP/SIGCONT, clean stop, blackholes between the devices and
//! the primary, partitions between the servers, the data service stopped,
//! maintenance, the spool made unwritable, kill -9 of the devices' client,
//! promotion of the secondary during a partition, time zones made
//! different then fixed; not the full disk, which needs gw-a's data on a
//! small tmpfs for the whole run),
//! then the fault suite's checker (`e2e::scenario::check`) over every job.
//! It shows a progress bar and ends with a summary: jobs, faults by kind,
//! lost, duplicated and how many of those were documented exceptions,
//! failover and takeover times. The run's seed is printed first;
//! `--seed S` repeats a schedule.

use std::io::Write as _;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use e2e::fault::Mode;
use e2e::scenario::check::{check, gather, summary as check_summary, wait_delivered};
use e2e::scenario::devices::{acknowledgements, device_jobs};
use e2e::scenario::{Options as SiteOptions, RunSpec, Scenario, health, seed_from_env};
use serde_json::{Value, json};

use crate::measure::summary;
use crate::site::Tools;
use crate::{Result, root};

const USAGE: &str = "usage: cargo xtask soak [--jobs N (10000)] [--seed S (SCAN_FAULT_SEED, else the clock)] [--devices N (6)]";

struct Options {
    jobs: u64,
    seed: Option<u64>,
    devices: usize,
}

fn parse(args: &[String]) -> Result<Options> {
    let mut o = Options {
        jobs: 10_000,
        seed: None,
        devices: 6,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| -> Result<u64> {
            it.next()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("{name} needs a number\n{USAGE}"))
        };
        match a.as_str() {
            "--jobs" => o.jobs = value("--jobs")?.max(1),
            "--seed" => o.seed = Some(value("--seed")?),
            "--devices" => o.devices = value("--devices")?.clamp(1, 64) as usize,
            "--help" | "-h" => return Err(USAGE.into()),
            other => return Err(format!("unknown soak option `{other}`\n{USAGE}")),
        }
    }
    Ok(o)
}

/// The kinds of fault the schedule draws from.
const KINDS: [&str; 11] = [
    "kill9",
    "sigstop",
    "clean_stop",
    "device_blackhole",
    "partition",
    "data_service",
    "maintenance",
    "spool_unwritable",
    "device_kill9",
    "promotion",
    "time_zone",
];

/// The server `/health` calls primary, if exactly one does.
fn primary(s: &Scenario) -> Option<usize> {
    let said: Vec<usize> = (0..2)
        .filter(|&i| health(s.plain(i)).is_some_and(|h| h["role"] == "primary"))
        .collect();
    (said.len() == 1).then(|| said[0])
}

/// Promotion of the secondary during a partition, as in a site split: the
/// devices lose the primary too, an admin promotes the secondary, both
/// take a configuration change; then the link heals, the old primary is
/// fenced, and it rejoins as secondary the documented way.
fn promotion(s: &mut Scenario, hold: Duration) {
    let Some(old) = primary(s) else {
        s.note("promotion not made: no single primary right now");
        return;
    };
    let new = 1 - old;
    s.partition();
    s.device_path(old, Mode::Blackhole);
    std::thread::sleep(hold / 2);
    s.promote(new);
    s.config_change(old);
    s.config_change(new);
    s.sample_config();
    std::thread::sleep(hold / 2);
    s.device_path(old, Mode::Pass);
    s.heal();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if health(s.plain(old)).is_some_and(|h| h["role"] == "fenced") {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let role = health(s.plain(old)).map(|h| h["role"].clone());
    s.note(&format!("old primary's role after healing: {role:?}"));
    s.rejoin_as_secondary(old);
}

/// The secondary's time zone made different (sync blocked; a change made
/// on the primary meanwhile must not travel), then fixed.
fn time_zone(s: &mut Scenario, hold: Duration) {
    let Some(p) = primary(s) else {
        s.note("time zone change not made: no single primary right now");
        return;
    };
    let secondary = 1 - p;
    s.set_time_zone(secondary, "Europe/Paris");
    s.config_change(p);
    s.sample_config();
    std::thread::sleep(hold);
    s.set_time_zone(secondary, "UTC");
}

/// What the soak measured besides the checker's verdict.
#[derive(Default)]
struct Timing {
    /// From a fault that took the primary away from the devices to the
    /// next job the secondary acknowledged, in ms.
    failover_ms: Vec<f64>,
    /// From kill -9 or SIGSTOP of a server to the survivor's takeover
    /// count going up (polled), in ms.
    takeover_ms: Vec<f64>,
}

pub fn run(args: &[String]) -> Result {
    let opts = parse(args)?;
    Tools::build("debug")?;
    let seed = opts.seed.unwrap_or_else(seed_from_env);
    println!(
        "soak: {} jobs, {} devices, seed {seed} (repeat with `cargo xtask soak --jobs {} --seed {seed}`)",
        opts.jobs, opts.devices, opts.jobs
    );
    let started = Instant::now();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| soak(&opts, seed)));
    let (s, timing) = match outcome {
        Ok(r) => r,
        Err(panic) => {
            let text = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            return Err(format!("the soak (seed {seed}) stopped: {text}"));
        }
    };
    let mut s = s;
    wait_delivered(&s, Duration::from_secs(600));
    let evidence = gather(&mut s);
    let report = check(&evidence);
    let elapsed = started.elapsed();

    let fmt = |v: &[f64]| {
        summary(v).map_or_else(
            || "none measured".to_owned(),
            |m| {
                format!(
                    "n={} p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
                    m.n, m.p50, m.p99, m.max
                )
            },
        )
    };
    println!();
    println!("{}", check_summary(&evidence, &report));
    println!("seed          {seed}");
    println!(
        "jobs          {} submitted, {} acknowledged in {:.0} s",
        report.jobs_submitted,
        report.jobs_acknowledged,
        elapsed.as_secs_f64()
    );
    let total: u64 = s.faults.values().sum();
    println!(
        "faults        {total}: {}",
        s.faults
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "lost          {}\nduplicated    {} ({} documented exceptions, reported)\nunsubmitted   {}",
        report.lost.len(),
        report.duplicated.len(),
        report.documented.len(),
        report.unknown.len()
    );
    println!("failover      {}", fmt(&timing.failover_ms));
    println!("takeover      {}", fmt(&timing.takeover_ms));
    let out = root().join("target/soak");
    let _ = std::fs::create_dir_all(&out);
    let json = json!({
        "seed": seed,
        "jobs_asked": opts.jobs,
        "jobs_submitted": report.jobs_submitted,
        "jobs_acknowledged": report.jobs_acknowledged,
        "elapsed_secs": elapsed.as_secs_f64(),
        "faults": s.faults,
        "lost": report.lost.iter().map(|u| u.to_string()).collect::<Vec<_>>(),
        "duplicated": report.duplicated.iter().map(|u| u.to_string()).collect::<Vec<_>>(),
        "documented_exceptions": report.documented.len(),
        "unsubmitted": report.unknown.len(),
        "failover_ms": timing.failover_ms,
        "takeover_ms": timing.takeover_ms,
        "failures": report.failures,
        "timeline": evidence.timeline,
    });
    let _ = std::fs::write(
        out.join("summary.json"),
        serde_json::to_vec_pretty(&json).unwrap_or_default(),
    );
    println!(
        "summary       target/soak/summary.json; site kept until exit in {}",
        s.dir().display()
    );
    if report.ok() {
        Ok(())
    } else {
        for f in &report.failures {
            eprintln!("  - {f}");
        }
        // The site goes with the process: what explains the failures stays.
        let involved: std::collections::BTreeSet<_> = report
            .failures
            .iter()
            .filter_map(|f| e2e::scenario::uuid_in(f))
            .collect();
        eprint!("{}", s.job_lines(&involved, 60));
        for name in e2e::scenario::SERVERS {
            let log = s.dir().join(name).join("logs").join(format!("{name}.log"));
            let kept = out.join(format!("{name}.log"));
            if std::fs::copy(&log, &kept).is_ok() {
                eprintln!("{name}'s log kept in {}", kept.display());
            }
        }
        Err(format!(
            "the soak (seed {seed}) broke a claim: {} failure(s); rerun with --seed {seed}",
            report.failures.len()
        ))
    }
}

fn unix_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// Prints the progress bar line.
fn progress(s: &Scenario, jobs: u64, started: Instant) {
    let acked = acknowledgements(&s.runs).len() as u64;
    let width = 30;
    let filled = (acked.min(jobs) * width / jobs.max(1)) as usize;
    let faults: u64 = s.faults.values().sum();
    eprint!(
        "\r[{}{}] {acked}/{jobs} acknowledged, {faults} faults, {:.0} s   ",
        "#".repeat(filled),
        ".".repeat(width as usize - filled),
        started.elapsed().as_secs_f64()
    );
    let _ = std::io::stderr().flush();
}

/// Sleeps `d`, keeping the progress bar moving.
fn pause(s: &Scenario, d: Duration, jobs: u64, started: Instant) {
    let end = Instant::now() + d;
    while Instant::now() < end {
        progress(s, jobs, started);
        std::thread::sleep(Duration::from_millis(250).min(end - Instant::now()));
    }
}

fn takeovers(s: &Scenario, i: usize) -> Option<u64> {
    let out = s.cli(i, &["pair", "status", "--json"], Duration::from_secs(5))?;
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    v["jobs"]["takeovers"].as_u64()
}

/// Holds a fault of the server `down` for `hold`, measuring the
/// survivor's takeover.
fn hold_watching_takeover(s: &Scenario, down: usize, hold: Duration, timing: &mut Timing) {
    let survivor = 1 - down;
    let t0 = Instant::now();
    let before = takeovers(s, survivor);
    while t0.elapsed() < hold {
        if let (Some(b), Some(now)) = (before, takeovers(s, survivor))
            && now > b
        {
            timing.takeover_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let left = hold.saturating_sub(t0.elapsed());
    std::thread::sleep(left);
}

/// The next job the secondary acknowledged after `since_us`, as a
/// failover time.
fn note_failover(s: &Scenario, since_us: i64, timing: &mut Timing) {
    if let Some((at, _)) = acknowledgements(&s.runs)
        .into_iter()
        .find(|(at, server)| *at > since_us && *server == 1)
    {
        timing.failover_ms.push((at - since_us) as f64 / 1000.0);
    }
}

fn soak(opts: &Options, seed: u64) -> (Scenario, Timing) {
    let mut s = Scenario::start(
        "soak",
        seed,
        SiteOptions {
            devices: opts.devices,
            tmpfs_a_mib: None,
        },
    );
    let started = Instant::now();
    let mut timing = Timing::default();
    let spec = |jobs: u64| RunSpec {
        scan_interval_ms: 10,
        ..RunSpec::plain(jobs)
    };
    let mut current = s.start_devices(spec(opts.jobs));
    loop {
        let gap = s.rng.millis(2000, 6000);
        pause(&s, gap, opts.jobs, started);
        if !s.runs[current].running() {
            break;
        }
        let kind = *s.rng.pick(&KINDS);
        let hold = s.rng.millis(1000, 4000);
        let t0 = unix_us();
        match kind {
            "kill9" => {
                s.kill9(0);
                hold_watching_takeover(&s, 0, hold.max(Duration::from_millis(2000)), &mut timing);
                s.restart(0);
                note_failover(&s, t0, &mut timing);
            }
            "sigstop" => {
                // Past the DEAD threshold, so the survivor takes over.
                let pause = hold.max(Duration::from_millis(1500));
                s.server(0).sigstop();
                s.faults
                    .entry("sigstop".into())
                    .and_modify(|n| *n += 1)
                    .or_insert(1);
                s.note(&format!("gw-a frozen (SIGSTOP) for {pause:?}"));
                hold_watching_takeover(&s, 0, pause, &mut timing);
                s.server(0).sigcont();
                s.note("gw-a thawed (SIGCONT)");
                note_failover(&s, t0, &mut timing);
            }
            "clean_stop" => {
                s.stop(0);
                std::thread::sleep(hold);
                s.restart(0);
                note_failover(&s, t0, &mut timing);
            }
            "device_blackhole" => {
                s.device_path(0, Mode::Blackhole);
                std::thread::sleep(hold);
                s.device_path(0, Mode::Pass);
                note_failover(&s, t0, &mut timing);
            }
            "partition" => {
                s.partition();
                std::thread::sleep(hold / 2);
                // On the primary (after a promotion it may be gw-b).
                let p = primary(&s).unwrap_or(0);
                s.config_change(p);
                std::thread::sleep(hold / 2);
                s.heal();
            }
            "data_service" => {
                s.data_service(0, false);
                std::thread::sleep(hold);
                s.data_service(0, true);
                note_failover(&s, t0, &mut timing);
            }
            "maintenance" => {
                let which = s.rng.range(0, 1) as usize;
                s.maintenance(which, true);
                std::thread::sleep(hold);
                s.maintenance(which, false);
                if which == 0 {
                    note_failover(&s, t0, &mut timing);
                }
            }
            "spool_unwritable" => match s.try_spool_unwritable_a() {
                Ok(()) => {
                    std::thread::sleep(hold);
                    s.spool_writable_a();
                }
                // Not injected this time (counted only when made).
                Err(e) => s.note(&format!("spool not made read-only: {e}")),
            },
            "device_kill9" => {
                s.kill_devices(current);
                // The devices come back with their outboxes; the jobs not
                // scanned yet are scanned by the new run.
                let scanned = device_jobs(&s.runs, &s.outbox).len() as u64;
                let left = opts.jobs.saturating_sub(scanned).max(1);
                current = s.start_devices(spec(left));
            }
            "promotion" => promotion(&mut s, hold),
            "time_zone" => time_zone(&mut s, hold),
            _ => unreachable!("every kind is handled"),
        }
        s.sample_config();
    }
    progress(&s, opts.jobs, started);
    eprintln!();
    s.heal_everything();
    for i in 0..s.runs.len() {
        s.wait_devices(i, Duration::from_secs(600));
    }
    s.wait_converged(Duration::from_secs(120));
    (s, timing)
}
