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

use std::collections::BTreeMap;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
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
        self.work_dir
            .join("sent")
            .join(format!("{plugin}-step{step}.json"))
    }
}
