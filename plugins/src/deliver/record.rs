//! The record a delivery leaves in the job's work directory once its
//! destination accepted the document, read back to skip a repeated delivery.
//! It must not know how any destination is reached.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::fsutil;
use crate::job::JobContext;
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

    /// Stores the record durably.
    pub async fn store(&self, job: &JobContext) -> Result<(), StepError> {
        let path = job.delivery_record(&self.plugin, self.step);
        let bytes = serde_json::to_vec_pretty(self)
            .map_err(|e| StepError::permanent(format!("encoding the delivery record: {e}")))?;
        blocking("recording the delivery", move || {
            if let Some(dir) = path.parent() {
                fsutil::create_private_dir_all(dir)
                    .map_err(|e| StepError::from_io(format!("creating {}", dir.display()), &e))?;
            }
            fsutil::write_atomic(&path, &bytes, "record")
                .map_err(|e| StepError::from_io(format!("writing {}", path.display()), &e))
        })
        .await
    }
}
