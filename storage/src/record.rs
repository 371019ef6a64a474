//! The stored record: `version (1 byte) | type tag (1 byte) | checksum (16 bytes) | payload`.
//!
//! The checksum is xxh3-128 over the type tag and the payload. Because payloads are canonical
//! (see [`codec`](crate::codec)), the checksum also serves as the value's hash in the Merkle
//! trees: equal states have equal checksums on every replica.

use xxhash_rust::xxh3::{Xxh3, xxh3_128};

use crate::codec;
use crate::error::{Corruption, StorageError};
use crate::value::{Kind, MAX_VALUE_LEN, Value};

/// The record format this build writes and reads.
pub const FORMAT_VERSION: u8 = 1;
/// Bytes before the payload.
pub const HEADER_LEN: usize = 2 + 16;

/// A 128-bit value hash (the record checksum).
pub type ValueHash = u128;

/// A value ready to store: its canonical record bytes and their checksum.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    bytes: Vec<u8>,
}

impl Record {
    /// Encodes a value; errors if its encoding is over [`MAX_VALUE_LEN`].
    pub fn encode(value: &Value) -> Result<Record, StorageError> {
        let payload = codec::encode_value(value)?;
        let tag = value.kind().tag();
        let mut bytes = Vec::with_capacity(HEADER_LEN + payload.len());
        bytes.push(FORMAT_VERSION);
        bytes.push(tag);
        bytes.extend_from_slice(&checksum(tag, &payload).to_le_bytes());
        bytes.extend_from_slice(&payload);
        Ok(Record { bytes })
    }

    /// Wraps stored bytes after checking the header and checksum (not the payload).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Record, Corruption> {
        let (kind, stored, payload) = split(&bytes)?;
        if payload.len() > MAX_VALUE_LEN || checksum(kind.tag(), payload) != stored {
            return Err(Corruption::Checksum);
        }
        Ok(Record { bytes })
    }

    /// The record's bytes, as stored.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The record's bytes, as stored, without a copy.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    /// The value's type.
    pub fn kind(&self) -> Kind {
        Kind::from_tag(self.bytes[1]).expect("checked on construction")
    }

    /// The checksum, which is also the value hash.
    pub fn hash(&self) -> ValueHash {
        header_hash(&self.bytes).expect("checked on construction")
    }

    /// Decodes the value.
    pub fn decode(&self) -> Result<Value, Corruption> {
        codec::decode_value(self.kind(), &self.bytes[HEADER_LEN..])
            .map_err(|e| Corruption::Payload(e.to_string()))
    }

    /// Checks that the payload decodes (exactly as [`decode`](Self::decode) would), without
    /// building the value.
    pub fn validate(&self) -> Result<(), Corruption> {
        codec::validate_value(self.kind(), &self.bytes[HEADER_LEN..])
            .map_err(|e| Corruption::Payload(e.to_string()))
    }
}

/// Reads the checksum from a record's header without verifying it (used to rebuild Merkle trees
/// at startup without hashing every payload). Errors if the header is malformed.
pub fn header_hash(bytes: &[u8]) -> Result<ValueHash, Corruption> {
    split(bytes).map(|(_, hash, _)| hash)
}

fn split(bytes: &[u8]) -> Result<(Kind, ValueHash, &[u8]), Corruption> {
    if bytes.len() < HEADER_LEN {
        return Err(Corruption::Truncated(bytes.len()));
    }
    if bytes[0] != FORMAT_VERSION {
        return Err(Corruption::UnknownVersion(bytes[0]));
    }
    let kind = Kind::from_tag(bytes[1]).ok_or(Corruption::UnknownType(bytes[1]))?;
    let hash = u128::from_le_bytes(bytes[2..HEADER_LEN].try_into().expect("16 bytes"));
    Ok((kind, hash, &bytes[HEADER_LEN..]))
}

/// Payloads shorter than this are hashed in one call over a copy on the stack: xxh3's
/// streaming state costs several times the hash itself on inputs this small, and every record
/// a node sends, receives or reads pays for this hash (a replica refill hashes each record on
/// both sides). Longer ones are hashed streaming, without the copy. Both give the same hash.
const ONE_CALL: usize = 512;

fn checksum(tag: u8, payload: &[u8]) -> ValueHash {
    if payload.len() < ONE_CALL {
        let mut buf = [0u8; ONE_CALL];
        buf[0] = tag;
        buf[1..=payload.len()].copy_from_slice(payload);
        xxh3_128(&buf[..=payload.len()])
    } else {
        streaming_checksum(tag, payload)
    }
}

fn streaming_checksum(tag: u8, payload: &[u8]) -> ValueHash {
    let mut h = Xxh3::new();
    h.update(&[tag]);
    h.update(payload);
    h.digest128()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_one_call_checksum_equals_the_streaming_one() {
        // Stored records keep their checksums: both forms must agree at every length, around
        // the switch from one to the other above all.
        let bytes: Vec<u8> = (0..2 * ONE_CALL).map(|i| (i * 7 + 3) as u8).collect();
        for len in 0..bytes.len() {
            for tag in [0, 1, 4, 255] {
                assert_eq!(
                    checksum(tag, &bytes[..len]),
                    streaming_checksum(tag, &bytes[..len]),
                    "length {len}, tag {tag}"
                );
            }
        }
    }
}
