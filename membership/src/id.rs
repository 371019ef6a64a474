//! Node identity and member metadata: the bounded, validated types every message carries.

use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// Longest [`NodeId`], in bytes of UTF-8.
pub const MAX_NODE_ID_LEN: usize = 64;
/// Longest [`Zone`], in bytes of UTF-8.
pub const MAX_ZONE_LEN: usize = 32;

/// A value did not satisfy the bounds of an identity type; nothing was created.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The string was empty.
    #[error("{what} must not be empty")]
    Empty {
        /// Which type rejected the value.
        what: &'static str,
    },
    /// The string was longer than the type allows.
    #[error("{what} is {len} bytes, longer than the limit of {max}")]
    TooLong {
        /// Which type rejected the value.
        what: &'static str,
        /// Length of the rejected value, in bytes.
        len: usize,
        /// The limit, in bytes.
        max: usize,
    },
}

/// The cluster-wide name of a node: 1 to [`MAX_NODE_ID_LEN`] bytes of UTF-8.
///
/// It is the key of the member table and of the ring, and it is what the node's TLS certificate
/// names. A node keeps its id across restarts; a restart is told apart by a higher
/// [incarnation](crate::Member::incarnation), not by a new id.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NodeId(String);

impl NodeId {
    /// Validates and wraps `id`.
    pub fn new(id: impl Into<String>) -> Result<Self, IdError> {
        let id = id.into();
        check_len("node id", &id, MAX_NODE_ID_LEN, false)?;
        Ok(Self(id))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for NodeId {
    type Error = IdError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<NodeId> for String {
    fn from(value: NodeId) -> Self {
        value.0
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A failure domain label (rack, availability zone): 0 to [`MAX_ZONE_LEN`] bytes of UTF-8.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Zone(String);

impl Zone {
    /// Validates and wraps `zone`; the empty string means "no zone".
    pub fn new(zone: impl Into<String>) -> Result<Self, IdError> {
        let zone = zone.into();
        check_len("zone", &zone, MAX_ZONE_LEN, true)?;
        Ok(Self(zone))
    }

    /// The zone as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Zone {
    type Error = IdError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<Zone> for String {
    fn from(value: Zone) -> Self {
        value.0
    }
}

impl fmt::Debug for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

fn check_len(what: &'static str, s: &str, max: usize, allow_empty: bool) -> Result<(), IdError> {
    if s.is_empty() && !allow_empty {
        return Err(IdError::Empty { what });
    }
    if s.len() > max {
        return Err(IdError::TooLong {
            what,
            len: s.len(),
            max,
        });
    }
    Ok(())
}

/// What a member tells the cluster about itself. Bounded: an address, a zone of at most
/// [`MAX_ZONE_LEN`] bytes and a `u64`, so at most about 60 bytes encoded.
///
/// Changing it ([`Swim::update_meta`](crate::Swim::update_meta)) bumps the member's incarnation
/// so the new value wins everywhere.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MemberMeta {
    /// Where the member listens (one UDP port: QUIC datagrams for SWIM, streams for data).
    pub addr: SocketAddr,
    /// The member's failure domain.
    pub zone: Zone,
    /// The version (digest) of the placement ring the member currently holds; see
    /// [`RingState::version`](crate::RingState::version). Peers that see a different version
    /// pull the ring from this member.
    pub ring_version: u64,
}

impl MemberMeta {
    /// Metadata with no zone and ring version 0.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            zone: Zone::default(),
            ring_version: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_id_bounds() {
        assert!(NodeId::new("").is_err());
        assert!(NodeId::new("a".repeat(MAX_NODE_ID_LEN)).is_ok());
        assert_eq!(
            NodeId::new("a".repeat(MAX_NODE_ID_LEN + 1)),
            Err(IdError::TooLong {
                what: "node id",
                len: MAX_NODE_ID_LEN + 1,
                max: MAX_NODE_ID_LEN
            })
        );
        assert!(Zone::new("").is_ok());
        assert!(Zone::new("z".repeat(MAX_ZONE_LEN + 1)).is_err());
    }
}
