//! Scrub: read every block on this disk, check it against its name (SHA-256), and rewrite a
//! rotten one from the peer's copy (which is checked too). Periodic, and on request
//! (`POST /scrub` on the admin address; `citadel store scrub`).

use crate::Error;
use crate::blocks::Verdict;
use crate::meta::now_secs;
use crate::s3::Store;
use crate::stats::{ScrubReport, bump};

impl Store {
    /// One full scrub; concurrent requests wait for the running one and then run their own,
    /// so a requested scrub always checks the disk as it is after the request.
    pub async fn scrub(&self) -> Result<ScrubReport, Error> {
        let _one_at_a_time = self.scrub_lock.lock().await;
        let mut report = ScrubReport {
            started: now_secs(),
            ..Default::default()
        };
        for block in self.blocks.list().await? {
            let verdict = self.blocks.verify(&block.hash).await?;
            if verdict == Verdict::Missing {
                continue; // collected since the listing
            }
            report.checked += 1;
            report.bytes += block.size;
            bump(&self.stats.scrub_checked, 1);
            if verdict == Verdict::Good {
                continue;
            }
            report.rotten += 1;
            bump(&self.stats.scrub_rotten, 1);
            tracing::error!(block = %block.hash, "scrub: checksum mismatch on disk");
            let good = self.remote.get(&block.hash).await.unwrap_or_else(|e| {
                tracing::warn!(error = %e, "scrub: cannot fetch another copy");
                None
            });
            match good {
                Some(good) => {
                    self.blocks.repair(&good).await?;
                    report.repaired += 1;
                    bump(&self.stats.scrub_repaired, 1);
                    tracing::info!(block = %block.hash, "scrub: repaired from the peer");
                }
                None => report.unrepairable += 1,
            }
        }
        report.finished = now_secs();
        let published = report.clone();
        self.stats.update(|st| st.scrub = Some(published));
        Ok(report)
    }
}
