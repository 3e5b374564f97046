//! `citadel`: one binary for the whole cluster — the operator's commands, and the programs
//! that run inside jails.

mod agentctl;
mod appctl;
mod dbctl;
mod deploy;
mod gatectl;
mod ops;
mod output;
mod pkictl;
mod remote;
mod roles;
mod serve;
mod storectl;
mod up;

use std::path::PathBuf;

use clap::{Args, CommandFactory, Parser, Subcommand};

/// The gate's benchmarks showed glibc's allocator at the top of the profile under load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "citadel",
    version,
    about = "Run a small fault-tolerant cluster (gate, app and db jails) from one file",
    long_about = "Run a small fault-tolerant cluster from one file: a gate (firewall, DNS, load \
balancer) in front of servers holding app and db jails, the db replicated by Raft so that \
losing any one box loses neither the service nor an acknowledged write.",
    arg_required_else_help = true,
    after_help = "Examples:
  citadel up                      run the built-in cluster on this machine
  citadel status                  every jail, as a table (add --json for JSON)
  citadel init && citadel up -f citadel.toml
  citadel completions bash > /etc/bash_completion.d/citadel"
)]
struct Cli {
    /// Print machine-readable JSON instead of a table or a sentence.
    #[arg(long, global = true)]
    json: bool,
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
    #[command(after_help = "Examples:
  citadel up                          the built-in cluster (the source diagram)
  citadel up --file citadel.toml --state /var/lib/citadel")]
    Up(up::UpArgs),
    /// The agent of one host: runs that host's jails (systemd service), and installs itself.
    #[command(after_help = "Examples:
  citadel agent run --host server-1 --file /etc/citadel/cluster.toml --state /var/lib/citadel
  citadel agent install --host server-1 --file /etc/citadel/cluster.toml")]
    Agent {
        #[command(subcommand)]
        verb: agentctl::AgentVerb,
    },
    /// The cluster's hosts: issue one its certificate.
    #[command(after_help = "Example:\n  citadel host add server-1 192.168.1.12")]
    Host {
        #[command(subcommand)]
        verb: pkictl::HostVerb,
    },
    /// Show, per host, what applying a cluster file would change (asks every host's agent).
    #[command(after_help = "Example:\n  citadel plan cluster.toml --dir ./mycluster")]
    Plan(deploy::DeployArgs),
    /// Apply a cluster file to every host: each stores it as the next generation and
    /// converges; balanced services and db members restart one at a time.
    #[command(after_help = "Examples:
  citadel apply cluster.toml --dir ./mycluster
  citadel apply cluster.toml --timeout 60s      wait longer for each restarted jail")]
    Apply {
        #[command(flatten)]
        args: deploy::DeployArgs,
        /// How long each restarted jail may take to be healthy and back in rotation.
        #[arg(long, default_value = "30s", value_parser = deploy::parse_timeout)]
        timeout: std::time::Duration,
    },
    /// Ask a running `citadel up` to read its cluster file again and apply it (also: SIGHUP).
    #[command(after_help = "Example:\n  citadel reload")]
    Reload {
        #[command(flatten)]
        state: StateArg,
    },
    /// Ask a running `citadel up` to stop its jails and exit.
    #[command(after_help = "Example:\n  citadel down")]
    Down {
        #[command(flatten)]
        state: StateArg,
    },
    /// Check a cluster file and print every problem in it.
    #[command(
        after_help = "Examples:\n  citadel check citadel.toml\n  citadel check            the built-in cluster"
    )]
    Check {
        /// The cluster file (default: the built-in cluster).
        file: Option<PathBuf>,
    },
    /// Write a commented cluster file to start from (every key and its default).
    #[command(
        after_help = "Example:\n  citadel init ./mycluster && citadel up --file ./mycluster/citadel.toml"
    )]
    Init {
        /// Directory to write citadel.toml into.
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// Overwrite an existing citadel.toml.
        #[arg(long)]
        force: bool,
    },
    /// The state of every jail, as a table (with --file/--dir: every host's, through the
    /// agents, with each host's generation: BEHIND or UNREACHABLE; exit code 3 when a host
    /// is unreachable).
    #[command(after_help = "Examples:
  citadel status
  citadel status --json
  citadel status --file ./mycluster/citadel.toml --dir ./mycluster")]
    Status {
        #[command(flatten)]
        target: remote::Target,
    },
    /// Operate on jails: list, start, stop, restart, logs, exec, clone, archive, restore, destroy.
    #[command(after_help = "Examples:
  citadel jail list
  citadel jail restart app-1
  citadel jail logs -f db-1
  citadel jail exec app-1 -- env
  citadel jail restart app-1 --dir ./mycluster     through the agent of app-1's host")]
    Jail {
        #[command(subcommand)]
        verb: ops::JailVerb,
        #[command(flatten)]
        target: remote::Target,
    },
    /// The gate: its bans and backends (and the gate role itself, inside the gate jail).
    #[command(after_help = "Examples:
  citadel gate backends
  citadel gate ban 203.0.113.7 --ttl 1h --reason scanner
  citadel gate bans
  citadel gate backends --dir ./mycluster      through the agent of the gate's host")]
    Gate {
        #[command(subcommand)]
        verb: gatectl::GateVerb,
        #[command(flatten)]
        target: remote::Target,
        /// Which gate jail, when the cluster has several.
        #[arg(long, global = true)]
        jail: Option<String>,
    },
    /// The app role: API keys and a load checker (and the role itself, inside an app jail).
    #[command(after_help = "Examples:
  citadel app key create billing
  citadel app key list
  citadel app key create billing --dir ./mycluster      through an app host's agent
  citadel app load --seconds 30 --key \"$TOKEN\"")]
    App {
        #[command(subcommand)]
        verb: appctl::AppVerb,
        #[command(flatten)]
        target: remote::Target,
    },
    /// The S3 small-file store: access keys (and the role itself, inside a store jail).
    #[command(after_help = "Examples:
  citadel store key create backups
  citadel store key list")]
    Store {
        #[command(subcommand)]
        verb: storectl::StoreVerb,
        #[command(flatten)]
        state: StateArg,
    },
    /// The replicated db: its members' state and online membership changes (and the member
    /// program itself, inside a db jail).
    #[command(after_help = "Examples:
  citadel db status
  citadel db status --json | jq .leader
  citadel db status --dir ./mycluster      through the agent of a host with a db member
  citadel db remove db-2 && citadel db add db-2")]
    Db {
        #[command(subcommand)]
        verb: dbctl::DbVerb,
        #[command(flatten)]
        target: remote::Target,
    },
    /// A vote-only member of the db's Raft group (run inside a witness jail).
    #[command(after_help = "Example (what `citadel up` runs in the witness jail):
  citadel witness run --config .citadel/jails/witness/db.toml")]
    Witness {
        #[command(subcommand)]
        verb: WitnessVerb,
    },
    /// Serve a directory over HTTP (for command jails that need a static site).
    #[command(after_help = "Example:\n  citadel serve --bind 127.0.0.1:8000 --dir ./public")]
    Serve(serve::ServeArgs),
    /// Print a shell completion script for bash, zsh, fish, elvish or powershell.
    #[command(after_help = "Examples:
  citadel completions bash > ~/.local/share/bash-completion/completions/citadel
  citadel completions zsh > \"${fpath[1]}/_citadel\"
  citadel completions fish > ~/.config/fish/completions/citadel.fish")]
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff), or write one page per subcommand into a directory.
    #[command(after_help = "Examples:
  citadel man | man -l -
  citadel man --dir /usr/local/share/man/man1")]
    Man {
        /// Write citadel.1 and citadel-<subcommand>.1 here instead of printing citadel.1.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// The watchdog that kills every jail when `citadel up` dies (started by `up`).
    #[command(hide = true, name = "__reaper")]
    Reaper,
    /// Runs a netns jail's program inside its namespaces (started by the agent, which has
    /// unshared them).
    #[command(hide = true, name = "__jail-init")]
    JailInit {
        config: String,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
}

/// The log filter of a command that runs a role (what a jail runs), or None for the
/// operator's verbs.
fn role_log_filter(command: &Command) -> Option<&'static str> {
    match command {
        Command::Gate {
            verb: gatectl::GateVerb::Run { .. },
            ..
        } => Some("info,hickory_server=warn"),
        Command::Db {
            verb: dbctl::DbVerb::Run { .. },
            ..
        }
        | Command::Witness { .. } => Some("info,openraft=warn"),
        Command::App {
            verb: appctl::AppVerb::Run { .. },
            ..
        }
        | Command::Store {
            verb: storectl::StoreVerb::Run { .. } | storectl::StoreVerb::Spare { .. },
            ..
        } => Some("info"),
        _ => None,
    }
}

/// Roles log what they do; operator commands only what went wrong.
fn default_log_filter(command: &Command) -> &'static str {
    role_log_filter(command).unwrap_or("warn")
}

/// Programs that serve (roles, `up`, `serve`) keep Rust's SIGPIPE-ignored default, so a
/// peer that hangs up is an error value; the operator's verbs die quietly like any Unix tool
/// when their output pipe closes (`citadel status | head -1`).
fn serves(command: &Command) -> bool {
    matches!(
        command,
        Command::Up(_)
            | Command::Serve(_)
            | Command::Reaper
            | Command::JailInit { .. }
            | Command::Agent {
                verb: agentctl::AgentVerb::Run { .. },
            }
    ) || role_log_filter(command).is_some()
}

#[derive(Subcommand)]
enum WitnessVerb {
    /// Run the witness (`citadel up` writes its config from the cluster file).
    #[command(after_help = "Example (what `citadel up` runs in the witness jail):
  citadel witness run --config .citadel/jails/witness/db.toml")]
    Run {
        #[arg(long)]
        config: PathBuf,
    },
}

/// `citadel man`: the top page on stdout, or every page into a directory.
fn man(dir: Option<PathBuf>) -> anyhow::Result<i32> {
    use anyhow::Context;
    let command = Cli::command();
    match dir {
        None => clap_mangen::Man::new(command).render(&mut std::io::stdout().lock())?,
        Some(dir) => {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            clap_mangen::generate_to(command, &dir)
                .with_context(|| format!("cannot write man pages into {}", dir.display()))?;
            println!("wrote the man pages into {}", dir.display());
        }
    }
    Ok(0)
}

fn main() {
    let cli = Cli::parse();
    if let Command::Reaper = cli.command {
        citadel_jail::run_reaper();
    }
    // Before anything starts a thread: the helper forks the jail's init.
    if let Command::JailInit { config, command } = &cli.command {
        citadel_jail::netns::run_jail_init(config, &command[0], &command[1..]);
    }
    if !serves(&cli.command) {
        use nix::sys::signal::{SigHandler, Signal, signal};
        // SAFETY: set before any other thread exists; SIG_DFL installs no handler code.
        let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
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
    // The gate builds its own runtime: its `threads` setting decides which scheduler.
    if let Command::Gate {
        verb: gatectl::GateVerb::Run { config, data },
        ..
    } = &cli.command
    {
        match gatectl::run_gate(config, data) {
            Ok(()) => std::process::exit(0),
            Err(e) => {
                eprintln!("error: {e:#}");
                std::process::exit(1);
            }
        }
    }
    // An agent runs for months next to its jails: two workers (its supervisors and TLS
    // connections are mostly idle) keep its memory small whatever the box's core count.
    let runtime = match &cli.command {
        Command::Agent {
            verb: agentctl::AgentVerb::Run { .. },
        } => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build(),
        _ => tokio::runtime::Runtime::new(),
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let json = cli.json;
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Up(args) => up::run(args, json).await,
            Command::Agent { verb } => agentctl::agent(verb, json).await,
            Command::Plan(args) => deploy::plan(args, json).await,
            Command::Apply { args, timeout } => deploy::apply(args, json, timeout).await,
            Command::Host { verb } => pkictl::host(verb, json),
            Command::Down { state } => ops::down(&state.state, json).await,
            Command::Reload { state } => ops::reload(&state.state, json).await,
            Command::Check { file } => ops::check(file.as_deref(), json),
            Command::Init { dir, force } => ops::init(&dir, force, json),
            Command::Status { target } => ops::status(&target, json).await,
            Command::Jail { verb, target } => ops::jail(verb, &target, json).await,
            Command::Serve(args) => serve::run(args).await,
            Command::App { verb, target } => appctl::app(verb, &target, json).await,
            Command::Store { verb, state } => storectl::store(verb, &state.state, json).await,
            Command::Db { verb, target } => dbctl::db(verb, &target, json).await,
            Command::Witness {
                verb: WitnessVerb::Run { config },
            } => {
                citadel_db::run(citadel_db::DbConfig::load(&config)?).await?;
                Ok(0)
            }
            Command::Gate { verb, target, jail } => {
                gatectl::gate(verb, &target, jail.as_deref(), json).await
            }
            Command::Completions { shell } => {
                clap_complete::generate(
                    shell,
                    &mut Cli::command(),
                    "citadel",
                    &mut std::io::stdout(),
                );
                Ok(0)
            }
            Command::Man { dir } => man(dir),
            Command::Reaper | Command::JailInit { .. } => {
                unreachable!("handled before the runtime starts")
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every visible subcommand, at every depth, says what it does and shows an example.
    #[test]
    fn every_subcommand_has_a_summary_and_an_example() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
                let path = format!("{path} {}", sub.get_name());
                if sub.get_about().is_none() {
                    missing.push(format!("{path}: no one-line summary"));
                }
                let example = sub
                    .get_after_help()
                    .is_some_and(|h| h.to_string().contains("citadel "));
                if !example {
                    missing.push(format!("{path}: no example"));
                }
                walk(sub, &path, missing);
            }
        }
        let cmd = Cli::command();
        cmd.clone().debug_assert();
        let mut missing = Vec::new();
        walk(&cmd, "citadel", &mut missing);
        assert!(missing.is_empty(), "{}", missing.join("\n"));
    }
}
