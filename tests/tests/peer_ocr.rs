//! OCR offload between two real `gateway` processes (seed 002: the OCR
//! engine may be installed on one server only): a server without tesseract
//! gets its pages recognised by its peer and delivers a searchable PDF;
//! status says where OCR runs. (Without any engine a job fails with a
//! reason that says what to install where: `gateway::pair::ocr` tests.)

use std::time::Duration;

use e2e::http::Device;
use e2e::pair::{pair, pair_site, wait_in_sync};
use e2e::support::{cer, files_under, output_of, require_poppler, require_tesseract};
use mfd_sim::pages::{ScanFormat, render_page};
use serde_json::Value;
use uuid::Uuid;

const TEXT: &str =
    "Invoice 4711 from Northwind Traders.\nPlease pay the amount of 1280 euros within thirty days.";

const WORKFLOW: &str = r#"
[workflows.searchable]
steps = [
  { plugin = "ocr", languages = ["eng"] },
  { plugin = "assemble" },
  { plugin = "folder", root = "{data_dir}/delivered" },
]
"#;

fn status(site: &e2e::Site, instance: &str) -> Value {
    serde_json::from_str(&site.cli_ok(instance, &["status", "--json"])).unwrap()
}

#[test]
fn a_server_without_the_ocr_engine_has_its_pages_recognised_by_its_peer() {
    require_tesseract();
    require_poppler();
    let site = pair_site(None, WORKFLOW);
    // gw-a has no OCR engine; gw-b has one.
    let no_engine = [("SCANGW_TESSERACT", "/nonexistent/tesseract")];
    let a = site.start_with("gw-a", &no_engine);
    let b = site.start("gw-b");
    pair(&site, &a, &b);
    let token = site.add_device("gw-a", "mfd-1");
    wait_in_sync(&site, "gw-a", "gw-b", Duration::from_secs(10));
    assert_eq!(status(&site, "gw-a")["ocr_runs_on"], "the peer gw-b");
    assert_eq!(status(&site, "gw-b")["ocr_runs_on"], "this server");

    let dev = Device::new(&a.plain(), &token);
    let session = dev.login("alice");
    let job = Uuid::new_v4();
    let page = render_page(TEXT, ScanFormat::Png, 300).unwrap();
    let ack = dev.submit(&session, job, "searchable", &[page]);
    assert_eq!(ack.status, 201, "{}", String::from_utf8_lossy(&ack.body));
    let done = dev.wait_for_state(job, "done", Duration::from_secs(120));
    assert_eq!(done["state"], "done", "{done}");

    // Delivered by gw-a, with the text gw-b recognised.
    let pdfs: Vec<_> = files_under(&site.data_dir("gw-a").join("delivered"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "pdf"))
        .collect();
    assert_eq!(pdfs.len(), 1, "{pdfs:?}");
    let text = output_of("pdftotext", &["-raw", pdfs[0].to_str().unwrap(), "-"]);
    let rate = cer(TEXT, &text);
    assert!(
        rate < 0.05,
        "character error rate {rate:.3}; text was:\n{text}"
    );

    // The page went over the pair link: gw-b recognised it.
    assert!(
        b.log_text().contains("page recognised for the peer"),
        "{}",
        b.log_text()
    );
    assert!(!a.log_text().contains("OCR engine found"));
}
