//! SWIM's rules for claims about members: incarnations, suspicion, refutation, death, leave.

use super::*;

impl<R: RngCore> Swim<R> {
    pub(super) fn apply(
        &mut self,
        update: Update,
        sender: &NodeId,
        push_pull: bool,
        now: Duration,
    ) {
        match update {
            Update::Alive {
                id,
                incarnation,
                meta,
            } => self.on_alive(id, incarnation, meta, now),
            Update::Suspect {
                id,
                incarnation,
                accuser,
            } => self.on_suspect(id, incarnation, accuser, now),
            // A death reported by full state is only a suspicion here (as in memberlist): the
            // member gets a chance to refute, which heals views after a partition.
            Update::Dead {
                id, incarnation, ..
            } if push_pull => self.on_suspect(id, incarnation, sender.clone(), now),
            Update::Dead {
                id,
                incarnation,
                accuser,
            } => self.on_dead(id, incarnation, accuser, now),
            Update::Left { id, incarnation } => self.on_left(id, incarnation, now),
        }
    }

    pub(super) fn on_alive(
        &mut self,
        id: NodeId,
        incarnation: u64,
        meta: MemberMeta,
        now: Duration,
    ) {
        if id == self.me.id {
            // Our own earlier life (before a restart) may still be remembered with a higher
            // incarnation or other metadata: outbid it.
            if self.me.state != MemberState::Left
                && (incarnation > self.me.incarnation
                    || (incarnation == self.me.incarnation && meta != self.me.meta))
            {
                self.me.incarnation = incarnation + 1;
                self.broadcast_self();
            }
            return;
        }
        let Some(r) = self.members.get_mut(&id) else {
            let member = Member {
                id: id.clone(),
                meta,
                incarnation,
                state: MemberState::Alive,
            };
            self.members.insert(
                id.clone(),
                Record {
                    member: member.clone(),
                    changed_at: now,
                    suspicion: None,
                },
            );
            self.live += 1;
            self.schedule.add(id);
            self.broadcasts.push(alive_update(&member));
            self.emit(Event::Up(member));
            return;
        };
        if incarnation <= r.member.incarnation {
            return;
        }
        let prev = r.member.state;
        let meta_changed = r.member.meta != meta;
        r.member.incarnation = incarnation;
        r.member.meta = meta;
        r.member.state = MemberState::Alive;
        if prev != MemberState::Alive {
            r.changed_at = now;
        }
        let suspicion = r.suspicion.take();
        let member = r.member.clone();
        if let Some(s) = suspicion {
            self.timers.remove(&s.token);
        }
        self.broadcasts.push(alive_update(&member));
        match prev {
            MemberState::Dead | MemberState::Left => {
                self.live += 1;
                self.schedule.add(id);
                self.emit(Event::Up(member));
            }
            MemberState::Suspect => {
                self.emit(Event::Recovered(member.clone()));
                if meta_changed {
                    self.emit(Event::MetadataChanged(member));
                }
            }
            MemberState::Alive => {
                if meta_changed {
                    self.emit(Event::MetadataChanged(member));
                }
            }
        }
    }

    pub(super) fn on_suspect(
        &mut self,
        id: NodeId,
        incarnation: u64,
        accuser: NodeId,
        now: Duration,
    ) {
        if id == self.me.id {
            self.accused(incarnation);
            return;
        }
        if self.correct_stale(&id, incarnation) {
            return;
        }
        let config = &self.config;
        let Some(r) = self.members.get_mut(&id) else {
            return;
        };
        match r.member.state {
            MemberState::Dead | MemberState::Left if incarnation == r.member.incarnation => return,
            MemberState::Suspect if incarnation == r.member.incarnation => {
                let Some(s) = r.suspicion.as_mut() else {
                    return;
                };
                if !config.lifeguard || !s.accusers.insert(accuser.clone()) {
                    return;
                }
                let confirmations = s.accusers.len() as u32 - 1;
                let deadline = s.started + suspicion::timeout(s.min, s.max, s.k, confirmations);
                let old = s.token;
                self.timers.remove(&old);
                self.broadcasts.push(Update::Suspect {
                    id: id.clone(),
                    incarnation,
                    accuser,
                });
                if deadline <= now {
                    self.suspicion_expired(&id, now);
                } else {
                    let token = self.arm(TimerKind::Suspicion { id: id.clone() }, deadline);
                    if let Some(s) = self.members.get_mut(&id).and_then(|r| r.suspicion.as_mut()) {
                        s.token = token;
                    }
                }
                return;
            }
            _ => {}
        }
        let was_live = r.member.state.is_live();
        r.member.incarnation = incarnation;
        r.member.state = MemberState::Suspect;
        r.changed_at = now;
        if let Some(s) = r.suspicion.take() {
            self.timers.remove(&s.token);
        }
        if !was_live {
            self.live += 1;
            self.schedule.add(id.clone());
        }
        let (min, max) = suspicion::bounds(&self.config, self.live);
        let k = suspicion::expected_confirmations(&self.config, self.live);
        let token = self.arm(
            TimerKind::Suspicion { id: id.clone() },
            now + suspicion::timeout(min, max, k, 0),
        );
        let r = self.members.get_mut(&id).expect("checked above");
        r.suspicion = Some(Suspicion {
            started: now,
            accusers: BTreeSet::from([accuser.clone()]),
            k,
            min,
            max,
            token,
        });
        let member = r.member.clone();
        let heard = accuser != self.me.id;
        self.broadcasts.push(Update::Suspect {
            id: id.clone(),
            incarnation,
            accuser,
        });
        self.emit(Event::Suspect(member));
        if heard {
            self.maybe_confirm(&id, k, now);
        }
    }

    pub(super) fn suspicion_expired(&mut self, id: &NodeId, now: Duration) {
        let Some(r) = self.members.get(id) else {
            return;
        };
        if r.member.state == MemberState::Suspect {
            let (incarnation, me) = (r.member.incarnation, self.me.id.clone());
            self.on_dead(id.clone(), incarnation, me, now);
        }
    }

    pub(super) fn on_dead(&mut self, id: NodeId, incarnation: u64, accuser: NodeId, now: Duration) {
        if id == self.me.id {
            self.accused(incarnation);
            return;
        }
        if self.correct_stale(&id, incarnation) {
            return;
        }
        let Some(r) = self.members.get_mut(&id) else {
            return;
        };
        if !r.member.state.is_live() {
            return;
        }
        r.member.incarnation = incarnation;
        r.member.state = MemberState::Dead;
        r.changed_at = now;
        let suspicion = r.suspicion.take();
        let member = r.member.clone();
        if let Some(s) = suspicion {
            self.timers.remove(&s.token);
        }
        self.live -= 1;
        if self.live <= 1 {
            self.arm_seed_retry(now);
        }
        self.schedule.invalidate();
        self.broadcasts.push(Update::Dead {
            id,
            incarnation,
            accuser,
        });
        self.emit(Event::Dead(member));
    }

    pub(super) fn on_left(&mut self, id: NodeId, incarnation: u64, now: Duration) {
        if id == self.me.id {
            // A leave from an earlier life is outbid like a death.
            if self.me.state != MemberState::Left && incarnation >= self.me.incarnation {
                self.refute(incarnation);
            }
            return;
        }
        let Some(r) = self.members.get_mut(&id) else {
            return;
        };
        if incarnation < r.member.incarnation || r.member.state == MemberState::Left {
            return;
        }
        let was_live = r.member.state.is_live();
        r.member.incarnation = incarnation;
        r.member.state = MemberState::Left;
        r.changed_at = now;
        let suspicion = r.suspicion.take();
        let member = r.member.clone();
        if let Some(s) = suspicion {
            self.timers.remove(&s.token);
        }
        if was_live {
            self.live -= 1;
            self.schedule.invalidate();
        }
        self.broadcasts.push(Update::Left { id, incarnation });
        self.emit(Event::Left(member));
    }

    /// Someone claims we are suspect, dead or gone at `incarnation`.
    pub(super) fn accused(&mut self, incarnation: u64) {
        if self.me.state == MemberState::Left {
            return;
        }
        if incarnation >= self.me.incarnation {
            self.refute(incarnation);
        } else if !self.broadcasts.contains(&self.me.id) {
            // A stale accusation still circulates: some member missed our refutation.
            self.broadcast_self();
        }
    }

    /// An accusation older than what we know about `id`: the sender missed a refutation, so
    /// spread the alive claim again (once; it is not re-queued while still pending). Returns
    /// whether the update was stale.
    pub(super) fn correct_stale(&mut self, id: &NodeId, incarnation: u64) -> bool {
        let Some(r) = self.members.get(id) else {
            return false;
        };
        if incarnation >= r.member.incarnation {
            return false;
        }
        if r.member.state == MemberState::Alive && !self.broadcasts.contains(id) {
            let update = alive_update(&r.member);
            self.broadcasts.push(update);
        }
        true
    }

    /// Someone claims we are suspect or dead at `incarnation`: outbid it.
    pub(super) fn refute(&mut self, incarnation: u64) {
        self.me.incarnation = self.me.incarnation.max(incarnation) + 1;
        if self.config.lifeguard {
            // Being suspected means we were slow to answer: count it against our health.
            self.health = (self.health + 1).min(self.config.max_health);
        }
        self.broadcast_self();
    }

    pub(super) fn broadcast_self(&mut self) {
        let update = self.self_update();
        self.broadcasts.push(update);
    }

    pub(super) fn self_update(&self) -> Update {
        match self.me.state {
            MemberState::Left => Update::Left {
                id: self.me.id.clone(),
                incarnation: self.me.incarnation,
            },
            _ => alive_update(&self.me),
        }
    }
}
