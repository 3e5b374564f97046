//! `citadel-gate-echo NAME ADDR [--udp]`: a tiny upstream for the gate's tests and benchmarks.
//!
//! HTTP (keep-alive, h1): every answer is `NAME` followed by the request's method, path and
//! its `x-forwarded-for` / `forwarded` headers, one per line. `/slow?ms=N` waits N ms first.
//! TCP on the same address+1 port: echoes bytes prefixed once with `NAME\n`.
//! With `--udp`: answers each datagram with `NAME:` + the datagram on ADDR (UDP).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::{Body, Frame};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let name = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("usage: NAME ADDR [--udp]"))?;
    let addr: SocketAddr = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("usage: NAME ADDR [--udp]"))?
        .parse()?;
    let udp = args.next().as_deref() == Some("--udp");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        if udp {
            let s = tokio::net::UdpSocket::bind(addr).await?;
            let mut buf = vec![0u8; 65535];
            loop {
                let (n, peer) = s.recv_from(&mut buf).await?;
                let mut out = format!("{name}:").into_bytes();
                out.extend_from_slice(&buf[..n]);
                s.send_to(&out, peer).await?;
            }
        }
        let tcp_addr = SocketAddr::new(addr.ip(), addr.port().wrapping_add(1));
        let tl = tokio::net::TcpListener::bind(tcp_addr).await?;
        let tname = name.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = tl.accept().await {
                let n = tname.clone();
                tokio::spawn(async move {
                    let _ = s.write_all(format!("{n}\n").as_bytes()).await;
                    let mut buf = vec![0u8; 4096];
                    while let Ok(k) = s.read(&mut buf).await {
                        if k == 0 || s.write_all(&buf[..k]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let l = tokio::net::TcpListener::bind(addr).await?;
        println!("listening {addr}");
        loop {
            let (s, _) = l.accept().await?;
            let name = name.clone();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
                        let name = name.clone();
                        async move {
                            if let Some(proto) = req.headers().get("upgrade").cloned() {
                                // Upgrade: answer 101, then echo bytes on the upgraded connection.
                                let on = hyper::upgrade::on(&mut req);
                                tokio::spawn(async move {
                                    if let Ok(up) = on.await {
                                        let mut io = TokioIo::new(up);
                                        let mut buf = vec![0u8; 4096];
                                        while let Ok(k) = io.read(&mut buf).await {
                                            if k == 0 || io.write_all(&buf[..k]).await.is_err() {
                                                break;
                                            }
                                        }
                                    }
                                });
                                let mut r = Response::new(Either::Left(Full::new(Bytes::new())));
                                *r.status_mut() = hyper::StatusCode::SWITCHING_PROTOCOLS;
                                r.headers_mut().insert("upgrade", proto);
                                r.headers_mut().insert(
                                    "connection",
                                    hyper::header::HeaderValue::from_static("upgrade"),
                                );
                                return Ok::<_, Infallible>(r);
                            }
                            if req.uri().path() == "/stall" {
                                let ms = query_ms(&req);
                                return Ok::<_, Infallible>(Response::new(Either::Right(Stall {
                                    step: 0,
                                    sleep: Box::pin(tokio::time::sleep(Duration::from_millis(ms))),
                                })));
                            }
                            if req.uri().path() == "/slow" {
                                let ms = query_ms(&req);
                                tokio::time::sleep(Duration::from_millis(ms)).await;
                            }
                            let h = |k: &str| {
                                req.headers()
                                    .get(k)
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or("")
                                    .to_string()
                            };
                            let body = format!(
                                "{name}\n{} {}\nx-forwarded-for: {}\nforwarded: {}\n",
                                req.method(),
                                req.uri(),
                                h("x-forwarded-for"),
                                h("forwarded")
                            );
                            Ok::<_, Infallible>(Response::new(Either::Left(Full::new(
                                Bytes::from(body),
                            ))))
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .with_upgrades()
                    .await;
            });
        }
    })
}

fn query_ms(req: &Request<hyper::body::Incoming>) -> u64 {
    req.uri()
        .query()
        .and_then(|q| q.strip_prefix("ms="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
}

/// A body that sends `partial\n`, stalls, then sends `rest\n`.
struct Stall {
    step: u8,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl Body for Stall {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.step {
            0 => {
                self.step = 1;
                Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"partial\n")))))
            }
            1 => match self.sleep.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    self.step = 2;
                    Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"rest\n")))))
                }
                Poll::Pending => Poll::Pending,
            },
            _ => Poll::Ready(None),
        }
    }
}
