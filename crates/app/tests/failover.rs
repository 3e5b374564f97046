//! The db going away under load, and finding the db through DNS.

mod common;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{App, Http, Redis, RedisOpts, addr, wait_until_async};
use serde_json::json;

#[derive(Default)]
struct Tally {
    ops: AtomicU64,
    read_ok: AtomicU64,
    read_fail: AtomicU64,
    write_ok: AtomicU64,
    write_fail: AtomicU64,
}

/// redis-server is SIGKILLed and restarted (same address, its append-only file fsynced on
/// every write, so it comes back with its data) while readers and writers run. Each request
/// retries within the 5 s budget, so no request fails; every acknowledged write is there
/// afterwards; If-Match increments that hit the kill are neither lost nor applied twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn db_killed_and_restarted_mid_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    let aof = dir.path().join("redis");
    std::fs::create_dir_all(&aof).expect("aof dir");
    let raddr = addr("127.40.6.1:6379");
    let ropts = || RedisOpts {
        password: None,
        aof_dir: Some(&aof),
    };
    let mut redis = Redis::start(raddr, ropts());
    let app = App::start(
        dir.path(),
        addr("127.40.6.2:8000"),
        addr("127.40.6.2:9100"),
        "addrs = [\"127.40.6.1:6379\"]\nretry_budget_ms = 5000\nresponse_timeout_ms = 1000",
        "[auth]\ncache_ms = 60000",
    );
    let (_, token) = app.create_key("load");
    let http = Http::new();
    let base = app.base.clone();
    let h = [("x-api-key", token.as_str())];
    for i in 0..20 {
        let r = http
            .must(
                "PUT",
                &format!("{base}/v1/r/d{i}"),
                &h,
                Some(&json!({"i": i}).to_string()),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
    }
    let r = http
        .must("PUT", &format!("{base}/v1/ctr/c"), &h, Some(r#"{"n":0}"#))
        .await;
    assert_eq!(r.status, 201);

    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let cas_ok = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    const MAX_OPS: u64 = 3000; // per task: a bound, the stop flag ends the load first
    for t in 0..2u64 {
        // readers
        let (http2, base2, token2, tally2, stop2) = (
            http.clone(),
            base.clone(),
            token.clone(),
            tally.clone(),
            stop.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let (http, base, token, tally, stop) = (http2, base2, token2, tally2, stop2);
            let h = [("x-api-key", token.as_str())];
            for k in 0..MAX_OPS {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let i = (k * 7 + t) % 20;
                match http
                    .req("GET", &format!("{base}/v1/r/d{i}"), &h, None)
                    .await
                {
                    Ok(r) if r.status == 200 && r.json() == json!({"i": i}) => {
                        tally.read_ok.fetch_add(1, Ordering::Relaxed)
                    }
                    other => {
                        eprintln!("read failed: {other:?}");
                        tally.read_fail.fetch_add(1, Ordering::Relaxed)
                    }
                };
                tally.ops.fetch_add(1, Ordering::Relaxed);
            }
        }));
        // writers: distinct documents, so each acknowledged write can be checked
        let (http, base, token, tally, stop, acked) = (
            http.clone(),
            base.clone(),
            token.clone(),
            tally.clone(),
            stop.clone(),
            acked.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let h = [("x-api-key", token.as_str())];
            for k in 0..MAX_OPS {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let id = format!("w{t}-{k}");
                let body = json!({"k": k}).to_string();
                match http
                    .req("PUT", &format!("{base}/v1/w/{id}"), &h, Some(&body))
                    .await
                {
                    Ok(r) if r.status == 201 || r.status == 200 => {
                        tally.write_ok.fetch_add(1, Ordering::Relaxed);
                        acked.lock().expect("lock").push((id, k));
                    }
                    other => {
                        eprintln!("write failed: {other:?}");
                        tally.write_fail.fetch_add(1, Ordering::Relaxed);
                    }
                }
                tally.ops.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    {
        // compare-and-set increments
        let (http, base, token, tally, stop, cas_ok) = (
            http.clone(),
            base.clone(),
            token.clone(),
            tally.clone(),
            stop.clone(),
            cas_ok.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let h = [("x-api-key", token.as_str())];
            for _ in 0..MAX_OPS {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(r) = http.req("GET", &format!("{base}/v1/ctr/c"), &h, None).await else {
                    tally.read_fail.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                if r.status != 200 {
                    eprintln!("counter read failed: {} {}", r.status, r.body);
                    tally.read_fail.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let tag = r.header("etag").unwrap_or_default();
                let n = r.json()["n"].as_u64().unwrap_or(0);
                let hh = [("x-api-key", token.as_str()), ("if-match", tag.as_str())];
                let body = json!({"n": n + 1}).to_string();
                match http
                    .req("PUT", &format!("{base}/v1/ctr/c"), &hh, Some(&body))
                    .await
                {
                    Ok(r) if r.status == 200 => {
                        cas_ok.fetch_add(1, Ordering::Relaxed);
                    }
                    other => {
                        eprintln!("increment failed: {other:?}");
                        tally.write_fail.fetch_add(1, Ordering::Relaxed);
                    }
                }
                tally.ops.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }

    let ops = || tally.ops.load(Ordering::Relaxed);
    wait_until_async("load to warm up", Duration::from_secs(30), || async {
        ops() >= 200
    })
    .await;
    let killed_at = Instant::now();
    redis.proc.kill();
    drop(redis);
    let redis = Redis::start(raddr, ropts());
    let outage = killed_at.elapsed();
    let after = ops();
    wait_until_async(
        "load to go on after the restart",
        Duration::from_secs(30),
        || async { ops() >= after + 1000 },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(30), t)
            .await
            .expect("load tasks end")
            .expect("load task");
    }
    let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
    eprintln!(
        "outage {outage:?}; reads ok {} failed {}; writes ok {} failed {}; increments {}",
        g(&tally.read_ok),
        g(&tally.read_fail),
        g(&tally.write_ok),
        g(&tally.write_fail),
        g(&cas_ok)
    );
    assert!(
        outage < Duration::from_secs(5),
        "restart took longer than the budget"
    );
    assert_eq!(
        g(&tally.read_fail),
        0,
        "reads must recover within the retry budget"
    );
    assert_eq!(
        g(&tally.write_fail),
        0,
        "writes must recover within the retry budget"
    );

    // Every acknowledged write is there.
    let acked = acked.lock().expect("lock").clone();
    assert!(acked.len() > 100);
    for (id, k) in &acked {
        let r = http
            .must("GET", &format!("{base}/v1/w/{id}"), &h, None)
            .await;
        assert_eq!(r.status, 200, "acknowledged write {id} lost");
        assert_eq!(r.json(), json!({"k": k}));
    }
    let r = http
        .must("GET", &format!("{base}/v1/ctr/c"), &h, None)
        .await;
    assert_eq!(
        r.json()["n"].as_u64(),
        Some(g(&cas_ok)),
        "increments lost or doubled"
    );

    // The retry path was taken.
    let m = http
        .must("GET", "http://127.40.6.2:9100/metrics", &[], None)
        .await;
    let retries: u64 = m
        .body
        .lines()
        .find_map(|l| l.strip_prefix("citadel_app_db_retries_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("retries metric");
    assert!(retries > 0, "{}", m.body);
    drop(redis);
}

/// A tiny DNS server: answers A queries for one name from a list that the test changes.
struct Dns {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Dns {
    fn start(at: SocketAddr, name: &str, answers: Arc<Mutex<Vec<Ipv4Addr>>>) -> Dns {
        let sock = UdpSocket::bind(at).expect("bind dns");
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let stop = Arc::new(AtomicBool::new(false));
        let name = name.to_ascii_lowercase();
        let s2 = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !s2.load(Ordering::Relaxed) {
                let Ok((n, peer)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                if let Some(resp) = dns_answer(&buf[..n], &name, &answers.lock().expect("lock")) {
                    let _ = sock.send_to(&resp, peer);
                }
            }
        });
        Dns {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn dns_answer(q: &[u8], name: &str, ips: &[Ipv4Addr]) -> Option<Vec<u8>> {
    if q.len() < 12 {
        return None;
    }
    let mut i = 12;
    let mut labels = Vec::new();
    loop {
        let len = *q.get(i)? as usize;
        i += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(q.get(i..i + len)?).to_ascii_lowercase());
        i += len;
    }
    let qtype = u16::from_be_bytes([*q.get(i)?, *q.get(i + 1)?]);
    let qend = i + 4;
    let question = q.get(12..qend)?;
    let asked = labels.join(".");
    let known = asked == name;
    let answers: &[Ipv4Addr] = if known && qtype == 1 { ips } else { &[] };
    let mut r = Vec::new();
    r.extend_from_slice(&q[0..2]);
    r.extend_from_slice(&[0x81, if known { 0x80 } else { 0x83 }]);
    r.extend_from_slice(&[0, 1]);
    r.extend_from_slice(&(answers.len() as u16).to_be_bytes());
    r.extend_from_slice(&[0, 0, 0, 0]);
    r.extend_from_slice(question);
    for ip in answers {
        r.extend_from_slice(&[0xC0, 0x0C, 0, 1, 0, 1, 0, 0, 0, 0, 0, 4]);
        r.extend_from_slice(&ip.octets());
    }
    Some(r)
}

/// The app finds the db by name through a given DNS server: it skips a member that does not
/// answer, and after its member dies it resolves the name again and moves to the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_discovery_skips_dead_members_and_re_resolves() {
    let dir = tempfile::tempdir().expect("tempdir");
    let answers = Arc::new(Mutex::new(vec![
        Ipv4Addr::new(127, 40, 7, 9), // nothing listens here
        Ipv4Addr::new(127, 40, 7, 1),
    ]));
    let _dns = Dns::start(
        addr("127.40.7.53:5353"),
        "db.test.internal",
        answers.clone(),
    );
    let mut a = Redis::start(
        addr("127.40.7.1:6379"),
        RedisOpts {
            password: None,
            aof_dir: None,
        },
    );
    let app = App::start(
        dir.path(),
        addr("127.40.7.2:8000"),
        addr("127.40.7.2:9100"),
        "dns = { name = \"db.test.internal\", server = \"127.40.7.53:5353\", port = 6379 }\nretry_budget_ms = 5000\nconnect_timeout_ms = 300",
        "[auth]\nrequired = false",
    );
    let http = Http::new();
    let base = app.base.clone();
    for i in 0..10 {
        let r = http
            .must(
                "PUT",
                &format!("{base}/v1/c/a{i}"),
                &[],
                Some(r#"{"on":"a"}"#),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        let r = http
            .must("GET", &format!("{base}/v1/c/a{i}"), &[], None)
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let r = http.must("GET", &format!("{base}/health"), &[], None).await;
    assert_eq!(r.status, 200);

    // Move the db: a new member, the name now points only there, the old one dies.
    let _b = Redis::start(
        addr("127.40.7.3:6379"),
        RedisOpts {
            password: None,
            aof_dir: None,
        },
    );
    *answers.lock().expect("lock") = vec![Ipv4Addr::new(127, 40, 7, 3)];
    a.proc.kill();
    let r = http
        .must("PUT", &format!("{base}/v1/c/b"), &[], Some(r#"{"on":"b"}"#))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let r = http.must("GET", &format!("{base}/v1/c/b"), &[], None).await;
    assert_eq!((r.status, r.json()), (200, json!({"on": "b"})));
    // The old documents were only on the old member.
    let r = http
        .must("GET", &format!("{base}/v1/c/a0"), &[], None)
        .await;
    assert_eq!(r.status, 404);
    assert!(common::redis_ping(addr("127.40.7.3:6379"), None));
    drop(a);
}

/// With every member gone, requests fail after the retry budget with 503 and a JSON body,
/// and the health check says so; when a member is back, both recover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn db_down_longer_than_budget_is_503_then_recovers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let raddr = addr("127.40.9.1:6379");
    let mut redis = Redis::start(
        raddr,
        RedisOpts {
            password: None,
            aof_dir: None,
        },
    );
    let app = App::start(
        dir.path(),
        addr("127.40.9.2:8000"),
        addr("127.40.9.2:9100"),
        "addrs = [\"127.40.9.1:6379\"]\nretry_budget_ms = 400\nconnect_timeout_ms = 200",
        "[auth]\nrequired = false",
    );
    let http = Http::new();
    let base = app.base.clone();
    let r = http
        .must("PUT", &format!("{base}/v1/c/x"), &[], Some("{}"))
        .await;
    assert_eq!(r.status, 201);
    redis.proc.kill();
    let t = Instant::now();
    let r = http.must("GET", &format!("{base}/v1/c/x"), &[], None).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "db_unavailable");
    assert_eq!(r.header("retry-after").as_deref(), Some("1"));
    assert!(t.elapsed() < Duration::from_secs(5));
    let r = http.must("GET", &format!("{base}/health"), &[], None).await;
    assert_eq!(r.status, 503);
    drop(redis);
    let _redis = Redis::start(
        raddr,
        RedisOpts {
            password: None,
            aof_dir: None,
        },
    );
    wait_until_async("health to recover", Duration::from_secs(10), || async {
        http.req("GET", &format!("{base}/health"), &[], None)
            .await
            .is_ok_and(|r| r.status == 200)
    })
    .await;
    let r = http
        .must("PUT", &format!("{base}/v1/c/y"), &[], Some("{}"))
        .await;
    assert_eq!(r.status, 201);
}

fn redis_cli(at: SocketAddr, args: &[&str]) -> String {
    let out = std::process::Command::new("redis-cli")
        .args(["-h", &at.ip().to_string(), "-p", &at.port().to_string()])
        .args(args)
        .output()
        .expect("redis-cli (Debian package redis-tools, installed with redis-server)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Two members: a primary and its replica. The primary is SIGKILLed and the test (standing in
/// for the db's own failover) promotes the replica. Until then the replica answers writes with
/// `READONLY` (a retryable error) and the dead member refuses connections; the app rotates
/// between members and retries, so no request fails. Writes acknowledged after the kill are
/// all on the new primary (redis replication is asynchronous, so writes acknowledged just
/// before the kill may be lost: that is redis-server's limit, not the app's; the count is
/// printed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_to_a_promoted_replica() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p_addr = addr("127.40.12.1:6379");
    let r_addr = addr("127.40.12.3:6379");
    let mut primary = Redis::start(
        p_addr,
        RedisOpts {
            password: None,
            aof_dir: None,
        },
    );
    let replica = Redis::start(
        r_addr,
        RedisOpts {
            password: None,
            aof_dir: None,
        },
    );
    redis_cli(p_addr, &["CONFIG", "SET", "repl-diskless-sync-delay", "0"]);
    assert!(redis_cli(r_addr, &["REPLICAOF", "127.40.12.1", "6379"]).contains("OK"));
    let app = App::start(
        dir.path(),
        addr("127.40.12.2:8000"),
        addr("127.40.12.2:9100"),
        "addrs = [\"127.40.12.1:6379\", \"127.40.12.3:6379\"]\nretry_budget_ms = 5000\nconnect_timeout_ms = 300",
        "[auth]\nrequired = false",
    );
    let http = Http::new();
    let base = app.base.clone();
    for i in 0..10 {
        let r = http
            .must(
                "PUT",
                &format!("{base}/v1/r/d{i}"),
                &[],
                Some(&json!({"i": i}).to_string()),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
    }
    wait_until_async(
        "the replica to catch up",
        Duration::from_secs(10),
        || async { redis_cli(r_addr, &["HGET", "doc:r:d9", "v"]).trim().len() == 16 },
    )
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let acked: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
    let mut tasks = Vec::new();
    for t in 0..2u64 {
        let (http, base, stop, tally, acked) = (
            http.clone(),
            base.clone(),
            stop.clone(),
            tally.clone(),
            acked.clone(),
        );
        tasks.push(tokio::spawn(async move {
            for k in 0..3000u64 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let id = format!("w{t}-{k}");
                let w = http
                    .req("PUT", &format!("{base}/v1/w/{id}"), &[], Some("{}"))
                    .await;
                match w {
                    Ok(r) if r.status == 201 || r.status == 200 => {
                        tally.write_ok.fetch_add(1, Ordering::Relaxed);
                        acked.lock().expect("lock").push((id, Instant::now()));
                    }
                    other => {
                        eprintln!("write failed: {other:?}");
                        tally.write_fail.fetch_add(1, Ordering::Relaxed);
                    }
                }
                let i = k % 10;
                match http
                    .req("GET", &format!("{base}/v1/r/d{i}"), &[], None)
                    .await
                {
                    Ok(r) if r.status == 200 => tally.read_ok.fetch_add(1, Ordering::Relaxed),
                    other => {
                        eprintln!("read failed: {other:?}");
                        tally.read_fail.fetch_add(1, Ordering::Relaxed)
                    }
                };
                tally.ops.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let ops = || tally.ops.load(Ordering::Relaxed);
    wait_until_async("load to warm up", Duration::from_secs(30), || async {
        ops() >= 100
    })
    .await;
    let killed_at = Instant::now();
    primary.proc.kill();
    // The orchestrator notices (here: once the app has had to retry) and promotes the replica.
    let retries = || async {
        http.req("GET", "http://127.40.12.2:9100/metrics", &[], None)
            .await
            .ok()
            .and_then(|m| {
                m.body
                    .lines()
                    .find_map(|l| l.strip_prefix("citadel_app_db_retries_total "))
                    .and_then(|v| v.trim().parse::<u64>().ok())
            })
            .unwrap_or(0)
    };
    // Enough retries that writes have met the replica's READONLY answer (checked below).
    wait_until_async("the app to retry", Duration::from_secs(4), || async {
        retries().await >= 10
    })
    .await;
    assert!(redis_cli(r_addr, &["REPLICAOF", "NO", "ONE"]).contains("OK"));
    let promoted_at = Instant::now();
    let after = ops();
    wait_until_async(
        "load to go on after the promotion",
        Duration::from_secs(30),
        || async { ops() >= after + 300 },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(30), t)
            .await
            .expect("load ends")
            .expect("task");
    }
    let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
    assert_eq!(
        g(&tally.read_fail),
        0,
        "reads must not fail within the retry budget"
    );
    assert_eq!(
        g(&tally.write_fail),
        0,
        "writes must not fail within the retry budget"
    );
    let acked = acked.lock().expect("lock").clone();
    let mut lost_before_kill = 0;
    for (id, at) in &acked {
        let present = redis_cli(r_addr, &["EXISTS", &format!("doc:w:{id}")]).trim() == "1";
        if !present {
            assert!(
                *at < killed_at,
                "write {id} acknowledged after the kill is lost"
            );
            lost_before_kill += 1;
        }
    }
    eprintln!(
        "failover: promoted {:?} after the kill; {} writes acknowledged, {lost_before_kill} \
         acknowledged before the kill not replicated; {} reads",
        promoted_at - killed_at,
        acked.len(),
        g(&tally.read_ok)
    );
    let log = std::fs::read_to_string(dir.path().join("app-127.40.12.2.log")).unwrap_or_default();
    assert!(
        log.contains("read only replica"),
        "writes never met the replica's READONLY answer"
    );
    drop(replica);
}

/// The load checker (library and `citadel-app load`) across a db restart: a timeline of
/// errors per second, every acknowledged write verified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_checker_across_a_db_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let aof = dir.path().join("redis");
    std::fs::create_dir_all(&aof).expect("aof dir");
    let raddr = addr("127.40.14.1:6379");
    let ropts = || RedisOpts {
        password: None,
        aof_dir: Some(&aof),
    };
    let mut redis = Redis::start(raddr, ropts());
    let app = App::start(
        dir.path(),
        addr("127.40.14.2:8000"),
        addr("127.40.14.2:9100"),
        "addrs = [\"127.40.14.1:6379\"]\nretry_budget_ms = 5000",
        "",
    );
    let (_, token) = app.create_key("load");
    let opts = citadel_app::load::LoadOptions {
        base: app.base.clone(),
        token: Some(token.clone()),
        duration: Duration::from_secs(3),
        concurrency: 4,
        ..Default::default()
    };
    let load = tokio::spawn(citadel_app::load::run(opts));
    let http = Http::new();
    wait_until_async("load to start", Duration::from_secs(10), || async {
        http.req("GET", "http://127.40.14.2:9100/metrics", &[], None)
            .await
            .is_ok_and(|m| !m.body.contains("class=\"2xx\"} 0\n"))
    })
    .await;
    redis.proc.kill();
    drop(redis);
    let _redis = Redis::start(raddr, ropts());
    let report = tokio::time::timeout(Duration::from_secs(60), load)
        .await
        .expect("load ends")
        .expect("task")
        .expect("report");
    let text = report.timeline();
    eprintln!("{text}");
    assert!(report.seconds.len() >= 3, "{text}");
    assert!(report.acknowledged > 0 && report.reads_ok > 0, "{text}");
    assert!(
        report.lost.is_empty() && report.unverified.is_empty(),
        "{text}"
    );
    assert_eq!(report.reads_err + report.writes_err, 0, "{text}");

    // The same through the binary.
    let out = std::process::Command::new(common::APP_BIN)
        .args([
            "load",
            "--url",
            &app.base,
            "--seconds",
            "1",
            "--concurrency",
            "2",
        ])
        .env("CITADEL_API_KEY", &token)
        .output()
        .expect("citadel-app load");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("acknowledged writes:") && stdout.contains("lost: 0"),
        "{stdout}"
    );
}

/// A member that hangs (SIGSTOP: it holds connections but never answers) is left after the
/// response timeout for another member, within the budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_member_is_left_for_another() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = || RedisOpts {
        password: None,
        aof_dir: None,
    };
    let good = Redis::start(addr("127.40.15.1:6379"), opts());
    let hung = Redis::start(addr("127.40.15.3:6379"), opts());
    let stopped = std::process::Command::new("kill")
        .args(["-STOP", &hung.proc.pid().to_string()])
        .status()
        .expect("kill -STOP");
    assert!(stopped.success());
    let app = App::start(
        dir.path(),
        addr("127.40.15.2:8000"),
        addr("127.40.15.2:9100"),
        "addrs = [\"127.40.15.1:6379\", \"127.40.15.3:6379\"]\nretry_budget_ms = 4000\nconnect_timeout_ms = 300\nresponse_timeout_ms = 300",
        "[auth]\nrequired = false",
    );
    let http = Http::new();
    let base = app.base.clone();
    let t = Instant::now();
    let r = http
        .must("PUT", &format!("{base}/v1/c/x"), &[], Some(r#"{"a":1}"#))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    // The shared and the stale connection go to different members: one of them meets the
    // hung one.
    for mode in ["linearizable", "stale", "linearizable", "stale"] {
        let r = http
            .must(
                "GET",
                &format!("{base}/v1/c/x"),
                &[("x-citadel-read", mode)],
                None,
            )
            .await;
        assert_eq!(r.status, 200, "{mode}: {}", r.body);
    }
    assert!(
        t.elapsed() < Duration::from_secs(8),
        "took {:?}",
        t.elapsed()
    );
    let m = http
        .must("GET", "http://127.40.15.2:9100/metrics", &[], None)
        .await;
    assert!(
        !m.body.contains("citadel_app_db_retries_total 0\n"),
        "the hung member was never met"
    );
    drop(hung); // SIGKILL works on a stopped process
    drop(good);
}

/// A member that is a replica names its master (`INFO replication`): the app's linearizable
/// connection goes there, not through the replica first listed (for the db, a follower
/// names its leader: reads there are served under the lease, writes need no forwarding).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linearizable_work_goes_to_the_master_a_replica_names() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p_addr = addr("127.40.16.1:6379");
    let r_addr = addr("127.40.16.3:6379");
    let opts = || RedisOpts {
        password: None,
        aof_dir: None,
    };
    let _primary = Redis::start(p_addr, opts());
    let _replica = Redis::start(r_addr, opts());
    assert!(redis_cli(r_addr, &["REPLICAOF", "127.40.16.1", "6379"]).contains("OK"));
    wait_until_async("the replica's link up", Duration::from_secs(10), || async {
        redis_cli(r_addr, &["INFO", "replication"]).contains("master_link_status:up")
    })
    .await;
    // The replica is listed first: the app's first connection is dialled there.
    let app = App::start(
        dir.path(),
        addr("127.40.16.2:8000"),
        addr("127.40.16.2:9100"),
        "addrs = [\"127.40.16.3:6379\", \"127.40.16.1:6379\"]\nconnect_timeout_ms = 300",
        "[auth]\nrequired = false",
    );
    let http = Http::new();
    for i in 0..5 {
        let r = http
            .must(
                "PUT",
                &format!("{}/v1/r/d{i}", app.base),
                &[],
                Some(&json!({"i": i}).to_string()),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        let r = http
            .must("GET", &format!("{}/v1/r/d{i}", app.base), &[], None)
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    // Only the master holds a connection from the app; the replica none (its own
    // redis-cli aside), and no write was refused there (READONLY) on the way.
    let from_app = |at: SocketAddr| {
        redis_cli(at, &["CLIENT", "LIST"])
            .lines()
            // Ordinary clients (not the replication link), not redis-cli itself.
            .filter(|l| l.contains("flags=N") && !l.contains("cmd=client|list"))
            .count()
    };
    assert!(
        from_app(p_addr) >= 1,
        "{}",
        redis_cli(p_addr, &["CLIENT", "LIST"])
    );
    assert_eq!(
        from_app(r_addr),
        0,
        "{}",
        redis_cli(r_addr, &["CLIENT", "LIST"])
    );
    let stats = redis_cli(r_addr, &["INFO", "errorstats"]);
    assert!(!stats.contains("READONLY"), "{stats}");
}
