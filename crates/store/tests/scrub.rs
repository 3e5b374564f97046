//! Scrub and read repair (127.144.2.0/24): a bit flipped in a block file on server 1's disk is
//! found by `scrub` and rewritten from server 2's copy; another, found by a GET through
//! server 1, is answered from server 2's copy and repaired on disk; a block rotten on both
//! disks is reported unrepairable and its object's GET fails rather than return wrong bytes.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn scrub_and_reads_repair_a_flipped_bit_from_the_good_copy() {
    let Some(venv) = pyenv() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let db_addr = "127.144.2.2:6379".parse().unwrap();
    let _redis = start_redis(db_addr, tmp.path());
    let (ip1, ip2) = ("127.144.2.11", "127.144.2.21");
    let extra = "catalogue_interval_secs = 0.5";
    let s1 = StoreNode::start_with(&tmp.path().join("s1"), ip1, Some(ip2), db_addr, extra);
    let s2 = StoreNode::start_with(&tmp.path().join("s2"), ip2, Some(ip1), db_addr, extra);
    let (key, secret) = create_key(&s1.config);
    let run = |mode: &str, endpoints: String| {
        s3_load(&venv, mode, &endpoints, (&key, &secret), tmp.path(), 40)
            .output()
            .unwrap()
    };
    let out = run("load", format!("http://{},http://{}", s1.s3, s2.s3));
    assert!(String::from_utf8_lossy(&out.stdout).contains("LOAD DONE"));
    let blocks = block_paths(&s1.data);
    assert!(blocks.len() >= 6, "only {} blocks", blocks.len());
    assert_eq!(blocks.len(), block_files(&s2.data));

    // 1. Scrub finds and repairs a flipped bit.
    rot(&blocks[0]);
    assert!(!block_is_sound(&blocks[0]));
    let report: serde_json::Value =
        serde_json::from_str(&store_cmd(&s1.config, &["scrub"])).unwrap();
    assert_eq!(report["checked"], blocks.len(), "{report}");
    assert_eq!(report["rotten"], 1, "{report}");
    assert_eq!(report["repaired"], 1, "{report}");
    assert!(block_is_sound(&blocks[0]), "scrub rewrote the block");
    let again: serde_json::Value =
        serde_json::from_str(&store_cmd(&s1.config, &["scrub"])).unwrap();
    assert_eq!(again["rotten"], 0, "{again}");
    wait_until(
        "the catalogue showing the scrub",
        Duration::from_secs(10),
        || record_of(&s1.config, s1.s3).is_some_and(|r| r["scrub"]["rotten"] == 0),
    );

    // 2. A GET through server 1 reads around a flipped bit and repairs it.
    rot(&blocks[1]);
    let out = run("verify", format!("http://{}", s1.s3));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("VERIFIED"),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until("read repair of the block", Duration::from_secs(10), || {
        block_is_sound(&blocks[1])
    });
    let metrics = http_get(format!("{ip1}:9100").parse().unwrap(), "/metrics").unwrap();
    assert!(
        metric(&metrics, "citadel_store_read_repairs_total") >= Some(1.0),
        "{metrics}"
    );

    // 3. Rotten on both disks: reported, and no GET returns wrong bytes.
    let name = blocks[2].file_name().unwrap().to_owned();
    let twin = block_paths(&s2.data)
        .into_iter()
        .find(|p| p.file_name() == Some(&name))
        .unwrap();
    rot(&blocks[2]);
    rot(&twin);
    let report: serde_json::Value =
        serde_json::from_str(&store_cmd(&s1.config, &["scrub"])).unwrap();
    assert_eq!(report["unrepairable"], 1, "{report}");
    let out = run("verify", format!("http://{},http://{}", s1.s3, s2.s3));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success()
            && !stdout.contains("VERIFIED")
            && !stdout.contains("LOST OR CORRUPT"),
        "a GET of the object with the twice-rotten block must fail, never succeed with other bytes: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
