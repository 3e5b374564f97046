//! The HTTP reverse proxy: HTTP/1.1 and h2c (or h2 over TLS) in, pooled keep-alive
//! HTTP/1.1 to the backends.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::Gate;
use crate::balancer::{ActiveGuard, AwaitingHead, BoxError, ProxyBody};
use crate::config::Policy;
use crate::firewall::Refusal;
use crate::metrics::HttpStats;
use crate::upstream;

/// Which HTTP version a connection speaks, decided before serving it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Http1,
    Http2,
}

const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads the first bytes of a plain connection and decides h1 or h2c from them. Returns the
/// connection with those bytes put back in front, or None when the client closes or sends
/// nothing decisive within `within` (a silent client is dropped at the header timeout).
pub async fn sniff(
    mut sock: tokio::net::TcpStream,
    within: Duration,
) -> Option<(Proto, Prefixed<tokio::net::TcpStream>)> {
    use tokio::io::AsyncReadExt;
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = vec![0u8; 2048];
    let mut filled = 0;
    loop {
        let n = tokio::time::timeout_at(deadline, sock.read(&mut buf[filled..]))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        filled += n;
        let k = filled.min(H2_PREFACE.len());
        let proto = if buf[..k] != H2_PREFACE[..k] {
            Proto::Http1
        } else if k == H2_PREFACE.len() {
            Proto::Http2
        } else {
            // A partial preface: read on.
            continue;
        };
        buf.truncate(filled);
        return Some((
            proto,
            Prefixed {
                prefix: buf,
                pos: 0,
                inner: sock,
            },
        ));
    }
}

/// A stream that first yields bytes already read from it.
pub struct Prefixed<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.pos < self.prefix.len() {
            let n = (self.prefix.len() - self.pos).min(buf.remaining());
            let start = self.pos;
            buf.put_slice(&self.prefix[start..start + n]);
            self.pos += n;
            if self.pos == self.prefix.len() {
                self.prefix = Vec::new();
                self.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Serves one accepted connection (plain or TLS) until it closes.
pub async fn serve<S>(
    gate: Arc<Gate>,
    io: S,
    peer: SocketAddr,
    listener: Arc<str>,
    scheme: &'static str,
    proto: Proto,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let hc = gate.runtime.load().cfg.http.clone();
    let mut stopping = gate.stopping.subscribe();
    let stats = gate.metrics.http_stats(&listener);
    let info = Arc::new(Peer::new(peer, scheme));
    let svc = hyper::service::service_fn(move |req| {
        let gate = gate.clone();
        let listener = listener.clone();
        let stats = stats.clone();
        let info = info.clone();
        async move { Ok::<_, Infallible>(handle(gate, req, &info, listener, stats).await) }
    });
    // Serves `conn` until it ends; on process shutdown, lets the request in flight finish and
    // closes (GOAWAY on h2).
    macro_rules! drive {
        ($conn:expr) => {{
            let conn = $conn;
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => r,
                _ = async { stopping.wait_for(|s| *s).await.map(|_| ()) } => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            }
        }};
    }
    let res = match proto {
        Proto::Http1 => {
            let mut b = hyper::server::conn::http1::Builder::new();
            b.timer(TokioTimer::new())
                .header_read_timeout(Duration::from_millis(hc.header_read_timeout_ms))
                .max_buf_size(hc.max_header_bytes.max(8192))
                // A client that shuts its write side after the request still gets the answer.
                .half_close(true)
                .keep_alive(true);
            drive!(b.serve_connection(TokioIo::new(io), svc).with_upgrades())
        }
        Proto::Http2 => {
            let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            b.timer(TokioTimer::new())
                .max_header_list_size(hc.max_header_bytes.min(u32::MAX as usize) as u32)
                .max_concurrent_streams(256)
                .keep_alive_interval(Some(Duration::from_millis(hc.keepalive_idle_ms)))
                .keep_alive_timeout(Duration::from_secs(20));
            drive!(b.serve_connection(TokioIo::new(io), svc))
        }
    };
    if let Err(e) = res {
        tracing::debug!(%peer, error = %e, "http connection ended with an error");
    }
}

fn short(status: StatusCode, text: &'static str) -> Response<ProxyBody> {
    let mut r = Response::new(
        Full::new(Bytes::from_static(text.as_bytes()))
            .map_err(|n| match n {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if matches!(
        status,
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
    ) {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    r
}

async fn handle(
    gate: Arc<Gate>,
    req: Request<Incoming>,
    peer: &Peer,
    listener: Arc<str>,
    stats: Arc<HttpStats>,
) -> Response<ProxyBody> {
    let start = Instant::now();
    let resp = proxy(&gate, req, peer, &listener, &stats).await;
    stats.record(resp.status().as_u16(), start.elapsed());
    resp
}

const HOP_BY_HOP_COUNT: usize = 7;
const HOP_BY_HOP: [HeaderName; HOP_BY_HOP_COUNT] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Removes the hop-by-hop headers, and those named in Connection. One pass over what is
/// there rather than a hashed removal of every candidate, and no list of names to remove
/// unless Connection names a header: most messages carry a Connection of `keep-alive` or
/// `close` and nothing else hop-by-hop, and this runs twice per request.
fn strip_hop_by_hop(h: &mut HeaderMap) {
    let mut found = [false; HOP_BY_HOP_COUNT];
    let mut any = false;
    let mut names_headers = false;
    for (name, value) in h.iter() {
        let Some(k) = hop_by_hop_index(name) else {
            continue;
        };
        found[k] = true;
        any = true;
        if k == 0 && !names_only_options(value) {
            names_headers = true;
        }
    }
    if !any {
        return;
    }
    let mut named: Vec<HeaderName> = Vec::new();
    if names_headers {
        for value in h.get_all(header::CONNECTION) {
            named.extend(
                connection_tokens(value)
                    .filter(|n| !is_option(n))
                    .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok()),
            );
        }
    }
    for (k, name) in HOP_BY_HOP.iter().enumerate() {
        if found[k] {
            h.remove(name);
        }
    }
    for n in &named {
        h.remove(n);
    }
}

/// Where `name` is in HOP_BY_HOP (Connection is 0). A length test first: most names are
/// none of them, and the two that are not standard headers compare as bytes.
fn hop_by_hop_index(name: &HeaderName) -> Option<usize> {
    if !matches!(name.as_str().len(), 2 | 7 | 10 | 16 | 17) {
        return None;
    }
    HOP_BY_HOP.iter().position(|h| h == name)
}

fn connection_tokens(value: &HeaderValue) -> impl Iterator<Item = &str> {
    value
        .to_str()
        .ok()
        .into_iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// `close` and `keep-alive` are options, not names to remove (a Keep-Alive header is
/// hop-by-hop anyway).
fn is_option(token: &str) -> bool {
    token.eq_ignore_ascii_case("close") || token.eq_ignore_ascii_case("keep-alive")
}

fn names_only_options(value: &HeaderValue) -> bool {
    let b = value.as_bytes();
    b.eq_ignore_ascii_case(b"keep-alive")
        || b.eq_ignore_ascii_case(b"close")
        || connection_tokens(value).all(|t| t.is_empty() || is_option(t))
}

fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// What the forwarding headers need about the client, computed once per connection.
pub struct Peer {
    pub addr: SocketAddr,
    scheme: &'static str,
    /// The client IP as a header value.
    ip_value: HeaderValue,
    /// `for=<node>;proto=<scheme>`.
    forwarded_for: String,
}

impl Peer {
    pub fn new(addr: SocketAddr, scheme: &'static str) -> Self {
        let ip = addr.ip().to_canonical();
        let ip_text = ip.to_string();
        let node = if ip.is_ipv6() {
            format!("\"[{ip_text}]\"")
        } else {
            ip_text.clone()
        };
        Self {
            addr,
            scheme,
            ip_value: HeaderValue::from_str(&ip_text)
                .unwrap_or(HeaderValue::from_static("unknown")),
            forwarded_for: format!("for={node};proto={scheme}"),
        }
    }
}

/// Adds X-Forwarded-For, X-Forwarded-Proto and Forwarded for this hop.
fn forwarded_headers(h: &mut HeaderMap, peer: &Peer, host: Option<&str>) {
    extend_list(h, X_FORWARDED_FOR, |prev| match prev {
        None => Some(peer.ip_value.clone()),
        Some(prev) => {
            HeaderValue::from_str(&format!("{prev}, {}", peer.ip_value.to_str().unwrap_or(""))).ok()
        }
    });
    h.insert(
        X_FORWARDED_PROTO,
        HeaderValue::from_static(if peer.scheme == "https" {
            "https"
        } else {
            "http"
        }),
    );
    extend_list(h, header::FORWARDED, |prev| {
        let mut val = String::with_capacity(64);
        if let Some(prev) = prev {
            val.push_str(prev);
            val.push_str(", ");
        }
        val.push_str(&peer.forwarded_for);
        if let Some(host) = host.filter(|h| h.bytes().all(|b| b.is_ascii_graphic() && b != b'"')) {
            val.push_str(";host=\"");
            val.push_str(host);
            val.push('"');
        }
        // Hands the string's buffer over rather than copying it.
        HeaderValue::from_maybe_shared(Bytes::from(val)).ok()
    });
}

/// Sets `name` to `value(what it was)`, with one hashed lookup (the entry API); a value that
/// is not text counts as none.
fn extend_list(
    h: &mut HeaderMap,
    name: HeaderName,
    value: impl FnOnce(Option<&str>) -> Option<HeaderValue>,
) {
    match h.entry(name) {
        http::header::Entry::Vacant(v) => {
            if let Some(new) = value(None) {
                v.insert(new);
            }
        }
        http::header::Entry::Occupied(mut o) => {
            if let Some(new) = value(o.get().to_str().ok()) {
                o.insert(new);
            }
        }
    }
}

async fn proxy(
    gate: &Gate,
    mut req: Request<Incoming>,
    peer: &Peer,
    listener: &str,
    stats: &Arc<HttpStats>,
) -> Response<ProxyBody> {
    if let Err(r) = gate.firewall.admit_request(peer.addr.ip()) {
        gate.metrics.inc(r.metric(), &[("listener", listener)], 1);
        return match r {
            Refusal::RateLimited => short(StatusCode::TOO_MANY_REQUESTS, "429 too many requests\n"),
            _ => short(StatusCode::FORBIDDEN, "403 forbidden\n"),
        };
    }
    let rt = gate.runtime.load_full();
    let Some(svc) = rt.route(listener).cloned() else {
        return short(
            StatusCode::SERVICE_UNAVAILABLE,
            "503 no route for this listener\n",
        );
    };
    drop(rt);

    // An HTTP/1.1 upgrade (WebSocket and the like): the Upgrade and Connection headers go
    // through, and after a 101 the two connections are spliced.
    let upgrade = upgrade_protocol(&req).map(|proto| (proto, hyper::upgrade::on(&mut req)));
    let (mut parts, body) = req.into_parts();
    let host: Option<HeaderValue> = match parts.headers.get(header::HOST) {
        Some(v) => Some(v.clone()),
        None => parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
    };
    strip_hop_by_hop(&mut parts.headers);
    let host_text = host.as_ref().and_then(|v| v.to_str().ok());
    forwarded_headers(&mut parts.headers, peer, host_text);
    if let Some((proto, _)) = &upgrade {
        parts.headers.insert(header::UPGRADE, proto.clone());
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    if !parts.headers.contains_key(header::HOST)
        && let Some(v) = host
    {
        parts.headers.insert(header::HOST, v);
    }
    let path_q = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));

    let hash_key: Vec<u8> = match (svc.cfg.policy, &svc.cfg.hash_header) {
        (Policy::ConsistentHash, Some(hn)) => parts
            .headers
            .get(hn.as_str())
            .map(|v| v.as_bytes().to_vec())
            .unwrap_or_else(|| peer.addr.ip().to_canonical().to_string().into_bytes()),
        (Policy::ConsistentHash, None) => peer.addr.ip().to_canonical().to_string().into_bytes(),
        _ => Vec::new(),
    };

    // Requests without a body and an idempotent method can be replayed on another member.
    let replayable = is_idempotent(&parts.method) && body.is_end_stream();
    let mut body = Some(body);
    let attempts = if replayable {
        1 + svc.cfg.retries as usize
    } else {
        1
    };
    let timeout = Duration::from_millis(svc.cfg.response_timeout_ms);
    let connect_timeout = Duration::from_millis(svc.cfg.connect_timeout_ms);
    let mut tried: Vec<usize> = Vec::new();

    for attempt in 0..attempts {
        let Some((idx, member)) = svc.pick(Some(&hash_key), &tried) else {
            return if attempt == 0 {
                short(StatusCode::SERVICE_UNAVAILABLE, "503 no healthy backend\n")
            } else {
                short(
                    StatusCode::BAD_GATEWAY,
                    "502 bad gateway: no backend answered\n",
                )
            };
        };
        tried.push(idx);
        if attempt > 0 {
            gate.metrics
                .inc("gate_retries_total", &[("service", &svc.cfg.name)], 1);
        }
        let guard = ActiveGuard::new(member.clone());
        let out_body: ProxyBody = if replayable {
            Empty::<Bytes>::new().map_err(|n| match n {}).boxed()
        } else {
            match body.take() {
                Some(b) => InCount {
                    inner: b,
                    stats: stats.clone(),
                }
                .boxed(),
                None => Empty::<Bytes>::new().map_err(|n| match n {}).boxed(),
            }
        };
        let mut out = Request::new(out_body);
        *out.method_mut() = parts.method.clone();
        *out.uri_mut() = Uri::from(path_q.clone());
        *out.headers_mut() = parts.headers.clone();
        upstream::origin_form(&mut out, &member.authority);
        let sent = member.pool.send(member.addr, connect_timeout, out);
        let awaiting = AwaitingHead::new(&member);
        match tokio::time::timeout(timeout, sent).await {
            Ok(Ok((mut resp, lease))) => {
                awaiting.answered();
                svc.record_traffic(&member, true);
                if resp.status() == StatusCode::SWITCHING_PROTOCOLS
                    && let Some((_, client_side)) = upgrade
                {
                    // The connection is the tunnel's now: its lease is not given back.
                    drop(lease);
                    let backend_side = hyper::upgrade::on(&mut resp);
                    let idle = Duration::from_millis(svc.cfg.idle_timeout_ms);
                    tokio::spawn(splice(client_side, backend_side, idle, guard));
                    let (mut rp, _) = resp.into_parts();
                    let proto = rp.headers.get(header::UPGRADE).cloned();
                    strip_hop_by_hop(&mut rp.headers);
                    if let Some(p) = proto {
                        rp.headers.insert(header::UPGRADE, p);
                    }
                    rp.headers
                        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                    let empty = Empty::<Bytes>::new().map_err(|n| match n {}).boxed();
                    return Response::from_parts(rp, empty);
                }
                let (mut rp, rb) = resp.into_parts();
                strip_hop_by_hop(&mut rp.headers);
                let body = GuardedBody {
                    stats: stats.clone(),
                    idle: Duration::from_millis(svc.cfg.idle_timeout_ms),
                    timer: None,
                    inner: rb,
                    ended: false,
                    lease: Some((lease, svc.cfg.pool_idle_per_member)),
                    guard,
                }
                .boxed();
                return Response::from_parts(rp, body);
            }
            Ok(Err(e)) => {
                // No response byte has reached the client: a replayable request may try
                // another member.
                svc.record_traffic(&member, false);
                tracing::debug!(service = %svc.cfg.name, member = %member.name, error = %e, attempt, "backend request failed");
                continue;
            }
            Err(_) => {
                awaiting.timed_out();
                svc.record_traffic(&member, false);
                return short(
                    StatusCode::GATEWAY_TIMEOUT,
                    "504 gateway timeout: backend too slow\n",
                );
            }
        }
    }
    short(StatusCode::BAD_GATEWAY, "502 bad gateway: backend failed\n")
}

/// The protocol an HTTP/1.1 request asks to upgrade to (`Connection: upgrade` + `Upgrade`).
fn upgrade_protocol<B>(req: &Request<B>) -> Option<HeaderValue> {
    if req.version() != http::Version::HTTP_11 {
        return None;
    }
    let asks = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if asks {
        req.headers().get(header::UPGRADE).cloned()
    } else {
        None
    }
}

/// Relays an upgraded connection both ways until both sides close or it idles out; the
/// member counts it as in flight meanwhile.
async fn splice(
    client: hyper::upgrade::OnUpgrade,
    backend: hyper::upgrade::OnUpgrade,
    idle: Duration,
    _guard: ActiveGuard,
) {
    match tokio::try_join!(client, backend) {
        Ok((c, b)) => {
            crate::l4::pipe_io(TokioIo::new(c), TokioIo::new(b), idle).await;
        }
        Err(e) => tracing::debug!(error = %e, "upgrade failed"),
    }
}

/// A backend response body that keeps its member's in-flight count until it ends, so
/// least-connections and draining see streaming responses, that gives up when the
/// backend sends nothing for `idle` (the client's connection is then closed, not held),
/// and that gives its connection back to the member's pool if it was read to the end.
struct GuardedBody {
    inner: Incoming,
    guard: ActiveGuard,
    ended: bool,
    /// The connection and the pool's idle cap.
    lease: Option<(upstream::Lease, usize)>,
    stats: Arc<HttpStats>,
    idle: Duration,
    /// Armed only while the body waits on the backend.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// A client request body on its way to a backend, counted.
struct InCount {
    inner: Incoming,
    stats: Arc<HttpStats>,
}

impl Body for InCount {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(f))) = &r
            && let Some(d) = f.data_ref()
        {
            self.stats.add_in(d.len() as u64);
        }
        r.map(|o| o.map(|f| f.map_err(BoxError::from)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for GuardedBody {
    fn drop(&mut self) {
        if (self.ended || self.inner.is_end_stream())
            && let Some((lease, max_idle)) = self.lease.take()
        {
            self.guard.0.pool.give_back(lease, max_idle);
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("backend sent no body data for {0:?}")]
struct BodyIdle(Duration);

impl Body for GuardedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(r) => {
                self.timer = None;
                if r.is_none() {
                    self.ended = true;
                }
                if let Some(Ok(f)) = &r
                    && let Some(d) = f.data_ref()
                {
                    self.stats.add_out(d.len() as u64);
                }
                Poll::Ready(r.map(|f| f.map_err(BoxError::from)))
            }
            Poll::Pending => {
                let idle = self.idle;
                let timer = self
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyIdle(idle))))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_headers_append() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("10.9.9.9"));
        forwarded_headers(
            &mut h,
            &Peer::new("127.80.0.5:1234".parse().unwrap(), "http"),
            Some("example"),
        );
        assert_eq!(h["x-forwarded-for"], "10.9.9.9, 127.80.0.5");
        assert_eq!(
            h[header::FORWARDED],
            "for=127.80.0.5;proto=http;host=\"example\""
        );
    }

    #[test]
    fn connection_named_headers_are_stripped() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert!(h.get("x-secret").is_none() && h.get(header::CONNECTION).is_none());
        assert!(h.get("x-keep").is_some());
    }

    #[test]
    fn every_hop_by_hop_header_goes_and_options_name_nothing() {
        let mut h = HeaderMap::new();
        h.append(header::CONNECTION, HeaderValue::from_static("Keep-Alive"));
        h.append(header::CONNECTION, HeaderValue::from_static("X-One ,x-two"));
        for (name, value) in [
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "x-sum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("x-one", "1"),
            ("x-two", "2"),
            ("close", "not an option here: a header"),
            ("x-keep", "1"),
        ] {
            h.insert(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, ["close", "x-keep"]);
        // Only options: Connection goes, nothing else does.
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
    }
}
