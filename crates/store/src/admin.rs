//! The admin address (convention :9100): `GET /metrics` (Prometheus text), `GET /health`,
//! `GET /status` (this server's catalogue record as JSON), `POST /scrub` (scrub now; answers
//! the report when done). `scrub` is the client the CLI uses.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};

use crate::Error;
use crate::http::{HttpClient, Reply, reply};
use crate::s3::Store;
use crate::stats::ScrubReport;

pub async fn serve(listener: tokio::net::TcpListener, store: Store) {
    crate::http::serve(listener, move |req| handle(store.clone(), req)).await
}

fn json<T: serde::Serialize>(v: &T) -> Reply {
    match serde_json::to_vec(v) {
        Ok(b) => reply(StatusCode::OK, b),
        Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn handle(store: Store, req: Request<Incoming>) -> Reply {
    match (req.method().clone(), req.uri().path()) {
        (Method::GET, "/metrics") => reply(StatusCode::OK, store.stats.render()),
        (Method::GET, "/health") => reply(StatusCode::OK, "ok\n"),
        (Method::GET, "/status") => json(&store.stats.snapshot()),
        (Method::POST, "/scrub") => match store.scrub().await {
            Ok(r) => json(&r),
            Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        },
        _ => reply(StatusCode::NOT_FOUND, Bytes::from_static(b"no such path\n")),
    }
}

/// Asks the server at `admin` to scrub its disk now and waits (up to `timeout`) for its
/// report.
pub async fn scrub(admin: SocketAddr, timeout: Duration) -> Result<ScrubReport, Error> {
    let (status, body) = HttpClient::new(admin)
        .call(Method::POST, "/scrub", Bytes::new(), timeout)
        .await?;
    if !status.is_success() {
        return Err(Error::Peer(format!(
            "{admin}: scrub: {status}: {}",
            String::from_utf8_lossy(&body)
        )));
    }
    serde_json::from_slice(&body).map_err(|e| Error::Peer(format!("{admin}: scrub: {e}")))
}
