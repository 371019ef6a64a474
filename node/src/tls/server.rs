//! The server side of a node: the rustls configuration that accepts peers and clients of the
//! cluster CA, and the verifier of their certificates.

use std::sync::Arc;

use rustls::ServerConfig;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::NoServerSessionStorage;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName};

use super::{ALPN_CLIENT, ALPN_PEER, TlsError, TlsMaterial, identity_of, provider, reject};

/// The server side of a node: accepts peers and clients of the cluster CA (mandatory client
/// certificates), offers both ALPN protocols, no 0-RTT, no resumption.
pub fn server_config(material: &TlsMaterial) -> Result<ServerConfig, TlsError> {
    material.require_node("a server")?;
    let verifier = ClusterClientVerifier::new(material.client_verifier());
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(material.chain().to_vec(), material.key().clone_key())?;
    config.alpn_protocols = vec![ALPN_PEER.to_vec(), ALPN_CLIENT.to_vec()];
    config.max_early_data_size = 0;
    config.send_tls13_tickets = 0;
    config.session_storage = Arc::new(NoServerSessionStorage {});
    Ok(config)
}

/// Verifies the certificate of whoever connects to this node: the chain must lead to the
/// cluster CA and the certificate must name a Shoal node or client. Client authentication is
/// mandatory. Whether that identity may speak the negotiated ALPN protocol is checked by the
/// transport after the handshake (see the [module docs](super)).
#[derive(Debug)]
pub(crate) struct ClusterClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
}

impl ClusterClientVerifier {
    pub(crate) fn new(inner: Arc<dyn ClientCertVerifier>) -> Self {
        Self { inner }
    }
}

impl ClientCertVerifier for ClusterClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)?;
        identity_of(end_entity).map_err(reject)?;
        Ok(ClientCertVerified::assertion())
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn offer_client_auth(&self) -> bool {
        true
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
    use super::*;
    use crate::identity::{ClientName, Identity, NodeId};
    use crate::tls::ClusterCa;

    #[test]
    fn server_config_forbids_early_data_and_resumption_and_offers_both_alpns() {
        let ca = ClusterCa::generate().unwrap();
        let node = ca
            .issue(&Identity::Node(NodeId::new("n1").unwrap()))
            .unwrap();
        let node = TlsMaterial::from_issued(&ca, &node).unwrap();
        let server = server_config(&node).unwrap();
        assert_eq!(server.max_early_data_size, 0);
        assert_eq!(server.send_tls13_tickets, 0);
        assert_eq!(
            server.alpn_protocols,
            [ALPN_PEER.to_vec(), ALPN_CLIENT.to_vec()]
        );
        let app = ca
            .issue(&Identity::Client(ClientName::new("app").unwrap()))
            .unwrap();
        let app = TlsMaterial::from_issued(&ca, &app).unwrap();
        assert!(matches!(server_config(&app), Err(TlsError::Role(_))));
    }
}
