//! The request path end to end on a healthy in-memory cluster, one rule per test:
//! forwarding, sloppy quorum with fallbacks and hinted handoff, read repair, quorum errors,
//! graceful shutdown. Virtual time; waits are conditions with deadlines.

use std::time::Duration;

use shoal_node::request::{Outcome, RequestError};
use shoal_storage::{SetOp, Update, View};

mod common;

use common::{Cluster, KEYSPACE, NODES, TIMEOUT, eventually};

/// Waits until every node sees `i` as dead (or alive, with `live`).
async fn until_seen(cluster: &Cluster, i: usize, live: bool) {
    let id = cluster.peer(i).id.as_str().to_owned();
    eventually(Duration::from_secs(60), || {
        cluster
            .up()
            .iter()
            .filter(|&&j| j != i)
            .all(|&j| cluster.node(j).is_live(&id) == live)
    })
    .await;
}

/// Waits until every node's SWIM has heard from every other.
async fn until_all_met(cluster: &Cluster) {
    eventually(Duration::from_secs(60), || {
        cluster
            .up()
            .iter()
            .all(|&i| cluster.node(i).members_known() == NODES)
    })
    .await;
}

fn add(member: &str) -> Update {
    Update::Set(SetOp::Add(vec![member.as_bytes().to_vec()]))
}

#[tokio::test(start_paused = true)]
async fn updates_and_gets_work_through_every_node() {
    let cluster = Cluster::new(1);
    for via in 0..NODES {
        let key = format!("k{via}");
        let ack = cluster
            .node(via)
            .update(KEYSPACE, key.as_bytes(), Update::CounterAdd(5), 2, TIMEOUT)
            .await
            .unwrap();
        assert!(ack.acks >= 2);
        for from in 0..NODES {
            let got = cluster
                .node(from)
                .get(KEYSPACE, key.as_bytes(), 2, TIMEOUT)
                .await
                .unwrap();
            assert_eq!(got.value.map(|v| v.view()), Some(View::Counter(5)));
        }
    }
    cluster.settle().await;
    for via in 0..NODES {
        let key = format!("k{via}");
        let (_, primaries) = cluster.primaries(key.as_bytes());
        for i in primaries {
            assert_eq!(
                cluster.local_view(i, key.as_bytes()),
                Some(View::Counter(5))
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_fallback_keeps_a_hint_until_the_primary_is_back() {
    let mut cluster = Cluster::new(2);
    let key = b"fallback";
    let (_, primaries) = cluster.primaries(key);
    let (down, coordinator) = (primaries[2], primaries[0]);
    // SWIM must have met the node to declare it dead later (a member it never heard of
    // counts as live).
    until_all_met(&cluster).await;
    cluster.crash(down);
    until_seen(&cluster, down, false).await;

    // W = 3 with a primary down: only possible through a fallback.
    let ack = cluster
        .node(coordinator)
        .update(KEYSPACE, key, add("x"), 3, TIMEOUT)
        .await
        .unwrap();
    assert_eq!(ack.acks, 3);
    let holders = cluster.hint_holders(down);
    assert_eq!(holders.len(), 1, "one fallback holds the hint");
    assert!(!primaries.contains(&holders[0]));
    // The fallback serves reads too.
    let got = cluster
        .node(coordinator)
        .get(KEYSPACE, key, 3, TIMEOUT)
        .await
        .unwrap();
    assert!(matches!(got.value.map(|v| v.view()), Some(View::Set(s)) if s.len() == 1));
    assert_eq!(cluster.local_view(down, key), None);

    cluster.start(down);
    cluster.settle().await;
    assert!(matches!(cluster.local_view(down, key), Some(View::Set(s)) if s.len() == 1));
    assert_eq!(cluster.node(holders[0]).metrics().hints_delivered, 1);
    assert_eq!(cluster.node(coordinator).metrics().updates_acknowledged, 1);
}

#[tokio::test(start_paused = true)]
async fn read_repair_brings_stale_replicas_up_to_date() {
    let cluster = Cluster::new(3);
    let key = b"repair";
    let (partition, primaries) = cluster.primaries(key);
    cluster
        .node(primaries[0])
        .update(KEYSPACE, key, add("a"), 3, TIMEOUT)
        .await
        .unwrap();
    // One replica learns something the others do not (as if the others missed a write).
    let skey = shoal_node::storage_key(KEYSPACE, key).unwrap();
    cluster.engines[primaries[1]]
        .apply(partition, &skey, &add("b"))
        .unwrap();

    let got = cluster
        .node(primaries[0])
        .get(KEYSPACE, key, 3, TIMEOUT)
        .await
        .unwrap();
    let mut stale: Vec<String> = got.stale.iter().map(|id| id.to_string()).collect();
    stale.sort();
    let mut expected: Vec<String> = [primaries[0], primaries[2]]
        .iter()
        .map(|&i| cluster.peer(i).id.to_string())
        .collect();
    expected.sort();
    assert_eq!(stale, expected);
    eventually(Duration::from_secs(10), || {
        primaries
            .iter()
            .all(|&i| matches!(cluster.local_view(i, key), Some(View::Set(s)) if s.len() == 2))
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn errors_say_whether_the_update_took_effect() {
    let mut cluster = Cluster::new(4);
    let node = cluster.node(0);
    node.update(KEYSPACE, b"typed", Update::CounterAdd(1), 2, TIMEOUT)
        .await
        .unwrap();
    let err = node
        .update(KEYSPACE, b"typed", add("x"), 2, TIMEOUT)
        .await
        .unwrap_err();
    assert_eq!(err.outcome(), Outcome::Failed, "{err}");
    let err = node
        .update(KEYSPACE, b"typed", Update::CounterAdd(1), 4, TIMEOUT)
        .await
        .unwrap_err();
    assert!(matches!(err, RequestError::Invalid(_)), "{err}");
    let long = vec![b'k'; shoal_storage::MAX_KEY_LEN];
    let err = node
        .update(KEYSPACE, &long, Update::CounterAdd(1), 2, TIMEOUT)
        .await
        .unwrap_err();
    assert!(matches!(err, RequestError::Invalid(_)), "{err}");

    // Three of five nodes down: fewer live nodes than W = 3.
    until_all_met(&cluster).await;
    for i in [1, 2, 3] {
        cluster.crash(i);
    }
    for i in [1, 2, 3] {
        until_seen(&cluster, i, false).await;
    }
    let err = cluster
        .node(0)
        .update(KEYSPACE, b"typed", Update::CounterAdd(1), 3, TIMEOUT)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            RequestError::Unavailable { required: 3, .. } | RequestError::Forwarded { .. }
        ),
        "{err}"
    );
    assert_eq!(err.outcome(), Outcome::Failed);
}

#[tokio::test(start_paused = true)]
async fn a_write_that_times_out_after_the_local_write_is_unknown() {
    let cluster = Cluster::new(5);
    let key = b"cut";
    let (_, primaries) = cluster.primaries(key);
    let coordinator = primaries[0];
    // The coordinator's requests to everyone are lost; SWIM has not noticed yet.
    for j in 0..NODES {
        if j != coordinator {
            cluster
                .net
                .cut_link(&cluster.peer(coordinator).id, &cluster.peer(j).id);
        }
    }
    let err = cluster
        .node(coordinator)
        .update(
            KEYSPACE,
            key,
            Update::CounterAdd(1),
            2,
            Duration::from_millis(300),
        )
        .await
        .unwrap_err();
    assert_eq!(err.outcome(), Outcome::Unknown, "{err}");
    assert!(
        matches!(&err, RequestError::Quorum(q) if q.succeeded == 1 && q.pending == 2),
        "{err}"
    );
    // The update is on the coordinator and hinted for the other primaries.
    assert_eq!(cluster.local_view(coordinator, key), Some(View::Counter(1)));
    cluster.net.heal();
    cluster.settle().await;
    for i in primaries {
        assert_eq!(cluster.local_view(i, key), Some(View::Counter(1)));
    }
}

#[tokio::test(start_paused = true)]
async fn a_graceful_shutdown_is_seen_without_suspicion() {
    let mut cluster = Cluster::new(6);
    // Let SWIM converge, then stop node 4 gracefully.
    until_all_met(&cluster).await;
    let node = cluster.nodes[4].take().unwrap();
    let start = tokio::time::Instant::now();
    node.shutdown().await;
    // Far sooner than failure detection (probe, then a suspicion timeout of seconds).
    until_seen(&cluster, 4, false).await;
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn a_slow_peer_fails_fast_instead_of_queueing() {
    let cluster = Cluster::with_config(7, |c| {
        c.peer_concurrency = 1;
        c.peer_queue = 0;
    });
    let key = b"slow";
    let (_, primaries) = cluster.primaries(key);
    let (coordinator, slow) = (primaries[0], primaries[1]);
    until_all_met(&cluster).await;
    // Requests from the coordinator to the slow peer hang until their deadline.
    cluster
        .net
        .cut_link(&cluster.peer(coordinator).id, &cluster.peer(slow).id);
    let node = cluster.node(coordinator);
    let start = tokio::time::Instant::now();
    for _ in 0..3 {
        node.update(KEYSPACE, key, Update::CounterAdd(1), 2, TIMEOUT)
            .await
            .unwrap();
    }
    assert!(start.elapsed() < TIMEOUT / 4, "{:?}", start.elapsed());
    // The first replicate to the slow peer still holds its only slot; the later ones failed
    // at once and were hinted, long before any deadline.
    let slow_id = cluster.peer(slow).id.as_str().to_owned();
    let backlog = node.hint_backlog();
    assert_eq!(
        backlog.get(&slow_id).map(|b| b.keys),
        Some(1),
        "{backlog:?}"
    );
    cluster.net.heal();
    cluster.settle().await;
    assert_eq!(cluster.local_view(slow, key), Some(View::Counter(3)));
}

/// A coordinator that crashes after W acks and before a target confirmed: the hint it wrote
/// ahead with the update delivers it to that target after the coordinator restarts, with no
/// read needed.
#[tokio::test(start_paused = true)]
async fn a_coordinator_crashed_before_a_target_confirmed_delivers_by_its_write_ahead_hint() {
    let mut cluster = Cluster::new(8);
    let key = b"crash";
    let (_, primaries) = cluster.primaries(key);
    let (coordinator, missed) = (primaries[0], primaries[2]);
    until_all_met(&cluster).await;
    cluster
        .net
        .cut_link(&cluster.peer(coordinator).id, &cluster.peer(missed).id);
    cluster
        .node(coordinator)
        .update(KEYSPACE, key, add("x"), 2, TIMEOUT)
        .await
        .unwrap();
    let missed_id = cluster.peer(missed).id.as_str().to_owned();
    let backlog = cluster.node(coordinator).hint_backlog();
    assert_eq!(
        backlog.get(&missed_id).map(|b| b.keys),
        Some(1),
        "{backlog:?}"
    );
    cluster.crash(coordinator);
    assert_eq!(
        cluster.local_view(missed, key),
        None,
        "the crash cut it off"
    );
    cluster.net.heal();
    cluster.start(coordinator);
    eventually(
        Duration::from_secs(60),
        || matches!(cluster.local_view(missed, key), Some(View::Set(s)) if s.len() == 1),
    )
    .await;
    eventually(Duration::from_secs(60), || {
        cluster.node(coordinator).hint_backlog().is_empty()
    })
    .await;
}

/// A target cut off too briefly for SWIM to declare it dead gets its hints as soon as it
/// answers an RPC again, not at the next periodic handoff pass (here an hour away).
#[tokio::test(start_paused = true)]
async fn hints_flow_as_soon_as_a_briefly_cut_target_answers_again() {
    let cluster = Cluster::with_config(12, |c| c.handoff_interval = Duration::from_secs(3600));
    let key = b"brief";
    let (_, primaries) = cluster.primaries(key);
    let (coordinator, target) = (primaries[0], primaries[1]);
    until_all_met(&cluster).await;
    let (a, b) = (
        cluster.peer(coordinator).id.clone(),
        cluster.peer(target).id.clone(),
    );
    cluster.net.cut_link(&a, &b);
    cluster
        .node(coordinator)
        .update(KEYSPACE, key, add("x"), 2, TIMEOUT)
        .await
        .unwrap();
    let target_id = b.as_str().to_owned();
    let held = |c: &Cluster| {
        c.node(coordinator)
            .hint_backlog()
            .get(&target_id)
            .map_or(0, |h| h.keys)
    };
    assert_eq!(held(&cluster), 1, "the cut target is owed a hint");
    assert!(
        cluster.node(coordinator).is_live(&target_id),
        "SWIM did not declare it dead"
    );
    cluster.net.heal();
    eventually(Duration::from_secs(120), || held(&cluster) == 0).await;
    assert!(matches!(cluster.local_view(target, key), Some(View::Set(s)) if s.len() == 1));
}

/// A stream of writes from one coordinator goes to each peer in a few `Replicate` requests,
/// not one per write: while two are in flight to a peer, the writes that follow wait and go
/// together in the next. Every replica still ends up with every write, and each confirmation
/// deletes the coordinator's write-ahead hint for it (hinted handoff, which would deliver and
/// delete them too, is an hour away here).
#[tokio::test(start_paused = true)]
async fn a_stream_of_writes_to_one_peer_goes_in_a_few_requests() {
    let cluster = Cluster::with_config(14, |c| c.handoff_interval = Duration::from_secs(3600));
    until_all_met(&cluster).await;
    // Every message takes 10 ms, so the writes pile up behind the first requests.
    cluster.net.set_faults(shoal_node::transport::FaultConfig {
        delay_min: Duration::from_millis(10),
        delay_max: Duration::from_millis(10),
        ..Default::default()
    });
    let coordinator = 0;
    let keys: Vec<String> = (0..1000)
        .map(|i| format!("stream-{i}"))
        .filter(|k| cluster.primaries(k.as_bytes()).1.contains(&coordinator))
        .take(60)
        .collect();
    assert_eq!(keys.len(), 60);
    let before = cluster.node(coordinator).metrics();
    // One write every millisecond: a round trip takes 20.
    let mut writes_in_flight = tokio::task::JoinSet::new();
    for key in keys.clone() {
        let node = cluster.node(coordinator);
        writes_in_flight.spawn(async move {
            node.update(KEYSPACE, key.as_bytes(), add("x"), 2, TIMEOUT)
                .await
        });
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    while let Some(result) = writes_in_flight.join_next().await {
        assert!(result.unwrap().unwrap().acks >= 2);
    }
    cluster.net.set_faults(Default::default());
    cluster.settle().await;
    assert_eq!(
        cluster.node(coordinator).metrics().hints_delivered,
        0,
        "the confirmations, not handoff, deleted the hints"
    );
    let after = cluster.node(coordinator).metrics();
    let requests = after.replicate_requests - before.replicate_requests;
    let writes = after.replicate_writes - before.replicate_writes;
    assert_eq!(
        writes,
        2 * keys.len() as u64,
        "each write to both other replicas"
    );
    assert!(
        requests * 4 <= writes,
        "{requests} requests carried {writes} writes"
    );
    for key in &keys {
        for i in cluster.primaries(key.as_bytes()).1 {
            assert!(
                matches!(cluster.local_view(i, key.as_bytes()), Some(View::Set(s)) if s.len() == 1),
                "{key} on n{i}"
            );
        }
    }
}

/// A `Replicate` whose writes include a damaged record stores the others and names the
/// damaged one; a request with more writes than allowed is refused and stores nothing.
#[tokio::test(start_paused = true)]
async fn a_replicate_stores_its_good_writes_and_names_the_refused_ones() {
    use bytes::Bytes;
    use shoal_node::Transport;
    use shoal_node::request::RequestId;
    use shoal_node::request::message::{
        MAX_REPLICATE_WRITES, PeerRequest, PeerResponse, ReplicaWrite, decode_response,
        encode_request,
    };

    let cluster = Cluster::new(15);
    cluster.settle().await;
    let target = 0;
    let (sender, _inbox) = cluster.net.add_node(shoal_node::Peer {
        id: shoal_node::NodeId::new("sender").unwrap(),
        addr: std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 21_010)),
    });
    let call = |request: PeerRequest| {
        let (sender, to) = (sender.clone(), cluster.peer(target).clone());
        async move {
            sender
                .rpc(&to, Bytes::from(encode_request(&request).unwrap()), TIMEOUT)
                .await
                .map(|bytes| decode_response(&bytes).unwrap())
        }
    };
    let write = |key: &[u8], member: &str| {
        let mut value = shoal_storage::Value::empty(shoal_storage::Kind::Set);
        value
            .apply(shoal_storage::Actor { node: 9, epoch: 1 }, &add(member))
            .unwrap();
        ReplicaWrite {
            id: RequestId(1),
            partition: cluster.primaries(key).0,
            key: shoal_node::storage_key(KEYSPACE, key).unwrap(),
            record: shoal_storage::Record::encode(&value)
                .unwrap()
                .as_bytes()
                .to_vec(),
            hint_for: None,
        }
    };
    let mut damaged = write(b"damaged", "x");
    *damaged.record.last_mut().unwrap() ^= 1;
    let answer = call(PeerRequest::Replicate {
        writes: vec![write(b"good-1", "a"), damaged, write(b"good-2", "b")],
    })
    .await
    .unwrap();
    let PeerResponse::Replicated { refused } = answer else {
        panic!("{answer:?}");
    };
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0].0, 1, "{refused:?}");
    assert!(matches!(cluster.local_view(target, b"good-1"), Some(View::Set(s)) if s.len() == 1));
    assert!(matches!(cluster.local_view(target, b"good-2"), Some(View::Set(s)) if s.len() == 1));
    assert_eq!(cluster.local_view(target, b"damaged"), None);

    let too_many = (0..=MAX_REPLICATE_WRITES)
        .map(|i| write(format!("many-{i}").as_bytes(), "m"))
        .collect();
    let refused = call(PeerRequest::Replicate { writes: too_many }).await;
    assert!(refused.is_err(), "{refused:?}");
    assert_eq!(cluster.local_view(target, b"many-0"), None);
}

#[tokio::test(start_paused = true)]
async fn every_message_byte_is_counted_by_its_sender_and_by_its_receiver() {
    let cluster = Cluster::new(15);
    until_all_met(&cluster).await;
    for i in 0..40 {
        let key = format!("counted-{i}");
        let via = cluster.node(i % NODES);
        via.update(KEYSPACE, key.as_bytes(), add("x"), 2, TIMEOUT)
            .await
            .unwrap();
        // A read through a node that is not a replica is forwarded; R = 3 reads every replica.
        via.get(KEYSPACE, key.as_bytes(), 3, TIMEOUT).await.unwrap();
    }
    cluster.settle().await;
    for kind in ["replicate", "read", "forward_update", "forward_get"] {
        let sent = cluster.peer_bytes("sent", kind);
        let received = cluster.peer_bytes("received", kind);
        assert!(sent > 0.0, "{kind}: some bytes sent");
        assert_eq!(sent, received, "{kind}: every byte sent arrived once");
    }
}

/// A handoff pass that fails while its target is alive is tried again soon, not at the next
/// periodic pass: here the periodic pass is an hour away, anti-entropy is off and nothing else
/// calls the target, so only the retry can deliver the hint.
#[tokio::test(start_paused = true)]
async fn a_failed_handoff_pass_to_a_live_target_is_retried_soon() {
    let mut cluster = Cluster::with_config(16, |c| {
        c.handoff_interval = Duration::from_secs(3600);
        c.anti_entropy = false;
    });
    let key = b"retried";
    let (_, primaries) = cluster.primaries(key);
    let (coordinator, target) = (primaries[0], primaries[1]);
    until_all_met(&cluster).await;
    cluster.crash(target);
    until_seen(&cluster, target, false).await;
    cluster
        .node(coordinator)
        .update(KEYSPACE, key, add("x"), 2, TIMEOUT)
        .await
        .unwrap();
    // The target returns, but the nodes holding its hints cannot reach it: the pass its
    // return starts on each of them fails.
    let holders = cluster.hint_holders(target);
    assert!(!holders.is_empty(), "the dead target is owed hints");
    let b = cluster.peer(target).id.clone();
    for &h in &holders {
        let a = cluster.peer(h).id.clone();
        cluster.net.cut_link(&a, &b);
        cluster.net.cut_link(&b, &a);
    }
    let errors = |c: &Cluster| -> u64 {
        holders
            .iter()
            .map(|&h| c.node(h).metrics().rpc_errors)
            .sum()
    };
    let failed_before = errors(&cluster);
    cluster.start(target);
    until_seen(&cluster, target, true).await;
    eventually(Duration::from_secs(60), || errors(&cluster) > failed_before).await;
    cluster.net.heal();
    eventually(Duration::from_secs(60), || {
        cluster.hint_holders(target).is_empty()
    })
    .await;
    assert!(matches!(cluster.local_view(target, key), Some(View::Set(s)) if s.len() == 1));
}
