//! Seeded multi-node simulations of the request path: 5 nodes over the in-memory network
//! with its faults, in-memory stores, tokio's paused clock.
//!
//! A failing seed prints itself; replay it with `SHOAL_SIM_SEED=<seed>`. `SHOAL_SIM_SEEDS=<n>`
//! widens the sweep (CI runs the default 20).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use shoal_node::NodeId;
use shoal_node::request::{Outcome, RequestError};
use shoal_node::transport::FaultConfig;
use shoal_storage::{SetOp, Update, View};

mod common;

use common::{Cluster, KEYSPACE, NODES, TIMEOUT};

/// What the clients learned about their updates.
#[derive(Debug, Default)]
struct Ledger {
    /// Counter key → (acknowledged sum, unknown-outcome sum).
    counters: BTreeMap<Vec<u8>, (i128, i128)>,
    /// Set key → member → outcome (`None`: acknowledged).
    members: BTreeMap<Vec<u8>, BTreeMap<Vec<u8>, Option<Outcome>>>,
    /// Member → through which node and when (for failure reports).
    origin: BTreeMap<Vec<u8>, (usize, tokio::time::Instant)>,
    /// When the run started.
    t0: Option<tokio::time::Instant>,
    acked: usize,
    unknown: usize,
    /// Gets that reached their quorum.
    gets: usize,
    /// Every node's view of every key at the end (to compare replays).
    final_views: BTreeMap<(usize, Vec<u8>), Option<View>>,
    failed: usize,
}

fn outcome(result: &Result<shoal_node::request::Acknowledged, RequestError>) -> Option<Outcome> {
    result.as_ref().err().map(RequestError::outcome)
}

/// One client: `ops` random updates through random live nodes.
async fn client(
    cluster: Arc<std::sync::Mutex<Cluster>>,
    ledger: Arc<std::sync::Mutex<Ledger>>,
    seed: u64,
    ops: usize,
) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for op in 0..ops {
        let pause = Duration::from_millis(rng.random_range(0..100));
        tokio::time::sleep(pause).await;
        let (via, node) = {
            let cluster = cluster.lock().unwrap();
            let up = cluster.up();
            let via = up[rng.random_range(0..up.len())];
            (via, cluster.node(via))
        };
        let started = tokio::time::Instant::now();
        if rng.random_bool(0.2) {
            // Reads exercise read repair under faults; what they see is checked at the end.
            let key = format!("set-{}", rng.random_range(0..4)).into_bytes();
            let result = node.get(KEYSPACE, &key, 2, TIMEOUT).await;
            ledger.lock().unwrap().gets += usize::from(result.is_ok());
        } else if rng.random_bool(0.5) {
            let key = format!("counter-{}", rng.random_range(0..4)).into_bytes();
            let delta = rng.random_range(1..10i64);
            let result = node
                .update(KEYSPACE, &key, Update::CounterAdd(delta), 2, TIMEOUT)
                .await;
            let mut ledger = ledger.lock().unwrap();
            let entry = ledger.counters.entry(key).or_default();
            match outcome(&result) {
                None => entry.0 += delta as i128,
                Some(Outcome::Unknown) => entry.1 += delta as i128,
                Some(Outcome::Failed) => {}
            }
            count(&mut ledger, outcome(&result));
        } else {
            let key = format!("set-{}", rng.random_range(0..4)).into_bytes();
            let member = format!("m-{seed}-{op}").into_bytes();
            let update = Update::Set(SetOp::Add(vec![member.clone()]));
            let result = node.update(KEYSPACE, &key, update, 2, TIMEOUT).await;
            let mut ledger = ledger.lock().unwrap();
            let o = outcome(&result);
            ledger
                .members
                .entry(key)
                .or_default()
                .insert(member.clone(), o);
            ledger.origin.insert(member, (via, started));
            count(&mut ledger, o);
        }
    }
}

fn count(ledger: &mut Ledger, outcome: Option<Outcome>) {
    match outcome {
        None => ledger.acked += 1,
        Some(Outcome::Unknown) => ledger.unknown += 1,
        Some(Outcome::Failed) => ledger.failed += 1,
    }
}

/// Runs `seed`, printing it if anything panics.
fn with_seed(seed: u64, run: impl FnOnce(u64)) {
    struct Announce(u64);
    impl Drop for Announce {
        fn drop(&mut self) {
            if std::thread::panicking() {
                eprintln!(
                    "simulation failed with seed {0}; replay: SHOAL_SIM_SEED={0}",
                    self.0
                );
            }
        }
    }
    let _announce = Announce(seed);
    run(seed);
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap()
}

fn seeds() -> Vec<u64> {
    if let Some(seed) = std::env::var("SHOAL_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return vec![seed];
    }
    let n = std::env::var("SHOAL_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    (0..n).collect()
}

/// Faults while clients write: loss, duplicates, delays and reordering throughout, a
/// partition of two random nodes from the rest, and a crashed node restarted later with its
/// store. Then faults stop, hints drain, and every primary replica of every key must hold
/// every acknowledged update, and nothing that was reported failed.
async fn faulty_run(seed: u64) -> Ledger {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
    let cluster = Arc::new(std::sync::Mutex::new(Cluster::new(seed)));
    let ledger = Arc::new(std::sync::Mutex::new(Ledger {
        t0: Some(tokio::time::Instant::now()),
        ..Ledger::default()
    }));
    // Let SWIM converge first.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let net = cluster.lock().unwrap().net.clone();
    net.set_faults(FaultConfig {
        drop: 0.05,
        duplicate: 0.05,
        reorder: 0.1,
        delay_min: Duration::from_millis(1),
        delay_max: Duration::from_millis(20),
        reorder_delay: Duration::from_millis(30),
    });
    let clients: Vec<_> = (0..4)
        .map(|c| tokio::spawn(client(cluster.clone(), ledger.clone(), seed * 100 + c, 60)))
        .collect();

    let mut order: Vec<usize> = (0..NODES).collect();
    for i in (1..NODES).rev() {
        order.swap(i, rng.random_range(0..=i));
    }
    let (crashed, side) = (order[0], [order[1], order[2]]);
    eprintln!("seed {seed}: crash n{crashed}, partition {side:?} from the rest");
    tokio::time::sleep(Duration::from_millis(rng.random_range(500..1500))).await;
    cluster.lock().unwrap().crash(crashed);
    tokio::time::sleep(Duration::from_millis(rng.random_range(500..1500))).await;
    {
        let c = cluster.lock().unwrap();
        let a: Vec<NodeId> = side.iter().map(|&i| c.peer(i).id.clone()).collect();
        let b: Vec<NodeId> = (0..NODES)
            .filter(|i| !side.contains(i))
            .map(|i| c.peer(i).id.clone())
            .collect();
        net.partition(&a, &b);
    }
    tokio::time::sleep(Duration::from_millis(rng.random_range(2000..6000))).await;
    net.heal();
    tokio::time::sleep(Duration::from_millis(rng.random_range(500..3000))).await;
    cluster.lock().unwrap().start(crashed);
    for client in clients {
        client.await.unwrap();
    }

    net.set_faults(FaultConfig::default());
    net.heal();
    // Wait without holding the lock across awaits: settle only reads.
    let settled = {
        let c = cluster.lock().unwrap();
        Cluster {
            net: c.net.clone(),
            config: c.config.clone(),
            engines: c.engines.clone(),
            nodes: c.nodes.clone(),
        }
    };
    settled.settle().await;

    let ledger = std::mem::take(&mut *ledger.lock().unwrap());
    check(&settled, &ledger);
    check_reads(&settled, &ledger).await;
    let mut ledger = ledger;
    let keys: Vec<Vec<u8>> = ledger
        .counters
        .keys()
        .chain(ledger.members.keys())
        .cloned()
        .collect();
    for key in keys {
        for i in 0..NODES {
            let view = settled.local_view(i, &key);
            ledger.final_views.insert((i, key.clone()), view);
        }
    }
    cluster.lock().unwrap().kill_all();
    ledger
}

/// Once healed, a get with R = N through any node sees every acknowledged update.
async fn check_reads(cluster: &Cluster, ledger: &Ledger) {
    for (i, (key, members)) in ledger.members.iter().enumerate() {
        let node = cluster.node(i % NODES);
        let got = node.get(KEYSPACE, key, 3, TIMEOUT).await.unwrap();
        let Some(View::Set(held)) = got.value.map(|v| v.view()) else {
            panic!("{} is not a set", String::from_utf8_lossy(key))
        };
        for (member, outcome) in members {
            if outcome.is_none() {
                assert!(held.contains(member), "get misses {member:?}");
            }
        }
    }
}

fn check(cluster: &Cluster, ledger: &Ledger) {
    let mut problems = Vec::new();
    for (key, (acked, unknown)) in &ledger.counters {
        let (_, primaries) = cluster.primaries(key);
        for &i in &primaries {
            let value = match cluster.local_view(i, key) {
                Some(View::Counter(v)) => v,
                None => 0,
                other => panic!("{other:?}"),
            };
            if !(*acked <= value && value <= acked + unknown) {
                let states: Vec<_> = (0..NODES).map(|j| cluster.local_state(j, key)).collect();
                problems.push(format!(
                    "{}: n{i} holds {value}, acknowledged {acked}, unknown {unknown}; \
                     primaries {primaries:?}; states {states:#?}",
                    String::from_utf8_lossy(key)
                ));
            }
        }
    }
    for (key, members) in &ledger.members {
        let (_, primaries) = cluster.primaries(key);
        for &i in &primaries {
            let held = match cluster.local_view(i, key) {
                Some(View::Set(s)) => s,
                None => BTreeSet::new(),
                other => panic!("{other:?}"),
            };
            for (member, outcome) in members {
                let name = String::from_utf8_lossy(member);
                let (via, at) = ledger.origin[member];
                let at = at - ledger.t0.expect("set at start");
                match outcome {
                    None if !held.contains(member) => problems.push(format!(
                        "acknowledged {name} (via n{via} at {at:?}) missing on n{i} of {} \
                         (primaries {primaries:?})",
                        String::from_utf8_lossy(key)
                    )),
                    Some(Outcome::Failed) if held.contains(member) => {
                        problems.push(format!("failed {name} (via n{via} at {at:?}) is on n{i}"))
                    }
                    _ => {}
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn no_acknowledged_update_is_lost_under_faults() {
    let mut totals = (0, 0, 0, 0);
    for seed in seeds() {
        with_seed(seed, |seed| {
            let ledger = runtime().block_on(faulty_run(seed));
            totals.0 += ledger.acked;
            totals.1 += ledger.unknown;
            totals.2 += ledger.failed;
            totals.3 += ledger.gets;
        });
    }
    eprintln!(
        "updates acknowledged {}, unknown {}, failed {}; gets answered {}",
        totals.0, totals.1, totals.2, totals.3
    );
    assert!(totals.0 > 0, "some updates must be acknowledged");
}

#[test]
fn a_seed_replays_identically() {
    let run = || {
        let ledger = runtime().block_on(faulty_run(3));
        (
            ledger.acked,
            ledger.unknown,
            ledger.failed,
            ledger.gets,
            ledger.final_views,
        )
    };
    let first = run();
    assert!(first.0 > 0);
    assert_eq!(first, run(), "seed 3 ran differently twice");
}
