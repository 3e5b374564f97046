//! Drives the real `citadel` binary: a running `up` on a cluster file of the test's own, in its
//! own state directory and loopback range, and the CLI against it.

#![allow(dead_code)]

pub mod ns;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const CITADEL: &str = env!("CARGO_BIN_EXE_citadel");

pub fn citadel(args: &[&str]) -> Output {
    Command::new(CITADEL)
        .args(args)
        .output()
        .expect("run citadel")
}

/// Polls `check` every 50 ms until it returns Some, or panics after `timeout` with `what`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn alive(pid: i32) -> bool {
    // A zombie still "exists" for kill(0); look at its state instead.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

pub fn kill9(pid: i32) {
    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
}

/// A `citadel up` running a cluster file, stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Up {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub state: PathBuf,
    pub file: PathBuf,
    pub log: PathBuf,
}

impl Up {
    pub fn start(cluster: &str) -> Up {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("cluster.toml");
        std::fs::write(&file, cluster).expect("write cluster file");
        let state = dir.path().join("state");
        let log = dir.path().join("up.log");
        let child = Command::new(CITADEL)
            .args(["up", "--file"])
            .arg(&file)
            .arg("--state")
            .arg(&state)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.path().join("up.out")).expect("out"))
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("spawn citadel up");
        let up = Up {
            child,
            dir,
            state,
            file,
            log,
        };
        up.wait_for_socket();
        up
    }

    /// Wraps an `up` the test started itself (its stderr in `dir/up.log`).
    pub fn attach(child: Child, dir: tempfile::TempDir, state: PathBuf) -> Up {
        let log = dir.path().join("up.log");
        let file = PathBuf::new();
        let up = Up {
            child,
            dir,
            state,
            file,
            log,
        };
        up.wait_for_socket();
        up
    }

    fn wait_for_socket(&self) {
        wait_for("the control socket", Duration::from_secs(20), || {
            self.state.join("control.sock").exists().then_some(())
        });
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        // `--state` goes right after the subcommand: anything after `exec … --` is the jail's.
        let (first, rest) = args.split_first().expect("a subcommand");
        Command::new(CITADEL)
            .arg(first)
            .arg("--state")
            .arg(&self.state)
            .args(rest)
            .output()
            .expect("run citadel")
    }

    /// Runs a CLI command that must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "citadel {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.up_log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn status(&self) -> Value {
        serde_json::from_str(&self.ok(&["status", "--json"])).expect("status json")
    }

    pub fn jail(&self, name: &str) -> Value {
        let status = self.status();
        status["jails"]
            .as_array()
            .and_then(|js| js.iter().find(|j| j["name"] == name).cloned())
            .unwrap_or_else(|| panic!("no jail {name} in {status}"))
    }

    pub fn pid(&self, name: &str) -> Option<i32> {
        self.jail(name)["pid"].as_i64().map(|p| p as i32)
    }

    pub fn wait_healthy(&self, names: &[&str], timeout: Duration) {
        wait_for(&format!("{names:?} healthy"), timeout, || {
            let status = self.status();
            let jails = status["jails"].as_array()?;
            names
                .iter()
                .all(|n| {
                    jails
                        .iter()
                        .any(|j| j["name"] == *n && j["health"] == "healthy")
                })
                .then_some(())
        });
    }

    pub fn up_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn data(&self, jail: &str) -> PathBuf {
        self.state.join("jails").join(jail).join("data")
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let pid = self.child.id() as i32;
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A cluster file with one host and one segment (`front` = `net`), plus the given jails.
pub fn cluster(net: &str, jails: &str) -> String {
    format!(
        "[cluster]\nname = \"t\"\n[segments]\nfront = \"{net}\"\n[[host]]\nname = \"h1\"\n[[host]]\nname = \"h2\"\n{jails}"
    )
}

/// A jail serving its data directory over HTTP on `addr:8000` with `citadel serve`.
pub fn serve_jail(name: &str, addr: &str) -> String {
    format!(
        r#"
[[jail]]
name = "{name}"
host = "h1"
role = "command"
addresses = {{ front = "{addr}" }}
command = "citadel"
args = ["serve", "--bind", "${{CITADEL_ADDR_FRONT}}:8000", "--dir", "${{CITADEL_DATA}}"]
ports = [8000]
stop_grace = "3s"
health = {{ check = "http", port = 8000, path = "/", interval = "500ms", timeout = "400ms" }}
"#
    )
}

pub fn curl(url: &str) -> Option<String> {
    let out = Command::new("curl")
        .args(["-sf", "--max-time", "3", url])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

/// A command jail running a shell script, with one address on `front`.
pub fn sh_jail(name: &str, host: &str, addr: &str, script: &str, extra: &str) -> String {
    format!(
        "\n[[jail]]\nname = \"{name}\"\nhost = \"{host}\"\nrole = \"command\"\naddresses = {{ front = \"{addr}\" }}\ncommand = \"sh\"\nargs = [\"-c\", {script:?}]\n{extra}\n"
    )
}

/// Waits for a jail to write a PID into a file of its data directory.
pub fn pid_from_file(path: &Path) -> i32 {
    wait_for(
        &format!("a pid in {}", path.display()),
        Duration::from_secs(10),
        || std::fs::read_to_string(path).ok()?.trim().parse().ok(),
    )
}

/// A child process killed when the test is done with it, passed or failed.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `INFO` from a Redis-protocol server (the Citadel db), as `field → value`; None if it does
/// not answer within a second. Raw RESP over TCP, so it needs no client tool.
pub fn redis_info(addr: &str) -> Option<std::collections::HashMap<String, String>> {
    use std::io::{Read, Write};
    let sock: std::net::SocketAddr = addr.parse().ok()?;
    let mut s = std::net::TcpStream::connect_timeout(&sock, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    s.write_all(b"*1\r\n$4\r\nINFO\r\n").ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        // A bulk string: `$<len>\r\n<len bytes>\r\n` (RESP2) or a verbatim `=` (RESP3).
        let text = String::from_utf8_lossy(&buf);
        let (head, rest) = text.split_once("\r\n")?;
        if !(head.starts_with('$') || head.starts_with('=')) {
            return None;
        }
        let len: usize = head[1..].parse().ok()?;
        if rest.len() >= len {
            return Some(
                rest[..len]
                    .lines()
                    .filter_map(|l| l.trim_end().split_once(':'))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            );
        }
    }
}

/// The sum of a Prometheus counter's series whose labels contain every one of `labels`
/// (`key="value"` strings), from the text at `url`.
pub fn metric_sum(url: &str, name: &str, labels: &[&str]) -> Option<u64> {
    let text = curl(url)?;
    Some(
        text.lines()
            .filter(|l| l.starts_with(name) && labels.iter().all(|x| l.contains(x)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64,
    )
}

impl Up {
    /// Whether the gate (`citadel gate backends`) has `member` of `service` up.
    pub fn backend_up(&self, service: &str, member: &str) -> bool {
        let out = self.cli(&["gate", "backends", "--json"]);
        in_rotation(&out.stdout, service, member)
    }
}

/// Whether the gate's backends (its `/backends` JSON) have `member` of `service` up and not
/// draining.
pub fn in_rotation(backends: &[u8], service: &str, member: &str) -> bool {
    let Ok(v) = serde_json::from_slice::<Value>(backends) else {
        return false;
    };
    v.as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == service))
        .and_then(|s| s["members"].as_array())
        .and_then(|m| m.iter().find(|m| m["name"] == member))
        .is_some_and(|m| m["up"] == true && m["draining"] == false)
}

/// Held while a test uses the built-in cluster's fixed addresses (127.10.0.0/24,
/// 127.20.0.0/24, 127.0.0.1:8080): one such test at a time on a machine, whichever test
/// binary or runner it comes from.
pub fn builtin_addresses() -> nix::fcntl::Flock<std::fs::File> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(std::env::temp_dir().join("citadel-builtin-addresses.lock"))
        .expect("lock file");
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .expect("lock the built-in addresses")
}

/// The operator's directory: `citadel init` (CA, operator certificate) and one bundle per host
/// from `citadel host add`; runs `citadel plan|apply` with it.
pub struct Operator {
    pub dir: tempfile::TempDir,
}

impl Operator {
    pub fn new(hosts: &[(&str, &str)]) -> Operator {
        let dir = tempfile::tempdir().expect("tempdir");
        let run = |args: &[&str]| {
            let out = Command::new(CITADEL)
                .args(args)
                .arg("--dir")
                .arg(dir.path())
                .output()
                .expect("run citadel");
            assert!(
                out.status.success(),
                "citadel {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let init = Command::new(CITADEL)
            .arg("init")
            .arg(dir.path())
            .output()
            .expect("citadel init");
        assert!(init.status.success(), "init");
        for (host, addr) in hosts {
            run(&["host", "add", host, addr]);
        }
        Operator { dir }
    }

    pub fn bundle(&self, host: &str) -> PathBuf {
        self.dir.path().join(format!("pki/hosts/{host}.bundle"))
    }

    /// `citadel VERB FILE --dir DIR …` (plan, apply): (success, stdout + stderr).
    pub fn run(&self, verb: &str, file: &Path, extra: &[&str]) -> (bool, String) {
        self.run_with(Command::new(CITADEL), verb, file, extra)
    }

    pub fn run_with(
        &self,
        mut cmd: Command,
        verb: &str,
        file: &Path,
        extra: &[&str],
    ) -> (bool, String) {
        let out = cmd
            .arg(verb)
            .arg(file)
            .arg("--dir")
            .arg(self.dir.path())
            .args(extra)
            .output()
            .expect("run citadel");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).expect("write cluster file");
        path
    }
}

/// `citadel agent run --host HOST --state DIR/state --listen ADDR --bundle B` with no file:
/// it waits for `citadel apply`. Its stderr is `DIR/up.log`.
pub fn agent_command(host: &str, dir: &Path, listen: &str, bundle: &Path) -> Command {
    let mut cmd = Command::new(CITADEL);
    cmd.args(["agent", "run", "--host", host, "--state"])
        .arg(dir.join("state"))
        .args(["--listen", listen, "--bundle"])
        .arg(bundle)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join("up.out")).expect("out"))
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join("up.log"))
                .expect("log"),
        );
    cmd
}

impl Up {
    /// The generation of the file this agent last applied (`applied.json`).
    pub fn generation(&self) -> u64 {
        let text = std::fs::read_to_string(self.state.join("applied.json")).unwrap_or_default();
        serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["generation"].as_u64())
            .unwrap_or(0)
    }
}

/// Runs the app's load checker (a bounded mixed read/write load that reads every acknowledged
/// write back at the end) on its own thread.
pub fn spawn_load(
    opts: citadel_app::load::LoadOptions,
) -> std::thread::JoinHandle<Result<citadel_app::load::LoadReport, citadel_app::load::LoadError>> {
    spawn_load_in(opts, None)
}

/// `spawn_load` from inside the named network namespace (the thread's sockets live there).
pub fn spawn_load_in(
    opts: citadel_app::load::LoadOptions,
    netns: Option<String>,
) -> std::thread::JoinHandle<Result<citadel_app::load::LoadReport, citadel_app::load::LoadError>> {
    std::thread::spawn(move || {
        if let Some(name) = netns {
            ns::enter_thread(&name);
        }
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(citadel_app::load::run(opts))
    })
}

/// Whether every one of `jails` is healthy on one of `agents`.
pub fn all_healthy(agents: &[&Up], jails: &[&str]) -> bool {
    let healthy: Vec<String> = agents
        .iter()
        .flat_map(|a| {
            a.status()["jails"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter(|j| j["health"] == "healthy")
                .map(|j| j["name"].as_str().unwrap_or_default().to_string())
        })
        .collect();
    jails.iter().all(|j| healthy.iter().any(|h| h == j))
}

/// A load that ran through a rolling apply taking `took`: it outlasted the rollout, no
/// request failed, and every acknowledged write reads back.
pub fn assert_rolled_without_failure(report: &citadel_app::load::LoadReport, took: Duration) {
    assert!(
        report
            .seconds
            .iter()
            .any(|s| s.t as f64 > took.as_secs_f64()),
        "the load outlasted the rollout"
    );
    assert_eq!(
        (report.reads_err, report.writes_err),
        (0, 0),
        "no request may fail during a rolling apply: {:?}",
        report.errors
    );
    assert_no_write_lost(report);
}

/// Every write the load had acknowledged read back at its end.
pub fn assert_no_write_lost(report: &citadel_app::load::LoadReport) {
    assert!(
        report.lost.is_empty() && report.unverified.is_empty(),
        "acknowledged writes lost: {:?}; unverified: {:?}",
        report.lost,
        report.unverified
    );
    assert!(
        report.acknowledged > 50,
        "too little load: {}",
        report.acknowledged
    );
}

/// The app's load checker through the gate listener at `base` (`http://ADDR:PORT`) for
/// `duration` (4 clients, 30 % writes), once the gate (admin address `admin`) has answered
/// 100 more requests of it with 2xx: it runs by then.
pub fn load_through_gate(
    base: &str,
    admin: &str,
    token: String,
    collection: &str,
    duration: Duration,
) -> std::thread::JoinHandle<Result<citadel_app::load::LoadReport, citadel_app::load::LoadError>> {
    let opts = citadel_app::load::LoadOptions {
        base: base.to_string(),
        token: Some(token),
        collection: collection.into(),
        duration,
        concurrency: 4,
        write_percent: 30,
        request_timeout: Duration::from_secs(10),
        verify_timeout: Duration::from_secs(30),
    };
    let ok_requests = || {
        metric_sum(
            &format!("http://{admin}/metrics"),
            "gate_http_requests_total",
            &["listener=\"public\"", "code=\"2"],
        )
        .unwrap_or(0)
    };
    let from = ok_requests();
    let load = spawn_load(opts);
    wait_for("the load to run", Duration::from_secs(20), || {
        (ok_requests() > from + 100).then_some(())
    });
    load
}

/// An agent with no file, in its own directory, stopped (SIGTERM) when dropped.
pub fn agent(op: &Operator, host: &str, listen: &str) -> Up {
    let dir = tempfile::tempdir().expect("tempdir");
    agent_in(op, host, listen, dir)
}

pub fn agent_in(op: &Operator, host: &str, listen: &str, dir: tempfile::TempDir) -> Up {
    let _ = std::fs::remove_file(dir.path().join("state/control.sock"));
    let child = agent_command(host, dir.path(), listen, &op.bundle(host))
        .spawn()
        .expect("spawn citadel agent");
    let state = dir.path().join("state");
    Up::attach(child, dir, state)
}

/// The built-in cluster moved to `NET.x.y` (a /16 of the test's own: `127.126`), its hosts'
/// agents at `NET.1.1` (gate), `NET.1.2`, `NET.1.3` (servers), port 7443.
pub fn builtin_on_agents(net: &str) -> String {
    let moved = include_str!("../../../spec/src/builtin.toml")
        .replace("127.10.0.", &format!("{net}.10."))
        .replace("127.20.0.", &format!("{net}.20."))
        .replace("127.0.0.1:8080", &format!("{net}.0.1:8080"))
        .replace("127.0.0.1:8081", &format!("{net}.0.1:8081"))
        .replace(
            "[[host]]\nname = \"gate\"\n",
            &format!("[[host]]\nname = \"gate\"\nagent = \"{net}.1.1:7443\"\n"),
        )
        .replace(
            "name = \"server-1\"\n",
            &format!("name = \"server-1\"\nagent = \"{net}.1.2:7443\"\n"),
        )
        .replace(
            "name = \"server-2\"\n",
            &format!("name = \"server-2\"\nagent = \"{net}.1.3:7443\"\n"),
        );
    for other in ["\"127.10.0.", "\"127.20.0.", "\"127.0.0.1"] {
        assert!(!moved.contains(other), "an address not moved: {other}");
    }
    assert_eq!(
        moved.matches("\nagent = ").count(),
        3,
        "every host has an agent"
    );
    moved
}

/// The jails of the built-in cluster.
pub const BUILTIN_JAILS: [&str; 9] = [
    "witness",
    "db-1",
    "db-2",
    "app-1",
    "app-2",
    "store-1",
    "store-2",
    "store-spare",
    "gate",
];

pub fn healthy_everywhere(agents: &[&Up]) {
    wait_for(
        "every jail healthy on its host",
        Duration::from_secs(90),
        || all_healthy(agents, &BUILTIN_JAILS).then_some(()),
    );
}

pub fn pids(agent: &Up, jails: &[&str]) -> Vec<Option<i32>> {
    jails.iter().map(|j| agent.pid(j)).collect()
}

/// The operator's machine and the built-in cluster's three hosts, each a `citadel agent` on
/// `{net}.1.N:7443` (gate 1, server-1 2, server-2 3) waiting for an apply.
pub fn seed_hosts(net: &str) -> (Operator, [Up; 3]) {
    let hosts = [("gate", 1), ("server-1", 2), ("server-2", 3)];
    let addrs: Vec<(&str, String)> = hosts
        .iter()
        .map(|(h, n)| (*h, format!("{net}.1.{n}")))
        .collect();
    let named: Vec<(&str, &str)> = addrs.iter().map(|(h, a)| (*h, a.as_str())).collect();
    let op = Operator::new(&named);
    let agents = hosts.map(|(h, n)| agent(&op, h, &format!("{net}.1.{n}:7443")));
    (op, agents)
}
