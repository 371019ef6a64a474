//! A cluster of [`Node`]s over one [`MemoryNetwork`] with in-memory stores, for the
//! request-path tests (paused tokio clock).

#![allow(dead_code)] // Each test file uses a different part.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use shoal_node::{MemoryNetwork, MemoryTransport, Node, NodeConfig, NodeId, Peer, storage_key};
use shoal_storage::{MemoryEngine, MemoryStore, Value, View};

pub const NODES: usize = 5;
pub const KEYSPACE: &str = "default";
pub const TIMEOUT: Duration = Duration::from_secs(2);

pub type SimNode = Node<MemoryTransport, MemoryStore>;

/// Waits until `cond` holds, polling every 50 ms of virtual time, for at most `limit`.
pub async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = tokio::time::Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < limit,
            "condition not met within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub struct Cluster {
    pub net: MemoryNetwork,
    pub config: NodeConfig,
    pub engines: Vec<Arc<MemoryEngine>>,
    pub nodes: Vec<Option<Arc<SimNode>>>,
}

impl Cluster {
    pub fn new(seed: u64) -> Self {
        Self::with_config(seed, |_| {})
    }

    /// A cluster whose node settings `adjust` changes first.
    pub fn with_config(seed: u64, adjust: impl FnOnce(&mut NodeConfig)) -> Self {
        let peers: Vec<Peer> = (0..NODES)
            .map(|i| Peer {
                id: NodeId::new(format!("n{i}")).unwrap(),
                addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 20_000 + i as u16)),
            })
            .collect();
        let mut config = NodeConfig::for_test(peers.clone());
        config.seed = seed;
        adjust(&mut config);
        let engines = peers
            .iter()
            .map(|p| Arc::new(MemoryEngine::open(MemoryStore::new(), p.id.as_str()).unwrap()))
            .collect();
        let mut cluster = Self {
            net: MemoryNetwork::new(seed),
            config,
            engines,
            nodes: (0..NODES).map(|_| None).collect(),
        };
        for i in 0..NODES {
            cluster.start(i);
        }
        cluster
    }

    pub fn peer(&self, i: usize) -> &Peer {
        &self.config.members[i]
    }

    pub fn start(&mut self, i: usize) {
        let (transport, inbox) = self.net.add_node(self.peer(i).clone());
        let node = Node::start(
            self.config.clone(),
            transport,
            inbox,
            self.engines[i].clone(),
        )
        .unwrap();
        self.nodes[i] = Some(Arc::new(node));
    }

    /// A crash: the node vanishes from the network and its tasks stop; its store stays.
    pub fn crash(&mut self, i: usize) {
        self.net.remove_node(&self.peer(i).id);
        if let Some(node) = self.nodes[i].take() {
            node.kill();
        }
    }

    /// A crash that also loses the data directory: the node comes back (on `start`) with a
    /// new, empty store and a new actor epoch.
    pub fn crash_and_wipe(&mut self, i: usize) {
        self.crash(i);
        self.engines[i] =
            Arc::new(MemoryEngine::open(MemoryStore::new(), self.peer(i).id.as_str()).unwrap());
    }

    pub fn up(&self) -> Vec<usize> {
        (0..NODES).filter(|&i| self.nodes[i].is_some()).collect()
    }

    pub fn node(&self, i: usize) -> Arc<SimNode> {
        self.nodes[i].clone().expect("node is up")
    }

    /// Message bytes of `kind` the running nodes have `"sent"` peers (or `"received"` from
    /// them) so far: the sum of their `shoal_peer_bytes_{direction}_total` series.
    pub fn peer_bytes(&self, direction: &str, kind: &str) -> f64 {
        let series = format!("shoal_peer_bytes_{direction}_total{{kind=\"{kind}\"}}");
        self.up()
            .iter()
            .map(|&i| {
                let text = self.node(i).render_metrics();
                text.lines()
                    .find(|l| l.starts_with(&series))
                    .and_then(|l| l.rsplit(' ').next())
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(0.0)
            })
            .sum()
    }

    /// The running nodes that hold hints for node `target`.
    pub fn hint_holders(&self, target: usize) -> Vec<usize> {
        let id = self.peer(target).id.as_str();
        self.up()
            .into_iter()
            .filter(|&i| self.node(i).hint_backlog().contains_key(id))
            .collect()
    }

    /// Primaries of `key` (indexes) and its partition.
    pub fn primaries(&self, key: &[u8]) -> (u32, Vec<usize>) {
        let node = self.node(self.up()[0]);
        let skey = storage_key(KEYSPACE, key).unwrap();
        let cluster = node.cluster();
        let partition = cluster.ring.partition_of(&skey);
        let primaries = cluster
            .ring
            .primaries(partition)
            .iter()
            .map(|id| id.as_str()[1..].parse().unwrap())
            .collect();
        (partition.0, primaries)
    }

    /// The key's state as replica `i` stores it.
    pub fn local_view(&self, i: usize, key: &[u8]) -> Option<View> {
        let skey = storage_key(KEYSPACE, key).unwrap();
        let (partition, _) = self.primaries(key);
        self.engines[i]
            .get_record(partition, &skey)
            .unwrap()
            .map(|r| r.decode().unwrap().view())
    }

    pub fn local_state(&self, i: usize, key: &[u8]) -> Option<Value> {
        let skey = storage_key(KEYSPACE, key).unwrap();
        let (partition, _) = self.primaries(key);
        self.engines[i]
            .get_record(partition, &skey)
            .unwrap()
            .map(|r| r.decode().unwrap())
    }

    /// Waits (virtual time) until no coordinator runs, every node sees every other live, and
    /// no node holds hints.
    pub async fn settle(&self) {
        for _ in 0..1200 {
            let idle = self.up().iter().all(|&i| self.node(i).in_flight() == 0);
            let all_live = self.up().iter().all(|&i| {
                let node = self.node(i);
                (0..NODES).all(|j| node.is_live(self.peer(j).id.as_str()))
            });
            let no_hints = self
                .up()
                .iter()
                .all(|&i| self.node(i).hint_backlog().is_empty());
            if idle && all_live && no_hints {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let backlog: Vec<_> = self
            .up()
            .iter()
            .map(|&i| self.node(i).hint_backlog())
            .collect();
        panic!("cluster did not settle in 120 s of virtual time; backlogs {backlog:?}");
    }

    pub fn kill_all(&mut self) {
        for i in 0..NODES {
            if let Some(node) = self.nodes[i].take() {
                node.kill();
            }
        }
    }
}
