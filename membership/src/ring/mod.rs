//! Placement: keys → partitions → preference lists.
//!
//! - A key's partition is the top `log2(Q)` bits of `xxh3_64(key)` with seed 0 (the XXH3
//!   specification's 64-bit hash, identical on every platform and release), so a key never
//!   changes partition.
//! - [`RingState`] is the ring's member set, a CRDT; [`Ring::build`] turns it into one
//!   preference list per partition, once per ring version. Lookups index a table: O(1), no
//!   hashing beyond the key's, no allocation.
//! - Each partition's list starts with its N primaries, followed by fallbacks (for sloppy
//!   quorums), all in the order of the clockwise walk of the hashring (virtual nodes) from the
//!   partition's start.
//! - Balance: every joined node holds `floor(mean)` or `ceil(mean)` partition replicas, where
//!   `mean = Q · N / nodes` (so at most 1.10 × mean whenever an integer count allows it).
//!   A join moves only the replicas the new node takes over (its share, rounded up); a departure
//!   moves the departing node's replicas, plus a few rebalancing moves when the rule that a
//!   list holds distinct nodes forces them (at most 1.2 × its share in the property tests). This holds for changes made on an up-to-date
//!   [`RingState`]; concurrent changes merge deterministically but may move more.
//! - SWIM liveness does not change the ring: a dead node keeps its partitions until it leaves
//!   or is removed; the node crate serves them from fallbacks meanwhile.

mod placement;
mod state;

pub use state::{RingEntry, RingState, RingStatus};

use crate::id::NodeId;

/// Ring settings. Q and N are fixed when the cluster is created; every node must use the same.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingConfig {
    /// Q, the number of partitions: a power of two from 1 to 65536. Default 256. More
    /// partitions balance better and cost more per-partition state (Merkle trees, handoff).
    pub partitions: u32,
    /// N, replicas per partition. Default 3.
    pub replicas: usize,
    /// Fallback nodes listed after the primaries. Default 3. Sloppy quorums walk them when
    /// primaries are down.
    pub fallbacks: usize,
    /// Virtual nodes per node on the hashring. Default 64. More make the ring's affinity order
    /// (which partitions a node takes when it joins) smoother, and cost build time.
    pub vnodes: u32,
}

impl Default for RingConfig {
    fn default() -> Self {
        Self {
            partitions: 256,
            replicas: 3,
            fallbacks: 3,
            vnodes: 64,
        }
    }
}

/// The ring configuration is unusable; nothing was built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// Q must be a power of two between 1 and 65536.
    #[error("{0} partitions: must be a power of two between 1 and 65536")]
    Partitions(u32),
    /// N and the virtual node count must be at least 1.
    #[error("replicas and vnodes must be at least 1")]
    Zero,
}

/// A partition number, `0..Q`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PartitionId(pub u32);

/// Maps keys to partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partitioner {
    bits: u32,
}

impl Partitioner {
    /// A partitioner for `partitions` (Q) partitions.
    pub fn new(partitions: u32) -> Result<Self, RingError> {
        if !partitions.is_power_of_two() || partitions > 1 << 16 {
            return Err(RingError::Partitions(partitions));
        }
        Ok(Self {
            bits: partitions.trailing_zeros(),
        })
    }

    /// Q.
    pub fn partitions(&self) -> u32 {
        1 << self.bits
    }

    /// The partition of `key`: the top `log2(Q)` bits of `xxh3_64(key)` (seed 0).
    pub fn partition_of(&self, key: &[u8]) -> PartitionId {
        if self.bits == 0 {
            return PartitionId(0);
        }
        PartitionId((xxhash_rust::xxh3::xxh3_64(key) >> (64 - self.bits)) as u32)
    }
}

/// Preference lists of one ring version. Build once per version, share, look up in O(1).
#[derive(Debug, Clone)]
pub struct Ring {
    version: u64,
    partitioner: Partitioner,
    /// Per partition: primaries then fallbacks.
    lists: Vec<Box<[NodeId]>>,
    primaries: Vec<usize>,
}

impl Ring {
    /// Computes every partition's preference list from `state`. Deterministic: every node
    /// builds the same ring from the same state. Cost `O(Q · nodes · vnodes)` once per version.
    pub fn build(state: &RingState, config: &RingConfig) -> Result<Self, RingError> {
        let partitioner = Partitioner::new(config.partitions)?;
        if config.replicas == 0 || config.vnodes == 0 {
            return Err(RingError::Zero);
        }
        let names: Vec<NodeId> = state.entries().map(|(id, _)| id.clone()).collect();
        let q = config.partitions as usize;
        let (lists, primaries) = if names.is_empty() {
            (vec![Box::default(); q], vec![0; q])
        } else {
            let aff = placement::affinity(&names, config.vnodes, partitioner.bits);
            let assignment = placement::assign(state, &names, &aff, config.replicas);
            let joined: Vec<bool> = state
                .entries()
                .map(|(_, e)| e.status == RingStatus::Joined)
                .collect();
            let mut lists = Vec::with_capacity(q);
            let mut primaries = Vec::with_capacity(q);
            for (p, prim) in assignment.lists.iter().enumerate() {
                let walk = aff.walk(p);
                let mut list: Vec<NodeId> = walk
                    .iter()
                    .filter(|n| prim.contains(n))
                    .map(|&n| names[n].clone())
                    .collect();
                primaries.push(list.len());
                list.extend(
                    walk.iter()
                        .filter(|&&n| joined[n] && !prim.contains(&n))
                        .take(config.fallbacks)
                        .map(|&n| names[n].clone()),
                );
                lists.push(list.into_boxed_slice());
            }
            (lists, primaries)
        };
        Ok(Self {
            version: state.version(),
            partitioner,
            lists,
            primaries,
        })
    }

    /// The [`RingState::version`] this ring was built from.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Key → partition.
    pub fn partitioner(&self) -> Partitioner {
        self.partitioner
    }

    /// The partition of `key`.
    pub fn partition_of(&self, key: &[u8]) -> PartitionId {
        self.partitioner.partition_of(key)
    }

    /// Primaries (at most N) followed by fallbacks, in ring order. Panics if `partition` is
    /// out of range.
    pub fn preference_list(&self, partition: PartitionId) -> &[NodeId] {
        &self.lists[partition.0 as usize]
    }

    /// The N primaries of `partition` (fewer while the ring has fewer nodes).
    pub fn primaries(&self, partition: PartitionId) -> &[NodeId] {
        let p = partition.0 as usize;
        &self.lists[p][..self.primaries[p]]
    }

    /// The preference list of `key`'s partition.
    pub fn preference_list_for_key(&self, key: &[u8]) -> &[NodeId] {
        self.preference_list(self.partition_of(key))
    }

    /// How many partition replicas (primary slots) each node holds.
    pub fn replicas_per_node(&self) -> std::collections::BTreeMap<NodeId, usize> {
        let mut counts = std::collections::BTreeMap::new();
        for p in 0..self.lists.len() {
            for id in self.primaries(PartitionId(p as u32)) {
                *counts.entry(id.clone()).or_insert(0) += 1;
            }
        }
        counts
    }
}

#[cfg(test)]
mod tests;
