//! The binary encoding used on disk and between peers (postcard: compact, serde-based).

use serde::Serialize;
use serde::de::DeserializeOwned;

pub fn enc<T: Serialize + ?Sized>(v: &T) -> Result<Vec<u8>, String> {
    postcard::to_allocvec(v).map_err(|e| format!("encode: {e}"))
}

pub fn dec<T: DeserializeOwned>(b: &[u8]) -> Result<T, String> {
    postcard::from_bytes(b).map_err(|e| format!("decode: {e}"))
}
