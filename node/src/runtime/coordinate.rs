//! Driving the coordinators: one task per client request owns its state machine, performs
//! its effects (local store, peer RPCs, hints, read repair) and feeds the answers back.

use std::sync::Arc;
use std::time::Duration;

use shoal_membership::NodeId as MemberId;
use shoal_storage::{Engine, MAX_KEY_LEN, Record, Store, Update};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use super::replicate;
use super::shared::{CallError, Class, InFlight, Shared, blocking};
use super::storage_key;
use crate::request::Selection;
use crate::request::message::{
    Forwarded, PeerRequest, PeerResponse, ReplicaWrite, WireOutcome, record_from_wire,
};
use crate::request::{
    Acknowledged, GetCoordinator, GetEffect, GetOutcome, Outcome, RequestError, RequestId, Target,
    UpdateCoordinator, UpdateEffect, select_targets,
};
use crate::transport::Transport;

/// Where a key lives: its storage key, partition and the targets in this node's view.
struct Placement {
    key: Vec<u8>,
    partition: u32,
    selection: Selection,
}

fn place<T: Transport, S: Store>(
    shared: &Shared<T, S>,
    keyspace: &str,
    key: &[u8],
    quorum: usize,
    what: &str,
) -> Result<Placement, RequestError> {
    let view = shared.view();
    let n = super::n_for(&shared.config, &view.state, keyspace);
    if quorum == 0 || quorum > n {
        return Err(RequestError::Invalid(format!(
            "{what} = {quorum}, must be 1 to N = {n}"
        )));
    }
    let key = storage_key(keyspace, key)?;
    if key.len() > MAX_KEY_LEN {
        return Err(RequestError::Invalid(format!(
            "keyspace and key are {} bytes, over the limit of {MAX_KEY_LEN}",
            key.len()
        )));
    }
    let partition = view.ring.partition_of(&key);
    let selection = select_targets(
        view.ring.preference_list(partition),
        view.ring.primaries(partition).len(),
        n,
        |m| shared.is_live(m),
    );
    Ok(Placement {
        key,
        partition: partition.0,
        selection,
    })
}

/// Merges a replica's record into the local store; as a fallback (`hint_for`), also keeps it
/// as a hint for that primary. Durable when it returns.
///
/// A fallback keeps the state in its data column too, so gets that reach it see it (it is
/// then a replica in its own right until the primary has it). Dropping the data of
/// partitions a node does not replicate is left to anti-entropy, a later step.
pub(crate) fn store_replica<S: Store>(
    engine: &Engine<S>,
    partition: u32,
    key: &[u8],
    record: &Record,
    hint_for: Option<&str>,
) -> Result<(), String> {
    blocking(|| {
        engine
            .merge(partition, key, record)
            .map_err(|e| e.to_string())?;
        if let Some(owner) = hint_for {
            engine
                .put_hint(owner, partition, key, record)
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    })
}

/// A forwarded request reached a node that, in its own view of liveness, is not a target of
/// the key (views differ for a moment after failures). Nothing was done; the forwarder tries
/// the next target.
/// Whether this node must forward the request because it is not among the key's targets.
/// Errors when no target is live, or when the request was already forwarded once (one hop only).
fn must_forward<T: Transport, S: Store>(
    shared: &Shared<T, S>,
    placement: &Placement,
    required: usize,
    forwarded: bool,
) -> Result<bool, RequestError> {
    let targets = &placement.selection.targets;
    if targets.iter().any(|t| t.node == shared.local) {
        return Ok(false);
    }
    if targets.is_empty() {
        return Err(RequestError::Unavailable { live: 0, required });
    }
    if forwarded {
        return Err(not_a_target(&shared.local));
    }
    Ok(true)
}

fn not_a_target(local: &MemberId) -> RequestError {
    RequestError::Forwarded {
        outcome: Outcome::Failed,
        message: format!("{local} is not a target of this key in its view"),
    }
}

fn outcome_of(wire: WireOutcome) -> Outcome {
    match wire {
        WireOutcome::Failed => Outcome::Failed,
        WireOutcome::Unknown => Outcome::Unknown,
    }
}

fn remaining<T: Transport, S: Store>(shared: &Shared<T, S>, deadline: Duration) -> Duration {
    deadline.saturating_sub(shared.now())
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn update<T: Transport, S: Store>(
    shared: &Arc<Shared<T, S>>,
    id: RequestId,
    keyspace: &str,
    key: &[u8],
    update: Update,
    w: usize,
    timeout: Duration,
    forwarded: bool,
) -> Result<Acknowledged, RequestError> {
    update
        .validate()
        .map_err(|e| RequestError::Invalid(e.to_string()))?;
    let placement = place(shared, keyspace, key, w, "w")?;
    // The request's span: its id and partition, on every log line of its coordination
    // (replica RPCs and hints included, also after the client was answered).
    let span =
        tracing::debug_span!("update", request = %id, partition = placement.partition, forwarded);
    let deadline = shared.now() + timeout;
    if must_forward(shared, &placement, w, forwarded)? {
        return forward(
            shared,
            &placement.selection.targets,
            deadline,
            |timeout_ms| PeerRequest::ForwardUpdate {
                id,
                keyspace: keyspace.to_owned(),
                key: key.to_vec(),
                update: update.clone(),
                w,
                timeout_ms,
            },
        )
        .await
        .map(|(acks, record)| Acknowledged { acks, record });
    }
    let coordinator =
        UpdateCoordinator::new(shared.local.clone(), placement.selection, w, deadline)?;
    let (reply, answer) = oneshot::channel();
    let guard = shared.coordinating();
    shared.spawn(
        drive_update(
            guard,
            shared.clone(),
            (id, placement.partition, placement.key),
            update,
            coordinator,
            reply,
        )
        .instrument(span),
    );
    answer.await.unwrap_or(Err(RequestError::ShuttingDown))
}

/// A request's id and the partition and storage key it is about.
type KeyRef = (RequestId, u32, Vec<u8>);

async fn drive_update<T: Transport, S: Store>(
    _guard: InFlight,
    shared: Arc<Shared<T, S>>,
    (id, partition, key): KeyRef,
    update: Update,
    mut c: UpdateCoordinator,
    reply: oneshot::Sender<Result<Acknowledged, RequestError>>,
) {
    // Hints for every other owner go into the same durable write as the update
    // (write-ahead): a crash of this node before they confirm leaves the hints to deliver it.
    let owners = c.write_ahead_owners();
    let owner_names: Vec<&str> = owners.iter().map(MemberId::as_str).collect();
    let local = match blocking(|| {
        shared
            .engine
            .apply_with_hints(partition, &key, &update, &owner_names)
    }) {
        Ok(written) => match written.record {
            Some(record) => Ok(record),
            None => {
                let _ = reply.send(Ok(Acknowledged {
                    acks: 0,
                    record: None,
                }));
                return;
            }
        },
        // A backend error may come after the write reached the store's log.
        Err(shoal_storage::StorageError::Backend(e)) => Err(RequestError::StorageWrite(e)),
        Err(e) => Err(RequestError::Storage(e.to_string())),
    };
    if local.is_ok() && c.local_target().hint_for.is_some() {
        shared.metrics.hint_stored();
    }
    c.handle_local(local);
    let deadline = c.deadline();
    let (results_tx, mut results) = mpsc::unbounded_channel::<(MemberId, Result<(), CallError>)>();
    let mut reply = Some(reply);
    loop {
        while let Some(effect) = c.poll_effect() {
            match effect {
                UpdateEffect::Replicate { target, record } => {
                    let write = ReplicaWrite {
                        id,
                        partition,
                        key: key.clone(),
                        record: record.as_bytes().to_vec(),
                        hint_for: target.hint_for.as_ref().map(|h| h.as_str().to_owned()),
                    };
                    let hint = (target.owner().clone(), record.hash());
                    let (shared2, tx) = (shared.clone(), results_tx.clone());
                    let key2 = key.clone();
                    shared.set_replicating(&target.node, partition, &key2, true);
                    shared.spawn(async move {
                        let result =
                            replicate::replicate(&shared2, &target.node, write, deadline, hint)
                                .await;
                        shared2.set_replicating(&target.node, partition, &key2, false);
                        let _ = tx.send((target.node, result));
                    });
                }
                UpdateEffect::StoreHint { owner, record } => {
                    shared.metrics.hint_stored();
                    // Written ahead with the update for every owner the selection named.
                    if owner != shared.local
                        && !owners.contains(&owner)
                        && let Err(e) = blocking(|| {
                            shared
                                .engine
                                .put_hint(owner.as_str(), partition, &key, &record)
                        })
                    {
                        tracing::warn!(%id, %owner, error = %e, "hint not stored");
                    }
                }
                UpdateEffect::Done(result) => {
                    shared.metrics.update_done(&result);
                    if let Some(reply) = reply.take() {
                        let _ = reply.send(result);
                    }
                }
            }
        }
        if c.is_finished() {
            return;
        }
        tokio::select! {
            biased;
            Some((node, result)) = results.recv() => match result {
                Ok(()) => c.handle_ack(&node),
                Err(e) => c.handle_failure(&node, e.message),
            },
            () = tokio::time::sleep_until(shared.instant(deadline)) => c.handle_timeout(shared.now()),
        }
    }
}

pub(crate) async fn get<T: Transport, S: Store>(
    shared: &Arc<Shared<T, S>>,
    id: RequestId,
    keyspace: &str,
    key: &[u8],
    r: usize,
    timeout: Duration,
    forwarded: bool,
) -> Result<GetOutcome, RequestError> {
    let placement = place(shared, keyspace, key, r, "r")?;
    let span =
        tracing::debug_span!("get", request = %id, partition = placement.partition, forwarded);
    let deadline = shared.now() + timeout;
    if must_forward(shared, &placement, r, forwarded)? {
        let (replies, record) = forward(
            shared,
            &placement.selection.targets,
            deadline,
            |timeout_ms| PeerRequest::ForwardGet {
                id,
                keyspace: keyspace.to_owned(),
                key: key.to_vec(),
                r,
                timeout_ms,
            },
        )
        .await?;
        let value = record
            .as_ref()
            .map(|r| r.decode())
            .transpose()
            .map_err(|e| RequestError::Storage(e.to_string()))?;
        return Ok(GetOutcome {
            value,
            record,
            replies,
            stale: Vec::new(),
        });
    }
    let coordinator = GetCoordinator::new(shared.local.clone(), placement.selection, r, deadline)?;
    let (reply, answer) = oneshot::channel();
    let guard = shared.coordinating();
    shared.spawn(
        drive_get(
            guard,
            shared.clone(),
            id,
            placement.partition,
            placement.key,
            coordinator,
            reply,
        )
        .instrument(span),
    );
    answer.await.unwrap_or(Err(RequestError::ShuttingDown))
}

async fn drive_get<T: Transport, S: Store>(
    _guard: InFlight,
    shared: Arc<Shared<T, S>>,
    id: RequestId,
    partition: u32,
    key: Vec<u8>,
    mut c: GetCoordinator,
    reply: oneshot::Sender<Result<GetOutcome, RequestError>>,
) {
    let local = shared.local.clone();
    match blocking(|| shared.engine.get_record(partition, &key)) {
        Ok(record) => c.handle_reply(&local, record),
        Err(e) => c.handle_failure(&local, e.to_string()),
    }
    let deadline = c.deadline();
    type Reply = Result<Option<Record>, CallError>;
    let (results_tx, mut results) = mpsc::unbounded_channel::<(MemberId, Reply)>();
    let mut reply = Some(reply);
    loop {
        while let Some(effect) = c.poll_effect() {
            match effect {
                GetEffect::Read { target } => {
                    let request = PeerRequest::Read {
                        id,
                        partition,
                        key: key.clone(),
                    };
                    let (shared2, tx) = (shared.clone(), results_tx.clone());
                    let timeout = remaining(&shared, deadline);
                    shared.spawn(async move {
                        let result = shared2
                            .call(&target.node, &request, timeout, Class::Foreground)
                            .await
                            .and_then(expect_record);
                        let _ = tx.send((target.node, result));
                    });
                }
                GetEffect::Repair { target, record } => {
                    repair(&shared, id, partition, &key, target, record)
                }
                GetEffect::Done(result) => {
                    shared.metrics.get_done(&result);
                    if let Some(reply) = reply.take() {
                        let _ = reply.send(result);
                    }
                }
            }
        }
        if c.is_finished() {
            return;
        }
        tokio::select! {
            biased;
            Some((node, result)) = results.recv() => match result {
                Ok(record) => c.handle_reply(&node, record),
                Err(e) => c.handle_failure(&node, e.message),
            },
            () = tokio::time::sleep_until(shared.instant(deadline)) => c.handle_timeout(shared.now()),
        }
    }
}

fn expect_record(response: PeerResponse) -> Result<Option<Record>, CallError> {
    match response {
        PeerResponse::Record(bytes) => {
            bytes
                .map(record_from_wire)
                .transpose()
                .map_err(|e| CallError {
                    message: e.to_string(),
                    may_have_taken_effect: false,
                })
        }
        other => Err(CallError {
            message: format!("unexpected response {other:?}"),
            may_have_taken_effect: false,
        }),
    }
}

/// Read repair: the merged record to a stale replica, in the background.
fn repair<T: Transport, S: Store>(
    shared: &Arc<Shared<T, S>>,
    id: RequestId,
    partition: u32,
    key: &[u8],
    target: Target,
    record: Record,
) {
    shared.metrics.read_repair();
    let hint_for = target.hint_for.as_ref().map(|h| h.as_str().to_owned());
    if target.node == shared.local {
        if let Err(e) = store_replica(&shared.engine, partition, key, &record, hint_for.as_deref())
        {
            tracing::warn!(%id, error = %e, "local read repair failed");
        }
        return;
    }
    let request = PeerRequest::Replicate {
        writes: vec![ReplicaWrite {
            id,
            partition,
            key: key.to_vec(),
            record: record.as_bytes().to_vec(),
            hint_for,
        }],
    };
    let shared2 = shared.clone();
    shared.spawn(async move {
        let timeout = shared2.config.background_timeout;
        let outcome = match shared2
            .call(&target.node, &request, timeout, Class::Background)
            .await
        {
            Ok(PeerResponse::Replicated { refused }) if refused.is_empty() => return,
            Ok(other) => format!("answered {other:?}"),
            Err(e) => e.message,
        };
        tracing::debug!(%id, to = %target.node, error = %outcome, "read repair not delivered");
    });
}

/// Sends a forwarded request to the first target that takes it; a target that surely did
/// not act on it (unreachable, busy, or refusing) is skipped for the next.
async fn forward<T: Transport, S: Store>(
    shared: &Arc<Shared<T, S>>,
    targets: &[Target],
    deadline: Duration,
    request: impl Fn(u64) -> PeerRequest,
) -> Result<(usize, Option<Record>), RequestError> {
    let mut last = String::from("no target reachable");
    for target in targets {
        let timeout = remaining(shared, deadline);
        if timeout.is_zero() {
            break;
        }
        // The remote coordinator answers a little before our deadline, so its own verdict
        // (rather than our timeout) reaches the client.
        let request = request((timeout.as_millis() as u64).saturating_mul(9) / 10);
        let result = match shared
            .call(&target.node, &request, timeout, Class::Foreground)
            .await
        {
            Ok(PeerResponse::Updated(result) | PeerResponse::Got(result)) => result,
            Ok(other) => {
                return Err(RequestError::Forwarded {
                    outcome: Outcome::Unknown,
                    message: format!("unexpected response {other:?}"),
                });
            }
            Err(e) if !e.may_have_taken_effect => {
                last = format!("{}: {}", target.node, e.message);
                continue;
            }
            Err(e) => {
                return Err(RequestError::Forwarded {
                    outcome: Outcome::Unknown,
                    message: format!("{}: {}", target.node, e.message),
                });
            }
        };
        match result {
            Ok(Forwarded { count, record }) => {
                let record = record.map(record_from_wire).transpose().map_err(|e| {
                    RequestError::Forwarded {
                        outcome: Outcome::Unknown,
                        message: e.to_string(),
                    }
                })?;
                return Ok((count, record));
            }
            Err(f) if f.outcome == WireOutcome::Failed => {
                last = format!("{}: {}", target.node, f.message);
            }
            Err(f) => {
                return Err(RequestError::Forwarded {
                    outcome: outcome_of(f.outcome),
                    message: f.message,
                });
            }
        }
    }
    Err(RequestError::Forwarded {
        outcome: Outcome::Failed,
        message: last,
    })
}
