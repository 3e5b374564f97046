//! `citadel gate …`: the gate role itself (`run`), and the operator's verbs that talk to a
//! running gate's admin API: bans and backends.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use std::time::Duration;

use anyhow::bail;
use citadel_jail::http_request;
use citadel_spec::units::parse_duration;
use clap::Subcommand;

use citadel_agent::protocol::RoleOp;

use crate::output;
use crate::remote::{Target, Where};

#[derive(Subcommand)]
pub enum GateVerb {
    /// Run the gate role (what the gate jail runs; `citadel up` writes its config).
    #[command(after_help = "Example (what `citadel up` runs in the gate jail):
  citadel gate run --config .citadel/jails/gate/gate.toml --data .citadel/jails/gate/gate")]
    Run {
        /// The gate's config file; re-read on SIGHUP.
        #[arg(long)]
        config: PathBuf,
        /// Where the gate keeps its state (bans).
        #[arg(long)]
        data: PathBuf,
    },
    /// Ban an IP address or CIDR at the gate: its connections are refused.
    #[command(after_help = "Examples:
  citadel gate ban 203.0.113.7 --ttl 1h --reason \"login scanner\"
  citadel gate ban 198.51.100.0/24")]
    Ban {
        net: String,
        /// Lift the ban after this long (e.g. "10m", "1h"); default: never.
        #[arg(long)]
        ttl: Option<String>,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Lift a ban.
    #[command(after_help = "Example:\n  citadel gate unban 203.0.113.7")]
    Unban { net: String },
    /// List the bans in force: address, when each expires, why.
    #[command(after_help = "Examples:\n  citadel gate bans\n  citadel gate bans --json")]
    Bans,
    /// The gate's services and members: health, drain state, counters.
    #[command(after_help = "Examples:\n  citadel gate backends\n  citadel gate backends --json")]
    Backends,
}

/// `citadel gate run`: the gate on a runtime of its own, as its `threads` setting asks.
pub fn run_gate(config: &Path, data: &Path) -> anyhow::Result<()> {
    let cfg = citadel_gate::GateConfig::load(config)?;
    let threads = match cfg.threads {
        0 => None,
        n => Some(n),
    };
    let opts = citadel_gate::RunOptions {
        state_dir: data.to_path_buf(),
        config_path: Some(config.to_path_buf()),
    };
    citadel_gate::run_blocking(cfg, opts, threads)?;
    Ok(())
}

pub async fn gate(
    verb: GateVerb,
    target: &Target,
    jail: Option<&str>,
    json: bool,
) -> anyhow::Result<i32> {
    if let GateVerb::Run { .. } = verb {
        bail!("`citadel gate run` builds its own runtime: main runs it before any other starts");
    }
    let (method, path, body) = match &verb {
        GateVerb::Ban { net, ttl, reason } => {
            let ttl_secs = match ttl {
                Some(t) => Some(
                    parse_duration(t)
                        .map_err(anyhow::Error::msg)?
                        .as_secs()
                        .max(1),
                ),
                None => None,
            };
            let body = serde_json::json!({"net": net, "ttl_secs": ttl_secs, "reason": reason});
            ("POST", "/bans".to_string(), Some(body.to_string()))
        }
        GateVerb::Unban { net } => (
            "DELETE",
            format!("/bans?net={}", net.replace('/', "%2F")),
            None,
        ),
        GateVerb::Bans => ("GET", "/bans".to_string(), None),
        GateVerb::Backends => ("GET", "/backends".to_string(), None),
        GateVerb::Run { .. } => unreachable!("handled above"),
    };
    // Through the agents: the gate jail named, or the file's only gate.
    let jail = match (jail, target.resolve()?) {
        (Some(j), _) => Some(j.to_string()),
        (None, Where::Local(_)) => None,
        (None, Where::Cluster(session)) => {
            let gates: Vec<&str> = session
                .cluster
                .jails
                .iter()
                .filter(|j| j.role == citadel_spec::Role::Gate && j.command.is_none())
                .map(|j| j.name.as_str())
                .collect();
            match gates.as_slice() {
                [one] => Some(one.to_string()),
                [] => bail!("no gate jail in {}", session.origin),
                _ => bail!(
                    "several gate jails ({}): name one with --jail",
                    gates.join(", ")
                ),
            }
        }
    };
    let op = RoleOp::Gate {
        jail,
        method: method.to_string(),
        path,
        body,
    };
    let answer = crate::remote::role(target, &op).await?;
    match &verb {
        _ if json && !answer.is_null() => output::json(&answer)?,
        GateVerb::Ban { net, .. } => output::done(
            json,
            format_args!("banned {net}"),
            serde_json::json!({"banned": net}),
        ),
        GateVerb::Unban { net } => output::done(
            json,
            format_args!("unbanned {net}"),
            serde_json::json!({"unbanned": net}),
        ),
        GateVerb::Bans => println!("{}", bans_table(&answer)),
        GateVerb::Backends => println!("{}", backends_table(&answer)),
        GateVerb::Run { .. } => unreachable!("handled above"),
    }
    Ok(0)
}

/// A call to the admin API of this state directory's gate jail (`jail`, or the only one):
/// its JSON answer (null when it has none).
pub async fn operate(state: &Path, op: &RoleOp) -> anyhow::Result<serde_json::Value> {
    let RoleOp::Gate {
        jail,
        method,
        path,
        body,
    } = op
    else {
        bail!("not a gate verb: {op:?}");
    };
    let admin = admin_address(state, jail.as_deref())?;
    let (status, text) = http_request(admin, method, path, body.clone(), Duration::from_secs(5))
        .await
        .map_err(|e| {
            anyhow::anyhow!("the gate's admin API at {admin}: {e}; is the gate jail running?")
        })?;
    if !(200..300).contains(&status) {
        bail!("the gate refused: {status} {}", text.trim());
    }
    Ok(serde_json::from_str(&text).unwrap_or(serde_json::Value::Null))
}

/// `GET /bans`: `[{"net", "expires_unix_ms", "reason"}]`.
fn bans_table(bans: &serde_json::Value) -> comfy_table::Table {
    let mut table = output::table(["NET", "EXPIRES", "REASON"]);
    for ban in bans.as_array().into_iter().flatten() {
        table.add_row(vec![
            ban["net"].as_str().unwrap_or("?").to_string(),
            output::until_unix_ms(ban["expires_unix_ms"].as_u64()),
            ban["reason"].as_str().unwrap_or("-").to_string(),
        ]);
    }
    table
}

/// `GET /backends`: `[{"name", "policy", "port", "members": [{"name", "address", "up",
/// "draining", "stalled", "active", "requests", "failures"}]}]`, one row per member.
fn backends_table(services: &serde_json::Value) -> comfy_table::Table {
    let mut table = output::table([
        "SERVICE", "PORT", "POLICY", "MEMBER", "ADDRESS", "STATE", "ACTIVE", "REQUESTS", "FAILURES",
    ]);
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".into(),
        other => other.to_string(),
    };
    for service in services.as_array().into_iter().flatten() {
        for m in service["members"].as_array().into_iter().flatten() {
            let state = match (
                m["up"].as_bool(),
                m["draining"].as_bool(),
                m["stalled"].as_bool(),
            ) {
                (_, Some(true), _) => "draining",
                (Some(true), _, Some(true)) => "stalled",
                (Some(true), _, _) => "up",
                _ => "down",
            };
            table.add_row(vec![
                text(&service["name"]),
                text(&service["port"]),
                text(&service["policy"]),
                text(&m["name"]),
                text(&m["address"]),
                state.to_string(),
                text(&m["active"]),
                text(&m["requests"]),
                text(&m["failures"]),
            ]);
        }
    }
    table
}

/// The admin address of the gate jail, from the config `citadel up` wrote for it.
fn admin_address(state: &Path, jail: Option<&str>) -> anyhow::Result<SocketAddr> {
    let name = match jail {
        Some(name) => name.to_string(),
        None => {
            let gates: Vec<String> = crate::roles::jails_with(state, "gate.toml")?
                .into_iter()
                .map(|(name, _)| name)
                .collect();
            match gates.as_slice() {
                [one] => one.clone(),
                [] => bail!(
                    "no gate jail has run with state directory {}",
                    state.display()
                ),
                _ => bail!(
                    "several gate jails ({}): name one with --jail",
                    gates.join(", ")
                ),
            }
        }
    };
    Ok(crate::roles::gate::running_config(state, &name)
        .map_err(anyhow::Error::msg)?
        .admin)
}
