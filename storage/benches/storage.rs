//! Storage benchmark: prints, measured side by side in one run,
//! 1. synced update throughput through the engine versus raw RocksDB puts of the same bytes with
//!    the same sync setting, from several threads (group commit);
//! 2. the cost of the Merkle update per write;
//! 3. reopen time (including the Merkle rebuild) with many keys;
//! 4. a replica refill: register records merged into an empty engine in anti-entropy's
//!    refill batches (one partition, leaf order, 4096 records), next to raw synced RocksDB
//!    batch writes of the same keys and bytes.
//!
//! `cargo bench -p shoal-storage --bench storage` (defaults), or with arguments:
//! `-- --threads 8 --updates 20000 --keys 1000000 --rounds 3 --refill 200000`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rocksdb::{DB, Options, WriteOptions};
use shoal_storage::{
    Actor, Engine, Kind, MerkleTree, Record, RocksStore, Update, Value,
    merkle::leaf_of as merkle_leaf_of,
};

struct Args {
    threads: usize,
    updates: usize,
    keys: usize,
    rounds: usize,
    refill: usize,
}

fn args() -> Args {
    let mut a = Args {
        threads: 8,
        updates: 20_000,
        keys: 1_000_000,
        rounds: 3,
        refill: 200_000,
    };
    let argv: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < argv.len() {
        let value = || {
            argv.get(i + 1)
                .and_then(|v| v.parse().ok())
                .expect("flag needs a number")
        };
        match argv[i].as_str() {
            "--threads" => a.threads = value(),
            "--updates" => a.updates = value(),
            "--keys" => a.keys = value(),
            "--rounds" => a.rounds = value(),
            "--refill" => a.refill = value(),
            _ => {} // cargo bench passes --bench
        }
        i += 1;
    }
    a
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    xs[xs.len() / 2]
}

/// Runs `f(thread, i)` for `total` operations over `threads` threads; returns ops/s.
fn parallel(threads: usize, total: usize, f: impl Fn(usize, usize) + Send + Sync + 'static) -> f64 {
    let f = Arc::new(f);
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let f = f.clone();
            std::thread::spawn(move || {
                for i in 0..total / threads {
                    f(t, i);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    (total / threads * threads) as f64 / start.elapsed().as_secs_f64()
}

fn key(t: usize, i: usize) -> Vec<u8> {
    format!("bench-key-{t}-{}", i % 1000).into_bytes()
}

fn main() {
    let a = args();
    println!(
        "storage benchmark: {} threads, {} synced updates per run, {} rounds",
        a.threads, a.updates, a.rounds
    );

    // A counter record after one increment: the bytes the raw puts write.
    let mut sample = Value::empty(Kind::Counter);
    sample
        .apply(Actor { node: 1, epoch: 1 }, &Update::CounterAdd(1))
        .unwrap();
    let record_bytes = Record::encode(&sample).unwrap().as_bytes().to_vec();

    let mut engine_rates = Vec::new();
    let mut raw_rates = Vec::new();
    for round in 0..a.rounds {
        let dir = tempfile::TempDir::new().unwrap();
        let engine = Arc::new(
            Engine::open(
                RocksStore::open(&dir.path().join("engine")).unwrap(),
                "bench",
            )
            .unwrap(),
        );
        let e = engine.clone();
        let engine_rate = parallel(a.threads, a.updates, move |t, i| {
            e.apply((i % 64) as u32, &key(t, i), &Update::CounterAdd(1))
                .unwrap();
        });
        let mut options = Options::default();
        options.create_if_missing(true);
        let db = Arc::new(DB::open(&options, dir.path().join("raw")).unwrap());
        let bytes = record_bytes.clone();
        let raw_rate = parallel(a.threads, a.updates, move |t, i| {
            let mut wo = WriteOptions::default();
            wo.set_sync(true);
            db.put_opt(key(t, i), &bytes, &wo).unwrap();
        });
        println!(
            "  round {round}: engine {engine_rate:>9.0} updates/s   raw RocksDB {raw_rate:>9.0} puts/s   ratio {:.2}",
            engine_rate / raw_rate
        );
        engine_rates.push(engine_rate);
        raw_rates.push(raw_rate);
    }
    let ratios: Vec<f64> = engine_rates
        .iter()
        .zip(&raw_rates)
        .map(|(e, r)| e / r)
        .collect();
    println!(
        "update throughput (synced, median): engine {:.0}/s, raw RocksDB {:.0}/s, ratio {:.2} (goal >= 0.5)",
        median(engine_rates),
        median(raw_rates),
        median(ratios)
    );

    // Merkle update cost per write, on a tree with a realistic spread of keys.
    let mut tree = MerkleTree::default();
    let n = 1_000_000u64;
    let start = Instant::now();
    for i in 0..n {
        tree.update(&i.to_le_bytes(), Some(i as u128), Some(i as u128 + 1));
    }
    let merkle_ns = start.elapsed().as_nanos() as f64 / n as f64;
    println!("merkle update per write: {merkle_ns:.0} ns");

    // Reopen time with many keys: load them in batches, close, reopen (rebuilds Merkle trees).
    let dir = tempfile::TempDir::new().unwrap();
    {
        let engine = Engine::open(RocksStore::open(dir.path()).unwrap(), "bench").unwrap();
        let record = Record::encode(&sample).unwrap();
        let start = Instant::now();
        for chunk in (0..a.keys).collect::<Vec<_>>().chunks(10_000) {
            let items: Vec<_> = chunk
                .iter()
                .map(|&i| {
                    (
                        (i % 256) as u32,
                        format!("key-{i:08}").into_bytes(),
                        record.clone(),
                    )
                })
                .collect();
            for r in engine.merge_many(&items).unwrap() {
                r.unwrap();
            }
        }
        println!(
            "bulk load of {} keys via merge_many: {:.1} s",
            a.keys,
            start.elapsed().as_secs_f64()
        );
        engine.flush().unwrap();
    }
    let mut reopen = Vec::new();
    for _ in 0..a.rounds {
        let start = Instant::now();
        let engine = Engine::open(RocksStore::open(dir.path()).unwrap(), "bench").unwrap();
        reopen.push(start.elapsed());
        assert_eq!(engine.partitions().len(), 256.min(a.keys));
    }
    reopen.sort();
    let med: Duration = reopen[reopen.len() / 2];
    println!(
        "reopen with {} keys (Merkle rebuild included), median of {}: {:.2} s",
        a.keys,
        a.rounds,
        med.as_secs_f64()
    );

    refill(&a);
}

/// Records of a refill: `n` register keys of 100-byte values (what the convergence benchmark
/// writes), grouped by partition and sorted in leaf order as anti-entropy sends them.
fn refill_records(n: usize) -> Vec<(u32, Vec<u8>, Record)> {
    let mut items: Vec<(u32, u16, Vec<u8>, Record)> = (0..n)
        .map(|i| {
            let key = format!("conv-base-{i:08}").into_bytes();
            let mut value = Value::empty(Kind::Register);
            value
                .apply(
                    Actor {
                        node: 1 + (i % 3) as u64,
                        epoch: 1,
                    },
                    &Update::RegisterPut {
                        value: vec![b'v'; 100],
                        context: None,
                    },
                )
                .unwrap();
            let partition = (xxhash_rust::xxh3::xxh3_64(&key) % 256) as u32;
            (
                partition,
                merkle_leaf_of(&key),
                key,
                Record::encode(&value).unwrap(),
            )
        })
        .collect();
    items.sort_by(|a, b| (a.0, a.1, &a.2).cmp(&(b.0, b.1, &b.2)));
    items.into_iter().map(|(p, _, k, r)| (p, k, r)).collect()
}

/// Refill of an empty replica: the engine's `merge_many` in batches of 4096 records of one
/// partition (anti-entropy's `TRANSFER_RECORDS`), next to raw synced RocksDB batches of the
/// same keys and bytes, per round.
fn refill(a: &Args) {
    const BATCH: usize = 4096;
    let items = refill_records(a.refill);
    let batches: Vec<&[(u32, Vec<u8>, Record)]> = items
        .chunk_by(|x, y| x.0 == y.0)
        .flat_map(|partition| partition.chunks(BATCH))
        .collect();
    let (mut engine_us, mut raw_us) = (Vec::new(), Vec::new());
    for round in 0..a.rounds {
        let dir = tempfile::TempDir::new().unwrap();
        let engine = Engine::open(
            RocksStore::open(&dir.path().join("engine")).unwrap(),
            "bench",
        )
        .unwrap();
        let start = Instant::now();
        for batch in &batches {
            for r in engine.merge_many(batch).unwrap() {
                r.unwrap();
            }
        }
        let engine_per_key = start.elapsed().as_secs_f64() * 1e6 / items.len() as f64;
        let mut options = Options::default();
        options.create_if_missing(true);
        let db = DB::open(&options, dir.path().join("raw")).unwrap();
        let start = Instant::now();
        for batch in &batches {
            let mut wb = rocksdb::WriteBatch::default();
            for (p, k, r) in batch.iter() {
                let mut dk = p.to_be_bytes().to_vec();
                dk.extend_from_slice(&merkle_leaf_of(k).to_be_bytes());
                dk.extend_from_slice(k);
                wb.put(dk, r.as_bytes());
            }
            let mut wo = WriteOptions::default();
            wo.set_sync(true);
            db.write_opt(wb, &wo).unwrap();
        }
        let raw_per_key = start.elapsed().as_secs_f64() * 1e6 / items.len() as f64;
        println!(
            "  refill round {round}: engine {engine_per_key:.2} µs/key   raw RocksDB {raw_per_key:.2} µs/key   ratio {:.2}",
            engine_per_key / raw_per_key
        );
        engine_us.push(engine_per_key);
        raw_us.push(raw_per_key);
    }
    let ratios = engine_us.iter().zip(&raw_us).map(|(e, r)| e / r).collect();
    println!(
        "refill of {} keys in batches of {BATCH} (median): engine {:.2} µs/key, raw RocksDB {:.2} µs/key, ratio {:.2}",
        items.len(),
        median(engine_us),
        median(raw_us),
        median(ratios)
    );
}
