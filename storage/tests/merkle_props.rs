//! Property tests of the incrementally maintained Merkle trees.

use std::collections::BTreeMap;

use proptest::prelude::*;
use shoal_storage::{MemoryEngine, MemoryStore, SetOp, Update};

fn engine(node: &str) -> MemoryEngine {
    MemoryEngine::open(MemoryStore::new(), node).unwrap()
}

fn write() -> impl Strategy<Value = (u32, u8, Update)> {
    let update = prop_oneof![
        (-3i64..5).prop_map(Update::CounterAdd),
        Just(Update::Delete),
    ];
    (0u32..3, 0u8..30, update)
}

/// Contents as (partition, key) → record bytes.
fn contents(e: &MemoryEngine) -> BTreeMap<(u32, Vec<u8>), Vec<u8>> {
    let mut out = BTreeMap::new();
    for p in e.partitions() {
        e.scan_partition(p, &mut |k, v| {
            out.insert((p, k.to_vec()), v.to_vec());
            true
        })
        .unwrap();
    }
    out
}

fn roots(e: &MemoryEngine) -> Vec<u128> {
    (0..3).map(|p| e.merkle_root(p)).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn incremental_tree_equals_tree_built_from_scratch(writes in prop::collection::vec(write(), 0..200)) {
        let e = engine("a");
        for (p, k, u) in &writes {
            e.apply(*p, &[*k], u).unwrap();
        }
        for p in 0..3 {
            prop_assert_eq!(e.merkle_tree(p), e.rebuild_merkle_tree(p).unwrap());
        }
    }

    /// Replica B receives A's states in another order, possibly missing one key or holding an
    /// extra update of its own: the roots are equal exactly when the contents are.
    #[test]
    fn equal_roots_exactly_when_contents_equal(
        writes in prop::collection::vec(write(), 1..150),
        seed in any::<u64>(),
        variant in 0u8..3,
    ) {
        let a = engine("a");
        for (p, k, u) in &writes {
            a.apply(*p, &[*k], u).unwrap();
        }
        let b = engine("b");
        let mut states: Vec<_> = contents(&a).into_iter().collect();
        // A deterministic shuffle from the seed.
        let n = states.len();
        for i in (1..n).rev() {
            states.swap(i, (seed.wrapping_mul(i as u64 + 1) % (i as u64 + 1)) as usize);
        }
        for (i, ((p, k), raw)) in states.iter().enumerate() {
            if variant == 1 && i == 0 {
                continue; // B misses one key
            }
            b.merge(*p, k, &shoal_storage::Record::from_bytes(raw.clone()).unwrap()).unwrap();
        }
        if variant == 2 {
            b.apply(writes[0].0, &[writes[0].1], &Update::Set(SetOp::Add(vec![b"x".to_vec()]))).ok();
            b.apply(writes[0].0, &[200], &Update::CounterAdd(1)).unwrap();
        }
        let equal_contents = contents(&a) == contents(&b);
        prop_assert_eq!(roots(&a) == roots(&b), equal_contents);
        prop_assert_eq!(equal_contents, variant == 0 || (variant == 1 && n == 0));
    }
}
