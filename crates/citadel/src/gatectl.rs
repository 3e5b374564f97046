//! `citadel gate …`: the gate role itself (`run`), and the operator's verbs that talk to a
//! running gate's admin API: bans and backends.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use std::time::Duration;

use anyhow::bail;
use citadel_jail::http_request;
use citadel_spec::units::parse_duration;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum GateVerb {
    /// Run the gate role (what the gate jail runs; `citadel up` writes its config).
    Run {
        /// The gate's config file; re-read on SIGHUP.
        #[arg(long)]
        config: PathBuf,
        /// Where the gate keeps its state (bans).
        #[arg(long)]
        data: PathBuf,
    },
    /// Ban an IP address or CIDR at the gate: its connections are refused.
    Ban {
        net: String,
        /// Lift the ban after this long (e.g. "10m", "1h"); default: never.
        #[arg(long)]
        ttl: Option<String>,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Lift a ban.
    Unban { net: String },
    /// List the bans in force.
    Bans,
    /// The gate's services and members: health, drain state, counters.
    Backends,
}

pub async fn gate(
    verb: GateVerb,
    state: &Path,
    jail: Option<&str>,
    json: bool,
) -> anyhow::Result<i32> {
    if let GateVerb::Run { config, data } = verb {
        let cfg = citadel_gate::GateConfig::load(&config)?;
        let opts = citadel_gate::RunOptions {
            state_dir: data,
            config_path: Some(config),
        };
        citadel_gate::run(cfg, opts).await?;
        return Ok(0);
    }
    let admin = admin_address(state, jail)?;
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
    let (status, text) = http_request(admin, method, &path, body, Duration::from_secs(5))
        .await
        .map_err(|e| {
            anyhow::anyhow!("the gate's admin API at {admin}: {e}; is the gate jail running?")
        })?;
    if !(200..300).contains(&status) {
        bail!("the gate refused: {status} {}", text.trim());
    }
    if json || matches!(verb, GateVerb::Bans | GateVerb::Backends) {
        let pretty = serde_json::from_str::<serde_json::Value>(&text)
            .and_then(|v| serde_json::to_string_pretty(&v))
            .unwrap_or(text);
        println!("{pretty}");
    } else {
        match &verb {
            GateVerb::Ban { net, .. } => println!("banned {net}"),
            GateVerb::Unban { net } => println!("unbanned {net}"),
            _ => {}
        }
    }
    Ok(0)
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
