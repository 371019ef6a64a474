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

use xxhash_rust::xxh3::{xxh3_64_with_seed, xxh3_128};

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

/// A key's contribution to its leaf: the 128-bit xxh3 of the key's length (4 bytes, little
/// endian), the key, and the value hash (16 bytes, little endian).
///
/// Hashed in one call over one buffer: xxh3's streaming state costs several times the hash
/// itself on inputs this small, and every write pays for this hash.
pub fn entry_hash(key: &[u8], value: ValueHash) -> NodeHash {
    const SMALL: usize = 128;
    let len = 4 + key.len() + 16;
    let fill = |buf: &mut [u8]| {
        buf[..4].copy_from_slice(&(key.len() as u32).to_le_bytes());
        buf[4..4 + key.len()].copy_from_slice(key);
        buf[4 + key.len()..].copy_from_slice(&value.to_le_bytes());
    };
    if len <= SMALL {
        let mut buf = [0u8; SMALL];
        fill(&mut buf[..len]);
        xxh3_128(&buf[..len])
    } else {
        let mut buf = vec![0u8; len];
        fill(&mut buf);
        xxh3_128(&buf)
    }
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
        if let Some(leaf) = self.xor_entry(key, old, new) {
            self.rehash(&mut [leaf]);
        }
    }

    /// [`update`](Self::update) for many keys, each inner node on their paths rehashed once
    /// (a refill batch of a few hundred keys touches most nodes of the level above the leaves,
    /// but each node above it only once instead of once per key).
    pub fn update_many<'k>(
        &mut self,
        changes: impl IntoIterator<Item = (&'k [u8], Option<ValueHash>, Option<ValueHash>)>,
    ) {
        let mut dirty: Vec<usize> = changes
            .into_iter()
            .filter_map(|(key, old, new)| self.xor_entry(key, old, new))
            .collect();
        self.rehash(&mut dirty);
    }

    /// Replaces a key's contribution in its leaf; returns the leaf, unless nothing changed.
    fn xor_entry(
        &mut self,
        key: &[u8],
        old: Option<ValueHash>,
        new: Option<ValueHash>,
    ) -> Option<usize> {
        if old == new {
            return None;
        }
        let leaf = leaf_of(key) as usize;
        self.levels[DEPTH][leaf] ^=
            old.map_or(0, |h| entry_hash(key, h)) ^ new.map_or(0, |h| entry_hash(key, h));
        Some(leaf)
    }

    /// Recomputes the inner nodes above the `dirty` leaves, each once (the slice is reused
    /// for the indices of each level up).
    fn rehash(&mut self, dirty: &mut [usize]) {
        for level in (0..DEPTH).rev() {
            for index in dirty.iter_mut() {
                *index /= FANOUT;
            }
            dirty.sort_unstable();
            let mut last = None;
            for &index in dirty.iter() {
                if last == Some(index) {
                    continue;
                }
                last = Some(index);
                let start = index * FANOUT;
                self.levels[level][index] =
                    hash_children(&self.levels[level + 1][start..start + FANOUT]);
            }
        }
    }

    /// Sets a leaf's hash outright (after recomputing it from the store) and updates the path.
    pub fn set_leaf(&mut self, leaf: u16, hash: NodeHash) {
        self.levels[DEPTH][leaf as usize] = hash;
        self.rehash(&mut [leaf as usize]);
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

/// An inner node's hash: the 128-bit xxh3 of its children's hashes, each 16 bytes little
/// endian, in order (one call over one buffer, as for [`entry_hash`]).
fn hash_children(children: &[NodeHash]) -> NodeHash {
    let mut buf = [0u8; FANOUT * 16];
    for (chunk, child) in buf.chunks_exact_mut(16).zip(children) {
        chunk.copy_from_slice(&child.to_le_bytes());
    }
    xxh3_128(&buf[..children.len() * 16])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hashes are those of the version before one-call hashing, which fed the same bytes
    /// to xxh3's streaming state piece by piece: trees of mixed versions compare equal.
    #[test]
    fn hashes_are_xxh3_of_the_concatenated_bytes() {
        use xxhash_rust::xxh3::Xxh3;
        for key_len in [0, 1, 15, 107, 108, 109, 300] {
            let key: Vec<u8> = (0..key_len).map(|i| (i * 7 + key_len) as u8).collect();
            let value = 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210u128 ^ key_len as u128;
            let mut h = Xxh3::new();
            h.update(&(key.len() as u32).to_le_bytes());
            h.update(&key);
            h.update(&value.to_le_bytes());
            assert_eq!(
                entry_hash(&key, value),
                h.digest128(),
                "key of {key_len} bytes"
            );
        }
        let children: Vec<NodeHash> = (0..FANOUT as u128)
            .map(|i| i * 0x9e37_79b9_7f4a_7c15)
            .collect();
        let mut h = Xxh3::new();
        for child in &children {
            h.update(&child.to_le_bytes());
        }
        assert_eq!(hash_children(&children), h.digest128());
    }

    #[test]
    fn update_many_equals_updates_one_at_a_time() {
        // The tree built from scratch out of (key, value hash) pairs.
        let built = |entries: &[(&[u8], ValueHash)]| {
            let mut leaves = vec![0; LEAVES];
            for &(key, value) in entries {
                leaves[leaf_of(key) as usize] ^= entry_hash(key, value);
            }
            MerkleTree::from_leaves(leaves)
        };
        let keys: Vec<Vec<u8>> = (0..600u32)
            .map(|i| format!("key-{i}").into_bytes())
            .collect();
        let mut entries: Vec<(&[u8], ValueHash)> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| (&k[..], i as u128))
            .collect();
        let (mut one, mut many) = (MerkleTree::default(), MerkleTree::default());
        for &(key, value) in &entries {
            one.update(key, None, Some(value));
        }
        many.update_many(entries.iter().map(|&(k, v)| (k, None, Some(v))));
        assert_eq!(one, built(&entries));
        assert_eq!(many, built(&entries));
        // Changes, removals and no-ops, with a key changed twice in one batch.
        let changes: Vec<(&[u8], Option<ValueHash>, Option<ValueHash>)> = vec![
            (&keys[0], Some(0), Some(1000)),
            (&keys[0], Some(1000), Some(1001)),
            (&keys[1], Some(1), None),
            (&keys[2], Some(2), Some(2)),
            (b"new", None, Some(7)),
        ];
        for &(key, old, new) in &changes {
            one.update(key, old, new);
        }
        many.update_many(changes);
        entries[0].1 = 1001;
        entries[2].1 = 2;
        entries.remove(1);
        entries.push((b"new", 7));
        assert_eq!(one, built(&entries));
        assert_eq!(many, built(&entries));
        for level in 0..DEPTH {
            for (index, parent) in many.level(level).iter().enumerate() {
                assert_eq!(*parent, hash_children(many.children(level, index)));
            }
        }
    }

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
