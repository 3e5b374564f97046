//! Where a block's second copy goes: the peer's disk, or — while the peer is down — the
//! spare's, a third block holder on the gate box (as the db's witness keeps the log), so a
//! PUT acknowledged while one server is down survives losing the other. The spare keeps a
//! copy until both servers hold the block again (`drop_spare_copies`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;

use crate::Error;
use crate::blocks::BlockStore;
use crate::peer::PeerClient;

/// After a failed write to the peer, writes go straight to the spare this long (a dead
/// peer behind a dropped link costs a connect timeout per try), until a pass reaches it.
const PEER_DOWN_FOR: Duration = Duration::from_secs(2);

pub struct Replicas {
    pub peer: Option<PeerClient>,
    pub spare: Option<PeerClient>,
    /// Unix milliseconds until which the peer is taken as down.
    peer_down_until: AtomicU64,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Replicas {
    pub fn new(peer: Option<PeerClient>, spare: Option<PeerClient>) -> Replicas {
        Replicas {
            peer,
            spare,
            peer_down_until: AtomicU64::new(0),
        }
    }

    fn peer_skipped(&self) -> bool {
        now_ms() < self.peer_down_until.load(Ordering::Relaxed)
    }

    /// What the last pass found: a reachable peer takes writes again at once.
    pub fn set_peer_up(&self, up: bool) {
        let until = if up {
            0
        } else {
            now_ms() + PEER_DOWN_FOR.as_millis() as u64
        };
        if up || self.spare.is_some() {
            self.peer_down_until.store(until, Ordering::Relaxed);
        }
    }

    /// Returns once a second disk holds the block, fsynced: the peer's, or the spare's
    /// when the peer fails and a spare is configured. Without a spare a failed peer fails.
    pub async fn put(&self, hash: &str, data: Bytes) -> Result<(), Error> {
        let Some(peer) = &self.peer else {
            return Ok(()); // one copy by configuration
        };
        if !self.peer_skipped() {
            match peer.put(hash, data.clone()).await {
                Ok(()) => return Ok(()),
                Err(e) if self.spare.is_none() => return Err(e),
                Err(e) => {
                    tracing::warn!(error = %e, "peer down: writing to the spare instead");
                    self.set_peer_up(false);
                }
            }
        }
        match &self.spare {
            Some(spare) => spare
                .put(hash, data)
                .await
                .map_err(|e| Error::Peer(format!("the peer is down and the spare failed: {e}"))),
            None => Err(Error::Peer("the peer is down".into())),
        }
    }

    /// A copy from another disk, checked against its name: the peer's (unless it is taken
    /// as down), else the spare's. `Ok(None)` only when every holder asked answered that it
    /// has none.
    pub async fn get(&self, hash: &str) -> Result<Option<Bytes>, Error> {
        let mut failed = None;
        let peer = self.peer.as_ref().filter(|_| !self.peer_skipped());
        for holder in [peer, self.spare.as_ref()].into_iter().flatten() {
            match holder.get(hash).await {
                Ok(Some(b)) => return Ok(Some(b)),
                Ok(None) => {}
                Err(e) => failed = Some(e),
            }
        }
        failed.map_or(Ok(None), Err)
    }

    /// Refreshes blocks on the peer before a metadata commit names them (see `gc`); the
    /// names it lacks. A peer that is down collects nothing, so with a spare standing in
    /// for it an unreachable peer is no failure.
    pub async fn touch(&self, names: &[String]) -> Result<Vec<String>, Error> {
        let Some(peer) = &self.peer else {
            return Ok(Vec::new());
        };
        if self.peer_skipped() {
            return Ok(Vec::new());
        }
        match peer.touch(names).await {
            Err(e) if self.spare.is_some() => {
                tracing::warn!(error = %e, "peer down: its blocks cannot be touched");
                self.set_peer_up(false);
                Ok(Vec::new())
            }
            other => other,
        }
    }

    /// Drops the spare's copies of blocks both servers hold again; how many it dropped.
    pub async fn drop_spare_copies(&self, local: &BlockStore) -> Result<u64, Error> {
        let (Some(peer), Some(spare)) = (&self.peer, &self.spare) else {
            return Ok(0);
        };
        let mut dropped = 0;
        for chunk in spare.list().await?.chunks(1024) {
            let mut here = Vec::new();
            for h in chunk {
                if local.has(h).await {
                    here.push(h.clone());
                }
            }
            if here.is_empty() {
                continue;
            }
            let absent = peer.touch(&here).await?;
            let both: Vec<String> = here.into_iter().filter(|h| !absent.contains(h)).collect();
            dropped += both.len() as u64;
            spare.drop_blocks(&both).await?;
        }
        if dropped > 0 {
            tracing::info!(
                dropped,
                "the spare's copies dropped: both servers hold them"
            );
        }
        Ok(dropped)
    }
}
