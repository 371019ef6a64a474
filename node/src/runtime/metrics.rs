//! The node's metrics: one Prometheus registry per node (`prometheus-client`), the single
//! place its counters live. The admin endpoint's `/metrics` renders it
//! ([`Node::render_metrics`](super::Node::render_metrics)) after refreshing the gauges that
//! are read at scrape time (member states, hint backlog, queue depths, store size);
//! [`MetricsSnapshot`] reads the same counters for tests and `shoal cluster status`.
//!
//! Names (all prefixed `shoal_`):
//!
//! | metric | labels | what |
//! |---|---|---|
//! | `requests_total` | `op` (update, get), `outcome` (ok, failed, unknown) | client requests this node coordinated |
//! | `request_duration_seconds` | `op` | latency histogram of client requests answered here (fixed buckets, so it aggregates across nodes) |
//! | `members` | `state` (alive, suspect, dead, left) | members in this node's SWIM view |
//! | `member_events_total` | `event` (up, suspect, recovered, dead, left, metadata) | SWIM events: `suspect` counts suspicions raised, `recovered` suspicions refuted |
//! | `incarnation_changes_total` | | members seen with a new incarnation |
//! | `hint_backlog_keys`, `hint_backlog_oldest_seconds` | `target` | hints held per target |
//! | `hints_stored_total`, `hints_delivered_total`, `read_repairs_total` | | |
//! | `store_keys`, `store_bytes` | | the store's estimates |
//! | `rpc_errors_total` | `peer`, `kind` (busy, unreachable, timeout, connection_lost, rejected, bad_response, other) | failed peer RPCs |
//! | `peer_bytes_sent_total` | `kind` (swim, or the RPC: replicate, read, deliver_hints, forward_update, forward_get, pull_cluster, ae_roots, ae_hashes, ae_leaf_keys, ae_fetch, ae_push) | message bytes this node sent peers: SWIM datagrams, the requests it made and the responses it gave (so each byte between nodes is counted once, by its sender, when it is handed to the transport; transport framing, QUIC and TLS not included) |
//! | `peer_bytes_received_total` | `kind` (as above) | message bytes this node received from peers, counted when they arrive whole: SWIM datagrams, the requests it decoded and the responses to its own requests (a message lost in a partition and retransmitted by QUIC after it is counted here when it finally arrives, by its receiver) |
//! | `replicate_requests_total`, `replicate_writes_total` | | `Replicate` requests this node's coordinators sent and the writes they carried (writes to one peer made while earlier ones are in flight go together) |
//! | `peer_queue_depth` | `peer`, `class` (foreground, background) | RPCs in flight or waiting per peer |
//! | `in_flight_requests` | | coordinators running |
//! | `ae_exchanges_total`, `ae_keys_repaired_total`, `ae_bytes_sent_total`, `ae_bytes_received_total` | | anti-entropy |
//! | `ae_partitions_never_compared`, `ae_oldest_compare_seconds` | | anti-entropy coverage |
//! | `ae_partition_compare_age_seconds` | `partition` | time since each partition was last fully compared |

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::request::{Outcome, RequestError};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RequestLabels {
    op: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct OpLabels {
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct StateLabels {
    pub(crate) state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct EventLabels {
    event: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct TargetLabels {
    pub(crate) target: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct PeerKindLabels {
    peer: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct PartitionLabels {
    pub(crate) partition: u32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct PeerClassLabels {
    pub(crate) peer: String,
    pub(crate) class: &'static str,
}

type HistogramFamily = Family<OpLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 100 µs to about 26 s, doubling.
    Histogram::new((0..19).map(|i| 0.0001 * f64::from(1u32 << i)))
}

/// The node's metrics; see the module docs.
pub(crate) struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: HistogramFamily,
    hints_stored: Counter,
    hints_delivered: Counter,
    read_repairs: Counter,
    replicate_requests: Counter,
    replicate_writes: Counter,
    ae_exchanges: Counter,
    ae_keys_repaired: Counter,
    ae_bytes_sent: Counter,
    ae_bytes_received: Counter,
    member_events: Family<EventLabels, Counter>,
    incarnation_changes: Counter,
    rpc_errors: Family<PeerKindLabels, Counter>,
    /// The sum of `rpc_errors` (not exported: Prometheus sums the family itself).
    rpc_error_total: Counter,
    peer_bytes: Family<KindLabels, Counter>,
    peer_bytes_received: Family<KindLabels, Counter>,
    pub(crate) members: Family<StateLabels, Gauge>,
    pub(crate) hint_keys: Family<TargetLabels, Gauge>,
    pub(crate) hint_oldest: Family<TargetLabels, Gauge<f64, AtomicU64>>,
    pub(crate) queue_depth: Family<PeerClassLabels, Gauge>,
    pub(crate) store_keys: Gauge,
    pub(crate) store_bytes: Gauge,
    pub(crate) in_flight: Gauge,
    pub(crate) ae_never_compared: Gauge,
    pub(crate) ae_oldest_compare: Gauge<f64, AtomicU64>,
    pub(crate) ae_compare_age: Family<PartitionLabels, Gauge<f64, AtomicU64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut m = Self {
            registry: Registry::with_prefix("shoal"),
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            hints_stored: Counter::default(),
            hints_delivered: Counter::default(),
            read_repairs: Counter::default(),
            replicate_requests: Counter::default(),
            replicate_writes: Counter::default(),
            ae_exchanges: Counter::default(),
            ae_keys_repaired: Counter::default(),
            ae_bytes_sent: Counter::default(),
            ae_bytes_received: Counter::default(),
            member_events: Family::default(),
            incarnation_changes: Counter::default(),
            rpc_errors: Family::default(),
            rpc_error_total: Counter::default(),
            peer_bytes: Family::default(),
            peer_bytes_received: Family::default(),
            members: Family::default(),
            hint_keys: Family::default(),
            hint_oldest: Family::default(),
            queue_depth: Family::default(),
            store_keys: Gauge::default(),
            store_bytes: Gauge::default(),
            in_flight: Gauge::default(),
            ae_never_compared: Gauge::default(),
            ae_oldest_compare: Gauge::default(),
            ae_compare_age: Family::default(),
        };
        let r = &mut m.registry;
        r.register(
            "requests",
            "Client requests coordinated, by operation and outcome",
            m.requests.clone(),
        );
        r.register(
            "request_duration_seconds",
            "Latency of client requests answered by this node",
            m.latency.clone(),
        );
        r.register(
            "hints_stored",
            "Hints stored for other nodes",
            m.hints_stored.clone(),
        );
        r.register(
            "hints_delivered",
            "Hints delivered and acknowledged",
            m.hints_delivered.clone(),
        );
        r.register("read_repairs", "Read repairs sent", m.read_repairs.clone());
        r.register(
            "replicate_requests",
            "Replicate requests sent by this node's coordinators",
            m.replicate_requests.clone(),
        );
        r.register(
            "replicate_writes",
            "Writes carried by this node's coordinators' Replicate requests",
            m.replicate_writes.clone(),
        );
        r.register(
            "ae_exchanges",
            "Anti-entropy exchanges run as initiator",
            m.ae_exchanges.clone(),
        );
        r.register(
            "ae_keys_repaired",
            "Keys whose state anti-entropy changed here",
            m.ae_keys_repaired.clone(),
        );
        r.register(
            "ae_bytes_sent",
            "Anti-entropy payload bytes sent",
            m.ae_bytes_sent.clone(),
        );
        r.register(
            "ae_bytes_received",
            "Anti-entropy payload bytes received",
            m.ae_bytes_received.clone(),
        );
        r.register(
            "member_events",
            "SWIM membership events (suspect = suspicion raised, recovered = refuted)",
            m.member_events.clone(),
        );
        r.register(
            "incarnation_changes",
            "Members seen with a new incarnation",
            m.incarnation_changes.clone(),
        );
        r.register(
            "rpc_errors",
            "Failed peer RPCs by peer and kind",
            m.rpc_errors.clone(),
        );
        r.register(
            "peer_bytes_sent",
            "Message bytes sent to peers by kind (SWIM, or the RPC a request or response belongs to)",
            m.peer_bytes.clone(),
        );
        r.register(
            "peer_bytes_received",
            "Message bytes received from peers by kind, counted on arrival",
            m.peer_bytes_received.clone(),
        );
        r.register(
            "members",
            "Members in this node's SWIM view by state",
            m.members.clone(),
        );
        r.register(
            "hint_backlog_keys",
            "Keys with a hint held for the target",
            m.hint_keys.clone(),
        );
        r.register(
            "hint_backlog_oldest_seconds",
            "Age of the oldest hint held for the target",
            m.hint_oldest.clone(),
        );
        r.register(
            "peer_queue_depth",
            "Peer RPCs in flight or waiting, by peer and class",
            m.queue_depth.clone(),
        );
        r.register(
            "store_keys",
            "Keys in the store (estimate)",
            m.store_keys.clone(),
        );
        r.register(
            "store_bytes",
            "Bytes in the store (estimate)",
            m.store_bytes.clone(),
        );
        r.register(
            "in_flight_requests",
            "Coordinators running",
            m.in_flight.clone(),
        );
        r.register(
            "ae_partitions_never_compared",
            "Partitions this node replicates that anti-entropy has not fully compared since start",
            m.ae_never_compared.clone(),
        );
        r.register(
            "ae_oldest_compare_seconds",
            "Time since the least recently compared partition was fully compared",
            m.ae_oldest_compare.clone(),
        );
        r.register(
            "ae_partition_compare_age_seconds",
            "Time since the partition was last fully compared (listed once compared)",
            m.ae_compare_age.clone(),
        );
        m
    }
}

/// A copy of a node's counters since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// Updates coordinated here that reached W.
    pub updates_acknowledged: u64,
    /// Updates that ended with an unknown outcome.
    pub updates_unknown: u64,
    /// Updates that failed with no effect.
    pub updates_failed: u64,
    /// Gets coordinated here that reached R.
    pub gets_answered: u64,
    /// Gets that did not.
    pub gets_failed: u64,
    /// Hints this node stored for others (as coordinator or fallback).
    pub hints_stored: u64,
    /// Hints this node delivered and had acknowledged.
    pub hints_delivered: u64,
    /// Read repairs sent (to a peer or applied locally).
    pub read_repairs: u64,
    /// Anti-entropy exchanges this node completed (as initiator).
    pub ae_exchanges: u64,
    /// Keys whose state anti-entropy changed on this node (merged from a peer's).
    pub ae_keys_repaired: u64,
    /// Anti-entropy payload bytes sent (hashes, key lists, records).
    pub ae_bytes_sent: u64,
    /// Anti-entropy payload bytes received.
    pub ae_bytes_received: u64,
    /// Peer RPCs that failed, every peer and kind.
    pub rpc_errors: u64,
    /// `Replicate` requests this node's coordinators sent.
    pub replicate_requests: u64,
    /// Writes those requests carried.
    pub replicate_writes: u64,
}

fn outcome_name<T>(result: &Result<T, RequestError>) -> &'static str {
    match result.as_ref().map_err(RequestError::outcome) {
        Ok(_) => "ok",
        Err(Outcome::Unknown) => "unknown",
        Err(Outcome::Failed) => "failed",
    }
}

impl Metrics {
    fn request(&self, op: &'static str, outcome: &'static str) -> Counter {
        self.requests
            .get_or_create(&RequestLabels { op, outcome })
            .clone()
    }

    pub(crate) fn update_done<T>(&self, result: &Result<T, RequestError>) {
        self.request("update", outcome_name(result)).inc();
    }

    pub(crate) fn get_done<T>(&self, result: &Result<T, RequestError>) {
        // A get that did not answer changed nothing.
        let outcome = if result.is_ok() { "ok" } else { "failed" };
        self.request("get", outcome).inc();
    }

    /// A client request answered by this node took `elapsed`.
    pub(crate) fn latency(&self, op: &'static str, elapsed: Duration) {
        self.latency
            .get_or_create(&OpLabels { op })
            .observe(elapsed.as_secs_f64());
    }

    pub(crate) fn hint_stored(&self) {
        self.hints_stored.inc();
    }

    pub(crate) fn hints_delivered(&self, n: u64) {
        self.hints_delivered.inc_by(n);
    }

    pub(crate) fn read_repair(&self) {
        self.read_repairs.inc();
    }

    pub(crate) fn replicate_sent(&self, writes: usize) {
        self.replicate_requests.inc();
        self.replicate_writes.inc_by(writes as u64);
    }

    pub(crate) fn ae_exchange(&self, sent: u64, received: u64) {
        self.ae_exchanges.inc();
        self.ae_bytes_sent.inc_by(sent);
        self.ae_bytes_received.inc_by(received);
    }

    pub(crate) fn ae_merged(&self, keys: u64) {
        self.ae_keys_repaired.inc_by(keys);
    }

    /// A SWIM event (`up`, `suspect`, `recovered`, `dead`, `left`, `metadata`).
    pub(crate) fn member_event(&self, event: &'static str, new_incarnation: bool) {
        self.member_events
            .get_or_create(&EventLabels { event })
            .inc();
        if new_incarnation {
            self.incarnation_changes.inc();
        }
    }

    /// `bytes` of a message of `kind` sent to a peer.
    pub(crate) fn peer_bytes_sent(&self, kind: &'static str, bytes: usize) {
        self.peer_bytes
            .get_or_create(&KindLabels { kind })
            .inc_by(bytes as u64);
    }

    /// `bytes` of a message of `kind` received whole from a peer.
    pub(crate) fn peer_bytes_received(&self, kind: &'static str, bytes: usize) {
        self.peer_bytes_received
            .get_or_create(&KindLabels { kind })
            .inc_by(bytes as u64);
    }

    /// A peer RPC to `peer` failed with `kind`.
    pub(crate) fn rpc_error(&self, peer: &str, kind: &'static str) {
        self.rpc_error_total.inc();
        self.rpc_errors
            .get_or_create(&PeerKindLabels {
                peer: peer.to_owned(),
                kind,
            })
            .inc();
    }

    /// The registry in Prometheus text format.
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    pub(crate) fn snapshot(&self) -> MetricsSnapshot {
        let req = |op, outcome| {
            self.requests
                .get(&RequestLabels { op, outcome })
                .map_or(0, |c| c.get())
        };
        MetricsSnapshot {
            updates_acknowledged: req("update", "ok"),
            updates_unknown: req("update", "unknown"),
            updates_failed: req("update", "failed"),
            gets_answered: req("get", "ok"),
            gets_failed: req("get", "failed"),
            hints_stored: self.hints_stored.get(),
            hints_delivered: self.hints_delivered.get(),
            read_repairs: self.read_repairs.get(),
            ae_exchanges: self.ae_exchanges.get(),
            ae_keys_repaired: self.ae_keys_repaired.get(),
            ae_bytes_sent: self.ae_bytes_sent.get(),
            ae_bytes_received: self.ae_bytes_received.get(),
            rpc_errors: self.rpc_error_total.get(),
            replicate_requests: self.replicate_requests.get(),
            replicate_writes: self.replicate_writes.get(),
        }
    }
}
