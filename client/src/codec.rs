//! Wire encoding: stream frames and message bodies. The only module of this crate that calls
//! bincode (pinned at 2.0.1; see DESIGN.md), so a later change of encoding touches one file.
//!
//! A stream frame is a 6-byte header followed by the payload:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | format version, [`FORMAT_VERSION`] |
//! | 1 | 1 | kind, [`FrameKind`] |
//! | 2 | 4 | payload length, big-endian, at most [`MAX_FRAME_LEN`] |
//!
//! The header is checked before the payload buffer is allocated, so a peer cannot make a node
//! allocate more than [`MAX_FRAME_LEN`] per stream. Any violation is a [`CodecError`]; the
//! caller closes that stream and nothing else changes.
//!
//! Message bodies inside a frame are bincode (standard configuration, varint integers) with the
//! same size limit, and must be consumed exactly: trailing bytes are an error.

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Version of the frame layout and of the message encoding inside it.
pub const FORMAT_VERSION: u8 = 1;
/// Largest frame payload, in bytes (4 MiB).
pub const MAX_FRAME_LEN: usize = 4 * 1024 * 1024;
/// Size of a frame header, in bytes.
pub const FRAME_HEADER_LEN: usize = 6;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// An RPC request (caller → callee).
    Request = 1,
    /// A successful RPC response (callee → caller).
    Response = 2,
    /// The callee could not answer; the payload is a UTF-8 reason.
    Error = 3,
}

impl FrameKind {
    fn from_byte(byte: u8) -> Result<Self, CodecError> {
        match byte {
            1 => Ok(Self::Request),
            2 => Ok(Self::Response),
            3 => Ok(Self::Error),
            other => Err(CodecError::UnknownKind(other)),
        }
    }
}

/// A frame or message could not be encoded or decoded. Nothing was applied; the stream it came
/// from should be closed. Retrying the same bytes gives the same error.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The frame's format version is not [`FORMAT_VERSION`].
    #[error("unsupported format version {0} (this node speaks {FORMAT_VERSION})")]
    UnsupportedVersion(u8),
    /// The frame kind byte is unknown.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// The frame or message is larger than allowed.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Announced or actual length, in bytes.
        len: usize,
        /// The limit, in bytes.
        max: usize,
    },
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame")]
    Truncated,
    /// The stream ended before a frame started.
    #[error("stream ended before a frame")]
    Eof,
    /// Reading or writing the stream failed.
    #[error("stream I/O: {0}")]
    Io(#[source] std::io::Error),
    /// A message could not be encoded.
    #[error("encode: {0}")]
    Encode(String),
    /// A message body is malformed.
    #[error("malformed message: {0}")]
    Decode(String),
}

impl From<std::io::Error> for CodecError {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            CodecError::Truncated
        } else {
            CodecError::Io(e)
        }
    }
}

/// Encodes a frame header; fails if `len` exceeds [`MAX_FRAME_LEN`].
pub fn encode_header(kind: FrameKind, len: usize) -> Result<[u8; FRAME_HEADER_LEN], CodecError> {
    if len > MAX_FRAME_LEN {
        return Err(CodecError::TooLarge {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    let mut header = [0u8; FRAME_HEADER_LEN];
    header[0] = FORMAT_VERSION;
    header[1] = kind as u8;
    // Cannot truncate: MAX_FRAME_LEN < u32::MAX.
    header[2..].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(header)
}

/// Decodes and checks a frame header: version, kind, and length against `max_len` (at most
/// [`MAX_FRAME_LEN`]). Returns the kind and the payload length.
pub fn decode_header(
    header: &[u8; FRAME_HEADER_LEN],
    max_len: usize,
) -> Result<(FrameKind, usize), CodecError> {
    if header[0] != FORMAT_VERSION {
        return Err(CodecError::UnsupportedVersion(header[0]));
    }
    let kind = FrameKind::from_byte(header[1])?;
    let len = u32::from_be_bytes([header[2], header[3], header[4], header[5]]) as usize;
    let max = max_len.min(MAX_FRAME_LEN);
    if len > max {
        return Err(CodecError::TooLarge { len, max });
    }
    Ok((kind, len))
}

/// Writes one frame.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    writer: &mut W,
    kind: FrameKind,
    payload: &[u8],
) -> Result<(), CodecError> {
    let header = encode_header(kind, payload.len())?;
    writer.write_all(&header).await?;
    writer.write_all(payload).await?;
    Ok(())
}

/// Reads one frame whose payload is at most `max_len` bytes. The payload buffer is allocated
/// only after the header passed its checks.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    max_len: usize,
) -> Result<(FrameKind, Vec<u8>), CodecError> {
    let mut header = [0u8; FRAME_HEADER_LEN];
    let first = reader.read(&mut header[..1]).await?;
    if first == 0 {
        return Err(CodecError::Eof);
    }
    reader.read_exact(&mut header[1..]).await?;
    let (kind, len) = decode_header(&header, max_len)?;
    let mut payload = vec![0u8; len];
    reader.read_exact(&mut payload).await?;
    Ok((kind, payload))
}

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_FRAME_LEN>()
}

/// Encodes a message body (bincode); fails if it would exceed [`MAX_FRAME_LEN`].
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    let bytes = bincode::serde::encode_to_vec(value, bincode_config())
        .map_err(|e| CodecError::Encode(e.to_string()))?;
    if bytes.len() > MAX_FRAME_LEN {
        return Err(CodecError::TooLarge {
            len: bytes.len(),
            max: MAX_FRAME_LEN,
        });
    }
    Ok(bytes)
}

/// Decodes a message body; every byte must be consumed. Never panics on bad input, and never
/// allocates more than [`MAX_FRAME_LEN`] for it.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    if bytes.len() > MAX_FRAME_LEN {
        return Err(CodecError::TooLarge {
            len: bytes.len(),
            max: MAX_FRAME_LEN,
        });
    }
    let (value, used) = bincode::serde::decode_from_slice(bytes, bincode_config())
        .map_err(|e| CodecError::Decode(e.to_string()))?;
    if used != bytes.len() {
        return Err(CodecError::Decode(format!(
            "{} trailing bytes",
            bytes.len() - used
        )));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frame_round_trips() {
        let mut buf = Vec::new();
        write_frame(&mut buf, FrameKind::Request, b"hello")
            .await
            .unwrap();
        let (kind, payload) = read_frame(&mut &buf[..], MAX_FRAME_LEN).await.unwrap();
        assert_eq!(kind, FrameKind::Request);
        assert_eq!(payload, b"hello");
    }

    #[tokio::test]
    async fn oversize_frame_is_rejected_before_allocation() {
        // Announces 4 GiB - 1 but carries nothing: must fail on the header alone.
        let header = [
            FORMAT_VERSION,
            FrameKind::Request as u8,
            0xff,
            0xff,
            0xff,
            0xff,
        ];
        let err = read_frame(&mut &header[..], MAX_FRAME_LEN)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                CodecError::TooLarge {
                    len: 0xffff_ffff,
                    ..
                }
            ),
            "{err}"
        );
        let err = encode_header(FrameKind::Request, MAX_FRAME_LEN + 1).unwrap_err();
        assert!(matches!(err, CodecError::TooLarge { .. }));
        let header = encode_header(FrameKind::Response, 100).unwrap();
        assert!(matches!(
            decode_header(&header, 99),
            Err(CodecError::TooLarge { len: 100, max: 99 })
        ));
    }

    #[tokio::test]
    async fn garbage_frames_are_typed_errors() {
        type Check = fn(&CodecError) -> bool;
        let cases: [(&[u8], Check); 5] = [
            (b"", |e| matches!(e, CodecError::Eof)),
            (b"\x09\x01\0\0\0\0", |e| {
                matches!(e, CodecError::UnsupportedVersion(9))
            }),
            (b"\x01\x07\0\0\0\0", |e| {
                matches!(e, CodecError::UnknownKind(7))
            }),
            (b"\x01\x01\0\0", |e| matches!(e, CodecError::Truncated)),
            (b"\x01\x01\0\0\0\x05abc", |e| {
                matches!(e, CodecError::Truncated)
            }),
        ];
        for (bytes, check) in cases {
            let err = read_frame(&mut &bytes[..], MAX_FRAME_LEN)
                .await
                .unwrap_err();
            assert!(check(&err), "{bytes:?}: {err}");
        }
    }

    #[test]
    fn messages_round_trip_and_reject_garbage() {
        let value = (7u64, String::from("key"), vec![1u8, 2, 3]);
        let bytes = encode(&value).unwrap();
        assert_eq!(decode::<(u64, String, Vec<u8>)>(&bytes).unwrap(), value);
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(matches!(
            decode::<(u64, String, Vec<u8>)>(&trailing),
            Err(CodecError::Decode(_))
        ));
        // A length prefix claiming far more than the limit must fail, not allocate.
        let huge = [0xfc, 0xff, 0xff, 0xff, 0xff];
        assert!(decode::<Vec<u8>>(&huge).is_err());
        assert!(decode::<String>(&[0xff]).is_err());
    }
}
