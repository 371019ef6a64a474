//! The get coordinator: one sloppy-quorum read with read repair, as a state machine without
//! I/O.

use std::collections::VecDeque;
use std::time::Duration;

use shoal_membership::NodeId as MemberId;
use shoal_storage::{Record, Value};

use super::error::{Outcome, QuorumError, QuorumOp, RequestError};
use super::targets::{Selection, Target};

/// A get that reached its read quorum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetOutcome {
    /// The merge of the replies (`None`: no replica has the key).
    pub value: Option<Value>,
    /// `value` as a record.
    pub record: Option<Record>,
    /// Replicas that answered.
    pub replies: usize,
    /// Replicas among them whose state was behind the merge (they are repaired).
    pub stale: Vec<MemberId>,
}

/// An output of a [`GetCoordinator`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GetEffect {
    /// Ask `target` for its record ([`PeerRequest::Read`](super::PeerRequest)), then report
    /// with [`handle_reply`](GetCoordinator::handle_reply) or
    /// [`handle_failure`](GetCoordinator::handle_failure).
    Read {
        /// Where to.
        target: Target,
    },
    /// Read repair, in the background: send the merged `record` to `target`, which is behind
    /// ([`PeerRequest::Replicate`](super::PeerRequest) with the target's `hint_for`; this
    /// node itself merges it locally). Nobody waits for the answer.
    Repair {
        /// The stale replica.
        target: Target,
        /// The merged state.
        record: Record,
    },
    /// The answer for the client; emitted exactly once.
    Done(Result<GetOutcome, RequestError>),
}

/// Coordinates one get with a sloppy quorum, then repairs the replicas that were behind.
///
/// # Call order
///
/// 1. [`new`](Self::new) with the targets from [`select_targets`](super::select_targets)
///    (this node among them); drain [`poll_effect`](Self::poll_effect): one `Read` per other
///    target. Read the local record and report it with [`handle_reply`](Self::handle_reply).
/// 2. Report every answer; call [`handle_timeout`](Self::handle_timeout) once `now` reaches
///    [`deadline`](Self::deadline). Drain effects after every input.
///
/// # Rules
///
/// - All targets are asked at once; the client is answered when R have replied (fallbacks
///   count), with the merge ([`Value::merge`]) of the replies so far.
/// - A reply that does not decode or does not merge (another type) counts as a failure.
/// - When every target has answered (or at the deadline), the merge of *all* replies is sent
///   to each replica whose state differs from it (read repair), including this node.
/// - A get changes nothing by itself, so a missed quorum is [`Outcome::Failed`].
#[derive(Debug)]
pub struct GetCoordinator {
    targets: Vec<(Target, Option<Option<Record>>)>,
    r: usize,
    deadline: Duration,
    merged: Option<Value>,
    replies: usize,
    failed: usize,
    errors: Vec<String>,
    done: bool,
    repaired: bool,
    effects: VecDeque<GetEffect>,
}

impl GetCoordinator {
    /// A coordinator on node `local` for `targets` (including `local`), read quorum `r`,
    /// answering by `deadline`. Errors as for
    /// [`UpdateCoordinator::new`](super::UpdateCoordinator::new).
    pub fn new(
        local: MemberId,
        selection: Selection,
        r: usize,
        deadline: Duration,
    ) -> Result<Self, RequestError> {
        let targets = selection.targets;
        if r == 0 {
            return Err(RequestError::Invalid("r must be at least 1".into()));
        }
        if !targets.iter().any(|t| t.node == local) {
            return Err(RequestError::Invalid(format!(
                "coordinator {local} is not a target"
            )));
        }
        if targets.len() < r {
            return Err(RequestError::Unavailable {
                live: targets.len(),
                required: r,
            });
        }
        let effects = targets
            .iter()
            .filter(|t| t.node != local)
            .map(|t| GetEffect::Read { target: t.clone() })
            .collect();
        Ok(Self {
            targets: targets.into_iter().map(|t| (t, None)).collect(),
            r,
            deadline,
            merged: None,
            replies: 0,
            failed: 0,
            errors: Vec::new(),
            done: false,
            repaired: false,
            effects,
        })
    }

    /// When the client must be answered, on the driver's clock.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// `from` answered with its record (`None`: it does not have the key).
    pub fn handle_reply(&mut self, from: &MemberId, record: Option<Record>) {
        let Some(index) = self.pending(from) else {
            return;
        };
        if let Some(record) = &record {
            let merged = record.decode().map_err(|e| e.to_string()).and_then(|v| {
                match self.merged.clone() {
                    None => Ok(v),
                    Some(mut m) => m.merge(v).map(|()| m).map_err(|e| e.to_string()),
                }
            });
            match merged {
                Ok(m) => self.merged = Some(m),
                Err(e) => return self.fail(index, e),
            }
        }
        self.targets[index].1 = Some(record);
        self.replies += 1;
        self.check();
    }

    /// `from` could not answer (`error` says why).
    pub fn handle_failure(&mut self, from: &MemberId, error: String) {
        if let Some(index) = self.pending(from) {
            self.fail(index, error);
        }
    }

    /// Call once `now >= deadline`: unanswered targets count as failed; repairs go out for
    /// the replies that came.
    pub fn handle_timeout(&mut self, now: Duration) {
        if now < self.deadline {
            return;
        }
        let pending = self.targets.iter().filter(|(_, r)| r.is_none()).count();
        if !self.done {
            let mut error = self.quorum_error();
            error.pending = pending;
            self.finish(Err(RequestError::Quorum(error)));
        }
        self.repair();
    }

    /// Next output, or `None` when all were drained.
    pub fn poll_effect(&mut self) -> Option<GetEffect> {
        self.effects.pop_front()
    }

    /// The client was answered and repairs were issued: the driver can drop the machine.
    pub fn is_finished(&self) -> bool {
        self.done && self.repaired
    }

    fn pending(&self, from: &MemberId) -> Option<usize> {
        if self.repaired {
            return None;
        }
        self.targets
            .iter()
            .position(|(t, r)| t.node == *from && r.is_none())
    }

    fn fail(&mut self, index: usize, error: String) {
        // A failed target is resolved with no reply; it is not repaired (it may be down).
        self.targets.remove(index);
        self.failed += 1;
        self.errors.push(error);
        self.check();
    }

    fn check(&mut self) {
        let pending = self.targets.iter().filter(|(_, r)| r.is_none()).count();
        if !self.done {
            if self.replies >= self.r {
                let outcome = self.outcome();
                self.finish(outcome);
            } else if self.replies + pending < self.r {
                let error = self.quorum_error();
                self.finish(Err(RequestError::Quorum(error)));
            }
        }
        if pending == 0 {
            self.repair();
        }
    }

    fn merged_record(&self) -> Result<Option<Record>, String> {
        self.merged
            .as_ref()
            .map(Record::encode)
            .transpose()
            .map_err(|e| e.to_string())
    }

    fn stale(&self, merged: &Option<Record>) -> Vec<Target> {
        let Some(merged) = merged else {
            return Vec::new();
        };
        self.targets
            .iter()
            .filter_map(|(t, reply)| match reply {
                Some(Some(r)) if r.hash() == merged.hash() => None,
                Some(_) => Some(t.clone()),
                None => None,
            })
            .collect()
    }

    fn outcome(&self) -> Result<GetOutcome, RequestError> {
        let record = self.merged_record().map_err(RequestError::Storage)?;
        Ok(GetOutcome {
            value: self.merged.clone(),
            stale: self.stale(&record).into_iter().map(|t| t.node).collect(),
            record,
            replies: self.replies,
        })
    }

    fn repair(&mut self) {
        if self.repaired {
            return;
        }
        self.repaired = true;
        let Ok(record) = self.merged_record() else {
            return;
        };
        for target in self.stale(&record) {
            self.effects.push_back(GetEffect::Repair {
                target,
                record: record.clone().expect("stale implies a merge"),
            });
        }
    }

    fn quorum_error(&self) -> QuorumError {
        QuorumError {
            op: QuorumOp::Get,
            required: self.r,
            succeeded: self.replies,
            failed: self.failed,
            pending: 0,
            targets: self.targets.len() + self.failed,
            outcome: Outcome::Failed,
            errors: self.errors.clone(),
        }
    }

    fn finish(&mut self, result: Result<GetOutcome, RequestError>) {
        if !self.done {
            self.done = true;
            self.effects.push_back(GetEffect::Done(result));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_storage::{Actor, Kind, SetOp, Update};

    fn id(n: &str) -> MemberId {
        MemberId::new(n).unwrap()
    }

    fn targets() -> Selection {
        Selection {
            targets: ["a", "b", "c"]
                .iter()
                .map(|n| Target {
                    node: id(n),
                    hint_for: None,
                })
                .collect(),
            unreplaced: Vec::new(),
        }
    }

    fn set(members: &[&str]) -> Record {
        let mut v = Value::empty(Kind::Set);
        for (i, m) in members.iter().enumerate() {
            let actor = Actor {
                node: i as u64,
                epoch: 1,
            };
            v.apply(actor, &Update::Set(SetOp::Add(vec![m.as_bytes().to_vec()])))
                .unwrap();
        }
        Record::encode(&v).unwrap()
    }

    fn drain(c: &mut GetCoordinator) -> Vec<GetEffect> {
        std::iter::from_fn(|| c.poll_effect()).collect()
    }

    const DEADLINE: Duration = Duration::from_secs(1);

    #[test]
    fn merges_r_replies_then_repairs_every_stale_replica() {
        let mut c = GetCoordinator::new(id("a"), targets(), 2, DEADLINE).unwrap();
        let reads: Vec<_> = drain(&mut c)
            .into_iter()
            .map(|e| match e {
                GetEffect::Read { target } => target.node,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(reads, [id("b"), id("c")]);
        c.handle_reply(&id("a"), Some(set(&["x"])));
        c.handle_reply(&id("b"), Some(set(&["x", "y"])));
        let effects = drain(&mut c);
        let [GetEffect::Done(Ok(outcome))] = &effects[..] else {
            panic!("{effects:?}")
        };
        assert_eq!(outcome.replies, 2);
        assert_eq!(outcome.stale, [id("a")]);
        assert_eq!(outcome.record.as_ref().unwrap(), &set(&["x", "y"]));
        // c has nothing: once it answers, a and c are repaired with the merge.
        c.handle_reply(&id("c"), None);
        let repaired: Vec<_> = drain(&mut c)
            .into_iter()
            .map(|e| match e {
                GetEffect::Repair { target, record } => {
                    assert_eq!(record, set(&["x", "y"]));
                    target.node
                }
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(repaired, [id("a"), id("c")]);
        assert!(c.is_finished());
    }

    #[test]
    fn a_missed_quorum_fails_with_counts_and_still_repairs_at_the_deadline() {
        let mut c = GetCoordinator::new(id("a"), targets(), 3, DEADLINE).unwrap();
        drain(&mut c);
        c.handle_reply(&id("a"), None);
        c.handle_reply(&id("b"), Some(set(&["x"])));
        assert!(drain(&mut c).is_empty());
        c.handle_timeout(DEADLINE);
        let effects = drain(&mut c);
        let GetEffect::Done(Err(RequestError::Quorum(q))) = &effects[0] else {
            panic!("{effects:?}")
        };
        assert_eq!((q.succeeded, q.pending, q.outcome), (2, 1, Outcome::Failed));
        assert!(matches!(&effects[1], GetEffect::Repair { target, .. } if target.node == id("a")));
        assert!(c.is_finished());
    }

    #[test]
    fn undecodable_or_mismatched_replies_count_as_failures() {
        let mut c = GetCoordinator::new(id("a"), targets(), 2, DEADLINE).unwrap();
        drain(&mut c);
        c.handle_reply(&id("a"), Some(set(&["x"])));
        let counter = Record::encode(&Value::empty(Kind::Counter)).unwrap();
        c.handle_reply(&id("b"), Some(counter));
        c.handle_failure(&id("c"), "unreachable".into());
        let effects = drain(&mut c);
        let GetEffect::Done(Err(RequestError::Quorum(q))) = &effects[0] else {
            panic!("{effects:?}")
        };
        assert_eq!((q.succeeded, q.failed), (1, 2));
    }

    #[test]
    fn nobody_has_the_key() {
        let mut c = GetCoordinator::new(id("a"), targets(), 2, DEADLINE).unwrap();
        drain(&mut c);
        c.handle_reply(&id("a"), None);
        c.handle_reply(&id("c"), None);
        let effects = drain(&mut c);
        assert!(matches!(
            &effects[..],
            [GetEffect::Done(Ok(GetOutcome {
                value: None,
                replies: 2,
                ..
            }))]
        ));
    }
}
