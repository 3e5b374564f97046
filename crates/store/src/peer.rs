//! The block service between the two servers (internal HTTP on the back segment):
//! `PUT /blocks/<sha256>` stores and fsyncs a block (rejected unless the body matches the
//! name), `GET /blocks/<sha256>` returns it (404 when absent).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::Error;
use crate::blocks::{BlockStore, MAX_BLOCK};

pub async fn serve(listener: tokio::net::TcpListener, blocks: BlockStore) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let blocks = blocks.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(blocks.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn handle(
    blocks: BlockStore,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let reply = |code: StatusCode, body: Bytes| {
        let mut r = Response::new(Full::new(body));
        *r.status_mut() = code;
        Ok(r)
    };
    let path = req.uri().path().to_string();
    let Some(hash) = path.strip_prefix("/blocks/") else {
        return reply(StatusCode::NOT_FOUND, Bytes::from_static(b"no such path\n"));
    };
    let hash = hash.to_string();
    match *req.method() {
        Method::GET => match blocks.get(&hash).await {
            Ok(Some(data)) => reply(StatusCode::OK, data),
            Ok(None) => reply(StatusCode::NOT_FOUND, Bytes::new()),
            Err(e) => reply(StatusCode::BAD_REQUEST, Bytes::from(e.to_string())),
        },
        Method::PUT => {
            let body = match Limited::new(req.into_body(), MAX_BLOCK).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    return reply(StatusCode::BAD_REQUEST, Bytes::from(e.to_string()));
                }
            };
            match blocks.put(&hash, body).await {
                Ok(()) => reply(StatusCode::NO_CONTENT, Bytes::new()),
                Err(e @ Error::BadBlock(_)) => {
                    reply(StatusCode::BAD_REQUEST, Bytes::from(e.to_string()))
                }
                Err(e) => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    Bytes::from(e.to_string()),
                ),
            }
        }
        _ => reply(StatusCode::METHOD_NOT_ALLOWED, Bytes::new()),
    }
}

/// Client of the peer's block service.
#[derive(Clone)]
pub struct PeerClient {
    addr: SocketAddr,
    http: Client<HttpConnector, Full<Bytes>>,
}

const PEER_TIMEOUT: Duration = Duration::from_secs(10);

impl PeerClient {
    pub fn new(addr: SocketAddr) -> PeerClient {
        let mut conn = HttpConnector::new();
        conn.set_connect_timeout(Some(Duration::from_secs(1)));
        conn.set_nodelay(true);
        PeerClient {
            addr,
            http: Client::builder(TokioExecutor::new()).build(conn),
        }
    }

    fn uri(&self, hash: &str) -> String {
        format!("http://{}/blocks/{hash}", self.addr)
    }

    /// Returns once the peer has the block on disk (fsynced).
    pub async fn put(&self, hash: &str, data: Bytes) -> Result<(), Error> {
        let req = Request::put(self.uri(hash))
            .body(Full::new(data))
            .map_err(|e| Error::Peer(e.to_string()))?;
        let resp = tokio::time::timeout(PEER_TIMEOUT, self.http.request(req))
            .await
            .map_err(|_| Error::Peer(format!("{}: timed out", self.addr)))?
            .map_err(|e| Error::Peer(format!("{}: {e}", self.addr)))?;
        if !resp.status().is_success() {
            return Err(Error::Peer(format!(
                "{}: PUT block: {}",
                self.addr,
                resp.status()
            )));
        }
        Ok(())
    }

    pub async fn get(&self, hash: &str) -> Result<Option<Bytes>, Error> {
        let req = Request::get(self.uri(hash))
            .body(Full::new(Bytes::new()))
            .map_err(|e| Error::Peer(e.to_string()))?;
        let fetch = async {
            let resp = self
                .http
                .request(req)
                .await
                .map_err(|e| Error::Peer(format!("{}: {e}", self.addr)))?;
            if resp.status() == StatusCode::NOT_FOUND {
                return Ok(None);
            }
            if !resp.status().is_success() {
                return Err(Error::Peer(format!(
                    "{}: GET block: {}",
                    self.addr,
                    resp.status()
                )));
            }
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| Error::Peer(format!("{}: {e}", self.addr)))?
                .to_bytes();
            Ok(Some(body))
        };
        let got = tokio::time::timeout(PEER_TIMEOUT, fetch)
            .await
            .map_err(|_| Error::Peer(format!("{}: timed out", self.addr)))??;
        // Never trust the wire: the name is the checksum.
        match got {
            Some(b) if crate::blocks::hash_of(&b) != hash => Err(Error::Peer(format!(
                "{}: block {hash} came back with other content",
                self.addr
            ))),
            other => Ok(other),
        }
    }
}
