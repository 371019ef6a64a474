//! Probing: the scheduled ping each round, ping-req through k members, nacks, local health.

use super::*;

impl<R: RngCore> Swim<R> {
    /// A round boundary: close the last probe's period and probe this round's target.
    pub(super) fn probe_round(&mut self, now: Duration) {
        let round = self.round(now);
        if self.me.state != MemberState::Left {
            let at = self.next_probe_at(now);
            self.arm(TimerKind::Probe, at);
            // Lifeguard: an unhealthy member probes every `multiplier` rounds only. Decided at
            // each boundary, so it is back in every round as soon as its health recovers.
            let every = if self.config.lifeguard {
                u64::from(self.health) + 1
            } else {
                1
            };
            if self
                .last_probe_round
                .is_some_and(|last| round >= last && round < last + every)
            {
                return;
            }
        }
        if let Some(probe) = self.probe.take()
            && !probe.acked
        {
            self.probe_failed(probe, now);
        }
        if self.me.state == MemberState::Left {
            return;
        }
        self.last_probe_round = Some(round);
        let Some((target, overdue)) = self.next_probe_targets(round) else {
            return;
        };
        let seq = self.next_seq();
        let addr = self.members[&target].member.meta.addr;
        let buddy = self.buddy_update(&target);
        self.send(
            addr,
            Some(target.clone()),
            Body::Ping {
                seq,
                target: target.clone(),
            },
            buddy,
        );
        self.probe = Some(Probe {
            seq,
            target,
            acked: false,
            expected_nacks: 0,
            nacks: 0,
            confirm: false,
        });
        let at = now + self.scaled(self.config.probe_timeout);
        self.arm(TimerKind::ProbeTimeout { seq }, at);
        if let Some(id) = overdue
            && !self.extra_probes.values().any(|p| p.target == id)
        {
            self.extra_probe(id, false, now);
        }
    }

    /// The probe in flight with sequence number `seq`: this period's, or a confirmation.
    pub(super) fn probe_mut(&mut self, seq: u64) -> Option<&mut Probe> {
        match self.probe.as_mut().filter(|p| p.seq == seq) {
            Some(p) => Some(p),
            None => self.extra_probes.get_mut(&seq),
        }
    }

    pub(super) fn indirect_probe(&mut self, seq: u64) {
        let Some(probe) = self.probe_mut(seq).filter(|p| !p.acked) else {
            return;
        };
        let target = probe.target.clone();
        let Some(target_addr) = self.members.get(&target).map(|r| r.member.meta.addr) else {
            return;
        };
        let helpers = self.random_live(self.config.indirect_probes, Some(&target));
        let nack = self.config.lifeguard;
        // Retry the direct path too: on a lossy network a second direct ping is as likely to
        // get through as each indirect one, and cheaper (two messages instead of four).
        let buddy = self.buddy_update(&target);
        self.send(
            target_addr,
            Some(target.clone()),
            Body::Ping {
                seq,
                target: target.clone(),
            },
            buddy,
        );
        for helper in &helpers {
            let addr = self.members[helper].member.meta.addr;
            self.send(
                addr,
                Some(helper.clone()),
                Body::PingReq {
                    seq,
                    target: target.clone(),
                    target_addr,
                    nack,
                },
                None,
            );
        }
        if let Some(probe) = self.probe_mut(seq)
            && nack
        {
            probe.expected_nacks = helpers.len() as u32;
        }
    }

    /// Lifeguard: missing nacks mean our own messages are not getting through: we are the
    /// unhealthy one, so slow down before accusing others.
    fn count_missed_nacks(&mut self, probe: &Probe) {
        if self.config.lifeguard {
            let delta = if probe.expected_nacks > 0 {
                probe.expected_nacks.saturating_sub(probe.nacks)
            } else {
                1
            };
            self.health = (self.health + delta).min(self.config.max_health);
        }
    }

    pub(super) fn probe_failed(&mut self, probe: Probe, now: Duration) {
        self.count_missed_nacks(&probe);
        if let Some(r) = self.members.get(&probe.target)
            && r.member.state.is_live()
        {
            let incarnation = r.member.incarnation;
            let me = self.me.id.clone();
            self.on_suspect(probe.target, incarnation, me, now);
        }
    }

    /// The schedule clock's reading at `now` on the driver's clock.
    fn schedule_time(&self, now: Duration) -> Duration {
        let (at, then) = self.schedule_clock;
        match now.checked_sub(then) {
            Some(later) => at + later,
            None => at.saturating_sub(then - now),
        }
    }

    /// The probe round at `now`: the number of whole probe intervals on the schedule clock.
    fn round(&self, now: Duration) -> u64 {
        let interval = self.config.probe_interval.as_nanos().max(1);
        (self.schedule_time(now).as_nanos() / interval) as u64
    }

    /// The next round boundary of the schedule clock after `now`, on the driver's clock.
    pub(super) fn next_probe_at(&self, now: Duration) -> Duration {
        let interval = self.config.probe_interval;
        let into = self.schedule_time(now).as_nanos() % interval.as_nanos().max(1);
        now + interval - Duration::from_nanos(into as u64)
    }

    /// This round's scheduled target, and a member this one has left alone too long, if any
    /// (see `schedule.rs`).
    pub(super) fn next_probe_targets(&mut self, round: u64) -> Option<(NodeId, Option<NodeId>)> {
        let members = &self.members;
        self.schedule.next_targets(&self.me.id, round, || {
            members
                .iter()
                .filter(|(_, r)| r.member.state.is_live())
                .map(|(id, _)| id.clone())
                .collect()
        })
    }

    /// Up to `count` distinct live members other than `except`, chosen at random.
    pub(super) fn random_live(&mut self, count: usize, except: Option<&NodeId>) -> Vec<NodeId> {
        let eligible = |s: &Self, id: &NodeId| {
            Some(id) != except && s.members.get(id).is_some_and(|r| r.member.state.is_live())
        };
        let mut out: Vec<NodeId> = Vec::with_capacity(count);
        if count == 0 {
            return out;
        }
        let pool = self.schedule.order().len();
        if pool <= 4 * count + 4 {
            let mut all: Vec<NodeId> = self
                .members
                .keys()
                .filter(|id| eligible(self, id))
                .cloned()
                .collect();
            all.shuffle(&mut self.rng);
            all.truncate(count);
            return all;
        }
        for _ in 0..(8 * count + 8) {
            let i = self.rng.random_range(0..pool);
            let id = &self.schedule.order()[i];
            if eligible(self, id) && !out.contains(id) {
                out.push(id.clone());
                if out.len() == count {
                    break;
                }
            }
        }
        out
    }

    /// Lifeguard's buddy system: a ping to a suspect, and the ack to a ping from one, carry
    /// the suspicion, so the suspect can refute at once. Extended to the dead: a member we
    /// declared dead that still pings us (it had not yet given up on us when a partition
    /// healed) learns of its death from our ack and refutes, instead of waiting for the next
    /// seed retry (`seed_retry_interval`, 30 s on a LAN) to bring the halves back together.
    pub(super) fn buddy_update(&self, target: &NodeId) -> Option<Update> {
        if !self.config.lifeguard {
            return None;
        }
        let r = self.members.get(target)?;
        let (id, incarnation, accuser) = (target.clone(), r.member.incarnation, self.me.id.clone());
        match r.member.state {
            MemberState::Suspect => Some(Update::Suspect {
                id,
                incarnation,
                accuser,
            }),
            MemberState::Dead => Some(Update::Dead {
                id,
                incarnation,
                accuser,
            }),
            MemberState::Alive | MemberState::Left => None,
        }
    }
}

/// Confirmation probes (Lifeguard): a member that hears that another suspects `id` probes it
/// at once instead of waiting for its turn in the probe schedule.
///
/// Lifeguard shortens a suspicion from its maximum to its minimum as independent accusers
/// confirm it, but the schedule brings one new prober of the suspect per round, so the
/// `α − 2 = 2` confirmations Lifeguard waits for would take two more rounds (with SWIM's
/// unaligned round-robin they took up to 6.5 s instead of the 4 s minimum at N = 10).
/// Probing at once brings them within one probe interval at any cluster size, and, since the
/// ping carries the suspicion (buddy system), lets a healthy suspect refute sooner.
///
/// Each hearer probes with probability `min(1, 2 (k + 1) / (n − 2))` (k the confirmations
/// Lifeguard expects, n the live members), so about `2 (k + 1)` members probe a suspect in a
/// large cluster instead of all of them. A confirmation probe is a full probe (direct ping,
/// then ping-req through `indirect_probes` members with nacks), so under loss it accuses no
/// more readily than a scheduled probe; it never starts a suspicion, it only confirms the
/// one it was sent for.
impl<R: RngCore> Swim<R> {
    pub(super) fn maybe_confirm(&mut self, target: &NodeId, k: u32, now: Duration) {
        if !self.config.lifeguard
            || self.me.state == MemberState::Left
            || self.probe.as_ref().is_some_and(|p| p.target == *target)
            || self.extra_probes.values().any(|p| p.target == *target)
        {
            return;
        }
        let others = self.live.saturating_sub(2).max(1) as f64;
        let p = (2.0 * (k as f64 + 1.0) / others).min(1.0);
        if self.rng.random::<f64>() >= p {
            return;
        }
        self.extra_probe(target.clone(), true, now);
    }

    /// A full probe of `target` outside the schedule, ending one probe interval later. A
    /// confirmation (`confirm`) only confirms a suspicion that still stands when it ends;
    /// otherwise, like the scheduled probe, it suspects the target if nothing answered.
    fn extra_probe(&mut self, target: NodeId, confirm: bool, now: Duration) {
        let Some(addr) = self.members.get(&target).map(|r| r.member.meta.addr) else {
            return;
        };
        let seq = self.next_seq();
        let buddy = self.buddy_update(&target);
        self.send(
            addr,
            Some(target.clone()),
            Body::Ping {
                seq,
                target: target.clone(),
            },
            buddy,
        );
        self.extra_probes.insert(
            seq,
            Probe {
                seq,
                target,
                acked: false,
                expected_nacks: 0,
                nacks: 0,
                confirm,
            },
        );
        let at = now + self.scaled(self.config.probe_timeout);
        self.arm(TimerKind::ProbeTimeout { seq }, at);
        let at = now + self.scaled(self.config.probe_interval);
        self.arm(TimerKind::ExtraProbeEnd { seq }, at);
    }

    /// A probe outside the schedule ended. Without an ack, a confirmation confirms the
    /// suspicion if it still stands (a refutation meanwhile means the suspect lives, whatever
    /// this probe saw); a catch-up probe fails like a scheduled one.
    pub(super) fn extra_probe_ended(&mut self, probe: Probe, now: Duration) {
        if probe.acked {
            return;
        }
        if !probe.confirm {
            self.probe_failed(probe, now);
            return;
        }
        self.count_missed_nacks(&probe);
        if let Some(r) = self.members.get(&probe.target)
            && r.member.state == MemberState::Suspect
        {
            let incarnation = r.member.incarnation;
            let me = self.me.id.clone();
            self.on_suspect(probe.target, incarnation, me, now);
        }
    }
}
