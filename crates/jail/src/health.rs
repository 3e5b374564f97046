//! One health probe of a jail: a TCP connect, or an HTTP GET that must answer 2xx or 3xx.

use std::net::SocketAddr;
use std::time::Duration;

use citadel_spec::Probe;
use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

pub async fn probe(addr: SocketAddr, probe: &Probe, timeout: Duration) -> Result<(), String> {
    match tokio::time::timeout(timeout, probe_once(addr, probe)).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer from {addr} within {timeout:?}")),
    }
}

async fn probe_once(addr: SocketAddr, probe: &Probe) -> Result<(), String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let Probe::Http { path } = probe else {
        return Ok(());
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("http {addr}: {e}"))?;
    let driver = tokio::spawn(conn);
    let request = hyper::Request::get(path.as_str())
        .header(hyper::header::HOST, addr.to_string())
        .header(hyper::header::USER_AGENT, "citadel-health")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("http {addr}{path}: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("http {addr}{path}: {e}"));
    driver.abort();
    let status = response?.status();
    if status.is_success() || status.is_redirection() {
        Ok(())
    } else {
        Err(format!("GET {path} on {addr} answered {status}"))
    }
}
