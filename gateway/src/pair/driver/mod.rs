//! The pair link's driver: one task that owns this server's protocol node
//! (`pair_core::PairNode`) and feeds it everything that happens — time,
//! messages from the peer, the link coming and going, admin activations, a
//! clean stop — and carries out what it answers, in order: persist before
//! anything else, send, publish the role, notify. It runs on the pair
//! link's own thread. Its parts: [`config_side`] (configuration changes,
//! the clock check, conflicts), [`jobs_side`] (the jobs side's frames,
//! logouts) and [`join`] (pairing, both sides).

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use pair_core::sync::SyncBlock;
use pair_core::{
    ActivationKind, Body, Input, Liveness, Message, Output, PairNode, PairSettings, ServerId,
    Timing, WriteRefused,
};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};

use super::connection::{LinkEvent, LinkWriter, accept_loop, dial_loop};
use super::frame;
use super::identity::PairIdentity;
use super::jobs;
use super::ocr;
use super::pairing::{CODE_VALID_SECS, OpenCode, PairingCode, PeerRecord};
use super::status::PairStatus;
use super::sync::{self, Replication};
use super::trust::ListenerTrust;
use super::wire::Wire;
use crate::changes::{Applied, Change, ChangeError};
use crate::core::Core;
use crate::license;
use crate::settings::PairLinkSettings;

mod config_side;
mod jobs_side;
mod join;
mod ownership_side;

/// The software's major version: servers of different majors never pair.
const SOFTWARE_MAJOR: u32 = 0;
/// How long a clean stop waits for the goodbye to leave.
const CLOSING_GRACE: Duration = Duration::from_millis(300);
/// How often a clean stop that hands work over looks at its progress.
const STOP_POLL: Duration = Duration::from_millis(100);
/// How often the clocks and zones are compared while the link is up (and
/// at once on every new connection, before any sync).
const CLOCK_CHECK_EVERY: Duration = Duration::from_secs(1);

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
    /// Ask the peer whether it holds a job id.
    AskJob(uuid::Uuid),
    /// A configuration change to grant, store and replicate.
    Change {
        change: Change,
        reply: oneshot::Sender<Result<Applied, ChangeError>>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

/// What status shows of the store, read apart from the driver's task:
/// open conflicts, and the job counts when the store answered.
struct Figures {
    open_conflicts: u64,
    counts: Option<JobCounts>,
}

/// Unreplicated jobs, duplicates (superseded, delivered by both), open
/// takeovers, and the count of each kind of pair event.
type JobCounts = (u64, (u64, u64), u64, Vec<(String, u64)>);

/// The receiving ends of the channels to the driver's tasks, until
/// [`Driver::run`] starts them.
struct StreamTasks {
    answers: mpsc::UnboundedReceiver<jobs::Answer>,
    incoming: mpsc::UnboundedReceiver<jobs::Incoming>,
    settle: mpsc::UnboundedReceiver<jobs_side::Settle>,
    figures: mpsc::UnboundedReceiver<Figures>,
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
    link: Option<(u64, LinkWriter)>,
    events_tx: mpsc::UnboundedSender<LinkEvent>,
    events: mpsc::UnboundedReceiver<LinkEvent>,
    /// Whether the dialer should connect (paired, this side dials, no link).
    want_dial: watch::Sender<Option<(String, [u8; 32], ServerId)>>,
    last_liveness: Liveness,
    repl: Replication,
    /// The job replication stream: the connection its tasks use, and what
    /// the driver passes on to them.
    stream_link: watch::Sender<Option<(u64, LinkWriter)>>,
    answers: mpsc::UnboundedSender<jobs::Answer>,
    incoming: mpsc::UnboundedSender<jobs::Incoming>,
    /// The peer's answers the store records (see [`jobs_side::settle_loop`]).
    settle: mpsc::UnboundedSender<jobs_side::Settle>,
    stream_tasks: Option<StreamTasks>,
    /// Where [`Driver::read_figures`] sends what it read, and whether a
    /// read is under way.
    figures: mpsc::UnboundedSender<Figures>,
    figures_reading: Arc<std::sync::atomic::AtomicBool>,
    stream_state: Arc<RwLock<jobs::StreamState>>,
    /// The peer as this server's OCR engine when it has none.
    peer_ocr: ocr::PeerOcr,
    /// A clean stop handing work to the peer.
    stopping: Option<ownership_side::Stopping>,
}

fn node_settings(
    me: ServerId,
    core: &Core,
    s: &PairLinkSettings,
    peer: Option<ServerId>,
) -> PairSettings {
    let timing = Timing::new(
        s.heartbeat_interval_ms,
        s.dead_threshold_ms,
        s.replication_period_secs.saturating_mul(1_000),
    )
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
        let (answers_tx, answers_rx) = mpsc::unbounded_channel();
        let stream_link = watch::Sender::new(None);
        let peer_ocr = ocr::PeerOcr::new(core.name(), stream_link.subscribe());
        let (incoming_tx, incoming_rx) = mpsc::unbounded_channel();
        let (settle_tx, settle_rx) = mpsc::unbounded_channel();
        let (figures_tx, figures_rx) = mpsc::unbounded_channel();
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
            repl: Replication::default(),
            stream_link,
            answers: answers_tx,
            incoming: incoming_tx,
            settle: settle_tx,
            figures: figures_tx,
            figures_reading: Arc::default(),
            stream_tasks: Some(StreamTasks {
                answers: answers_rx,
                incoming: incoming_rx,
                settle: settle_rx,
                figures: figures_rx,
            }),
            stream_state: Arc::default(),
            peer_ocr,
            stopping: None,
        };
        driver.repl.open_conflicts = sync::open_conflicts(&driver.core).await;
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
        if self.peer.is_none() {
            // Unpaired: no peer can hold any of this server's job ids.
            self.core.peer_acks.release_all();
        }
        self.core
            .registry
            .set_remote_ocr(Arc::new(self.peer_ocr.clone()));
        let Some(tasks) = self.stream_tasks.take() else {
            return;
        };
        tokio::spawn(jobs::send_loop(
            self.core.clone(),
            self.me,
            self.stream_link.subscribe(),
            tasks.answers,
            self.stream_state.clone(),
        ));
        tokio::spawn(jobs::receive_loop(
            self.core.clone(),
            self.stream_link.subscribe(),
            tasks.incoming,
        ));
        tokio::spawn(jobs_side::settle_loop(
            self.core.clone(),
            self.me,
            self.stream_link.subscribe(),
            self.answers.clone(),
            tasks.settle,
        ));
        tokio::spawn(jobs::janitor_loop(
            self.core.clone(),
            Duration::from_secs(self.settings.replica_retention_secs),
        ));
        let mut figures_rx = tasks.figures;
        let start = self.node.step(0, Input::Tick);
        self.carry_out(start).await;
        loop {
            let wait = match self.node.next_timer_ms() {
                Some(at) => Duration::from_millis(at.saturating_sub(self.now_ms())),
                None => Duration::from_millis(self.settings.heartbeat_interval_ms),
            };
            // A clean stop handing work over is looked at often.
            let wait = if self.stopping.is_some() {
                wait.min(STOP_POLL)
            } else {
                wait
            };
            let due = Instant::now() + wait;
            // The timer comes before the connection's frames: a steady
            // stream of job frames must never hold back heartbeats.
            tokio::select! {
                biased;
                command = commands.recv() => match command {
                    None => return,
                    Some(Command::Shutdown { reply }) => {
                        if self.stopping.is_some() {
                            let _ = reply.send(());
                            continue;
                        }
                        if let Some(reply) = self.begin_stop(reply) {
                            self.announce_stop(reply).await;
                            return;
                        }
                    }
                    Some(command) => self.on_command(command).await,
                },
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
                    if let Some(reply) = self.advance_stop().await {
                        self.announce_stop(reply).await;
                        return;
                    }
                    if self.repl.last_probe.is_none_or(|t| t.elapsed() >= CLOCK_CHECK_EVERY) {
                        self.probe_clock();
                        if self.peer.is_some() {
                            self.read_figures();
                            self.check_per_server_folders();
                            self.update_status();
                        }
                    }
                }
                Some(event) = self.events.recv() => self.on_event(event).await,
                Some(figures) = figures_rx.recv() => self.show_figures(figures),
            }
        }
    }

    /// Reads the figures status shows from the store, on a task of its own
    /// (counting a large job table must not delay heartbeats); they come
    /// back through [`Driver::show_figures`]. One read at a time.
    fn read_figures(&mut self) {
        if self
            .figures_reading
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            return;
        }
        let core = self.core.clone();
        let me = self.me;
        let done = self.figures_reading.clone();
        let tx = self.figures.clone();
        tokio::spawn(async move {
            // Re-applied conflicts are marked by the admin channel; the
            // count in status follows here.
            let open_conflicts = sync::open_conflicts(&core).await;
            let counts = core
                .data
                .run(move |s| {
                    Ok((
                        s.count_unreplicated(me)?,
                        s.duplicate_counts()?,
                        s.open_takeovers(me)?,
                        s.pair_event_counts()?,
                    ))
                })
                .await
                .ok();
            done.store(false, std::sync::atomic::Ordering::Release);
            let _ = tx.send(Figures {
                open_conflicts,
                counts,
            });
        });
    }

    fn show_figures(&mut self, figures: Figures) {
        self.repl.open_conflicts = figures.open_conflicts;
        if let Some((n, duplicates, open, events)) = figures.counts {
            self.core.peer_acks.set_unreplicated(n);
            self.repl.duplicates = duplicates;
            let mut status = self.status.write().unwrap_or_else(|p| p.into_inner());
            status.jobs.taken_over_open = open;
            status.jobs.events = events.into_iter().collect();
        }
        self.update_status();
    }

    /// Announces the clean stop (the peer shows CLOSE, not DEAD) and lets
    /// the goodbye leave before the process goes.
    async fn announce_stop(&mut self, reply: oneshot::Sender<()>) {
        let outputs = self.node.step(self.now_ms(), Input::Shutdown);
        self.carry_out(outputs).await;
        tokio::time::sleep(CLOSING_GRACE).await;
        let _ = reply.send(());
    }

    /// Sends one frame on the current connection, if there is one.
    fn send_wire(&self, wire: &Wire) {
        if let Some((_, writer)) = &self.link
            && writer.control.try_send(frame::encode(wire)).is_err()
        {
            tracing::warn!("the pair link is not draining; a message was dropped");
        }
    }

    /// The connection is gone: the job stream stops with it, and waiting
    /// acknowledgements stop waiting.
    fn drop_link(&mut self) {
        self.link = None;
        self.stream_link.send_replace(None);
        let _ = self.incoming.send(jobs::Incoming::Reset);
        self.core.peer_acks.set_link_up(false);
        self.peer_ocr.link_closed();
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
                    self.drop_link();
                    self.rebuild_node().await;
                    self.refresh_dial();
                    self.update_status();
                }
                let _ = reply.send(result);
            }
            Command::Change { change, reply } => self.on_change(change, reply).await,
            Command::AskJob(job) => self.send_wire(&Wire::JobQuery { job }),
            Command::Activated(kind) => {
                let outputs = self.node.step(self.now_ms(), Input::Activate(kind));
                self.carry_out(outputs).await;
            }
            Command::Shutdown { .. } => unreachable!("handled by the loop"),
        }
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
                self.stream_link
                    .send_replace(Some((generation, writer.clone())));
                let _ = self.incoming.send(jobs::Incoming::Reset);
                self.core.peer_acks.set_link_up(true);
                self.link = Some((generation, writer));
                self.refresh_dial();
                // No sync on a new connection before the zones and clocks
                // were compared on it.
                let peer = self
                    .peer
                    .as_ref()
                    .map_or_else(|| "the peer".to_owned(), |p| p.instance.clone());
                let mut outputs = self.node.step(
                    self.now_ms(),
                    Input::SyncChecked(Err(SyncBlock::NotChecked { peer })),
                );
                outputs.extend(self.node.step(self.now_ms(), Input::LinkUp));
                self.carry_out(outputs).await;
                self.probe_clock();
                self.send_ended_sessions().await;
            }
            LinkEvent::Frame { generation, wire } => {
                if self.link.as_ref().is_none_or(|(g, _)| *g != generation) {
                    return;
                }
                match wire {
                    Wire::Protocol(message) => {
                        let outputs = self.node.step(self.now_ms(), Input::Received(message));
                        self.carry_out(outputs).await;
                    }
                    Wire::ClockProbe { sent_ms } => self.send_wire(&Wire::ClockReply {
                        sent_ms,
                        wall_ms: sync::wall_ms(&self.core),
                        instance: self.core.name().to_owned(),
                        time_zone: sync::time_zone(&self.settings),
                    }),
                    Wire::ClockReply {
                        sent_ms,
                        wall_ms,
                        instance,
                        time_zone,
                    } => {
                        self.on_clock_reply(sent_ms, wall_ms, instance, time_zone)
                            .await
                    }
                    Wire::Conflicts(conflicts) => self.on_conflicts(conflicts).await,
                    other => self.on_job_wire(other).await,
                }
            }
            LinkEvent::Down { generation, why } => {
                if self.link.as_ref().is_some_and(|(g, _)| *g == generation) {
                    tracing::info!(why, "pair link down");
                    self.drop_link();
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

    /// Carries out the node's outputs in order; a `Persist` is durable
    /// before anything after it happens. An output that cannot be carried
    /// out (a store write that fails) drops the rest and takes the node
    /// back to its durable state, as a crash would.
    async fn carry_out(&mut self, outputs: Vec<Output>) {
        let mut queue = std::collections::VecDeque::from(outputs);
        while let Some(output) = queue.pop_front() {
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
                        self.restore_node().await;
                        break;
                    }
                    if let Err(e) = self.core.refresh_role().await {
                        tracing::error!(error = e, "re-reading the role failed");
                    }
                }
                Output::Send(message) => self.send_message(message).await,
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
                Output::CommitWrite { permit, .. } => {
                    let Some((change, reply)) = self.repl.pending.take() else {
                        tracing::error!("the protocol granted a write nobody asked for");
                        self.restore_node().await;
                        break;
                    };
                    let what = change.describe();
                    let stamp = permit.stamp();
                    match sync::commit(&self.core, change, permit).await {
                        Ok(applied) => {
                            tracing::info!(
                                change = what,
                                version = stamp.version,
                                "configuration changed"
                            );
                            let _ = reply.send(Ok(applied));
                        }
                        Err(e) => {
                            tracing::warn!(change = what, error = %e, "configuration change not made");
                            let _ = reply.send(Err(e));
                            self.restore_node().await;
                            break;
                        }
                    }
                }
                Output::RefuseWrite(why) => {
                    if let Some((_, reply)) = self.repl.pending.take() {
                        let refusal = match why {
                            WriteRefused::ReadOnlySecondary => {
                                ChangeError::ReadOnly(crate::role::ReadOnly::Secondary)
                            }
                            WriteRefused::Fenced { by } => {
                                ChangeError::ReadOnly(crate::role::ReadOnly::Fenced { by })
                            }
                            WriteRefused::NotActivated => {
                                ChangeError::ReadOnly(crate::role::ReadOnly::Unlicensed)
                            }
                            WriteRefused::Stopping => ChangeError::Unavailable(
                                "this server is stopping; make the change when it is back".into(),
                            ),
                        };
                        let _ = reply.send(Err(refusal));
                    }
                }
                Output::ServeSnapshot { stamp } => {
                    if let Some(payload) = sync::snapshot_at(&self.core, stamp).await {
                        queue.extend(
                            self.node
                                .step(self.now_ms(), Input::SnapshotReady { stamp, payload }),
                        );
                    }
                }
                Output::ApplyConfig {
                    stamp, by, payload, ..
                } => match sync::apply(&self.core, by, stamp, &payload).await {
                    Ok((conflicts, added)) => {
                        tracing::info!(version = stamp.version, epoch = %stamp.epoch.short(), "configuration applied from the primary");
                        self.repl.applied(self.core.clock.now());
                        self.repl.open_conflicts = sync::open_conflicts(&self.core).await;
                        if added > 0 {
                            self.conflicts_found(added);
                        }
                        if !conflicts.is_empty() {
                            self.send_wire(&Wire::Conflicts(conflicts));
                        }
                    }
                    Err(e) => {
                        tracing::error!(
                            version = stamp.version,
                            error = e,
                            "the primary's configuration could not be applied; it is asked for again"
                        );
                        self.repl.failure = Some(format!(
                            "the configuration from the primary could not be applied: {e}"
                        ));
                        self.restore_node().await;
                        break;
                    }
                },
                Output::TakeOver { from, count, epoch } => self.take_over(from, count, epoch).await,
                Output::AnnounceTakeovers { count } => self.announce_takeovers(count).await,
                Output::CompareConfig { payload, .. } => {
                    match sync::compare(&self.core, &payload).await {
                        Ok((conflicts, added)) => {
                            if added > 0 {
                                self.repl.open_conflicts = sync::open_conflicts(&self.core).await;
                                self.conflicts_found(added);
                            }
                            if !conflicts.is_empty() {
                                self.send_wire(&Wire::Conflicts(conflicts));
                            }
                        }
                        Err(e) => {
                            tracing::warn!(
                                error = e,
                                "the new primary's configuration could not be compared"
                            )
                        }
                    }
                }
            }
        }
        self.update_status();
    }

    /// Sends a protocol message. A pushed change leaves the node without a
    /// payload: it becomes the rows the change wrote, with the stamp it was
    /// made on, read now (the write before it in the same step is
    /// committed).
    async fn send_message(&mut self, mut message: Message) {
        if let Body::ConfigChange(change) = &mut message.body {
            match sync::change_at(&self.core, change.stamp, change.prev).await {
                Some(payload) => change.payload = payload,
                // The store holds another version: the secondary pulls.
                None => return,
            }
        }
        self.send_wire(&Wire::Protocol(message));
    }

    fn on_role_view(&mut self, view: &pair_core::RoleView) {
        self.repl.observe(
            view.config,
            view.peer.as_ref().and_then(|p| p.config),
            self.core.clock.now(),
        );
        let mut status = self.status.write().unwrap_or_else(|p| p.into_inner());
        status.role = view.role.word();
        if view.peer_liveness != self.last_liveness {
            self.last_liveness = view.peer_liveness;
            let ago = self.now_ms().saturating_sub(view.peer_liveness_since_ms);
            status.since = Some(self.core.clock.now() - chrono::Duration::milliseconds(ago as i64));
        }
    }

    fn notify(&mut self, event: pair_core::Event) {
        use pair_core::Event::*;
        // The wait for the first clock check on a new connection is no
        // news, and neither is the same block again after a reconnect.
        match &event {
            SyncBlocked(SyncBlock::NotChecked { .. }) => {
                tracing::debug!("configuration sync waits for the clock check");
                return;
            }
            SyncBlocked(why) => {
                let text = why.to_string();
                if self.repl.reported_block.as_deref() == Some(text.as_str()) {
                    return;
                }
                self.repl.reported_block = Some(text);
            }
            SyncResumed if self.repl.reported_block.take().is_none() => return,
            _ => {}
        }
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
            PeerLive { .. } => {
                let took = self
                    .status
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .jobs
                    .taken_over_open;
                let finishing = if took > 0 {
                    format!("; {me} stops taking over and finishes the {took} job(s) it took")
                } else {
                    String::new()
                };
                (
                    "peer_live",
                    format!("{peer} is back (LIVE) at {at}; {me} sees it again{finishing}"),
                )
            }
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
                format!("configuration sync between {me} and {peer} blocked: {why}"),
            ),
            SyncResumed => (
                "sync_resumed",
                format!("configuration sync between {me} and {peer} resumed"),
            ),
            ConfigDiverged { .. } => (
                "config_diverged",
                format!("{me} holds configuration changes {peer} does not continue"),
            ),
        };
        if matches!(
            event,
            PeerDead { .. } | Fenced { .. } | PeerRefused(_) | StaleRefused { .. } | SyncBlocked(_)
        ) {
            tracing::warn!(event = kind, "{text}");
        } else {
            tracing::info!(event = kind, "{text}");
        }
        self.core.metrics.pair_event(kind);
        super::notify::send(&self.core, kind, text);
    }

    fn update_status(&self) {
        let permit = self.node.permit();
        self.core.ownership.publish(permit, self.started);
        {
            let mut status = self.status.write().unwrap_or_else(|p| p.into_inner());
            let (_, _, left) = self.core.ownership.view();
            status.jobs.permit = permit.word();
            status.jobs.lease_left_ms = left;
            status.jobs.takeovers = self.node.persisted().takeovers;
            status.jobs.takeovers_applied = self.node.persisted().takeovers_applied;
        }
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
        self.peer_ocr
            .set_peer(self.peer.as_ref().map(|p| p.instance.clone()));
        let patience = Duration::from_secs(self.settings.replication_period_secs.saturating_mul(2))
            .max(Duration::from_secs(5));
        status.replication = self.repl.status(
            &self.node.role_view(),
            self.peer.is_some(),
            self.link.is_some(),
            patience,
        );
        if self.peer.is_some() {
            let acks = &self.core.peer_acks;
            status.replication.replication = Some(if acks.degraded() { "degraded" } else { "ok" });
            status.replication.unreplicated_jobs = acks.unreplicated();
            status.replication.replication_error = self
                .stream_state
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .last_error
                .clone();
        }
    }
}
