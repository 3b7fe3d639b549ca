//! The simulated scanner's page renderer: known text drawn onto A4 pages and
//! encoded as the image files an MFD uploads. It owns only rendering and
//! encoding; it must not know how the gateway or its pipeline read the pages.
//!
//! The pages are grayscale, carry their resolution in the file (PNG `pHYs`,
//! JFIF density, TIFF resolution tags) as a real scanner's do, and use a
//! 12 pt sans-serif face so that an OCR engine reads them back reliably.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use ab_glyph::{Font, FontVec, PxScale, ScaleFont, point};
use image::codecs::jpeg::{JpegEncoder, PixelDensity};
use image::codecs::png::PngEncoder;
use image::{ExtendedColorType, ImageEncoder};

/// Where Debian's `fonts-dejavu-core` package installs DejaVu Sans.
pub const DEJAVU_SANS: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// The resolution a scanner uses unless told otherwise.
pub const DEFAULT_DPI: u32 = 300;

/// A4 in millimetres.
const A4_MM: (f64, f64) = (210.0, 297.0);
/// The type size, in points: body text on a typical office letter.
const FONT_PT: f32 = 12.0;
/// Margins, in points (2 cm).
const MARGIN_PT: f32 = 56.7;
/// Distance between baselines as a multiple of the type size.
const LINE_SPACING: f32 = 1.45;
/// Below this a 12 pt glyph has too few pixels for any OCR engine.
const MIN_DPI: u32 = 100;
/// Above this an A4 page no longer fits comfortably in memory.
const MAX_DPI: u32 = 1200;

/// The file formats the simulated scanner can produce.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ScanFormat {
    /// Lossless PNG with the resolution in a `pHYs` chunk.
    Png,
    /// Baseline JPEG (quality 92) with the resolution in the JFIF header.
    Jpeg,
    /// LZW-compressed TIFF with resolution tags.
    Tiff,
}

impl ScanFormat {
    /// The usual file name extension, without the dot.
    pub fn extension(self) -> &'static str {
        match self {
            ScanFormat::Png => "png",
            ScanFormat::Jpeg => "jpg",
            ScanFormat::Tiff => "tif",
        }
    }
}

/// Why a page could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum PageError {
    /// The font file is not there.
    #[error(
        "font {path} not found: install the Debian package fonts-dejavu-core (or pass another TrueType font)"
    )]
    FontMissing {
        /// The path that was tried.
        path: PathBuf,
    },
    /// The font file exists but could not be read or parsed.
    #[error("font {path} cannot be used: {reason}")]
    FontUnreadable {
        /// The path that was tried.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The resolution is outside what the renderer supports.
    #[error("resolution {dpi} dpi is outside the supported range {MIN_DPI}..={MAX_DPI}")]
    BadDpi {
        /// The requested resolution.
        dpi: u32,
    },
    /// The text needs more lines than one page holds.
    #[error(
        "the text needs {needed} lines but an A4 page holds {available}: split it over several pages"
    )]
    TextTooLong {
        /// Lines the wrapped text needs.
        needed: usize,
        /// Lines that fit on the page.
        available: usize,
    },
    /// A multi-page document was asked for with no pages.
    #[error("a document needs at least one page")]
    NoPages,
    /// The image encoder failed.
    #[error("cannot encode the page as {format:?}: {reason}")]
    Encode {
        /// The target format.
        format: ScanFormat,
        /// The encoder's message.
        reason: String,
    },
}

/// A renderer holding a loaded font, for rendering many pages.
pub struct PageRenderer {
    font: FontVec,
}

impl std::fmt::Debug for PageRenderer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageRenderer").finish_non_exhaustive()
    }
}

/// A rendered page before encoding: 8-bit gray, row-major, white is 255.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrayPage {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Resolution in dots per inch.
    pub dpi: u32,
    /// `width * height` samples.
    pub pixels: Vec<u8>,
}

impl PageRenderer {
    /// Loads DejaVu Sans from its Debian location.
    pub fn new() -> Result<Self, PageError> {
        Self::from_font_file(Path::new(DEJAVU_SANS))
    }

    /// Loads the TrueType font at `path`.
    pub fn from_font_file(path: &Path) -> Result<Self, PageError> {
        let data = std::fs::read(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                PageError::FontMissing {
                    path: path.to_path_buf(),
                }
            } else {
                PageError::FontUnreadable {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                }
            }
        })?;
        let font = FontVec::try_from_vec(data).map_err(|e| PageError::FontUnreadable {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Ok(PageRenderer { font })
    }

    /// Draws `text` onto a blank A4 page. Paragraphs are separated by line
    /// breaks; long lines are wrapped at spaces.
    pub fn draw(&self, text: &str, dpi: u32) -> Result<GrayPage, PageError> {
        if !(MIN_DPI..=MAX_DPI).contains(&dpi) {
            return Err(PageError::BadDpi { dpi });
        }
        let width = (A4_MM.0 / 25.4 * f64::from(dpi)).round() as u32;
        let height = (A4_MM.1 / 25.4 * f64::from(dpi)).round() as u32;
        let px_per_pt = dpi as f32 / 72.0;
        let font_px = FONT_PT * px_per_pt;
        let margin = MARGIN_PT * px_per_pt;
        let line_height = font_px * LINE_SPACING;

        let scaled = self.font.as_scaled(PxScale::from(font_px));
        let max_width = width as f32 - 2.0 * margin;
        let lines = wrap(text, max_width, |s| measure(&scaled, s));

        let usable = height as f32 - 2.0 * margin;
        let available = (usable / line_height).floor() as usize;
        if lines.len() > available {
            return Err(PageError::TextTooLong {
                needed: lines.len(),
                available,
            });
        }

        let mut pixels = vec![255u8; width as usize * height as usize];
        for (n, line) in lines.iter().enumerate() {
            let baseline = margin + scaled.ascent() + n as f32 * line_height;
            let mut x = margin;
            let mut previous = None;
            for c in line.chars() {
                let id = scaled.glyph_id(c);
                if let Some(prev) = previous {
                    x += scaled.kern(prev, id);
                }
                let glyph = id.with_scale_and_position(scaled.scale(), point(x, baseline));
                if let Some(outlined) = self.font.outline_glyph(glyph) {
                    let bounds = outlined.px_bounds();
                    outlined.draw(|gx, gy, coverage| {
                        let px = bounds.min.x as i64 + i64::from(gx);
                        let py = bounds.min.y as i64 + i64::from(gy);
                        if px < 0 || py < 0 || px >= i64::from(width) || py >= i64::from(height) {
                            return;
                        }
                        let index = py as usize * width as usize + px as usize;
                        let ink = 255 - (coverage.clamp(0.0, 1.0) * 255.0).round() as u8;
                        // Overlapping glyph edges keep the darker sample.
                        pixels[index] = pixels[index].min(ink);
                    });
                }
                x += scaled.h_advance(id);
                previous = Some(id);
            }
        }
        Ok(GrayPage {
            width,
            height,
            dpi,
            pixels,
        })
    }

    /// Renders `text` as one page in `format`.
    pub fn render(&self, text: &str, format: ScanFormat, dpi: u32) -> Result<Vec<u8>, PageError> {
        let page = self.draw(text, dpi)?;
        encode(&page, format)
    }

    /// Renders one TIFF file holding one page per entry of `pages`.
    pub fn render_multipage_tiff(&self, pages: &[&str], dpi: u32) -> Result<Vec<u8>, PageError> {
        if pages.is_empty() {
            return Err(PageError::NoPages);
        }
        let drawn = pages
            .iter()
            .map(|text| self.draw(text, dpi))
            .collect::<Result<Vec<_>, _>>()?;
        encode_tiff(&drawn)
    }
}

/// Renders `text` onto one A4 page with DejaVu Sans; see [`PageRenderer`].
pub fn render_page(text: &str, format: ScanFormat, dpi: u32) -> Result<Vec<u8>, PageError> {
    PageRenderer::new()?.render(text, format, dpi)
}

/// Renders a multi-page TIFF with one page per entry of `pages`.
pub fn render_multipage_tiff(pages: &[&str], dpi: u32) -> Result<Vec<u8>, PageError> {
    PageRenderer::new()?.render_multipage_tiff(pages, dpi)
}

/// Encodes a drawn page in `format`.
pub fn encode(page: &GrayPage, format: ScanFormat) -> Result<Vec<u8>, PageError> {
    let fail = |e: image::ImageError| PageError::Encode {
        format,
        reason: e.to_string(),
    };
    match format {
        ScanFormat::Png => {
            let mut out = Vec::new();
            PngEncoder::new(&mut out)
                .write_image(&page.pixels, page.width, page.height, ExtendedColorType::L8)
                .map_err(fail)?;
            Ok(insert_png_phys(&out, page.dpi))
        }
        ScanFormat::Jpeg => {
            let mut out = Vec::new();
            let mut encoder = JpegEncoder::new_with_quality(&mut out, 92);
            let density = u16::try_from(page.dpi).unwrap_or(u16::MAX);
            encoder.set_pixel_density(PixelDensity::dpi(density));
            encoder
                .write_image(&page.pixels, page.width, page.height, ExtendedColorType::L8)
                .map_err(fail)?;
            Ok(out)
        }
        ScanFormat::Tiff => encode_tiff(std::slice::from_ref(page)),
    }
}

fn encode_tiff(pages: &[GrayPage]) -> Result<Vec<u8>, PageError> {
    use tiff::encoder::{Compression, Rational, TiffEncoder, colortype::Gray8};
    use tiff::tags::ResolutionUnit;
    let fail = |e: tiff::TiffError| PageError::Encode {
        format: ScanFormat::Tiff,
        reason: e.to_string(),
    };
    let mut out = Cursor::new(Vec::new());
    // LZW is what office scanners write for gray pages: lossless and
    // readable by every TIFF reader.
    let mut encoder = TiffEncoder::new(&mut out)
        .map_err(fail)?
        .with_compression(Compression::Lzw);
    for page in pages {
        let mut image = encoder
            .new_image::<Gray8>(page.width, page.height)
            .map_err(fail)?;
        image.resolution(ResolutionUnit::Inch, Rational { n: page.dpi, d: 1 });
        image.write_data(&page.pixels).map_err(fail)?;
    }
    Ok(out.into_inner())
}

/// Inserts a `pHYs` chunk right after `IHDR` so that readers know the
/// resolution; the `image` crate's PNG encoder does not write one, and an
/// OCR engine guessing the resolution produces pages of the wrong size.
fn insert_png_phys(png: &[u8], dpi: u32) -> Vec<u8> {
    // The signature is 8 bytes and IHDR is always first: 4 length + 4 type +
    // 13 data + 4 CRC.
    let ihdr_end = 8 + 4 + 4 + 13 + 4;
    let pixels_per_metre = (f64::from(dpi) / 0.0254).round() as u32;
    let mut chunk = Vec::with_capacity(21);
    chunk.extend_from_slice(&9u32.to_be_bytes());
    let mut body = Vec::with_capacity(13);
    body.extend_from_slice(b"pHYs");
    body.extend_from_slice(&pixels_per_metre.to_be_bytes());
    body.extend_from_slice(&pixels_per_metre.to_be_bytes());
    body.push(1); // the unit is the metre
    chunk.extend_from_slice(&body);
    chunk.extend_from_slice(&crc32(&body).to_be_bytes());

    let mut out = Vec::with_capacity(png.len() + chunk.len());
    out.extend_from_slice(&png[..ihdr_end]);
    out.extend_from_slice(&chunk);
    out.extend_from_slice(&png[ihdr_end..]);
    out
}

/// The CRC-32 that PNG chunks carry (ISO 3309, reflected, 0xEDB88320).
fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
        }
    }
    !crc
}

fn measure<F: Font, S: ScaleFont<F>>(scaled: &S, text: &str) -> f32 {
    let mut width = 0.0;
    let mut previous = None;
    for c in text.chars() {
        let id = scaled.glyph_id(c);
        if let Some(prev) = previous {
            width += scaled.kern(prev, id);
        }
        width += scaled.h_advance(id);
        previous = Some(id);
    }
    width
}

/// Greedy word wrap. A single word wider than the line is broken between
/// characters rather than drawn past the margin.
fn wrap(text: &str, max_width: f32, width_of: impl Fn(&str) -> f32) -> Vec<String> {
    let mut lines = Vec::new();
    for paragraph in text.lines() {
        let mut line = String::new();
        for word in paragraph.split_whitespace() {
            let candidate = if line.is_empty() {
                word.to_string()
            } else {
                format!("{line} {word}")
            };
            if width_of(&candidate) <= max_width {
                line = candidate;
                continue;
            }
            if !line.is_empty() {
                lines.push(std::mem::take(&mut line));
            }
            for c in word.chars() {
                line.push(c);
                if width_of(&line) > max_width {
                    line.pop();
                    lines.push(std::mem::take(&mut line));
                    line.push(c);
                }
            }
        }
        lines.push(line);
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_png_specification_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn wrap_breaks_at_spaces_and_inside_overlong_words() {
        let lines = wrap("aa bb cc\n\ndddddd", 5.0, |s| s.chars().count() as f32);
        assert_eq!(lines, vec!["aa bb", "cc", "", "ddddd", "d"]);
    }

    #[test]
    fn pages_are_a4_at_the_requested_resolution_in_every_format() {
        let renderer = PageRenderer::new().expect("install fonts-dejavu-core");
        let page = renderer.draw("Hello", 150).unwrap();
        assert_eq!((page.width, page.height), (1240, 1754));
        assert!(page.pixels.iter().any(|&p| p < 128), "text was drawn");

        let png = encode(&page, ScanFormat::Png).unwrap();
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"));
        assert_eq!(&png[37..41], b"pHYs");
        let decoded = image::load_from_memory(&png).unwrap();
        assert_eq!((decoded.width(), decoded.height()), (1240, 1754));

        let jpeg = encode(&page, ScanFormat::Jpeg).unwrap();
        assert!(jpeg.starts_with(&[0xFF, 0xD8, 0xFF]));
        assert!(image::load_from_memory(&jpeg).is_ok());

        let tiff = renderer
            .render_multipage_tiff(&["one", "two"], 150)
            .unwrap();
        let mut decoder = tiff::decoder::Decoder::new(Cursor::new(tiff)).unwrap();
        assert!(decoder.more_images());
        decoder.next_image().unwrap();
        assert!(!decoder.more_images());
    }

    #[test]
    fn too_much_text_is_refused_rather_than_cut() {
        let renderer = PageRenderer::new().expect("install fonts-dejavu-core");
        let text = "line\n".repeat(200);
        assert!(matches!(
            renderer.draw(&text, 100),
            Err(PageError::TextTooLong { .. })
        ));
    }

    #[test]
    fn a_missing_font_names_the_package() {
        let err = PageRenderer::from_font_file(Path::new("/nonexistent/font.ttf")).unwrap_err();
        assert!(err.to_string().contains("fonts-dejavu-core"), "{err}");
    }
}
