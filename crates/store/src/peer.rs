//! The block service between the two servers (internal HTTP on the back segment):
//! `PUT /blocks/<sha256>` stores and fsyncs a block (rejected unless the body matches the
//! name), `GET /blocks/<sha256>` returns it (404 when absent or rotten), `POST /touch` with
//! one block name a line refreshes those blocks and answers the names it does not hold.
//! A spare (the third block holder, see `replicas`) also answers `GET /list` (every block
//! name it holds) and `POST /drop` (names to remove: both servers hold them again).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};

use crate::Error;
use crate::blocks::{Block, BlockStore, MAX_BLOCK};
use crate::http::{HttpClient, Reply, reply};

/// A touch names at most this many blocks (a 10 GiB object in 1 MiB blocks).
const MAX_TOUCH: usize = 10_240;

pub async fn serve(listener: tokio::net::TcpListener, blocks: BlockStore, spare: bool) {
    crate::http::serve(listener, move |req| handle(blocks.clone(), spare, req)).await
}

fn names(text: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(text)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
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

async fn handle(blocks: BlockStore, spare: bool, req: Request<Incoming>) -> Reply {
    let path = req.uri().path().to_string();
    match (req.method().clone(), path.as_str()) {
        (Method::POST, "/touch") => {
            let text = match body(req, MAX_TOUCH * 65).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            return match blocks.touch(names(&text)).await {
                Ok(missing) => reply(StatusCode::OK, missing.join("\n")),
                Err(e) => failed(e),
            };
        }
        (Method::GET, "/list") if spare => {
            return match blocks.list().await {
                Ok(all) => reply(
                    StatusCode::OK,
                    all.into_iter()
                        .map(|b| b.hash)
                        .collect::<Vec<_>>()
                        .join("\n"),
                ),
                Err(e) => failed(e),
            };
        }
        (Method::POST, "/drop") if spare => {
            let text = match body(req, MAX_TOUCH * 65).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            let list = names(&text);
            if let Some(h) = list.iter().find(|h| !crate::blocks::valid_hash(h)) {
                return reply(StatusCode::BAD_REQUEST, format!("not a block name: {h}"));
            }
            let removed = tokio::task::spawn_blocking(move || {
                list.iter()
                    .try_for_each(|h| blocks.remove_if_older(h, Duration::ZERO).map(|_| ()))
            })
            .await;
            return match removed {
                Ok(Ok(())) => reply(StatusCode::NO_CONTENT, Bytes::new()),
                Ok(Err(e)) => failed(e),
                Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            };
        }
        _ => {}
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
            Ok(data) => match Block::named(&hash, data) {
                Ok(block) => match blocks.put(&block).await {
                    Ok(()) => reply(StatusCode::NO_CONTENT, Bytes::new()),
                    Err(e) => failed(e),
                },
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
    pub async fn put(&self, block: &Block) -> Result<(), Error> {
        let (status, _) = self
            .call(
                Method::PUT,
                &format!("/blocks/{}", block.hash()),
                block.data().clone(),
                "PUT block",
            )
            .await?;
        if status == StatusCode::NOT_FOUND {
            return Err(Error::Peer(format!("{}: PUT block: 404", self.addr())));
        }
        Ok(())
    }

    pub async fn get(&self, hash: &str) -> Result<Option<Block>, Error> {
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
        Block::named(hash, body).map(Some).map_err(|_| {
            Error::Peer(format!(
                "{}: block {hash} came back with other content",
                self.addr()
            ))
        })
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
            missing.extend(names(&body));
        }
        Ok(missing)
    }

    /// Whether the peer's block service answers (an empty touch).
    pub async fn ping(&self) -> Result<(), Error> {
        let (status, _) = self
            .call(Method::POST, "/touch", Bytes::new(), "ping")
            .await?;
        if status == StatusCode::NOT_FOUND {
            return Err(Error::Peer(format!("{}: ping: 404", self.addr())));
        }
        Ok(())
    }

    /// Every block a spare holds.
    pub async fn list(&self) -> Result<Vec<String>, Error> {
        let (status, body) = self
            .call(Method::GET, "/list", Bytes::new(), "list blocks")
            .await?;
        if status == StatusCode::NOT_FOUND {
            return Err(Error::Peer(format!("{}: not a spare", self.addr())));
        }
        Ok(names(&body))
    }

    /// Removes blocks from a spare.
    pub async fn drop_blocks(&self, hashes: &[String]) -> Result<(), Error> {
        for chunk in hashes.chunks(MAX_TOUCH) {
            let (status, _) = self
                .call(
                    Method::POST,
                    "/drop",
                    Bytes::from(chunk.join("\n")),
                    "drop blocks",
                )
                .await?;
            if status == StatusCode::NOT_FOUND {
                return Err(Error::Peer(format!("{}: not a spare", self.addr())));
            }
        }
        Ok(())
    }
}
