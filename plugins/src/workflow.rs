//! Workflows: the configuration shapes ([`WorkflowSpec`], [`StepSpec`]) as
//! they come from the gateway's config file, the validated [`Workflow`] the
//! runner executes (with the index fields a job's metadata is checked
//! against), and [`ConfigError`] for everything refused on the way.
//! It must not know the individual plugins; the registry builds them.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::index_fields::{FieldError, FieldSpec, IndexField, MetadataRefusal};
use crate::plugin::Plugin;
use crate::settings::{SettingsError, quoted};

/// One step as configured: `{ plugin = "ocr", languages = ["eng"] }`. The
/// `plugin` key picks the plugin; every other key is one of its settings.
#[derive(Clone, Debug, PartialEq)]
pub struct StepSpec {
    /// The plugin's name.
    pub plugin: String,
    /// The plugin's settings, checked when the workflow is built.
    pub settings: Map<String, Value>,
}

impl<'de> Deserialize<'de> for StepSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut settings = Map::<String, Value>::deserialize(deserializer)?;
        let plugin = match settings.remove("plugin") {
            Some(Value::String(name)) => name,
            Some(other) => {
                return Err(D::Error::custom(format!(
                    "a step's `plugin` must be a plugin name, not {other}"
                )));
            }
            None => {
                return Err(D::Error::custom(
                    "a step needs a `plugin` key naming its plugin (ocr, assemble, folder, mail, webhook)",
                ));
            }
        };
        Ok(StepSpec { plugin, settings })
    }
}

impl Serialize for StepSpec {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut flat = Map::with_capacity(self.settings.len() + 1);
        flat.insert("plugin".into(), Value::String(self.plugin.clone()));
        for (key, value) in &self.settings {
            flat.insert(key.clone(), value.clone());
        }
        flat.serialize(serializer)
    }
}

/// A workflow as configured; its name is its key in the config map.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowSpec {
    /// The steps, in the order they run.
    pub steps: Vec<StepSpec>,
    /// The index fields a job's metadata is checked against, in the order
    /// the panel shows them (`[[workflows.NAME.fields]]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<FieldSpec>,
}

/// A validated workflow, ready to run: every step's plugin built with its
/// checked settings.
#[derive(Clone)]
pub struct Workflow {
    name: String,
    steps: Vec<Arc<dyn Plugin>>,
    fields: Vec<IndexField>,
}

impl Workflow {
    /// A workflow of the given plugins, for plugins other than the built-ins
    /// (tests and embedders). Built-in workflows come from
    /// [`crate::Registry::build_workflow`], which also checks their order.
    pub fn from_plugins(name: impl Into<String>, steps: Vec<Arc<dyn Plugin>>) -> Workflow {
        Workflow {
            name: name.into(),
            steps,
            fields: Vec::new(),
        }
    }

    /// The same workflow with these index fields (already validated, see
    /// [`crate::index_fields::build_fields`]).
    pub fn with_fields(mut self, fields: Vec<IndexField>) -> Workflow {
        self.fields = fields;
        self
    }

    /// The workflow's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The plugin names of the steps, in order.
    pub fn steps(&self) -> Vec<&'static str> {
        self.steps.iter().map(|s| s.name()).collect()
    }

    /// How many steps there are.
    pub fn len(&self) -> usize {
        self.steps.len()
    }

    /// Whether there are no steps.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// The index fields, in their configured order.
    pub fn fields(&self) -> &[IndexField] {
        &self.fields
    }

    /// Checks a job's metadata against the index fields; see
    /// [`crate::index_fields::check_metadata`].
    pub fn check_metadata(
        &self,
        metadata: &BTreeMap<String, String>,
    ) -> Result<(), MetadataRefusal> {
        crate::index_fields::check_metadata(&self.fields, metadata)
    }

    /// Whether a step needs the OCR engine; a server without it can hand
    /// such jobs to its peer.
    pub fn needs_ocr(&self) -> bool {
        self.steps.iter().any(|s| s.name() == "ocr")
    }

    pub(crate) fn step(&self, index: usize) -> &Arc<dyn Plugin> {
        &self.steps[index]
    }
}

impl fmt::Debug for Workflow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Workflow")
            .field("name", &self.name)
            .field("steps", &self.steps())
            .field(
                "fields",
                &self.fields.iter().map(IndexField::name).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Why a workflow was refused. The message names the workflow, the step
/// (counting from 1, as people do) and the plugin, then the problem.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}{problem}", self.prefix())]
pub struct ConfigError {
    /// The workflow's name.
    pub workflow: String,
    /// The step's position counting from 1, when one step is at fault.
    pub step: Option<usize>,
    /// The step's plugin name, when known.
    pub plugin: Option<String>,
    /// What is wrong.
    pub problem: ConfigProblem,
}

impl ConfigError {
    fn prefix(&self) -> String {
        match (&self.step, &self.plugin) {
            (Some(step), Some(plugin)) => {
                format!("workflow `{}`, step {step} (`{plugin}`): ", self.workflow)
            }
            (Some(step), None) => format!("workflow `{}`, step {step}: ", self.workflow),
            _ => format!("workflow `{}`: ", self.workflow),
        }
    }
}

/// The problem part of a [`ConfigError`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigProblem {
    /// The workflow has no steps.
    #[error("has no steps; add at least one (e.g. `assemble` then `folder`)")]
    NoSteps,
    /// The step names a plugin nobody provides.
    #[error("unknown plugin `{plugin}`; expected one of {}", quoted(known))]
    UnknownPlugin {
        /// The name given.
        plugin: String,
        /// The plugins that exist.
        known: Vec<&'static str>,
    },
    /// A setting is unknown, missing or has a bad value.
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// The step cannot work where it stands in the workflow.
    #[error("{0}")]
    Order(String),
    /// An index field is refused (boxed: it is the largest problem).
    #[error(transparent)]
    Field(Box<FieldError>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_deserialise_from_flat_toml_tables() {
        let config = r#"
            [[steps]]
            plugin = "ocr"
            languages = ["eng", "deu"]

            [[steps]]
            plugin = "mail"
            port = 587
        "#;
        let spec: WorkflowSpec = toml::from_str(config).unwrap();
        assert_eq!(spec.steps[0].plugin, "ocr");
        assert_eq!(
            spec.steps[0].settings.get("languages"),
            Some(&serde_json::json!(["eng", "deu"]))
        );
        assert!(!spec.steps[0].settings.contains_key("plugin"));
        assert_eq!(
            spec.steps[1].settings.get("port"),
            Some(&serde_json::json!(587))
        );

        let inline =
            "steps = [{ plugin = \"assemble\" }, { plugin = \"folder\", root = \"/srv\" }]";
        let spec: WorkflowSpec = toml::from_str(inline).unwrap();
        assert_eq!(spec.steps.len(), 2);
    }

    #[test]
    fn steps_round_trip_through_json() {
        let json = r#"{"steps":[{"plugin":"folder","root":"/srv/scans"}]}"#;
        let spec: WorkflowSpec = serde_json::from_str(json).unwrap();
        assert_eq!(serde_json::to_string(&spec).unwrap(), json);
    }

    #[test]
    fn a_step_without_a_plugin_is_refused_with_a_hint() {
        let err = serde_json::from_str::<WorkflowSpec>(r#"{"steps":[{"root":"/srv"}]}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("a step needs a `plugin` key"), "{err}");
        let err = serde_json::from_str::<WorkflowSpec>(r#"{"steps":[{"plugin":7}]}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("must be a plugin name, not 7"), "{err}");
    }
}
