//! `citadel plan FILE` and `citadel apply FILE`: the operator's machine asks every host's
//! agent (mutual TLS) what the file changes there, then has each store it as the next
//! generation and converge. Restarts of jails a gate balances, and of the db's voters, roll one
//! at a time across the cluster: drain at the gates, restart, wait healthy, back into the
//! gates' rotation, next. A host that cannot be reached is named with the reason and catches
//! up from its peers (gossip) when it is back.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use citadel_agent::control::call_tls;
use citadel_agent::plan::{Action, Applied, HostPlan};
use citadel_agent::protocol::Request;
use citadel_spec::{Cluster, Role};
use serde::Serialize;
use tokio_rustls::rustls::ClientConfig;

use crate::agentctl::operator_config;
use crate::ops::load_cluster;
use crate::roles::gate;

mod moving;
pub use moving::move_jail;

#[derive(clap::Args)]
pub struct DeployArgs {
    /// The cluster file (checked first: an invalid file contacts no host).
    file: PathBuf,
    /// Where `citadel init` wrote `pki/` (the CA and your certificate).
    #[arg(long, default_value = ".")]
    dir: PathBuf,
}

/// A plan or apply request that takes longer than this is a host in trouble.
pub const ASK: Duration = Duration::from_secs(20);

/// One host's row: its plan, or why it could not be asked.
#[derive(Serialize)]
struct Row {
    host: String,
    agent: Option<SocketAddr>,
    #[serde(flatten)]
    plan: Option<HostPlan>,
    error: Option<String>,
}

/// The operator's view of the cluster: its file, checked, and the certificate to reach every
/// host's agent with.
pub struct Session {
    pub cluster: Cluster,
    pub text: String,
    /// How messages name the file.
    pub origin: String,
    config: Arc<ClientConfig>,
}

impl Session {
    fn open(args: &DeployArgs) -> anyhow::Result<Session> {
        Session::load(&args.file, &args.dir)
    }

    /// Reads and checks `file` (an invalid file contacts nobody), and the operator's
    /// certificate from `dir/pki`.
    pub fn load(file: &std::path::Path, dir: &std::path::Path) -> anyhow::Result<Session> {
        let (cluster, origin) = load_cluster(Some(file))?;
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        Ok(Session {
            cluster,
            text,
            origin,
            config: operator_config(dir)?,
        })
    }

    pub fn agent(&self, host: &str) -> Option<SocketAddr> {
        self.cluster.agent_addr(self.cluster.host(host)?)
    }

    /// Where `host`'s agent is reached.
    pub fn endpoint(&self, host: &str) -> anyhow::Result<citadel_agent::control::Endpoint> {
        if self.cluster.host(host).is_none() {
            anyhow::bail!("no host `{host}` in {}", self.origin);
        }
        let addr = self.agent(host).with_context(|| {
            format!(
                "host `{host}` has no agent address (give it `agent = \"ADDR:PORT\"` or an address)"
            )
        })?;
        Ok(citadel_agent::control::Endpoint::Remote {
            host: host.to_string(),
            addr,
            config: self.config.clone(),
        })
    }

    /// Sends `request` to `host`'s agent, bounded by `limit`.
    pub async fn ask<T: serde::de::DeserializeOwned>(
        &self,
        host: &str,
        request: &Request,
        limit: Duration,
    ) -> Result<T, String> {
        let addr = self.agent(host).ok_or_else(|| {
            format!(
                "host `{host}` has no agent address (give it `agent = \"ADDR:PORT\"` or an address)"
            )
        })?;
        match tokio::time::timeout(limit, call_tls(addr, host, self.config.clone(), request)).await
        {
            Ok(answer) => answer.map_err(|e| e.to_string()),
            Err(_) => Err(format!(
                "host `{host}` ({addr}): no answer within {}s",
                limit.as_secs()
            )),
        }
    }

    /// Every host's plan, asked at once.
    async fn plans(self: &Arc<Self>) -> Vec<Row> {
        let mut asks = Vec::new();
        for host in &self.cluster.hosts {
            let (me, name) = (self.clone(), host.name.clone());
            asks.push(tokio::spawn(async move {
                let request = Request::Plan {
                    file: me.text.clone(),
                };
                let answer = me.ask::<HostPlan>(&name, &request, ASK).await;
                Row {
                    agent: me.agent(&name),
                    host: name,
                    error: answer.as_ref().err().cloned(),
                    plan: answer.ok(),
                }
            }));
        }
        let mut rows = Vec::new();
        for a in asks {
            if let Ok(row) = a.await {
                rows.push(row);
            }
        }
        rows
    }
}

fn print_rows(rows: &[Row]) {
    for row in rows {
        let at = row.agent.map(|a| format!(" ({a})")).unwrap_or_default();
        match (&row.plan, &row.error) {
            (Some(plan), _) => {
                eprintln!("{}{at}: generation {}", row.host, plan.generation);
                if plan.changes.is_empty() {
                    eprintln!("  nothing to change");
                }
                for c in &plan.changes {
                    eprintln!("  {} {}", c.action, c.jail);
                    for w in &c.what {
                        eprintln!("      {w}");
                    }
                }
            }
            (None, error) => eprintln!(
                "{}{at}: unreachable: {}",
                row.host,
                error.as_deref().unwrap_or("?")
            ),
        }
    }
}

pub async fn plan(args: DeployArgs, json: bool) -> anyhow::Result<i32> {
    let session = Arc::new(Session::open(&args)?);
    let rows = session.plans().await;
    if json {
        crate::output::json(&rows)?;
    } else {
        print_rows(&rows);
    }
    Ok(0)
}

/// A gate of the cluster: its host, the jails it balances, and how long one of its checks
/// takes at most (interval + timeout).
pub struct Gate {
    pub host: String,
    pub members: Vec<String>,
    /// Each service's members.
    services: Vec<Vec<String>>,
    check: Duration,
}

impl Gate {
    /// The other members of each service of this gate that `jail` is a member of.
    fn peers_of(&self, jail: &str) -> Vec<&[String]> {
        self.services
            .iter()
            .filter(|s| s.iter().any(|m| m == jail) && s.len() > 1)
            .map(Vec::as_slice)
            .collect()
    }
}

pub fn gates(cluster: &Cluster) -> Vec<Gate> {
    cluster
        .jails
        .iter()
        .filter(|j| j.role == Role::Gate && j.command.is_none())
        .filter_map(|g| {
            let config = gate::resolve(cluster, g).ok()?;
            let services: Vec<Vec<String>> = config
                .services
                .iter()
                .map(|s| s.members.iter().map(|m| m.name.clone()).collect())
                .collect();
            let members = services.iter().flatten().cloned().collect();
            let check = config
                .services
                .iter()
                .map(|s| Duration::from_millis(s.health.interval_ms + s.health.timeout_ms))
                .max()
                .unwrap_or_default();
            Some(Gate {
                host: g.host.clone(),
                members,
                services,
                check,
            })
        })
        .collect()
}

#[derive(Serialize, Default)]
struct Outcome {
    generation: u64,
    applied: Vec<Applied>,
    /// Hosts that could not be reached, with why: they catch up from their peers.
    behind: Vec<(String, String)>,
    rolled: Vec<String>,
    failed: Option<String>,
}

pub async fn apply(args: DeployArgs, json: bool, timeout: Duration) -> anyhow::Result<i32> {
    let session = Arc::new(Session::open(&args)?);
    let (outcome, hosts) = apply_session(&session, json, timeout).await?;
    print_outcome(&outcome, hosts, json)?;
    Ok(if outcome.failed.is_some() { 1 } else { 0 })
}

/// Applies the session's file everywhere reachable and rolls the held restarts; returns what
/// happened and how many hosts the file has.
async fn apply_session(
    session: &Arc<Session>,
    json: bool,
    timeout: Duration,
) -> anyhow::Result<(Outcome, usize)> {
    let rows = session.plans().await;
    if !json {
        print_rows(&rows);
    }
    let reachable: Vec<&HostPlan> = rows.iter().filter_map(|r| r.plan.as_ref()).collect();
    let mut outcome = Outcome {
        behind: rows
            .iter()
            .filter_map(|r| Some((r.host.clone(), r.error.clone()?)))
            .collect(),
        ..Outcome::default()
    };
    if reachable.is_empty() {
        anyhow::bail!("no host's agent could be reached; nothing applied");
    }
    let top = reachable.iter().map(|p| p.generation).max().unwrap_or(0);
    let sha = citadel_agent::applied::sha256(&session.text);
    // The same file again (finishing a stopped rollout, say) keeps its generation.
    let same = reachable
        .iter()
        .all(|p| p.generation == top && p.sha256 == sha);
    outcome.generation = if same && top > 0 { top } else { top + 1 };

    // Restarts that roll: in start order (data, gate, services), one at a time.
    let gates = gates(&session.cluster);
    let mut rolled: Vec<(u8, String, String)> = reachable
        .iter()
        .flat_map(|p| p.changes.iter().map(move |c| (p, c)))
        .filter(|(_, c)| c.action == Action::Restart)
        .filter_map(|(p, c)| {
            let jail = session.cluster.jail(&c.jail)?;
            let rolls = jail.role.is_voter() || gates.iter().any(|g| g.members.contains(&c.jail));
            rolls.then(|| (jail.role.start_tier(), c.jail.clone(), p.host.clone()))
        })
        .collect();
    rolled.sort();

    let mut sends = Vec::new();
    for p in &reachable {
        let hold: Vec<String> = rolled
            .iter()
            .filter(|(_, _, h)| *h == p.host)
            .map(|(_, j, _)| j.clone())
            .collect();
        let (me, host) = (session.clone(), p.host.clone());
        let request = Request::Apply {
            file: session.text.clone(),
            generation: outcome.generation,
            hold,
        };
        sends.push(tokio::spawn(async move {
            let answer = me.ask::<Applied>(&host, &request, ASK * 3).await;
            (host, answer)
        }));
    }
    let mut failed = Vec::new();
    for s in sends {
        let Ok((host, answer)) = s.await else {
            continue;
        };
        match answer {
            Ok(applied) => {
                if !json {
                    let done: Vec<String> = applied
                        .done
                        .iter()
                        .filter(|c| !applied.held.contains(&c.jail))
                        .map(|c| format!("{} {}", c.action, c.jail))
                        .collect();
                    eprintln!(
                        "{host}: generation {} stored{}{}",
                        applied.generation,
                        if done.is_empty() {
                            String::new()
                        } else {
                            format!("; {}", done.join(", "))
                        },
                        if applied.held.is_empty() {
                            String::new()
                        } else {
                            format!("; rolling {}", applied.held.join(", "))
                        }
                    );
                }
                outcome.applied.push(applied);
            }
            Err(e) => failed.push(format!("{host}: {e}")),
        }
    }
    if !failed.is_empty() {
        outcome.failed = Some(format!("apply refused: {}", failed.join("; ")));
    } else {
        let rollout: Vec<(String, String)> = rolled.into_iter().map(|(_, j, h)| (j, h)).collect();
        for (i, (jail, host)) in rollout.iter().enumerate() {
            let drain_at: Vec<&Gate> = gates.iter().filter(|g| g.members.contains(jail)).collect();
            // Restarted with the new file, drained at its gates meanwhile.
            let request = Request::Roll {
                jail: jail.to_string(),
                timeout_ms: timeout.as_millis() as u64,
            };
            let step = session.ask::<u64>(host, &request, timeout + ASK);
            match drained(session, jail, host, &drain_at, timeout, json, step).await {
                Ok(()) => outcome.rolled.push(jail.clone()),
                Err(e) => {
                    let left: Vec<&str> =
                        rollout[i + 1..].iter().map(|(j, _)| j.as_str()).collect();
                    outcome.failed = Some(format!(
                        "rollout stopped at {jail} on {host}: {e}; new: {}; not restarted (still on the old config, serving): {}",
                        list(&outcome.rolled),
                        list(&left),
                    ));
                    break;
                }
            }
        }
    }
    Ok((outcome, rows.len()))
}

fn print_outcome(outcome: &Outcome, hosts: usize, json: bool) -> anyhow::Result<()> {
    if json {
        crate::output::json(outcome)?;
    } else {
        for (host, why) in &outcome.behind {
            eprintln!(
                "{host} is behind (generation {} not applied there: {why}); it catches up from its peers when its agent is back",
                outcome.generation
            );
        }
        match &outcome.failed {
            Some(f) => eprintln!("✗ {f}"),
            None => println!(
                "applied generation {} to {} of {} host(s)",
                outcome.generation,
                outcome.applied.len(),
                hosts
            ),
        }
    }
    Ok(())
}

fn list(v: &[impl AsRef<str>]) -> String {
    if v.is_empty() {
        "none".into()
    } else {
        v.iter().map(AsRef::as_ref).collect::<Vec<_>>().join(", ")
    }
}

/// Runs `step` (which restarts `jail` somewhere, healthy when it returns: how long that took)
/// with `jail` drained at `gates`, once every service it belongs to has another member in
/// rotation; then puts it back and waits until every gate has had it in rotation for one
/// whole check (a check begun while the jail was down may still take it out): only then may
/// the next one go. `host` is where it runs after `step`.
async fn drained(
    session: &Session,
    jail: &str,
    host: &str,
    gates: &[&Gate],
    timeout: Duration,
    json: bool,
    step: impl std::future::Future<Output = Result<u64, String>>,
) -> Result<(), String> {
    let drain = |on: bool| async move {
        for g in gates {
            let request = Request::Drain {
                jail: jail.to_string(),
                on,
            };
            if let Err(e) = session.ask::<()>(&g.host, &request, ASK).await {
                tracing::warn!(gate = %g.host, %jail, error = %e, "cannot drain at the gate");
            }
        }
    };
    others_in_rotation(session, jail, gates, timeout).await?;
    drain(true).await;
    let rolled = step.await;
    drain(false).await;
    let took = rolled?;
    let began = Instant::now();
    for g in gates {
        let request = Request::InRotation {
            jail: jail.to_string(),
        };
        let mut up_since: Option<Instant> = None;
        loop {
            match session.ask::<Option<bool>>(&g.host, &request, ASK).await {
                Ok(None) => break,
                Ok(Some(true)) => {
                    let since = *up_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > g.check {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Ok(Some(false)) | Err(_) if began.elapsed() < timeout => {
                    up_since = None;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Ok(Some(false)) => {
                    return Err(format!(
                        "healthy, but not back in rotation at the gate on {} after {}s (see `citadel gate backends` there)",
                        g.host,
                        timeout.as_secs()
                    ));
                }
                Err(e) => return Err(format!("cannot ask the gate on {}: {e}", g.host)),
            }
        }
    }
    if !json {
        eprintln!(
            "  ✓ {jail} ({host}): healthy after {:.1}s, in rotation {:.1}s later",
            took as f64 / 1000.0,
            began.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// Waits until, at every gate, each service `jail` belongs to has another member in rotation:
/// draining `jail` must not leave a service with no member (one the gate took out under load
/// while the previous jail rolled, say).
async fn others_in_rotation(
    session: &Session,
    jail: &str,
    gates: &[&Gate],
    timeout: Duration,
) -> Result<(), String> {
    let began = Instant::now();
    for g in gates {
        for members in g.peers_of(jail) {
            loop {
                let mut up = false;
                for other in members.iter().filter(|m| *m != jail) {
                    let request = Request::InRotation {
                        jail: other.clone(),
                    };
                    if let Ok(Some(true)) =
                        session.ask::<Option<bool>>(&g.host, &request, ASK).await
                    {
                        up = true;
                        break;
                    }
                }
                if up {
                    break;
                }
                if began.elapsed() > timeout {
                    return Err(format!(
                        "not drained: no other member of its service is in rotation at the gate on {} ({}) after {}s",
                        g.host,
                        members.join(", "),
                        timeout.as_secs()
                    ));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    Ok(())
}

pub fn parse_timeout(text: &str) -> Result<Duration, String> {
    citadel_spec::units::parse_duration(text)
}
