//! OCR by the peer (seed 002: the OCR engine may be installed on one server
//! of the pair only). A server without the engine sends each prepared page
//! over the pair link; the peer recognises it with its own engine, within
//! its own OCR parallelism, and sends back the page's searchable PDF and
//! text. The pipeline sees only `plugins::ocr::RemoteOcr`.
//!
//! Rules owned here:
//! * only the paired peer is asked, only while the link is up; an
//!   unreachable or slow peer is a transient failure (the step is retried),
//!   a peer without the engine or the language a permanent one whose reason
//!   says what to install where;
//! * pages and results travel as bulk frames, behind every control frame.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use plugins::ocr::{OcrOutput, OcrRequest, RemoteError, RemoteFuture, RemoteOcr};
use tokio::sync::oneshot;
use uuid::Uuid;

use super::frame;
use super::jobs::LinkSlot;
use super::wire::{PageAnswer, Wire};
use crate::core::Core;

/// How long one page may take on the peer, queueing included.
const PEER_PAGE_TIMEOUT: Duration = Duration::from_secs(300);

type Pending = Arc<Mutex<HashMap<Uuid, oneshot::Sender<PageAnswer>>>>;

/// The peer as an OCR engine.
#[derive(Clone)]
pub struct PeerOcr {
    me: String,
    /// The paired peer's instance name; `None` while unpaired.
    peer: Arc<RwLock<Option<String>>>,
    link: LinkSlot,
    pending: Pending,
}

impl PeerOcr {
    pub fn new(me: &str, link: LinkSlot) -> PeerOcr {
        PeerOcr {
            me: me.to_owned(),
            peer: Arc::default(),
            link,
            pending: Arc::default(),
        }
    }

    /// The driver says who the peer is (or that there is none).
    pub fn set_peer(&self, name: Option<String>) {
        *self.peer.write().unwrap_or_else(|p| p.into_inner()) = name;
    }

    fn peer_name(&self) -> Option<String> {
        self.peer.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The link closed: pages waiting for the peer's answer are retried
    /// later rather than waiting for their timeout.
    pub fn link_closed(&self) {
        let waiting: Vec<_> = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .collect();
        for (_, tx) in waiting {
            let _ = tx.send(PageAnswer::Failed {
                why: "the pair link closed while the peer had the page; the step is tried again"
                    .into(),
                permanent: false,
            });
        }
    }

    /// The peer's answer for page `id`.
    pub fn answered(&self, id: Uuid, answer: PageAnswer) {
        let waiting = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        if let Some(tx) = waiting {
            let _ = tx.send(answer);
        }
    }
}

impl RemoteOcr for PeerOcr {
    fn recognise(&self, request: OcrRequest) -> RemoteFuture {
        let me = self.me.clone();
        let Some(peer) = self.peer_name() else {
            return Box::pin(async move {
                Err(RemoteError {
                    why: format!(
                        "the OCR engine is not installed on {me} and it has no paired server to ask: install tesseract-ocr on {me}"
                    ),
                    permanent: true,
                })
            });
        };
        let writer = self.link.borrow().as_ref().map(|(_, w)| w.clone());
        let pending = self.pending.clone();
        Box::pin(async move {
            let Some(writer) = writer else {
                return Err(RemoteError {
                    why: format!(
                        "{peer} cannot be reached over the pair link now; the step is tried again"
                    ),
                    permanent: false,
                });
            };
            let id = Uuid::new_v4();
            let (tx, rx) = oneshot::channel();
            pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id, tx);
            let wire = Wire::OcrRequest {
                id,
                languages: request.languages,
                dpi: request.dpi,
                image: B64.encode(&request.image),
            };
            let forget = || {
                pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&id);
            };
            if writer.bulk.send(frame::encode(&wire)).await.is_err() {
                forget();
                return Err(RemoteError {
                    why: format!("the pair link to {peer} closed; the step is tried again"),
                    permanent: false,
                });
            }
            let answer = match tokio::time::timeout(PEER_PAGE_TIMEOUT, rx).await {
                Ok(Ok(answer)) => answer,
                _ => {
                    forget();
                    return Err(RemoteError {
                        why: format!(
                            "{peer} did not answer within {} s; the step is tried again",
                            PEER_PAGE_TIMEOUT.as_secs()
                        ),
                        permanent: false,
                    });
                }
            };
            match answer {
                PageAnswer::Done { pdf, text } => Ok(OcrOutput {
                    pdf: B64.decode(pdf).map_err(|_| RemoteError {
                        why: format!("{peer} sent a page PDF that is not base64"),
                        permanent: false,
                    })?,
                    text,
                }),
                PageAnswer::Failed { why, permanent } => Err(RemoteError { why, permanent }),
            }
        })
    }

    fn describe(&self) -> String {
        match self.peer_name() {
            Some(peer) => format!("the peer {peer}"),
            None => "no paired server".to_owned(),
        }
    }

    fn available(&self) -> bool {
        self.peer_name().is_some()
    }
}

/// The peer's side: recognises one page with this server's engine and
/// answers over the link.
pub async fn serve(
    core: Arc<Core>,
    link: LinkSlot,
    asker: String,
    id: Uuid,
    languages: String,
    dpi: Option<u32>,
    image: String,
) {
    let answer = recognise_here(&core, &asker, id, &languages, dpi, &image).await;
    match &answer {
        PageAnswer::Done { .. } => tracing::info!(peer = asker, "page recognised for the peer"),
        PageAnswer::Failed { why, .. } => {
            tracing::warn!(
                peer = asker,
                why,
                "a page of the peer's could not be recognised"
            )
        }
    }
    let wire = Wire::OcrAnswer { id, answer };
    let writer = link.borrow().as_ref().map(|(_, w)| w.clone());
    if let Some(writer) = writer {
        let _ = writer.bulk.send(frame::encode(&wire)).await;
    }
}

async fn recognise_here(
    core: &Core,
    asker: &str,
    id: Uuid,
    languages: &str,
    dpi: Option<u32>,
    image: &str,
) -> PageAnswer {
    let me = core.name();
    let failed = |why: String, permanent: bool| PageAnswer::Failed { why, permanent };
    let Some(tool) = core.registry.ocr_engine() else {
        return failed(
            format!(
                "the OCR engine is installed neither on {asker} nor on {me}: install tesseract-ocr on one of them"
            ),
            true,
        );
    };
    if let Some(missing) = languages
        .split('+')
        .find(|l| !tool.languages.iter().any(|have| have == l))
    {
        return failed(
            format!(
                "language `{missing}` is not installed for the OCR engine on {me}: install tesseract-ocr-{} there",
                missing.replace('_', "-").to_lowercase()
            ),
            true,
        );
    }
    let Ok(bytes) = B64.decode(image) else {
        return failed("the page image is not base64".into(), false);
    };
    let dir = core.paths.temp.clone();
    let input = dir.join(format!("peer-ocr-{id}-src"));
    let out_base = dir.join(format!("peer-ocr-{id}-out"));
    let cleanup = {
        let (input, out_base) = (input.clone(), out_base.clone());
        move || {
            for path in [
                input.clone(),
                plugins::ocr::with_suffix(&out_base, ".pdf"),
                plugins::ocr::with_suffix(&out_base, ".txt"),
            ] {
                let _ = std::fs::remove_file(path);
            }
        }
    };
    if let Err(e) = tokio::fs::create_dir_all(&dir).await {
        return failed(
            format!("{me} cannot write its temporary directory: {e}"),
            false,
        );
    }
    if let Err(e) = tokio::fs::write(&input, &bytes).await {
        return failed(format!("{me} cannot write the page: {e}"), false);
    }
    let result = {
        let _permit = core.registry.ocr_slots().acquire_owned().await;
        plugins::ocr::recognise(
            &tool.path,
            &input,
            &out_base,
            languages,
            dpi,
            &format!("a page from {asker}"),
        )
        .await
    };
    let answer = match result {
        Ok(()) => {
            let pdf = tokio::fs::read(plugins::ocr::with_suffix(&out_base, ".pdf")).await;
            let text =
                tokio::fs::read_to_string(plugins::ocr::with_suffix(&out_base, ".txt")).await;
            match (pdf, text) {
                (Ok(pdf), Ok(text)) => PageAnswer::Done {
                    pdf: B64.encode(pdf),
                    text,
                },
                _ => failed(format!("{me}'s OCR engine left no output"), false),
            }
        }
        Err(e) => failed(format!("{me}: {e}"), false),
    };
    cleanup();
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    fn core(dir: &std::path::Path) -> Arc<Core> {
        Core::for_tests_in(dir, "gw-a", "")
    }

    /// With no engine anywhere the failure is permanent and names what to
    /// install where; an unreachable peer is worth another try.
    #[tokio::test]
    async fn the_reasons_say_what_to_install_where() {
        let (_tx, link) = tokio::sync::watch::channel(None);
        let peer = PeerOcr::new("gw-a", link);
        let request = || OcrRequest {
            image: vec![1, 2, 3],
            languages: "eng".into(),
            dpi: None,
        };
        let e = peer.recognise(request()).await.unwrap_err();
        assert!(e.permanent, "{e:?}");
        assert!(e.why.contains("install tesseract-ocr on gw-a"), "{e:?}");
        assert!(!peer.available());

        peer.set_peer(Some("gw-b".into()));
        assert_eq!(peer.describe(), "the peer gw-b");
        let e = peer.recognise(request()).await.unwrap_err();
        assert!(!e.permanent, "no link now: try again later ({e:?})");

        // The peer's side, on a server without the engine.
        let dir = tempfile::tempdir().unwrap();
        let answer = recognise_here(
            &core(dir.path()),
            "gw-b",
            Uuid::new_v4(),
            "eng",
            None,
            "AAAA",
        )
        .await;
        match answer {
            PageAnswer::Failed { why, permanent } => {
                assert!(permanent);
                assert!(
                    why.contains("installed neither on gw-b nor on gw-a"),
                    "{why}"
                );
            }
            other => panic!("{other:?}"),
        }
    }
}
