//! The runner's guarantees, each against real processes and sockets: resume
//! without redoing work, retries with backoff, dead-letter on permanent and
//! exhausted failures, timeouts that kill a hung engine, and a missing
//! engine reported as such.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use plugins::runner::{MemoryStore, StoreEvent};
use plugins::{
    JobOutcome, JobProgress, JobRunner, Registry, RegistrySettings, RetryPolicy, StepRecord,
    WorkflowSpec,
};

fn policy(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        base_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(100),
        step_timeout: Duration::from_secs(60),
    }
}

fn spec(toml_text: &str) -> WorkflowSpec {
    toml::from_str(toml_text).unwrap()
}

/// `(step, attempt, outcome)` of every finished attempt.
fn finished(store: &MemoryStore, job: uuid::Uuid) -> Vec<(usize, u32, StepRecord)> {
    store
        .events(job)
        .into_iter()
        .filter_map(|e| match e {
            StoreEvent::Finished {
                step,
                attempt,
                outcome,
            } => Some((step, attempt, outcome)),
            StoreEvent::Started { .. } => None,
        })
        .collect()
}

fn started_steps(store: &MemoryStore, job: uuid::Uuid) -> Vec<usize> {
    store
        .events(job)
        .into_iter()
        .filter_map(|e| match e {
            StoreEvent::Started { step, .. } => Some(step),
            StoreEvent::Finished { .. } => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_job_redoes_no_completed_step_and_no_finished_page() {
    require_tesseract();
    let scratch = tempfile::tempdir().unwrap();
    let counter = scratch.path().join("recognised.log");
    let engine = counting_engine(scratch.path(), &counter);
    let registry = Registry::detect(RegistrySettings {
        tesseract_path: engine,
        ..Default::default()
    })
    .await;
    let root = scratch.path().join("share");
    std::fs::create_dir(&root).unwrap();
    let workflow = registry
        .build_workflow(
            "w",
            &spec(&format!(
                "[[steps]]\nplugin = \"ocr\"\n[[steps]]\nplugin = \"assemble\"\n\
                 [[steps]]\nplugin = \"folder\"\nroot = \"{}\"",
                root.display()
            )),
        )
        .unwrap();
    let texts = [
        "First page of the letter.",
        "Second page here.",
        "Third page text.",
        "Last page, signed.",
    ];
    let pages = rendered_upload(&scratch.path().join("spool"), &texts);
    let job = job(&scratch.path().join("work"), pages);
    let runner = JobRunner::new(policy(3));

    let store = Arc::new(MemoryStore::new());
    assert_eq!(
        runner.run(&workflow, &job, store.clone()).await,
        JobOutcome::Done
    );
    assert_eq!(line_count(&counter), 4, "one engine run per page");

    // Steps 0..2 are recorded done: only the folder step runs, and the
    // engine is not started at all.
    let delivered = files_under(&root);
    std::fs::remove_file(&delivered[0]).unwrap();
    let store = Arc::new(MemoryStore::new());
    store.set_progress(
        job.job_id,
        JobProgress {
            completed_steps: 2,
            attempts_on_next: 0,
        },
    );
    assert_eq!(
        runner.run(&workflow, &job, store.clone()).await,
        JobOutcome::Done
    );
    assert_eq!(started_steps(&store, job.job_id), vec![2]);
    assert_eq!(line_count(&counter), 4, "OCR ran again");
    assert_eq!(files_under(&root), delivered);

    // A crash in the middle of OCR: one page's output is missing. Resuming
    // at the OCR step recognises only that page.
    std::fs::remove_file(job.ocr_page_pdf(2)).unwrap();
    let store = Arc::new(MemoryStore::new());
    assert_eq!(
        runner.run(&workflow, &job, store.clone()).await,
        JobOutcome::Done
    );
    assert_eq!(line_count(&counter), 5);
    assert_eq!(started_steps(&store, job.job_id), vec![0, 1, 2]);
}

async fn webhook_job(
    scratch: &std::path::Path,
    url: &str,
    attempts: u32,
) -> (JobOutcome, Arc<MemoryStore>, plugins::JobContext) {
    let registry = Registry::detect(RegistrySettings::default()).await;
    let workflow = registry
        .build_workflow(
            "w",
            &spec(&format!(
                "[[steps]]\nplugin = \"assemble\"\n[[steps]]\nplugin = \"webhook\"\nurl = \"{url}\"\nsecret = \"s\"\ntimeout_secs = 10"
            )),
        )
        .unwrap();
    let job = job(&scratch.join("work"), small_upload(&scratch.join("spool")));
    let store = Arc::new(MemoryStore::new());
    let outcome = JobRunner::new(policy(attempts))
        .run(&workflow, &job, store.clone())
        .await;
    (outcome, store, job)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_answering_503_twice_is_delivered_on_the_third_attempt() {
    let hook = WebhookReceiver::start(vec![503, 503]).await;
    let scratch = tempfile::tempdir().unwrap();
    let (outcome, store, job) = webhook_job(scratch.path(), &hook.url(), 5).await;
    assert_eq!(outcome, JobOutcome::Done);
    let retry = StepRecord::Retry {
        reason: format!(
            "webhook POST to {} failed: HTTP 503 Service Unavailable (answer 503)",
            hook.url()
        ),
    };
    assert_eq!(
        finished(&store, job.job_id),
        vec![
            (0, 1, StepRecord::Done),
            (1, 1, retry.clone()),
            (1, 2, retry),
            (1, 3, StepRecord::Done)
        ]
    );
    let requests = hook.requests();
    assert_eq!(requests.len(), 3);
    assert!(
        requests
            .iter()
            .all(|r| r.headers["idempotency-key"] == job.job_id.to_string().as_str())
    );
    assert!(
        requests.iter().all(|r| r.body == requests[0].body),
        "attempts sent different bodies"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_answering_400_is_dead_lettered_at_once() {
    let hook = WebhookReceiver::start(vec![400, 400, 400]).await;
    let scratch = tempfile::tempdir().unwrap();
    let (outcome, store, job) = webhook_job(scratch.path(), &hook.url(), 5).await;
    let reason = format!(
        "webhook POST to {} failed: HTTP 400 Bad Request (answer 400)",
        hook.url()
    );
    assert_eq!(
        outcome,
        JobOutcome::DeadLetter {
            step: 1,
            plugin: "webhook".into(),
            reason: reason.clone()
        }
    );
    assert_eq!(hook.requests().len(), 1);
    assert_eq!(
        finished(&store, job.job_id).last(),
        Some(&(1, 1, StepRecord::Failed { reason }))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_is_retried_then_dead_lettered_naming_the_url() {
    // A port that was just free and has no listener.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/hook");
    let scratch = tempfile::tempdir().unwrap();
    let (outcome, store, job) = webhook_job(scratch.path(), &url, 3).await;
    let reason = format!("webhook POST to {url} failed: connection refused");
    assert_eq!(
        outcome,
        JobOutcome::DeadLetter {
            step: 1,
            plugin: "webhook".into(),
            reason: format!("{reason} (gave up after 3 attempts)"),
        }
    );
    let attempts: Vec<u32> = finished(&store, job.job_id)
        .into_iter()
        .filter(|(step, ..)| *step == 1)
        .map(|(_, attempt, _)| attempt)
        .collect();
    assert_eq!(attempts, vec![1, 2, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_smtp_connection_names_the_server() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let registry = Registry::detect(RegistrySettings::default()).await;
    let workflow = registry
        .build_workflow(
            "w",
            &spec(&format!(
                "[[steps]]\nplugin = \"assemble\"\n[[steps]]\nplugin = \"mail\"\nhost = \"127.0.0.1\"\nport = {port}\n\
                 tls = \"none\"\nfrom = \"s@example.org\"\nto = [\"a@example.org\"]"
            )),
        )
        .unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let job = job(
        &scratch.path().join("work"),
        small_upload(&scratch.path().join("spool")),
    );
    let outcome = JobRunner::new(policy(2))
        .run(&workflow, &job, Arc::new(MemoryStore::new()))
        .await;
    let JobOutcome::DeadLetter { reason, .. } = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(
        reason,
        format!(
            "mail to smtp://127.0.0.1:{port} failed: connection refused (gave up after 2 attempts)"
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_step_kills_the_hung_engine() {
    let scratch = tempfile::tempdir().unwrap();
    let pids = scratch.path().join("pids");
    let engine = hung_engine(scratch.path(), &pids);
    let registry = Registry::detect(RegistrySettings {
        tesseract_path: engine,
        ocr_parallelism: 2,
        ..Default::default()
    })
    .await;
    assert!(
        registry.capabilities()[0].available,
        "{:?}",
        registry.capabilities()
    );
    let workflow = registry
        .build_workflow("w", &spec("[[steps]]\nplugin = \"ocr\"\ntimeout_secs = 1"))
        .unwrap();
    let job = job(
        &scratch.path().join("work"),
        small_upload(&scratch.path().join("spool")),
    );
    let store = Arc::new(MemoryStore::new());
    let outcome = JobRunner::new(policy(1)).run(&workflow, &job, store).await;
    assert_eq!(
        outcome,
        JobOutcome::DeadLetter {
            step: 0,
            plugin: "ocr".into(),
            reason:
                "step 1 (`ocr`) did not finish within 1s and was stopped (gave up after 1 attempts)"
                    .into(),
        }
    );
    let pids = wait_pids(&pids, 1, Duration::from_secs(5)).await;
    assert_eq!(pids.len(), 1, "the fake engine never started");
    assert!(
        wait_gone(pids[0], Duration::from_secs(5)).await,
        "engine process {} still runs",
        pids[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_run_leaves_no_engine_running() {
    let scratch = tempfile::tempdir().unwrap();
    let pids_file = scratch.path().join("pids");
    let engine = hung_engine(scratch.path(), &pids_file);
    let registry = Registry::detect(RegistrySettings {
        tesseract_path: engine,
        ocr_parallelism: 4,
        ..Default::default()
    })
    .await;
    let workflow = registry
        .build_workflow("w", &spec("[[steps]]\nplugin = \"ocr\""))
        .unwrap();
    let pages = rendered_upload(&scratch.path().join("spool"), &["a", "b", "c", "d"]);
    let job = job(&scratch.path().join("work"), pages);
    let running = tokio::spawn(async move {
        JobRunner::new(policy(1))
            .run(&workflow, &job, Arc::new(MemoryStore::new()))
            .await
    });
    // All four pages' engines start (four permits), then the gateway stops
    // its workers.
    let pids = wait_pids(&pids_file, 4, Duration::from_secs(20)).await;
    assert_eq!(pids.len(), 4, "not every page's engine started: {pids:?}");
    running.abort();
    assert!(running.await.unwrap_err().is_cancelled());
    for pid in pids {
        assert!(
            wait_gone(pid, Duration::from_secs(5)).await,
            "engine process {pid} still runs"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_engine_is_an_absent_capability_and_a_permanent_failure() {
    let registry = Registry::detect(RegistrySettings {
        tesseract_path: "/nonexistent/bin/tesseract".into(),
        ..Default::default()
    })
    .await;
    let ocr = &registry.capabilities()[0];
    assert_eq!(ocr.name, "ocr");
    assert!(!ocr.available);
    assert_eq!(
        ocr.detail,
        "`/nonexistent/bin/tesseract` not found: install tesseract-ocr"
    );
    // The workflow still builds: a server without the engine can hand OCR
    // work to its peer.
    let workflow = registry
        .build_workflow(
            "w",
            &spec("[[steps]]\nplugin = \"ocr\"\n[[steps]]\nplugin = \"assemble\""),
        )
        .unwrap();
    assert!(workflow.needs_ocr());
    let scratch = tempfile::tempdir().unwrap();
    let job = job(
        &scratch.path().join("work"),
        small_upload(&scratch.path().join("spool")),
    );
    let store = Arc::new(MemoryStore::new());
    let outcome = JobRunner::new(policy(5))
        .run(&workflow, &job, store.clone())
        .await;
    let reason = "OCR engine not installed on this server: install tesseract-ocr \
                  (`/nonexistent/bin/tesseract` not found: install tesseract-ocr)";
    assert_eq!(
        outcome,
        JobOutcome::DeadLetter {
            step: 0,
            plugin: "ocr".into(),
            reason: reason.into()
        }
    );
    assert_eq!(
        finished(&store, job.job_id).len(),
        1,
        "a permanent failure is not retried"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_store_interrupts_the_job_and_it_resumes_later() {
    let registry = Registry::detect(RegistrySettings::default()).await;
    let workflow = registry
        .build_workflow("w", &spec("[[steps]]\nplugin = \"assemble\""))
        .unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let job = job(
        &scratch.path().join("work"),
        small_upload(&scratch.path().join("spool")),
    );
    let store = Arc::new(MemoryStore::new());
    store.fail_next_calls(1);
    let outcome = JobRunner::new(policy(3))
        .run(&workflow, &job, store.clone())
        .await;
    assert_eq!(
        outcome,
        JobOutcome::Interrupted {
            reason: "progress store failed: the store is unavailable (simulated)".into()
        }
    );
    assert!(
        !job.document_path().exists(),
        "a step ran without its start being recorded"
    );
    assert_eq!(
        JobRunner::new(policy(3))
            .run(&workflow, &job, store.clone())
            .await,
        JobOutcome::Done
    );
    assert_eq!(
        store.progress(job.job_id),
        JobProgress {
            completed_steps: 1,
            attempts_on_next: 0
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_attempts_never_finished_is_dead_lettered() {
    let registry = Registry::detect(RegistrySettings::default()).await;
    let workflow = registry
        .build_workflow("w", &spec("[[steps]]\nplugin = \"assemble\""))
        .unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let job = job(
        &scratch.path().join("work"),
        small_upload(&scratch.path().join("spool")),
    );
    let store = Arc::new(MemoryStore::new());
    // Three earlier runs each crashed the server during step 0.
    store.set_progress(
        job.job_id,
        JobProgress {
            completed_steps: 0,
            attempts_on_next: 3,
        },
    );
    let outcome = JobRunner::new(policy(3)).run(&workflow, &job, store).await;
    assert_eq!(
        outcome,
        JobOutcome::DeadLetter {
            step: 0,
            plugin: "assemble".into(),
            reason: "gave up after 3 attempts of step 1 (`assemble`); none of them finished".into(),
        }
    );
}

/// A store that refuses to let `refuse_at` start ("not now": the job was
/// taken over) and says which later steps are done already.
struct GatedStore {
    inner: Arc<MemoryStore>,
    refuse_at: Option<usize>,
    done_later: Vec<usize>,
}

impl plugins::ProgressStore for GatedStore {
    fn load(&self, job: uuid::Uuid) -> Result<JobProgress, plugins::StoreError> {
        self.inner.load(job)
    }

    fn done_later(&self, _job: uuid::Uuid) -> Result<Vec<usize>, plugins::StoreError> {
        Ok(self.done_later.clone())
    }

    fn step_started(
        &self,
        job: uuid::Uuid,
        step: usize,
        plugin: &str,
        attempt: u32,
        at: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), plugins::StoreError> {
        if self.refuse_at == Some(step) {
            return Err(plugins::StoreError::not_now(
                "another server owns the job now",
            ));
        }
        self.inner.step_started(job, step, plugin, attempt, at)
    }

    fn step_finished(
        &self,
        job: uuid::Uuid,
        step: usize,
        attempt: u32,
        outcome: &StepRecord,
        at: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), plugins::StoreError> {
        self.inner.step_finished(job, step, attempt, outcome, at)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_the_store_will_not_start_ends_the_run_between_steps() {
    let registry = Registry::detect(RegistrySettings::default()).await;
    let scratch = tempfile::tempdir().unwrap();
    let root = scratch.path().join("share");
    std::fs::create_dir(&root).unwrap();
    let workflow = registry
        .build_workflow(
            "w",
            &spec(&format!(
                "[[steps]]\nplugin = \"assemble\"\n[[steps]]\nplugin = \"folder\"\nroot = \"{}\"",
                root.display()
            )),
        )
        .unwrap();
    let job = job(
        &scratch.path().join("work"),
        small_upload(&scratch.path().join("spool")),
    );
    let inner = Arc::new(MemoryStore::new());
    let store = Arc::new(GatedStore {
        inner: inner.clone(),
        refuse_at: Some(1),
        done_later: Vec::new(),
    });
    let outcome = JobRunner::new(policy(3)).run(&workflow, &job, store).await;
    assert_eq!(
        outcome,
        JobOutcome::Yielded {
            reason: "another server owns the job now".into()
        }
    );
    assert_eq!(started_steps(&inner, job.job_id), vec![0]);
    assert!(
        std::fs::read_dir(&root).unwrap().next().is_none(),
        "the refused delivery did not run"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steps_recorded_done_later_in_the_workflow_are_skipped() {
    let registry = Registry::detect(RegistrySettings::default()).await;
    let scratch = tempfile::tempdir().unwrap();
    let (first, second) = (scratch.path().join("a"), scratch.path().join("b"));
    std::fs::create_dir(&first).unwrap();
    std::fs::create_dir(&second).unwrap();
    // Assembly runs again (its output stayed on the other server); the
    // first folder delivery was done there and is skipped; the second runs.
    let workflow = registry
        .build_workflow(
            "w",
            &spec(&format!(
                "[[steps]]\nplugin = \"assemble\"\n\
                 [[steps]]\nplugin = \"folder\"\nroot = \"{}\"\n\
                 [[steps]]\nplugin = \"folder\"\nroot = \"{}\"",
                first.display(),
                second.display()
            )),
        )
        .unwrap();
    let job = job(
        &scratch.path().join("work"),
        small_upload(&scratch.path().join("spool")),
    );
    let inner = Arc::new(MemoryStore::new());
    let store = Arc::new(GatedStore {
        inner: inner.clone(),
        refuse_at: None,
        done_later: vec![1],
    });
    let outcome = JobRunner::new(policy(3)).run(&workflow, &job, store).await;
    assert_eq!(outcome, JobOutcome::Done);
    assert_eq!(started_steps(&inner, job.job_id), vec![0, 2]);
    assert!(std::fs::read_dir(&first).unwrap().next().is_none());
    assert_eq!(std::fs::read_dir(&second).unwrap().count(), 1);
}
