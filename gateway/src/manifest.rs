//! The job manifest: the first part of a job upload, as devices send it and
//! as the job log stores it. Parsing and the checks that need nothing but
//! the manifest itself live here; whether its workflow exists is the
//! intake's question (it needs the configuration in use).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::names::check_metadata_key;

/// At most this many metadata entries.
pub const MAX_METADATA_KEYS: usize = 64;
/// At most this many characters in one metadata value.
pub const MAX_METADATA_VALUE_CHARS: usize = 1024;

/// The first part of a job upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub workflow: String,
    pub page_count: u32,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

/// Why a manifest is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// Not what the API expects; the message says what is wrong.
    #[error("{0}")]
    Invalid(String),
    /// More pages than the configured limit.
    #[error("the job has {count} pages but at most {limit} are allowed")]
    TooManyPages { count: u32, limit: u32 },
}

impl Manifest {
    /// Reads a manifest from the JSON a device sent.
    pub fn parse(raw: &[u8]) -> Result<Manifest, ManifestError> {
        serde_json::from_slice(raw)
            .map_err(|e| ManifestError::Invalid(format!("the manifest is not valid: {e}")))
    }

    /// Checks page count and metadata against the rules and `max_pages`.
    pub fn check(&self, max_pages: u32) -> Result<(), ManifestError> {
        if self.page_count == 0 {
            return Err(ManifestError::Invalid(
                "page_count must be at least 1".into(),
            ));
        }
        if self.page_count > max_pages {
            return Err(ManifestError::TooManyPages {
                count: self.page_count,
                limit: max_pages,
            });
        }
        if self.metadata.len() > MAX_METADATA_KEYS {
            return Err(ManifestError::Invalid(format!(
                "metadata has {} keys; at most {MAX_METADATA_KEYS} are allowed",
                self.metadata.len()
            )));
        }
        for (k, v) in &self.metadata {
            check_metadata_key(k).map_err(ManifestError::Invalid)?;
            if v.chars().count() > MAX_METADATA_VALUE_CHARS || v.chars().any(char::is_control) {
                return Err(ManifestError::Invalid(format!(
                    "metadata value of `{k}` must be at most {MAX_METADATA_VALUE_CHARS} characters without control characters"
                )));
            }
        }
        Ok(())
    }

    /// The manifest in one canonical form (sorted metadata, no extra
    /// whitespace), whose hash tells a resubmission from a different job
    /// that reuses an id.
    pub fn canonical(&self) -> String {
        serde_json::to_string(self).expect("manifest serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(json: &str) -> Manifest {
        Manifest::parse(json.as_bytes()).unwrap()
    }

    #[test]
    fn canonical_form_ignores_key_order_and_spacing() {
        let a = manifest(r#"{"workflow":"w","page_count":1,"metadata":{"b":"2","a":"1"}}"#);
        let b = manifest(r#"{ "metadata": {"a":"1", "b":"2"}, "page_count": 1, "workflow": "w" }"#);
        assert_eq!(a.canonical(), b.canonical());
    }

    #[test]
    fn bad_manifests_say_what_is_wrong() {
        assert!(matches!(
            Manifest::parse(br#"{"workflow":"w","page_count":1,"extra":1}"#),
            Err(ManifestError::Invalid(m)) if m.contains("unknown field")
        ));
        assert!(matches!(
            manifest(r#"{"workflow":"w","page_count":0}"#).check(10),
            Err(ManifestError::Invalid(m)) if m.contains("at least 1")
        ));
        assert_eq!(
            manifest(r#"{"workflow":"w","page_count":11}"#).check(10),
            Err(ManifestError::TooManyPages {
                count: 11,
                limit: 10
            })
        );
        assert!(matches!(
            manifest(r#"{"workflow":"w","page_count":1,"metadata":{"-x":"1"}}"#).check(10),
            Err(ManifestError::Invalid(m)) if m.contains("metadata key")
        ));
        assert!(matches!(
            manifest(r#"{"workflow":"w","page_count":1,"metadata":{"x":"a\nb"}}"#).check(10),
            Err(ManifestError::Invalid(m)) if m.contains("control characters")
        ));
    }
}
