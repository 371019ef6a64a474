//! Typed handles: one key of one CRDT type, with per-request options.
//!
//! A handle is cheap: it borrows the [`Client`] and holds the key. Options apply to every
//! call made through it: [`keyspace`](Handle::keyspace) (default
//! [`DEFAULT_KEYSPACE`]), [`r`](Handle::r), [`w`](Handle::w), [`timeout`](Handle::timeout).

use std::collections::{BTreeMap, BTreeSet};
use std::marker::PhantomData;
use std::time::Duration;

use shoal_storage::{Clock, FieldView, Kind, MapOp, SetOp, Update, View};

use crate::client::{Client, RequestOptions};
use crate::error::Error;
use crate::protocol::GetReply;

/// The keyspace of a handle unless [`Handle::keyspace`] says otherwise.
pub const DEFAULT_KEYSPACE: &str = "default";

/// Marker types naming the CRDT type of a [`Handle`].
pub mod kind {
    /// A counter (PN-counter): [`Handle::incr`](super::Handle::incr).
    #[derive(Debug, Clone, Copy)]
    pub struct Counter;
    /// A set of byte strings (add-wins OR-set).
    #[derive(Debug, Clone, Copy)]
    pub struct Set;
    /// A multi-value register: concurrent writes are kept as siblings.
    #[derive(Debug, Clone, Copy)]
    pub struct Register;
    /// A map of fields, each a counter, a set and a register.
    #[derive(Debug, Clone, Copy)]
    pub struct Map;
    /// Any type: read whatever is there, or delete.
    #[derive(Debug, Clone, Copy)]
    pub struct Any;
}

/// One key seen as type `K`; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct Handle<'a, K> {
    client: &'a Client,
    keyspace: String,
    key: Vec<u8>,
    options: RequestOptions,
    _kind: PhantomData<K>,
}

/// A counter key.
pub type CounterHandle<'a> = Handle<'a, kind::Counter>;
/// A set key.
pub type SetHandle<'a> = Handle<'a, kind::Set>;
/// A register key.
pub type RegisterHandle<'a> = Handle<'a, kind::Register>;
/// A map key.
pub type MapHandle<'a> = Handle<'a, kind::Map>;
/// A key of any type.
pub type KeyHandle<'a> = Handle<'a, kind::Any>;

impl Client {
    fn handle<K>(&self, key: impl Into<Vec<u8>>) -> Handle<'_, K> {
        Handle {
            client: self,
            keyspace: DEFAULT_KEYSPACE.to_owned(),
            key: key.into(),
            options: RequestOptions::default(),
            _kind: PhantomData,
        }
    }

    /// The counter at `key`.
    pub fn counter(&self, key: impl Into<Vec<u8>>) -> CounterHandle<'_> {
        self.handle(key)
    }

    /// The set at `key`.
    pub fn set(&self, key: impl Into<Vec<u8>>) -> SetHandle<'_> {
        self.handle(key)
    }

    /// The register at `key`.
    pub fn register(&self, key: impl Into<Vec<u8>>) -> RegisterHandle<'_> {
        self.handle(key)
    }

    /// The map at `key`.
    pub fn map(&self, key: impl Into<Vec<u8>>) -> MapHandle<'_> {
        self.handle(key)
    }

    /// The key at `key`, whatever its type.
    pub fn key(&self, key: impl Into<Vec<u8>>) -> KeyHandle<'_> {
        self.handle(key)
    }
}

impl<K> Handle<'_, K> {
    /// Uses keyspace `name` instead of [`DEFAULT_KEYSPACE`].
    pub fn keyspace(mut self, name: impl Into<String>) -> Self {
        self.keyspace = name.into();
        self
    }

    /// Read quorum of this handle's reads.
    pub fn r(mut self, r: u32) -> Self {
        self.options.r = Some(r);
        self
    }

    /// Write quorum of this handle's writes.
    pub fn w(mut self, w: u32) -> Self {
        self.options.w = Some(w);
        self
    }

    /// Deadline of each request, retries included.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.options.timeout = Some(timeout);
        self
    }

    /// Options of this handle's requests.
    pub fn options(mut self, options: RequestOptions) -> Self {
        self.options = options;
        self
    }

    async fn write(&self, update: Update) -> Result<u32, Error> {
        self.client
            .update(&self.keyspace, &self.key, update, &self.options)
            .await
    }

    async fn read(&self, expected: Option<Kind>) -> Result<GetReply, Error> {
        let reply = self
            .client
            .get(&self.keyspace, &self.key, &self.options)
            .await?;
        if let (Some(expected), Some(found)) = (expected, reply.kind)
            && expected != found
        {
            return Err(Error::WrongType { expected, found });
        }
        Ok(reply)
    }

    /// Deletes the key, causally: it removes what the coordinator has seen; a concurrent
    /// update survives. Returns the replicas that acknowledged.
    pub async fn delete(&self) -> Result<u32, Error> {
        self.write(Update::Delete).await
    }
}

impl Handle<'_, kind::Any> {
    /// The key's type and view; `None` if it is absent.
    pub async fn get(&self) -> Result<Option<(Kind, View)>, Error> {
        let reply = self.read(None).await?;
        Ok(reply.kind.zip(reply.view))
    }
}

impl Handle<'_, kind::Counter> {
    /// Adds `delta` (may be negative). Returns the replicas that acknowledged.
    ///
    /// Never applied twice: after a timeout or a broken connection it is not retried, and
    /// the error is [`Error::Unknown`].
    pub async fn incr(&self, delta: i64) -> Result<u32, Error> {
        self.write(Update::CounterAdd(delta)).await
    }

    /// The counter's value; 0 if absent.
    pub async fn get(&self) -> Result<i128, Error> {
        match self.read(Some(Kind::Counter)).await?.view {
            Some(View::Counter(n)) => Ok(n),
            _ => Ok(0),
        }
    }
}

impl Handle<'_, kind::Set> {
    /// Adds members (add wins over a concurrent remove).
    pub async fn add<M: Into<Vec<u8>>>(
        &self,
        members: impl IntoIterator<Item = M>,
    ) -> Result<u32, Error> {
        let members = members.into_iter().map(Into::into).collect();
        self.write(Update::Set(SetOp::Add(members))).await
    }

    /// Removes members, as far as the coordinator has seen them.
    pub async fn remove<M: Into<Vec<u8>>>(
        &self,
        members: impl IntoIterator<Item = M>,
    ) -> Result<u32, Error> {
        let members = members.into_iter().map(Into::into).collect();
        self.write(Update::Set(SetOp::Remove(members))).await
    }

    /// The members, sorted; empty if absent.
    pub async fn get(&self) -> Result<BTreeSet<Vec<u8>>, Error> {
        match self.read(Some(Kind::Set)).await?.view {
            Some(View::Set(members)) => Ok(members),
            _ => Ok(BTreeSet::new()),
        }
    }
}

/// The causal context of a register read: pass it to [`Handle::put_with_context`] to
/// supersede exactly the values that read returned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Context(Clock);

/// A register's values: one, or several concurrent siblings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Siblings {
    /// The values, sorted; empty if the register is absent.
    pub values: Vec<Vec<u8>>,
    /// What to write back with to supersede them.
    pub context: Context,
}

impl Handle<'_, kind::Register> {
    /// The register's siblings and their context.
    pub async fn get(&self) -> Result<Siblings, Error> {
        match self.read(Some(Kind::Register)).await?.view {
            Some(View::Register(view)) => Ok(Siblings {
                values: view.values,
                context: Context(view.context),
            }),
            _ => Ok(Siblings::default()),
        }
    }

    /// Writes `value`, superseding every sibling the coordinating replica holds; a
    /// concurrent write on another replica stays a sibling.
    pub async fn put(&self, value: impl Into<Vec<u8>>) -> Result<u32, Error> {
        self.write(Update::RegisterPut {
            value: value.into(),
            context: None,
        })
        .await
    }

    /// Writes `value`, superseding exactly the siblings `context` (from a [`get`](Self::get))
    /// covers.
    pub async fn put_with_context(
        &self,
        value: impl Into<Vec<u8>>,
        context: &Context,
    ) -> Result<u32, Error> {
        self.write(Update::RegisterPut {
            value: value.into(),
            context: Some(context.0.clone()),
        })
        .await
    }
}

impl Handle<'_, kind::Map> {
    /// The fields; empty if absent.
    pub async fn get(&self) -> Result<BTreeMap<Vec<u8>, FieldView>, Error> {
        match self.read(Some(Kind::Map)).await?.view {
            Some(View::Map(fields)) => Ok(fields),
            _ => Ok(BTreeMap::new()),
        }
    }

    /// Adds `delta` to the counter of `field` (not retried after a possible delivery).
    pub async fn incr(&self, field: impl Into<Vec<u8>>, delta: i64) -> Result<u32, Error> {
        self.write(Update::Map(MapOp::Counter {
            field: field.into(),
            delta,
        }))
        .await
    }

    /// Adds members to the set of `field`.
    pub async fn add<M: Into<Vec<u8>>>(
        &self,
        field: impl Into<Vec<u8>>,
        members: impl IntoIterator<Item = M>,
    ) -> Result<u32, Error> {
        let members = members.into_iter().map(Into::into).collect();
        self.write(Update::Map(MapOp::Set {
            field: field.into(),
            op: SetOp::Add(members),
        }))
        .await
    }

    /// Writes the register of `field` (superseding what the coordinator holds).
    pub async fn put(
        &self,
        field: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
    ) -> Result<u32, Error> {
        self.write(Update::Map(MapOp::Register {
            field: field.into(),
            value: value.into(),
            context: None,
        }))
        .await
    }

    /// Removes `field` (its counter, set and register), as far as observed.
    pub async fn remove_field(&self, field: impl Into<Vec<u8>>) -> Result<u32, Error> {
        self.write(Update::Map(MapOp::Remove {
            field: field.into(),
        }))
        .await
    }
}
