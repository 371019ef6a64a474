//! Real `shoal` processes on loopback: config errors, a dev cluster forming, kill -9 and
//! restart from the same data directory, graceful stop on SIGTERM, and a second dev-cluster
//! run on the same directory.

use std::process::{Command, Output};
use std::time::Duration;

use shoal_tests::{DevCluster, alive, http_get, metric_sample, send_signal, shoal_bin, wait_until};

/// Generous: SWIM needs a few probe rounds and suspicion timeouts, and CI machines are slow.
const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(90);
/// A graceful stop: leave announced, tasks stopped, store flushed.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

fn node_start(config_text: &str) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.toml");
    std::fs::write(&path, config_text).unwrap();
    Command::new(shoal_bin())
        .args(["node", "start", "--config"])
        .arg(&path)
        .output()
        .unwrap()
}

/// The error a failed command printed: exactly one `shoal: ` line on stderr (log lines written
/// before the failure may precede it).
fn one_line_stderr(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("shoal: "))
        .collect();
    assert_eq!(errors.len(), 1, "stderr: {stderr}");
    errors[0].to_owned()
}

#[test]
fn unknown_config_key_exits_2_naming_it() {
    let output = node_start(
        "node_id = \"n1\"\ndata_dir = \"d\"\ntls_dir = \"t\"\nlisten_addr = \"127.0.0.1:7100\"\n",
    );
    assert_eq!(output.status.code(), Some(2));
    let stderr = one_line_stderr(&output);
    assert!(stderr.contains("listen_addr"), "{stderr}");
}

#[test]
fn bad_config_value_exits_2_naming_the_key() {
    let output = node_start("node_id = \"n1\"\ndata_dir = \"d\"\ntls_dir = \"t\"\nadmin = 7200\n");
    assert_eq!(output.status.code(), Some(2));
    let stderr = one_line_stderr(&output);
    assert!(stderr.contains("`admin`"), "{stderr}");

    let output = node_start("node_id = \"not valid!\"\ndata_dir = \"d\"\ntls_dir = \"t\"\n");
    assert_eq!(output.status.code(), Some(2));
    let stderr = one_line_stderr(&output);
    assert!(stderr.contains("`node_id`"), "{stderr}");
}

#[test]
fn missing_certificates_exit_2_and_bad_flag_is_a_usage_error() {
    let output = node_start("node_id = \"n1\"\ndata_dir = \"d\"\ntls_dir = \"nowhere\"\n");
    assert_eq!(output.status.code(), Some(2));
    one_line_stderr(&output);

    let output = Command::new(shoal_bin())
        .args([
            "node",
            "start",
            "--node-id",
            "n1",
            "--seeds",
            "127.0.0.1:1,nope",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--seeds"));
}

/// The issue's operator story without data commands: a 3-node dev cluster forms; one node
/// is killed with SIGKILL by pid, the others declare it dead; it is started again by hand
/// from its config and data directory and every node sees it up again; SIGTERM stops it
/// gracefully (exit 0, peers see it leave).
#[test]
fn dev_cluster_forms_survives_kill_9_restarts_and_stops_gracefully() {
    let cluster = DevCluster::start(3);
    cluster.wait_formed(1, MEMBERSHIP_TIMEOUT);

    let pid = cluster.pid("n2").expect("n2 runs");
    send_signal(pid, libc::SIGKILL);
    wait_until("n2's process to be gone", STOP_TIMEOUT, || !alive(pid));
    wait_until("n1 and n3 to declare n2 dead", MEMBERSHIP_TIMEOUT, || {
        cluster.membership_lines("n1", "dead", "n2") >= 1
            && cluster.membership_lines("n3", "dead", "n2") >= 1
    });

    let mut n2 = cluster.start_node("n2");
    wait_until("n1 and n3 to see n2 up again", MEMBERSHIP_TIMEOUT, || {
        cluster.membership_lines("n1", "up", "n2") >= 2
            && cluster.membership_lines("n3", "up", "n2") >= 2
    });
    wait_until(
        "the restarted n2 to see n1 and n3",
        MEMBERSHIP_TIMEOUT,
        || {
            cluster.membership_lines("n2", "up", "n1") >= 2
                && cluster.membership_lines("n2", "up", "n3") >= 2
        },
    );
    let log = cluster.log("n2");
    assert_eq!(log.matches("node started").count(), 2, "{log}");

    n2.signal(libc::SIGTERM);
    let status = n2.wait_exit(STOP_TIMEOUT);
    assert_eq!(status.code(), Some(0), "{}", cluster.log("n2"));
    assert!(cluster.log("n2").contains("stopped"));
    wait_until("n1 to see n2 leave", MEMBERSHIP_TIMEOUT, || {
        cluster.membership_lines("n1", "left", "n2") >= 1
    });
    // A graceful leave is never mistaken for a failure.
    assert_eq!(cluster.membership_lines("n1", "dead", "n2"), 1);
}

/// SIGTERM to dev-cluster stops every node (exit 0); a second run on the same directory
/// starts the same cluster (same certificates, same data directories).
#[test]
fn dev_cluster_stops_on_sigterm_and_restarts_from_its_directory() {
    let mut cluster = DevCluster::start(3);
    cluster.wait_formed(1, MEMBERSHIP_TIMEOUT);
    let ca = std::fs::read(cluster.dir().join("tls/ca.pem")).unwrap();
    let pids: Vec<i32> = cluster
        .nodes()
        .iter()
        .map(|n| cluster.pid(n).expect("node runs"))
        .collect();

    let status = cluster.stop(Duration::from_secs(60));
    assert_eq!(status.code(), Some(0), "{}", cluster.output());
    for pid in pids {
        assert!(!alive(pid), "node pid {pid} still running");
    }
    for node in cluster.nodes() {
        let log = cluster.log(node);
        assert!(
            log.contains("stopped"),
            "{node} did not stop gracefully:\n{log}"
        );
    }

    cluster.run_supervisor();
    assert!(cluster.output().contains("restarting the cluster"));
    assert_eq!(std::fs::read(cluster.dir().join("tls/ca.pem")).unwrap(), ca);
    cluster.wait_formed(2, MEMBERSHIP_TIMEOUT);
    for node in cluster.nodes() {
        assert!(cluster.pid(node).is_some(), "{node} runs again");
    }
}

/// A real node's admin endpoint: `/health` is 200, and `/metrics` counts requests and
/// latencies, and grows its store figures, after data commands.
#[test]
fn admin_endpoint_reports_health_and_metrics_that_move() {
    let cluster = DevCluster::start(1);
    let admin = cluster.admin(0);
    let mut health = (0, String::new());
    wait_until("/health to answer 200", MEMBERSHIP_TIMEOUT, || {
        health = http_get(admin, "/health").unwrap_or((0, String::new()));
        health.0 == 200
    });
    assert_eq!(health.1, "ok\n");
    let (status, before) = http_get(admin, "/metrics").unwrap();
    assert_eq!(status, 200);
    let updates = r#"shoal_requests_total{op="update",outcome="ok"}"#;
    let latency = r#"shoal_request_duration_seconds_count{op="update"}"#;
    assert_eq!(metric_sample(&before, updates), None);
    for i in 0..3 {
        let out = Command::new(shoal_bin())
            .args(["counter", "incr", &format!("k{i}"), "--w", "1", "--cluster"])
            .arg(cluster.dir())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (_, after) = http_get(admin, "/metrics").unwrap();
    assert_eq!(metric_sample(&after, updates), Some(3.0), "{after}");
    assert_eq!(metric_sample(&after, latency), Some(3.0), "{after}");
    assert!(
        metric_sample(&after, "shoal_store_keys").unwrap_or(0.0) >= 1.0,
        "{after}"
    );
    assert!(
        metric_sample(&after, "shoal_store_bytes").unwrap_or(0.0) > 0.0,
        "{after}"
    );
    assert_eq!(
        metric_sample(&after, r#"shoal_members{state="alive"}"#),
        Some(1.0)
    );
}
