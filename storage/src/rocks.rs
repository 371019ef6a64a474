//! The RocksDB backend: one column family per [`Column`], every write durable when it returns
//! (synced to the WAL, or a table file ingested: see "Bulk puts").
//!
//! Concurrent synced writes from several threads share one fsync through RocksDB's write group
//! (group commit), so durability costs one fsync per group, not per update.
//!
//! # Deletions
//!
//! A deleted key stays in RocksDB as a tombstone until a compaction drops it, and every seek
//! and scan walks over the tombstones in its range. The hints column is a queue: every write
//! puts a hint per replica and deletes it once the replica confirms, so a node that took a
//! million writes holds millions of tombstones there, and looking for the first hint of a
//! target (anti-entropy asks that every round; every metrics scrape counts the backlog) walked
//! them all: a third of a sender's CPU in a profile of a replica refill. So after every
//! [`COMPACT_AFTER_DELETES`] deletions in a column, the store compacts that column on a
//! thread of its own (one at a time per column), which flushes its memtable and drops the
//! tombstones.
//!
//! # Bulk puts
//!
//! A replica refill writes thousands of keys the replica lacks per batch. Through the WAL and
//! memtable each key costs a skiplist insert, its share of a WAL write and sync, and later a
//! flush and compactions that rewrite it. [`Store::bulk_put`] instead builds one sorted table
//! file (in `ingest/` under the database directory) and ingests it: RocksDB links it into the
//! lowest level whose files do not overlap it, so the records are written once, durably (the
//! file and the manifest are synced), and never compacted for their own sake. An ingest whose
//! key range overlaps the memtable would first have to flush it; rather than stall on that,
//! the store writes such a batch through the WAL as usual.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use rocksdb::{
    BlockBasedOptions, ColumnFamilyDescriptor, DB, Direction, IngestExternalFileOptions,
    IteratorMode, Options, SstFileWriter, WriteBatch, WriteOptions,
};

use crate::error::StorageError;
use crate::store::{BatchOp, Column, Store};

/// Deletions in one column after which the store compacts that column.
pub const COMPACT_AFTER_DELETES: u64 = 50_000;

/// A RocksDB database in one directory.
pub struct RocksStore {
    db: Arc<DB>,
    /// Per column: deletions since its last compaction started.
    deletes: [AtomicU64; Column::ALL.len()],
    /// Per column: a compaction is running.
    compacting: Arc<[AtomicBool; Column::ALL.len()]>,
    /// The options every column family is opened with (table files for ingestion are built
    /// with the same table format and filters).
    column_options: Options,
    /// Where table files are built before they are ingested.
    ingest_dir: PathBuf,
    /// Names the next table file.
    ingest_seq: AtomicU64,
}

impl RocksStore {
    /// Opens the database at `path`, creating it (and its column families) if missing.
    pub fn open(path: &Path) -> Result<RocksStore, StorageError> {
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        options.increase_parallelism(2);
        // Every write reads its key first, and a refill reads keys the replica does not have:
        // a Bloom filter per table file answers "not here" without reading a data block.
        let mut table = BlockBasedOptions::default();
        table.set_bloom_filter(10.0, false);
        let mut column = Options::default();
        column.set_block_based_table_factory(&table);
        let families = Column::ALL
            .iter()
            .map(|c| ColumnFamilyDescriptor::new(c.name(), column.clone()));
        let db = DB::open_cf_descriptors(&options, path, families)?;
        // Files left by a crash between building a table and ingesting it hold nothing that
        // was acknowledged: they are dropped.
        let ingest_dir = path.join("ingest");
        let io =
            |e: std::io::Error| StorageError::Backend(format!("{}: {e}", ingest_dir.display()));
        if ingest_dir.exists() {
            std::fs::remove_dir_all(&ingest_dir).map_err(io)?;
        }
        std::fs::create_dir_all(&ingest_dir).map_err(io)?;
        Ok(RocksStore {
            db: Arc::new(db),
            deletes: Default::default(),
            compacting: Default::default(),
            column_options: column,
            ingest_dir,
            ingest_seq: AtomicU64::new(0),
        })
    }

    /// Builds a table file of `entries` and ingests it into `column`; `Ok(false)` if RocksDB
    /// declined because the key range overlaps the memtable (nothing was written then).
    fn ingest(&self, column: Column, entries: &[(Vec<u8>, Vec<u8>)]) -> Result<bool, StorageError> {
        let path = self.ingest_dir.join(format!(
            "{}.sst",
            self.ingest_seq.fetch_add(1, Ordering::Relaxed)
        ));
        let result = (|| -> Result<bool, StorageError> {
            let mut writer = SstFileWriter::create(&self.column_options);
            writer.open(&path)?;
            for (key, value) in entries {
                writer.put(key, value)?;
            }
            writer.finish()?;
            let mut options = IngestExternalFileOptions::default();
            options.set_move_files(true);
            options.set_allow_blocking_flush(false);
            match self
                .db
                .ingest_external_file_cf_opts(self.cf(column), &options, vec![&path])
            {
                Ok(()) => Ok(true),
                Err(e) if e.as_ref().contains("requires flush") => {
                    tracing::debug!(error = %e, "bulk put not ingested, written instead");
                    Ok(false)
                }
                Err(e) => Err(e.into()),
            }
        })();
        // Moved into the database when ingested; otherwise (or on an error) dropped.
        let _ = std::fs::remove_file(&path);
        result
    }

    /// Counts `n` deletions in `column`, and starts a compaction of it on a thread of its own
    /// once [`COMPACT_AFTER_DELETES`] have accumulated and none is running.
    fn deleted(&self, column: Column, n: u64) {
        let i = column.index();
        if self.deletes[i].fetch_add(n, Ordering::Relaxed) + n < COMPACT_AFTER_DELETES
            || self.compacting[i].swap(true, Ordering::AcqRel)
        {
            return;
        }
        self.deletes[i].store(0, Ordering::Relaxed);
        let (db, compacting) = (self.db.clone(), self.compacting.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("compact-{}", column.name()))
            .spawn(move || {
                if let Some(cf) = db.cf_handle(column.name()) {
                    // Rewrite the bottom level too: a flushed file of tombstones is otherwise
                    // moved down as it is, tombstones and all.
                    let mut options = rocksdb::CompactOptions::default();
                    options
                        .set_bottommost_level_compaction(rocksdb::BottommostLevelCompaction::Force);
                    options.set_exclusive_manual_compaction(false);
                    db.compact_range_cf_opt(cf, None::<&[u8]>, None::<&[u8]>, &options);
                }
                // Let go of the database before saying so: the store's `Drop` waits for
                // this, so a dropped store has closed its database when the drop returns.
                drop(db);
                compacting[i].store(false, Ordering::Release);
            });
        if spawned.is_err() {
            self.compacting[i].store(false, Ordering::Release);
        }
    }

    fn cf(&self, column: Column) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(column.name())
            .expect("every column family is created at open")
    }
}

impl Drop for RocksStore {
    /// Waits for a running compaction to finish: it holds the database open, and a store
    /// that is dropped must have closed it (its directory is then free to reopen at once,
    /// as RocksDB's lock file allows one open per process).
    fn drop(&mut self) {
        while self.compacting.iter().any(|c| c.load(Ordering::Acquire)) {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}

impl Store for RocksStore {
    fn get(&self, column: Column, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.db.get_cf(self.cf(column), key)?)
    }

    fn write(&self, batch: Vec<BatchOp>) -> Result<(), StorageError> {
        let mut wb = WriteBatch::default();
        let mut deletes = [0u64; Column::ALL.len()];
        for op in batch {
            match op {
                BatchOp::Put(column, key, value) => wb.put_cf(self.cf(column), key, value),
                BatchOp::Delete(column, key) => {
                    deletes[column.index()] += 1;
                    wb.delete_cf(self.cf(column), key)
                }
            }
        }
        let mut options = WriteOptions::default();
        options.set_sync(true);
        self.db.write_opt(wb, &options)?;
        for column in Column::ALL {
            if deletes[column.index()] > 0 {
                self.deleted(column, deletes[column.index()]);
            }
        }
        Ok(())
    }

    fn bulk_put(
        &self,
        column: Column,
        entries: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<(), StorageError> {
        debug_assert!(entries.windows(2).all(|w| w[0].0 < w[1].0));
        if entries.is_empty() || self.ingest(column, &entries)? {
            return Ok(());
        }
        self.write(crate::store::puts(column, entries))
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

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    fn property(store: &RocksStore, column: Column, name: &str) -> u64 {
        store
            .db
            .property_int_value_cf(store.cf(column), name)
            .unwrap()
            .unwrap_or(0)
    }

    /// As many hint keys as start a compaction when deleted.
    fn hint_keys() -> Vec<Vec<u8>> {
        (0..COMPACT_AFTER_DELETES)
            .map(|i| format!("hint-{i:08}").into_bytes())
            .collect()
    }

    fn entries(prefix: &str, n: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
        (0..n)
            .map(|i| (format!("{prefix}-{i:06}").into_bytes(), vec![i as u8; 100]))
            .collect()
    }

    fn memtable_entries(store: &RocksStore, column: Column) -> u64 {
        property(store, column, "rocksdb.num-entries-active-mem-table")
            + property(store, column, "rocksdb.num-entries-imm-mem-tables")
    }

    #[test]
    fn a_bulk_put_is_ingested_as_a_table_file_and_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let put = entries("p1", 2000);
        {
            let store = RocksStore::open(dir.path()).unwrap();
            // Another range in the memtable does not stand in the way.
            store
                .write(vec![BatchOp::Put(
                    Column::Data,
                    b"p0".to_vec(),
                    b"x".to_vec(),
                )])
                .unwrap();
            store.bulk_put(Column::Data, put.clone()).unwrap();
            assert_eq!(
                memtable_entries(&store, Column::Data),
                1,
                "not through the memtable"
            );
            assert!(property(&store, Column::Data, "rocksdb.total-sst-files-size") > 0);
            for (key, value) in &put {
                assert_eq!(store.get(Column::Data, key).unwrap().as_ref(), Some(value));
            }
            assert_eq!(std::fs::read_dir(&store.ingest_dir).unwrap().count(), 0);
        }
        let store = RocksStore::open(dir.path()).unwrap();
        let mut scanned = Vec::new();
        store
            .scan_prefix(Column::Data, b"p1", &mut |k, v| {
                scanned.push((k.to_vec(), v.to_vec()));
                true
            })
            .unwrap();
        assert_eq!(scanned, put);
        assert_eq!(store.get(Column::Data, b"p0").unwrap(), Some(b"x".to_vec()));
    }

    #[test]
    fn a_bulk_put_over_the_memtable_is_written_through_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = RocksStore::open(dir.path()).unwrap();
        let mut put = entries("p1", 2000);
        // A key inside the range, in the memtable: ingesting would need a flush first.
        store
            .write(vec![BatchOp::Put(
                Column::Data,
                put[7].0.clone(),
                b"old".to_vec(),
            )])
            .unwrap();
        put[7].1 = b"new".to_vec();
        store.bulk_put(Column::Data, put.clone()).unwrap();
        assert_eq!(memtable_entries(&store, Column::Data), 1 + 2000);
        assert_eq!(
            property(&store, Column::Data, "rocksdb.total-sst-files-size"),
            0
        );
        for (key, value) in &put {
            assert_eq!(store.get(Column::Data, key).unwrap().as_ref(), Some(value));
        }
        assert_eq!(std::fs::read_dir(&store.ingest_dir).unwrap().count(), 0);
    }

    #[test]
    fn table_files_left_by_a_crash_are_dropped_at_open() {
        let dir = tempfile::tempdir().unwrap();
        drop(RocksStore::open(dir.path()).unwrap());
        std::fs::write(dir.path().join("ingest").join("7.sst"), b"half a table").unwrap();
        let store = RocksStore::open(dir.path()).unwrap();
        assert_eq!(std::fs::read_dir(&store.ingest_dir).unwrap().count(), 0);
    }

    #[test]
    fn a_column_with_many_deletions_is_compacted_to_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = RocksStore::open(dir.path()).unwrap();
        let keys = hint_keys();
        for chunk in keys.chunks(5000) {
            let put = chunk
                .iter()
                .map(|k| BatchOp::Put(Column::Hints, k.clone(), vec![1; 100]))
                .collect();
            store.write(put).unwrap();
            let delete = chunk
                .iter()
                .map(|k| BatchOp::Delete(Column::Hints, k.clone()))
                .collect();
            store.write(delete).unwrap();
        }
        // The last deletion started a compaction: the memtable is flushed and the puts and
        // their tombstones are dropped, so nothing is left to walk over.
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let memtable =
                property(
                    &store,
                    Column::Hints,
                    "rocksdb.num-entries-active-mem-table",
                ) + property(&store, Column::Hints, "rocksdb.num-entries-imm-mem-tables");
            let files = property(&store, Column::Hints, "rocksdb.total-sst-files-size");
            if memtable == 0
                && files == 0
                && !store.compacting[Column::Hints.index()].load(Ordering::Acquire)
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "hints column not compacted: {memtable} memtable entries, {files} bytes of files"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // Fewer deletions than that start nothing.
        store
            .write(vec![BatchOp::Delete(Column::Data, b"k".to_vec())])
            .unwrap();
        assert_eq!(
            store.deletes[Column::Data.index()].load(Ordering::Relaxed),
            1
        );
        assert!(!store.compacting[Column::Data.index()].load(Ordering::Acquire));
    }

    #[test]
    fn a_store_dropped_during_a_compaction_reopens_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = RocksStore::open(dir.path()).unwrap();
        let keys = hint_keys();
        let put = keys
            .iter()
            .map(|k| BatchOp::Put(Column::Hints, k.clone(), vec![1; 100]))
            .collect();
        store.write(put).unwrap();
        store
            .write(vec![BatchOp::Put(
                Column::Data,
                b"kept".to_vec(),
                b"v".to_vec(),
            )])
            .unwrap();
        let delete = keys
            .iter()
            .map(|k| BatchOp::Delete(Column::Hints, k.clone()))
            .collect();
        store.write(delete).unwrap();
        // The deletions started a compaction on its own thread (it takes far longer than the
        // next line does); drop the store while it runs.
        drop(store);
        let store = RocksStore::open(dir.path()).expect("the dropped store closed its database");
        assert_eq!(
            store.get(Column::Data, b"kept").unwrap(),
            Some(b"v".to_vec())
        );
    }
}
