//! kill -9 of one server's store mid-load (127.140.3.0/24): PUTs fail while it is down
//! (no spare configured here; `spare.rs` has one), and once it is back no acknowledged
//! object is lost or corrupted, read through either server; GETs never return wrong bytes.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;

#[test]
fn kill_9_of_one_store_mid_load_loses_no_acknowledged_object() {
    let Some(venv) = pyenv() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let db_addr = "127.140.3.2:6379".parse().unwrap();
    let _redis = start_redis(db_addr, tmp.path());
    let s1 = StoreNode::start(
        &tmp.path().join("s1"),
        "127.140.3.11",
        Some("127.140.3.21"),
        db_addr,
    );
    let mut s2 = StoreNode::start(
        &tmp.path().join("s2"),
        "127.140.3.21",
        Some("127.140.3.11"),
        db_addr,
    );
    let (key, secret) = create_key(&s1.config);
    let (acks, fails, stop) = (
        tmp.path().join("acks"),
        tmp.path().join("fails"),
        tmp.path().join("stop"),
    );
    let endpoints = format!("http://{},http://{}", s1.s3, s2.s3);
    let run = |mode: &str| s3_load(&venv, mode, &endpoints, (&key, &secret), tmp.path(), 800);
    let load = run("load").stdout(Stdio::piped()).spawn().unwrap();

    wait_until("30 acknowledged PUTs", Duration::from_secs(60), || {
        lines(&acks) >= 30
    });
    s2.proc.kill(); // SIGKILL, mid-load
    wait_until(
        "PUTs failing while server 2 is down",
        Duration::from_secs(30),
        || lines(&fails) >= 10,
    );
    let acked_while_down = lines(&acks);
    let log = tmp.path().join("s2/store.log.2");
    s2.proc = start_store(&s2.config, &log);
    wait_until(
        "30 more acknowledged PUTs after server 2 is back",
        Duration::from_secs(60),
        || lines(&acks) >= acked_while_down + 30,
    );
    std::fs::write(&stop, b"").unwrap();
    let out = load.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("LOAD DONE"),
        "load: {stdout}"
    );

    let out = run("verify").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("VERIFIED"),
        "verify: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{stdout}");
    // Every acknowledged block is on both disks (the kill only lost unacknowledged writes).
    assert!(block_files(&s1.data) > 0 && block_files(&s2.data) > 0);
}
