//! The built-in plugins and this server's capabilities: probes the OCR engine
//! and the PDF rasteriser once at start-up, reports what it found, and builds
//! validated workflows from configuration. It must not run jobs.
//!
//! A missing engine is not an error here: the server still starts, reports
//! the capability as absent (a server without OCR can hand such jobs to its
//! peer), and a job that needs OCR fails with a reason saying what to install.

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use crate::assemble::AssembleStep;
use crate::deliver::{FolderStep, MailStep, WebhookStep};
use crate::ocr::{OcrStep, Probe, RemoteOcr, RemoteSlot, Tool};
use crate::plugin::Plugin;
use crate::settings::SettingsError;
use crate::workflow::{ConfigError, ConfigProblem, Workflow, WorkflowSpec};

/// The names of the built-in plugins, in the order a workflow uses them.
pub const BUILT_IN: [&str; 5] = ["ocr", "assemble", "folder", "mail", "webhook"];

/// Start-up settings of the registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistrySettings {
    /// The tesseract executable; a bare name is looked up on `PATH`.
    pub tesseract_path: PathBuf,
    /// The PDF rasteriser (poppler's `pdftoppm`), for OCR of PDF uploads.
    pub pdftoppm_path: PathBuf,
    /// How many pages are recognised at once, across all jobs of this
    /// process. One single-threaded engine process per core is fastest.
    pub ocr_parallelism: usize,
}

impl Default for RegistrySettings {
    fn default() -> Self {
        RegistrySettings {
            tesseract_path: PathBuf::from("tesseract"),
            pdftoppm_path: PathBuf::from("pdftoppm"),
            ocr_parallelism: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
        }
    }
}

/// One thing this server can or cannot do, for status pages and the peer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capability {
    /// What: `ocr`, `pdf-rasterise`, or a plugin name.
    pub name: String,
    /// Whether it works here.
    pub available: bool,
    /// The version found, or why it is absent and what to install.
    pub detail: String,
}

/// The built-in plugins with what the probes found.
#[derive(Clone)]
pub struct Registry {
    settings: RegistrySettings,
    ocr: Probe,
    rasteriser: Probe,
    ocr_slots: Arc<Semaphore>,
    /// Where OCR runs when the engine is missing here.
    remote_ocr: RemoteSlot,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("settings", &self.settings)
            .field("capabilities", &self.capabilities())
            .finish()
    }
}

impl Registry {
    /// Probes the OCR engine (`tesseract --version`, `--list-langs`) and the
    /// PDF rasteriser. Never fails: what is missing is reported as absent.
    pub async fn detect(settings: RegistrySettings) -> Registry {
        let (ocr, rasteriser) = tokio::join!(
            Probe::tesseract(&settings.tesseract_path),
            Probe::pdftoppm(&settings.pdftoppm_path),
        );
        match &ocr {
            Probe::Present(tool) => tracing::info!(
                version = %tool.version,
                languages = %tool.languages.join(","),
                "OCR engine found"
            ),
            Probe::Absent(why) => tracing::warn!(reason = %why, "OCR engine not available"),
        }
        let permits = settings.ocr_parallelism.max(1);
        Registry {
            settings,
            ocr,
            rasteriser,
            ocr_slots: Arc::new(Semaphore::new(permits)),
            remote_ocr: RemoteSlot::default(),
        }
    }

    /// A registry without external engines and without probing for them
    /// (OCR and PDF rasterising absent), for servers and tests that must not
    /// start processes.
    pub fn without_engines() -> Registry {
        let absent =
            || Probe::Absent("not probed: this registry runs without external engines".into());
        Registry {
            settings: RegistrySettings::default(),
            ocr: absent(),
            rasteriser: absent(),
            ocr_slots: Arc::new(Semaphore::new(1)),
            remote_ocr: RemoteSlot::default(),
        }
    }

    /// The settings the registry was started with.
    pub fn settings(&self) -> &RegistrySettings {
        &self.settings
    }

    /// The OCR engine, when present.
    pub fn ocr_engine(&self) -> Option<&Tool> {
        match &self.ocr {
            Probe::Present(tool) => Some(tool),
            Probe::Absent(_) => None,
        }
    }

    /// Sets the engine OCR steps use when the engine is missing here (the
    /// other server of a pair); workflows built before pick it up too.
    pub fn set_remote_ocr(&self, remote: Arc<dyn RemoteOcr>) {
        self.remote_ocr.set(remote);
    }

    /// Where OCR runs: `this server`, the remote engine's description, or
    /// `None` when nowhere.
    pub fn ocr_runs_on(&self) -> Option<String> {
        match (&self.ocr, self.remote_ocr.get()) {
            (Probe::Present(_), _) => Some("this server".to_owned()),
            (Probe::Absent(_), Some(remote)) if remote.available() => Some(remote.describe()),
            (Probe::Absent(_), Some(_)) => None,
            (Probe::Absent(_), None) => None,
        }
    }

    /// The permits shared by every OCR step of this process.
    pub fn ocr_slots(&self) -> Arc<Semaphore> {
        Arc::clone(&self.ocr_slots)
    }

    /// What this server can do.
    pub fn capabilities(&self) -> Vec<Capability> {
        let mut list = vec![
            probe_capability("ocr", &self.ocr),
            probe_capability("pdf-rasterise", &self.rasteriser),
        ];
        for name in ["assemble", "folder", "mail", "webhook"] {
            list.push(Capability {
                name: name.to_string(),
                available: true,
                detail: "built in".to_string(),
            });
        }
        list
    }

    /// Builds a workflow, refusing unknown plugins, bad settings, step
    /// orders that cannot work and bad index fields.
    pub fn build_workflow(&self, name: &str, spec: &WorkflowSpec) -> Result<Workflow, ConfigError> {
        if spec.steps.is_empty() {
            return Err(ConfigError {
                workflow: name.to_string(),
                step: None,
                plugin: None,
                problem: ConfigProblem::NoSteps,
            });
        }
        let mut steps: Vec<Arc<dyn Plugin>> = Vec::with_capacity(spec.steps.len());
        let mut seen_ocr = false;
        let mut seen_assemble = false;
        for (index, step) in spec.steps.iter().enumerate() {
            let fail = |problem: ConfigProblem| ConfigError {
                workflow: name.to_string(),
                step: Some(index + 1),
                plugin: BUILT_IN
                    .contains(&step.plugin.as_str())
                    .then(|| step.plugin.clone()),
                problem,
            };
            let settings_error = |e: SettingsError| fail(ConfigProblem::Settings(e));
            let plugin: Arc<dyn Plugin> = match step.plugin.as_str() {
                "ocr" => {
                    if seen_ocr {
                        return Err(fail(ConfigProblem::Order(
                            "the pages are already recognised by an earlier `ocr` step; remove one of them"
                                .into(),
                        )));
                    }
                    if seen_assemble {
                        return Err(fail(ConfigProblem::Order(
                            "`ocr` must come before `assemble`, which builds the document from the recognised pages"
                                .into(),
                        )));
                    }
                    seen_ocr = true;
                    Arc::new(
                        OcrStep::build(
                            &step.settings,
                            &self.ocr,
                            &self.rasteriser,
                            self.ocr_slots(),
                            self.remote_ocr.clone(),
                        )
                        .map_err(settings_error)?,
                    )
                }
                "assemble" => {
                    if seen_assemble {
                        return Err(fail(ConfigProblem::Order(
                            "the document is already assembled by an earlier `assemble` step; remove one of them"
                                .into(),
                        )));
                    }
                    seen_assemble = true;
                    Arc::new(AssembleStep::build(&step.settings, seen_ocr).map_err(settings_error)?)
                }
                delivery @ ("folder" | "mail" | "webhook") => {
                    if !seen_assemble {
                        return Err(fail(ConfigProblem::Order(format!(
                            "`{delivery}` delivers the assembled document, but no earlier step produces it; \
                             put an `assemble` step before it"
                        ))));
                    }
                    match delivery {
                        "folder" => {
                            Arc::new(FolderStep::build(&step.settings).map_err(settings_error)?)
                        }
                        "mail" => Arc::new(
                            MailStep::build(&step.settings, index).map_err(settings_error)?,
                        ),
                        _ => Arc::new(
                            WebhookStep::build(&step.settings, index).map_err(settings_error)?,
                        ),
                    }
                }
                other => {
                    return Err(fail(ConfigProblem::UnknownPlugin {
                        plugin: other.to_string(),
                        known: BUILT_IN.to_vec(),
                    }));
                }
            };
            steps.push(plugin);
        }
        let fields = crate::index_fields::build_fields(&spec.fields).map_err(|e| ConfigError {
            workflow: name.to_string(),
            step: None,
            plugin: None,
            problem: ConfigProblem::Field(Box::new(e)),
        })?;
        Ok(Workflow::from_plugins(name, steps).with_fields(fields))
    }
}

fn probe_capability(name: &str, probe: &Probe) -> Capability {
    match probe {
        Probe::Present(tool) => {
            let mut detail = tool.version.clone();
            if !tool.languages.is_empty() {
                detail.push_str("; languages ");
                detail.push_str(&tool.languages.join(", "));
            }
            Capability {
                name: name.to_string(),
                available: true,
                detail,
            }
        }
        Probe::Absent(why) => Capability {
            name: name.to_string(),
            available: false,
            detail: why.clone(),
        },
    }
}
