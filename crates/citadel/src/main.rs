//! `citadel`: one binary for the whole cluster — the operator's commands, and the programs
//! that run inside jails.

mod appctl;
mod dbctl;
mod gatectl;
mod ops;
mod roles;
mod serve;
mod up;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// The gate's benchmarks showed glibc's allocator at the top of the profile under load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "citadel",
    version,
    about = "Run a small fault-tolerant cluster from one file"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where a running `up` keeps its jails, logs and control socket.
#[derive(Args, Clone)]
pub struct StateArg {
    /// State directory of the cluster.
    #[arg(long, global = true, env = "CITADEL_STATE", default_value = ".citadel")]
    pub state: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Run every jail of a cluster on this machine, and keep them running.
    Up(up::UpArgs),
    /// Ask a running `citadel up` to read its cluster file again and apply it (also: SIGHUP).
    Reload {
        #[command(flatten)]
        state: StateArg,
        #[arg(long)]
        json: bool,
    },
    /// Ask a running `citadel up` to stop its jails and exit.
    Down {
        #[command(flatten)]
        state: StateArg,
    },
    /// Check a cluster file and print every problem in it.
    Check {
        /// The cluster file (default: the built-in cluster).
        file: Option<PathBuf>,
    },
    /// Write a commented cluster file to start from.
    Init {
        /// Directory to write citadel.toml into.
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// Overwrite an existing citadel.toml.
        #[arg(long)]
        force: bool,
    },
    /// The state of every jail, as a table.
    Status {
        #[command(flatten)]
        state: StateArg,
        #[arg(long)]
        json: bool,
    },
    /// Operate on jails: list, start, stop, restart, logs, exec, clone, archive, restore, destroy.
    Jail {
        #[command(subcommand)]
        verb: ops::JailVerb,
        #[command(flatten)]
        state: StateArg,
        /// Machine-readable output.
        #[arg(long, global = true)]
        json: bool,
    },
    /// The gate: run it (inside the gate jail), or manage a running one's bans.
    Gate {
        #[command(subcommand)]
        verb: gatectl::GateVerb,
        #[command(flatten)]
        state: StateArg,
        /// Which gate jail, when the cluster has several.
        #[arg(long, global = true)]
        jail: Option<String>,
        /// Machine-readable output.
        #[arg(long, global = true)]
        json: bool,
    },
    /// The app role (run inside an app jail), its API keys, and a load checker.
    App {
        #[command(subcommand)]
        verb: appctl::AppVerb,
        #[command(flatten)]
        state: StateArg,
        /// Machine-readable output.
        #[arg(long, global = true)]
        json: bool,
    },
    /// The replicated db: its members' state, online membership changes, and the member
    /// program itself (run inside a db jail).
    Db {
        #[command(subcommand)]
        verb: dbctl::DbVerb,
        #[command(flatten)]
        state: StateArg,
        /// Machine-readable output.
        #[arg(long, global = true)]
        json: bool,
    },
    /// A vote-only member of the db's Raft group (run inside a witness jail).
    Witness {
        #[command(subcommand)]
        verb: WitnessVerb,
    },
    /// Serve a directory over HTTP (what the built-in cluster's command jails run).
    Serve(serve::ServeArgs),
    /// The watchdog that kills every jail when `citadel up` dies (started by `up`).
    #[command(hide = true, name = "__reaper")]
    Reaper,
}

/// Roles log what they do; operator commands only what went wrong.
fn default_log_filter(command: &Command) -> &'static str {
    match command {
        Command::Gate {
            verb: gatectl::GateVerb::Run { .. },
            ..
        } => "info,hickory_server=warn",
        Command::Db {
            verb: dbctl::DbVerb::Run { .. },
            ..
        }
        | Command::Witness { .. } => "info,openraft=warn",
        Command::App {
            verb: appctl::AppVerb::Run { .. },
            ..
        } => "info",
        _ => "warn",
    }
}

#[derive(Subcommand)]
enum WitnessVerb {
    /// Run the witness (`citadel up` writes its config from the cluster file).
    Run {
        #[arg(long)]
        config: PathBuf,
    },
}

fn main() {
    let cli = Cli::parse();
    if let Command::Reaper = cli.command {
        citadel_jail::run_reaper();
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new(default_log_filter(&cli.command))
            }),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Up(args) => up::run(args).await,
            Command::Down { state } => ops::down(&state.state).await,
            Command::Reload { state, json } => ops::reload(&state.state, json).await,
            Command::Check { file } => ops::check(file.as_deref()),
            Command::Init { dir, force } => ops::init(&dir, force),
            Command::Status { state, json } => ops::status(&state.state, json).await,
            Command::Jail { verb, state, json } => ops::jail(verb, &state.state, json).await,
            Command::Serve(args) => serve::run(args).await,
            Command::App { verb, state, json } => appctl::app(verb, &state.state, json).await,
            Command::Db { verb, state, json } => dbctl::db(verb, &state.state, json).await,
            Command::Witness {
                verb: WitnessVerb::Run { config },
            } => {
                citadel_db::run(citadel_db::DbConfig::load(&config)?).await?;
                Ok(0)
            }
            Command::Gate {
                verb,
                state,
                jail,
                json,
            } => gatectl::gate(verb, &state.state, jail.as_deref(), json).await,
            Command::Reaper => unreachable!("handled before the runtime starts"),
        }
    });
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}
