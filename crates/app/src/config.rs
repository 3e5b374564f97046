//! The app role's configuration (TOML). Every field has a default, so an empty file plus a
//! db location is a working configuration.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Error;

/// The whole configuration of one app node.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AppConfig {
    /// HTTP listener of the REST API. Default `127.0.0.1:8000` (port 8000 by convention).
    pub listen: SocketAddr,
    /// Admin listener: Prometheus text at `/metrics`, liveness at `/health`. Default
    /// `127.0.0.1:9100`; `None` (omit it in TOML and pass `--no-admin`) disables it.
    pub admin_listen: Option<SocketAddr>,
    pub db: DbConfig,
    pub limits: Limits,
    pub auth: AuthConfig,
}

impl Default for AppConfig {
    fn default() -> Self {
        AppConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8000)),
            admin_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9100))),
            db: DbConfig::default(),
            limits: Limits::default(),
            auth: AuthConfig::default(),
        }
    }
}

/// Where the db is and how to talk to it. Exactly one of `addrs` and `dns` must be given.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DbConfig {
    /// Static list of db members, `host:port` (tests, or a cluster without DNS).
    pub addrs: Vec<String>,
    /// Find the db members by a DNS name through a given DNS server (the gate's DNS).
    pub dns: Option<DnsConfig>,
    /// Password sent with AUTH on every new connection.
    pub password: Option<String>,
    /// Database number (SELECT). Default 0.
    pub database: i64,
    /// TCP connect timeout per member, milliseconds. Default 1000.
    pub connect_timeout_ms: u64,
    /// Time to wait for one reply before the connection is treated as broken. Default 2000.
    pub response_timeout_ms: u64,
    /// A member whose host acknowledges nothing sent to it for this long is gone (a box that
    /// lost power or its links sends no FIN and no RST): its connection fails, and the
    /// requests on it go to another member (TCP_USER_TIMEOUT). While a reply is awaited on a
    /// shared connection, a PING goes out every third of this, so that there is something
    /// to acknowledge. A live host acknowledges within its delayed-ACK time (at most 200 ms
    /// on Linux), busy or not. Default 300.
    pub unacked_timeout_ms: u64,
    /// Total time one request may spend reconnecting and retrying. Default 5000.
    pub retry_budget_ms: u64,
    /// Idle dedicated connections kept for WATCH/MULTI transactions. Default 16.
    pub tx_pool_idle: usize,
    /// Most WATCH/MULTI/EXEC transactions in flight at once (each holds a connection of its
    /// own); more wait their turn. Default 64.
    pub tx_max: usize,
}

impl Default for DbConfig {
    fn default() -> Self {
        DbConfig {
            addrs: Vec::new(),
            dns: None,
            password: None,
            database: 0,
            connect_timeout_ms: 1000,
            response_timeout_ms: 2000,
            unacked_timeout_ms: 300,
            retry_budget_ms: 5000,
            tx_pool_idle: 64,
            tx_max: 64,
        }
    }
}

impl DbConfig {
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms.max(1))
    }
    pub fn response_timeout(&self) -> Duration {
        Duration::from_millis(self.response_timeout_ms.max(1))
    }
    pub fn unacked_timeout(&self) -> Duration {
        Duration::from_millis(self.unacked_timeout_ms.max(1))
    }
    pub fn retry_budget(&self) -> Duration {
        Duration::from_millis(self.retry_budget_ms)
    }
}

/// DNS discovery of the db members.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    /// Name to resolve, e.g. `db.citadel.internal` (`db.<zone>`).
    pub name: String,
    /// The DNS server to ask (the gate's DNS), e.g. `127.10.0.1:5353`.
    pub server: SocketAddr,
    /// Port of the db's Redis protocol on every resolved address. Default 6379.
    #[serde(default = "default_db_port")]
    pub port: u16,
}

fn default_db_port() -> u16 {
    6379
}

/// Request limits; a request over any of them is answered 400 with a JSON error body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest request body (a document or a merge patch), bytes. Default 65536.
    pub max_document_bytes: usize,
    /// Deepest nesting of arrays/objects; the document object itself is depth 1. Default 32.
    pub max_depth: usize,
    /// Longest id or collection name. Ids and names are `[A-Za-z0-9_-]`, 1..=this. Default 64.
    pub max_id_len: usize,
    /// Page size of a list when `limit` is not given. Default 100.
    pub default_page: usize,
    /// Largest `limit` accepted by a list. Default 1000.
    pub max_page: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_document_bytes: 64 * 1024,
            max_depth: 32,
            max_id_len: 64,
            default_page: 100,
            max_page: 1000,
        }
    }
}

/// API keys.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Require an API key on `/v1/...`. Default true.
    pub required: bool,
    /// How long a key check is remembered, milliseconds (so a revocation takes effect within
    /// this time). Default 1000; 0 checks the db on every request.
    pub cache_ms: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            required: true,
            cache_ms: 1000,
        }
    }
}

impl AppConfig {
    /// An app jail in a Citadel cluster: the API on `addr:8000`, admin on `addr:9100`, the
    /// db found as `db.<zone>` (port 6379) through the DNS server `dns` (the gate's).
    pub fn for_cluster(addr: std::net::IpAddr, zone: &str, dns: SocketAddr) -> AppConfig {
        AppConfig {
            listen: SocketAddr::new(addr, 8000),
            admin_listen: Some(SocketAddr::new(addr, 9100)),
            db: DbConfig {
                dns: Some(DnsConfig {
                    name: format!("db.{}", zone.trim_end_matches('.')),
                    server: dns,
                    port: default_db_port(),
                }),
                ..DbConfig::default()
            },
            ..AppConfig::default()
        }
    }

    /// Reads and checks a TOML file.
    pub fn from_file(path: &Path) -> Result<AppConfig, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Config {
            msg: format!("cannot read {}: {e}", path.display()),
        })?;
        Self::from_toml(&text).map_err(|e| match e {
            Error::Config { msg } => Error::Config {
                msg: format!("{}: {msg}", path.display()),
            },
            other => other,
        })
    }

    /// Parses and checks TOML text.
    pub fn from_toml(text: &str) -> Result<AppConfig, Error> {
        let cfg: AppConfig =
            toml::from_str(text).map_err(|e| Error::Config { msg: e.to_string() })?;
        Ok(cfg)
    }

    /// Checks what serde cannot: exactly one db location, sane limits.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |msg: &str| {
            Err(Error::Config {
                msg: msg.to_string(),
            })
        };
        match (self.db.addrs.is_empty(), &self.db.dns) {
            (true, None) => return bad("db: give either `addrs` or `dns`"),
            (false, Some(_)) => return bad("db: give `addrs` or `dns`, not both"),
            _ => {}
        }
        for a in &self.db.addrs {
            if crate::db::split_host_port(a).is_none() {
                return bad(&format!("db.addrs: `{a}` is not host:port"));
            }
        }
        let l = &self.limits;
        if l.max_depth == 0 || l.max_id_len == 0 || l.max_page == 0 || l.default_page == 0 {
            return bad("limits: every limit must be at least 1");
        }
        if l.default_page > l.max_page {
            return bad("limits: default_page is larger than max_page");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_defaults_and_checks() {
        let c = AppConfig::from_toml("[db]\naddrs = [\"127.0.0.1:6379\"]").expect("parse");
        assert!(c.validate().is_ok());
        assert_eq!(c.listen.port(), 8000);
        assert_eq!(c.limits.max_depth, 32);
        assert!(
            AppConfig::from_toml("nope = 1").is_err(),
            "unknown keys are refused"
        );
        let none = AppConfig::from_toml("").expect("parse");
        assert!(none.validate().is_err(), "a db location is required");
        let both = AppConfig::from_toml(
            "[db]\naddrs = [\"a:1\"]\ndns = { name = \"db.x\", server = \"127.0.0.1:53\" }",
        )
        .expect("parse");
        assert!(both.validate().is_err());
        let bad = AppConfig::from_toml("[db]\naddrs = [\"no-port\"]").expect("parse");
        assert!(bad.validate().is_err());
    }

    #[test]
    fn the_example_in_notes_parses() {
        let notes = include_str!("../NOTES.md");
        let start = notes.find("```toml\n").expect("toml block") + 8;
        let len = notes[start..].find("```").expect("end of block");
        let c = AppConfig::from_toml(&notes[start..start + len]).expect("example parses");
        assert!(c.validate().is_ok());
    }

    #[test]
    fn cluster_config_finds_the_db_by_name() {
        let c = AppConfig::for_cluster(
            "127.10.0.11".parse().expect("ip"),
            "citadel.internal",
            "127.10.0.1:5353".parse().expect("addr"),
        );
        assert!(c.validate().is_ok());
        assert_eq!(c.listen.to_string(), "127.10.0.11:8000");
        let dns = c.db.dns.expect("dns");
        assert_eq!((dns.name.as_str(), dns.port), ("db.citadel.internal", 6379));
    }
}
