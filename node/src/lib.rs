//! `shoal-node`: the node runtime and the `shoal` binary.
//!
//! Built so far (issue 4: transport and request path):
//!
//! - [`identity`]: node ids and client names, and how certificates name them (URI SANs).
//! - [`tls`]: the cluster CA, node and client certificates (`shoal cert …`), and the rustls
//!   configurations that enforce mutual TLS: chain to the cluster CA, node id check, client
//!   certificates never accepted as peers, ALPN per protocol, no 0-RTT, no resumption.
//! - [`codec`]: stream frames (version byte, kind, length prefix, 4 MiB bound checked before
//!   allocation) and message bodies; the only place this crate calls bincode.
//! - [`transport`]: the [`Transport`] trait (datagrams for SWIM, RPCs with deadlines,
//!   authenticated senders) with two implementations, [`QuicTransport`] (one UDP port, one
//!   connection per peer pair) and [`MemoryTransport`] (seeded fault injection for
//!   simulation), one conformance suite for both; plus [`QuicClient`](transport::QuicClient)
//!   and the client inbox for client-to-node connections.
//! - [`request`]: the request path as state machines without I/O: sloppy-quorum target
//!   selection, the [`UpdateCoordinator`](request::UpdateCoordinator) and
//!   [`GetCoordinator`](request::GetCoordinator) (read repair), quorum errors that say
//!   whether an update may have taken effect, and the node-to-node messages.
//! - [`handoff`]: hinted handoff as a state machine (page through a target's hints, deliver,
//!   delete only what the target acknowledged).
//! - [`runtime`]: [`Node`], the async driver over any [`Transport`] and store: SWIM over
//!   datagrams, the RPC server, one task per client request, the handoff worker, per-peer
//!   budgets, shutdown through a cancellation token. Its `update`/`get` are the API the client
//!   service will expose.
//! - [`cli`]: the `shoal` command line (`cert init|node|client` so far), one module per command
//!   group.
//!
//! Not built yet: anti-entropy, ring gossip (the ring is the configured member list for now),
//! the client service, admin and metrics, `node start` and `dev-cluster`. The store is used
//! through `shoal_storage::Engine<S>` for any `Store`; this crate builds `shoal-storage`
//! without RocksDB until the binary wires the real store. Its [`NodeId`] is stricter than
//! membership's (it must fit a certificate URI and a file name), so every node id of this
//! crate is also a valid membership id.
//!
//! Tests: unit tests of each protocol rule next to the state machines; `tests/request_path.rs`
//! (one rule per test on a healthy in-memory cluster) and `tests/sim.rs` (seeded simulation
//! with drops, duplicates, delays, reordering, a partition and a crash; every acknowledged
//! update on every primary replica once healed).

pub mod cli;
pub mod codec;
pub mod handoff;
pub mod identity;
pub mod request;
pub mod runtime;
pub mod tls;
pub mod transport;

pub use identity::{ClientName, Identity, NodeId};
pub use runtime::{
    DEFAULT_R, DEFAULT_W, HintBacklog, MetricsSnapshot, Node, NodeConfig, StartError, storage_key,
};
pub use transport::{
    Datagram, Inbox, IncomingRpc, MemoryNetwork, MemoryTransport, Peer, QuicTransport, Transport,
    TransportError,
};
