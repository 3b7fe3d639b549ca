//! Intake durability under crashes at random moments. Many times over, a
//! burst of concurrent uploads of varied sizes runs against a primary whose
//! pipeline is paused, and the gateway is killed with SIGKILL at a moment
//! the seed chooses: before the first acknowledgement, while pages stream
//! in or are synced and committed, or right after an acknowledgement. After
//! the restart, every acknowledged job must be intact (its status as
//! acknowledged, its page files byte for byte what was sent); every job
//! whose answer the device did not receive in full must be absent
//! everywhere or complete, never a row without its pages nor a directory
//! without its row; the spool's temporary area must be empty; and sending
//! such a job again with the same id must be accepted (`201`, it was
//! absent) or answered as a replay (`200`, it was complete). A last crash
//! and restart at the end checks every job stored over the whole run.
//!
//! The seed is printed at the start; `SCAN_FAULT_SEED=N` repeats the run's
//! choices (threads, jobs, page sizes, when to kill). What the processes do
//! with the time they are given is not repeated.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use e2e::http::{Device, png};
use e2e::scenario::{Rng, SEED_ENV, seed_from_env};
use e2e::{Instance, Site, eventually};
use ring::digest::{SHA256, digest};
use serde_json::Value;
use uuid::Uuid;

const INSTANCE: &str = "gw-a";
const WORKFLOW: &str = "scan-to-folder";
/// Crashes per run.
const ITERATIONS: u32 = 24;
/// No iteration starts after this long, so a run on a loaded machine stays
/// well inside its time limit (the summary says how many ran).
const BUDGET: Duration = Duration::from_secs(50);
/// A burst that has not reached its kill point by then is stuck.
const BURST_LIMIT: Duration = Duration::from_secs(60);
const SMALLEST_PAGE: u64 = 10_000;
const LARGEST_PAGE: u64 = 2_000_000;

/// A job to upload: its id and its pages as `(size, content seed)`.
struct Plan {
    id: Uuid,
    pages: Vec<(usize, u64)>,
}

impl Plan {
    fn bytes(&self) -> u64 {
        self.pages.iter().map(|(size, _)| *size as u64).sum()
    }
}

/// When the gateway is killed.
#[derive(Clone, Copy)]
enum KillAt {
    /// This long after the burst starts: mostly before any job is
    /// acknowledged, some before any upload began.
    Soon(Duration),
    /// Once the devices have written this many body bytes, then after
    /// `after`: anywhere in the stream, sync and commit of some upload.
    Sent(u64, Duration),
    /// Once this many acknowledgements were read, then after `after`
    /// (often nothing): right after the ack, while others are in flight.
    Acked(u64, Duration),
}

impl std::fmt::Display for KillAt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KillAt::Soon(after) => write!(f, "{} ms into the burst", after.as_millis()),
            KillAt::Sent(bytes, after) => write!(
                f,
                "{} ms after {:.1} MB were sent",
                after.as_millis(),
                *bytes as f64 / 1e6
            ),
            KillAt::Acked(count, after) => {
                write!(f, "{} ms after ack {count}", after.as_millis())
            }
        }
    }
}

/// What the device learnt of a job it sent.
enum Outcome {
    /// A `201` (or `200`) read in full: the acknowledgement.
    Acknowledged(Value),
    /// A complete answer refusing the job: it must not be stored.
    Refused(u16, String),
    /// No complete answer: the server died first. The job may be absent
    /// or complete, nothing in between.
    Unknown(String),
}

/// A job that was sent, with its pages.
struct Sent {
    id: Uuid,
    pages: Vec<Vec<u8>>,
    outcome: Outcome,
}

/// A page as it must be found in the spool: a file of the same length and
/// SHA-256 holds the same bytes.
struct Fingerprint {
    len: u64,
    sha256: Vec<u8>,
}

impl Fingerprint {
    fn of(page: &[u8]) -> Fingerprint {
        Fingerprint {
            len: page.len() as u64,
            sha256: digest(&SHA256, page).as_ref().to_vec(),
        }
    }
}

/// A job the gateway holds, as it must stay for the rest of the run.
struct Stored {
    id: Uuid,
    iteration: u32,
    pages: Vec<Fingerprint>,
    received_at: Value,
}

/// Counts for the summary.
#[derive(Default)]
struct Tally {
    iterations: u32,
    acknowledged: usize,
    cut_off_absent: usize,
    cut_off_complete: usize,
    refused: usize,
}

#[test]
fn every_acknowledged_job_survives_kill_9_at_random_moments_of_a_burst() {
    let seed = seed_from_env();
    eprintln!("intake_crash: seed {seed} (rerun with {SEED_ENV}={seed})");
    let mut rng = Rng::new(seed);
    let started = Instant::now();

    let site = Site::new(&[INSTANCE], "");
    site.activate(INSTANCE, "03", 85, 10);
    let token = site.add_device(INSTANCE, "mfd-1");
    let spool = site.data_dir(INSTANCE).join(format!("{INSTANCE}-spool"));
    let mut gw = site.start(INSTANCE);
    // Accepted jobs stay queued with their page files in the spool: what is
    // checked is the intake's promise, not the pipeline's. The pause holds
    // across restarts.
    site.cli_ok(INSTANCE, &["pipeline", "pause"]);

    let mut stored: Vec<Stored> = Vec::new();
    let mut tally = Tally::default();
    for iteration in 1..=ITERATIONS {
        if started.elapsed() > BUDGET {
            eprintln!("intake_crash: time budget spent, stopping before iteration {iteration}");
            break;
        }
        let at = format!("iteration {iteration}");
        let plans = plan_burst(&mut rng);
        let kill = plan_kill(&mut rng, &plans);
        let dev = Device::new(&gw.plain(), &token);
        let session = dev.login("alice");
        let sent = match burst(&mut gw, &token, &session, &plans, kill) {
            Ok(sent) => sent,
            Err(problem) => fail(seed, &at, &[problem]),
        };

        gw = restart(&site);
        let dev = Device::new(&gw.plain(), &token);
        let mut problems = Vec::new();
        let (mut absent, mut complete) = (Vec::new(), Vec::new());
        for job in &sent {
            let pages: Vec<Fingerprint> = job.pages.iter().map(|p| Fingerprint::of(p)).collect();
            match &job.outcome {
                Outcome::Acknowledged(ack) => {
                    tally.acknowledged += 1;
                    let found = check_ack(job, ack)
                        .and_then(|()| check_present(&dev, &spool, job.id, &pages, Some(ack)));
                    match found {
                        Ok(_) => stored.push(Stored {
                            id: job.id,
                            iteration,
                            pages,
                            received_at: ack["received_at"].clone(),
                        }),
                        Err(e) => problems.push(format!("acknowledged job {}: {e}", job.id)),
                    }
                }
                Outcome::Refused(status, body) => {
                    tally.refused += 1;
                    if let Err(e) = check_absent(&dev, &spool, job.id) {
                        problems.push(format!(
                            "job {} refused with {status} ({body}) is stored: {e}",
                            job.id
                        ));
                    }
                    absent.push(job);
                }
                Outcome::Unknown(why) => {
                    if dev.job(job.id).status == 404 {
                        match check_absent(&dev, &spool, job.id) {
                            Ok(()) => absent.push(job),
                            Err(e) => problems.push(format!(
                                "job {} cut off ({why}) is half-present: {e}",
                                job.id
                            )),
                        }
                    } else {
                        match check_present(&dev, &spool, job.id, &pages, None) {
                            Ok(view) => complete.push((job, view["received_at"].clone())),
                            Err(e) => problems.push(format!(
                                "job {} cut off ({why}) is half-present: {e}",
                                job.id
                            )),
                        }
                    }
                }
            }
        }
        tally.cut_off_absent += absent
            .iter()
            .filter(|j| matches!(j.outcome, Outcome::Unknown(_)))
            .count();
        tally.cut_off_complete += complete.len();
        let holds: BTreeSet<Uuid> = stored
            .iter()
            .map(|s| s.id)
            .chain(complete.iter().map(|(j, _)| j.id))
            .collect();
        problems.extend(check_spool(&spool, &holds));
        if !problems.is_empty() {
            fail(seed, &at, &problems);
        }

        // The device's retry of each job it got no answer for: a fresh
        // acceptance when nothing was kept, the original acknowledgement
        // when the job was complete.
        let session = dev.login("alice");
        for job in &absent {
            let ack = dev.submit(&session, job.id, WORKFLOW, &job.pages);
            if ack.status != 201 {
                problems.push(format!(
                    "job {} was absent, its retry answered {}: {}",
                    job.id,
                    ack.status,
                    String::from_utf8_lossy(&ack.body)
                ));
                continue;
            }
            let ack = ack.json();
            problems.extend(retried(&dev, &spool, job, &ack, iteration, &mut stored));
        }
        for (job, received_at) in &complete {
            let ack = dev.submit(&session, job.id, WORKFLOW, &job.pages);
            let body = ack.json();
            if ack.status != 200 || body["replayed"] != true || body["received_at"] != *received_at
            {
                problems.push(format!(
                    "job {} was complete (received at {received_at}), its retry answered {}: {body}",
                    job.id, ack.status
                ));
                continue;
            }
            problems.extend(retried(&dev, &spool, job, &body, iteration, &mut stored));
        }
        if !problems.is_empty() {
            fail(seed, &at, &problems);
        }
        tally.iterations = iteration;
        let refused = sent
            .iter()
            .filter(|j| matches!(j.outcome, Outcome::Refused(..)))
            .count();
        eprintln!(
            "iteration {iteration}: {} threads, killed {kill}: {} jobs sent, {} acknowledged, \
             {refused} refused, without an answer {} absent and {} complete",
            plans.len(),
            sent.len(),
            sent.len() - absent.len() - complete.len(),
            absent.len() - refused,
            complete.len()
        );
    }

    // One more crash with nothing in flight, then every job kept over the
    // run is checked again: none was lost or changed by the later crashes
    // and restarts.
    gw.kill9();
    let gw = restart(&site);
    let dev = Device::new(&gw.plain(), &token);
    let mut problems: Vec<String> = stored
        .iter()
        .filter_map(|s| {
            let found = check_present(&dev, &spool, s.id, &s.pages, None).and_then(|view| {
                (view["received_at"] == s.received_at)
                    .then_some(())
                    .ok_or_else(|| {
                        format!(
                            "received_at is now {}, was {}",
                            view["received_at"], s.received_at
                        )
                    })
            });
            found
                .err()
                .map(|e| format!("job {} of iteration {}: {e}", s.id, s.iteration))
        })
        .collect();
    problems.extend(check_spool(&spool, &stored.iter().map(|s| s.id).collect()));
    if !problems.is_empty() {
        fail(seed, "final check", &problems);
    }
    eprintln!(
        "intake_crash: seed {seed}: {} iterations in {:.1} s; {} acknowledged jobs checked, \
         {} without an answer found absent and {} complete, {} refused; {} jobs intact at the end",
        tally.iterations,
        started.elapsed().as_secs_f64(),
        tally.acknowledged,
        tally.cut_off_absent,
        tally.cut_off_complete,
        tally.refused,
        stored.len()
    );
    // A start or an intake that became many times slower would otherwise
    // pass with too few crashes to mean much.
    assert!(
        tally.iterations >= ITERATIONS / 3,
        "seed {seed}: only {} of {ITERATIONS} iterations ran within {BUDGET:?}",
        tally.iterations
    );
}

/// Fails the run naming the seed that repeats it and the jobs involved.
fn fail(seed: u64, at: &str, problems: &[String]) -> ! {
    panic!(
        "seed {seed}, {at} (rerun with {SEED_ENV}={seed}):\n  {}",
        problems.join("\n  ")
    )
}

/// The jobs of one burst, one list per device thread.
fn plan_burst(rng: &mut Rng) -> Vec<Vec<Plan>> {
    let threads = rng.range(8, 16);
    (0..threads)
        .map(|_| {
            (0..rng.range(1, 4))
                .map(|_| {
                    let mut id = [0u8; 16];
                    id[..8].copy_from_slice(&rng.next_u64().to_le_bytes());
                    id[8..].copy_from_slice(&rng.next_u64().to_le_bytes());
                    Plan {
                        id: uuid::Builder::from_random_bytes(id).into_uuid(),
                        pages: (0..rng.range(1, 3))
                            .map(|_| (page_size(rng), rng.next_u64()))
                            .collect(),
                    }
                })
                .collect()
        })
        .collect()
}

/// A page size spread evenly on a log scale from 10 KB to 2 MB, so there
/// are many small pages and most bytes are in large ones.
fn page_size(rng: &mut Rng) -> usize {
    let (low, high) = ((SMALLEST_PAGE as f64).ln(), (LARGEST_PAGE as f64).ln());
    let at = rng.range(0, 1_000_000) as f64 / 1_000_000.0;
    (low + (high - low) * at).exp() as usize
}

fn plan_kill(rng: &mut Rng, plans: &[Vec<Plan>]) -> KillAt {
    let bytes: u64 = plans.iter().flatten().map(Plan::bytes).sum();
    let jobs = plans.iter().map(Vec::len).sum::<usize>() as u64;
    match rng.range(0, 99) {
        0..15 => KillAt::Soon(rng.millis(0, 40)),
        15..60 => KillAt::Sent(rng.range(0, bytes), rng.millis(0, 2)),
        _ => {
            let after = if rng.chance(40) {
                Duration::ZERO
            } else {
                rng.millis(0, 5)
            };
            KillAt::Acked(rng.range(1, jobs), after)
        }
    }
}

/// Runs the burst, one thread per list of jobs, and kills the gateway when
/// `kill` says. Each thread stops at its first job without an answer: the
/// server is gone, so its later jobs are never sent.
fn burst(
    gw: &mut Instance,
    token: &str,
    session: &str,
    plans: &[Vec<Plan>],
    kill: KillAt,
) -> Result<Vec<Sent>, String> {
    let addr = gw.plain();
    let sent_bytes = AtomicU64::new(0);
    let acked = AtomicU64::new(0);
    let finished = AtomicU64::new(0);
    std::thread::scope(|s| {
        let threads: Vec<_> = plans
            .iter()
            .map(|jobs| {
                let (addr, sent_bytes, acked, finished) = (&addr, &sent_bytes, &acked, &finished);
                s.spawn(move || {
                    let dev = Device::new(addr, token);
                    let mut sent = Vec::new();
                    for plan in jobs {
                        let pages: Vec<Vec<u8>> = plan
                            .pages
                            .iter()
                            .map(|(size, seed)| png(*size, *seed))
                            .collect();
                        let answer = dev.try_submit(session, plan.id, WORKFLOW, &pages, &mut |n| {
                            sent_bytes.fetch_add(n as u64, Ordering::Relaxed);
                        });
                        let outcome = match answer {
                            Ok(r) if r.status == 201 || r.status == 200 => {
                                match serde_json::from_slice(&r.body) {
                                    Ok(ack) => {
                                        acked.fetch_add(1, Ordering::Relaxed);
                                        Outcome::Acknowledged(ack)
                                    }
                                    Err(e) => Outcome::Unknown(format!(
                                        "a {} whose body is not JSON: {e}",
                                        r.status
                                    )),
                                }
                            }
                            Ok(r) => {
                                Outcome::Refused(r.status, String::from_utf8_lossy(&r.body).into())
                            }
                            Err(e) => Outcome::Unknown(e.to_string()),
                        };
                        let gone = matches!(outcome, Outcome::Unknown(_));
                        sent.push(Sent {
                            id: plan.id,
                            pages,
                            outcome,
                        });
                        if gone {
                            break;
                        }
                    }
                    finished.fetch_add(1, Ordering::Relaxed);
                    sent
                })
            })
            .collect();

        let began = Instant::now();
        let (reached, after) = loop {
            let (reached, after) = match kill {
                KillAt::Soon(after) => (true, after),
                KillAt::Sent(bytes, after) => (sent_bytes.load(Ordering::Relaxed) >= bytes, after),
                KillAt::Acked(count, after) => (acked.load(Ordering::Relaxed) >= count, after),
            };
            // Every job answered before the kill point: the crash comes
            // after the burst, which is a case too.
            if reached || finished.load(Ordering::Relaxed) == plans.len() as u64 {
                break (reached, after);
            }
            if began.elapsed() > BURST_LIMIT {
                gw.kill9();
                return Err(format!(
                    "the burst did not reach its kill point ({kill}) in {BURST_LIMIT:?}: {} bytes sent, {} acknowledged",
                    sent_bytes.load(Ordering::Relaxed),
                    acked.load(Ordering::Relaxed)
                ));
            }
            std::thread::sleep(Duration::from_micros(200));
        };
        if reached {
            std::thread::sleep(after);
        }
        gw.kill9();
        let mut sent = Vec::new();
        for t in threads {
            sent.extend(
                t.join()
                    .map_err(|_| "a device thread panicked".to_owned())?,
            );
        }
        Ok(sent)
    })
}

/// Starts the gateway again and waits until it takes jobs.
fn restart(site: &Site) -> Instance {
    let gw = site.start(INSTANCE);
    let up = eventually(Duration::from_secs(30), || {
        (gw.health().0 == 200).then_some(())
    });
    assert!(up.is_some(), "the restarted gateway does not take jobs");
    gw
}

/// The acknowledgement itself counts what was sent.
fn check_ack(job: &Sent, ack: &Value) -> Result<(), String> {
    let bytes: u64 = job.pages.iter().map(|p| p.len() as u64).sum();
    if ack["job_id"] != job.id.to_string()
        || ack["pages"] != job.pages.len()
        || ack["bytes"] != bytes
        || !ack["received_at"].is_string()
    {
        return Err(format!(
            "the acknowledgement does not match the {} pages and {bytes} bytes sent: {ack}",
            job.pages.len()
        ));
    }
    Ok(())
}

/// The job is stored whole: its status says it has the pages and bytes sent
/// (and, when given, the acknowledgement's time) and its page files are
/// exactly the pages sent. Returns the job's status.
fn check_present(
    dev: &Device,
    spool: &Path,
    id: Uuid,
    pages: &[Fingerprint],
    ack: Option<&Value>,
) -> Result<Value, String> {
    let r = dev.job(id);
    if r.status != 200 {
        return Err(format!(
            "its status answers {}: {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        ));
    }
    let view = r.json();
    let bytes: u64 = pages.iter().map(|p| p.len).sum();
    if view["pages"] != pages.len() || view["bytes"] != bytes || view["state"] != "received" {
        return Err(format!(
            "its status is not a received job of {} pages and {bytes} bytes: {view}",
            pages.len()
        ));
    }
    if let Some(ack) = ack
        && view["received_at"] != ack["received_at"]
    {
        return Err(format!(
            "received_at is {}, the acknowledgement said {}",
            view["received_at"], ack["received_at"]
        ));
    }
    let dir = spool.join("jobs").join(id.to_string());
    let files = page_files(&dir)?;
    let names: Vec<String> = files.iter().map(|(name, _)| name.clone()).collect();
    if files.len() != pages.len() {
        return Err(format!(
            "{} holds page files {names:?} for {} pages",
            dir.display(),
            pages.len()
        ));
    }
    for (seq, ((name, path), want)) in files.iter().zip(pages).enumerate() {
        if !name.starts_with(&format!("page-{:04}.", seq + 1)) {
            return Err(format!("{} holds page files {names:?}", dir.display()));
        }
        let content = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let found = Fingerprint::of(&content);
        if found.len != want.len {
            return Err(format!(
                "{} has {} bytes, {} were sent",
                path.display(),
                found.len,
                want.len
            ));
        }
        if found.sha256 != want.sha256 {
            return Err(format!(
                "{} has the length of the page sent ({} bytes) but not its content",
                path.display(),
                found.len
            ));
        }
    }
    Ok(view)
}

/// The page files of a job directory (`page-NNNN.<format>`) in order, with
/// their paths; other files are the spool's own business.
fn page_files(dir: &Path) -> Result<Vec<(String, PathBuf)>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut files: Vec<(String, PathBuf)> = entries
        .map(|e| {
            let e = e.map_err(|e| format!("{}: {e}", dir.display()))?;
            Ok((e.file_name().to_string_lossy().into_owned(), e.path()))
        })
        .collect::<Result<Vec<_>, String>>()?
        .into_iter()
        .filter(|(name, _)| name.starts_with("page-"))
        .collect();
    files.sort();
    Ok(files)
}

/// Nothing of the job is left: no status and no directory.
fn check_absent(dev: &Device, spool: &Path, id: Uuid) -> Result<(), String> {
    let r = dev.job(id);
    if r.status != 404 {
        return Err(format!(
            "its status answers {}: {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        ));
    }
    let dir = spool.join("jobs").join(id.to_string());
    if dir.exists() {
        let names: Vec<String> = page_files(&dir)
            .map(|files| files.into_iter().map(|(name, _)| name).collect())
            .unwrap_or_default();
        return Err(format!(
            "no job row, but {} exists with pages {names:?}",
            dir.display()
        ));
    }
    Ok(())
}

/// The spool after a start: its temporary area is empty and it has a
/// directory for exactly the jobs that are stored.
fn check_spool(spool: &Path, holds: &BTreeSet<Uuid>) -> Vec<String> {
    let mut problems = Vec::new();
    let tmp = spool.join("tmp");
    let emptied = eventually(Duration::from_secs(5), || {
        (std::fs::read_dir(&tmp).ok()?.count() == 0).then_some(())
    });
    if emptied.is_none() {
        let left: Vec<_> = std::fs::read_dir(&tmp)
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.file_name())).collect())
            .unwrap_or_default();
        problems.push(format!(
            "{} is not empty after the start: {left:?}",
            tmp.display()
        ));
    }
    let dirs: BTreeSet<Uuid> = std::fs::read_dir(spool.join("jobs"))
        .map(|d| {
            d.filter_map(|e| Uuid::parse_str(&e.ok()?.file_name().to_string_lossy()).ok())
                .collect()
        })
        .unwrap_or_default();
    for id in dirs.difference(holds) {
        problems.push(format!(
            "job directory {id} is in the spool without a stored job"
        ));
    }
    for id in holds.difference(&dirs) {
        problems.push(format!("stored job {id} has no directory in the spool"));
    }
    problems
}

/// Checks a job after its retry was answered with `ack`, and keeps it for
/// the rest of the run.
fn retried(
    dev: &Device,
    spool: &Path,
    job: &Sent,
    ack: &Value,
    iteration: u32,
    stored: &mut Vec<Stored>,
) -> Vec<String> {
    let pages: Vec<Fingerprint> = job.pages.iter().map(|p| Fingerprint::of(p)).collect();
    match check_ack(job, ack).and_then(|()| check_present(dev, spool, job.id, &pages, Some(ack))) {
        Ok(_) => {
            stored.push(Stored {
                id: job.id,
                iteration,
                pages,
                received_at: ack["received_at"].clone(),
            });
            Vec::new()
        }
        Err(e) => vec![format!("job {} after its retry: {e}", job.id)],
    }
}
