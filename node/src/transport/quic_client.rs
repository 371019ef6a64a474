//! The node's end of client connections (ALPN [`ALPN_CLIENT`](crate::tls::ALPN_CLIENT)): a
//! node hands their requests to its [`ClientInbox`]; the client service answers them. The
//! dialing side is [`QuicClient`](shoal_client::transport::QuicClient) in `shoal-client`.

use std::net::SocketAddr;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::Responder;
use crate::identity::Identity;

/// An RPC from an application client (ALPN [`ALPN_CLIENT`](crate::tls::ALPN_CLIENT)).
#[derive(Debug)]
pub struct ClientRpc {
    /// Who sent it: a client, or a node acting as a client.
    pub client: Identity,
    /// The client's address.
    pub addr: SocketAddr,
    /// The request bytes, at most [`MAX_FRAME_LEN`](crate::codec::MAX_FRAME_LEN).
    pub request: Bytes,
    pub(super) responder: Responder,
}

impl ClientRpc {
    /// Sends `response`.
    pub fn respond(self, response: Bytes) {
        self.responder.send(Ok(response));
    }

    /// Tells the client the request was not served.
    pub fn reject(self, reason: impl Into<String>) {
        self.responder.send(Err(reason.into()));
    }
}

/// RPCs from application clients, for the client service.
#[derive(Debug)]
pub struct ClientInbox {
    /// The queue.
    pub rpcs: mpsc::Receiver<ClientRpc>,
}
