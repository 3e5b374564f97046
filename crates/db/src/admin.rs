//! Server commands that touch no data: COMMAND, CONFIG, TIME, FUNCTION, DEBUG.

use crate::data::{Class, all_commands};
use crate::node::Node;
use crate::resp::Reply;

/// Commands the server itself answers (besides the data commands): (name, arity).
const SERVER: &[(&str, i32)] = &[
    ("PING", -1),
    ("ECHO", 2),
    ("QUIT", -1),
    ("AUTH", -2),
    ("HELLO", -1),
    ("CLIENT", -2),
    ("COMMAND", -1),
    ("CONFIG", -2),
    ("TIME", 1),
    ("FUNCTION", -2),
    ("DEBUG", -2),
    ("LASTSAVE", 1),
    ("SAVE", 1),
    ("BGSAVE", -1),
    ("BGREWRITEAOF", 1),
    ("SYNC", 1),
    ("PFSELFTEST", 1),
    ("PSYNC", -3),
    ("REPLCONF", -1),
    ("SELECT", 2),
    ("READONLY", 1),
    ("READWRITE", 1),
    ("RESET", 1),
    ("INFO", -1),
    ("MULTI", 1),
    ("DISCARD", 1),
    ("EXEC", 1),
    ("WATCH", -2),
    ("UNWATCH", 1),
    ("OBJECT", -2),
    ("ACL", -2),
];

/// Whether the server itself answers `name` (a command that touches no data).
pub fn is_server_command(name: &str) -> bool {
    SERVER.iter().any(|(n, _)| *n == name)
}

fn lower(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_ascii_lowercase()
}

/// COMMAND's per-command entry: name, arity, flags, first key, last key, step, ACL
/// categories, tips, key specs, subcommands.
fn info_of(name: &str) -> Option<Reply> {
    let up = name.to_ascii_uppercase();
    let (arity, flags, keys) = match crate::data::spec(&up) {
        Some(s) => (
            s.arity,
            if s.class == Class::Write {
                "write"
            } else {
                "readonly"
            },
            (s.first, s.last, s.step),
        ),
        None => {
            let &(_, a) = SERVER.iter().find(|(n, _)| *n == up)?;
            (a, "fast", (0, 0, 0))
        }
    };
    Some(Reply::Array(vec![
        Reply::bulk(name.to_ascii_lowercase()),
        Reply::Int(arity as i64),
        Reply::Array(vec![Reply::Simple(flags.into())]),
        Reply::Int(keys.0 as i64),
        Reply::Int(keys.1 as i64),
        Reply::Int(keys.2 as i64),
        Reply::Array(
            crate::acl::category_names(&up)
                .into_iter()
                .map(Reply::Simple)
                .collect(),
        ),
        Reply::Array(Vec::new()),
        Reply::Array(Vec::new()),
        Reply::Array(Vec::new()),
    ]))
}

fn names() -> Vec<String> {
    all_commands()
        .map(|(n, _)| n.to_string())
        .chain(SERVER.iter().map(|(n, _)| n.to_string()))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
}

pub fn command(argv: &[Vec<u8>]) -> Reply {
    let sub = argv.get(1).map(|a| lower(a));
    match sub.as_deref() {
        None => Reply::Array(names().iter().filter_map(|n| info_of(n)).collect()),
        Some("count") => Reply::Int(names().len() as i64),
        Some("list") => Reply::Array(
            names()
                .iter()
                .map(|n| Reply::bulk(n.to_ascii_lowercase()))
                .collect(),
        ),
        Some("info") => Reply::Array(
            argv[2..]
                .iter()
                .map(|n| info_of(&lower(n)).unwrap_or(Reply::Nil))
                .collect(),
        ),
        Some("docs") => {
            let wanted: Vec<String> = if argv.len() > 2 {
                argv[2..].iter().map(|n| lower(n)).collect()
            } else {
                names().iter().map(|n| n.to_ascii_lowercase()).collect()
            };
            Reply::Map(
                wanted
                    .into_iter()
                    .filter(|n| info_of(n).is_some())
                    .map(|n| {
                        (
                            Reply::bulk(&n),
                            Reply::Map(vec![(Reply::bulk("summary"), Reply::bulk(""))]),
                        )
                    })
                    .collect(),
            )
        }
        Some("getkeys") if argv.len() > 2 => {
            let name = String::from_utf8_lossy(&argv[2]).to_ascii_uppercase();
            let args = &argv[2..];
            if crate::data::spec(&name).is_none() {
                return Reply::err("ERR Invalid command specified");
            }
            let keys = crate::data::keys_of(&name, args);
            if keys.is_empty() {
                return Reply::err("ERR The command has no key arguments");
            }
            Reply::Array(keys.into_iter().map(Reply::bulk).collect())
        }
        Some(other) => Reply::err(format!(
            "ERR unknown subcommand or wrong number of arguments for '{other}'. Try COMMAND HELP."
        )),
    }
}

pub fn config(node: &Node, argv: &[Vec<u8>]) -> Reply {
    match argv.get(1).map(|a| lower(a)).as_deref() {
        Some("get") if argv.len() >= 3 => Reply::Map(
            node.settings
                .get(&argv[2..])
                .into_iter()
                .map(|(k, v)| (Reply::bulk(k), Reply::bulk(v)))
                .collect(),
        ),
        Some("set") if argv.len() >= 4 => match node.settings.set(&argv[2..]) {
            Ok(()) => Reply::ok(),
            Err(e) => Reply::err(e),
        },
        Some("resetstat") if argv.len() == 2 => {
            crate::resp::reset_error_stats();
            Reply::ok()
        }
        Some("rewrite") if argv.len() == 2 => {
            Reply::err("ERR The server is running without a config file")
        }
        Some(sub) => Reply::err(format!(
            "ERR unknown subcommand or wrong number of arguments for '{sub}'. Try CONFIG HELP."
        )),
        None => crate::data::arity_err("config"),
    }
}

pub fn time(argv: &[Vec<u8>]) -> Reply {
    if argv.len() != 1 {
        return crate::data::arity_err("time");
    }
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Reply::Array(vec![
        Reply::bulk(d.as_secs().to_string()),
        Reply::bulk(d.subsec_micros().to_string()),
    ])
}

/// DEBUG set-disable-deny-scripts: scripts taken by this member may call DEBUG (carried
/// into the log with each script, `data::script::SCRIPT_OPTS`).
static SCRIPTS_MAY_DEBUG: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn scripts_may_debug() -> bool {
    SCRIPTS_MAY_DEBUG.load(std::sync::atomic::Ordering::Relaxed)
}

/// DEBUG: the subcommands the test suites and tools use that make sense here.
pub async fn debug(node: &Node, db: u32, argv: &[Vec<u8>]) -> Reply {
    let now = crate::node::now_ms();
    match argv.get(1).map(|a| lower(a)).as_deref() {
        Some("set-disable-deny-scripts") if argv.len() == 3 => {
            SCRIPTS_MAY_DEBUG.store(argv[2] != b"0", std::sync::atomic::Ordering::Relaxed);
            Reply::ok()
        }
        Some("protocol") if argv.len() == 3 => crate::data::debug_protocol(&argv[2]),
        // Data is always durable (the Raft log and snapshots): a reload changes nothing.
        Some("reload") | Some("loadaof") | Some("set-active-expire") | Some("change-repl-id") => {
            Reply::ok()
        }
        // Tuning knobs of Redis's own list nodes, which this server does not have.
        Some("quicklist-packed-threshold") | Some("listpack-entries") => Reply::ok(),
        Some("sleep") if argv.len() == 3 => {
            let secs = String::from_utf8_lossy(&argv[2])
                .parse::<f64>()
                .unwrap_or(0.0);
            tokio::time::sleep(std::time::Duration::from_secs_f64(secs.clamp(0.0, 3600.0))).await;
            Reply::ok()
        }
        Some("object") if argv.len() == 3 => {
            // As Redis's, DEBUG OBJECT sees a key until it is reclaimed, expired or not.
            let now = 0;
            let limits = node.settings.limits();
            node.sm.read(|g| {
                let d = &g.tables.dbs[db as usize];
                match d.object(&[b"OBJECT".to_vec(), b"ENCODING".to_vec(), argv[2].clone()], now, &limits) {
                    Reply::Bulk(enc) => Reply::Simple(format!(
                        "Value at:0x0 refcount:1 encoding:{} serializedlength:{} lru:0 lru_seconds_idle:0 ql_nodes:1",
                        String::from_utf8_lossy(&enc),
                        d.memory_usage(&argv[2], now).unwrap_or(0)
                    )),
                    _ => Reply::err("ERR no such key"),
                }
            })
        }
        Some("digest") if argv.len() == 2 => {
            Reply::Simple(node.sm.read(|g| crate::data::digest(&g.tables, now)))
        }
        Some("digest-value") => node.sm.read(|g| {
            let d = &g.tables.dbs[db as usize];
            Reply::Array(
                argv[2..]
                    .iter()
                    .map(|k| Reply::Simple(d.digest_value(k, now)))
                    .collect(),
            )
        }),
        _ => Reply::err("ERR DEBUG subcommand not supported by this server"),
    }
}

/// The process's resident set size (INFO memory's used_memory).
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map(|pages| pages * 4096)
        .unwrap_or(0)
}
