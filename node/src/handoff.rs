//! Hinted handoff: delivering the hints this node holds for a primary, as a state machine
//! without I/O. The runtime's handoff worker starts a [`HandoffSession`] per target when
//! SWIM reports the target alive again, and periodically for every target with a backlog.

use std::collections::{BTreeMap, VecDeque};

use shoal_membership::NodeId as MemberId;
use shoal_storage::{Hint, ValueHash};

/// Where a page of hints starts: after this `(partition, key)`.
pub type Cursor = Option<(u32, Vec<u8>)>;

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
    /// Send `hint` to the target (the driver sends the `Deliver`s of one poll together, as
    /// one [`PeerRequest::DeliverHints`](crate::request::PeerRequest)),
    /// then call [`handle_delivered`](HandoffSession::handle_delivered) or
    /// [`handle_failed`](HandoffSession::handle_failed).
    Deliver {
        /// The hint.
        hint: Hint,
    },
    /// The target acknowledged: delete the hint if it still holds the delivered state
    /// (`Engine::remove_hint(target, partition, key, hash)`; a hint merged with newer state
    /// meanwhile stays for the next session).
    Remove {
        /// The hint's partition.
        partition: u32,
        /// The hint's key.
        key: Vec<u8>,
        /// The delivered record's hash.
        hash: ValueHash,
    },
}

/// One pass over the hints held for one target.
///
/// # Call order
///
/// [`new`](Self::new), then drain [`poll_effect`](Self::poll_effect) after every input;
/// feed pages and delivery answers back. The session pages through the target's hints in
/// store order with at most `max_in_flight` deliveries outstanding, deletes a hint only after
/// the target acknowledged it, and stops sending at the first failure (the target is likely
/// down again; the worker retries later). It is over when
/// [`is_finished`](Self::is_finished): the last page was read, or a failure happened, and
/// nothing is in flight.
#[derive(Debug)]
pub struct HandoffSession {
    target: MemberId,
    page_size: usize,
    max_in_flight: usize,
    queue: VecDeque<Hint>,
    in_flight: BTreeMap<(u32, Vec<u8>), ValueHash>,
    cursor: Cursor,
    fetching: bool,
    last_page: bool,
    failed: bool,
    delivered: u64,
    skipped: u64,
    effects: VecDeque<HandoffEffect>,
}

impl HandoffSession {
    /// A session for `target`, reading `page_size` hints at a time (at least 1) with at most
    /// `max_in_flight` deliveries outstanding (at least 1).
    pub fn new(target: MemberId, page_size: usize, max_in_flight: usize) -> Self {
        let mut session = Self {
            target,
            page_size: page_size.max(1),
            max_in_flight: max_in_flight.max(1),
            queue: VecDeque::new(),
            in_flight: BTreeMap::new(),
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

    /// The page asked for by the last `Fetch` (empty when reading hints failed: the session
    /// then ends).
    pub fn handle_page(&mut self, hints: Vec<Hint>) {
        if !self.fetching {
            return;
        }
        self.fetching = false;
        if hints.len() < self.page_size {
            self.last_page = true;
        }
        if let Some(last) = hints.last() {
            self.cursor = Some((last.partition, last.key.clone()));
        }
        self.queue.extend(hints);
        self.pump();
    }

    /// The target acknowledged the hint for `(partition, key)`.
    pub fn handle_delivered(&mut self, partition: u32, key: &[u8]) {
        if let Some(hash) = self.in_flight.remove(&(partition, key.to_vec())) {
            self.delivered += 1;
            self.effects.push_back(HandoffEffect::Remove {
                partition,
                key: key.to_vec(),
                hash,
            });
            self.pump();
        }
    }

    /// The hint for `(partition, key)` was not sent: its update is still on its way to the
    /// target by the coordinator's own replication, which deletes the hint once the target
    /// confirms. The hint is kept (a later session delivers it if that replication fails), and
    /// the session goes on.
    pub fn handle_skipped(&mut self, partition: u32, key: &[u8]) {
        if self.in_flight.remove(&(partition, key.to_vec())).is_some() {
            self.skipped += 1;
            self.pump();
        }
    }

    /// Delivering the hint for `(partition, key)` failed; the hint is kept.
    pub fn handle_failed(&mut self, partition: u32, key: &[u8]) {
        if self.in_flight.remove(&(partition, key.to_vec())).is_some() {
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
            let Some(hint) = self.queue.pop_front() else {
                break;
            };
            self.in_flight
                .insert((hint.partition, hint.key.clone()), hint.record.hash());
            self.effects.push_back(HandoffEffect::Deliver { hint });
        }
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

    #[test]
    fn pages_through_and_removes_only_acknowledged_hints() {
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
        assert_eq!(
            effects.len(),
            3,
            "two deliveries and the next page: {effects:?}"
        );
        assert!(matches!(
            &effects[2],
            HandoffEffect::Fetch {
                after: Some((1, key)),
                limit: 2
            } if key == b"b"
        ));
        s.handle_delivered(1, b"a");
        assert!(matches!(&drain(&mut s)[..], [HandoffEffect::Remove { key, .. }] if key == b"a"));
        s.handle_page(vec![]);
        assert!(!s.is_finished(), "b is in flight");
        s.handle_delivered(1, b"b");
        drain(&mut s);
        assert!(s.is_finished());
        assert_eq!(s.delivered(), 2);
        assert!(!s.failed());
    }

    #[test]
    fn a_skipped_hint_is_kept_and_the_session_goes_on() {
        let mut s = HandoffSession::new(MemberId::new("n2").unwrap(), 10, 1);
        drain(&mut s);
        s.handle_page(vec![hint("a"), hint("b")]);
        assert!(matches!(drain(&mut s)[..], [HandoffEffect::Deliver { .. }]));
        s.handle_skipped(1, b"a");
        let effects = drain(&mut s);
        assert!(
            matches!(&effects[..], [HandoffEffect::Deliver { hint }] if hint.key == b"b"),
            "{effects:?}"
        );
        s.handle_delivered(1, b"b");
        let effects = drain(&mut s);
        assert!(
            matches!(&effects[..], [HandoffEffect::Remove { key, .. }] if key == b"b"),
            "only the delivered hint is removed: {effects:?}"
        );
        assert!(s.is_finished() && !s.failed());
        assert_eq!((s.delivered(), s.skipped()), (1, 1));
    }

    #[test]
    fn a_failure_stops_the_session_and_keeps_the_hint() {
        let mut s = HandoffSession::new(MemberId::new("c").unwrap(), 10, 1);
        drain(&mut s);
        s.handle_page(vec![hint("a"), hint("b")]);
        let effects = drain(&mut s);
        assert_eq!(effects.len(), 1, "one in flight at a time");
        s.handle_failed(1, b"a");
        assert!(drain(&mut s).is_empty(), "no remove, no further delivery");
        assert!(s.is_finished() && s.failed());
    }
}
