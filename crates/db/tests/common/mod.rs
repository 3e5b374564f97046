//! Test harness: real `citadel-db` processes on loopback addresses 127.60-79.x.x.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub mod lin;

pub struct Member {
    pub id: u64,
    pub witness: bool,
    pub peer: SocketAddr,
    pub redis: SocketAddr,
}

/// A group of nodes, each a child process. Dropping it kills every process it started.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub members: Vec<Member>,
    pub procs: BTreeMap<u64, Child>,
    pub extra: String,
    /// Extra environment for the processes.
    pub env: Vec<(String, String)>,
    /// (from, to) → the address `from` dials for `to`, when not `to`'s own `peer`.
    pub dial: BTreeMap<(u64, u64), SocketAddr>,
    /// Extra peer listen addresses per member (besides its `peer`).
    pub listen_extra: BTreeMap<u64, Vec<SocketAddr>>,
    /// Members configured with `voter = false` (they join later with `citadel-db add`).
    pub non_voters: Vec<u64>,
    /// The `[tunables]` table every member gets.
    pub tunables: String,
}

/// The tests' timings: short, so that failovers and snapshots happen within a test.
pub const TEST_TUNABLES: &str = "heartbeat_ms = 50\nelection_min_ms = 300\nelection_max_ms = 600\nwrite_wait_ms = 2000\nrpc_timeout_ms = 500\nsnapshot_every = 50\nkeep_after_snapshot = 20\nwitness_purge_ms = 300\n";

impl Cluster {
    /// `net` is the /24 to use, e.g. "127.60.1"; `kinds` lists members (true = witness).
    pub fn new(net: &str, kinds: &[bool]) -> Cluster {
        let members = kinds
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let ip = format!("{net}.{}", i + 1);
                Member {
                    id: i as u64 + 1,
                    witness: *w,
                    peer: format!("{ip}:7000").parse().expect("addr"),
                    redis: format!("{ip}:6379").parse().expect("addr"),
                }
            })
            .collect();
        Cluster {
            dir: tempfile::tempdir().expect("tempdir"),
            members,
            procs: BTreeMap::new(),
            extra: String::new(),
            env: Vec::new(),
            dial: BTreeMap::new(),
            listen_extra: BTreeMap::new(),
            non_voters: Vec::new(),
            tunables: TEST_TUNABLES.to_string(),
        }
    }

    fn config(&self, id: u64) -> PathBuf {
        let mut s = format!(
            "id = {id}\ndata_dir = {:?}\n{}\n",
            self.dir.path().join(format!("n{id}")),
            self.extra
        );
        s.push_str("[tunables]\n");
        s.push_str(&self.tunables);
        if let Some(extra) = self.listen_extra.get(&id) {
            let me = self.member(id).peer;
            let all: Vec<String> = std::iter::once(me)
                .chain(extra.iter().copied())
                .map(|a| format!("\"{a}\""))
                .collect();
            // Top-level key: must come before the first table, so splice it in up front.
            s = format!("peer_listen = [{}]\n{s}", all.join(", "));
        }
        for m in &self.members {
            let peer = self.dial.get(&(id, m.id)).copied().unwrap_or(m.peer);
            s.push_str(&format!(
                "[[members]]\nid = {}\nname = \"m{}\"\nkind = \"{}\"\npeer = \"{}\"\n",
                m.id,
                m.id,
                if m.witness { "witness" } else { "data" },
                peer
            ));
            if !m.witness {
                s.push_str(&format!("redis = \"{}\"\n", m.redis));
            }
            if self.non_voters.contains(&m.id) {
                s.push_str("voter = false\n");
            }
        }
        let p = self.dir.path().join(format!("n{id}.toml"));
        std::fs::write(&p, s).expect("write config");
        p
    }

    /// Runs `citadel-db SUBCOMMAND ARGS --config <member id's config>`; returns (ok, stdout+stderr).
    pub fn admin(&self, id: u64, args: &[&str]) -> (bool, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_citadel-db"))
            .args(args)
            .arg("--config")
            .arg(self.dir.path().join(format!("n{id}.toml")))
            .output()
            .expect("run citadel-db");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    pub fn log_path(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("n{id}.log"))
    }

    pub fn log(&self, id: u64) -> String {
        std::fs::read_to_string(self.log_path(id)).unwrap_or_default()
    }

    /// Where member `id`'s log ends now, for [`Cluster::log_after`].
    pub fn log_mark(&self, id: u64) -> usize {
        self.log(id).len()
    }

    /// What member `id` logged after `mark` (so that what it did at start-up, say an
    /// election, is not taken for what a test provoked later).
    pub fn log_after(&self, id: u64, mark: usize) -> String {
        self.log(id).get(mark..).unwrap_or_default().to_string()
    }

    pub fn start(&mut self, id: u64) {
        let cfg = self.config(id);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(id))
            .expect("log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_citadel-db"));
        // If the test process dies without running Drop (killed by a harness), take the
        // node with it. SAFETY: prctl is async-signal-safe; nothing else runs in the child
        // between fork and exec.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .map_err(std::io::Error::from)
            });
        }
        let child = cmd
            .arg("--config")
            .arg(&cfg)
            .env("RUST_LOG", "info,openraft=warn")
            .env("NO_COLOR", "1")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn citadel-db");
        self.procs.insert(id, child);
    }

    pub fn start_all(&mut self) {
        let ids: Vec<u64> = self.members.iter().map(|m| m.id).collect();
        for id in ids {
            self.start(id);
        }
    }

    fn signal(&self, id: u64, sig: nix::sys::signal::Signal) {
        if let Some(c) = self.procs.get(&id) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), sig);
        }
    }

    /// kill -9, and reap.
    pub fn kill(&mut self, id: u64) {
        self.signal(id, nix::sys::signal::Signal::SIGKILL);
        if let Some(mut c) = self.procs.remove(&id) {
            let _ = c.wait();
        }
    }

    /// SIGTERM (what a supervisor sends to stop a jail), and waits for the exit; returns
    /// how long the process took to go.
    pub fn terminate(&mut self, id: u64) -> Duration {
        let t = Instant::now();
        self.signal(id, nix::sys::signal::Signal::SIGTERM);
        if let Some(mut c) = self.procs.remove(&id) {
            let _ = c.wait();
        }
        t.elapsed()
    }

    pub fn pause(&self, id: u64) {
        self.signal(id, nix::sys::signal::Signal::SIGSTOP);
    }

    pub fn resume(&self, id: u64) {
        self.signal(id, nix::sys::signal::Signal::SIGCONT);
    }

    pub fn member(&self, id: u64) -> &Member {
        self.members.iter().find(|m| m.id == id).expect("member")
    }

    pub fn url(&self, id: u64) -> String {
        format!("redis://{}/", self.member(id).redis)
    }

    pub fn conn(&self, id: u64) -> redis::Connection {
        let client = redis::Client::open(self.url(id)).expect("client");
        let c = client
            .get_connection_with_timeout(Duration::from_secs(2))
            .expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        c
    }

    pub fn try_conn(&self, id: u64) -> Option<redis::Connection> {
        let client = redis::Client::open(self.url(id)).ok()?;
        let c = client
            .get_connection_with_timeout(Duration::from_millis(500))
            .ok()?;
        c.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        Some(c)
    }

    /// INFO field from a data member, if it answers.
    pub fn info(&self, id: u64, field: &str) -> Option<String> {
        let mut c = self.try_conn(id)?;
        let info: String = redis::cmd("INFO").query(&mut c).ok()?;
        info.lines().find_map(|l| {
            l.strip_prefix(&format!("{field}:"))
                .map(|v| v.trim().to_string())
        })
    }

    /// Waits until every listed data member reports the same leader, one of them, and
    /// returns it.
    pub fn wait_leader(&self, data_ids: &[u64], timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            let leaders: Vec<Option<String>> = data_ids
                .iter()
                .map(|id| self.info(*id, "raft_leader"))
                .collect();
            if let Some(Some(l)) = leaders.first()
                && !l.is_empty()
                && leaders.iter().all(|x| x.as_deref() == Some(l.as_str()))
                && let Ok(l) = l.parse::<u64>()
                && data_ids.contains(&l)
            {
                return l;
            }
            assert!(
                Instant::now() < deadline,
                "no common leader among {data_ids:?}: {leaders:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until a data leader is elected (a data member leads) and returns it.
    pub fn wait_data_leader(&self, data_ids: &[u64], timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            for id in data_ids {
                if self.info(*id, "raft_state").as_deref() == Some("Leader") {
                    return *id;
                }
            }
            assert!(Instant::now() < deadline, "no data member became leader");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Retries a write until it is acknowledged or the timeout passes.
    pub fn set_retry(&self, ids: &[u64], key: &str, val: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            for id in ids {
                if let Some(mut c) = self.try_conn(*id) {
                    let r: redis::RedisResult<String> =
                        redis::cmd("SET").arg(key).arg(val).query(&mut c);
                    if r.is_ok() {
                        return true;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let ids: Vec<u64> = self.procs.keys().copied().collect();
        for id in ids {
            self.resume(id);
            self.kill(id);
        }
        // CITADEL_TEST_KEEP_LOGS=DIR keeps every member's log for a look afterwards.
        if let Ok(dir) = std::env::var("CITADEL_TEST_KEEP_LOGS") {
            let sub = format!("{dir}/{}", self.members[0].peer.ip());
            let _ = std::fs::create_dir_all(&sub);
            for m in &self.members {
                let _ = std::fs::copy(self.log_path(m.id), format!("{sub}/n{}.log", m.id));
            }
        }
        if std::thread::panicking() {
            for m in &self.members {
                let log = self.log(m.id);
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                eprintln!("---- log of member {} (last 40 lines) ----", m.id);
                for l in tail.iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
    }
}

/// Two data members (1 and 2) and a witness (3) on `net`.1–3, started, with their Redis ports
/// answering and a leader both data members agree on.
pub fn trio(net: &str) -> Cluster {
    trio_with(net, &[])
}

/// [`trio`] with extra environment for the processes.
pub fn trio_with(net: &str, env: &[(&str, &str)]) -> Cluster {
    let mut c = Cluster::new(net, &[false, false, true]);
    c.env = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    c.start_all();
    wait_port(c.member(1).redis, Duration::from_secs(20));
    wait_port(c.member(2).redis, Duration::from_secs(20));
    c.wait_leader(&[1, 2], Duration::from_secs(20));
    c
}

/// Waits until `f` holds (or panics with `what`).
pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until a TCP port accepts connections.
pub fn wait_port(addr: SocketAddr, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(Instant::now() < deadline, "{addr} does not answer");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Sends raw bytes and reads what comes back until the server closes or goes quiet.
pub fn raw(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
    s.set_read_timeout(Some(Duration::from_millis(1500)))
        .expect("timeout");
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    out
}

/// Runs a command given as words.
pub fn q<T: redis::FromRedisValue>(
    con: &mut redis::Connection,
    args: &[&str],
) -> redis::RedisResult<T> {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query(con)
}

/// Runs a command that must succeed.
pub fn ok<T: redis::FromRedisValue>(con: &mut redis::Connection, args: &[&str]) -> T {
    q(con, args).unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

/// The error line of a command that must fail: Redis's code, then the text.
pub fn err(con: &mut redis::Connection, args: &[&str]) -> String {
    match q::<redis::Value>(con, args) {
        Ok(v) => panic!("{args:?} should fail, got {v:?}"),
        Err(e) => format!("{} {}", e.code().unwrap_or("?"), e.detail().unwrap_or("")),
    }
}

/// A TCP link between two members that can be cut like a network: while cut, what either
/// side sends is dropped, and connections stay open (no FIN, no RST), as when a cable is
/// pulled. Stops (and closes its connections) when dropped.
pub struct Link {
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Link {
    /// Listens on `listen` and forwards each connection to `upstream`.
    pub fn start(listen: SocketAddr, upstream: SocketAddr) -> Link {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        let cut = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let l = std::net::TcpListener::bind(listen).expect("bind link");
        l.set_nonblocking(true).expect("nonblocking");
        let (c, s) = (cut.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let Ok((down, _)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let Ok(up) = TcpStream::connect_timeout(&upstream, Duration::from_secs(1)) else {
                    continue;
                };
                for (mut from, mut to) in [
                    (
                        down.try_clone().expect("clone"),
                        up.try_clone().expect("clone"),
                    ),
                    (up, down),
                ] {
                    let (c, s) = (c.clone(), s.clone());
                    from.set_nonblocking(false).expect("blocking");
                    from.set_read_timeout(Some(Duration::from_millis(50)))
                        .expect("timeout");
                    std::thread::spawn(move || {
                        let mut buf = vec![0u8; 64 * 1024];
                        while !s.load(Ordering::Relaxed) {
                            match from.read(&mut buf) {
                                Ok(0) => break,
                                Ok(n) if !c.load(Ordering::Relaxed) => {
                                    if to.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                }
                                Ok(_) => {}
                                Err(e)
                                    if matches!(
                                        e.kind(),
                                        std::io::ErrorKind::WouldBlock
                                            | std::io::ErrorKind::TimedOut
                                    ) => {}
                                Err(_) => break,
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Link { cut, stop }
    }

    /// Cuts (`true`) or mends the link.
    pub fn set_cut(&self, cut: bool) {
        self.cut.store(cut, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}
