//! The handle the rest of the gateway holds on the pair link: it starts the
//! link's own thread and runtime (so heartbeats are sent and watched on time
//! even while the main runtime is saturated by uploads and OCR — a late
//! heartbeat would be a false DEAD), and passes admin requests to the
//! driver. Only the pair module talks to the peer.

use std::sync::{Arc, RwLock};

use pair_core::ActivationKind;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

use super::driver::{Command, Driver};
use super::identity::{PairIdentity, fingerprint_text};
use super::pairing::{PairingCode, PeerRecord};
use super::status::PairStatus;
use crate::changes::{Applied, Change, ChangeError, ChangeRoute};
use crate::core::Core;
use crate::settings::PairLinkSettings;

/// The handle the rest of the gateway holds.
#[derive(Clone)]
pub struct PairLink {
    commands: mpsc::UnboundedSender<Command>,
    status: Arc<RwLock<PairStatus>>,
    core: Arc<Core>,
}

impl PairLink {
    /// Starts the pair link for `core` on its own thread: binds the pair
    /// port (an error here stops start-up: a configured pair port that
    /// cannot be bound is a configuration problem), loads or makes the pair
    /// certificate, and begins heartbeats once paired.
    pub fn start(core: Arc<Core>, settings: PairLinkSettings) -> anyhow::Result<PairLink> {
        let me = core
            .server_id()
            .ok_or_else(|| anyhow::anyhow!("the pair link starts after the store was opened"))?;
        let identity = Arc::new(PairIdentity::load_or_create(&core.paths.tls, me)?);
        let std_listener = std::net::TcpListener::bind(settings.listen).map_err(|e| {
            anyhow::anyhow!(
                "cannot listen on the pair port {}: {e} — check [pair] listen",
                settings.listen
            )
        })?;
        std_listener.set_nonblocking(true)?;
        let listen = std_listener.local_addr()?;
        let status = Arc::new(RwLock::new(PairStatus {
            listen,
            peer_address: settings.peer.clone(),
            peer: None,
            peer_server_id: None,
            peer_fingerprint: None,
            fingerprint: fingerprint_text(&identity.fingerprint),
            state: "unpaired",
            since: None,
            link: "down",
            role: "inactive",
            refused: None,
            pairing_open: false,
            replication: Default::default(),
            jobs: Default::default(),
        }));
        let (commands, rx) = mpsc::unbounded_channel();
        let link = PairLink {
            commands,
            status: status.clone(),
            core: core.clone(),
        };
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("pair-link".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = started_tx.send(Err(anyhow::anyhow!("pair runtime: {e}")));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let listener = match TcpListener::from_std(std_listener) {
                        Ok(l) => l,
                        Err(e) => {
                            let _ = started_tx.send(Err(e.into()));
                            return;
                        }
                    };
                    let driver = match Driver::new(core, settings, identity, status, me).await {
                        Ok(d) => d,
                        Err(e) => {
                            let _ = started_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = started_tx.send(Ok(()));
                    driver.run(listener, rx).await;
                });
            })?;
        started_rx
            .recv()
            .map_err(|_| anyhow::anyhow!("the pair link thread ended while starting"))??;
        let asks = link.commands.clone();
        link.core.peer_acks.set_asker(Box::new(move |job| {
            let _ = asks.send(Command::AskJob(job));
        }));
        tracing::info!(%listen, "pair link listening");
        Ok(link)
    }

    /// The link's state; the job replication figures are read live (the
    /// intake changes them between the driver's updates).
    pub fn status(&self) -> PairStatus {
        let mut status = self
            .status
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if status.peer.is_some() {
            let acks = &self.core.peer_acks;
            status.replication.replication = Some(if acks.degraded() { "degraded" } else { "ok" });
            status.replication.unreplicated_jobs = acks.unreplicated();
        }
        status
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(make(tx)).ok()?;
        rx.await.ok()
    }

    /// Opens a one-time pairing code (primary only).
    pub async fn init_pairing(&self) -> Result<String, String> {
        self.ask(|reply| Command::InitPairing { reply })
            .await
            .unwrap_or_else(|| Err("the pair link is stopping".into()))
    }

    /// Pairs with the primary the code names (secondary only).
    pub async fn join(&self, code: &str) -> Result<PeerRecord, String> {
        let code = PairingCode::parse(code).map_err(|e| e.to_string())?;
        self.ask(|reply| Command::Join { code, reply })
            .await
            .unwrap_or_else(|| Err("the pair link is stopping".into()))
    }

    /// Forgets the paired peer.
    pub async fn unpair(&self) -> Result<(), String> {
        self.ask(|reply| Command::Unpair { reply })
            .await
            .unwrap_or_else(|| Err("the pair link is stopping".into()))
    }

    /// Tells the protocol about a license change an admin made.
    pub fn activated(&self, kind: ActivationKind) {
        let _ = self.commands.send(Command::Activated(kind));
    }

    /// Hands a configuration change to the protocol (see
    /// [`crate::changes::ChangeRoute`]).
    pub fn change(&self, change: Change) -> oneshot::Receiver<Result<Applied, ChangeError>> {
        let (reply, rx) = oneshot::channel();
        let _ = self.commands.send(Command::Change { change, reply });
        rx
    }

    /// A clean stop: the peer is told (it shows CLOSE, not DEAD).
    pub async fn shutdown(&self) {
        let _ = self.ask(|reply| Command::Shutdown { reply }).await;
    }
}

impl ChangeRoute for PairLink {
    fn submit(&self, change: Change) -> oneshot::Receiver<Result<Applied, ChangeError>> {
        self.change(change)
    }
}
