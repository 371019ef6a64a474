//! The request path as state machines without I/O: sloppy-quorum updates and gets with read
//! repair, and the node-to-node messages they use. The runtime ([`crate::runtime`]) drives them.
//!
//! - [`select_targets`]: the first N live nodes of a preference list; a fallback is told the
//!   primary it replaces ([`Target::hint_for`]).
//! - [`UpdateCoordinator`]: local write first, then the record to the other targets;
//!   acknowledged at W persisted copies; a timeout after the local write is an unknown
//!   outcome, never a failure; every target that did not confirm gets a local hint.
//! - [`GetCoordinator`]: R replies merged; stale replicas repaired in the background.
//! - [`QuorumError`] / [`RequestError`]: what went wrong, with counts, and whether the request
//!   may have taken effect ([`Outcome`]).
//! - [`message`]: the RPC bodies (replicate, read, deliver hint, forward).

mod error;
mod get;
pub mod message;
mod targets;
mod update;

pub use error::{Outcome, QuorumError, QuorumOp, RequestError};
pub use get::{GetCoordinator, GetEffect, GetOutcome};
pub use message::{PeerRequest, PeerResponse, RequestId};
pub use targets::{Selection, Target, select_targets};
pub use update::{Acknowledged, UpdateCoordinator, UpdateEffect};
