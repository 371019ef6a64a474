//! The client protocol: what an application (the SDK, the CLI) and a node say to each other on
//! a client connection (ALPN [`ALPN_CLIENT`](crate::tls::ALPN_CLIENT)).
//!
//! One request, one response per QUIC stream, each a frame of [`crate::codec`] whose body is a
//! bincode [`ClientRequest`] or [`ClientResponse`]. Every frame carries the codec's format
//! version byte, so a node and a client of different formats refuse each other's frames
//! instead of misreading them.
//!
//! - [`ClientRequest::Update`] applies one [`Update`] through the node (coordinator) and
//!   answers once W replicas persisted it ([`ClientResponse::Updated`]).
//! - [`ClientRequest::Get`] reads from R replicas and answers with the merged [`View`]
//!   ([`ClientResponse::Got`]); a register's view carries the causal context to write back.
//! - [`ClientRequest::Ring`] answers with the routing table ([`RingInfo`]): every node's client
//!   address and liveness in the answering node's view, and each partition's preference list,
//!   so the client sends each request straight to a live replica of its key.
//! - [`ClientRequest::CreateKeyspace`] sets a keyspace's N in the answering node's cluster
//!   state, from which it spreads by gossip ([`ClientResponse::KeyspaceSet`]).
//! - [`ClientRequest::Status`] asks one node for its view: members with SWIM state and
//!   incarnation, ring version, partitions, hint backlog ([`NodeStatus`]).
//! - [`ClientRequest::Inspect`] asks one node for its own replica of a key, read from its store
//!   without a quorum ([`ReplicaState`]): what `shoal key-info` compares across replicas.
//! - A request that was not served gets [`ClientResponse::Error`], whose [`WireOutcome`] says
//!   whether it may have taken effect. A request whose bytes cannot be decoded is rejected at
//!   the frame level (the stream's error frame) and changes nothing.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use shoal_membership::{PartitionId, Partitioner};
use shoal_storage::{Kind, Update, View};

use crate::codec::{self, CodecError};

/// Longest keyspace name, in bytes.
pub const MAX_KEYSPACE_LEN: usize = u8::MAX as usize;

/// A client-chosen id of one update, the same on every attempt of it (tracing, and the key a
/// node may deduplicate by).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct OpId(pub u128);

impl OpId {
    /// A fresh random id.
    pub fn random() -> Self {
        Self(rand::random())
    }
}

impl std::fmt::Display for OpId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// A request from a client to a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientRequest {
    /// Apply an update.
    Update(UpdateRequest),
    /// Read a key.
    Get(GetRequest),
    /// Send the routing table.
    Ring,
    /// Set keyspace `name`'s N (1 to the ring's replicas), creating it if needed.
    CreateKeyspace {
        /// The keyspace.
        name: String,
        /// Its replication factor.
        n: u32,
    },
    /// Send this node's status.
    Status,
    /// Send this node's own replica of a key.
    Inspect {
        /// The keyspace.
        keyspace: String,
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
}

/// Apply `update` to `key` of `keyspace` with write quorum `w`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateRequest {
    /// The operation's id, the same on every attempt.
    pub op: OpId,
    /// The keyspace (1 to [`MAX_KEYSPACE_LEN`] bytes).
    pub keyspace: String,
    /// The key.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// The operation.
    pub update: Update,
    /// Write quorum, 1 to the keyspace's N.
    pub w: u32,
    /// Time the coordinator may take, in milliseconds.
    pub timeout_ms: u64,
}

/// Read `key` of `keyspace` with read quorum `r`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetRequest {
    /// The keyspace.
    pub keyspace: String,
    /// The key.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// Read quorum, 1 to the keyspace's N.
    pub r: u32,
    /// Time the coordinator may take, in milliseconds.
    pub timeout_ms: u64,
}

/// A node's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientResponse {
    /// The update reached its write quorum.
    Updated {
        /// Replicas that had persisted it when it was acknowledged (at least W).
        acks: u32,
    },
    /// The merged state of the key.
    Got(GetReply),
    /// The routing table.
    Ring(RingInfo),
    /// The keyspace's N is set on the answering node.
    KeyspaceSet {
        /// The node's cluster-state version after the change.
        ring_version: u64,
    },
    /// The answering node's status.
    Status(NodeStatus),
    /// The answering node's replica of a key.
    Inspected(ReplicaState),
    /// The request was not served; see the outcome.
    Error(ErrorReply),
}

/// The answer to a get.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetReply {
    /// The key's type, if any replica has a record of it (also after a delete: a key's type
    /// is fixed by its first update).
    pub kind: Option<Kind>,
    /// What the client sees; `None` if the key is absent (never written, or deleted). A
    /// register's view holds its siblings and the causal context that covers them.
    pub view: Option<View>,
    /// Replicas that answered.
    pub replies: u32,
}

/// Whether a request that was not served may have taken effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireOutcome {
    /// Nothing changed anywhere: retrying is safe.
    Failed,
    /// It may have been persisted by some replicas.
    Unknown,
}

/// Why a request was not served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The request is malformed (quorum out of range, names too long, bad sizes); retrying the
    /// same request fails the same way.
    Invalid,
    /// The store refused the update (the key holds another type, too large, corrupt record).
    Storage,
    /// Too few live replicas for the quorum.
    Unavailable,
    /// The quorum was not reached by the deadline or replicas failed.
    Quorum,
    /// The node is overloaded or shutting down.
    Busy,
}

/// A request that was not served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    /// Whether it may have taken effect.
    pub outcome: WireOutcome,
    /// The kind of failure.
    pub code: ErrorCode,
    /// What happened, for humans (one line).
    pub message: String,
}

/// One node as the routing table lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The node id (as its certificate names it).
    pub id: String,
    /// Where clients reach it.
    pub addr: SocketAddr,
    /// Whether the answering node counts it as live (alive or suspect).
    pub live: bool,
}

/// A member's state in SWIM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberState {
    /// Answering probes.
    Alive,
    /// Missed probes; may refute.
    Suspect,
    /// Declared failed.
    Dead,
    /// Left gracefully.
    Left,
}

impl MemberState {
    /// Lower-case name, as `shoal cluster status` prints it.
    pub fn name(self) -> &'static str {
        match self {
            MemberState::Alive => "alive",
            MemberState::Suspect => "suspect",
            MemberState::Dead => "dead",
            MemberState::Left => "left",
        }
    }
}

/// One member in a node's view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    /// Node id.
    pub node_id: String,
    /// Address.
    pub addr: SocketAddr,
    /// SWIM state.
    pub state: MemberState,
    /// SWIM incarnation.
    pub incarnation: u64,
    /// The cluster-state (ring) version the member announced.
    pub ring_version: u64,
    /// Whether it holds partitions in the ring.
    pub in_ring: bool,
    /// Partitions it is a primary replica of (at the ring's N).
    pub partitions: u32,
}

/// Hints a node holds for one target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HintInfo {
    /// The node the hints are for.
    pub target: String,
    /// Keys with a hint.
    pub keys: u64,
    /// Age of the oldest hint in milliseconds.
    pub oldest_age_ms: Option<u64>,
}

/// One node's view of the cluster and its own figures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The answering node.
    pub node_id: String,
    /// Its address.
    pub addr: SocketAddr,
    /// Its cluster-state (ring) version.
    pub ring_version: u64,
    /// Every member it knows, itself included, by node id.
    pub members: Vec<MemberInfo>,
    /// Keyspaces created, with their N.
    pub keyspaces: Vec<(String, u32)>,
    /// N of a keyspace never created.
    pub default_n: u32,
    /// Its hint backlog, per target.
    pub hints: Vec<HintInfo>,
    /// Client requests being coordinated.
    pub in_flight: u32,
    /// What anti-entropy did on this node since it started.
    pub anti_entropy: AntiEntropyStatus,
    /// Client requests this node coordinated since it started (every outcome).
    pub requests: u64,
    /// Of those, the ones that failed or ended with an unknown outcome.
    pub request_errors: u64,
    /// Peer RPCs that failed since it started.
    pub rpc_errors: u64,
    /// A digest of the node's data in the partitions it is a primary of (equal on two such
    /// nodes exactly when they hold the same data).
    pub data_digest: u128,
    /// Whether anti-entropy is paused on the node.
    pub anti_entropy_paused: bool,
}

/// A node's anti-entropy figures since it started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AntiEntropyStatus {
    /// Exchanges this node ran (as initiator).
    pub exchanges: u64,
    /// Keys whose state anti-entropy changed on this node.
    pub keys_repaired: u64,
    /// Payload bytes sent and received by its exchanges.
    pub bytes_sent: u64,
    /// See `bytes_sent`.
    pub bytes_received: u64,
    /// Partitions this node is a primary of.
    pub partitions: u32,
    /// Of those, partitions never fully compared since it started.
    pub never_compared: u32,
    /// The longest time since a partition was last fully compared, in milliseconds.
    pub oldest_compare_ms: Option<u64>,
    /// Per partition this node is a primary of, the milliseconds since it was last fully
    /// compared (`None`: not since the node started).
    pub compare_ages_ms: Vec<(u32, Option<u64>)>,
}

/// A node's own replica of a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaState {
    /// The answering node.
    pub node_id: String,
    /// The key's partition.
    pub partition: u32,
    /// The key's type, if the node has a record of it.
    pub kind: Option<Kind>,
    /// The record's checksum (a digest of its state): equal on two replicas iff their states
    /// are equal. `None` if the node has no record.
    pub digest: Option<u128>,
    /// Whether the node replicates the key's partition (a primary in its ring view).
    pub primary: bool,
    /// What a client would read from this replica alone; `None` without a record or for a
    /// deleted key.
    pub view: Option<View>,
}

/// The routing table: enough to send each request to a live replica of its key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingInfo {
    /// The ring version (a digest of the ring's member set).
    pub version: u64,
    /// Q, a power of two.
    pub partitions: u32,
    /// Every ring member.
    pub nodes: Vec<NodeInfo>,
    /// Per partition (`0..partitions`): the preference list, primaries first, as indexes into
    /// `nodes`.
    pub preference_lists: Vec<Vec<u16>>,
    /// Per partition: how many of the list's first entries are primaries.
    pub primaries: Vec<u16>,
    /// Keyspaces created, with their N.
    pub keyspaces: Vec<(String, u32)>,
    /// N of a keyspace never created.
    pub default_n: u32,
}

impl RingInfo {
    /// N of `keyspace`.
    pub fn n_for(&self, keyspace: &str) -> u32 {
        self.keyspaces
            .iter()
            .find(|(name, _)| name == keyspace)
            .map_or(self.default_n, |(_, n)| *n)
    }
}

impl RingInfo {
    /// Checks the table is consistent (sizes, indexes); a client refuses one that is not.
    pub fn validate(&self) -> Result<Partitioner, String> {
        let partitioner = Partitioner::new(self.partitions).map_err(|e| e.to_string())?;
        if self.preference_lists.len() != self.partitions as usize
            || self.primaries.len() != self.partitions as usize
        {
            return Err("preference lists do not match the partition count".into());
        }
        if self
            .preference_lists
            .iter()
            .flatten()
            .any(|&i| i as usize >= self.nodes.len())
        {
            return Err("preference list names an unknown node".into());
        }
        Ok(partitioner)
    }

    /// The preference list of a partition, as nodes.
    pub fn preference_list(&self, partition: PartitionId) -> impl Iterator<Item = &NodeInfo> {
        self.preference_lists
            .get(partition.0 as usize)
            .into_iter()
            .flatten()
            .filter_map(|&i| self.nodes.get(i as usize))
    }
}

/// The storage key of `key` in `keyspace`: `len(keyspace) as u8 ‖ keyspace ‖ key`, which is
/// what a key's partition is computed from. `None` for an empty keyspace name or one over
/// [`MAX_KEYSPACE_LEN`] bytes.
pub fn storage_key(keyspace: &str, key: &[u8]) -> Option<Vec<u8>> {
    if keyspace.is_empty() || keyspace.len() > MAX_KEYSPACE_LEN {
        return None;
    }
    let mut out = Vec::with_capacity(1 + keyspace.len() + key.len());
    out.push(keyspace.len() as u8);
    out.extend_from_slice(keyspace.as_bytes());
    out.extend_from_slice(key);
    Some(out)
}

/// Encodes a request body.
pub fn encode_request(request: &ClientRequest) -> Result<Vec<u8>, CodecError> {
    codec::encode(request)
}

/// Decodes a request body; bad bytes are an error that changes nothing.
pub fn decode_request(bytes: &[u8]) -> Result<ClientRequest, CodecError> {
    codec::decode(bytes)
}

/// Encodes a response body.
pub fn encode_response(response: &ClientResponse) -> Result<Vec<u8>, CodecError> {
    codec::encode(response)
}

/// Decodes a response body.
pub fn decode_response(bytes: &[u8]) -> Result<ClientResponse, CodecError> {
    codec::decode(bytes)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use shoal_storage::{RegisterView, SetOp};

    use super::*;

    #[test]
    fn requests_and_responses_round_trip() {
        let requests = [
            ClientRequest::Update(UpdateRequest {
                op: OpId(u128::MAX - 7),
                keyspace: "default".into(),
                key: b"k".to_vec(),
                update: Update::Set(SetOp::Add(vec![b"a".to_vec(), b"b".to_vec()])),
                w: 2,
                timeout_ms: 5000,
            }),
            ClientRequest::Get(GetRequest {
                keyspace: "ks".into(),
                key: vec![0, 255],
                r: 3,
                timeout_ms: 1,
            }),
            ClientRequest::Ring,
            ClientRequest::CreateKeyspace {
                name: "ks".into(),
                n: 2,
            },
            ClientRequest::Status,
            ClientRequest::Inspect {
                keyspace: "ks".into(),
                key: b"k".to_vec(),
            },
        ];
        for request in requests {
            let bytes = encode_request(&request).unwrap();
            assert_eq!(decode_request(&bytes).unwrap(), request);
        }
        let responses = [
            ClientResponse::Updated { acks: 2 },
            ClientResponse::Got(GetReply {
                kind: Some(Kind::Register),
                view: Some(View::Register(RegisterView {
                    values: vec![b"x".to_vec()],
                    context: Default::default(),
                })),
                replies: 2,
            }),
            ClientResponse::Got(GetReply {
                kind: Some(Kind::Set),
                view: Some(View::Set(BTreeSet::from([b"m".to_vec()]))),
                replies: 1,
            }),
            ClientResponse::Ring(RingInfo {
                version: 9,
                partitions: 2,
                nodes: vec![NodeInfo {
                    id: "n1".into(),
                    addr: "127.0.0.1:7100".parse().unwrap(),
                    live: true,
                }],
                preference_lists: vec![vec![0], vec![0]],
                primaries: vec![1, 1],
                keyspaces: vec![("ks".into(), 2)],
                default_n: 3,
            }),
            ClientResponse::KeyspaceSet { ring_version: 5 },
            ClientResponse::Status(NodeStatus {
                node_id: "n1".into(),
                addr: "127.0.0.1:7100".parse().unwrap(),
                ring_version: 77,
                members: vec![MemberInfo {
                    node_id: "n2".into(),
                    addr: "127.0.0.1:7101".parse().unwrap(),
                    state: MemberState::Suspect,
                    incarnation: 3,
                    ring_version: 77,
                    in_ring: true,
                    partitions: 170,
                }],
                keyspaces: vec![],
                default_n: 3,
                hints: vec![HintInfo {
                    target: "n2".into(),
                    keys: 4,
                    oldest_age_ms: Some(1500),
                }],
                in_flight: 0,
                anti_entropy: AntiEntropyStatus {
                    exchanges: 3,
                    oldest_compare_ms: Some(10),
                    ..AntiEntropyStatus::default()
                },
                requests: 12,
                request_errors: 1,
                rpc_errors: 2,
                data_digest: 99,
                anti_entropy_paused: false,
            }),
            ClientResponse::Inspected(ReplicaState {
                node_id: "n1".into(),
                partition: 9,
                kind: Some(Kind::Counter),
                digest: Some(u128::MAX - 1),
                primary: true,
                view: Some(View::Counter(-4)),
            }),
            ClientResponse::Error(ErrorReply {
                outcome: WireOutcome::Unknown,
                code: ErrorCode::Quorum,
                message: "1 of 2".into(),
            }),
        ];
        for response in responses {
            let bytes = encode_response(&response).unwrap();
            assert_eq!(decode_response(&bytes).unwrap(), response);
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(decode_request(&[0xff, 0xff, 0xff]).is_err());
        assert!(decode_request(&[]).is_err());
        let mut bytes = encode_request(&ClientRequest::Ring).unwrap();
        bytes.push(0);
        assert!(decode_request(&bytes).is_err());
        assert!(decode_response(&[9]).is_err());
    }

    #[test]
    fn ring_info_is_validated() {
        let mut ring = RingInfo {
            version: 1,
            partitions: 2,
            nodes: vec![],
            preference_lists: vec![vec![0], vec![]],
            primaries: vec![1, 0],
            keyspaces: vec![("ks".into(), 1)],
            default_n: 3,
        };
        assert_eq!(ring.n_for("ks"), 1);
        assert_eq!(ring.n_for("other"), 3);
        assert!(ring.validate().is_err());
        ring.preference_lists[0].clear();
        assert!(ring.validate().is_ok());
        ring.partitions = 3;
        assert!(ring.validate().is_err());
    }

    #[test]
    fn storage_key_prefixes_the_keyspace() {
        assert_eq!(storage_key("ab", b"k").unwrap(), b"\x02abk");
        assert!(storage_key("", b"k").is_none());
        assert!(storage_key(&"x".repeat(256), b"k").is_none());
    }
}
