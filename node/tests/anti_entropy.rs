//! Merkle anti-entropy on in-memory nodes (virtual time): it heals what hints cannot — a
//! replica whose data directory was wiped, and a replica that missed updates nobody hinted —
//! and leaves equal Merkle roots behind.

use std::time::Duration;

use shoal_storage::{SetOp, Update, View};

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

/// Applies `update` to `key` (W=2), coordinated by its first live primary.
async fn update_at_first_live_primary(cluster: &Cluster, key: &[u8], update: Update) {
    let (_, primaries) = cluster.primaries(key);
    let coordinator = primaries
        .into_iter()
        .find(|&p| cluster.nodes[p].is_some())
        .expect("a live primary");
    cluster
        .node(coordinator)
        .update(KEYSPACE, key, update, 2, TIMEOUT)
        .await
        .unwrap();
}

/// Adds `{tag}{i}` to every key `i`.
async fn write_keys(cluster: &Cluster, tag: &str) {
    for i in 0..KEYS {
        update_at_first_live_primary(cluster, &key(i), add(&format!("{tag}{i}"))).await;
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
    cluster.crash_and_wipe(wiped);
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

/// A value of `members` set members of 60 KB each (about 60 KB × members encoded).
fn big_add(tag: usize, members: usize) -> Update {
    Update::Set(SetOp::Add(
        (0..members)
            .map(|m| {
                let mut member = vec![b'x'; 60_000];
                member.extend_from_slice(format!("-{tag}-{m}").as_bytes());
                member
            })
            .collect(),
    ))
}

#[tokio::test(start_paused = true)]
async fn large_values_move_in_batches_that_fit_a_message() {
    // 12 keys of about 900 KB: every hint page and anti-entropy batch would be far over the
    // 4 MiB frame if batches were bounded by count alone.
    const BIG: usize = 12;
    let mut cluster = Cluster::new(24);
    // All in one partition, so one anti-entropy exchange moves them all.
    let (partition, _) = cluster.primaries(b"big-0");
    let keys: Vec<Vec<u8>> = (0..)
        .map(|i| format!("big-{i}").into_bytes())
        .filter(|k| cluster.primaries(k).0 == partition)
        .take(BIG)
        .collect();
    let big_key = |i: usize| keys[i].clone();
    let behind = 2;
    cluster.crash(behind);
    for i in 0..BIG {
        update_at_first_live_primary(&cluster, &big_key(i), big_add(i, 15)).await;
    }
    let complete = |cluster: &Cluster| {
        (0..BIG).all(|i| {
            let (_, primaries) = cluster.primaries(&big_key(i));
            primaries.iter().all(|&p| {
                matches!(cluster.local_view(p, &big_key(i)), Some(View::Set(s)) if s.len() == 15)
            })
        })
    };
    assert!(!complete(&cluster), "the crashed node missed them");
    // Hinted handoff delivers them: every hint is acknowledged and deleted.
    cluster.start(behind);
    eventually(LIMIT, || {
        complete(&cluster)
            && cluster
                .engines
                .iter()
                .all(|e| e.hint_backlog().values().all(|b| b.keys == 0))
    })
    .await;
    // Anti-entropy refills a wiped replica with them.
    cluster.crash_and_wipe(behind);
    assert!(!complete(&cluster));
    cluster.start(behind);
    eventually(LIMIT, || complete(&cluster)).await;
}

#[tokio::test(start_paused = true)]
async fn one_differing_partition_costs_group_summaries_not_every_root() {
    // 256 partitions over 5 nodes: two nodes share about 77, more than one roots answer
    // names directly, so a comparison that differs answers with group summaries first.
    let cluster = Cluster::with_config(24, |c| c.ring.partitions = 256);
    write_keys(&cluster, "m").await;
    cluster.settle().await;
    assert!(healed(&cluster));
    // The roots bytes of the idle rounds in a stretch of time, for comparison.
    let stretch = Duration::from_secs(20);
    let before = cluster.peer_bytes("sent", "ae_roots");
    tokio::time::sleep(stretch).await;
    let idle = cluster.peer_bytes("sent", "ae_roots") - before;

    // One replica alone gets a new element of one key, as if its replication was lost.
    let (partition, primaries) = cluster.primaries(&key(0));
    let skey = shoal_node::storage_key(KEYSPACE, &key(0)).unwrap();
    cluster.engines[primaries[0]]
        .apply(partition, &skey, &add("only-here"))
        .unwrap();
    let before = cluster.peer_bytes("sent", "ae_roots");
    let started = tokio::time::Instant::now();
    eventually(LIMIT, || {
        primaries
            .iter()
            .all(|&p| matches!(cluster.local_view(p, &key(0)), Some(View::Set(s)) if s.len() == 2))
    })
    .await;
    assert!(started.elapsed() < stretch, "repaired within the stretch");
    tokio::time::sleep_until(started + stretch).await;
    let repair = cluster.peer_bytes("sent", "ae_roots") - before;
    // Two comparisons at least find the difference (the replica that has it with each of the
    // other two); each would carry about 77 roots of 17 bytes if every root were sent.
    let every_root = 77.0 * 17.0;
    eprintln!("roots bytes: idle {idle}, with one differing partition {repair}");
    assert!(
        repair - idle < every_root,
        "{repair} roots bytes with one differing partition, {idle} idle"
    );
}

#[tokio::test(start_paused = true)]
async fn a_pause_holds_a_refill_between_batches() {
    // 8 partitions, so a wiped replica's partition is refilled in many batches of whole
    // leaves, each a step of the same exchange; a budget low enough for the refill to take
    // seconds.
    let batch = shoal_node::antientropy::KEYS_PER_STEP;
    let mut cluster = Cluster::with_config(25, |c| {
        c.ring.partitions = 8;
        c.ae_keys_per_sec = 1000;
        c.ae_transfer_batch = batch;
    });
    let keys = 4000;
    for i in 0..keys {
        update_at_first_live_primary(&cluster, &key(i), add("m")).await;
    }
    cluster.settle().await;
    let wiped = 2;
    cluster.crash_and_wipe(wiped);
    cluster.start(wiped);
    let repaired = |cluster: &Cluster| -> u64 {
        (0..NODES)
            .map(|i| cluster.node(i).metrics().ae_keys_repaired)
            .sum()
    };
    // Pause in the middle of the refill.
    eventually(LIMIT, || repaired(&cluster) > 0).await;
    for i in 0..NODES {
        cluster.node(i).pause_anti_entropy(true);
    }
    let at_pause = repaired(&cluster);
    tokio::time::sleep(Duration::from_secs(60)).await;
    let paused = repaired(&cluster) - at_pause;
    // At most the batches already on their way when the pause came: one per exchange.
    let in_flight = (NODES * 4 * batch) as u64;
    assert!(
        paused <= in_flight,
        "{paused} keys repaired in 60 s of pause (at most {in_flight} were on their way)"
    );
    for i in 0..NODES {
        cluster.node(i).pause_anti_entropy(false);
    }
    let wiped_holds = |cluster: &Cluster| {
        (0..keys)
            .filter(|&i| cluster.primaries(&key(i)).1.contains(&wiped))
            .all(|i| cluster.local_view(wiped, &key(i)).is_some())
    };
    assert!(
        !wiped_holds(&cluster),
        "the pause held part of the refill back"
    );
    eventually(LIMIT, || wiped_holds(&cluster)).await;
}

#[tokio::test(start_paused = true)]
async fn records_pushed_into_a_partition_busy_with_another_peer_are_merged_then_refused() {
    use bytes::Bytes;
    use shoal_node::Transport;
    use shoal_node::request::message::{
        PeerRequest, PeerResponse, RequestId, decode_response, encode_request,
    };

    let cluster = Cluster::new(26);
    cluster.settle().await;
    let target = 0;
    let skey = shoal_node::storage_key(KEYSPACE, b"pushed").unwrap();
    let (partition, _) = cluster.primaries(b"pushed");
    // Two peers the node does not know: their exchanges claim partitions all the same.
    let peer = |name: &str, port: u16| shoal_node::Peer {
        id: shoal_node::NodeId::new(name).unwrap(),
        addr: std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port)),
    };
    let (holder, _holder_inbox) = cluster.net.add_node(peer("holder", 21_000));
    let (pusher, _pusher_inbox) = cluster.net.add_node(peer("pusher", 21_001));
    let call = |from: &shoal_node::MemoryTransport, request: PeerRequest| {
        let from = from.clone();
        let to = cluster.peer(target).clone();
        async move {
            let bytes = from
                .rpc(&to, Bytes::from(encode_request(&request).unwrap()), TIMEOUT)
                .await
                .unwrap();
            decode_response(&bytes).unwrap()
        }
    };
    let root_children = |id| PeerRequest::AeHashes {
        id: RequestId(id),
        partition,
        level: 0,
        nodes: vec![0],
    };
    // The holder's exchange asks for the root's children: the partition is its for a while.
    let answer = call(&holder, root_children(1)).await;
    assert!(matches!(answer, PeerResponse::Hashes(_)), "{answer:?}");
    // A push from another peer meanwhile: refused, but its records are not thrown away.
    let mut value = shoal_storage::Value::empty(shoal_storage::Kind::Set);
    value
        .apply(
            shoal_storage::Actor { node: 9, epoch: 1 },
            &add("from-the-pusher"),
        )
        .unwrap();
    let record = shoal_storage::Record::encode(&value).unwrap();
    let answer = call(
        &pusher,
        PeerRequest::AePush {
            id: RequestId(2),
            partition,
            records: vec![(skey, record.as_bytes().to_vec())],
        },
    )
    .await;
    assert!(matches!(answer, PeerResponse::Busy), "{answer:?}");
    assert!(
        cluster.local_view(target, b"pushed").is_some(),
        "the refused push's records were merged"
    );
    // Another step of the pusher's is refused before it does anything.
    let answer = call(&pusher, root_children(3)).await;
    assert!(matches!(answer, PeerResponse::Busy), "{answer:?}");
}

#[tokio::test(start_paused = true)]
async fn the_peers_of_a_restarted_replica_compare_with_it_at_once() {
    // Rounds a minute apart and more: the peers' own schedule, or the grace after SWIM sees a
    // member come back (half a minute here), would leave the refill to the wiped replica
    // alone for many seconds. A budget low enough for the refill to take seconds.
    let mut cluster = Cluster::with_config(26, |c| {
        c.ae_min_interval = Duration::from_secs(60);
        c.ae_max_interval = Duration::from_secs(600);
        c.ae_keys_per_sec = 1000;
        c.ae_transfer_batch = shoal_node::antientropy::KEYS_PER_STEP;
    });
    let keys = 4000;
    for i in 0..keys {
        update_at_first_live_primary(&cluster, &key(i), add("m")).await;
    }
    cluster.settle().await;
    // Past every node's first second: a node in it asks the peers it compares with to start
    // their own rounds too, and this test is about the wiped replica asking.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let wiped = 2;
    // Exchanges the other nodes started (a roots comparison counts too): equal with each
    // other, they start none until their next round, a minute away.
    let peers_exchanges = |cluster: &Cluster| -> u64 {
        (0..NODES)
            .filter(|&i| i != wiped)
            .map(|i| cluster.node(i).metrics().ae_exchanges)
            .sum()
    };
    let before = peers_exchanges(&cluster);
    cluster.crash_and_wipe(wiped);
    cluster.start(wiped);
    let restarted = tokio::time::Instant::now();
    eventually(LIMIT, || peers_exchanges(&cluster) > before).await;
    let comparing_after = restarted.elapsed();
    assert!(
        comparing_after < Duration::from_secs(10),
        "the peers began comparing with the restarted replica {comparing_after:?} after it \
         started"
    );
    let wiped_holds = |cluster: &Cluster| {
        (0..keys)
            .filter(|&i| cluster.primaries(&key(i)).1.contains(&wiped))
            .all(|i| cluster.local_view(wiped, &key(i)).is_some())
    };
    eventually(LIMIT, || wiped_holds(&cluster)).await;
}
