//! Seeded multi-member simulations of SWIM + Lifeguard.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use proptest::prelude::*;
use shoal_membership::SwimConfig;
use shoal_membership::sim::{Agent, Fault, NetConfig, Observation, Sim, SwimAgent, addr_of};

fn cluster(seed: u64, n: usize, config: SwimConfig, net: NetConfig) -> Sim<SwimAgent> {
    let seeds = (0..n.min(3)).collect();
    Sim::new(seed, n, net, SwimAgent::factory(config, seeds))
}

fn live_view(sim: &Sim<SwimAgent>, i: usize) -> BTreeSet<SocketAddr> {
    sim.agent(i).expect("running").live_view()
}

fn expected_view(sim: &Sim<SwimAgent>) -> BTreeSet<SocketAddr> {
    (0..sim.len())
        .filter(|&i| sim.is_up(i))
        .map(addr_of)
        .collect()
}

fn assert_converged(sim: &Sim<SwimAgent>) {
    let expected = expected_view(sim);
    for i in (0..sim.len()).filter(|&i| sim.is_up(i)) {
        assert_eq!(
            sim.agent(i).unwrap().decode_errors,
            0,
            "member {i} got bad datagrams"
        );
        assert_eq!(
            live_view(sim, i),
            expected,
            "member {i} disagrees at {:?} (seed {})",
            sim.now(),
            sim.seed()
        );
    }
}

#[test]
fn cluster_forms_from_seeds() {
    let mut sim = cluster(1, 20, SwimConfig::for_test(), NetConfig::default());
    sim.run_for(Duration::from_secs(20));
    assert_converged(&sim);
}

#[test]
fn crashed_member_is_declared_dead_everywhere() {
    let mut sim = cluster(2, 20, SwimConfig::for_test(), NetConfig::default());
    sim.run_for(Duration::from_secs(20));
    sim.record_observations(true);
    sim.apply(Fault::Crash(7));
    sim.run_for(Duration::from_secs(60));
    assert_converged(&sim);
    let deaths = sim
        .take_observations()
        .into_iter()
        .filter(|(_, _, about, what)| *about == addr_of(7) && *what == Observation::Dead)
        .count();
    assert!(deaths >= 1);
}

#[test]
fn restarted_member_rejoins() {
    let mut sim = cluster(3, 10, SwimConfig::for_test(), NetConfig::default());
    sim.run_for(Duration::from_secs(20));
    sim.apply(Fault::Crash(5));
    sim.run_for(Duration::from_secs(60));
    assert_converged(&sim);
    sim.apply(Fault::Restart(5));
    sim.run_for(Duration::from_secs(30));
    assert_converged(&sim);
}

#[test]
fn partition_heals_into_one_view() {
    let mut sim = cluster(4, 20, SwimConfig::for_test(), NetConfig::default());
    sim.run_for(Duration::from_secs(20));
    sim.apply(Fault::Partition(vec![(0..10).collect()]));
    sim.run_for(Duration::from_secs(60));
    // Each side has declared the other dead.
    assert_eq!(live_view(&sim, 0).len(), 10);
    assert_eq!(live_view(&sim, 15).len(), 10);
    sim.apply(Fault::Heal);
    sim.run_for(Duration::from_secs(30));
    assert_converged(&sim);
}

/// Issue 3's healing target with the LAN preset: digest-first push-pull and seed retries merge
/// a 50/50 split of 100 members within two push-pull intervals.
#[test]
fn split_of_100_heals_within_two_push_pull_intervals() {
    let config = SwimConfig::lan(100);
    let bound = config.push_pull_interval * 2;
    let mut sim = cluster(12, 100, config, NetConfig::default());
    sim.run_for(Duration::from_secs(60));
    assert_converged(&sim);
    sim.apply(Fault::Partition(vec![(0..50).collect()]));
    sim.run_for(Duration::from_secs(60));
    assert_eq!(live_view(&sim, 0).len(), 50);
    sim.apply(Fault::Heal);
    let start = sim.now();
    let expected = expected_view(&sim);
    while (0..100).any(|i| live_view(&sim, i) != expected) && sim.now() - start < bound {
        sim.run_for(Duration::from_secs(1));
    }
    assert_converged(&sim);
}

#[test]
fn graceful_leave_is_seen_by_all() {
    let mut sim = cluster(5, 10, SwimConfig::for_test(), NetConfig::default());
    sim.run_for(Duration::from_secs(20));
    sim.record_observations(true);
    sim.with_agent(4, |a, now| a.leave(now));
    sim.run_for(Duration::from_secs(5));
    let lefts: BTreeSet<usize> = sim
        .take_observations()
        .into_iter()
        .filter(|(_, _, about, what)| *about == addr_of(4) && *what == Observation::Left)
        .map(|(_, observer, _, _)| observer)
        .collect();
    assert_eq!(lefts.len(), 9, "every other member saw the leave");
    sim.apply(Fault::Crash(4));
    sim.run_for(Duration::from_secs(30));
    assert_converged(&sim);
}

#[test]
fn same_seed_replays_identically() {
    let run = |seed| {
        let mut sim = cluster(
            seed,
            15,
            SwimConfig::for_test(),
            NetConfig {
                loss: 0.05,
                ..NetConfig::default()
            },
        );
        sim.record_observations(true);
        sim.run_for(Duration::from_secs(10));
        sim.apply(Fault::Crash(3));
        sim.run_for(Duration::from_secs(20));
        (sim.stats().clone(), sim.take_observations())
    };
    assert_eq!(run(9), run(9));
}

#[test]
fn no_false_deaths_under_loss() {
    let mut sim = cluster(
        6,
        30,
        SwimConfig::lan(30),
        NetConfig {
            loss: 0.10,
            ..NetConfig::default()
        },
    );
    sim.run_for(Duration::from_secs(40));
    sim.record_observations(true);
    sim.run_for(Duration::from_secs(600));
    let deaths = sim
        .take_observations()
        .into_iter()
        .filter(|o| o.3 == Observation::Dead)
        .count();
    assert_eq!(deaths, 0);
    assert_converged(&sim);
}

fn fault_strategy(n: usize) -> impl Strategy<Value = (u64, Fault)> {
    let node = 0..n;
    let fault =
        prop_oneof![
            proptest::collection::vec(0..n, 1..n).prop_map(|g| Fault::Partition(vec![g])),
            Just(Fault::Heal),
            (0.0..0.3f64).prop_map(Fault::Loss),
            (node.clone(), node.clone(), 0.0..1.0f64)
                .prop_map(|(from, to, loss)| Fault::LinkLoss { from, to, loss }),
            (node.clone(), 1u64..8).prop_map(|(node, s)| Fault::Pause {
                node,
                duration: Duration::from_secs(s)
            }),
            node.clone().prop_map(Fault::Crash),
            node.prop_map(Fault::Restart),
        ];
    (0u64..60_000, fault)
}

proptest! {
    // SHOAL_SIM_CASES=500 for a longer hunt.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("SHOAL_SIM_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(16),
        ..ProptestConfig::default()
    })]

    /// Under random faults that stop, every live member ends with the same view, and no live,
    /// connected member stays dead.
    #[test]
    fn random_faults_then_convergence(
        seed in any::<u64>(),
        n in 4usize..16,
        faults in proptest::collection::vec(fault_strategy(16), 0..12),
    ) {
        let mut sim = cluster(seed, n, SwimConfig::for_test(), NetConfig::default());
        sim.run_for(Duration::from_secs(10));
        let start = sim.now();
        let mut faults: Vec<_> = faults.into_iter().filter(|(_, f)| match f {
            Fault::LinkLoss { from, to, .. } => *from < n && *to < n,
            Fault::Pause { node, .. } | Fault::Crash(node) | Fault::Restart(node) => *node < n,
            Fault::Partition(g) => g.iter().flatten().all(|&m| m < n),
            _ => true,
        }).collect();
        faults.sort_by_key(|(at, _)| *at);
        for (at, fault) in faults {
            sim.run_until(start + Duration::from_millis(at));
            sim.apply(fault);
        }
        // Faults stop: network healed, crashed members stay down (the rest must agree on it).
        sim.run_until(start + Duration::from_secs(61));
        sim.apply(Fault::Heal);
        sim.apply(Fault::Loss(0.0));
        sim.apply(Fault::ClearLinkLoss);
        sim.run_for(Duration::from_secs(120));
        assert_converged(&sim);
    }
}

/// Lifeguard: a member that was paused does not accuse others on stale information when it
/// resumes; without Lifeguard it does.
#[test]
fn paused_member_does_not_accuse_others_with_lifeguard() {
    let suspicions = |lifeguard: bool| {
        let config = SwimConfig {
            lifeguard,
            ..SwimConfig::lan(10)
        };
        let mut sim = cluster(11, 10, config, NetConfig::default());
        sim.run_for(Duration::from_secs(30));
        sim.record_observations(true);
        for _ in 0..10 {
            sim.apply(Fault::Pause {
                node: 5,
                duration: Duration::from_secs(5),
            });
            sim.run_for(Duration::from_secs(60));
        }
        assert_converged(&sim);
        sim.take_observations()
            .into_iter()
            .filter(|o| o.2 != addr_of(5) && o.3 == Observation::Suspect)
            .count()
    };
    assert_eq!(suspicions(true), 0);
    assert!(suspicions(false) > 0);
}
