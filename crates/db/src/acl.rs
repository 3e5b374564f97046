//! ACL users the Redis way: users with passwords (kept as SHA-256 only), key and channel
//! patterns, and the commands and categories they may run, in Redis's rule grammar
//! (`on >pass ~cache:* &news +@read -keys`).
//!
//! Two sources of users: the node's configuration (the cluster file's `[db]` section, the
//! same on every member: the base, never changed at run time) and ACL SETUSER/DELUSER, which
//! go through the Raft log and are applied by the state machine (`Users`, part of the
//! snapshot), so every member holds the same users. A configured user shadows a replicated
//! one of the same name, and SETUSER/DELUSER of a configured user are refused.
//!
//! Categories are derived from the command table (class, group, blocking) plus short lists
//! (fast, dangerous, admin, the server's own commands), not stored per row.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::data::{Class, Group, glob_match, is_blocking, spec};
use crate::resp::Reply;

/// The internal command that carries ACL SETUSER/DELUSER through the log
/// (`[ACL_WRITE, SETUSER|DELUSER, args…]`, proposed by the server only).
pub const ACL_WRITE: &[u8] = b"\0citadel-acl";

/// A script run by a user who may not do everything, as the log carries it:
/// `[AS_CALLER, user name, the user's key/channel/command rules, EVAL|FCALL…]`. Every member
/// checks each `redis.call` of the script against those rules at apply time, as Redis checks
/// a script's calls against its caller; the rules travel with the entry, so the check is
/// the same everywhere whatever happens to the user later.
pub const AS_CALLER: &[u8] = b"\0citadel-as";

/// The rules `AS_CALLER` carries for `user` (no passwords: a check needs none).
pub fn caller_rules(user: &User) -> String {
    format!(
        "{} {} {}",
        user.keys_text(),
        user.channels_text(),
        user.commands_text()
    )
}

/// The permissions an `AS_CALLER` entry names.
pub fn caller_perms(name: &[u8], rules: &[u8]) -> Perms {
    let mut user = User::new(&String::from_utf8_lossy(name));
    let words: Vec<&[u8]> = rules
        .split(|b| *b == b' ')
        .filter(|w| !w.is_empty())
        .collect();
    // Rules written by `caller_rules` from a valid user: they parse.
    let _ = user.apply_rules(&words);
    Perms::new(user)
}

/// Bumped whenever the replicated users may have changed (an applied SETUSER/DELUSER, a
/// snapshot installed or loaded): connections re-read their user when it moves.
static GEN: AtomicU64 = AtomicU64::new(1);

pub fn generation() -> u64 {
    GEN.load(Ordering::Acquire)
}

pub fn bump() {
    GEN.fetch_add(1, Ordering::AcqRel);
}

// ---------------------------------------------------------------------------------------
// Categories

/// Redis's ACL categories, in Redis's order (ACL CAT).
pub const CATEGORIES: &[&str] = &[
    "keyspace",
    "read",
    "write",
    "set",
    "sortedset",
    "list",
    "hash",
    "string",
    "bitmap",
    "hyperloglog",
    "geo",
    "stream",
    "pubsub",
    "admin",
    "fast",
    "slow",
    "blocking",
    "dangerous",
    "connection",
    "transaction",
    "scripting",
];

fn cat_bit(name: &str) -> Option<u32> {
    CATEGORIES
        .iter()
        .position(|c| *c == name)
        .map(|i| 1u32 << i)
}

fn bits(cats: &str) -> u32 {
    cats.split_whitespace()
        .filter_map(cat_bit)
        .fold(0, |a, b| a | b)
}

/// Commands the server answers itself (not in the data command table), with their
/// categories. `NAME|SUB` rows are subcommands checked one by one (ACL, CLIENT).
const SERVER: &[(&str, &str)] = &[
    ("PING", "fast connection"),
    ("ECHO", "fast connection"),
    ("QUIT", "fast connection"),
    ("AUTH", "fast connection"),
    ("HELLO", "fast connection"),
    ("SELECT", "fast connection"),
    ("RESET", "fast connection"),
    ("READONLY", "fast connection"),
    ("READWRITE", "fast connection"),
    ("COMMAND", "slow connection"),
    ("CLIENT", "slow"),
    ("CLIENT|ID", "slow connection"),
    ("CLIENT|SETNAME", "slow connection"),
    ("CLIENT|GETNAME", "slow connection"),
    ("CLIENT|INFO", "slow connection"),
    ("CLIENT|SETINFO", "slow connection"),
    ("CLIENT|NO-TOUCH", "slow connection"),
    ("CLIENT|HELP", "slow connection"),
    ("CLIENT|LIST", "admin slow dangerous connection"),
    ("CLIENT|KILL", "admin slow dangerous connection"),
    ("CLIENT|NO-EVICT", "admin slow dangerous connection"),
    ("CONFIG", "admin slow dangerous"),
    ("DEBUG", "admin slow dangerous"),
    ("INFO", "slow dangerous"),
    ("TIME", "fast"),
    ("LASTSAVE", "admin fast dangerous"),
    ("SAVE", "admin slow dangerous"),
    ("BGSAVE", "admin slow dangerous"),
    ("BGREWRITEAOF", "admin slow dangerous"),
    ("SYNC", "admin slow dangerous"),
    ("PFSELFTEST", "hyperloglog admin slow dangerous"),
    ("PSYNC", "admin slow dangerous"),
    ("REPLCONF", "admin slow dangerous"),
    ("MULTI", "fast transaction"),
    ("DISCARD", "fast transaction"),
    ("EXEC", "slow transaction"),
    ("WATCH", "fast transaction"),
    ("UNWATCH", "fast transaction"),
    ("SUBSCRIBE", "pubsub slow"),
    ("PSUBSCRIBE", "pubsub slow"),
    ("UNSUBSCRIBE", "pubsub slow"),
    ("PUNSUBSCRIBE", "pubsub slow"),
    ("PUBLISH", "pubsub fast"),
    ("PUBSUB", "pubsub slow"),
    ("EVALSHA", "slow scripting"),
    ("EVALSHA_RO", "slow scripting"),
    ("ACL", "slow"),
    ("ACL|CAT", "slow"),
    ("ACL|WHOAMI", "slow"),
    ("ACL|GENPASS", "slow"),
    ("ACL|HELP", "slow"),
    ("ACL|SETUSER", "admin slow dangerous"),
    ("ACL|GETUSER", "admin slow dangerous"),
    ("ACL|DELUSER", "admin slow dangerous"),
    ("ACL|LIST", "admin slow dangerous"),
    ("ACL|USERS", "admin slow dangerous"),
    ("ACL|DRYRUN", "admin slow dangerous"),
    ("ACL|LOG", "admin slow dangerous"),
    ("ACL|SAVE", "admin slow dangerous"),
    ("ACL|LOAD", "admin slow dangerous"),
];

/// Containers whose subcommands are checked one by one (the `NAME|SUB` rows above).
fn split_container(name: &str) -> bool {
    matches!(name, "ACL" | "CLIENT")
}

/// Data commands Redis counts as @fast (O(1) or O(log N)); every other one is @slow.
const FAST: &[&str] = &[
    "GET",
    "GETDEL",
    "GETEX",
    "GETSET",
    "SETNX",
    "STRLEN",
    "APPEND",
    "INCR",
    "DECR",
    "INCRBY",
    "DECRBY",
    "INCRBYFLOAT",
    "MGET",
    "GETBIT",
    "SETBIT",
    "PFADD",
    "HGET",
    "HMGET",
    "HSET",
    "HMSET",
    "HSETNX",
    "HDEL",
    "HINCRBY",
    "HINCRBYFLOAT",
    "HLEN",
    "HEXISTS",
    "HSTRLEN",
    "LLEN",
    "LPUSH",
    "RPUSH",
    "LPUSHX",
    "RPUSHX",
    "LPOP",
    "RPOP",
    "SCARD",
    "SISMEMBER",
    "SMISMEMBER",
    "SADD",
    "SREM",
    "SPOP",
    "SMOVE",
    "ZCARD",
    "ZSCORE",
    "ZMSCORE",
    "ZRANK",
    "ZREVRANK",
    "ZADD",
    "ZINCRBY",
    "ZREM",
    "ZCOUNT",
    "ZLEXCOUNT",
    "ZPOPMIN",
    "ZPOPMAX",
    "EXISTS",
    "TYPE",
    "TTL",
    "PTTL",
    "EXPIRE",
    "PEXPIRE",
    "EXPIREAT",
    "PEXPIREAT",
    "PERSIST",
    "TOUCH",
    "EXPIRETIME",
    "PEXPIRETIME",
    "DBSIZE",
    "SWAPDB",
    "XLEN",
    "XADD",
    "XACK",
    "XDEL",
];

/// Data commands in @dangerous (and those of them also in @admin).
const DANGEROUS: &[&str] = &[
    "FLUSHDB",
    "FLUSHALL",
    "SWAPDB",
    "KEYS",
    "SORT",
    "SORT_RO",
    "RESTORE",
    "PFDEBUG",
    "PFSELFTEST",
];
const ADMIN: &[&str] = &["PFDEBUG", "PFSELFTEST"];

/// The categories of a command id (`GET`, `ACL|SETUSER`), as a bit set.
pub fn categories_of(id: &str) -> u32 {
    if let Some(&(_, c)) = SERVER.iter().find(|(n, _)| *n == id) {
        return bits(c);
    }
    let Some(s) = spec(id) else {
        return 0;
    };
    let mut b = 0;
    let scripting = matches!(
        id,
        "EVAL" | "EVAL_RO" | "FCALL" | "FCALL_RO" | "SCRIPT" | "FUNCTION"
    );
    if scripting {
        b |= bits("scripting");
    } else if id == "PFCOUNT" || s.class == Class::Read {
        b |= bits("read");
    } else {
        b |= bits("write");
    }
    b |= match s.group {
        Group::Str => bits("string"),
        Group::Hash => bits("hash"),
        Group::List => bits("list"),
        Group::Set => bits("set"),
        Group::ZSet => bits("sortedset"),
        Group::Bits => bits("bitmap"),
        Group::Hll => bits("hyperloglog"),
        Group::Keys if id.starts_with("SORT") => bits("set sortedset list"),
        Group::Keys if id == "MEMORY" => 0,
        Group::Keys | Group::Tables if !scripting => bits("keyspace"),
        _ if id.starts_with('X') => bits("stream"),
        _ => 0,
    };
    if is_blocking(id) || id == "XREAD" || id == "XREADGROUP" {
        b |= bits("blocking");
    }
    if DANGEROUS.contains(&id) {
        b |= bits("dangerous");
    }
    if ADMIN.contains(&id) {
        b |= bits("admin");
    }
    b |= if FAST.contains(&id) {
        bits("fast")
    } else {
        bits("slow")
    };
    b
}

/// Every command id the server knows: the data table's and the server's own.
pub fn all_ids() -> Vec<&'static str> {
    let mut v: BTreeSet<&'static str> = crate::data::all_commands().map(|(n, _)| n).collect();
    v.extend(SERVER.iter().map(|(n, _)| *n));
    v.into_iter().collect()
}

/// Command names in a category, lower case, subcommands as `acl|setuser` (ACL CAT cat).
pub fn commands_in(cat: &str) -> Option<Vec<String>> {
    let bit = cat_bit(cat)?;
    Some(
        all_ids()
            .into_iter()
            .filter(|id| categories_of(id) & bit != 0)
            .map(|id| id.to_ascii_lowercase())
            .collect(),
    )
}

/// The categories of a command, as `@name` (COMMAND INFO's ACL categories).
pub fn category_names(id: &str) -> Vec<String> {
    let b = categories_of(id);
    CATEGORIES
        .iter()
        .enumerate()
        .filter(|(i, _)| b & (1 << i) != 0)
        .map(|(_, c)| format!("@{c}"))
        .collect()
}

// ---------------------------------------------------------------------------------------
// Users and rules

/// One key pattern with its access (`~p` = both, `%R~p` read, `%W~p` write).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyPattern {
    pub pattern: Vec<u8>,
    pub read: bool,
    pub write: bool,
}

/// A user as its rules left it (what the log and snapshots carry).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub name: String,
    pub enabled: bool,
    pub nopass: bool,
    /// SHA-256 of each password, lower-case hex.
    pub passwords: BTreeSet<String>,
    pub keys: Vec<KeyPattern>,
    pub channels: Vec<Vec<u8>>,
    /// Command rules in order (`+@all`, `-flushdb`, `+config|get`), after the last
    /// `+@all`/`-@all` (which reset everything before them).
    pub commands: Vec<String>,
}

pub fn sha256_hex(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

fn rule_err(rule: &[u8], why: &str) -> String {
    format!(
        "ERR Error in ACL SETUSER modifier '{}': {why}",
        String::from_utf8_lossy(rule)
    )
}

const UNKNOWN_CMD: &str = "Unknown command or category name in ACL";
const SYNTAX: &str = "Syntax error";

impl User {
    /// A new user as Redis makes one: off, no passwords, no keys or channels, no commands.
    pub fn new(name: &str) -> User {
        User {
            name: name.to_string(),
            enabled: false,
            nopass: false,
            passwords: BTreeSet::new(),
            keys: Vec::new(),
            channels: Vec::new(),
            commands: vec!["-@all".into()],
        }
    }

    /// Applies rules in order; on an error nothing is changed.
    pub fn apply_rules<R: AsRef<[u8]>>(&mut self, rules: &[R]) -> Result<(), String> {
        let mut u = self.clone();
        for r in rules {
            u.apply(r.as_ref())?;
        }
        *self = u;
        Ok(())
    }

    /// Applies one rule.
    pub fn apply(&mut self, rule: &[u8]) -> Result<(), String> {
        let text = String::from_utf8_lossy(rule);
        let lower = text.to_ascii_lowercase();
        match lower.as_str() {
            "on" => self.enabled = true,
            "off" => self.enabled = false,
            "nopass" => {
                self.nopass = true;
                self.passwords.clear();
            }
            "resetpass" => {
                self.nopass = false;
                self.passwords.clear();
            }
            "allkeys" => return self.apply(b"~*"),
            "resetkeys" => self.keys.clear(),
            "allchannels" => return self.apply(b"&*"),
            "resetchannels" => self.channels.clear(),
            "allcommands" => return self.apply(b"+@all"),
            "nocommands" => return self.apply(b"-@all"),
            "reset" => {
                for r in ["resetpass", "resetkeys", "resetchannels", "off", "-@all"] {
                    self.apply(r.as_bytes())?;
                }
            }
            _ => match rule.first() {
                Some(b'>') => {
                    self.passwords.insert(sha256_hex(&rule[1..]));
                    self.nopass = false;
                }
                Some(b'<') => {
                    if !self.passwords.remove(&sha256_hex(&rule[1..])) {
                        return Err(rule_err(
                            rule,
                            "The password you are trying to remove from the user does not exist",
                        ));
                    }
                }
                Some(b'#') | Some(b'!') => {
                    let h = &text[1..];
                    if h.len() != 64 || !h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
                        return Err(rule_err(
                            rule,
                            "The password hash must be exactly 64 characters and contain only lowercase hexadecimal characters",
                        ));
                    }
                    if rule[0] == b'#' {
                        self.passwords.insert(h.to_string());
                        self.nopass = false;
                    } else if !self.passwords.remove(h) {
                        return Err(rule_err(
                            rule,
                            "The password you are trying to remove from the user does not exist",
                        ));
                    }
                }
                Some(b'~') => self.add_keys(rule, &rule[1..], true, true)?,
                Some(b'%') => {
                    let Some(t) = rule.iter().position(|&b| b == b'~') else {
                        return Err(rule_err(rule, SYNTAX));
                    };
                    let (mut read, mut write) = (false, false);
                    for &f in &rule[1..t] {
                        match f.to_ascii_uppercase() {
                            b'R' => read = true,
                            b'W' => write = true,
                            _ => return Err(rule_err(rule, SYNTAX)),
                        }
                    }
                    if !read && !write {
                        return Err(rule_err(rule, SYNTAX));
                    }
                    self.add_keys(rule, &rule[t + 1..], read, write)?;
                }
                Some(b'&') => {
                    let p = rule[1..].to_vec();
                    if self.channels.iter().any(|c| c == b"*") && p != b"*" {
                        return Err(rule_err(
                            rule,
                            "Adding a pattern after the * pattern (or the 'allchannels' flag) is not valid and does not have any effect. Try 'resetchannels' to start with an empty list of channels",
                        ));
                    }
                    if p == b"*" {
                        self.channels = vec![p];
                    } else if !self.channels.contains(&p) {
                        self.channels.push(p);
                    }
                }
                Some(b'+') | Some(b'-') => self.add_command_rule(rule, &lower)?,
                _ => return Err(rule_err(rule, SYNTAX)),
            },
        }
        Ok(())
    }

    fn add_keys(&mut self, rule: &[u8], pat: &[u8], read: bool, write: bool) -> Result<(), String> {
        if self
            .keys
            .iter()
            .any(|k| k.pattern == b"*" && k.read && k.write)
            && !(pat == b"*" && read && write)
        {
            return Err(rule_err(
                rule,
                "Adding a pattern after the * pattern (or the 'allkeys' flag) is not valid and does not have any effect. Try 'resetkeys' to start with an empty list of patterns",
            ));
        }
        if pat == b"*" && read && write {
            self.keys = vec![KeyPattern {
                pattern: pat.to_vec(),
                read,
                write,
            }];
            return Ok(());
        }
        match self.keys.iter_mut().find(|k| k.pattern == pat) {
            Some(k) => {
                k.read |= read;
                k.write |= write;
            }
            None => self.keys.push(KeyPattern {
                pattern: pat.to_vec(),
                read,
                write,
            }),
        }
        Ok(())
    }

    fn add_command_rule(&mut self, rule: &[u8], lower: &str) -> Result<(), String> {
        let body = &lower[1..];
        if let Some(cat) = body.strip_prefix('@') {
            if cat != "all" && cat_bit(cat).is_none() {
                return Err(rule_err(rule, UNKNOWN_CMD));
            }
            if cat == "all" {
                self.commands.clear();
            }
        } else {
            let (cmd, sub) = match body.split_once('|') {
                Some((c, s)) => (c, Some(s)),
                None => (body, None),
            };
            let up = cmd.to_ascii_uppercase();
            if !all_ids().contains(&up.as_str())
                || sub.is_some_and(|s| s.is_empty() || s.contains('|'))
            {
                return Err(rule_err(rule, UNKNOWN_CMD));
            }
            if let Some(s) = sub
                && split_container(&up)
                && !all_ids().contains(&format!("{up}|{}", s.to_ascii_uppercase()).as_str())
            {
                return Err(rule_err(rule, UNKNOWN_CMD));
            }
        }
        self.commands.push(lower.to_string());
        Ok(())
    }

    /// The user as ACL LIST prints it (`user default on nopass ~* &* +@all`).
    pub fn describe(&self) -> String {
        let mut s = format!(
            "user {} {}",
            self.name,
            if self.enabled { "on" } else { "off" }
        );
        if self.nopass {
            s.push_str(" nopass");
        }
        for p in &self.passwords {
            s.push_str(&format!(" #{p}"));
        }
        let keys = self.keys_text();
        if !keys.is_empty() {
            s.push(' ');
            s.push_str(&keys);
        }
        s.push(' ');
        s.push_str(&self.channels_text());
        s.push(' ');
        s.push_str(&self.commands_text());
        s
    }

    pub fn keys_text(&self) -> String {
        self.keys
            .iter()
            .map(|k| {
                let p = String::from_utf8_lossy(&k.pattern);
                match (k.read, k.write) {
                    (true, true) => format!("~{p}"),
                    (true, false) => format!("%R~{p}"),
                    _ => format!("%W~{p}"),
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    pub fn channels_text(&self) -> String {
        if self.channels.is_empty() {
            return "resetchannels".into();
        }
        self.channels
            .iter()
            .map(|c| format!("&{}", String::from_utf8_lossy(c)))
            .collect::<Vec<_>>()
            .join(" ")
    }

    pub fn commands_text(&self) -> String {
        let mut v = self.commands.clone();
        if !v.first().is_some_and(|c| c == "+@all" || c == "-@all") {
            v.insert(0, "-@all".into());
        }
        v.join(" ")
    }

    /// ACL GETUSER's reply.
    pub fn getuser(&self) -> Reply {
        let mut flags = vec![Reply::bulk(if self.enabled { "on" } else { "off" })];
        if self.nopass {
            flags.push(Reply::bulk("nopass"));
        }
        flags.push(Reply::bulk("sanitize-payload"));
        Reply::Map(vec![
            (Reply::bulk("flags"), Reply::Array(flags)),
            (
                Reply::bulk("passwords"),
                Reply::Array(self.passwords.iter().map(Reply::bulk).collect()),
            ),
            (Reply::bulk("commands"), Reply::bulk(self.commands_text())),
            (Reply::bulk("keys"), Reply::bulk(self.keys_text())),
            (Reply::bulk("channels"), Reply::bulk(self.channels_text())),
            (Reply::bulk("selectors"), Reply::Array(Vec::new())),
        ])
    }

    pub fn check_password(&self, pass: &[u8]) -> bool {
        self.enabled && (self.nopass || self.passwords.contains(&sha256_hex(pass)))
    }
}

/// A user name as Redis accepts it (no spaces or control characters).
pub fn valid_name(name: &[u8]) -> bool {
    !name.is_empty() && name.iter().all(|&b| b > b' ' && b != 0x7f)
}

/// The replicated users (ACL SETUSER/DELUSER through the log), in the state machine.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Users(pub BTreeMap<String, User>);

impl Users {
    /// Applies `[SETUSER name rules…]` or `[DELUSER names…]` from the log.
    pub fn apply(&mut self, argv: &[Vec<u8>]) -> Reply {
        bump();
        let sub = argv
            .first()
            .map(|a| String::from_utf8_lossy(a).to_ascii_uppercase())
            .unwrap_or_default();
        match sub.as_str() {
            "SETUSER" if argv.len() >= 2 => {
                if !valid_name(&argv[1]) {
                    return Reply::err("ERR Usernames can't contain spaces or null characters");
                }
                let name = String::from_utf8_lossy(&argv[1]).into_owned();
                let mut u = self
                    .0
                    .get(&name)
                    .cloned()
                    .unwrap_or_else(|| User::new(&name));
                match u.apply_rules(&argv[2..]) {
                    Ok(()) => {
                        self.0.insert(name, u);
                        Reply::ok()
                    }
                    Err(e) => Reply::err(e),
                }
            }
            "DELUSER" => Reply::Int(
                argv[1..]
                    .iter()
                    .filter(|n| self.0.remove(&*String::from_utf8_lossy(n)).is_some())
                    .count() as i64,
            ),
            _ => Reply::err("ERR unknown ACL write"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Compiled permissions

/// A user's rules turned into what a check needs.
#[derive(Debug)]
pub struct Perms {
    pub user: User,
    /// Command ids allowed (`GET`, `ACL|WHOAMI`, `CONFIG|GET`).
    allowed: HashSet<String>,
    /// `CMD|sub` denied while `CMD` is allowed (containers not split in the table).
    denied_subs: HashSet<String>,
    all_keys: bool,
    all_channels: bool,
    /// Every command, every key, every channel: no check needed.
    pub everything: bool,
}

impl Perms {
    pub fn new(user: User) -> Perms {
        let ids = all_ids();
        let mut allowed: HashSet<String> = HashSet::new();
        let mut denied_subs: HashSet<String> = HashSet::new();
        let subs_of = |cmd: &str| -> Vec<&'static str> {
            let prefix = format!("{cmd}|");
            ids.iter()
                .copied()
                .filter(|i| i.starts_with(&prefix))
                .collect()
        };
        for rule in user.commands_text().split_whitespace() {
            let add = rule.starts_with('+');
            let body = rule[1..].to_ascii_uppercase();
            if let Some(cat) = body.strip_prefix('@') {
                let cat = cat.to_ascii_lowercase();
                let bit = if cat == "all" {
                    u32::MAX
                } else {
                    cat_bit(&cat).unwrap_or(0)
                };
                for id in ids
                    .iter()
                    .filter(|id| categories_of(id) & bit != 0 || bit == u32::MAX)
                {
                    if add {
                        allowed.insert(id.to_string());
                        denied_subs.retain(|d| !d.starts_with(&format!("{id}|")));
                    } else {
                        allowed.remove(*id);
                    }
                }
                if bit == u32::MAX && !add {
                    allowed.clear();
                    denied_subs.clear();
                }
            } else if let Some((cmd, _)) = body.split_once('|') {
                if add {
                    denied_subs.remove(&body);
                    allowed.insert(body.clone());
                } else {
                    allowed.remove(&body);
                    if !split_container(cmd) && allowed.contains(cmd) {
                        denied_subs.insert(body.clone());
                    }
                }
            } else {
                let prefix = format!("{body}|");
                denied_subs.retain(|d| !d.starts_with(&prefix));
                allowed.retain(|a| !a.starts_with(&prefix));
                let subs = subs_of(&body);
                if add {
                    allowed.insert(body.clone());
                    allowed.extend(subs.iter().map(|s| s.to_string()));
                } else {
                    allowed.remove(&body);
                }
            }
        }
        let all_keys = user
            .keys
            .iter()
            .any(|k| k.pattern == b"*" && k.read && k.write);
        let all_channels = user.channels.iter().any(|c| c == b"*");
        let everything = all_keys
            && all_channels
            && denied_subs.is_empty()
            && ids.iter().all(|id| allowed.contains(*id));
        Perms {
            user,
            allowed,
            denied_subs,
            all_keys,
            all_channels,
            everything,
        }
    }

    /// May the user run this command (upper-case name, its first argument)?
    pub fn may_run(&self, name: &str, first_arg: Option<&[u8]>) -> bool {
        if self.everything {
            return true;
        }
        // `NAME|SUB`, built only when a rule can depend on it (not for every GET's key).
        let id = || {
            first_arg.map(|a| format!("{name}|{}", String::from_utf8_lossy(a).to_ascii_uppercase()))
        };
        if split_container(name)
            && let Some(id) = id()
            && SERVER.iter().any(|(n, _)| *n == id)
        {
            return self.allowed.contains(&id);
        }
        if self.allowed.contains(name) {
            return self.denied_subs.is_empty()
                || id().is_none_or(|id| !self.denied_subs.contains(&id));
        }
        id().is_some_and(|id| self.allowed.contains(&id))
    }

    /// May the user touch this key (for reading, writing or both)?
    pub fn may_key(&self, key: &[u8], read: bool, write: bool) -> bool {
        if self.all_keys {
            return true;
        }
        let (mut r, mut w) = (!read, !write);
        for k in &self.user.keys {
            if glob_match(&k.pattern, key) {
                r |= k.read;
                w |= k.write;
                if r && w {
                    return true;
                }
            }
        }
        false
    }

    /// May the user publish to / subscribe to this channel (pattern: PSUBSCRIBE's, which
    /// must be one of the user's patterns literally)?
    pub fn may_channel(&self, channel: &[u8], pattern: bool) -> bool {
        if self.all_channels {
            return true;
        }
        self.user.channels.iter().any(|c| {
            if pattern {
                c == channel
            } else {
                glob_match(c, channel)
            }
        })
    }
}

/// Write commands that also return or read what they touch (Redis's ACCESS key flag): they
/// need read access to their keys as well as write access.
const READ_WRITES: &[&str] = &[
    "GETSET",
    "GETDEL",
    "GETEX",
    "INCR",
    "DECR",
    "INCRBY",
    "DECRBY",
    "INCRBYFLOAT",
    "HINCRBY",
    "HINCRBYFLOAT",
    "LPOP",
    "RPOP",
    "LMPOP",
    "BLPOP",
    "BRPOP",
    "BLMPOP",
    "RPOPLPUSH",
    "LMOVE",
    "BRPOPLPUSH",
    "BLMOVE",
    "SPOP",
    "SMOVE",
    "SINTERSTORE",
    "SUNIONSTORE",
    "SDIFFSTORE",
    "ZPOPMIN",
    "ZPOPMAX",
    "ZMPOP",
    "BZPOPMIN",
    "BZPOPMAX",
    "BZMPOP",
    "ZINCRBY",
    "ZUNIONSTORE",
    "ZINTERSTORE",
    "ZDIFFSTORE",
    "ZRANGESTORE",
    "BITOP",
    "PFCOUNT",
    "PFMERGE",
    "SORT",
    "RENAME",
    "RENAMENX",
    "COPY",
    "MOVE",
    "EVAL",
    "EVAL_RO",
    "FCALL",
    "FCALL_RO",
    "XREADGROUP",
    "XAUTOCLAIM",
    "XCLAIM",
    "LSET",
    "LINSERT",
    "SETRANGE",
    "APPEND",
];

/// The key arguments of a command, for permission checks (counted-key commands read their
/// count; scripts their `numkeys`).
pub fn keys_for_check<'a>(name: &str, argv: &'a [Vec<u8>]) -> Vec<&'a [u8]> {
    let counted = |at: usize, from: usize| -> Vec<&'a [u8]> {
        let n = argv
            .get(at)
            .and_then(|a| std::str::from_utf8(a).ok())
            .and_then(|s| s.parse::<usize>().ok())
            .unwrap_or(0);
        argv.iter()
            .skip(from)
            .take(n)
            .map(|k| k.as_slice())
            .collect()
    };
    match name {
        "EVAL" | "EVAL_RO" | "EVALSHA" | "EVALSHA_RO" | "FCALL" | "FCALL_RO" => counted(2, 3),
        "ZUNIONSTORE" | "ZINTERSTORE" | "ZDIFFSTORE" => {
            let mut v: Vec<&[u8]> = argv.get(1).map(|k| k.as_slice()).into_iter().collect();
            v.extend(counted(2, 3));
            v
        }
        "BLMPOP" | "BZMPOP" => counted(2, 3),
        _ if spec(name).is_some_and(|s| s.numkeys) => counted(1, 2),
        _ => crate::data::keys_of(name, argv),
    }
}

/// Why a user may not run a command (the NOPERM error), or `None` when it may.
pub fn check(p: &Perms, name: &str, argv: &[Vec<u8>]) -> Option<Reply> {
    if p.everything || matches!(name, "AUTH" | "HELLO" | "QUIT") {
        return None;
    }
    if !p.may_run(name, argv.get(1).map(|a| a.as_slice())) {
        let shown = if split_container(name) && argv.len() > 1 {
            format!("{}|{}", name, String::from_utf8_lossy(&argv[1])).to_ascii_lowercase()
        } else {
            name.to_ascii_lowercase()
        };
        return Some(Reply::err(format!(
            "NOPERM User {} has no permissions to run the '{shown}' command",
            p.user.name
        )));
    }
    if !p.all_keys {
        let class = spec(name).map(|s| s.class);
        let (read, write) = match class {
            Some(Class::Read) => (true, false),
            Some(Class::Write) => (READ_WRITES.contains(&name), true),
            None if name.starts_with("EVALSHA") => (true, true),
            None => (false, false),
        };
        if (read || write)
            && keys_for_check(name, argv)
                .into_iter()
                .any(|k| !p.may_key(k, read, write))
        {
            return Some(Reply::err("NOPERM No permissions to access a key"));
        }
    }
    if !p.all_channels {
        let denied = match name {
            "PUBLISH" => argv.get(1).is_some_and(|c| !p.may_channel(c, false)),
            "SUBSCRIBE" => argv[1..].iter().any(|c| !p.may_channel(c, false)),
            "PSUBSCRIBE" => argv[1..].iter().any(|c| !p.may_channel(c, true)),
            _ => false,
        };
        if denied {
            return Some(Reply::err("NOPERM No permissions to access a channel"));
        }
    }
    None
}

/// ACL DRYRUN's reply text for a denial (the error without its NOPERM code).
pub fn dryrun(p: &Perms, argv: &[Vec<u8>]) -> Reply {
    let name = String::from_utf8_lossy(&argv[0]).to_ascii_uppercase();
    if !all_ids().contains(&name.as_str()) {
        return Reply::err(format!(
            "ERR Command '{}' not found",
            String::from_utf8_lossy(&argv[0])
        ));
    }
    match check(p, &name, argv) {
        None => Reply::ok(),
        Some(Reply::Error(e)) => Reply::bulk(e.strip_prefix("NOPERM ").unwrap_or(&e)),
        Some(other) => other,
    }
}

// ---------------------------------------------------------------------------------------
// Configured users

/// A user from the node's configuration (the cluster file's `[db]` section).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub name: String,
    /// Its password (kept in memory as SHA-256 only).
    #[serde(default)]
    pub password: Option<String>,
    /// Rules in Redis's grammar, applied after `on` (and the password).
    #[serde(default)]
    pub rules: String,
}

impl UserConfig {
    /// The user these settings make: `on`, the password, then the rules.
    pub fn build(&self) -> Result<User, String> {
        if !valid_name(self.name.as_bytes()) {
            return Err(format!(
                "user name {:?}: must be non-empty, without spaces or control characters",
                self.name
            ));
        }
        let mut u = User::new(&self.name);
        u.apply(b"on")?;
        if let Some(p) = &self.password {
            let mut r = b">".to_vec();
            r.extend_from_slice(p.as_bytes());
            u.apply(&r)?;
        }
        let rules: Vec<&str> = self.rules.split_whitespace().collect();
        u.apply_rules(&rules).map_err(|e| {
            format!(
                "user `{}`: {}",
                self.name,
                e.strip_prefix("ERR Error in ACL SETUSER modifier ")
                    .map(|s| format!("rule {s}"))
                    .unwrap_or(e.clone())
            )
        })?;
        Ok(u)
    }
}

/// The users a node's configuration declares: its `users`, plus the `default` user when
/// they do not declare it — `on`, `password` (or `nopass` without one), `~* &* +@all`, and
/// `-@dangerous +info` as soon as any password or user is configured (with nothing
/// configured at all, every connection may do everything, as a fresh Redis). INFO stays
/// allowed: health and monitoring tools read it, and it changes nothing.
pub fn configured(password: Option<&str>, users: &[UserConfig]) -> Result<Vec<User>, String> {
    let mut out: Vec<User> = Vec::new();
    for u in users {
        if out.iter().any(|o| o.name == u.name) {
            return Err(format!("user `{}` is declared twice", u.name));
        }
        out.push(u.build()?);
    }
    if let Some(d) = users.iter().find(|u| u.name == "default") {
        if password.is_some() && d.password.is_some() {
            return Err(
                "the default user's password is given twice (`password` and the `default` user's `password`): keep one"
                    .into(),
            );
        }
        if let (Some(p), Some(u)) = (password, out.iter_mut().find(|u| u.name == "default")) {
            u.apply(format!(">{p}").as_bytes())?;
        }
    } else {
        let mut rules = "~* &* +@all".to_string();
        if password.is_some() || !users.is_empty() {
            rules.push_str(" -@dangerous +info");
        }
        let d = UserConfig {
            name: "default".into(),
            password: password.map(str::to_string),
            rules: if password.is_some() {
                rules
            } else {
                format!("nopass {rules}")
            },
        };
        out.insert(0, d.build()?);
    }
    Ok(out)
}

/// The users this member knows: configured ones first (they shadow replicated ones).
pub struct Directory {
    configured: Vec<Arc<Perms>>,
}

impl Directory {
    pub fn new(users: Vec<User>) -> Directory {
        Directory {
            configured: users.into_iter().map(|u| Arc::new(Perms::new(u))).collect(),
        }
    }

    pub fn configured(&self, name: &str) -> Option<&Arc<Perms>> {
        self.configured.iter().find(|p| p.user.name == name)
    }

    /// The user called `name`, configured or replicated.
    pub fn find(&self, replicated: &Users, name: &str) -> Option<Arc<Perms>> {
        if let Some(p) = self.configured(name) {
            return Some(p.clone());
        }
        replicated
            .0
            .get(name)
            .map(|u| Arc::new(Perms::new(u.clone())))
    }

    /// Every user, sorted by name.
    pub fn all(&self, replicated: &Users) -> Vec<User> {
        let mut m: BTreeMap<String, User> = replicated.0.clone();
        for p in &self.configured {
            m.insert(p.user.name.clone(), p.user.clone());
        }
        m.into_values().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(rules: &str) -> Perms {
        let mut u = User::new("u");
        let r: Vec<&str> = rules.split_whitespace().collect();
        u.apply_rules(&r).expect("rules");
        Perms::new(u)
    }

    fn argv(s: &str) -> Vec<Vec<u8>> {
        s.split_whitespace()
            .map(|a| a.as_bytes().to_vec())
            .collect()
    }

    fn denied(p: &Perms, cmd: &str) -> Option<String> {
        let a = argv(cmd);
        let name = String::from_utf8_lossy(&a[0]).to_ascii_uppercase();
        check(p, &name, &a).map(|r| match r {
            Reply::Error(e) => e,
            _ => String::new(),
        })
    }

    #[test]
    fn rules_parse_and_describe_as_redis() {
        let mut u = User::new("alice");
        assert_eq!(u.describe(), "user alice off resetchannels -@all");
        u.apply_rules(&[
            "on", ">secret", "~cache:*", "%R~ro:*", "&news", "+@read", "-keys",
        ])
        .expect("ok");
        assert_eq!(
            u.describe(),
            format!(
                "user alice on #{} ~cache:* %R~ro:* &news -@all +@read -keys",
                sha256_hex(b"secret")
            )
        );
        assert!(u.check_password(b"secret"));
        assert!(!u.check_password(b"other"));
        u.apply_rules(&["allkeys", "allchannels", "allcommands", "nopass"])
            .expect("ok");
        assert_eq!(u.describe(), "user alice on nopass ~* &* +@all");
        assert!(u.check_password(b"anything"));
        u.apply(b"reset").expect("reset");
        assert_eq!(u.describe(), "user alice off resetchannels -@all");
        assert!(!u.check_password(b"anything"));
        let h = sha256_hex(b"pw");
        u.apply_rules(&["on", &format!("#{h}")]).expect("hash");
        assert!(u.check_password(b"pw"));
        u.apply(format!("!{h}").as_bytes()).expect("remove hash");
        assert!(!u.check_password(b"pw"));
    }

    #[test]
    fn bad_rules_are_refused_with_redis_errors_and_change_nothing() {
        let mut u = User::new("bob");
        let e = u.apply_rules(&["on", "+nosuchcmd"]).expect_err("unknown");
        assert_eq!(
            e,
            "ERR Error in ACL SETUSER modifier '+nosuchcmd': Unknown command or category name in ACL"
        );
        assert!(!u.enabled, "a failed SETUSER changes nothing");
        assert!(
            u.apply(b"+@nosuchcat")
                .unwrap_err()
                .contains("Unknown command or category")
        );
        assert!(u.apply(b"bogus").unwrap_err().ends_with("Syntax error"));
        assert!(
            u.apply(b"#abc")
                .unwrap_err()
                .contains("exactly 64 characters")
        );
        assert!(u.apply(b"<nothere").unwrap_err().contains("does not exist"));
        assert!(u.apply(b"%X~k").unwrap_err().ends_with("Syntax error"));
        u.apply(b"allkeys").expect("allkeys");
        assert!(u.apply(b"~foo").unwrap_err().contains("'allkeys'"));
        assert!(u.apply(b"+acl|nosuchsub").is_err());
        u.apply(b"+config|get").expect("sub of a container");
    }

    #[test]
    fn categories_come_from_the_table() {
        let cats = |id: &str| category_names(id).join(" ");
        assert_eq!(cats("GET"), "@read @string @fast");
        assert_eq!(cats("SET"), "@write @string @slow");
        assert_eq!(cats("LPUSH"), "@write @list @fast");
        assert_eq!(cats("BLPOP"), "@write @list @slow @blocking");
        assert_eq!(cats("FLUSHALL"), "@keyspace @write @slow @dangerous");
        assert_eq!(cats("KEYS"), "@keyspace @read @slow @dangerous");
        assert_eq!(cats("EVAL"), "@slow @scripting");
        assert_eq!(cats("PUBLISH"), "@pubsub @fast");
        assert_eq!(cats("ACL|SETUSER"), "@admin @slow @dangerous");
        assert_eq!(cats("ACL|WHOAMI"), "@slow");
        assert_eq!(cats("MULTI"), "@fast @transaction");
        let hll = commands_in("hyperloglog").expect("cat");
        assert!(hll.contains(&"pfadd".to_string()) && hll.contains(&"pfmerge".to_string()));
        assert!(commands_in("nosuch").is_none());
        for c in CATEGORIES {
            if *c != "geo" && *c != "stream" {
                assert!(!commands_in(c).expect("cat").is_empty(), "@{c} is empty");
            }
        }
    }

    #[test]
    fn command_key_and_channel_checks() {
        let all = user("on nopass ~* &* +@all");
        assert!(all.everything);
        assert_eq!(denied(&all, "FLUSHALL"), None);

        let app = user("on ~* &* +@all -@dangerous");
        assert!(!app.everything);
        assert_eq!(
            denied(&app, "FLUSHALL").as_deref(),
            Some("NOPERM User u has no permissions to run the 'flushall' command")
        );
        assert_eq!(denied(&app, "GET k"), None);
        assert_eq!(denied(&app, "ACL WHOAMI"), None);
        assert_eq!(
            denied(&app, "ACL SETUSER x").as_deref(),
            Some("NOPERM User u has no permissions to run the 'acl|setuser' command")
        );
        assert_eq!(denied(&app, "CLIENT ID"), None);
        assert!(denied(&app, "CLIENT KILL ID 3").is_some());
        assert!(denied(&app, "CONFIG GET x").is_some());

        let ro = user("on %R~pub:* ~own:* +@read +@write -flushdb +config|get &chat:*");
        assert_eq!(denied(&ro, "GET pub:1"), None);
        assert_eq!(
            denied(&ro, "SET pub:1 v").as_deref(),
            Some("NOPERM No permissions to access a key")
        );
        assert_eq!(denied(&ro, "SET own:1 v"), None);
        assert!(denied(&ro, "GET other").is_some());
        assert!(denied(&ro, "MSET own:1 a pub:2 b").is_some());
        assert_eq!(denied(&ro, "MSET own:1 a own:2 b"), None);
        assert_eq!(
            denied(&ro, "ZUNIONSTORE own:d 2 own:a own:b WEIGHTS 1 2"),
            None
        );
        assert!(denied(&ro, "ZUNIONSTORE own:d 2 own:a other WEIGHTS 1 2").is_some());
        assert_eq!(denied(&ro, "CONFIG GET maxmemory"), None);
        assert!(denied(&ro, "CONFIG SET maxmemory 1").is_some());
        assert!(denied(&ro, "FLUSHDB").is_some());
        // Commands outside the user's categories.
        assert!(denied(&ro, "PUBLISH chat:1 hi").is_some());

        let ch = user("on ~* &chat:* +@all");
        assert_eq!(denied(&ch, "PUBLISH chat:1 hi"), None);
        assert_eq!(
            denied(&ch, "PUBLISH news hi").as_deref(),
            Some("NOPERM No permissions to access a channel")
        );
        assert_eq!(denied(&ch, "SUBSCRIBE chat:a chat:b"), None);
        assert!(denied(&ch, "SUBSCRIBE chat:a news").is_some());
        assert_eq!(denied(&ch, "PSUBSCRIBE chat:*"), None);
        assert!(denied(&ch, "PSUBSCRIBE chat:1*").is_some());

        let sub = user("on ~* &* +@all -config|set -acl|deluser");
        assert_eq!(denied(&sub, "CONFIG GET x"), None);
        assert!(denied(&sub, "CONFIG SET x 1").is_some());
        assert!(denied(&sub, "ACL DELUSER x").is_some());
        assert_eq!(denied(&sub, "ACL SETUSER x"), None);
        let back = user("on ~* &* -@all +acl");
        assert_eq!(denied(&back, "ACL DELUSER x"), None);
        assert!(denied(&back, "GET x").is_some());
    }

    #[test]
    fn configured_default_user() {
        let open = configured(None, &[]).expect("ok");
        assert_eq!(open[0].describe(), "user default on nopass ~* &* +@all");
        let with_pw = configured(Some("pw"), &[]).expect("ok");
        assert_eq!(
            with_pw[0].describe(),
            format!(
                "user default on #{} ~* &* +@all -@dangerous +info",
                sha256_hex(b"pw")
            )
        );
        let admin = UserConfig {
            name: "admin".into(),
            password: Some("root".into()),
            rules: "~* &* +@all".into(),
        };
        let both = configured(None, std::slice::from_ref(&admin)).expect("ok");
        assert_eq!(both.len(), 2);
        assert!(both[0].describe().contains("nopass"));
        assert!(both[0].describe().ends_with("-@dangerous +info"));
        assert!(configured(None, &[admin.clone(), admin.clone()]).is_err());
        let bad = UserConfig {
            name: "x".into(),
            password: None,
            rules: "+nosuch".into(),
        };
        assert_eq!(
            configured(None, &[bad]).unwrap_err(),
            "user `x`: rule '+nosuch': Unknown command or category name in ACL"
        );
    }

    #[test]
    fn replicated_users_apply_deterministically() {
        let mut a = Users::default();
        assert_eq!(a.apply(&argv("SETUSER x on >p ~k* +get")), Reply::ok());
        assert!(matches!(
            a.apply(&argv("SETUSER x +nosuch")),
            Reply::Error(_)
        ));
        assert_eq!(a.apply(&argv("SETUSER x -get +set")), Reply::ok());
        let mut b = Users::default();
        b.apply(&argv("SETUSER x on >p ~k* +get"));
        b.apply(&argv("SETUSER x -get +set"));
        assert_eq!(a, b);
        let enc = crate::codec::enc(&a).expect("enc");
        assert_eq!(crate::codec::dec::<Users>(&enc).expect("dec"), a);
        assert_eq!(a.apply(&argv("DELUSER x y")), Reply::Int(1));
        assert!(a.0.is_empty());
    }
}
