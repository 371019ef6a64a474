//! The one place where values are encoded and decoded (bincode 2.0.1 through serde).
//!
//! Encodings are canonical: two equal states encode to the same bytes, whatever order their
//! history put them in. That is what makes a record's checksum usable as the value hash of the
//! Merkle trees, so equal replicas have equal trees. `crdts` keeps some state in `HashMap`s and
//! in a `Vec` whose order depends on merge order; we encode those through mirror types with the
//! same bincode layout but sorted containers, and decode stored bytes straight into the `crdts`
//! types (bincode does not care whether a map was a `HashMap` or a `BTreeMap`). The mirror
//! layouts are checked by the round-trip tests below and in `tests/crdt_laws.rs`.

use std::collections::{BTreeMap, BTreeSet};

use bincode::config::{Configuration, Limit as ByteLimit, LittleEndian, Varint};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Limit, StorageError};
use crate::value::{Actor, Counter, Kind, MAX_VALUE_LEN, Map, Register, Set, Value, check_len};

/// Decoding never allocates more than this, whatever the input claims.
const DECODE_LIMIT: usize = MAX_VALUE_LEN + 4096;

type DecodeConfig = Configuration<LittleEndian, Varint, ByteLimit<DECODE_LIMIT>>;

/// Decoding is bounded; encoding is not (size limits are checked on the encoded bytes, where
/// the error can name them). Both produce and read the same format.
fn decode_config() -> DecodeConfig {
    bincode::config::standard().with_limit::<DECODE_LIMIT>()
}

/// Encodes any serde value (used for small internal metadata and by tests).
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(value, bincode::config::standard())
        .expect("encoding into a Vec cannot fail")
}

/// Decodes a serde value, requiring that every input byte is used.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StorageError> {
    let (value, used) = bincode::serde::decode_from_slice(bytes, decode_config())
        .map_err(|e| StorageError::Malformed(e.to_string()))?;
    all_used(used, bytes.len())?;
    Ok(value)
}

/// Canonical encoding of a value's CRDT state (without the record envelope); errors if it is
/// over [`MAX_VALUE_LEN`]. The canonical form has the same length as the plain one (the same
/// entries in another order), so the limit is checked before canonicalizing.
pub fn encode_value(value: &Value) -> Result<Vec<u8>, StorageError> {
    let plain = match value {
        Value::Counter(c) => encode(c),
        Value::Set(s) => encode(s),
        Value::Register(r) => encode(r),
        Value::Map(m) => encode(m),
    };
    check_len(Limit::Value, plain.len())?;
    Ok(match value {
        Value::Counter(_) => plain,
        Value::Set(_) => encode(&mirror::<SetM>(&plain)),
        Value::Register(_) => encode(&mirror::<RegisterM>(&plain).sorted()),
        Value::Map(_) => encode(&mirror::<MapM>(&plain).sorted()),
    })
}

/// Checks that `bytes` decode as a value of `kind`, as [`decode_value`] would, without building
/// anything: they are read through the [`check`] layouts, which drop every element as soon as
/// it is read and borrow byte strings from the input, so a check allocates nothing. (A replica
/// refill validates every record it lacks this way and stores it as it came.)
pub fn validate_value(kind: Kind, bytes: &[u8]) -> Result<(), StorageError> {
    fn read_all<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<(), StorageError> {
        let (_, used) = bincode::serde::borrow_decode_from_slice::<T, _>(bytes, decode_config())
            .map_err(|e| StorageError::Malformed(e.to_string()))?;
        all_used(used, bytes.len())
    }
    match kind {
        Kind::Counter => read_all::<check::Counter>(bytes),
        Kind::Set => read_all::<check::Set>(bytes),
        Kind::Register => read_all::<check::Register>(bytes),
        Kind::Map => read_all::<check::Map>(bytes),
    }
}

fn all_used(used: usize, len: usize) -> Result<(), StorageError> {
    if used != len {
        return Err(StorageError::Malformed(format!(
            "{} trailing bytes",
            len - used
        )));
    }
    Ok(())
}

/// Decodes a value's CRDT state of a known kind.
pub fn decode_value(kind: Kind, bytes: &[u8]) -> Result<Value, StorageError> {
    Ok(match kind {
        Kind::Counter => Value::Counter(decode::<Counter>(bytes)?),
        Kind::Set => Value::Set(decode::<Set>(bytes)?),
        Kind::Register => Value::Register(decode::<Register>(bytes)?),
        Kind::Map => Value::Map(decode::<Map>(bytes)?),
    })
}

/// Re-reads an encoded `crdts` value as its mirror type: same bytes, sorted containers.
fn mirror<M: DeserializeOwned>(plain: &[u8]) -> M {
    decode(plain).expect("mirror types share the layout of the crdts types")
}

#[derive(Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
struct ClockM {
    dots: BTreeMap<Actor, u64>,
}

/// Byte strings of the mirror types: the same encoding as the `crdts` types' `Vec<u8>`, read
/// in one copy (see [`crate::wire`]).
type Bytes = serde_bytes::ByteBuf;

#[derive(Serialize, Deserialize)]
struct SetM {
    clock: ClockM,
    entries: BTreeMap<Bytes, ClockM>,
    deferred: BTreeMap<ClockM, BTreeSet<Bytes>>,
}

#[derive(Serialize, Deserialize)]
struct MVRegM<V: Ord> {
    vals: Vec<(ClockM, V)>,
}

impl<V: Ord> MVRegM<V> {
    fn sorted(mut self) -> Self {
        self.vals.sort();
        self
    }
}

type RegisterM = MVRegM<Option<Bytes>>;

#[derive(Serialize, Deserialize)]
struct FieldM {
    counter: Counter,
    set: SetM,
    register: RegisterM,
}

#[derive(Serialize, Deserialize)]
struct MapM {
    fields: BTreeMap<Bytes, FieldM>,
}

impl MapM {
    fn sorted(mut self) -> Self {
        for field in self.fields.values_mut() {
            field.register.vals.sort();
        }
        self
    }
}

/// The layouts of the stored values for [`validate_value`]: the same bytes as the `crdts` types
/// (and the mirror types above) read, with every sequence and map read element by element and
/// dropped, and byte strings borrowed. bincode reads a byte string as its length and that many
/// bytes whether it is taken as bytes or as a sequence of `u8`, so both accept the same input.
mod check {
    use std::marker::PhantomData;

    use serde::Deserialize;
    use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};

    use crate::value::Actor;

    /// A sequence, read and dropped.
    pub(super) struct Seq<T>(PhantomData<T>);
    /// A map, read and dropped.
    pub(super) struct Entries<K, V>(PhantomData<(K, V)>);
    /// A byte string, borrowed and dropped.
    pub(super) struct Bytes;

    impl<'de, T: Deserialize<'de>> Deserialize<'de> for Seq<T> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V<T>(PhantomData<T>);
            impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
                type Value = Seq<T>;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a sequence")
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Seq<T>, A::Error> {
                    while seq.next_element::<T>()?.is_some() {}
                    Ok(Seq(PhantomData))
                }
            }
            d.deserialize_seq(V(PhantomData))
        }
    }

    impl<'de, K: Deserialize<'de>, V: Deserialize<'de>> Deserialize<'de> for Entries<K, V> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct Vis<K, V>(PhantomData<(K, V)>);
            impl<'de, K: Deserialize<'de>, V: Deserialize<'de>> Visitor<'de> for Vis<K, V> {
                type Value = Entries<K, V>;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a map")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                    while map.next_entry::<K, V>()?.is_some() {}
                    Ok(Entries(PhantomData))
                }
            }
            d.deserialize_map(Vis(PhantomData))
        }
    }

    impl<'de> Deserialize<'de> for Bytes {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Bytes;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a byte string")
                }
                fn visit_borrowed_bytes<E>(self, _: &'de [u8]) -> Result<Bytes, E> {
                    Ok(Bytes)
                }
                fn visit_bytes<E>(self, _: &[u8]) -> Result<Bytes, E> {
                    Ok(Bytes)
                }
            }
            d.deserialize_bytes(V)
        }
    }

    /// `VClock` (and `GCounter`, a struct around one).
    type Clock = Entries<Actor, u64>;

    /// `PNCounter`: two `GCounter`s.
    #[derive(Deserialize)]
    struct PnCounter(#[allow(dead_code)] Clock, #[allow(dead_code)] Clock);

    /// [`Counter`](crate::value::Counter): total and deleted.
    #[derive(Deserialize)]
    pub(super) struct Counter(#[allow(dead_code)] PnCounter, #[allow(dead_code)] PnCounter);

    /// `Orswot`: clock, entries, deferred removes.
    #[derive(Deserialize)]
    pub(super) struct Set(
        #[allow(dead_code)] Clock,
        #[allow(dead_code)] Entries<Bytes, Clock>,
        #[allow(dead_code)] Entries<Clock, Seq<Bytes>>,
    );

    /// `MVReg` of optional byte strings.
    #[derive(Deserialize)]
    pub(super) struct Register(#[allow(dead_code)] Seq<(Clock, Option<Bytes>)>);

    /// `Field`: counter, set, register.
    #[derive(Deserialize)]
    struct Field(
        #[allow(dead_code)] Counter,
        #[allow(dead_code)] Set,
        #[allow(dead_code)] Register,
    );

    /// `Map`: field names to fields.
    #[derive(Deserialize)]
    pub(super) struct Map(#[allow(dead_code)] Entries<Bytes, Field>);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::{MapOp, SetOp, Update};

    fn actor(n: u64) -> Actor {
        Actor { node: n, epoch: 7 }
    }

    fn map_register() -> Update {
        Update::Map(MapOp::Register {
            field: b"f".to_vec(),
            value: b"v".to_vec(),
            context: None,
        })
    }

    /// A value of the update's type after `actor` applied it.
    fn applied(actor: Actor, update: &Update) -> Value {
        let mut value = Value::empty(update.kind().unwrap());
        value.apply(actor, update).unwrap();
        value
    }

    #[test]
    fn canonical_encoding_ignores_history_order() {
        let a = actor(1);
        let b = actor(2);
        let updates = [
            Update::Set(SetOp::Add(vec![b"x".to_vec(), b"y".to_vec()])),
            map_register(),
        ];
        for update in &updates {
            let kind = update.kind().unwrap();
            let (left, right) = (applied(a, update), applied(b, update));
            let mut ab = left.clone();
            ab.merge(right.clone()).unwrap();
            let mut ba = right.clone();
            ba.merge(left.clone()).unwrap();
            assert_eq!(encode_value(&ab).unwrap(), encode_value(&ba).unwrap());
            let back = decode_value(kind, &encode_value(&ab).unwrap()).unwrap();
            assert_eq!(back, ab);
        }
    }

    #[test]
    fn validation_accepts_and_refuses_exactly_what_decoding_does() {
        let a = actor(1);
        let updates = [
            Update::CounterAdd(-3),
            Update::Set(SetOp::Add(vec![b"x".to_vec(), vec![9; 300]])),
            Update::RegisterPut {
                value: vec![b'v'; 100],
                context: None,
            },
            map_register(),
        ];
        let mut values: Vec<Value> = updates.iter().map(|u| applied(a, u)).collect();
        // States with several actors, removes and deletes: every container non-empty.
        let b = actor(2);
        let set = |op| Update::Set(op);
        for (first, then) in [
            (
                Update::CounterAdd(5),
                vec![Update::CounterAdd(-2), Update::Delete],
            ),
            (
                set(SetOp::Add(vec![b"x".to_vec(), b"y".to_vec()])),
                vec![
                    set(SetOp::Remove(vec![b"x".to_vec()])),
                    set(SetOp::Add(vec![b"z".to_vec()])),
                ],
            ),
            (
                Update::Map(MapOp::Counter {
                    field: b"c".to_vec(),
                    delta: 3,
                }),
                vec![
                    map_register(),
                    Update::Map(MapOp::Set {
                        field: b"s".to_vec(),
                        op: SetOp::Add(vec![b"m".to_vec()]),
                    }),
                    Update::Map(MapOp::Remove {
                        field: b"c".to_vec(),
                    }),
                ],
            ),
        ] {
            let mut left = applied(a, &first);
            let mut right = applied(b, &first);
            for update in &then {
                right.apply(b, update).unwrap();
            }
            left.merge(right).unwrap();
            values.push(left);
        }
        for value in &values {
            let kind = value.kind();
            let mut bytes = encode_value(value).unwrap();
            assert!(validate_value(kind, &bytes).is_ok());
            // Every truncation, a trailing byte, and every single-byte change.
            let mut damaged: Vec<Vec<u8>> = (0..bytes.len()).map(|n| bytes[..n].to_vec()).collect();
            damaged.push([bytes.as_slice(), &[0]].concat());
            for i in 0..bytes.len() {
                bytes[i] ^= 0xff;
                damaged.push(bytes.clone());
                bytes[i] ^= 0xff;
            }
            for bad in damaged {
                assert_eq!(
                    validate_value(kind, &bad).is_ok(),
                    decode_value(kind, &bad).is_ok(),
                    "{kind:?} {bad:?}"
                );
            }
        }
    }

    #[test]
    fn trailing_and_garbage_bytes_are_errors() {
        let mut bytes = encode(&7u32);
        bytes.push(0);
        assert!(matches!(
            decode::<u32>(&bytes),
            Err(StorageError::Malformed(_))
        ));
        let huge_len = [0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f];
        assert!(decode::<Vec<u8>>(&huge_len).is_err());
    }
}
