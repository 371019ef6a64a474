//! A deterministic network simulator: many members in one process, on a virtual clock.
//!
//! Everything random (latency, loss, the members' own RNGs) comes from one seed, and events
//! at the same virtual time run in the order they were scheduled, so a seed replays exactly.
//! When a thread panics while a [`Sim`] is alive, the simulator prints its seed.
//!
//! Faults: a latency distribution (fixed minimum plus exponential jitter), uniform loss,
//! per-link loss (directional, so one-way loss too), partitions between groups, pauses (the
//! member is frozen like under SIGSTOP: its timers and datagrams wait until it resumes, and
//! then it runs the overdue timers before it reads the datagrams),
//! crashes (state lost, datagrams to it dropped) and restarts (a fresh member with the same
//! id and address, joining through the seeds).
//!
//! The simulator drives any [`Agent`]; [`Swim`](crate::Swim) is one (see [`SwimAgent`]), and the
//! benchmark plugs in other SWIM implementations on the same network.

mod swim_agent;

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub use swim_agent::SwimAgent;

/// What a simulated member reports about another, for measurements and checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observation {
    /// The member is alive (new, back, or recovered from suspicion).
    Up,
    /// The member is suspected.
    Suspect,
    /// The member was declared dead.
    Dead,
    /// The member left.
    Left,
}

/// A member implementation the simulator can drive.
pub trait Agent {
    /// The implementation's timer type.
    type Timer;
    /// A datagram arrived from `from`.
    fn handle_message(&mut self, from: SocketAddr, bytes: &[u8], now: Duration);
    /// A timer set earlier is due.
    fn handle_timer(&mut self, timer: Self::Timer, now: Duration);
    /// Moves pending outputs into `out`.
    fn drain(&mut self, out: &mut Outputs<Self::Timer>);
    /// Addresses of the members this one considers alive or suspect, itself included.
    fn live_view(&self) -> BTreeSet<SocketAddr>;
    /// Leaves gracefully.
    fn leave(&mut self, now: Duration);
}

/// Outputs collected from an [`Agent`].
#[derive(Debug)]
pub struct Outputs<T> {
    /// Datagrams: destination and payload.
    pub sends: Vec<(SocketAddr, Vec<u8>)>,
    /// Timers and their due times.
    pub timers: Vec<(T, Duration)>,
    /// Observations about other members, by their address.
    pub observations: Vec<(SocketAddr, Observation)>,
}

impl<T> Default for Outputs<T> {
    fn default() -> Self {
        Self {
            sends: Vec::new(),
            timers: Vec::new(),
            observations: Vec::new(),
        }
    }
}

/// Network behaviour.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConfig {
    /// Smallest one-way latency.
    pub latency_min: Duration,
    /// Mean of the exponential jitter added to `latency_min`.
    pub latency_jitter: Duration,
    /// Probability in `[0, 1]` that any datagram is lost.
    pub loss: f64,
}

impl Default for NetConfig {
    /// A LAN: 0.5 ms minimum, 0.5 ms mean jitter, no loss.
    fn default() -> Self {
        Self {
            latency_min: Duration::from_micros(500),
            latency_jitter: Duration::from_micros(500),
            loss: 0.0,
        }
    }
}

/// A fault to inject, as data, so scenarios can be generated and shrunk.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// Split members into groups (by index); datagrams between groups are lost. Members not
    /// listed form one more group.
    Partition(Vec<Vec<usize>>),
    /// End any partition.
    Heal,
    /// Set uniform loss.
    Loss(f64),
    /// Set loss on the directed link `from → to`.
    LinkLoss {
        /// Sender index.
        from: usize,
        /// Receiver index.
        to: usize,
        /// Probability in `[0, 1]`.
        loss: f64,
    },
    /// Remove every per-link loss.
    ClearLinkLoss,
    /// Freeze a member for a while.
    Pause {
        /// Member index.
        node: usize,
        /// How long.
        duration: Duration,
    },
    /// Kill a member; its state is lost.
    Crash(usize),
    /// Start a crashed member again (same id and address, fresh state).
    Restart(usize),
}

/// Traffic counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Datagrams handed to the network.
    pub sent: u64,
    /// Bytes handed to the network.
    pub bytes: u64,
    /// Datagrams lost to loss, partitions or crashed receivers.
    pub dropped: u64,
}

enum Pending<T> {
    Deliver { from: SocketAddr, bytes: Vec<u8> },
    Timer { generation: u32, timer: T },
}

struct Scheduled<T> {
    at: Duration,
    seq: u64,
    node: usize,
    what: Pending<T>,
}

impl<T> PartialEq for Scheduled<T> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl<T> Eq for Scheduled<T> {}
impl<T> PartialOrd for Scheduled<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Scheduled<T> {
    /// Reversed, so the max-heap pops the earliest.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// After a pause, datagrams are read this long after the due timers ran.
const RESUME_READ_DELAY: Duration = Duration::from_millis(1);

struct Slot<A> {
    agent: Option<A>,
    generation: u32,
    paused_until: Duration,
}

/// Builds the agent for member `index` at `addr`, given the current time and a seed for its
/// RNG. Called at start and on every restart.
pub type Factory<A> = Box<dyn FnMut(usize, SocketAddr, Duration, u64) -> A>;

/// The simulator. See the [module docs](self).
pub struct Sim<A: Agent> {
    seed: u64,
    now: Duration,
    next_seq: u64,
    queue: BinaryHeap<Scheduled<A::Timer>>,
    slots: Vec<Slot<A>>,
    rng: ChaCha8Rng,
    net: NetConfig,
    link_loss: BTreeMap<(usize, usize), f64>,
    groups: Option<Vec<u32>>,
    factory: Factory<A>,
    stats: NetStats,
    observations: Vec<(Duration, usize, SocketAddr, Observation)>,
    record: bool,
    scratch: Outputs<A::Timer>,
}

/// The address of simulated member `index`: `10.x.y.z:7000`.
pub fn addr_of(index: usize) -> SocketAddr {
    let i = index as u32;
    SocketAddr::from((Ipv4Addr::from(0x0a00_0000 | (i & 0x00ff_ffff)), 7000))
}

/// The index of the simulated member at `addr`, if it is one.
pub fn index_of(addr: SocketAddr) -> Option<usize> {
    match addr {
        SocketAddr::V4(a) if a.port() == 7000 && a.ip().octets()[0] == 10 => {
            Some((u32::from(*a.ip()) & 0x00ff_ffff) as usize)
        }
        _ => None,
    }
}

impl<A: Agent> Sim<A> {
    /// `n` members built by `factory`, all started at time zero, on network `net`.
    pub fn new(seed: u64, n: usize, net: NetConfig, factory: Factory<A>) -> Self {
        let mut sim = Self {
            seed,
            now: Duration::ZERO,
            next_seq: 0,
            queue: BinaryHeap::new(),
            slots: Vec::with_capacity(n),
            rng: ChaCha8Rng::seed_from_u64(seed),
            net,
            link_loss: BTreeMap::new(),
            groups: None,
            factory,
            stats: NetStats::default(),
            observations: Vec::new(),
            record: false,
            scratch: Outputs::default(),
        };
        for i in 0..n {
            sim.slots.push(Slot {
                agent: None,
                generation: 0,
                paused_until: Duration::ZERO,
            });
            sim.start(i);
        }
        sim
    }

    /// The seed this run replays from.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Virtual time now.
    pub fn now(&self) -> Duration {
        self.now
    }

    /// Number of member slots (crashed ones included).
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True without members.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Member `i`, unless crashed.
    pub fn agent(&self, i: usize) -> Option<&A> {
        self.slots[i].agent.as_ref()
    }

    /// Member `i` mutably, unless crashed. Drain its outputs with [`Sim::flush`] after
    /// calling into it.
    pub fn agent_mut(&mut self, i: usize) -> Option<&mut A> {
        self.slots[i].agent.as_mut()
    }

    /// Whether member `i` is running (not crashed).
    pub fn is_up(&self, i: usize) -> bool {
        self.slots[i].agent.is_some()
    }

    /// Traffic so far.
    pub fn stats(&self) -> &NetStats {
        &self.stats
    }

    /// Keep observations for [`Sim::take_observations`] (off by default: large clusters
    /// produce many).
    pub fn record_observations(&mut self, on: bool) {
        self.record = on;
    }

    /// Observations since the last call: time, observer index, subject address, what.
    pub fn take_observations(&mut self) -> Vec<(Duration, usize, SocketAddr, Observation)> {
        std::mem::take(&mut self.observations)
    }

    /// Starts one more member now (index `len()` before the call) and returns its index.
    pub fn add_member(&mut self) -> usize {
        let i = self.slots.len();
        self.slots.push(Slot {
            agent: None,
            generation: 0,
            paused_until: self.now,
        });
        if let Some(groups) = &mut self.groups {
            groups.push(u32::MAX);
        }
        self.start(i);
        i
    }

    /// Injects a fault now.
    pub fn apply(&mut self, fault: Fault) {
        match fault {
            Fault::Partition(groups) => {
                let mut of = vec![groups.len() as u32; self.slots.len()];
                for (g, members) in groups.iter().enumerate() {
                    for &m in members {
                        if m < of.len() {
                            of[m] = g as u32;
                        }
                    }
                }
                self.groups = Some(of);
            }
            Fault::Heal => self.groups = None,
            Fault::Loss(p) => self.net.loss = p,
            Fault::LinkLoss { from, to, loss } => {
                self.link_loss.insert((from, to), loss);
            }
            Fault::ClearLinkLoss => self.link_loss.clear(),
            Fault::Pause { node, duration } => {
                let slot = &mut self.slots[node];
                slot.paused_until = slot.paused_until.max(self.now + duration);
            }
            Fault::Crash(i) => {
                let slot = &mut self.slots[i];
                slot.agent = None;
                slot.generation += 1;
            }
            Fault::Restart(i) => {
                if self.slots[i].agent.is_none() {
                    self.start(i);
                }
            }
        }
    }

    /// Calls `f` on member `i` (if running) and schedules what it produced.
    pub fn with_agent(&mut self, i: usize, f: impl FnOnce(&mut A, Duration)) {
        let now = self.now;
        if let Some(agent) = self.slots[i].agent.as_mut() {
            f(agent, now);
            self.flush(i);
        }
    }

    /// Runs every event due up to and including `until`, then sets the clock to `until`.
    pub fn run_until(&mut self, until: Duration) {
        while self.queue.peek().is_some_and(|e| e.at <= until) {
            let event = self.queue.pop().expect("peeked");
            self.now = event.at;
            self.dispatch(event);
        }
        self.now = until;
    }

    /// Runs for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        self.run_until(self.now + d);
    }

    fn start(&mut self, i: usize) {
        let seed = self.rng.next_u64();
        let agent = (self.factory)(i, addr_of(i), self.now, seed);
        let slot = &mut self.slots[i];
        slot.agent = Some(agent);
        slot.paused_until = self.now;
        self.flush(i);
    }

    fn dispatch(&mut self, event: Scheduled<A::Timer>) {
        let i = event.node;
        let slot = &mut self.slots[i];
        if slot.paused_until > self.now {
            // Frozen: everything waits until it resumes (a datagram sits in the socket buffer).
            // On resume the member first runs the timers that came due, then reads its
            // datagrams: the harsher of the orders a resumed process may take.
            let at = match event.what {
                Pending::Timer { .. } => slot.paused_until,
                Pending::Deliver { .. } => slot.paused_until + RESUME_READ_DELAY,
            };
            self.schedule(at, i, event.what);
            return;
        }
        let now = self.now;
        match event.what {
            Pending::Deliver { from, bytes } => match slot.agent.as_mut() {
                Some(agent) => agent.handle_message(from, &bytes, now),
                None => {
                    self.stats.dropped += 1;
                    return;
                }
            },
            Pending::Timer { generation, timer } => {
                if generation != slot.generation {
                    return;
                }
                match slot.agent.as_mut() {
                    Some(agent) => agent.handle_timer(timer, now),
                    None => return,
                }
            }
        }
        self.flush(i);
    }

    /// Schedules the outputs member `i` has pending.
    pub fn flush(&mut self, i: usize) {
        let mut out = std::mem::take(&mut self.scratch);
        if let Some(agent) = self.slots[i].agent.as_mut() {
            agent.drain(&mut out);
        }
        let generation = self.slots[i].generation;
        for (timer, at) in out.timers.drain(..) {
            self.schedule(at.max(self.now), i, Pending::Timer { generation, timer });
        }
        let from = addr_of(i);
        for (to, bytes) in out.sends.drain(..) {
            self.stats.sent += 1;
            self.stats.bytes += bytes.len() as u64;
            let Some(j) = index_of(to).filter(|&j| j < self.slots.len()) else {
                self.stats.dropped += 1;
                continue;
            };
            if self.lost(i, j) {
                self.stats.dropped += 1;
                continue;
            }
            let at = self.now + self.latency();
            self.schedule(at, j, Pending::Deliver { from, bytes });
        }
        if self.record {
            let now = self.now;
            self.observations.extend(
                out.observations
                    .drain(..)
                    .map(|(subject, what)| (now, i, subject, what)),
            );
        } else {
            out.observations.clear();
        }
        self.scratch = out;
    }

    fn lost(&mut self, from: usize, to: usize) -> bool {
        if let Some(groups) = &self.groups
            && groups[from] != groups[to]
        {
            return true;
        }
        let link = self.link_loss.get(&(from, to)).copied().unwrap_or(0.0);
        let p = 1.0 - (1.0 - self.net.loss) * (1.0 - link);
        p > 0.0 && self.rng.random::<f64>() < p
    }

    fn latency(&mut self) -> Duration {
        let u: f64 = self.rng.random();
        let jitter = self.net.latency_jitter.as_secs_f64() * -(1.0 - u).ln();
        self.net.latency_min + Duration::from_secs_f64(jitter.min(10.0))
    }

    fn schedule(&mut self, at: Duration, node: usize, what: Pending<A::Timer>) {
        self.next_seq += 1;
        self.queue.push(Scheduled {
            at,
            seq: self.next_seq,
            node,
            what,
        });
    }
}

impl<A: Agent> Drop for Sim<A> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "simulation failed: seed = {} (virtual time {:?}); rerun with this seed to replay",
                self.seed, self.now
            );
        }
    }
}
