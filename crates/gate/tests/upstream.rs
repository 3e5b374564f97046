//! The gate's own keep-alive pool to members: connections are reused, and a request never
//! fails because a member closed an idle pooled connection — not even a POST, which the
//! gate may not replay. Addresses: 127.85.1.0/24.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};

/// A member that records which connection carried each request, and closes a connection
/// that stays idle for `idle_close` (as nginx's keepalive_timeout does).
#[derive(Default)]
struct Member {
    seen: Mutex<Vec<(usize, String)>>,
    closed: AtomicUsize,
}

async fn serve_member(addr: SocketAddr, idle_close: Duration) -> Arc<Member> {
    let member = Arc::new(Member::default());
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .expect("bind member");
    let m = member.clone();
    tokio::spawn(async move {
        for conn_id in 0.. {
            let Ok((sock, _)) = listener.accept().await else {
                return;
            };
            let m = m.clone();
            tokio::spawn(async move {
                let seen = m.clone();
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let seen = seen.clone();
                    async move {
                        let what = format!("{} {}", req.method(), req.uri().path());
                        let body = req.into_body().collect().await.map(|b| b.to_bytes());
                        let len = body.map(|b| b.len()).unwrap_or(0);
                        seen.seen.lock().unwrap().push((conn_id, what));
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!(
                            "got {len} bytes\n"
                        )))))
                    }
                });
                let mut b = hyper::server::conn::http1::Builder::new();
                b.timer(TokioTimer::new())
                    .header_read_timeout(idle_close)
                    .keep_alive(true);
                let _ = b.serve_connection(TokioIo::new(sock), svc).await;
                m.closed.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    member
}

fn config(net: &str) -> String {
    format!(
        r#"
admin = "{net}.1:9100"

[[listeners]]
name = "web"
bind = "{net}.1:8080"
service = "app"

[[services]]
name = "app"
port = 8000
retries = 0
members = [{{ name = "app1", address = "{net}.11" }}]
health = {{ kind = "none" }}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_connections_are_reused_and_a_closed_one_never_fails_a_post() {
    let net = "127.85.1";
    let dir = tempfile::tempdir().unwrap();
    let member = serve_member(sa(&format!("{net}.11:8000")), Duration::from_millis(300)).await;
    let _gate = spawn_gate(dir.path(), &config(net), sa(&format!("{net}.1:9100"))).await;
    let url = format!("http://{net}.1:8080");

    // Two requests in a row, each on a new client connection: one member connection.
    for path in ["/a", "/b"] {
        let (code, body) = curl("GET", &format!("{url}{path}"), None);
        assert_eq!((code, body.as_str()), (200, "got 0 bytes\n"));
    }
    {
        let seen = member.seen.lock().unwrap();
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert_eq!(
            seen[0].0, seen[1].0,
            "the second request reused the pooled connection"
        );
    }

    // The member closes the idle pooled connection; a POST after that goes out on a new one.
    assert!(
        wait_until(Duration::from_secs(5), || async {
            member.closed.load(Ordering::SeqCst) >= 1
        })
        .await,
        "the member should close its idle connection"
    );
    let (code, body) = curl("POST", &format!("{url}/c"), Some(r#"{"n":1}"#));
    assert_eq!((code, body.as_str()), (200, "got 7 bytes\n"));
    let seen = member.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_ne!(seen[2].0, seen[0].0, "the POST went on a fresh connection");
    assert_eq!(seen[2].1, "POST /c");
}
