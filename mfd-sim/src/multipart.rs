//! Owns the `multipart/form-data` encoding of a job upload — the `manifest`
//! part first, then one `page` part per page in order — and the body that
//! streams it; it must not open network connections or know about servers.
//!
//! Pages held in memory are sent as the very `Bytes` the caller gave (no
//! copy); pages in files are read in chunks while the body is sent, so a
//! 20 MB scan is never held in memory twice.

use std::{
    collections::{BTreeMap, VecDeque},
    io,
    path::{Path, PathBuf},
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::{Bytes, BytesMut};
use hyper::body::{Body, Frame, SizeHint};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, ReadBuf};

/// How much of a page file is read per body frame.
const FILE_CHUNK: usize = 256 * 1024;

/// The `manifest` part of a job upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// A configured workflow, e.g. `scan-to-folder`.
    pub workflow: String,
    /// Must equal the number of page parts; the gateway checks it.
    pub page_count: usize,
    /// Free-form metadata (the gateway limits keys and values).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

impl Manifest {
    /// A manifest without metadata.
    pub fn new(workflow: impl Into<String>, page_count: usize) -> Self {
        Manifest {
            workflow: workflow.into(),
            page_count,
            metadata: BTreeMap::new(),
        }
    }

    /// Adds one metadata entry.
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }
}

/// One scanned page, in memory or in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Page {
    /// Page bytes in memory; cloning shares them.
    Memory(Bytes),
    /// A page file and its length when the page was described; the upload
    /// fails if the file has become shorter by the time it is sent.
    File {
        /// The file.
        path: PathBuf,
        /// Its length in bytes.
        len: u64,
    },
}

impl Page {
    /// Describes a page file, reading its length now.
    pub async fn from_file(path: impl Into<PathBuf>) -> Result<Page, PageReadError> {
        let path = path.into();
        match tokio::fs::metadata(&path).await {
            Ok(meta) if meta.is_file() => Ok(Page::File {
                len: meta.len(),
                path,
            }),
            Ok(_) => Err(PageReadError {
                path,
                source: io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"),
            }),
            Err(source) => Err(PageReadError { path, source }),
        }
    }

    /// The page's length in bytes.
    pub fn len(&self) -> u64 {
        match self {
            Page::Memory(b) => b.len() as u64,
            Page::File { len, .. } => *len,
        }
    }

    /// True for a page of zero bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A page file could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read page file {}: {source}", path.display())]
pub struct PageReadError {
    /// The page file.
    pub path: PathBuf,
    /// The operating system's error.
    #[source]
    pub source: io::Error,
}

/// Why a job form could not be built.
#[derive(Debug, thiserror::Error)]
pub enum FormError {
    /// The manifest did not serialise (cannot happen for the plain types used,
    /// but serde's signature says it may).
    #[error("cannot encode the manifest: {0}")]
    Manifest(#[from] serde_json::Error),
    /// A caller-chosen boundary breaks RFC 2046's rules.
    #[error(
        "invalid multipart boundary `{0}`: use 1 to 70 characters of A-Z a-z 0-9 ' ( ) + _ , - . / : = ?"
    )]
    InvalidBoundary(String),
    /// A caller-chosen boundary occurs inside a page held in memory.
    #[error("the multipart boundary occurs inside page {page}; choose another boundary")]
    BoundaryInPage {
        /// The page's position, from 1.
        page: usize,
    },
}

/// One piece of a form before it is opened for sending.
#[derive(Debug, Clone)]
enum Segment {
    Bytes(Bytes),
    File { path: PathBuf, len: u64 },
}

/// A job upload, described but not yet opened: cheap to keep and to open
/// again, which is what a retry with the same job id needs.
#[derive(Debug, Clone)]
pub struct MultipartForm {
    boundary: String,
    segments: Vec<Segment>,
}

impl MultipartForm {
    /// The form for one job with a fresh random boundary. A 128-bit random
    /// boundary cannot plausibly occur inside a page, so page files are not
    /// scanned for it (that would mean reading every file twice).
    pub fn job(manifest: &Manifest, pages: &[Page]) -> Result<Self, FormError> {
        let boundary = format!("mfd-sim-{}", uuid::Uuid::new_v4().simple());
        Self::build(manifest, pages, boundary)
    }

    /// The form with a caller-chosen boundary, so that two runs produce the
    /// identical body bytes. Pages in memory are checked for the boundary;
    /// pages in files are not.
    pub fn job_with_boundary(
        manifest: &Manifest,
        pages: &[Page],
        boundary: &str,
    ) -> Result<Self, FormError> {
        let allowed = |c: char| c.is_ascii_alphanumeric() || "'()+_,-./:=?".contains(c);
        if boundary.is_empty() || boundary.len() > 70 || !boundary.chars().all(allowed) {
            return Err(FormError::InvalidBoundary(boundary.to_owned()));
        }
        let delimiter = format!("--{boundary}");
        for (i, page) in pages.iter().enumerate() {
            if let Page::Memory(bytes) = page
                && contains(bytes, delimiter.as_bytes())
            {
                return Err(FormError::BoundaryInPage { page: i + 1 });
            }
        }
        Self::build(manifest, pages, boundary.to_owned())
    }

    fn build(manifest: &Manifest, pages: &[Page], boundary: String) -> Result<Self, FormError> {
        let manifest_json = serde_json::to_vec(manifest)?;
        let mut segments = Vec::with_capacity(2 * pages.len() + 3);
        let mut head = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"manifest\"\r\n\
             Content-Type: application/json\r\n\r\n"
        )
        .into_bytes();
        head.extend_from_slice(&manifest_json);
        segments.push(Segment::Bytes(Bytes::from(head)));
        for (i, page) in pages.iter().enumerate() {
            // File names and declared types are ignored by the gateway, which
            // sniffs the format; a neutral name keeps device paths private.
            let part_head = format!(
                "\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"page\"; \
                 filename=\"page-{:04}\"\r\nContent-Type: application/octet-stream\r\n\r\n",
                i + 1
            );
            segments.push(Segment::Bytes(Bytes::from(part_head)));
            segments.push(match page {
                Page::Memory(bytes) => Segment::Bytes(bytes.clone()),
                Page::File { path, len } => Segment::File {
                    path: path.clone(),
                    len: *len,
                },
            });
        }
        segments.push(Segment::Bytes(Bytes::from(format!(
            "\r\n--{boundary}--\r\n"
        ))));
        Ok(MultipartForm { boundary, segments })
    }

    /// The boundary in use.
    pub fn boundary(&self) -> &str {
        &self.boundary
    }

    /// The value for the `Content-Type` header.
    pub fn content_type(&self) -> String {
        format!("multipart/form-data; boundary={}", self.boundary)
    }

    /// The exact length of the body in bytes.
    pub fn content_length(&self) -> u64 {
        self.segments
            .iter()
            .map(|s| match s {
                Segment::Bytes(b) => b.len() as u64,
                Segment::File { len, .. } => *len,
            })
            .sum()
    }

    /// The whole body as one buffer, when every page is in memory; `None` when
    /// a page is a file (read those through [`MultipartForm::open`]).
    pub fn to_bytes(&self) -> Option<Bytes> {
        let mut out = BytesMut::with_capacity(self.content_length() as usize);
        for segment in &self.segments {
            match segment {
                Segment::Bytes(b) => out.extend_from_slice(b),
                Segment::File { .. } => return None,
            }
        }
        Some(out.freeze())
    }

    /// Opens the page files and returns a body ready to send.
    pub async fn open(&self) -> Result<MultipartBody, PageReadError> {
        let mut open = VecDeque::with_capacity(self.segments.len());
        for segment in &self.segments {
            open.push_back(match segment {
                Segment::Bytes(b) => OpenSegment::Bytes(b.clone()),
                Segment::File { path, len } => OpenSegment::File {
                    file: tokio::fs::File::open(path)
                        .await
                        .map_err(|source| PageReadError {
                            path: path.clone(),
                            source,
                        })?,
                    path: path.clone(),
                    left: *len,
                },
            });
        }
        Ok(MultipartBody {
            segments: open,
            remaining: self.content_length(),
            scratch: BytesMut::new(),
        })
    }
}

/// A naive substring search; it runs once per in-memory page of a load run.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

#[derive(Debug)]
enum OpenSegment {
    Bytes(Bytes),
    File {
        file: tokio::fs::File,
        path: PathBuf,
        left: u64,
    },
}

/// The streaming body of an opened [`MultipartForm`].
#[derive(Debug)]
pub struct MultipartBody {
    segments: VecDeque<OpenSegment>,
    remaining: u64,
    scratch: BytesMut,
}

impl MultipartBody {
    fn read_error(path: &Path, source: io::Error) -> PageReadError {
        PageReadError {
            path: path.to_owned(),
            source,
        }
    }
}

impl Body for MultipartBody {
    type Data = Bytes;
    type Error = PageReadError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, PageReadError>>> {
        let this = self.get_mut();
        loop {
            let Some(front) = this.segments.front_mut() else {
                return Poll::Ready(None);
            };
            match front {
                OpenSegment::Bytes(bytes) => {
                    let bytes = std::mem::take(bytes);
                    this.segments.pop_front();
                    if bytes.is_empty() {
                        continue;
                    }
                    this.remaining -= bytes.len() as u64;
                    return Poll::Ready(Some(Ok(Frame::data(bytes))));
                }
                OpenSegment::File { file, path, left } => {
                    if *left == 0 {
                        this.segments.pop_front();
                        continue;
                    }
                    let want = (*left).min(FILE_CHUNK as u64) as usize;
                    // The scratch buffer is zero-filled rather than left
                    // uninitialised so that no unsafe code is needed; the
                    // memset is small next to the read itself.
                    this.scratch.resize(want, 0);
                    let mut buf = ReadBuf::new(&mut this.scratch[..want]);
                    if let Err(e) = ready!(Pin::new(file).poll_read(cx, &mut buf)) {
                        return Poll::Ready(Some(Err(Self::read_error(path, e))));
                    }
                    let got = buf.filled().len();
                    if got == 0 {
                        let e = io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!(
                                "the file became shorter while it was uploaded ({left} bytes missing)"
                            ),
                        );
                        return Poll::Ready(Some(Err(Self::read_error(path, e))));
                    }
                    *left -= got as u64;
                    this.remaining -= got as u64;
                    this.scratch.truncate(got);
                    let chunk = this.scratch.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(chunk))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.segments.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::io::Write;

    #[test]
    fn body_is_manifest_then_pages_with_exact_length() {
        let big = vec![7u8; 300_000];
        let pages = vec![
            Page::Memory(Bytes::from_static(b"first page")),
            Page::Memory(Bytes::from(big.clone())),
        ];
        let manifest = Manifest::new("scan-to-folder", 2).with_metadata("matter", "A-17");
        let form = MultipartForm::job_with_boundary(&manifest, &pages, "b0und").unwrap();
        let body = form.to_bytes().unwrap();
        assert_eq!(body.len() as u64, form.content_length());
        assert_eq!(form.content_type(), "multipart/form-data; boundary=b0und");
        let page_head = |n: usize| {
            format!(
                "\r\n--b0und\r\nContent-Disposition: form-data; name=\"page\"; filename=\"page-000{n}\"\r\n\
                 Content-Type: application/octet-stream\r\n\r\n"
            )
        };
        let mut expected = b"--b0und\r\nContent-Disposition: form-data; name=\"manifest\"\r\n\
            Content-Type: application/json\r\n\r\n\
            {\"workflow\":\"scan-to-folder\",\"page_count\":2,\"metadata\":{\"matter\":\"A-17\"}}"
            .to_vec();
        expected.extend_from_slice(page_head(1).as_bytes());
        expected.extend_from_slice(b"first page");
        expected.extend_from_slice(page_head(2).as_bytes());
        expected.extend_from_slice(&big);
        expected.extend_from_slice(b"\r\n--b0und--\r\n");
        assert_eq!(body, expected);
    }

    #[test]
    fn boundaries_are_checked() {
        let m = Manifest::new("w", 1);
        let page = vec![Page::Memory(Bytes::from_static(b"abc--xyz--abc"))];
        assert!(matches!(
            MultipartForm::job_with_boundary(&m, &page, "xyz"),
            Err(FormError::BoundaryInPage { page: 1 })
        ));
        assert!(matches!(
            MultipartForm::job_with_boundary(&m, &page, "has space"),
            Err(FormError::InvalidBoundary(_))
        ));
        assert!(matches!(
            MultipartForm::job_with_boundary(&m, &page, &"x".repeat(71)),
            Err(FormError::InvalidBoundary(_))
        ));
        let a = MultipartForm::job(&m, &page).unwrap();
        let b = MultipartForm::job(&m, &page).unwrap();
        assert_ne!(a.boundary(), b.boundary(), "random boundaries must differ");
    }

    #[tokio::test]
    async fn file_pages_stream_the_same_bytes_as_memory_pages() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        let content: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
        file.write_all(&content).unwrap();
        let from_file = Page::from_file(file.path()).await.unwrap();
        assert_eq!(from_file.len(), 700_000);
        let m = Manifest::new("w", 1);
        let streamed = MultipartForm::job_with_boundary(&m, &[from_file], "B")
            .unwrap()
            .open()
            .await
            .unwrap();
        assert_eq!(streamed.size_hint().exact(), Some(streamed.remaining));
        let streamed = streamed.collect().await.unwrap().to_bytes();
        let in_memory = MultipartForm::job_with_boundary(&m, &[Page::Memory(content.into())], "B")
            .unwrap()
            .to_bytes()
            .unwrap();
        assert_eq!(streamed, in_memory);
    }

    #[tokio::test]
    async fn a_file_that_shrank_fails_the_body_instead_of_sending_short() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(&[1u8; 1000]).unwrap();
        let page = Page::File {
            path: file.path().to_owned(),
            len: 5000,
        };
        let form = MultipartForm::job(&Manifest::new("w", 1), &[page]).unwrap();
        assert!(form.to_bytes().is_none());
        let err = form.open().await.unwrap().collect().await.unwrap_err();
        assert_eq!(err.path, file.path());
        assert_eq!(err.source.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn missing_page_files_are_reported_with_their_path() {
        let err = Page::from_file("/nonexistent/page.png").await.unwrap_err();
        assert_eq!(err.path, Path::new("/nonexistent/page.png"));
        assert_eq!(err.source.kind(), io::ErrorKind::NotFound);
    }
}
