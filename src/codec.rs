//! Versioned binary encoding for everything midasflow stores or sends.
//!
//! bincode is not self-describing: reading bytes as the wrong type decodes silently into
//! garbage. Every stored encoding therefore starts with a format version byte, and
//! decoding rejects any byte it does not know.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Format version of every encoding written by this build. 2: each kind of Raft group has
/// its own log commands and state layout (version 1 had one command enum for all groups);
/// a data dir or peer of version 1 is refused by name rather than misread.
pub const FORMAT: u8 = 2;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("empty buffer")]
    Empty,
    #[error("unknown format version {0} (this build reads version {FORMAT}; no in-place upgrade from older versions)")]
    UnknownFormat(u8),
    #[error("decode: {0}")]
    Decode(#[from] bincode::error::DecodeError),
    #[error("encode: {0}")]
    Encode(#[from] bincode::error::EncodeError),
    #[error("{0} trailing bytes after the value")]
    Trailing(usize),
    #[error("{0} bytes is too large to decode")]
    TooLarge(usize),
}

/// How many bytes of claims bincode may make per input byte. Every claim it makes on the
/// serde path belongs to bytes the input really holds, at most 8 claimed per byte read (a
/// one-byte varint read as a `u64` or a length), so a limit of 8 × the input never rejects
/// a valid encoding. Without a limit, bincode allocates a `String`'s claimed length before
/// reading it: a 12-byte body could ask for terabytes and abort the process.
pub const CLAIMS_PER_INPUT_BYTE: usize = 8;

/// bincode's limit is a const generic: decoding picks the smallest of these buckets that
/// holds 8 × the input, so an allocation is bounded by a small multiple of the input size
/// (which each route bounds in turn).
fn decode_limited<T: DeserializeOwned>(body: &[u8]) -> Result<T, CodecError> {
    use bincode::config::standard;
    use bincode::serde::decode_from_slice;
    let claims = body.len().saturating_mul(CLAIMS_PER_INPUT_BYTE);
    let (value, used) = if claims <= 1 << 16 {
        decode_from_slice(body, standard().with_limit::<{ 1 << 16 }>())?
    } else if claims <= 1 << 22 {
        decode_from_slice(body, standard().with_limit::<{ 1 << 22 }>())?
    } else if claims <= 1 << 28 {
        decode_from_slice(body, standard().with_limit::<{ 1 << 28 }>())?
    } else if claims <= 1 << 34 {
        decode_from_slice(body, standard().with_limit::<{ 1 << 34 }>())?
    } else {
        return Err(CodecError::TooLarge(body.len()));
    };
    if used != body.len() {
        return Err(CodecError::Trailing(body.len() - used));
    }
    Ok(value)
}

/// Encodes `value` behind the format version byte.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = vec![FORMAT];
    bincode::serde::encode_into_std_write(value, &mut out, bincode::config::standard())?;
    Ok(out)
}

/// Decodes bytes written by [`encode`], checking the format byte and that nothing trails.
/// Safe on untrusted bytes: nothing it allocates exceeds a small multiple of `bytes.len()`.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (&format, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    if format != FORMAT {
        return Err(CodecError::UnknownFormat(format));
    }
    decode_limited(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_format_byte() {
        let value: (u64, Option<String>, Vec<u8>) = (7, Some("k".into()), vec![1, 2, 3]);
        let bytes = encode(&value).unwrap();
        assert_eq!(bytes[0], FORMAT);
        let back: (u64, Option<String>, Vec<u8>) = decode(&bytes).unwrap();
        assert_eq!(back, value);
    }

    #[test]
    fn rejects_unknown_format_empty_and_trailing() {
        let mut bytes = encode(&5u64).unwrap();
        assert!(matches!(decode::<u64>(&[]), Err(CodecError::Empty)));
        bytes.push(0);
        assert!(matches!(decode::<u64>(&bytes), Err(CodecError::Trailing(1))));
        bytes[0] = 9;
        assert!(matches!(decode::<u64>(&bytes), Err(CodecError::UnknownFormat(9))));
    }

    /// The remote-abort finding: a length prefix claiming 2^40 bytes for a string. Before
    /// the limit, bincode allocated the claimed length up front and the process aborted.
    #[test]
    fn huge_length_prefix_is_an_error_not_an_allocation() {
        // 253 marks a varint whose value follows as a little-endian u64.
        let mut bytes = vec![FORMAT, 253];
        bytes.extend_from_slice(&(1u64 << 40).to_le_bytes()[..]);
        assert!(decode::<String>(&bytes).is_err());
        assert!(decode::<(u64, String)>(&[FORMAT, 1, 253, 0, 0, 0, 0, 0, 1, 0, 0]).is_err());
        assert!(decode::<Vec<Vec<u8>>>(&bytes).is_err());
    }

    proptest::proptest! {
        /// Arbitrary bytes never panic any decoder, and a valid value always round-trips
        /// under the limit.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let mut framed = vec![FORMAT];
            framed.extend_from_slice(&bytes);
            let _ = decode::<String>(&framed);
            let _ = decode::<Vec<(Vec<u8>, Vec<u8>)>>(&framed);
            let _ = decode::<crate::node::Heartbeat>(&framed);
            let _ = decode::<crate::raft::Entry<crate::shard::store::ShardKind>>(&framed);
            let _ = decode::<crate::raft::Entry<crate::placement::store::PdKind>>(&framed);
            let _ = decode::<openraft::raft::AppendEntriesRequest<crate::shard::store::ShardConfig>>(&framed);
            let _ = decode::<openraft::raft::AppendEntriesRequest<crate::placement::store::PdConfig>>(&framed);
            let _ = decode::<openraft::raft::InstallSnapshotRequest<crate::shard::store::ShardConfig>>(&framed);
            let _ = decode::<openraft::raft::VoteRequest<u64>>(&framed);
            let _ = decode::<crate::shard::KeyRecord>(&framed);
        }

        #[test]
        fn values_round_trip(key in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64), n in proptest::prelude::any::<u64>()) {
            let value = (n, key.clone(), String::from_utf8_lossy(&key).into_owned());
            let back: (u64, Vec<u8>, String) = decode(&encode(&value).unwrap()).unwrap();
            proptest::prop_assert_eq!(back, value);
        }
    }
}
