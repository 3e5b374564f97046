//! Citadel's replicated database: Raft (openraft) over redb storage, the Redis protocol on
//! top, and a vote-only witness role so that two data servers plus a witness survive the
//! loss of any one box.

pub mod acl;
pub mod admin;
pub mod arrival;
pub mod blocking;
pub mod clients;
pub mod codec;
pub mod config;
pub mod data;
pub mod early;
pub mod error;
pub mod feed;
pub mod net;
pub mod node;
pub mod pubsub;
pub mod rdb;
pub mod resp;
pub mod server;
pub mod settings;
pub mod sm;
pub mod store;
pub mod types;

use std::time::Duration;

pub use config::{DbConfig, Kind, Member, Tunables};
pub use error::DbError;

/// Runs a db (or witness) node until the process is stopped.
pub async fn run(cfg: DbConfig) -> Result<(), DbError> {
    let running = node::start(cfg.clone()).await?;
    let node = running.node;
    let me = cfg
        .me()
        .cloned()
        .ok_or_else(|| DbError::Config("no such member".into()))?;
    if me.kind == Kind::Data {
        let listen = match (cfg.redis_listen.is_empty(), me.redis) {
            (false, _) => cfg.redis_listen.clone(),
            (true, Some(addr)) => vec![addr],
            (true, None) => return Err(DbError::Config("no redis address".into())),
        };
        for addr in listen {
            let listener = tokio::net::TcpListener::bind(addr).await?;
            tracing::info!(%addr, id = cfg.id, "serving the Redis protocol");
            tokio::spawn(server::serve(listener, node.clone()));
        }
    } else {
        tracing::info!(id = cfg.id, "running as witness");
    }
    // Stopped by SIGTERM (the supervisor) or SIGINT: a leader hands over before it goes.
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!(id = cfg.id, "stopping");
    node.hand_over_leadership(Duration::from_millis(1500)).await;
    Ok(())
}

/// Asks every member for its status over the peer protocol (what `citadel db status` shows).
pub async fn cluster_status(cfg: &DbConfig) -> Vec<(Member, Result<net::NodeStatus, String>)> {
    let peers = net::Peers::new(cfg);
    let mut out = Vec::new();
    for m in &cfg.members {
        let r = match peers
            .call(m.id, &net::PeerReq::Status, peers.rpc_timeout())
            .await
        {
            Ok(net::PeerResp::Status(s)) => Ok(s),
            Ok(other) => Err(format!("unexpected answer {other:?}")),
            Err(e) => Err(e.to_string()),
        };
        out.push((m.clone(), r));
    }
    out
}

/// The group as the operator sees it (`citadel db status`): the leader by name, and each
/// member's Raft state with its lag behind the leader.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct GroupStatus {
    /// The member that reports itself leader in the highest term, if any answers so.
    pub leader: Option<LeaderRef>,
    pub members: Vec<MemberStatus>,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct LeaderRef {
    pub name: String,
    pub id: u64,
    pub term: u64,
    /// Where clients reach it with the Redis protocol.
    pub redis: Option<std::net::SocketAddr>,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct MemberStatus {
    pub name: String,
    pub id: u64,
    pub kind: Kind,
    pub peer: std::net::SocketAddr,
    pub redis: Option<std::net::SocketAddr>,
    /// What the member said of itself; absent when it did not answer.
    pub status: Option<net::NodeStatus>,
    /// Entries the leader has that this member does not (as the leader sees it).
    pub lag: Option<u64>,
    /// Why the member did not answer.
    pub error: Option<String>,
}

impl GroupStatus {
    pub fn from_rows(rows: &[(Member, Result<net::NodeStatus, String>)]) -> Self {
        let leader = rows
            .iter()
            .filter_map(|(m, r)| Some((m, r.as_ref().ok()?)))
            .filter(|(m, st)| st.leader == Some(m.id))
            .max_by_key(|(_, st)| st.term);
        let matched: std::collections::BTreeMap<u64, Option<u64>> = leader
            .map(|(_, st)| st.matched.iter().copied().collect())
            .unwrap_or_default();
        let leader_last = leader.and_then(|(_, st)| st.last_log_index);
        let members = rows
            .iter()
            .map(|(m, r)| MemberStatus {
                name: m.name.clone(),
                id: m.id,
                kind: m.kind,
                peer: m.peer,
                redis: m.redis,
                status: r.as_ref().ok().cloned(),
                lag: match (leader_last, matched.get(&m.id)) {
                    (Some(last), Some(have)) => Some(last.saturating_sub(have.unwrap_or(0))),
                    _ => None,
                },
                error: r.as_ref().err().cloned(),
            })
            .collect();
        GroupStatus {
            leader: leader.map(|(m, st)| LeaderRef {
                name: m.name.clone(),
                id: m.id,
                term: st.term,
                redis: m.redis,
            }),
            members,
        }
    }

    /// The name of the member with this id, or the id when no member has it.
    fn name_of(&self, id: u64) -> String {
        self.members
            .iter()
            .find(|m| m.id == id)
            .map_or_else(|| id.to_string(), |m| m.name.clone())
    }
}

/// A table with aligned columns: one line per member, then the leader.
impl std::fmt::Display for GroupStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let opt = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |x| x.to_string());
        let mut rows = vec![
            [
                "MEMBER", "KIND", "STATE", "LEADER", "TERM", "LAST_LOG", "APPLIED", "SNAPSHOT",
                "LAG", "DISK",
            ]
            .map(String::from)
            .to_vec(),
        ];
        for m in &self.members {
            let kind = match m.kind {
                Kind::Data => "data",
                Kind::Witness => "witness",
            };
            let mut row = vec![m.name.clone(), kind.to_string()];
            match (&m.status, &m.error) {
                (Some(st), _) => row.extend([
                    st.state.clone(),
                    st.leader.map_or_else(|| "-".into(), |id| self.name_of(id)),
                    st.term.to_string(),
                    opt(st.last_log_index),
                    opt(st.applied_index),
                    opt(st.snapshot_index),
                    opt(m.lag),
                    human_bytes(st.disk_bytes),
                ]),
                (None, error) => row.push(format!(
                    "unreachable at {}: {}",
                    m.peer,
                    error.as_deref().unwrap_or("no answer")
                )),
            }
            rows.push(row);
        }
        let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                rows.iter()
                    .filter(|r| r.len() > c + 1)
                    .map(|r| r[c].len())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for row in &rows {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                if c + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    line.push_str(&format!("{cell:<w$}  ", w = widths[c]));
                }
            }
            writeln!(f, "{}", line.trim_end())?;
        }
        match &self.leader {
            Some(l) => writeln!(
                f,
                "leader: {} (term {}{})",
                l.name,
                l.term,
                l.redis.map(|a| format!(", redis {a}")).unwrap_or_default()
            ),
            None => writeln!(f, "leader: none (no member answers as leader)"),
        }
    }
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// Asks the group's leader to add member `id` as a voter (it joins as a learner, catches
/// up, then votes) or to remove it (`citadel db add | remove`).
pub async fn change_voter(cfg: &DbConfig, id: u64, add: bool) -> Result<String, DbError> {
    let peers = net::Peers::new(cfg);
    let mut last = String::from("no member answered");
    for m in &cfg.members {
        let timeout = std::time::Duration::from_secs(60);
        match peers
            .call(m.id, &net::PeerReq::ChangeVoter { id, add }, timeout)
            .await
        {
            Ok(net::PeerResp::Admin(Ok(s))) => return Ok(s),
            Ok(net::PeerResp::Admin(Err(e))) if e.starts_with("TRYAGAIN") => last = e,
            Ok(net::PeerResp::Admin(Err(e))) => return Err(DbError::Raft(e)),
            Ok(other) => last = format!("unexpected answer {other:?}"),
            Err(e) => last = e.to_string(),
        }
    }
    Err(DbError::Raft(last))
}
