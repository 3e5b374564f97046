//! The operator's verbs from the operator's machine, through the agents (mutual TLS): each
//! "host" is a `citadel agent run` with its own state dir and listen address on loopback
//! (127.128.0.0/16, process backend); the built-in cluster is applied over three hosts, then
//! every verb runs as `citadel VERB --file FILE --dir DIR` (no --state: nothing local).
//!
//! `status` gathers every host's jails into one table; `jail stop|start|restart` reach the
//! jail's host (a stop drains it at the gate on another host first); `exec` relays stdout,
//! stderr and the exit code; `jail archive` writes the archive here, `jail restore --host`
//! sends it to a host, where `jail list|destroy` find the new jail; `logs -f` receives a
//! line written after it started and ends on Ctrl-C; `db status`, `gate backends|ban|bans|
//! unban` and `app key create|list` reach a host running that role (the key is then used
//! through the gate); a stopped agent shows as unreachable with the reason (a jail verb on
//! it names the host, its address and what to check) and, back after an apply it missed,
//! as BEHIND until it catches up.

mod harness;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use harness::*;

const NET: &str = "127.128";

/// `citadel ARGS… --file FILE --dir DIR`, run in an empty directory (so no local state can
/// answer): (exit code, stdout, stderr).
fn remote(op: &Operator, file: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let out = remote_command(op, file, args)
        .output()
        .expect("run citadel");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn remote_command(op: &Operator, file: &std::path::Path, args: &[&str]) -> Command {
    // `--file`/`--dir` right after the verb: anything after `exec … --` is the jail's.
    let (first, rest) = args.split_first().expect("a verb");
    let mut cmd = Command::new(CITADEL);
    cmd.current_dir(op.dir.path())
        .arg(first)
        .arg("--file")
        .arg(file)
        .arg("--dir")
        .arg(op.dir.path())
        .args(rest);
    cmd
}

/// A remote verb that must succeed: its stdout.
fn remote_ok(op: &Operator, file: &std::path::Path, args: &[&str]) -> String {
    let (code, out, err) = remote(op, file, args);
    assert_eq!(code, 0, "citadel {args:?} failed: {out}\n{err}");
    out
}

fn remote_status(op: &Operator, file: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&remote_ok(op, file, &["status", "--json"])).expect("status json")
}

fn host_row<'a>(status: &'a serde_json::Value, host: &str) -> &'a serde_json::Value {
    status["hosts"]
        .as_array()
        .and_then(|h| h.iter().find(|h| h["host"] == host))
        .unwrap_or_else(|| panic!("no host {host} in {status}"))
}

#[test]
fn every_verb_from_the_operators_machine() {
    let (op, [gate, s1, mut s2]) = seed_hosts(NET);
    let text = builtin_on_agents(NET);
    let file = op.write("cluster.toml", &text);
    let (ok, out) = op.run("apply", &file, &[]);
    assert!(ok, "apply: {out}");
    healthy_everywhere(&[&gate, &s1, &s2]);

    // status: one table, every host's jails with their host, every host current.
    let table = remote_ok(&op, &file, &["status"]);
    println!("{table}");
    for jail in BUILTIN_JAILS {
        assert!(table.contains(jail), "{jail} in the table:\n{table}");
    }
    for host in ["gate", "server-1", "server-2"] {
        assert!(table.contains(host), "{host} in the table:\n{table}");
    }
    assert!(
        !table.contains("BEHIND") && !table.contains("UNREACHABLE"),
        "{table}"
    );
    let status = remote_status(&op, &file);
    assert_eq!(
        status["jails"].as_array().map(Vec::len),
        Some(9),
        "{status}"
    );
    assert_eq!(status["newest_generation"], 1, "{status}");
    let app_2 = status["jails"]
        .as_array()
        .and_then(|j| j.iter().find(|j| j["name"] == "app-2"))
        .expect("app-2");
    assert_eq!(app_2["host"], "server-2");

    // Jail verbs on a remote host.
    let pid = s2.pid("app-2").expect("app-2 runs");
    assert!(remote_ok(&op, &file, &["jail", "stop", "app-2"]).contains("stopped app-2"));
    assert_eq!(s2.pid("app-2"), None, "app-2 stopped on server-2");
    // Drained first at the gate, which is on another host.
    let backends: serde_json::Value =
        serde_json::from_str(&remote_ok(&op, &file, &["gate", "backends", "--json"]))
            .expect("backends json");
    let member = backends
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == "app"))
        .and_then(|s| s["members"].as_array())
        .and_then(|m| m.iter().find(|m| m["name"] == "app-2"))
        .cloned()
        .expect("app-2 at the gate");
    assert_eq!(member["draining"], true, "{member}");
    assert!(remote_ok(&op, &file, &["jail", "start", "app-2"]).contains("started app-2"));
    s2.wait_healthy(&["app-2"], Duration::from_secs(30));
    let started = s2.pid("app-2").expect("app-2 runs again");
    assert_ne!(started, pid);
    assert!(remote_ok(&op, &file, &["jail", "restart", "app-2"]).contains("restarted app-2"));
    assert_ne!(s2.pid("app-2"), Some(started), "restarted");
    s2.wait_healthy(&["app-2"], Duration::from_secs(30));
    let (code, _, err) = remote(&op, &file, &["jail", "restart", "app-9"]);
    assert!(code != 0 && err.contains("app-9"), "{err}");

    // exec: stdout, stderr and the exit code, run as the jail on its host.
    let (code, out, err) = remote(
        &op,
        &file,
        &[
            "jail",
            "exec",
            "app-1",
            "--",
            "sh",
            "-c",
            "echo out $CITADEL_JAIL $CITADEL_HOST; echo err >&2; exit 7",
        ],
    );
    assert_eq!(code, 7, "exec's exit code: {out} {err}");
    assert_eq!(out.trim(), "out app-1 server-1");
    assert_eq!(err.trim(), "err");

    // exec's stdin, piped from here.
    let mut cat = remote_command(
        &op,
        &file,
        &[
            "jail",
            "exec",
            "app-1",
            "--",
            "sh",
            "-c",
            "tr a-z A-Z; exit 3",
        ],
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("spawn exec");
    {
        use std::io::Write;
        let mut input = cat.stdin.take().expect("stdin");
        input.write_all(b"piped in\n").expect("write stdin");
    }
    let out = cat.wait_with_output().expect("exec output");
    assert_eq!(
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).trim()
        ),
        (Some(3), "PIPED IN"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // archive: made on the jail's host, written here.
    let archive = op.dir.path().join("app-1.tar.gz");
    let out = remote_ok(
        &op,
        &file,
        &["jail", "archive", "app-1", archive.to_str().expect("path")],
    );
    assert!(out.contains("archived app-1"), "{out}");
    let bytes = std::fs::read(&archive).expect("the archive is here");
    assert!(
        bytes.len() > 100 && bytes[..2] == [0x1f, 0x8b],
        "a gzip file"
    );
    assert!(
        !s1.state
            .join("outgoing")
            .read_dir()
            .expect("dir")
            .any(|_| true),
        "server-1 keeps no copy"
    );

    // restore: sent from here to the named host; a jail made at run time is found there.
    let (code, _, err) = remote(
        &op,
        &file,
        &[
            "jail",
            "restore",
            archive.to_str().expect("path"),
            "--name",
            "app-3",
        ],
    );
    assert!(code != 0 && err.contains("--host"), "{err}");
    let out = remote_ok(
        &op,
        &file,
        &[
            "jail",
            "restore",
            archive.to_str().expect("path"),
            "--name",
            "app-3",
            "--host",
            "server-2",
        ],
    );
    assert!(
        out.contains("app-3 restored from") && out.contains("server-2"),
        "{out}"
    );
    let listed = remote_ok(&op, &file, &["jail", "list"]);
    assert!(
        listed
            .lines()
            .any(|l| l.contains("app-3") && l.contains("server-2") && l.contains("state")),
        "{listed}"
    );
    assert!(remote_ok(&op, &file, &["jail", "destroy", "app-3"]).contains("destroyed app-3"));
    assert!(
        !s2.state.join("jails/app-3").exists(),
        "app-3 gone from server-2"
    );

    // logs -f: a line the jail's log gets after the follower started comes through.
    let mut follow = KillOnDrop(
        remote_command(&op, &file, &["jail", "logs", "-f", "-n", "1", "app-1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn logs -f"),
    );
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = follow.0.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // The tail (one line) first: the follower is connected.
    rx.recv_timeout(Duration::from_secs(20))
        .expect("logs -f prints the tail");
    let marker = format!("remote-follow-{}", std::process::id());
    {
        use std::io::Write;
        let mut log = std::fs::OpenOptions::new()
            .append(true)
            .open(s1.state.join("jails/app-1/logs/console.log"))
            .expect("app-1's log");
        writeln!(log, "{marker}").expect("append");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains(&marker) => break,
            Ok(_) => continue,
            Err(_) => panic!("logs -f did not relay the new line within 10 s"),
        }
    }
    // Ctrl-C ends it.
    let _ = Command::new("kill")
        .args(["-INT", &follow.0.id().to_string()])
        .status();
    wait_for("logs -f ends on Ctrl-C", Duration::from_secs(5), || {
        follow.0.try_wait().ok().flatten()
    });

    // db status, through a host that runs a db member.
    let db = remote_ok(&op, &file, &["db", "status"]);
    for member in ["db-1", "db-2", "witness"] {
        assert!(db.contains(member), "{db}");
    }
    let db: serde_json::Value =
        serde_json::from_str(&remote_ok(&op, &file, &["db", "status", "--json"])).expect("json");
    assert!(db["leader"]["name"].is_string(), "a leader: {db}");

    // gate backends, through the gate's host.
    wait_for(
        "app-1 in the gate's rotation",
        Duration::from_secs(30),
        || {
            let backends = remote_ok(&op, &file, &["gate", "backends", "--json"]);
            in_rotation(backends.as_bytes(), "app", "app-1").then_some(())
        },
    );
    let table = remote_ok(&op, &file, &["gate", "backends"]);
    assert!(
        table.contains("app-1") && table.contains("app-2"),
        "{table}"
    );
    assert!(
        remote_ok(
            &op,
            &file,
            &["gate", "ban", "203.0.113.9", "--reason", "remote"]
        )
        .contains("banned 203.0.113.9")
    );
    let bans = remote_ok(&op, &file, &["gate", "bans"]);
    assert!(
        bans.contains("203.0.113.9") && bans.contains("remote"),
        "{bans}"
    );
    remote_ok(&op, &file, &["gate", "unban", "203.0.113.9"]);
    assert!(!remote_ok(&op, &file, &["gate", "bans"]).contains("203.0.113.9"));

    // An app key made remotely works through the gate.
    let key: serde_json::Value = serde_json::from_str(&remote_ok(
        &op,
        &file,
        &["app", "key", "create", "remote", "--json"],
    ))
    .expect("key json");
    let token = key["token"].as_str().expect("token");
    let listed = remote_ok(&op, &file, &["app", "key", "list"]);
    assert!(listed.contains("remote"), "{listed}");
    wait_for(
        "the new key accepted through the gate",
        Duration::from_secs(20),
        || {
            let out = Command::new("curl")
                .args(["-sf", "--max-time", "3", "-H"])
                .arg(format!("X-Api-Key: {token}"))
                .arg(format!("http://{NET}.0.1:8080/v1/remote"))
                .output()
                .ok()?;
            out.status.success().then_some(())
        },
    );

    // An agent down: status names it with the reason, its jails as unknown; a jail verb on it
    // says which host, where, and what to check.
    let s2_dir = std::mem::replace(&mut s2.dir, tempfile::tempdir().expect("tempdir"));
    let _ = Command::new("kill")
        .args(["-TERM", &s2.child.id().to_string()])
        .status();
    let _ = s2.child.wait();
    drop(s2);
    let (code, table, err) = remote(&op, &file, &["status"]);
    println!("{table}");
    assert_eq!(code, 3, "status with a host unreachable: {err}");
    assert!(err.contains("1 host(s) unreachable: server-2"), "{err}");
    assert!(
        table.contains("UNREACHABLE") && table.contains("Connection refused"),
        "{table}"
    );
    assert!(
        table.contains("? (host server-2 unreachable)") && table.contains("unknown"),
        "{table}"
    );
    let (code, _, err) = remote(&op, &file, &["jail", "restart", "app-2"]);
    assert_ne!(code, 0);
    assert!(
        err.contains(&format!("host `server-2` ({NET}.1.3:7443) unreachable"))
            && err.contains("is `citadel agent` running there?"),
        "{err}"
    );

    // An apply while it is down; back, it is BEHIND until it takes the file from a peer.
    let v2 = op.write(
        "v2.toml",
        &format!(
            "{text}{}",
            sh_jail(
                "ticker",
                "gate",
                &format!("{NET}.10.77"),
                "while true; do sleep 1; done",
                ""
            )
        ),
    );
    let (ok, out) = op.run("apply", &v2, &[]);
    assert!(ok && out.contains("server-2 is behind"), "{out}");
    let s2 = agent_in(&op, "server-2", &format!("{NET}.1.3:7443"), s2_dir);
    let status = remote_status(&op, &v2);
    let row = host_row(&status, "server-2");
    assert_eq!(
        (row["generation"].as_u64(), row["behind"].as_bool()),
        (Some(1), Some(true)),
        "server-2 back on generation 1, behind 2: {status}"
    );
    let table = remote_ok(&op, &v2, &["status"]);
    assert!(table.contains("BEHIND (generation 1 of 2"), "{table}");
    wait_for(
        "server-2 catches up from its peers",
        Duration::from_secs(30),
        || (s2.generation() == 2).then_some(()),
    );
    let status = remote_status(&op, &v2);
    assert_eq!(
        host_row(&status, "server-2")["behind"],
        false,
        "caught up: {status}"
    );
}
