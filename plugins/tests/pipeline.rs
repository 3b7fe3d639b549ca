//! End-to-end runs of the pipeline through `JobRunner`: rendered pages with
//! known text through the real OCR engine, PDF assembly, and delivery to a
//! folder, a real SMTP server and an HTTP receiver; then the same job again,
//! as after a crash, to prove nothing is delivered twice.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use plugins::runner::{MemoryStore, StoreEvent};
use plugins::{
    JobOutcome, JobProgress, JobRunner, Registry, RegistrySettings, RetryPolicy, StepRecord,
    WorkflowSpec,
};

const SECRET: &str = "webhook-signing-secret";

fn policy() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 3,
        base_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(100),
        step_timeout: Duration::from_secs(120),
    }
}

fn spec(toml_text: &str) -> WorkflowSpec {
    toml::from_str(toml_text).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scanned_pages_are_recognised_assembled_and_delivered_exactly_once() {
    require_tesseract();
    require_qpdf();
    require_poppler();
    let smtp = SmtpSink::start();
    let hook = WebhookReceiver::start(Vec::new()).await;
    let scratch = tempfile::tempdir().unwrap();
    let root = scratch.path().join("share");
    std::fs::create_dir(&root).unwrap();
    let work = scratch.path().join("work");
    let pages = rendered_upload(&scratch.path().join("spool"), &PAGE_TEXTS);
    let job = job(&work, pages);

    let registry = Registry::detect(RegistrySettings::default()).await;
    let workflow = registry
        .build_workflow(
            "scan-to-everywhere",
            &spec(&format!(
                r#"
                [[steps]]
                plugin = "ocr"
                languages = ["eng"]
                [[steps]]
                plugin = "assemble"
                [[steps]]
                plugin = "folder"
                root = "{root}"
                name = "{{date}}/{{user}}-{{meta.cost_centre}}-{{job_id}}.pdf"
                [[steps]]
                plugin = "mail"
                host = "127.0.0.1"
                port = {port}
                tls = "none"
                from = "Scanner <scanner@example.org>"
                to = ["archive@example.org"]
                subject = "Scan by {{user}} from {{device}}"
                [[steps]]
                plugin = "webhook"
                url = "{url}"
                secret = "{SECRET}"
                "#,
                root = root.display(),
                port = smtp.port,
                url = hook.url(),
            )),
        )
        .unwrap();
    assert_eq!(
        workflow.steps(),
        vec!["ocr", "assemble", "folder", "mail", "webhook"]
    );

    let runner = JobRunner::new(policy());
    let store = Arc::new(MemoryStore::new());
    let outcome = runner.run(&workflow, &job, store.clone()).await;
    assert_eq!(outcome, JobOutcome::Done);
    let finished: Vec<_> = store
        .events(job.job_id)
        .into_iter()
        .filter_map(|e| match e {
            StoreEvent::Finished {
                step,
                attempt,
                outcome,
            } => Some((step, attempt, outcome)),
            StoreEvent::Started { .. } => None,
        })
        .collect();
    assert_eq!(
        finished,
        (0..5).map(|s| (s, 1, StepRecord::Done)).collect::<Vec<_>>()
    );

    // The document is a valid PDF whose text layer reads back as the pages.
    let document = job.document_path();
    output_of("qpdf", &["--check", document.to_str().unwrap()]);
    let info = output_of("pdfinfo", &[document.to_str().unwrap()]);
    assert!(
        info.lines()
            .any(|l| l.starts_with("Pages:") && l.ends_with(" 4")),
        "{info}"
    );
    // `-raw` keeps the text layer's reading order (the engine's), which is
    // the order the lines were printed in.
    let text = output_of("pdftotext", &["-raw", document.to_str().unwrap(), "-"]);
    let expected = PAGE_TEXTS.join("\n");
    let rate = cer(&expected, &text);
    assert!(
        rate < 0.02,
        "character error rate {rate:.4} is too high; text was:\n{text}"
    );
    let ocr_text = std::fs::read_to_string(job.ocr_text_path()).unwrap();
    assert!(cer(&expected, &ocr_text) < 0.02, "{ocr_text}");

    // Exactly one file in the folder, named from the template in Berlin time.
    let delivered = files_under(&root);
    let expected_name = root.join(format!("2024-05-17/alice-4100-{}.pdf", job.job_id));
    assert_eq!(delivered, vec![expected_name.clone()]);
    assert_eq!(
        std::fs::read(&expected_name).unwrap(),
        std::fs::read(&document).unwrap()
    );

    // Exactly one mail, with the job's Message-ID and the document attached.
    let mails = smtp.messages();
    assert_eq!(mails.len(), 1);
    let message_id = header(&mails[0], "Message-ID").unwrap();
    assert_eq!(message_id, format!("<{}.step3@example.org>", job.job_id));
    assert_eq!(
        header(&mails[0], "Subject").unwrap(),
        "Scan by alice from mfd-3f"
    );
    assert!(mails[0].contains("application/pdf"), "no PDF attachment");

    // Exactly one webhook request, signed, keyed by the job id, carrying
    // the document.
    let requests = hook.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(
        request.headers["idempotency-key"],
        job.job_id.to_string().as_str()
    );
    assert_eq!(
        request.headers["x-scan-signature"],
        plugins::deliver::sign(SECRET.as_bytes(), &request.body).as_str()
    );
    let pdf = std::fs::read(&document).unwrap();
    assert!(
        request.body.windows(pdf.len()).any(|w| w == pdf.as_slice()),
        "the body lacks the document"
    );
    assert!(String::from_utf8_lossy(&request.body).contains("\"cost_centre\":\"4100\""));

    // The server crashed after the deliveries but before the runner stored
    // them as done: the deliveries run again and find their records.
    let store = Arc::new(MemoryStore::new());
    store.set_progress(
        job.job_id,
        JobProgress {
            completed_steps: 2,
            attempts_on_next: 1,
        },
    );
    assert_eq!(
        runner.run(&workflow, &job, store.clone()).await,
        JobOutcome::Done
    );
    assert_eq!(files_under(&root), vec![expected_name.clone()]);
    assert_eq!(smtp.messages().len(), 1, "the mail was sent again");
    assert_eq!(hook.requests().len(), 1, "the webhook was posted again");

    // The worst case the mail module documents: the crash came after the
    // servers accepted but before the records were written. The mail goes
    // out again with the identical Message-ID and the webhook with the same
    // Idempotency-Key and body, so receivers can drop the duplicates; the
    // folder still holds one file.
    std::fs::remove_dir_all(work.join("sent")).unwrap();
    let store = Arc::new(MemoryStore::new());
    store.set_progress(
        job.job_id,
        JobProgress {
            completed_steps: 2,
            attempts_on_next: 1,
        },
    );
    assert_eq!(runner.run(&workflow, &job, store).await, JobOutcome::Done);
    assert_eq!(files_under(&root), vec![expected_name]);
    let mails = smtp.messages();
    assert_eq!(mails.len(), 2);
    assert_eq!(header(&mails[1], "Message-ID").unwrap(), message_id);
    let requests = hook.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(
        requests[1].headers["idempotency-key"],
        requests[0].headers["idempotency-key"]
    );
    assert_eq!(requests[1].body, requests[0].body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_are_assembled_without_ocr_from_every_upload_format() {
    require_qpdf();
    require_poppler();
    let scratch = tempfile::tempdir().unwrap();
    let mut pages = rendered_upload(&scratch.path().join("spool"), &PAGE_TEXTS);
    // An uploaded PDF with a real text object, whose page must be merged as
    // it is.
    let pdf_path = scratch.path().join("spool/upload-4");
    std::fs::write(&pdf_path, text_pdf("Hello from an uploaded PDF")).unwrap();
    pages.push(plugins::PageFile {
        path: pdf_path,
        format: plugins::PageFormat::Pdf,
    });
    let job = job(&scratch.path().join("work"), pages);

    let registry = Registry::detect(RegistrySettings::default()).await;
    let workflow = registry
        .build_workflow("scan-to-pdf", &spec("[[steps]]\nplugin = \"assemble\""))
        .unwrap();
    let outcome = JobRunner::new(policy())
        .run(&workflow, &job, Arc::new(MemoryStore::new()))
        .await;
    assert_eq!(outcome, JobOutcome::Done);

    let document = job.document_path();
    output_of("qpdf", &["--check", document.to_str().unwrap()]);
    let info = output_of(
        "pdfinfo",
        &["-f", "1", "-l", "5", document.to_str().unwrap()],
    );
    assert!(
        info.lines()
            .any(|l| l.starts_with("Pages:") && l.ends_with(" 5")),
        "{info}"
    );
    // The rendered pages carry 300 dpi, so they come out as A4.
    let a4 = info
        .lines()
        .filter(|l| l.contains("size:") && l.contains("595.") && l.contains("841."))
        .count();
    assert_eq!(a4, 4, "{info}");
    let text = output_of("pdftotext", &[document.to_str().unwrap(), "-"]);
    assert!(text.contains("Hello from an uploaded PDF"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decompression_bomb_is_refused_with_a_clear_reason() {
    let scratch = tempfile::tempdir().unwrap();
    let path = scratch.path().join("bomb");
    // A PNG header announcing 100000 x 100000 pixels; the body never gets
    // decoded.
    let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
    png.extend_from_slice(&100_000u32.to_be_bytes());
    png.extend_from_slice(&100_000u32.to_be_bytes());
    png.extend_from_slice(&[8, 0, 0, 0, 0, 0, 0, 0, 0]);
    std::fs::write(&path, &png).unwrap();
    let format = plugins::PageFormat::sniff(&png).unwrap();
    let job = job(
        &scratch.path().join("work"),
        vec![plugins::PageFile { path, format }],
    );
    let registry = Registry::detect(RegistrySettings::default()).await;
    let workflow = registry
        .build_workflow(
            "w",
            &spec("[[steps]]\nplugin = \"assemble\"\nmax_page_pixels = 50000000"),
        )
        .unwrap();
    let outcome = JobRunner::new(policy())
        .run(&workflow, &job, Arc::new(MemoryStore::new()))
        .await;
    let JobOutcome::DeadLetter {
        step: 0,
        plugin,
        reason,
    } = outcome
    else {
        panic!("expected a dead letter, got {outcome:?}")
    };
    assert_eq!(plugin, "assemble");
    assert_eq!(
        reason,
        "page 1 (bomb) is 100000x100000 pixels, more than the limit of 50000000 pixels per page; \
         refusing to decode it (raise `max_page_pixels` if such pages are genuine)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uploaded_pdf_is_rasterised_and_recognised() {
    require_tesseract();
    require_poppler();
    let scratch = tempfile::tempdir().unwrap();
    let path = scratch.path().join("upload.pdf");
    std::fs::write(&path, text_pdf("Invoice number 5521 is due in March")).unwrap();
    let job = job(
        &scratch.path().join("work"),
        vec![plugins::PageFile {
            path,
            format: plugins::PageFormat::Pdf,
        }],
    );
    let registry = Registry::detect(RegistrySettings::default()).await;
    let workflow = registry
        .build_workflow(
            "w",
            &spec("[[steps]]\nplugin = \"ocr\"\ndpi = 200\n[[steps]]\nplugin = \"assemble\""),
        )
        .unwrap();
    let outcome = JobRunner::new(policy())
        .run(&workflow, &job, Arc::new(MemoryStore::new()))
        .await;
    assert_eq!(outcome, JobOutcome::Done);
    let text = std::fs::read_to_string(job.ocr_page_text(0)).unwrap();
    assert!(
        cer("Invoice number 5521 is due in March", &text) < 0.02,
        "{text}"
    );
    assert!(job.document_path().exists());
}

/// A one-page A4 PDF showing `text` in 24 pt Helvetica.
fn text_pdf(text: &str) -> Vec<u8> {
    use lopdf::{Document, Object, Stream, dictionary};
    let mut doc = Document::with_version("1.5");
    let pages_id = doc.new_object_id();
    let font = doc.add_object(dictionary! {
        "Type" => "Font", "Subtype" => "Type1", "BaseFont" => "Helvetica",
    });
    let content = format!("BT /F1 24 Tf 72 700 Td ({text}) Tj ET");
    let content = doc.add_object(Stream::new(dictionary! {}, content.into_bytes()));
    let page = doc.add_object(dictionary! {
        "Type" => "Page",
        "Parent" => pages_id,
        "Contents" => content,
        "Resources" => dictionary! { "Font" => dictionary! { "F1" => font } },
    });
    doc.objects.insert(
        pages_id,
        Object::Dictionary(dictionary! {
            "Type" => "Pages",
            "Kids" => vec![page.into()],
            "Count" => 1,
            "MediaBox" => vec![0.into(), 0.into(), 595.into(), 842.into()],
        }),
    );
    let catalog = doc.add_object(dictionary! { "Type" => "Catalog", "Pages" => pages_id });
    doc.trailer.set("Root", catalog);
    let mut bytes = Vec::new();
    doc.save_to(&mut bytes).unwrap();
    bytes
}

// Regression: the reasons of unreadable PNG, TIFF and PDF pages held the
// page file's absolute path on the server, and devices are shown them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reasons_for_unreadable_pages_name_the_page_and_never_a_server_path() {
    let scratch = tempfile::tempdir().unwrap();
    let spool = scratch.path().join("srv-secret-spool/jobs/0001");
    std::fs::create_dir_all(&spool).unwrap();
    let cases: [(&str, Vec<u8>); 3] = [
        (
            "page-0001.png",
            b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDRtruncated".to_vec(),
        ),
        (
            "page-0001.tiff",
            b"II*\0\xff\xff\xff\x7fnot a tiff".to_vec(),
        ),
        ("page-0001.pdf", b"%PDF-1.7\nnot really a pdf".to_vec()),
    ];
    let registry = Registry::detect(RegistrySettings::default()).await;
    let workflow = registry
        .build_workflow("w", &spec("[[steps]]\nplugin = \"assemble\""))
        .unwrap();
    for (name, bytes) in cases {
        let path = spool.join(name);
        std::fs::write(&path, &bytes).unwrap();
        let format = plugins::PageFormat::sniff(&bytes).unwrap();
        let job = job(
            &scratch.path().join(format!("work-{name}")),
            vec![plugins::PageFile { path, format }],
        );
        let outcome = JobRunner::new(policy())
            .run(&workflow, &job, Arc::new(MemoryStore::new()))
            .await;
        let JobOutcome::DeadLetter { reason, .. } = outcome else {
            panic!("{name}: expected a dead letter, got {outcome:?}")
        };
        assert!(reason.contains(name), "{name}: names the page: {reason}");
        assert!(
            !reason.contains("srv-secret-spool")
                && !reason.contains(&*scratch.path().to_string_lossy()),
            "{name}: a server path in the reason: {reason}"
        );
    }
}

/// One job accepted by both servers of a pair at different moments (cut off
/// from each other) is assembled by both: the two documents must be the
/// same bytes, so the shared folder refuses the second as this job's own
/// copy instead of failing it as another document.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_job_assembled_at_two_moments_is_the_same_document() {
    require_poppler();
    let scratch = tempfile::tempdir().unwrap();
    let pages = rendered_upload(&scratch.path().join("spool"), &PAGE_TEXTS);
    let first = job(&scratch.path().join("work-a"), pages.clone());
    let mut second = job(&scratch.path().join("work-b"), pages);
    second.job_id = first.job_id;
    second.submitted_at = first.submitted_at + chrono::Duration::seconds(7);
    let registry = Registry::detect(RegistrySettings::default()).await;
    let workflow = registry
        .build_workflow("scan-to-pdf", &spec("[[steps]]\nplugin = \"assemble\""))
        .unwrap();
    for j in [&first, &second] {
        let outcome = JobRunner::new(policy())
            .run(&workflow, j, Arc::new(MemoryStore::new()))
            .await;
        assert_eq!(outcome, JobOutcome::Done);
    }
    let a = std::fs::read(first.document_path()).unwrap();
    let b = std::fs::read(second.document_path()).unwrap();
    assert!(a == b, "{} and {} bytes differ", a.len(), b.len());
}
