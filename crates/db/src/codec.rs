//! The binary encoding used on disk and between peers (postcard: compact, serde-based).

use serde::Serialize;
use serde::de::DeserializeOwned;

pub fn enc<T: Serialize + ?Sized>(v: &T) -> Result<Vec<u8>, String> {
    postcard::to_allocvec(v).map_err(|e| format!("encode: {e}"))
}

pub fn dec<T: DeserializeOwned>(b: &[u8]) -> Result<T, String> {
    postcard::from_bytes(b).map_err(|e| format!("decode: {e}"))
}

/// Decodes a `T` at the start of `b`, ignoring what follows (a frame's id, when the rest is
/// of a newer version).
pub fn dec_prefix<T: DeserializeOwned>(b: &[u8]) -> Result<T, String> {
    postcard::take_from_bytes(b)
        .map(|(v, _)| v)
        .map_err(|e| format!("decode: {e}"))
}
