//! The gate's DNS queried with `dig` (Debian package dnsutils): jail records, healthy
//! service members rotated, SRV, NXDOMAIN, REFUSED, forwarding, TCP, malformed packets.
//! Addresses: 127.81.1.0/24 and 127.81.2.0/24.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn dig(server: &str, port: u16, args: &[&str]) -> String {
    let out = Command::new("dig")
        .arg(format!("@{server}"))
        .args(["-p", &port.to_string(), "+time=2", "+tries=1"])
        .args(args)
        .output()
        .expect("dig is installed (apt-get install dnsutils)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn short(server: &str, port: u16, name: &str, qtype: &str) -> Vec<String> {
    dig(server, port, &[name, qtype, "+short"])
        .lines()
        .map(str::to_owned)
        .filter(|l| !l.is_empty() && !l.starts_with(';'))
        .collect()
}

fn status(server: &str, port: u16, name: &str, extra: &[&str]) -> String {
    let mut a = vec![name, "A", "+noall", "+comments"];
    a.extend_from_slice(extra);
    let text = dig(server, port, &a);
    text.split("status: ")
        .nth(1)
        .and_then(|t| t.split(',').next())
        .unwrap_or("NONE")
        .to_string()
}

fn config(net: &str, upstream: Option<&str>, zone: &str) -> String {
    let up = upstream
        .map(|u| format!("upstreams = [\"{u}\"]"))
        .unwrap_or_default();
    format!(
        r#"
admin = "{net}.1:9100"

[[services]]
name = "app"
port = 8000
members = [
  {{ name = "app1", address = "{net}.11" }},
  {{ name = "app2", address = "{net}.12" }},
]
health = {{ path = "/", interval_ms = 200, timeout_ms = 200, rise = 2, fall = 2 }}

[dns]
listen = ["{net}.1:5353"]
zone = "{zone}"
ttl = 1
{up}
records = [
  {{ name = "app1", address = "{net}.11" }},
  {{ name = "app2", address = "{net}.12" }},
  {{ name = "db1", address = "{net}.21" }},
]
services = [{{ name = "app", service = "app" }}]
"#
    )
}

#[tokio::test]
async fn dns_answers_healthy_members_and_zone_records() {
    let net = "127.81.1";
    let gw = format!("{net}.1");
    let dir = tempfile::tempdir().unwrap();
    let _b1 = spawn_echo("app1", sa(&format!("{net}.11:8000"))).await;
    let mut b2 = spawn_echo("app2", sa(&format!("{net}.12:8000"))).await;
    let admin = sa(&format!("{net}.1:9100"));
    let _gate = spawn_gate(dir.path(), &config(net, None, "cluster.test"), admin).await;
    let ac = client(None);
    assert!(
        wait_until(Duration::from_secs(5), || async {
            member_up(&ac, admin, "app", "app1").await && member_up(&ac, admin, "app", "app2").await
        })
        .await
    );

    assert_eq!(
        short(&gw, 5353, "db1.cluster.test", "A"),
        vec![format!("{net}.21")]
    );
    assert_eq!(
        short(&gw, 5353, "APP1.Cluster.Test", "A"),
        vec![format!("{net}.11")]
    );

    // The service name lists both healthy members, rotated between answers.
    let first = short(&gw, 5353, "app.cluster.test", "A");
    let second = short(&gw, 5353, "app.cluster.test", "A");
    let mut sorted = first.clone();
    sorted.sort();
    assert_eq!(sorted, vec![format!("{net}.11"), format!("{net}.12")]);
    assert_ne!(first, second, "answers rotate");

    let srv = short(&gw, 5353, "_app._tcp.cluster.test", "SRV");
    assert_eq!(srv.len(), 2, "{srv:?}");
    assert!(srv.iter().all(|l| l.contains(" 8000 ")), "{srv:?}");
    assert!(
        srv.iter().any(|l| l.ends_with("app1.cluster.test.")),
        "{srv:?}"
    );

    assert_eq!(status(&gw, 5353, "nosuch.cluster.test", &[]), "NXDOMAIN");
    assert_eq!(status(&gw, 5353, "db1.cluster.test", &["+tcp"]), "NOERROR");
    assert_eq!(status(&gw, 5353, "example.com", &[]), "REFUSED");

    // A killed member disappears within its fall time plus the TTL.
    let t = Instant::now();
    b2.kill9();
    let gone = wait_until(Duration::from_secs(3), || {
        let gw = gw.clone();
        async move {
            tokio::task::spawn_blocking(move || short(&gw, 5353, "app.cluster.test", "A"))
                .await
                .unwrap()
                == vec![format!("{net}.11")]
        }
    })
    .await;
    assert!(gone, "app2 leaves the DNS answer");
    eprintln!("app2 left DNS after {:?}", t.elapsed());

    let (_, metrics) = get(&ac, &format!("http://{admin}/metrics")).await.unwrap();
    assert!(
        metrics.contains("gate_dns_queries_total{rcode=\"nxdomain\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn dns_forwards_outside_zone_and_survives_garbage() {
    let net = "127.81.2";
    let dir = tempfile::tempdir().unwrap();
    let dir2 = tempfile::tempdir().unwrap();
    // The first gate serves inner.test; the second serves outer.test and forwards to it.
    let admin1 = sa(&format!("{net}.1:9100"));
    let _g1 = spawn_gate(dir.path(), &config(net, None, "inner.test"), admin1).await;
    let net2 = "127.81.2.1";
    let cfg2 = config("127.81.3", Some(&format!("{net2}:5353")), "outer.test");
    let admin2 = sa("127.81.3.1:9100");
    let _g2 = spawn_gate(dir2.path(), &cfg2, admin2).await;
    assert_eq!(
        short("127.81.3.1", 5353, "db1.inner.test", "A"),
        vec![format!("{net}.21")]
    );
    assert_eq!(
        status("127.81.3.1", 5353, "nosuch.inner.test", &[]),
        "NXDOMAIN"
    );

    // Malformed packets: short, random, a bad label, a response-type message, a query with
    // 2 questions. None may crash the server.
    let sock = std::net::UdpSocket::bind(format!("{net}.99:0")).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let to = format!("{net}.1:5353");
    let mut packets: Vec<Vec<u8>> = vec![
        vec![],
        vec![0x12],
        vec![0u8; 11],
        vec![0xff; 12],
        vec![0xab, 0xcd, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 63, b'a'],
        vec![
            0xab, 0xcd, 1, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1, 0, 0, 1, 0, 1,
        ],
        vec![
            0xab, 0xcd, 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1,
        ],
        // A compression pointer loop.
        vec![
            0xab, 0xcd, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1,
        ],
    ];
    let mut x: u32 = 0x1234_5678;
    for len in [12usize, 40, 300, 1400] {
        let mut p = Vec::with_capacity(len);
        for _ in 0..len {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            p.push(x as u8);
        }
        packets.push(p);
    }
    for _round in 0..20 {
        for p in &packets {
            let _ = sock.send_to(p, &to);
        }
    }
    let mut buf = [0u8; 512];
    while sock.recv_from(&mut buf).is_ok() {}
    // Garbage over TCP too.
    {
        use std::io::Write;
        let mut t = std::net::TcpStream::connect(&to).unwrap();
        let _ = t.write_all(&[0, 5, 1, 2, 3]);
        let _ = t.write_all(&[0xff, 0xff, 0, 0]);
    }
    assert_eq!(
        short(&format!("{net}.1"), 5353, "db1.inner.test", "A"),
        vec![format!("{net}.21")]
    );
    assert_eq!(
        status(&format!("{net}.1"), 5353, "db1.inner.test", &["+tcp"]),
        "NOERROR"
    );
}

#[tokio::test]
async fn dns_and_admin_move_on_reload() {
    let dir = tempfile::tempdir().unwrap();
    let old = config("127.81.4", None, "cluster.test");
    let admin = sa("127.81.4.1:9100");
    let _gate = spawn_gate(dir.path(), &old, admin).await;
    assert_eq!(
        status("127.81.4.1", 5353, "db1.cluster.test", &[]),
        "NOERROR"
    );

    // The same zone, served from .2 (DNS and admin); records keep their .4 addresses.
    let moved = old
        .replace("admin = \"127.81.4.1:9100\"", "admin = \"127.81.4.2:9100\"")
        .replace(
            "listen = [\"127.81.4.1:5353\"]",
            "listen = [\"127.81.4.2:5353\"]",
        );
    std::fs::write(dir.path().join("gate.toml"), moved).unwrap();
    let (code, body) = curl("POST", &format!("http://{admin}/reload"), None);
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        status("127.81.4.2", 5353, "db1.cluster.test", &[]),
        "NOERROR"
    );
    assert_eq!(
        status("127.81.4.2", 5353, "db1.cluster.test", &["+tcp"]),
        "NOERROR"
    );
    assert_eq!(
        status("127.81.4.1", 5353, "db1.cluster.test", &[]),
        "NONE",
        "old address closed"
    );
    let c = client(None);
    assert_eq!(
        get(&c, "http://127.81.4.2:9100/health").await.map(|r| r.0),
        Ok(200)
    );
    assert!(!port_open(admin).await, "old admin address closed");
}

/// At its start the gate has judged no member yet. Until every member's first check has
/// finished, its /health says "starting" (so `citadel up` does not call it ready with empty
/// pools) and its DNS answers the not-yet-judged members (so a client resolving in that
/// window, e.g. an app whose own /health the gate is checking, is not told "no address").
#[tokio::test]
async fn unjudged_members_are_answered_and_health_waits_for_the_first_verdicts() {
    let net = "127.81.6";
    let gw = format!("{net}.1");
    let dir = tempfile::tempdir().unwrap();
    // A member that accepts and never answers: its first check lasts the whole timeout.
    let mute = tokio::net::TcpListener::bind(sa(&format!("{net}.11:8000")))
        .await
        .unwrap();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = mute.accept().await {
            held.push(s);
        }
    });
    // One member (app1), checked once a minute with a 2.5 s timeout.
    let app2 = format!("  {{ name = \"app2\", address = \"{net}.12\" }},\n]");
    let config = config(net, None, "cluster.test");
    assert!(config.contains(&app2));
    let config = config.replace(&app2, "]").replace(
        "interval_ms = 200, timeout_ms = 200",
        "interval_ms = 60000, timeout_ms = 2500",
    );
    let cfg = dir.path().join("gate.toml");
    std::fs::write(&cfg, &config).unwrap();
    let mut gate = launch_gate(&cfg, &dir.path().join("state"));
    let c = client(None);
    let health = format!("http://{gw}:9100/health");
    // The first answer of the admin API, whatever it says.
    let answered = std::sync::Mutex::new(None);
    assert!(
        wait_until(Duration::from_secs(15), || async {
            let r = get(&c, &health).await.ok();
            let got = r.is_some();
            *answered.lock().unwrap() = r;
            got
        })
        .await,
        "the gate's admin API never answered (the gate exited: {:?})",
        gate.child.try_wait()
    );
    let first = answered.into_inner().unwrap().expect("an answer");
    let started = Instant::now();
    assert_eq!(first.0, 503, "{first:?}");
    assert!(first.1.contains("starting"), "{first:?}");
    let during = tokio::task::spawn_blocking({
        let gw = gw.clone();
        move || short(&gw, 5353, "app.cluster.test", "A")
    })
    .await
    .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the first check is still running"
    );
    assert_eq!(
        during,
        vec![format!("{net}.11")],
        "an unjudged member is answered"
    );

    // The check times out: the member is judged (down), the gate is ready, DNS drops it.
    assert!(
        wait_until(Duration::from_secs(10), || async {
            get(&c, &health).await.map(|r| r.0) == Ok(200)
        })
        .await,
        "the gate became ready once its member was judged"
    );
    let after = tokio::task::spawn_blocking(move || short(&gw, 5353, "app.cluster.test", "A"))
        .await
        .unwrap();
    assert!(
        after.is_empty(),
        "a member judged down is not answered: {after:?}"
    );
    gate.kill9();
    holder.abort();
}
