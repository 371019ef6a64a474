//! Dissemination: gossip rounds, full-state exchange (push-pull) and seed retries.

use super::*;

impl<R: RngCore> Swim<R> {
    pub(super) fn gossip_round(&mut self) {
        if self.broadcasts.is_empty() {
            return;
        }
        for id in self.random_live(self.config.gossip_fanout, None) {
            let addr = self.members[&id].member.meta.addr;
            self.send(addr, Some(id), Body::Gossip, None);
            if self.broadcasts.is_empty() {
                break;
            }
        }
    }

    pub(super) fn retry_seeds(&mut self) {
        if self.me.state == MemberState::Left {
            return;
        }
        if self.live <= 1 {
            // Alone (joining, or cut off; this runs every probe interval then): every seed,
            // and one member we believe dead, at random, so the cost stays bounded in a large
            // cluster whose members all look dead from here.
            let dead: Vec<(SocketAddr, NodeId)> = self
                .members
                .values()
                .filter(|r| r.member.state == MemberState::Dead)
                .filter(|r| !self.seeds.contains(&r.member.meta.addr))
                .map(|r| (r.member.meta.addr, r.member.id.clone()))
                .collect();
            for seed in self.seeds.clone() {
                self.send_state(seed, None, true);
            }
            if !dead.is_empty() {
                let (addr, id) = dead[self.rng.random_range(0..dead.len())].clone();
                self.send_state(addr, Some(id), true);
            }
            return;
        }
        // Contact one address outside our live view: a seed or a member we believe dead.
        // If it is alive on the other side of a healed partition, the exchange merges views.
        let live_addrs: BTreeSet<SocketAddr> = self
            .members
            .values()
            .filter(|r| r.member.state.is_live())
            .map(|r| r.member.meta.addr)
            .collect();
        let mut candidates: Vec<(SocketAddr, Option<NodeId>)> = self
            .seeds
            .iter()
            .filter(|a| !live_addrs.contains(a))
            .map(|a| (*a, None))
            .collect();
        candidates.extend(
            self.members
                .values()
                .filter(|r| r.member.state == MemberState::Dead)
                .map(|r| (r.member.meta.addr, Some(r.member.id.clone()))),
        );
        if candidates.is_empty() {
            return;
        }
        let (addr, id) = candidates.swap_remove(self.rng.random_range(0..candidates.len()));
        self.send_digest(addr, id);
    }

    /// Sends our whole member table, split into as many datagrams as needed; only the first
    /// asks for a reply.
    pub(super) fn send_state(&mut self, to: SocketAddr, to_id: Option<NodeId>, reply: bool) {
        self.send_entries(to, to_id, reply, |_| true);
    }

    /// Sends the entries of our member table (ourselves included) whose id passes `filter`,
    /// split into as many datagrams as needed; only the first asks for a reply.
    pub(super) fn send_entries(
        &mut self,
        to: SocketAddr,
        to_id: Option<NodeId>,
        reply: bool,
        filter: impl Fn(&NodeId) -> bool,
    ) {
        let mut records = Vec::new();
        if filter(&self.me.id) {
            records.push(self.self_update());
        }
        records.extend(
            self.members
                .values()
                .filter(|r| filter(&r.member.id))
                .map(|r| {
                    let (id, incarnation) = (r.member.id.clone(), r.member.incarnation);
                    let accuser = self.me.id.clone();
                    match r.member.state {
                        MemberState::Alive => Update::Alive {
                            id,
                            incarnation,
                            meta: r.member.meta.clone(),
                        },
                        MemberState::Suspect => Update::Suspect {
                            id,
                            incarnation,
                            accuser,
                        },
                        MemberState::Dead => Update::Dead {
                            id,
                            incarnation,
                            accuser,
                        },
                        MemberState::Left => Update::Left { id, incarnation },
                    }
                }),
        );
        let mut reply = reply;
        let mut records = records.into_iter().peekable();
        while records.peek().is_some() {
            let mut packet = Packet {
                sender: self.me.id.clone(),
                body: Body::PushPull { reply },
                updates: Vec::new(),
            };
            let mut budget = self.budget(&packet);
            while let Some(next) = records.peek() {
                let len = codec::encoded_len(next);
                if len > budget || packet.updates.len() >= MAX_UPDATES_PER_MESSAGE {
                    break;
                }
                budget -= len;
                packet.updates.extend(records.next());
            }
            if packet.updates.is_empty() {
                break; // cannot happen with bounded records; avoids looping forever
            }
            self.transmit(to, to_id.clone(), &packet);
            reply = false;
        }
    }
}
