//! Index fields of a workflow: the values a person at the panel types or
//! picks for a job (a PO number, a department), sent as the job manifest's
//! metadata. This module owns the fields as configured ([`FieldSpec`]),
//! their validation into [`IndexField`]s (refusals name the field), and the
//! check of a job's metadata against them ([`check_metadata`]). It must not
//! know HTTP, manifests or the pair: callers hand it the metadata as a map.
//!
//! The device panel checks the same rules in JavaScript before it sends a
//! job, and both are run over one table of cases,
//! `tests/fixtures/index_fields/cases.json`, so the two cannot drift apart.
//! That is why the rules are spelled out by hand here (no locale, no
//! Unicode digit classes) and why a pattern is limited to the syntax Rust's
//! `regex` and JavaScript's `RegExp` (with the `u` flag) read the same way:
//!
//! * a value that is absent or the empty string is missing; a missing
//!   required field is refused (`required`), a missing optional one is
//!   accepted without any other check;
//! * `text`: with a `pattern`, the whole value must match it, as
//!   `^(?:PATTERN)$` (`pattern`);
//! * `number`: `^-?[0-9]+(\.[0-9]+)?$` (`number`): no `+`, no exponent, no
//!   `1.` or `.5`, ASCII digits only;
//! * `date`: `YYYY-MM-DD` naming a day of the Gregorian calendar (`date`);
//! * `choice`: exactly one of `choices`, case included (`choice`).
//!
//! Metadata keys that are not fields are not checked here.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use regex::Regex;
use serde::de::Error as _;
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

/// The keys of a field, as configured and as the API shows it.
pub const FIELD_KEYS: [&str; 6] = ["name", "label", "type", "required", "pattern", "choices"];

/// A field name is a metadata key, so it follows the same rule: at most
/// this many characters.
pub const MAX_NAME_CHARS: usize = 64;
/// At most this many characters in a label.
pub const MAX_LABEL_CHARS: usize = 64;
/// A choice is a metadata value, so it is at most this long.
pub const MAX_CHOICE_CHARS: usize = 1024;
/// Refusals list at most this many choices.
const CHOICES_SHOWN: usize = 10;

/// The kinds of field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FieldType {
    /// Free text, optionally matching a pattern.
    Text,
    /// A decimal number.
    Number,
    /// One of a fixed list.
    Choice,
    /// A calendar date, `YYYY-MM-DD`.
    Date,
}

impl FieldType {
    /// Every type, in the order the documentation lists them.
    pub const ALL: [FieldType; 4] = [
        FieldType::Text,
        FieldType::Number,
        FieldType::Choice,
        FieldType::Date,
    ];

    /// The name used in configuration and in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            FieldType::Text => "text",
            FieldType::Number => "number",
            FieldType::Choice => "choice",
            FieldType::Date => "date",
        }
    }

    fn parse(name: &str) -> Option<FieldType> {
        FieldType::ALL.into_iter().find(|t| t.as_str() == name)
    }
}

impl fmt::Display for FieldType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The rule a value broke, as the API names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// A required field is missing (absent or empty).
    Required,
    /// A text value does not match the field's pattern as a whole.
    Pattern,
    /// A number field's value is not a number.
    Number,
    /// A date field's value is not a `YYYY-MM-DD` calendar date.
    Date,
    /// A choice field's value is not one of its choices.
    Choice,
}

impl Rule {
    /// The rule's name in the API (`"required"`, `"pattern"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::Required => "required",
            Rule::Pattern => "pattern",
            Rule::Number => "number",
            Rule::Date => "date",
            Rule::Choice => "choice",
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One field as configured (`[[workflows.NAME.fields]]`). Only its shape
/// is checked when it is read; [`IndexField::build`] checks the rest, so
/// that every refusal can name the workflow and the field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldSpec {
    /// The metadata key the value travels under.
    pub name: String,
    /// What people see.
    pub label: String,
    /// The type as written (`text`, `number`, `choice`, `date`).
    pub kind: String,
    /// Whether a value must be given.
    pub required: bool,
    /// `text` only: a pattern the whole value must match.
    pub pattern: Option<String>,
    /// `choice` only: the values to pick from.
    pub choices: Option<Vec<String>>,
}

impl<'de> Deserialize<'de> for FieldSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let map = Map::<String, Value>::deserialize(deserializer)?;
        // Name the field in every message when it has a name at all.
        let at = match map.get("name") {
            Some(Value::String(name)) => format!("index field `{name}`"),
            _ => "an index field".to_owned(),
        };
        if let Some(key) = map.keys().find(|k| !FIELD_KEYS.contains(&k.as_str())) {
            return Err(D::Error::custom(format!(
                "{at}: unknown key `{key}`; a field has the keys {}",
                FIELD_KEYS.join(", ")
            )));
        }
        // A null is what an absent key looks like in some JSON writers.
        let present = |key: &str| map.get(key).filter(|v| !v.is_null());
        let text = |key: &str| -> Result<Option<String>, D::Error> {
            match present(key) {
                None => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(other) => Err(D::Error::custom(format!(
                    "{at}: `{key}` must be a string, not {other}"
                ))),
            }
        };
        let needed = |key: &str, hint: &str| -> Result<String, D::Error> {
            text(key)?.ok_or_else(|| D::Error::custom(format!("{at}: `{key}` is missing; {hint}")))
        };
        let name = needed(
            "name",
            "give the metadata key the value is sent under, e.g. `po_number`",
        )?;
        let label = needed("label", "give the text people see, e.g. \"PO number\"")?;
        let kind = needed("type", "give one of text, number, choice, date")?;
        let required = match present("required") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                return Err(D::Error::custom(format!(
                    "{at}: `required` must be true or false, not {other}"
                )));
            }
        };
        let pattern = text("pattern")?;
        let choices = match present("choices") {
            None => None,
            Some(Value::Array(items)) => Some(
                items
                    .iter()
                    .map(|item| match item {
                        Value::String(s) => Ok(s.clone()),
                        other => Err(D::Error::custom(format!(
                            "{at}: `choices` must be a list of strings; {other} is not a string"
                        ))),
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            Some(other) => {
                return Err(D::Error::custom(format!(
                    "{at}: `choices` must be a list of strings, not {other}"
                )));
            }
        };
        Ok(FieldSpec {
            name,
            label,
            kind,
            required,
            pattern,
            choices,
        })
    }
}

impl Serialize for FieldSpec {
    /// Writes what was configured and nothing more, so a specification
    /// reads back as it was written.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("name", &self.name)?;
        map.serialize_entry("label", &self.label)?;
        map.serialize_entry("type", &self.kind)?;
        if self.required {
            map.serialize_entry("required", &true)?;
        }
        if let Some(pattern) = &self.pattern {
            map.serialize_entry("pattern", pattern)?;
        }
        if let Some(choices) = &self.choices {
            map.serialize_entry("choices", choices)?;
        }
        map.end()
    }
}

/// Why a field's configuration is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FieldProblem {
    /// The name is not a valid metadata key.
    #[error(
        "`{0}` is not a valid field name: the name is the metadata key, so use 1-{MAX_NAME_CHARS} letters, digits and _ . -, starting with a letter or digit"
    )]
    BadName(String),
    /// The label is empty, too long or has control characters.
    #[error(
        "the label must be 1-{MAX_LABEL_CHARS} characters without control characters (line breaks, tabs)"
    )]
    BadLabel,
    /// Two fields of one workflow have the same name.
    #[error("is declared twice; give each field of a workflow its own name")]
    DuplicateName,
    /// The type is none of the known ones.
    #[error("unknown type `{0}`; use text, number, choice or date")]
    UnknownType(String),
    /// `choices` on a field that is not a choice.
    #[error(
        "`choices` is only for `choice` fields, and this one is `{0}`; remove `choices` or make the type `choice`"
    )]
    ChoicesNotAllowed(FieldType),
    /// A choice field without choices.
    #[error("a `choice` field needs `choices`, a non-empty list of the values to pick from")]
    ChoicesMissing,
    /// A choice is listed twice.
    #[error("the choice `{0}` is listed twice; list each choice once")]
    DuplicateChoice(String),
    /// A choice is empty, too long or has control characters.
    #[error(
        "the choice `{0}` cannot be sent as metadata: a choice must be 1-{MAX_CHOICE_CHARS} characters without control characters"
    )]
    BadChoice(String),
    /// `pattern` on a field that is not text.
    #[error(
        "`pattern` is only for `text` fields, and this one is `{0}`; remove `pattern` or make the type `text`"
    )]
    PatternNotAllowed(FieldType),
    /// The pattern is not a valid regular expression.
    #[error("the pattern `{pattern}` is not valid: {reason}")]
    BadPattern {
        /// The pattern as configured.
        pattern: String,
        /// What is wrong, and what to write instead.
        reason: String,
    },
}

/// A refused field: which one (by name, or by position when its name is
/// the problem) and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("index field {at}: {problem}")]
pub struct FieldError {
    /// `` `po_number` `` or, for a field without a usable name, its
    /// position counting from 1 (`#3`).
    pub at: String,
    /// What is wrong.
    pub problem: FieldProblem,
}

/// A validated field, ready to check values.
#[derive(Clone, Debug)]
pub struct IndexField {
    name: String,
    label: String,
    kind: FieldType,
    required: bool,
    pattern: Option<String>,
    /// `^(?:pattern)$`, compiled once.
    matcher: Option<Regex>,
    choices: Vec<String>,
}

impl PartialEq for IndexField {
    fn eq(&self, other: &Self) -> bool {
        // The matcher is made from the pattern, so comparing that suffices.
        self.name == other.name
            && self.label == other.label
            && self.kind == other.kind
            && self.required == other.required
            && self.pattern == other.pattern
            && self.choices == other.choices
    }
}

impl Eq for IndexField {}

impl IndexField {
    /// Checks one field as configured. Whether its name is unique in its
    /// workflow is [`build_fields`]' question.
    pub fn build(spec: &FieldSpec) -> Result<IndexField, FieldProblem> {
        if !valid_name(&spec.name) {
            return Err(FieldProblem::BadName(
                spec.name
                    .chars()
                    .take(80)
                    .collect::<String>()
                    .escape_debug()
                    .to_string(),
            ));
        }
        let label_chars = spec.label.chars().count();
        if label_chars == 0
            || label_chars > MAX_LABEL_CHARS
            || spec.label.chars().any(char::is_control)
        {
            return Err(FieldProblem::BadLabel);
        }
        let kind = FieldType::parse(&spec.kind)
            .ok_or_else(|| FieldProblem::UnknownType(spec.kind.clone()))?;
        if spec.pattern.is_some() && kind != FieldType::Text {
            return Err(FieldProblem::PatternNotAllowed(kind));
        }
        if spec.choices.is_some() && kind != FieldType::Choice {
            return Err(FieldProblem::ChoicesNotAllowed(kind));
        }
        let choices = spec.choices.clone().unwrap_or_default();
        if kind == FieldType::Choice && choices.is_empty() {
            return Err(FieldProblem::ChoicesMissing);
        }
        let mut seen = BTreeSet::new();
        for choice in &choices {
            let chars = choice.chars().count();
            if chars == 0 || chars > MAX_CHOICE_CHARS || choice.chars().any(char::is_control) {
                return Err(FieldProblem::BadChoice(
                    choice
                        .chars()
                        .take(80)
                        .collect::<String>()
                        .escape_debug()
                        .to_string(),
                ));
            }
            if !seen.insert(choice.as_str()) {
                return Err(FieldProblem::DuplicateChoice(choice.clone()));
            }
        }
        let matcher = match &spec.pattern {
            None => None,
            Some(pattern) => {
                Some(
                    compile_pattern(pattern).map_err(|reason| FieldProblem::BadPattern {
                        pattern: pattern.clone(),
                        reason,
                    })?,
                )
            }
        };
        Ok(IndexField {
            name: spec.name.clone(),
            label: spec.label.clone(),
            kind,
            required: spec.required,
            pattern: spec.pattern.clone(),
            matcher,
            choices,
        })
    }

    /// The metadata key.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What people see.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The type.
    pub fn kind(&self) -> FieldType {
        self.kind
    }

    /// Whether a value must be given.
    pub fn required(&self) -> bool {
        self.required
    }

    /// The pattern as configured (`text` only).
    pub fn pattern(&self) -> Option<&str> {
        self.pattern.as_deref()
    }

    /// The choices (`choice` only; empty otherwise).
    pub fn choices(&self) -> &[String] {
        &self.choices
    }

    /// Checks one value (`None`: the key is absent) and says which rule
    /// it breaks, if any. The rules are in the module comment.
    pub fn check(&self, value: Option<&str>) -> Result<(), Rule> {
        let value = match value {
            None | Some("") if self.required => return Err(Rule::Required),
            None | Some("") => return Ok(()),
            Some(v) => v,
        };
        let ok = match self.kind {
            FieldType::Text => self.matcher.as_ref().is_none_or(|m| m.is_match(value)),
            FieldType::Number => is_number(value),
            FieldType::Date => is_date(value),
            FieldType::Choice => self.choices.iter().any(|c| c == value),
        };
        if ok {
            Ok(())
        } else {
            Err(match self.kind {
                FieldType::Text => Rule::Pattern,
                FieldType::Number => Rule::Number,
                FieldType::Date => Rule::Date,
                FieldType::Choice => Rule::Choice,
            })
        }
    }

    /// The sentence for a value that broke `rule`: the field, the rule and
    /// what to do. It never repeats the value.
    pub fn refusal(&self, rule: Rule) -> String {
        let field = format!("index field `{}` ({})", self.name, self.label);
        match rule {
            Rule::Required => format!("{field} is required by this workflow; fill it in"),
            Rule::Pattern => format!(
                "{field} does not match its pattern `{}` (the whole value must match); correct the value",
                self.pattern.as_deref().unwrap_or_default()
            ),
            Rule::Number => format!(
                "{field} must be a number: digits, optionally a leading `-` and a decimal part after a `.` (e.g. 42, -3.5); correct the value"
            ),
            Rule::Date => format!(
                "{field} must be a date written YYYY-MM-DD that exists in the calendar (e.g. 2026-03-31); correct the value"
            ),
            Rule::Choice => {
                let mut listed: Vec<String> = self
                    .choices
                    .iter()
                    .take(CHOICES_SHOWN)
                    .map(|c| format!("`{c}`"))
                    .collect();
                if self.choices.len() > CHOICES_SHOWN {
                    listed.push(format!("{} more", self.choices.len() - CHOICES_SHOWN));
                }
                format!(
                    "{field} must be exactly one of {} (case included); pick one of them",
                    listed.join(", ")
                )
            }
        }
    }
}

impl Serialize for IndexField {
    /// The API form: always all six keys, `pattern` null when unset and
    /// `choices` empty when unset.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(FIELD_KEYS.len()))?;
        map.serialize_entry("name", &self.name)?;
        map.serialize_entry("label", &self.label)?;
        map.serialize_entry("type", self.kind.as_str())?;
        map.serialize_entry("required", &self.required)?;
        map.serialize_entry("pattern", &self.pattern)?;
        map.serialize_entry("choices", &self.choices)?;
        map.end()
    }
}

/// Checks every field of a workflow and that their names are unique.
pub fn build_fields(specs: &[FieldSpec]) -> Result<Vec<IndexField>, FieldError> {
    let mut fields: Vec<IndexField> = Vec::with_capacity(specs.len());
    for (index, spec) in specs.iter().enumerate() {
        let at = if valid_name(&spec.name) {
            format!("`{}`", spec.name)
        } else {
            format!("#{}", index + 1)
        };
        let field = IndexField::build(spec).map_err(|problem| FieldError {
            at: at.clone(),
            problem,
        })?;
        if fields.iter().any(|f| f.name == field.name) {
            return Err(FieldError {
                at,
                problem: FieldProblem::DuplicateName,
            });
        }
        fields.push(field);
    }
    Ok(fields)
}

/// A job's metadata refused by a field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct MetadataRefusal {
    /// The field's name (its metadata key).
    pub field: String,
    /// The rule broken.
    pub rule: Rule,
    /// The sentence for people: the field, the rule, what to do.
    pub message: String,
}

/// Checks `metadata` against `fields` in their order; the first field
/// whose value breaks a rule refuses it. Keys that are not fields pass.
pub fn check_metadata(
    fields: &[IndexField],
    metadata: &BTreeMap<String, String>,
) -> Result<(), MetadataRefusal> {
    for field in fields {
        if let Err(rule) = field.check(metadata.get(&field.name).map(String::as_str)) {
            return Err(MetadataRefusal {
                field: field.name.clone(),
                rule,
                message: field.refusal(rule),
            });
        }
    }
    Ok(())
}

/// The metadata key rule: 1-64 ASCII letters, digits and `_ . -`,
/// starting with a letter or digit.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_CHARS
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// `^-?[0-9]+(\.[0-9]+)?$`, ASCII digits only.
fn is_number(value: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let unsigned = value.strip_prefix('-').unwrap_or(value);
    match unsigned.split_once('.') {
        None => digits(unsigned),
        Some((whole, fraction)) => digits(whole) && digits(fraction),
    }
}

/// `YYYY-MM-DD` naming a day of the (proleptic) Gregorian calendar.
fn is_date(value: &str) -> bool {
    let b = value.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return false;
    }
    // Bytes, not string slices: a multi-byte character is simply not a digit.
    let number = |range: std::ops::Range<usize>| -> Option<u32> {
        b[range].iter().try_fold(0u32, |n, &c| {
            c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0'))
        })
    };
    let (Some(year), Some(month), Some(day)) = (number(0..4), number(5..7), number(8..10)) else {
        return false;
    };
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    (1..=days).contains(&day)
}

/// Compiles `^(?:pattern)$` after checking that the pattern keeps to the
/// syntax both Rust's `regex` and JavaScript's `RegExp` (with the `u`
/// flag) read the same way; the error says what to write instead.
fn compile_pattern(pattern: &str) -> Result<Regex, String> {
    if pattern.is_empty() {
        return Err(
            "it is empty, which only the missing value matches; remove `pattern` or give one"
                .into(),
        );
    }
    check_portable(pattern)?;
    Regex::new(&format!("^(?:{pattern})$")).map_err(|e| match e {
        regex::Error::Syntax(text) => text
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("a syntax error")
            .trim()
            .trim_start_matches("error: ")
            .to_owned(),
        other => other.to_string(),
    })
}

/// The characters that a backslash makes literal in both dialects (the
/// JavaScript `u` flag allows escaping only these, plus `-` in a class).
const ESCAPABLE: &str = r"^$\.*+?()[]{}|/";

/// What came before the current position, for where a quantifier may go.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Before {
    /// The start, `(`, `(?:`, `|`, `^` or `$`: nothing to repeat.
    Nothing,
    /// A character, `.`, a class or a group: can be repeated.
    Atom,
    /// A quantified atom: a `?` may make it lazy.
    Quantified,
    /// A lazy quantified atom: nothing more may follow it as a quantifier.
    Lazy,
}

/// Refuses what the two dialects read differently or only one accepts:
/// escapes of letters and digits (`\d` is any Unicode digit in Rust but
/// 0-9 in JavaScript; `\1` a back-reference there), `(?` other than `(?:`
/// (flags, look-around, named groups), stacked quantifiers (`a**` repeats
/// twice in Rust and is an error in JavaScript), a quantifier after an
/// anchor, unescaped `{`, `}` or `]` outside a quantifier or class, and in
/// a class `[` (Rust's nested and POSIX classes), `&&`, `--`, `~~` (Rust's
/// set operations) and a `]` at its start (Rust: a literal; JavaScript:
/// the end of an empty class).
fn check_portable(pattern: &str) -> Result<(), String> {
    let chars: Vec<char> = pattern.chars().collect();
    let escape_hint = |c: char| {
        if c.is_ascii_alphanumeric() {
            format!(
                "`\\{c}` is read differently by the server and the device page (or not at all); \
                 write a character class instead, e.g. `[0-9]` for `\\d`, `[A-Za-z0-9_]` for `\\w`, `[ ]` for a space"
            )
        } else {
            format!(
                "`\\{c}` is not portable; a backslash may only stand before one of {ESCAPABLE} (and `-` in a class)"
            )
        }
    };
    let mut before = Before::Nothing;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\\' => {
                let Some(&next) = chars.get(i + 1) else {
                    return Err("it ends with a lone `\\`; write `\\\\` for a backslash".into());
                };
                if !ESCAPABLE.contains(next) {
                    return Err(escape_hint(next));
                }
                before = Before::Atom;
                i += 2;
            }
            '(' => {
                if chars.get(i + 1) == Some(&'?') {
                    if chars.get(i + 2) != Some(&':') {
                        return Err(
                            "`(?` is only allowed as the non-capturing group `(?:`; flags, look-around and named groups are not portable"
                                .into(),
                        );
                    }
                    i += 3;
                } else {
                    i += 1;
                }
                before = Before::Nothing;
            }
            ')' => {
                before = Before::Atom;
                i += 1;
            }
            '|' | '^' | '$' => {
                before = Before::Nothing;
                i += 1;
            }
            '*' | '+' | '?' | '{' => {
                let len = if c == '{' {
                    quantifier_len(&chars[i..]).ok_or(
                        "`{` must start a repetition `{n}`, `{n,}` or `{n,m}` (digits only); write `\\{` for the character",
                    )?
                } else {
                    1
                };
                before = match (before, c) {
                    (Before::Atom, _) => Before::Quantified,
                    (Before::Quantified, '?') => Before::Lazy,
                    (Before::Nothing, _) => {
                        return Err(format!(
                            "`{c}` has nothing to repeat; put it after a character, a class or a group, or escape it"
                        ));
                    }
                    _ => {
                        return Err(format!(
                            "`{c}` repeats something already repeated; use one repetition per character, class or group (group first to repeat a repetition)"
                        ));
                    }
                };
                i += len;
            }
            '}' | ']' => {
                return Err(format!(
                    "an unescaped `{c}`; write `\\{c}` for the character"
                ));
            }
            '[' => {
                i = class_end(&chars, i)?;
                before = Before::Atom;
            }
            _ => {
                before = Before::Atom;
                i += 1;
            }
        }
    }
    Ok(())
}

/// The length of `{n}`, `{n,}` or `{n,m}` at the start of `chars`, when
/// it is one.
fn quantifier_len(chars: &[char]) -> Option<usize> {
    let close = chars.iter().position(|&c| c == '}')?;
    let inside: String = chars[1..close].iter().collect();
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let ok = match inside.split_once(',') {
        None => digits(&inside),
        Some((min, max)) => digits(min) && (max.is_empty() || digits(max)),
    };
    ok.then_some(close + 1)
}

/// Checks the class that starts at `chars[start]` (`[`) and returns the
/// position after its `]`. An unterminated class is left to the regex
/// parser, which refuses it with its own message.
fn class_end(chars: &[char], start: usize) -> Result<usize, String> {
    let mut i = start + 1;
    if chars.get(i) == Some(&'^') {
        i += 1;
    }
    if chars.get(i) == Some(&']') {
        return Err(
            "a class cannot start with `]` (an empty class on the device page); write `\\]` for the character"
                .into(),
        );
    }
    while i < chars.len() {
        match chars[i] {
            ']' => return Ok(i + 1),
            '\\' => {
                let Some(&next) = chars.get(i + 1) else {
                    return Ok(chars.len());
                };
                if !(ESCAPABLE.contains(next) || next == '-') {
                    return Err(if next.is_ascii_alphanumeric() {
                        format!(
                            "`\\{next}` in a class is read differently by the server and the device page (or not at all); list the characters or a range instead, e.g. `0-9`"
                        )
                    } else {
                        format!(
                            "`\\{next}` is not portable; a backslash may only stand before one of {ESCAPABLE} or `-`"
                        )
                    });
                }
                i += 2;
            }
            '[' => {
                return Err(
                    "`[` inside a class is not portable (nested and POSIX classes); write `\\[` for the character"
                        .into(),
                );
            }
            c @ ('&' | '-' | '~') if chars.get(i + 1) == Some(&c) => {
                return Err(format!(
                    "`{c}{c}` inside a class is not portable (a set operation on the server); escape or reorder the characters"
                ));
            }
            _ => i += 1,
        }
    }
    Ok(chars.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: Value) -> FieldSpec {
        serde_json::from_value(json).unwrap()
    }

    fn problem(json: Value) -> FieldProblem {
        IndexField::build(&spec(json)).unwrap_err()
    }

    fn text(pattern: &str) -> Result<IndexField, FieldProblem> {
        IndexField::build(&spec(serde_json::json!({
            "name": "f", "label": "F", "type": "text", "pattern": pattern
        })))
    }

    #[test]
    fn fields_read_from_toml_with_defaults() {
        let field: FieldSpec =
            toml::from_str("name = \"po\"\nlabel = \"PO\"\ntype = \"text\"").unwrap();
        assert!(!field.required);
        assert_eq!(field.pattern, None);
        assert_eq!(field.choices, None);
        assert_eq!(
            serde_json::to_value(&field).unwrap(),
            serde_json::json!({"name": "po", "label": "PO", "type": "text"}),
            "a field writes back what was configured"
        );
    }

    #[test]
    fn a_misshapen_field_is_refused_with_its_name() {
        let err = |json: Value| {
            serde_json::from_value::<FieldSpec>(json)
                .unwrap_err()
                .to_string()
        };
        let e =
            err(serde_json::json!({"name": "po", "label": "PO", "type": "text", "patern": "x"}));
        assert!(e.contains("index field `po`: unknown key `patern`"), "{e}");
        let e = err(
            serde_json::json!({"name": "po", "label": "PO", "type": "text", "required": "yes"}),
        );
        assert!(
            e.contains("index field `po`: `required` must be true or false"),
            "{e}"
        );
        let e = err(serde_json::json!({"name": "po", "type": "text"}));
        assert!(e.contains("index field `po`: `label` is missing"), "{e}");
        let e = err(
            serde_json::json!({"name": "d", "label": "D", "type": "choice", "choices": ["a", 1]}),
        );
        assert!(
            e.contains("index field `d`: `choices` must be a list of strings"),
            "{e}"
        );
        let e = err(serde_json::json!({"label": "D", "type": "choice"}));
        assert!(e.contains("an index field: `name` is missing"), "{e}");
    }

    #[test]
    fn each_configuration_rule_has_its_refusal() {
        use serde_json::json;
        assert_eq!(
            problem(json!({"name": "po", "label": "PO", "type": "string"})),
            FieldProblem::UnknownType("string".into())
        );
        assert_eq!(
            problem(json!({"name": "po", "label": "PO", "type": "text", "choices": ["a"]})),
            FieldProblem::ChoicesNotAllowed(FieldType::Text)
        );
        assert_eq!(
            problem(json!({"name": "d", "label": "D", "type": "choice"})),
            FieldProblem::ChoicesMissing
        );
        assert_eq!(
            problem(json!({"name": "d", "label": "D", "type": "choice", "choices": []})),
            FieldProblem::ChoicesMissing
        );
        assert_eq!(
            problem(
                json!({"name": "d", "label": "D", "type": "choice", "choices": ["A", "B", "A"]})
            ),
            FieldProblem::DuplicateChoice("A".into())
        );
        assert!(matches!(
            problem(json!({"name": "d", "label": "D", "type": "choice", "choices": ["A", ""]})),
            FieldProblem::BadChoice(_)
        ));
        assert_eq!(
            problem(json!({"name": "n", "label": "N", "type": "number", "pattern": "[0-9]+"})),
            FieldProblem::PatternNotAllowed(FieldType::Number)
        );
        for bad in ["", "-x", ".x", "a b", "a/b", "é", &"x".repeat(65)] {
            assert!(
                matches!(
                    problem(json!({"name": bad, "label": "L", "type": "text"})),
                    FieldProblem::BadName(_)
                ),
                "{bad:?}"
            );
        }
        for bad in ["", "a\nb", "tab\there", &"x".repeat(65)] {
            assert_eq!(
                problem(json!({"name": "f", "label": bad, "type": "text"})),
                FieldProblem::BadLabel,
                "{bad:?}"
            );
        }
        assert!(
            IndexField::build(&spec(
                json!({"name": "cost.center-1_a", "label": &"é".repeat(64), "type": "date"})
            ))
            .is_ok()
        );
    }

    #[test]
    fn errors_name_the_field_or_its_position() {
        use serde_json::json;
        let specs = vec![
            spec(json!({"name": "po", "label": "PO", "type": "text"})),
            spec(json!({"name": "po", "label": "PO again", "type": "number"})),
        ];
        let e = build_fields(&specs).unwrap_err();
        assert_eq!(e.problem, FieldProblem::DuplicateName);
        assert_eq!(
            e.to_string(),
            "index field `po`: is declared twice; give each field of a workflow its own name"
        );
        let specs = vec![
            spec(json!({"name": "po", "label": "PO", "type": "text"})),
            spec(json!({"name": "bad name", "label": "B", "type": "text"})),
        ];
        let e = build_fields(&specs).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("index field #2: `bad name` is not a valid field name"),
            "{e}"
        );
        let specs = vec![spec(
            json!({"name": "amount", "label": "A", "type": "money"}),
        )];
        assert_eq!(
            build_fields(&specs).unwrap_err().to_string(),
            "index field `amount`: unknown type `money`; use text, number, choice or date"
        );
    }

    #[test]
    fn patterns_keep_to_what_both_dialects_read_alike() {
        for good in [
            "[0-9]{6}",
            "[A-Z]{2}-[0-9]{4,}",
            "(?:INV|CN)[0-9]{1,8}",
            "a|b|",
            "x*?y+?z??",
            r"[\]\-\\^]+",
            r"[a-z-]",
            r"\(\)\{\}\[\]\/\.",
            "[^ ]+",
            ".+@.+",
            "Müller|Ørsted",
            "(a*)+",
        ] {
            assert!(text(good).is_ok(), "{good}: {:?}", text(good).err());
        }
        for (bad, says) in [
            (r"\d{6}", "[0-9]"),
            (r"\w+", "character class"),
            (r"\s", "character class"),
            (r"\bx", "character class"),
            (r"(a)\1", "character class"),
            (r"\x41", "character class"),
            (r"\p{L}", "character class"),
            (r"\#", "not portable"),
            (r"\-", "not portable"),
            ("(?i)abc", "`(?` is only allowed"),
            ("(?=a)a", "`(?` is only allowed"),
            ("(?!a)b", "`(?` is only allowed"),
            ("(?<=a)b", "`(?` is only allowed"),
            ("(?P<n>a)", "`(?` is only allowed"),
            ("(?<n>a)", "`(?` is only allowed"),
            ("a**", "already repeated"),
            ("a*+", "already repeated"),
            ("a{2}{3}", "already repeated"),
            ("a+??", "already repeated"),
            ("*a", "nothing to repeat"),
            ("^*a", "nothing to repeat"),
            ("(|*)", "nothing to repeat"),
            ("a{,3}", "`{` must start a repetition"),
            ("a{2, 3}", "`{` must start a repetition"),
            ("a{", "`{` must start a repetition"),
            ("a}", "unescaped `}`"),
            ("a]", "unescaped `]`"),
            ("[]a]", "cannot start with `]`"),
            ("[^]a]", "cannot start with `]`"),
            ("[[:alpha:]]", "`[` inside a class"),
            ("[a[bc]]", "`[` inside a class"),
            ("[a-z&&[^c]]", "`&&` inside a class"),
            ("[a--b]", "`--` inside a class"),
            ("[a~~b]", "`~~` inside a class"),
            (r"[\d]", "in a class"),
            ("abc\\", "lone `\\`"),
            ("", "empty"),
            ("(ab", "unclosed group"),
            ("[z-a]", "invalid character class range"),
        ] {
            match text(bad) {
                Err(FieldProblem::BadPattern { pattern, reason }) => {
                    assert_eq!(pattern, bad);
                    assert!(reason.contains(says), "{bad}: {reason}");
                    assert!(!reason.contains('\n'), "{bad}: one line: {reason}");
                }
                other => panic!("{bad} was not refused as a pattern: {other:?}"),
            }
        }
    }

    #[test]
    fn the_api_form_has_all_six_keys() {
        let field = IndexField::build(&spec(
            serde_json::json!({"name": "po", "label": "PO", "type": "text", "required": true}),
        ))
        .unwrap();
        assert_eq!(
            serde_json::to_value(&field).unwrap(),
            serde_json::json!({"name": "po", "label": "PO", "type": "text", "required": true, "pattern": null, "choices": []})
        );
    }

    #[test]
    fn metadata_is_checked_field_by_field_and_other_keys_pass() {
        let fields = build_fields(&[
            spec(serde_json::json!({"name": "po", "label": "PO number", "type": "text", "required": true, "pattern": "[0-9]{6}"})),
            spec(serde_json::json!({"name": "dept", "label": "Department", "type": "choice", "choices": ["Sales", "Legal"]})),
        ])
        .unwrap();
        let metadata = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(
            check_metadata(
                &fields,
                &metadata(&[("po", "123456"), ("free", "anything")])
            ),
            Ok(())
        );
        let refusal = check_metadata(&fields, &metadata(&[("po", "12345")])).unwrap_err();
        assert_eq!(
            (refusal.field.as_str(), refusal.rule),
            ("po", Rule::Pattern)
        );
        assert_eq!(
            refusal.message,
            "index field `po` (PO number) does not match its pattern `[0-9]{6}` (the whole value must match); correct the value"
        );
        let refusal =
            check_metadata(&fields, &metadata(&[("po", "123456"), ("dept", "sales")])).unwrap_err();
        assert_eq!(
            (refusal.field.as_str(), refusal.rule),
            ("dept", Rule::Choice)
        );
        assert!(
            refusal.message.contains("exactly one of `Sales`, `Legal`"),
            "{}",
            refusal.message
        );
        let refusal = check_metadata(&fields, &metadata(&[])).unwrap_err();
        assert_eq!(refusal.rule, Rule::Required);
        assert!(
            refusal.message.contains("`po` (PO number) is required"),
            "{}",
            refusal.message
        );
    }

    /// One case of the table the server and the device page share.
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Case {
        field: Value,
        value: Option<String>,
        ok: bool,
        rule: Option<Rule>,
    }

    /// The field of a case in the API form, read as configuration: the API
    /// always writes `pattern` and `choices`, configuration only where they
    /// apply.
    fn field_of(case: &Case) -> IndexField {
        let mut field = case
            .field
            .as_object()
            .expect("a field is an object")
            .clone();
        assert_eq!(
            field.keys().map(String::as_str).collect::<BTreeSet<_>>(),
            FIELD_KEYS.into_iter().collect::<BTreeSet<_>>(),
            "a case's field has the six keys of the API form: {}",
            case.field
        );
        if field["type"] != "choice" {
            assert_eq!(field.remove("choices"), Some(Value::Array(vec![])));
        }
        let spec: FieldSpec = serde_json::from_value(Value::Object(field)).unwrap();
        let built = IndexField::build(&spec)
            .unwrap_or_else(|e| panic!("the case's field {} is not valid: {e}", case.field));
        assert_eq!(
            serde_json::to_value(&built).unwrap(),
            case.field,
            "the API form of the built field is the case's field"
        );
        built
    }

    #[test]
    fn the_shared_table_of_cases_holds() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/index_fields/cases.json"
        );
        let text = std::fs::read_to_string(path).unwrap();
        let cases: Vec<Case> = serde_json::from_str(&text).unwrap();
        let mut rules_seen = BTreeSet::new();
        let mut types_seen = BTreeSet::new();
        for case in &cases {
            let field = field_of(case);
            types_seen.insert(field.kind().as_str());
            assert_eq!(
                case.ok,
                case.rule.is_none(),
                "`ok` and `rule` agree in {}",
                serde_json::to_string(&case.field).unwrap()
            );
            let got = field.check(case.value.as_deref());
            assert_eq!(
                got,
                case.rule.map_or(Ok(()), Err),
                "field {} with value {:?}",
                case.field,
                case.value
            );
            if let Err(rule) = got {
                rules_seen.insert(rule);
            }
        }
        assert_eq!(
            rules_seen.len(),
            5,
            "the table covers every rule: {rules_seen:?}"
        );
        assert_eq!(
            types_seen.len(),
            4,
            "the table covers every type: {types_seen:?}"
        );
    }

    #[test]
    fn numbers_and_dates_follow_their_spelled_out_rules() {
        for good in [
            "0",
            "-0",
            "007",
            "12.50",
            "-3.25",
            "123456789012345678901234567890",
        ] {
            assert!(is_number(good), "{good}");
        }
        for bad in [
            "", "-", "+1", "1.", ".5", "-.5", "1e3", " 1", "1 ", "1,5", "--1", "1.2.3", "١٢",
        ] {
            assert!(!is_number(bad), "{bad}");
        }
        for good in [
            "2028-02-29",
            "2000-02-29",
            "2026-12-31",
            "0001-01-01",
            "2026-04-30",
        ] {
            assert!(is_date(good), "{good}");
        }
        for bad in [
            "2027-02-29",
            "1900-02-29",
            "2026-02-30",
            "2026-13-01",
            "2026-00-10",
            "2026-04-31",
            "2026-01-00",
            "2026-1-01",
            "26-01-01",
            "2026/01/01",
            "2026-01-01T00:00",
            " 2026-01-01",
            "2026-٠١-01",
            "+202-01-01",
        ] {
            assert!(!is_date(bad), "{bad}");
        }
    }
}
