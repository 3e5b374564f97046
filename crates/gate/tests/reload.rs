//! Reload under load (SIGHUP and POST /reload), drain, and the balancing policies.
//! Addresses: 127.84.1.0/24, 127.84.2.0/24, 127.84.3.0/24.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::*;

fn reload_config(net: &str, second: bool) -> String {
    let (app2, web2) = if second {
        (
            format!(r#"{{ name = "app2", address = "{net}.12" }},"#),
            format!("[[listeners]]\nname = \"web2\"\nbind = \"{net}.1:8081\"\nservice = \"app\"\n"),
        )
    } else {
        (String::new(), String::new())
    };
    format!(
        r#"
admin = "{net}.1:9100"

[[listeners]]
name = "web"
bind = "{net}.1:8080"
service = "app"

[[listeners]]
name = "tcp"
kind = "tcp"
bind = "{net}.1:7000"
service = "echo"

{web2}

[[services]]
name = "app"
port = 8000
members = [
  {{ name = "app1", address = "{net}.11" }},
  {app2}
]
health = {{ interval_ms = 200, timeout_ms = 200 }}

[[services]]
name = "echo"
port = 8001
members = [{{ name = "app1", address = "{net}.11" }}]
health = {{ kind = "tcp", interval_ms = 200, timeout_ms = 200 }}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_drops_nothing_and_keeps_bans() {
    let net = "127.84.1";
    let dir = tempfile::tempdir().unwrap();
    let _b1 = spawn_echo("app1", sa(&format!("{net}.11:8000"))).await;
    let _b2 = spawn_echo("app2", sa(&format!("{net}.12:8000"))).await;
    let admin = sa(&format!("{net}.1:9100"));
    let gate = spawn_gate(dir.path(), &reload_config(net, false), admin).await;
    let ac = client(None);
    assert!(
        wait_until(Duration::from_secs(5), || member_up(
            &ac, admin, "app", "app1"
        ))
        .await
    );
    let (code, _) = curl(
        "POST",
        &format!("http://{admin}/bans"),
        Some(&format!(r#"{{"net":"{net}.77"}}"#)),
    );
    assert_eq!(code, 201);

    // Established before the reload: a TCP stream through the gate and a slow request.
    let mut tcp = std::net::TcpStream::connect(format!("{net}.1:7000")).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut hello = [0u8; 5];
    tcp.read_exact(&mut hello).unwrap();
    assert_eq!(&hello, b"app1\n");
    let slow_c = client(Some(format!("{net}.60").parse().unwrap()));
    let slow_url = format!("http://{net}.1:8080/slow?ms=1500");
    let slow = tokio::spawn(async move { get(&slow_c, &slow_url).await });

    // Steady keep-alive load.
    let sources: Vec<std::net::IpAddr> = (0..2u8)
        .map(|w| format!("{net}.{}", 100 + w).parse().unwrap())
        .collect();
    let load = Load::start(
        &sources,
        &format!("http://{net}.1:8080/load"),
        50_000,
        Duration::from_secs(20),
    );
    assert!(load.wait_more(200, Duration::from_secs(5)).await);

    // SIGHUP with a new member and a new listener.
    std::fs::write(&gate.config, reload_config(net, true)).unwrap();
    gate.proc_.signal("HUP");
    assert!(
        wait_until(Duration::from_secs(5), || member_up(
            &ac, admin, "app", "app2"
        ))
        .await,
        "app2 added and up"
    );
    let c2 = client(Some(format!("{net}.61").parse().unwrap()));
    assert!(
        wait_until(Duration::from_secs(3), || async {
            get(&c2, &format!("http://{net}.1:8081/"))
                .await
                .map(|r| r.0)
                == Ok(200)
        })
        .await,
        "the new listener answers"
    );

    // A bad config is refused and changes nothing.
    std::fs::write(
        &gate.config,
        "[[listeners]]\nname = \"x\"\nbind = \"127.84.1.1:1\"\nservice = \"none\"\n",
    )
    .unwrap();
    let (code, body) = curl("POST", &format!("http://{admin}/reload"), None);
    assert_eq!(code, 422, "{body}");
    assert_eq!(
        get(&c2, &format!("http://{net}.1:8081/"))
            .await
            .map(|r| r.0),
        Ok(200)
    );
    std::fs::write(&gate.config, reload_config(net, true)).unwrap();
    let (code, _) = curl("POST", &format!("http://{admin}/reload"), None);
    assert_eq!(code, 200);

    assert!(load.wait_more(200, Duration::from_secs(5)).await);
    let (total, failed) = load.finish().await;
    assert_eq!(failed, 0, "no request failed across reloads ({total} sent)");
    assert_eq!(
        slow.await.unwrap().map(|r| r.0),
        Ok(200),
        "in-flight request finished"
    );
    tcp.write_all(b"still here").unwrap();
    let mut buf = [0u8; 10];
    tcp.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"still here", "established TCP stream survived");
    let (_, bans) = curl("GET", &format!("http://{admin}/bans"), None);
    assert!(bans.contains(&format!("{net}.77/32")), "ban kept: {bans}");

    // Rules change on reload too.
    let to = sa(&format!("{net}.1:8080"));
    let (a, b): (std::net::IpAddr, std::net::IpAddr) = (
        format!("{net}.90").parse().unwrap(),
        format!("{net}.91").parse().unwrap(),
    );
    assert_eq!(
        tokio::task::spawn_blocking(move || raw_get(a, to))
            .await
            .unwrap(),
        Some(200)
    );
    let with_rule = format!(
        "{}\n[firewall]\nrules = [{{ action = \"deny\", source = \"{net}.90/32\" }}]\n",
        reload_config(net, true)
    );
    std::fs::write(&gate.config, with_rule).unwrap();
    let (code, body) = curl("POST", &format!("http://{admin}/reload"), None);
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        tokio::task::spawn_blocking(move || raw_get(a, to))
            .await
            .unwrap(),
        None,
        "new rule denies"
    );
    assert_eq!(
        tokio::task::spawn_blocking(move || raw_get(b, to))
            .await
            .unwrap(),
        Some(200)
    );
}

fn two_member_config(net: &str) -> String {
    format!(
        r#"
admin = "{net}.1:9100"

[[listeners]]
name = "rr"
bind = "{net}.1:8080"
service = "app"

[[listeners]]
name = "lc"
bind = "{net}.1:8081"
service = "app_lc"

[[listeners]]
name = "ch"
bind = "{net}.1:8082"
service = "app_ch"

[[services]]
name = "app"
port = 8000
members = [{{ name = "app1", address = "{net}.11" }}, {{ name = "app2", address = "{net}.12" }}]
health = {{ interval_ms = 200, timeout_ms = 200 }}

[[services]]
name = "app_lc"
policy = "least_conn"
port = 8000
members = [{{ name = "app1", address = "{net}.11" }}, {{ name = "app2", address = "{net}.12" }}]
health = {{ interval_ms = 200, timeout_ms = 200 }}

[[services]]
name = "app_ch"
policy = "consistent_hash"
hash_header = "x-user"
port = 8000
members = [{{ name = "app1", address = "{net}.11" }}, {{ name = "app2", address = "{net}.12" }}]
health = {{ interval_ms = 200, timeout_ms = 200 }}
"#
    )
}

async fn all_up(ac: &TestClient, admin: std::net::SocketAddr) -> bool {
    for s in ["app", "app_lc", "app_ch"] {
        for m in ["app1", "app2"] {
            if !member_up(ac, admin, s, m).await {
                return false;
            }
        }
    }
    true
}

/// Two echo backends behind a gate with the `two_member_config` listeners, all members up.
struct TwoMembers {
    admin: std::net::SocketAddr,
    gate: GateProc,
    _backends: (Proc, Proc),
    _dir: tempfile::TempDir,
}

impl TwoMembers {
    async fn start(net: &str) -> TwoMembers {
        let dir = tempfile::tempdir().unwrap();
        let b1 = spawn_echo("app1", sa(&format!("{net}.11:8000"))).await;
        let b2 = spawn_echo("app2", sa(&format!("{net}.12:8000"))).await;
        let admin = sa(&format!("{net}.1:9100"));
        let gate = spawn_gate(dir.path(), &two_member_config(net), admin).await;
        let ac = client(None);
        assert!(wait_until(Duration::from_secs(5), || all_up(&ac, admin)).await);
        TwoMembers {
            admin,
            gate,
            _backends: (b1, b2),
            _dir: dir,
        }
    }
}

fn who(body: &str) -> String {
    body.lines().next().unwrap_or("").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_lets_in_flight_finish_and_stops_new_work() {
    let net = "127.84.2";
    let t = TwoMembers::start(net).await;
    let (admin, ac) = (t.admin, client(None));

    // Two slow requests: round robin puts one on each member.
    let mut slow = Vec::new();
    for i in 0..2u8 {
        let c = client(Some(format!("{net}.{}", 60 + i).parse().unwrap()));
        let url = format!("http://{net}.1:8080/slow?ms=1500");
        slow.push(tokio::spawn(async move { get(&c, &url).await }));
    }
    assert!(
        wait_until(Duration::from_secs(3), || async {
            member_field(&backends(&ac, admin).await, "app", "app2", "active") == 1
        })
        .await
    );
    let (code, body) = curl("POST", &format!("http://{admin}/drain/app/app2"), None);
    assert_eq!(code, 200, "{body}");
    let c = client(Some(format!("{net}.50").parse().unwrap()));
    for _ in 0..10 {
        let (code, body) = get(&c, &format!("http://{net}.1:8080/")).await.unwrap();
        assert_eq!(
            (code, who(&body).as_str()),
            (200, "app1"),
            "no new work to a draining member"
        );
    }
    let mut seen = Vec::new();
    for s in slow {
        let (code, body) = s.await.unwrap().unwrap();
        assert_eq!(code, 200);
        seen.push(who(&body));
    }
    seen.sort();
    assert_eq!(
        seen,
        vec!["app1", "app2"],
        "the in-flight request on app2 finished"
    );
    let v = backends(&ac, admin).await;
    assert_eq!(member_field(&v, "app", "app2", "active"), 0);
    assert_eq!(member_field(&v, "app", "app2", "draining"), true);

    let (code, _) = curl("POST", &format!("http://{admin}/undrain/app/app2"), None);
    assert_eq!(code, 200);
    let mut back = false;
    for _ in 0..4 {
        back |= get(&c, &format!("http://{net}.1:8080/"))
            .await
            .map(|r| who(&r.1))
            == Ok("app2".into());
    }
    assert!(back, "undrained member takes work again");
    let (code, _) = curl("POST", &format!("http://{admin}/drain/app/nobody"), None);
    assert_eq!(code, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_conn_and_consistent_hash_policies() {
    let net = "127.84.3";
    let t = TwoMembers::start(net).await;
    let (admin, ac) = (t.admin, client(None));

    // Least connections: while one member holds a slow request, quick ones go to the other.
    let sc = client(Some(format!("{net}.60").parse().unwrap()));
    let url = format!("http://{net}.1:8081/slow?ms=1500");
    let slow = tokio::spawn(async move { get(&sc, &url).await });
    assert!(
        wait_until(Duration::from_secs(3), || async {
            let v = backends(&ac, admin).await;
            member_field(&v, "app_lc", "app1", "active")
                .as_u64()
                .unwrap_or(0)
                + member_field(&v, "app_lc", "app2", "active")
                    .as_u64()
                    .unwrap_or(0)
                == 1
        })
        .await
    );
    let c = client(Some(format!("{net}.50").parse().unwrap()));
    let mut quick = std::collections::BTreeSet::new();
    for _ in 0..6 {
        let (code, body) = get(&c, &format!("http://{net}.1:8081/")).await.unwrap();
        assert_eq!(code, 200);
        quick.insert(who(&body));
    }
    let slow_on = who(&slow.await.unwrap().unwrap().1);
    assert_eq!(
        quick.len(),
        1,
        "all quick requests on one member: {quick:?}"
    );
    assert!(
        !quick.contains(&slow_on),
        "and not on the busy one ({slow_on})"
    );

    // Consistent hashing on a header: a user sticks to one member; users spread over both.
    let mut members = std::collections::BTreeSet::new();
    for u in 0..20 {
        let user = format!("user{u}");
        let mut got = std::collections::BTreeSet::new();
        for _ in 0..3 {
            let (code, body) = get_with(&c, &format!("http://{net}.1:8082/"), &[("x-user", &user)])
                .await
                .unwrap();
            assert_eq!(code, 200);
            got.insert(who(&body));
        }
        assert_eq!(got.len(), 1, "{user} sticks to one member: {got:?}");
        members.extend(got);
    }
    assert_eq!(members.len(), 2, "users spread over both members");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_requests_finish() {
    let net = "127.84.4";
    let mut t = TwoMembers::start(net).await;
    let (admin, ac) = (t.admin, client(None));
    let c = client(Some(format!("{net}.60").parse().unwrap()));
    let url = format!("http://{net}.1:8080/slow?ms=1000");
    let slow = tokio::spawn(async move { get(&c, &url).await });
    assert!(
        wait_until(Duration::from_secs(3), || async {
            let v = backends(&ac, admin).await;
            member_field(&v, "app", "app1", "active")
                .as_u64()
                .unwrap_or(0)
                + member_field(&v, "app", "app2", "active")
                    .as_u64()
                    .unwrap_or(0)
                == 1
        })
        .await
    );
    t.gate.proc_.signal("TERM");
    assert!(
        wait_until(Duration::from_secs(2), || async {
            !port_open(sa(&format!("{net}.1:8080"))).await
        })
        .await,
        "no new connections once stopping"
    );
    assert_eq!(
        slow.await.unwrap().map(|r| r.0),
        Ok(200),
        "in-flight request finished"
    );
    assert!(
        t.gate.proc_.wait_exit(Duration::from_secs(5)),
        "gate exits after its connections"
    );
}

#[tokio::test]
async fn a_second_gate_on_the_same_address_fails_instead_of_sharing() {
    let net = "127.84.5";
    let t = TwoMembers::start(net).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gate.toml");
    std::fs::write(&cfg, two_member_config(net)).unwrap();
    let mut second = die_with_parent(&mut std::process::Command::new(gate_bin()))
        .arg("--config")
        .arg(&cfg)
        .arg("--state")
        .arg(dir.path().join("state"))
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut status = None;
    for _ in 0..250 {
        if let Ok(Some(s)) = second.try_wait() {
            status = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = second.kill();
    let out = second.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        status.is_some_and(|s| !s.success()),
        "the second gate must exit with an error"
    );
    assert!(err.contains("in use"), "{err}");
    // The first gate still serves.
    let c = client(Some(format!("{net}.50").parse().unwrap()));
    assert_eq!(
        get(&c, &format!("http://{net}.1:8080/")).await.map(|r| r.0),
        Ok(200)
    );
    drop(t);
}
