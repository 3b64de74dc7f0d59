//! Versioned binary encoding for everything midasflow stores or sends.
//!
//! bincode is not self-describing: reading bytes as the wrong type decodes silently into
//! garbage. Every stored encoding therefore starts with a format version byte, and
//! decoding rejects any byte it does not know.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Format version of every encoding written by this build.
pub const FORMAT_V1: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("empty buffer")]
    Empty,
    #[error("unknown format version {0}")]
    UnknownFormat(u8),
    #[error("decode: {0}")]
    Decode(#[from] bincode::error::DecodeError),
    #[error("encode: {0}")]
    Encode(#[from] bincode::error::EncodeError),
    #[error("{0} trailing bytes after the value")]
    Trailing(usize),
}

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Encodes `value` behind the format version byte.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = vec![FORMAT_V1];
    bincode::serde::encode_into_std_write(value, &mut out, config())?;
    Ok(out)
}

/// Decodes bytes written by [`encode`], checking the format byte and that nothing trails.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (&format, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    if format != FORMAT_V1 {
        return Err(CodecError::UnknownFormat(format));
    }
    let (value, used) = bincode::serde::decode_from_slice(body, config())?;
    if used != body.len() {
        return Err(CodecError::Trailing(body.len() - used));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_format_byte() {
        let value: (u64, Option<String>, Vec<u8>) = (7, Some("k".into()), vec![1, 2, 3]);
        let bytes = encode(&value).unwrap();
        assert_eq!(bytes[0], FORMAT_V1);
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
}
