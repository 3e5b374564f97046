//! Linearizability of histories recorded from concurrent clients across a leader kill and
//! a SIGSTOP partition; and the checker catching a deliberately broken build.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::lin::{Kind, Op, check};
use common::{Cluster, trio, trio_with};

const A: u64 = 1;
const B: u64 = 2;
const WITNESS: u64 = 3;

fn w(call: u64, ret: u64, v: u64) -> Op {
    Op {
        call,
        ret: Some(ret),
        kind: Kind::Write(v),
    }
}
fn r(call: u64, ret: u64, v: Option<u64>) -> Op {
    Op {
        call,
        ret: Some(ret),
        kind: Kind::Read(v),
    }
}

#[test]
fn checker_accepts_and_rejects() {
    assert!(check(&[w(0, 10, 1), r(11, 20, Some(1))]));
    assert!(
        check(&[w(0, 10, 1), r(5, 20, None)]),
        "a concurrent read may see the old value"
    );
    assert!(
        !check(&[w(0, 10, 1), r(11, 20, None)]),
        "stale read after the write returned"
    );
    assert!(!check(&[w(0, 10, 1), w(11, 20, 2), r(21, 30, Some(1))]));
    assert!(check(&[
        Op {
            call: 0,
            ret: None,
            kind: Kind::Write(1)
        },
        r(5, 6, Some(1))
    ]));
    assert!(check(&[
        Op {
            call: 0,
            ret: None,
            kind: Kind::Write(1)
        },
        r(5, 6, None)
    ]));
    assert!(!check(&[
        r(0, 5, Some(1)),
        Op {
            call: 6,
            ret: None,
            kind: Kind::Write(1)
        }
    ]));
    assert!(!check(&[
        w(0, 100, 1),
        w(0, 100, 2),
        r(101, 102, Some(1)),
        r(103, 104, Some(2)),
        r(105, 106, Some(1))
    ]));
}

fn op(call: u64, ret: u64, kind: Kind) -> Op {
    Op {
        call,
        ret: Some(ret),
        kind,
    }
}

#[test]
fn checker_judges_queues_and_sorted_sets() {
    use Kind::*;
    // FIFO: after two sequential pushes the first pop sees the first value.
    assert!(check(&[
        op(0, 1, Push(1)),
        op(2, 3, Push(2)),
        op(4, 5, Pop(Some(Some(1))))
    ]));
    assert!(!check(&[
        op(0, 1, Push(1)),
        op(2, 3, Push(2)),
        op(4, 5, Pop(Some(Some(2))))
    ]));
    // Concurrent pushes may land in either order.
    assert!(check(&[
        op(0, 3, Push(1)),
        op(0, 3, Push(2)),
        op(4, 5, Pop(Some(Some(2))))
    ]));
    // An element cannot be popped twice, nor vanish in a rotation.
    assert!(!check(&[
        op(0, 1, Push(1)),
        op(2, 3, Pop(Some(Some(1)))),
        op(4, 5, Pop(Some(Some(1))))
    ]));
    assert!(check(&[
        op(0, 1, Push(1)),
        op(2, 3, Rotate(Some(Some(1)))),
        op(4, 5, Pop(Some(Some(1))))
    ]));
    assert!(!check(&[
        op(0, 1, Push(1)),
        op(2, 3, Rotate(Some(Some(1)))),
        op(4, 5, Pop(Some(None)))
    ]));
    // A pop whose outcome is unknown may or may not have taken the head.
    let unknown = Op {
        call: 2,
        ret: None,
        kind: Pop(None),
    };
    assert!(check(&[
        op(0, 1, Push(1)),
        unknown.clone(),
        op(4, 5, Pop(Some(None)))
    ]));
    assert!(check(&[
        op(0, 1, Push(1)),
        unknown,
        op(4, 5, Pop(Some(Some(1))))
    ]));
    // Sorted sets pop the smallest member.
    assert!(check(&[
        op(0, 1, ZAdd(5)),
        op(2, 3, ZAdd(3)),
        op(4, 5, ZPopMin(Some(Some(3))))
    ]));
    assert!(!check(&[
        op(0, 1, ZAdd(5)),
        op(2, 3, ZAdd(3)),
        op(4, 5, ZPopMin(Some(Some(5))))
    ]));
}

type History = Arc<Mutex<BTreeMap<u64, Vec<Op>>>>;

/// What one client operation came to.
enum Outcome {
    /// Acknowledged: record it with its return time.
    Done(Kind),
    /// Failed or timed out: it may take effect later, or never.
    Unknown(Kind),
    /// Failed with nothing to record (a read).
    Lost,
}

/// One client operation: (history key, outcome), given a random choice and a unique value.
type Client = fn(&mut redis::Connection, u64, u64) -> (u64, Outcome);

/// Runs 6 clients over both data members for 8 s while the leader is killed with -9 and
/// restarted, the next leader is SIGSTOPped for 1 s, and then its follower and the witness
/// together for 1 s; returns every key's history.
fn record(c: &mut Cluster, leader: u64, client: Client) -> BTreeMap<u64, Vec<Op>> {
    let origin = Instant::now();
    let ns = move || origin.elapsed().as_nanos() as u64;
    let hist: History = Arc::new(Mutex::new(BTreeMap::new()));
    let urls = Arc::new(vec![c.url(A), c.url(B)]);
    let run_for = Duration::from_secs(8);
    let mut threads = Vec::new();
    for t in 0..6u64 {
        let (hist, urls) = (hist.clone(), urls.clone());
        threads.push(std::thread::spawn(move || {
            let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ (t * 7919);
            let mut next = || {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng
            };
            let mut target = (t % 2) as usize;
            let mut con: Option<redis::Connection> = None;
            for i in 0..2000u64 {
                if origin.elapsed() > run_for {
                    break;
                }
                if con.is_none() {
                    let client = redis::Client::open(urls[target].as_str()).unwrap();
                    con = client
                        .get_connection_with_timeout(Duration::from_millis(300))
                        .ok();
                    match &con {
                        Some(cn) => {
                            let _ = cn.set_read_timeout(Some(Duration::from_secs(3)));
                        }
                        None => {
                            target = 1 - target;
                            std::thread::sleep(Duration::from_millis(20));
                            continue;
                        }
                    }
                }
                let Some(cn) = con.as_mut() else { continue };
                let call = ns();
                let (key, outcome) = client(cn, next(), t * 1_000_000 + i + 1);
                let op = match outcome {
                    Outcome::Done(kind) => Op {
                        call,
                        ret: Some(ns()),
                        kind,
                    },
                    Outcome::Unknown(kind) => Op {
                        call,
                        ret: None,
                        kind,
                    },
                    Outcome::Lost => {
                        con = None;
                        target = 1 - target;
                        continue;
                    }
                };
                if op.ret.is_none() {
                    con = None;
                    target = 1 - target;
                }
                hist.lock().unwrap().entry(key).or_default().push(op);
            }
        }));
    }
    // Faults while the clients run: kill -9 the leader, bring it back, stop the new leader.
    std::thread::sleep(Duration::from_millis(1500));
    c.kill(leader);
    std::thread::sleep(Duration::from_millis(1500));
    c.start(leader);
    let now_leader = c.wait_data_leader(&[A, B], Duration::from_secs(10));
    c.pause(now_leader);
    std::thread::sleep(Duration::from_millis(1000));
    c.resume(now_leader);
    // Then stop the follower and the witness together: the leader is left without a
    // majority (writes must not be acknowledged, reads only while its lease lasts).
    let now_leader = c.wait_data_leader(&[A, B], Duration::from_secs(10));
    let follower = if now_leader == A { B } else { A };
    std::thread::sleep(Duration::from_millis(500));
    c.pause(follower);
    c.pause(WITNESS);
    std::thread::sleep(Duration::from_millis(1000));
    c.resume(follower);
    c.resume(WITNESS);
    for t in threads {
        t.join().unwrap();
    }
    std::mem::take(&mut *hist.lock().unwrap())
}

/// Registers: SET of unique values and GET on three keys.
fn register_op(cn: &mut redis::Connection, choice: u64, v: u64) -> (u64, Outcome) {
    let key = choice % 3;
    let k = format!("reg{key}");
    if (choice / 3).is_multiple_of(2) {
        let res: redis::RedisResult<String> = redis::cmd("SET").arg(&k).arg(v).query(cn);
        match res {
            Ok(_) => (key, Outcome::Done(Kind::Write(v))),
            Err(_) => (key, Outcome::Unknown(Kind::Write(v))),
        }
    } else {
        let res: redis::RedisResult<Option<u64>> = redis::cmd("GET").arg(&k).query(cn);
        match res {
            Ok(v) => (key, Outcome::Done(Kind::Read(v))),
            Err(_) => (key, Outcome::Lost),
        }
    }
}

#[test]
fn histories_across_leader_kill_and_partition_are_linearizable() {
    let mut c = trio("127.60.11");
    let leader = c.wait_leader(&[A, B], Duration::from_secs(20));
    let hist = record(&mut c, leader, register_op);
    let total: usize = hist.values().map(Vec::len).sum();
    let acked_writes = hist
        .values()
        .flatten()
        .filter(|o| matches!(o.kind, Kind::Write(_)) && o.ret.is_some())
        .count();
    let reads = hist
        .values()
        .flatten()
        .filter(|o| matches!(o.kind, Kind::Read(_)))
        .count();
    eprintln!("{total} operations: {acked_writes} acknowledged writes, {reads} reads");
    assert!(
        acked_writes > 50 && reads > 50,
        "too little history to judge"
    );
    for (key, ops) in hist.iter() {
        assert!(check(ops), "history of reg{key} is not linearizable");
    }
}

/// The Lua script the queue clients run: take the head and put it back at the tail, in one
/// step (a non-atomic script could lose or duplicate it under concurrency).
const ROTATE: &str = "local v = redis.call('LPOP', KEYS[1]) \
    if v then redis.call('RPUSH', KEYS[1], v) end return v";

/// One client operation on a queue (`list0..5`, histories 0–5) or a sorted set (`zset6..9`).
fn queue_op(cn: &mut redis::Connection, choice: u64, v: u64) -> (u64, Outcome) {
    let (key, res) = queue_result(cn, choice, v);
    match res {
        Ok(kind) => (key, Outcome::Done(kind)),
        Err(kind) => (key, Outcome::Unknown(kind)),
    }
}

/// The operation itself: `Err` carries what to record when the outcome is unknown.
fn queue_result(cn: &mut redis::Connection, choice: u64, v: u64) -> (u64, Result<Kind, Kind>) {
    fn popped(r: redis::RedisResult<Option<u64>>) -> Result<Option<Option<u64>>, ()> {
        r.map(Some).map_err(|_| ())
    }
    // Six lists and four sorted sets: each key's history stays small enough to search fast.
    let list = choice / 8 % 6;
    let zset = 6 + choice / 8 % 4;
    let (lk, zk) = (format!("list{list}"), format!("zset{zset}"));
    match choice % 5 {
        0 => {
            let r: redis::RedisResult<i64> = redis::cmd("RPUSH").arg(&lk).arg(v).query(cn);
            (list, r.map(|_| Kind::Push(v)).map_err(|_| Kind::Push(v)))
        }
        1 => {
            let r = popped(redis::cmd("LPOP").arg(&lk).query(cn));
            (list, r.map(Kind::Pop).map_err(|_| Kind::Pop(None)))
        }
        2 => {
            let r = popped(redis::cmd("EVAL").arg(ROTATE).arg(1).arg(&lk).query(cn));
            (list, r.map(Kind::Rotate).map_err(|_| Kind::Rotate(None)))
        }
        3 => {
            let r: redis::RedisResult<i64> = redis::cmd("ZADD").arg(&zk).arg(v).arg(v).query(cn);
            (zset, r.map(|_| Kind::ZAdd(v)).map_err(|_| Kind::ZAdd(v)))
        }
        _ => {
            let r: redis::RedisResult<Vec<u64>> = redis::cmd("ZPOPMIN").arg(&zk).query(cn);
            let r = r.map(|got| got.first().copied());
            (
                zset,
                r.map(|m| Kind::ZPopMin(Some(m)))
                    .map_err(|_| Kind::ZPopMin(None)),
            )
        }
    }
}

#[test]
fn queue_sorted_set_and_lua_histories_across_leader_kill_and_pause_are_linearizable() {
    let mut c = trio("127.150.11");
    let leader = c.wait_leader(&[A, B], Duration::from_secs(20));
    let hist = record(&mut c, leader, queue_op);
    let done = |f: fn(&Kind) -> bool| {
        hist.values()
            .flatten()
            .filter(|o| o.ret.is_some() && f(&o.kind))
            .count()
    };
    let pops = done(|k| matches!(k, Kind::Pop(Some(Some(_)))));
    let rotations = done(|k| matches!(k, Kind::Rotate(Some(Some(_)))));
    let zpops = done(|k| matches!(k, Kind::ZPopMin(Some(Some(_)))));
    eprintln!("{pops} pops, {rotations} Lua rotations, {zpops} ZPOPMINs that took something");
    assert!(
        pops > 20 && rotations > 20 && zpops > 20,
        "too little history to judge"
    );
    for (key, ops) in hist.iter() {
        let name = if *key < 6 { "list" } else { "zset" };
        if !check(ops) {
            let dump: Vec<String> = ops.iter().map(|o| format!("{o:?}")).collect();
            let _ = std::fs::write(format!("/tmp/lin-{name}{key}.txt"), dump.join("\n"));
            panic!("history of {name}{key} is not linearizable");
        }
    }
}

/// The same checker on a deliberately broken build (every read served locally, without a
/// read index) finds a stale read: a write acknowledged by the leader, then a read on the
/// follower that does not see it.
#[test]
fn checker_catches_a_broken_build_serving_local_reads() {
    let c = trio_with("127.60.12", &[("CITADEL_DB_UNSAFE_LOCAL_READS", "1")]);
    let leader = c.wait_leader(&[A, B], Duration::from_secs(20));
    let follower = if leader == A { B } else { A };
    let mut lc = c.conn(leader);
    let mut fc = c.conn(follower);
    let origin = Instant::now();
    let ns = || origin.elapsed().as_nanos() as u64;
    let mut ops = Vec::new();
    let mut caught = false;
    for i in 1..=300u64 {
        let call = ns();
        let _: String = redis::cmd("SET").arg("reg").arg(i).query(&mut lc).unwrap();
        ops.push(Op {
            call,
            ret: Some(ns()),
            kind: Kind::Write(i),
        });
        let call = ns();
        let v: Option<u64> = redis::cmd("GET").arg("reg").query(&mut fc).unwrap();
        ops.push(Op {
            call,
            ret: Some(ns()),
            kind: Kind::Read(v),
        });
        if !check(&ops) {
            eprintln!("stale read caught after {i} rounds");
            caught = true;
            break;
        }
    }
    assert!(
        caught,
        "the checker never caught the broken build's stale reads"
    );
}

/// A leader paused for longer than its read lease, deposed meanwhile (the others elect and
/// acknowledge a write), and resumed while the new majority is itself frozen — so nothing
/// tells it of its deposition — reads through it at once. Returns the history: the two
/// acknowledged writes, and the read if it answered.
fn read_through_a_deposed_leader(net: &str, env: &[(&str, &str)]) -> (Vec<Op>, Option<u64>) {
    let c = trio_with(net, env);
    let old = c.wait_leader(&[A, B], Duration::from_secs(20));
    let other = if old == A { B } else { A };
    let origin = Instant::now();
    let ns = || origin.elapsed().as_nanos() as u64;
    let mut ops = Vec::new();
    let mut oc = c.conn(old);
    let call = ns();
    let _: String = redis::cmd("SET").arg("reg").arg(1).query(&mut oc).unwrap();
    ops.push(w(call, ns(), 1));
    // Reads through the old leader: the first takes a round and grants the lease, the rest
    // ride on it (or its renewals). The pause below outlasts it.
    for _ in 0..200 {
        let v: Option<u64> = redis::cmd("GET").arg("reg").query(&mut oc).unwrap();
        assert_eq!(v, Some(1));
    }
    let by_lease: u64 = c
        .info(old, "reads_by_lease")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(by_lease > 0, "no read was served under the lease");

    c.pause(old);
    assert_eq!(c.wait_data_leader(&[other], Duration::from_secs(20)), other);
    let call = ns();
    assert!(
        c.set_retry(&[other], "reg", "2", Duration::from_secs(20)),
        "the new leader never acknowledged the write"
    );
    ops.push(w(call, ns(), 2));
    c.pause(other);
    c.pause(WITNESS);
    c.resume(old);
    let call = ns();
    let read: redis::RedisResult<Option<u64>> = redis::cmd("GET").arg("reg").query(&mut oc);
    let ret = ns();
    c.resume(other);
    c.resume(WITNESS);
    let seen = match read {
        Ok(v) => {
            ops.push(r(call, ret, v));
            v
        }
        Err(e) => {
            eprintln!("the deposed leader refused the read: {e}");
            None
        }
    };
    (ops, seen)
}

/// Leases (crates/db/NOTES.md, "Read leases"): the lease ends before any voter would vote for
/// another leader, so a deposed leader never serves the value from before the new write.
#[test]
fn a_leader_paused_past_its_lease_never_serves_a_stale_read() {
    let (ops, seen) = read_through_a_deposed_leader("127.60.13", &[]);
    assert_ne!(
        seen,
        Some(1),
        "the deposed leader served the overwritten value"
    );
    assert!(check(&ops), "history not linearizable: {ops:?}");
}

/// The same with the lease broken on purpose (a minute, far past the voters' vote lease):
/// the deposed leader serves the overwritten value and the checker catches it.
#[test]
fn checker_catches_a_broken_build_with_a_too_long_lease() {
    let (ops, seen) =
        read_through_a_deposed_leader("127.60.14", &[("CITADEL_DB_UNSAFE_READ_LEASE_MS", "60000")]);
    assert_eq!(
        seen,
        Some(1),
        "the broken build did not serve the stale value"
    );
    assert!(!check(&ops), "the checker accepted a stale read: {ops:?}");
}
