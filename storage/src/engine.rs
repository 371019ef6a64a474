//! The storage engine: CRDT read-merge-write per key over a [`Store`], the actor and its epoch,
//! Merkle trees per partition, and hints.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::{Mutex, RwLock};
use xxhash_rust::xxh3::{Xxh3DefaultBuilder, xxh3_64, xxh3_128};

use crate::backlog::{Backlogs, HintChange};
use crate::error::{Limit, StorageError};
use crate::merkle::{self, MerkleTree, NodeHash};
use crate::record::{Record, ValueHash};
use crate::store::{BatchOp, Column, Store};
use crate::value::{Actor, Update, Value, check_len};

/// A partition number, as placement computes it.
pub type Partition = u32;

const META_NODE_ID: &[u8] = b"node_id";
const META_EPOCH: &[u8] = b"epoch";
/// Prefix of the metadata the layers above keep ([`Engine::put_meta`]).
const META_APP: &[u8] = b"app/";
const LOCK_STRIPES: usize = 4096;
/// Bytes of the data-column key before the user key: partition (4) and Merkle leaf (2).
const DATA_PREFIX_LEN: usize = 6;

/// A key with its stored record bytes, as read for a peer.
pub type RawRecord = (Vec<u8>, Vec<u8>);

/// A key's state during a [`Engine::merge_many`] batch.
struct Pending<'a> {
    partition: Partition,
    key: &'a [u8],
    old_hash: Option<ValueHash>,
    repaired: bool,
    record: Record,
}

/// The result of merging a replica's state into a key ([`Engine::merge`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Merged {
    /// Whether the stored state changed (false for a re-delivered or already-known state).
    pub changed: bool,
    /// Whether a corrupt local record was replaced by the merge.
    pub repaired: bool,
}

/// The result of a write to a key.
#[derive(Clone, Debug)]
pub struct Written {
    /// The key's state after the write; `None` only for a delete of a key that never existed.
    pub value: Option<Value>,
    /// The stored record of that state (what replicas are sent).
    pub record: Option<Record>,
    /// Whether the stored state changed (false for a re-delivered or already-known state).
    pub changed: bool,
    /// Whether a corrupt local record was replaced by a merge.
    pub repaired: bool,
}

/// A hint: the merged state of a key, held for a target node that was down.
#[derive(Clone, Debug)]
pub struct Hint {
    /// The key's partition.
    pub partition: Partition,
    /// The key.
    pub key: Vec<u8>,
    /// The merged state to deliver.
    pub record: Record,
    /// When the first hint for this key was stored (Unix milliseconds, for metrics only).
    pub created_ms: u64,
}

/// The hints held for one target.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backlog {
    /// Keys with a hint.
    pub keys: u64,
    /// Unix milliseconds of the oldest hint.
    pub oldest_ms: Option<u64>,
}

/// Changed keys in one [`Engine::merge_many`] batch from which it writes them with
/// [`Store::bulk_put`] (a table file ingested into RocksDB, whose fixed cost of a few
/// milliseconds this many keys repay) rather than through the WAL.
pub const BULK_PUT_RECORDS: usize = 1024;

/// About how many bytes of records one batch read for another node holds ([`Engine::hints`],
/// [`Engine::leaf_records`]): past the first record, a batch ends once it holds this many, so
/// a batch of large values still fits one message (at most 1 MiB per value, 4 MiB per frame).
pub const BATCH_BYTES: usize = 1 << 20;

/// CRDT storage for one node.
///
/// Updates of one key are serialized by a striped lock (read, merge, write, update the Merkle
/// tree); updates of different keys run in parallel and share WAL syncs. Every method that
/// reports a write returns only once the write is durable in the [`Store`].
pub struct Engine<S: Store> {
    store: S,
    node_id: String,
    actor: Actor,
    stripes: Box<[Mutex<()>]>,
    trees: RwLock<HashMap<Partition, Arc<Mutex<MerkleTree>>>>,
    backlogs: Backlogs,
}

impl<S: Store> Engine<S> {
    /// Opens the engine for `node_id` on `store`.
    ///
    /// A store with no epoch (a data directory created from nothing) gets a new random epoch; a
    /// store recorded for another node id is refused. The Merkle trees are rebuilt by one scan of
    /// the data, verifying every record's checksum.
    pub fn open(store: S, node_id: &str) -> Result<Engine<S>, StorageError> {
        if node_id.is_empty() {
            return Err(StorageError::Malformed("empty node id".into()));
        }
        check_len(Limit::NodeId, node_id.len())?;
        if let Some(found) = store.get(Column::Meta, META_NODE_ID)? {
            let found = String::from_utf8_lossy(&found).into_owned();
            if found != node_id {
                return Err(StorageError::WrongNode {
                    found,
                    expected: node_id.to_owned(),
                });
            }
        }
        let epoch = match store.get(Column::Meta, META_EPOCH)? {
            Some(bytes) => u64::from_le_bytes(
                bytes
                    .as_slice()
                    .try_into()
                    .map_err(|_| StorageError::Backend("stored epoch is not 8 bytes".into()))?,
            ),
            None => {
                let epoch: u64 = rand::random();
                store.write(vec![
                    BatchOp::Put(
                        Column::Meta,
                        META_NODE_ID.to_vec(),
                        node_id.as_bytes().to_vec(),
                    ),
                    BatchOp::Put(
                        Column::Meta,
                        META_EPOCH.to_vec(),
                        epoch.to_le_bytes().to_vec(),
                    ),
                ])?;
                epoch
            }
        };
        let engine = Engine {
            store,
            node_id: node_id.to_owned(),
            actor: Actor {
                node: Actor::node_hash(node_id),
                epoch,
            },
            stripes: (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
            trees: RwLock::new(HashMap::new()),
            backlogs: Backlogs::default(),
        };
        *engine.trees.write() = engine
            .build_trees(None)?
            .into_iter()
            .map(|(p, t)| (p, Arc::new(Mutex::new(t))))
            .collect();
        engine
            .store
            .scan_prefix(Column::Hints, &[], &mut |hk: &[u8], raw: &[u8]| {
                engine.backlogs.count(hk, raw);
                true
            })?;
        Ok(engine)
    }

    /// This node's actor (node id hash and data-directory epoch).
    pub fn actor(&self) -> Actor {
        self.actor
    }

    /// The node id the data belongs to.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The backend (tests use it to damage records).
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Applies `update` to `key` as this node's actor, and persists the result.
    ///
    /// Errors change nothing: a key over [`MAX_KEY_LEN`](crate::MAX_KEY_LEN), an update over its
    /// limits, an update of another type than the key's, a result over
    /// [`MAX_VALUE_LEN`](crate::MAX_VALUE_LEN), or a corrupt stored record (repaired only by a
    /// [`merge`](Self::merge) from a healthy replica).
    #[tracing::instrument(level = "trace", skip(self, key, update), fields(key_len = key.len()))]
    pub fn apply(
        &self,
        partition: Partition,
        key: &[u8],
        update: &Update,
    ) -> Result<Written, StorageError> {
        self.apply_with_hints(partition, key, update, &[])
    }

    /// [`apply`](Self::apply), and in the same durable write a hint of the new state for each
    /// of `hint_for` (merged into any hint already held for it, as
    /// [`put_hint`](Self::put_hint) does).
    ///
    /// A coordinator writes these *before* it sends the state to the other replicas and removes
    /// each ([`remove_delivered_hints`](Self::remove_delivered_hints)) once that replica
    /// confirmed: if it crashes in between, the hints deliver the update after it restarts, so
    /// no replica misses an update whose coordinator died.
    pub fn apply_with_hints(
        &self,
        partition: Partition,
        key: &[u8],
        update: &Update,
        hint_for: &[&str],
    ) -> Result<Written, StorageError> {
        check_len(Limit::Key, key.len())?;
        update.validate()?;
        let hint_keys = hint_for
            .iter()
            .map(|target| hint_key(target, partition, key))
            .collect::<Result<Vec<_>, _>>()?;
        let dk = data_key(partition, key);
        let _guard = self.stripe(&dk[..DATA_PREFIX_LEN]).lock();
        let old = self.read_record(partition, key, &dk)?;
        let mut value = match (&old, update.kind()) {
            (Some(record), _) => record.decode()?,
            (None, Some(kind)) => Value::empty(kind),
            (None, None) => {
                return Ok(Written {
                    value: None,
                    record: None,
                    changed: false,
                    repaired: false,
                });
            }
        };
        value.apply(self.actor, update)?;
        let record = Record::encode(&value)?;
        let old_hash = old.as_ref().map(Record::hash);
        let (mut hints, mut changes) = (Vec::new(), Vec::new());
        for hk in hint_keys {
            let (write, change) = self.merged_hint(hk, &record)?;
            hints.push(write);
            changes.push(change);
        }
        self.persist(partition, key, dk, old_hash, &record, hints)?;
        for change in changes {
            self.backlogs.apply(change);
        }
        Ok(Written {
            changed: old_hash != Some(record.hash()),
            value: Some(value),
            record: Some(record),
            repaired: false,
        })
    }

    /// Merges a replica's state of `key` into the local state and persists the result.
    ///
    /// A corrupt local record is replaced by the incoming state (`repaired`). Errors change
    /// nothing: an incoming record that does not decode, another type than the key's, a result
    /// over [`MAX_VALUE_LEN`](crate::MAX_VALUE_LEN).
    pub fn merge(
        &self,
        partition: Partition,
        key: &[u8],
        incoming: &Record,
    ) -> Result<Merged, StorageError> {
        self.merge_many(&[(partition, key.to_vec(), incoming.clone())])?
            .pop()
            .expect("one result per input")
    }

    /// Merges many keys' states with one durable write (anti-entropy, hint delivery, bulk load).
    ///
    /// Returns one result per input, in order; a key whose merge fails (as for
    /// [`merge`](Self::merge)) changes nothing and does not stop the others. The outer error is a
    /// backend failure, after which none of the batch may have been written.
    ///
    /// This is the path of a replica refill, so it does per key only what a merge needs: a key
    /// this replica lacks keeps the incoming record as it came (its payload is validated, not
    /// decoded into the CRDT type, and payloads are canonical, so encoding it again would give
    /// the same bytes); a key under a Merkle leaf that holds no key is not even read; a batch
    /// of at least [`BULK_PUT_RECORDS`] changes is one [`Store::bulk_put`]; and the Merkle tree
    /// of a partition is locked once per batch.
    pub fn merge_many(
        &self,
        items: &[(Partition, Vec<u8>, Record)],
    ) -> Result<Vec<Result<Merged, StorageError>>, StorageError> {
        let keys: Vec<Vec<u8>> = items.iter().map(|(p, k, _)| data_key(*p, k)).collect();
        let _guards = self.lock_stripes(keys.iter().map(|dk| dk.as_slice()));
        let mut results = Vec::with_capacity(items.len());
        // Per data key: the state before the batch and the latest merged record. A key that
        // appears twice merges into its earlier result; only its last state is written.
        let mut pending: HashMap<&[u8], Pending<'_>, Xxh3DefaultBuilder> =
            HashMap::with_capacity_and_hasher(items.len(), Xxh3DefaultBuilder::new());
        let malformed = |e: crate::error::Corruption| StorageError::Malformed(e.to_string());
        // Leaves (by data-key prefix) whose tree entry is 0: no key at all, not even a corrupt
        // record, is stored under them (up to a 128-bit collision, as for every tree
        // comparison). The stripes held cover whole leaves, so that stays true for the batch
        // and a key there needs no read: a refill of a wiped replica reads nothing.
        let mut empty_leaves: HashMap<&[u8], bool, Xxh3DefaultBuilder> =
            HashMap::with_hasher(Xxh3DefaultBuilder::new());
        for ((partition, key, incoming), dk) in items.iter().zip(&keys) {
            let result = (|| -> Result<Merged, StorageError> {
                check_len(Limit::Key, key.len())?;
                let leaf = &dk[..DATA_PREFIX_LEN];
                let empty_leaf = *empty_leaves.entry(leaf).or_insert_with(|| {
                    let index = u16::from_be_bytes([leaf[4], leaf[5]]) as usize;
                    self.tree(*partition).lock().level(merkle::DEPTH)[index] == 0
                });
                let (old_hash, local, repaired) = match pending.get(dk.as_slice()) {
                    Some(p) => (
                        p.old_hash,
                        Some(p.record.decode().map_err(malformed)?),
                        p.repaired,
                    ),
                    None if empty_leaf => (None, None, false),
                    None => {
                        let raw = self.store.get(Column::Data, dk)?;
                        let old_hash = raw.as_deref().map(stored_hash);
                        match raw.map(|raw| Record::from_bytes(raw).map(|r| r.decode())) {
                            None => (old_hash, None, false),
                            Some(Ok(Ok(value))) => (old_hash, Some(value), false),
                            Some(_) => (old_hash, None, true),
                        }
                    }
                };
                let record = match local {
                    Some(mut value) => {
                        value.merge(incoming.decode().map_err(malformed)?)?;
                        Record::encode(&value)?
                    }
                    None => {
                        incoming.validate().map_err(malformed)?;
                        incoming.clone()
                    }
                };
                let changed = old_hash != Some(record.hash());
                pending.insert(
                    dk.as_slice(),
                    Pending {
                        partition: *partition,
                        key,
                        old_hash,
                        repaired,
                        record,
                    },
                );
                Ok(Merged { changed, repaired })
            })();
            results.push(result);
        }
        // What changed, in partition order: written in one batch, then each partition's tree
        // updated under one lock.
        // (partition, key, old hash, new hash, replaced a corrupt record)
        type Change<'k> = (Partition, &'k [u8], Option<ValueHash>, ValueHash, bool);
        let mut changed: Vec<Change<'_>> = Vec::with_capacity(pending.len());
        let mut puts = Vec::with_capacity(pending.len());
        for (dk, p) in pending {
            let hash = p.record.hash();
            if p.old_hash == Some(hash) {
                continue;
            }
            changed.push((p.partition, p.key, p.old_hash, hash, p.repaired));
            puts.push((dk.to_vec(), p.record.into_bytes()));
        }
        // Enough records to pay for a table file (a refill) go in one bulk put, fewer in one
        // batch; both are atomic, so the tree below follows the store either way.
        if puts.len() >= BULK_PUT_RECORDS {
            puts.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            self.store.bulk_put(Column::Data, puts)?;
        } else if !puts.is_empty() {
            self.store.write(crate::store::puts(Column::Data, puts))?;
        }
        changed.sort_unstable_by_key(|c| c.0);
        for partition in changed.chunk_by(|a, b| a.0 == b.0) {
            self.tree(partition[0].0).lock().update_many(
                partition
                    .iter()
                    .filter(|c| !c.4)
                    .map(|&(_, key, old_hash, hash, _)| (key, old_hash, Some(hash))),
            );
            // The corrupt bytes' entry in the tree is unknown: rebuild their leaves.
            for key in partition.iter().filter(|c| c.4).map(|c| c.1) {
                self.refresh_leaf(partition[0].0, key)?;
            }
        }
        Ok(results)
    }

    /// The stored record of `key`, checksum verified. A corrupt record is an error, and its
    /// Merkle leaf is recomputed from the store so the tree shows the key as differing from every
    /// sound replica (anti-entropy then repairs it with a merge).
    pub fn get_record(
        &self,
        partition: Partition,
        key: &[u8],
    ) -> Result<Option<Record>, StorageError> {
        check_len(Limit::Key, key.len())?;
        let dk = data_key(partition, key);
        let _guard = self.stripe(&dk[..DATA_PREFIX_LEN]).lock();
        self.read_record(partition, key, &dk)
    }

    /// The stored state of `key` (including a deleted key's remaining causal history: see
    /// [`Value::is_present`]).
    pub fn get(&self, partition: Partition, key: &[u8]) -> Result<Option<Value>, StorageError> {
        match self.get_record(partition, key)? {
            Some(record) => Ok(Some(record.decode()?)),
            None => Ok(None),
        }
    }

    fn read_record(
        &self,
        partition: Partition,
        key: &[u8],
        dk: &[u8],
    ) -> Result<Option<Record>, StorageError> {
        let Some(raw) = self.store.get(Column::Data, dk)? else {
            return Ok(None);
        };
        match Record::from_bytes(raw) {
            Ok(record) => Ok(Some(record)),
            Err(corruption) => {
                tracing::warn!(partition, %corruption, "corrupt record");
                self.refresh_leaf(partition, key)?;
                Err(corruption.into())
            }
        }
    }

    /// Recomputes the Merkle leaf of `key` from the store. Used where a record turned out
    /// corrupt: the bytes changed under the engine, so the tree's entry for the key is unknown
    /// and the leaf is rebuilt instead of updated. The caller holds the key's stripe, which
    /// covers every key of the leaf, so no write of the leaf races with the scan.
    fn refresh_leaf(&self, partition: Partition, key: &[u8]) -> Result<(), StorageError> {
        let leaf = merkle::leaf_of(key);
        let mut hash = 0;
        for (k, value_hash) in self.leaf_keys(partition, leaf)? {
            hash ^= merkle::entry_hash(&k, value_hash);
        }
        self.tree(partition).lock().set_leaf(leaf, hash);
        Ok(())
    }

    /// Writes `record` for `key` (unless unchanged) and the `extra` operations in one batch,
    /// then updates the Merkle tree. The caller holds the key's stripe.
    fn persist(
        &self,
        partition: Partition,
        key: &[u8],
        dk: Vec<u8>,
        old_hash: Option<ValueHash>,
        record: &Record,
        extra: Vec<BatchOp>,
    ) -> Result<(), StorageError> {
        let new_hash = record.hash();
        let changed = old_hash != Some(new_hash);
        let mut batch = extra;
        if changed {
            batch.push(BatchOp::Put(Column::Data, dk, record.as_bytes().to_vec()));
        }
        if batch.is_empty() {
            return Ok(());
        }
        self.store.write(batch)?;
        if changed {
            self.tree(partition)
                .lock()
                .update(key, old_hash, Some(new_hash));
        }
        Ok(())
    }

    /// The write that makes the hint at `hk` hold `record` merged into what it holds, and its
    /// change of the backlog (to apply once the write is durable). The caller holds the key's
    /// stripe.
    fn merged_hint(
        &self,
        hk: Vec<u8>,
        record: &Record,
    ) -> Result<(BatchOp, HintChange), StorageError> {
        let old = self.store.get(Column::Hints, &hk)?;
        let (created_ms, merged) = match old.as_deref().map(split_hint) {
            Some(Ok((created_ms, held))) if held.hash() == record.hash() => (created_ms, held),
            Some(Ok((created_ms, held))) => {
                let mut value = held.decode()?;
                value.merge(
                    record
                        .decode()
                        .map_err(|e| StorageError::Malformed(e.to_string()))?,
                )?;
                (created_ms, Record::encode(&value)?)
            }
            // A corrupt hint is replaced: the incoming state is at least as new as what it held
            // for this write path, and anti-entropy covers the rest.
            Some(Err(_)) | None => (now_ms(), record.clone()),
        };
        let change = HintChange::put(&hk, old.as_deref(), created_ms);
        let mut stored = created_ms.to_le_bytes().to_vec();
        stored.extend_from_slice(merged.as_bytes());
        Ok((BatchOp::Put(Column::Hints, hk, stored), change))
    }

    /// The lock of a data key. Data keys lock by partition and Merkle leaf, so one stripe
    /// covers a whole leaf (see [`Self::refresh_leaf`]); a key's hints take its data key's
    /// stripe, so a write and its hints change together.
    /// Locks the stripes of several data keys, in index order, so concurrent batches cannot
    /// deadlock.
    fn lock_stripes<'a>(
        &self,
        data_keys: impl Iterator<Item = &'a [u8]>,
    ) -> Vec<parking_lot::MutexGuard<'_, ()>> {
        let mut stripes: Vec<usize> = data_keys
            .map(|dk| self.stripe_index(&dk[..DATA_PREFIX_LEN]))
            .collect();
        stripes.sort_unstable();
        stripes.dedup();
        stripes.iter().map(|&i| self.stripes[i].lock()).collect()
    }

    fn stripe(&self, key: &[u8]) -> &Mutex<()> {
        &self.stripes[self.stripe_index(key)]
    }

    fn stripe_index(&self, key: &[u8]) -> usize {
        (xxh3_64(key) % LOCK_STRIPES as u64) as usize
    }

    fn tree(&self, partition: Partition) -> Arc<Mutex<MerkleTree>> {
        if let Some(tree) = self.trees.read().get(&partition) {
            return tree.clone();
        }
        self.trees.write().entry(partition).or_default().clone()
    }

    /// Partitions that hold at least one record (or had one since open).
    pub fn partitions(&self) -> Vec<Partition> {
        let mut partitions: Vec<_> = self.trees.read().keys().copied().collect();
        partitions.sort_unstable();
        partitions
    }

    /// The Merkle root of a partition.
    pub fn merkle_root(&self, partition: Partition) -> NodeHash {
        self.tree(partition).lock().root()
    }

    /// The node hashes of one level of a partition's tree (0 = root, [`merkle::DEPTH`] = leaves).
    pub fn merkle_level(&self, partition: Partition, level: usize) -> Vec<NodeHash> {
        self.tree(partition).lock().level(level).to_vec()
    }

    /// A copy of a partition's incrementally maintained tree.
    pub fn merkle_tree(&self, partition: Partition) -> MerkleTree {
        self.tree(partition).lock().clone()
    }

    /// Builds a partition's tree from scratch by scanning its records (for verification; the
    /// engine itself only does this at open).
    pub fn rebuild_merkle_tree(&self, partition: Partition) -> Result<MerkleTree, StorageError> {
        Ok(self
            .build_trees(Some(partition))?
            .remove(&partition)
            .unwrap_or_default())
    }

    fn build_trees(
        &self,
        only: Option<Partition>,
    ) -> Result<HashMap<Partition, MerkleTree>, StorageError> {
        let mut leaves: HashMap<Partition, Vec<NodeHash>> = HashMap::new();
        let prefix = only.map(|p| p.to_be_bytes().to_vec()).unwrap_or_default();
        let mut bad_key = None;
        self.store
            .scan_prefix(Column::Data, &prefix, &mut |dk: &[u8], raw: &[u8]| {
                let Some((partition, leaf, key)) = split_data_key(dk) else {
                    bad_key = Some(dk.to_vec());
                    return false;
                };
                let tree = leaves
                    .entry(partition)
                    .or_insert_with(|| vec![0; merkle::LEAVES]);
                tree[leaf as usize] ^= merkle::entry_hash(key, stored_hash(raw));
                true
            })?;
        if let Some(dk) = bad_key {
            return Err(StorageError::Backend(format!("malformed data key {dk:?}")));
        }
        Ok(leaves
            .into_iter()
            .map(|(p, leaves)| (p, MerkleTree::from_leaves(leaves)))
            .collect())
    }

    /// The keys under one leaf of a partition's tree, with their value hashes, in key order of
    /// the store.
    pub fn leaf_keys(
        &self,
        partition: Partition,
        leaf: u16,
    ) -> Result<Vec<(Vec<u8>, ValueHash)>, StorageError> {
        let mut prefix = partition.to_be_bytes().to_vec();
        prefix.extend_from_slice(&leaf.to_be_bytes());
        let mut keys = Vec::new();
        self.store
            .scan_prefix(Column::Data, &prefix, &mut |dk: &[u8], raw: &[u8]| {
                keys.push((dk[DATA_PREFIX_LEN..].to_vec(), stored_hash(raw)));
                true
            })?;
        Ok(keys)
    }

    /// The keys and raw record bytes of leaves `first..=last` of a partition, whole leaves at
    /// a time, at most `limit` records and about [`BATCH_BYTES`] (more only when the first
    /// leaf alone holds more: a leaf is never split), and the first leaf not read when it
    /// stopped early.
    pub fn leaf_records(
        &self,
        partition: Partition,
        first: u16,
        last: u16,
        limit: usize,
    ) -> Result<(Vec<RawRecord>, Option<u16>), StorageError> {
        let prefix = partition.to_be_bytes();
        let mut from = prefix.to_vec();
        from.extend_from_slice(&first.to_be_bytes());
        let (mut records, mut next) = (Vec::new(), None);
        let mut current = first;
        // Records of the leaves before `current` (complete leaves), and the bytes read.
        let (mut complete, mut bytes) = (0, 0);
        self.store.scan_prefix_from(
            Column::Data,
            &prefix,
            &from,
            &mut |dk: &[u8], raw: &[u8]| {
                let leaf = u16::from_be_bytes([dk[4], dk[5]]);
                if leaf > last {
                    return false;
                }
                if leaf != current {
                    current = leaf;
                    complete = records.len();
                }
                if (records.len() >= limit || bytes >= BATCH_BYTES) && complete > 0 {
                    // `current` does not fit: the batch ends before it.
                    records.truncate(complete);
                    next = Some(current);
                    return false;
                }
                bytes += dk.len() + raw.len();
                records.push((dk[DATA_PREFIX_LEN..].to_vec(), raw.to_vec()));
                true
            },
        )?;
        Ok((records, next))
    }

    /// Visits every key of a partition with its raw record bytes until `visit` returns false.
    pub fn scan_partition(
        &self,
        partition: Partition,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StorageError> {
        self.store.scan_prefix(
            Column::Data,
            &partition.to_be_bytes(),
            &mut |dk: &[u8], raw: &[u8]| visit(&dk[DATA_PREFIX_LEN..], raw),
        )
    }

    /// Stores `record` as a hint for `target`, merged with any hint already held for that key, so
    /// the backlog grows with keys, not with writes.
    pub fn put_hint(
        &self,
        target: &str,
        partition: Partition,
        key: &[u8],
        record: &Record,
    ) -> Result<(), StorageError> {
        check_len(Limit::Key, key.len())?;
        record
            .decode()
            .map_err(|e| StorageError::Malformed(e.to_string()))?;
        let hk = hint_key(target, partition, key)?;
        let _guard = self
            .stripe(&data_key(partition, key)[..DATA_PREFIX_LEN])
            .lock();
        let (write, change) = self.merged_hint(hk, record)?;
        self.store.write(vec![write])?;
        self.backlogs.apply(change);
        Ok(())
    }

    /// Up to `limit` hints for `target`, in store order, starting after the hint for
    /// `(partition, key)` in `after` (to skip hints whose delivery failed); fewer once they
    /// hold [`BATCH_BYTES`]. An empty page means no more hints.
    pub fn hints(
        &self,
        target: &str,
        after: Option<(Partition, &[u8])>,
        limit: usize,
    ) -> Result<Vec<Hint>, StorageError> {
        let prefix = hint_key(target, 0, &[])?[..1 + target.len()].to_vec();
        // One seek to just after the cursor: the hints before it (and the deletions of those
        // already delivered) are not visited.
        let from = match after {
            Some((p, k)) => {
                let mut from = hint_key(target, p, k)?;
                from.push(0);
                from
            }
            None => prefix.clone(),
        };
        let mut hints = Vec::new();
        let mut corrupt = Vec::new();
        let mut bytes = 0;
        if limit == 0 {
            return Ok(hints);
        }
        self.store.scan_prefix_from(
            Column::Hints,
            &prefix,
            &from,
            &mut |hk: &[u8], raw: &[u8]| {
                let rest = &hk[prefix.len()..];
                let partition =
                    Partition::from_be_bytes(rest[..4].try_into().expect("hint key layout"));
                match split_hint(raw) {
                    Ok((created_ms, record)) => {
                        bytes += hk.len() + raw.len();
                        hints.push(Hint {
                            partition,
                            key: rest[4..].to_vec(),
                            record,
                            created_ms,
                        })
                    }
                    Err(_) => corrupt.push((partition, rest[4..].to_vec())),
                }
                hints.len() < limit && bytes < BATCH_BYTES
            },
        )?;
        if !corrupt.is_empty() {
            tracing::warn!(target, count = corrupt.len(), "dropping corrupt hints");
            let data_keys: Vec<Vec<u8>> = corrupt.iter().map(|(p, k)| data_key(*p, k)).collect();
            let _guards = self.lock_stripes(data_keys.iter().map(|dk| dk.as_slice()));
            // Still corrupt under the lock (a put may have replaced one since the scan).
            let mut deletes = Vec::new();
            for (partition, key) in corrupt {
                let hk = hint_key(target, partition, &key)?;
                if let Some(raw) = self.store.get(Column::Hints, &hk)?
                    && split_hint(&raw).is_err()
                {
                    let change = HintChange::delete(&hk, &raw);
                    deletes.push((hk, change));
                }
            }
            self.delete_hints(deletes)?;
        }
        Ok(hints)
    }

    /// Deletes the hints for `target` that still hold exactly the state that was delivered
    /// (each item: partition, key, and that record's hash), in one write. Returns how many
    /// were deleted; a hint that was merged with newer state meanwhile is kept for the next
    /// delivery.
    pub fn remove_delivered_hints(
        &self,
        target: &str,
        delivered: &[(Partition, Vec<u8>, ValueHash)],
    ) -> Result<usize, StorageError> {
        let hint_keys = delivered
            .iter()
            .map(|(partition, key, _)| hint_key(target, *partition, key))
            .collect::<Result<Vec<_>, _>>()?;
        let data_keys: Vec<Vec<u8>> = delivered
            .iter()
            .map(|(partition, key, _)| data_key(*partition, key))
            .collect();
        let _guards = self.lock_stripes(data_keys.iter().map(|dk| dk.as_slice()));
        let mut deletes = Vec::new();
        for (hk, (_, _, hash)) in hint_keys.into_iter().zip(delivered) {
            if let Some(change) = self.hint_holds(&hk, *hash)? {
                deletes.push((hk, change));
            }
        }
        self.delete_hints(deletes)
    }

    /// If the hint at `hk` exists and holds the state with hash `delivered` (a corrupt hint
    /// counts as holding it: deleting it loses nothing readable), the backlog change of
    /// deleting it.
    fn hint_holds(
        &self,
        hk: &[u8],
        delivered: ValueHash,
    ) -> Result<Option<HintChange>, StorageError> {
        let Some(raw) = self.store.get(Column::Hints, hk)? else {
            return Ok(None);
        };
        Ok(match split_hint(&raw) {
            Ok((_, record)) if record.hash() != delivered => None,
            _ => Some(HintChange::delete(hk, &raw)),
        })
    }

    /// Deletes hints in one write, then takes them off the backlog; returns how many. The
    /// caller holds their keys' stripes.
    fn delete_hints(&self, deletes: Vec<(Vec<u8>, HintChange)>) -> Result<usize, StorageError> {
        if deletes.is_empty() {
            return Ok(0);
        }
        let (keys, changes): (Vec<_>, Vec<_>) = deletes.into_iter().unzip();
        let deleted = keys.len();
        self.store.write(
            keys.into_iter()
                .map(|hk| BatchOp::Delete(Column::Hints, hk))
                .collect(),
        )?;
        for change in changes {
            self.backlogs.apply(change);
        }
        Ok(deleted)
    }

    /// The hint backlog per target node.
    pub fn hint_backlog(&self) -> BTreeMap<String, Backlog> {
        self.backlogs.snapshot()
    }

    /// Whether any hint is held for `target`.
    pub fn holds_hints(&self, target: &str) -> bool {
        self.backlogs.holds(target)
    }

    /// Metadata a layer above keeps under `name` (the node keeps its cluster state here), if
    /// any. Separate from the engine's own metadata (node id, epoch).
    pub fn get_meta(&self, name: &str) -> Result<Option<Vec<u8>>, StorageError> {
        self.store.get(Column::Meta, &app_key(name))
    }

    /// Stores metadata under `name`, durably, replacing what was there.
    pub fn put_meta(&self, name: &str, value: &[u8]) -> Result<(), StorageError> {
        self.store.write(vec![BatchOp::Put(
            Column::Meta,
            app_key(name),
            value.to_vec(),
        )])
    }

    /// Keys and bytes of the data this node stores (estimates on RocksDB).
    pub fn stats(&self) -> Result<crate::store::ColumnStats, StorageError> {
        self.store.stats(Column::Data)
    }

    /// Flushes the store (at shutdown).
    pub fn flush(&self) -> Result<(), StorageError> {
        self.store.flush()
    }
}

/// The value hash of raw stored bytes: the checksum of a sound record, and for a corrupt one a
/// hash of its bytes, which no sound replica has, so anti-entropy sees the key as different.
fn stored_hash(raw: &[u8]) -> ValueHash {
    match Record::from_bytes(raw.to_vec()) {
        Ok(record) => record.hash(),
        Err(_) => xxh3_128(raw) ^ 0xc0,
    }
}

fn app_key(name: &str) -> Vec<u8> {
    [META_APP, name.as_bytes()].concat()
}

fn data_key(partition: Partition, key: &[u8]) -> Vec<u8> {
    let mut dk = Vec::with_capacity(DATA_PREFIX_LEN + key.len());
    dk.extend_from_slice(&partition.to_be_bytes());
    dk.extend_from_slice(&merkle::leaf_of(key).to_be_bytes());
    dk.extend_from_slice(key);
    dk
}

fn split_data_key(dk: &[u8]) -> Option<(Partition, u16, &[u8])> {
    if dk.len() < DATA_PREFIX_LEN {
        return None;
    }
    let partition = Partition::from_be_bytes(dk[..4].try_into().ok()?);
    let leaf = u16::from_be_bytes(dk[4..6].try_into().ok()?);
    Some((partition, leaf, &dk[DATA_PREFIX_LEN..]))
}

fn hint_key(target: &str, partition: Partition, key: &[u8]) -> Result<Vec<u8>, StorageError> {
    if target.is_empty() {
        return Err(StorageError::Malformed("empty hint target".into()));
    }
    check_len(Limit::NodeId, target.len())?;
    let mut hk = Vec::with_capacity(1 + target.len() + 4 + key.len());
    hk.push(target.len() as u8);
    hk.extend_from_slice(target.as_bytes());
    hk.extend_from_slice(&partition.to_be_bytes());
    hk.extend_from_slice(key);
    Ok(hk)
}

fn split_hint(raw: &[u8]) -> Result<(u64, Record), StorageError> {
    if raw.len() < 8 {
        return Err(crate::error::Corruption::Truncated(raw.len()).into());
    }
    let created = u64::from_le_bytes(raw[..8].try_into().expect("8 bytes"));
    Ok((created, Record::from_bytes(raw[8..].to_vec())?))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
