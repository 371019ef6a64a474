//! Hinted handoff: delivering the hints this node holds for a primary, as a state machine
//! without I/O. The runtime's handoff worker starts a [`HandoffSession`] per target when
//! SWIM reports the target alive again, and periodically for every target with a backlog.
//!
//! Hints move in batches: one page read from the store is one delivery (one RPC, one durable
//! write at the target), and its acknowledgement deletes all of the page's delivered hints in
//! one write here. A few batches are in flight at once, so reading, sending and deleting
//! overlap, but never so many that a burst overruns the target's socket buffer.

use std::collections::{BTreeMap, VecDeque};

use shoal_membership::NodeId as MemberId;
use shoal_storage::{Hint, ValueHash};

/// Where a page of hints starts: after this `(partition, key)`.
pub type Cursor = Option<(u32, Vec<u8>)>;

/// A delivered hint to delete: partition, key, and the delivered record's hash.
pub type Delivered = (u32, Vec<u8>, ValueHash);

/// An output of a [`HandoffSession`].
#[derive(Debug, Clone)]
pub enum HandoffEffect {
    /// Read up to `limit` hints for the target after `after` (`Engine::hints`), then call
    /// [`handle_page`](HandoffSession::handle_page).
    Fetch {
        /// Start after this hint.
        after: Cursor,
        /// Page size.
        limit: usize,
    },
    /// Send `hints` to the target as one
    /// [`PeerRequest::DeliverHints`](crate::request::PeerRequest), then call
    /// [`handle_delivered`](HandoffSession::handle_delivered) or
    /// [`handle_failed`](HandoffSession::handle_failed) with `batch`. Hints the driver decides
    /// not to send are reported first with [`handle_skipped`](HandoffSession::handle_skipped).
    Deliver {
        /// The batch's number in this session.
        batch: u64,
        /// The hints.
        hints: Vec<Hint>,
    },
    /// The target acknowledged: delete each hint that still holds the delivered state, in one
    /// write (`Engine::remove_delivered_hints`; a hint merged with newer state meanwhile stays
    /// for the next session).
    Remove {
        /// The delivered hints.
        delivered: Vec<Delivered>,
    },
}

/// One pass over the hints held for one target.
///
/// # Call order
///
/// [`new`](Self::new), then drain [`poll_effect`](Self::poll_effect) after every input;
/// feed pages and delivery answers back. The session pages through the target's hints in
/// store order, sends each page as one batch with at most `max_in_flight` batches
/// outstanding, deletes a batch's hints only after the target acknowledged it, and stops
/// sending at the first failure (the target is likely down again; the worker retries later).
/// It is over when [`is_finished`](Self::is_finished): the last page was read, or a failure
/// happened, and nothing is in flight.
#[derive(Debug)]
pub struct HandoffSession {
    target: MemberId,
    page_size: usize,
    max_in_flight: usize,
    /// Pages read and not yet sent.
    queue: VecDeque<Vec<Hint>>,
    /// Batches sent and not yet answered: what deleting each would delete.
    in_flight: BTreeMap<u64, Vec<Delivered>>,
    next_batch: u64,
    cursor: Cursor,
    fetching: bool,
    last_page: bool,
    failed: bool,
    delivered: u64,
    skipped: u64,
    effects: VecDeque<HandoffEffect>,
}

impl HandoffSession {
    /// A session for `target`, reading and sending `page_size` hints at a time (at least 1)
    /// with at most `max_in_flight` batches outstanding (at least 1).
    pub fn new(target: MemberId, page_size: usize, max_in_flight: usize) -> Self {
        let mut session = Self {
            target,
            page_size: page_size.max(1),
            max_in_flight: max_in_flight.max(1),
            queue: VecDeque::new(),
            in_flight: BTreeMap::new(),
            next_batch: 0,
            cursor: None,
            fetching: false,
            last_page: false,
            failed: false,
            delivered: 0,
            skipped: 0,
            effects: VecDeque::new(),
        };
        session.pump();
        session
    }

    /// The node the hints are for.
    pub fn target(&self) -> &MemberId {
        &self.target
    }

    /// Hints delivered and acknowledged so far.
    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    /// Hints passed over in this session (see [`handle_skipped`](Self::handle_skipped)).
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// Whether a delivery failed (the session stopped early).
    pub fn failed(&self) -> bool {
        self.failed
    }

    /// The page asked for by the last `Fetch`: empty when there are no more hints, or reading
    /// them failed; the session then ends.
    pub fn handle_page(&mut self, hints: Vec<Hint>) {
        if !self.fetching {
            return;
        }
        self.fetching = false;
        // A page may be short because it is full in bytes: only an empty one is the last.
        if hints.is_empty() {
            self.last_page = true;
        }
        if let Some(last) = hints.last() {
            self.cursor = Some((last.partition, last.key.clone()));
        }
        if !hints.is_empty() {
            self.queue.push_back(hints);
        }
        self.pump();
    }

    /// The target acknowledged `batch`: its hints (less the skipped ones) are deleted.
    pub fn handle_delivered(&mut self, batch: u64) {
        if let Some(delivered) = self.in_flight.remove(&batch) {
            self.delivered += delivered.len() as u64;
            if !delivered.is_empty() {
                self.effects.push_back(HandoffEffect::Remove { delivered });
            }
            self.pump();
        }
    }

    /// The hint for `(partition, key)` in `batch` was not sent: its update is still on its way
    /// to the target by the coordinator's own replication, which deletes the hint once the
    /// target confirms. The hint is kept (a later session delivers it if that replication
    /// fails), and the rest of the batch goes on.
    pub fn handle_skipped(&mut self, batch: u64, partition: u32, key: &[u8]) {
        if let Some(items) = self.in_flight.get_mut(&batch) {
            let before = items.len();
            items.retain(|(p, k, _)| !(*p == partition && k == key));
            self.skipped += (before - items.len()) as u64;
        }
    }

    /// Delivering `batch` failed; its hints are kept.
    pub fn handle_failed(&mut self, batch: u64) {
        if self.in_flight.remove(&batch).is_some() {
            self.failed = true;
            self.queue.clear();
        }
    }

    /// Next output, or `None` when all were drained.
    pub fn poll_effect(&mut self) -> Option<HandoffEffect> {
        self.effects.pop_front()
    }

    /// Nothing more to do in this session.
    pub fn is_finished(&self) -> bool {
        self.in_flight.is_empty()
            && !self.fetching
            && (self.failed || (self.last_page && self.queue.is_empty()))
    }

    fn pump(&mut self) {
        if self.failed {
            return;
        }
        while self.in_flight.len() < self.max_in_flight {
            let Some(hints) = self.queue.pop_front() else {
                break;
            };
            let batch = self.next_batch;
            self.next_batch += 1;
            self.in_flight.insert(
                batch,
                hints
                    .iter()
                    .map(|h| (h.partition, h.key.clone(), h.record.hash()))
                    .collect(),
            );
            self.effects
                .push_back(HandoffEffect::Deliver { batch, hints });
        }
        // Read ahead one page while batches are in flight.
        if self.queue.is_empty() && !self.fetching && !self.last_page {
            self.fetching = true;
            self.effects.push_back(HandoffEffect::Fetch {
                after: self.cursor.clone(),
                limit: self.page_size,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_storage::{Kind, Record, Value};

    fn hint(key: &str) -> Hint {
        Hint {
            partition: 1,
            key: key.as_bytes().to_vec(),
            record: Record::encode(&Value::empty(Kind::Counter)).unwrap(),
            created_ms: 0,
        }
    }

    fn drain(s: &mut HandoffSession) -> Vec<HandoffEffect> {
        std::iter::from_fn(|| s.poll_effect()).collect()
    }

    fn removed_keys(effects: &[HandoffEffect]) -> Vec<Vec<u8>> {
        effects
            .iter()
            .flat_map(|e| match e {
                HandoffEffect::Remove { delivered } => {
                    delivered.iter().map(|(_, k, _)| k.clone()).collect()
                }
                _ => Vec::new(),
            })
            .collect()
    }

    #[test]
    fn pages_are_batches_and_only_acknowledged_batches_are_removed() {
        let mut s = HandoffSession::new(MemberId::new("c").unwrap(), 2, 8);
        assert!(matches!(
            &drain(&mut s)[..],
            [HandoffEffect::Fetch {
                after: None,
                limit: 2
            }]
        ));
        s.handle_page(vec![hint("a"), hint("b")]);
        let effects = drain(&mut s);
        assert!(
            matches!(
                &effects[..],
                [
                    HandoffEffect::Deliver { batch: 0, hints },
                    HandoffEffect::Fetch { after: Some((1, key)), limit: 2 },
                ] if hints.len() == 2 && key == b"b"
            ),
            "one batch of the page, and the next page read ahead: {effects:?}"
        );
        s.handle_page(vec![hint("c")]);
        let effects = drain(&mut s);
        assert!(
            matches!(
                &effects[..],
                [
                    HandoffEffect::Deliver { batch: 1, hints },
                    HandoffEffect::Fetch { after: Some((1, key)), .. },
                ] if hints.len() == 1 && key == b"c"
            ),
            "a short page may be full in bytes: the next one is read: {effects:?}"
        );
        s.handle_page(vec![]);
        assert!(drain(&mut s).is_empty(), "an empty page is the last");
        s.handle_delivered(1);
        assert_eq!(removed_keys(&drain(&mut s)), vec![b"c".to_vec()]);
        assert!(!s.is_finished(), "batch 0 is in flight");
        s.handle_delivered(0);
        assert_eq!(
            removed_keys(&drain(&mut s)),
            vec![b"a".to_vec(), b"b".to_vec()]
        );
        assert!(s.is_finished());
        assert_eq!(s.delivered(), 3);
        assert!(!s.failed());
    }

    #[test]
    fn at_most_max_in_flight_batches_are_outstanding() {
        let mut s = HandoffSession::new(MemberId::new("c").unwrap(), 1, 2);
        drain(&mut s);
        s.handle_page(vec![hint("a")]);
        drain(&mut s);
        s.handle_page(vec![hint("b")]);
        drain(&mut s);
        s.handle_page(vec![hint("c")]);
        let effects = drain(&mut s);
        assert!(
            !effects
                .iter()
                .any(|e| matches!(e, HandoffEffect::Deliver { .. })),
            "two batches are in flight already: {effects:?}"
        );
        s.handle_delivered(0);
        let effects = drain(&mut s);
        assert!(
            effects
                .iter()
                .any(|e| matches!(e, HandoffEffect::Deliver { batch: 2, .. })),
            "an answer frees a slot: {effects:?}"
        );
    }

    #[test]
    fn a_skipped_hint_is_kept_and_the_batch_goes_on() {
        let mut s = HandoffSession::new(MemberId::new("n2").unwrap(), 10, 1);
        drain(&mut s);
        s.handle_page(vec![hint("a"), hint("b")]);
        assert!(matches!(
            drain(&mut s)[..],
            [
                HandoffEffect::Deliver { batch: 0, .. },
                HandoffEffect::Fetch { .. }
            ]
        ));
        s.handle_page(vec![]);
        s.handle_skipped(0, 1, b"a");
        s.handle_delivered(0);
        assert_eq!(
            removed_keys(&drain(&mut s)),
            vec![b"b".to_vec()],
            "only the delivered hint is removed"
        );
        assert!(s.is_finished() && !s.failed());
        assert_eq!((s.delivered(), s.skipped()), (1, 1));
    }

    #[test]
    fn a_failure_stops_the_session_and_keeps_the_hints() {
        let mut s = HandoffSession::new(MemberId::new("c").unwrap(), 2, 1);
        drain(&mut s);
        s.handle_page(vec![hint("a"), hint("b")]);
        drain(&mut s);
        s.handle_page(vec![hint("c"), hint("d")]);
        assert!(drain(&mut s).is_empty(), "one batch in flight at a time");
        s.handle_failed(0);
        assert!(drain(&mut s).is_empty(), "no remove, no further delivery");
        assert!(s.is_finished() && s.failed());
        assert_eq!(s.delivered(), 0);
    }
}
