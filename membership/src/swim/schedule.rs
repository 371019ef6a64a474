//! The cluster-aligned probe schedule: which member this one probes in each round.
//!
//! SWIM has each member probe the next member of its own shuffled round-robin list, at its
//! own phase. That bounds how long one prober leaves a member alone (under two rounds of the
//! list), but the cluster as a whole probes a given member at uncoordinated times: the wait
//! from a crash until anyone probes the crashed member is roughly exponential with a mean of
//! one probe interval, so its p99 is about 4.6 intervals. That wait, not the suspicion or the
//! gossip, is what kept the p99 detection time far above the floor in small clusters.
//!
//! Here every member derives the same schedule from what it already shares with the others:
//!
//! - **Rounds.** Round `r = ⌊t / probe_interval⌋` on the schedule clock `t` (a clock the
//!   members share: the wall clock in the node, the virtual clock in the simulator), and
//!   probe ticks fire at round boundaries. A member whose Lifeguard health multiplier is `m`
//!   probes only in rounds at least `m` after its last probe: it skips rounds, and is back in
//!   every round as soon as its health recovers (decided at each boundary, not when the last
//!   probe was sent).
//! - **Order.** The live members of the view (alive and suspect, this one included), sorted
//!   by a 64-bit hash of each id seeded with the cycle number `c = ⌊r / (n − 1)⌋`: a common
//!   pseudo-random permutation, drawn anew every cycle so that pairs do not stay fixed.
//! - **Target.** In round `r` the member at position `p` probes position
//!   `(p + 1 + r mod (n − 1)) mod n`. For one round this is a permutation without fixed
//!   points (every member is probed by exactly one other); over the `n − 1` rounds of a cycle
//!   each member probes every other member exactly once, which is SWIM's round-robin
//!   completeness.
//!
//! With agreeing views a crashed member is probed at the first round boundary after the
//! crash (within one interval, uniformly), instead of after an exponential wait.
//!
//! **Views that disagree** (a join or a death still spreading, a partition) give members
//! different orders, so in those rounds a member may be probed by none or by several: the
//! behaviour falls back to about that of independent random probing, and returns to the
//! aligned schedule as soon as the views agree again (a view change rebuilds the order). What
//! does not degrade is each prober's own completeness: it counts its probes, and a member of
//! its view that it has not probed for `2 (n − 1)` of them (more than the longest gap the
//! schedule leaves with a stable view, `2n − 3`) gets a catch-up probe in the next round, in
//! addition to the scheduled one (replacing the scheduled probe would leave that round's
//! target unprobed by anyone, which after view changes delayed detections by a round).
//! So no member of a prober's view goes unprobed by it for much longer than SWIM's shuffled
//! round-robin list would allow (`2 (n − 1)` probes, plus one round per other member overdue
//! at the same time), whatever the other members believe or whatever the clocks say. With
//! stable views no catch-up probe is ever sent.
//!
//! Nothing of this is on the wire: the schedule is computed from the member ids and the
//! clock.

use std::collections::BTreeMap;

use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::id::NodeId;

/// This member's copy of the schedule: the order for the current cycle and view, and when it
/// last probed each member of its view.
#[derive(Debug, Default)]
pub(super) struct Schedule {
    /// Live members in this cycle's order, this one included.
    order: Vec<NodeId>,
    /// This member's position in `order`.
    me: usize,
    /// The cycle `order` was drawn for.
    cycle: u64,
    /// The view changed since `order` was built.
    stale: bool,
    /// Probes this member has sent from the schedule.
    probes: u64,
    /// For each member of the view: the value of `probes` when it was last probed, or when
    /// it entered the view.
    last: BTreeMap<NodeId, u64>,
}

/// The cycle of round `round` with `n ≥ 2` members: each cycle is `n − 1` rounds long.
pub(super) fn cycle_of(round: u64, n: usize) -> u64 {
    round / (n as u64 - 1).max(1)
}

/// `ids` in the order of cycle `cycle`: by a stable hash of the id seeded with the cycle (the
/// same on every platform and version), ties broken by id.
pub(super) fn cycle_order(mut ids: Vec<NodeId>, cycle: u64) -> Vec<NodeId> {
    ids.sort_by_cached_key(|id| (xxh3_64_with_seed(id.as_str().as_bytes(), cycle), id.clone()));
    ids
}

/// The position the member at `pos` of an `n`-member order probes in round `round`.
pub(super) fn target_position(pos: usize, n: usize, round: u64) -> usize {
    debug_assert!(n >= 2 && pos < n);
    (pos + 1 + (round % (n as u64 - 1)) as usize) % n
}

impl Schedule {
    /// The view (the set of live members) changed: rebuild the order before the next probe.
    pub(super) fn invalidate(&mut self) {
        self.stale = true;
    }

    /// `id` became live: rebuild the order before the next probe, and until then keep `id`
    /// among the members [`order`](Self::order) offers for random picks (gossip, ping-req).
    pub(super) fn add(&mut self, id: NodeId) {
        self.order.push(id);
        self.stale = true;
    }

    /// The order in use, possibly stale: it may hold members no longer live and, at its end,
    /// members added since it was built. For random picks; check each member's state.
    pub(super) fn order(&self) -> &[NodeId] {
        &self.order
    }

    /// The member to probe in round `round` and, rarely, a member of the view this one has
    /// not probed for `2 (n − 1)` of its probes (to probe as well); `None` when the view
    /// holds no one else.
    ///
    /// `view` lists the live members, `me` included; it is called only when the order must be
    /// rebuilt (the view changed or a new cycle began).
    pub(super) fn next_targets(
        &mut self,
        me: &NodeId,
        round: u64,
        view: impl FnOnce() -> Vec<NodeId>,
    ) -> Option<(NodeId, Option<NodeId>)> {
        if self.stale || self.order.len() < 2 || self.cycle != cycle_of(round, self.order.len()) {
            self.rebuild(me, round, view());
        }
        let n = self.order.len();
        if n < 2 {
            return None;
        }
        let scheduled = self.order[target_position(self.me, n, round)].clone();
        let limit = 2 * (n as u64 - 1);
        let overdue = self
            .last
            .iter()
            .filter(|(id, at)| **id != scheduled && self.probes - **at >= limit)
            .min_by_key(|(_, at)| **at)
            .map(|(id, _)| id.clone());
        self.probes += 1;
        for id in std::iter::once(&scheduled).chain(&overdue) {
            if let Some(at) = self.last.get_mut(id) {
                *at = self.probes;
            }
        }
        Some((scheduled, overdue))
    }

    fn rebuild(&mut self, me: &NodeId, round: u64, mut view: Vec<NodeId>) {
        if !view.contains(me) {
            view.push(me.clone());
        }
        self.cycle = cycle_of(round, view.len());
        self.order = cycle_order(view, self.cycle);
        self.me = self
            .order
            .iter()
            .position(|id| id == me)
            .expect("added above");
        self.stale = false;
        let probes = self.probes;
        let known = std::mem::take(&mut self.last);
        self.last = self
            .order
            .iter()
            .filter(|id| *id != me)
            .map(|id| (id.clone(), known.get(id).copied().unwrap_or(probes)))
            .collect();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    fn ids(n: usize) -> Vec<NodeId> {
        (0..n)
            .map(|i| NodeId::new(format!("n{i}")).unwrap())
            .collect()
    }

    /// Each member's target in `round`, everyone holding the view `view`.
    fn targets(view: &[NodeId], round: u64) -> BTreeMap<NodeId, NodeId> {
        let order = cycle_order(view.to_vec(), cycle_of(round, view.len()));
        (0..order.len())
            .map(|p| {
                let t = target_position(p, order.len(), round);
                (order[p].clone(), order[t].clone())
            })
            .collect()
    }

    #[test]
    fn each_round_is_a_permutation_without_fixed_points() {
        for n in [2, 3, 10, 37, 100] {
            let view = ids(n);
            for round in 0..3 * n as u64 {
                let targets = targets(&view, round);
                let probed: BTreeSet<_> = targets.values().collect();
                assert_eq!(probed.len(), n, "n {n} round {round}: one prober each");
                assert!(targets.iter().all(|(p, t)| p != t), "n {n}: no self-probe");
            }
        }
    }

    #[test]
    fn a_cycle_probes_every_other_member_once() {
        for n in [2, 3, 10, 37, 100] {
            let view = ids(n);
            let me = &view[n / 2];
            for cycle in [0, 1, 7] {
                let first = cycle * (n as u64 - 1);
                let mut schedule = Schedule::default();
                let probed: Vec<_> = (first..first + n as u64 - 1)
                    .map(|r| {
                        let (target, overdue) =
                            schedule.next_targets(me, r, || view.clone()).unwrap();
                        assert_eq!(overdue, None);
                        target
                    })
                    .collect();
                let distinct: BTreeSet<_> = probed.iter().collect();
                assert_eq!(distinct.len(), n - 1, "n {n} cycle {cycle}");
                assert!(!distinct.contains(me));
            }
        }
    }

    #[test]
    fn cycles_draw_different_orders() {
        let view = ids(10);
        assert_ne!(cycle_order(view.clone(), 0), cycle_order(view.clone(), 1));
        assert_eq!(cycle_order(view.clone(), 3), cycle_order(view, 3));
    }

    #[test]
    fn the_order_is_stable_across_versions() {
        // A change of hash or seeding would misalign members running different versions.
        let order: Vec<String> = cycle_order(ids(5), 1)
            .into_iter()
            .map(String::from)
            .collect();
        assert_eq!(order, STABLE_ORDER);
    }

    const STABLE_ORDER: [&str; 5] = ["n3", "n4", "n0", "n2", "n1"];

    /// A member whose view changes often, in rounds that jump around, still probes every
    /// member of its view at least once every `3 (n − 1)` probes: overdue after `2 (n − 1)`,
    /// and served one per round.
    #[test]
    fn disagreeing_views_still_probe_everyone() {
        let all = ids(20);
        let partial: Vec<_> = all[..15].to_vec();
        for (me, view) in [(&all[0], &partial), (&all[17], &all)] {
            let mut schedule = Schedule::default();
            let n = view.len();
            let mut last_seen: BTreeMap<NodeId, u64> = BTreeMap::new();
            let mut worst = 0;
            let mut round: u64 = 0;
            for step in 0..40 * n as u64 {
                // Rounds jump around (skipped rounds, a clock stepped back) and the view is
                // rebuilt often, as while a join spreads.
                round = if step % 7 == 3 {
                    round.saturating_sub(5)
                } else {
                    round + 1 + step % 3
                };
                if step % 11 == 0 {
                    schedule.invalidate();
                }
                let (target, overdue) = schedule.next_targets(me, round, || view.clone()).unwrap();
                for id in std::iter::once(target).chain(overdue) {
                    assert!(view.contains(&id) && id != *me);
                    let prev = last_seen.insert(id, step + 1).unwrap_or(0);
                    worst = worst.max(step + 1 - prev);
                }
            }
            assert_eq!(last_seen.len(), n - 1, "every other member was probed");
            for at in last_seen.values() {
                worst = worst.max(40 * n as u64 + 1 - at);
            }
            assert!(
                worst <= 3 * (n as u64 - 1),
                "a member waited {worst} probes (n = {n})"
            );
        }
    }

    /// Five newcomers are known to themselves and to members n0..n4, not yet to n5..n14:
    /// over any two cycles every member of the cluster is still probed by someone.
    #[test]
    fn disagreeing_views_leave_no_member_unprobed() {
        let all = ids(20);
        let views: Vec<Vec<NodeId>> = (0..20)
            .map(|i| {
                if (5..15).contains(&i) {
                    all[..15].to_vec()
                } else {
                    all.clone()
                }
            })
            .collect();
        let mut schedules: Vec<Schedule> = all.iter().map(|_| Schedule::default()).collect();
        let mut round = 1000;
        for _ in 0..10 {
            let mut probed = BTreeSet::new();
            for _ in 0..2 * 14 {
                for ((me, view), schedule) in all.iter().zip(&views).zip(&mut schedules) {
                    let (target, overdue) =
                        schedule.next_targets(me, round, || view.clone()).unwrap();
                    probed.extend(std::iter::once(target).chain(overdue));
                }
                round += 1;
            }
            assert_eq!(probed.len(), all.len(), "rounds up to {round}");
        }
    }

    /// Stable views: no member is ever overdue, so members send exactly the scheduled probes
    /// and every round is a permutation, cycle after cycle.
    #[test]
    fn agreeing_members_follow_the_schedule_exactly() {
        let view = ids(12);
        let mut schedules: Vec<Schedule> = view.iter().map(|_| Schedule::default()).collect();
        for round in 100..100 + 20 * 11 {
            let mut probed = BTreeSet::new();
            for (me, schedule) in view.iter().zip(&mut schedules) {
                let (target, overdue) = schedule.next_targets(me, round, || view.clone()).unwrap();
                assert_eq!(overdue, None);
                assert_eq!(target, targets(&view, round)[me]);
                probed.insert(target);
            }
            assert_eq!(probed.len(), view.len(), "round {round}");
        }
    }

    #[test]
    fn a_member_alone_probes_no_one() {
        let me = &ids(1)[0];
        let mut schedule = Schedule::default();
        assert_eq!(schedule.next_targets(me, 5, Vec::new), None);
        assert_eq!(schedule.next_targets(me, 6, || vec![me.clone()]), None);
    }
}
