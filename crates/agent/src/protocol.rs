//! What the CLI and a running agent say to each other over the control socket: one JSON
//! request per line, one JSON response per line.

use std::collections::BTreeMap;
use std::path::PathBuf;

use citadel_jail::{Exit, Health, JailState};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    Status,
    Start {
        jail: String,
    },
    Stop {
        jail: String,
    },
    Restart {
        jail: String,
    },
    Identity {
        jail: String,
    },
    Clone {
        source: String,
        name: String,
        /// segment → address; segments not named get the first free address.
        addresses: BTreeMap<String, String>,
    },
    Archive {
        jail: String,
        file: PathBuf,
    },
    Restore {
        file: PathBuf,
        name: Option<String>,
        host: Option<String>,
    },
    Destroy {
        jail: String,
    },
    /// Read the cluster file again and apply it.
    Reload,
    Shutdown,
    /// What applying this cluster file would change here.
    Plan {
        file: String,
    },
    /// Store this file as generation `generation` and converge to it, except the restarts
    /// of `hold`, which the operator rolls one at a time (`Roll`).
    Apply {
        file: String,
        generation: u64,
        #[serde(default)]
        hold: Vec<String>,
    },
    /// Restart a jail with its launch from the applied file and wait until it is healthy.
    Roll {
        jail: String,
        timeout_ms: u64,
    },
    /// At this host's gates: stop sending `jail` work and wait for its requests in flight
    /// (`on`), or send it work again.
    Drain {
        jail: String,
        on: bool,
    },
    /// Whether this host's gates that balance `jail` have it in rotation (null: none does).
    InRotation {
        jail: String,
    },
    /// A peer agent's version of the file; the answer carries ours, with the file if the peer
    /// is behind.
    Gossip {
        generation: u64,
        sha256: String,
    },
    /// `jail move`, on the source: stop `jail` (the operator has drained it at the gates),
    /// archive it and send the archive to host `to`'s agent (`Receive`). The jail stays
    /// stopped here, marked as moving, until `Start` (rollback) or `Discard` (done).
    MoveOut {
        jail: String,
        to: String,
    },
    /// `jail move`, on the target, from the source's agent: `jail`'s archive follows this
    /// line as frames (a 4-byte big-endian length, then that many bytes; an empty frame
    /// ends it), `bytes` and `sha256` in all. Only the host the jail is on may send it.
    Receive {
        jail: String,
        bytes: u64,
        sha256: String,
    },
    /// `jail move`, on the target: restore the received `jail` here with its name,
    /// addresses and data, start it and wait until it is healthy.
    MoveIn {
        jail: String,
        timeout_ms: u64,
    },
    /// `jail move`: delete this host's copy of `jail` (stopped first) — the source's once
    /// the move is done, the target's when it is rolled back. Refused where the applied file
    /// puts the jail.
    Discard {
        jail: String,
    },
    /// The jail's console log: its last `lines`, then with `follow` what it writes until the
    /// caller hangs up. Streamed: the answer line, then `control::Chunk`s.
    Logs {
        jail: String,
        lines: usize,
        follow: bool,
    },
    /// Runs `command` as the jail (its environment, directory, namespaces, cgroups) here.
    /// Streamed: the answer line, then its stdout and stderr as `control::Chunk`s, then its
    /// exit code. With `stdin`, the caller sends the command's stdin as chunks after the
    /// request line (`Out`s, then an `End`); without, it reads nothing.
    Exec {
        jail: String,
        command: Vec<String>,
        #[serde(default)]
        stdin: bool,
    },
    /// `jail archive` from another machine: the jail archived here, sent as `control::Chunk`s
    /// after the answer line (the operator's CLI writes them into its file).
    ArchiveOut {
        jail: String,
    },
    /// `jail restore` from another machine: the archive follows this line as frames (as
    /// `Receive`), `bytes` and `sha256` in all; restored here as `Restore` does.
    RestoreIn {
        name: Option<String>,
        host: Option<String>,
        bytes: u64,
        sha256: String,
    },
    /// An operator's verb of a role (`db status`, `gate …`, `app key …`), run by this
    /// agent against its own jail of that role (`Roles::operate`).
    Role {
        verb: RoleOp,
    },
}

/// The operator's verbs of the roles, run where a jail of the role runs (its config in the
/// state directory says where the role listens). The answer is JSON, as `--json` prints it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "verb", rename_all = "kebab-case")]
pub enum RoleOp {
    /// Every db member's Raft state, the leader, the placement.
    DbStatus,
    /// Make `member` a voter (`add`) or take it out of the voters.
    DbVoter {
        member: String,
        add: bool,
    },
    /// A request to the admin API of gate jail `jail` (the host's only gate when None).
    Gate {
        jail: Option<String>,
        method: String,
        path: String,
        body: Option<String>,
    },
    AppKeyCreate {
        name: String,
    },
    AppKeyList,
    AppKeyRevoke {
        id: String,
    },
}

impl RoleOp {
    /// The roles whose jails can answer this verb.
    pub fn roles(&self) -> &'static [citadel_spec::Role] {
        use citadel_spec::Role;
        match self {
            RoleOp::DbStatus | RoleOp::DbVoter { .. } => &[Role::Db, Role::Witness],
            RoleOp::Gate { .. } => &[Role::Gate],
            RoleOp::AppKeyCreate { .. } | RoleOp::AppKeyList | RoleOp::AppKeyRevoke { .. } => {
                &[Role::App]
            }
        }
    }
}

impl Request {
    /// What another host's agent (a host certificate) may ask: the peers' exchange, and a
    /// moved jail's archive (checked to come from the jail's host).
    pub fn allowed_to_hosts(&self) -> bool {
        matches!(self, Request::Gossip { .. } | Request::Receive { .. })
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Response {
    Ok(serde_json::Value),
    Error(String),
}

/// One row of `citadel status`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JailReport {
    pub name: String,
    pub host: String,
    pub role: String,
    pub backend: String,
    /// `segment=address` for each segment the jail joins.
    pub addresses: Vec<String>,
    pub state: JailState,
    pub pid: Option<u32>,
    pub uptime_ms: Option<u64>,
    pub restarts: u32,
    pub last_exit: Option<Exit>,
    pub health: Health,
    pub has_health_check: bool,
    pub error: Option<String>,
    /// Defined in the cluster file (false: created at run time by clone or restore).
    pub from_file: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StatusReport {
    pub cluster: String,
    pub zone: String,
    pub file: String,
    pub state_dir: PathBuf,
    pub agent_pid: u32,
    /// The generation of the file this agent applied (0: `--file`, `up`, or none yet).
    #[serde(default)]
    pub generation: u64,
    /// That file's sha256 (empty under `up`).
    #[serde(default)]
    pub sha256: String,
    pub jails: Vec<JailReport>,
}

/// What `exec` needs to run a command as the jail.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Identity {
    pub env: BTreeMap<String, String>,
    pub cwd: PathBuf,
    /// A netns jail's init (host PID): `exec` enters its namespaces.
    #[serde(default)]
    pub netns_pid: Option<u32>,
    /// The `cgroup.procs` files of a netns jail: `exec` joins them, so its limits hold.
    #[serde(default)]
    pub cgroup_procs: Vec<PathBuf>,
}

/// The outcome of clone and restore.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Created {
    pub name: String,
    pub host: String,
    pub addresses: Vec<String>,
    pub bytes: u64,
}
