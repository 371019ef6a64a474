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
//! Equal trees cost one round trip of 16 hashes. `d` differing keys cost at most `DEPTH`
//! hash round trips, the key lists of the differing leaves, and the records of the `d`
//! keys. Merges are CRDT joins, so an exchange racing with writes, another exchange or hinted
//! handoff is harmless: anything it misses is found by the next one.

use std::collections::{BTreeMap, VecDeque};

use shoal_storage::merkle::{DEPTH, FANOUT};
use shoal_storage::{MerkleTree, NodeHash, ValueHash};

/// Leaves compared per key-list round trip.
pub const LEAVES_PER_STEP: usize = 64;
/// Keys fetched or pushed per repair round trip.
pub const KEYS_PER_STEP: usize = 256;

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
        let mut differing = Vec::new();
        for (node, theirs) in nodes.iter().zip(hashes.chunks(FANOUT)) {
            let ours = self.local.children(level, *node as usize);
            self.report.hashes_compared += FANOUT as u64;
            for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
                if a != b {
                    differing.push(*node * FANOUT as u32 + i as u32);
                }
            }
        }
        if differing.is_empty() {
            self.finish(None);
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

    use shoal_storage::merkle::leaf_of;

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
    fn an_empty_replica_is_filled_in_bounded_steps() {
        let mut a = Replica::new();
        let mut b = replica(3000, 3);
        let (report, trips) = run(&mut a, &mut b);
        assert_eq!(a, b);
        assert_eq!(report.keys_fetched, 3000);
        assert_eq!(report.keys_pushed, 0);
        // DEPTH hash trips, then leaves and repairs in bounded chunks.
        let leaves = report.leaves_compared as usize;
        let max_trips = DEPTH
            + leaves.div_ceil(LEAVES_PER_STEP)
            + 2 * (3000usize.div_ceil(KEYS_PER_STEP) + leaves.div_ceil(LEAVES_PER_STEP));
        assert!(trips <= max_trips, "{trips} > {max_trips}");
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
