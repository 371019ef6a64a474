//! `shoal-node`: the node runtime and the `shoal` binary.
//!
//! The parts:
//!
//! - [`identity`], [`codec`]: re-exported from `shoal-client`, which holds the one
//!   implementation both sides use: node ids and client names (URI SANs), stream frames
//!   (version byte, kind, length prefix, 4 MiB bound checked before allocation) and bincode
//!   message bodies (the only place bincode is called).
//! - [`tls`]: certificates, TLS material and the dialing side come from `shoal-client`; this
//!   crate adds the server side (accepts peers and clients of the cluster CA). Together they
//!   enforce mutual TLS: chain to the cluster CA, node id check, client certificates never
//!   accepted as peers, ALPN per protocol, no 0-RTT, no resumption.
//! - [`transport`]: the [`Transport`] trait (datagrams for SWIM, RPCs with deadlines,
//!   authenticated senders) with two implementations, [`QuicTransport`] (one UDP port, one
//!   connection per peer pair) and [`MemoryTransport`] (seeded fault injection for
//!   simulation), one conformance suite for both; plus the client inbox for client-to-node
//!   connections (the dialing side, [`QuicClient`](transport::QuicClient), is `shoal-client`'s).
//!   A node's QUIC stateless-reset and connection-ID keys derive from its TLS key, so a node
//!   restarted after a crash resets its peers' and clients' old connections on their first
//!   packet instead of leaving them to the idle timeout.
//! - [`request`]: the request path as state machines without I/O: sloppy-quorum target
//!   selection, the [`UpdateCoordinator`](request::UpdateCoordinator) and
//!   [`GetCoordinator`](request::GetCoordinator) (read repair), quorum errors that say
//!   whether an update may have taken effect, and the node-to-node messages.
//! - [`handoff`]: hinted handoff as a state machine (page through a target's hints, deliver,
//!   delete only what the target acknowledged).
//! - [`runtime`]: [`Node`], the async driver over any [`Transport`] and store: SWIM over
//!   datagrams, the RPC server, one task per client request, the handoff worker, per-peer
//!   budgets, shutdown through a cancellation token. Its `update`/`get` are what the client
//!   service exposes.
//! - [`service`]: the client service: answers the client protocol
//!   ([`shoal_client::protocol`]) on the client inbox with `Node::update`/`get` and the
//!   routing table.
//! - [`config`]: the node's TOML configuration (`shoal node start --config FILE`), every key
//!   documented, unknown keys refused.
//! - [`cli`]: the `shoal` command line, one module per command group; the data commands
//!   (`counter`, `set`, `register`, `delete`, `get`) go through the SDK.
//!
//! - [`cluster`]: the cluster state (ring members, addresses, N per keyspace) as a CRDT that
//!   SWIM metadata announces and nodes pull and merge (ring gossip).
//! - [`antientropy`]: Merkle anti-entropy between the replicas of a partition as a state
//!   machine; the runtime drives it within a budget.
//! - [`admin`]: `/health` and Prometheus `/metrics` over HTTP on the admin address.
//!
//! `node start` and `dev-cluster` ([`cli`]) run real processes on
//! RocksDB (the `rocksdb` feature, on by default). The store is used
//! through `shoal_storage::Engine<S>` for any `Store`; this crate builds `shoal-storage`
//! with RocksDB only under the `rocksdb` feature. Its [`NodeId`] is stricter than
//! membership's (it must fit a certificate URI and a file name), so every node id of this
//! crate is also a valid membership id.
//!
//! Tests: unit tests of each protocol rule next to the state machines; `tests/request_path.rs`
//! (one rule per test on a healthy in-memory cluster) and `tests/sim.rs` (seeded simulation
//! with drops, duplicates, delays, reordering, a partition and a crash; every acknowledged
//! update on every primary replica once healed).

pub mod admin;
pub mod antientropy;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod handoff;
pub mod request;
pub mod runtime;
pub mod service;
pub mod tls;
pub mod transport;

pub use shoal_client::{codec, identity};

pub use identity::{ClientName, Identity, NodeId};
pub use runtime::{
    DEFAULT_R, DEFAULT_W, HintBacklog, MetricsSnapshot, Node, NodeConfig, StartError, storage_key,
};
pub use transport::{
    Datagram, Inbox, IncomingRpc, MemoryNetwork, MemoryTransport, Peer, QuicTransport, Transport,
    TransportError,
};
