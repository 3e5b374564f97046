//! Test harness: a real redis-server (the db speaks the same protocol) and real citadel-store
//! processes on loopback addresses in 127.140.0.0–127.145.255.255 (each test its own /24),
//! killed by PID when dropped; a cached Python venv with boto3 and aws-cli.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const STORE_BIN: &str = env!("CARGO_BIN_EXE_citadel-store");

pub fn wait_until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A child process killed (SIGKILL) and reaped when dropped.
pub struct Proc {
    pub child: Child,
}

impl Proc {
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn port_open(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

pub fn start_redis(addr: SocketAddr, dir: &Path) -> Proc {
    let child = Command::new("redis-server")
        .args([
            "--bind",
            &addr.ip().to_string(),
            "--port",
            &addr.port().to_string(),
        ])
        .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server must be installed (apt-get install redis-server)");
    let p = Proc { child };
    wait_until(&format!("redis on {addr}"), Duration::from_secs(10), || {
        port_open(addr)
    });
    p
}

/// One store server: S3 on `<ip>:3900`, blocks on `<ip>:3901`, peer at `peer`.
pub struct StoreNode {
    pub proc: Proc,
    pub s3: SocketAddr,
    pub config: PathBuf,
    pub data: PathBuf,
}

pub fn write_config(dir: &Path, ip: &str, peer: Option<&str>, db: SocketAddr) -> PathBuf {
    write_config_with(dir, ip, peer, db, "")
}

/// A config with `extra` top-level settings (admin on `<ip>:9100` always).
pub fn write_config_with(
    dir: &Path,
    ip: &str,
    peer: Option<&str>,
    db: SocketAddr,
    extra: &str,
) -> PathBuf {
    let data = dir.join("data");
    let peer = peer
        .map(|p| format!("peer = \"{p}:3901\"\n"))
        .unwrap_or_default();
    let text = format!(
        "listen = \"{ip}:3900\"\npeer_listen = \"{ip}:3901\"\nadmin_listen = \"{ip}:9100\"\n{peer}{extra}\ndata_dir = \"{}\"\n[db]\naddrs = [\"{db}\"]\n",
        data.display()
    );
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("store.toml");
    std::fs::write(&path, text).unwrap();
    path
}

pub fn start_store(config: &Path, log: &Path) -> Proc {
    let log = std::fs::File::create(log).unwrap();
    let child = Command::new(STORE_BIN)
        .arg("--config")
        .arg(config)
        .arg("serve")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn citadel-store");
    Proc { child }
}

impl StoreNode {
    pub fn start(dir: &Path, ip: &str, peer: Option<&str>, db: SocketAddr) -> StoreNode {
        StoreNode::start_with(dir, ip, peer, db, "")
    }

    pub fn start_with(
        dir: &Path,
        ip: &str,
        peer: Option<&str>,
        db: SocketAddr,
        extra: &str,
    ) -> StoreNode {
        let config = write_config_with(dir, ip, peer, db, extra);
        let proc = start_store(&config, &dir.join("store.log"));
        let s3: SocketAddr = format!("{ip}:3900").parse().unwrap();
        let blocks: SocketAddr = format!("{ip}:3901").parse().unwrap();
        wait_until(&format!("store on {s3}"), Duration::from_secs(20), || {
            port_open(s3) && port_open(blocks)
        });
        StoreNode {
            proc,
            s3,
            config,
            data: dir.join("data"),
        }
    }
}

/// Creates an access key with the store binary, as an operator would.
pub fn create_key(config: &Path) -> (String, String) {
    let out = Command::new(STORE_BIN)
        .arg("--config")
        .arg(config)
        .args(["key", "create", "test"])
        .output()
        .expect("run citadel-store key create");
    assert!(
        out.status.success(),
        "key create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = String::from_utf8(out.stdout).unwrap();
    let mut it = s.split_whitespace();
    (
        it.next().unwrap().to_string(),
        it.next().unwrap().to_string(),
    )
}

/// Block files under a store's data dir.
pub fn block_files(data: &Path) -> usize {
    block_paths(data).len()
}

/// Paths of the block files under a store's data dir, sorted.
pub fn block_paths(data: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(dirs) = std::fs::read_dir(data.join("blocks")) else {
        return out;
    };
    for d in dirs.flatten() {
        if let Ok(files) = std::fs::read_dir(d.path()) {
            out.extend(
                files
                    .flatten()
                    .filter(|f| !f.file_name().to_string_lossy().starts_with(".tmp"))
                    .map(|f| f.path()),
            );
        }
    }
    out.sort();
    out
}

/// Whether a block file holds what its name says.
pub fn block_is_sound(path: &Path) -> bool {
    use sha2::Digest;
    std::fs::read(path).is_ok_and(|d| {
        hex::encode(sha2::Sha256::digest(&d))
            == path.file_name().unwrap().to_string_lossy().as_ref()
    })
}

/// Flips one bit of a block file in place (bit rot).
pub fn rot(path: &Path) {
    let mut d = std::fs::read(path).unwrap();
    let mid = d.len() / 2;
    d[mid] ^= 0x01;
    std::fs::write(path, d).unwrap();
}

/// Runs the store binary's `status` against a config: every server's catalogue record.
pub fn catalogue(config: &Path) -> Vec<serde_json::Value> {
    let out = store_cmd(config, &["status"]);
    serde_json::from_str::<Vec<serde_json::Value>>(&out).unwrap()
}

/// One server's record from `catalogue`, by S3 address (the default server name).
pub fn record_of(config: &Path, s3: SocketAddr) -> Option<serde_json::Value> {
    catalogue(config)
        .into_iter()
        .find(|r| r["name"] == s3.to_string())
}

/// Runs the store binary with a subcommand; its stdout (it must succeed).
pub fn store_cmd(config: &Path, args: &[&str]) -> String {
    let out = Command::new(STORE_BIN)
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .expect("run citadel-store");
    assert!(
        out.status.success(),
        "citadel-store {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A plain HTTP/1.0 GET (the admin address); the body.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())
}

/// A counter or gauge's value from Prometheus text.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// A venv with boto3 and aws-cli, cached under `target/pyenv/<hash of the requirements>`
/// so repeated runs reuse it. `None` (the caller says SKIPPED) only when pip cannot install.
pub fn pyenv() -> Option<PathBuf> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let req = manifest.join("tests-requirements.txt");
    let text = std::fs::read(&req).unwrap();
    use sha2::Digest;
    let key = hex::encode(sha2::Sha256::digest(&text));
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("../../target"));
    let venv = target.join("pyenv").join(&key[..12]);
    let ready = venv.join(".ready");
    if ready.exists() {
        return Some(venv);
    }
    // One installer at a time across test binaries: a lock file next to the venvs.
    std::fs::create_dir_all(target.join("pyenv")).unwrap();
    let lock = std::fs::File::create(target.join("pyenv").join(".lock")).unwrap();
    lock.lock().expect("lock target/pyenv");
    if ready.exists() {
        return Some(venv);
    }
    let ok = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .is_ok_and(|s| s.success())
        && Command::new(venv.join("bin/pip"))
            .args(["install", "-q", "-r"])
            .arg(&req)
            .status()
            .is_ok_and(|s| s.success());
    if !ok {
        eprintln!(
            "SKIPPED: could not install {} into {}",
            req.display(),
            venv.display()
        );
        return None;
    }
    std::fs::write(&ready, b"").unwrap();
    Some(venv)
}

/// The load checker (`s3_load.py`) in `mode` against `endpoints` ("http://a,http://b"), its
/// files (`acks`, `fails`, `stop`) in `dir`, at most `limit` objects in 90 s.
pub fn s3_load(
    venv: &Path,
    mode: &str,
    endpoints: &str,
    (key, secret): (&str, &str),
    dir: &Path,
    limit: usize,
) -> Command {
    let mut c = Command::new(venv.join("bin/python"));
    c.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/s3_load.py"))
        .arg(mode)
        .env("ENDPOINTS", endpoints)
        .env("KEY", key)
        .env("SECRET", secret)
        .env("ACKS", dir.join("acks"))
        .env("FAILS", dir.join("fails"))
        .env("STOP_FILE", dir.join("stop"))
        .env("LIMIT", limit.to_string())
        .env("DEADLINE", "90");
    c
}

/// Lines in a file (0 when it does not exist yet).
pub fn lines(p: &Path) -> usize {
    std::fs::read_to_string(p)
        .map(|s| s.lines().count())
        .unwrap_or(0)
}
