//! The transport conformance suite: every test here runs against [`QuicTransport`] (real QUIC
//! on 127.0.0.1, port 0) and [`MemoryTransport`] (a perfect in-memory network). Tests wait on
//! conditions with generous deadlines, never on fixed sleeps.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::{
    Datagram, Inbox, IncomingRpc, MAX_DATAGRAM_LEN, MemoryNetwork, Peer, QuicConfig, QuicTransport,
    Transport, TransportError,
};
use crate::codec::MAX_FRAME_LEN;
use crate::identity::NodeId;
use crate::tls::{ClusterCa, TlsMaterial};

/// Deadline for anything that should happen "soon".
pub(crate) const PATIENCE: Duration = Duration::from_secs(10);

pub(crate) fn node_id(i: usize) -> NodeId {
    NodeId::new(format!("n{i}")).unwrap()
}

pub(crate) async fn quic_nodes(n: usize) -> Vec<(QuicTransport, Inbox)> {
    let ca = ClusterCa::generate().unwrap();
    let mut nodes = Vec::new();
    for i in 0..n {
        let issued = ca
            .issue(&crate::identity::Identity::Node(node_id(i)))
            .unwrap();
        let material = TlsMaterial::from_issued(&ca, &issued).unwrap();
        let (transport, inbox, _clients) = QuicTransport::bind(material, QuicConfig::for_test())
            .await
            .unwrap();
        nodes.push((transport, inbox));
    }
    nodes
}

pub(crate) fn memory_nodes(n: usize) -> Vec<(super::MemoryTransport, Inbox)> {
    let network = MemoryNetwork::new(7);
    (0..n)
        .map(|i| {
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 10_000 + i as u16));
            network.add_node(Peer {
                id: node_id(i),
                addr,
            })
        })
        .collect()
}

/// Answers RPCs: `reject` is rejected, `drop` is dropped, anything else is echoed as
/// `<sender id>:<request>`.
pub(crate) fn serve(mut rpcs: mpsc::Receiver<IncomingRpc>) {
    tokio::spawn(async move {
        while let Some(rpc) = rpcs.recv().await {
            match &rpc.request[..] {
                b"reject" => rpc.reject("nope"),
                b"drop" => drop(rpc),
                request => {
                    let answer = format!("{}:{}", rpc.from.id, String::from_utf8_lossy(request));
                    rpc.respond(Bytes::from(answer));
                }
            }
        }
    });
}

/// Sends `payload` from `from` to `to` every 50 ms until it arrives.
pub(crate) async fn deliver_datagram<T: Transport>(
    from: &T,
    to: &Peer,
    inbox: &mut Inbox,
    payload: Bytes,
) -> Datagram {
    tokio::time::timeout(PATIENCE, async {
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        loop {
            tokio::select! {
                _ = tick.tick() => from.send_datagram(to, payload.clone()).unwrap(),
                datagram = inbox.datagrams.recv() => {
                    let datagram = datagram.expect("inbox open");
                    if datagram.payload == payload {
                        return datagram;
                    }
                }
            }
        }
    })
    .await
    .expect("datagram delivered in time")
}

async fn rpc_round_trip<T: Transport>(mut nodes: Vec<(T, Inbox)>) {
    let (b, b_inbox) = nodes.pop().unwrap();
    let (a, a_inbox) = nodes.pop().unwrap();
    serve(a_inbox.rpcs);
    serve(b_inbox.rpcs);
    let answer = a.rpc(b.local(), Bytes::from("hi"), PATIENCE).await.unwrap();
    assert_eq!(answer, format!("{}:hi", a.local().id));
    // The other direction, over the same connection or a new one.
    let answer = b.rpc(a.local(), Bytes::from("yo"), PATIENCE).await.unwrap();
    assert_eq!(answer, format!("{}:yo", b.local().id));
    // Empty request and response bodies are fine.
    let answer = a.rpc(b.local(), Bytes::new(), PATIENCE).await.unwrap();
    assert_eq!(answer, format!("{}:", a.local().id));
}

async fn datagram_delivery<T: Transport>(mut nodes: Vec<(T, Inbox)>) {
    let (b, mut b_inbox) = nodes.pop().unwrap();
    let (a, mut a_inbox) = nodes.pop().unwrap();
    let got = deliver_datagram(&a, b.local(), &mut b_inbox, Bytes::from("ping")).await;
    assert_eq!(got.from, *a.local());
    let largest = Bytes::from(vec![7u8; MAX_DATAGRAM_LEN]);
    let got = deliver_datagram(&b, a.local(), &mut a_inbox, largest.clone()).await;
    assert_eq!(got.from, *b.local());
    assert_eq!(got.payload, largest);
}

async fn oversize_is_refused_before_sending<T: Transport>(mut nodes: Vec<(T, Inbox)>) {
    let (b, _b_inbox) = nodes.pop().unwrap();
    let (a, _a_inbox) = nodes.pop().unwrap();
    let err = a
        .send_datagram(b.local(), Bytes::from(vec![0u8; MAX_DATAGRAM_LEN + 1]))
        .unwrap_err();
    assert!(
        matches!(err, TransportError::DatagramTooLarge { .. }),
        "{err}"
    );
    let err = a
        .rpc(
            b.local(),
            Bytes::from(vec![0u8; MAX_FRAME_LEN + 1]),
            PATIENCE,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, TransportError::RequestTooLarge { .. }),
        "{err}"
    );
    assert!(!err.may_have_taken_effect());
}

async fn rejections_reach_the_caller<T: Transport>(mut nodes: Vec<(T, Inbox)>) {
    let (b, b_inbox) = nodes.pop().unwrap();
    let (a, _a_inbox) = nodes.pop().unwrap();
    serve(b_inbox.rpcs);
    let err = a
        .rpc(b.local(), Bytes::from("reject"), PATIENCE)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, TransportError::Rejected(r) if r == "nope"),
        "{err}"
    );
    assert!(!err.may_have_taken_effect());
    let err = a
        .rpc(b.local(), Bytes::from("drop"), PATIENCE)
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::ConnectionLost(_)), "{err}");
    assert!(err.may_have_taken_effect());
    // The connection survives both.
    a.rpc(b.local(), Bytes::from("x"), PATIENCE).await.unwrap();
}

async fn concurrent_rpcs_between_all_pairs<T: Transport>(nodes: Vec<(T, Inbox)>) {
    let mut transports = Vec::new();
    for (transport, inbox) in nodes {
        serve(inbox.rpcs);
        transports.push(transport);
    }
    let mut calls = tokio::task::JoinSet::new();
    for from in &transports {
        for to in &transports {
            if from.local() == to.local() {
                continue;
            }
            for i in 0..10 {
                let from = from.clone();
                let to = to.local().clone();
                calls.spawn(async move {
                    let request = format!("req{i}");
                    let answer = from.rpc(&to, Bytes::from(request.clone()), PATIENCE).await;
                    (from.local().id.clone(), request, answer)
                });
            }
        }
    }
    while let Some(result) = calls.join_next().await {
        let (from, request, answer) = result.unwrap();
        assert_eq!(answer.unwrap(), format!("{from}:{request}"));
    }
}

async fn discover_learns_the_node_id<T: Transport>(mut nodes: Vec<(T, Inbox)>) {
    let (b, b_inbox) = nodes.pop().unwrap();
    let (a, _a_inbox) = nodes.pop().unwrap();
    serve(b_inbox.rpcs);
    let id = a.discover(b.local().addr, PATIENCE).await.unwrap();
    assert_eq!(id, b.local().id);
    let peer = Peer {
        id,
        addr: b.local().addr,
    };
    a.rpc(&peer, Bytes::from("x"), PATIENCE).await.unwrap();
}

async fn wrong_node_at_address_is_refused<T: Transport>(mut nodes: Vec<(T, Inbox)>) {
    let (c, _c_inbox) = nodes.pop().unwrap();
    let (b, b_inbox) = nodes.pop().unwrap();
    let (a, _a_inbox) = nodes.pop().unwrap();
    serve(b_inbox.rpcs);
    // Node c's id at node b's address: b's certificate does not name c.
    let impostor = Peer {
        id: c.local().id.clone(),
        addr: b.local().addr,
    };
    let err = a
        .rpc(&impostor, Bytes::from("x"), PATIENCE)
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::Unreachable { .. }), "{err}");
    assert!(!err.may_have_taken_effect());
    // The real b is still fine.
    a.rpc(b.local(), Bytes::from("x"), PATIENCE).await.unwrap();
}

async fn nobody_at_address_fails_within_deadline<T: Transport>(mut nodes: Vec<(T, Inbox)>) {
    let (a, _a_inbox) = nodes.pop().unwrap();
    // A port that was free a moment ago.
    let addr = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap();
    let ghost = Peer {
        id: NodeId::new("ghost").unwrap(),
        addr,
    };
    let deadline = Duration::from_millis(500);
    let result = tokio::time::timeout(PATIENCE, a.rpc(&ghost, Bytes::from("x"), deadline)).await;
    let err = result.expect("rpc honours its deadline").unwrap_err();
    assert!(
        matches!(
            err,
            TransportError::Unreachable { .. } | TransportError::Timeout(_)
        ),
        "{err}"
    );
    // Datagrams to nobody are silently lost.
    a.send_datagram(&ghost, Bytes::from("x")).unwrap();
}

async fn shutdown_stops_traffic<T: Transport>(mut nodes: Vec<(T, Inbox)>) {
    let (b, b_inbox) = nodes.pop().unwrap();
    let (a, _a_inbox) = nodes.pop().unwrap();
    serve(b_inbox.rpcs);
    a.rpc(b.local(), Bytes::from("x"), PATIENCE).await.unwrap();
    b.shutdown().await;
    b.shutdown().await;
    let err = b.send_datagram(a.local(), Bytes::from("x")).unwrap_err();
    assert!(matches!(err, TransportError::Closed), "{err}");
    let result = a
        .rpc(b.local(), Bytes::from("x"), Duration::from_secs(1))
        .await;
    assert!(result.is_err(), "{result:?}");
}

macro_rules! conformance {
    ($($test:ident($n:expr)),* $(,)?) => {
        mod quic {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test(super::quic_nodes($n).await).await;
                }
            )*
        }
        mod memory {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test(super::memory_nodes($n)).await;
                }
            )*
        }
    };
}

conformance!(
    rpc_round_trip(2),
    datagram_delivery(2),
    oversize_is_refused_before_sending(2),
    rejections_reach_the_caller(2),
    concurrent_rpcs_between_all_pairs(3),
    discover_learns_the_node_id(2),
    wrong_node_at_address_is_refused(3),
    nobody_at_address_fails_within_deadline(1),
    shutdown_stops_traffic(2),
);
