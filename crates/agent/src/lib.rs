//! The agent: runs the jails of a cluster on this machine and answers operator commands on a
//! control socket. `citadel up` is an agent for every host of the cluster at once.

pub mod applied;
pub mod control;
pub mod exec;
pub mod peers;
pub mod plan;
pub mod protocol;
mod runtime;

pub use runtime::{BoxFuture, ReloadReport, Roles, Runtime, RuntimeError, Source, StartProgress};
