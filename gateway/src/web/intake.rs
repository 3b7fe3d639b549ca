//! Job submission: `PUT /api/v1/jobs/{job_id}` with a multipart body (the
//! manifest, then one part per page file).
//!
//! The promise to the device: a `201` means the job is durable. Pages are
//! streamed to the spool chunk by chunk (never a whole page in memory),
//! every file and directory is fsynced, the job directory is renamed into
//! place, the job row is committed with `synchronous=FULL`, and only then is
//! the acknowledgement written. The job id is the device's idempotency key: a
//! resubmission of an accepted job gets the original acknowledgement (`200`)
//! without its pages being read or stored again; an upload cut off midway
//! leaves nothing behind, so its retry starts clean.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::multipart::{Field, MultipartError, MultipartRejection};
use axum::extract::{Multipart, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use plugins::PageFormat;
use ring::digest;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::ApiError;
use crate::instance::Gateway;
use crate::site::ActiveConfig;
use crate::store::{JobRecord, NewJob, NewPage, hex};
use crate::web::api::parse_job_id;
use crate::web::auth::{ApprovedDevice, check_seat, verify_session};
use crate::web::serve::ClientAddr;

/// The manifest is small JSON; anything bigger is not a manifest.
pub const MAX_MANIFEST_BYTES: u64 = 64 * 1024;
/// Room for multipart boundaries and part headers on top of the content.
const MULTIPART_OVERHEAD: u64 = 64 * 1024;
/// An upload that sends nothing for this long is abandoned.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const MAX_METADATA_KEYS: usize = 64;

/// The first part of a job upload.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub workflow: String,
    pub page_count: u32,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

impl Manifest {
    fn validate(&self, config: &ActiveConfig) -> Result<(), ApiError> {
        if let Some(reason) = config.broken_workflows.get(&self.workflow) {
            return Err(ApiError::InvalidManifest(format!(
                "workflow `{}` cannot run on this server: {reason}",
                self.workflow
            )));
        }
        if !config.workflows.contains_key(&self.workflow) {
            return Err(ApiError::UnknownWorkflow {
                name: self.workflow.chars().take(64).collect(),
                known: config.workflow_names().join(", "),
            });
        }
        if self.page_count == 0 {
            return Err(ApiError::InvalidManifest(
                "page_count must be at least 1".into(),
            ));
        }
        if self.page_count > config.limits.max_pages {
            return Err(ApiError::TooManyPages {
                count: self.page_count,
                limit: config.limits.max_pages,
            });
        }
        if self.metadata.len() > MAX_METADATA_KEYS {
            return Err(ApiError::InvalidManifest(format!(
                "metadata has {} keys; at most {MAX_METADATA_KEYS} are allowed",
                self.metadata.len()
            )));
        }
        for (k, v) in &self.metadata {
            let key_ok = !k.is_empty()
                && k.len() <= 64
                && k.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
            if !key_ok {
                return Err(ApiError::InvalidManifest(format!(
                    "metadata key `{}` is not valid: use 1-64 letters, digits and _ . -",
                    k.chars().take(64).collect::<String>()
                )));
            }
            if v.chars().count() > 1024 || v.chars().any(char::is_control) {
                return Err(ApiError::InvalidManifest(format!(
                    "metadata value of `{k}` must be at most 1024 characters without control characters"
                )));
            }
        }
        Ok(())
    }

    /// The manifest in one canonical form (sorted metadata, no extra
    /// whitespace), whose hash tells a resubmission from a different job
    /// that reuses an id.
    fn canonical(&self) -> String {
        serde_json::to_string(self).expect("manifest serialises")
    }
}

/// The acknowledgement of an accepted job.
#[derive(Debug, Serialize)]
pub struct JobAck {
    pub job_id: Uuid,
    pub state: &'static str,
    pub accepted_by: String,
    pub role: String,
    pub epoch: u64,
    pub received_at: DateTime<Utc>,
    pub pages: u32,
    pub bytes: u64,
    pub replayed: bool,
}

impl JobAck {
    fn of(job: &JobRecord, replayed: bool) -> JobAck {
        JobAck {
            job_id: job.id,
            state: "received",
            accepted_by: job.accepted_by.clone(),
            role: job.accepted_role.clone(),
            epoch: job.accepted_epoch,
            received_at: job.received_at,
            pages: job.page_count,
            bytes: job.bytes,
            replayed,
        }
    }
}

pub async fn submit(
    State(gw): State<Arc<Gateway>>,
    Path(job_id): Path<String>,
    client: Option<axum::Extension<ClientAddr>>,
    headers: HeaderMap,
    device: Result<ApprovedDevice, ApiError>,
    multipart: Result<Multipart, MultipartRejection>,
) -> Response {
    let started = Instant::now();
    let client = client.map(|c| c.0.0);
    let result = receive(&gw, &job_id, client, &headers, device, multipart, started).await;
    match result {
        Ok(response) => response,
        Err(e) => {
            gw.metrics.job_refused(e.code());
            e.into_response()
        }
    }
}

async fn receive(
    gw: &Arc<Gateway>,
    job_id: &str,
    client: Option<std::net::SocketAddr>,
    headers: &HeaderMap,
    device: Result<ApprovedDevice, ApiError>,
    multipart: Result<Multipart, MultipartRejection>,
    started: Instant,
) -> Result<Response, ApiError> {
    let id = parse_job_id(job_id)?;
    gw.check_accepting()?;
    let ApprovedDevice(device) = device?;
    check_seat(gw, &device).await?;
    let session = verify_session(gw, headers, &device).await?;
    let config = gw.active_config()?;
    let limits = config.limits;

    // Refuse an oversized upload before reading it when its size is declared.
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > limits.max_job_bytes + MULTIPART_OVERHEAD
    {
        return Err(ApiError::JobTooLarge {
            limit: limits.max_job_bytes,
        });
    }
    let mut multipart = multipart.map_err(|e| {
        ApiError::BadRequest(format!(
            "the body must be multipart/form-data with a `manifest` part and `page` parts: {}",
            e.body_text()
        ))
    })?;
    let _claim = gw
        .uploads
        .claim(id)
        .ok_or_else(|| ApiError::UploadInProgress(id.to_string()))?;

    // The manifest comes first and is small.
    let mut field = next_field(&mut multipart).await?.ok_or_else(|| {
        ApiError::InvalidManifest(
            "the body has no parts; the first part must be the manifest".into(),
        )
    })?;
    if field.name() != Some("manifest") {
        return Err(ApiError::InvalidManifest(format!(
            "the first part must be named `manifest`, not `{}`",
            field.name().unwrap_or("")
        )));
    }
    let raw_manifest =
        read_small(&mut field, MAX_MANIFEST_BYTES)
            .await?
            .ok_or(ApiError::ManifestTooLarge {
                limit: MAX_MANIFEST_BYTES,
            })?;
    drop(field);
    let manifest: Manifest = serde_json::from_slice(&raw_manifest)
        .map_err(|e| ApiError::InvalidManifest(format!("the manifest is not valid: {e}")))?;
    manifest.validate(&config)?;
    let canonical = manifest.canonical();
    let manifest_sha256 = hex(digest::digest(&digest::SHA256, canonical.as_bytes()).as_ref());

    // Idempotency: an accepted job id answers with its acknowledgement.
    if let Some(existing) = gw.data.run(move |s| s.job(id)).await? {
        if existing.manifest_sha256 == manifest_sha256 && existing.device_id == device.id {
            gw.metrics.job_replayed();
            tracing::info!(job = %id, device = %device.id, "resubmitted job answered with its acknowledgement");
            return Ok((StatusCode::OK, Json(JobAck::of(&existing, true))).into_response());
        }
        return Err(ApiError::JobIdConflict(id.to_string()));
    }

    let parts = gw.data.parts()?;
    let mut upload = parts
        .spool
        .begin(id)
        .await
        .map_err(|e| gw.data.spool_error("starting the upload", &e))?;
    let mut total = raw_manifest.len() as u64;
    let mut pages: Vec<NewPage> = Vec::new();
    while let Some(mut field) = next_field(&mut multipart).await? {
        if field.name() != Some("page") {
            return Err(ApiError::BadRequest(format!(
                "unexpected part `{}`: after the manifest only `page` parts are allowed",
                field.name().unwrap_or("")
            )));
        }
        let seq = pages.len() as u32 + 1;
        if seq > limits.max_pages {
            return Err(ApiError::TooManyPages {
                count: seq,
                limit: limits.max_pages,
            });
        }
        if seq > manifest.page_count {
            return Err(ApiError::PageCountMismatch {
                declared: manifest.page_count,
                received: seq,
            });
        }
        // Sniff the format from the first bytes of the content.
        let mut head = Vec::with_capacity(16);
        while head.len() < 16 {
            match next_chunk(&mut field).await? {
                Some(chunk) => head.extend_from_slice(&chunk),
                None => break,
            }
        }
        let format =
            PageFormat::sniff(&head).ok_or(ApiError::UnsupportedPageFormat { page: seq })?;
        let mut writer = upload
            .page(seq, format.extension())
            .await
            .map_err(|e| gw.data.spool_error("creating a page file", &e))?;
        let mut chunk = Some(bytes::Bytes::from(head));
        while let Some(data) = chunk {
            total += data.len() as u64;
            if writer.bytes() + data.len() as u64 > limits.max_page_bytes {
                return Err(ApiError::PageTooLarge {
                    page: seq,
                    limit: limits.max_page_bytes,
                });
            }
            if total > limits.max_job_bytes {
                return Err(ApiError::JobTooLarge {
                    limit: limits.max_job_bytes,
                });
            }
            writer
                .write(&data)
                .await
                .map_err(|e| gw.data.spool_error("writing a page", &e))?;
            chunk = next_chunk(&mut field).await?;
        }
        let page = writer
            .finish()
            .await
            .map_err(|e| gw.data.spool_error("syncing a page", &e))?;
        pages.push(NewPage {
            seq,
            file_name: page.file_name,
            format: format_name(format),
            bytes: page.bytes,
            sha256: page.sha256,
        });
    }
    if pages.len() as u32 != manifest.page_count {
        return Err(ApiError::PageCountMismatch {
            declared: manifest.page_count,
            received: pages.len() as u32,
        });
    }
    upload
        .commit(canonical.as_bytes())
        .await
        .map_err(|e| gw.data.spool_error("committing the job directory", &e))?;

    let role = gw.role.snapshot();
    let job = NewJob {
        id,
        device_id: device.id,
        user: session.user.clone(),
        workflow: manifest.workflow.clone(),
        manifest: canonical,
        manifest_sha256,
        bytes: pages.iter().map(|p| p.bytes).sum(),
        accepted_by: gw.name().to_owned(),
        accepted_role: role.role.as_str().to_owned(),
        accepted_epoch: role.epoch,
        client_addr: client.map(|a| a.to_string()),
        received_at: Utc::now(),
        pages,
    };
    let record = {
        let job = job.clone();
        gw.data
            .run(move |s| {
                s.insert_job(&job)?;
                s.job(job.id)
            })
            .await?
            .ok_or_else(|| {
                ApiError::Internal(anyhow::anyhow!("job {id} missing right after commit"))
            })?
    };
    gw.job_ready.notify_one();
    gw.metrics.job_accepted(job.bytes, started.elapsed());
    tracing::info!(
        job = %id,
        device = %device.id,
        user = job.user,
        workflow = job.workflow,
        pages = job.pages.len(),
        bytes = job.bytes,
        client = job.client_addr.as_deref().unwrap_or("-"),
        "job accepted"
    );
    Ok((StatusCode::CREATED, Json(JobAck::of(&record, false))).into_response())
}

/// The stored name of a page format (`tiff`, `jpeg`, `png`, `pdf`).
pub fn format_name(format: PageFormat) -> String {
    match serde_json::to_value(format) {
        Ok(serde_json::Value::String(s)) => s,
        _ => unreachable!("page formats serialise as strings"),
    }
}

fn multipart_error(e: MultipartError) -> ApiError {
    ApiError::BadRequest(format!(
        "the upload was cut off or is not valid multipart: {}",
        e.body_text()
    ))
}

async fn next_field(multipart: &mut Multipart) -> Result<Option<Field<'_>>, ApiError> {
    tokio::time::timeout(IDLE_TIMEOUT, multipart.next_field())
        .await
        .map_err(|_| stalled())?
        .map_err(multipart_error)
}

async fn next_chunk(field: &mut Field<'_>) -> Result<Option<bytes::Bytes>, ApiError> {
    tokio::time::timeout(IDLE_TIMEOUT, field.chunk())
        .await
        .map_err(|_| stalled())?
        .map_err(multipart_error)
}

fn stalled() -> ApiError {
    ApiError::BadRequest(format!(
        "the upload sent nothing for {} seconds and was abandoned",
        IDLE_TIMEOUT.as_secs()
    ))
}

/// Reads a whole part if it is at most `limit` bytes; `None` when larger.
async fn read_small(field: &mut Field<'_>, limit: u64) -> Result<Option<Vec<u8>>, ApiError> {
    let mut out = Vec::new();
    while let Some(chunk) = next_chunk(field).await? {
        if (out.len() + chunk.len()) as u64 > limit {
            return Ok(None);
        }
        out.extend_from_slice(&chunk);
    }
    Ok(Some(out))
}
