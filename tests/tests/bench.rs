//! `shoal bench` against a real one-node dev cluster: the load and measured phases run, stop by
//! themselves, and report acknowledged operations, latencies and zero errors in `--json`; a bad
//! flag exits 2.

use std::process::Command;

use shoal_tests::{DevCluster, shoal_bin};

#[test]
fn bench_runs_a_bounded_workload_and_reports_json() {
    let cluster = DevCluster::start(1);
    // One node and N = 3 by default: quorums of 1.
    let report = cluster.shoal_json(&[
        "bench",
        "--workload",
        "a",
        "--duration",
        "2s",
        "--keys",
        "100",
        "--load",
        "--r",
        "1",
        "--w",
        "1",
        "--concurrency",
        "4",
    ]);
    assert_eq!(report["workload"], "a");
    let load = &report["load"];
    assert_eq!(load["ops"], 100, "{report}");
    assert_eq!(load["ok"], 100, "{report}");
    let run = &report["run"];
    assert!(run["ok"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(run["errors"]["total"], 0, "{report}");
    assert!(run["throughput"].as_f64().unwrap() > 0.0, "{report}");
    let seconds = run["seconds"].as_f64().unwrap();
    assert!((2.0..10.0).contains(&seconds), "{report}");
    let latency = &run["latency_us"];
    assert!(latency["p50"].as_u64().unwrap() <= latency["p99"].as_u64().unwrap());
    assert!(latency["p99"].as_u64().unwrap() <= latency["max"].as_u64().unwrap());
    assert!(run["by_op"]["read"]["ok"].as_u64().unwrap() > 0, "{report}");
    assert!(
        run["by_op"]["update"]["ok"].as_u64().unwrap() > 0,
        "{report}"
    );
    assert!(report["warmup"].is_null());

    let bad = Command::new(shoal_bin())
        .args(["bench", "--concurrency", "0", "--cluster"])
        .arg(cluster.dir())
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("--concurrency"), "{stderr}");
}
