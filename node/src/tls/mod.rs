//! Mutual TLS: the certificates, the material and the dialing side come from
//! [`shoal_client::tls`] (re-exported here, one implementation for nodes and clients); this
//! module adds the server side of a node — which certificates it accepts — in `server`.
//!
//! Rules: see [`shoal_client::tls`]. The role check (a client certificate may not speak
//! [`ALPN_PEER`]) is done by the transport right after the handshake, since rustls'
//! client-certificate verifier cannot see the ALPN.

mod server;

pub use server::server_config;
pub use shoal_client::tls::*;
