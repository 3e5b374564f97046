//! Issue 9's seed topology, as root, in network namespaces this test creates: a `users`
//! namespace, a `gate` box (front segment, plus a cable to users), `server-1` and `server-2`
//! (front and back), each box joined to one "switch" namespace (a bridge) per segment, and a
//! management switch the agents listen on (the harness's own; not a cluster segment). One
//! `citadel agent` per box (netns backend), each with its own state dir; the operator runs
//! `citadel apply` from the gate box. The file is the built-in cluster's jails on those boxes.
//! Addresses: front 198.18.96.0/24, back 198.18.97.0/24, users 198.18.98.0/24, management
//! 198.18.99.0/24. Namespaces are named `cth-*-PID` and removed when the test ends, failed or
//! not.
//!
//! Checked: REST through the gate from `users`; `dig` on the gate box resolves the cluster's
//! names; a server's jails answer the gate over front only, and `users` reaches neither front
//! nor back; whole-box loss of server-1 (its links down and every process of it frozen at
//! once: no FIN, no RST) under a mixed load (after a rolling apply, and `jail move` of app-1
//! and db-1 to server-2 and back under load: no read fails, no acknowledged write lost): the longest gap between successful reads, when
//! writes resume, no acknowledged write lost, and server-1 catching up when it is back;
//! a 20 s back-segment partition during writes; the gate box lost (the db keeps working with
//! two voters of three).

mod harness;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use citadel_app::load::LoadOptions;
use harness::ns::*;
use harness::*;

const GATE: &str = "198.18.98.10:8080";
const GATE_ADMIN: &str = "http://198.18.96.2:9100";
const DB_1: &str = "198.18.96.12";
const DB_2: &str = "198.18.96.22";

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The built-in cluster's jails on the namespaces' boxes (netns backend).
fn cluster_file() -> String {
    let host = |name: &str, segs: &[(&str, &str, &str)], agent: &str| {
        let addrs: Vec<String> = segs
            .iter()
            .map(|(s, a, _)| format!("{s} = \"{a}\""))
            .collect();
        let links: Vec<String> = segs
            .iter()
            .map(|(s, _, l)| format!("{s} = \"{l}\""))
            .collect();
        format!(
            "[[host]]\nname = \"{name}\"\nbackend = \"netns\"\naddresses = {{ {} }}\nlinks = {{ {} }}\nagent = \"{agent}:7443\"\n",
            addrs.join(", "),
            links.join(", ")
        )
    };
    let text = include_str!("../../spec/src/builtin.toml")
        .replace(
            "addresses = { front = \"127.10.0.2\" }",
            "addresses = { front = \"127.10.0.2\", users = \"198.18.98.10\" }",
        )
        .replace(
            "back = \"127.20.0.0/24\"",
            "users = \"198.18.98.0/24\"\nback = \"127.20.0.0/24\"",
        )
        .replace("127.10.0.", "198.18.96.")
        .replace("127.20.0.", "198.18.97.")
        .replace("127.0.0.1:808", "198.18.98.10:808")
        .replace(
            "[[host]]\nname = \"gate\"\n",
            &host(
                "gate",
                &[
                    ("front", "198.18.96.1", "eth1"),
                    ("users", "198.18.98.1", "eth2"),
                ],
                "198.18.99.1",
            ),
        )
        .replace(
            "[[host]]\nname = \"server-1\"\n",
            &host(
                "server-1",
                &[
                    ("front", "198.18.96.201", "eth1"),
                    ("back", "198.18.97.201", "eth2"),
                ],
                "198.18.99.2",
            ),
        )
        .replace(
            "[[host]]\nname = \"server-2\"\n",
            &host(
                "server-2",
                &[
                    ("front", "198.18.96.202", "eth1"),
                    ("back", "198.18.97.202", "eth2"),
                ],
                "198.18.99.3",
            ),
        )
        // A request stuck on a frozen box must fail over within a second, not 30.
        .replace(
            "port = 8000\npolicy",
            "port = 8000\nresponse_timeout_ms = 1000\npolicy",
        )
        .replace("auth = { required = true }", "auth = { required = false }");
    for moved in ["127.10.", "127.20.", "127.0.0.1"] {
        assert!(!text.contains(moved), "an address not moved: {moved}");
    }
    assert_eq!(text.matches("backend = \"netns\"").count(), 3);
    assert!(text.contains("response_timeout_ms = 1000"));
    text
}

/// Processes stopped by the test: continued if the test ends with them still stopped, so the
/// agents can be stopped and the namespaces removed.
#[derive(Default)]
struct Frozen(Mutex<Vec<i32>>);

impl Frozen {
    fn signal(pids: &[i32], sig: nix::sys::signal::Signal) {
        for &p in pids {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), sig);
        }
    }

    fn freeze(&self, pids: Vec<i32>) {
        Self::signal(&pids, nix::sys::signal::Signal::SIGSTOP);
        self.0.lock().expect("lock").extend(pids);
    }

    fn thaw(&self) {
        let pids = std::mem::take(&mut *self.0.lock().expect("lock"));
        Self::signal(&pids, nix::sys::signal::Signal::SIGCONT);
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        self.thaw();
    }
}

/// `root` and every process descended from it.
fn tree(root: i32) -> Vec<i32> {
    let mut parents: Vec<(i32, i32)> = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        parents.push((pid, ppid));
    }
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        out.extend(parents.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    out
}

/// The test's boxes and switches. Fields drop in order: stopped processes are continued,
/// then the agents stop (their jails with them), then the namespaces go.
struct Topology {
    frozen: Frozen,
    agents: Vec<Up>,
    op: Operator,
    users: HostNs,
    gate: HostNs,
    s1: HostNs,
    s2: HostNs,
    _switches: Vec<Switch>,
}

impl Topology {
    fn build() -> Topology {
        let pid = std::process::id();
        let ns = |n: &str| HostNs::new(&format!("cth-{n}-{pid}"));
        let (users, gate, s1, s2) = (ns("users"), ns("gate"), ns("server-1"), ns("server-2"));
        let switches: Vec<Switch> = ["front", "back", "mgmt"]
            .iter()
            .map(|s| Switch::new(&format!("cth-sw-{s}-{pid}")))
            .collect();
        let tag = |t: &str| format!("{t}{}", pid % 100_000);
        let (front, back, mgmt) = (&switches[0], &switches[1], &switches[2]);
        front.plug(&gate, &tag("gf"), "eth1");
        front.plug(&s1, &tag("1f"), "eth1");
        front.plug(&s2, &tag("2f"), "eth1");
        back.plug(&s1, &tag("1b"), "eth2");
        back.plug(&s2, &tag("2b"), "eth2");
        for (i, host) in [&gate, &s1, &s2].iter().enumerate() {
            mgmt.plug(host, &tag(&format!("{i}m")), "eth3");
            host.must(&[
                "ip",
                "addr",
                "add",
                &format!("198.18.99.{}/24", i + 1),
                "dev",
                "eth3",
            ]);
        }
        // The users' side: a cable from `users` to the gate box (bridged to the gate jail).
        let (a, b) = (format!("ctx{}", tag("u")), format!("cty{}", tag("u")));
        for args in [
            vec!["link", "add", &a, "type", "veth", "peer", "name", &b],
            vec!["link", "set", &a, "netns", &users.name, "name", "eth0"],
            vec!["link", "set", &b, "netns", &gate.name, "name", "eth2"],
        ] {
            let ok = Command::new("ip").args(&args).status().expect("ip");
            assert!(ok.success(), "ip {args:?}");
        }
        users.must(&["ip", "addr", "add", "198.18.98.100/24", "dev", "eth0"]);
        users.must(&["ip", "link", "set", "eth0", "up"]);
        gate.must(&["ip", "link", "set", "eth2", "up"]);

        let op = Operator::new(&[
            ("gate", "198.18.99.1"),
            ("server-1", "198.18.99.2"),
            ("server-2", "198.18.99.3"),
        ]);
        let mut agents = Vec::new();
        for (i, (host, ns)) in [("gate", &gate), ("server-1", &s1), ("server-2", &s2)]
            .into_iter()
            .enumerate()
        {
            let mut dir = tempfile::tempdir().expect("tempdir");
            // CITADEL_TEST_KEEP=1 keeps every agent's state (its jails' logs) for a look after.
            if std::env::var_os("CITADEL_TEST_KEEP").is_some() {
                dir.disable_cleanup(true);
                println!("{host}'s state: {}", dir.path().display());
            }
            let listen = format!("198.18.99.{}:7443", i + 1);
            let mut cmd = agent_command(host, dir.path(), &listen, &op.bundle(host));
            ns.enter(&mut cmd);
            let state = dir.path().join("state");
            agents.push(Up::attach(cmd.spawn().expect("spawn agent"), dir, state));
        }
        Topology {
            frozen: Frozen::default(),
            agents,
            op,
            users,
            gate,
            s1,
            s2,
            _switches: switches,
        }
    }

    /// Like `wait_for`, but a timeout shows every agent's jails and log.
    fn wait<T>(&self, what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = check() {
                return v;
            }
            if Instant::now() > deadline {
                let mut why = String::new();
                for a in &self.agents {
                    for j in a.status()["jails"].as_array().cloned().unwrap_or_default() {
                        if j["health"] != "healthy" {
                            let name = j["name"].as_str().unwrap_or_default();
                            let logs = a.cli(&["jail", "logs", name]);
                            let text = String::from_utf8_lossy(&logs.stdout);
                            let tail: Vec<&str> = text.lines().rev().take(5).collect();
                            why += &format!("{name}:\n{}\n", tail.join("\n"));
                        }
                    }
                    let out = a.cli(&["status"]);
                    why += &format!("{}\n{}\n", String::from_utf8_lossy(&out.stdout), a.up_log());
                }
                panic!("timed out after {timeout:?} waiting for {what}:\n{why}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `citadel apply FILE` from the gate box.
    fn apply(&self, file: &std::path::Path) -> (bool, String) {
        let mut cmd = Command::new(CITADEL);
        self.gate.enter(&mut cmd);
        self.op.run_with(cmd, "apply", file, &[])
    }

    /// `citadel jail move JAIL HOST` from the gate box (the operator's file rewritten in place).
    fn move_jail(&self, file: &std::path::Path, jail: &str, host: &str) -> (bool, String) {
        let mut cmd = Command::new(CITADEL);
        self.gate.enter(&mut cmd);
        let out = cmd
            .args(["jail", "move", jail, host, "--file"])
            .arg(file)
            .arg("--dir")
            .arg(self.op.dir.path())
            .output()
            .expect("run citadel jail move");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    fn healthy(&self, jails: &[&str]) -> bool {
        all_healthy(&self.agents.iter().collect::<Vec<_>>(), jails)
    }

    /// Whether the gate has `member` of `service` up and not draining (asked on the gate box).
    fn in_rotation(&self, service: &str, member: &str) -> bool {
        let out = self.gate.run(&[
            "curl",
            "-sf",
            "--max-time",
            "2",
            &format!("{GATE_ADMIN}/backends"),
        ]);
        in_rotation(&out.stdout, service, member)
    }

    /// `redis-cli -h ADDR ARGS…` from a box that reaches it: its output, if it answered.
    fn redis(&self, from: &HostNs, addr: &str, args: &[&str]) -> Option<String> {
        let mut cmd = vec!["timeout", "3", "redis-cli", "-h", addr, "-p", "6379"];
        cmd.extend_from_slice(args);
        let out = from.run(&cmd);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    fn raft(&self, from: &HostNs, addr: &str, field: &str) -> Option<String> {
        let info = self.redis(from, addr, &["INFO"])?;
        info.lines()
            .find_map(|l| l.strip_prefix(&format!("{field}:")))
            .map(|v| v.trim().to_string())
    }

    /// Every process of a box (its agent and all it started), frozen, and its links down at
    /// once: the box stops answering without a FIN or an RST.
    fn lose(&self, ns: &HostNs, agent: usize, links: &[&str]) {
        let pids = tree(self.agents[agent].child.id() as i32);
        for l in links {
            ns.must(&["ip", "link", "set", l, "down"]);
        }
        self.frozen.freeze(pids);
    }

    fn restore(&self, ns: &HostNs, links: &[&str]) {
        self.frozen.thaw();
        for l in links {
            ns.must(&["ip", "link", "set", l, "up"]);
        }
    }
}

/// One HTTP/1.1 request on a new connection; the status code, or None on any failure.
fn http(addr: SocketAddr, method: &str, path: &str, body: &str, timeout: Duration) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr, timeout).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    s.set_write_timeout(Some(timeout)).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: gate\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).ok()?;
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// A probe through the gate from `users`: one read and one write in turn, each on a new
/// connection with a 1 s timeout, recording when each succeeded. Bounded by `limit` and by
/// 100 000 requests.
struct Probe {
    stop: Arc<AtomicBool>,
    /// Acknowledged writes so far.
    acked: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<ProbeLog>>,
}

#[derive(Default)]
struct ProbeLog {
    start: Option<Instant>,
    /// (completed at, ok) per read and per write.
    reads: Vec<(Instant, bool)>,
    writes: Vec<(Instant, bool)>,
    /// Keys of acknowledged writes with their value.
    acked: Vec<(String, u64)>,
}

impl Probe {
    fn start(users: &HostNs, tag: &'static str, limit: Duration) -> Probe {
        let stop = Arc::new(AtomicBool::new(false));
        let name = users.name.clone();
        let flag = stop.clone();
        let acked = Arc::new(AtomicUsize::new(0));
        let count = acked.clone();
        let thread = std::thread::spawn(move || {
            enter_thread(&name);
            let gate: SocketAddr = GATE.parse().expect("addr");
            let mut log = ProbeLog {
                start: Some(Instant::now()),
                ..ProbeLog::default()
            };
            let began = Instant::now();
            let t = Duration::from_secs(1);
            http(gate, "PUT", &format!("/v1/{tag}/fixed"), "{\"v\":0}", t);
            for n in 0..50_000u64 {
                if flag.load(Ordering::Relaxed) || began.elapsed() > limit {
                    break;
                }
                let read = http(gate, "GET", &format!("/v1/{tag}/fixed"), "", t);
                log.reads.push((Instant::now(), read == Some(200)));
                let key = format!("k{n}");
                let wrote = http(
                    gate,
                    "PUT",
                    &format!("/v1/{tag}/{key}"),
                    &format!("{{\"v\":{n}}}"),
                    t,
                );
                let ok = matches!(wrote, Some(200 | 201));
                log.writes.push((Instant::now(), ok));
                if ok {
                    log.acked.push((key, n));
                    count.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            log
        });
        Probe {
            stop,
            acked,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> ProbeLog {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .expect("running")
            .join()
            .expect("probe thread")
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl ProbeLog {
    /// The longest time without a successful read, over the reads completed after `from`
    /// (counted from the last success before it).
    fn failed_reads(&self) -> usize {
        self.reads.iter().filter(|(_, ok)| !ok).count()
    }

    /// Reads and writes that failed.
    fn failed(&self) -> usize {
        self.failed_reads() + self.writes.iter().filter(|(_, ok)| !ok).count()
    }

    fn read_gap(&self, from: Instant) -> Duration {
        let mut last = self
            .reads
            .iter()
            .rev()
            .find(|(t, ok)| *ok && *t <= from)
            .map(|(t, _)| *t)
            .unwrap_or(from);
        let mut gap = Duration::ZERO;
        for (t, ok) in self.reads.iter().filter(|(t, _)| *t > from) {
            if *ok {
                gap = gap.max(*t - last);
                last = *t;
            }
        }
        gap
    }

    /// How long after `from` the first write succeeded.
    fn writes_resume(&self, from: Instant) -> Option<Duration> {
        self.writes
            .iter()
            .find(|(t, ok)| *ok && *t > from)
            .map(|(t, _)| *t - from)
    }

    fn successes_after(&self, from: Instant) -> usize {
        self.writes
            .iter()
            .filter(|(t, ok)| *ok && *t > from)
            .count()
    }

    /// A per-100 ms line of reads/writes ok/failed around `from`.
    fn timeline(&self, from: Instant) -> String {
        let start = self.start.unwrap_or(from);
        let slot = |t: Instant| ((t - start).as_millis() / 100) as i64;
        let last = self
            .reads
            .iter()
            .chain(&self.writes)
            .map(|(t, _)| slot(*t))
            .max()
            .unwrap_or(0);
        let at = slot(from);
        let mut out = String::from("  ms from the event  reads ok/err  writes ok/err\n");
        // One second before, five after: the part that shows a gap.
        for s in (at - 10).max(0)..=last.min(at + 50) {
            let count = |v: &[(Instant, bool)], ok: bool| {
                v.iter().filter(|(t, o)| slot(*t) == s && *o == ok).count()
            };
            out += &format!(
                "  {:>6}  {:>3}/{:<3}  {:>3}/{:<3}\n",
                (s - at) * 100,
                count(&self.reads, true),
                count(&self.reads, false),
                count(&self.writes, true),
                count(&self.writes, false)
            );
        }
        out
    }

    /// Acknowledged writes that do not read back with their value (through the gate, from
    /// `users`).
    fn lost(&self, users: &HostNs, tag: &str) -> Vec<String> {
        let name = users.name.clone();
        let acked = self.acked.clone();
        let tag = tag.to_string();
        std::thread::spawn(move || {
            enter_thread(&name);
            let gate: SocketAddr = GATE.parse().expect("addr");
            acked
                .into_iter()
                .filter(|(key, _)| {
                    let path = format!("/v1/{tag}/{key}");
                    (0..10)
                        .all(|_| http(gate, "GET", &path, "", Duration::from_secs(2)) != Some(200))
                })
                .map(|(k, _)| k)
                .collect()
        })
        .join()
        .expect("check thread")
    }
}

/// The app's mixed load checker, run from `users` (its thread's sockets live there).
fn load_from_users(
    users: &HostNs,
    collection: &str,
    seconds: u64,
) -> std::thread::JoinHandle<Result<citadel_app::load::LoadReport, citadel_app::load::LoadError>> {
    let name = users.name.clone();
    let opts = LoadOptions {
        base: format!("http://{GATE}"),
        token: None,
        collection: collection.into(),
        duration: Duration::from_secs(seconds),
        concurrency: 4,
        write_percent: 30,
        request_timeout: Duration::from_secs(5),
        verify_timeout: Duration::from_secs(30),
    };
    spawn_load_in(opts, Some(name))
}

#[test]
fn the_seed_topology_survives_losing_a_box() {
    if !is_root() {
        println!("SKIPPED: the hosts test needs root (network namespaces)");
        return;
    }
    let began = Instant::now();
    let topo = Topology::build();
    let file = topo.op.write("cluster.toml", &cluster_file());
    let (ok, out) = topo.apply(&file);
    assert!(ok, "apply: {out}\n{}", topo.agents[0].up_log());
    assert!(
        out.contains("applied generation 1 to 3 of 3 host(s)"),
        "{out}"
    );
    topo.wait("every jail healthy", Duration::from_secs(120), || {
        topo.healthy(&BUILTIN_JAILS).then_some(())
    });
    wait_for(
        "both apps in the gate's rotation",
        Duration::from_secs(30),
        || (topo.in_rotation("app", "app-1") && topo.in_rotation("app", "app-2")).then_some(()),
    );
    println!(
        "apply → all healthy and in rotation: {:.1}s",
        began.elapsed().as_secs_f64()
    );
    for a in &topo.agents {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", a.child.id())).unwrap_or_default();
        let rss = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .unwrap_or("?");
        println!("agent {} {rss}", a.child.id());
    }

    // REST through the gate from users.
    let put = topo.users.run(&[
        "curl",
        "-sf",
        "--max-time",
        "5",
        "-X",
        "PUT",
        "-H",
        "content-type: application/json",
        "-d",
        "{\"hello\":\"users\"}",
        &format!("http://{GATE}/v1/notes/first"),
    ]);
    assert!(
        put.status.success(),
        "PUT from users: {}",
        String::from_utf8_lossy(&put.stderr)
    );
    let got = topo.users.run(&[
        "curl",
        "-sf",
        "--max-time",
        "5",
        &format!("http://{GATE}/v1/notes/first"),
    ]);
    assert!(
        String::from_utf8_lossy(&got.stdout).contains("\"hello\":\"users\""),
        "GET from users: {}",
        String::from_utf8_lossy(&got.stdout)
    );
    // The cluster's names, from the gate box.
    let dig = |name: &str| {
        let out = topo.gate.run(&[
            "dig",
            "+short",
            "+time=2",
            "@198.18.96.2",
            "-p",
            "5353",
            name,
        ]);
        let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect();
        v.sort();
        v
    };
    assert_eq!(dig("app-1.citadel.internal"), ["198.18.96.11"]);
    assert_eq!(dig("db-2.back.citadel.internal"), ["198.18.97.22"]);
    // The service's name lists the members the gate has judged healthy: both, once its
    // checks have run (apply waits for the app service, not the db's).
    wait_for(
        "db.citadel.internal → both db jails",
        Duration::from_secs(20),
        || (dig("db.citadel.internal") == [DB_1, DB_2]).then_some(()),
    );
    // A server's jails answer the gate over front only; users reach neither segment.
    let curl = |ns: &HostNs, url: &str| {
        ns.run(&["curl", "-s", "-o", "/dev/null", "--max-time", "2", url])
            .status
            .success()
    };
    assert!(
        curl(&topo.gate, "http://198.18.96.11:8000/health"),
        "gate → app-1 over front"
    );
    assert!(
        !curl(&topo.gate, "http://198.18.97.11:8000/health"),
        "gate ↛ app-1 over back"
    );
    assert!(
        !curl(&topo.users, "http://198.18.97.11:8000/health"),
        "users ↛ back"
    );
    assert!(
        !curl(&topo.users, "http://198.18.96.11:8000/health"),
        "users ↛ front"
    );

    // A rolling apply of a changed app setting under the load: no request fails.
    let changed = topo.op.write(
        "changed.toml",
        &cluster_file().replace("max_document_bytes = 65536", "max_document_bytes = 131072"),
    );
    let load = load_from_users(&topo.users, "rolling", 20);
    let probe = Probe::start(&topo.users, "rolling", Duration::from_secs(60));
    wait_for("the probe's writes", Duration::from_secs(20), || {
        (probe.acked.load(Ordering::Relaxed) >= 20).then_some(())
    });
    let rolled = Instant::now();
    let (ok, out) = topo.apply(&changed);
    let took = rolled.elapsed();
    assert!(ok, "rolling apply: {out}");
    assert!(out.contains("✓ app-1") && out.contains("✓ app-2"), "{out}");
    let log = probe.finish();
    let report = load.join().expect("load thread").expect("load ran");
    let failed = log.failed();
    println!("{}", report.timeline());
    println!("{}", log.timeline(rolled));
    println!(
        "rolling apply over netns: {:.1}s; load: {} reads, {} writes, {} failed; probe: {failed} failed\n{out}",
        took.as_secs_f64(),
        report.reads_ok,
        report.writes_ok,
        report.reads_err + report.writes_err
    );
    assert_rolled_without_failure(&report, took);
    assert_eq!(failed, 0, "probe requests failed during the rolling apply");

    // `jail move` between the boxes under the load: app-1 and then db-1 to server-2 over the
    // agents' TLS channel, and back (the box loss below needs them on server-1). A moved
    // jail keeps its addresses (and its MACs, which follow them) on the shared segments.
    let load = load_from_users(&topo.users, "moves", 90);
    let probe = Probe::start(&topo.users, "moves", Duration::from_secs(150));
    wait_for("the probe's writes", Duration::from_secs(20), || {
        (probe.acked.load(Ordering::Relaxed) >= 20).then_some(())
    });
    let db_1_id = topo
        .raft(&topo.s1, DB_1, "raft_id")
        .expect("db-1's raft id");
    let moves_began = Instant::now();
    for (jail, to, from_ns) in [
        ("app-1", "server-2", &topo.s2),
        ("db-1", "server-2", &topo.s2),
        ("db-1", "server-1", &topo.s1),
        ("app-1", "server-1", &topo.s1),
    ] {
        let t = Instant::now();
        let (ok, out) = topo.move_jail(&changed, jail, to);
        println!("move {jail} → {to}: {:.1}s", t.elapsed().as_secs_f64());
        assert!(ok, "move {jail} {to}: {out}");
        assert!(out.contains(&format!("to {to}")), "{out}");
        if jail == "db-1" {
            wait_for(
                "db-1 in the group as itself",
                Duration::from_secs(30),
                || (topo.raft(from_ns, DB_1, "raft_id")? == db_1_id).then_some(()),
            );
        } else {
            wait_for("the moved app in rotation", Duration::from_secs(30), || {
                topo.in_rotation("app", jail).then_some(())
            });
        }
    }
    let moves_took = moves_began.elapsed();
    let log = probe.finish();
    let report = load.join().expect("load thread").expect("load ran");
    let probe_failed = log.failed();
    println!("{}", report.timeline());
    println!(
        "four moves over netns: {:.1}s; load: {} reads, {} writes, {} failed; probe: {probe_failed} failed",
        moves_took.as_secs_f64(),
        report.reads_ok,
        report.writes_ok,
        report.reads_err + report.writes_err
    );
    assert_eq!(
        report.reads_err, 0,
        "reads failed during the moves: {:?}",
        report.errors
    );
    assert_eq!(log.failed_reads(), 0, "probe reads failed during the moves");
    assert_no_write_lost(&report);
    let lost = log.lost(&topo.users, "moves");
    assert!(lost.is_empty(), "acknowledged probe writes lost: {lost:?}");

    // Whole-box loss under the mixed load, of the server that holds the db leader: the
    // worst box to lose (its app and the leader go at once).
    let leader_on_2 = topo.raft(&topo.s2, DB_2, "raft_state").as_deref() == Some("Leader");
    let (lost, lost_agent, lost_db, lost_app, kept, kept_db) = if leader_on_2 {
        (&topo.s2, 2, DB_2, "app-2", &topo.s1, DB_1)
    } else {
        (&topo.s1, 1, DB_1, "app-1", &topo.s2, DB_2)
    };
    println!(
        "whole-box loss: losing {}, which holds the db leader",
        if leader_on_2 { "server-2" } else { "server-1" }
    );
    let load = load_from_users(&topo.users, "mixed", 40);
    let probe = Probe::start(&topo.users, "probe", Duration::from_secs(90));
    wait_for("the probe's writes", Duration::from_secs(20), || {
        (probe.acked.load(Ordering::Relaxed) >= 20).then_some(())
    });
    let links = ["eth1", "eth2", "eth3"];
    let lost_at = Instant::now();
    println!(
        "whole-box loss at {:?} since the epoch",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
    );
    topo.lose(lost, lost_agent, &links);
    // Held down until the load has visibly resumed.
    wait_for(
        "reads and writes resume without the lost server",
        Duration::from_secs(30),
        || {
            let out = topo.users.run(&[
                "curl",
                "-sf",
                "--max-time",
                "2",
                "-X",
                "PUT",
                "-H",
                "content-type: application/json",
                "-d",
                "{\"during\":1}",
                &format!("http://{GATE}/v1/notes/during"),
            ]);
            (out.status.success() && lost_at.elapsed() > Duration::from_secs(8)).then_some(())
        },
    );
    topo.restore(lost, &links);
    let back_at = Instant::now();
    wait_for(
        "the lost server catches up and serves again",
        Duration::from_secs(60),
        || {
            let leader = topo
                .raft(kept, kept_db, "raft_applied_index")?
                .parse::<u64>()
                .ok()?;
            let back = topo
                .raft(lost, lost_db, "raft_applied_index")?
                .parse::<u64>()
                .ok()?;
            (back >= leader && topo.in_rotation("app", lost_app)).then_some(())
        },
    );
    println!(
        "lost server back: caught up and in rotation after {:.1}s",
        back_at.elapsed().as_secs_f64()
    );
    let report = load.join().expect("load thread").expect("load ran");
    let log = probe.finish();
    println!("{}", log.timeline(lost_at));
    println!("{}", report.timeline());
    let gap = log.read_gap(lost_at);
    let resume = log.writes_resume(lost_at);
    println!(
        "whole-box loss: longest read gap {:.2}s, writes resumed after {:?}",
        gap.as_secs_f64(),
        resume.map(|d| format!("{:.2}s", d.as_secs_f64()))
    );
    assert!(
        log.successes_after(back_at) > 0,
        "the probe ran past the return"
    );
    assert!(gap <= Duration::from_secs(3), "read gap {gap:?} > 3 s");
    assert!(
        resume.is_some_and(|d| d <= Duration::from_secs(2)),
        "writes resumed after {resume:?}"
    );
    assert!(
        report.lost.is_empty() && report.unverified.is_empty(),
        "load: lost {:?}",
        report.lost
    );
    assert!(
        report.acknowledged > 100,
        "too little load: {}",
        report.acknowledged
    );
    let lost = log.lost(&topo.users, "probe");
    assert!(lost.is_empty(), "acknowledged probe writes lost: {lost:?}");

    // Back-segment partition: server-1 and server-2 cut from each other for 20 s, both still
    // on the front (the gate and the witness).
    let probe = Probe::start(&topo.users, "part", Duration::from_secs(60));
    let cut = Instant::now();
    topo.s1.must(&["ip", "link", "set", "eth2", "down"]);
    let mut leaders_seen = Vec::new();
    while cut.elapsed() < Duration::from_secs(20) {
        let one =
            topo.raft(&topo.s1, DB_1, "raft_state")
                .zip(topo.raft(&topo.s1, DB_1, "raft_term"));
        let two =
            topo.raft(&topo.s2, DB_2, "raft_state")
                .zip(topo.raft(&topo.s2, DB_2, "raft_term"));
        if let (Some((s1, t1)), Some((s2, t2))) = (&one, &two) {
            assert!(
                !(s1 == "Leader" && s2 == "Leader" && t1 == t2),
                "two leaders in term {t1}"
            );
            leaders_seen.push((s1.clone(), t1.clone(), s2.clone(), t2.clone()));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    topo.s1.must(&["ip", "link", "set", "eth2", "up"]);
    wait_for(
        "db-1 and db-2 converge after the partition",
        Duration::from_secs(60),
        || {
            let a = topo
                .raft(&topo.s1, DB_1, "raft_applied_index")?
                .parse::<u64>()
                .ok()?;
            let b = topo
                .raft(&topo.s2, DB_2, "raft_applied_index")?
                .parse::<u64>()
                .ok()?;
            (a == b && a > 0).then_some(())
        },
    );
    let log = probe.finish();
    println!(
        "partition: states seen {leaders_seen:?}\n{}",
        log.timeline(cut)
    );
    assert!(
        log.successes_after(cut) > 0,
        "writes went on during the partition"
    );
    let lost = log.lost(&topo.users, "part");
    assert!(
        lost.is_empty(),
        "acknowledged writes lost across the partition: {lost:?}"
    );

    // The gate box lost: the two servers keep the db group working (two voters of three).
    // (The gate is the service's single door until a gate pair exists.)
    let gate_links = ["eth1", "eth2", "eth3"];
    topo.lose(&topo.gate, 0, &gate_links);
    let gone = Instant::now();
    let wrote = wait_for(
        "a write on the db with the gate box gone",
        Duration::from_secs(20),
        || {
            let ok = topo.redis(&topo.s1, DB_1, &["SET", "after-gate", "kept"])? == "OK";
            ok.then(|| gone.elapsed())
        },
    );
    assert_eq!(
        topo.redis(&topo.s2, DB_2, &["GET", "after-gate"])
            .as_deref(),
        Some("kept")
    );
    println!(
        "gate box lost: the db took a write after {:.2}s",
        wrote.as_secs_f64()
    );
    topo.restore(&topo.gate, &gate_links);
    println!("hosts test: {:.0}s", began.elapsed().as_secs_f64());
}
