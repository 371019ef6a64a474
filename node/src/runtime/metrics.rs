//! Counters of the request path, one struct for the node; the Prometheus endpoint (a later
//! step) exports a [`MetricsSnapshot`].

use std::sync::atomic::{AtomicU64, Ordering};

use crate::request::{Outcome, RequestError};

/// Live counters, shared by the node's tasks.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    updates_acknowledged: AtomicU64,
    updates_unknown: AtomicU64,
    updates_failed: AtomicU64,
    gets_answered: AtomicU64,
    gets_failed: AtomicU64,
    hints_stored: AtomicU64,
    hints_delivered: AtomicU64,
    read_repairs: AtomicU64,
    ae_exchanges: AtomicU64,
    ae_keys_repaired: AtomicU64,
    ae_bytes_sent: AtomicU64,
    ae_bytes_received: AtomicU64,
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
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Metrics {
    pub(crate) fn update_done<T>(&self, result: &Result<T, RequestError>) {
        match result.as_ref().map_err(RequestError::outcome) {
            Ok(_) => bump(&self.updates_acknowledged),
            Err(Outcome::Unknown) => bump(&self.updates_unknown),
            Err(Outcome::Failed) => bump(&self.updates_failed),
        }
    }

    pub(crate) fn get_done<T>(&self, result: &Result<T, RequestError>) {
        match result {
            Ok(_) => bump(&self.gets_answered),
            Err(_) => bump(&self.gets_failed),
        }
    }

    pub(crate) fn hint_stored(&self) {
        bump(&self.hints_stored);
    }

    pub(crate) fn hint_delivered(&self) {
        bump(&self.hints_delivered);
    }

    pub(crate) fn read_repair(&self) {
        bump(&self.read_repairs);
    }

    pub(crate) fn ae_exchange(&self, sent: u64, received: u64) {
        bump(&self.ae_exchanges);
        self.ae_bytes_sent.fetch_add(sent, Ordering::Relaxed);
        self.ae_bytes_received
            .fetch_add(received, Ordering::Relaxed);
    }

    pub(crate) fn ae_merged(&self, keys: u64) {
        self.ae_keys_repaired.fetch_add(keys, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> MetricsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        MetricsSnapshot {
            updates_acknowledged: get(&self.updates_acknowledged),
            updates_unknown: get(&self.updates_unknown),
            updates_failed: get(&self.updates_failed),
            gets_answered: get(&self.gets_answered),
            ae_exchanges: get(&self.ae_exchanges),
            ae_keys_repaired: get(&self.ae_keys_repaired),
            ae_bytes_sent: get(&self.ae_bytes_sent),
            ae_bytes_received: get(&self.ae_bytes_received),
            gets_failed: get(&self.gets_failed),
            hints_stored: get(&self.hints_stored),
            hints_delivered: get(&self.hints_delivered),
            read_repairs: get(&self.read_repairs),
        }
    }
}
