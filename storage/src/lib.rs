//! Shoal's storage engine: where a node keeps the CRDT state of the keys it replicates.
//!
//! What it does:
//! - [`value`]: the CRDT types (counter, set, multi-value register, map), the updates a
//!   coordinator applies with its [`Actor`], whole-state merge, and the client's [`View`].
//! - [`record`]: the stored envelope (format version, type tag, checksum, canonical payload);
//!   a record that fails its checksum is reported as corrupt and never served.
//! - [`codec`]: the only module that calls bincode.
//! - [`store`]: the [`Store`] seam with a RocksDB ([`RocksStore`]) and an in-memory
//!   ([`MemoryStore`]) implementation.
//! - [`engine`]: [`Engine`], per-key read-merge-write with durable writes, the actor epoch,
//!   incrementally maintained per-partition [`merkle`] trees, and hints for other nodes.
//!
//! The `rocksdb` feature (on by default) brings the RocksDB store; without it the crate builds
//! no C++ and still offers the values, codec, Merkle trees and the in-memory store.
//!
//! What it does not do: placement (the caller passes each key's partition), networking,
//! quorums. Those live in `shoal-membership` and `shoal-node`.

mod backlog;
pub mod codec;
pub mod engine;
pub mod error;
pub mod merkle;
pub mod record;
#[cfg(feature = "rocksdb")]
pub mod rocks;
pub mod store;
pub mod value;
pub mod wire;

pub use engine::{
    BATCH_BYTES, BULK_PUT_RECORDS, Backlog, Engine, Hint, Merged, Partition, RawRecord, Written,
};
pub use error::{Corruption, Limit, StorageError};
pub use merkle::{MerkleTree, NodeHash};
pub use record::{Record, ValueHash};
#[cfg(feature = "rocksdb")]
pub use rocks::RocksStore;
pub use store::{BatchOp, Column, ColumnStats, MemoryStore, Store};
pub use value::{
    Actor, Bytes, Clock, Counter, FieldView, Kind, MAX_ELEMENT_LEN, MAX_KEY_LEN,
    MAX_MEMBERS_PER_OP, MAX_VALUE_LEN, MapOp, RegisterView, SetOp, Update, Value, View,
};

/// An engine over RocksDB: what a node runs.
#[cfg(feature = "rocksdb")]
pub type RocksEngine = Engine<RocksStore>;
/// An engine in memory: what simulations run.
pub type MemoryEngine = Engine<MemoryStore>;
