//! What a step sees of a job — who scanned what, where, when, and the files —
//! and the layout of the job's work directory that steps share. It must not
//! load or store jobs: the gateway builds a [`JobContext`] from its records.
//!
//! Work directory layout (all written atomically by their producers):
//! - `ocr/page-NNNN.pdf`, `ocr/page-NNNN.txt`: one searchable PDF and the
//!   recognised text per page (`NNNN` counts from 0001), from `ocr`;
//! - `ocr/text.txt`: the whole job's text, pages separated by form feeds;
//! - `document.pdf`: the assembled document, from `assemble`;
//! - `sent/<plugin>-step<N>.json`: a delivery's record that it completed, so
//!   that a re-run of that step does not deliver again.
//!
//! Steps also tell the gateway what its admins should know about a delivery
//! without failing the job, through [`JobContext::reports`]: a
//! [`DeliveryReport`] says, for example, that a folder already held this
//! job's document and the second copy was refused (the two documented cases
//! in which both servers of a pair deliver one job: a crash between a
//! destination accepting the document and the server recording it, and two
//! live servers cut off from each other). The gateway takes the reports
//! after a run ([`JobReports::take`]) and shows them; steps only push.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::page::PageFile;

/// One scan job as the pipeline sees it.
#[derive(Clone, Debug)]
pub struct JobContext {
    /// The job's identity, chosen at intake; deliveries use it for
    /// deduplication.
    pub job_id: Uuid,
    /// The workflow's name.
    pub workflow: String,
    /// Who scanned (from the device session).
    pub user: String,
    /// Which device scanned.
    pub device: String,
    /// When the job was accepted.
    pub submitted_at: DateTime<Utc>,
    /// The server's zone: dates and times in names and subjects use it.
    pub time_zone: chrono_tz::Tz,
    /// Free-form fields the device sent with the job.
    pub metadata: BTreeMap<String, String>,
    /// The uploaded files, in page order.
    pub pages: Vec<PageFile>,
    /// The job's own scratch directory; it survives restarts.
    pub work_dir: PathBuf,
    /// What steps reported about their deliveries during this run; clones
    /// of the context share it.
    pub reports: JobReports,
}

impl JobContext {
    /// Where `assemble` writes the document and deliveries read it.
    pub fn document_path(&self) -> PathBuf {
        self.work_dir.join("document.pdf")
    }

    /// Where `ocr` writes its per-page outputs.
    pub fn ocr_dir(&self) -> PathBuf {
        self.work_dir.join("ocr")
    }

    /// The searchable PDF of page `number` (counting from 0).
    pub fn ocr_page_pdf(&self, number: usize) -> PathBuf {
        self.ocr_dir().join(format!("page-{:04}.pdf", number + 1))
    }

    /// The recognised text of page `number` (counting from 0).
    pub fn ocr_page_text(&self, number: usize) -> PathBuf {
        self.ocr_dir().join(format!("page-{:04}.txt", number + 1))
    }

    /// The whole job's recognised text.
    pub fn ocr_text_path(&self) -> PathBuf {
        self.ocr_dir().join("text.txt")
    }

    /// The record a delivery step leaves once it has delivered.
    pub fn delivery_record(&self, plugin: &str, step: usize) -> PathBuf {
        delivery_record_in(&self.work_dir, plugin, step)
    }
}

/// What a delivery step reports to the admins about one delivery that did
/// not go as usual, whether or not the step failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryReport {
    /// The reporting plugin (`folder`).
    pub plugin: String,
    /// The step index in the workflow, counting from 0, where the plugin
    /// knows it.
    pub step: Option<usize>,
    /// What happened, for sorting and filtering.
    pub kind: DeliveryReportKind,
    /// What happened, as a sentence for the admins, naming the destination.
    pub text: String,
}

/// The kinds of [`DeliveryReport`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryReportKind {
    /// The destination already held this job's document, identical to the
    /// one being delivered; the second copy was not written and the step
    /// succeeded.
    SecondCopyRefused,
    /// The destination name was taken by a different document; it was left
    /// as it is and the step failed.
    NameTaken,
    /// The destination accepted the document, but the record of that could
    /// not be written (a full or failing disk): the step fails and runs
    /// again, so the destination may receive the document twice, with the
    /// same idempotency key. The same report as a delivery step cut short.
    PossibleDuplicate,
}

/// The reports of one job run: a handle that clones share, so the gateway
/// keeps one and reads what the steps pushed into theirs.
#[derive(Clone, Debug, Default)]
pub struct JobReports(Arc<Mutex<Vec<DeliveryReport>>>);

impl JobReports {
    /// Adds a report.
    pub fn push(&self, report: DeliveryReport) {
        self.reports().push(report);
    }

    /// Removes and returns every report pushed so far, oldest first.
    pub fn take(&self) -> Vec<DeliveryReport> {
        std::mem::take(&mut *self.reports())
    }

    fn reports(&self) -> std::sync::MutexGuard<'_, Vec<DeliveryReport>> {
        // A step that panicked while pushing left a complete list behind
        // (a push cannot be half done), so a poisoned lock is still usable.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Where the delivery step `step` (counting from 0) of `plugin` leaves its
/// record in a job's work directory `work_dir` (a server that restarts looks
/// here to tell a finished delivery from one that may repeat).
pub fn delivery_record_in(work_dir: &std::path::Path, plugin: &str, step: usize) -> PathBuf {
    work_dir
        .join("sent")
        .join(format!("{plugin}-step{step}.json"))
}
