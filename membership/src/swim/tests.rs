//! Unit tests, one per protocol rule. Datagrams are built and delivered by hand.

use std::net::SocketAddr;
use std::time::Duration;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::*;
use crate::codec::{self, MAX_DATAGRAM};

pub(super) fn id(name: &str) -> NodeId {
    NodeId::new(name).unwrap()
}

pub(super) fn addr(i: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, i], 7000))
}

pub(super) fn meta(i: u8) -> MemberMeta {
    MemberMeta::new(addr(i))
}

pub(super) fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Member `i` is named `n<i>` and listens on `10.0.0.<i>`.
pub(super) fn node(i: u8, config: SwimConfig) -> Swim<ChaCha8Rng> {
    let mut s = Swim::new(
        id(&format!("n{i}")),
        meta(i),
        config,
        ChaCha8Rng::seed_from_u64(i as u64),
        Duration::ZERO,
    );
    drain(&mut s);
    s
}

pub(super) fn drain(s: &mut Swim<ChaCha8Rng>) -> Vec<Effect> {
    std::iter::from_fn(|| s.poll_effect()).collect()
}

pub(super) fn events(effects: &[Effect]) -> Vec<Event> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Event(e) => Some(e.clone()),
            _ => None,
        })
        .collect()
}

pub(super) fn sent(effects: &[Effect]) -> Vec<(SocketAddr, Packet)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Transmit(t) => {
                assert!(t.payload.len() <= MAX_DATAGRAM);
                Some((
                    t.to,
                    codec::decode_packet(&t.payload, MAX_DATAGRAM).unwrap(),
                ))
            }
            _ => None,
        })
        .collect()
}

pub(super) fn timers(effects: &[Effect]) -> Vec<(Timer, Duration)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::SetTimer { timer, at } => Some((*timer, *at)),
            _ => None,
        })
        .collect()
}

pub(super) fn deliver(
    s: &mut Swim<ChaCha8Rng>,
    from: u8,
    body: Body,
    updates: Vec<Update>,
    now: Duration,
) -> Vec<Effect> {
    let packet = Packet {
        sender: id(&format!("n{from}")),
        body,
        updates,
    };
    let bytes = codec::encode_packet(&packet, MAX_DATAGRAM).unwrap();
    s.handle_message(addr(from), &bytes, now).unwrap();
    drain(s)
}

pub(super) fn alive(i: u8, incarnation: u64) -> Update {
    Update::Alive {
        id: id(&format!("n{i}")),
        incarnation,
        meta: meta(i),
    }
}

pub(super) fn suspect(i: u8, incarnation: u64, accuser: u8) -> Update {
    Update::Suspect {
        id: id(&format!("n{i}")),
        incarnation,
        accuser: id(&format!("n{accuser}")),
    }
}

pub(super) fn dead(i: u8, incarnation: u64, accuser: u8) -> Update {
    Update::Dead {
        id: id(&format!("n{i}")),
        incarnation,
        accuser: id(&format!("n{accuser}")),
    }
}

/// Node 1 knowing nodes 2..=n as alive at incarnation 0.
pub(super) fn node_knowing(n: u8, config: SwimConfig) -> Swim<ChaCha8Rng> {
    let mut s = node(1, config);
    let updates = (2..=n).map(|i| alive(i, 0)).collect();
    deliver(&mut s, 2, Body::Gossip, updates, Duration::ZERO);
    s
}

pub(super) fn state_of(s: &Swim<ChaCha8Rng>, i: u8) -> Option<(MemberState, u64)> {
    s.member(&id(&format!("n{i}")))
        .map(|m| (m.state, m.incarnation))
}

/// Fires timers in time order until `until`, returning everything produced.
pub(super) fn run_timers(
    s: &mut Swim<ChaCha8Rng>,
    pending: &mut Vec<(Timer, Duration)>,
    until: Duration,
) -> Vec<Effect> {
    let mut out = Vec::new();
    loop {
        pending.sort_by_key(|(t, at)| (*at, *t));
        let Some(pos) = pending.iter().position(|(_, at)| *at <= until) else {
            return out;
        };
        let (timer, at) = pending.remove(pos);
        s.handle_timer(timer, at);
        let effects = drain(s);
        pending.extend(timers(&effects));
        out.extend(effects);
    }
}

#[test]
fn join_exchanges_full_state_both_ways() {
    let mut a = node(1, SwimConfig::for_test());
    let mut b = node(2, SwimConfig::for_test());
    b.join(&[addr(1), addr(2)], Duration::ZERO);
    let out = sent(&drain(&mut b));
    assert_eq!(out.len(), 1, "own address is not a seed");
    let (to, packet) = &out[0];
    assert_eq!(*to, addr(1));
    assert_eq!(packet.body, Body::PushPull { reply: true });
    let bytes = codec::encode_packet(packet, MAX_DATAGRAM).unwrap();
    a.handle_message(addr(2), &bytes, Duration::ZERO).unwrap();
    let effects = drain(&mut a);
    assert!(matches!(&events(&effects)[..], [Event::Up(m)] if m.id == id("n2")));
    let reply = sent(&effects);
    assert_eq!(reply[0].1.body, Body::PushPull { reply: false });
    let bytes = codec::encode_packet(&reply[0].1, MAX_DATAGRAM).unwrap();
    b.handle_message(addr(1), &bytes, Duration::ZERO).unwrap();
    assert!(matches!(&events(&drain(&mut b))[..], [Event::Up(m)] if m.id == id("n1")));
    assert_eq!(a.live_members(), 2);
    assert_eq!(b.live_members(), 2);
}

#[test]
fn ping_is_acked_and_ack_keeps_target_alive() {
    let mut a = node_knowing(2, SwimConfig::for_test());
    let mut pending = vec![];
    // First probe tick.
    let mut b = node(2, SwimConfig::for_test());
    let probe_timer = a.timers.iter().find(|(_, (k, _))| *k == TimerKind::Probe);
    let token = *probe_timer.unwrap().0;
    assert!(a.handle_timer(Timer { token }, secs(1)));
    let effects = drain(&mut a);
    pending.extend(timers(&effects));
    let (to, ping) = sent(&effects).pop().unwrap();
    assert_eq!(to, addr(2));
    let Body::Ping { seq, .. } = ping.body else {
        panic!("expected a ping, got {ping:?}")
    };
    let bytes = codec::encode_packet(&ping, MAX_DATAGRAM).unwrap();
    b.handle_message(addr(1), &bytes, secs(1)).unwrap();
    let acks = sent(&drain(&mut b));
    assert_eq!(acks[0].1.body, Body::Ack { seq });
    let effects = deliver(&mut a, 2, Body::Ack { seq }, vec![], secs(1));
    assert!(events(&effects).is_empty());
    // The next probe tick closes this protocol period.
    let later = run_timers(&mut a, &mut pending, Duration::from_millis(1500));
    assert!(
        !events(&later)
            .iter()
            .any(|e| matches!(e, Event::Suspect(_))),
        "an acked member is not suspected"
    );
}

#[test]
fn unanswered_probe_goes_indirect_then_suspects() {
    let mut a = node_knowing(5, SwimConfig::for_test());
    let mut pending: Vec<_> = a
        .timers
        .iter()
        .filter(|(_, (kind, _))| *kind == TimerKind::Probe)
        .map(|(t, _)| (Timer { token: *t }, Duration::ZERO))
        .collect();
    let effects = run_timers(&mut a, &mut pending, Duration::ZERO);
    let target = match &sent(&effects)[0].1.body {
        Body::Ping { target, .. } => target.clone(),
        other => panic!("expected ping, got {other:?}"),
    };
    // Probe timeout: ping-req through k = 3 of the other 3 members, with nacks requested.
    let effects = run_timers(&mut a, &mut pending, Duration::from_millis(200));
    let reqs: Vec<_> = sent(&effects)
        .into_iter()
        .filter(|(_, p)| matches!(p.body, Body::PingReq { .. }))
        .collect();
    assert_eq!(reqs.len(), 3);
    let retries = sent(&effects)
        .into_iter()
        .filter(|(_, p)| matches!(&p.body, Body::Ping { target: t, .. } if *t == target))
        .count();
    assert_eq!(retries, 1, "the direct ping is retried once");
    for (to, p) in &reqs {
        assert_ne!(*to, a.members[&target].member.meta.addr);
        assert!(matches!(&p.body, Body::PingReq { target: t, nack: true, .. } if *t == target));
    }
    // End of the protocol period without any ack: suspect.
    let effects = run_timers(&mut a, &mut pending, Duration::from_millis(500));
    assert!(
        events(&effects)
            .iter()
            .any(|e| matches!(e, Event::Suspect(m) if m.id == target))
    );
    assert_eq!(
        a.health_multiplier(),
        1 + 3,
        "three missing nacks count against local health"
    );
}

#[test]
fn ping_req_relays_ack_or_sends_nack() {
    let mut c = node_knowing(3, SwimConfig::for_test());
    let target_addr = addr(3);
    let effects = deliver(
        &mut c,
        2,
        Body::PingReq {
            seq: 40,
            target: id("n3"),
            target_addr,
            nack: true,
        },
        vec![],
        secs(1),
    );
    let (to, ping) = sent(&effects).pop().unwrap();
    assert_eq!(to, target_addr);
    let Body::Ping { seq, .. } = ping.body else {
        panic!()
    };
    // The target answers: the ack is relayed with the requester's sequence number.
    let relayed = sent(&deliver(&mut c, 3, Body::Ack { seq }, vec![], secs(1)));
    assert_eq!(relayed[0].0, addr(2));
    assert_eq!(relayed[0].1.body, Body::Ack { seq: 40 });
    // The relay timer is now stale.
    let (timer, at) = timers(&effects)[0];
    assert!(!c.handle_timer(timer, at));

    // Second request, target silent: nack.
    let effects = deliver(
        &mut c,
        2,
        Body::PingReq {
            seq: 41,
            target: id("n3"),
            target_addr,
            nack: true,
        },
        vec![],
        secs(2),
    );
    let (timer, at) = timers(&effects)[0];
    assert!(c.handle_timer(timer, at));
    let nack = sent(&drain(&mut c));
    assert_eq!(nack[0].1.body, Body::Nack { seq: 41 });
}

#[test]
fn suspect_refutes_with_higher_incarnation() {
    let mut a = node_knowing(3, SwimConfig::for_test());
    let effects = deliver(&mut a, 2, Body::Gossip, vec![suspect(1, 0, 2)], secs(1));
    assert_eq!(a.local().incarnation, 1);
    assert!(events(&effects).is_empty());
    // The refutation rides on the next message.
    let out = sent(&deliver(
        &mut a,
        3,
        Body::Ping {
            seq: 1,
            target: id("n1"),
        },
        vec![],
        secs(1),
    ));
    assert!(out[0].1.updates.contains(&alive(1, 1)));
    // A death claim is refuted the same way.
    deliver(&mut a, 2, Body::Gossip, vec![dead(1, 1, 2)], secs(2));
    assert_eq!(a.local().incarnation, 2);
    // A stale accusation does not raise the incarnation again.
    deliver(&mut a, 2, Body::Gossip, vec![suspect(1, 0, 3)], secs(3));
    assert_eq!(a.local().incarnation, 2);
}

#[test]
fn suspicion_times_out_to_dead() {
    let config = SwimConfig::for_test();
    let mut a = node_knowing(3, config.clone());
    let effects = deliver(&mut a, 2, Body::Gossip, vec![suspect(3, 0, 2)], secs(1));
    assert!(matches!(&events(&effects)[..], [Event::Suspect(m)] if m.id == id("n3")));
    let (timer, at) = timers(&effects)[0];
    let (min, max) = suspicion::bounds(&config, 3);
    // k = min(α − 2, n − 2) = 1 expected confirmation, none yet: the full max timeout.
    assert_eq!(at, secs(1) + max);
    assert!(min < max);
    assert!(a.handle_timer(timer, at));
    let effects = drain(&mut a);
    assert!(matches!(&events(&effects)[..], [Event::Dead(m)] if m.id == id("n3")));
    assert_eq!(state_of(&a, 3), Some((MemberState::Dead, 0)));
    assert_eq!(a.live_members(), 2);
}

#[test]
fn confirmations_shrink_suspicion_timeout() {
    let config = SwimConfig::lan(10);
    let mut a = node_knowing(10, config.clone());
    let start = secs(1);
    let e0 = deliver(&mut a, 2, Body::Gossip, vec![suspect(9, 0, 2)], start);
    let (t0, at0) = timers(&e0)[0];
    let (min, max) = suspicion::bounds(&config, 10);
    assert_eq!(at0, start + max);
    // A repeat from the same accuser is not a confirmation.
    assert!(
        timers(&deliver(
            &mut a,
            2,
            Body::Gossip,
            vec![suspect(9, 0, 2)],
            start
        ))
        .is_empty()
    );
    let e1 = deliver(&mut a, 3, Body::Gossip, vec![suspect(9, 0, 3)], secs(2));
    let (t1, at1) = timers(&e1)[0];
    assert!(at1 < at0 && at1 > start + min);
    assert!(!a.handle_timer(t0, at0), "the replaced timer is stale");
    let e2 = deliver(&mut a, 4, Body::Gossip, vec![suspect(9, 0, 4)], secs(3));
    let (t2, at2) = timers(&e2)[0];
    assert_eq!(at2, start + min, "k = 2 confirmations reach the minimum");
    assert!(!a.handle_timer(t1, at1));
    assert!(a.handle_timer(t2, at2));
    assert!(matches!(&events(&drain(&mut a))[..], [Event::Dead(_)]));
}

#[test]
fn confirmation_after_minimum_declares_dead_at_once() {
    let config = SwimConfig::lan(10);
    let mut a = node_knowing(10, config.clone());
    deliver(&mut a, 2, Body::Gossip, vec![suspect(9, 0, 2)], secs(1));
    deliver(&mut a, 3, Body::Gossip, vec![suspect(9, 0, 3)], secs(1));
    let (min, _) = suspicion::bounds(&config, 10);
    let effects = deliver(
        &mut a,
        4,
        Body::Gossip,
        vec![suspect(9, 0, 4)],
        secs(2) + min,
    );
    assert!(matches!(&events(&effects)[..], [Event::Dead(_)]));
}

#[test]
fn refutation_cancels_suspicion_and_its_timer() {
    let mut a = node_knowing(3, SwimConfig::for_test());
    let effects = deliver(&mut a, 2, Body::Gossip, vec![suspect(3, 0, 2)], secs(1));
    let (timer, at) = timers(&effects)[0];
    let effects = deliver(&mut a, 3, Body::Gossip, vec![alive(3, 1)], secs(2));
    assert!(matches!(&events(&effects)[..], [Event::Recovered(m)] if m.incarnation == 1));
    assert!(
        !a.handle_timer(timer, at),
        "stale suspicion timer is ignored"
    );
    assert_eq!(state_of(&a, 3), Some((MemberState::Alive, 1)));
    assert!(drain(&mut a).is_empty());
}

#[test]
fn alive_at_same_incarnation_does_not_override_suspect() {
    let mut a = node_knowing(3, SwimConfig::for_test());
    deliver(&mut a, 2, Body::Gossip, vec![suspect(3, 0, 2)], secs(1));
    deliver(&mut a, 3, Body::Gossip, vec![alive(3, 0)], secs(1));
    assert_eq!(state_of(&a, 3), Some((MemberState::Suspect, 0)));
}

#[test]
fn dead_member_rejoins_only_with_higher_incarnation() {
    let mut a = node_knowing(3, SwimConfig::for_test());
    deliver(&mut a, 2, Body::Gossip, vec![dead(3, 4, 2)], secs(1));
    assert_eq!(state_of(&a, 3), Some((MemberState::Dead, 4)));
    let effects = deliver(&mut a, 3, Body::Gossip, vec![alive(3, 4)], secs(2));
    assert!(events(&effects).is_empty());
    assert_eq!(state_of(&a, 3), Some((MemberState::Dead, 4)));
    let effects = deliver(&mut a, 3, Body::Gossip, vec![alive(3, 5)], secs(3));
    assert!(matches!(&events(&effects)[..], [Event::Up(m)] if m.incarnation == 5));
    assert_eq!(a.live_members(), 3);
}

#[test]
fn restarted_member_outbids_its_earlier_life() {
    let mut a = node(1, SwimConfig::for_test());
    // The cluster remembers us at incarnation 7 (dead); we restarted at 0.
    deliver(
        &mut a,
        2,
        Body::PushPull { reply: false },
        vec![dead(1, 7, 2)],
        secs(1),
    );
    assert_eq!(a.local().incarnation, 8);
    deliver(&mut a, 2, Body::Gossip, vec![alive(1, 9)], secs(2));
    assert_eq!(a.local().incarnation, 10);
}

#[test]
fn leave_is_announced_and_stops_probing() {
    let mut a = node_knowing(3, SwimConfig::for_test());
    let probe = *a
        .timers
        .iter()
        .find(|(_, (k, _))| *k == TimerKind::Probe)
        .unwrap()
        .0;
    a.leave(secs(1));
    let out = sent(&drain(&mut a));
    assert!(!out.is_empty());
    let left = Update::Left {
        id: id("n1"),
        incarnation: 0,
    };
    assert!(out.iter().all(|(_, p)| p.updates.contains(&left)));
    assert!(a.handle_timer(Timer { token: probe }, secs(2)));
    let effects = drain(&mut a);
    assert!(sent(&effects).is_empty(), "no probe after leaving");
    assert!(timers(&effects).is_empty(), "probe timer not re-armed");
    // Accusations are no longer refuted.
    deliver(&mut a, 2, Body::Gossip, vec![suspect(1, 0, 2)], secs(3));
    assert_eq!(a.local().incarnation, 0);

    // A peer hearing the leave reports it, and ignores later suspicion at that incarnation.
    let mut b = node_knowing(3, SwimConfig::for_test());
    let effects = deliver(
        &mut b,
        3,
        Body::Gossip,
        vec![Update::Left {
            id: id("n3"),
            incarnation: 0,
        }],
        secs(1),
    );
    assert!(matches!(&events(&effects)[..], [Event::Left(m)] if m.id == id("n3")));
    assert_eq!(b.live_members(), 2);
    deliver(&mut b, 2, Body::Gossip, vec![suspect(3, 0, 2)], secs(2));
    assert_eq!(state_of(&b, 3), Some((MemberState::Left, 0)));
}

#[test]
fn metadata_update_raises_incarnation_and_is_reported() {
    let mut a = node(1, SwimConfig::for_test());
    let mut new_meta = meta(1);
    new_meta.ring_version = 42;
    a.update_meta(new_meta.clone(), secs(1));
    assert_eq!(a.local().incarnation, 1);
    let mut b = node(2, SwimConfig::for_test());
    let effects = deliver(&mut b, 1, Body::Gossip, vec![alive(1, 0)], secs(1));
    assert!(matches!(&events(&effects)[..], [Event::Up(_)]));
    let effects = deliver(
        &mut b,
        1,
        Body::Gossip,
        vec![Update::Alive {
            id: id("n1"),
            incarnation: 1,
            meta: new_meta,
        }],
        secs(2),
    );
    assert!(
        matches!(&events(&effects)[..], [Event::MetadataChanged(m)] if m.meta.ring_version == 42)
    );
}

#[test]
fn buddy_system_ping_carries_suspicion() {
    let mut a = node_knowing(2, SwimConfig::for_test());
    deliver(&mut a, 2, Body::Gossip, vec![suspect(2, 0, 9)], secs(1));
    // Drain the queue, so only the buddy rule can put the suspicion on the ping.
    while a.pending_updates() > 0 {
        a.gossip_round();
        drain(&mut a);
    }
    let token = *a
        .timers
        .iter()
        .find(|(_, (k, _))| *k == TimerKind::Probe)
        .unwrap()
        .0;
    a.handle_timer(Timer { token }, secs(2));
    let out = sent(&drain(&mut a));
    let (_, ping) = out
        .iter()
        .find(|(_, p)| matches!(p.body, Body::Ping { .. }))
        .unwrap();
    assert!(matches!(&ping.updates[0], Update::Suspect { id: i, .. } if *i == id("n2")));
}

#[test]
fn stale_and_unknown_timers_are_ignored() {
    let mut a = node_knowing(3, SwimConfig::for_test());
    assert!(!a.handle_timer(Timer { token: 999_999 }, secs(1)));
    let token = *a.timers.keys().next().unwrap();
    assert!(a.handle_timer(Timer { token }, secs(1)));
    drain(&mut a);
    assert!(
        !a.handle_timer(Timer { token }, secs(1)),
        "a timer fires once"
    );
    assert!(drain(&mut a).is_empty());
}

#[test]
fn malformed_input_is_an_error_and_changes_nothing() {
    let mut a = node_knowing(3, SwimConfig::for_test());
    let before: Vec<Member> = a.members().cloned().collect();
    let timers_before = a.timers.len();
    for bad in [
        vec![],
        vec![codec::FORMAT_VERSION],
        vec![77, 1, 2, 3],
        vec![codec::FORMAT_VERSION, 255, 255, 255, 255, 255],
        vec![codec::FORMAT_VERSION; MAX_DATAGRAM + 1],
    ] {
        assert!(a.handle_message(addr(2), &bad, secs(1)).is_err());
    }
    assert!(drain(&mut a).is_empty());
    assert_eq!(a.members().cloned().collect::<Vec<_>>(), before);
    assert_eq!(a.timers.len(), timers_before);
}

#[test]
fn every_datagram_fits_even_with_a_large_cluster() {
    let long = |i: u32| NodeId::new(format!("{i:0>64}")).unwrap();
    let mut a = node(1, SwimConfig::for_test());
    let updates: Vec<Update> = (0..300u32)
        .map(|i| Update::Alive {
            id: long(i),
            incarnation: u64::MAX - i as u64,
            meta: MemberMeta {
                addr: "[2001:db8::1]:65000".parse().unwrap(),
                zone: crate::Zone::new("z".repeat(crate::MAX_ZONE_LEN)).unwrap(),
                ring_version: u64::MAX,
            },
        })
        .collect();
    for chunk in updates.chunks(5) {
        deliver(&mut a, 2, Body::Gossip, chunk.to_vec(), secs(1));
    }
    assert_eq!(a.live_members(), 301);
    a.send_state(addr(2), None, true);
    let chunks = sent(&drain(&mut a));
    assert!(chunks.len() > 30, "full state is split: {}", chunks.len());
    let records: usize = chunks.iter().map(|(_, p)| p.updates.len()).sum();
    assert_eq!(records, 301);
    let replies = chunks
        .iter()
        .filter(|(_, p)| p.body == Body::PushPull { reply: true })
        .count();
    assert_eq!(replies, 1);
    // Piggybacking is budgeted too (`sent` checks the size of every datagram).
    a.gossip_round();
    assert!(!sent(&drain(&mut a)).is_empty());
}

#[test]
fn stalled_member_does_not_blame_others_with_lifeguard() {
    for lifeguard in [true, false] {
        let config = SwimConfig {
            lifeguard,
            ..SwimConfig::for_test()
        };
        let mut a = node_knowing(5, config);
        let mut pending: Vec<_> = a
            .timers
            .iter()
            .filter(|(_, (kind, _))| *kind == TimerKind::Probe)
            .map(|(t, (_, at))| (Timer { token: *t }, *at))
            .collect();
        let first = pending[0].1;
        run_timers(&mut a, &mut pending, first);
        // Paused for 5 s: every timer runs late, before the ack waiting in the socket is read.
        let resume = first + secs(5);
        let mut effects = Vec::new();
        pending.sort_by_key(|(t, at)| (*at, *t));
        while let Some(pos) = pending.iter().position(|(_, at)| *at <= resume) {
            let (timer, _) = pending.remove(pos);
            a.handle_timer(timer, resume);
            let out = drain(&mut a);
            pending.extend(timers(&out));
            effects.extend(out);
        }
        let suspected = events(&effects)
            .iter()
            .any(|e| matches!(e, Event::Suspect(_)));
        assert_eq!(suspected, !lifeguard, "lifeguard {lifeguard}");
        if lifeguard {
            assert!(
                a.health_multiplier() > 1,
                "the stall counts against local health"
            );
        }
    }
}

/// Regression (sim seed 6, 30 members, 10 % loss): a member that missed a refutation kept a
/// stale suspicion and declared a live member dead. Members that know better now re-spread the
/// alive claim when they see the stale accusation, and the accused re-spreads its own.
#[test]
fn stale_accusation_is_answered_with_the_newer_alive_claim() {
    let mut a = node_knowing(3, SwimConfig::for_test());
    deliver(&mut a, 3, Body::Gossip, vec![alive(3, 3)], secs(1));
    while a.pending_updates() > 0 {
        a.gossip_round();
        drain(&mut a);
    }
    deliver(&mut a, 2, Body::Gossip, vec![suspect(3, 2, 2)], secs(2));
    assert_eq!(state_of(&a, 3), Some((MemberState::Alive, 3)));
    assert!(a.broadcasts.contains(&id("n3")), "alive claim queued again");

    deliver(&mut a, 2, Body::Gossip, vec![suspect(1, 0, 2)], secs(3));
    assert_eq!(a.local().incarnation, 1);
    while a.pending_updates() > 0 {
        a.gossip_round();
        drain(&mut a);
    }
    deliver(&mut a, 2, Body::Gossip, vec![suspect(1, 0, 2)], secs(4));
    assert_eq!(a.local().incarnation, 1, "stale: no new incarnation");
    assert!(
        a.broadcasts.contains(&id("n1")),
        "own alive claim queued again"
    );
}
