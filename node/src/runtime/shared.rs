//! What the node's tasks share: transport, store, ring, liveness view, per-peer budgets.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use shoal_membership::{MemberState, NodeId as MemberId, Ring};
use shoal_storage::{Actor, Engine, Store};
use tokio::sync::{OnceCell, OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use super::NodeConfig;
use super::metrics::Metrics;
use super::swim::Command;
use crate::request::RequestId;
use crate::request::message::{self, PeerRequest, PeerResponse};
use crate::transport::{Peer, Transport, TransportError};

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
    fn definite(message: impl Into<String>) -> Self {
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

pub(crate) struct Shared<T: Transport, S: Store> {
    pub(crate) config: NodeConfig,
    pub(crate) local: MemberId,
    pub(crate) transport: T,
    pub(crate) engine: Arc<Engine<S>>,
    pub(crate) ring: Ring,
    pub(crate) cancel: CancellationToken,
    pub(crate) handoff_wake: mpsc::Sender<MemberId>,
    pub(crate) swim_commands: mpsc::Sender<Command>,
    pub(crate) dedup: Dedup,
    pub(crate) metrics: Metrics,
    peers: RwLock<HashMap<MemberId, Peer>>,
    live: RwLock<HashMap<MemberId, MemberState>>,
    budgets: Mutex<HashMap<MemberId, Budgets>>,
    next_id: AtomicU64,
    id_prefix: u64,
    in_flight: Arc<AtomicUsize>,
    epoch: tokio::time::Instant,
}

impl<T: Transport, S: Store> Shared<T, S> {
    pub(crate) fn new(
        config: NodeConfig,
        transport: T,
        engine: Arc<Engine<S>>,
        ring: Ring,
        handoff_wake: mpsc::Sender<MemberId>,
        swim_commands: mpsc::Sender<Command>,
    ) -> Self {
        let local_str = transport.local().id.as_str().to_owned();
        let peers = config
            .members
            .iter()
            .filter_map(|p| Some((MemberId::new(p.id.as_str()).ok()?, p.clone())))
            .collect();
        Self {
            local: MemberId::new(local_str.clone()).expect("transport ids are valid member ids"),
            id_prefix: id_prefix(&local_str),
            config,
            transport,
            engine,
            ring,
            cancel: CancellationToken::new(),
            handoff_wake,
            swim_commands,
            dedup: Dedup::new(),
            metrics: Metrics::default(),
            peers: RwLock::new(peers),
            live: RwLock::new(HashMap::new()),
            budgets: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            in_flight: Arc::new(AtomicUsize::new(0)),
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
        InFlight(self.in_flight.clone())
    }

    /// Coordinators still running (answered or not).
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// SWIM's view: this node, and any member not known dead or departed, is live.
    pub(crate) fn is_live(&self, id: &MemberId) -> bool {
        *id == self.local
            || !matches!(
                read(&self.live).get(id),
                Some(MemberState::Dead | MemberState::Left)
            )
    }

    pub(crate) fn members_known(&self) -> usize {
        read(&self.live).len()
    }

    pub(crate) fn set_state(&self, id: MemberId, state: MemberState) {
        write(&self.live).insert(id, state);
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
        let peer = self
            .peer(to)
            .ok_or_else(|| CallError::definite(format!("no address for {to}")))?;
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
            .ok_or_else(|| CallError::definite(format!("{to} busy: {class:?} queue full")))?;
        let timeout = timeout.saturating_sub(started.elapsed());
        let body = message::encode_request(request)
            .map_err(|e| CallError::definite(format!("encode: {e}")))?;
        let response = self
            .transport
            .rpc(&peer, Bytes::from(body), timeout)
            .await?;
        message::decode_response(&response).map_err(|e| CallError {
            message: format!("bad response: {e}"),
            may_have_taken_effect: true,
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
