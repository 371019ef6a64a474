//! The client side of the QUIC transport: [`QuicClient`] dials a node with ALPN
//! [`ALPN_CLIENT`](crate::tls::ALPN_CLIENT) (SDK, CLI, tests), and a node hands the requests of such connections to its
//! [`ClientInbox`]. The client protocol itself (what the bytes mean) is not defined yet.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use quinn::crypto::rustls::QuicClientConfig;
use quinn::{Connection, VarInt};
use tokio::sync::mpsc;

use super::quic::{CLOSE_SHUTDOWN, QuicConfig, authenticated, exchange, unreachable};
use super::{Responder, TransportError, check_request};
use crate::identity::{Identity, NODE_DNS_NAME, NodeId};
use crate::tls::{TlsMaterial, client_config};

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

/// A client's connection to one node (ALPN [`ALPN_CLIENT`](crate::tls::ALPN_CLIENT)), for the SDK, the CLI and tests.
#[derive(Debug)]
pub struct QuicClient {
    endpoint: quinn::Endpoint,
    conn: Connection,
    node: NodeId,
}

impl QuicClient {
    /// Connects to the node at `addr` with client (or node) material.
    pub async fn connect(
        material: &TlsMaterial,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<Self, TransportError> {
        let fail = |reason: String| unreachable(addr, reason);
        let tls = client_config(material).map_err(|e| fail(e.to_string()))?;
        let crypto = QuicClientConfig::try_from(tls).map_err(|e| fail(e.to_string()))?;
        let mut client = quinn::ClientConfig::new(Arc::new(crypto));
        let transport = QuicConfig::new(addr)
            .transport()
            .map_err(|e| fail(e.to_string()))?;
        client.transport_config(Arc::new(transport));
        let bind = if addr.is_ipv4() {
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))
        } else {
            SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0))
        };
        let endpoint = quinn::Endpoint::client(bind).map_err(|e| fail(e.to_string()))?;
        let connecting = endpoint
            .connect_with(client, addr, NODE_DNS_NAME)
            .map_err(|e| fail(e.to_string()))?;
        let conn = tokio::time::timeout(timeout, connecting)
            .await
            .map_err(|_| TransportError::Timeout(timeout))?
            .map_err(|e| fail(e.to_string()))?;
        let node = match authenticated(&conn) {
            Ok((_, Identity::Node(id))) => id,
            Ok((_, other)) => return Err(fail(format!("{other} is not a node"))),
            Err(reason) => return Err(fail(reason)),
        };
        Ok(Self {
            endpoint,
            conn,
            node,
        })
    }

    /// The node this client is connected to, as its certificate names it.
    pub fn node_id(&self) -> &NodeId {
        &self.node
    }

    /// One request, one response, within `timeout`.
    pub async fn rpc(&self, request: Bytes, timeout: Duration) -> Result<Bytes, TransportError> {
        check_request(&request)?;
        tokio::time::timeout(timeout, async {
            let (mut send, mut recv) = self
                .conn
                .open_bi()
                .await
                .map_err(|e| TransportError::ConnectionLost(e.to_string()))?;
            exchange(&mut send, &mut recv, &request).await
        })
        .await
        .map_err(|_| TransportError::Timeout(timeout))?
    }

    /// Closes the connection and waits briefly for the close to be sent.
    pub async fn close(self) {
        self.conn.close(VarInt::from_u32(CLOSE_SHUTDOWN), b"bye");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }
}
