//! OCR throughput of the pipeline against the bare engine, in one run on the
//! same pages: renders N full A4 text pages (300 dpi PNG), then
//! 1. runs the tesseract CLI directly, one single-threaded process per page
//!    (`OMP_THREAD_LIMIT=1`), at most P at a time, writing PDF and text;
//! 2. runs one job of the same pages through the pipeline (`ocr` then
//!    `assemble`) with `ocr_parallelism` P;
//!
//! and prints pages per second for both and their ratio. With `--json` the
//! account of each round goes to stderr and stdout carries only the figures,
//! as one JSON object (what `cargo xtask bench ocr` reads).
//!
//! Usage: cargo run --release -p plugins --example ocr-bench -- --pages 16 [--parallelism P] [--rounds R] [--json]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mfd_sim::pages::{PageRenderer, ScanFormat};
use plugins::runner::MemoryStore;
use plugins::{
    JobContext, JobOutcome, JobProgress, JobRunner, PageFile, PageFormat, Registry,
    RegistrySettings, RetryPolicy,
};
use tokio::sync::Semaphore;

struct Options {
    pages: usize,
    parallelism: usize,
    rounds: usize,
    json: bool,
}

fn options() -> Result<Options, String> {
    let mut parsed = Options {
        pages: 16,
        parallelism: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        rounds: 1,
        json: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--json" {
            parsed.json = true;
            continue;
        }
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number: usize = value
            .parse()
            .map_err(|_| format!("{flag}: `{value}` is not a number"))?;
        match flag.as_str() {
            "--pages" => parsed.pages = number.max(1),
            "--parallelism" => parsed.parallelism = number.max(1),
            "--rounds" => parsed.rounds = number.max(1),
            _ => {
                return Err(format!(
                    "unknown option {flag}; use --pages, --parallelism, --rounds, --json"
                ));
            }
        }
    }
    Ok(parsed)
}

/// A full page of ordinary prose, different for every page.
fn page_text(page: usize) -> String {
    const WORDS: [&str; 24] = [
        "scanner",
        "office",
        "report",
        "invoice",
        "quarterly",
        "meeting",
        "delivery",
        "contract",
        "number",
        "building",
        "service",
        "printer",
        "customer",
        "payment",
        "tuesday",
        "signature",
        "department",
        "approved",
        "schedule",
        "document",
        "archive",
        "request",
        "budget",
        "project",
    ];
    let mut state = page as u64 * 7919 + 17;
    let mut lines = Vec::new();
    for _ in 0..34 {
        let mut line = String::new();
        while line.len() < 80 {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(WORDS[(state >> 33) as usize % WORDS.len()]);
        }
        lines.push(line);
    }
    lines.join("\n")
}

async fn raw_engine(pages: &[PathBuf], out: &Path, parallelism: usize) -> Duration {
    std::fs::create_dir_all(out).unwrap();
    let slots = Arc::new(Semaphore::new(parallelism));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, page) in pages.iter().enumerate() {
        let (slots, page, base) = (
            Arc::clone(&slots),
            page.clone(),
            out.join(format!("page-{i}")),
        );
        tasks.spawn(async move {
            let _permit = slots.acquire_owned().await.unwrap();
            let status = tokio::process::Command::new("tesseract")
                .arg(&page)
                .arg(&base)
                .args(["-l", "eng", "pdf", "txt"])
                .env("OMP_THREAD_LIMIT", "1")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .await
                .expect("tesseract is required: install tesseract-ocr");
            assert!(status.success(), "tesseract failed on {}", page.display());
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    start.elapsed()
}

/// Prints the account of a run: to stdout, or to stderr when stdout
/// carries the JSON figures.
macro_rules! say {
    ($json:expr, $($arg:tt)*) => {
        if $json {
            eprintln!($($arg)*);
        } else {
            println!($($arg)*);
        }
    };
}

/// The pipeline's time for the job, and the assembly's alone.
async fn pipeline(registry: &Registry, pages: &[PathBuf], work: &Path) -> (Duration, Duration) {
    let spec =
        toml::from_str("[[steps]]\nplugin = \"ocr\"\n[[steps]]\nplugin = \"assemble\"").unwrap();
    let workflow = registry.build_workflow("bench", &spec).unwrap();
    let job = JobContext {
        job_id: uuid::Uuid::new_v4(),
        workflow: "bench".into(),
        user: "bench".into(),
        device: "bench".into(),
        submitted_at: chrono::Utc::now(),
        time_zone: chrono_tz::UTC,
        metadata: Default::default(),
        pages: pages
            .iter()
            .map(|path| PageFile {
                path: path.clone(),
                format: PageFormat::Png,
            })
            .collect(),
        work_dir: work.to_path_buf(),
        reports: Default::default(),
    };
    let runner = JobRunner::new(RetryPolicy {
        max_attempts: 1,
        ..RetryPolicy::default()
    });
    let start = Instant::now();
    let outcome = runner
        .run(&workflow, &job, Arc::new(MemoryStore::new()))
        .await;
    let elapsed = start.elapsed();
    assert_eq!(outcome, JobOutcome::Done, "the pipeline failed");
    // For the record, how much of that the assembly alone takes: the same
    // job resumed after OCR.
    let store = Arc::new(MemoryStore::new());
    store.set_progress(
        job.job_id,
        JobProgress {
            completed_steps: 1,
            attempts_on_next: 0,
        },
    );
    let start = Instant::now();
    assert_eq!(runner.run(&workflow, &job, store).await, JobOutcome::Done);
    (elapsed, start.elapsed())
}

#[tokio::main]
async fn main() {
    let options = match options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("ocr-bench: {e}");
            std::process::exit(2);
        }
    };
    let scratch = tempfile::tempdir().unwrap();
    let renderer = PageRenderer::new().unwrap_or_else(|e| panic!("{e}"));
    let pages: Vec<PathBuf> = (0..options.pages)
        .map(|i| {
            let path = scratch.path().join(format!("page-{i:03}.png"));
            std::fs::write(
                &path,
                renderer
                    .render(&page_text(i), ScanFormat::Png, 300)
                    .unwrap(),
            )
            .unwrap();
            path
        })
        .collect();
    let registry = Registry::detect(RegistrySettings {
        ocr_parallelism: options.parallelism,
        ..RegistrySettings::default()
    })
    .await;
    assert!(
        registry.capabilities()[0].available,
        "tesseract is required: install tesseract-ocr tesseract-ocr-eng"
    );
    let json = options.json;
    say!(
        json,
        "ocr-bench: {} pages (A4, 300 dpi PNG), parallelism {}, {} round(s), {}",
        options.pages,
        options.parallelism,
        options.rounds,
        registry.capabilities()[0].detail
    );
    let (mut raw_total, mut pipeline_total) = (Duration::ZERO, Duration::ZERO);
    let mut rounds = Vec::new();
    for round in 0..options.rounds {
        // Alternate the order so that neither side always runs on a warmer
        // machine.
        let work = scratch.path().join(format!("round-{round}"));
        let (raw, (piped, assembly)) = if round % 2 == 0 {
            let raw = raw_engine(&pages, &work.join("raw"), options.parallelism).await;
            (raw, pipeline(&registry, &pages, &work.join("job")).await)
        } else {
            let piped = pipeline(&registry, &pages, &work.join("job")).await;
            (
                raw_engine(&pages, &work.join("raw"), options.parallelism).await,
                piped,
            )
        };
        say!(
            json,
            "  (assembling the {} recognised pages alone: {:.2} s)",
            pages.len(),
            assembly.as_secs_f64()
        );
        say!(
            json,
            "round {}: tesseract CLI {:.2} s, pipeline {:.2} s",
            round + 1,
            raw.as_secs_f64(),
            piped.as_secs_f64()
        );
        rounds.push(serde_json::json!({
            "cli_seconds": raw.as_secs_f64(),
            "pipeline_seconds": piped.as_secs_f64(),
            "assembly_alone_seconds": assembly.as_secs_f64(),
        }));
        raw_total += raw;
        pipeline_total += piped;
    }
    let pages_total = (options.pages * options.rounds) as f64;
    let raw_rate = pages_total / raw_total.as_secs_f64();
    let pipeline_rate = pages_total / pipeline_total.as_secs_f64();
    say!(json, "tesseract CLI: {raw_rate:.3} pages/s");
    say!(
        json,
        "pipeline (ocr + assemble): {pipeline_rate:.3} pages/s"
    );
    say!(
        json,
        "ratio pipeline / CLI: {:.3}",
        pipeline_rate / raw_rate
    );
    if json {
        println!(
            "{}",
            serde_json::json!({
                "pages": options.pages,
                "rounds": rounds,
                "parallelism": options.parallelism,
                "engine": registry.capabilities()[0].detail,
                "cli_pages_per_second": raw_rate,
                "pipeline_pages_per_second": pipeline_rate,
                "ratio_pipeline_to_cli": pipeline_rate / raw_rate,
            })
        );
    }
}
