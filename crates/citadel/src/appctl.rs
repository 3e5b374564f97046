//! `citadel app …`: the app role itself (`run`), API keys, and the load checker.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Subcommand;

use citadel_agent::protocol::RoleOp;

use crate::output;
use crate::remote::Target;

#[derive(Subcommand)]
pub enum AppVerb {
    /// Run the app role (what an app jail runs; `citadel up` writes its config).
    #[command(after_help = "Example (what `citadel up` runs in an app jail):
  citadel app run --config .citadel/jails/app-1/app.toml")]
    Run {
        #[arg(long)]
        config: PathBuf,
    },
    /// API keys of the client applications, stored in the db.
    #[command(after_help = "Examples:\n  citadel app key create billing\n  citadel app key list")]
    Key {
        #[command(subcommand)]
        verb: KeyVerb,
    },
    /// A bounded mixed read/write load through a URL (the gate); prints errors per second and
    /// checks afterwards that every acknowledged write is there.
    #[command(after_help = "Example:
  citadel app load --url http://127.0.0.1:8080 --key \"$TOKEN\" --seconds 30 --write-percent 50")]
    Load {
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        /// API key (default: $CITADEL_API_KEY).
        #[arg(long, env = "CITADEL_API_KEY", hide_env_values = true)]
        key: Option<String>,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(0..=100))]
        write_percent: u32,
    },
}

#[derive(Subcommand)]
pub enum KeyVerb {
    /// Make a key for a client application; prints its token once.
    #[command(after_help = "Examples:
  citadel app key create billing
  TOKEN=$(citadel app key create billing --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"token\"])')")]
    Create { name: String },
    /// Every key: id, valid or revoked, when it was made, its name (never the token).
    #[command(after_help = "Examples:\n  citadel app key list\n  citadel app key list --json")]
    List,
    /// Revoke a key by id: its requests get 403 from then on.
    #[command(after_help = "Example:\n  citadel app key revoke 3f2a9c0d1e7b")]
    Revoke { id: String },
}

pub async fn app(verb: AppVerb, target: &Target, json: bool) -> anyhow::Result<i32> {
    match verb {
        AppVerb::Run { config } => {
            citadel_app::run(citadel_app::AppConfig::from_file(&config)?).await?;
        }
        AppVerb::Key { verb } => {
            let op = match verb {
                KeyVerb::Create { name } => RoleOp::AppKeyCreate { name },
                KeyVerb::List => RoleOp::AppKeyList,
                KeyVerb::Revoke { id } => RoleOp::AppKeyRevoke { id },
            };
            let answer = crate::remote::role(target, &op).await?;
            let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
            match op {
                RoleOp::AppKeyCreate { .. } => output::done(
                    json,
                    format_args!(
                        "id:    {}\nname:  {}\ntoken: {}",
                        text(&answer["id"]),
                        text(&answer["name"]),
                        text(&answer["token"])
                    ),
                    answer,
                ),
                RoleOp::AppKeyList if json => output::json(&answer)?,
                RoleOp::AppKeyList => {
                    let mut table = output::table(["ID", "STATE", "CREATED", "NAME"]);
                    for k in answer.as_array().into_iter().flatten() {
                        let state = if k["revoked"].is_null() {
                            "valid"
                        } else {
                            "revoked"
                        };
                        table.add_row(vec![
                            text(&k["id"]),
                            state.to_string(),
                            output::ago_unix_secs(k["created"].as_u64().unwrap_or(0)),
                            text(&k["name"]),
                        ]);
                    }
                    println!("{table}");
                }
                _ => output::done(
                    json,
                    format_args!("revoked {}", text(&answer["revoked"])),
                    answer,
                ),
            }
        }
        AppVerb::Load {
            url,
            key,
            seconds,
            concurrency,
            write_percent,
        } => {
            let opts = citadel_app::load::LoadOptions {
                base: url.trim_end_matches('/').to_string(),
                token: key,
                collection: "loadcheck".into(),
                duration: std::time::Duration::from_secs(seconds),
                concurrency,
                write_percent,
                ..Default::default()
            };
            let report = citadel_app::load::run(opts).await?;
            if json {
                output::json(&report)?;
            } else {
                print!("{}", report.timeline());
            }
            if !report.lost.is_empty() {
                bail!(
                    "{} acknowledged writes lost: {:?}",
                    report.lost.len(),
                    report.lost
                );
            }
        }
    }
    Ok(0)
}

/// API keys, through the db an app jail of this state directory ran with: what `--json`
/// prints.
pub async fn operate(state: &Path, op: &RoleOp) -> anyhow::Result<serde_json::Value> {
    let config = crate::roles::app::running_config(state)?;
    let db = citadel_app::connect_db(&config)?;
    match op {
        RoleOp::AppKeyCreate { name } => {
            let (key, token) = citadel_app::keys::create(&db, name)
                .await
                .context("creating the key")?;
            Ok(serde_json::json!({"id": key.id, "name": key.name, "token": token}))
        }
        RoleOp::AppKeyList => {
            let keys = citadel_app::keys::list(&db).await.context("listing keys")?;
            Ok(serde_json::to_value(keys)?)
        }
        RoleOp::AppKeyRevoke { id } => {
            if !citadel_app::keys::revoke(&db, id)
                .await
                .context("revoking")?
            {
                bail!("no key with id {id}; `citadel app key list` shows them");
            }
            Ok(serde_json::json!({"revoked": id}))
        }
        other => bail!("not an app verb: {other:?}"),
    }
}
