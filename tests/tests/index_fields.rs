//! Index fields end to end: `GET /api/v1/workflows` lists a workflow's
//! fields; a manifest sent straight to the API whose metadata breaks a
//! field's rule is refused with `422 invalid_metadata` naming the field and
//! the rule, and a good one is accepted. On a pair, fields added on the
//! primary (by `config apply`; the secondary's own file does not have them)
//! reach the secondary, which lists the same fields and refuses the same
//! bad manifest; exported and applied back, they change nothing. A job
//! accepted before the rules changed keeps its acknowledgement.

use std::time::Duration;

use e2e::http::{Device, job_body, png};
use e2e::pair::{pair_site, pair_up, wait_in_sync};
use e2e::{Response, Site};
use serde_json::{Value, json};
use uuid::Uuid;

/// A workflow with three fields, one of each kind of check.
const INVOICES: &str = r#"
[workflows.invoices]
steps = [ { plugin = "assemble" }, { plugin = "folder", root = "{data_dir}/delivered" } ]

[[workflows.invoices.fields]]
name = "po_number"
label = "PO number"
type = "text"
required = true
pattern = "[0-9]{6}"

[[workflows.invoices.fields]]
name = "dept"
label = "Department"
type = "choice"
choices = ["Sales", "Legal"]

[[workflows.invoices.fields]]
name = "due"
label = "Due date"
type = "date"
"#;

/// What `GET /api/v1/workflows` answers for a site with `INVOICES` and the
/// harness's folder workflow.
fn expected_workflows() -> Value {
    json!({
        "workflows": ["invoices", "scan-to-folder"],
        "details": [
            {"name": "invoices", "fields": [
                {"name": "po_number", "label": "PO number", "type": "text", "required": true, "pattern": "[0-9]{6}", "choices": []},
                {"name": "dept", "label": "Department", "type": "choice", "required": false, "pattern": null, "choices": ["Sales", "Legal"]},
                {"name": "due", "label": "Due date", "type": "date", "required": false, "pattern": null, "choices": []},
            ]},
            {"name": "scan-to-folder", "fields": []},
        ],
    })
}

fn workflows(device: &Device) -> Value {
    let r = device.call("GET", "/api/v1/workflows", &[], b"");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()
}

/// Submits one page to `invoices` with `metadata`.
fn submit(device: &Device, session: &str, metadata: Value) -> Response {
    let manifest = json!({"workflow": "invoices", "page_count": 1, "metadata": metadata});
    device.submit_raw(
        session,
        Uuid::new_v4(),
        &job_body(&manifest, &[png(5_000, 3)]),
    )
}

/// Asserts a `422 invalid_metadata` naming `field` and `rule`.
fn assert_refused(r: &Response, field: &str, rule: &str) {
    r.assert_error(422, "invalid_metadata");
    let error = &r.json()["error"];
    assert_eq!(error["field"], field, "{error}");
    assert_eq!(error["rule"], rule, "{error}");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains(&format!("`{field}`")), "{message}");
}

/// The bad manifests, each breaking one rule, with the field and rule the
/// refusal must name.
fn bad_metadata() -> Vec<(Value, &'static str, &'static str)> {
    vec![
        (json!({"dept": "Sales"}), "po_number", "required"),
        (json!({"po_number": ""}), "po_number", "required"),
        (json!({"po_number": "1234567"}), "po_number", "pattern"),
        (
            json!({"po_number": "123456", "dept": "sales"}),
            "dept",
            "choice",
        ),
        (
            json!({"po_number": "123456", "due": "2027-02-29"}),
            "due",
            "date",
        ),
    ]
}

#[test]
fn a_workflow_lists_its_fields_and_the_intake_checks_metadata_against_them() {
    let site = Site::new(&["gw-a"], INVOICES);
    site.activate("gw-a", "03", 1, 5);
    let token = site.add_device("gw-a", "mfd-1");
    let gw = site.start("gw-a");
    let device = Device::new(&gw.plain(), &token);
    assert_eq!(workflows(&device), expected_workflows());

    let session = device.login("alice");
    for (metadata, field, rule) in bad_metadata() {
        let r = submit(&device, &session, metadata.clone());
        assert_refused(&r, field, rule);
    }
    let r = submit(&device, &session, json!({"po_number": "123456"}));
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));

    // Every field given, plus a key no field declares (free metadata is
    // still accepted); the job runs to the end.
    let job = Uuid::new_v4();
    let manifest = json!({"workflow": "invoices", "page_count": 1, "metadata": {
        "po_number": "000042", "dept": "Legal", "due": "2028-02-29", "matter": "A-17"
    }});
    let r = device.submit_raw(&session, job, &job_body(&manifest, &[png(5_000, 4)]));
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    device.wait_for_state(job, "done", Duration::from_secs(30));

    // A workflow without fields takes any metadata, as before.
    let manifest =
        json!({"workflow": "scan-to-folder", "page_count": 1, "metadata": {"po_number": "x"}});
    let r = device.submit_raw(
        &session,
        Uuid::new_v4(),
        &job_body(&manifest, &[png(5_000, 5)]),
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
}

#[test]
fn fields_added_on_the_primary_reach_the_secondary_which_checks_them_too() {
    let site = pair_site(None, "");
    let (a, b) = pair_up(&site);
    let token = site.add_device("gw-a", "mfd-1");
    wait_in_sync(&site, "gw-a", "gw-b", Duration::from_secs(10));

    // The fields come by `config apply` on the primary: neither server's
    // file has them.
    let file = site.dir.path().join("with-invoices.toml");
    let path = file.to_str().unwrap();
    site.cli_ok("gw-a", &["config", "export", "--out", path]);
    let exported = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, format!("{exported}\n{INVOICES}")).unwrap();
    site.cli_ok("gw-a", &["config", "apply", path]);
    wait_in_sync(&site, "gw-a", "gw-b", Duration::from_secs(10));

    let on_a = Device::new(&a.plain(), &token);
    let on_b = Device::new(&b.plain(), &token);
    assert_eq!(workflows(&on_a), expected_workflows());
    assert_eq!(workflows(&on_b), expected_workflows(), "{}", b.log_text());

    // The secondary refuses what the primary refuses, and takes what it
    // takes.
    let session = on_a.login("alice");
    for (metadata, field, rule) in bad_metadata() {
        for device in [&on_a, &on_b] {
            let r = submit(device, &session, metadata.clone());
            assert_refused(&r, field, rule);
        }
    }
    for device in [&on_a, &on_b] {
        let r = submit(
            device,
            &session,
            json!({"po_number": "123456", "dept": "Sales"}),
        );
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    }

    // The fields survive export and apply unchanged, and both servers
    // export the same workflows.
    site.cli_ok("gw-a", &["config", "export", "--out", path]);
    let again = site.cli_ok("gw-a", &["config", "apply", path]);
    assert!(again.contains("no changes"), "{again}");
    let workflows_of = |instance: &str| -> toml::Value {
        let text = site.cli_ok(instance, &["config", "export"]);
        let table: toml::Table = toml::from_str(&text).unwrap();
        table["workflows"].clone()
    };
    let from_a = workflows_of("gw-a");
    assert_eq!(from_a, workflows_of("gw-b"));
    let fields = from_a["invoices"]["fields"].as_array().unwrap();
    assert_eq!(fields.len(), 3);
    assert_eq!(fields[0]["pattern"].as_str(), Some("[0-9]{6}"));

    // A job accepted under the old rules keeps its acknowledgement when it
    // is sent again after the rules changed, on either server; a new job
    // with the same metadata is refused.
    let job = Uuid::new_v4();
    let manifest =
        json!({"workflow": "invoices", "page_count": 1, "metadata": {"po_number": "123456"}});
    let body = job_body(&manifest, &[png(5_000, 6)]);
    let r = on_a.submit_raw(&session, job, &body);
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let stricter = std::fs::read_to_string(&file)
        .unwrap()
        .replace("[0-9]{6}", "[0-9]{7}");
    assert!(stricter.contains("[0-9]{7}"));
    std::fs::write(&file, stricter).unwrap();
    site.cli_ok("gw-a", &["config", "apply", path]);
    wait_in_sync(&site, "gw-a", "gw-b", Duration::from_secs(10));
    for device in [&on_a, &on_b] {
        let again = device.submit_raw(&session, job, &body);
        assert_eq!(
            again.status,
            200,
            "{}",
            String::from_utf8_lossy(&again.body)
        );
        assert_eq!(again.json()["replayed"], true);
        assert_refused(
            &submit(device, &session, json!({"po_number": "123456"})),
            "po_number",
            "pattern",
        );
    }
}
