//! From ring membership to preference lists: the hashring walk gives each partition an
//! affinity order over nodes; replaying ring history with bounded loads assigns replicas.

use std::collections::BTreeSet;
use std::hash::{BuildHasher, Hash, Hasher};

use hashring::{DefaultHashBuilder, HashRing};

use super::state::{RingState, RingStatus};
use crate::id::NodeId;

/// A virtual node: the `index`-th point of node `node` on the ring.
#[derive(Debug, Clone, PartialEq, Eq)]
struct VNode {
    node: u32,
    name: NodeId,
    index: u32,
}

impl Hash for VNode {
    /// Hashes only platform-independent bytes (no `usize`, no native endianness), so every
    /// node computes the same ring.
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(self.name.as_str().as_bytes());
        state.write(&[0xff]);
        state.write(&self.index.to_le_bytes());
    }
}

/// For each partition, every node's clockwise distance on the ring from the partition's start
/// point to the node's nearest virtual node. A distance does not depend on which other nodes
/// exist, so comparisons across partitions stay stable when nodes join or depart.
pub(super) struct Affinity {
    nodes: usize,
    partitions: usize,
    distance: Vec<u64>,
}

impl Affinity {
    pub fn distance(&self, partition: usize, node: usize) -> u64 {
        self.distance[partition * self.nodes + node]
    }

    pub fn partitions(&self) -> usize {
        self.partitions
    }

    /// Nodes in the order of the clockwise walk of distinct nodes from `partition`'s start.
    pub fn walk(&self, partition: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.nodes).collect();
        order.sort_by_key(|&n| (self.distance(partition, n), n));
        order
    }
}

/// Builds the hashring of `names` with `vnodes` points each, and walks it from the start of
/// each of the `2^bits` key ranges.
pub(super) fn affinity(names: &[NodeId], vnodes: u32, bits: u32) -> Affinity {
    let partitions = 1usize << bits;
    let mut ring: HashRing<VNode> = HashRing::new();
    ring.batch_add(
        names
            .iter()
            .enumerate()
            .flat_map(|(node, name)| {
                (0..vnodes).map(move |index| VNode {
                    node: node as u32,
                    name: name.clone(),
                    index,
                })
            })
            .collect(),
    );
    // The ring yields its points in clockwise order; recompute their keys with the ring's
    // own hasher for the search from each partition's start point.
    let hasher = DefaultHashBuilder;
    let points: Vec<(u64, u32)> = ring
        .into_iter()
        .map(|v| (hasher.hash_one(&v), v.node))
        .collect();
    let n = names.len();
    let mut distance = vec![u64::MAX; partitions * n];
    for p in 0..partitions {
        let start = if bits == 0 {
            0
        } else {
            (p as u64) << (64 - bits)
        };
        let first = points.partition_point(|(k, _)| *k < start);
        let row = &mut distance[p * n..(p + 1) * n];
        let mut seen = 0;
        for i in 0..points.len() {
            let (key, node) = points[(first + i) % points.len()];
            let d = &mut row[node as usize];
            if *d == u64::MAX {
                *d = key.wrapping_sub(start);
                seen += 1;
                if seen == n {
                    break;
                }
            }
        }
    }
    Affinity {
        nodes: n,
        partitions,
        distance,
    }
}

/// Replica assignment: per partition, the primaries' node indexes (unordered).
pub(super) struct Assignment {
    pub lists: Vec<Vec<usize>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Change {
    Join,
    Depart,
}

/// Replays ring history in epoch order. Each step keeps every node's replica count within one
/// of every other's (so the most loaded node holds at most `ceil(mean)` replicas) and moves
/// as few replicas as it can: a join takes replicas only from the most loaded nodes, choosing
/// partitions whose start is closest to it on the ring; a departure hands each of the node's
/// replicas to the least loaded node not already in that list.
pub(super) fn assign(state: &RingState, names: &[NodeId], aff: &Affinity, n: usize) -> Assignment {
    let partitions = aff.partitions();
    let mut history: Vec<(u64, Change, usize)> = Vec::new();
    for (i, (_, e)) in state.entries().enumerate() {
        history.push((e.joined_epoch, Change::Join, i));
        if e.status != RingStatus::Joined {
            history.push((e.departed_epoch, Change::Depart, i));
        }
    }
    history.sort();
    let mut a = Replay {
        aff,
        n,
        lists: vec![Vec::with_capacity(n); partitions],
        load: vec![0; names.len()],
        active: BTreeSet::new(),
    };
    for (_, change, node) in history {
        match change {
            Change::Join => a.join(node),
            Change::Depart => a.depart(node),
        }
        a.rebalance();
    }
    Assignment { lists: a.lists }
}

struct Replay<'a> {
    aff: &'a Affinity,
    n: usize,
    lists: Vec<Vec<usize>>,
    load: Vec<u32>,
    active: BTreeSet<usize>,
}

impl Replay<'_> {
    fn join(&mut self, x: usize) {
        if !self.active.insert(x) {
            return;
        }
        if self.active.len() <= self.n {
            for list in &mut self.lists {
                list.push(x);
            }
            self.load[x] = self.lists.len() as u32;
            return;
        }
        loop {
            let Some(donor) = self.most_loaded(Some(x)) else {
                return;
            };
            if self.load[donor] < self.load[x] + 2 {
                return;
            }
            self.move_replica(donor, x);
        }
    }

    fn depart(&mut self, x: usize) {
        if !self.active.remove(&x) {
            return;
        }
        for p in 0..self.lists.len() {
            let Some(pos) = self.lists[p].iter().position(|&m| m == x) else {
                continue;
            };
            self.lists[p].swap_remove(pos);
            let list = &self.lists[p];
            let heir = self
                .active
                .iter()
                .copied()
                .filter(|c| !list.contains(c))
                .min_by_key(|&c| (self.load[c], self.aff.distance(p, c), c));
            if let Some(heir) = heir {
                self.lists[p].push(heir);
                self.load[heir] += 1;
            }
        }
        self.load[x] = 0;
    }

    /// Moves replicas from the most to the least loaded node until they differ by at most one.
    fn rebalance(&mut self) {
        while let (Some(max), Some(min)) = (self.most_loaded(None), self.least_loaded()) {
            if self.load[max] < self.load[min] + 2 {
                return;
            }
            self.move_replica(max, min);
        }
    }

    /// Gives one of `from`'s replicas to `to`: the partition (holding `from`, not `to`) whose
    /// start is closest to `to` on the ring.
    fn move_replica(&mut self, from: usize, to: usize) {
        let best = (0..self.lists.len())
            .filter(|&p| self.lists[p].contains(&from) && !self.lists[p].contains(&to))
            .min_by_key(|&p| (self.aff.distance(p, to), p))
            .expect("a node with more replicas than another has one the other lacks");
        let pos = self.lists[best]
            .iter()
            .position(|&m| m == from)
            .expect("filtered");
        self.lists[best][pos] = to;
        self.load[from] -= 1;
        self.load[to] += 1;
    }

    fn most_loaded(&self, except: Option<usize>) -> Option<usize> {
        self.active
            .iter()
            .copied()
            .filter(|&c| Some(c) != except)
            .max_by_key(|&c| (self.load[c], std::cmp::Reverse(c)))
    }

    fn least_loaded(&self) -> Option<usize> {
        self.active
            .iter()
            .copied()
            .min_by_key(|&c| (self.load[c], c))
    }
}
