//! `citadel jail move JAIL HOST`: with the jail drained at the gates that balance it, the
//! source's agent stops it, archives it and streams the archive to the target's agent, which
//! restores it (same name, addresses and data: a db member keeps its Raft id, log and address)
//! and starts it; once it is healthy and back in rotation, the operator's file is rewritten
//! with the jail's new host and applied everywhere (gate members and DNS follow the normal
//! apply path), then the source's copy is deleted. A failure before the target serves rolls
//! back to the source.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use anyhow::bail;
use citadel_spec::Jail;

use super::*;
use crate::ops::parse_cluster;

/// The file's text with `jail`'s `host = "…"` set to `to`, everything else (comments,
/// layout) as written: the operator's file stays theirs.
fn with_host(text: &str, jail: &Jail, to: &str) -> anyhow::Result<String> {
    let Some(span) = jail.spans.get("host") else {
        bail!("jail `{}`: no `host` key found in the file", jail.name);
    };
    let Some(old) = text.get(span.clone()) else {
        bail!("jail `{}`: its `host` is not where it was read", jail.name);
    };
    let new = if old.starts_with(['"', '\'']) {
        format!("\"{to}\"")
    } else {
        to.to_string()
    };
    Ok(format!("{}{new}{}", &text[..span.start], &text[span.end..]))
}

/// Writes `text` to `path` whole or not at all (a temporary file beside it, then rename).
fn write_back(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("toml.moving");
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))
}

pub async fn move_jail(
    jail: &str,
    to: &str,
    file: &Path,
    dir: &Path,
    timeout: Duration,
    json: bool,
) -> anyhow::Result<i32> {
    let (cluster, origin) = load_cluster(Some(file))?;
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let Some(def) = cluster.jail(jail).cloned() else {
        let jails: Vec<&str> = cluster.jails.iter().map(|j| j.name.as_str()).collect();
        bail!(
            "no jail `{jail}` in {origin} (its jails: {}); nothing moved",
            jails.join(", ")
        );
    };
    if cluster.host(to).is_none() {
        let hosts: Vec<&str> = cluster.hosts.iter().map(|h| h.name.as_str()).collect();
        bail!(
            "no host `{to}` in {origin} (its hosts: {}); nothing moved",
            hosts.join(", ")
        );
    }
    let from = def.host.clone();
    if from == to {
        bail!("jail `{jail}` is on host `{to}` already ({origin}); nothing to move");
    }
    let next_text = with_host(&text, &def, to)?;
    let (next, _) = parse_cluster(&next_text, format!("{origin} with `{jail}` on `{to}`"))?;
    let config = operator_config(dir)?;
    let session = Arc::new(Session {
        cluster,
        text,
        origin: origin.clone(),
        config: config.clone(),
    });

    // A move is one change on top of the file the hosts run: both ends must run it.
    let rows = session.plans().await;
    for host in [from.as_str(), to] {
        let Some(row) = rows.iter().find(|r| r.host == host) else {
            continue;
        };
        match (&row.plan, &row.error) {
            (Some(plan), _) if plan.changes.is_empty() => {}
            (Some(plan), _) => bail!(
                "host `{host}` does not run {origin} yet ({} change(s) there: `citadel plan {origin}` shows them); apply it first with `citadel apply {origin}`; nothing moved",
                plan.changes.len()
            ),
            (None, error) => bail!(
                "cannot move `{jail}` from `{from}` to `{to}`: {}; nothing moved",
                error.as_deref().unwrap_or("unreachable")
            ),
        }
    }

    let all_gates = gates(&session.cluster);
    let drain_at: Vec<&Gate> = all_gates
        .iter()
        .filter(|g| g.members.iter().any(|m| m == jail))
        .collect();
    let began = Instant::now();
    let bytes = AtomicU64::new(0);
    let moved = AtomicBool::new(false);
    let step = async {
        let out = Request::MoveOut {
            jail: jail.to_string(),
            to: to.to_string(),
        };
        let start_source = || async {
            let request = Request::Start {
                jail: jail.to_string(),
            };
            match session.ask::<()>(&from, &request, ASK).await {
                Ok(()) => format!("rolled back: `{jail}` runs on `{from}` again"),
                Err(e) => format!(
                    "and it could not be started on `{from}` again: {e}; start it there with `citadel jail start {jail}`"
                ),
            }
        };
        match session.ask::<u64>(&from, &out, timeout + ASK).await {
            Ok(b) => bytes.store(b, Ordering::Relaxed),
            Err(e) => {
                return Err(format!(
                    "archiving and sending it failed: {e}; {}",
                    start_source().await
                ));
            }
        }
        if !json {
            eprintln!(
                "  {jail}: stopped on {from}, archive of {} bytes sent to {to}",
                bytes.load(Ordering::Relaxed)
            );
        }
        let request = Request::MoveIn {
            jail: jail.to_string(),
            timeout_ms: timeout.as_millis() as u64,
        };
        match session.ask::<u64>(to, &request, timeout + ASK).await {
            Ok(took) => {
                moved.store(true, Ordering::Relaxed);
                Ok(took)
            }
            Err(e) => {
                let discard = Request::Discard {
                    jail: jail.to_string(),
                };
                // Never two copies of one jail: the source starts again only once the
                // target's copy is gone.
                let back = match session.ask::<()>(to, &discard, ASK).await {
                    Ok(()) => start_source().await,
                    Err(d) => format!(
                        "its copy on `{to}` could not be deleted ({d}), so it was not started on `{from}` again: once `{to}` answers, move it again or start it on `{from}` with `citadel jail start {jail}`"
                    ),
                };
                Err(format!("starting it on `{to}` failed: {e}; {back}"))
            }
        }
    };
    let result = drained(&session, jail, to, &drain_at, timeout, json, step).await;
    if let Err(e) = &result
        && !moved.load(Ordering::Relaxed)
    {
        bail!("moving `{jail}` from `{from}` to `{to}`: {e}");
    }
    if let Err(e) = &result {
        // It serves from the target; the gate is slow to take it back. Go on: the file must
        // say where it runs.
        eprintln!("warning: `{jail}` runs on `{to}`, but {e}");
    }

    // From here the jail runs on the target, so the operator's file says so before anything
    // else can fail: applying the old one would start a stale copy on the source.
    write_back(file, &next_text)?;
    let next_session = Arc::new(Session {
        cluster: next,
        text: next_text,
        origin: origin.clone(),
        config,
    });
    let (outcome, hosts) = apply_session(&next_session, json, timeout).await?;
    if !json {
        print_outcome(&outcome, hosts, false)?;
    }
    let source_applied = outcome.applied.iter().any(|a| a.host == from);
    let discarded = if outcome.failed.is_none() && source_applied {
        let request = Request::Discard {
            jail: jail.to_string(),
        };
        session.ask::<()>(&from, &request, ASK).await
    } else {
        Err(format!(
            "host `{from}` has not applied generation {} yet",
            outcome.generation
        ))
    };
    let took = began.elapsed();
    if json {
        crate::output::json(&serde_json::json!({
            "moved": jail,
            "from": from,
            "to": to,
            "archive_bytes": bytes.load(Ordering::Relaxed),
            "took_ms": took.as_millis() as u64,
            "file": file,
            "apply": outcome,
            "source_copy_deleted": discarded.is_ok(),
        }))?;
    } else {
        println!(
            "moved {jail} from {from} to {to} in {:.1}s ({} bytes); wrote {} with `host = \"{to}\"` for it (generation {})",
            took.as_secs_f64(),
            bytes.load(Ordering::Relaxed),
            file.display(),
            outcome.generation
        );
        if let Err(e) = &discarded {
            eprintln!(
                "the stopped copy on {from} is kept ({e}); `citadel jail move` deletes it once the file is applied there"
            );
        }
    }
    Ok(if outcome.failed.is_some() { 1 } else { 0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_host_changes() {
        let text = "# mine\n[cluster]\nname = \"t\"\n[segments]\nfront = \"127.1.0.0/24\"\n[[host]]\nname = \"a\"\n[[host]]\nname = \"b\"\n[[jail]]\nname = \"x\"\nhost   = \"a\"   # here\nrole = \"command\"\naddresses = { front = \"127.1.0.5\" }\ncommand = \"sleep\"\nargs = [\"9\"]\n";
        let (cluster, _) = parse_cluster(text, "t.toml".into()).expect("valid");
        let out = with_host(text, cluster.jail("x").expect("x"), "b").expect("edit");
        assert_eq!(out, text.replace("host   = \"a\"", "host   = \"b\""));
        let (moved, _) = parse_cluster(&out, "t.toml".into()).expect("valid");
        assert_eq!(moved.jail("x").expect("x").host, "b");
    }
}
