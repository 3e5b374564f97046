//! The store role: an S3 API (s3s) whose object metadata lives in the db and whose content
//! lives in content-addressed, checksummed blocks on both data servers' disks.

pub mod admin;
pub mod blocks;
pub mod catalogue;
pub mod config;
pub mod gc;
pub mod http;
pub mod keys;
pub mod maintain;
pub mod meta;
pub mod multipart;
pub mod peer;
pub mod placement;
pub mod replicas;
pub mod s3;
pub mod scrub;
pub mod stats;

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use s3s::auth::{S3Auth, SecretKey};
use s3s::service::S3ServiceBuilder;
use s3s::{S3Result, s3_error};

pub use config::{SpareConfig, StoreConfig};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("config: {0}")]
    Config(String),
    #[error("disk: {0}")]
    Io(String),
    #[error("block: {0}")]
    BadBlock(String),
    #[error("peer: {0}")]
    Peer(String),
    #[error("db: {0}")]
    Db(String),
}

/// SigV4 secrets come from the db's `s3:keys` (s3s verifies the signature with it).
struct DbAuth(Arc<meta::Db>);

#[async_trait::async_trait]
impl S3Auth for DbAuth {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        match self
            .0
            .hget_json::<meta::AccessKey>(meta::KEYS, access_key)
            .await
        {
            Ok(Some(k)) => Ok(SecretKey::from(k.secret)),
            Ok(None) => Err(s3_error!(InvalidAccessKeyId, "no such access key")),
            Err(e) => Err(s3_error!(ServiceUnavailable, "{e}")),
        }
    }
}

pub fn connect_db(cfg: &StoreConfig) -> Result<meta::Db, Error> {
    meta::Db::new(&cfg.db)
}

/// Runs the store until SIGTERM or Ctrl-C.
pub async fn run(cfg: StoreConfig) -> Result<(), Error> {
    run_until(cfg, terminated()).await
}

async fn terminated() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(t) => t,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Serves S3 on `listen` and the block service on `peer_listen` until `shutdown` resolves.
pub async fn run_until(
    cfg: StoreConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), Error> {
    let db = Arc::new(meta::Db::new(&cfg.db)?);
    let blocks = blocks::BlockStore::open(&cfg.data_dir)?;
    let bind = |a: std::net::SocketAddr| async move {
        tokio::net::TcpListener::bind(a)
            .await
            .map_err(|e| Error::Io(format!("listen on {a}: {e}")))
    };
    let s3_listener = bind(cfg.listen).await?;
    let peer_listener = bind(cfg.peer_listen).await?;
    let admin_listener = match cfg.admin_listen {
        Some(a) => Some(bind(a).await?),
        None => None,
    };
    let store = s3::Store {
        db: Arc::clone(&db),
        blocks: blocks.clone(),
        remote: {
            let (servers, me) = cfg.placement_servers();
            Arc::new(replicas::Replicas::new(
                servers,
                me,
                cfg.spare.map(peer::PeerClient::new),
            ))
        },
        region: cfg.region.clone(),
        stats: Arc::new(stats::Stats::default()),
        gc_grace: Duration::from_secs_f64(cfg.gc_grace_secs),
        scrub_lock: Arc::default(),
    };
    let mut tasks = vec![tokio::spawn(peer::serve(peer_listener, blocks, false))];
    if let Some(l) = admin_listener {
        tasks.push(tokio::spawn(admin::serve(l, store.clone())));
    }
    let maintainer = Arc::new(maintain::Maintainer {
        store: store.clone(),
        name: cfg.server_name(),
        interval: Duration::from_secs_f64(cfg.catalogue_interval_secs),
        reclone_bytes_per_s: cfg.reclone_mib_per_s * 1024.0 * 1024.0,
    });
    tasks.push(tokio::spawn(maintainer.run()));
    if cfg.scrub_interval_secs > 0.0 {
        tasks.push(tokio::spawn(scrub_every(
            store.clone(),
            Duration::from_secs_f64(cfg.scrub_interval_secs),
        )));
    }
    let mut builder = S3ServiceBuilder::new(store);
    builder.set_auth(DbAuth(db));
    builder.set_access(keys::Access);
    let service = builder.build();
    tracing::info!(s3 = %cfg.listen, peer = %cfg.peer_listen, admin = ?cfg.admin_listen, "store serving");
    let accept = async {
        loop {
            let Ok((stream, _)) = s3_listener.accept().await else {
                continue;
            };
            // Without it a small GET waited ~40 ms: the response went out in two writes and
            // Nagle held the second until the client's delayed ACK of the first.
            let _ = stream.set_nodelay(true);
            let svc = service.clone();
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    };
    tokio::select! {
        () = accept => {}
        () = shutdown => {}
    }
    for t in tasks {
        t.abort();
    }
    Ok(())
}

async fn scrub_every(store: s3::Store, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        match store.scrub().await {
            Ok(r) => tracing::info!(
                checked = r.checked,
                rotten = r.rotten,
                repaired = r.repaired,
                "scrub done"
            ),
            Err(e) => tracing::warn!(error = %e, "scrub failed"),
        }
    }
}

/// Runs a spare block holder (see `replicas`) until SIGTERM or Ctrl-C.
pub async fn run_spare(cfg: SpareConfig) -> Result<(), Error> {
    let blocks = blocks::BlockStore::open(&cfg.data_dir)?;
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| Error::Io(format!("listen on {}: {e}", cfg.listen)))?;
    tracing::info!(blocks = %cfg.listen, "spare serving");
    tokio::select! {
        () = peer::serve(listener, blocks, true) => {}
        () = terminated() => {}
    }
    Ok(())
}
