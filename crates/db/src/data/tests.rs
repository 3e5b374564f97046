use super::*;

fn a(s: &str) -> Vec<Vec<u8>> {
    s.split(' ').map(|x| x.as_bytes().to_vec()).collect()
}

#[test]
fn strings_and_ttl() {
    let mut db = Db::default();
    assert_eq!(db.write(&a("SET k v EX 10"), 1000, 1), Reply::ok());
    assert_eq!(db.read(&a("GET k"), 1000), Reply::bulk("v"));
    assert_eq!(db.read(&a("TTL k"), 1000), Reply::Int(10));
    assert_eq!(db.read(&a("GET k"), 11_000), Reply::Nil);
    assert_eq!(db.write(&a("INCR n"), 1, 2), Reply::Int(1));
    assert_eq!(db.write(&a("INCRBY n 41"), 1, 3), Reply::Int(42));
    assert_eq!(db.write(&a("INCRBYFLOAT f 1.5"), 1, 4), Reply::bulk("1.5"));
    assert_eq!(db.write(&a("SET k x NX"), 11_000, 5), Reply::ok());
    assert_eq!(db.write(&a("SET k y NX"), 11_000, 6), Reply::Nil);
    assert_eq!(db.write(&a("SET k z XX GET"), 11_000, 7), Reply::bulk("x"));
    assert_eq!(db.write(&a("HSET h a 1 b 2"), 1, 8), Reply::Int(2));
    assert!(db.write(&a("INCR h"), 1, 9).is_error());
    assert_eq!(db.read(&a("TYPE h"), 1), Reply::Simple("hash".into()));
    assert_eq!(db.write(&a("DEL h k nope"), 11_000, 10), Reply::Int(2));
}

#[test]
fn scan_visits_every_key_once_per_pass() {
    let mut db = Db::default();
    for i in 0..100 {
        db.write(&a(&format!("SET key:{i} v")), 0, i + 1);
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut cursor = "0".to_string();
    loop {
        let r = db.read(&a(&format!("SCAN {cursor} MATCH key:* COUNT 7")), 0);
        let Reply::Array(parts) = r else { panic!() };
        let Reply::Bulk(c) = &parts[0] else { panic!() };
        let Reply::Array(keys) = &parts[1] else {
            panic!()
        };
        for k in keys {
            let Reply::Bulk(k) = k else { panic!() };
            seen.insert(k.clone());
        }
        cursor = String::from_utf8(c.clone()).unwrap();
        if cursor == "0" {
            break;
        }
    }
    assert_eq!(seen.len(), 100);
}

#[test]
fn watch_detects_changes() {
    let mut t = Tables::default();
    let set = |v: &str| WriteReq {
        rid: 0,
        now_ms: 0,
        watches: vec![Watch {
            db: 0,
            key: b"k".to_vec(),
            ver: 0,
            at: 0,
        }],
        cmds: vec![(0, a(&format!("SET k {v}")))],
        multi: true,
    };
    assert_eq!(t.apply(&set("1"), 1), Reply::Array(vec![Reply::ok()]));
    // Version moved on: the watch (ver 0) fails.
    assert_eq!(t.apply(&set("2"), 2), Reply::NilArray);
}

#[test]
fn watch_of_an_absent_key_survives_flushes_and_swaps_that_do_not_touch_it() {
    let mut t = Tables::default();
    let mut idx = 0;
    let mut run = |t: &mut Tables, db: u32, cmd: &str, now: u64| {
        idx += 1;
        let req = WriteReq {
            rid: 0,
            now_ms: now,
            watches: Vec::new(),
            cmds: vec![(db, a(cmd))],
            multi: false,
        };
        (t.apply(&req, idx), idx)
    };
    // EXEC of a PING guarded by a WATCH of `x` in db 0 made at log index `at`, when `x`
    // was absent (or expired: version 0).
    let exec = |t: &mut Tables, at: u64, now: u64| {
        let req = WriteReq {
            rid: 0,
            now_ms: now,
            watches: vec![Watch {
                db: 0,
                key: b"x".to_vec(),
                ver: 0,
                at,
            }],
            cmds: vec![(0, a("PING"))],
            multi: true,
        };
        t.apply(&req, 1_000_000) != Reply::NilArray
    };
    run(&mut t, 0, "SET other 1", 0);
    // x absent, other keys older than the WATCH: FLUSHDB and FLUSHALL leave it alone.
    let (_, at) = run(&mut t, 0, "SET y 1", 0);
    run(&mut t, 0, "FLUSHDB", 0);
    assert!(exec(&mut t, at, 0));
    let (_, at) = run(&mut t, 0, "SET y 1", 0);
    run(&mut t, 0, "FLUSHALL", 0);
    assert!(exec(&mut t, at, 0));
    // x written after the WATCH, then flushed: touched.
    let (_, at) = run(&mut t, 0, "PING", 0);
    run(&mut t, 0, "SET x 1", 0);
    run(&mut t, 0, "FLUSHDB", 0);
    assert!(!exec(&mut t, at, 0));
    // A stale x (expired before the WATCH), flushed or swapped away: no change.
    run(&mut t, 0, "SET x 1 PX 1", 10);
    let (_, at) = run(&mut t, 0, "PING", 20);
    run(&mut t, 0, "FLUSHDB", 20);
    assert!(exec(&mut t, at, 20));
    run(&mut t, 0, "SET x 1 PX 1", 30);
    let (_, at) = run(&mut t, 0, "PING", 40);
    run(&mut t, 0, "SWAPDB 0 1", 40);
    assert!(exec(&mut t, at, 40));
    // A live x swapped in: touched.
    run(&mut t, 1, "FLUSHDB", 50);
    run(&mut t, 0, "FLUSHDB", 50);
    run(&mut t, 1, "SET x 1", 50);
    let (_, at) = run(&mut t, 0, "PING", 60);
    run(&mut t, 0, "SWAPDB 0 1", 60);
    assert!(!exec(&mut t, at, 60));
}

#[test]
fn globs() {
    assert!(glob_match(b"key:*", b"key:1"));
    assert!(glob_match(b"h?llo", b"hello"));
    assert!(glob_match(b"h[ae]llo", b"hallo"));
    assert!(!glob_match(b"h[^e]llo", b"hello"));
    assert!(glob_match(b"*", b""));
}

#[test]
fn sorted_set_ranges() {
    let mut db = Db::default();
    db.write(&a("ZADD z 3 c 5 b"), 0, 1);
    assert_eq!(db.read(&a("ZCOUNT z -inf (5"), 0), Reply::Int(1));
    assert_eq!(
        db.write(&a("ZREMRANGEBYSCORE z -inf (5"), 0, 2),
        Reply::Int(1)
    );
    assert_eq!(db.read(&a("ZCARD z"), 0), Reply::Int(1));
}

#[test]
fn sorted_set_sequence() {
    let mut db = Db::default();
    db.write(&a("ZADD z 1 a 2 b 3 c"), 0, 1);
    assert_eq!(db.write(&a("ZADD z GT CH 0 a 5 b"), 0, 2), Reply::Int(1));
    db.write(&a("ZINCRBY z 1.5 a"), 0, 3);
    assert_eq!(db.read(&a("ZRANK z a"), 0), Reply::Int(0));
    let pairs = |v: &[(&str, f64)]| {
        Reply::Pairs(
            v.iter()
                .map(|(m, s)| (Reply::bulk(m), Reply::Double(*s)))
                .collect(),
        )
    };
    assert_eq!(
        db.read(&a("ZRANGE z 0 -1 WITHSCORES"), 0),
        pairs(&[("a", 2.5), ("c", 3.0), ("b", 5.0)])
    );
    assert_eq!(
        db.read(&a("ZRANGEBYLEX z - + LIMIT 1 1"), 0),
        Reply::Array(vec![Reply::bulk("c")])
    );
    assert_eq!(db.read(&a("ZRANGEBYLEX z + -"), 0), Reply::Array(vec![]));
}

#[test]
fn bitmaps() {
    let mut db = Db::default();
    assert_eq!(db.write(&a("SETBIT b 7 1"), 0, 1), Reply::Int(0));
    assert_eq!(db.write(&a("SETBIT b 7 1"), 0, 2), Reply::Int(1));
    assert_eq!(db.read(&a("GET b"), 0), Reply::bulk([1u8]));
    assert_eq!(db.read(&a("GETBIT b 7"), 0), Reply::Int(1));
    assert_eq!(db.read(&a("BITCOUNT b"), 0), Reply::Int(1));
    assert_eq!(db.read(&a("BITPOS b 1"), 0), Reply::Int(7));
    assert_eq!(db.read(&a("BITPOS b 0 0 -1 BIT"), 0), Reply::Int(0));
    db.write(&a("SET c \u{ff}"), 0, 3);
    assert_eq!(db.write(&a("BITOP AND d b c"), 0, 4), Reply::Int(2));
    assert_eq!(db.read(&a("BITCOUNT d"), 0), Reply::Int(1));
    assert!(db.write(&a("SETBIT b -1 1"), 0, 5).is_error());
}

#[test]
fn dump_and_restore_roundtrip_and_refuse_garbage() {
    let mut db = Db::default();
    db.write(&a("RPUSH l a b"), 0, 1);
    let Reply::Bulk(payload) = db.read(&a("DUMP l"), 0) else {
        panic!("no dump")
    };
    let mut cmd = a("RESTORE l2 0");
    cmd.push(payload.clone());
    assert_eq!(db.write(&cmd, 0, 2), Reply::ok());
    assert_eq!(
        db.read(&a("LRANGE l2 0 -1"), 0),
        db.read(&a("LRANGE l 0 -1"), 0)
    );
    assert!(db.write(&cmd, 0, 3).is_error(), "BUSYKEY");
    let mut bad = a("RESTORE l3 0");
    let mut p = payload;
    p[0] ^= 1;
    bad.push(p);
    assert!(db.write(&bad, 0, 4).is_error());
}

#[test]
fn a_borrowed_key_finds_what_an_owned_one_stored_in_the_same_order() {
    let keys: Vec<Vec<u8>> = (0..2000u32)
        .map(|i| format!("key:{}", i.wrapping_mul(2654435761)).into_bytes())
        .chain([Vec::new(), vec![0], vec![0, 0], vec![255; 40]])
        .collect();
    let mut map = std::collections::BTreeMap::new();
    for (i, k) in keys.iter().enumerate() {
        map.insert(SKey::new(k), i);
    }
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(map.get(KeyRef::new(k).view()), Some(&i), "{k:?}");
    }
    assert_eq!(map.get(KeyRef::new(b"absent").view()), None);
    // The borrowed order is the owned one: a sorted walk compares equal both ways.
    let owned: Vec<&SKey> = map.keys().collect();
    for w in owned.windows(2) {
        let (a, b) = (KeyRef::new(&w[0].1), KeyRef::new(&w[1].1));
        assert!(a.view() < b.view(), "{:?} !< {:?}", w[0], w[1]);
    }
    assert!(map.remove(KeyRef::new(&keys[7]).view()).is_some());
    assert_eq!(map.get(KeyRef::new(&keys[7]).view()), None);
}
