//! Owns the device agent's scanner: where the pages of a scan come from
//! (the image files of a directory, or rendered text pages made once at
//! start-up). It must not send pages anywhere or keep them; the outbox
//! copies them when the scan is kept.

use std::path::{Path, PathBuf};

use crate::{
    agent::config::ScanSourceSetting,
    multipart::Page,
    page_source::{PageSource, PageSourceError, make_pages},
};

/// File name endings the directory source takes as pages; the gateway
/// accepts these formats.
const PAGE_EXTENSIONS: &[&str] = &["tif", "tiff", "jpg", "jpeg", "png", "pdf"];

/// The scanner could not produce pages.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// The directory cannot be read.
    #[error("the scanner cannot read {}: {source}", dir.display())]
    Read {
        /// The directory.
        dir: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The directory has no page files.
    #[error("the scanner found no pages in {} (TIFF, JPEG, PNG or PDF files)", dir.display())]
    Empty {
        /// The directory.
        dir: PathBuf,
    },
    /// Rendering pages failed.
    #[error(transparent)]
    Render(#[from] PageSourceError),
}

/// The device's scanner.
#[derive(Debug, Clone)]
pub enum Scanner {
    /// Every page file of the directory, in name order, read at each scan.
    Directory(PathBuf),
    /// The same rendered pages for every scan.
    Generated(Vec<Page>),
}

impl Scanner {
    /// A scanner for the configured source; renders generated pages now
    /// (blocking: call from a blocking thread), so a missing font is an
    /// error at start-up, not at the first scan.
    pub fn new(setting: &ScanSourceSetting) -> Result<Scanner, ScanError> {
        match setting {
            ScanSourceSetting::Directory(dir) => {
                let scanner = Scanner::Directory(dir.clone());
                scanner.page_files()?;
                Ok(scanner)
            }
            ScanSourceSetting::Generated { pages, format, dpi } => {
                let source = PageSource::Text {
                    format: *format,
                    dpi: *dpi,
                };
                Ok(Scanner::Generated(make_pages(source, *pages)?))
            }
        }
    }

    /// The pages of one scan, in order.
    pub async fn scan(&self) -> Result<Vec<Page>, ScanError> {
        match self {
            Scanner::Generated(pages) => Ok(pages.clone()),
            Scanner::Directory(dir) => {
                let mut pages = Vec::new();
                for path in self.page_files()? {
                    pages.push(Page::from_file(&path).await.map_err(|e| ScanError::Read {
                        dir: dir.clone(),
                        source: e.source,
                    })?);
                }
                Ok(pages)
            }
        }
    }

    fn page_files(&self) -> Result<Vec<PathBuf>, ScanError> {
        let Scanner::Directory(dir) = self else {
            return Ok(Vec::new());
        };
        let read_error = |source| ScanError::Read {
            dir: dir.clone(),
            source,
        };
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(read_error)? {
            let path = entry.map_err(read_error)?.path();
            if path.is_file() && is_page_file(&path) {
                files.push(path);
            }
        }
        if files.is_empty() {
            return Err(ScanError::Empty { dir: dir.clone() });
        }
        files.sort();
        Ok(files)
    }
}

fn is_page_file(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| PAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_directory_gives_its_page_files_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["b.PNG", "a.tif", "notes.txt", "c.pdf"] {
            std::fs::write(dir.path().join(name), name).unwrap();
        }
        let scanner = Scanner::new(&ScanSourceSetting::Directory(dir.path().to_owned())).unwrap();
        let pages = scanner.scan().await.unwrap();
        let names: Vec<String> = pages
            .iter()
            .map(|p| match p {
                Page::File { path, .. } => path.file_name().unwrap().to_string_lossy().into(),
                Page::Memory(_) => panic!("directory pages are files"),
            })
            .collect();
        assert_eq!(names, ["a.tif", "b.PNG", "c.pdf"]);
    }

    #[test]
    fn an_empty_directory_is_refused_at_start_up() {
        let dir = tempfile::tempdir().unwrap();
        let e = Scanner::new(&ScanSourceSetting::Directory(dir.path().to_owned())).unwrap_err();
        assert!(e.to_string().contains("no pages"), "{e}");
    }
}
