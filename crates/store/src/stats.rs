//! What this server knows about itself: counters since start (Prometheus `/metrics`) and the
//! record it publishes to the catalogue (`s3:status` in the db, `citadel store status`).

use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// One server's catalogue record, as of its last pass (see `maintain`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ServerStatus {
    pub name: String,
    /// Unix seconds of the last publish; `interval_secs` tells a reader when it is stale.
    pub updated: i64,
    pub interval_secs: f64,
    /// Every other server's block service answered the last pass.
    pub peer_up: bool,
    /// This server's capacity weight (its share of the blocks: `placement`).
    #[serde(default)]
    pub weight: f64,
    /// Block files on this disk and their bytes.
    pub blocks: u64,
    pub bytes: u64,
    /// Objects with a block placed on this server, and those of them with every such block
    /// on this disk (with two servers: every object). An object is under-replicated while
    /// one of its placed servers lacks a block of it.
    pub objects: u64,
    pub objects_held: u64,
    /// Blocks placed on this server that the metadata references and this disk lacks.
    pub missing_blocks: u64,
    pub missing_bytes: u64,
    /// Blocks on this disk no object references (collected once older than the grace).
    pub unreferenced_blocks: u64,
    /// Referenced blocks on this disk placed on other servers (a fallback's copies, or
    /// after a change of servers or weights): dropped once their placed servers hold them.
    #[serde(default)]
    pub misplaced_blocks: u64,
    pub reclone: RecloneProgress,
    pub scrub: Option<ScrubReport>,
    pub gc: GcTotals,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RecloneProgress {
    pub active: bool,
    pub total_blocks: u64,
    pub done_blocks: u64,
    pub total_bytes: u64,
    pub done_bytes: u64,
    /// Blocks no disk holds (counted only when every server answered).
    pub lost_blocks: u64,
    /// Unix seconds; 0 = never.
    pub started: i64,
    pub finished: i64,
    /// How long the last re-clone took, milliseconds.
    #[serde(default)]
    pub elapsed_ms: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ScrubReport {
    pub started: i64,
    pub finished: i64,
    pub checked: u64,
    pub bytes: u64,
    pub rotten: u64,
    pub repaired: u64,
    /// Rotten here and not to be had from the peer.
    pub unrepairable: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GcTotals {
    pub passes: u64,
    pub removed_blocks: u64,
    pub freed_bytes: u64,
    /// Unix seconds of the last pass; 0 = never.
    pub last: i64,
}

#[derive(Default)]
pub struct Stats {
    pub status: Mutex<ServerStatus>,
    pub puts: AtomicU64,
    pub put_bytes: AtomicU64,
    pub gets: AtomicU64,
    pub read_repairs: AtomicU64,
    pub reclone_blocks: AtomicU64,
    pub reclone_bytes: AtomicU64,
    pub scrub_checked: AtomicU64,
    pub scrub_rotten: AtomicU64,
    pub scrub_repaired: AtomicU64,
}

pub fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

impl Stats {
    pub fn snapshot(&self) -> ServerStatus {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn update(&self, f: impl FnOnce(&mut ServerStatus)) {
        f(&mut self.status.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// Prometheus text: counters since this process started, gauges from the last pass.
    pub fn render(&self) -> String {
        let st = self.snapshot();
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let counters = [
            ("puts_total", "Objects and parts stored.", g(&self.puts)),
            (
                "put_bytes_total",
                "Bytes stored by PUTs and parts.",
                g(&self.put_bytes),
            ),
            ("gets_total", "Object GETs answered.", g(&self.gets)),
            (
                "read_repairs_total",
                "Blocks missing or rotten here that a GET fetched from the peer and rewrote.",
                g(&self.read_repairs),
            ),
            (
                "reclone_blocks_total",
                "Blocks copied from the peer by re-cloning.",
                g(&self.reclone_blocks),
            ),
            (
                "reclone_bytes_total",
                "Bytes copied from the peer by re-cloning.",
                g(&self.reclone_bytes),
            ),
            (
                "scrub_checked_total",
                "Blocks read and checked by scrubs.",
                g(&self.scrub_checked),
            ),
            (
                "scrub_rotten_total",
                "Blocks a scrub found not matching their checksum.",
                g(&self.scrub_rotten),
            ),
            (
                "scrub_repaired_total",
                "Rotten blocks a scrub rewrote from the peer's copy.",
                g(&self.scrub_repaired),
            ),
            (
                "gc_passes_total",
                "Garbage collection passes.",
                st.gc.passes,
            ),
            (
                "gc_removed_blocks_total",
                "Unreferenced blocks removed.",
                st.gc.removed_blocks,
            ),
            (
                "gc_freed_bytes_total",
                "Bytes freed by removing unreferenced blocks.",
                st.gc.freed_bytes,
            ),
        ];
        let gauges = [
            ("blocks", "Block files on this disk.", st.blocks),
            ("bytes", "Bytes of block files on this disk.", st.bytes),
            (
                "objects",
                "Objects with a block placed on this server.",
                st.objects,
            ),
            (
                "objects_held",
                "Objects with every block placed here on this disk.",
                st.objects_held,
            ),
            (
                "missing_blocks",
                "Referenced blocks placed here that this disk lacks.",
                st.missing_blocks,
            ),
            (
                "misplaced_blocks",
                "Referenced blocks on this disk placed on other servers.",
                st.misplaced_blocks,
            ),
            (
                "unreferenced_blocks",
                "Blocks no object references (collected after the grace).",
                st.unreferenced_blocks,
            ),
            (
                "reclone_active",
                "1 while missing blocks are being copied from the peer.",
                u64::from(st.reclone.active),
            ),
            (
                "reclone_remaining_blocks",
                "Blocks the running re-clone still has to copy.",
                st.reclone
                    .total_blocks
                    .saturating_sub(st.reclone.done_blocks),
            ),
            (
                "peer_up",
                "1 when the last pass reached every other server.",
                u64::from(st.peer_up),
            ),
        ];
        let mut s = String::with_capacity(4096);
        for (kind, rows) in [("counter", &counters[..]), ("gauge", &gauges[..])] {
            for (name, help, v) in rows {
                let _ = writeln!(s, "# HELP citadel_store_{name} {help}");
                let _ = writeln!(s, "# TYPE citadel_store_{name} {kind}");
                let _ = writeln!(s, "citadel_store_{name} {v}");
            }
        }
        s
    }
}
