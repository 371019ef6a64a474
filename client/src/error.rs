//! What a request through the SDK tells its caller when it did not succeed.

use shoal_storage::Kind;

use crate::protocol::ErrorCode;
use crate::tls::TlsError;

/// What happened to an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// W replicas persisted it (a write), or it was answered (a read).
    Acknowledged,
    /// It took effect nowhere: retrying is safe.
    Failed,
    /// It may have taken effect on some replicas (and will then spread to the others), or not
    /// at all. Retrying a counter increment may apply it twice; read the key to find out.
    Unknown,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Outcome::Acknowledged => "acknowledged",
            Outcome::Failed => "failed",
            Outcome::Unknown => "unknown outcome",
        })
    }
}

/// A request through the SDK did not succeed. [`outcome`](Self::outcome) says whether it may
/// have taken effect; each variant says whether retrying can help.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The request is malformed (an empty keyspace name, a quorum out of range, a value over
    /// its limit). Nothing changed; the same request fails the same way.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The key holds another type. Nothing changed.
    #[error("key holds a {found}, not a {expected}", found = found.name(), expected = expected.name())]
    WrongType {
        /// The type the operation needs.
        expected: Kind,
        /// The key's type.
        found: Kind,
    },
    /// A node refused the request and nothing changed (`code` says why); retrying later may
    /// help for [`ErrorCode::Unavailable`], [`ErrorCode::Quorum`] and [`ErrorCode::Busy`].
    #[error("failed: {message}")]
    Failed {
        /// Why, as the node classified it; `None` when no node could be reached.
        code: Option<ErrorCode>,
        /// What happened (the last attempt's error).
        message: String,
        /// Attempts made.
        attempts: u32,
    },
    /// The request may or may not have taken effect: a write timed out or a connection broke
    /// after the request may have been delivered, or too few replicas confirmed it. It was not
    /// retried, so a counter increment is never applied twice.
    #[error("unknown outcome: {message}")]
    Unknown {
        /// What happened.
        message: String,
        /// Attempts made.
        attempts: u32,
    },
    /// No seed answered with a routing table; nothing was sent.
    #[error("cannot reach the cluster: {0}")]
    NoCluster(String),
    /// The TLS material is unusable; nothing was sent.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

impl Error {
    /// Whether the operation may have taken effect: [`Outcome::Failed`] or
    /// [`Outcome::Unknown`] (never `Acknowledged`).
    pub fn outcome(&self) -> Outcome {
        match self {
            Error::Unknown { .. } => Outcome::Unknown,
            _ => Outcome::Failed,
        }
    }
}
