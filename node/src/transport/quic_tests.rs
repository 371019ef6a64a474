//! QUIC-only tests: who is refused, malformed frames, connection management. Real QUIC on
//! 127.0.0.1 with port 0; every wait is on a condition with a generous deadline.

use std::net::{Ipv4Addr, SocketAddr};

use quinn::ConnectionError;

use super::*;
use crate::identity::{ClientName, Identity};
use crate::tls::{ClusterCa, client_config_with_alpn};
use crate::transport::QuicClient;
use crate::transport::conformance::{PATIENCE, deliver_datagram, node_id, serve};

async fn bind_node(ca: &ClusterCa, id: &NodeId) -> (QuicTransport, Inbox, ClientInbox) {
    bind_with(ca, id, QuicConfig::for_test()).await
}

async fn bind_with(
    ca: &ClusterCa,
    id: &NodeId,
    config: QuicConfig,
) -> (QuicTransport, Inbox, ClientInbox) {
    let issued = ca.issue(&Identity::Node(id.clone())).unwrap();
    let material = TlsMaterial::from_issued(ca, &issued).unwrap();
    QuicTransport::bind(material, config).await.unwrap()
}

/// Binds a restarted node on the address of one that went, once its socket is released.
async fn rebind(
    material: &TlsMaterial,
    config: &QuicConfig,
) -> (QuicTransport, Inbox, ClientInbox) {
    tokio::time::timeout(PATIENCE, async {
        loop {
            match QuicTransport::bind(material.clone(), config.clone()).await {
                Ok(bound) => break bound,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await
    .expect("the old socket is released")
}

fn live_links(t: &QuicTransport, peer: &NodeId) -> usize {
    let slot = t.inner.slot(peer);
    let mut links = slot.lock_links();
    Slot::best(&mut links);
    links.len()
}

fn client_material(ca: &ClusterCa, name: &str) -> TlsMaterial {
    let issued = ca
        .issue(&Identity::Client(ClientName::new(name).unwrap()))
        .unwrap();
    TlsMaterial::from_issued(ca, &issued).unwrap()
}

fn assert_no_rpc(inbox: &mut Inbox) {
    assert!(
        inbox.rpcs.try_recv().is_err(),
        "a refused peer reached the inbox"
    );
    assert!(
        inbox.datagrams.try_recv().is_err(),
        "a refused peer reached the inbox"
    );
}

/// A raw connection to `addr` with arbitrary material and ALPN.
async fn raw_connect(
    material: &TlsMaterial,
    alpn: &[u8],
    addr: SocketAddr,
) -> Result<(quinn::Endpoint, Connection), ConnectionError> {
    let tls = client_config_with_alpn(material, alpn).unwrap();
    let crypto = QuicClientConfig::try_from(tls).unwrap();
    let client = quinn::ClientConfig::new(Arc::new(crypto));
    let endpoint = quinn::Endpoint::client(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).unwrap();
    let connecting = endpoint.connect_with(client, addr, NODE_DNS_NAME).unwrap();
    let conn = tokio::time::timeout(PATIENCE, connecting)
        .await
        .expect("handshake ends in time")?;
    Ok((endpoint, conn))
}

#[tokio::test]
async fn peer_from_another_ca_is_refused_both_ways() {
    let ca = ClusterCa::generate().unwrap();
    let other_ca = ClusterCa::generate().unwrap();
    let (a, mut a_inbox, _) = bind_node(&ca, &node_id(0)).await;
    // Same node id as a legitimate node would have, but signed by another CA.
    let (x, x_inbox, _) = bind_node(&other_ca, &node_id(1)).await;
    serve(x_inbox.rpcs);

    let err = x
        .rpc(a.local(), Bytes::from("x"), PATIENCE)
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::Unreachable { .. }), "{err}");
    let err = a
        .rpc(x.local(), Bytes::from("x"), PATIENCE)
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::Unreachable { .. }), "{err}");
    let err = a.discover(x.local().addr, PATIENCE).await.unwrap_err();
    assert!(matches!(err, TransportError::Unreachable { .. }), "{err}");
    assert_no_rpc(&mut a_inbox);

    // A node that trusts a's CA but presents a certificate of another CA: here a's server
    // side is what refuses it.
    let foreign = other_ca.issue(&Identity::Node(node_id(2))).unwrap();
    let mixed = TlsMaterial::from_pem_unchecked(ca.cert_pem(), &foreign.cert_pem, &foreign.key_pem)
        .unwrap();
    let (y, _y_inbox, _) = QuicTransport::bind(mixed, QuicConfig::for_test())
        .await
        .unwrap();
    let result = y.rpc(a.local(), Bytes::from("x"), PATIENCE).await;
    assert!(result.is_err(), "{result:?}");
    assert_no_rpc(&mut a_inbox);

    // A client of the other CA cannot reach a either.
    let stranger = client_material(&other_ca, "app");
    let result = QuicClient::connect(&stranger, a.local().addr, PATIENCE).await;
    assert!(result.is_err(), "{result:?}");
}

#[tokio::test]
async fn peer_claiming_another_node_id_is_refused() {
    let ca = ClusterCa::generate().unwrap();
    let (a, _a_inbox, _) = bind_node(&ca, &node_id(0)).await;
    let (b, mut b_inbox, _) = bind_node(&ca, &node_id(1)).await;
    // a wants node n7 at b's address; b's certificate names n1.
    let claimed = Peer {
        id: node_id(7),
        addr: b.local().addr,
    };
    let err = a
        .rpc(&claimed, Bytes::from("x"), PATIENCE)
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::Unreachable { .. }), "{err}");
    assert!(!err.may_have_taken_effect());
    assert_no_rpc(&mut b_inbox);
    // Nothing was cached under the wrong id.
    assert!(a.inner.slot(&node_id(7)).live().is_none());
}

#[tokio::test]
async fn client_certificate_used_as_peer_is_refused() {
    let ca = ClusterCa::generate().unwrap();
    let (a, mut a_inbox, _) = bind_node(&ca, &node_id(0)).await;
    let client = client_material(&ca, "app");

    // A client certificate cannot even run a node transport.
    let err = QuicTransport::bind(client.clone(), QuicConfig::for_test())
        .await
        .unwrap_err();
    assert!(matches!(err, BindError::Tls(_)), "{err}");

    // Speaking the peer protocol with it gets the connection closed before anything is read.
    match raw_connect(&client, ALPN_PEER, a.local().addr).await {
        Err(e) => panic!("handshake itself should pass; refusal is by role: {e}"),
        Ok((_endpoint, conn)) => {
            if let Ok((mut send, _recv)) = conn.open_bi().await {
                let _ = write_frame(&mut send, FrameKind::Request, b"hello").await;
            }
            let _ = conn.send_datagram(Bytes::from("ping"));
            let reason = tokio::time::timeout(PATIENCE, conn.closed())
                .await
                .expect("closed in time");
            match reason {
                ConnectionError::ApplicationClosed(close) => {
                    assert_eq!(close.error_code, VarInt::from_u32(CLOSE_FORBIDDEN));
                    assert_eq!(&close.reason[..], b"client certificate used as peer");
                }
                other => panic!("unexpected close: {other}"),
            }
        }
    }
    assert_no_rpc(&mut a_inbox);
}

#[tokio::test]
async fn clients_reach_the_client_inbox_with_their_identity() {
    let ca = ClusterCa::generate().unwrap();
    let (a, _a_inbox, mut clients) = bind_node(&ca, &node_id(0)).await;
    tokio::spawn(async move {
        while let Some(rpc) = clients.rpcs.recv().await {
            let answer = format!("{}:{}", rpc.client, String::from_utf8_lossy(&rpc.request));
            rpc.respond(Bytes::from(answer));
        }
    });
    let client = QuicClient::connect(&client_material(&ca, "app"), a.local().addr, PATIENCE)
        .await
        .unwrap();
    assert_eq!(client.node_id(), &node_id(0));
    let answer = client.rpc(Bytes::from("get"), PATIENCE).await.unwrap();
    assert_eq!(answer, "client app:get");
    client.close().await;
}

#[tokio::test]
async fn malformed_frames_reset_only_their_stream() {
    let ca = ClusterCa::generate().unwrap();
    let (a, mut a_inbox, _) = bind_node(&ca, &node_id(0)).await;
    let (x, _x_inbox, _) = bind_node(&ca, &node_id(1)).await;
    let (conn, _) = x
        .inner
        .dial(a.local().addr, Some(a.local().id.clone()))
        .await
        .unwrap();
    let garbage: [&[u8]; 5] = [
        b"\x09\x01\0\0\0\x01x",      // unknown format version
        b"\x01\x07\0\0\0\x01x",      // unknown frame kind
        b"\x01\x01\xff\xff\xff\xff", // 4 GiB announced: refused before allocation
        b"\x01\x01\0\0\0\x0aabc",    // truncated payload
        b"\x01\x02\0\0\0\x01x",      // a response where a request belongs
    ];
    for bytes in garbage {
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(bytes).await.unwrap();
        let _ = send.finish();
        let result = tokio::time::timeout(PATIENCE, read_frame(&mut recv, MAX_FRAME_LEN))
            .await
            .expect("answered in time");
        assert!(result.is_err(), "{bytes:?} got {result:?}");
    }
    // The connection still works, and only the valid request reached the inbox.
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let call = tokio::spawn(async move { exchange(&mut send, &mut recv, b"valid").await });
    let rpc = tokio::time::timeout(PATIENCE, a_inbox.rpcs.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rpc.request, "valid");
    assert_eq!(rpc.from.id, node_id(1));
    rpc.respond(Bytes::from("ok"));
    assert_eq!(call.await.unwrap().unwrap(), "ok");
    assert!(a_inbox.rpcs.try_recv().is_err());
}

#[tokio::test]
async fn oversize_response_is_a_rejection_not_a_crash() {
    let ca = ClusterCa::generate().unwrap();
    let (a, _a_inbox, _) = bind_node(&ca, &node_id(0)).await;
    let (b, mut b_inbox, _) = bind_node(&ca, &node_id(1)).await;
    tokio::spawn(async move {
        if let Some(rpc) = b_inbox.rpcs.recv().await {
            rpc.respond(Bytes::from(vec![0u8; MAX_FRAME_LEN + 1]));
        }
    });
    let err = a
        .rpc(b.local(), Bytes::from("x"), PATIENCE)
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::Rejected(_)), "{err}");
}

/// Whether both ends prefer the same connection. Each end dialed at most once, so two
/// connections differ in who dialed them, and "dialed by the smaller id" names one of them.
fn agree(a: &QuicTransport, b: &QuicTransport) -> bool {
    let best = |t: &QuicTransport, peer: &NodeId| {
        let slot = t.inner.slot(peer);
        let mut links = slot.lock_links();
        Slot::best(&mut links).map(|link| link.dialed_by_smaller)
    };
    match (best(a, &b.local().id), best(b, &a.local().id)) {
        (Some(x), Some(y)) => x == y,
        _ => false,
    }
}

#[tokio::test]
async fn simultaneous_connects_converge_on_one_connection() {
    let config = QuicConfig {
        duplicate_grace: Duration::from_millis(100),
        ..QuicConfig::for_test()
    };
    for _ in 0..5 {
        let ca = ClusterCa::generate().unwrap();
        let (a, a_inbox, _) = bind_with(&ca, &node_id(0), config.clone()).await;
        let (b, b_inbox, _) = bind_with(&ca, &node_id(1), config.clone()).await;
        serve(a_inbox.rpcs);
        serve(b_inbox.rpcs);
        let (x, y) = tokio::join!(
            a.rpc(b.local(), Bytes::from("x"), PATIENCE),
            b.rpc(a.local(), Bytes::from("y"), PATIENCE),
        );
        x.unwrap();
        y.unwrap();
        tokio::time::timeout(PATIENCE, async {
            while !agree(&a, &b) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("both ends settle on the same connection");
        // The duplicate, if there was one, is closed after the grace.
        tokio::time::timeout(PATIENCE, async {
            while live_links(&a, &b.local().id) > 1 || live_links(&b, &a.local().id) > 1 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("one connection left per pair");
        assert!(agree(&a, &b));
        // Traffic keeps flowing in both directions.
        a.rpc(b.local(), Bytes::from("x"), PATIENCE).await.unwrap();
        b.rpc(a.local(), Bytes::from("y"), PATIENCE).await.unwrap();
        a.shutdown().await;
        b.shutdown().await;
    }
}

#[tokio::test]
async fn reconnects_after_the_connection_fails() {
    let ca = ClusterCa::generate().unwrap();
    let (a, mut a_inbox, _) = bind_node(&ca, &node_id(0)).await;
    let (b, b_inbox, _) = bind_node(&ca, &node_id(1)).await;
    serve(b_inbox.rpcs);
    a.rpc(b.local(), Bytes::from("x"), PATIENCE).await.unwrap();
    let conn = a.inner.slot(&b.local().id).live().unwrap();
    conn.close(VarInt::from_u32(9), b"test");
    a.rpc(b.local(), Bytes::from("x"), PATIENCE).await.unwrap();

    // b restarts on the same address with the same certificate.
    let addr = b.local().addr;
    b.shutdown().await;
    let issued = ca.issue(&Identity::Node(node_id(1))).unwrap();
    let material = TlsMaterial::from_issued(&ca, &issued).unwrap();
    let config = QuicConfig {
        listen: addr,
        ..QuicConfig::for_test()
    };
    // The socket is released once the last task of the old transport has let go of it.
    drop(b);
    let (b2, b2_inbox, _) = rebind(&material, &config).await;
    serve(b2_inbox.rpcs);
    tokio::time::timeout(PATIENCE, async {
        loop {
            match a
                .rpc(b2.local(), Bytes::from("x"), Duration::from_secs(1))
                .await
            {
                Ok(_) => break,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await
    .expect("a reaches the restarted b");
    // Datagrams flow on the new connection too.
    deliver_datagram(&b2, a.local(), &mut a_inbox, Bytes::from("back")).await;
}

#[tokio::test]
async fn a_peer_that_crashed_and_restarted_is_reached_without_waiting_for_the_idle_timeout() {
    // Connections would stay up far longer than the test waits, so only a stateless reset
    // from the restarted peer can end the old one in time.
    let config = QuicConfig {
        idle_timeout: 20 * PATIENCE,
        ..QuicConfig::for_test()
    };
    let ca = ClusterCa::generate().unwrap();
    let (a, _a_inbox, _) = bind_with(&ca, &node_id(0), config.clone()).await;
    let issued = ca.issue(&Identity::Node(node_id(1))).unwrap();
    let material = TlsMaterial::from_issued(&ca, &issued).unwrap();

    // b runs on a runtime of its own, so it can die like a killed process: its tasks and
    // socket are dropped and no connection close is ever sent.
    let b_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let b_addr = {
        let (material, config) = (material.clone(), config.clone());
        b_runtime
            .spawn(async move {
                let (b, b_inbox, _) = QuicTransport::bind(material, config).await.unwrap();
                serve(b_inbox.rpcs);
                let addr = b.local().addr;
                // Held by a task of its runtime, so it goes with it.
                tokio::spawn(async move {
                    let _b = b;
                    std::future::pending::<()>().await
                });
                addr
            })
            .await
            .unwrap()
    };
    let b_peer = Peer {
        id: node_id(1),
        addr: b_addr,
    };
    a.rpc(&b_peer, Bytes::from("x"), PATIENCE).await.unwrap();
    let old = a.inner.slot(&node_id(1)).live().unwrap();
    b_runtime.shutdown_background();

    // b restarts on the same address with the same key.
    let restarted = QuicConfig {
        listen: b_addr,
        ..config
    };
    let (b2, b2_inbox, _) = rebind(&material, &restarted).await;
    serve(b2_inbox.rpcs);
    tokio::time::timeout(4 * PATIENCE, async {
        loop {
            match a
                .rpc(&b_peer, Bytes::from("x"), Duration::from_secs(1))
                .await
            {
                Ok(_) => break,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await
    .expect("a reaches the restarted b");
    assert!(
        matches!(old.close_reason(), Some(ConnectionError::Reset)),
        "the old connection ended by a stateless reset: {:?}",
        old.close_reason()
    );
    b2.shutdown().await;
    a.shutdown().await;
}

/// A connection that outlives a cut of its path (shorter than the idle timeout) with its
/// congestion window full of lost packets carries datagrams and RPCs again after the heal, on
/// the same connection (outage probing: `shoal_client::outage`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loaded_connection_speaks_again_after_a_cut() {
    let ca = ClusterCa::generate().unwrap();
    let (a, _a_inbox, _) = bind_node(&ca, &node_id(0)).await;
    let (b, mut b_inbox, _) = bind_node(&ca, &node_id(1)).await;
    serve(std::mem::replace(&mut b_inbox.rpcs, mpsc::channel(1).1));
    let relay = crate::transport::relay::CutRelay::bind(b.local().addr)
        .await
        .unwrap();
    let via = Peer {
        id: b.local().id.clone(),
        addr: relay.addr(),
    };
    a.rpc(&via, Bytes::from("before"), PATIENCE).await.unwrap();
    let connection = a.inner.slot(&via.id).live().expect("connected").stable_id();

    relay.set_cut(true);
    // Two seconds of RPCs and datagrams into the cut: far more than the congestion window.
    let a = Arc::new(a);
    let mut lost = Vec::new();
    for _ in 0..20 {
        a.send_datagram(&via, Bytes::from(vec![1u8; 1000])).unwrap();
        let (a, via) = (a.clone(), via.clone());
        lost.push(tokio::spawn(async move {
            a.rpc(&via, Bytes::from(vec![2u8; 4000]), Duration::from_secs(1))
                .await
        }));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for rpc in lost {
        assert!(rpc.await.unwrap().is_err(), "an RPC crossed the cut");
    }
    relay.set_cut(false);

    // Datagrams queued before the heal may still arrive; this waits for a new one.
    deliver_datagram(&*a, &via, &mut b_inbox, Bytes::from("after")).await;
    let answer = a.rpc(&via, Bytes::from("after"), PATIENCE).await.unwrap();
    assert_eq!(answer, "n0:after");
    assert_eq!(
        a.inner.slot(&via.id).live().expect("connected").stable_id(),
        connection,
        "the connection that lived through the cut carries the traffic"
    );
    b.shutdown().await;
}

/// A client set to give up on a silent node abandons a request the node never acknowledged
/// (the path is cut) with `Silent`, long before its deadline, but waits for a node that
/// acknowledged the request and answers late, and for a large request acknowledged piece by
/// piece.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gives_up_on_a_silent_node_not_on_a_slow_one() {
    let ca = ClusterCa::generate().unwrap();
    let (a, _a_inbox, mut clients) = bind_node(&ca, &node_id(0)).await;
    tokio::spawn(async move {
        while let Some(rpc) = clients.rpcs.recv().await {
            tokio::spawn(async move {
                if rpc.request.as_ref() == b"slow" {
                    // Longer than the silence limit, with nothing sent meanwhile.
                    tokio::time::sleep(Duration::from_millis(1500)).await;
                }
                let answer = format!("{} bytes", rpc.request.len());
                rpc.respond(Bytes::from(answer));
            });
        }
    });
    let relay = crate::transport::relay::CutRelay::bind(a.local().addr)
        .await
        .unwrap();
    let silence = Duration::from_millis(300);
    let client = QuicClient::connect(&client_material(&ca, "app"), relay.addr(), PATIENCE)
        .await
        .unwrap()
        .give_up_when_silent(silence);

    let answer = client.rpc(Bytes::from("slow"), PATIENCE).await.unwrap();
    assert_eq!(answer, "4 bytes");
    let big = Bytes::from(vec![7u8; 2 << 20]);
    let answer = client.rpc(big, PATIENCE).await.unwrap();
    assert_eq!(answer, format!("{} bytes", 2 << 20));

    relay.set_cut(true);
    // The deadline is PATIENCE; only the silence rule ends the attempt as `Silent`.
    let err = client.rpc(Bytes::from("x"), PATIENCE).await.unwrap_err();
    assert!(matches!(err, TransportError::Silent(_)), "{err}");
    assert!(err.may_have_taken_effect());
    relay.set_cut(false);
    let answer = client.rpc(Bytes::from("again"), PATIENCE).await.unwrap();
    assert_eq!(answer, "5 bytes");
    client.close().await;
    a.shutdown().await;
}
