//! Where an instance keeps its files. Everything lives under the instance's
//! data directory and carries the instance name (R12), so several instances
//! can share a machine or a clustered file system without mixing their files.

use std::path::{Path, PathBuf};

/// The file layout of one instance.
#[derive(Debug, Clone)]
pub struct InstancePaths {
    pub data_dir: PathBuf,
    pub database: PathBuf,
    pub spool: PathBuf,
    pub work: PathBuf,
    pub logs: PathBuf,
    pub log_file: PathBuf,
    pub tls: PathBuf,
    /// The instance's own delivery folder (`{data_dir}/delivered` in
    /// workflow settings), created at start so the embedded workflows work.
    pub delivered: PathBuf,
    pub temp: PathBuf,
    pub admin_socket: PathBuf,
    pub run_file: PathBuf,
}

impl InstancePaths {
    pub fn new(data_dir: &Path, instance: &str) -> InstancePaths {
        let d = data_dir.to_owned();
        InstancePaths {
            database: d.join(format!("{instance}.sqlite")),
            spool: d.join(format!("{instance}-spool")),
            work: d.join(format!("{instance}-work")),
            logs: d.join("logs"),
            log_file: d.join("logs").join(format!("{instance}.log")),
            tls: d.join("tls"),
            delivered: d.join("delivered"),
            temp: d.join(format!("{instance}-tmp")),
            admin_socket: d.join(format!("{instance}.admin.sock")),
            run_file: d.join(format!("{instance}.run.json")),
            data_dir: d,
        }
    }

    /// A job's scratch directory for the pipeline.
    pub fn work_dir(&self, job: uuid::Uuid) -> PathBuf {
        self.work.join(job.to_string())
    }
}
