//! `shoal dev-cluster --nodes N --dir DIR`: a local cluster of N node processes on loopback.
//!
//! The first run on DIR creates the certificates and configs, then starts the nodes; a later
//! run on the same DIR starts the same cluster again with its data (certificates and configs
//! are kept). Each node is its own `shoal node start --config DIR/<node-id>/node.toml`
//! process (this executable), in its own process group, so a node can be killed and started
//! again by hand. Ctrl-C or SIGTERM stops them all: SIGTERM to every node (graceful leave),
//! then SIGKILL to any still running after [`STOP_DEADLINE`].
//!
//! # Directory layout (read by the data commands' `--cluster DIR`)
//!
//! ```text
//! DIR/
//!   cluster.toml        how to reach the cluster (below); written last, so its presence
//!                       marks a complete directory
//!   tls/                certificate directory (`shoal cert` layout): ca.pem, ca.key,
//!                       node-<id>.pem/.key for each node, client-dev.pem/.key
//!   <node-id>/          one per node: n1, n2, …
//!     node.toml         the node's config (`shoal node start --config` reads it)
//!     pid               the node's process id while it runs (written by dev-cluster at
//!                       spawn and by the node itself, through its `pid_file` key)
//!     node.log          the node's log (stderr, appended across runs)
//!     data/             the node's data directory (RocksDB in data/db)
//! ```
//!
//! `cluster.toml`:
//!
//! ```toml
//! seeds   = ["127.0.0.1:7100", "127.0.0.1:7101", "127.0.0.1:7102"]  # every node's address
//! tls_dir = "/abs/path/DIR/tls"   # absolute; a relative one is relative to DIR
//! client  = "dev"                 # client certificate: tls_dir/client-dev.pem, .key
//! nodes   = ["n1", "n2", "n3"]    # node ids, in start order
//! ```
//!
//! Ports: node i (from 1) listens on UDP `127.0.0.1:(base + i - 1)` and gets the admin
//! address `127.0.0.1:(base + 100 + i - 1)`; `--base-port` defaults to 7100.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Args;
use serde::{Deserialize, Serialize};
use tokio::signal::unix::{SignalKind, signal};

use super::CliError;
use crate::config::FileConfig;
use crate::identity::{ClientName, NodeId};
use crate::tls::{self, TlsError};

/// Name of the cluster file in DIR.
pub const CLUSTER_FILE: &str = "cluster.toml";
/// Name of the client certificate a dev cluster creates.
pub const CLIENT_NAME: &str = "dev";
/// How long a node gets to stop after SIGTERM before it is killed.
pub const STOP_DEADLINE: Duration = Duration::from_secs(30);
/// How long the nodes get to start (each waits for its seeds up to 60 s).
const START_DEADLINE: Duration = Duration::from_secs(90);

/// `shoal dev-cluster`.
#[derive(Debug, Args)]
pub struct DevClusterArgs {
    /// Number of nodes (1 to 64). On an existing DIR it must match the cluster there.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Directory of the cluster: certificates, configs, data, logs, pids.
    #[arg(long)]
    pub dir: PathBuf,
    /// First UDP port; node i listens on base + i - 1 (ignored on an existing DIR).
    #[arg(long = "base-port", default_value_t = 7100)]
    pub base_port: u16,
}

/// `DIR/cluster.toml`: see the module docs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    /// Every node's QUIC address.
    pub seeds: Vec<SocketAddr>,
    /// Certificate directory.
    pub tls_dir: PathBuf,
    /// Client certificate name in `tls_dir`.
    pub client: String,
    /// Node ids.
    pub nodes: Vec<String>,
}

/// One node of the cluster as dev-cluster runs it.
struct DevNode {
    id: String,
    config: PathBuf,
    pid_file: PathBuf,
    log: PathBuf,
    addr: SocketAddr,
    child: Option<Child>,
}

fn failed(e: impl std::fmt::Display) -> CliError {
    CliError::Failed(e.to_string())
}

/// Runs `shoal dev-cluster`.
pub fn run(args: DevClusterArgs) -> Result<(), CliError> {
    if !(1..=64).contains(&args.nodes) {
        return Err(CliError::Input(format!(
            "--nodes must be 1 to 64, got {}",
            args.nodes
        )));
    }
    if u32::from(args.base_port) + 100 + args.nodes as u32 > u32::from(u16::MAX) {
        return Err(CliError::Input(format!(
            "--base-port {} leaves no room for {} nodes",
            args.base_port, args.nodes
        )));
    }
    std::fs::create_dir_all(&args.dir)
        .map_err(|e| failed(format!("cannot create {}: {e}", args.dir.display())))?;
    let dir = args
        .dir
        .canonicalize()
        .map_err(|e| failed(format!("{}: {e}", args.dir.display())))?;
    let cluster = match read_cluster(&dir)? {
        Some(cluster) => {
            if cluster.nodes.len() != args.nodes {
                return Err(CliError::Input(format!(
                    "{} holds a cluster of {} nodes; run with --nodes {} or use another --dir",
                    dir.display(),
                    cluster.nodes.len(),
                    cluster.nodes.len()
                )));
            }
            println!("restarting the cluster in {}", dir.display());
            cluster
        }
        None => {
            let cluster = create(&dir, args.nodes, args.base_port)?;
            println!(
                "created a cluster of {} nodes in {}",
                args.nodes,
                dir.display()
            );
            cluster
        }
    };
    let mut nodes = Vec::new();
    for (id, addr) in cluster.nodes.iter().zip(&cluster.seeds) {
        let node_dir = dir.join(id);
        nodes.push(DevNode {
            id: id.clone(),
            config: node_dir.join("node.toml"),
            pid_file: node_dir.join("pid"),
            log: node_dir.join("node.log"),
            addr: *addr,
            child: None,
        });
    }
    for node in &nodes {
        if let Some(pid) = running_pid(node) {
            return Err(CliError::Input(format!(
                "node {} of {} is already running (pid {pid}); stop it first",
                node.id,
                dir.display()
            )));
        }
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(failed)?;
    runtime.block_on(supervise(&dir, &cluster, &mut nodes))
}

fn read_cluster(dir: &Path) -> Result<Option<ClusterFile>, CliError> {
    let path = dir.join(CLUSTER_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(failed(format!("cannot read {}: {e}", path.display()))),
    };
    let mut cluster: ClusterFile = toml::from_str(&text)
        .map_err(|e| CliError::Input(format!("{}: {}", path.display(), e.message())))?;
    if cluster.tls_dir.is_relative() {
        cluster.tls_dir = dir.join(&cluster.tls_dir);
    }
    if cluster.seeds.len() != cluster.nodes.len() {
        return Err(CliError::Input(format!(
            "{}: `seeds` and `nodes` differ in length",
            path.display()
        )));
    }
    Ok(Some(cluster))
}

/// Creates what is missing of a new cluster: certificates, node configs, then cluster.toml.
fn create(dir: &Path, count: usize, base_port: u16) -> Result<ClusterFile, CliError> {
    let tls_dir = dir.join("tls");
    let cert_error = |e: TlsError| failed(format!("certificates: {e}"));
    if !tls::ca_cert_path(&tls_dir).exists() {
        tls::init_ca(&tls_dir).map_err(cert_error)?;
    }
    let ids: Vec<String> = (1..=count).map(|i| format!("n{i}")).collect();
    let addr = |port: u16| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let seeds: Vec<SocketAddr> = (0..count).map(|i| addr(base_port + i as u16)).collect();
    for (i, id) in ids.iter().enumerate() {
        let node_id = NodeId::new(id.clone()).map_err(failed)?;
        let identity = crate::identity::Identity::Node(node_id.clone());
        if !tls::identity_paths(&tls_dir, &identity).0.exists() {
            tls::issue_node_files(&tls_dir, &node_id).map_err(cert_error)?;
        }
        let node_dir = dir.join(id);
        std::fs::create_dir_all(&node_dir)
            .map_err(|e| failed(format!("cannot create {}: {e}", node_dir.display())))?;
        let config = FileConfig {
            node_id: Some(id.clone()),
            listen: Some(seeds[i]),
            data_dir: Some(node_dir.join("data")),
            seeds: Some(seeds.iter().filter(|s| **s != seeds[i]).copied().collect()),
            tls_dir: Some(tls_dir.clone()),
            admin: Some(addr(base_port + 100 + i as u16)),
            log_format: None,
            pid_file: Some(node_dir.join("pid")),
            ..FileConfig::default()
        };
        let text = format!(
            "# Node {id} of the dev cluster in {} (written by `shoal dev-cluster`).\n\
             # Start it by hand with: shoal node start --config {}\n{}",
            dir.display(),
            node_dir.join("node.toml").display(),
            config.to_toml()
        );
        write(&node_dir.join("node.toml"), &text)?;
    }
    let client = ClientName::new(CLIENT_NAME).map_err(failed)?;
    let client_cert =
        tls::identity_paths(&tls_dir, &crate::identity::Identity::Client(client.clone())).0;
    if !client_cert.exists() {
        tls::issue_client_files(&tls_dir, &client).map_err(cert_error)?;
    }
    let cluster = ClusterFile {
        seeds,
        tls_dir,
        client: CLIENT_NAME.to_owned(),
        nodes: ids,
    };
    let text = format!(
        "# How to reach the dev cluster in this directory (written by `shoal dev-cluster`;\n\
         # read by `shoal <command> --cluster DIR`).\n{}",
        toml::to_string(&cluster).expect("cluster file serializes")
    );
    write(&dir.join(CLUSTER_FILE), &text)?;
    Ok(cluster)
}

fn write(path: &Path, text: &str) -> Result<(), CliError> {
    std::fs::write(path, text).map_err(|e| failed(format!("cannot write {}: {e}", path.display())))
}

/// The pid in `node`'s pid file, if that process is alive and is this node (its command line
/// names the node's config), so a reused pid is never signalled.
fn running_pid(node: &DevNode) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(&node.pid_file)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let cmdline = String::from_utf8_lossy(&cmdline);
    cmdline
        .contains(&*node.config.to_string_lossy())
        .then_some(pid)
}

fn send_signal(pid: i32, signal: libc::c_int) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// Starts the nodes, reports, and waits for Ctrl-C or SIGTERM; then stops them.
async fn supervise(
    dir: &Path,
    cluster: &ClusterFile,
    nodes: &mut [DevNode],
) -> Result<(), CliError> {
    let mut term = signal(SignalKind::terminate()).map_err(failed)?;
    let mut int = signal(SignalKind::interrupt()).map_err(failed)?;
    let exe =
        std::env::current_exe().map_err(|e| failed(format!("cannot find this executable: {e}")))?;
    for node in nodes.iter_mut() {
        if let Err(e) = spawn(&exe, node) {
            stop_all(nodes).await;
            return Err(e);
        }
    }
    // Wait until every node logs that it started, or one exits.
    let started = Instant::now();
    let mut ready = vec![false; nodes.len()];
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    while ready.iter().any(|r| !r) {
        tokio::select! {
            _ = term.recv() => { stop_all(nodes).await; return Ok(()); }
            _ = int.recv() => { stop_all(nodes).await; return Ok(()); }
            _ = tick.tick() => {}
        }
        for (i, node) in nodes.iter_mut().enumerate() {
            if let Some(status) = node
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                let message = format!(
                    "node {} exited during startup ({status}); see {}",
                    node.id,
                    node.log.display()
                );
                stop_all(nodes).await;
                return Err(failed(message));
            }
            ready[i] = ready[i] || log_says_started(&node.log, node.child.as_ref());
        }
        if started.elapsed() > START_DEADLINE {
            stop_all(nodes).await;
            return Err(failed(format!(
                "nodes did not start within {}s; see the logs in {}",
                START_DEADLINE.as_secs(),
                dir.display()
            )));
        }
    }
    print_ready(dir, cluster, nodes);

    let mut reported: BTreeSet<String> = BTreeSet::new();
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        for node in nodes.iter_mut() {
            if let Some(status) = node
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                node.child = None;
                if reported.insert(node.id.clone()) {
                    println!(
                        "node {} exited ({status}); start it again with: {} node start --config {}",
                        node.id,
                        exe.display(),
                        node.config.display()
                    );
                }
            } else if node.child.is_some() {
                reported.remove(&node.id);
            }
        }
    }
    println!("stopping {} nodes", nodes.len());
    stop_all(nodes).await;
    println!("stopped");
    Ok(())
}

fn spawn(exe: &Path, node: &mut DevNode) -> Result<(), CliError> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&node.log)
        .map_err(|e| failed(format!("cannot open {}: {e}", node.log.display())))?;
    let log2 = log.try_clone().map_err(failed)?;
    let child = Command::new(exe)
        .arg("node")
        .arg("start")
        .arg("--config")
        .arg(&node.config)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        // Own process group: Ctrl-C reaches dev-cluster only, which stops the nodes in order.
        .process_group(0)
        .spawn()
        .map_err(|e| failed(format!("cannot start node {}: {e}", node.id)))?;
    write(&node.pid_file, &format!("{}\n", child.id()))?;
    node.child = Some(child);
    Ok(())
}

/// Whether the node's log shows "node started" from its current run (the log is appended
/// across runs, so "node started" counts only after the last "node starting").
fn log_says_started(log: &Path, child: Option<&Child>) -> bool {
    if child.is_none() {
        return false;
    }
    let Ok(text) = std::fs::read_to_string(log) else {
        return false;
    };
    let Some(last_start) = text.rfind("node starting") else {
        return false;
    };
    text[last_start..].contains("node started")
}

fn print_ready(dir: &Path, cluster: &ClusterFile, nodes: &[DevNode]) {
    let exe = std::env::args().next().unwrap_or_else(|| "shoal".into());
    println!("dev cluster ready: {} nodes", nodes.len());
    for node in nodes {
        let pid = node.child.as_ref().map_or(0, Child::id);
        println!(
            "  {}  {}  pid {pid}  log {}",
            node.id,
            node.addr,
            node.log.display()
        );
    }
    let seeds: Vec<String> = cluster.seeds.iter().map(ToString::to_string).collect();
    println!("connect:");
    println!("  {exe} counter incr mykey --cluster {}", dir.display());
    println!("  (or export SHOAL_CLUSTER={})", dir.display());
    println!(
        "  SDK: seeds {}, CA {}, client certificate {} (+ .key)",
        seeds.join(","),
        tls::ca_cert_path(&cluster.tls_dir).display(),
        cluster
            .tls_dir
            .join(format!("client-{}.pem", cluster.client))
            .display()
    );
    if let Some(node) = nodes.get(1) {
        println!(
            "kill a node: kill -9 $(cat {}); start it again: {exe} node start --config {}",
            node.pid_file.display(),
            node.config.display()
        );
    }
    println!("stop: Ctrl-C");
}

/// SIGTERM to every running node (children and nodes started again by hand, found by pid
/// file), then wait; SIGKILL to those still running after [`STOP_DEADLINE`].
async fn stop_all(nodes: &mut [DevNode]) {
    let mut pids: Vec<i32> = Vec::new();
    for node in nodes.iter() {
        if let Some(child) = &node.child {
            pids.push(child.id() as i32);
        }
        if let Some(pid) = running_pid(node) {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    pids.dedup();
    for &pid in &pids {
        send_signal(pid, libc::SIGTERM);
    }
    let deadline = Instant::now() + STOP_DEADLINE;
    loop {
        // Reap our children so they stop counting as alive.
        for node in nodes.iter_mut() {
            if let Some(child) = node.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                if !status.success() {
                    println!("node {} exited: {status}", node.id);
                }
                node.child = None;
            }
        }
        pids.retain(|&pid| alive(pid));
        if pids.is_empty() {
            return;
        }
        if Instant::now() >= deadline {
            for &pid in &pids {
                println!(
                    "pid {pid} still running after {}s: killing it",
                    STOP_DEADLINE.as_secs()
                );
                send_signal(pid, libc::SIGKILL);
            }
            for node in nodes.iter_mut() {
                if let Some(mut child) = node.child.take() {
                    let _ = child.wait();
                }
            }
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether `pid` is a running process (a zombie counts as gone).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesized command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}
