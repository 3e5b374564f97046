//! The in-process firewall: ordered rules, per-client rate limits and connection caps, and
//! a ban list persisted in the state directory.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::config::{Action, FirewallConfig};
use crate::error::GateError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Denied,
    Banned,
    RateLimited,
    ConnLimit,
}

impl Refusal {
    pub fn metric(self) -> &'static str {
        match self {
            Refusal::Denied => "gate_denied_total",
            Refusal::Banned => "gate_banned_total",
            Refusal::RateLimited => "gate_rate_limited_total",
            Refusal::ConnLimit => "gate_conn_limited_total",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Ban {
    pub net: IpNet,
    /// Unix milliseconds; never expires when absent.
    #[serde(default)]
    pub expires_unix_ms: Option<u64>,
    #[serde(default)]
    pub reason: Option<String>,
}

impl Ban {
    fn live(&self, now: u64) -> bool {
        self.expires_unix_ms.is_none_or(|e| e > now)
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

type Limiter = (u32, u32, Arc<DefaultKeyedRateLimiter<IpAddr>>);

/// The ban list, indexed: single addresses in a hash map (checked in O(1)), networks in a
/// list (checked in order).
#[derive(Default)]
struct BanSet {
    all: Vec<Ban>,
    hosts: HashMap<IpAddr, Option<u64>>,
    nets: Vec<(IpNet, Option<u64>)>,
    /// The earliest expiry, for housekeeping.
    next_expiry: Option<u64>,
}

impl BanSet {
    fn new(all: Vec<Ban>) -> Self {
        let mut hosts = HashMap::new();
        let mut nets = Vec::new();
        for b in &all {
            if b.net.prefix_len() == b.net.max_prefix_len() {
                hosts.insert(b.net.addr(), b.expires_unix_ms);
            } else {
                nets.push((b.net, b.expires_unix_ms));
            }
        }
        let next_expiry = all.iter().filter_map(|b| b.expires_unix_ms).min();
        Self {
            all,
            hosts,
            nets,
            next_expiry,
        }
    }

    fn contains(&self, ip: IpAddr, now: u64) -> bool {
        let live = |e: &Option<u64>| e.is_none_or(|e| e > now);
        self.hosts.get(&ip).is_some_and(live)
            || self.nets.iter().any(|(n, e)| live(e) && n.contains(&ip))
    }
}

pub struct Firewall {
    bans: ArcSwap<BanSet>,
    bans_write: Mutex<()>,
    bans_path: PathBuf,
    limiter: ArcSwap<Option<Limiter>>,
    conns: Arc<Mutex<HashMap<IpAddr, u32>>>,
}

/// Holds one connection slot of a client IP until dropped.
pub struct ConnSlot {
    ip: IpAddr,
    conns: Arc<Mutex<HashMap<IpAddr, u32>>>,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        if let Ok(mut m) = self.conns.lock()
            && let Some(n) = m.get_mut(&self.ip)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

/// Evaluates the ordered rules: the first rule whose source (and listener, when given)
/// matches decides; otherwise the default action.
pub fn rule_verdict(cfg: &FirewallConfig, listener: &str, ip: IpAddr) -> Action {
    cfg.rules
        .iter()
        .find(|r| r.source.contains(&ip) && r.listener.as_deref().is_none_or(|l| l == listener))
        .map(|r| r.action)
        .unwrap_or(cfg.default_action)
}

impl Firewall {
    /// Opens the firewall state in `state_dir`, loading persisted bans.
    pub fn open(state_dir: &std::path::Path) -> Result<Self, GateError> {
        let bans_path = state_dir.join("bans.json");
        let now = now_ms();
        let bans: Vec<Ban> = match std::fs::read(&bans_path) {
            Ok(bytes) => serde_json::from_slice::<Vec<Ban>>(&bytes)
                .map_err(|e| GateError::Config(format!("{}: {e}", bans_path.display())))?
                .into_iter()
                .filter(|b| b.live(now))
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(GateError::io(format!("reading {}", bans_path.display()), e)),
        };
        Ok(Self {
            bans: ArcSwap::from_pointee(BanSet::new(bans)),
            bans_write: Mutex::new(()),
            bans_path,
            limiter: ArcSwap::from_pointee(None),
            conns: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    /// Applies the limit part of a (re)loaded config; limiter state is kept while the
    /// rate and burst stay the same.
    pub fn configure(&self, cfg: &FirewallConfig) {
        let rate = cfg.rate_per_sec;
        let burst = cfg.burst.unwrap_or(rate).max(1);
        let cur = self.limiter.load();
        if let Some((r, b, _)) = cur.as_ref()
            && *r == rate
            && *b == burst
        {
            return;
        }
        let new = NonZeroU32::new(rate).map(|r| {
            let quota = Quota::per_second(r).allow_burst(NonZeroU32::new(burst).unwrap_or(r));
            (rate, burst, Arc::new(RateLimiter::keyed(quota)))
        });
        self.limiter.store(Arc::new(new));
    }

    pub fn is_banned(&self, ip: IpAddr) -> bool {
        let now = now_ms();
        self.bans.load().contains(ip, now)
    }

    /// Admission of a new connection (or UDP flow): rules, bans, then the connection cap.
    pub fn admit_conn(
        &self,
        cfg: &FirewallConfig,
        listener: &str,
        ip: IpAddr,
    ) -> Result<Option<ConnSlot>, Refusal> {
        let ip = ip.to_canonical();
        if rule_verdict(cfg, listener, ip) == Action::Deny {
            return Err(Refusal::Denied);
        }
        if self.is_banned(ip) {
            return Err(Refusal::Banned);
        }
        if cfg.max_conns_per_ip == 0 {
            return Ok(None);
        }
        let mut m = self.conns.lock().map_err(|_| Refusal::ConnLimit)?;
        let n = m.entry(ip).or_insert(0);
        if *n >= cfg.max_conns_per_ip {
            return Err(Refusal::ConnLimit);
        }
        *n += 1;
        Ok(Some(ConnSlot {
            ip,
            conns: self.conns.clone(),
        }))
    }

    /// Admission of one request (HTTP) or connection (TCP): bans, then the rate limit.
    pub fn admit_request(&self, ip: IpAddr) -> Result<(), Refusal> {
        let ip = ip.to_canonical();
        if self.is_banned(ip) {
            return Err(Refusal::Banned);
        }
        if let Some((_, _, lim)) = self.limiter.load().as_ref()
            && lim.check_key(&ip).is_err()
        {
            return Err(Refusal::RateLimited);
        }
        Ok(())
    }

    pub fn bans(&self) -> Vec<Ban> {
        let now = now_ms();
        self.bans
            .load()
            .all
            .iter()
            .filter(|b| b.live(now))
            .cloned()
            .collect()
    }

    fn update_bans(&self, f: impl FnOnce(&mut Vec<Ban>)) -> Result<(), GateError> {
        let _w = self
            .bans_write
            .lock()
            .map_err(|_| GateError::Config("ban list lock poisoned".into()))?;
        let now = now_ms();
        let mut v: Vec<Ban> = self
            .bans
            .load()
            .all
            .iter()
            .filter(|b| b.live(now))
            .cloned()
            .collect();
        f(&mut v);
        self.persist(&v)?;
        self.bans.store(Arc::new(BanSet::new(v)));
        Ok(())
    }

    fn persist(&self, v: &[Ban]) -> Result<(), GateError> {
        let tmp = self.bans_path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(v)
            .map_err(|e| GateError::Config(format!("encoding bans: {e}")))?;
        std::fs::write(&tmp, bytes).map_err(|e| GateError::io("writing bans", e))?;
        std::fs::rename(&tmp, &self.bans_path).map_err(|e| GateError::io("writing bans", e))
    }

    /// Adds (or replaces) a ban; `ttl_secs` of None bans until removed.
    pub fn ban(
        &self,
        net: IpNet,
        ttl_secs: Option<u64>,
        reason: Option<String>,
    ) -> Result<Ban, GateError> {
        let ban = Ban {
            net: net.trunc(),
            expires_unix_ms: ttl_secs.map(|t| now_ms().saturating_add(t.saturating_mul(1000))),
            reason,
        };
        let b = ban.clone();
        self.update_bans(move |v| {
            v.retain(|x| x.net != b.net);
            v.push(b);
        })?;
        Ok(ban)
    }

    /// Removes a ban; returns whether one was there.
    pub fn unban(&self, net: IpNet) -> Result<bool, GateError> {
        let net = net.trunc();
        let mut found = false;
        self.update_bans(|v| {
            let before = v.len();
            v.retain(|x| x.net != net);
            found = v.len() != before;
        })?;
        Ok(found)
    }

    /// Drops expired bans (and persists), and forgets idle rate-limit keys.
    pub fn housekeeping(&self) {
        let now = now_ms();
        if self.bans.load().next_expiry.is_some_and(|e| e <= now)
            && let Err(e) = self.update_bans(|_| {})
        {
            tracing::warn!(error = %e, "pruning expired bans");
        }
        if let Some((_, _, lim)) = self.limiter.load().as_ref() {
            lim.retain_recent();
            lim.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RuleConfig;

    #[test]
    fn first_matching_rule_wins() {
        let cfg = FirewallConfig {
            rules: vec![
                RuleConfig {
                    action: Action::Allow,
                    source: "127.80.1.5/32".parse().unwrap(),
                    listener: None,
                },
                RuleConfig {
                    action: Action::Deny,
                    source: "127.80.1.0/24".parse().unwrap(),
                    listener: None,
                },
                RuleConfig {
                    action: Action::Deny,
                    source: "127.80.2.0/24".parse().unwrap(),
                    listener: Some("web".into()),
                },
            ],
            ..Default::default()
        };
        assert_eq!(
            rule_verdict(&cfg, "web", "127.80.1.5".parse().unwrap()),
            Action::Allow
        );
        assert_eq!(
            rule_verdict(&cfg, "web", "127.80.1.6".parse().unwrap()),
            Action::Deny
        );
        assert_eq!(
            rule_verdict(&cfg, "web", "127.80.2.1".parse().unwrap()),
            Action::Deny
        );
        assert_eq!(
            rule_verdict(&cfg, "tcp", "127.80.2.1".parse().unwrap()),
            Action::Allow
        );
    }

    #[test]
    fn bans_persist_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let fw = Firewall::open(dir.path()).unwrap();
        fw.ban("127.80.3.0/24".parse().unwrap(), None, Some("test".into()))
            .unwrap();
        fw.ban("127.80.4.1/32".parse().unwrap(), Some(0), None)
            .unwrap();
        assert!(fw.is_banned("127.80.3.9".parse().unwrap()));
        assert!(
            !fw.is_banned("127.80.4.1".parse().unwrap()),
            "ttl 0 is already expired"
        );
        let fw2 = Firewall::open(dir.path()).unwrap();
        assert!(fw2.is_banned("127.80.3.9".parse().unwrap()));
        assert!(fw2.unban("127.80.3.0/24".parse().unwrap()).unwrap());
        assert!(!fw2.is_banned("127.80.3.9".parse().unwrap()));
    }

    #[test]
    fn many_host_bans_and_a_network() {
        let dir = tempfile::tempdir().unwrap();
        let fw = Firewall::open(dir.path()).unwrap();
        let mut all = Vec::new();
        for i in 0..5000u32 {
            let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i);
            all.push(Ban {
                net: IpNet::from(IpAddr::V4(ip)),
                expires_unix_ms: None,
                reason: None,
            });
        }
        fw.update_bans(|v| v.extend(all)).unwrap();
        fw.ban("127.80.9.0/24".parse().unwrap(), None, None)
            .unwrap();
        assert!(fw.is_banned("10.0.19.135".parse().unwrap()));
        assert!(!fw.is_banned("10.0.19.136".parse().unwrap()));
        assert!(fw.is_banned("127.80.9.200".parse().unwrap()));
        assert_eq!(fw.bans().len(), 5001);
        assert!(fw.unban("10.0.0.1/32".parse().unwrap()).unwrap());
        assert!(!fw.is_banned("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn conn_cap_and_rate_limit() {
        let dir = tempfile::tempdir().unwrap();
        let fw = Firewall::open(dir.path()).unwrap();
        let cfg = FirewallConfig {
            rate_per_sec: 1,
            burst: Some(2),
            max_conns_per_ip: 1,
            ..Default::default()
        };
        fw.configure(&cfg);
        let a: IpAddr = "127.80.5.1".parse().unwrap();
        let b: IpAddr = "127.80.5.2".parse().unwrap();
        let slot = fw.admit_conn(&cfg, "web", a).unwrap();
        assert_eq!(
            fw.admit_conn(&cfg, "web", a).err(),
            Some(Refusal::ConnLimit)
        );
        drop(slot);
        assert!(fw.admit_conn(&cfg, "web", a).is_ok());
        assert!(fw.admit_request(a).is_ok());
        assert!(fw.admit_request(a).is_ok());
        assert_eq!(fw.admit_request(a), Err(Refusal::RateLimited));
        assert!(fw.admit_request(b).is_ok());
    }
}
