//! Node configuration, loaded from a TOML file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::DbError;

/// What a member of the replication group does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Holds the tables and serves clients.
    Data,
    /// Votes and keeps the log, holds no tables, serves no data.
    Witness,
}

/// One member of the group, as every member sees it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    /// Raft node id: unique, non-zero, stable for the member's life.
    pub id: u64,
    /// Human name (the jail name later).
    pub name: String,
    pub kind: Kind,
    /// Peer (Raft) address, port 7000 by convention.
    pub peer: SocketAddr,
    /// Redis-protocol address (port 6379 by convention); a witness has none.
    #[serde(default)]
    pub redis: Option<SocketAddr>,
    /// Whether the member votes from the start (default true). A member with `voter =
    /// false` is known to everyone but joins later with `citadel-db add` (learner, then voter).
    #[serde(default = "yes")]
    pub voter: bool,
}

fn yes() -> bool {
    true
}

/// Timing knobs. Defaults suit a LAN/loopback cluster.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tunables {
    /// Leader heartbeat interval, ms (default 100). openraft 0.9 also gives each
    /// AppendEntries this long to complete.
    pub heartbeat_ms: u64,
    /// Election timeout lower bound, ms (default 300).
    pub election_min_ms: u64,
    /// Election timeout upper bound, ms (default 600). openraft 0.9 also uses it as the
    /// leader lease: a member refuses votes this long after it last heard from a leader.
    pub election_max_ms: u64,
    /// Build a snapshot (and compact the log) every this many applied entries (default 20000).
    pub snapshot_every: u64,
    /// Entries kept in the log after a snapshot, for lagging followers (default 5000).
    pub keep_after_snapshot: u64,
    /// How long a client write waits for a data leader before a retryable error, ms (default 3000).
    pub write_wait_ms: u64,
    /// Peer RPC timeout, ms (default 1000).
    pub rpc_timeout_ms: u64,
    /// How often a witness asks the data members what they hold durably and purges its log
    /// up to that point, ms (default 5000).
    pub witness_purge_ms: u64,
}

impl Default for Tunables {
    fn default() -> Self {
        Tunables {
            heartbeat_ms: 100,
            election_min_ms: 300,
            election_max_ms: 600,
            snapshot_every: 20_000,
            keep_after_snapshot: 5_000,
            write_wait_ms: 3_000,
            rpc_timeout_ms: 1_000,
            witness_purge_ms: 5_000,
        }
    }
}

/// Configuration of one db or witness node.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DbConfig {
    /// This node's id; must appear in `members`.
    pub id: u64,
    /// Directory for the node's durable state.
    pub data_dir: PathBuf,
    /// Addresses the peer (Raft) listener binds; defaults to this member's `peer`. A data
    /// member on two segments lists both (its back address for the other data members, its
    /// front address for a witness on the gate).
    #[serde(default)]
    pub peer_listen: Vec<SocketAddr>,
    /// Addresses the Redis listener binds; defaults to this member's `redis`. A data member
    /// on two segments lists both, so clients on either reach it.
    #[serde(default)]
    pub redis_listen: Vec<SocketAddr>,
    /// The `default` user's password (`AUTH pass`), if any.
    #[serde(default)]
    pub password: Option<String>,
    /// ACL users, in Redis's rule grammar (`users = [{ name = "admin", password = "…",
    /// rules = "~* &* +@all" }]`). Without a `default` entry the default user is `on`,
    /// `password` (or `nopass`), `~* &* +@all`, and `-@dangerous` once any password or user
    /// is configured. These users are the base on every member; ACL SETUSER/DELUSER of them
    /// is refused (see `crate::acl`).
    #[serde(default)]
    pub users: Vec<crate::acl::UserConfig>,
    /// The whole group, this node included. Each node's file may give another member a
    /// different `peer` address: the one *this* node dials (the first segment both share).
    pub members: Vec<Member>,
    #[serde(default)]
    pub tunables: Tunables,
}

impl DbConfig {
    pub fn load(path: &Path) -> Result<DbConfig, DbError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| DbError::Config(format!("reading {}: {e}", path.display())))?;
        Self::parse(&text)
    }

    pub fn parse(text: &str) -> Result<DbConfig, DbError> {
        let cfg: DbConfig = toml::from_str(text).map_err(|e| DbError::Config(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), DbError> {
        let me = self.me().ok_or_else(|| {
            DbError::Config(format!("node id {} is not in the member list", self.id))
        })?;
        let mut ids = std::collections::BTreeSet::new();
        for m in &self.members {
            if m.id == 0 {
                return Err(DbError::Config("member id 0 is reserved".into()));
            }
            if !ids.insert(m.id) {
                return Err(DbError::Config(format!("duplicate member id {}", m.id)));
            }
            if m.kind == Kind::Data && m.redis.is_none() {
                return Err(DbError::Config(format!(
                    "data member {} has no redis address",
                    m.name
                )));
            }
        }
        if !self.members.iter().any(|m| m.kind == Kind::Data) {
            return Err(DbError::Config("no data member".into()));
        }
        let t = &self.tunables;
        if t.heartbeat_ms == 0
            || t.election_min_ms <= t.heartbeat_ms
            || t.election_max_ms <= t.election_min_ms
        {
            return Err(DbError::Config(
                "need 0 < heartbeat_ms < election_min_ms < election_max_ms".into(),
            ));
        }
        let _ = me;
        crate::acl::configured(self.password.as_deref(), &self.users).map_err(DbError::Config)?;
        Ok(())
    }

    pub fn me(&self) -> Option<&Member> {
        self.members.iter().find(|m| m.id == self.id)
    }

    pub fn member(&self, id: u64) -> Option<&Member> {
        self.members.iter().find(|m| m.id == id)
    }

    pub fn is_data(&self, id: u64) -> bool {
        self.member(id)
            .map(|m| m.kind == Kind::Data)
            .unwrap_or(false)
    }

    pub fn data_ids(&self) -> Vec<u64> {
        self.members
            .iter()
            .filter(|m| m.kind == Kind::Data)
            .map(|m| m.id)
            .collect()
    }
}
