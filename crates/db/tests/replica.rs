//! SYNC and PSYNC: a stock redis-server follows a data member as its replica — the RDB of
//! every type, then the writes, in Redis's propagated forms.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Cluster, err, ok, wait_port};

struct Replica(Child);

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_replica(
    dir: &std::path::Path,
    at: std::net::SocketAddr,
    of: std::net::SocketAddr,
) -> Replica {
    let child = Command::new("redis-server")
        .args([
            "--bind",
            &at.ip().to_string(),
            "--port",
            &at.port().to_string(),
        ])
        .args(["--replicaof", &of.ip().to_string(), &of.port().to_string()])
        .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
        .args(["--dir", &dir.display().to_string()])
        .stdout(Stdio::from(
            std::fs::File::create(dir.join("replica.log")).expect("log"),
        ))
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server (Debian's redis-server package) runs");
    Replica(child)
}

/// Waits until `check` holds on the replica, or fails naming `what`.
fn until(what: &str, con: &mut redis::Connection, check: impl Fn(&mut redis::Connection) -> bool) {
    let start = Instant::now();
    while !check(con) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the replica never showed {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn q<T: redis::FromRedisValue>(con: &mut redis::Connection, args: &[&str]) -> Option<T> {
    let mut c = redis::cmd(args[0]);
    for a in &args[1..] {
        c.arg(*a);
    }
    c.query(con).ok()
}

#[test]
fn a_stock_redis_server_follows_a_member_through_sync_and_its_writes() {
    let mut c = Cluster::new("127.162.1", &[false, false, true]);
    c.start_all();
    let leader = c.wait_data_leader(&[1, 2], Duration::from_secs(20));
    let mut db = c.conn(leader);
    // A follower names the leader as its master, as a Redis replica does.
    let follower = 3 - leader;
    let start = Instant::now();
    while c.info(follower, "master_link_status").as_deref() != Some("up") {
        assert!(start.elapsed() < Duration::from_secs(10), "no leader named");
        std::thread::sleep(Duration::from_millis(20));
    }
    let at = c.member(leader).redis;
    assert_eq!(c.info(follower, "master_host"), Some(at.ip().to_string()));
    assert_eq!(c.info(follower, "master_port"), Some(at.port().to_string()));
    assert_eq!(c.info(leader, "role").as_deref(), Some("master"));

    // Before the replica: one key of every type the RDB carries, one with a TTL.
    let _: () = ok(&mut db, &["SET", "s", "hello"]);
    let _: () = ok(&mut db, &["SET", "ttl", "v", "EX", "1000"]);
    let _: i64 = ok(&mut db, &["RPUSH", "l", "a", "b", "c"]);
    let _: i64 = ok(&mut db, &["SADD", "set", "x", "y"]);
    let _: i64 = ok(&mut db, &["HSET", "h", "f", "1", "g", "2"]);
    let _: i64 = ok(&mut db, &["ZADD", "z", "1.5", "m", "-2", "n"]);
    let _: i64 = ok(&mut db, &["PFADD", "hll", "a", "b", "c"]);
    let _: () = ok(&mut db, &["SELECT", "3"]);
    let _: () = ok(&mut db, &["SET", "in3", "three"]);
    let _: () = ok(&mut db, &["SELECT", "0"]);

    let at: std::net::SocketAddr = "127.162.1.9:6390".parse().unwrap();
    let _replica = start_replica(c.dir.path(), at, c.member(leader).redis);
    wait_port(at, Duration::from_secs(20));
    let mut r = redis::Client::open(format!("redis://{at}/"))
        .unwrap()
        .get_connection()
        .unwrap();
    until("the link up", &mut r, |r| {
        q::<String>(r, &["INFO", "replication"])
            .is_some_and(|i| i.contains("master_link_status:up"))
    });
    assert_eq!(q::<String>(&mut r, &["GET", "s"]).as_deref(), Some("hello"));
    let ttl: i64 = q(&mut r, &["TTL", "ttl"]).unwrap();
    assert!((990..=1000).contains(&ttl), "TTL {ttl}");
    assert_eq!(
        q::<Vec<String>>(&mut r, &["LRANGE", "l", "0", "-1"]).unwrap(),
        ["a", "b", "c"]
    );
    let mut members: Vec<String> = q(&mut r, &["SMEMBERS", "set"]).unwrap();
    members.sort();
    assert_eq!(members, ["x", "y"]);
    assert_eq!(
        q::<Vec<String>>(&mut r, &["HMGET", "h", "f", "g"]).unwrap(),
        ["1", "2"]
    );
    assert_eq!(
        q::<Vec<String>>(&mut r, &["ZRANGE", "z", "0", "-1", "WITHSCORES"]).unwrap(),
        ["n", "-2", "m", "1.5"]
    );
    assert_eq!(q::<i64>(&mut r, &["PFCOUNT", "hll"]), Some(3));
    let _: () = q(&mut r, &["SELECT", "3"]).unwrap();
    assert_eq!(
        q::<String>(&mut r, &["GET", "in3"]).as_deref(),
        Some("three")
    );
    let _: () = q(&mut r, &["SELECT", "0"]).unwrap();

    // Then the writes, in the forms Redis propagates: what SPOP took, the pop a woken
    // BLPOP made, a transaction, a script, an absolute expiry, XADD's own ID.
    let _: i64 = ok(&mut db, &["INCR", "counter"]);
    let popped: String = ok(&mut db, &["SPOP", "set"]);
    let mut blocked = c.conn(leader);
    let waiter = std::thread::spawn(move || -> Vec<String> {
        redis::cmd("BLPOP")
            .arg("q")
            .arg(10)
            .query(&mut blocked)
            .unwrap()
    });
    let start = Instant::now();
    while c.info(leader, "blocked_clients").as_deref() != Some("1") {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "BLPOP never blocked"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let _: i64 = ok(&mut db, &["RPUSH", "q", "job1", "job2"]);
    assert_eq!(waiter.join().unwrap(), ["q", "job1"]);
    let (_, _): (i64, i64) = redis::pipe()
        .atomic()
        .cmd("HINCRBY")
        .arg("h")
        .arg("f")
        .arg(10)
        .cmd("LPUSH")
        .arg("l")
        .arg("z")
        .query(&mut db)
        .unwrap();
    let _: i64 = ok(
        &mut db,
        &[
            "EVAL",
            "return redis.call('APPEND', KEYS[1], ARGV[1])",
            "1",
            "s",
            "!",
        ],
    );
    let _: i64 = ok(&mut db, &["EXPIRE", "counter", "500"]);
    let id: String = ok(&mut db, &["XADD", "stream", "*", "f", "v"]);

    until("the stream entry with the leader's ID", &mut r, |r| {
        q::<i64>(r, &["XLEN", "stream"]) == Some(1)
    });
    let ids: Vec<Vec<(String, Vec<String>)>> = q(&mut r, &["XRANGE", "stream", "-", "+"]).unwrap();
    assert_eq!(ids[0][0].0, id);
    assert_eq!(
        q::<String>(&mut r, &["GET", "counter"]).as_deref(),
        Some("1")
    );
    let ttl: i64 = q(&mut r, &["TTL", "counter"]).unwrap();
    assert!((490..=500).contains(&ttl), "TTL {ttl}");
    assert_eq!(q::<i64>(&mut r, &["SISMEMBER", "set", &popped]), Some(0));
    assert_eq!(q::<i64>(&mut r, &["SCARD", "set"]), Some(1));
    assert_eq!(
        q::<Vec<String>>(&mut r, &["LRANGE", "q", "0", "-1"]).unwrap(),
        ["job2"]
    );
    assert_eq!(
        q::<String>(&mut r, &["HGET", "h", "f"]).as_deref(),
        Some("11")
    );
    assert_eq!(
        q::<Vec<String>>(&mut r, &["LRANGE", "l", "0", "-1"]).unwrap(),
        ["z", "a", "b", "c"]
    );
    assert_eq!(
        q::<String>(&mut r, &["GET", "s"]).as_deref(),
        Some("hello!")
    );

    // An expired key is deleted on the replica too (the leader's sweep goes as DEL): a
    // replica only hides expired keys, DBSIZE still counts them until the DEL.
    let size: i64 = q(&mut r, &["DBSIZE"]).unwrap();
    let _: () = ok(&mut db, &["SET", "short", "v", "PX", "300"]);
    until("the short-lived key", &mut r, |r| {
        q::<i64>(r, &["DBSIZE"]) == Some(size + 1)
    });
    until("the short-lived key deleted", &mut r, |r| {
        q::<i64>(r, &["DBSIZE"]) == Some(size)
    });

    // A stream has no RDB encoding here: a new SYNC is refused with the reason, and the
    // connection still answers.
    let mut other = c.conn(leader);
    let e = err(&mut other, &["SYNC"]);
    assert!(e.contains("stream") && e.contains("'stream'"), "{e}");
    let _: String = ok(&mut other, &["PING"]);
}
