//! The update coordinator: one sloppy-quorum write as a state machine without I/O.

use std::collections::VecDeque;
use std::time::Duration;

use shoal_membership::NodeId as MemberId;
use shoal_storage::Record;

use super::error::{Outcome, QuorumError, QuorumOp, RequestError};
use super::targets::{Selection, Target};

/// An update that reached its write quorum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acknowledged {
    /// Replicas that had persisted it when it was acknowledged (at least W, the coordinator
    /// included).
    pub acks: usize,
    /// The coordinator's resulting state of the key (what the replicas were sent); `None`
    /// only for a delete of a key that never existed (nothing to do, nothing sent).
    pub record: Option<Record>,
}

/// An output of an [`UpdateCoordinator`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpdateEffect {
    /// Send `record` to `target` ([`PeerRequest::Replicate`](super::PeerRequest), with the
    /// target's `hint_for`), then report the answer with
    /// [`handle_ack`](UpdateCoordinator::handle_ack) or
    /// [`handle_failure`](UpdateCoordinator::handle_failure).
    Replicate {
        /// Where to.
        target: Target,
        /// The coordinator's state after the update.
        record: Record,
    },
    /// A target did not confirm it persisted the update: keep `record` as a local hint for
    /// `owner` (the primary that must end up with it), so hinted handoff delivers it.
    StoreHint {
        /// The primary the hint is for.
        owner: MemberId,
        /// The state to deliver.
        record: Record,
    },
    /// The answer for the client; emitted exactly once. The machine may still have work
    /// after it (late answers, hints), until [`is_finished`](UpdateCoordinator::is_finished).
    Done(Result<Acknowledged, RequestError>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Pending,
    Acked,
    Failed,
}

/// Coordinates one update with a sloppy quorum (Dynamo's "put" coordinator).
///
/// # Call order
///
/// 1. [`new`](Self::new) with the targets from
///    [`select_targets`](super::select_targets), which must include this node: a node that
///    is not a target forwards the request instead.
/// 2. The driver applies the update to the local store with its own actor and persists it (a
///    fallback coordinator also stores the result as a hint for the primary it replaces),
///    then calls [`handle_local`](Self::handle_local) with the resulting record or the error.
/// 3. It drains [`poll_effect`](Self::poll_effect) after every input, feeds each target's
///    answer back, and calls [`handle_timeout`](Self::handle_timeout) once `now` reaches
///    [`deadline`](Self::deadline). Every RPC must resolve by the deadline.
///
/// # Rules
///
/// - The update is acknowledged once W replicas persisted it, the coordinator included.
/// - A local refusal (wrong type, too large, corrupt record) fails the update before anything
///   is sent: [`Outcome::Failed`]. A local write that failed in the store's backend (a full
///   disk) sends nothing either, but may have reached the store's log: [`Outcome::Unknown`].
/// - Once the local write succeeded, a missed quorum (failures, or the deadline before W
///   acks) is [`Outcome::Unknown`], never failed: the state is on this replica at least and
///   will spread.
/// - Every target that does not confirm (error or no answer by the deadline) gets a local
///   hint for its owner, and so does every down primary no fallback replaced
///   ([`Selection::unreplaced`](super::Selection)), so the update reaches every primary once
///   it is reachable again.
#[derive(Debug)]
pub struct UpdateCoordinator {
    local: MemberId,
    targets: Vec<(Target, Status)>,
    unreplaced: Vec<MemberId>,
    w: usize,
    deadline: Duration,
    record: Option<Record>,
    acks: usize,
    errors: Vec<String>,
    done: bool,
    timed_out: bool,
    effects: VecDeque<UpdateEffect>,
}

impl UpdateCoordinator {
    /// A coordinator on node `local` for `targets` (including `local`), write quorum `w`, to
    /// answer by `deadline` (driver's clock).
    ///
    /// Errors, with nothing done: `w` is 0 ([`RequestError::Invalid`]), `local` is not a
    /// target (`Invalid`), fewer targets than `w` ([`RequestError::Unavailable`]).
    pub fn new(
        local: MemberId,
        selection: Selection,
        w: usize,
        deadline: Duration,
    ) -> Result<Self, RequestError> {
        let Selection {
            targets,
            unreplaced,
        } = selection;
        if w == 0 {
            return Err(RequestError::Invalid("w must be at least 1".into()));
        }
        if !targets.iter().any(|t| t.node == local) {
            return Err(RequestError::Invalid(format!(
                "coordinator {local} is not a target"
            )));
        }
        if targets.len() < w {
            return Err(RequestError::Unavailable {
                live: targets.len(),
                required: w,
            });
        }
        Ok(Self {
            local,
            targets: targets.into_iter().map(|t| (t, Status::Pending)).collect(),
            unreplaced,
            w,
            deadline,
            record: None,
            acks: 0,
            errors: Vec::new(),
            done: false,
            timed_out: false,
            effects: VecDeque::new(),
        })
    }

    /// When the client must be answered, on the driver's clock.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// This node's target entry (its `hint_for` says whether it coordinates as a fallback).
    pub fn local_target(&self) -> &Target {
        &self
            .targets
            .iter()
            .find(|(t, _)| t.node == self.local)
            .expect("checked in new")
            .0
    }

    /// The nodes the driver writes hints for in the same durable write as the local update
    /// (write-ahead hints): the owner of every other target (the primary itself, or the one
    /// a fallback stands in for), every down primary no fallback replaced, and the primary
    /// this node stands in for. If this node crashes before a target confirms, the hint
    /// still delivers the update after restart.
    pub fn write_ahead_owners(&self) -> Vec<MemberId> {
        let mut owners: Vec<MemberId> = self
            .targets
            .iter()
            .filter(|(t, _)| t.node != self.local)
            .map(|(t, _)| t.owner().clone())
            .chain(self.unreplaced.iter().cloned())
            .chain(self.local_target().hint_for.iter().cloned())
            .collect();
        owners.sort();
        owners.dedup();
        owners
    }

    /// The record the local write persisted, once it did.
    pub fn record(&self) -> Option<&Record> {
        self.record.as_ref()
    }

    /// The result of the local write: the persisted record, or why it failed
    /// ([`RequestError::Storage`] or [`RequestError::StorageWrite`]).
    pub fn handle_local(&mut self, result: Result<Record, RequestError>) {
        if self.done || self.record.is_some() {
            return;
        }
        let record = match result {
            Ok(record) => record,
            Err(e) => {
                for (_, status) in &mut self.targets {
                    *status = Status::Failed;
                }
                self.finish(Err(e));
                return;
            }
        };
        self.record = Some(record.clone());
        let local = self.local.clone();
        for (target, status) in &mut self.targets {
            if target.node == local {
                *status = Status::Acked;
            } else {
                self.effects.push_back(UpdateEffect::Replicate {
                    target: target.clone(),
                    record: record.clone(),
                });
            }
        }
        for owner in &self.unreplaced {
            self.effects.push_back(UpdateEffect::StoreHint {
                owner: owner.clone(),
                record: record.clone(),
            });
        }
        self.acks = 1;
        self.check();
    }

    /// `from` persisted the record. Duplicates and answers after the deadline are ignored.
    pub fn handle_ack(&mut self, from: &MemberId) {
        if let Some(status) = self.pending_status(from) {
            *status = Status::Acked;
            self.acks += 1;
            self.check();
        }
    }

    /// `from` did not persist the record, or it is unknown whether it did (`error` says
    /// why). Its owner gets a local hint.
    pub fn handle_failure(&mut self, from: &MemberId, error: String) {
        if let Some(status) = self.pending_status(from) {
            *status = Status::Failed;
            self.errors.push(format!("{from}: {error}"));
            self.hint_for(from);
            self.check();
        }
    }

    /// Call once `now >= deadline`: every unanswered target counts as failed (and gets a
    /// hint), and a client not yet answered gets [`Outcome::Unknown`] (or the local error).
    pub fn handle_timeout(&mut self, now: Duration) {
        if now < self.deadline || self.timed_out {
            return;
        }
        self.timed_out = true;
        let pending: Vec<MemberId> = self
            .targets
            .iter()
            .filter(|(_, s)| *s == Status::Pending)
            .map(|(t, _)| t.node.clone())
            .collect();
        if self.record.is_none() {
            // The local write never reported: nothing was sent, but it may have persisted.
            let error = self.quorum_error(Outcome::Unknown);
            for (_, status) in &mut self.targets {
                *status = Status::Failed;
            }
            self.finish(Err(RequestError::Quorum(error)));
            return;
        }
        let unanswered = pending.len();
        for node in &pending {
            self.hint_for(node);
        }
        for (_, status) in &mut self.targets {
            if *status == Status::Pending {
                *status = Status::Failed;
            }
        }
        if !self.done {
            let mut error = self.quorum_error(Outcome::Unknown);
            error.pending = unanswered;
            error.failed -= unanswered;
            self.finish(Err(RequestError::Quorum(error)));
        }
    }

    /// Next output, or `None` when all were drained.
    pub fn poll_effect(&mut self) -> Option<UpdateEffect> {
        self.effects.pop_front()
    }

    /// The client was answered and every target resolved: the driver can drop the machine.
    pub fn is_finished(&self) -> bool {
        self.done && self.targets.iter().all(|(_, s)| *s != Status::Pending)
    }

    fn pending_status(&mut self, from: &MemberId) -> Option<&mut Status> {
        self.record.as_ref()?;
        self.targets
            .iter_mut()
            .find(|(t, s)| t.node == *from && *s == Status::Pending)
            .map(|(_, s)| s)
    }

    fn hint_for(&mut self, node: &MemberId) {
        let (Some(record), Some((target, _))) = (
            &self.record,
            self.targets.iter().find(|(t, _)| t.node == *node),
        ) else {
            return;
        };
        self.effects.push_back(UpdateEffect::StoreHint {
            owner: target.owner().clone(),
            record: record.clone(),
        });
    }

    fn check(&mut self) {
        if self.done {
            return;
        }
        if self.acks >= self.w {
            let record = self.record.clone();
            self.finish(Ok(Acknowledged {
                acks: self.acks,
                record,
            }));
            return;
        }
        let pending = self.count(Status::Pending);
        if self.acks + pending < self.w {
            self.finish(Err(RequestError::Quorum(
                self.quorum_error(Outcome::Unknown),
            )));
        }
    }

    fn count(&self, status: Status) -> usize {
        self.targets.iter().filter(|(_, s)| *s == status).count()
    }

    fn quorum_error(&self, outcome: Outcome) -> QuorumError {
        QuorumError {
            op: QuorumOp::Update,
            required: self.w,
            succeeded: self.acks,
            failed: self.count(Status::Failed),
            pending: self.count(Status::Pending),
            targets: self.targets.len(),
            outcome,
            errors: self.errors.clone(),
        }
    }

    fn finish(&mut self, result: Result<Acknowledged, RequestError>) {
        if !self.done {
            self.done = true;
            self.effects.push_back(UpdateEffect::Done(result));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_storage::{Kind, Value};

    fn id(n: &str) -> MemberId {
        MemberId::new(n).unwrap()
    }

    fn targets() -> Selection {
        Selection {
            targets: targets_only(),
            unreplaced: Vec::new(),
        }
    }

    fn targets_only() -> Vec<Target> {
        vec![
            Target {
                node: id("a"),
                hint_for: None,
            },
            Target {
                node: id("b"),
                hint_for: None,
            },
            Target {
                node: id("f"),
                hint_for: Some(id("c")),
            },
        ]
    }

    fn record() -> Record {
        Record::encode(&Value::empty(Kind::Counter)).unwrap()
    }

    const DEADLINE: Duration = Duration::from_secs(1);

    fn drain(c: &mut UpdateCoordinator) -> Vec<UpdateEffect> {
        std::iter::from_fn(|| c.poll_effect()).collect()
    }

    fn done(effects: &[UpdateEffect]) -> Vec<&Result<Acknowledged, RequestError>> {
        effects
            .iter()
            .filter_map(|e| match e {
                UpdateEffect::Done(r) => Some(r),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn acknowledged_at_w_counting_the_coordinator() {
        let mut c = UpdateCoordinator::new(id("a"), targets(), 2, DEADLINE).unwrap();
        c.handle_local(Ok(record()));
        let effects = drain(&mut c);
        let sent: Vec<_> = effects
            .iter()
            .filter_map(|e| match e {
                UpdateEffect::Replicate { target, .. } => Some(target.node.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(sent, ["b", "f"]);
        assert!(done(&effects).is_empty());
        c.handle_ack(&id("f"));
        c.handle_ack(&id("f"));
        let effects = drain(&mut c);
        assert!(matches!(
            done(&effects)[..],
            [Ok(Acknowledged { acks: 2, .. })]
        ));
        assert!(!c.is_finished(), "b is still pending");
        // b never answers: at the deadline it gets a hint, no second answer.
        c.handle_timeout(DEADLINE);
        let effects = drain(&mut c);
        assert_eq!(
            effects,
            [UpdateEffect::StoreHint {
                owner: id("b"),
                record: record()
            }]
        );
        assert!(c.is_finished());
    }

    #[test]
    fn down_primaries_without_a_stand_in_get_a_local_hint() {
        let selection = Selection {
            targets: targets_only()[..2].to_vec(),
            unreplaced: vec![id("c")],
        };
        let mut c = UpdateCoordinator::new(id("a"), selection, 2, DEADLINE).unwrap();
        c.handle_local(Ok(record()));
        assert!(drain(&mut c).contains(&UpdateEffect::StoreHint {
            owner: id("c"),
            record: record()
        }));
    }

    #[test]
    fn w1_is_acknowledged_by_the_local_write() {
        let mut c = UpdateCoordinator::new(id("a"), targets(), 1, DEADLINE).unwrap();
        c.handle_local(Ok(record()));
        assert!(matches!(done(&drain(&mut c))[..], [Ok(_)]));
    }

    #[test]
    fn a_timeout_before_w_is_unknown_never_failed() {
        let mut c = UpdateCoordinator::new(id("a"), targets(), 3, DEADLINE).unwrap();
        c.handle_local(Ok(record()));
        c.handle_ack(&id("b"));
        drain(&mut c);
        c.handle_timeout(DEADLINE - Duration::from_millis(1));
        assert!(drain(&mut c).is_empty(), "not yet due");
        c.handle_timeout(DEADLINE);
        let effects = drain(&mut c);
        // The fallback's owner (c) gets the hint.
        assert!(effects.contains(&UpdateEffect::StoreHint {
            owner: id("c"),
            record: record()
        }));
        let [Err(RequestError::Quorum(q))] = done(&effects)[..] else {
            panic!("{effects:?}")
        };
        assert_eq!(q.outcome, Outcome::Unknown);
        assert_eq!((q.succeeded, q.pending, q.failed, q.required), (2, 1, 0, 3));
    }

    #[test]
    fn failures_end_the_wait_early_with_unknown_and_hints() {
        let mut c = UpdateCoordinator::new(id("a"), targets(), 2, DEADLINE).unwrap();
        c.handle_local(Ok(record()));
        drain(&mut c);
        c.handle_failure(&id("b"), "unreachable".into());
        assert!(done(&drain(&mut c)).is_empty(), "f may still answer");
        c.handle_failure(&id("f"), "rejected".into());
        let effects = drain(&mut c);
        let [Err(e)] = done(&effects)[..] else {
            panic!("{effects:?}")
        };
        assert_eq!(e.outcome(), Outcome::Unknown);
        assert!(c.is_finished());
    }

    #[test]
    fn a_local_failure_sends_nothing_and_only_a_refusal_is_a_definite_failure() {
        for (error, outcome) in [
            (
                RequestError::Storage("key holds a set".into()),
                Outcome::Failed,
            ),
            (
                RequestError::StorageWrite("No space left on device".into()),
                Outcome::Unknown,
            ),
        ] {
            let mut c = UpdateCoordinator::new(id("a"), targets(), 2, DEADLINE).unwrap();
            c.handle_local(Err(error));
            let effects = drain(&mut c);
            assert_eq!(effects.len(), 1);
            let [Err(e)] = done(&effects)[..] else {
                panic!()
            };
            assert_eq!(e.outcome(), outcome);
            c.handle_timeout(DEADLINE);
            assert!(drain(&mut c).is_empty());
            assert!(c.is_finished());
        }
    }

    #[test]
    fn too_few_targets_or_bad_quorum_are_refused_up_front() {
        assert!(matches!(
            UpdateCoordinator::new(id("a"), targets(), 4, DEADLINE),
            Err(RequestError::Unavailable {
                live: 3,
                required: 4
            })
        ));
        assert!(matches!(
            UpdateCoordinator::new(id("a"), targets(), 0, DEADLINE),
            Err(RequestError::Invalid(_))
        ));
        assert!(matches!(
            UpdateCoordinator::new(id("z"), targets(), 1, DEADLINE),
            Err(RequestError::Invalid(_))
        ));
    }
}
