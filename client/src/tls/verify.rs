//! Certificate verifiers: rustls' WebPKI verifiers (chain to the cluster CA, validity, key
//! usage) wrapped with Shoal's identity rules.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, OtherError};
use x509_parser::extensions::GeneralName;

use crate::identity::{Identity, NODE_DNS_NAME, NodeId};

/// A certificate does not name exactly one valid Shoal identity, or names the wrong one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The certificate could not be parsed.
    #[error("certificate could not be parsed: {0}")]
    Unparsable(String),
    /// No `shoal://node/…` or `shoal://client/…` URI SAN.
    #[error("certificate names no Shoal node or client")]
    NoIdentity,
    /// More than one Shoal identity URI.
    #[error("certificate names more than one Shoal identity")]
    Ambiguous,
    /// The peer is not the node this connection was meant to reach.
    #[error("peer certificate names {found}, expected node {expected}")]
    WrongNode {
        /// The node id that was dialed.
        expected: NodeId,
        /// What the certificate names.
        found: Identity,
    },
    /// A client certificate where a node certificate is required.
    #[error("{found} presented where a node certificate is required")]
    NotANode {
        /// What the certificate names.
        found: Identity,
    },
}

/// Reads the Shoal identity a DER certificate names (its single `shoal://` URI SAN).
///
/// This does not check the chain; call it only on certificates a verifier has accepted.
pub fn identity_of(cert: &CertificateDer<'_>) -> Result<Identity, IdentityError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| IdentityError::Unparsable(e.to_string()))?;
    let san = parsed
        .subject_alternative_name()
        .map_err(|e| IdentityError::Unparsable(e.to_string()))?;
    let mut found = None;
    for name in san.iter().flat_map(|ext| ext.value.general_names.iter()) {
        if let GeneralName::URI(uri) = name
            && uri.starts_with("shoal://")
        {
            let identity = Identity::from_uri(uri).ok_or(IdentityError::NoIdentity)?;
            if found.replace(identity).is_some() {
                return Err(IdentityError::Ambiguous);
            }
        }
    }
    found.ok_or(IdentityError::NoIdentity)
}

#[cfg(test)]
pub(crate) fn identity_of_pem(pem: &str) -> Result<Identity, IdentityError> {
    use rustls::pki_types::pem::PemObject;
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).expect("PEM certificate");
    identity_of(&der)
}

/// A handshake error carrying `error`.
pub fn reject(error: IdentityError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(error))))
}

/// Verifies a server certificate when this node dials another node (or a client dials a
/// node): the chain must lead to the cluster CA, the certificate must be a node certificate,
/// and, when `expected` is set, name exactly that node.
///
/// The TLS server name is ignored: all node certificates carry the same DNS SAN
/// ([`NODE_DNS_NAME`]), which is what the wrapped WebPKI verifier checks.
#[derive(Debug)]
pub struct NodeServerVerifier {
    inner: Arc<WebPkiServerVerifier>,
    expected: Option<NodeId>,
}

impl NodeServerVerifier {
    /// Wraps `inner` (which checks the chain); `expected`: the node id the dialer means to reach.
    pub fn new(inner: Arc<WebPkiServerVerifier>, expected: Option<NodeId>) -> Self {
        Self { inner, expected }
    }
}

impl ServerCertVerifier for NodeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let name = ServerName::try_from(NODE_DNS_NAME).expect("valid DNS name");
        self.inner
            .verify_server_cert(end_entity, intermediates, &name, ocsp_response, now)?;
        let found = identity_of(end_entity).map_err(reject)?;
        match (&found, &self.expected) {
            (Identity::Node(id), Some(expected)) if id != expected => {
                Err(reject(IdentityError::WrongNode {
                    expected: expected.clone(),
                    found,
                }))
            }
            (Identity::Node(_), _) => Ok(ServerCertVerified::assertion()),
            (Identity::Client(_), _) => Err(reject(IdentityError::NotANode { found })),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, KeyPair, SanType};
    use rustls::pki_types::ServerName;

    use super::*;
    use crate::identity::ClientName;
    use crate::tls::ClusterCa;

    fn der_with_sans(sans: Vec<SanType>) -> CertificateDer<'static> {
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans;
        params
            .self_signed(&KeyPair::generate().unwrap())
            .unwrap()
            .der()
            .clone()
    }

    fn uri(s: &str) -> SanType {
        SanType::URI(s.try_into().unwrap())
    }

    #[test]
    fn identity_needs_exactly_one_valid_shoal_uri() {
        let none = der_with_sans(vec![SanType::DnsName("example.com".try_into().unwrap())]);
        assert_eq!(identity_of(&none), Err(IdentityError::NoIdentity));
        let other_uri = der_with_sans(vec![uri("https://example.com/")]);
        assert_eq!(identity_of(&other_uri), Err(IdentityError::NoIdentity));
        let two = der_with_sans(vec![uri("shoal://node/a"), uri("shoal://client/b")]);
        assert_eq!(identity_of(&two), Err(IdentityError::Ambiguous));
        let bad_name = der_with_sans(vec![uri("shoal://node/a%20b")]);
        assert_eq!(identity_of(&bad_name), Err(IdentityError::NoIdentity));
        let one = der_with_sans(vec![uri("shoal://node/a")]);
        assert_eq!(
            identity_of(&one),
            Ok(Identity::Node(NodeId::new("a").unwrap()))
        );
        let garbage = CertificateDer::from(vec![0x30, 0x03, 0x01, 0x01]);
        assert!(matches!(
            identity_of(&garbage),
            Err(IdentityError::Unparsable(_))
        ));
    }

    fn server_verifier(ca: &ClusterCa, expected: Option<&str>) -> NodeServerVerifier {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).unwrap())
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .unwrap();
        NodeServerVerifier::new(inner, expected.map(|id| NodeId::new(id).unwrap()))
    }

    fn leaf(ca: &ClusterCa, identity: Identity) -> CertificateDer<'static> {
        use rustls::pki_types::pem::PemObject;
        let issued = ca.issue(&identity).unwrap();
        CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap()
    }

    #[test]
    fn server_verifier_checks_ca_role_and_node_id() {
        let ca = ClusterCa::generate().unwrap();
        let other = ClusterCa::generate().unwrap();
        let n1 = Identity::Node(NodeId::new("n1").unwrap());
        let app = Identity::Client(ClientName::new("app").unwrap());
        // Whatever name the caller passes is ignored.
        let name = ServerName::try_from("anything.example").unwrap();
        let verify = |verifier: &NodeServerVerifier, cert: &CertificateDer<'_>| {
            verifier.verify_server_cert(cert, &[], &name, &[], UnixTime::now())
        };
        assert!(verify(&server_verifier(&ca, Some("n1")), &leaf(&ca, n1.clone())).is_ok());
        assert!(verify(&server_verifier(&ca, None), &leaf(&ca, n1.clone())).is_ok());
        assert!(verify(&server_verifier(&ca, Some("n2")), &leaf(&ca, n1.clone())).is_err());
        assert!(verify(&server_verifier(&ca, Some("n1")), &leaf(&other, n1)).is_err());
        // A client certificate has no serverAuth usage, and is no node anyway.
        assert!(verify(&server_verifier(&ca, None), &leaf(&ca, app)).is_err());
    }
}
