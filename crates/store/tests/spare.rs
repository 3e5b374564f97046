//! The spare (127.144.4.0/24): with server 1 killed -9, PUTs through server 2 are
//! acknowledged with their second copy on the spare (the gate box's block holder), and so
//! are CopyObjects; then
//! server 2 is killed -9 too and server 1 comes back: it re-clones what it missed from the
//! spare, and every acknowledged object reads back exact from it alone. Once server 2 is
//! back as well, the spare's copies are dropped.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// Like `wait_until`, but answers whether the condition came true in time.
fn wait_for_record(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + within;
    while !cond() {
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

#[test]
fn a_put_acknowledged_while_one_server_is_down_survives_losing_the_other() {
    let Some(venv) = pyenv() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let db_addr = "127.144.4.2:6379".parse().unwrap();
    let _redis = start_redis(db_addr, tmp.path());
    let (ip1, ip2, spare_ip) = ("127.144.4.11", "127.144.4.21", "127.144.4.31");
    let spare_data = tmp.path().join("spare/data");
    std::fs::create_dir_all(tmp.path().join("spare")).unwrap();
    let spare_cfg = tmp.path().join("spare/spare.toml");
    std::fs::write(
        &spare_cfg,
        format!(
            "listen = \"{spare_ip}:3901\"\ndata_dir = \"{}\"\n",
            spare_data.display()
        ),
    )
    .unwrap();
    let _spare = Proc {
        child: Command::new(STORE_BIN)
            .arg("--config")
            .arg(&spare_cfg)
            .arg("spare")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(tmp.path().join("spare/spare.log")).unwrap())
            .spawn()
            .unwrap(),
    };
    let extra = format!("catalogue_interval_secs = 0.3\nspare = \"{spare_ip}:3901\"");
    let mut s1 = StoreNode::start_with(&tmp.path().join("s1"), ip1, Some(ip2), db_addr, &extra);
    let mut s2 = StoreNode::start_with(&tmp.path().join("s2"), ip2, Some(ip1), db_addr, &extra);
    let (key, secret) = create_key(&s1.config);
    let keys = (key.as_str(), secret.as_str());
    let one = |s: &StoreNode| format!("http://{}", s.s3);

    // `n` objects through `endpoint`, their keys prefixed and recorded under `name`.
    let load = |name: &str, endpoint: String, n: usize| {
        let dir = tmp.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let out = s3_load(&venv, "load", &endpoint, keys, &dir, n)
            .env("PREFIX", format!("{name}-"))
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("LOAD DONE"),
            "load: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    };

    // Some objects on both servers first.
    let a = load("a", one(&s2), 20);
    assert_eq!(
        block_files(&spare_data),
        0,
        "the spare holds nothing while both are up"
    );

    // Server 1 dies: every PUT through server 2 is still acknowledged.
    s1.proc.kill();
    let b = load("b", one(&s2), 40);
    assert_eq!(
        lines(&b.join("fails")),
        0,
        "no PUT failed while server 1 was down"
    );
    assert_eq!(lines(&b.join("acks")), 40);
    let on_spare = block_files(&spare_data);
    assert!(on_spare > 0, "the spare holds the second copies");
    // CopyObject touches its blocks before committing: with the peer down, the local ones.
    let out = s3_load(&venv, "copy", &one(&s2), keys, &a, 0)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("COPIED 20"),
        "copy while server 1 is down: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Then server 2 dies, and server 1 comes back: it has only the spare to copy from.
    s2.proc.kill();
    s1.proc = start_store(&s1.config, &tmp.path().join("s1/store.log.2"));
    let mut last = None;
    let held = wait_for_record(Duration::from_secs(60), || {
        last = record_of(&s1.config, s1.s3);
        last.as_ref().is_some_and(|r| {
            r["objects"] == 80
                && r["objects_held"] == 80
                && r["missing_blocks"] == 0
                && r["peer_up"] == false
        })
    });
    assert!(
        held,
        "server 1 never held every object from the spare: {last:?}\n{}",
        std::fs::read_to_string(tmp.path().join("s1/store.log.2")).unwrap_or_default()
    );
    for dir in [&a, &b] {
        let out = s3_load(&venv, "verify", &one(&s1), keys, dir, 0)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("VERIFIED"),
            "verify through server 1 alone: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // Server 2 returns: both hold everything, and the spare lets its copies go.
    s2.proc = start_store(&s2.config, &tmp.path().join("s2/store.log.2"));
    wait_until("the spare emptied", Duration::from_secs(60), || {
        block_files(&spare_data) == 0
    });
    assert_eq!(block_files(&s1.data), block_files(&s2.data));
    let out = s3_load(
        &venv,
        "verify",
        &format!("{},{}", one(&s1), one(&s2)),
        keys,
        &b,
        0,
    )
    .output()
    .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("VERIFIED"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
