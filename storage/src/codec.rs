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
    if used != bytes.len() {
        return Err(StorageError::Malformed(format!(
            "{} trailing bytes",
            bytes.len() - used
        )));
    }
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
/// the `crdts` value: they are read as the mirror type, whose byte strings are copied whole
/// where the `crdts` types take them a byte at a time. (A replica refill validates every record
/// it lacks this way and stores it as it came.)
pub fn validate_value(kind: Kind, bytes: &[u8]) -> Result<(), StorageError> {
    match kind {
        Kind::Counter => decode::<Counter>(bytes).map(drop),
        Kind::Set => decode::<SetM>(bytes).map(drop),
        Kind::Register => decode::<RegisterM>(bytes).map(drop),
        Kind::Map => decode::<MapM>(bytes).map(drop),
    }
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
        for update in &updates {
            let kind = update.kind().unwrap();
            let mut bytes = encode_value(&applied(a, update)).unwrap();
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
