//! Admin notices through `plugins::notify`: to a real SMTP server (plain,
//! and STARTTLS with login and a private CA) and to an HTTP receiver; one
//! channel failing while the other delivers; the time bound; and the
//! settings errors and `Debug` output an admin sees.

mod common;

use std::time::{Duration, Instant};

use common::*;
use plugins::settings::SettingsError;
use plugins::{ChannelOutcome, Notice, Notifier, NotifyError, NotifyReport, NotifySettings};
use serde_json::{Map, Value, json};

const SECRET: &str = "notify-signing-secret";

/// The `[notify]` table of a TOML text, parsed as the gateway hands it over.
fn parse(toml_text: &str) -> Result<NotifySettings, NotifyError> {
    let table: Map<String, Value> = toml::from_str(toml_text).unwrap();
    NotifySettings::parse(&table)
}

fn notifier(toml_text: &str) -> Notifier {
    Notifier::new(parse(toml_text).unwrap()).unwrap()
}

fn mail_table(port: u16) -> String {
    format!(
        "[mail]\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"none\"\n\
         from = \"Scan gateway <gateway@example.org>\"\nto = [\"admin@example.org\", \"oncall@example.org\"]\n"
    )
}

fn webhook_table(url: &str) -> String {
    format!("[webhook]\nurl = \"{url}\"\nsecret = \"{SECRET}\"\n")
}

fn peer_dead() -> Notice {
    Notice {
        id: "pair-dead-7-1".into(),
        subject: "gw-a unreachable".into(),
        text: "primary gw-a unreachable since 10:42:07; gw-b is serving alone".into(),
        event: "peer_dead".into(),
        fields: json!({ "peer": "gw-a", "since": "2024-05-17T10:42:07Z" })
            .as_object()
            .unwrap()
            .clone(),
    }
}

/// A port on which nothing listens.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notice_arrives_by_mail_as_plain_text_with_its_message_id() {
    let smtp = SmtpSink::start();
    let notifier = notifier(&mail_table(smtp.port));
    let notice = peer_dead();

    let report = notifier.send(&notice).await;
    assert_eq!(
        report,
        NotifyReport {
            mail: Some(ChannelOutcome::Delivered),
            webhook: None
        }
    );
    let mails = smtp.messages();
    assert_eq!(mails.len(), 1);
    let mail = &mails[0];
    assert_eq!(header(mail, "Subject").unwrap(), "gw-a unreachable");
    assert_eq!(
        header(mail, "Message-ID").unwrap(),
        "<pair-dead-7-1@example.org>"
    );
    assert!(
        header(mail, "Content-Type")
            .unwrap()
            .starts_with("text/plain"),
        "{mail}"
    );
    assert!(header(mail, "To").unwrap().contains("oncall@example.org"));
    let (_, body) = mail.split_once("\r\n\r\n").unwrap();
    assert_eq!(body.trim_end(), notice.text);

    // Sent again (the caller retrying after a failure it could not tell
    // apart from a loss), the notice keeps its Message-ID.
    assert!(notifier.send(&notice).await.all_delivered());
    let mails = smtp.messages();
    assert_eq!(mails.len(), 2);
    assert_eq!(
        header(&mails[1], "Message-ID"),
        header(&mails[0], "Message-ID")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notice_arrives_by_webhook_signed_and_keyed_by_its_id() {
    let hook = WebhookReceiver::start(Vec::new()).await;
    let notifier = notifier(&webhook_table(&hook.url()));
    let notice = peer_dead();

    let report = notifier.send(&notice).await;
    assert_eq!(
        report,
        NotifyReport {
            mail: None,
            webhook: Some(ChannelOutcome::Delivered)
        }
    );
    let requests = hook.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.headers["idempotency-key"], "pair-dead-7-1");
    assert_eq!(request.headers["content-type"], "application/json");
    // The signature the `webhook` step uses, so one receiver checks both.
    assert_eq!(
        request.headers["x-scan-signature"],
        plugins::deliver::sign(SECRET.as_bytes(), &request.body).as_str()
    );
    let body: Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(
        body,
        json!({
            "event": "peer_dead",
            "subject": "gw-a unreachable",
            "text": "primary gw-a unreachable since 10:42:07; gw-b is serving alone",
            "fields": { "peer": "gw-a", "since": "2024-05-17T10:42:07Z" },
            "id": "pair-dead-7-1",
        })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_mail_server_does_not_stop_the_webhook() {
    let hook = WebhookReceiver::start(Vec::new()).await;
    let port = closed_port();
    let notifier = notifier(&format!(
        "[mail]\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"starttls\"\n\
         username = \"gateway\"\npassword = \"smtp-password-1\"\n\
         from = \"gateway@example.org\"\nto = [\"admin@example.org\"]\n{}",
        webhook_table(&hook.url())
    ));

    let report = notifier.send(&peer_dead()).await;
    assert_eq!(report.webhook, Some(ChannelOutcome::Delivered));
    let Some(ChannelOutcome::Failed { reason, transient }) = &report.mail else {
        panic!("{report:?}")
    };
    assert!(
        reason.starts_with(&format!("mail to smtp://127.0.0.1:{port} failed: ")),
        "{reason}"
    );
    assert!(*transient, "a server that is down may come back: {reason}");
    let line = report.to_string();
    assert!(!line.contains('\n'), "{line}");
    assert!(
        !line.contains("smtp-password-1") && !line.contains(SECRET),
        "{line}"
    );
    assert!(report.any_delivered() && !report.all_delivered());
    assert_eq!(hook.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mail_server_that_never_answers_is_given_up_after_the_timeout() {
    // The kernel completes the TCP handshake for a listener that never
    // accepts, so the client connects and then waits for a greeting that
    // never comes: only the time bound ends the attempt.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let hook = WebhookReceiver::start(Vec::new()).await;
    let notifier = notifier(&format!(
        "[mail]\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"none\"\ntimeout_secs = 1\n\
         from = \"gateway@example.org\"\nto = [\"admin@example.org\"]\n{}",
        webhook_table(&hook.url())
    ));

    let start = Instant::now();
    let report = notifier.send(&peer_dead()).await;
    let took = start.elapsed();
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert_eq!(report.webhook, Some(ChannelOutcome::Delivered));
    let Some(ChannelOutcome::Failed { reason, transient }) = &report.mail else {
        panic!("{report:?}")
    };
    assert!(reason.contains("timed out"), "{reason}");
    assert!(*transient);
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_answers_are_reported_as_retry_or_give_up() {
    let hook = WebhookReceiver::start(vec![503, 400]).await;
    let notifier = notifier(&webhook_table(&hook.url()));
    let url = hook.url();
    for (expected, transient) in [
        ("503 Service Unavailable", true),
        ("400 Bad Request", false),
    ] {
        let report = notifier.send(&peer_dead()).await;
        assert_eq!(
            report.webhook,
            Some(ChannelOutcome::Failed {
                reason: format!(
                    "webhook POST to {url} failed: HTTP {expected} (answer {})",
                    &expected[..3]
                ),
                transient
            })
        );
    }
    assert!(notifier.send(&peer_dead()).await.all_delivered());
    // Every attempt carried the same key, so the receiver can tell them
    // apart from new notices.
    let requests = hook.requests();
    assert_eq!(requests.len(), 3);
    assert!(
        requests
            .iter()
            .all(|r| r.headers["idempotency-key"] == "pair-dead-7-1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_notices_use_starttls_login_and_the_private_ca() {
    let scratch = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed_pem(scratch.path());
    let smtp = SmtpSink::start_tls(&cert, &key, "gateway", "correct horse");
    let notifier = notifier(&format!(
        "[mail]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"starttls\"\n\
         username = \"gateway\"\npassword = \"correct horse\"\nca_file = \"{}\"\n\
         from = \"gateway@example.org\"\nto = [\"admin@example.org\"]\n",
        smtp.port,
        cert.display()
    ));
    let report = notifier.send(&peer_dead()).await;
    assert!(report.all_delivered(), "{report}");
    assert_eq!(smtp.messages().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notice_id_that_would_break_a_header_sends_nothing() {
    let smtp = SmtpSink::start();
    let hook = WebhookReceiver::start(Vec::new()).await;
    let notifier = notifier(&format!(
        "{}{}",
        mail_table(smtp.port),
        webhook_table(&hook.url())
    ));
    let notice = Notice {
        id: "x\r\nBcc: everyone@example.org".into(),
        ..peer_dead()
    };
    let report = notifier.send(&notice).await;
    for (channel, outcome) in report.channels() {
        let ChannelOutcome::Failed { reason, transient } = outcome else {
            panic!("{channel}: {outcome:?}")
        };
        assert!(reason.contains("is not usable"), "{reason}");
        assert!(!reason.contains('\n'), "{reason}");
        assert!(!transient);
    }
    assert_eq!(report.channels().count(), 2);
    assert!(smtp.messages().is_empty());
    assert!(hook.requests().is_empty());
}

#[test]
fn bad_settings_name_the_table_and_the_key() {
    let mail = "host = \"h\"\nfrom = \"g@example.org\"\nto = [\"a@example.org\"]\n";
    let mail_keys =
        "`host`, `port`, `tls`, `username`, `password`, `ca_file`, `from`, `to`, `timeout_secs`";
    for (toml_text, expected) in [
        (
            String::new(),
            "[notify] sends nowhere: add a `mail` table, a `webhook` table, or both".to_string(),
        ),
        (
            "[sms]\nto = \"x\"".into(),
            "[notify] unknown setting `sms`; expected one of `mail`, `webhook`".into(),
        ),
        (
            "mail = \"smtp.example.org\"".into(),
            "[notify] setting `mail`: invalid type: string \"smtp.example.org\", expected a map"
                .into(),
        ),
        (
            "[mail]\nhost = \"h\"\nfrom = \"g@example.org\"".into(),
            "[notify.mail] missing setting `to`".into(),
        ),
        (
            format!("[mail]\n{mail}port = \"smtp\""),
            "[notify.mail] setting `port`: invalid type: string \"smtp\", expected u16".into(),
        ),
        (
            format!("[mail]\n{mail}tls_mode = \"starttls\""),
            format!("[notify.mail] unknown setting `tls_mode`; expected one of {mail_keys}"),
        ),
        // The step's `subject` is not a notify key: each notice has its own.
        (
            format!("[mail]\n{mail}subject = \"Alert\""),
            format!("[notify.mail] unknown setting `subject`; expected one of {mail_keys}"),
        ),
        (
            format!("[mail]\n{mail}username = \"u\""),
            "[notify.mail] setting `password`: is required with `username`".into(),
        ),
        (
            format!("[mail]\n{mail}tls = \"none\"\nusername = \"u\"\npassword = \"p\""),
            "[notify.mail] setting `tls`: `none` would send the password in clear text; use \
             `starttls` or `implicit`"
                .into(),
        ),
        (
            "[mail]\nhost = \"h\"\nfrom = \"not an address\"\nto = [\"a@example.org\"]".into(),
            "[notify.mail] setting `from`: `not an address` is not a mail address".into(),
        ),
        (
            format!("[mail]\n{mail}ca_file = \"/nonexistent/ca.pem\""),
            "[notify.mail] setting `ca_file`: cannot read /nonexistent/ca.pem".into(),
        ),
        (
            "[webhook]\nurl = \"ftp://h/x\"\nsecret = \"s\"".into(),
            "[notify.webhook] setting `url`: must start with http:// or https://".into(),
        ),
        (
            "[webhook]\nurl = \"http://h/x\"".into(),
            "[notify.webhook] missing setting `secret`".into(),
        ),
        (
            "[webhook]\nurl = \"http://h/x\"\nsecret = \"\"".into(),
            "[notify.webhook] setting `secret`: must not be empty".into(),
        ),
        (
            "[webhook]\nurl = \"http://h/x\"\nsecret = \"s\"\ntimeout_secs = 0".into(),
            "[notify.webhook] setting `timeout_secs`: must be at least 1 second".into(),
        ),
    ] {
        let err = parse(&toml_text).unwrap_err();
        assert!(
            err.to_string().starts_with(&expected),
            "{toml_text:?}:\n  got      {err}\n  expected {expected}"
        );
    }
    // The key is there for code too, not only in the sentence.
    assert_eq!(
        parse("[mail]\nhost = \"h\"\nfrom = \"g@example.org\"").unwrap_err(),
        NotifyError::Channel {
            channel: "mail",
            error: SettingsError::Missing { key: "to".into() }
        }
    );
}

#[test]
fn debug_output_shows_no_password_or_secret() {
    let settings = parse(
        "[mail]\nhost = \"smtp.example.org\"\nusername = \"gateway\"\npassword = \"smtp-password-1\"\n\
         from = \"gateway@example.org\"\nto = [\"admin@example.org\"]\n\
         [webhook]\nurl = \"http://hooks.example.org/scan\"\nsecret = \"webhook-secret-2\"\n",
    )
    .unwrap();
    assert!(settings.has_mail() && settings.has_webhook());
    let shown = format!("{settings:?}");
    for secret in ["smtp-password-1", "webhook-secret-2"] {
        assert!(!shown.contains(secret), "{shown}");
    }
    assert!(shown.contains("***") && shown.contains("smtp.example.org"));
    let shown = format!("{:?}", Notifier::new(settings).unwrap());
    for secret in ["smtp-password-1", "webhook-secret-2"] {
        assert!(!shown.contains(secret), "{shown}");
    }
    assert!(shown.contains("***"), "{shown}");
}
