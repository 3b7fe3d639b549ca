//! Fuzz target: the job upload stream, through the gateway's own intake.
//!
//! Each input is the body of `PUT /api/v1/jobs/{id}` (multipart with the
//! boundary `xBOUNDARYx`): part names and order, the manifest, page counts,
//! page format sniffing and the size limits. It goes in-process into the
//! router (`tower::ServiceExt::oneshot`) of a real core: a licensed server
//! with a store and spool on tmpfs (so the fsyncs of an accepted job cost
//! little), one approved device and one logged-in session, no TLS, no
//! listeners, no workers. Every job gets a fresh id, so each input is read
//! to its end rather than answered as a replay.
//!
//! Bad uploads must be refused with a 4xx and the error body of the API;
//! a 5xx (or a panic) for any body is a bug.

#![no_main]

use std::sync::{Arc, LazyLock};

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use gateway::admin::ops;
use gateway::core::Core;
use gateway::security::PasswordHash;
use gateway::security::passwords::MIN_ITERATIONS;
use gateway::settings::{self, Source};
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use licensing::{KeySpec, Role, TrustedKeys, VendorKeyPair};
use tower::ServiceExt;
use uuid::Uuid;

/// The boundary every input is sent with (the seed bodies use it).
const BOUNDARY: &str = "xBOUNDARYx";

struct Site {
    runtime: tokio::runtime::Runtime,
    core: Arc<Core>,
    token: String,
    session: String,
    _dir: tempfile::TempDir,
}

static SITE: LazyLock<Site> = LazyLock::new(Site::start);

impl Site {
    fn start() -> Site {
        let dir = tempfile::Builder::new()
            .prefix("scangw-fuzz-intake-")
            .tempdir_in("/dev/shm")
            .or_else(|_| tempfile::tempdir())
            .expect("a temporary directory");
        let hash = PasswordHash::create("pw", MIN_ITERATIONS).to_text();
        let file = dir.path().join("gateway.toml");
        std::fs::write(
            &file,
            format!(
                r#"
[defaults]
listen = "127.0.0.1:0"
data_dir = "{}/{{instance}}"

[limits]
max_pages = 8
max_page_bytes = "64KiB"
max_job_bytes = "256KiB"

[users.ann]
password_hash = "{hash}"

[workflows.scan-to-folder]
steps = [{{ plugin = "assemble" }}, {{ plugin = "folder", root = "{{data_dir}}/delivered" }}]
"#,
                dir.path().display()
            ),
        )
        .expect("writing the configuration");
        let settings = settings::load(Source::File(&file), Some("gw-f"), &settings::Env::none())
            .expect("the fuzz site's configuration is valid");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let (vendor, _) = VendorKeyPair::generate().expect("a vendor key");
        let core = Core::for_tests(settings, TrustedKeys::builtin().with(vendor.public_key()));
        let key = vendor
            .issue(&KeySpec {
                role: Role::Primary,
                serial: 7,
                seats: 5,
                expires: None,
            })
            .expect("a license key");
        let (token, session) = runtime.block_on(async {
            core.data.start().await.expect("the data service starts");
            core.load_generation(core.data.state().generation)
                .await
                .expect("the configuration loads");
            core.activate_license(key).await.expect("the key activates");
            let role = core.role.snapshot();
            let instance = core.name().to_owned();
            let token = core
                .data
                .run(move |s| {
                    Ok(ops::add_device(s, &role, &instance, "mfd-fuzz", None)
                        .expect("the primary adds devices")
                        .token)
                })
                .await
                .expect("the device is stored");
            let login = Request::post("/api/v1/sessions")
                .header(header::AUTHORIZATION, format!("Bearer {token}"))
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(r#"{"user":"ann","password":"pw"}"#))
                .expect("a request");
            let (status, body) = call(&core, login).await;
            assert_eq!(status, StatusCode::CREATED, "{body}");
            let session = body["session"].as_str().expect("a session").to_owned();
            (token, session)
        });
        Site {
            runtime,
            core,
            token,
            session,
            _dir: dir,
        }
    }
}

async fn call(core: &Arc<Core>, request: Request<Body>) -> (StatusCode, serde_json::Value) {
    let response = gateway::web::app(core.clone())
        .oneshot(request)
        .await
        .expect("the router answers");
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("the answer's body")
        .to_bytes();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, body)
}

fuzz_target!(|data: &[u8]| {
    let site = &*SITE;
    let request = Request::put(format!("/api/v1/jobs/{}", Uuid::new_v4()))
        .header(header::AUTHORIZATION, format!("Bearer {}", site.token))
        .header("x-scan-session", &site.session)
        .header(
            header::CONTENT_TYPE,
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .body(Body::from(data.to_vec()))
        .expect("a request");
    let (status, body) = site.runtime.block_on(call(&site.core, request));
    assert!(
        status == StatusCode::CREATED || status.is_client_error(),
        "an upload was answered {status}: {body}"
    );
    if status.is_client_error() {
        assert!(
            body["error"]["code"].is_string(),
            "a refusal without an error code: {status} {body}"
        );
    }
});
