//! Content-addressed blocks on the local disk: a block's name is the SHA-256 of its bytes, so
//! a read verifies itself and two writes of the same content are one file.

use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::Error;

/// Largest block: an object is cut into blocks of at most this size.
pub const MAX_BLOCK: usize = 1024 * 1024;

pub fn hash_of(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// A block name must be 64 lowercase hex digits (it becomes a path: no `..`, no `/`).
pub fn valid_hash(h: &str) -> bool {
    h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[derive(Debug, Clone)]
pub struct BlockStore {
    dir: PathBuf,
}

impl BlockStore {
    pub fn open(data_dir: &Path) -> Result<BlockStore, Error> {
        let dir = data_dir.join("blocks");
        std::fs::create_dir_all(&dir).map_err(|e| Error::Io(format!("{}: {e}", dir.display())))?;
        Ok(BlockStore { dir })
    }

    fn path(&self, hash: &str) -> PathBuf {
        self.dir.join(&hash[..2]).join(hash)
    }

    /// Writes a block and fsyncs it (file, then directory) before returning: once this
    /// returns, the block survives a power cut. `hash` must be the block's SHA-256.
    pub async fn put(&self, hash: &str, data: Bytes) -> Result<(), Error> {
        if !valid_hash(hash) || hash_of(&data) != hash {
            return Err(Error::BadBlock(format!(
                "content does not match name {hash}"
            )));
        }
        let path = self.path(hash);
        tokio::task::spawn_blocking(move || write_durable(&path, &data))
            .await
            .map_err(|e| Error::Io(e.to_string()))?
    }

    /// Reads a block and checks its checksum; `Ok(None)` when this disk does not hold it.
    pub async fn get(&self, hash: &str) -> Result<Option<Bytes>, Error> {
        if !valid_hash(hash) {
            return Err(Error::BadBlock(format!("not a block name: {hash}")));
        }
        let path = self.path(hash);
        let data = match tokio::fs::read(&path).await {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::Io(format!("{}: {e}", path.display()))),
        };
        if hash_of(&data) != hash {
            // A rotten block reads as missing so the caller falls back to the peer's copy.
            tracing::error!(block = hash, "checksum mismatch on disk");
            return Ok(None);
        }
        Ok(Some(Bytes::from(data)))
    }
}

fn write_durable(path: &Path, data: &[u8]) -> Result<(), Error> {
    let io = |e: std::io::Error| Error::Io(format!("{}: {e}", path.display()));
    if path.exists() {
        // Same name, same content (content addressing); it was fsynced when first written.
        return Ok(());
    }
    let dir = path.parent().expect("block path has a parent");
    std::fs::create_dir_all(dir).map_err(io)?;
    let tmp = dir.join(format!(".tmp-{}-{:x}", std::process::id(), rand_u64()));
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(data).map_err(io)?;
    f.sync_all().map_err(io)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io)?;
    Ok(())
}

pub fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).expect("OS random source");
    u64::from_le_bytes(b)
}
