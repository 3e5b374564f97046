//! The foundation's promises, driven through the real binary with real processes:
//! jails run and answer on their own addresses, are restarted when killed, are reported when
//! they crash-loop, die with `citadel up`, and clone/archive/restore keep their data intact.

mod harness;

use std::process::Command;
use std::time::Duration;

use harness::*;

#[test]
fn command_jails_answer_on_their_own_addresses_and_report_healthy() {
    let mut jails = String::new();
    for (name, addr) in [
        ("web-1", "127.110.0.11"),
        ("web-2", "127.110.0.12"),
        ("web-3", "127.110.0.13"),
    ] {
        jails.push_str(&format!(
            r#"
[[jail]]
name = "{name}"
host = "h1"
role = "command"
addresses = {{ front = "{addr}" }}
command = "python3"
args = ["-m", "http.server", "--bind", "$CITADEL_ADDR_FRONT", "8000"]
env = {{ GREETING = "hello from ${{CITADEL_JAIL}}" }}
ports = [8000]
stop_grace = "3s"
health = {{ check = "http", port = 8000, path = "/", interval = "500ms" }}
"#
        ));
    }
    let up = Up::start(&cluster("127.110.0.0/24", &jails));
    up.wait_healthy(&["web-1", "web-2", "web-3"], Duration::from_secs(30));
    for (name, addr) in [
        ("web-1", "127.110.0.11"),
        ("web-2", "127.110.0.12"),
        ("web-3", "127.110.0.13"),
    ] {
        std::fs::write(up.data(name).join("who"), name).expect("write");
        let body =
            curl(&format!("http://{addr}:8000/who")).unwrap_or_else(|| panic!("{name} answers"));
        assert_eq!(
            body, name,
            "each jail serves its own data on its own address"
        );
    }

    // The table a person reads.
    let table = up.ok(&["status"]);
    for needle in [
        "JAIL",
        "HEALTH",
        "web-1",
        "front=127.110.0.11",
        "running",
        "healthy",
    ] {
        assert!(table.contains(needle), "{needle} missing from:\n{table}");
    }

    // exec runs a command as the jail: its identity, its directory.
    let out = up.ok(&[
        "jail",
        "exec",
        "web-2",
        "--",
        "sh",
        "-c",
        "echo $CITADEL_JAIL $CITADEL_ADDR_FRONT $CITADEL_ZONE \"$GREETING\"; pwd",
    ]);
    let data = up.data("web-2").canonicalize().expect("data dir");
    assert_eq!(
        out,
        format!(
            "web-2 127.110.0.12 t.internal hello from web-2\n{}\n",
            data.display()
        )
    );
    let failing = up.cli(&["jail", "exec", "web-2", "--", "sh", "-c", "exit 7"]);
    assert_eq!(
        failing.status.code(),
        Some(7),
        "exec passes the exit code on"
    );

    // logs: python's access log went to the jail's console log.
    let logs = up.ok(&["jail", "logs", "web-1", "-n", "5"]);
    assert!(logs.contains("GET /who"), "logs:\n{logs}");

    // stop and start, machine-readable.
    let stopped = up.ok(&["jail", "stop", "web-3", "--json"]);
    assert!(stopped.contains("\"done\":\"stopped\""), "{stopped}");
    assert_eq!(up.jail("web-3")["state"], "stopped");
    assert!(
        curl("http://127.110.0.13:8000/").is_none(),
        "a stopped jail does not answer"
    );
    up.ok(&["jail", "start", "web-3"]);
    up.wait_healthy(&["web-3"], Duration::from_secs(20));
}

#[test]
fn a_killed_jail_comes_back_and_a_crash_loop_is_reported() {
    let jails = format!(
        "{}{}",
        serve_jail("steady", "127.111.0.11"),
        sh_jail("doomed", "h2", "127.111.0.12", "echo starting; exit 3", "")
    );
    let up = Up::start(&cluster("127.111.0.0/24", &jails));
    up.wait_healthy(&["steady"], Duration::from_secs(20));
    let first = up.pid("steady").expect("running");
    kill9(first);
    let j = wait_for("steady restarted", Duration::from_secs(10), || {
        let j = up.jail("steady");
        (j["restarts"] == 1 && j["pid"].as_i64().is_some_and(|p| p as i32 != first)).then_some(j)
    });
    assert_eq!(j["last_exit"]["signal"], 9, "{j}");
    up.wait_healthy(&["steady"], Duration::from_secs(10));
    let table = up.ok(&["status"]);
    assert!(table.contains("SIGKILL"), "last exit shown:\n{table}");

    let doomed = wait_for(
        "doomed reported as crash-looping",
        Duration::from_secs(15),
        || {
            let j = up.jail("doomed");
            (j["state"] == "crash-looping").then_some(j)
        },
    );
    assert_eq!(doomed["last_exit"]["code"], 3, "{doomed}");
    assert!(doomed["restarts"].as_u64().unwrap_or(0) >= 2, "{doomed}");
    assert!(up.ok(&["status"]).contains("crash-looping"));
    assert!(up.ok(&["jail", "logs", "doomed"]).contains("starting"));
}

#[test]
fn killing_up_leaves_no_jail_process_behind() {
    let jails = format!(
        "{}{}",
        serve_jail("one", "127.112.0.11"),
        sh_jail(
            "forker",
            "h2",
            "127.112.0.12",
            "sleep 300 & sleep 300 & echo $! > child.pid; wait",
            ""
        )
    );
    let mut up = Up::start(&cluster("127.112.0.0/24", &jails));
    up.wait_healthy(&["one"], Duration::from_secs(20));
    let grandchild_file = up.data("forker").join("child.pid");
    let grandchild: i32 = wait_for("forker's child", Duration::from_secs(10), || {
        std::fs::read_to_string(&grandchild_file)
            .ok()?
            .trim()
            .parse()
            .ok()
    });
    let mut pids = vec![
        up.pid("one").expect("one"),
        up.pid("forker").expect("forker"),
        grandchild,
    ];
    pids.retain(|p| *p > 1);
    assert_eq!(pids.len(), 3);
    assert!(pids.iter().all(|p| alive(*p)));

    kill9(up.child.id() as i32);
    let _ = up.child.wait();
    wait_for("every jail process gone", Duration::from_secs(10), || {
        pids.iter().all(|p| !alive(*p)).then_some(())
    });
}

#[test]
fn clone_and_archive_restore_reproduce_data_byte_for_byte() {
    let up = Up::start(&cluster(
        "127.113.0.0/24",
        &serve_jail("origin", "127.113.0.11"),
    ));
    up.wait_healthy(&["origin"], Duration::from_secs(20));
    // The jail writes its own data: a binary blob and a nested file.
    up.ok(&[
        "jail", "exec", "origin", "--", "sh", "-c",
        "head -c 300000 /dev/urandom > blob && mkdir -p nested/dir && echo note > nested/dir/n.txt && ln -s blob link",
    ]);
    let blob = read(&up.data("origin").join("blob"));
    assert_eq!(blob.len(), 300_000);

    let cloned = up.ok(&["jail", "clone", "origin", "copy", "--json"]);
    let cloned: serde_json::Value = serde_json::from_str(&cloned).expect("json");
    assert_eq!(
        cloned["addresses"][0], "front=127.113.0.1",
        "first free address: {cloned}"
    );
    assert_eq!(read(&up.data("copy").join("blob")), blob);
    assert_eq!(read(&up.data("copy").join("nested/dir/n.txt")), b"note\n");
    assert_eq!(
        std::fs::read_link(up.data("copy").join("link"))
            .expect("link")
            .to_str(),
        Some("blob")
    );
    up.ok(&["jail", "start", "copy"]);
    up.wait_healthy(&["copy"], Duration::from_secs(20));
    assert_eq!(
        curl("http://127.113.0.1:8000/nested/dir/n.txt").as_deref(),
        Some("note\n")
    );

    let archive = up.dir.path().join("origin.tar.gz");
    let archive_arg = archive.to_str().expect("utf8 path");
    up.ok(&["jail", "archive", "origin", archive_arg]);
    let restored = up.ok(&["jail", "restore", archive_arg, "--name", "again", "--json"]);
    assert!(restored.contains("\"name\": \"again\""), "{restored}");
    assert_eq!(read(&up.data("again").join("blob")), blob);
    assert_eq!(read(&up.data("again").join("nested/dir/n.txt")), b"note\n");

    // A second restore under the same name is refused, and so is a restore of garbage.
    let dup = up.cli(&["jail", "restore", archive_arg, "--name", "again"]);
    assert!(!dup.status.success());
    assert!(String::from_utf8_lossy(&dup.stderr).contains("already exists"));
    let junk = up.dir.path().join("junk.tar.gz");
    std::fs::write(&junk, b"not an archive").expect("write");
    let bad = up.cli(&["jail", "restore", junk.to_str().expect("utf8")]);
    assert!(!bad.status.success());

    // Runtime jails are listed as such and can be destroyed with their data.
    let list = up.ok(&["jail", "list"]);
    assert!(list.contains("again") && list.contains("state"), "{list}");
    up.ok(&["jail", "destroy", "again"]);
    assert!(!up.data("again").exists());
}

#[test]
fn an_address_already_in_use_is_named() {
    let squatter = std::net::TcpListener::bind("127.114.0.11:8000").expect("bind squatter");
    let up = Up::start(&cluster(
        "127.114.0.0/24",
        &serve_jail("blocked", "127.114.0.11"),
    ));
    let j = wait_for("blocked fails", Duration::from_secs(20), || {
        let j = up.jail("blocked");
        (j["state"] == "failed").then_some(j)
    });
    let error = j["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("jail `blocked`") && error.contains("127.114.0.11:8000 is already in use"),
        "{error}"
    );
    drop(squatter);
    up.ok(&["jail", "start", "blocked"]);
    up.wait_healthy(&["blocked"], Duration::from_secs(20));
}

#[test]
fn invalid_files_are_refused_with_their_place() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        "[cluster]\nname = \"t\"\n[segments]\nfront = \"127.115.0.0/24\"\n[[host]]\nname = \"h\"\n[[jail]]\nname = \"a\"\nhost = \"h\"\nrole = \"command\"\ncommand = \"true\"\naddresses = { front = \"127.116.0.1\" }\nrestrat = \"always\"\n",
    )
    .expect("write");
    let path = file.to_str().expect("utf8");
    for args in [
        vec!["check", path],
        vec![
            "up",
            "--file",
            path,
            "--state",
            dir.path().join("s").to_str().expect("utf8"),
        ],
    ] {
        let out = citadel(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!(
                "{path}:12:23: error: jail `a`: 127.116.0.1 is outside segment `front`"
            )),
            "{err}"
        );
        assert!(
            err.contains(&format!("{path}:13:1: error: unknown key `restrat`")),
            "{err}"
        );
        assert!(err.contains("did you mean `restart`?"), "{err}");
    }
    assert!(
        !dir.path().join("s").exists(),
        "an invalid file starts nothing"
    );
    let ok = citadel(&["check"]);
    assert!(ok.status.success(), "the built-in cluster checks clean");
    let init = Command::new(CITADEL)
        .args(["init"])
        .arg(dir.path())
        .output()
        .expect("init");
    assert!(init.status.success());
    assert!(
        citadel(&[
            "check",
            dir.path().join("citadel.toml").to_str().expect("utf8")
        ])
        .status
        .success()
    );
}

#[test]
fn stop_escalates_to_sigkill_after_the_grace_period() {
    let jails = r#"
[[jail]]
name = "stubborn"
host = "h1"
role = "command"
addresses = { front = "127.117.0.11" }
command = "sh"
args = ["-c", "trap '' TERM; sleep 300 & echo $! > child.pid; while true; do sleep 1; done"]
stop_grace = "1s"
"#;
    let up = Up::start(&cluster("127.117.0.0/24", jails));
    let child_file = up.data("stubborn").join("child.pid");
    let child: i32 = wait_for("stubborn's child", Duration::from_secs(10), || {
        std::fs::read_to_string(&child_file)
            .ok()?
            .trim()
            .parse()
            .ok()
    });
    let leader = up.pid("stubborn").expect("running");
    let started = std::time::Instant::now();
    up.ok(&["jail", "stop", "stubborn"]);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "waited the grace period, took {took:?}"
    );
    assert!(
        took < Duration::from_secs(5),
        "then killed it, took {took:?}"
    );
    assert!(
        !alive(leader) && !alive(child),
        "the whole process group is gone"
    );
    assert_eq!(up.jail("stubborn")["last_exit"]["signal"], 9);
}

#[test]
fn logs_follow_shows_new_output() {
    let ticker = sh_jail(
        "ticker",
        "h1",
        "127.118.0.11",
        "i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.1; done",
        "",
    );
    let up = Up::start(&cluster("127.118.0.0/24", &ticker));
    let log = up.state.join("jails/ticker/logs/console.log");
    wait_for("the first ticks", Duration::from_secs(10), || {
        std::fs::read_to_string(&log)
            .ok()
            .filter(|t| t.contains("tick 3"))
            .map(|_| ())
    });
    let follower = Command::new(CITADEL)
        .args(["jail", "--state"])
        .arg(&up.state)
        .args(["logs", "-f", "-n", "1", "ticker"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("logs -f");
    let mut follower = KillOnDrop(follower);
    let mut out = follower.0.stdout.take().expect("stdout");
    let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let reader = {
        let seen = seen.clone();
        std::thread::spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; 4096];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                seen.lock()
                    .expect("lock")
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        })
    };
    // Lines written after the follower started arrive: more ticks than the one it began with.
    wait_for("new lines through logs -f", Duration::from_secs(10), || {
        (seen.lock().expect("lock").matches("tick").count() >= 4).then_some(())
    });
    drop(follower);
    let _ = reader.join();
}

#[test]
fn clear_errors_for_missing_commands_and_unwritable_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("c.toml");
    let jail = r#"
[[jail]]
name = "ghost"
host = "h1"
role = "command"
addresses = { front = "127.119.0.11" }
command = "no-such-program-citadel"
"#;
    std::fs::write(&file, cluster("127.119.0.0/24", jail)).expect("write");
    let out = citadel(&[
        "up",
        "--file",
        file.to_str().expect("utf8"),
        "--state",
        dir.path().join("s").to_str().expect("utf8"),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("jail `ghost`: command `no-such-program-citadel` was not found in PATH"),
        "{err}"
    );

    let blocker = dir.path().join("a-file");
    std::fs::write(&blocker, b"").expect("write");
    std::fs::write(
        &file,
        cluster("127.119.0.0/24", &serve_jail("fine", "127.119.0.12")),
    )
    .expect("write");
    let out = citadel(&[
        "up",
        "--file",
        file.to_str().expect("utf8"),
        "--state",
        blocker.join("state").to_str().expect("utf8"),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot create the state directory") && err.contains("--state"),
        "{err}"
    );
}

#[test]
fn an_archive_restores_into_another_cluster() {
    let first = Up::start(&cluster(
        "127.120.0.0/24",
        &serve_jail("mover", "127.120.0.11"),
    ));
    first.wait_healthy(&["mover"], Duration::from_secs(20));
    first.ok(&[
        "jail",
        "exec",
        "mover",
        "--",
        "sh",
        "-c",
        "head -c 65536 /dev/urandom > payload",
    ]);
    let payload = read(&first.data("mover").join("payload"));
    let keep = tempfile::tempdir().expect("tempdir");
    let archive = keep.path().join("mover.tar.gz");
    first.ok(&["jail", "archive", "mover", archive.to_str().expect("utf8")]);
    drop(first);

    // Another machine: other hosts, another range.
    let other = "[cluster]\nname = \"other\"\n[segments]\nfront = \"127.121.0.0/24\"\n[[host]]\nname = \"box\"\n";
    let second = Up::start(other);
    let refused = second.cli(&["jail", "restore", archive.to_str().expect("utf8")]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("host `h1`") && err.contains("--host"), "{err}");
    let restored = second.ok(&[
        "jail",
        "restore",
        archive.to_str().expect("utf8"),
        "--host",
        "box",
        "--json",
    ]);
    assert!(
        restored.contains("front=127.121.0.1"),
        "a free address of the new cluster: {restored}"
    );
    assert_eq!(read(&second.data("mover").join("payload")), payload);
    second.ok(&["jail", "start", "mover"]);
    second.wait_healthy(&["mover"], Duration::from_secs(20));
    assert_eq!(
        curl("http://127.121.0.1:8000/payload").map(|s| s.len()),
        Some(String::from_utf8_lossy(&payload).len())
    );

    // Clone with a given address.
    let out = second.ok(&[
        "jail",
        "clone",
        "mover",
        "twin",
        "--address",
        "front=127.121.0.77",
        "--json",
    ]);
    assert!(out.contains("front=127.121.0.77"), "{out}");
    let bad = second.cli(&[
        "jail",
        "clone",
        "mover",
        "bad",
        "--address",
        "front=127.9.9.9",
    ]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("outside segment `front`"));
}

#[test]
fn reload_applies_the_edited_file_and_refuses_an_invalid_one() {
    let net = "127.122.0.0/24";
    let keep = sh_jail("keep", "h1", "127.122.0.11", "exec sleep 300", "");
    let change = sh_jail("change", "h1", "127.122.0.12", "exec sleep 300", "");
    let gone = sh_jail("gone", "h2", "127.122.0.13", "exec sleep 300", "");
    let up = Up::start(&cluster(net, &format!("{keep}{change}{gone}")));
    let running = |name: &str| up.jail(name)["state"] == "running";
    wait_for("all running", Duration::from_secs(10), || {
        ["keep", "change", "gone"]
            .iter()
            .all(|n| running(n))
            .then_some(())
    });
    let keep_pid = up.pid("keep");
    let change_pid = up.pid("change");

    // An invalid edit is refused whole.
    std::fs::write(
        &up.file,
        cluster(
            net,
            &format!("{keep}{change}{gone}restart = \"sometimes\"\n"),
        ),
    )
    .expect("write");
    let refused = up.cli(&["reload"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("unknown restart policy"));
    assert_eq!(up.pid("keep"), keep_pid);

    let changed = sh_jail("change", "h1", "127.122.0.12", "exec sleep 301", "");
    let new = sh_jail("new", "h2", "127.122.0.14", "exec sleep 300", "");
    std::fs::write(&up.file, cluster(net, &format!("{keep}{changed}{new}"))).expect("write");
    let report: serde_json::Value =
        serde_json::from_str(&up.ok(&["reload", "--json"])).expect("json");
    assert_eq!(report["added"], serde_json::json!(["new"]), "{report}");
    assert_eq!(report["removed"], serde_json::json!(["gone"]), "{report}");
    assert_eq!(
        report["restarted"],
        serde_json::json!(["change"]),
        "{report}"
    );
    assert_eq!(up.pid("keep"), keep_pid, "an unchanged jail keeps running");
    assert_ne!(up.pid("change"), change_pid);
    assert!(running("new"));
    let names: Vec<String> = up.status()["jails"]
        .as_array()
        .expect("jails")
        .iter()
        .filter_map(|j| j["name"].as_str().map(String::from))
        .collect();
    assert_eq!(names, ["keep", "change", "new"]);
}

#[test]
fn reload_reconfigures_a_running_gate() {
    let net = "127.123.0.0/24";
    let gate = r#"
[[jail]]
name = "door"
host = "h1"
role = "gate"
addresses = { front = "127.123.0.2" }
ports = [9100, 5353]
health = { check = "http", port = 9100, path = "/health", interval = "500ms" }

[gate]
[[gate.listeners]]
name = "web"
bind = "127.123.0.2:8080"
service = "site"
[[gate.services]]
name = "site"
jails = ["page"]
port = 8000
health = { kind = "http", path = "/", interval_ms = 200, timeout_ms = 200, rise = 1, fall = 1 }
"#;
    let jails = format!("{}{gate}", serve_jail("page", "127.123.0.11"));
    let up = Up::start(&cluster(net, &jails));
    up.wait_healthy(&["page", "door"], Duration::from_secs(30));
    std::fs::write(up.data("page").join("index.txt"), "hello").expect("write");
    wait_for("the page through the gate", Duration::from_secs(10), || {
        curl("http://127.123.0.2:8080/index.txt").filter(|b| b == "hello")
    });
    let door_pid = up.pid("door");

    // Deny this client at the gate by editing the file: the gate re-reads its config in place.
    let denied = jails.replace(
        "[gate]\n",
        "[gate]\nfirewall = { rules = [{ action = \"deny\", source = \"127.0.0.1/32\" }] }\n",
    );
    std::fs::write(&up.file, cluster(net, &denied)).expect("write");
    let report: serde_json::Value =
        serde_json::from_str(&up.ok(&["reload", "--json"])).expect("json");
    assert_eq!(report["reloaded"], serde_json::json!(["door"]), "{report}");
    wait_for("the deny rule in force", Duration::from_secs(10), || {
        curl("http://127.123.0.2:8080/index.txt")
            .is_none()
            .then_some(())
    });
    assert_eq!(up.pid("door"), door_pid, "reloaded, not restarted");

    // A broken [gate] section is refused with its place, and nothing changes.
    let broken = jails.replace("port = 8000\nhealth", "port = \"eighty\"\nhealth");
    std::fs::write(&up.file, cluster(net, &broken)).expect("write");
    let refused = up.cli(&["reload"]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && err.contains("cluster.toml:") && err.contains("[gate]"),
        "{err}"
    );
    assert_eq!(up.pid("door"), door_pid);
}
