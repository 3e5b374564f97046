//! Placement by capacity weight (127.141.1.0/24): three store servers of weights 1, 2 and 3
//! take a boto3 load through all three; every block is on exactly two servers, each
//! server's share follows its weight (weighted rendezvous: 21 %, 37 %, 42 % of the copies,
//! see `placement`), the catalogue counts only what is placed on each, and losing any one
//! server loses nothing: each in turn is killed -9 and every acknowledged object reads
//! back exact through the other two.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use common::*;

const WEIGHTS: [f64; 3] = [1.0, 2.0, 3.0];
/// Each server's expected share of the copies with these weights (`placement`'s tests).
const SHARES: [f64; 3] = [0.208, 0.367, 0.425];

fn bytes_of(data: &Path) -> u64 {
    block_paths(data)
        .iter()
        .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
        .sum()
}

#[test]
fn three_weighted_servers_share_blocks_by_weight_and_survive_losing_any_one() {
    let Some(venv) = pyenv() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let db_addr = "127.141.1.2:6379".parse().unwrap();
    let _redis = start_redis(db_addr, tmp.path());
    let ips = ["127.141.1.11", "127.141.1.21", "127.141.1.31"];
    let servers: Vec<String> = ips
        .iter()
        .zip(WEIGHTS)
        .enumerate()
        .map(|(i, (ip, w))| {
            format!(
                "{{ name = \"store-{}\", addr = \"{ip}:3901\", weight = {w} }}",
                i + 1
            )
        })
        .collect();
    let extra = format!(
        "catalogue_interval_secs = 0.3\nservers = [{}]",
        servers.join(", ")
    );
    let mut nodes: Vec<StoreNode> = ips
        .iter()
        .enumerate()
        .map(|(i, ip)| {
            StoreNode::start_with(&tmp.path().join(format!("s{i}")), ip, None, db_addr, &extra)
        })
        .collect();
    let (key, secret) = create_key(&nodes[0].config);
    let all: Vec<String> = nodes.iter().map(|n| format!("http://{}", n.s3)).collect();
    let run = |mode: &str, endpoints: String| {
        s3_load(&venv, mode, &endpoints, (&key, &secret), tmp.path(), 240)
    };
    let out = run("load", all.join(",")).output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("LOAD DONE"),
        "load: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let acked = lines(&tmp.path().join("acks"));
    assert!(acked >= 200, "only {acked} PUTs acknowledged");

    // Every block on exactly two servers (no server was down: no fallback copies).
    let mut holders: HashMap<String, usize> = HashMap::new();
    for n in &nodes {
        for p in block_paths(&n.data) {
            *holders
                .entry(p.file_name().unwrap().to_string_lossy().into_owned())
                .or_default() += 1;
        }
    }
    let blocks = holders.len();
    assert!(blocks > 150, "only {blocks} blocks");
    let bad: Vec<_> = holders.iter().filter(|(_, n)| **n != 2).collect();
    assert!(bad.is_empty(), "blocks not on exactly two servers: {bad:?}");

    // Shares follow the weights: by block count and by bytes.
    let counts: Vec<usize> = nodes.iter().map(|n| block_files(&n.data)).collect();
    let bytes: Vec<u64> = nodes.iter().map(|n| bytes_of(&n.data)).collect();
    let (total_c, total_b) = (
        counts.iter().sum::<usize>() as f64,
        bytes.iter().sum::<u64>() as f64,
    );
    eprintln!(
        "weights {WEIGHTS:?}: blocks {counts:?}, bytes {bytes:?}, expected shares {SHARES:?}"
    );
    for i in 0..3 {
        let (c, b) = (counts[i] as f64 / total_c, bytes[i] as f64 / total_b);
        assert!(
            (c - SHARES[i]).abs() < 0.07,
            "server {i}: {c:.3} of the blocks"
        );
        assert!(
            (b - SHARES[i]).abs() < 0.1,
            "server {i}: {b:.3} of the bytes"
        );
    }
    assert!(
        bytes[0] < bytes[1] && bytes[1] < bytes[2],
        "bytes grow with weight: {bytes:?}"
    );

    // The catalogue: each server holds every object it has a block placed on;
    // nothing is missing or misplaced.
    wait_until("every record complete", Duration::from_secs(30), || {
        nodes.iter().all(|n| {
            record_of(&n.config, n.s3).is_some_and(|r| {
                r["objects"].as_u64() > Some(0)
                    && r["objects_held"] == r["objects"]
                    && r["missing_blocks"] == 0
                    && r["misplaced_blocks"] == 0
                    && r["peer_up"] == true
                    // A pass after the last PUT (its listing saw every block).
                    && r["blocks"].as_u64() == Some(block_files(&n.data) as u64)
            })
        })
    });
    for (n, w) in nodes.iter().zip(WEIGHTS) {
        let r = record_of(&n.config, n.s3).unwrap();
        assert_eq!(r["weight"], w, "{r}");
    }

    // Losing any one server loses nothing.
    for (down, n) in nodes.iter_mut().enumerate() {
        n.proc.kill();
        let rest: Vec<String> = (0..3)
            .filter(|&i| i != down)
            .map(|i| all[i].clone())
            .collect();
        let out = run("verify", rest.join(",")).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains(&format!("VERIFIED {acked} acknowledged")),
            "with server {down} down: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        n.proc = start_store(
            &n.config,
            &n.config.with_file_name(format!("store.log.{down}")),
        );
        wait_until("server back", Duration::from_secs(20), || {
            std::net::TcpStream::connect(n.s3).is_ok()
        });
    }
}
