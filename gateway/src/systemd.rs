//! `gateway service install|uninstall`: a systemd unit per named instance.
//!
//! The unit runs the gateway with `UMask=0077`, so anything a child process
//! (the OCR engine, the PDF rasteriser) writes is private to the service
//! user as well; the gateway sets the mode of its own files and directories
//! explicitly and does not depend on it. `KillMode=control-group` stops
//! every process of the instance with it, engines included.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// The unit file name of an instance.
pub fn unit_name(instance: &str) -> String {
    format!("scan-gateway-{instance}.service")
}

/// The unit text for an instance.
pub fn unit_text(instance: &str, exe: &Path, config: &Path, user: Option<&str>) -> String {
    let user_line = user.map(|u| format!("User={u}\n")).unwrap_or_default();
    format!(
        "[Unit]\n\
         Description=Scan gateway instance {instance}\n\
         After=network-online.target\n\
         Wants=network-online.target\n\
         \n\
         [Service]\n\
         Type=simple\n\
         {user_line}\
         ExecStart={exe} serve --config {config} --instance {instance}\n\
         UMask=0077\n\
         KillMode=control-group\n\
         Restart=on-failure\n\
         RestartSec=2\n\
         TimeoutStopSec=45\n\
         LimitNOFILE=65536\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n",
        exe = exe.display(),
        config = config.display(),
    )
}

fn unit_dir(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    match explicit {
        Some(dir) => Ok(dir.to_owned()),
        None if Path::new("/run/systemd/system").exists() => {
            Ok(PathBuf::from("/etc/systemd/system"))
        }
        None => bail!(
            "systemd is not running on this machine (no /run/systemd/system): run the instance with \
             `gateway serve --config FILE --instance NAME` under your own supervisor, or write the unit \
             elsewhere with --unit-dir DIR"
        ),
    }
}

/// Writes the unit; returns its path.
pub fn install(
    instance: &str,
    config: &Path,
    user: Option<&str>,
    explicit_dir: Option<&Path>,
) -> anyhow::Result<PathBuf> {
    let dir = unit_dir(explicit_dir)?;
    let config = std::fs::canonicalize(config).with_context(|| {
        format!(
            "the configuration file {} must exist before the unit is installed",
            config.display()
        )
    })?;
    let exe = std::env::current_exe().context("cannot tell where this gateway binary is")?;
    let path = dir.join(unit_name(instance));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::write(&path, unit_text(instance, &exe, &config, user))
        .with_context(|| format!("cannot write {} — are you root?", path.display()))?;
    Ok(path)
}

/// Removes the unit; returns its path, or `None` if it was not installed.
pub fn uninstall(instance: &str, explicit_dir: Option<&Path>) -> anyhow::Result<Option<PathBuf>> {
    let path = unit_dir(explicit_dir)?.join(unit_name(instance));
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(Some(path)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot remove {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_runs_the_named_instance() {
        let text = unit_text(
            "gw-a",
            Path::new("/usr/bin/gateway"),
            Path::new("/etc/scan/gw.toml"),
            Some("scan"),
        );
        assert!(text.contains(
            "ExecStart=/usr/bin/gateway serve --config /etc/scan/gw.toml --instance gw-a\n"
        ));
        assert!(text.contains("User=scan\n"));
        assert!(text.contains("Restart=on-failure"));
        // Files of child processes are private too, and no engine outlives
        // the service.
        assert!(text.contains("\nUMask=0077\n"));
        assert!(text.contains("\nKillMode=control-group\n"));
    }

    #[test]
    fn install_and_uninstall_in_a_given_directory() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("gw.toml");
        std::fs::write(&config, "").unwrap();
        let path = install("gw-b", &config, None, Some(dir.path())).unwrap();
        assert_eq!(path.file_name().unwrap(), "scan-gateway-gw-b.service");
        assert!(
            std::fs::read_to_string(&path)
                .unwrap()
                .contains("--instance gw-b")
        );
        assert_eq!(uninstall("gw-b", Some(dir.path())).unwrap(), Some(path));
        assert_eq!(uninstall("gw-b", Some(dir.path())).unwrap(), None);
        let err = install(
            "gw-b",
            &dir.path().join("missing.toml"),
            None,
            Some(dir.path()),
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("must exist"));
    }
}
