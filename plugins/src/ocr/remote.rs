//! OCR done elsewhere: seed 002 allows the OCR engine on one server of a
//! pair only. A server without the engine hands each prepared page to a
//! [`RemoteOcr`] (the gateway gives one that asks the other server over the
//! pair link); the pipeline knows nothing of pairs, only this trait.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};

/// What recognising one page gives: the searchable PDF of that page and its
/// text, as the local engine writes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OcrOutput {
    pub pdf: Vec<u8>,
    pub text: String,
}

/// One page for a remote engine.
#[derive(Debug, Clone)]
pub struct OcrRequest {
    /// The page image (PNG, JPEG or a single-page TIFF), as prepared for
    /// the local engine.
    pub image: Vec<u8>,
    /// `eng+deu`, as tesseract takes it.
    pub languages: String,
    /// The resolution to assume when the image records none.
    pub dpi: Option<u32>,
}

/// Why a remote recognition failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteError {
    /// In plain words; when nothing can do OCR, what to install where.
    pub why: String,
    /// `true` when trying again cannot help (the other server has no engine
    /// or not the language); `false` for an unreachable or slow peer.
    pub permanent: bool,
}

/// The future a remote recognition returns.
pub type RemoteFuture = Pin<Box<dyn Future<Output = Result<OcrOutput, RemoteError>> + Send>>;

/// An OCR engine on another server.
pub trait RemoteOcr: Send + Sync {
    /// Recognises one page; the error says in plain words what failed and,
    /// when nothing can do OCR, what to install where.
    fn recognise(&self, request: OcrRequest) -> RemoteFuture;

    /// Where it runs, for status and messages (e.g. `the peer gw-b`).
    fn describe(&self) -> String;

    /// Whether it can take pages now (the peer is paired and reachable).
    fn available(&self) -> bool {
        true
    }
}

/// Where a registry finds its remote engine, once one is set (the pair link
/// starts after the workflows are built, so the slot is read at run time).
#[derive(Clone, Default)]
pub struct RemoteSlot(Arc<RwLock<Option<Arc<dyn RemoteOcr>>>>);

impl RemoteSlot {
    pub fn set(&self, remote: Arc<dyn RemoteOcr>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Some(remote);
    }

    pub fn get(&self) -> Option<Arc<dyn RemoteOcr>> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl std::fmt::Debug for RemoteSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.get() {
            Some(r) => write!(f, "RemoteSlot({})", r.describe()),
            None => write!(f, "RemoteSlot(none)"),
        }
    }
}
