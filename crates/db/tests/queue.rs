//! A real job-queue library on top of the db, unmodified: RQ (python3-rq), a producer and a
//! worker, across a kill -9 of the leader. Loopback range 127.163.1.0/24.

mod common;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const PY: &str = "/usr/bin/python3";
const JOBS: usize = 150;

const JOBS_PY: &str = r#"
import os

def record(i):
    # O_APPEND: one line per run of the job, whichever horse process runs it.
    with open(os.environ["RQ_RECORD"], "a") as f:
        f.write(f"{i}\n")
    return i
"#;

const PRODUCE_PY: &str = r#"
import sys, redis, rq
from jobs import record
q = rq.Queue("work", connection=redis.Redis.from_url(sys.argv[1]))
for i in range(int(sys.argv[2])):
    q.enqueue(record, i)
print("enqueued", sys.argv[2])
"#;

struct Worker(Child);

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn records(path: &std::path::Path) -> BTreeMap<usize, usize> {
    let mut seen = BTreeMap::new();
    for line in std::fs::read_to_string(path).unwrap_or_default().lines() {
        if let Ok(i) = line.trim().parse::<usize>() {
            *seen.entry(i).or_insert(0) += 1;
        }
    }
    seen
}

#[test]
fn rq_runs_every_job_exactly_once_across_a_leader_kill() {
    let has_rq = Command::new(PY)
        .args(["-c", "import rq, redis"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_rq {
        eprintln!("SKIPPED: RQ is not installed (apt-get install python3-rq)");
        return;
    }
    let mut c = Cluster::new("127.163.1", &[false, false, true]);
    c.start_all();
    let leader = c.wait_data_leader(&[1, 2], Duration::from_secs(30));
    let follower = if leader == 1 { 2 } else { 1 };
    // Producer and worker talk to the member that will survive: a follower forwards writes
    // and serves blocking pops through the log, and after the kill it leads.
    let url = format!("redis://{}/0", c.member(follower).redis);
    let dir = c.dir.path().to_path_buf();
    std::fs::write(dir.join("jobs.py"), JOBS_PY).unwrap();
    std::fs::write(dir.join("produce.py"), PRODUCE_PY).unwrap();
    let record = dir.join("record.txt");
    let py = |args: &[&str]| {
        let mut cmd = Command::new(PY);
        cmd.args(args)
            .current_dir(&dir)
            .env("PYTHONPATH", &dir)
            .env("RQ_RECORD", &record);
        cmd
    };

    let worker_log = std::fs::File::create(dir.join("worker.log")).unwrap();
    let worker = Worker(
        py(&["-m", "rq.cli", "worker", "-u", &url, "work"])
            .stdout(worker_log.try_clone().unwrap())
            .stderr(worker_log)
            .spawn()
            .expect("start the RQ worker"),
    );
    let producer = py(&["produce.py", &url, &JOBS.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the RQ producer");

    // Kill the leader once the worker is under way (and the producer still enqueueing).
    wait_for("the worker to run 10 jobs", Duration::from_secs(60), || {
        records(&record).len() >= 10
    });
    let done_before_kill = records(&record).len();
    c.kill(leader);
    println!("killed leader {leader} after {done_before_kill} jobs");

    let out = producer.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "producer failed across the leader kill:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Every job has finished by RQ's own account (the finished registry holds them all and
    // none is started): nothing is left that could still append a line.
    let mut con = c.conn(follower);
    let finished = |con: &mut redis::Connection| -> usize {
        ok::<i64>(con, &["ZCARD", "rq:finished:work"]) as usize
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while (finished(&mut con) < JOBS || ok::<i64>(&mut con, &["ZCARD", "rq:wip:work"]) > 0)
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    let seen = records(&record);
    let missing: Vec<usize> = (0..JOBS).filter(|i| !seen.contains_key(i)).collect();
    let twice: Vec<(&usize, &usize)> = seen.iter().filter(|(_, n)| **n > 1).collect();
    let log = std::fs::read_to_string(dir.join("worker.log")).unwrap_or_default();
    assert!(
        missing.is_empty() && twice.is_empty(),
        "jobs never run: {missing:?}; run more than once: {twice:?}\nworker log:\n{log}"
    );
    assert_eq!(seen.len(), JOBS);

    let queued: i64 = ok(&mut con, &["LLEN", "rq:queue:work"]);
    let failed: i64 = ok(&mut con, &["ZCARD", "rq:failed:work"]);
    assert_eq!(queued, 0, "jobs left in the queue");
    assert_eq!(failed, 0, "failed jobs:\n{log}");
    assert_eq!(finished(&mut con), JOBS, "finished registry");
    drop(worker);
}
