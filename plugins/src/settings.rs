//! Turning a step's free-form settings table into a plugin's typed settings,
//! with errors that name the offending key; and the [`Secret`] type that keeps
//! passwords out of logs. It must not know any plugin's settings.
//!
//! Serde's own messages for a settings table deserialised through
//! `serde_json::from_value` do not say which key held a bad value. This
//! module feeds the table to the settings type one entry at a time and so
//! knows the key whenever a value is refused.

use std::fmt;
use std::time::Duration;

use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

/// What was wrong with a settings table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    /// A key the plugin does not know.
    #[error("unknown setting `{key}`; expected one of {}", quoted(expected))]
    Unknown {
        /// The key.
        key: String,
        /// The keys the plugin knows.
        expected: Vec<&'static str>,
    },
    /// A required key is missing.
    #[error("missing setting `{key}`")]
    Missing {
        /// The key.
        key: String,
    },
    /// A value of the wrong type or out of range.
    #[error("setting `{key}`: {reason}")]
    Bad {
        /// The key.
        key: String,
        /// What was wrong, from the parser or the plugin.
        reason: String,
    },
    /// Anything else the deserializer reported.
    #[error("{0}")]
    Other(String),
}

impl SettingsError {
    /// A semantic problem with one key's value.
    pub fn bad(key: &str, reason: impl fmt::Display) -> Self {
        SettingsError::Bad {
            key: key.to_string(),
            reason: reason.to_string(),
        }
    }
}

pub(crate) fn quoted(keys: &[&str]) -> String {
    keys.iter()
        .map(|k| format!("`{k}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl de::Error for SettingsError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        SettingsError::Other(msg.to_string())
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        SettingsError::Unknown {
            key: field.to_string(),
            expected: expected.to_vec(),
        }
    }

    fn missing_field(field: &'static str) -> Self {
        SettingsError::Missing {
            key: field.to_string(),
        }
    }
}

/// Deserialises a plugin's settings from its table.
pub fn parse<T: DeserializeOwned>(table: &Map<String, Value>) -> Result<T, SettingsError> {
    T::deserialize(TableDeserializer { table })
}

struct TableDeserializer<'a> {
    table: &'a Map<String, Value>,
}

impl<'de> Deserializer<'de> for TableDeserializer<'_> {
    type Error = SettingsError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_map(TableAccess {
            entries: self.table.iter(),
            pending: None,
        })
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct enum identifier ignored_any
    }
}

struct TableAccess<'a> {
    entries: serde_json::map::Iter<'a>,
    pending: Option<(&'a String, &'a Value)>,
}

impl<'de> MapAccess<'de> for TableAccess<'_> {
    type Error = SettingsError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        match self.entries.next() {
            Some((key, value)) => {
                self.pending = Some((key, value));
                let key: de::value::StrDeserializer<'_, SettingsError> =
                    key.as_str().into_deserializer();
                seed.deserialize(key).map(Some)
            }
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, Self::Error> {
        let (key, value) = self
            .pending
            .take()
            .ok_or_else(|| SettingsError::Other("a value was read before its key".into()))?;
        seed.deserialize(value.clone())
            .map_err(|e: serde_json::Error| SettingsError::bad(key, e))
    }
}

/// A password or signing key: usable by the code, shown as `***` by `Debug`
/// and `Display`, so that settings can be logged whole.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

/// A `timeout_secs` setting: whole seconds, at least 1.
pub fn timeout_from(secs: Option<u64>) -> Result<Option<Duration>, SettingsError> {
    match secs {
        Some(0) => Err(SettingsError::bad(
            "timeout_secs",
            "must be at least 1 second",
        )),
        Some(n) => Ok(Some(Duration::from_secs(n))),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Example {
        host: String,
        #[serde(default)]
        port: Option<u16>,
        #[serde(default)]
        password: Option<Secret>,
    }

    fn table(json: &str) -> Map<String, Value> {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn unknown_keys_list_the_known_ones() {
        let err = parse::<Example>(&table(r#"{"host": "a", "tls_mode": "x"}"#)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown setting `tls_mode`; expected one of `host`, `port`, `password`"
        );
    }

    #[test]
    fn bad_values_name_their_key() {
        let err = parse::<Example>(&table(r#"{"host": "a", "port": 70000}"#)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "setting `port`: invalid value: integer `70000`, expected u16"
        );
        let err = parse::<Example>(&table(r#"{"port": 25}"#)).unwrap_err();
        assert_eq!(err.to_string(), "missing setting `host`");
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let parsed = parse::<Example>(&table(r#"{"host": "a", "password": "hunter2"}"#)).unwrap();
        let shown = format!("{parsed:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert_eq!(parsed.password.unwrap().expose(), "hunter2");
    }
}
