//! Hostile HTTP clients: oversized heads, malformed requests, random bytes, slow-drip
//! (slowloris) connections. The gate must answer with an error or close, keep serving
//! others, and stay small. Addresses: 127.82.1.0/24.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;

fn exchange(to: SocketAddr, bytes: &[u8]) -> String {
    let Ok(mut s) = TcpStream::connect_timeout(&to, Duration::from_secs(2)) else {
        return "connect failed".into();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = s.write_all(bytes);
    let mut v = Vec::new();
    let _ = s.read_to_end(&mut v);
    String::from_utf8_lossy(&v).into_owned()
}

fn rss_kb(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_http_clients_get_errors_and_others_are_served() {
    let net = "127.82.1";
    let dir = tempfile::tempdir().unwrap();
    let _b = spawn_echo("app1", sa(&format!("{net}.11:8000"))).await;
    let cfg = format!(
        r#"
admin = "{net}.1:9100"

[http]
header_read_timeout_ms = 1000
max_header_bytes = 16384

[[listeners]]
name = "web"
bind = "{net}.1:8080"
service = "app"

[[services]]
name = "app"
port = 8000
members = [{{ name = "app1", address = "{net}.11" }}]
health = {{ interval_ms = 200, timeout_ms = 200 }}
"#
    );
    let admin = sa(&format!("{net}.1:9100"));
    let gate = spawn_gate(dir.path(), &cfg, admin).await;
    let ac = client(None);
    assert!(
        wait_until(Duration::from_secs(5), || member_up(
            &ac, admin, "app", "app1"
        ))
        .await
    );
    let to = sa(&format!("{net}.1:8080"));
    let pid = gate.proc_.pid();

    let answers = tokio::task::spawn_blocking(move || {
        let big = format!(
            "GET / HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
            "a".repeat(40_000)
        );
        let many = format!(
            "GET / HTTP/1.1\r\nhost: x\r\n{}\r\n",
            "x-h: 1\r\n".repeat(500)
        );
        (
            exchange(to, big.as_bytes()),
            exchange(to, many.as_bytes()),
            exchange(to, b"GARBAGE\r\n\r\n"),
            exchange(
                to,
                b"GET / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
            ),
            exchange(
                to,
                b"GET / HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\ncontent-length: 7\r\n\r\nhello",
            ),
        )
    })
    .await
    .unwrap();
    assert!(
        answers.0.starts_with("HTTP/1.1 431"),
        "oversized head: {:?}",
        &answers.0[..answers.0.len().min(80)]
    );
    assert!(
        answers.1.starts_with("HTTP/1.1 431"),
        "too many headers: {:?}",
        &answers.1[..answers.1.len().min(80)]
    );
    assert!(
        answers.2.starts_with("HTTP/1.1 400"),
        "garbage: {:?}",
        answers.2
    );
    // A broken chunked body may be met after the backend already answered (it did not read
    // the body): one answer at most, then the connection closes.
    assert!(
        answers.3.matches("HTTP/1.1").count() <= 1,
        "bad chunked: {:?}",
        answers.3
    );
    assert!(
        answers.4.starts_with("HTTP/1.1 400"),
        "conflicting lengths: {:?}",
        answers.4
    );

    // Random bytes (a small deterministic fuzz of the front path).
    tokio::task::spawn_blocking(move || {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for i in 0..150 {
            let len = 1 + (i * 37) % 3000;
            let mut p = Vec::with_capacity(len);
            if i % 3 == 0 {
                p.extend_from_slice(b"GET /");
            }
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                p.push(x as u8);
            }
            let _ = exchange(to, &p);
        }
    })
    .await
    .unwrap();

    // Slowloris: 40 connections dripping a header byte every 200 ms. All must be cut at
    // about the header read timeout while a normal client keeps getting answers.
    let drip = tokio::spawn(async move {
        let mut conns = Vec::new();
        for _ in 0..40 {
            if let Ok(s) = tokio::net::TcpStream::connect(to).await {
                conns.push(s);
            }
        }
        let start = Instant::now();
        let mut closed_at = vec![None; conns.len()];
        let line = b"GET / HTTP/1.1\r\nhost: x\r\nx-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
        for step in 0..line.len() {
            if start.elapsed() > Duration::from_secs(8) || closed_at.iter().all(Option::is_some) {
                break;
            }
            for (i, c) in conns.iter_mut().enumerate() {
                if closed_at[i].is_some() {
                    continue;
                }
                use tokio::io::AsyncWriteExt;
                if c.write_all(&line[step..step + 1]).await.is_err() {
                    closed_at[i] = Some(start.elapsed());
                    continue;
                }
                let mut b = [0u8; 256];
                // Closed by the gate: read returns 0 or an error at once.
                if let Ok(r) = tokio::time::timeout(Duration::from_millis(1), c.peek(&mut b)).await
                {
                    match r {
                        Ok(0) | Err(_) => closed_at[i] = Some(start.elapsed()),
                        Ok(_) => closed_at[i] = Some(start.elapsed()),
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        closed_at
    });
    let c = client(Some(format!("{net}.50").parse().unwrap()));
    let url = format!("http://{to}/ok");
    for _ in 0..20 {
        let t = Instant::now();
        assert_eq!(get(&c, &url).await.map(|r| r.0), Ok(200));
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "a normal client stays fast"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let closed = drip.await.unwrap();
    eprintln!(
        "slow-drip connections cut at {:?}",
        closed.iter().take(3).collect::<Vec<_>>()
    );
    assert!(
        closed
            .iter()
            .all(|c| c.is_some_and(|t| t < Duration::from_millis(3000))),
        "every slow-drip connection cut near the 1 s header timeout: {closed:?}"
    );

    // Silent clients (connect, send nothing) are dropped at the header timeout too.
    let t = Instant::now();
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(tokio::net::TcpStream::connect(to).await.unwrap());
    }
    for mut s in silent {
        use tokio::io::AsyncReadExt;
        let mut b = [0u8; 16];
        let r = tokio::time::timeout(Duration::from_secs(4), s.read(&mut b)).await;
        assert!(
            matches!(r, Ok(Ok(0)) | Ok(Err(_))),
            "a silent connection is closed: {r:?}"
        );
    }
    assert!(
        t.elapsed() < Duration::from_millis(3000),
        "silent connections cut after {:?}",
        t.elapsed()
    );

    assert_eq!(get(&c, &url).await.map(|r| r.0), Ok(200), "still serving");
    let rss = rss_kb(pid);
    assert!(rss > 0 && rss < 50 * 1024, "gate RSS {rss} kB");
    eprintln!("gate RSS after abuse: {rss} kB");
}
