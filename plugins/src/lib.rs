//! The scan job pipeline: the [`plugin::Plugin`] trait, the step runner
//! (timeouts, retries, dead-letter), and the built-in plugins — OCR with the
//! tesseract engine, PDF assembly, and delivery to a folder, by SMTP mail and
//! to an HTTP webhook. It must know nothing of the server pair, HTTP routing,
//! SQL or the gateway: the gateway drives it through this API and stores
//! progress through [`runner::ProgressStore`].
//!
//! Module map, one owner per concern:
//! - [`page`]: page file formats, sniffing, and reading pages out of files;
//! - [`job`]: what a step sees of a job, and the work-dir layout;
//! - [`workflow`]: the configuration shapes and the validated workflow;
//! - [`index_fields`]: a workflow's index fields and the check of a job's
//!   metadata against them (the rules the device panel shares);
//! - [`registry`]: the built-in plugins, settings parsing and capabilities;
//! - [`plugin`]: the trait every step implements and its error type;
//! - [`runner`]: running a job's steps in order, with resume and retries;
//! - [`ocr`], [`assemble`], [`deliver`]: the built-in steps;
//! - [`fsutil`]: atomic, durable file writes shared by the steps;
//! - [`notify`]: notices to the admins by mail and/or webhook, sent with
//!   the delivery steps' transports (the caller words them).
//!
//! Steps hand their results to later steps only through files in the job's
//! work directory, each written atomically, so that a job resumed after a
//! crash finds either a complete output or none.

pub mod assemble;
pub mod deliver;
pub mod fsutil;
pub mod index_fields;
pub mod job;
pub mod notify;
pub mod ocr;
pub mod page;
pub mod plugin;
pub mod registry;
pub mod runner;
pub mod settings;
pub mod workflow;

pub use index_fields::{FieldSpec, FieldType, IndexField, MetadataRefusal, Rule};
pub use job::{DeliveryReport, DeliveryReportKind, JobContext, JobReports, delivery_record_in};
pub use notify::{ChannelOutcome, Notice, Notifier, NotifyError, NotifyReport, NotifySettings};
pub use page::{PageFile, PageFormat};
pub use plugin::{Plugin, StepError};
pub use registry::{Capability, Registry, RegistrySettings};
pub use runner::{
    JobOutcome, JobProgress, JobRunner, ProgressStore, RetryPolicy, StepRecord, StoreError,
};
pub use workflow::{ConfigError, StepSpec, Workflow, WorkflowSpec};
