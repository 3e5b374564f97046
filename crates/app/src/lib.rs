//! Citadel's `app` role: an HTTP service (port 8000) hosting the reference services — first
//! the REST document API — over the Redis-protocol db, found by DNS through the gate.
//!
//! See `NOTES.md` for the key layout, compare-and-set and retry design.

pub mod config;
pub mod db;
pub mod http;
pub mod keys;
pub mod load;
pub mod metrics;
pub mod store;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::serve::ListenerExt as _;

pub use config::{AppConfig, AuthConfig, DbConfig, DnsConfig, Limits};
pub use db::{Db, DbError, ReadMode};

/// Errors of the library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("configuration: {msg}")]
    Config { msg: String },
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Opens a db handle from a configuration (what the CLI's `app key` verbs use).
pub fn connect_db(config: &AppConfig) -> Result<Db, Error> {
    config.validate()?;
    Db::new(&config.db, Arc::new(metrics::Metrics::default()))
}

/// Runs the app node until SIGTERM or Ctrl-C.
pub async fn run(config: AppConfig) -> anyhow::Result<()> {
    run_until(config, shutdown_signal()).await
}

/// Runs the app node until `shutdown` completes, then drains open requests.
pub async fn run_until(
    config: AppConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    config.validate()?;
    let metrics = Arc::new(metrics::Metrics::default());
    let db = Db::new(&config.db, metrics.clone())?;
    let state = Arc::new(http::AppState {
        db,
        keys: keys::KeyCache::new(Duration::from_millis(config.auth.cache_ms)),
        metrics,
        config: config.clone(),
    });
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding the API listener {}", config.listen))?;
    if let Some(admin) = config.admin_listen {
        let l = tokio::net::TcpListener::bind(admin)
            .await
            .with_context(|| format!("binding the admin listener {admin}"))?;
        let app = http::admin_router(state.clone());
        tokio::spawn(async move {
            if let Err(e) = axum::serve(l, app).await {
                tracing::error!(error = %e, "admin listener failed");
            }
        });
        tracing::info!(%admin, "admin listening (/metrics, /health)");
    }
    tracing::info!(listen = %config.listen, "app listening");
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, http::router(state))
        .with_graceful_shutdown(shutdown)
        .await
        .context("serving the API")?;
    Ok(())
}

/// Completes on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
