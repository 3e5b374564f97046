//! `citadel init` makes the cluster's CA and the operator's certificate (keys 0600, never
//! replaced); `citadel host add` issues a host a bundle that holds a certificate for that host
//! from that CA. No network.

mod harness;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use citadel_pki::{Bundle, Identity};
use harness::CITADEL;

fn run(args: &[&str], dir: &std::path::Path) -> std::process::Output {
    Command::new(CITADEL)
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run citadel")
}

#[test]
fn init_makes_a_ca_and_host_add_issues_bundles() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    assert!(
        run(&["host", "add", "server-1", "192.168.1.12"], d)
            .status
            .code()
            != Some(0)
    );
    let no_ca = run(&["host", "add", "server-1", "192.168.1.12"], d);
    assert!(
        String::from_utf8_lossy(&no_ca.stderr).contains("no cluster CA at"),
        "{}",
        String::from_utf8_lossy(&no_ca.stderr)
    );

    let init = run(&["init", "."], d);
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    for f in ["ca.pem", "ca.key", "operator.pem", "operator.key"] {
        let meta = std::fs::metadata(d.join("pki").join(f)).expect(f);
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{f} is private");
    }
    let ca = std::fs::read_to_string(d.join("pki/ca.pem")).expect("ca");
    // A second init (even --force) keeps the CA: every host's certificate hangs on it.
    let again = run(&["init", ".", "--force"], d);
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stdout).contains("kept the cluster CA"));
    assert_eq!(
        std::fs::read_to_string(d.join("pki/ca.pem")).expect("ca"),
        ca
    );

    let add = run(&["host", "add", "server-1", "192.168.1.12", "--json"], d);
    assert!(
        add.status.success(),
        "{}",
        String::from_utf8_lossy(&add.stderr)
    );
    let out: serde_json::Value = serde_json::from_slice(&add.stdout).expect("json");
    assert_eq!(out["host"], "server-1");
    let path = d.join("pki/hosts/server-1.bundle");
    assert_eq!(
        std::fs::metadata(&path)
            .expect("bundle")
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    let bundle = Bundle::from_toml(&std::fs::read_to_string(&path).expect("read")).expect("valid");
    assert_eq!(bundle.ca, ca, "issued by this cluster's CA");
    assert_eq!(bundle.identity(), Some(Identity::Host("server-1".into())));

    let twice = run(&["host", "add", "server-1", "192.168.1.12"], d);
    assert!(!twice.status.success(), "no silent re-issue");
    assert!(String::from_utf8_lossy(&twice.stderr).contains("--force"));
    let bad = run(&["host", "add", "no_underscores", "192.168.1.13"], d);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not a valid name"));
    let bad_addr = run(&["host", "add", "server-2", "not-an-ip"], d);
    assert!(!bad_addr.status.success());
}

/// `citadel agent run --listen … --bundle …` serves the operator over mutual TLS: the
/// operator's certificate gets the status; another cluster's operator, a host's certificate
/// used as an operator's, the wrong host name and an address nobody listens on are each
/// refused with what went wrong. Loopback 127.125.0.0/24, process backend.
#[test]
fn an_agent_serves_the_operator_over_mutual_tls_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    assert!(run(&["init", "."], d).status.success());
    let add = run(&["host", "add", "h1", "127.125.0.1"], d);
    assert!(
        add.status.success(),
        "{}",
        String::from_utf8_lossy(&add.stderr)
    );
    let cluster = d.join("agent.toml");
    std::fs::write(
        &cluster,
        harness::cluster(
            "127.125.0.0/24",
            &harness::serve_jail("web", "127.125.0.11"),
        ),
    )
    .expect("write");
    let state = d.join("state");
    let agent = harness::KillOnDrop(
        Command::new(CITADEL)
            .args(["agent", "run", "--host", "h1", "--file"])
            .arg(&cluster)
            .arg("--state")
            .arg(&state)
            .args(["--listen", "127.125.0.1:7443", "--bundle"])
            .arg(d.join("pki/hosts/h1.bundle"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(d.join("agent.log")).expect("log"))
            .spawn()
            .expect("spawn agent"),
    );
    let status = |host: &str, addr: &str, pki: &std::path::Path| {
        Command::new(CITADEL)
            .args([
                "agent", "status", "--json", "--host", host, "--addr", addr, "--dir",
            ])
            .arg(pki)
            .output()
            .expect("agent status")
    };
    let report = harness::wait_for(
        "web healthy, seen over TLS",
        std::time::Duration::from_secs(30),
        || {
            let out = status("h1", "127.125.0.1:7443", d);
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            (v["jails"][0]["name"] == "web" && v["jails"][0]["health"] == "healthy").then_some(v)
        },
    );
    assert_eq!(
        report["jails"].as_array().map(Vec::len),
        Some(1),
        "{report}"
    );

    let refused = |out: std::process::Output| {
        assert!(!out.status.success(), "must be refused");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // Another cluster's operator (its own CA): the agent's handshake refuses the certificate.
    let other = tempfile::tempdir().expect("tempdir");
    assert!(run(&["init", "."], other.path()).status.success());
    let err = refused(status("h1", "127.125.0.1:7443", other.path()));
    assert!(
        err.contains("TLS") || err.contains("closed the connection"),
        "foreign operator: {err}"
    );
    // A host's certificate from this cluster, presented as an operator's.
    let as_host = tempfile::tempdir().expect("tempdir");
    let bundle =
        Bundle::from_toml(&std::fs::read_to_string(d.join("pki/hosts/h1.bundle")).expect("bundle"))
            .expect("valid");
    let pki = as_host.path().join("pki");
    std::fs::create_dir_all(&pki).expect("mkdir");
    std::fs::write(pki.join("ca.pem"), &bundle.ca).expect("w");
    std::fs::write(pki.join("operator.pem"), &bundle.cert).expect("w");
    std::fs::write(pki.join("operator.key"), &bundle.key).expect("w");
    let err = refused(status("h1", "127.125.0.1:7443", as_host.path()));
    assert!(
        err.contains("host `h1` may not operate"),
        "host as operator: {err}"
    );
    // The agent at that address is not host h2's.
    let err = refused(status("h2", "127.125.0.1:7443", d));
    assert!(
        err.contains("host `h2`") && err.contains("TLS"),
        "wrong host: {err}"
    );
    // Nobody listens there.
    let err = refused(status("h1", "127.125.0.9:7443", d));
    assert!(err.contains("unreachable"), "no agent: {err}");
    drop(agent);

    // `agent install --listen --bundle` puts them in the unit's environment; another host's
    // bundle is refused.
    let install = |host: &str| {
        Command::new(CITADEL)
            .args(["agent", "install", "--host", host, "--file"])
            .arg(&cluster)
            .args(["--listen", "127.125.0.1:7443", "--bundle"])
            .arg(d.join("pki/hosts/h1.bundle"))
            .arg("--unit-dir")
            .arg(d.join("units"))
            .arg("--env-file")
            .arg(d.join("units/agent.env"))
            .arg("--no-start")
            .output()
            .expect("agent install")
    };
    let err = refused(install("h2"));
    assert!(err.contains("is the bundle of host `h1`"), "{err}");
    let out = install("h1");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let env = std::fs::read_to_string(d.join("units/agent.env")).expect("env");
    assert!(
        env.contains(&format!(
            "CITADEL_TLS=--listen 127.125.0.1:7443 --bundle {}\n",
            d.join("pki/hosts/h1.bundle").display()
        )),
        "{env}"
    );
}
