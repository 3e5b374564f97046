//! The db and witness roles in a cluster: every `db` jail is a data member and every
//! `witness` jail a vote-only member of one Raft group. Each member's config is derived from
//! the cluster, seen from that member: the address it reaches each peer on, its own other
//! addresses to listen on too, and the `[db]` section (users, passwords, tunables).

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
    /// The `default` user's password (`AUTH pass`; none: no AUTH needed). The app and the
    /// store connect as the default user with it.
    #[serde(default)]
    pub password: Option<String>,
    /// Replaced by the `admin` user (`users`); kept only to say so.
    #[serde(default)]
    pub admin_password: Option<String>,
    /// ACL users (Redis's rules); see `FileUser`.
    #[serde(default)]
    pub users: Vec<FileUser>,
    /// Raft timings and snapshot policy; see `citadel_db::Tunables` for the defaults.
    #[serde(default)]
    pub tunables: Tunables,
}

/// One `[db] users` entry: `{ name = "ops", password = "…", rules = "~* +@read" }`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileUser {
    pub name: String,
    #[serde(default)]
    pub password: Option<String>,
    /// Redis ACL rules; default `~* &* +@all -@dangerous +info`, for `admin` `~* &* +@all`.
    #[serde(default)]
    pub rules: Option<String>,
}

/// Rules of a declared user that gives none.
/// INFO stays allowed: health and monitoring tools read it, and it changes nothing.
pub const DEFAULT_RULES: &str = "~* &* +@all -@dangerous +info";
pub const ADMIN_RULES: &str = "~* &* +@all";

const ADMIN_PASSWORD_GONE: &str = "`admin_password` is replaced by the `admin` user: write `users = [{ name = \"admin\", password = \"…\" }]` (its rules default to \"~* &* +@all\")";

/// The users every db member gets: the `default` user first (`password`, or `nopass`
/// without one; `~* &* +@all -@dangerous +info` unless declared), then the declared ones.
pub fn users(section: &DbSection) -> Result<Vec<citadel_db::acl::UserConfig>, String> {
    if section.admin_password.is_some() {
        return Err(ADMIN_PASSWORD_GONE.into());
    }
    let mut out = Vec::new();
    let declared_default = section.users.iter().any(|u| u.name == "default");
    if !declared_default {
        out.push(citadel_db::acl::UserConfig {
            name: "default".into(),
            password: None,
            rules: if section.password.is_some() {
                DEFAULT_RULES.into()
            } else {
                format!("nopass {DEFAULT_RULES}")
            },
        });
    }
    for u in &section.users {
        let mut rules = u.rules.clone().unwrap_or_else(|| {
            if u.name == "admin" {
                ADMIN_RULES
            } else {
                DEFAULT_RULES
            }
            .to_string()
        });
        // A declared default user without any password needs none (as without `users`).
        if u.name == "default" && u.password.is_none() && section.password.is_none() {
            rules = format!("nopass {rules}");
        }
        out.push(citadel_db::acl::UserConfig {
            name: u.name.clone(),
            password: u.password.clone(),
            rules,
        });
    }
    citadel_db::acl::configured(section.password.as_deref(), &out)?;
    Ok(out)
}

/// The default user's password (the `[db]` `password`, or the declared `default` user's):
/// what the app and the store AUTH with.
pub fn default_password(cluster: &Cluster) -> Result<Option<String>, String> {
    let s = section(cluster)?;
    Ok(s.password.clone().or_else(|| {
        s.users
            .iter()
            .find(|u| u.name == "default")
            .and_then(|u| u.password.clone())
    }))
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
    if let Ok(s) = section(cluster) {
        if s.admin_password.is_some() {
            diags.push(Diagnostic::error(
                locate(source, "[db", "admin_password"),
                ADMIN_PASSWORD_GONE,
            ));
        }
        for u in &s.users {
            let at = locate(source, "[db", &format!("{:?}", u.name));
            let one = citadel_db::acl::UserConfig {
                name: u.name.clone(),
                password: u.password.clone(),
                rules: u.rules.clone().unwrap_or_default(),
            };
            if s.users.iter().filter(|o| o.name == u.name).count() > 1 {
                diags.push(Diagnostic::error(
                    at.clone(),
                    format!("[db] user `{}` is declared twice", u.name),
                ));
            }
            match one.build() {
                Err(e) => diags.push(Diagnostic::error(at, format!("[db] {e}"))),
                Ok(b)
                    if b.enabled && !b.nopass && b.passwords.is_empty() && b.name != "default" =>
                {
                    diags.push(Diagnostic::warning(
                        at,
                        format!(
                            "[db] user `{}` has no password and no `nopass` rule: nobody can log in as it",
                            u.name
                        ),
                    ))
                }
                Ok(_) => {}
            }
        }
        if s.password.is_some()
            && s.users
                .iter()
                .any(|u| u.name == "default" && u.password.is_some())
        {
            diags.push(Diagnostic::error(
                locate(source, "[db", "password"),
                "[db] the default user's password is given twice (`password` and the `default` user's `password`): keep one",
            ));
        }
    }
    // With a bad user every member's config fails the same way: say it once, above.
    if !diags
        .iter()
        .any(|d| d.severity == citadel_spec::Severity::Error)
    {
        diags.extend(check_members(cluster));
    }
    with_section_warning(source, cluster, diags)
}

fn check_members(cluster: &Cluster) -> Vec<Diagnostic> {
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
    diags
}

fn with_section_warning(
    source: &str,
    cluster: &Cluster,
    mut diags: Vec<Diagnostic>,
) -> Vec<Diagnostic> {
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
        users: users(&section)?,
        password: section.password,
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

#[cfg(test)]
mod tests {
    use super::*;
    use citadel_spec::{BUILTIN, Capabilities, Severity, line_col, parse};

    fn with_db(db: &str) -> (String, Cluster) {
        let source = BUILTIN.replace("[db]\n", &format!("[db]\n{db}\n"));
        let (cluster, _) = parse(&source, "t.toml", &Capabilities::all()).expect("parses");
        (source, cluster)
    }

    fn errors(db: &str) -> Vec<(usize, String)> {
        let (source, cluster) = with_db(db);
        check(&source, &cluster)
            .into_iter()
            .filter(|d| d.severity == Severity::Error)
            .map(|d| {
                let (line, _) = line_col(&source, d.span.expect("span").start);
                (line, d.message)
            })
            .collect()
    }

    #[test]
    fn users_default_to_no_dangerous_commands_and_admin_to_all() {
        let (_, cluster) = with_db(
            r#"password = "pw"
users = [{ name = "admin", password = "root" }, { name = "ops", password = "o", rules = "~ops:* +@read" }]"#,
        );
        let jail = cluster
            .jails
            .iter()
            .find(|j| j.role == Role::Db)
            .expect("db jail");
        let cfg = resolve(&cluster, jail).expect("resolves");
        let users = citadel_db::acl::configured(cfg.password.as_deref(), &cfg.users).expect("ok");
        let line = |n: &str| {
            users
                .iter()
                .find(|u| u.name == n)
                .map(|u| u.describe())
                .expect("user")
        };
        assert!(
            line("default").ends_with("~* &* +@all -@dangerous +info"),
            "{}",
            line("default")
        );
        assert!(!line("default").contains("nopass"));
        assert!(line("admin").ends_with("~* &* +@all"), "{}", line("admin"));
        assert!(
            line("ops").ends_with("~ops:* resetchannels -@all +@read"),
            "{}",
            line("ops")
        );
        assert_eq!(
            default_password(&cluster).expect("ok").as_deref(),
            Some("pw")
        );
        // Without a password the default user needs none, and still lacks @dangerous.
        let (_, open) = with_db("");
        let cfg = resolve(&open, jail).expect("resolves");
        let users = citadel_db::acl::configured(cfg.password.as_deref(), &cfg.users).expect("ok");
        assert_eq!(
            users[0].describe(),
            "user default on nopass ~* &* +@all -@dangerous +info"
        );
    }

    #[test]
    fn bad_users_are_reported_where_they_are_written() {
        let e = errors(r#"users = [{ name = "ops", password = "o", rules = "~* +nosuch" }]"#);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].1
                .contains("user `ops`: rule '+nosuch': Unknown command or category name in ACL"),
            "{e:?}"
        );
        let line = BUILTIN.lines().position(|l| l == "[db]").expect("[db]") + 2;
        assert_eq!(e[0].0, line);
        let e = errors(r#"admin_password = "root""#);
        assert!(e[0].1.contains("replaced by the `admin` user"), "{e:?}");
        let e = errors(r#"users = [{ name = "a b" }]"#);
        assert!(e[0].1.contains("without spaces"), "{e:?}");
        let e =
            errors(r#"users = [{ name = "x", password = "1" }, { name = "x", password = "2" }]"#);
        assert!(e[0].1.contains("declared twice"), "{e:?}");
        let e = errors(r#"users = [{ name = "x", pasword = "1" }]"#);
        assert!(e[0].1.contains("pasword"), "{e:?}");
        assert!(
            errors(r#"users = [{ name = "x", password = "1", rules = "%R~k:* +get" }]"#).is_empty()
        );
    }
}
