//! HTTP proxy through real processes: failover under load, forwarding headers, the
//! 502/503/504 answers, and a frozen member passed over. Addresses: 127.80.{1,2,6,8}.0/24.

mod common;

use std::time::{Duration, Instant};

use common::*;

fn two_backend_config(net: &str, extra_service: &str) -> String {
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
members = [
  {{ name = "app1", address = "{net}.11" }},
  {{ name = "app2", address = "{net}.12" }},
]
health = {{ path = "/health", interval_ms = 200, timeout_ms = 200, rise = 2, fall = 2 }}
{extra_service}
"#
    )
}

/// Two echo members (app1, app2) behind a gate with `cfg`, both up.
struct TwoBackends {
    _b1: Proc,
    b2: Proc,
    _gate: GateProc,
    _dir: tempfile::TempDir,
    /// The admin API's client and address.
    ac: TestClient,
    admin: std::net::SocketAddr,
}

async fn two_backends_up(net: &str, cfg: &str) -> TwoBackends {
    let dir = tempfile::tempdir().unwrap();
    let b1 = spawn_echo("app1", sa(&format!("{net}.11:8000"))).await;
    let b2 = spawn_echo("app2", sa(&format!("{net}.12:8000"))).await;
    let admin = sa(&format!("{net}.1:9100"));
    let gate = spawn_gate(dir.path(), cfg, admin).await;
    let ac = client(None);
    assert!(
        wait_until(Duration::from_secs(5), || async {
            member_up(&ac, admin, "app", "app1").await && member_up(&ac, admin, "app", "app2").await
        })
        .await,
        "both members should come up"
    );
    TwoBackends {
        _b1: b1,
        b2,
        _gate: gate,
        _dir: dir,
        ac,
        admin,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_backend_under_load_fails_no_request() {
    let net = "127.80.1";
    let mut two = two_backends_up(net, &two_backend_config(net, "")).await;
    let (ac, admin) = (two.ac.clone(), two.admin);

    let url = format!("http://{net}.1:8080/hello");
    let sources: Vec<std::net::IpAddr> = (0..4u8)
        .map(|w| format!("{net}.{}", 100 + w).parse().unwrap())
        .collect();
    let load = Load::start(&sources, &url, 20_000, Duration::from_secs(30));
    // Kill app2 once the load is flowing.
    assert!(load.wait_more(300, Duration::from_secs(10)).await);
    assert!(
        load.seen("app2") > 0,
        "round robin reached app2 before the kill"
    );
    let killed_at = Instant::now();
    two.b2.kill9();
    // Out of rotation within its fall time (2 × 200 ms) plus a check's timeout and slack.
    assert!(
        wait_until(Duration::from_secs(3), || async {
            !member_up(&ac, admin, "app", "app2").await
        })
        .await,
        "app2 should be marked down"
    );
    eprintln!("app2 down after {:?}", killed_at.elapsed());
    // Keep the load on with app2 gone for several health intervals (1.5 s of load), then
    // stop it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(load.wait_more(500, Duration::from_secs(10)).await);
    let (total, failed) = load.finish().await;
    assert_eq!(failed, 0, "no client request may fail ({total} sent)");
    assert!(total >= 800, "load should be steady: only {total} requests");

    // Back in rotation when healthy again.
    let _b2 = spawn_echo("app2", sa(&format!("{net}.12:8000"))).await;
    assert!(
        wait_until(Duration::from_secs(5), || member_up(
            &ac, admin, "app", "app2"
        ))
        .await
    );
    let c = client(Some(format!("{net}.120").parse().unwrap()));
    assert!(
        answers_within(&c, &url, "app2", 10).await,
        "app2 serves again after recovery"
    );
}

/// Whether `member` answers one of `tries` requests to `url`.
async fn answers_within(c: &TestClient, url: &str, member: &str, tries: usize) -> bool {
    for _ in 0..tries {
        if let Ok((200, b)) = get(c, url).await
            && b.starts_with(member)
        {
            return true;
        }
    }
    false
}

#[tokio::test]
async fn forwarding_headers_and_error_answers() {
    let net = "127.80.2";
    let dir = tempfile::tempdir().unwrap();
    let _b1 = spawn_echo("app1", sa(&format!("{net}.11:8000"))).await;
    let _b2 = spawn_echo("app2", sa(&format!("{net}.12:8000"))).await;
    // A backend that accepts and closes at once: up for TCP checks, fails every request.
    let broken = std::net::TcpListener::bind(format!("{net}.13:8000")).unwrap();
    std::thread::spawn(move || {
        for s in broken.incoming().take(200) {
            drop(s);
        }
    });
    let extra = format!(
        r#"
response_timeout_ms = 300
idle_timeout_ms = 500

[[listeners]]
name = "empty"
bind = "{net}.1:8081"
service = "nobody"

[[listeners]]
name = "broken"
bind = "{net}.1:8082"
service = "broken"

[[services]]
name = "nobody"
port = 8000
members = [{{ name = "ghost", address = "{net}.14" }}]
health = {{ kind = "tcp", interval_ms = 200, timeout_ms = 100 }}

[[services]]
name = "sluggish"
port = 8000
members = [{{ name = "s", address = "{net}.11" }}]
health = {{ path = "/slow?ms=1000", interval_ms = 200, timeout_ms = 150 }}

[[services]]
name = "broken"
port = 8000
passive_fail = 0
members = [{{ name = "b", address = "{net}.13" }}]
health = {{ kind = "tcp", interval_ms = 200, timeout_ms = 100 }}
"#
    );
    let admin = sa(&format!("{net}.1:9100"));
    let _gate = spawn_gate(dir.path(), &two_backend_config(net, &extra), admin).await;
    let ac = client(None);
    assert!(
        wait_until(Duration::from_secs(5), || async {
            member_up(&ac, admin, "app", "app1").await
                && member_up(&ac, admin, "app", "app2").await
                && member_up(&ac, admin, "broken", "b").await
        })
        .await
    );
    let c = client(Some(format!("{net}.50").parse().unwrap()));
    // A member whose health check answers after the check's timeout never comes up.
    assert!(!member_up(&ac, admin, "sluggish", "s").await);

    let (code, body) = get(&c, &format!("http://{net}.1:8080/x?y=1"))
        .await
        .unwrap();
    assert_eq!(code, 200);
    assert!(body.contains("GET /x?y=1"), "{body}");
    assert!(
        body.contains(&format!("x-forwarded-for: {net}.50")),
        "{body}"
    );
    assert!(
        body.contains(&format!(
            "forwarded: for={net}.50;proto=http;host=\"{net}.1:8080\""
        )),
        "{body}"
    );

    let (code, body) = get(&c, &format!("http://{net}.1:8080/slow?ms=2000"))
        .await
        .unwrap();
    assert_eq!(
        (code, body.as_str()),
        (504, "504 gateway timeout: backend too slow\n")
    );

    // A body that pauses less than the idle timeout passes whole; a backend that stalls
    // mid-body is cut at the idle timeout instead of holding the client.
    let (code, body) = get(&c, &format!("http://{net}.1:8080/stall?ms=100"))
        .await
        .unwrap();
    assert_eq!((code, body.as_str()), (200, "partial\nrest\n"));
    let t = std::time::Instant::now();
    let stalled = get(&c, &format!("http://{net}.1:8080/stall?ms=4000")).await;
    assert!(
        stalled.is_err(),
        "a stalled body ends in an error: {stalled:?}"
    );
    assert!(
        t.elapsed() < Duration::from_millis(2500),
        "cut after {:?}",
        t.elapsed()
    );

    let (code, body) = get(&c, &format!("http://{net}.1:8081/")).await.unwrap();
    assert_eq!((code, body.as_str()), (503, "503 no healthy backend\n"));

    let (code, body) = get(&c, &format!("http://{net}.1:8082/")).await.unwrap();
    assert_eq!(code, 502, "{body}");
    assert!(body.starts_with("502 bad gateway"), "{body}");

    // An upgrade (WebSocket-style): 101 through the gate, then bytes both ways.
    let to = sa(&format!("{net}.1:8080"));
    let echoed = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(to).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        s.write_all(
            b"GET /ws HTTP/1.1\r\nhost: x\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\r\n",
        )
        .unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && s.read(&mut b).unwrap_or(0) == 1 {
            head.push(b[0]);
        }
        let head = String::from_utf8_lossy(&head).to_lowercase();
        s.write_all(b"ping over the tunnel").unwrap();
        let mut back = [0u8; 20];
        s.read_exact(&mut back).unwrap();
        (head, String::from_utf8_lossy(&back).into_owned())
    })
    .await
    .unwrap();
    assert!(echoed.0.starts_with("http/1.1 101"), "{}", echoed.0);
    assert!(echoed.0.contains("upgrade: websocket"), "{}", echoed.0);
    assert_eq!(echoed.1, "ping over the tunnel");

    // A POST body is streamed through (and counted).
    let out = std::process::Command::new("curl")
        .args(["-s", "-m", "5", "--data-binary", "hello world"])
        .arg(format!("http://{net}.1:8080/post"))
        .output()
        .expect("curl runs");
    assert!(String::from_utf8_lossy(&out.stdout).contains("POST /post"));

    // Metrics: requests by status, latency histogram, backend gauges.
    let (_, m) = get(&ac, &format!("http://{admin}/metrics")).await.unwrap();
    for series in [
        "gate_http_requests_total{listener=\"web\",code=\"200\"} 4",
        "gate_http_requests_total{listener=\"web\",code=\"101\"} 1",
        "gate_bytes_total{listener=\"web\",dir=\"in\"} 11",
        "gate_http_requests_total{listener=\"web\",code=\"504\"} 1",
        "gate_http_requests_total{listener=\"empty\",code=\"503\"} 1",
        "gate_http_requests_total{listener=\"broken\",code=\"502\"} 1",
        "gate_http_request_duration_seconds_count{listener=\"web\"} 6",
        "gate_backend_up{service=\"app\",member=\"app1\"} 1",
        "gate_backend_up{service=\"nobody\",member=\"ghost\"} 0",
    ] {
        assert!(m.contains(series), "missing {series} in\n{m}");
    }

    // Admin counters saw the traffic.
    let v = backends(&ac, admin).await;
    assert!(
        member_field(&v, "broken", "b", "failures")
            .as_u64()
            .unwrap_or(0)
            >= 1
    );
}

/// The same failure with passive ejection off: only the active checks take the dead member
/// out, within its fall time (2 × 200 ms, plus one check's timeout), while retries keep every
/// client request whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_with_active_checks_only_leaves_rotation_within_fall_time() {
    let net = "127.80.6";
    let mut two = two_backends_up(net, &two_backend_config(net, "passive_fail = 0")).await;
    let (ac, admin) = (two.ac.clone(), two.admin);
    let sources: Vec<std::net::IpAddr> = (0..2u8)
        .map(|w| format!("{net}.{}", 100 + w).parse().unwrap())
        .collect();
    let load = Load::start(
        &sources,
        &format!("http://{net}.1:8080/"),
        20_000,
        Duration::from_secs(20),
    );
    assert!(load.wait_more(200, Duration::from_secs(10)).await);
    let killed = Instant::now();
    two.b2.kill9();
    assert!(
        wait_until(Duration::from_secs(3), || async {
            !member_up(&ac, admin, "app", "app2").await
        })
        .await
    );
    let took = killed.elapsed();
    eprintln!("app2 out of rotation after {took:?}");
    // fall × interval + a check's timeout + scheduling slack on a busy machine.
    assert!(
        took < Duration::from_millis(1500),
        "out of rotation after {took:?}"
    );
    assert!(load.wait_more(300, Duration::from_secs(10)).await);
    let (total, failed) = load.finish().await;
    assert_eq!(failed, 0, "no client request may fail ({total} sent)");
}

/// A member frozen with its sockets open (SIGSTOP: its kernel still accepts connections and
/// data, nothing answers) is passed over once a request has waited on it for `stall_ms`,
/// long before the response timeout, the active checks or passive ejection would act: the
/// way a box that hangs or loses power fails, without a FIN or an RST.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_member_is_passed_over_after_stall_ms() {
    let net = "127.80.8";
    // Checks too slow, and passive ejection off, to act within the test: only the stall can.
    let cfg = two_backend_config(
        net,
        "passive_fail = 0\nresponse_timeout_ms = 20000\nstall_ms = 300",
    )
    .replace(
        "interval_ms = 200, timeout_ms = 200",
        "interval_ms = 60000, timeout_ms = 1000",
    );
    let two = two_backends_up(net, &cfg).await;
    let (ac, admin) = (two.ac.clone(), two.admin);
    let url = format!("http://{net}.1:8080/who");
    two.b2.signal("STOP");
    // Round robin sends one of two requests to app2, where it waits.
    let c = client(Some(format!("{net}.100").parse().unwrap()));
    let stuck: Vec<_> = (0..2)
        .map(|_| {
            let (c, url) = (c.clone(), url.clone());
            tokio::spawn(async move { get(&c, &url).await })
        })
        .collect();
    assert!(
        wait_until(Duration::from_secs(5), || async {
            member_field(&backends(&ac, admin).await, "app", "app2", "stalled") == true
        })
        .await,
        "app2 reported stalled"
    );
    assert_eq!(
        member_field(&backends(&ac, admin).await, "app", "app2", "up"),
        true,
        "still in rotation: only the stall keeps work off it"
    );
    // Every new request goes to app1 and answers at once.
    let c2 = client(Some(format!("{net}.101").parse().unwrap()));
    for n in 0..20 {
        let r = tokio::time::timeout(Duration::from_secs(2), get(&c2, &url)).await;
        match r {
            Ok(Ok((200, body))) => assert!(body.starts_with("app1"), "request {n}: {body}"),
            other => panic!("request {n} after the stall: {other:?}"),
        }
    }
    // Thawed, the waiting request is answered and app2 takes work again.
    two.b2.signal("CONT");
    for s in stuck {
        let (code, _) = s.await.unwrap().expect("the waiting request is answered");
        assert_eq!(code, 200);
    }
    assert!(
        answers_within(&c2, &url, "app2", 10).await,
        "app2 serves again once it answers"
    );
}
