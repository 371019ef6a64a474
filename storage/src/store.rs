//! The seam between the engine and a durable key-value backend, with its two implementations:
//! [`RocksStore`](crate::RocksStore) and [`MemoryStore`].

use std::collections::BTreeMap;
use std::ops::Bound;

use parking_lot::RwLock;

use crate::error::StorageError;

/// A column family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Column {
    /// Records of the keys this node replicates.
    Data,
    /// Hints held for other nodes.
    Hints,
    /// Node metadata: node id, actor epoch.
    Meta,
}

impl Column {
    /// All columns.
    pub const ALL: [Column; 3] = [Column::Data, Column::Hints, Column::Meta];

    /// The column family's name.
    pub fn name(self) -> &'static str {
        match self {
            Column::Data => "data",
            Column::Hints => "hints",
            Column::Meta => "meta",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// One write of an atomic batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchOp {
    /// Set a key.
    Put(Column, Vec<u8>, Vec<u8>),
    /// Remove a key.
    Delete(Column, Vec<u8>),
}

/// Puts of `entries` into `column`, as one batch.
pub(crate) fn puts(column: Column, entries: Vec<(Vec<u8>, Vec<u8>)>) -> Vec<BatchOp> {
    entries
        .into_iter()
        .map(|(key, value)| BatchOp::Put(column, key, value))
        .collect()
}

/// A key-value backend with column families.
///
/// `write` is atomic, and in a durable implementation returns only once the batch is on stable
/// storage (WAL synced), so a process or machine crash after it returns loses nothing.
pub trait Store: Send + Sync + 'static {
    /// The value of a key.
    fn get(&self, column: Column, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError>;

    /// Applies a batch atomically and durably.
    fn write(&self, batch: Vec<BatchOp>) -> Result<(), StorageError>;

    /// Puts many keys of one column atomically and durably, as `write` would, for a large
    /// batch (a replica refill). `entries` are in key order without duplicates. RocksDB ingests
    /// a table file instead of writing through the WAL (see [`RocksStore`](crate::RocksStore));
    /// the default is one `write`.
    fn bulk_put(
        &self,
        column: Column,
        entries: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<(), StorageError> {
        self.write(puts(column, entries))
    }

    /// Visits the keys starting with `prefix` in order until `visit` returns false.
    fn scan_prefix(
        &self,
        column: Column,
        prefix: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StorageError> {
        self.scan_prefix_from(column, prefix, prefix, visit)
    }

    /// Visits the keys starting with `prefix` that are at least `from`, in order, until `visit`
    /// returns false (one seek, however far into the prefix `from` is).
    fn scan_prefix_from(
        &self,
        column: Column,
        prefix: &[u8],
        from: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StorageError>;

    /// Flushes buffered state (used at shutdown so the next open is quick).
    fn flush(&self) -> Result<(), StorageError>;

    /// Size of a column: keys and bytes (estimates where the backend only estimates).
    fn stats(&self, column: Column) -> Result<ColumnStats, StorageError>;
}

/// Keys and bytes of one column ([`Store::stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ColumnStats {
    /// Keys (RocksDB: its estimate).
    pub keys: u64,
    /// Bytes on disk and in memory tables (RocksDB), or of keys and values (memory).
    pub bytes: u64,
}

/// A store in process memory, for simulations and tests. Nothing survives the process.
#[derive(Default)]
pub struct MemoryStore {
    columns: RwLock<[BTreeMap<Vec<u8>, Vec<u8>>; 3]>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }
}

impl Store for MemoryStore {
    fn stats(&self, column: Column) -> Result<ColumnStats, StorageError> {
        let columns = self.columns.read();
        let map = &columns[column.index()];
        Ok(ColumnStats {
            keys: map.len() as u64,
            bytes: map.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum(),
        })
    }

    fn get(&self, column: Column, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.columns.read()[column.index()].get(key).cloned())
    }

    fn write(&self, batch: Vec<BatchOp>) -> Result<(), StorageError> {
        let mut columns = self.columns.write();
        for op in batch {
            match op {
                BatchOp::Put(column, key, value) => {
                    columns[column.index()].insert(key, value);
                }
                BatchOp::Delete(column, key) => {
                    columns[column.index()].remove(&key);
                }
            }
        }
        Ok(())
    }

    fn scan_prefix_from(
        &self,
        column: Column,
        prefix: &[u8],
        from: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StorageError> {
        let columns = self.columns.read();
        let from = from.max(prefix);
        let range =
            columns[column.index()].range::<[u8], _>((Bound::Included(from), Bound::Unbounded));
        for (key, value) in range {
            if !key.starts_with(prefix) || !visit(key, value) {
                break;
            }
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), StorageError> {
        Ok(())
    }
}
