//! One health probe of a jail — a TCP connect, or an HTTP GET that must answer 2xx or 3xx —
//! and the small HTTP client it uses, which the CLI also uses to talk to role admin APIs.

use std::net::SocketAddr;
use std::time::Duration;

use citadel_spec::Probe;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

pub async fn probe(addr: SocketAddr, probe: &Probe, timeout: Duration) -> Result<(), String> {
    let Probe::Http { path } = probe else {
        return match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("connect {addr}: {e}")),
            Err(_) => Err(format!("no answer from {addr} within {timeout:?}")),
        };
    };
    let (status, _) = http_request(addr, "GET", path, None, timeout).await?;
    if (200..400).contains(&status) {
        Ok(())
    } else {
        Err(format!("GET {path} on {addr} answered {status}"))
    }
}

/// One HTTP/1.1 request on a fresh connection; returns the status and the body as text.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<String>,
    timeout: Duration,
) -> Result<(u16, String), String> {
    let exchange = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("http {addr}: {e}"))?;
        let driver = tokio::spawn(conn);
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, addr.to_string())
            .header(hyper::header::USER_AGENT, "citadel");
        if body.is_some() {
            request = request.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| format!("{method} {path}: {e}"))?;
        let result = async {
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| format!("{method} http://{addr}{path}: {e}"))?;
            let status = response.status().as_u16();
            let bytes = response
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("{method} http://{addr}{path}: {e}"))?
                .to_bytes();
            Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
        }
        .await;
        driver.abort();
        result
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer from {addr} within {timeout:?}")),
    }
}
