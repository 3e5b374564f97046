//! Jails: nodes that look like standalone servers — their own addresses, their own data,
//! supervised. This crate owns how one jail is laid out on disk, launched, watched, restarted,
//! stopped, copied and archived. The `process` backend runs each jail as a child process in its
//! own process group, bound to its own loopback addresses.

mod data;
mod health;
mod identity;
mod logs;
pub mod netns;
mod paths;
mod reaper;
mod supervisor;

pub use data::{ArchiveContents, copy_tree, read_archive, write_archive};
pub use health::{http_request, probe};
pub use identity::{Launch, LaunchError, expand_vars, identity_env, resolve_program};
pub use logs::{RotatingLog, follow_log, tail_log};
pub use paths::JailPaths;
pub use reaper::{Reaper, run_reaper};
pub use supervisor::{Exit, Health, JailState, JailStatus, Supervisor};

/// Log files rotate when they reach this size; `LOG_KEEP` older files are kept.
pub const LOG_MAX_BYTES: u64 = 10 << 20;
pub const LOG_KEEP: usize = 3;
