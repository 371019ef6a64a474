//! The one place SWIM messages are encoded and decoded.
//!
//! Frame: one format-version byte ([`FORMAT_VERSION`]) followed by a bincode 2 (serde,
//! standard config: little-endian varints) encoding of the packet. A frame is at most
//! [`MAX_DATAGRAM`] bytes. Decoding checks the size before it allocates, rejects an unknown
//! version, trailing bytes and out-of-bounds strings; a rejected frame changes nothing.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::message::Packet;

/// Largest SWIM datagram, in bytes: fits in one QUIC datagram on any path (the QUIC minimum
/// MTU of 1200 bytes minus nothing, since datagram framing is counted by the driver's budget).
pub const MAX_DATAGRAM: usize = 1200;

/// Version of the frame layout; bumped on any incompatible change (2: digest-first push-pull).
pub const FORMAT_VERSION: u8 = 2;

/// A datagram could not be decoded (or a message could not be encoded). The member table is
/// unchanged; retrying the same bytes fails the same way.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The datagram was empty.
    #[error("empty datagram")]
    Empty,
    /// The datagram is larger than the configured limit.
    #[error("datagram of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Size of the datagram, in bytes.
        len: usize,
        /// The limit, in bytes.
        max: usize,
    },
    /// The first byte names a format this build does not speak.
    #[error("unsupported format version {0} (expected {FORMAT_VERSION})")]
    UnsupportedVersion(u8),
    /// The bytes after the version do not decode to a message, or bounds were violated.
    #[error("malformed datagram: {0}")]
    Malformed(String),
    /// A message decoded but bytes were left over.
    #[error("{0} trailing bytes after the message")]
    TrailingBytes(usize),
}

/// Most memory one decode may claim, in bytes. bincode counts in-memory sizes (a `Vec` of
/// `n` elements claims `n · size_of::<T>()`), so this is larger than a datagram; it stops a
/// forged length prefix from allocating more.
const DECODE_ALLOC_LIMIT: usize = 64 * 1024;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<DECODE_ALLOC_LIMIT>()
}

/// Encoded size of `value` without the version byte; used to budget piggybacked updates.
pub(crate) fn encoded_len<T: Serialize>(value: &T) -> usize {
    let mut counter = bincode::enc::write::SizeWriter::default();
    // Only fails when a value exceeds the limit, which bounded types cannot do.
    bincode::serde::encode_into_writer(value, &mut counter, bincode::config::standard())
        .map(|()| counter.bytes_written)
        .unwrap_or(usize::MAX)
}

pub(crate) fn encode_packet(packet: &Packet, max: usize) -> Result<Vec<u8>, CodecError> {
    let mut out = vec![FORMAT_VERSION];
    let body = bincode::serde::encode_to_vec(packet, bincode::config::standard())
        .map_err(|e| CodecError::Malformed(e.to_string()))?;
    out.extend_from_slice(&body);
    if out.len() > max {
        return Err(CodecError::TooLarge {
            len: out.len(),
            max,
        });
    }
    Ok(out)
}

pub(crate) fn decode_packet(bytes: &[u8], max: usize) -> Result<Packet, CodecError> {
    let packet: Packet = decode(bytes, max)?;
    packet.check().map_err(CodecError::Malformed)?;
    Ok(packet)
}

fn decode<T: DeserializeOwned>(bytes: &[u8], max: usize) -> Result<T, CodecError> {
    let max = max.min(MAX_DATAGRAM);
    let (&version, rest) = bytes.split_first().ok_or(CodecError::Empty)?;
    if bytes.len() > max {
        return Err(CodecError::TooLarge {
            len: bytes.len(),
            max,
        });
    }
    if version != FORMAT_VERSION {
        return Err(CodecError::UnsupportedVersion(version));
    }
    let (value, used) = bincode::serde::decode_from_slice(rest, config())
        .map_err(|e| CodecError::Malformed(e.to_string()))?;
    if used != rest.len() {
        return Err(CodecError::TrailingBytes(rest.len() - used));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::{MemberMeta, NodeId};
    use crate::message::{Body, Update};
    use proptest::prelude::*;

    fn sample() -> Packet {
        Packet {
            sender: NodeId::new("a").unwrap(),
            body: Body::Ping {
                seq: 7,
                target: NodeId::new("b").unwrap(),
            },
            updates: vec![Update::Alive {
                id: NodeId::new("c").unwrap(),
                incarnation: 3,
                meta: MemberMeta::new("10.0.0.1:7000".parse().unwrap()),
            }],
        }
    }

    #[test]
    fn round_trip_and_version_byte() {
        let bytes = encode_packet(&sample(), MAX_DATAGRAM).unwrap();
        assert_eq!(bytes[0], FORMAT_VERSION);
        assert_eq!(decode_packet(&bytes, MAX_DATAGRAM).unwrap(), sample());
        assert_eq!(
            encoded_len(&sample()) + 1,
            bytes.len(),
            "budgeting must match the real size"
        );
    }

    #[test]
    fn rejects_bad_frames() {
        let bytes = encode_packet(&sample(), MAX_DATAGRAM).unwrap();
        assert_eq!(decode_packet(&[], MAX_DATAGRAM), Err(CodecError::Empty));
        let mut wrong = bytes.clone();
        wrong[0] = 99;
        assert_eq!(
            decode_packet(&wrong, MAX_DATAGRAM),
            Err(CodecError::UnsupportedVersion(99))
        );
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(
            decode_packet(&long, MAX_DATAGRAM),
            Err(CodecError::TrailingBytes(1))
        );
        assert!(matches!(
            decode_packet(&bytes[..bytes.len() - 1], MAX_DATAGRAM),
            Err(CodecError::Malformed(_))
        ));
        assert!(matches!(
            decode_packet(&vec![FORMAT_VERSION; MAX_DATAGRAM + 1], MAX_DATAGRAM),
            Err(CodecError::TooLarge { .. })
        ));
    }

    #[test]
    fn rejects_oversized_node_id() {
        let mut p = sample();
        // Build the bytes by hand: a valid packet whose sender id is 65 bytes long.
        p.sender = NodeId::new("x".repeat(64)).unwrap();
        let mut bytes = encode_packet(&p, MAX_DATAGRAM).unwrap();
        // The id is length-prefixed (varint 64) right after the version byte.
        assert_eq!(bytes[1], 64);
        bytes[1] = 65;
        bytes.insert(2, b'x');
        assert!(matches!(
            decode_packet(&bytes, MAX_DATAGRAM),
            Err(CodecError::Malformed(_))
        ));
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1400)) {
            let _ = decode_packet(&bytes, MAX_DATAGRAM);
        }

        #[test]
        fn mutated_frames_never_panic(pos in 0usize..40, val in any::<u8>()) {
            let mut bytes = encode_packet(&sample(), MAX_DATAGRAM).unwrap();
            let pos = pos % bytes.len();
            bytes[pos] = val;
            let _ = decode_packet(&bytes, MAX_DATAGRAM);
        }
    }
}
