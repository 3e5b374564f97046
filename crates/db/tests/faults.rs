//! Faults with real processes: kill -9 of the leader under load, SIGSTOP partitions.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Cluster, trio, wait_port};

const A: u64 = 1;
const B: u64 = 2;
const W: u64 = 3;

fn values(c: &Cluster, id: u64, keys: &[String], readonly: bool) -> Vec<Option<String>> {
    let mut con = c.conn(id);
    if readonly {
        let _: () = redis::cmd("READONLY").query(&mut con).unwrap();
    }
    let mut out = Vec::new();
    for chunk in keys.chunks(500) {
        let v: Vec<Option<String>> = redis::cmd("MGET").arg(chunk).query(&mut con).unwrap();
        out.extend(v);
    }
    out
}

#[test]
fn kill9_leader_under_load_loses_no_acknowledged_write() {
    let mut c = trio("127.60.4");
    let leader = c.wait_leader(&[A, B], Duration::from_secs(20));
    let other = if leader == A { B } else { A };
    let urls = Arc::new(vec![c.url(A), c.url(B)]);
    let stop = Arc::new(AtomicBool::new(false));
    // (key, when the write was sent, when it was acknowledged)
    type Acks = Arc<Mutex<Vec<(String, Instant, Instant)>>>;
    let acked: Acks = Arc::new(Mutex::new(Vec::new()));
    let mut threads = Vec::new();
    for t in 0..4 {
        let (urls, stop, acked) = (urls.clone(), stop.clone(), acked.clone());
        threads.push(std::thread::spawn(move || {
            let started = Instant::now();
            let mut con: Option<redis::Connection> = None;
            let mut target = t % 2;
            for i in 0..20_000 {
                if stop.load(Ordering::Relaxed) || started.elapsed() > Duration::from_secs(40) {
                    break;
                }
                if con.is_none() {
                    let client = redis::Client::open(urls[target].as_str()).unwrap();
                    con = client
                        .get_connection_with_timeout(Duration::from_millis(300))
                        .ok();
                    if let Some(cn) = &con {
                        let _ = cn.set_read_timeout(Some(Duration::from_secs(5)));
                    } else {
                        target = 1 - target;
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                }
                let key = format!("t{t}-{i}");
                let sent = Instant::now();
                let r: redis::RedisResult<String> = redis::cmd("SET")
                    .arg(&key)
                    .arg(&key)
                    .query(con.as_mut().unwrap());
                match r {
                    Ok(_) => acked.lock().unwrap().push((key, sent, Instant::now())),
                    Err(_) => {
                        con = None;
                        target = 1 - target;
                    }
                }
            }
        }));
    }
    // Let the load run, then kill the leader.
    let deadline = Instant::now() + Duration::from_secs(20);
    while acked.lock().unwrap().len() < 300 {
        assert!(Instant::now() < deadline, "load never got going");
        std::thread::sleep(Duration::from_millis(20));
    }
    let killed_at = Instant::now();
    c.kill(leader);
    // Wait for writes to resume.
    let deadline = Instant::now() + Duration::from_secs(20);
    let resumed = loop {
        if let Some(t) = acked
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, sent, _)| *sent > killed_at)
            .map(|(_, _, acked_at)| *acked_at)
            .min()
        {
            break t - killed_at;
        }
        assert!(
            Instant::now() < deadline,
            "writes never resumed after killing the leader"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    eprintln!("writes resumed {resumed:?} after kill -9 of leader {leader}");
    // A bit more load on the survivor, then bring the old leader back.
    let n = acked.lock().unwrap().len();
    let deadline = Instant::now() + Duration::from_secs(20);
    while acked.lock().unwrap().len() < n + 200 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    c.start(leader);
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let keys: Vec<String> = acked
        .lock()
        .unwrap()
        .iter()
        .map(|(k, _, _)| k.clone())
        .collect();
    eprintln!("{} acknowledged writes", keys.len());
    wait_port(c.member(leader).redis, Duration::from_secs(20));
    for id in [other, leader] {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let vals = values(&c, id, &keys, false);
            let missing = keys
                .iter()
                .zip(&vals)
                .filter(|(k, v)| v.as_deref() != Some(k.as_str()))
                .count();
            if missing == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "member {id} misses {missing} acknowledged writes"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    assert!(
        resumed < Duration::from_secs(5),
        "writes took {resumed:?} to resume"
    );
}

#[test]
fn minority_never_acknowledges_and_members_converge() {
    let c = trio("127.60.6");
    let leader = c.wait_leader(&[A, B], Duration::from_secs(20));
    let other = if leader == A { B } else { A };
    assert!(c.set_retry(&[leader], "base", "0", Duration::from_secs(10)));
    // Cut the leader off from both others (SIGSTOP): it is a minority of one.
    c.pause(other);
    c.pause(W);
    let mut con = c.conn(leader);
    let mut cut_keys = Vec::new();
    for i in 0..3 {
        let k = format!("cut{i}");
        let r: redis::RedisResult<String> = redis::cmd("SET").arg(&k).arg("x").query(&mut con);
        assert!(r.is_err(), "a minority acknowledged a write: {r:?}");
        cut_keys.push(k);
    }
    let r: redis::RedisResult<Option<String>> = redis::cmd("GET").arg("base").query(&mut con);
    assert!(r.is_err(), "a minority served a linearizable read: {r:?}");
    c.resume(other);
    c.resume(W);
    // Now cut the leader itself off: the majority elects a new leader and takes writes.
    c.wait_leader(&[A, B], Duration::from_secs(20));
    let leader = c.wait_data_leader(&[A, B], Duration::from_secs(20));
    let other = if leader == A { B } else { A };
    c.pause(leader);
    let t0 = Instant::now();
    assert!(
        c.set_retry(&[other], "majority", "1", Duration::from_secs(20)),
        "majority takes writes"
    );
    eprintln!(
        "majority took a write {:?} after the leader was stopped",
        t0.elapsed()
    );
    c.resume(leader);
    // Everyone converges on the same data.
    let mut keys = cut_keys;
    keys.push("base".into());
    keys.push("majority".into());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let va = values(&c, A, &keys, false);
        let vb = values(&c, B, &keys, false);
        if va == vb && va.last() == Some(&Some("1".to_string())) {
            assert_eq!(va[keys.len() - 2].as_deref(), Some("0"));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "members did not converge: {va:?} vs {vb:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A member that fell far behind under heavy pipelined load catches up by log (openraft 0.9
/// gives each AppendEntries one heartbeat interval, so entries must stay small enough), and
/// then carries the quorum when the other data member dies.
#[test]
fn a_member_far_behind_catches_up_and_carries_the_quorum() {
    let mut c = trio("127.60.14");
    let leader = c.wait_leader(&[A, B], Duration::from_secs(20));
    let other = if leader == A { B } else { A };
    c.pause(W);
    let mut con = c.conn(leader);
    let mut keys = Vec::new();
    for round in 0..40 {
        let mut p = redis::pipe();
        for i in 0..500 {
            let k = format!("heavy{round}-{i}");
            p.cmd("SET")
                .arg(&k)
                .arg(format!("{k}-{}", "x".repeat(100)))
                .ignore();
            keys.push(k);
        }
        let _: () = p.query(&mut con).unwrap();
    }
    drop(con);
    c.resume(W);
    // Give the witness a moment to start catching up, then take the other data member away:
    // the leader can commit only with the witness now.
    std::thread::sleep(Duration::from_millis(200));
    c.kill(other);
    assert!(
        c.set_retry(&[leader], "after-catch-up", "1", Duration::from_secs(20)),
        "the leader never committed with the caught-up witness"
    );
    let mut con = c.conn(leader);
    for chunk in keys.chunks(1000) {
        let vals: Vec<Option<String>> = redis::cmd("MGET").arg(chunk).query(&mut con).unwrap();
        assert!(vals.iter().all(|v| v.is_some()));
    }
}

/// A leader stopped the way a supervisor stops a jail (SIGTERM: `jail stop`, a rolling
/// restart, a move) hands its leadership to the caught-up data member before it exits: when
/// its process is gone, the other member already leads. Without the hand-over that could not
/// happen before the voters' lease ran out (~0.6 s after the last heartbeat), so writes and
/// linearizable reads would stall for an election instead.
#[test]
fn a_leader_stopped_with_sigterm_hands_over_before_it_exits() {
    let mut c = trio("127.158.1");
    let leader = c.wait_leader(&[A, B], Duration::from_secs(20));
    let other = if leader == A { B } else { A };
    let mut con = c.conn(leader);
    for i in 0..50 {
        let _: () = redis::cmd("SET")
            .arg(format!("k{i}"))
            .arg(i)
            .query(&mut con)
            .unwrap();
    }
    drop(con);
    let took = c.terminate(leader);
    assert_eq!(
        c.info(other, "raft_state").as_deref(),
        Some("Leader"),
        "the other data member leads when the old leader's process is gone ({took:?} after SIGTERM)"
    );
    assert!(
        c.log(leader).contains("leadership handed over"),
        "{}",
        c.log(leader)
    );
    let keys: Vec<String> = (0..50).map(|i| format!("k{i}")).collect();
    let got = values(&c, other, &keys, false);
    assert!(
        got.iter()
            .enumerate()
            .all(|(i, v)| v.as_deref() == Some(i.to_string().as_str()))
    );
    // The old leader comes back as a follower of the new one.
    c.start(leader);
    assert_eq!(c.wait_leader(&[A, B], Duration::from_secs(20)), other);
}

/// A frozen leader (SIGSTOP: no FIN, no RST) is replaced as soon as the witness would grant
/// its vote, not after the data members' own lease. Data members here refuse votes for 3 s
/// after they hear from a leader; the witness for three heartbeats (300 ms).
#[test]
fn a_frozen_leader_is_replaced_once_the_witness_would_vote() {
    let mut c = Cluster::new("127.60.18", &[false, false, true]);
    c.tunables = "heartbeat_ms = 100\nelection_min_ms = 1500\nelection_max_ms = 3000\n\
                  write_wait_ms = 5000\nrpc_timeout_ms = 500\n"
        .into();
    c.start_all();
    wait_port(c.member(A).redis, Duration::from_secs(20));
    wait_port(c.member(B).redis, Duration::from_secs(20));
    let leader = c.wait_data_leader(&[A, B], Duration::from_secs(20));
    let other = if leader == A { B } else { A };
    c.wait_leader(&[A, B], Duration::from_secs(20));
    assert!(c.set_retry(&[other], "before", "1", Duration::from_secs(10)));
    let mark = c.log_mark(other);
    c.pause(leader);
    let took = leads_after(&c, other, Instant::now());
    assert!(c.set_retry(&[other], "after", "1", Duration::from_secs(10)));
    c.resume(leader);
    eprintln!("a new leader {took:?} after the leader froze");
    let log = c.log_after(other, mark);
    assert!(
        log.contains("no word from the leader, nor at a majority of voters"),
        "the election was not the early one:\n{log}"
    );
    // The data members' own lease would have held the election back for at least 3 s.
    assert!(took < Duration::from_millis(2500), "took {took:?}");
}

/// How long after `from` member `id` reports that it leads (waiting up to 20 s).
fn leads_after(c: &Cluster, id: u64, from: Instant) -> Duration {
    common::wait_for(
        "the other data member to lead",
        Duration::from_secs(20),
        || c.info(id, "raft_state").as_deref() == Some("Leader"),
    );
    from.elapsed()
}

/// Two data members and a witness on `net`.1–3, the data members reaching each other only
/// through links the test can cut (listening on `net`.21 and `net`.22), started.
fn trio_with_cuttable_link(net: &str) -> (Cluster, [common::Link; 2]) {
    let mut c = Cluster::new(net, &[false, false, true]);
    let a_to_b: std::net::SocketAddr = format!("{net}.21:7000").parse().unwrap();
    let b_to_a: std::net::SocketAddr = format!("{net}.22:7000").parse().unwrap();
    let links = [
        common::Link::start(a_to_b, c.member(B).peer),
        common::Link::start(b_to_a, c.member(A).peer),
    ];
    c.dial.insert((A, B), a_to_b);
    c.dial.insert((B, A), b_to_a);
    c.start_all();
    wait_port(c.member(A).redis, Duration::from_secs(20));
    wait_port(c.member(B).redis, Duration::from_secs(20));
    (c, links)
}

/// A data member cut off from a leader that still reaches the witness asks the witness
/// before it calls an early election, and calls none: the witness still hears the leader.
#[test]
fn a_member_cut_off_from_a_live_leader_calls_no_early_election() {
    let (c, links) = trio_with_cuttable_link("127.60.19");
    let leader = c.wait_leader(&[A, B], Duration::from_secs(20));
    let other = if leader == A { B } else { A };
    assert!(c.set_retry(&[other], "before", "1", Duration::from_secs(10)));
    let term = c.info(leader, "raft_term");
    // (At start-up, before any leader spoke, an early election is right: only what follows
    // the cut counts.)
    let mark = c.log_mark(other);
    for l in &links {
        l.set_cut(true);
    }
    // The last-resort election comes after the data members' lease; by then the member has
    // asked the witness many times whether it still hears the leader.
    common::wait_for(
        "the cut-off member to call an election",
        Duration::from_secs(20),
        || c.log_after(other, mark).contains("calling an election"),
    );
    let log = c.log_after(other, mark);
    assert!(
        log.contains("no word from the leader; calling an election")
            && !log.contains("nor at a majority of voters"),
        "an early election while the witness heard the leader:\n{log}"
    );
    assert_eq!(c.info(leader, "raft_state").as_deref(), Some("Leader"));
    assert_eq!(c.info(leader, "raft_term"), term, "the leader was unseated");
    assert!(c.set_retry(&[leader], "during", "1", Duration::from_secs(10)));
    for l in &links {
        l.set_cut(false);
    }
    c.wait_leader(&[A, B], Duration::from_secs(20));
    assert!(c.set_retry(&[A, B], "healed", "1", Duration::from_secs(20)));
}

/// The hand-over on SIGTERM under a stream of writes: the leader appends nothing after it
/// chose the member to hand over to, so the witness never holds an entry that member lacks
/// (it would refuse the member's vote, and the group would wait for the witness to lead and
/// hand over). Six rounds, writers on both data members throughout.
#[test]
fn a_leader_stopped_under_writes_hands_over_directly() {
    let mut c = trio("127.60.20");
    // (At start-up the witness may lead for a moment and hand over: only the rounds count.)
    let mark = c.log_mark(W);
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for (n, id) in [A, B, A, B].into_iter().enumerate() {
        let url = c.url(id);
        let stop = stop.clone();
        writers.push(std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(120);
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let Ok(mut con) =
                    redis::Client::open(url.as_str()).and_then(|c| c.get_connection())
                else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                let _ = con.set_read_timeout(Some(Duration::from_secs(5)));
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let mut p = redis::pipe();
                    for _ in 0..16 {
                        p.cmd("SET").arg(format!("w{n}-{i}")).arg(i).ignore();
                        i += 1;
                    }
                    if p.query::<()>(&mut con).is_err() {
                        break;
                    }
                }
            }
        }));
    }
    for round in 0..6 {
        let leader = c.wait_leader(&[A, B], Duration::from_secs(20));
        let other = if leader == A { B } else { A };
        let took = c.terminate(leader);
        assert_eq!(
            c.info(other, "raft_state").as_deref(),
            Some("Leader"),
            "round {round}: the other data member leads when the old leader's process is gone ({took:?} after SIGTERM)\n{}",
            c.log(W)
        );
        c.start(leader);
        wait_port(c.member(leader).redis, Duration::from_secs(20));
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().expect("writer");
    }
    let log = c.log_after(W, mark);
    assert!(
        !log.contains("witness: handing leadership"),
        "the witness led in between:\n{log}"
    );
}

/// The leader's box goes while the witness holds entries the other data member lacks (the
/// link between the data members was cut a moment before): the witness refuses that
/// member's vote, so the group must pass through the witness's leadership. The witness
/// campaigns at once (the member's own election left its vote without a lease) and hands
/// over once the member has caught up; no acknowledged write is lost.
#[test]
fn a_leader_lost_while_the_witness_is_ahead_is_replaced_through_the_witness() {
    let (c, links) = trio_with_cuttable_link("127.60.21");
    let leader = c.wait_leader(&[A, B], Duration::from_secs(20));
    let other = if leader == A { B } else { A };
    assert!(c.set_retry(&[leader], "before", "1", Duration::from_secs(10)));
    let index = |id| {
        c.info(id, "raft_last_log_index")
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    for l in &links {
        l.set_cut(true);
    }
    // Writes the leader commits with the witness alone.
    let mut con = c.conn(leader);
    for i in 0..20 {
        let _: () = redis::cmd("SET")
            .arg(format!("ahead{i}"))
            .arg(i)
            .query(&mut con)
            .unwrap();
    }
    assert!(
        index(leader) > index(other) + 10,
        "the other member is behind"
    );
    let mark = c.log_mark(W);
    c.pause(leader);
    for l in &links {
        l.set_cut(false);
    }
    let took = leads_after(&c, other, Instant::now());
    c.resume(leader);
    eprintln!("a data leader {took:?} after the leader froze, the witness ahead");
    let keys: Vec<String> = (0..20).map(|i| format!("ahead{i}")).collect();
    let got = values(&c, other, &keys, false);
    assert!(
        got.iter().all(Option::is_some),
        "acknowledged writes lost: {got:?}"
    );
    // Without the witness's own campaign the group waited for its election timer and the
    // member's last-resort election: ~1.0-1.1 s here, against ~0.4 s.
    let log = c.log_after(W, mark);
    assert!(
        log.contains("the data member behind; campaigning"),
        "the witness did not campaign at once:\n{log}"
    );
    assert!(took < Duration::from_secs(2), "took {took:?}");
}
