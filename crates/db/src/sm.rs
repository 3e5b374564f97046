//! The replicated state machine: the tables on a data member, nothing but the applied
//! position and membership on a witness.

use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, RaftSnapshotBuilder, Snapshot, StorageIOError};

use crate::data::Tables;
use crate::resp::Reply;
use crate::store::Store;
use crate::types::{Entry, LogId, SnapshotMeta, StorageError, StoredMembership, TypeConfig};

/// First byte of a snapshot: a data member's tables, or a witness's empty snapshot.
pub const SNAP_DATA: u8 = b'D';
pub const SNAP_WITNESS: u8 = b'W';

pub struct SmInner {
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
    pub tables: Tables,
}

pub struct SmShared {
    pub inner: RwLock<SmInner>,
    pub witness: bool,
    store: Arc<Store>,
    seq: AtomicU64,
    /// Woken after every applied batch (clients blocked in BLPOP & co. look again).
    pub applied: tokio::sync::Notify,
}

impl SmShared {
    pub fn read<R>(&self, f: impl FnOnce(&SmInner) -> R) -> R {
        if let Ok(g) = self.inner.try_read() {
            return f(&g);
        }
        // The state machine is applying, maybe a long script (or one waiting for the log's
        // decision, `data::busy`): wait without holding a runtime worker, or enough waiting
        // readers would starve Raft itself (heartbeats, the very decision awaited).
        let wait = || {
            let g = self.inner.read().unwrap_or_else(|p| p.into_inner());
            f(&g)
        };
        if multi_thread() {
            tokio::task::block_in_place(wait)
        } else {
            wait()
        }
    }
}

#[derive(Clone)]
pub struct StateMachine {
    pub shared: Arc<SmShared>,
}

fn sm_err(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::write_state_machine(openraft::AnyError::error(e.to_string())).into()
}

fn snap_err(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::write_snapshot(None, openraft::AnyError::error(e.to_string())).into()
}

impl StateMachine {
    /// Opens the state machine from the latest durable snapshot (the log replays the rest).
    pub fn open(store: Arc<Store>, witness: bool) -> Result<StateMachine, crate::error::DbError> {
        let mut inner = SmInner {
            last_applied: None,
            membership: StoredMembership::default(),
            tables: Tables::default(),
        };
        if let Some((meta, data)) = store
            .load_snapshot()
            .map_err(crate::error::DbError::Storage)?
        {
            inner.last_applied = meta.last_log_id;
            inner.membership = meta.last_membership.clone();
            if !witness && data.first() == Some(&SNAP_DATA) {
                inner.tables = Tables::decode_snapshot(&data[1..])
                    .map_err(|e| crate::error::DbError::Storage(format!("snapshot: {e}")))?;
            }
        }
        Ok(StateMachine {
            shared: Arc::new(SmShared {
                inner: RwLock::new(inner),
                witness,
                store,
                seq: AtomicU64::new(0),
                applied: tokio::sync::Notify::new(),
            }),
        })
    }

    #[allow(clippy::result_large_err)]
    fn encode(&self) -> Result<(SnapshotMeta, Vec<u8>), StorageError> {
        let g = self.shared.inner.read().unwrap_or_else(|p| p.into_inner());
        let mut data = Vec::new();
        if self.shared.witness {
            data.push(SNAP_WITNESS);
        } else {
            data.push(SNAP_DATA);
            data.extend(g.tables.encode_snapshot().map_err(snap_err)?);
        }
        let n = self.shared.seq.fetch_add(1, Ordering::Relaxed);
        let id = match &g.last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, n),
            None => format!("0-0-{n}"),
        };
        let meta = SnapshotMeta {
            last_log_id: g.last_applied,
            last_membership: g.membership.clone(),
            snapshot_id: id,
        };
        Ok((meta, data))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let (meta, data) = self.encode()?;
        self.shared
            .store
            .save_snapshot(&meta, data.clone())
            .await
            .map_err(snap_err)?;
        tracing::info!(snapshot = %meta.snapshot_id, bytes = data.len(), "snapshot built");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let g = self.shared.inner.read().unwrap_or_else(|p| p.into_inner());
        Ok((g.last_applied, g.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Vec<Reply>>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        // A script may hold this thread for a while (and wait for a decision from the log:
        // `data::busy`); the runtime moves this worker's other tasks elsewhere meanwhile.
        let work = || {
            let mut g = self.shared.inner.write().unwrap_or_else(|p| p.into_inner());
            let mut out = Vec::new();
            for e in entries {
                g.last_applied = Some(e.log_id);
                let r = match e.payload {
                    EntryPayload::Blank => Vec::new(),
                    EntryPayload::Normal(p) => {
                        if self.shared.witness {
                            // A witness holds no tables; nobody waits for its replies.
                            Vec::new()
                        } else {
                            p.reqs
                                .iter()
                                .map(|req| {
                                    let fresh =
                                        req.rid == 0 || !g.tables.recent.contains_key(&req.rid);
                                    let r = g.tables.apply_once(req, e.log_id.index);
                                    if fresh && crate::feed::listening() {
                                        crate::feed::publish(&g.tables, req, &r);
                                    }
                                    r
                                })
                                .collect()
                        }
                    }
                    EntryPayload::Membership(m) => {
                        g.membership = StoredMembership::new(Some(e.log_id), m);
                        Vec::new()
                    }
                };
                out.push(r);
            }
            out
        };
        let out = if multi_thread() {
            tokio::task::block_in_place(work)
        } else {
            work()
        };
        self.shared.applied.notify_waiters();
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let tables = match (self.shared.witness, data.first()) {
            (true, _) => None,
            (false, Some(&SNAP_DATA)) => Some(Tables::decode_snapshot(&data[1..]).map_err(sm_err)?),
            (false, _) => {
                // Last line of defence: never let a witness's empty snapshot wipe the tables.
                tracing::error!(snapshot = %meta.snapshot_id, "refusing a snapshot without tables");
                return Err(sm_err(
                    "refusing to install a snapshot without tables on a data member",
                ));
            }
        };
        let stored = if self.shared.witness {
            vec![SNAP_WITNESS]
        } else {
            data
        };
        self.shared
            .store
            .save_snapshot(meta, stored)
            .await
            .map_err(snap_err)?;
        let mut g = self.shared.inner.write().unwrap_or_else(|p| p.into_inner());
        g.last_applied = meta.last_log_id;
        g.membership = meta.last_membership.clone();
        if let Some(t) = tables {
            g.tables = t;
        }
        tracing::info!(snapshot = %meta.snapshot_id, "snapshot installed");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        match self.shared.store.load_snapshot().map_err(snap_err)? {
            None => Ok(None),
            Some((meta, data)) => Ok(Some(Snapshot {
                meta,
                snapshot: Box::new(Cursor::new(data)),
            })),
        }
    }
}

/// On a multi-thread tokio runtime (where `block_in_place` may be used).
fn multi_thread() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
}
