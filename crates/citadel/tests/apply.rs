//! `citadel plan` and `citadel apply` against real agents over mutual TLS: each "host" is a
//! `citadel agent run` with its own state dir and listen address on loopback
//! (127.126.0.0/16, process backend), started with no file — what it runs comes from apply.
//!
//! - `plan_apply_and_a_rolling_restart_under_load`: the built-in cluster spread over three
//!   hosts; plan names what each host creates; apply converges; an invalid file changes
//!   nothing; a changed app setting rolls one app at a time under a load through the gate
//!   with no failed request and no acknowledged write lost.
//! - `a_host_down_during_apply_catches_up_from_its_peers`: an unreachable host is named with
//!   the reason by plan and apply; when its agent is back it comes back to its last file and
//!   takes the newer one from a peer with no operator.

mod harness;

use std::time::{Duration, Instant};

use harness::*;

fn builtin_on_hosts() -> String {
    builtin_on_agents("127.126")
}

#[test]
fn plan_apply_and_a_rolling_restart_under_load() {
    let (op, [gate, s1, s2]) = seed_hosts("127.126");
    let file = op.write("cluster.toml", &builtin_on_hosts());

    let (ok, plan) = op.run("plan", &file, &[]);
    assert!(ok, "plan: {plan}");
    for (host, jail) in [
        ("gate", "gate"),
        ("server-1", "db-1"),
        ("server-2", "app-2"),
    ] {
        assert!(
            plan.contains(&format!("{host} (127.126.1."))
                && plan.contains(&format!("create {jail}")),
            "plan names {host} and its jail {jail}:\n{plan}"
        );
    }
    assert!(plan.contains("generation 0"), "{plan}");

    let began = Instant::now();
    let (ok, out) = op.run("apply", &file, &[]);
    assert!(ok, "apply: {out}\n{}", gate.up_log());
    assert!(
        out.contains("applied generation 1 to 3 of 3 host(s)"),
        "{out}"
    );
    healthy_everywhere(&[&gate, &s1, &s2]);
    wait_for(
        "both apps in the gate's rotation",
        Duration::from_secs(30),
        || (gate.backend_up("app", "app-1") && gate.backend_up("app", "app-2")).then_some(()),
    );
    println!(
        "apply → all healthy, in rotation: {:.1}s",
        began.elapsed().as_secs_f64()
    );
    assert_eq!(
        (gate.generation(), s1.generation(), s2.generation()),
        (1, 1, 1)
    );

    // An invalid file: refused before any host is asked; nothing changes anywhere.
    let before = (pids(&s1, &["app-1", "db-1"]), pids(&s2, &["app-2"]));
    let bad = op.write(
        "bad.toml",
        &builtin_on_hosts().replace(
            "addresses = { front = \"127.126.10.11\"",
            "addresses = { front = \"127.126.99.11\"",
        ),
    );
    let (ok, out) = op.run("apply", &bad, &[]);
    assert!(!ok, "an invalid file must be refused: {out}");
    assert!(
        out.contains("bad.toml:") && out.contains("127.126.99.11"),
        "names the file, place and address: {out}"
    );
    assert!(!out.contains("generation"), "no host was asked: {out}");
    assert_eq!(
        (gate.generation(), s1.generation(), s2.generation()),
        (1, 1, 1)
    );
    assert_eq!(
        (pids(&s1, &["app-1", "db-1"]), pids(&s2, &["app-2"])),
        before,
        "no jail restarted"
    );

    // A changed app setting: plan shows it per app; apply rolls them one at a time under load.
    let changed = op.write(
        "changed.toml",
        &builtin_on_hosts().replace("max_document_bytes = 65536", "max_document_bytes = 131072"),
    );
    let (ok, plan) = op.run("plan", &changed, &[]);
    assert!(ok, "{plan}");
    for jail in ["app-1", "app-2"] {
        assert!(plan.contains(&format!("restart {jail}")), "{plan}");
    }
    assert!(
        plan.contains("- max_document_bytes = 65536")
            && plan.contains("+ max_document_bytes = 131072"),
        "the plan shows what differs: {plan}"
    );
    assert!(
        !plan.contains("restart db-1") && !plan.contains("gate\n      "),
        "{plan}"
    );

    let key: serde_json::Value =
        serde_json::from_str(&s1.ok(&["app", "key", "create", "roll", "--json"])).expect("key");
    let token = key["token"].as_str().expect("token").to_string();
    let load = load_through_gate(
        "http://127.126.0.1:8080",
        "127.126.10.2:9100",
        token,
        "roll",
        Duration::from_secs(25),
    );
    let before = (s1.pid("app-1"), s2.pid("app-2"));
    let rolled = Instant::now();
    let (ok, out) = op.run("apply", &changed, &[]);
    let took = rolled.elapsed();
    assert!(ok, "rolling apply: {out}");
    assert!(
        out.contains("✓ app-1") && out.contains("✓ app-2"),
        "each app rolled and back in rotation: {out}"
    );
    let report = load.join().expect("load thread").expect("load ran");
    println!(
        "rolling apply took {:.1}s:\n{out}\n{}",
        took.as_secs_f64(),
        report.timeline()
    );
    assert_rolled_without_failure(&report, took);
    assert_ne!(
        (s1.pid("app-1"), s2.pid("app-2")).0,
        before.0,
        "app-1 restarted"
    );
    assert_ne!(s2.pid("app-2"), before.1, "app-2 restarted");
    let config = std::fs::read_to_string(s2.state.join("jails/app-2/app.toml")).expect("app.toml");
    assert!(config.contains("max_document_bytes = 131072"), "{config}");
    assert_eq!(
        (gate.generation(), s1.generation(), s2.generation()),
        (2, 2, 2)
    );

    // A rollout that fails stops there, names the jail, host and error, and leaves the rest
    // serving: app-1 cannot start with a bad argument, so app-2 is not touched.
    let broken = op.write(
        "broken.toml",
        &builtin_on_hosts()
            .replace("max_document_bytes = 65536", "max_document_bytes = 131072")
            .replace(
                "name = \"app-1\"\nhost = \"server-1\"\nrole = \"app\"\n",
                "name = \"app-1\"\nhost = \"server-1\"\nrole = \"app\"\nargs = [\"--no-such-flag\"]\n",
            )
            .replace(
                "name = \"app-2\"\nhost = \"server-2\"\nrole = \"app\"\n",
                "name = \"app-2\"\nhost = \"server-2\"\nrole = \"app\"\nenv = { ROLL = \"2\" }\n",
            ),
    );
    let app_2 = s2.pid("app-2");
    let (ok, out) = op.run("apply", &broken, &["--timeout", "5s"]);
    assert!(!ok, "a failed rollout fails: {out}");
    assert!(
        out.contains("rollout stopped at app-1 on server-1")
            && out.contains("jail `app-1` on host `server-1`")
            && out.contains("not restarted (still on the old config, serving): app-2"),
        "{out}"
    );
    assert_eq!(s2.pid("app-2"), app_2, "app-2 untouched");
    wait_for(
        "the service answers through the gate",
        Duration::from_secs(10),
        || curl("http://127.126.0.1:8080/health").map(|_| ()),
    );
    let (ok, plan) = op.run("plan", &changed, &[]);
    assert!(ok && plan.contains("restart app-1"), "{plan}");
    let (ok, out) = op.run("apply", &changed, &[]);
    assert!(
        ok && out.contains("✓ app-1"),
        "the good file rolls app-1 back: {out}"
    );
}

/// Command jails serving their data dir, one per host, each printing an env var it is given.
fn small_cluster(tag: &str) -> String {
    let mut text =
        String::from("[cluster]\nname = \"t\"\n[segments]\nfront = \"127.126.40.0/24\"\n");
    for (i, host) in ["a", "b", "c"].iter().enumerate() {
        text += &format!(
            "[[host]]\nname = \"{host}\"\nagent = \"127.126.3.{}:7443\"\n",
            i + 1
        );
    }
    for (i, host) in ["a", "b", "c"].iter().enumerate() {
        text += &serve_jail(&format!("web-{host}"), &format!("127.126.40.{}", i + 11)).replace(
            "host = \"h1\"",
            &format!("host = \"{host}\"\nenv = {{ TAG = \"{tag}\" }}"),
        );
    }
    text
}

fn env_tag(agent: &Up, jail: &str) -> Option<String> {
    let pid = agent.pid(jail)?;
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    env.split(|b| *b == 0)
        .find_map(|kv| kv.strip_prefix(b"TAG="))
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

#[test]
fn a_host_down_during_apply_catches_up_from_its_peers() {
    let op = Operator::new(&[
        ("a", "127.126.3.1"),
        ("b", "127.126.3.2"),
        ("c", "127.126.3.3"),
    ]);
    let a = agent(&op, "a", "127.126.3.1:7443");
    let b = agent(&op, "b", "127.126.3.2:7443");
    let mut c = agent(&op, "c", "127.126.3.3:7443");
    let v1 = op.write("v1.toml", &small_cluster("one"));
    let (ok, out) = op.run("apply", &v1, &[]);
    assert!(ok, "{out}");
    for (agent, jail) in [(&a, "web-a"), (&b, "web-b"), (&c, "web-c")] {
        agent.wait_healthy(&[jail], Duration::from_secs(30));
        assert_eq!(env_tag(agent, jail).as_deref(), Some("one"));
    }

    // Host c goes away (its agent stops, and its jails with it).
    let c_dir = std::mem::replace(&mut c.dir, tempfile::tempdir().expect("tempdir"));
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &c.child.id().to_string()])
        .status();
    let _ = c.child.wait();
    drop(c);

    let v2 = op.write("v2.toml", &small_cluster("two"));
    let (ok, plan) = op.run("plan", &v2, &[]);
    assert!(ok, "{plan}");
    assert!(
        plan.contains("c (127.126.3.3:7443): unreachable") && plan.contains("Connection refused"),
        "plan names the host and why: {plan}"
    );
    assert!(
        plan.contains("restart web-a") && plan.contains("TAG"),
        "{plan}"
    );
    let (ok, out) = op.run("apply", &v2, &[]);
    assert!(ok, "apply with a host down applies to the others: {out}");
    assert!(
        out.contains("c is behind") && out.contains("applied generation 2 to 2 of 3 host(s)"),
        "{out}"
    );
    wait_for(
        "web-a and web-b on the new file",
        Duration::from_secs(30),
        || {
            (env_tag(&a, "web-a").as_deref() == Some("two")
                && env_tag(&b, "web-b").as_deref() == Some("two"))
            .then_some(())
        },
    );

    // c's agent comes back (as systemd would restart it): its last file (generation 1) first,
    // then generation 2 from a peer, with no operator.
    let c = agent_in(&op, "c", "127.126.3.3:7443", c_dir);
    wait_for(
        "c back on its last file (generation 1) with no operator",
        Duration::from_secs(5),
        || (env_tag(&c, "web-c").as_deref() == Some("one")).then_some(()),
    );
    wait_for(
        "c catches up to generation 2",
        Duration::from_secs(30),
        || (c.generation() == 2).then_some(()),
    );
    wait_for("web-c runs the new file", Duration::from_secs(30), || {
        (env_tag(&c, "web-c").as_deref() == Some("two")).then_some(())
    });
    c.wait_healthy(&["web-c"], Duration::from_secs(30));
    assert!(
        c.up_log()
            .contains("caught up: applied generation 2 from host"),
        "{}",
        c.up_log()
    );
    let (ok, plan) = op.run("plan", &v2, &[]);
    assert!(ok, "{plan}");
    assert_eq!(plan.matches("nothing to change").count(), 3, "{plan}");
}
