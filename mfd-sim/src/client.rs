//! Owns one gateway's device API (`docs/API.md`) as typed methods over a
//! kept-alive connection; it must not choose between servers or retry a
//! failed call beyond the one stale-connection retry documented at
//! [`GatewayClient`] (failover and job retries belong to the callers).

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode, header};
use hyper::client::conn::http1::SendRequest;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::{
    api::{
        DeviceInfo, Health, JobAck, JobStatus, Registration, Session, Submitted, WorkflowCatalog,
    },
    error::{ClientError, HttpError},
    multipart::{Manifest, MultipartForm, Page},
    transport::{
        Answer, Connector, Endpoint, LivenessCheck, RequestBody, Timeouts, TlsTrust, exchange,
        exchange_watched,
    },
};

/// API answers are small JSON documents; anything bigger is not the gateway.
const MAX_ANSWER_BYTES: usize = 8 * 1024 * 1024;

const USER_AGENT: &str = concat!("mfd-sim/", env!("CARGO_PKG_VERSION"));

/// The job's sequence number within the session it was scanned under.
pub const JOB_SEQ_HEADER: &str = "x-scan-job-seq";

/// Sent with logout: how many jobs the session scanned.
pub const SESSION_JOBS_HEADER: &str = "x-scan-session-jobs";

/// The device API of one gateway, as one device (one token) sees it.
///
/// A client keeps one idle HTTP/1.1 connection for reuse. A kept-alive
/// connection can be closed by the server at the very moment a request is
/// sent on it; that is a normal race, not a sign that the service is down, so
/// a call that loses a *reused* connection before any answer is repeated once
/// on a fresh connection. Every call for which this is done is safe to
/// repeat: reads, logout, login (an extra session is harmless) and the job
/// upload (the job id makes it idempotent). Registration is never repeated.
///
/// Cloning is cheap and clones share the idle connection.
#[derive(Clone)]
pub struct GatewayClient {
    inner: Arc<Inner>,
}

struct Inner {
    connector: Arc<Connector>,
    timeouts: Timeouts,
    authorization: Option<HeaderValue>,
    idle: Mutex<Option<SendRequest<RequestBody>>>,
}

impl std::fmt::Debug for GatewayClient {
    // The device token is deliberately left out.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayClient")
            .field("base_url", &self.base_url())
            .field("has_token", &self.inner.authorization.is_some())
            .finish()
    }
}

enum CallBody<'a> {
    None,
    Json(Vec<u8>),
    Form(&'a MultipartForm),
}

struct Call<'a> {
    method: Method,
    path: String,
    body: CallBody<'a>,
    device_auth: bool,
    session: Option<&'a str>,
    headers: Vec<(&'static str, String)>,
    repeatable: bool,
}

impl<'a> Call<'a> {
    fn new(method: Method, path: impl Into<String>) -> Self {
        Call {
            method,
            path: path.into(),
            body: CallBody::None,
            device_auth: true,
            session: None,
            headers: Vec::new(),
            repeatable: true,
        }
    }
}

impl GatewayClient {
    /// A client for the gateway at `base_url` without a device token (enough
    /// for `health` and `register`). `trust` is required for `https://`.
    pub fn new(
        base_url: &str,
        trust: Option<&TlsTrust>,
        timeouts: Timeouts,
    ) -> Result<Self, ClientError> {
        let endpoint = Endpoint::parse(base_url)?;
        let connector = Connector::new(endpoint, trust, timeouts.connect)?;
        Ok(GatewayClient {
            inner: Arc::new(Inner {
                connector: Arc::new(connector),
                timeouts,
                authorization: None,
                idle: Mutex::new(None),
            }),
        })
    }

    /// A client for the same gateway acting as the device with this token. It
    /// shares the TLS set-up but not the connection.
    pub fn with_token(&self, token: &str) -> Result<Self, ClientError> {
        let mut value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
            ClientError::InvalidHeader {
                what: "device token",
            }
        })?;
        value.set_sensitive(true);
        Ok(GatewayClient {
            inner: Arc::new(Inner {
                connector: self.inner.connector.clone(),
                timeouts: self.inner.timeouts,
                authorization: Some(value),
                idle: Mutex::new(None),
            }),
        })
    }

    /// The gateway's base URL, normalised.
    pub fn base_url(&self) -> &str {
        self.inner.connector.endpoint().base_url()
    }

    /// The timeouts this client uses.
    pub fn timeouts(&self) -> Timeouts {
        self.inner.timeouts
    }

    /// `GET /health`. Both `200` and `503` carry a health body, so both are
    /// answers here; only a missing or malformed health body is an error.
    pub async fn health(&self) -> Result<Health, ClientError> {
        let mut call = Call::new(Method::GET, "/health");
        call.device_auth = false;
        let answer = self.call(&call).await?;
        if (answer.status == StatusCode::OK || answer.status == StatusCode::SERVICE_UNAVAILABLE)
            && let Ok(health) = serde_json::from_slice::<Health>(&answer.body)
        {
            return Ok(health);
        }
        Err(self.error_for(answer))
    }

    /// `POST /api/v1/devices/register`: a new device, pending approval.
    pub async fn register(
        &self,
        name: &str,
        serial: Option<&str>,
    ) -> Result<Registration, ClientError> {
        let mut call = Call::new(Method::POST, "/api/v1/devices/register");
        call.device_auth = false;
        call.repeatable = false;
        call.body = CallBody::Json(json(&serde_json::json!({ "name": name, "serial": serial })));
        let answer = self.call(&call).await?;
        self.parse(
            answer,
            &[StatusCode::ACCEPTED, StatusCode::CREATED, StatusCode::OK],
        )
    }

    /// `GET /api/v1/device`: this device as the gateway sees it.
    pub async fn device(&self) -> Result<DeviceInfo, ClientError> {
        let answer = self.call(&Call::new(Method::GET, "/api/v1/device")).await?;
        self.parse(answer, &[StatusCode::OK])
    }

    /// `POST /api/v1/sessions`: logs a user in for the panel.
    pub async fn login(&self, user: &str, password: &str) -> Result<Session, ClientError> {
        let mut call = Call::new(Method::POST, "/api/v1/sessions");
        call.body = CallBody::Json(json(
            &serde_json::json!({ "user": user, "password": password }),
        ));
        let answer = self.call(&call).await?;
        self.parse(answer, &[StatusCode::CREATED, StatusCode::OK])
    }

    /// `DELETE /api/v1/sessions/current`: ends the session on this server.
    pub async fn logout(&self, session: &str) -> Result<(), ClientError> {
        self.logout_counted(session, None).await
    }

    /// Like [`GatewayClient::logout`], telling the server how many jobs the
    /// session scanned (header `X-Scan-Session-Jobs`), so that it can keep
    /// accepting the replays of those jobs after the session ended. The
    /// header counts from 1: a session that scanned nothing sends none.
    pub async fn logout_counted(
        &self,
        session: &str,
        jobs_scanned: Option<u64>,
    ) -> Result<(), ClientError> {
        let mut call = Call::new(Method::DELETE, "/api/v1/sessions/current");
        call.session = Some(session);
        if let Some(n) = jobs_scanned.filter(|&n| n > 0) {
            call.headers.push((SESSION_JOBS_HEADER, n.to_string()));
        }
        let answer = self.call(&call).await?;
        if answer.status.is_success() {
            Ok(())
        } else {
            Err(self.error_for(answer))
        }
    }

    /// `GET /api/v1/workflows`: the configured workflow names.
    pub async fn workflows(&self) -> Result<Vec<String>, ClientError> {
        self.workflow_catalog().await.map(|c| c.workflows)
    }

    /// `GET /api/v1/workflows` whole: the workflow names and each
    /// workflow's index fields (none from a gateway that sends no `details`).
    pub async fn workflow_catalog(&self) -> Result<WorkflowCatalog, ClientError> {
        let answer = self
            .call(&Call::new(Method::GET, "/api/v1/workflows"))
            .await?;
        self.parse(answer, &[StatusCode::OK])
    }

    /// `PUT /api/v1/jobs/{job_id}`: uploads a job as `multipart/form-data`,
    /// the manifest first and the pages in order. Calling it again with the
    /// same `job_id` after any failure is safe: the gateway stores a job id
    /// once and answers a repeat with the original acknowledgement
    /// ([`Submitted::replayed`]). The gateway, not this method, checks that
    /// `manifest.page_count` matches `pages`.
    pub async fn submit_job(
        &self,
        job_id: Uuid,
        session: &str,
        manifest: &Manifest,
        pages: &[Page],
    ) -> Result<Submitted, ClientError> {
        let form = MultipartForm::job(manifest, pages).map_err(|e| ClientError::Build {
            detail: e.to_string(),
        })?;
        self.submit_form(job_id, session, &form).await
    }

    /// Like [`GatewayClient::submit_job`] with a form built by the caller, so
    /// that retries of one job do not re-encode the manifest.
    pub async fn submit_form(
        &self,
        job_id: Uuid,
        session: &str,
        form: &MultipartForm,
    ) -> Result<Submitted, ClientError> {
        self.submit_sequenced(job_id, session, None, form).await
    }

    /// Like [`GatewayClient::submit_form`], also sending the job's sequence
    /// number within its session (header `X-Scan-Job-Seq`), which lets the
    /// server accept a replay of the job after the session ended.
    pub async fn submit_sequenced(
        &self,
        job_id: Uuid,
        session: &str,
        seq: Option<u64>,
        form: &MultipartForm,
    ) -> Result<Submitted, ClientError> {
        let mut call = Call::new(Method::PUT, format!("/api/v1/jobs/{job_id}"));
        call.session = Some(session);
        if let Some(seq) = seq {
            call.headers.push((JOB_SEQ_HEADER, seq.to_string()));
        }
        call.body = CallBody::Form(form);
        let answer = self.call(&call).await?;
        let status = answer.status;
        let ack: JobAck = self.parse(answer, &[StatusCode::CREATED, StatusCode::OK])?;
        Ok(Submitted {
            ack,
            replayed: status == StatusCode::OK,
        })
    }

    /// `GET /api/v1/jobs/{job_id}`: one of this device's jobs.
    pub async fn job(&self, job_id: Uuid) -> Result<JobStatus, ClientError> {
        let answer = self
            .call(&Call::new(Method::GET, format!("/api/v1/jobs/{job_id}")))
            .await?;
        self.parse(answer, &[StatusCode::OK])
    }

    /// `GET /api/v1/jobs?limit=N`: this device's newest jobs.
    pub async fn jobs(&self, limit: u32) -> Result<Vec<JobStatus>, ClientError> {
        #[derive(serde::Deserialize)]
        struct Jobs {
            jobs: Vec<JobStatus>,
        }
        let answer = self
            .call(&Call::new(
                Method::GET,
                format!("/api/v1/jobs?limit={limit}"),
            ))
            .await?;
        self.parse::<Jobs>(answer, &[StatusCode::OK])
            .map(|j| j.jobs)
    }

    async fn call(&self, call: &Call<'_>) -> Result<Answer, ClientError> {
        let reused = self.take_idle();
        let was_reused = reused.is_some();
        let mut sender = match reused {
            Some(sender) => sender,
            None => self.inner.connector.connect().await?,
        };
        match self.exchange_on(&mut sender, call).await {
            Ok(answer) => {
                self.put_idle(sender);
                Ok(answer)
            }
            Err(ClientError::ConnectionLost { .. }) if was_reused && call.repeatable => {
                tracing::debug!(
                    server = self.base_url(),
                    "kept-alive connection was gone; repeating on a new one"
                );
                let mut sender = self.inner.connector.connect().await?;
                let answer = self.exchange_on(&mut sender, call).await?;
                self.put_idle(sender);
                Ok(answer)
            }
            Err(e) => Err(e),
        }
    }

    async fn exchange_on(
        &self,
        sender: &mut SendRequest<RequestBody>,
        call: &Call<'_>,
    ) -> Result<Answer, ClientError> {
        let request = self.build(call).await?;
        let liveness = self
            .inner
            .timeouts
            .liveness_check_after
            .map(|after| LivenessCheck {
                after,
                check: || self.check_alive(),
            });
        exchange_watched(
            sender,
            request,
            self.inner.timeouts.response,
            MAX_ANSWER_BYTES,
            self.base_url(),
            liveness,
        )
        .await
    }

    /// Whether the server is still there: `GET /health` on a new connection
    /// (never the kept-alive one a silent request is waiting on), the
    /// connection within the connect timeout and the answer within it again.
    /// Any HTTP answer counts, a `503` included: a server in maintenance is
    /// there.
    async fn check_alive(&self) -> Result<(), ClientError> {
        let mut sender = self.inner.connector.connect().await?;
        let mut call = Call::new(Method::GET, "/health");
        call.device_auth = false;
        let request = self.build(&call).await?;
        exchange(
            &mut sender,
            request,
            self.inner.timeouts.connect,
            MAX_ANSWER_BYTES,
            self.base_url(),
        )
        .await
        .map(|_| ())
    }

    async fn build(&self, call: &Call<'_>) -> Result<Request<RequestBody>, ClientError> {
        let endpoint = self.inner.connector.endpoint();
        let mut request = Request::builder()
            .method(call.method.clone())
            .uri(endpoint.path(&call.path))
            .header(header::HOST, endpoint.authority())
            .header(header::USER_AGENT, USER_AGENT)
            .header(header::ACCEPT, "application/json");
        if call.device_auth
            && let Some(auth) = &self.inner.authorization
        {
            request = request.header(header::AUTHORIZATION, auth.clone());
        }
        if let Some(session) = call.session {
            let mut value =
                HeaderValue::from_str(session).map_err(|_| ClientError::InvalidHeader {
                    what: "session token",
                })?;
            value.set_sensitive(true);
            request = request.header("x-scan-session", value);
        }
        for (name, value) in &call.headers {
            request = request.header(*name, value.as_str());
        }
        let body = match &call.body {
            CallBody::None => RequestBody::Empty,
            CallBody::Json(bytes) => {
                request = request
                    .header(header::CONTENT_TYPE, "application/json")
                    .header(header::CONTENT_LENGTH, bytes.len());
                RequestBody::full(Bytes::copy_from_slice(bytes))
            }
            CallBody::Form(form) => {
                request = request
                    .header(header::CONTENT_TYPE, form.content_type())
                    .header(header::CONTENT_LENGTH, form.content_length());
                let body = form.open().await.map_err(|e| ClientError::Page {
                    path: e.path,
                    source: e.source,
                })?;
                RequestBody::Multipart(body)
            }
        };
        request.body(body).map_err(|e| ClientError::Build {
            detail: format!("{} {}: {e}", call.method, call.path),
        })
    }

    fn take_idle(&self) -> Option<SendRequest<RequestBody>> {
        let mut idle = self.inner.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.take().filter(|s| !s.is_closed())
    }

    fn put_idle(&self, sender: SendRequest<RequestBody>) {
        if !sender.is_closed() {
            *self.inner.idle.lock().unwrap_or_else(|p| p.into_inner()) = Some(sender);
        }
    }

    fn parse<T: DeserializeOwned>(
        &self,
        answer: Answer,
        ok: &[StatusCode],
    ) -> Result<T, ClientError> {
        if !ok.contains(&answer.status) {
            return Err(self.error_for(answer));
        }
        serde_json::from_slice(&answer.body).map_err(|e| ClientError::UnexpectedAnswer {
            server: self.base_url().to_owned(),
            status: answer.status,
            detail: format!("the body is not the documented JSON: {e}"),
        })
    }

    /// An answer that is not the expected one: an HTTP error for 4xx/5xx,
    /// otherwise an unexpected answer (redirects are not followed).
    fn error_for(&self, answer: Answer) -> ClientError {
        if answer.status.is_client_error() || answer.status.is_server_error() {
            ClientError::Http(Box::new(HttpError::from_answer(
                self.base_url(),
                answer.status,
                &answer.headers,
                &answer.body,
            )))
        } else {
            ClientError::UnexpectedAnswer {
                server: self.base_url().to_owned(),
                status: answer.status,
                detail: "not the documented status for this request".to_owned(),
            }
        }
    }
}

fn json(value: &serde_json::Value) -> Vec<u8> {
    // Serialising a `Value` cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}
