//! Content-addressed blocks on the local disk: a block's name is the SHA-256 of its bytes, so
//! a read verifies itself and two writes of the same content are one file.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

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

/// A block's bytes with their SHA-256 name, checked exactly once: made by hashing the bytes
/// (`Block::new`) or by checking a name a peer sent with them (`Block::named`), so storing
/// or forwarding one never hashes again (a re-cloned block was hashed twice on arrival).
#[derive(Debug, Clone)]
pub struct Block {
    hash: String,
    data: Bytes,
}

impl Block {
    pub fn new(data: Bytes) -> Block {
        Block {
            hash: hash_of(&data),
            data,
        }
    }

    /// The bytes, if they are what `hash` names.
    pub fn named(hash: &str, data: Bytes) -> Result<Block, Error> {
        if !valid_hash(hash) || hash_of(&data) != hash {
            return Err(Error::BadBlock(format!(
                "content does not match name {hash}"
            )));
        }
        Ok(Block {
            hash: hash.to_string(),
            data,
        })
    }

    pub fn hash(&self) -> &str {
        &self.hash
    }

    pub fn data(&self) -> &Bytes {
        &self.data
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn into_data(self) -> Bytes {
        self.data
    }
}

#[derive(Debug, Clone)]
pub struct BlockStore {
    dir: PathBuf,
    /// Striped by the hash's first byte: a touch (exists? then refresh) and GC's removal
    /// (still old? then unlink) of one block never interleave, so a block a writer has just
    /// refreshed is never removed under it.
    stripes: Arc<[Mutex<()>; 256]>,
}

/// One block file on disk, as a listing sees it.
#[derive(Debug, Clone)]
pub struct BlockFile {
    pub hash: String,
    pub size: u64,
    pub modified: SystemTime,
}

/// What a full check of one block found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Good,
    Missing,
    Rotten,
}

impl BlockStore {
    pub fn open(data_dir: &Path) -> Result<BlockStore, Error> {
        let dir = data_dir.join("blocks");
        std::fs::create_dir_all(&dir).map_err(|e| Error::Io(format!("{}: {e}", dir.display())))?;
        Ok(BlockStore {
            dir,
            stripes: Arc::new(std::array::from_fn(|_| Mutex::new(()))),
        })
    }

    fn stripe(&self, hash: &str) -> std::sync::MutexGuard<'_, ()> {
        let i = u8::from_str_radix(&hash[..2], 16).unwrap_or(0);
        self.stripes[i as usize]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn path(&self, hash: &str) -> PathBuf {
        self.dir.join(&hash[..2]).join(hash)
    }

    /// Writes a block and fsyncs it (file, then directory) before returning: once this
    /// returns, the block survives a power cut.
    pub async fn put(&self, block: &Block) -> Result<(), Error> {
        let me = self.clone();
        let (hash, data) = (block.hash.clone(), block.data.clone());
        tokio::task::spawn_blocking(move || {
            // Same name, same content: an existing block is only refreshed (GC's clock
            // restarts), never rewritten; it was fsynced when first written.
            if me.touch_one(&hash)? {
                return Ok(());
            }
            write_durable(&me.path(&hash), &data)
        })
        .await
        .map_err(|e| Error::Io(e.to_string()))?
    }

    /// Writes a block even when a file of that name exists (it was found rotten).
    pub async fn repair(&self, block: &Block) -> Result<(), Error> {
        let (path, data) = (self.path(&block.hash), block.data.clone());
        tokio::task::spawn_blocking(move || write_durable(&path, &data))
            .await
            .map_err(|e| Error::Io(e.to_string()))?
    }

    /// Sets a block's modification time to now; false when this disk does not hold it.
    fn touch_one(&self, hash: &str) -> Result<bool, Error> {
        let path = self.path(hash);
        let _held = self.stripe(hash);
        match std::fs::File::options().write(true).open(&path) {
            Ok(f) => f
                .set_modified(SystemTime::now())
                .map(|()| true)
                .map_err(|e| Error::Io(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::Io(format!("{}: {e}", path.display()))),
        }
    }

    /// Refreshes blocks a writer is about to reference (see `gc`); returns those absent.
    pub async fn touch(&self, hashes: Vec<String>) -> Result<Vec<String>, Error> {
        if let Some(bad) = hashes.iter().find(|h| !valid_hash(h)) {
            return Err(Error::BadBlock(format!("not a block name: {bad}")));
        }
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut missing = Vec::new();
            for h in hashes {
                if !me.touch_one(&h)? {
                    missing.push(h);
                }
            }
            Ok(missing)
        })
        .await
        .map_err(|e| Error::Io(e.to_string()))?
    }

    /// Removes a block unless it was modified (written or touched) within `grace`; its size
    /// when it was removed. The age is read under the block's stripe lock, so a concurrent
    /// touch either lands first (and the block stays) or finds it gone.
    pub fn remove_if_older(
        &self,
        hash: &str,
        grace: std::time::Duration,
    ) -> Result<Option<u64>, Error> {
        let path = self.path(hash);
        let io = |e: std::io::Error| Error::Io(format!("{}: {e}", path.display()));
        let _held = self.stripe(hash);
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(e)),
        };
        let modified = meta.modified().map_err(io)?;
        if SystemTime::now()
            .duration_since(modified)
            .is_ok_and(|age| age >= grace)
        {
            std::fs::remove_file(&path).map_err(io)?;
            return Ok(Some(meta.len()));
        }
        Ok(None)
    }

    pub async fn has(&self, hash: &str) -> bool {
        valid_hash(hash)
            && tokio::fs::try_exists(self.path(hash))
                .await
                .unwrap_or(false)
    }

    /// Every block file on this disk (temporary files of writes in progress left out).
    pub async fn list(&self) -> Result<Vec<BlockFile>, Error> {
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || list_dir(&dir))
            .await
            .map_err(|e| Error::Io(e.to_string()))?
    }

    /// Reads a block and checks it against its name.
    pub async fn verify(&self, hash: &str) -> Result<Verdict, Error> {
        if !valid_hash(hash) {
            return Err(Error::BadBlock(format!("not a block name: {hash}")));
        }
        let path = self.path(hash);
        match tokio::fs::read(&path).await {
            Ok(d) if hash_of(&d) == hash => Ok(Verdict::Good),
            Ok(_) => Ok(Verdict::Rotten),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Verdict::Missing),
            Err(e) => Err(Error::Io(format!("{}: {e}", path.display()))),
        }
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

fn list_dir(dir: &Path) -> Result<Vec<BlockFile>, Error> {
    let io = |p: &Path, e: std::io::Error| Error::Io(format!("{}: {e}", p.display()));
    let mut out = Vec::new();
    let subdirs = match std::fs::read_dir(dir) {
        Ok(d) => d,
        // A wiped disk: the data dir is gone until the first write makes it again.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io(dir, e)),
    };
    for sub in subdirs {
        let sub = sub.map_err(|e| io(dir, e))?.path();
        let Ok(files) = std::fs::read_dir(&sub) else {
            continue;
        };
        for f in files.flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            if !valid_hash(&name) {
                continue;
            }
            // Removed between the listing and here (GC): not held any more.
            let Ok(m) = f.metadata() else { continue };
            out.push(BlockFile {
                hash: name,
                size: m.len(),
                modified: m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            });
        }
    }
    Ok(out)
}

fn write_durable(path: &Path, data: &[u8]) -> Result<(), Error> {
    let io = |e: std::io::Error| Error::Io(format!("{}: {e}", path.display()));
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn age(store: &BlockStore, hash: &str, by: Duration) {
        let f = std::fs::File::options()
            .write(true)
            .open(store.path(hash))
            .unwrap();
        f.set_modified(SystemTime::now() - by).unwrap();
    }

    #[tokio::test]
    async fn writing_existing_content_restarts_its_gc_clock() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlockStore::open(dir.path()).unwrap();
        let grace = Duration::from_secs(600);
        let a = Block::new(Bytes::from_static(b"one"));
        let b = Block::new(Bytes::from_static(b"two"));
        let (ha, hb) = (a.hash().to_string(), b.hash().to_string());
        store.put(&a).await.unwrap();
        store.put(&b).await.unwrap();
        age(&store, &ha, grace * 2);
        age(&store, &hb, grace * 2);
        // A writer of the same content (a PUT, or the peer's copy of it) refreshes the block.
        store.put(&a).await.unwrap();
        assert_eq!(store.remove_if_older(&ha, grace).unwrap(), None);
        assert_eq!(store.remove_if_older(&hb, grace).unwrap(), Some(3));
        assert!(!store.has(&hb).await);
        // A touch names what is gone.
        assert_eq!(
            store.touch(vec![ha.clone(), hb.clone()]).await.unwrap(),
            vec![hb]
        );
        assert_eq!(store.verify(&ha).await.unwrap(), Verdict::Good);
    }

    #[test]
    fn a_named_block_must_match_its_name() {
        let a = Block::new(Bytes::from_static(b"one"));
        assert!(Block::named(a.hash(), Bytes::from_static(b"one")).is_ok());
        assert!(Block::named(a.hash(), Bytes::from_static(b"One")).is_err());
        assert!(Block::named("../etc", Bytes::from_static(b"one")).is_err());
    }
}
