//! The `folder` delivery shared by both servers of a pair, through the
//! runner: in the two documented cases where both deliver one job (a crash
//! before the delivery was recorded, a split pair), the folder keeps one
//! copy, the second is refused, and the refusal reaches the gateway through
//! the job's reports.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use plugins::runner::MemoryStore;
use plugins::{
    DeliveryReport, DeliveryReportKind, JobContext, JobOutcome, JobProgress, JobReports, JobRunner,
    Registry, RetryPolicy, Workflow, WorkflowSpec,
};

fn runner() -> JobRunner {
    JobRunner::new(RetryPolicy {
        max_attempts: 2,
        base_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(20),
        step_timeout: Duration::from_secs(30),
    })
}

fn workflow(root: &Path) -> Workflow {
    let spec: WorkflowSpec = toml::from_str(&format!(
        "[[steps]]\nplugin = \"assemble\"\n[[steps]]\nplugin = \"folder\"\nroot = \"{}\"\nname = \"{{user}}-{{job_id}}.pdf\"",
        root.display()
    ))
    .unwrap();
    Registry::without_engines()
        .build_workflow("scan-to-share", &spec)
        .unwrap()
}

/// One server's copy of `job`: its own work directory holding `document`
/// as its `assemble` step made it, and its own reports.
fn server_copy(job: &JobContext, work: PathBuf, document: &[u8]) -> JobContext {
    std::fs::create_dir_all(&work).unwrap();
    let copy = JobContext {
        work_dir: work,
        reports: JobReports::default(),
        ..job.clone()
    };
    std::fs::write(copy.document_path(), document).unwrap();
    copy
}

/// A store where `assemble` is done: the run starts at the folder step.
fn assembled(job: &JobContext) -> Arc<MemoryStore> {
    let store = Arc::new(MemoryStore::new());
    store.set_progress(
        job.job_id,
        JobProgress {
            completed_steps: 1,
            attempts_on_next: 0,
        },
    );
    store
}

fn kinds(reports: &[DeliveryReport]) -> Vec<DeliveryReportKind> {
    reports.iter().map(|r| r.kind).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn both_servers_delivering_one_job_leave_one_file_and_one_report() {
    let scratch = tempfile::tempdir().unwrap();
    let root = scratch.path().join("share");
    std::fs::create_dir(&root).unwrap();
    let workflow = workflow(&root);
    let job = job(&scratch.path().join("unused"), Vec::new());
    let document = b"%PDF-1.7 the same document on both servers".to_vec();

    // Several rounds with a fresh job each, so the race has chances.
    for round in 0..10 {
        let job = JobContext {
            job_id: uuid::Uuid::new_v4(),
            ..job.clone()
        };
        let a = server_copy(&job, scratch.path().join(format!("a{round}")), &document);
        let b = server_copy(&job, scratch.path().join(format!("b{round}")), &document);
        let (wa, wb) = (workflow.clone(), workflow.clone());
        let (ja, jb) = (a.clone(), b.clone());
        let racer_a = tokio::spawn(async move { runner().run(&wa, &ja, assembled(&ja)).await });
        let racer_b = tokio::spawn(async move { runner().run(&wb, &jb, assembled(&jb)).await });
        assert_eq!(racer_a.await.unwrap(), JobOutcome::Done);
        assert_eq!(racer_b.await.unwrap(), JobOutcome::Done);

        let target = root.join(format!("alice-{}.pdf", job.job_id));
        assert_eq!(std::fs::read(&target).unwrap(), document);
        let mut reported = a.reports.take();
        reported.extend(b.reports.take());
        assert_eq!(
            kinds(&reported),
            vec![DeliveryReportKind::SecondCopyRefused],
            "round {round}: {reported:?}"
        );
        assert_eq!(reported[0].plugin, "folder");
        assert!(
            reported[0].text.contains(&target.display().to_string()),
            "{}",
            reported[0].text
        );
    }
    // One file per job, and no temporary file left by either server.
    let delivered = files_under(&root);
    assert_eq!(delivered.len(), 10, "{delivered:?}");
    assert!(
        delivered
            .iter()
            .all(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.')),
        "{delivered:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_delivery_succeeds_without_writing_and_says_so() {
    let scratch = tempfile::tempdir().unwrap();
    let root = scratch.path().join("share");
    std::fs::create_dir(&root).unwrap();
    let workflow = workflow(&root);
    let job = server_copy(
        &job(&scratch.path().join("unused"), Vec::new()),
        scratch.path().join("work"),
        b"%PDF-1.7 first",
    );
    let target = root.join(format!("alice-{}.pdf", job.job_id));

    assert_eq!(
        runner().run(&workflow, &job, assembled(&job)).await,
        JobOutcome::Done
    );
    assert_eq!(job.reports.take(), Vec::new());

    // The crash came after the folder took the document but before the
    // runner recorded the step: the step runs again.
    assert_eq!(
        runner().run(&workflow, &job, assembled(&job)).await,
        JobOutcome::Done
    );
    assert_eq!(
        kinds(&job.reports.take()),
        vec![DeliveryReportKind::SecondCopyRefused]
    );
    assert_eq!(files_under(&root), vec![target.clone()]);
    assert_eq!(std::fs::read(&target).unwrap(), b"%PDF-1.7 first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_different_document_under_the_name_is_dead_letter_and_reported() {
    let scratch = tempfile::tempdir().unwrap();
    let root = scratch.path().join("share");
    std::fs::create_dir(&root).unwrap();
    let workflow = workflow(&root);
    let job = job(&scratch.path().join("unused"), Vec::new());
    let a = server_copy(
        &job,
        scratch.path().join("a"),
        b"%PDF-1.7 as server A made it",
    );
    let b = server_copy(
        &job,
        scratch.path().join("b"),
        b"%PDF-1.7 as server B made it",
    );
    let target = root.join(format!("alice-{}.pdf", job.job_id));

    assert_eq!(
        runner().run(&workflow, &a, assembled(&a)).await,
        JobOutcome::Done
    );
    let outcome = runner().run(&workflow, &b, assembled(&b)).await;
    let JobOutcome::DeadLetter {
        step,
        plugin,
        reason,
    } = outcome
    else {
        panic!("expected a dead letter, got {outcome:?}");
    };
    assert_eq!((step, plugin.as_str()), (1, "folder"));
    assert!(
        reason.contains(&target.display().to_string()) && reason.contains("already has that name"),
        "{reason}"
    );
    // Permanent: one attempt, one report.
    assert_eq!(
        kinds(&b.reports.take()),
        vec![DeliveryReportKind::NameTaken]
    );
    assert_eq!(a.reports.take(), Vec::new());
    assert_eq!(
        std::fs::read(&target).unwrap(),
        b"%PDF-1.7 as server A made it"
    );
    assert_eq!(files_under(&root), vec![target]);
}

#[test]
fn reports_are_shared_by_clones_and_taken_once() {
    let job = job(Path::new("/tmp/unused"), Vec::new());
    let seen_by_a_step = job.clone();
    seen_by_a_step.reports.push(DeliveryReport {
        plugin: "folder".into(),
        step: None,
        kind: DeliveryReportKind::NameTaken,
        text: "t".into(),
    });
    assert_eq!(job.reports.take().len(), 1);
    assert_eq!(job.reports.take(), Vec::new());
}

#[test]
fn report_kinds_are_written_in_snake_case() {
    for (kind, text) in [
        (DeliveryReportKind::SecondCopyRefused, "second_copy_refused"),
        (DeliveryReportKind::NameTaken, "name_taken"),
    ] {
        assert_eq!(serde_json::to_value(kind).unwrap(), text);
        let back: DeliveryReportKind = serde_json::from_value(text.into()).unwrap();
        assert_eq!(back, kind);
    }
}
