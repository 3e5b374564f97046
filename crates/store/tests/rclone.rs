//! rclone (Debian's) against two real store servers and a real Redis-protocol db, on
//! 127.140.2.0/24: 0 B, 1 B, 5 MiB and a multipart 100 MiB object, Range reads, a 2,500-key
//! tree listed back in full.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;

fn rclone(endpoint: &str, key: &str, secret: &str, args: &[&str]) -> Output {
    Command::new("rclone")
        .args(args)
        .args([
            "--s3-upload-cutoff",
            "8M",
            "--s3-chunk-size",
            "8M",
            "--retries",
            "1",
        ])
        .env("RCLONE_CONFIG_CIT_TYPE", "s3")
        .env("RCLONE_CONFIG_CIT_PROVIDER", "Other")
        .env("RCLONE_CONFIG_CIT_ACCESS_KEY_ID", key)
        .env("RCLONE_CONFIG_CIT_SECRET_ACCESS_KEY", secret)
        .env("RCLONE_CONFIG_CIT_ENDPOINT", endpoint)
        .env("RCLONE_CONFIG_CIT_REGION", "citadel")
        .env("RCLONE_CONFIG_CIT_FORCE_PATH_STYLE", "true")
        .env("RCLONE_CONFIG_CIT_LIST_VERSION", "2")
        .env("RCLONE_CONFIG", "/dev/null")
        // A CA bundle is irrelevant to plain-HTTP loopback, and rclone refuses to start with
        // one its transport cannot take.
        .env_remove("AWS_CA_BUNDLE")
        .output()
        .expect("rclone must be installed (apt-get install rclone)")
}

fn ok(what: &str, out: Output) -> Vec<u8> {
    assert!(
        out.status.success(),
        "rclone {what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn pattern(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn rclone_round_trips_ranges_and_lists_2500_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let db_addr = "127.140.2.2:6379".parse().unwrap();
    let _redis = start_redis(db_addr, tmp.path());
    let s1 = StoreNode::start(
        &tmp.path().join("s1"),
        "127.140.2.11",
        Some("127.140.2.21"),
        db_addr,
    );
    let s2 = StoreNode::start(
        &tmp.path().join("s2"),
        "127.140.2.21",
        Some("127.140.2.11"),
        db_addr,
    );
    let (key, secret) = create_key(&s1.config);
    let (e1, e2) = (format!("http://{}", s1.s3), format!("http://{}", s2.s3));
    let r1 = |args: &[&str]| rclone(&e1, &key, &secret, args);
    let r2 = |args: &[&str]| rclone(&e2, &key, &secret, args);
    ok("mkdir", r1(&["mkdir", "cit:files"]));

    let files = tmp.path().join("up");
    std::fs::create_dir_all(&files).unwrap();
    let sizes = [
        ("zero", 0usize),
        ("one", 1),
        ("five", 5 << 20),
        ("hundred", 100 << 20),
    ];
    for (i, (name, n)) in sizes.iter().enumerate() {
        std::fs::write(files.join(name), pattern(*n, i as u64 + 7)).unwrap();
        let src = files.join(name);
        ok(
            "copyto",
            r1(&[
                "copyto",
                src.to_str().unwrap(),
                &format!("cit:files/{name}"),
            ]),
        );
    }
    for (i, (name, n)) in sizes.iter().enumerate() {
        let want = pattern(*n, i as u64 + 7);
        let got = ok("cat", r2(&["cat", &format!("cit:files/{name}")]));
        assert!(got == want, "{name}: {} bytes back, wanted {n}", got.len());
        if *n > 100 {
            let (off, count) = (n / 2 - 50, 100);
            let got = ok(
                "cat range",
                r2(&[
                    "cat",
                    "--offset",
                    &off.to_string(),
                    "--count",
                    &count.to_string(),
                    &format!("cit:files/{name}"),
                ]),
            );
            assert!(
                got[..] == want[off..off + count],
                "{name}: range read differs"
            );
        }
    }
    // rclone's own check compares sizes and MD5 (ETag) of every file.
    ok(
        "check",
        r2(&["check", files.to_str().unwrap(), "cit:files"]),
    );

    // 2,500 keys in 10 folders, uploaded in parallel, listed back (3 pages of 1000).
    let tree = tmp.path().join("tree");
    for i in 0..2500 {
        let d = tree.join(format!("d{}", i % 10));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(format!("f{i:04}")), i.to_string()).unwrap();
    }
    ok(
        "copy tree",
        r1(&[
            "copy",
            "--transfers",
            "16",
            tree.to_str().unwrap(),
            "cit:tree",
        ]),
    );
    let listed = ok("lsf", r2(&["lsf", "-R", "--files-only", "cit:tree"]));
    let listed: Vec<&str> = std::str::from_utf8(&listed).unwrap().lines().collect();
    assert_eq!(listed.len(), 2500, "rclone lists every key");
    let dirs = ok("lsf dirs", r2(&["lsf", "--dirs-only", "cit:tree"]));
    assert_eq!(dirs.iter().filter(|b| **b == b'\n').count(), 10);
    ok(
        "check tree",
        r2(&["check", tree.to_str().unwrap(), "cit:tree"]),
    );
    assert!(Path::new(&s2.data).exists());
}
