//! The `shoal` command line: argument parsing, dispatch, and the exit-code contract.
//!
//! Exit codes (scripts rely on them): 0 success; 1 failed with no effect; 2 usage or input
//! error; 3 unknown outcome (a write that may or may not have taken effect). Errors are printed
//! to stderr as one line, `shoal: <what happened>`.
//!
//! Adding a command: a module here with an `Args` type (clap `Args`/`Subcommand`) and a
//! `run(args) -> Result<(), CliError>`, plus one variant in [`Command`].

mod cert;

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
}

/// Runs one parsed command.
pub fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Cert(command) => cert::run(command),
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
