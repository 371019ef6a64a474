//! Ring membership as a CRDT: node → (version, status, epochs), highest wins per node.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::Xxh3;

use crate::id::NodeId;

/// A node's place in the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum RingStatus {
    /// Holds partitions.
    Joined,
    /// Announced its own departure; holds no partitions in this ring version (its data is
    /// being handed off).
    Leaving,
    /// Removed by an operator; holds no partitions.
    Removed,
}

/// One node's ring entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RingEntry {
    /// Raised on every change of this entry; the higher version wins a merge.
    pub version: u64,
    /// Current status.
    pub status: RingStatus,
    /// Position of the join in ring history (see [`RingState`]).
    pub joined_epoch: u64,
    /// Position of the departure in ring history, when `status` is not `Joined`.
    pub departed_epoch: u64,
}

/// The ring's member set, a state-based CRDT spread by gossip.
///
/// Each node has one [`RingEntry`]; [`merge`](Self::merge) keeps, per node, the entry with
/// the highest `(version, status, joined_epoch, departed_epoch)`. That is a per-key maximum, so
/// merge is commutative, associative and idempotent, and concurrent joins through different
/// seeds merge instead of conflicting.
///
/// Epochs order the history the placement replays: a change gets the epoch one past the
/// highest epoch in the state it was made on. A change made on an up-to-date state is
/// therefore last in history, and the placement moves only the partitions it has to.
///
/// The [`version`](Self::version) is a digest of the set: two states with the same entries
/// have the same version on every platform.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingState {
    entries: BTreeMap<NodeId, RingEntry>,
}

impl RingState {
    /// An empty ring.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `id` as joined (again, after a departure). No-op if it is already joined.
    pub fn join(&mut self, id: NodeId) {
        let epoch = self.max_epoch() + 1;
        match self.entries.get_mut(&id) {
            Some(e) if e.status == RingStatus::Joined => {}
            Some(e) => {
                *e = RingEntry {
                    version: e.version + 1,
                    status: RingStatus::Joined,
                    joined_epoch: epoch,
                    departed_epoch: 0,
                }
            }
            None => {
                self.entries.insert(
                    id,
                    RingEntry {
                        version: 1,
                        status: RingStatus::Joined,
                        joined_epoch: epoch,
                        departed_epoch: 0,
                    },
                );
            }
        }
    }

    /// Marks `id` as leaving by its own request. No-op unless it is joined.
    pub fn leave(&mut self, id: &NodeId) {
        self.depart(id, RingStatus::Leaving);
    }

    /// Marks `id` as removed by an operator. No-op if it is unknown or already removed.
    pub fn remove(&mut self, id: &NodeId) {
        self.depart(id, RingStatus::Removed);
    }

    fn depart(&mut self, id: &NodeId, status: RingStatus) {
        let epoch = self.max_epoch() + 1;
        if let Some(e) = self.entries.get_mut(id)
            && e.status < status
        {
            let departed_epoch = if e.status == RingStatus::Joined {
                epoch
            } else {
                e.departed_epoch
            };
            *e = RingEntry {
                version: e.version + 1,
                status,
                joined_epoch: e.joined_epoch,
                departed_epoch,
            };
        }
    }

    /// Merges `other` into `self` (per node, the highest entry wins). Returns whether `self`
    /// changed.
    pub fn merge(&mut self, other: &RingState) -> bool {
        let mut changed = false;
        for (id, theirs) in &other.entries {
            match self.entries.get_mut(id) {
                Some(ours) if *ours >= *theirs => {}
                Some(ours) => {
                    *ours = *theirs;
                    changed = true;
                }
                None => {
                    self.entries.insert(id.clone(), *theirs);
                    changed = true;
                }
            }
        }
        changed
    }

    /// Every node's entry, in id order.
    pub fn entries(&self) -> impl Iterator<Item = (&NodeId, &RingEntry)> {
        self.entries.iter()
    }

    /// The entry of `id`.
    pub fn entry(&self, id: &NodeId) -> Option<&RingEntry> {
        self.entries.get(id)
    }

    /// Nodes that hold partitions.
    pub fn joined(&self) -> impl Iterator<Item = &NodeId> {
        self.entries
            .iter()
            .filter(|(_, e)| e.status == RingStatus::Joined)
            .map(|(id, _)| id)
    }

    /// Digest of the set: xxh3-64 (seed 0) over each entry in id order, as
    /// `len(id) as u32 LE ‖ id ‖ version LE ‖ status byte ‖ joined_epoch LE ‖ departed_epoch LE`.
    /// 0 only for the empty ring.
    pub fn version(&self) -> u64 {
        if self.entries.is_empty() {
            return 0;
        }
        let mut h = Xxh3::new();
        for (id, e) in &self.entries {
            h.update(&(id.as_str().len() as u32).to_le_bytes());
            h.update(id.as_str().as_bytes());
            h.update(&e.version.to_le_bytes());
            h.update(&[e.status as u8]);
            h.update(&e.joined_epoch.to_le_bytes());
            h.update(&e.departed_epoch.to_le_bytes());
        }
        h.digest().max(1)
    }

    fn max_epoch(&self) -> u64 {
        self.entries
            .values()
            .map(|e| e.joined_epoch.max(e.departed_epoch))
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(i: u8) -> NodeId {
        NodeId::new(format!("n{i}")).unwrap()
    }

    fn arb_state() -> impl Strategy<Value = RingState> {
        proptest::collection::vec((0u8..8, 0u8..3), 0..12).prop_map(|ops| {
            let mut s = RingState::new();
            for (node, op) in ops {
                match op {
                    0 => s.join(id(node)),
                    1 => s.leave(&id(node)),
                    _ => s.remove(&id(node)),
                }
            }
            s
        })
    }

    fn merged(a: &RingState, b: &RingState) -> RingState {
        let mut m = a.clone();
        m.merge(b);
        m
    }

    proptest! {
        #[test]
        fn merge_is_commutative(a in arb_state(), b in arb_state()) {
            prop_assert_eq!(merged(&a, &b), merged(&b, &a));
        }

        #[test]
        fn merge_is_associative(a in arb_state(), b in arb_state(), c in arb_state()) {
            prop_assert_eq!(merged(&merged(&a, &b), &c), merged(&a, &merged(&b, &c)));
        }

        #[test]
        fn merge_is_idempotent(a in arb_state(), b in arb_state()) {
            let m = merged(&a, &b);
            prop_assert_eq!(merged(&m, &b), m.clone());
            prop_assert_eq!(merged(&m, &m), m);
        }
    }

    #[test]
    fn concurrent_joins_merge_and_later_change_wins() {
        let mut base = RingState::new();
        base.join(id(1));
        let (mut a, mut b) = (base.clone(), base.clone());
        a.join(id(2));
        b.join(id(3));
        let mut m = merged(&a, &b);
        assert_eq!(m.joined().count(), 3);
        assert_eq!(m.version(), merged(&b, &a).version());
        m.remove(&id(2));
        let after = merged(&a, &m);
        assert_eq!(after.entry(&id(2)).unwrap().status, RingStatus::Removed);
        assert_ne!(after.version(), m.version() ^ 1);
        m.join(id(2));
        assert_eq!(m.entry(&id(2)).unwrap().status, RingStatus::Joined);
        assert_eq!(m.entry(&id(2)).unwrap().version, 3);
    }

    #[test]
    fn version_is_stable() {
        let mut s = RingState::new();
        s.join(id(1));
        s.join(id(2));
        // Pinned: the digest must not change across builds or platforms.
        assert_eq!(s.version(), 0x937b_870d_1b85_d6b0);
        assert_eq!(RingState::new().version(), 0);
    }
}
