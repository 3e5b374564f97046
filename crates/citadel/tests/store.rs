//! The store in a cluster, through the real `citadel up` (front 127.145.1.0/24, back
//! 127.145.2.0/24): one db jail and a store jail on each of two hosts. `citadel store status`
//! shows what each server holds; `citadel store scrub` scrubs both; a stopped store shows
//! stale and a PUT meanwhile is acknowledged (its second copy on the spare, a command jail
//! on a third host running `citadel store spare`); emptied and started again, the store
//! re-clones by itself, holds everything again, and the spare lets its copy go.

mod harness;

use std::process::Command;
use std::time::Duration;

use harness::*;
use serde_json::Value;

const CLUSTER: &str = r#"
[cluster]
name = "t"
[segments]
front = "127.145.1.0/24"
back = "127.145.2.0/24"
[[host]]
name = "h1"
[[host]]
name = "h2"
[[host]]
name = "h3"

[[jail]]
name = "db-1"
host = "h1"
role = "db"
addresses = { front = "127.145.1.12", back = "127.145.2.12" }
ports = [6379, 7000]
health = { check = "tcp", port = 6379 }

[[jail]]
name = "store-1"
host = "h1"
role = "store"
addresses = { front = "127.145.1.13", back = "127.145.2.13" }
ports = [3900, 3901, 9100]
health = { check = "tcp", port = 3900 }

[[jail]]
name = "store-2"
host = "h2"
role = "store"
addresses = { front = "127.145.1.23", back = "127.145.2.23" }
ports = [3900, 3901, 9100]
health = { check = "tcp", port = 3900 }

[[jail]]
name = "spare"
host = "h3"
role = "command"
addresses = { front = "127.145.1.4" }
command = "citadel"
args = ["store", "spare", "--listen", "${CITADEL_ADDR}:3901", "--data", "${CITADEL_DATA}"]
ports = [3901]
health = { check = "tcp", port = 3901 }

[store]
catalogue_interval_secs = 0.5
spare = "spare"
"#;

fn server(status: &Value, name: &str) -> Option<Value> {
    status["servers"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == name)
        .cloned()
}

fn holds(status: &Value, name: &str, objects: u64) -> bool {
    server(status, name).is_some_and(|s| {
        s["objects"] == objects
            && s["objects_held"] == objects
            && s["missing_blocks"] == 0
            && s["stale"] == false
    })
}

#[test]
fn store_status_shows_each_server_and_a_wiped_one_reclones() {
    let up = Up::start(CLUSTER);
    up.wait_healthy(
        &["db-1", "store-1", "store-2", "spare"],
        Duration::from_secs(60),
    );
    let key: Value =
        serde_json::from_str(&up.ok(&["store", "key", "create", "t", "--json"])).unwrap();
    let (id, secret) = (
        key["access_key"].as_str().unwrap(),
        key["secret_key"].as_str().unwrap(),
    );
    let body = up.dir.path().join("body");
    let content: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&body, &content).unwrap();
    let curl = |args: &[&str]| {
        Command::new("curl")
            .args([
                "-sf",
                "--max-time",
                "20",
                "--aws-sigv4",
                "aws:amz:citadel:s3",
            ])
            .args(["--user", &format!("{id}:{secret}")])
            .args(["-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD"])
            .args(args)
            .output()
            .expect("curl")
    };
    assert!(
        curl(&["-X", "PUT", "http://127.145.1.13:3900/bkt"])
            .status
            .success()
    );
    let put = curl(&[
        "-T",
        body.to_str().unwrap(),
        "http://127.145.1.13:3900/bkt/o",
    ]);
    assert!(
        put.status.success(),
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );

    let status = || -> Value {
        serde_json::from_str(&up.ok(&["store", "status", "--json"])).expect("status json")
    };
    wait_for(
        "both stores holding the object",
        Duration::from_secs(20),
        || {
            let s = status();
            (holds(&s, "store-1", 1) && holds(&s, "store-2", 1)).then_some(())
        },
    );
    let table = up.ok(&["store", "status"]);
    eprintln!("{table}");
    assert!(
        table.contains("store-1")
            && table.contains("store-2")
            && table.contains("under-replicated objects: 0"),
        "{table}"
    );
    let metrics = curl(&["http://127.145.1.23:9100/metrics"]);
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    assert!(
        metrics.contains("citadel_store_objects_held 1\n"),
        "{metrics}"
    );

    let scrub: Value =
        serde_json::from_str(&up.ok(&["store", "scrub", "--json"])).expect("scrub json");
    let reports = scrub.as_array().unwrap();
    assert_eq!(reports.len(), 2, "{scrub}");
    assert!(
        reports
            .iter()
            .all(|r| r["report"]["checked"] == 3 && r["report"]["rotten"] == 0),
        "{scrub}"
    );

    let spare_blocks = || {
        std::fs::read_dir(up.data("spare").join("blocks"))
            .map(|d| {
                d.flatten()
                    .map(|sub| std::fs::read_dir(sub.path()).map_or(0, |f| f.count()))
                    .sum::<usize>()
            })
            .unwrap_or(0)
    };
    // A PUT that came while store-2 was still starting put its second copies on the spare;
    // they go once both stores hold the blocks. Start the next step from an empty spare.
    wait_for("the spare empty", Duration::from_secs(30), || {
        (spare_blocks() == 0).then_some(())
    });

    // store-2 stops: its record goes stale. Its disk is emptied; started again, it re-clones.
    up.ok(&["jail", "stop", "store-2"]);
    wait_for("store-2 stale", Duration::from_secs(20), || {
        server(&status(), "store-2").and_then(|s| (s["stale"] == true).then_some(()))
    });
    assert!(up.ok(&["store", "status"]).contains("stale"));
    let small = up.dir.path().join("small");
    std::fs::write(&small, b"written while store-2 was down").unwrap();
    let put = curl(&[
        "-T",
        small.to_str().unwrap(),
        "http://127.145.1.13:3900/bkt/o2",
    ]);
    assert!(
        put.status.success(),
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );
    assert_eq!(spare_blocks(), 1, "the spare holds the second copy");
    std::fs::remove_dir_all(up.data("store-2").join("blocks")).unwrap();
    up.ok(&["jail", "start", "store-2"]);
    wait_for("store-2 re-cloned", Duration::from_secs(30), || {
        let s = status();
        let r = server(&s, "store-2")?;
        (holds(&s, "store-2", 2) && r["reclone"]["done_blocks"] == 4 && r["blocks"] == 4)
            .then_some(())
    });
    wait_for("the spare's copy dropped", Duration::from_secs(30), || {
        (spare_blocks() == 0).then_some(())
    });
    let got = curl(&["http://127.145.1.23:3900/bkt/o"]);
    assert!(got.status.success() && got.stdout == content);
    let got = curl(&["http://127.145.1.23:3900/bkt/o2"]);
    assert!(got.status.success() && got.stdout == b"written while store-2 was down");
}
