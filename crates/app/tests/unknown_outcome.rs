//! A write whose reply is lost: the db carried out EXEC, the connection dies before the reply
//! reaches the app. The app retries on a new connection; the retry must recognise its own
//! write (its version is stored) and answer success, not 412, and must not apply it twice.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use common::{App, Http, Redis, RedisOpts, addr};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A TCP proxy to the db that, when armed, drops the connection instead of forwarding the
/// reply to the next EXEC.
struct Proxy {
    armed: Arc<AtomicBool>,
    dropped: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn start_proxy(listen: SocketAddr, upstream: SocketAddr) -> Proxy {
    let l = TcpListener::bind(listen).await.expect("bind proxy");
    let armed = Arc::new(AtomicBool::new(false));
    let dropped = Arc::new(AtomicU64::new(0));
    let (a, d) = (armed.clone(), dropped.clone());
    let task = tokio::spawn(async move {
        loop {
            let Ok((client, _)) = l.accept().await else {
                return;
            };
            let Ok(server) = TcpStream::connect(upstream).await else {
                continue;
            };
            let (a, d) = (a.clone(), d.clone());
            tokio::spawn(async move {
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let exec_sent = Arc::new(AtomicBool::new(false));
                let es = exec_sent.clone();
                let a2 = a.clone();
                let up = tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match cr.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        let chunk = &buf[..n];
                        if a2.load(Ordering::SeqCst)
                            && chunk
                                .windows(6)
                                .any(|w| w.eq_ignore_ascii_case(b"EXEC\r\n"))
                        {
                            es.store(true, Ordering::SeqCst);
                        }
                        if sw.write_all(chunk).await.is_err() {
                            return;
                        }
                    }
                });
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = match sr.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if exec_sent.load(Ordering::SeqCst)
                        && a.compare_exchange(true, false, Ordering::SeqCst, Ordering::SeqCst)
                            .is_ok()
                    {
                        // The db has answered EXEC: lose that answer and the connection.
                        d.fetch_add(1, Ordering::SeqCst);
                        break;
                    }
                    if cw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                up.abort();
            });
        }
    });
    Proxy {
        armed,
        dropped,
        task,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_exec_reply_is_recognised_on_retry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _redis = Redis::start(
        addr("127.40.10.1:6379"),
        RedisOpts {
            password: None,
            aof_dir: None,
        },
    );
    let proxy = start_proxy(addr("127.40.10.1:6380"), addr("127.40.10.1:6379")).await;
    let app = App::start(
        dir.path(),
        addr("127.40.10.2:8000"),
        addr("127.40.10.2:9100"),
        "addrs = [\"127.40.10.1:6380\"]\nretry_budget_ms = 5000",
        "[auth]\nrequired = false",
    );
    let http = Http::new();
    let url = format!("{}/v1/c/d", app.base);
    let r = http.must("PUT", &url, &[], Some(r#"{"n":0}"#)).await;
    assert_eq!(r.status, 201);
    let mut tag = r.header("etag").expect("etag");

    for round in 1..=3u64 {
        // Conditional PUT.
        proxy.armed.store(true, Ordering::SeqCst);
        let body = json!({"n": round * 10}).to_string();
        let r = http
            .must("PUT", &url, &[("if-match", &tag)], Some(&body))
            .await;
        assert_eq!(r.status, 200, "round {round}: {}", r.body);
        assert!(
            !proxy.armed.load(Ordering::SeqCst),
            "the reply was not dropped"
        );
        tag = r.header("etag").expect("etag");
        let g = http.must("GET", &url, &[], None).await;
        assert_eq!(g.json(), json!({"n": round * 10}));
        assert_eq!(g.header("etag").as_deref(), Some(tag.as_str()));

        // PATCH.
        proxy.armed.store(true, Ordering::SeqCst);
        let r = http
            .must("PATCH", &url, &[("if-match", &tag)], Some(r#"{"p":true}"#))
            .await;
        assert_eq!(r.status, 200, "round {round}: {}", r.body);
        assert_eq!(r.json()["doc"], json!({"n": round * 10, "p": true}));
        tag = r.header("etag").expect("etag");
    }
    // Conditional DELETE.
    proxy.armed.store(true, Ordering::SeqCst);
    let r = http.must("DELETE", &url, &[("if-match", &tag)], None).await;
    assert_eq!(r.status, 204, "{}", r.body);
    let r = http.must("GET", &url, &[], None).await;
    assert_eq!(r.status, 404);
    assert_eq!(proxy.dropped.load(Ordering::SeqCst), 7);
}
