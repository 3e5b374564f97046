//! Real S3 clients against two real store servers (blocks on both) and a real Redis-protocol
//! db, on 127.140.0.0/24.

mod common;

use std::process::Command;

use common::*;

#[test]
fn boto3_round_trips_lists_and_refuses_bad_input() {
    let Some(venv) = pyenv() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let db_addr = "127.140.0.2:6379".parse().unwrap();
    let _redis = start_redis(db_addr, tmp.path());
    let s1 = StoreNode::start(
        &tmp.path().join("s1"),
        "127.140.0.11",
        Some("127.140.0.21"),
        db_addr,
    );
    let s2 = StoreNode::start(
        &tmp.path().join("s2"),
        "127.140.0.21",
        Some("127.140.0.11"),
        db_addr,
    );
    let (key, secret) = create_key(&s1.config);
    let out = Command::new(venv.join("bin/python"))
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/s3_boto3.py"))
        .env("ENDPOINT", format!("http://{}", s1.s3))
        .env("KEY", &key)
        .env("SECRET", &secret)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("ALL OK"),
        "boto3 script failed:\n{stdout}\n{}\nstore log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(tmp.path().join("s1/store.log")).unwrap_or_default()
    );
    // Every block written through server 1 is on both disks.
    let (b1, b2) = (block_files(&s1.data), block_files(&s2.data));
    assert!(b1 > 2500, "server 1 holds {b1} blocks");
    assert_eq!(b1, b2, "both servers hold every block");
    // Server 2 serves what server 1 stored (same db, its own disk).
    let out = Command::new(venv.join("bin/aws"))
        .args(["s3", "cp", "s3://photos/five-mib", "-"])
        .args(["--endpoint-url", &format!("http://{}", s2.s3)])
        .env("AWS_ACCESS_KEY_ID", &key)
        .env("AWS_SECRET_ACCESS_KEY", &secret)
        .env("AWS_DEFAULT_REGION", "citadel")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "aws s3 cp: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout.len(), 5 * 1024 * 1024);
}

fn run_script(
    venv: &std::path::Path,
    script: &str,
    node: &StoreNode,
    key: &str,
    secret: &str,
    log: &std::path::Path,
) {
    let out = Command::new(venv.join("bin/python"))
        .arg(format!("{}/tests/{script}", env!("CARGO_MANIFEST_DIR")))
        .env("ENDPOINT", format!("http://{}", node.s3))
        .env("KEY", key)
        .env("SECRET", secret)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("ALL OK"),
        "{script} failed:\n{stdout}\n{}\nstore log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

fn aws(
    venv: &std::path::Path,
    node: &StoreNode,
    key: &str,
    secret: &str,
    args: &[&str],
) -> std::process::Output {
    Command::new(venv.join("bin/aws"))
        .args(args)
        .args(["--endpoint-url", &format!("http://{}", node.s3)])
        .env("AWS_ACCESS_KEY_ID", key)
        .env("AWS_SECRET_ACCESS_KEY", secret)
        .env("AWS_DEFAULT_REGION", "citadel")
        .output()
        .unwrap()
}

#[test]
fn multipart_with_boto3_and_a_100_mib_aws_cli_copy() {
    let Some(venv) = pyenv() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let db_addr = "127.140.1.2:6379".parse().unwrap();
    let _redis = start_redis(db_addr, tmp.path());
    let s1 = StoreNode::start(
        &tmp.path().join("s1"),
        "127.140.1.11",
        Some("127.140.1.21"),
        db_addr,
    );
    let s2 = StoreNode::start(
        &tmp.path().join("s2"),
        "127.140.1.21",
        Some("127.140.1.11"),
        db_addr,
    );
    let (key, secret) = create_key(&s1.config);
    run_script(
        &venv,
        "s3_multipart.py",
        &s1,
        &key,
        &secret,
        &tmp.path().join("s1/store.log"),
    );

    // 100 MiB through aws-cli (multipart, 8 MiB parts), back through the other server.
    let src = tmp.path().join("big.bin");
    let mut data = vec![0u8; 100 * 1024 * 1024];
    for (i, chunk) in data.chunks_mut(8).enumerate() {
        chunk.copy_from_slice(&(i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes());
    }
    std::fs::write(&src, &data).unwrap();
    let up = aws(
        &venv,
        &s1,
        &key,
        &secret,
        &["s3", "cp", src.to_str().unwrap(), "s3://mpbucket/big.bin"],
    );
    assert!(
        up.status.success(),
        "aws s3 cp up: {}",
        String::from_utf8_lossy(&up.stderr)
    );
    let dst = tmp.path().join("back.bin");
    let down = aws(
        &venv,
        &s2,
        &key,
        &secret,
        &["s3", "cp", "s3://mpbucket/big.bin", dst.to_str().unwrap()],
    );
    assert!(
        down.status.success(),
        "aws s3 cp down: {}",
        String::from_utf8_lossy(&down.stderr)
    );
    assert!(
        std::fs::read(&dst).unwrap() == data,
        "100 MiB came back different"
    );
    let head = aws(
        &venv,
        &s2,
        &key,
        &secret,
        &[
            "s3api",
            "head-object",
            "--bucket",
            "mpbucket",
            "--key",
            "big.bin",
        ],
    );
    let head = String::from_utf8_lossy(&head.stdout);
    assert!(head.contains("-13\\\""), "a 13-part multipart ETag: {head}");
}

/// What ceph/s3-tests (bench/store/s3-tests.sh) found missing or wrong, as boto3 meets it.
#[test]
fn boto3_compat_listings_and_headers() {
    let Some(venv) = pyenv() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let db_addr = "127.140.4.2:6379".parse().unwrap();
    let _redis = start_redis(db_addr, tmp.path());
    let s1 = StoreNode::start(
        &tmp.path().join("s1"),
        "127.140.4.11",
        Some("127.140.4.21"),
        db_addr,
    );
    let _s2 = StoreNode::start(
        &tmp.path().join("s2"),
        "127.140.4.21",
        Some("127.140.4.11"),
        db_addr,
    );
    let (key, secret) = create_key(&s1.config);
    run_script(
        &venv,
        "s3_compat.py",
        &s1,
        &key,
        &secret,
        &tmp.path().join("s1/store.log"),
    );
}

/// Conditional writes and deletes (an If-None-Match race too), stored checksums,
/// UploadPartCopy and GetObjectAttributes through boto3 (`tests/s3_more.py`), then the
/// same attributes and checksums through aws-cli, reading through the other server.
#[test]
fn conditions_checksums_part_copies_and_attributes() {
    let Some(venv) = pyenv() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let db_addr = "127.140.5.2:6379".parse().unwrap();
    let _redis = start_redis(db_addr, tmp.path());
    let s1 = StoreNode::start(
        &tmp.path().join("s1"),
        "127.140.5.11",
        Some("127.140.5.21"),
        db_addr,
    );
    let s2 = StoreNode::start(
        &tmp.path().join("s2"),
        "127.140.5.21",
        Some("127.140.5.11"),
        db_addr,
    );
    let (key, secret) = create_key(&s1.config);
    run_script(
        &venv,
        "s3_more.py",
        &s1,
        &key,
        &secret,
        &tmp.path().join("s1/store.log"),
    );
    let json = |args: &[&str]| {
        let out = aws(&venv, &s2, &key, &secret, args);
        assert!(
            out.status.success(),
            "aws {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let head = json(&[
        "s3api",
        "head-object",
        "--bucket",
        "more",
        "--key",
        "sum-SHA256",
        "--checksum-mode",
        "ENABLED",
    ]);
    assert_eq!(
        head["ChecksumSHA256"], "arcu6553sHVAiX4MjW0j7I7vD4w6R+Gz9Ok0Q9lTa+0=",
        "{head}"
    );
    let attrs = json(&[
        "s3api",
        "get-object-attributes",
        "--bucket",
        "more",
        "--key",
        "copied",
        "--object-attributes",
        "ObjectSize",
        "ObjectParts",
    ]);
    assert_eq!(
        attrs["ObjectSize"].as_u64(),
        Some(2 * (6 * 1024 * 1024 + 123)),
        "{attrs}"
    );
    assert_eq!(attrs["ObjectParts"]["TotalPartsCount"], 3, "{attrs}");
}
