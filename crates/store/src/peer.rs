//! The block service between the two servers (internal HTTP on the back segment):
//! `PUT /blocks/<sha256>` stores and fsyncs a block (rejected unless the body matches the
//! name), `GET /blocks/<sha256>` returns it (404 when absent or rotten), `POST /touch` with
//! one block name a line refreshes those blocks and answers the names it does not hold.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};

use crate::Error;
use crate::blocks::{BlockStore, MAX_BLOCK, hash_of};
use crate::http::{HttpClient, Reply, reply};

/// A touch names at most this many blocks (a 10 GiB object in 1 MiB blocks).
const MAX_TOUCH: usize = 10_240;

pub async fn serve(listener: tokio::net::TcpListener, blocks: BlockStore) {
    crate::http::serve(listener, move |req| handle(blocks.clone(), req)).await
}

async fn body(req: Request<Incoming>, limit: usize) -> Result<Bytes, Reply> {
    match Limited::new(req.into_body(), limit).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) => Err(reply(StatusCode::BAD_REQUEST, e.to_string())),
    }
}

fn failed(e: Error) -> Reply {
    match e {
        Error::BadBlock(_) => reply(StatusCode::BAD_REQUEST, e.to_string()),
        e => reply(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn handle(blocks: BlockStore, req: Request<Incoming>) -> Reply {
    let path = req.uri().path().to_string();
    if path == "/touch" && req.method() == Method::POST {
        let text = match body(req, MAX_TOUCH * 65).await {
            Ok(b) => b,
            Err(r) => return r,
        };
        let names: Vec<String> = String::from_utf8_lossy(&text)
            .lines()
            .map(str::to_string)
            .collect();
        return match blocks.touch(names).await {
            Ok(missing) => reply(StatusCode::OK, missing.join("\n")),
            Err(e) => failed(e),
        };
    }
    let Some(hash) = path.strip_prefix("/blocks/") else {
        return reply(StatusCode::NOT_FOUND, "no such path\n");
    };
    let hash = hash.to_string();
    match *req.method() {
        Method::GET => match blocks.get(&hash).await {
            Ok(Some(data)) => reply(StatusCode::OK, data),
            Ok(None) => reply(StatusCode::NOT_FOUND, Bytes::new()),
            Err(e) => failed(e),
        },
        Method::PUT => match body(req, MAX_BLOCK).await {
            Ok(data) => match blocks.put(&hash, data).await {
                Ok(()) => reply(StatusCode::NO_CONTENT, Bytes::new()),
                Err(e) => failed(e),
            },
            Err(r) => r,
        },
        _ => reply(StatusCode::METHOD_NOT_ALLOWED, Bytes::new()),
    }
}

/// Client of the peer's block service.
#[derive(Clone)]
pub struct PeerClient {
    http: HttpClient,
}

const PEER_TIMEOUT: Duration = Duration::from_secs(10);

impl PeerClient {
    pub fn new(addr: SocketAddr) -> PeerClient {
        PeerClient {
            http: HttpClient::new(addr),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.http.addr
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
        what: &str,
    ) -> Result<(StatusCode, Bytes), Error> {
        let (status, body) = self.http.call(method, path, body, PEER_TIMEOUT).await?;
        if !status.is_success() && status != StatusCode::NOT_FOUND {
            return Err(Error::Peer(format!("{}: {what}: {status}", self.addr())));
        }
        Ok((status, body))
    }

    /// Returns once the peer has the block on disk (fsynced).
    pub async fn put(&self, hash: &str, data: Bytes) -> Result<(), Error> {
        let (status, _) = self
            .call(Method::PUT, &format!("/blocks/{hash}"), data, "PUT block")
            .await?;
        if status == StatusCode::NOT_FOUND {
            return Err(Error::Peer(format!("{}: PUT block: 404", self.addr())));
        }
        Ok(())
    }

    pub async fn get(&self, hash: &str) -> Result<Option<Bytes>, Error> {
        let (status, body) = self
            .call(
                Method::GET,
                &format!("/blocks/{hash}"),
                Bytes::new(),
                "GET block",
            )
            .await?;
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        // Never trust the wire: the name is the checksum.
        if hash_of(&body) != hash {
            return Err(Error::Peer(format!(
                "{}: block {hash} came back with other content",
                self.addr()
            )));
        }
        Ok(Some(body))
    }

    /// Refreshes the named blocks on the peer; returns the names it does not hold.
    pub async fn touch(&self, hashes: &[String]) -> Result<Vec<String>, Error> {
        let mut missing = Vec::new();
        for chunk in hashes.chunks(MAX_TOUCH) {
            let (status, body) = self
                .call(
                    Method::POST,
                    "/touch",
                    Bytes::from(chunk.join("\n")),
                    "touch blocks",
                )
                .await?;
            if status == StatusCode::NOT_FOUND {
                return Err(Error::Peer(format!("{}: touch: 404", self.addr())));
            }
            missing.extend(
                String::from_utf8_lossy(&body)
                    .lines()
                    .filter(|l| !l.is_empty())
                    .map(str::to_string),
            );
        }
        Ok(missing)
    }
}
