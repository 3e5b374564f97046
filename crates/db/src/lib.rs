//! Citadel's replicated database: Raft (openraft) over redb storage, the Redis protocol on
//! top, and a vote-only witness role so that two data servers plus a witness survive the
//! loss of any one box.

pub mod codec;
pub mod config;
pub mod data;
pub mod error;
pub mod net;
pub mod node;
pub mod resp;
pub mod server;
pub mod sm;
pub mod store;
pub mod types;

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
    std::future::pending::<()>().await;
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

/// A plain-text table of [`cluster_status`].
pub fn format_status(rows: &[(Member, Result<net::NodeStatus, String>)]) -> String {
    let mut s = String::from(
        "ID  NAME        KIND     STATE      LEADER  TERM  LAST_LOG  APPLIED  SNAPSHOT  PURGED  DISK_BYTES\n",
    );
    let leader_matched: std::collections::BTreeMap<u64, Option<u64>> = rows
        .iter()
        .filter_map(|(_, r)| r.as_ref().ok())
        .filter(|st| st.leader == Some(st.id))
        .flat_map(|st| st.matched.iter().copied())
        .collect();
    let opt = |v: Option<u64>| v.map(|x| x.to_string()).unwrap_or_else(|| "-".into());
    for (m, r) in rows {
        let kind = match m.kind {
            Kind::Data => "data",
            Kind::Witness => "witness",
        };
        match r {
            Ok(st) => s.push_str(&format!(
                "{:<3} {:<11} {:<8} {:<10} {:<7} {:<5} {:<9} {:<8} {:<9} {:<7} {}{}\n",
                m.id,
                m.name,
                kind,
                st.state,
                opt(st.leader),
                st.term,
                opt(st.last_log_index),
                opt(st.applied_index),
                opt(st.snapshot_index),
                opt(st.purged_index),
                st.disk_bytes,
                match leader_matched.get(&m.id) {
                    Some(Some(i)) => format!("  (leader has it matched at {i})"),
                    _ => String::new(),
                }
            )),
            Err(e) => s.push_str(&format!(
                "{:<3} {:<11} {:<8} unreachable: {e}\n",
                m.id, m.name, kind
            )),
        }
    }
    s
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
