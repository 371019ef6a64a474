//! What the node's tasks share: transport, store, ring, liveness view, per-peer budgets.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use shoal_membership::{MemberState, NodeId as MemberId};

use crate::cluster::{ClusterState, ClusterView};
use shoal_storage::{Actor, Engine, Store};
use tokio::sync::{OnceCell, OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use super::NodeConfig;
use super::metrics::Metrics;
use super::swim::Command;
use crate::request::RequestId;
use crate::request::message::{self, PeerRequest, PeerResponse};
use crate::transport::{Peer, Transport, TransportError};

/// `(target, partition, storage key)`.
type TargetKey = (MemberId, u32, Vec<u8>);

/// How long an anti-entropy claim of a partition lasts without a step that renews it.
pub(crate) const AE_CLAIM: Duration = Duration::from_secs(2);
/// A node that stored delivered hints within this long counts as receiving hinted handoff
/// (longer than a batch's round trip on a loaded node, so the gaps between batches count).
pub(crate) const HINTS_RECENT: Duration = Duration::from_secs(3);

/// How long anti-entropy with a peer waits, at most, while this node holds hints for it
/// (a hint the peer keeps refusing must not stop anti-entropy).
pub(crate) const HINT_HOLD: Duration = Duration::from_secs(30);

/// Who holds a partition for an anti-entropy exchange (see [`Shared::ae_claim`]).
struct AeClaim {
    /// The other replica of the exchange.
    peer: String,
    /// Whether that replica started the exchange (this node serves it).
    started_by_peer: bool,
    /// Whether the exchange has begun moving records (a transfer or repair step).
    moving: bool,
    /// Until when, on [`Shared::now`]'s clock.
    until: Duration,
}

impl AeClaim {
    /// Whether this claim, held on node `local`, keeps out the exchange with `peer` (started
    /// by `peer` when `started_by_peer`) at `now`: while it lasts, yes for another peer; for
    /// the same peer's exchange in the other direction, yes once this claim's exchange moves
    /// records, and before that when it was started by the smaller node id.
    ///
    /// Two replicas that start exchanges of a partition with each other at once would move
    /// the same records; the smaller id's goes on. But an exchange already moving records is
    /// never overtaken: taking over then let the other direction send the same records while
    /// the first transfer was still being merged (a wiped replica fetching a partition while
    /// its peer pushed it), which was a third of the records moved in a refill.
    fn blocks(&self, local: &str, peer: &str, started_by_peer: bool, now: Duration) -> bool {
        if self.until <= now {
            return false;
        }
        if self.peer != peer {
            return true;
        }
        let starter = |by_peer: bool| if by_peer { peer } else { local };
        self.started_by_peer != started_by_peer
            && (self.moving || starter(self.started_by_peer) < starter(started_by_peer))
    }
}

/// Which budget of a peer an RPC uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// Client requests.
    Foreground,
    /// Read repair and hint delivery.
    Background,
}

/// A peer RPC that did not succeed.
#[derive(Debug)]
pub(crate) struct CallError {
    pub(crate) message: String,
    /// Whether the peer may have acted on it.
    pub(crate) may_have_taken_effect: bool,
}

impl CallError {
    pub(crate) fn definite(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            may_have_taken_effect: false,
        }
    }
}

impl From<TransportError> for CallError {
    fn from(e: TransportError) -> Self {
        Self {
            may_have_taken_effect: e.may_have_taken_effect(),
            message: e.to_string(),
        }
    }
}

/// Answers of recently served forwarded requests, by sender and request id, so a duplicate
/// waits for the first copy's answer instead of applying the update again. Bounded: the
/// oldest entries are forgotten first.
pub(crate) struct Dedup {
    entries: Mutex<DedupEntries>,
}

type Answer = Arc<OnceCell<Result<PeerResponse, String>>>;
/// Answers by (sender, request id), and those keys oldest first.
type DedupEntries = (
    HashMap<(String, RequestId), Answer>,
    VecDeque<(String, RequestId)>,
);

/// Forwarded requests remembered for deduplication.
const DEDUP_ENTRIES: usize = 16 * 1024;

impl Dedup {
    fn new() -> Self {
        Self {
            entries: Mutex::new((HashMap::new(), VecDeque::new())),
        }
    }

    /// The answer cell of `(from, id)`, created empty on first sight.
    pub(crate) fn cell(&self, from: &str, id: RequestId) -> Answer {
        let mut guard = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let (map, order) = &mut *guard;
        let key = (from.to_owned(), id);
        if let Some(cell) = map.get(&key) {
            return cell.clone();
        }
        if order.len() >= DEDUP_ENTRIES
            && let Some(old) = order.pop_front()
        {
            map.remove(&old);
        }
        order.push_back(key.clone());
        map.entry(key).or_default().clone()
    }
}

/// Marks one running coordinator; see [`Shared::coordinating`].
pub(crate) struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

struct Budgets {
    foreground: Budget,
    background: Budget,
}

/// In-flight slots to one peer, with a bounded queue of callers waiting for one.
#[derive(Clone)]
struct Budget {
    slots: Arc<Semaphore>,
    waiting: Arc<AtomicUsize>,
}

/// Counts a waiting caller until dropped (also when its future is cancelled).
struct Waiting(Arc<AtomicUsize>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Budget {
    fn new(slots: usize) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(slots.max(1))),
            waiting: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// A slot: at once if one is free; else after waiting at most `timeout`, if fewer than
    /// `queue` callers already wait. `None`: busy.
    async fn acquire(&self, queue: usize, timeout: Duration) -> Option<OwnedSemaphorePermit> {
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            return Some(permit);
        }
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= queue {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        let _waiting = Waiting(self.waiting.clone());
        tokio::time::timeout(timeout, self.slots.clone().acquire_owned())
            .await
            .ok()?
            .ok()
    }
}

/// What this node knows of a member from SWIM.
#[derive(Debug, Clone)]
pub(crate) struct MemberView {
    pub(crate) state: MemberState,
    pub(crate) incarnation: u64,
    pub(crate) addr: std::net::SocketAddr,
    /// The cluster-state version the member announced.
    pub(crate) ring_version: u64,
}

pub(crate) struct Shared<T: Transport, S: Store> {
    pub(crate) config: NodeConfig,
    pub(crate) local: MemberId,
    pub(crate) transport: T,
    pub(crate) engine: Arc<Engine<S>>,
    cluster: RwLock<Arc<ClusterView>>,
    /// Serializes changes of the cluster state (read, change, persist, publish).
    cluster_change: Mutex<()>,
    pub(crate) cancel: CancellationToken,
    pub(crate) handoff_wake: mpsc::Sender<MemberId>,
    pub(crate) ae_wake: mpsc::Sender<super::antientropy::Wake>,
    /// When (on [`now`](Self::now)'s clock) each partition was last compared with every
    /// other live primary.
    ae_last: Mutex<HashMap<u32, Duration>>,
    /// Peers whose last RPC failed (see [`call`](Self::call)).
    failed_peers: Mutex<std::collections::HashSet<MemberId>>,
    /// Targets a handoff session is delivering hints to right now.
    handoff_active: Mutex<std::collections::HashSet<MemberId>>,
    /// `(target, partition, key)` a coordinator's `Replicate` is carrying right now, with how
    /// many: handoff leaves their hints alone meanwhile (the target's confirmation deletes
    /// them), so an update is not sent twice after a short partition.
    replicating: Mutex<HashMap<TargetKey, usize>>,
    /// Per peer, the coordinators' writes waiting to be replicated to it.
    pub(crate) lanes: super::replicate::Lanes,
    /// Anti-entropy claims: partition → the peer it is being repaired with, until when (on
    /// [`now`](Self::now)'s clock). See [`ae_claim`](Self::ae_claim).
    ae_claims: Mutex<HashMap<u32, AeClaim>>,
    /// When this node last stored hints delivered to it.
    hints_received: Mutex<Option<Duration>>,
    /// Per peer this node holds hints for: since when anti-entropy has waited for their
    /// delivery, and when it last asked (on [`now`](Self::now)'s clock). See
    /// [`handoff_pending`](Self::handoff_pending).
    hint_holds: Mutex<HashMap<String, (Duration, Duration)>>,
    /// Whether anti-entropy rounds are paused (an operator's switch, for measurements).
    pub(crate) ae_paused: std::sync::atomic::AtomicBool,
    pub(crate) swim_commands: mpsc::Sender<Command>,
    pub(crate) dedup: Dedup,
    /// This node's SWIM incarnation, as the SWIM task last saw it.
    pub(crate) incarnation: AtomicU64,
    pub(crate) metrics: Metrics,
    peers: RwLock<HashMap<MemberId, Peer>>,
    live: RwLock<HashMap<MemberId, MemberView>>,
    budgets: Mutex<HashMap<MemberId, Budgets>>,
    next_id: AtomicU64,
    id_prefix: u64,
    in_flight: Arc<AtomicUsize>,
    /// When a coordinator last started, in milliseconds of [`now`](Self::now) plus one (0:
    /// never).
    last_coordinated_ms: AtomicU64,
    epoch: tokio::time::Instant,
}

/// How long after it last started coordinating a client request a node counts as serving
/// clients ([`Shared::serving_clients`]).
pub(crate) const SERVING_LINGER: Duration = Duration::from_secs(1);

impl<T: Transport, S: Store> Shared<T, S> {
    pub(crate) fn new(
        config: NodeConfig,
        transport: T,
        engine: Arc<Engine<S>>,
        cluster: ClusterView,
        handoff_wake: mpsc::Sender<MemberId>,
        ae_wake: mpsc::Sender<super::antientropy::Wake>,
        swim_commands: mpsc::Sender<Command>,
    ) -> Self {
        let local_str = transport.local().id.as_str().to_owned();
        let mut peers: HashMap<MemberId, Peer> = HashMap::new();
        for (id, addr) in cluster.state.addrs() {
            if let Ok(node) = crate::identity::NodeId::new(id.as_str()) {
                peers.insert(id.clone(), Peer { id: node, addr });
            }
        }
        for p in &config.members {
            if let Ok(id) = MemberId::new(p.id.as_str()) {
                peers.insert(id, p.clone());
            }
        }
        Self {
            local: MemberId::new(local_str.clone()).expect("transport ids are valid member ids"),
            id_prefix: id_prefix(&local_str),
            config,
            transport,
            engine,
            cluster: RwLock::new(Arc::new(cluster)),
            cluster_change: Mutex::new(()),
            cancel: CancellationToken::new(),
            handoff_wake,
            ae_wake,
            ae_last: Mutex::new(HashMap::new()),
            ae_paused: std::sync::atomic::AtomicBool::new(false),
            handoff_active: Mutex::new(std::collections::HashSet::new()),
            failed_peers: Mutex::new(std::collections::HashSet::new()),
            replicating: Mutex::new(HashMap::new()),
            lanes: Default::default(),
            ae_claims: Mutex::new(HashMap::new()),
            hints_received: Mutex::new(None),
            hint_holds: Mutex::new(HashMap::new()),
            swim_commands,
            dedup: Dedup::new(),
            incarnation: AtomicU64::new(0),
            metrics: Metrics::default(),
            peers: RwLock::new(peers),
            live: RwLock::new(HashMap::new()),
            budgets: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            in_flight: Arc::new(AtomicUsize::new(0)),
            last_coordinated_ms: AtomicU64::new(0),
            epoch: tokio::time::Instant::now(),
        }
    }

    /// The driver's clock for the state machines: time since the node started.
    pub(crate) fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    /// The instant `at` on [`now`](Self::now)'s scale.
    pub(crate) fn instant(&self, at: Duration) -> tokio::time::Instant {
        self.epoch + at
    }

    pub(crate) fn next_request_id(&self) -> RequestId {
        RequestId(self.id_prefix | (self.next_id.fetch_add(1, Ordering::Relaxed) & 0xffff_ffff))
    }

    /// Runs `task` until it ends or the node stops.
    pub(crate) fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let cancel = self.cancel.clone();
        tokio::spawn(async move {
            tokio::select! {
            biased;
                () = cancel.cancelled() => {}
                () = task => {}
            }
        });
    }

    /// Counts a coordinator as running until the guard is dropped.
    pub(crate) fn coordinating(&self) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.last_coordinated_ms
            .store(self.now().as_millis() as u64 + 1, Ordering::Relaxed);
        InFlight(self.in_flight.clone())
    }

    /// Whether this node serves clients: a coordinator is running, or one started within
    /// [`SERVING_LINGER`]. Anti-entropy runs at a small share of its budget then. Between the
    /// requests of a steady client load no coordinator may be running at a given instant, so
    /// the running count alone would let repairs through at full speed in those gaps.
    pub(crate) fn serving_clients(&self) -> bool {
        if self.in_flight() > 0 {
            return true;
        }
        let last = self.last_coordinated_ms.load(Ordering::Relaxed);
        last != 0 && recent(last - 1, self.now().as_millis() as u64)
    }

    /// Coordinators still running (answered or not).
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// SWIM's view: this node, and any member not known dead or departed, is live.
    pub(crate) fn is_live(&self, id: &MemberId) -> bool {
        *id == self.local
            || !matches!(
                read(&self.live).get(id).map(|m| m.state),
                Some(MemberState::Dead | MemberState::Left)
            )
    }

    pub(crate) fn members_known(&self) -> usize {
        read(&self.live).len()
    }

    pub(crate) fn set_member(&self, id: MemberId, view: MemberView) {
        write(&self.live).insert(id, view);
    }

    /// Every member SWIM told this node about (not this node).
    pub(crate) fn member_views(&self) -> Vec<(MemberId, MemberView)> {
        let mut out: Vec<_> = read(&self.live)
            .iter()
            .map(|(id, m)| (id.clone(), m.clone()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Sets the gauges read at scrape time.
    pub(crate) fn refresh_gauges(&self) {
        use super::metrics::{PeerClassLabels, StateLabels, TargetLabels};
        let m = &self.metrics;
        let mut counts = [("alive", 1i64), ("suspect", 0), ("dead", 0), ("left", 0)];
        for view in read(&self.live).values() {
            let i = match view.state {
                MemberState::Alive => 0,
                MemberState::Suspect => 1,
                MemberState::Dead => 2,
                MemberState::Left => 3,
            };
            counts[i].1 += 1;
        }
        for (state, n) in counts {
            m.members.get_or_create(&StateLabels { state }).set(n);
        }
        // Targets whose backlog emptied stay listed with 0.
        let backlog = self.engine.hint_backlog();
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        for view in read(&self.live).keys() {
            let target = TargetLabels {
                target: view.as_str().to_owned(),
            };
            m.hint_keys.get_or_create(&target).set(0);
            m.hint_oldest.get_or_create(&target).set(0.0);
        }
        for (target, b) in backlog {
            let target = TargetLabels { target };
            m.hint_keys.get_or_create(&target).set(b.keys as i64);
            let age = b.oldest_ms.map_or(0, |ms| now_ms.saturating_sub(ms));
            m.hint_oldest
                .get_or_create(&target)
                .set(age as f64 / 1000.0);
        }
        for (peer, budgets) in self
            .budgets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            for (class, budget, slots) in [
                (
                    "foreground",
                    &budgets.foreground,
                    self.config.peer_concurrency,
                ),
                (
                    "background",
                    &budgets.background,
                    self.config.background_concurrency,
                ),
            ] {
                let busy = slots.max(1) - budget.slots.available_permits().min(slots.max(1));
                let depth = busy + budget.waiting.load(Ordering::SeqCst);
                m.queue_depth
                    .get_or_create(&PeerClassLabels {
                        peer: peer.as_str().to_owned(),
                        class,
                    })
                    .set(depth as i64);
            }
        }
        if let Ok(stats) = blocking(|| self.engine.stats()) {
            m.store_keys.set(stats.keys as i64);
            m.store_bytes.set(stats.bytes as i64);
        }
        m.in_flight.set(self.in_flight() as i64);
        let coverage = self.ae_coverage();
        for (partition, age) in &coverage.ages {
            if let Some(age) = age {
                m.ae_compare_age
                    .get_or_create(&super::metrics::PartitionLabels {
                        partition: *partition,
                    })
                    .set(age.as_secs_f64());
            }
        }
        m.ae_never_compared.set(coverage.never_compared as i64);
        m.ae_oldest_compare
            .set(coverage.oldest.map_or(0.0, |d| d.as_secs_f64()));
    }

    /// How well anti-entropy covers the partitions this node is a primary of.
    pub(crate) fn ae_coverage(&self) -> super::AeCoverage {
        let view = self.view();
        let ages = self.ae_ages();
        let mine: Vec<u32> = (0..view.ring.partitioner().partitions())
            .filter(|&p| {
                view.ring
                    .primaries(shoal_membership::PartitionId(p))
                    .contains(&self.local)
            })
            .collect();
        super::AeCoverage {
            partitions: mine.len() as u32,
            never_compared: mine.iter().filter(|p| !ages.contains_key(p)).count() as u32,
            oldest: mine.iter().filter_map(|p| ages.get(p)).max().copied(),
            ages: mine.iter().map(|p| (*p, ages.get(p).copied())).collect(),
        }
    }

    /// Marks a handoff session to `target` as running or ended.
    pub(crate) fn set_handoff_active(&self, target: &MemberId, active: bool) {
        let mut set = self
            .handoff_active
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if active {
            set.insert(target.clone());
        } else {
            set.remove(target);
        }
    }

    /// Marks `(target, partition, key)` as carried by a `Replicate` (`started`), or one such
    /// `Replicate` as answered.
    pub(crate) fn set_replicating(
        &self,
        target: &MemberId,
        partition: u32,
        key: &[u8],
        started: bool,
    ) {
        let mut map = self.replicating.lock().unwrap_or_else(|e| e.into_inner());
        let entry = (target.clone(), partition, key.to_vec());
        if started {
            *map.entry(entry).or_insert(0) += 1;
        } else if let Some(n) = map.get_mut(&entry) {
            *n -= 1;
            if *n == 0 {
                map.remove(&entry);
            }
        }
    }

    /// Whether a coordinator's `Replicate` of `(partition, key)` to `target` is in flight.
    pub(crate) fn is_replicating(&self, target: &MemberId, partition: u32, key: &[u8]) -> bool {
        self.replicating
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&(target.clone(), partition, key.to_vec()))
    }

    /// Claims `partition` for an anti-entropy exchange with `peer` for the next [`AE_CLAIM`]:
    /// an exchange this node started (`started_by_peer` false) or one `peer` started and this
    /// node serves (true). False while another exchange holds it. Every step of an exchange
    /// renews its claim, so a replica is repaired for one partition by one peer at a time and
    /// receives each missing key once, however many peers have it. When two replicas start
    /// exchanges of a partition with each other at once, the one started by the smaller node
    /// id goes on and the other stops at its next step: each would send the same keys.
    ///
    /// `moving` says that this step moves records (a transfer or repair, as opposed to a hash
    /// or key-list comparison); from then on the claim is not overtaken (see
    /// [`AeClaim::blocks`]).
    pub(crate) fn ae_claim(
        &self,
        partition: u32,
        peer: &str,
        started_by_peer: bool,
        moving: bool,
    ) -> bool {
        let now = self.now();
        let mut claims = self.ae_claims.lock().unwrap_or_else(|e| e.into_inner());
        match claims.get(&partition) {
            Some(held) if held.blocks(self.local.as_str(), peer, started_by_peer, now) => false,
            held => {
                let moving = moving
                    || held.is_some_and(|h| {
                        h.until > now
                            && h.peer == peer
                            && h.started_by_peer == started_by_peer
                            && h.moving
                    });
                // Ended claims are dropped now and then, so the map stays at most the live ones
                // plus the ring's partitions.
                if claims.len() >= 4096 {
                    claims.retain(|_, held| held.until > now);
                }
                claims.insert(
                    partition,
                    AeClaim {
                        peer: peer.to_owned(),
                        started_by_peer,
                        moving,
                        until: now + AE_CLAIM,
                    },
                );
                true
            }
        }
    }

    /// Ends the claim of `partition` by the exchange this node started with `peer` (it is
    /// over).
    pub(crate) fn ae_release(&self, partition: u32, peer: &str) {
        let mut claims = self.ae_claims.lock().unwrap_or_else(|e| e.into_inner());
        if claims
            .get(&partition)
            .is_some_and(|held| held.peer == peer && !held.started_by_peer)
        {
            claims.remove(&partition);
        }
    }

    /// Notes that hints delivered to this node were just stored.
    pub(crate) fn hints_received(&self) {
        *self
            .hints_received
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(self.now());
    }

    /// Whether some node is handing hints off to this one (a delivery arrived within
    /// [`HINTS_RECENT`]).
    pub(crate) fn receiving_hints(&self) -> bool {
        let last = *self
            .hints_received
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        last.is_some_and(|t| self.now().saturating_sub(t) < HINTS_RECENT)
    }

    /// Whether anti-entropy between this node and `peer` should wait (either side asks this):
    /// hinted handoff or a coordinator's replication is about to repair one of them, and
    /// anti-entropy would send the same keys a second time. That is while
    /// - a handoff session to `peer` runs, or this node stored delivered hints within
    ///   [`HINTS_RECENT`];
    /// - a `Replicate` to `peer` is in flight;
    /// - this node holds hints for `peer` (handoff is woken for them), for at most
    ///   [`HINT_HOLD`] per backlog.
    pub(crate) fn handoff_pending(&self, peer: &str) -> bool {
        if self.handoff_active(peer) || self.receiving_hints() {
            return true;
        }
        if self
            .replicating
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .any(|(t, _, _)| t.as_str() == peer)
        {
            return true;
        }
        let holds_hints = self.engine.holds_hints(peer);
        let mut holds = self.hint_holds.lock().unwrap_or_else(|e| e.into_inner());
        if !holds_hints {
            holds.remove(peer);
            return false;
        }
        let now = self.now();
        let (since, asked) = holds.entry(peer.to_owned()).or_insert((now, now));
        // A wait is one stretch of rounds: a backlog last asked about long ago (the peer was
        // down meanwhile) starts a new one.
        if now.saturating_sub(*asked) > HINT_HOLD / 3 {
            *since = now;
        }
        *asked = now;
        if now.saturating_sub(*since) >= HINT_HOLD {
            return false;
        }
        if let Ok(id) = MemberId::new(peer) {
            let _ = self.handoff_wake.try_send(id);
        }
        true
    }

    /// Whether a handoff session is delivering hints to `target` right now.
    pub(crate) fn handoff_active(&self, target: &str) -> bool {
        self.handoff_active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|t| t.as_str() == target)
    }

    /// Records that `partition` was just compared with every other live primary.
    pub(crate) fn ae_compared(&self, partition: u32) {
        let now = self.now();
        self.ae_last
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(partition, now);
    }

    /// Per partition, the time since it was last fully compared.
    pub(crate) fn ae_ages(&self) -> HashMap<u32, Duration> {
        let now = self.now();
        self.ae_last
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(p, at)| (*p, now.saturating_sub(*at)))
            .collect()
    }

    /// The current cluster state and ring.
    pub(crate) fn view(&self) -> Arc<ClusterView> {
        read(&self.cluster).clone()
    }

    /// Changes the cluster state with `change` (which says whether it changed anything) and,
    /// if it did, persists the new state, rebuilds the ring and publishes both; SWIM then
    /// announces the new version. This node's own address is kept current in the state.
    /// Returns the new version, or `None` if nothing changed. An error of `change` or of the
    /// store changes nothing.
    pub(crate) fn change_cluster<E: From<String>>(
        &self,
        change: impl FnOnce(&mut ClusterState) -> Result<bool, E>,
    ) -> Result<Option<u64>, E> {
        let _serial = self
            .cluster_change
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let current = self.view();
        let mut state = current.state.clone();
        let changed = change(&mut state)?;
        let local = self.transport.local();
        let own_addr = state.set_addr(&self.local, local.addr);
        if !changed && !own_addr {
            return Ok(None);
        }
        let view = ClusterView::build(state, &self.config.ring).map_err(E::from)?;
        blocking(|| crate::cluster::save(&self.engine, &view.state))
            .map_err(|e| E::from(format!("cluster state not persisted: {e}")))?;
        for (id, addr) in view.state.addrs() {
            if *id != self.local
                && let Ok(node) = crate::identity::NodeId::new(id.as_str())
            {
                let mut peers = write(&self.peers);
                // SWIM's address is fresher than gossip's for a live member.
                peers.entry(id.clone()).or_insert(Peer { id: node, addr });
            }
        }
        let version = view.version;
        tracing::info!(
            ring_version = format_args!("{version:016x}"),
            members = view.state.ring().joined().count(),
            "cluster state changed"
        );
        *write(&self.cluster) = Arc::new(view);
        // A full queue is fine: the SWIM task also compares versions on every sync tick.
        let _ = self.swim_commands.try_send(Command::ClusterChanged);
        Ok(Some(version))
    }

    pub(crate) fn peer(&self, id: &MemberId) -> Option<Peer> {
        read(&self.peers).get(id).cloned()
    }

    pub(crate) fn peer_by_addr(&self, addr: std::net::SocketAddr) -> Option<Peer> {
        read(&self.peers).values().find(|p| p.addr == addr).cloned()
    }

    pub(crate) fn learn_peer(&self, id: MemberId, peer: Peer) {
        write(&self.peers).insert(id, peer);
    }

    /// Sends `request` to `to` within `timeout` (waiting for a slot included), inside `to`'s
    /// budget of `class`. When every slot is taken and the peer's queue is full, fails at
    /// once with nothing sent.
    pub(crate) async fn call(
        &self,
        to: &MemberId,
        request: &PeerRequest,
        timeout: Duration,
        class: Class,
    ) -> Result<PeerResponse, CallError> {
        let result = self.call_counted(to, request, timeout, class).await;
        let mut failed = self.failed_peers.lock().unwrap_or_else(|e| e.into_inner());
        match &result {
            Err((kind, _)) => {
                self.metrics.rpc_error(to.as_str(), kind);
                failed.insert(to.clone());
            }
            // A peer that answers again after failing may be owed hints even though SWIM
            // never declared it dead (a short partition): start handoff now rather than at
            // the next periodic pass.
            Ok(_) if failed.remove(to) => {
                let _ = self.handoff_wake.try_send(to.clone());
            }
            Ok(_) => {}
        }
        drop(failed);
        result.map_err(|(_, e)| e)
    }

    /// [`call`](Self::call), with the kind of a failure for the metrics.
    async fn call_counted(
        &self,
        to: &MemberId,
        request: &PeerRequest,
        timeout: Duration,
        class: Class,
    ) -> Result<PeerResponse, (&'static str, CallError)> {
        let peer = self.peer(to).ok_or_else(|| {
            (
                "unreachable",
                CallError::definite(format!("no address for {to}")),
            )
        })?;
        let budget = {
            let mut budgets = self.budgets.lock().unwrap_or_else(|e| e.into_inner());
            let budgets = budgets.entry(to.clone()).or_insert_with(|| Budgets {
                foreground: Budget::new(self.config.peer_concurrency),
                background: Budget::new(self.config.background_concurrency),
            });
            match class {
                Class::Foreground => budgets.foreground.clone(),
                Class::Background => budgets.background.clone(),
            }
        };
        let started = tokio::time::Instant::now();
        let _permit = budget
            .acquire(self.config.peer_queue, timeout)
            .await
            .ok_or_else(|| {
                (
                    "busy",
                    CallError::definite(format!("{to} busy: {class:?} queue full")),
                )
            })?;
        let timeout = timeout.saturating_sub(started.elapsed());
        let body = message::encode_request(request)
            .map_err(|e| ("other", CallError::definite(format!("encode: {e}"))))?;
        self.metrics.peer_bytes_sent(request.kind(), body.len());
        let response = self
            .transport
            .rpc(&peer, Bytes::from(body), timeout)
            .await
            .map_err(|e| {
                let kind = match &e {
                    TransportError::Unreachable { .. } | TransportError::Closed => "unreachable",
                    TransportError::Timeout(_) => "timeout",
                    TransportError::ConnectionLost(_) => "connection_lost",
                    TransportError::Rejected(_) => "rejected",
                    TransportError::BadResponse(_) => "bad_response",
                    _ => "other",
                };
                (kind, CallError::from(e))
            })?;
        self.metrics
            .peer_bytes_received(request.kind(), response.len());
        message::decode_response(&response).map_err(|e| {
            (
                "bad_response",
                CallError {
                    message: format!("bad response: {e}"),
                    may_have_taken_effect: true,
                },
            )
        })
    }
}

/// The high 32 bits of this run's request ids: the node id and the wall-clock start time
/// (only for uniqueness across restarts, never for ordering), so a restarted node's ids do
/// not collide with its earlier ones in peers' deduplication.
fn id_prefix(local: &str) -> u64 {
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mixed = Actor::node_hash(local) ^ started.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    mixed & !0xffff_ffff
}

/// Runs a store call without stalling the runtime: RocksDB writes fsync, so on a
/// multi-threaded runtime (the `shoal` binary) the call runs through
/// [`block_in_place`](tokio::task::block_in_place), which moves this worker's other tasks to
/// another thread while it blocks. On a current-thread runtime (simulations, in-memory store)
/// `block_in_place` is not allowed and the call runs inline, which costs nothing there.
///
/// Used around every engine call of the runtime; the calls stay synchronous and borrow their
/// arguments, so no copies are made for a blocking pool.
pub(crate) fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

fn read<V>(lock: &RwLock<V>) -> std::sync::RwLockReadGuard<'_, V> {
    // Plain maps stay consistent even if a holder panicked.
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write<V>(lock: &RwLock<V>) -> std::sync::RwLockWriteGuard<'_, V> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

/// Whether a coordinator that started at `started_ms` is within [`SERVING_LINGER`] of `now_ms`.
fn recent(started_ms: u64, now_ms: u64) -> bool {
    now_ms.saturating_sub(started_ms) < SERVING_LINGER.as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_serves_clients_for_a_second_after_it_last_coordinated() {
        let linger = SERVING_LINGER.as_millis() as u64;
        assert!(recent(5_000, 5_000));
        assert!(recent(5_000, 5_000 + linger - 1));
        assert!(!recent(5_000, 5_000 + linger));
        assert!(!recent(5_000, 60_000));
        // A start stamped after the clock was read (another thread) is recent, not an error.
        assert!(recent(5_001, 5_000));
    }

    fn claim(peer: &str, started_by_peer: bool) -> AeClaim {
        AeClaim {
            peer: peer.into(),
            started_by_peer,
            moving: false,
            until: Duration::from_secs(10),
        }
    }

    #[test]
    fn a_claim_keeps_out_other_peers_until_it_ends() {
        let held = claim("n1", true);
        assert!(held.blocks("n3", "n2", true, Duration::from_secs(1)));
        assert!(held.blocks("n3", "n2", false, Duration::from_secs(1)));
        assert!(
            !held.blocks("n3", "n2", true, Duration::from_secs(10)),
            "ended"
        );
        assert!(
            !held.blocks("n3", "n1", true, Duration::ZERO),
            "its own next step"
        );
    }

    #[test]
    fn of_two_exchanges_between_the_same_replicas_the_smaller_starter_goes_on() {
        let now = Duration::ZERO;
        // On n3: n3 started an exchange with n1, then n1's exchange of the same partition
        // arrives. n1 is smaller: it takes over, and n3's own next step is kept out.
        assert!(!claim("n1", false).blocks("n3", "n1", true, now));
        assert!(claim("n1", true).blocks("n3", "n1", false, now));
        // On n1: n1 started, n3's exchange arrives and is kept out; n1's own steps go on.
        assert!(claim("n3", false).blocks("n1", "n3", true, now));
        assert!(!claim("n3", false).blocks("n1", "n3", false, now));
    }

    #[test]
    fn an_exchange_moving_records_is_not_overtaken() {
        let now = Duration::ZERO;
        let moving = |peer: &str, started_by_peer: bool| AeClaim {
            moving: true,
            ..claim(peer, started_by_peer)
        };
        // On n3: n3 fetches records from n1 when n1's exchange arrives: n1 is kept out,
        // smaller id or not, and n3's own steps go on.
        assert!(moving("n1", false).blocks("n3", "n1", true, now));
        assert!(!moving("n1", false).blocks("n3", "n1", false, now));
        // On n1: n3's transfer is being served when n1 starts its own exchange.
        assert!(moving("n3", true).blocks("n1", "n3", false, now));
        // Until it ends.
        assert!(!moving("n3", true).blocks("n1", "n3", false, Duration::from_secs(10)));
    }
}
