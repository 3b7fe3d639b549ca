//! Notices to the admins: a short plain-text message, worded by the caller,
//! sent by mail and/or to a webhook with the delivery steps' transports
//! (`deliver::MailRoute`, `deliver::WebhookTarget`), configured by a
//! `[notify]` table with `mail` and `webhook` sub-tables that take the same
//! keys as the `mail` and `webhook` steps. It must know nothing of what a
//! notice is about (the server pair, jobs): the subject, text, event name
//! and fields are the caller's. It must not retry; it reports per channel
//! and the caller decides.
//!
//! A notice is deduplicated like a delivery: its `id` becomes the mail's
//! `Message-ID` (`<id@domain of from>`) and the webhook's `Idempotency-Key`,
//! so a notice sent again after a failure is recognisable as the same one.
//! The webhook body is JSON (`event`, `subject`, `text`, `fields`, `id`),
//! signed with `X-Scan-Signature: sha256=<hex>` exactly as the step signs
//! its body.

use std::fmt;
use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::{AsyncSmtpTransport, Tokio1Executor};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::deliver::{MailRoute, WebhookTarget};
use crate::plugin::StepError;
use crate::settings::{self, SettingsError};

/// How long one channel may take to send a notice unless its
/// `timeout_secs` says otherwise. Shorter than a delivery's: a notice is a
/// few hundred bytes, and the caller is waiting to learn whether it went.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest notice id accepted: it becomes a header value.
const MAX_ID_LEN: usize = 200;

/// What was wrong with a `[notify]` table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotifyError {
    /// The table names neither `mail` nor `webhook`.
    #[error("[notify] sends nowhere: add a `mail` table, a `webhook` table, or both")]
    NoChannel,
    /// A key of the `[notify]` table itself is unknown or not a table.
    #[error("[notify] {0}")]
    Section(SettingsError),
    /// A setting of one channel's table is wrong.
    #[error("[notify.{channel}] {error}")]
    Channel {
        /// `mail` or `webhook`.
        channel: &'static str,
        /// The problem, naming the key.
        error: SettingsError,
    },
}

/// The validated `[notify]` table: at least one channel. Its `Debug` output
/// shows no password or signing secret.
#[derive(Debug)]
pub struct NotifySettings {
    mail: Option<MailRoute>,
    webhook: Option<WebhookTarget>,
}

/// The keys of `[notify]` itself; each holds a table of that channel's keys.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NotifyTables {
    #[serde(default)]
    mail: Option<Map<String, Value>>,
    #[serde(default)]
    webhook: Option<Map<String, Value>>,
}

/// The keys `[notify.mail]` takes: the `mail` step's but `subject`, which
/// each notice brings.
const MAIL_KEYS: &[&str] = &[
    "host",
    "port",
    "tls",
    "username",
    "password",
    "ca_file",
    "from",
    "to",
    "timeout_secs",
];

impl NotifySettings {
    /// Parses and validates the `[notify]` table (its `mail` and `webhook`
    /// sub-tables), reading any `ca_file` it names.
    pub fn parse(table: &Map<String, Value>) -> Result<Self, NotifyError> {
        let tables: NotifyTables = settings::parse(table).map_err(NotifyError::Section)?;
        let mail = tables
            .mail
            .as_ref()
            .map(mail_route)
            .transpose()
            .map_err(|error| NotifyError::Channel {
                channel: "mail",
                error,
            })?;
        let webhook = tables
            .webhook
            .as_ref()
            .map(WebhookTarget::from_table)
            .transpose()
            .map_err(|error| NotifyError::Channel {
                channel: "webhook",
                error,
            })?;
        if mail.is_none() && webhook.is_none() {
            return Err(NotifyError::NoChannel);
        }
        Ok(NotifySettings { mail, webhook })
    }

    /// Whether notices go out by mail.
    pub fn has_mail(&self) -> bool {
        self.mail.is_some()
    }

    /// Whether notices go to a webhook.
    pub fn has_webhook(&self) -> bool {
        self.webhook.is_some()
    }
}

/// The mail step's settings and checks, with `subject` refused rather than
/// used and left out of the keys an unknown-key error lists.
fn mail_route(table: &Map<String, Value>) -> Result<MailRoute, SettingsError> {
    let unknown = |key: &str| SettingsError::Unknown {
        key: key.to_string(),
        expected: MAIL_KEYS.to_vec(),
    };
    if table.contains_key("subject") {
        return Err(unknown("subject"));
    }
    MailRoute::from_table(table)
        .map(|(route, _subject)| route)
        .map_err(|e| match e {
            SettingsError::Unknown { key, .. } => unknown(&key),
            other => other,
        })
}

/// One notice for the admins. Every field is the caller's.
#[derive(Clone, Debug, PartialEq)]
pub struct Notice {
    /// Stable per notice, e.g. `pair-dead-<epoch>-<n>`: the same id on a
    /// re-send lets mail clients and webhook receivers drop the duplicate.
    /// ASCII letters, digits, `-`, `_` and inner single dots, at most 200
    /// characters.
    pub id: String,
    /// One line; control characters are sent as spaces.
    pub subject: String,
    /// The message people read.
    pub text: String,
    /// A machine name for the kind of notice, e.g. `peer_dead`.
    pub event: String,
    /// Machine-readable details, passed to the webhook as they are.
    pub fields: Map<String, Value>,
}

/// How one channel fared with one notice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChannelOutcome {
    /// The mail server or the webhook receiver accepted the notice.
    Delivered,
    /// It was not accepted.
    Failed {
        /// One line naming the destination and the cause; never a secret.
        reason: String,
        /// Whether sending again later may succeed (a server down, a
        /// timeout, a 5xx answer), as opposed to a refusal or a bad setting.
        transient: bool,
    },
}

impl ChannelOutcome {
    fn from_result(result: Result<(), StepError>) -> Self {
        match result {
            Ok(()) => ChannelOutcome::Delivered,
            Err(e) => ChannelOutcome::Failed {
                transient: e.is_transient(),
                reason: one_line(e.reason()),
            },
        }
    }

    /// Whether the channel accepted the notice.
    pub fn is_delivered(&self) -> bool {
        matches!(self, ChannelOutcome::Delivered)
    }
}

impl fmt::Display for ChannelOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChannelOutcome::Delivered => f.write_str("delivered"),
            ChannelOutcome::Failed { reason, .. } => write!(f, "failed: {reason}"),
        }
    }
}

/// What became of one notice, per configured channel (`None`: the channel
/// is not configured).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotifyReport {
    /// The mail channel.
    pub mail: Option<ChannelOutcome>,
    /// The webhook channel.
    pub webhook: Option<ChannelOutcome>,
}

impl NotifyReport {
    /// Whether every configured channel accepted the notice.
    pub fn all_delivered(&self) -> bool {
        self.channels().all(|(_, outcome)| outcome.is_delivered())
    }

    /// Whether at least one channel accepted the notice.
    pub fn any_delivered(&self) -> bool {
        self.channels().any(|(_, outcome)| outcome.is_delivered())
    }

    /// The configured channels by name, mail first.
    pub fn channels(&self) -> impl Iterator<Item = (&'static str, &ChannelOutcome)> {
        [("mail", &self.mail), ("webhook", &self.webhook)]
            .into_iter()
            .filter_map(|(name, outcome)| outcome.as_ref().map(|o| (name, o)))
    }
}

impl fmt::Display for NotifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (name, outcome)) in self.channels().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{name}: {outcome}")?;
        }
        Ok(())
    }
}

/// Sends notices through the configured channels. Its `Debug` output shows
/// no password or signing secret.
pub struct Notifier {
    mail: Option<(MailRoute, AsyncSmtpTransport<Tokio1Executor>)>,
    webhook: Option<WebhookTarget>,
}

impl fmt::Debug for Notifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Notifier")
            .field("mail", &self.mail.as_ref().map(|(route, _)| route))
            .field("webhook", &self.webhook)
            .finish()
    }
}

impl Notifier {
    /// Sets up the channels: the mail client (its TLS configuration) is
    /// built once here, so a problem with it shows at start-up rather than
    /// with the first notice.
    pub fn new(settings: NotifySettings) -> Result<Self, NotifyError> {
        let mail = match settings.mail {
            Some(route) => {
                let transport = route.transport().map_err(|e| NotifyError::Channel {
                    channel: "mail",
                    error: SettingsError::bad("tls", e.reason()),
                })?;
                Some((route, transport))
            }
            None => None,
        };
        Ok(Notifier {
            mail,
            webhook: settings.webhook,
        })
    }

    /// Sends `notice` through every configured channel at once, each
    /// bounded by its `timeout_secs` (default [`DEFAULT_TIMEOUT`]), and
    /// says how each fared. One channel's failure does not stop the other;
    /// nothing is retried.
    pub async fn send(&self, notice: &Notice) -> NotifyReport {
        if let Err(reason) = check_id(&notice.id) {
            let refused = || ChannelOutcome::Failed {
                reason: reason.clone(),
                transient: false,
            };
            return NotifyReport {
                mail: self.mail.as_ref().map(|_| refused()),
                webhook: self.webhook.as_ref().map(|_| refused()),
            };
        }
        let mail = async {
            match &self.mail {
                Some((route, transport)) => Some(ChannelOutcome::from_result(
                    send_mail(route, transport, notice).await,
                )),
                None => None,
            }
        };
        let webhook = async {
            match &self.webhook {
                Some(target) => Some(ChannelOutcome::from_result(
                    send_webhook(target, notice).await,
                )),
                None => None,
            }
        };
        let (mail, webhook) = tokio::join!(mail, webhook);
        let report = NotifyReport { mail, webhook };
        tracing::debug!(id = %notice.id, event = %notice.event, %report, "notice sent");
        report
    }
}

async fn send_mail(
    route: &MailRoute,
    transport: &AsyncSmtpTransport<Tokio1Executor>,
    notice: &Notice,
) -> Result<(), StepError> {
    let destination = route.destination();
    let id = format!("<{}@{}>", notice.id, route.from().email.domain());
    let mut text = notice.text.clone();
    if !text.ends_with('\n') {
        text.push('\n');
    }
    let message = route
        .message(id)
        .date_now()
        .subject(one_line(&notice.subject))
        .header(ContentType::TEXT_PLAIN)
        .body(text)
        .map_err(|e| StepError::permanent(format!("building the mail for {destination}: {e}")))?;
    let limit = route.timeout().unwrap_or(DEFAULT_TIMEOUT);
    tokio::time::timeout(limit, route.send(transport, message))
        .await
        .map_err(|_| {
            StepError::transient(format!(
                "mail to {destination} failed: timed out after {limit:?}"
            ))
        })?
        .map(|_| ())
}

async fn send_webhook(target: &WebhookTarget, notice: &Notice) -> Result<(), StepError> {
    let body = json!({
        "event": notice.event,
        "subject": notice.subject,
        "text": notice.text,
        "fields": notice.fields,
        "id": notice.id,
    });
    let body = serde_json::to_vec(&body).map_err(|e| {
        StepError::permanent(format!(
            "webhook POST to {}: the notice cannot be encoded: {e}",
            target.url()
        ))
    })?;
    let limit = target.timeout().unwrap_or(DEFAULT_TIMEOUT);
    target
        .post("application/json", body, &notice.id, limit)
        .await
        .map(|_| ())
}

/// A notice id must be usable unchanged as the left part of a Message-ID
/// and as a header value.
fn check_id(id: &str) -> Result<(), String> {
    let shown: String = id
        .chars()
        .take(40)
        .map(|c| c.escape_debug().to_string())
        .collect();
    let fits = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !id.starts_with('.')
        && !id.ends_with('.')
        && !id.contains("..");
    if fits {
        Ok(())
    } else {
        Err(format!(
            "the notice id `{shown}` is not usable: use 1 to {MAX_ID_LEN} ASCII letters, digits, `-`, `_` and inner single dots"
        ))
    }
}

/// `text` on one line: control characters (line breaks included) become
/// spaces.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_that_would_break_a_header_are_refused() {
        for good in ["pair-dead-7.gw-a-1", "a", "x_y"] {
            assert!(check_id(good).is_ok(), "{good}");
        }
        for bad in ["", "a b", "a\r\nBcc: x", "<a>", "a@b", ".a", "a..b", "a."] {
            assert!(check_id(bad).is_err(), "{bad:?}");
        }
        assert!(check_id(&"a".repeat(MAX_ID_LEN + 1)).is_err());
    }

    #[test]
    fn a_report_reads_as_one_line_per_notice() {
        let report = NotifyReport {
            mail: Some(ChannelOutcome::Failed {
                reason: "mail to smtp://h:25 failed: connection refused".into(),
                transient: true,
            }),
            webhook: Some(ChannelOutcome::Delivered),
        };
        assert_eq!(
            report.to_string(),
            "mail: failed: mail to smtp://h:25 failed: connection refused; webhook: delivered"
        );
        assert!(report.any_delivered() && !report.all_delivered());
    }
}
