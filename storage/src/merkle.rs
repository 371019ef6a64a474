//! Per-partition Merkle trees over (key, value hash), maintained incrementally.
//!
//! Shape: a fixed tree of [`DEPTH`] levels below the root with fan-out [`FANOUT`], so
//! [`LEAVES`] leaves. A key's leaf comes from a hash of the key seeded differently from
//! placement's hash, so keys of one partition spread over all leaves.
//!
//! - A leaf is the XOR of `h(key, value hash)` over its keys: a set hash, updated in O(1) when
//!   one key's value changes, independent of the order keys were written in.
//! - An inner node is the hash of its children's hashes, recomputed along the path to the root.
//!
//! So a write costs one leaf XOR and [`DEPTH`] small hashes; there is no periodic rebuild. Two
//! trees have equal roots exactly when their (key, value hash) sets are equal, up to hash
//! collisions (128-bit). Descending only into children whose hashes differ finds the differing
//! leaves; [`Engine::leaf_keys`](crate::Engine::leaf_keys) lists a leaf's keys.

use xxhash_rust::xxh3::{Xxh3, xxh3_64_with_seed};

use crate::record::ValueHash;

/// Children per inner node.
pub const FANOUT: usize = 16;
/// Levels below the root.
pub const DEPTH: usize = 3;
/// Leaves per tree: `FANOUT.pow(DEPTH)`.
pub const LEAVES: usize = FANOUT * FANOUT * FANOUT;
/// Bits of the leaf index.
const LEAF_BITS: u32 = 12;
const LEAF_SEED: u64 = 0x5348_4f41_4c4d_4b4c; // independent of placement's unseeded hash

/// A node hash.
pub type NodeHash = u128;

/// The leaf a key falls in.
pub fn leaf_of(key: &[u8]) -> u16 {
    (xxh3_64_with_seed(key, LEAF_SEED) >> (64 - LEAF_BITS)) as u16
}

/// A key's contribution to its leaf.
pub fn entry_hash(key: &[u8], value: ValueHash) -> NodeHash {
    let mut h = Xxh3::new();
    h.update(&(key.len() as u32).to_le_bytes());
    h.update(key);
    h.update(&value.to_le_bytes());
    h.digest128()
}

/// One partition's tree. `levels[0]` holds the root, `levels[DEPTH]` the leaves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MerkleTree {
    levels: Vec<Vec<NodeHash>>,
}

impl Default for MerkleTree {
    fn default() -> Self {
        MerkleTree::from_leaves(vec![0; LEAVES])
    }
}

impl MerkleTree {
    /// Builds a tree from its leaves (used once per partition when a store opens).
    pub fn from_leaves(leaves: Vec<NodeHash>) -> MerkleTree {
        assert_eq!(leaves.len(), LEAVES);
        let mut levels = vec![Vec::new(); DEPTH + 1];
        levels[DEPTH] = leaves;
        for level in (0..DEPTH).rev() {
            levels[level] = levels[level + 1]
                .chunks(FANOUT)
                .map(hash_children)
                .collect();
        }
        MerkleTree { levels }
    }

    /// Replaces a key's contribution: `old` is its previous value hash (None if new), `new` its
    /// value hash now (None if removed).
    pub fn update(&mut self, key: &[u8], old: Option<ValueHash>, new: Option<ValueHash>) {
        if old == new {
            return;
        }
        let leaf = leaf_of(key) as usize;
        let mut delta = 0;
        if let Some(old) = old {
            delta ^= entry_hash(key, old);
        }
        if let Some(new) = new {
            delta ^= entry_hash(key, new);
        }
        self.xor_leaf(leaf, delta);
    }

    fn xor_leaf(&mut self, leaf: usize, delta: NodeHash) {
        if delta == 0 {
            return;
        }
        self.levels[DEPTH][leaf] ^= delta;
        let mut index = leaf;
        for level in (0..DEPTH).rev() {
            index /= FANOUT;
            let start = index * FANOUT;
            let hash = hash_children(&self.levels[level + 1][start..start + FANOUT]);
            self.levels[level][index] = hash;
        }
    }

    /// Sets a leaf's hash outright (after recomputing it from the store) and updates the path.
    pub fn set_leaf(&mut self, leaf: u16, hash: NodeHash) {
        let leaf = leaf as usize;
        let old = self.levels[DEPTH][leaf];
        self.xor_leaf(leaf, old ^ hash);
    }

    /// The root hash.
    pub fn root(&self) -> NodeHash {
        self.levels[0][0]
    }

    /// All node hashes of a level (0 = root, [`DEPTH`] = leaves), left to right.
    pub fn level(&self, level: usize) -> &[NodeHash] {
        &self.levels[level]
    }

    /// The hashes of the children of node `index` at `level` (which must be above the leaves).
    pub fn children(&self, level: usize, index: usize) -> &[NodeHash] {
        &self.levels[level + 1][index * FANOUT..(index + 1) * FANOUT]
    }
}

fn hash_children(children: &[NodeHash]) -> NodeHash {
    let mut h = Xxh3::new();
    for child in children {
        h.update(&child.to_le_bytes());
    }
    h.digest128()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_then_undo_restores_root() {
        let mut tree = MerkleTree::default();
        let empty = tree.root();
        tree.update(b"k", None, Some(1));
        assert_ne!(tree.root(), empty);
        tree.update(b"k", Some(1), Some(2));
        tree.update(b"k", Some(2), None);
        assert_eq!(tree.root(), empty);
    }

    #[test]
    fn children_hash_to_parent() {
        let mut tree = MerkleTree::default();
        for i in 0..100u32 {
            tree.update(&i.to_le_bytes(), None, Some(i as u128));
        }
        for level in 0..DEPTH {
            for (index, parent) in tree.level(level).iter().enumerate() {
                assert_eq!(*parent, hash_children(tree.children(level, index)));
            }
        }
    }
}
