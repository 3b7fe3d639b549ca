//! The `folder` delivery: the document copied under a root directory with a
//! name from a template. It must not create the root itself: a missing root
//! usually means an unmounted share, and writing into the bare mount point
//! would hide the documents.
//!
//! The name is fixed per job (the template must contain `{job_id}` and its
//! other values come from the job), so a repeated delivery overwrites the
//! same file instead of adding a second one. The copy is atomic: a temporary
//! file in the target directory, flushed, renamed over the final name, then
//! the directory flushed.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value};

use super::name::NameTemplate;
use crate::fsutil;
use crate::job::JobContext;
use crate::plugin::{Plugin, StepError, StepFuture, blocking};
use crate::settings::{self, SettingsError};

/// The default name: one directory per day, one file per job.
pub const DEFAULT_NAME: &str = "{date}/{user}-{job_id}.pdf";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FolderSettings {
    root: PathBuf,
    #[serde(default = "default_name")]
    name: String,
    #[serde(default)]
    timeout_secs: Option<u64>,
}

fn default_name() -> String {
    DEFAULT_NAME.to_string()
}

/// The configured `folder` step.
#[derive(Debug)]
pub struct FolderStep {
    root: PathBuf,
    name: NameTemplate,
    timeout: Option<Duration>,
}

impl FolderStep {
    pub(crate) fn build(table: &Map<String, Value>) -> Result<Self, SettingsError> {
        let parsed: FolderSettings = settings::parse(table)?;
        if !parsed.root.is_absolute() {
            return Err(SettingsError::bad("root", "must be an absolute path"));
        }
        let name = NameTemplate::path(&parsed.name).map_err(|e| SettingsError::bad("name", e))?;
        Ok(FolderStep {
            root: parsed.root,
            name,
            timeout: settings::timeout_from(parsed.timeout_secs)?,
        })
    }

    /// Where this step puts `job`'s document.
    pub fn target(&self, job: &JobContext) -> PathBuf {
        self.root.join(self.name.render_path(job))
    }
}

impl Plugin for FolderStep {
    fn name(&self) -> &'static str {
        "folder"
    }

    fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    fn run<'a>(&'a self, job: &'a JobContext) -> StepFuture<'a> {
        let source = job.document_path();
        let root = self.root.clone();
        let target = self.target(job);
        let tag = job.job_id.to_string();
        Box::pin(blocking("delivering to the folder", move || {
            deliver(&source, &root, &target, &tag)
        }))
    }
}

fn deliver(source: &Path, root: &Path, target: &Path, tag: &str) -> Result<(), StepError> {
    let shown = target.display();
    match std::fs::metadata(root) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Err(StepError::permanent(format!(
                "folder delivery to {shown} failed: the root {} is not a directory",
                root.display()
            )));
        }
        Err(e) => {
            return Err(StepError::transient(format!(
                "folder delivery to {shown} failed: the root {} is not available ({}); is the share mounted?",
                root.display(),
                fsutil::io_cause(&e)
            )));
        }
    }
    let dir = target.parent().unwrap_or(root);
    std::fs::create_dir_all(dir).map_err(|e| {
        StepError::from_io(
            format!(
                "folder delivery to {shown} failed creating {}",
                dir.display()
            ),
            &e,
        )
    })?;
    let mut input = File::open(source).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            StepError::permanent(format!(
                "folder delivery to {shown} has no document: {} does not exist",
                source.display()
            ))
        } else {
            StepError::from_io(
                format!(
                    "folder delivery to {shown} cannot read {}",
                    source.display()
                ),
                &e,
            )
        }
    })?;
    let temp = fsutil::partial_path(target, tag);
    let copy = (|| {
        let mut output = File::create(&temp)?;
        std::io::copy(&mut input, &mut output)?;
        output.flush()?;
        output.sync_all()?;
        drop(output);
        std::fs::rename(&temp, target)?;
        fsutil::sync_parent(target)
    })();
    copy.map_err(|e| {
        let _ = std::fs::remove_file(&temp);
        StepError::from_io(format!("folder delivery to {shown} failed"), &e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_root_is_transient_and_never_created() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("document.pdf");
        std::fs::write(&source, b"%PDF-1.7").unwrap();
        let root = dir.path().join("share");
        let err = deliver(&source, &root, &root.join("a/b.pdf"), "t").unwrap_err();
        assert!(err.is_transient());
        assert!(err.reason().contains("is the share mounted?"), "{err}");
        assert!(!root.exists());
    }

    #[test]
    fn a_blocked_directory_fails_naming_the_destination() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("document.pdf");
        std::fs::write(&source, b"%PDF-1.7").unwrap();
        let root = dir.path().join("share");
        std::fs::create_dir(&root).unwrap();
        let target = root.join("x.pdf");
        // A regular file where the day's directory should be cannot be
        // turned into a directory; as root, permissions alone would not stop
        // the write, so this is the portable way to provoke the failure.
        std::fs::write(root.join("day"), b"").unwrap();
        let err = deliver(&source, &root, &root.join("day/x.pdf"), "t").unwrap_err();
        assert!(err.reason().starts_with("folder delivery to "), "{err}");
        deliver(&source, &root, &target, "t").unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"%PDF-1.7");
    }
}
