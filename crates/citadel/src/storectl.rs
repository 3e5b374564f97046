//! `citadel store …`: the store role itself (`run`) and its S3 access keys.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Subcommand;

use crate::output;

#[derive(Subcommand)]
pub enum StoreVerb {
    /// Run the store role (what a store jail runs; `citadel up` writes its config).
    #[command(after_help = "Example (what `citadel up` runs in a store jail):
  citadel store run --config .citadel/jails/store-1/store.toml")]
    Run {
        #[arg(long)]
        config: PathBuf,
    },
    /// S3 access keys (access key id + secret), stored in the db.
    #[command(
        after_help = "Examples:\n  citadel store key create backups\n  citadel store key list"
    )]
    Key {
        #[command(subcommand)]
        verb: KeyVerb,
    },
}

#[derive(Subcommand)]
pub enum KeyVerb {
    /// Make an access key; prints its id and secret (the secret is shown once).
    #[command(after_help = "Examples:
  citadel store key create backups
  citadel --json store key create backups | jq -r .secret_key")]
    Create { name: String },
    /// Every access key: id, when it was made, its name (never the secret).
    #[command(after_help = "Examples:\n  citadel store key list\n  citadel --json store key list")]
    List,
    /// Revoke an access key by id: its requests get InvalidAccessKeyId from then on.
    #[command(after_help = "Example:\n  citadel store key revoke GKA1B2C3D4E5F6G7H8I9")]
    Revoke { access_key: String },
}

pub async fn store(verb: StoreVerb, state: &Path, json: bool) -> anyhow::Result<i32> {
    match verb {
        StoreVerb::Run { config } => {
            let config = citadel_store::StoreConfig::from_file(&config)?;
            citadel_store::run(config).await?;
        }
        StoreVerb::Key { verb } => {
            let config = crate::roles::store::running_config(state)?;
            let db = citadel_store::connect_db(&config)?;
            match verb {
                KeyVerb::Create { name } => {
                    let (id, secret) = citadel_store::keys::create(&db, &name)
                        .await
                        .context("creating the key")?;
                    output::done(
                        json,
                        format_args!("access key: {id}\nsecret:     {secret}\nname:       {name}"),
                        serde_json::json!({"access_key": id, "secret_key": secret, "name": name}),
                    );
                }
                KeyVerb::List => {
                    let keys = citadel_store::keys::list(&db)
                        .await
                        .context("listing keys")?;
                    if json {
                        output::json(&keys)?;
                    } else {
                        let mut table = output::table(["ACCESS KEY", "CREATED", "NAME"]);
                        for k in keys {
                            table.add_row(vec![
                                k.access_key,
                                output::ago_unix_secs(k.created.max(0) as u64),
                                k.name,
                            ]);
                        }
                        println!("{table}");
                    }
                }
                KeyVerb::Revoke { access_key } => {
                    if !citadel_store::keys::revoke(&db, &access_key)
                        .await
                        .context("revoking")?
                    {
                        bail!("no access key {access_key}; `citadel store key list` shows them");
                    }
                    output::done(
                        json,
                        format_args!("revoked {access_key}"),
                        serde_json::json!({"revoked": access_key}),
                    );
                }
            }
        }
    }
    Ok(0)
}
