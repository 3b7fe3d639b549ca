//! Owns the failover client a device agent embeds: the current server of an
//! ordered list (R13), the move down the list on one of the four causes of
//! R1 (each recorded with time and server), the certificate event, the
//! person's session on the device, and failback to a server higher up the
//! list only between sessions (R3). It must not store jobs itself (the
//! [`Outbox`] does) or decide what a failure is (`classify` does).
//!
//! The rules, in the order a request meets them:
//!
//! - Every request goes to the current server. A failover cause moves the
//!   request to the next server down the list (wrapping round to the top,
//!   so that a list of two keeps trying both); the cause is recorded.
//! - A certificate that fails verification is recorded as
//!   `certificate_rejected` and the next server is tried; nothing is sent to
//!   the server that failed, and it is not counted as one of the causes.
//! - A failover answer with `Retry-After` (`503 maintenance` from the
//!   gateway; any `503` a proxy sends with one) holds that server for the
//!   time given, exactly: no request goes there before it is up, and the
//!   client does not fail back to it before then either.
//! - `503 busy` and `409 upload_in_progress` are waited out on the same
//!   server; a single other 5xx is retried there once, repeated ones are
//!   `web_service_down`.
//! - 4xx answers are the person's business: a job the server refuses for a
//!   reason retrying cannot fix goes to the outbox's `rejected/` part, any
//!   other refusal leaves it queued and is reported.
//! - While the current server is not the first, a background task asks the
//!   `/health` of the servers above it every `failback_probe_interval`; after
//!   `failback_good_probes` consecutive good answers the client returns to
//!   the first healthy one, but only when no person's session is active on
//!   the device.
//! - A request that met a failover cause and then succeeded on another
//!   server is timed from its start to that success: the failover as the
//!   device lived it ([`FailoverClient::failover_times`]).

use std::{
    collections::BTreeMap,
    fmt,
    future::Future,
    sync::{Arc, Mutex, Weak},
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use http::StatusCode;
use serde::Serialize;
use uuid::Uuid;

use crate::{
    api::{JobAck, JobStatus, Session, WorkflowCatalog},
    classify::{Classification, FailoverCause, classify_error, classify_health},
    client::GatewayClient,
    error::{ClientError, HttpError},
    multipart::{Manifest, Page},
    outbox::{Outbox, OutboxError, QueuedJob, Rejection, SessionStamp},
    servers::ServerList,
};

/// The person-facing text of the certificate event.
pub const IDENTITY_NOT_VERIFIED: &str = "the server's identity could not be verified";

/// How the failover client behaves; validated once, then used as is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailoverSettings {
    /// Consecutive 5xx answers (other than 502, 503, 504) from one server
    /// after which it counts as `web_service_down`; at least 1.
    pub server_errors_before_failover: u32,
    /// Pause before retrying the same server after a single 5xx.
    pub server_error_pause: Duration,
    /// How often `503 busy` / `409 upload_in_progress` are waited out on the
    /// same server before the job is left queued for later.
    pub busy_retries: u32,
    /// The wait after `503 busy` without `Retry-After`.
    pub busy_wait: Duration,
    /// Interval between two failback probes of the servers above the current one.
    pub failback_probe_interval: Duration,
    /// Consecutive good `/health` answers before a server counts as healthy
    /// again; at least 1.
    pub failback_good_probes: u32,
    /// A session without any activity for this long counts as ended (the
    /// person walked away without logging out).
    pub session_idle_limit: Duration,
}

impl Default for FailoverSettings {
    fn default() -> Self {
        FailoverSettings {
            server_errors_before_failover: 2,
            server_error_pause: Duration::from_millis(200),
            busy_retries: 5,
            busy_wait: Duration::from_secs(1),
            failback_probe_interval: Duration::from_secs(5),
            failback_good_probes: 3,
            session_idle_limit: Duration::from_secs(300),
        }
    }
}

/// What the client saw, with time and server, for logs, reports and JSON:
/// `{"at": "...", "server": "...", "event": "failover", "cause": "network", ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClientEvent {
    /// When (device clock).
    pub at: DateTime<Utc>,
    /// The server the event is about.
    pub server: String,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
}

/// The kinds of [`ClientEvent`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventKind {
    /// The server failed with one of the four causes; the request moved on.
    Failover {
        /// The cause.
        cause: FailoverCause,
        /// What was seen, for the log.
        detail: String,
    },
    /// The server's certificate failed verification; nothing was sent there.
    CertificateRejected {
        /// What the verifier objected to.
        detail: String,
    },
    /// The client returned to this server from one further down the list.
    Failback {
        /// The server it left.
        from: String,
    },
}

impl EventKind {
    /// The stable name: `failover`, `certificate_rejected`, `failback`.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::Failover { .. } => "failover",
            EventKind::CertificateRejected { .. } => "certificate_rejected",
            EventKind::Failback { .. } => "failback",
        }
    }
}

/// A server passed over during one request, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PassedOver {
    /// The server.
    pub server: String,
    /// `network`, `web_service_down`, `data_service_down`, `maintenance`,
    /// `certificate_rejected`, or `held` (in maintenance, its `Retry-After`
    /// not yet over).
    pub reason: String,
}

/// A job a server acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    /// The acknowledgement (for a replay, the original one).
    pub ack: JobAck,
    /// `true` when the server answered `200`: it had the job already.
    pub replayed: bool,
    /// The server that acknowledged it.
    pub server: String,
    /// Its position in the list.
    pub server_index: usize,
}

/// What became of a job handed to [`FailoverClient::deliver`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// Acknowledged and removed from the outbox.
    Acknowledged(Delivered),
    /// Refused for a reason retrying cannot fix; moved to `rejected/`.
    Rejected(Rejection),
}

/// A request that did not succeed. Unless the variant says otherwise, a job
/// stays in the outbox and is tried again later.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// Every server was tried (or is held in maintenance); none took it.
    #[error("no server took the request: {}", describe_passed(passed))]
    NoServer {
        /// Each server and why it was passed over.
        passed: Vec<PassedOver>,
        /// When the earliest held server may be asked again.
        retry_after: Option<Duration>,
    },
    /// The server kept saying it is busy.
    #[error("{server} is busy; try again later")]
    Busy {
        /// The server.
        server: String,
    },
    /// The server refused the request with a 4xx that another server would
    /// repeat (not signed in, device revoked, …): for the person.
    #[error(transparent)]
    Refused(Box<HttpError>),
    /// A problem on the device: a page that cannot be read, a bad token.
    #[error(transparent)]
    Local(ClientError),
    /// The outbox could not keep or update the job.
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    /// A scan needs a person's session on the device.
    #[error("nobody is logged in at the device; log in before scanning")]
    NoSession,
}

impl RequestError {
    /// The text for the person at the panel.
    pub fn person_message(&self) -> String {
        match self {
            RequestError::NoServer { passed, .. }
                if passed.iter().all(|p| p.reason == "certificate_rejected") =>
            {
                IDENTITY_NOT_VERIFIED.to_owned()
            }
            RequestError::NoServer { .. } | RequestError::Busy { .. } => {
                "the scan is kept on the device and will be sent when a server is reachable"
                    .to_owned()
            }
            RequestError::Refused(h) => h.message.clone(),
            RequestError::Local(e) => e.to_string(),
            RequestError::Outbox(e) => e.to_string(),
            RequestError::NoSession => self.to_string(),
        }
    }
}

/// True for a [`PassedOver::reason`] that is one of the four causes.
fn is_cause(reason: &str) -> bool {
    [
        FailoverCause::Network,
        FailoverCause::WebServiceDown,
        FailoverCause::DataServiceDown,
        FailoverCause::Maintenance,
    ]
    .iter()
    .any(|c| c.as_str() == reason)
}

fn describe_passed(passed: &[PassedOver]) -> String {
    passed
        .iter()
        .map(|p| format!("{} ({})", p.server, p.reason))
        .collect::<Vec<_>>()
        .join(", ")
}

/// True for refusals retrying cannot fix: the job goes to `rejected/`.
/// `409 upload_in_progress` is not one of them (it is retried).
pub fn is_permanent_refusal(error: &HttpError) -> bool {
    match error.status {
        StatusCode::UNPROCESSABLE_ENTITY
        | StatusCode::PAYLOAD_TOO_LARGE
        | StatusCode::UNSUPPORTED_MEDIA_TYPE => true,
        StatusCode::CONFLICT => error.has_code("job_id_conflict"),
        StatusCode::BAD_REQUEST => error.has_code("invalid_job_id"),
        _ => false,
    }
}

/// The person's session on the device.
#[derive(Debug, Clone)]
struct ActiveSession {
    token: String,
    jobs_scanned: u64,
    last_activity: Instant,
}

#[derive(Debug)]
struct State {
    current: usize,
    /// Per server: no request before this instant (maintenance).
    held_until: Vec<Option<Instant>>,
    /// Per server: consecutive 5xx answers.
    server_errors: Vec<u32>,
    /// Per server: consecutive good failback probes.
    good_probes: Vec<u32>,
    session: Option<ActiveSession>,
    events: Vec<ClientEvent>,
    /// Per request that failed over and succeeded: start to success.
    failover_times: Vec<Duration>,
}

struct Shared {
    servers: ServerList,
    settings: FailoverSettings,
    state: Mutex<State>,
}

/// The device's client for an ordered list of gateways. Cheap to clone;
/// clones share the current server, the session and the event log. Create it
/// inside a Tokio runtime: it starts the failback probe task, which ends by
/// itself when the last clone is dropped.
#[derive(Clone)]
pub struct FailoverClient {
    shared: Arc<Shared>,
}

impl fmt::Debug for FailoverClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FailoverClient")
            .field("servers", &self.shared.servers.len())
            .field("current", &self.current_index())
            .finish()
    }
}

/// What one attempt on one server came to.
enum Step<T> {
    Done(T),
    NextServer(String),
    Stop(RequestError),
}

impl FailoverClient {
    /// A client for these servers (with the device's token), starting at the
    /// first.
    pub fn new(servers: ServerList, settings: FailoverSettings) -> Self {
        let settings = FailoverSettings {
            server_errors_before_failover: settings.server_errors_before_failover.max(1),
            failback_good_probes: settings.failback_good_probes.max(1),
            ..settings
        };
        let n = servers.len();
        let shared = Arc::new(Shared {
            servers,
            settings,
            state: Mutex::new(State {
                current: 0,
                held_until: vec![None; n],
                server_errors: vec![0; n],
                good_probes: vec![0; n],
                session: None,
                events: Vec::new(),
                failover_times: Vec::new(),
            }),
        });
        tokio::spawn(probe_loop(
            Arc::downgrade(&shared),
            settings.failback_probe_interval,
        ));
        FailoverClient { shared }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The position of the current server in the list.
    pub fn current_index(&self) -> usize {
        self.state().current
    }

    /// The current server's base URL.
    pub fn current_server(&self) -> String {
        let i = self.current_index();
        self.server_url(i)
    }

    fn server_url(&self, index: usize) -> String {
        self.shared
            .servers
            .get(index)
            .map(|c| c.base_url().to_owned())
            .unwrap_or_default()
    }

    /// Everything recorded so far, oldest first.
    pub fn events(&self) -> Vec<ClientEvent> {
        self.state().events.clone()
    }

    /// How long each request that met a failover cause took from its start
    /// until another server answered it, oldest first.
    pub fn failover_times(&self) -> Vec<Duration> {
        self.state().failover_times.clone()
    }

    /// How often each cause was seen.
    pub fn causes_seen(&self) -> BTreeMap<FailoverCause, u64> {
        let mut out = BTreeMap::new();
        for e in &self.state().events {
            if let EventKind::Failover { cause, .. } = e.kind {
                *out.entry(cause).or_default() += 1;
            }
        }
        out
    }

    fn record(&self, server: &str, kind: EventKind) {
        tracing::info!(server, event = kind.name(), ?kind, "failover client event");
        self.state().events.push(ClientEvent {
            at: Utc::now(),
            server: server.to_owned(),
            kind,
        });
    }

    /// True while a person's session is active on the device: logged in,
    /// not logged out, and not idle past the limit.
    pub fn session_active(&self) -> bool {
        let limit = self.shared.settings.session_idle_limit;
        let mut state = self.state();
        if let Some(s) = &state.session
            && s.last_activity.elapsed() >= limit
        {
            state.session = None;
        }
        state.session.is_some()
    }

    /// Logs the person in on the current server (moving down the list on a
    /// failover cause). If a server above the current one is healthy again
    /// and no session is active, the client first returns to it, so the new
    /// session starts there.
    pub async fn login(&self, user: &str, password: &str) -> Result<Session, RequestError> {
        self.fail_back_if_idle();
        let (user, password) = (user.to_owned(), password.to_owned());
        let session = self
            .walk(move |client| {
                let (user, password) = (user.clone(), password.clone());
                async move { client.login(&user, &password).await }
            })
            .await?
            .0;
        self.state().session = Some(ActiveSession {
            token: session.session.clone(),
            jobs_scanned: 0,
            last_activity: Instant::now(),
        });
        Ok(session)
    }

    /// Ends the person's session: tells the current server (with the number
    /// of jobs the session scanned) and then, with no session active, lets
    /// the client fail back. The session ends on the device even when no
    /// server could be told. A server that says the session is over already
    /// (`401`: a logout that reached the other server before its answer was
    /// lost, or a session that expired) is what was asked for.
    pub async fn logout(&self) -> Result<(), RequestError> {
        let Some(session) = self.state().session.take() else {
            return Ok(());
        };
        let token = session.token.clone();
        let jobs = session.jobs_scanned;
        let told = self
            .walk(move |client| {
                let token = token.clone();
                async move { client.logout_counted(&token, Some(jobs)).await }
            })
            .await
            .map(|_| ());
        let told = match told {
            Err(RequestError::Refused(h))
                if h.status == StatusCode::UNAUTHORIZED
                    && (h.has_code("session_expired") || h.has_code("session_invalid")) =>
            {
                Ok(())
            }
            other => other,
        };
        self.fail_back_if_idle();
        told
    }

    /// Puts a scan into the outbox under the active session (numbering it
    /// within the session) and returns it queued; nothing is sent yet. A
    /// full outbox refuses the scan with [`OutboxError::Full`].
    pub async fn scan(
        &self,
        outbox: &Outbox,
        manifest: &Manifest,
        pages: Vec<Page>,
    ) -> Result<QueuedJob, RequestError> {
        let stamp = {
            let limit = self.shared.settings.session_idle_limit;
            let mut state = self.state();
            let Some(session) = state
                .session
                .as_mut()
                .filter(|s| s.last_activity.elapsed() < limit)
            else {
                state.session = None;
                return Err(RequestError::NoSession);
            };
            session.jobs_scanned += 1;
            session.last_activity = Instant::now();
            SessionStamp {
                token: session.token.clone(),
                seq: session.jobs_scanned,
            }
        };
        let (outbox, manifest) = (outbox.clone(), manifest.clone());
        let job_id = Uuid::new_v4();
        let job = tokio::task::spawn_blocking(move || outbox.put(job_id, &manifest, &pages, stamp))
            .await
            .expect("outbox write panicked")?;
        Ok(job)
    }

    /// Sends one queued job and records the outcome in the outbox: removed
    /// after an acknowledgement (`201`, or `200` for a replay), moved to
    /// `rejected/` after a refusal retrying cannot fix, left queued otherwise.
    pub async fn deliver(
        &self,
        outbox: &Outbox,
        job: &QueuedJob,
    ) -> Result<Delivery, RequestError> {
        let result = self.submit(job).await;
        let outbox = outbox.clone();
        let job_id = job.job_id;
        match result {
            Ok(delivered) => {
                tokio::task::spawn_blocking(move || outbox.acknowledge(job_id))
                    .await
                    .expect("outbox removal panicked")?;
                Ok(Delivery::Acknowledged(delivered))
            }
            Err(RequestError::Refused(http)) if is_permanent_refusal(&http) => {
                let rejection = Rejection {
                    server: http.server.clone(),
                    status: http.status.as_u16(),
                    code: http.code.clone(),
                    message: http.message.clone(),
                    at: Utc::now(),
                };
                let r = rejection.clone();
                tokio::task::spawn_blocking(move || outbox.reject(job_id, &r))
                    .await
                    .expect("outbox move panicked")?;
                Ok(Delivery::Rejected(rejection))
            }
            Err(e) => Err(e),
        }
    }

    /// Sends every job waiting in the outbox, oldest first, with the ids
    /// they were scanned under (what a device does at start-up). Returns each
    /// job's id with its outcome; a job that could not be sent stays queued.
    pub async fn replay(
        &self,
        outbox: &Outbox,
    ) -> Result<Vec<(Uuid, Result<Delivery, RequestError>)>, RequestError> {
        let reader = outbox.clone();
        let pending = tokio::task::spawn_blocking(move || reader.pending())
            .await
            .expect("outbox read panicked")?;
        let mut out = Vec::with_capacity(pending.len());
        for job in pending {
            let outcome = self.deliver(outbox, &job).await;
            out.push((job.job_id, outcome));
        }
        Ok(out)
    }

    /// Sends one job to the current server, moving down the list on a
    /// failover cause, without touching the outbox.
    pub async fn submit(&self, job: &QueuedJob) -> Result<Delivered, RequestError> {
        let form = job.form().map_err(|e| {
            RequestError::Local(ClientError::Build {
                detail: e.to_string(),
            })
        })?;
        let (job_id, token, seq) = (job.job_id, job.session.token.clone(), job.session.seq);
        let (submitted, index) = self
            .walk(move |client| {
                let (form, token) = (form.clone(), token.clone());
                async move {
                    client
                        .submit_sequenced(job_id, &token, Some(seq), &form)
                        .await
                }
            })
            .await?;
        self.touch_session();
        Ok(Delivered {
            ack: submitted.ack,
            replayed: submitted.replayed,
            server: self.server_url(index),
            server_index: index,
        })
    }

    /// The workflows and their index fields, from the current server
    /// (moving down the list on a failover cause). Counts as activity of
    /// the person's session.
    pub async fn workflow_catalog(&self) -> Result<WorkflowCatalog, RequestError> {
        let (catalog, _) = self
            .walk(|client| async move { client.workflow_catalog().await })
            .await?;
        self.touch_session();
        Ok(catalog)
    }

    /// One of the device's jobs as the current server sees it (moving down
    /// the list on a failover cause).
    pub async fn job(&self, job_id: Uuid) -> Result<JobStatus, RequestError> {
        let (status, _) = self
            .walk(move |client| async move { client.job(job_id).await })
            .await?;
        Ok(status)
    }

    fn touch_session(&self) {
        if let Some(s) = self.state().session.as_mut() {
            s.last_activity = Instant::now();
        }
    }

    /// Runs `call` on the current server and down the list, following the
    /// rules of the module documentation. Returns the answer and the index
    /// of the server that gave it, which becomes the current server.
    async fn walk<T, F, Fut>(&self, call: F) -> Result<(T, usize), RequestError>
    where
        F: Fn(GatewayClient) -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        let n = self.shared.servers.len();
        let start = self.current_index();
        let started = Instant::now();
        let mut passed: Vec<PassedOver> = Vec::new();
        let mut earliest_hold: Option<Duration> = None;
        for step in 0..n {
            let index = (start + step) % n;
            let client = self
                .shared
                .servers
                .get(index)
                .expect("index within the list")
                .clone();
            let url = client.base_url().to_owned();
            if let Some(left) = self.held_for(index) {
                earliest_hold = Some(earliest_hold.map_or(left, |e| e.min(left)));
                passed.push(PassedOver {
                    server: url,
                    reason: "held".to_owned(),
                });
                continue;
            }
            match self.on_server(index, &client, &call).await {
                Step::Done(value) => {
                    let failed_over = passed.iter().any(|p| is_cause(&p.reason));
                    let mut state = self.state();
                    state.current = index;
                    state.server_errors[index] = 0;
                    if failed_over {
                        state.failover_times.push(started.elapsed());
                    }
                    return Ok((value, index));
                }
                Step::NextServer(reason) => passed.push(PassedOver {
                    server: url,
                    reason,
                }),
                Step::Stop(e) => {
                    // A server that answered (a refusal, or busy) works: it
                    // becomes the current one, so the next request does not
                    // go back to a server it just passed over.
                    if matches!(e, RequestError::Refused(_) | RequestError::Busy { .. }) {
                        self.state().current = index;
                    }
                    return Err(e);
                }
            }
        }
        Err(RequestError::NoServer {
            passed,
            retry_after: earliest_hold,
        })
    }

    fn held_for(&self, index: usize) -> Option<Duration> {
        let mut state = self.state();
        let until = state.held_until[index]?;
        let now = Instant::now();
        if until <= now {
            state.held_until[index] = None;
            return None;
        }
        Some(until - now)
    }

    /// The attempts of one request on one server.
    async fn on_server<T, F, Fut>(&self, index: usize, client: &GatewayClient, call: &F) -> Step<T>
    where
        F: Fn(GatewayClient) -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        let settings = self.shared.settings;
        let url = client.base_url().to_owned();
        let mut busy = 0;
        loop {
            let error = match call(client.clone()).await {
                Ok(value) => return Step::Done(value),
                Err(e) => e,
            };
            match classify_error(&error) {
                Classification::Failover(cause) => {
                    if let Some(wait) = error.http().and_then(|h| h.retry_after) {
                        // Honoured as given, per server: no cap shortens it.
                        self.state().held_until[index] = Some(Instant::now() + wait);
                    }
                    self.state().server_errors[index] = 0;
                    self.record(
                        &url,
                        EventKind::Failover {
                            cause,
                            detail: error.to_string(),
                        },
                    );
                    return Step::NextServer(cause.as_str().to_owned());
                }
                Classification::CertificateRejected => {
                    self.record(
                        &url,
                        EventKind::CertificateRejected {
                            detail: error.to_string(),
                        },
                    );
                    return Step::NextServer("certificate_rejected".to_owned());
                }
                Classification::RetrySameServer => {
                    busy += 1;
                    if busy > settings.busy_retries {
                        return Step::Stop(RequestError::Busy { server: url });
                    }
                    let wait = error
                        .http()
                        .and_then(|h| h.retry_after)
                        .unwrap_or(settings.busy_wait);
                    tracing::debug!(server = %url, ?wait, "server busy; waiting to retry it");
                    tokio::time::sleep(wait).await;
                }
                Classification::ServerError => {
                    let errors = {
                        let mut state = self.state();
                        state.server_errors[index] += 1;
                        state.server_errors[index]
                    };
                    if errors >= settings.server_errors_before_failover {
                        self.state().server_errors[index] = 0;
                        let cause = FailoverCause::WebServiceDown;
                        self.record(
                            &url,
                            EventKind::Failover {
                                cause,
                                detail: format!("repeated server errors: {error}"),
                            },
                        );
                        return Step::NextServer(cause.as_str().to_owned());
                    }
                    tokio::time::sleep(settings.server_error_pause).await;
                }
                Classification::NotFailover => {
                    return Step::Stop(match error {
                        ClientError::Http(http) => RequestError::Refused(http),
                        other => RequestError::Local(other),
                    });
                }
            }
        }
    }

    /// One round of failback probes: asks `/health` of every server above
    /// the current one and counts consecutive good answers, then fails back
    /// if it may.
    pub async fn probe_once(&self) {
        let current = self.current_index();
        if current == 0 {
            return;
        }
        for index in 0..current {
            let client = self.shared.servers.get(index).expect("in the list").clone();
            let good = matches!(
                client.health().await.map(|h| classify_health(&h)),
                Ok(Classification::NotFailover)
            );
            let mut state = self.state();
            state.good_probes[index] = if good {
                state.good_probes[index] + 1
            } else {
                0
            };
        }
        self.fail_back_if_idle();
    }

    /// Returns to the first server above the current one with enough good
    /// probes and no `Retry-After` hold left, unless a person's session is
    /// active.
    fn fail_back_if_idle(&self) {
        if self.session_active() {
            return;
        }
        let needed = self.shared.settings.failback_good_probes;
        let now = Instant::now();
        let (from, to) = {
            let mut state = self.state();
            let current = state.current;
            let Some(to) = (0..current).find(|&i| {
                state.good_probes[i] >= needed && state.held_until[i].is_none_or(|t| t <= now)
            }) else {
                return;
            };
            state.current = to;
            state.held_until[to] = None;
            state.server_errors[to] = 0;
            for g in state.good_probes.iter_mut() {
                *g = 0;
            }
            (current, to)
        };
        let from = self.server_url(from);
        let to_url = self.server_url(to);
        self.record(&to_url, EventKind::Failback { from });
    }
}

async fn probe_loop(shared: Weak<Shared>, interval: Duration) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        FailoverClient { shared }.probe_once().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(status: u16, code: Option<&str>) -> HttpError {
        HttpError {
            server: "http://gw".into(),
            status: StatusCode::from_u16(status).unwrap(),
            code: code.map(str::to_owned),
            message: "m".into(),
            retry_after: None,
        }
    }

    #[test]
    fn only_refusals_retrying_cannot_fix_are_permanent() {
        for (status, code) in [
            (422, "unknown_workflow"),
            (422, "page_count_mismatch"),
            (409, "job_id_conflict"),
            (413, "job_too_large"),
            (415, "unsupported_page_format"),
            (400, "invalid_job_id"),
        ] {
            assert!(is_permanent_refusal(&http(status, Some(code))), "{code}");
        }
        for (status, code) in [
            (409, "upload_in_progress"),
            (401, "session_expired"),
            (403, "device_revoked"),
            (429, "rate_limited"),
            (404, "not_found"),
        ] {
            assert!(!is_permanent_refusal(&http(status, Some(code))), "{code}");
        }
    }

    #[test]
    fn events_serialise_flat_with_snake_case_names() {
        let e = ClientEvent {
            at: DateTime::parse_from_rfc3339("2025-01-01T00:00:00Z")
                .unwrap()
                .with_timezone(&Utc),
            server: "https://gw-a".into(),
            kind: EventKind::Failover {
                cause: FailoverCause::DataServiceDown,
                detail: "d".into(),
            },
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["event"], "failover");
        assert_eq!(v["cause"], "data_service_down");
        assert_eq!(v["server"], "https://gw-a");
        let c =
            serde_json::to_value(EventKind::CertificateRejected { detail: "x".into() }).unwrap();
        assert_eq!(c["event"], "certificate_rejected");
    }
}
