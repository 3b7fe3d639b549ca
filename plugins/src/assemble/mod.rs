//! The `assemble` step: the job's pages, in order, as one `document.pdf` in
//! the work directory. It must not deliver the document anywhere.
//!
//! After an `ocr` step the document is made of the per-page searchable PDFs,
//! so it carries the text layer. Otherwise JPEG pages are embedded as they
//! are, PNG and TIFF pages are decoded and Flate-compressed, and uploaded
//! PDFs contribute their pages unchanged. Every raster page is checked
//! against a pixel limit before it is decoded.

mod pdf;

use std::time::Duration;

use image::DynamicImage;
use serde::Deserialize;
use serde_json::{Map, Value};

pub use pdf::{PageImage, PdfBuilder};

use crate::fsutil;
use crate::job::JobContext;
use crate::ocr::DEFAULT_MAX_PAGE_PIXELS;
use crate::page::{self, PageFormat, PageRef};
use crate::plugin::{Plugin, StepError, StepFuture, blocking};
use crate::settings::{self, SettingsError};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AssembleSettings {
    #[serde(default)]
    timeout_secs: Option<u64>,
    #[serde(default = "default_max_page_pixels")]
    max_page_pixels: u64,
    #[serde(default = "default_dpi")]
    default_dpi: u32,
}

fn default_max_page_pixels() -> u64 {
    DEFAULT_MAX_PAGE_PIXELS
}

fn default_dpi() -> u32 {
    300
}

/// The configured `assemble` step.
#[derive(Debug)]
pub struct AssembleStep {
    from_ocr: bool,
    timeout: Option<Duration>,
    max_page_pixels: u64,
    default_dpi: u32,
}

impl AssembleStep {
    pub(crate) fn build(
        table: &Map<String, Value>,
        after_ocr: bool,
    ) -> Result<Self, SettingsError> {
        let parsed: AssembleSettings = settings::parse(table)?;
        if parsed.max_page_pixels == 0 {
            return Err(SettingsError::bad("max_page_pixels", "must be positive"));
        }
        if !(50..=4800).contains(&parsed.default_dpi) {
            return Err(SettingsError::bad(
                "default_dpi",
                "must be between 50 and 4800",
            ));
        }
        Ok(AssembleStep {
            from_ocr: after_ocr,
            timeout: settings::timeout_from(parsed.timeout_secs)?,
            max_page_pixels: parsed.max_page_pixels,
            default_dpi: parsed.default_dpi,
        })
    }
}

impl Plugin for AssembleStep {
    fn name(&self) -> &'static str {
        "assemble"
    }

    fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    fn run<'a>(&'a self, job: &'a JobContext) -> StepFuture<'a> {
        let job = job.clone();
        let (from_ocr, limit, default_dpi) =
            (self.from_ocr, self.max_page_pixels, self.default_dpi);
        Box::pin(blocking("assembling the document", move || {
            assemble(&job, from_ocr, limit, default_dpi)
        }))
    }
}

fn permanent(e: impl ToString) -> StepError {
    StepError::permanent(e.to_string())
}

fn assemble(
    job: &JobContext,
    from_ocr: bool,
    limit: u64,
    default_dpi: u32,
) -> Result<(), StepError> {
    let pages = page::enumerate_pages(&job.pages).map_err(StepError::unreadable_page)?;
    let mut builder = PdfBuilder::new();
    if from_ocr {
        for page in &pages {
            let path = job.ocr_page_pdf(page.number);
            if !path.exists() {
                return Err(StepError::permanent(format!(
                    "the recognised {} is missing ({}): the `ocr` step did not complete",
                    page.describe(),
                    path.display()
                )));
            }
            append_pdf(&mut builder, &path, &page.describe())?;
        }
    } else {
        let mut at = 0;
        while at < pages.len() {
            let page = &pages[at];
            if page.format == PageFormat::Pdf {
                // A PDF's pages are consecutive; append the file once.
                append_pdf(&mut builder, &page.path, &page.describe())?;
                at += page.pages_in_file;
            } else {
                add_raster(&mut builder, page, limit, default_dpi)?;
                at += 1;
            }
        }
    }
    let title = format!("Scan {}", job.job_id);
    let bytes = builder
        .finish(&title)
        .map_err(|e| StepError::permanent(format!("writing the document failed: {e}")))?;
    let target = job.document_path();
    fsutil::create_private_dir_all(&job.work_dir)
        .map_err(|e| StepError::from_io(format!("creating {}", job.work_dir.display()), &e))?;
    fsutil::write_atomic(&target, &bytes, "assemble")
        .map_err(|e| StepError::from_io(format!("writing {}", target.display()), &e))
}

fn append_pdf(
    builder: &mut PdfBuilder,
    path: &std::path::Path,
    what: &str,
) -> Result<(), StepError> {
    let doc = lopdf::Document::load(path).map_err(|e| {
        // The reason is shown to the device: the page, not the server path.
        tracing::warn!(path = %path.display(), error = %e, "a PDF page file could not be read");
        StepError::permanent(format!("{what} is not a readable PDF: {e}"))
    })?;
    if doc.is_encrypted() {
        return Err(StepError::permanent(format!(
            "{what}: {} is encrypted; scan or export it without a password",
            path.display()
        )));
    }
    builder.append_document(doc).map_err(|e| {
        StepError::permanent(format!("{what}: merging {} failed: {e}", path.display()))
    })?;
    Ok(())
}

fn add_raster(
    builder: &mut PdfBuilder,
    page: &PageRef,
    limit: u64,
    default_dpi: u32,
) -> Result<(), StepError> {
    let what = page.describe();
    if page.format == PageFormat::Jpeg {
        let bytes = std::fs::read(&page.path)
            .map_err(|e| StepError::from_io(format!("reading {}", page.path.display()), &e))?;
        let header = page::jpeg_header(&bytes)
            .ok_or_else(|| StepError::permanent(format!("{what} is not a readable JPEG")))?;
        let info = page::RasterInfo {
            width: header.width,
            height: header.height,
            dpi: header.dpi,
        };
        info.check_pixels(&|| what.clone(), limit)
            .map_err(permanent)?;
        // Gray and YCbCr 8-bit JPEGs go in untouched; CMYK and 12-bit ones
        // are decoded below, because PDF readers disagree on their colours.
        if header.precision == 8 && matches!(header.components, 1 | 3) {
            let dpi = header.dpi.unwrap_or(f64::from(default_dpi));
            return builder
                .add_image_page(
                    PageImage::Jpeg {
                        bytes,
                        width: header.width,
                        height: header.height,
                        components: header.components,
                    },
                    dpi,
                )
                .map_err(|e| StepError::permanent(format!("{what}: embedding failed: {e}")));
        }
    }
    let decoded = page::decode_raster(page, limit).map_err(StepError::unreadable_page)?;
    let dpi = decoded.dpi.unwrap_or(f64::from(default_dpi));
    let (width, height) = (decoded.image.width(), decoded.image.height());
    let image = if is_gray(&decoded.image) {
        PageImage::Raw {
            width,
            height,
            gray: true,
            samples: decoded.image.into_luma8().into_raw(),
        }
    } else {
        PageImage::Raw {
            width,
            height,
            gray: false,
            samples: decoded.image.into_rgb8().into_raw(),
        }
    };
    builder
        .add_image_page(image, dpi)
        .map_err(|e| StepError::permanent(format!("{what}: embedding failed: {e}")))
}

fn is_gray(image: &DynamicImage) -> bool {
    matches!(
        image,
        DynamicImage::ImageLuma8(_)
            | DynamicImage::ImageLumaA8(_)
            | DynamicImage::ImageLuma16(_)
            | DynamicImage::ImageLumaA16(_)
    )
}
