//! The app role in a cluster: the `[app]` section is the app's own config (see
//! `citadel_app::AppConfig` for every key and default) with what the cluster derives: each app
//! jail listens on its own first address (port 8000, admin 9100), finds the db as `db.<zone>`
//! through the gate's DNS (or, in a cluster without a gate, at the db jails' addresses), and
//! AUTHs with the `[db]` password.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use citadel_app::{AppConfig, DnsConfig};
use citadel_spec::{Cluster, Diagnostic, Jail, Role};
use serde::Deserialize;

use super::{db, gate};

pub const HTTP_PORT: u16 = 8000;
pub const ADMIN_PORT: u16 = 9100;

#[derive(Deserialize)]
struct FileWithApp {
    #[expect(dead_code, reason = "read only to check the section's shape")]
    app: Option<AppConfig>,
}

pub fn check(source: &str, cluster: &Cluster) -> Vec<Diagnostic> {
    if let Some(d) = super::shape_error::<FileWithApp>(source, "app") {
        return vec![d];
    }
    cluster
        .jails
        .iter()
        .filter(|j| j.role == Role::App && j.command.is_none())
        .filter_map(|jail| {
            let problem = match resolve(cluster, jail) {
                Ok(config) => config.validate().err().map(|e| e.to_string()),
                Err(e) => Some(e),
            }?;
            Some(Diagnostic::error(
                jail.spans.get("role"),
                format!("app jail `{}`: {problem}", jail.name),
            ))
        })
        .collect()
}

pub fn resolve(cluster: &Cluster, me: &Jail) -> Result<AppConfig, String> {
    let raw = cluster.sections.get("app").cloned().unwrap_or_default();
    let written = |table: &str, key: &str| {
        raw.get(table)
            .and_then(|t| t.as_table())
            .is_some_and(|t| t.contains_key(key))
    };
    let mut config: AppConfig = toml::Value::Table(raw.clone())
        .try_into()
        .map_err(|e: toml::de::Error| e.to_string())?;
    let own = IpAddr::V4(me.primary_address().ok_or("the jail has no address")?);
    if !raw.contains_key("listen") {
        config.listen = SocketAddr::new(own, HTTP_PORT);
    }
    if !raw.contains_key("admin_listen") {
        config.admin_listen = Some(SocketAddr::new(own, ADMIN_PORT));
    }
    if !written("db", "addrs") && !written("db", "dns") {
        match cluster
            .jails
            .iter()
            .find(|j| j.role == Role::Gate && j.command.is_none())
        {
            Some(g) => {
                let server = gate::resolve(cluster, g)?
                    .dns
                    .and_then(|d| d.listen.first().copied())
                    .ok_or("the gate serves no DNS")?;
                config.db.dns = Some(DnsConfig {
                    name: format!("db.{}", cluster.zone),
                    server,
                    port: db::REDIS_PORT,
                });
            }
            None => {
                config.db.addrs = db::reachable_addrs(cluster, me);
            }
        }
    }
    if !written("db", "password") {
        config.db.password = db::default_password(cluster)?;
    }
    Ok(config)
}

/// The config an app jail runs with, checked.
pub fn config(cluster: &Cluster, jail: &Jail) -> Result<AppConfig, String> {
    let config = resolve(cluster, jail)?;
    config.validate().map_err(|e| e.to_string())?;
    Ok(config)
}

/// The config of some app jail that has run with this state directory: how operator commands
/// (API keys) reach the db the apps use.
pub fn running_config(state_dir: &Path) -> anyhow::Result<AppConfig> {
    Ok(AppConfig::from_file(&super::config_of(
        state_dir,
        "app.toml",
        Role::App,
    )?)?)
}
