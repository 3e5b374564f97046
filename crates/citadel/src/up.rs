//! `citadel up`: run a whole cluster on this machine until told to stop.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use citadel_agent::protocol::StatusReport;
use citadel_agent::{Runtime, Source, StartProgress, control};
use citadel_jail::Health;
use citadel_jail::Reaper;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::Notify;

use crate::StateArg;
use crate::ops::{capabilities, load_cluster, parse_cluster, print_status};
use crate::roles::{BuiltinRoles, gate};
use citadel_agent::applied::Applied;
use citadel_spec::Role;

#[derive(Args)]
pub struct UpArgs {
    /// The cluster file (default: the built-in cluster, the source design's diagram).
    #[arg(long, short)]
    pub file: Option<PathBuf>,
    #[command(flatten)]
    pub state: StateArg,
}

/// Progress lines on stderr: a live bar on a terminal, plain lines otherwise.
struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    fn new(total: usize) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total as u64);
            bar.set_style(
                ProgressStyle::with_template("{spinner} [{pos}/{len}] {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.enable_steady_tick(Duration::from_millis(100));
            bar
        });
        Progress { bar }
    }

    fn line(&self, text: String) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None => eprintln!("{text}"),
        }
    }

    fn message(&self, text: String) {
        if let Some(bar) = &self.bar {
            bar.set_message(text);
        }
    }

    fn step(&self) {
        if let Some(bar) = &self.bar {
            bar.inc(1);
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

pub async fn run(args: UpArgs, json: bool) -> anyhow::Result<i32> {
    run_jails(args, json, None).await
}

/// `citadel agent run`: the host whose jails run here, and, with a bundle, where the operator
/// reaches it and how it reaches its peers.
pub struct AgentMode {
    pub host: String,
    pub tls: Option<TlsListen>,
    pub peers: Option<Arc<tokio_rustls::rustls::ClientConfig>>,
}

/// How often an agent compares its file with its peers'.
const GOSSIP_EVERY: Duration = Duration::from_secs(2);

/// The file an agent starts from: the one last applied to it (its generation > 0 wins over
/// `--file`, which is what it was installed with), else `--file` as generation 0, else an
/// empty cluster waiting for `citadel apply`.
fn agent_file(state_dir: &Path, host: &str, file: Option<&Path>) -> anyhow::Result<Applied> {
    let stored = Applied::load(state_dir).map_err(anyhow::Error::msg)?;
    let applied = match (stored, file) {
        (Some(a), file) if a.generation > 0 || file.is_none() => return Ok(a),
        (_, Some(path)) => Applied::new(
            0,
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read cluster file {}", path.display()))?,
        ),
        (_, None) => Applied::new(0, citadel_agent::applied::placeholder(host)),
    };
    applied
        .store(state_dir)
        .with_context(|| format!("cannot write {}", Applied::path(state_dir).display()))?;
    Ok(applied)
}

/// Where an agent serves the control protocol over TLS, and with what.
pub struct TlsListen {
    pub addr: std::net::SocketAddr,
    pub config: Arc<tokio_rustls::rustls::ServerConfig>,
}

/// `up` (every jail, `agent` None) and `citadel agent run` (the jails of one host).
pub async fn run_jails(args: UpArgs, json: bool, agent: Option<AgentMode>) -> anyhow::Result<i32> {
    let (host, tls, peers) = match agent {
        Some(a) => (Some(a.host), a.tls, a.peers),
        None => (None, None, None),
    };
    let what = match &host {
        None => "citadel up".to_string(),
        Some(h) => format!("citadel agent (host {h})"),
    };
    // `up`: an invalid file creates no state dir. An agent's file may be in its state dir.
    let checked = match &host {
        None => Some(load_cluster(args.file.as_deref())?),
        Some(_) => None,
    };
    let state_dir = prepare_state_dir(&args.state.state)?;
    let _lock = lock_state_dir(&state_dir)?;
    let applied = match &host {
        Some(h) => Some(agent_file(&state_dir, h, args.file.as_deref())?),
        None => None,
    };
    let (cluster, origin) = match (checked, &applied) {
        (Some(checked), _) => checked,
        (None, Some(a)) => parse_cluster(&a.text, a.origin())?,
        (None, None) => load_cluster(args.file.as_deref())?,
    };
    let self_exe = std::env::current_exe().context("cannot find the citadel binary itself")?;
    let reaper = Arc::new(
        Reaper::spawn(&self_exe, &["__reaper"]).context("cannot start the jail watchdog")?,
    );
    let source = match &args.file {
        Some(path) => Source::File(std::path::absolute(path)?),
        None if applied.is_some() => Source::Applied,
        None => Source::Builtin,
    };
    let runtime = Arc::new(Runtime::new(
        cluster,
        origin.clone(),
        source,
        state_dir.clone(),
        self_exe,
        capabilities(),
        Arc::new(BuiltinRoles {
            state_dir: state_dir.clone(),
        }),
        reaper,
        host,
    )?);
    if let Some(applied) = applied {
        runtime.set_applied(applied);
    }
    let shutdown = Arc::new(Notify::new());
    {
        let runtime = runtime.clone();
        let shutdown = shutdown.clone();
        let path = control::socket_path(&state_dir);
        tokio::spawn(async move {
            if let Err(e) = control::serve(runtime, shutdown).await {
                tracing::error!(error = %e, socket = %path.display(), "control socket failed");
            }
        });
    }
    if let Some(tls) = tls {
        let listener = tokio::net::TcpListener::bind(tls.addr)
            .await
            .with_context(|| format!("cannot listen on {} for the operator", tls.addr))?;
        let (runtime, shutdown) = (runtime.clone(), shutdown.clone());
        tokio::spawn(async move {
            if let Err(e) = control::serve_tls(runtime, shutdown, listener, tls.config).await {
                tracing::error!(error = %e, "TLS control listener failed");
            }
        });
        eprintln!("listening for the operator on {} (mutual TLS)", tls.addr);
    }
    if let Some(client) = peers {
        runtime.set_peers(client.clone());
        tokio::spawn(citadel_agent::peers::gossip(
            runtime.clone(),
            client,
            GOSSIP_EVERY,
        ));
    }
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;

    let total = runtime.status().await.jails.len();
    eprintln!("{what}: {origin}, state in {}", state_dir.display());
    let progress = Progress::new(total);
    let start = runtime.start_all(|event| match event {
        StartProgress::Tier {
            index,
            count,
            jails,
        } => {
            let text = format!("tier {}/{count}: starting {}", index + 1, jails.join(", "));
            progress.message(text.clone());
            progress.line(text);
        }
        StartProgress::Ready {
            jail,
            healthy,
            took,
        } => {
            progress.step();
            let how = if healthy { "healthy" } else { "running" };
            progress.line(format!("  ✓ {jail} {how} after {:.1}s", took.as_secs_f64()));
        }
        StartProgress::Failed { jail, error } => {
            progress.step();
            progress.line(format!("  ✗ {jail}: {error}"));
        }
    });
    let failures = tokio::select! {
        failures = start => failures,
        _ = sigint.recv() => { runtime.stop_all().await; return Ok(130) }
        _ = sigterm.recv() => { runtime.stop_all().await; return Ok(143) }
    };
    let ready = runtime.status().await;
    let in_rotation = wait_for_gates(&state_dir, &ready, &progress).await;
    progress.finish();
    let report = runtime.status().await;
    if json {
        crate::output::json(&report)?;
    } else {
        print_status(&report);
    }
    if failures > 0 {
        eprintln!(
            "{failures} jail(s) did not come up; see `citadel status` and `citadel jail logs JAIL`"
        );
    }
    if !in_rotation {
        eprintln!(
            "the gate has not taken every healthy jail into rotation; see `citadel gate backends`"
        );
    }
    eprintln!(
        "{what} is running (pid {}); Ctrl-C or `citadel down` stops every jail",
        std::process::id()
    );

    let mut sighup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = shutdown.notified() => break,
            _ = sighup.recv() => match runtime.reload().await {
                Ok(report) => eprintln!("reloaded: {report:?}"),
                Err(e) => eprintln!("reload refused, nothing changed:\n{e}"),
            },
        }
    }
    let code = 0;
    eprintln!("stopping every jail…");
    runtime.stop_all().await;
    let _ = std::fs::remove_file(control::socket_path(&state_dir));
    eprintln!("stopped");
    Ok(code)
}

/// A jail's own check passing does not put it behind the gate: the gate takes it into rotation
/// at its next checks. Waits (bounded by the gates' check settings) until every gate this
/// agent runs has each healthy member it balances up, so the table that follows means the
/// service answers through the gate. False if some member is still out when the bound passes.
async fn wait_for_gates(state_dir: &Path, report: &StatusReport, progress: &Progress) -> bool {
    let healthy: Vec<&str> = report
        .jails
        .iter()
        .filter(|j| j.health == Health::Healthy)
        .map(|j| j.name.as_str())
        .collect();
    let gates: Vec<&str> = report
        .jails
        .iter()
        .filter(|j| j.role == Role::Gate.to_string() && healthy.contains(&j.name.as_str()))
        .map(|j| j.name.as_str())
        .collect();
    if gates.is_empty() {
        return true;
    }
    let gates = gate::running_configs(state_dir, &gates);
    // Slack for a loaded machine: the bound is the checks' schedule, not their run time.
    let bound = gate::rotation_bound(&gates) + Duration::from_secs(2);
    progress.message("waiting for the gate to take the jails into rotation".to_string());
    let began = Instant::now();
    loop {
        let members = gate::rotation(&gates, &healthy).await;
        let out: Vec<String> = members
            .iter()
            .filter(|m| !m.up)
            .map(|m| format!("{} ({} at {})", m.member, m.service, m.gate))
            .collect();
        let took = began.elapsed().as_secs_f64();
        if out.is_empty() {
            let mut names: Vec<&str> = members.iter().map(|m| m.member.as_str()).collect();
            names.sort_unstable();
            names.dedup();
            if !names.is_empty() {
                progress.line(format!(
                    "  ✓ in rotation at the gate after {took:.1}s: {}",
                    names.join(", ")
                ));
            }
            return true;
        }
        if began.elapsed() >= bound {
            progress.line(format!(
                "  ✗ not in rotation at the gate after {took:.1}s: {}",
                out.join(", ")
            ));
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn prepare_state_dir(dir: &std::path::Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir.join("jails")).with_context(|| {
        format!(
            "cannot create the state directory {}; pass a writable one with --state",
            dir.display()
        )
    })?;
    let probe = dir.join(".write-test");
    std::fs::write(&probe, b"").with_context(|| {
        format!(
            "the state directory {} is not writable; pass another with --state",
            dir.display()
        )
    })?;
    let _ = std::fs::remove_file(probe);
    dir.canonicalize()
        .with_context(|| format!("cannot resolve {}", dir.display()))
}

/// One `up` per state directory: a second would fight the first over the same jails.
fn lock_state_dir(dir: &std::path::Path) -> anyhow::Result<nix::fcntl::Flock<std::fs::File>> {
    use nix::fcntl::{Flock, FlockArg};
    use std::io::{Read, Seek, Write};
    let path = dir.join("up.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(mut lock) => {
            let _ = lock.set_len(0);
            let _ = lock.rewind();
            let _ = write!(lock, "{}", std::process::id());
            Ok(lock)
        }
        Err((mut file, _)) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            bail!(
                "another citadel up (pid {}) is running with state directory {}; stop it with `citadel down --state {}` or use another --state",
                pid.trim(),
                dir.display(),
                dir.display()
            )
        }
    }
}
