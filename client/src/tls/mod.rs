//! Mutual TLS for every connection: the cluster CA, node and client certificates, and the
//! rustls configurations of the dialing side (a client dialing a node, a node dialing a
//! peer). The server side (a node accepting connections) lives in `shoal-node`.
//!
//! Rules (enforced by the certificate verifiers during the handshake and by the transport right after it):
//!
//! - Every connection is mutually authenticated; a certificate must chain to the cluster CA
//!   (checked by rustls' WebPKI verifiers, which the Shoal verifiers wrap).
//! - A certificate names exactly one [`Identity`](crate::identity::Identity) in a URI SAN (see [`crate::identity`]).
//! - A node dialing a peer names the node id it means to reach; the handshake fails unless the
//!   server's certificate names that node. (Dialing a seed whose id is not known yet accepts any
//!   node certificate; the transport then learns the id from the certificate.)
//! - ALPN tells the two protocols apart: [`ALPN_PEER`] between nodes, [`ALPN_CLIENT`] from an
//!   application to a node. rustls' client-certificate verifier cannot see the ALPN, so the
//!   role check (a client certificate may not speak [`ALPN_PEER`]) is done by the transport as
//!   soon as the handshake completes, before any stream or datagram is read; the connection is
//!   then closed with an application error. A node certificate may speak [`ALPN_CLIENT`].
//! - TLS 1.3 only, no 0-RTT, and no session resumption: a resumed session would skip the
//!   certificate verifiers and with them the node id check.

mod certs;
mod config;
mod verify;

use std::path::PathBuf;

pub use certs::{
    ClusterCa, IssuedCert, ca_cert_path, identity_paths, init_ca, issue_client_files,
    issue_node_files,
};
#[doc(hidden)]
pub use config::client_config_with_alpn;
pub use config::{TlsMaterial, client_config, peer_client_config, provider};
pub use verify::{IdentityError, NodeServerVerifier, identity_of, reject};

#[cfg(test)]
pub(crate) use verify::identity_of_pem;

use crate::identity::NameError;

/// ALPN protocol id of node-to-node connections.
pub const ALPN_PEER: &[u8] = b"shoal-peer/1";
/// ALPN protocol id of client-to-node connections.
pub const ALPN_CLIENT: &[u8] = b"shoal-client/1";

/// Creating, loading or using certificates failed. Nothing on disk was changed by the failing
/// call; retrying helps only after the cause (a path, a missing CA) is fixed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The directory has no `ca.pem`/`ca.key`.
    #[error("no cluster CA in {dir}: run `shoal cert init --dir {dir}` first", dir = dir.display())]
    MissingCa {
        /// The certificate directory.
        dir: PathBuf,
    },
    /// A file that would be written already exists.
    #[error("{} already exists; refusing to overwrite it", path.display())]
    Exists {
        /// The existing file.
        path: PathBuf,
    },
    /// A file is missing.
    #[error("{} does not exist", path.display())]
    Missing {
        /// The missing file.
        path: PathBuf,
    },
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file does not hold what it should (bad PEM, wrong identity, …).
    #[error("{}: {reason}", path.display())]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// PEM text could not be read as a certificate or key.
    #[error("{0}")]
    Pem(String),
    /// A node id or client name is invalid.
    #[error(transparent)]
    Name(#[from] NameError),
    /// A certificate does not name a valid Shoal identity.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// Certificate generation failed.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls rejected the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The certificate verifier could not be built.
    #[error("TLS verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// The material does not suit the requested role (e.g. a client certificate as a server).
    #[error("{0}")]
    Role(String),
}
