//! Where a block's copies go: the two servers `placement` names for it (this one or others,
//! by weight) — or, while one of them is down, the next server in its ranking, and then the
//! spare (a third block holder on the gate box, as the db's witness keeps the log), so a
//! PUT acknowledged while one server is down survives losing another. A copy off its
//! placed servers (a fallback's, the spare's) is dropped once both placed servers hold the
//! block (`confirmed`, used by `maintain`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::Error;
use crate::blocks::{Block, BlockStore};
use crate::config::ServerEntry;
use crate::peer::PeerClient;
use crate::placement::{self, COPIES, Weighted};

/// After a failed write to a server, writes skip it this long (a dead box behind a dropped
/// link costs a connect timeout per try), until a pass reaches it.
const DOWN_FOR: Duration = Duration::from_secs(2);

/// One data server: this one (`client` None) or another's block service.
pub struct Server {
    pub entry: ServerEntry,
    pub client: Option<PeerClient>,
    /// Unix milliseconds until which it is taken as down.
    down_until: AtomicU64,
}

impl Weighted for Server {
    fn name(&self) -> &str {
        &self.entry.name
    }
    fn weight(&self) -> f64 {
        self.entry.weight
    }
}

pub struct Replicas {
    /// Every data server, this one included (at `me`).
    pub servers: Vec<Server>,
    pub me: usize,
    pub spare: Option<PeerClient>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Replicas {
    pub fn new(servers: Vec<ServerEntry>, me: usize, spare: Option<PeerClient>) -> Replicas {
        let servers = servers
            .into_iter()
            .enumerate()
            .map(|(i, entry)| Server {
                client: (i != me).then(|| PeerClient::new(entry.addr)),
                entry,
                down_until: AtomicU64::new(0),
            })
            .collect();
        Replicas { servers, me, spare }
    }

    /// Copies each block gets: `COPIES`, or fewer when fewer servers exist.
    pub fn copies(&self) -> usize {
        COPIES.min(self.servers.len())
    }

    /// The servers holding `block` (indices into `servers`).
    pub fn placed(&self, block: &str) -> Vec<usize> {
        placement::placed(block, &self.servers)
    }

    pub fn placed_here(&self, block: &str) -> bool {
        self.placed(block).contains(&self.me)
    }

    /// The other servers (index, client).
    pub fn others(&self) -> impl Iterator<Item = (usize, &PeerClient)> {
        self.servers
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.client.as_ref().map(|c| (i, c)))
    }

    /// Whether a copy has somewhere else to go when a placed server fails.
    fn has_fallback(&self) -> bool {
        self.servers.len() > self.copies() || self.spare.is_some()
    }

    fn skipped(&self, i: usize) -> bool {
        now_ms() < self.servers[i].down_until.load(Ordering::Relaxed)
    }

    /// What the last pass (or a failed call) found: a reachable server takes writes again
    /// at once; one that failed is skipped for a while when its copies can go elsewhere.
    pub fn set_up(&self, i: usize, up: bool) {
        let until = if up {
            0
        } else {
            now_ms() + DOWN_FOR.as_millis() as u64
        };
        if up || self.has_fallback() {
            self.servers[i].down_until.store(until, Ordering::Relaxed);
        }
    }

    async fn put_on(&self, i: usize, block: &Block, local: &BlockStore) -> Result<(), Error> {
        let Some(client) = &self.servers[i].client else {
            return local.put(block).await;
        };
        if self.skipped(i) {
            return Err(Error::Peer(format!(
                "{} is down",
                self.servers[i].entry.name
            )));
        }
        let r = client.put(block).await;
        if let Err(e) = &r {
            tracing::warn!(error = %e, server = %self.servers[i].entry.name, "block write failed");
            self.set_up(i, false);
        }
        r
    }

    /// Returns once `copies()` disks hold the block, fsynced: its placed servers', or for
    /// each that fails the next server in its ranking, then the spare.
    pub async fn put(&self, block: &Block, local: &BlockStore) -> Result<(), Error> {
        let want = self.copies();
        let ranked = placement::ranked(block.hash(), &self.servers);
        let (first, rest) = ranked.split_at(want);
        let tries = first.iter().map(|&i| self.put_on(i, block, local));
        let mut done = 0;
        let mut failed = None;
        for r in futures::future::join_all(tries).await {
            match r {
                Ok(()) => done += 1,
                Err(e) => failed = Some(e),
            }
        }
        for &i in rest {
            if done >= want {
                break;
            }
            match self.put_on(i, block, local).await {
                Ok(()) => done += 1,
                Err(e) => failed = Some(e),
            }
        }
        if done < want
            && let Some(spare) = &self.spare
        {
            match spare.put(block).await {
                Ok(()) => done += 1,
                Err(e) => {
                    failed = Some(Error::Peer(format!(
                        "a server is down and the spare failed: {e}"
                    )));
                }
            }
        }
        if done >= want {
            return Ok(());
        }
        Err(failed.unwrap_or_else(|| Error::Peer("not enough servers up".into())))
    }

    /// A copy from another disk, checked against its name: its placed servers' first, then
    /// the other servers' (a fallback copy), then the spare's, then those of servers marked
    /// down. `Ok(None)` only when every holder asked answered that it has none.
    pub async fn get(&self, hash: &str) -> Result<Option<Block>, Error> {
        let mut order = placement::ranked(hash, &self.servers);
        order.retain(|&i| i != self.me);
        // A server skipped for writes is still asked, last: it may be back before this
        // server's next pass notices, and it may hold the only other copy.
        let (up, skipped): (Vec<usize>, Vec<usize>) =
            order.into_iter().partition(|&i| !self.skipped(i));
        let client = |i: usize| self.servers[i].client.as_ref().map(|c| (Some(i), c));
        let holders = up
            .into_iter()
            .filter_map(client)
            .chain(self.spare.as_ref().map(|c| (None, c)))
            .chain(skipped.into_iter().filter_map(client));
        let mut failed = None;
        for (server, holder) in holders {
            match holder.get(hash).await {
                Ok(found) => {
                    if let Some(i) = server {
                        self.set_up(i, true);
                    }
                    if found.is_some() {
                        return Ok(found);
                    }
                }
                Err(e) => failed = Some(e),
            }
        }
        failed.map_or(Ok(None), Err)
    }

    /// Refreshes every copy of `names` before a metadata commit names them (see `gc`), on
    /// this disk, every other server and the spare; the names with fewer than `copies()`
    /// copies. A placed server that cannot be reached counts as holding its copy: a server
    /// that is down collects nothing, and on its return its first mark sees the commit.
    pub async fn touch(&self, names: &[String], local: &BlockStore) -> Result<Vec<String>, Error> {
        let mut held: HashMap<&str, usize> = names.iter().map(|n| (n.as_str(), 0)).collect();
        let mut count = |absent: &[String], unreachable: Option<usize>| {
            let absent: std::collections::HashSet<&str> =
                absent.iter().map(String::as_str).collect();
            for n in names {
                let counts = match unreachable {
                    None => !absent.contains(n.as_str()),
                    Some(i) => self.placed(n).contains(&i),
                };
                if counts {
                    *held.get_mut(n.as_str()).unwrap_or(&mut 0) += 1;
                }
            }
        };
        let remote = self.others().map(|(i, c)| async move {
            if self.skipped(i) {
                return (i, None);
            }
            match c.touch(names).await {
                Ok(absent) => (i, Some(absent)),
                Err(e) => {
                    tracing::warn!(error = %e, "a server is down: its blocks cannot be touched");
                    self.set_up(i, false);
                    (i, None)
                }
            }
        });
        let spare = async {
            match &self.spare {
                Some(s) => s.touch(names).await.ok(),
                None => None,
            }
        };
        let (here, remote, spare) = tokio::join!(
            local.touch(names.to_vec()),
            futures::future::join_all(remote),
            spare
        );
        count(&here?, None);
        for (i, absent) in remote {
            match absent {
                Some(a) => count(&a, None),
                None => count(&[], Some(i)),
            }
        }
        if let Some(a) = spare {
            // Only what the spare holds counts: it is no placed server.
            let holds: Vec<String> = names.iter().filter(|n| !a.contains(n)).cloned().collect();
            for n in &holds {
                *held.get_mut(n.as_str()).unwrap_or(&mut 0) += 1;
            }
        }
        let want = self.copies();
        Ok(names
            .iter()
            .filter(|n| held.get(n.as_str()).copied().unwrap_or(0) < want)
            .cloned()
            .collect())
    }

    /// Of `names`, those every placed server holds (checked on this disk, touched on the
    /// others): a copy elsewhere may then go. A server that cannot be asked confirms nothing.
    pub async fn confirmed(
        &self,
        names: &[String],
        local: &BlockStore,
    ) -> Result<Vec<String>, Error> {
        let mut by_server: HashMap<usize, Vec<String>> = HashMap::new();
        for n in names {
            for i in self.placed(n) {
                by_server.entry(i).or_default().push(n.clone());
            }
        }
        let mut lacking = std::collections::HashSet::new();
        for (i, list) in by_server {
            let absent = match &self.servers[i].client {
                None => {
                    let mut absent = Vec::new();
                    for n in list {
                        if !local.has(&n).await {
                            absent.push(n);
                        }
                    }
                    absent
                }
                Some(c) => c.touch(&list).await?,
            };
            lacking.extend(absent);
        }
        Ok(names
            .iter()
            .filter(|n| !lacking.contains(*n))
            .cloned()
            .collect())
    }

    /// Drops the spare's copies of blocks whose placed servers all hold them again; how
    /// many it dropped.
    pub async fn drop_spare_copies(&self, local: &BlockStore) -> Result<u64, Error> {
        let Some(spare) = &self.spare else {
            return Ok(0);
        };
        let mut dropped = 0;
        for chunk in spare.list().await?.chunks(1024) {
            let both = self.confirmed(chunk, local).await?;
            if both.is_empty() {
                continue;
            }
            dropped += both.len() as u64;
            spare.drop_blocks(&both).await?;
        }
        if dropped > 0 {
            tracing::info!(
                dropped,
                "the spare's copies dropped: their placed servers hold them"
            );
        }
        Ok(dropped)
    }
}
