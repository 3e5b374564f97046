//! The operator's commands: check, init, status, down, and the jail verbs.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::output;
use anyhow::{Context, bail};
use citadel_agent::ReloadReport;
use citadel_agent::control::Chunk;
use citadel_agent::control::call;
use citadel_agent::protocol::{Created, Identity, JailReport, Request, StatusReport};

use crate::remote::{At, Target, Where};
use citadel_jail::{Health, JailPaths, follow_log, tail_log};
use citadel_spec::units::format_duration;
use citadel_spec::{BUILTIN, BUILTIN_ORIGIN, Backend, Capabilities, Cluster, Role};
use clap::Subcommand;

/// What this build of citadel can run. Roles get their built-in programs as they land.
pub fn capabilities() -> Capabilities {
    Capabilities {
        sections: vec![
            ("gate", crate::roles::gate::check),
            ("db", crate::roles::db::check),
            ("app", crate::roles::app::check),
            ("store", crate::roles::store::check),
        ],
        builtin_roles: vec![Role::Gate, Role::Db, Role::Witness, Role::App, Role::Store],
        backends: vec![Backend::Process, Backend::Netns],
    }
}

/// Reads and checks a cluster file (or the built-in one), printing its warnings; on any error,
/// prints them all and fails.
pub fn load_cluster(file: Option<&Path>) -> anyhow::Result<(Cluster, String)> {
    let (source, origin) = match file {
        Some(path) => (
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read cluster file {}", path.display()))?,
            path.display().to_string(),
        ),
        None => (BUILTIN.to_string(), BUILTIN_ORIGIN.to_string()),
    };
    parse_cluster(&source, origin)
}

/// Checks a cluster file's text, printing its warnings; on any error, prints them all and fails.
pub fn parse_cluster(source: &str, origin: String) -> anyhow::Result<(Cluster, String)> {
    match citadel_spec::parse(source, &origin, &capabilities()) {
        Ok((cluster, warnings)) => {
            if !warnings.diagnostics.is_empty() {
                eprint!("{warnings}");
            }
            Ok((cluster, origin))
        }
        Err(report) => {
            eprint!("{report}");
            bail!(
                "{origin} is not a valid cluster file ({} error(s))",
                report.errors().count()
            )
        }
    }
}

pub fn check(file: Option<&Path>, json: bool) -> anyhow::Result<i32> {
    let (cluster, origin) = load_cluster(file)?;
    output::done(
        json,
        format_args!(
            "{origin}: ok — cluster `{}` (zone {}), {} segment(s), {} host(s), {} jail(s)",
            cluster.name,
            cluster.zone,
            cluster.segments.len(),
            cluster.hosts.len(),
            cluster.jails.len()
        ),
        serde_json::json!({
            "file": origin, "ok": true, "cluster": cluster.name, "zone": cluster.zone,
            "segments": cluster.segments.len(), "hosts": cluster.hosts.len(),
            "jails": cluster.jails.len(),
        }),
    );
    Ok(0)
}

pub fn init(dir: &Path, force: bool, json: bool) -> anyhow::Result<i32> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join("citadel.toml");
    if path.exists() && !force {
        bail!(
            "{} already exists; pass --force to overwrite it",
            path.display()
        );
    }
    std::fs::write(&path, BUILTIN).with_context(|| format!("cannot write {}", path.display()))?;
    let (cluster, _) = load_cluster(Some(&path))?;
    let pki = crate::pkictl::init_pki(dir, &cluster.name)?;
    let pki_note = if pki.is_empty() {
        format!("; kept the cluster CA in {}", dir.join("pki").display())
    } else {
        format!(
            "; made the cluster CA and your certificate in {} (keep ca.key safe)",
            dir.join("pki").display()
        )
    };
    output::done(
        json,
        format_args!(
            "wrote {}; run it with `citadel up --file {}`{pki_note}",
            path.display(),
            path.display()
        ),
        serde_json::json!({"wrote": path, "pki": pki}),
    );
    Ok(0)
}

pub async fn down(state: &Path, json: bool) -> anyhow::Result<i32> {
    call::<()>(state, &Request::Shutdown).await?;
    output::done(
        json,
        "asked citadel up to stop every jail",
        serde_json::json!({"done": "down"}),
    );
    Ok(0)
}

pub async fn reload(state: &Path, json: bool) -> anyhow::Result<i32> {
    let report: ReloadReport = call(state, &Request::Reload).await?;
    if json {
        output::json(&report)?;
        return Ok(0);
    }
    let list = |v: &[String]| {
        if v.is_empty() {
            "none".to_string()
        } else {
            v.join(", ")
        }
    };
    println!(
        "reloaded: added {}; removed {}; restarted {}; told to re-read config {}",
        list(&report.added),
        list(&report.removed),
        list(&report.restarted),
        list(&report.reloaded)
    );
    Ok(0)
}

pub async fn status(target: &Target, json: bool) -> anyhow::Result<i32> {
    match target.resolve()? {
        Where::Local(state) => {
            let report: StatusReport = call(&state, &Request::Status).await?;
            if json {
                output::json(&report)?;
            } else {
                print_status(&report);
            }
        }
        Where::Cluster(session) => {
            let status = crate::remote::cluster_status(&session).await;
            if json {
                output::json(&status)?;
            } else {
                crate::remote::print_cluster_status(&status);
            }
            let unreachable: Vec<&str> = status
                .hosts
                .iter()
                .filter(|h| h.error.is_some())
                .map(|h| h.host.as_str())
                .collect();
            if !unreachable.is_empty() {
                // A script (or a monitor) sees at once that the picture is incomplete.
                eprintln!(
                    "citadel status: {} host(s) unreachable: {}",
                    unreachable.len(),
                    unreachable.join(", ")
                );
                return Ok(UNREACHABLE_EXIT);
            }
        }
    }
    Ok(0)
}

/// `status`'s exit code when a host's agent does not answer (the table is still printed).
pub const UNREACHABLE_EXIT: i32 = 3;

fn health_text(health: &Health, has_check: bool, running: bool) -> String {
    match health {
        Health::Healthy => "healthy".into(),
        Health::Unhealthy(why) => format!("unhealthy: {why}"),
        Health::Unknown if !has_check => "-".into(),
        Health::Unknown if running => "starting".into(),
        Health::Unknown => "-".into(),
    }
}

pub fn print_status(report: &StatusReport) {
    println!(
        "cluster {} (zone {}) from {}",
        report.cluster, report.zone, report.file
    );
    println!("{}", jail_table(&report.jails));
    for j in &report.jails {
        if let Some(e) = &j.error {
            println!("{}: {e}", j.name);
        }
    }
}

/// The jails as `status` shows them, one row each.
pub fn jail_table(jails: &[JailReport]) -> comfy_table::Table {
    let mut table = output::table([
        "JAIL",
        "HOST",
        "ROLE",
        "BACKEND",
        "ADDRESSES",
        "STATE",
        "PID",
        "UPTIME",
        "RESTARTS",
        "LAST EXIT",
        "HEALTH",
    ]);
    for j in jails {
        let state = j.state.to_string();
        table.add_row(vec![
            j.name.clone(),
            j.host.clone(),
            j.role.clone(),
            j.backend.clone(),
            j.addresses.join(" "),
            state,
            j.pid.map_or("-".into(), |p| p.to_string()),
            j.uptime_ms
                .map_or("-".into(), |ms| format_duration(Duration::from_millis(ms))),
            j.restarts.to_string(),
            j.last_exit.as_ref().map_or("-".into(), |e| {
                let ago = e.at.elapsed().map(format_duration).unwrap_or_default();
                format!("{e} ({ago} ago)")
            }),
            health_text(&j.health, j.has_health_check, j.pid.is_some()),
        ]);
    }
    table
}

#[derive(Subcommand)]
pub enum JailVerb {
    /// List jails: name, host, role, addresses, state.
    #[command(after_help = "Examples:\n  citadel jail list\n  citadel jail list --json")]
    List,
    /// Start a stopped jail.
    #[command(after_help = "Example:\n  citadel jail start app-1")]
    Start { jail: String },
    /// Stop a jail: drained at the gate, then SIGTERM, its grace period, SIGKILL.
    #[command(after_help = "Example:\n  citadel jail stop app-1")]
    Stop { jail: String },
    /// Stop and start a jail (drained at the gate meanwhile).
    #[command(after_help = "Example:\n  citadel jail restart app-1")]
    Restart { jail: String },
    /// Print a jail's console log.
    #[command(
        after_help = "Examples:\n  citadel jail logs db-1\n  citadel jail logs -f -n 20 gate"
    )]
    Logs {
        jail: String,
        /// Keep printing what the jail writes.
        #[arg(long, short)]
        follow: bool,
        /// How many lines of the end to print first.
        #[arg(long, short = 'n', default_value_t = 100)]
        lines: usize,
    },
    /// Run a command as the jail: its environment, its working directory, its addresses.
    #[command(after_help = "Example:\n  citadel jail exec app-1 -- sh -c 'echo $CITADEL_ADDR'")]
    Exec {
        jail: String,
        #[arg(trailing_var_arg = true, required = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Create a new jail as a copy of another, with its data.
    #[command(
        after_help = "Example:\n  citadel jail clone app-1 app-3 --address front=127.10.0.31"
    )]
    Clone {
        source: String,
        name: String,
        /// An address for the copy on one segment, as SEGMENT=ADDRESS (default: the first free).
        #[arg(long = "address", value_name = "SEGMENT=ADDRESS")]
        addresses: Vec<String>,
    },
    /// Pack a jail's definition and data into a compressed archive.
    #[command(after_help = "Example:\n  citadel jail archive db-1 db-1.tar.gz")]
    Archive { jail: String, file: PathBuf },
    /// Create a jail from an archive (made here or on another machine).
    #[command(
        after_help = "Example:\n  citadel jail restore db-1.tar.gz --name db-3 --host server-2"
    )]
    Restore {
        file: PathBuf,
        /// A new name for the jail.
        #[arg(long)]
        name: Option<String>,
        /// The host to put it on, when the archive's host does not exist here.
        #[arg(long)]
        host: Option<String>,
    },
    /// Stop a jail and delete it with its data.
    #[command(after_help = "Example:\n  citadel jail destroy app-3")]
    Destroy { jail: String },
    /// Move a jail to another host, with its data, through the agents (mutual TLS); the cluster
    /// file is updated (written back) and applied everywhere.
    #[command(after_help = "Examples:
  citadel jail move app-1 server-2 --file ./mycluster/citadel.toml --dir ./mycluster
  citadel jail move db-1 server-2 --timeout 2m")]
    /// `--file` (default: DIR/citadel.toml) is rewritten with the jail's new host once it
    /// runs there.
    Move {
        jail: String,
        /// The host to move it to.
        host: String,
        /// How long the jail may take to be healthy on the target and back in rotation.
        #[arg(long, default_value = "60s", value_parser = crate::deploy::parse_timeout)]
        timeout: Duration,
    },
}

pub async fn jail(verb: JailVerb, target: &Target, json: bool) -> anyhow::Result<i32> {
    if let JailVerb::Move {
        jail,
        host,
        timeout,
    } = verb
    {
        let (file, dir) = (target.file(), target.dir());
        return crate::deploy::move_jail(&jail, &host, &file, &dir, timeout, json).await;
    }
    let place = target.resolve()?;
    match verb {
        JailVerb::Move { .. } => unreachable!("handled above"),
        JailVerb::List => {
            let jails = match &place {
                Where::Local(state) => call::<StatusReport>(state, &Request::Status).await?.jails,
                Where::Cluster(session) => {
                    let status = crate::remote::cluster_status(session).await;
                    for h in status.hosts.iter().filter(|h| h.error.is_some()) {
                        eprintln!(
                            "warning: {} not listed: {}",
                            h.host,
                            h.error.as_deref().unwrap_or("?")
                        );
                    }
                    status.jails
                }
            };
            if json {
                output::json(&jails)?;
            } else {
                let mut table =
                    output::table(["JAIL", "HOST", "ROLE", "ADDRESSES", "STATE", "SOURCE"]);
                for j in &jails {
                    table.add_row(vec![
                        j.name.clone(),
                        j.host.clone(),
                        j.role.clone(),
                        j.addresses.join(" "),
                        j.state.to_string(),
                        if j.from_file {
                            "file".into()
                        } else {
                            "state".to_string()
                        },
                    ]);
                }
                println!("{table}");
            }
        }
        JailVerb::Start { jail } => {
            let at = At::of(&place, &jail).await?;
            at.call::<()>(&Request::Start { jail: jail.clone() })
                .await?;
            at.drain_elsewhere(&jail, false).await;
            done(json, "started", &jail, None);
        }
        JailVerb::Stop { jail } => {
            let at = At::of(&place, &jail).await?;
            at.drain_elsewhere(&jail, true).await;
            at.call::<()>(&Request::Stop { jail: jail.clone() }).await?;
            done(json, "stopped", &jail, None);
        }
        JailVerb::Restart { jail } => {
            let at = At::of(&place, &jail).await?;
            at.drain_elsewhere(&jail, true).await;
            let restarted = at
                .call::<()>(&Request::Restart { jail: jail.clone() })
                .await;
            at.drain_elsewhere(&jail, false).await;
            restarted?;
            done(json, "restarted", &jail, None);
        }
        JailVerb::Logs {
            jail,
            follow,
            lines,
        } => match &place {
            // On the jail's host the CLI reads the log itself (also with no agent running).
            Where::Local(state) => {
                let log = JailPaths::new(state, &jail).console_log();
                if !log.exists() {
                    bail!(
                        "jail `{jail}` has no log at {} (never started, or another --state)",
                        log.display()
                    );
                }
                let mut out = std::io::stdout().lock();
                out.write_all(&tail_log(&log, lines)?)?;
                out.flush()?;
                if follow {
                    let _ = follow_log(&log, out).await;
                }
            }
            Where::Cluster(_) => {
                let at = At::of(&place, &jail).await?;
                let request = Request::Logs {
                    jail: jail.clone(),
                    lines,
                    follow,
                };
                at.stream(&request, None, relay).await?;
            }
        },
        JailVerb::Exec { jail, command } => {
            let (program, args) = command.split_first().context("no command given")?;
            let code = match &place {
                // Here, the command runs in this process's terminal (an interactive shell
                // works); through an agent it runs there, its stdin and output relayed.
                Where::Local(state) => {
                    let id: Identity =
                        call(state, &Request::Identity { jail: jail.clone() }).await?;
                    let status = citadel_agent::exec::command(&id, program, args)
                        .with_context(|| format!("jail `{jail}`"))?
                        .status()
                        .with_context(|| format!("jail `{jail}`: cannot run {program}"))?;
                    citadel_agent::exec::exit_code(status)
                }
                Where::Cluster(_) => {
                    let at = At::of(&place, &jail).await?;
                    // Piped or redirected stdin goes to the command; a terminal's does not
                    // (there is no terminal at the other end).
                    let stdin = !std::io::IsTerminal::is_terminal(&std::io::stdin());
                    let request = Request::Exec {
                        jail: jail.clone(),
                        command: command.clone(),
                        stdin,
                    };
                    let input: Option<Box<dyn tokio::io::AsyncRead + Send + Unpin>> =
                        stdin.then(|| Box::new(tokio::io::stdin()) as _);
                    at.stream(&request, input, relay).await?
                }
            };
            return Ok(code);
        }
        JailVerb::Clone {
            source,
            name,
            addresses,
        } => {
            let mut map = BTreeMap::new();
            for a in &addresses {
                let (seg, addr) = a.split_once('=').with_context(|| {
                    format!("--address {a}: write SEGMENT=ADDRESS, e.g. front=127.10.0.31")
                })?;
                map.insert(seg.to_string(), addr.to_string());
            }
            let at = At::of(&place, &source).await?;
            let created: Created = at
                .call(&Request::Clone {
                    source: source.clone(),
                    name,
                    addresses: map,
                })
                .await?;
            print_created(&created, &format!("cloned from {source}"), json)?;
        }
        JailVerb::Archive { jail, file } if matches!(place, Where::Cluster(_)) => {
            // Made on the jail's host, streamed here.
            let at = At::of(&place, &jail).await?;
            let partial = file.with_extension("partial");
            let mut out = std::fs::File::create(&partial)
                .with_context(|| format!("cannot create {}", partial.display()))?;
            let mut bytes = 0u64;
            let got = at
                .stream(&Request::ArchiveOut { jail: jail.clone() }, None, |chunk| {
                    if let Chunk::Out(b) = chunk {
                        out.write_all(&b)?;
                        bytes += b.len() as u64;
                    }
                    Ok(())
                })
                .await
                .and_then(|_| Ok(out.sync_all()?));
            if let Err(e) = got {
                let _ = std::fs::remove_file(&partial);
                return Err(e);
            }
            std::fs::rename(&partial, &file)
                .with_context(|| format!("cannot write {}", file.display()))?;
            done(
                json,
                "archived",
                &jail,
                Some(serde_json::json!({"file": absolute(&file)?, "bytes": bytes})),
            );
        }
        JailVerb::Archive { jail, file } => {
            let Where::Local(state) = &place else {
                unreachable!("matched above")
            };
            let file = absolute(&file)?;
            let bytes: u64 = call(
                state,
                &Request::Archive {
                    jail: jail.clone(),
                    file: file.clone(),
                },
            )
            .await?;
            done(
                json,
                "archived",
                &jail,
                Some(serde_json::json!({"file": file, "bytes": bytes})),
            );
        }
        JailVerb::Restore { file, name, host } if matches!(place, Where::Cluster(_)) => {
            // Sent from here to the named host's agent, restored there.
            let Where::Cluster(session) = &place else {
                unreachable!("matched above")
            };
            let Some(host) = host else {
                bail!(
                    "through the agents, name the host to restore it on with --host (one of: {})",
                    session
                        .cluster
                        .hosts
                        .iter()
                        .map(|h| h.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            };
            let (bytes, sha256) = citadel_agent::control::file_digest(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let at = At::on_host(session, &host)?;
            let request = Request::RestoreIn {
                name,
                host: Some(host.clone()),
                bytes,
                sha256,
            };
            let created: Created = at.send_file(&request, &file).await?;
            print_created(&created, &format!("restored from {}", file.display()), json)?;
        }
        JailVerb::Restore { file, name, host } => {
            let Where::Local(state) = &place else {
                unreachable!("matched above")
            };
            let file = absolute(&file)?;
            let created: Created = call(
                state,
                &Request::Restore {
                    file: file.clone(),
                    name,
                    host,
                },
            )
            .await?;
            print_created(&created, &format!("restored from {}", file.display()), json)?;
        }
        JailVerb::Destroy { jail } => {
            let at = At::of(&place, &jail).await?;
            let in_file: bool = at.call(&Request::Destroy { jail: jail.clone() }).await?;
            done(
                json,
                "destroyed",
                &jail,
                Some(serde_json::json!({"still_in_cluster_file": in_file})),
            );
            if in_file && !json {
                println!(
                    "note: {jail} is still in the cluster file; the next `citadel up` creates it again"
                );
            }
        }
    }
    Ok(0)
}

/// Writes a streamed chunk of a jail's output where it belongs: stdout or stderr.
fn relay(chunk: Chunk) -> std::io::Result<()> {
    match chunk {
        Chunk::Out(bytes) => {
            let mut out = std::io::stdout().lock();
            out.write_all(&bytes)?;
            out.flush()
        }
        Chunk::Err(bytes) => std::io::stderr().lock().write_all(&bytes),
        Chunk::End(_) => Ok(()),
    }
}

/// Reports a finished verb: a sentence, or with --json an object.
fn done(json: bool, what: &str, jail: &str, extra: Option<serde_json::Value>) {
    let sentence = match extra.as_ref().and_then(|e| e.get("file")) {
        Some(file) => format!("{what} {jail} to {file}"),
        None => format!("{what} {jail}"),
    };
    let mut v = serde_json::json!({"jail": jail, "done": what});
    if let (Some(serde_json::Value::Object(extra)), Some(obj)) = (extra, v.as_object_mut()) {
        obj.extend(extra);
    }
    output::done(json, sentence, v);
}

fn print_created(c: &Created, how: &str, json: bool) -> anyhow::Result<()> {
    if json {
        output::json(c)?;
    } else {
        println!(
            "{} {how} on host {} with {} ({} bytes of data); start it with `citadel jail start {}`",
            c.name,
            c.host,
            c.addresses.join(" "),
            c.bytes,
            c.name
        );
    }
    Ok(())
}

/// The agent may run in another directory: send it absolute paths.
fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("cannot resolve {}", p.display()))
}
