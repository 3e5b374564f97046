//! Test harness: a real redis-server (the db speaks the same protocol) and real citadel-store
//! processes on loopback addresses in 127.140.0.0–127.143.255.255 (each test its own /24),
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
    let data = dir.join("data");
    let peer = peer
        .map(|p| format!("peer = \"{p}:3901\"\n"))
        .unwrap_or_default();
    let text = format!(
        "listen = \"{ip}:3900\"\npeer_listen = \"{ip}:3901\"\n{peer}data_dir = \"{}\"\n[db]\naddrs = [\"{db}\"]\n",
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
        let config = write_config(dir, ip, peer, db);
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
    let mut n = 0;
    let Ok(dirs) = std::fs::read_dir(data.join("blocks")) else {
        return 0;
    };
    for d in dirs.flatten() {
        if let Ok(files) = std::fs::read_dir(d.path()) {
            n += files
                .flatten()
                .filter(|f| !f.file_name().to_string_lossy().starts_with(".tmp"))
                .count();
        }
    }
    n
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
