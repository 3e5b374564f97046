//! `citadel-gate --config FILE --state DIR`: runs the gate role alone.

use std::path::PathBuf;

use anyhow::Context;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;
use clap::Parser;

#[derive(Parser)]
#[command(
    name = "citadel-gate",
    about = "Citadel gate: firewall, balancer, internal DNS"
)]
struct Args {
    /// The gate's TOML config (re-read on SIGHUP and POST /reload).
    #[arg(long)]
    config: PathBuf,
    /// State directory (persisted bans).
    #[arg(long, default_value = "./.citadel/gate")]
    state: PathBuf,
    /// Worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,hickory_server=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let config = citadel_gate::GateConfig::load(&args.config)
        .with_context(|| format!("loading {}", args.config.display()))?;
    citadel_gate::run_blocking(
        config,
        citadel_gate::RunOptions {
            state_dir: args.state,
            config_path: Some(args.config),
        },
        args.threads,
    )?;
    Ok(())
}
