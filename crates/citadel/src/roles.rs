//! The roles built into this citadel, and how a role jail is prepared from the cluster: its
//! config file is derived from the cluster file and written into the jail's directory, and the
//! jail runs `citadel <role> --config <file>`.

use citadel_agent::Roles;
use citadel_jail::JailPaths;
use citadel_spec::{Cluster, Jail, Role};
use nix::sys::signal::Signal;

pub struct BuiltinRoles;

impl Roles for BuiltinRoles {
    fn prepare(
        &self,
        _cluster: &Cluster,
        jail: &Jail,
        _paths: &JailPaths,
    ) -> Result<Vec<String>, String> {
        Err(format!(
            "the {} role is not built into this citadel; give the jail a `command`",
            jail.role
        ))
    }

    fn reload_signal(&self, _role: Role) -> Option<Signal> {
        None
    }
}
