//! Page files as uploaded: their formats, recognised from content alone, and
//! the list of pages a job's files hold. It must not decide what any step
//! does with a page, and never trusts a file name or a client's claim.

mod read;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub(crate) use read::inherited;
pub use read::{
    DecodedPage, JpegHeader, PageReadError, PageRef, RasterInfo, decode_raster, enumerate_pages,
    jpeg_header, pdf_page_sizes, raster_info, tiff_single_page,
};

/// The file formats a device may upload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PageFormat {
    /// TIFF, single- or multi-page (classic or BigTIFF).
    Tiff,
    /// JPEG (JFIF or EXIF).
    Jpeg,
    /// PNG.
    Png,
    /// PDF, one or more pages.
    Pdf,
}

/// How many leading bytes [`PageFormat::sniff`] needs at most.
pub const SNIFF_LEN: usize = 8;

impl PageFormat {
    /// Recognises a format from the first bytes of a file (at least
    /// [`SNIFF_LEN`] for a sure answer). Only the magic bytes count: an upload
    /// named `scan.pdf` that starts like a PNG is a PNG.
    pub fn sniff(head: &[u8]) -> Option<PageFormat> {
        const PNG: &[u8] = b"\x89PNG\r\n\x1a\n";
        if head.starts_with(PNG) {
            return Some(PageFormat::Png);
        }
        // SOI followed by the start of any marker segment.
        if head.len() >= 3 && head[..3] == [0xFF, 0xD8, 0xFF] {
            return Some(PageFormat::Jpeg);
        }
        // Classic TIFF (42) and BigTIFF (43), in either byte order.
        if head.len() >= 4 {
            match &head[..4] {
                b"II*\0" | b"MM\0*" | b"II+\0" | b"MM\0+" => return Some(PageFormat::Tiff),
                _ => {}
            }
        }
        if head.starts_with(b"%PDF-") {
            return Some(PageFormat::Pdf);
        }
        None
    }

    /// The conventional file name extension, without the dot.
    pub fn extension(self) -> &'static str {
        match self {
            PageFormat::Tiff => "tiff",
            PageFormat::Jpeg => "jpg",
            PageFormat::Png => "png",
            PageFormat::Pdf => "pdf",
        }
    }

    /// The media type.
    pub fn mime(self) -> &'static str {
        match self {
            PageFormat::Tiff => "image/tiff",
            PageFormat::Jpeg => "image/jpeg",
            PageFormat::Png => "image/png",
            PageFormat::Pdf => "application/pdf",
        }
    }
}

impl std::fmt::Display for PageFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PageFormat::Tiff => "TIFF",
            PageFormat::Jpeg => "JPEG",
            PageFormat::Png => "PNG",
            PageFormat::Pdf => "PDF",
        })
    }
}

/// One uploaded file of a job. A file may hold several pages (multi-page
/// TIFF or PDF); the job's pages are its files' pages in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageFile {
    /// Where the gateway spooled the file.
    pub path: PathBuf,
    /// The format, as sniffed from the content at intake.
    pub format: PageFormat,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_format_is_recognised_by_its_magic_bytes() {
        let cases: [(&[u8], PageFormat); 7] = [
            (b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", PageFormat::Png),
            (&[0xFF, 0xD8, 0xFF, 0xE0, 0, 0x10], PageFormat::Jpeg),
            (&[0xFF, 0xD8, 0xFF, 0xE1], PageFormat::Jpeg),
            (b"II*\0\x08\0\0\0", PageFormat::Tiff),
            (b"MM\0*\0\0\0\x08", PageFormat::Tiff),
            (b"II+\0\x08\0\0\0", PageFormat::Tiff),
            (b"%PDF-1.7\n", PageFormat::Pdf),
        ];
        for (head, format) in cases {
            assert_eq!(PageFormat::sniff(head), Some(format), "{head:?}");
        }
    }

    #[test]
    fn garbage_and_near_misses_are_not_recognised() {
        let cases: [&[u8]; 9] = [
            b"",
            b"\x89PN",
            b"\x89PNG\r\n\x1a",
            &[0xFF, 0xD8],
            b"II*",
            b"II\0*",
            b"%PDF",
            b" %PDF-1.4",
            b"GIF89a\x01\0",
        ];
        for head in cases {
            assert_eq!(PageFormat::sniff(head), None, "{head:?}");
        }
    }

    #[test]
    fn formats_serialise_in_lowercase() {
        assert_eq!(
            serde_json::to_string(&PageFormat::Tiff).unwrap(),
            "\"tiff\""
        );
        let parsed: PageFormat = serde_json::from_str("\"jpeg\"").unwrap();
        assert_eq!(parsed, PageFormat::Jpeg);
        assert_eq!(PageFormat::Pdf.mime(), "application/pdf");
        assert_eq!(PageFormat::Jpeg.extension(), "jpg");
    }
}
