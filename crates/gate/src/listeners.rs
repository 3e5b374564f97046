//! The set of bound listeners and its reconciliation on reload.
//!
//! A listener whose name, kind and address are unchanged keeps its socket. Others are bound
//! anew (with `SO_REUSEPORT`, so a moved or re-kinded listener can be bound before the old
//! socket closes) and the old accept loops stopped. Connections already accepted run in
//! their own tasks and are never dropped by a reload.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};
use tokio::task::JoinHandle;

use crate::Gate;
use crate::config::{ListenerConfig, ListenerKind};
use crate::error::GateError;

pub type TlsSlot = Arc<ArcSwap<rustls::ServerConfig>>;

struct Handle {
    cfg: ListenerConfig,
    accept: JoinHandle<()>,
    tls: Option<TlsSlot>,
}

#[derive(Default)]
pub struct Listeners {
    map: HashMap<String, Handle>,
}

enum Bound {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

pub struct Plan {
    fresh: Vec<(ListenerConfig, Bound, Option<TlsSlot>)>,
    keep: Vec<(ListenerConfig, Option<Arc<rustls::ServerConfig>>)>,
}

pub fn bind_tcp(addr: SocketAddr) -> Result<TcpListener, GateError> {
    let e = |source| GateError::Bind { addr, source };
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(e)?;
    sock.set_reuseaddr(true).map_err(e)?;
    sock.set_reuseport(true).map_err(e)?;
    sock.set_nodelay(true).map_err(e)?;
    sock.bind(addr).map_err(e)?;
    sock.listen(1024).map_err(e)
}

pub fn bind_udp(addr: SocketAddr) -> Result<UdpSocket, GateError> {
    let e = |source| GateError::Bind { addr, source };
    let domain = if addr.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let sock = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))
        .map_err(e)?;
    sock.set_reuse_address(true).map_err(e)?;
    sock.set_reuse_port(true).map_err(e)?;
    sock.set_nonblocking(true).map_err(e)?;
    sock.bind(&addr.into()).map_err(e)?;
    UdpSocket::from_std(sock.into()).map_err(e)
}

/// Fails with "address in use" when a socket this process does not own holds `addr`, so that
/// SO_REUSEPORT (used so that reloads can bind before closing) never silently shares a port
/// with another process, such as a stale gate. A probe without SO_REUSEPORT conflicts with
/// any socket already bound there.
pub fn ensure_free(addr: SocketAddr, udp: bool) -> Result<(), GateError> {
    let probe = if udp {
        std::net::UdpSocket::bind(addr).map(drop)
    } else {
        std::net::TcpListener::bind(addr).map(drop)
    };
    probe.map_err(|source| GateError::Bind { addr, source })
}

/// Counts an open client connection for graceful shutdown.
struct OpenConn(Arc<Gate>);

impl OpenConn {
    fn new(g: &Arc<Gate>) -> Self {
        g.open_conns
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Self(g.clone())
    }
}

impl Drop for OpenConn {
    fn drop(&mut self) {
        self.0
            .open_conns
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

impl Listeners {
    /// Whether one of our listeners already has a socket on `addr` (UDP or TCP).
    fn holds(&self, addr: SocketAddr, udp: bool) -> bool {
        self.map
            .values()
            .any(|h| h.cfg.bind == addr && (h.cfg.kind == ListenerKind::Udp) == udp)
    }

    /// Stops every accept loop (process shutdown); open connections carry on.
    pub fn close_all(&mut self) {
        for (_, h) in self.map.drain() {
            h.accept.abort();
        }
    }

    /// Binds what must be bound and loads TLS material; changes nothing yet.
    pub async fn prepare(&self, cfgs: &[ListenerConfig]) -> Result<Plan, GateError> {
        let mut plan = Plan {
            fresh: Vec::new(),
            keep: Vec::new(),
        };
        for c in cfgs {
            let tls = match c.kind {
                ListenerKind::Https => Some(Arc::new(crate::tls::server_config(c)?)),
                _ => None,
            };
            if let Some(h) = self.map.get(&c.name)
                && h.cfg.kind == c.kind
                && h.cfg.bind == c.bind
            {
                plan.keep.push((c.clone(), tls));
                continue;
            }
            let bound = match c.kind {
                ListenerKind::Udp => {
                    if !self.holds(c.bind, true) {
                        ensure_free(c.bind, true)?;
                    }
                    Bound::Udp(bind_udp(c.bind)?)
                }
                _ => {
                    if !self.holds(c.bind, false) {
                        ensure_free(c.bind, false)?;
                    }
                    Bound::Tcp(bind_tcp(c.bind)?)
                }
            };
            plan.fresh
                .push((c.clone(), bound, tls.map(ArcSwap::new).map(Arc::new)));
        }
        Ok(plan)
    }

    /// Starts the fresh listeners and stops the ones no longer configured.
    pub fn commit(&mut self, gate: &Arc<Gate>, plan: Plan) {
        let mut next = HashMap::new();
        for (cfg, tls) in plan.keep {
            if let Some(mut h) = self.map.remove(&cfg.name) {
                if let (Some(slot), Some(new)) = (&h.tls, tls) {
                    slot.store(new);
                }
                h.cfg = cfg;
                next.insert(h.cfg.name.clone(), h);
            }
        }
        for (cfg, bound, tls) in plan.fresh {
            let name: Arc<str> = Arc::from(cfg.name.as_str());
            let accept = match bound {
                Bound::Tcp(l) => {
                    let g = gate.clone();
                    let kind = cfg.kind;
                    let tls = tls.clone();
                    tokio::spawn(accept_loop(g, l, name, kind, tls))
                }
                Bound::Udp(s) => tokio::spawn(crate::l4::run_udp(gate.clone(), Arc::new(s), name)),
            };
            tracing::info!(listener = %cfg.name, bind = %cfg.bind, kind = ?cfg.kind, "listening");
            if let Some(old) = self.map.remove(&cfg.name) {
                old.accept.abort();
            }
            next.insert(cfg.name.clone(), Handle { cfg, accept, tls });
        }
        for (_, old) in self.map.drain() {
            tracing::info!(listener = %old.cfg.name, "listener closed");
            old.accept.abort();
        }
        self.map = next;
    }
}

async fn accept_loop(
    gate: Arc<Gate>,
    l: TcpListener,
    name: Arc<str>,
    kind: ListenerKind,
    tls: Option<TlsSlot>,
) {
    let accepted = gate
        .metrics
        .counter("gate_connections_total", &[("listener", &name)]);
    loop {
        let (sock, peer) = match l.accept().await {
            Ok(x) => {
                accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                x
            }
            Err(e) => {
                // Out of descriptors and the like: back off briefly rather than spin.
                tracing::warn!(listener = %name, error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                continue;
            }
        };
        let gate = gate.clone();
        let name = name.clone();
        let tls = tls.as_ref().map(|t| t.load_full());
        tokio::spawn(async move { handle_conn(gate, sock, peer, name, kind, tls).await });
    }
}

async fn handle_conn(
    gate: Arc<Gate>,
    sock: TcpStream,
    peer: SocketAddr,
    name: Arc<str>,
    kind: ListenerKind,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    let _ = sock.set_nodelay(true);
    let _open = OpenConn::new(&gate);
    let rt = gate.runtime.load_full();
    let slot = match gate.firewall.admit_conn(&rt.cfg.firewall, &name, peer.ip()) {
        Ok(s) => s,
        Err(r) => {
            gate.metrics.inc(r.metric(), &[("listener", &name)], 1);
            tracing::debug!(listener = %name, %peer, reason = ?r, "connection refused");
            return;
        }
    };
    let header_timeout = std::time::Duration::from_millis(rt.cfg.http.header_read_timeout_ms);
    drop(rt);
    match kind {
        ListenerKind::Http => {
            // A client that stays silent is dropped at the header timeout.
            let Some((proto, sock)) = crate::http::sniff(sock, header_timeout).await else {
                return;
            };
            // Boxed: the connection's future is large, and spawning moves it by value.
            Box::pin(crate::http::serve(gate, sock, peer, name, "http", proto)).await
        }
        ListenerKind::Https => {
            let Some(cfg) = tls else { return };
            let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
            match tokio::time::timeout(header_timeout, acceptor.accept(sock)).await {
                Ok(Ok(s)) => {
                    let proto = match s.get_ref().1.alpn_protocol() {
                        Some(b"h2") => crate::http::Proto::Http2,
                        _ => crate::http::Proto::Http1,
                    };
                    Box::pin(crate::http::serve(gate, s, peer, name, "https", proto)).await
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "tls handshake failed"),
                Err(_) => tracing::debug!(%peer, "tls handshake timed out"),
            }
        }
        ListenerKind::Tcp => Box::pin(crate::l4::proxy_tcp(gate, sock, peer, name)).await,
        ListenerKind::Udp => {}
    }
    drop(slot);
}
