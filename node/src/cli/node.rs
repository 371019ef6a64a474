//! `shoal node start`: runs one node until SIGTERM or SIGINT.
//!
//! Startup, in order (any failure exits before the node serves anything):
//!
//! 1. Settings: the TOML file ([`crate::config`]) with flags overriding it; an unknown key or
//!    a bad value exits 2 naming it.
//! 2. Logging to stderr with `tracing` (`RUST_LOG`, default `info`; text or JSON).
//! 3. The store: RocksDB in `data_dir/db` (created on first start), opened as an
//!    [`Engine`](shoal_storage::Engine) with this node's id.
//! 4. QUIC on `listen` with the node certificate from `tls_dir` (mutual TLS).
//! 5. The seeds: each seed's node id is learned by connecting to it
//!    ([`Transport::discover`]), and its cluster state (ring members, addresses, keyspaces)
//!    is fetched when its node already serves. A seed that does not answer but is known from
//!    an earlier start (the cluster state kept in the store) is taken as known; one neither
//!    reachable nor known is retried for [`SEED_WAIT`], after which the node does not start
//!    (exit 1).
//! 6. The [`Node`]: it merges the kept state with the seeds' states, joins the ring itself
//!    (and any seed the states do not list yet: nodes started together join each other in id
//!    order, so they build the same ring at once), SWIM joins through the seeds, peer RPCs
//!    are served.
//!
//! **Ring.** After start the cluster state spreads by gossip (see [`crate::runtime`]): a node
//! joining later through any one seed reaches every node's ring, and `shoal keyspace create`
//! changes N everywhere. The state is kept in the store, so a restarted node knows the ring
//! and its peers' addresses even while its seeds are down.
//!
//! **Stop.** On SIGTERM or SIGINT: SWIM announces the leave (peers mark this node left at
//! once, without suspicion; it keeps its ring partitions), in-flight requests finish or fail
//! with a shutting-down error, the transport closes and the store is flushed; exit 0. A second
//! signal during that stop exits at once (code 1); RocksDB's synced writes mean nothing
//! acknowledged is lost either way.
//!
//! **Restart.** Starting again on the same `data_dir` keeps the data and the actor epoch.
//! SWIM starts at incarnation 0; peers that remember this node as left or dead at a higher
//! incarnation say so in their first state exchange, and SWIM refutes with a higher
//! incarnation (membership's "outbid an earlier life" rule), so the node is alive again in
//! their views within one exchange. No incarnation file is needed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};
use shoal_storage::{Engine, RocksStore};
use tokio::signal::unix::{SignalKind, signal};
use tokio::task::JoinSet;

use super::CliError;
use crate::cluster::ClusterState;
use crate::config::{FileConfig, LogFormat, NodeSettings, Overrides};
use crate::identity::NodeId;
use crate::runtime::fetch_cluster;
use crate::tls::TlsMaterial;
use crate::transport::{Peer, QuicConfig, QuicTransport, Transport};
use crate::{Node, NodeConfig};

/// How long startup waits for a seed that is neither reachable nor known from an earlier
/// start: 60 s, long enough for the nodes of a cluster started together to come up.
pub const SEED_WAIT: Duration = Duration::from_secs(60);
/// Deadline of one attempt to reach a seed.
const DISCOVER_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between attempts to reach a seed.
const DISCOVER_RETRY: Duration = Duration::from_millis(500);

/// `shoal node …`.
#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Run a node until SIGTERM or SIGINT (graceful stop, exit 0).
    Start(StartArgs),
}

/// `shoal node start`: a config file, and flags that override its keys.
#[derive(Debug, Args)]
pub struct StartArgs {
    /// TOML config file (keys: node_id, listen, data_dir, seeds, tls_dir, admin, log_format,
    /// pid_file).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Node id (overrides `node_id`).
    #[arg(long = "node-id")]
    pub node_id: Option<String>,
    /// QUIC listen address, UDP (overrides `listen`).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Data directory (overrides `data_dir`).
    #[arg(long = "data")]
    pub data: Option<PathBuf>,
    /// Seed addresses, comma-separated (overrides `seeds`).
    #[arg(long, value_delimiter = ',')]
    pub seeds: Option<Vec<SocketAddr>>,
    /// Certificate directory (overrides `tls_dir`).
    #[arg(long = "tls-dir")]
    pub tls_dir: Option<PathBuf>,
    /// Admin address: HTTP `/health` and `/metrics` (overrides `admin`).
    #[arg(long)]
    pub admin: Option<SocketAddr>,
    /// Log lines as `text` or `json` (overrides `log_format`); levels by `RUST_LOG`.
    #[arg(long = "log-format", value_enum)]
    pub log_format: Option<LogFormat>,
}

/// Runs a `node` subcommand.
pub fn run(command: NodeCommand) -> Result<(), CliError> {
    match command {
        NodeCommand::Start(args) => start(args),
    }
}

fn start(args: StartArgs) -> Result<(), CliError> {
    let file = match &args.config {
        Some(path) => FileConfig::load(path).map_err(|e| CliError::Input(e.to_string()))?,
        None => FileConfig::default(),
    };
    let settings = file
        .with(Overrides {
            node_id: args.node_id,
            listen: args.listen,
            data_dir: args.data,
            seeds: args.seeds,
            tls_dir: args.tls_dir,
            admin: args.admin,
            log_format: args.log_format,
        })
        .settings()
        .map_err(|e| CliError::Input(e.to_string()))?;
    init_logging(settings.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("shoal-node")
        .build()
        .map_err(|e| CliError::Failed(format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(run_node(settings))
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    // A second initialization (tests calling in-process) keeps the first.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Waits for SIGTERM or SIGINT.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Self, CliError> {
        let install = |kind| {
            signal(kind).map_err(|e| CliError::Failed(format!("cannot handle signals: {e}")))
        };
        Ok(Self {
            term: install(SignalKind::terminate())?,
            int: install(SignalKind::interrupt())?,
        })
    }

    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

async fn run_node(settings: NodeSettings) -> Result<(), CliError> {
    let mut signals = Signals::new()?;
    let id = settings.node_id.clone();
    tracing::info!(node = %id, listen = %settings.listen, data = %settings.data_dir.display(), seeds = ?settings.seeds, "node starting");

    let material = TlsMaterial::load_node(&settings.tls_dir, &id)
        .map_err(|e| CliError::Input(format!("node certificate: {e}")))?;
    let engine = open_engine(&settings.data_dir, &id)?;
    let (transport, inbox, client_inbox) =
        QuicTransport::bind(material, QuicConfig::new(settings.listen))
            .await
            .map_err(|e| CliError::Failed(e.to_string()))?;
    let local = transport.local().clone();

    let known =
        tokio::task::block_in_place(|| crate::cluster::load(&engine)).map_err(CliError::Failed)?;
    let found = tokio::select! {
        found = bootstrap(&transport, &settings, &known) => found,
        signal = signals.recv() => {
            tracing::info!(%signal, "stopped before joining");
            transport.shutdown().await;
            return Ok(());
        }
    };
    let (members, learned) = match found {
        Ok(found) => found,
        Err(e) => {
            transport.shutdown().await;
            return Err(e);
        }
    };
    let mut config = NodeConfig::new(members);
    config.cluster = learned;
    config.seed = rand::random();
    config.swim_wall_clock = true;
    if let Some(keys) = settings.anti_entropy_keys_per_sec {
        config.ae_keys_per_sec = keys;
    }
    if let Some(bytes) = settings.anti_entropy_bytes_per_sec {
        config.ae_bytes_per_sec = bytes;
    }
    let node = Arc::new(
        Node::start(config, transport.clone(), inbox, engine)
            .map_err(|e| CliError::Input(e.to_string()))?,
    );
    crate::service::spawn(node.clone(), client_inbox);
    let admin = match tokio::net::TcpListener::bind(settings.admin).await {
        Ok(listener) => listener,
        Err(e) => {
            node.shutdown().await;
            return Err(CliError::Failed(format!(
                "cannot listen on the admin address {}: {e}",
                settings.admin
            )));
        }
    };
    crate::admin::spawn(node.clone(), admin);
    write_pid_file(settings.pid_file.as_deref());
    let cluster = node.cluster();
    let ids: Vec<&str> = cluster
        .state
        .ring()
        .joined()
        .map(|id| id.as_str())
        .collect();
    tracing::info!(node = %local.id, addr = %local.addr, ring = ?ids, ring_version = format_args!("{:016x}", cluster.version), admin = %settings.admin, "node started");

    let signal = signals.recv().await;
    tracing::info!(%signal, in_flight = node.in_flight(), "stopping: leaving the cluster");
    tokio::select! {
        () = node.shutdown() => {}
        signal = signals.recv() => {
            tracing::warn!(%signal, "second signal: exiting without a graceful stop");
            return Err(CliError::Failed("interrupted during shutdown".into()));
        }
    }
    remove_pid_file(settings.pid_file.as_deref());
    tracing::info!(node = %local.id, "stopped");
    Ok(())
}

fn open_engine(data_dir: &Path, id: &NodeId) -> Result<Arc<Engine<RocksStore>>, CliError> {
    std::fs::create_dir_all(data_dir).map_err(|e| {
        CliError::Failed(format!(
            "cannot create data dir {}: {e}",
            data_dir.display()
        ))
    })?;
    let db = data_dir.join("db");
    // Opening replays the log and rebuilds Merkle trees: blocking work, off the async threads.
    let engine = tokio::task::block_in_place(|| {
        let store = RocksStore::open(&db)?;
        Engine::open(store, id.as_str())
    })
    .map_err(|e| CliError::Failed(format!("cannot open the store in {}: {e}", db.display())))?;
    tracing::info!(path = %db.display(), "store open");
    Ok(Arc::new(engine))
}

/// The members to start with (this node and every seed) and the cluster state learned from
/// the seeds; see the module docs.
async fn bootstrap(
    transport: &QuicTransport,
    settings: &NodeSettings,
    known: &ClusterState,
) -> Result<(Vec<Peer>, ClusterState), CliError> {
    let local = transport.local().clone();
    let mut members = vec![local.clone()];
    let mut learned = ClusterState::new();
    let mut tasks = JoinSet::new();
    for &seed in &settings.seeds {
        let transport = transport.clone();
        let remembered = known
            .addrs()
            .find(|(id, addr)| *addr == seed && id.as_str() != local.id.as_str())
            .and_then(|(id, _)| NodeId::new(id.as_str()).ok());
        tasks.spawn(async move {
            let id = match discover(&transport, seed, remembered).await {
                Ok(id) => id,
                Err(e) => return (seed, Err(e)),
            };
            let peer = Peer { id, addr: seed };
            // The seed's node may not serve yet (nodes started together): then its state
            // arrives by gossip instead.
            let state = fetch_cluster(&transport, &peer, DISCOVER_TIMEOUT).await;
            if let Err(e) = &state {
                tracing::info!(%seed, error = %e, "no cluster state from seed yet");
            }
            (seed, Ok((peer, state.ok())))
        });
    }
    while let Some(joined) = tasks.join_next().await {
        let (seed, found) = joined.map_err(|e| CliError::Failed(format!("seed task: {e}")))?;
        let (peer, state) = found?;
        if peer.id == local.id {
            tracing::warn!(%seed, "seed is this node; ignored");
            continue;
        }
        if let Some(state) = state {
            learned.merge(&state);
        }
        members.push(peer);
    }
    Ok((members, learned))
}

/// The node id at `seed`: asked until it answers; if it does not answer the first time and
/// was `remembered`, that id.
async fn discover(
    transport: &QuicTransport,
    seed: SocketAddr,
    remembered: Option<NodeId>,
) -> Result<NodeId, CliError> {
    let deadline = tokio::time::Instant::now() + SEED_WAIT;
    let mut logged = false;
    loop {
        match transport.discover(seed, DISCOVER_TIMEOUT).await {
            Ok(id) => {
                tracing::info!(%seed, node = %id, "seed reached");
                return Ok(id);
            }
            Err(e) => {
                if let Some(id) = remembered {
                    tracing::info!(%seed, node = %id, error = %e, "seed unreachable; known from an earlier start");
                    return Ok(id);
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(CliError::Failed(format!(
                        "seed {seed} unreachable for {}s and not known from an earlier start: {e}",
                        SEED_WAIT.as_secs()
                    )));
                }
                if !logged {
                    tracing::info!(%seed, error = %e, "waiting for seed");
                    logged = true;
                }
                tokio::time::sleep(DISCOVER_RETRY).await;
            }
        }
    }
}

fn write_pid_file(path: Option<&Path>) {
    if let Some(path) = path
        && let Err(e) = std::fs::write(path, format!("{}\n", std::process::id()))
    {
        tracing::warn!(path = %path.display(), error = %e, "pid file not written");
    }
}

fn remove_pid_file(path: Option<&Path>) {
    let Some(path) = path else { return };
    // Only our own: a node started again by hand may have replaced it.
    let ours = std::fs::read_to_string(path)
        .is_ok_and(|text| text.trim() == std::process::id().to_string());
    if ours {
        let _ = std::fs::remove_file(path);
    }
}
