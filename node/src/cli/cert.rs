//! `shoal cert init|node|client`: the cluster CA and certificates, as files in one directory
//! (layout in [`crate::tls`]'s `certs` module docs).

use std::path::{Path, PathBuf};

use clap::Subcommand;

use super::CliError;
use crate::identity::{ClientName, NodeId};
use crate::tls::{self, TlsError};

/// `shoal cert …`.
#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// Create a new cluster CA: DIR/ca.pem and DIR/ca.key.
    Init {
        /// Certificate directory (created if missing).
        #[arg(long)]
        dir: PathBuf,
    },
    /// Issue a node certificate: DIR/node-ID.pem and DIR/node-ID.key.
    Node {
        /// Certificate directory holding the CA.
        #[arg(long)]
        dir: PathBuf,
        /// Node id: 1 to 64 characters of A-Z a-z 0-9 . _ -
        #[arg(long = "node-id")]
        node_id: String,
    },
    /// Issue a client certificate: DIR/client-NAME.pem and DIR/client-NAME.key.
    Client {
        /// Certificate directory holding the CA.
        #[arg(long)]
        dir: PathBuf,
        /// Client name: 1 to 64 characters of A-Z a-z 0-9 . _ -
        #[arg(long)]
        name: String,
    },
}

fn classify(e: TlsError) -> CliError {
    match e {
        TlsError::Io { .. } | TlsError::Generate(_) => CliError::Failed(e.to_string()),
        _ => CliError::Input(e.to_string()),
    }
}

fn report(cert: &Path, key: &Path) {
    println!("wrote {}", cert.display());
    println!("wrote {} (private key, mode 0600)", key.display());
}

/// Runs a `cert` subcommand.
pub fn run(command: CertCommand) -> Result<(), CliError> {
    let (cert, key) = match command {
        CertCommand::Init { dir } => tls::init_ca(&dir).map_err(classify)?,
        CertCommand::Node { dir, node_id } => {
            let id = NodeId::new(node_id).map_err(|e| CliError::Input(e.to_string()))?;
            tls::issue_node_files(&dir, &id).map_err(classify)?
        }
        CertCommand::Client { dir, name } => {
            let name = ClientName::new(name).map_err(|e| CliError::Input(e.to_string()))?;
            tls::issue_client_files(&dir, &name).map_err(classify)?
        }
    };
    report(&cert, &key);
    Ok(())
}
