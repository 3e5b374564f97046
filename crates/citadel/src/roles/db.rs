//! The db and witness roles in a cluster: every `db` jail is a data member and every
//! `witness` jail a vote-only member of one Raft group. Each member's config is derived from
//! the cluster, seen from that member: the address it reaches each peer on, its own other
//! addresses to listen on too, and the `[db]` section (passwords, tunables).

use std::net::{IpAddr, SocketAddr};

use citadel_db::{DbConfig, Kind, Member, Tunables};
use citadel_jail::JailPaths;
use citadel_spec::{Cluster, Diagnostic, Jail, Role};
use serde::Deserialize;

use super::locate;

pub const REDIS_PORT: u16 = 6379;
pub const PEER_PORT: u16 = 7000;

/// The `[db]` section of a cluster file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DbSection {
    /// Password every client gives with AUTH (none: no AUTH needed).
    #[serde(default)]
    pub password: Option<String>,
    /// Password of the `admin` user, needed for FLUSHDB.
    #[serde(default)]
    pub admin_password: Option<String>,
    /// Raft timings and snapshot policy; see `citadel_db::Tunables` for the defaults.
    #[serde(default)]
    pub tunables: Tunables,
}

#[derive(Deserialize)]
struct FileWithDb {
    #[expect(dead_code, reason = "read only to check the section's shape")]
    db: Option<DbSection>,
}

pub fn section(cluster: &Cluster) -> Result<DbSection, String> {
    super::section(cluster, "db")
}

/// `ip:6379` of every db jail that `me` can reach, for a role that talks to the db directly.
pub fn reachable_addrs(cluster: &Cluster, me: &Jail) -> Vec<String> {
    cluster
        .jails
        .iter()
        .filter(|j| j.role == Role::Db)
        .filter_map(|j| cluster.reach(me, j))
        .map(|ip| format!("{ip}:{REDIS_PORT}"))
        .collect()
}

pub fn check(source: &str, cluster: &Cluster) -> Vec<Diagnostic> {
    if let Some(d) = super::shape_error::<FileWithDb>(source, "db") {
        return vec![d];
    }
    let mut diags = Vec::new();
    for jail in cluster
        .jails
        .iter()
        .filter(|j| j.role.is_voter() && j.command.is_none())
    {
        if let Err(e) = resolve(cluster, jail).and_then(|c| c.validate().map_err(|e| e.to_string()))
        {
            diags.push(Diagnostic::error(
                jail.spans.get("role"),
                format!("db jail `{}`: {e}", jail.name),
            ));
        }
    }
    if cluster.sections.contains_key("db") && !cluster.jails.iter().any(|j| j.role == Role::Db) {
        diags.push(Diagnostic::warning(
            locate(source, "[db", "[db"),
            "a [db] section, but no jail has role \"db\"",
        ));
    }
    diags
}

/// A member's Raft id: derived from its jail name, so it stays the same however the file is
/// reordered (an id is a member's identity in the log for its whole life).
pub fn member_id(name: &str) -> u64 {
    // FNV-1a, 64-bit; 0 is reserved by the db.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h.max(1)
}

pub fn resolve(cluster: &Cluster, me: &Jail) -> Result<DbConfig, String> {
    let section = section(cluster)?;
    let mut members = Vec::new();
    for jail in cluster.jails.iter().filter(|j| j.role.is_voter()) {
        let ip = cluster.reach(me, jail).ok_or_else(|| {
            format!(
                "it shares no segment with `{}`; give both an address on one segment",
                jail.name
            )
        })?;
        let kind = if jail.role == Role::Db {
            Kind::Data
        } else {
            Kind::Witness
        };
        members.push(Member {
            id: member_id(&jail.name),
            name: jail.name.clone(),
            kind,
            peer: SocketAddr::new(IpAddr::V4(ip), PEER_PORT),
            redis: (kind == Kind::Data).then(|| SocketAddr::new(IpAddr::V4(ip), REDIS_PORT)),
            voter: true,
        });
    }
    // A member listens on every address it has: peers and clients on any of its segments
    // reach it.
    let on_each = |port: u16| {
        me.addresses
            .iter()
            .map(|a| SocketAddr::new(IpAddr::V4(a.addr), port))
            .collect()
    };
    Ok(DbConfig {
        id: member_id(&me.name),
        data_dir: std::path::PathBuf::new(),
        peer_listen: on_each(PEER_PORT),
        redis_listen: if me.role == Role::Db {
            on_each(REDIS_PORT)
        } else {
            Vec::new()
        },
        password: section.password,
        admin_password: section.admin_password,
        members,
        tunables: section.tunables,
    })
}

/// The config a db or witness jail runs with, checked.
pub fn config(cluster: &Cluster, jail: &Jail, paths: &JailPaths) -> Result<DbConfig, String> {
    let mut config = resolve(cluster, jail)?;
    config.data_dir = paths.data().join("db");
    config.validate().map_err(|e| e.to_string())?;
    Ok(config)
}
