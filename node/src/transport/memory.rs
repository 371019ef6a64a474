//! An in-process network for seeded simulation: every node's [`MemoryTransport`] routes through
//! one [`MemoryNetwork`], which injects faults (drop, delay, duplicate, reorder), cuts links
//! and partitions sets of nodes.
//!
//! Determinism: every random decision comes from one ChaCha RNG seeded at construction and is
//! drawn in the order messages are sent. Delays are tokio timers, so under a paused tokio clock
//! (`#[tokio::test(start_paused = true)]`) a run is virtual-time and replays from its seed as
//! long as the test itself is deterministic (a current-thread runtime).
//!
//! Fault model (what each fault means for the two services):
//!
//! | fault | datagram | RPC |
//! |---|---|---|
//! | drop | lost | request or response lost: the caller times out (unknown outcome) |
//! | delay | delivered after a uniform delay in `[delay_min, delay_max]` | each leg delayed |
//! | duplicate | delivered twice | the handler sees the request twice; one answer is used |
//! | reorder | held back an extra `reorder_delay` so later ones overtake it | same, per leg |
//! | cut link / partition | lost | as drop; a dial ([`Transport::discover`]) fails |
//! | node removed (crash) | lost | `Unreachable` if it was gone at send time |
//!
//! A request whose [`IncomingRpc`](super::IncomingRpc) is dropped unanswered (a handler that
//! gave up, or a crashed node whose inbox was dropped) fails with
//! [`TransportError::ConnectionLost`]: the handler may have acted on it.
//!
//! A node removed with [`MemoryNetwork::remove_node`] and added again (a restart) gets a new
//! inbox; the old handle's sends fail with [`TransportError::Closed`].

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{
    Datagram, Inbox, InboxSender, Peer, Transport, TransportError, UNANSWERED, check_datagram,
    check_request,
};
use crate::identity::NodeId;

/// Fault injection settings of a [`MemoryNetwork`]; probabilities are in `[0, 1]`. The default
/// is a perfect network.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultConfig {
    /// Probability that a message (datagram, request or response) is lost.
    pub drop: f64,
    /// Probability that a message is delivered twice.
    pub duplicate: f64,
    /// Probability that a message is held back by `reorder_delay`, letting later ones pass.
    pub reorder: f64,
    /// Shortest delivery delay.
    pub delay_min: Duration,
    /// Longest delivery delay (uniform between min and max).
    pub delay_max: Duration,
    /// Extra delay of a reordered message.
    pub reorder_delay: Duration,
}

impl Default for FaultConfig {
    fn default() -> Self {
        Self {
            drop: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            delay_min: Duration::ZERO,
            delay_max: Duration::ZERO,
            reorder_delay: Duration::from_millis(10),
        }
    }
}

/// The fate of one message, drawn from the RNG.
#[derive(Debug)]
enum Route {
    Lost,
    Deliver { delays: Vec<Duration> },
}

struct Node {
    addr: SocketAddr,
    generation: u64,
    inbox: InboxSender,
}

struct State {
    rng: ChaCha8Rng,
    faults: FaultConfig,
    nodes: HashMap<NodeId, Node>,
    addrs: HashMap<SocketAddr, NodeId>,
    /// Directed links that deliver nothing: (from, to).
    cut: HashSet<(NodeId, NodeId)>,
    next_generation: u64,
}

impl State {
    fn draw(&mut self, from: &NodeId, to: &NodeId) -> Route {
        if self.cut.contains(&(from.clone(), to.clone())) {
            return Route::Lost;
        }
        let f = self.faults.clone();
        if f.drop > 0.0 && self.rng.random_bool(f.drop.min(1.0)) {
            return Route::Lost;
        }
        let copies = if f.duplicate > 0.0 && self.rng.random_bool(f.duplicate.min(1.0)) {
            2
        } else {
            1
        };
        let delays = (0..copies)
            .map(|_| {
                let mut delay = if f.delay_max > f.delay_min {
                    self.rng.random_range(f.delay_min..=f.delay_max)
                } else {
                    f.delay_min
                };
                if f.reorder > 0.0 && self.rng.random_bool(f.reorder.min(1.0)) {
                    delay += f.reorder_delay;
                }
                delay
            })
            .collect();
        Route::Deliver { delays }
    }
}

/// The shared in-memory network. Cheap to clone; all clones are the same network.
#[derive(Clone)]
pub struct MemoryNetwork {
    state: Arc<Mutex<State>>,
    inbox_capacity: usize,
}

impl std::fmt::Debug for MemoryNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryNetwork").finish_non_exhaustive()
    }
}

impl MemoryNetwork {
    /// A perfect network whose faults, once configured, are drawn from `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                rng: ChaCha8Rng::seed_from_u64(seed),
                faults: FaultConfig::default(),
                nodes: HashMap::new(),
                addrs: HashMap::new(),
                cut: HashSet::new(),
                next_generation: 0,
            })),
            inbox_capacity: 1024,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data that is still consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Attaches node `peer` (id and a unique address) and returns its transport and inbox.
    /// Adding an id again replaces the old node, like a restart.
    pub fn add_node(&self, peer: Peer) -> (MemoryTransport, Inbox) {
        let (sender, inbox) = InboxSender::new(self.inbox_capacity);
        let mut state = self.lock();
        if let Some(old) = state.nodes.remove(&peer.id) {
            state.addrs.remove(&old.addr);
        }
        let generation = state.next_generation;
        state.next_generation += 1;
        state.addrs.insert(peer.addr, peer.id.clone());
        state.nodes.insert(
            peer.id.clone(),
            Node {
                addr: peer.addr,
                generation,
                inbox: sender,
            },
        );
        drop(state);
        let transport = MemoryTransport {
            network: self.clone(),
            local: peer,
            generation,
        };
        (transport, inbox)
    }

    /// Detaches a node (a crash): messages to it are lost and its transport is closed.
    pub fn remove_node(&self, id: &NodeId) {
        let mut state = self.lock();
        if let Some(node) = state.nodes.remove(id) {
            state.addrs.remove(&node.addr);
        }
    }

    /// Replaces the fault settings.
    pub fn set_faults(&self, faults: FaultConfig) {
        self.lock().faults = faults;
    }

    /// Cuts the directed link `from → to`.
    pub fn cut_link(&self, from: &NodeId, to: &NodeId) {
        self.lock().cut.insert((from.clone(), to.clone()));
    }

    /// Restores the directed link `from → to`.
    pub fn restore_link(&self, from: &NodeId, to: &NodeId) {
        self.lock().cut.remove(&(from.clone(), to.clone()));
    }

    /// Cuts every link between a node of `a` and a node of `b`, both ways.
    pub fn partition(&self, a: &[NodeId], b: &[NodeId]) {
        let mut state = self.lock();
        for x in a {
            for y in b {
                state.cut.insert((x.clone(), y.clone()));
                state.cut.insert((y.clone(), x.clone()));
            }
        }
    }

    /// Restores every cut link (faults stay as configured).
    pub fn heal(&self) {
        self.lock().cut.clear();
    }

    /// Checks the sender is attached and resolves `to`; `Err` if the message cannot be sent.
    fn resolve(
        &self,
        from: &Peer,
        generation: u64,
        to: &Peer,
    ) -> Result<(InboxSender, Route), TransportError> {
        let mut state = self.lock();
        match state.nodes.get(&from.id) {
            Some(node) if node.generation == generation => {}
            _ => return Err(TransportError::Closed),
        }
        let unreachable = |reason: &str| TransportError::Unreachable {
            peer: to.id.to_string(),
            reason: reason.to_owned(),
        };
        let inbox = match state.nodes.get(&to.id) {
            Some(node) if node.addr == to.addr => node.inbox.clone(),
            Some(_) => return Err(unreachable("a different node listens at that address")),
            None => return Err(unreachable("no such node")),
        };
        let route = state.draw(&from.id, &to.id);
        Ok((inbox, route))
    }

    fn draw(&self, from: &NodeId, to: &NodeId) -> Route {
        self.lock().draw(from, to)
    }
}

/// One node's handle on a [`MemoryNetwork`].
#[derive(Clone)]
pub struct MemoryTransport {
    network: MemoryNetwork,
    local: Peer,
    generation: u64,
}

impl std::fmt::Debug for MemoryTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryTransport")
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

/// Runs `deliver` after `delay`, inline when there is none so order is kept.
fn after(delay: Duration, deliver: impl FnOnce() + Send + 'static) {
    if delay.is_zero() {
        deliver();
    } else {
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            deliver();
        });
    }
}

impl MemoryTransport {
    /// The network this transport is attached to.
    pub fn network(&self) -> &MemoryNetwork {
        &self.network
    }

    async fn rpc_inner(&self, to: &Peer, request: Bytes) -> Result<Bytes, TransportError> {
        let (inbox, route) = self.network.resolve(&self.local, self.generation, to)?;
        let Route::Deliver { delays } = route else {
            return std::future::pending().await;
        };
        let mut answers = Vec::new();
        for delay in delays {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let inbox = inbox.clone();
            let from = self.local.clone();
            let request = request.clone();
            after(delay, move || {
                let _ = tx.send(inbox.deliver_rpc(from, request));
            });
            answers.push(rx);
        }
        // The first copy's answer is the one the caller sees; a duplicate's is discarded.
        let first = answers.swap_remove(0);
        let Ok(answer) = first.await else {
            return std::future::pending().await;
        };
        // A handler that drops the request may have acted on it first: unknown outcome.
        let Ok(answer) = answer.await else {
            return Err(TransportError::ConnectionLost(UNANSWERED.into()));
        };
        match self.network.draw(&to.id, &self.local.id) {
            Route::Lost => std::future::pending().await,
            Route::Deliver { delays } => {
                tokio::time::sleep(delays[0]).await;
                answer.map_err(TransportError::Rejected)
            }
        }
    }
}

impl Transport for MemoryTransport {
    fn local(&self) -> &Peer {
        &self.local
    }

    fn send_datagram(&self, to: &Peer, payload: Bytes) -> Result<(), TransportError> {
        check_datagram(&payload)?;
        let (inbox, route) = match self.network.resolve(&self.local, self.generation, to) {
            Ok(resolved) => resolved,
            Err(TransportError::Unreachable { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        if let Route::Deliver { delays } = route {
            for delay in delays {
                let inbox = inbox.clone();
                let datagram = Datagram {
                    from: self.local.clone(),
                    payload: payload.clone(),
                };
                after(delay, move || {
                    inbox.deliver_datagram(datagram);
                });
            }
        }
        Ok(())
    }

    async fn rpc(
        &self,
        to: &Peer,
        request: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, TransportError> {
        check_request(&request)?;
        tokio::time::timeout(timeout, self.rpc_inner(to, request))
            .await
            .map_err(|_| TransportError::Timeout(timeout))?
    }

    async fn discover(
        &self,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<NodeId, TransportError> {
        let found = {
            let state = self.network.lock();
            match state.nodes.get(&self.local.id) {
                Some(node) if node.generation == self.generation => {}
                _ => return Err(TransportError::Closed),
            }
            state.addrs.get(&addr).cloned()
        };
        let unreachable = |reason: &str| TransportError::Unreachable {
            peer: addr.to_string(),
            reason: reason.to_owned(),
        };
        let id = found.ok_or_else(|| unreachable("nothing listens there"))?;
        // A handshake needs both directions.
        let there = self.network.draw(&self.local.id, &id);
        let back = self.network.draw(&id, &self.local.id);
        match (there, back) {
            (Route::Deliver { delays: a }, Route::Deliver { delays: b }) => {
                let rtt = a[0] + b[0];
                if rtt > timeout {
                    tokio::time::sleep(timeout).await;
                    return Err(TransportError::Timeout(timeout));
                }
                tokio::time::sleep(rtt).await;
                Ok(id)
            }
            _ => {
                tokio::time::sleep(timeout).await;
                Err(TransportError::Timeout(timeout))
            }
        }
    }

    async fn shutdown(&self) {
        let mut state = self.network.lock();
        let ours = matches!(
            state.nodes.get(&self.local.id),
            Some(node) if node.generation == self.generation
        );
        if ours {
            state.nodes.remove(&self.local.id);
            state.addrs.remove(&self.local.addr);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use tokio::time::Instant;

    use super::*;
    use crate::transport::conformance::{node_id, serve};

    fn peer(i: usize) -> Peer {
        Peer {
            id: node_id(i),
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 10_000 + i as u16)),
        }
    }

    fn network(seed: u64, n: usize) -> (MemoryNetwork, Vec<(MemoryTransport, Inbox)>) {
        let net = MemoryNetwork::new(seed);
        let nodes = (0..n).map(|i| net.add_node(peer(i))).collect();
        (net, nodes)
    }

    /// Drains every datagram that arrives within `window` of virtual time.
    async fn drain(inbox: &mut Inbox, window: Duration) -> Vec<Bytes> {
        let mut got = Vec::new();
        let _ = tokio::time::timeout(window, async {
            while let Some(d) = inbox.datagrams.recv().await {
                got.push(d.payload);
            }
        })
        .await;
        got
    }

    #[tokio::test(start_paused = true)]
    async fn dropped_messages_time_out_rpcs_and_lose_datagrams() {
        let (net, mut nodes) = network(1, 2);
        let (b, mut b_inbox) = nodes.pop().unwrap();
        let (a, _) = nodes.pop().unwrap();
        net.set_faults(FaultConfig {
            drop: 1.0,
            ..FaultConfig::default()
        });
        a.send_datagram(b.local(), Bytes::from("x")).unwrap();
        assert!(drain(&mut b_inbox, Duration::from_secs(1)).await.is_empty());
        let err = a
            .rpc(b.local(), Bytes::from("x"), Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(matches!(err, TransportError::Timeout(_)), "{err}");
        assert!(err.may_have_taken_effect());
    }

    #[tokio::test(start_paused = true)]
    async fn duplicates_arrive_twice() {
        let (net, mut nodes) = network(1, 2);
        let (b, mut b_inbox) = nodes.pop().unwrap();
        let (a, _) = nodes.pop().unwrap();
        net.set_faults(FaultConfig {
            duplicate: 1.0,
            ..FaultConfig::default()
        });
        a.send_datagram(b.local(), Bytes::from("x")).unwrap();
        assert_eq!(drain(&mut b_inbox, Duration::from_secs(1)).await.len(), 2);
        // An RPC is handled twice; the caller gets one answer.
        let handled = tokio::spawn(async move {
            let mut count = 0;
            while let Ok(Some(rpc)) =
                tokio::time::timeout(Duration::from_secs(1), b_inbox.rpcs.recv()).await
            {
                count += 1;
                rpc.respond(Bytes::from("ok"));
            }
            count
        });
        let answer = a
            .rpc(&peer(1), Bytes::from("x"), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(answer, "ok");
        assert_eq!(handled.await.unwrap(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn delay_applies_to_each_leg() {
        let (net, mut nodes) = network(1, 2);
        let (b, b_inbox) = nodes.pop().unwrap();
        let (a, _) = nodes.pop().unwrap();
        serve(b_inbox.rpcs);
        let delay = Duration::from_millis(100);
        net.set_faults(FaultConfig {
            delay_min: delay,
            delay_max: delay,
            ..FaultConfig::default()
        });
        let start = Instant::now();
        a.rpc(b.local(), Bytes::from("x"), Duration::from_secs(5))
            .await
            .unwrap();
        assert!(start.elapsed() >= 2 * delay, "{:?}", start.elapsed());
    }

    async fn reordered_arrivals(seed: u64) -> Vec<Bytes> {
        let (net, mut nodes) = network(seed, 2);
        let (b, mut b_inbox) = nodes.pop().unwrap();
        let (a, _) = nodes.pop().unwrap();
        net.set_faults(FaultConfig {
            reorder: 0.3,
            delay_min: Duration::from_millis(1),
            delay_max: Duration::from_millis(5),
            ..FaultConfig::default()
        });
        for i in 0..50u8 {
            a.send_datagram(b.local(), Bytes::from(vec![i])).unwrap();
        }
        drain(&mut b_inbox, Duration::from_secs(1)).await
    }

    #[tokio::test(start_paused = true)]
    async fn reordering_is_seeded_and_replays() {
        let first = reordered_arrivals(42).await;
        assert_eq!(first.len(), 50);
        let sent: Vec<Bytes> = (0..50u8).map(|i| Bytes::from(vec![i])).collect();
        assert_ne!(first, sent, "some datagrams overtake others");
        assert_eq!(reordered_arrivals(42).await, first, "same seed, same run");
    }

    #[tokio::test(start_paused = true)]
    async fn partitions_cut_both_ways_until_healed() {
        let (net, mut nodes) = network(1, 3);
        let (c, c_inbox) = nodes.pop().unwrap();
        let (b, b_inbox) = nodes.pop().unwrap();
        let (a, a_inbox) = nodes.pop().unwrap();
        for inbox in [a_inbox, b_inbox, c_inbox] {
            serve(inbox.rpcs);
        }
        let short = Duration::from_secs(1);
        net.partition(&[a.local().id.clone()], &[b.local().id.clone()]);
        assert!(a.rpc(b.local(), Bytes::new(), short).await.is_err());
        assert!(b.rpc(a.local(), Bytes::new(), short).await.is_err());
        assert!(a.discover(b.local().addr, short).await.is_err());
        a.rpc(c.local(), Bytes::new(), short).await.unwrap();
        c.rpc(b.local(), Bytes::new(), short).await.unwrap();
        net.heal();
        a.rpc(b.local(), Bytes::new(), short).await.unwrap();

        // A one-way cut: requests a → b are lost, b → a still works.
        net.cut_link(&a.local().id, &b.local().id);
        assert!(a.rpc(b.local(), Bytes::new(), short).await.is_err());
        assert!(
            b.rpc(a.local(), Bytes::new(), short).await.is_err(),
            "answers are lost"
        );
        net.restore_link(&a.local().id, &b.local().id);
        a.rpc(b.local(), Bytes::new(), short).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn removed_nodes_are_unreachable_and_can_restart() {
        let (net, mut nodes) = network(1, 2);
        let (b, _b_inbox) = nodes.pop().unwrap();
        let (a, _) = nodes.pop().unwrap();
        net.remove_node(&b.local().id);
        let err = a
            .rpc(b.local(), Bytes::new(), Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(matches!(err, TransportError::Unreachable { .. }), "{err}");
        let err = b.send_datagram(a.local(), Bytes::new()).unwrap_err();
        assert!(matches!(err, TransportError::Closed), "{err}");

        let (b2, b2_inbox) = net.add_node(peer(1));
        serve(b2_inbox.rpcs);
        a.rpc(b2.local(), Bytes::new(), Duration::from_secs(1))
            .await
            .unwrap();
        // The old handle stays closed after the restart.
        assert!(matches!(
            b.rpc(a.local(), Bytes::new(), Duration::from_secs(1)).await,
            Err(TransportError::Closed)
        ));
    }
}
