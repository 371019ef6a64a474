//! Errors of the storage engine. Each variant says what happened to the stored state: every
//! error here leaves it unchanged unless the variant says otherwise.

use crate::value::{Kind, MAX_ELEMENT_LEN, MAX_KEY_LEN, MAX_MEMBERS_PER_OP, MAX_VALUE_LEN};

/// A size bound that input or a merged value went over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// [`MAX_KEY_LEN`] bytes per key.
    Key,
    /// [`MAX_VALUE_LEN`] bytes per encoded value.
    Value,
    /// [`MAX_MEMBERS_PER_OP`] set members per operation.
    MembersPerOp,
    /// [`MAX_ELEMENT_LEN`] bytes per member, register value or field name.
    Element,
    /// 255 bytes per node id.
    NodeId,
}

impl Limit {
    /// The bound itself.
    pub fn max(self) -> usize {
        match self {
            Limit::Key => MAX_KEY_LEN,
            Limit::Value => MAX_VALUE_LEN,
            Limit::MembersPerOp => MAX_MEMBERS_PER_OP,
            Limit::Element => MAX_ELEMENT_LEN,
            Limit::NodeId => u8::MAX as usize,
        }
    }
}

/// Why a stored record could not be read. The record is never returned as a value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Corruption {
    /// Shorter than the record header.
    #[error("record of {0} bytes is shorter than its header")]
    Truncated(usize),
    /// A format version this build does not know.
    #[error("unknown record format version {0}")]
    UnknownVersion(u8),
    /// A type tag that names no type.
    #[error("unknown type tag {0}")]
    UnknownType(u8),
    /// The checksum does not match the tag and payload.
    #[error("checksum mismatch")]
    Checksum,
    /// The checksum matched but the payload does not decode.
    #[error("payload does not decode: {0}")]
    Payload(String),
}

/// Errors of the storage engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// Input or a resulting value is over a size limit. Nothing was changed; retrying the same
    /// request fails the same way.
    #[error("{limit:?} is {len} bytes or items, over the limit of {}", limit.max())]
    TooLarge {
        /// Which limit.
        limit: Limit,
        /// The size found.
        len: usize,
    },
    /// The key holds a value of another type. Nothing was changed.
    #[error("key holds a {stored}, not a {update}")]
    WrongType {
        /// The key's type.
        stored: Kind,
        /// The type the update or merged state has.
        update: Kind,
    },
    /// The stored record for the key is corrupt; it is not served. A merge of a healthy replica's
    /// state replaces it.
    #[error("corrupt record: {0}")]
    Corrupt(#[from] Corruption),
    /// Input bytes (an encoded value from a peer) did not decode. Nothing was changed.
    #[error("malformed input: {0}")]
    Malformed(String),
    /// The data directory belongs to another node id. Nothing was opened.
    #[error("data directory belongs to node {found:?}, not {expected:?}")]
    WrongNode {
        /// The node id recorded in the directory.
        found: String,
        /// The node id that tried to open it.
        expected: String,
    },
    /// The storage backend failed; the write may not have happened. A retry may help.
    #[error("storage backend: {0}")]
    Backend(String),
}

#[cfg(feature = "rocksdb")]
impl From<rocksdb::Error> for StorageError {
    fn from(e: rocksdb::Error) -> Self {
        StorageError::Backend(e.into_string())
    }
}
