//! The `ocr` step: every page of the job through the tesseract engine, one
//! single-threaded process per page, giving a searchable PDF and the text of
//! each page in `ocr/`. It must not assemble or deliver anything.
//!
//! Pages of all jobs in the process share one semaphore of
//! `ocr_parallelism` permits, so that concurrent jobs do not oversubscribe
//! the cores. A page is held to the permit for its whole preparation
//! (splitting a TIFF, rasterising a PDF page) and recognition. Pages whose
//! outputs already exist are skipped, so a job resumed after a crash only
//! redoes the pages that were not finished.
//!
//! A server without the engine sends each prepared page to a remote engine
//! when one is set ([`remote`]); without either the job fails with a reason
//! that says what to install where.

mod engine;
pub mod remote;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

pub use engine::{Probe, Tool, recognise};
pub use remote::{OcrOutput, OcrRequest, RemoteError, RemoteFuture, RemoteOcr, RemoteSlot};

use crate::fsutil;
use crate::job::JobContext;
use crate::page::{self, PageFormat, PageRef};
use crate::plugin::{Plugin, StepError, StepFuture, blocking};
use crate::settings::{self, SettingsError};

/// The largest page accepted by default: A3 at 600 dpi is about 70 million
/// pixels, so 150 million leaves room for any real scan while refusing
/// decompression bombs.
pub const DEFAULT_MAX_PAGE_PIXELS: u64 = 150_000_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OcrSettings {
    #[serde(default = "default_languages")]
    languages: Vec<String>,
    #[serde(default = "default_dpi")]
    dpi: u32,
    #[serde(default)]
    timeout_secs: Option<u64>,
    #[serde(default = "default_max_page_pixels")]
    max_page_pixels: u64,
}

fn default_languages() -> Vec<String> {
    vec!["eng".to_string()]
}

fn default_dpi() -> u32 {
    300
}

fn default_max_page_pixels() -> u64 {
    DEFAULT_MAX_PAGE_PIXELS
}

/// The configured `ocr` step.
#[derive(Debug)]
pub struct OcrStep {
    /// `eng+deu`, as tesseract takes it.
    languages: String,
    dpi: u32,
    timeout: Option<Duration>,
    max_page_pixels: u64,
    engine: Result<PathBuf, String>,
    /// Used when `engine` is missing here.
    remote: RemoteSlot,
    pdftoppm: PathBuf,
    slots: Arc<Semaphore>,
}

/// Where one page is recognised.
#[derive(Clone)]
enum PageEngine {
    Local(PathBuf),
    Remote(Arc<dyn RemoteOcr>),
}

impl OcrStep {
    pub(crate) fn build(
        table: &Map<String, Value>,
        engine: &Probe,
        rasteriser: &Probe,
        slots: Arc<Semaphore>,
        remote: RemoteSlot,
    ) -> Result<OcrStep, SettingsError> {
        let parsed: OcrSettings = settings::parse(table)?;
        if parsed.languages.is_empty() {
            return Err(SettingsError::bad(
                "languages",
                "name at least one language, e.g. [\"eng\"]",
            ));
        }
        for language in &parsed.languages {
            let well_formed = !language.is_empty()
                && language
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !well_formed {
                return Err(SettingsError::bad(
                    "languages",
                    format!(
                        "`{language}` is not a tesseract language code (e.g. eng, deu, chi_sim)"
                    ),
                ));
            }
            if let Probe::Present(tool) = engine
                && !tool.languages.contains(language)
            {
                return Err(SettingsError::bad(
                    "languages",
                    format!(
                        "language `{language}` is not installed for the OCR engine on this server \
                             (installed: {}); install tesseract-ocr-{}",
                        tool.languages.join(", "),
                        language.replace('_', "-").to_lowercase()
                    ),
                ));
            }
        }
        if !(70..=1200).contains(&parsed.dpi) {
            return Err(SettingsError::bad("dpi", "must be between 70 and 1200"));
        }
        if parsed.max_page_pixels == 0 {
            return Err(SettingsError::bad("max_page_pixels", "must be positive"));
        }
        let pdftoppm = match rasteriser {
            Probe::Present(tool) => tool.path.clone(),
            // Kept so that a PDF page fails with the install hint when used.
            Probe::Absent(_) => PathBuf::from("pdftoppm"),
        };
        Ok(OcrStep {
            languages: parsed.languages.join("+"),
            dpi: parsed.dpi,
            timeout: settings::timeout_from(parsed.timeout_secs)?,
            max_page_pixels: parsed.max_page_pixels,
            engine: match engine {
                Probe::Present(tool) => Ok(tool.path.clone()),
                Probe::Absent(why) => Err(why.clone()),
            },
            remote,
            pdftoppm,
            slots,
        })
    }

    async fn run_job(&self, job: &JobContext) -> Result<(), StepError> {
        let engine = match (&self.engine, self.remote.get()) {
            (Ok(path), _) => PageEngine::Local(path.clone()),
            (Err(_), Some(remote)) => PageEngine::Remote(remote),
            (Err(why), None) => return Err(engine::engine_missing(why)),
        };
        let files = job.pages.clone();
        let pages = blocking("reading the job's pages", move || {
            page::enumerate_pages(&files).map_err(StepError::unreadable_page)
        })
        .await?;
        let dir = job.ocr_dir();
        let create = dir.clone();
        tokio::task::spawn_blocking(move || fsutil::create_private_dir_all(&create))
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r)
            .map_err(|e| StepError::from_io(format!("creating {}", dir.display()), &e))?;

        // A JoinSet aborts its tasks when dropped, so a timeout or a dropped
        // job future also stops every page still waiting or running.
        let mut tasks = JoinSet::new();
        for page in &pages {
            let pdf = job.ocr_page_pdf(page.number);
            let text = job.ocr_page_text(page.number);
            if pdf.exists() && text.exists() {
                continue;
            }
            let work = PageWork {
                page: page.clone(),
                engine: engine.clone(),
                pdftoppm: self.pdftoppm.clone(),
                languages: self.languages.clone(),
                dpi: self.dpi,
                max_page_pixels: self.max_page_pixels,
                dir: dir.clone(),
                pdf,
                text,
            };
            let slots = Arc::clone(&self.slots);
            tasks.spawn(async move {
                let _permit = slots
                    .acquire_owned()
                    .await
                    .map_err(|_| StepError::transient("the OCR queue is shutting down"))?;
                work.run().await
            });
        }
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(e) => return Err(StepError::permanent(format!("an OCR task failed: {e}"))),
            }
        }

        let texts: Vec<PathBuf> = pages.iter().map(|p| job.ocr_page_text(p.number)).collect();
        let combined = job.ocr_text_path();
        blocking("writing the recognised text", move || {
            let mut all = String::new();
            for path in &texts {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| StepError::from_io(format!("reading {}", path.display()), &e))?;
                all.push_str(&text);
                // Tesseract ends each page with a form feed; keep pages
                // apart even if a version does not.
                if !text.ends_with('\u{c}') {
                    all.push('\u{c}');
                }
            }
            fsutil::write_atomic(&combined, all.as_bytes(), "ocr")
                .map_err(|e| StepError::from_io(format!("writing {}", combined.display()), &e))
        })
        .await
    }
}

impl Plugin for OcrStep {
    fn name(&self) -> &'static str {
        "ocr"
    }

    fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    fn run<'a>(&'a self, job: &'a JobContext) -> StepFuture<'a> {
        Box::pin(self.run_job(job))
    }
}

/// Everything one page's task needs, owned, because tasks outlive borrows.
struct PageWork {
    page: PageRef,
    engine: PageEngine,
    pdftoppm: PathBuf,
    languages: String,
    dpi: u32,
    max_page_pixels: u64,
    dir: PathBuf,
    pdf: PathBuf,
    text: PathBuf,
}

impl PageWork {
    async fn run(self) -> Result<(), StepError> {
        let what = self.page.describe();
        let stem = format!(".page-{:04}", self.page.number + 1);
        let temp_input = self.dir.join(format!("{stem}-src"));
        let (input, dpi) = self.prepare(&what, &temp_input).await?;
        let out_base = self.dir.join(format!("{stem}-out"));
        let result = match &self.engine {
            PageEngine::Local(path) => {
                engine::recognise(path, &input, &out_base, &self.languages, dpi, &what).await
            }
            PageEngine::Remote(remote) => {
                recognise_remotely(
                    remote.as_ref(),
                    &input,
                    &out_base,
                    &self.languages,
                    dpi,
                    &what,
                )
                .await
            }
        };
        if input != self.page.path {
            let _ = tokio::fs::remove_file(&input).await;
        }
        result?;
        let (pdf, text) = (self.pdf, self.text);
        blocking("storing recognised pages", move || {
            // The text first and the PDF last: the PDF's presence is what
            // marks the page as done when a job resumes.
            for (from, to) in [
                (with_suffix(&out_base, ".txt"), &text),
                (with_suffix(&out_base, ".pdf"), &pdf),
            ] {
                fsutil::commit_file(&from, to)
                    .map_err(|e| StepError::from_io(format!("storing {}", to.display()), &e))?;
            }
            Ok(())
        })
        .await
    }

    /// Gives the engine a file holding exactly this page, and the resolution
    /// to assume when the file records none.
    async fn prepare(&self, what: &str, temp: &Path) -> Result<(PathBuf, Option<u32>), StepError> {
        match self.page.format {
            PageFormat::Pdf => {
                let path = self.page.path.clone();
                let index = self.page.index_in_file;
                let (dpi, limit, described) = (self.dpi, self.max_page_pixels, what.to_string());
                blocking("measuring a PDF page", move || {
                    let sizes = page::pdf_page_sizes(&path).map_err(StepError::unreadable_page)?;
                    let (w, h) = sizes.get(index).copied().unwrap_or((612.0, 792.0));
                    let scale = f64::from(dpi) / 72.0;
                    let info = page::RasterInfo {
                        width: (w * scale).ceil().min(f64::from(u32::MAX)) as u32,
                        height: (h * scale).ceil().min(f64::from(u32::MAX)) as u32,
                        dpi: None,
                    };
                    info.check_pixels(&|| format!("{described} at {dpi} dpi"), limit)
                        .map_err(|e| StepError::permanent(e.to_string()))
                })
                .await?;
                let png = engine::rasterise(
                    &self.pdftoppm,
                    &self.page.path,
                    self.page.index_in_file + 1,
                    self.dpi,
                    temp,
                    what,
                )
                .await?;
                Ok((png, Some(self.dpi)))
            }
            PageFormat::Png | PageFormat::Jpeg | PageFormat::Tiff => {
                let page = self.page.clone();
                let (limit, temp, fallback) = (self.max_page_pixels, temp.to_path_buf(), self.dpi);
                blocking("reading a page header", move || {
                    let info = page::raster_info(&page).map_err(StepError::unreadable_page)?;
                    info.check_pixels(&|| page.describe(), limit)
                        .map_err(|e| StepError::permanent(e.to_string()))?;
                    let dpi = if info.dpi.is_some() {
                        None
                    } else {
                        Some(fallback)
                    };
                    if page.format == PageFormat::Tiff && page.pages_in_file > 1 {
                        // The engine would read every page from the first
                        // one it is pointed at, so it gets a copy that
                        // holds this page alone.
                        let bytes = page::tiff_single_page(&page.path, page.index_in_file)
                            .map_err(StepError::unreadable_page)?;
                        let temp = with_suffix(&temp, ".tif");
                        fsutil::write_atomic(&temp, &bytes, "page").map_err(|e| {
                            StepError::from_io(format!("writing {}", temp.display()), &e)
                        })?;
                        Ok((temp, dpi))
                    } else {
                        Ok((page.path.clone(), dpi))
                    }
                })
                .await
            }
        }
    }
}

/// Sends one prepared page to the remote engine and writes what comes back
/// where the local engine would have (`out_base.pdf`, `out_base.txt`).
async fn recognise_remotely(
    remote: &dyn RemoteOcr,
    input: &Path,
    out_base: &Path,
    languages: &str,
    dpi: Option<u32>,
    what: &str,
) -> Result<(), StepError> {
    let image = tokio::fs::read(input)
        .await
        .map_err(|e| StepError::from_io(format!("reading {}", input.display()), &e))?;
    let output = remote
        .recognise(OcrRequest {
            image,
            languages: languages.to_owned(),
            dpi,
        })
        .await
        .map_err(|e| {
            let text = format!("OCR of {what} by {} failed: {}", remote.describe(), e.why);
            if e.permanent {
                StepError::permanent(text)
            } else {
                StepError::transient(text)
            }
        })?;
    let (pdf, text) = (with_suffix(out_base, ".pdf"), with_suffix(out_base, ".txt"));
    blocking("writing the recognised page", move || {
        for (path, bytes) in [
            (&text, output.text.as_bytes()),
            (&pdf, output.pdf.as_slice()),
        ] {
            fsutil::write_atomic(path, bytes, "ocr")
                .map_err(|e| StepError::from_io(format!("writing {}", path.display()), &e))?;
        }
        Ok(())
    })
    .await
}

/// `path` with `suffix` appended to its last component, the way tesseract
/// and pdftoppm name their outputs (`base` becomes `base.pdf`).
pub fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(suffix);
    PathBuf::from(name)
}
