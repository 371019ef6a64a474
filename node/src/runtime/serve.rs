//! The RPC server: answers peers' requests, each in its own task.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use shoal_storage::Store;
use tokio::sync::{Semaphore, mpsc};

use super::coordinate;
use super::shared::{Shared, blocking};
use crate::request::message::{
    self, Forwarded, PeerRequest, PeerResponse, ReplicaWrite, WireFailure, WireOutcome,
    record_from_wire,
};
use crate::request::{Outcome, RequestError};
use crate::transport::{IncomingRpc, OVERLOADED, Transport};

pub(crate) async fn run<T: Transport, S: Store>(
    shared: Arc<Shared<T, S>>,
    mut rpcs: mpsc::Receiver<IncomingRpc>,
) {
    let slots = Arc::new(Semaphore::new(shared.config.max_serving.max(1)));
    while let Some(rpc) = rpcs.recv().await {
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            rpc.reject(OVERLOADED);
            continue;
        };
        let shared2 = shared.clone();
        shared.spawn(async move {
            handle(&shared2, rpc).await;
            drop(permit);
        });
    }
}

#[tracing::instrument(level = "debug", skip_all, fields(from = %rpc.from.id, request = tracing::field::Empty))]
async fn handle<T: Transport, S: Store>(shared: &Arc<Shared<T, S>>, rpc: IncomingRpc) {
    let request = match message::decode_request(&rpc.request) {
        Ok(request) => request,
        Err(e) => return rpc.reject(format!("malformed request: {e}")),
    };
    let (id, kind) = (request.id(), request.kind());
    shared.metrics.peer_bytes_received(kind, rpc.request.len());
    tracing::Span::current().record("request", tracing::field::display(id));
    let answer = if matches!(
        request,
        PeerRequest::ForwardUpdate { .. } | PeerRequest::ForwardGet { .. }
    ) {
        // A forwarded update must run once even if the request arrives twice (a duplicated
        // packet, a retried stream): later copies wait for the first one's answer.
        let cell = shared.dedup.cell(rpc.from.id.as_str(), id);
        cell.get_or_init(|| serve(shared, &rpc.from.id, request))
            .await
            .clone()
    } else {
        serve(shared, &rpc.from.id, request).await
    };
    match answer.and_then(|a| message::encode_response(&a).map_err(|e| e.to_string())) {
        Ok(bytes) => {
            shared.metrics.peer_bytes_sent(kind, bytes.len());
            rpc.respond(Bytes::from(bytes))
        }
        Err(e) => {
            tracing::debug!(%id, from = %rpc.from.id, error = %e, "request refused");
            rpc.reject(e);
        }
    }
}

async fn serve<T: Transport, S: Store>(
    shared: &Arc<Shared<T, S>>,
    from: &crate::identity::NodeId,
    request: PeerRequest,
) -> Result<PeerResponse, String> {
    let id = request.id();
    // A step of an exchange while another exchange holds its partition here is answered
    // `Busy`, and its sender stops. Records pushed with it have already crossed the network
    // (a refill's batch is up to 800 KB): they are merged all the same (a merge is always
    // safe), and only then is the answer `Busy`, so their bytes are not sent twice.
    let claimed = exchange_partition(&request).is_none_or(|partition| {
        let moving = matches!(
            request,
            PeerRequest::AeFetch { .. }
                | PeerRequest::AeFetchLeaves { .. }
                | PeerRequest::AePush { .. }
        );
        shared.ae_claim(partition, from.as_str(), true, moving)
    });
    if !claimed && !matches!(request, PeerRequest::AePush { .. }) {
        return Ok(PeerResponse::Busy);
    }
    match request {
        PeerRequest::Replicate { writes } => store_writes(shared, writes),
        PeerRequest::DeliverHints { hints, .. } => {
            if hints.len() > message::MAX_HINTS_PER_BATCH {
                return Err(format!("{} hints in one batch", hints.len()));
            }
            let items = hints
                .into_iter()
                .map(|(partition, key, bytes)| Ok((partition, key, record_from_wire(bytes)?)))
                .collect::<Result<Vec<_>, crate::codec::CodecError>>()
                .map_err(|e| e.to_string())?;
            let results =
                blocking(|| shared.engine.merge_many(&items)).map_err(|e| e.to_string())?;
            shared.hints_received();
            match results.into_iter().find_map(Result::err) {
                Some(e) => Err(format!("a hint did not merge: {e}")),
                None => Ok(PeerResponse::Stored),
            }
        }
        PeerRequest::Read { partition, key, .. } => {
            blocking(|| shared.engine.get_record(partition, &key))
                .map(|r| PeerResponse::Record(r.map(|r| r.as_bytes().to_vec())))
                .map_err(|e| e.to_string())
        }
        PeerRequest::ForwardUpdate {
            keyspace,
            key,
            update,
            w,
            timeout_ms,
            ..
        } => {
            let timeout = Duration::from_millis(timeout_ms);
            let result =
                coordinate::update(shared, id, &keyspace, &key, update, w, timeout, true).await;
            Ok(PeerResponse::Updated(
                result
                    .map(|ack| Forwarded {
                        count: ack.acks,
                        record: ack.record.map(|r| r.as_bytes().to_vec()),
                    })
                    .map_err(to_wire),
            ))
        }
        PeerRequest::AeRoots {
            partitions,
            summary,
            grouped,
            starting,
            ..
        } => {
            let partitions = crate::antientropy::bitmap_partitions(&partitions)
                .ok_or("partition bitmap too long")?;
            if shared.handoff_pending(from.as_str()) {
                return Ok(PeerResponse::Roots {
                    roots: Vec::new(),
                    groups: Vec::new(),
                    handoff_running: true,
                });
            }
            let pairs: Vec<(u32, u128)> = blocking(|| {
                partitions
                    .iter()
                    .map(|&p| (p, shared.engine.merkle_root(p)))
                    .collect()
            });
            let equal = crate::antientropy::roots_summary(pairs.iter().copied()) == summary;
            if starting && !equal {
                // The asker just started and lacks something: repair it from this side too,
                // now rather than at this node's next round. A full queue is fine: a round
                // is already due.
                let _ = shared
                    .ae_wake
                    .try_send(super::antientropy::Wake::PeerStarted);
            }
            let (roots, groups) = if equal {
                (Vec::new(), Vec::new())
            } else if !grouped || pairs.len() <= crate::antientropy::ROOTS_DIRECT {
                (pairs.iter().map(|(_, root)| *root).collect(), Vec::new())
            } else {
                (Vec::new(), crate::antientropy::group_summaries(&pairs))
            };
            Ok(PeerResponse::Roots {
                roots,
                groups,
                handoff_running: false,
            })
        }
        PeerRequest::AeHashes {
            partition,
            level,
            nodes,
            ..
        } => {
            if nodes.len() > 256 {
                return Err(format!("{} nodes asked, at most 256", nodes.len()));
            }
            let tree = blocking(|| shared.engine.merkle_tree(partition));
            crate::antientropy::children_hashes(&tree, level as usize, &nodes)
                .map(PeerResponse::Hashes)
                .ok_or_else(|| format!("no such tree nodes: level {level}, {nodes:?}"))
        }
        PeerRequest::AeLeafKeys {
            partition, leaves, ..
        } => {
            if leaves.len() > crate::antientropy::LEAVES_PER_STEP
                || leaves
                    .iter()
                    .any(|&l| l as usize >= shoal_storage::merkle::LEAVES)
            {
                return Err("leaf list out of range".into());
            }
            blocking(|| {
                let mut out = Vec::new();
                for leaf in leaves {
                    out.extend(shared.engine.leaf_keys(partition, leaf)?);
                }
                Ok::<_, shoal_storage::StorageError>(out)
            })
            .map(PeerResponse::LeafKeys)
            .map_err(|e| e.to_string())
        }
        PeerRequest::AeFetch {
            partition, keys, ..
        } => {
            if keys.len() > crate::antientropy::KEYS_PER_STEP {
                return Err(format!(
                    "{} keys asked, at most {}",
                    keys.len(),
                    crate::antientropy::KEYS_PER_STEP
                ));
            }
            let records = blocking(|| {
                let (mut out, mut bytes) = (Vec::new(), 0);
                for key in keys {
                    if bytes >= shoal_storage::BATCH_BYTES {
                        break;
                    }
                    // A corrupt record is not sent: the asker keeps its own state, and this
                    // node's leaf marks the key different until a healthy copy arrives.
                    if let Ok(Some(record)) = shared.engine.get_record(partition, &key) {
                        bytes += key.len() + record.as_bytes().len();
                        out.push((key, record.as_bytes().to_vec()));
                    }
                }
                out
            });
            Ok(PeerResponse::Records(records))
        }
        PeerRequest::AeFetchLeaves {
            partition,
            first,
            last,
            ..
        } => {
            if first > last || last as usize >= shoal_storage::merkle::LEAVES {
                return Err(format!("leaf range {first}..={last} out of range"));
            }
            blocking(|| {
                shared.engine.leaf_records(
                    partition,
                    first,
                    last,
                    super::antientropy::transfer_batch(shared),
                )
            })
            .map(|(records, next)| PeerResponse::LeafRecords { records, next })
            .map_err(|e| e.to_string())
        }
        PeerRequest::AePush {
            partition, records, ..
        } => {
            if records.len() > crate::antientropy::MAX_PUSH_RECORDS {
                return Err(format!(
                    "{} records pushed, at most {}",
                    records.len(),
                    crate::antientropy::MAX_PUSH_RECORDS
                ));
            }
            let items = records
                .into_iter()
                .map(|(key, bytes)| Ok((partition, key, record_from_wire(bytes)?)))
                .collect::<Result<Vec<_>, crate::codec::CodecError>>()
                .map_err(|e| e.to_string())?;
            let results =
                blocking(|| shared.engine.merge_many(&items)).map_err(|e| e.to_string())?;
            let repaired = results
                .iter()
                .filter(|r| r.as_ref().is_ok_and(|w| w.changed))
                .count();
            shared.metrics.ae_merged(repaired as u64);
            // Renewed once merged too: merging a large batch on a busy node takes a while,
            // and the pusher's next batch is due only after this answer.
            Ok(
                if claimed && shared.ae_claim(partition, from.as_str(), true, true) {
                    PeerResponse::Stored
                } else {
                    PeerResponse::Busy
                },
            )
        }
        PeerRequest::PullCluster { .. } => shared
            .view()
            .state
            .encode()
            .map(PeerResponse::Cluster)
            .map_err(|e| e.to_string()),
        PeerRequest::ForwardGet {
            keyspace,
            key,
            r,
            timeout_ms,
            ..
        } => {
            let timeout = Duration::from_millis(timeout_ms);
            let result = coordinate::get(shared, id, &keyspace, &key, r, timeout, true).await;
            Ok(PeerResponse::Got(
                result
                    .map(|got| Forwarded {
                        count: got.replies,
                        record: got.record.map(|r| r.as_bytes().to_vec()),
                    })
                    .map_err(to_wire),
            ))
        }
    }
}

/// The partition of a step of an anti-entropy exchange (which claims it, see
/// [`Shared::ae_claim`]).
fn exchange_partition(request: &PeerRequest) -> Option<u32> {
    match request {
        PeerRequest::AeHashes { partition, .. }
        | PeerRequest::AeLeafKeys { partition, .. }
        | PeerRequest::AeFetch { partition, .. }
        | PeerRequest::AeFetchLeaves { partition, .. }
        | PeerRequest::AePush { partition, .. } => Some(*partition),
        _ => None,
    }
}

fn to_wire(e: RequestError) -> WireFailure {
    WireFailure {
        outcome: match e.outcome() {
            Outcome::Failed => WireOutcome::Failed,
            Outcome::Unknown => WireOutcome::Unknown,
        },
        message: e.to_string(),
    }
}

/// Serves a `Replicate`: merges every write that checks out in one durable write, then keeps
/// the hints the fallback writes among them carry. A write that is refused (a damaged record,
/// a value of another type than the key's) is named in the answer; the others are stored.
fn store_writes<T: Transport, S: Store>(
    shared: &Shared<T, S>,
    writes: Vec<ReplicaWrite>,
) -> Result<PeerResponse, String> {
    if writes.len() > message::MAX_REPLICATE_WRITES {
        return Err(format!("{} writes in one request", writes.len()));
    }
    let mut refused = Vec::new();
    let mut items = Vec::with_capacity(writes.len());
    let mut hints = Vec::with_capacity(writes.len());
    for (i, write) in writes.into_iter().enumerate() {
        match record_from_wire(write.record) {
            Ok(record) => {
                // A hint for ourselves would never be delivered: our data has it already.
                let hint_for = write
                    .hint_for
                    .filter(|h| h.as_str() != shared.local.as_str());
                items.push((write.partition, write.key, record));
                hints.push((i as u32, hint_for));
            }
            Err(e) => refused.push((i as u32, e.to_string())),
        }
    }
    let merged = blocking(|| shared.engine.merge_many(&items)).map_err(|e| e.to_string())?;
    for (((partition, key, record), (i, hint_for)), merged) in items.iter().zip(hints).zip(merged) {
        let stored = merged.map_err(|e| e.to_string()).and_then(|_| {
            let Some(owner) = hint_for else {
                return Ok(());
            };
            blocking(|| shared.engine.put_hint(&owner, *partition, key, record))
                .map_err(|e| e.to_string())?;
            shared.metrics.hint_stored();
            Ok(())
        });
        if let Err(e) = stored {
            refused.push((i, e));
        }
    }
    refused.sort_by_key(|(i, _)| *i);
    Ok(PeerResponse::Replicated { refused })
}
