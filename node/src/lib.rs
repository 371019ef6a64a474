//! `shoal-node`: the node runtime and the `shoal` binary.
//!
//! Built so far (issue 4, transport part):
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
//! - [`cli`]: the `shoal` command line (`cert init|node|client` so far), one module per command
//!   group.
//!
//! Not built yet: the coordinator (sloppy quorums, read repair), hinted handoff, anti-entropy,
//! the client service, admin and metrics, `node start` and `dev-cluster`. This crate does not
//! depend on `shoal-storage` or `shoal-membership` yet; its [`NodeId`] is
//! stricter than membership's (it must fit a certificate URI and a file name), so every node id
//! of this crate is also a valid membership id.

pub mod cli;
pub mod codec;
pub mod identity;
pub mod tls;
pub mod transport;

pub use identity::{ClientName, Identity, NodeId};
pub use transport::{
    Datagram, Inbox, IncomingRpc, MemoryNetwork, MemoryTransport, Peer, QuicTransport, Transport,
    TransportError,
};
