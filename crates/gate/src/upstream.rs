//! Keep-alive HTTP/1.1 connections to one member. Ours rather than hyper-util's legacy
//! client, which the profile showed on the hot path: its checkout hashes a pool key and
//! parses the URI per request, and it spawns a task per response only to wait until the
//! connection may be reused. Here a checkout is a pop under a mutex, and a connection goes
//! back when the response body that used it is dropped having reached its end.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::Request;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Response, Version};
use hyper_util::rt::TokioIo;

use crate::balancer::ProxyBody;

/// An idle connection older than this is closed rather than reused: a backend may have
/// timed it out meanwhile (most do after 60 s or more).
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connect to {0}: timed out after {1:?}")]
    ConnectTimeout(SocketAddr, Duration),
    #[error("connect to {0}: {1}")]
    Connect(SocketAddr, std::io::Error),
    #[error("{0}")]
    Http(#[from] hyper::Error),
}

/// The idle connections of one member.
#[derive(Default)]
pub struct Pool {
    idle: Mutex<Vec<(SendRequest<ProxyBody>, Instant)>>,
}

/// A connection that carried a request, to give back once its response has ended.
pub struct Lease(SendRequest<ProxyBody>);

impl Pool {
    /// Sends `req` to `addr` on an idle connection, or a new one. A request that an idle
    /// connection never wrote (the backend closed it meanwhile) goes out on a fresh one, so
    /// a backend's keep-alive timeout never fails a request, replayable or not.
    pub async fn send(
        &self,
        addr: SocketAddr,
        connect_timeout: Duration,
        mut req: Request<ProxyBody>,
    ) -> Result<(Response<Incoming>, Lease), UpstreamError> {
        while let Some(mut sender) = self.take_idle() {
            if sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok((resp, Lease(sender))),
                Err(mut e) => match e.take_message() {
                    Some(unsent) => req = unsent,
                    None => return Err(e.into_error().into()),
                },
            }
        }
        let mut sender = connect(addr, connect_timeout).await?;
        let resp = sender.send_request(req).await?;
        Ok((resp, Lease(sender)))
    }

    fn take_idle(&self) -> Option<SendRequest<ProxyBody>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        // Newest first: the connection most likely still open, and the old ones age out.
        while let Some((sender, since)) = idle.pop() {
            if since.elapsed() < IDLE_TIMEOUT && !sender.is_closed() {
                return Some(sender);
            }
        }
        None
    }

    /// Keeps a connection whose last response ended, up to `max_idle` of them.
    pub fn give_back(&self, lease: Lease, max_idle: usize) {
        if lease.0.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() >= max_idle {
            // Full: make room by dropping what can no longer serve.
            idle.retain(|(s, since)| now.duration_since(*since) < IDLE_TIMEOUT && !s.is_closed());
        }
        if idle.len() < max_idle {
            idle.push((lease.0, now));
        }
    }
}

async fn connect(
    addr: SocketAddr,
    timeout: Duration,
) -> Result<SendRequest<ProxyBody>, UpstreamError> {
    let stream = match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(UpstreamError::Connect(addr, e)),
        Err(_) => return Err(UpstreamError::ConnectTimeout(addr, timeout)),
    };
    let _ = stream.set_nodelay(true);
    // A member whose box lost power or its link sends no FIN and no RST: without this a
    // request written to it would wait out the whole response timeout (30 s by default).
    // With it, data the member's kernel leaves unacknowledged for a connect timeout fails the
    // connection, and a replayable request goes to another member at once. A live member that
    // is merely slow still acknowledges at once, so this never cuts a slow answer short.
    let _ = socket2::SockRef::from(&stream).set_tcp_user_timeout(Some(timeout));
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(%addr, error = %e, "backend connection ended with an error");
        }
    });
    Ok(sender)
}

/// A request to a member as it goes on the wire: origin-form target, HTTP/1.1, and a Host
/// (the member's address when the client sent none, as hyper's client would add).
pub fn origin_form(req: &mut Request<ProxyBody>, authority: &http::uri::Authority) {
    *req.version_mut() = Version::HTTP_11;
    if !req.headers().contains_key(http::header::HOST)
        && let Ok(v) = http::HeaderValue::from_str(authority.as_str())
    {
        req.headers_mut().insert(http::header::HOST, v);
    }
}
