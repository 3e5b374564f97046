//! One data member: the data model and the Redis protocol, through stock clients.

mod common;

use std::time::Duration;

use common::{Cluster, raw, wait_port};

fn single(net: &str) -> Cluster {
    let mut c = Cluster::new(net, &[false]);
    c.start_all();
    wait_port(c.member(1).redis, Duration::from_secs(20));
    c.wait_leader(&[1], Duration::from_secs(20));
    c
}

#[test]
fn redis_crate_commands_pipelines_and_transactions() {
    let c = single("127.60.1");
    let mut con = c.conn(1);
    let r: String = redis::cmd("SET").arg("k").arg("v").query(&mut con).unwrap();
    assert_eq!(r, "OK");
    let v: String = redis::cmd("GET").arg("k").query(&mut con).unwrap();
    assert_eq!(v, "v");
    let n: i64 = redis::cmd("INCR").arg("n").query(&mut con).unwrap();
    assert_eq!(n, 1);
    let n: i64 = redis::cmd("INCRBY")
        .arg("n")
        .arg(41)
        .query(&mut con)
        .unwrap();
    assert_eq!(n, 42);
    let n: i64 = redis::cmd("DECR").arg("n").query(&mut con).unwrap();
    assert_eq!(n, 41);
    let e: redis::RedisResult<i64> = redis::cmd("INCR").arg("k").query(&mut con);
    assert!(e.is_err());

    // Hashes.
    let added: i64 = redis::cmd("HSET")
        .arg("h")
        .arg("a")
        .arg("1")
        .arg("b")
        .arg("2")
        .query(&mut con)
        .unwrap();
    assert_eq!(added, 2);
    let all: std::collections::HashMap<String, String> =
        redis::cmd("HGETALL").arg("h").query(&mut con).unwrap();
    assert_eq!(all.get("b").map(String::as_str), Some("2"));
    let t: String = redis::cmd("TYPE").arg("h").query(&mut con).unwrap();
    assert_eq!(t, "hash");

    // MSET/MGET/EXISTS/DEL.
    let _: () = redis::cmd("MSET")
        .arg("x")
        .arg("1")
        .arg("y")
        .arg("2")
        .query(&mut con)
        .unwrap();
    let got: Vec<Option<String>> = redis::cmd("MGET")
        .arg("x")
        .arg("y")
        .arg("z")
        .query(&mut con)
        .unwrap();
    assert_eq!(got, vec![Some("1".into()), Some("2".into()), None]);
    let ex: i64 = redis::cmd("EXISTS")
        .arg("x")
        .arg("y")
        .arg("z")
        .query(&mut con)
        .unwrap();
    assert_eq!(ex, 2);
    let d: i64 = redis::cmd("DEL").arg("x").arg("z").query(&mut con).unwrap();
    assert_eq!(d, 1);

    // TTLs.
    let _: () = redis::cmd("SET")
        .arg("t")
        .arg("v")
        .arg("PX")
        .arg(300)
        .query(&mut con)
        .unwrap();
    let ttl: i64 = redis::cmd("PTTL").arg("t").query(&mut con).unwrap();
    assert!(ttl > 0 && ttl <= 300, "pttl {ttl}");
    let ok: i64 = redis::cmd("PERSIST").arg("t").query(&mut con).unwrap();
    assert_eq!(ok, 1);
    let ttl: i64 = redis::cmd("TTL").arg("t").query(&mut con).unwrap();
    assert_eq!(ttl, -1);
    let ok: i64 = redis::cmd("PEXPIRE")
        .arg("t")
        .arg(50)
        .query(&mut con)
        .unwrap();
    assert_eq!(ok, 1);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let v: Option<String> = redis::cmd("GET").arg("t").query(&mut con).unwrap();
        if v.is_none() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "key did not expire");
        std::thread::sleep(Duration::from_millis(20));
    }

    // A pipeline, then an atomic pipeline (MULTI/EXEC).
    let (a, b): (String, i64) = redis::pipe()
        .cmd("SET")
        .arg("p")
        .arg("1")
        .cmd("INCR")
        .arg("p")
        .query(&mut con)
        .unwrap();
    assert_eq!((a.as_str(), b), ("OK", 2));
    let (x, y): (i64, i64) = redis::pipe()
        .atomic()
        .cmd("INCR")
        .arg("p")
        .cmd("INCR")
        .arg("p")
        .query(&mut con)
        .unwrap();
    assert_eq!((x, y), (3, 4));

    // WATCH: a change by another client aborts the transaction.
    let mut other = c.conn(1);
    let _: () = redis::cmd("WATCH").arg("p").query(&mut con).unwrap();
    let _: () = redis::cmd("SET")
        .arg("p")
        .arg("changed")
        .query(&mut other)
        .unwrap();
    let r: Option<(String,)> = redis::pipe()
        .atomic()
        .cmd("SET")
        .arg("p")
        .arg("mine")
        .query(&mut con)
        .unwrap();
    assert!(r.is_none(), "EXEC must abort after a watched key changed");
    let v: String = redis::cmd("GET").arg("p").query(&mut con).unwrap();
    assert_eq!(v, "changed");
    // And without interference it commits.
    let _: () = redis::cmd("WATCH").arg("p").query(&mut con).unwrap();
    let r: Option<(String,)> = redis::pipe()
        .atomic()
        .cmd("SET")
        .arg("p")
        .arg("mine")
        .query(&mut con)
        .unwrap();
    assert_eq!(r, Some(("OK".to_string(),)));
    // Server commands inside MULTI run at EXEC, their replies in their places.
    let r: (String, String, String, i64, String) = redis::pipe()
        .atomic()
        .cmd("SET")
        .arg("t")
        .arg("1")
        .cmd("PING")
        .cmd("DEBUG")
        .arg("SLEEP")
        .arg("0")
        .cmd("INCR")
        .arg("t")
        .cmd("ECHO")
        .arg("last")
        .query(&mut con)
        .unwrap();
    assert_eq!(
        r,
        ("OK".into(), "PONG".into(), "OK".into(), 2, "last".into())
    );

    // SELECT isolates databases; DBSIZE counts.
    let _: () = redis::cmd("SELECT").arg(3).query(&mut con).unwrap();
    let v: Option<String> = redis::cmd("GET").arg("k").query(&mut con).unwrap();
    assert_eq!(v, None);
    let _: () = redis::cmd("SET")
        .arg("only3")
        .arg("1")
        .query(&mut con)
        .unwrap();
    let n: i64 = redis::cmd("DBSIZE").query(&mut con).unwrap();
    assert_eq!(n, 1);

    // SCAN with MATCH visits every key.
    let _: () = redis::cmd("SELECT").arg(5).query(&mut con).unwrap();
    for i in 0..50 {
        let _: () = redis::cmd("SET")
            .arg(format!("s:{i}"))
            .arg(i)
            .query(&mut con)
            .unwrap();
    }
    let _: () = redis::cmd("SET")
        .arg("other")
        .arg(1)
        .query(&mut con)
        .unwrap();
    let mut seen = std::collections::BTreeSet::new();
    let mut cursor: u64 = 0;
    for _ in 0..1000 {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg("s:*")
            .arg("COUNT")
            .arg(7)
            .query(&mut con)
            .unwrap();
        seen.extend(keys);
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    assert_eq!(seen.len(), 50);

    // Unknown commands are named in the error.
    let e: redis::RedisResult<String> = redis::cmd("FROBNICATE").arg("x").query(&mut con);
    let msg = format!("{:?}", e.unwrap_err());
    assert!(msg.contains("FROBNICATE"), "{msg}");
    // With no password configured at all, a connection may flush (as Redis's default user
    // with nopass); with passwords, only the admin user may (resp3_hello_and_auth).
    let e: redis::RedisResult<String> = redis::cmd("FLUSHDB").query(&mut con);
    assert_eq!(e.unwrap(), "OK");
}

#[test]
fn resp3_hello_and_auth() {
    let mut c = Cluster::new("127.60.7", &[false]);
    c.extra = "password = \"sesame\"\nusers = [{ name = \"admin\", password = \"root\", rules = \"~* &* +@all\" }]".into();
    c.start_all();
    let addr = c.member(1).redis;
    wait_port(addr, Duration::from_secs(20));
    let out = raw(addr, b"GET k\r\n");
    assert!(
        String::from_utf8_lossy(&out).starts_with("-NOAUTH"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    let out = raw(
        addr,
        b"HELLO 3 AUTH default sesame\r\nSET k v\r\nGET nothing\r\nHGETALL k2\r\nFLUSHALL\r\nQUIT\r\n",
    );
    let s = String::from_utf8_lossy(&out);
    assert!(s.starts_with('%'), "RESP3 map expected: {s}");
    assert!(s.contains("+OK\r\n_\r\n%0\r\n-NOPERM"), "{s}");
    let out = raw(
        addr,
        b"AUTH wrong\r\nAUTH admin root\r\nFLUSHDB\r\nQUIT\r\n",
    );
    let s = String::from_utf8_lossy(&out);
    assert!(s.starts_with("-WRONGPASS"), "{s}");
    assert!(s.contains("+OK\r\n+OK\r\n+OK"), "{s}");
    // The redis crate authenticates from the URL.
    let client = redis::Client::open(format!("redis://:sesame@{addr}/")).unwrap();
    let mut con = client
        .get_connection_with_timeout(Duration::from_secs(2))
        .unwrap();
    let v: Option<String> = redis::cmd("GET").arg("k").query(&mut con).unwrap();
    assert_eq!(v, None, "flushed");
}

#[test]
fn malformed_input_is_refused_without_harm() {
    let c = single("127.60.8");
    let addr = c.member(1).redis;
    for bad in [
        &b"*1\r\n*1\r\n$4\r\nPING\r\n"[..],
        b"*1\r\n$999999999999\r\n",
        b"*99999999999\r\n",
        b"*2\r\n$3\r\nGET\r\n$1\r\nabc\r\n",
        b"$5\r\nhello\r\n",
        b"*1\r\n$-7\r\n",
        b"\"unbalanced\r\n",
    ] {
        let out = raw(addr, bad);
        let s = String::from_utf8_lossy(&out);
        assert!(
            s.starts_with("-ERR") || s.is_empty() || s.starts_with('-'),
            "{s}"
        );
    }
    // A huge declared array with few elements, then a half-close: nothing is allocated for it.
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    use std::io::Write;
    s.write_all(b"*1000000\r\n$3\r\nGET\r\n").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    drop(s);
    // The server is still fine.
    let mut con = c.conn(1);
    let p: String = redis::cmd("PING").query(&mut con).unwrap();
    assert_eq!(p, "PONG");
}

#[test]
fn redis_cli_works() {
    if std::process::Command::new("redis-cli")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: redis-cli is not installed (apt-get install redis-tools)");
        return;
    }
    let c = single("127.60.9");
    let addr = c.member(1).redis;
    let run = |args: &[&str]| {
        let out = std::process::Command::new("redis-cli")
            .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(run(&["PING"]), "PONG");
    assert_eq!(run(&["SET", "a", "hello world"]), "OK");
    assert_eq!(run(&["GET", "a"]), "hello world");
    assert_eq!(run(&["HSET", "h", "f", "v"]), "1");
    assert_eq!(run(&["-3", "HGET", "h", "f"]), "v");
    assert!(run(&["INFO"]).contains("role:master"));
    assert!(run(&["NOSUCH"]).contains("unknown command 'NOSUCH'"));
}

#[test]
fn redis_py_pipelines_transactions_scripts_and_pubsub() {
    // Debian's python3-redis lives under /usr/bin/python3.
    let py = "/usr/bin/python3";
    let has = std::process::Command::new(py)
        .args(["-c", "import redis"])
        .output()
        .map(|o| o.status.success());
    if has.ok() != Some(true) {
        eprintln!("SKIPPED: redis-py is not installed (apt-get install python3-redis)");
        return;
    }
    let c = single("127.60.13");
    let addr = c.member(1).redis;
    let script = format!(
        r#"
import redis
r = redis.Redis(host="{ip}", port={port}, decode_responses=True)
assert r.ping()
assert r.set("a", "1")
assert r.incr("a") == 2
r.hset("h", mapping={{"x": "1", "y": "2"}})
assert r.hgetall("h") == {{"x": "1", "y": "2"}}
p = r.pipeline(transaction=False)
p.set("p", "v"); p.get("p"); p.delete("p")
assert p.execute() == [True, "v", 1]
t = r.pipeline(transaction=True)
t.incr("c"); t.incr("c")
assert t.execute() == [1, 2]
with r.pipeline() as w:
    w.watch("c")
    assert int(w.get("c")) == 2
    w.multi()
    w.set("c", "10")
    w.execute()
assert r.get("c") == "10"
keys = set()
for k in r.scan_iter(match="*"):
    keys.add(k)
assert {{"a", "h", "c"}} <= keys, keys
r3 = redis.Redis(host="{ip}", port={port}, protocol=3, decode_responses=True) if int(redis.__version__.split(".")[0]) >= 5 else r
assert r3.get("a") == "2"

# Lua through register_script: EVALSHA, and after SCRIPT FLUSH the NOSCRIPT fallback to EVAL.
incr_by = r.register_script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
assert incr_by(keys=["n"], args=[5]) == 5
assert incr_by(keys=["n"], args=[2]) == 7
assert r.script_exists(incr_by.sha) == [True]
r.script_flush()
assert r.script_exists(incr_by.sha) == [False]
assert incr_by(keys=["n"], args=[1]) == 8

# Pub/sub: a channel and a pattern subscription on one connection, then PUBLISH.
import time
ps = r.pubsub()
ps.subscribe("news")
ps.psubscribe("ne*")
deadline = time.time() + 10
confirmed = 0
while confirmed < 2 and time.time() < deadline:
    m = ps.get_message(timeout=1.0)
    if m and m["type"] in ("subscribe", "psubscribe"):
        confirmed += 1
assert confirmed == 2
assert r.publish("news", "hello") == 2
assert r.pubsub_numsub("news") == [("news", 1)]
got = []
while len(got) < 2 and time.time() < deadline:
    m = ps.get_message(timeout=1.0)
    if m and m["type"] in ("message", "pmessage"):
        got.append((m["type"], m["channel"], m["data"]))
assert sorted(got) == [("message", "news", "hello"), ("pmessage", "news", "hello")], got
ps.close()
print("ok")
"#,
        ip = addr.ip(),
        port = addr.port()
    );
    let out = std::process::Command::new(py)
        .args(["-c", &script])
        .output()
        .expect("python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("ok"),
        "redis-py failed:\n{stdout}\n{stderr}"
    );
}

#[test]
fn expired_keys_are_swept_from_memory() {
    let c = single("127.60.15");
    let mut con = c.conn(1);
    let mut p = redis::pipe();
    for i in 0..200 {
        p.cmd("SET")
            .arg(format!("e{i}"))
            .arg(i)
            .arg("PX")
            .arg(100)
            .ignore();
    }
    p.cmd("SET").arg("keep").arg("1").ignore();
    let _: () = p.query(&mut con).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if c.info(1, "keys_in_memory").as_deref() == Some("1") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "expired keys were never swept"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let v: Option<String> = redis::cmd("GET").arg("keep").query(&mut con).unwrap();
    assert_eq!(v.as_deref(), Some("1"));
    // Clients cannot send the internal sweep command.
    let r: redis::RedisResult<i64> = redis::cmd("\0citadel-expire-sweep").query(&mut con);
    assert!(r.is_err());
}
