//! `citadel up` on the built-in cluster: the source diagram on one machine. It uses the
//! built-in addresses (127.10.0.0/24, 127.20.0.0/24) and 127.0.0.1:8080, as the README test
//! does: each holds `builtin_addresses()` while it runs.

mod harness;

use std::process::{Command, Stdio};
use std::time::Duration;

use harness::*;

fn dig(name: &str) -> Vec<String> {
    let out = Command::new("dig")
        .args([
            "+short",
            "+time=1",
            "+tries=1",
            "-p",
            "5353",
            "@127.10.0.2",
            name,
        ])
        .output()
        .expect("dig (dnsutils) is installed");
    let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect();
    lines.sort();
    lines
}

#[test]
fn the_builtin_cluster_runs_the_source_diagram() {
    let _addresses = builtin_addresses();
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let child = Command::new(CITADEL)
        .args(["up", "--state"])
        .arg(&state)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("up.log")).expect("log"))
        .spawn()
        .expect("citadel up");
    let up = Up::attach(child, dir, state);
    let all = [
        "witness", "db-1", "db-2", "app-1", "app-2", "store-1", "store-2", "gate",
    ];
    up.wait_healthy(&all, Duration::from_secs(60));

    // Through the gate's public listener, both app jails answer, once the gate's own health
    // checks have taken them into rotation (the gate starts before the services it balances).
    wait_for(
        "the gate to see both app jails",
        Duration::from_secs(10),
        || {
            let backends = up.ok(&["gate", "backends"]);
            (backends
                .lines()
                .filter(|l| l.contains(" app-") && l.contains(" up "))
                .count()
                == 2)
                .then_some(())
        },
    );
    // The REST API through the gate, with an API key made by the operator.
    let key: serde_json::Value =
        serde_json::from_str(&up.ok(&["app", "key", "create", "e2e", "--json"])).expect("key json");
    let token = key["token"].as_str().expect("token").to_string();
    let api = |method: &str, path: &str, body: Option<&str>| -> (u16, String) {
        let mut cmd = Command::new("curl");
        cmd.args([
            "-s",
            "--max-time",
            "5",
            "-w",
            "\n%{http_code}",
            "-X",
            method,
        ]);
        cmd.args(["-H", &format!("X-Api-Key: {token}")]);
        if let Some(b) = body {
            cmd.args(["-H", "Content-Type: application/json", "-d", b]);
        }
        let out = cmd
            .arg(format!("http://127.0.0.1:8080{path}"))
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.parse().unwrap_or(0), body.to_string())
    };
    let (code, created) = api("POST", "/v1/patients", Some(r#"{"name":"Ada","ward":3}"#));
    assert_eq!(code, 201, "{created}");
    let id = serde_json::from_str::<serde_json::Value>(&created).expect("json")["id"]
        .as_str()
        .expect("id")
        .to_string();
    for _ in 0..8 {
        let (code, doc) = api("GET", &format!("/v1/patients/{id}"), None);
        assert_eq!((code, doc.contains("Ada")), (200, true), "{doc}");
    }
    let (code, _) = api(
        "PATCH",
        &format!("/v1/patients/{id}"),
        Some(r#"{"ward":4}"#),
    );
    assert_eq!(code, 200);
    let backends: serde_json::Value =
        serde_json::from_str(&up.ok(&["gate", "backends", "--json"])).expect("json");
    let app = backends
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == "app"))
        .expect("app service");
    for member in app["members"].as_array().expect("members") {
        assert!(
            member["requests"].as_u64().unwrap_or(0) > 0,
            "both app jails served: {member}"
        );
    }
    assert_eq!(
        curl("http://127.0.0.1:8080/v1/patients"),
        None,
        "no key, no data"
    );
    let revoked: serde_json::Value =
        serde_json::from_str(&up.ok(&["app", "key", "create", "gone", "--json"]))
            .expect("key json");
    let gone_id = revoked["id"].as_str().expect("id");
    assert!(up.ok(&["app", "key", "list"]).contains("gone"));
    up.ok(&["app", "key", "revoke", gone_id]);
    let gone_token = revoked["token"].as_str().expect("token").to_string();
    wait_for("a revoked key to get 403", Duration::from_secs(5), || {
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-H"])
            .arg(format!("X-Api-Key: {gone_token}"))
            .arg(format!("http://127.0.0.1:8080/v1/patients/{id}"))
            .output()
            .ok()?;
        (String::from_utf8_lossy(&out.stdout) == "403").then_some(())
    });

    // The replicated db: a write on db-1 is read back from db-2 (reads are linearizable).
    let redis = |addr: &str, args: &[&str]| {
        let out = Command::new("redis-cli")
            .args(["-h", addr])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    wait_for("the db to take a write", Duration::from_secs(20), || {
        (redis("127.10.0.12", &["SET", "diagram", "works"]) == "OK").then_some(())
    });
    assert_eq!(redis("127.20.0.22", &["GET", "diagram"]), "works");
    assert_eq!(dig("db.citadel.internal"), ["127.10.0.12", "127.10.0.22"]);
    let status: serde_json::Value =
        serde_json::from_str(&up.ok(&["db", "status", "--json"])).expect("json");
    assert_eq!(
        status["placement"]["held_by"],
        serde_json::json!(["db-1", "db-2"])
    );
    let members = status["members"].as_array().expect("members");
    assert_eq!(members.len(), 3, "{members:?}");
    let leader = &status["leader"];
    assert!(
        ["db-1", "db-2"].contains(&leader["name"].as_str().unwrap_or_default())
            && leader["id"].as_u64().is_some()
            && leader["redis"]
                .as_str()
                .is_some_and(|a| a.starts_with("127.20.0.")),
        "a named leader at the top level: {status}"
    );
    assert!(
        members
            .iter()
            .all(|m| m["status"].is_object() && m["error"].is_null()),
        "every member answers: {members:?}"
    );
    // The human table names members by jail name, the leader on its own line.
    let table = up.ok(&["db", "status"]);
    let leader_name = leader["name"].as_str().unwrap();
    assert!(
        table.contains("witness")
            && table
                .lines()
                .any(|l| l.starts_with(&format!("leader: {leader_name} "))),
        "{table}"
    );

    // The gate's DNS knows every jail and lists the service's healthy members.
    assert_eq!(dig("app.citadel.internal"), ["127.10.0.11", "127.10.0.21"]);
    assert_eq!(dig("db-2.back.citadel.internal"), ["127.20.0.22"]);
    assert_eq!(dig("gate.citadel.internal"), ["127.10.0.2"]);

    // Stopping an app jail drains it at the gate first; it leaves the DNS answer and the
    // rotation, and comes back when started.
    up.ok(&["jail", "stop", "app-1"]);
    for _ in 0..6 {
        let (code, doc) = api("GET", &format!("/v1/patients/{id}"), None);
        assert_eq!(
            (code, doc.contains("\"ward\":4")),
            (200, true),
            "the other app jail answers: {doc}"
        );
    }
    wait_for("app-1 out of DNS", Duration::from_secs(15), || {
        (dig("app.citadel.internal") == ["127.10.0.21"]).then_some(())
    });
    up.ok(&["jail", "start", "app-1"]);
    wait_for("app-1 back in DNS", Duration::from_secs(15), || {
        (dig("app.citadel.internal").len() == 2).then_some(())
    });

    // A ban at the gate takes effect at once and expires on time.
    up.ok(&[
        "gate",
        "ban",
        "127.0.0.1",
        "--ttl",
        "2s",
        "--reason",
        "test",
    ]);
    let bans = up.ok(&["gate", "bans"]);
    assert!(
        bans.lines()
            .next()
            .is_some_and(|h| h.contains("NET") && h.contains("EXPIRES"))
            && bans.contains("127.0.0.1/32"),
        "a table of bans: {bans}"
    );
    let bans: serde_json::Value =
        serde_json::from_str(&up.ok(&["gate", "bans", "--json"])).expect("bans json");
    assert!(bans.to_string().contains("127.0.0.1/32"), "{bans}");
    assert!(
        curl("http://127.0.0.1:8080/").is_none(),
        "a banned client gets nothing"
    );
    wait_for("the ban to expire", Duration::from_secs(10), || {
        (api("GET", &format!("/v1/patients/{id}"), None).0 == 200).then_some(())
    });
    wait_for("app-1 back in rotation", Duration::from_secs(15), || {
        up.backend_up("app", "app-1").then_some(())
    });
}
