//! The one error type of the HTTP API. Every error answer has the shape
//! `{"error": {"code": "...", "message": "..."}}` with a stable code (an
//! `invalid_metadata` answer also names the `field` and the `rule`); the
//! status comes from one exhaustive match. A 5xx body never carries
//! internals: those go to the log.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::changes::ChangeError;
use crate::core::Refusal;
use crate::data::DataError;
use crate::manifest::ManifestError;
use crate::role::ReadOnly;
use crate::settings::ByteSize;

/// Everything the API can refuse a request for.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed (JSON, header, query).
    #[error("{0}")]
    BadRequest(String),
    /// The job id in the path is not a UUID.
    #[error(
        "job id `{0}` is not a UUID; the device chooses a UUID per job and keeps it for retries"
    )]
    InvalidJobId(String),
    /// No `Authorization: Bearer` device token.
    #[error("this request needs the device token: send `Authorization: Bearer <device token>`")]
    DeviceTokenMissing,
    /// The device token is unknown.
    #[error(
        "the device token is not known here; register the device or ask an admin for its token"
    )]
    DeviceTokenInvalid,
    /// No `X-Scan-Session` header.
    #[error("this request needs a user session: log in and send `X-Scan-Session: <session token>`")]
    SessionMissing,
    /// The session token does not verify or belongs to another device.
    #[error("{0}")]
    SessionInvalid(String),
    /// The session expired or was ended.
    #[error("{0}")]
    SessionExpired(String),
    /// Wrong user or password.
    #[error("unknown user or wrong password")]
    BadCredentials,
    /// Device registered but not approved.
    #[error(
        "this device is waiting for approval: an admin approves it with `gateway device approve {0}`"
    )]
    DevicePending(String),
    /// Device approval was withdrawn.
    #[error("this device's registration was revoked by an admin")]
    DeviceRevoked,
    /// More devices than the license has seats.
    #[error(
        "this device is beyond the license's device seats ({seats}): revoke an unused device or activate a license with more seats"
    )]
    SeatLimit { seats: u16 },
    /// Nothing there (or not this device's).
    #[error("{0}")]
    NotFound(String),
    /// The job id was used before for a different job.
    #[error(
        "job id {0} was already used for a job with a different manifest; choose a new UUID for a new job"
    )]
    JobIdConflict(String),
    /// The job id is stored for another device's job. Says nothing about
    /// that job (not even that it exists on purpose: only that the id cannot
    /// be used), so a device cannot probe other devices' jobs.
    #[error("job id {0} cannot be used; choose a new UUID for a new job")]
    JobIdTaken(String),
    /// The same job id is being uploaded right now.
    #[error(
        "job {0} is being uploaded on another connection right now; retry when that upload has finished"
    )]
    UploadInProgress(String),
    /// As many uploads as the server takes at once are streaming in.
    #[error(
        "this server is taking {limit} uploads at once and none ended while this one waited; send this job again in a moment (to this server: it is not down)"
    )]
    Busy { limit: usize },
    /// A device registration with a name already in use.
    #[error(
        "a device named `{0}` is already registered; choose another name or ask an admin to revoke the old one"
    )]
    DeviceNameTaken(String),
    /// Too many registrations wait for approval.
    #[error(
        "{0} devices are already waiting for approval; an admin must approve or revoke some first"
    )]
    TooManyPendingDevices(u64),
    /// A configuration write on the secondary.
    #[error("{0}")]
    ReadOnlySecondary(String),
    /// A configuration write on a primary that a newer primary replaced.
    #[error("{0}")]
    Fenced(String),
    /// The whole job is over the size limit.
    #[error("the job is larger than the limit of {}; split the scan into several jobs", ByteSize(*limit))]
    JobTooLarge { limit: u64 },
    /// One page is over the size limit.
    #[error("page {page} is larger than the per-page limit of {}; scan it at a lower resolution", ByteSize(*limit))]
    PageTooLarge { page: u32, limit: u64 },
    /// A JSON request body is over the limit.
    #[error("the request body is larger than the limit of {}", ByteSize(*limit))]
    RequestTooLarge { limit: u64 },
    /// The manifest part is too large.
    #[error("the manifest is larger than the limit of {}", ByteSize(*limit))]
    ManifestTooLarge { limit: u64 },
    /// A page is not one of the accepted formats.
    #[error(
        "page {page} is not a TIFF, JPEG, PNG or PDF file (its content was checked, not its name)"
    )]
    UnsupportedPageFormat { page: u32 },
    /// The manifest is not what the API expects.
    #[error("{0}")]
    InvalidManifest(String),
    /// The manifest names a workflow that is not configured.
    #[error("workflow `{name}` is not configured; configured workflows: {known}")]
    UnknownWorkflow { name: String, known: String },
    /// The manifest's metadata breaks a rule of one of the workflow's
    /// index fields.
    #[error("{0}")]
    InvalidMetadata(#[from] plugins::MetadataRefusal),
    /// More pages than allowed.
    #[error(
        "the job has {count} pages but at most {limit} are allowed; split the scan into several jobs"
    )]
    TooManyPages { count: u32, limit: u32 },
    /// The manifest's page count and the page parts differ.
    #[error("the manifest declares {declared} pages but the upload carried {received}")]
    PageCountMismatch { declared: u32, received: u32 },
    /// Too many failed logins.
    #[error("too many failed logins from this device; wait {retry_after} seconds")]
    RateLimited { retry_after: u32 },
    /// The server is in maintenance mode.
    #[error(
        "this server is in maintenance mode and takes no new logins or jobs; use the other server or retry later"
    )]
    Maintenance { retry_after: u32 },
    /// The data service (database, spool, workers) is down.
    #[error("this server's data service is down ({cause}); use the other server or retry later")]
    DataServiceDown { cause: String },
    /// No valid license.
    #[error(
        "this server is not licensed ({0}); an admin activates it with `gateway license activate <key>`"
    )]
    NotLicensed(String),
    /// A bug or an unexpected failure. The message is logged, not sent.
    #[error("internal error: {0:#}")]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    /// The HTTP status of each error.
    pub fn status(&self) -> StatusCode {
        use ApiError::*;
        match self {
            BadRequest(_) | InvalidJobId(_) => StatusCode::BAD_REQUEST,
            DeviceTokenMissing | DeviceTokenInvalid | SessionMissing | SessionInvalid(_)
            | SessionExpired(_) | BadCredentials => StatusCode::UNAUTHORIZED,
            DevicePending(_) | DeviceRevoked | SeatLimit { .. } => StatusCode::FORBIDDEN,
            NotFound(_) => StatusCode::NOT_FOUND,
            JobIdConflict(_) | JobIdTaken(_) | UploadInProgress(_) | ReadOnlySecondary(_)
            | Fenced(_) | DeviceNameTaken(_) => StatusCode::CONFLICT,
            JobTooLarge { .. }
            | PageTooLarge { .. }
            | ManifestTooLarge { .. }
            | RequestTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            UnsupportedPageFormat { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            InvalidManifest(_)
            | UnknownWorkflow { .. }
            | InvalidMetadata(_)
            | TooManyPages { .. }
            | PageCountMismatch { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            RateLimited { .. } | TooManyPendingDevices(_) => StatusCode::TOO_MANY_REQUESTS,
            Maintenance { .. } | DataServiceDown { .. } | NotLicensed(_) | Busy { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable, machine-readable code of each error.
    pub fn code(&self) -> &'static str {
        use ApiError::*;
        match self {
            BadRequest(_) => "bad_request",
            InvalidJobId(_) => "invalid_job_id",
            DeviceTokenMissing => "device_token_missing",
            DeviceTokenInvalid => "device_token_invalid",
            SessionMissing => "session_missing",
            SessionInvalid(_) => "session_invalid",
            SessionExpired(_) => "session_expired",
            BadCredentials => "bad_credentials",
            DevicePending(_) => "device_pending",
            DeviceRevoked => "device_revoked",
            SeatLimit { .. } => "seat_limit",
            NotFound(_) => "not_found",
            JobIdConflict(_) => "job_id_conflict",
            JobIdTaken(_) => "job_id_taken",
            UploadInProgress(_) => "upload_in_progress",
            Busy { .. } => "busy",
            ReadOnlySecondary(_) => "read_only_secondary",
            Fenced(_) => "fenced",
            DeviceNameTaken(_) => "device_name_taken",
            TooManyPendingDevices(_) => "too_many_pending_devices",
            JobTooLarge { .. } => "job_too_large",
            PageTooLarge { .. } => "page_too_large",
            ManifestTooLarge { .. } => "manifest_too_large",
            RequestTooLarge { .. } => "request_too_large",
            UnsupportedPageFormat { .. } => "unsupported_page_format",
            InvalidManifest(_) => "invalid_manifest",
            UnknownWorkflow { .. } => "unknown_workflow",
            InvalidMetadata(_) => "invalid_metadata",
            TooManyPages { .. } => "too_many_pages",
            PageCountMismatch { .. } => "page_count_mismatch",
            RateLimited { .. } => "rate_limited",
            Maintenance { .. } => "maintenance",
            DataServiceDown { .. } => "data_service_down",
            NotLicensed(_) => "not_licensed",
            Internal(_) => "internal",
        }
    }

    /// Seconds after which a retry makes sense, for `Retry-After`.
    pub fn retry_after(&self) -> Option<u32> {
        match self {
            ApiError::Maintenance { retry_after } | ApiError::RateLimited { retry_after } => {
                Some(*retry_after)
            }
            ApiError::DataServiceDown { .. } | ApiError::NotLicensed(_) => Some(30),
            ApiError::UploadInProgress(_) | ApiError::Busy { .. } => Some(1),
            _ => None,
        }
    }

    /// The message sent to the client.
    fn public_message(&self) -> String {
        match self {
            ApiError::Internal(_) => {
                "the server failed to handle this request; the details are in its log".to_owned()
            }
            other => other.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(code = self.code(), error = %self, "request failed");
        } else {
            tracing::debug!(code = self.code(), error = %self, "request refused");
        }
        let mut error = json!({"code": self.code(), "message": self.public_message()});
        // A panel can point at the field without reading the message.
        if let ApiError::InvalidMetadata(refusal) = &self {
            error["field"] = json!(refusal.field);
            error["rule"] = json!(refusal.rule.as_str());
        }
        let body = json!({"error": error});
        let mut response = (status, Json(body)).into_response();
        if let Some(secs) = self.retry_after() {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::Maintenance { retry_after_secs } => ApiError::Maintenance {
                retry_after: retry_after_secs,
            },
            Refusal::DataServiceDown { cause } => ApiError::DataServiceDown { cause },
            Refusal::NotLicensed { why } => ApiError::NotLicensed(why),
        }
    }
}

impl From<ReadOnly> for ApiError {
    fn from(r: ReadOnly) -> Self {
        match r {
            ReadOnly::Secondary => ApiError::ReadOnlySecondary(r.to_string()),
            ReadOnly::Fenced { .. } => ApiError::Fenced(r.to_string()),
            ReadOnly::Unlicensed => ApiError::NotLicensed("no license is activated".into()),
        }
    }
}

impl From<ChangeError> for ApiError {
    fn from(e: ChangeError) -> Self {
        match e {
            ChangeError::Invalid(m) => ApiError::BadRequest(m),
            ChangeError::DeviceNameTaken(name) => ApiError::DeviceNameTaken(name),
            ChangeError::TooManyPending(n) => ApiError::TooManyPendingDevices(n),
            ChangeError::ReadOnly(r) => r.into(),
            ChangeError::Store(e @ crate::store::StoreError::Fenced { .. }) => {
                ApiError::Fenced(e.to_string())
            }
            ChangeError::Unavailable(cause) => ApiError::DataServiceDown { cause },
            e @ (ChangeError::NotFound(_) | ChangeError::Refused(_) | ChangeError::Store(_)) => {
                ApiError::Internal(anyhow::anyhow!(e.to_string()))
            }
        }
    }
}

impl From<DataError> for ApiError {
    fn from(e: DataError) -> Self {
        match e {
            DataError::Down(cause) => ApiError::DataServiceDown { cause },
            // The role changed between the check and the write.
            DataError::Store(e @ crate::store::StoreError::Fenced { .. }) => {
                ApiError::Fenced(e.to_string())
            }
            DataError::Store(e) => ApiError::Internal(e.into()),
        }
    }
}

impl From<ManifestError> for ApiError {
    fn from(e: ManifestError) -> Self {
        match e {
            ManifestError::Invalid(m) => ApiError::InvalidManifest(m),
            ManifestError::TooManyPages { count, limit } => ApiError::TooManyPages { count, limit },
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return ApiError::RequestTooLarge {
                limit: crate::web::JSON_BODY_LIMIT as u64,
            };
        }
        ApiError::BadRequest(format!("the JSON body is not valid: {}", r.body_text()))
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::BadRequest(format!("the query string is not valid: {}", r.body_text()))
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        ApiError::BadRequest(format!("the path is not valid: {}", r.body_text()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn render(e: ApiError) -> (StatusCode, Option<String>, serde_json::Value) {
        let r = e.into_response();
        let status = r.status();
        let retry = r
            .headers()
            .get(header::RETRY_AFTER)
            .map(|v| v.to_str().unwrap().to_owned());
        let body = r.into_body().collect().await.unwrap().to_bytes();
        (status, retry, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn maintenance_has_retry_after_and_stable_code() {
        let (status, retry, body) = render(ApiError::Maintenance { retry_after: 60 }).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(retry.as_deref(), Some("60"));
        assert_eq!(body["error"]["code"], "maintenance");
    }

    #[tokio::test]
    async fn internal_errors_do_not_leak() {
        let (status, _, body) = render(ApiError::Internal(anyhow::anyhow!(
            "secret path /var/lib/x"
        )))
        .await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!body.to_string().contains("/var/lib/x"));
    }

    #[tokio::test]
    async fn invalid_metadata_names_the_field_and_the_rule() {
        let (status, _, body) = render(ApiError::InvalidMetadata(plugins::MetadataRefusal {
            field: "po_number".into(),
            rule: plugins::Rule::Pattern,
            message: "index field `po_number` (PO number) does not match its pattern".into(),
        }))
        .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(
            body,
            json!({"error": {
                "code": "invalid_metadata",
                "message": "index field `po_number` (PO number) does not match its pattern",
                "field": "po_number",
                "rule": "pattern",
            }})
        );
    }

    #[test]
    fn limits_are_named_in_messages() {
        let e = ApiError::PageTooLarge {
            page: 3,
            limit: 64 << 20,
        };
        assert_eq!(
            e.to_string(),
            "page 3 is larger than the per-page limit of 64 MiB; scan it at a lower resolution"
        );
        assert_eq!(e.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }

    /// One example of every variant. The match below has no wildcard, so
    /// a new variant does not compile until it is listed here too.
    fn every_variant() -> Vec<ApiError> {
        use ApiError::*;
        let all = vec![
            BadRequest(String::new()),
            InvalidJobId(String::new()),
            DeviceTokenMissing,
            DeviceTokenInvalid,
            SessionMissing,
            SessionInvalid(String::new()),
            SessionExpired(String::new()),
            BadCredentials,
            DevicePending(String::new()),
            DeviceRevoked,
            SeatLimit { seats: 1 },
            NotFound(String::new()),
            JobIdConflict(String::new()),
            JobIdTaken(String::new()),
            UploadInProgress(String::new()),
            Busy { limit: 1 },
            DeviceNameTaken(String::new()),
            TooManyPendingDevices(1),
            ReadOnlySecondary(String::new()),
            Fenced(String::new()),
            JobTooLarge { limit: 1 },
            PageTooLarge { page: 1, limit: 1 },
            RequestTooLarge { limit: 1 },
            ManifestTooLarge { limit: 1 },
            UnsupportedPageFormat { page: 1 },
            InvalidManifest(String::new()),
            UnknownWorkflow {
                name: String::new(),
                known: String::new(),
            },
            InvalidMetadata(plugins::MetadataRefusal {
                field: String::new(),
                rule: plugins::Rule::Required,
                message: String::new(),
            }),
            TooManyPages { count: 1, limit: 1 },
            PageCountMismatch {
                declared: 1,
                received: 1,
            },
            RateLimited { retry_after: 1 },
            Maintenance { retry_after: 1 },
            DataServiceDown {
                cause: String::new(),
            },
            NotLicensed(String::new()),
            Internal(anyhow::anyhow!("x")),
        ];
        for e in &all {
            match e {
                BadRequest(_)
                | InvalidJobId(_)
                | DeviceTokenMissing
                | DeviceTokenInvalid
                | SessionMissing
                | SessionInvalid(_)
                | SessionExpired(_)
                | BadCredentials
                | DevicePending(_)
                | DeviceRevoked
                | SeatLimit { .. }
                | NotFound(_)
                | JobIdConflict(_)
                | JobIdTaken(_)
                | UploadInProgress(_)
                | Busy { .. }
                | DeviceNameTaken(_)
                | TooManyPendingDevices(_)
                | ReadOnlySecondary(_)
                | Fenced(_)
                | JobTooLarge { .. }
                | PageTooLarge { .. }
                | RequestTooLarge { .. }
                | ManifestTooLarge { .. }
                | UnsupportedPageFormat { .. }
                | InvalidManifest(_)
                | UnknownWorkflow { .. }
                | InvalidMetadata(_)
                | TooManyPages { .. }
                | PageCountMismatch { .. }
                | RateLimited { .. }
                | Maintenance { .. }
                | DataServiceDown { .. }
                | NotLicensed(_)
                | Internal(_) => {}
            }
        }
        all
    }

    /// `docs/API.md` lists every (status, code) the API answers with, and
    /// nothing else: the table and `ApiError` must agree.
    #[test]
    fn the_error_code_table_in_the_api_docs_matches_the_codes() {
        let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/API.md"))
            .unwrap();
        let table = docs
            .split("## Status codes and error codes")
            .nth(1)
            .expect("docs/API.md has the error-code table");
        let mut documented = std::collections::BTreeSet::new();
        for line in table.lines().filter(|l| l.starts_with("| ")) {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let Ok(status) = cells[1].parse::<u16>() else {
                continue;
            };
            for code in cells[2].split(',') {
                documented.insert((status, code.trim().trim_matches('`').to_owned()));
            }
        }
        let actual: std::collections::BTreeSet<(u16, String)> = every_variant()
            .iter()
            .map(|e| (e.status().as_u16(), e.code().to_owned()))
            .collect();
        let missing: Vec<_> = actual.difference(&documented).collect();
        let extra: Vec<_> = documented.difference(&actual).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "docs/API.md and ApiError disagree: not documented {missing:?}; documented but never answered {extra:?}"
        );
    }
}
