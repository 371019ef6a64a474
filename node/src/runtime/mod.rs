//! The node runtime: a thin async driver around the request-path state machines, SWIM and
//! hinted handoff, generic over the [`Transport`] and the [`Store`].
//!
//! Tasks (each the one owner of its state machine; all stop on the node's cancellation
//! token):
//!
//! - **swim**: drives [`Swim`](shoal_membership::Swim) over transport datagrams (the
//!   membership codec's bytes inside), keeps the timers, and publishes the liveness view the
//!   coordinators select targets with; a member coming back wakes the handoff worker.
//! - **serve**: answers peers' RPCs (replicate, read, deliver hint, forwarded requests), each
//!   in its own task, at most [`NodeConfig::max_serving`] at once (more are rejected as
//!   overloaded, which the caller knows changed nothing).
//! - **one task per client request**: owns its
//!   [`UpdateCoordinator`](crate::request::UpdateCoordinator) or
//!   [`GetCoordinator`](crate::request::GetCoordinator) until every target resolved, after
//!   answering the client (late acks, hints, read repair).
//! - **handoff**: runs one [`HandoffSession`](crate::handoff::HandoffSession) per target
//!   that SWIM reports alive again, and periodically for every target with a backlog.
//!
//! Per-peer bounded concurrency: each peer has a foreground and a background budget of
//! in-flight RPCs with a bounded queue of waiters; a request that finds its peer's slots and
//! queue full fails at once for that peer (and is hinted), so a slow peer never stalls
//! requests to healthy ones, and background work (read repair, handoff) cannot take the
//! foreground's share.
//!
//! **Ring.** The ring is a pure function of the cluster state
//! ([`ClusterState`](crate::cluster::ClusterState): ring members, their addresses, N per
//! keyspace), a CRDT spread by gossip (see the `swim` task) and kept in the store's metadata.
//! At start the node merges the state it kept, the state learned from seeds
//! ([`NodeConfig::cluster`]) and joins every configured member that has no ring entry yet (in
//! id order, so nodes started together with the same members build the same ring at once).
//! SWIM liveness never changes the ring: a dead node keeps its partitions and fallbacks serve
//! them. Keyspaces are created at run time ([`Node::create_keyspace`]); their N spreads the
//! same way.
//!
//! **Keys.** A client key lives in a keyspace; its storage key is
//! `len(keyspace) as u8 ‖ keyspace ‖ key`, and its partition is the ring partition of that
//! storage key. N is per keyspace (set by [`Node::create_keyspace`]; a keyspace never created
//! has [`NodeConfig::default_n`] = 3; never more than the ring's replicas); R and W are per
//! request.
//!
//! **Coordinator.** A node that is not among a key's targets forwards the request to the
//! first target that takes it; a forwarded request is never forwarded again (a node that is
//! not a target in its own view refuses it, changing nothing).
//!
//! **Store calls** are synchronous (RocksDB writes fsync). Every engine call of the runtime
//! goes through `shared::blocking`, which on a multi-threaded runtime (the `shoal` binary)
//! uses `tokio::task::block_in_place` so a slow fsync does not stall the other tasks of its
//! worker thread, and on a current-thread runtime (simulations, in-memory store) runs inline.
//!
//! **Write-ahead hints.** The coordinator writes the update and a hint for every other
//! owner (each target's primary, every down primary) in one durable batch before it sends
//! anything. When a target confirms, its owner's hint is deleted, one delete batch per
//! `Replicate` request (see `replicate`: the writes to one peer are coalesced). A
//! coordinator that crashes after W acks and before a target confirmed thus still delivers
//! the update after it restarts (its handoff pass finds the hints); no replica depends on
//! read repair or anti-entropy to learn an acknowledged update whose coordinator died. The
//! cost is the hint puts in the update's batch and the delete batches; a hint changed by a
//! later update of the key is kept and delivered.
//!
mod antientropy;
mod coordinate;
mod handoff;
mod metrics;
mod replicate;
mod serve;
mod shared;
mod swim;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use shoal_membership::{NodeId as MemberId, RingConfig, SwimConfig};
use shoal_storage::{Engine, Store};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::cluster::{ClusterState, ClusterView, KeyspaceError};
use crate::request::{Acknowledged, GetOutcome, RequestError};
use crate::transport::{Inbox, Peer, Transport};
pub use metrics::MetricsSnapshot;
use shared::Shared;

/// Default read quorum.
pub const DEFAULT_R: usize = 2;
/// Default write quorum.
pub const DEFAULT_W: usize = 2;

/// Settings of a [`Node`].
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Members known at start, this node included (id and address): each joins the ring if
    /// the cluster state has no entry for it yet, and serves as a SWIM seed.
    pub members: Vec<Peer>,
    /// Cluster state learned before starting (from seeds); merged with the state kept in the
    /// store.
    pub cluster: ClusterState,
    /// Time between two pulls of the cluster state from a member that announces another
    /// version. Default 2 s.
    pub cluster_sync: Duration,
    /// Q, N (the most any keyspace may use), fallbacks, virtual nodes. Same on every node.
    pub ring: RingConfig,
    /// SWIM settings.
    pub swim: SwimConfig,
    /// Seed of the SWIM RNG (probe order, gossip targets), so a simulation replays.
    pub seed: u64,
    /// Whether SWIM's probe rounds follow the wall clock (`SystemTime`), so that nodes probe
    /// in aligned rounds in which each is probed by about one other
    /// ([`Swim::set_schedule_clock`](shoal_membership::Swim::set_schedule_clock)); this
    /// detects a crashed node sooner. Needs clocks synchronized to within a small part of the
    /// probe interval (NTP). Default false, so that a seeded simulation on a paused tokio
    /// clock does not depend on the real time; `shoal node` turns it on.
    pub swim_wall_clock: bool,
    /// N of a keyspace never created. Default 3, at most `ring.replicas`.
    pub default_n: usize,
    /// In-flight foreground RPCs (client requests) per peer. Default 64. More queues more
    /// work on a slow peer; fewer sheds load sooner.
    pub peer_concurrency: usize,
    /// In-flight background RPCs (read repair, handoff) per peer. Default 8.
    pub background_concurrency: usize,
    /// Callers that may wait for a slot of a peer's budget (each budget); beyond that a
    /// request to the peer fails at once and is hinted. Default 256. A slow peer fills its
    /// slots and then its queue; after that it costs others nothing.
    pub peer_queue: usize,
    /// Peer RPCs served at once; more are rejected as overloaded. Default 1024.
    pub max_serving: usize,
    /// Time between two handoff passes over every target with a backlog. Default 10 s.
    /// Shorter delivers hints sooner when a SWIM "up" event was missed.
    pub handoff_interval: Duration,
    /// Hints read per page; each page is one delivery (one RPC, one durable write at the
    /// target, one delete here). Default and most 256 (`MAX_HINTS_PER_BATCH`).
    pub handoff_page: usize,
    /// Hint batches in flight per target. Default 2: the next page is read and sent while
    /// one is answered, and a burst stays well inside a socket buffer.
    pub handoff_in_flight: usize,
    /// Deadline of one hint delivery, read-repair or anti-entropy RPC. Default 5 s.
    pub background_timeout: Duration,
    /// Whether anti-entropy runs. Default true; off only to measure what it costs, or in
    /// tests of other repair paths.
    pub anti_entropy: bool,
    /// Shortest time between two anti-entropy rounds (also the delay of the first after
    /// start). Default 2 s.
    pub ae_min_interval: Duration,
    /// Longest time between two rounds when they find nothing. Default 60 s.
    pub ae_max_interval: Duration,
    /// Anti-entropy payload bytes per second this node moves at most. Default 128 MiB.
    pub ae_bytes_per_sec: u64,
    /// Keys per second anti-entropy compares or repairs at most. Default 400 000.
    pub ae_keys_per_sec: u64,
    /// Records per batch of a whole-leaf transfer (a refill) while the node serves no clients
    /// (see `transfer_batch` in the anti-entropy task). Default and most
    /// [`TRANSFER_RECORDS`](crate::antientropy::TRANSFER_RECORDS).
    pub ae_transfer_batch: usize,
}

impl NodeConfig {
    /// Defaults for a cluster of `members`.
    pub fn new(members: Vec<Peer>) -> Self {
        let n = members.len();
        Self {
            members,
            cluster: ClusterState::new(),
            cluster_sync: Duration::from_secs(2),
            ring: RingConfig::default(),
            swim: SwimConfig::lan(n),
            seed: 0,
            swim_wall_clock: false,
            default_n: 3,
            peer_concurrency: 64,
            background_concurrency: 8,
            peer_queue: 256,
            max_serving: 1024,
            handoff_interval: Duration::from_secs(10),
            handoff_page: 256,
            handoff_in_flight: 2,
            background_timeout: Duration::from_secs(5),
            anti_entropy: true,
            ae_min_interval: Duration::from_secs(2),
            ae_max_interval: Duration::from_secs(60),
            ae_bytes_per_sec: 128 << 20,
            ae_keys_per_sec: 400_000,
            ae_transfer_batch: crate::antientropy::TRANSFER_RECORDS,
        }
    }

    /// Settings for simulations: 64 partitions, SWIM's test preset, handoff every 2 s.
    pub fn for_test(members: Vec<Peer>) -> Self {
        Self {
            ring: RingConfig {
                partitions: 64,
                ..RingConfig::default()
            },
            swim: SwimConfig::for_test(),
            cluster_sync: Duration::from_millis(500),
            handoff_interval: Duration::from_secs(2),
            background_timeout: Duration::from_secs(2),
            ..Self::new(members)
        }
    }
}

/// N of `keyspace` in `state`: as created, else the default; never above the ring's replicas.
pub(crate) fn n_for(config: &NodeConfig, state: &ClusterState, keyspace: &str) -> usize {
    state
        .keyspace(keyspace)
        .unwrap_or(config.default_n)
        .min(config.ring.replicas)
}

/// A node could not start; nothing is running.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is unusable.
    #[error("bad node configuration: {0}")]
    Config(String),
}

/// The hints held for one target, as the metrics report them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HintBacklog {
    /// Keys with a hint.
    pub keys: u64,
    /// Age of the oldest hint (wall clock; metrics only).
    pub oldest_age: Option<Duration>,
}

/// A keyspace change that did not happen.
#[derive(Debug, thiserror::Error)]
pub enum KeyspaceChangeError {
    /// The name or N is out of range.
    #[error(transparent)]
    Invalid(#[from] KeyspaceError),
    /// The new state could not be persisted.
    #[error("{0}")]
    Storage(String),
}

impl From<String> for KeyspaceChangeError {
    fn from(message: String) -> Self {
        Self::Storage(message)
    }
}

/// Anti-entropy coverage of the partitions a node is a primary of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AeCoverage {
    /// Partitions the node is a primary of.
    pub partitions: u32,
    /// Of those, partitions not fully compared since the node started.
    pub never_compared: u32,
    /// The longest time since a partition was last fully compared.
    pub oldest: Option<Duration>,
    /// Per partition, the time since it was last fully compared (`None`: not since start).
    pub ages: Vec<(u32, Option<Duration>)>,
}

/// One member as SWIM reports it to this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberStatus {
    /// Node id.
    pub id: String,
    /// Alive, suspect, dead or left.
    pub state: shoal_membership::MemberState,
    /// The member's incarnation.
    pub incarnation: u64,
    /// Its address.
    pub addr: std::net::SocketAddr,
    /// The cluster-state version it announced.
    pub ring_version: u64,
}

/// A running node. Dropping it does not stop it: call [`shutdown`](Self::shutdown) (or, in
/// simulations, [`kill`](Self::kill)).
pub struct Node<T: Transport, S: Store> {
    shared: Arc<Shared<T, S>>,
}

impl<T: Transport, S: Store> Node<T, S> {
    /// Starts the node's tasks on the current tokio runtime: SWIM (joining through the other
    /// members), the RPC server and the handoff worker. `transport` and `inbox` come from the
    /// same transport constructor; `engine` is this node's store (its node id must be the
    /// transport's).
    pub fn start(
        config: NodeConfig,
        transport: T,
        inbox: Inbox,
        engine: Arc<Engine<S>>,
    ) -> Result<Self, StartError> {
        let local = transport.local().clone();
        if engine.node_id() != local.id.as_str() {
            return Err(StartError::Config(format!(
                "store belongs to {}, transport to {}",
                engine.node_id(),
                local.id
            )));
        }
        if !config.members.contains(&local) {
            return Err(StartError::Config(format!(
                "{} is not among the members",
                local.id
            )));
        }
        if config.default_n == 0 || config.default_n > config.ring.replicas {
            return Err(StartError::Config(format!(
                "default N = {}, must be 1 to {}",
                config.default_n, config.ring.replicas
            )));
        }
        let mut state =
            shared::blocking(|| crate::cluster::load(&engine)).map_err(StartError::Config)?;
        state.merge(&config.cluster);
        let mut members = Vec::with_capacity(config.members.len());
        for peer in &config.members {
            let id =
                MemberId::new(peer.id.as_str()).map_err(|e| StartError::Config(e.to_string()))?;
            members.push((id, peer.addr));
        }
        members.sort();
        for (id, addr) in &members {
            state.join_if_absent(id);
            if state.addr(id).is_none() || id.as_str() == local.id.as_str() {
                state.set_addr(id, *addr);
            }
        }
        let view = ClusterView::build(state, &config.ring).map_err(StartError::Config)?;
        shared::blocking(|| crate::cluster::save(&engine, &view.state))
            .map_err(|e| StartError::Config(format!("cluster state not persisted: {e}")))?;
        let (handoff_tx, handoff_rx) = mpsc::channel(64);
        let (ae_tx, ae_rx) = mpsc::channel(64);
        let (swim_tx, swim_rx) = mpsc::channel(8);
        let shared = Arc::new(Shared::new(
            config, transport, engine, view, handoff_tx, ae_tx, swim_tx,
        ));
        let Inbox { datagrams, rpcs } = inbox;
        shared.spawn(swim::run(shared.clone(), datagrams, swim_rx));
        shared.spawn(serve::run(shared.clone(), rpcs));
        shared.spawn(handoff::run(shared.clone(), handoff_rx));
        if shared.config.anti_entropy {
            shared.spawn(antientropy::run(shared.clone(), ae_rx));
        }
        Ok(Self { shared })
    }

    /// Applies `update` to `key` of `keyspace` and waits for W replicas (this node included,
    /// fallbacks count) to persist it, at most `timeout`.
    ///
    /// On error, [`RequestError::outcome`] says whether it may have taken effect: a timeout
    /// after the coordinator persisted the update is an unknown outcome, never a failure.
    #[tracing::instrument(level = "debug", skip(self, key, update), fields(node = %self.shared.local))]
    pub async fn update(
        &self,
        keyspace: &str,
        key: &[u8],
        update: shoal_storage::Update,
        w: usize,
        timeout: Duration,
    ) -> Result<Acknowledged, RequestError> {
        let id = self.shared.next_request_id();
        let started = tokio::time::Instant::now();
        let result =
            coordinate::update(&self.shared, id, keyspace, key, update, w, timeout, false).await;
        self.shared.metrics.latency("update", started.elapsed());
        result
    }

    /// Reads `key` of `keyspace` from R replicas (fallbacks count), merged; replicas that
    /// were behind are repaired in the background.
    #[tracing::instrument(level = "debug", skip(self, key), fields(node = %self.shared.local))]
    pub async fn get(
        &self,
        keyspace: &str,
        key: &[u8],
        r: usize,
        timeout: Duration,
    ) -> Result<GetOutcome, RequestError> {
        let id = self.shared.next_request_id();
        let started = tokio::time::Instant::now();
        let result = coordinate::get(&self.shared, id, keyspace, key, r, timeout, false).await;
        self.shared.metrics.latency("get", started.elapsed());
        result
    }

    /// This node: its id and address.
    pub fn id(&self) -> &Peer {
        self.shared.transport.local()
    }

    /// The request path's counters since this node started.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.shared.metrics.snapshot()
    }

    /// Every metric of this node in Prometheus text format (what `/metrics` serves), with the
    /// gauges read now: member states, hint backlog, queue depths, store size, anti-entropy
    /// coverage.
    pub fn render_metrics(&self) -> String {
        self.shared.refresh_gauges();
        self.shared.metrics.render()
    }

    /// Why this node cannot serve requests, or `None` if it can (what `/health` reports).
    pub fn unhealthy(&self) -> Option<String> {
        if self.shared.cancel.is_cancelled() {
            return Some("shutting down".into());
        }
        let view = self.shared.view();
        if !view.state.is_joined(&self.shared.local) {
            return Some("this node holds no partitions in its ring".into());
        }
        None
    }

    /// The store.
    pub fn engine(&self) -> &Arc<Engine<S>> {
        &self.shared.engine
    }

    /// The node's settings.
    pub fn config(&self) -> &NodeConfig {
        &self.shared.config
    }

    /// The cluster state this node holds and the ring built from it.
    pub fn cluster(&self) -> Arc<ClusterView> {
        self.shared.view()
    }

    /// N of `keyspace` in this node's view.
    pub fn n_for(&self, keyspace: &str) -> usize {
        n_for(&self.shared.config, &self.shared.view().state, keyspace)
    }

    /// Sets `keyspace`'s N (1 to the ring's replicas), creating the keyspace if needed. The
    /// change is durable here when this returns and spreads to the other nodes by gossip.
    /// Returns the new cluster-state version. A bad name or N changes nothing.
    pub fn create_keyspace(&self, keyspace: &str, n: usize) -> Result<u64, KeyspaceChangeError> {
        let max = self.shared.config.ring.replicas;
        let version = self.shared.change_cluster(|state| {
            state.set_keyspace(keyspace, n, max)?;
            Ok::<_, KeyspaceChangeError>(true)
        })?;
        Ok(version.unwrap_or_else(|| self.shared.view().version))
    }

    /// How well anti-entropy covers the partitions this node is a primary of.
    pub fn ae_coverage(&self) -> AeCoverage {
        self.shared.ae_coverage()
    }

    /// Pauses (`true`) or resumes anti-entropy: no round starts, and an exchange in progress
    /// stops before its next step or batch until resumed.
    pub fn pause_anti_entropy(&self, paused: bool) {
        self.shared
            .ae_paused
            .store(paused, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether anti-entropy is paused.
    pub fn anti_entropy_paused(&self) -> bool {
        self.shared
            .ae_paused
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A digest of every partition tree this node keeps for the partitions it is a primary
    /// of: two nodes that are primaries of the same partitions have equal digests exactly
    /// when they hold the same data (a benchmark's convergence test).
    pub fn data_digest(&self) -> u128 {
        let view = self.shared.view();
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for p in 0..view.ring.partitioner().partitions() {
            if view
                .ring
                .primaries(shoal_membership::PartitionId(p))
                .contains(&self.shared.local)
            {
                h.update(&p.to_le_bytes());
                h.update(&self.shared.engine.merkle_root(p).to_le_bytes());
            }
        }
        h.digest128()
    }

    /// This node's SWIM incarnation.
    pub fn incarnation(&self) -> u64 {
        self.shared
            .incarnation
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The address of member `id` as this node knows it (SWIM, else the cluster state).
    pub fn addr_of(&self, id: &str) -> Option<std::net::SocketAddr> {
        let local = self.shared.transport.local();
        if local.id.as_str() == id {
            return Some(local.addr);
        }
        let id = MemberId::new(id).ok()?;
        self.shared
            .peer(&id)
            .map(|p| p.addr)
            .or_else(|| self.shared.view().state.addr(&id))
    }

    /// This node's own record of a storage key, from its store (no quorum).
    pub fn read_local(
        &self,
        partition: u32,
        storage_key: &[u8],
    ) -> Result<Option<shoal_storage::Record>, shoal_storage::StorageError> {
        shared::blocking(|| self.shared.engine.get_record(partition, storage_key))
    }

    /// What SWIM knows of every other member: state, incarnation, address, announced
    /// cluster-state version.
    pub fn member_views(&self) -> Vec<MemberStatus> {
        self.shared
            .member_views()
            .into_iter()
            .map(|(id, m)| MemberStatus {
                id: id.as_str().to_owned(),
                state: m.state,
                incarnation: m.incarnation,
                addr: m.addr,
                ring_version: m.ring_version,
            })
            .collect()
    }

    /// Whether this node's SWIM view counts `id` as live: alive, suspect, or not heard of yet
    /// (a ring member SWIM never met is tried, and hinted when it does not answer).
    pub fn is_live(&self, id: &str) -> bool {
        MemberId::new(id).is_ok_and(|id| self.shared.is_live(&id))
    }

    /// Members SWIM has heard of, in any state, this node included.
    pub fn members_known(&self) -> usize {
        self.shared.members_known() + 1
    }

    /// Coordinators running on this node: client requests not yet answered, and answered
    /// ones still waiting for their last targets (late acks, hints, read repair).
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight()
    }

    /// The hint backlog per target node.
    pub fn hint_backlog(&self) -> BTreeMap<String, HintBacklog> {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.shared
            .engine
            .hint_backlog()
            .into_iter()
            .map(|(target, b)| {
                let oldest_age = b
                    .oldest_ms
                    .map(|ms| Duration::from_millis(now_ms.saturating_sub(ms)));
                (
                    target,
                    HintBacklog {
                        keys: b.keys,
                        oldest_age,
                    },
                )
            })
            .collect()
    }

    /// Graceful stop: announces the departure through SWIM (peers mark this node left at
    /// once, without suspicion; it keeps its ring partitions), waits a few gossip rounds,
    /// stops every task (in-flight requests end with [`RequestError::ShuttingDown`]), closes
    /// the transport and flushes the store.
    pub async fn shutdown(&self) {
        if self
            .shared
            .swim_commands
            .send(swim::Command::Leave)
            .await
            .is_ok()
        {
            tokio::time::sleep(self.shared.config.swim.gossip_interval * 3).await;
        }
        self.shared.cancel.cancel();
        self.shared.transport.shutdown().await;
        if let Err(e) = shared::blocking(|| self.shared.engine.flush()) {
            tracing::warn!(error = %e, "flush at shutdown failed");
        }
    }

    /// Stops every task at once, without telling anyone: a crash, for simulations. The store
    /// keeps what was persisted.
    pub fn kill(&self) {
        self.shared.cancel.cancel();
    }

    /// The token that stops this node's tasks.
    pub fn cancellation(&self) -> CancellationToken {
        self.shared.cancel.clone()
    }
}

/// Asks `peer` for its cluster state, at most `timeout` (used before a node starts, to learn
/// the ring from its seeds).
pub async fn fetch_cluster<T: Transport>(
    transport: &T,
    peer: &Peer,
    timeout: Duration,
) -> Result<ClusterState, String> {
    use crate::request::message::{self, PeerRequest, PeerResponse};
    let body = message::encode_request(&PeerRequest::PullCluster {
        id: crate::request::RequestId(0),
    })
    .map_err(|e| e.to_string())?;
    let answer = transport
        .rpc(peer, bytes::Bytes::from(body), timeout)
        .await
        .map_err(|e| e.to_string())?;
    match message::decode_response(&answer).map_err(|e| e.to_string())? {
        PeerResponse::Cluster(bytes) => ClusterState::decode(&bytes).map_err(|e| e.to_string()),
        other => Err(format!("unexpected answer {other:?}")),
    }
}

/// The storage key of `key` in `keyspace`: `len(keyspace) as u8 ‖ keyspace ‖ key`. Errors for
/// an empty keyspace name or one over 255 bytes.
pub fn storage_key(keyspace: &str, key: &[u8]) -> Result<Vec<u8>, RequestError> {
    shoal_client::protocol::storage_key(keyspace, key).ok_or_else(|| {
        RequestError::Invalid(format!(
            "keyspace name must be 1 to 255 bytes, got {}",
            keyspace.len()
        ))
    })
}
