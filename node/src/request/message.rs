//! Node-to-node messages of the request path, carried as RPC bodies through [`crate::codec`].
//!
//! Every request carries a [`RequestId`] for tracing: the coordinator's id of the client
//! request it serves, so one update can be followed across the nodes it touches. Records
//! travel as their stored bytes ([`Record::as_bytes`]); the receiver checks their checksum
//! ([`Record::from_bytes`]) before using them, so a damaged record is refused, never merged.
//!
//! A request that is not served is answered with [`IncomingRpc::reject`](crate::IncomingRpc)
//! and a reason; the caller then knows the receiver changed nothing
//! ([`TransportError::Rejected`](crate::TransportError)).

use std::fmt;

use serde::{Deserialize, Serialize};
use shoal_storage::{Record, Update};

use crate::codec::{self, CodecError};

/// Identifies one client request across nodes (logs and spans only; never used for
/// deduplication).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RequestId(pub u64);

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Most hints one [`PeerRequest::DeliverHints`] carries.
pub const MAX_HINTS_PER_BATCH: usize = 256;

/// Most writes one [`PeerRequest::Replicate`] carries.
pub const MAX_REPLICATE_WRITES: usize = 256;

/// One record of a [`PeerRequest::Replicate`]: store `record` for `(partition, key)`. With
/// `hint_for`, the receiver is a fallback standing in for that primary: it also keeps the
/// state as a hint for it (delivered by hinted handoff).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaWrite {
    /// Tracing id of the client request (or read repair) the write serves.
    pub id: RequestId,
    /// The key's partition.
    pub partition: u32,
    /// The storage key (keyspace-prefixed).
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// Record bytes.
    #[serde(with = "serde_bytes")]
    pub record: Vec<u8>,
    /// The primary a fallback replaces, by node id.
    pub hint_for: Option<String>,
}

/// A request from one node to another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerRequest {
    /// Store these records: merge each into the local state. A coordinator's replication to
    /// one peer is coalesced: the writes it makes while earlier ones to that peer are still
    /// in flight go together in the next request (see `runtime::replicate`), so a burst of
    /// small writes costs one request, one answer and full packets rather than a packet
    /// and an answer per key. Answered with [`PeerResponse::Replicated`] once everything
    /// stored is durable.
    Replicate {
        /// The writes, at most [`MAX_REPLICATE_WRITES`], about
        /// [`BATCH_BYTES`](shoal_storage::BATCH_BYTES) past the first.
        writes: Vec<ReplicaWrite>,
    },
    /// Read the stored record of `(partition, key)`. Answered with [`PeerResponse::Record`].
    Read {
        /// Tracing id.
        id: RequestId,
        /// The key's partition.
        partition: u32,
        /// The storage key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// Hints delivered to the primary they were held for, in one batch: merge them all in one
    /// durable write, then answer [`PeerResponse::Stored`]; the sender deletes its hints only
    /// after that answer. A batch any of whose records does not merge is refused whole (the
    /// sender keeps every hint of it).
    DeliverHints {
        /// Tracing id.
        id: RequestId,
        /// `(partition, storage key, record bytes)`, at most [`MAX_HINTS_PER_BATCH`].
        #[serde(with = "shoal_storage::wire::triples")]
        hints: Vec<(u32, Vec<u8>, Vec<u8>)>,
    },
    /// Coordinate an update for a node that does not replicate the key. Answered with
    /// [`PeerResponse::Updated`].
    ForwardUpdate {
        /// Tracing id.
        id: RequestId,
        /// The keyspace.
        keyspace: String,
        /// The key inside the keyspace.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// The operation.
        update: Update,
        /// Write quorum.
        w: usize,
        /// Time the coordinator may take, in milliseconds.
        timeout_ms: u64,
    },
    /// Coordinate a get for a node that does not replicate the key. Answered with
    /// [`PeerResponse::Got`].
    ForwardGet {
        /// Tracing id.
        id: RequestId,
        /// The keyspace.
        keyspace: String,
        /// The key inside the keyspace.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// Read quorum.
        r: usize,
        /// Time the coordinator may take, in milliseconds.
        timeout_ms: u64,
    },
    /// Send your cluster state (ring members, addresses, keyspaces). Answered with
    /// [`PeerResponse::Cluster`].
    PullCluster {
        /// Tracing id.
        id: RequestId,
    },
    /// Anti-entropy: compare the roots of your trees of these partitions with mine (one
    /// request per peer and round, and a second one for the groups that differ). Answered
    /// with [`PeerResponse::Roots`]: nothing more when `summary` matches the receiver's own,
    /// else the roots, or the group summaries of a large request that allows them.
    AeRoots {
        /// Tracing id.
        id: RequestId,
        /// The partitions, as a [`partition_bitmap`](crate::antientropy::partition_bitmap).
        #[serde(with = "serde_bytes")]
        partitions: Vec<u8>,
        /// The asker's [`roots_summary`](crate::antientropy::roots_summary) of them.
        summary: u128,
        /// Whether the answer may be group summaries instead of roots (the first request of
        /// a round; the second asks for roots).
        grouped: bool,
        /// The asker has just started (a restart, a wiped or new replica): when the roots
        /// differ, the receiver starts its own round at once, so the repair runs in both
        /// directions from the start instead of waiting for the receiver's next round.
        starting: bool,
    },
    /// Anti-entropy: the hashes of the children of `nodes` at `level` of your tree of
    /// `partition`. Answered with [`PeerResponse::Hashes`].
    AeHashes {
        /// Tracing id.
        id: RequestId,
        /// The partition.
        partition: u32,
        /// Level of the nodes (0 = root).
        level: u8,
        /// Node indexes at that level (at most 256).
        nodes: Vec<u32>,
    },
    /// Anti-entropy: your `(key, value hash)` lists of these leaves of `partition`. Answered
    /// with [`PeerResponse::LeafKeys`].
    AeLeafKeys {
        /// Tracing id.
        id: RequestId,
        /// The partition.
        partition: u32,
        /// Leaf indexes (at most [`LEAVES_PER_STEP`](crate::antientropy::LEAVES_PER_STEP)).
        leaves: Vec<u16>,
    },
    /// Anti-entropy: your records of these keys of `partition`. Answered with
    /// [`PeerResponse::Records`]: those it has, in order, until they hold about
    /// [`BATCH_BYTES`](shoal_storage::BATCH_BYTES) (the asker repairs the rest in a later
    /// round).
    AeFetch {
        /// Tracing id.
        id: RequestId,
        /// The partition.
        partition: u32,
        /// Storage keys (at most [`KEYS_PER_STEP`](crate::antientropy::KEYS_PER_STEP)).
        #[serde(with = "shoal_storage::wire::list")]
        keys: Vec<Vec<u8>>,
    },
    /// Anti-entropy: every record of leaves `first..=last` of `partition` (the asker has none
    /// of them). Answered with [`PeerResponse::LeafRecords`], whole leaves of at most
    /// [`KEYS_PER_STEP`](crate::antientropy::KEYS_PER_STEP) records and about
    /// [`BATCH_BYTES`](shoal_storage::BATCH_BYTES) at a time.
    AeFetchLeaves {
        /// Tracing id.
        id: RequestId,
        /// The partition.
        partition: u32,
        /// First leaf.
        first: u16,
        /// Last leaf (inclusive).
        last: u16,
    },
    /// Anti-entropy: merge these records of `partition`. Answered with
    /// [`PeerResponse::Stored`] once durable.
    AePush {
        /// Tracing id.
        id: RequestId,
        /// The partition.
        partition: u32,
        /// `(storage key, record bytes)` (at most
        /// [`MAX_PUSH_RECORDS`](crate::antientropy::MAX_PUSH_RECORDS), and about
        /// [`BATCH_BYTES`](shoal_storage::BATCH_BYTES) past the first).
        #[serde(with = "shoal_storage::wire::pairs")]
        records: Vec<(Vec<u8>, Vec<u8>)>,
    },
}

impl PeerRequest {
    /// The request's tracing id (a `Replicate`'s: its first write's).
    pub fn id(&self) -> RequestId {
        match self {
            PeerRequest::Replicate { writes } => writes.first().map_or(RequestId(0), |w| w.id),
            PeerRequest::Read { id, .. }
            | PeerRequest::DeliverHints { id, .. }
            | PeerRequest::ForwardUpdate { id, .. }
            | PeerRequest::ForwardGet { id, .. }
            | PeerRequest::PullCluster { id }
            | PeerRequest::AeRoots { id, .. }
            | PeerRequest::AeHashes { id, .. }
            | PeerRequest::AeLeafKeys { id, .. }
            | PeerRequest::AeFetch { id, .. }
            | PeerRequest::AeFetchLeaves { id, .. }
            | PeerRequest::AePush { id, .. } => *id,
        }
    }

    /// The request's kind, as the `kind` label of the peer traffic metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            PeerRequest::Replicate { .. } => "replicate",
            PeerRequest::Read { .. } => "read",
            PeerRequest::DeliverHints { .. } => "deliver_hints",
            PeerRequest::ForwardUpdate { .. } => "forward_update",
            PeerRequest::ForwardGet { .. } => "forward_get",
            PeerRequest::PullCluster { .. } => "pull_cluster",
            PeerRequest::AeRoots { .. } => "ae_roots",
            PeerRequest::AeHashes { .. } => "ae_hashes",
            PeerRequest::AeLeafKeys { .. } => "ae_leaf_keys",
            PeerRequest::AeFetch { .. } => "ae_fetch",
            PeerRequest::AeFetchLeaves { .. } => "ae_fetch_leaves",
            PeerRequest::AePush { .. } => "ae_push",
        }
    }
}

/// Whether a failed request may have taken effect, as the wire carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireOutcome {
    /// Nothing changed anywhere.
    Failed,
    /// It may have changed some replicas.
    Unknown,
}

/// A forwarded request that did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireFailure {
    /// Whether it may have taken effect.
    pub outcome: WireOutcome,
    /// What went wrong, for humans.
    pub message: String,
}

/// What the coordinator a request was forwarded to achieved ([`PeerResponse::Updated`] and
/// [`PeerResponse::Got`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Forwarded {
    /// Replicas that acknowledged the update, or replied to the get.
    pub count: usize,
    /// The resulting record (update) or the merged one (get), if any.
    #[serde(with = "serde_bytes")]
    pub record: Option<Vec<u8>>,
}

/// The answer to a [`PeerRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerResponse {
    /// The state is durable on the receiver (answer to `DeliverHints` and `AePush`).
    Stored,
    /// The receiver's record, if it has one (answer to `Read`).
    Record(#[serde(with = "serde_bytes")] Option<Vec<u8>>),
    /// The outcome of a forwarded update: acks and the coordinator's resulting record.
    Updated(Result<Forwarded, WireFailure>),
    /// The outcome of a forwarded get: replies and the merged record.
    Got(Result<Forwarded, WireFailure>),
    /// The receiver's encoded [`ClusterState`](crate::cluster::ClusterState) (answer to
    /// `PullCluster`).
    Cluster(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Tree hashes (answer to `AeHashes`).
    Hashes(Vec<u128>),
    /// Answer to `AeRoots`. When hinted handoff is repairing one of the two (the answering node
    /// is delivering hints to the asker, or is receiving hints from anyone), anti-entropy
    /// with it waits, so the two do not send the same keys; no roots are sent then.
    ///
    /// When the summaries differ, a request naming at most
    /// [`ROOTS_DIRECT`](crate::antientropy::ROOTS_DIRECT) partitions gets their roots; a larger
    /// one gets the summaries of its groups of
    /// [`ROOTS_GROUP`](crate::antientropy::ROOTS_GROUP) partitions instead, and the asker
    /// then asks for the partitions of the groups that differ. So one differing partition
    /// among hundreds costs two small answers, not every root.
    Roots {
        /// One root per asked partition, in order; empty when the summaries matched (every
        /// root is equal), when `groups` is sent instead, or when `handoff_running`.
        roots: Vec<u128>,
        /// One [`roots_summary`](crate::antientropy::roots_summary) per group of
        /// `ROOTS_GROUP` asked partitions, in order (the last group may be smaller); empty
        /// unless more than `ROOTS_DIRECT` partitions were asked and the summaries differ.
        groups: Vec<u128>,
        /// Hinted handoff to or from the answering node is running: compare later.
        handoff_running: bool,
    },
    /// Records of whole leaves (answer to `AeFetchLeaves`): `(key, record bytes)`, and the
    /// first leaf not sent yet when the answer stopped early.
    LeafRecords {
        /// The records.
        #[serde(with = "shoal_storage::wire::pairs")]
        records: Vec<(Vec<u8>, Vec<u8>)>,
        /// Ask again from this leaf.
        next: Option<u16>,
    },
    /// The partition is being repaired with another peer right now (anti-entropy repairs one
    /// partition of a node with one peer at a time, so a key is not received twice): try it
    /// in a later round.
    Busy,
    /// `(key, value hash)` of the asked leaves (answer to `AeLeafKeys`).
    LeafKeys(#[serde(with = "shoal_storage::wire::hashed")] Vec<(Vec<u8>, u128)>),
    /// `(key, record bytes)` of the asked keys the receiver has (answer to `AeFetch`).
    Records(#[serde(with = "shoal_storage::wire::pairs")] Vec<(Vec<u8>, Vec<u8>)>),
    /// Answer to `Replicate`: every write but those in `refused` is durable on the receiver.
    Replicated {
        /// `(index in the request, why)` of each write not stored (a damaged record, a
        /// value of another type than the key's); empty when all were.
        refused: Vec<(u32, String)>,
    },
}

/// Encodes a request body.
pub fn encode_request(request: &PeerRequest) -> Result<Vec<u8>, CodecError> {
    codec::encode(request)
}

/// Decodes a request body; bad bytes are an error that changes nothing.
pub fn decode_request(bytes: &[u8]) -> Result<PeerRequest, CodecError> {
    codec::decode(bytes)
}

/// Encodes a response body.
pub fn encode_response(response: &PeerResponse) -> Result<Vec<u8>, CodecError> {
    codec::encode(response)
}

/// Decodes a response body.
pub fn decode_response(bytes: &[u8]) -> Result<PeerResponse, CodecError> {
    codec::decode(bytes)
}

/// Checks record bytes from a peer (header and checksum).
pub fn record_from_wire(bytes: Vec<u8>) -> Result<Record, CodecError> {
    Record::from_bytes(bytes).map_err(|e| CodecError::Decode(format!("record: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_storage::{Kind, Value};

    #[test]
    fn messages_round_trip_and_damaged_records_are_refused() {
        let record = Record::encode(&Value::empty(Kind::Counter)).unwrap();
        let request = PeerRequest::Replicate {
            writes: vec![ReplicaWrite {
                id: RequestId(7),
                partition: 3,
                key: b"k".to_vec(),
                record: record.as_bytes().to_vec(),
                hint_for: Some("n2".into()),
            }],
        };
        assert_eq!(request.id(), RequestId(7));
        let bytes = encode_request(&request).unwrap();
        assert_eq!(decode_request(&bytes).unwrap(), request);
        let response = PeerResponse::Updated(Err(WireFailure {
            outcome: WireOutcome::Unknown,
            message: "timeout".into(),
        }));
        let bytes = encode_response(&response).unwrap();
        assert_eq!(decode_response(&bytes).unwrap(), response);
        assert!(decode_request(&[0xff, 0xff]).is_err());
        // A forwarded outcome is encoded as the (count, record) pair it was before it had a
        // name, so nodes of both versions understand each other.
        for record in [None, Some(vec![9u8; 300])] {
            let named = Forwarded {
                count: 2,
                record: record.clone(),
            };
            assert_eq!(
                codec::encode(&named).unwrap(),
                codec::encode(&(2usize, record)).unwrap()
            );
            let response = PeerResponse::Got(Ok(named));
            let bytes = encode_response(&response).unwrap();
            assert_eq!(decode_response(&bytes).unwrap(), response);
        }

        let mut damaged = record.as_bytes().to_vec();
        *damaged.last_mut().unwrap() ^= 1;
        assert!(record_from_wire(damaged).is_err());
        assert_eq!(
            record_from_wire(record.as_bytes().to_vec()).unwrap(),
            record
        );
    }
}
