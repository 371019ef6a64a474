//! The chaos scenarios, short: each runs real nodes in a network namespace of its own with
//! its faults for a few seconds, then heals and checks its history (see
//! `shoal_tests::scenarios`). The seed is printed; set `SHOAL_CHAOS_SEED` to replay one.
//! `scripts/chaos` runs them long.

use std::time::Duration;

use shoal_tests::scenarios;

/// Faults per scenario in CI.
const SHORT: Duration = Duration::from_secs(15);

fn seed() -> u64 {
    std::env::var("SHOAL_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        })
}

/// One scenario at a time: each runs 3 to 5 nodes, and the machine may have 2 cores.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn run(name: &str) {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let seed = seed();
    let report = scenarios::run(name, seed, SHORT).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert!(
        report.ops.0 > 0,
        "{name} (seed {seed}): no operation was acknowledged"
    );
    assert!(
        report.faults > 0,
        "{name} (seed {seed}): no fault was injected"
    );
    assert!(
        report.problems.is_empty(),
        "{name} (seed {seed}) failed its checks: {:#?}",
        report.problems
    );
}

#[test]
fn rolling_partitions_under_set_adds() {
    run("rolling-partitions");
}

#[test]
fn partitions_and_kill_9_under_counter_increments() {
    run("partitions-and-kills");
}

#[test]
fn writes_through_fallbacks_then_the_fallback_killed_before_heal() {
    run("fallback-killed-before-heal");
}

#[test]
fn both_sides_of_a_partition_writing() {
    run("both-sides-write");
}

#[test]
fn one_replica_wiped_then_restarted() {
    run("wiped-replica");
}

#[test]
fn nodes_crashed_one_after_another_before_repair_finishes() {
    run("crash-one-after-another");
}

#[test]
fn a_node_paused() {
    run("paused-node");
}
