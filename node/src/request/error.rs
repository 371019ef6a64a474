//! What a request that did not succeed tells its caller.

use std::fmt;

/// Whether a request that did not succeed may have taken effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing was persisted anywhere: retrying is safe.
    Failed,
    /// It may be on some replicas (at least one may have persisted it); it will spread to the
    /// others. Retrying a non-idempotent update (a counter increment) may apply it twice.
    Unknown,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Outcome::Failed => "failed",
            Outcome::Unknown => "unknown outcome",
        })
    }
}

/// Which quorum operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuorumOp {
    /// An update (W).
    Update,
    /// A get (R).
    Get,
}

/// A quorum was not reached, with the counts that say why.
///
/// `succeeded + failed + pending == targets`. For an update, `succeeded` counts the replicas
/// that persisted it (the coordinator included): when it is above 0 the outcome is
/// [`Outcome::Unknown`], never failed, since those replicas will spread it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{op:?} quorum not reached ({outcome}): {succeeded} of {required} required, \
     {failed} failed, {pending} unanswered, of {targets} targets{}",
    if errors.is_empty() { String::new() } else { format!("; {}", errors.join("; ")) }
)]
pub struct QuorumError {
    /// The operation.
    pub op: QuorumOp,
    /// R or W.
    pub required: usize,
    /// Replicas that answered (get) or persisted (update).
    pub succeeded: usize,
    /// Replicas that answered with an error or could not be reached.
    pub failed: usize,
    /// Replicas that had not answered at the deadline.
    pub pending: usize,
    /// Targets the request went to.
    pub targets: usize,
    /// Whether the update may have taken effect (always `Failed` for a get).
    pub outcome: Outcome,
    /// The errors seen, one line per failed replica.
    pub errors: Vec<String>,
}

/// A client request (update or get) through a node did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The request is malformed (quorum out of range, keyspace name or key too long, unknown
    /// keyspace). Nothing changed; retrying the same request fails the same way.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// Fewer live replicas than the quorum needs; nothing was sent or persisted. Retrying
    /// later may help.
    #[error("unavailable: {live} live replicas, {required} required")]
    Unavailable {
        /// Live targets found.
        live: usize,
        /// R or W.
        required: usize,
    },
    /// The coordinator's store refused the update (wrong type, too large, corrupt record);
    /// nothing was persisted or sent.
    #[error("storage: {0}")]
    Storage(String),
    /// The coordinator's store failed while writing the update (an I/O error: a full disk, a
    /// failing device); nothing was sent. The write may have reached the store's log before
    /// the error, so it may take effect there and spread once the store recovers: unknown
    /// outcome.
    #[error("storage write failed: {0}")]
    StorageWrite(String),
    /// The quorum was not reached; see its outcome.
    #[error(transparent)]
    Quorum(#[from] QuorumError),
    /// The request was forwarded to a replica (this node does not replicate the key) and
    /// did not succeed there.
    #[error("forwarded request ({outcome}): {message}")]
    Forwarded {
        /// Whether it may have taken effect.
        outcome: Outcome,
        /// What went wrong.
        message: String,
    },
    /// The node is shutting down; the request may have been cut short.
    #[error("node is shutting down")]
    ShuttingDown,
}

impl RequestError {
    /// Whether the request may have taken effect.
    pub fn outcome(&self) -> Outcome {
        match self {
            RequestError::Invalid(_)
            | RequestError::Unavailable { .. }
            | RequestError::Storage(_) => Outcome::Failed,
            RequestError::Quorum(q) => q.outcome,
            RequestError::Forwarded { outcome, .. } => *outcome,
            RequestError::ShuttingDown | RequestError::StorageWrite(_) => Outcome::Unknown,
        }
    }
}
