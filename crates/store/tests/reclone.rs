//! Re-cloning (127.144.1.0/24): server 1 loses its disk (kill -9, data wiped, restarted
//! empty) and copies every block back from server 2 by itself, no faster than its
//! `reclone_mib_per_s`; then server 2 is killed -9 and every acknowledged object still reads
//! back exact from server 1 alone.

mod common;

use std::time::{Duration, Instant};

use common::*;

const CAP_MIB_PER_S: f64 = 20.0;

#[test]
fn a_wiped_server_reclones_itself_and_then_survives_losing_the_other() {
    let Some(venv) = pyenv() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let db_addr = "127.144.1.2:6379".parse().unwrap();
    let _redis = start_redis(db_addr, tmp.path());
    let extra = format!("catalogue_interval_secs = 0.3\nreclone_mib_per_s = {CAP_MIB_PER_S}");
    let (ip1, ip2) = ("127.144.1.11", "127.144.1.21");
    let mut s1 = StoreNode::start_with(&tmp.path().join("s1"), ip1, Some(ip2), db_addr, &extra);
    let mut s2 = StoreNode::start_with(&tmp.path().join("s2"), ip2, Some(ip1), db_addr, &extra);
    let (key, secret) = create_key(&s1.config);
    let acks = tmp.path().join("acks");
    let run = |mode: &str, endpoints: String| {
        s3_load(&venv, mode, &endpoints, (&key, &secret), tmp.path(), 250)
    };
    let both = format!("http://{},http://{}", s1.s3, s2.s3);
    let out = run("load", both).output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("LOAD DONE"),
        "load: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let acked = lines(&acks);
    assert!(acked >= 200, "only {acked} PUTs acknowledged");

    // The catalogue: both servers hold every object.
    wait_until(
        "both servers holding every object",
        Duration::from_secs(30),
        || {
            [(&s1, s1.s3), (&s2, s2.s3)].iter().all(|(n, s3)| {
                record_of(&n.config, *s3).is_some_and(|r| {
                    r["objects"] == acked && r["objects_held"] == acked && r["missing_blocks"] == 0
                })
            })
        },
    );
    // What server 1 must get back: every block an object references (a failed PUT could have
    // left an unreferenced one behind).
    let r2 = record_of(&s2.config, s2.s3).unwrap();
    let u = |k: &str| r2[k].as_u64().unwrap();
    assert_eq!(u("unreferenced_blocks"), 0, "{r2}");
    let (want_blocks, want_bytes) = (u("blocks") as usize, u("bytes"));
    assert_eq!(block_files(&s2.data), want_blocks);
    assert_eq!(block_files(&s1.data), want_blocks);

    // Server 1 loses its disk.
    s1.proc.kill();
    std::fs::remove_dir_all(&s1.data).unwrap();
    let started = Instant::now();
    s1.proc = start_store(&s1.config, &tmp.path().join("s1/store.log.2"));
    let mut saw_progress = false;
    wait_until("server 1 re-cloned", Duration::from_secs(120), || {
        let Some(r) = record_of(&s1.config, s1.s3) else {
            return false;
        };
        if r["reclone"]["active"] == true && r["reclone"]["done_blocks"].as_u64() > Some(0) {
            saw_progress = true;
        }
        r["reclone"]["active"] == false
            && r["reclone"]["finished"].as_i64() > Some(0)
            && r["reclone"]["total_blocks"].as_u64() == Some(want_blocks as u64)
            && r["objects_held"] == acked
            && r["missing_blocks"] == 0
    });
    let took = started.elapsed().as_secs_f64();
    assert_eq!(
        block_files(&s1.data),
        want_blocks,
        "every block is back on server 1"
    );
    assert!(
        block_paths(&s1.data).iter().all(|p| block_is_sound(p)),
        "every re-cloned block matches its checksum"
    );
    assert!(
        saw_progress,
        "the catalogue showed the re-clone in progress"
    );
    let floor = want_bytes as f64 / (CAP_MIB_PER_S * 1024.0 * 1024.0);
    eprintln!(
        "re-cloned {want_blocks} blocks, {want_bytes} bytes in {took:.1} s (cap allows {floor:.1} s at least)"
    );
    assert!(
        took >= floor * 0.9,
        "re-clone took {took:.1} s, faster than the {CAP_MIB_PER_S} MiB/s cap allows ({floor:.1} s)"
    );
    let metrics = http_get("127.144.1.11:9100".parse().unwrap(), "/metrics").unwrap();
    assert_eq!(
        metric(&metrics, "citadel_store_reclone_blocks_total"),
        Some(want_blocks as f64),
        "{metrics}"
    );

    // Now the other server dies: server 1 alone has everything.
    s2.proc.kill();
    let out = run("verify", format!("http://{}", s1.s3)).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(&format!("VERIFIED {acked} acknowledged")),
        "verify: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{stdout}");
}
