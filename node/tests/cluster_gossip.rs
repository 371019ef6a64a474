//! Cluster-state gossip on in-memory nodes (virtual time): a node joining through one seed
//! reaches every node's ring, a keyspace's N spreads to every node, bad changes are refused,
//! and a restarted node keeps the ring it learned.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use shoal_node::request::RequestError;
use shoal_node::runtime::KeyspaceChangeError;
use shoal_node::{MemoryNetwork, Node, NodeConfig, NodeId, Peer};
use shoal_storage::{MemoryEngine, MemoryStore, Update};

mod common;

use common::{SimNode, eventually};

const LIMIT: Duration = Duration::from_secs(60);

fn peer(i: usize) -> Peer {
    Peer {
        id: NodeId::new(format!("n{i}")).unwrap(),
        addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 21_000 + i as u16)),
    }
}

struct Nodes {
    net: MemoryNetwork,
    engines: Vec<Arc<MemoryEngine>>,
    nodes: Vec<Option<Arc<SimNode>>>,
}

impl Nodes {
    fn new(count: usize) -> Self {
        Self {
            net: MemoryNetwork::new(7),
            engines: (0..count)
                .map(|i| {
                    Arc::new(MemoryEngine::open(MemoryStore::new(), peer(i).id.as_str()).unwrap())
                })
                .collect(),
            nodes: (0..count).map(|_| None).collect(),
        }
    }

    /// Starts node `i` knowing only `members` (itself and its seeds).
    fn start(&mut self, i: usize, members: &[usize]) {
        let mut config = NodeConfig::for_test(members.iter().map(|&m| peer(m)).collect());
        config.seed = i as u64;
        let (transport, inbox) = self.net.add_node(peer(i));
        let node = Node::start(config, transport, inbox, self.engines[i].clone()).unwrap();
        self.nodes[i] = Some(Arc::new(node));
    }

    fn stop(&mut self, i: usize) {
        self.net.remove_node(&peer(i).id);
        if let Some(node) = self.nodes[i].take() {
            node.kill();
        }
    }

    fn node(&self, i: usize) -> &Arc<SimNode> {
        self.nodes[i].as_ref().expect("node is up")
    }

    fn up(&self) -> impl Iterator<Item = &Arc<SimNode>> {
        self.nodes.iter().flatten()
    }

    /// Whether every running node holds the same cluster state with `members` ring members.
    fn converged(&self, members: usize) -> bool {
        let first = self.up().next().expect("a node is up").cluster().version;
        self.up().all(|n| {
            let view = n.cluster();
            view.version == first && view.state.ring().joined().count() == members
        })
    }
}

#[tokio::test(start_paused = true)]
async fn a_node_joining_through_one_seed_reaches_every_ring() {
    let mut nodes = Nodes::new(4);
    for i in 0..3 {
        nodes.start(i, &[0, 1, 2]);
    }
    // Started together with the same members: the same ring at once.
    assert!(nodes.converged(3));
    let before = nodes.node(0).cluster().version;

    nodes.start(3, &[3, 1]);
    eventually(LIMIT, || nodes.converged(4)).await;
    let after = nodes.node(0).cluster();
    assert_ne!(after.version, before);
    // Equal versions mean equal rings: every preference list is the same on every node.
    for n in nodes.up() {
        let ring = &n.cluster().ring;
        for p in 0..64 {
            let p = shoal_membership::PartitionId(p);
            assert_eq!(ring.preference_list(p), after.ring.preference_list(p));
        }
    }
    // The newcomer owns a share of the partitions, and every node knows its address.
    let owned = after.ring.replicas_per_node();
    let n3 = shoal_membership::NodeId::new("n3").unwrap();
    assert!(owned.get(&n3).copied().unwrap_or(0) > 0, "{owned:?}");
    for n in nodes.up() {
        assert_eq!(n.addr_of("n3"), Some(peer(3).addr));
    }
    // And it serves requests with that ring.
    let ack = nodes
        .node(3)
        .update(
            "default",
            b"k",
            Update::CounterAdd(1),
            2,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert!(ack.acks >= 2);
}

#[tokio::test(start_paused = true)]
async fn a_keyspace_n_spreads_to_every_node_and_bounds_quorums() {
    let mut nodes = Nodes::new(3);
    for i in 0..3 {
        nodes.start(i, &[0, 1, 2]);
    }
    assert_eq!(nodes.node(0).n_for("small"), 3);
    nodes.node(2).create_keyspace("small", 1).unwrap();
    eventually(LIMIT, || nodes.up().all(|n| n.n_for("small") == 1)).await;
    assert!(nodes.converged(3));
    // Other keyspaces keep the default.
    assert_eq!(nodes.node(0).n_for("default"), 3);

    // W above the keyspace's N is refused, and W = N = 1 is acknowledged by one replica.
    let err = nodes
        .node(0)
        .update(
            "small",
            b"k",
            Update::CounterAdd(1),
            2,
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, RequestError::Invalid(_)), "{err}");
    let ack = nodes
        .node(0)
        .update(
            "small",
            b"k",
            Update::CounterAdd(1),
            1,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert_eq!(ack.acks, 1);

    // A later change wins everywhere.
    nodes.node(0).create_keyspace("small", 2).unwrap();
    eventually(LIMIT, || nodes.up().all(|n| n.n_for("small") == 2)).await;
}

#[tokio::test(start_paused = true)]
async fn bad_keyspace_changes_are_refused_and_change_nothing() {
    let mut nodes = Nodes::new(1);
    nodes.start(0, &[0]);
    let node = nodes.node(0);
    let version = node.cluster().version;
    for (name, n) in [("small", 0), ("small", 4), ("", 1)] {
        let err = node.create_keyspace(name, n).unwrap_err();
        assert!(matches!(err, KeyspaceChangeError::Invalid(_)), "{err}");
    }
    let long = "x".repeat(256);
    assert!(node.create_keyspace(&long, 1).is_err());
    assert_eq!(node.cluster().version, version);
    assert_eq!(node.cluster().state.keyspaces().count(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_restarted_node_keeps_the_ring_it_learned_without_seeds() {
    let mut nodes = Nodes::new(3);
    for i in 0..3 {
        nodes.start(i, &[0, 1, 2]);
    }
    nodes.node(0).create_keyspace("ks", 2).unwrap();
    eventually(LIMIT, || nodes.up().all(|n| n.n_for("ks") == 2)).await;
    let version = nodes.node(1).cluster().version;
    nodes.stop(1);
    // Restarted knowing no seed: the kept state has the ring, the keyspace and the addresses.
    nodes.start(1, &[1]);
    let view = nodes.node(1).cluster();
    assert_eq!(view.version, version);
    assert_eq!(nodes.node(1).n_for("ks"), 2);
    // It finds its peers through the addresses it kept.
    eventually(LIMIT, || nodes.node(1).members_known() == 3).await;
}
