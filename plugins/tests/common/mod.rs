//! Helpers of the pipeline's integration tests: jobs made of rendered pages
//! and fake OCR engines. The generic pieces (tool checks, SMTP sink, webhook
//! receiver, error rate) are shared with the end-to-end tests in
//! `e2e::support` and re-exported here.
#![allow(dead_code)]

pub use e2e::support::*;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::TimeZone;
use mfd_sim::pages::{PageRenderer, ScanFormat};
use plugins::{JobContext, PageFile, PageFormat};

/// Known text, one entry per page, long enough to make a real page.
pub const PAGE_TEXTS: [&str; 4] = [
    "Quarterly report for the northern region.\n\
     Sales grew by twelve percent compared with the same quarter last year, \
     driven mostly by the new service contracts signed in April and May.\n\
     Reference number 4471-B, prepared by the finance office.",
    "Minutes of the safety committee meeting held on Tuesday.\n\
     Present were seven members and two guests from the maintenance team. \
     The committee reviewed the fire drill results and agreed to replace \
     the signs on the second floor before the end of the month.",
    "Delivery note for order 88213.\n\
     Two boxes of printer paper, one toner cartridge for the copier on the \
     ground floor, and a set of labels. Please check the items on arrival \
     and sign the attached form.",
    "Letter to all tenants of the building.\n\
     The heating will be serviced next Friday between eight and noon. \
     During that time the water may be cold. We apologise for the \
     inconvenience and thank you for your patience.",
];

/// A job with no pages yet, in `work_dir`.
pub fn job(work_dir: &Path, pages: Vec<PageFile>) -> JobContext {
    JobContext {
        job_id: uuid::Uuid::new_v4(),
        workflow: "scan-test".into(),
        user: "alice".into(),
        device: "mfd-3f".into(),
        submitted_at: chrono::Utc.with_ymd_and_hms(2024, 5, 17, 9, 41, 7).unwrap(),
        time_zone: chrono_tz::Europe::Berlin,
        metadata: BTreeMap::from([("cost_centre".to_string(), "4100".to_string())]),
        pages,
        work_dir: work_dir.to_path_buf(),
        reports: Default::default(),
    }
}

/// Writes rendered pages as an upload would arrive: page 1 as PNG, pages 2
/// and 3 as one multi-page TIFF, page 4 as JPEG (at 300 dpi).
pub fn rendered_upload(dir: &Path, texts: &[&str; 4]) -> Vec<PageFile> {
    let renderer = PageRenderer::new().expect("install the Debian package fonts-dejavu-core");
    std::fs::create_dir_all(dir).unwrap();
    let png = dir.join("upload-1");
    std::fs::write(
        &png,
        renderer.render(texts[0], ScanFormat::Png, 300).unwrap(),
    )
    .unwrap();
    let tiff = dir.join("upload-2");
    std::fs::write(
        &tiff,
        renderer
            .render_multipage_tiff(&[texts[1], texts[2]], 300)
            .unwrap(),
    )
    .unwrap();
    let jpeg = dir.join("upload-3");
    std::fs::write(
        &jpeg,
        renderer.render(texts[3], ScanFormat::Jpeg, 300).unwrap(),
    )
    .unwrap();
    [png, tiff, jpeg]
        .into_iter()
        .map(|path| {
            // The format comes from the content, as at intake.
            let head = std::fs::read(&path).unwrap();
            let format = PageFormat::sniff(&head).unwrap();
            PageFile { path, format }
        })
        .collect()
}

/// One small rendered PNG page, for tests about delivery rather than OCR.
pub fn small_upload(dir: &Path) -> Vec<PageFile> {
    let renderer = PageRenderer::new().expect("install the Debian package fonts-dejavu-core");
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("page.png");
    std::fs::write(
        &path,
        renderer
            .render("A short page.", ScanFormat::Png, 100)
            .unwrap(),
    )
    .unwrap();
    vec![PageFile {
        path,
        format: PageFormat::Png,
    }]
}

/// Writes an executable shell script.
pub fn script(path: &Path, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, format!("#!/bin/sh\n{body}")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.to_path_buf()
}

/// A fake engine that answers the start-up probes like tesseract 5, records
/// its process id in `pids`, and then hangs.
pub fn hung_engine(dir: &Path, pids: &Path) -> PathBuf {
    script(
        &dir.join("hung-tesseract"),
        &format!(
            "case \"$1\" in\n\
             --version) echo 'tesseract 5.3.0'; exit 0;;\n\
             --list-langs) echo 'List of available languages in \"/x\" (1):'; echo eng; exit 0;;\n\
             esac\n\
             echo $$ >> '{}'\n\
             exec sleep 600\n",
            pids.display()
        ),
    )
}

/// A wrapper around the real engine that counts the pages it recognises.
pub fn counting_engine(dir: &Path, counter: &Path) -> PathBuf {
    script(
        &dir.join("counting-tesseract"),
        &format!(
            "case \"$1\" in --version|--list-langs) exec tesseract \"$@\";; esac\n\
             echo \"$1\" >> '{}'\n\
             exec tesseract \"$@\"\n",
            counter.display()
        ),
    )
}

/// Lines in a file (0 when it does not exist).
pub fn line_count(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

/// Whether process `pid` is gone: no longer listed, or a zombie awaiting
/// its parent's reaping (it runs no code and holds no resources).
pub fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// Waits up to `limit` for `pid` to be gone.
pub async fn wait_gone(pid: u32, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if process_gone(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    process_gone(pid)
}

/// Reads the pids a fake engine recorded, waiting up to `limit` for `count`.
pub async fn wait_pids(path: &Path, count: usize, limit: Duration) -> Vec<u32> {
    let start = Instant::now();
    loop {
        let pids: Vec<u32> = std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        if pids.len() >= count || start.elapsed() > limit {
            return pids;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A self-signed certificate for 127.0.0.1 and localhost (its own CA),
/// written to `dir` as PEM files: (certificate, key).
pub fn self_signed_pem(dir: &Path) -> (PathBuf, PathBuf) {
    let issued =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap();
    let cert = dir.join("server.pem");
    let key = dir.join("server.key");
    std::fs::write(&cert, issued.cert.pem()).unwrap();
    std::fs::write(&key, issued.signing_key.serialize_pem()).unwrap();
    (cert, key)
}
