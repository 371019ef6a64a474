//! `shoal-client`: the Rust SDK of Shoal, and the wire pieces nodes and clients share.
//!
//! What it does:
//!
//! - [`Client`]: connects to a cluster over QUIC with mutual TLS, learns the routing table
//!   from any node, and sends each request straight to a live replica of its key. Deadlines,
//!   retries with backoff and jitter, failover along the preference list; a request that may
//!   have taken effect is never retried unless repeating it changes nothing, so a counter
//!   increment is never applied twice (see [`client`]).
//! - Typed handles ([`handles`]): counter, set, register (siblings and causal context), map,
//!   and any-type get and delete, each with per-request R, W, timeout and keyspace.
//! - [`Error`] (`#[non_exhaustive]`): whether a failed operation may have taken effect
//!   ([`Outcome::Failed`] or [`Outcome::Unknown`]); `Ok` means acknowledged.
//!
//! Shared with `shoal-node` (one implementation for both sides):
//!
//! - [`protocol`]: the client protocol's requests and responses.
//! - [`codec`]: stream frames (version byte, bounded length) and bincode bodies.
//! - [`identity`], [`tls`]: node ids, client names, certificates, TLS material and the
//!   dialing-side rustls configurations.
//! - [`transport`]: the client-side QUIC connection and the request/response exchange.
//!
//! What it does not do: run a node, or pull in RocksDB (`shoal-storage` is used for its wire
//! types only, without its `rocksdb` feature).
//!
//! ```no_run
//! use shoal_client::{Client, identity::ClientName, tls::TlsMaterial};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let tls = TlsMaterial::load_client("dev/tls".as_ref(), &ClientName::new("dev")?)?;
//! let client = Client::builder()
//!     .seeds(["127.0.0.1:7100".parse()?])
//!     .tls(tls)
//!     .build()
//!     .await?;
//! client.set("fruit").add(["apple", "pear"]).await?;
//! let reg = client.register("greeting");
//! reg.put("hello").await?;
//! let read = reg.get().await?;
//! reg.w(3).put_with_context("hi", &read.context).await?;
//! # Ok(())
//! # }
//! ```

pub mod client;
pub mod codec;
mod error;
pub mod handles;
pub mod identity;
pub mod outage;
pub mod protocol;
pub mod tls;
pub mod transport;

pub use client::{Client, ClientBuilder, ClientConfig, RequestOptions};
pub use error::{Error, Outcome};
pub use handles::{
    Context, CounterHandle, DEFAULT_KEYSPACE, Handle, KeyHandle, MapHandle, RegisterHandle,
    SetHandle, Siblings,
};
pub use shoal_storage::{Kind, View};
