//! The store role in a cluster: one `store` jail on each data server. Each listens for S3 on
//! its first address (port 3900, what the gate's `store` service balances), serves blocks to
//! the other store jails on the address they share last-declared (the back segment, port
//! 3901) and lists every store jail with its `weight` (placement), reaches the db jails directly at their addresses (port 6379) with the `[db]`
//! password, keeps its blocks in the jail's data directory, and serves `/metrics` and
//! `POST /scrub` on its first address, port 9100. `[store]` holds `region` and the upkeep
//! settings (`reclone_mib_per_s`, `catalogue_interval_secs`, `gc_grace_secs`,
//! `scrub_interval_secs`).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use citadel_spec::{Cluster, Diagnostic, Jail, Role};
use citadel_store::StoreConfig;
use citadel_store::config::{self, DbConfig};
use serde::Deserialize;

use super::db;

pub const S3_PORT: u16 = 3900;
pub const PEER_PORT: u16 = 3901;
pub const ADMIN_PORT: u16 = 9100;

/// The `[store]` section: what an operator may set; the rest is derived.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct StoreSection {
    region: Option<String>,
    reclone_mib_per_s: Option<f64>,
    catalogue_interval_secs: Option<f64>,
    gc_grace_secs: Option<f64>,
    scrub_interval_secs: Option<f64>,
    /// The jail (on the gate box) running `citadel store spare`: the second copy of a block
    /// written while the other store is down.
    spare: Option<String>,
}

#[derive(Deserialize)]
#[expect(dead_code, reason = "read only to check the section's shape")]
struct FileWithStore {
    store: Option<StoreSection>,
}

pub fn check(source: &str, cluster: &Cluster) -> Vec<Diagnostic> {
    if let Some(d) = super::shape_error::<FileWithStore>(source, "store") {
        return vec![d];
    }
    let stores: Vec<&Jail> = stores(cluster);
    let mut diags = Vec::new();
    for jail in stores {
        if let Err(e) = resolve(cluster, jail, Path::new("data")) {
            diags.push(Diagnostic::error(
                jail.spans.get("role"),
                format!("store jail `{}`: {e}", jail.name),
            ));
        }
    }
    diags
}

fn stores(cluster: &Cluster) -> Vec<&Jail> {
    cluster
        .jails
        .iter()
        .filter(|j| j.role == Role::Store && j.command.is_none())
        .collect()
}

pub fn resolve(cluster: &Cluster, me: &Jail, data_dir: &Path) -> Result<StoreConfig, String> {
    let section: StoreSection = super::section(cluster, "store")?;
    let own = me.primary_address().ok_or("the jail has no address")?;
    let all = stores(cluster);
    // Listen for the others where they reach us (the back segment between servers).
    let peer_ip = match all.iter().find(|j| j.name != me.name) {
        Some(p) => cluster.reach(p, me).unwrap_or(own),
        None => own,
    };
    let peer_listen = SocketAddr::new(IpAddr::V4(peer_ip), PEER_PORT);
    let mut servers = Vec::new();
    for j in &all {
        let addr =
            if j.name == me.name {
                peer_listen
            } else {
                SocketAddr::new(
                    IpAddr::V4(cluster.reach(me, j).ok_or_else(|| {
                        format!("shares no segment with store jail `{}`", j.name)
                    })?),
                    PEER_PORT,
                )
            };
        servers.push(config::ServerEntry {
            name: j.name.clone(),
            addr,
            weight: j.store_weight(),
        });
    }
    let spare = match &section.spare {
        Some(name) => {
            let jail = cluster
                .jails
                .iter()
                .find(|j| &j.name == name)
                .ok_or_else(|| format!("[store] spare names no jail `{name}`"))?;
            let ip = cluster
                .reach(me, jail)
                .ok_or_else(|| format!("shares no segment with the spare `{name}`"))?;
            Some(SocketAddr::new(IpAddr::V4(ip), PEER_PORT))
        }
        None => None,
    };
    let addrs = db::reachable_addrs(cluster, me);
    if addrs.is_empty() {
        return Err("no db jail it can reach (the store keeps its metadata in the db)".into());
    }
    let resolved = StoreConfig {
        listen: SocketAddr::new(IpAddr::V4(own), S3_PORT),
        peer_listen,
        peer: None,
        servers,
        spare,
        data_dir: data_dir.to_path_buf(),
        region: section.region.unwrap_or_else(|| "citadel".into()),
        name: Some(me.name.clone()),
        admin_listen: Some(SocketAddr::new(IpAddr::V4(own), ADMIN_PORT)),
        reclone_mib_per_s: section
            .reclone_mib_per_s
            .unwrap_or(config::DEFAULT_RECLONE_MIB_PER_S),
        catalogue_interval_secs: section
            .catalogue_interval_secs
            .unwrap_or(config::DEFAULT_CATALOGUE_INTERVAL_SECS),
        gc_grace_secs: section
            .gc_grace_secs
            .unwrap_or(config::DEFAULT_GC_GRACE_SECS),
        scrub_interval_secs: section
            .scrub_interval_secs
            .unwrap_or(config::DEFAULT_SCRUB_INTERVAL_SECS),
        db: DbConfig {
            addrs,
            password: db::default_password(cluster)?,
        },
    };
    resolved.check()?;
    Ok(resolved)
}

/// The config of some store jail that has run with this state directory: how
/// `citadel store key …` reaches the db.
pub fn running_config(state_dir: &Path) -> anyhow::Result<StoreConfig> {
    let file: PathBuf = super::config_of(state_dir, "store.toml", Role::Store)?;
    Ok(StoreConfig::from_file(&file)?)
}
