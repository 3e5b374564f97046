//! Firewall through real processes: deny rules, per-client rate limits, bans with expiry
//! that survive a restart. Addresses: 127.80.3.0/24 and 127.80.4.0/24.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use common::*;

fn config(net: &str, firewall: &str) -> String {
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
members = [{{ name = "app1", address = "{net}.11" }}]
health = {{ path = "/", interval_ms = 200, timeout_ms = 200 }}

[firewall]
{firewall}
"#
    )
}

#[tokio::test]
async fn deny_rule_and_rate_limit_per_client() {
    let net = "127.80.3";
    let dir = tempfile::tempdir().unwrap();
    let _b = spawn_echo("app1", sa(&format!("{net}.11:8000"))).await;
    let fw = format!(
        r#"
rate_per_sec = 5
burst = 5
max_conns_per_ip = 2
rules = [
  {{ action = "deny", source = "{net}.64/26" }},
]
"#
    );
    let admin = sa(&format!("{net}.1:9100"));
    let _gate = spawn_gate(dir.path(), &config(net, &fw), admin).await;
    let ac = client(None);
    assert!(
        wait_until(Duration::from_secs(5), || member_up(
            &ac, admin, "app", "app1"
        ))
        .await
    );
    let to = sa(&format!("{net}.1:8080"));

    // Denied CIDR: refused, and the backend sees nothing.
    let denied: IpAddr = format!("{net}.70").parse().unwrap();
    for _ in 0..3 {
        assert_eq!(
            tokio::task::spawn_blocking(move || raw_get(denied, to))
                .await
                .unwrap(),
            None
        );
    }
    let v = backends(&ac, admin).await;
    assert_eq!(
        member_field(&v, "app", "app1", "requests"),
        0,
        "a denied client reached no backend"
    );

    // Client A goes over its rate; client B is unaffected.
    let a = client(Some(format!("{net}.10").parse().unwrap()));
    let b = client(Some(format!("{net}.20").parse().unwrap()));
    let url = format!("http://{to}/");
    let mut a_codes = Vec::new();
    for _ in 0..20 {
        a_codes.push(get(&a, &url).await.map(|r| r.0).unwrap_or(0));
    }
    assert!(
        a_codes.contains(&429),
        "A over its rate gets 429: {a_codes:?}"
    );
    assert!(
        a_codes.iter().filter(|&&c| c == 200).count() >= 5,
        "A's burst passes: {a_codes:?}"
    );
    for _ in 0..4 {
        assert_eq!(get(&b, &url).await.map(|r| r.0), Ok(200), "B is unaffected");
    }
    // Connection cap: a third concurrent connection from one IP is refused; others are not.
    let capped: IpAddr = format!("{net}.40").parse().unwrap();
    let hold = |ip: IpAddr| {
        let sock =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        sock.bind(&SocketAddr::new(ip, 0).into()).unwrap();
        sock.connect(&to.into()).unwrap();
        let s: std::net::TcpStream = sock.into();
        s
    };
    let h1 = hold(capped);
    let h2 = hold(capped);
    // Both held connections are admitted (they answer a request)...
    for mut h in [&h1, &h2] {
        h.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        h.write_all(format!("GET / HTTP/1.1\r\nhost: {to}\r\n\r\n").as_bytes())
            .unwrap();
        let mut b = [0u8; 12];
        h.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"HTTP/1.1 200");
    }
    // ...a third is closed without an answer, while another IP gets in.
    assert_eq!(
        tokio::task::spawn_blocking(move || raw_get(capped, to))
            .await
            .unwrap(),
        None
    );
    let free: IpAddr = format!("{net}.41").parse().unwrap();
    assert_eq!(
        tokio::task::spawn_blocking(move || raw_get(free, to))
            .await
            .unwrap(),
        Some(200)
    );
    drop((h1, h2));
    assert!(
        wait_until(Duration::from_secs(3), || async {
            tokio::task::spawn_blocking(move || raw_get(capped, to))
                .await
                .unwrap()
                == Some(200)
        })
        .await,
        "slots free up when connections close"
    );

    let (_, metrics) = get(&ac, &format!("http://{admin}/metrics")).await.unwrap();
    assert!(
        metrics.contains("gate_rate_limited_total{listener=\"web\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("gate_denied_total{listener=\"web\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("gate_conn_limited_total{listener=\"web\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn bans_take_effect_expire_and_survive_restart() {
    let net = "127.80.4";
    let dir = tempfile::tempdir().unwrap();
    let _b = spawn_echo("app1", sa(&format!("{net}.11:8000"))).await;
    let admin = sa(&format!("{net}.1:9100"));
    let mut gate = spawn_gate(dir.path(), &config(net, ""), admin).await;
    let ac = client(None);
    assert!(
        wait_until(Duration::from_secs(5), || member_up(
            &ac, admin, "app", "app1"
        ))
        .await
    );
    let url = format!("http://{net}.1:8080/");
    let to = sa(&format!("{net}.1:8080"));
    let victim: IpAddr = format!("{net}.30").parse().unwrap();
    let kc = client(Some(victim)); // a keep-alive client: the ban must reach open connections
    assert_eq!(get(&kc, &url).await.map(|r| r.0), Ok(200));

    // A 2 s ban on one IP takes effect within 1 s...
    let t0 = Instant::now();
    let (code, body) = curl(
        "POST",
        &format!("http://{admin}/bans"),
        Some(&format!(r#"{{"net":"{victim}","ttl_secs":2}}"#)),
    );
    assert_eq!(code, 201, "{body}");
    assert!(
        wait_until(Duration::from_secs(1), || async {
            matches!(get(&kc, &url).await, Ok((403, _)))
        })
        .await
    );
    assert_eq!(
        tokio::task::spawn_blocking(move || raw_get(victim, to))
            .await
            .unwrap(),
        None,
        "new connections refused"
    );
    let other: IpAddr = format!("{net}.31").parse().unwrap();
    assert_eq!(
        tokio::task::spawn_blocking(move || raw_get(other, to))
            .await
            .unwrap(),
        Some(200)
    );
    let (_, list) = curl("GET", &format!("http://{admin}/bans"), None);
    assert!(list.contains(&format!("{victim}/32")), "{list}");
    // ...and expires on time.
    assert!(
        wait_until(Duration::from_secs(4), || async {
            tokio::task::spawn_blocking(move || raw_get(victim, to))
                .await
                .unwrap()
                == Some(200)
        })
        .await
    );
    let lifted = t0.elapsed();
    assert!(
        lifted >= Duration::from_millis(1900) && lifted < Duration::from_millis(3500),
        "lifted after {lifted:?}"
    );

    // A CIDR ban without expiry survives a restart; unban lifts it.
    let (code, _) = curl(
        "POST",
        &format!("http://{admin}/bans"),
        Some(&format!(r#"{{"net":"{net}.32/30","reason":"test"}}"#)),
    );
    assert_eq!(code, 201);
    let banned: IpAddr = format!("{net}.33").parse().unwrap();
    assert_eq!(
        tokio::task::spawn_blocking(move || raw_get(banned, to))
            .await
            .unwrap(),
        None
    );
    gate.proc_.signal("TERM");
    assert!(
        gate.proc_.wait_exit(Duration::from_secs(5)),
        "gate exits on SIGTERM"
    );
    let gate2 = start_gate(gate.config.clone(), gate.state.clone(), admin).await;
    assert!(
        wait_until(Duration::from_secs(5), || member_up(
            &ac, admin, "app", "app1"
        ))
        .await
    );
    assert_eq!(
        tokio::task::spawn_blocking(move || raw_get(banned, to))
            .await
            .unwrap(),
        None,
        "ban survived restart"
    );
    let (code, _) = curl(
        "DELETE",
        &format!("http://{admin}/bans?net={net}.32/30"),
        None,
    );
    assert_eq!(code, 200);
    assert_eq!(
        tokio::task::spawn_blocking(move || raw_get(banned, to))
            .await
            .unwrap(),
        Some(200)
    );
    drop(gate2);
}

#[tokio::test]
async fn admin_token_guards_the_admin_api() {
    let net = "127.80.7";
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!("admin_token = \"s3cret\"\n{}", config(net, ""));
    let admin = sa(&format!("{net}.1:9100"));
    let _gate = spawn_gate(dir.path(), &cfg, admin).await;
    let ban = format!(r#"{{"net":"{net}.66"}}"#);
    let (code, _) = curl("POST", &format!("http://{admin}/bans"), Some(&ban));
    assert_eq!(code, 401, "no token");
    let with = |token: &str| {
        let out = std::process::Command::new("curl")
            .args([
                "-s",
                "-m",
                "5",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-X",
                "POST",
            ])
            .args(["-H", &format!("authorization: Bearer {token}")])
            .args(["-H", "content-type: application/json", "-d", &ban])
            .arg(format!("http://{admin}/bans"))
            .output()
            .expect("curl runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(with("wrong"), "401");
    assert_eq!(with("s3cret"), "201");
    // Health and metrics stay open for probes and scrapers.
    assert_eq!(curl("GET", &format!("http://{admin}/metrics"), None).0, 200);
    assert_eq!(
        curl("GET", &format!("http://{admin}/backends"), None).0,
        401
    );
}
