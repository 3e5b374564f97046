//! The cluster as the rest of Citadel sees it, once a file has been read and checked.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::ops::Range;
use std::time::Duration;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// Where each field of an item was written in its source file, by field path
/// (`"host"`, `"addresses.front"`). Empty for items that did not come from a file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Spans(BTreeMap<String, Range<usize>>);

impl Spans {
    pub fn get(&self, field: &str) -> Option<Range<usize>> {
        self.0.get(field).cloned()
    }

    pub(crate) fn set(&mut self, field: impl Into<String>, span: Range<usize>) {
        self.0.insert(field.into(), span);
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Cluster {
    pub name: String,
    /// The internal DNS zone, e.g. `citadel.internal`.
    pub zone: String,
    pub segments: Vec<Segment>,
    pub hosts: Vec<Host>,
    pub jails: Vec<Jail>,
    /// Role sections of the file (`[gate]`, …) as written, for the roles to read.
    #[serde(skip)]
    pub sections: BTreeMap<String, toml::Table>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Segment {
    pub name: String,
    pub net: Ipv4Net,
    #[serde(skip)]
    pub spans: Spans,
}

impl Segment {
    /// The address a netns host's bridge takes on this segment (its first usable one): how
    /// the host itself reaches its jails there. `None` for a /31 or /32, which has no room.
    pub fn bridge_address(&self) -> Option<std::net::Ipv4Addr> {
        (self.net.prefix_len() < 31)
            .then(|| std::net::Ipv4Addr::from(u32::from(self.net.network()).wrapping_add(1)))
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Host {
    pub name: String,
    pub backend: Backend,
    /// netns: the host's own address on a segment (its bridge takes it; default: the
    /// segment's first address, which only works with one host per segment).
    #[serde(default)]
    pub addresses: BTreeMap<String, std::net::Ipv4Addr>,
    /// netns: the network interface that joins the segment's bridge to the other boxes.
    #[serde(default)]
    pub links: BTreeMap<String, String>,
    /// Where the host's agent listens for the operator and the other agents (mutual TLS).
    #[serde(default)]
    pub agent: Option<std::net::SocketAddr>,
    #[serde(skip)]
    pub spans: Spans,
}

impl Host {
    /// The agents' port when `agent` names an address only, or nothing.
    pub const AGENT_PORT: u16 = 7443;

    /// The address this host's bridge takes on `segment`.
    pub fn bridge_address(&self, segment: &Segment) -> Option<std::net::Ipv4Addr> {
        self.addresses
            .get(&segment.name)
            .copied()
            .or_else(|| segment.bridge_address())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// A supervised child process bound to its own loopback addresses; needs no privileges.
    Process,
    /// A Linux network namespace per jail (root only).
    Netns,
}

impl Backend {
    pub const NAMES: &[&str] = &["process", "netns"];

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "process" => Some(Backend::Process),
            "netns" => Some(Backend::Netns),
            _ => None,
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Process => "process",
            Backend::Netns => "netns",
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    App,
    Db,
    Witness,
    Gate,
    /// The S3 small-file store (a jail on each data server).
    Store,
    /// Any user program.
    Command,
}

impl Role {
    pub const NAMES: &[&str] = &["app", "db", "witness", "gate", "store", "command"];

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "app" => Some(Role::App),
            "db" => Some(Role::Db),
            "witness" => Some(Role::Witness),
            "gate" => Some(Role::Gate),
            "store" => Some(Role::Store),
            "command" => Some(Role::Command),
            _ => None,
        }
    }

    /// Start order: a tier starts once every jail of the tiers before it is up.
    /// Data first (everything needs it), then the gate (its DNS is how the services find the
    /// data; it takes services into rotation as their health checks pass), then the services.
    pub fn start_tier(self) -> u8 {
        match self {
            Role::Db | Role::Witness => 0,
            Role::Gate => 1,
            Role::App | Role::Store | Role::Command => 2,
        }
    }

    /// Roles that vote in the database's Raft group.
    pub fn is_voter(self) -> bool {
        matches!(self, Role::Db | Role::Witness)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::App => "app",
            Role::Db => "db",
            Role::Witness => "witness",
            Role::Gate => "gate",
            Role::Store => "store",
            Role::Command => "command",
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

impl RestartPolicy {
    pub const NAMES: &[&str] = &["always", "on-failure", "never"];

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "always" => Some(RestartPolicy::Always),
            "on-failure" => Some(RestartPolicy::OnFailure),
            "never" => Some(RestartPolicy::Never),
            _ => None,
        }
    }

    /// Whether a jail that exited (successfully or not) is started again.
    pub fn restarts_after(self, success: bool) -> bool {
        match self {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => !success,
            RestartPolicy::Never => false,
        }
    }
}

impl fmt::Display for RestartPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RestartPolicy::Always => "always",
            RestartPolicy::OnFailure => "on-failure",
            RestartPolicy::Never => "never",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JailAddress {
    pub segment: String,
    pub addr: Ipv4Addr,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// Memory ceiling in bytes.
    pub memory: Option<u64>,
    /// CPU share in cores (1.5 = one and a half cores).
    pub cpus: Option<f64>,
    /// Most processes (and threads) the jail may have at once; netns jails only, which
    /// default to `DEFAULT_PIDS`.
    #[serde(default)]
    pub pids: Option<u64>,
}

impl Limits {
    /// The pids cap of a netns jail that names none: a fork bomb stops here.
    pub const DEFAULT_PIDS: u64 = 1024;
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Probe {
    /// Healthy when a TCP connection to the port is accepted.
    Tcp,
    /// Healthy when `GET path` answers with a 2xx or 3xx status.
    Http { path: String },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    pub probe: Probe,
    pub port: u16,
    /// The segment whose address is probed; `None` means the jail's first address.
    pub segment: Option<String>,
    #[serde(with = "millis")]
    pub interval: Duration,
    #[serde(with = "millis")]
    pub timeout: Duration,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Jail {
    pub name: String,
    pub host: String,
    pub role: Role,
    /// One address per segment the jail joins, in the order the segments are declared.
    pub addresses: Vec<JailAddress>,
    /// The program to run; `None` means the role's built-in program.
    pub command: Option<String>,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub restart: RestartPolicy,
    #[serde(with = "millis")]
    pub stop_grace: Duration,
    pub limits: Limits,
    pub health: Option<HealthCheck>,
    /// Ports the jail listens on, checked for conflicts before it starts.
    pub ports: Vec<u16>,
    /// A store jail's capacity weight: its share of the blocks relative to the other store
    /// jails' (e.g. its disk in TB). Store jails only; `None` = `DEFAULT_STORE_WEIGHT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<f64>,
    #[serde(skip)]
    pub spans: Spans,
}

impl Jail {
    /// The capacity weight of a store jail that names none.
    pub const DEFAULT_STORE_WEIGHT: f64 = 1.0;

    /// This store jail's capacity weight (`weight`, else `DEFAULT_STORE_WEIGHT`).
    pub fn store_weight(&self) -> f64 {
        self.weight.unwrap_or(Self::DEFAULT_STORE_WEIGHT)
    }

    pub fn address(&self, segment: &str) -> Option<Ipv4Addr> {
        self.addresses
            .iter()
            .find(|a| a.segment == segment)
            .map(|a| a.addr)
    }

    /// The address others use when they don't share a preferred segment: the first one.
    pub fn primary_address(&self) -> Option<Ipv4Addr> {
        self.addresses.first().map(|a| a.addr)
    }

    /// The address the health check probes.
    pub fn health_address(&self) -> Option<Ipv4Addr> {
        match self.health.as_ref().and_then(|h| h.segment.as_deref()) {
            Some(segment) => self.address(segment),
            None => self.primary_address(),
        }
    }
}

impl Cluster {
    pub fn jail(&self, name: &str) -> Option<&Jail> {
        self.jails.iter().find(|j| j.name == name)
    }

    pub fn host(&self, name: &str) -> Option<&Host> {
        self.hosts.iter().find(|h| h.name == name)
    }

    pub fn segment(&self, name: &str) -> Option<&Segment> {
        self.segments.iter().find(|s| s.name == name)
    }

    /// Where `host`'s agent is reached: its `agent`, else its own address on the first
    /// declared segment it has one on, port `Host::AGENT_PORT`; None when it has neither.
    pub fn agent_addr(&self, host: &Host) -> Option<std::net::SocketAddr> {
        host.agent.or_else(|| {
            self.segments
                .iter()
                .find_map(|s| host.addresses.get(&s.name))
                .map(|a| std::net::SocketAddr::new((*a).into(), Host::AGENT_PORT))
        })
    }

    pub fn backend_of(&self, jail: &Jail) -> Backend {
        self.host(&jail.host)
            .map_or(Backend::Process, |h| h.backend)
    }

    /// The address `from` uses to reach `to`: on a segment both join, preferring the one
    /// declared last (inner segments such as `back` come after `front`); `None` if they share
    /// no segment.
    pub fn reach(&self, from: &Jail, to: &Jail) -> Option<Ipv4Addr> {
        self.segments
            .iter()
            .rev()
            .filter(|s| from.address(&s.name).is_some())
            .find_map(|s| to.address(&s.name))
    }

    /// The first free address of `segment`, skipping the network and broadcast addresses
    /// and every address a jail already holds.
    pub fn free_address(&self, segment: &str) -> Option<Ipv4Addr> {
        let net = self.segment(segment)?.net;
        let taken: Vec<Ipv4Addr> = self
            .jails
            .iter()
            .flat_map(|j| j.addresses.iter().map(|a| a.addr))
            .collect();
        net.hosts().find(|a| !taken.contains(a))
    }
}

/// Durations are stored as whole milliseconds in machine-written state.
mod millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis().try_into().unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}
