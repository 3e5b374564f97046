//! TCP and UDP listeners and the HTTPS listener (HTTP/1.1 and h2 by ALPN), with curl.
//! Addresses: 127.83.1.0/24 (TCP/UDP) and 127.83.2.0/24 (TLS).

mod common;

use std::io::{Read, Write};
use std::process::Command;
use std::time::Duration;

use common::*;

#[tokio::test]
async fn tcp_and_udp_listeners_forward_to_healthy_members() {
    let net = "127.83.1";
    let dir = tempfile::tempdir().unwrap();
    // Echo backends: HTTP on 8000 and TCP echo on 8001; UDP echo on 9000.
    let _t1 = spawn_echo("t1", sa(&format!("{net}.11:8000"))).await;
    let _t2 = spawn_echo("t2", sa(&format!("{net}.12:8000"))).await;
    let mut u1 = spawn_echo_udp("u1", sa(&format!("{net}.21:9000"))).await;
    let mut u2 = spawn_echo_udp("u2", sa(&format!("{net}.22:9000"))).await;
    let cfg = format!(
        r#"
admin = "{net}.1:9100"

[[listeners]]
name = "tcp"
kind = "tcp"
bind = "{net}.1:7000"
service = "echo"

[[listeners]]
name = "udp"
kind = "udp"
bind = "{net}.1:7001"
service = "uecho"

[[services]]
name = "echo"
port = 8001
idle_timeout_ms = 2000
members = [
  {{ name = "t1", address = "{net}.11" }},
  {{ name = "t2", address = "{net}.12" }},
  {{ name = "t3", address = "{net}.13" }},
]
health = {{ kind = "tcp", interval_ms = 200, timeout_ms = 200 }}

[[services]]
name = "uecho"
port = 9000
idle_timeout_ms = 2000
members = [{{ name = "u1", address = "{net}.21" }}, {{ name = "u2", address = "{net}.22" }}]
health = {{ kind = "none", interval_ms = 200 }}
"#
    );
    let admin = sa(&format!("{net}.1:9100"));
    let _gate = spawn_gate(dir.path(), &cfg, admin).await;
    let ac = client(None);
    assert!(
        wait_until(Duration::from_secs(5), || async {
            member_up(&ac, admin, "echo", "t1").await
                && member_up(&ac, admin, "echo", "t2").await
                && member_up(&ac, admin, "uecho", "u1").await
        })
        .await
    );
    assert!(
        !member_up(&ac, admin, "echo", "t3").await,
        "t3 has no server"
    );

    let to = format!("{net}.1:7000");
    let seen = tokio::task::spawn_blocking(move || {
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..6 {
            let mut s = std::net::TcpStream::connect(&to).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            let msg = format!("ping {i}\n");
            s.write_all(msg.as_bytes()).unwrap();
            s.shutdown(std::net::Shutdown::Write).unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            let (who, rest) = out.split_once('\n').unwrap();
            assert_eq!(rest, msg, "bytes echoed through the gate");
            seen.insert(who.to_string());
        }
        seen
    })
    .await
    .unwrap();
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec!["t1", "t2"]);

    let u = std::net::UdpSocket::bind(format!("{net}.50:0")).unwrap();
    u.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let ask = |u: &std::net::UdpSocket| -> Option<(String, String)> {
        let mut buf = [0u8; 1500];
        u.send_to(b"hello", format!("{net}.1:7001")).ok()?;
        let (n, from) = u.recv_from(&mut buf).ok()?;
        Some((
            String::from_utf8_lossy(&buf[..n]).into_owned(),
            from.to_string(),
        ))
    };
    let (first, from) = ask(&u).expect("udp answer through the gate");
    assert_eq!(
        from,
        format!("{net}.1:7001"),
        "the answer comes from the listener"
    );
    assert!(first == "u1:hello" || first == "u2:hello", "{first}");
    assert_eq!(
        ask(&u).map(|a| a.0),
        Some(first.clone()),
        "a flow sticks to its member"
    );

    // Kill the member serving this flow: the flow ends on ICMP unreachable and the next
    // datagrams reach the other member.
    let other = if first == "u1:hello" {
        u1.kill9();
        "u2:hello"
    } else {
        u2.kill9();
        "u1:hello"
    };
    let mut moved = false;
    for _ in 0..20 {
        if ask(&u).map(|a| a.0).as_deref() == Some(other) {
            moved = true;
            break;
        }
    }
    assert!(moved, "udp flow failed over to {other}");
}

fn openssl_cert(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let st = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
        ])
        .args([
            "-subj",
            "/CN=gate.test",
            "-addext",
            "subjectAltName=DNS:gate.test",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl runs");
    assert!(st.success());
    (cert, key)
}

#[tokio::test]
async fn https_listener_serves_h1_and_h2() {
    let net = "127.83.2";
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = openssl_cert(dir.path());
    let _b = spawn_echo("app1", sa(&format!("{net}.11:8000"))).await;
    let cfg = format!(
        r#"
admin = "{net}.1:9100"

[[listeners]]
name = "tls"
kind = "https"
bind = "{net}.1:8443"
service = "app"
tls_cert = "{}"
tls_key = "{}"

[[listeners]]
name = "plain"
bind = "{net}.1:8080"
service = "app"

[[services]]
name = "app"
port = 8000
members = [{{ name = "app1", address = "{net}.11" }}]
health = {{ interval_ms = 200, timeout_ms = 200 }}
"#,
        cert.display(),
        key.display()
    );
    let admin = sa(&format!("{net}.1:9100"));
    let _gate = spawn_gate(dir.path(), &cfg, admin).await;
    let ac = client(None);
    assert!(
        wait_until(Duration::from_secs(5), || member_up(
            &ac, admin, "app", "app1"
        ))
        .await
    );
    let curl_v = |extra: &[&str], url: &str| {
        let out = Command::new("curl")
            .args(["-s", "-m", "5", "--cacert"])
            .arg(&cert)
            .args(["--resolve", &format!("gate.test:8443:{net}.1")])
            .args(["-w", "\n%{http_version} %{http_code}"])
            .args(extra)
            .arg(url)
            .output()
            .expect("curl runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let h1 = curl_v(&["--http1.1"], "https://gate.test:8443/tls");
    assert!(h1.ends_with("\n1.1 200"), "{h1}");
    assert!(h1.contains("proto=https"), "{h1}");
    let h2 = curl_v(&["--http2"], "https://gate.test:8443/tls2");
    assert!(h2.ends_with("\n2 200"), "{h2}");
    assert!(h2.contains("GET /tls2"), "{h2}");
    // h2c with prior knowledge on the plain listener.
    let h2c = curl_v(
        &["--http2-prior-knowledge"],
        &format!("http://{net}.1:8080/clear"),
    );
    assert!(h2c.ends_with("\n2 200"), "{h2c}");
    // A client that speaks no TLS gets nothing, and the gate keeps serving.
    let mut s = std::net::TcpStream::connect(format!("{net}.1:8443")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let _ = s.write_all(b"GET / HTTP/1.1\r\n\r\n");
    let mut v = Vec::new();
    let _ = s.read_to_end(&mut v);
    assert!(!String::from_utf8_lossy(&v).contains("200"));
    assert!(curl_v(&["--http1.1"], "https://gate.test:8443/again").ends_with("\n1.1 200"));

    // A new certificate and key in the same files: a reload serves them.
    let new_dir = dir.path().join("new");
    std::fs::create_dir_all(&new_dir).unwrap();
    let (cert2, key2) = openssl_cert(&new_dir);
    std::fs::copy(&cert2, &cert).unwrap();
    std::fs::copy(&key2, &key).unwrap();
    let before = curl_v(&["--http1.1"], "https://gate.test:8443/old");
    assert!(
        !before.ends_with(" 200"),
        "the old certificate fails against the new CA: {before}"
    );
    let (code, body) = curl("POST", &format!("http://{admin}/reload"), None);
    assert_eq!(code, 200, "{body}");
    // `cert` now holds the new certificate, so verifying against it proves the gate swapped.
    assert!(curl_v(&["--http1.1"], "https://gate.test:8443/new").ends_with("\n1.1 200"));
}
