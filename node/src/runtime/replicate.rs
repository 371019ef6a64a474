//! A coordinator's replication to its peers, coalesced per peer.
//!
//! Each peer has a lane. A write to a peer goes out at once while fewer than [`IN_FLIGHT`]
//! `Replicate` requests to it are in flight; otherwise it waits in the lane's queue, and the
//! first request to finish takes everything queued (up to [`MAX_REPLICATE_WRITES`] and about
//! [`BATCH_BYTES`]) as its next request. An idle node so replicates each write at once, and a
//! busy one, or one whose peer stopped answering, sends the writes that piled up meanwhile as
//! one request: full packets, one answer and one durable write on the peer, instead of a
//! packet, an answer and a write per key. After a short partition this is what the peer
//! receives: the few requests that were in flight at the cut (retransmitted by QUIC) and
//! then one request with everything written during it.
//!
//! A queued write whose coordinator's deadline passes before it is sent is answered with a
//! definite failure and never sent (its hint carries it instead). A request's timeout is the
//! latest deadline of its writes; a write whose own deadline passes meanwhile stays marked as
//! in flight ([`Shared::set_replicating`]) until the request ends, so hinted handoff does not
//! send it a second time. When the peer confirms, the coordinator's write-ahead hint of each
//! confirmed write is deleted here, before that mark is lifted, even if the coordinator has
//! stopped waiting: a write that lands late is not delivered again by handoff either.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shoal_membership::NodeId as MemberId;
use shoal_storage::{BATCH_BYTES, Store, ValueHash};
use tokio::sync::oneshot;

use super::shared::{CallError, Class, Shared, blocking};
use crate::request::message::{MAX_REPLICATE_WRITES, PeerRequest, PeerResponse, ReplicaWrite};
use crate::transport::Transport;

/// `Replicate` requests in flight to one peer at most; later writes wait and go together.
pub(crate) const IN_FLIGHT: usize = 2;

/// Writes waiting for one peer at most; past that, a write fails at once (not sent).
pub(crate) const QUEUE: usize = 8 * 1024;

/// The result of one write, as its coordinator sees it.
type Reply = oneshot::Sender<Result<(), CallError>>;

struct Queued {
    write: ReplicaWrite,
    /// The coordinator's deadline, on [`Shared::now`]'s clock.
    deadline: Duration,
    /// The node the coordinator's write-ahead hint of this write is for, and the written
    /// record's hash: once the peer confirms, that hint is deleted if it still holds it.
    hint: (MemberId, ValueHash),
    reply: Reply,
}

/// `(partition, key, record hash)` of confirmed writes, for one hint owner.
type Delivered = Vec<(u32, Vec<u8>, ValueHash)>;

#[derive(Default)]
struct Lane {
    /// Requests in flight (each lane task has one at a time).
    sending: usize,
    queue: Vec<Queued>,
}

/// Every peer's lane.
#[derive(Default)]
pub(crate) struct Lanes(Mutex<HashMap<MemberId, Lane>>);

/// Stores `write` on `to` by the end of `deadline` (on [`Shared::now`]'s clock): `Ok` once
/// the peer said it is durable. `hint` names the owner whose write-ahead hint holds this
/// write (the target, or the primary a fallback target stands in for) and the record's hash:
/// when the peer confirms, that hint is deleted (unless a later update changed it) before
/// this returns, even if the coordinator stopped waiting meanwhile, so a write that arrives
/// late is not delivered a second time by hinted handoff.
pub(crate) async fn replicate<T: Transport, S: Store>(
    shared: &Arc<Shared<T, S>>,
    to: &MemberId,
    write: ReplicaWrite,
    deadline: Duration,
    hint: (MemberId, ValueHash),
) -> Result<(), CallError> {
    let (reply, answer) = oneshot::channel();
    let start = {
        let mut lanes = shared.lanes.0.lock().unwrap_or_else(|e| e.into_inner());
        let lane = lanes.entry(to.clone()).or_default();
        if lane.queue.len() >= QUEUE {
            return Err(CallError::definite(format!(
                "{to} busy: {QUEUE} writes already wait for it"
            )));
        }
        lane.queue.push(Queued {
            write,
            deadline,
            hint,
            reply,
        });
        let start = lane.sending < IN_FLIGHT;
        if start {
            lane.sending += 1;
        }
        start
    };
    if start {
        shared.spawn(send(shared.clone(), to.clone()));
    }
    answer
        .await
        .unwrap_or_else(|_| Err(CallError::definite("shutting down")))
}

/// One of a lane's request slots: sends what is queued, then again, until the queue is empty.
async fn send<T: Transport, S: Store>(shared: Arc<Shared<T, S>>, to: MemberId) {
    loop {
        let batch = {
            let mut lanes = shared.lanes.0.lock().unwrap_or_else(|e| e.into_inner());
            let lane = lanes.entry(to.clone()).or_default();
            let batch = take_batch(&mut lane.queue);
            if batch.is_empty() {
                lane.sending -= 1;
                return;
            }
            batch
        };
        let now = shared.now();
        let (live, expired): (Vec<Queued>, Vec<Queued>) =
            batch.into_iter().partition(|q| q.deadline > now);
        for q in expired {
            let _ = q.reply.send(Err(CallError::definite(format!(
                "timed out waiting to be sent to {to}"
            ))));
        }
        let Some(last) = live.iter().map(|q| q.deadline).max() else {
            continue;
        };
        let (writes, answers): (Vec<ReplicaWrite>, Vec<_>) = live
            .into_iter()
            .map(|q| (q.write, (q.hint, q.reply)))
            .unzip();
        let count = writes.len();
        shared.metrics.replicate_sent(count);
        let request = PeerRequest::Replicate { writes };
        let result = shared
            .call(&to, &request, last - now, Class::Foreground)
            .await;
        let results = results(result, count);
        let PeerRequest::Replicate { writes } = request else {
            unreachable!("built above");
        };
        drop_confirmed_hints(&shared, &writes, &answers, &results);
        for ((_, reply), result) in answers.into_iter().zip(results) {
            let _ = reply.send(result);
        }
    }
}

/// Deletes the write-ahead hints of the confirmed writes, one write per owner (a harmless
/// failure: the hints are delivered again later, and merging is idempotent).
fn drop_confirmed_hints<T: Transport, S: Store>(
    shared: &Shared<T, S>,
    writes: &[ReplicaWrite],
    answers: &[((MemberId, ValueHash), Reply)],
    results: &[Result<(), CallError>],
) {
    let mut confirmed: HashMap<&MemberId, Delivered> = HashMap::new();
    for ((write, ((owner, hash), _)), result) in writes.iter().zip(answers).zip(results) {
        if result.is_ok() {
            confirmed
                .entry(owner)
                .or_default()
                .push((write.partition, write.key.clone(), *hash));
        }
    }
    for (owner, delivered) in confirmed {
        if let Err(e) = blocking(|| {
            shared
                .engine
                .remove_delivered_hints(owner.as_str(), &delivered)
        }) {
            tracing::warn!(%owner, error = %e, "confirmed hints not removed");
        }
    }
}

/// The first queued writes, up to [`MAX_REPLICATE_WRITES`] and about [`BATCH_BYTES`] of
/// records (at least one).
fn take_batch(queue: &mut Vec<Queued>) -> Vec<Queued> {
    let mut bytes = 0;
    let n = queue
        .iter()
        .take(MAX_REPLICATE_WRITES)
        .take_while(|q| {
            let size = q.write.record.len() + q.write.key.len();
            let fits = bytes == 0 || bytes + size <= BATCH_BYTES;
            bytes += size;
            fits
        })
        .count();
    queue.drain(..n).collect()
}

/// Each write's result from the answer to their request.
fn results(answer: Result<PeerResponse, CallError>, count: usize) -> Vec<Result<(), CallError>> {
    match answer {
        Ok(PeerResponse::Replicated { refused }) => {
            let mut results: Vec<Result<(), CallError>> = (0..count).map(|_| Ok(())).collect();
            for (i, why) in refused {
                if let Some(slot) = results.get_mut(i as usize) {
                    *slot = Err(CallError::definite(format!("refused: {why}")));
                }
            }
            results
        }
        Ok(other) => (0..count)
            .map(|_| {
                Err(CallError {
                    message: format!("unexpected response {other:?}"),
                    may_have_taken_effect: true,
                })
            })
            .collect(),
        Err(e) => (0..count)
            .map(|_| {
                Err(CallError {
                    message: e.message.clone(),
                    may_have_taken_effect: e.may_have_taken_effect,
                })
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::RequestId;

    fn queued(record_len: usize) -> Queued {
        Queued {
            write: ReplicaWrite {
                id: RequestId(1),
                partition: 0,
                key: b"k".to_vec(),
                record: vec![0; record_len],
                hint_for: None,
            },
            deadline: Duration::from_secs(1),
            hint: (MemberId::new("n1").unwrap(), 0),
            reply: oneshot::channel().0,
        }
    }

    #[test]
    fn a_batch_stops_at_the_count_or_byte_limit_but_takes_at_least_one() {
        let mut queue: Vec<Queued> = (0..MAX_REPLICATE_WRITES + 5).map(|_| queued(10)).collect();
        assert_eq!(take_batch(&mut queue).len(), MAX_REPLICATE_WRITES);
        assert_eq!(take_batch(&mut queue).len(), 5);
        assert!(take_batch(&mut queue).is_empty());

        let mut queue = vec![queued(BATCH_BYTES * 2), queued(10)];
        assert_eq!(take_batch(&mut queue).len(), 1, "a large record goes alone");
        let mut queue = vec![queued(BATCH_BYTES / 2), queued(BATCH_BYTES / 2), queued(10)];
        assert_eq!(take_batch(&mut queue).len(), 1);
        assert_eq!(take_batch(&mut queue).len(), 2);
    }

    #[test]
    fn refused_writes_fail_alone_and_a_failed_request_fails_them_all() {
        let answer = Ok(PeerResponse::Replicated {
            refused: vec![(1, "type".into()), (9, "out of range".into())],
        });
        let got = results(answer, 3);
        assert!(got[0].is_ok() && got[2].is_ok());
        assert!(got[1].as_ref().is_err_and(|e| !e.may_have_taken_effect));
        let failed = results(Err(CallError::definite("unreachable")), 2);
        assert!(failed.iter().all(|r| r.is_err()));
        let odd = results(Ok(PeerResponse::Busy), 2);
        assert!(
            odd.iter()
                .all(|r| r.as_ref().is_err_and(|e| e.may_have_taken_effect))
        );
    }
}
