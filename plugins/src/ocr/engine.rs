//! The external programs OCR relies on — tesseract and poppler's `pdftoppm` —
//! probed once and run one process per page. It must not decide which pages
//! to process; the OCR step does.
//!
//! Every child is spawned with `kill_on_drop(true)`: when the step times out
//! or the job's future is dropped (the gateway stops its workers), the
//! pending wait is dropped with the child handle and the process is killed.
//! Neither tesseract nor pdftoppm forks helpers, so killing the direct child
//! stops all the work; a process group is therefore not needed.
//!
//! `kill_on_drop` needs a living gateway to do the killing: after a
//! `kill -9` or a crash, an engine would go on writing into the spool of a
//! server that is gone (and of the next one started on it). So engines are
//! started through util-linux's `setpriv --pdeathsig KILL`, which makes the
//! kernel kill them when the gateway's thread that started them ends, the
//! process included (`unsafe` being forbidden, the gateway cannot ask for
//! that itself). Without `setpriv` they are started directly, and the
//! systemd unit's `KillMode=control-group` still stops them with the
//! service.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;
use tokio::sync::OnceCell;

use crate::plugin::StepError;

/// How long a version or language probe may take before the tool counts as
/// broken.
const PROBE_TIMEOUT: Duration = Duration::from_secs(15);

/// A program found by a probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tool {
    /// How it is invoked.
    pub path: PathBuf,
    /// Its version line, e.g. `tesseract 5.3.0`.
    pub version: String,
    /// For the OCR engine, the installed language models.
    pub languages: Vec<String>,
}

/// What a probe found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    /// The tool works.
    Present(Tool),
    /// The tool is missing or broken: why, and what to install.
    Absent(String),
}

impl Probe {
    /// Probes the OCR engine with `--version` and `--list-langs`.
    pub async fn tesseract(path: &Path) -> Probe {
        let version = match run_probe(path, &["--version"]).await {
            Ok(out) => first_line_starting(&out, "tesseract").unwrap_or_else(|| {
                format!("tesseract (unrecognised version output: {})", out.trim())
            }),
            Err(why) => return Probe::Absent(format!("{why}: install tesseract-ocr")),
        };
        let languages = match run_probe(path, &["--list-langs"]).await {
            Ok(out) => out
                .lines()
                .filter(|line| !line.trim().is_empty() && !line.contains(' '))
                .map(|line| line.trim().to_string())
                .collect::<Vec<_>>(),
            Err(why) => return Probe::Absent(format!("{why}: reinstall tesseract-ocr")),
        };
        if languages.is_empty() {
            return Probe::Absent(format!(
                "{version} has no language models: install tesseract-ocr-eng"
            ));
        }
        Probe::Present(Tool {
            path: path.to_path_buf(),
            version,
            languages,
        })
    }

    /// Probes poppler's PDF rasteriser with `-v`.
    pub async fn pdftoppm(path: &Path) -> Probe {
        match run_probe(path, &["-v"]).await {
            Ok(out) => Probe::Present(Tool {
                path: path.to_path_buf(),
                version: first_line_starting(&out, "pdftoppm")
                    .unwrap_or_else(|| "pdftoppm".to_string()),
                languages: Vec::new(),
            }),
            Err(why) => Probe::Absent(format!("{why}: install poppler-utils")),
        }
    }
}

fn first_line_starting(text: &str, prefix: &str) -> Option<String> {
    text.lines()
        .map(str::trim)
        .find(|line| line.starts_with(prefix))
        .map(str::to_string)
}

/// Runs `path args` and returns stdout and stderr together (tools disagree on
/// where they print their version).
async fn run_probe(path: &Path, args: &[&str]) -> Result<String, String> {
    let shown = path.display();
    let child = Command::new(path)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => format!("`{shown}` not found"),
            _ => format!(
                "`{shown}` cannot be started: {}",
                crate::fsutil::io_cause(&e)
            ),
        })?;
    let output = tokio::time::timeout(PROBE_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| {
            format!(
                "`{shown} {}` did not answer within {PROBE_TIMEOUT:?}",
                args.join(" ")
            )
        })?
        .map_err(|e| format!("`{shown}` failed: {}", crate::fsutil::io_cause(&e)))?;
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push('\n');
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    if !output.status.success() {
        return Err(format!(
            "`{shown} {}` exited with {}: {}",
            args.join(" "),
            output.status,
            last_line(&text)
        ));
    }
    Ok(text)
}

fn last_line(text: &str) -> &str {
    text.lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or("no message")
}

/// The message for a job that needs OCR on a server without the engine.
pub fn engine_missing(why: &str) -> StepError {
    StepError::permanent(format!(
        "OCR engine not installed on this server: install tesseract-ocr ({why})"
    ))
}

/// Runs one single-threaded tesseract process: `input` to `out_base.pdf`
/// (searchable, image plus text layer) and `out_base.txt` in one pass.
pub async fn recognise(
    engine: &Path,
    input: &Path,
    out_base: &Path,
    languages: &str,
    dpi: Option<u32>,
    what: &str,
) -> Result<(), StepError> {
    let mut command = Command::new(engine);
    command.arg(input).arg(out_base).args(["-l", languages]);
    if let Some(dpi) = dpi {
        command.args(["--dpi", &dpi.to_string()]);
    }
    command
        .args(["pdf", "txt"])
        // One thread per process: pages run in parallel across processes,
        // which on small machines is much faster than tesseract's OpenMP.
        .env("OMP_THREAD_LIMIT", "1");
    run_to_end(command, what, |e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            engine_missing(&format!("`{}` not found", engine.display()))
        }
        _ => StepError::from_io(format!("OCR of {what} could not start tesseract"), &e),
    })
    .await
}

/// Rasterises page `page` (counting from 1) of a PDF to `out_base.png`.
pub async fn rasterise(
    pdftoppm: &Path,
    pdf: &Path,
    page: usize,
    dpi: u32,
    out_base: &Path,
    what: &str,
) -> Result<PathBuf, StepError> {
    let mut command = Command::new(pdftoppm);
    let page = page.to_string();
    command
        .args([
            "-r",
            &dpi.to_string(),
            "-png",
            "-singlefile",
            "-f",
            &page,
            "-l",
            &page,
        ])
        .arg(pdf)
        .arg(out_base);
    run_to_end(command, what, |e| match e.kind() {
        std::io::ErrorKind::NotFound => StepError::permanent(format!(
            "PDF pages cannot be rasterised for OCR on this server: install poppler-utils (`{}` not found)",
            pdftoppm.display()
        )),
        _ => StepError::from_io(format!("rasterising {what} could not start pdftoppm"), &e),
    })
    .await?;
    Ok(super::with_suffix(out_base, ".png"))
}

/// `setpriv` when it works here and supports `--pdeathsig`, probed once.
async fn death_signal_wrapper() -> Option<&'static Path> {
    static SETPRIV: OnceCell<Option<PathBuf>> = OnceCell::const_new();
    SETPRIV
        .get_or_init(|| async {
            let setpriv = Path::new("setpriv");
            let works = Command::new(setpriv)
                .args(["--pdeathsig", "KILL", "--", "true"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .status()
                .await
                .is_ok_and(|s| s.success());
            if !works {
                tracing::warn!(
                    "setpriv (util-linux) with --pdeathsig is not available: OCR engines are \
                     started directly and may outlive a gateway that is killed"
                );
            }
            works.then(|| setpriv.to_path_buf())
        })
        .await
        .as_deref()
}

/// The same command, started through `setpriv --pdeathsig KILL` so the
/// kernel kills it when the gateway dies.
fn with_death_signal(command: &Command, setpriv: &Path) -> Command {
    let original = command.as_std();
    let mut wrapped = Command::new(setpriv);
    wrapped
        .args(["--pdeathsig", "KILL", "--"])
        .arg(original.get_program())
        .args(original.get_args());
    for (key, value) in original.get_envs() {
        match value {
            Some(value) => wrapped.env(key, value),
            None => wrapped.env_remove(key),
        };
    }
    if let Some(dir) = original.get_current_dir() {
        wrapped.current_dir(dir);
    }
    wrapped
}

/// setpriv's exit codes when it could not start the program (util-linux's
/// `EX_EXEC_ENOENT` and `EX_EXEC_FAILED`), turned back into the error a
/// direct start would have given.
fn exec_failure(status: std::process::ExitStatus) -> Option<std::io::Error> {
    match status.code() {
        Some(127) => Some(std::io::ErrorKind::NotFound.into()),
        Some(126) => Some(std::io::ErrorKind::PermissionDenied.into()),
        _ => None,
    }
}

async fn run_to_end(
    command: Command,
    what: &str,
    spawn_error: impl FnOnce(std::io::Error) -> StepError,
) -> Result<(), StepError> {
    let program = command
        .as_std()
        .get_program()
        .to_string_lossy()
        .into_owned();
    let wrapper = death_signal_wrapper().await;
    let mut command = match wrapper {
        Some(setpriv) => with_death_signal(&command, setpriv),
        None => command,
    };
    let spawned = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let child = match spawned {
        Ok(child) => child,
        Err(e) => return Err(spawn_error(e)),
    };
    // The child handle lives inside this future: dropping the future (step
    // timeout, job cancelled) drops the handle, which kills the process.
    let output = child
        .wait_with_output()
        .await
        .map_err(|e| StepError::from_io(format!("waiting for {program} on {what}"), &e))?;
    if output.status.success() {
        return Ok(());
    }
    if wrapper.is_some()
        && let Some(e) = exec_failure(output.status)
    {
        return Err(spawn_error(e));
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    Err(StepError::transient(format!(
        "{program} failed on {what} ({}): {}",
        output.status,
        last_line(&stderr)
    )))
}

#[cfg(test)]
mod death_signal_tests {
    use super::*;

    /// The wrapper (when present) must hand the engine the same arguments
    /// and environment, and a missing program must still read as missing.
    #[tokio::test]
    async fn engines_started_through_the_wrapper_behave_as_started_directly() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg("printf '%s %s' \"$X\" \"$1\" > \"$2\"")
            .arg("sh")
            .arg("an argument")
            .arg(&out)
            .env("X", "from-env");
        run_to_end(command, "a test", |e| StepError::permanent(e.to_string()))
            .await
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            "from-env an argument"
        );
        let missing = Command::new("/nonexistent/tesseract");
        let err = run_to_end(missing, "a test", |e| {
            StepError::permanent(format!("spawn: {:?}", e.kind()))
        })
        .await
        .unwrap_err();
        assert_eq!(err.reason(), "spawn: NotFound");
    }
}
