//! Property tests of the CRDT values: the semilattice laws for every type, convergence of
//! replicas that exchange states in any order, and agreement with sequential models.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use shoal_storage::codec::encode_value;

fn enc(v: &Value) -> Vec<u8> {
    encode_value(v).unwrap()
}
use shoal_storage::{Actor, Kind, MapOp, SetOp, Update, Value, View};

const REPLICAS: usize = 3;

fn actor(i: usize) -> Actor {
    Actor {
        node: i as u64 + 1,
        epoch: 42,
    }
}

/// An event of a run: an update at a replica, or a replica receiving another's state.
#[derive(Clone, Debug)]
enum Event {
    Update(usize, Update),
    Sync { from: usize, to: usize },
}

fn element() -> impl Strategy<Value = Vec<u8>> {
    (0u8..4).prop_map(|b| vec![b'a' + b])
}

fn update(kind: Kind) -> BoxedStrategy<Update> {
    match kind {
        Kind::Counter => prop_oneof![
            5 => (-5i64..10).prop_map(Update::CounterAdd),
            1 => Just(Update::Delete),
        ]
        .boxed(),
        Kind::Set => prop_oneof![
            4 => prop::collection::vec(element(), 1..3).prop_map(|m| Update::Set(SetOp::Add(m))),
            3 => prop::collection::vec(element(), 1..3).prop_map(|m| Update::Set(SetOp::Remove(m))),
            1 => Just(Update::Delete),
        ]
        .boxed(),
        Kind::Register => prop_oneof![
            5 => element().prop_map(|value| Update::RegisterPut { value, context: None }),
            1 => Just(Update::Delete),
        ]
        .boxed(),
        Kind::Map => prop_oneof![
            (element(), -3i64..5)
                .prop_map(|(field, delta)| Update::Map(MapOp::Counter { field, delta })),
            (element(), element()).prop_map(|(field, m)| Update::Map(MapOp::Set {
                field,
                op: SetOp::Add(vec![m])
            })),
            (element(), element()).prop_map(|(field, m)| Update::Map(MapOp::Set {
                field,
                op: SetOp::Remove(vec![m])
            })),
            (element(), element()).prop_map(|(field, value)| Update::Map(MapOp::Register {
                field,
                value,
                context: None
            })),
            element().prop_map(|field| Update::Map(MapOp::Remove { field })),
            Just(Update::Delete),
        ]
        .boxed(),
    }
}

fn events(kind: Kind, len: usize) -> impl Strategy<Value = Vec<Event>> {
    let event = prop_oneof![
        3 => (0..REPLICAS, update(kind)).prop_map(|(r, u)| Event::Update(r, u)),
        1 => (0..REPLICAS, 0..REPLICAS).prop_map(|(from, to)| Event::Sync { from, to }),
    ];
    prop::collection::vec(event, 0..len)
}

fn run(kind: Kind, events: &[Event]) -> Vec<Value> {
    let mut replicas = vec![Value::empty(kind); REPLICAS];
    for event in events {
        match event {
            Event::Update(r, u) => replicas[*r].apply(actor(*r), u).unwrap(),
            Event::Sync { from, to } => {
                let state = replicas[*from].clone();
                replicas[*to].merge(state).unwrap();
            }
        }
    }
    replicas
}

fn join(mut a: Value, b: &Value) -> Value {
    a.merge(b.clone()).unwrap();
    a
}

fn merge_in_order(replicas: &[Value], order: &[usize]) -> Value {
    let mut acc = Value::empty(replicas[0].kind());
    for &i in order {
        acc = join(acc, &replicas[i]);
    }
    acc
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        Just(Kind::Counter),
        Just(Kind::Set),
        Just(Kind::Register),
        Just(Kind::Map)
    ]
}

fn order() -> impl Strategy<Value = Vec<usize>> {
    Just((0..REPLICAS).collect::<Vec<_>>()).prop_shuffle()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn merge_is_commutative_associative_idempotent(
        (kind, events) in kind().prop_flat_map(|k| (Just(k), events(k, 40)))
    ) {
        let r = run(kind, &events);
        let (a, b, c) = (&r[0], &r[1], &r[2]);
        prop_assert_eq!(join(a.clone(), b), join(b.clone(), a));
        prop_assert_eq!(join(join(a.clone(), b), c), join(a.clone(), &join(b.clone(), c)));
        prop_assert_eq!(join(a.clone(), a), a.clone());
        // Equal states have equal canonical encodings (the Merkle value hash relies on it).
        prop_assert_eq!(enc(&join(a.clone(), b)), enc(&join(b.clone(), a)));
        prop_assert_eq!(
            enc(&join(join(a.clone(), b), c)),
            enc(&join(a.clone(), &join(b.clone(), c)))
        );
    }

    #[test]
    fn any_merge_order_gives_one_state(
        (kind, events, o1, o2) in kind().prop_flat_map(|k| (Just(k), events(k, 60), order(), order()))
    ) {
        let r = run(kind, &events);
        let x = merge_in_order(&r, &o1);
        let y = merge_in_order(&r, &o2);
        prop_assert_eq!(enc(&x), enc(&y));
        prop_assert_eq!(x.view(), y.view());
    }

    /// Counter: the merged value is the sum of all deltas.
    #[test]
    fn counter_matches_sum(events in events(Kind::Counter, 60), o in order()) {
        let events: Vec<Event> = events.into_iter().filter(|e| !matches!(e, Event::Update(_, Update::Delete))).collect();
        let sum: i128 = events.iter().map(|e| match e { Event::Update(_, Update::CounterAdd(d)) => *d as i128, _ => 0 }).sum();
        let merged = merge_in_order(&run(Kind::Counter, &events), &o);
        prop_assert_eq!(merged.view(), View::Counter(sum));
    }

    /// Add-wins set: an element is present exactly when some add of it is not causally followed
    /// by a remove (a remove or delete covers the adds its replica has seen).
    #[test]
    fn set_matches_add_wins_model(events in events(Kind::Set, 60), o in order()) {
        let merged = merge_in_order(&run(Kind::Set, &events), &o);
        // Model: each add is an event id; a replica's history is the set of adds it has seen.
        let mut history: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); REPLICAS];
        let mut adds: Vec<Vec<u8>> = Vec::new();
        let mut removed: BTreeSet<(usize, Vec<u8>)> = BTreeSet::new();
        for event in &events {
            match event {
                Event::Update(r, Update::Set(SetOp::Add(members))) => {
                    for m in members {
                        adds.push(m.clone());
                        history[*r].insert(adds.len() - 1);
                    }
                }
                Event::Update(r, Update::Set(SetOp::Remove(members))) => {
                    for &id in &history[*r] {
                        if members.contains(&adds[id]) {
                            removed.insert((id, adds[id].clone()));
                        }
                    }
                }
                Event::Update(r, Update::Delete) => {
                    for &id in &history[*r] {
                        removed.insert((id, adds[id].clone()));
                    }
                }
                Event::Sync { from, to } => {
                    let seen = history[*from].clone();
                    history[*to].extend(seen);
                }
                Event::Update(_, other) => unreachable!("{other:?}"),
            }
        }
        let expected: BTreeSet<Vec<u8>> = adds
            .iter()
            .enumerate()
            .filter(|(id, m)| !removed.contains(&(*id, (*m).clone())))
            .map(|(_, m)| m.clone())
            .collect();
        prop_assert_eq!(merged.view(), View::Set(expected));
    }

    /// Multi-value register: the values are those of the writes no other write has seen.
    #[test]
    fn register_matches_multi_value_model(events in events(Kind::Register, 60), o in order()) {
        let events: Vec<Event> = events.into_iter().filter(|e| !matches!(e, Event::Update(_, Update::Delete))).collect();
        let merged = merge_in_order(&run(Kind::Register, &events), &o);
        let mut history: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); REPLICAS];
        let mut writes: Vec<(Vec<u8>, BTreeSet<usize>)> = Vec::new();
        for event in &events {
            match event {
                Event::Update(r, Update::RegisterPut { value, .. }) => {
                    writes.push((value.clone(), history[*r].clone()));
                    history[*r].insert(writes.len() - 1);
                }
                Event::Sync { from, to } => {
                    let seen = history[*from].clone();
                    history[*to].extend(seen);
                }
                Event::Update(_, other) => unreachable!("{other:?}"),
            }
        }
        let mut expected: Vec<Vec<u8>> = (0..writes.len())
            .filter(|id| !writes.iter().any(|(_, seen)| seen.contains(id)))
            .map(|id| writes[id].0.clone())
            .collect();
        expected.sort();
        expected.dedup();
        match merged.view() {
            View::Register(r) => prop_assert_eq!(r.values, expected),
            other => prop_assert!(false, "not a register: {:?}", other),
        }
    }
}

/// The case that broke riak_dt's ORSWOT once: add x at A, add x at B, copy A to C, remove x at
/// A, copy B to A, remove x at B, merge B with merge(A, C): x must be absent.
#[test]
fn riak_dt_orswot_regression() {
    let x = b"x".to_vec();
    let (a_actor, b_actor) = (actor(0), actor(1));
    let mut a = Value::empty(Kind::Set);
    let mut b = Value::empty(Kind::Set);
    a.apply(a_actor, &Update::Set(SetOp::Add(vec![x.clone()])))
        .unwrap();
    b.apply(b_actor, &Update::Set(SetOp::Add(vec![x.clone()])))
        .unwrap();
    let c = a.clone();
    a.apply(a_actor, &Update::Set(SetOp::Remove(vec![x.clone()])))
        .unwrap();
    a.merge(b.clone()).unwrap();
    b.apply(b_actor, &Update::Set(SetOp::Remove(vec![x.clone()])))
        .unwrap();
    let merged = join(b, &join(a, &c));
    assert_eq!(merged.view(), View::Set(BTreeSet::new()));
}

/// A register write with a read context supersedes exactly the siblings that context covers.
#[test]
fn register_context_supersedes_siblings() {
    let mut a = Value::empty(Kind::Register);
    let mut b = Value::empty(Kind::Register);
    a.apply(
        actor(0),
        &Update::RegisterPut {
            value: b"1".to_vec(),
            context: None,
        },
    )
    .unwrap();
    b.apply(
        actor(1),
        &Update::RegisterPut {
            value: b"2".to_vec(),
            context: None,
        },
    )
    .unwrap();
    let both = join(a.clone(), &b);
    let View::Register(read) = both.view() else {
        panic!()
    };
    assert_eq!(read.values, vec![b"1".to_vec(), b"2".to_vec()]);
    // A write with that context at a replica that has seen only one sibling still replaces both.
    a.apply(
        actor(0),
        &Update::RegisterPut {
            value: b"3".to_vec(),
            context: Some(read.context),
        },
    )
    .unwrap();
    let View::Register(after) = join(a, &b).view() else {
        panic!()
    };
    assert_eq!(after.values, vec![b"3".to_vec()]);
}

/// Map fields: counters, sets and registers side by side; a removed field's concurrent update
/// survives, what the remover observed does not.
#[test]
fn map_fields_and_remove() {
    let mut a = Value::empty(Kind::Map);
    let f = b"f".to_vec();
    a.apply(
        actor(0),
        &Update::Map(MapOp::Counter {
            field: f.clone(),
            delta: 4,
        }),
    )
    .unwrap();
    a.apply(
        actor(0),
        &Update::Map(MapOp::Set {
            field: f.clone(),
            op: SetOp::Add(vec![b"m".to_vec()]),
        }),
    )
    .unwrap();
    let mut b = a.clone();
    b.apply(
        actor(1),
        &Update::Map(MapOp::Counter {
            field: f.clone(),
            delta: 1,
        }),
    )
    .unwrap();
    a.apply(actor(0), &Update::Map(MapOp::Remove { field: f.clone() }))
        .unwrap();
    let View::Map(fields) = join(a, &b).view() else {
        panic!()
    };
    assert_eq!(fields.len(), 1);
    let field = &fields[&f];
    assert_eq!(
        field.counter,
        Some(1),
        "the concurrent increment survives, the observed ones do not"
    );
    assert_eq!(field.set, None, "the observed set add was removed");
    assert_eq!(field.register, None);
}

/// Found by `merge_is_commutative_associative_idempotent` against `crdts::Map`: a field removed
/// and then re-created by the same actor, merged with a replica that still has the old field,
/// must not bring back the removed member, in any merge order.
#[test]
fn map_field_removed_and_recreated() {
    let f = b"b".to_vec();
    let a_actor = actor(0);
    let mut r0 = Value::empty(Kind::Map);
    r0.apply(
        a_actor,
        &Update::Map(MapOp::Set {
            field: f.clone(),
            op: SetOp::Add(vec![b"a".to_vec()]),
        }),
    )
    .unwrap();
    let r2 = r0.clone();
    r0.apply(a_actor, &Update::Map(MapOp::Remove { field: f.clone() }))
        .unwrap();
    let r1 = r0.clone();
    r0.apply(
        a_actor,
        &Update::Map(MapOp::Set {
            field: f.clone(),
            op: SetOp::Remove(vec![b"a".to_vec()]),
        }),
    )
    .unwrap();
    let left = join(join(r0.clone(), &r1), &r2);
    let right = join(r0, &join(r1, &r2));
    assert_eq!(left, right);
    assert_eq!(left.view(), View::Map(BTreeMap::new()));
}
