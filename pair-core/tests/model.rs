//! Model check of the pair protocol with stateright: two servers running the
//! real `PairNode::step`, an admin, and a network that loses, duplicates and
//! reorders, with crashes that keep only what was persisted. This file owns
//! the model and its properties; it must not re-implement any protocol rule
//! (the nodes decide everything, the model only schedules and observes).
//!
//! The model plays the driver the way the gateway must: outputs are carried
//! out in order, `Persist` goes to the server's disk, `ServeSnapshot` is
//! answered at once, and a crash loses everything but the disk. Time is one
//! clock for both servers, advanced a heartbeat interval per tick; a slow
//! tick lets one server's clock fall a little behind (a clock that runs
//! slower, which the lease margin must absorb).
//!
//! Job ownership is modelled with one job, J, accepted by server 0 and
//! replicated to server 1. Each server's store (its disk) holds its view of
//! J: the owner and the owner term (how many times ownership moved). The
//! model plays the gateway's job driver: a `TakeOver` moves J to the taker
//! if the taker's store says the peer owns it, an `AnnounceTakeovers` sends
//! the peer a `TakenOver` letter (the count, and J if the sender took it),
//! and the receiver of that letter adopts a newer term and tells its node
//! with `TakeoversApplied`. A server may start a step of J whenever its
//! store says it owns J and its node's permit allows it; a server may also
//! stall (a frozen process: not stepped for a while, its mail waiting).
//!
//! Exploration is bounded (activations, crashes, writes, duplicates, link
//! flaps, stalls, slow ticks, messages in flight, ticks before the heal) and
//! complete within those bounds. At any point the network may *heal*: from
//! then on nothing is lost, nobody crashes, stalls or acts as admin, and
//! the system runs in rounds (every message in flight delivered, then both
//! servers tick). The bounded-liveness properties say what must hold `K`
//! rounds after the heal.
//!
//! The heal is a new connection, as on the real link (a TCP connection that
//! broke delivers nothing more): messages still in flight are discarded and
//! both sides start with a Hello. Before the heal, by contrast, any message
//! may be delivered late, twice or never. This matters for one race the
//! rules decide on purpose: a promoted secondary's heartbeat that reaches
//! the old primary fences it, even if the admin undid the promotion while
//! the heartbeat travelled; the old primary then stays fenced until it is
//! activated again, as a fence always does.

use std::collections::BTreeSet;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::Instant;

use pair_core::settings::Faults;
use pair_core::{
    ActivationKind, ApplyKind, ConfigStamp, Epoch, Event, Input, Liveness, Message, Output,
    PairNode, PairSettings, Permit, Persisted, Role, ServerId, Timing,
};
use stateright::{Checker, Expectation, HasDiscoveries, Model, Property};

const BEAT_MS: u64 = 100;
const DEAD_MS: u64 = 200;
const PULL_MS: u64 = 200;
const IDS: [ServerId; 2] = [ServerId::from_u128(0xa), ServerId::from_u128(0xb)];
/// Server 0 starts as the primary, server 1 as the secondary.
const OLD_PRIMARY: usize = 0;
const SECONDARY: usize = 1;

/// Rounds after the heal by which the pair must agree on one primary and
/// hold the same configuration.
const AGREE_ROUNDS: u8 = 2;
const CONVERGE_ROUNDS: u8 = 5;
/// Rounds after the heal by which both stores name the same owner of J
/// (the smallest bound that holds: the Hellos in the first round, the
/// `TakenOver` letter in the second).
const JOB_ROUNDS: u8 = 2;

/// How many ticks a stalled server misses: its next step then comes at
/// least the DEAD threshold after its last one, so its peer may have
/// declared it DEAD and taken its jobs meanwhile.
const STALL_TICKS: u8 = 3;
/// How far a slow tick leaves a server's clock behind: half the lease
/// margin (`Timing::lease_margin_ms` is 20 ms here), a rate difference the
/// protocol must absorb.
const SLOW_MS: u64 = 10;

#[derive(Debug, Clone, Copy)]
struct Bounds {
    activations: u8,
    crashes: u8,
    shutdowns: u8,
    writes: u8,
    duplicates: u8,
    flaps: u8,
    in_flight: usize,
    ticks: u8,
    stalls: u8,
    slow_ticks: u8,
    /// Whether each server pins the other as its peer, which turns on job
    /// ownership in the node (lease asks and grants, takeovers, permits).
    /// The configuration scenarios leave it off: without a pinned peer the
    /// node runs exactly the role and configuration rules, and the lease
    /// fields in every heartbeat would only multiply their states (by
    /// about three) without touching what they check.
    jobs: bool,
}

/// Promotions, undone promotions and fencing with a crash (kill -9) at any
/// point: the bounds the broken variants are caught in, too.
const PROMOTIONS_AND_CRASHES: Bounds = Bounds {
    activations: 2,
    crashes: 1,
    shutdowns: 0,
    writes: 1,
    duplicates: 0,
    flaps: 0,
    in_flight: 2,
    ticks: 2,
    stalls: 0,
    slow_ticks: 0,
    jobs: false,
};

/// A clean stop, a duplicated message and a link that drops and returns,
/// with one activation.
const STOPS_DUPLICATES_AND_FLAPS: Bounds = Bounds {
    activations: 1,
    crashes: 0,
    shutdowns: 1,
    writes: 0,
    duplicates: 1,
    flaps: 1,
    in_flight: 2,
    ticks: 2,
    stalls: 0,
    slow_ticks: 0,
    jobs: false,
};

/// Job ownership with a stalled server. Five ticks are what a stalled owner
/// needs to hold a lease first (the first grant leaves on the second tick),
/// stall, and wake after its job was taken: DEAD, then the last grant's
/// lease and margin, three ticks after that grant.
const JOB_STALLS: Bounds = Bounds {
    activations: 0,
    crashes: 0,
    shutdowns: 0,
    writes: 0,
    duplicates: 0,
    flaps: 0,
    in_flight: 2,
    ticks: 5,
    stalls: 1,
    slow_ticks: 0,
    jobs: true,
};

/// Job ownership with one server's clock running slow while a lease runs:
/// what the lease margin is for.
const JOB_SLOW_CLOCKS: Bounds = Bounds {
    stalls: 0,
    slow_ticks: 1,
    ..JOB_STALLS
};

/// Job ownership with a crash (kill -9) at any point: a restarted server
/// knows only its disk (the takeover count, not the leases).
const JOB_CRASHES: Bounds = Bounds {
    crashes: 1,
    stalls: 0,
    ..JOB_STALLS
};

struct PairModel {
    settings: [PairSettings; 2],
    bounds: Bounds,
}

impl PairModel {
    fn new(faults: Faults, bounds: Bounds) -> PairModel {
        let timing = Timing::new(BEAT_MS, DEAD_MS, PULL_MS).unwrap();
        let settings = |i: usize, name: &str| {
            let s = PairSettings::new(IDS[i], name, 1, timing).with_faults(faults);
            if bounds.jobs {
                s.with_peer(IDS[1 - i]).unwrap()
            } else {
                s
            }
        };
        PairModel {
            settings: [settings(0, "gw-a"), settings(1, "gw-b")],
            bounds,
        }
    }
}

/// One server's view of the job J, as its store holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct JobRow {
    /// The index of the server that owns J.
    owner: usize,
    /// How many times the ownership of J moved.
    term: u64,
}

/// What J is at the start: accepted by server 0, replicated to server 1.
const J_ACCEPTED: JobRow = JobRow { owner: 0, term: 0 };

/// What travels between the servers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Carried {
    /// A protocol message from the node.
    Protocol(Box<Message>),
    /// The job driver's answer to `AnnounceTakeovers`: the sender's
    /// takeover count, and J as the sender holds it if it took J.
    TakenOver { count: u64, job: Option<JobRow> },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Envelope {
    to: usize,
    carried: Carried,
}

/// Facts about the history that the properties need, kept in the state.
/// Flags that only a violation sets cost no states in a correct run.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Ghost {
    /// The highest epoch each server has ever had, in memory or on disk.
    max_epoch: [Epoch; 2],
    /// Server i has accepted a message from the other server sent in the
    /// other's current role, since the last role change of either.
    heard: [bool; 2],
    /// Stamps of every configuration write granted so far, sorted.
    stamps: Vec<ConfigStamp>,
    duplicate_stamp: bool,
    write_by_non_primary: bool,
    write_before_durable: bool,
    stale_apply: bool,
    /// A server that was not fenced was handed a configuration to compare,
    /// or a fenced one applied configuration.
    fenced_confusion: bool,
    /// A primary raised its epoch above an undone promotion.
    raised: bool,
    /// Every assignment of J to an owner ever made, as (term, owner),
    /// sorted.
    terms: Vec<(u64, usize)>,
    /// Some term of J was given to two different owners.
    two_owners_in_a_term: bool,
    /// A server started a step of J under a lease although the other
    /// server had taken J over (a stalled owner waking, say).
    stalled_owner_started: bool,
    /// A server started a step of J alone (no lease: the peer silent)
    /// although the other server had taken J over: the partition
    /// exception, allowed.
    partition_exception: bool,
    /// The server that stalled, if one did.
    staller: Option<usize>,
}

impl Ghost {
    /// Records that J was given to `row.owner` in `row.term`.
    fn assign(&mut self, row: JobRow) {
        let entry = (row.term, row.owner);
        if self
            .terms
            .iter()
            .any(|&(term, owner)| term == row.term && owner != row.owner)
        {
            self.two_owners_in_a_term = true;
        }
        if !self.terms.contains(&entry) {
            self.terms.push(entry);
            self.terms.sort();
        }
    }

    /// The latest assignment of J.
    fn latest(&self) -> JobRow {
        let &(term, owner) = self.terms.last().expect("J starts assigned");
        JobRow { owner, term }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PairState {
    /// `None`: crashed or stopped.
    nodes: [Option<PairNode>; 2],
    disk: [Persisted; 2],
    /// Each server's view of J, on its disk beside `disk`.
    jobs: [JobRow; 2],
    /// The servers' clock, in heartbeat intervals. One clock for both, but
    /// a server's own reading is `lag` behind it: offsets between the two
    /// clocks do not matter (no rule compares one server's reading with the
    /// other's), only a clock that runs slower while a lease runs.
    clock: u8,
    /// How far behind the clock each server's own reading is, in ms.
    lag: [u64; 2],
    /// How many more ticks each server misses (stalled while non-zero).
    stalled: [u8; 2],
    /// The messages in flight, a multiset kept sorted.
    net: Vec<Envelope>,
    link_up: bool,
    activations: u8,
    crashes: u8,
    shutdowns: u8,
    writes: u8,
    duplicates: u8,
    flaps: u8,
    stalls: u8,
    slow_ticks: u8,
    /// Rounds since the heal, once healed.
    healed: Option<u8>,
    /// Whether some server was an unfenced primary when the network healed.
    primary_at_heal: bool,
    ghost: Ghost,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Action {
    /// Time passes on both servers (one heartbeat interval).
    Tick,
    /// Time passes, but server i's clock advances `SLOW_MS` less.
    SlowTick(usize),
    Deliver(usize),
    Duplicate(usize),
    Drop(usize),
    Crash(usize),
    Shutdown(usize),
    Recover(usize),
    Activate(usize, ActivationKind),
    Write(usize),
    LinkDown,
    LinkUp,
    /// Server i stops running (SIGSTOP, a frozen VM) for `STALL_TICKS`
    /// ticks: nothing is delivered to it and it is not ticked.
    Stall(usize),
    /// Server i starts a step of J, which its store says it owns, because
    /// its node's permit allows it now. It needs no bound: a step changes
    /// nothing the model tracks but the ghost's record of it.
    StartStep(usize),
    Heal,
    Round,
}

/// Server i's own clock reading.
fn now_ms(s: &PairState, i: usize) -> u64 {
    s.clock as u64 * BEAT_MS - s.lag[i]
}

fn is_up(s: &PairState, i: usize) -> bool {
    s.nodes[i].is_some() && s.stalled[i] == 0
}

/// Whether the other server's store says it took J from server i: it
/// names itself as owner in a newer term than i's store holds.
fn taken_from(s: &PairState, i: usize) -> bool {
    let theirs = s.jobs[1 - i];
    theirs.owner == 1 - i && theirs.term > s.jobs[i].term
}

fn role_of(s: &PairState, i: usize) -> Role {
    match &s.nodes[i] {
        Some(n) => n.role(),
        None => s.disk[i].role(),
    }
}

fn highest_of(s: &PairState, i: usize) -> Epoch {
    match &s.nodes[i] {
        Some(n) => n.persisted().highest_seen,
        None => s.disk[i].highest_seen,
    }
}

fn config_of(s: &PairState, i: usize) -> ConfigStamp {
    match &s.nodes[i] {
        Some(n) => n.persisted().config,
        None => s.disk[i].config,
    }
}

fn sort_net(net: &mut [Envelope]) {
    net.sort_by_cached_key(|e| {
        let mut h = DefaultHasher::new();
        e.hash(&mut h);
        h.finish()
    });
}

impl PairModel {
    /// Puts `carried` on the network to the other server of `from`. Before
    /// the heal a full network loses what is sent.
    fn send(&self, s: &mut PairState, from: usize, carried: Carried) {
        if s.healed.is_some() || s.net.len() < self.bounds.in_flight {
            s.net.push(Envelope {
                to: 1 - from,
                carried,
            });
        }
    }

    /// Feeds one input to server `i` and plays its outputs as the driver.
    fn step(&self, s: &mut PairState, i: usize, input: Input) {
        let now = now_ms(s, i);
        let Some(node) = s.nodes[i].as_mut() else {
            return;
        };
        let role_before = node.role();
        let highest_before = node.persisted().highest_seen;
        let mut pending = std::collections::VecDeque::from(node.step(now, input));
        while let Some(output) = pending.pop_front() {
            match output {
                Output::Send(msg) => self.send(s, i, Carried::Protocol(Box::new(msg))),
                Output::Persist(p) => s.disk[i] = p,
                Output::CommitWrite { permit, .. } => {
                    let stamp = permit.stamp();
                    let g = &mut s.ghost;
                    if !role_before.is_primary() {
                        g.write_by_non_primary = true;
                    }
                    if s.disk[i].term != stamp.epoch
                        || s.disk[i].config != stamp
                        || s.disk[i].highest_seen < stamp.epoch
                    {
                        g.write_before_durable = true;
                    }
                    if g.stamps.contains(&stamp) {
                        g.duplicate_stamp = true;
                    }
                    g.stamps.push(stamp);
                    g.stamps.sort_by_key(|s| (s.version, s.epoch));
                }
                Output::ApplyConfig {
                    stamp, by, kind, ..
                } => {
                    if matches!(role_before, Role::Fenced { .. }) {
                        s.ghost.fenced_confusion = true;
                    }
                    if by < highest_before
                        || (kind == ApplyKind::Change && stamp.epoch < highest_before)
                    {
                        s.ghost.stale_apply = true;
                    }
                }
                Output::ServeSnapshot { stamp } => {
                    let node = s.nodes[i].as_mut().expect("still up");
                    pending.extend(node.step(
                        now,
                        Input::SnapshotReady {
                            stamp,
                            payload: Vec::new(),
                        },
                    ));
                }
                Output::Notify(Event::EpochRaised { .. }) => s.ghost.raised = true,
                Output::CompareConfig { .. } => {
                    if !matches!(role_before, Role::Fenced { .. }) {
                        s.ghost.fenced_confusion = true;
                    }
                }
                Output::TakeOver { from, .. } => {
                    // The driver moves the unfinished jobs its store says
                    // the silent peer owns, one term on.
                    assert_eq!(from, IDS[1 - i], "only the peer's jobs are taken");
                    if s.jobs[i].owner == 1 - i {
                        let taken = JobRow {
                            owner: i,
                            term: s.jobs[i].term + 1,
                        };
                        s.jobs[i] = taken;
                        s.ghost.assign(taken);
                    }
                }
                Output::AnnounceTakeovers { count } => {
                    // The jobs this server took, on the link the node
                    // speaks on.
                    let row = s.jobs[i];
                    let job = (row.owner == i && row.term > 0).then_some(row);
                    if s.nodes[i].as_ref().is_some_and(PairNode::is_link_up) {
                        self.send(s, i, Carried::TakenOver { count, job });
                    }
                }
                Output::Notify(_) | Output::PublishRole(_) | Output::RefuseWrite(_) => {}
            }
        }
    }

    /// Delivers `env` and records whether its receiver heard the sender's
    /// current role.
    fn deliver(&self, s: &mut PairState, env: Envelope) {
        let to = env.to;
        let Some(node) = &s.nodes[to] else {
            return;
        };
        match env.carried {
            Carried::Protocol(msg) => {
                let accepted =
                    msg.epoch >= node.persisted().highest_seen && msg.role == role_of(s, 1 - to);
                self.step(s, to, Input::Received(*msg));
                if accepted {
                    s.ghost.heard[to] = true;
                }
            }
            Carried::TakenOver { count, job } => {
                // The job driver marks the jobs as the peer's (a newer term
                // only), then tells the node.
                if let Some(job) = job
                    && job.term > s.jobs[to].term
                {
                    s.jobs[to] = job;
                }
                self.step(s, to, Input::TakeoversApplied { count });
            }
        }
    }

    /// Time passes: every running server is ticked; a stalled one misses
    /// the tick.
    fn tick(&self, s: &mut PairState) {
        s.clock += 1;
        for i in 0..2 {
            if s.stalled[i] > 0 {
                s.stalled[i] -= 1;
            } else {
                self.step(s, i, Input::Tick);
            }
        }
    }

    fn recover(&self, s: &mut PairState, i: usize) {
        s.nodes[i] = Some(PairNode::new(
            self.settings[i].clone(),
            s.disk[i].clone(),
            now_ms(s, i),
        ));
        if s.link_up {
            // A new connection: both ends see it come up.
            self.step(s, i, Input::LinkUp);
            self.step(s, 1 - i, Input::LinkUp);
        }
    }

    fn agreed(s: &PairState) -> bool {
        let (Some(a), Some(b)) = (&s.nodes[0], &s.nodes[1]) else {
            return false;
        };
        let primaries = [a.role().is_primary(), b.role().is_primary()];
        if primaries.iter().filter(|p| **p).count() != 1 {
            return false;
        }
        // Each knows the other's current role.
        a.peer().is_some_and(|p| p.role == b.role()) && b.peer().is_some_and(|p| p.role == a.role())
    }
}

impl Model for PairModel {
    type State = PairState;
    type Action = Action;

    fn init_states(&self) -> Vec<PairState> {
        let e1 = Epoch::new(1, IDS[OLD_PRIMARY]);
        let mut disk = [Persisted::default(), Persisted::default()];
        disk[OLD_PRIMARY] = Persisted {
            highest_seen: e1,
            activation: ActivationKind::Primary,
            term: e1,
            ..Persisted::default()
        };
        disk[SECONDARY] = Persisted {
            highest_seen: e1,
            activation: ActivationKind::Secondary,
            ..Persisted::default()
        };
        let mut s = PairState {
            nodes: [
                Some(PairNode::new(self.settings[0].clone(), disk[0].clone(), 0)),
                Some(PairNode::new(self.settings[1].clone(), disk[1].clone(), 0)),
            ],
            disk,
            jobs: [J_ACCEPTED; 2],
            clock: 0,
            lag: [0, 0],
            stalled: [0, 0],
            net: Vec::new(),
            link_up: true,
            activations: self.bounds.activations,
            crashes: self.bounds.crashes,
            shutdowns: self.bounds.shutdowns,
            writes: self.bounds.writes,
            duplicates: self.bounds.duplicates,
            flaps: self.bounds.flaps,
            stalls: self.bounds.stalls,
            slow_ticks: self.bounds.slow_ticks,
            healed: None,
            primary_at_heal: false,
            ghost: Ghost {
                max_epoch: [e1, e1],
                heard: [false, false],
                stamps: Vec::new(),
                duplicate_stamp: false,
                write_by_non_primary: false,
                write_before_durable: false,
                stale_apply: false,
                fenced_confusion: false,
                raised: false,
                terms: vec![(J_ACCEPTED.term, J_ACCEPTED.owner)],
                two_owners_in_a_term: false,
                stalled_owner_started: false,
                partition_exception: false,
                staller: None,
            },
        };
        self.step(&mut s, 0, Input::LinkUp);
        self.step(&mut s, 1, Input::LinkUp);
        sort_net(&mut s.net);
        vec![s]
    }

    fn actions(&self, s: &PairState, actions: &mut Vec<Action>) {
        if s.healed.is_some() {
            actions.push(Action::Round);
            return;
        }
        for k in 0..s.net.len() {
            if k > 0 && s.net[k] == s.net[k - 1] {
                continue;
            }
            // A stalled server's mail waits in the network.
            if is_up(s, s.net[k].to) {
                actions.push(Action::Deliver(k));
                if s.duplicates > 0 {
                    actions.push(Action::Duplicate(k));
                }
            }
            actions.push(Action::Drop(k));
        }
        let running = s.stalled == [0, 0];
        for i in 0..2 {
            let Some(node) = &s.nodes[i] else {
                // A new connection needs both processes running.
                if running {
                    actions.push(Action::Recover(i));
                }
                continue;
            };
            if s.crashes > 0 {
                actions.push(Action::Crash(i));
            }
            if s.stalled[i] > 0 {
                // A stalled server can still be killed, and nothing else.
                continue;
            }
            if s.stalls > 0 {
                actions.push(Action::Stall(i));
            }
            if self.bounds.jobs && s.jobs[i].owner == i && node.permit().allows(now_ms(s, i)) {
                actions.push(Action::StartStep(i));
            }
            if s.shutdowns > 0 {
                actions.push(Action::Shutdown(i));
            }
            // Activations that change the role; reactivating an unfenced
            // primary or a secondary as what it is only repeats what the
            // others already cover.
            if s.activations > 0 {
                if !node.role().is_primary() {
                    actions.push(Action::Activate(i, ActivationKind::Primary));
                }
                if node.role() != Role::Secondary {
                    actions.push(Action::Activate(i, ActivationKind::Secondary));
                }
            }
            if s.writes > 0 {
                actions.push(Action::Write(i));
            }
        }
        if s.clock < self.bounds.ticks {
            actions.push(Action::Tick);
            if s.slow_ticks > 0 {
                actions.push(Action::SlowTick(0));
                actions.push(Action::SlowTick(1));
            }
        }
        if running && s.link_up && s.flaps > 0 {
            actions.push(Action::LinkDown);
        }
        if running && !s.link_up {
            actions.push(Action::LinkUp);
        }
        actions.push(Action::Heal);
    }

    fn next_state(&self, last: &PairState, action: Action) -> Option<PairState> {
        let mut s = last.clone();
        let roles_before = [role_of(&s, 0), role_of(&s, 1)];
        match action {
            Action::Tick => self.tick(&mut s),
            Action::SlowTick(i) => {
                s.slow_ticks -= 1;
                s.lag[i] += SLOW_MS;
                self.tick(&mut s);
            }
            Action::Deliver(k) => {
                let env = s.net.remove(k);
                self.deliver(&mut s, env);
            }
            Action::Duplicate(k) => {
                s.duplicates -= 1;
                let env = s.net[k].clone();
                self.deliver(&mut s, env);
            }
            Action::Drop(k) => {
                s.net.remove(k);
            }
            Action::Crash(i) => {
                s.crashes -= 1;
                s.nodes[i] = None;
                s.stalled[i] = 0;
            }
            Action::Shutdown(i) => {
                s.shutdowns -= 1;
                self.step(&mut s, i, Input::Shutdown);
                s.nodes[i] = None;
            }
            Action::Recover(i) => self.recover(&mut s, i),
            Action::Activate(i, kind) => {
                s.activations -= 1;
                self.step(&mut s, i, Input::Activate(kind));
            }
            Action::Write(i) => {
                let before = s.ghost.stamps.len();
                self.step(
                    &mut s,
                    i,
                    Input::LocalConfigWrite {
                        payload: Vec::new(),
                    },
                );
                if s.ghost.stamps.len() == before {
                    // Refused: nothing changed.
                    return None;
                }
                s.writes -= 1;
            }
            Action::LinkDown => {
                s.flaps -= 1;
                s.link_up = false;
                self.step(&mut s, 0, Input::LinkDown);
                self.step(&mut s, 1, Input::LinkDown);
            }
            Action::LinkUp => {
                s.link_up = true;
                self.step(&mut s, 0, Input::LinkUp);
                self.step(&mut s, 1, Input::LinkUp);
            }
            Action::Stall(i) => {
                s.stalls -= 1;
                s.stalled[i] = STALL_TICKS;
                s.ghost.staller = Some(i);
            }
            Action::StartStep(i) => {
                // The step itself changes nothing the model tracks: only
                // what it says about ownership is recorded, and a step that
                // says nothing new is left out of the space.
                let before = s.ghost.clone();
                if taken_from(&s, i) {
                    match s.nodes[i].as_ref().expect("running").permit() {
                        Permit::Leased { .. } => s.ghost.stalled_owner_started = true,
                        Permit::Alone { .. } => s.ghost.partition_exception = true,
                        Permit::Unpaired | Permit::Wait => {}
                    }
                }
                if s.ghost == before {
                    return None;
                }
            }
            Action::Heal => {
                s.activations = 0;
                s.crashes = 0;
                s.shutdowns = 0;
                s.writes = 0;
                s.duplicates = 0;
                s.flaps = 0;
                s.stalls = 0;
                s.slow_ticks = 0;
                s.stalled = [0, 0];
                s.healed = Some(0);
                // The heal is a new connection, as on the real link: what
                // was in flight on the broken one is gone, and each side
                // starts with its Hello.
                s.net.clear();
                s.link_up = true;
                for i in 0..2 {
                    if s.nodes[i].is_none() {
                        s.nodes[i] = Some(PairNode::new(
                            self.settings[i].clone(),
                            s.disk[i].clone(),
                            now_ms(&s, i),
                        ));
                    }
                }
                for i in 0..2 {
                    self.step(&mut s, i, Input::LinkDown);
                    self.step(&mut s, i, Input::LinkUp);
                }
                s.primary_at_heal = (0..2).any(|i| role_of(&s, i).is_primary());
            }
            Action::Round => {
                let in_flight = std::mem::take(&mut s.net);
                for env in in_flight {
                    self.deliver(&mut s, env);
                }
                self.tick(&mut s);
                s.healed = s.healed.map(|r| r + 1);
            }
        }
        // Any role change makes what each heard of the other out of date.
        let roles_after = [role_of(&s, 0), role_of(&s, 1)];
        if roles_after != roles_before {
            s.ghost.heard = [false, false];
        }
        for i in 0..2 {
            s.ghost.max_epoch[i] = s.ghost.max_epoch[i].max(highest_of(&s, i));
        }
        sort_net(&mut s.net);
        Some(s)
    }

    fn within_boundary(&self, s: &PairState) -> bool {
        s.healed.is_none_or(|r| r <= CONVERGE_ROUNDS)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            // Safety, in every state.
            Property::always(EPOCH_NEVER_DECREASES, |_, s: &PairState| {
                (0..2).all(|i| highest_of(s, i) >= s.ghost.max_epoch[i])
            }),
            Property::always(NO_WRITE_BY_NON_PRIMARY, |_, s: &PairState| {
                !s.ghost.write_by_non_primary
            }),
            Property::always(WRITE_EPOCH_DURABLE_FIRST, |_, s: &PairState| {
                !s.ghost.write_before_durable
            }),
            Property::always(NO_DUPLICATE_STAMP, |_, s: &PairState| {
                !s.ghost.duplicate_stamp
            }),
            Property::always(NO_STALE_APPLY, |_, s: &PairState| !s.ghost.stale_apply),
            Property::always(FENCED_ONLY_COMPARES, |_, s: &PairState| {
                !s.ghost.fenced_confusion
            }),
            Property::always(NOT_BOTH_PRIMARY_AFTER_HEARING, |_, s: &PairState| {
                !(s.ghost.heard[0]
                    && s.ghost.heard[1]
                    && role_of(s, 0).is_primary()
                    && role_of(s, 1).is_primary())
            }),
            Property::always(PRIMARY_THAT_HEARD_IS_ALONE, |_, s: &PairState| {
                !((s.ghost.heard[0] || s.ghost.heard[1])
                    && role_of(s, 0).is_primary()
                    && role_of(s, 1).is_primary())
            }),
            // Bounded liveness after the heal.
            Property::always(AGREE_AFTER_HEAL, |_, s: &PairState| match s.healed {
                Some(r) if r >= AGREE_ROUNDS && s.primary_at_heal => PairModel::agreed(s),
                _ => true,
            }),
            Property::always(CONVERGE_AFTER_HEAL, |_, s: &PairState| match s.healed {
                // A fenced server keeps its own configuration (its partition-
                // time changes go to the conflict report) until reactivated;
                // a secondary must hold exactly the primary's.
                Some(r) if r >= CONVERGE_ROUNDS && s.primary_at_heal => {
                    !(0..2).any(|i| role_of(s, i) == Role::Secondary)
                        || config_of(s, 0) == config_of(s, 1)
                }
                _ => true,
            }),
            Property::always(NO_TWO_OWNERS_IN_A_TERM, |_, s: &PairState| {
                !s.ghost.two_owners_in_a_term
            }),
            Property::always(STALLED_OWNER_NEVER_STARTS, |_, s: &PairState| {
                !s.ghost.stalled_owner_started
            }),
            Property::always(JOB_AGREED_AFTER_HEAL, |_, s: &PairState| match s.healed {
                Some(r) if r >= JOB_ROUNDS => {
                    s.jobs[0] == s.jobs[1] && s.jobs[0] == s.ghost.latest()
                }
                _ => true,
            }),
            // Reachability: the model is not vacuous.
            Property::sometimes(FAILOVER, |_, s: &PairState| {
                role_of(s, SECONDARY).is_primary()
                    && s.nodes[SECONDARY]
                        .as_ref()
                        .is_some_and(|n| n.liveness() == Liveness::Dead)
            }),
            Property::sometimes(OLD_PRIMARY_FENCED, |_, s: &PairState| {
                matches!(role_of(s, OLD_PRIMARY), Role::Fenced { by, .. } if by.server == IDS[SECONDARY])
                    && role_of(s, SECONDARY).is_primary()
            }),
            Property::sometimes(UNDONE_PROMOTION_RAISED, |_, s: &PairState| s.ghost.raised),
            Property::sometimes(CLEAN_STOP_CLOSE, |_, s: &PairState| {
                s.nodes
                    .iter()
                    .flatten()
                    .any(|n| n.liveness() == Liveness::Close)
            }),
            Property::sometimes(SECONDARY_APPLIES, |_, s: &PairState| {
                role_of(s, SECONDARY) == Role::Secondary && config_of(s, SECONDARY).version >= 1
            }),
            Property::sometimes(HEARD_EACH_OTHER, |_, s: &PairState| {
                s.ghost.heard[0] && s.ghost.heard[1]
            }),
            Property::sometimes(HEALED_AND_AGREED, |_, s: &PairState| {
                s.healed.is_some_and(|r| r >= AGREE_ROUNDS)
                    && highest_of(s, OLD_PRIMARY).number >= 2
                    && PairModel::agreed(s)
            }),
            Property::sometimes(JOB_TAKEN_OVER, |_, s: &PairState| s.jobs[1].owner == 1),
            Property::sometimes(STALLED_OWNER_WAKES_TO_TAKEN_JOB, |_, s: &PairState| {
                s.ghost
                    .staller
                    .is_some_and(|i| is_up(s, i) && s.jobs[i].owner == i && taken_from(s, i))
            }),
            Property::sometimes(NEW_OWNER_LEASED_AFTER_APPLY, |_, s: &PairState| {
                s.jobs[0] == s.jobs[1]
                    && s.jobs[1].owner == 1
                    && s.nodes[1].as_ref().is_some_and(|n| {
                        matches!(n.permit(), Permit::Leased { .. })
                            && n.permit().allows(now_ms(s, 1))
                    })
            }),
            Property::sometimes(PARTITION_EXCEPTION, |_, s: &PairState| {
                s.ghost.partition_exception
            }),
            Property::sometimes(JOBS_HEALED_AFTER_TAKEOVER, |_, s: &PairState| {
                s.healed.is_some_and(|r| r >= JOB_ROUNDS)
                    && s.jobs[0] == s.jobs[1]
                    && s.jobs[0].term >= 1
            }),
        ]
    }
}

const FAILOVER: &str = "failover: the promoted secondary serves while the primary is dead";
const OLD_PRIMARY_FENCED: &str = "the returning old primary is fenced by the promoted one";
const UNDONE_PROMOTION_RAISED: &str =
    "an undone promotion is resolved by raising the primary's epoch";
const CLEAN_STOP_CLOSE: &str = "a clean stop shows CLOSE";
const SECONDARY_APPLIES: &str = "a secondary applies replicated configuration";
const HEARD_EACH_OTHER: &str = "both heard each other's current role";
const HEALED_AND_AGREED: &str = "healed after a promotion and agreed";
const EPOCH_NEVER_DECREASES: &str = "a server's highest epoch never decreases, across crashes too";
const NO_WRITE_BY_NON_PRIMARY: &str =
    "only an unfenced primary accepts a configuration write (never a fenced one)";
const WRITE_EPOCH_DURABLE_FIRST: &str = "a write's epoch and stamp are persisted before the write";
const NO_DUPLICATE_STAMP: &str = "no two configuration changes carry the same (epoch, version)";
const NO_STALE_APPLY: &str = "no server applies a change from an epoch older than one it has seen";
const FENCED_ONLY_COMPARES: &str =
    "a fenced server compares the new primary's configuration and never applies it";
const NOT_BOTH_PRIMARY_AFTER_HEARING: &str =
    "two servers that heard each other since their last role change are never both primary";
const PRIMARY_THAT_HEARD_IS_ALONE: &str =
    "once either heard the other's current role, they are not both primary";
const AGREE_AFTER_HEAL: &str = "after a heal, both agree on one primary within the bound";
const NO_TWO_OWNERS_IN_A_TERM: &str = "no ownership term of a job is given to two servers";
const STALLED_OWNER_NEVER_STARTS: &str = "an owner (a stalled one included) never starts a step \
     under a lease after its job was taken over";
const JOB_AGREED_AFTER_HEAL: &str =
    "after a heal, both stores name the latest owner of the job within the bound";
const JOB_TAKEN_OVER: &str = "the silent owner's job is taken over";
const STALLED_OWNER_WAKES_TO_TAKEN_JOB: &str =
    "a stalled owner wakes while its job is taken over and it has not learnt it";
const NEW_OWNER_LEASED_AFTER_APPLY: &str =
    "once the old owner applied the takeover, the new owner runs the job under its lease";
const PARTITION_EXCEPTION: &str =
    "the partition exception: a cut-off owner goes on alone with a job taken over";
const JOBS_HEALED_AFTER_TAKEOVER: &str = "healed after a takeover and both stores agree";
const CONVERGE_AFTER_HEAL: &str = "after a heal, both hold the same configuration within the bound";

/// `PAIR_MODEL_BOUNDS=activations,crashes,shutdowns,writes,duplicates,flaps,in_flight,ticks`
/// explores other bounds (deeper runs take much longer than the default);
/// three more numbers, `stalls,slow_ticks,jobs` (jobs 0 or 1), explore job
/// ownership too.
fn bounds_from_env() -> Option<Bounds> {
    let text = std::env::var("PAIR_MODEL_BOUNDS").ok()?;
    let mut n: Vec<u8> = text.split(',').map(|v| v.trim().parse().unwrap()).collect();
    assert!(
        n.len() == 8 || n.len() == 11,
        "PAIR_MODEL_BOUNDS needs 8 or 11 numbers"
    );
    n.resize(11, 0);
    Some(Bounds {
        activations: n[0],
        crashes: n[1],
        shutdowns: n[2],
        writes: n[3],
        duplicates: n[4],
        flaps: n[5],
        in_flight: n[6] as usize,
        ticks: n[7],
        stalls: n[8],
        slow_ticks: n[9],
        jobs: n[10] != 0,
    })
}

fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(2))
}

/// Explores `bounds` completely, fails on any safety or bounded-liveness
/// counterexample and on any of `examples` not found, and returns the number
/// of distinct states.
fn explore(name: &str, bounds: Bounds, examples: &[&'static str]) -> usize {
    let started = Instant::now();
    let checker = PairModel::new(Faults::default(), bounds)
        .checker()
        .threads(threads())
        .spawn_bfs()
        .join();
    let states = checker.unique_state_count();
    println!(
        "pair model, {name}: {states} states explored ({} generated), max depth {}, in {:.1?} \
         ({bounds:?})",
        checker.state_count(),
        checker.max_depth(),
        started.elapsed()
    );
    assert!(checker.is_done(), "the exploration must be complete");
    for property in checker.model().properties() {
        match property.expectation {
            Expectation::Always => checker.assert_no_discovery(property.name),
            Expectation::Sometimes if examples.contains(&property.name) => {
                checker.assert_any_discovery(property.name);
            }
            _ => {}
        }
    }
    states
}

#[test]
fn the_protocol_keeps_every_property_over_the_whole_bounded_space() {
    if let Some(bounds) = bounds_from_env() {
        explore("custom bounds", bounds, &[]);
        return;
    }
    let started = Instant::now();
    let a = explore(
        "promotions and crashes",
        PROMOTIONS_AND_CRASHES,
        &[
            FAILOVER,
            OLD_PRIMARY_FENCED,
            UNDONE_PROMOTION_RAISED,
            SECONDARY_APPLIES,
            HEARD_EACH_OTHER,
            HEALED_AND_AGREED,
        ],
    );
    let b = explore(
        "clean stops, duplicates and link flaps",
        STOPS_DUPLICATES_AND_FLAPS,
        &[
            CLEAN_STOP_CLOSE,
            OLD_PRIMARY_FENCED,
            HEARD_EACH_OTHER,
            HEALED_AND_AGREED,
        ],
    );
    println!(
        "pair model: {} states explored in all, in {:.1?}",
        a + b,
        started.elapsed()
    );
    assert!(a >= 100_000 && b >= 100_000, "too few states: {a} and {b}");
}

/// Each fault that job ownership must survive is explored on its own: the
/// three together multiply the space beyond what a test run can afford.
#[test]
fn job_ownership_keeps_every_property_over_the_whole_bounded_space() {
    if bounds_from_env().is_some() {
        // The custom bounds are explored by the test above.
        return;
    }
    let started = Instant::now();
    let taken = [
        JOB_TAKEN_OVER,
        NEW_OWNER_LEASED_AFTER_APPLY,
        PARTITION_EXCEPTION,
        JOBS_HEALED_AFTER_TAKEOVER,
    ];
    let a = explore(
        "job ownership, stalls",
        JOB_STALLS,
        &[&taken[..], &[STALLED_OWNER_WAKES_TO_TAKEN_JOB]].concat(),
    );
    let b = explore("job ownership, slow clocks", JOB_SLOW_CLOCKS, &taken);
    let c = explore("job ownership, crashes", JOB_CRASHES, &taken);
    println!(
        "pair model, job ownership: {} states explored in all, in {:.1?}",
        a + b + c,
        started.elapsed()
    );
    assert!(
        a >= 100_000 && b >= 100_000 && c >= 100_000,
        "too few states: {a}, {b} and {c}"
    );
}

/// Runs a broken variant until `property` is violated, and returns the
/// counterexample's length.
fn counterexample(faults: Faults, bounds: Bounds, property: &'static str) -> usize {
    let started = Instant::now();
    let checker = PairModel::new(faults, bounds)
        .checker()
        .threads(threads())
        .finish_when(HasDiscoveries::AnyOf(BTreeSet::from([property])))
        .spawn_bfs()
        .join();
    let path = checker
        .discovery(property)
        .unwrap_or_else(|| panic!("the broken variant was not caught: {property}"));
    println!(
        "counterexample for \"{property}\" after {} states, {:.1?}:\n{path}",
        checker.unique_state_count(),
        started.elapsed()
    );
    path.into_actions().len()
}

/// Small bounds for the broken variants: each counterexample needs only a
/// few steps, and the search stops at the first one.
const fn small(activations: u8, crashes: u8, writes: u8, in_flight: usize, ticks: u8) -> Bounds {
    Bounds {
        activations,
        crashes,
        shutdowns: 0,
        writes,
        duplicates: 0,
        flaps: 0,
        in_flight,
        ticks,
        stalls: 0,
        slow_ticks: 0,
        jobs: false,
    }
}

/// A promotion whose epoch reaches the disk only later (a write-back cache)
/// writes under an epoch a crash can take back; the next promotion takes the
/// same epoch and a second change gets the same (epoch, version).
#[test]
fn broken_promotion_that_writes_before_persisting_is_caught() {
    let faults = Faults {
        persist_on_tick_only: true,
        ..Faults::default()
    };
    let bounds = small(2, 1, 2, 0, 0);
    counterexample(faults, bounds, WRITE_EPOCH_DURABLE_FIRST);
    counterexample(faults, bounds, EPOCH_NEVER_DECREASES);
    counterexample(faults, bounds, NO_DUPLICATE_STAMP);
}

/// A receiver that takes messages from older epochs applies the old
/// primary's change after an undone promotion.
#[test]
fn broken_receiver_that_accepts_older_epochs_is_caught() {
    let faults = Faults {
        accept_stale_epochs: true,
        ..Faults::default()
    };
    counterexample(faults, small(2, 0, 1, 2, 0), NO_STALE_APPLY);
}

/// A primary that ignores a newer primary stays primary beside it.
#[test]
fn broken_primary_that_is_never_fenced_is_caught() {
    let faults = Faults {
        never_fence: true,
        ..Faults::default()
    };
    counterexample(faults, small(1, 0, 0, 2, 1), NOT_BOTH_PRIMARY_AFTER_HEARING);
}

/// A primary fenced by a secondary's newer epoch (an undone promotion) leaves
/// the pair without a primary after the heal.
#[test]
fn broken_fencing_by_a_secondary_is_caught() {
    let faults = Faults {
        fence_on_any_newer_epoch: true,
        ..Faults::default()
    };
    counterexample(faults, small(2, 0, 0, 2, 1), AGREE_AFTER_HEAL);
}

/// A server that takes its silent peer's jobs as soon as the peer is DEAD,
/// without waiting for the last lease it granted to be over, takes a job
/// whose owner still holds a lease when the owner's clock runs a little
/// slow: the owner starts a step of a job it no longer owns.
#[test]
fn broken_takeover_without_the_lease_wait_is_caught() {
    let faults = Faults {
        takeover_without_lease_wait: true,
        ..Faults::default()
    };
    let bounds = Bounds {
        stalls: 1,
        slow_ticks: 1,
        jobs: true,
        ..small(0, 0, 0, 2, 4)
    };
    counterexample(faults, bounds, STALLED_OWNER_NEVER_STARTS);
}
