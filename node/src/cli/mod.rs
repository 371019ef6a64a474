//! The `shoal` command line: argument parsing, dispatch, and the exit-code contract.
//!
//! Exit codes (scripts rely on them): 0 success; 1 failed with no effect; 2 usage or input
//! error; 3 unknown outcome (a write that may or may not have taken effect). Errors are printed
//! to stderr as one line, `shoal: <what happened>`.
//!
//! Adding a command: a module here with an `Args` type (clap `Args`/`Subcommand`) and a
//! `run(args) -> Result<(), CliError>`, plus one variant in [`Command`].
//!
//! `node start` and `dev-cluster` need the `rocksdb` feature (on by default). The layout of a
//! dev cluster's directory, which `--cluster DIR` reads, is documented in [`dev_cluster`].

mod admin;
mod bench;
mod cert;
pub mod data;
#[cfg(feature = "rocksdb")]
pub mod dev_cluster;
#[cfg(feature = "rocksdb")]
pub mod node;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// How a command failed, which decides the exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad arguments or input (a missing CA, an invalid name): exit code 2.
    #[error("{0}")]
    Input(String),
    /// The command failed and changed nothing: exit code 1.
    #[error("{0}")]
    Failed(String),
    /// The command may or may not have taken effect: exit code 3.
    #[error("{0}")]
    Unknown(String),
}

impl CliError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Failed(_) => 1,
            CliError::Input(_) => 2,
            CliError::Unknown(_) => 3,
        }
    }
}

/// `shoal`: run and operate a Shoal cluster.
#[derive(Debug, Parser)]
#[command(name = "shoal", version, about, propagate_version = true)]
pub struct Cli {
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the cluster CA and node or client certificates.
    #[command(subcommand)]
    Cert(cert::CertCommand),
    /// Run a node.
    #[cfg(feature = "rocksdb")]
    #[command(subcommand)]
    Node(node::NodeCommand),
    /// Run a local cluster of node processes on loopback (certificates, configs, data and
    /// logs in one directory); stop it with Ctrl-C.
    #[cfg(feature = "rocksdb")]
    DevCluster(dev_cluster::DevClusterArgs),
    /// Counters: `incr KEY [DELTA]`, `get KEY`.
    Counter(data::CounterArgs),
    /// Sets: `add KEY MEMBER...`, `remove KEY MEMBER...`, `get KEY`.
    Set(data::SetArgs),
    /// Registers: `put KEY VALUE`, `get KEY`.
    Register(data::RegisterArgs),
    /// Delete a key of any type.
    Delete(data::KeyArgs),
    /// Print a key of any type.
    Get(data::KeyArgs),
    /// Keyspaces: `create NAME --n N`.
    Keyspace(admin::KeyspaceArgs),
    /// The cluster: `status`.
    Cluster(admin::ClusterArgs),
    /// A key's partition, preference list, and each replica's digest read from that replica.
    KeyInfo(admin::KeyInfoArgs),
    /// Load benchmark: YCSB-style workloads a, b, c or counter increments through the SDK.
    Bench(bench::BenchArgs),
}

/// Runs one parsed command.
pub fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Cert(command) => cert::run(command),
        #[cfg(feature = "rocksdb")]
        Command::Node(command) => node::run(command),
        #[cfg(feature = "rocksdb")]
        Command::DevCluster(args) => dev_cluster::run(args),
        Command::Counter(args) => data::run_counter(args),
        Command::Set(args) => data::run_set(args),
        Command::Register(args) => data::run_register(args),
        Command::Delete(args) => data::run_delete(args),
        Command::Get(args) => data::run_get(args),
        Command::Keyspace(args) => admin::run_keyspace(args),
        Command::Cluster(args) => admin::run_cluster(args),
        Command::KeyInfo(args) => admin::run_key_info(args),
        Command::Bench(args) => bench::run(args),
    }
}

/// Entry point of the binary: parses `std::env::args`, runs, prints errors, maps exit codes.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Help and version go to stdout with exit 0; usage errors exit 2.
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let line = e.to_string().replace('\n', " ");
            eprintln!("shoal: {line}");
            ExitCode::from(e.exit_code())
        }
    }
}
