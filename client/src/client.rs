//! [`Client`]: routing each request to a live replica of its key, deadlines, retries with
//! backoff and jitter, failover along the preference list.
//!
//! # Routing
//!
//! At [`build`](ClientBuilder::build) the client fetches the routing table
//! ([`RingInfo`]) from the first seed that answers, and refreshes it in the background once it
//! is older than [`ClientConfig::ring_refresh`] or after a failed attempt. A node this client
//! failed to reach (connect error, timeout, lost connection, silence) is tried after the others
//! for 10 s, so a node that just died costs at most one attempt per request. An attempt whose
//! request the node has not acknowledged while it sends nothing at all is abandoned after
//! [`ClientConfig::silence`] (300 ms) rather than at the deadline: a node that is cut off or
//! paused costs a get 300 ms before it is asked elsewhere, and an update an unknown outcome
//! (or, for set adds and removes, a retry elsewhere) within 300 ms. A request for a key
//! goes to the first node of the key's preference list that the table marks live; later
//! attempts walk the rest of the list (live nodes first, then the others). Without a table
//! (no seed answered yet) requests go to the seeds.
//!
//! # Retries: a counter increment is never applied twice
//!
//! Every request has one deadline (its timeout); attempts, backoff and connecting all count
//! against it. An attempt is retried on another node only when its outcome is known to be
//! "nothing happened": the connection could not be made, the node refused the request
//! before acting ([`WireOutcome::Failed`]: unavailable, overloaded, quorum not reached with
//! nothing persisted). When an update may have been delivered — the deadline passed, the
//! connection broke mid-request, the node answered [`WireOutcome::Unknown`] — it is retried
//! only if applying it twice equals applying it once (set adds and removes); any other update
//! (a counter increment, a register put, a delete, a map update) is reported as
//! [`Error::Unknown`]. Gets are always retried.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use rand::Rng;
use shoal_membership::Partitioner;
use shoal_storage::{MapOp, Update};
use tokio::time::Instant;

use crate::error::Error;
use crate::protocol::{
    self, ClientRequest, ClientResponse, ErrorCode, GetReply, GetRequest, NodeStatus, OpId,
    ReplicaState, RingInfo, UpdateRequest, WireOutcome,
};
use crate::tls::TlsMaterial;
use crate::transport::{QuicClient, TransportError};

/// Settings of a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Default read quorum. Default 2.
    pub r: u32,
    /// Default write quorum. Default 2.
    pub w: u32,
    /// Default deadline of one request, attempts and backoff included. Default 5 s.
    pub timeout: Duration,
    /// Longest wait for one connection handshake. Default 2 s.
    pub connect_timeout: Duration,
    /// Most attempts per request. Default 4.
    pub max_attempts: u32,
    /// Backoff before the second attempt; doubles per attempt, with full jitter between half
    /// and all of it. Default 20 ms.
    pub backoff: Duration,
    /// Longest backoff. Default 500 ms.
    pub max_backoff: Duration,
    /// Age after which the routing table is refreshed (in the background). Default 2 s.
    pub ring_refresh: Duration,
    /// An attempt whose request the node has not acknowledged for this long (or four round
    /// trips, if longer), with nothing at all received from the node for the last half of it,
    /// is abandoned: the node is cut off, paused or gone. Its outcome is unknown, so the retry
    /// rule decides what follows. With `None` such an attempt waits out the request's whole
    /// deadline. Default 300 ms.
    pub silence: Option<Duration>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            r: 2,
            w: 2,
            timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            max_attempts: 4,
            backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(500),
            ring_refresh: Duration::from_secs(2),
            silence: Some(SILENCE),
        }
    }
}

/// Per-request settings; `None` uses the client's default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestOptions {
    /// Read quorum.
    pub r: Option<u32>,
    /// Write quorum.
    pub w: Option<u32>,
    /// Deadline of the whole request.
    pub timeout: Option<Duration>,
}

/// Builds a [`Client`]: `Client::builder().seeds(..).tls(..).build().await`.
#[derive(Debug, Default)]
pub struct ClientBuilder {
    seeds: Vec<SocketAddr>,
    tls: Option<TlsMaterial>,
    config: ClientConfig,
}

impl ClientBuilder {
    /// Addresses of nodes to fetch the routing table from (any node of the cluster will do).
    pub fn seeds(mut self, seeds: impl IntoIterator<Item = SocketAddr>) -> Self {
        self.seeds.extend(seeds);
        self
    }

    /// The client's certificate material (see [`TlsMaterial::load_client`]).
    pub fn tls(mut self, material: TlsMaterial) -> Self {
        self.tls = Some(material);
        self
    }

    /// All settings at once.
    pub fn config(mut self, config: ClientConfig) -> Self {
        self.config = config;
        self
    }

    /// Connects to the first seed that answers and fetches the routing table.
    ///
    /// Errors: [`Error::Invalid`] without seeds or TLS material, [`Error::NoCluster`] if no
    /// seed answered within [`ClientConfig::timeout`].
    pub async fn build(self) -> Result<Client, Error> {
        if self.seeds.is_empty() {
            return Err(Error::Invalid("no seed addresses".into()));
        }
        let tls = self
            .tls
            .ok_or_else(|| Error::Invalid("no TLS material".into()))?;
        let client = Client {
            inner: Arc::new(Inner {
                tls,
                seeds: self.seeds,
                config: self.config,
                routing: RwLock::new(None),
                conns: Mutex::new(HashMap::new()),
                refreshing: std::sync::atomic::AtomicBool::new(false),
                suspects: Mutex::new(HashMap::new()),
            }),
        };
        let deadline = Instant::now() + client.inner.config.timeout;
        client
            .inner
            .refresh_ring(deadline)
            .await
            .map_err(Error::NoCluster)?;
        Ok(client)
    }
}

/// The routing table with its partitioner and when it was fetched.
#[derive(Debug)]
struct Routing {
    info: RingInfo,
    partitioner: Partitioner,
    fetched: Instant,
}

#[derive(Debug)]
struct Inner {
    tls: TlsMaterial,
    seeds: Vec<SocketAddr>,
    config: ClientConfig,
    routing: RwLock<Option<Arc<Routing>>>,
    conns: Mutex<HashMap<SocketAddr, Arc<QuicClient>>>,
    refreshing: std::sync::atomic::AtomicBool,
    /// Nodes an attempt recently failed to reach, until when: tried after the others.
    suspects: Mutex<HashMap<SocketAddr, Instant>>,
}

/// How long a node that could not be reached is tried after the others.
const SUSPECT_FOR: Duration = Duration::from_secs(10);

/// Default [`ClientConfig::silence`]. A node acknowledges a request within its maximum ACK
/// delay (25 ms) of receiving it, so 300 ms of nothing at all is an outage, not a busy node,
/// on any path whose round trip is well under it (longer ones get four round trips).
const SILENCE: Duration = Duration::from_millis(300);

/// A connection pool to a Shoal cluster, routing each request to a replica of its key.
/// Cheap to clone (clones share connections and the routing table).
///
/// Use the typed handles: [`counter`](Self::counter), [`set`](Self::set),
/// [`register`](Self::register), [`map`](Self::map), and [`key`](Self::key) for any type.
///
/// ```no_run
/// use std::path::Path;
///
/// use shoal_client::identity::ClientName;
/// use shoal_client::tls::TlsMaterial;
/// use shoal_client::Client;
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let tls = TlsMaterial::load_client(Path::new("cluster/tls"), &ClientName::new("dev")?)?;
/// let client = Client::builder()
///     .seeds(["127.0.0.1:7100".parse()?])
///     .tls(tls)
///     .build()
///     .await?;
/// client.counter("visits").incr(1).await?;
/// assert!(client.counter("visits").get().await? >= 1);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

/// What kind of request, for the retry rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Retried whatever happened to an earlier attempt (gets, idempotent updates).
    Always,
    /// Retried only after attempts known to have done nothing.
    OnlyIfNothingHappened,
}

fn retry_rule(update: &Update) -> Retry {
    match update {
        Update::Set(_) | Update::Map(MapOp::Set { .. }) => Retry::Always,
        _ => Retry::OnlyIfNothingHappened,
    }
}

/// What one attempt ended with.
enum Attempt {
    /// Boxed: a node status is large, and attempts are passed around by value.
    Done(Box<ClientResponse>),
    /// Nothing happened; try another node.
    NothingHappened(Option<ErrorCode>, String),
    /// It may have taken effect.
    MayHaveHappened(String),
    /// Stop: the request itself is bad (nothing happened).
    Fatal(Error),
}

impl Client {
    /// Starts building a client.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// The client's settings.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// The current routing table.
    pub fn ring(&self) -> Option<RingInfo> {
        self.inner.routing().map(|r| r.info.clone())
    }

    /// Fetches the routing table now (from the live nodes it lists, else the seeds).
    pub async fn refresh_ring(&self) -> Result<RingInfo, Error> {
        let deadline = Instant::now() + self.inner.config.timeout;
        self.inner
            .refresh_ring(deadline)
            .await
            .map_err(Error::NoCluster)?;
        Ok(self.ring().expect("just fetched"))
    }

    /// Sets keyspace `name`'s replication factor N (1 to the ring's replicas), creating the
    /// keyspace if needed, on one live node; the change spreads from it by gossip. Returns
    /// that node's new cluster-state version. Setting the same N again is harmless, so the
    /// request is retried on other nodes when an attempt fails.
    pub async fn create_keyspace(&self, name: &str, n: u32) -> Result<u64, Error> {
        let request = ClientRequest::CreateKeyspace {
            name: name.to_owned(),
            n,
        };
        match self.any_node(&request).await? {
            ClientResponse::KeyspaceSet { ring_version } => Ok(ring_version),
            other => Err(unexpected(other)),
        }
    }

    /// The status of the node at `addr`: its view of the members, its ring version, its hint
    /// backlog. Asks that node only.
    pub async fn node_status(&self, addr: SocketAddr) -> Result<NodeStatus, Error> {
        match self.one_node(addr, &ClientRequest::Status).await? {
            ClientResponse::Status(status) => Ok(status),
            other => Err(unexpected(other)),
        }
    }

    /// The status of any live node (the first that answers).
    pub async fn status(&self) -> Result<NodeStatus, Error> {
        match self.any_node(&ClientRequest::Status).await? {
            ClientResponse::Status(status) => Ok(status),
            other => Err(unexpected(other)),
        }
    }

    /// The replica of `key` of `keyspace` held by the node at `addr`, read from its store
    /// without a quorum (a diagnostic: compare replicas' digests).
    pub async fn inspect(
        &self,
        addr: SocketAddr,
        keyspace: &str,
        key: &[u8],
    ) -> Result<ReplicaState, Error> {
        let request = ClientRequest::Inspect {
            keyspace: keyspace.to_owned(),
            key: key.to_vec(),
        };
        match self.one_node(addr, &request).await? {
            ClientResponse::Inspected(state) => Ok(state),
            other => Err(unexpected(other)),
        }
    }

    /// Sends `request` (one that is safe to repeat) to the node at `addr` only, within the
    /// configured timeout.
    async fn one_node(
        &self,
        addr: SocketAddr,
        request: &ClientRequest,
    ) -> Result<ClientResponse, Error> {
        match self.attempt(addr, request, self.inner.config.timeout).await {
            Attempt::Done(response) => Ok(*response),
            Attempt::Fatal(e) => Err(e),
            Attempt::NothingHappened(code, message) => Err(Error::Failed {
                code,
                message: format!("{addr}: {message}"),
                attempts: 1,
            }),
            Attempt::MayHaveHappened(message) => Err(Error::Unknown {
                message: format!("{addr}: {message}"),
                attempts: 1,
            }),
        }
    }

    /// Sends `request` (one that is safe to repeat) to the live nodes of the routing table,
    /// then the seeds, until one answers.
    async fn any_node(&self, request: &ClientRequest) -> Result<ClientResponse, Error> {
        let mut candidates: Vec<SocketAddr> = self
            .ring()
            .map(|r| r.nodes.iter().filter(|n| n.live).map(|n| n.addr).collect())
            .unwrap_or_default();
        for seed in &self.inner.seeds {
            if !candidates.contains(seed) {
                candidates.push(*seed);
            }
        }
        let mut last = Error::NoCluster("no node to ask".into());
        for addr in candidates {
            match self.one_node(addr, request).await {
                Ok(response) => return Ok(response),
                Err(e @ Error::Invalid(_)) => return Err(e),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Applies `update` to `key` of `keyspace`: `Ok` once W replicas persisted it. See the
    /// [module docs](self) for retries. Returns the number of replicas that had persisted it.
    #[tracing::instrument(level = "debug", skip(self, key, update, options))]
    pub async fn update(
        &self,
        keyspace: &str,
        key: &[u8],
        update: Update,
        options: &RequestOptions,
    ) -> Result<u32, Error> {
        let rule = retry_rule(&update);
        let request = ClientRequest::Update(UpdateRequest {
            op: OpId::random(),
            keyspace: keyspace.to_owned(),
            key: key.to_vec(),
            update,
            w: options.w.unwrap_or(self.inner.config.w),
            timeout_ms: 0,
        });
        match self.execute(keyspace, key, request, rule, options).await? {
            ClientResponse::Updated { acks } => Ok(acks),
            other => Err(Error::Unknown {
                message: format!("unexpected answer to an update: {other:?}"),
                attempts: 1,
            }),
        }
    }

    /// Reads `key` of `keyspace` from R replicas, merged.
    #[tracing::instrument(level = "debug", skip(self, key, options))]
    pub async fn get(
        &self,
        keyspace: &str,
        key: &[u8],
        options: &RequestOptions,
    ) -> Result<GetReply, Error> {
        let request = ClientRequest::Get(GetRequest {
            keyspace: keyspace.to_owned(),
            key: key.to_vec(),
            r: options.r.unwrap_or(self.inner.config.r),
            timeout_ms: 0,
        });
        match self
            .execute(keyspace, key, request, Retry::Always, options)
            .await?
        {
            ClientResponse::Got(reply) => Ok(reply),
            other => Err(Error::Failed {
                code: None,
                message: format!("unexpected answer to a get: {other:?}"),
                attempts: 1,
            }),
        }
    }

    async fn execute(
        &self,
        keyspace: &str,
        key: &[u8],
        mut request: ClientRequest,
        rule: Retry,
        options: &RequestOptions,
    ) -> Result<ClientResponse, Error> {
        let storage_key = protocol::storage_key(keyspace, key).ok_or_else(|| {
            Error::Invalid(format!(
                "keyspace name must be 1 to {} bytes, got {}",
                protocol::MAX_KEYSPACE_LEN,
                keyspace.len()
            ))
        })?;
        let config = &self.inner.config;
        let timeout = options.timeout.unwrap_or(config.timeout);
        let deadline = Instant::now() + timeout;
        let candidates = self.inner.candidates(&storage_key);
        let mut last = (None, String::from("no node to send to"));
        let mut unknown: Option<String> = None;
        let mut attempts = 0;
        while attempts < config.max_attempts.max(1) && !candidates.is_empty() {
            let addr = candidates[attempts as usize % candidates.len()];
            if attempts > 0 {
                let pause = backoff(config, attempts);
                if Instant::now() + pause >= deadline {
                    break;
                }
                tokio::time::sleep(pause).await;
            }
            attempts += 1;
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            // The node gets most of the remaining time, so its answer arrives before ours ends.
            let node_budget = remaining.mul_f64(0.9).max(Duration::from_millis(1));
            set_timeout(&mut request, node_budget);
            match self.attempt(addr, &request, remaining).await {
                Attempt::Done(response) => return Ok(*response),
                Attempt::Fatal(e) => return Err(e),
                Attempt::NothingHappened(code, message) => {
                    tracing::debug!(%addr, %message, "attempt failed; nothing happened");
                    last = (code, message);
                }
                Attempt::MayHaveHappened(message) => {
                    tracing::debug!(%addr, %message, "attempt may have taken effect");
                    if rule == Retry::OnlyIfNothingHappened {
                        return Err(Error::Unknown { message, attempts });
                    }
                    unknown = Some(message);
                }
            }
            self.inner.refresh_in_background();
        }
        match unknown {
            // An idempotent update that may have been applied: still unknown.
            Some(message) if matches!(request, ClientRequest::Update(_)) => {
                Err(Error::Unknown { message, attempts })
            }
            _ => Err(Error::Failed {
                code: last.0,
                message: if attempts == 0 {
                    format!("no attempt within {timeout:?}: {}", last.1)
                } else {
                    last.1
                },
                attempts,
            }),
        }
    }

    async fn attempt(
        &self,
        addr: SocketAddr,
        request: &ClientRequest,
        within: Duration,
    ) -> Attempt {
        let bytes = match protocol::encode_request(request) {
            Ok(bytes) => Bytes::from(bytes),
            Err(e) => return Attempt::Fatal(Error::Invalid(e.to_string())),
        };
        let started = Instant::now();
        let conn = match self.inner.connection(addr, within).await {
            Ok(conn) => conn,
            Err(e) => {
                self.inner.suspect(addr);
                return Attempt::NothingHappened(None, e.to_string());
            }
        };
        let within = within.saturating_sub(started.elapsed());
        let answer = match conn.rpc(bytes, within).await {
            Ok(answer) => answer,
            Err(e) => {
                self.inner.forget(addr, &conn);
                self.inner.suspect(addr);
                return if e.may_have_taken_effect() {
                    Attempt::MayHaveHappened(e.to_string())
                } else {
                    Attempt::NothingHappened(None, e.to_string())
                };
            }
        };
        match protocol::decode_response(&answer) {
            Ok(ClientResponse::Error(reply)) => match (reply.outcome, reply.code) {
                (WireOutcome::Unknown, _) => Attempt::MayHaveHappened(reply.message),
                (WireOutcome::Failed, ErrorCode::Invalid) => {
                    Attempt::Fatal(Error::Invalid(reply.message))
                }
                (WireOutcome::Failed, ErrorCode::Storage) => Attempt::Fatal(Error::Failed {
                    code: Some(ErrorCode::Storage),
                    message: reply.message,
                    attempts: 1,
                }),
                (WireOutcome::Failed, code) => Attempt::NothingHappened(Some(code), reply.message),
            },
            Ok(response) => Attempt::Done(Box::new(response)),
            Err(e) => Attempt::MayHaveHappened(format!("undecodable answer: {e}")),
        }
    }
}

fn unexpected(response: ClientResponse) -> Error {
    Error::Failed {
        code: None,
        message: format!("unexpected answer: {response:?}"),
        attempts: 1,
    }
}

fn set_timeout(request: &mut ClientRequest, budget: Duration) {
    let ms = budget.as_millis().clamp(1, u64::MAX as u128) as u64;
    match request {
        ClientRequest::Update(r) => r.timeout_ms = ms,
        ClientRequest::Get(r) => r.timeout_ms = ms,
        ClientRequest::Ring
        | ClientRequest::CreateKeyspace { .. }
        | ClientRequest::Status
        | ClientRequest::Inspect { .. } => {}
    }
}

/// Backoff before attempt `attempt + 1` (`attempt` ≥ 1): exponential, capped, with jitter
/// between half and all of it, so clients that failed together do not retry together.
fn backoff(config: &ClientConfig, attempt: u32) -> Duration {
    let exp = config
        .backoff
        .saturating_mul(1u32 << (attempt - 1).min(16))
        .min(config.max_backoff);
    exp.mul_f64(rand::rng().random_range(0.5..=1.0))
}

impl Inner {
    fn routing(&self) -> Option<Arc<Routing>> {
        self.routing
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Nodes to try for a storage key, in order: the preference list's live nodes, then its
    /// other nodes, each group with the nodes this client recently failed to reach last; the
    /// seeds without a routing table.
    fn candidates(self: &Arc<Self>, storage_key: &[u8]) -> Vec<SocketAddr> {
        let Some(routing) = self.routing() else {
            return self.seeds.clone();
        };
        if routing.fetched.elapsed() > self.config.ring_refresh {
            self.refresh_in_background();
        }
        let partition = routing.partitioner.partition_of(storage_key);
        let list: Vec<_> = routing.info.preference_list(partition).collect();
        let mut out: Vec<SocketAddr> = list.iter().filter(|n| n.live).map(|n| n.addr).collect();
        out.extend(list.iter().filter(|n| !n.live).map(|n| n.addr));
        if out.is_empty() {
            out = self.seeds.clone();
        }
        // Stable: keeps the preference order within each group.
        out.sort_by_key(|addr| self.is_suspect(*addr));
        out
    }

    fn is_suspect(&self, addr: SocketAddr) -> bool {
        let mut suspects = self.suspects.lock().unwrap_or_else(|e| e.into_inner());
        match suspects.get(&addr) {
            Some(until) if *until > Instant::now() => true,
            Some(_) => {
                suspects.remove(&addr);
                false
            }
            None => false,
        }
    }

    /// `addr` could not be reached (or went silent): try it after the others for a while.
    fn suspect(&self, addr: SocketAddr) {
        self.suspects
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(addr, Instant::now() + SUSPECT_FOR);
    }

    fn refresh_in_background(self: &Arc<Self>) {
        use std::sync::atomic::Ordering;
        if self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let deadline = Instant::now() + this.config.timeout;
            if let Err(e) = this.refresh_ring(deadline).await {
                tracing::debug!(error = %e, "routing table refresh failed");
            }
            this.refreshing.store(false, Ordering::Release);
        });
    }

    /// Fetches the routing table from the live nodes of the current one, then the seeds.
    async fn refresh_ring(&self, deadline: Instant) -> Result<(), String> {
        let mut sources: Vec<SocketAddr> = self
            .routing()
            .map(|r| {
                r.info
                    .nodes
                    .iter()
                    .filter(|n| n.live)
                    .map(|n| n.addr)
                    .collect()
            })
            .unwrap_or_default();
        for seed in &self.seeds {
            if !sources.contains(seed) {
                sources.push(*seed);
            }
        }
        sources.sort_by_key(|addr| self.is_suspect(*addr));
        let request =
            Bytes::from(protocol::encode_request(&ClientRequest::Ring).map_err(|e| e.to_string())?);
        let mut errors = Vec::new();
        for addr in sources {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                errors.push("deadline passed".to_owned());
                break;
            }
            // One source may not take the whole deadline: a node that just died keeps an open
            // connection until its idle timeout.
            let remaining = remaining.min(self.config.connect_timeout);
            let result = async {
                let conn = self.connection(addr, remaining).await.map_err(|e| {
                    self.suspect(addr);
                    e.to_string()
                })?;
                let answer = conn.rpc(request.clone(), remaining).await.map_err(|e| {
                    self.forget(addr, &conn);
                    self.suspect(addr);
                    e.to_string()
                })?;
                match protocol::decode_response(&answer).map_err(|e| e.to_string())? {
                    ClientResponse::Ring(info) => Ok(info),
                    other => Err(format!("unexpected answer: {other:?}")),
                }
            }
            .await;
            match result.and_then(|info| {
                let partitioner = info.validate()?;
                Ok(Routing {
                    info,
                    partitioner,
                    fetched: Instant::now(),
                })
            }) {
                Ok(routing) => {
                    *self.routing.write().unwrap_or_else(|e| e.into_inner()) =
                        Some(Arc::new(routing));
                    return Ok(());
                }
                Err(e) => errors.push(format!("{addr}: {e}")),
            }
        }
        Err(errors.join("; "))
    }

    /// The pooled connection to `addr`, connecting if there is none.
    async fn connection(
        &self,
        addr: SocketAddr,
        within: Duration,
    ) -> Result<Arc<QuicClient>, TransportError> {
        if let Some(conn) = self
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&addr)
            .filter(|c| c.is_open())
            .cloned()
        {
            return Ok(conn);
        }
        let timeout = within.min(self.config.connect_timeout);
        let mut conn = QuicClient::connect(&self.tls, addr, timeout).await?;
        if let Some(silence) = self.config.silence {
            conn = conn.give_up_when_silent(silence);
        }
        let conn = Arc::new(conn);
        self.conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(addr, conn.clone());
        Ok(conn)
    }

    /// Drops `conn` from the pool (after it failed), unless it was replaced already.
    fn forget(&self, addr: SocketAddr, conn: &Arc<QuicClient>) {
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        if conns.get(&addr).is_some_and(|c| Arc::ptr_eq(c, conn)) {
            conns.remove(&addr);
        }
    }
}

#[cfg(test)]
mod tests {
    use shoal_storage::SetOp;

    use super::*;

    #[test]
    fn only_idempotent_updates_are_retried_after_a_possible_delivery() {
        assert_eq!(
            retry_rule(&Update::CounterAdd(1)),
            Retry::OnlyIfNothingHappened
        );
        assert_eq!(retry_rule(&Update::Delete), Retry::OnlyIfNothingHappened);
        assert_eq!(
            retry_rule(&Update::RegisterPut {
                value: b"v".to_vec(),
                context: None
            }),
            Retry::OnlyIfNothingHappened
        );
        assert_eq!(
            retry_rule(&Update::Set(SetOp::Add(vec![b"m".to_vec()]))),
            Retry::Always
        );
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let config = ClientConfig::default();
        for attempt in 1..30 {
            let pause = backoff(&config, attempt);
            let full = config
                .backoff
                .saturating_mul(1 << (attempt - 1).min(16))
                .min(config.max_backoff);
            assert!(pause <= full && pause >= full / 2, "{attempt}: {pause:?}");
        }
    }
}
