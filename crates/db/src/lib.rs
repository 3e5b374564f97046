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
        let addr = cfg
            .redis_listen
            .or(me.redis)
            .ok_or_else(|| DbError::Config("no redis address".into()))?;
        let also = cfg
            .also_listen
            .iter()
            .map(|ip| std::net::SocketAddr::new(*ip, addr.port()));
        for addr in std::iter::once(addr).chain(also) {
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
