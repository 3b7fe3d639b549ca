//! In-process tests of the router: requests go straight into `app(core)`
//! with `tower::ServiceExt::oneshot`, over a core with a real store in a
//! temporary directory but no TLS, no listeners and no workers.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use licensing::{KeySpec, Role, TrustedKeys, VendorKeyPair};
use pair_core::{Epoch, ServerId};
use serde_json::{Value, json};
use tower::ServiceExt;
use uuid::Uuid;

use crate::admin::ops;
use crate::clock::ManualClock;
use crate::core::Core;
use crate::security::PasswordHash;
use crate::security::passwords::MIN_ITERATIONS;
use crate::settings::{self, Source};

/// A core with one user (`ann` / `pw`) and a folder workflow, its data
/// service up and its configuration loaded; unlicensed until a test
/// activates a key.
struct Site {
    _dir: tempfile::TempDir,
    core: Arc<Core>,
    vendor: VendorKeyPair,
    clock: Arc<ManualClock>,
}

impl Site {
    async fn new() -> Site {
        let dir = tempfile::tempdir().unwrap();
        let hash = PasswordHash::create("pw", MIN_ITERATIONS).to_text();
        let file = dir.path().join("gateway.toml");
        std::fs::write(
            &file,
            format!(
                r#"
[defaults]
listen = "127.0.0.1:0"
data_dir = "{}/{{instance}}"
upload_slot_wait_ms = 300

[users.ann]
password_hash = "{hash}"

[workflows.scan-to-folder]
steps = [{{ plugin = "assemble" }}, {{ plugin = "folder", root = "{{data_dir}}/delivered" }}]
"#,
                dir.path().display()
            ),
        )
        .unwrap();
        let settings =
            settings::load(Source::File(&file), Some("gw-t"), &settings::Env::none()).unwrap();
        let (vendor, _) = VendorKeyPair::generate().unwrap();
        let clock = Arc::new(ManualClock::new(chrono::Utc::now()));
        let core = Core::for_tests_with_clock(
            settings,
            TrustedKeys::builtin().with(vendor.public_key()),
            clock.clone(),
        );
        core.data.start().await.unwrap();
        core.load_generation(core.data.state().generation)
            .await
            .unwrap();
        Site {
            _dir: dir,
            core,
            vendor,
            clock,
        }
    }

    fn key(&self, role: Role) -> String {
        self.vendor
            .issue(&KeySpec {
                role,
                serial: 7,
                seats: 5,
                expires: None,
            })
            .unwrap()
    }

    async fn licensed(role: Role) -> Site {
        let site = Site::new().await;
        site.core.activate_license(site.key(role)).await.unwrap();
        site
    }

    /// Adds an approved device (as the primary would have) and returns
    /// its token.
    async fn device(&self, name: &'static str) -> String {
        let core = self.core.clone();
        let role = core.role.snapshot();
        let instance = core.name().to_owned();
        core.data
            .run(move |s| {
                Ok(ops::add_device(s, &role, &instance, name, None)
                    .expect("the primary adds devices")
                    .token)
            })
            .await
            .unwrap()
    }

    async fn call(&self, req: Request<Body>) -> (StatusCode, Option<String>, Value) {
        let response = crate::web::app(self.core.clone())
            .oneshot(req)
            .await
            .unwrap();
        let status = response.status();
        let retry = response
            .headers()
            .get(header::RETRY_AFTER)
            .map(|v| v.to_str().unwrap().to_owned());
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, retry, body)
    }

    async fn health(&self) -> (StatusCode, Option<String>, Value) {
        self.call(Request::get("/health").body(Body::empty()).unwrap())
            .await
    }

    async fn login(&self, token: &str) -> String {
        let (status, _, body) = self
            .call(
                Request::post("/api/v1/sessions")
                    .header(header::AUTHORIZATION, format!("Bearer {token}"))
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Body::from(
                        json!({"user": "ann", "password": "pw"}).to_string(),
                    ))
                    .unwrap(),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["session"].as_str().unwrap().to_owned()
    }

    async fn submit(
        &self,
        token: &str,
        session: &str,
        id: Uuid,
        pages: u32,
    ) -> (StatusCode, Value) {
        self.submit_with(token, session, id, pages, &[]).await
    }

    async fn submit_with(
        &self,
        token: &str,
        session: &str,
        id: Uuid,
        pages: u32,
        extra: &[(&str, &str)],
    ) -> (StatusCode, Value) {
        let boundary = "xBOUNDARYx";
        let mut body = Vec::new();
        let manifest = json!({"workflow": "scan-to-folder", "page_count": pages});
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"manifest\"\r\n\r\n{manifest}\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"page\"; filename=\"p1.png\"\r\n\r\n")
                .as_bytes(),
        );
        body.extend_from_slice(b"\x89PNG\r\n\x1a\n-not-decoded-by-the-intake-");
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let mut request = Request::put(format!("/api/v1/jobs/{id}"))
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header("x-scan-session", session)
            .header(
                header::CONTENT_TYPE,
                format!("multipart/form-data; boundary={boundary}"),
            );
        for (name, value) in extra {
            request = request.header(*name, *value);
        }
        let (status, _, body) = self.call(request.body(Body::from(body)).unwrap()).await;
        (status, body)
    }

    async fn logout(&self, token: &str, session: &str, scanned: Option<&str>) -> StatusCode {
        let mut request = Request::delete("/api/v1/sessions/current")
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header("x-scan-session", session);
        if let Some(n) = scanned {
            request = request.header("x-scan-session-jobs", n);
        }
        self.call(request.body(Body::empty()).unwrap()).await.0
    }

    async fn register(&self) -> (StatusCode, Value) {
        let (status, _, body) = self
            .call(
                Request::post("/api/v1/devices/register")
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Body::from(json!({"name": "mfd-new"}).to_string()))
                    .unwrap(),
            )
            .await;
        (status, body)
    }
}

#[tokio::test]
async fn job_api_answers_with_its_documented_status_codes() {
    let site = Site::licensed(Role::Primary).await;
    let token = site.device("mfd-1").await;
    let session = site.login(&token).await;
    let id = Uuid::new_v4();

    let (status, ack) = site.submit(&token, &session, id, 1).await;
    assert_eq!(status, StatusCode::CREATED, "{ack}");
    assert_eq!(ack["replayed"], false);
    assert_eq!(ack["accepted_by"], "gw-t");
    assert_eq!(ack["role"], "primary");

    // The same job again: the original acknowledgement, never a second job.
    let (status, again) = site.submit(&token, &session, id, 1).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["replayed"], true);
    assert_eq!(again["received_at"], ack["received_at"]);

    // The same id with another manifest is a conflict.
    let (status, body) = site.submit(&token, &session, id, 2).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "job_id_conflict");

    let get = |path: String, token: Option<&str>| {
        let mut req = Request::get(path);
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        req.body(Body::empty()).unwrap()
    };
    let (status, _, job) = site
        .call(get(format!("/api/v1/jobs/{id}"), Some(&token)))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(job["state"], "received");
    let (status, _, body) = site
        .call(get(
            format!("/api/v1/jobs/{}", Uuid::new_v4()),
            Some(&token),
        ))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    let (status, _, body) = site
        .call(get("/api/v1/jobs/job-42".into(), Some(&token)))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_job_id"))
    );
    let (status, _, body) = site.call(get(format!("/api/v1/jobs/{id}"), None)).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("device_token_missing"))
    );
    let (status, _, body) = site.call(get("/api/v1/jobs".into(), Some(&token))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["jobs"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn the_secondary_refuses_configuration_writes_with_read_only_secondary() {
    let site = Site::licensed(Role::Secondary).await;
    let (status, body) = site.register().await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "read_only_secondary");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("device registration needs the primary"),
        "{body}"
    );
    let (status, _, health) = site.health().await;
    assert_eq!(
        (status, health["role"].as_str()),
        (StatusCode::OK, Some("secondary"))
    );
}

#[tokio::test]
async fn a_fenced_server_refuses_configuration_writes_and_still_takes_jobs() {
    let site = Site::licensed(Role::Primary).await;
    let token = site.device("mfd-1").await;
    let session = site.login(&token).await;
    let newer = Epoch::new(
        site.core.role.snapshot().epoch.number + 1,
        ServerId::from_u128(9),
    );
    let role = site.core.note_epoch(newer).await.unwrap();
    assert_eq!(role.role.as_str(), "fenced");

    let (status, body) = site.register().await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "fenced");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("epoch {}", newer.number)),
        "{message}"
    );
    assert!(message.contains("04 key"), "{message}");

    let (status, _, health) = site.health().await;
    assert_eq!(status, StatusCode::OK, "{health}");
    assert_eq!(health["role"], "fenced");
    assert_eq!(health["accepting"], true);
    assert_eq!(health["fenced"]["by_epoch"], newer.number);

    let (status, ack) = site.submit(&token, &session, Uuid::new_v4(), 1).await;
    assert_eq!(status, StatusCode::CREATED, "{ack}");
    assert_eq!(ack["role"], "fenced");
}

#[tokio::test]
async fn health_names_every_refusal_reason_with_retry_after() {
    let site = Site::new().await;
    let (status, retry, body) = site.health().await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["reason"], "not-licensed");
    assert_eq!(retry.as_deref(), Some("30"));

    site.core
        .activate_license(site.key(Role::Primary))
        .await
        .unwrap();
    let (status, retry, body) = site.health().await;
    assert_eq!((status, retry), (StatusCode::OK, None), "{body}");
    assert_eq!(body["reason"], Value::Null);
    assert_eq!(body["accepting"], true);

    site.core.set_maintenance(true).await;
    let (status, retry, body) = site.health().await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["reason"], "maintenance");
    assert_eq!(
        retry.as_deref(),
        Some(
            site.core
                .settings
                .instance
                .maintenance_retry_after_secs
                .to_string()
                .as_str()
        )
    );
    site.core.set_maintenance(false).await;

    site.core.data.stop().await;
    let (status, retry, body) = site.health().await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["reason"], "data-service-down");
    assert_eq!(retry.as_deref(), Some("30"));
    assert_eq!(body["data"], "down");
}

/// Regression: `license activate` re-ran the file import, so a secondary
/// promoted to primary replaced the configuration it had received with its
/// own file's.
#[tokio::test]
async fn promotion_and_a_restart_after_it_keep_the_replicated_configuration() {
    let site = Site::licensed(Role::Secondary).await;
    // What the primary sent: version 5 of epoch 1, where user `bob` replaced
    // the file's `ann`.
    let primary_epoch = Epoch::new(1, ServerId::from_u128(0xa));
    let bob =
        json!({"bob": {"password_hash": PasswordHash::create("pw", MIN_ITERATIONS).to_text()}});
    let write = site
        .core
        .role
        .snapshot()
        .replicated_write(primary_epoch, 5)
        .unwrap();
    site.core
        .data
        .run(move |s| s.put_config_docs(&[("users", bob.to_string())], write))
        .await
        .unwrap();
    site.core.reload_config().await.unwrap();
    let received = site.core.config.current().unwrap();
    assert_eq!(received.meta.version, 5);
    assert!(received.users.contains_key("bob"));

    let (_, role) = site.core.promote(site.key(Role::Primary)).await.unwrap();
    assert_eq!(role.role.as_str(), "primary");
    assert!(role.epoch > primary_epoch);
    site.core.reload_config().await.unwrap();
    let kept = |site: &Site| {
        let c = site.core.config.current().unwrap();
        assert_eq!(c.meta.version, 5, "no import on promotion");
        assert!(c.users.contains_key("bob") && !c.users.contains_key("ann"));
    };
    kept(&site);
    // A restart (the data service coming up again) imports nothing either:
    // the file's hash was recorded at promotion.
    site.core.data.stop().await;
    site.core.data.start().await.unwrap();
    site.core
        .load_generation(site.core.data.state().generation)
        .await
        .unwrap();
    kept(&site);
}

/// Regression: a session of a user removed from the configuration was
/// accepted until it expired. Removing the user ends it at once, for job
/// submission and logout alike.
#[tokio::test]
async fn removing_a_user_ends_their_sessions_at_once() {
    let site = Site::licensed(Role::Primary).await;
    let token = site.device("mfd-1").await;
    let session = site.login(&token).await;
    let (status, body) = site.submit(&token, &session, Uuid::new_v4(), 1).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    // The configuration now has `bob` only.
    let bob =
        json!({"bob": {"password_hash": PasswordHash::create("pw", MIN_ITERATIONS).to_text()}});
    let role = site.core.role.snapshot();
    site.core
        .data
        .run(move |s| {
            let write = role.config_write("test").expect("the primary writes");
            s.put_config_docs(&[("users", bob.to_string())], write)
        })
        .await
        .unwrap();
    site.core.reload_config().await.unwrap();
    assert!(!site.core.active_config().unwrap().users.contains_key("ann"));

    let (status, body) = site.submit(&token, &session, Uuid::new_v4(), 1).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["error"]["code"], "session_invalid");
    let (status, _, body) = site
        .call(
            Request::delete("/api/v1/sessions/current")
                .header(header::AUTHORIZATION, format!("Bearer {token}"))
                .header("x-scan-session", &session)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(body["error"]["code"], "session_invalid", "{status} {body}");
}

/// Regression: another device's job id answered `job_id_conflict`
/// ("different manifest") even for the identical manifest, which both told
/// that the job exists and gave a false reason.
#[tokio::test]
async fn another_devices_job_id_answers_job_id_taken_without_details() {
    let site = Site::licensed(Role::Primary).await;
    let owner = site.device("mfd-1").await;
    let other = site.device("mfd-2").await;
    let id = Uuid::new_v4();
    let session = site.login(&owner).await;
    let (status, body) = site.submit(&owner, &session, id, 1).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    let session = site.login(&other).await;
    for pages in [1, 2] {
        let (status, body) = site.submit(&other, &session, id, pages).await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        assert_eq!(body["error"]["code"], "job_id_taken");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(!message.contains("manifest"), "{message}");
        assert!(!body.to_string().contains("mfd-1"), "{body}");
    }
    // The owner still gets its acknowledgement, and its conflict.
    let session = site.login(&owner).await;
    let (status, _) = site.submit(&owner, &session, id, 1).await;
    assert_eq!(status, StatusCode::OK);
    let (_, body) = site.submit(&owner, &session, id, 2).await;
    assert_eq!(body["error"]["code"], "job_id_conflict");
}

/// Regression: an unknown user was checked against a decoy hashed with the
/// default iteration count while configured users had another, so the time
/// of a refusal told which users exist (5 ms against 130 ms). The decoy
/// takes the configured users' count: the same work, checked exactly.
#[test]
fn the_login_decoy_costs_what_a_configured_user_costs() {
    use crate::security::passwords::DEFAULT_ITERATIONS;
    use crate::site::User;
    use std::collections::BTreeMap;
    let user = |iterations| User {
        hash: PasswordHash::create("pw", iterations),
        display_name: None,
    };
    let mut users = BTreeMap::new();
    assert_eq!(
        crate::web::api::decoy_hash(&users).iterations(),
        DEFAULT_ITERATIONS
    );
    users.insert("ann".to_owned(), user(MIN_ITERATIONS));
    assert_eq!(
        crate::web::api::decoy_hash(&users).iterations(),
        MIN_ITERATIONS
    );
    users.insert("bob".to_owned(), user(MIN_ITERATIONS));
    users.insert("cy".to_owned(), user(MIN_ITERATIONS * 2));
    assert_eq!(
        crate::web::api::decoy_hash(&users).iterations(),
        MIN_ITERATIONS,
        "the count most users have"
    );
    assert!(!crate::web::api::decoy_hash(&users).verify("pw"));
}

/// Regression: a failed login whose user name held a newline wrote a
/// forged line into the text log. One request, one line, in both formats.
#[tokio::test]
async fn a_user_name_with_a_newline_makes_one_log_line() {
    use crate::logging::tests::Captured;
    use crate::settings::LogFormat;
    let site = Site::licensed(Role::Primary).await;
    let token = site.device("mfd-1").await;
    let forged = "x\n2030-01-01T00:00:00Z ERROR gw-t forged: admin ok";
    for format in [LogFormat::Human, LogFormat::Json] {
        let captured = Captured::default();
        let _default = tracing::subscriber::set_default(captured.subscriber(format));
        let (status, _, body) = site
            .call(
                Request::post("/api/v1/sessions")
                    .header(header::AUTHORIZATION, format!("Bearer {token}"))
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Body::from(
                        json!({"user": forged, "password": "pw"}).to_string(),
                    ))
                    .unwrap(),
            )
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        let text = captured.text();
        let refused: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("login refused"))
            .collect();
        assert_eq!(refused.len(), 1, "{format:?}: {text}");
        assert!(refused[0].contains("forged"), "{format:?}: {text}");
        assert!(
            !text.lines().any(|l| l.starts_with("2030-")),
            "{format:?}: a forged line: {text}"
        );
    }
}

/// A person scans two jobs, logs out and walks away; the device replays
/// them from its outbox later. They are accepted once each; a third job
/// under the ended session, or any job without its number, is not.
#[tokio::test]
async fn jobs_scanned_in_a_session_may_be_replayed_after_logout_and_nothing_else() {
    let site = Site::licensed(Role::Primary).await;
    let token = site.device("mfd-1").await;
    let session = site.login(&token).await;
    assert_eq!(
        site.logout(&token, &session, Some("2")).await,
        StatusCode::NO_CONTENT
    );

    let (first, second) = (Uuid::new_v4(), Uuid::new_v4());
    let (status, body) = site
        .submit_with(&token, &session, first, 1, &[("x-scan-job-seq", "1")])
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = site
        .submit_with(&token, &session, second, 1, &[("x-scan-job-seq", "2")])
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // Replayed again: the original acknowledgement.
    let (status, _) = site
        .submit_with(&token, &session, first, 1, &[("x-scan-job-seq", "1")])
        .await;
    assert_eq!(status, StatusCode::OK);

    let (status, body) = site
        .submit_with(
            &token,
            &session,
            Uuid::new_v4(),
            1,
            &[("x-scan-job-seq", "3")],
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["error"]["code"], "session_expired");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not among the 2"),
        "{body}"
    );
    let (status, body) = site.submit(&token, &session, Uuid::new_v4(), 1).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("session_expired"))
    );
    let (status, body) = site
        .submit_with(
            &token,
            &session,
            Uuid::new_v4(),
            1,
            &[("x-scan-job-seq", "one")],
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("bad_request"))
    );
}

/// A session that simply expired (the person walked away without logging
/// out) lets its jobs be replayed within the window, server time, not after.
#[tokio::test]
async fn jobs_of_an_expired_session_are_replayed_within_the_window_only() {
    let site = Site::licensed(Role::Primary).await;
    let token = site.device("mfd-1").await;
    let session = site.login(&token).await;
    let ttl = site.core.config.current().unwrap().session_ttl_secs as i64;
    site.clock.advance(chrono::Duration::seconds(ttl + 60));

    let (status, body) = site.submit(&token, &session, Uuid::new_v4(), 1).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("session_expired"))
    );
    let (status, body) = site
        .submit_with(
            &token,
            &session,
            Uuid::new_v4(),
            1,
            &[("x-scan-job-seq", "1")],
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    let window = site.core.settings.instance.outbox_replay_window_secs as i64;
    site.clock.advance(chrono::Duration::seconds(window));
    let (status, body) = site
        .submit_with(
            &token,
            &session,
            Uuid::new_v4(),
            1,
            &[("x-scan-job-seq", "1")],
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("can no longer be replayed"),
        "{body}"
    );
}

/// Regression: a switch an admin changed while the data service was down
/// was overwritten, when the service came back, by what the store held.
#[tokio::test]
async fn admin_switches_changed_while_the_store_is_away_survive_its_return() {
    let site = Site::licensed(Role::Primary).await;
    site.core.data.stop().await;
    assert!(
        !site.core.set_maintenance(true).await,
        "not stored while down"
    );
    assert!(!site.core.set_pipeline_paused(true).await);
    site.core.data.start().await.unwrap();
    site.core
        .load_generation(site.core.data.state().generation)
        .await
        .unwrap();
    assert!(site.core.in_maintenance());
    assert!(site.core.pipeline_paused());
    // Now stored: another restart of the data service keeps them too.
    site.core.data.stop().await;
    site.core.data.start().await.unwrap();
    site.core
        .load_generation(site.core.data.state().generation)
        .await
        .unwrap();
    assert!(site.core.in_maintenance() && site.core.pipeline_paused());
    site.core.set_maintenance(false).await;
    assert!(!site.core.in_maintenance());
}

#[tokio::test]
async fn uploads_beyond_the_limit_in_flight_wait_for_a_slot_then_are_answered_busy_and_lose_nothing()
 {
    let site = Site::licensed(Role::Primary).await;
    let token = site.device("mfd-1").await;
    let session = site.login(&token).await;
    let in_flight = &site.core.admission.in_flight;
    assert_eq!(in_flight.wait(), std::time::Duration::from_millis(300));
    let mut streaming = Vec::new();
    while streaming.len() < in_flight.limit() {
        streaming.push(in_flight.enter().await.unwrap());
    }
    // Every slot stays taken for longer than the wait: `busy`.
    let id = Uuid::new_v4();
    let (status, body) = site.submit(&token, &session, id, 1).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "busy");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("send this job again"),
        "{body}"
    );
    assert_eq!(
        crate::web::error::ApiError::Busy { limit: 1 }.retry_after(),
        Some(1),
        "Retry-After: 1"
    );
    let kept = site.core.data.run(move |s| s.job_exists(id)).await.unwrap();
    let spool = site.core.data.parts().unwrap().spool.clone();
    assert!(!kept && !spool.job_dir(id).exists(), "nothing was kept");
    // An upload that waits gets the first slot freed within the wait, and
    // gives it back when it is done.
    let waiting = async {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert_eq!(in_flight.waiting(), 1, "the upload waits for a slot");
        streaming.pop();
    };
    let ((status, ack), ()) = tokio::join!(site.submit(&token, &session, id, 1), waiting);
    assert_eq!(status, StatusCode::CREATED, "{ack}");
    assert_eq!(in_flight.current(), in_flight.limit() - 1);
    assert_eq!(in_flight.waiting(), 0);
}
