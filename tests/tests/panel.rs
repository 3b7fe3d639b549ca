//! The panel web client in a real headless browser, as a person at the
//! device uses it, against a pair of real gateways and a real device agent
//! (`mfd-sim agent`): log in, choose a workflow, have an empty required
//! index field refused in the page before anything is sent, scan, watch the
//! job to done; the primary killed with kill -9, the next scan done on the
//! secondary without logging in again and with the failover notice shown;
//! the primary back, the device staying on the secondary until the person
//! logs out (R3), and the next login on the primary. A second test runs the
//! page's index field validator over every case the gateway's rules are
//! tested with, so both sides apply the same rules.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

use e2e::browser::Browser;
use e2e::http::Device;
use e2e::pair::{pair, pair_site, wait_in_sync, wait_pair};
use e2e::support::files_under;
use e2e::{Instance, PASSWORD, bin, eventually, free_port};
use serde_json::{Value, json};
use uuid::Uuid;

/// A workflow with one required index field: a six-digit PO number.
const INVOICES: &str = r#"
[workflows.invoices]
steps = [ { plugin = "assemble" }, { plugin = "folder", root = "{data_dir}/delivered" } ]

[[workflows.invoices.fields]]
name = "po_number"
label = "PO number"
type = "text"
required = true
pattern = "[0-9]{6}"
"#;

const JOB_DONE_WITHIN: Duration = Duration::from_secs(60);

/// A running `mfd-sim agent` process, killed on drop.
struct AgentProcess {
    child: Child,
    url: String,
    log: PathBuf,
    outbox: PathBuf,
    _stdout: BufReader<ChildStdout>,
}

impl AgentProcess {
    /// Writes `config` to `dir/agent.toml` and starts the agent on it;
    /// waits for the panel's URL on its first line of output.
    fn start(dir: &Path, config: &str) -> AgentProcess {
        let path = dir.join("agent.toml");
        std::fs::write(&path, config).unwrap();
        let log = dir.join("agent.log");
        let file = std::fs::File::create(&log).unwrap();
        let mut child = Command::new(bin("mfd-sim"))
            .args(["agent", "--config"])
            .arg(&path)
            .env("MFD_SIM_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(file)
            .spawn()
            .expect("start mfd-sim agent");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let Some(url) = line.trim().strip_prefix("panel: ") else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the agent did not start (first line {line:?}):\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        };
        AgentProcess {
            url: url.to_owned(),
            child,
            log,
            outbox: dir.join("outbox"),
            _stdout: stdout,
        }
    }

    /// Jobs waiting in the agent's outbox.
    fn outbox_jobs(&self) -> usize {
        std::fs::read_dir(self.outbox.join("jobs"))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            eprintln!("---- last log lines of the agent ----");
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// The agent's configuration for the pair, primary first.
fn agent_config(dir: &Path, token: &str, a: &Instance, b: &Instance) -> String {
    std::fs::write(dir.join("token"), token).unwrap();
    format!(
        r#"listen = "127.0.0.1:0"
token_file = "token"
outbox_dir = "outbox"

[[gateways]]
url = "https://{a_addr}"
ca_file = "{a_cert}"

[[gateways]]
url = "https://{b_addr}"
ca_file = "{b_cert}"

[scan]
source = "generated"
pages = 1
dpi = 100

[failover]
connect_timeout_ms = 500
failback_probe_interval_ms = 200
failback_good_probes = 2
delivery_retry_interval_ms = 300
"#,
        a_addr = a.https(),
        a_cert = a.certificate().display(),
        b_addr = b.https(),
        b_cert = b.certificate().display(),
    )
}

fn delivered(gw: &Instance) -> usize {
    files_under(&gw.data_dir.join("delivered"))
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "pdf"))
        .count()
}

/// The job the page shows, as the gateway at `gw` knows it.
fn shown_job(browser: &Browser, gw: &Instance, token: &str) -> Value {
    let id = browser
        .attr("#job-view", "data-job")
        .expect("the job view names its job");
    let job = Uuid::parse_str(&id).expect("a job id");
    let r = Device::new(&gw.plain(), token).job(job);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()
}

fn log_in(browser: &mut Browser) {
    browser.wait_visible("#login-view", Duration::from_secs(10));
    browser.fill("#login-user", "alice");
    browser.fill("#login-password", PASSWORD);
    browser.click("#login-button");
    browser.wait_visible(
        "button.workflow[data-workflow='invoices']",
        Duration::from_secs(15),
    );
}

fn server_role(browser: &Browser) -> String {
    browser.attr("#server", "data-role").unwrap_or_default()
}

#[test]
fn a_person_scans_through_a_failover_and_back_without_logging_in_again() {
    let site = pair_site(None, INVOICES);
    // The primary comes back on the same address after its crash.
    let a_addr = format!("127.0.0.1:{}", free_port());
    let a_env = [("SCANGW_LISTEN", a_addr.as_str())];
    let mut a = site.start_with("gw-a", &a_env);
    let b = site.start("gw-b");
    pair(&site, &a, &b);
    wait_in_sync(&site, "gw-a", "gw-b", Duration::from_secs(10));
    let token = site.add_device("gw-a", "panel-1");
    wait_in_sync(&site, "gw-a", "gw-b", Duration::from_secs(10));

    let agent_dir = site.dir.path().join("agent");
    std::fs::create_dir_all(&agent_dir).unwrap();
    let agent = AgentProcess::start(&agent_dir, &agent_config(&agent_dir, &token, &a, &b));
    let mut browser = Browser::start("panel");
    browser.goto(&agent.url);
    browser.wait_visible("#login-view", Duration::from_secs(10));
    browser.shot("login");

    // Log in and choose the workflow: the panel is on the primary.
    log_in(&mut browser);
    assert_eq!(server_role(&browser), "primary");
    assert!(
        browser.text("#server").contains(&a_addr),
        "{}",
        browser.text("#server")
    );
    browser.shot("workflows");
    browser.click("button.workflow[data-workflow='invoices']");
    browser.wait_visible("#field-po_number", Duration::from_secs(5));
    browser.shot("index-fields");

    // Scan with the required field empty, then with a value of the wrong
    // form: refused in the page, nothing kept or sent.
    browser.click("#scan-button");
    browser.wait_visible("#error-po_number", Duration::from_secs(5));
    assert_eq!(
        browser.attr("#error-po_number", "data-rule").as_deref(),
        Some("required")
    );
    assert!(
        browser
            .text("#error-po_number")
            .contains("PO number is required")
    );
    browser.shot("empty-field-refused");
    browser.fill("#field-po_number", "12ab");
    browser.click("#scan-button");
    browser.wait_until(
        "the PO number refused for its form",
        "document.getElementById('error-po_number').dataset.rule === 'pattern'",
        Duration::from_secs(5),
    );
    browser.shot("bad-field-refused");
    assert!(browser.visible("#fields-view") && !browser.visible("#job-view"));
    assert_eq!(agent.outbox_jobs(), 0, "a refused scan must not be kept");

    // A good value: the job goes to the primary and is done there.
    browser.fill("#field-po_number", "123456");
    browser.click("#scan-button");
    browser.wait_visible("#job-view", Duration::from_secs(10));
    browser.wait_until(
        "the first job to be done",
        "document.getElementById('job-state').dataset.state === 'done'",
        JOB_DONE_WITHIN,
    );
    browser.shot("first-job-done");
    let first = shown_job(&browser, &a, &token);
    assert_eq!(first["accepted_by"], "gw-a", "{first}");
    assert_eq!(first["state"], "done", "{first}");
    assert_eq!(delivered(&a), 1);
    assert!(!browser.visible("#notice"), "no failover yet");

    // The primary crashes. The person scans again, still logged in: the job
    // is done on the secondary and the panel says it switched.
    a.kill9();
    wait_pair(&b, "dead", Duration::from_secs(10));
    browser.click("#again-button");
    browser.fill("#field-po_number", "654321");
    browser.click("#scan-button");
    browser.wait_visible("#job-view", Duration::from_secs(10));
    browser.wait_until(
        "the second job to be done on the secondary",
        "document.getElementById('job-state').dataset.state === 'done'",
        JOB_DONE_WITHIN,
    );
    browser.wait_visible("#notice", Duration::from_secs(5));
    browser.shot("done-on-secondary-with-notice");
    let second = shown_job(&browser, &b, &token);
    assert_eq!(second["accepted_by"], "gw-b", "{second}");
    assert_eq!(second["state"], "done", "{second}");
    // The failover notice is raised as the primary is passed over, a moment
    // before the secondary's answer makes it the current server; the bar
    // shows the change at its next refresh (once a second).
    browser.wait_until(
        "the bar to name the secondary",
        "document.getElementById('server').dataset.role === 'secondary'",
        Duration::from_secs(5),
    );
    let notice = browser.text("#notice-text");
    assert!(
        notice.contains("switched to the secondary server") && notice.contains("still logged in"),
        "{notice}"
    );
    assert_eq!(
        browser.attr("#notice", "data-kind").as_deref(),
        Some("failover")
    );
    assert!(
        !browser.visible("#login-view"),
        "no new login after a failover"
    );
    assert_eq!(browser.text("#user"), "alice");
    // (The secondary may also have delivered the first job again into its
    // own folder: it took the dead primary's unfinished work over, the
    // documented exception for per-server folders.)
    assert!(delivered(&b) >= 1);
    assert_eq!(agent.outbox_jobs(), 0);

    // The primary comes back. The session on the secondary is still going,
    // so the device stays there (R3) however many good probes it sees.
    let a = site.start_with("gw-a", &a_env);
    wait_pair(&a, "live", Duration::from_secs(15));
    eventually(Duration::from_secs(10), || {
        (a.health().1["accepting"] == true).then_some(())
    })
    .expect("the restarted primary accepts jobs");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        server_role(&browser),
        "secondary",
        "no failback during the person's session"
    );
    browser.shot("primary-back-session-still-on-secondary");

    // The person logs out: the device returns to the primary, and the next
    // login is there.
    browser.click("#logout-button");
    browser.wait_visible("#login-view", Duration::from_secs(10));
    browser.wait_until(
        "the device back on the primary",
        "document.getElementById('server').dataset.role === 'primary'",
        Duration::from_secs(15),
    );
    browser.wait_until(
        "the failback notice",
        "document.getElementById('notice').dataset.kind === 'failback'",
        Duration::from_secs(5),
    );
    browser.shot("logged-out-back-on-primary");
    log_in(&mut browser);
    assert_eq!(server_role(&browser), "primary");
    browser.shot("logged-in-on-primary");
    browser.click("#logout-button");
    browser.wait_visible("#login-view", Duration::from_secs(10));
    browser.shot("logged-out");
    browser.finish();
    drop(b);
}

/// Every case of `tests/fixtures/index_fields/cases.json` (the gateway's
/// own rule tests read the same file) through the page's validator: the
/// page refuses exactly what the gateway refuses, for the same rule.
#[test]
fn the_page_checks_index_fields_with_the_gateway_rules() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/index_fields/cases.json");
    let text = std::fs::read_to_string(&fixture)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", fixture.display()));
    let cases: Vec<Value> = serde_json::from_str(&text).expect("cases.json is a JSON list");
    assert!(cases.len() >= 20, "the fixture has the cases");

    // An agent whose gateway is never asked: the page and its validator
    // are served by the agent alone.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), "unused-token").unwrap();
    let config = format!(
        "listen = \"127.0.0.1:0\"\ntoken_file = \"token\"\noutbox_dir = \"outbox\"\n\
         [[gateways]]\nurl = \"http://127.0.0.1:{}\"\n",
        free_port()
    );
    let agent = AgentProcess::start(dir.path(), &config);
    let mut browser = Browser::start("index-field-rules");
    browser.goto(&agent.url);
    browser.wait_visible("#login-view", Duration::from_secs(10));
    let verdicts = browser.eval(
        "return arguments[0].map(function (c) { \
           return IndexFields.check(c.field, c.value === null ? undefined : c.value); });",
        vec![Value::Array(cases.clone())],
    );
    let verdicts = verdicts.as_array().expect("one verdict per case");
    assert_eq!(verdicts.len(), cases.len());
    let mut disagreements = Vec::new();
    for (case, verdict) in cases.iter().zip(verdicts) {
        let expected = json!({ "ok": case["ok"], "rule": case["rule"] });
        if *verdict != expected {
            disagreements.push(format!(
                "field {} value {}: gateway {expected}, page {verdict}",
                case["field"], case["value"]
            ));
        }
    }
    assert!(
        disagreements.is_empty(),
        "the page and the gateway disagree:\n{}",
        disagreements.join("\n")
    );
    browser.shot("validator-checked");

    // The harness reads the page's console: an error logged on purpose is
    // seen (every other test fails on such an entry).
    browser.eval(
        "console.error('console check of the test harness');",
        Vec::new(),
    );
    let errors = eventually(Duration::from_secs(5), || {
        let e = browser.console_errors();
        (!e.is_empty()).then_some(e)
    })
    .expect("the console error logged on purpose is seen");
    assert!(
        errors[0].contains("console check of the test harness"),
        "{errors:?}"
    );
    browser.finish();
}
