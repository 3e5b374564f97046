//! Citadel's gate role: the cluster's only door.
//!
//! One process holds the firewall (rules, per-client limits, bans), the balancer (HTTP,
//! HTTPS, TCP and UDP listeners routed to services of members with active health checks)
//! and the internal DNS. [`run`] starts everything from a resolved [`GateConfig`]; SIGHUP or
//! `POST /reload` on the admin API re-reads the config file and swaps it atomically.
//! Every default is listed in [`config`].

pub mod admin;
pub mod balancer;
pub mod config;
pub mod dns;
pub mod error;
pub mod firewall;
#[cfg(test)]
mod fuzz_tests;
pub mod http;
pub mod l4;
pub mod listeners;
pub mod metrics;
pub mod tls;
pub mod upstream;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::Mutex as AsyncMutex;

pub use config::GateConfig;
pub use error::GateError;

use balancer::Service;
use firewall::Firewall;
use metrics::Registry;

/// Everything that a reload swaps at once.
pub struct Runtime {
    pub cfg: GateConfig,
    pub services: HashMap<String, Arc<Service>>,
    pub dns: Option<Arc<dns::Zone>>,
}

impl Runtime {
    pub fn listener(&self, name: &str) -> Option<&config::ListenerConfig> {
        self.cfg.listeners.iter().find(|l| l.name == name)
    }

    /// The service a listener routes to.
    pub fn route(&self, listener: &str) -> Option<&Arc<Service>> {
        self.services.get(&self.listener(listener)?.service)
    }
}

/// State shared by every task of the gate. The firewall and metrics live outside the
/// swapped [`Runtime`], so bans, limiter state and counters survive reloads.
pub struct Gate {
    pub runtime: ArcSwap<Runtime>,
    pub firewall: Firewall,
    pub metrics: Registry,
    pub state_dir: PathBuf,
    pub config_path: Option<PathBuf>,
    listeners: AsyncMutex<listeners::Listeners>,
    /// Open client connections (TCP-based listeners).
    pub open_conns: AtomicUsize,
    /// Becomes true when the process is shutting down.
    pub stopping: Arc<tokio::sync::watch::Sender<bool>>,
    net: AsyncMutex<NetServices>,
    /// Latched once every member of the first configuration has been judged.
    ready: std::sync::atomic::AtomicBool,
}

/// The admin API and DNS servers, rebound by a reload that moves them.
#[derive(Default)]
struct NetServices {
    admin: Option<(std::net::SocketAddr, tokio::task::JoinHandle<()>)>,
    dns: Option<(Vec<std::net::SocketAddr>, dns::DnsHandle)>,
}

/// Where the gate keeps its state and finds its config file for reloads.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub state_dir: PathBuf,
    pub config_path: Option<PathBuf>,
}

impl Gate {
    /// Builds the gate's state (firewall with persisted bans, services, DNS zone) without
    /// binding anything or starting health checks; [`Gate::apply`] does that.
    pub fn new(config: &GateConfig, opts: &RunOptions) -> Result<Arc<Self>, GateError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        std::fs::create_dir_all(&opts.state_dir)
            .map_err(|e| GateError::io(format!("creating {}", opts.state_dir.display()), e))?;
        config.validate()?;
        let rt = Self::build_runtime(config.clone(), None)?;
        let gate = Arc::new(Gate {
            runtime: ArcSwap::from_pointee(rt),
            firewall: Firewall::open(&opts.state_dir)?,
            metrics: Registry::default(),
            state_dir: opts.state_dir.clone(),
            ready: std::sync::atomic::AtomicBool::new(false),
            config_path: opts.config_path.clone(),
            listeners: AsyncMutex::new(listeners::Listeners::default()),
            open_conns: AtomicUsize::new(0),
            stopping: Arc::new(tokio::sync::watch::Sender::new(false)),
            net: AsyncMutex::new(NetServices::default()),
        });
        gate.firewall.configure(&config.firewall);
        Ok(gate)
    }

    /// Ready to serve: every member has been judged once by an active check, so the pools
    /// hold what health says rather than "nobody yet". Latched: members a reload adds later do
    /// not make a running gate unready.
    pub fn ready(&self) -> bool {
        use std::sync::atomic::Ordering;
        if self.ready.load(Ordering::Acquire) {
            return true;
        }
        let all = self
            .runtime
            .load()
            .services
            .values()
            .all(|s| s.all_judged());
        if all {
            self.ready.store(true, Ordering::Release);
        }
        all
    }

    /// The DNS zone in force.
    pub fn dns_zone(&self) -> Option<Arc<dns::Zone>> {
        self.runtime.load().dns.clone()
    }

    fn build_runtime(cfg: GateConfig, old: Option<&Runtime>) -> Result<Runtime, GateError> {
        let services = cfg
            .services
            .iter()
            .map(|s| {
                let prev = old
                    .and_then(|o| o.services.get(&s.name))
                    .map(|a| a.as_ref());
                (s.name.clone(), Arc::new(Service::new(s.clone(), prev)))
            })
            .collect();
        let dns = dns::zone_of(&cfg)?;
        Ok(Runtime { cfg, services, dns })
    }

    /// Swaps in a new configuration: binds new listeners first (a failure leaves the old
    /// configuration in force), then swaps routes, rules and pools in one store.
    pub async fn apply(self: &Arc<Self>, cfg: GateConfig) -> Result<(), GateError> {
        cfg.validate()?;
        let mut ls = self.listeners.lock().await;
        let old = self.runtime.load_full();
        let rt = Arc::new(Self::build_runtime(cfg, Some(&old))?);
        let plan = ls.prepare(&rt.cfg.listeners).await?;
        self.rebind_net(&rt.cfg).await?;
        self.firewall.configure(&rt.cfg.firewall);
        for s in rt.services.values() {
            s.start_health();
        }
        self.runtime.store(rt);
        ls.commit(self, plan);
        tracing::info!("configuration applied");
        Ok(())
    }

    /// Binds the admin API and the DNS servers where the config moved them (new sockets first,
    /// then the old ones close).
    async fn rebind_net(self: &Arc<Self>, cfg: &GateConfig) -> Result<(), GateError> {
        let mut net = self.net.lock().await;
        if net.admin.as_ref().map(|a| a.0) != Some(cfg.admin) {
            listeners::ensure_free(cfg.admin, false)?;
            let l = listeners::bind_tcp(cfg.admin)?;
            let task = admin::start(self.clone(), l);
            if let Some((_, old)) = net.admin.replace((cfg.admin, task)) {
                old.abort();
            }
            tracing::info!(admin = %cfg.admin, "admin API listening");
        }
        let want: Vec<std::net::SocketAddr> = cfg
            .dns
            .as_ref()
            .map(|d| d.listen.clone())
            .unwrap_or_default();
        if net.dns.as_ref().map(|d| &d.0) != Some(&want) {
            net.dns = match &cfg.dns {
                Some(d) if !want.is_empty() => {
                    let ours = net.dns.as_ref().map(|x| x.0.clone()).unwrap_or_default();
                    for a in want.iter().filter(|a| !ours.contains(a)) {
                        listeners::ensure_free(*a, true)?;
                        listeners::ensure_free(*a, false)?;
                    }
                    Some((want, dns::start(self.clone(), d).await?))
                }
                _ => None,
            };
        }
        Ok(())
    }

    /// Re-reads the config file named at start.
    pub async fn reload(self: &Arc<Self>) -> Result<(), GateError> {
        let path = self
            .config_path
            .clone()
            .ok_or_else(|| GateError::Config("no config file to reload from".into()))?;
        let cfg = GateConfig::load(&path)?;
        self.apply(cfg).await
    }
}

/// Builds a tokio runtime and runs the gate on it until SIGTERM or SIGINT: the entry point for
/// a process whose only job is the gate (`citadel-gate`, or `citadel gate` in the gate jail).
/// `threads` of 1 uses tokio's current-thread scheduler, which costs measurably less CPU per
/// proxied request than a one-worker multi-thread runtime; None means one worker per core.
pub fn run_blocking(
    config: GateConfig,
    opts: RunOptions,
    threads: Option<usize>,
) -> Result<(), GateError> {
    let mut b = match threads {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n.max(1));
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    let rt = b
        .enable_all()
        .build()
        .map_err(|e| GateError::io("starting the tokio runtime", e))?;
    rt.block_on(run(config, opts))
}

/// Runs the gate until SIGTERM or SIGINT.
pub async fn run(config: GateConfig, opts: RunOptions) -> Result<(), GateError> {
    let gate = Gate::new(&config, &opts)?;
    gate.apply(config.clone()).await?;

    {
        let g = gate.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                g.firewall.housekeeping();
            }
        });
    }

    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup()).map_err(|e| GateError::io("SIGHUP handler", e))?;
    let mut term =
        signal(SignalKind::terminate()).map_err(|e| GateError::io("SIGTERM handler", e))?;
    let mut int =
        signal(SignalKind::interrupt()).map_err(|e| GateError::io("SIGINT handler", e))?;
    tracing::info!("gate running");
    loop {
        tokio::select! {
            _ = hup.recv() => {
                match gate.reload().await {
                    Ok(()) => tracing::info!("reloaded on SIGHUP"),
                    Err(e) => tracing::error!(error = %e, "reload failed; keeping the old configuration"),
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    // Stop answering DNS and admin requests (the DNS server's tasks end with its handle).
    {
        let mut net = gate.net.lock().await;
        net.dns = None;
        if let Some((_, a)) = net.admin.take() {
            a.abort();
        }
    }
    // Graceful stop: no new connections; HTTP connections finish their request in flight and
    // close; wait for open connections up to the grace period.
    let grace = Duration::from_millis(gate.runtime.load().cfg.shutdown_grace_ms);
    gate.listeners.lock().await.close_all();
    gate.stopping.send_replace(true);
    let open = gate.open_conns.load(Ordering::Acquire);
    tracing::info!(open, grace_ms = grace.as_millis() as u64, "gate stopping");
    let end = tokio::time::Instant::now() + grace;
    while gate.open_conns.load(Ordering::Acquire) > 0 && tokio::time::Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tracing::info!(
        left = gate.open_conns.load(Ordering::Acquire),
        "gate stopped"
    );
    Ok(())
}
