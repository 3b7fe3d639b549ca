//! Structured logs: every line carries the instance name (R12), in a human
//! format by default or one JSON object per line, written to stderr and to
//! the instance's log file.

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
                writeln!(w, "{}", serde_json::Value::Object(obj))
            }
            LogFormat::Human => {
                let mut line = format!(
                    "{now} {:>5} {} {}: {}",
                    meta.level(),
                    self.instance,
                    meta.target(),
                    fields.message
                );
                for (k, v) in fields.pairs {
                    let _ = write!(line, " {k}={v}");
                }
                writeln!(w, "{line}")
            }
        }
    }
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
                std::fs::create_dir_all(dir)?;
            }
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
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
