//! The record a delivery leaves in the job's work directory once its
//! destination accepted the document, read back to skip a repeated delivery.
//! It must not know how any destination is reached.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::fsutil;
use crate::job::{DeliveryReport, DeliveryReportKind, JobContext};
use crate::plugin::{StepError, blocking};

/// What was delivered where.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryRecord {
    /// The delivering plugin.
    pub plugin: String,
    /// The step index in the workflow, counting from 0.
    pub step: usize,
    /// Where the document went (a path, `smtp://host:port`, a URL).
    pub destination: String,
    /// The destination's acknowledgement (a Message-ID, an HTTP status).
    pub receipt: String,
    /// When the destination accepted it.
    pub at: DateTime<Utc>,
}

impl DeliveryRecord {
    /// The record left by an earlier run of this step, if any.
    pub async fn find(job: &JobContext, plugin: &str, step: usize) -> Option<DeliveryRecord> {
        let path = job.delivery_record(plugin, step);
        let bytes = tokio::fs::read(&path).await.ok()?;
        // An unreadable record was written by no complete run (records are
        // written atomically), so it counts as none.
        serde_json::from_slice(&bytes).ok()
    }

    /// Stores the record durably. When that fails, the destination already
    /// has the document and the step's next attempt will send it again:
    /// the job's reports say so (`possible_duplicate`) before the error is
    /// returned.
    pub async fn store(&self, job: &JobContext) -> Result<(), StepError> {
        let path = job.delivery_record(&self.plugin, self.step);
        let bytes = serde_json::to_vec_pretty(self)
            .map_err(|e| StepError::permanent(format!("encoding the delivery record: {e}")))?;
        let stored = blocking("recording the delivery", move || {
            if let Some(dir) = path.parent() {
                fsutil::create_private_dir_all(dir)
                    .map_err(|e| StepError::from_io(format!("creating {}", dir.display()), &e))?;
            }
            fsutil::write_atomic(&path, &bytes, "record")
                .map_err(|e| StepError::from_io(format!("writing {}", path.display()), &e))
        })
        .await;
        if let Err(e) = &stored {
            job.reports.push(DeliveryReport {
                plugin: self.plugin.clone(),
                step: Some(self.step),
                kind: DeliveryReportKind::PossibleDuplicate,
                text: format!(
                    "step {} ({}) of job {} delivered to {} ({}), but the record of it could not be written ({e}); it runs again, so its destination may receive the document twice, with the same idempotency key",
                    self.step + 1,
                    self.plugin,
                    job.job_id,
                    self.destination,
                    self.receipt
                ),
            });
        }
        stored
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[tokio::test]
    async fn a_record_that_cannot_be_written_is_reported_as_a_possible_duplicate() {
        let dir = tempfile::tempdir().unwrap();
        // The work directory is a file: nothing can be written under it,
        // whoever runs the test.
        let blocked = dir.path().join("work");
        std::fs::write(&blocked, b"not a directory").unwrap();
        let job = JobContext {
            job_id: uuid::Uuid::new_v4(),
            workflow: "w".into(),
            user: "alice".into(),
            device: "mfd-1".into(),
            submitted_at: Utc::now(),
            time_zone: chrono_tz::UTC,
            metadata: BTreeMap::new(),
            pages: Vec::new(),
            work_dir: blocked.join("job"),
            reports: Default::default(),
        };
        let record = DeliveryRecord {
            plugin: "webhook".into(),
            step: 3,
            destination: "http://127.0.0.1:9/hook".into(),
            receipt: "HTTP 200".into(),
            at: Utc::now(),
        };
        assert!(record.store(&job).await.is_err());
        let reports = job.reports.take();
        assert_eq!(reports.len(), 1, "{reports:?}");
        assert_eq!(reports[0].kind, DeliveryReportKind::PossibleDuplicate);
        assert_eq!(reports[0].step, Some(3));
        assert!(
            reports[0].text.contains("step 4 (webhook)"),
            "{}",
            reports[0].text
        );

        // Written, nothing is reported.
        let ok = JobContext {
            work_dir: dir.path().join("fine"),
            reports: Default::default(),
            ..job
        };
        record.store(&ok).await.unwrap();
        assert!(ok.reports.take().is_empty());
        assert_eq!(DeliveryRecord::find(&ok, "webhook", 3).await, Some(record));
    }
}
