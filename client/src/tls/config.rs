//! A node's or client's TLS material and the rustls configurations built from it.

use std::path::Path;
use std::sync::Arc;

use rustls::client::{Resumption, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::{ClientConfig, RootCertStore};

use super::certs::{ClusterCa, IssuedCert, ca_cert_path, identity_paths, read_string};
use super::verify::{NodeServerVerifier, identity_of};
use super::{ALPN_CLIENT, ALPN_PEER, TlsError};
use crate::identity::{ClientName, Identity, NodeId};

/// The crypto provider of every Shoal TLS configuration (ring).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Trust anchor, certificate and key of one node or client, checked to belong together.
/// Cheap to clone.
#[derive(Clone)]
pub struct TlsMaterial {
    inner: Arc<Inner>,
}

struct Inner {
    identity: Identity,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    server_verifier: Arc<WebPkiServerVerifier>,
    client_verifier: Arc<dyn ClientCertVerifier>,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("identity", &self.inner.identity)
            .finish_non_exhaustive()
    }
}

fn pem_error(what: &str, e: impl std::fmt::Display) -> TlsError {
    TlsError::Pem(format!("{what}: {e}"))
}

impl TlsMaterial {
    /// Builds material from PEM text: the cluster CA certificate, the own certificate (chain)
    /// and its private key. The identity is read from the certificate, which must chain to the
    /// CA and match the key.
    pub fn from_pem(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        Self::build(ca_pem, cert_pem, key_pem, true)
    }

    /// Like [`from_pem`](Self::from_pem) but accepts a certificate of another CA, to test
    /// that peers refuse it (tests only).
    #[doc(hidden)]
    pub fn from_pem_unchecked(
        ca_pem: &str,
        cert_pem: &str,
        key_pem: &str,
    ) -> Result<Self, TlsError> {
        Self::build(ca_pem, cert_pem, key_pem, false)
    }

    fn build(
        ca_pem: &str,
        cert_pem: &str,
        key_pem: &str,
        check_chain: bool,
    ) -> Result<Self, TlsError> {
        let ca = CertificateDer::from_pem_slice(ca_pem.as_bytes())
            .map_err(|e| pem_error("CA certificate", e))?;
        let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem_error("certificate", e))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| pem_error("private key", e))?;
        let leaf = chain
            .first()
            .ok_or_else(|| pem_error("certificate", "no certificate in PEM"))?;
        let identity = identity_of(leaf)?;
        let mut roots = RootCertStore::empty();
        roots.add(ca)?;
        let roots = Arc::new(roots);
        let server_verifier =
            WebPkiServerVerifier::builder_with_provider(roots.clone(), provider()).build()?;
        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(roots, provider()).build()?;
        if check_chain {
            // Every Shoal certificate is valid for client authentication, so this checks the
            // chain, validity period and usage at load time rather than at the first handshake.
            client_verifier
                .verify_client_cert(leaf, &chain[1..], UnixTime::now())
                .map_err(|e| {
                    TlsError::Pem(format!("certificate not valid for this cluster CA: {e}"))
                })?;
        }
        let material = Self {
            inner: Arc::new(Inner {
                identity,
                chain,
                key,
                server_verifier,
                client_verifier,
            }),
        };
        // Fails now, not at the first handshake, if the key does not match the certificate.
        client_config(&material)?;
        Ok(material)
    }

    /// Builds material from a CA and a certificate it issued (tests, dev cluster).
    pub fn from_issued(ca: &ClusterCa, issued: &IssuedCert) -> Result<Self, TlsError> {
        Self::from_pem(ca.cert_pem(), &issued.cert_pem, &issued.key_pem)
    }

    /// Loads `ca.pem` and the pair of `identity` from a certificate directory, and checks that
    /// the certificate names `identity`.
    pub fn load(dir: &Path, identity: &Identity) -> Result<Self, TlsError> {
        let ca_path = ca_cert_path(dir);
        let (cert_path, key_path) = identity_paths(dir, identity);
        for path in [&ca_path, &cert_path, &key_path] {
            if !path.exists() {
                return Err(TlsError::Missing { path: path.clone() });
            }
        }
        let material = Self::from_pem(
            &read_string(&ca_path)?,
            &read_string(&cert_path)?,
            &read_string(&key_path)?,
        )
        .map_err(|e| TlsError::BadFile {
            path: cert_path.clone(),
            reason: e.to_string(),
        })?;
        if material.identity() != identity {
            return Err(TlsError::BadFile {
                path: cert_path,
                reason: format!("names {}, expected {identity}", material.identity()),
            });
        }
        Ok(material)
    }

    /// Loads the material of node `id` from a certificate directory.
    pub fn load_node(dir: &Path, id: &NodeId) -> Result<Self, TlsError> {
        Self::load(dir, &Identity::Node(id.clone()))
    }

    /// Loads the material of client `name` from a certificate directory.
    pub fn load_client(dir: &Path, name: &ClientName) -> Result<Self, TlsError> {
        Self::load(dir, &Identity::Client(name.clone()))
    }

    /// Who this material authenticates as.
    pub fn identity(&self) -> &Identity {
        &self.inner.identity
    }

    /// The node id, if this is node material.
    pub fn node_id(&self) -> Option<&NodeId> {
        match &self.inner.identity {
            Identity::Node(id) => Some(id),
            Identity::Client(_) => None,
        }
    }

    /// The certificate chain, leaf first (for building a node's server configuration).
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.inner.chain
    }

    /// The private key (for building a node's server configuration). Secret.
    pub fn key(&self) -> &PrivateKeyDer<'static> {
        &self.inner.key
    }

    /// rustls' WebPKI verifier of client certificates against the cluster CA, which a node's
    /// server side wraps with Shoal's identity rules.
    pub fn client_verifier(&self) -> Arc<dyn ClientCertVerifier> {
        self.inner.client_verifier.clone()
    }

    /// Errors with [`TlsError::Role`] unless this is node material.
    pub fn require_node(&self, role: &str) -> Result<(), TlsError> {
        match self.node_id() {
            Some(_) => Ok(()),
            None => Err(TlsError::Role(format!(
                "{} cannot act as {role}: a node certificate is required",
                self.inner.identity
            ))),
        }
    }
}

fn tls13_client(
    material: &TlsMaterial,
    verifier: NodeServerVerifier,
    alpn: &[u8],
) -> Result<ClientConfig, TlsError> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(material.inner.chain.clone(), material.inner.key.clone_key())?;
    config.alpn_protocols = vec![alpn.to_vec()];
    config.resumption = Resumption::disabled();
    config.enable_early_data = false;
    Ok(config)
}

/// The dialing side of a node-to-node connection. With `expected` set, the handshake fails
/// unless the server's certificate names that node; without it any node of the cluster is
/// accepted (dialing a seed by address).
pub fn peer_client_config(
    material: &TlsMaterial,
    expected: Option<NodeId>,
) -> Result<ClientConfig, TlsError> {
    material.require_node("a peer")?;
    let verifier = NodeServerVerifier::new(material.inner.server_verifier.clone(), expected);
    tls13_client(material, verifier, ALPN_PEER)
}

/// The dialing side of a client-to-node connection (SDK, CLI): any node of the cluster.
pub fn client_config(material: &TlsMaterial) -> Result<ClientConfig, TlsError> {
    let verifier = NodeServerVerifier::new(material.inner.server_verifier.clone(), None);
    tls13_client(material, verifier, ALPN_CLIENT)
}

/// A client configuration with any material and any ALPN, to test what servers refuse
/// (tests only).
#[doc(hidden)]
pub fn client_config_with_alpn(
    material: &TlsMaterial,
    alpn: &[u8],
) -> Result<ClientConfig, TlsError> {
    let verifier = NodeServerVerifier::new(material.inner.server_verifier.clone(), None);
    tls13_client(material, verifier, alpn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dialing_configs_forbid_early_data_and_resumption_and_set_alpn() {
        let ca = ClusterCa::generate().unwrap();
        let node = ca
            .issue(&Identity::Node(NodeId::new("n1").unwrap()))
            .unwrap();
        let node = TlsMaterial::from_issued(&ca, &node).unwrap();
        let peer = peer_client_config(&node, None).unwrap();
        assert!(!peer.enable_early_data);
        assert_eq!(peer.alpn_protocols, [ALPN_PEER.to_vec()]);
        assert_eq!(
            client_config(&node).unwrap().alpn_protocols,
            [ALPN_CLIENT.to_vec()]
        );

        let app = ca
            .issue(&Identity::Client(ClientName::new("app").unwrap()))
            .unwrap();
        let app = TlsMaterial::from_issued(&ca, &app).unwrap();
        assert!(matches!(
            peer_client_config(&app, None),
            Err(TlsError::Role(_))
        ));
        assert!(client_config(&app).is_ok());
    }
    #[test]
    fn mismatched_key_or_garbage_pem_is_an_error() {
        let ca = ClusterCa::generate().unwrap();
        let id = Identity::Node(NodeId::new("n1").unwrap());
        let a = ca.issue(&id).unwrap();
        let b = ca.issue(&id).unwrap();
        assert!(TlsMaterial::from_pem(ca.cert_pem(), &a.cert_pem, &b.key_pem).is_err());
        assert!(TlsMaterial::from_pem(ca.cert_pem(), "garbage", &a.key_pem).is_err());
        assert!(TlsMaterial::from_pem("garbage", &a.cert_pem, &a.key_pem).is_err());
        let other = ClusterCa::generate().unwrap();
        let err = TlsMaterial::from_pem(other.cert_pem(), &a.cert_pem, &a.key_pem).unwrap_err();
        assert!(
            err.to_string().contains("not valid for this cluster CA"),
            "{err}"
        );
    }
}
