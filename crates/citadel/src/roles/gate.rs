//! The gate role in a cluster: the `[gate]` section of the cluster file is the gate's own
//! config (see `citadel_gate::config` for every key and default) with a few things derived
//! from the cluster — service members from `role`/`jails` selectors, the admin address, the
//! DNS listener, zone and records — so that nobody writes an address twice.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use citadel_gate::GateConfig;
use citadel_gate::config::{
    DnsConfig, DnsRecord, DnsServiceName, HealthKind, MemberConfig, ServiceConfig,
};
use citadel_jail::http_request;
use citadel_spec::{Cluster, Diagnostic, Jail, Probe, Role};
use serde::Deserialize;

use super::locate;

pub const ADMIN_PORT: u16 = 9100;
pub const DNS_PORT: u16 = 5353;
/// Well-known ports of the roles the gate balances when the file names no service for them.
const ROLE_PORTS: &[(Role, u16)] = &[
    (Role::App, 8000),
    (Role::Db, 6379),
    (Role::Store, super::store::S3_PORT),
];

/// Read only to check the section's shape against the whole file.
#[derive(Deserialize)]
#[expect(dead_code)]
struct FileWithGate {
    gate: Option<GateConfig>,
}

/// Checks the `[gate]` section: its shape (read from the whole file, so errors carry their
/// place), its selectors, and the config each gate jail would get.
pub fn check(source: &str, cluster: &Cluster) -> Vec<Diagnostic> {
    if let Some(d) = super::shape_error::<FileWithGate>(source, "gate") {
        return vec![d];
    }
    let at = locate(source, "[gate", "[gate");
    let gates: Vec<&Jail> = cluster
        .jails
        .iter()
        .filter(|j| j.role == Role::Gate)
        .collect();
    if gates.is_empty() {
        return match cluster.sections.contains_key("gate") {
            true => vec![Diagnostic::warning(
                at,
                "a [gate] section, but no jail has role \"gate\"",
            )],
            false => Vec::new(),
        };
    }
    let mut diags = Vec::new();
    for gate in gates {
        let problem = match resolve(cluster, gate) {
            Ok(config) => config.validate().err().map(|e| e.to_string()),
            Err(e) => Some(e),
        };
        if let Some(message) = problem {
            let place = message
                .split('`')
                .nth(1)
                .and_then(|quoted| locate(source, "[gate", &format!("\"{quoted}\"")))
                .or(at.clone());
            diags.push(Diagnostic::error(
                place,
                format!("gate jail `{}`: {message}", gate.name),
            ));
        }
    }
    diags
}

/// The config a gate jail runs with, checked.
pub fn config(cluster: &Cluster, jail: &Jail) -> Result<GateConfig, String> {
    let config = resolve(cluster, jail)?;
    config.validate().map_err(|e| e.to_string())?;
    Ok(config)
}

/// The gate's complete config for `gate` (a jail of role gate), derived from the cluster.
pub fn resolve(cluster: &Cluster, gate: &Jail) -> Result<GateConfig, String> {
    let raw = cluster.sections.get("gate").cloned().unwrap_or_default();
    let has = |key: &str| raw.contains_key(key);
    let mut config: GateConfig = toml::Value::Table(raw.clone())
        .try_into()
        .map_err(|e: toml::de::Error| e.to_string())?;
    let own = gate
        .primary_address()
        .ok_or_else(|| format!("the gate jail `{}` has no address", gate.name))?;
    if !has("admin") {
        config.admin = SocketAddr::new(IpAddr::V4(own), ADMIN_PORT);
    }
    for service in &mut config.services {
        select_members(cluster, gate, service)?;
    }
    for &(role, port) in ROLE_PORTS {
        let members: Vec<&Jail> = cluster.jails.iter().filter(|j| j.role == role).collect();
        let name = role.to_string();
        if members.is_empty() || config.service(&name).is_some() {
            continue;
        }
        let mut service: ServiceConfig = toml::from_str(&format!(
            "name = \"{name}\"\nport = {port}\nrole = \"{name}\""
        ))
        .map_err(|e| e.to_string())?;
        if let Some(check) = members.iter().find_map(|j| j.health.as_ref()) {
            service.port = check.port;
            service.health.interval_ms = check.interval.as_millis().try_into().unwrap_or(u64::MAX);
            service.health.timeout_ms = check.timeout.as_millis().try_into().unwrap_or(u64::MAX);
            match &check.probe {
                Probe::Http { path } => {
                    service.health.kind = HealthKind::Http;
                    service.health.path = path.clone();
                }
                Probe::Tcp => service.health.kind = HealthKind::Tcp,
            }
        } else {
            service.health.kind = HealthKind::Tcp;
        }
        select_members(cluster, gate, &mut service)?;
        config.services.push(service);
    }
    let mut dns = match config.dns.take() {
        Some(dns) => dns,
        None => toml::from_str::<DnsConfig>("").map_err(|e| e.to_string())?,
    };
    if dns.listen.is_empty() {
        dns.listen = vec![SocketAddr::new(IpAddr::V4(own), DNS_PORT)];
    }
    if dns.zone.is_empty() {
        dns.zone = cluster.zone.clone();
    }
    for jail in &cluster.jails {
        if let Some(addr) = jail.primary_address() {
            dns.records.push(DnsRecord {
                name: jail.name.clone(),
                address: IpAddr::V4(addr),
            });
        }
        for a in &jail.addresses {
            dns.records.push(DnsRecord {
                name: format!("{}.{}", jail.name, a.segment),
                address: IpAddr::V4(a.addr),
            });
        }
    }
    for service in &config.services {
        if !dns.services.iter().any(|s| s.name == service.name) {
            dns.services.push(DnsServiceName {
                name: service.name.clone(),
                service: service.name.clone(),
            });
        }
    }
    config.dns = Some(dns);
    Ok(config)
}

/// Fills a service's members from its `role` or `jails` selector, at the address the gate
/// reaches each jail on.
fn select_members(
    cluster: &Cluster,
    gate: &Jail,
    service: &mut ServiceConfig,
) -> Result<(), String> {
    let selected: Vec<&Jail> = match (&service.role, service.jails.is_empty()) {
        (None, true) => return Ok(()),
        (Some(_), false) => {
            return Err(format!(
                "service `{}` selects members by both `role` and `jails`; keep one",
                service.name
            ));
        }
        _ if !service.members.is_empty() => {
            return Err(format!(
                "service `{}` lists `members` and a selector; keep one",
                service.name
            ));
        }
        (Some(role), true) => {
            if Role::parse(role).is_none() {
                return Err(format!(
                    "`{role}` is not a role (one of: {})",
                    Role::NAMES.join(", ")
                ));
            }
            let found: Vec<&Jail> = cluster
                .jails
                .iter()
                .filter(|j| j.role.to_string() == *role)
                .collect();
            if found.is_empty() {
                return Err(format!(
                    "service `{}`: no jail has role `{role}`",
                    service.name
                ));
            }
            found
        }
        (None, false) => service
            .jails
            .iter()
            .map(|name| {
                cluster
                    .jail(name)
                    .ok_or_else(|| format!("`{name}` is not a jail (service `{}`)", service.name))
            })
            .collect::<Result<_, _>>()?,
    };
    for jail in selected {
        let addr = cluster.reach(gate, jail).ok_or_else(|| {
            format!(
                "jail `{}` shares no segment with the gate jail `{}`, so the gate cannot reach it; give it an address on the gate's segment",
                jail.name, gate.name
            )
        })?;
        service.members.push(MemberConfig {
            name: jail.name.clone(),
            address: IpAddr::V4(addr),
        });
    }
    Ok(())
}

/// The config a gate jail runs with: what `prepare` last wrote for it.
pub fn running_config(state_dir: &Path, gate: &str) -> Result<GateConfig, String> {
    let file = state_dir.join("jails").join(gate).join("gate.toml");
    let text =
        std::fs::read_to_string(&file).map_err(|e| format!("reading {}: {e}", file.display()))?;
    toml::from_str(&text).map_err(|e| format!("reading {}: {e}", file.display()))
}

/// How long a drain waits for a member's requests in flight to finish.
const DRAIN_WAIT: Duration = Duration::from_secs(10);

/// Drains `jail` at every running gate that balances it (`on`), waiting until its requests in
/// flight are done; or puts it back into rotation (`!on`). A gate that cannot be reached is
/// skipped: it will see the jail go down by its health checks anyway.
pub async fn drain(state_dir: &Path, cluster: &Cluster, jail: &Jail, on: bool) {
    for (gate, config, services) in balancing(state_dir, cluster, jail) {
        let verb = if on { "drain" } else { "undrain" };
        for service in &services {
            let path = format!("/{verb}/{service}/{}", jail.name);
            if let Err(e) =
                http_request(config.admin, "POST", &path, None, Duration::from_secs(2)).await
            {
                tracing::warn!(%gate, jail = %jail.name, error = %e, "cannot {verb} at the gate");
            }
        }
        if on {
            let deadline = Instant::now() + DRAIN_WAIT;
            while Instant::now() < deadline && in_flight(config.admin, &jail.name).await > 0 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The gates of the cluster whose config is in this state dir (they run here) and that
/// balance `jail`: each with its config and the services `jail` is a member of.
fn balancing(
    state_dir: &Path,
    cluster: &Cluster,
    jail: &Jail,
) -> Vec<(String, GateConfig, Vec<String>)> {
    cluster
        .jails
        .iter()
        .filter(|j| j.role == Role::Gate && j.command.is_none())
        .filter_map(|gate| {
            let config = running_config(state_dir, &gate.name).ok()?;
            let services: Vec<String> = config
                .services
                .iter()
                .filter(|s| s.members.iter().any(|m| m.name == jail.name))
                .map(|s| s.name.clone())
                .collect();
            (!services.is_empty()).then(|| (gate.name.clone(), config, services))
        })
        .collect()
}

/// Every member the gate's admin API reports (`GET /backends`), with its service's name;
/// empty if the gate does not answer.
async fn backends(admin: SocketAddr) -> Vec<(String, serde_json::Value)> {
    let Ok((200, text)) =
        http_request(admin, "GET", "/backends", None, Duration::from_secs(2)).await
    else {
        return Vec::new();
    };
    let Ok(serde_json::Value::Array(services)) = serde_json::from_str(&text) else {
        return Vec::new();
    };
    services
        .into_iter()
        .flat_map(|mut s| {
            let service = s["name"].as_str().unwrap_or_default().to_string();
            let members = match s["members"].take() {
                serde_json::Value::Array(m) => m,
                _ => Vec::new(),
            };
            members.into_iter().map(move |m| (service.clone(), m))
        })
        .collect()
}

/// Requests the gate has in flight to `member`, over all its services.
async fn in_flight(admin: SocketAddr, member: &str) -> u64 {
    backends(admin)
        .await
        .iter()
        .filter(|(_, m)| m["name"] == member)
        .filter_map(|(_, m)| m["active"].as_u64())
        .sum()
}

/// A member that a running gate balances, and whether the gate has it in rotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Balanced {
    pub gate: String,
    pub service: String,
    pub member: String,
    pub up: bool,
}

/// The configs `citadel up` wrote for the named gate jails (those without one are skipped).
pub fn running_configs(state_dir: &Path, gates: &[&str]) -> Vec<(String, GateConfig)> {
    gates
        .iter()
        .filter_map(|g| Some((g.to_string(), running_config(state_dir, g).ok()?)))
        .collect()
}

/// How long `gates` need, at most, to take a member that just became healthy into rotation:
/// a check that found it not yet listening, then `rise` passing checks.
pub fn rotation_bound(gates: &[(String, GateConfig)]) -> Duration {
    gates
        .iter()
        .flat_map(|(_, config)| &config.services)
        .map(|s| {
            Duration::from_millis(
                s.health.interval_ms * (u64::from(s.health.rise) + 1) + s.health.timeout_ms,
            )
        })
        .max()
        .unwrap_or_default()
}

/// The members among `ready` (jails whose own check passes) that one of `gates` balances, and
/// whether its admin API reports each up. An unreachable gate has none of them up.
pub async fn rotation(gates: &[(String, GateConfig)], ready: &[&str]) -> Vec<Balanced> {
    let mut found = Vec::new();
    for (gate, config) in gates {
        let view = backends(config.admin).await;
        for service in &config.services {
            for member in service
                .members
                .iter()
                .filter(|m| ready.contains(&m.name.as_str()))
            {
                let up = view.iter().any(|(s, m)| {
                    *s == service.name && m["name"] == member.name.as_str() && m["up"] == true
                });
                found.push(Balanced {
                    gate: gate.clone(),
                    service: service.name.clone(),
                    member: member.name.clone(),
                    up,
                });
            }
        }
    }
    found
}

/// Whether every gate of this state dir that balances `jail` has it up and not draining; None
/// when none of them balances it (or none runs here).
pub async fn in_rotation(state_dir: &Path, cluster: &Cluster, jail: &Jail) -> Option<bool> {
    let mut seen = None;
    for (_, config, services) in balancing(state_dir, cluster, jail) {
        let view = backends(config.admin).await;
        let up = services.iter().all(|service| {
            view.iter().any(|(s, m)| {
                s == service
                    && m["name"] == jail.name.as_str()
                    && m["up"] == true
                    && m["draining"] == false
            })
        });
        seen = Some(seen.unwrap_or(true) && up);
    }
    seen
}
