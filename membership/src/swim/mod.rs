//! SWIM + Lifeguard failure detection and membership, as a state machine without I/O.

mod broadcast;
mod digest;
#[cfg(test)]
mod digest_tests;
mod gossip;
mod member;
mod probe;
mod rules;
mod schedule;
mod suspicion;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use rand::seq::SliceRandom;
use rand::{Rng, RngCore};

use crate::codec::{self, CodecError};
use crate::config::SwimConfig;
use crate::id::{MemberMeta, NodeId};
use crate::message::{Body, Packet, Update};
use broadcast::{BroadcastQueue, MAX_UPDATES_PER_MESSAGE};
pub use member::{Member, MemberState};

/// A timer the driver must hand back to [`Swim::handle_timer`] at the time it was set for.
///
/// The token names one arming of one timer. When the state machine no longer needs it (the
/// probe was answered, the suspicion refuted), it forgets the token, so a late or duplicate
/// delivery is ignored: the driver never has to cancel anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timer {
    token: u64,
}

impl Timer {
    /// The token, for drivers that key their timer wheel by it.
    pub fn token(self) -> u64 {
        self.token
    }
}

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Destination address.
    pub to: SocketAddr,
    /// The node expected at `to`, when known (not for a seed address). A driver with
    /// authenticated connections should drop the datagram if another node answers there.
    pub to_id: Option<NodeId>,
    /// The encoded message, at most [`SwimConfig::max_datagram`] bytes.
    pub payload: Vec<u8>,
}

/// A change in this member's view of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A member became alive: first heard of, or back from dead or left with a higher
    /// incarnation.
    Up(Member),
    /// A member is suspected of having failed.
    Suspect(Member),
    /// A suspected member refuted the suspicion.
    Recovered(Member),
    /// A member was declared dead.
    Dead(Member),
    /// A member left gracefully.
    Left(Member),
    /// A live member published new metadata.
    MetadataChanged(Member),
}

/// An output of the state machine, drained with [`Swim::poll_effect`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Send a datagram.
    Transmit(Transmit),
    /// Call [`Swim::handle_timer`] with `timer` once `now >= at`.
    SetTimer {
        /// The timer to hand back.
        timer: Timer,
        /// When, on the driver's clock.
        at: Duration,
    },
    /// Report a membership change.
    Event(Event),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum TimerKind {
    Probe,
    ProbeTimeout { seq: u64 },
    ExtraProbeEnd { seq: u64 },
    Relay { seq: u64 },
    Suspicion { id: NodeId },
    Gossip,
    PushPull,
    SeedRetry,
    Reap,
}

#[derive(Debug)]
struct Record {
    member: Member,
    changed_at: Duration,
    suspicion: Option<Suspicion>,
}

#[derive(Debug)]
struct Suspicion {
    started: Duration,
    /// First accuser plus independent confirmations.
    accusers: BTreeSet<NodeId>,
    k: u32,
    min: Duration,
    max: Duration,
    token: u64,
}

#[derive(Debug)]
struct Probe {
    seq: u64,
    target: NodeId,
    acked: bool,
    expected_nacks: u32,
    nacks: u32,
    /// A Lifeguard confirmation probe: it may confirm a suspicion, never start one.
    confirm: bool,
}

#[derive(Debug)]
struct Relay {
    requester: SocketAddr,
    requester_id: NodeId,
    seq: u64,
    nack: bool,
    token: u64,
}

/// One member's SWIM + Lifeguard protocol state. No I/O, no clock, no global RNG.
///
/// # Call order
///
/// 1. [`Swim::new`] arms the periodic timers; then [`Swim::join`] with seed addresses (none
///    for the first node of a cluster).
/// 2. Feed inputs as they happen: [`handle_message`](Self::handle_message) for each received
///    datagram, [`handle_timer`](Self::handle_timer) for each timer that fired, and the commands
///    [`leave`](Self::leave) and [`update_meta`](Self::update_meta).
/// 3. After every input, drain [`poll_effect`](Self::poll_effect) until it returns `None`:
///    send the datagrams, arm the timers, publish the events.
///
/// `now` is the driver's clock as a duration since an epoch of its choice; it must not go
/// backwards. The probe schedule follows the same clock unless
/// [`set_schedule_clock`](Self::set_schedule_clock) names one the members share (the wall
/// clock). The RNG (`R`) decides the members picked for ping-req, gossip and push-pull; seed
/// it to replay a run.
///
/// # Protocol
///
/// Probes go in rounds of `probe_interval` on the schedule clock. In each round every member
/// pings the member that a schedule common to all members gives it (see `schedule.rs`): the
/// live members in a pseudo-random order drawn from their ids and the cycle number, each
/// probing the one `1 + r mod (n − 1)` places further in round `r`. With agreeing views each
/// member is probed by exactly one other in every round, and probes every other member once
/// per cycle of `n − 1` rounds, as SWIM's round-robin list would; a member whose view differs
/// sends a catch-up probe, besides the scheduled one, to any member of its view it has not
/// probed for `2 (n − 1)` rounds. With Lifeguard an unhealthy member probes only every
/// `health multiplier` rounds. Without an ack after `probe_timeout`, the ping is repeated and
/// `indirect_probes` members ping it on our behalf (ping-req) and answer with its ack or,
/// with Lifeguard, a nack. Without any ack by the end of the period it
/// becomes suspect; a suspect that does not refute (by raising its incarnation) within the
/// suspicion timeout is declared dead. Updates ride on every message and on gossip rounds;
/// state is exchanged (push-pull) with a random member every `push_pull_interval`, and seeds
/// and dead members are contacted every `seed_retry_interval`, so partitioned halves merge
/// once the network heals. Push-pull is digest first (see `digest.rs`): the two sides compare
/// per-bucket hashes of their tables and send each other only the buckets that differ; a
/// member that knows no one else (joining) sends its table in full and gets the peer's back.
///
/// Claims about a member follow SWIM's order: a higher incarnation wins; at equal
/// incarnation left and dead beat suspect, which beats alive. Only the member itself raises
/// its incarnation (to refute, to rejoin after a restart, or to publish metadata). A claim
/// older than what we know is answered by spreading the newer alive claim again, so a member
/// that missed a refutation catches up.
///
/// Lifeguard: the local health score rises on missed nacks, on refuting a suspicion about
/// ourselves and on timers handled late (a stall), and falls on each acked probe. After a
/// stall, probes in flight are dropped and suspicion timeouts get one more probe interval,
/// because the answers are probably still unread. A member that hears another's suspicion
/// probes the suspect at once (a confirmation probe, see `probe.rs`; in large clusters only a
/// few hearers do), so the independent confirmations that shorten the suspicion timeout
/// arrive within a probe interval instead of whenever the round-robin order reaches the
/// suspect.
pub struct Swim<R> {
    config: SwimConfig,
    rng: R,
    me: Member,
    members: BTreeMap<NodeId, Record>,
    /// Alive + suspect members including this one.
    live: usize,
    /// Which member to probe in each round (see `schedule.rs`).
    schedule: schedule::Schedule,
    /// The probe schedule's clock: it read `.0` when the driver's clock read `.1`.
    schedule_clock: (Duration, Duration),
    /// The round of the last scheduled probe.
    last_probe_round: Option<u64>,
    probe: Option<Probe>,
    /// Probes outside the schedule, by sequence number: Lifeguard confirmation probes of
    /// members others suspect, and catch-up probes of members the schedule left alone too long.
    extra_probes: BTreeMap<u64, Probe>,
    relays: BTreeMap<u64, Relay>,
    /// Live timers: token → what and when it was due.
    timers: BTreeMap<u64, (TimerKind, Duration)>,
    /// The token of the pending seed-retry timer.
    seed_retry: u64,
    next_token: u64,
    next_seq: u64,
    health: u32,
    broadcasts: BroadcastQueue,
    seeds: Vec<SocketAddr>,
    effects: VecDeque<Effect>,
}

impl<R: RngCore> Swim<R> {
    /// A member named `id` with metadata `meta`, at incarnation 0, alone in its cluster.
    ///
    /// `config.max_datagram` is clamped to `256..=`[`MAX_DATAGRAM`](crate::codec::MAX_DATAGRAM)
    /// so any member's table can be sent.
    pub fn new(
        id: NodeId,
        meta: MemberMeta,
        mut config: SwimConfig,
        rng: R,
        now: Duration,
    ) -> Self {
        config.max_datagram = config.max_datagram.clamp(256, codec::MAX_DATAGRAM);
        let mut swim = Self {
            config,
            rng,
            me: Member {
                id,
                meta,
                incarnation: 0,
                state: MemberState::Alive,
            },
            members: BTreeMap::new(),
            live: 1,
            schedule: schedule::Schedule::default(),
            schedule_clock: (now, now),
            last_probe_round: None,
            probe: None,
            extra_probes: BTreeMap::new(),
            relays: BTreeMap::new(),
            timers: BTreeMap::new(),
            seed_retry: 0,
            next_token: 0,
            next_seq: 0,
            health: 0,
            broadcasts: BroadcastQueue::default(),
            seeds: Vec::new(),
            effects: VecDeque::new(),
        };
        // Probes at the round boundaries of the schedule clock; gossip and push-pull at random
        // phases, so members started together do not send them in lockstep.
        let (gossip, push_pull) = (swim.config.gossip_interval, swim.config.push_pull_interval);
        let at = swim.next_probe_at(now);
        swim.arm(TimerKind::Probe, at);
        let at = now + gossip.mul_f64(swim.rng.random::<f64>());
        swim.arm(TimerKind::Gossip, at);
        let at = now + push_pull.mul_f64(swim.rng.random::<f64>());
        swim.arm(TimerKind::PushPull, at);
        swim.arm_seed_retry(now);
        let reap = now + swim.reap_interval();
        swim.arm(TimerKind::Reap, reap);
        swim
    }

    /// This member as it presents itself.
    pub fn local(&self) -> &Member {
        &self.me
    }

    /// Every other member this one knows, dead and departed included (until
    /// `dead_retention` passes), in id order.
    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.values().map(|r| &r.member)
    }

    /// What this member knows about `id`.
    pub fn member(&self, id: &NodeId) -> Option<&Member> {
        if *id == self.me.id {
            return Some(&self.me);
        }
        self.members.get(id).map(|r| &r.member)
    }

    /// Alive and suspect members, this one included.
    pub fn live_members(&self) -> usize {
        self.live
    }

    /// Lifeguard's local health multiplier (1 = healthy; up to `max_health + 1`).
    pub fn health_multiplier(&self) -> u32 {
        self.health + 1
    }

    /// Updates waiting to be piggybacked.
    pub fn pending_updates(&self) -> usize {
        self.broadcasts.len()
    }

    /// The settings in use.
    pub fn config(&self) -> &SwimConfig {
        &self.config
    }

    /// Sets the clock that the probe schedule follows: it reads `schedule_now` when the
    /// driver's clock reads `now`, and runs at the same rate.
    ///
    /// Members probe in rounds of `probe_interval` on this clock, and in each round every
    /// member is probed by about one other (see the type's docs), so it should be a clock the
    /// members share, such as the wall clock as a duration since the Unix epoch; a skew of a
    /// few milliseconds between members costs nothing. Without a call the schedule follows
    /// the driver's clock, which suits a simulator whose members share one virtual clock;
    /// members whose clocks disagree by much still probe everyone in their view, in about
    /// random order. Re-arms the next probe at the next round boundary of the new clock.
    pub fn set_schedule_clock(&mut self, schedule_now: Duration, now: Duration) {
        self.schedule_clock = (schedule_now, now);
        self.last_probe_round = None;
        self.schedule.invalidate();
        self.timers.retain(|_, (kind, _)| *kind != TimerKind::Probe);
        if self.me.state != MemberState::Left {
            let at = self.next_probe_at(now);
            self.arm(TimerKind::Probe, at);
        }
    }

    /// Next output, or `None` when all were drained.
    pub fn poll_effect(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    /// Contacts `seeds` (addresses of any members) with a state exchange (in full while this
    /// member knows no one else, digest first otherwise), and keeps
    /// retrying them every `seed_retry_interval` while this member knows no one else; later,
    /// seeds are among the addresses retried to heal partitions. Calling it again replaces the
    /// seed list.
    pub fn join(&mut self, seeds: &[SocketAddr], _now: Duration) {
        self.seeds = seeds
            .iter()
            .copied()
            .filter(|a| *a != self.me.meta.addr)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        for seed in self.seeds.clone() {
            if self.live <= 1 {
                self.send_state(seed, None, true);
            } else {
                self.send_digest(seed, None);
            }
        }
        // Our own alive claim rides on our first probes and gossip too, so members the seeds'
        // gossip misses still learn about us before the next state exchange.
        self.broadcast_self();
    }

    /// Leaves the cluster gracefully: announces it, stops probing and exchanging state, and
    /// keeps answering and gossiping so the news spreads. The driver may shut down after a few
    /// gossip intervals. Idempotent.
    pub fn leave(&mut self, _now: Duration) {
        if self.me.state == MemberState::Left {
            return;
        }
        self.me.state = MemberState::Left;
        self.live -= 1;
        self.broadcasts.push(Update::Left {
            id: self.me.id.clone(),
            incarnation: self.me.incarnation,
        });
        self.gossip_round();
    }

    /// Publishes new metadata (address, zone, ring version): raises the incarnation so the
    /// new value wins everywhere. Ignored after [`leave`](Self::leave).
    pub fn update_meta(&mut self, meta: MemberMeta, _now: Duration) {
        if self.me.state == MemberState::Left || meta == self.me.meta {
            return;
        }
        self.me.meta = meta;
        self.me.incarnation += 1;
        self.broadcast_self();
    }

    /// Handles one received datagram. `from` is the transport-level source address; replies
    /// go there.
    ///
    /// A datagram that does not decode, or that breaks a bound, is an error and changes
    /// nothing.
    pub fn handle_message(
        &mut self,
        from: SocketAddr,
        bytes: &[u8],
        now: Duration,
    ) -> Result<(), CodecError> {
        let packet = codec::decode_packet(bytes, self.config.max_datagram)?;
        if packet.sender == self.me.id {
            return Ok(());
        }
        let push_pull = matches!(packet.body, Body::PushPull { .. });
        for update in packet.updates {
            self.apply(update, &packet.sender, push_pull, now);
        }
        let sender = packet.sender;
        match packet.body {
            Body::Ping { seq, target } => {
                if target == self.me.id {
                    // Buddy system on the answer too: a suspect that pings us learns of
                    // our suspicion at once, even if its own probes are slowed by its
                    // local health (after a partition, typically).
                    let buddy = self.buddy_update(&sender);
                    self.send(from, Some(sender), Body::Ack { seq }, buddy);
                }
            }
            Body::PingReq {
                seq,
                target,
                target_addr,
                nack,
            } => {
                let my_seq = self.next_seq();
                let buddy = self.buddy_update(&target);
                self.send(
                    target_addr,
                    Some(target.clone()),
                    Body::Ping {
                        seq: my_seq,
                        target,
                    },
                    buddy,
                );
                let at = now + self.config.probe_timeout.mul_f64(0.8);
                let token = self.arm(TimerKind::Relay { seq: my_seq }, at);
                self.relays.insert(
                    my_seq,
                    Relay {
                        requester: from,
                        requester_id: sender,
                        seq,
                        nack,
                        token,
                    },
                );
            }
            Body::Ack { seq } => {
                if let Some(probe) = self.probe_mut(seq) {
                    if !std::mem::replace(&mut probe.acked, true) {
                        self.health = self.health.saturating_sub(1);
                    }
                } else if let Some(relay) = self.relays.remove(&seq) {
                    self.timers.remove(&relay.token);
                    self.send(
                        relay.requester,
                        Some(relay.requester_id),
                        Body::Ack { seq: relay.seq },
                        None,
                    );
                }
            }
            Body::Nack { seq } => {
                if let Some(probe) = self.probe_mut(seq) {
                    probe.nacks += 1;
                }
            }
            Body::Gossip => {}
            Body::PushPull { reply } => {
                if reply {
                    self.send_state(from, Some(sender), false);
                }
            }
            Body::Digest(digest) => self.handle_digest(from, sender, &digest),
            Body::Want(want) => self.handle_want(from, sender, &want),
        }
        Ok(())
    }

    /// Handles a timer set by an earlier [`Effect::SetTimer`]. Returns `false`, changing
    /// nothing, for a timer that is stale (no longer needed) or was already handled.
    pub fn handle_timer(&mut self, timer: Timer, now: Duration) -> bool {
        let Some((kind, due)) = self.timers.remove(&timer.token) else {
            return false;
        };
        // A timer handled much later than it was due means this member stalled (paused, CPU
        // starved) and has probably not read the answers waiting for it yet. With Lifeguard it
        // counts against local health and does not fail probes or kill suspects on stale
        // information.
        let stalled = self.config.lifeguard && now.saturating_sub(due) > self.config.probe_timeout;
        match kind {
            TimerKind::Probe => {
                if stalled {
                    self.probe = None;
                    self.health = (self.health + 1).min(self.config.max_health);
                }
                self.probe_round(now)
            }
            TimerKind::ProbeTimeout { seq } if stalled => {
                self.probe = self.probe.take().filter(|p| p.seq != seq);
                self.extra_probes.remove(&seq);
            }
            TimerKind::ProbeTimeout { seq } => self.indirect_probe(seq),
            TimerKind::ExtraProbeEnd { seq } => {
                if let Some(probe) = self.extra_probes.remove(&seq)
                    && !stalled
                {
                    self.extra_probe_ended(probe, now);
                }
            }
            TimerKind::Suspicion { id } if stalled => {
                let at = now + self.config.probe_interval;
                let token = self.arm(TimerKind::Suspicion { id: id.clone() }, at);
                if let Some(s) = self.members.get_mut(&id).and_then(|r| r.suspicion.as_mut()) {
                    s.token = token;
                }
            }
            TimerKind::Relay { seq } => {
                if let Some(relay) = self.relays.remove(&seq).filter(|r| r.nack) {
                    self.send(
                        relay.requester,
                        Some(relay.requester_id),
                        Body::Nack { seq: relay.seq },
                        None,
                    );
                }
            }
            TimerKind::Suspicion { id } => self.suspicion_expired(&id, now),
            TimerKind::Gossip => {
                self.gossip_round();
                let at = now + self.config.gossip_interval;
                self.arm(TimerKind::Gossip, at);
            }
            TimerKind::PushPull => {
                if self.me.state != MemberState::Left
                    && let Some(id) = self.random_live(1, None).pop()
                {
                    let addr = self.members[&id].member.meta.addr;
                    self.send_digest(addr, Some(id));
                }
                let at = now + self.config.push_pull_interval;
                self.arm(TimerKind::PushPull, at);
            }
            TimerKind::SeedRetry => {
                self.retry_seeds();
                self.arm_seed_retry(now);
            }
            TimerKind::Reap => {
                let retention = self.config.dead_retention;
                self.members
                    .retain(|_, r| r.member.state.is_live() || r.changed_at + retention > now);
                let at = now + self.reap_interval();
                self.arm(TimerKind::Reap, at);
            }
        }
        true
    }

    // ---- plumbing ----

    fn send(&mut self, to: SocketAddr, to_id: Option<NodeId>, body: Body, first: Option<Update>) {
        let mut packet = Packet {
            sender: self.me.id.clone(),
            body,
            updates: Vec::new(),
        };
        let budget = self.budget(&packet);
        let limit = self.retransmit_limit();
        packet.updates = self.broadcasts.select(budget, limit, first);
        self.transmit(to, to_id, &packet);
    }

    /// Bytes left for updates in `packet` (whose update list is empty; the list's one-byte
    /// length prefix is already counted, and stays one byte up to 250 updates).
    fn budget(&self, packet: &Packet) -> usize {
        let base = 1 + codec::encoded_len(packet);
        self.config.max_datagram.saturating_sub(base)
    }

    fn transmit(&mut self, to: SocketAddr, to_id: Option<NodeId>, packet: &Packet) {
        match codec::encode_packet(packet, self.config.max_datagram) {
            Ok(payload) => {
                self.effects
                    .push_back(Effect::Transmit(Transmit { to, to_id, payload }))
            }
            Err(e) => debug_assert!(false, "budgeted packet failed to encode: {e}"),
        }
    }

    fn retransmit_limit(&self) -> u32 {
        let n = self.live.max(1) as f64;
        self.config.retransmit_mult * ((n + 1.0).log10().ceil() as u32).max(1)
    }

    fn scaled(&self, d: Duration) -> Duration {
        if self.config.lifeguard {
            d * (self.health + 1)
        } else {
            d
        }
    }

    fn reap_interval(&self) -> Duration {
        (self.config.dead_retention / 8).max(Duration::from_secs(1))
    }

    fn next_seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    /// (Re)arms the seed retry: every `seed_retry_interval`, or every probe interval while
    /// this member knows no one else alive (it is alone: joining, or cut off until a partition
    /// heals, when every other member may also have declared it dead and stopped probing it).
    /// Contacting the seeds costs an alone member a few hundred bytes a second; waiting for a
    /// 30 s timer after a heal cost up to 30 s of a split cluster.
    pub(super) fn arm_seed_retry(&mut self, now: Duration) {
        self.timers.remove(&self.seed_retry);
        let every = if self.live <= 1 {
            self.config
                .probe_interval
                .min(self.config.seed_retry_interval)
        } else {
            self.config.seed_retry_interval
        };
        self.seed_retry = self.arm(TimerKind::SeedRetry, now + every);
    }

    fn arm(&mut self, kind: TimerKind, at: Duration) -> u64 {
        self.next_token += 1;
        let token = self.next_token;
        self.timers.insert(token, (kind, at));
        self.effects.push_back(Effect::SetTimer {
            timer: Timer { token },
            at,
        });
        token
    }

    fn emit(&mut self, event: Event) {
        self.effects.push_back(Effect::Event(event));
    }
}

fn alive_update(member: &Member) -> Update {
    Update::Alive {
        id: member.id.clone(),
        incarnation: member.incarnation,
        meta: member.meta.clone(),
    }
}

impl<R> std::fmt::Debug for Swim<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Swim")
            .field("me", &self.me)
            .field("members", &self.members.len())
            .field("live", &self.live)
            .field("health", &self.health)
            .finish_non_exhaustive()
    }
}
