//! The client service: answers the requests of application clients (ALPN
//! [`ALPN_CLIENT`](crate::tls::ALPN_CLIENT), protocol in [`shoal_client::protocol`]) by calling
//! [`Node::update`] and [`Node::get`], and hands out the routing table.
//!
//! Each request runs in its own task, at most [`MAX_SERVING`] at once; more are answered
//! [`ErrorCode::Busy`] with [`WireOutcome::Failed`] (nothing was done). A request whose bytes
//! do not decode is rejected on its stream and changes nothing. Stops when the node's
//! cancellation token fires or the inbox closes.
//!
//! ```no_run
//! # async fn demo(
//! #     node: std::sync::Arc<shoal_node::Node<shoal_node::QuicTransport, shoal_storage::MemoryStore>>,
//! #     clients: shoal_node::transport::ClientInbox,
//! # ) {
//! // After `QuicTransport::bind` and `Node::start`:
//! let service = shoal_node::service::spawn(node.clone(), clients);
//! // ... later, `node.shutdown().await` stops it too.
//! # drop(service);
//! # }
//! ```

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use shoal_client::protocol::{
    self, AntiEntropyStatus, ClientRequest, ClientResponse, ErrorCode, ErrorReply, GetReply,
    GetRequest, HintInfo, MemberInfo, MemberState as WireState, NodeInfo, NodeStatus, ReplicaState,
    RingInfo, UpdateRequest, WireOutcome,
};
use shoal_membership::{MemberState, NodeId as MemberId, PartitionId};
use shoal_storage::Store;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::request::{Outcome, RequestError};
use crate::runtime::Node;
use crate::transport::{ClientInbox, ClientRpc, Transport};

/// Client requests served at once by one node.
pub const MAX_SERVING: usize = 1024;
/// Longest timeout a client may ask for; longer ones are cut to this.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(60);

/// Starts serving `clients` for `node`; the task ends when the node is cancelled or the
/// inbox closes.
pub fn spawn<T: Transport, S: Store>(
    node: Arc<Node<T, S>>,
    clients: ClientInbox,
) -> JoinHandle<()> {
    tokio::spawn(run(node, clients))
}

/// Serves `clients` for `node` until the node is cancelled or the inbox closes.
pub async fn run<T: Transport, S: Store>(node: Arc<Node<T, S>>, mut clients: ClientInbox) {
    let cancel = node.cancellation();
    let slots = Arc::new(Semaphore::new(MAX_SERVING));
    loop {
        let rpc = tokio::select! {
            _ = cancel.cancelled() => break,
            rpc = clients.rpcs.recv() => match rpc {
                Some(rpc) => rpc,
                None => break,
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            answer(rpc, &busy("node overloaded"));
            continue;
        };
        let node = node.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => {}
                () = handle(&node, rpc) => {}
            }
            drop(permit);
        });
    }
}

fn busy(message: &str) -> ClientResponse {
    ClientResponse::Error(ErrorReply {
        outcome: WireOutcome::Failed,
        code: ErrorCode::Busy,
        message: message.into(),
    })
}

fn answer(rpc: ClientRpc, response: &ClientResponse) {
    match protocol::encode_response(response) {
        Ok(bytes) => rpc.respond(Bytes::from(bytes)),
        Err(e) => rpc.reject(format!("response not encodable: {e}")),
    }
}

#[tracing::instrument(level = "debug", skip_all, fields(client = %rpc.client, addr = %rpc.addr))]
async fn handle<T: Transport, S: Store>(node: &Node<T, S>, rpc: ClientRpc) {
    let request = match protocol::decode_request(&rpc.request) {
        Ok(request) => request,
        Err(e) => return rpc.reject(format!("malformed request: {e}")),
    };
    let response = match request {
        ClientRequest::Update(request) => update(node, request).await,
        ClientRequest::Get(request) => get(node, request).await,
        ClientRequest::Ring => ClientResponse::Ring(ring_info(node)),
        ClientRequest::CreateKeyspace { name, n } => create_keyspace(node, &name, n),
        ClientRequest::Status => status(node),
        ClientRequest::Inspect { keyspace, key } => inspect(node, &keyspace, &key),
    };
    answer(rpc, &response);
}

fn timeout(ms: u64) -> Duration {
    Duration::from_millis(ms).min(MAX_TIMEOUT)
}

async fn update<T: Transport, S: Store>(node: &Node<T, S>, r: UpdateRequest) -> ClientResponse {
    tracing::debug!(op = %r.op, keyspace = %r.keyspace, "client update");
    match node
        .update(
            &r.keyspace,
            &r.key,
            r.update,
            r.w as usize,
            timeout(r.timeout_ms),
        )
        .await
    {
        Ok(ack) => ClientResponse::Updated {
            acks: ack.acks as u32,
        },
        Err(e) => error_reply(e),
    }
}

async fn get<T: Transport, S: Store>(node: &Node<T, S>, r: GetRequest) -> ClientResponse {
    match node
        .get(&r.keyspace, &r.key, r.r as usize, timeout(r.timeout_ms))
        .await
    {
        Ok(got) => ClientResponse::Got(GetReply {
            kind: got.value.as_ref().map(|v| v.kind()),
            view: got.value.filter(|v| v.is_present()).map(|v| v.view()),
            replies: got.replies as u32,
        }),
        Err(e) => error_reply(e),
    }
}

fn error_reply(e: RequestError) -> ClientResponse {
    let outcome = match e.outcome() {
        Outcome::Failed => WireOutcome::Failed,
        Outcome::Unknown => WireOutcome::Unknown,
    };
    let code = match &e {
        RequestError::Invalid(_) => ErrorCode::Invalid,
        RequestError::Storage(_) | RequestError::StorageWrite(_) => ErrorCode::Storage,
        RequestError::Unavailable { .. } => ErrorCode::Unavailable,
        RequestError::ShuttingDown => ErrorCode::Busy,
        _ => ErrorCode::Quorum,
    };
    // The client's error names the kind already ("invalid request: …"): send the detail.
    let message = match e {
        RequestError::Invalid(detail) => detail,
        e => e.to_string(),
    };
    ClientResponse::Error(ErrorReply {
        outcome,
        code,
        message,
    })
}

fn invalid(message: String) -> ClientResponse {
    ClientResponse::Error(ErrorReply {
        outcome: WireOutcome::Failed,
        code: ErrorCode::Invalid,
        message,
    })
}

fn create_keyspace<T: Transport, S: Store>(
    node: &Node<T, S>,
    name: &str,
    n: u32,
) -> ClientResponse {
    match node.create_keyspace(name, n as usize) {
        Ok(ring_version) => {
            tracing::info!(keyspace = name, n, "keyspace set");
            ClientResponse::KeyspaceSet { ring_version }
        }
        Err(crate::runtime::KeyspaceChangeError::Invalid(e)) => invalid(e.to_string()),
        Err(e) => ClientResponse::Error(ErrorReply {
            outcome: WireOutcome::Failed,
            code: ErrorCode::Storage,
            message: e.to_string(),
        }),
    }
}

fn wire_state(state: MemberState) -> WireState {
    match state {
        MemberState::Alive => WireState::Alive,
        MemberState::Suspect => WireState::Suspect,
        MemberState::Dead => WireState::Dead,
        MemberState::Left => WireState::Left,
    }
}

/// This node's status: its SWIM view (itself first), ring, keyspaces and hint backlog.
pub fn status<T: Transport, S: Store>(node: &Node<T, S>) -> ClientResponse {
    let view = node.cluster();
    let owned = view.ring.replicas_per_node();
    let partitions = |id: &str| {
        MemberId::new(id)
            .ok()
            .and_then(|id| owned.get(&id).copied())
            .unwrap_or(0) as u32
    };
    let in_ring = |id: &str| MemberId::new(id).is_ok_and(|id| view.state.is_joined(&id));
    let me = node.id();
    let mut members = vec![MemberInfo {
        node_id: me.id.to_string(),
        addr: me.addr,
        state: WireState::Alive,
        incarnation: node.incarnation(),
        ring_version: view.version,
        in_ring: in_ring(me.id.as_str()),
        partitions: partitions(me.id.as_str()),
    }];
    for m in node.member_views() {
        members.push(MemberInfo {
            in_ring: in_ring(&m.id),
            partitions: partitions(&m.id),
            node_id: m.id,
            addr: m.addr,
            state: wire_state(m.state),
            incarnation: m.incarnation,
            ring_version: m.ring_version,
        });
    }
    // Ring members SWIM has not met (down since this node started): listed as dead.
    for (id, _) in view.state.ring().entries() {
        if view.state.is_joined(id) && !members.iter().any(|m| m.node_id == id.as_str()) {
            members.push(MemberInfo {
                node_id: id.as_str().to_owned(),
                addr: view
                    .state
                    .addr(id)
                    .unwrap_or_else(|| ([0, 0, 0, 0], 0).into()),
                state: WireState::Dead,
                incarnation: 0,
                ring_version: 0,
                in_ring: true,
                partitions: partitions(id.as_str()),
            });
        }
    }
    let metrics = node.metrics();
    let hints = node
        .hint_backlog()
        .into_iter()
        .map(|(target, b)| HintInfo {
            target,
            keys: b.keys,
            oldest_age_ms: b.oldest_age.map(|a| a.as_millis() as u64),
        })
        .collect();
    ClientResponse::Status(NodeStatus {
        node_id: me.id.to_string(),
        addr: me.addr,
        ring_version: view.version,
        members,
        keyspaces: keyspaces(&view.state),
        default_n: node.config().default_n as u32,
        hints,
        in_flight: node.in_flight() as u32,
        anti_entropy: anti_entropy_status(node),
        requests: metrics.updates_acknowledged
            + metrics.updates_failed
            + metrics.updates_unknown
            + metrics.gets_answered
            + metrics.gets_failed,
        request_errors: metrics.updates_failed + metrics.updates_unknown + metrics.gets_failed,
        rpc_errors: metrics.rpc_errors,
        data_digest: node.data_digest(),
        anti_entropy_paused: node.anti_entropy_paused(),
    })
}

fn anti_entropy_status<T: Transport, S: Store>(node: &Node<T, S>) -> AntiEntropyStatus {
    let coverage = node.ae_coverage();
    let metrics = node.metrics();
    AntiEntropyStatus {
        exchanges: metrics.ae_exchanges,
        keys_repaired: metrics.ae_keys_repaired,
        bytes_sent: metrics.ae_bytes_sent,
        bytes_received: metrics.ae_bytes_received,
        partitions: coverage.partitions,
        never_compared: coverage.never_compared,
        oldest_compare_ms: coverage.oldest.map(|a| a.as_millis() as u64),
        compare_ages_ms: coverage
            .ages
            .iter()
            .map(|(p, age)| (*p, age.map(|a| a.as_millis() as u64)))
            .collect(),
    }
}

/// This node's own replica of a key, straight from its store.
fn inspect<T: Transport, S: Store>(
    node: &Node<T, S>,
    keyspace: &str,
    key: &[u8],
) -> ClientResponse {
    let storage_key = match crate::runtime::storage_key(keyspace, key) {
        Ok(k) => k,
        Err(e) => return invalid(e.to_string()),
    };
    let view = node.cluster();
    let partition = view.ring.partition_of(&storage_key);
    let n = node.n_for(keyspace);
    let primary = view
        .ring
        .preference_list(partition)
        .iter()
        .take(view.ring.primaries(partition).len().min(n))
        .any(|id| id.as_str() == node.id().id.as_str());
    let value = node
        .read_local(partition.0, &storage_key)
        .and_then(|record| {
            let value = record.as_ref().map(|r| r.decode()).transpose()?;
            Ok((record, value))
        });
    match value {
        Ok((record, value)) => ClientResponse::Inspected(ReplicaState {
            view: value.filter(|v| v.is_present()).map(|v| v.view()),
            node_id: node.id().id.to_string(),
            partition: partition.0,
            kind: record.as_ref().map(|r| r.kind()),
            digest: record.as_ref().map(|r| r.hash()),
            primary,
        }),
        Err(e) => ClientResponse::Error(ErrorReply {
            outcome: WireOutcome::Failed,
            code: ErrorCode::Storage,
            message: e.to_string(),
        }),
    }
}

/// The routing table in this node's view: ring members with their addresses and liveness.
pub fn ring_info<T: Transport, S: Store>(node: &Node<T, S>) -> RingInfo {
    let view = node.cluster();
    let ring = &view.ring;
    let mut nodes: Vec<NodeInfo> = Vec::new();
    let mut index_of = std::collections::HashMap::new();
    for (id, _) in view.state.ring().entries() {
        let Some(addr) = node.addr_of(id.as_str()) else {
            continue;
        };
        index_of.insert(id.as_str().to_owned(), nodes.len() as u16);
        nodes.push(NodeInfo {
            id: id.as_str().to_owned(),
            addr,
            live: id.as_str() == node.id().id.as_str() || node.is_live(id.as_str()),
        });
    }
    let partitions = ring.partitioner().partitions();
    let mut preference_lists = Vec::with_capacity(partitions as usize);
    let mut primaries = Vec::with_capacity(partitions as usize);
    for p in 0..partitions {
        let partition = PartitionId(p);
        preference_lists.push(
            ring.preference_list(partition)
                .iter()
                .filter_map(|id| index_of.get(id.as_str()).copied())
                .collect(),
        );
        primaries.push(ring.primaries(partition).len() as u16);
    }
    RingInfo {
        version: view.version,
        partitions,
        nodes,
        preference_lists,
        primaries,
        keyspaces: keyspaces(&view.state),
        default_n: node.config().default_n as u32,
    }
}

/// Created keyspaces and their N, as the client protocol carries them.
fn keyspaces(state: &crate::cluster::ClusterState) -> Vec<(String, u32)> {
    state
        .keyspaces()
        .map(|(name, n)| (name.to_owned(), n as u32))
        .collect()
}
