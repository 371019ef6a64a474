//! Merkle anti-entropy between two replicas of one partition, as a state machine without
//! I/O (like SWIM and hinted handoff). The runtime's anti-entropy task drives one
//! [`Exchange`] at a time per peer and partition.
//!
//! # The exchange
//!
//! The initiator holds a snapshot of its own partition tree (16-ary, [`DEPTH`] levels below
//! the root, incrementally maintained by the store). It asks the peer for the children of the
//! root, compares them with its own, and descends only into the children that differ, one
//! level per round trip, down to the leaves. For the leaves that differ it compares the
//! `(key, value hash)` lists of both sides, in chunks of at most [`LEAVES_PER_STEP`] leaves,
//! and repairs what differs in both directions, in batches of at most
//! [`KEYS_PER_STEP`] keys:
//!
//! - a key only the peer has, or with another hash on each side, is fetched from the peer and
//!   merged locally;
//! - a key only this node has, or with another hash on each side, is then pushed to the peer
//!   (after the local merge, so a key that differed on both sides ends equal on both).
//!
//! A subtree that is empty on one side (its hash is the hash of an empty subtree at that
//! level) is not descended: every key under it is missing there, so the side that has them
//! sends all the records of its leaf range at once ([`AeEffect::PushLeaves`],
//! [`AeEffect::FetchLeaves`]), with no key lists. That is what repairs a wiped replica: its
//! records move once, with nothing else but the first level's hashes.
//!
//! Equal trees cost one round trip of 16 hashes. `d` differing keys cost at most `DEPTH`
//! hash round trips, the key lists of the differing leaves, and the records of the `d`
//! keys. Merges are CRDT joins, so an exchange racing with writes, another exchange or hinted
//! handoff is harmless: anything it misses is found by the next one.
//!
//! The runtime compares the roots of many partitions with one request first; to keep that
//! request small when nothing differs, [`roots_summary`] folds the roots into one hash, and
//! [`partition_bitmap`] names the partitions in one bit each.

use std::collections::{BTreeMap, VecDeque};
use std::sync::OnceLock;

use shoal_storage::merkle::{DEPTH, FANOUT};
use shoal_storage::{MerkleTree, NodeHash, ValueHash};

/// Leaves compared per key-list round trip.
pub const LEAVES_PER_STEP: usize = 64;
/// Keys fetched or pushed per repair round trip.
pub const KEYS_PER_STEP: usize = 256;
/// Records per batch of a whole-leaf transfer (a refill) while the node serves no clients
/// (see the runtime's `transfer_batch`): a batch is at most this many, unless a single leaf
/// holds more (a leaf is never split).
pub const TRANSFER_RECORDS: usize = 16 * KEYS_PER_STEP;
/// Records one `AePush` may carry. A leaf holds about 1/4096 of its partition's keys, so a
/// batch of whole leaves reaches this bound only past 64 million keys in one partition.
pub const MAX_PUSH_RECORDS: usize = 4 * TRANSFER_RECORDS;

/// An output of an [`Exchange`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AeEffect {
    /// Ask the peer for the hashes of the children of `nodes` at `level` (`FANOUT` per node,
    /// in order), then call [`handle_hashes`](Exchange::handle_hashes).
    AskHashes {
        /// Level of the nodes (0 = root).
        level: usize,
        /// Their indexes at that level.
        nodes: Vec<u32>,
    },
    /// Read the `(key, value hash)` lists of these leaves locally and from the peer, then call
    /// [`handle_leaf_keys`](Exchange::handle_leaf_keys).
    CompareLeaves {
        /// Leaf indexes.
        leaves: Vec<u16>,
    },
    /// Send the peer every local record of leaves `first..=last` (the peer has none of them),
    /// then call [`handle_transferred`](Exchange::handle_transferred).
    PushLeaves {
        /// First leaf.
        first: u16,
        /// Last leaf (inclusive).
        last: u16,
    },
    /// Fetch every record of leaves `first..=last` from the peer (this node has none of them)
    /// and merge them, then call [`handle_transferred`](Exchange::handle_transferred).
    FetchLeaves {
        /// First leaf.
        first: u16,
        /// Last leaf (inclusive).
        last: u16,
    },
    /// Fetch `fetch` from the peer and merge them locally, then send the local records of
    /// `push` to the peer; then call [`handle_repaired`](Exchange::handle_repaired).
    Repair {
        /// Keys to fetch (the peer has them, or another state of them).
        fetch: Vec<Vec<u8>>,
        /// Keys to push (this node has them, or another state of them).
        push: Vec<Vec<u8>>,
    },
    /// The exchange is over (compared everything, or stopped at an error).
    Done(ExchangeReport),
}

/// What an exchange did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExchangeReport {
    /// Tree nodes and leaves compared.
    pub hashes_compared: u64,
    /// Leaves whose key lists were compared.
    pub leaves_compared: u64,
    /// Leaves sent or fetched whole because the other side had nothing under them.
    pub leaves_transferred: u64,
    /// Keys found different (present on one side only, or different states).
    pub keys_differing: u64,
    /// Keys fetched from the peer.
    pub keys_fetched: u64,
    /// Keys pushed to the peer.
    pub keys_pushed: u64,
    /// Whether every level was compared (no error stopped it).
    pub complete: bool,
    /// Why it stopped early, if it did.
    pub error: Option<String>,
}

#[derive(Debug)]
enum Phase {
    /// Waiting for the children of nodes at this level.
    Hashes {
        level: usize,
        nodes: Vec<u32>,
    },
    /// Comparing key lists of the leaves in flight.
    Leaves,
    /// Repairing a batch.
    Repairing,
    /// Sending (`push`) or fetching a leaf range whole.
    Transferring {
        push: bool,
    },
    Done,
}

/// One comparison of a partition with one peer; see the module docs.
///
/// # Call order
///
/// [`new`](Self::new) with a snapshot of the local tree, then drain
/// [`poll_effect`](Self::poll_effect) after every input and answer each effect with its
/// `handle_*` call (or [`handle_error`](Self::handle_error)). It ends with one
/// [`AeEffect::Done`].
#[derive(Debug)]
pub struct Exchange {
    local: MerkleTree,
    phase: Phase,
    /// Differing leaves not compared yet.
    leaves: VecDeque<u16>,
    /// Leaf ranges to send whole (`true`) or fetch whole (`false`).
    transfers: VecDeque<(u16, u16, bool)>,
    /// Differing keys found, not repaired yet: (key, fetch, push).
    repairs: VecDeque<(Vec<u8>, bool, bool)>,
    report: ExchangeReport,
    effects: VecDeque<AeEffect>,
}

impl Exchange {
    /// An exchange comparing `local` (this node's tree of the partition, taken now) with the
    /// peer's.
    pub fn new(local: MerkleTree) -> Self {
        let mut exchange = Self {
            local,
            phase: Phase::Hashes {
                level: 0,
                nodes: vec![0],
            },
            leaves: VecDeque::new(),
            transfers: VecDeque::new(),
            repairs: VecDeque::new(),
            report: ExchangeReport::default(),
            effects: VecDeque::new(),
        };
        exchange.effects.push_back(AeEffect::AskHashes {
            level: 0,
            nodes: vec![0],
        });
        exchange
    }

    /// Next output, or `None` when all were drained.
    pub fn poll_effect(&mut self) -> Option<AeEffect> {
        self.effects.pop_front()
    }

    /// Whether the exchange is over.
    pub fn is_done(&self) -> bool {
        matches!(self.phase, Phase::Done)
    }

    /// The peer's hashes asked for by the last `AskHashes`: `FANOUT` per node, in order. A
    /// wrong count is a protocol error that ends the exchange.
    pub fn handle_hashes(&mut self, hashes: Vec<NodeHash>) {
        let Phase::Hashes { level, nodes } = &self.phase else {
            return;
        };
        let (level, nodes) = (*level, nodes.clone());
        if hashes.len() != nodes.len() * FANOUT {
            self.handle_error(format!(
                "peer sent {} hashes for {} nodes",
                hashes.len(),
                nodes.len()
            ));
            return;
        }
        let empty = empty_hashes()[level + 1];
        let span = FANOUT.pow((DEPTH - level - 1) as u32) as u32;
        let mut differing = Vec::new();
        let mut whole = Vec::new();
        for (node, theirs) in nodes.iter().zip(hashes.chunks(FANOUT)) {
            let ours = self.local.children(level, *node as usize);
            self.report.hashes_compared += FANOUT as u64;
            for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
                if a == b {
                    continue;
                }
                let child = *node * FANOUT as u32 + i as u32;
                if *b == empty || *a == empty {
                    // One side has nothing under this child: move its records whole.
                    whole.push((child * span, child * span + span - 1, *b == empty));
                } else {
                    differing.push(child);
                }
            }
        }
        for (first, last, push) in whole {
            self.add_transfer(first as u16, last as u16, push);
        }
        if differing.is_empty() {
            self.next_step();
            return;
        }
        if level + 1 < DEPTH {
            self.phase = Phase::Hashes {
                level: level + 1,
                nodes: differing.clone(),
            };
            self.effects.push_back(AeEffect::AskHashes {
                level: level + 1,
                nodes: differing,
            });
        } else {
            self.leaves = differing.into_iter().map(|l| l as u16).collect();
            self.next_step();
        }
    }

    /// The key lists of the leaves of the last `CompareLeaves`: this node's and the peer's,
    /// each `(key, value hash)`.
    pub fn handle_leaf_keys(
        &mut self,
        local: Vec<(Vec<u8>, ValueHash)>,
        remote: Vec<(Vec<u8>, ValueHash)>,
    ) {
        if !matches!(self.phase, Phase::Leaves) {
            return;
        }
        let ours: BTreeMap<Vec<u8>, ValueHash> = local.into_iter().collect();
        let theirs: BTreeMap<Vec<u8>, ValueHash> = remote.into_iter().collect();
        for (key, hash) in &theirs {
            match ours.get(key) {
                Some(h) if h == hash => {}
                Some(_) => self.repairs.push_back((key.clone(), true, true)),
                None => self.repairs.push_back((key.clone(), true, false)),
            }
        }
        for key in ours.keys() {
            if !theirs.contains_key(key) {
                self.repairs.push_back((key.clone(), false, true));
            }
        }
        self.next_step();
    }

    /// The last `Repair` is done (both directions).
    pub fn handle_repaired(&mut self) {
        if matches!(self.phase, Phase::Repairing) {
            self.next_step();
        }
    }

    /// The last [`PushLeaves`](AeEffect::PushLeaves) or
    /// [`FetchLeaves`](AeEffect::FetchLeaves) is done; `keys` records moved.
    pub fn handle_transferred(&mut self, keys: u64) {
        let Phase::Transferring { push } = self.phase else {
            return;
        };
        self.report.keys_differing += keys;
        if push {
            self.report.keys_pushed += keys;
        } else {
            self.report.keys_fetched += keys;
        }
        self.next_step();
    }

    fn add_transfer(&mut self, first: u16, last: u16, push: bool) {
        self.report.leaves_transferred += u64::from(last - first) + 1;
        // Neighbouring ranges in the same direction go as one.
        if let Some(prev) = self.transfers.back_mut()
            && prev.2 == push
            && u32::from(prev.1) + 1 == u32::from(first)
        {
            prev.1 = last;
            return;
        }
        self.transfers.push_back((first, last, push));
    }

    /// The last effect failed (the peer is unreachable, or answered garbage): the exchange
    /// ends, incomplete; what was repaired stays repaired.
    pub fn handle_error(&mut self, error: String) {
        if !self.is_done() {
            self.finish(Some(error));
        }
    }

    /// Repairs first (they free memory), then the next chunk of leaves, then done.
    fn next_step(&mut self) {
        if !self.repairs.is_empty() {
            let take = self.repairs.len().min(KEYS_PER_STEP);
            let (mut fetch, mut push) = (Vec::new(), Vec::new());
            for (key, f, p) in self.repairs.drain(..take) {
                self.report.keys_differing += 1;
                if f {
                    fetch.push(key.clone());
                }
                if p {
                    push.push(key);
                }
            }
            self.report.keys_fetched += fetch.len() as u64;
            self.report.keys_pushed += push.len() as u64;
            self.phase = Phase::Repairing;
            self.effects.push_back(AeEffect::Repair { fetch, push });
            return;
        }
        if let Some((first, last, push)) = self.transfers.pop_front() {
            self.phase = Phase::Transferring { push };
            self.effects.push_back(if push {
                AeEffect::PushLeaves { first, last }
            } else {
                AeEffect::FetchLeaves { first, last }
            });
            return;
        }
        if !self.leaves.is_empty() {
            let take = self.leaves.len().min(LEAVES_PER_STEP);
            let leaves: Vec<u16> = self.leaves.drain(..take).collect();
            self.report.leaves_compared += leaves.len() as u64;
            self.phase = Phase::Leaves;
            self.effects.push_back(AeEffect::CompareLeaves { leaves });
            return;
        }
        self.finish(None);
    }

    fn finish(&mut self, error: Option<String>) {
        self.phase = Phase::Done;
        self.report.complete = error.is_none();
        self.report.error = error;
        self.effects
            .push_back(AeEffect::Done(std::mem::take(&mut self.report)));
    }
}

/// The hash of an empty subtree at each level (index 0 = root, [`DEPTH`] = a leaf).
pub fn empty_hashes() -> &'static [NodeHash; DEPTH + 1] {
    static EMPTY: OnceLock<[NodeHash; DEPTH + 1]> = OnceLock::new();
    EMPTY.get_or_init(|| {
        let tree = MerkleTree::default();
        std::array::from_fn(|level| tree.level(level)[0])
    })
}

/// One hash over `(partition, root)` pairs, in order: equal on two nodes exactly when they
/// hold the same roots for the same partitions (up to 128-bit collisions).
pub fn roots_summary(pairs: impl IntoIterator<Item = (u32, NodeHash)>) -> NodeHash {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for (partition, root) in pairs {
        h.update(&partition.to_le_bytes());
        h.update(&root.to_le_bytes());
    }
    h.digest128()
}

/// An `AeRoots` request naming at most this many partitions is answered with their roots.
pub const ROOTS_DIRECT: usize = 32;
/// Partitions per group summary in the answer to a larger `AeRoots` request.
pub const ROOTS_GROUP: usize = 16;

/// The [`roots_summary`] of each group of [`ROOTS_GROUP`] consecutive `(partition, root)`
/// pairs, in order.
pub fn group_summaries(pairs: &[(u32, NodeHash)]) -> Vec<NodeHash> {
    pairs
        .chunks(ROOTS_GROUP)
        .map(|group| roots_summary(group.iter().copied()))
        .collect()
}

/// Most partitions a bitmap may name (a ring has at most 65536).
pub const MAX_PARTITIONS: usize = 65_536;

/// `partitions` as a bitmap: bit `p % 8` of byte `p / 8` is set for each `p`.
pub fn partition_bitmap(partitions: &[u32]) -> Vec<u8> {
    let len = partitions.iter().max().map_or(0, |&p| p as usize / 8 + 1);
    let mut bits = vec![0u8; len];
    for &p in partitions {
        bits[p as usize / 8] |= 1 << (p % 8);
    }
    bits
}

/// The partitions a [`partition_bitmap`] names, ascending; `None` if it is longer than
/// [`MAX_PARTITIONS`] bits.
pub fn bitmap_partitions(bits: &[u8]) -> Option<Vec<u32>> {
    if bits.len() * 8 > MAX_PARTITIONS {
        return None;
    }
    Some(
        (0..bits.len() * 8)
            .filter(|&p| bits[p / 8] & (1 << (p % 8)) != 0)
            .map(|p| p as u32)
            .collect(),
    )
}

/// The children hashes of `nodes` at `level` in `tree`, `FANOUT` per node, as
/// [`AeEffect::AskHashes`] asks for them. `None` if a level or index is out of range.
pub fn children_hashes(tree: &MerkleTree, level: usize, nodes: &[u32]) -> Option<Vec<NodeHash>> {
    if level >= DEPTH {
        return None;
    }
    let width = tree.level(level).len();
    let mut out = Vec::with_capacity(nodes.len() * FANOUT);
    for &node in nodes {
        if node as usize >= width {
            return None;
        }
        out.extend_from_slice(tree.children(level, node as usize));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use shoal_storage::merkle::{LEAVES, leaf_of};

    use super::*;

    /// A replica as the exchange sees it: key → value hash.
    type Replica = BTreeMap<Vec<u8>, ValueHash>;

    fn tree(replica: &Replica) -> MerkleTree {
        let mut t = MerkleTree::default();
        for (k, h) in replica {
            t.update(k, None, Some(*h));
        }
        t
    }

    fn leaf_keys(replica: &Replica, leaves: &[u16]) -> Vec<(Vec<u8>, ValueHash)> {
        replica
            .iter()
            .filter(|(k, _)| leaves.contains(&leaf_of(k)))
            .map(|(k, h)| (k.clone(), *h))
            .collect()
    }

    /// Merge of two states in this model: the larger hash wins (a join).
    fn join(a: Option<ValueHash>, b: Option<ValueHash>) -> Option<ValueHash> {
        a.max(b)
    }

    /// Runs an exchange between `a` (initiator) and `b` to the end, like the driver does.
    /// Returns the report and the round trips used.
    fn run(a: &mut Replica, b: &mut Replica) -> (ExchangeReport, usize) {
        let mut x = Exchange::new(tree(a));
        let mut trips = 0;
        loop {
            let Some(effect) = x.poll_effect() else {
                panic!("stalled");
            };
            match effect {
                AeEffect::AskHashes { level, nodes } => {
                    trips += 1;
                    x.handle_hashes(children_hashes(&tree(b), level, &nodes).unwrap());
                }
                AeEffect::CompareLeaves { leaves } => {
                    trips += 1;
                    x.handle_leaf_keys(leaf_keys(a, &leaves), leaf_keys(b, &leaves));
                }
                AeEffect::Repair { fetch, push } => {
                    trips += 2;
                    for k in fetch {
                        let merged = join(a.get(&k).copied(), b.get(&k).copied()).unwrap();
                        a.insert(k, merged);
                    }
                    for k in push {
                        let merged = join(a.get(&k).copied(), b.get(&k).copied()).unwrap();
                        b.insert(k, merged);
                    }
                    x.handle_repaired();
                }
                AeEffect::PushLeaves { first, last } | AeEffect::FetchLeaves { first, last } => {
                    let push = matches!(effect, AeEffect::PushLeaves { .. });
                    let (from, to) = if push { (&*a, &mut *b) } else { (&*b, &mut *a) };
                    let moving: Vec<_> = from
                        .iter()
                        .filter(|(k, _)| (first..=last).contains(&leaf_of(k)))
                        .map(|(k, h)| (k.clone(), *h))
                        .collect();
                    assert!(
                        moving.iter().all(|(k, _)| !to.contains_key(k)),
                        "a whole-leaf transfer only goes where nothing is"
                    );
                    trips += moving.len().div_ceil(KEYS_PER_STEP).max(1);
                    let n = moving.len() as u64;
                    to.extend(moving);
                    x.handle_transferred(n);
                }
                AeEffect::Done(report) => return (report, trips),
            }
        }
    }

    fn replica(n: u32, salt: u128) -> Replica {
        (0..n)
            .map(|i| (format!("key-{i}").into_bytes(), u128::from(i) * 7 + salt))
            .collect()
    }

    #[test]
    fn equal_replicas_cost_one_round_trip() {
        let mut a = replica(500, 1);
        let mut b = a.clone();
        let (report, trips) = run(&mut a, &mut b);
        assert_eq!(trips, 1);
        assert!(report.complete);
        assert_eq!(report.keys_differing, 0);
        assert_eq!(report.hashes_compared, FANOUT as u64);
    }

    #[test]
    fn differences_in_both_directions_are_repaired_and_only_they_move() {
        let mut a = replica(2000, 1);
        let mut b = a.clone();
        // Only on a, only on b, and different on each side.
        a.insert(b"only-a".to_vec(), 5);
        b.insert(b"only-b".to_vec(), 6);
        a.insert(b"key-10".to_vec(), 1_000_000);
        b.insert(b"key-20".to_vec(), 2_000_000);
        let (report, _) = run(&mut a, &mut b);
        assert!(report.complete);
        assert_eq!(a, b);
        assert_eq!(report.keys_differing, 4);
        assert_eq!(report.keys_fetched, 3, "only-b and the two changed keys");
        assert_eq!(report.keys_pushed, 3, "only-a and the two changed keys");
        // A second exchange finds nothing.
        let (again, trips) = run(&mut a, &mut b);
        assert_eq!((again.keys_differing, trips), (0, 1));
    }

    #[test]
    fn an_empty_replica_gets_every_record_whole_with_no_key_lists() {
        for (initiator_empty, salt) in [(true, 3), (false, 4)] {
            let (mut a, mut b) = (Replica::new(), replica(3000, salt));
            if !initiator_empty {
                std::mem::swap(&mut a, &mut b);
            }
            let (report, trips) = run(&mut a, &mut b);
            assert_eq!(a, b);
            let (fetched, pushed) = if initiator_empty {
                (3000, 0)
            } else {
                (0, 3000)
            };
            assert_eq!((report.keys_fetched, report.keys_pushed), (fetched, pushed));
            assert_eq!(report.leaves_compared, 0, "no key lists");
            assert_eq!(report.leaves_transferred, LEAVES as u64);
            // The root's children, then the records in batches.
            assert_eq!(trips, 1 + 3000usize.div_ceil(KEYS_PER_STEP));
        }
    }

    #[test]
    fn subtrees_empty_on_one_side_move_whole_and_the_rest_is_compared() {
        let mut a = replica(3000, 1);
        let mut b = a.clone();
        // Every key under the first root child only on a, every key under the second only on
        // b (empty subtrees on the other side), and one changed key elsewhere.
        let span = (LEAVES / FANOUT) as u16;
        a.retain(|k, _| leaf_of(k) / span != 1);
        b.retain(|k, _| leaf_of(k) / span != 0);
        let changed = a.keys().find(|k| leaf_of(k) / span > 1).unwrap().clone();
        a.insert(changed, 99);
        let only_a = a.keys().filter(|k| leaf_of(k) / span == 0).count() as u64;
        let only_b = b.keys().filter(|k| leaf_of(k) / span == 1).count() as u64;
        let (report, _) = run(&mut a, &mut b);
        assert_eq!(a, b);
        assert_eq!(report.leaves_transferred, 2 * u64::from(span));
        assert_eq!(report.keys_pushed, only_a + 1);
        assert_eq!(report.keys_fetched, only_b + 1);
        assert_eq!(report.leaves_compared, 1, "only the changed key's leaf");
    }

    #[test]
    fn roots_summaries_and_partition_bitmaps() {
        let parts = [0u32, 3, 8, 255, 256];
        let bits = partition_bitmap(&parts);
        assert_eq!(bits.len(), 33);
        assert_eq!(bitmap_partitions(&bits).unwrap(), parts);
        assert_eq!(bitmap_partitions(&[]).unwrap(), Vec::<u32>::new());
        assert!(bitmap_partitions(&vec![0xff; MAX_PARTITIONS / 8 + 1]).is_none());
        let roots = [(1, 10u128), (2, 20)];
        assert_eq!(roots_summary(roots), roots_summary(roots));
        assert_ne!(roots_summary(roots), roots_summary([(1, 10u128), (2, 21)]));
        assert_ne!(roots_summary(roots), roots_summary([(1, 10u128)]));
        // Groups of ROOTS_GROUP pairs, the last one shorter; one root changed changes only
        // its group's summary.
        let many: Vec<(u32, u128)> = (0..40u32).map(|p| (p, u128::from(p) * 7)).collect();
        let groups = group_summaries(&many);
        assert_eq!(groups.len(), 3);
        assert_eq!(groups[2], roots_summary(many[32..].iter().copied()));
        let mut changed = many.clone();
        changed[20].1 += 1;
        let other = group_summaries(&changed);
        assert_eq!((groups[0], groups[2]), (other[0], other[2]));
        assert_ne!(groups[1], other[1]);
        assert_eq!(empty_hashes()[DEPTH], 0, "an empty leaf is the empty XOR");
        assert_eq!(empty_hashes()[0], MerkleTree::default().root());
    }

    #[test]
    fn an_error_or_a_malformed_answer_ends_it_incomplete() {
        let mut x = Exchange::new(MerkleTree::default());
        assert!(matches!(x.poll_effect(), Some(AeEffect::AskHashes { .. })));
        x.handle_hashes(vec![1, 2, 3]);
        match x.poll_effect() {
            Some(AeEffect::Done(report)) => {
                assert!(!report.complete);
                assert!(report.error.unwrap().contains("3 hashes"));
            }
            other => panic!("{other:?}"),
        }
        assert!(x.is_done());
        // Late answers change nothing.
        x.handle_repaired();
        x.handle_error("late".into());
        assert_eq!(x.poll_effect(), None);
    }

    #[test]
    fn children_hashes_refuses_out_of_range_requests() {
        let t = MerkleTree::default();
        assert_eq!(children_hashes(&t, 0, &[0]).unwrap().len(), FANOUT);
        assert!(children_hashes(&t, 0, &[1]).is_none());
        assert!(children_hashes(&t, DEPTH, &[0]).is_none());
        assert_eq!(
            children_hashes(&t, DEPTH - 1, &[0, 255]).unwrap().len(),
            2 * FANOUT
        );
    }
}
