//! Reading pages out of uploaded files: counting the pages of multi-page
//! files, reading sizes and resolutions from headers, and decoding raster
//! pages under a pixel limit. It must not write anything: steps decide where
//! their outputs go. Everything here is blocking; async callers use
//! `spawn_blocking`.

use std::fs::File;
use std::io::{BufReader, Cursor};
use std::path::{Path, PathBuf};

use image::{DynamicImage, ImageDecoder, ImageReader, Limits};
use tiff::decoder::Decoder as TiffDecoder;
use tiff::decoder::ifd::Value as TiffValue;
use tiff::tags::Tag;

use super::{PageFile, PageFormat};

/// Resolutions outside this range are taken as "not recorded": scanners
/// write 1/1 or 72 as placeholders, and a typo must not give a 2 mm page.
const PLAUSIBLE_DPI: std::ops::RangeInclusive<f64> = 50.0..=4800.0;

/// Why a page file could not be read. The message names the page file by
/// its name in the job (`page-0003.png`, the third file the device sent)
/// and never by its path on the server: it becomes the reason shown to
/// devices. The path stays in the value for the server's log.
#[derive(Debug, thiserror::Error)]
pub enum PageReadError {
    /// The file could not be opened or read.
    #[error("cannot read {}: {}", shown(path), crate::fsutil::io_cause(source))]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The content is not a valid file of its format.
    #[error("{} is not a readable {format} file: {reason}", shown(path))]
    Malformed {
        /// The file.
        path: PathBuf,
        /// The sniffed format.
        format: PageFormat,
        /// The decoder's message.
        reason: String,
    },
    /// The file holds no page at all.
    #[error("{} holds no pages", shown(path))]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// A page is larger than the configured limit (a decompression bomb, or a
    /// scan far beyond any real paper size).
    #[error(
        "{what} is {width}x{height} pixels, more than the limit of {limit} pixels per page; \
         refusing to decode it (raise `max_page_pixels` if such pages are genuine)"
    )]
    TooLarge {
        /// Which page.
        what: String,
        /// Width in pixels.
        width: u64,
        /// Height in pixels.
        height: u64,
        /// The limit in force.
        limit: u64,
    },
}

/// How a page file is named in messages: its file name alone.
fn shown(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "a page file".to_owned())
}

impl PageReadError {
    /// The file concerned, for the server's log.
    pub fn path(&self) -> Option<&Path> {
        match self {
            PageReadError::Io { path, .. }
            | PageReadError::Malformed { path, .. }
            | PageReadError::Empty { path } => Some(path),
            PageReadError::TooLarge { .. } => None,
        }
    }
}

/// One page of a job: which file holds it and where in that file it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageRef {
    /// The page's position in the job, counting from 0.
    pub number: usize,
    /// The file holding the page.
    pub path: PathBuf,
    /// The file's format.
    pub format: PageFormat,
    /// The page's position in its file, counting from 0.
    pub index_in_file: usize,
    /// How many pages the file holds.
    pub pages_in_file: usize,
}

impl PageRef {
    /// A description for messages: "page 3 (scan.tif, page 2 of 4)".
    pub fn describe(&self) -> String {
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.path.display().to_string());
        if self.pages_in_file > 1 {
            format!(
                "page {} ({name}, page {} of {})",
                self.number + 1,
                self.index_in_file + 1,
                self.pages_in_file
            )
        } else {
            format!("page {} ({name})", self.number + 1)
        }
    }
}

/// Lists the pages of a job's files in order.
pub fn enumerate_pages(files: &[PageFile]) -> Result<Vec<PageRef>, PageReadError> {
    let mut pages = Vec::new();
    for file in files {
        let count = match file.format {
            PageFormat::Png | PageFormat::Jpeg => 1,
            PageFormat::Tiff => tiff_page_count(&file.path)?,
            PageFormat::Pdf => pdf_page_sizes(&file.path)?.len(),
        };
        if count == 0 {
            return Err(PageReadError::Empty {
                path: file.path.clone(),
            });
        }
        for index_in_file in 0..count {
            pages.push(PageRef {
                number: pages.len(),
                path: file.path.clone(),
                format: file.format,
                index_in_file,
                pages_in_file: count,
            });
        }
    }
    Ok(pages)
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> PageReadError + '_ {
    move |source| PageReadError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn malformed(path: &Path, format: PageFormat, reason: impl ToString) -> PageReadError {
    PageReadError::Malformed {
        path: path.to_path_buf(),
        format,
        reason: reason.to_string(),
    }
}

fn open_tiff(path: &Path) -> Result<TiffDecoder<BufReader<File>>, PageReadError> {
    let file = File::open(path).map_err(io_error(path))?;
    TiffDecoder::new(BufReader::new(file)).map_err(|e| malformed(path, PageFormat::Tiff, e))
}

fn tiff_page_count(path: &Path) -> Result<usize, PageReadError> {
    let mut decoder = open_tiff(path)?;
    let mut count = 1;
    while decoder.more_images() {
        decoder
            .next_image()
            .map_err(|e| malformed(path, PageFormat::Tiff, e))?;
        count += 1;
    }
    Ok(count)
}

/// The size in points (1/72 inch) of each page of a PDF file, in order.
pub fn pdf_page_sizes(path: &Path) -> Result<Vec<(f64, f64)>, PageReadError> {
    let doc = lopdf::Document::load(path).map_err(|e| match e {
        lopdf::Error::IO(source) => PageReadError::Io {
            path: path.to_path_buf(),
            source,
        },
        other => malformed(path, PageFormat::Pdf, other),
    })?;
    let mut sizes = Vec::new();
    for page_id in doc.page_iter() {
        let size = inherited(&doc, page_id, b"MediaBox")
            .and_then(|object| media_box_size(&doc, object))
            // PDF readers fall back to US Letter when the box is missing.
            .unwrap_or((612.0, 792.0));
        sizes.push(size);
    }
    Ok(sizes)
}

/// Looks a page attribute up on the page or, as PDF allows, on the nearest
/// ancestor in the page tree that sets it.
pub(crate) fn inherited<'a>(
    doc: &'a lopdf::Document,
    page_id: lopdf::ObjectId,
    key: &[u8],
) -> Option<&'a lopdf::Object> {
    let mut node = doc.get_dictionary(page_id).ok()?;
    // The depth bound stops a malicious Parent cycle.
    for _ in 0..64 {
        if let Ok(value) = node.get(key) {
            return Some(value);
        }
        let parent = node.get(b"Parent").ok()?.as_reference().ok()?;
        node = doc.get_dictionary(parent).ok()?;
    }
    None
}

fn media_box_size(doc: &lopdf::Document, object: &lopdf::Object) -> Option<(f64, f64)> {
    let (_, object) = doc.dereference(object).ok()?;
    let values = object.as_array().ok()?;
    if values.len() != 4 {
        return None;
    }
    let mut numbers = [0f64; 4];
    for (slot, value) in numbers.iter_mut().zip(values) {
        let (_, value) = doc.dereference(value).ok()?;
        *slot = f64::from(value.as_float().ok()?);
    }
    let width = (numbers[2] - numbers[0]).abs();
    let height = (numbers[3] - numbers[1]).abs();
    (width > 0.0 && height > 0.0).then_some((width, height))
}

/// Size and resolution of a raster page, read from headers only.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RasterInfo {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Resolution in dots per inch, when the file records a plausible one.
    pub dpi: Option<f64>,
}

impl RasterInfo {
    /// Refuses pages with more than `limit` pixels.
    pub fn check_pixels(&self, what: &dyn Fn() -> String, limit: u64) -> Result<(), PageReadError> {
        let pixels = u64::from(self.width) * u64::from(self.height);
        if pixels > limit {
            return Err(PageReadError::TooLarge {
                what: what(),
                width: u64::from(self.width),
                height: u64::from(self.height),
                limit,
            });
        }
        Ok(())
    }
}

fn plausible(dpi: f64) -> Option<f64> {
    PLAUSIBLE_DPI.contains(&dpi).then_some(dpi)
}

/// Reads a raster page's size and resolution without decoding its pixels.
pub fn raster_info(page: &PageRef) -> Result<RasterInfo, PageReadError> {
    let path = &page.path;
    match page.format {
        PageFormat::Tiff => {
            let mut decoder = open_tiff(path)?;
            decoder
                .seek_to_image(page.index_in_file)
                .map_err(|e| malformed(path, PageFormat::Tiff, e))?;
            let (width, height) = decoder
                .dimensions()
                .map_err(|e| malformed(path, PageFormat::Tiff, e))?;
            Ok(RasterInfo {
                width,
                height,
                dpi: tiff_dpi(&mut decoder),
            })
        }
        PageFormat::Jpeg => {
            let bytes = std::fs::read(path).map_err(io_error(path))?;
            let header = jpeg_header(&bytes)
                .ok_or_else(|| malformed(path, PageFormat::Jpeg, "no frame header found"))?;
            Ok(RasterInfo {
                width: header.width,
                height: header.height,
                dpi: header.dpi,
            })
        }
        PageFormat::Png => {
            let bytes = std::fs::read(path).map_err(io_error(path))?;
            png_info(&bytes).ok_or_else(|| malformed(path, PageFormat::Png, "bad IHDR chunk"))
        }
        PageFormat::Pdf => Err(malformed(
            path,
            PageFormat::Pdf,
            "a PDF page is not a raster image",
        )),
    }
}

fn tiff_dpi<R: std::io::Read + std::io::Seek>(decoder: &mut TiffDecoder<R>) -> Option<f64> {
    let value = decoder.find_tag(Tag::XResolution).ok()??;
    let resolution = match value {
        TiffValue::Rational(n, d) if d > 0 => f64::from(n) / f64::from(d),
        TiffValue::Short(n) => f64::from(n),
        TiffValue::Unsigned(n) => f64::from(n),
        _ => return None,
    };
    // ResolutionUnit: 1 = none, 2 = inch (the default), 3 = centimetre.
    match decoder.find_tag_unsigned::<u16>(Tag::ResolutionUnit).ok()? {
        Some(1) => None,
        Some(3) => plausible(resolution * 2.54),
        _ => plausible(resolution),
    }
}

fn png_info(bytes: &[u8]) -> Option<RasterInfo> {
    if bytes.len() < 33 || &bytes[12..16] != b"IHDR" {
        return None;
    }
    let width = u32::from_be_bytes(bytes[16..20].try_into().ok()?);
    let height = u32::from_be_bytes(bytes[20..24].try_into().ok()?);
    let mut dpi = None;
    let mut at = 8;
    // Walk the chunks before the image data looking for pHYs.
    while at + 8 <= bytes.len() {
        let length = u32::from_be_bytes(bytes[at..at + 4].try_into().ok()?) as usize;
        let kind = &bytes[at + 4..at + 8];
        let data = bytes.get(at + 8..at + 8 + length)?;
        if kind == b"IDAT" {
            break;
        }
        if kind == b"pHYs" && length == 9 && data[8] == 1 {
            let per_metre = u32::from_be_bytes(data[0..4].try_into().ok()?);
            dpi = plausible(f64::from(per_metre) * 0.0254);
        }
        at += 12 + length;
    }
    Some(RasterInfo { width, height, dpi })
}

/// What a JPEG file's headers say.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct JpegHeader {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Colour components: 1 gray, 3 YCbCr/RGB, 4 CMYK/YCCK.
    pub components: u8,
    /// Bits per sample (8 for baseline).
    pub precision: u8,
    /// Resolution from the JFIF header, when plausible.
    pub dpi: Option<f64>,
}

/// Walks a JPEG's marker segments up to the first scan.
pub fn jpeg_header(bytes: &[u8]) -> Option<JpegHeader> {
    if bytes.get(..2)? != [0xFF, 0xD8] {
        return None;
    }
    let mut at = 2;
    let mut dpi = None;
    loop {
        // Markers may be preceded by any number of 0xFF fill bytes.
        while *bytes.get(at)? == 0xFF && *bytes.get(at + 1)? == 0xFF {
            at += 1;
        }
        if *bytes.get(at)? != 0xFF {
            return None;
        }
        let marker = *bytes.get(at + 1)?;
        let length = usize::from(u16::from_be_bytes([
            *bytes.get(at + 2)?,
            *bytes.get(at + 3)?,
        ]));
        let segment = bytes.get(at + 4..at + 2 + length)?;
        match marker {
            // APP0 with a JFIF identifier carries the density.
            0xE0 if segment.starts_with(b"JFIF\0") && segment.len() >= 12 => {
                let unit = segment[7];
                let x = f64::from(u16::from_be_bytes([segment[8], segment[9]]));
                dpi = match unit {
                    1 => plausible(x),
                    2 => plausible(x * 2.54),
                    _ => None,
                };
            }
            // SOF0..SOF15, except DHT (C4), JPG (C8) and DAC (CC).
            0xC0..=0xCF if !matches!(marker, 0xC4 | 0xC8 | 0xCC) => {
                if segment.len() < 6 {
                    return None;
                }
                return Some(JpegHeader {
                    precision: segment[0],
                    height: u32::from(u16::from_be_bytes([segment[1], segment[2]])),
                    width: u32::from(u16::from_be_bytes([segment[3], segment[4]])),
                    components: segment[5],
                    dpi,
                });
            }
            0xDA => return None,
            _ => {}
        }
        at += 2 + length;
    }
}

/// A copy of a TIFF file that holds page `index` alone, as far as any reader
/// can tell: the header points at that page's directory and the directory's
/// link to the next page is cut. The other pages' data stays in the copy but
/// is unreachable. Readers that take the first page (the `image` crate) and
/// readers that take every page (the OCR engine) both see just this page,
/// with its original compression and resolution tags.
pub fn tiff_single_page(path: &Path, index: usize) -> Result<Vec<u8>, PageReadError> {
    let mut bytes = std::fs::read(path).map_err(io_error(path))?;
    let bad = |reason: &str| malformed(path, PageFormat::Tiff, reason);
    let mut decoder = TiffDecoder::new(Cursor::new(&bytes[..]))
        .map_err(|e| malformed(path, PageFormat::Tiff, e))?;
    decoder
        .seek_to_image(index)
        .map_err(|e| malformed(path, PageFormat::Tiff, e))?;
    let offset = decoder
        .ifd_pointer()
        .ok_or_else(|| bad("page directory not found"))?
        .0;
    drop(decoder);
    let offset = usize::try_from(offset).map_err(|_| bad("directory offset out of range"))?;
    let little = bytes.starts_with(b"II");
    let big_tiff = bytes.get(2..4) == Some(if little { b"+\0" } else { b"\0+" });
    let read = |at: usize, len: usize| -> Option<u64> {
        let field = bytes.get(at..at + len)?;
        let mut value = 0u64;
        for i in 0..len {
            let byte = if little { field[len - 1 - i] } else { field[i] };
            value = (value << 8) | u64::from(byte);
        }
        Some(value)
    };
    // Classic TIFF: 2-byte entry count, 12-byte entries, 4-byte offsets.
    // BigTIFF: 8-byte count, 20-byte entries, 8-byte offsets.
    let (header_at, width, count_len, entry_len) = if big_tiff {
        (8, 8, 8, 20)
    } else {
        (4, 4, 2, 12)
    };
    let count = read(offset, count_len).ok_or_else(|| bad("page directory out of bounds"))?;
    let next_at = usize::try_from(count)
        .ok()
        .and_then(|c| c.checked_mul(entry_len))
        .and_then(|n| n.checked_add(offset + count_len))
        .filter(|&at| at + width <= bytes.len())
        .ok_or_else(|| bad("page directory out of bounds"))?;
    let write = |bytes: &mut [u8], at: usize, value: u64| {
        let all = if little {
            value.to_le_bytes()
        } else {
            value.to_be_bytes()
        };
        let field = if little {
            &all[..width]
        } else {
            &all[8 - width..]
        };
        bytes[at..at + width].copy_from_slice(field);
    };
    if !big_tiff && u32::try_from(offset).is_err() {
        return Err(bad("directory offset out of range"));
    }
    write(&mut bytes, header_at, offset as u64);
    write(&mut bytes, next_at, 0);
    Ok(bytes)
}

/// A decoded raster page.
#[derive(Debug)]
pub struct DecodedPage {
    /// The pixels.
    pub image: DynamicImage,
    /// The recorded resolution, when plausible.
    pub dpi: Option<f64>,
}

/// Decodes a raster page, refusing it before any pixel is decoded when its
/// header announces more than `max_pixels`.
pub fn decode_raster(page: &PageRef, max_pixels: u64) -> Result<DecodedPage, PageReadError> {
    let info = raster_info(page)?;
    info.check_pixels(&|| page.describe(), max_pixels)?;
    let path = &page.path;
    let mut limits = Limits::default();
    // Room for the largest permitted page at 16-bit RGBA plus decoder buffers.
    limits.max_alloc = Some(max_pixels.saturating_mul(8).saturating_add(64 << 20));
    let image = match page.format {
        PageFormat::Tiff => {
            let bytes = tiff_single_page(path, page.index_in_file)?;
            let mut decoder = image::codecs::tiff::TiffDecoder::new(Cursor::new(bytes))
                .map_err(|e| malformed(path, PageFormat::Tiff, e))?;
            decoder
                .set_limits(limits)
                .map_err(|e| malformed(path, PageFormat::Tiff, e))?;
            DynamicImage::from_decoder(decoder).map_err(|e| malformed(path, PageFormat::Tiff, e))?
        }
        PageFormat::Png | PageFormat::Jpeg => {
            let format = if page.format == PageFormat::Png {
                image::ImageFormat::Png
            } else {
                image::ImageFormat::Jpeg
            };
            let file = File::open(path).map_err(io_error(path))?;
            let mut reader = ImageReader::with_format(BufReader::new(file), format);
            reader.limits(limits);
            reader
                .decode()
                .map_err(|e| malformed(path, page.format, e))?
        }
        PageFormat::Pdf => {
            return Err(malformed(
                path,
                PageFormat::Pdf,
                "a PDF page is not a raster image",
            ));
        }
    };
    Ok(DecodedPage {
        image,
        dpi: info.dpi,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gray_tiff(pages: &[(u32, u32, u8)]) -> Vec<u8> {
        use tiff::encoder::{Rational, TiffEncoder, colortype::Gray8};
        let mut out = Cursor::new(Vec::new());
        let mut encoder = TiffEncoder::new(&mut out).unwrap();
        for &(w, h, shade) in pages {
            let mut image = encoder.new_image::<Gray8>(w, h).unwrap();
            image.resolution(tiff::tags::ResolutionUnit::Inch, Rational { n: 200, d: 1 });
            image.write_data(&vec![shade; (w * h) as usize]).unwrap();
        }
        out.into_inner()
    }

    #[test]
    fn every_page_of_a_multi_page_tiff_is_found_and_decoded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scan.bin");
        std::fs::write(&path, gray_tiff(&[(4, 3, 10), (5, 2, 20), (2, 2, 30)])).unwrap();
        let files = [PageFile {
            path: path.clone(),
            format: PageFormat::Tiff,
        }];
        let pages = enumerate_pages(&files).unwrap();
        assert_eq!(pages.len(), 3);
        assert_eq!(pages[1].describe(), "page 2 (scan.bin, page 2 of 3)");
        let second = decode_raster(&pages[1], 1000).unwrap();
        assert_eq!((second.image.width(), second.image.height()), (5, 2));
        assert_eq!(second.image.to_luma8().as_raw()[0], 20);
        assert_eq!(second.dpi, Some(200.0));
        let third = decode_raster(&pages[2], 1000).unwrap();
        assert_eq!(third.image.to_luma8().as_raw()[0], 30);

        // The single-page copy of page 2 leads to page 2 and nowhere else.
        let copy = tiff_single_page(&path, 1).unwrap();
        let mut decoder = TiffDecoder::new(Cursor::new(copy)).unwrap();
        assert_eq!(decoder.dimensions().unwrap(), (5, 2));
        assert!(!decoder.more_images());
    }

    #[test]
    fn a_page_over_the_pixel_limit_is_refused_before_decoding() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.tif");
        std::fs::write(&path, gray_tiff(&[(100, 100, 0)])).unwrap();
        let pages = enumerate_pages(&[PageFile {
            path,
            format: PageFormat::Tiff,
        }])
        .unwrap();
        let err = decode_raster(&pages[0], 9_999).unwrap_err();
        assert!(
            err.to_string()
                .contains("100x100 pixels, more than the limit of 9999"),
            "{err}"
        );
    }

    #[test]
    fn jpeg_headers_give_size_components_and_density() {
        let mut jpeg = Vec::new();
        let mut encoder = image::codecs::jpeg::JpegEncoder::new(&mut jpeg);
        encoder.set_pixel_density(image::codecs::jpeg::PixelDensity::dpi(300));
        encoder
            .encode(&[128u8; 6 * 4], 6, 4, image::ExtendedColorType::L8)
            .unwrap();
        let header = jpeg_header(&jpeg).unwrap();
        assert_eq!((header.width, header.height, header.components), (6, 4, 1));
        assert_eq!(header.dpi, Some(300.0));
        assert_eq!(jpeg_header(&jpeg[..20]), None);
        assert_eq!(jpeg_header(b"not a jpeg"), None);
    }
}
