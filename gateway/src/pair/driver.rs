//! The pair link's driver: one task that owns this server's protocol node
//! (`pair_core::PairNode`) and feeds it everything that happens — time,
//! messages from the peer, the link coming and going, admin activations, a
//! clean stop — and carries out what it answers, in order: persist before
//! anything else, send, publish the role, notify. It also runs pairing on
//! both sides. It runs on the pair link's own thread.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use pair_core::{
    ActivationKind, Input, Liveness, Output, PairNode, PairSettings, ServerId, Timing,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_rustls::TlsConnector;

use super::connection::{HANDSHAKE_TIMEOUT, LinkEvent, accept_loop, dial_loop};
use super::frame;
use super::identity::{PairIdentity, fingerprint_text};
use super::pairing::{CODE_VALID_SECS, JoinAnswer, JoinRequest, OpenCode, PairingCode, PeerRecord};
use super::status::PairStatus;
use super::trust::{self, ListenerTrust};
use crate::core::Core;
use crate::license;
use crate::settings::PairLinkSettings;

/// The software's major version: servers of different majors never pair.
const SOFTWARE_MAJOR: u32 = 0;
/// How long a clean stop waits for the goodbye to leave.
const CLOSING_GRACE: Duration = Duration::from_millis(300);

/// Requests from the rest of the gateway (admin channel, shutdown).
pub enum Command {
    InitPairing {
        reply: oneshot::Sender<Result<String, String>>,
    },
    Join {
        code: PairingCode,
        reply: oneshot::Sender<Result<PeerRecord, String>>,
    },
    Unpair {
        reply: oneshot::Sender<Result<(), String>>,
    },
    Activated(ActivationKind),
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

/// The state the driver task owns.
pub struct Driver {
    core: Arc<Core>,
    settings: PairLinkSettings,
    identity: Arc<PairIdentity>,
    status: Arc<RwLock<PairStatus>>,
    me: ServerId,
    node: PairNode,
    started: Instant,
    peer: Option<PeerRecord>,
    trust: Arc<RwLock<ListenerTrust>>,
    open_code: Option<OpenCode>,
    /// The current connection: its generation and where frames go.
    link: Option<(u64, mpsc::Sender<Vec<u8>>)>,
    events_tx: mpsc::UnboundedSender<LinkEvent>,
    events: mpsc::UnboundedReceiver<LinkEvent>,
    /// Whether the dialer should connect (paired, this side dials, no link).
    want_dial: watch::Sender<Option<(String, [u8; 32], ServerId)>>,
    last_liveness: Liveness,
}

fn node_settings(
    me: ServerId,
    core: &Core,
    s: &PairLinkSettings,
    peer: Option<ServerId>,
) -> PairSettings {
    // The pull period of part 2; heartbeats carry the config stamp meanwhile.
    let timing = Timing::new(s.heartbeat_interval_ms, s.dead_threshold_ms, 5_000)
        .expect("validated with the settings");
    let settings = PairSettings::new(me, core.name(), SOFTWARE_MAJOR, timing);
    // `pin` never records this server's own id, the one peer `with_peer`
    // refuses; were it there anyway, the node would take any peer.
    match peer {
        Some(p) => settings.clone().with_peer(p).unwrap_or(settings),
        None => settings,
    }
}

impl Driver {
    pub async fn new(
        core: Arc<Core>,
        settings: PairLinkSettings,
        identity: Arc<PairIdentity>,
        status: Arc<RwLock<PairStatus>>,
        me: ServerId,
    ) -> anyhow::Result<Driver> {
        let ctx = core.license.clone();
        let today = core.clock.now().date_naive();
        let (persisted, peer) = core
            .data
            .run(move |store| {
                Ok((
                    license::pair_state(store, &ctx, today)?,
                    PeerRecord::load(store)?,
                ))
            })
            .await
            .map_err(|e| anyhow::anyhow!("reading the pair state: {e}"))?;
        let node = PairNode::new(
            node_settings(me, &core, &settings, peer.as_ref().map(|p| p.server)),
            persisted,
            0,
        );
        let trust = Arc::new(RwLock::new(ListenerTrust {
            pinned: peer.as_ref().and_then(PeerRecord::fingerprint_bytes),
            pairing_open: false,
        }));
        let (events_tx, events) = mpsc::unbounded_channel();
        let mut driver = Driver {
            core,
            settings,
            identity,
            status,
            me,
            node,
            started: Instant::now(),
            peer,
            trust,
            open_code: None,
            link: None,
            events_tx,
            events,
            want_dial: watch::Sender::new(None),
            last_liveness: Liveness::Unknown,
        };
        driver.refresh_dial();
        driver.update_status();
        Ok(driver)
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    pub async fn run(
        mut self,
        listener: TcpListener,
        mut commands: mpsc::UnboundedReceiver<Command>,
    ) {
        tokio::spawn(accept_loop(
            listener,
            self.identity.clone(),
            self.trust.clone(),
            self.events_tx.clone(),
        ));
        tokio::spawn(dial_loop(
            self.identity.clone(),
            self.want_dial.subscribe(),
            self.events_tx.clone(),
            Duration::from_millis(self.settings.heartbeat_interval_ms.max(50)),
            Duration::from_millis(self.settings.dead_threshold_ms),
        ));
        let start = self.node.step(0, Input::Tick);
        self.carry_out(start).await;
        loop {
            let wait = match self.node.next_timer_ms() {
                Some(at) => Duration::from_millis(at.saturating_sub(self.now_ms())),
                None => Duration::from_millis(self.settings.heartbeat_interval_ms),
            };
            let due = Instant::now() + wait;
            tokio::select! {
                biased;
                command = commands.recv() => match command {
                    None => return,
                    Some(Command::Shutdown { reply }) => {
                        let outputs = self.node.step(self.now_ms(), Input::Shutdown);
                        self.carry_out(outputs).await;
                        // Let the goodbye leave before the process goes.
                        tokio::time::sleep(CLOSING_GRACE).await;
                        let _ = reply.send(());
                        return;
                    }
                    Some(command) => self.on_command(command).await,
                },
                Some(event) = self.events.recv() => self.on_event(event).await,
                _ = tokio::time::sleep(wait) => {
                    // Woken much later than due: this process itself was not
                    // running (stopped, or starved of CPU). What the peer sent
                    // meanwhile waits in the socket; let the connection hand it
                    // over before the peer is judged by its silence, or a
                    // server resuming from SIGSTOP would call its healthy
                    // peer DEAD.
                    let late = due.elapsed();
                    if late > Duration::from_millis(self.settings.heartbeat_interval_ms) {
                        tokio::time::sleep(Duration::from_millis(self.settings.heartbeat_interval_ms)).await;
                        while let Ok(event) = self.events.try_recv() {
                            self.on_event(event).await;
                        }
                    }
                    let outputs = self.node.step(self.now_ms(), Input::Tick);
                    self.carry_out(outputs).await;
                }
            }
        }
    }

    async fn on_command(&mut self, command: Command) {
        match command {
            Command::InitPairing { reply } => {
                // A primary pairs with one server: a new code never replaces
                // the pinned peer behind the admin's back.
                if let Some(peer) = &self.peer {
                    let _ = reply.send(Err(format!(
                        "this server is already paired with {}; run `gateway pair unpair` first to pair with another server",
                        peer.instance
                    )));
                    return;
                }
                let role = self.core.role.snapshot().role;
                if role != crate::role::ServerRole::Primary {
                    let _ = reply.send(Err(format!(
                        "pairing starts on the primary; this server is {} — run `gateway pair init` there and `gateway pair join` here",
                        role.as_str()
                    )));
                    return;
                }
                let mut secret = [0u8; 16];
                if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
                    .is_err()
                {
                    let _ = reply.send(Err("the system random source failed".into()));
                    return;
                }
                let code = PairingCode {
                    primary_fingerprint: self.identity.fingerprint,
                    secret,
                    expires_at: self.core.clock.now() + chrono::Duration::seconds(CODE_VALID_SECS),
                };
                let text = code.text();
                self.open_code = Some(OpenCode { code, used: false });
                self.set_pairing_open(true);
                tracing::warn!(valid_secs = CODE_VALID_SECS, "pairing code opened");
                let _ = reply.send(Ok(text));
            }
            Command::Join { code, reply } => {
                let result = self.join(code).await;
                let _ = reply.send(result);
            }
            Command::Unpair { reply } => {
                let result = self
                    .core
                    .data
                    .run(PeerRecord::remove)
                    .await
                    .map_err(|e| e.to_string());
                if result.is_ok() {
                    tracing::warn!(peer = ?self.peer.as_ref().map(|p| &p.instance), "unpaired");
                    self.peer = None;
                    self.trust.write().unwrap_or_else(|p| p.into_inner()).pinned = None;
                    self.link = None;
                    self.rebuild_node().await;
                    self.refresh_dial();
                    self.update_status();
                }
                let _ = reply.send(result);
            }
            Command::Activated(kind) => {
                let outputs = self.node.step(self.now_ms(), Input::Activate(kind));
                self.carry_out(outputs).await;
            }
            Command::Shutdown { .. } => unreachable!("handled by the loop"),
        }
    }

    fn set_pairing_open(&mut self, open: bool) {
        self.trust
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .pairing_open = open;
        self.update_status();
    }

    /// The secondary's side of pairing: connect to the configured peer,
    /// verify it by the code's fingerprint, prove the secret, pin it.
    async fn join(&mut self, code: PairingCode) -> Result<PeerRecord, String> {
        let role = self.core.role.snapshot().role;
        if role == crate::role::ServerRole::Primary {
            return Err("this server is the primary: pairing is joined from the secondary (`gateway pair join` there)".into());
        }
        if let Some(peer) = &self.peer {
            return Err(format!(
                "this server is already paired with {}; run `gateway pair unpair` first to pair with another server",
                peer.instance
            ));
        }
        if self.core.clock.now() > code.expires_at {
            return Err(
                "the pairing code expired; run `gateway pair init` on the primary for a new one"
                    .into(),
            );
        }
        let config = trust::client_config(&self.identity, code.primary_fingerprint)
            .map_err(|e| format!("TLS set-up failed: {e}"))?;
        let stream =
            tokio::time::timeout(HANDSHAKE_TIMEOUT, TcpStream::connect(&self.settings.peer))
                .await
                .map_err(|_| {
                    format!(
                        "the primary's pair port {} did not answer",
                        self.settings.peer
                    )
                })?
                .map_err(|e| {
                    format!(
                        "cannot reach the primary's pair port {}: {e}",
                        self.settings.peer
                    )
                })?;
        let name = rustls_pki_types::ServerName::try_from("pairing.pair.invalid")
            .expect("a valid name")
            .to_owned();
        let mut tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, TlsConnector::from(config).connect(name, stream))
            .await
            .map_err(|_| "the TLS handshake with the primary timed out".to_string())?
            .map_err(|e| format!(
                "the primary at {} could not be verified ({e}); check that the code is from that server and that [pair] peer points to it",
                self.settings.peer
            ))?;
        let request = JoinRequest {
            proof: code.proof(&self.identity.fingerprint),
            server: self.me,
            instance: self.core.name().to_owned(),
        };
        frame::write(&mut tls, &request)
            .await
            .map_err(|e| format!("sending the pairing request: {e}"))?;
        let answer: JoinAnswer = tokio::time::timeout(HANDSHAKE_TIMEOUT, frame::read(&mut tls))
            .await
            .map_err(|_| "the primary did not answer the pairing request".to_string())?
            .map_err(|e| {
                // TLS 1.3 reports the server's refusal of this server's
                // certificate on the first read, not in the handshake.
                if e.to_string().contains("AccessDenied") {
                    "the primary refused this server's certificate: no pairing code is open there \
                     (a code works once and for a few minutes); run `gateway pair init` on the primary for a new one"
                        .to_string()
                } else {
                    format!("reading the primary's answer: {e}")
                }
            })?
            .ok_or("the primary closed the connection without an answer")?;
        match answer {
            JoinAnswer::Refused { reason } => Err(format!("the primary refused: {reason}")),
            JoinAnswer::Accepted { server, instance } => {
                let record = PeerRecord {
                    server,
                    instance,
                    fingerprint: fingerprint_text(&code.primary_fingerprint),
                    paired_at: self.core.clock.now(),
                };
                self.pin(record.clone()).await?;
                Ok(record)
            }
        }
    }

    /// Keeps `record` as the paired peer and starts talking to it.
    async fn pin(&mut self, record: PeerRecord) -> Result<(), String> {
        if record.server == self.me {
            return Err("the other end has this server's own id: it is this server".into());
        }
        let saved = record.clone();
        self.core
            .data
            .run(move |store| saved.save(store))
            .await
            .map_err(|e| format!("recording the peer: {e}"))?;
        tracing::warn!(peer = record.instance, server = %record.server, fingerprint = record.fingerprint, "paired");
        self.trust.write().unwrap_or_else(|p| p.into_inner()).pinned = record.fingerprint_bytes();
        self.peer = Some(record);
        self.rebuild_node().await;
        self.refresh_dial();
        self.update_status();
        Ok(())
    }

    /// A new node for a new peer: same durable state, fresh liveness.
    async fn rebuild_node(&mut self) {
        let persisted = self.node.persisted().clone();
        self.node = PairNode::new(
            node_settings(
                self.me,
                &self.core,
                &self.settings,
                self.peer.as_ref().map(|p| p.server),
            ),
            persisted,
            self.now_ms(),
        );
        self.last_liveness = Liveness::Unknown;
        let outputs = self.node.step(self.now_ms(), Input::Tick);
        self.carry_out(outputs).await;
    }

    /// The server with the smaller id dials; the other only listens. One
    /// connection, never two racing ones.
    fn refresh_dial(&mut self) {
        let target = match &self.peer {
            Some(p) if self.me < p.server && self.link.is_none() => p
                .fingerprint_bytes()
                .map(|fp| (self.settings.peer.clone(), fp, p.server)),
            _ => None,
        };
        self.want_dial.send_replace(target);
    }

    async fn on_event(&mut self, event: LinkEvent) {
        match event {
            LinkEvent::Up {
                generation,
                writer,
                from,
            } => {
                tracing::info!(%from, "pair link up");
                self.link = Some((generation, writer));
                self.refresh_dial();
                let outputs = self.node.step(self.now_ms(), Input::LinkUp);
                self.carry_out(outputs).await;
            }
            LinkEvent::Message {
                generation,
                message,
            } => {
                if self.link.as_ref().is_some_and(|(g, _)| *g == generation) {
                    let outputs = self.node.step(self.now_ms(), Input::Received(message));
                    self.carry_out(outputs).await;
                }
            }
            LinkEvent::Down { generation, why } => {
                if self.link.as_ref().is_some_and(|(g, _)| *g == generation) {
                    tracing::info!(why, "pair link down");
                    self.link = None;
                    self.refresh_dial();
                    let outputs = self.node.step(self.now_ms(), Input::LinkDown);
                    self.carry_out(outputs).await;
                }
            }
            LinkEvent::JoinAttempt {
                request,
                fingerprint,
                from,
                reply,
            } => {
                let answer = self.on_join_attempt(request, fingerprint, from).await;
                let _ = reply.send(answer);
            }
        }
    }

    /// The primary's side of pairing.
    async fn on_join_attempt(
        &mut self,
        request: JoinRequest,
        fp: [u8; 32],
        from: SocketAddr,
    ) -> JoinAnswer {
        let now = self.core.clock.now();
        let checked = match self.open_code.as_mut() {
            None => Err(
                "no pairing code is open on the primary; run `gateway pair init` there".to_string(),
            ),
            Some(open) => open.accept(&request.proof, &fp, now),
        };
        if let Err(reason) = checked {
            tracing::warn!(%from, instance = request.instance, reason, "pairing refused");
            return JoinAnswer::Refused { reason };
        }
        // A code opens once, used or refused for being used.
        self.open_code = None;
        self.set_pairing_open(false);
        let record = PeerRecord {
            server: request.server,
            instance: request.instance,
            fingerprint: fingerprint_text(&fp),
            paired_at: now,
        };
        match self.pin(record).await {
            Ok(()) => JoinAnswer::Accepted {
                server: self.me,
                instance: self.core.name().to_owned(),
            },
            Err(reason) => JoinAnswer::Refused { reason },
        }
    }

    /// Carries out the node's outputs in order; a `Persist` is durable
    /// before anything after it happens.
    async fn carry_out(&mut self, outputs: Vec<Output>) {
        for output in outputs {
            match output {
                Output::Persist(state) => {
                    let result = self
                        .core
                        .data
                        .run(move |store| license::persist_pair_state(store, &state))
                        .await;
                    if let Err(e) = result {
                        // Nothing after this may happen on a state that is
                        // not durable: drop the rest; the node retries on
                        // its next input.
                        tracing::error!(error = %e, "the pair state could not be persisted");
                        return;
                    }
                    if let Err(e) = self.core.refresh_role().await {
                        tracing::error!(error = e, "re-reading the role failed");
                    }
                }
                Output::Send(message) => {
                    if let Some((_, writer)) = &self.link
                        && writer.try_send(frame::encode(&message)).is_err()
                    {
                        tracing::warn!("the pair link is not draining; a message was dropped");
                    }
                }
                Output::PublishRole(view) => {
                    self.on_role_view(&view);
                }
                Output::Notify(event) => {
                    // A refused peer (another major version, another server)
                    // is shown in status until it is heard as LIVE again.
                    match &event {
                        pair_core::Event::PeerRefused(why) => {
                            self.status
                                .write()
                                .unwrap_or_else(|p| p.into_inner())
                                .refused = Some(why.to_string());
                        }
                        pair_core::Event::PeerLive { .. } => {
                            self.status
                                .write()
                                .unwrap_or_else(|p| p.into_inner())
                                .refused = None;
                        }
                        _ => {}
                    }
                    self.notify(event);
                }
                // Configuration replication (pushing, applying, snapshots) is
                // not carried over this link yet: the secondary keeps the
                // configuration it has.
                Output::CommitWrite { .. }
                | Output::ApplyConfig { .. }
                | Output::ServeSnapshot { .. }
                | Output::RefuseWrite(_) => {}
            }
        }
        self.update_status();
    }

    fn on_role_view(&mut self, view: &pair_core::RoleView) {
        let mut status = self.status.write().unwrap_or_else(|p| p.into_inner());
        status.role = view.role.word();
        if view.peer_liveness != self.last_liveness {
            self.last_liveness = view.peer_liveness;
            let ago = self.now_ms().saturating_sub(view.peer_liveness_since_ms);
            status.since = Some(self.core.clock.now() - chrono::Duration::milliseconds(ago as i64));
        }
    }

    fn notify(&self, event: pair_core::Event) {
        use pair_core::Event::*;
        let peer = self
            .peer
            .as_ref()
            .map_or_else(|| "the peer".to_owned(), |p| p.instance.clone());
        let me = self.core.name().to_owned();
        let now = self
            .core
            .clock
            .now()
            .with_timezone(&self.core.settings.instance.time_zone);
        let at = now.format("%H:%M:%S");
        let (kind, text) = match &event {
            PeerLive { .. } => (
                "peer_live",
                format!("{peer} is back (LIVE) at {at}; {me} sees it again"),
            ),
            PeerDead { last_heard_ms, .. } => {
                let ago = self.now_ms().saturating_sub(*last_heard_ms);
                let since = (now - chrono::Duration::milliseconds(ago as i64)).format("%H:%M:%S");
                (
                    "peer_dead",
                    format!("{peer} unreachable since {since}; {me} is serving alone"),
                )
            }
            PeerClose { .. } => (
                "peer_close",
                format!("{peer} stopped cleanly at {at} (CLOSE)"),
            ),
            Fenced { by } => (
                "fenced",
                format!(
                    "{me} stepped down: {peer} was promoted at epoch {}; {me} keeps taking jobs and refuses configuration changes. Reactivate it with an 04 key to rejoin as secondary",
                    by.number
                ),
            ),
            EpochRaised { to, .. } => (
                "epoch_raised",
                format!(
                    "{me} stays primary and took epoch {} above the one {peer} had seen",
                    to.number
                ),
            ),
            StaleRefused {
                epoch,
                highest_seen,
            } => (
                "stale_refused",
                format!(
                    "{me} refused a message from {peer} stamped with epoch {}, older than epoch {} it has seen",
                    epoch.number, highest_seen.number
                ),
            ),
            PeerRefused(why) => ("peer_refused", format!("{me} refuses the peer: {why}")),
            SyncBlocked(why) => (
                "sync_blocked",
                format!("configuration sync blocked: {why:?}"),
            ),
            SyncResumed => ("sync_resumed", "configuration sync resumed".to_owned()),
            ConfigDiverged { .. } => (
                "config_diverged",
                format!("{me} holds configuration changes {peer} does not continue"),
            ),
        };
        if matches!(
            event,
            PeerDead { .. } | Fenced { .. } | PeerRefused(_) | StaleRefused { .. }
        ) {
            tracing::warn!(event = kind, "{text}");
        } else {
            tracing::info!(event = kind, "{text}");
        }
        self.core.metrics.pair_event(kind);
        super::notify::send(&self.core, kind, text);
    }

    fn update_status(&self) {
        let word = match (&self.peer, self.node.liveness()) {
            (None, _) => "unpaired",
            (Some(_), Liveness::Unknown) => "unknown",
            (Some(_), Liveness::Live) => "live",
            (Some(_), Liveness::Dead) => "dead",
            (Some(_), Liveness::Close) => "close",
        };
        self.core.set_pair_summary(word);
        let mut status = self.status.write().unwrap_or_else(|p| p.into_inner());
        status.state = word;
        status.link = if self.link.is_some() { "up" } else { "down" };
        status.peer = self.peer.as_ref().map(|p| p.instance.clone());
        status.peer_server_id = self.peer.as_ref().map(|p| p.server.to_string());
        status.peer_fingerprint = self.peer.as_ref().map(|p| p.fingerprint.clone());
        status.pairing_open = self.open_code.is_some();
        status.role = self.node.role().word();
    }
}
