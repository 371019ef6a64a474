//! The piggyback queue: membership updates waiting to ride on outgoing messages.
//!
//! Each update is sent about `λ · ceil(log10(n + 1))` times; updates sent fewer times go first,
//! and among those the newest first (memberlist's transmit-limited queue). A newer update about
//! the same member replaces the queued one.

use std::collections::BTreeMap;

use crate::codec::encoded_len;
use crate::id::NodeId;
use crate::message::Update;

/// Piggybacked updates per message, so the vector length prefix stays one byte.
pub(crate) const MAX_UPDATES_PER_MESSAGE: usize = 64;

#[derive(Debug, Default)]
pub(crate) struct BroadcastQueue {
    /// Ordered by (times sent, reverse insertion order).
    queue: BTreeMap<(u32, u64), Queued>,
    by_id: BTreeMap<NodeId, (u32, u64)>,
    inserted: u64,
}

#[derive(Debug)]
struct Queued {
    update: Update,
    len: usize,
}

impl BroadcastQueue {
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Queues `update`, replacing any queued update about the same member.
    pub fn push(&mut self, update: Update) {
        if let Some(key) = self.by_id.remove(update.id()) {
            self.queue.remove(&key);
        }
        self.inserted += 1;
        let key = (0, u64::MAX - self.inserted);
        self.by_id.insert(update.id().clone(), key);
        let len = encoded_len(&update);
        self.queue.insert(key, Queued { update, len });
    }

    /// Whether an update about `id` is waiting.
    pub fn contains(&self, id: &NodeId) -> bool {
        self.by_id.contains_key(id)
    }

    /// Takes updates that fit in `budget` bytes, counting one transmission for each and
    /// dropping those sent `limit` times. `first` (the buddy-system suspicion) goes first
    /// if it fits.
    pub fn select(&mut self, mut budget: usize, limit: u32, first: Option<Update>) -> Vec<Update> {
        let mut out = Vec::new();
        if let Some(u) = first {
            let len = encoded_len(&u);
            if len <= budget {
                budget -= len;
                out.push(u);
            }
        }
        let mut taken = Vec::new();
        for (key, q) in &self.queue {
            if out.len() + taken.len() >= MAX_UPDATES_PER_MESSAGE || budget == 0 {
                break;
            }
            if q.len <= budget && out.iter().all(|u: &Update| u.id() != q.update.id()) {
                budget -= q.len;
                taken.push(*key);
            }
        }
        for key in taken {
            let q = self.queue.remove(&key).expect("key was just seen");
            out.push(q.update.clone());
            let id = q.update.id().clone();
            if key.0 + 1 < limit {
                let new_key = (key.0 + 1, key.1);
                self.by_id.insert(id, new_key);
                self.queue.insert(new_key, q);
            } else {
                self.by_id.remove(&id);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn left(id: &str, incarnation: u64) -> Update {
        Update::Left {
            id: NodeId::new(id).unwrap(),
            incarnation,
        }
    }

    #[test]
    fn retransmits_up_to_limit_fewest_sent_first() {
        let mut q = BroadcastQueue::default();
        q.push(left("a", 1));
        q.push(left("b", 1));
        assert_eq!(q.select(1000, 2, None).len(), 2);
        q.push(left("c", 1));
        let next = q.select(1000, 2, None);
        assert_eq!(next[0], left("c", 1), "never-sent update goes first");
        assert_eq!(next.len(), 3);
        assert_eq!(q.len(), 1, "a and b reached the limit of 2");
        q.push(left("c", 2));
        assert_eq!(q.len(), 1, "a newer update replaces the queued one");
        assert_eq!(q.select(1000, 2, None), vec![left("c", 2)]);
    }

    #[test]
    fn respects_budget() {
        let mut q = BroadcastQueue::default();
        for i in 0..10 {
            q.push(left(&format!("n{i}"), 1));
        }
        let one = encoded_len(&left("n0", 1));
        assert_eq!(q.select(one * 3, 5, None).len(), 3);
        assert_eq!(q.select(0, 5, None).len(), 0);
    }
}
