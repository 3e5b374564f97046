//! `citadel-app`: runs one app node, or manages API keys. The `citadel` binary wires the same
//! library calls as `citadel app` and `citadel app key …`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use citadel_app::{AppConfig, DnsConfig};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "citadel-app",
    about = "Citadel app node: the REST document API"
)]
struct Cli {
    /// TOML configuration file; flags override it.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// API listener (default 127.0.0.1:8000).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Admin listener for /metrics (default 127.0.0.1:9100).
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
    /// Do not open the admin listener.
    #[arg(long)]
    no_admin: bool,
    /// A db member, host:port (repeat for each member).
    #[arg(long = "db")]
    db: Vec<String>,
    /// Find the db by this DNS name (e.g. db.citadel.internal) ...
    #[arg(long)]
    db_name: Option<String>,
    /// ... through this DNS server (the gate's DNS, e.g. 127.10.0.1:5353).
    #[arg(long, requires = "db_name")]
    dns_server: Option<SocketAddr>,
    /// Port of the db on the resolved addresses.
    #[arg(long, default_value_t = 6379)]
    db_port: u16,
    /// db password.
    #[arg(long, env = "CITADEL_DB_PASSWORD", hide_env_values = true)]
    db_password: Option<String>,
    /// Serve /v1 without API keys.
    #[arg(long)]
    no_auth: bool,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the app node (the default).
    Serve,
    /// Manage API keys.
    Key {
        #[command(subcommand)]
        cmd: KeyCmd,
    },
    /// Mixed read/write load with a per-second error timeline; afterwards checks that every
    /// acknowledged write is there (exit status 1 if one is lost).
    Load {
        /// Base URL of an app node or the gate.
        #[arg(long, default_value = "http://127.0.0.1:8000")]
        url: String,
        /// API key token.
        #[arg(long, env = "CITADEL_API_KEY", hide_env_values = true)]
        key: Option<String>,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(0..=100))]
        write_percent: u32,
        #[arg(long, default_value = "loadcheck")]
        collection: String,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum KeyCmd {
    /// Create a key for a client application; prints its token once.
    Create { name: String },
    /// List keys.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key by id.
    Revoke { id: String },
}

fn config(cli: &Cli) -> anyhow::Result<AppConfig> {
    let mut cfg = match &cli.config {
        Some(p) => AppConfig::from_file(p)?,
        None => AppConfig::default(),
    };
    if let Some(l) = cli.listen {
        cfg.listen = l;
    }
    if let Some(a) = cli.admin_listen {
        cfg.admin_listen = Some(a);
    }
    if cli.no_admin {
        cfg.admin_listen = None;
    }
    if !cli.db.is_empty() {
        cfg.db.addrs = cli.db.clone();
        cfg.db.dns = None;
    }
    if let (Some(name), Some(server)) = (&cli.db_name, cli.dns_server) {
        cfg.db.dns = Some(DnsConfig {
            name: name.clone(),
            server,
            port: cli.db_port,
        });
        cfg.db.addrs.clear();
    }
    if let Some(pw) = &cli.db_password {
        cfg.db.password = Some(pw.clone());
    }
    if cli.no_auth {
        cfg.auth.required = false;
    }
    cfg.validate()?;
    Ok(cfg)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if let Some(Cmd::Load {
        url,
        key,
        seconds,
        concurrency,
        write_percent,
        collection,
        json,
    }) = &cli.cmd
    {
        let opts = citadel_app::load::LoadOptions {
            base: url.trim_end_matches('/').to_string(),
            token: key.clone(),
            collection: collection.clone(),
            duration: std::time::Duration::from_secs(*seconds),
            concurrency: *concurrency,
            write_percent: *write_percent,
            ..Default::default()
        };
        let report = citadel_app::load::run(opts).await?;
        if *json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print!("{}", report.timeline());
        }
        if !report.lost.is_empty() {
            anyhow::bail!(
                "{} acknowledged writes lost: {:?}",
                report.lost.len(),
                report.lost
            );
        }
        return Ok(());
    }
    let cfg = config(&cli)?;
    match &cli.cmd {
        None | Some(Cmd::Serve) => citadel_app::run(cfg).await,
        Some(Cmd::Load { .. }) => Ok(()), // handled above
        Some(Cmd::Key { cmd }) => {
            let db = citadel_app::connect_db(&cfg)?;
            match cmd {
                KeyCmd::Create { name } => {
                    let (key, token) = citadel_app::keys::create(&db, name)
                        .await
                        .context("creating the key")?;
                    println!("id:    {}\nname:  {}\ntoken: {token}", key.id, key.name);
                }
                KeyCmd::List { json } => {
                    let keys = citadel_app::keys::list(&db).await.context("listing keys")?;
                    if *json {
                        println!("{}", serde_json::to_string_pretty(&keys)?);
                    } else {
                        for k in keys {
                            let state = if k.revoked.is_some() {
                                "revoked"
                            } else {
                                "valid"
                            };
                            println!("{}\t{}\t{}\t{}", k.id, state, k.created, k.name);
                        }
                    }
                }
                KeyCmd::Revoke { id } => {
                    if !citadel_app::keys::revoke(&db, id)
                        .await
                        .context("revoking")?
                    {
                        anyhow::bail!("no key with id {id}");
                    }
                    println!("revoked {id}");
                }
            }
            Ok(())
        }
    }
}
