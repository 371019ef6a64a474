//! The admin endpoint over real HTTP on loopback, for a node of an in-memory cluster:
//! `/health` answers, and `/metrics` has the documented metrics and they move after requests.

use std::time::Duration;

use shoal_storage::{SetOp, Update};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

mod common;

use common::{Cluster, KEYSPACE, NODES, TIMEOUT, eventually};

/// `GET path` over HTTP/1.1; returns the status code and the body.
async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    http(addr, "GET", path).await
}

async fn http(addr: std::net::SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: shoal\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The value of the sample whose line starts with `series` (name and labels), if any.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn health_and_metrics_move_with_requests() {
    let mut cluster = Cluster::new(31);
    let node = cluster.node(0);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _admin = shoal_node::admin::spawn(node.clone(), listener);

    let (status, body) = get(addr, "/health").await;
    // Nothing counted yet.
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let (status, _) = get(addr, "/nowhere").await;
    assert_eq!(status, 404);
    assert_eq!(
        http(addr, "POST", "/anti-entropy/pause").await,
        (200, "paused\n".to_owned())
    );
    assert!(node.anti_entropy_paused());
    assert_eq!(
        http(addr, "POST", "/anti-entropy/resume").await,
        (200, "running\n".to_owned())
    );
    assert!(!node.anti_entropy_paused());

    let (_, before) = get(addr, "/metrics").await;
    assert!(before.contains("shoal_store_keys 0"), "{before}");
    let updates = r#"shoal_requests_total{op="update",outcome="ok"}"#;
    assert_eq!(sample(&before, updates), None);

    for i in 0..5 {
        let update = Update::Set(SetOp::Add(vec![format!("m{i}").into_bytes()]));
        node.update(KEYSPACE, format!("k{i}").as_bytes(), update, 2, TIMEOUT)
            .await
            .unwrap();
        node.get(KEYSPACE, format!("k{i}").as_bytes(), 2, TIMEOUT)
            .await
            .unwrap();
    }
    let (_, after) = get(addr, "/metrics").await;
    assert_eq!(sample(&after, updates), Some(5.0));
    assert_eq!(
        sample(&after, r#"shoal_requests_total{op="get",outcome="ok"}"#),
        Some(5.0)
    );
    assert_eq!(
        sample(
            &after,
            r#"shoal_request_duration_seconds_count{op="update"}"#
        ),
        Some(5.0)
    );
    assert!(
        sample(&after, "shoal_store_keys").unwrap() >= 1.0,
        "{after}"
    );
    eventually(Duration::from_secs(60), || node.members_known() == NODES).await;
    let (_, formed) = get(addr, "/metrics").await;
    assert_eq!(
        sample(&formed, r#"shoal_members{state="alive"}"#),
        Some(NODES as f64),
        "{formed}"
    );

    // A peer goes away: an update that still targets it counts an RPC error, then the member
    // gauge moves.
    let key = (0..1000)
        .map(|i| format!("both-{i}").into_bytes())
        .find(|k| {
            let (_, primaries) = cluster.primaries(k);
            primaries.contains(&0) && primaries.contains(&4)
        })
        .expect("a key on n0 and n4");
    cluster.crash(4);
    let update = Update::Set(SetOp::Add(vec![b"x".to_vec()]));
    node.update(KEYSPACE, &key, update, 2, TIMEOUT)
        .await
        .unwrap();
    eventually(Duration::from_secs(60), || !node.is_live("n4")).await;
    let (_, later) = get(addr, "/metrics").await;
    for name in [
        "shoal_requests",
        "shoal_request_duration_seconds",
        "shoal_members",
        "shoal_member_events",
        "shoal_incarnation_changes",
        "shoal_hint_backlog_keys",
        "shoal_hint_backlog_oldest_seconds",
        "shoal_hints_stored",
        "shoal_hints_delivered",
        "shoal_read_repairs",
        "shoal_store_keys",
        "shoal_store_bytes",
        "shoal_rpc_errors",
        "shoal_peer_queue_depth",
        "shoal_in_flight_requests",
        "shoal_ae_exchanges",
        "shoal_ae_keys_repaired",
        "shoal_ae_bytes_sent",
        "shoal_ae_partitions_never_compared",
        "shoal_ae_partition_compare_age_seconds",
    ] {
        assert!(
            later.contains(&format!("# TYPE {name} ")),
            "{name} missing:\n{later}"
        );
    }
    assert_eq!(sample(&later, r#"shoal_members{state="dead"}"#), Some(1.0));
    assert!(
        sample(&later, r#"shoal_member_events_total{event="dead"}"#).unwrap_or(0.0) >= 1.0,
        "{later}"
    );
    assert!(
        sample(
            &later,
            r#"shoal_rpc_errors_total{peer="n4",kind="unreachable"}"#
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{later}"
    );
    assert_eq!(
        sample(&later, r#"shoal_hint_backlog_keys{target="n4"}"#),
        Some(1.0),
        "the write-ahead hint for n4 stays"
    );

    node.kill();
    eventually(Duration::from_secs(10), || node.unhealthy().is_some()).await;
}
