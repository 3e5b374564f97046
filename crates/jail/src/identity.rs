//! Who a jail is: the environment, working directory and program it runs with. `exec` uses the
//! same identity, so a command run "inside" a jail sees what the jail sees.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use citadel_spec::{Cluster, Jail};

use crate::paths::JailPaths;

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("jail `{jail}`: command `{command}` was not found in PATH ({path})")]
    CommandNotFound {
        jail: String,
        command: String,
        path: String,
    },
    #[error(
        "jail `{jail}`: {addr} is already in use by another process; stop whatever holds it (`ss -ltnp 'sport = :{port}'` shows it) or give the jail another address"
    )]
    AddressInUse {
        jail: String,
        addr: String,
        port: u16,
    },
    #[error(
        "jail `{jail}`: cannot bind {addr}: {source}; check that the address exists on this machine"
    )]
    CannotBind {
        jail: String,
        addr: String,
        source: std::io::Error,
    },
    #[error(
        "jail `{jail}`: cannot prepare {path}: {source}; check that the state directory is writable"
    )]
    StateDir {
        jail: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("jail `{jail}`: cannot set up its namespaces: {error}")]
    Netns { jail: String, error: String },
    #[error("jail `{jail}`: cannot start {program}: {source}")]
    Spawn {
        jail: String,
        program: PathBuf,
        source: std::io::Error,
    },
}

/// Everything needed to start one jail's program.
#[derive(Clone, Debug)]
pub struct Launch {
    pub jail: Jail,
    pub paths: JailPaths,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// Set for a jail of the `netns` backend: its namespaces, veths and cgroups.
    pub netns: Option<crate::netns::NetnsJail>,
}

/// Environment variable name for a segment's address: `front` → `CITADEL_ADDR_FRONT`.
fn addr_var(segment: &str) -> String {
    let upper: String = segment
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("CITADEL_ADDR_{upper}")
}

/// The environment a jail runs with: a clean one (a jail should not see the operator's shell),
/// the basics programs need, the jail's identity, then the jail's own `env`.
pub fn identity_env(cluster: &Cluster, jail: &Jail, paths: &JailPaths) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for inherited in ["PATH", "LANG", "LC_ALL", "TZ", "RUST_LOG", "RUST_BACKTRACE"] {
        if let Ok(v) = std::env::var(inherited) {
            env.insert(inherited.to_string(), v);
        }
    }
    env.entry("PATH".into())
        .or_insert_with(|| "/usr/local/bin:/usr/bin:/bin".into());
    let data = paths.data().to_string_lossy().into_owned();
    env.insert("HOME".into(), data.clone());
    env.insert("CITADEL_DATA".into(), data);
    env.insert("CITADEL_JAIL".into(), jail.name.clone());
    env.insert("CITADEL_ROLE".into(), jail.role.to_string());
    env.insert("CITADEL_HOST".into(), jail.host.clone());
    env.insert("CITADEL_CLUSTER".into(), cluster.name.clone());
    env.insert("CITADEL_ZONE".into(), cluster.zone.clone());
    if let Some(addr) = jail.primary_address() {
        env.insert("CITADEL_ADDR".into(), addr.to_string());
    }
    for a in &jail.addresses {
        env.insert(addr_var(&a.segment), a.addr.to_string());
    }
    // The app role's async runtime sized to the jail's CPU limit: a runtime with more
    // workers than the jail has cores spends its time parking and waking them (one worker
    // for `cpus = 1.0`: 11 % less app CPU and 4–5 % more GETs through the gate,
    // bench/e2e/RESULTS.md). The jail's own `env` may set it otherwise.
    if jail.role == citadel_spec::Role::App
        && let Some(cpus) = jail.limits.cpus
    {
        let workers = (cpus.ceil() as u64).max(1);
        env.insert("TOKIO_WORKER_THREADS".into(), workers.to_string());
    }
    for (k, v) in &jail.env {
        env.insert(k.clone(), expand_vars(v, &env));
    }
    env
}

/// Expands `$NAME` and `${NAME}` from `env`; `$$` is a literal `$`. A name the environment
/// does not have is left as written, so a shell script in `args` keeps its own variables.
pub fn expand_vars(text: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i + 1..];
        if let Some(r) = rest.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(r) = rest.strip_prefix('{') {
            match r.find('}') {
                Some(end) => {
                    match env.get(&r[..end]) {
                        Some(v) => out.push_str(v),
                        None => {
                            out.push('$');
                            out.push_str(&rest[..end + 2]);
                        }
                    }
                    rest = &r[end + 1..];
                }
                None => {
                    out.push_str("${");
                    rest = r;
                }
            }
        } else {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            match env.get(&rest[..end]) {
                Some(v) if end > 0 => out.push_str(v),
                _ => {
                    out.push('$');
                    out.push_str(&rest[..end]);
                }
            }
            rest = &rest[end..];
        }
    }
    out.push_str(rest);
    out
}

/// Finds the program to run: `citadel` is this very binary; a name with a slash is a path;
/// anything else is looked up in the jail's PATH.
pub fn resolve_program(
    jail: &str,
    command: &str,
    env: &BTreeMap<String, String>,
    self_exe: &Path,
) -> Result<PathBuf, LaunchError> {
    if command == "citadel" {
        return Ok(self_exe.to_path_buf());
    }
    let path_var = env.get("PATH").cloned().unwrap_or_default();
    let not_found = || LaunchError::CommandNotFound {
        jail: jail.to_string(),
        command: command.to_string(),
        path: path_var.clone(),
    };
    if command.contains('/') {
        let p = PathBuf::from(command);
        return if is_executable(&p) {
            Ok(p)
        } else {
            Err(not_found())
        };
    }
    std::env::split_paths(&path_var)
        .map(|dir| dir.join(command))
        .find(|p| is_executable(p))
        .ok_or_else(not_found)
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion() {
        let env: BTreeMap<String, String> = [
            ("A".to_string(), "1".to_string()),
            ("B_C".to_string(), "2".to_string()),
        ]
        .into();
        assert_eq!(expand_vars("$A:${B_C}/$$x/$Z.$", &env), "1:2/$x/$Z.$");
        assert_eq!(
            expand_vars("i=$((i+1)) ${nope} $1", &env),
            "i=$((i+1)) ${nope} $1"
        );
        assert_eq!(expand_vars("${A", &env), "${A");
        assert_eq!(addr_var("front-2"), "CITADEL_ADDR_FRONT_2");
    }

    fn app_1(cluster: &mut Cluster) -> &mut Jail {
        cluster
            .jails
            .iter_mut()
            .find(|j| j.name == "app-1")
            .unwrap()
    }

    #[test]
    fn an_app_jails_runtime_is_sized_to_its_cpus() {
        let (mut cluster, _) = citadel_spec::parse(
            citadel_spec::BUILTIN,
            "builtin",
            &citadel_spec::Capabilities::all(),
        )
        .expect("the built-in cluster parses");
        let paths = JailPaths::new(Path::new("/nonexistent"), "x");
        let workers = |cluster: &Cluster, name: &str| {
            let jail = cluster.jails.iter().find(|j| j.name == name).unwrap();
            identity_env(cluster, jail, &paths)
                .get("TOKIO_WORKER_THREADS")
                .cloned()
        };
        assert_eq!(workers(&cluster, "app-1").as_deref(), Some("1"));
        assert_eq!(workers(&cluster, "db-1"), None);
        app_1(&mut cluster).limits.cpus = Some(2.5);
        assert_eq!(workers(&cluster, "app-1").as_deref(), Some("3"));
        app_1(&mut cluster)
            .env
            .insert("TOKIO_WORKER_THREADS".into(), "4".into());
        assert_eq!(workers(&cluster, "app-1").as_deref(), Some("4"));
        let app = app_1(&mut cluster);
        app.limits.cpus = None;
        app.env.clear();
        assert_eq!(workers(&cluster, "app-1"), None);
    }
}
