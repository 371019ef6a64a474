//! Tests of digest-first push-pull and of Lifeguard confirmation probes.

use std::collections::VecDeque;

use proptest::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::digest::bucket_of;
use super::tests::*;
use super::*;
use crate::codec::MAX_DATAGRAM;
use crate::message::{Digest, MAX_DIGEST_BUCKETS, Want};

/// Delivers datagrams between `a` (member `ia`) and `b` (member `ib`) until neither has
/// anything more for the other, starting with `first` (effects of `a`). Datagrams to anyone
/// else are dropped. Returns every packet exchanged, in delivery order, with its sender.
fn pump(
    a: &mut Swim<ChaCha8Rng>,
    ia: u8,
    b: &mut Swim<ChaCha8Rng>,
    ib: u8,
    first: Vec<Effect>,
    now: Duration,
) -> Vec<(u8, Packet)> {
    let mut queue: VecDeque<(u8, Packet)> = sent(&first)
        .into_iter()
        .filter(|(to, _)| *to == addr(ib))
        .map(|(_, p)| (ia, p))
        .collect();
    let mut log = Vec::new();
    while let Some((from, packet)) = queue.pop_front() {
        let (to, node) = if from == ia {
            (ib, &mut *b)
        } else {
            (ia, &mut *a)
        };
        let bytes = codec::encode_packet(&packet, MAX_DATAGRAM).unwrap();
        node.handle_message(addr(from), &bytes, now).unwrap();
        for (dest, p) in sent(&drain(node)) {
            if dest == addr(from) {
                queue.push_back((to, p));
            }
        }
        log.push((from, packet));
        assert!(log.len() < 10_000, "exchange does not end");
    }
    log
}

/// Empties the piggyback queue, so only the exchange under test can carry news.
fn quiesce(s: &mut Swim<ChaCha8Rng>) {
    s.broadcasts = BroadcastQueue::default();
    drain(s);
}

/// Member `me` knowing `others` (alive at the given incarnations), with an empty queue.
fn knowing(me: u8, others: &[(u8, u64)]) -> Swim<ChaCha8Rng> {
    let mut s = node(me, SwimConfig::for_test());
    let updates: Vec<Update> = others.iter().map(|&(i, inc)| alive(i, inc)).collect();
    for chunk in updates.chunks(20) {
        deliver(&mut s, 250, Body::Gossip, chunk.to_vec(), secs(1));
    }
    quiesce(&mut s);
    s
}

fn table(s: &Swim<ChaCha8Rng>) -> Vec<(NodeId, MemberState, u64)> {
    let mut t: Vec<_> = s
        .members()
        .map(|m| (m.id.clone(), m.state, m.incarnation))
        .collect();
    t.push((s.local().id.clone(), s.local().state, s.local().incarnation));
    t
}

fn entries_sent(log: &[(u8, Packet)], from: u8) -> usize {
    log.iter()
        .filter(|(f, p)| *f == from && matches!(p.body, Body::PushPull { .. }))
        .map(|(_, p)| p.updates.len())
        .sum()
}

#[test]
fn agreeing_tables_exchange_one_small_datagram() {
    let all: Vec<(u8, u64)> = (1..=60).map(|i| (i, 0)).collect();
    let others = |me: u8| -> Vec<(u8, u64)> { all.iter().copied().filter(|m| m.0 != me).collect() };
    let mut a = knowing(1, &others(1));
    let mut b = knowing(2, &others(2));
    a.send_digest(addr(2), Some(id("n2")));
    let first = drain(&mut a);
    let log = pump(&mut a, 1, &mut b, 2, first, secs(2));
    assert_eq!(log.len(), 1, "only the digest: {log:?}");
    let Body::Digest(d) = &log[0].1.body else {
        panic!("push-pull starts with a digest")
    };
    assert_eq!(d.buckets(), 60usize.div_ceil(8));
    let size = codec::encode_packet(&log[0].1, MAX_DATAGRAM).unwrap().len();
    assert!(size < 60, "digest of 60 members is {size} bytes");
}

#[test]
fn only_differing_buckets_cross_and_both_sides_merge() {
    let base: Vec<(u8, u64)> = (3..=80).map(|i| (i, 0)).collect();
    let mut a = knowing(1, &[&base[..], &[(2, 0)]].concat());
    // b knows a newer n7 and a member a has never heard of.
    let mut b_view = base.clone();
    b_view.retain(|m| m.0 != 7);
    b_view.extend([(7, 3), (81, 0), (1, 0)]);
    let mut b = knowing(2, &b_view);
    a.send_digest(addr(2), Some(id("n2")));
    let first = drain(&mut a);
    let log = pump(&mut a, 1, &mut b, 2, first, secs(2));
    let Some((_, want)) = log.iter().find(|(f, _)| *f == 2) else {
        panic!("b answers")
    };
    let Body::Want(want) = &want.body else {
        panic!("b's first answer names the buckets it wants: {want:?}")
    };
    let buckets = want.buckets as usize;
    let wanted: Vec<usize> = (0..buckets).filter(|&i| want.wants(i)).collect();
    let mut expected = vec![
        bucket_of(&id("n7"), buckets),
        bucket_of(&id("n81"), buckets),
    ];
    expected.sort();
    expected.dedup();
    assert_eq!(wanted, expected);
    let total = a.members().count() + 1;
    assert!(
        entries_sent(&log, 2) < total / 3,
        "b sent {}",
        entries_sent(&log, 2)
    );
    assert!(
        entries_sent(&log, 1) < total / 3,
        "a sent {}",
        entries_sent(&log, 1)
    );
    assert_eq!(state_of(&a, 7), Some((MemberState::Alive, 3)));
    assert_eq!(state_of(&a, 81), Some((MemberState::Alive, 0)));
    assert_eq!(table(&a).len(), table(&b).len());
    let mut ta = table(&a);
    let mut tb = table(&b);
    ta.sort();
    tb.sort();
    assert_eq!(ta, tb, "one view after one exchange");
}

#[test]
fn join_still_sends_the_small_table_in_full() {
    let mut b = node(2, SwimConfig::for_test());
    b.join(&[addr(1)], Duration::ZERO);
    let out = sent(&drain(&mut b));
    assert_eq!(out[0].1.body, Body::PushPull { reply: true });
}

fn bad_packets() -> Vec<Packet> {
    let packet = |body| Packet {
        sender: id("n2"),
        body,
        updates: vec![alive(9, 5)],
    };
    let digest = |len: usize| {
        packet(Body::Digest(Digest {
            salt: 1,
            hashes: vec![7; len],
        }))
    };
    let want = |buckets: u16, bits: Vec<u8>| packet(Body::Want(Want { buckets, bits }));
    vec![
        digest(0),
        digest(5),
        digest(4 * MAX_DIGEST_BUCKETS + 4),
        want(0, vec![]),
        want(9, vec![0xff]),
        want(4, vec![0xf0]),
        want(300, vec![0xff; 38]),
        want(8, vec![0xff, 0]),
    ]
}

#[test]
fn malformed_or_oversize_digest_is_an_error_and_changes_nothing() {
    let mut a = node_knowing(5, SwimConfig::for_test());
    quiesce(&mut a);
    let before = table(&a);
    let timers_before = a.timers.len();
    for p in bad_packets() {
        // Encoded without the size limit, so over-size frames reach the decoder too.
        let bytes = codec::encode_packet(&p, usize::MAX).unwrap();
        let err = a.handle_message(addr(2), &bytes, secs(2)).unwrap_err();
        assert!(
            matches!(err, CodecError::Malformed(_) | CodecError::TooLarge { .. }),
            "{p:?}: {err}"
        );
    }
    assert!(drain(&mut a).is_empty());
    assert_eq!(
        table(&a),
        before,
        "the piggybacked alive(9, 5) was not applied"
    );
    assert_eq!(a.timers.len(), timers_before);
    assert_eq!(a.pending_updates(), 0);
}

#[test]
fn largest_digest_fits_in_the_smallest_datagram() {
    let long = |i: u32| NodeId::new(format!("{i:0>64}")).unwrap();
    for max_datagram in [256, 600, MAX_DATAGRAM] {
        let config = SwimConfig {
            max_datagram,
            ..SwimConfig::for_test()
        };
        let mut a = Swim::new(
            long(0),
            meta(1),
            config,
            ChaCha8Rng::seed_from_u64(1),
            Duration::ZERO,
        );
        let updates: Vec<Update> = (1..3000u32)
            .map(|i| Update::Alive {
                id: long(i),
                incarnation: 0,
                meta: meta(2),
            })
            .collect();
        for chunk in updates.chunks(2) {
            let p = Packet {
                sender: id("n2"),
                body: Body::Gossip,
                updates: chunk.to_vec(),
            };
            let bytes = codec::encode_packet(&p, MAX_DATAGRAM).unwrap();
            a.handle_message(addr(2), &bytes, secs(1)).unwrap();
        }
        drain(&mut a);
        a.send_digest(addr(2), None);
        let out: Vec<Transmit> = drain(&mut a)
            .into_iter()
            .filter_map(|e| match e {
                Effect::Transmit(t) => Some(t),
                _ => None,
            })
            .collect();
        assert_eq!(out.len(), 1);
        assert!(out[0].payload.len() <= max_datagram);
        let p = codec::decode_packet(&out[0].payload, MAX_DATAGRAM).unwrap();
        let Body::Digest(d) = p.body else { panic!() };
        assert!(d.buckets() <= MAX_DIGEST_BUCKETS);
        assert!(
            d.buckets() >= (max_datagram - 200) / 8,
            "{} buckets",
            d.buckets()
        );
    }
}

/// A member's record in a generated table: absent, or a state at an incarnation.
fn record() -> impl Strategy<Value = Option<(u8, u64)>> {
    prop_oneof![
        2 => Just(None),
        5 => (0u8..4, 0u64..3).prop_map(Some),
    ]
}

/// Member `me` with the generated `records` of members 3.. (state code: 0 alive, 1 suspect,
/// 2 dead, 3 left), installed by gossip, with an empty queue.
fn build(me: u8, records: &[Option<(u8, u64)>]) -> Swim<ChaCha8Rng> {
    let mut s = node(me, SwimConfig::for_test());
    for (i, r) in records.iter().enumerate() {
        let Some((state, inc)) = *r else { continue };
        let m = 3 + i as u8;
        let mut updates = vec![alive(m, inc)];
        match state {
            1 => updates.push(suspect(m, inc, 250)),
            2 => updates.push(dead(m, inc, 250)),
            3 => updates.push(Update::Left {
                id: id(&format!("n{m}")),
                incarnation: inc,
            }),
            _ => {}
        }
        deliver(&mut s, 250, Body::Gossip, updates, secs(1));
    }
    quiesce(&mut s);
    s
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Two halves with any tables end a digest-first exchange exactly where a full-state
    /// exchange leaves them, sending no more entries than it.
    #[test]
    fn digest_exchange_merges_like_full_state(
        records in proptest::collection::vec((record(), record()), 0..120),
    ) {
        let (ra, rb): (Vec<_>, Vec<_>) = records.into_iter().unzip();
        let now = secs(2);
        let (mut fa, mut fb) = (build(1, &ra), build(2, &rb));
        fa.send_state(addr(2), Some(id("n2")), true);
        let first = drain(&mut fa);
        let full = pump(&mut fa, 1, &mut fb, 2, first, now);
        let (mut da, mut db) = (build(1, &ra), build(2, &rb));
        da.send_digest(addr(2), Some(id("n2")));
        let first = drain(&mut da);
        let digest = pump(&mut da, 1, &mut db, 2, first, now);
        prop_assert_eq!(table(&da), table(&fa));
        prop_assert_eq!(table(&db), table(&fb));
        prop_assert!(entries_sent(&digest, 1) <= entries_sent(&full, 1));
        prop_assert!(entries_sent(&digest, 2) <= entries_sent(&full, 2));
    }

    #[test]
    fn random_digest_and_want_bodies_never_panic(
        salt in any::<u32>(),
        hashes in proptest::collection::vec(any::<u8>(), 0..1100),
        buckets in any::<u16>(),
        bits in proptest::collection::vec(any::<u8>(), 0..40),
    ) {
        let mut a = node_knowing(20, SwimConfig::for_test());
        for body in [Body::Digest(Digest { salt, hashes }), Body::Want(Want { buckets, bits })] {
            let p = Packet { sender: id("n2"), body, updates: vec![] };
            let bytes = codec::encode_packet(&p, usize::MAX).unwrap();
            let _ = a.handle_message(addr(2), &bytes, secs(2));
            for e in drain(&mut a) {
                if let Effect::Transmit(t) = e {
                    prop_assert!(t.payload.len() <= MAX_DATAGRAM);
                }
            }
        }
    }
}

#[test]
fn hearing_a_suspicion_probes_the_suspect_and_confirms_it_without_an_ack() {
    let config = SwimConfig::for_test();
    let mut a = node_knowing(4, config.clone());
    quiesce(&mut a);
    let start = secs(1);
    let effects = deliver(&mut a, 2, Body::Gossip, vec![suspect(3, 0, 2)], start);
    let pings: Vec<_> = sent(&effects)
        .into_iter()
        .filter(|(to, p)| *to == addr(3) && matches!(p.body, Body::Ping { .. }))
        .collect();
    assert_eq!(pings.len(), 1, "in a small cluster every hearer confirms");
    assert!(
        pings[0].1.updates.contains(&suspect(3, 0, 1)),
        "the ping carries the suspicion (buddy system)"
    );
    let mut pending = timers(&effects);
    let out = run_timers(&mut a, &mut pending, start + config.probe_interval);
    assert!(
        sent(&out)
            .iter()
            .any(|(_, p)| matches!(p.body, Body::PingReq { .. })),
        "a confirmation is a full probe: it goes indirect"
    );
    let s = a.members[&id("n3")].suspicion.as_ref().unwrap();
    assert!(s.accusers.contains(&id("n1")), "no ack: confirmed");
    assert_eq!(s.accusers.len(), 2);
}

#[test]
fn an_acked_confirmation_probe_confirms_nothing() {
    let config = SwimConfig::for_test();
    let mut a = node_knowing(4, config.clone());
    quiesce(&mut a);
    let start = secs(1);
    let effects = deliver(&mut a, 2, Body::Gossip, vec![suspect(3, 0, 2)], start);
    let seq = sent(&effects)
        .into_iter()
        .find_map(|(_, p)| match p.body {
            Body::Ping { seq, .. } => Some(seq),
            _ => None,
        })
        .unwrap();
    deliver(&mut a, 3, Body::Ack { seq }, vec![], start + secs(0));
    let mut pending = timers(&effects);
    let out = run_timers(&mut a, &mut pending, start + config.probe_interval);
    assert!(
        !sent(&out)
            .iter()
            .any(|(_, p)| matches!(p.body, Body::PingReq { .. }))
    );
    let s = a.members[&id("n3")].suspicion.as_ref().unwrap();
    assert_eq!(s.accusers.len(), 1);
    // Our own suspicion (from our own probe) does not start a confirmation probe.
    let mut b = node_knowing(4, SwimConfig::for_test());
    quiesce(&mut b);
    let effects = deliver(&mut b, 2, Body::Gossip, vec![suspect(3, 0, 1)], start);
    assert!(sent(&effects).iter().all(|(to, _)| *to != addr(3)));
}

/// After a partition the suspect may probe rarely (its local health is low) but the others
/// probe it: the ack to its ping carries our suspicion (or our verdict that it is dead), so it
/// refutes without waiting for its own probe of us or for a seed retry.
#[test]
fn an_ack_to_a_suspect_or_the_dead_carries_the_claim() {
    let mut a = node_knowing(4, SwimConfig::for_test());
    quiesce(&mut a);
    let start = secs(1);
    // Member `from` pings n1 (`a`) with `seq`; what `a` sends back.
    let ping_from = |a: &mut Swim<ChaCha8Rng>, from: u8, seq: u64| {
        let ping = Body::Ping {
            seq,
            target: id("n1"),
        };
        deliver(a, from, ping, vec![], start)
    };
    deliver(&mut a, 2, Body::Gossip, vec![suspect(3, 0, 2)], start);
    let effects = ping_from(&mut a, 3, 9);
    let acks: Vec<_> = sent(&effects)
        .into_iter()
        .filter(|(to, p)| *to == addr(3) && p.body == Body::Ack { seq: 9 })
        .collect();
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0].1.updates.first(), Some(&suspect(3, 0, 1)));
    // A member we declared dead learns it from our ack the same way, and so can refute.
    deliver(&mut a, 2, Body::Gossip, vec![dead(2, 0, 4)], start);
    let effects = ping_from(&mut a, 2, 11);
    let ack = sent(&effects)
        .into_iter()
        .find(|(to, p)| *to == addr(2) && p.body == Body::Ack { seq: 11 })
        .unwrap();
    assert_eq!(ack.1.updates.first(), Some(&dead(2, 0, 1)));
    // An alive member's ack carries no such claim.
    let effects = ping_from(&mut a, 4, 10);
    let ack = sent(&effects)
        .into_iter()
        .find(|(to, _)| *to == addr(4))
        .unwrap();
    assert!(
        ack.1
            .updates
            .iter()
            .all(|u| !matches!(u, Update::Suspect { id: s, .. } if *s == id("n4")))
    );
}

/// A member left alone (every other member dead) contacts its seeds every probe interval,
/// not every `seed_retry_interval`: after a long partition the others may have stopped
/// probing it too, and the seed retry is what brings the halves back together.
#[test]
fn a_member_left_alone_retries_its_seeds_every_probe_interval() {
    let config = SwimConfig::for_test();
    let mut a = node_knowing(2, config.clone());
    quiesce(&mut a);
    let seed_retries = |s: &Swim<ChaCha8Rng>| -> Vec<Duration> {
        s.timers
            .values()
            .filter(|(k, _)| *k == TimerKind::SeedRetry)
            .map(|(_, at)| *at)
            .collect()
    };
    let fire = |s: &mut Swim<ChaCha8Rng>, at: Duration| {
        let token = *s
            .timers
            .iter()
            .find(|(_, (k, _))| *k == TimerKind::SeedRetry)
            .unwrap()
            .0;
        assert!(s.handle_timer(Timer { token }, at));
        drain(s)
    };
    // Knowing another member alive: the long interval.
    fire(&mut a, secs(10));
    assert_eq!(
        seed_retries(&a),
        vec![secs(10) + config.seed_retry_interval]
    );
    let start = secs(100);
    deliver(&mut a, 2, Body::Gossip, vec![dead(2, 0, 3)], start);
    assert_eq!(seed_retries(&a), vec![start + config.probe_interval]);
    // Each retry while alone contacts the seeds and comes back one probe interval later.
    let at = start + config.probe_interval;
    assert!(
        sent(&fire(&mut a, at)).iter().any(|(to, _)| *to == addr(2)),
        "the member believed dead is contacted"
    );
    assert_eq!(seed_retries(&a), vec![at + config.probe_interval]);
}
