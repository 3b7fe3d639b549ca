//! Job submission: `PUT /api/v1/jobs/{job_id}` with a multipart body (the
//! manifest, then one part per page file).
//!
//! The promise to the device: a `201` means the job is durable. Pages are
//! streamed to the spool chunk by chunk (never a whole page in memory) and
//! each page file is fsynced; then the job commit ([`crate::commit`])
//! fsyncs the job's directory and commits its row with `synchronous=FULL`,
//! sharing those flushes with every job finishing at the same moment; only
//! then is the acknowledgement written, made of the values committed. The
//! job id is the device's idempotency key: a resubmission of an accepted
//! job gets the original acknowledgement (`200`) without its pages being
//! stored again (nor read, when this server holds it; when the peer does,
//! only the pages that came before the peer's answer are read, and
//! dropped); an upload cut off midway leaves nothing behind, so its retry
//! starts clean.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::multipart::{Field, MultipartError, MultipartRejection};
use axum::extract::{Multipart, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use plugins::PageFormat;
use serde::Serialize;
use uuid::Uuid;

use crate::core::Core;
use crate::data::DataParts;
use crate::manifest::Manifest;
use crate::peer_ack::KnownJob;
use crate::security::sha256_hex;
use crate::settings::PeerAck;
use crate::site::ActiveConfig;
use crate::spool::SpoolUpload;
use crate::store::{NewJob, NewPage, stored_time};
use crate::web::api::parse_job_id;
use crate::web::auth::admit_job_upload;
use crate::web::error::ApiError;
use crate::web::serve::ClientAddr;

/// The manifest is small JSON; anything bigger is not a manifest.
pub const MAX_MANIFEST_BYTES: u64 = 64 * 1024;
/// Room for multipart boundaries and part headers on top of the content.
const MULTIPART_OVERHEAD: u64 = 64 * 1024;
/// An upload that sends nothing for this long is abandoned.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// At most this long (and at most `peer_ack_timeout_ms`) the intake waits
/// for the peer's answer whether it holds a job id; without an answer the
/// id is taken here.
const PEER_QUESTION_MS: u64 = 1_000;

/// Checks a manifest against the configuration in use: its workflow must
/// exist and be runnable here, its pages and metadata within limits, and
/// its metadata must satisfy the workflow's index fields.
fn check_manifest(manifest: &Manifest, config: &ActiveConfig) -> Result<(), ApiError> {
    if let Some(reason) = config.broken_workflows.get(&manifest.workflow) {
        return Err(ApiError::InvalidManifest(format!(
            "workflow `{}` cannot run on this server: {reason}",
            manifest.workflow
        )));
    }
    let Some(workflow) = config.workflows.get(&manifest.workflow) else {
        return Err(ApiError::UnknownWorkflow {
            name: manifest.workflow.chars().take(64).collect(),
            known: config.workflow_names().join(", "),
        });
    };
    manifest.check(config.limits.max_pages)?;
    Ok(workflow.check_metadata(&manifest.metadata)?)
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
    /// Whether the peer of a pair holds a copy (the job then survives the
    /// loss of either server's disk).
    pub replicated: bool,
}

impl JobAck {
    fn known(job: &KnownJob, replayed: bool) -> JobAck {
        JobAck {
            job_id: job.id,
            state: "received",
            accepted_by: job.accepted_by.clone(),
            role: job.accepted_role.clone(),
            epoch: job.accepted_epoch,
            received_at: job.received_at,
            pages: job.pages,
            bytes: job.bytes,
            replayed,
            replicated: job.replicated,
        }
    }
}

pub async fn submit(
    State(core): State<Arc<Core>>,
    Path(job_id): Path<String>,
    client: Option<axum::Extension<ClientAddr>>,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> Response {
    let started = Instant::now();
    let client = client.map(|c| c.0.0);
    let result = receive(&core, &job_id, client, &headers, multipart, started).await;
    match result {
        Ok(response) => response,
        Err(e) => {
            core.metrics.job_refused(e.code());
            e.into_response()
        }
    }
}

async fn receive(
    core: &Arc<Core>,
    job_id: &str,
    client: Option<std::net::SocketAddr>,
    headers: &HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
    started: Instant,
) -> Result<Response, ApiError> {
    let id = parse_job_id(job_id)?;
    core.check_accepting()?;
    let (device, session) = admit_job_upload(core, headers).await?;
    let config = core.active_config()?;
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
    // Bounded before any of the body is read: a rush waits in the kernel's
    // socket buffers and at the devices (`busy` after the wait is not a
    // failover cause), not in this server's memory.
    let _slot = core
        .admission
        .in_flight
        .enter()
        .await
        .ok_or(ApiError::Busy {
            limit: core.admission.in_flight.limit(),
        })?;
    let _claim = core
        .admission
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
    let manifest = Manifest::parse(&raw_manifest)?;
    let canonical = manifest.canonical();
    let manifest_sha256 = sha256_hex(canonical.as_bytes());

    // Idempotency: an accepted job id answers with its acknowledgement,
    // whichever server of the pair accepted it (seed 000: a device that
    // resubmits to the other server is not stored twice).
    if let Some(existing) = core.data.run(move |s| s.job(id)).await? {
        return replay(core, &KnownJob::of(&existing), &manifest_sha256, device.id);
    }
    // The peer is asked only while the link is up, and only for a bounded
    // time. Its answer is awaited beside the pages streaming in, so a new
    // job does not pay the round trip: a job the peer holds is answered
    // as a replay as soon as the answer comes (the pages spooled so far
    // go with the dropped upload), and so is one whose upload failed or
    // whose manifest no longer passes the checks.
    let question = core.settings.instance.pair.as_ref().and_then(|pair| {
        let limit = Duration::from_millis(pair.peer_ack_timeout_ms.min(PEER_QUESTION_MS));
        core.peer_acks.ask(id, limit)
    });
    let spooling = spool_pages(
        core,
        id,
        &manifest,
        &config,
        raw_manifest.len() as u64,
        &mut multipart,
    );
    tokio::pin!(spooling);
    let mut spooled = None;
    if let Some(question) = question {
        let answer = question.answer();
        tokio::pin!(answer);
        let known = tokio::select! {
            known = &mut answer => known,
            done = &mut spooling => {
                spooled = Some(done);
                answer.await
            }
        };
        if let Some(Some(known)) = known {
            tracing::info!(job = %id, accepted_by = known.accepted_by, "a job the peer accepted was resubmitted here");
            return replay(core, &known, &manifest_sha256, device.id);
        }
    }
    let (parts, upload, pages) = match spooled {
        Some(done) => done,
        None => spooling.await,
    }?;
    let role = core.role.snapshot();
    let acceptor = core.server_id().ok_or_else(|| ApiError::DataServiceDown {
        cause: "the store has not been read yet".into(),
    })?;
    let job = NewJob {
        id,
        device_id: device.id,
        user: session.user.clone(),
        workflow: manifest.workflow.clone(),
        manifest: canonical,
        manifest_sha256,
        bytes: pages.iter().map(|p| p.bytes).sum(),
        accepted_by: core.name().to_owned(),
        accepted_role: role.role.as_str().to_owned(),
        accepted_epoch: role.epoch.number,
        client_addr: client.map(|a| a.to_string()),
        // As stored: the acknowledgement is made of these values.
        received_at: stored_time(core.clock.now()),
        acceptor,
        pages,
    };
    // Registered before the commit, so a copy stored quickly is not missed.
    let peer_wait = core
        .settings
        .instance
        .pair
        .as_ref()
        .filter(|p| p.ack == PeerAck::Peer)
        .map(|p| (core.peer_acks.register(id), p.peer_ack_timeout_ms));
    // The acknowledgement is made of the values committed, not read back.
    let mut known = KnownJob::of_new(&job);
    let (user, workflow, client) = (
        job.user.clone(),
        job.workflow.clone(),
        job.client_addr.clone(),
    );
    let committed = parts.committer.commit(upload, job, None).await;
    if !matches!(committed, Ok(true)) {
        if let Some((wait, _)) = peer_wait {
            core.peer_acks.cancel(wait);
        }
        committed.map_err(|e| core.data.commit_error(e))?;
        // Another path stored the id between the check above and this
        // commit: answer as a replay (or a conflict), never a second 201.
        // The directory written here was not the stored job's and is gone.
        let stored =
            core.data
                .run(move |s| s.job(id))
                .await?
                .ok_or_else(|| ApiError::DataServiceDown {
                    cause: format!("job {id} was stored meanwhile but cannot be read"),
                })?;
        return replay(
            core,
            &KnownJob::of(&stored),
            &known.manifest_sha256,
            device.id,
        );
    }
    core.job_ready.notify_one();
    core.peer_acks.job_committed();
    if let Some((wait, limit_ms)) = peer_wait
        && core
            .peer_acks
            .wait(wait, Duration::from_millis(limit_ms))
            .await
    {
        known.replicated = true;
    }
    core.metrics.job_accepted(known.bytes, started.elapsed());
    tracing::info!(
        job = %id,
        device = %device.id,
        user,
        workflow,
        pages = known.pages,
        bytes = known.bytes,
        replicated = known.replicated,
        client = client.as_deref().unwrap_or("-"),
        "job accepted"
    );
    Ok((StatusCode::CREATED, Json(JobAck::known(&known, false))).into_response())
}

/// Checks a new job's manifest, then streams its pages into the spool
/// (each page file synced as it ends), checking every limit as the bytes
/// come. Nothing is committed here: dropping the upload removes its files.
async fn spool_pages(
    core: &Core,
    id: Uuid,
    manifest: &Manifest,
    config: &ActiveConfig,
    manifest_bytes: u64,
    multipart: &mut Multipart,
) -> Result<(Arc<DataParts>, SpoolUpload, Vec<NewPage>), ApiError> {
    // Checked only for a new job: an accepted job keeps its acknowledgement
    // even if its workflow or index fields changed since.
    check_manifest(manifest, config)?;
    let limits = config.limits;
    let parts = core.data.parts()?;
    // No row exists and this connection holds the id's upload claim.
    let mut upload = parts.spool.begin_new(id).map_err(|e| {
        core.data
            .spool_error("removing an orphan job directory", &e)
    })?;
    let mut total = manifest_bytes;
    let mut pages: Vec<NewPage> = Vec::new();
    while let Some(mut field) = next_field(multipart).await? {
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
        let mut writer = upload.page(seq, format.extension());
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
                .map_err(|e| core.data.spool_error("writing a page", &e))?;
            chunk = next_chunk(&mut field).await?;
        }
        let page = writer
            .finish()
            .await
            .map_err(|e| core.data.spool_error("syncing a page", &e))?;
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
    Ok((parts, upload, pages))
}

/// The answer to an id that is already stored: the original
/// acknowledgement when the same device sends the same manifest, a
/// conflict when it sends another manifest, and `job_id_taken` when the id
/// belongs to another device's job — whatever the manifest, so the answer
/// reveals nothing about that job (reading it answers 404 likewise).
fn replay(
    core: &Core,
    existing: &KnownJob,
    manifest_sha256: &str,
    device: Uuid,
) -> Result<Response, ApiError> {
    if existing.device_id != device {
        tracing::warn!(job = %existing.id, %device, "a device sent the id of another device's job");
        return Err(ApiError::JobIdTaken(existing.id.to_string()));
    }
    if existing.manifest_sha256 == manifest_sha256 {
        core.metrics.job_replayed();
        tracing::info!(job = %existing.id, %device, "resubmitted job answered with its acknowledgement");
        return Ok((StatusCode::OK, Json(JobAck::known(existing, true))).into_response());
    }
    Err(ApiError::JobIdConflict(existing.id.to_string()))
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
