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
    self, ClientRequest, ClientResponse, ErrorCode, ErrorReply, GetReply, GetRequest, NodeInfo,
    RingInfo, UpdateRequest, WireOutcome,
};
use shoal_membership::PartitionId;
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
        RequestError::Storage(_) => ErrorCode::Storage,
        RequestError::Unavailable { .. } => ErrorCode::Unavailable,
        RequestError::ShuttingDown => ErrorCode::Busy,
        _ => ErrorCode::Quorum,
    };
    ClientResponse::Error(ErrorReply {
        outcome,
        code,
        message: e.to_string(),
    })
}

/// The routing table in this node's view: ring members with their addresses and liveness.
pub fn ring_info<T: Transport, S: Store>(node: &Node<T, S>) -> RingInfo {
    let ring = node.ring();
    let members = &node.config().members;
    let mut nodes: Vec<NodeInfo> = Vec::with_capacity(members.len());
    let mut index_of = std::collections::HashMap::new();
    for peer in members {
        index_of.insert(peer.id.as_str().to_owned(), nodes.len() as u16);
        nodes.push(NodeInfo {
            id: peer.id.to_string(),
            addr: peer.addr,
            live: peer.id == node.id().id || node.is_live(peer.id.as_str()),
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
        version: ring.version(),
        partitions,
        nodes,
        preference_lists,
        primaries,
    }
}
