//! One test suite for the engine over both stores: RocksDB and memory.

use std::collections::BTreeSet;
use std::sync::Arc;

use shoal_storage::{
    Column, Engine, Kind, Limit, MAX_KEY_LEN, MAX_MEMBERS_PER_OP, MemoryStore, Record, RocksStore,
    SetOp, StorageError, Store, Update, View,
};
use tempfile::TempDir;

/// Builds engines for the suite; `reopen` gives a fresh engine over the same data where the
/// store is durable.
trait Harness {
    type S: Store;
    fn engine(&self) -> Engine<Self::S>;
}

struct Rocks(TempDir);
impl Harness for Rocks {
    type S = RocksStore;
    fn engine(&self) -> Engine<RocksStore> {
        Engine::open(RocksStore::open(self.0.path()).unwrap(), "node-a").unwrap()
    }
}

struct Memory;
impl Harness for Memory {
    type S = MemoryStore;
    fn engine(&self) -> Engine<MemoryStore> {
        Engine::open(MemoryStore::new(), "node-a").unwrap()
    }
}

fn set_add(members: &[&str]) -> Update {
    Update::Set(SetOp::Add(
        members.iter().map(|m| m.as_bytes().to_vec()).collect(),
    ))
}

fn members(view: View) -> BTreeSet<String> {
    match view {
        View::Set(s) => s
            .into_iter()
            .map(|m| String::from_utf8(m).unwrap())
            .collect(),
        other => panic!("not a set: {other:?}"),
    }
}

fn apply_and_read<S: Store>(e: &Engine<S>) {
    e.apply(1, b"c", &Update::CounterAdd(5)).unwrap();
    e.apply(1, b"c", &Update::CounterAdd(-2)).unwrap();
    assert_eq!(e.get(1, b"c").unwrap().unwrap().view(), View::Counter(3));
    e.apply(1, b"s", &set_add(&["x", "y"])).unwrap();
    e.apply(1, b"s", &Update::Set(SetOp::Remove(vec![b"x".to_vec()])))
        .unwrap();
    assert_eq!(
        members(e.get(1, b"s").unwrap().unwrap().view()),
        BTreeSet::from(["y".to_string()])
    );
    e.apply(
        2,
        b"r",
        &Update::RegisterPut {
            value: b"v1".to_vec(),
            context: None,
        },
    )
    .unwrap();
    match e.get(2, b"r").unwrap().unwrap().view() {
        View::Register(r) => assert_eq!(r.values, vec![b"v1".to_vec()]),
        other => panic!("{other:?}"),
    }
    assert!(e.get(1, b"missing").unwrap().is_none());
}

fn wrong_type_changes_nothing<S: Store>(e: &Engine<S>) {
    e.apply(1, b"k", &Update::CounterAdd(1)).unwrap();
    let before = e.get_record(1, b"k").unwrap().unwrap();
    let root = e.merkle_root(1);
    let err = e.apply(1, b"k", &set_add(&["x"])).unwrap_err();
    assert!(
        matches!(
            err,
            StorageError::WrongType {
                stored: Kind::Counter,
                update: Kind::Set
            }
        ),
        "{err}"
    );
    assert_eq!(e.get_record(1, b"k").unwrap().unwrap(), before);
    assert_eq!(e.merkle_root(1), root);
}

fn limits_are_errors<S: Store>(e: &Engine<S>) {
    let long_key = vec![b'k'; MAX_KEY_LEN + 1];
    let err = e.apply(1, &long_key, &Update::CounterAdd(1)).unwrap_err();
    assert!(
        matches!(
            err,
            StorageError::TooLarge {
                limit: Limit::Key,
                ..
            }
        ),
        "{err}"
    );
    let many: Vec<Vec<u8>> = (0..=MAX_MEMBERS_PER_OP)
        .map(|i| i.to_string().into_bytes())
        .collect();
    let err = e
        .apply(1, b"s", &Update::Set(SetOp::Add(many)))
        .unwrap_err();
    assert!(
        matches!(
            err,
            StorageError::TooLarge {
                limit: Limit::MembersPerOp,
                ..
            }
        ),
        "{err}"
    );
    // A value that grows past 1 MiB: each add is in bounds, the merged result is not.
    let big: Vec<Vec<u8>> = (0..20).map(|i| vec![i as u8; 60 * 1024]).collect();
    let err = e.apply(1, b"s", &Update::Set(SetOp::Add(big))).unwrap_err();
    assert!(
        matches!(
            err,
            StorageError::TooLarge {
                limit: Limit::Value,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        e.get(1, b"s").unwrap().is_none(),
        "a failed update stores nothing"
    );
    assert!(e.get(1, &vec![b'k'; MAX_KEY_LEN]).unwrap().is_none());
}

fn corrupt_record_is_never_served<S: Store>(e: &Engine<S>) {
    e.apply(3, b"k", &set_add(&["x"])).unwrap();
    let sound = e.get_record(3, b"k").unwrap().unwrap();
    // Find the stored bytes and flip one byte in each position class: header, checksum, payload.
    let mut dk = None;
    e.store()
        .scan_prefix(Column::Data, &3u32.to_be_bytes(), &mut |k, _| {
            dk = Some(k.to_vec());
            false
        })
        .unwrap();
    let dk = dk.unwrap();
    // Flip a byte of the header, the checksum and the payload; truncate; write garbage.
    let mut damaged: Vec<Vec<u8>> = [1, 5, sound.as_bytes().len() - 1]
        .into_iter()
        .map(|position| {
            let mut bytes = sound.as_bytes().to_vec();
            bytes[position] ^= 0x40;
            bytes
        })
        .collect();
    damaged.push(vec![1u8, 2]);
    damaged.push(b"garbage that is long enough to have a header".to_vec());
    for bytes in damaged {
        e.store()
            .write(vec![shoal_storage::BatchOp::Put(
                Column::Data,
                dk.clone(),
                bytes,
            )])
            .unwrap();
        let err = e.get(3, b"k").unwrap_err();
        assert!(matches!(err, StorageError::Corrupt(_)), "{err}");
        assert!(matches!(
            e.apply(3, b"k", &set_add(&["y"])),
            Err(StorageError::Corrupt(_))
        ));
    }
    // The tree shows the key as different from the sound state, and a merge from a healthy
    // replica repairs it.
    let healthy = Engine::open(MemoryStore::new(), "node-b").unwrap();
    healthy.merge(3, b"k", &sound).unwrap();
    assert_ne!(e.merkle_root(3), healthy.merkle_root(3));
    let written = e.merge(3, b"k", &sound).unwrap();
    assert!(written.repaired);
    assert_eq!(e.get_record(3, b"k").unwrap().unwrap(), sound);
    assert_eq!(e.merkle_root(3), healthy.merkle_root(3));
}

fn merge_is_idempotent_and_reports_change<S: Store>(e: &Engine<S>) {
    let other = Engine::open(MemoryStore::new(), "node-b").unwrap();
    let w = other.apply(4, b"k", &set_add(&["b"])).unwrap();
    let record = w.record.unwrap();
    e.apply(4, b"k", &set_add(&["a"])).unwrap();
    assert!(e.merge(4, b"k", &record).unwrap().changed);
    assert!(!e.merge(4, b"k", &record).unwrap().changed);
    let both = BTreeSet::from(["a".to_string(), "b".to_string()]);
    assert_eq!(members(e.get(4, b"k").unwrap().unwrap().view()), both);
    // A counter's state does not merge into a set.
    let counter = other
        .apply(4, b"c", &Update::CounterAdd(1))
        .unwrap()
        .record
        .unwrap();
    assert!(matches!(
        e.merge(4, b"k", &counter),
        Err(StorageError::WrongType { .. })
    ));
}

fn delete_is_causal<S: Store>(e: &Engine<S>) {
    let other = Engine::open(MemoryStore::new(), "node-b").unwrap();
    e.apply(5, b"s", &set_add(&["x"])).unwrap();
    let before_delete = e.get_record(5, b"s").unwrap().unwrap();
    other.merge(5, b"s", &before_delete).unwrap();
    e.apply(5, b"s", &Update::Delete).unwrap();
    assert!(!e.get(5, b"s").unwrap().unwrap().is_present());
    // A concurrent add at another replica survives the delete; the stale state does not
    // resurrect the deleted member.
    let concurrent = other
        .apply(5, b"s", &set_add(&["y"]))
        .unwrap()
        .record
        .unwrap();
    e.merge(5, b"s", &concurrent).unwrap();
    assert_eq!(
        members(e.get(5, b"s").unwrap().unwrap().view()),
        BTreeSet::from(["y".to_string()])
    );
    // Counter: the deleted amount is gone, later increments count.
    e.apply(5, b"c", &Update::CounterAdd(7)).unwrap();
    e.apply(5, b"c", &Update::Delete).unwrap();
    assert!(!e.get(5, b"c").unwrap().unwrap().is_present());
    e.apply(5, b"c", &Update::CounterAdd(2)).unwrap();
    assert_eq!(e.get(5, b"c").unwrap().unwrap().view(), View::Counter(2));
    // The type stays fixed after a delete.
    assert!(matches!(
        e.apply(5, b"c", &set_add(&["x"])),
        Err(StorageError::WrongType { .. })
    ));
    // Deleting a key that never existed stores nothing.
    let w = e.apply(5, b"never", &Update::Delete).unwrap();
    assert!(w.value.is_none() && !w.changed);
    assert!(e.get(5, b"never").unwrap().is_none());
}

fn concurrent_updates_of_one_key_are_all_kept<S: Store>(e: Engine<S>) {
    let e = Arc::new(e);
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let e = e.clone();
            std::thread::spawn(move || {
                for i in 0..50 {
                    e.apply(6, b"hot", &Update::CounterAdd(1)).unwrap();
                    e.apply(6, b"hotset", &set_add(&[&format!("{t}-{i}")]))
                        .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(
        e.get(6, b"hot").unwrap().unwrap().view(),
        View::Counter(200)
    );
    assert_eq!(
        members(e.get(6, b"hotset").unwrap().unwrap().view()).len(),
        200
    );
}

fn hints_merge_per_key_and_delete_only_delivered<S: Store>(e: &Engine<S>) {
    let other = Engine::open(MemoryStore::new(), "node-b").unwrap();
    let r1 = other
        .apply(7, b"k1", &set_add(&["a"]))
        .unwrap()
        .record
        .unwrap();
    let r2 = other
        .apply(7, b"k1", &set_add(&["b"]))
        .unwrap()
        .record
        .unwrap();
    let r3 = other
        .apply(8, b"k2", &Update::CounterAdd(3))
        .unwrap()
        .record
        .unwrap();
    e.put_hint("node-c", 7, b"k1", &r1).unwrap();
    e.put_hint("node-c", 7, b"k1", &r2).unwrap();
    e.put_hint("node-c", 8, b"k2", &r3).unwrap();
    e.put_hint("node-d", 8, b"k2", &r3).unwrap();
    let backlog = e.hint_backlog();
    assert_eq!(backlog["node-c"].keys, 2, "hints merge per key");
    assert_eq!(backlog["node-d"].keys, 1);
    assert!(backlog["node-c"].oldest_ms.is_some());
    let hints = e.hints("node-c", None, 10).unwrap();
    assert_eq!(hints.len(), 2);
    assert_eq!(hints[0].key, b"k1");
    assert_eq!(members(hints[0].record.decode().unwrap().view()).len(), 2);
    // Paging: start after the first.
    let rest = e
        .hints("node-c", Some((hints[0].partition, &hints[0].key)), 10)
        .unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].key, b"k2");
    // A hint updated after it was read for delivery is not deleted by that delivery.
    let delivered = hints[0].record.hash();
    let r4 = other
        .apply(7, b"k1", &set_add(&["c"]))
        .unwrap()
        .record
        .unwrap();
    e.put_hint("node-c", 7, b"k1", &r4).unwrap();
    assert_eq!(
        e.remove_delivered_hints("node-c", &[(7, b"k1".to_vec(), delivered)])
            .unwrap(),
        0
    );
    let current = e.hints("node-c", None, 1).unwrap()[0].record.hash();
    // One write deletes both; a key with no hint is passed over.
    assert_eq!(
        e.remove_delivered_hints(
            "node-c",
            &[
                (7, b"k1".to_vec(), current),
                (8, b"k2".to_vec(), r3.hash()),
                (8, b"none".to_vec(), r3.hash()),
            ]
        )
        .unwrap(),
        2
    );
    assert!(e.hints("node-c", None, 10).unwrap().is_empty());
    assert_eq!(
        e.hints("node-d", None, 10).unwrap().len(),
        1,
        "other targets untouched"
    );
}

fn merkle_tracks_writes<S: Store>(e: &Engine<S>) {
    for i in 0..200u32 {
        e.apply(9, &i.to_be_bytes(), &Update::CounterAdd(i as i64))
            .unwrap();
    }
    assert_eq!(e.merkle_tree(9), e.rebuild_merkle_tree(9).unwrap());
    let mut listed = 0;
    for leaf in 0..shoal_storage::merkle::LEAVES as u16 {
        for (key, hash) in e.leaf_keys(9, leaf).unwrap() {
            assert_eq!(e.get_record(9, &key).unwrap().unwrap().hash(), hash);
            listed += 1;
        }
    }
    assert_eq!(listed, 200);
    assert!(e.partitions().contains(&9));
    // Whole leaves in batches: every record once, in leaf order, resuming where it stopped.
    let last = shoal_storage::merkle::LEAVES as u16 - 1;
    let (mut first, mut seen) = (0u16, Vec::new());
    loop {
        let (records, next) = e.leaf_records(9, first, last, 16).unwrap();
        let leaves: std::collections::BTreeSet<u16> = records
            .iter()
            .map(|(k, _)| shoal_storage::merkle::leaf_of(k))
            .collect();
        assert!(
            records.len() <= 16 || leaves.len() == 1,
            "at most the limit, unless one leaf holds more: {} records",
            records.len()
        );
        if let Some(next) = next {
            assert!(
                records.len() + e.leaf_keys(9, next).unwrap().len() > 16,
                "stops only when the next leaf does not fit"
            );
        }
        for (key, raw) in records {
            assert_eq!(e.get_record(9, &key).unwrap().unwrap().as_bytes(), &raw[..]);
            seen.push(shoal_storage::merkle::leaf_of(&key));
        }
        match next {
            Some(leaf) => first = leaf,
            None => break,
        }
    }
    assert_eq!(seen.len(), 200);
    assert!(seen.is_sorted(), "leaf order");
    let (one_leaf, next) = e.leaf_records(9, seen[0], seen[0], 1000).unwrap();
    assert_eq!(
        (one_leaf.len(), next),
        (e.leaf_keys(9, seen[0]).unwrap().len(), None)
    );
}

fn write_ahead_hints_are_written_with_the_update_and_removed_once_confirmed<S: Store>(
    e: &Engine<S>,
) {
    let first = e
        .apply_with_hints(3, b"k", &set_add(&["a"]), &["node-b", "node-c"])
        .unwrap();
    let r1 = first.record.unwrap();
    let backlog = e.hint_backlog();
    assert_eq!((backlog["node-b"].keys, backlog["node-c"].keys), (1, 1));
    let held = &e.hints("node-b", None, 10).unwrap()[0];
    assert_eq!(
        held.record.hash(),
        r1.hash(),
        "the hint holds the new state"
    );

    // A second update before confirmation: the hints merge to the newest state, and
    // confirming the first state no longer removes them.
    let r2 = e
        .apply_with_hints(3, b"k", &set_add(&["b"]), &["node-b", "node-c"])
        .unwrap()
        .record
        .unwrap();
    let confirm = |hash| {
        ["node-b", "node-c"]
            .iter()
            .map(|t| {
                e.remove_delivered_hints(t, &[(3, b"k".to_vec(), hash)])
                    .unwrap()
            })
            .sum::<usize>()
    };
    assert_eq!(confirm(r1.hash()), 0);
    assert_eq!(
        members(
            e.hints("node-c", None, 10).unwrap()[0]
                .record
                .decode()
                .unwrap()
                .view()
        ),
        BTreeSet::from(["a".to_string(), "b".to_string()])
    );
    assert_eq!(confirm(r2.hash()), 2);
    assert!(e.hint_backlog().is_empty());
    // A bad target changes nothing, not even the data.
    assert!(
        e.apply_with_hints(3, b"k", &set_add(&["c"]), &[""])
            .is_err()
    );
    assert_eq!(e.get_record(3, b"k").unwrap().unwrap().hash(), r2.hash());
}

fn stats_count_the_data<S: Store>(e: &Engine<S>) {
    assert_eq!(e.stats().unwrap().keys, 0);
    for i in 0..10u32 {
        e.apply(1, &i.to_be_bytes(), &set_add(&["m"])).unwrap();
    }
    let stats = e.stats().unwrap();
    assert!(stats.keys >= 1 && stats.bytes > 0, "{stats:?}");
}

fn app_metadata_is_kept_apart<S: Store>(e: &Engine<S>) {
    assert_eq!(e.get_meta("cluster").unwrap(), None);
    e.put_meta("cluster", b"v1").unwrap();
    e.put_meta("cluster", b"v2").unwrap();
    // Names that look like the engine's own metadata do not touch it.
    e.put_meta("epoch", b"x").unwrap();
    assert_eq!(e.get_meta("cluster").unwrap().as_deref(), Some(&b"v2"[..]));
    assert_eq!(e.get_meta("epoch").unwrap().as_deref(), Some(&b"x"[..]));
    assert_eq!(e.get_meta("other").unwrap(), None);
}

/// A record whose header and checksum are sound but whose payload is not a value: what a
/// faulty peer could send. A merge refuses it whether or not the key exists here, and the rest
/// of its batch is merged.
fn undecodable_payloads_are_refused_by_merge<S: Store>(e: &Engine<S>) {
    let sound = e
        .apply(1, b"k", &Update::CounterAdd(1))
        .unwrap()
        .record
        .unwrap();
    let (version, tag) = (sound.as_bytes()[0], sound.as_bytes()[1]);
    let payload = [0xff; 5];
    let mut bytes = vec![version, tag];
    bytes.extend_from_slice(
        &xxhash_rust::xxh3::xxh3_128(&[&[tag][..], &payload].concat()).to_le_bytes(),
    );
    bytes.extend_from_slice(&payload);
    let bad = Record::from_bytes(bytes).expect("the checksum is right");
    let root = e.merkle_root(2);
    let results = e
        .merge_many(&[
            (2, b"absent".to_vec(), bad.clone()),
            (1, b"k".to_vec(), bad.clone()),
            (2, b"other".to_vec(), sound.clone()),
        ])
        .unwrap();
    assert!(matches!(results[0], Err(StorageError::Malformed(_))));
    assert!(matches!(results[1], Err(StorageError::Malformed(_))));
    assert!(results[2].as_ref().unwrap().changed);
    assert_eq!(e.get_record(2, b"absent").unwrap(), None);
    assert_eq!(e.get_record(1, b"k").unwrap().unwrap(), sound);
    assert_eq!(e.get_record(2, b"other").unwrap().unwrap(), sound);
    e.merge_many(&[(2, b"other".to_vec(), sound.clone())])
        .unwrap()
        .into_iter()
        .for_each(|r| assert!(!r.unwrap().changed));
    assert_ne!(e.merkle_root(2), root);
    assert_eq!(e.rebuild_merkle_tree(2).unwrap().root(), e.merkle_root(2));
}

/// A refill: another replica's records of whole leaves merged in one batch, into leaves this
/// replica has keys under (merged with them) and into empty ones (stored as they came; in
/// RocksDB a batch of new keys alone in its range is ingested as a table file).
fn a_refill_batch_merges_into_held_and_empty_leaves<S: Store>(e: &Engine<S>) {
    let source = Engine::open(MemoryStore::new(), "node-b").unwrap();
    for (partition, n) in [(5u32, 3000u32), (6, 1500)] {
        for i in 0..n {
            source
                .apply(partition, &i.to_be_bytes(), &set_add(&[&format!("b{i}")]))
                .unwrap();
        }
    }
    // This replica holds some of partition 5's keys with other members, and a key of its own.
    for i in (0..3000u32).step_by(60) {
        e.apply(5, &i.to_be_bytes(), &set_add(&[&format!("a{i}")]))
            .unwrap();
    }
    e.apply(5, b"own", &set_add(&["own"])).unwrap();
    let last = shoal_storage::merkle::LEAVES as u16 - 1;
    for (partition, n) in [(5u32, 3000u32), (6, 1500)] {
        let (records, next) = source.leaf_records(partition, 0, last, 4096).unwrap();
        assert_eq!((records.len(), next), (n as usize, None));
        let mut items: Vec<_> = records
            .into_iter()
            .map(|(k, raw)| (partition, k, Record::from_bytes(raw).unwrap()))
            .collect();
        items.push(items[3].clone());
        // Every result is against the state before the batch: the key sent twice is new both
        // times.
        let results = e.merge_many(&items).unwrap();
        assert_eq!(results.len(), n as usize + 1);
        assert!(results.iter().all(|r| r.as_ref().unwrap().changed));
        for i in 0..n {
            let mut want = BTreeSet::from([format!("b{i}")]);
            if partition == 5 && i % 60 == 0 {
                want.insert(format!("a{i}"));
            }
            let value = e.get(partition, &i.to_be_bytes()).unwrap().unwrap();
            assert_eq!(
                members(value.view()),
                want,
                "key {i} of partition {partition}"
            );
        }
        assert_eq!(
            e.merkle_tree(partition),
            e.rebuild_merkle_tree(partition).unwrap()
        );
        let again = e.merge_many(&items).unwrap();
        assert!(again.iter().all(|r| !r.as_ref().unwrap().changed));
    }
    assert_eq!(
        members(e.get(5, b"own").unwrap().unwrap().view()),
        BTreeSet::from(["own".to_string()])
    );
    assert_eq!(
        e.merkle_root(6),
        source.merkle_root(6),
        "partition 6 is a copy"
    );
}

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod rocks {
            use super::*;
            $(#[test] fn $name() { let h = Rocks(TempDir::new().unwrap()); super::$name(&h.engine()); })*
            #[test] fn concurrent_updates() { let h = Rocks(TempDir::new().unwrap()); super::concurrent_updates_of_one_key_are_all_kept(h.engine()); }
        }
        mod memory {
            use super::*;
            $(#[test] fn $name() { super::$name(&Memory.engine()); })*
            #[test] fn concurrent_updates() { super::concurrent_updates_of_one_key_are_all_kept(Memory.engine()); }
        }
    };
}

suite!(
    apply_and_read,
    wrong_type_changes_nothing,
    limits_are_errors,
    corrupt_record_is_never_served,
    merge_is_idempotent_and_reports_change,
    delete_is_causal,
    hints_merge_per_key_and_delete_only_delivered,
    merkle_tracks_writes,
    app_metadata_is_kept_apart,
    stats_count_the_data,
    write_ahead_hints_are_written_with_the_update_and_removed_once_confirmed,
    undecodable_payloads_are_refused_by_merge,
    a_refill_batch_merges_into_held_and_empty_leaves,
);

#[test]
fn epoch_is_kept_on_reopen_and_new_after_wipe() {
    let dir = TempDir::new().unwrap();
    let first = Rocks(TempDir::new_in(dir.path()).unwrap());
    let path = first.0.path().to_path_buf();
    let epoch = first.engine().actor().epoch;
    assert_eq!(
        first.engine().actor().epoch,
        epoch,
        "intact directory keeps its epoch"
    );
    std::fs::remove_dir_all(&path).unwrap();
    std::fs::create_dir(&path).unwrap();
    let after_wipe = first.engine().actor().epoch;
    assert_ne!(
        after_wipe, epoch,
        "a directory created anew gets a new epoch"
    );
    assert_eq!(
        first.engine().actor().node,
        shoal_storage::Actor::node_hash("node-a")
    );
}

#[test]
fn data_directory_of_another_node_is_refused() {
    let dir = TempDir::new().unwrap();
    drop(Engine::open(RocksStore::open(dir.path()).unwrap(), "node-a").unwrap());
    let err = Engine::open(RocksStore::open(dir.path()).unwrap(), "node-b")
        .err()
        .unwrap();
    assert!(matches!(err, StorageError::WrongNode { .. }), "{err}");
}

#[test]
fn reopen_restores_the_hint_backlog() {
    let h = Rocks(TempDir::new().unwrap());
    let before = {
        let e = h.engine();
        for i in 0..40u32 {
            e.apply_with_hints(i % 4, &i.to_be_bytes(), &Update::CounterAdd(1), &["b", "c"])
                .unwrap();
        }
        let delivered: Vec<_> = e
            .hints("b", None, 25)
            .unwrap()
            .into_iter()
            .map(|h| (h.partition, h.key, h.record.hash()))
            .collect();
        assert_eq!(e.remove_delivered_hints("b", &delivered).unwrap(), 25);
        e.hint_backlog()
    };
    assert_eq!((before["b"].keys, before["c"].keys), (15, 40));
    let e = h.engine();
    assert_eq!(
        e.hint_backlog(),
        before,
        "the backlog is rebuilt from the store"
    );
    assert!(e.holds_hints("c") && !e.holds_hints("d"));
}

#[test]
fn a_corrupt_hint_is_dropped_and_leaves_the_backlog() {
    let e = Memory.engine();
    e.apply_with_hints(1, b"k", &Update::CounterAdd(1), &["b"])
        .unwrap();
    e.apply_with_hints(1, b"j", &Update::CounterAdd(1), &["b"])
        .unwrap();
    // Damage the record of one hint after its 8-byte creation time.
    let mut hk = vec![1u8, b'b'];
    hk.extend_from_slice(&1u32.to_be_bytes());
    hk.extend_from_slice(b"k");
    let mut raw = e.store().get(Column::Hints, &hk).unwrap().unwrap();
    let last = raw.len() - 1;
    raw[last] ^= 0xff;
    e.store()
        .write(vec![shoal_storage::BatchOp::Put(Column::Hints, hk, raw)])
        .unwrap();
    assert_eq!(e.hint_backlog()["b"].keys, 2);
    let hints = e.hints("b", None, 10).unwrap();
    assert_eq!(hints.len(), 1, "the corrupt hint is not offered");
    assert_eq!(e.hint_backlog()["b"].keys, 1, "and no longer counted");
}

#[test]
fn reopen_restores_data_and_merkle_trees() {
    let h = Rocks(TempDir::new().unwrap());
    let (roots, tree) = {
        let e = h.engine();
        for i in 0..300u32 {
            e.apply(i % 4, &i.to_be_bytes(), &set_add(&[&i.to_string()]))
                .unwrap();
        }
        (
            (0..4).map(|p| e.merkle_root(p)).collect::<Vec<_>>(),
            e.merkle_tree(2),
        )
    };
    let e = h.engine();
    assert_eq!((0..4).map(|p| e.merkle_root(p)).collect::<Vec<_>>(), roots);
    assert_eq!(e.merkle_tree(2), tree);
    assert_eq!(
        members(e.get(1, &5u32.to_be_bytes()).unwrap().unwrap().view()),
        BTreeSet::from(["5".to_string()])
    );
}

#[test]
fn truncated_or_garbage_input_records_are_refused() {
    let e = Memory.engine();
    let sound = e
        .apply(1, b"k", &Update::CounterAdd(1))
        .unwrap()
        .record
        .unwrap();
    let mut bytes = sound.as_bytes().to_vec();
    bytes.truncate(bytes.len() - 1);
    assert!(Record::from_bytes(bytes).is_err());
    assert!(Record::from_bytes(vec![]).is_err());
    assert!(Record::from_bytes(vec![9; 40]).is_err());
    assert_eq!(e.get_record(1, b"k").unwrap().unwrap(), sound);
}
