//! Layer-4 forwarding: TCP streams and UDP flows.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::Mutex;

use crate::Gate;
use crate::balancer::ActiveGuard;
use crate::firewall::now_ms;

/// Most UDP flows one listener tracks at a time; datagrams of new flows beyond it are dropped.
pub const MAX_UDP_FLOWS: usize = 4096;

/// Forwards one accepted TCP connection to a member of the listener's service; a member
/// that refuses the connect is skipped for the next (up to the service's retries).
pub async fn proxy_tcp(
    gate: Arc<Gate>,
    mut client: TcpStream,
    peer: SocketAddr,
    listener: Arc<str>,
) {
    if let Err(r) = gate.firewall.admit_request(peer.ip()) {
        gate.metrics.inc(r.metric(), &[("listener", &listener)], 1);
        return;
    }
    let Some(svc) = gate.runtime.load().route(&listener).cloned() else {
        return;
    };
    let key = peer.ip().to_canonical().to_string().into_bytes();
    let connect_timeout = Duration::from_millis(svc.cfg.connect_timeout_ms);
    let mut tried = Vec::new();
    let mut upstream = None;
    for _ in 0..=svc.cfg.retries {
        let Some((idx, m)) = svc.pick(Some(&key), &tried) else {
            break;
        };
        tried.push(idx);
        let guard = ActiveGuard::new(m.clone());
        match tokio::time::timeout(connect_timeout, TcpStream::connect(m.addr)).await {
            Ok(Ok(s)) => {
                svc.record_traffic(&m, true);
                upstream = Some((s, guard));
                break;
            }
            _ => svc.record_traffic(&m, false),
        }
    }
    let Some((mut up, _guard)) = upstream else {
        tracing::debug!(listener = %listener, %peer, "no backend for tcp connection");
        return;
    };
    let _ = up.set_nodelay(true);
    let idle = Duration::from_millis(svc.cfg.idle_timeout_ms);
    drop(svc);
    let (a, b) = pipe(&mut client, &mut up, idle).await;
    gate.metrics.inc(
        "gate_bytes_total",
        &[("listener", &listener), ("dir", "in")],
        a,
    );
    gate.metrics.inc(
        "gate_bytes_total",
        &[("listener", &listener), ("dir", "out")],
        b,
    );
}

/// Copies both ways until both sides close or nothing moves for `idle`.
/// Returns (client→upstream, upstream→client) byte counts.
async fn pipe(a: &mut TcpStream, b: &mut TcpStream, idle: Duration) -> (u64, u64) {
    let last = AtomicU64::new(now_ms());
    let (mut ar, mut aw) = a.split();
    let (mut br, mut bw) = b.split();
    tokio::join!(
        copy_idle(&mut ar, &mut bw, idle, &last),
        copy_idle(&mut br, &mut aw, idle, &last)
    )
}

/// [`pipe`] for any pair of streams (upgraded HTTP connections).
pub async fn pipe_io<A, B>(a: A, b: B, idle: Duration) -> (u64, u64)
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite,
{
    let last = AtomicU64::new(now_ms());
    let (mut ar, mut aw) = tokio::io::split(a);
    let (mut br, mut bw) = tokio::io::split(b);
    tokio::join!(
        copy_idle(&mut ar, &mut bw, idle, &last),
        copy_idle(&mut br, &mut aw, idle, &last)
    )
}

async fn copy_idle<R, W>(r: &mut R, w: &mut W, idle: Duration, last: &AtomicU64) -> u64
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    let mut n_total = 0u64;
    loop {
        match tokio::time::timeout(idle, r.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                last.store(now_ms(), Ordering::Relaxed);
                if w.write_all(&buf[..n]).await.is_err() {
                    break;
                }
                n_total += n as u64;
            }
            Err(_) => {
                // Idle on this side; the pipe is idle only if the other side is too.
                if now_ms().saturating_sub(last.load(Ordering::Relaxed)) >= idle.as_millis() as u64
                {
                    break;
                }
            }
        }
    }
    let _ = w.shutdown().await;
    n_total
}

struct Flow {
    upstream: Arc<UdpSocket>,
    last: Arc<AtomicU64>,
}

/// Serves one UDP listener: each client address is a flow bound to one member through its
/// own upstream socket; replies go back from the listener's address. Flows end after the
/// service's idle timeout, or at once when the member answers ICMP unreachable. A flow counts
/// as a connection for the firewall rules and the per-IP connection cap.
pub async fn run_udp(gate: Arc<Gate>, sock: Arc<UdpSocket>, listener: Arc<str>) {
    let flows: Arc<Mutex<HashMap<SocketAddr, Flow>>> = Arc::new(Mutex::new(HashMap::new()));
    let bytes_in = gate.metrics.counter(
        "gate_bytes_total",
        &[("listener", &listener), ("dir", "in")],
    );
    let bytes_out = gate.metrics.counter(
        "gate_bytes_total",
        &[("listener", &listener), ("dir", "out")],
    );
    let mut buf = vec![0u8; 65535];
    loop {
        let (n, peer) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(listener = %listener, error = %e, "udp recv failed");
                continue;
            }
        };
        let existing = flows
            .lock()
            .await
            .get(&peer)
            .map(|f| (f.upstream.clone(), f.last.clone()));
        let (up, last) = match existing {
            Some(x) => x,
            None => {
                let rt = gate.runtime.load_full();
                // A flow counts as a connection for the rules and the per-IP cap.
                let slot = match gate
                    .firewall
                    .admit_conn(&rt.cfg.firewall, &listener, peer.ip())
                    .and_then(|slot| gate.firewall.admit_request(peer.ip()).map(|_| slot))
                {
                    Ok(slot) => slot,
                    Err(r) => {
                        gate.metrics.inc(r.metric(), &[("listener", &listener)], 1);
                        continue;
                    }
                };
                if flows.lock().await.len() >= MAX_UDP_FLOWS {
                    continue;
                }
                let Some(svc) = rt.route(&listener).cloned() else {
                    continue;
                };
                let key = peer.ip().to_canonical().to_string().into_bytes();
                let Some((_, m)) = svc.pick(Some(&key), &[]) else {
                    continue;
                };
                let bind: SocketAddr = if m.addr.is_ipv4() {
                    SocketAddr::from(([0, 0, 0, 0], 0))
                } else {
                    SocketAddr::from(([0u16; 8], 0))
                };
                let up = match UdpSocket::bind(bind).await {
                    Ok(s) => s,
                    Err(_) => continue,
                };
                if up.connect(m.addr).await.is_err() {
                    continue;
                }
                tracing::debug!(listener = %listener, %peer, member = %m.name, "udp flow started");
                let up = Arc::new(up);
                let last = Arc::new(AtomicU64::new(now_ms()));
                flows.lock().await.insert(
                    peer,
                    Flow {
                        upstream: up.clone(),
                        last: last.clone(),
                    },
                );
                let idle = Duration::from_millis(svc.cfg.idle_timeout_ms);
                tokio::spawn(udp_replies(FlowCtx {
                    sock: sock.clone(),
                    up: up.clone(),
                    peer,
                    last: last.clone(),
                    idle,
                    flows: flows.clone(),
                    passive_fail: svc.cfg.passive_fail,
                    service: svc.cfg.name.clone(),
                    bytes_out: bytes_out.clone(),
                    guard: ActiveGuard::new(m),
                    _slot: slot,
                }));
                (up, last)
            }
        };
        last.store(now_ms(), Ordering::Relaxed);
        bytes_in.fetch_add(n as u64, Ordering::Relaxed);
        if let Err(e) = up.send(&buf[..n]).await {
            tracing::debug!(%peer, error = %e, "udp send upstream failed");
        }
    }
}

struct FlowCtx {
    sock: Arc<UdpSocket>,
    up: Arc<UdpSocket>,
    peer: SocketAddr,
    last: Arc<AtomicU64>,
    idle: Duration,
    flows: Arc<Mutex<HashMap<SocketAddr, Flow>>>,
    passive_fail: u32,
    service: String,
    bytes_out: Arc<AtomicU64>,
    guard: ActiveGuard,
    _slot: Option<crate::firewall::ConnSlot>,
}

async fn udp_replies(f: FlowCtx) {
    let FlowCtx {
        sock,
        bytes_out,
        up,
        peer,
        last,
        idle,
        flows,
        ..
    } = &f;
    let (peer, idle) = (*peer, *idle);
    let mut buf = vec![0u8; 65535];
    let started = Instant::now();
    loop {
        match tokio::time::timeout(idle, up.recv(&mut buf)).await {
            Ok(Ok(n)) => {
                last.store(now_ms(), Ordering::Relaxed);
                bytes_out.fetch_add(n as u64, Ordering::Relaxed);
                let _ = sock.send_to(&buf[..n], peer).await;
            }
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "udp upstream error");
                // ICMP port unreachable surfaces as an error on a connected socket: the member
                // is not listening. Count it (passive ejection) and end the flow, so the
                // client's next datagram picks a member afresh.
                f.guard.0.record_traffic(false, f.passive_fail, &f.service);
                break;
            }
            Err(_) => {
                if now_ms().saturating_sub(last.load(Ordering::Relaxed)) >= idle.as_millis() as u64
                {
                    break;
                }
            }
        }
    }
    flows.lock().await.remove(&peer);
    tracing::debug!(%peer, secs = started.elapsed().as_secs(), "udp flow ended");
}
