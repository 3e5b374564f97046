//! `citadel agent`: the long-running service of one host (its jails of the cluster file), and
//! its installation as a systemd unit.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Subcommand;

use crate::ops::load_cluster;
use crate::output::done;
use crate::up::UpArgs;

/// The unit in the repository; `install` writes it with this binary's path.
pub const UNIT: &str = include_str!("../../../deploy/citadel-agent.service");
const UNIT_BINARY: &str = "/usr/local/bin/citadel";
const ENV_FILE: &str = "/etc/citadel/agent.env";

#[derive(Subcommand)]
pub enum AgentVerb {
    /// Run this host's jails of the cluster file and keep them running (what systemd starts).
    #[command(after_help = "Example:
  citadel agent run --host server-1 --file /etc/citadel/cluster.toml --state /var/lib/citadel")]
    Run {
        /// This machine's name in the cluster file (`[[host]] name`).
        #[arg(long)]
        host: String,
        #[command(flatten)]
        up: UpArgs,
        /// Also serve the operator's machine here, over mutual TLS (needs --bundle).
        #[arg(long, requires = "bundle")]
        listen: Option<std::net::SocketAddr>,
        /// This host's bundle from `citadel host add` (CA, certificate, key).
        #[arg(long)]
        bundle: Option<PathBuf>,
    },
    /// The status of one host's agent, from the operator's machine (mutual TLS).
    #[command(after_help = "Example:
  citadel agent status --host server-1 --addr 192.168.1.12:7443 --dir ./mycluster")]
    Status {
        /// The host's name (its certificate must say so).
        #[arg(long)]
        host: String,
        /// Where its agent listens (`agent run --listen`).
        #[arg(long)]
        addr: std::net::SocketAddr,
        /// Where `citadel init` wrote `pki/` (the CA and your certificate).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Install the agent as a systemd service: the unit, its environment file, and start it.
    #[command(after_help = "Examples:
  citadel agent install --host server-1 --file /etc/citadel/cluster.toml --listen 192.168.1.12:7443 --bundle server-1.bundle
  citadel agent install --host server-1 --file ./c.toml --unit-dir /tmp/u --env-file /tmp/u/agent.env --no-start")]
    Install {
        /// This machine's name in the cluster file.
        #[arg(long)]
        host: String,
        /// The cluster file the agent runs (checked now: an invalid file installs nothing).
        #[arg(long)]
        file: PathBuf,
        /// Where the agent keeps its jails.
        #[arg(long, default_value = "/var/lib/citadel")]
        state: PathBuf,
        /// Where the unit goes.
        #[arg(long, default_value = "/etc/systemd/system")]
        unit_dir: PathBuf,
        /// Where the unit's environment (host, file, state) goes.
        #[arg(long, default_value = ENV_FILE)]
        env_file: PathBuf,
        /// Write the files only; do not run systemctl.
        #[arg(long)]
        no_start: bool,
        /// Where the agent serves `citadel plan|apply` and the other agents (mutual TLS;
        /// needs --bundle).
        #[arg(long, requires = "bundle")]
        listen: Option<std::net::SocketAddr>,
        /// This host's bundle from `citadel host add` (checked now: it must be this host's).
        #[arg(long, requires = "listen")]
        bundle: Option<PathBuf>,
    },
}

pub async fn agent(verb: AgentVerb, json: bool) -> anyhow::Result<i32> {
    match verb {
        AgentVerb::Run {
            host,
            up,
            listen,
            bundle,
        } => {
            let (tls, peers) = match (listen, bundle) {
                (Some(addr), Some(bundle)) => {
                    let b = read_bundle(&bundle, &host)?;
                    let own = b.issued();
                    (
                        Some(crate::up::TlsListen {
                            addr,
                            config: citadel_pki::server_config(&b.ca, &own)?,
                        }),
                        Some(citadel_pki::client_config(&b.ca, &own)?),
                    )
                }
                _ => (None, None),
            };
            let agent = crate::up::AgentMode { host, tls, peers };
            crate::up::run_jails(up, json, Some(agent)).await
        }
        AgentVerb::Status { host, addr, dir } => {
            let config = operator_config(&dir)?;
            let report: citadel_agent::protocol::StatusReport = citadel_agent::control::call_tls(
                addr,
                &host,
                config,
                &citadel_agent::protocol::Request::Status,
            )
            .await?;
            if json {
                crate::output::json(&report)?;
            } else {
                crate::ops::print_status(&report);
            }
            Ok(0)
        }
        AgentVerb::Install {
            host,
            file,
            state,
            unit_dir,
            env_file,
            no_start,
            listen,
            bundle,
        } => {
            let tls = match (listen, bundle) {
                (Some(addr), Some(bundle)) => {
                    read_bundle(&bundle, &host)?;
                    let bundle = std::path::absolute(&bundle)?;
                    Some((addr, bundle))
                }
                _ => None,
            };
            let paths = InstallPaths {
                state: &state,
                unit_dir: &unit_dir,
                env_file: &env_file,
            };
            install(&host, &file, paths, tls, no_start, json)
        }
    }
}

/// The agent's bundle, which must be for this host.
fn read_bundle(bundle: &Path, host: &str) -> anyhow::Result<citadel_pki::Bundle> {
    let text = std::fs::read_to_string(bundle)
        .with_context(|| format!("cannot read the bundle {}", bundle.display()))?;
    let b =
        citadel_pki::Bundle::from_toml(&text).with_context(|| format!("{}", bundle.display()))?;
    if b.host != host {
        bail!(
            "{} is the bundle of host `{}`, not `{host}`",
            bundle.display(),
            b.host
        );
    }
    Ok(b)
}

/// The operator's TLS client config from `DIR/pki`.
pub fn operator_config(
    dir: &Path,
) -> anyhow::Result<std::sync::Arc<tokio_rustls::rustls::ClientConfig>> {
    let read = |f: &str| {
        let p = dir.join("pki").join(f);
        std::fs::read_to_string(&p)
            .with_context(|| format!("cannot read {} (made by `citadel init`)", p.display()))
    };
    let own = citadel_pki::Issued {
        cert_pem: read("operator.pem")?,
        key_pem: read("operator.key")?,
    };
    Ok(citadel_pki::client_config(&read("ca.pem")?, &own)?)
}

/// systemd reads `KEY=value` lines; a value with a space or a quote would need quoting rules
/// that differ from the shell's, so such paths are refused rather than half-escaped.
fn env_value(what: &str, value: &str) -> anyhow::Result<String> {
    if value.is_empty()
        || value
            .chars()
            .any(|c| c.is_whitespace() || "\"'\\$".contains(c))
    {
        bail!("{what} {value:?}: use a path without spaces, quotes, `\\` or `$`");
    }
    Ok(value.to_string())
}

/// Where `install` puts things.
struct InstallPaths<'a> {
    state: &'a Path,
    unit_dir: &'a Path,
    env_file: &'a Path,
}

fn install(
    host: &str,
    file: &Path,
    paths: InstallPaths<'_>,
    tls: Option<(std::net::SocketAddr, PathBuf)>,
    no_start: bool,
    json: bool,
) -> anyhow::Result<i32> {
    let InstallPaths {
        state,
        unit_dir,
        env_file,
    } = paths;
    let file =
        std::path::absolute(file).with_context(|| format!("cannot resolve {}", file.display()))?;
    let (cluster, origin) = load_cluster(Some(&file))?;
    if cluster.host(host).is_none() {
        let hosts: Vec<&str> = cluster.hosts.iter().map(|h| h.name.as_str()).collect();
        bail!(
            "host `{host}` is not in {origin} (its hosts: {})",
            hosts.join(", ")
        );
    }
    let exe = std::env::current_exe().context("cannot find the citadel binary itself")?;
    let exe = env_value("the citadel binary", &exe.to_string_lossy())?;
    let tls = match &tls {
        Some((addr, bundle)) => format!(
            "CITADEL_TLS=--listen {addr} --bundle {}\n",
            env_value("the bundle", &bundle.to_string_lossy())?
        ),
        None => "CITADEL_TLS=\n".to_string(),
    };
    let env = format!(
        "# Written by `citadel agent install`; read by citadel-agent.service.\nCITADEL_HOST={}\nCITADEL_FILE={}\nCITADEL_STATE={}\n{tls}",
        env_value("the host", host)?,
        env_value("the cluster file", &file.to_string_lossy())?,
        env_value(
            "the state directory",
            &std::path::absolute(state)?.to_string_lossy()
        )?,
    );
    let env_path = env_value("the environment file", &env_file.to_string_lossy())?;
    let unit = UNIT.replace(UNIT_BINARY, &exe).replace(
        &format!("EnvironmentFile={ENV_FILE}"),
        &format!("EnvironmentFile={env_path}"),
    );
    let write = |path: &Path, text: &str| -> anyhow::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
    };
    let unit_path = unit_dir.join("citadel-agent.service");
    write(env_file, &env)?;
    write(&unit_path, &unit)?;
    // systemd is running when this directory exists (sd_booted(3)).
    let systemd = Path::new("/run/systemd/system").is_dir();
    let started = if no_start || !systemd {
        false
    } else {
        for args in [
            &["daemon-reload"][..],
            &["enable", "--now", "citadel-agent.service"][..],
        ] {
            let st = std::process::Command::new("systemctl")
                .args(args)
                .status()
                .context("cannot run systemctl")?;
            if !st.success() {
                bail!(
                    "`systemctl {}` failed ({st}); the unit is at {}",
                    args.join(" "),
                    unit_path.display()
                );
            }
        }
        true
    };
    let next = if started {
        "started; `systemctl status citadel-agent` shows it".to_string()
    } else if no_start {
        "not started (--no-start): systemctl daemon-reload && systemctl enable --now citadel-agent"
            .to_string()
    } else {
        "systemd is not running here; start it with: citadel agent run --host ... (see the unit)"
            .to_string()
    };
    done(
        json,
        format!(
            "installed {} and {} for host {host}: {next}",
            unit_path.display(),
            env_file.display()
        ),
        serde_json::json!({
            "unit": unit_path,
            "env_file": env_file,
            "host": host,
            "file": file,
            "started": started,
        }),
    );
    Ok(0)
}
