//! Unit tests of the node's rules, one or more per rule, with injected
//! times; nothing here sleeps or opens a socket.

use super::*;
use crate::settings::{Faults, Timing};

const A: ServerId = ServerId::from_u128(0xa);
const B: ServerId = ServerId::from_u128(0xb);
const BEAT_MS: u64 = 100;
const DEAD_MS: u64 = 300;
const PULL_MS: u64 = 1_000;

fn settings(id: ServerId) -> PairSettings {
    let name = if id == A { "gw-a" } else { "gw-b" };
    PairSettings::new(id, name, 1, Timing::new(BEAT_MS, DEAD_MS, PULL_MS).unwrap())
}

fn persisted(activation: ActivationKind, term: Epoch, highest_seen: Epoch) -> Persisted {
    Persisted {
        highest_seen,
        activation,
        term,
        fenced_by: None,
        config: ConfigStamp::EMPTY,
        takeovers: 0,
        takeovers_applied: 0,
    }
}

/// A primary at `term`, link up, with its start-up outputs drained.
fn primary(id: ServerId, term: Epoch) -> PairNode {
    let mut n = PairNode::new(
        settings(id),
        persisted(ActivationKind::Primary, term, term),
        0,
    );
    n.step(0, Input::LinkUp);
    n
}

/// A secondary that has seen `seen`, link up.
fn secondary(id: ServerId, seen: Epoch) -> PairNode {
    let mut n = PairNode::new(
        settings(id),
        persisted(ActivationKind::Secondary, Epoch::ZERO, seen),
        0,
    );
    n.step(0, Input::LinkUp);
    n
}

fn msg(from: ServerId, epoch: Epoch, role: Role, body: Body) -> Message {
    Message {
        from,
        epoch,
        role,
        body,
    }
}

fn heartbeat(from: ServerId, epoch: Epoch, role: Role) -> Message {
    msg(
        from,
        epoch,
        role,
        Body::Heartbeat {
            config: ConfigStamp::EMPTY,
            lease: Default::default(),
        },
    )
}

fn sent(out: &[Output]) -> Vec<&Message> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send(m) => Some(m),
            _ => None,
        })
        .collect()
}

fn events(out: &[Output]) -> Vec<&Event> {
    out.iter()
        .filter_map(|o| match o {
            Output::Notify(e) => Some(e),
            _ => None,
        })
        .collect()
}

fn last_persist(out: &[Output]) -> Option<&Persisted> {
    out.iter().rev().find_map(|o| match o {
        Output::Persist(p) => Some(p),
        _ => None,
    })
}

/// Delivers every message `from` sent to `to`, returning `to`'s outputs.
fn deliver(to: &mut PairNode, now_ms: u64, from_out: &[Output]) -> Vec<Output> {
    let mut out = Vec::new();
    for m in sent(from_out) {
        out.extend(to.step(now_ms, Input::Received(m.clone())));
    }
    out
}

// --- Heartbeats and liveness (R9, seed 001) ---

#[test]
fn heartbeats_go_out_every_interval_and_not_before() {
    let mut n = PairNode::new(settings(A), Persisted::default(), 0);
    assert!(
        sent(&n.step(0, Input::Tick)).is_empty(),
        "link down: silent"
    );
    let out = n.step(1_000, Input::LinkUp);
    assert!(matches!(
        sent(&out)[..],
        [Message {
            body: Body::Hello(_),
            ..
        }]
    ));
    assert_eq!(n.next_timer_ms(), Some(1_100));
    assert!(sent(&n.step(1_099, Input::Tick)).is_empty());
    let out = n.step(1_100, Input::Tick);
    assert!(matches!(
        sent(&out)[..],
        [Message {
            body: Body::Heartbeat { .. },
            ..
        }]
    ));
    assert!(sent(&n.step(1_150, Input::Tick)).is_empty());
    assert_eq!(sent(&n.step(1_200, Input::Tick)).len(), 1);
    n.step(1_210, Input::LinkDown);
    assert!(sent(&n.step(1_400, Input::Tick)).is_empty());
}

#[test]
fn peer_turns_dead_after_the_threshold_once_live_and_live_again() {
    let mut n = secondary(B, Epoch::new(1, A));
    let p = Role::Primary {
        term: Epoch::new(1, A),
    };
    let out = n.step(1_000, Input::Received(heartbeat(A, Epoch::new(1, A), p)));
    assert_eq!(
        events(&out),
        vec![&Event::PeerLive {
            peer: A,
            since_ms: 1_000
        }]
    );
    n.step(1_000, Input::Tick);
    // The next heartbeat is due before the peer could turn DEAD.
    assert_eq!(n.next_timer_ms(), Some(1_100));
    assert!(events(&n.step(1_299, Input::Tick)).is_empty());
    let out = n.step(1_300, Input::Tick);
    assert_eq!(
        events(&out),
        vec![&Event::PeerDead {
            last_heard_ms: 1_000,
            since_ms: 1_300
        }]
    );
    assert_eq!(n.liveness(), Liveness::Dead);
    assert!(
        matches!(out.last(), Some(Output::PublishRole(v)) if v.peer_liveness == Liveness::Dead)
    );
    assert!(events(&n.step(5_000, Input::Tick)).is_empty(), "DEAD once");
    let out = n.step(5_010, Input::Received(heartbeat(A, Epoch::new(1, A), p)));
    assert!(matches!(events(&out)[..], [Event::PeerLive { .. }]));
}

#[test]
fn a_clean_stop_gives_close_and_never_dead() {
    let mut a = primary(A, Epoch::new(1, A));
    let mut b = secondary(B, Epoch::new(1, A));
    let hb = a.step(100, Input::Tick);
    deliver(&mut b, 100, &hb);
    let bye = a.step(150, Input::Shutdown);
    assert!(a.is_stopped());
    let out = deliver(&mut b, 150, &bye);
    assert_eq!(events(&out), vec![&Event::PeerClose { since_ms: 150 }]);
    // A heartbeat that was on its way before the goodbye does not revive it.
    let out = deliver(&mut b, 160, &hb);
    assert!(events(&out).is_empty());
    for t in (200..=10_000).step_by(100) {
        assert!(events(&b.step(t, Input::Tick)).is_empty(), "at {t}");
    }
    assert_eq!(b.liveness(), Liveness::Close);
    // The stopped node does nothing more.
    assert!(a.step(200, Input::Tick).is_empty());
    // A restart: the new process's Hello makes it LIVE and watched again.
    let mut a2 = PairNode::new(settings(A), a.persisted().clone(), 20_000);
    let hello = a2.step(20_000, Input::LinkUp);
    assert!(matches!(
        events(&deliver(&mut b, 20_000, &hello))[..],
        [Event::PeerLive { .. }]
    ));
    b.step(20_100, Input::Tick);
    b.step(20_200, Input::Tick);
    assert!(matches!(
        events(&b.step(20_300, Input::Tick))[..],
        [Event::PeerDead { .. }]
    ));
}

#[test]
fn a_peer_of_another_major_version_is_refused_until_it_matches() {
    let mut b = secondary(B, Epoch::ZERO);
    let hello = |major| {
        msg(
            A,
            Epoch::ZERO,
            Role::Inactive,
            Body::Hello(Hello {
                instance: "gw-a".into(),
                software_major: major,
                config: ConfigStamp::EMPTY,
                takeovers_seen: 0,
            }),
        )
    };
    let out = b.step(10, Input::Received(hello(2)));
    assert!(matches!(
        events(&out)[..],
        [Event::PeerRefused(PeerRefusal::VersionMismatch {
            ours: 1,
            theirs: 2,
            ..
        })]
    ));
    assert_eq!(b.liveness(), Liveness::Unknown);
    let out = b.step(
        20,
        Input::Received(heartbeat(A, Epoch::ZERO, Role::Inactive)),
    );
    assert!(
        events(&out).is_empty(),
        "ignored, and the refusal said once"
    );
    let out = b.step(30, Input::Received(hello(1)));
    assert!(matches!(events(&out)[..], [Event::PeerLive { .. }]));
}

#[test]
fn only_the_pinned_peer_is_heard() {
    let mut b = PairNode::new(
        settings(B).with_peer(A).unwrap(),
        persisted(ActivationKind::Secondary, Epoch::ZERO, Epoch::ZERO),
        0,
    );
    let c = ServerId::from_u128(0xc);
    let out = b.step(
        1,
        Input::Received(heartbeat(c, Epoch::ZERO, Role::Inactive)),
    );
    assert!(matches!(
        events(&out)[..],
        [Event::PeerRefused(PeerRefusal::UnknownServer { .. })]
    ));
    let out = b.step(
        1,
        Input::Received(heartbeat(B, Epoch::ZERO, Role::Inactive)),
    );
    assert!(matches!(
        events(&out)[..],
        [Event::PeerRefused(PeerRefusal::OwnId(_))]
    ));
    assert_eq!(b.liveness(), Liveness::Unknown);
}

// --- Activation, epochs and writes (R5, R6) ---

#[test]
fn promotion_persists_its_new_epoch_before_anything_else() {
    let mut b = secondary(B, Epoch::new(4, A));
    let out = b.step(10, Input::Activate(ActivationKind::Primary));
    let term = Epoch::new(5, B);
    // The first output is the durable epoch; the announcement comes after.
    match &out[0] {
        Output::Persist(p) => {
            assert_eq!(p.highest_seen, term);
            assert_eq!(p.term, term);
            assert_eq!(p.activation, ActivationKind::Primary);
        }
        other => panic!("expected Persist first, got {other:?}"),
    }
    let announced = sent(&out);
    assert_eq!(announced[0].epoch, term);
    assert_eq!(announced[0].role, Role::Primary { term });
    assert!(matches!(out.last(), Some(Output::PublishRole(v)) if v.may_write_config));
}

#[test]
fn a_write_is_stamped_with_the_persisted_epoch_and_the_next_version() {
    let mut b = secondary(B, Epoch::new(4, A));
    let mut durable = b.persisted().clone();
    let mut stamps = Vec::new();
    let mut outs = b.step(10, Input::Activate(ActivationKind::Primary));
    outs.extend(b.step(11, Input::LocalConfigWrite { payload: vec![1] }));
    outs.extend(b.step(12, Input::LocalConfigWrite { payload: vec![2] }));
    // Play the outputs as a driver would: every write must find its epoch
    // and its own stamp already durable.
    for o in &outs {
        match o {
            Output::Persist(p) => durable = p.clone(),
            Output::CommitWrite { permit, .. } => {
                assert_eq!(durable.term, permit.stamp().epoch);
                assert!(durable.highest_seen >= permit.stamp().epoch);
                assert_eq!(durable.config, permit.stamp());
                stamps.push(permit.stamp());
            }
            _ => {}
        }
    }
    let term = Epoch::new(5, B);
    assert_eq!(
        stamps,
        vec![
            ConfigStamp {
                version: 1,
                epoch: term
            },
            ConfigStamp {
                version: 2,
                epoch: term
            }
        ]
    );
    // The change is pushed with the line it continues.
    let pushed: Vec<_> = sent(&outs)
        .into_iter()
        .filter_map(|m| match &m.body {
            Body::ConfigChange(c) => Some((c.prev.version, c.stamp.version)),
            _ => None,
        })
        .collect();
    assert_eq!(pushed, vec![(0, 1), (1, 2)]);
}

#[test]
fn writes_are_refused_on_secondary_fenced_and_inactive_servers() {
    let mut b = secondary(B, Epoch::new(1, A));
    let out = b.step(1, Input::LocalConfigWrite { payload: vec![] });
    assert_eq!(
        out,
        vec![Output::RefuseWrite(WriteRefused::ReadOnlySecondary)]
    );
    let mut n = PairNode::new(settings(B), Persisted::default(), 0);
    assert!(matches!(
        n.step(1, Input::LocalConfigWrite { payload: vec![] })[0],
        Output::RefuseWrite(WriteRefused::NotActivated)
    ));
    let mut a = primary(A, Epoch::new(1, A));
    a.step(
        5,
        Input::Received(heartbeat(
            B,
            Epoch::new(2, B),
            Role::Primary {
                term: Epoch::new(2, B),
            },
        )),
    );
    let out = a.step(6, Input::LocalConfigWrite { payload: vec![] });
    assert_eq!(
        out,
        vec![Output::RefuseWrite(WriteRefused::Fenced {
            by: Epoch::new(2, B)
        })]
    );
}

#[test]
fn a_primary_meeting_a_newer_primary_is_fenced_and_stays_fenced_across_restart() {
    let old = Epoch::new(1, A);
    let new = Epoch::new(2, B);
    let mut a = primary(A, old);
    let out = a.step(
        10,
        Input::Received(heartbeat(B, new, Role::Primary { term: new })),
    );
    assert!(events(&out).contains(&&Event::Fenced { by: new }));
    let p = last_persist(&out).expect("the fence is persisted");
    assert_eq!(p.fenced_by, Some(new));
    assert_eq!(p.highest_seen, new);
    assert_eq!(a.role(), Role::Fenced { term: old, by: new });
    // Its own messages now say so, and carry the newer epoch.
    let hb = a.step(200, Input::Tick);
    assert_eq!(sent(&hb)[0].role, Role::Fenced { term: old, by: new });
    assert_eq!(sent(&hb)[0].epoch, new);
    // A restart restores the fence.
    let mut a2 = PairNode::new(settings(A), a.persisted().clone(), 1_000);
    assert_eq!(a2.role(), Role::Fenced { term: old, by: new });
    assert!(matches!(
        a2.step(1_001, Input::LocalConfigWrite { payload: vec![] })[0],
        Output::RefuseWrite(WriteRefused::Fenced { .. })
    ));
    // Only a new activation ends it: as secondary here.
    a2.step(1_002, Input::Activate(ActivationKind::Secondary));
    assert_eq!(a2.role(), Role::Secondary);
}

#[test]
fn the_newer_primary_is_not_fenced_by_the_older_one() {
    let old = Epoch::new(1, A);
    let new = Epoch::new(2, B);
    let mut b = primary(B, new);
    let out = b.step(
        10,
        Input::Received(heartbeat(A, old, Role::Primary { term: old })),
    );
    assert_eq!(
        events(&out),
        vec![
            &Event::PeerLive {
                peer: A,
                since_ms: 10
            },
            &Event::StaleRefused {
                epoch: old,
                highest_seen: new
            }
        ]
    );
    assert_eq!(b.role(), Role::Primary { term: new });
    assert!(last_persist(&out).is_none());
}

#[test]
fn two_primaries_of_the_same_number_end_with_one() {
    // Both promoted having seen epoch 1: the server id breaks the tie.
    let seen = Epoch::new(1, ServerId::from_u128(0xc));
    let mut a = primary(A, seen.next_for(A));
    let mut b = primary(B, seen.next_for(B));
    let from_a = a.step(100, Input::Tick);
    let from_b = b.step(100, Input::Tick);
    deliver(&mut a, 101, &from_b);
    deliver(&mut b, 101, &from_a);
    assert!(!a.role().is_primary());
    assert_eq!(
        b.role(),
        Role::Primary {
            term: seen.next_for(B)
        }
    );
}

#[test]
fn an_undone_promotion_raises_the_primary_above_it_instead_of_fencing() {
    // B was promoted to (2, B) during a partition and demoted again before
    // the two met; A is still primary at (1, A).
    let mut a = primary(A, Epoch::new(1, A));
    let out = a.step(
        10,
        Input::Received(heartbeat(B, Epoch::new(2, B), Role::Secondary)),
    );
    let to = Epoch::new(3, A);
    assert_eq!(a.role(), Role::Primary { term: to });
    assert!(events(&out).contains(&&Event::EpochRaised {
        from: Epoch::new(1, A),
        seen: Epoch::new(2, B),
        to
    }));
    assert_eq!(last_persist(&out).unwrap().term, to);
    // And it goes on writing, under the new epoch.
    let out = a.step(11, Input::LocalConfigWrite { payload: vec![7] });
    assert!(matches!(&out[1], Output::CommitWrite { permit, .. } if permit.stamp().epoch == to));
}

#[test]
fn the_undone_promotion_rule_also_holds_for_a_fenced_peer() {
    // A fenced ex-primary that has seen a newer epoch does not fence anyone.
    let mut a = primary(A, Epoch::new(3, A));
    let seen = Epoch::new(4, ServerId::from_u128(0xc));
    a.step(
        10,
        Input::Received(heartbeat(
            B,
            seen,
            Role::Fenced {
                term: Epoch::new(2, B),
                by: seen,
            },
        )),
    );
    assert_eq!(
        a.role(),
        Role::Primary {
            term: Epoch::new(5, A)
        }
    );
}

#[test]
fn messages_from_an_older_epoch_are_refused() {
    // B saw (2, B) in an undone promotion; A's change from (1, A) is stale.
    let mut b = secondary(B, Epoch::new(2, B));
    let change = msg(
        A,
        Epoch::new(1, A),
        Role::Primary {
            term: Epoch::new(1, A),
        },
        Body::ConfigChange(ConfigChange {
            stamp: ConfigStamp {
                version: 1,
                epoch: Epoch::new(1, A),
            },
            prev: ConfigStamp::EMPTY,
            payload: vec![1],
        }),
    );
    let out = b.step(10, Input::Received(change.clone()));
    assert!(events(&out).contains(&&Event::StaleRefused {
        epoch: Epoch::new(1, A),
        highest_seen: Epoch::new(2, B)
    }));
    assert!(!out.iter().any(|o| matches!(o, Output::ApplyConfig { .. })));
    assert_eq!(b.persisted().config, ConfigStamp::EMPTY);
    // The stale sender still counts as alive.
    assert_eq!(b.liveness(), Liveness::Live);
    // The deliberately broken receiver takes it.
    let mut broken = PairNode::new(
        settings(B).with_faults(Faults {
            accept_stale_epochs: true,
            ..Faults::default()
        }),
        persisted(ActivationKind::Secondary, Epoch::ZERO, Epoch::new(2, B)),
        0,
    );
    let out = broken.step(10, Input::Received(change));
    assert!(out.iter().any(|o| matches!(o, Output::ApplyConfig { .. })));
}

#[test]
fn highest_seen_epoch_survives_restart_and_a_later_promotion_goes_above_it() {
    let mut b = secondary(B, Epoch::new(1, A));
    let out = b.step(
        10,
        Input::Received(heartbeat(
            A,
            Epoch::new(6, A),
            Role::Primary {
                term: Epoch::new(6, A),
            },
        )),
    );
    let durable = last_persist(&out)
        .expect("a raised epoch is persisted")
        .clone();
    assert_eq!(durable.highest_seen, Epoch::new(6, A));
    let mut b2 = PairNode::new(settings(B), durable, 100);
    b2.step(101, Input::Activate(ActivationKind::Primary));
    assert_eq!(
        b2.role(),
        Role::Primary {
            term: Epoch::new(7, B)
        }
    );
}

#[test]
fn the_write_back_fault_hands_out_the_epoch_only_on_the_next_tick() {
    let mut b = PairNode::new(
        settings(B).with_faults(Faults {
            persist_on_tick_only: true,
            ..Faults::default()
        }),
        persisted(ActivationKind::Secondary, Epoch::ZERO, Epoch::new(1, A)),
        0,
    );
    let mut out = b.step(1, Input::Activate(ActivationKind::Primary));
    out.extend(b.step(2, Input::LocalConfigWrite { payload: vec![1] }));
    assert!(last_persist(&out).is_none(), "the fault is active");
    assert!(out.iter().any(|o| matches!(o, Output::CommitWrite { .. })));
    let out = b.step(3, Input::Tick);
    assert_eq!(last_persist(&out).unwrap().term, Epoch::new(2, B));
}

// --- Configuration replication (R7) ---

fn stamp(version: u64, epoch: Epoch) -> ConfigStamp {
    ConfigStamp { version, epoch }
}

#[test]
fn the_secondary_applies_the_next_change_and_acks_it() {
    let e1 = Epoch::new(1, A);
    let mut a = primary(A, e1);
    let mut b = secondary(B, e1);
    let w = a.step(10, Input::LocalConfigWrite { payload: vec![1] });
    let out = deliver(&mut b, 11, &w);
    assert!(out.contains(&Output::ApplyConfig {
        stamp: stamp(1, e1),
        by: e1,
        kind: ApplyKind::Change,
        payload: vec![1]
    }));
    // The Persist of the new stamp comes before the apply.
    let persist_at = out.iter().position(|o| matches!(o, Output::Persist(_)));
    let apply_at = out
        .iter()
        .position(|o| matches!(o, Output::ApplyConfig { .. }));
    assert!(persist_at < apply_at);
    assert_eq!(b.persisted().config, stamp(1, e1));
    deliver(&mut a, 12, &out);
    assert_eq!(a.peer().unwrap().config, Some(stamp(1, e1)));
    // A duplicate is ignored.
    assert!(
        deliver(&mut b, 13, &w)
            .iter()
            .all(|o| !matches!(o, Output::ApplyConfig { .. }))
    );
}

#[test]
fn a_gap_asks_for_a_snapshot_and_the_snapshot_heals_it() {
    let e1 = Epoch::new(1, A);
    let mut a = primary(A, e1);
    let mut b = secondary(B, e1);
    let _lost = a.step(10, Input::LocalConfigWrite { payload: vec![1] });
    let second = a.step(20, Input::LocalConfigWrite { payload: vec![2] });
    let out = deliver(&mut b, 21, &second);
    assert!(!out.iter().any(|o| matches!(o, Output::ApplyConfig { .. })));
    assert!(
        !events(&out)
            .iter()
            .any(|e| matches!(e, Event::ConfigDiverged { .. })),
        "a plain gap is no divergence"
    );
    let asked = sent(&out);
    assert!(
        matches!(asked[..], [Message { body: Body::SnapshotRequest { have }, .. }] if *have == ConfigStamp::EMPTY)
    );
    let out = deliver(&mut a, 22, &out);
    assert!(out.contains(&Output::ServeSnapshot {
        stamp: stamp(2, e1)
    }));
    let snap = a.step(
        23,
        Input::SnapshotReady {
            stamp: stamp(2, e1),
            payload: vec![1, 2],
        },
    );
    let out = deliver(&mut b, 24, &snap);
    assert!(out.contains(&Output::ApplyConfig {
        stamp: stamp(2, e1),
        by: e1,
        kind: ApplyKind::Snapshot,
        payload: vec![1, 2]
    }));
    // An old snapshot overtaken by newer configuration is ignored.
    let stale_snap = msg(
        A,
        e1,
        Role::Primary { term: e1 },
        Body::ConfigSnapshot {
            stamp: stamp(1, e1),
            payload: vec![1],
        },
    );
    let out = b.step(25, Input::Received(stale_snap));
    assert!(!out.iter().any(|o| matches!(o, Output::ApplyConfig { .. })));
}

#[test]
fn a_heartbeat_showing_newer_configuration_triggers_a_pull_once_per_period() {
    let e1 = Epoch::new(1, A);
    let mut b = secondary(B, e1);
    let hb = |config| {
        msg(
            A,
            e1,
            Role::Primary { term: e1 },
            Body::Heartbeat {
                config,
                lease: Default::default(),
            },
        )
    };
    let pulls = |out: &[Output]| {
        sent(out)
            .iter()
            .filter(|m| matches!(m.body, Body::SnapshotRequest { .. }))
            .count()
    };
    assert_eq!(pulls(&b.step(100, Input::Received(hb(stamp(3, e1))))), 1);
    assert_eq!(pulls(&b.step(200, Input::Received(hb(stamp(3, e1))))), 0);
    assert_eq!(pulls(&b.step(1_100, Input::Received(hb(stamp(3, e1))))), 1);
    // Up to date: no pull.
    let mut c = secondary(B, e1);
    assert_eq!(
        pulls(&c.step(100, Input::Received(hb(ConfigStamp::EMPTY)))),
        0
    );
}

#[test]
fn changes_from_a_replaced_primary_line_are_reported_before_the_snapshot() {
    // B was promoted to (2, B), wrote version 1, and was demoted; the
    // primary A, now at (3, A), pushes its own version 1 and 2.
    let e3 = Epoch::new(3, A);
    let mut b = PairNode::new(
        settings(B),
        Persisted {
            config: stamp(1, Epoch::new(2, B)),
            ..persisted(ActivationKind::Secondary, Epoch::ZERO, Epoch::new(2, B))
        },
        0,
    );
    b.step(0, Input::LinkUp);
    let change = msg(
        A,
        e3,
        Role::Primary { term: e3 },
        Body::ConfigChange(ConfigChange {
            stamp: stamp(2, e3),
            prev: stamp(1, e3),
            payload: vec![2],
        }),
    );
    let out = b.step(10, Input::Received(change));
    assert!(events(&out).contains(&&Event::ConfigDiverged {
        local: stamp(1, Epoch::new(2, B)),
        primary: stamp(2, e3)
    }));
    assert!(matches!(
        sent(&out)[..],
        [Message {
            body: Body::SnapshotRequest { .. },
            ..
        }]
    ));
}

#[test]
fn only_a_secondary_takes_configuration_and_only_from_a_primary() {
    let e1 = Epoch::new(1, A);
    let change = |role| {
        msg(
            A,
            e1,
            role,
            Body::ConfigChange(ConfigChange {
                stamp: stamp(1, e1),
                prev: ConfigStamp::EMPTY,
                payload: vec![1],
            }),
        )
    };
    let applied = |out: &[Output]| out.iter().any(|o| matches!(o, Output::ApplyConfig { .. }));
    let mut b = secondary(B, e1);
    assert!(!applied(
        &b.step(1, Input::Received(change(Role::Secondary)))
    ));
    let mut fenced = primary(B, Epoch::ZERO.next_for(B));
    fenced.step(
        1,
        Input::Received(heartbeat(
            A,
            Epoch::new(2, A),
            Role::Primary {
                term: Epoch::new(2, A),
            },
        )),
    );
    assert!(matches!(fenced.role(), Role::Fenced { .. }));
    let e2 = Epoch::new(2, A);
    let from_new_primary = msg(
        A,
        e2,
        Role::Primary { term: e2 },
        Body::ConfigChange(ConfigChange {
            stamp: stamp(1, e2),
            prev: ConfigStamp::EMPTY,
            payload: vec![1],
        }),
    );
    assert!(
        !applied(&fenced.step(2, Input::Received(from_new_primary))),
        "a fenced server keeps its configuration until reactivated"
    );
}

// --- Sync admission wired into the node (R7) ---

#[test]
fn a_sync_block_stops_replication_but_not_heartbeats_and_resumes_by_itself() {
    let e1 = Epoch::new(1, A);
    let mut a = primary(A, e1);
    let mut b = secondary(B, e1);
    let block = SyncBlock::TimeZoneDiffers {
        primary: "gw-a".into(),
        primary_zone: "Europe/Berlin".into(),
        secondary: "gw-b".into(),
        secondary_zone: "America/New_York".into(),
    };
    let out = b.step(1, Input::SyncChecked(Err(block.clone())));
    assert_eq!(events(&out), vec![&Event::SyncBlocked(block.clone())]);
    assert!(matches!(out.last(), Some(Output::PublishRole(v)) if v.sync_blocked.is_some()));
    assert!(events(&b.step(2, Input::SyncChecked(Err(block.clone())))).is_empty());
    a.step(3, Input::SyncChecked(Err(block)));
    let w = a.step(10, Input::LocalConfigWrite { payload: vec![1] });
    assert!(sent(&w).is_empty(), "no push while blocked");
    // Heartbeats go on.
    let hb = a.step(100, Input::Tick);
    let out = deliver(&mut b, 100, &hb);
    assert!(sent(&out).is_empty(), "no pull while blocked");
    assert!(sent(&b.step(100, Input::Tick)).len() == 1);
    // The zone is fixed: both resume, and the next heartbeat pulls.
    a.step(150, Input::SyncChecked(Ok(())));
    assert_eq!(
        events(&b.step(150, Input::SyncChecked(Ok(())))),
        vec![&Event::SyncResumed]
    );
    let hb = a.step(200, Input::Tick);
    let out = deliver(&mut b, 200, &hb);
    assert!(matches!(
        sent(&out)[..],
        [Message {
            body: Body::SnapshotRequest { .. },
            ..
        }]
    ));
}

/// The secondary may pass its clock check before the primary has: its pull
/// meets a primary still blocked, which answers the moment its own check
/// passes rather than leaving the secondary to wait a replication period.
#[test]
fn a_pull_that_meets_a_blocked_primary_is_answered_when_the_block_lifts() {
    let e1 = Epoch::new(1, A);
    let mut a = primary(A, e1);
    let mut b = secondary(B, e1);
    let not_yet = SyncBlock::NotChecked {
        peer: "gw-b".into(),
    };
    a.step(1, Input::SyncChecked(Err(not_yet)));
    a.step(2, Input::LocalConfigWrite { payload: vec![1] });
    let hb = a.step(100, Input::Tick);
    let pull = deliver(&mut b, 100, &hb);
    assert!(matches!(
        sent(&pull)[..],
        [Message {
            body: Body::SnapshotRequest { .. },
            ..
        }]
    ));
    let out = deliver(&mut a, 101, &pull);
    assert!(
        !out.iter()
            .any(|o| matches!(o, Output::ServeSnapshot { .. })),
        "no snapshot while blocked"
    );
    let out = a.step(102, Input::SyncChecked(Ok(())));
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::ServeSnapshot { stamp } if stamp.version == 1)),
        "{out:?}"
    );
    // Answered once.
    a.step(
        103,
        Input::SyncChecked(Err(SyncBlock::NotChecked {
            peer: "gw-b".into(),
        })),
    );
    let out = a.step(104, Input::SyncChecked(Ok(())));
    assert!(
        !out.iter()
            .any(|o| matches!(o, Output::ServeSnapshot { .. }))
    );
}

// --- Job ownership: leases, permits, takeovers ---

const E1: Epoch = Epoch::new(1, A);

fn pinned_settings(id: ServerId) -> PairSettings {
    settings(id).with_peer(if id == A { B } else { A }).unwrap()
}

/// A's durable state: primary at `E1`.
fn a_state() -> Persisted {
    persisted(ActivationKind::Primary, E1, E1)
}

/// B's durable state: secondary that has seen `E1`.
fn b_state() -> Persisted {
    persisted(ActivationKind::Secondary, Epoch::ZERO, E1)
}

/// A node that pins its peer, started at `now_ms` with the link up, and
/// what it sent (its Hello).
fn start(id: ServerId, state: Persisted, now_ms: u64) -> (PairNode, Vec<Output>) {
    let mut n = PairNode::new(pinned_settings(id), state, now_ms);
    let out = n.step(now_ms, Input::LinkUp);
    (n, out)
}

/// A and B started at 0, each having read the other's Hello: both LIVE,
/// no lease yet.
fn met() -> (PairNode, PairNode) {
    let (mut a, hello_a) = start(A, a_state(), 0);
    let (mut b, hello_b) = start(B, b_state(), 0);
    deliver(&mut a, 0, &hello_b);
    deliver(&mut b, 0, &hello_a);
    (a, b)
}

/// The lease news of every heartbeat sent.
fn lease_news(out: &[Output]) -> Vec<LeaseNews> {
    sent(out)
        .iter()
        .filter_map(|m| match &m.body {
            Body::Heartbeat { lease, .. } => Some(*lease),
            _ => None,
        })
        .collect()
}

fn grants(out: &[Output]) -> Vec<u64> {
    lease_news(out).iter().filter_map(|l| l.grant_ms).collect()
}

/// The counts of the takeovers asked for.
fn takeovers(out: &[Output]) -> Vec<u64> {
    out.iter()
        .filter_map(|o| match o {
            Output::TakeOver { count, .. } => Some(*count),
            _ => None,
        })
        .collect()
}

fn announced(out: &[Output]) -> Vec<u64> {
    out.iter()
        .filter_map(|o| match o {
            Output::AnnounceTakeovers { count } => Some(*count),
            _ => None,
        })
        .collect()
}

/// Ticks `n` at every heartbeat interval from `from_ms` to `to_ms`
/// (inclusive), with nothing received, returning the times of takeovers.
fn tick_alone(n: &mut PairNode, from_ms: u64, to_ms: u64) -> Vec<u64> {
    (from_ms..=to_ms)
        .step_by(BEAT_MS as usize)
        .filter(|&t| !takeovers(&n.step(t, Input::Tick)).is_empty())
        .collect()
}

#[test]
fn the_lease_timing_in_these_tests() {
    // Every number below follows from these: a lease of the DEAD threshold,
    // a margin of a tenth of it, first contact after twice the threshold.
    let t = Timing::new(BEAT_MS, DEAD_MS, PULL_MS).unwrap();
    assert_eq!(
        (t.lease_ms(), t.lease_margin_ms(), t.first_contact_ms()),
        (300, 30, 600)
    );
}

#[test]
fn a_lease_is_granted_only_by_echoing_the_holders_ask_and_runs_from_the_ask() {
    let (mut a, mut b) = met();
    assert_eq!(a.permit(), Permit::Wait, "LIVE peer, no lease yet");
    // B's first beat carries no grant: A has asked for nothing yet.
    let from_b = b.step(100, Input::Tick);
    assert_eq!(grants(&from_b), Vec::<u64>::new());
    deliver(&mut a, 100, &from_b);
    assert_eq!(a.permit(), Permit::Wait);
    let from_a = a.step(100, Input::Tick);
    assert_eq!(
        lease_news(&from_a),
        vec![LeaseNews {
            ask_ms: Some(100),
            grant_ms: Some(100),
            takeovers_seen: 0
        }],
        "A asks with its own clock and grants B's ask"
    );
    // B reads the ask late and grants on its next beat: the grant echoes
    // the ask, not when the ask arrived or when the grant leaves.
    deliver(&mut b, 170, &from_a);
    assert_eq!(b.permit(), Permit::Leased { until_ms: 400 });
    let from_b = b.step(200, Input::Tick);
    assert_eq!(grants(&from_b), vec![100]);
    // A's lease runs from its ask, though the grant came at 260.
    deliver(&mut a, 260, &from_b);
    assert_eq!(a.permit(), Permit::Leased { until_ms: 400 });
    assert!(a.permit().allows(399));
    assert!(!a.permit().allows(400));
    // An ask is granted once: with no new ask read, B's next beat grants
    // nothing.
    assert_eq!(grants(&b.step(300, Input::Tick)), Vec::<u64>::new());
    // Once the lease is over, A waits for the next one.
    a.step(400, Input::Tick);
    assert_eq!(a.permit(), Permit::Wait);
}

#[test]
fn a_grant_from_the_future_is_ignored() {
    let (mut a, _b) = met();
    let grant = |grant_ms| {
        msg(
            B,
            E1,
            Role::Secondary,
            Body::Heartbeat {
                config: ConfigStamp::EMPTY,
                lease: LeaseNews {
                    ask_ms: None,
                    grant_ms: Some(grant_ms),
                    takeovers_seen: 0,
                },
            },
        )
    };
    a.step(100, Input::Tick);
    // A never asked at 5 000: that is no grant of one of its asks.
    a.step(150, Input::Received(grant(5_000)));
    assert_eq!(a.permit(), Permit::Wait);
    a.step(5_000, Input::Tick);
    assert!(
        !matches!(a.permit(), Permit::Leased { .. }),
        "not even once the clock reaches it"
    );
    // A real echo of its ask at 5 000 does grant.
    a.step(5_010, Input::Received(grant(5_000)));
    assert_eq!(a.permit(), Permit::Leased { until_ms: 5_300 });
}

#[test]
fn no_lease_for_a_peer_that_has_not_applied_every_takeover_and_leases_resume_after_it() {
    // B took A's jobs once before; A has not applied it.
    let (mut a, hello_a) = start(A, a_state(), 0);
    let (mut b, hello_b) = start(
        B,
        Persisted {
            takeovers: 1,
            ..b_state()
        },
        0,
    );
    deliver(&mut a, 0, &hello_b);
    let mut announced_at = Vec::new();
    if !announced(&deliver(&mut b, 0, &hello_a)).is_empty() {
        announced_at.push(0);
    }
    for t in (100..=900).step_by(100) {
        let from_a = a.step(t, Input::Tick);
        let from_b = b.step(t, Input::Tick);
        assert!(grants(&from_b).is_empty(), "no grant at {t}");
        assert!(takeovers(&from_b).is_empty(), "A is LIVE: no takeover");
        deliver(&mut a, t, &from_b);
        let out = deliver(&mut b, t, &from_a);
        assert!(announced(&out).iter().all(|&c| c == 1));
        if !announced(&out).is_empty() {
            announced_at.push(t);
        }
        assert_eq!(a.permit(), Permit::Wait, "at {t}");
    }
    // Announced on the Hello, then at most once per DEAD threshold.
    assert_eq!(announced_at, vec![0, 300, 600, 900]);
    // The gate is one way: A owes B nothing and grants B's asks.
    assert!(matches!(b.permit(), Permit::Leased { .. }));
    // A's driver marked the jobs as B's: A says so at once, durably first.
    let out = a.step(950, Input::TakeoversApplied { count: 1 });
    let persist_at = out
        .iter()
        .position(|o| matches!(o, Output::Persist(p) if p.takeovers_applied == 1));
    let send_at = out.iter().position(|o| matches!(o, Output::Send(_)));
    assert!(persist_at.is_some() && persist_at < send_at, "{out:?}");
    assert_eq!(
        lease_news(&out),
        vec![LeaseNews {
            ask_ms: Some(950),
            grant_ms: Some(900),
            takeovers_seen: 1
        }]
    );
    // The same count again changes nothing.
    assert!(a.step(960, Input::TakeoversApplied { count: 1 }).is_empty());
    let out = deliver(&mut b, 950, &out);
    assert!(announced(&out).is_empty());
    let from_b = b.step(1_000, Input::Tick);
    assert_eq!(grants(&from_b), vec![950]);
    deliver(&mut a, 1_000, &from_b);
    assert_eq!(a.permit(), Permit::Leased { until_ms: 1_250 });
    // A restarted A says what it applied in its Hello: nothing to announce.
    let (_, hello) = start(A, a.persisted().clone(), 2_000);
    assert!(announced(&deliver(&mut b, 2_000, &hello)).is_empty());
}

#[test]
fn a_takeover_waits_for_dead_and_the_last_grant_plus_lease_and_margin_once_per_silence() {
    let (mut a, mut b) = met();
    // A asks at 100; B grants at 200: B's last grant. Then A falls silent
    // (last heard at 100).
    let from_a = a.step(100, Input::Tick);
    deliver(&mut b, 100, &from_a);
    assert_eq!(grants(&b.step(200, Input::Tick)), vec![100]);
    assert!(takeovers(&b.step(300, Input::Tick)).is_empty());
    // DEAD at 100 + 300, but the lease granted at 200 may run until
    // 200 + 300 + 30 on a slower clock.
    let out = b.step(400, Input::Tick);
    assert!(matches!(events(&out)[..], [Event::PeerDead { .. }]));
    assert!(takeovers(&out).is_empty(), "DEAD alone is not enough");
    assert_eq!(b.permit(), Permit::Alone { since_ms: 400 });
    assert_eq!(b.next_timer_ms(), Some(500));
    assert!(takeovers(&b.step(529, Input::Tick)).is_empty());
    let out = b.step(530, Input::Tick);
    // The count is durable before the jobs move.
    let persist_at = out
        .iter()
        .position(|o| matches!(o, Output::Persist(p) if p.takeovers == 1));
    let take_at = out.iter().position(|o| {
        *o == Output::TakeOver {
            from: A,
            count: 1,
            epoch: E1,
        }
    });
    assert!(persist_at.is_some() && persist_at < take_at, "{out:?}");
    // Once per silence.
    assert_eq!(tick_alone(&mut b, 600, 5_000), Vec::<u64>::new());
    // A is back: LIVE, told of the takeover, and no takeover while it
    // speaks, however long ago the last grant was.
    let from_a = a.step(5_050, Input::Tick);
    let out = deliver(&mut b, 5_050, &from_a);
    assert!(matches!(events(&out)[..], [Event::PeerLive { .. }]));
    assert_eq!(announced(&out), vec![1]);
    assert_eq!(b.permit(), Permit::Wait);
    assert!(takeovers(&b.step(5_100, Input::Tick)).is_empty());
    // Silent again: B granted nothing since (A has not applied the first
    // takeover), so the second comes with DEAD.
    assert_eq!(tick_alone(&mut b, 5_200, 9_000), vec![5_400]);
    assert_eq!(b.persisted().takeovers, 2);
}

#[test]
fn a_takeover_waits_for_dead_when_the_lease_is_long_over() {
    // B owes A a takeover it has not applied, so B grants nothing: its last
    // grant counts from its start, long over when A falls silent at 1 000.
    let (mut a, hello_a) = start(A, a_state(), 0);
    let (mut b, hello_b) = start(
        B,
        Persisted {
            takeovers: 1,
            ..b_state()
        },
        0,
    );
    deliver(&mut a, 0, &hello_b);
    deliver(&mut b, 0, &hello_a);
    for t in (100..=1_000).step_by(100) {
        let from_a = a.step(t, Input::Tick);
        let from_b = b.step(t, Input::Tick);
        assert!(grants(&from_b).is_empty() && takeovers(&from_b).is_empty());
        deliver(&mut a, t, &from_b);
        deliver(&mut b, t, &from_a);
    }
    assert_eq!(tick_alone(&mut b, 1_100, 1_200), Vec::<u64>::new());
    assert!(takeovers(&b.step(1_299, Input::Tick)).is_empty());
    assert_eq!(takeovers(&b.step(1_300, Input::Tick)), vec![2]);
}

#[test]
fn a_peer_that_stopped_cleanly_is_never_taken_over() {
    let (mut a, mut b) = met();
    let from_a = a.step(100, Input::Tick);
    deliver(&mut b, 100, &from_a);
    let bye = a.step(150, Input::Shutdown);
    deliver(&mut b, 150, &bye);
    assert_eq!(b.liveness(), Liveness::Close);
    assert_eq!(tick_alone(&mut b, 200, 20_000), Vec::<u64>::new());
    // B goes on with its own jobs.
    assert_eq!(b.permit(), Permit::Alone { since_ms: 150 });
}

#[test]
fn a_peer_of_another_major_version_is_never_taken_over() {
    let hello = |major| {
        msg(
            A,
            E1,
            Role::Primary { term: E1 },
            Body::Hello(Hello {
                instance: "gw-a".into(),
                software_major: major,
                config: ConfigStamp::EMPTY,
                takeovers_seen: 0,
            }),
        )
    };
    // Never paired with it.
    let (mut b, _) = start(B, b_state(), 0);
    b.step(0, Input::Received(hello(2)));
    assert_eq!(tick_alone(&mut b, 100, 20_000), Vec::<u64>::new());
    assert!(matches!(b.permit(), Permit::Alone { .. }));
    // LIVE, then back as another major version (an upgrade of one server):
    // its messages are refused from then on, but it is heard, not silent.
    let (mut b, _) = start(B, b_state(), 0);
    b.step(0, Input::Received(hello(1)));
    assert_eq!(b.liveness(), Liveness::Live);
    b.step(100, Input::Received(hello(2)));
    assert_eq!(tick_alone(&mut b, 200, 20_000), Vec::<u64>::new());
    assert!(matches!(b.permit(), Permit::Alone { .. }));
    assert_eq!(b.persisted().takeovers, 0);
}

#[test]
fn a_restarted_server_assumes_it_granted_a_lease_as_it_started() {
    // B restarts at 10 000 knowing nothing of the leases it granted before
    // its crash. It reads A's Hello at once; A falls silent: DEAD at
    // 10 300, but a lease granted just before the crash may run until
    // 10 330.
    let (_, hello_a) = start(A, a_state(), 9_000);
    let (mut b, _) = start(B, b_state(), 10_000);
    deliver(&mut b, 10_000, &hello_a);
    assert_eq!(tick_alone(&mut b, 10_100, 10_200), Vec::<u64>::new());
    let out = b.step(10_300, Input::Tick);
    assert!(matches!(events(&out)[..], [Event::PeerDead { .. }]));
    assert!(takeovers(&out).is_empty());
    assert!(takeovers(&b.step(10_329, Input::Tick)).is_empty());
    assert_eq!(takeovers(&b.step(10_330, Input::Tick)), vec![1]);
    // Never heard after a restart: silent after twice the DEAD threshold,
    // and taken over then.
    let (mut b, _) = start(B, b_state(), 10_000);
    assert_eq!(tick_alone(&mut b, 10_100, 10_500), Vec::<u64>::new());
    assert_eq!(b.permit(), Permit::Wait);
    assert_eq!(tick_alone(&mut b, 10_600, 12_000), vec![10_600]);
    assert_eq!(b.permit(), Permit::Alone { since_ms: 10_000 });
}

#[test]
fn the_permit_follows_the_pinning_the_peer_and_the_lease() {
    // No pinned peer: every job here is this server's alone.
    let mut lone = PairNode::new(settings(B), b_state(), 0);
    lone.step(0, Input::LinkUp);
    lone.step(
        10,
        Input::Received(heartbeat(A, E1, Role::Primary { term: E1 })),
    );
    assert_eq!(lone.permit(), Permit::Unpaired);
    // Never heard: wait for first contact, twice the DEAD threshold.
    let (mut b, _) = start(B, b_state(), 0);
    assert_eq!(b.permit(), Permit::Wait);
    tick_alone(&mut b, 100, 500);
    b.step(599, Input::Tick);
    assert_eq!(b.permit(), Permit::Wait);
    b.step(600, Input::Tick);
    assert_eq!(b.permit(), Permit::Alone { since_ms: 0 });
    // LIVE without a lease, then with one, then DEAD.
    let (mut a, mut b) = met();
    assert_eq!(b.permit(), Permit::Wait);
    let from_b = b.step(100, Input::Tick);
    deliver(&mut a, 100, &from_b);
    let from_a = a.step(200, Input::Tick);
    deliver(&mut b, 200, &from_a);
    assert_eq!(b.permit(), Permit::Leased { until_ms: 400 });
    b.step(400, Input::Tick);
    assert_eq!(b.permit(), Permit::Wait, "LIVE, lease over");
    b.step(500, Input::Tick);
    assert_eq!(b.permit(), Permit::Alone { since_ms: 500 }, "DEAD");
    // CLOSE is covered by a_peer_that_stopped_cleanly_is_never_taken_over.
}

#[test]
fn a_stall_gives_a_live_peer_a_whole_threshold_before_it_is_dead() {
    let (mut a, mut b) = met();
    let from_b = b.step(100, Input::Tick);
    deliver(&mut a, 100, &from_b);
    let from_a = a.step(200, Input::Tick);
    deliver(&mut b, 200, &from_a);
    assert_eq!(b.permit(), Permit::Leased { until_ms: 400 });
    // B is not run from 200 to 5 000 (SIGSTOP). What A sent meanwhile waits
    // in the socket: its silence says nothing yet.
    let out = b.step(5_000, Input::Tick);
    assert!(events(&out).is_empty(), "{out:?}");
    assert!(takeovers(&out).is_empty());
    assert_eq!(b.liveness(), Liveness::Live);
    assert_eq!(
        b.permit(),
        Permit::Wait,
        "the lease is over, A is not silent"
    );
    // A's heartbeat waiting in the socket is read: LIVE it stays.
    let from_a = a.step(5_000, Input::Tick);
    deliver(&mut b, 5_010, &from_a);
    assert!(events(&b.step(5_300, Input::Tick)).is_empty());
    // Had nothing come, DEAD only a whole threshold after waking.
    let (_, mut b) = met();
    b.step(100, Input::Tick);
    assert!(events(&b.step(5_000, Input::Tick)).is_empty());
    assert!(events(&b.step(5_299, Input::Tick)).is_empty());
    assert!(matches!(
        events(&b.step(5_300, Input::Tick))[..],
        [Event::PeerDead { .. }]
    ));
}

#[test]
fn a_stall_restarts_the_wait_for_a_never_heard_peer() {
    let (mut b, _) = start(B, b_state(), 0);
    b.step(100, Input::Tick);
    // Not run from 100 to 5 000: the peer's Hello may be in the socket.
    let out = b.step(5_000, Input::Tick);
    assert!(takeovers(&out).is_empty());
    assert_eq!(b.permit(), Permit::Wait);
    assert_eq!(tick_alone(&mut b, 5_100, 5_500), Vec::<u64>::new());
    assert_eq!(b.permit(), Permit::Wait);
    assert_eq!(tick_alone(&mut b, 5_600, 6_000), vec![5_600]);
    assert_eq!(b.permit(), Permit::Alone { since_ms: 5_000 });
}

/// Regression: the driver sleeps until `next_timer_ms`. When nothing else
/// was due (the link down, the peer LIVE or never heard) that was the
/// DEAD or first-contact moment, a whole threshold or more away, so the
/// node took the driver's own sleep for a stall and restarted its wait:
/// a peer that died (or never came up) was never DEAD, and the survivor
/// never went on alone. And once a never-heard peer was silent, the
/// first-contact moment stayed the next timer though it had passed: the
/// driver would have ticked in a busy loop.
#[test]
fn a_node_ticked_only_when_it_asks_never_takes_the_wait_for_a_stall() {
    fn run_on_timer(n: &mut PairNode, until_ms: u64) -> Vec<u64> {
        let mut taken = Vec::new();
        let mut now = n.next_timer_ms().unwrap();
        while now <= until_ms {
            if !takeovers(&n.step(now, Input::Tick)).is_empty() {
                taken.push(now);
            }
            let next = n.next_timer_ms().unwrap();
            assert!(
                next > now,
                "the timer is stuck at {now}: the driver would spin"
            );
            assert!(
                next <= now + BEAT_MS,
                "{next} is more than a beat after {now}"
            );
            now = next;
        }
        taken
    }
    // The peer never came up: no link.
    let mut b = PairNode::new(pinned_settings(B), b_state(), 0);
    assert_eq!(run_on_timer(&mut b, 2_000), vec![600]);
    assert_eq!(b.permit(), Permit::Alone { since_ms: 0 });
    // The peer died: its last heartbeat and the broken link at once.
    let (a, hello_a) = start(A, a_state(), 0);
    let (mut b, _) = start(B, b_state(), 0);
    deliver(&mut b, 1_000, &hello_a);
    b.step(1_000, Input::LinkDown);
    drop(a);
    assert_eq!(run_on_timer(&mut b, 3_000), vec![1_300]);
    assert_eq!(b.liveness(), Liveness::Dead);
}

#[test]
fn persisted_takeover_counts_round_trip_and_older_state_still_loads() {
    let p = Persisted {
        takeovers: 3,
        takeovers_applied: 2,
        ..a_state()
    };
    let json = serde_json::to_string(&p).unwrap();
    assert_eq!(serde_json::from_str::<Persisted>(&json).unwrap(), p);
    // State written before job ownership existed has neither count.
    let mut old = serde_json::to_value(&p).unwrap();
    let fields = old.as_object_mut().unwrap();
    assert!(fields.remove("takeovers").is_some());
    assert!(fields.remove("takeovers_applied").is_some());
    let loaded: Persisted = serde_json::from_value(old).unwrap();
    assert_eq!(loaded, a_state());
    // So do messages from a server that does not know of leases yet.
    let mut old_beat = serde_json::to_value(heartbeat(A, E1, Role::Primary { term: E1 })).unwrap();
    old_beat["body"]["Heartbeat"]
        .as_object_mut()
        .unwrap()
        .remove("lease")
        .unwrap();
    let beat: Message = serde_json::from_value(old_beat).unwrap();
    assert!(matches!(beat.body, Body::Heartbeat { lease, .. } if lease == LeaseNews::default()));
}
