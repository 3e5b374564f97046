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
