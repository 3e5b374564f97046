//! The gate's configuration: a fully resolved TOML file.
//!
//! # Defaults (the one place they are written down)
//!
//! | field | default |
//! |---|---|
//! | `admin` | `127.0.0.1:9100` |
//! | `admin_token` | none (no token asked; bind the admin API where only operators reach it) |
//! | `shutdown_grace_ms` | 10000 (SIGTERM: open connections may finish this long) |
//! | `threads` | 0 = one worker per core (1: tokio's current-thread scheduler; read at start only) |
//! | `listeners[].kind` | `http` |
//! | `services[].policy` | `round_robin` |
//! | `services[].hash_header` | none (consistent hashing keys on the client IP) |
//! | `services[].health.kind` | `http` (`tcp`: connect only; `none`: always up) |
//! | `services[].health.path` | `/` |
//! | `services[].health.interval_ms` | 1000 |
//! | `services[].health.timeout_ms` | 500 |
//! | `services[].health.rise` | 2 |
//! | `services[].health.fall` | 2 |
//! | `services[].passive_fail` | 3 consecutive failed requests eject a member (0 = off) |
//! | `services[].connect_timeout_ms` | 1000 |
//! | `services[].response_timeout_ms` | 30000 (time to the backend's response head) |
//! | `services[].idle_timeout_ms` | 60000 (TCP idle; UDP flow idle; a pause inside an HTTP response body) |
//! | `services[].retries` | 1 (extra attempts on another member, idempotent requests only) |
//! | `services[].stall_ms` | 500 (a member with requests waiting, or one timed out, and no response head nor passed check for this long is passed over while another is not; 0 = off) |
//! | `services[].pool_idle_per_member` | 64 pooled keep-alive connections |
//! | `http.header_read_timeout_ms` | 10000 (slow clients get dropped) |
//! | `http.max_header_bytes` | 16384 (larger heads get 431) |
//! | `http.keepalive_idle_ms` | 60000 (h2 ping interval; idle HTTP/1 keep-alive connections close at `header_read_timeout_ms`) |
//! | `firewall.default_action` | `allow` |
//! | `firewall.rate_per_sec` | 0 = no per-client rate limit |
//! | `firewall.burst` | equal to `rate_per_sec` |
//! | `firewall.max_conns_per_ip` | 0 = no cap |
//! | `dns.ttl` | 5 seconds |
//! | `dns.upstreams` | none: names outside the zone get REFUSED |
//! | `dns.upstream_timeout_ms` | 2000 |
//!
//! A member that has never been checked starts **down** and goes up on its first passing
//! check ("fast start"); after that `rise` consecutive passes bring it up and `fall`
//! consecutive failures take it down.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::error::GateError;

pub const DEFAULT_ADMIN: &str = "127.0.0.1:9100";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GateConfig {
    #[serde(default = "default_admin")]
    pub admin: SocketAddr,
    /// When set, every admin route but `/health` and `/metrics` wants
    /// `Authorization: Bearer <token>`.
    #[serde(default)]
    pub admin_token: Option<String>,
    #[serde(default)]
    pub listeners: Vec<ListenerConfig>,
    #[serde(default)]
    pub services: Vec<ServiceConfig>,
    #[serde(default)]
    pub firewall: FirewallConfig,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub dns: Option<DnsConfig>,
    /// On SIGTERM/SIGINT, how long open connections may take to finish.
    #[serde(default = "d_10000")]
    pub shutdown_grace_ms: u64,
    /// Worker threads: 0 = one per core; 1 = tokio's current-thread scheduler (no cross-thread
    /// wake-ups: the least CPU per request where the gate shares its cores with other work).
    /// Read at start only; a reload keeps the running value.
    #[serde(default)]
    pub threads: usize,
}

fn default_admin() -> SocketAddr {
    // A constant that parses.
    SocketAddr::from(([127, 0, 0, 1], 9100))
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ListenerKind {
    Http,
    Https,
    Tcp,
    Udp,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub name: String,
    #[serde(default = "default_kind")]
    pub kind: ListenerKind,
    pub bind: SocketAddr,
    pub service: String,
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
}

fn default_kind() -> ListenerKind {
    ListenerKind::Http
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    RoundRobin,
    LeastConn,
    ConsistentHash,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MemberConfig {
    pub name: String,
    pub address: IpAddr,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum HealthKind {
    Http,
    Tcp,
    /// No active checks: members count as up (UDP services); passive ejection still applies
    /// to TCP connects, and an ejected member comes back after `interval_ms`.
    None,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    #[serde(default = "d_health_kind")]
    pub kind: HealthKind,
    #[serde(default = "d_health_path")]
    pub path: String,
    #[serde(default = "d_1000")]
    pub interval_ms: u64,
    #[serde(default = "d_500")]
    pub timeout_ms: u64,
    #[serde(default = "d_2")]
    pub rise: u32,
    #[serde(default = "d_2")]
    pub fall: u32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            kind: d_health_kind(),
            path: d_health_path(),
            interval_ms: 1000,
            timeout_ms: 500,
            rise: 2,
            fall: 2,
        }
    }
}

fn d_health_kind() -> HealthKind {
    HealthKind::Http
}
fn d_health_path() -> String {
    "/".to_string()
}
fn d_1000() -> u64 {
    1000
}
fn d_500() -> u64 {
    500
}
fn d_2() -> u32 {
    2
}
fn d_1() -> u32 {
    1
}
fn d_3() -> u32 {
    3
}
fn d_30000() -> u64 {
    30_000
}
fn d_60000() -> u64 {
    60_000
}
fn d_10000() -> u64 {
    10_000
}
fn d_2000() -> u64 {
    2000
}
fn d_64() -> usize {
    64
}
fn d_16k() -> usize {
    16 * 1024
}
fn d_5() -> u32 {
    5
}
fn d_policy() -> Policy {
    Policy::RoundRobin
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    pub name: String,
    #[serde(default = "d_policy")]
    pub policy: Policy,
    /// Consistent hashing keys on this request header when present (HTTP only).
    #[serde(default)]
    pub hash_header: Option<String>,
    pub port: u16,
    #[serde(default)]
    pub members: Vec<MemberConfig>,
    /// In a cluster file: take the members from every jail of this role. `citadel` resolves
    /// it into `members`; the gate itself ignores it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// In a cluster file: take the members from these jails (resolved like `role`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jails: Vec<String>,
    #[serde(default)]
    pub health: HealthConfig,
    #[serde(default = "d_3")]
    pub passive_fail: u32,
    #[serde(default = "d_1000")]
    pub connect_timeout_ms: u64,
    #[serde(default = "d_30000")]
    pub response_timeout_ms: u64,
    #[serde(default = "d_60000")]
    pub idle_timeout_ms: u64,
    #[serde(default = "d_1")]
    pub retries: u32,
    #[serde(default = "d_64")]
    pub pool_idle_per_member: usize,
    /// A member that has had requests waiting for this long without sending any response
    /// head is passed over for new requests while another member is not: a box that froze
    /// or lost its links gives no RST, and without this every request sent to it until the
    /// passive or active checks notice waits out the whole response timeout.
    #[serde(default = "d_500")]
    pub stall_ms: u64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Deny,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub action: Action,
    pub source: IpNet,
    /// Only for this listener (by name); all listeners when absent.
    #[serde(default)]
    pub listener: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FirewallConfig {
    #[serde(default = "d_allow")]
    pub default_action: Action,
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
    #[serde(default)]
    pub rate_per_sec: u32,
    #[serde(default)]
    pub burst: Option<u32>,
    #[serde(default)]
    pub max_conns_per_ip: u32,
}

fn d_allow() -> Action {
    Action::Allow
}

impl Default for FirewallConfig {
    fn default() -> Self {
        Self {
            default_action: Action::Allow,
            rules: Vec::new(),
            rate_per_sec: 0,
            burst: None,
            max_conns_per_ip: 0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    #[serde(default = "d_10000")]
    pub header_read_timeout_ms: u64,
    #[serde(default = "d_16k")]
    pub max_header_bytes: usize,
    #[serde(default = "d_60000")]
    pub keepalive_idle_ms: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            header_read_timeout_ms: 10_000,
            max_header_bytes: 16 * 1024,
            keepalive_idle_ms: 60_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DnsRecord {
    pub name: String,
    pub address: IpAddr,
}

/// A DNS name served from a balancer service: A records of its healthy members, SRV
/// `_<name>._tcp` with the service port.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DnsServiceName {
    pub name: String,
    pub service: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    /// Each address is served on UDP and TCP. In a cluster file, defaults to the gate jail's
    /// first address, port 5353.
    #[serde(default)]
    pub listen: Vec<SocketAddr>,
    /// In a cluster file, defaults to the cluster's zone.
    #[serde(default)]
    pub zone: String,
    #[serde(default = "d_5")]
    pub ttl: u32,
    #[serde(default)]
    pub upstreams: Vec<SocketAddr>,
    #[serde(default = "d_2000")]
    pub upstream_timeout_ms: u64,
    #[serde(default)]
    pub records: Vec<DnsRecord>,
    #[serde(default)]
    pub services: Vec<DnsServiceName>,
}

impl GateConfig {
    pub fn from_toml(text: &str) -> Result<Self, GateError> {
        let cfg: GateConfig = toml::from_str(text).map_err(|e| GateError::Config(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn load(path: &Path) -> Result<Self, GateError> {
        let text = std::fs::read_to_string(path).map_err(|e| GateError::Io {
            what: format!("reading config {}", path.display()),
            source: e,
        })?;
        Self::from_toml(&text)
    }

    pub fn service(&self, name: &str) -> Option<&ServiceConfig> {
        self.services.iter().find(|s| s.name == name)
    }

    pub fn validate(&self) -> Result<(), GateError> {
        let bad = |m: String| Err(GateError::Config(m));
        let mut names = std::collections::HashSet::new();
        for l in &self.listeners {
            if !names.insert(&l.name) {
                return bad(format!("listener {:?} defined twice", l.name));
            }
            if self.service(&l.service).is_none() {
                return bad(format!(
                    "listener {:?} routes to unknown service {:?}",
                    l.name, l.service
                ));
            }
            if l.kind == ListenerKind::Https && (l.tls_cert.is_none() || l.tls_key.is_none()) {
                return bad(format!(
                    "https listener {:?} needs tls_cert and tls_key",
                    l.name
                ));
            }
        }
        let mut snames = std::collections::HashSet::new();
        for s in &self.services {
            if !snames.insert(&s.name) {
                return bad(format!("service {:?} defined twice", s.name));
            }
            let mut m = std::collections::HashSet::new();
            for mem in &s.members {
                if !m.insert(&mem.name) {
                    return bad(format!("service {:?}: member {:?} twice", s.name, mem.name));
                }
            }
            if s.health.rise == 0 || s.health.fall == 0 || s.health.interval_ms == 0 {
                return bad(format!(
                    "service {:?}: health rise/fall/interval must be > 0",
                    s.name
                ));
            }
        }
        for r in &self.firewall.rules {
            if let Some(l) = &r.listener
                && !names.contains(l)
            {
                return bad(format!("firewall rule names unknown listener {l:?}"));
            }
        }
        if let Some(d) = &self.dns {
            if d.listen.is_empty() || d.zone.is_empty() {
                return bad("dns needs `listen` addresses and a `zone`".to_string());
            }
            for s in &d.services {
                if self.service(&s.service).is_none() {
                    return bad(format!(
                        "dns name {:?} maps to unknown service {:?}",
                        s.name, s.service
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_config_gets_defaults() {
        let cfg = GateConfig::from_toml(
            r#"
            [[listeners]]
            name = "web"
            bind = "127.0.0.1:8080"
            service = "app"
            [[services]]
            name = "app"
            port = 8000
            members = [{ name = "app1", address = "127.10.0.11" }]
            "#,
        )
        .expect("parses");
        assert_eq!(cfg.admin.to_string(), DEFAULT_ADMIN);
        let s = &cfg.services[0];
        assert_eq!(s.policy, Policy::RoundRobin);
        assert_eq!(s.health, HealthConfig::default());
        assert_eq!(s.retries, 1);
        assert_eq!(cfg.listeners[0].kind, ListenerKind::Http);
    }

    #[test]
    fn example_config_for_the_builtin_cluster_parses() {
        let cfg = GateConfig::from_toml(include_str!("../gate.example.toml")).expect("parses");
        assert_eq!(cfg.services.len(), 2);
        let dns = cfg.dns.expect("dns section");
        assert_eq!(dns.zone, "citadel.internal");
        assert!(crate::dns::Zone::build(&dns).is_ok());
    }

    #[test]
    fn unknown_service_is_rejected() {
        let err = GateConfig::from_toml(
            r#"
            [[listeners]]
            name = "web"
            bind = "127.0.0.1:8080"
            service = "nope"
            "#,
        );
        assert!(err.is_err());
    }
}
