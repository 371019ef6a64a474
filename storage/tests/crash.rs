//! Crash test in a real child process: the child applies updates from several threads, and
//! merges refill batches large enough to be ingested as table files from another, and reports
//! each one after it is persisted; the parent kills it with SIGKILL at a random moment and
//! checks, on reopen, that every reported update and batch is there.
//!
//! The child is this same test binary, re-run with `SHOAL_CRASH_CHILD` naming the data
//! directory; it runs only the `crash_child` test, which does nothing otherwise.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use shoal_storage::{Actor, Engine, Kind, Record, RocksStore, SetOp, Update, Value, View};

const CHILD_ENV: &str = "SHOAL_CRASH_CHILD";
const THREADS: usize = 4;
/// Upper bound on the child's work, so it stops by itself even if never killed.
const CHILD_MAX_UPDATES: usize = 20_000;
const CHILD_MAX_TIME: Duration = Duration::from_secs(120);
/// Refill batches the child merges at most, each into a partition of its own from
/// [`REFILL_PARTITION`] on, of [`REFILL_KEYS`] keys (enough for a bulk put).
const REFILL_BATCHES: u32 = 200;
const REFILL_PARTITION: u32 = 100;
const REFILL_KEYS: u32 = 2 * shoal_storage::BULK_PUT_RECORDS as u32;

/// The records of refill batch `batch`, as another replica would send them.
fn refill_batch(batch: u32) -> Vec<(u32, Vec<u8>, Record)> {
    (0..REFILL_KEYS)
        .map(|i| {
            let mut value = Value::empty(Kind::Register);
            value
                .apply(
                    Actor { node: 2, epoch: 1 },
                    &Update::RegisterPut {
                        value: format!("{batch}-{i}").into_bytes(),
                        context: None,
                    },
                )
                .unwrap();
            let key = format!("refill-{i}").into_bytes();
            (
                REFILL_PARTITION + batch,
                key,
                Record::encode(&value).unwrap(),
            )
        })
        .collect()
}

#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return; // Only does something when started by `reported_updates_survive_sigkill`.
    };
    let engine =
        Arc::new(Engine::open(RocksStore::open(dir.as_ref()).unwrap(), "crash-node").unwrap());
    let start = Instant::now();
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let engine = engine.clone();
            std::thread::spawn(move || {
                for i in 0..CHILD_MAX_UPDATES / THREADS {
                    if start.elapsed() > CHILD_MAX_TIME {
                        break;
                    }
                    let counter = format!("counter-{}", i % 7);
                    engine
                        .apply((i % 5) as u32, counter.as_bytes(), &Update::CounterAdd(1))
                        .unwrap();
                    // One line per persisted update; a line is written whole or not at all.
                    println!("counter {counter} {}", i % 5);
                    let member = format!("{t}-{i}");
                    engine
                        .apply(
                            9,
                            b"set",
                            &Update::Set(SetOp::Add(vec![member.clone().into_bytes()])),
                        )
                        .unwrap();
                    println!("set {member}");
                }
            })
        })
        .collect();
    let refill = {
        let engine = engine.clone();
        std::thread::spawn(move || {
            for batch in 0..REFILL_BATCHES {
                if start.elapsed() > CHILD_MAX_TIME {
                    break;
                }
                for result in engine.merge_many(&refill_batch(batch)).unwrap() {
                    result.unwrap();
                }
                println!("refill {batch}");
            }
        })
    };
    for t in threads {
        t.join().unwrap();
    }
    refill.join().unwrap();
}

#[test]
fn reported_updates_survive_sigkill() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let dir = tempfile::TempDir::new().unwrap();
    let mut rng = rand::rng();
    let mut before: BTreeMap<(String, u32), i128> = BTreeMap::new();
    for round in 0..3 {
        let kill_after_lines = rng.random_range(50..2_000);
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        let mut counters: BTreeMap<(String, u32), i128> = BTreeMap::new();
        let mut members: BTreeSet<String> = BTreeSet::new();
        let mut refilled: Vec<u32> = Vec::new();
        let mut lines = 0;
        let stdout = BufReader::new(child.stdout.take().unwrap());
        for line in stdout.lines() {
            let line = line.unwrap();
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["counter", key, partition] => {
                    *counters
                        .entry((key.to_string(), partition.parse().unwrap()))
                        .or_default() += 1;
                }
                ["set", member] => {
                    members.insert(member.to_string());
                }
                ["refill", batch] => refilled.push(batch.parse().unwrap()),
                _ => continue, // the test harness's own lines
            }
            lines += 1;
            if lines == kill_after_lines {
                // SIGKILL by pid, while the child is mid-stream.
                let status = Command::new("kill")
                    .args(["-9", &pid.to_string()])
                    .status()
                    .unwrap();
                assert!(status.success());
                break;
            }
        }
        child.wait().unwrap();
        assert_eq!(
            lines, kill_after_lines,
            "round {round}: child ended before it was killed"
        );

        let engine = Engine::open(RocksStore::open(dir.path()).unwrap(), "crash-node").unwrap();
        // Counters accumulate across rounds: each must hold what the last reopen found plus
        // every increment reported in this round.
        for ((key, partition), reported) in &counters {
            let View::Counter(value) = engine
                .get(*partition, key.as_bytes())
                .unwrap()
                .unwrap()
                .view()
            else {
                panic!("not a counter");
            };
            let base = before.get(&(key.clone(), *partition)).copied().unwrap_or(0);
            assert!(
                value >= base + reported,
                "round {round}: {key} has {value} < {base} + {reported} reported"
            );
        }
        for (key, partition) in
            (0..7).flat_map(|k| (0..5).map(move |p| (format!("counter-{k}"), p)))
        {
            if let Some(value) = engine.get(partition, key.as_bytes()).unwrap() {
                let View::Counter(value) = value.view() else {
                    panic!("not a counter")
                };
                before.insert((key, partition), value);
            }
        }
        let View::Set(stored) = engine.get(9, b"set").unwrap().unwrap().view() else {
            panic!("not a set");
        };
        let stored: BTreeSet<String> = stored
            .into_iter()
            .map(|m| String::from_utf8(m).unwrap())
            .collect();
        let lost: Vec<_> = members.difference(&stored).collect();
        assert!(
            lost.is_empty(),
            "round {round}: lost reported set adds {lost:?}"
        );
        assert_eq!(
            engine.merkle_tree(9),
            engine.rebuild_merkle_tree(9).unwrap()
        );
        for &batch in &refilled {
            for (partition, key, record) in refill_batch(batch) {
                assert_eq!(
                    engine.get_record(partition, &key).unwrap().as_ref(),
                    Some(&record),
                    "round {round}: refill batch {batch} lost {}",
                    String::from_utf8_lossy(&key)
                );
            }
            let partition = REFILL_PARTITION + batch;
            assert_eq!(
                engine.merkle_tree(partition),
                engine.rebuild_merkle_tree(partition).unwrap()
            );
        }
    }
}
