//! Test harness: a real redis-server and real citadel-app processes on loopback addresses in
//! 127.40.0.0–127.59.255.255 (each test its own /24), killed by PID when dropped.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

pub const APP_BIN: &str = env!("CARGO_BIN_EXE_citadel-app");

/// Waits for `cond` up to `within`, polling; panics with `what` on timeout.
pub fn wait_until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub async fn wait_until_async<F, Fut>(what: &str, within: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A child process killed (SIGKILL) and reaped when dropped.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
    /// SIGKILL now and reap.
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

/// A redis-server on its own address, no persistence unless `aof` is set.
pub struct Redis {
    pub proc: Proc,
    pub addr: SocketAddr,
    /// Working directory (so no dump file lands in the source tree), when not given.
    _dir: Option<tempfile::TempDir>,
}

pub struct RedisOpts<'a> {
    pub password: Option<&'a str>,
    /// Append-only file with fsync on every write, in this directory.
    pub aof_dir: Option<&'a Path>,
}

impl Redis {
    pub fn start(addr: SocketAddr, opts: RedisOpts<'_>) -> Redis {
        let mut cmd = Command::new("redis-server");
        cmd.arg("--bind")
            .arg(addr.ip().to_string())
            .arg("--port")
            .arg(addr.port().to_string())
            .arg("--save")
            .arg("")
            .arg("--protected-mode")
            .arg("no");
        let mut own_dir = None;
        match opts.aof_dir {
            Some(dir) => {
                cmd.arg("--appendonly")
                    .arg("yes")
                    .arg("--appendfsync")
                    .arg("always")
                    .arg("--dir")
                    .arg(dir);
            }
            None => {
                let d = tempfile::tempdir().expect("redis dir");
                cmd.arg("--appendonly").arg("no").arg("--dir").arg(d.path());
                own_dir = Some(d);
            }
        }
        if let Some(pw) = opts.password {
            cmd.arg("--requirepass").arg(pw);
        }
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        let child = cmd
            .spawn()
            .expect("redis-server must be installed (apt-get install redis-server)");
        let r = Redis {
            proc: Proc {
                child,
                name: format!("redis {addr}"),
            },
            addr,
            _dir: own_dir,
        };
        let pw = opts.password.map(str::to_string);
        wait_until(
            &format!("redis-server on {addr}"),
            Duration::from_secs(10),
            || redis_ping(addr, pw.as_deref()),
        );
        r
    }
}

/// A raw RESP PING (after AUTH) over a std socket.
pub fn redis_ping(addr: SocketAddr, password: Option<&str>) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut req = String::new();
    if let Some(pw) = password {
        req.push_str(&format!("*2\r\n$4\r\nAUTH\r\n${}\r\n{pw}\r\n", pw.len()));
    }
    req.push_str("*1\r\n$4\r\nPING\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut buf = [0u8; 256];
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_millis(500);
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
        let text = String::from_utf8_lossy(&got);
        if text.contains("+PONG") {
            return true;
        }
        if text.contains("-LOADING") || text.contains("-ERR") || text.contains("-NOAUTH") {
            return false;
        }
    }
    false
}

/// One citadel-app process with a TOML config in a temp dir.
pub struct App {
    pub proc: Proc,
    pub base: String,
    pub listen: SocketAddr,
    pub config: PathBuf,
}

impl App {
    /// `db_toml` is the `[db]` table body (e.g. `addrs = ["127.40.1.1:6379"]`); `extra` is
    /// appended verbatim (more tables).
    pub fn start(
        dir: &Path,
        listen: SocketAddr,
        admin: SocketAddr,
        db_toml: &str,
        extra: &str,
    ) -> App {
        let config = dir.join(format!("app-{}.toml", listen.ip()));
        let text = format!(
            "listen = \"{listen}\"\nadmin_listen = \"{admin}\"\n\n[db]\n{db_toml}\n\n{extra}\n"
        );
        std::fs::write(&config, text).expect("write config");
        let log =
            std::fs::File::create(dir.join(format!("app-{}.log", listen.ip()))).expect("log file");
        let child = Command::new(APP_BIN)
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info,citadel_app=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn citadel-app");
        let mut app = App {
            proc: Proc {
                child,
                name: format!("app {listen}"),
            },
            base: format!("http://{listen}"),
            listen,
            config,
        };
        let log = dir.join(format!("app-{}.log", listen.ip()));
        wait_until(
            &format!("citadel-app on {listen}"),
            Duration::from_secs(20),
            || {
                if let Ok(Some(st)) = app.proc.child.try_wait() {
                    let text = std::fs::read_to_string(&log).unwrap_or_default();
                    panic!("citadel-app exited ({st}) before listening:\n{text}");
                }
                TcpStream::connect_timeout(&listen, Duration::from_millis(200)).is_ok()
            },
        );
        app
    }

    /// Runs `citadel-app --config … ARGS` (the key verbs) and returns stdout.
    pub fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(APP_BIN)
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .output()
            .expect("run citadel-app");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Creates an API key through the CLI; returns (id, token).
    pub fn create_key(&self, name: &str) -> (String, String) {
        let (ok, out, err) = self.cli(&["key", "create", name]);
        assert!(ok, "key create failed: {err}");
        let field = |f: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(f).map(|v| v.trim().to_string()))
                .unwrap_or_else(|| panic!("no {f} in {out}"))
        };
        (field("id:"), field("token:"))
    }
}

/// A small HTTP client (hyper) for the tests.
#[derive(Clone)]
pub struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: String,
}

impl Resp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }
}

impl Default for Http {
    fn default() -> Self {
        Self::new()
    }
}

impl Http {
    pub fn new() -> Http {
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(5))
            .build_http();
        Http { client }
    }

    pub async fn req(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Result<Resp, String> {
        let mut b = hyper::Request::builder().method(method).uri(url);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        if body.is_some() {
            b = b.header("content-type", "application/json");
        }
        let req = b
            .body(Full::new(Bytes::from(body.unwrap_or("").to_string())))
            .map_err(|e| e.to_string())?;
        let fut = self.client.request(req);
        let resp = tokio::time::timeout(Duration::from_secs(30), fut)
            .await
            .map_err(|_| "request timed out".to_string())?
            .map_err(|e| e.to_string())?;
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(Resp {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        })
    }

    /// Like [`Http::req`], panicking on a transport error.
    pub async fn must(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Resp {
        self.req(method, url, headers, body)
            .await
            .unwrap_or_else(|e| panic!("{method} {url}: {e}"))
    }
}

pub fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}
