//! Standalone binary of the store role (crate tests); `citadel store …` is what jails run.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Citadel store role: S3 over checksummed blocks on both servers")]
struct Cli {
    #[arg(long)]
    config: PathBuf,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve S3 and the peer block service (default).
    Serve,
    /// Run a spare block holder; `--config` is then a spare's (`listen`, `data_dir`).
    Spare,
    /// Every server's catalogue record (JSON, one object per server).
    Status,
    /// Scrub this server's disk now (through its admin address) and print the report.
    Scrub,
    /// Manage access keys.
    Key {
        #[command(subcommand)]
        cmd: KeyCmd,
    },
}

#[derive(Subcommand)]
enum KeyCmd {
    Create { name: String },
    List,
    Revoke { access_key: String },
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
    if let Some(Cmd::Spare) = cli.cmd {
        let cfg = citadel_store::SpareConfig::from_file(&cli.config)?;
        citadel_store::run_spare(cfg).await?;
        return Ok(());
    }
    let cfg = citadel_store::StoreConfig::from_file(&cli.config)?;
    match cli.cmd.unwrap_or(Cmd::Serve) {
        Cmd::Serve => citadel_store::run(cfg).await?,
        Cmd::Spare => unreachable!("handled above"),
        Cmd::Status => {
            let db = citadel_store::connect_db(&cfg)?;
            let all = citadel_store::catalogue::read_all(&db).await?;
            println!("{}", serde_json::to_string(&all)?);
        }
        Cmd::Scrub => {
            let admin = cfg
                .admin_listen
                .ok_or_else(|| anyhow::anyhow!("the config sets no admin_listen"))?;
            let r =
                citadel_store::admin::scrub(admin, std::time::Duration::from_secs(3600)).await?;
            println!("{}", serde_json::to_string(&r)?);
        }
        Cmd::Key { cmd } => {
            let db = citadel_store::connect_db(&cfg)?;
            match cmd {
                KeyCmd::Create { name } => {
                    let (id, secret) = citadel_store::keys::create(&db, &name).await?;
                    println!("{id} {secret}");
                }
                KeyCmd::List => {
                    for k in citadel_store::keys::list(&db).await? {
                        println!("{} {} {}", k.access_key, k.name, k.created);
                    }
                }
                KeyCmd::Revoke { access_key } => {
                    if !citadel_store::keys::revoke(&db, &access_key).await? {
                        anyhow::bail!("no access key {access_key}");
                    }
                }
            }
        }
    }
    Ok(())
}
