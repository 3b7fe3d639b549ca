//! Structured logs: every line carries the instance name (R12), in a human
//! format by default or one JSON object per line, written to stderr and to
//! the instance's log file (private to the service user, mode 0600).
//!
//! One event is always one line, whatever it carries: values from outside
//! (user and device names, manifests, headers, file names) may hold
//! newlines or other control characters, and written raw they would let a
//! request forge log lines. The human format escapes them (and quotes a
//! field value that holds spaces, quotes or `=`, so it cannot pass for
//! several fields); JSON strings are escaped by the encoder.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Mutex;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::settings::LogFormat;

/// Formats events with the instance name.
pub struct InstanceFormat {
    pub instance: String,
    pub format: LogFormat,
}

#[derive(Default)]
struct Fields {
    message: String,
    pairs: Vec<(&'static str, String)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_owned();
        } else {
            self.pairs.push((field.name(), value.to_owned()));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let text = format!("{value:?}");
        if field.name() == "message" {
            self.message = text;
        } else {
            self.pairs.push((field.name(), text));
        }
    }
}

impl<S, N> FormatEvent<S, N> for InstanceFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let meta = event.metadata();
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        match self.format {
            LogFormat::Json => {
                let mut obj = serde_json::Map::new();
                obj.insert("ts".into(), now.into());
                obj.insert("level".into(), meta.level().as_str().into());
                obj.insert("instance".into(), self.instance.clone().into());
                obj.insert("target".into(), meta.target().into());
                obj.insert("message".into(), fields.message.into());
                for (k, v) in fields.pairs {
                    obj.insert(k.into(), v.into());
                }
                // JSON escapes every control character but leaves the
                // Unicode line separators raw, which some log viewers break
                // lines at.
                let line = serde_json::Value::Object(obj)
                    .to_string()
                    .replace('\u{2028}', "\\u2028")
                    .replace('\u{2029}', "\\u2029");
                writeln!(w, "{line}")
            }
            LogFormat::Human => {
                let mut line = format!(
                    "{now} {:>5} {} {}: {}",
                    meta.level(),
                    self.instance,
                    meta.target(),
                    one_line(&fields.message)
                );
                for (k, v) in fields.pairs {
                    let _ = write!(line, " {k}={}", field_value(&v));
                }
                writeln!(w, "{line}")
            }
        }
    }
}

/// Whether `c` would break a line or hide text on a terminal: control
/// characters (newline, carriage return, escape...) and the Unicode line
/// and paragraph separators.
fn breaks_line(c: char) -> bool {
    c.is_control() || c == '\u{2028}' || c == '\u{2029}'
}

/// `text` with every character that could end a line or control a terminal
/// escaped (`\n`, `\u{1b}`); unchanged when there is none.
fn one_line(text: &str) -> Cow<'_, str> {
    if !text.chars().any(breaks_line) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if breaks_line(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// A field value for the human format: as is when it is one plain word,
/// otherwise quoted with quotes, backslashes and line breakers escaped.
fn field_value(value: &str) -> Cow<'_, str> {
    let plain = !value.is_empty()
        && !value
            .chars()
            .any(|c| breaks_line(c) || c.is_whitespace() || c == '"' || c == '=' || c == '\\');
    if plain {
        return Cow::Borrowed(value);
    }
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if breaks_line(c) => out.extend(c.escape_default()),
            c => out.push(c),
        }
    }
    out.push('"');
    Cow::Owned(out)
}

/// Installs the global subscriber: stderr, plus the log file when given.
/// `RUST_LOG` overrides the configured level.
pub fn init(
    instance: &str,
    format: LogFormat,
    level: &str,
    file: Option<&Path>,
) -> anyhow::Result<()> {
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let stderr = tracing_subscriber::fmt::layer()
        .event_format(InstanceFormat {
            instance: instance.to_owned(),
            format,
        })
        .with_writer(std::io::stderr)
        .with_filter(filter());
    let file_layer = match file {
        Some(path) => {
            if let Some(dir) = path.parent() {
                plugins::fsutil::create_private_dir_all(dir).map_err(|e| {
                    anyhow::anyhow!("cannot create log directory {}: {e}", dir.display())
                })?;
            }
            let f = plugins::fsutil::open_private_append(path)
                .map_err(|e| anyhow::anyhow!("cannot open log file {}: {e}", path.display()))?;
            Some(
                tracing_subscriber::fmt::layer()
                    .event_format(InstanceFormat {
                        instance: instance.to_owned(),
                        format,
                    })
                    .with_writer(Mutex::new(f))
                    .with_ansi(false)
                    .with_filter(filter()),
            )
        }
        None => None,
    };
    tracing_subscriber::registry()
        .with(stderr)
        .with(file_layer)
        .try_init()?;
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::Arc;

    /// A log destination the test can read back.
    #[derive(Clone, Default)]
    pub(crate) struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Captured {
        pub(crate) fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }

        /// A subscriber writing `format` lines for instance `gw-t` here.
        pub(crate) fn subscriber(&self, format: LogFormat) -> impl Subscriber + Send + Sync {
            let sink = self.clone();
            tracing_subscriber::fmt()
                .event_format(InstanceFormat {
                    instance: "gw-t".into(),
                    format,
                })
                .with_writer(move || sink.clone())
                .finish()
        }
    }

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    const FORGED: &str = "ann\n2030-01-01T00:00:00.000Z  INFO gw-t gateway::web::api: user logged in user=root\r\u{1b}[2K\u{2028}x";

    #[test]
    fn outside_values_never_make_a_second_line_in_either_format() {
        for format in [LogFormat::Human, LogFormat::Json] {
            let captured = Captured::default();
            tracing::subscriber::with_default(captured.subscriber(format), || {
                let name = FORGED.to_owned();
                tracing::info!(user = name, device = %FORGED, other = ?FORGED, "login refused");
                tracing::warn!("a message with {FORGED} inside");
            });
            let text = captured.text();
            let lines: Vec<&str> = text.split_terminator('\n').collect();
            assert_eq!(lines.len(), 2, "{format:?}: {text}");
            for line in &lines {
                assert!(!line.chars().any(breaks_line), "{format:?}: {line:?}");
            }
            if format == LogFormat::Json {
                // The values survive intact in JSON.
                let first: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
                assert_eq!(first["user"], FORGED);
            }
        }
    }

    #[test]
    fn human_field_values_cannot_pass_for_other_fields() {
        assert_eq!(field_value("alice"), "alice");
        assert_eq!(field_value("a level=ERROR"), "\"a level=ERROR\"");
        assert_eq!(field_value("say \"hi\"\n"), "\"say \\\"hi\\\"\\n\"");
        assert_eq!(field_value(""), "\"\"");
        assert_eq!(one_line("a\nb\u{1b}"), "a\\nb\\u{1b}");
    }
}
