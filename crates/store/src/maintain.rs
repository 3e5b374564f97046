//! The background pass, every `catalogue_interval_secs`: list this disk, walk the metadata,
//! collect unreferenced blocks past their grace, publish the catalogue record, then copy
//! every referenced block placed on this server (`placement`) that this disk lacks from
//! another holder (re-cloning a returning or wiped server) — or from the spare — at a capped
//! rate; once this disk lacks nothing and every server is up, the spare's copies whose
//! placed servers hold them are dropped, and so are this disk's copies of blocks placed
//! elsewhere (a fallback's, or moved by a change of servers or weights).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;

use crate::Error;
use crate::catalogue::{self, Referenced};
use crate::meta::now_secs;
use crate::s3::Store;
use crate::stats::{ServerStatus, bump};

/// Blocks copied at once while re-cloning (fsync latency and the peer round trip hide
/// behind the others; the byte cap still bounds the bandwidth). 4 gave ~45 blocks/s on the
/// shared 2-core bench machine, so a wiped store of mostly 4 KiB blocks came back at
/// 14 MB/s; 16 gave 35 MB/s with clients keeping the same share (bench/store/RESULTS.md).
const RECLONE_PARALLEL: usize = 16;
/// How often a running re-clone republishes its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

pub struct Maintainer {
    pub store: Store,
    pub name: String,
    pub interval: Duration,
    pub reclone_bytes_per_s: f64,
}

impl Maintainer {
    pub async fn run(self: Arc<Self>) {
        loop {
            if let Err(e) = self.pass().await {
                tracing::warn!(error = %e, "catalogue pass failed; next one in {:?}", self.interval);
            }
            tokio::time::sleep(self.interval).await;
        }
    }

    async fn publish(&self) {
        let mut st = self.store.stats.snapshot();
        st.name.clone_from(&self.name);
        st.updated = now_secs();
        st.interval_secs = self.interval.as_secs_f64();
        if let Err(e) = catalogue::publish(&self.store.db, &st).await {
            tracing::warn!(error = %e, "cannot publish the catalogue record");
        }
    }

    async fn pass(&self) -> Result<(), Error> {
        let local = self.store.blocks.list().await?;
        let marked_at = Instant::now();
        let refs = catalogue::walk(&self.store.db).await?;
        let remote = &self.store.remote;
        let held: HashSet<&str> = local.iter().map(|b| b.hash.as_str()).collect();
        let mine: HashSet<&str> = refs
            .blocks
            .keys()
            .map(String::as_str)
            .filter(|h| remote.placed_here(h))
            .collect();
        let unreferenced: Vec<_> = local
            .iter()
            .filter(|b| !refs.blocks.contains_key(&b.hash))
            .collect();
        let misplaced: Vec<String> = local
            .iter()
            .filter(|b| refs.blocks.contains_key(&b.hash) && !mine.contains(b.hash.as_str()))
            .map(|b| b.hash.clone())
            .collect();
        let mut missing: Vec<(String, u64)> = refs
            .blocks
            .iter()
            .filter(|(h, _)| mine.contains(h.as_str()) && !held.contains(h.as_str()))
            .map(|(h, s)| (h.clone(), *s))
            .collect();
        missing.sort();
        let pings = remote
            .others()
            .map(|(i, c)| async move { (i, c.ping().await.is_ok()) });
        let mut others = 0;
        let mut up = 0;
        for (i, ok) in futures::future::join_all(pings).await {
            remote.set_up(i, ok);
            others += 1;
            up += usize::from(ok);
        }
        let all_up = up == others;
        let weight = remote.servers[remote.me].entry.weight;
        self.store.stats.update(|st| {
            count(
                st,
                &local,
                &refs,
                &held,
                &mine,
                unreferenced.len(),
                &missing,
            );
            st.misplaced_blocks = misplaced.len() as u64;
            st.peer_up = others > 0 && all_up;
            st.weight = weight;
        });

        let candidates: Vec<String> = unreferenced.iter().map(|b| b.hash.clone()).collect();
        self.store.collect(candidates, marked_at).await?;
        self.publish().await;
        if !missing.is_empty() && (up > 0 || remote.spare.is_some()) {
            self.reclone(missing, all_up).await?;
        } else if missing.is_empty() && all_up {
            remote.drop_spare_copies(&self.store.blocks).await?;
        }
        if all_up && !misplaced.is_empty() {
            self.drop_misplaced(misplaced).await?;
        }
        Ok(())
    }

    /// Removes this disk's copies of blocks placed elsewhere once every placed server holds
    /// them (a fallback's copies after the server it stood in for is back, or blocks whose
    /// placement moved when servers or weights changed).
    async fn drop_misplaced(&self, misplaced: Vec<String>) -> Result<(), Error> {
        let mut dropped = 0u64;
        for chunk in misplaced.chunks(1024) {
            let confirmed = self
                .store
                .remote
                .confirmed(chunk, &self.store.blocks)
                .await?;
            let blocks = self.store.blocks.clone();
            dropped += tokio::task::spawn_blocking(move || {
                let mut n = 0u64;
                for h in &confirmed {
                    n += u64::from(blocks.remove_if_older(h, Duration::ZERO)?.is_some());
                }
                Ok::<u64, Error>(n)
            })
            .await
            .map_err(|e| Error::Io(e.to_string()))??;
        }
        if dropped > 0 {
            tracing::info!(
                dropped,
                "copies placed on other servers dropped: they hold them"
            );
            self.store
                .stats
                .update(|st| st.misplaced_blocks = st.misplaced_blocks.saturating_sub(dropped));
        }
        Ok(())
    }

    /// Copies `missing` from the other servers (or the spare: see `replicas`), at most
    /// `reclone_bytes_per_s`. A block no holder has is lost only if every server was asked.
    async fn reclone(&self, missing: Vec<(String, u64)>, all_up: bool) -> Result<(), Error> {
        let total_bytes = missing.iter().map(|(_, s)| s).sum();
        self.store.stats.update(|st| {
            st.reclone = crate::stats::RecloneProgress {
                active: true,
                total_blocks: missing.len() as u64,
                total_bytes,
                started: now_secs(),
                ..Default::default()
            };
        });
        tracing::info!(
            blocks = missing.len(),
            bytes = total_bytes,
            "re-cloning missing blocks from the peer"
        );
        let began = Instant::now();
        let pace = Pace::new(self.reclone_bytes_per_s);
        let store = &self.store;
        let mut copies = futures::stream::iter(missing)
            .map(|(hash, size)| {
                let pace = &pace;
                async move {
                    if store.blocks.has(&hash).await {
                        return Ok((0, true)); // written by a PUT since the listing
                    }
                    pace.take(size).await;
                    match store.remote.get(&hash).await? {
                        Some(block) => {
                            store.blocks.put(&block).await?;
                            Ok((block.len() as u64, true))
                        }
                        None => Ok((0, false)),
                    }
                }
            })
            .buffer_unordered(RECLONE_PARALLEL);
        let mut last_publish = Instant::now();
        let mut outcome = Ok(());
        let mut unfound = 0;
        while let Some(r) = copies.next().await {
            match r {
                Ok((n, found)) => {
                    unfound += u64::from(!found);
                    bump(&store.stats.reclone_blocks, u64::from(n > 0));
                    bump(&store.stats.reclone_bytes, n);
                    store.stats.update(|st| {
                        st.reclone.done_blocks += 1;
                        st.reclone.done_bytes += n;
                        st.reclone.lost_blocks += u64::from(!found && all_up);
                    });
                }
                Err(e) => {
                    outcome = Err(e);
                    break;
                }
            }
            if last_publish.elapsed() >= PROGRESS_EVERY {
                self.publish().await;
                last_publish = Instant::now();
            }
        }
        drop(copies);
        store.stats.update(|st| {
            st.reclone.active = false;
            st.reclone.finished = now_secs();
            st.reclone.elapsed_ms = began.elapsed().as_millis() as u64;
            if outcome.is_ok() && unfound == 0 {
                st.missing_blocks = 0;
                st.missing_bytes = 0;
                st.objects_held = st.objects;
            }
        });
        self.publish().await;
        outcome
    }
}

/// The record's counts: objects are those with a block placed here (`mine`), and empty ones
/// (every server holds those), held when every such block is on this disk.
fn count(
    st: &mut ServerStatus,
    local: &[crate::blocks::BlockFile],
    refs: &Referenced,
    held: &HashSet<&str>,
    mine: &HashSet<&str>,
    unreferenced: usize,
    missing: &[(String, u64)],
) {
    st.blocks = local.len() as u64;
    st.bytes = local.iter().map(|b| b.size).sum();
    let placed = || {
        refs.objects
            .iter()
            .filter(|blocks| blocks.is_empty() || blocks.iter().any(|h| mine.contains(h.as_str())))
    };
    st.objects = placed().count() as u64;
    st.objects_held = placed()
        .filter(|blocks| {
            blocks
                .iter()
                .all(|h| !mine.contains(h.as_str()) || held.contains(h.as_str()))
        })
        .count() as u64;
    st.missing_blocks = missing.len() as u64;
    st.missing_bytes = missing.iter().map(|(_, s)| s).sum();
    st.unreferenced_blocks = unreferenced as u64;
}

/// Spaces out starts so that bytes started never run ahead of `bytes_per_s`.
struct Pace {
    bytes_per_s: f64,
    next: std::sync::Mutex<Instant>,
}

impl Pace {
    fn new(bytes_per_s: f64) -> Pace {
        Pace {
            bytes_per_s,
            next: std::sync::Mutex::new(Instant::now()),
        }
    }

    async fn take(&self, bytes: u64) {
        let at = {
            let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
            let start = (*next).max(Instant::now());
            *next = start + Duration::from_secs_f64(bytes as f64 / self.bytes_per_s);
            start
        };
        tokio::time::sleep_until(at.into()).await;
    }
}
