//! openraft type configuration.

use std::io::Cursor;

use crate::data::Proposal;
use crate::resp::Reply;

openraft::declare_raft_types!(
    /// Citadel db's Raft types: an entry is a batch of client writes, its result one RESP
    /// [`Reply`] per write.
    pub TypeConfig:
        D = Proposal,
        R = Vec<Reply>,
);

pub type NodeId = u64;
pub type Raft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type Vote = openraft::Vote<NodeId>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, openraft::BasicNode>;
pub type StoredMembership = openraft::StoredMembership<NodeId, openraft::BasicNode>;
pub type StorageError = openraft::StorageError<NodeId>;

// Keep Cursor referenced: declare_raft_types! names it for the snapshot data type.
#[allow(dead_code)]
type SnapshotData = Cursor<Vec<u8>>;
