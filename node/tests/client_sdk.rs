//! The SDK against an in-process cluster: 3 [`Node`]s over real QUIC with mutual TLS on
//! 127.0.0.1 (port 0), in-memory stores, each serving clients through the client service.
//! Every wait is on a condition with a deadline; no fixed sleeps.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use shoal_client::protocol::storage_key;
use shoal_client::{Client, ClientConfig, Error, Kind, Outcome, View};
use shoal_membership::Partitioner;
use shoal_node::identity::{ClientName, Identity, NodeId};
use shoal_node::tls::{ClusterCa, TlsMaterial};
use shoal_node::transport::QuicConfig;
use shoal_node::{Node, NodeConfig, Peer, QuicTransport, Transport, service};
use shoal_storage::{MemoryEngine, MemoryStore, Update};

type QuicNode = Node<QuicTransport, MemoryStore>;

const PATIENCE: Duration = Duration::from_secs(20);

struct Cluster {
    ca: ClusterCa,
    nodes: Vec<Arc<QuicNode>>,
}

impl Cluster {
    async fn start(n: usize) -> Self {
        let ca = ClusterCa::generate().unwrap();
        let mut bound = Vec::new();
        for i in 0..n {
            let id = NodeId::new(format!("n{i}")).unwrap();
            let issued = ca.issue(&Identity::Node(id)).unwrap();
            let material = TlsMaterial::from_issued(&ca, &issued).unwrap();
            bound.push(
                QuicTransport::bind(material, QuicConfig::for_test())
                    .await
                    .unwrap(),
            );
        }
        let members: Vec<Peer> = bound.iter().map(|(t, _, _)| t.local().clone()).collect();
        let mut nodes = Vec::new();
        for (transport, inbox, clients) in bound {
            let engine = Arc::new(
                MemoryEngine::open(MemoryStore::new(), transport.local().id.as_str()).unwrap(),
            );
            let node = Arc::new(
                Node::start(
                    NodeConfig::for_test(members.clone()),
                    transport,
                    inbox,
                    engine,
                )
                .unwrap(),
            );
            service::spawn(node.clone(), clients);
            nodes.push(node);
        }
        Self { ca, nodes }
    }

    async fn client(&self) -> Client {
        self.client_with(ClientConfig::default()).await
    }

    async fn client_with(&self, config: ClientConfig) -> Client {
        let issued = self
            .ca
            .issue(&Identity::Client(ClientName::new("app").unwrap()))
            .unwrap();
        Client::builder()
            .seeds(self.nodes.iter().map(|n| n.id().addr))
            .tls(TlsMaterial::from_issued(&self.ca, &issued).unwrap())
            .config(config)
            .build()
            .await
            .unwrap()
    }

    /// A key of the default keyspace whose preference list starts with node `i`.
    fn key_led_by(&self, client: &Client, i: usize) -> Vec<u8> {
        let ring = client.ring().unwrap();
        let partitioner = Partitioner::new(ring.partitions).unwrap();
        let leader = ring
            .nodes
            .iter()
            .position(|n| n.id == self.nodes[i].id().id.as_str())
            .unwrap() as u16;
        (0u32..)
            .map(|k| format!("key-{k}").into_bytes())
            .find(|k| {
                let p = partitioner.partition_of(&storage_key("default", k).unwrap());
                ring.preference_lists[p.0 as usize][0] == leader
            })
            .unwrap()
    }

    async fn shutdown(self) {
        for node in &self.nodes {
            node.kill();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_handles_write_and_read_every_type() {
    let cluster = Cluster::start(3).await;
    let client = cluster.client().await;
    let ring = client.ring().unwrap();
    assert_eq!(ring.nodes.len(), 3);
    assert_eq!(ring.preference_lists.len(), ring.partitions as usize);

    let counter = client.counter("hits");
    for _ in 0..3 {
        assert!(counter.incr(2).await.unwrap() >= 2);
    }
    counter.incr(-1).await.unwrap();
    assert_eq!(counter.get().await.unwrap(), 5);
    assert_eq!(client.counter("never").get().await.unwrap(), 0);

    let set = client.set("fruit").w(3).r(3);
    set.add(["apple", "pear", "fig"]).await.unwrap();
    set.remove(["pear"]).await.unwrap();
    let members: BTreeSet<Vec<u8>> = [b"apple".to_vec(), b"fig".to_vec()].into();
    assert_eq!(set.get().await.unwrap(), members);

    let register = client.register("greeting");
    register.put("hello").await.unwrap();
    assert_eq!(register.get().await.unwrap().values, [b"hello".to_vec()]);

    let map = client.map("profile").keyspace("users");
    map.incr("logins", 4).await.unwrap();
    map.put("name", "ada").await.unwrap();
    let fields = map.get().await.unwrap();
    assert_eq!(fields[&b"logins".to_vec()].counter, Some(4));
    assert_eq!(
        fields[&b"name".to_vec()].register,
        Some(vec![b"ada".to_vec()])
    );

    // Any type, then a causal delete.
    let (kind, view) = client.key("hits").get().await.unwrap().unwrap();
    assert_eq!((kind, view), (Kind::Counter, View::Counter(5)));
    client.key("fruit").delete().await.unwrap();
    assert_eq!(client.key("fruit").get().await.unwrap(), None);
    assert!(client.set("fruit").get().await.unwrap().is_empty());

    // Wrong type, bad quorum, bad keyspace: clear errors that change nothing.
    let err = client.set("hits").add(["x"]).await.unwrap_err();
    assert_eq!(err.outcome(), Outcome::Failed, "{err}");
    let err = client.set("hits").get().await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::WrongType {
                expected: Kind::Set,
                found: Kind::Counter
            }
        ),
        "{err}"
    );
    let err = client.counter("hits").w(4).incr(1).await.unwrap_err();
    assert!(matches!(err, Error::Invalid(_)), "{err}");
    let err = client
        .counter("hits")
        .keyspace("")
        .incr(1)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Invalid(_)), "{err}");
    assert_eq!(client.counter("hits").get().await.unwrap(), 5);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_siblings_are_superseded_by_a_put_with_their_context() {
    let cluster = Cluster::start(3).await;
    let client = cluster.client().await;
    let key = cluster.key_led_by(&client, 0);
    let register = client.register(key.clone()).w(3).r(3);
    register.put("a").await.unwrap();
    // Another coordinator writes without having seen "a" (an empty context): a sibling.
    cluster.nodes[1]
        .update(
            "default",
            &key,
            Update::RegisterPut {
                value: b"b".to_vec(),
                context: Some(Default::default()),
            },
            3,
            PATIENCE,
        )
        .await
        .unwrap();
    let read = register.get().await.unwrap();
    assert_eq!(read.values, [b"a".to_vec(), b"b".to_vec()]);
    register.put_with_context("c", &read.context).await.unwrap();
    assert_eq!(register.get().await.unwrap().values, [b"c".to_vec()]);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_fail_over_when_a_node_is_down() {
    let cluster = Cluster::start(3).await;
    let client = cluster
        .client_with(ClientConfig {
            connect_timeout: Duration::from_millis(500),
            ..ClientConfig::default()
        })
        .await;
    let key = cluster.key_led_by(&client, 2);
    client.counter(key.clone()).incr(1).await.unwrap();
    // The client still believes n2 is live: its first attempt goes there and fails over.
    cluster.nodes[2].shutdown().await;
    for _ in 0..5 {
        client.counter(key.clone()).incr(1).await.unwrap();
    }
    assert_eq!(client.counter(key.clone()).get().await.unwrap(), 6);
    // Once the survivors see n2 gone, the routing table says so and requests avoid it.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let ring = client.refresh_ring().await.unwrap();
        if ring.nodes.iter().any(|n| n.id == "n2" && !n.live) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "n2 never seen down");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    client
        .set(key.clone())
        .keyspace("other")
        .add(["m"])
        .await
        .unwrap();
    assert_eq!(client.counter(key).get().await.unwrap(), 6);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_increment_with_unknown_outcome_is_not_retried() {
    let cluster = Cluster::start(3).await;
    let client = cluster.client().await;
    let key = cluster.key_led_by(&client, 0);
    // n2 crashes: it still accepts connections but serves nothing. Its peers still count it
    // live, so a W=3 increment is persisted by the coordinator and one more replica and then
    // misses its quorum: unknown outcome, which must not be retried.
    cluster.nodes[2].kill();
    let err = client.counter(key.clone()).w(3).incr(1).await.unwrap_err();
    assert_eq!(err.outcome(), Outcome::Unknown, "{err}");
    assert!(
        matches!(err, Error::Unknown { attempts: 1, .. }),
        "retried: {err}"
    );
    // Exactly once on the live replicas, whatever the retry machinery did.
    assert_eq!(client.counter(key.clone()).get().await.unwrap(), 1);
    // An idempotent set add in the same situation is retried, and its outcome stays unknown.
    let err = client.set(b"s".to_vec()).w(3).add(["m"]).await.unwrap_err();
    assert_eq!(err.outcome(), Outcome::Unknown, "{err}");
    cluster.shutdown().await;
}

/// Runs `shoal ARGS…` in-process on a plain thread (the command starts its own runtime).
async fn shoal(args: &[&str]) -> Result<(), shoal_node::cli::CliError> {
    use clap::Parser as _;
    let args: Vec<String> = std::iter::once("shoal")
        .chain(args.iter().copied())
        .map(String::from)
        .collect();
    let cli = shoal_node::cli::Cli::try_parse_from(args).expect("valid usage");
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = tx.send(shoal_node::cli::run(cli));
    });
    rx.await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_commands_reach_the_cluster_and_map_outcomes_to_exit_codes() {
    let cluster = Cluster::start(3).await;
    let dir = tempfile::tempdir().unwrap();
    let tls_dir = dir.path().join("tls");
    cluster.ca.write(&tls_dir).unwrap();
    shoal_node::tls::issue_client_files(&tls_dir, &ClientName::new("dev").unwrap()).unwrap();
    let seeds: Vec<String> = cluster
        .nodes
        .iter()
        .map(|n| format!("\"{}\"", n.id().addr))
        .collect();
    std::fs::write(
        dir.path().join("cluster.toml"),
        format!(
            "seeds = [{}]\ntls_dir = \"tls\"\nclient = \"dev\"\nnodes = [\"n0\", \"n1\", \"n2\"]\n",
            seeds.join(", ")
        ),
    )
    .unwrap();
    let cluster_dir = dir.path().to_str().unwrap().to_owned();
    let seed_list = cluster
        .nodes
        .iter()
        .map(|n| n.id().addr.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let by_dir = |args: &[&str]| {
        let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        all.extend(["--cluster".to_owned(), cluster_dir.clone()]);
        all
    };
    let run = |args: Vec<String>| async move {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        shoal(&refs).await
    };

    run(by_dir(&["counter", "incr", "c", "5"])).await.unwrap();
    run(by_dir(&[
        "counter", "incr", "c", "-2", "--w", "3", "--json",
    ]))
    .await
    .unwrap();
    run(by_dir(&["counter", "get", "c", "--r", "3"]))
        .await
        .unwrap();
    run(by_dir(&["set", "add", "s", "a", "b", "--keyspace", "ks"]))
        .await
        .unwrap();
    run(by_dir(&["set", "remove", "s", "a", "--keyspace", "ks"]))
        .await
        .unwrap();
    run(by_dir(&["register", "put", "r", "v1", "--timeout", "3s"]))
        .await
        .unwrap();
    run(by_dir(&["get", "r", "--json"])).await.unwrap();
    // --seeds with --tls-dir, the client certificate found in the directory.
    let tls = tls_dir.to_str().unwrap();
    run(vec![
        "delete".into(),
        "r".into(),
        "--seeds".into(),
        seed_list.clone(),
        "--tls-dir".into(),
        tls.into(),
    ])
    .await
    .unwrap();

    let client = cluster.client().await;
    assert_eq!(client.counter("c").get().await.unwrap(), 3);
    let members: BTreeSet<Vec<u8>> = [b"b".to_vec()].into();
    assert_eq!(client.set("s").keyspace("ks").get().await.unwrap(), members);
    assert_eq!(client.key("r").get().await.unwrap(), None);

    // Input errors: exit code 2, nothing changed.
    for args in [
        by_dir(&["counter", "incr", "c", "1", "--w", "4"]),
        by_dir(&["set", "get", "c"]),
        by_dir(&["set", "add", "c", "x"]),
        vec![
            "counter".into(),
            "get".into(),
            "c".into(),
            "--seeds".into(),
            seed_list.clone(),
        ],
        vec![
            "counter".into(),
            "get".into(),
            "c".into(),
            "--cluster".into(),
            "/nonexistent".into(),
        ],
    ] {
        let err = run(args.clone()).await.unwrap_err();
        assert_eq!(err.exit_code(), 2, "{args:?}: {err}");
    }
    assert_eq!(client.counter("c").get().await.unwrap(), 3);

    // A crashed replica and W=3: unknown outcome, exit code 3, applied at most once.
    cluster.nodes[2].kill();
    let err = run(by_dir(&["counter", "incr", "c", "--w", "3"]))
        .await
        .unwrap_err();
    assert_eq!(err.exit_code(), 3, "{err}");
    assert_eq!(client.counter("c").get().await.unwrap(), 4);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_a_clear_error_and_change_nothing() {
    use bytes::Bytes;
    use shoal_client::protocol::{
        self, ClientRequest, ClientResponse, ErrorCode, OpId, UpdateRequest, WireOutcome,
    };
    use shoal_client::transport::{QuicClient, TransportError};

    let cluster = Cluster::start(3).await;
    let issued = cluster
        .ca
        .issue(&Identity::Client(ClientName::new("raw").unwrap()))
        .unwrap();
    let material = TlsMaterial::from_issued(&cluster.ca, &issued).unwrap();
    let conn = QuicClient::connect(&material, cluster.nodes[0].id().addr, PATIENCE)
        .await
        .unwrap();

    // Undecodable bytes: refused on the stream, nothing served.
    let err = conn
        .rpc(Bytes::from_static(b"\xff\xff\xff"), PATIENCE)
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::Rejected(_)), "{err}");

    let send = |update: shoal_storage::Update, w: u32, keyspace: &str| {
        let request = ClientRequest::Update(UpdateRequest {
            op: OpId::random(),
            keyspace: keyspace.into(),
            key: b"k".to_vec(),
            update,
            w,
            timeout_ms: 2000,
        });
        let bytes = Bytes::from(protocol::encode_request(&request).unwrap());
        let conn = &conn;
        async move {
            let answer = conn.rpc(bytes, PATIENCE).await.unwrap();
            protocol::decode_response(&answer).unwrap()
        }
    };
    let too_big = shoal_storage::SetOp::Add(vec![vec![0u8; 70 * 1024]]);
    for (update, w, keyspace) in [
        (Update::CounterAdd(1), 0, "default"),
        (Update::CounterAdd(1), 4, "default"),
        (Update::CounterAdd(1), 2, ""),
        (Update::Set(too_big), 2, "default"),
    ] {
        match send(update, w, keyspace).await {
            ClientResponse::Error(e) => {
                assert_eq!(e.outcome, WireOutcome::Failed, "{e:?}");
                assert_eq!(e.code, ErrorCode::Invalid, "{e:?}");
                assert!(!e.message.is_empty());
            }
            other => panic!("expected an error, got {other:?}"),
        }
    }
    let client = cluster.client().await;
    assert_eq!(client.key("k").get().await.unwrap(), None);
    conn.close().await;
    cluster.shutdown().await;
}
