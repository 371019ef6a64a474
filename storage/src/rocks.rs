//! The RocksDB backend: one column family per [`Column`], every write synced to the WAL.
//!
//! Concurrent synced writes from several threads share one fsync through RocksDB's write group
//! (group commit), so durability costs one fsync per group, not per update.

use std::path::Path;

use rocksdb::{
    ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options, WriteBatch, WriteOptions,
};

use crate::error::StorageError;
use crate::store::{BatchOp, Column, Store};

/// A RocksDB database in one directory.
pub struct RocksStore {
    db: DB,
}

impl RocksStore {
    /// Opens the database at `path`, creating it (and its column families) if missing.
    pub fn open(path: &Path) -> Result<RocksStore, StorageError> {
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        options.increase_parallelism(2);
        let families = Column::ALL
            .iter()
            .map(|c| ColumnFamilyDescriptor::new(c.name(), Options::default()));
        let db = DB::open_cf_descriptors(&options, path, families)?;
        Ok(RocksStore { db })
    }

    fn cf(&self, column: Column) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(column.name())
            .expect("every column family is created at open")
    }
}

impl Store for RocksStore {
    fn get(&self, column: Column, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.db.get_cf(self.cf(column), key)?)
    }

    fn write(&self, batch: Vec<BatchOp>) -> Result<(), StorageError> {
        let mut wb = WriteBatch::default();
        for op in batch {
            match op {
                BatchOp::Put(column, key, value) => wb.put_cf(self.cf(column), key, value),
                BatchOp::Delete(column, key) => wb.delete_cf(self.cf(column), key),
            }
        }
        let mut options = WriteOptions::default();
        options.set_sync(true);
        Ok(self.db.write_opt(wb, &options)?)
    }

    fn scan_prefix_from(
        &self,
        column: Column,
        prefix: &[u8],
        from: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StorageError> {
        let iter = self.db.iterator_cf(
            self.cf(column),
            IteratorMode::From(from.max(prefix), Direction::Forward),
        );
        for item in iter {
            let (key, value) = item?;
            if !key.starts_with(prefix) || !visit(&key, &value) {
                break;
            }
        }
        Ok(())
    }

    fn stats(&self, column: Column) -> Result<crate::store::ColumnStats, StorageError> {
        let cf = self.cf(column);
        let int = |name: &str| -> Result<u64, StorageError> {
            Ok(self.db.property_int_value_cf(cf, name)?.unwrap_or(0))
        };
        Ok(crate::store::ColumnStats {
            keys: int("rocksdb.estimate-num-keys")?,
            bytes: int("rocksdb.total-sst-files-size")? + int("rocksdb.cur-size-all-mem-tables")?,
        })
    }

    fn flush(&self) -> Result<(), StorageError> {
        self.db.flush_wal(true)?;
        for column in Column::ALL {
            self.db.flush_cf(self.cf(column))?;
        }
        Ok(())
    }
}
