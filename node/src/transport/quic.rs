//! The QUIC transport: one quinn endpoint (one UDP port) per node, acting as both server and
//! client; mutual TLS as described in [`crate::tls`].
//!
//! Connections. One connection per peer pair carries everything in both directions: it is
//! dialed on first use and again after it fails (a failed dial is not retried for
//! [`QuicConfig::redial_backoff`], so a dead peer costs little), and an inbound connection from
//! a peer is used for sending to it too.
//!
//! Simultaneous connects. If both nodes dial each other at once, each ends up with two
//! connections. Both ends apply the same rule — prefer the connection dialed by the node with
//! the smaller id, and between two dialed by the same node the newer — so they agree without
//! talking. The other connection stops carrying new traffic at once and is closed after
//! [`QuicConfig::duplicate_grace`], which lets RPCs already on it finish; if the preferred one
//! fails within the grace (a peer that restarted leaves a stale one behind), the other takes
//! over instead of being closed.
//!
//! Streams. Each RPC opens a bidirectional stream: one request frame, then one response frame
//! ([`FrameKind::Response`] or [`FrameKind::Error`]), see [`crate::codec`]. A malformed request
//! (bad header, oversize, truncated) resets that stream with [`STREAM_MALFORMED`] and reaches no
//! handler; the connection and its other streams are unaffected.
//!
//! Roles. After the handshake the server checks the negotiated ALPN against the certificate: a
//! client certificate on [`ALPN_PEER`] is closed with [`CLOSE_FORBIDDEN`] before anything is
//! read. Client connections ([`ALPN_CLIENT`]) deliver their RPCs to the [`ClientInbox`].
//!
//! Datagram size. The path MTU is assumed to be at least [`MIN_MTU`] bytes of UDP payload
//! (true on loopback, Ethernet, and any IPv6 path), which leaves room for a
//! [`MAX_DATAGRAM_LEN`]-byte datagram in every packet.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, RecvStream, SendStream, VarInt};
use shoal_client::outage::OutageProbingFactory;
use shoal_client::transport::{CLOSE_SHUTDOWN, authenticated, exchange, unreachable};
use tokio::sync::{mpsc, oneshot};

use super::quic_client::{ClientInbox, ClientRpc};
use super::{
    Datagram, Inbox, InboxSender, OVERLOADED, Peer, Responder, Transport, TransportError,
    check_datagram, check_request,
};
use crate::codec::{FrameKind, MAX_FRAME_LEN, read_frame, write_frame};
use crate::identity::{Identity, NODE_DNS_NAME, NodeId};
use crate::tls::{
    ALPN_CLIENT, ALPN_PEER, TlsError, TlsMaterial, peer_client_config, server_config,
};

/// Smallest UDP payload every path must carry, in bytes.
pub const MIN_MTU: u16 = 1280;
/// Connection close code: a duplicate connection lost the tie-break.
pub const CLOSE_DUPLICATE: u32 = 1;
/// Connection close code: the certificate may not speak the negotiated protocol.
pub const CLOSE_FORBIDDEN: u32 = 2;
/// Stream reset code: the request frame was malformed.
pub const STREAM_MALFORMED: u32 = 1;
/// Stream reset code: the handler dropped the request without answering.
pub const STREAM_UNANSWERED: u32 = 2;
/// Stream reset code: the caller stopped waiting for the answer (its timeout passed).
pub const STREAM_CANCELLED: u32 = 3;
/// Longest rejection reason sent back, in bytes.
const MAX_REASON_LEN: usize = 1024;

/// Settings of a [`QuicTransport`].
#[derive(Debug, Clone)]
pub struct QuicConfig {
    /// UDP address to bind; port 0 picks a free port. This is also the address the node tells
    /// others (no separate advertised address yet).
    pub listen: SocketAddr,
    /// Longest time to establish a connection (handshake included). Default 5 s.
    pub connect_timeout: Duration,
    /// A connection with no traffic for this long is dropped. Default 10 s; must be well above
    /// `keep_alive`.
    pub idle_timeout: Duration,
    /// Keep-alive interval of idle connections. Default 2 s.
    pub keep_alive: Duration,
    /// After a failed dial, calls to that peer fail at once for this long. Default 500 ms.
    pub redial_backoff: Duration,
    /// How long a duplicate connection stays open for RPCs already on it. Default 10 s.
    pub duplicate_grace: Duration,
    /// Concurrent RPCs a peer may have open on one connection; more wait for a slot (within
    /// their deadline). Default 256.
    pub max_concurrent_rpcs: u32,
    /// Capacity of each inbox queue (datagrams, peer RPCs, client RPCs). Default 1024.
    pub inbox_capacity: usize,
}

impl QuicConfig {
    /// Defaults, listening on `listen`.
    pub fn new(listen: SocketAddr) -> Self {
        Self {
            listen,
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(10),
            keep_alive: Duration::from_secs(2),
            redial_backoff: Duration::from_millis(500),
            duplicate_grace: Duration::from_secs(10),
            max_concurrent_rpcs: 256,
            inbox_capacity: 1024,
        }
    }

    /// Defaults on `127.0.0.1:0` with no redial backoff, for tests.
    pub fn for_test() -> Self {
        Self {
            redial_backoff: Duration::ZERO,
            ..Self::new(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        }
    }

    pub(super) fn transport(&self) -> Result<quinn::TransportConfig, TlsError> {
        let mut config = quinn::TransportConfig::default();
        let idle = quinn::IdleTimeout::try_from(self.idle_timeout)
            .map_err(|_| TlsError::Role("idle timeout out of range".into()))?;
        config
            .max_idle_timeout(Some(idle))
            .keep_alive_interval(Some(self.keep_alive))
            .max_concurrent_bidi_streams(VarInt::from_u32(self.max_concurrent_rpcs))
            .max_concurrent_uni_streams(VarInt::from_u32(0))
            .datagram_receive_buffer_size(Some(1 << 20))
            .initial_mtu(MIN_MTU)
            .min_mtu(MIN_MTU)
            .congestion_controller_factory(Arc::new(OutageProbingFactory::default()));
        Ok(config)
    }
}

/// Bytes asked for the UDP socket's receive and send buffers. Linux's default receive buffer
/// (about 208 KiB) overflowed while a node refilling a wiped replica merged one batch and its
/// peers sent the next (the convergence benchmark counted 140–220 dropped datagrams per
/// refill, each a QUIC retransmission). The kernel caps the size at `net.core.rmem_max` and
/// `wmem_max`; raise those for the full effect.
const SOCKET_BUFFER: libc::c_int = 4 << 20;

/// Asks for [`SOCKET_BUFFER`] bytes of receive and send buffer; a refusal leaves the defaults.
fn enlarge_buffers(socket: &std::net::UdpSocket) {
    use std::os::fd::AsRawFd;
    for option in [libc::SO_RCVBUF, libc::SO_SNDBUF] {
        // SAFETY: the descriptor is the open socket's, and the value is a c_int of the size
        // given.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                (&SOCKET_BUFFER as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            tracing::warn!(
                error = %std::io::Error::last_os_error(),
                "UDP socket buffer left at its default size"
            );
        }
    }
}

/// Binding a [`QuicTransport`] failed; nothing is listening.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// The TLS material does not suit a node.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The UDP socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Io {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// The endpoint settings of a node: its stateless-reset key and connection-ID key are
/// derived from its TLS private key, so they are the same after a restart (RFC 9000 §10.3).
/// A peer that still holds a connection to the previous process then gets a valid stateless
/// reset for its first packet and drops that connection at once; with random keys it would
/// keep sending into it (SWIM and RPCs lost) until the idle timeout, and the restarted node's
/// own connection would meanwhile be closed as a duplicate.
fn endpoint_config(material: &TlsMaterial) -> quinn::EndpointConfig {
    use ring::hmac;
    let secret = hmac::Key::new(hmac::HMAC_SHA256, material.key().secret_der());
    let derive = |label: &[u8]| hmac::sign(&secret, label);
    let reset = derive(b"shoal QUIC stateless reset key v1");
    let cid = derive(b"shoal QUIC connection ID key v1");
    let cid_key = u64::from_le_bytes(cid.as_ref()[..8].try_into().expect("8 bytes"));
    let mut config =
        quinn::EndpointConfig::new(Arc::new(hmac::Key::new(hmac::HMAC_SHA256, reset.as_ref())));
    config.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
            as Box<dyn quinn::ConnectionIdGenerator>
    });
    config
}

/// A connection to a peer, which side dialed it, and when it was installed.
#[derive(Clone)]
struct Link {
    conn: Connection,
    /// Whether the node with the smaller id dialed it; such links are preferred.
    dialed_by_smaller: bool,
    /// Install order; among equals the newest is preferred.
    seq: u64,
}

impl Link {
    fn rank(&self) -> (bool, u64) {
        (self.dialed_by_smaller, self.seq)
    }
}

/// Per-peer connection state: every live connection to the peer (normally one; two after a
/// simultaneous connect, until the loser is closed) and the dial lock.
#[derive(Default)]
struct Slot {
    links: Mutex<Vec<Link>>,
    /// Held while dialing; holds the time of the last failed dial.
    dial: tokio::sync::Mutex<Option<Instant>>,
}

impl Slot {
    fn lock_links(&self) -> std::sync::MutexGuard<'_, Vec<Link>> {
        self.links.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The preferred live connection, forgetting closed ones.
    fn best(links: &mut Vec<Link>) -> Option<Link> {
        links.retain(|link| link.conn.close_reason().is_none());
        links.iter().max_by_key(|link| link.rank()).cloned()
    }

    /// The connection to send on, if any is live.
    fn live(&self) -> Option<Connection> {
        Self::best(&mut self.lock_links()).map(|link| link.conn)
    }
}

struct Inner {
    endpoint: quinn::Endpoint,
    local: Peer,
    material: TlsMaterial,
    transport: Arc<quinn::TransportConfig>,
    config: QuicConfig,
    peers: Mutex<HashMap<NodeId, Arc<Slot>>>,
    inbox: InboxSender,
    clients: mpsc::Sender<ClientRpc>,
    closed: AtomicBool,
    next_seq: AtomicU64,
}

/// The QUIC [`Transport`] of one node. Cheap to clone. Call [`Transport::shutdown`] to stop
/// it; its background tasks hold it alive until then.
#[derive(Clone)]
pub struct QuicTransport {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for QuicTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicTransport")
            .field("local", &self.inner.local)
            .finish_non_exhaustive()
    }
}

impl QuicTransport {
    /// Binds the node's UDP port and starts accepting connections. `material` must be node
    /// material. Returns the transport, its peer inbox and its client inbox.
    pub async fn bind(
        material: TlsMaterial,
        config: QuicConfig,
    ) -> Result<(Self, Inbox, ClientInbox), BindError> {
        let node_id = material
            .node_id()
            .cloned()
            .ok_or_else(|| TlsError::Role(format!("{} cannot run a node", material.identity())))?;
        let transport = Arc::new(config.transport()?);
        let tls = server_config(&material)?;
        let crypto = QuicServerConfig::try_from(tls)
            .map_err(|e| TlsError::Role(format!("QUIC server: {e}")))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        server.transport_config(transport.clone());
        // Keep the remote address of a connection equal to the peer's listen address.
        server.migration(false);
        let io = |source| BindError::Io {
            addr: config.listen,
            source,
        };
        let socket = std::net::UdpSocket::bind(config.listen).map_err(io)?;
        enlarge_buffers(&socket);
        let endpoint = quinn::Endpoint::new(
            endpoint_config(&material),
            Some(server),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(io)?;
        let addr = endpoint.local_addr().map_err(io)?;
        let (inbox, peer_inbox) = InboxSender::new(config.inbox_capacity);
        let (clients, client_rx) = mpsc::channel(config.inbox_capacity.max(1));
        let inner = Arc::new(Inner {
            endpoint,
            local: Peer { id: node_id, addr },
            material,
            transport,
            config,
            peers: Mutex::new(HashMap::new()),
            inbox,
            clients,
            closed: AtomicBool::new(false),
            next_seq: AtomicU64::new(0),
        });
        tokio::spawn(accept_loop(inner.clone()));
        tracing::info!(node = %inner.local.id, %addr, "QUIC transport listening");
        Ok((Self { inner }, peer_inbox, ClientInbox { rpcs: client_rx }))
    }

    /// The live connection to `to`, dialing if there is none. With `wait` false, returns
    /// `None` at once if another task is dialing.
    async fn connection(
        &self,
        to: &Peer,
        wait: bool,
    ) -> Result<Option<Connection>, TransportError> {
        let inner = &self.inner;
        if inner.closed.load(Ordering::Acquire) {
            return Err(TransportError::Closed);
        }
        if to.id == inner.local.id {
            return Err(unreachable(&to.id, "that is this node"));
        }
        let slot = inner.slot(&to.id);
        if let Some(conn) = slot.live() {
            return Ok(Some(conn));
        }
        let mut last_failure = if wait {
            slot.dial.lock().await
        } else {
            match slot.dial.try_lock() {
                Ok(guard) => guard,
                Err(_) => return Ok(None),
            }
        };
        if let Some(conn) = slot.live() {
            return Ok(Some(conn));
        }
        if let Some(failed) = *last_failure
            && failed.elapsed() < inner.config.redial_backoff
        {
            return Err(unreachable(&to.id, "a recent dial failed"));
        }
        match inner.dial(to.addr, Some(to.id.clone())).await {
            Ok((conn, id)) => {
                *last_failure = None;
                let peer = Peer { id, addr: to.addr };
                Ok(Some(inner.install(peer, conn, true)))
            }
            Err(e) => {
                *last_failure = Some(Instant::now());
                tracing::debug!(peer = %to.id, error = %e, "dial failed");
                Err(e)
            }
        }
    }

    async fn rpc_inner(
        &self,
        to: &Peer,
        request: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, TransportError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let expired = |_| TransportError::Timeout(timeout);
        let conn = tokio::time::timeout_at(deadline, self.connection(to, true))
            .await
            .map_err(expired)??
            .expect("waiting dial yields a connection");
        let (mut send, mut recv) = tokio::time::timeout_at(deadline, conn.open_bi())
            .await
            .map_err(expired)?
            .map_err(|e| TransportError::ConnectionLost(e.to_string()))?;
        match tokio::time::timeout_at(deadline, exchange(&mut send, &mut recv, &request)).await {
            Ok(answer) => answer,
            Err(_) => {
                // The caller gives up on it: stop retransmitting the request, so a peer that
                // was cut off does not receive it (and act on it) after the caller has moved
                // on, for instance to a hint that carries the same update.
                let _ = send.reset(VarInt::from_u32(STREAM_CANCELLED));
                Err(TransportError::Timeout(timeout))
            }
        }
    }
}

impl Inner {
    fn slot(&self, id: &NodeId) -> Arc<Slot> {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        peers.entry(id.clone()).or_default().clone()
    }

    /// Dials `addr`; with `expected` set the handshake fails unless the server is that node.
    async fn dial(
        &self,
        addr: SocketAddr,
        expected: Option<NodeId>,
    ) -> Result<(Connection, NodeId), TransportError> {
        let who = expected
            .as_ref()
            .map_or_else(|| addr.to_string(), NodeId::to_string);
        let tls = peer_client_config(&self.material, expected).map_err(|e| unreachable(&who, e))?;
        let crypto = QuicClientConfig::try_from(tls).map_err(|e| unreachable(&who, e))?;
        let mut client = quinn::ClientConfig::new(Arc::new(crypto));
        client.transport_config(self.transport.clone());
        let connecting = self
            .endpoint
            .connect_with(client, addr, NODE_DNS_NAME)
            .map_err(|e| unreachable(&who, e))?;
        let conn = tokio::time::timeout(self.config.connect_timeout, connecting)
            .await
            .map_err(|_| unreachable(&who, "handshake timed out"))?
            .map_err(|e| unreachable(&who, e))?;
        match authenticated(&conn) {
            Ok((_, Identity::Node(id))) if id != self.local.id => Ok((conn, id)),
            Ok((_, Identity::Node(_))) => {
                conn.close(VarInt::from_u32(CLOSE_FORBIDDEN), b"connected to self");
                Err(unreachable(&who, "that is this node"))
            }
            Ok((_, identity)) => {
                conn.close(VarInt::from_u32(CLOSE_FORBIDDEN), b"not a node");
                Err(unreachable(&who, format!("{identity} is not a node")))
            }
            Err(reason) => {
                conn.close(VarInt::from_u32(CLOSE_FORBIDDEN), reason.as_bytes());
                Err(unreachable(&who, reason))
            }
        }
    }

    /// Adds `conn` to the connections of `peer`, starts serving it, schedules the closing of
    /// whichever connection is not preferred, and returns the preferred one.
    fn install(self: &Arc<Self>, peer: Peer, conn: Connection, dialed_by_us: bool) -> Connection {
        let dialer_is_smaller = (self.local.id < peer.id) == dialed_by_us;
        let link = Link {
            conn: conn.clone(),
            dialed_by_smaller: dialer_is_smaller,
            seq: self.next_seq.fetch_add(1, Ordering::Relaxed),
        };
        let slot = self.slot(&peer.id);
        let (best, others) = {
            let mut links = slot.lock_links();
            links.push(link);
            let best = Slot::best(&mut links).expect("the new link is live");
            let others: Vec<Connection> = links
                .iter()
                .filter(|l| l.conn.stable_id() != best.conn.stable_id())
                .map(|l| l.conn.clone())
                .collect();
            (best.conn, others)
        };
        tokio::spawn(serve_peer(self.clone(), peer.clone(), conn));
        for loser in others {
            tracing::debug!(peer = %peer.id, "duplicate connection; closing it after a grace");
            tokio::spawn(reap(self.clone(), slot.clone(), loser));
        }
        best
    }

    /// Forgets `conn` as a connection to `peer`.
    fn forget(&self, peer: &NodeId, conn: &Connection) {
        let slot = self.slot(peer);
        slot.lock_links()
            .retain(|link| link.conn.stable_id() != conn.stable_id());
    }

    fn deliver_client_rpc(
        &self,
        client: Identity,
        addr: SocketAddr,
        request: Bytes,
    ) -> oneshot::Receiver<Result<Bytes, String>> {
        let (responder, answer) = Responder::new();
        let rpc = ClientRpc {
            client,
            addr,
            request,
            responder,
        };
        if let Err(e) = self.clients.try_send(rpc) {
            let reason = match &e {
                mpsc::error::TrySendError::Full(_) => OVERLOADED,
                mpsc::error::TrySendError::Closed(_) => "not serving clients",
            };
            let (mpsc::error::TrySendError::Full(rpc) | mpsc::error::TrySendError::Closed(rpc)) = e;
            rpc.reject(reason);
        }
        answer
    }
}

/// Closes `conn` after the duplicate grace unless it has become the preferred connection
/// (because the preferred one failed meanwhile).
async fn reap(inner: Arc<Inner>, slot: Arc<Slot>, conn: Connection) {
    tokio::select! {
        _ = tokio::time::sleep(inner.config.duplicate_grace) => {}
        _ = conn.closed() => return,
    }
    let preferred = slot.live();
    if preferred.is_some_and(|best| best.stable_id() != conn.stable_id()) {
        conn.close(VarInt::from_u32(CLOSE_DUPLICATE), b"duplicate connection");
    }
}

async fn accept_loop(inner: Arc<Inner>) {
    while let Some(incoming) = inner.endpoint.accept().await {
        tokio::spawn(accept(inner.clone(), incoming));
    }
}

async fn accept(inner: Arc<Inner>, incoming: quinn::Incoming) {
    let remote = incoming.remote_address();
    let conn = match tokio::time::timeout(inner.config.connect_timeout, incoming).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            tracing::info!(%remote, error = %e, "inbound handshake refused");
            return;
        }
        Err(_) => {
            tracing::info!(%remote, "inbound handshake timed out");
            return;
        }
    };
    let forbid = |reason: &str| {
        tracing::warn!(%remote, reason, "connection refused after handshake");
        conn.close(VarInt::from_u32(CLOSE_FORBIDDEN), reason.as_bytes());
    };
    match authenticated(&conn) {
        Ok((alpn, Identity::Node(id))) if alpn == ALPN_PEER => {
            if id == inner.local.id {
                return forbid("connected to self");
            }
            let peer = Peer { id, addr: remote };
            inner.install(peer, conn, false);
        }
        Ok((alpn, Identity::Client(_))) if alpn == ALPN_PEER => {
            forbid("client certificate used as peer");
        }
        Ok((alpn, identity)) if alpn == ALPN_CLIENT => {
            tokio::spawn(serve_client(inner, identity, conn));
        }
        Ok(_) => forbid("unknown ALPN protocol"),
        Err(reason) => forbid(&reason),
    }
}

/// Serves datagrams and RPC streams of one peer connection until it closes.
async fn serve_peer(inner: Arc<Inner>, peer: Peer, conn: Connection) {
    loop {
        tokio::select! {
            datagram = conn.read_datagram() => match datagram {
                Ok(payload) => {
                    inner.inbox.deliver_datagram(Datagram { from: peer.clone(), payload });
                }
                Err(_) => break,
            },
            stream = conn.accept_bi() => match stream {
                Ok((send, recv)) => {
                    let inbox = inner.inbox.clone();
                    let from = peer.clone();
                    tokio::spawn(serve_stream(send, recv, move |request| {
                        inbox.deliver_rpc(from, request)
                    }));
                }
                Err(_) => break,
            },
        }
    }
    let reason = conn.close_reason();
    tracing::debug!(peer = %peer.id, ?reason, "peer connection closed");
    inner.forget(&peer.id, &conn);
}

/// Serves RPC streams of one client connection until it closes.
async fn serve_client(inner: Arc<Inner>, client: Identity, conn: Connection) {
    let addr = conn.remote_address();
    while let Ok((send, recv)) = conn.accept_bi().await {
        let inner = inner.clone();
        let client = client.clone();
        tokio::spawn(serve_stream(send, recv, move |request| {
            inner.deliver_client_rpc(client, addr, request)
        }));
    }
}

/// Reads one request frame, hands it to `deliver`, writes the answer. A malformed request
/// resets the stream and reaches nobody.
async fn serve_stream(
    mut send: SendStream,
    mut recv: RecvStream,
    deliver: impl FnOnce(Bytes) -> oneshot::Receiver<Result<Bytes, String>>,
) {
    let request = match read_frame(&mut recv, MAX_FRAME_LEN).await {
        Ok((FrameKind::Request, payload)) => Bytes::from(payload),
        other => {
            let error = other.map_or_else(|e| e.to_string(), |(kind, _)| format!("{kind:?} frame"));
            tracing::debug!(%error, "malformed request; resetting stream");
            let _ = recv.stop(VarInt::from_u32(STREAM_MALFORMED));
            let _ = send.reset(VarInt::from_u32(STREAM_MALFORMED));
            return;
        }
    };
    let Ok(answer) = deliver(request).await else {
        // The caller sees a reset stream: unknown outcome, as the handler may have acted.
        let _ = send.reset(VarInt::from_u32(STREAM_UNANSWERED));
        return;
    };
    let written = match &answer {
        Ok(response) if response.len() <= MAX_FRAME_LEN => {
            write_frame(&mut send, FrameKind::Response, response).await
        }
        Ok(_) => write_frame(&mut send, FrameKind::Error, b"response too large").await,
        Err(reason) => {
            let mut end = reason.len().min(MAX_REASON_LEN);
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            write_frame(&mut send, FrameKind::Error, &reason.as_bytes()[..end]).await
        }
    };
    if written.is_ok() {
        let _ = send.finish();
    }
}

impl Transport for QuicTransport {
    fn local(&self) -> &Peer {
        &self.inner.local
    }

    fn send_datagram(&self, to: &Peer, payload: Bytes) -> Result<(), TransportError> {
        check_datagram(&payload)?;
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(TransportError::Closed);
        }
        let send = |conn: &Connection, payload: Bytes| match conn.send_datagram(payload.clone()) {
            Ok(()) => Ok(()),
            // Only if the path MTU is below MIN_MTU.
            Err(quinn::SendDatagramError::TooLarge) => Err(TransportError::DatagramTooLarge {
                len: payload.len(),
                max: conn.max_datagram_size().unwrap_or(0),
            }),
            Err(e) => {
                tracing::debug!(error = %e, "datagram dropped");
                Ok(())
            }
        };
        if let Some(conn) = self.inner.slot(&to.id).live() {
            return send(&conn, payload);
        }
        let this = self.clone();
        let to = to.clone();
        tokio::spawn(async move {
            match this.connection(&to, false).await {
                Ok(Some(conn)) => {
                    let _ = send(&conn, payload);
                }
                Ok(None) => tracing::trace!(peer = %to.id, "datagram dropped while dialing"),
                Err(e) => tracing::debug!(peer = %to.id, error = %e, "datagram dropped"),
            }
        });
        Ok(())
    }

    #[tracing::instrument(level = "debug", skip(self, to, request), fields(peer = %to.id, len = request.len()))]
    async fn rpc(
        &self,
        to: &Peer,
        request: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, TransportError> {
        check_request(&request)?;
        self.rpc_inner(to, request, timeout).await
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn discover(
        &self,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<NodeId, TransportError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(TransportError::Closed);
        }
        let (conn, id) = tokio::time::timeout(timeout, self.inner.dial(addr, None))
            .await
            .map_err(|_| TransportError::Timeout(timeout))??;
        self.inner.install(
            Peer {
                id: id.clone(),
                addr,
            },
            conn,
            true,
        );
        Ok(id)
    }

    async fn shutdown(&self) {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        self.inner
            .endpoint
            .close(VarInt::from_u32(CLOSE_SHUTDOWN), b"shutdown");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.inner.endpoint.wait_idle()).await;
    }
}

#[cfg(test)]
#[path = "quic_tests.rs"]
mod tests;
