//! The `mail` delivery: the document attached to a message sent over SMTP
//! (lettre, rustls on ring). It must not retry by itself; the runner does.
//!
//! Deduplication, and its honest limit: the message's `Message-ID` is
//! derived from the job id and the step index, and its `Date` from the
//! job's submission time, so every attempt sends the same message. As soon
//! as the server accepts it (its reply to the end of DATA), the step writes a
//! record to `sent/mail-step<N>.json`; a re-run finds the record and sends
//! nothing. The window that remains is between the server's acceptance and
//! that record reaching the disk — a few milliseconds, plus the time the
//! reply spends in transit when the connection drops before it arrives. A
//! crash or a lost reply in that window makes the step run again and the
//! message is sent a second time, with the identical `Message-ID`, which
//! mail stores and clients use to discard the duplicate. SMTP offers no way
//! to ask a server whether it already holds a message, so this window cannot
//! be closed from the sending side.
//!
//! The server, its TLS and credentials, the addresses and the sending live
//! in `MailRoute`, which the admin notifications (`crate::notify`) use too,
//! with their own plain-text message.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use lettre::message::header::ContentType;
use lettre::message::{Attachment, Mailbox, MessageBuilder, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, CertificateStore, Tls, TlsParameters};
use lettre::transport::smtp::response::Response;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::name::NameTemplate;
use super::record::DeliveryRecord;
use super::tls::read_pem_certificates;
use crate::job::JobContext;
use crate::plugin::{Plugin, StepError, StepFuture};
use crate::settings::{self, Secret, SettingsError};

/// How long one SMTP command may wait for the server unless configured.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// How the connection to the mail server is protected.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Plain SMTP; only for a relay on a trusted network.
    None,
    /// Plain connection upgraded with STARTTLS, which is required (port 587).
    #[default]
    Starttls,
    /// TLS from the first byte (port 465).
    Implicit,
}

/// The keys of a mail table. The step and the admin notifications
/// (`crate::notify`) read the same keys; only the step uses `subject`, since
/// a notice brings its own.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MailSettings {
    host: String,
    #[serde(default)]
    port: Option<u16>,
    #[serde(default)]
    tls: TlsMode,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<Secret>,
    #[serde(default)]
    ca_file: Option<PathBuf>,
    from: String,
    to: Vec<String>,
    #[serde(default)]
    subject: Option<String>,
    #[serde(default)]
    timeout_secs: Option<u64>,
}

fn default_subject() -> String {
    "Scan from {device} ({date} {time})".to_string()
}

/// A validated mail server with its sender and recipients: everything needed
/// to send a message but the message. Its `Debug` output shows no password.
#[derive(Debug)]
pub(crate) struct MailRoute {
    host: String,
    port: u16,
    tls: TlsMode,
    credentials: Option<(String, Secret)>,
    ca_pem: Option<Vec<u8>>,
    from: Mailbox,
    to: Vec<Mailbox>,
    timeout: Option<Duration>,
}

impl MailRoute {
    /// Parses and validates a mail table. The `subject` key, when present,
    /// is returned unchecked for the caller to use or refuse.
    pub(crate) fn from_table(
        table: &Map<String, Value>,
    ) -> Result<(Self, Option<String>), SettingsError> {
        let parsed: MailSettings = settings::parse(table)?;
        if parsed.host.trim().is_empty() {
            return Err(SettingsError::bad("host", "must name the mail server"));
        }
        let from = Mailbox::from_str(&parsed.from).map_err(|e| {
            SettingsError::bad(
                "from",
                format!("`{}` is not a mail address: {e}", parsed.from),
            )
        })?;
        if parsed.to.is_empty() {
            return Err(SettingsError::bad("to", "name at least one recipient"));
        }
        let to = parsed
            .to
            .iter()
            .map(|a| {
                Mailbox::from_str(a).map_err(|e| {
                    SettingsError::bad("to", format!("`{a}` is not a mail address: {e}"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let credentials = match (parsed.username, parsed.password) {
            (Some(user), Some(password)) => Some((user, password)),
            (None, None) => None,
            (Some(_), None) => {
                return Err(SettingsError::bad(
                    "password",
                    "is required with `username`",
                ));
            }
            (None, Some(_)) => {
                return Err(SettingsError::bad(
                    "username",
                    "is required with `password`",
                ));
            }
        };
        if credentials.is_some() && parsed.tls == TlsMode::None {
            return Err(SettingsError::bad(
                "tls",
                "`none` would send the password in clear text; use `starttls` or `implicit`",
            ));
        }
        let ca_pem = match &parsed.ca_file {
            Some(path) => {
                read_pem_certificates(path).map_err(|e| SettingsError::bad("ca_file", e))?;
                Some(std::fs::read(path).map_err(|e| SettingsError::bad("ca_file", e))?)
            }
            None => None,
        };
        let port = parsed.port.unwrap_or(match parsed.tls {
            TlsMode::None => 25,
            TlsMode::Starttls => 587,
            TlsMode::Implicit => 465,
        });
        let route = MailRoute {
            host: parsed.host,
            port,
            tls: parsed.tls,
            credentials,
            ca_pem,
            from,
            to,
            timeout: settings::timeout_from(parsed.timeout_secs)?,
        };
        Ok((route, parsed.subject))
    }

    /// The configured `timeout_secs`.
    pub(crate) fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// `smtp://host:port`, for messages; it never carries the credentials.
    pub(crate) fn destination(&self) -> String {
        format!("smtp://{}:{}", self.host, self.port)
    }

    /// The sender, whose domain names the Message-IDs.
    pub(crate) fn from(&self) -> &Mailbox {
        &self.from
    }

    /// A message addressed from the sender to every recipient, carrying
    /// `message_id`; the caller adds the date, subject and body.
    pub(crate) fn message(&self, message_id: String) -> MessageBuilder {
        let mut builder = Message::builder()
            .message_id(Some(message_id))
            .from(self.from.clone());
        for to in &self.to {
            builder = builder.to(to.clone());
        }
        builder
    }

    /// The SMTP client for this server: TLS as configured (trusting only
    /// `ca_file` when it is set), credentials, and the per-command timeout.
    pub(crate) fn transport(&self) -> Result<AsyncSmtpTransport<Tokio1Executor>, StepError> {
        let tls_error = |e: lettre::transport::smtp::Error| {
            StepError::permanent(format!(
                "mail to {}: TLS setup failed: {e}",
                self.destination()
            ))
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&self.host)
            .port(self.port)
            .timeout(Some(self.timeout.unwrap_or(DEFAULT_TIMEOUT)));
        if self.tls != TlsMode::None {
            let mut params = TlsParameters::builder(self.host.clone());
            if let Some(pem) = &self.ca_pem {
                // A private CA replaces the public roots rather than adding
                // to them: the admin named the one authority to trust.
                params = params
                    .certificate_store(CertificateStore::None)
                    .add_root_certificate(Certificate::from_pem(pem).map_err(tls_error)?);
            }
            let params = params.build_rustls().map_err(tls_error)?;
            builder = builder.tls(match self.tls {
                TlsMode::Implicit => Tls::Wrapper(params),
                _ => Tls::Required(params),
            });
        }
        if let Some((user, password)) = &self.credentials {
            builder = builder.credentials(Credentials::new(
                user.clone(),
                password.expose().to_string(),
            ));
        }
        Ok(builder.build())
    }

    /// Sends `message` through `transport` (made by [`Self::transport`]),
    /// returning the server's acceptance or the failure sorted into retry or
    /// give up.
    pub(crate) async fn send(
        &self,
        transport: &AsyncSmtpTransport<Tokio1Executor>,
        message: Message,
    ) -> Result<Response, StepError> {
        transport
            .send(message)
            .await
            .map_err(|e| classify(&self.destination(), &e))
    }
}

/// The configured `mail` step. Its `Debug` output shows no password.
#[derive(Debug)]
pub struct MailStep {
    step: usize,
    route: MailRoute,
    subject: NameTemplate,
}

/// The Message-ID every attempt of step `step` for `job_id` uses.
pub fn message_id(job_id: uuid::Uuid, step: usize, from: &Mailbox) -> String {
    format!("<{job_id}.step{step}@{}>", from.email.domain())
}

impl MailStep {
    pub(crate) fn build(table: &Map<String, Value>, step: usize) -> Result<Self, SettingsError> {
        let (route, subject) = MailRoute::from_table(table)?;
        let subject = NameTemplate::text(&subject.unwrap_or_else(default_subject))
            .map_err(|e| SettingsError::bad("subject", e))?;
        Ok(MailStep {
            step,
            route,
            subject,
        })
    }

    fn message(&self, job: &JobContext, pdf: Vec<u8>) -> Result<(Message, String), StepError> {
        let id = message_id(job.job_id, self.step, self.route.from());
        let builder = self
            .route
            .message(id.clone())
            .date(SystemTime::from(job.submitted_at))
            .subject(self.subject.render_text(job));
        let local = job.submitted_at.with_timezone(&job.time_zone);
        let body = format!(
            "Scanned by {} on {} at {}.\nJob {}.\n",
            job.user
                .chars()
                .filter(|c| !c.is_control())
                .collect::<String>(),
            job.device
                .chars()
                .filter(|c| !c.is_control())
                .collect::<String>(),
            local.format("%Y-%m-%d %H:%M:%S %Z"),
            job.job_id
        );
        let file_name = format!("scan-{}.pdf", local.format("%Y%m%d-%H%M%S"));
        let pdf_type = ContentType::parse("application/pdf")
            .map_err(|e| StepError::permanent(format!("building the mail: {e}")))?;
        let message = builder
            .multipart(
                MultiPart::mixed()
                    .singlepart(SinglePart::plain(body))
                    .singlepart(Attachment::new(file_name).body(pdf, pdf_type)),
            )
            .map_err(|e| {
                StepError::permanent(format!(
                    "building the mail for {}: {e}",
                    self.route.destination()
                ))
            })?;
        Ok((message, id))
    }

    async fn deliver(&self, job: &JobContext) -> Result<(), StepError> {
        if let Some(record) = DeliveryRecord::find(job, "mail", self.step).await {
            tracing::info!(job = %job.job_id, message_id = %record.receipt, "mail already sent; not sending again");
            return Ok(());
        }
        let destination = self.route.destination();
        let pdf = super::read_document(job, &destination).await?;
        let (message, id) = self.message(job, pdf)?;
        let transport = self.route.transport()?;
        let response = self.route.send(&transport, message).await?;
        tracing::info!(job = %job.job_id, %destination, message_id = %id, code = %response.code(), "mail accepted");
        DeliveryRecord {
            plugin: "mail".into(),
            step: self.step,
            destination,
            receipt: id,
            at: chrono::Utc::now(),
        }
        .store(job)
        .await
    }
}

/// Sorts an SMTP failure into retry or give up, with a sentence naming the
/// server and the cause.
fn classify(destination: &str, error: &lettre::transport::smtp::Error) -> StepError {
    use std::error::Error as _;
    let io_cause = {
        let mut source = error.source();
        let mut found = None;
        while let Some(s) = source {
            if let Some(io) = s.downcast_ref::<std::io::Error>() {
                found = Some(crate::fsutil::io_cause(io));
                break;
            }
            source = s.source();
        }
        found
    };
    if error.is_permanent() {
        let auth = error
            .status()
            .is_some_and(|code| code.to_string().starts_with("535"));
        let what = if auth {
            "authentication failed"
        } else {
            "the server refused the message"
        };
        return StepError::permanent(format!("mail to {destination} failed: {what}: {error}"));
    }
    if error.is_tls() {
        return StepError::permanent(format!(
            "mail to {destination} failed: TLS handshake failed ({error}); check the server's certificate or set `ca_file`"
        ));
    }
    if error.is_timeout() {
        return StepError::transient(format!("mail to {destination} failed: timed out"));
    }
    match io_cause {
        Some(cause) => StepError::transient(format!("mail to {destination} failed: {cause}")),
        None => StepError::transient(format!("mail to {destination} failed: {error}")),
    }
}

impl Plugin for MailStep {
    fn name(&self) -> &'static str {
        "mail"
    }

    fn timeout(&self) -> Option<Duration> {
        self.route.timeout()
    }

    fn run<'a>(&'a self, job: &'a JobContext) -> StepFuture<'a> {
        Box::pin(self.deliver(job))
    }
}
