//! The pipeline end to end through a running gateway: scanned text pages go
//! through OCR, assembly and three deliveries (folder, a real SMTP server,
//! a webhook), and a gateway killed in the middle of OCR resumes the job
//! after restart and delivers it exactly once.

use std::time::Duration;

use e2e::http::Device;
use e2e::support::{
    SmtpSink, WebhookReceiver, cer, files_under, header, output_of, require_poppler, require_qpdf,
    require_tesseract,
};
use e2e::{Site, eventually};
use mfd_sim::pages::{ScanFormat, render_multipage_tiff, render_page};
use ring::hmac;
use uuid::Uuid;

const SECRET: &str = "webhook-shared-secret";

const TEXTS: [&str; 4] = [
    "Invoice 4711 from Northwind Traders.\nPlease pay the amount of 1280 euros within thirty days.\nThank you for your order.",
    "Delivery note for order 9921.\nTwelve boxes of printer paper and four toner cartridges\nwere delivered to the second floor.",
    "Minutes of the facilities meeting.\nThe scanners on every floor will be checked each Monday\nand the results filed with the office manager.",
    "Travel expense claim for March.\nTrain tickets, two hotel nights and one dinner\nwith the customer in Hamburg.",
];

struct Receivers {
    _runtime: tokio::runtime::Runtime,
    smtp: SmtpSink,
    hook: WebhookReceiver,
}

fn receivers() -> Receivers {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let hook = runtime.block_on(WebhookReceiver::start(Vec::new()));
    Receivers {
        _runtime: runtime,
        smtp: SmtpSink::start(),
        hook,
    }
}

fn site(r: &Receivers) -> Site {
    let workflow = format!(
        r#"
[workflows.full]
steps = [
  {{ plugin = "ocr", languages = ["eng"] }},
  {{ plugin = "assemble" }},
  {{ plugin = "folder", root = "{{data_dir}}/delivered", name = "{{date}}/{{user}}-{{job_id}}.pdf" }},
  {{ plugin = "mail", host = "127.0.0.1", port = {port}, tls = "none", from = "scanner@example.test", to = ["archive@example.test"] }},
  {{ plugin = "webhook", url = "{url}", secret = "{SECRET}" }},
]
"#,
        port = r.smtp.port,
        url = r.hook.url()
    );
    let site = Site::new(&["gw-a"], &workflow);
    site.activate("gw-a", "03", 1, 2);
    site
}

/// Page 1 PNG, pages 2 and 3 one multi-page TIFF, page 4 JPEG: what a
/// mixed fleet of scanners sends.
fn scanned_pages() -> Vec<Vec<u8>> {
    vec![
        render_page(TEXTS[0], ScanFormat::Png, 300).unwrap(),
        render_multipage_tiff(&[TEXTS[1], TEXTS[2]], 300).unwrap(),
        render_page(TEXTS[3], ScanFormat::Jpeg, 300).unwrap(),
    ]
}

/// Checks that the job was delivered exactly once to each destination.
fn assert_delivered_once(site: &Site, r: &Receivers, job: Uuid) {
    let pdfs: Vec<_> = files_under(&site.data_dir("gw-a").join("delivered"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "pdf"))
        .collect();
    assert_eq!(pdfs.len(), 1, "one document in the folder: {pdfs:?}");
    assert!(
        pdfs[0]
            .to_string_lossy()
            .contains(&format!("alice-{job}.pdf"))
    );

    output_of("qpdf", &["--check", pdfs[0].to_str().unwrap()]);
    let info = output_of("pdfinfo", &[pdfs[0].to_str().unwrap()]);
    assert!(
        info.lines()
            .any(|l| l.starts_with("Pages:") && l.ends_with(" 4")),
        "{info}"
    );
    let text = output_of("pdftotext", &["-raw", pdfs[0].to_str().unwrap(), "-"]);
    let rate = cer(&TEXTS.join("\n"), &text);
    assert!(
        rate < 0.02,
        "character error rate {rate:.4} is over 2%; text was:\n{text}"
    );

    let mails = r.smtp.messages();
    assert_eq!(mails.len(), 1, "one mail");
    let id = header(&mails[0], "Message-ID").unwrap();
    assert!(
        id.contains(&job.to_string()),
        "Message-ID derives from the job id: {id}"
    );

    let calls = r.hook.requests();
    assert_eq!(calls.len(), 1, "one webhook call");
    assert_eq!(
        calls[0].headers["idempotency-key"],
        job.to_string().as_str()
    );
    let key = hmac::Key::new(hmac::HMAC_SHA256, SECRET.as_bytes());
    let expected: String = hmac::sign(&key, &calls[0].body)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        calls[0].headers["x-scan-signature"],
        format!("sha256={expected}").as_str()
    );
}

#[test]
fn scanned_job_is_recognised_assembled_and_delivered_once_everywhere() {
    require_tesseract();
    require_qpdf();
    require_poppler();
    let r = receivers();
    let site = site(&r);
    let token = site.add_device("gw-a", "mfd-1");
    let gw = site.start("gw-a");
    let health = gw.health().1;
    let ocr = health["capabilities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "ocr")
        .unwrap();
    assert_eq!(ocr["available"], true, "{ocr}");

    let dev = Device::new(&gw.plain(), &token);
    let session = dev.login("alice");
    let job = Uuid::new_v4();
    assert_eq!(
        dev.submit(&session, job, "full", &scanned_pages()).status,
        201
    );
    let done = dev.wait_for_state(job, "done", Duration::from_secs(180));
    let plugins: Vec<&str> = done["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["plugin"].as_str().unwrap())
        .collect();
    assert_eq!(plugins, ["ocr", "assemble", "folder", "mail", "webhook"]);
    assert_delivered_once(&site, &r, job);
    // The spool copy and scratch files are gone once the job is done.
    assert!(
        !site
            .data_dir("gw-a")
            .join(format!("gw-a-spool/jobs/{job}"))
            .exists()
    );
}

#[test]
fn gateway_killed_during_ocr_resumes_the_job_and_delivers_it_exactly_once() {
    require_tesseract();
    require_qpdf();
    require_poppler();
    let r = receivers();
    let site = site(&r);
    let token = site.add_device("gw-a", "mfd-1");
    let mut gw = site.start("gw-a");
    let dev = Device::new(&gw.plain(), &token);
    let session = dev.login("alice");
    let job = Uuid::new_v4();
    assert_eq!(
        dev.submit(&session, job, "full", &scanned_pages()).status,
        201
    );

    // Wait until OCR has finished at least one page but not the step, then
    // kill the process as a power cut would.
    let ocr_dir = site.data_dir("gw-a").join(format!("gw-a-work/{job}/ocr"));
    let mid_ocr = eventually(Duration::from_secs(120), || {
        let pages = files_under(&ocr_dir)
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "pdf"))
            .count();
        (pages >= 1).then_some(pages)
    });
    assert!(mid_ocr.is_some(), "OCR never produced a page");
    let status = dev.job(job).json();
    assert_eq!(
        status["state"], "processing",
        "killed while processing: {status}"
    );
    gw.kill9();
    assert!(
        r.smtp.messages().is_empty() && r.hook.requests().is_empty(),
        "nothing was delivered before the kill"
    );

    let gw = site.start("gw-a");
    let dev = Device::new(&gw.plain(), &token);
    let done = dev.wait_for_state(job, "done", Duration::from_secs(180));
    let steps = done["steps"].as_array().unwrap();
    let ocr_attempts: Vec<_> = steps.iter().filter(|s| s["plugin"] == "ocr").collect();
    assert_eq!(
        ocr_attempts.len(),
        2,
        "the OCR step ran again after the crash: {done}"
    );
    // Regression: the attempt the kill cut short stayed `running` (no
    // outcome) forever; recovery closes it as interrupted.
    assert_eq!(
        ocr_attempts[0]["outcome"], "interrupted",
        "the first attempt is closed by recovery: {done}"
    );
    assert!(
        ocr_attempts[0]["finished_at"].is_string(),
        "with the time of recovery: {done}"
    );
    for plugin in ["assemble", "folder", "mail", "webhook"] {
        assert_eq!(
            steps.iter().filter(|s| s["plugin"] == plugin).count(),
            1,
            "{plugin} ran once: {done}"
        );
    }
    assert_delivered_once(&site, &r, job);
}

/// The state of process `pid` (`R`, `S`, `Z`...) and its parent, or `None`
/// when it is gone.
fn process_state(pid: u32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split(' ');
    let state = fields.next()?.chars().next()?;
    let parent = fields.next()?.parse().ok()?;
    Some((state, parent))
}

/// Regression: after `kill -9` of the gateway its tesseract child kept
/// running against the spool. A stand-in engine that never finishes shows
/// it: once the gateway is killed, its engine process must end too.
#[test]
fn no_engine_outlives_a_gateway_killed_during_ocr() {
    let site_dir = tempfile::tempdir().unwrap();
    let pid_file = site_dir.path().join("engine.pids");
    let engine = site_dir.path().join("tesseract");
    std::fs::write(
        &engine,
        format!(
            "#!/bin/sh\n\
             case \"$1\" in\n\
             --version) echo 'tesseract 5.3.0'; exit 0 ;;\n\
             --list-langs) echo 'List of available languages (1):'; echo eng; exit 0 ;;\n\
             esac\n\
             echo $$ >> '{}'\n\
             exec sleep 600\n",
            pid_file.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&engine, std::fs::Permissions::from_mode(0o755)).unwrap();

    // The lines before the first table header belong to `[instances.gw-a]`.
    let site = Site::new(
        &["gw-a"],
        &format!(
            "tesseract = \"{}\"\n\n[workflows.ocr-only]\nsteps = [{{ plugin = \"ocr\", languages = [\"eng\"] }}]\n",
            engine.display()
        ),
    );
    site.activate("gw-a", "03", 1, 2);
    let token = site.add_device("gw-a", "mfd-1");
    let mut gw = site.start("gw-a");
    let dev = Device::new(&gw.plain(), &token);
    let session = dev.login("alice");
    let page = render_page(TEXTS[0], ScanFormat::Png, 150).unwrap();
    assert_eq!(
        dev.submit(&session, Uuid::new_v4(), "ocr-only", &[page])
            .status,
        201
    );
    let gateway = gw.pid();
    let engines: Vec<u32> = eventually(Duration::from_secs(60), || {
        let pids: Vec<u32> = std::fs::read_to_string(&pid_file)
            .ok()?
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        (!pids.is_empty()).then_some(pids)
    })
    .expect("the gateway never started its engine");
    for pid in &engines {
        let (_, parent) = process_state(*pid).expect("the engine runs");
        assert_eq!(parent, gateway, "the engine is the gateway's own child");
    }

    gw.kill9();
    let survivors = eventually(Duration::from_secs(10), || {
        // A zombie has ended; only a reaper is missing (PID 1 in a container
        // may not reap).
        let alive: Vec<u32> = engines
            .iter()
            .copied()
            .filter(|pid| process_state(*pid).is_some_and(|(state, _)| state != 'Z'))
            .collect();
        alive.is_empty().then_some(())
    });
    let left: Vec<_> = engines
        .iter()
        .filter_map(|pid| process_state(*pid).map(|s| (*pid, s)))
        .filter(|(_, (state, _))| *state != 'Z')
        .collect();
    // Do not leave a stray engine behind, whatever the outcome.
    for (pid, _) in &left {
        let _ = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status();
    }
    assert!(
        survivors.is_some(),
        "engine processes of the killed gateway are still running: {left:?}"
    );
}
