//! Where the operator's verbs go. By default, this machine's `citadel up` or agent (the
//! control socket of `--state`). With `--file FILE` or `--dir DIR` (as `plan`/`apply` take
//! them), the cluster's agents over mutual TLS: a jail verb goes to the agent of the host that
//! holds the jail (the file's `host =`), `status` asks every host, and a role's verbs
//! (`db status`, `gate …`, `app key …`) go to a host that runs a jail of that role, whose
//! agent runs them there. The requests are the same either way (`citadel_agent::protocol`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use citadel_agent::control::{ClientError, Endpoint};
use citadel_agent::protocol::{JailReport, Request, RoleOp, StatusReport};
use clap::Args;
use serde::Serialize;

use crate::deploy::{ASK, Session, gates};

/// Where the operator's verbs go: a local state directory, or the cluster's agents.
#[derive(Args, Clone)]
pub struct Target {
    /// State directory of the `citadel up` or agent on this machine.
    #[arg(long, global = true, env = "CITADEL_STATE", default_value = ".citadel")]
    pub state: PathBuf,
    /// The cluster file: go through every host's agent (mutual TLS) instead of this
    /// machine's `citadel up` (default with --dir: DIR/citadel.toml).
    // Its own id: `jail archive|restore` have a positional FILE.
    #[arg(long = "file", id = "cluster_file", global = true, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Where `citadel init` wrote `pki/` (the CA and your certificate); with --file
    /// (default: .).
    #[arg(long = "dir", id = "pki_dir", global = true, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

impl Target {
    pub fn dir(&self) -> PathBuf {
        self.dir.clone().unwrap_or_else(|| PathBuf::from("."))
    }

    pub fn file(&self) -> PathBuf {
        self.file
            .clone()
            .unwrap_or_else(|| self.dir().join("citadel.toml"))
    }

    /// The local state directory, or the cluster (its file read and checked).
    pub fn resolve(&self) -> anyhow::Result<Where> {
        if self.file.is_none() && self.dir.is_none() {
            return Ok(Where::Local(self.state.clone()));
        }
        Ok(Where::Cluster(Arc::new(Session::load(
            &self.file(),
            &self.dir(),
        )?)))
    }
}

pub enum Where {
    Local(PathBuf),
    Cluster(Arc<Session>),
}

/// A jail's agent: the local one, or the agent of the host that holds it.
pub struct At {
    pub endpoint: Endpoint,
    remote: Option<(Arc<Session>, String)>,
}

impl At {
    /// Where `jail` is: its host in the file, else (a jail made by clone or restore) the host
    /// whose agent lists it.
    pub async fn of(place: &Where, jail: &str) -> anyhow::Result<At> {
        let session = match place {
            Where::Local(state) => {
                return Ok(At {
                    endpoint: Endpoint::Local(state.clone()),
                    remote: None,
                });
            }
            Where::Cluster(session) => session.clone(),
        };
        let host = match session.cluster.jail(jail) {
            Some(j) => j.host.clone(),
            None => {
                let hosts = statuses(&session).await;
                let found = hosts.iter().find(|h| {
                    h.report
                        .as_ref()
                        .is_some_and(|r| r.jails.iter().any(|j| j.name == jail))
                });
                match found {
                    Some(h) => h.host.clone(),
                    None => {
                        let down: Vec<String> = hosts
                            .iter()
                            .filter_map(|h| Some(format!("{}: {}", h.host, h.error.as_ref()?)))
                            .collect();
                        bail!(
                            "no jail `{jail}` in {} nor on any host's agent{}",
                            session.origin,
                            if down.is_empty() {
                                String::new()
                            } else {
                                format!(" that answered (not asked: {})", down.join("; "))
                            }
                        );
                    }
                }
            }
        };
        Ok(At {
            endpoint: session.endpoint(&host)?,
            remote: Some((session, host)),
        })
    }

    /// One request to the jail's agent; a refusal names the host.
    pub async fn call<T: serde::de::DeserializeOwned>(
        &self,
        request: &Request,
    ) -> anyhow::Result<T> {
        let answer = self.endpoint.call(request).await;
        self.named(answer)
    }

    /// `host`'s agent, for a jail not yet anywhere (restore).
    pub fn on_host(session: &Arc<Session>, host: &str) -> anyhow::Result<At> {
        Ok(At {
            endpoint: session.endpoint(host)?,
            remote: Some((session.clone(), host.to_string())),
        })
    }

    /// A request followed by `file` (restore), then its answer.
    pub async fn send_file<T: serde::de::DeserializeOwned>(
        &self,
        request: &Request,
        file: &std::path::Path,
    ) -> anyhow::Result<T> {
        let answer = self.endpoint.send_file(request, file).await;
        self.named(answer)
    }

    /// A streamed request (logs, exec): chunks to `sink`; the exit code.
    pub async fn stream(
        &self,
        request: &Request,
        input: Option<Box<dyn tokio::io::AsyncRead + Send + Unpin>>,
        sink: impl FnMut(citadel_agent::control::Chunk) -> std::io::Result<()>,
    ) -> anyhow::Result<i32> {
        let answer = self.endpoint.stream(request, input, sink).await;
        self.named(answer)
    }

    fn named<T>(&self, answer: Result<T, ClientError>) -> anyhow::Result<T> {
        match (answer, &self.remote) {
            (Ok(v), _) => Ok(v),
            (Err(ClientError::Refused(why)), Some((_, host))) => {
                bail!("host `{host}`: {why}")
            }
            (Err(e), _) => Err(e.into()),
        }
    }

    /// Through the agents: drains `jail` (`on`), or undrains it, at every gate that balances
    /// it on *another* host (its own agent drains at its own host's gates, as under `up`).
    pub async fn drain_elsewhere(&self, jail: &str, on: bool) {
        let Some((session, host)) = &self.remote else {
            return;
        };
        for g in gates(&session.cluster) {
            if g.host == *host || !g.members.iter().any(|m| m == jail) {
                continue;
            }
            let request = Request::Drain {
                jail: jail.to_string(),
                on,
            };
            if let Err(e) = session.ask::<()>(&g.host, &request, ASK).await {
                eprintln!(
                    "warning: cannot {} `{jail}` at the gate on `{}`: {e}",
                    if on { "drain" } else { "undrain" },
                    g.host
                );
            }
        }
    }
}

/// One host's answer to `status`, or why there is none.
#[derive(Clone, Serialize)]
pub struct HostStatus {
    pub host: String,
    pub agent: Option<SocketAddr>,
    #[serde(skip)]
    pub report: Option<StatusReport>,
    pub generation: Option<u64>,
    pub sha256: Option<String>,
    /// Its generation is older than the newest a host answered with.
    pub behind: bool,
    pub error: Option<String>,
}

/// Every host's status, asked at once; `behind` set against the newest generation.
pub async fn statuses(session: &Arc<Session>) -> Vec<HostStatus> {
    let mut asks = Vec::new();
    for host in &session.cluster.hosts {
        let (me, name) = (session.clone(), host.name.clone());
        asks.push(tokio::spawn(async move {
            let answer = me.ask::<StatusReport>(&name, &Request::Status, ASK).await;
            HostStatus {
                agent: me.agent(&name),
                host: name,
                generation: answer.as_ref().ok().map(|r| r.generation),
                sha256: answer.as_ref().ok().map(|r| r.sha256.clone()),
                behind: false,
                error: answer.as_ref().err().cloned(),
                report: answer.ok(),
            }
        }));
    }
    let mut rows = Vec::new();
    for a in asks {
        if let Ok(row) = a.await {
            rows.push(row);
        }
    }
    let newest = rows.iter().filter_map(|r| r.generation).max().unwrap_or(0);
    for r in &mut rows {
        r.behind = r.generation.is_some_and(|g| g < newest);
    }
    rows
}

/// The cluster as one table: each host's agent and generation (BEHIND, or unreachable with
/// why), then every jail with its host; the file's jails on a host that did not answer are
/// listed as unknown.
#[derive(Serialize)]
pub struct ClusterStatus {
    pub cluster: String,
    pub zone: String,
    pub file: String,
    pub newest_generation: u64,
    /// Whether some host runs exactly this file.
    pub file_applied: bool,
    pub hosts: Vec<HostStatus>,
    pub jails: Vec<JailReport>,
    /// The file's jails on hosts that did not answer, as the file defines them.
    pub unknown: Vec<UnknownJail>,
}

/// A jail of the file on a host that did not answer: what the file says of it.
#[derive(Serialize)]
pub struct UnknownJail {
    pub name: String,
    pub host: String,
    pub role: String,
    pub backend: String,
    pub addresses: Vec<String>,
}

pub async fn cluster_status(session: &Arc<Session>) -> ClusterStatus {
    let hosts = statuses(session).await;
    let sha = citadel_agent::applied::sha256(&session.text);
    let mut jails = Vec::new();
    let mut unknown = Vec::new();
    for h in &hosts {
        match &h.report {
            Some(r) => jails.extend(r.jails.iter().cloned()),
            None => unknown.extend(
                session
                    .cluster
                    .jails
                    .iter()
                    .filter(|j| j.host == h.host)
                    .map(|j| UnknownJail {
                        name: j.name.clone(),
                        host: j.host.clone(),
                        role: j.role.to_string(),
                        backend: session.cluster.backend_of(j).to_string(),
                        addresses: j
                            .addresses
                            .iter()
                            .map(|a| format!("{}={}", a.segment, a.addr))
                            .collect(),
                    }),
            ),
        }
    }
    // In the file's order, then the jails made at run time.
    let order = |name: &str| {
        session
            .cluster
            .jails
            .iter()
            .position(|j| j.name == name)
            .unwrap_or(usize::MAX)
    };
    jails.sort_by_key(|j| order(&j.name));
    ClusterStatus {
        cluster: session.cluster.name.clone(),
        zone: session.cluster.zone.clone(),
        file: session.origin.clone(),
        newest_generation: hosts.iter().filter_map(|h| h.generation).max().unwrap_or(0),
        file_applied: hosts
            .iter()
            .any(|h| h.sha256.as_deref() == Some(sha.as_str())),
        hosts,
        jails,
        unknown,
    }
}

pub fn print_cluster_status(status: &ClusterStatus) {
    println!(
        "cluster {} (zone {}) from {}: {} host(s), newest generation {}",
        status.cluster,
        status.zone,
        status.file,
        status.hosts.len(),
        status.newest_generation
    );
    let mut table = crate::output::table(["HOST", "AGENT", "GENERATION", "STATE"]);
    for h in &status.hosts {
        let state = match (&h.error, h.behind) {
            (Some(e), _) => format!("UNREACHABLE: {e}"),
            (None, true) => format!(
                "BEHIND (generation {} of {}: catching up from its peers)",
                h.generation.unwrap_or(0),
                status.newest_generation
            ),
            (None, false) => "ok".into(),
        };
        table.add_row(vec![
            h.host.clone(),
            h.agent.map_or("-".into(), |a| a.to_string()),
            h.generation.map_or("-".into(), |g| g.to_string()),
            state,
        ]);
    }
    println!("{table}");
    let mut table = crate::ops::jail_table(&status.jails);
    for j in &status.unknown {
        let mut row = vec![
            j.name.clone(),
            j.host.clone(),
            j.role.clone(),
            j.backend.clone(),
            j.addresses.join(" "),
            "unknown".into(),
        ];
        row.extend(std::iter::repeat_n("-".to_string(), 4));
        row.push(format!("? (host {} unreachable)", j.host));
        table.add_row(row);
    }
    println!("{table}");
    for j in &status.jails {
        if let Some(e) = &j.error {
            println!("{}: {e}", j.name);
        }
    }
    if !status.file_applied && status.hosts.iter().any(|h| h.error.is_none()) {
        println!(
            "note: no host runs {} as it is now: `citadel plan {}` shows what applying it changes",
            status.file, status.file
        );
    }
}

/// A role's verb: run here against this state directory's jail of the role, or through the
/// agent of a host that runs one (the first that answers, in the file's order).
pub async fn role(target: &Target, verb: &RoleOp) -> anyhow::Result<serde_json::Value> {
    let session = match target.resolve()? {
        Where::Local(state) => return crate::roles::operate(&state, verb).await,
        Where::Cluster(session) => session,
    };
    let mut hosts: Vec<String> = Vec::new();
    let named_gate = match verb {
        RoleOp::Gate { jail: Some(j), .. } => Some(j.as_str()),
        _ => None,
    };
    for j in &session.cluster.jails {
        let fits = match named_gate {
            Some(name) => j.name == name,
            None => verb.roles().contains(&j.role) && j.command.is_none(),
        };
        if fits && !hosts.contains(&j.host) {
            hosts.push(j.host.clone());
        }
    }
    if hosts.is_empty() {
        match named_gate {
            Some(name) => bail!("no jail `{name}` in {}", session.origin),
            None => bail!(
                "no {} jail in {}",
                verb.roles()
                    .iter()
                    .map(|r| r.to_string())
                    .collect::<Vec<_>>()
                    .join(" or "),
                session.origin
            ),
        }
    }
    let mut unreachable = Vec::new();
    for host in &hosts {
        let endpoint = session.endpoint(host)?;
        let request = Request::Role { verb: verb.clone() };
        match endpoint.call::<serde_json::Value>(&request).await {
            Ok(v) => return Ok(v),
            Err(e @ ClientError::Unreachable(..)) => unreachable.push(e.to_string()),
            Err(ClientError::Refused(why)) => bail!("host `{host}`: {why}"),
            Err(e) => return Err(e).context(format!("host `{host}`")),
        }
    }
    bail!(
        "no host with a {} jail answered: {}",
        verb.roles()[0],
        unreachable.join("; ")
    )
}
