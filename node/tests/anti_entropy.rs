//! Merkle anti-entropy on in-memory nodes (virtual time): it heals what hints cannot — a
//! replica whose data directory was wiped, and a replica that missed updates nobody hinted —
//! and leaves equal Merkle roots behind.

use std::sync::Arc;
use std::time::Duration;

use shoal_storage::{MemoryEngine, MemoryStore, SetOp, Update, View};

mod common;

use common::{Cluster, KEYSPACE, NODES, TIMEOUT, eventually};

const KEYS: usize = 60;
const LIMIT: Duration = Duration::from_secs(300);

fn key(i: usize) -> Vec<u8> {
    format!("ae-{i}").into_bytes()
}

fn add(member: &str) -> Update {
    Update::Set(SetOp::Add(vec![member.as_bytes().to_vec()]))
}

/// Adds `{tag}{i}` to every key `i`, coordinated by its first live primary.
async fn write_keys(cluster: &Cluster, tag: &str) {
    for i in 0..KEYS {
        let (_, primaries) = cluster.primaries(&key(i));
        let coordinator = primaries
            .into_iter()
            .find(|&p| cluster.nodes[p].is_some())
            .expect("a live primary");
        cluster
            .node(coordinator)
            .update(KEYSPACE, &key(i), add(&format!("{tag}{i}")), 2, TIMEOUT)
            .await
            .unwrap();
    }
}

/// Whether every primary of every key holds it, with equal Merkle roots among primaries.
fn healed(cluster: &Cluster) -> bool {
    (0..KEYS).all(|i| {
        let (partition, primaries) = cluster.primaries(&key(i));
        let roots: Vec<_> = primaries
            .iter()
            .map(|&p| cluster.engines[p].merkle_root(partition))
            .collect();
        primaries
            .iter()
            .all(|&p| matches!(cluster.local_view(p, &key(i)), Some(View::Set(s)) if s.len() == 1))
            && roots.windows(2).all(|w| w[0] == w[1])
    })
}

#[tokio::test(start_paused = true)]
async fn a_wiped_replica_is_refilled_by_anti_entropy() {
    let mut cluster = Cluster::new(21);
    write_keys(&cluster, "m").await;
    cluster.settle().await;
    assert!(healed(&cluster));

    // n1 loses its data directory: a new, empty store (and a new actor epoch).
    let wiped = 1;
    cluster.crash(wiped);
    cluster.engines[wiped] =
        Arc::new(MemoryEngine::open(MemoryStore::new(), cluster.peer(wiped).id.as_str()).unwrap());
    assert!(!healed(&cluster));
    cluster.start(wiped);
    eventually(LIMIT, || healed(&cluster)).await;
    let repaired: u64 = (0..NODES)
        .map(|i| cluster.node(i).metrics().ae_keys_repaired)
        .sum();
    assert!(repaired > 0, "anti-entropy did the repair");
}

#[tokio::test(start_paused = true)]
async fn updates_nobody_hinted_reach_every_replica() {
    let mut cluster = Cluster::new(22);
    write_keys(&cluster, "m").await;
    cluster.settle().await;
    // Remove every hint n3 is owed, as if they were lost: only anti-entropy can repair it.
    let behind = 3;
    cluster.crash(behind);
    write_keys(&cluster, "late").await;
    for i in (0..NODES).filter(|&i| i != behind) {
        let engine = &cluster.engines[i];
        let id = cluster.peer(behind).id.as_str().to_owned();
        let hints: Vec<_> = engine
            .hints(&id, None, 10_000)
            .unwrap()
            .into_iter()
            .map(|h| (h.partition, h.key, h.record.hash()))
            .collect();
        engine.remove_delivered_hints(&id, &hints).unwrap();
    }
    cluster.start(behind);
    eventually(LIMIT, || {
        (0..KEYS).all(|i| {
            let (_, primaries) = cluster.primaries(&key(i));
            primaries.iter().all(
                |&p| matches!(cluster.local_view(p, &key(i)), Some(View::Set(s)) if s.len() == 2),
            )
        })
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn keys_stay_on_the_first_n_primaries_of_their_keyspace() {
    let cluster = Cluster::new(23);
    cluster.node(0).create_keyspace("one", 1).unwrap();
    eventually(LIMIT, || {
        (0..NODES).all(|i| cluster.node(i).n_for("one") == 1)
    })
    .await;
    let skey = shoal_node::storage_key("one", b"solo").unwrap();
    let partition = cluster.node(0).cluster().ring.partition_of(&skey);
    let primaries: Vec<usize> = cluster
        .node(0)
        .cluster()
        .ring
        .primaries(partition)
        .iter()
        .map(|id| id.as_str()[1..].parse().unwrap())
        .collect();
    cluster
        .node(primaries[1])
        .update("one", b"solo", add("x"), 1, TIMEOUT)
        .await
        .unwrap();
    let holds = |i: usize| {
        cluster.engines[i]
            .get_record(partition.0, &skey)
            .unwrap()
            .is_some()
    };
    // Let every node run at least two anti-entropy rounds (one root comparison per peer each).
    let before: Vec<u64> = (0..NODES)
        .map(|i| cluster.node(i).metrics().ae_exchanges)
        .collect();
    eventually(LIMIT, || {
        (0..NODES).all(|i| cluster.node(i).metrics().ae_exchanges >= before[i] + 8)
    })
    .await;
    assert!(holds(primaries[0]), "the keyspace's one replica has it");
    for &other in &primaries[1..] {
        assert!(!holds(other), "n{other} is beyond N = 1 and got a copy");
    }
}
