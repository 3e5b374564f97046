//! Test harness: real gate and backend processes, killed on drop; a hyper client that can
//! bind a chosen loopback source address. Every test uses its own 127.8x.y.0/24 range.
#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// A child process killed (SIGKILL) and reaped when dropped, so a failing test leaves
/// nothing running.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status();
    }

    /// Waits for the process to exit by itself (after a signal).
    pub fn wait_exit(&mut self, within: Duration) -> bool {
        let end = Instant::now() + within;
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn gate_bin() -> &'static str {
    env!("CARGO_BIN_EXE_citadel-gate")
}

pub fn echo_bin() -> &'static str {
    env!("CARGO_BIN_EXE_citadel-gate-echo")
}

/// Makes the child get SIGKILL when the test process dies, even by SIGKILL (where drop guards
/// do not run), so no stale gate or backend outlives a test run.
pub fn die_with_parent(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// Polls `f` every 20 ms until it holds or `within` passes.
pub async fn wait_until<F, Fut>(within: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = Instant::now() + within;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn port_open(addr: SocketAddr) -> bool {
    matches!(
        tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(addr)
        )
        .await,
        Ok(Ok(_))
    )
}

/// Starts the echo backend NAME on ADDR (HTTP; TCP echo on port+1) and waits for it.
pub async fn spawn_echo(name: &str, addr: SocketAddr) -> Proc {
    let child = die_with_parent(&mut Command::new(echo_bin()))
        .arg(name)
        .arg(addr.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn echo backend");
    let p = Proc {
        child,
        name: name.to_string(),
    };
    assert!(
        wait_until(Duration::from_secs(10), || port_open(addr)).await,
        "backend {name} on {addr} never answered"
    );
    p
}

pub async fn spawn_echo_udp(name: &str, addr: SocketAddr) -> Proc {
    let child = die_with_parent(&mut Command::new(echo_bin()))
        .arg(name)
        .arg(addr.to_string())
        .arg("--udp")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn udp echo backend");
    // A UDP server gives no sign of life but an answer; the caller checks by traffic.
    Proc {
        child,
        name: name.to_string(),
    }
}

pub struct GateProc {
    pub proc_: Proc,
    pub admin: SocketAddr,
    pub config: PathBuf,
    pub state: PathBuf,
}

/// Writes the config into `dir/gate.toml` and starts the gate with state in `dir/state`;
/// waits until its admin API answers.
pub async fn spawn_gate(dir: &Path, config: &str, admin: SocketAddr) -> GateProc {
    let cfg = dir.join("gate.toml");
    std::fs::write(&cfg, config).expect("write config");
    start_gate(cfg, dir.join("state"), admin).await
}

/// The gate process on `cfg`, not waited for.
pub fn launch_gate(cfg: &Path, state: &Path) -> Proc {
    let child = die_with_parent(&mut Command::new(gate_bin()))
        .arg("--config")
        .arg(cfg)
        .arg("--state")
        .arg(state)
        .env(
            "RUST_LOG",
            std::env::var("GATE_TEST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn gate");
    Proc {
        child,
        name: "gate".into(),
    }
}

pub async fn start_gate(cfg: PathBuf, state: PathBuf, admin: SocketAddr) -> GateProc {
    let p = launch_gate(&cfg, &state);
    let c = client(None);
    let url = format!("http://{admin}/health");
    assert!(
        wait_until(Duration::from_secs(15), || {
            let c = c.clone();
            let url = url.clone();
            async move { get(&c, &url).await.map(|r| r.0 == 200).unwrap_or(false) }
        })
        .await,
        "gate admin {admin} never answered"
    );
    GateProc {
        proc_: p,
        admin,
        config: cfg,
        state,
    }
}

pub type TestClient = Client<HttpConnector, Empty<Bytes>>;

/// A keep-alive client; `source` binds its sockets to that loopback address.
pub fn client(source: Option<IpAddr>) -> TestClient {
    let mut conn = HttpConnector::new();
    conn.set_local_address(source);
    conn.set_connect_timeout(Some(Duration::from_secs(2)));
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(5))
        .build(conn)
}

/// GET with a 5 s cap: (status, body).
pub async fn get(c: &TestClient, url: &str) -> Result<(u16, String), String> {
    get_with(c, url, &[]).await
}

/// GET with extra headers and a 5 s cap: (status, body).
pub async fn get_with(
    c: &TestClient,
    url: &str,
    headers: &[(&str, &str)],
) -> Result<(u16, String), String> {
    let mut b = hyper::Request::get(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b.body(Empty::new()).map_err(|e| e.to_string())?;
    let fut = async {
        let resp = c.request(req).await.map_err(|e| format!("{e:?}"))?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .map_err(|_| "timed out".to_string())?
}

/// Admin call with curl (POST/DELETE with an optional JSON body): (status, body).
pub fn curl(method: &str, url: &str, json: Option<&str>) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-m", "5", "-X", method, "-w", "\n%{http_code}", url]);
    if let Some(j) = json {
        cmd.args(["-H", "content-type: application/json", "-d", j]);
    }
    let out = cmd.output().expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// `/backends` as JSON.
pub async fn backends(c: &TestClient, admin: SocketAddr) -> serde_json::Value {
    let (_, body) = get(c, &format!("http://{admin}/backends"))
        .await
        .unwrap_or((0, "[]".into()));
    serde_json::from_str(&body).unwrap_or(serde_json::Value::Null)
}

/// Whether member `m` of service `s` is up (and not draining, when `eligible`).
pub async fn member_up(c: &TestClient, admin: SocketAddr, s: &str, m: &str) -> bool {
    let v = backends(c, admin).await;
    v.as_array()
        .into_iter()
        .flatten()
        .filter(|x| x["name"] == s)
        .flat_map(|x| x["members"].as_array().cloned().unwrap_or_default())
        .any(|x| x["name"] == m && x["up"] == true)
}

pub fn member_field(v: &serde_json::Value, s: &str, m: &str, field: &str) -> serde_json::Value {
    v.as_array()
        .into_iter()
        .flatten()
        .filter(|x| x["name"] == s)
        .flat_map(|x| x["members"].as_array().cloned().unwrap_or_default())
        .find(|x| x["name"] == m)
        .map(|x| x[field].clone())
        .unwrap_or(serde_json::Value::Null)
}

pub fn sa(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

/// One raw HTTP/1.1 request on a fresh connection from `source`: Some(status) or None when
/// the gate refused the connection (closed without an answer).
pub fn raw_get(source: IpAddr, to: SocketAddr) -> Option<u16> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).ok()?;
    sock.bind(&SocketAddr::new(source, 0).into()).ok()?;
    sock.connect_timeout(&to.into(), Duration::from_secs(2))
        .ok()?;
    let mut s: std::net::TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    std::io::Write::write_all(
        &mut s,
        format!("GET / HTTP/1.1\r\nhost: {to}\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .ok()?;
    let mut buf = Vec::new();
    let _ = std::io::Read::read_to_end(&mut s, &mut buf);
    let text = String::from_utf8_lossy(&buf);
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// A steady keep-alive GET load: one client (with its own source address) per task, each
/// bounded in count and in time. Counts answers by the backend named on their first line.
pub struct Load {
    done: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    failed: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    seen: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    pub fn start(sources: &[IpAddr], url: &str, max_each: usize, max_time: Duration) -> Load {
        use std::sync::Arc;
        use std::sync::atomic::Ordering;
        let load = Load {
            done: Arc::default(),
            failed: Arc::default(),
            seen: Arc::default(),
            stop: Arc::default(),
            tasks: Vec::new(),
        };
        let end = Instant::now() + max_time;
        let tasks = sources
            .iter()
            .map(|src| {
                let c = client(Some(*src));
                let url = url.to_string();
                let (done, failed, seen, stop) = (
                    load.done.clone(),
                    load.failed.clone(),
                    load.seen.clone(),
                    load.stop.clone(),
                );
                tokio::spawn(async move {
                    for _ in 0..max_each {
                        if stop.load(Ordering::Relaxed) || Instant::now() > end {
                            break;
                        }
                        match get(&c, &url).await {
                            Ok((200, body)) => {
                                let who = body.lines().next().unwrap_or("").to_string();
                                if let Ok(mut m) = seen.lock() {
                                    *m.entry(who).or_default() += 1;
                                }
                            }
                            other => {
                                eprintln!("failed request: {other:?}");
                                failed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        Load { tasks, ..load }
    }

    pub fn done(&self) -> usize {
        self.done.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Answers that came from backend `name`.
    pub fn seen(&self, name: &str) -> usize {
        self.seen
            .lock()
            .map(|m| m.get(name).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    /// Waits until `n` more requests than now have been made (at most `within`).
    pub async fn wait_more(&self, n: usize, within: Duration) -> bool {
        let target = self.done() + n;
        wait_until(within, || async { self.done() >= target }).await
    }

    /// Stops the load: (requests made, requests failed).
    pub async fn finish(self) -> (usize, usize) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        (
            self.done.load(std::sync::atomic::Ordering::Relaxed),
            self.failed.load(std::sync::atomic::Ordering::Relaxed),
        )
    }
}
