//! The chaos scenarios: each starts a dev cluster in a fresh network namespace, runs a
//! workload while a nemesis injects its faults for `duration`, then heals everything, waits
//! for a quiet, converged cluster, reads every key from every replica and checks the history
//! ([`crate::chaos`]). CI runs each for a short `duration`; `scripts/chaos` runs them long.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::chaos::{
    History, Netns, Rng, RunningWorkload, Workload, WorkloadConfig, check_counters, check_sets,
    final_reads,
};
use crate::process::{Process, alive, send_signal};
use crate::{DevCluster, wait_until};

/// Every scenario, by name.
pub const SCENARIOS: &[&str] = &[
    "rolling-partitions",
    "partitions-and-kills",
    "fallback-killed-before-heal",
    "both-sides-write",
    "wiped-replica",
    "crash-one-after-another",
    "paused-node",
];

/// How long the cluster gets to converge after the faults stop (hints delivered, anti-entropy
/// round, every replica equal).
const QUIET_LIMIT: Duration = Duration::from_secs(240);
const FORM_LIMIT: Duration = Duration::from_secs(120);

/// What a run did.
#[derive(Debug)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// Seed of the nemesis choices.
    pub seed: u64,
    /// Time with faults.
    pub duration: Duration,
    /// Operations: acknowledged, failed, unknown.
    pub ops: (usize, usize, usize),
    /// Faults injected.
    pub faults: usize,
    /// Time from heal to a converged cluster.
    pub converged_after: Duration,
    /// Checker violations (empty: the run passed).
    pub problems: Vec<String>,
}

/// The cluster under test: the dev cluster, its namespace, and the nodes the nemesis
/// restarted by hand (owned here and killed by pid on drop).
struct Chaos {
    cluster: DevCluster,
    ns: Netns,
    restarted: BTreeMap<String, Process>,
    paused: Vec<i32>,
    rng: Rng,
    faults: usize,
}

impl Chaos {
    fn pid(&self, node: &str) -> Option<i32> {
        match self.restarted.get(node) {
            Some(p) => alive(p.pid()).then(|| p.pid()),
            None => self.cluster.pid(node),
        }
    }

    fn kill(&mut self, node: &str) {
        if let Some(pid) = self.pid(node) {
            send_signal(pid, libc::SIGKILL);
            wait_until("a killed node to be gone", Duration::from_secs(20), || {
                !alive(pid)
            });
            self.faults += 1;
        }
    }

    fn restart(&mut self, node: &str) {
        if self.pid(node).is_none() {
            let process = self.cluster.start_node(node);
            self.restarted.insert(node.to_owned(), process);
        }
    }

    fn pause(&mut self, node: &str) {
        if let Some(pid) = self.pid(node) {
            send_signal(pid, libc::SIGSTOP);
            self.paused.push(pid);
            self.faults += 1;
        }
    }

    fn resume_all(&mut self) {
        for pid in self.paused.drain(..) {
            send_signal(pid, libc::SIGCONT);
        }
    }

    fn node(&mut self) -> String {
        let nodes = self.cluster.nodes();
        nodes[self.rng.below(nodes.len() as u64) as usize].clone()
    }

    fn port(&self, node: &str) -> u16 {
        let i = self
            .cluster
            .nodes()
            .iter()
            .position(|n| n == node)
            .expect("a node of the cluster");
        self.cluster.ports()[i]
    }

    /// Cuts `side` off from the other nodes.
    fn partition(&mut self, side: &[String]) {
        let ports = self.cluster.ports();
        let a: Vec<u16> = side.iter().map(|n| self.port(n)).collect();
        let b: Vec<u16> = ports.into_iter().filter(|p| !a.contains(p)).collect();
        self.ns.partition(&a, &b);
        self.faults += 1;
    }

    fn sleep(&mut self, lo: Duration, hi: Duration) {
        std::thread::sleep(self.rng.between(lo, hi));
    }

    /// Heals every fault: rules flushed, paused nodes resumed, dead nodes restarted.
    fn heal(&mut self) {
        self.ns.heal();
        self.resume_all();
        for node in self.cluster.nodes().to_vec() {
            self.restart(&node);
        }
    }
}

impl Drop for Chaos {
    fn drop(&mut self) {
        self.resume_all();
        // Restarted nodes are `Process`es: killed by pid when dropped; the dev cluster kills
        // its own. The namespace is deleted after them (field order).
    }
}

/// Runs scenario `name` with faults for `duration`, nemesis choices from `seed`.
pub fn run(name: &str, seed: u64, duration: Duration) -> Result<Report, String> {
    let (nodes, workload) = match name {
        "rolling-partitions" | "paused-node" => (3, Workload::SetAdds),
        "partitions-and-kills" | "crash-one-after-another" | "wiped-replica" => {
            (3, Workload::Counters)
        }
        "fallback-killed-before-heal" | "both-sides-write" => (5, Workload::SetAdds),
        other => return Err(format!("no scenario {other:?}; one of {SCENARIOS:?}")),
    };
    println!("chaos: scenario {name}, seed {seed}, {duration:?} of faults, {nodes} nodes");
    let ns = Netns::create()?;
    let cluster = DevCluster::start_in(nodes, Some(ns.name()));
    cluster.wait_formed(1, FORM_LIMIT);
    let mut chaos = Chaos {
        cluster,
        ns,
        restarted: BTreeMap::new(),
        paused: Vec::new(),
        rng: Rng::new(seed),
        faults: 0,
    };
    let keys = 8;
    let config = WorkloadConfig {
        workload,
        keys,
        writers: 4,
        pause: Duration::from_millis(20),
        max_ops: 1_000_000,
        timeout: Duration::from_secs(3),
    };
    let writing = RunningWorkload::start(
        &chaos.ns,
        &chaos.cluster,
        config,
        duration + Duration::from_secs(30),
    );
    let started = Instant::now();
    nemesis(name, &mut chaos, started, duration);
    let history = writing.stop()?;
    chaos.heal();
    let healed = Instant::now();
    let converged = wait_converged(&chaos.cluster, workload, keys);
    let converged_after = healed.elapsed();
    let reads = final_reads(&chaos.cluster, workload, keys);
    let mut problems = match workload {
        Workload::SetAdds => check_sets(&history, &reads),
        Workload::Counters => check_counters(&history, &reads),
    };
    if let Err(e) = converged {
        problems.insert(0, e);
    }
    let report = Report {
        scenario: name.to_owned(),
        seed,
        duration,
        ops: history.counts(),
        faults: chaos.faults,
        converged_after,
        problems,
    };
    print_report(&report, &history);
    Ok(report)
}

fn print_report(report: &Report, history: &History) {
    let (ok, fail, unknown) = report.ops;
    println!(
        "chaos: {} seed {}: {} ops ({ok} ok, {fail} failed, {unknown} unknown), {} faults, converged {:.1}s after heal, {}",
        report.scenario,
        report.seed,
        history.ops.len(),
        report.faults,
        report.converged_after.as_secs_f64(),
        if report.problems.is_empty() {
            "PASS".to_owned()
        } else {
            format!("FAIL: {:?}", report.problems)
        }
    );
    for (error, count) in history.top_errors(5) {
        println!("chaos:   {count} × {error}");
    }
}

/// Waits until every node is alive and on one ring, no hints are held, and every key's
/// replicas agree.
fn wait_converged(cluster: &DevCluster, workload: Workload, keys: usize) -> Result<(), String> {
    let deadline = Instant::now() + QUIET_LIMIT;
    loop {
        let status = cluster.shoal_json_result(&["cluster", "status"]);
        let settled = status.as_ref().is_ok_and(|s| {
            s["converged"] == true
                && s["hint_backlog_keys"] == 0
                && s["members"]
                    .as_array()
                    .is_some_and(|m| m.iter().all(|m| m["state"] == "alive"))
        });
        if settled
            && final_reads(cluster, workload, keys)
                .iter()
                .all(|r| r.consistent)
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "not converged {QUIET_LIMIT:?} after the heal; last status: {status:?}"
            ));
        }
        // Polled often so the report's time to converge is not rounded up to whole seconds.
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Injects `name`'s faults until `duration` has passed since `started`.
fn nemesis(name: &str, chaos: &mut Chaos, started: Instant, duration: Duration) {
    let short = Duration::from_secs(1);
    while started.elapsed() < duration {
        match name {
            "rolling-partitions" => {
                let node = chaos.node();
                chaos.partition(&[node]);
                chaos.sleep(2 * short, 5 * short);
                chaos.ns.heal();
                chaos.sleep(short, 3 * short);
            }
            "partitions-and-kills" => {
                let choice = chaos.rng.below(3);
                if choice == 0 {
                    let node = chaos.node();
                    chaos.partition(&[node]);
                    chaos.sleep(2 * short, 5 * short);
                    chaos.ns.heal();
                } else if choice == 1 {
                    // Random loss on every node port: 10 to 30 % of packets dropped.
                    let p = 0.1 + 0.2 * (chaos.rng.below(1000) as f64 / 1000.0);
                    let ports = chaos.cluster.ports();
                    chaos.ns.loss(&ports, p);
                    chaos.faults += 1;
                    chaos.sleep(3 * short, 6 * short);
                    chaos.ns.heal();
                } else {
                    let node = chaos.node();
                    chaos.kill(&node);
                    chaos.sleep(2 * short, 5 * short);
                    chaos.restart(&node);
                }
                chaos.sleep(short, 3 * short);
            }
            "fallback-killed-before-heal" => {
                // A primary dies; fallbacks take its writes as hints; one of them dies before
                // the primary is back; then the primary, then the fallback, return.
                let primary = chaos.node();
                chaos.kill(&primary);
                chaos.sleep(3 * short, 6 * short);
                let mut fallback = chaos.node();
                while fallback == primary {
                    fallback = chaos.node();
                }
                chaos.kill(&fallback);
                chaos.sleep(short, 3 * short);
                chaos.restart(&primary);
                chaos.sleep(short, 3 * short);
                chaos.restart(&fallback);
                chaos.sleep(2 * short, 4 * short);
            }
            "both-sides-write" => {
                let nodes = chaos.cluster.nodes().to_vec();
                let cut = 1 + chaos.rng.below(nodes.len() as u64 - 1) as usize;
                chaos.partition(&nodes[..cut]);
                chaos.sleep(4 * short, 8 * short);
                chaos.ns.heal();
                chaos.sleep(2 * short, 4 * short);
            }
            "wiped-replica" => {
                let node = chaos.node();
                chaos.kill(&node);
                let data = chaos.cluster.dir().join(&node).join("data");
                let _ = std::fs::remove_dir_all(&data);
                chaos.sleep(short, 3 * short);
                chaos.restart(&node);
                chaos.sleep(4 * short, 8 * short);
            }
            "crash-one-after-another" => {
                for node in chaos.cluster.nodes().to_vec() {
                    chaos.kill(&node);
                    chaos.sleep(short, 2 * short);
                    chaos.restart(&node);
                    chaos.sleep(short / 2, short);
                }
                chaos.sleep(2 * short, 4 * short);
            }
            "paused-node" => {
                let node = chaos.node();
                chaos.pause(&node);
                // 5 to 30 s, cut to what is left of the run.
                let left = duration.saturating_sub(started.elapsed()).max(5 * short);
                let pause = chaos.rng.between(5 * short, (30 * short).min(left));
                std::thread::sleep(pause);
                chaos.resume_all();
                chaos.sleep(2 * short, 4 * short);
            }
            _ => unreachable!("checked in run"),
        }
    }
}
