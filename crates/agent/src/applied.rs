//! The cluster file an agent was last given (by `citadel apply` or a peer), kept in its state
//! directory with a generation number and its sha256: a restarted agent comes back to it with
//! no operator, and agents compare `(generation, sha256)` to find who is behind.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::Digest;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// 0: the file the agent was started with (`--file`), never spread to peers; each
    /// `apply` makes the next one.
    pub generation: u64,
    pub sha256: String,
    pub text: String,
}

pub fn sha256(text: &str) -> String {
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What a host with no file yet runs: itself and no jails, until an apply or a peer. (A
/// cluster file needs a segment; this one holds no address anyone uses.)
pub fn placeholder(host: &str) -> String {
    format!(
        "[cluster]\nname = \"unapplied\"\n\n[segments]\nnone = \"127.255.255.255/32\"\n\n[[host]]\nname = \"{host}\"\n"
    )
}

impl Applied {
    pub fn new(generation: u64, text: String) -> Applied {
        Applied {
            generation,
            sha256: sha256(&text),
            text,
        }
    }

    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join("applied.json")
    }

    /// How messages name this file.
    pub fn origin(&self) -> String {
        format!("the applied file (generation {})", self.generation)
    }

    /// The stored file, if any; one whose text does not match its sha256 is refused.
    pub fn load(state_dir: &Path) -> Result<Option<Applied>, String> {
        let path = Self::path(state_dir);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("reading {}: {e}", path.display())),
        };
        let a: Applied = serde_json::from_slice(&bytes)
            .map_err(|e| format!("{}: {e}; remove it to start from --file", path.display()))?;
        if sha256(&a.text) != a.sha256 {
            return Err(format!(
                "{}: the file does not match its sha256; remove it to start from --file",
                path.display()
            ));
        }
        Ok(Some(a))
    }

    /// Writes it whole or not at all (a temporary file, fsync, rename).
    pub fn store(&self, state_dir: &Path) -> std::io::Result<()> {
        let path = Self::path(state_dir);
        let tmp = path.with_extension("json.tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec(self).map_err(std::io::Error::other)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(state_dir)?.sync_all()
    }

    /// Whether this file should replace `other`: a higher generation, or the same one with the
    /// greater sha256 (two applies of one generation: every agent settles on the same file).
    /// Generation 0 (a local `--file`) never replaces anything.
    pub fn supersedes(&self, other: &Applied) -> bool {
        self.generation > 0 && (self.generation, &self.sha256) > (other.generation, &other.sha256)
    }
}
