//! Fuzz target: an uploaded page file as the pipeline reads it
//! (`plugins::page::read`). The intake stores a page under the format it
//! sniffs from the first bytes; the assemble and OCR steps then count the
//! pages of the file (TIFF directories, the PDF page tree), read sizes and
//! resolutions from headers and decode raster pages under a pixel limit.
//! Every file must give pages or a `PageReadError`, never a panic.

#![no_main]

use std::io::Write;
use std::sync::{LazyLock, Mutex};

use libfuzzer_sys::fuzz_target;
use plugins::page::{decode_raster, enumerate_pages, jpeg_header, raster_info};
use plugins::{PageFile, PageFormat};

/// Small enough that a page announcing more is refused before decoding,
/// and that decoding stays fast.
const MAX_PIXELS: u64 = 1 << 20;
/// Pages of one file looked at per input.
const MAX_PAGES: usize = 8;

static FILE: LazyLock<Mutex<tempfile::NamedTempFile>> = LazyLock::new(|| {
    let file = tempfile::Builder::new()
        .prefix("scangw-fuzz-page-")
        .tempfile_in("/dev/shm")
        .or_else(|_| tempfile::NamedTempFile::new())
        .expect("a temporary file");
    Mutex::new(file)
});

fuzz_target!(|data: &[u8]| {
    let _ = jpeg_header(data);
    let Some(format) = PageFormat::sniff(data) else {
        return;
    };
    let file = FILE.lock().expect("one execution at a time");
    {
        let mut f = file.as_file();
        f.set_len(0).expect("truncating the file");
        std::io::Seek::rewind(&mut f).expect("rewinding the file");
        f.write_all(data).expect("writing the file");
    }
    let files = [PageFile {
        path: file.path().to_owned(),
        format,
    }];
    let Ok(pages) = enumerate_pages(&files) else {
        return;
    };
    assert!(!pages.is_empty(), "a file with no pages was not refused");
    for page in pages.iter().take(MAX_PAGES) {
        if format == PageFormat::Pdf {
            continue;
        }
        if raster_info(page).is_ok() {
            let _ = decode_raster(page, MAX_PIXELS);
        }
    }
});
