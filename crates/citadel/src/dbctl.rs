//! `citadel db …`: the db member program (`run`), and the operator's view and membership
//! changes of the running group, through any db jail's config.

use std::path::{Path, PathBuf};

use anyhow::bail;
use clap::Subcommand;

use citadel_agent::protocol::RoleOp;

use crate::output;
use crate::remote::Target;
use crate::roles::db::member_id;

#[derive(Subcommand)]
pub enum DbVerb {
    /// Run a data member (what a db jail runs; `citadel up` writes its config).
    #[command(after_help = "Example (what `citadel up` runs in a db jail):
  citadel db run --config .citadel/jails/db-1/db.toml")]
    Run {
        #[arg(long)]
        config: PathBuf,
    },
    /// Every member: role, leader, term, log/applied/snapshot index, lag, disk use.
    #[command(after_help = "Examples:
  citadel db status
  citadel db status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"leader\"][\"name\"])'")]
    Status,
    /// Make a member (a db or witness jail of the cluster) a voter, online: it joins as a
    /// learner, catches up, then votes.
    #[command(after_help = "Example:\n  citadel db add db-3")]
    Add { member: String },
    /// Take a member out of the voters, online.
    #[command(after_help = "Example:\n  citadel db remove db-3")]
    Remove { member: String },
}

pub async fn db(verb: DbVerb, target: &Target, json: bool) -> anyhow::Result<i32> {
    let op = match verb {
        DbVerb::Run { config } => {
            citadel_db::run(citadel_db::DbConfig::load(&config)?).await?;
            return Ok(0);
        }
        DbVerb::Status => RoleOp::DbStatus,
        DbVerb::Add { member } => RoleOp::DbVoter { member, add: true },
        DbVerb::Remove { member } => RoleOp::DbVoter { member, add: false },
    };
    let answer = crate::remote::role(target, &op).await?;
    match op {
        _ if json => output::json(&answer)?,
        RoleOp::DbStatus => {
            let group: citadel_db::GroupStatus = serde_json::from_value(serde_json::json!({
                "leader": answer["leader"],
                "members": answer["members"],
            }))?;
            let holders: Vec<&str> = answer["placement"]["held_by"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|h| h.as_str())
                .collect();
            print!("{group}");
            println!(
                "placement: databases 0-15 on every data member ({}); witnesses hold none",
                holders.join(", ")
            );
        }
        _ => println!("{}", answer["outcome"].as_str().unwrap_or_default()),
    }
    Ok(0)
}

/// `db status` and membership changes, run against this state directory's db jail: what
/// `--json` prints.
pub async fn operate(state: &Path, op: &RoleOp) -> anyhow::Result<serde_json::Value> {
    let config = running_config(state)?;
    match op {
        RoleOp::DbStatus => {
            let group =
                citadel_db::GroupStatus::from_rows(&citadel_db::cluster_status(&config).await);
            // The placement catalogue: today every data member replicates every database.
            let holders: Vec<&str> = config
                .members
                .iter()
                .filter(|m| m.kind == citadel_db::Kind::Data)
                .map(|m| m.name.as_str())
                .collect();
            Ok(serde_json::json!({
                "leader": group.leader,
                "members": group.members,
                "placement": {"databases": "0-15", "held_by": holders},
            }))
        }
        RoleOp::DbVoter { member, add } => {
            let id = member_id(member);
            if config.member(id).is_none() {
                let names: Vec<&str> = config.members.iter().map(|m| m.name.as_str()).collect();
                bail!(
                    "`{member}` is not a member of the db group (members: {})",
                    names.join(", ")
                );
            }
            let outcome = citadel_db::change_voter(&config, id, *add).await?;
            Ok(serde_json::json!({"member": member, "voter": add, "outcome": outcome}))
        }
        other => bail!("not a db verb: {other:?}"),
    }
}

/// The config of a db jail that has run with this state directory: every member's addresses.
fn running_config(state: &Path) -> anyhow::Result<citadel_db::DbConfig> {
    let file = crate::roles::config_of(state, "db.toml", citadel_spec::Role::Db)?;
    Ok(citadel_db::DbConfig::load(&file)?)
}
