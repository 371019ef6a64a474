//! Moving bytes between nodes: the [`Transport`] trait the node runtime drives, and its two
//! implementations, [`QuicTransport`] (quinn, mutual TLS) and [`MemoryTransport`] (an
//! in-process network with fault injection for seeded simulation).
//!
//! Two services, both addressed to a [`Peer`] (node id + address) and both authenticated (the
//! sender of everything that arrives is a node id proven by its certificate, or, in memory, by
//! construction):
//!
//! - **Datagrams** ([`Transport::send_datagram`]): unreliable, unordered, at most
//!   [`MAX_DATAGRAM_LEN`] bytes, fire-and-forget. SWIM rides on them. A send never blocks: with
//!   no connection to the peer yet, one is dialed in the background and the datagram follows
//!   it (or is dropped if that dial fails, as UDP would).
//! - **RPCs** ([`Transport::rpc`]): one request, one response, each at most
//!   [`MAX_FRAME_LEN`](crate::codec::MAX_FRAME_LEN) bytes, with a deadline. On QUIC each RPC has its own bidirectional
//!   stream, so a slow RPC never blocks another.
//!
//! Incoming traffic arrives on the bounded queues of an [`Inbox`] (one per transport). When a
//! queue is full, a datagram is dropped and an RPC is rejected with [`OVERLOADED`]: a slow
//! consumer sheds load instead of stalling connections.
//!
//! What a failed RPC tells the caller is in [`TransportError::may_have_taken_effect`].
//!
//! The conformance suite in `conformance.rs` runs the same tests against both
//! implementations.
//!
//! ```
//! use std::time::Duration;
//!
//! use bytes::Bytes;
//! use shoal_node::NodeId;
//! use shoal_node::transport::{MemoryNetwork, Peer, Transport};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let net = MemoryNetwork::new(42); // the seed of every injected fault
//! let peer = |id: &str, port: u16| Peer {
//!     id: NodeId::new(id).unwrap(),
//!     addr: ([127, 0, 0, 1], port).into(),
//! };
//! let (a, _a_inbox) = net.add_node(peer("a", 7001));
//! let (b, mut b_inbox) = net.add_node(peer("b", 7002));
//! tokio::spawn(async move {
//!     while let Some(rpc) = b_inbox.rpcs.recv().await {
//!         let answer = [&b"re: "[..], &rpc.request[..]].concat();
//!         rpc.respond(Bytes::from(answer));
//!     }
//! });
//! let answer = a.rpc(b.local(), Bytes::from("hello"), Duration::from_secs(1)).await;
//! assert_eq!(answer.unwrap(), "re: hello");
//! # }
//! ```

mod memory;
mod quic;
mod quic_client;
#[doc(hidden)]
pub mod relay;

#[cfg(test)]
mod conformance;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::identity::NodeId;

pub use memory::{FaultConfig, MemoryNetwork, MemoryTransport};
pub use quic::{
    BindError, CLOSE_DUPLICATE, CLOSE_FORBIDDEN, MIN_MTU, QuicConfig, QuicTransport,
    STREAM_MALFORMED, STREAM_UNANSWERED,
};
pub use quic_client::{ClientInbox, ClientRpc};
pub use shoal_client::outage::{OUTAGE, OutageProbing, OutageProbingFactory, PROBE_SPACING};
pub use shoal_client::transport::CLOSE_SHUTDOWN;
pub use shoal_client::transport::{QuicClient, TransportError, check_request};

/// Largest datagram payload, in bytes. QUIC is configured so that a datagram this large always
/// fits one packet (see [`QuicConfig`]).
pub const MAX_DATAGRAM_LEN: usize = 1200;

/// Reason an RPC is rejected when the receiver's queue is full.
pub const OVERLOADED: &str = "overloaded";

/// What a caller is told when the handler dropped its request without answering.
pub const UNANSWERED: &str = "request dropped without an answer";

/// A node and the address it listens on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Peer {
    /// The node's id, as its certificate names it.
    pub id: NodeId,
    /// Its UDP address (QUIC) or its registered address (memory).
    pub addr: SocketAddr,
}

/// A datagram from an authenticated peer.
#[derive(Debug, Clone)]
pub struct Datagram {
    /// Who sent it.
    pub from: Peer,
    /// The bytes, at most [`MAX_DATAGRAM_LEN`].
    pub payload: Bytes,
}

/// An RPC request from an authenticated peer, waiting for an answer.
///
/// Answer with [`respond`](Self::respond) or [`reject`](Self::reject). Dropping it unanswered
/// fails the caller's RPC with [`TransportError::ConnectionLost`] (unknown outcome: the handler
/// may have acted before giving up). If the caller has given up (deadline), the answer is
/// discarded.
#[derive(Debug)]
pub struct IncomingRpc {
    /// Who sent it.
    pub from: Peer,
    /// The request bytes, at most [`MAX_FRAME_LEN`](crate::codec::MAX_FRAME_LEN).
    pub request: Bytes,
    responder: Responder,
}

impl IncomingRpc {
    /// Sends `response` (at most [`MAX_FRAME_LEN`](crate::codec::MAX_FRAME_LEN) bytes; a larger one reaches the caller as a
    /// rejection).
    pub fn respond(self, response: Bytes) {
        self.responder.send(Ok(response));
    }

    /// Tells the caller the request was not served, with a short reason.
    pub fn reject(self, reason: impl Into<String>) {
        self.responder.send(Err(reason.into()));
    }
}

/// The answer channel of one incoming request.
#[derive(Debug)]
pub(crate) struct Responder(oneshot::Sender<Result<Bytes, String>>);

impl Responder {
    pub(crate) fn new() -> (Self, oneshot::Receiver<Result<Bytes, String>>) {
        let (tx, rx) = oneshot::channel();
        (Self(tx), rx)
    }

    pub(crate) fn send(self, answer: Result<Bytes, String>) {
        // The caller may have given up; then there is nobody to tell.
        let _ = self.0.send(answer);
    }
}

/// The receiving side of a transport: bounded queues of incoming datagrams and RPCs. Each is
/// meant for one owner task (SWIM for datagrams, the request path for RPCs).
#[derive(Debug)]
pub struct Inbox {
    /// Datagrams from peers.
    pub datagrams: mpsc::Receiver<Datagram>,
    /// RPC requests from peers.
    pub rpcs: mpsc::Receiver<IncomingRpc>,
}

/// The sending half of an [`Inbox`], held by the transport.
#[derive(Debug, Clone)]
pub(crate) struct InboxSender {
    datagrams: mpsc::Sender<Datagram>,
    rpcs: mpsc::Sender<IncomingRpc>,
}

impl InboxSender {
    pub(crate) fn new(capacity: usize) -> (Self, Inbox) {
        let (dtx, drx) = mpsc::channel(capacity.max(1));
        let (rtx, rrx) = mpsc::channel(capacity.max(1));
        (
            Self {
                datagrams: dtx,
                rpcs: rtx,
            },
            Inbox {
                datagrams: drx,
                rpcs: rrx,
            },
        )
    }

    /// Queues a datagram; drops it if the queue is full or closed. Returns whether it was
    /// queued.
    pub(crate) fn deliver_datagram(&self, datagram: Datagram) -> bool {
        match self.datagrams.try_send(datagram) {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(reason = %e, "datagram dropped at inbox");
                false
            }
        }
    }

    /// Queues an RPC; when the queue is full or closed the request is answered at once with a
    /// rejection. Returns the receiver of the answer.
    pub(crate) fn deliver_rpc(
        &self,
        from: Peer,
        request: Bytes,
    ) -> oneshot::Receiver<Result<Bytes, String>> {
        let (responder, answer) = Responder::new();
        let rpc = IncomingRpc {
            from,
            request,
            responder,
        };
        if let Err(e) = self.rpcs.try_send(rpc) {
            let reason = match e {
                mpsc::error::TrySendError::Full(_) => OVERLOADED,
                mpsc::error::TrySendError::Closed(_) => "not serving",
            };
            let rpc = match e {
                mpsc::error::TrySendError::Full(rpc) | mpsc::error::TrySendError::Closed(rpc) => {
                    rpc
                }
            };
            rpc.reject(reason);
        }
        answer
    }
}

/// Node-to-node messaging, as the node runtime sees it. Implemented by [`QuicTransport`] and
/// [`MemoryTransport`]; cheap to clone (clones share one endpoint).
///
/// Incoming traffic is not part of the trait: each constructor returns the [`Inbox`] of its
/// transport alongside it.
pub trait Transport: Clone + Send + Sync + 'static {
    /// This node.
    fn local(&self) -> &Peer;

    /// Sends one datagram to `to`, best effort; returns at once. Errors only for a payload
    /// over [`MAX_DATAGRAM_LEN`] or a shut-down transport.
    fn send_datagram(&self, to: &Peer, payload: Bytes) -> Result<(), TransportError>;

    /// Sends `request` to `to` and waits for its response, at most `timeout` in total
    /// (connecting included).
    fn rpc(
        &self,
        to: &Peer,
        request: Bytes,
        timeout: Duration,
    ) -> impl Future<Output = Result<Bytes, TransportError>> + Send;

    /// Connects to whatever node listens at `addr` (a seed) and returns its authenticated id,
    /// keeping the connection for later use.
    fn discover(
        &self,
        addr: SocketAddr,
        timeout: Duration,
    ) -> impl Future<Output = Result<NodeId, TransportError>> + Send;

    /// Stops sending and receiving; in-flight RPCs fail. Idempotent.
    fn shutdown(&self) -> impl Future<Output = ()> + Send;
}

pub(crate) fn check_datagram(payload: &Bytes) -> Result<(), TransportError> {
    if payload.len() > MAX_DATAGRAM_LEN {
        return Err(TransportError::DatagramTooLarge {
            len: payload.len(),
            max: MAX_DATAGRAM_LEN,
        });
    }
    Ok(())
}
