//! Cluster metadata spread by gossip: the ring's member set, each member's address, and N per
//! keyspace, as one state-based CRDT.
//!
//! [`ClusterState`] is a product of three CRDTs, each a per-key maximum:
//!
//! - the ring's member set ([`RingState`]: per node, the highest entry wins);
//! - addresses: per node, the address with the highest version (a node raises its own when it
//!   starts on a new address);
//! - keyspaces: per name, the N with the highest version (`shoal keyspace create` raises it;
//!   two concurrent changes with the same version keep the larger N).
//!
//! So [`merge`](ClusterState::merge) is commutative, associative and idempotent, and every
//! node that has seen the same changes holds the same state, whatever order they arrived in.
//! Its [`version`](ClusterState::version) is a digest of the canonical encoding; SWIM carries
//! it in each member's metadata (`ring_version`), and a node that sees a member with another
//! version pulls that member's state and merges it (see `runtime::swim`). The ring is a pure
//! function of the member set, so equal versions mean equal rings.
//!
//! The node keeps its state in the store's metadata ([`load`], [`save`]), so a node restarted
//! while its seeds are down still knows the ring and its peers' addresses.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use shoal_membership::{NodeId as MemberId, Ring, RingConfig, RingState, RingStatus};
use shoal_storage::{Engine, StorageError, Store};

use crate::codec::{self, CodecError};

/// Name of the cluster state in the store's metadata.
const META_NAME: &str = "cluster";

/// Longest keyspace name, in bytes.
pub const MAX_KEYSPACE_LEN: usize = shoal_client::protocol::MAX_KEYSPACE_LEN;

/// A value with a version; the higher `(version, value)` wins a merge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Versioned<T> {
    /// Raised on every change.
    pub version: u64,
    /// The value.
    pub value: T,
}

/// The cluster's metadata; see the module docs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    ring: RingState,
    addrs: BTreeMap<MemberId, Versioned<SocketAddr>>,
    keyspaces: BTreeMap<String, Versioned<u8>>,
}

/// A keyspace change that was refused; nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyspaceError {
    /// The name is empty or too long.
    #[error("keyspace name must be 1 to {MAX_KEYSPACE_LEN} bytes, got {0}")]
    Name(usize),
    /// N is out of range.
    #[error("N = {n} for keyspace {name:?}, must be 1 to {max}")]
    N {
        /// The keyspace.
        name: String,
        /// The N asked for.
        n: usize,
        /// The ring's replicas.
        max: usize,
    },
}

fn max_into<K: Ord + Clone, V: Ord + Clone>(
    mine: &mut BTreeMap<K, V>,
    theirs: &BTreeMap<K, V>,
) -> bool {
    let mut changed = false;
    for (k, v) in theirs {
        match mine.get_mut(k) {
            Some(m) if *m >= *v => {}
            Some(m) => {
                *m = v.clone();
                changed = true;
            }
            None => {
                mine.insert(k.clone(), v.clone());
                changed = true;
            }
        }
    }
    changed
}

impl ClusterState {
    /// An empty state: no members, no keyspaces.
    pub fn new() -> Self {
        Self::default()
    }

    /// Merges `other` into this state; true if anything changed.
    pub fn merge(&mut self, other: &ClusterState) -> bool {
        let ring = self.ring.merge(&other.ring);
        let addrs = max_into(&mut self.addrs, &other.addrs);
        let keyspaces = max_into(&mut self.keyspaces, &other.keyspaces);
        ring || addrs || keyspaces
    }

    /// The ring's member set.
    pub fn ring(&self) -> &RingState {
        &self.ring
    }

    /// Adds `id` to the ring unless it has an entry already (a member that left or was
    /// removed is not brought back by this). True if it was added.
    pub fn join_if_absent(&mut self, id: &MemberId) -> bool {
        if self.ring.entry(id).is_some() {
            return false;
        }
        self.ring.join(id.clone());
        true
    }

    /// Whether `id` holds partitions.
    pub fn is_joined(&self, id: &MemberId) -> bool {
        self.ring
            .entry(id)
            .is_some_and(|e| e.status == RingStatus::Joined)
    }

    /// Records `addr` as `id`'s address, raising its version if it changed. True if it did.
    pub fn set_addr(&mut self, id: &MemberId, addr: SocketAddr) -> bool {
        match self.addrs.get_mut(id) {
            Some(known) if known.value == addr => false,
            Some(known) => {
                *known = Versioned {
                    version: known.version + 1,
                    value: addr,
                };
                true
            }
            None => {
                self.addrs.insert(
                    id.clone(),
                    Versioned {
                        version: 1,
                        value: addr,
                    },
                );
                true
            }
        }
    }

    /// The last known address of `id`.
    pub fn addr(&self, id: &MemberId) -> Option<SocketAddr> {
        self.addrs.get(id).map(|v| v.value)
    }

    /// Every known address.
    pub fn addrs(&self) -> impl Iterator<Item = (&MemberId, SocketAddr)> {
        self.addrs.iter().map(|(id, v)| (id, v.value))
    }

    /// Sets keyspace `name`'s N, which must be 1 to `max` (the ring's replicas).
    pub fn set_keyspace(&mut self, name: &str, n: usize, max: usize) -> Result<(), KeyspaceError> {
        if name.is_empty() || name.len() > MAX_KEYSPACE_LEN {
            return Err(KeyspaceError::Name(name.len()));
        }
        if n == 0 || n > max || n > u8::MAX as usize {
            return Err(KeyspaceError::N {
                name: name.to_owned(),
                n,
                max,
            });
        }
        let version = self.keyspaces.get(name).map_or(1, |v| v.version + 1);
        self.keyspaces.insert(
            name.to_owned(),
            Versioned {
                version,
                value: n as u8,
            },
        );
        Ok(())
    }

    /// N of keyspace `name`, if it was created.
    pub fn keyspace(&self, name: &str) -> Option<usize> {
        self.keyspaces.get(name).map(|v| v.value as usize)
    }

    /// Every created keyspace and its N.
    pub fn keyspaces(&self) -> impl Iterator<Item = (&str, usize)> {
        self.keyspaces
            .iter()
            .map(|(name, v)| (name.as_str(), v.value as usize))
    }

    /// The digest of this state: equal on every node holding the same state. Never 0 (SWIM
    /// metadata uses 0 for "no ring yet").
    pub fn version(&self) -> u64 {
        let bytes = self.encode().expect("cluster state encodes");
        xxhash_rust::xxh3::xxh3_64(&bytes).max(1)
    }

    /// The canonical encoding (what peers exchange and the store keeps).
    pub fn encode(&self) -> Result<Vec<u8>, CodecError> {
        codec::encode(self)
    }

    /// Decodes a state from a peer or the store; bad bytes are an error.
    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        codec::decode(bytes)
    }
}

/// A cluster state with the ring built from it: one immutable snapshot, replaced whole when
/// gossip or an operator changes the state. A request takes one snapshot and places its key
/// with it.
#[derive(Debug, Clone)]
pub struct ClusterView {
    /// The state.
    pub state: ClusterState,
    /// The ring built from `state`'s member set.
    pub ring: Ring,
    /// [`ClusterState::version`] of `state`.
    pub version: u64,
}

impl ClusterView {
    /// Builds the ring of `state` with the ring settings `config`.
    pub fn build(state: ClusterState, config: &RingConfig) -> Result<Self, String> {
        let ring = Ring::build(state.ring(), config).map_err(|e| e.to_string())?;
        Ok(Self {
            version: state.version(),
            state,
            ring,
        })
    }
}

/// The cluster state kept in `engine`'s metadata; empty if none was kept. A damaged copy is an
/// error (the node should not start on a ring it cannot read).
pub fn load<S: Store>(engine: &Engine<S>) -> Result<ClusterState, String> {
    match engine.get_meta(META_NAME).map_err(|e| e.to_string())? {
        None => Ok(ClusterState::new()),
        Some(bytes) => ClusterState::decode(&bytes)
            .map_err(|e| format!("stored cluster state unreadable: {e}")),
    }
}

/// Keeps `state` in `engine`'s metadata, durably.
pub fn save<S: Store>(engine: &Engine<S>, state: &ClusterState) -> Result<(), StorageError> {
    let bytes = state
        .encode()
        .map_err(|e| StorageError::Backend(format!("cluster state: {e}")))?;
    engine.put_meta(META_NAME, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> MemberId {
        MemberId::new(s).unwrap()
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn merge_is_a_join_whatever_the_order() {
        let mut a = ClusterState::new();
        a.join_if_absent(&id("a"));
        a.set_addr(&id("a"), addr(1));
        a.set_keyspace("ks", 2, 3).unwrap();
        let mut b = ClusterState::new();
        b.join_if_absent(&id("b"));
        b.set_addr(&id("b"), addr(2));
        b.set_keyspace("ks", 3, 3).unwrap();
        let mut c = a.clone();
        c.set_addr(&id("a"), addr(3));
        c.set_keyspace("other", 1, 3).unwrap();

        let mut abc = a.clone();
        abc.merge(&b);
        abc.merge(&c);
        let mut cba = c.clone();
        cba.merge(&b);
        cba.merge(&a);
        assert_eq!(abc, cba);
        assert_eq!(abc.version(), cba.version());
        // Idempotent.
        assert!(!abc.clone().merge(&abc));
        // The newer address wins; equal keyspace versions keep the larger N.
        assert_eq!(abc.addr(&id("a")), Some(addr(3)));
        assert_eq!(abc.keyspace("ks"), Some(3));
        assert_eq!(abc.keyspace("other"), Some(1));
        assert!(abc.is_joined(&id("a")) && abc.is_joined(&id("b")));
        assert_ne!(abc.version(), a.version());
    }

    #[test]
    fn a_later_keyspace_change_wins_over_an_earlier_one() {
        let mut a = ClusterState::new();
        a.set_keyspace("ks", 3, 3).unwrap();
        let mut b = a.clone();
        b.set_keyspace("ks", 1, 3).unwrap();
        a.merge(&b);
        assert_eq!(a.keyspace("ks"), Some(1));
    }

    #[test]
    fn bad_keyspaces_are_refused_and_change_nothing() {
        let mut s = ClusterState::new();
        let before = s.clone();
        assert!(matches!(
            s.set_keyspace("", 1, 3),
            Err(KeyspaceError::Name(0))
        ));
        assert!(s.set_keyspace(&"x".repeat(256), 1, 3).is_err());
        assert!(matches!(
            s.set_keyspace("ks", 0, 3),
            Err(KeyspaceError::N { n: 0, .. })
        ));
        assert!(s.set_keyspace("ks", 4, 3).is_err());
        assert_eq!(s, before);
    }

    #[test]
    fn round_trips_and_refuses_garbage() {
        let mut s = ClusterState::new();
        s.join_if_absent(&id("n1"));
        s.set_addr(&id("n1"), addr(7100));
        s.set_keyspace("default", 3, 3).unwrap();
        let bytes = s.encode().unwrap();
        assert_eq!(ClusterState::decode(&bytes).unwrap(), s);
        assert!(ClusterState::decode(&bytes[..bytes.len() - 1]).is_err());
        assert!(ClusterState::decode(&[0xff; 7]).is_err());
    }

    #[test]
    fn join_if_absent_does_not_bring_back_a_removed_member() {
        let mut s = ClusterState::new();
        assert!(s.join_if_absent(&id("a")));
        assert!(!s.join_if_absent(&id("a")));
        let mut removed = s.clone();
        let mut ring = removed.ring.clone();
        ring.remove(&id("a"));
        removed.ring = ring;
        assert!(!removed.join_if_absent(&id("a")));
        assert!(!removed.is_joined(&id("a")));
    }
}
