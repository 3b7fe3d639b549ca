//! Names that come from outside and end up in paths, URLs, log lines and
//! unit names: one rule per kind, checked once where the name enters, with
//! a message that states the rule. Pure values; no I/O.

use serde::Serialize;

/// What one kind of name may contain.
struct NameRule {
    /// What the name is, for the message ("device name").
    kind: &'static str,
    max_len: usize,
    /// Bytes allowed besides ASCII letters and digits.
    extra: &'static [u8],
    /// Only lower-case letters.
    lower_case: bool,
}

impl NameRule {
    /// Checks `name`. Every name must start with a letter or digit, so none
    /// is `.`, `..`, hidden as a file or taken for a command-line option.
    fn check(&self, name: &str) -> Result<(), String> {
        let ok = !name.is_empty()
            && name.len() <= self.max_len
            && name.as_bytes()[0].is_ascii_alphanumeric()
            && name.bytes().all(|b| {
                (b.is_ascii_alphanumeric() && !(self.lower_case && b.is_ascii_uppercase()))
                    || self.extra.contains(&b)
            });
        if ok {
            return Ok(());
        }
        let extra: Vec<String> = self
            .extra
            .iter()
            .map(|b| char::from(*b).to_string())
            .collect();
        Err(format!(
            "`{}` is not a valid {}: use 1-{} {}letters, digits{}{}, starting with a letter or digit",
            name.chars().take(80).collect::<String>().escape_debug(),
            self.kind,
            self.max_len,
            if self.lower_case { "lower-case " } else { "" },
            if extra.is_empty() { "" } else { " and " },
            extra.join(" ")
        ))
    }
}

const INSTANCE: NameRule = NameRule {
    kind: "instance name",
    max_len: 32,
    extra: b"-",
    lower_case: true,
};
const DEVICE: NameRule = NameRule {
    kind: "device name",
    max_len: 64,
    extra: b"._-",
    lower_case: false,
};
const USER: NameRule = NameRule {
    kind: "user name",
    max_len: 64,
    extra: b"._-@",
    lower_case: false,
};
const WORKFLOW: NameRule = NameRule {
    kind: "workflow name",
    max_len: 64,
    extra: b"_-",
    lower_case: false,
};
const METADATA_KEY: NameRule = NameRule {
    kind: "metadata key",
    max_len: 64,
    extra: b"_.-",
    lower_case: false,
};

/// A valid instance name: it appears in paths, log lines and unit names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct InstanceName(String);

impl InstanceName {
    pub fn parse(name: &str) -> Result<InstanceName, String> {
        INSTANCE.check(name)?;
        Ok(InstanceName(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for InstanceName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A valid device name: it appears in delivered file names and logs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct DeviceName(String);

impl DeviceName {
    pub fn parse(name: &str) -> Result<DeviceName, String> {
        DEVICE.check(name)?;
        Ok(DeviceName(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// User names appear in file names and logs.
pub fn check_user_name(name: &str) -> Result<(), String> {
    USER.check(name)
}

/// Workflow names appear in URLs and manifests.
pub fn check_workflow_name(name: &str) -> Result<(), String> {
    WORKFLOW.check(name)
}

/// Metadata keys of a job manifest become file-name placeholders.
pub fn check_metadata_key(name: &str) -> Result<(), String> {
    METADATA_KEY.check(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_has_its_rule_and_says_it() {
        assert!(InstanceName::parse("gw-a").is_ok());
        let e = InstanceName::parse("GW").unwrap_err();
        assert!(e.contains("lower-case letters, digits and -"), "{e}");
        assert!(DeviceName::parse("mfd_1.lobby").is_ok());
        assert!(check_user_name("ann@example").is_ok());
        assert!(check_user_name("ann smith").is_err());
        assert!(check_workflow_name("scan-to-folder").is_ok());
        assert!(check_workflow_name("a.b").is_err());
        assert!(check_metadata_key("cost.center").is_ok());
        assert!(DeviceName::parse(&"x".repeat(65)).is_err());
    }

    #[test]
    fn names_awkward_as_files_or_arguments_are_refused() {
        for bad in [".", "..", ".hidden", "-rf", "", "a/b", "a\nb"] {
            let e = DeviceName::parse(bad).unwrap_err();
            assert!(e.contains("starting with a letter or digit"), "{e}");
            assert!(!e.contains('\n'), "the message stays on one line: {e}");
        }
    }
}
