//! Who is on the other end of a connection: node ids, client names, and how certificates name
//! them.
//!
//! A certificate of the cluster CA names exactly one identity in a URI subject alternative name:
//!
//! - a node: `shoal://node/<node-id>` (see [`NODE_URI_PREFIX`]);
//! - a client: `shoal://client/<name>` (see [`CLIENT_URI_PREFIX`]).
//!
//! URI SANs were chosen over DNS SANs because a DNS name folds case, limits labels to 63 bytes
//! and forbids names such as `-a` or `.`, so it cannot carry every node id exactly. Node
//! certificates additionally carry the fixed DNS SAN [`NODE_DNS_NAME`] so that rustls' stock
//! WebPKI server verifier, which insists on a DNS or IP name, can check the chain; the node id
//! check is done on the URI.
//!
//! Node ids and client names share one alphabet: 1 to 64 bytes of `[A-Za-z0-9._-]`. That keeps
//! them safe in URIs, file names and log lines without escaping.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest node id or client name, in bytes.
pub const MAX_NAME_LEN: usize = 64;
/// URI SAN prefix of a node certificate; the node id follows.
pub const NODE_URI_PREFIX: &str = "shoal://node/";
/// URI SAN prefix of a client certificate; the client name follows.
pub const CLIENT_URI_PREFIX: &str = "shoal://client/";
/// DNS SAN every node certificate carries, and the TLS server name nodes dial with.
pub const NODE_DNS_NAME: &str = "node.shoal.invalid";

/// A node id or client name was rejected; nothing was created.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name was empty.
    #[error("{what} must not be empty")]
    Empty {
        /// `"node id"` or `"client name"`.
        what: &'static str,
    },
    /// The name was longer than [`MAX_NAME_LEN`] bytes.
    #[error("{what} is {len} bytes, longer than the limit of {MAX_NAME_LEN}")]
    TooLong {
        /// `"node id"` or `"client name"`.
        what: &'static str,
        /// Length of the rejected name, in bytes.
        len: usize,
    },
    /// The name had a character outside `[A-Za-z0-9._-]`.
    #[error("{what} {name:?} has the character {bad:?}; allowed are A-Z a-z 0-9 . _ -")]
    BadChar {
        /// `"node id"` or `"client name"`.
        what: &'static str,
        /// The rejected name (escaped when printed).
        name: String,
        /// The first character that is not allowed.
        bad: char,
    },
}

fn validate(what: &'static str, name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty { what });
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong {
            what,
            len: name.len(),
        });
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(NameError::BadChar {
            what,
            name: name.to_owned(),
            bad,
        });
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Validates and wraps `name`.
            pub fn new(name: impl Into<String>) -> Result<Self, NameError> {
                let name = name.into();
                validate($what, &name)?;
                Ok(Self(name))
            }

            /// The name as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = NameError;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                Self::new(value)
            }
        }

        impl std::str::FromStr for $name {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> Self {
                value.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

name_type!(
    /// The cluster-wide name of a node, as its certificate names it: 1 to [`MAX_NAME_LEN`]
    /// bytes of `[A-Za-z0-9._-]`.
    NodeId,
    "node id"
);

name_type!(
    /// The name of an application client certificate: 1 to [`MAX_NAME_LEN`] bytes of
    /// `[A-Za-z0-9._-]`. A client is never a CRDT actor and can never act as a node.
    ClientName,
    "client name"
);

/// The authenticated identity a certificate of the cluster CA names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    /// A node certificate: may act as a peer (and as a client).
    Node(NodeId),
    /// A client certificate: may only talk the client protocol.
    Client(ClientName),
}

impl Identity {
    /// The URI SAN that names this identity in a certificate.
    pub fn to_uri(&self) -> String {
        match self {
            Identity::Node(id) => format!("{NODE_URI_PREFIX}{id}"),
            Identity::Client(name) => format!("{CLIENT_URI_PREFIX}{name}"),
        }
    }

    /// Parses a URI SAN; `None` if it is not a Shoal identity URI or the name is invalid.
    pub fn from_uri(uri: &str) -> Option<Self> {
        if let Some(id) = uri.strip_prefix(NODE_URI_PREFIX) {
            NodeId::new(id).ok().map(Identity::Node)
        } else if let Some(name) = uri.strip_prefix(CLIENT_URI_PREFIX) {
            ClientName::new(name).ok().map(Identity::Client)
        } else {
            None
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Node(id) => write!(f, "node {id}"),
            Identity::Client(name) => write!(f, "client {name}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_id_accepts_the_alphabet_and_bounds() {
        for ok in ["a", "n1", "node-1.eu_west", "-", ".", &"x".repeat(64)] {
            assert!(NodeId::new(ok).is_ok(), "{ok:?}");
        }
        assert_eq!(NodeId::new(""), Err(NameError::Empty { what: "node id" }));
        assert!(matches!(
            NodeId::new("x".repeat(65)),
            Err(NameError::TooLong { len: 65, .. })
        ));
        for bad in ["a b", "a/b", "é", "a:b", "a\n"] {
            assert!(
                matches!(NodeId::new(bad), Err(NameError::BadChar { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn identity_uri_round_trips() {
        let node = Identity::Node(NodeId::new("n-1").unwrap());
        let client = Identity::Client(ClientName::new("app").unwrap());
        assert_eq!(node.to_uri(), "shoal://node/n-1");
        assert_eq!(Identity::from_uri(&node.to_uri()), Some(node));
        assert_eq!(Identity::from_uri(&client.to_uri()), Some(client));
        assert_eq!(Identity::from_uri("shoal://node/a b"), None);
        assert_eq!(Identity::from_uri("https://node/a"), None);
    }
}
