//! Delivery of the assembled document: to a folder, by SMTP mail, to an
//! HTTP webhook. It must not assemble documents or decide retries; it tells
//! the runner whether a failure is worth retrying.
//!
//! Every delivery is deduplicated by job id: the folder name is fixed per
//! job, mail carries a Message-ID derived from the job and step, the webhook
//! an `Idempotency-Key`; and each delivery leaves a record in the work
//! directory once the destination has accepted it, so that re-running the
//! step (after a crash before the runner recorded it done) delivers nothing
//! new.
//!
//! The mail and webhook transports (`MailRoute`, `WebhookTarget`) are
//! also what `crate::notify` sends admin notices with, so a server, TLS or
//! signing setting means the same in a workflow step and in `[notify]`.

mod folder;
mod mail;
pub mod name;
mod record;
mod tls;
mod webhook;

pub use folder::FolderStep;
pub(crate) use mail::MailRoute;
pub use mail::{MailStep, message_id};
pub use record::DeliveryRecord;
pub(crate) use webhook::WebhookTarget;
pub use webhook::{SIGNATURE_HEADER, WebhookStep, sign};

use crate::job::JobContext;
use crate::plugin::StepError;

/// Reads the document a delivery sends, or explains that there is none.
pub(crate) async fn read_document(
    job: &JobContext,
    destination: &str,
) -> Result<Vec<u8>, StepError> {
    let path = job.document_path();
    tokio::fs::read(&path).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            StepError::permanent(format!(
                "delivery to {destination} has no document: {} does not exist (the `assemble` step did not run)",
                path.display()
            ))
        } else {
            StepError::from_io(format!("delivery to {destination} cannot read {}", path.display()), &e)
        }
    })
}
