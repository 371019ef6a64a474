//! Wire types of the SWIM protocol. Encoded and decoded only by [`crate::codec`].

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::id::{MemberMeta, NodeId};

/// One datagram: who sent it, what it asks, and the membership updates it carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Packet {
    pub sender: NodeId,
    pub body: Body,
    /// Piggybacked updates (or table entries, for [`Body::PushPull`]).
    pub updates: Vec<Update>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum Body {
    /// Are you alive? `target` is the member the sender means, so a different node now
    /// listening at the address does not answer for it.
    Ping { seq: u64, target: NodeId },
    /// Please ping `target` for me and relay its ack; send a nack if it does not answer in
    /// time and `nack` is set (Lifeguard).
    PingReq {
        seq: u64,
        target: NodeId,
        target_addr: SocketAddr,
        nack: bool,
    },
    /// Answer to a ping (direct, or relayed by a ping-req helper).
    Ack { seq: u64 },
    /// A ping-req helper got no answer from the target in time.
    Nack { seq: u64 },
    /// Nothing asked: the packet only carries updates.
    Gossip,
    /// Part of the sender's full member table in `updates`; `reply` asks for ours back.
    /// Sent in full only by a member that knows no one else yet (a join, a seed retry while
    /// alone); otherwise push-pull starts with a [`Body::Digest`] and sends this only for the
    /// buckets that differ.
    PushPull { reply: bool },
    /// Push-pull, digest first: a summary of the sender's member table. The receiver answers
    /// with a [`Body::Want`] naming the buckets whose summaries differ from its own, followed
    /// by its own entries in those buckets (as `PushPull { reply: false }`); nothing when all
    /// buckets agree.
    Digest(Digest),
    /// Answer to a [`Body::Digest`]: please send your entries in these buckets.
    Want(Want),
}

/// Most buckets a [`Digest`] may have (1 KiB of hashes, so it fits in one datagram).
pub(crate) const MAX_DIGEST_BUCKETS: usize = 256;
/// Bytes per bucket hash in a [`Digest`].
pub(crate) const BUCKET_HASH_LEN: usize = 4;

/// A member table summarized in buckets: entry `(id, incarnation, state)` belongs to bucket
/// `⌊hash(id) · buckets / 2^64⌋`; a bucket's hash is the XOR of its entries' 32-bit hashes,
/// seeded with `salt`. The initiator picks a fresh random salt each time, so two different
/// tables that collide once do not collide on the next exchange.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Digest {
    pub salt: u32,
    /// `buckets · BUCKET_HASH_LEN` bytes, little-endian `u32` per bucket (bytes, not `u32`s,
    /// because bincode's varints would spend 5 bytes on a random `u32`).
    pub hashes: Vec<u8>,
}

/// Buckets of a [`Digest`] with `buckets` buckets, as a bitmap (bit `i % 8` of byte `i / 8`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Want {
    pub buckets: u16,
    pub bits: Vec<u8>,
}

impl Digest {
    pub fn buckets(&self) -> usize {
        self.hashes.len() / BUCKET_HASH_LEN
    }

    pub fn bucket_hash(&self, i: usize) -> u32 {
        let b = &self.hashes[i * BUCKET_HASH_LEN..(i + 1) * BUCKET_HASH_LEN];
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }

    fn check(&self) -> Result<(), String> {
        let len = self.hashes.len();
        if len == 0
            || !len.is_multiple_of(BUCKET_HASH_LEN)
            || len / BUCKET_HASH_LEN > MAX_DIGEST_BUCKETS
        {
            return Err(format!(
                "digest of {len} hash bytes (expected 1 to {MAX_DIGEST_BUCKETS} buckets of {BUCKET_HASH_LEN})"
            ));
        }
        Ok(())
    }
}

impl Want {
    pub fn wants(&self, bucket: usize) -> bool {
        bucket < self.buckets as usize && self.bits[bucket / 8] & (1 << (bucket % 8)) != 0
    }

    fn check(&self) -> Result<(), String> {
        let buckets = self.buckets as usize;
        if buckets == 0 || buckets > MAX_DIGEST_BUCKETS || self.bits.len() != buckets.div_ceil(8) {
            return Err(format!(
                "want of {} bitmap bytes for {buckets} buckets (at most {MAX_DIGEST_BUCKETS})",
                self.bits.len()
            ));
        }
        if !buckets.is_multiple_of(8) && self.bits[buckets / 8] >> (buckets % 8) != 0 {
            return Err("want names buckets past its bucket count".into());
        }
        Ok(())
    }
}

impl Packet {
    /// Bounds serde cannot express. A packet that fails them is rejected whole.
    pub fn check(&self) -> Result<(), String> {
        match &self.body {
            Body::Digest(d) => d.check(),
            Body::Want(w) => w.check(),
            _ => Ok(()),
        }
    }
}

/// A claim about one member, as in SWIM: the higher incarnation wins; at equal incarnation
/// left > dead > suspect > alive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum Update {
    Alive {
        id: NodeId,
        incarnation: u64,
        meta: MemberMeta,
    },
    Suspect {
        id: NodeId,
        incarnation: u64,
        accuser: NodeId,
    },
    Dead {
        id: NodeId,
        incarnation: u64,
        accuser: NodeId,
    },
    Left {
        id: NodeId,
        incarnation: u64,
    },
}

impl Update {
    pub fn id(&self) -> &NodeId {
        match self {
            Update::Alive { id, .. }
            | Update::Suspect { id, .. }
            | Update::Dead { id, .. }
            | Update::Left { id, .. } => id,
        }
    }
}
