//! The cluster CA and the certificates it issues, in memory and on disk (`shoal cert …`).
//!
//! Layout of a certificate directory (flat, so one directory serves a whole dev cluster):
//!
//! | file | what |
//! |---|---|
//! | `ca.pem`, `ca.key` | the cluster CA (`shoal cert init`) |
//! | `node-<id>.pem`, `node-<id>.key` | a node certificate (`shoal cert node`) |
//! | `client-<name>.pem`, `client-<name>.key` | a client certificate (`shoal cert client`) |
//!
//! A node needs only `ca.pem` and its own pair; in production keep `ca.key` elsewhere. Keys are
//! ECDSA P-256, written with mode 0600. Existing files are never overwritten: a command that
//! would overwrite fails and changes nothing (re-issuing means deleting the old pair first).
//!
//! Validity: the CA for 20 years, leaf certificates for 10 years, both backdated one hour for
//! clock skew. There is no rotation or revocation yet; a compromised node is removed by
//! re-creating the CA.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};

use super::TlsError;
use crate::identity::{ClientName, Identity, NODE_DNS_NAME, NodeId};

const CA_CERT_FILE: &str = "ca.pem";
const CA_KEY_FILE: &str = "ca.key";
const CA_VALIDITY_DAYS: i64 = 20 * 365;
const LEAF_VALIDITY_DAYS: i64 = 10 * 365;

/// Path of the CA certificate in a certificate directory.
pub fn ca_cert_path(dir: &Path) -> PathBuf {
    dir.join(CA_CERT_FILE)
}

/// Paths of the certificate and private key of `identity` in a certificate directory.
pub fn identity_paths(dir: &Path, identity: &Identity) -> (PathBuf, PathBuf) {
    let stem = match identity {
        Identity::Node(id) => format!("node-{id}"),
        Identity::Client(name) => format!("client-{name}"),
    };
    (
        dir.join(format!("{stem}.pem")),
        dir.join(format!("{stem}.key")),
    )
}

/// A certificate and its private key, both PEM.
#[derive(Clone)]
pub struct IssuedCert {
    /// Who the certificate names.
    pub identity: Identity,
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The PKCS#8 private key, PEM. Secret.
    pub key_pem: String,
}

impl std::fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCert")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

/// The cluster certificate authority: signs node and client certificates.
pub struct ClusterCa {
    cert_pem: String,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa").finish_non_exhaustive()
    }
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    bytes[0] &= 0x7f; // a positive INTEGER
    bytes[0] |= 0x01; // and no leading zero byte to strip
    SerialNumber::from_slice(&bytes)
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(days);
}

impl ClusterCa {
    /// Creates a new CA with a fresh key.
    pub fn generate() -> Result<Self, TlsError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "Shoal cluster CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial());
        validity(&mut params, CA_VALIDITY_DAYS);
        let cert = params.self_signed(&key)?;
        let key_pem = key.serialize_pem();
        Ok(Self {
            cert_pem: cert.pem(),
            key_pem,
            issuer: Issuer::new(params, key),
        })
    }

    /// Reads a CA from its PEM certificate and key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        Ok(Self {
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
            issuer,
        })
    }

    /// Loads the CA of a certificate directory; [`TlsError::MissingCa`] if there is none.
    pub fn load(dir: &Path) -> Result<Self, TlsError> {
        let cert_path = ca_cert_path(dir);
        let key_path = dir.join(CA_KEY_FILE);
        if !cert_path.exists() || !key_path.exists() {
            return Err(TlsError::MissingCa {
                dir: dir.to_owned(),
            });
        }
        let cert_pem = read_string(&cert_path)?;
        let key_pem = read_string(&key_path)?;
        Self::from_pem(&cert_pem, &key_pem).map_err(|e| TlsError::BadFile {
            path: cert_path,
            reason: e.to_string(),
        })
    }

    /// Writes `ca.pem` and `ca.key` (mode 0600) into `dir`, creating `dir` if needed.
    /// Fails without writing anything if either file exists.
    pub fn write(&self, dir: &Path) -> Result<(PathBuf, PathBuf), TlsError> {
        let paths = (ca_cert_path(dir), dir.join(CA_KEY_FILE));
        write_pair(&paths, &self.cert_pem, &self.key_pem)?;
        Ok(paths)
    }

    /// The CA certificate, PEM: the trust anchor every node and client needs.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Issues a certificate naming `identity`, with a fresh key.
    ///
    /// A node certificate is valid for TLS server and client authentication and carries the
    /// URI SAN `shoal://node/<id>` plus the DNS SAN [`NODE_DNS_NAME`]; a client certificate is
    /// valid for client authentication only and carries `shoal://client/<name>`.
    pub fn issue(&self, identity: &Identity) -> Result<IssuedCert, TlsError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        let uri = SanType::URI(identity.to_uri().try_into()?);
        match identity {
            Identity::Node(id) => {
                params
                    .distinguished_name
                    .push(DnType::CommonName, format!("shoal node {id}"));
                params.subject_alt_names = vec![uri, SanType::DnsName(NODE_DNS_NAME.try_into()?)];
                params.extended_key_usages = vec![
                    ExtendedKeyUsagePurpose::ServerAuth,
                    ExtendedKeyUsagePurpose::ClientAuth,
                ];
            }
            Identity::Client(name) => {
                params
                    .distinguished_name
                    .push(DnType::CommonName, format!("shoal client {name}"));
                params.subject_alt_names = vec![uri];
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            }
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        validity(&mut params, LEAF_VALIDITY_DAYS);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCert {
            identity: identity.clone(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// `shoal cert init`: creates a CA in `dir`. Returns the paths written (certificate, key).
pub fn init_ca(dir: &Path) -> Result<(PathBuf, PathBuf), TlsError> {
    ClusterCa::generate()?.write(dir)
}

/// `shoal cert node`: issues a certificate for node `id` with the CA in `dir`.
pub fn issue_node_files(dir: &Path, id: &NodeId) -> Result<(PathBuf, PathBuf), TlsError> {
    issue_files(dir, &Identity::Node(id.clone()))
}

/// `shoal cert client`: issues a client certificate named `name` with the CA in `dir`.
pub fn issue_client_files(dir: &Path, name: &ClientName) -> Result<(PathBuf, PathBuf), TlsError> {
    issue_files(dir, &Identity::Client(name.clone()))
}

fn issue_files(dir: &Path, identity: &Identity) -> Result<(PathBuf, PathBuf), TlsError> {
    let ca = ClusterCa::load(dir)?;
    let paths = identity_paths(dir, identity);
    for path in [&paths.0, &paths.1] {
        if path.exists() {
            return Err(TlsError::Exists { path: path.clone() });
        }
    }
    let issued = ca.issue(identity)?;
    write_pair(&paths, &issued.cert_pem, &issued.key_pem)?;
    Ok(paths)
}

pub(crate) fn read_string(path: &Path) -> Result<String, TlsError> {
    fs::read_to_string(path).map_err(|source| TlsError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Writes a certificate (0644) and its key (0600); neither may exist. On failure nothing that
/// this call created is left behind.
fn write_pair(
    (cert_path, key_path): &(PathBuf, PathBuf),
    cert_pem: &str,
    key_pem: &str,
) -> Result<(), TlsError> {
    for path in [cert_path, key_path] {
        if path.exists() {
            return Err(TlsError::Exists { path: path.clone() });
        }
    }
    if let Some(dir) = cert_path.parent() {
        fs::create_dir_all(dir).map_err(|source| TlsError::Io {
            path: dir.to_owned(),
            source,
        })?;
    }
    write_new(key_path, key_pem, 0o600)?;
    if let Err(e) = write_new(cert_path, cert_pem, 0o644) {
        let _ = fs::remove_file(key_path);
        return Err(e);
    }
    Ok(())
}

fn write_new(path: &Path, contents: &str, mode: u32) -> Result<(), TlsError> {
    let io = |source| TlsError::Io {
        path: path.to_owned(),
        source,
    };
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // The mode is set at creation, so the key is never readable by others, not even briefly.
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::AlreadyExists {
            TlsError::Exists {
                path: path.to_owned(),
            }
        } else {
            io(source)
        }
    })?;
    let result = file
        .write_all(contents.as_bytes())
        .and_then(|()| file.sync_all());
    if let Err(source) = result {
        drop(file);
        let _ = fs::remove_file(path);
        return Err(io(source));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::identity_of_pem;

    #[test]
    fn init_then_issue_writes_files_with_private_keys_0600() {
        let dir = tempfile::tempdir().unwrap();
        let (ca_pem, ca_key) = init_ca(dir.path()).unwrap();
        let id = NodeId::new("n1").unwrap();
        let (node_pem, node_key) = issue_node_files(dir.path(), &id).unwrap();
        let name = ClientName::new("app").unwrap();
        let (client_pem, client_key) = issue_client_files(dir.path(), &name).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for key in [&ca_key, &node_key, &client_key] {
                let mode = fs::metadata(key).unwrap().permissions().mode() & 0o777;
                assert_eq!(mode, 0o600, "{}", key.display());
            }
        }
        assert!(ca_pem.exists());
        let node = identity_of_pem(&fs::read_to_string(node_pem).unwrap()).unwrap();
        assert_eq!(node, Identity::Node(id));
        let client = identity_of_pem(&fs::read_to_string(client_pem).unwrap()).unwrap();
        assert_eq!(client, Identity::Client(name));
    }

    #[test]
    fn refuses_to_overwrite_and_needs_a_ca() {
        let dir = tempfile::tempdir().unwrap();
        let id = NodeId::new("n1").unwrap();
        assert!(matches!(
            issue_node_files(dir.path(), &id),
            Err(TlsError::MissingCa { .. })
        ));
        init_ca(dir.path()).unwrap();
        assert!(matches!(init_ca(dir.path()), Err(TlsError::Exists { .. })));
        issue_node_files(dir.path(), &id).unwrap();
        let before = fs::read(identity_paths(dir.path(), &Identity::Node(id.clone())).0).unwrap();
        assert!(matches!(
            issue_node_files(dir.path(), &id),
            Err(TlsError::Exists { .. })
        ));
        let after = fs::read(identity_paths(dir.path(), &Identity::Node(id)).0).unwrap();
        assert_eq!(before, after);
    }
}
