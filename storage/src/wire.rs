//! Serde field helpers for byte strings in messages (`#[serde(with = "...")]`).
//!
//! Serde sees a `Vec<u8>` as a sequence of `u8`, so bincode decodes it one element at a time,
//! with a call and a capacity check per byte; records, keys and values are most of what nodes
//! send each other, and a profile of a replica refill found that per-byte work among its top
//! costs. These helpers carry the same fields as byte strings, which bincode copies in one
//! go. The encoded bytes do not change (bincode writes a byte string and a sequence of `u8`
//! alike: a varint length, then the bytes), so nodes with and without them understand each
//! other; `tests` below checks that.
//!
//! For a plain `Vec<u8>` or `Option<Vec<u8>>` field, use `serde_bytes` itself.

use serde::{Deserialize, Deserializer, Serializer};
use serde_bytes::{ByteBuf, Bytes};

/// `(key, record)`.
type Pair = (Vec<u8>, Vec<u8>);
/// `(partition, key, record)`.
type Triple = (u32, Vec<u8>, Vec<u8>);

/// `Vec<Vec<u8>>`: a list of keys.
pub mod list {
    use super::*;

    /// Serializes as a sequence of byte strings.
    pub fn serialize<S: Serializer>(list: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(list.iter().map(|b| Bytes::new(b)))
    }

    /// Deserializes a sequence of byte strings.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        Ok(Vec::<ByteBuf>::deserialize(d)?
            .into_iter()
            .map(ByteBuf::into_vec)
            .collect())
    }
}

/// `Vec<(Vec<u8>, Vec<u8>)>`: `(key, record)` pairs.
pub mod pairs {
    use super::*;

    /// Serializes as a sequence of byte-string pairs.
    pub fn serialize<S: Serializer>(pairs: &[Pair], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(pairs.iter().map(|(a, b)| (Bytes::new(a), Bytes::new(b))))
    }

    /// Deserializes a sequence of byte-string pairs.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Pair>, D::Error> {
        Ok(Vec::<(ByteBuf, ByteBuf)>::deserialize(d)?
            .into_iter()
            .map(|(a, b)| (a.into_vec(), b.into_vec()))
            .collect())
    }
}

/// `Vec<(u32, Vec<u8>, Vec<u8>)>`: `(partition, key, record)` triples.
pub mod triples {
    use super::*;

    /// Serializes as a sequence of `(u32, bytes, bytes)`.
    pub fn serialize<S: Serializer>(triples: &[Triple], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(
            triples
                .iter()
                .map(|(p, a, b)| (p, Bytes::new(a), Bytes::new(b))),
        )
    }

    /// Deserializes a sequence of `(u32, bytes, bytes)`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Triple>, D::Error> {
        Ok(Vec::<(u32, ByteBuf, ByteBuf)>::deserialize(d)?
            .into_iter()
            .map(|(p, a, b)| (p, a.into_vec(), b.into_vec()))
            .collect())
    }
}

/// `Vec<(Vec<u8>, u128)>`: `(key, hash)` pairs.
pub mod hashed {
    use super::*;

    /// Serializes as a sequence of `(bytes, u128)`.
    pub fn serialize<S: Serializer>(pairs: &[(Vec<u8>, u128)], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(pairs.iter().map(|(a, h)| (Bytes::new(a), h)))
    }

    /// Deserializes a sequence of `(bytes, u128)`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(Vec<u8>, u128)>, D::Error> {
        Ok(Vec::<(ByteBuf, u128)>::deserialize(d)?
            .into_iter()
            .map(|(a, h)| (a.into_vec(), h))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    use crate::codec::{decode, encode};

    /// The same fields without the helpers: what the bytes looked like before them.
    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Plain {
        key: Vec<u8>,
        maybe: Option<Vec<u8>>,
        list: Vec<Vec<u8>>,
        pairs: Vec<(Vec<u8>, Vec<u8>)>,
        triples: Vec<(u32, Vec<u8>, Vec<u8>)>,
        hashed: Vec<(Vec<u8>, u128)>,
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Helped {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        maybe: Option<Vec<u8>>,
        #[serde(with = "super::list")]
        list: Vec<Vec<u8>>,
        #[serde(with = "super::pairs")]
        pairs: Vec<(Vec<u8>, Vec<u8>)>,
        #[serde(with = "super::triples")]
        triples: Vec<(u32, Vec<u8>, Vec<u8>)>,
        #[serde(with = "super::hashed")]
        hashed: Vec<(Vec<u8>, u128)>,
    }

    #[test]
    fn byte_strings_encode_exactly_as_sequences_of_u8() {
        // Lengths on both sides of bincode's one-byte varint limit (250).
        let long = vec![7u8; 300];
        let plain = Plain {
            key: b"k".to_vec(),
            maybe: Some(long.clone()),
            list: vec![vec![], long.clone(), b"x".to_vec()],
            pairs: vec![(b"a".to_vec(), long.clone()), (vec![], vec![1, 2])],
            triples: vec![(3, b"p".to_vec(), long.clone())],
            hashed: vec![(long.clone(), u128::MAX)],
        };
        let helped = Helped {
            key: plain.key.clone(),
            maybe: plain.maybe.clone(),
            list: plain.list.clone(),
            pairs: plain.pairs.clone(),
            triples: plain.triples.clone(),
            hashed: plain.hashed.clone(),
        };
        let bytes = encode(&plain);
        assert_eq!(encode(&helped), bytes);
        assert_eq!(decode::<Helped>(&bytes).unwrap(), helped);
        assert_eq!(decode::<Plain>(&encode(&helped)).unwrap(), plain);
        let none = Plain {
            maybe: None,
            ..plain
        };
        let helped_none = Helped {
            maybe: None,
            ..helped
        };
        assert_eq!(encode(&helped_none), encode(&none));
    }
}
