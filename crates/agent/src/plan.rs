//! What applying a cluster file would change on one host: per jail, create, destroy, move,
//! restart, reload or start, with what differs. `Runtime::converge` executes the same list, so
//! `plan` shows what `apply` does.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// New on this host (or moved here from another).
    Create,
    /// Gone from the file: it stops (its data stays).
    Stop,
    /// Now on another host: it stops here.
    Move,
    /// Its launch differs: stopped and started again (one at a time when balanced).
    Restart,
    /// Only its role config differs and the role re-reads it (the gate, by SIGHUP).
    Reload,
    /// Unchanged but not running.
    Start,
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Action::Create => "create",
            Action::Stop => "stop",
            Action::Move => "move",
            Action::Restart => "restart",
            Action::Reload => "reload",
            Action::Start => "start",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub jail: String,
    pub action: Action,
    /// What differs: jail fields (`args`, `limits`…), `from host X`/`to host X`, or the
    /// derived config's changed lines (`- old`, `+ new`).
    pub what: Vec<String>,
}

/// One host's answer to `plan`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HostPlan {
    pub host: String,
    pub generation: u64,
    pub sha256: String,
    pub changes: Vec<Change>,
}

/// One host's answer to `apply`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Applied {
    pub host: String,
    pub generation: u64,
    pub done: Vec<Change>,
    /// Restarts left to the operator's rollout (`Request::Roll`, one jail at a time).
    pub held: Vec<String>,
}

/// The answer to a peer's `gossip`: this agent's version, and its file when the asker is
/// behind.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Gossip {
    pub generation: u64,
    pub sha256: String,
    pub file: Option<String>,
}

/// The top-level fields of two JSON objects that differ (a jail's definition).
pub fn fields_differ(old: &serde_json::Value, new: &serde_json::Value) -> Vec<String> {
    let empty = serde_json::Map::new();
    let (a, b) = (
        old.as_object().unwrap_or(&empty),
        new.as_object().unwrap_or(&empty),
    );
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| match (a.get(k), b.get(k)) {
            (Some(x), Some(y)) => format!("{k}: {x} → {y}"),
            _ => k.clone(),
        })
        .collect()
}

/// The lines of a derived config that changed, `- old` then `+ new`, at most `MAX` of them.
pub fn lines_differ(old: &str, new: &str) -> Vec<String> {
    const MAX: usize = 8;
    let (a, b): (Vec<&str>, Vec<&str>) = (old.lines().collect(), new.lines().collect());
    let mut out: Vec<String> = a
        .iter()
        .filter(|l| !b.contains(l))
        .map(|l| format!("- {}", l.trim()))
        .chain(
            b.iter()
                .filter(|l| !a.contains(l))
                .map(|l| format!("+ {}", l.trim())),
        )
        .collect();
    if out.len() > MAX {
        let more = out.len() - MAX;
        out.truncate(MAX);
        out.push(format!("… {more} more line(s)"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differing_fields_and_lines_are_named() {
        let old = serde_json::json!({"args": ["a"], "name": "x"});
        let new = serde_json::json!({"args": ["b"], "name": "x", "env": {}});
        assert_eq!(
            fields_differ(&old, &new),
            ["args: [\"a\"] → [\"b\"]".to_string(), "env".to_string()]
        );
        assert_eq!(
            lines_differ("a = 1\nb = 2\n", "a = 1\nb = 3\n"),
            ["- b = 2", "+ b = 3"]
        );
    }
}
