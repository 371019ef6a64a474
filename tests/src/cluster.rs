//! A `shoal dev-cluster` run by a test.

use std::fs::OpenOptions;
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use tempfile::TempDir;

use crate::process::{Process, alive, send_signal};
use crate::{shoal_bin, wait_until};

/// How long a dev cluster gets to report ready (it builds certificates; nodes wait for seeds).
pub const START_TIMEOUT: Duration = Duration::from_secs(120);

/// `shoal dev-cluster` in a temporary directory, on free loopback ports.
///
/// Dropping it kills (SIGKILL) the dev-cluster process and every node process whose pid file
/// is in its directory, then deletes the directory. Nodes started by the test through
/// [`start_node`](Self::start_node) are [`Process`]es the test owns (and kills on drop).
pub struct DevCluster {
    supervisor: Option<Process>,
    /// The network namespace every process runs in, if any.
    netns: Option<String>,
    nodes: Vec<String>,
    base_port: u16,
    readies: usize,
    dir: TempDir,
}

static NEXT_PORT_BLOCK: AtomicU16 = AtomicU16::new(0);

/// A base port with `count` free UDP ports after it, different for every call in this
/// process and likely different across test processes.
fn free_base_port(count: usize) -> u16 {
    let salt = (std::process::id() % 97) as u16;
    for _ in 0..200 {
        let block = NEXT_PORT_BLOCK.fetch_add(1, Ordering::Relaxed);
        // Blocks of 200 ports between 20000 and 59999 (QUIC at +0.., admin at +100..).
        let base = 20_000 + ((salt.wrapping_mul(13).wrapping_add(block)) % 200) * 200;
        let free = (0..count as u16).all(|i| UdpSocket::bind(("127.0.0.1", base + i)).is_ok());
        if free {
            return base;
        }
    }
    panic!("no free block of {count} UDP ports on 127.0.0.1");
}

impl DevCluster {
    /// Starts a cluster of `nodes` and waits until dev-cluster reports it ready (every node
    /// started).
    pub fn start(nodes: usize) -> Self {
        Self::start_in(nodes, None)
    }

    /// [`start`](Self::start), with every process of the cluster (and every `shoal` command
    /// the harness runs) inside the network namespace `netns`.
    pub fn start_in(nodes: usize, netns: Option<&str>) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("shoal-dev-")
            .tempdir()
            .expect("temporary directory");
        let mut cluster = Self {
            supervisor: None,
            netns: netns.map(str::to_owned),
            nodes: (1..=nodes).map(|i| format!("n{i}")).collect(),
            base_port: free_base_port(nodes),
            readies: 0,
            dir,
        };
        cluster.run_supervisor();
        cluster
    }

    /// Runs `shoal dev-cluster` on this directory (first run, or again after
    /// [`stop`](Self::stop)) and waits until it reports ready.
    pub fn run_supervisor(&mut self) {
        assert!(self.supervisor.is_none(), "dev-cluster is already running");
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.output_path())
            .expect("dev-cluster output file");
        let err = out.try_clone().expect("clone output file");
        let supervisor = Process::spawn(
            "shoal dev-cluster",
            self.shoal()
                .arg("dev-cluster")
                .arg("--nodes")
                .arg(self.nodes.len().to_string())
                .arg("--dir")
                .arg(self.dir.path())
                .arg("--base-port")
                .arg(self.base_port.to_string())
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err),
        );
        self.supervisor = Some(supervisor);
        let want = self.readies + 1;
        wait_until("the dev cluster to be ready", START_TIMEOUT, || {
            if let Some(status) = self.supervisor.as_mut().and_then(Process::try_wait) {
                panic!(
                    "dev-cluster exited ({status}) before it was ready:\n{}",
                    self.output()
                );
            }
            self.output().matches("dev cluster ready").count() >= want
        });
        self.readies = want;
    }

    /// Stops the dev cluster with SIGTERM (as Ctrl-C would) and returns its exit status.
    pub fn stop(&mut self, timeout: Duration) -> ExitStatus {
        let mut supervisor = self.supervisor.take().expect("dev-cluster is running");
        supervisor.signal(libc::SIGTERM);
        supervisor.wait_exit(timeout)
    }

    /// The cluster directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Node ids, `n1`…
    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    /// A `shoal` command, inside the cluster's network namespace if it has one (`ip netns
    /// exec` replaces itself with `shoal`, so the child's pid is shoal's).
    pub fn shoal(&self) -> Command {
        match &self.netns {
            Some(ns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", ns]).arg(shoal_bin());
                command
            }
            None => Command::new(shoal_bin()),
        }
    }

    /// The nodes' QUIC ports, in node order.
    pub fn ports(&self) -> Vec<u16> {
        (0..self.nodes.len())
            .map(|i| self.base_port + i as u16)
            .collect()
    }

    /// The nodes' QUIC addresses (what SDK clients use as seeds), in node order.
    pub fn seeds(&self) -> Vec<std::net::SocketAddr> {
        (0..self.nodes.len())
            .map(|i| std::net::SocketAddr::from(([127, 0, 0, 1], self.base_port + i as u16)))
            .collect()
    }

    /// The admin (HTTP) address of the `i`-th node (0-based).
    pub fn admin(&self, i: usize) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.base_port + 100 + i as u16))
    }

    /// Runs `shoal ARGS… --cluster DIR --json` and parses its one JSON object; panics with
    /// its stderr if it fails.
    pub fn shoal_json(&self, args: &[&str]) -> serde_json::Value {
        self.shoal_json_result(args)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`shoal_json`](Self::shoal_json), with a failure as an error.
    pub fn shoal_json_result(&self, args: &[&str]) -> Result<serde_json::Value, String> {
        let output = self
            .shoal()
            .args(args)
            .arg("--cluster")
            .arg(self.dir())
            .arg("--json")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run shoal: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "shoal {args:?} exited {}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        serde_json::from_slice(&output.stdout).map_err(|e| {
            format!(
                "shoal {args:?} printed no JSON ({e}): {}",
                String::from_utf8_lossy(&output.stdout)
            )
        })
    }

    /// The node's config file.
    pub fn config(&self, node: &str) -> PathBuf {
        self.dir().join(node).join("node.toml")
    }

    /// The pid in the node's pid file, if that process is running.
    pub fn pid(&self, node: &str) -> Option<i32> {
        let text = std::fs::read_to_string(self.dir().join(node).join("pid")).ok()?;
        let pid = text.trim().parse().ok()?;
        alive(pid).then_some(pid)
    }

    /// The node's log so far (appended across runs).
    pub fn log(&self, node: &str) -> String {
        std::fs::read_to_string(self.dir().join(node).join("node.log")).unwrap_or_default()
    }

    /// What dev-cluster printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(self.output_path()).unwrap_or_default()
    }

    fn output_path(&self) -> PathBuf {
        self.dir().join("dev-cluster.out")
    }

    /// Starts `node` by hand from its config (as an operator would after a kill), its output
    /// appended to its log.
    pub fn start_node(&self, node: &str) -> Process {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir().join(node).join("node.log"))
            .expect("node log");
        let err = log.try_clone().expect("clone log");
        Process::spawn(
            format!("shoal node start ({node})"),
            self.shoal()
                .args(["node", "start", "--config"])
                .arg(self.config(node))
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(err),
        )
    }

    /// Lines of `node`'s log that report `change` ("up", "dead", "left", …) about `member`.
    pub fn membership_lines(&self, node: &str, change: &str, member: &str) -> usize {
        let needle = format!("member {change} member={member} ");
        self.log(node).matches(&needle).count()
    }

    /// Waits until every node has seen every other node come up at least `times` times.
    pub fn wait_formed(&self, times: usize, timeout: Duration) {
        wait_until("every node to see every other node up", timeout, || {
            self.nodes.iter().all(|a| {
                self.nodes
                    .iter()
                    .filter(|b| *b != a)
                    .all(|b| self.membership_lines(a, "up", b) >= times)
            })
        });
    }
}

impl Drop for DevCluster {
    fn drop(&mut self) {
        drop(self.supervisor.take());
        // Nodes run in their own process groups and survive the supervisor's SIGKILL.
        for node in &self.nodes {
            if let Some(pid) = self.pid(node) {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let dir = self.dir().to_string_lossy().into_owned();
                if String::from_utf8_lossy(&cmdline).contains(&dir) {
                    send_signal(pid, libc::SIGKILL);
                }
            }
        }
    }
}
