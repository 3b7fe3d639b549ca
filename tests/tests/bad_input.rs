//! Every kind of bad input gets its status, a stable code and a message that
//! says what was wrong and what to do — and loses nothing: after all of it,
//! a good job still goes through. The messages are kept in a golden file
//! (`tests/golden/errors.txt`; regenerate with `UPDATE_GOLDEN=1`).

use e2e::http::{BOUNDARY, Device, Response, job_body, multipart, png};
use e2e::{Site, request};
use serde_json::json;
use uuid::Uuid;

const LIMITS: &str = r#"
[limits]
max_job_bytes = "1MiB"
max_page_bytes = "300KiB"
max_pages = 5
"#;

struct Case {
    name: &'static str,
    response: Response,
    status: u16,
    code: &'static str,
}

fn golden_line(c: &Case, job: &str) -> String {
    let message = c.response.message().replace(job, "<job>");
    format!(
        "{} | {} {} | {}",
        c.name, c.response.status, c.code, message
    )
}

#[test]
fn every_bad_input_has_its_status_code_and_message() {
    let site = Site::new(&["gw-a"], LIMITS);
    site.activate("gw-a", "03", 1, 1);
    let token = site.add_device("gw-a", "mfd-1");
    let over_seat = site.add_device("gw-a", "mfd-2");
    let gw = site.start("gw-a");
    let dev = Device::new(&gw.plain(), &token);
    let session = dev.login("alice");
    let job = Uuid::new_v4();
    let path = format!("/api/v1/jobs/{job}");
    let mp = format!("multipart/form-data; boundary={BOUNDARY}");
    let small = png(10_000, 1);
    let manifest = |w: &str, n: usize| json!({"workflow": w, "page_count": n});
    let submit = |body: &[u8]| dev.submit_raw(&session, job, body);

    let cases = vec![
        Case {
            // Four pages, each under the page limit, together over 1 MiB:
            // refused while streaming, when the total passes the limit.
            name: "job larger than max_job_bytes",
            response: submit(&job_body(
                &manifest("scan-to-folder", 4),
                &[
                    png(300_000, 2),
                    png(300_000, 3),
                    png(300_000, 4),
                    png(300_000, 5),
                ],
            )),
            status: 413,
            code: "job_too_large",
        },
        Case {
            name: "declared size over the limit",
            response: dev.call(
                "PUT",
                &path,
                &[
                    ("Content-Type", &mp),
                    ("X-Scan-Session", &session),
                    ("Content-Length", "99999999"),
                ],
                b"",
            ),
            status: 413,
            code: "job_too_large",
        },
        Case {
            name: "page larger than max_page_bytes",
            response: submit(&job_body(
                &manifest("scan-to-folder", 1),
                &[png(400_000, 6)],
            )),
            status: 413,
            code: "page_too_large",
        },
        Case {
            name: "more pages than max_pages",
            response: submit(&job_body(
                &manifest("scan-to-folder", 6),
                &vec![small.clone(); 6],
            )),
            status: 422,
            code: "too_many_pages",
        },
        Case {
            name: "unknown workflow",
            response: submit(&job_body(
                &manifest("scan-to-mars", 1),
                std::slice::from_ref(&small),
            )),
            status: 422,
            code: "unknown_workflow",
        },
        Case {
            name: "page count differs from the manifest",
            response: submit(&job_body(
                &manifest("scan-to-folder", 2),
                std::slice::from_ref(&small),
            )),
            status: 422,
            code: "page_count_mismatch",
        },
        Case {
            name: "manifest is not JSON",
            response: submit(&multipart(&[("manifest", b"{not json"), ("page", &small)])),
            status: 422,
            code: "invalid_manifest",
        },
        Case {
            name: "manifest with an unknown field",
            response: submit(&multipart(&[
                (
                    "manifest",
                    br#"{"workflow":"scan-to-folder","page_count":1,"colour":"red"}"#,
                ),
                ("page", &small),
            ])),
            status: 422,
            code: "invalid_manifest",
        },
        Case {
            name: "metadata key with a slash",
            response: submit(&job_body(
                &json!({"workflow": "scan-to-folder", "page_count": 1, "metadata": {"../x": "y"}}),
                std::slice::from_ref(&small),
            )),
            status: 422,
            code: "invalid_manifest",
        },
        Case {
            name: "first part is not the manifest",
            response: submit(&multipart(&[("page", &small)])),
            status: 422,
            code: "invalid_manifest",
        },
        Case {
            name: "manifest larger than 64 KiB",
            response: submit(&multipart(&[
                ("manifest", &vec![b' '; 70_000]),
                ("page", &small),
            ])),
            status: 413,
            code: "manifest_too_large",
        },
        Case {
            name: "page that is not an image or PDF",
            response: submit(&job_body(
                &manifest("scan-to-folder", 1),
                &[b"MZ\x90\x00 this is an executable".to_vec()],
            )),
            status: 415,
            code: "unsupported_page_format",
        },
        Case {
            name: "body that is not multipart",
            response: dev.call(
                "PUT",
                &path,
                &[
                    ("Content-Type", "application/json"),
                    ("X-Scan-Session", &session),
                ],
                b"{}",
            ),
            status: 400,
            code: "bad_request",
        },
        Case {
            name: "job id that is not a UUID",
            response: dev.call(
                "PUT",
                "/api/v1/jobs/job-42",
                &[("Content-Type", &mp), ("X-Scan-Session", &session)],
                b"",
            ),
            status: 400,
            code: "invalid_job_id",
        },
        Case {
            name: "no device token",
            response: request(&gw.plain(), "PUT", &path, &[("Content-Type", &mp)], b""),
            status: 401,
            code: "device_token_missing",
        },
        Case {
            name: "unknown device token",
            response: Device::new(
                &gw.plain(),
                "sgd_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            )
            .submit(
                &session,
                job,
                "scan-to-folder",
                std::slice::from_ref(&small),
            ),
            status: 401,
            code: "device_token_invalid",
        },
        Case {
            name: "no user session",
            response: dev.call(
                "PUT",
                &path,
                &[("Content-Type", &mp)],
                &job_body(&manifest("scan-to-folder", 1), std::slice::from_ref(&small)),
            ),
            status: 401,
            code: "session_missing",
        },
        Case {
            name: "forged user session",
            response: dev.submit(
                "sgs1.eyJzaWQiOiIxIn0.AAAA",
                job,
                "scan-to-folder",
                std::slice::from_ref(&small),
            ),
            status: 401,
            code: "session_invalid",
        },
        Case {
            name: "wrong password",
            response: dev.call(
                "POST",
                "/api/v1/sessions",
                &[("Content-Type", "application/json")],
                br#"{"user":"alice","password":"nope"}"#,
            ),
            status: 401,
            code: "bad_credentials",
        },
        Case {
            name: "login body with a missing field",
            response: dev.call(
                "POST",
                "/api/v1/sessions",
                &[("Content-Type", "application/json")],
                br#"{"user":"alice"}"#,
            ),
            status: 400,
            code: "bad_request",
        },
        Case {
            name: "login body larger than 64 KiB",
            response: dev.call(
                "POST",
                "/api/v1/sessions",
                &[("Content-Type", "application/json")],
                &vec![b' '; 100_000],
            ),
            status: 413,
            code: "request_too_large",
        },
        Case {
            name: "device beyond the license seats",
            response: Device::new(&gw.plain(), &over_seat).submit(
                &session,
                job,
                "scan-to-folder",
                std::slice::from_ref(&small),
            ),
            status: 403,
            code: "seat_limit",
        },
        Case {
            name: "unknown path",
            response: request(&gw.plain(), "GET", "/api/v2/jobs", &[], b""),
            status: 404,
            code: "not_found",
        },
        Case {
            name: "someone else's job",
            response: Device::new(&gw.plain(), &token).job(Uuid::nil()),
            status: 404,
            code: "not_found",
        },
    ];
    let job_text = job.to_string();
    let mut golden = String::new();
    for c in &cases {
        assert_eq!(
            (c.response.status, c.response.code().as_str()),
            (c.status, c.code),
            "{}: {}",
            c.name,
            String::from_utf8_lossy(&c.response.body)
        );
        assert!(
            !c.response.message().is_empty(),
            "{} has no message",
            c.name
        );
        golden += &golden_line(c, &job_text);
        golden.push('\n');
    }

    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("golden/errors.txt");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &golden).unwrap();
    }
    let expected = std::fs::read_to_string(&path)
        .expect("golden file (run with UPDATE_GOLDEN=1 to create it)");
    assert_eq!(
        golden, expected,
        "error messages changed; review and run with UPDATE_GOLDEN=1"
    );

    // Nothing was stored by any of it, and a good job still goes through.
    assert_eq!(dev.job(job).status, 404);
    assert_eq!(
        dev.submit(&session, job, "scan-to-folder", &[small]).status,
        201
    );
}

#[test]
fn device_registration_approval_revocation_and_login_limits() {
    let site = Site::new(&["gw-a", "gw-b"], "");
    site.activate("gw-a", "03", 1, 5);
    site.activate("gw-b", "04", 2, 5);
    let gw = site.start("gw-a");
    let reg = request(
        &gw.plain(),
        "POST",
        "/api/v1/devices/register",
        &[("Content-Type", "application/json")],
        br#"{"name":"mfd-lobby","serial":"X1"}"#,
    );
    assert_eq!(reg.status, 202, "{}", String::from_utf8_lossy(&reg.body));
    let reg = reg.json();
    assert_eq!(reg["status"], "pending");
    let dev = Device::new(&gw.plain(), reg["token"].as_str().unwrap());
    let r = dev.call(
        "POST",
        "/api/v1/sessions",
        &[("Content-Type", "application/json")],
        br#"{"user":"alice","password":"x"}"#,
    );
    r.assert_error(403, "device_pending");
    assert!(
        r.message().contains(reg["device_id"].as_str().unwrap()),
        "the message names the command and id: {}",
        r.message()
    );
    assert_eq!(
        dev.call("GET", "/api/v1/device", &[], b"").json()["status"],
        "pending"
    );

    // The same name again is refused; the secondary refuses registrations.
    request(
        &gw.plain(),
        "POST",
        "/api/v1/devices/register",
        &[("Content-Type", "application/json")],
        br#"{"name":"mfd-lobby"}"#,
    )
    .assert_error(409, "device_name_taken");
    request(
        &gw.plain(),
        "POST",
        "/api/v1/devices/register",
        &[("Content-Type", "application/json")],
        br#"{"name":"bad name"}"#,
    )
    .assert_error(400, "bad_request");
    let gw_b = site.start("gw-b");
    let r = request(
        &gw_b.plain(),
        "POST",
        "/api/v1/devices/register",
        &[("Content-Type", "application/json")],
        br#"{"name":"mfd-x"}"#,
    );
    r.assert_error(409, "read_only_secondary");
    assert!(
        r.message().contains("promote this server"),
        "{}",
        r.message()
    );

    site.cli_ok("gw-a", &["device", "approve", "mfd-lobby"]);
    let session = dev.login("alice");
    assert_eq!(
        dev.submit(&session, Uuid::new_v4(), "scan-to-folder", &[png(5_000, 1)])
            .status,
        201
    );

    // Ten wrong passwords in a minute, then even the right one waits.
    for _ in 0..10 {
        dev.call(
            "POST",
            "/api/v1/sessions",
            &[("Content-Type", "application/json")],
            br#"{"user":"alice","password":"wrong"}"#,
        )
        .assert_error(401, "bad_credentials");
    }
    let body = json!({"user": "alice", "password": e2e::PASSWORD}).to_string();
    let r = dev.call(
        "POST",
        "/api/v1/sessions",
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    );
    r.assert_error(429, "rate_limited");
    assert!(r.header("retry-after").is_some());

    // Logging out ends the session; revoking ends the device.
    let ended = dev.call(
        "DELETE",
        "/api/v1/sessions/current",
        &[("X-Scan-Session", &session)],
        b"",
    );
    assert_eq!(ended.status, 204);
    dev.submit(&session, Uuid::new_v4(), "scan-to-folder", &[png(5_000, 2)])
        .assert_error(401, "session_expired");
    site.cli_ok("gw-a", &["device", "revoke", "mfd-lobby"]);
    dev.call("GET", "/api/v1/workflows", &[], b"")
        .assert_error(403, "device_revoked");
}
