//! The catalogue: which blocks the metadata references (every object and every uploaded
//! part of an unfinished multipart upload), and each server's record of what it holds, in
//! the db hash `s3:status` (server name → `ServerStatus`).

use std::collections::HashMap;

use crate::Error;
use crate::meta::{BUCKETS, Db, ObjectMeta, objects_key};
use crate::multipart::{PartMeta, parts_key, uploads_key};
use crate::stats::ServerStatus;

pub const STATUS: &str = "s3:status";

/// Everything the metadata references, read in one walk.
#[derive(Default)]
pub struct Referenced {
    /// Block name → size.
    pub blocks: HashMap<String, u64>,
    /// Each object's block names (to count the objects a disk holds whole).
    pub objects: Vec<Vec<String>>,
}

/// Walks all metadata: O(objects + parts), one HGETALL per bucket and per open upload.
pub async fn walk(db: &Db) -> Result<Referenced, Error> {
    let mut refs = Referenced::default();
    let mut add = |blocks: &[String], sizes: &[u64]| {
        for (h, s) in blocks.iter().zip(sizes) {
            refs.blocks.insert(h.clone(), *s);
        }
    };
    let mut objects = Vec::new();
    for bucket in db.hkeys(BUCKETS).await? {
        // Parts before objects: Complete writes the object before it drops the parts, so a
        // completion between the two reads is seen in one or the other, never in neither.
        for upload in db.hkeys(&uploads_key(&bucket)).await? {
            for (_, p) in db.hgetall_json::<PartMeta>(&parts_key(&upload)).await? {
                add(&p.blocks, &p.block_sizes);
            }
        }
        for (_, m) in db.hgetall_json::<ObjectMeta>(&objects_key(&bucket)).await? {
            add(&m.blocks, &m.block_sizes);
            objects.push(m.blocks);
        }
    }
    refs.objects = objects;
    Ok(refs)
}

pub async fn publish(db: &Db, status: &ServerStatus) -> Result<(), Error> {
    db.hset_json(STATUS, &status.name, status).await
}

/// Every server's last record, by name.
pub async fn read_all(db: &Db) -> Result<Vec<ServerStatus>, Error> {
    let mut all: Vec<ServerStatus> = db
        .hgetall_json::<ServerStatus>(STATUS)
        .await?
        .into_iter()
        .map(|(_, s)| s)
        .collect();
    all.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(all)
}

/// Whether a record is older than three of its server's passes (the server is down, or
/// cannot reach the db).
pub fn is_stale(s: &ServerStatus, now: i64) -> bool {
    (now - s.updated) as f64 > 3.0 * s.interval_secs.max(1.0) + 2.0
}

/// Objects some server lacks a block of: the sum over fresh records of objects not held.
/// An object missing on both servers counts twice; it is lost, not just under-replicated.
pub fn under_replicated(all: &[ServerStatus]) -> u64 {
    all.iter()
        .map(|s| s.objects.saturating_sub(s.objects_held))
        .sum()
}
