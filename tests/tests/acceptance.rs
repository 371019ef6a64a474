//! The node issue's acceptance story on real processes (loopback): a 3-node dev cluster takes
//! W=2 writes through the SDK; one node is killed with SIGKILL by pid and writes keep being
//! acknowledged; it is started again from its data directory; its hints are delivered (every
//! node's backlog reaches 0 in `shoal cluster status --json`), every replica's digest is equal
//! (`shoal key-info --json`), and every acknowledged update is present.
//!
//! The writer is bounded in count and time and stops by itself; every process is killed by pid
//! when the test ends (see [`DevCluster`]).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shoal_client::identity::ClientName;
use shoal_client::tls::TlsMaterial;
use shoal_client::{Client, ClientConfig, Outcome};
use shoal_tests::{DevCluster, alive, send_signal, wait_until};

const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(90);
/// Hints are delivered when SWIM sees the node back, and at the latest by the periodic
/// handoff pass (10 s); generous for a loaded machine.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(120);
/// Counter keys and set keys the writer spreads its updates over.
const KEYS: usize = 12;
/// The writer never runs longer than this, nor more than `MAX_OPS` updates.
const WRITER_LIMIT: Duration = Duration::from_secs(300);
const MAX_OPS: usize = 5_000;

/// What the writer saw: per operation, whether it was acknowledged, failed or unknown.
#[derive(Default)]
struct History {
    /// Counter increments acknowledged, per counter key.
    incr_ok: Vec<i128>,
    /// Counter increments with an unknown outcome, per counter key.
    incr_unknown: Vec<i128>,
    /// Set members acknowledged.
    added: BTreeSet<(usize, String)>,
    /// Operations acknowledged, in order (true) or not (false), with the time they ended.
    results: Vec<(Instant, bool)>,
}

fn counter_key(i: usize) -> String {
    format!("c{i}")
}

fn set_key(i: usize) -> String {
    format!("s{i}")
}

async fn writer(client: Client, history: Arc<Mutex<History>>, stop: Arc<AtomicBool>) {
    let started = Instant::now();
    let mut op = 0usize;
    while !stop.load(Ordering::SeqCst) && op < MAX_OPS && started.elapsed() < WRITER_LIMIT {
        // Even operations increment counter k, odd ones add to set k: every key is written.
        let k = (op / 2) % KEYS;
        let ok = if op.is_multiple_of(2) {
            let result = client.counter(counter_key(k)).w(2).incr(1).await;
            let mut h = history.lock().unwrap();
            match &result {
                Ok(_) => h.incr_ok[k] += 1,
                Err(e) if e.outcome() == Outcome::Unknown => h.incr_unknown[k] += 1,
                Err(_) => {}
            }
            result.is_ok()
        } else {
            let member = format!("m{op}");
            let result = client.set(set_key(k)).w(2).add([member.clone()]).await;
            if result.is_ok() {
                history.lock().unwrap().added.insert((k, member));
            }
            result.is_ok()
        };
        history.lock().unwrap().results.push((Instant::now(), ok));
        op += 1;
        // Paced: a steady trickle, so the kill lands among writes.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn acked_since(history: &Mutex<History>, since: Instant) -> (usize, usize) {
    let h = history.lock().unwrap();
    let after: Vec<bool> = h
        .results
        .iter()
        .filter(|(at, _)| *at > since)
        .map(|(_, ok)| *ok)
        .collect();
    (after.iter().filter(|ok| **ok).count(), after.len())
}

#[test]
fn acknowledged_writes_survive_a_kill_9_and_replicas_converge_after_restart() {
    let cluster = DevCluster::start(3);
    cluster.wait_formed(1, MEMBERSHIP_TIMEOUT);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let tls =
        TlsMaterial::load_client(&cluster.dir().join("tls"), &ClientName::new("dev").unwrap())
            .unwrap();
    let client = runtime
        .block_on(
            Client::builder()
                .seeds(cluster.seeds())
                .tls(tls)
                .config(ClientConfig {
                    timeout: Duration::from_secs(5),
                    ..ClientConfig::default()
                })
                .build(),
        )
        .expect("client connects");
    let history = Arc::new(Mutex::new(History {
        incr_ok: vec![0; KEYS],
        incr_unknown: vec![0; KEYS],
        ..History::default()
    }));
    let stop = Arc::new(AtomicBool::new(false));
    let writing = runtime.spawn(writer(client.clone(), history.clone(), stop.clone()));

    // Some writes with every node up.
    let start = Instant::now();
    wait_until("40 acknowledged writes", CONVERGE_TIMEOUT, || {
        acked_since(&history, start).0 >= 40
    });

    let pid = cluster.pid("n2").expect("n2 runs");
    send_signal(pid, libc::SIGKILL);
    wait_until("n2's process to be gone", Duration::from_secs(20), || {
        !alive(pid)
    });
    wait_until("n1 and n3 to declare n2 dead", MEMBERSHIP_TIMEOUT, || {
        cluster.membership_lines("n1", "dead", "n2") >= 1
            && cluster.membership_lines("n3", "dead", "n2") >= 1
    });
    // And once the client's routing table (refreshed every 2 s) knows it too.
    wait_until("the client to route around n2", MEMBERSHIP_TIMEOUT, || {
        client
            .ring()
            .is_some_and(|r| r.nodes.iter().any(|n| n.id == "n2" && !n.live))
    });
    // With n2 known dead, every W=2 write is acknowledged by n1 and n3 (the coordinator keeps
    // a hint for n2).
    let dead_seen = Instant::now();
    wait_until(
        "60 writes after n2 was declared dead",
        CONVERGE_TIMEOUT,
        || acked_since(&history, dead_seen).1 >= 60,
    );
    let (ok, all) = acked_since(&history, dead_seen);
    assert_eq!(ok, all, "W=2 writes failed while n2 was down");
    let status = cluster.shoal_json(&["cluster", "status"]);
    assert!(
        status["hint_backlog_keys"].as_u64().unwrap_or(0) > 0,
        "no hints kept for n2: {status}"
    );

    let mut n2 = cluster.start_node("n2");
    wait_until("n1 and n3 to see n2 up again", MEMBERSHIP_TIMEOUT, || {
        cluster.membership_lines("n1", "up", "n2") >= 2
            && cluster.membership_lines("n3", "up", "n2") >= 2
    });
    let back = Instant::now();
    wait_until("20 writes after n2 came back", CONVERGE_TIMEOUT, || {
        acked_since(&history, back).1 >= 20
    });
    stop.store(true, Ordering::SeqCst);
    runtime.block_on(writing).unwrap();

    // Hints delivered: every node's backlog is 0, every member alive and on one ring.
    wait_until("every hint backlog to reach 0", CONVERGE_TIMEOUT, || {
        let status = cluster.shoal_json(&["cluster", "status"]);
        let members = status["members"].as_array().cloned().unwrap_or_default();
        status["hint_backlog_keys"] == 0
            && status["converged"] == true
            && members.len() == 3
            && members
                .iter()
                .all(|m| m["state"] == "alive" && m["reachable"] == true)
    });

    // Every replica of every key holds the same state.
    let keys: Vec<String> = (0..KEYS)
        .flat_map(|k| [counter_key(k), set_key(k)])
        .collect();
    for key in &keys {
        wait_until(
            &format!("the replicas of {key} to agree"),
            CONVERGE_TIMEOUT,
            || {
                let info = cluster.shoal_json(&["key-info", key]);
                let replicas = info["replicas"].as_array().cloned().unwrap_or_default();
                info["consistent"] == true
                    && replicas.len() == 3
                    && replicas.iter().all(|r| r["digest"].is_string())
            },
        );
    }

    // Every acknowledged update is present, read from all three replicas.
    let h = history.lock().unwrap();
    runtime.block_on(async {
        for k in 0..KEYS {
            let value = client.counter(counter_key(k)).r(3).get().await.unwrap();
            let low = h.incr_ok[k];
            let high = low + h.incr_unknown[k];
            assert!(
                (low..=high).contains(&value),
                "counter {k}: {value} not within acknowledged {low} .. {high}"
            );
            let members = client.set(set_key(k)).r(3).get().await.unwrap();
            for (_, member) in h.added.iter().filter(|(key, _)| *key == k) {
                assert!(
                    members.contains(member.as_bytes()),
                    "set {k} lost acknowledged member {member}"
                );
            }
        }
    });
    assert!(h.incr_ok.iter().sum::<i128>() > 0 && !h.added.is_empty());
    drop(h);

    n2.signal(libc::SIGTERM);
    n2.wait_exit(Duration::from_secs(20));
}
