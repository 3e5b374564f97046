//! The store role's configuration (TOML), fully resolved: the binary derives it from the
//! cluster file; tests write it by hand.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::Error;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// S3 listener (path-style). Convention: port 3900.
    pub listen: SocketAddr,
    /// Internal block service for the peer server (back segment). Convention: port 3901.
    pub peer_listen: SocketAddr,
    /// The other server's block service, for two servers of equal weight; `None` (and no
    /// `servers`) runs a single copy (tests, one server).
    #[serde(default)]
    pub peer: Option<SocketAddr>,
    /// Every data server's block service, this one included (the entry whose `addr` is
    /// `peer_listen`), with its capacity weight: each block's two copies go to two of them
    /// chosen by weight (`placement`). Every server must list the same names and weights.
    /// Empty: this server and `peer`, weight 1 each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<ServerEntry>,
    /// A spare's block service (on the gate box): holds the second copy of blocks written
    /// while the peer is down, until both servers hold them again. `None`: a PUT fails
    /// while the peer is down.
    #[serde(default)]
    pub spare: Option<SocketAddr>,
    /// Where blocks live (`<data_dir>/blocks/ab/abcdef…`).
    pub data_dir: PathBuf,
    /// Region name clients sign with. Default `citadel`.
    #[serde(default = "default_region")]
    pub region: String,
    /// This server's name in the catalogue (`s3:status`). Default: the S3 listen address.
    #[serde(default)]
    pub name: Option<String>,
    /// Admin HTTP: Prometheus `/metrics`, `/health`, `POST /scrub`. Convention: port 9100.
    #[serde(default)]
    pub admin_listen: Option<SocketAddr>,
    /// Re-cloning copies missing blocks from the peer at most this fast, so clients keep
    /// their speed. Default 50.
    #[serde(default = "default_reclone")]
    pub reclone_mib_per_s: f64,
    /// How often the catalogue is recomputed (and missing blocks re-cloned, and unreferenced
    /// ones collected). Default 10 s.
    #[serde(default = "default_catalogue")]
    pub catalogue_interval_secs: f64,
    /// A block no object references is removed only once it has not been written or touched
    /// for this long. Must exceed twice the longest metadata commit (the db client gives up
    /// after 8 s). Default one hour.
    #[serde(default = "default_grace")]
    pub gc_grace_secs: f64,
    /// Every block on this disk is read and checked this often; 0 = only on request
    /// (`citadel store scrub`). Default one day.
    #[serde(default = "default_scrub")]
    pub scrub_interval_secs: f64,
    pub db: DbConfig,
}

fn default_region() -> String {
    "citadel".to_string()
}
pub const DEFAULT_RECLONE_MIB_PER_S: f64 = 50.0;
pub const DEFAULT_CATALOGUE_INTERVAL_SECS: f64 = 10.0;
pub const DEFAULT_GC_GRACE_SECS: f64 = 3600.0;
pub const DEFAULT_SCRUB_INTERVAL_SECS: f64 = 86_400.0;

fn default_reclone() -> f64 {
    DEFAULT_RECLONE_MIB_PER_S
}
fn default_catalogue() -> f64 {
    DEFAULT_CATALOGUE_INTERVAL_SECS
}
fn default_grace() -> f64 {
    DEFAULT_GC_GRACE_SECS
}
fn default_scrub() -> f64 {
    DEFAULT_SCRUB_INTERVAL_SECS
}

/// Smallest grace accepted: below it a PUT's metadata commit could outlast the grace.
pub const MIN_GC_GRACE_SECS: f64 = 1.0;

/// One data server in `servers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerEntry {
    /// Its name in the placement hash (the jail's name): stable across address changes.
    pub name: String,
    /// Its block service.
    pub addr: SocketAddr,
    /// Its capacity weight (> 0). Default 1.
    #[serde(default = "default_weight")]
    pub weight: f64,
}

pub const DEFAULT_WEIGHT: f64 = 1.0;

fn default_weight() -> f64 {
    DEFAULT_WEIGHT
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DbConfig {
    /// db members, `host:port`; tried in order (any member forwards writes to the leader).
    pub addrs: Vec<String>,
    #[serde(default)]
    pub password: Option<String>,
}

impl StoreConfig {
    pub fn from_file(path: &Path) -> Result<StoreConfig, Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        let cfg: StoreConfig =
            toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        cfg.check()
            .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        Ok(cfg)
    }

    /// What serde cannot say about a config: empty lists and out-of-range numbers.
    pub fn check(&self) -> Result<(), String> {
        if self.db.addrs.is_empty() {
            return Err("[db] addrs must name at least one db member".into());
        }
        let positive = |v: f64| v.is_finite() && v > 0.0;
        if !positive(self.reclone_mib_per_s) {
            return Err("reclone_mib_per_s must be a positive number".into());
        }
        if !positive(self.catalogue_interval_secs) {
            return Err("catalogue_interval_secs must be a positive number".into());
        }
        if !(self.gc_grace_secs.is_finite() && self.gc_grace_secs >= MIN_GC_GRACE_SECS) {
            return Err(format!(
                "gc_grace_secs must be at least {MIN_GC_GRACE_SECS} (default 3600)"
            ));
        }
        if !(self.scrub_interval_secs.is_finite() && self.scrub_interval_secs >= 0.0) {
            return Err("scrub_interval_secs must be 0 (on request only) or more".into());
        }
        if !self.servers.is_empty() {
            if self.peer.is_some() {
                return Err("give either `peer` or `servers`, not both".into());
            }
            let mut names = std::collections::BTreeSet::new();
            for s in &self.servers {
                if !names.insert(s.name.as_str()) {
                    return Err(format!("two servers are named `{}`", s.name));
                }
                if !positive(s.weight) {
                    return Err(format!("server `{}`: weight must be more than 0", s.name));
                }
            }
            if !self.servers.iter().any(|s| s.addr == self.peer_listen) {
                return Err(format!(
                    "`servers` must list this server (addr = peer_listen = {})",
                    self.peer_listen
                ));
            }
        }
        Ok(())
    }

    /// Every data server (this one included) and the index of this one: `servers`, else
    /// this server and `peer` at weight 1, named by their block service addresses.
    pub fn placement_servers(&self) -> (Vec<ServerEntry>, usize) {
        if !self.servers.is_empty() {
            let me = self
                .servers
                .iter()
                .position(|s| s.addr == self.peer_listen)
                .unwrap_or(0);
            return (self.servers.clone(), me);
        }
        let entry = |addr: SocketAddr| ServerEntry {
            name: addr.to_string(),
            addr,
            weight: DEFAULT_WEIGHT,
        };
        let mut all = vec![entry(self.peer_listen)];
        all.extend(self.peer.map(entry));
        (all, 0)
    }

    pub fn server_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.listen.to_string())
    }
}

/// A spare block holder's configuration (`citadel store spare`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpareConfig {
    /// Its block service; the data servers' `spare`. Convention: port 3901.
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
}

impl SpareConfig {
    pub fn from_file(path: &Path) -> Result<SpareConfig, Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }
}
