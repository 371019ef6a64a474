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
//! **Ring.** For now the ring is a fixed [`RingState`] in which every configured member
//! ([`NodeConfig::members`]) joined at startup, identical on every node; ring gossip (joins
//! and removals at run time) is a later step. SWIM liveness never changes the ring: a dead
//! node keeps its partitions and fallbacks serve them.
//!
//! **Keys.** A client key lives in a keyspace; its storage key is
//! `len(keyspace) as u8 ‖ keyspace ‖ key`, and its partition is the ring partition of that
//! storage key. N is per keyspace ([`NodeConfig::keyspaces`], default
//! [`NodeConfig::default_n`] = 3, at most the ring's replicas); R and W are per request.
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
//! **Known gap, closed by anti-entropy (next step).** A coordinator hints a target that did
//! not confirm only when that target fails or at the deadline. If the coordinator crashes
//! after W acks and before then, a target that missed the update (a lost message) learns it
//! only from read repair or anti-entropy. The update is not lost: W replicas hold it.

mod coordinate;
mod handoff;
mod metrics;
mod serve;
mod shared;
mod swim;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use shoal_membership::{NodeId as MemberId, Ring, RingConfig, RingState, SwimConfig};
use shoal_storage::{Engine, Store};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

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
    /// Every member of the cluster, this node included (id and address). They all join the
    /// ring at startup and serve as SWIM seeds.
    pub members: Vec<Peer>,
    /// Q, N (the most any keyspace may use), fallbacks, virtual nodes. Same on every node.
    pub ring: RingConfig,
    /// SWIM settings.
    pub swim: SwimConfig,
    /// Seed of the SWIM RNG (probe order, gossip targets), so a simulation replays.
    pub seed: u64,
    /// N of a keyspace not listed in `keyspaces`. Default 3.
    pub default_n: usize,
    /// N per keyspace, each at most `ring.replicas`.
    pub keyspaces: BTreeMap<String, usize>,
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
    /// Hints read per page. Default 64.
    pub handoff_page: usize,
    /// Hint deliveries in flight per target. Default 8.
    pub handoff_in_flight: usize,
    /// Deadline of one hint delivery or read-repair RPC. Default 5 s.
    pub background_timeout: Duration,
}

impl NodeConfig {
    /// Defaults for a cluster of `members`.
    pub fn new(members: Vec<Peer>) -> Self {
        let n = members.len();
        Self {
            members,
            ring: RingConfig::default(),
            swim: SwimConfig::lan(n),
            seed: 0,
            default_n: 3,
            keyspaces: BTreeMap::new(),
            peer_concurrency: 64,
            background_concurrency: 8,
            peer_queue: 256,
            max_serving: 1024,
            handoff_interval: Duration::from_secs(10),
            handoff_page: 64,
            handoff_in_flight: 8,
            background_timeout: Duration::from_secs(5),
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
            handoff_interval: Duration::from_secs(2),
            background_timeout: Duration::from_secs(2),
            ..Self::new(members)
        }
    }

    /// N of `keyspace`.
    pub fn n_for(&self, keyspace: &str) -> usize {
        self.keyspaces
            .get(keyspace)
            .copied()
            .unwrap_or(self.default_n)
    }
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
        let mut state = RingState::new();
        for peer in &config.members {
            let id =
                MemberId::new(peer.id.as_str()).map_err(|e| StartError::Config(e.to_string()))?;
            state.join(id);
        }
        if !config.members.contains(&local) {
            return Err(StartError::Config(format!(
                "{} is not among the members",
                local.id
            )));
        }
        let ring =
            Ring::build(&state, &config.ring).map_err(|e| StartError::Config(e.to_string()))?;
        for (keyspace, n) in config
            .keyspaces
            .iter()
            .map(|(k, n)| (k.as_str(), *n))
            .chain([("(default)", config.default_n)])
        {
            if n == 0 || n > config.ring.replicas {
                return Err(StartError::Config(format!(
                    "keyspace {keyspace}: N = {n}, must be 1 to {}",
                    config.ring.replicas
                )));
            }
        }
        let (handoff_tx, handoff_rx) = mpsc::channel(64);
        let (swim_tx, swim_rx) = mpsc::channel(8);
        let shared = Arc::new(Shared::new(
            config, transport, engine, ring, handoff_tx, swim_tx,
        ));
        let Inbox { datagrams, rpcs } = inbox;
        shared.spawn(swim::run(shared.clone(), datagrams, swim_rx));
        shared.spawn(serve::run(shared.clone(), rpcs));
        shared.spawn(handoff::run(shared.clone(), handoff_rx));
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
        coordinate::update(&self.shared, id, keyspace, key, update, w, timeout, false).await
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
        coordinate::get(&self.shared, id, keyspace, key, r, timeout, false).await
    }

    /// This node: its id and address.
    pub fn id(&self) -> &Peer {
        self.shared.transport.local()
    }

    /// The request path's counters since this node started.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.shared.metrics.snapshot()
    }

    /// The store.
    pub fn engine(&self) -> &Arc<Engine<S>> {
        &self.shared.engine
    }

    /// The node's settings (members and their addresses, N per keyspace).
    pub fn config(&self) -> &NodeConfig {
        &self.shared.config
    }

    /// The placement ring.
    pub fn ring(&self) -> &Ring {
        &self.shared.ring
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
    pub fn hint_backlog(
        &self,
    ) -> Result<BTreeMap<String, HintBacklog>, shoal_storage::StorageError> {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Ok(shared::blocking(|| self.shared.engine.hint_backlog())?
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
            .collect())
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
