//! Lua scripts as Redis 7.0 runs them, on two data members + witness: the sandbox (read-only
//! globals and libraries), redis.* helpers (acl_check_cmd, setresp, set_repl, error_reply…),
//! shebang flags, maxmemory and OOM, and busy scripts: BUSY replies, SCRIPT KILL decided
//! through the log so that both members agree. Loopback 127.161.x.y.

mod common;

use std::time::Duration;

use common::{Cluster, err, ok, q, raw, trio, wait_for};

/// The value of `key` as `id` holds it locally (READONLY: no read index), once it settles.
fn local_get(c: &Cluster, id: u64, key: &str) -> Option<String> {
    let mut con = c.conn(id);
    let _: () = ok(&mut con, &["READONLY"]);
    q::<Option<String>>(&mut con, &["GET", key]).unwrap()
}

#[test]
fn sandbox_helpers_flags_and_maxmemory_behave_as_redis() {
    let c = trio("127.161.1");
    let leader = c.wait_leader(&[1, 2], Duration::from_secs(20));
    let mut con = c.conn(leader);

    // Globals and libraries are read-only; a missing global is an error.
    let e = err(&mut con, &["EVAL", "return a", "0"]);
    assert!(
        e.contains("Script attempted to access nonexistent global variable 'a'"),
        "{e}"
    );
    for script in [
        "a = 10",
        "redis = function() return 1 end",
        "redis.call = function() return 1 end",
        "cjson.encode = 1",
        "setmetatable(_G, {})",
        "local g = getmetatable(_G) g.__index = {}",
        "_G = {}",
        "rawset(_G, 'x', 1)",
    ] {
        let e = err(&mut con, &["EVAL", script, "0"]);
        assert!(
            e.contains("Attempt to modify a readonly table"),
            "{script}: {e}"
        );
    }
    assert!(err(&mut con, &["EVAL", "print('x')", "0"]).contains("'print'"));
    // loadstring compiles text, never bytecode.
    assert_eq!(
        ok::<i64>(&mut con, &["EVAL", "return loadstring('return 7')()", "0"]),
        7
    );
    assert!(
        err(
            &mut con,
            &[
                "EVAL",
                "return loadstring(string.dump(function() return 1 end))()",
                "0"
            ]
        )
        .contains("attempt to call a nil value")
    );
    // pcall still sees the error text; locals work as usual.
    let e: String = ok(
        &mut con,
        &[
            "EVAL",
            "local ok, e = pcall(function() return foo end) return e",
            "0",
        ],
    );
    assert!(
        e.ends_with("Script attempted to access nonexistent global variable 'foo'"),
        "{e}"
    );

    // Helpers.
    assert!(err(&mut con, &["EVAL", "return redis.sha1hex()", "0"]).contains("wrong number"));
    assert!(err(&mut con, &["EVAL", "redis.set_repl(12345)", "0"]).contains("Invalid"));
    let _: () = ok(
        &mut con,
        &[
            "EVAL",
            "redis.set_repl(redis.REPL_ALL) redis.log(redis.LOG_WARNING, 'hi')",
            "0",
        ],
    );
    assert!(err(&mut con, &["EVAL", "return redis.error_reply('')", "0"]).starts_with("ERR"));
    assert!(
        err(
            &mut con,
            &["EVAL", "return redis.call('get', 'a', 'b')", "0"]
        )
        .contains("Wrong number of args calling Redis command from script")
    );
    assert_eq!(
        ok::<String>(
            &mut con,
            &["EVAL", "return redis.status_reply('FINE')", "0"]
        ),
        "FINE"
    );
    // math.random differs from one script to the next, randomseed makes it repeatable.
    let a: String = ok(&mut con, &["EVAL", "return tostring(math.random())", "0"]);
    let b: String = ok(&mut con, &["EVAL", "return tostring(math.random())", "0"]);
    assert_ne!(a, b);
    let seeded = "math.randomseed(ARGV[1]) return tostring(math.random())";
    let s1: String = ok(&mut con, &["EVAL", seeded, "0", "10"]);
    let s2: String = ok(&mut con, &["EVAL", seeded, "0", "10"]);
    let s3: String = ok(&mut con, &["EVAL", seeded, "0", "20"]);
    assert_eq!(s1, s2);
    assert_ne!(s2, s3);
    // ...and every member draws the same numbers for the same script.
    let _: () = ok(
        &mut con,
        &[
            "EVAL",
            "redis.call('SET', 'rnd', tostring(math.random()))",
            "0",
        ],
    );
    let want = ok::<String>(&mut con, &["GET", "rnd"]);
    for id in [1, 2] {
        wait_for("rnd on every member", Duration::from_secs(10), || {
            local_get(&c, id, "rnd").as_deref() == Some(want.as_str())
        });
    }

    // redis.setresp(3): RESP3 replies reach the script as Redis 7 gives them.
    let _: () = ok(&mut con, &["HSET", "h", "f", "v"]);
    let flat: Vec<String> = ok(
        &mut con,
        &[
            "EVAL",
            "redis.setresp(3) local m = redis.call('HGETALL', KEYS[1]).map return {'f', m.f}",
            "1",
            "h",
        ],
    );
    assert_eq!(flat, vec!["f", "v"]);
    assert!(
        err(&mut con, &["EVAL", "redis.setresp(4)", "0"]).contains("RESP version must be 2 or 3")
    );
    assert_eq!(
        ok::<String>(&mut con, &["EVAL", "return {double=3.5}", "0"]),
        "3.5"
    );

    // redis.acl_check_cmd: the caller's rules, and a clear error for an unknown command.
    let _: () = ok(
        &mut con,
        &[
            "ACL",
            "SETUSER",
            "bob",
            "on",
            ">123",
            "+@scripting",
            "+set",
            "~x*",
        ],
    );
    let mut bob = c.conn(leader);
    let _: () = ok(&mut bob, &["AUTH", "bob", "123"]);
    let check = |con: &mut redis::Connection, body: &str, keys: &[&str]| -> Option<i64> {
        let n = keys.len().to_string();
        let mut args = vec!["EVAL", body, n.as_str()];
        args.extend_from_slice(keys);
        ok(con, &args)
    };
    assert_eq!(
        check(
            &mut bob,
            "return redis.acl_check_cmd('set','xx',1)",
            &["xx"]
        ),
        Some(1)
    );
    assert_eq!(
        check(
            &mut bob,
            "return redis.acl_check_cmd('hset','xx','f',1)",
            &["xx"]
        ),
        None
    );
    assert_eq!(
        check(&mut bob, "return redis.acl_check_cmd('set','yy',1)", &[]),
        None
    );
    assert!(
        err(
            &mut bob,
            &[
                "EVAL",
                "return redis.acl_check_cmd('invalid-cmd','arg')",
                "0"
            ]
        )
        .contains("Invalid command passed to redis.acl_check_cmd()")
    );
    assert_eq!(
        check(
            &mut con,
            "return redis.acl_check_cmd('hset','yy','f',1)",
            &[]
        ),
        Some(1)
    );

    // Shebang flags.
    assert_eq!(ok::<i64>(&mut con, &["EVAL", "#!lua\nreturn 1", "0"]), 1);
    assert!(
        err(&mut con, &["EVAL", "#!not-lua\nreturn 1", "0"])
            .contains("Unexpected engine in script shebang")
    );
    assert!(
        err(&mut con, &["EVAL", "#!lua badger=data\nreturn 1", "0"])
            .contains("Unknown lua shebang option")
    );
    assert!(
        err(
            &mut con,
            &["EVAL", "#!lua flags=allow-oom,what?\nreturn 1", "0"]
        )
        .contains("Unexpected flag in script shebang")
    );
    assert!(
        err(
            &mut con,
            &[
                "EVAL",
                "#!lua flags=no-writes\nredis.call('set','x',1)",
                "1",
                "x"
            ]
        )
        .contains("Write commands are not allowed from read-only scripts")
    );

    // maxmemory: deny-oom writes are refused where they are taken, reads and deletes pass,
    // a script without flags fails at its first deny-oom write, allow-oom writes anyway.
    let _: () = ok(&mut con, &["SET", "x", "123"]);
    let _: () = ok(&mut con, &["CONFIG", "SET", "maxmemory", "1"]);
    let oom = "OOM command not allowed when used memory > 'maxmemory'.";
    assert_eq!(err(&mut con, &["SET", "y", "1"]), oom);
    assert_eq!(ok::<String>(&mut con, &["GET", "x"]), "123");
    assert!(
        err(
            &mut con,
            &["EVAL", "redis.call('set','x',1) return 1", "1", "x"]
        )
        .starts_with("OOM command not allowed")
    );
    assert_eq!(
        ok::<String>(
            &mut con,
            &["EVAL", "return redis.pcall('set','x',1)['err']", "1", "x"]
        ),
        oom
    );
    assert!(err(&mut con, &["EVAL", "#!lua flags=\nreturn 1", "0"]).starts_with("OOM"));
    assert_eq!(
        ok::<i64>(
            &mut con,
            &[
                "EVAL",
                "#!lua flags=allow-oom\nredis.call('set','x',1) return 1",
                "1",
                "x"
            ]
        ),
        1
    );
    assert_eq!(
        ok::<i64>(
            &mut con,
            &[
                "EVAL",
                "#!lua flags=no-writes\nredis.call('get','x') return 1",
                "0"
            ]
        ),
        1
    );
    // In MULTI: refused when queued (the transaction is discarded), and EXEC refuses a
    // transaction queued before the limit was reached.
    let _: () = ok(&mut con, &["CONFIG", "SET", "maxmemory", "0"]);
    let _: () = ok(&mut con, &["MULTI"]);
    let _: String = ok(&mut con, &["SET", "x", "2"]);
    let mut other = c.conn(leader);
    let _: () = ok(&mut other, &["CONFIG", "SET", "maxmemory", "1"]);
    assert!(err(&mut con, &["EXEC"]).starts_with("EXECABORT"));
    let _: () = ok(&mut con, &["MULTI"]);
    assert_eq!(err(&mut con, &["SET", "x", "3"]), oom);
    assert!(err(&mut con, &["EXEC"]).contains("previous errors"));
    let _: () = ok(&mut other, &["CONFIG", "SET", "maxmemory", "0"]);
    assert_eq!(ok::<String>(&mut con, &["GET", "x"]), "1");
    // CONFIG inside MULTI runs at EXEC, its reply in its place; SAVE is refused there.
    let out = raw(
        c.member(leader).redis,
        b"MULTI\r\nSET foo bar\r\nCONFIG SET maxmemory bla\r\nEXEC\r\n",
    );
    let out = String::from_utf8_lossy(&out);
    assert!(
        out.contains(
            "*2\r\n+OK\r\n-ERR CONFIG SET failed (possibly related to argument 'maxmemory')"
        ),
        "{out}"
    );
    let _: () = ok(&mut con, &["MULTI"]);
    assert!(err(&mut con, &["SAVE"]).contains("not allowed inside a transaction"));
    assert!(err(&mut con, &["EXEC"]).starts_with("EXECABORT"));
    // DEBUG PROTOCOL from a script once allowed; RESP3 types reach a RESP2 client as RESP2.
    assert!(
        err(
            &mut con,
            &[
                "EVAL",
                "return redis.call('debug', 'protocol', 'true')",
                "0"
            ]
        )
        .contains("not allowed")
    );
    let _: () = ok(&mut con, &["DEBUG", "set-disable-deny-scripts", "1"]);
    assert_eq!(
        ok::<i64>(
            &mut con,
            &[
                "EVAL",
                "redis.setresp(3) return redis.call('debug', 'protocol', 'true')",
                "0"
            ]
        ),
        1
    );
    assert_eq!(
        ok::<Vec<i64>>(
            &mut con,
            &[
                "EVAL",
                "redis.setresp(3) return redis.call('debug', 'protocol', 'set')",
                "0"
            ]
        )
        .len(),
        3
    );
    let _: () = ok(&mut con, &["DEBUG", "set-disable-deny-scripts", "0"]);
}

#[test]
fn script_kill_stops_a_busy_script_at_the_same_state_on_every_member() {
    let c = trio("127.161.2");
    let leader = c.wait_leader(&[1, 2], Duration::from_secs(20));
    let follower = if leader == 1 { 2 } else { 1 };
    for id in [1, 2] {
        let mut con = c.conn(id);
        let _: () = ok(&mut con, &["CONFIG", "SET", "lua-time-limit", "10"]);
    }
    let mut con = c.conn(leader);
    assert!(err(&mut con, &["SCRIPT", "KILL"]).starts_with("NOTBUSY"));

    let mut m2 = c.conn(leader);
    let _: () = ok(&mut m2, &["MULTI"]);
    let _: String = ok(&mut m2, &["INCR", "xx"]);
    // A script that loops without writing: others get BUSY (also on the follower, which
    // runs it too), SCRIPT KILL stops it, its caller hears why.
    let url = c.url(leader);
    let runner = std::thread::spawn(move || {
        let mut con = redis::Client::open(url).unwrap().get_connection().unwrap();
        con.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        err(
            &mut con,
            &["EVAL", "local i = 0 while true do i = i + 1 end", "0"],
        )
    });
    wait_for("BUSY on the leader", Duration::from_secs(20), || {
        q::<String>(&mut con, &["PING"]).is_err_and(|e| e.code() == Some("BUSY"))
    });
    let mut f = c.conn(follower);
    wait_for("BUSY on the follower", Duration::from_secs(20), || {
        q::<String>(&mut f, &["PING"]).is_err_and(|e| e.code() == Some("BUSY"))
    });
    assert!(err(&mut con, &["FUNCTION", "KILL"]).starts_with("NOTBUSY"));
    // MULTI passes during a busy script, a command refused meanwhile dooms the transaction,
    // and EXEC itself during it aborts with BUSY (another connection, queued before).
    let mut m1 = c.conn(leader);
    let _: () = ok(&mut m1, &["MULTI"]);
    assert!(err(&mut m1, &["INCR", "xx"]).starts_with("BUSY"));
    assert!(
        err(&mut m2, &["EXEC"]).starts_with("EXECABORT Transaction discarded because of: BUSY")
    );
    let _: () = ok(&mut f, &["SCRIPT", "KILL"]);
    let e = runner.join().unwrap();
    assert!(e.contains("killed by user"), "{e}");
    wait_for("PONG again", Duration::from_secs(20), || {
        q::<String>(&mut con, &["PING"]).is_ok() && q::<String>(&mut f, &["PING"]).is_ok()
    });
    let _: String = ok(&mut m1, &["INCR", "xx"]);
    assert!(err(&mut m1, &["EXEC"]).contains("previous errors"));
    assert_eq!(q::<Option<i64>>(&mut con, &["GET", "xx"]).unwrap(), None);
    assert_eq!(ok::<String>(&mut m2, &["PING", "asdf"]), "asdf");

    // A script that wrote before it got busy cannot be killed; it ends at its budget.
    let url = c.url(leader);
    let runner = std::thread::spawn(move || {
        let mut con = redis::Client::open(url).unwrap().get_connection().unwrap();
        con.set_read_timeout(Some(Duration::from_secs(120)))
            .unwrap();
        q::<redis::Value>(
            &mut con,
            &[
                "EVAL",
                "redis.call('SET', KEYS[1], 'y') while true do end",
                "1",
                "wrote",
            ],
        )
    });
    wait_for("BUSY again", Duration::from_secs(20), || {
        q::<String>(&mut con, &["PING"]).is_err_and(|e| e.code() == Some("BUSY"))
    });
    assert!(err(&mut con, &["SCRIPT", "KILL"]).starts_with("UNKILLABLE"));
    // Its caller hears the budget, or TRYAGAIN on a slow machine while it still runs.
    let _ = runner.join().unwrap();
    wait_for("the budget to end it", Duration::from_secs(60), || {
        q::<String>(&mut con, &["PING"]).is_ok() && q::<String>(&mut f, &["PING"]).is_ok()
    });

    // A kill racing a script's first write after it got busy: whichever the log holds first
    // wins on both members — killed and nothing written, or written and unkillable.
    for round in 0..3 {
        let key = format!("late{round}");
        let url = c.url(leader);
        let k = key.clone();
        let runner = std::thread::spawn(move || {
            let mut con = redis::Client::open(url).unwrap().get_connection().unwrap();
            con.set_read_timeout(Some(Duration::from_secs(120)))
                .unwrap();
            q::<redis::Value>(
                &mut con,
                &[
                    "EVAL",
                    "local i = 0 while i < 3000000 do i = i + 1 end \
                     redis.call('SET', KEYS[1], 'x') return 1",
                    "1",
                    &k,
                ],
            )
        });
        wait_for("BUSY", Duration::from_secs(20), || {
            q::<String>(&mut con, &["PING"]).is_err_and(|e| e.code() == Some("BUSY"))
        });
        let killed = match q::<String>(&mut con, &["SCRIPT", "KILL"]) {
            Ok(_) => true,
            Err(e) => {
                assert!(
                    matches!(e.code(), Some("UNKILLABLE") | Some("NOTBUSY")),
                    "{e}"
                );
                false
            }
        };
        let r = runner.join().unwrap();
        assert_eq!(r.is_err(), killed, "round {round}: {r:?}");
        let want = if killed { None } else { Some("x".to_string()) };
        for id in [leader, follower] {
            wait_for("the members agree", Duration::from_secs(20), || {
                let mut con = c.conn(id);
                q::<String>(&mut con, &["PING"]).is_ok() && local_get(&c, id, &key) == want
            });
        }
    }
    assert_eq!(local_get(&c, follower, "wrote").as_deref(), Some("y"));
}
