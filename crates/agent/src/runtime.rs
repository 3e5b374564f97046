//! The set of jails one agent runs, and the operator verbs on them.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use citadel_jail::netns::{self, JailIface, NetnsJail};
use citadel_jail::{
    Health, JailPaths, JailState, Launch, Reaper, Supervisor, copy_tree, expand_vars, identity_env,
    read_archive, resolve_program, write_archive,
};
use citadel_spec::{Backend, Capabilities, Cluster, Jail, JailAddress, Limits, Role, Spans};
use nix::sys::signal::Signal;
use tokio::sync::Mutex;

use crate::protocol::{Created, Identity, JailReport, RoleOp, StatusReport};

mod converge;
mod moving;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("no jail named `{0}`; `citadel status` lists them")]
    NoSuchJail(String),
    #[error("a jail named `{0}` already exists")]
    Exists(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Start(String),
    #[error("{0}")]
    Role(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RuntimeError {
    let what = what.into();
    move |source| RuntimeError::Io { what, source }
}

/// What `start_all` reports as it goes, for a progress display.
pub enum StartProgress<'a> {
    Tier {
        index: usize,
        count: usize,
        jails: Vec<String>,
    },
    Ready {
        jail: &'a str,
        healthy: bool,
        took: Duration,
    },
    Failed {
        jail: &'a str,
        error: String,
    },
}

struct Entry {
    supervisor: Supervisor,
    from_file: bool,
    /// What the supervisor launches: compared with a new file by `plan`.
    launched: Launched,
}

/// A jail's definition and its role's derived config (None for a command jail), as launched.
#[derive(Clone, Debug, PartialEq)]
struct Launched {
    jail: serde_json::Value,
    derived: Option<String>,
}

/// What the roles built into this citadel need from the agent: a jail with a role and no
/// `command` runs `citadel <role> ARGS…`, and its role decides ARGS (typically after writing
/// the role's config file, derived from the cluster, into the jail's directory).
pub trait Roles: Send + Sync {
    fn prepare(
        &self,
        cluster: &Cluster,
        jail: &Jail,
        paths: &JailPaths,
    ) -> Result<Vec<String>, String>;
    /// The config `prepare` writes for a role jail, as text (what `plan` compares).
    fn derive(&self, cluster: &Cluster, jail: &Jail, paths: &JailPaths) -> Result<String, String>;
    /// The signal that makes a running jail of this role re-read its config, if it can.
    fn reload_signal(&self, role: Role) -> Option<Signal>;
    /// Before an operator stops or restarts `jail` (`on`), whatever sends it work stops doing
    /// so and lets the work in flight finish; after it is back (`!on`), sends work again.
    fn drain<'a>(&'a self, cluster: &'a Cluster, jail: &'a Jail, on: bool) -> BoxFuture<'a>;
    /// Whether the gates of this host that balance `jail` all have it in rotation; None when
    /// none of them balances it.
    fn in_rotation<'a>(
        &'a self,
        cluster: &'a Cluster,
        jail: &'a Jail,
    ) -> BoxFuture<'a, Option<bool>>;
    /// An operator's verb of a role (`db status`, `gate …`, `app key …`) against this
    /// host's jail of that role: what `--json` prints.
    fn operate<'a>(&'a self, op: &'a RoleOp) -> BoxFuture<'a, Result<serde_json::Value, String>>;
}

pub type BoxFuture<'a, T = ()> =
    std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Where the cluster came from, so that `reload` can read it again.
#[derive(Clone, Debug)]
pub enum Source {
    File(PathBuf),
    Builtin,
    /// The file last applied to this agent (`citadel apply`, or a peer): `applied.json`.
    Applied,
}

/// Everything needed to turn a jail definition into a running supervisor.
struct Launcher {
    state_dir: PathBuf,
    self_exe: PathBuf,
    roles: Arc<dyn Roles>,
    reaper: Arc<Reaper>,
}

impl Launcher {
    fn launch(&self, cluster: &Cluster, jail: &Jail) -> Result<Launch, RuntimeError> {
        let paths = JailPaths::new(&self.state_dir, &jail.name);
        let env = identity_env(cluster, jail, &paths);
        let (program, args) = match &jail.command {
            Some(cmd) => (
                resolve_program(&jail.name, cmd, &env, &self.self_exe)
                    .map_err(|e| RuntimeError::Start(e.to_string()))?,
                jail.args.iter().map(|a| expand_vars(a, &env)).collect(),
            ),
            // A role's own program: this citadel, as `citadel <role> …`.
            None => {
                paths.create().map_err(io(format!(
                    "jail `{}`: cannot create {}",
                    jail.name,
                    paths.root.display()
                )))?;
                let role_args = self
                    .roles
                    .prepare(cluster, jail, &paths)
                    .map_err(|e| RuntimeError::Start(format!("jail `{}`: {e}", jail.name)))?;
                let args = std::iter::once(jail.role.to_string())
                    .chain(role_args)
                    .chain(jail.args.iter().map(|a| expand_vars(a, &env)))
                    .collect();
                (self.self_exe.clone(), args)
            }
        };
        let netns = (cluster.backend_of(jail) == Backend::Netns).then(|| self.netns(cluster, jail));
        Ok(Launch {
            jail: jail.clone(),
            paths,
            program,
            args,
            env,
            netns,
        })
    }

    /// A netns jail's interfaces (`eth0`… in address order, each on its segment's bridge),
    /// cgroup (scoped by state dir, so agents never touch each other's) and limits.
    fn netns(&self, cluster: &Cluster, jail: &Jail) -> NetnsJail {
        let scope = netns::scope_of(&self.state_dir);
        let host = cluster.host(&jail.host);
        let ifaces = jail
            .addresses
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let seg = cluster.segment(&a.segment);
                let prefix = seg.map_or(32, |s| s.net.prefix_len());
                JailIface {
                    segment: a.segment.clone(),
                    inside: format!("eth{i}"),
                    host_veth: netns::veth_name(&scope, &jail.name, &a.segment),
                    bridge: netns::bridge_name(&a.segment),
                    bridge_addr: seg
                        .and_then(|s| match host {
                            Some(h) => h.bridge_address(s),
                            None => s.bridge_address(),
                        })
                        .map(|b| format!("{b}/{prefix}")),
                    uplink: host.and_then(|h| h.links.get(&a.segment).cloned()),
                    addr: format!("{}/{prefix}", a.addr),
                }
            })
            .collect();
        NetnsJail {
            init_program: self.self_exe.clone(),
            hostname: jail.name.clone(),
            ifaces,
            cgroup: format!("citadel/{scope}/{}", jail.name),
            memory: jail.limits.memory,
            cpus: jail.limits.cpus,
            pids: jail.limits.pids.unwrap_or(Limits::DEFAULT_PIDS),
        }
    }

    fn supervise(
        &self,
        cluster: &Cluster,
        jail: &Jail,
    ) -> Result<(Supervisor, Launched), RuntimeError> {
        let supervisor = Supervisor::new(self.launch(cluster, jail)?, self.reaper.clone());
        Ok((supervisor, self.launched(cluster, jail)))
    }

    /// What launching `jail` of `cluster` means, to compare with what runs.
    fn launched(&self, cluster: &Cluster, jail: &Jail) -> Launched {
        let derived = jail.command.is_none().then(|| {
            let paths = JailPaths::new(&self.state_dir, &jail.name);
            self.roles
                .derive(cluster, jail, &paths)
                .unwrap_or_else(|e| format!("(cannot derive: {e})"))
        });
        Launched {
            jail: serde_json::to_value(jail).unwrap_or_default(),
            derived,
        }
    }

    fn entry(
        &self,
        cluster: &Cluster,
        jail: &Jail,
        from_file: bool,
    ) -> Result<Entry, RuntimeError> {
        let (supervisor, launched) = self.supervise(cluster, jail)?;
        Ok(Entry {
            supervisor,
            from_file,
            launched,
        })
    }
}

pub struct Runtime {
    cluster: Mutex<Cluster>,
    /// `citadel agent`: only this host's jails run here (the whole cluster is still what
    /// roles derive their config from). `citadel up`: None, every jail runs here.
    local_host: Option<String>,
    file: String,
    source: Source,
    state_dir: PathBuf,
    caps: Capabilities,
    launcher: Launcher,
    jails: Mutex<BTreeMap<String, Entry>>,
    /// The agent's file and generation (None for `citadel up`).
    applied: std::sync::Mutex<Option<crate::applied::Applied>>,
    /// One apply (operator's or a peer's file) at a time.
    applying: Mutex<()>,
    /// This host's certificate as a client of the other agents (`jail move` sends with it).
    peers: std::sync::Mutex<Option<Arc<tokio_rustls::rustls::ClientConfig>>>,
}

/// What a reload changed.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct ReloadReport {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub restarted: Vec<String>,
    /// Role jails told to re-read their config (e.g. the gate, by SIGHUP).
    pub reloaded: Vec<String>,
    /// Jails that were not running and were started.
    #[serde(default)]
    pub started: Vec<String>,
    /// Restarts left to the operator's rollout.
    #[serde(default)]
    pub held: Vec<String>,
}

/// How long `up` waits for one tier of jails to come up before it goes on without them.
pub const TIER_TIMEOUT: Duration = Duration::from_secs(30);

impl Runtime {
    /// Builds the runtime for `cluster`, adding the jails that clone and restore created in
    /// earlier runs (their definitions live in the state directory).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        mut cluster: Cluster,
        file: String,
        source: Source,
        state_dir: PathBuf,
        self_exe: PathBuf,
        caps: Capabilities,
        roles: Arc<dyn Roles>,
        reaper: Arc<Reaper>,
        local_host: Option<String>,
    ) -> Result<Runtime, RuntimeError> {
        if let Some(host) = &local_host
            && cluster.host(host).is_none()
        {
            let hosts: Vec<&str> = cluster.hosts.iter().map(|h| h.name.as_str()).collect();
            return Err(RuntimeError::Invalid(format!(
                "host `{host}` is not in {file} (its hosts: {})",
                hosts.join(", ")
            )));
        }
        let local = |j: &Jail| local_host.as_ref().is_none_or(|h| &j.host == h);
        let from_file: Vec<String> = cluster.jails.iter().map(|j| j.name.clone()).collect();
        for jail in saved_jails(&state_dir)? {
            if cluster.jail(&jail.name).is_none() {
                cluster.jails.push(jail);
            }
        }
        citadel_spec::recheck(
            &cluster,
            &caps,
            &state_dir.join("jails").display().to_string(),
        )
        .map_err(|r| RuntimeError::Invalid(r.to_string()))?;
        if cluster
            .jails
            .iter()
            .any(|j| local(j) && cluster.backend_of(j) == Backend::Netns)
        {
            // What netns jails of this state dir left when everything died at once (the
            // watchdog included): cgroups, unused bridges.
            for leftover in netns::reconcile(&netns::scope_of(&state_dir)) {
                tracing::warn!(%leftover, "removed what an earlier run left behind");
            }
        }
        let launcher = Launcher {
            state_dir: state_dir.clone(),
            self_exe,
            roles,
            reaper,
        };
        let mut jails = BTreeMap::new();
        for jail in cluster.jails.iter().filter(|j| local(j)) {
            jails.insert(
                jail.name.clone(),
                launcher.entry(&cluster, jail, from_file.contains(&jail.name))?,
            );
        }
        Ok(Runtime {
            cluster: Mutex::new(cluster),
            local_host,
            file,
            source,
            state_dir,
            caps,
            launcher,
            jails: Mutex::new(jails),
            applied: std::sync::Mutex::new(None),
            applying: Mutex::new(()),
            peers: std::sync::Mutex::new(None),
        })
    }

    /// Reads the cluster file again and makes the running jails match it: new jails start,
    /// removed ones stop (their data stays), changed ones restart, and role jails that can
    /// re-read their config (the gate) are told to. An invalid file changes nothing.
    pub async fn reload(&self) -> Result<ReloadReport, RuntimeError> {
        // Once an apply (or a peer) gave this agent a file, that is what it runs.
        let (text, origin) = match (&self.source, self.applied()) {
            (_, Some(a)) if a.generation > 0 => (a.text.clone(), a.origin()),
            (Source::Applied, Some(a)) => (a.text.clone(), a.origin()),
            (Source::Applied, None) => return Ok(ReloadReport::default()),
            (Source::File(path), _) => (
                std::fs::read_to_string(path).map_err(io(format!("reading {}", path.display())))?,
                path.display().to_string(),
            ),
            (Source::Builtin, _) => (
                citadel_spec::BUILTIN.to_string(),
                citadel_spec::BUILTIN_ORIGIN.to_string(),
            ),
        };
        let next = self.parse(&text, &origin)?;
        let _one = self.applying.lock().await;
        Ok(self.converge(next, &[], false).await?.1)
    }

    /// Whether `jail` runs under this runtime (every jail for `up`, the host's for an agent).
    fn is_local(&self, jail: &Jail) -> bool {
        self.local_host.as_ref().is_none_or(|h| &jail.host == h)
    }

    /// The host this runtime is the agent of (None: `citadel up`, every host).
    pub fn local_host(&self) -> Option<&str> {
        self.local_host.as_deref()
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// Starts every jail, tier by tier (data, then services, then the gate), waiting for each
    /// tier to be up — healthy where it has a health check — before the next.
    pub async fn start_all(&self, mut progress: impl FnMut(StartProgress<'_>)) -> usize {
        let tiers = self.tiers().await;
        let count = tiers.len();
        let mut failures = 0;
        for (index, names) in tiers.into_iter().enumerate() {
            progress(StartProgress::Tier {
                index,
                count,
                jails: names.clone(),
            });
            let started = Instant::now();
            let mut waiting = Vec::new();
            for name in &names {
                let Some(sup) = self.supervisor(name).await else {
                    continue;
                };
                if let Some(to) = self.moving_to(name) {
                    tracing::warn!(jail = %name, %to, "not started: it was moving to another host (`citadel jail start` brings it back here)");
                    continue;
                }
                match sup.start().await {
                    Ok(()) => waiting.push((name.clone(), sup)),
                    Err(error) => {
                        failures += 1;
                        progress(StartProgress::Failed { jail: name, error });
                    }
                }
            }
            for (name, sup) in waiting {
                let deadline = started + TIER_TIMEOUT;
                match wait_up(&sup, deadline, TIER_TIMEOUT).await {
                    Ok(healthy) => progress(StartProgress::Ready {
                        jail: &name,
                        healthy,
                        took: started.elapsed(),
                    }),
                    Err(error) => {
                        failures += 1;
                        progress(StartProgress::Failed { jail: &name, error });
                    }
                }
            }
        }
        failures
    }

    /// Stops every jail in the reverse of start order; a tier's jails stop together.
    pub async fn stop_all(&self) {
        for names in self.tiers().await.into_iter().rev() {
            let mut stops = Vec::new();
            for name in names {
                if let Some(sup) = self.supervisor(&name).await {
                    stops.push(tokio::spawn(async move { sup.stop().await }));
                }
            }
            for s in stops {
                let _ = s.await;
            }
        }
    }

    async fn tiers(&self) -> Vec<Vec<String>> {
        let cluster = self.cluster.lock().await;
        let mut tiers: BTreeMap<u8, Vec<String>> = BTreeMap::new();
        for j in &cluster.jails {
            tiers
                .entry(j.role.start_tier())
                .or_default()
                .push(j.name.clone());
        }
        tiers.into_values().collect()
    }

    async fn supervisor(&self, name: &str) -> Option<Supervisor> {
        self.jails
            .lock()
            .await
            .get(name)
            .map(|e| e.supervisor.clone())
    }

    async fn require(&self, name: &str) -> Result<Supervisor, RuntimeError> {
        self.supervisor(name)
            .await
            .ok_or_else(|| RuntimeError::NoSuchJail(name.to_string()))
    }

    pub async fn status(&self) -> StatusReport {
        let cluster = self.cluster.lock().await.clone();
        let jails = self.jails.lock().await;
        let mut rows = Vec::new();
        for jail in &cluster.jails {
            let Some(entry) = jails.get(&jail.name) else {
                continue;
            };
            let s = entry.supervisor.status();
            rows.push(JailReport {
                name: jail.name.clone(),
                host: jail.host.clone(),
                role: jail.role.to_string(),
                backend: cluster.backend_of(jail).to_string(),
                addresses: jail
                    .addresses
                    .iter()
                    .map(|a| format!("{}={}", a.segment, a.addr))
                    .collect(),
                state: s.state,
                pid: s.pid,
                uptime_ms: s
                    .started_at
                    .filter(|_| s.pid.is_some())
                    .and_then(|t| t.elapsed().ok())
                    .map(|d| d.as_millis().try_into().unwrap_or(u64::MAX)),
                restarts: s.restarts,
                last_exit: s.last_exit,
                health: s.health,
                has_health_check: jail.health.is_some(),
                error: s.error,
                from_file: entry.from_file,
            });
        }
        let applied = self.applied();
        StatusReport {
            cluster: cluster.name.clone(),
            zone: cluster.zone.clone(),
            file: match &applied {
                Some(a) if a.generation > 0 => a.origin(),
                _ => self.file.clone(),
            },
            state_dir: self.state_dir.clone(),
            agent_pid: std::process::id(),
            generation: applied.as_ref().map_or(0, |a| a.generation),
            sha256: applied.map(|a| a.sha256).unwrap_or_default(),
            jails: rows,
        }
    }

    /// Tells the roles that send a jail work (the gate) to drain it, or to use it again.
    pub async fn drain(&self, name: &str, on: bool) {
        let cluster = self.cluster.lock().await.clone();
        if let Some(jail) = cluster.jail(name) {
            self.launcher.roles.drain(&cluster, jail, on).await;
        }
    }

    pub async fn start(&self, name: &str) -> Result<(), RuntimeError> {
        let sup = self.require(name).await?;
        // The operator's start (or a move's rollback): it runs here again.
        self.clear_moving(name);
        sup.start().await.map_err(RuntimeError::Start)?;
        self.drain(name, false).await;
        Ok(())
    }

    /// Stops a jail gracefully: drained at the gate first, so no request in flight is cut.
    pub async fn stop(&self, name: &str) -> Result<(), RuntimeError> {
        let sup = self.require(name).await?;
        self.drain(name, true).await;
        sup.stop().await;
        Ok(())
    }

    pub async fn restart(&self, name: &str) -> Result<(), RuntimeError> {
        let sup = self.require(name).await?;
        self.drain(name, true).await;
        let result = sup.restart().await.map_err(RuntimeError::Start);
        self.drain(name, false).await;
        result
    }

    /// A jail's console log: one that runs here, or ran here (its log is still there).
    pub async fn console_log(&self, name: &str) -> Result<PathBuf, RuntimeError> {
        let log = JailPaths::new(&self.state_dir, name).console_log();
        if self.supervisor(name).await.is_some() || log.exists() {
            Ok(log)
        } else {
            Err(RuntimeError::NoSuchJail(name.to_string()))
        }
    }

    /// An operator's verb of a role, run against this host's jail of that role.
    pub async fn role(&self, op: &RoleOp) -> Result<serde_json::Value, RuntimeError> {
        self.launcher
            .roles
            .operate(op)
            .await
            .map_err(RuntimeError::Role)
    }

    pub async fn identity(&self, name: &str) -> Result<Identity, RuntimeError> {
        let cluster = self.cluster.lock().await;
        let jail = cluster
            .jail(name)
            .ok_or_else(|| RuntimeError::NoSuchJail(name.to_string()))?;
        let paths = JailPaths::new(&self.state_dir, name);
        paths.create().map_err(io(format!(
            "jail `{name}`: cannot create {}",
            paths.root.display()
        )))?;
        let netns_pid = if cluster.backend_of(jail) == Backend::Netns {
            let helper = self
                .jails
                .lock()
                .await
                .get(name)
                .and_then(|e| e.supervisor.status().pid);
            Some(
                helper
                    .and_then(netns::init_pid)
                    .ok_or_else(|| RuntimeError::Start(format!("jail `{name}` is not running: start it before exec (`citadel jail start {name}`)")))?,
            )
        } else {
            None
        };
        let cgroup_procs = if netns_pid.is_some() {
            let rel = self.launcher.netns(&cluster, jail).cgroup;
            netns::Cgroups::detect()
                .dirs(&rel)
                .into_iter()
                .map(|d| d.join("cgroup.procs"))
                .collect()
        } else {
            Vec::new()
        };
        Ok(Identity {
            env: identity_env(&cluster, jail, &paths),
            cwd: paths.data(),
            netns_pid,
            cgroup_procs,
        })
    }

    /// Runs `f` with the jail's processes frozen (SIGSTOP), so its data is copied in one
    /// consistent state, as after a power cut.
    /// The copy runs on a blocking thread: a large data directory must not stall the agent's
    /// health checks and control socket.
    async fn frozen<T: Send + 'static>(
        &self,
        name: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, RuntimeError> {
        let sup = self.require(name).await?;
        let running = sup.status().pid.is_some();
        if running {
            sup.signal(Signal::SIGSTOP)
                .await
                .map_err(RuntimeError::Start)?;
        }
        let out = tokio::task::spawn_blocking(f).await;
        if running {
            sup.signal(Signal::SIGCONT)
                .await
                .map_err(RuntimeError::Start)?;
        }
        out.map_err(|e| RuntimeError::Start(format!("copying the data of `{name}`: {e}")))
    }

    pub async fn clone_jail(
        &self,
        source: &str,
        name: &str,
        addresses: &BTreeMap<String, String>,
    ) -> Result<Created, RuntimeError> {
        let mut jail = {
            let cluster = self.cluster.lock().await;
            cluster
                .jail(source)
                .cloned()
                .ok_or_else(|| RuntimeError::NoSuchJail(source.to_string()))?
        };
        jail.name = name.to_string();
        jail.addresses = self.pick_addresses(&jail.addresses, addresses).await?;
        let from = JailPaths::new(&self.state_dir, source);
        let to = JailPaths::new(&self.state_dir, name);
        if to.root.exists() {
            return Err(RuntimeError::Exists(name.to_string()));
        }
        let data = from.data();
        let dest = to.data();
        let bytes = self
            .frozen(source, move || {
                if data.exists() {
                    copy_tree(&data, &dest)
                } else {
                    Ok(0)
                }
            })
            .await?
            .map_err(io(format!("copying the data of `{source}` to `{name}`")))?;
        let created = self.add(jail, bytes).await;
        if created.is_err() {
            let _ = std::fs::remove_dir_all(&to.root);
        }
        created
    }

    pub async fn archive(&self, name: &str, file: &Path) -> Result<u64, RuntimeError> {
        let jail = {
            let cluster = self.cluster.lock().await;
            cluster
                .jail(name)
                .cloned()
                .ok_or_else(|| RuntimeError::NoSuchJail(name.to_string()))?
        };
        let definition =
            serde_json::to_vec_pretty(&jail).map_err(|e| RuntimeError::Invalid(e.to_string()))?;
        let paths = JailPaths::new(&self.state_dir, name);
        paths.create().map_err(io(format!(
            "jail `{name}`: cannot create {}",
            paths.root.display()
        )))?;
        let data = paths.data();
        let target = file.to_path_buf();
        self.frozen(name, move || write_archive(&target, &definition, &data))
            .await?
            .map_err(io(format!("writing archive {}", file.display())))?;
        std::fs::metadata(file)
            .map(|m| m.len())
            .map_err(io(format!("reading archive {}", file.display())))
    }

    pub async fn restore(
        &self,
        file: &Path,
        name: Option<&str>,
        host: Option<&str>,
    ) -> Result<Created, RuntimeError> {
        let contents =
            read_archive(file, None).map_err(io(format!("reading archive {}", file.display())))?;
        let mut jail: Jail = serde_json::from_slice(&contents.definition).map_err(|e| {
            RuntimeError::Invalid(format!(
                "{}: the jail definition inside is not valid: {e}",
                file.display()
            ))
        })?;
        if let Some(name) = name {
            jail.name = name.to_string();
        }
        if let Some(host) = host {
            jail.host = host.to_string();
        }
        {
            let cluster = self.cluster.lock().await;
            if cluster.host(&jail.host).is_none() {
                let hosts: Vec<&str> = cluster.hosts.iter().map(|h| h.name.as_str()).collect();
                return Err(RuntimeError::Invalid(format!(
                    "the archived jail `{}` was on host `{}`, which this cluster does not have; restore it with --host (one of: {})",
                    jail.name,
                    jail.host,
                    hosts.join(", ")
                )));
            }
        }
        // Keep the archived addresses where they are free; pick others where not.
        let wanted: BTreeMap<String, String> = BTreeMap::new();
        jail.addresses = self.pick_addresses(&jail.addresses, &wanted).await?;
        let paths = JailPaths::new(&self.state_dir, &jail.name);
        if paths.root.exists() {
            return Err(RuntimeError::Exists(jail.name.clone()));
        }
        let data = paths.data();
        read_archive(file, Some(&data))
            .map_err(io(format!("unpacking archive {}", file.display())))?;
        let bytes = dir_size(&data);
        let created = self.add(jail, bytes).await;
        if created.is_err() {
            let _ = std::fs::remove_dir_all(&paths.root);
        }
        created
    }

    /// Addresses for a new jail on the same segments as `template`: the ones asked for, else
    /// the template's own when free, else the first free address of the segment.
    async fn pick_addresses(
        &self,
        template: &[JailAddress],
        asked: &BTreeMap<String, String>,
    ) -> Result<Vec<JailAddress>, RuntimeError> {
        let cluster = self.cluster.lock().await;
        for segment in asked.keys() {
            if !template.iter().any(|a| &a.segment == segment) {
                return Err(RuntimeError::Invalid(format!(
                    "the jail is not on segment `{segment}`"
                )));
            }
        }
        let taken = |addr: Ipv4Addr| {
            cluster
                .jails
                .iter()
                .any(|j| j.addresses.iter().any(|a| a.addr == addr))
        };
        let mut out = Vec::new();
        for a in template {
            let addr = match asked.get(&a.segment) {
                Some(text) => text.parse().map_err(|_| {
                    RuntimeError::Invalid(format!("\"{text}\" is not an IPv4 address"))
                })?,
                None if !taken(a.addr)
                    && cluster
                        .segment(&a.segment)
                        .is_some_and(|s| s.net.contains(&a.addr)) =>
                {
                    a.addr
                }
                None => cluster.free_address(&a.segment).ok_or_else(|| {
                    RuntimeError::Invalid(format!(
                        "segment `{}` has no free address left",
                        a.segment
                    ))
                })?,
            };
            out.push(JailAddress {
                segment: a.segment.clone(),
                addr,
            });
        }
        Ok(out)
    }

    /// Adds a jail created at run time: checks it against the cluster, saves its definition,
    /// and gives it a (stopped) supervisor.
    async fn add(&self, mut jail: Jail, bytes: u64) -> Result<Created, RuntimeError> {
        jail.spans = Spans::default();
        if !self.is_local(&jail) {
            return Err(RuntimeError::Invalid(format!(
                "jail `{}` would be on host `{}`; this agent runs host `{}` (restore it with --host {}, or on that host's agent)",
                jail.name,
                jail.host,
                self.local_host.as_deref().unwrap_or_default(),
                self.local_host.as_deref().unwrap_or_default()
            )));
        }
        let mut cluster = self.cluster.lock().await;
        if cluster.jail(&jail.name).is_some() {
            return Err(RuntimeError::Exists(jail.name.clone()));
        }
        let mut candidate = cluster.clone();
        candidate.jails.push(jail.clone());
        citadel_spec::recheck(&candidate, &self.caps, &format!("new jail `{}`", jail.name))
            .map_err(|r| RuntimeError::Invalid(r.to_string().trim_end().to_string()))?;
        let paths = JailPaths::new(&self.state_dir, &jail.name);
        paths
            .create()
            .map_err(io(format!("creating {}", paths.root.display())))?;
        let json =
            serde_json::to_vec_pretty(&jail).map_err(|e| RuntimeError::Invalid(e.to_string()))?;
        std::fs::write(paths.definition(), json)
            .map_err(io(format!("writing {}", paths.definition().display())))?;
        let entry = self.launcher.entry(&candidate, &jail, false)?;
        self.jails.lock().await.insert(jail.name.clone(), entry);
        *cluster = candidate;
        Ok(Created {
            name: jail.name.clone(),
            host: jail.host.clone(),
            addresses: jail
                .addresses
                .iter()
                .map(|a| format!("{}={}", a.segment, a.addr))
                .collect(),
            bytes,
        })
    }

    /// Stops a jail and deletes it with its data. Returns whether it is still in the cluster
    /// file (and so comes back, empty, at the next `up`).
    pub async fn destroy(&self, name: &str) -> Result<bool, RuntimeError> {
        let sup = self.require(name).await?;
        sup.stop().await;
        let entry = self.jails.lock().await.remove(name);
        self.cluster.lock().await.jails.retain(|j| j.name != name);
        let paths = JailPaths::new(&self.state_dir, name);
        if paths.root.exists() {
            std::fs::remove_dir_all(&paths.root)
                .map_err(io(format!("deleting {}", paths.root.display())))?;
        }
        Ok(entry.is_some_and(|e| e.from_file))
    }
}

/// Waits until a started jail is up: healthy if it has a health check, running if not.
/// Returns whether it was seen healthy.
async fn wait_up(sup: &Supervisor, deadline: Instant, limit: Duration) -> Result<bool, String> {
    let mut rx = sup.watch();
    loop {
        let s = rx.borrow_and_update().clone();
        match (s.state, &s.health) {
            (JailState::Running | JailState::CrashLooping, Health::Healthy) => return Ok(true),
            (JailState::Failed, _) => return Err(s.error.unwrap_or_else(|| "failed".into())),
            _ => {}
        }
        let wait = deadline.saturating_duration_since(Instant::now());
        if wait.is_zero() {
            return Err(match (s.state, s.health, s.last_exit) {
                (_, Health::Unhealthy(why), _) => {
                    format!("not healthy after {}s: {why}", limit.as_secs())
                }
                (JailState::Running, Health::Unknown, _) if s.pid.is_some() => {
                    return Ok(false);
                }
                (state, _, Some(exit)) => format!("{state} (last {exit}); see `citadel jail logs`"),
                (state, _, None) => format!("{state}"),
            });
        }
        let _ = tokio::time::timeout(wait, rx.changed()).await;
    }
}

fn saved_jails(state_dir: &Path) -> Result<Vec<Jail>, RuntimeError> {
    let dir = state_dir.join("jails");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let def = entry.path().join("jail.json");
        let Ok(bytes) = std::fs::read(&def) else {
            continue;
        };
        let jail: Jail = serde_json::from_slice(&bytes).map_err(|e| {
            RuntimeError::Invalid(format!("{}: {e}; remove it or fix it", def.display()))
        })?;
        out.push(jail);
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_size(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}
