//! Garbage collection of blocks no object references.
//!
//! The rule that makes it safe against a concurrent PUT of the same content (a writer
//! writes or touches its blocks, then commits metadata naming them):
//! - a block is removed only if it was neither written nor touched for `gc_grace`, checked
//!   under the block's stripe lock at the moment of removal (`BlockStore::remove_if_older`);
//! - and only from a mark (metadata walk) younger than `gc_grace / 2`;
//! - a writer commits metadata only within `gc_grace / 4` of its first block write or its
//!   last touch of all its blocks on both servers (`Store::keep_blocks`); a slower one
//!   touches them again first, and fails (503) if one was removed meanwhile.
//!
//! So a removed block was last written or touched at least `gc_grace` ago, the mark that
//! condemned it was taken after `gc_grace / 2` past that, hence after any commit that
//! followed within `gc_grace / 4` + the commit time: the mark saw the reference. The commit
//! itself must take less than `gc_grace / 4` (the db client gives up after about 11 s).

use std::time::Instant;

use crate::Error;
use crate::meta::now_secs;
use crate::s3::Store;

impl Store {
    /// Removes the candidates (unreferenced at a mark taken at `marked_at`) that are past
    /// the grace. Stops early once the mark is too old to trust.
    pub async fn collect(&self, candidates: Vec<String>, marked_at: Instant) -> Result<(), Error> {
        let (grace, blocks) = (self.gc_grace, self.blocks.clone());
        let (removed, freed) = tokio::task::spawn_blocking(move || {
            let (mut removed, mut freed) = (0u64, 0u64);
            for hash in candidates {
                if marked_at.elapsed() >= grace / 2 {
                    break;
                }
                if let Some(size) = blocks.remove_if_older(&hash, grace)? {
                    removed += 1;
                    freed += size;
                }
            }
            Ok::<_, Error>((removed, freed))
        })
        .await
        .map_err(|e| Error::Io(e.to_string()))??;
        if removed > 0 {
            tracing::info!(removed, freed, "collected unreferenced blocks");
        }
        self.stats.update(|st| {
            st.gc.passes += 1;
            st.gc.removed_blocks += removed;
            st.gc.freed_bytes += freed;
            st.gc.last = now_secs();
            st.unreferenced_blocks = st.unreferenced_blocks.saturating_sub(removed);
            st.blocks = st.blocks.saturating_sub(removed);
            st.bytes = st.bytes.saturating_sub(freed);
        });
        Ok(())
    }
}
