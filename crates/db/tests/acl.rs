//! ACL users across the group: users from the config, ACL SETUSER through the log on one
//! member and AUTH on another, NOPERM for commands, categories, keys and channels, and users
//! surviving a restart of every member (snapshot + log). Loopback 127.153.1.x.

mod common;

use std::time::{Duration, Instant};

use common::{Cluster, err, ok, q, wait_port};

use redis::{Connection, RedisResult, Value};

fn conn_as(c: &Cluster, id: u64, user: &str, pass: &str) -> RedisResult<Connection> {
    let client = redis::Client::open(format!("redis://{user}:{pass}@{}/", c.member(id).redis))?;
    let con = client.get_connection_with_timeout(Duration::from_secs(2))?;
    con.set_read_timeout(Some(Duration::from_secs(10)))?;
    Ok(con)
}

const USERS: &str = r#"users = [
  { name = "default", rules = "nopass ~* &* +@all" },
  { name = "admin", password = "root", rules = "~* &* +@all" },
  { name = "app", password = "apppw", rules = "~* &* +@all -@dangerous" },
]"#;

fn start(c: &mut Cluster) {
    c.start_all();
    wait_port(c.member(1).redis, Duration::from_secs(20));
    wait_port(c.member(2).redis, Duration::from_secs(20));
    c.wait_leader(&[1, 2], Duration::from_secs(20));
}

#[test]
fn users_are_the_same_on_every_member_and_survive_restarts() {
    let mut c = Cluster::new("127.153.1", &[false, false, true]);
    c.extra = USERS.into();
    start(&mut c);

    // Configured users: AUTH as each, NOPERM by category, WRONGPASS.
    let mut app = conn_as(&c, 1, "app", "apppw").expect("app");
    assert_eq!(ok::<String>(&mut app, &["ACL", "WHOAMI"]), "app");
    let _: () = ok(&mut app, &["SET", "k", "v"]);
    assert_eq!(
        err(&mut app, &["FLUSHALL"]),
        "NOPERM User app has no permissions to run the 'flushall' command"
    );
    assert!(err(&mut app, &["ACL", "SETUSER", "x", "on"]).contains("'acl|setuser'"));
    assert!(err(&mut app, &["KEYS", "*"]).starts_with("NOPERM"));
    assert!(err(&mut app, &["AUTH", "app", "wrong"]).starts_with("WRONGPASS"));
    assert!(err(&mut app, &["AUTH", "nobody", "x"]).starts_with("WRONGPASS"));
    assert!(conn_as(&c, 2, "app", "nope").is_err(), "wrong password");
    assert_eq!(
        ok::<String>(&mut app, &["ACL", "WHOAMI"]),
        "app",
        "a failed AUTH keeps the user"
    );

    let mut admin = conn_as(&c, 1, "admin", "root").expect("admin");
    assert!(
        err(&mut admin, &["ACL", "SETUSER", "app", "+@all"]).contains("cluster file"),
        "a configured user is not changed at run time"
    );
    assert!(err(&mut admin, &["ACL", "DELUSER", "default"]).contains("cannot be removed"));
    assert!(err(&mut admin, &["ACL", "SETUSER", "r", "+nosuch"]).contains("Unknown command"));

    // SETUSER on member 1, AUTH on member 2 at once.
    let _: () = ok(
        &mut admin,
        &[
            "ACL",
            "SETUSER",
            "reader",
            "on",
            ">rpw",
            "%R~pub:*",
            "~own:*",
            "&chat:*",
            "+@read",
            "+@write",
            "+publish",
            "+subscribe",
            "+@transaction",
            "+acl|whoami",
        ],
    );
    let mut r2 = conn_as(&c, 2, "reader", "rpw").expect("reader on member 2 right after SETUSER");
    assert_eq!(ok::<String>(&mut r2, &["ACL", "WHOAMI"]), "reader");
    assert_eq!(ok::<Option<String>>(&mut r2, &["GET", "pub:1"]), None);
    let _: () = ok(&mut r2, &["SET", "own:1", "x"]);
    let _: () = ok(&mut r2, &["HSET", "own:h", "f", "v"]);
    assert_eq!(
        err(&mut r2, &["SET", "pub:1", "x"]),
        "NOPERM No permissions to access a key"
    );
    assert!(err(&mut r2, &["GET", "other"]).starts_with("NOPERM"));
    assert!(err(&mut r2, &["CONFIG", "GET", "maxmemory"]).contains("'config'"));
    assert!(err(&mut r2, &["ACL", "LIST"]).contains("'acl|list'"));
    assert_eq!(ok::<i64>(&mut r2, &["PUBLISH", "chat:1", "hi"]), 0);
    assert_eq!(
        err(&mut r2, &["PUBLISH", "news", "hi"]),
        "NOPERM No permissions to access a channel"
    );
    let out = common::raw(
        c.member(2).redis,
        b"AUTH reader rpw\r\nSUBSCRIBE news\r\nSUBSCRIBE chat:x\r\nQUIT\r\n",
    );
    let out = String::from_utf8_lossy(&out);
    assert!(
        out.starts_with("+OK\r\n-NOPERM No permissions to access a channel\r\n*3\r\n"),
        "{out}"
    );
    // Inside MULTI a denied command aborts the transaction.
    let _: () = ok(&mut r2, &["MULTI"]);
    assert!(err(&mut r2, &["SET", "pub:2", "x"]).starts_with("NOPERM"));
    assert!(err(&mut r2, &["EXEC"]).starts_with("EXECABORT"));

    // A change reaches connections already authenticated, on the other member too.
    let _: () = ok(&mut admin, &["ACL", "SETUSER", "reader", "-@hash"]);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match q::<Option<String>>(&mut r2, &["HGET", "own:h", "f"]) {
            Err(e) if e.code() == Some("NOPERM") => break,
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            other => panic!("HGET still allowed after -@hash: {other:?}"),
        }
    }

    // What every member reports.
    let mut a2 = conn_as(&c, 2, "admin", "root").expect("admin on 2");
    let users: Vec<String> = ok(&mut a2, &["ACL", "USERS"]);
    assert_eq!(users, ["admin", "app", "default", "reader"]);
    let list: Vec<String> = ok(&mut a2, &["ACL", "LIST"]);
    let line = list
        .iter()
        .find(|l| l.starts_with("user reader"))
        .expect("listed");
    assert!(
        line.starts_with("user reader on #") && line.ends_with("+acl|whoami -@hash"),
        "{line}"
    );
    assert!(
        line.contains("%R~pub:* ~own:* &chat:* -@all +@read +@write"),
        "{line}"
    );
    assert!(!line.contains("rpw"), "only the hash is kept: {line}");
    let getuser: Value = ok(&mut a2, &["ACL", "GETUSER", "reader"]);
    assert!(format!("{getuser:?}").contains("passwords"), "{getuser:?}");
    assert_eq!(
        ok::<Value>(&mut a2, &["ACL", "GETUSER", "nobody"]),
        Value::Nil
    );
    let cats: Vec<String> = ok(&mut a2, &["ACL", "CAT"]);
    assert!(cats.contains(&"dangerous".to_string()) && cats.len() == 21);
    let hll: Vec<String> = ok(&mut a2, &["ACL", "CAT", "hyperloglog"]);
    assert!(hll.contains(&"pfadd".to_string()));
    assert!(err(&mut a2, &["ACL", "CAT", "nosuch"]).contains("Unknown category"));
    assert_eq!(
        ok::<String>(&mut a2, &["ACL", "DRYRUN", "reader", "SET", "pub:1", "v"]),
        "No permissions to access a key"
    );
    assert_eq!(
        ok::<String>(&mut a2, &["ACL", "DRYRUN", "reader", "SET", "own:1", "v"]),
        "OK"
    );
    let info: Value = ok(&mut a2, &["COMMAND", "INFO", "get"]);
    assert!(format!("{info:?}").contains("@read"), "{info:?}");

    // Enough writes for a snapshot to cover `reader`, then `late` lives only in the log.
    let mut d = c.conn(1);
    let before: u64 = c
        .info(1, "raft_snapshot_index")
        .unwrap_or_default()
        .parse()
        .unwrap_or(0);
    for i in 0..150 {
        let _: () = ok(&mut d, &["SET", &format!("fill{i}"), "x"]);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while c
        .info(1, "raft_snapshot_index")
        .unwrap_or_default()
        .parse()
        .unwrap_or(0)
        <= before
    {
        assert!(Instant::now() < deadline, "no snapshot");
        std::thread::sleep(Duration::from_millis(50));
    }
    let _: () = ok(
        &mut admin,
        &["ACL", "SETUSER", "late", "on", ">lpw", "~*", "+get"],
    );
    let _: () = ok(
        &mut admin,
        &["ACL", "SETUSER", "gone", "on", ">gpw", "~*", "+@all"],
    );
    let mut gone = conn_as(&c, 2, "gone", "gpw").expect("gone");
    let _: () = ok(&mut admin, &["ACL", "DELUSER", "gone"]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while q::<String>(&mut gone, &["PING"]).is_ok() {
        assert!(
            Instant::now() < deadline,
            "a deleted user's connection stays open"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(conn_as(&c, 1, "gone", "gpw").is_err());

    // Every member restarts (kill -9): the users come back from snapshot + log.
    drop((app, admin, r2, a2, d, gone));
    for id in [1, 2, 3] {
        c.kill(id);
    }
    start(&mut c);
    for id in [1, 2] {
        let mut r = conn_as(&c, id, "reader", "rpw").expect("reader after restart");
        assert!(err(&mut r, &["HGET", "own:h", "f"]).starts_with("NOPERM"));
        assert_eq!(ok::<String>(&mut r, &["GET", "own:1"]), "x");
        let mut l = conn_as(&c, id, "late", "lpw").expect("late after restart");
        assert_eq!(ok::<String>(&mut l, &["GET", "own:1"]), "x");
        assert!(err(&mut l, &["SET", "own:1", "y"]).contains("'set'"));
        assert!(conn_as(&c, id, "gone", "gpw").is_err());
        assert!(conn_as(&c, id, "late", "wrong").is_err(), "WRONGPASS");
    }
}

#[test]
fn default_user_with_a_password_and_no_dangerous_commands() {
    let mut c = Cluster::new("127.153.2", &[false]);
    c.extra = "password = \"sesame\"".into();
    c.start_all();
    wait_port(c.member(1).redis, Duration::from_secs(20));
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut d = loop {
        if let Ok(mut d) = conn_as(&c, 1, "default", "sesame")
            && q::<()>(&mut d, &["SET", "k", "v"]).is_ok()
        {
            break d;
        }
        assert!(Instant::now() < deadline, "no leader");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(ok::<String>(&mut d, &["GET", "k"]), "v");
    assert!(err(&mut d, &["FLUSHDB"]).contains("'flushdb'"));
    // Nor through a script: each redis.call is held to the caller's rules, on every member.
    let e = err(&mut d, &["EVAL", "return redis.call('FLUSHDB')", "0"]);
    assert!(e.contains("NOPERM") && e.contains("'flushdb'"), "{e}");
    let e = err(&mut d, &["EVAL", "return redis.call('KEYS', '*')", "0"]);
    assert!(e.contains("NOPERM"), "{e}");
    assert_eq!(
        ok::<String>(
            &mut d,
            &["EVAL", "return redis.call('GET', KEYS[1])", "1", "k"]
        ),
        "v",
        "what the user may do, a script may do"
    );
    assert!(err(&mut d, &["AUTH", "wrong"]).starts_with("WRONGPASS"));
    let _: () = ok(&mut d, &["AUTH", "sesame"]);
    assert_eq!(ok::<String>(&mut d, &["ACL", "WHOAMI"]), "default");
}
