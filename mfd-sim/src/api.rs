//! Owns the JSON shapes of the device API (`docs/API.md`) as the device reads
//! them; it must not do I/O. Unknown enum values are kept as `Unknown` rather
//! than rejected, so a newer gateway does not break an older device.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The role a gateway reports in `/health`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Licensed with an `03` key.
    Primary,
    /// Licensed with an `04` key.
    Secondary,
    /// No license activated.
    Unlicensed,
    /// A former primary that saw a newer epoch and stepped down.
    Fenced,
    /// A value this device does not know.
    #[serde(other)]
    Unknown,
}

/// Whether a service behind the gateway is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceState {
    /// Working.
    Up,
    /// Not working.
    Down,
    /// A value this device does not know.
    #[serde(other)]
    Unknown,
}

/// One capability a gateway reports, such as the OCR engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capability {
    /// The capability's name, e.g. `ocr`.
    pub name: String,
    /// Whether this server can do it itself.
    pub available: bool,
    /// Engine version, languages and the like.
    #[serde(default)]
    pub detail: Option<String>,
}

/// The body of `GET /health` (sent with `200` and with `503`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// The instance's unique name.
    pub instance: String,
    /// Its role in the pair.
    pub role: Role,
    /// The epoch of the primary it follows.
    #[serde(default)]
    pub epoch: u64,
    /// The web service.
    pub web: ServiceState,
    /// The data service (the job store).
    pub data: ServiceState,
    /// Whether an admin put the instance in maintenance mode.
    pub maintenance: bool,
    /// Whether it takes jobs right now.
    pub accepting: bool,
    /// Why it does not accept jobs: `maintenance`, `data-service-down`,
    /// `not-licensed`, `fenced`.
    #[serde(default)]
    pub reason: Option<String>,
    /// The gateway's version.
    #[serde(default)]
    pub version: String,
    /// Per-server capabilities.
    #[serde(default)]
    pub capabilities: Vec<Capability>,
}

/// The answer to `POST /api/v1/devices/register`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    /// The new device's id.
    pub device_id: String,
    /// The device token, shown only this once.
    pub token: String,
    /// `pending` until an admin approves the device.
    pub status: String,
}

impl fmt::Debug for Registration {
    // The token is a credential; it must not end up in logs through `{:?}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registration")
            .field("device_id", &self.device_id)
            .field("token", &"<redacted>")
            .field("status", &self.status)
            .finish()
    }
}

/// The answer to `GET /api/v1/device`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// The device's id.
    pub device_id: String,
    /// Its name.
    pub name: String,
    /// `pending`, `approved` or `revoked`.
    pub status: String,
    /// Whether the device is within the license's device seats.
    #[serde(default)]
    pub within_seats: bool,
}

/// The answer to `GET /api/v1/workflows`: the workflow names and, per
/// workflow, the index fields a job's metadata must fill. A gateway that
/// sends no `details` has no index fields for any workflow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkflowCatalog {
    /// The configured workflow names.
    pub workflows: Vec<String>,
    /// The index fields of each workflow.
    #[serde(default)]
    pub details: Vec<WorkflowDetail>,
}

impl WorkflowCatalog {
    /// The index fields of `workflow`; none when the gateway declares none.
    pub fn fields(&self, workflow: &str) -> &[IndexField] {
        self.details
            .iter()
            .find(|d| d.name == workflow)
            .map_or(&[], |d| d.fields.as_slice())
    }
}

/// One workflow's index fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkflowDetail {
    /// The workflow's name.
    pub name: String,
    /// Its index fields, in the order the panel shows them.
    #[serde(default)]
    pub fields: Vec<IndexField>,
}

/// An index field: a metadata key the gateway checks before it accepts a job
/// (`422 invalid_metadata` when the value breaks the field's rule).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexField {
    /// The metadata key.
    pub name: String,
    /// What the panel shows for it.
    #[serde(default)]
    pub label: String,
    /// The kind of value.
    #[serde(rename = "type")]
    pub kind: FieldKind,
    /// Whether a job without a value is refused.
    #[serde(default)]
    pub required: bool,
    /// For `text`: a regular expression the whole value must match.
    #[serde(default)]
    pub pattern: Option<String>,
    /// For `choice`: the allowed values.
    #[serde(default)]
    pub choices: Vec<String>,
}

/// The kinds of [`IndexField`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldKind {
    /// Free text, optionally matching `pattern`.
    Text,
    /// A decimal number: `-?[0-9]+(\.[0-9]+)?`.
    Number,
    /// One of `choices`.
    Choice,
    /// A calendar date, `YYYY-MM-DD`.
    Date,
    /// A kind this device does not know (checked by the gateway only).
    #[serde(other)]
    Unknown,
}

/// A user session, valid on both servers of the pair.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// The signed session token for `X-Scan-Session`.
    pub session: String,
    /// The user it belongs to.
    pub user: String,
    /// When it expires.
    pub expires_at: DateTime<Utc>,
}

impl fmt::Debug for Session {
    // The session token is a credential; keep it out of `{:?}` output.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("session", &"<redacted>")
            .field("user", &self.user)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Durable in the spool, not yet picked up.
    Received,
    /// The pipeline is working on it.
    Processing,
    /// Delivered.
    Done,
    /// Dead-lettered; `reason` says which step failed.
    Failed,
    /// A value this device does not know.
    #[serde(other)]
    Unknown,
}

impl JobState {
    /// True for `done` and `failed`, the states a job does not leave by itself.
    pub fn is_terminal(self) -> bool {
        matches!(self, JobState::Done | JobState::Failed)
    }
}

/// The acknowledgement of `PUT /api/v1/jobs/{job_id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobAck {
    /// The device-chosen job id.
    pub job_id: Uuid,
    /// `received` at acknowledgement time.
    pub state: JobState,
    /// The instance that made the job durable.
    pub accepted_by: String,
    /// That instance's role at the time.
    pub role: Role,
    /// That instance's epoch at the time.
    pub epoch: u64,
    /// When the job became durable.
    pub received_at: DateTime<Utc>,
    /// Number of pages stored.
    pub pages: u32,
    /// Number of page bytes stored.
    pub bytes: u64,
}

/// The outcome of a job submission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitted {
    /// The acknowledgement (for a replay, the original one).
    pub ack: JobAck,
    /// `false` for `201 Created`, `true` for `200 OK`: the job id had already
    /// been accepted and nothing was stored twice.
    pub replayed: bool,
}

/// One recorded pipeline step of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobStep {
    /// The step's number in the workflow, from 1.
    pub step: u32,
    /// The plugin that ran it.
    pub plugin: String,
    /// Which attempt this was.
    pub attempt: u32,
    /// How it went: `done`, `retry`, `failed`, `interrupted`; `None` while
    /// the attempt runs (or ran on a server that died during it).
    #[serde(default)]
    pub outcome: Option<String>,
    /// Why, when it did not succeed.
    #[serde(default)]
    pub reason: Option<String>,
}

/// The answer to `GET /api/v1/jobs/{job_id}`, and one entry of the job list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobStatus {
    /// The device-chosen job id.
    pub job_id: Uuid,
    /// Where the job is.
    pub state: JobState,
    /// Why it failed, for `failed`.
    #[serde(default)]
    pub reason: Option<String>,
    /// The workflow it runs through.
    pub workflow: String,
    /// Number of pages.
    pub pages: u32,
    /// When it became durable.
    pub received_at: DateTime<Utc>,
    /// When its state last changed.
    pub updated_at: DateTime<Utc>,
    /// The instance that accepted it.
    pub accepted_by: String,
    /// The pipeline steps recorded so far.
    #[serde(default)]
    pub steps: Vec<JobStep>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: a step attempt still running (its `outcome` null, as
    /// the API documents) made the whole job status unreadable, so a job
    /// taken over from a dead server looked unreachable on the survivor.
    #[test]
    fn a_step_attempt_without_an_outcome_yet_parses() {
        let text = r#"{
          "job_id": "0970e187-3c4a-4662-ad3e-e7833b166789", "state": "processing", "reason": null,
          "workflow": "scan-to-folder", "user": "alice", "pages": 1, "bytes": 10,
          "received_at": "2026-12-01T00:00:00Z", "updated_at": "2026-12-01T00:00:01Z",
          "accepted_by": "gw-a", "accepted_role": "primary", "accepted_epoch": 1,
          "steps": [{"step": 1, "plugin": "ocr", "attempt": 1, "started_at": "2026-12-01T00:00:00Z",
                     "finished_at": null, "outcome": null, "reason": null}]
        }"#;
        let s: JobStatus = serde_json::from_str(text).unwrap();
        assert_eq!(s.steps[0].outcome, None);
    }

    #[test]
    fn health_example_from_the_api_document_parses() {
        let text = r#"{
          "instance": "gw-a", "role": "primary", "epoch": 1, "web": "up", "data": "up",
          "maintenance": false, "accepting": true, "reason": null, "version": "0.1.0",
          "capabilities": [{"name": "ocr", "available": true, "detail": "tesseract 5.3.0; languages eng, osd"}]
        }"#;
        let h: Health = serde_json::from_str(text).unwrap();
        assert_eq!(h.role, Role::Primary);
        assert!(h.accepting);
        assert_eq!(h.capabilities[0].name, "ocr");
    }

    #[test]
    fn workflow_details_parse_and_may_be_missing() {
        let text = r#"{"workflows": ["invoices", "plain"], "details": [{"name": "invoices",
          "fields": [{"name": "po_number", "label": "PO number", "type": "text", "required": true,
                      "pattern": "[0-9]{6}", "choices": []},
                     {"name": "kind", "label": "Kind", "type": "hologram", "required": false,
                      "pattern": null, "choices": []}]}]}"#;
        let c: WorkflowCatalog = serde_json::from_str(text).unwrap();
        let fields = c.fields("invoices");
        assert_eq!(fields.len(), 2);
        assert_eq!(fields[0].kind, FieldKind::Text);
        assert_eq!(fields[0].pattern.as_deref(), Some("[0-9]{6}"));
        assert_eq!(fields[1].kind, FieldKind::Unknown);
        assert!(c.fields("plain").is_empty());
        let old: WorkflowCatalog = serde_json::from_str(r#"{"workflows": ["a"]}"#).unwrap();
        assert!(old.details.is_empty() && old.fields("a").is_empty());
    }

    #[test]
    fn unknown_values_do_not_break_parsing() {
        let text = r#"{"instance": "gw-b", "role": "observer", "web": "up", "data": "degraded",
          "maintenance": false, "accepting": false, "reason": "warming-up"}"#;
        let h: Health = serde_json::from_str(text).unwrap();
        assert_eq!(h.role, Role::Unknown);
        assert_eq!(h.data, ServiceState::Unknown);
        assert_eq!(h.reason.as_deref(), Some("warming-up"));
    }

    #[test]
    fn credentials_are_redacted_in_debug_output() {
        let s = Session {
            session: "secret-session".into(),
            user: "alice".into(),
            expires_at: Utc::now(),
        };
        let r = Registration {
            device_id: "d1".into(),
            token: "secret-token".into(),
            status: "pending".into(),
        };
        assert!(!format!("{s:?}").contains("secret"));
        assert!(!format!("{r:?}").contains("secret"));
    }
}
