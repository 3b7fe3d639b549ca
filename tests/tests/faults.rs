//! The fault-scenario suite: each test builds a paired site behind fault
//! proxies, lets simulated devices (the real failover client and outbox)
//! submit a few hundred jobs through the workflow without OCR (one scenario
//! keeps OCR), injects one kind of fault at moments the seed chooses, heals
//! everything and runs the checker (`e2e::scenario::check`): no
//! acknowledged job lost, no silent duplicate, nothing delivered that no
//! device submitted, one configuration on both servers, no (epoch, version)
//! naming two configurations, never two primaries that reach each other.
//! The seed is printed at the start; `SCAN_FAULT_SEED=N` repeats a run.

use std::time::Duration;

use e2e::fault::Mode;
use e2e::scenario::check::assert_claims;
use e2e::scenario::{Options, RunSpec, Scenario, expect_within, health, seed_from_env};
use serde_json::Value;

/// The bound on one device run: long enough for a loaded machine, short
/// enough that a wedged run fails the test.
const DEVICE_RUN_LIMIT: Duration = Duration::from_secs(240);

fn start(name: &str, options: Options) -> Scenario {
    Scenario::start(name, seed_from_env(), options)
}

/// Heals everything, lets the devices finish, waits for one configuration
/// and runs the checker.
fn finish(mut s: Scenario) -> Scenario {
    s.heal_everything();
    for i in 0..s.runs.len() {
        s.wait_devices(i, DEVICE_RUN_LIMIT);
    }
    s.wait_converged(Duration::from_secs(60));
    let r = assert_claims(&mut s, Duration::from_secs(180));
    assert!(
        r.jobs_acknowledged > 0,
        "scenario {} (seed {}): no job was acknowledged at all",
        s.name,
        s.seed
    );
    s
}

/// Waits until device run `run` had `n` jobs acknowledged.
fn after_acks(s: &mut Scenario, run: usize, n: usize) {
    let got = s.wait_acknowledged(run, n, Duration::from_secs(120));
    s.note(&format!("{got} jobs acknowledged"));
}

#[test]
fn kill9_of_the_primary_mid_upload_and_mid_pipeline_then_restart() {
    let mut s = start("kill9-primary", Options::default());
    let run = s.start_devices(RunSpec::plain(300));
    for round in 1..=2 {
        let at = s.rng.range(40, 80) as usize * round;
        after_acks(&mut s, run, at);
        s.kill9(0);
        let down = s.rng.millis(1500, 4000);
        std::thread::sleep(down);
        s.restart(0);
        std::thread::sleep(s.rng.millis(500, 2000));
    }
    finish(s);
}

#[test]
fn sigstop_of_the_primary_past_the_dead_threshold_then_sigcont() {
    let mut s = start("sigstop-primary", Options::default());
    let run = s.start_devices(RunSpec::plain(300));
    for round in 1..=2 {
        let at = s.rng.range(40, 80) as usize * round;
        after_acks(&mut s, run, at);
        let pause = s.rng.millis(1500, 3500);
        s.freeze(0, pause);
        std::thread::sleep(s.rng.millis(500, 2000));
    }
    finish(s);
}

#[test]
fn blackhole_between_the_devices_and_the_primary() {
    let mut s = start("blackhole-devices-primary", Options::default());
    let run = s.start_devices(RunSpec::plain(300));
    for round in 1..=2 {
        let at = s.rng.range(40, 80) as usize * round;
        after_acks(&mut s, run, at);
        s.device_path(0, Mode::Blackhole);
        std::thread::sleep(s.rng.millis(2000, 5000));
        s.device_path(0, Mode::Pass);
        std::thread::sleep(s.rng.millis(500, 2000));
    }
    finish(s);
}

#[test]
fn partition_between_the_servers_while_both_stay_up() {
    let mut s = start("partition", Options::default());
    let run = s.start_devices(RunSpec::plain(300));
    for round in 1..=2 {
        let at = s.rng.range(40, 80) as usize * round;
        after_acks(&mut s, run, at);
        s.partition();
        std::thread::sleep(s.rng.millis(800, 2000));
        // A configuration change the secondary cannot see yet.
        s.config_change(0);
        // Part of the partition, the devices cannot reach the primary
        // either: they go to the secondary, and both accept jobs.
        s.device_path(0, Mode::Blackhole);
        std::thread::sleep(s.rng.millis(1500, 3000));
        s.device_path(0, Mode::Pass);
        std::thread::sleep(s.rng.millis(1000, 2500));
        s.heal();
        std::thread::sleep(s.rng.millis(1000, 2500));
        s.sample_config();
    }
    finish(s);
}

#[test]
fn data_service_stopped_on_the_primary() {
    let mut s = start("data-service", Options::default());
    let run = s.start_devices(RunSpec::plain(300));
    for round in 1..=2 {
        let at = s.rng.range(40, 80) as usize * round;
        after_acks(&mut s, run, at);
        s.data_service(0, false);
        std::thread::sleep(s.rng.millis(1500, 4000));
        s.data_service(0, true);
        std::thread::sleep(s.rng.millis(500, 2000));
    }
    finish(s);
}

#[test]
fn maintenance_on_and_off() {
    let mut s = start("maintenance", Options::default());
    let run = s.start_devices(RunSpec::plain(300));
    for (round, server) in [(1, 0), (2, 1), (3, 0)] {
        let at = s.rng.range(30, 60) as usize * round;
        after_acks(&mut s, run, at);
        s.maintenance(server, true);
        std::thread::sleep(s.rng.millis(1500, 4000));
        s.maintenance(server, false);
        std::thread::sleep(s.rng.millis(500, 1500));
    }
    finish(s);
}

#[test]
fn promotion_of_the_secondary_during_a_partition_then_healing() {
    let mut s = start("promotion", Options::default());
    let run = s.start_devices(RunSpec::plain(250));
    let at = s.rng.range(40, 80) as usize;
    after_acks(&mut s, run, at);
    s.partition();
    // The devices lose the old primary too, as in a site split: they go
    // to the secondary, which an admin promotes.
    s.device_path(0, Mode::Blackhole);
    std::thread::sleep(s.rng.millis(800, 1500));
    s.promote(1);
    // Both now believe they are primary and cannot tell each other: each
    // makes a configuration change of the same next version.
    let old = s
        .config_change(0)
        .expect("the old primary, cut off, still takes a change");
    let new = s
        .config_change(1)
        .expect("the promoted server takes a change");
    s.sample_config();
    std::thread::sleep(s.rng.millis(1000, 2500));
    s.device_path(0, Mode::Pass);
    s.heal();
    // The old primary meets the newer epoch: fenced, its change reported.
    let fenced = expect_within(
        &s,
        Duration::from_secs(30),
        "the old primary was not fenced",
        || {
            // `/health` says `"role": "fenced"` (operations.md).
            let h = health(s.plain(0))?;
            (h["role"] == "fenced").then_some(h)
        },
    );
    s.note(&format!("gw-a fenced: /health {fenced}"));
    let conflicts = expect_within(
        &s,
        Duration::from_secs(30),
        "the old primary's change never reached a conflict report",
        || {
            for i in 0..2 {
                let out = s.cli(i, &["pair", "conflicts", "--json"], Duration::from_secs(10))?;
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                if text.contains(&old) {
                    return Some((i, text));
                }
            }
            None
        },
    );
    s.note(&format!(
        "the old primary's change {old} is in {}'s conflict report",
        e2e::scenario::SERVERS[conflicts.0]
    ));
    // The documented way back: the fenced server rejoins as secondary and
    // takes the new primary's configuration.
    s.rejoin_as_secondary(0);
    let s = finish(s);
    // The promoted server's change is what both hold; the old primary's
    // partition-time change is not applied.
    let export = s.cli_ok(0, &["config", "export"]);
    assert!(export.contains(&new), "{export}");
    assert!(
        !export.contains(&old),
        "scenario {} (seed {}): the fenced primary's change {old} is still in force: {export}",
        s.name,
        s.seed
    );
}

#[test]
fn time_zones_made_different_then_fixed() {
    let mut s = start("time-zones", Options::default());
    let run = s.start_devices(RunSpec::plain(250));
    let at = s.rng.range(40, 80) as usize;
    after_acks(&mut s, run, at);
    s.set_time_zone(1, "Europe/Paris");
    let blocked = expect_within(
        &s,
        Duration::from_secs(30),
        "sync was not blocked by the different time zones",
        || {
            let out = s.cli(1, &["pair", "status", "--json"], Duration::from_secs(10))?;
            let v: Value = serde_json::from_slice(&out.stdout).ok()?;
            (v["sync"] == "blocked").then_some(v["reason"].clone())
        },
    );
    s.note(&format!("sync blocked: {blocked}"));
    // A change made while blocked must not travel, and must arrive once
    // the time zones agree again.
    s.config_change(0);
    s.sample_config();
    std::thread::sleep(s.rng.millis(1000, 3000));
    s.set_time_zone(1, "UTC");
    finish(s);
}

#[test]
fn kill9_of_a_device_client_mid_upload() {
    let mut s = start("kill9-device", Options::default());
    // Bigger pages: the kill finds uploads in flight.
    let spec = RunSpec {
        page_bytes: Some(200_000),
        ..RunSpec::plain(150)
    };
    let first = s.start_devices(spec);
    let at = s.rng.range(30, 60) as usize;
    after_acks(&mut s, first, at);
    std::thread::sleep(s.rng.millis(0, 300));
    s.kill_devices(first);
    // The device comes back: what its outbox holds goes out first, with
    // the same ids, then new scans.
    let second = s.start_devices(RunSpec::plain(150));
    let at = s.rng.range(30, 60) as usize;
    after_acks(&mut s, second, at);
    s.kill_devices(second);
    s.start_devices(RunSpec::plain(50));
    finish(s);
}

#[test]
fn spool_unwritable_on_the_primary() {
    disk_fault_on_the_primary(
        "spool-unwritable",
        Scenario::spool_unwritable_a,
        Scenario::spool_writable_a,
    );
}

#[test]
fn disk_full_on_the_primary() {
    disk_fault_on_the_primary("disk-full", Scenario::fill_disk_a, Scenario::free_disk_a);
}

/// gw-a's data on a small tmpfs; `make` breaks its disk a few dozen jobs
/// in, `undo` mends it 2–4 s later.
fn disk_fault_on_the_primary(name: &str, make: fn(&mut Scenario), undo: fn(&mut Scenario)) {
    let mut s = start(
        name,
        Options {
            tmpfs_a_mib: Some(64),
            ..Options::default()
        },
    );
    let run = s.start_devices(RunSpec::plain(300));
    let at = s.rng.range(40, 80) as usize;
    after_acks(&mut s, run, at);
    make(&mut s);
    std::thread::sleep(s.rng.millis(2000, 4000));
    undo(&mut s);
    finish(s);
}

#[test]
fn kill9_of_the_primary_with_ocr_in_the_workflow() {
    e2e::support::require_tesseract();
    let mut s = start("kill9-primary-ocr", Options::default());
    let spec = RunSpec {
        workflow: e2e::scenario::OCR_WORKFLOW,
        page_bytes: None,
        scan_interval_ms: 100,
        ..RunSpec::plain(40)
    };
    let run = s.start_devices(spec);
    let at = s.rng.range(8, 16) as usize;
    after_acks(&mut s, run, at);
    s.kill9(0);
    std::thread::sleep(s.rng.millis(1500, 4000));
    s.restart(0);
    finish(s);
}
