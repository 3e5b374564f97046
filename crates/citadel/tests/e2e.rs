//! Issue 5 end to end, through the real `citadel up`: the built-in cluster (gate → two app
//! jails → two db jails + witness) moved to this test's own loopback ranges — front
//! 127.30.0.0/24, back 127.31.0.0/24, public listener 127.32.0.1:8080 — under a mixed
//! read/write load through the gate (the app's load checker), while jails are killed with
//! `kill -9` in turn, waiting for recovery between them: app-1; db-1 while it leads; the
//! witness; then server-1 as a whole (app-1 and db-1 at once).
//!
//! Asserted: no read and no write fails outside the failover windows (a window runs from the
//! kill to the later of the recovery and the app's db retry budget, plus a second of slack),
//! and every acknowledged write is present afterwards (the load checker reads each back).
//! The per-second timeline of errors is printed with the windows marked.

mod harness;

use std::time::{Duration, Instant};

use citadel_app::load::{LoadOptions, LoadReport};
use harness::*;

const GATE_URL: &str = "http://127.32.0.1:8080";
const GATE_METRICS: &str = "http://127.30.0.2:9100/metrics";
const DB_1: &str = "127.30.0.12:6379";
const DB_2: &str = "127.30.0.22:6379";
/// The load runs this long; the kills and recoveries must fit inside it.
const LOAD: Duration = Duration::from_secs(60);
/// The app's `db.retry_budget_ms` (its default; the built-in `[app]` does not change it):
/// a request that met the outage may fail this long after it.
const RETRY_BUDGET: Duration = Duration::from_secs(5);
/// Successful requests through the gate between the phases: the load has visibly resumed.
const STEADY_REQUESTS: u64 = 150;
const RECOVERY: Duration = Duration::from_secs(30);

/// The built-in cluster file with every address moved to this test's ranges.
fn cluster_file() -> String {
    let moved = include_str!("../../spec/src/builtin.toml")
        .replace("127.10.0.", "127.30.0.")
        .replace("127.20.0.", "127.31.0.")
        .replace("127.0.0.1:8080", "127.32.0.1:8080")
        .replace("127.0.0.1:8081", "127.32.0.1:8081");
    for other in ["127.10.", "127.20.", "127.0.0.1"] {
        assert!(
            !moved.contains(other),
            "the built-in file has an address the test did not move: {other}"
        );
    }
    moved
}

/// The db member that leads, as seen by the data members ("db-1"/"db-2"), if they agree.
fn db_leader() -> Option<&'static str> {
    let one = redis_info(DB_1)?;
    let two = redis_info(DB_2)?;
    let leader = one.get("raft_leader")?;
    if leader.is_empty() || two.get("raft_leader") != Some(leader) {
        return None;
    }
    if one.get("raft_id") == Some(leader) {
        Some("db-1")
    } else if two.get("raft_id") == Some(leader) {
        Some("db-2")
    } else {
        None // the witness leads for a moment while it hands over
    }
}

/// Both data members answer, agree on a data member as leader, and db-1 has applied what the
/// leader had applied when asked.
fn db_settled() -> Option<&'static str> {
    let leader = db_leader()?;
    let (l, f) = if leader == "db-1" {
        (DB_1, DB_2)
    } else {
        (DB_2, DB_1)
    };
    let applied =
        |addr| -> Option<u64> { redis_info(addr)?.get("raft_applied_index")?.parse().ok() };
    let at_leader = applied(l)?;
    wait_for("the follower to catch up", RECOVERY, || {
        (applied(f)? >= at_leader).then_some(())
    });
    Some(leader)
}

fn gate_ok_requests() -> u64 {
    metric_sum(
        GATE_METRICS,
        "gate_http_requests_total",
        &["listener=\"public\"", "code=\"2"],
    )
    .unwrap_or(0)
}

/// Waits until the gate has answered `STEADY_REQUESTS` more requests with 2xx.
fn wait_steady(what: &str) {
    let from = gate_ok_requests();
    wait_for(
        &format!("the load to run on after {what}"),
        RECOVERY,
        || (gate_ok_requests() >= from + STEADY_REQUESTS).then_some(()),
    );
}

struct Window {
    what: String,
    kill: Duration,
    recovered: Duration,
}

impl Window {
    /// The end of the window: the later of the recovery and the retry budget of a request
    /// that met the outage, plus a second of slack.
    fn end(&self) -> Duration {
        self.recovered.max(self.kill + RETRY_BUDGET) + Duration::from_secs(1)
    }

    /// Whether second `t` of the timeline overlaps this window.
    fn covers(&self, t: u64) -> bool {
        let (from, to) = (Duration::from_secs(t), Duration::from_secs(t + 1));
        from < self.end() && to > self.kill
    }
}

struct Drill<'a> {
    up: &'a Up,
    start: Instant,
    windows: Vec<Window>,
}

impl Drill<'_> {
    /// `kill -9` the jails. With `held_until`, the jails are then kept down (`citadel jail
    /// stop`: the supervisor would restart them within a fraction of a second, before the
    /// others' election timeout, and a restarted leader takes its leadership back) until that
    /// condition holds, then started again. Waits for them to be back (a new process,
    /// healthy) and for `recovered` to hold; records the window; waits for the window to
    /// close and the load to run on.
    fn kill(
        &mut self,
        what: &str,
        jails: &[&str],
        held_until: Option<(&str, &dyn Fn() -> bool)>,
        recovered: &dyn Fn(&Up) -> bool,
    ) {
        let pids: Vec<i32> = jails
            .iter()
            .map(|j| self.up.pid(j).unwrap_or_else(|| panic!("{j} runs")))
            .collect();
        let kill = self.start.elapsed();
        assert!(
            kill + RETRY_BUDGET + Duration::from_secs(3) < LOAD,
            "the drill fell behind: {what} at {kill:?} leaves no time under the load"
        );
        for &p in &pids {
            kill9(p);
        }
        eprintln!(
            "{:>6.2}s kill -9 {what} (pids {pids:?})",
            kill.as_secs_f64()
        );
        if let Some((cond, held)) = held_until {
            for j in jails {
                self.up.ok(&["jail", "stop", j]);
            }
            wait_for(cond, RECOVERY, || held().then_some(()));
            eprintln!(
                "{:>6.2}s {cond}; starting {jails:?} again",
                self.start.elapsed().as_secs_f64()
            );
            for j in jails {
                self.up.ok(&["jail", "start", j]);
            }
        }
        wait_for(&format!("{jails:?} back after {what}"), RECOVERY, || {
            let status = self.up.status();
            let list = status["jails"].as_array()?.clone();
            jails
                .iter()
                .zip(&pids)
                .all(|(j, old)| {
                    list.iter().any(|x| {
                        x["name"] == *j
                            && x["health"] == "healthy"
                            && x["pid"].as_i64().is_some_and(|p| p as i32 != *old)
                    })
                })
                .then_some(())
        });
        wait_for(
            &format!("the cluster to recover from {what}"),
            RECOVERY,
            || recovered(self.up).then_some(()),
        );
        let back = self.start.elapsed();
        eprintln!(
            "{:>6.2}s recovered from {what} ({:.2}s)",
            back.as_secs_f64(),
            (back - kill).as_secs_f64()
        );
        let window = Window {
            what: what.to_string(),
            kill,
            recovered: back,
        };
        // A whole second of the timeline outside every window before the next kill.
        let quiet = Duration::from_secs(window.end().as_secs() + 2);
        self.windows.push(window);
        let from = gate_ok_requests();
        wait_for(
            &format!("the load to run on after {what}"),
            RECOVERY,
            || {
                (self.start.elapsed() >= quiet && gate_ok_requests() >= from + STEADY_REQUESTS)
                    .then_some(())
            },
        );
    }

    /// Makes `who` ("db-1") the db leader: while the other data member leads, kill -9 it and
    /// hold it down until `who` leads.
    fn make_lead(&mut self, who: &'static str) {
        let leader = wait_for("a db leader", RECOVERY, db_settled);
        if leader == who {
            return;
        }
        let what = format!("{leader} (leader, so that {who} takes over)");
        self.kill(
            &what,
            &[leader],
            Some((&format!("{who} leads"), &|| db_leader_seen_by(who))),
            &|_| db_settled().is_some(),
        );
        assert_eq!(db_settled(), Some(who), "{who} leads");
    }
}

/// Whether `who` ("db-1"/"db-2") leads, by its own INFO.
fn db_leader_seen_by(who: &str) -> bool {
    let addr = if who == "db-1" { DB_1 } else { DB_2 };
    redis_info(addr).is_some_and(|i| i.get("role").is_some_and(|r| r == "master"))
}

fn app_1_in_rotation(up: &Up) -> bool {
    up.backend_up("app", "app-1")
}

fn print_timeline(report: &LoadReport, windows: &[Window]) {
    for w in windows {
        eprintln!(
            "window {:<40} kill at {:>5.2}s, recovered at {:>5.2}s, counted until {:>5.2}s",
            w.what,
            w.kill.as_secs_f64(),
            w.recovered.as_secs_f64(),
            w.end().as_secs_f64()
        );
    }
    eprintln!("  t   reads ok  err   writes ok  err   failover window");
    for s in &report.seconds {
        let w: Vec<&str> = windows
            .iter()
            .filter(|w| w.covers(s.t))
            .map(|w| w.what.as_str())
            .collect();
        eprintln!(
            "{:>3}s  {:>8} {:>4}  {:>9} {:>4}   {}",
            s.t,
            s.reads_ok,
            s.reads_err,
            s.writes_ok,
            s.writes_err,
            w.join(", ")
        );
    }
    eprintln!(
        "total: reads {} ok / {} failed; writes {} ok / {} failed; errors {:?}",
        report.reads_ok, report.reads_err, report.writes_ok, report.writes_err, report.errors
    );
    eprintln!(
        "acknowledged writes: {}; lost: {}; unverified: {}",
        report.acknowledged,
        report.lost.len(),
        report.unverified.len()
    );
}

#[test]
fn kill_9_in_turn_under_load_loses_no_acknowledged_write() {
    let up = Up::start(&cluster_file());
    let all = ["witness", "db-1", "db-2", "app-1", "app-2", "gate"];
    up.wait_healthy(&all, Duration::from_secs(60));
    wait_for("the gate to take both app jails", RECOVERY, || {
        (app_1_in_rotation(&up) && up.backend_up("app", "app-2")).then_some(())
    });
    let key: serde_json::Value =
        serde_json::from_str(&up.ok(&["app", "key", "create", "e2e", "--json"])).expect("key json");
    let token = key["token"].as_str().expect("token").to_string();

    let opts = LoadOptions {
        base: GATE_URL.into(),
        token: Some(token),
        collection: "e2e".into(),
        duration: LOAD,
        concurrency: 8,
        write_percent: 30,
        request_timeout: Duration::from_secs(10),
        verify_timeout: Duration::from_secs(30),
    };
    let start = Instant::now();
    let load = spawn_load(opts);
    let mut drill = Drill {
        up: &up,
        start,
        windows: Vec::new(),
    };
    wait_steady("the start");

    // 1. An app jail: the gate takes it out of rotation, and back once it is restarted.
    drill.kill("app-1", &["app-1"], None, &app_1_in_rotation);

    // 2. db-1 while it leads, held down until db-2 leads.
    drill.make_lead("db-1");
    drill.kill(
        "db-1 (leader)",
        &["db-1"],
        Some(("db-2 leads", &|| db_leader_seen_by("db-2"))),
        &|_| db_settled().is_some(),
    );

    // 3. The witness.
    drill.kill("witness", &["witness"], None, &|_| db_settled().is_some());

    // 4. Server-1 as a whole: its app and db jails at once, while db-1 leads; held down until
    //    db-2 leads.
    drill.make_lead("db-1");
    drill.kill(
        "server-1 (app-1 + db-1, leader)",
        &["app-1", "db-1"],
        Some(("db-2 leads", &|| db_leader_seen_by("db-2"))),
        &|up| app_1_in_rotation(up) && db_settled().is_some(),
    );

    let report = load
        .join()
        .expect("load thread")
        .expect("the load checker ran");
    print_timeline(&report, &drill.windows);

    assert!(
        report.acknowledged > 500,
        "too little load to show anything: {} acknowledged writes",
        report.acknowledged
    );
    assert!(
        report.lost.is_empty() && report.unverified.is_empty(),
        "acknowledged writes lost: {:?}; unverified: {:?}",
        report.lost,
        report.unverified
    );
    for s in &report.seconds {
        let inside = drill.windows.iter().any(|w| w.covers(s.t));
        assert!(
            inside || s.reads_err == 0,
            "{} reads failed at {}s, outside every failover window",
            s.reads_err,
            s.t
        );
        assert!(
            inside || s.writes_err == 0,
            "{} writes failed at {}s, outside every failover window",
            s.writes_err,
            s.t
        );
    }
    for w in &drill.windows {
        assert!(
            report
                .seconds
                .iter()
                .any(|s| s.t > w.recovered.as_secs() + 1 && s.writes_ok > 0 && s.reads_ok > 0),
            "the load never resumed after {}",
            w.what
        );
    }
}
