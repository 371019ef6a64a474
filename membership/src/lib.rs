//! Shoal's membership: who is in the cluster, who is alive, and who owns which partition.
//!
//! - [`Swim`]: SWIM failure detection and membership with the Lifeguard extensions, as a
//!   state machine that does no I/O. Datagrams, timers and time come in through
//!   `handle_*(…, now)`; datagrams to send, timers to set and membership [`Event`]s go out
//!   through [`Swim::poll_effect`]. A seeded RNG is passed in, so a run replays exactly.
//!   Members probe in rounds aligned on a shared clock ([`Swim::set_schedule_clock`]), by a
//!   schedule all of them derive from the member ids, so that every member is probed by
//!   about one other in each round while each still probes everyone in turn (SWIM's
//!   round-robin); a crashed member is probed within one probe interval.
//!   Settings: [`SwimConfig`] (presets `lan(n)`, `wan(n)`, `for_test()`).
//! - [`codec`]: the one module that encodes and decodes SWIM datagrams (bincode 2, a format
//!   version byte first, at most [`codec::MAX_DATAGRAM`] bytes). Bad input is a
//!   [`CodecError`] that changes nothing.
//! - [`ring`]: placement. Keys map to one of Q partitions by the top bits of a stable hash;
//!   each partition has a preference list of N distinct nodes, computed once per ring version
//!   from a CRDT of ring membership ([`RingState`]) and looked up in O(1).
//! - [`sim`]: a deterministic network simulator (virtual clock, latency, loss, partitions,
//!   pauses, crashes) that runs many members in one process from a seed.
//!
//! Tests: unit tests per protocol rule next to the code (`swim/tests.rs`), property tests for
//! the codec, the ring CRDT, ring balance and movement, and seeded simulations
//! (`tests/sim.rs`: convergence under random faults that stop). The benchmark
//! (`cargo bench -p shoal-membership --bench swim`, see `docs/benchmarks.md`) compares this SWIM
//! with foca on the simulated network.
//!
//! What this crate does not do: open sockets, read clocks, spawn tasks, or move data. The
//! `node` crate drives [`Swim`] over QUIC datagrams and reacts to its events; a member SWIM
//! declares dead keeps its partitions in the ring (fallbacks serve them) until it is removed.

pub mod codec;
mod config;
mod id;
mod message;
pub mod ring;
pub mod sim;
mod swim;

pub use codec::CodecError;
pub use config::SwimConfig;
pub use id::{IdError, MAX_NODE_ID_LEN, MAX_ZONE_LEN, MemberMeta, NodeId, Zone};
pub use ring::{PartitionId, Partitioner, Ring, RingConfig, RingError, RingState, RingStatus};

pub use swim::{Effect, Event, Member, MemberState, Swim, Timer, Transmit};
