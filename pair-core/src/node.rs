//! One server's side of the pair protocol as a state machine: the inputs it
//! takes, the outputs it asks for and every rule that connects them (roles,
//! epochs, fencing, heartbeats, configuration replication). It owns no
//! socket, clock, disk or task: the driver (the gateway's pair module, a
//! test, the model checker) feeds it and carries out what comes back.
//!
//! # Driving a node
//!
//! ```
//! use pair_core::{Input, Output, PairNode, PairSettings, Persisted, ServerId, Timing};
//!
//! let settings = PairSettings::new(
//!     ServerId::from_u128(1),
//!     "gw-a",
//!     1,
//!     Timing::new(100, 400, 1_000).unwrap(),
//! );
//! // On start, restore the durable state (the default on a first start).
//! let mut node = PairNode::new(settings, Persisted::default(), 0);
//! for output in node.step(0, Input::LinkUp) {
//!     match output {
//!         // Make it durable before acting on anything after it.
//!         Output::Persist(_state) => {}
//!         Output::Send(_message) => {}
//!         _ => {}
//!     }
//! }
//! ```
//!
//! The driver's contract:
//! - call [`PairNode::step`] with the current time for every input, and
//!   with [`Input::Tick`] no later than [`PairNode::next_timer_ms`];
//! - carry out the outputs **in order**; an [`Output::Persist`] must be
//!   durable before any later output of the same step takes effect and
//!   before the next input is fed. An `ApplyConfig` or `CommitWrite` right
//!   after a `Persist` may be committed in the same transaction as it;
//! - after a crash, build the node again from the last persisted
//!   [`Persisted`] and nothing else.

use serde::{Deserialize, Serialize};

use crate::epoch::{Epoch, ServerId};
use crate::liveness::{Heard, Liveness, PeerLiveness};
use crate::message::{Body, ConfigChange, Hello, Message, Payload};
use crate::ownership::{LeaseNews, Leases, Permit};
use crate::role::{ActivationKind, ConfigStamp, Persisted, Role, WritePermit, WriteRefused};
use crate::settings::PairSettings;
use crate::sync::SyncBlock;

/// Something that happened to the node.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Input {
    /// Time passed: send a heartbeat if one is due, judge the peer DEAD if
    /// it has been silent too long.
    Tick,
    /// The link to the peer is (re)connected: the node sends its Hello.
    LinkUp,
    /// The link is gone. Liveness does not change on this alone: a stopped
    /// peer (SIGSTOP) closes nothing, so DEAD comes only from silence.
    LinkDown,
    /// A message from the (authenticated) peer.
    Received(Message),
    /// An admin activated a license (or deactivated it with `None`).
    Activate(ActivationKind),
    /// An admin wants to change configuration on this server.
    LocalConfigWrite { payload: Payload },
    /// The driver's answer to [`Output::ServeSnapshot`]: the whole
    /// configuration at `stamp`.
    SnapshotReady {
        stamp: ConfigStamp,
        payload: Payload,
    },
    /// The result of the latest sync admission check
    /// ([`crate::sync::admit_sync`]).
    SyncChecked(Result<(), SyncBlock>),
    /// The driver applied the peer's takeovers up to `count` (the jobs are
    /// marked as the peer's): the peer may grant a lease again.
    TakeoversApplied { count: u64 },
    /// A clean stop: announce it to the peer, then take no more input.
    Shutdown,
}

/// Something the driver must do, in the order given.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Output {
    /// Send a message to the peer. Heartbeats must not wait behind bulk
    /// messages (see [`Body::is_bulk`]).
    Send(Message),
    /// Make this durable before acting on any later output.
    Persist(Persisted),
    /// The role view changed: show it in status and use it for admission.
    PublishRole(Box<RoleView>),
    /// Tell admins and the log.
    Notify(Event),
    /// The local configuration write is allowed: commit `payload` as the
    /// configuration under the permit's stamp.
    CommitWrite {
        permit: WritePermit,
        payload: Payload,
    },
    /// Apply configuration received from the primary `by`, atomically.
    ApplyConfig {
        stamp: ConfigStamp,
        by: Epoch,
        kind: ApplyKind,
        payload: Payload,
    },
    /// The peer needs the whole configuration at `stamp`: answer with
    /// [`Input::SnapshotReady`].
    ServeSnapshot { stamp: ConfigStamp },
    /// The local configuration write is refused; the error says why.
    RefuseWrite(WriteRefused),
    /// A fenced server received the whole configuration of the primary
    /// that fenced it (`by`). It is **not** applied: the fenced server keeps
    /// serving on its own configuration until it is activated again. The
    /// driver compares it with its own to keep the partition-time changes
    /// in the conflict report.
    CompareConfig {
        stamp: ConfigStamp,
        by: Epoch,
        payload: Payload,
    },
    /// The silent peer `from` can no longer be running any of its jobs:
    /// take over the unfinished jobs it owns that this server holds,
    /// recording the takeover under `count` (persisted just before) at
    /// `epoch`, and tell admins.
    TakeOver {
        from: ServerId,
        count: u64,
        epoch: Epoch,
    },
    /// The peer has not applied every takeover of its jobs: send it the
    /// jobs taken over (all `count` takeovers), so it marks them as this
    /// server's and answers with [`Input::TakeoversApplied`] on its side.
    AnnounceTakeovers { count: u64 },
}

/// Whether received configuration is one change or the whole of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ApplyKind {
    /// Apply on top of the current configuration.
    Change,
    /// Replace the whole configuration.
    Snapshot,
}

/// What admins and the log are told.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Event {
    /// The peer is LIVE (first contact, back after DEAD, or restarted after
    /// CLOSE).
    PeerLive { peer: ServerId, since_ms: u64 },
    /// Nothing heard from the peer for the threshold after it was LIVE.
    PeerDead { last_heard_ms: u64, since_ms: u64 },
    /// The peer announced a clean shutdown.
    PeerClose { since_ms: u64 },
    /// This primary met a primary of the newer epoch `by` and stepped down.
    Fenced { by: Epoch },
    /// This primary met a secondary that had seen the newer epoch `seen`
    /// (a promotion undone before the two met) and took the epoch `to`
    /// above it, staying primary.
    EpochRaised { from: Epoch, seen: Epoch, to: Epoch },
    /// A message from an epoch older than the highest seen was refused.
    StaleRefused { epoch: Epoch, highest_seen: Epoch },
    /// The peer cannot be paired with.
    PeerRefused(PeerRefusal),
    /// Configuration sync stopped (heartbeats go on).
    SyncBlocked(SyncBlock),
    /// Configuration sync may go on again.
    SyncResumed,
    /// This server held configuration `local` from a line the primary does
    /// not continue (changes made by a primary since replaced). The driver
    /// should keep it for the conflict report before the snapshot that
    /// follows replaces it.
    ConfigDiverged {
        local: ConfigStamp,
        primary: ConfigStamp,
    },
}

/// Why messages from the other end are not taken.
#[derive(Debug, Clone, PartialEq, Eq, Hash, thiserror::Error)]
pub enum PeerRefusal {
    /// Different major versions never pair.
    #[error(
        "peer {instance} runs major version {theirs}, this server {ours}; \
         upgrade both servers to the same major version"
    )]
    VersionMismatch {
        instance: String,
        ours: u32,
        theirs: u32,
    },
    /// Not the pinned peer.
    #[error("server {got} is not the paired peer {expected}; messages refused")]
    UnknownServer { expected: ServerId, got: ServerId },
    /// A message claiming this server's own id.
    #[error("a message carried this server's own id {0}; refused")]
    OwnId(ServerId),
}

/// What the peer last said about itself.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PeerView {
    pub server: ServerId,
    pub instance: Option<String>,
    pub role: Role,
    pub epoch: Epoch,
    pub config: Option<ConfigStamp>,
}

/// Everything the rest of the gateway needs to know about this server's
/// place in the pair.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RoleView {
    pub server: ServerId,
    pub role: Role,
    pub highest_seen: Epoch,
    pub config: ConfigStamp,
    /// True only for an unfenced primary.
    pub may_write_config: bool,
    pub peer: Option<PeerView>,
    pub peer_liveness: Liveness,
    pub peer_liveness_since_ms: u64,
    pub sync_blocked: Option<SyncBlock>,
}

/// One server's protocol state. Cloning is cheap enough for the model
/// checker; equality and hashing cover every field, so two nodes that
/// compare equal behave the same on every input.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PairNode {
    settings: PairSettings,
    state: Persisted,
    /// Only with the `persist_on_tick_only` fault: state not yet handed out.
    dirty: bool,
    now_ms: u64,
    link_up: bool,
    liveness: PeerLiveness,
    peer: Option<PeerView>,
    /// Set while the peer's Hello announced an incompatible version.
    refused: Option<PeerRefusal>,
    last_beat_ms: Option<u64>,
    last_pull_ms: Option<u64>,
    sync_block: Option<SyncBlock>,
    /// A primary was asked for a snapshot while its sync was blocked: it
    /// answers when the block lifts instead of letting the secondary wait
    /// a whole replication period.
    deferred_snapshot: bool,
    /// Whether the role view was published since this node started.
    announced: bool,
    stopped: bool,
    /// Job ownership: the lease held and the lease granted.
    leases: Leases,
}

impl PairNode {
    /// A node starting (or restarting after a crash) from its durable state,
    /// at `now_ms`. Everything else starts fresh: the link is down and the
    /// peer's liveness unknown.
    pub fn new(settings: PairSettings, persisted: Persisted, now_ms: u64) -> PairNode {
        PairNode {
            settings,
            state: persisted,
            dirty: false,
            now_ms,
            link_up: false,
            liveness: PeerLiveness::new(now_ms),
            peer: None,
            refused: None,
            last_beat_ms: None,
            last_pull_ms: None,
            sync_block: None,
            deferred_snapshot: false,
            announced: false,
            stopped: false,
            leases: Leases::new(now_ms),
        }
    }

    pub fn id(&self) -> ServerId {
        self.settings.server()
    }

    /// The durable state as this node knows it (handed out by
    /// [`Output::Persist`] as it changes).
    pub fn persisted(&self) -> &Persisted {
        &self.state
    }

    pub fn role(&self) -> Role {
        self.state.role()
    }

    pub fn liveness(&self) -> Liveness {
        self.liveness.state()
    }

    pub fn peer(&self) -> Option<&PeerView> {
        self.peer.as_ref()
    }

    pub fn is_link_up(&self) -> bool {
        self.link_up
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Whether a step of a job this server owns may start now (see
    /// [`crate::ownership`]).
    pub fn permit(&self) -> Permit {
        if self.settings.peer().is_none() {
            return Permit::Unpaired;
        }
        if let Some(until_ms) = self.leases.until_ms
            && self.now_ms < until_ms
        {
            return Permit::Leased { until_ms };
        }
        if self.liveness.state() == Liveness::Close {
            return Permit::Alone {
                since_ms: self.liveness.since_ms(),
            };
        }
        if let Some(since_ms) = self.peer_silent_since() {
            return Permit::Alone { since_ms };
        }
        if self.refused.is_some() {
            // A peer of another major version never coordinates jobs, and
            // never takes over any either.
            return Permit::Alone {
                since_ms: self.now_ms,
            };
        }
        Permit::Wait
    }

    /// Since when the pinned peer counts as silent: DEAD, or never heard
    /// for [`crate::Timing::first_contact_ms`] since this node started or
    /// woke. A refused peer is heard, not silent.
    fn peer_silent_since(&self) -> Option<u64> {
        self.settings.peer()?;
        if self.refused.is_some() {
            // Its messages are refused, so a peer that was LIVE turns DEAD
            // while it still speaks: that is no silence.
            return None;
        }
        match self.liveness.state() {
            Liveness::Dead => Some(self.liveness.since_ms()),
            Liveness::Unknown => {
                let since = self.leases.waiting_since_ms;
                let first = self.settings.timing().first_contact_ms();
                (self.now_ms >= since + first).then_some(since)
            }
            _ => None,
        }
    }

    /// Goes back to the durable state after the driver could not carry out
    /// an output (a `CommitWrite` or `ApplyConfig` that failed): what the
    /// node took as done is forgotten, as after a crash, while the link and
    /// the peer's liveness, which no output changed, are kept.
    pub fn restore(&mut self, persisted: Persisted) {
        self.state = persisted;
        self.dirty = false;
    }

    /// The role view as it is now.
    pub fn role_view(&self) -> RoleView {
        RoleView {
            server: self.id(),
            role: self.role(),
            highest_seen: self.state.highest_seen,
            config: self.state.config,
            may_write_config: self.role().is_primary(),
            peer: self.peer.clone(),
            peer_liveness: self.liveness.state(),
            peer_liveness_since_ms: self.liveness.since_ms(),
            sync_blocked: self.sync_block.clone(),
        }
    }

    /// When the driver must tick next: the next heartbeat, the moment the
    /// peer would turn DEAD or silent, or the moment its jobs may be taken,
    /// whichever is sooner, and never more than a heartbeat interval away:
    /// a driver that sleeps until then must never leave a gap the node
    /// would take for a stall of its own (see [`PairNode::step`]).
    pub fn next_timer_ms(&self) -> Option<u64> {
        let timing = self.settings.timing();
        let beat = self
            .link_up
            .then(|| match self.last_beat_ms {
                Some(t) => t + timing.heartbeat_interval_ms(),
                None => self.now_ms,
            })
            .filter(|_| !self.stopped);
        let dead = self.liveness.dead_at_ms(timing.dead_threshold_ms());
        // The moment a never-heard peer turns silent, and the moment a
        // silent peer's jobs may be taken.
        let first_contact = (self.settings.peer().is_some()
            && self.liveness.state() == Liveness::Unknown
            && self.refused.is_none())
        .then(|| self.leases.waiting_since_ms + timing.first_contact_ms())
        .filter(|&at| at > self.now_ms);
        let takeover = (self.peer_silent_since().is_some() && !self.leases.took_over).then(|| {
            self.leases
                .grant_over_at_ms(timing.lease_ms(), timing.lease_margin_ms())
        });
        let soon = Some(self.now_ms + timing.heartbeat_interval_ms());
        [beat, dead, first_contact, takeover, soon]
            .into_iter()
            .flatten()
            .filter(|_| !self.stopped)
            .min()
    }

    /// Takes one input at `now_ms` and returns what the driver must do, in
    /// order. Time never goes backwards for the node: an earlier `now_ms`
    /// than one already seen is taken as the latest seen.
    pub fn step(&mut self, now_ms: u64, input: Input) -> Vec<Output> {
        let mut out = Vec::new();
        if self.stopped {
            return out;
        }
        if now_ms >= self.now_ms + self.settings.timing().dead_threshold_ms() {
            // Not stepped for a whole DEAD threshold: this server was not
            // running. What the peer sent meanwhile is still to be read.
            self.liveness.restart_wait(now_ms);
            self.leases.waiting_since_ms = self.leases.waiting_since_ms.max(now_ms);
        }
        self.now_ms = self.now_ms.max(now_ms);
        let view_before = self.announced.then(|| self.role_view());
        match input {
            Input::Tick => self.on_tick(&mut out),
            Input::LinkUp => {
                self.link_up = true;
                self.leases.connection_changed();
                let hello = Body::Hello(Hello {
                    instance: self.settings.instance().to_owned(),
                    software_major: self.settings.software_major(),
                    config: self.state.config,
                    takeovers_seen: self.state.takeovers_applied,
                });
                self.send(hello, &mut out);
                self.last_beat_ms = Some(self.now_ms);
            }
            Input::LinkDown => {
                self.link_up = false;
                self.leases.connection_changed();
            }
            Input::Received(message) => self.on_message(message, &mut out),
            Input::Activate(kind) => self.on_activate(kind, &mut out),
            Input::LocalConfigWrite { payload } => self.on_local_write(payload, &mut out),
            Input::SnapshotReady { stamp, payload } => {
                // The configuration may have moved on, or this server lost
                // its role, while the driver read the snapshot: then it is
                // dropped and the secondary's next pull asks again.
                if self.role().is_primary()
                    && self.sync_block.is_none()
                    && stamp == self.state.config
                {
                    self.send(Body::ConfigSnapshot { stamp, payload }, &mut out);
                }
            }
            Input::SyncChecked(result) => self.on_sync_checked(result, &mut out),
            Input::TakeoversApplied { count } => {
                if count > self.state.takeovers_applied {
                    self.state.takeovers_applied = count;
                    self.persist(&mut out);
                    // Say so at once: the peer grants a lease only after it.
                    self.beat(&mut out);
                }
            }
            Input::Shutdown => {
                // Seed 001: the peer learns of a clean stop and shows CLOSE,
                // not DEAD.
                self.send(Body::Closing, &mut out);
                self.stopped = true;
            }
        }
        // The role view is published on start and whenever it changes.
        let view = self.role_view();
        if view_before.as_ref() != Some(&view) {
            out.push(Output::PublishRole(Box::new(view)));
            self.announced = true;
        }
        out
    }

    fn on_tick(&mut self, out: &mut Vec<Output>) {
        if self.dirty {
            self.dirty = false;
            out.push(Output::Persist(self.state.clone()));
        }
        let timing = self.settings.timing();
        if let Some(Liveness::Dead) = self.liveness.tick(self.now_ms, timing.dead_threshold_ms()) {
            out.push(Output::Notify(Event::PeerDead {
                last_heard_ms: self.liveness.last_heard_ms().unwrap_or(0),
                since_ms: self.now_ms,
            }));
        }
        self.maybe_take_over(out);
        let due = match self.last_beat_ms {
            None => true,
            Some(t) => self.now_ms.saturating_sub(t) >= timing.heartbeat_interval_ms(),
        };
        if due {
            self.beat(out);
        }
    }

    /// Sends a heartbeat now (if the link is up): the configuration held,
    /// an ask for a lease, and a grant of the peer's latest ask when one
    /// may be given.
    fn beat(&mut self, out: &mut Vec<Output>) {
        if !self.link_up {
            return;
        }
        let grant_ms = if self.may_grant() {
            self.leases.pending_ask.take()
        } else {
            None
        };
        if grant_ms.is_some() {
            self.leases.last_grant_ms = self.now_ms;
        }
        let lease = LeaseNews {
            ask_ms: self.settings.peer().map(|_| self.now_ms),
            grant_ms,
            takeovers_seen: self.state.takeovers_applied,
        };
        self.send(
            Body::Heartbeat {
                config: self.state.config,
                lease,
            },
            out,
        );
        self.last_beat_ms = Some(self.now_ms);
    }

    /// Rule: a lease is granted only to a LIVE peer that has applied every
    /// takeover of its jobs.
    fn may_grant(&self) -> bool {
        self.link_up
            && self.liveness.state() == Liveness::Live
            && self.leases.peer_seen.unwrap_or(0) >= self.state.takeovers
    }

    /// Rule (seed 001: on DEAD the backup starts the work): once the peer is
    /// silent and the last lease granted to it is certainly over, its
    /// unfinished jobs are taken, once per silence. The count is persisted
    /// before the driver moves the jobs.
    fn maybe_take_over(&mut self, out: &mut Vec<Output>) {
        let Some(from) = self.settings.peer() else {
            return;
        };
        if self.leases.took_over || self.peer_silent_since().is_none() {
            return;
        }
        let timing = self.settings.timing();
        let over = if self.settings.faults().takeover_without_lease_wait {
            0
        } else {
            self.leases
                .grant_over_at_ms(timing.lease_ms(), timing.lease_margin_ms())
        };
        if self.now_ms < over {
            return;
        }
        self.leases.took_over = true;
        self.state.takeovers += 1;
        self.persist(out);
        out.push(Output::TakeOver {
            from,
            count: self.state.takeovers,
            epoch: self.state.highest_seen,
        });
    }

    /// The peer said which takeovers it applied: announce the rest, at most
    /// once per DEAD threshold on one connection.
    fn note_takeovers_seen(&mut self, seen: u64, out: &mut Vec<Output>) {
        self.leases.peer_seen = Some(seen);
        if seen >= self.state.takeovers {
            return;
        }
        let every = self.settings.timing().dead_threshold_ms();
        if self
            .leases
            .announced_ms
            .is_some_and(|t| self.now_ms.saturating_sub(t) < every)
        {
            return;
        }
        self.leases.announced_ms = Some(self.now_ms);
        out.push(Output::AnnounceTakeovers {
            count: self.state.takeovers,
        });
    }

    /// Admin activation (seed 002: "a secondary server can be promoted to
    /// primary server status by deactivating the 04 Activation Key and
    /// reactivating with the 03 Activation Key").
    fn on_activate(&mut self, kind: ActivationKind, out: &mut Vec<Output>) {
        match kind {
            ActivationKind::Primary => {
                // Rule: a promotion takes an epoch newer than every epoch
                // this server has seen, and that epoch is persisted (the
                // Persist output comes first) before the server may write
                // anything under it. Were it written first and lost in a
                // crash, the next promotion would take the same epoch again
                // and two changes could share one (epoch, version).
                let term = self.state.highest_seen.next_for(self.id());
                self.state.highest_seen = term;
                self.state.term = term;
                self.state.activation = ActivationKind::Primary;
                self.state.fenced_by = None;
            }
            ActivationKind::Secondary => {
                // A new activation ends a fence; as secondary the server takes
                // the primary's configuration on its next pull.
                self.state.activation = ActivationKind::Secondary;
                self.state.fenced_by = None;
                self.last_pull_ms = None;
            }
            ActivationKind::None => {
                self.state.activation = ActivationKind::None;
            }
        }
        self.persist(out);
        // Announce the new role at once rather than at the next beat: a
        // returning old primary is fenced sooner.
        self.beat(out);
    }

    /// Rule (R5, R6): only an unfenced primary writes configuration; the
    /// change is stamped with its term and the next version. The term was
    /// persisted when it was taken, so the stamp can never be handed out
    /// again after a crash.
    fn on_local_write(&mut self, payload: Payload, out: &mut Vec<Output>) {
        let term = match self.role() {
            Role::Primary { term } => term,
            Role::Fenced { by, .. } => {
                out.push(Output::RefuseWrite(WriteRefused::Fenced { by }));
                return;
            }
            Role::Secondary => {
                out.push(Output::RefuseWrite(WriteRefused::ReadOnlySecondary));
                return;
            }
            Role::Inactive => {
                out.push(Output::RefuseWrite(WriteRefused::NotActivated));
                return;
            }
        };
        let prev = self.state.config;
        let stamp = ConfigStamp {
            version: prev.version + 1,
            epoch: term,
        };
        self.state.config = stamp;
        self.persist(out);
        out.push(Output::CommitWrite {
            permit: WritePermit::new(stamp),
            payload: payload.clone(),
        });
        // Push at once (R7); a lost push is healed by the secondary's pull.
        if self.sync_block.is_none() {
            self.send(
                Body::ConfigChange(ConfigChange {
                    stamp,
                    prev,
                    payload,
                }),
                out,
            );
        }
    }

    fn on_sync_checked(&mut self, result: Result<(), SyncBlock>, out: &mut Vec<Output>) {
        match result {
            Ok(()) => {
                if self.sync_block.take().is_some() {
                    out.push(Output::Notify(Event::SyncResumed));
                    // Fixing the zone resumes sync without any other action:
                    // the next heartbeat from the primary triggers a pull,
                    // and a primary answers a request it had to leave.
                    self.last_pull_ms = None;
                    if std::mem::take(&mut self.deferred_snapshot) && self.role().is_primary() {
                        out.push(Output::ServeSnapshot {
                            stamp: self.state.config,
                        });
                    }
                }
            }
            Err(block) => {
                if self.sync_block.as_ref() != Some(&block) {
                    out.push(Output::Notify(Event::SyncBlocked(block.clone())));
                    self.sync_block = Some(block);
                }
            }
        }
    }

    fn on_message(&mut self, msg: Message, out: &mut Vec<Output>) {
        if msg.from == self.id() {
            out.push(Output::Notify(Event::PeerRefused(PeerRefusal::OwnId(
                msg.from,
            ))));
            return;
        }
        if let Some(expected) = self.settings.peer()
            && msg.from != expected
        {
            out.push(Output::Notify(Event::PeerRefused(
                PeerRefusal::UnknownServer {
                    expected,
                    got: msg.from,
                },
            )));
            return;
        }
        // Rule (R9 handshake): servers of different major versions never
        // pair; each Hello decides anew, so an upgraded peer pairs again.
        if let Body::Hello(hello) = &msg.body {
            if hello.software_major != self.settings.software_major() {
                let refusal = PeerRefusal::VersionMismatch {
                    instance: hello.instance.clone(),
                    ours: self.settings.software_major(),
                    theirs: hello.software_major,
                };
                if self.refused.as_ref() != Some(&refusal) {
                    out.push(Output::Notify(Event::PeerRefused(refusal.clone())));
                }
                self.refused = Some(refusal);
                return;
            }
            self.refused = None;
        } else if self.refused.is_some() {
            return;
        }

        // Liveness counts every message from the authenticated peer, stale
        // or not: an old epoch says nothing about whether the process runs.
        let heard = match msg.body {
            Body::Hello(_) => Heard::Hello,
            Body::Closing => Heard::Closing,
            _ => Heard::Other,
        };
        match self.liveness.heard(self.now_ms, heard) {
            Some(Liveness::Live) => {
                // On LIVE the survivor stops taking over (it finishes what
                // it took).
                self.leases.took_over = false;
                out.push(Output::Notify(Event::PeerLive {
                    peer: msg.from,
                    since_ms: self.now_ms,
                }))
            }
            Some(Liveness::Close) => out.push(Output::Notify(Event::PeerClose {
                since_ms: self.now_ms,
            })),
            _ => {}
        }

        // Rule (R6): every message carries the sender's epoch, and a receiver
        // that has seen a newer epoch refuses the message's content. The
        // sender learns the newer epoch from this server's own messages.
        if msg.epoch < self.state.highest_seen && !self.settings.faults().accept_stale_epochs {
            out.push(Output::Notify(Event::StaleRefused {
                epoch: msg.epoch,
                highest_seen: self.state.highest_seen,
            }));
            return;
        }
        self.observe_epoch(&msg, out);

        self.note_peer(&msg);
        match msg.body {
            Body::Hello(hello) => {
                self.note_takeovers_seen(hello.takeovers_seen, out);
                self.maybe_pull(msg.role, hello.config, out)
            }
            Body::Heartbeat { config, lease } => {
                if let Some(grant_ms) = lease.grant_ms {
                    let lease_ms = self.settings.timing().lease_ms();
                    self.leases.granted(grant_ms, self.now_ms, lease_ms);
                }
                self.note_takeovers_seen(lease.takeovers_seen, out);
                if let Some(ask_ms) = lease.ask_ms
                    && self.may_grant()
                {
                    self.leases.pending_ask = Some(ask_ms);
                }
                self.maybe_pull(msg.role, config, out)
            }
            Body::Closing => {}
            Body::ConfigChange(change) => self.on_change(msg.epoch, msg.role, change, out),
            Body::ConfigAck { stamp } => {
                if self.role().is_primary()
                    && let Some(view) = self.peer.as_mut()
                {
                    view.config = Some(stamp);
                }
            }
            Body::SnapshotRequest { have } => {
                if self.role().is_primary() && have != self.state.config {
                    if self.sync_block.is_none() {
                        out.push(Output::ServeSnapshot {
                            stamp: self.state.config,
                        });
                    } else {
                        self.deferred_snapshot = true;
                    }
                }
            }
            Body::ConfigSnapshot { stamp, payload } => {
                self.on_snapshot(msg.epoch, msg.role, stamp, payload, out)
            }
        }
    }

    /// Remembers what the peer said about itself.
    fn note_peer(&mut self, msg: &Message) {
        let view = match &mut self.peer {
            Some(view) if view.server == msg.from => view,
            other => other.insert(PeerView {
                server: msg.from,
                instance: None,
                role: msg.role,
                epoch: msg.epoch,
                config: None,
            }),
        };
        view.role = msg.role;
        view.epoch = msg.epoch;
        match &msg.body {
            Body::Hello(hello) => {
                view.instance = Some(hello.instance.clone());
                view.config = Some(hello.config);
            }
            Body::Heartbeat { config, .. } => view.config = Some(*config),
            _ => {}
        }
    }

    /// The epoch rules, for a message whose epoch is not older than the
    /// highest seen:
    /// - the highest seen epoch only ever rises, and is persisted when it
    ///   does;
    /// - a primary is fenced only by a peer that is itself primary at a
    ///   newer epoch: it steps down at once and stays fenced, across
    ///   restarts, until a new activation;
    /// - a primary that learns of a newer epoch from a peer that is not
    ///   primary (a promotion undone before the two met) takes a new epoch
    ///   above it and goes on, so the pair never ends without a primary.
    fn observe_epoch(&mut self, msg: &Message, out: &mut Vec<Output>) {
        let faults = self.settings.faults();
        let mut changed = false;
        if msg.epoch > self.state.highest_seen {
            self.state.highest_seen = msg.epoch;
            changed = true;
        }
        if let Role::Primary { term } = self.role() {
            let newer_primary = match msg.role {
                Role::Primary { term: theirs } if theirs > term => Some(theirs),
                _ if faults.fence_on_any_newer_epoch && msg.epoch > term => Some(msg.epoch),
                _ => None,
            };
            if let Some(by) = newer_primary {
                if !faults.never_fence {
                    self.state.fenced_by = Some(by);
                    out.push(Output::Notify(Event::Fenced { by }));
                    changed = true;
                }
            } else if self.state.highest_seen > term {
                let to = self.state.highest_seen.next_for(self.id());
                out.push(Output::Notify(Event::EpochRaised {
                    from: term,
                    seen: self.state.highest_seen,
                    to,
                }));
                self.state.highest_seen = to;
                self.state.term = to;
                changed = true;
            }
        }
        if changed {
            self.persist(out);
        }
    }

    /// Only an activated secondary takes configuration, only from the
    /// primary, and not while sync is blocked.
    fn takes_config_from(&self, sender: Role) -> bool {
        self.role() == Role::Secondary && sender.is_primary() && self.sync_block.is_none()
    }

    /// A fenced server asks for the configuration of the primary that
    /// fenced it, to compare (never to apply), under the same sync rules.
    fn compares_config_from(&self, sender: Role) -> bool {
        matches!(self.role(), Role::Fenced { .. })
            && sender.is_primary()
            && self.sync_block.is_none()
    }

    /// The pull (seed 004's ReplicationPeriod): a secondary that sees the
    /// primary hold other configuration than its own asks for a snapshot,
    /// at most once per replication period. A fenced server asks the same
    /// way, for its conflict report.
    fn maybe_pull(&mut self, sender: Role, theirs: ConfigStamp, out: &mut Vec<Output>) {
        let wanted = self.takes_config_from(sender) || self.compares_config_from(sender);
        if !wanted || !Self::is_news(self.state.config, theirs) {
            return;
        }
        let period = self.settings.timing().replication_period_ms();
        if let Some(t) = self.last_pull_ms
            && self.now_ms.saturating_sub(t) < period
        {
            return;
        }
        self.request_snapshot(out);
    }

    /// Whether `theirs` is configuration this server should take: anything
    /// but what it holds or an older version of the same primary term
    /// (within one term the primary's versions form a single line).
    fn is_news(local: ConfigStamp, theirs: ConfigStamp) -> bool {
        !(theirs == local || (theirs.epoch == local.epoch && theirs.version < local.version))
    }

    fn request_snapshot(&mut self, out: &mut Vec<Output>) {
        self.last_pull_ms = Some(self.now_ms);
        self.send(
            Body::SnapshotRequest {
                have: self.state.config,
            },
            out,
        );
    }

    /// Rules (R7) for a pushed change:
    /// - a change stamped with an epoch older than the highest seen is
    ///   refused;
    /// - it is applied only on top of the configuration it was made on
    ///   (`prev`), which makes its version the next one;
    /// - a gap (changes missed) or another line (this server holds changes
    ///   of a primary since replaced) asks for a snapshot instead.
    fn on_change(&mut self, by: Epoch, sender: Role, change: ConfigChange, out: &mut Vec<Output>) {
        if !self.takes_config_from(sender) {
            return;
        }
        if change.stamp.epoch < self.state.highest_seen
            && !self.settings.faults().accept_stale_epochs
        {
            out.push(Output::Notify(Event::StaleRefused {
                epoch: change.stamp.epoch,
                highest_seen: self.state.highest_seen,
            }));
            return;
        }
        let local = self.state.config;
        if !Self::is_news(local, change.stamp) {
            return;
        }
        if change.prev == local {
            self.apply(by, change.stamp, ApplyKind::Change, change.payload, out);
            return;
        }
        // Not next in line. If this server holds a version at least as new
        // as the change, or the same version on another line, its
        // configuration is not an ancestor of the primary's: it diverged.
        let diverged = local.version >= change.stamp.version
            || (local.version == change.prev.version && local != change.prev);
        if diverged {
            out.push(Output::Notify(Event::ConfigDiverged {
                local,
                primary: change.stamp,
            }));
        }
        self.request_snapshot(out);
    }

    /// A snapshot from the primary replaces the whole configuration, unless
    /// it is what this server holds or older in the same term (a snapshot
    /// overtaken by a change).
    fn on_snapshot(
        &mut self,
        by: Epoch,
        sender: Role,
        stamp: ConfigStamp,
        payload: Payload,
        out: &mut Vec<Output>,
    ) {
        if self.compares_config_from(sender) {
            out.push(Output::CompareConfig { stamp, by, payload });
            return;
        }
        if !self.takes_config_from(sender) || !Self::is_news(self.state.config, stamp) {
            return;
        }
        self.apply(by, stamp, ApplyKind::Snapshot, payload, out);
    }

    fn apply(
        &mut self,
        by: Epoch,
        stamp: ConfigStamp,
        kind: ApplyKind,
        payload: Payload,
        out: &mut Vec<Output>,
    ) {
        self.state.config = stamp;
        self.persist(out);
        out.push(Output::ApplyConfig {
            stamp,
            by,
            kind,
            payload,
        });
        self.send(Body::ConfigAck { stamp }, out);
    }

    fn persist(&mut self, out: &mut Vec<Output>) {
        if self.settings.faults().persist_on_tick_only {
            self.dirty = true;
        } else {
            out.push(Output::Persist(self.state.clone()));
        }
    }

    /// Every message leaves with this server's id, highest seen epoch and
    /// role. Nothing is sent while the link is down: the Hello on the next
    /// connection and the pull catch the peer up.
    fn send(&self, body: Body, out: &mut Vec<Output>) {
        if !self.link_up {
            return;
        }
        out.push(Output::Send(Message {
            from: self.id(),
            epoch: self.state.highest_seen,
            role: self.role(),
            body,
        }));
    }
}

impl Body {
    /// Bulk messages (configuration payloads) travel apart from control
    /// messages, so a heartbeat never waits behind a large snapshot.
    pub fn is_bulk(&self) -> bool {
        matches!(self, Body::ConfigChange(_) | Body::ConfigSnapshot { .. })
    }
}

#[cfg(test)]
#[path = "node_tests.rs"]
mod tests;
