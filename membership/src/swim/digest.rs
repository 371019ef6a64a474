//! Digest-first push-pull: the member table is summarized in buckets, the two sides compare
//! the summaries, and only the entries in buckets that differ cross the network.
//!
//! ```text
//! initiator                                   responder
//!   Digest { salt, bucket hashes }  ───────▶  compares with its own table (same salt,
//!                                             same bucket count)
//!                                   ◀───────  Want { differing buckets }, then its entries in
//!                                             them as PushPull { reply: false }
//!   its entries in the wanted       ───────▶
//!   buckets as PushPull { reply: false }
//! ```
//!
//! When the tables agree the exchange is one datagram of about `4 · buckets` bytes instead of
//! the whole table (about 35 bytes per member). A lost datagram only delays the repair to the
//! next exchange; no side keeps state between the messages.

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use super::*;
use crate::message::{BUCKET_HASH_LEN, Digest, MAX_DIGEST_BUCKETS, Want};

/// Table entries per bucket the initiator aims for. Fewer means a larger digest and less
/// to resend for one differing entry; at 8, one stale member costs about 8 entries each way.
const ENTRIES_PER_BUCKET: usize = 8;

/// The bucket of `id` among `buckets` (stable across processes: xxh3 of the id's bytes).
pub(super) fn bucket_of(id: &NodeId, buckets: usize) -> usize {
    ((u128::from(xxh3_64(id.as_str().as_bytes())) * buckets as u128) >> 64) as usize
}

/// 32-bit hash of one entry, seeded with the exchange's salt.
fn entry_hash(salt: u32, id: &NodeId, incarnation: u64, state: MemberState) -> u32 {
    let mut buf = [0u8; crate::id::MAX_NODE_ID_LEN + 9];
    let name = id.as_str().as_bytes();
    buf[..name.len()].copy_from_slice(name);
    let tail = name.len();
    buf[tail..tail + 8].copy_from_slice(&incarnation.to_le_bytes());
    buf[tail + 8] = match state {
        MemberState::Alive => 0,
        MemberState::Suspect => 1,
        MemberState::Dead => 2,
        MemberState::Left => 3,
    };
    xxh3_64_with_seed(&buf[..tail + 9], u64::from(salt)) as u32
}

impl<R: RngCore> Swim<R> {
    /// The summary of our table (ourselves included) in `buckets` buckets.
    pub(super) fn digest(&self, salt: u32, buckets: usize) -> Digest {
        let mut sums = vec![0u32; buckets];
        let me = std::iter::once((&self.me.id, self.me.incarnation, self.me.state));
        let others = self
            .members
            .values()
            .map(|r| (&r.member.id, r.member.incarnation, r.member.state));
        for (id, incarnation, state) in me.chain(others) {
            sums[bucket_of(id, buckets)] ^= entry_hash(salt, id, incarnation, state);
        }
        Digest {
            salt,
            hashes: sums.iter().flat_map(|h| h.to_le_bytes()).collect(),
        }
    }

    /// Starts a push-pull with the member at `to` by sending the digest of our table.
    pub(super) fn send_digest(&mut self, to: SocketAddr, to_id: Option<NodeId>) {
        let empty = Packet {
            sender: self.me.id.clone(),
            body: Body::Digest(Digest {
                salt: u32::MAX,
                hashes: Vec::new(),
            }),
            updates: Vec::new(),
        };
        // Two more bytes for the hash vector's length prefix once it passes 250 bytes.
        let room = self.budget(&empty).saturating_sub(2) / BUCKET_HASH_LEN;
        let entries = self.members.len() + 1;
        let buckets = entries
            .div_ceil(ENTRIES_PER_BUCKET)
            .min(room)
            .clamp(1, MAX_DIGEST_BUCKETS);
        let salt = self.rng.random::<u32>();
        let digest = self.digest(salt, buckets);
        self.send(to, to_id, Body::Digest(digest), None);
    }

    /// A peer sent its digest: ask for the buckets that differ and send ours in them.
    pub(super) fn handle_digest(&mut self, from: SocketAddr, sender: NodeId, theirs: &Digest) {
        let buckets = theirs.buckets();
        let ours = self.digest(theirs.salt, buckets);
        let mut bits = vec![0u8; buckets.div_ceil(8)];
        let mut differ = false;
        for i in 0..buckets {
            if ours.bucket_hash(i) != theirs.bucket_hash(i) {
                bits[i / 8] |= 1 << (i % 8);
                differ = true;
            }
        }
        if !differ {
            return;
        }
        let want = Want {
            buckets: buckets as u16,
            bits,
        };
        self.send(from, Some(sender.clone()), Body::Want(want.clone()), None);
        self.send_entries(from, Some(sender), false, |id| {
            want.wants(bucket_of(id, buckets))
        });
    }

    /// A peer answered our digest: send our entries in the buckets it wants.
    pub(super) fn handle_want(&mut self, from: SocketAddr, sender: NodeId, want: &Want) {
        let buckets = want.buckets as usize;
        self.send_entries(from, Some(sender), false, |id| {
            want.wants(bucket_of(id, buckets))
        });
    }
}
