//! `citadel-db --config FILE`: runs one db or witness node.
//! `citadel-db status --config FILE`: shows every member's Raft state.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// As `citadel` (which runs the db in a db jail): mimalloc, not glibc's allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(about = "Citadel replicated database node (data or witness)")]
struct Args {
    /// TOML node configuration.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the node (the default).
    Run,
    /// Show members, roles, leader, term, log/applied/snapshot/purged index and disk use.
    Status,
    /// Make a configured member a voter: it joins as a learner, catches up, then votes.
    Add {
        /// Member id (from the configuration).
        #[arg(long)]
        member: u64,
    },
    /// Remove a member from the voters.
    Remove {
        #[arg(long)]
        member: u64,
    },
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let path = args.config.context("--config FILE is required")?;
    let cfg = citadel_db::DbConfig::load(&path).context("loading config")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match args.command.unwrap_or(Cmd::Run) {
        Cmd::Run => rt.block_on(citadel_db::run(cfg)).context("db node")?,
        Cmd::Add { member } => println!(
            "{}",
            rt.block_on(citadel_db::change_voter(&cfg, member, true))?
        ),
        Cmd::Remove { member } => println!(
            "{}",
            rt.block_on(citadel_db::change_voter(&cfg, member, false))?
        ),
        Cmd::Status => {
            let rows = rt.block_on(citadel_db::cluster_status(&cfg));
            print!("{}", citadel_db::GroupStatus::from_rows(&rows));
        }
    }
    Ok(())
}
