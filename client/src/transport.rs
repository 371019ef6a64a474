//! Client-side QUIC: one connection to one node with ALPN
//! [`ALPN_CLIENT`](crate::tls::ALPN_CLIENT), and the stream exchange (one request frame, one
//! response frame, see [`crate::codec`]) that nodes use between themselves too.
//!
//! [`TransportError`] is shared with the node's transport: each variant says whether the
//! request may have reached the other side ([`TransportError::may_have_taken_effect`]).

use std::future::Future;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use quinn::crypto::rustls::{HandshakeData, QuicClientConfig};
use quinn::{Connection, RecvStream, SendStream, VarInt};
use rustls::pki_types::CertificateDer;

use crate::codec::{CodecError, FrameKind, MAX_FRAME_LEN, read_frame, write_frame};
use crate::identity::{Identity, NODE_DNS_NAME, NodeId};
use crate::outage::OutageProbingFactory;
use crate::tls::{TlsMaterial, client_config, identity_of};

/// Connection close code: the endpoint is shutting down (or the client is done).
pub const CLOSE_SHUTDOWN: u32 = 0;

/// Smallest UDP payload every path must carry, in bytes (loopback, Ethernet, any IPv6 path).
const MIN_MTU: u16 = 1280;

/// A send or RPC failed. Each variant says whether the request may have reached the peer; see
/// [`may_have_taken_effect`](Self::may_have_taken_effect).
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The datagram is larger than the transport allows; nothing was sent.
    #[error("datagram of {len} bytes exceeds the limit of {max} bytes")]
    DatagramTooLarge {
        /// Its length, in bytes.
        len: usize,
        /// The limit, in bytes.
        max: usize,
    },
    /// The request is larger than [`MAX_FRAME_LEN`]; nothing was sent.
    #[error("request of {len} bytes exceeds the limit of {max} bytes")]
    RequestTooLarge {
        /// Its length, in bytes.
        len: usize,
        /// The limit, in bytes.
        max: usize,
    },
    /// No authenticated connection to the peer could be made (down, wrong address, wrong
    /// certificate, partitioned); nothing was sent. Retrying later may help.
    #[error("{peer} unreachable: {reason}")]
    Unreachable {
        /// Who (node id or address).
        peer: String,
        /// Why.
        reason: String,
    },
    /// The deadline passed before an answer came. The request may have been served.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The node left the request unacknowledged for this long, sending nothing at all for the
    /// last half of it, so the request was abandoned before its deadline (see
    /// [`QuicClient::give_up_when_silent`]). It may still have been served: the node's
    /// acknowledgements may be what was lost.
    #[error("node silent for {0:?} with the request unacknowledged")]
    Silent(Duration),
    /// The connection failed after the request may have been sent. It may have been served.
    #[error("connection lost: {0}")]
    ConnectionLost(String),
    /// The peer answered that it did not serve the request (e.g. `"overloaded"`).
    #[error("rejected by peer: {0}")]
    Rejected(String),
    /// The response was not a valid frame. The request may have been served.
    #[error("bad response: {0}")]
    BadResponse(#[from] CodecError),
    /// This transport was shut down (or, in memory, its node removed); nothing was sent.
    #[error("transport is shut down")]
    Closed,
}

impl TransportError {
    /// Whether the peer may have acted on the request: `false` only when it surely was not
    /// delivered (or was explicitly rejected), so an RPC that fails with `true` has an unknown
    /// outcome and must not be reported as a plain failure.
    pub fn may_have_taken_effect(&self) -> bool {
        matches!(
            self,
            TransportError::Timeout(_)
                | TransportError::Silent(_)
                | TransportError::ConnectionLost(_)
                | TransportError::BadResponse(_)
        )
    }
}

/// Errors with [`TransportError::RequestTooLarge`] if `request` exceeds [`MAX_FRAME_LEN`].
pub fn check_request(request: &Bytes) -> Result<(), TransportError> {
    if request.len() > MAX_FRAME_LEN {
        return Err(TransportError::RequestTooLarge {
            len: request.len(),
            max: MAX_FRAME_LEN,
        });
    }
    Ok(())
}

/// [`TransportError::Unreachable`] for `peer`.
pub fn unreachable(peer: impl ToString, reason: impl ToString) -> TransportError {
    TransportError::Unreachable {
        peer: peer.to_string(),
        reason: reason.to_string(),
    }
}

/// The ALPN and the certificate identity of an established connection.
pub fn authenticated(conn: &Connection) -> Result<(Vec<u8>, Identity), String> {
    let alpn = conn
        .handshake_data()
        .and_then(|data| data.downcast::<HandshakeData>().ok())
        .and_then(|data| data.protocol)
        .ok_or("no ALPN protocol")?;
    let certs = conn
        .peer_identity()
        .and_then(|certs| certs.downcast::<Vec<CertificateDer<'static>>>().ok())
        .ok_or("no peer certificate")?;
    let leaf = certs.first().ok_or("empty certificate chain")?;
    let identity = identity_of(leaf).map_err(|e| e.to_string())?;
    Ok((alpn, identity))
}

/// Sends one request frame on a fresh stream and reads the response frame.
pub async fn exchange(
    send: &mut SendStream,
    recv: &mut RecvStream,
    request: &[u8],
) -> Result<Bytes, TransportError> {
    send_request(send, request).await?;
    read_response(recv).await
}

/// Writes one request frame and finishes the stream.
async fn send_request(send: &mut SendStream, request: &[u8]) -> Result<(), TransportError> {
    write_frame(send, FrameKind::Request, request)
        .await
        .map_err(|e| TransportError::ConnectionLost(e.to_string()))?;
    let _ = send.finish();
    Ok(())
}

/// Whether the node has acknowledged every byte of `send`'s finished request (or stopped the
/// stream), looked at without waiting.
fn acknowledged(send: &SendStream) -> bool {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    std::pin::pin!(send.stopped()).poll(&mut cx).is_ready()
}

/// Reads the response frame of a request.
async fn read_response(recv: &mut RecvStream) -> Result<Bytes, TransportError> {
    match read_frame(recv, MAX_FRAME_LEN).await {
        Ok((FrameKind::Response, payload)) => Ok(Bytes::from(payload)),
        Ok((FrameKind::Error, reason)) => Err(TransportError::Rejected(
            String::from_utf8_lossy(&reason).into_owned(),
        )),
        Ok((FrameKind::Request, _)) => Err(TransportError::BadResponse(CodecError::Decode(
            "request frame in response".into(),
        ))),
        Err(e @ (CodecError::Io(_) | CodecError::Truncated | CodecError::Eof)) => {
            Err(TransportError::ConnectionLost(e.to_string()))
        }
        Err(e) => Err(TransportError::BadResponse(e)),
    }
}

/// QUIC settings of a client connection: idle timeout 5 s with keep-alives every second (so a
/// connection to a node that died closes within 5 s), up to 256 concurrent requests, no
/// streams from the node, and the congestion control of [`crate::outage`].
fn transport_config() -> quinn::TransportConfig {
    let mut config = quinn::TransportConfig::default();
    config
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(Duration::from_secs(5)).expect("in range"),
        ))
        .keep_alive_interval(Some(Duration::from_secs(1)))
        .max_concurrent_bidi_streams(VarInt::from_u32(0))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .initial_mtu(MIN_MTU)
        .min_mtu(MIN_MTU)
        .congestion_controller_factory(Arc::new(OutageProbingFactory::default()));
    config
}

/// A client's connection to one node (ALPN [`ALPN_CLIENT`](crate::tls::ALPN_CLIENT)), for the SDK, the CLI and tests.
#[derive(Debug)]
pub struct QuicClient {
    endpoint: quinn::Endpoint,
    conn: Connection,
    node: NodeId,
    /// See [`give_up_when_silent`](Self::give_up_when_silent).
    silence: Option<Duration>,
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
        client.transport_config(Arc::new(transport_config()));
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
            silence: None,
        })
    }

    /// Makes [`rpc`](Self::rpc) abandon a request, with [`TransportError::Silent`], once the
    /// node has left it unacknowledged for `after` (or four smoothed round trips, if longer)
    /// and sent nothing at all on the connection for the last half of that: a node that is
    /// cut off, paused or gone. A node that has acknowledged the request is waited for until
    /// the deadline, however long it takes to answer, and one that keeps sending (a large
    /// request being acknowledged piece by piece) is not silent. Without this, a request to a
    /// silent node waits out its whole deadline, since the QUIC connection looks alive until
    /// its idle timeout.
    pub fn give_up_when_silent(mut self, after: Duration) -> Self {
        self.silence = Some(after);
        self
    }

    /// The node this client is connected to, as its certificate names it.
    pub fn node_id(&self) -> &NodeId {
        &self.node
    }

    /// Whether the connection is still open (as far as this side knows).
    pub fn is_open(&self) -> bool {
        self.conn.close_reason().is_none()
    }

    /// One request, one response, within `timeout`.
    pub async fn rpc(&self, request: Bytes, timeout: Duration) -> Result<Bytes, TransportError> {
        check_request(&request)?;
        tokio::time::timeout(timeout, async {
            // No stream could be opened on a closed connection: nothing was sent.
            let (mut send, mut recv) = self
                .conn
                .open_bi()
                .await
                .map_err(|e| unreachable(&self.node, e))?;
            let Some(silence) = self.silence else {
                return exchange(&mut send, &mut recv, &request).await;
            };
            send_request(&mut send, &request).await?;
            let mut response = std::pin::pin!(read_response(&mut recv));
            // A request answered within half the limit costs nothing more than this wait.
            let mut wait = silence / 2;
            // Datagrams received by the previous check.
            let mut heard = None;
            loop {
                if let Ok(answer) = tokio::time::timeout(wait, &mut response).await {
                    return answer;
                }
                if acknowledged(&send) {
                    return response.await;
                }
                let now_heard = self.datagrams_received();
                wait = silence.max(self.conn.rtt() * 4) / 2;
                if heard == Some(now_heard) {
                    break;
                }
                heard = Some(now_heard);
            }
            // Stop QUIC from retransmitting it; the outcome is unknown.
            let _ = send.reset(VarInt::from_u32(0));
            Err(TransportError::Silent(wait * 2))
        })
        .await
        .map_err(|_| TransportError::Timeout(timeout))?
    }

    /// UDP datagrams received on the connection so far.
    fn datagrams_received(&self) -> u64 {
        self.conn.stats().udp_rx.datagrams
    }

    /// Closes the connection and waits briefly for the close to be sent.
    pub async fn close(self) {
        self.conn.close(VarInt::from_u32(CLOSE_SHUTDOWN), b"bye");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }
}
