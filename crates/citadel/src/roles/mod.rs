//! The roles built into this citadel, and how a role jail is prepared from the cluster: its
//! config file is derived from the cluster file and written into the jail's directory, and the
//! jail runs `citadel <role> --config <file> …`.

pub mod app;
pub mod db;
pub mod gate;
pub mod store;

use citadel_agent::protocol::RoleOp;
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
        let (file, text) = derive(cluster, jail, paths)?;
        let path = paths.root.join(file);
        let header = "# Written by citadel from the cluster file at each start and reload; edit the cluster file instead.\n";
        std::fs::write(&path, format!("{header}{text}"))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        let mut args = vec![
            "run".into(),
            "--config".into(),
            path.to_string_lossy().into_owned(),
        ];
        if jail.role == Role::Gate {
            args.push("--data".into());
            args.push(paths.root.join("gate").to_string_lossy().into_owned());
        }
        Ok(args)
    }

    fn derive(&self, cluster: &Cluster, jail: &Jail, paths: &JailPaths) -> Result<String, String> {
        derive(cluster, jail, paths).map(|(_, text)| text)
    }

    fn reload_signal(&self, role: Role) -> Option<Signal> {
        (role == Role::Gate).then_some(Signal::SIGHUP)
    }

    fn drain<'a>(&'a self, cluster: &'a Cluster, jail: &'a Jail, on: bool) -> BoxFuture<'a> {
        Box::pin(gate::drain(&self.state_dir, cluster, jail, on))
    }

    fn in_rotation<'a>(
        &'a self,
        cluster: &'a Cluster,
        jail: &'a Jail,
    ) -> BoxFuture<'a, Option<bool>> {
        Box::pin(gate::in_rotation(&self.state_dir, cluster, jail))
    }

    fn operate<'a>(&'a self, op: &'a RoleOp) -> BoxFuture<'a, Result<serde_json::Value, String>> {
        Box::pin(async move {
            operate(&self.state_dir, op)
                .await
                .map_err(|e| format!("{e:#}"))
        })
    }
}

/// A role's operator verb against this state directory's jail of that role (the agent runs
/// it for an operator elsewhere; the CLI runs it itself on the jail's host).
pub async fn operate(
    state_dir: &std::path::Path,
    op: &RoleOp,
) -> anyhow::Result<serde_json::Value> {
    match op {
        RoleOp::DbStatus | RoleOp::DbVoter { .. } => crate::dbctl::operate(state_dir, op).await,
        RoleOp::Gate { .. } => crate::gatectl::operate(state_dir, op).await,
        RoleOp::AppKeyCreate { .. } | RoleOp::AppKeyList | RoleOp::AppKeyRevoke { .. } => {
            crate::appctl::operate(state_dir, op).await
        }
    }
}

/// A role jail's config derived from the cluster: the file it goes into (in the jail's
/// directory) and its text. What `prepare` writes and what `plan` compares.
fn derive(
    cluster: &Cluster,
    jail: &Jail,
    paths: &JailPaths,
) -> Result<(&'static str, String), String> {
    fn text(
        file: &'static str,
        config: &impl serde::Serialize,
    ) -> Result<(&'static str, String), String> {
        toml::to_string_pretty(config)
            .map(|t| (file, t))
            .map_err(|e| format!("cannot encode {file}: {e}"))
    }
    match jail.role {
        Role::Gate => text("gate.toml", &gate::config(cluster, jail)?),
        Role::Db | Role::Witness => text("db.toml", &db::config(cluster, jail, paths)?),
        Role::App => text("app.toml", &app::config(cluster, jail)?),
        Role::Store => text("store.toml", &store::resolve(cluster, jail, &paths.data())?),
        Role::Command => Err("a command jail needs a `command`".into()),
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
