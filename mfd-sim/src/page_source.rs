//! Owns where the pages of a simulation run come from: rendered text pages
//! with known content (so OCR output can be checked against it) or
//! exact-size noise PNGs (for sheer upload volume). It must not send pages
//! anywhere.

use bytes::Bytes;

use crate::{
    multipart::Page,
    pages::{PageError, PageRenderer, ScanFormat},
    synthetic::{SizeOutOfRange, noise_png},
};

/// How a run makes its pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageSource {
    /// Rendered text, see [`page_text`].
    Text {
        /// The file format.
        format: ScanFormat,
        /// The resolution.
        dpi: u32,
    },
    /// Valid greyscale PNGs of exactly this many bytes, filled with noise.
    Random {
        /// The size of each page.
        bytes: usize,
    },
}

/// Pages could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PageSourceError {
    /// Rendering failed (a missing font, say).
    #[error("cannot render text pages: {0}")]
    Render(#[from] PageError),
    /// The noise page size is out of range.
    #[error(transparent)]
    Size(#[from] SizeOutOfRange),
}

/// The text on page `page` (from 1) of `of`: short, distinctive lines that
/// an OCR engine reads back reliably, with the page number spelled out so a
/// page mix-up is visible.
pub fn page_text(page: usize, of: usize) -> String {
    format!(
        "MFD-SIM TEST PAGE {page} OF {of}\n\
         The quick brown fox jumps over the lazy dog.\n\
         Pack my box with five dozen liquor jugs.\n\
         Reference number 4711-{page:04}"
    )
}

/// Makes `count` pages. They are made once per run and shared by every job,
/// so rendering cost does not distort the measurement.
pub fn make_pages(source: PageSource, count: usize) -> Result<Vec<Page>, PageSourceError> {
    match source {
        PageSource::Text { format, dpi } => {
            let renderer = PageRenderer::new()?;
            (1..=count)
                .map(|n| {
                    let bytes = renderer.render(&page_text(n, count), format, dpi)?;
                    Ok(Page::Memory(Bytes::from(bytes)))
                })
                .collect()
        }
        PageSource::Random { bytes } => (0..count)
            .map(|n| Ok(Page::Memory(noise_png(bytes, n as u64)?)))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_pages_have_the_size_and_differ() {
        let pages = make_pages(PageSource::Random { bytes: 4000 }, 3).unwrap();
        assert_eq!(pages.len(), 3);
        assert!(pages.iter().all(|p| p.len() == 4000));
        assert!(
            pages[0] != pages[1] && pages[1] != pages[2],
            "pages must differ"
        );
    }

    #[test]
    fn page_text_names_the_page() {
        let t = page_text(2, 5);
        assert!(t.starts_with("MFD-SIM TEST PAGE 2 OF 5\n"));
        assert!(t.ends_with("4711-0002"));
    }

    #[test]
    fn text_pages_are_real_images_or_say_what_is_missing() {
        // The font is a system package; without it the error must say so
        // rather than produce something that is not a page.
        match make_pages(
            PageSource::Text {
                format: ScanFormat::Png,
                dpi: 100,
            },
            1,
        ) {
            Ok(pages) => {
                let Page::Memory(bytes) = &pages[0] else {
                    panic!("text pages are made in memory");
                };
                assert_eq!(image::guess_format(bytes).unwrap(), image::ImageFormat::Png);
            }
            Err(e) => assert!(e.to_string().contains("fonts-dejavu-core"), "{e}"),
        }
    }
}
