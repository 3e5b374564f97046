//! One jail's supervisor: starts its program, restarts it by policy with capped exponential
//! backoff, tells a crash loop from an occasional crash, stops it gracefully, and probes its
//! health. It is an actor: commands come in on a channel, the status goes out on a watch.

use std::net::{IpAddr, SocketAddr};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot, watch};

use crate::identity::{Launch, LaunchError};
use crate::logs::RotatingLog;
use crate::reaper::Reaper;

/// First restart delay; it doubles with each quick failure up to `BACKOFF_MAX`.
pub const BACKOFF_BASE: Duration = Duration::from_millis(250);
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A run shorter than this counts as "died at once".
pub const MIN_UPTIME: Duration = Duration::from_secs(5);
/// This many quick deaths in a row make a crash loop.
pub const CRASH_LOOP_AFTER: u32 = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JailState {
    Stopped,
    Running,
    /// Waiting to restart after an exit.
    Backoff,
    /// Dies at once every time it starts; still retried, with the longest backoffs.
    CrashLooping,
    Stopping,
    /// Exited and not restarted, by its restart policy.
    Exited,
    /// Could not be started (see `error`).
    Failed,
}

impl std::fmt::Display for JailState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            JailState::Stopped => "stopped",
            JailState::Running => "running",
            JailState::Backoff => "backoff",
            JailState::CrashLooping => "crash-looping",
            JailState::Stopping => "stopping",
            JailState::Exited => "exited",
            JailState::Failed => "failed",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Health {
    /// No health check, or the jail is not running.
    Unknown,
    Healthy,
    Unhealthy(String),
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Exit {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub at: SystemTime,
    pub ran_for_ms: u64,
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.code, self.signal) {
            (Some(c), _) => write!(f, "exit {c}"),
            (None, Some(s)) => match Signal::try_from(s) {
                Ok(sig) => write!(f, "{}", sig.as_str()),
                Err(_) => write!(f, "signal {s}"),
            },
            _ => f.write_str("exited"),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JailStatus {
    pub state: JailState,
    pub pid: Option<u32>,
    pub started_at: Option<SystemTime>,
    /// Automatic restarts after an exit (not operator restarts).
    pub restarts: u32,
    pub last_exit: Option<Exit>,
    pub health: Health,
    pub error: Option<String>,
}

enum Cmd {
    Start(oneshot::Sender<Result<(), String>>),
    Stop(oneshot::Sender<()>),
    Restart(oneshot::Sender<Result<(), String>>),
    Signal(Signal),
}

#[derive(Clone)]
pub struct Supervisor {
    tx: mpsc::Sender<Cmd>,
    status: watch::Receiver<JailStatus>,
}

impl Supervisor {
    /// Creates the supervisor of one jail, stopped. `self_exe` is what `command = "citadel"` runs.
    pub fn new(launch: Launch, reaper: Arc<Reaper>) -> Supervisor {
        let (tx, rx) = mpsc::channel(16);
        let (status_tx, status) = watch::channel(JailStatus {
            state: JailState::Stopped,
            pid: None,
            started_at: None,
            restarts: 0,
            last_exit: None,
            health: Health::Unknown,
            error: None,
        });
        let status_tx = Arc::new(status_tx);
        if let Some(check) = launch.jail.health.clone() {
            let addr = launch.jail.health_address();
            let status = status.clone();
            let out = status_tx.clone();
            tokio::spawn(async move {
                let Some(ip) = addr else { return };
                let target = SocketAddr::new(IpAddr::V4(ip), check.port);
                health_loop(target, check, status, out).await;
            });
        }
        let actor = Actor {
            launch,
            reaper,
            rx,
            status: status_tx,
            quick_failures: 0,
        };
        tokio::spawn(actor.run());
        Supervisor { tx, status }
    }

    pub fn status(&self) -> JailStatus {
        self.status.borrow().clone()
    }

    pub fn watch(&self) -> watch::Receiver<JailStatus> {
        self.status.clone()
    }

    pub async fn start(&self) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.send(Cmd::Start(tx)).await?;
        rx.await.map_err(|_| "supervisor gone".to_string())?
    }

    pub async fn restart(&self) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.send(Cmd::Restart(tx)).await?;
        rx.await.map_err(|_| "supervisor gone".to_string())?
    }

    /// Stops the jail gracefully (SIGTERM, the grace period, SIGKILL) and waits until it has.
    pub async fn stop(&self) {
        let (tx, rx) = oneshot::channel();
        if self.send(Cmd::Stop(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Sends a signal to the jail's whole process group (SIGSTOP/SIGCONT freeze it for a
    /// consistent copy of its data).
    pub async fn signal(&self, signal: Signal) -> Result<(), String> {
        self.send(Cmd::Signal(signal)).await
    }

    async fn send(&self, cmd: Cmd) -> Result<(), String> {
        self.tx
            .send(cmd)
            .await
            .map_err(|_| "supervisor gone".to_string())
    }
}

struct Actor {
    launch: Launch,
    reaper: Arc<Reaper>,
    rx: mpsc::Receiver<Cmd>,
    status: Arc<watch::Sender<JailStatus>>,
    quick_failures: u32,
}

struct Running {
    child: Child,
    pgid: u32,
    started: Instant,
}

enum Phase {
    Stopped,
    Running(Running),
    Backoff(tokio::time::Instant),
}

impl Actor {
    async fn run(mut self) {
        let mut phase = Phase::Stopped;
        loop {
            phase = match phase {
                Phase::Stopped => match self.rx.recv().await {
                    None => return,
                    Some(Cmd::Start(reply)) | Some(Cmd::Restart(reply)) => {
                        let (next, result) = self.start_now();
                        let _ = reply.send(result);
                        next
                    }
                    Some(Cmd::Stop(reply)) => {
                        let _ = reply.send(());
                        Phase::Stopped
                    }
                    Some(Cmd::Signal(_)) => Phase::Stopped,
                },
                Phase::Running(mut run) => {
                    tokio::select! {
                        exit = run.child.wait() => self.exited(run, exit),
                        cmd = self.rx.recv() => match cmd {
                            None => {
                                self.stop_running(run).await;
                                return;
                            }
                            Some(Cmd::Stop(reply)) => {
                                self.stop_running(run).await;
                                self.set_state(JailState::Stopped);
                                let _ = reply.send(());
                                Phase::Stopped
                            }
                            Some(Cmd::Restart(reply)) => {
                                self.stop_running(run).await;
                                self.quick_failures = 0;
                                let (next, result) = self.start_now();
                                let _ = reply.send(result);
                                next
                            }
                            Some(Cmd::Start(reply)) => {
                                let _ = reply.send(Ok(()));
                                Phase::Running(run)
                            }
                            Some(Cmd::Signal(sig)) => {
                                let _ = kill(Pid::from_raw(-(run.pgid as i32)), sig);
                                Phase::Running(run)
                            }
                        },
                    }
                }
                Phase::Backoff(until) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(until) => {
                            self.status.send_modify(|s| s.restarts += 1);
                            self.start_now().0
                        }
                        cmd = self.rx.recv() => match cmd {
                            None => return,
                            Some(Cmd::Stop(reply)) => {
                                self.set_state(JailState::Stopped);
                                let _ = reply.send(());
                                Phase::Stopped
                            }
                            Some(Cmd::Start(reply)) | Some(Cmd::Restart(reply)) => {
                                self.quick_failures = 0;
                                let (next, result) = self.start_now();
                                let _ = reply.send(result);
                                next
                            }
                            Some(Cmd::Signal(_)) => Phase::Backoff(until),
                        },
                    }
                }
            };
        }
    }

    fn set_state(&self, state: JailState) {
        self.status.send_modify(|s| {
            s.state = state;
            if !matches!(state, JailState::Running | JailState::CrashLooping) || s.pid.is_none() {
                s.health = Health::Unknown;
            }
        });
    }

    fn start_now(&mut self) -> (Phase, Result<(), String>) {
        match self.spawn() {
            Ok(run) => {
                let crash_looping = self.quick_failures >= CRASH_LOOP_AFTER;
                self.status.send_modify(|s| {
                    s.state = if crash_looping {
                        JailState::CrashLooping
                    } else {
                        JailState::Running
                    };
                    s.pid = Some(run.pgid);
                    s.started_at = Some(SystemTime::now());
                    s.error = None;
                    s.health = Health::Unknown;
                });
                (Phase::Running(run), Ok(()))
            }
            Err(e) => {
                let msg = e.to_string();
                tracing::info!(jail = %self.launch.jail.name, error = %msg, "cannot start jail");
                self.status.send_modify(|s| {
                    s.state = JailState::Failed;
                    s.pid = None;
                    s.error = Some(msg.clone());
                });
                (Phase::Stopped, Err(msg))
            }
        }
    }

    fn exited(&mut self, run: Running, exit: std::io::Result<ExitStatus>) -> Phase {
        // The leader is gone; whatever it left behind in its group goes too, so a restart
        // finds its ports free.
        let _ = kill(Pid::from_raw(-(run.pgid as i32)), Signal::SIGKILL);
        self.reaper.forget(run.pgid);
        if let Some(n) = &self.launch.netns {
            crate::netns::cleanup(n);
        }
        let ran_for = run.started.elapsed();
        let (code, signal, success) = match &exit {
            Ok(st) => {
                use std::os::unix::process::ExitStatusExt;
                (st.code(), st.signal(), st.success())
            }
            Err(_) => (None, None, false),
        };
        let record = Exit {
            code,
            signal,
            at: SystemTime::now(),
            ran_for_ms: ran_for.as_millis().try_into().unwrap_or(u64::MAX),
        };
        tracing::warn!(jail = %self.launch.jail.name, exit = %record, ran_for_ms = record.ran_for_ms, "jail exited");
        self.quick_failures = if ran_for < MIN_UPTIME {
            self.quick_failures + 1
        } else {
            0
        };
        let restart = self.launch.jail.restart.restarts_after(success);
        let crash_looping = self.quick_failures >= CRASH_LOOP_AFTER;
        self.status.send_modify(|s| {
            s.pid = None;
            s.last_exit = Some(record);
            s.health = Health::Unknown;
            s.state = match (restart, crash_looping) {
                (false, _) => JailState::Exited,
                (true, true) => JailState::CrashLooping,
                (true, false) => JailState::Backoff,
            };
        });
        if !restart {
            return Phase::Stopped;
        }
        let exp = self.quick_failures.saturating_sub(1).min(16);
        let delay = (BACKOFF_BASE * 2u32.pow(exp)).min(BACKOFF_MAX);
        Phase::Backoff(tokio::time::Instant::now() + delay)
    }

    async fn stop_running(&mut self, mut run: Running) {
        self.set_state(JailState::Stopping);
        let group = Pid::from_raw(-(run.pgid as i32));
        let _ = kill(group, Signal::SIGTERM);
        let grace = self.launch.jail.stop_grace;
        let exit = match tokio::time::timeout(grace, run.child.wait()).await {
            Ok(exit) => exit,
            Err(_) => {
                tracing::warn!(jail = %self.launch.jail.name, ?grace, "jail ignored SIGTERM; killing it");
                let _ = kill(group, Signal::SIGKILL);
                run.child.wait().await
            }
        };
        let _ = kill(group, Signal::SIGKILL);
        self.reaper.forget(run.pgid);
        if let Some(n) = &self.launch.netns {
            crate::netns::cleanup(n);
        }
        if let Ok(st) = exit {
            use std::os::unix::process::ExitStatusExt;
            self.status.send_modify(|s| {
                s.pid = None;
                s.last_exit = Some(Exit {
                    code: st.code(),
                    signal: st.signal(),
                    at: SystemTime::now(),
                    ran_for_ms: run
                        .started
                        .elapsed()
                        .as_millis()
                        .try_into()
                        .unwrap_or(u64::MAX),
                });
            });
        }
    }

    fn spawn(&mut self) -> Result<Running, LaunchError> {
        let l = &self.launch;
        let name = &l.jail.name;
        l.paths.create().map_err(|source| LaunchError::StateDir {
            jail: name.clone(),
            path: l.paths.root.clone(),
            source,
        })?;
        if l.netns.is_none() {
            check_ports(l)?;
        }
        let log = RotatingLog::open(l.paths.console_log(), crate::LOG_MAX_BYTES, crate::LOG_KEEP)
            .map_err(|source| LaunchError::StateDir {
            jail: name.clone(),
            path: l.paths.console_log(),
            source,
        })?;
        // A netns jail's init reports on this pipe once its namespaces are set up.
        let ready = match &l.netns {
            None => None,
            Some(_) => Some(
                nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| {
                    LaunchError::Netns {
                        jail: name.clone(),
                        error: format!("cannot make a pipe: {e}"),
                    }
                })?,
            ),
        };
        let mut command = match (&l.netns, &ready) {
            (Some(n), Some((_, ready_w))) => {
                let mut c = Command::new(&n.init_program);
                c.arg("__jail-init")
                    .arg(netns_init_config(&l.paths, n))
                    .arg("--")
                    .arg(&l.program);
                use std::os::fd::AsRawFd;
                let ready_w = ready_w.as_raw_fd();
                // SAFETY: between fork and exec only `unshare`, `dup2` and `fcntl`.
                unsafe {
                    c.pre_exec(move || crate::netns::prepare_helper(ready_w));
                }
                c
            }
            _ => Command::new(&l.program),
        };
        let mut child = command
            .args(&l.args)
            .env_clear()
            .envs(&l.env)
            .current_dir(l.paths.data())
            .stdin(if l.netns.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| LaunchError::Spawn {
                jail: name.clone(),
                program: l.program.clone(),
                source,
            })?;
        let pgid = child.id().unwrap_or(0);
        self.reaper.watch(pgid);
        if let (Some(n), Some((ready_r, ready_w))) = (&l.netns, ready) {
            // Ours closed, the helper's copy is the only writer: EOF means it died.
            drop(ready_w);
            self.reaper.watch_netns(n);
            if let Err(e) = wire_netns(n, pgid, &mut child, &ready_r) {
                let _ = kill(Pid::from_raw(-(pgid as i32)), Signal::SIGKILL);
                self.reaper.forget(pgid);
                crate::netns::cleanup(n);
                return Err(LaunchError::Netns {
                    jail: name.clone(),
                    error: e,
                });
            }
        }
        let log = Arc::new(Mutex::new(log));
        if let Some(out) = child.stdout.take() {
            tokio::spawn(pump(out, log.clone()));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(pump(err, log));
        }
        tracing::info!(jail = %name, pid = pgid, program = %l.program.display(), "jail started");
        Ok(Running {
            child,
            pgid,
            started: Instant::now(),
        })
    }
}

/// How long a netns jail's init may take to set up its namespaces (a few `ip` commands).
const NETNS_SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// The helper's command-line config: hostname, directories, the addresses to set.
fn netns_init_config(paths: &crate::JailPaths, n: &crate::netns::NetnsJail) -> String {
    let abs = |p: std::path::PathBuf| std::path::absolute(&p).unwrap_or(p);
    let cfg = crate::netns::InitConfig {
        hostname: n.hostname.clone(),
        data: abs(paths.data()),
        root: abs(paths.root.clone()),
        ifaces: n
            .ifaces
            .iter()
            .map(|i| (i.inside.clone(), i.addr.clone()))
            .collect(),
    };
    serde_json::to_string(&cfg).unwrap_or_default()
}

/// Puts a just-started helper in its cgroups and on its segments, then lets it go on.
fn wire_netns(
    n: &crate::netns::NetnsJail,
    pid: u32,
    child: &mut Child,
    ready: &std::os::fd::OwnedFd,
) -> Result<(), String> {
    crate::netns::enter_cgroups(&crate::netns::Cgroups::detect(), n, pid)?;
    crate::netns::attach(n, pid)?;
    let stdin = child
        .stdin
        .take()
        .ok_or_else(|| "the jail helper has no stdin".to_string())?;
    // Three bytes into an empty pipe never block, even on a non-blocking descriptor.
    nix::unistd::write(&stdin, b"go\n")
        .map_err(|e| format!("cannot tell the jail helper to go on: {e}"))?;
    // Addresses up, mounts made: only now is the jail "running" (and probed).
    crate::netns::wait_ready(ready, NETNS_SETUP_TIMEOUT)
}

/// Refuses to start a jail whose ports are taken on its own addresses: a clear error now beats
/// a jail that crash-loops on "address in use".
fn check_ports(l: &Launch) -> Result<(), LaunchError> {
    let mut ports = l.jail.ports.clone();
    if let Some(h) = &l.jail.health {
        ports.push(h.port);
    }
    ports.sort_unstable();
    ports.dedup();
    for a in &l.jail.addresses {
        for &port in &ports {
            let addr = SocketAddr::new(IpAddr::V4(a.addr), port);
            let socket = std::net::TcpListener::bind(addr);
            match socket {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                    return Err(LaunchError::AddressInUse {
                        jail: l.jail.name.clone(),
                        addr: addr.to_string(),
                        port,
                    });
                }
                Err(source) => {
                    return Err(LaunchError::CannotBind {
                        jail: l.jail.name.clone(),
                        addr: addr.to_string(),
                        source,
                    });
                }
            }
        }
    }
    Ok(())
}

/// Copies one output stream of a jail into its log, a line at a time where it can, so that
/// stdout and stderr interleave by line.
async fn pump(mut from: impl AsyncRead + Unpin, log: Arc<Mutex<RotatingLog>>) {
    let mut buf = vec![0u8; 16 << 10];
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        pending.extend_from_slice(&buf[..n]);
        let cut = match pending.iter().rposition(|b| *b == b'\n') {
            Some(i) => i + 1,
            None if pending.len() >= buf.len() => pending.len(),
            None => continue,
        };
        if let Ok(mut log) = log.lock() {
            let _ = log.write(&pending[..cut]);
        }
        pending.drain(..cut);
    }
    if !pending.is_empty()
        && let Ok(mut log) = log.lock()
    {
        let _ = log.write(&pending);
    }
}

/// How long after a start failed probes still count as "starting" rather than unhealthy, and
/// how fast the probes come meanwhile: 5 ms after the first, doubling up to every 100 ms, so
/// a jail that is ready in 30 ms is seen healthy at ~35 ms, not at the next 100 ms tick,
/// without a storm of probes at one that takes seconds.
const START_PERIOD: Duration = Duration::from_secs(10);
const START_PROBE_FIRST: Duration = Duration::from_millis(5);
const START_PROBE_EVERY: Duration = Duration::from_millis(100);

async fn health_loop(
    target: SocketAddr,
    check: citadel_spec::HealthCheck,
    mut status: watch::Receiver<JailStatus>,
    out: Arc<watch::Sender<JailStatus>>,
) {
    let mut proven: Option<u32> = None;
    // Probes of the current pid while it is starting, for the quick early schedule.
    let mut early: (Option<u32>, u32) = (None, 0);
    loop {
        // Probe only a live process; otherwise wait for the state to change.
        let pid = status.borrow_and_update().pid;
        let Some(pid) = pid else {
            if status.changed().await.is_err() {
                return;
            }
            continue;
        };
        let started = status.borrow().started_at;
        let starting = proven != Some(pid)
            && started.is_some_and(|t| t.elapsed().unwrap_or_default() < START_PERIOD);
        let result = crate::health::probe(target, &check.probe, check.timeout).await;
        if result.is_ok() {
            proven = Some(pid);
        }
        out.send_modify(|s| {
            if s.pid == Some(pid) {
                s.health = match result {
                    Ok(()) => Health::Healthy,
                    Err(_) if starting => Health::Unknown,
                    Err(e) => Health::Unhealthy(e),
                };
            }
        });
        // Our own update is not news.
        status.borrow_and_update();
        if early.0 != Some(pid) {
            early = (Some(pid), 0);
        }
        early.1 = early.1.saturating_add(1);
        let pause = if starting && proven != Some(pid) {
            (START_PROBE_FIRST * 2u32.pow(early.1.min(8) - 1)).min(START_PROBE_EVERY)
        } else {
            check.interval
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            changed = status.changed() => if changed.is_err() { return },
        }
    }
}
