//! The external programs OCR relies on — tesseract and poppler's `pdftoppm` —
//! probed once and run one process per page. It must not decide which pages
//! to process; the OCR step does.
//!
//! Every child is spawned with `kill_on_drop(true)`: when the step times out
//! or the job's future is dropped (the gateway stops its workers), the
//! pending wait is dropped with the child handle and the process is killed.
//! Neither tesseract nor pdftoppm forks helpers, so killing the direct child
//! stops all the work; a process group is therefore not needed.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

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

async fn run_to_end(
    mut command: Command,
    what: &str,
    spawn_error: impl FnOnce(std::io::Error) -> StepError,
) -> Result<(), StepError> {
    let program = command
        .as_std()
        .get_program()
        .to_string_lossy()
        .into_owned();
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(spawn_error)?;
    // The child handle lives inside this future: dropping the future (step
    // timeout, job cancelled) drops the handle, which kills the process.
    let output = child
        .wait_with_output()
        .await
        .map_err(|e| StepError::from_io(format!("waiting for {program} on {what}"), &e))?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    Err(StepError::transient(format!(
        "{program} failed on {what} ({}): {}",
        output.status,
        last_line(&stderr)
    )))
}
