//! Durable Raft storage in redb: the log, the vote and the latest snapshot.
//!
//! All writes go through one writer thread. Appends that queue up while a commit is being
//! fsynced are written together in the next transaction: many client writes share one fsync
//! (group commit). Each append is acknowledged to openraft (`LogFlushed`) only after its
//! transaction committed with `Durability::Immediate`. Entries not yet committed are kept in
//! a small in-memory tail so that readers (replication) see them at once. A hook
//! (`on_append`) sees every append as it is queued: the leader's early replication.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{RaftLogId, RaftLogReader, StorageIOError};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::oneshot;

use crate::error::DbError;
use crate::types::{Entry, LogId, SnapshotMeta, StorageError, TypeConfig, Vote};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

const K_VOTE: &str = "vote";
const K_PURGED: &str = "purged";
const K_SNAP_META: &str = "snapshot_meta";
const K_SNAP_DATA: &str = "snapshot_data";

type Job = Box<dyn FnOnce(&Database) -> Result<(), String> + Send>;

enum Work {
    Append {
        rows: Vec<(u64, Vec<u8>)>,
        last: LogId,
        done: LogFlushed<TypeConfig>,
    },
    Other {
        job: Job,
        done: oneshot::Sender<Result<(), String>>,
    },
}

fn io_err(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

fn serr_w(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::write_logs(openraft::AnyError::error(e.to_string())).into()
}

fn serr_r(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::read_logs(openraft::AnyError::error(e.to_string())).into()
}

/// The shared durable store of one node.
pub struct Store {
    db: Arc<Database>,
    tx: std::sync::mpsc::Sender<Work>,
    /// Appended entries whose transaction may not have committed yet.
    tail: Mutex<BTreeMap<u64, Entry>>,
    state: Mutex<LogStateMem>,
    /// The highest committed index openraft reported (`save_committed`; memory only): what
    /// a running script may read ahead of the state machine (`data::busy`).
    committed: std::sync::atomic::AtomicU64,
    /// Called with every append before it is queued for its fsync ([`crate::early`]).
    on_append: std::sync::OnceLock<crate::early::Hook>,
}

#[derive(Clone, Default)]
struct LogStateMem {
    last_purged: Option<LogId>,
    last_log: Option<LogId>,
}

impl Store {
    pub fn open(dir: &Path) -> Result<Arc<Store>, DbError> {
        std::fs::create_dir_all(dir)?;
        let db =
            Database::create(dir.join("raft.redb")).map_err(|e| DbError::Storage(e.to_string()))?;
        {
            let w = db
                .begin_write()
                .map_err(|e| DbError::Storage(e.to_string()))?;
            w.open_table(LOG)
                .map_err(|e| DbError::Storage(e.to_string()))?;
            w.open_table(META)
                .map_err(|e| DbError::Storage(e.to_string()))?;
            w.commit().map_err(|e| DbError::Storage(e.to_string()))?;
        }
        let db = Arc::new(db);
        let (tx, rx) = std::sync::mpsc::channel::<Work>();
        let store = Arc::new(Store {
            db: db.clone(),
            tx,
            tail: Mutex::new(BTreeMap::new()),
            state: Mutex::new(LogStateMem::default()),
            committed: Default::default(),
            on_append: Default::default(),
        });
        let last_purged: Option<LogId> = store
            .meta_get(K_PURGED)
            .map_err(|e| DbError::Storage(e.to_string()))?;
        let last_in_log = store
            .last_in_table()
            .map_err(|e| DbError::Storage(e.to_string()))?;
        {
            let mut st = store.state.lock().unwrap_or_else(|p| p.into_inner());
            st.last_purged = last_purged;
            st.last_log = last_in_log.or(last_purged);
        }
        let weak = Arc::downgrade(&store);
        std::thread::Builder::new()
            .name("db-log-writer".into())
            .spawn(move || writer_loop(db, rx, weak))?;
        Ok(store)
    }

    fn last_in_table(&self) -> Result<Option<LogId>, String> {
        let r = self.db.begin_read().map_err(|e| e.to_string())?;
        let t = r.open_table(LOG).map_err(|e| e.to_string())?;
        match t.last().map_err(|e| e.to_string())? {
            None => Ok(None),
            Some((_, v)) => {
                let e: Entry = crate::codec::dec(v.value()).map_err(|e| e.to_string())?;
                Ok(Some(*e.get_log_id()))
            }
        }
    }

    fn meta_get<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>, String> {
        let r = self.db.begin_read().map_err(|e| e.to_string())?;
        let t = r.open_table(META).map_err(|e| e.to_string())?;
        match t.get(key).map_err(|e| e.to_string())? {
            None => Ok(None),
            Some(v) => crate::codec::dec(v.value())
                .map(Some)
                .map_err(|e| e.to_string()),
        }
    }

    /// Runs `job` in the writer thread (after any queued appends) and waits for it.
    async fn run(&self, job: Job) -> Result<(), String> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Work::Other { job, done })
            .map_err(|_| "log writer stopped".to_string())?;
        rx.await.map_err(|_| "log writer stopped".to_string())?
    }

    /// Sets what sees every append as it is queued (once; later calls are ignored).
    pub fn on_append(&self, hook: crate::early::Hook) {
        let _ = self.on_append.set(hook);
    }

    pub fn committed(&self) -> u64 {
        self.committed.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Entries `start..end_excl` as they are in the log.
    pub fn read_range(&self, start: u64, end_excl: u64) -> Result<Vec<Entry>, String> {
        let mut out: BTreeMap<u64, Entry> = BTreeMap::new();
        // The tail first: an entry that leaves it has already committed to the table.
        {
            let tail = self.tail.lock().unwrap_or_else(|p| p.into_inner());
            for (i, e) in tail.range(start..end_excl) {
                out.insert(*i, e.clone());
            }
        }
        let r = self.db.begin_read().map_err(|e| e.to_string())?;
        let t = r.open_table(LOG).map_err(|e| e.to_string())?;
        for row in t.range(start..end_excl).map_err(|e| e.to_string())? {
            let (k, v) = row.map_err(|e| e.to_string())?;
            let i = k.value();
            if let std::collections::btree_map::Entry::Vacant(slot) = out.entry(i) {
                slot.insert(crate::codec::dec(v.value()).map_err(|e| e.to_string())?);
            }
        }
        Ok(out.into_values().collect())
    }

    /// Saves the latest snapshot durably.
    pub async fn save_snapshot(&self, meta: &SnapshotMeta, data: Vec<u8>) -> Result<(), String> {
        let m = crate::codec::enc(meta).map_err(|e| e.to_string())?;
        self.run(Box::new(move |db| {
            let mut w = db.begin_write().map_err(|e| e.to_string())?;
            w.set_durability(Durability::Immediate)
                .map_err(|e| e.to_string())?;
            {
                let mut t = w.open_table(META).map_err(|e| e.to_string())?;
                t.insert(K_SNAP_META, m.as_slice())
                    .map_err(|e| e.to_string())?;
                t.insert(K_SNAP_DATA, data.as_slice())
                    .map_err(|e| e.to_string())?;
            }
            w.commit().map_err(|e| e.to_string())
        }))
        .await
    }

    pub fn load_snapshot(&self) -> Result<Option<(SnapshotMeta, Vec<u8>)>, String> {
        let r = self.db.begin_read().map_err(|e| e.to_string())?;
        let t = r.open_table(META).map_err(|e| e.to_string())?;
        let Some(m) = t.get(K_SNAP_META).map_err(|e| e.to_string())? else {
            return Ok(None);
        };
        let meta: SnapshotMeta = crate::codec::dec(m.value()).map_err(|e| e.to_string())?;
        let data = t
            .get(K_SNAP_DATA)
            .map_err(|e| e.to_string())?
            .map(|v| v.value().to_vec())
            .unwrap_or_default();
        Ok(Some((meta, data)))
    }

    /// Approximate bytes on disk.
    pub fn disk_bytes(&self, dir: &Path) -> u64 {
        std::fs::metadata(dir.join("raft.redb"))
            .map(|m| m.len())
            .unwrap_or(0)
    }
}

fn writer_loop(
    db: Arc<Database>,
    rx: std::sync::mpsc::Receiver<Work>,
    store: std::sync::Weak<Store>,
) {
    let mut pending: Option<Work> = None;
    loop {
        let first = match pending.take() {
            Some(w) => w,
            None => match rx.recv() {
                Ok(w) => w,
                Err(_) => return,
            },
        };
        match first {
            Work::Other { job, done } => {
                let _ = done.send(job(&db));
            }
            Work::Append { rows, last, done } => {
                // Group commit: take every append already queued behind this one.
                let mut batch = vec![(rows, last, done)];
                while let Ok(next) = rx.try_recv() {
                    match next {
                        Work::Append { rows, last, done } => batch.push((rows, last, done)),
                        other => {
                            pending = Some(other);
                            break;
                        }
                    }
                }
                let t0 = std::time::Instant::now();
                let res = write_rows(&db, batch.iter().flat_map(|(r, _, _)| r.iter()));
                tracing::debug!(
                    appends = batch.len(),
                    took_us = t0.elapsed().as_micros() as u64,
                    "log batch committed"
                );
                if let Some(store) = store.upgrade() {
                    let mut tail = store.tail.lock().unwrap_or_else(|p| p.into_inner());
                    if res.is_ok() {
                        for (rows, _, _) in &batch {
                            for (i, _) in rows {
                                tail.remove(i);
                            }
                        }
                    }
                }
                for (_, _, done) in batch {
                    done.log_io_completed(res.clone().map_err(io_err));
                }
            }
        }
    }
}

fn write_rows<'a>(
    db: &Database,
    rows: impl Iterator<Item = &'a (u64, Vec<u8>)>,
) -> Result<(), String> {
    let mut w = db.begin_write().map_err(|e| e.to_string())?;
    w.set_durability(Durability::Immediate)
        .map_err(|e| e.to_string())?;
    {
        let mut t = w.open_table(LOG).map_err(|e| e.to_string())?;
        for (i, v) in rows {
            t.insert(*i, v.as_slice()).map_err(|e| e.to_string())?;
        }
    }
    w.commit().map_err(|e| e.to_string())
}

/// openraft's view of the log: a cheap handle on the shared [`Store`].
#[derive(Clone)]
pub struct LogStore {
    pub store: Arc<Store>,
}

fn range_bounds(range: &impl RangeBounds<u64>) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(x) => *x,
        Bound::Excluded(x) => x.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(x) => x.saturating_add(1),
        Bound::Excluded(x) => *x,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let (s, e) = range_bounds(&range);
        self.store.read_range(s, e).map_err(serr_r)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let st = self
            .store
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        Ok(LogState {
            last_purged_log_id: st.last_purged,
            last_log_id: st.last_log,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        if let Some(c) = committed {
            self.store
                .committed
                .fetch_max(c.index, std::sync::atomic::Ordering::AcqRel);
        }
        Ok(())
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let v = crate::codec::enc(vote).map_err(serr_w)?;
        self.store
            .run(Box::new(move |db| {
                let mut w = db.begin_write().map_err(|e| e.to_string())?;
                w.set_durability(Durability::Immediate)
                    .map_err(|e| e.to_string())?;
                {
                    let mut t = w.open_table(META).map_err(|e| e.to_string())?;
                    t.insert(K_VOTE, v.as_slice()).map_err(|e| e.to_string())?;
                }
                w.commit().map_err(|e| e.to_string())
            }))
            .await
            .map_err(|e| StorageIOError::write_vote(openraft::AnyError::error(e)).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.store
            .meta_get(K_VOTE)
            .map_err(|e| StorageIOError::read_vote(openraft::AnyError::error(e)).into())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let Some(last) = entries.last().map(|e| *e.get_log_id()) else {
            callback.log_io_completed(Ok(()));
            return Ok(());
        };
        let mut rows = Vec::with_capacity(entries.len());
        for e in &entries {
            rows.push((e.get_log_id().index, crate::codec::enc(e).map_err(serr_w)?));
        }
        if let Some(hook) = self.store.on_append.get() {
            let prev = self
                .store
                .state
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .last_log;
            hook(prev, &entries);
        }
        {
            let mut tail = self.store.tail.lock().unwrap_or_else(|p| p.into_inner());
            for e in entries {
                tail.insert(e.get_log_id().index, e);
            }
        }
        self.store
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .last_log = Some(last);
        self.store
            .tx
            .send(Work::Append {
                rows,
                last,
                done: callback,
            })
            .map_err(|_| serr_w("log writer stopped"))?;
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let from = log_id.index;
        {
            let mut tail = self.store.tail.lock().unwrap_or_else(|p| p.into_inner());
            let _ = tail.split_off(&from);
        }
        self.store
            .run(Box::new(move |db| {
                let mut w = db.begin_write().map_err(|e| e.to_string())?;
                w.set_durability(Durability::Immediate)
                    .map_err(|e| e.to_string())?;
                {
                    let mut t = w.open_table(LOG).map_err(|e| e.to_string())?;
                    t.retain_in(from.., |_, _| false)
                        .map_err(|e| e.to_string())?;
                }
                w.commit().map_err(|e| e.to_string())
            }))
            .await
            .map_err(serr_w)?;
        let prev = if from == 0 {
            None
        } else {
            self.store
                .read_range(from - 1, from)
                .map_err(serr_r)?
                .first()
                .map(|e| *e.get_log_id())
        };
        let mut st = self.store.state.lock().unwrap_or_else(|p| p.into_inner());
        st.last_log = prev.or(st.last_purged);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let upto = log_id.index;
        let p = crate::codec::enc(&log_id).map_err(serr_w)?;
        self.store
            .run(Box::new(move |db| {
                let mut w = db.begin_write().map_err(|e| e.to_string())?;
                w.set_durability(Durability::Immediate)
                    .map_err(|e| e.to_string())?;
                {
                    let mut t = w.open_table(LOG).map_err(|e| e.to_string())?;
                    t.retain_in(..=upto, |_, _| false)
                        .map_err(|e| e.to_string())?;
                    let mut m = w.open_table(META).map_err(|e| e.to_string())?;
                    m.insert(K_PURGED, p.as_slice())
                        .map_err(|e| e.to_string())?;
                }
                w.commit().map_err(|e| e.to_string())
            }))
            .await
            .map_err(serr_w)?;
        let mut st = self.store.state.lock().unwrap_or_else(|p| p.into_inner());
        st.last_purged = Some(log_id);
        if st.last_log < Some(log_id) {
            st.last_log = Some(log_id);
        }
        Ok(())
    }
}
