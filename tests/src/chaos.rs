//! The chaos harness: real `shoal` processes in a network namespace of their own, nemeses that
//! kill, pause, partition and drop packets, workloads that record Jepsen-style histories, and
//! checkers for them.
//!
//! - [`Netns`] creates `shoal-chaos-<pid>-<n>` (loopback up) and deletes it on drop. Faults are
//!   `iptables` rules inside it on the nodes' UDP ports (each node has one port for peers and
//!   clients), so a partition cuts node-to-node traffic while the test's client still reaches
//!   every node, as a client on either side of a real partition would. Random loss uses
//!   iptables' `statistic` match (this kernel has no `tc netem`; delay and reordering are
//!   exercised by the in-memory transport's simulations instead).
//! - The workload runs the SDK on a thread that entered the namespace (`setns`), so its
//!   sockets live there. Every operation is recorded as invoked, then ok, fail or unknown.
//! - Checkers: for sets, no acknowledged add is lost and no element appears that was never
//!   added; for counters, the final value is the acknowledged sum plus some subset of the
//!   unknown-outcome increments. Both also require every replica to hold the same state
//!   (`shoal key-info --json`, which reads each replica's own store).
//!
//! Every run is bounded in time and operations, prints its seed, and cleans up its processes
//! (by pid, through [`DevCluster`]) and its namespace.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shoal_client::identity::ClientName;
use shoal_client::tls::TlsMaterial;
use shoal_client::{Client, ClientConfig, Outcome};

use crate::DevCluster;

static NEXT_NETNS: AtomicU32 = AtomicU32::new(0);

/// A network namespace with loopback up, deleted on drop.
pub struct Netns {
    name: String,
}

fn run(command: &mut Command) -> Result<(), String> {
    let output = command.output().map_err(|e| format!("{command:?}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{command:?} exited {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

impl Netns {
    /// Creates a fresh namespace. Errors if `ip netns` is unavailable (not root, no
    /// iproute2): run `scripts/setup` as root.
    pub fn create() -> Result<Self, String> {
        let name = format!(
            "shoal-chaos-{}-{}",
            std::process::id(),
            NEXT_NETNS.fetch_add(1, Ordering::Relaxed)
        );
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Self { name };
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        // iptables must work inside it (module loaded, binary present).
        ns.exec(&["iptables", "-L", "INPUT", "-n"])?;
        Ok(ns)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `args` inside the namespace.
    pub fn exec(&self, args: &[&str]) -> Result<(), String> {
        run(Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args))
    }

    fn iptables(&self, rule: &[&str]) {
        let mut args = vec!["iptables", "-w"];
        args.extend_from_slice(rule);
        self.exec(&args).expect("iptables rule");
    }

    /// Drops every UDP packet from any of `a` to any of `b` and back (node ports).
    pub fn partition(&self, a: &[u16], b: &[u16]) {
        for &x in a {
            for &y in b {
                for (from, to) in [(x, y), (y, x)] {
                    self.iptables(&[
                        "-A",
                        "INPUT",
                        "-p",
                        "udp",
                        "--sport",
                        &from.to_string(),
                        "--dport",
                        &to.to_string(),
                        "-j",
                        "DROP",
                    ]);
                }
            }
        }
    }

    /// Drops each packet to any of `ports` with probability `p`.
    pub fn loss(&self, ports: &[u16], p: f64) {
        for port in ports {
            self.iptables(&[
                "-A",
                "INPUT",
                "-p",
                "udp",
                "--dport",
                &port.to_string(),
                "-m",
                "statistic",
                "--mode",
                "random",
                "--probability",
                &format!("{p:.3}"),
                "-j",
                "DROP",
            ]);
        }
    }

    /// Removes every fault rule.
    pub fn heal(&self) {
        self.iptables(&["-F", "INPUT"]);
    }

    /// Runs `f` on a thread inside the namespace (sockets it creates live there).
    pub fn spawn<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> std::thread::JoinHandle<R> {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            // SAFETY: setns on a valid namespace fd affects only this thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
            f()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run(Command::new("ip").args(["netns", "del", &self.name]));
    }
}

/// A small, seeded random source for nemesis choices (xorshift; reproducible from the seed).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// From a seed (0 is replaced by a fixed odd constant).
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// A duration between `lo` and `hi`.
    pub fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        let span = hi.saturating_sub(lo).as_millis() as u64;
        lo + Duration::from_millis(self.below(span + 1))
    }
}

/// What the workload writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Unique elements added to set keys.
    SetAdds,
    /// Increments of 1 on counter keys.
    Counters,
}

/// One operation's end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpResult {
    /// Acknowledged.
    Ok,
    /// Failed with no effect.
    Fail,
    /// May or may not have taken effect.
    Unknown,
}

/// One operation: the key index, the element (sets) and how it ended.
#[derive(Clone, Debug)]
pub struct Op {
    /// Index of the key written.
    pub key: usize,
    /// The element added (sets) or `1` (counters).
    pub value: String,
    /// When it was invoked, from the start of the run.
    pub invoked: Duration,
    /// How it ended.
    pub result: OpResult,
}

/// A workload's history.
#[derive(Clone, Debug, Default)]
pub struct History {
    /// Every operation, in invocation order.
    pub ops: Vec<Op>,
    /// How the operations that did not succeed ended: "failed: " or "unknown: " and the
    /// client's error with each run of digits replaced by `#`, and how many ended so.
    pub errors: std::collections::BTreeMap<String, usize>,
}

impl History {
    /// The most frequent entries of [`errors`](Self::errors), most frequent first.
    pub fn top_errors(&self, n: usize) -> Vec<(&str, usize)> {
        let mut all: Vec<_> = self.errors.iter().map(|(e, c)| (e.as_str(), *c)).collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        all.truncate(n);
        all
    }

    /// Operations by result: (ok, fail, unknown).
    pub fn counts(&self) -> (usize, usize, usize) {
        let count = |r| self.ops.iter().filter(|o| o.result == r).count();
        (
            count(OpResult::Ok),
            count(OpResult::Fail),
            count(OpResult::Unknown),
        )
    }
}

/// `outcome` and `error`'s message with each run of digits replaced by one `#`, so that
/// errors that differ only in addresses, times and counts are counted together.
fn error_kind(outcome: &str, error: &impl std::fmt::Display) -> String {
    let mut kind = format!("{outcome}: ");
    for c in error.to_string().chars() {
        if !c.is_ascii_digit() {
            kind.push(c);
        } else if !kind.ends_with('#') {
            kind.push('#');
        }
    }
    kind
}

/// Settings of a workload run.
#[derive(Clone, Debug)]
pub struct WorkloadConfig {
    /// What to write.
    pub workload: Workload,
    /// Keys written.
    pub keys: usize,
    /// Concurrent writers.
    pub writers: usize,
    /// Pause between one writer's operations.
    pub pause: Duration,
    /// At most this many operations in all.
    pub max_ops: usize,
    /// Each operation's deadline.
    pub timeout: Duration,
}

/// Key name of index `i` for `workload`.
pub fn key_name(workload: Workload, i: usize) -> String {
    match workload {
        Workload::SetAdds => format!("chaos-set-{i}"),
        Workload::Counters => format!("chaos-counter-{i}"),
    }
}

/// A running workload; [`stop`](Self::stop) ends it and returns its history.
pub struct RunningWorkload {
    stop: Arc<AtomicBool>,
    history: Arc<Mutex<History>>,
    thread: Option<std::thread::JoinHandle<Result<(), String>>>,
}

impl RunningWorkload {
    /// Starts `config`'s writers against `cluster` from inside `ns`; they stop by themselves
    /// after `config.max_ops` operations or `limit`.
    pub fn start(
        ns: &Netns,
        cluster: &DevCluster,
        config: WorkloadConfig,
        limit: Duration,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let history = Arc::new(Mutex::new(History::default()));
        let seeds = cluster.seeds();
        let tls_dir = cluster.dir().join("tls");
        let (stop2, history2) = (stop.clone(), history.clone());
        let thread = ns.spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(async move {
                let tls = TlsMaterial::load_client(&tls_dir, &ClientName::new("dev").unwrap())
                    .map_err(|e| e.to_string())?;
                // A loaded machine may miss the first ring fetch's short timeout: try again
                // for a minute before calling the run broken.
                let connect_until = Instant::now() + Duration::from_secs(60);
                let client = loop {
                    let built = Client::builder()
                        .seeds(seeds.clone())
                        .tls(tls.clone())
                        .config(ClientConfig {
                            timeout: config.timeout,
                            ..ClientConfig::default()
                        })
                        .build()
                        .await;
                    match built {
                        Ok(client) => break client,
                        Err(e) if Instant::now() >= connect_until => return Err(e.to_string()),
                        Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
                    }
                };
                let started = Instant::now();
                let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
                let mut writers = Vec::new();
                for _ in 0..config.writers.max(1) {
                    let (client, config, next) = (client.clone(), config.clone(), next.clone());
                    let (stop, history) = (stop2.clone(), history2.clone());
                    writers.push(tokio::spawn(async move {
                        loop {
                            if stop.load(Ordering::SeqCst) || started.elapsed() >= limit {
                                return;
                            }
                            let n = next.fetch_add(1, Ordering::SeqCst);
                            if n >= config.max_ops {
                                return;
                            }
                            let key = n % config.keys.max(1);
                            let name = key_name(config.workload, key);
                            let invoked = started.elapsed();
                            let (value, result) = match config.workload {
                                Workload::SetAdds => {
                                    let element = format!("e{n}");
                                    let r = client.set(name).add([element.clone()]).await;
                                    (element, r.map(|_| ()))
                                }
                                Workload::Counters => {
                                    let r = client.counter(name).incr(1).await;
                                    ("1".to_owned(), r.map(|_| ()))
                                }
                            };
                            let (result, error) = match result {
                                Ok(()) => (OpResult::Ok, None),
                                Err(e) if e.outcome() == Outcome::Unknown => {
                                    (OpResult::Unknown, Some(error_kind("unknown", &e)))
                                }
                                Err(e) => (OpResult::Fail, Some(error_kind("failed", &e))),
                            };
                            {
                                let mut history = history.lock().unwrap();
                                if let Some(error) = error {
                                    *history.errors.entry(error).or_default() += 1;
                                }
                                history.ops.push(Op {
                                    key,
                                    value,
                                    invoked,
                                    result,
                                });
                            }
                            tokio::time::sleep(config.pause).await;
                        }
                    }));
                }
                for writer in writers {
                    writer.await.map_err(|e| e.to_string())?;
                }
                Ok(())
            })
        });
        Self {
            stop,
            history,
            thread: Some(thread),
        }
    }

    /// Operations recorded so far: (ok, fail, unknown).
    pub fn counts(&self) -> (usize, usize, usize) {
        self.history.lock().unwrap().counts()
    }

    /// Stops the writers (each finishes its operation in flight) and returns the history.
    pub fn stop(mut self) -> Result<History, String> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            thread
                .join()
                .map_err(|_| "workload thread panicked".to_owned())??;
        }
        let mut history = self.history.lock().unwrap().clone();
        history.ops.sort_by_key(|o| o.invoked);
        Ok(history)
    }
}

impl Drop for RunningWorkload {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// The final state of one key: each replica's value, as `shoal key-info --json` read it from
/// that replica's store.
#[derive(Clone, Debug)]
pub struct FinalRead {
    /// Key index.
    pub key: usize,
    /// Per replica (node id), its value as JSON (`null` if absent).
    pub replicas: BTreeMap<String, serde_json::Value>,
    /// Whether every replica answered with the same digest.
    pub consistent: bool,
}

/// Reads every written key from every replica.
pub fn final_reads(cluster: &DevCluster, workload: Workload, keys: usize) -> Vec<FinalRead> {
    (0..keys)
        .map(|key| {
            let info = cluster.shoal_json(&["key-info", &key_name(workload, key)]);
            let replicas = info["replicas"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| {
                    (
                        r["node_id"].as_str().unwrap_or("?").to_owned(),
                        r["value"].clone(),
                    )
                })
                .collect();
            FinalRead {
                key,
                replicas,
                consistent: info["consistent"] == true,
            }
        })
        .collect()
}

fn check_consistent(read: &FinalRead, problems: &mut Vec<String>) {
    if !read.consistent {
        problems.push(format!(
            "key {}: replicas differ: {:?}",
            read.key, read.replicas
        ));
    }
}

/// Checks a set-adds history against the final reads: every replica equal, no acknowledged
/// add lost, no element that was never added or whose add failed. Returns every violation found.
pub fn check_sets(history: &History, reads: &[FinalRead]) -> Vec<String> {
    let mut problems = Vec::new();
    for read in reads {
        check_consistent(read, &mut problems);
        // A failed add took effect nowhere, so only acknowledged and unknown ones may show.
        let attempted: BTreeSet<&str> = history
            .ops
            .iter()
            .filter(|o| o.key == read.key && o.result != OpResult::Fail)
            .map(|o| o.value.as_str())
            .collect();
        let acked: BTreeSet<&str> = history
            .ops
            .iter()
            .filter(|o| o.key == read.key && o.result == OpResult::Ok)
            .map(|o| o.value.as_str())
            .collect();
        for (node, value) in &read.replicas {
            let members: BTreeSet<&str> = value
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str())
                .collect();
            let lost: Vec<_> = acked.difference(&members).collect();
            if !lost.is_empty() {
                problems.push(format!(
                    "key {} on {node}: acknowledged adds lost: {lost:?}",
                    read.key
                ));
            }
            let invented: Vec<_> = members.difference(&attempted).collect();
            if !invented.is_empty() {
                problems.push(format!(
                    "key {} on {node}: elements never added (or whose add failed): {invented:?}",
                    read.key
                ));
            }
        }
    }
    problems
}

/// Checks a counter history against the final reads: every replica equal, and each value is
/// the acknowledged sum plus at most the unknown-outcome increments.
pub fn check_counters(history: &History, reads: &[FinalRead]) -> Vec<String> {
    let mut problems = Vec::new();
    for read in reads {
        check_consistent(read, &mut problems);
        let sum = |result| {
            history
                .ops
                .iter()
                .filter(|o| o.key == read.key && o.result == result)
                .count() as i64
        };
        let (acked, unknown) = (sum(OpResult::Ok), sum(OpResult::Unknown));
        for (node, value) in &read.replicas {
            let got = value.as_i64().unwrap_or(0);
            if got < acked || got > acked + unknown {
                problems.push(format!(
                    "key {} on {node}: value {got}, expected {acked} acknowledged + up to {unknown} unknown",
                    read.key
                ));
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(key: usize, value: &str, result: OpResult) -> Op {
        Op {
            key,
            value: value.into(),
            invoked: Duration::ZERO,
            result,
        }
    }

    fn read(key: usize, values: &[serde_json::Value], consistent: bool) -> FinalRead {
        FinalRead {
            key,
            replicas: values
                .iter()
                .enumerate()
                .map(|(i, v)| (format!("n{i}"), v.clone()))
                .collect(),
            consistent,
        }
    }

    #[test]
    fn errors_differing_only_in_numbers_count_together() {
        let mut history = History::default();
        for e in [
            "no answer within 5s from 127.0.0.1:7",
            "no answer within 20s from 127.0.0.2:8",
        ] {
            *history.errors.entry(error_kind("unknown", &e)).or_default() += 1;
        }
        *history
            .errors
            .entry(error_kind("failed", &"refused"))
            .or_default() += 1;
        assert_eq!(
            history.top_errors(5),
            vec![
                ("unknown: no answer within #s from #.#.#.#:#", 2),
                ("failed: refused", 1)
            ]
        );
        assert_eq!(history.top_errors(1).len(), 1);
    }

    #[test]
    fn set_checker_finds_lost_invented_and_divergent() {
        let history = History {
            ops: vec![
                op(0, "a", OpResult::Ok),
                op(0, "b", OpResult::Unknown),
                op(0, "c", OpResult::Fail),
            ],
            ..History::default()
        };
        let good = read(
            0,
            &[serde_json::json!(["a", "b"]), serde_json::json!(["a", "b"])],
            true,
        );
        assert!(check_sets(&history, &[good]).is_empty());
        // A failed add took effect nowhere: seeing it is a violation too.
        let with_failed = read(0, &[serde_json::json!(["a", "c"])], true);
        assert_eq!(check_sets(&history, &[with_failed]).len(), 1);
        let lost = read(0, &[serde_json::json!(["b"])], true);
        assert_eq!(check_sets(&history, &[lost]).len(), 1);
        let invented = read(0, &[serde_json::json!(["a", "zz"])], true);
        assert_eq!(check_sets(&history, &[invented]).len(), 1);
        let divergent = read(0, &[serde_json::json!(["a"])], false);
        assert_eq!(check_sets(&history, &[divergent]).len(), 1);
    }

    #[test]
    fn counter_checker_allows_only_subsets_of_unknowns() {
        let history = History {
            ops: vec![
                op(1, "1", OpResult::Ok),
                op(1, "1", OpResult::Ok),
                op(1, "1", OpResult::Unknown),
                op(1, "1", OpResult::Fail),
            ],
            ..History::default()
        };
        for ok in [2, 3] {
            assert!(
                check_counters(&history, &[read(1, &[serde_json::json!(ok)], true)]).is_empty()
            );
        }
        for bad in [1, 4] {
            assert_eq!(
                check_counters(&history, &[read(1, &[serde_json::json!(bad)], true)]).len(),
                1
            );
        }
    }

    #[test]
    fn rng_replays_from_its_seed() {
        let (mut a, mut b) = (Rng::new(42), Rng::new(42));
        let xs: Vec<u64> = (0..5).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..5).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        assert_ne!(Rng::new(43).next_u64(), xs[0]);
        let d = Rng::new(1).between(Duration::from_secs(5), Duration::from_secs(30));
        assert!(d >= Duration::from_secs(5) && d <= Duration::from_secs(30));
    }
}
