//! Owns the panel's HTTP server: the page assets (embedded in the binary,
//! nothing fetched from elsewhere) and the small JSON API the page's script
//! calls. It must not talk to a gateway other than through the [`Agent`]
//! (failover client and outbox), and it never hands the session or device
//! token to the page: the agent holds them.
//!
//! The API (all JSON; a refusal is `{"error": "<one sentence>"}` with a 4xx
//! or 5xx status):
//!
//! - `GET /api/status`: who is logged in, which server the panel uses, the
//!   notice of a recent failover or failback, and the jobs waiting in the
//!   outbox;
//! - `POST /api/login` `{"user", "password"}`, `POST /api/logout`;
//! - `GET /api/workflows`: the gateway's workflows with their index fields;
//! - `POST /api/scan` `{"workflow", "metadata": {key: value}}`: scans,
//!   keeps the job in the outbox and answers its id;
//! - `GET /api/jobs/{job_id}`: where that job is.
//!
//! Requests with a body must be `application/json`, which a page of another
//! origin cannot send without a CORS preflight this server never grants.

use std::{collections::BTreeMap, sync::Arc};

use axum::{
    Json, Router,
    extract::{Path, State, rejection::JsonRejection},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use chrono::Utc;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::{Agent, ScanRefused, Sending};
use crate::{api::JobState, failover::RequestError};

const INDEX_HTML: &str = include_str!("assets/index.html");
const PANEL_CSS: &str = include_str!("assets/panel.css");
const PANEL_JS: &str = include_str!("assets/panel.js");
const VALIDATE_JS: &str = include_str!("assets/validate.js");

/// The page may load only its own scripts and styles and talk only to this
/// server.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// The longest user name, password, workflow name, metadata key or value the
/// panel passes on (the gateway has its own, tighter limits).
const MAX_TEXT: usize = 1024;
/// The most metadata entries of one scan.
const MAX_METADATA: usize = 64;

/// The panel's router over the shared agent.
pub fn app(agent: Arc<Agent>) -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/panel.css",
            get(|| async { asset("text/css; charset=utf-8", PANEL_CSS) }),
        )
        .route(
            "/panel.js",
            get(|| async { asset("text/javascript; charset=utf-8", PANEL_JS) }),
        )
        .route(
            "/validate.js",
            get(|| async { asset("text/javascript; charset=utf-8", VALIDATE_JS) }),
        )
        .route("/api/status", get(status))
        .route("/api/login", post(login))
        .route("/api/logout", post(logout))
        .route("/api/workflows", get(workflows))
        .route("/api/scan", post(scan))
        .route("/api/jobs/{job_id}", get(job))
        .fallback(|| async { refuse(StatusCode::NOT_FOUND, "there is no such page on the panel") })
        .with_state(agent)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

fn answer(value: Value) -> Response {
    let mut r = Json(value).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn refuse(status: StatusCode, message: impl Into<String>) -> Response {
    let mut r = (status, Json(json!({ "error": message.into() }))).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// A failed request to the gateways, as the person should read it.
fn refuse_request(e: &RequestError) -> Response {
    let status = match e {
        RequestError::Refused(h) if h.status.is_client_error() => h.status,
        RequestError::NoSession => StatusCode::UNAUTHORIZED,
        RequestError::Local(_) | RequestError::Outbox(_) => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::BAD_GATEWAY,
    };
    tracing::info!(error = %e, "panel request not done");
    let message = match e {
        // The failover client's words for this are about a scan kept in
        // the outbox, which a login or a look-up does not have.
        RequestError::NoServer { .. } | RequestError::Busy { .. }
            if e.person_message() != crate::failover::IDENTITY_NOT_VERIFIED =>
        {
            "no server answers right now; try again in a moment".to_owned()
        }
        _ => e.person_message(),
    };
    refuse(status, sentence(&message))
}

/// A message as one sentence: capital first letter, full stop at the end.
fn sentence(text: &str) -> String {
    let text = text.trim();
    let mut chars = text.chars();
    let mut out: String = chars
        .next()
        .map(|c| c.to_uppercase().collect::<String>() + chars.as_str())
        .unwrap_or_default();
    if !out.ends_with(['.', '!', '?']) {
        out.push('.');
    }
    out
}

/// A request the panel's API refuses as malformed, with its sentence.
struct BadRequest(String);

impl IntoResponse for BadRequest {
    fn into_response(self) -> Response {
        refuse(StatusCode::BAD_REQUEST, self.0)
    }
}

fn json_body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, BadRequest> {
    body.map(|Json(v)| v).map_err(|e| {
        BadRequest(format!(
            "The request is not the JSON the panel sends: {}.",
            e.body_text()
        ))
    })
}

fn check_text(what: &str, value: &str) -> Result<(), BadRequest> {
    if value.len() > MAX_TEXT || value.chars().any(char::is_control) {
        return Err(BadRequest(format!(
            "The {what} is too long or has control characters."
        )));
    }
    Ok(())
}

async fn status(State(agent): State<Arc<Agent>>) -> Response {
    let index = agent.failover().current_index();
    let outbox = agent.outbox().clone();
    let (waiting, rejected) = match tokio::task::spawn_blocking(move || {
        Ok::<_, crate::outbox::OutboxError>((outbox.pending()?, outbox.rejected()?))
    })
    .await
    {
        Ok(Ok(lists)) => lists,
        Ok(Err(e)) => {
            return refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("The outbox cannot be read: {e}."),
            );
        }
        Err(_) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, "The outbox read failed."),
    };
    let waiting: Vec<Value> = waiting
        .iter()
        .map(|j| {
            json!({
                "job_id": j.job_id,
                "workflow": j.manifest.workflow,
                "scanned_at": j.scanned_at,
                "pages": j.pages.len(),
            })
        })
        .collect();
    let notice = agent
        .notice(Utc::now())
        .map(|n| json!({"seq": n.seq, "kind": n.kind, "at": n.at, "text": n.text}));
    answer(json!({
        "user": agent.user(),
        "server": {
            "index": index,
            "role": Agent::server_role(index),
            "url": agent.server_url(index),
        },
        "servers": agent.settings().gateways.len(),
        "notice": notice,
        "outbox": { "waiting": waiting, "rejected": rejected.len() },
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    user: String,
    password: String,
}

async fn login(
    State(agent): State<Arc<Agent>>,
    body: Result<Json<LoginBody>, JsonRejection>,
) -> Response {
    let body = match json_body(body) {
        Ok(b) => b,
        Err(r) => return r.into_response(),
    };
    if body.user.trim().is_empty() || body.password.is_empty() {
        return refuse(
            StatusCode::BAD_REQUEST,
            "Enter your user name and password.",
        );
    }
    if let Err(r) = check_text("user name", &body.user).and(check_text("password", &body.password))
    {
        return r.into_response();
    }
    if let Some(user) = agent.user() {
        return refuse(
            StatusCode::CONFLICT,
            format!("{user} is still logged in at the panel; log out first."),
        );
    }
    match agent.login(body.user.trim(), &body.password).await {
        Ok(()) => answer(json!({ "user": body.user.trim() })),
        Err(e) => refuse_request(&e),
    }
}

async fn logout(State(agent): State<Arc<Agent>>) -> Response {
    match agent.logout().await {
        Ok(()) => answer(json!({ "logged_out": true })),
        // The session ended on the device all the same; the server learns
        // of it when it expires.
        Err(e) => answer(json!({
            "logged_out": true,
            "warning": sentence(&format!("the server could not be told: {}", e.person_message())),
        })),
    }
}

async fn workflows(State(agent): State<Arc<Agent>>) -> Response {
    if agent.user().is_none() {
        return refuse(StatusCode::UNAUTHORIZED, "Log in to choose a workflow.");
    }
    match agent.failover().workflow_catalog().await {
        Ok(catalog) => {
            let details: Vec<Value> = catalog
                .workflows
                .iter()
                .map(|w| json!({ "name": w, "fields": catalog.fields(w) }))
                .collect();
            answer(json!({ "workflows": catalog.workflows, "details": details }))
        }
        Err(e) => refuse_request(&e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScanBody {
    workflow: String,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
}

async fn scan(
    State(agent): State<Arc<Agent>>,
    body: Result<Json<ScanBody>, JsonRejection>,
) -> Response {
    let body = match json_body(body) {
        Ok(b) => b,
        Err(r) => return r.into_response(),
    };
    if body.workflow.is_empty() {
        return refuse(
            StatusCode::BAD_REQUEST,
            "Choose a workflow before scanning.",
        );
    }
    if body.metadata.len() > MAX_METADATA {
        return refuse(
            StatusCode::BAD_REQUEST,
            format!("A scan carries at most {MAX_METADATA} index fields."),
        );
    }
    let mut checked = check_text("workflow name", &body.workflow);
    for (k, v) in &body.metadata {
        checked = checked
            .and(check_text("index field name", k))
            .and(check_text("index field value", v));
    }
    if let Err(r) = checked {
        return r.into_response();
    }
    match agent.scan(&body.workflow, body.metadata).await {
        Ok(job_id) => answer(json!({ "job_id": job_id })),
        Err(ScanRefused::Request(e)) => refuse_request(&e),
        Err(ScanRefused::Scanner(e)) => {
            tracing::error!(error = %e, "the scanner produced no pages");
            refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                "The scanner produced no pages; ask the device's administrator.",
            )
        }
    }
}

async fn job(State(agent): State<Arc<Agent>>, Path(job_id): Path<String>) -> Response {
    let Ok(job_id) = Uuid::parse_str(&job_id) else {
        return refuse(StatusCode::BAD_REQUEST, "That is not a job id.");
    };
    let Some(sending) = agent.sending(job_id) else {
        return refuse(StatusCode::NOT_FOUND, "This device has no such job.");
    };
    match sending {
        Sending::Waiting(why) => answer(json!({
            "job_id": job_id,
            "state": "waiting",
            "message": why.map_or_else(|| "Sending the scan to the server.".to_owned(), |w| sentence(&w)),
        })),
        Sending::Rejected(r) => answer(json!({
            "job_id": job_id,
            "state": "rejected",
            "message": sentence(&format!("the server refused the job: {}", r.message)),
        })),
        Sending::Acknowledged {
            server_index,
            accepted_by,
        } => match agent.failover().job(job_id).await {
            Ok(status) => {
                let message = match status.state {
                    JobState::Received => {
                        "Received by the server; waiting for processing.".to_owned()
                    }
                    JobState::Processing => "The server is processing the job.".to_owned(),
                    JobState::Done => "Done: the document was delivered.".to_owned(),
                    JobState::Failed => sentence(&format!(
                        "the job failed: {}",
                        status
                            .reason
                            .as_deref()
                            .unwrap_or("the server gave no reason")
                    )),
                    JobState::Unknown => {
                        "The server reports a state this panel does not know.".to_owned()
                    }
                };
                answer(json!({
                    "job_id": job_id,
                    "state": status.state,
                    "message": message,
                    "accepted_by": status.accepted_by,
                    "steps_done": status.steps.iter().filter(|s| s.outcome.as_deref() == Some("done")).count(),
                }))
            }
            Err(e) => answer(json!({
                "job_id": job_id,
                "state": "acknowledged",
                "accepted_by": accepted_by,
                "message": sentence(&format!(
                    "the {} server has the job; its progress cannot be shown now: {}",
                    Agent::server_role(server_index),
                    e.person_message()
                )),
            })),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::config::AgentSettings;
    use axum::body::Body;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    /// An agent whose only gateway is never reached.
    async fn agent(dir: &std::path::Path) -> Arc<Agent> {
        std::fs::write(dir.join("token"), "tok").unwrap();
        let text = "token_file = \"token\"\noutbox_dir = \"outbox\"\n\
                    [[gateways]]\nurl = \"http://127.0.0.1:1\"\n";
        let settings =
            AgentSettings::from_text(text, &dir.join("agent.toml"), &Default::default()).unwrap();
        Agent::start(settings).await.unwrap()
    }

    async fn call(app: Router, method: &str, uri: &str, body: &str) -> (StatusCode, Value) {
        let request = axum::http::Request::builder()
            .method(method)
            .uri(uri)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_owned()))
            .unwrap();
        let response = app.oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    #[tokio::test]
    async fn the_api_refuses_what_needs_a_person_and_bad_input() {
        let dir = tempfile::tempdir().unwrap();
        let app = app(agent(dir.path()).await);
        let (status, body) = call(app.clone(), "GET", "/api/status", "").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["user"], Value::Null);
        assert_eq!(body["server"]["role"], "primary");
        assert_eq!(body["outbox"]["waiting"], json!([]));
        let (status, body) = call(
            app.clone(),
            "POST",
            "/api/scan",
            r#"{"workflow": "invoices", "metadata": {}}"#,
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        assert!(body["error"].as_str().unwrap().contains("log in"), "{body}");
        let (status, _) = call(app.clone(), "GET", "/api/workflows", "").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let (status, body) = call(app.clone(), "POST", "/api/login", r#"{"user": "a"}"#).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .starts_with("The request is not the JSON")
        );
        let (status, body) = call(
            app.clone(),
            "POST",
            "/api/login",
            r#"{"user": "alice", "password": "pw"}"#,
        )
        .await;
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        assert_eq!(
            body["error"],
            "No server answers right now; try again in a moment."
        );
        let (status, _) = call(app.clone(), "GET", "/api/jobs/not-a-job", "").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let (status, _) = call(app, "GET", &format!("/api/jobs/{}", Uuid::new_v4()), "").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn the_page_is_served_with_its_content_security_policy() {
        let dir = tempfile::tempdir().unwrap();
        let response = app(agent(dir.path()).await)
            .oneshot(
                axum::http::Request::builder()
                    .uri("/")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let csp = response.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap();
        assert!(csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"));
    }

    #[test]
    fn messages_become_sentences() {
        assert_eq!(sentence("nobody is logged in"), "Nobody is logged in.");
        assert_eq!(sentence("Done."), "Done.");
        assert_eq!(sentence(""), ".");
    }

    #[test]
    fn the_page_loads_only_its_own_files() {
        // Every script and stylesheet the page names is served here, and
        // nothing refers to another origin.
        for src in ["/panel.css", "/panel.js", "/validate.js"] {
            assert!(INDEX_HTML.contains(src), "{src}");
        }
        for text in [INDEX_HTML, PANEL_CSS, PANEL_JS, VALIDATE_JS] {
            assert!(!text.contains("http://") && !text.contains("https://"));
            assert!(!text.contains("//cdn") && !text.contains("@import"));
        }
    }
}
