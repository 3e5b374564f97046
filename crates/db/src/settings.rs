//! CONFIG GET/SET: a safe subset of Redis's parameters, local to this member (like Redis's
//! own CONFIG SET, they are not replicated). Only the size limits that pick an encoding
//! change what the db reports (OBJECT ENCODING); the rest are accepted and echoed back so
//! that clients and tools that set them work.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::data::{Limits, glob_match};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Int,
    Bool,
    Text,
}

#[rustfmt::skip]
const PARAMS: &[(&str, Kind, &str)] = &[
    ("hash-max-listpack-entries", Kind::Int, "128"), ("hash-max-listpack-value", Kind::Int, "64"),
    ("zset-max-listpack-entries", Kind::Int, "128"), ("zset-max-listpack-value", Kind::Int, "64"),
    ("set-max-intset-entries", Kind::Int, "512"), ("list-max-listpack-size", Kind::Int, "-2"),
    ("list-compress-depth", Kind::Int, "0"), ("stream-node-max-bytes", Kind::Int, "4096"),
    ("stream-node-max-entries", Kind::Int, "100"), ("maxmemory", Kind::Int, "0"),
    ("maxmemory-policy", Kind::Text, "noeviction"), ("maxmemory-samples", Kind::Int, "5"),
    ("timeout", Kind::Int, "0"), ("tcp-keepalive", Kind::Int, "300"),
    ("databases", Kind::Int, "16"), ("appendonly", Kind::Bool, "no"),
    ("appendfsync", Kind::Text, "always"), ("aof-use-rdb-preamble", Kind::Bool, "yes"), ("save", Kind::Text, ""),
    ("lazyfree-lazy-user-del", Kind::Bool, "no"), ("lazyfree-lazy-user-flush", Kind::Bool, "no"),
    ("lazyfree-lazy-expire", Kind::Bool, "no"), ("lazyfree-lazy-server-del", Kind::Bool, "no"),
    ("busy-reply-threshold", Kind::Int, "5000"),
    ("slowlog-log-slower-than", Kind::Int, "10000"), ("slowlog-max-len", Kind::Int, "128"),
    ("latency-tracking", Kind::Bool, "yes"), ("latency-monitor-threshold", Kind::Int, "0"),
    ("notify-keyspace-events", Kind::Text, ""), ("hz", Kind::Int, "10"),
    ("maxclients", Kind::Int, "10000"), ("proto-max-bulk-len", Kind::Int, "67108864"),
    ("client-query-buffer-limit", Kind::Int, "1073741824"), ("active-expire-enabled", Kind::Bool, "yes"),
    ("activedefrag", Kind::Bool, "no"), ("lfu-log-factor", Kind::Int, "10"),
    ("lfu-decay-time", Kind::Int, "1"), ("close-on-oom", Kind::Bool, "no"),
    ("list-max-ziplist-size", Kind::Int, "-2"), ("enable-debug-command", Kind::Text, "no"),
    ("repl-ping-replica-period", Kind::Int, "10"), ("rdb-key-save-delay", Kind::Int, "0"),
    ("key-load-delay", Kind::Int, "0"), ("min-replicas-to-write", Kind::Int, "0"),
    ("replica-serve-stale-data", Kind::Bool, "yes"), ("hll-sparse-max-bytes", Kind::Int, "3000"),
    ("lazyfree-lazy-eviction", Kind::Bool, "no"), ("dynamic-hz", Kind::Bool, "yes"),
];

/// Redis 7.0's old names for the listpack limits.
const ALIASES: &[(&str, &str)] = &[
    ("hash-max-ziplist-entries", "hash-max-listpack-entries"),
    ("hash-max-ziplist-value", "hash-max-listpack-value"),
    ("zset-max-ziplist-entries", "zset-max-listpack-entries"),
    ("zset-max-ziplist-value", "zset-max-listpack-value"),
    ("lua-time-limit", "busy-reply-threshold"),
];

pub struct Settings {
    values: Mutex<BTreeMap<&'static str, String>>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            values: Mutex::new(PARAMS.iter().map(|(n, _, d)| (*n, d.to_string())).collect()),
        }
    }
}

fn canonical(name: &str) -> Option<(&'static str, Kind)> {
    let name = ALIASES
        .iter()
        .find(|(a, _)| *a == name)
        .map(|(_, c)| *c)
        .unwrap_or(name);
    PARAMS
        .iter()
        .find(|(n, ..)| *n == name)
        .map(|(n, k, _)| (*n, *k))
}

/// Parses Redis's memory units (1k, 5mb, 2gb) as CONFIG SET accepts them.
fn parse_int(v: &str) -> Option<i64> {
    let l = v.to_ascii_lowercase();
    let (num, mul) = [
        ("gb", 1 << 30),
        ("mb", 1 << 20),
        ("kb", 1 << 10),
        ("g", 1_000_000_000),
        ("m", 1_000_000),
        ("k", 1000),
    ]
    .iter()
    .find(|(s, _)| l.ends_with(s))
    .map(|(s, m)| (&l[..l.len() - s.len()], *m))
    .unwrap_or((&l[..], 1));
    num.parse::<i64>().ok()?.checked_mul(mul)
}

impl Settings {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, String>> {
        self.values.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// CONFIG GET pattern…: (name, value) pairs.
    pub fn get(&self, patterns: &[Vec<u8>]) -> Vec<(String, String)> {
        let v = self.lock();
        let mut out = BTreeMap::new();
        for p in patterns {
            let p = String::from_utf8_lossy(p).to_ascii_lowercase();
            for (name, val) in v.iter() {
                if glob_match(p.as_bytes(), name.as_bytes()) {
                    out.insert(name.to_string(), val.clone());
                }
            }
            for (alias, name) in ALIASES {
                if glob_match(p.as_bytes(), alias.as_bytes()) {
                    out.insert(alias.to_string(), v.get(name).cloned().unwrap_or_default());
                }
            }
        }
        out.into_iter().collect()
    }

    /// CONFIG SET name value [name value …]: all or nothing, Redis's error text.
    pub fn set(&self, args: &[Vec<u8>]) -> Result<(), String> {
        if args.is_empty() || !args.len().is_multiple_of(2) {
            return Err("ERR wrong number of arguments for 'config|set' command".into());
        }
        let mut staged = Vec::new();
        for kv in args.chunks(2) {
            let name = String::from_utf8_lossy(&kv[0]).to_ascii_lowercase();
            let val = String::from_utf8_lossy(&kv[1]).into_owned();
            let Some((canon, kind)) = canonical(&name) else {
                return Err(format!(
                    "ERR Unknown option or number of arguments for CONFIG SET - '{name}'"
                ));
            };
            let val = match kind {
                Kind::Int => match parse_int(&val) {
                    Some(n) => n.to_string(),
                    None => {
                        return Err(format!(
                            "ERR CONFIG SET failed (possibly related to argument '{name}') - argument couldn't be parsed into an integer"
                        ));
                    }
                },
                Kind::Bool => match val.to_ascii_lowercase().as_str() {
                    "yes" | "no" => val.to_ascii_lowercase(),
                    _ => {
                        return Err(format!(
                            "ERR CONFIG SET failed (possibly related to argument '{name}') - argument must be 'yes' or 'no'"
                        ));
                    }
                },
                Kind::Text => val,
            };
            staged.push((canon, val));
        }
        let mut v = self.lock();
        for (k, val) in staged {
            v.insert(k, val);
        }
        Ok(())
    }

    fn int(&self, name: &str) -> usize {
        self.lock()
            .get(name)
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(0)
            .max(0) as usize
    }

    /// stream-node-max-entries / stream-node-max-bytes (carried into the log with XADD and
    /// XTRIM, so that every member cuts a stream's nodes alike).
    pub fn stream_node(&self) -> crate::data::NodeCfg {
        crate::data::NodeCfg {
            entries: self.int("stream-node-max-entries") as u64,
            bytes: self.int("stream-node-max-bytes") as u64,
        }
    }

    /// maxmemory in bytes (0: no limit). Checked on the member that takes a write, before it
    /// is proposed (see `crate::server`'s OOM check), so it is member-local like Redis's.
    pub fn maxmemory(&self) -> u64 {
        self.int("maxmemory") as u64
    }

    /// How long a script runs before other clients get BUSY (busy-reply-threshold, alias
    /// lua-time-limit).
    pub fn busy_threshold(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.int("busy-reply-threshold") as u64)
    }

    /// The encoding limits OBJECT ENCODING reports against.
    pub fn limits(&self) -> Limits {
        Limits {
            hash_entries: self.int("hash-max-listpack-entries"),
            hash_value: self.int("hash-max-listpack-value"),
            zset_entries: self.int("zset-max-listpack-entries"),
            zset_value: self.int("zset-max-listpack-value"),
            intset_entries: self.int("set-max-intset-entries"),
        }
    }
}
