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
    /// The other server's block service; `None` runs a single copy (tests, one server).
    #[serde(default)]
    pub peer: Option<SocketAddr>,
    /// Where blocks live (`<data_dir>/blocks/ab/abcdef…`).
    pub data_dir: PathBuf,
    /// Region name clients sign with. Default `citadel`.
    #[serde(default = "default_region")]
    pub region: String,
    pub db: DbConfig,
}

fn default_region() -> String {
    "citadel".to_string()
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
        if cfg.db.addrs.is_empty() {
            return Err(Error::Config(format!(
                "{}: [db] addrs must name at least one db member",
                path.display()
            )));
        }
        Ok(cfg)
    }
}
