//! Garbage collection (127.144.3.0/24, grace 2 s): deleting objects frees their blocks on
//! both disks while a block still referenced by another key stays; and a PUT stalled past the
//! grace, whose first block GC collects meanwhile, is refused (503) rather than acknowledged
//! with a block missing — the writer touches its blocks again before committing metadata.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

#[test]
fn deletes_free_space_and_a_stalled_put_never_commits_a_collected_block() {
    let Some(venv) = pyenv() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let db_addr = "127.144.3.2:6379".parse().unwrap();
    let _redis = start_redis(db_addr, tmp.path());
    let (ip1, ip2) = ("127.144.3.11", "127.144.3.21");
    let extra = "catalogue_interval_secs = 0.3\ngc_grace_secs = 2";
    let s1 = StoreNode::start_with(&tmp.path().join("s1"), ip1, Some(ip2), db_addr, extra);
    let s2 = StoreNode::start_with(&tmp.path().join("s2"), ip2, Some(ip1), db_addr, extra);
    let (key, secret) = create_key(&s1.config);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/s3_gc.py");
    let run = |mode: &str| {
        let out = Command::new(venv.join("bin/python"))
            .arg(script)
            .arg(mode)
            .env("ENDPOINT", format!("http://{}", s1.s3))
            .env("KEY", &key)
            .env("SECRET", &secret)
            .env("N", "10")
            .env(
                "DATA_DIRS",
                format!("{},{}", s1.data.display(), s2.data.display()),
            )
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{mode}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };
    let mib = |n: f64| n / (1024.0 * 1024.0);
    let bytes_of =
        |n: &StoreNode| record_of(&n.config, n.s3).map_or(0.0, |r| r["bytes"].as_f64().unwrap());

    run("fill");
    // 10 objects of 2 blocks each, plus one shared block for the twins.
    assert_eq!(block_files(&s1.data), 21);
    assert_eq!(block_files(&s2.data), 21);
    wait_until(
        "the catalogue counting the fill",
        Duration::from_secs(10),
        || bytes_of(&s1) > 15e6 && bytes_of(&s2) > 15e6,
    );
    let before = (bytes_of(&s1), bytes_of(&s2));
    run("delete");
    wait_until(
        "GC freeing the deleted objects' blocks",
        Duration::from_secs(30),
        || block_files(&s1.data) == 1 && block_files(&s2.data) == 1,
    );
    wait_until(
        "the catalogue showing the space freed",
        Duration::from_secs(10),
        || bytes_of(&s1) == 1048576.0 && bytes_of(&s2) == 1048576.0,
    );
    eprintln!(
        "freed {:.1} MiB on server 1, {:.1} MiB on server 2",
        mib(before.0 - bytes_of(&s1)),
        mib(before.1 - bytes_of(&s2))
    );
    // The shared block outlives more passes than the grace.
    let passes = |n: &StoreNode| {
        let m = http_get(format!("{}:9100", n.s3.ip()).parse().unwrap(), "/metrics").unwrap();
        metric(&m, "citadel_store_gc_passes_total").unwrap()
    };
    let p0 = passes(&s1);
    wait_until("10 more GC passes", Duration::from_secs(30), || {
        passes(&s1) >= p0 + 10.0
    });
    assert!(run("twin").contains("TWIN OK"));
    assert_eq!(block_files(&s1.data), 1);

    assert!(run("stall").contains("STALL OK 503"));
}
