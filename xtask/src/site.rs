//! A throw-away site on this machine, shared by the demo and the
//! benchmarks: the built binaries, a vendor key of our own with licenses
//! issued by it, password hashes, and gateway processes started and waited
//! for through their run files.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{Result, exec, root};

/// The binaries of one build profile.
#[derive(Clone)]
pub struct Tools {
    dir: PathBuf,
}

/// A vendor key pair made for this site.
pub struct Vendor {
    pub public_key: String,
    private_key: PathBuf,
}

impl Tools {
    /// Builds the gateway, simulator and license tool in `profile` (`debug`
    /// or `release`) and returns where they are.
    pub fn build(profile: &str) -> Result<Tools> {
        let mut cargo = Command::new("cargo");
        cargo.args([
            "build",
            "--bins",
            "-p",
            "gateway",
            "-p",
            "mfd-sim",
            "-p",
            "licensing",
        ]);
        if profile == "release" {
            cargo.arg("--release");
        }
        exec(&mut cargo)?;
        Ok(Tools {
            dir: target_dir().join(profile),
        })
    }

    pub fn bin(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Makes a vendor key pair under `dir/vendor`.
    pub fn vendor(&self, dir: &Path) -> Result<Vendor> {
        let out = dir.join("vendor");
        output(
            Command::new(self.bin("license-tool"))
                .arg("keygen")
                .arg("--out")
                .arg(&out),
        )?;
        let public_key =
            std::fs::read_to_string(out.join("vendor.pub")).map_err(|e| e.to_string())?;
        Ok(Vendor {
            public_key: public_key.trim().to_owned(),
            private_key: out.join("vendor.key"),
        })
    }

    /// Issues a license key for `role` (`03` or `04`).
    pub fn issue(&self, vendor: &Vendor, role: &str, serial: u32, seats: u32) -> Result<String> {
        output(
            Command::new(self.bin("license-tool"))
                .arg("issue")
                .arg("--vendor-key")
                .arg(&vendor.private_key)
                .args([
                    "--role",
                    role,
                    "--serial",
                    &serial.to_string(),
                    "--seats",
                    &seats.to_string(),
                ]),
        )
    }

    /// A password hash for the configuration file. Fewer iterations than the
    /// production default, so that many simulated logins stay quick.
    pub fn hash_password(&self, password: &str) -> Result<String> {
        let mut child = Command::new(self.bin("gateway"))
            .args(["user", "hash-password", "--iterations", "10000"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        std::io::Write::write_all(&mut child.stdin.take().expect("piped"), password.as_bytes())
            .map_err(|e| e.to_string())?;
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// The gateway command line for one instance of `config`.
    pub fn gateway(&self, config: &Path, instance: &str) -> Command {
        let mut c = Command::new(self.bin("gateway"));
        c.arg("--config")
            .arg(config)
            .arg("--instance")
            .arg(instance);
        c
    }

    /// Starts `gateway serve` with its output in `log`, waits until it
    /// listens, and returns the process and its run file.
    pub fn serve(
        &self,
        config: &Path,
        instance: &str,
        data_dir: &Path,
        log: &Path,
    ) -> Result<(Child, Value)> {
        let file = std::fs::File::create(log).map_err(|e| e.to_string())?;
        let mut child = self
            .gateway(config, instance)
            .arg("serve")
            .stdout(file.try_clone().map_err(|e| e.to_string())?)
            .stderr(file)
            .spawn()
            .map_err(|e| format!("cannot start {instance}: {e}"))?;
        let run_file = data_dir.join(format!("{instance}.run.json"));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(text) = std::fs::read_to_string(&run_file)
                && let Ok(v) = serde_json::from_str(&text)
            {
                return Ok((child, v));
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "{instance} exited ({status}); see {}",
                    log.display()
                ));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err(format!(
                    "{instance} did not start within 30 s; see {}",
                    log.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Where cargo puts build output: `CARGO_TARGET_DIR` when set, else the
/// workspace's `target/`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            std::path::absolute(PathBuf::from(dir)).unwrap_or_else(|_| root().join("target"))
        }
        _ => root().join("target"),
    }
}

/// The address of the first listener of `kind` in a run file.
pub fn listener(info: &Value, kind: &str) -> String {
    info["listeners"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|l| l["kind"] == kind)
        .and_then(|l| l["addr"].as_str())
        .unwrap_or_default()
        .to_owned()
}

/// Runs a command and returns its trimmed stdout, failing with its output.
pub fn output(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {shown}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{shown} failed: {}{}",
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}
