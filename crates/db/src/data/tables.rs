//! All databases, the replicated write request and the commands that span databases.

use serde::{Deserialize, Serialize};

use super::{
    Db, Group, NOT_INT, NUM_DBS, SYNTAX, Watch, arity_err, check_arity, parse_i64, script, spec,
    upper,
};
use crate::resp::Reply;

/// All databases plus what the state machine needs to know about itself.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Tables {
    pub dbs: Vec<Db>,
    /// Replies of recent requests by request id, for exactly-once retries.
    pub recent: std::collections::HashMap<u64, Reply>,
    /// (log index, request id) in apply order, to forget old ids deterministically.
    pub recent_order: std::collections::VecDeque<(u64, u64)>,
    /// Scripts seen in EVAL and SCRIPT LOAD (not in snapshots, as Redis 7 keeps none).
    #[serde(skip)]
    pub scripts: super::script::Scripts,
    /// Function libraries (member-local like the scripts; see `script::Libraries`).
    #[serde(skip)]
    pub libraries: super::script::Libraries,
    /// Users made by ACL SETUSER (through the log). Snapshots carry them after the tables
    /// (`encode_snapshot`), so a snapshot from before they existed still reads.
    #[serde(skip)]
    pub users: crate::acl::Users,
    /// While an `AS_CALLER` entry applies: whose permissions its script's calls are held to.
    #[serde(skip)]
    pub caller: Option<std::sync::Arc<crate::acl::Perms>>,
    /// While a `SCRIPT_OPTS` entry applies: what the taking member decided for its script.
    #[serde(skip)]
    pub script_opts: Vec<String>,
    /// (log index, scripts run so far in that entry): a script's id (`busy::script_id`).
    #[serde(skip)]
    pub script_nth: (u64, u64),
}

/// How many log entries a request id is remembered for (retries come within seconds).
pub const DEDUPE_WINDOW: u64 = 20_000;
/// At most this many request ids are remembered.
pub const DEDUPE_MAX: usize = 1_000_000;

impl Default for Tables {
    fn default() -> Self {
        Tables {
            dbs: (0..NUM_DBS).map(|_| Db::default()).collect(),
            recent: Default::default(),
            recent_order: Default::default(),
            scripts: Default::default(),
            libraries: Default::default(),
            caller: None,
            script_opts: Vec::new(),
            script_nth: (0, 0),
            users: Default::default(),
        }
    }
}

impl Tables {
    /// The snapshot form: the tables, then the replicated users.
    pub fn encode_snapshot(&self) -> Result<Vec<u8>, String> {
        let mut out = crate::codec::enc(self)?;
        out.extend(crate::codec::enc(&self.users)?);
        Ok(out)
    }

    /// Reads `encode_snapshot`'s form (or the tables alone, as older snapshots hold).
    pub fn decode_snapshot(b: &[u8]) -> Result<Tables, String> {
        let (mut t, rest): (Tables, &[u8]) =
            postcard::take_from_bytes(b).map_err(|e| format!("decode: {e}"))?;
        if !rest.is_empty() {
            t.users = crate::codec::dec(rest)?;
        }
        crate::acl::bump();
        Ok(t)
    }
}

/// A replicated write: one command, or a MULTI/EXEC transaction guarded by WATCHes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WriteReq {
    /// Request id for exactly-once retries (0 = none): a retried request that was already
    /// applied gets the first reply back instead of running twice.
    pub rid: u64,
    /// Leader's clock, unix ms, when the write was proposed.
    pub now_ms: u64,
    pub watches: Vec<Watch>,
    /// (db, argv) for each command.
    pub cmds: Vec<(u32, Vec<Vec<u8>>)>,
    /// A transaction replies with one array (or nil when a WATCH failed).
    pub multi: bool,
}

/// The internal command that drops expired keys (proposed by the leader).
pub const SWEEP: &[u8] = b"\0citadel-expire-sweep";
/// Marks a blocking command's attempt (`[WAITER, woken 0|1, n, (name, key)×n, command…]`,
/// proposed by the server only; the pairs are earlier waiters on the same keys): see
/// [`super::Db::write_waiter`].
pub const WAITER: &[u8] = b"\0citadel-waiter";
/// Keys one sweep drops in one database, at most (keeps an entry's apply short).
pub const SWEEP_MAX: usize = 2000;

/// One Raft entry: every client write the leader gathered while the previous entries were
/// being made durable (group commit: one fsync for the whole batch).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Proposal {
    pub reqs: Vec<WriteReq>,
}

impl Tables {
    /// Applies a write once per request id.
    pub fn apply_once(&mut self, req: &WriteReq, index: u64) -> Reply {
        if req.rid != 0
            && let Some(r) = self.recent.get(&req.rid)
        {
            return r.clone();
        }
        let r = self.apply(req, index);
        if req.rid != 0 {
            self.recent.insert(req.rid, r.clone());
            self.recent_order.push_back((index, req.rid));
        }
        while let Some(&(i, rid)) = self.recent_order.front() {
            if i + DEDUPE_WINDOW >= index && self.recent_order.len() <= DEDUPE_MAX {
                break;
            }
            self.recent_order.pop_front();
            self.recent.remove(&rid);
        }
        r
    }

    pub fn apply(&mut self, req: &WriteReq, index: u64) -> Reply {
        let now = req.now_ms;
        for w in &req.watches {
            let Some(db) = self.dbs.get(w.db as usize) else {
                return Reply::NilArray;
            };
            let cur = db.version(&w.key, now);
            if cur != w.ver || (cur == 0 && db.last_delete > w.at) {
                return Reply::NilArray;
            }
        }
        let mut out = Vec::with_capacity(req.cmds.len());
        for (dbi, argv) in &req.cmds {
            let r = match self.dbs.get_mut(*dbi as usize) {
                // The leader's expiry sweep: a name clients cannot send (the server refuses
                // unknown commands before they reach the log).
                // The keys it dropped: a Redis replica fed by this member deletes them too.
                Some(db) if argv.len() == 1 && argv[0] == SWEEP => Reply::Array(
                    db.sweep(now, index, SWEEP_MAX)
                        .into_iter()
                        .map(Reply::Bulk)
                        .collect(),
                ),
                Some(db) if argv.len() > 1 && argv[0] == WAITER => {
                    db.write_waiter(&argv[1..], now, index)
                }
                Some(db) if argv.len() > 3 && argv[0] == super::STREAM_CFG => {
                    let n = |b: &[u8]| std::str::from_utf8(b).ok().and_then(|s| s.parse().ok());
                    let cfg = match (n(&argv[1]), n(&argv[2])) {
                        (Some(entries), Some(bytes)) => super::NodeCfg { entries, bytes },
                        _ => super::NodeCfg::default(),
                    };
                    db.write_cfg(&argv[3..], now, index, cfg)
                }
                Some(_) if argv.len() > 1 && argv[0] == crate::acl::ACL_WRITE => {
                    self.users.apply(&argv[1..])
                }
                Some(_) if argv.len() > 3 && argv[0] == crate::acl::AS_CALLER => {
                    self.caller = Some(std::sync::Arc::new(crate::acl::caller_perms(
                        &argv[1], &argv[2],
                    )));
                    let r = self.cross_db(*dbi as usize, &argv[3..], now, index);
                    self.caller = None;
                    r
                }
                Some(_) if argv.len() > 2 && argv[0] == script::SCRIPT_OPTS => {
                    self.script_opts = String::from_utf8_lossy(&argv[1])
                        .split(',')
                        .map(str::to_string)
                        .collect();
                    let r = self.cross_db(*dbi as usize, &argv[2..], now, index);
                    self.script_opts.clear();
                    r
                }
                Some(_) if argv.len() == 4 && argv[0] == super::busy::SCRIPT_DECIDE => {
                    match (parse_i64(&argv[1]), argv[2].as_slice()) {
                        (Some(i), b"kill") => super::busy::kill_reply(i as u64, argv[3] == b"eval"),
                        _ => Reply::ok(),
                    }
                }
                Some(_) if !argv.is_empty() && is_cross_db(argv) => {
                    self.cross_db(*dbi as usize, argv, now, index)
                }
                Some(db) if !argv.is_empty() => db.write(argv, now, index),
                _ => Reply::err("ERR DB index is out of range"),
            };
            out.push(r);
        }
        if req.multi {
            Reply::Array(out)
        } else {
            out.pop().unwrap_or(Reply::Nil)
        }
    }
}

/// Commands that span databases: FLUSHALL, MOVE, SWAPDB, COPY (which may name a DB).
fn is_cross_db(argv: &[Vec<u8>]) -> bool {
    spec(&upper(&argv[0])).is_some_and(|s| s.group == Group::Tables)
}

/// A database number argument.
fn db_index(b: &[u8]) -> Result<usize, Reply> {
    match parse_i64(b) {
        Some(n) if (0..NUM_DBS as i64).contains(&n) => Ok(n as usize),
        Some(_) => Err(Reply::err("ERR DB index is out of range")),
        None => Err(Reply::err(NOT_INT)),
    }
}

impl Tables {
    fn cross_db(&mut self, cur: usize, argv: &[Vec<u8>], now: u64, index: u64) -> Reply {
        if argv.len() > 2 && argv[0] == script::SCRIPT_OPTS {
            self.script_opts = String::from_utf8_lossy(&argv[1])
                .split(',')
                .map(str::to_string)
                .collect();
            let r = self.cross_db(cur, &argv[2..], now, index);
            self.script_opts.clear();
            return r;
        }
        let name = upper(&argv[0]);
        if !check_arity(&name, argv.len()) {
            return arity_err(&name);
        }
        super::flat(self.cross_db_inner(&name, cur, argv, now, index))
    }

    fn cross_db_inner(
        &mut self,
        name: &str,
        cur: usize,
        argv: &[Vec<u8>],
        now: u64,
        index: u64,
    ) -> Result<Reply, Reply> {
        match name {
            "FLUSHALL" => {
                if argv.len() > 2
                    || argv.get(1).is_some_and(|a| {
                        !a.eq_ignore_ascii_case(b"SYNC") && !a.eq_ignore_ascii_case(b"ASYNC")
                    })
                {
                    return Err(Reply::err(SYNTAX));
                }
                for db in &mut self.dbs {
                    db.flush();
                }
                Ok(Reply::ok())
            }
            "SWAPDB" => {
                let (a, b) = (db_index(&argv[1])?, db_index(&argv[2])?);
                // What leaves each index is gone from there (a WATCH of an absent key fails
                // if any of it changed after the WATCH, as `Db::flush`); what arrives is new
                // there (its versions are bumped, so a WATCH of a key it holds fails).
                let gone = |db: &Db| {
                    db.map
                        .values()
                        .map(|i| i.ver)
                        .max()
                        .unwrap_or(0)
                        .max(db.last_delete)
                };
                let (gone_a, gone_b) = (gone(&self.dbs[a]), gone(&self.dbs[b]));
                self.dbs.swap(a, b);
                for (d, gone) in [(a, gone_a), (b, gone_b)] {
                    let db = &mut self.dbs[d];
                    db.last_delete = gone;
                    for item in db.map.values_mut() {
                        item.ver = index;
                    }
                }
                Ok(Reply::ok())
            }
            "MOVE" => {
                let to = db_index(&argv[2])?;
                if to == cur {
                    return Err(Reply::err(
                        "ERR source and destination objects are the same",
                    ));
                }
                self.dbs[cur].reap_key(&argv[1], now, index);
                self.dbs[to].reap_key(&argv[1], now, index);
                if self.dbs[to].get_live(&argv[1], now).is_some() {
                    return Ok(Reply::Int(0));
                }
                let Some(mut item) = self.dbs[cur].take(&argv[1], index) else {
                    return Ok(Reply::Int(0));
                };
                item.ver = index;
                self.dbs[to].insert_item(&argv[1], item);
                Ok(Reply::Int(1))
            }
            "FUNCTION" => self.function(argv),
            "EVAL" | "EVAL_RO" | "FCALL" | "FCALL_RO" => {
                // FCALL arrives resolved: [FCALL, library code, name, numkeys, …].
                let fcall = name.starts_with("FCALL");
                let (code, rest) = if fcall {
                    if argv.len() < 4 {
                        return Err(arity_err(name));
                    }
                    let rest: Vec<Vec<u8>> = std::iter::once(argv[0].clone())
                        .chain(argv[2..].iter().cloned())
                        .collect();
                    (script::library(&argv[1])?.1.to_vec(), rest)
                } else {
                    (argv[1].clone(), argv.to_vec())
                };
                let (keys, args) = script::split_args(&rest)?;
                let flags = if fcall { None } else { script::shebang(&code)? };
                if !fcall {
                    self.scripts.0.insert(script::sha1_hex(&code), code.clone());
                }
                // The shebang line is not Lua: the script starts after it (same line numbers).
                let code = match (flags, code.iter().position(|&b| b == b'\n')) {
                    (Some(_), Some(nl)) => code[nl..].to_vec(),
                    (Some(_), None) => Vec::new(),
                    _ => code,
                };
                let entry = if fcall {
                    script::Entry::Function(&rest[1])
                } else {
                    script::Entry::Script
                };
                let opts = std::mem::take(&mut self.script_opts);
                // The nth script of this entry (an entry is a batch: it may run several).
                self.script_nth = match self.script_nth {
                    (i, n) if i == index => (i, n + 1),
                    _ => (index, 0),
                };
                let ctx = script::Ctx {
                    index,
                    id: super::busy::script_id(index, self.script_nth.1),
                    seed: index ^ now.rotate_left(17),
                    oom: opts.iter().any(|o| o == "oom"),
                    read_only: name.ends_with("_RO") || flags.is_some_and(|f| f.no_writes),
                    allow_oom: flags.is_some_and(|f| f.allow_oom),
                    allow_debug: opts.iter().any(|o| o == "debug"),
                    eval: !fcall,
                };
                let caller = self.caller.clone();
                let dbs = &mut self.dbs;
                let mut at_db = cur;
                Ok(script::run_with(
                    &code,
                    keys,
                    args,
                    |cmd, check| {
                        let n = upper(&cmd[0]);
                        if check {
                            // redis.acl_check_cmd: may the caller run it?
                            return match spec(&n) {
                                None if !matches!(n.as_str(), "SELECT" | "DEBUG") => Reply::err(
                                    "ERR Invalid command passed to redis.acl_check_cmd()",
                                ),
                                _ => Reply::Int(
                                    caller
                                        .as_ref()
                                        .and_then(|p| crate::acl::check(p, &n, cmd))
                                        .is_none() as i64,
                                ),
                            };
                        }
                        if n == "SELECT" {
                            // A script may switch databases for its own later calls.
                            return match cmd.get(1).and_then(|d| db_index(d).ok()) {
                                Some(d) if cmd.len() == 2 => {
                                    at_db = d;
                                    Reply::ok()
                                }
                                _ => Reply::err("ERR DB index is out of range"),
                            };
                        }
                        if n == "DEBUG" {
                            return script_debug(cmd);
                        }
                        if (n == "XREAD" || n == "XREADGROUP") && super::blocks(&n, cmd) {
                            return Reply::err(format!(
                                "ERR {} command is not allowed with BLOCK option from scripts",
                                String::from_utf8_lossy(&cmd[0])
                            ));
                        }
                        match spec(&n) {
                            None if NOSCRIPT.contains(&n.as_str()) => {
                                Reply::err("ERR This Redis command is not allowed from script")
                            }
                            None => Reply::err("ERR Unknown Redis command called from script"),
                            // Redis 7.0 flags these blocking commands `noscript` (BLMPOP
                            // and BZMPOP run once without waiting, as in MULTI).
                            Some(s)
                                if s.group == Group::Tables
                                    || matches!(
                                        n.as_str(),
                                        "BLPOP"
                                            | "BRPOP"
                                            | "BRPOPLPUSH"
                                            | "BLMOVE"
                                            | "BZPOPMIN"
                                            | "BZPOPMAX"
                                    ) =>
                            {
                                Reply::err("ERR This Redis command is not allowed from script")
                            }
                            Some(_) => {
                                match caller.as_ref().and_then(|p| crate::acl::check(p, &n, cmd)) {
                                    Some(denied) => denied,
                                    None => dbs[at_db].write(cmd, now, index),
                                }
                            }
                        }
                    },
                    entry,
                    &ctx,
                ))
            }
            "SCRIPT" => match upper(&argv[1]).as_str() {
                "LOAD" if argv.len() == 3 => {
                    let sha = script::sha1_hex(&argv[2]);
                    self.scripts.0.insert(sha.clone(), argv[2].clone());
                    Ok(Reply::bulk(sha))
                }
                "FLUSH" if argv.len() <= 3 => {
                    self.scripts.0.clear();
                    Ok(Reply::ok())
                }
                _ => Err(Reply::err(format!(
                    "ERR unknown subcommand or wrong number of arguments for '{}'. Try SCRIPT HELP.",
                    String::from_utf8_lossy(&argv[1])
                ))),
            },
            "COPY" => {
                let (mut to, mut replace) = (cur, false);
                let mut i = 3;
                while i < argv.len() {
                    match upper(&argv[i]).as_str() {
                        "REPLACE" => replace = true,
                        "DB" if i + 1 < argv.len() => {
                            to = db_index(&argv[i + 1])?;
                            i += 1;
                        }
                        _ => return Err(Reply::err(SYNTAX)),
                    }
                    i += 1;
                }
                if to == cur && argv[1] == argv[2] {
                    return Err(Reply::err(
                        "ERR source and destination objects are the same",
                    ));
                }
                self.dbs[cur].reap_key(&argv[1], now, index);
                self.dbs[to].reap_key(&argv[2], now, index);
                let Some(src) = self.dbs[cur].get_live(&argv[1], now).cloned() else {
                    return Ok(Reply::Int(0));
                };
                if self.dbs[to].get_live(&argv[2], now).is_some() && !replace {
                    return Ok(Reply::Int(0));
                }
                let mut item = src;
                item.ver = index;
                self.dbs[to].insert_item(&argv[2], item);
                Ok(Reply::Int(1))
            }
            _ => Err(super::unknown_cmd(name)),
        }
    }
}

impl Tables {
    /// FUNCTION LOAD [REPLACE] / DELETE / FLUSH (through the log; LIST is answered locally).
    fn function(&mut self, argv: &[Vec<u8>]) -> Result<Reply, Reply> {
        let sub = argv.get(1).map(|a| upper(a)).unwrap_or_default();
        match sub.as_str() {
            "LOAD" if argv.len() >= 3 => {
                let replace = argv.len() == 4 && argv[2].eq_ignore_ascii_case(b"REPLACE");
                if argv.len() == 4 && !replace {
                    return Err(Reply::err(SYNTAX));
                }
                let code = argv[argv.len() - 1].clone();
                let (lib, body) = script::library(&code)?;
                if self.libraries.0.contains_key(&lib) && !replace {
                    return Err(Reply::err(format!("ERR Library '{lib}' already exists")));
                }
                let names = match script::run_with(
                    body,
                    &[],
                    &[],
                    |_, _| Reply::err("ERR redis.call is not allowed while loading a library"),
                    script::Entry::Register,
                    &script::Ctx::default(),
                ) {
                    Reply::Array(n) => n,
                    Reply::Error(e) => return Err(Reply::Error(e)),
                    _ => Vec::new(),
                };
                let names: Vec<Vec<u8>> = names
                    .into_iter()
                    .filter_map(|n| match n {
                        Reply::Bulk(b) => Some(b),
                        _ => None,
                    })
                    .collect();
                if names.is_empty() {
                    return Err(Reply::err("ERR No functions registered"));
                }
                for (other, (_, fns)) in &self.libraries.0 {
                    if *other != lib
                        && let Some(f) = names.iter().find(|n| fns.contains(n))
                    {
                        return Err(Reply::err(format!(
                            "ERR Function {} already exists",
                            String::from_utf8_lossy(f)
                        )));
                    }
                }
                self.libraries.0.insert(lib.clone(), (code, names));
                Ok(Reply::bulk(lib))
            }
            "DELETE" if argv.len() == 3 => {
                let lib = String::from_utf8_lossy(&argv[2]).into_owned();
                match self.libraries.0.remove(&lib) {
                    Some(_) => Ok(Reply::ok()),
                    None => Err(Reply::err("ERR Library not found")),
                }
            }
            "FLUSH" => {
                self.libraries.0.clear();
                Ok(Reply::ok())
            }
            _ => Err(Reply::err(format!(
                "ERR unknown subcommand or wrong number of arguments for '{}'. Try FUNCTION HELP.",
                sub.to_ascii_lowercase()
            ))),
        }
    }
}

impl Db {
    pub(crate) fn reap_key(&mut self, k: &[u8], now: u64, index: u64) {
        self.reap(k, now, index);
    }

    /// Removes and returns the item at `k`.
    pub(crate) fn take(&mut self, k: &[u8], index: u64) -> Option<super::Item> {
        let item = self.map.remove(super::KeyRef::new(k).view());
        if item.is_some() {
            self.last_delete = index;
        }
        item
    }

    pub(crate) fn insert_item(&mut self, k: &[u8], item: super::Item) {
        self.map.insert(super::SKey::new(k), item);
    }
}

/// DEBUG inside a script (allowed after DEBUG set-disable-deny-scripts 1): the subcommands
/// that change nothing — PROTOCOL (every RESP3 type, as Redis's), SLEEP (a no-op here: the
/// script's clock is the entry's, frozen anyway) and the member-local switches.
fn script_debug(cmd: &[Vec<u8>]) -> Reply {
    let sub = cmd.get(1).map(|a| upper(a)).unwrap_or_default();
    match sub.as_str() {
        "PROTOCOL" if cmd.len() == 3 => debug_protocol(&cmd[2]),
        "SLEEP" | "SET-ACTIVE-EXPIRE" | "SET-DISABLE-DENY-SCRIPTS" if cmd.len() == 3 => Reply::ok(),
        _ => Reply::err("ERR DEBUG subcommand not supported inside scripts by this server"),
    }
}

/// DEBUG PROTOCOL <type>: one reply of each RESP3 type, as Redis's.
pub fn debug_protocol(kind: &[u8]) -> Reply {
    match upper(kind).as_str() {
        "STRING" => Reply::bulk("Hello World"),
        "INTEGER" => Reply::Int(12345),
        // Redis's own value (not π).
        #[allow(clippy::approx_constant)]
        "DOUBLE" => Reply::Double(3.141),
        "BIGNUM" => Reply::BigNum("1234567999999999999999999999999999999".into()),
        "NULL" => Reply::Nil,
        "ARRAY" => Reply::Array((0..3).map(Reply::Int).collect()),
        "SET" => Reply::Set((0..3).map(Reply::Int).collect()),
        "MAP" => Reply::Map(
            (0..3)
                .map(|j| (Reply::Int(j), Reply::Bool(j == 1)))
                .collect(),
        ),
        // Attributes are not shown to scripts: the reply that follows them.
        "ATTRIB" => Reply::bulk("Some real reply following the attribute"),
        "PUSH" => Reply::Push((0..2).map(Reply::Int).collect()),
        "VERBATIM" => Reply::Verbatim("txt".into(), b"This is a verbatim\nstring".to_vec()),
        "TRUE" => Reply::Bool(true),
        "FALSE" => Reply::Bool(false),
        _ => Reply::err(
            "ERR Wrong protocol type name. Please use one of the following: string|integer|double|bignum|null|array|set|map|attrib|push|verbatim|true|false",
        ),
    }
}

/// Redis commands served outside the data model that Redis 7.0 flags `noscript`: a script
/// calling them hears that they are not allowed (rather than unknown).
const NOSCRIPT: &[&str] = &[
    "ACL",
    "AUTH",
    "CLIENT",
    "CLUSTER",
    "CONFIG",
    "DISCARD",
    "EXEC",
    "FAILOVER",
    "HELLO",
    "MONITOR",
    "MULTI",
    "PSUBSCRIBE",
    "PSYNC",
    "PUNSUBSCRIBE",
    "REPLICAOF",
    "RESET",
    "SAVE",
    "BGSAVE",
    "BGREWRITEAOF",
    "SHUTDOWN",
    "SLAVEOF",
    "SUBSCRIBE",
    "SYNC",
    "UNSUBSCRIBE",
    "UNWATCH",
    "WATCH",
    "WAIT",
    "QUIT",
    "MIGRATE",
    "READONLY",
    "READWRITE",
];
