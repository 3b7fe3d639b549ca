//! Name templates (`{date}/{user}-{job_id}.pdf`) for delivered files and mail
//! subjects, and the sanitising that keeps values from outside — user,
//! device, metadata — from steering a path. It must not touch the file
//! system.
//!
//! Rules for paths:
//! - the template itself is checked once, when the workflow is built: it is
//!   relative, its `/`-separated parts are never empty, `.` or `..`, it
//!   contains `{job_id}` (so two jobs never share a name, and one job always
//!   gets the same name), and no part can exceed 255 bytes whatever the
//!   values are;
//! - every value is sanitised on its own: separators, control and
//!   bidirectional-override characters become `_`, leading dots and spaces
//!   are dropped (no hidden files, no `..`), and it is cut to
//!   [`MAX_VALUE_BYTES`]; an empty result becomes `_`.

use chrono::Datelike;

use crate::job::JobContext;

/// The most bytes one substituted value may take in a path.
pub const MAX_VALUE_BYTES: usize = 64;
/// The most bytes one path part may take (the usual file system limit).
const MAX_PART_BYTES: usize = 255;
/// The placeholders there are, for error messages.
const KNOWN: &str =
    "{user}, {device}, {workflow}, {job_id}, {date}, {time}, {year}, {month}, {day}, {meta.KEY}";

#[derive(Clone, Debug, PartialEq, Eq)]
enum Field {
    User,
    Device,
    Workflow,
    JobId,
    Date,
    Time,
    Year,
    Month,
    Day,
    Meta(String),
}

impl Field {
    /// The most bytes the field can produce after sanitising.
    fn max_bytes(&self) -> usize {
        match self {
            Field::JobId => 36,
            Field::Date => 10,
            Field::Time => 6,
            Field::Year => 4,
            Field::Month | Field::Day => 2,
            _ => MAX_VALUE_BYTES,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Text(String),
    Field(Field),
}

/// A parsed template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NameTemplate {
    pieces: Vec<Piece>,
}

impl NameTemplate {
    /// Parses a template for text such as a mail subject: any placeholders,
    /// any literal text.
    pub fn text(template: &str) -> Result<NameTemplate, String> {
        let pieces = parse(template)?;
        Ok(NameTemplate { pieces })
    }

    /// Parses a template for a relative file path, with the rules in the
    /// module documentation.
    pub fn path(template: &str) -> Result<NameTemplate, String> {
        let pieces = parse(template)?;
        if template.starts_with('/') {
            return Err("must be a relative path; the folder is set by `root`".into());
        }
        if template.contains('\\') || template.chars().any(char::is_control) {
            return Err("must not contain backslashes or control characters".into());
        }
        if !pieces.contains(&Piece::Field(Field::JobId)) {
            return Err(
                "must contain {job_id}, so that every job gets its own name and a repeated delivery finds its own file there (it is never written twice)"
                    .into(),
            );
        }
        // Check every part between separators for emptiness, dot names and
        // the worst-case length.
        let mut part_len = 0;
        let mut part_text = String::new();
        let mut part_has_field = false;
        let check = |len: usize, text: &str, has_field: bool| -> Result<(), String> {
            if !has_field && (text.is_empty() || text == "." || text == "..") {
                return Err(format!("has an empty, `.` or `..` path part: `{template}`"));
            }
            if len > MAX_PART_BYTES {
                return Err(format!(
                    "a path part could reach {len} bytes with long values; keep each part under {MAX_PART_BYTES} \
                     (each value takes up to {MAX_VALUE_BYTES} bytes)"
                ));
            }
            Ok(())
        };
        for piece in &pieces {
            match piece {
                Piece::Field(field) => {
                    part_len += field.max_bytes();
                    part_has_field = true;
                }
                Piece::Text(text) => {
                    let mut parts = text.split('/');
                    if let Some(first) = parts.next() {
                        part_len += first.len();
                        part_text.push_str(first);
                    }
                    for next in parts {
                        check(part_len, &part_text, part_has_field)?;
                        part_len = next.len();
                        part_text = next.to_string();
                        part_has_field = false;
                    }
                }
            }
        }
        check(part_len, &part_text, part_has_field)?;
        Ok(NameTemplate { pieces })
    }

    /// Renders a path template: every value sanitised, the result relative
    /// and free of `..`.
    pub fn render_path(&self, job: &JobContext) -> std::path::PathBuf {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Text(text) => out.push_str(text),
                Piece::Field(field) => out.push_str(&sanitise(&value(field, job))),
            }
        }
        std::path::PathBuf::from(out)
    }

    /// Renders a text template: values keep their characters except control
    /// characters, which become spaces.
    pub fn render_text(&self, job: &JobContext) -> String {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Text(text) => out.push_str(text),
                Piece::Field(field) => out.extend(
                    value(field, job)
                        .chars()
                        .map(|c| if c.is_control() { ' ' } else { c }),
                ),
            }
        }
        out
    }
}

fn parse(template: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find(['{', '}']) {
        if rest[open..].starts_with('}') {
            return Err(format!("has a `}}` without a matching `{{`: `{template}`"));
        }
        if open > 0 {
            pieces.push(Piece::Text(rest[..open].to_string()));
        }
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .ok_or_else(|| format!("has a `{{` without a matching `}}`: `{template}`"))?;
        let name = &after[..close];
        let field = match name {
            "user" => Field::User,
            "device" => Field::Device,
            "workflow" => Field::Workflow,
            "job_id" => Field::JobId,
            "date" => Field::Date,
            "time" => Field::Time,
            "year" => Field::Year,
            "month" => Field::Month,
            "day" => Field::Day,
            _ => match name.strip_prefix("meta.") {
                Some(key) if !key.is_empty() && !key.contains('{') => Field::Meta(key.to_string()),
                _ => {
                    return Err(format!(
                        "unknown placeholder `{{{name}}}`; expected one of {KNOWN}"
                    ));
                }
            },
        };
        pieces.push(Piece::Field(field));
        rest = &after[close + 1..];
    }
    if !rest.is_empty() {
        pieces.push(Piece::Text(rest.to_string()));
    }
    Ok(pieces)
}

fn value(field: &Field, job: &JobContext) -> String {
    let local = job.submitted_at.with_timezone(&job.time_zone);
    match field {
        Field::User => job.user.clone(),
        Field::Device => job.device.clone(),
        Field::Workflow => job.workflow.clone(),
        Field::JobId => job.job_id.to_string(),
        Field::Date => local.format("%Y-%m-%d").to_string(),
        Field::Time => local.format("%H%M%S").to_string(),
        Field::Year => format!("{:04}", local.year()),
        Field::Month => format!("{:02}", local.month()),
        Field::Day => format!("{:02}", local.day()),
        Field::Meta(key) => job.metadata.get(key).cloned().unwrap_or_default(),
    }
}

/// Makes one value safe as (part of) a single path component.
pub fn sanitise(value: &str) -> String {
    let mapped: String = value
        .chars()
        .map(|c| if is_unsafe(c) { '_' } else { c })
        .collect();
    let trimmed = mapped.trim_start_matches(['.', ' ']).trim_end();
    let mut out = String::with_capacity(trimmed.len().min(MAX_VALUE_BYTES));
    for c in trimmed.chars() {
        if out.len() + c.len_utf8() > MAX_VALUE_BYTES {
            break;
        }
        out.push(c);
    }
    if out.is_empty() { "_".to_string() } else { out }
}

fn is_unsafe(c: char) -> bool {
    c == '/'
        || c == '\\'
        || c.is_control()
        // Zero-width and bidirectional formatting characters can make a name
        // display as something else ("invoice\u{202e}fdp.exe").
        || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}')
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use std::collections::BTreeMap;

    fn job(user: &str) -> JobContext {
        JobContext {
            job_id: uuid::Uuid::from_u128(0x1234),
            workflow: "scan-to-folder".into(),
            user: user.into(),
            device: "mfd-1".into(),
            submitted_at: chrono::Utc
                .with_ymd_and_hms(2024, 3, 31, 23, 30, 5)
                .unwrap(),
            time_zone: chrono_tz::Europe::Berlin,
            metadata: BTreeMap::from([("dept".to_string(), "../../etc".to_string())]),
            pages: Vec::new(),
            work_dir: "/tmp/none".into(),
            reports: Default::default(),
        }
    }

    #[test]
    fn dates_use_the_servers_zone() {
        let t = NameTemplate::path("{date}/{time}-{job_id}.pdf").unwrap();
        // 23:30 UTC on 31 March is 01:30 on 1 April in Berlin (summer time).
        assert_eq!(
            t.render_path(&job("a")),
            std::path::PathBuf::from("2024-04-01/013005-00000000-0000-0000-0000-000000001234.pdf")
        );
    }

    #[test]
    fn values_cannot_escape_or_hide() {
        let t = NameTemplate::path("{meta.dept}/{user}-{job_id}.pdf").unwrap();
        let path = t.render_path(&job("../x/\u{202e}y\n"));
        assert_eq!(
            path.to_str().unwrap(),
            "_.._etc/_x__y_-00000000-0000-0000-0000-000000001234.pdf"
        );
    }

    #[test]
    fn bad_templates_are_refused_with_a_reason() {
        let cases = [
            ("/abs/{job_id}", "must be a relative path"),
            ("{user}.pdf", "must contain {job_id}"),
            ("../{job_id}", "`..` path part"),
            ("a//{job_id}", "empty"),
            ("{nope}-{job_id}", "unknown placeholder `{nope}`"),
            ("{user-{job_id}", "unknown placeholder"),
            ("{job_id", "without a matching `}`"),
            ("{user}{user}{user}{user}-{job_id}", "could reach 293 bytes"),
        ];
        for (template, expected) in cases {
            let err = NameTemplate::path(template).unwrap_err();
            assert!(err.contains(expected), "{template}: {err}");
        }
    }

    #[test]
    fn subjects_keep_values_but_not_line_breaks() {
        let t = NameTemplate::text("Scan by {user} on {device}").unwrap();
        assert_eq!(
            t.render_text(&job("Zoë\r\nBcc: x")),
            "Scan by Zoë  Bcc: x on mfd-1"
        );
    }
}
