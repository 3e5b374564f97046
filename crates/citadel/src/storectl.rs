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
    /// Per server: objects and bytes held, what is under-replicated, re-clone progress,
    /// last scrub and garbage collection (the catalogue each store publishes in the db).
    #[command(after_help = "Examples:\n  citadel store status\n  citadel --json store status")]
    Status,
    /// Scrub every store's disk now: read each block, check its SHA-256, rewrite a rotten
    /// one from the other server's copy. Waits for the reports.
    #[command(after_help = "Example:\n  citadel store scrub")]
    Scrub,
    /// Run a spare block holder (a command jail on the gate box, named by `[store] spare`):
    /// it keeps the second copy of blocks written while one store is down.
    #[command(after_help = "Example (a command jail's args):
  citadel store spare --listen ${CITADEL_ADDR}:3901 --data ${CITADEL_DATA}")]
    Spare {
        #[arg(long)]
        listen: std::net::SocketAddr,
        #[arg(long)]
        data: PathBuf,
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
        StoreVerb::Status => status(state, json).await?,
        StoreVerb::Spare { listen, data } => {
            citadel_store::run_spare(citadel_store::SpareConfig {
                listen,
                data_dir: data,
            })
            .await?;
        }
        StoreVerb::Scrub => return scrub(state, json).await,
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

async fn status(state: &Path, json: bool) -> anyhow::Result<()> {
    let config = crate::roles::store::running_config(state)?;
    let db = citadel_store::connect_db(&config)?;
    let all = citadel_store::catalogue::read_all(&db)
        .await
        .context("reading the catalogue (s3:status) from the db")?;
    let now = citadel_store::meta::now_secs();
    let under = citadel_store::catalogue::under_replicated(&all);
    if json {
        let servers: Vec<serde_json::Value> = all
            .iter()
            .map(|s| {
                let mut v = serde_json::to_value(s).unwrap_or_default();
                v["stale"] = citadel_store::catalogue::is_stale(s, now).into();
                v
            })
            .collect();
        return output::json(&serde_json::json!({
            "servers": servers,
            "under_replicated_objects": under,
        }));
    }
    if all.is_empty() {
        println!("no store has published its catalogue yet (each does every few seconds)");
        return Ok(());
    }
    let mut table = output::table([
        "SERVER",
        "UPDATED",
        "OBJECTS",
        "HELD",
        "BYTES",
        "BLOCKS",
        "MISSING",
        "RE-CLONE",
        "LAST SCRUB",
        "GC FREED",
    ]);
    for s in &all {
        let updated = output::ago_unix_secs(s.updated.max(0) as u64);
        let r = &s.reclone;
        let reclone = if r.active {
            format!(
                "{}/{} blocks, {} of {}",
                r.done_blocks,
                r.total_blocks,
                mib(r.done_bytes),
                mib(r.total_bytes)
            )
        } else if r.finished > 0 {
            format!("done {}", output::ago_unix_secs(r.finished as u64))
        } else {
            "-".into()
        };
        let scrub = match &s.scrub {
            Some(sc) => format!(
                "{} checked, {} rotten, {} repaired ({})",
                sc.checked,
                sc.rotten,
                sc.repaired,
                output::ago_unix_secs(sc.finished.max(0) as u64)
            ),
            None => "never".into(),
        };
        table.add_row(vec![
            s.name.clone(),
            if citadel_store::catalogue::is_stale(s, now) {
                format!("{updated} (stale: down?)")
            } else {
                updated
            },
            s.objects.to_string(),
            s.objects_held.to_string(),
            mib(s.bytes),
            s.blocks.to_string(),
            format!("{} blocks", s.missing_blocks),
            reclone,
            scrub,
            mib(s.gc.freed_bytes),
        ]);
    }
    println!("{table}");
    println!("under-replicated objects: {under}");
    Ok(())
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Scrubs every store jail's disk in turn (one at a time: a scrub reads the whole disk).
async fn scrub(state: &Path, json: bool) -> anyhow::Result<i32> {
    let jails = crate::roles::jails_with(state, "store.toml")?;
    if jails.is_empty() {
        bail!(
            "no store jail has run with state directory {}",
            state.display()
        );
    }
    let mut reports = Vec::new();
    let mut failed = false;
    for (name, file) in jails {
        let config = citadel_store::StoreConfig::from_file(&file)?;
        let Some(admin) = config.admin_listen else {
            bail!(
                "{}: no admin_listen; restart the jail to rewrite it",
                file.display()
            );
        };
        match citadel_store::admin::scrub(admin, std::time::Duration::from_secs(24 * 3600)).await {
            Ok(r) => reports.push((name, Ok(r))),
            Err(e) => {
                failed = true;
                reports.push((name, Err(e.to_string())));
            }
        }
    }
    if json {
        let v: Vec<serde_json::Value> = reports
            .iter()
            .map(|(name, r)| match r {
                Ok(r) => serde_json::json!({"server": name, "report": r}),
                Err(e) => serde_json::json!({"server": name, "error": e}),
            })
            .collect();
        output::json(&v)?;
    } else {
        let mut table = output::table([
            "SERVER",
            "CHECKED",
            "BYTES",
            "ROTTEN",
            "REPAIRED",
            "UNREPAIRABLE",
        ]);
        for (name, r) in reports {
            match r {
                Ok(r) => table.add_row(vec![
                    name,
                    r.checked.to_string(),
                    mib(r.bytes),
                    r.rotten.to_string(),
                    r.repaired.to_string(),
                    r.unrepairable.to_string(),
                ]),
                Err(e) => table.add_row(vec![name, format!("error: {e}")]),
            };
        }
        println!("{table}");
    }
    Ok(if failed { 1 } else { 0 })
}
