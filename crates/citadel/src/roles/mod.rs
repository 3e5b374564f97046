//! The roles built into this citadel, and how a role jail is prepared from the cluster: its
//! config file is derived from the cluster file and written into the jail's directory, and the
//! jail runs `citadel <role> --config <file> …`.

pub mod app;
pub mod db;
pub mod gate;
pub mod store;

use citadel_agent::{BoxFuture, Roles};
use citadel_jail::JailPaths;
use citadel_spec::{Cluster, Jail, Role};
use nix::sys::signal::Signal;

pub struct BuiltinRoles {
    pub state_dir: std::path::PathBuf,
}

impl Roles for BuiltinRoles {
    fn prepare(
        &self,
        cluster: &Cluster,
        jail: &Jail,
        paths: &JailPaths,
    ) -> Result<Vec<String>, String> {
        match jail.role {
            Role::Gate => gate::prepare(cluster, jail, paths),
            Role::Db | Role::Witness => db::prepare(cluster, jail, paths),
            Role::App => app::prepare(cluster, jail, paths),
            Role::Store => store::prepare(cluster, jail, paths),
            Role::Command => Err("a command jail needs a `command`".into()),
        }
    }

    fn reload_signal(&self, role: Role) -> Option<Signal> {
        (role == Role::Gate).then_some(Signal::SIGHUP)
    }

    fn drain<'a>(&'a self, cluster: &'a Cluster, jail: &'a Jail, on: bool) -> BoxFuture<'a> {
        Box::pin(gate::drain(&self.state_dir, cluster, jail, on))
    }
}

/// A role section's shape, checked by deserializing the whole file into `T` (a struct with
/// that one section), so the error carries its place in the file.
pub fn shape_error<T: serde::de::DeserializeOwned>(
    source: &str,
    section: &str,
) -> Option<citadel_spec::Diagnostic> {
    toml::from_str::<T>(source).err().map(|e| {
        citadel_spec::Diagnostic::error(
            e.span(),
            format!("[{section}]: {}", e.message().trim_end()),
        )
    })
}

/// The cluster file's `[name]` section as `T` (its default when the file has none).
pub fn section<T: serde::de::DeserializeOwned + Default>(
    cluster: &Cluster,
    name: &str,
) -> Result<T, String> {
    match cluster.sections.get(name) {
        Some(raw) => toml::Value::Table(raw.clone())
            .try_into()
            .map_err(|e: toml::de::Error| e.to_string()),
        None => Ok(T::default()),
    }
}

/// The byte range of the first `needle` after `after` in `source`, to point a message at.
pub fn locate(source: &str, after: &str, needle: &str) -> Option<std::ops::Range<usize>> {
    let start = source.find(after)?;
    let at = start + source[start..].find(needle)?;
    Some(at..at + needle.len())
}

/// Writes a role's derived config as TOML into the jail's directory.
pub fn write_config(
    paths: &JailPaths,
    file: &str,
    config: &impl serde::Serialize,
) -> Result<String, String> {
    let text = toml::to_string_pretty(config).map_err(|e| format!("cannot encode {file}: {e}"))?;
    let path = paths.root.join(file);
    let header = "# Written by citadel from the cluster file at each start and reload; edit the cluster file instead.\n";
    std::fs::write(&path, format!("{header}{text}"))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(path.to_string_lossy().into_owned())
}

/// The jails of a state directory that have run with a role's config file (`gate.toml`, …):
/// how operator commands find a running role. Sorted by jail name.
pub fn jails_with(
    state_dir: &std::path::Path,
    file: &str,
) -> anyhow::Result<Vec<(String, std::path::PathBuf)>> {
    let jails = state_dir.join("jails");
    let mut found: Vec<(String, std::path::PathBuf)> = std::fs::read_dir(&jails)
        .map_err(|e| anyhow::anyhow!("no jails under {}: {e}; is --state right?", jails.display()))?
        .flatten()
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                e.path().join(file),
            )
        })
        .filter(|(_, path)| path.exists())
        .collect();
    found.sort();
    Ok(found)
}

/// The config file one role jail of the state directory ran with: the named jail's, or the
/// first one's.
pub fn config_of(
    state_dir: &std::path::Path,
    file: &str,
    role: Role,
) -> anyhow::Result<std::path::PathBuf> {
    jails_with(state_dir, file)?
        .into_iter()
        .next()
        .map(|(_, path)| path)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "no {role} jail has run with state directory {}",
                state_dir.display()
            )
        })
}
