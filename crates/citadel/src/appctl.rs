//! `citadel app …`: the app role itself (`run`), API keys, and the load checker.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Subcommand;

#[derive(Subcommand)]
pub enum AppVerb {
    /// Run the app role (what an app jail runs; `citadel up` writes its config).
    Run {
        #[arg(long)]
        config: PathBuf,
    },
    /// API keys of the client applications, stored in the db.
    Key {
        #[command(subcommand)]
        verb: KeyVerb,
    },
    /// A bounded mixed read/write load through a URL (the gate); prints errors per second and
    /// checks afterwards that every acknowledged write is there.
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
    Create {
        name: String,
    },
    List,
    /// Revoke a key by id: its requests get 403 from then on.
    Revoke {
        id: String,
    },
}

pub async fn app(verb: AppVerb, state: &Path, json: bool) -> anyhow::Result<i32> {
    match verb {
        AppVerb::Run { config } => {
            citadel_app::run(citadel_app::AppConfig::from_file(&config)?).await?;
        }
        AppVerb::Key { verb } => {
            let config = crate::roles::app::running_config(state)?;
            let db = citadel_app::connect_db(&config)?;
            match verb {
                KeyVerb::Create { name } => {
                    let (key, token) = citadel_app::keys::create(&db, &name)
                        .await
                        .context("creating the key")?;
                    if json {
                        println!(
                            "{}",
                            serde_json::json!({"id": key.id, "name": key.name, "token": token})
                        );
                    } else {
                        println!("id:    {}\nname:  {}\ntoken: {token}", key.id, key.name);
                    }
                }
                KeyVerb::List => {
                    let keys = citadel_app::keys::list(&db).await.context("listing keys")?;
                    if json {
                        println!("{}", serde_json::to_string_pretty(&keys)?);
                    } else {
                        let mut table = comfy_table::Table::new();
                        table.load_style(comfy_table::presets::NOTHING);
                        table.set_header(vec!["ID", "STATE", "CREATED", "NAME"]);
                        for k in keys {
                            let state = if k.revoked.is_some() {
                                "revoked"
                            } else {
                                "valid"
                            };
                            table.add_row(vec![
                                k.id,
                                state.to_string(),
                                k.created.to_string(),
                                k.name,
                            ]);
                        }
                        println!("{table}");
                    }
                }
                KeyVerb::Revoke { id } => {
                    if !citadel_app::keys::revoke(&db, &id)
                        .await
                        .context("revoking")?
                    {
                        bail!("no key with id {id}; `citadel app key list` shows them");
                    }
                    println!("revoked {id}");
                }
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
                println!("{}", serde_json::to_string_pretty(&report)?);
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
