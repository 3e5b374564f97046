//! The command table: every command the data model runs, how it touches the data, its
//! arity and where its keys are (as Redis's COMMAND reports them).

use std::collections::HashMap;
use std::sync::OnceLock;

/// How a command touches the data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    Read,
    Write,
}

/// Which module runs a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Group {
    Str,
    Hash,
    List,
    Set,
    ZSet,
    Keys,
    Bits,
    Hll,
    Stream,
    /// Commands that span databases (FLUSHALL, MOVE, SWAPDB, COPY … DB): run on the tables.
    Tables,
}

#[derive(Clone, Copy, Debug)]
pub struct Spec {
    pub class: Class,
    /// Redis's arity: exact when positive, at least `-arity` when negative.
    pub arity: i32,
    /// Position of the first key, the last (negative: from the end) and the step; 0 = none.
    pub first: i32,
    pub last: i32,
    pub step: i32,
    /// The keys follow a count argument (ZUNIONSTORE, LMPOP …): every argument after
    /// `first` may be a key.
    pub numkeys: bool,
    pub group: Group,
}

use Class::{Read as R, Write as W};
use Group::*;

#[rustfmt::skip]
const TABLE: &[(&str, Class, i32, i32, i32, i32, Group)] = &[
    // strings
    ("GET", R, 2, 1, 1, 1, Str), ("MGET", R, -2, 1, -1, 1, Str), ("STRLEN", R, 2, 1, 1, 1, Str),
    ("GETRANGE", R, 4, 1, 1, 1, Str), ("SUBSTR", R, 4, 1, 1, 1, Str), ("LCS", R, -3, 1, 2, 1, Str),
    ("SET", W, -3, 1, 1, 1, Str), ("SETNX", W, 3, 1, 1, 1, Str), ("SETEX", W, 4, 1, 1, 1, Str),
    ("PSETEX", W, 4, 1, 1, 1, Str), ("GETSET", W, 3, 1, 1, 1, Str), ("GETDEL", W, 2, 1, 1, 1, Str),
    ("GETEX", W, -2, 1, 1, 1, Str), ("APPEND", W, 3, 1, 1, 1, Str), ("SETRANGE", W, 4, 1, 1, 1, Str),
    ("MSET", W, -3, 1, -1, 2, Str), ("MSETNX", W, -3, 1, -1, 2, Str),
    ("INCR", W, 2, 1, 1, 1, Str), ("DECR", W, 2, 1, 1, 1, Str), ("INCRBY", W, 3, 1, 1, 1, Str),
    ("DECRBY", W, 3, 1, 1, 1, Str), ("INCRBYFLOAT", W, 3, 1, 1, 1, Str),
    // bitmaps
    ("GETBIT", R, 3, 1, 1, 1, Bits), ("BITCOUNT", R, -2, 1, 1, 1, Bits), ("BITPOS", R, -3, 1, 1, 1, Bits),
    ("SETBIT", W, 4, 1, 1, 1, Bits), ("BITOP", W, -4, 2, -1, 1, Bits),
    ("BITFIELD", W, -2, 1, 1, 1, Bits), ("BITFIELD_RO", R, -2, 1, 1, 1, Bits),
    // HyperLogLog (PFCOUNT caches its result in the value, so it writes, as in Redis)
    ("PFADD", W, -2, 1, 1, 1, Hll), ("PFCOUNT", W, -2, 1, -1, 1, Hll),
    ("PFMERGE", W, -2, 1, -1, 1, Hll), ("PFDEBUG", W, 3, 2, 2, 1, Hll),
    // hashes
    ("HGET", R, 3, 1, 1, 1, Hash), ("HMGET", R, -3, 1, 1, 1, Hash), ("HGETALL", R, 2, 1, 1, 1, Hash),
    ("HKEYS", R, 2, 1, 1, 1, Hash), ("HVALS", R, 2, 1, 1, 1, Hash), ("HLEN", R, 2, 1, 1, 1, Hash),
    ("HEXISTS", R, 3, 1, 1, 1, Hash), ("HSTRLEN", R, 3, 1, 1, 1, Hash),
    ("HRANDFIELD", R, -2, 1, 1, 1, Hash), ("HSCAN", R, -3, 1, 1, 1, Hash),
    ("HSET", W, -4, 1, 1, 1, Hash), ("HMSET", W, -4, 1, 1, 1, Hash), ("HSETNX", W, 4, 1, 1, 1, Hash),
    ("HDEL", W, -3, 1, 1, 1, Hash), ("HINCRBY", W, 4, 1, 1, 1, Hash),
    ("HINCRBYFLOAT", W, 4, 1, 1, 1, Hash),
    // lists
    ("LLEN", R, 2, 1, 1, 1, List), ("LINDEX", R, 3, 1, 1, 1, List), ("LRANGE", R, 4, 1, 1, 1, List),
    ("LPOS", R, -3, 1, 1, 1, List),
    ("LPUSH", W, -3, 1, 1, 1, List), ("RPUSH", W, -3, 1, 1, 1, List), ("LPUSHX", W, -3, 1, 1, 1, List),
    ("RPUSHX", W, -3, 1, 1, 1, List), ("LPOP", W, -2, 1, 1, 1, List), ("RPOP", W, -2, 1, 1, 1, List),
    ("LSET", W, 4, 1, 1, 1, List), ("LREM", W, 4, 1, 1, 1, List), ("LTRIM", W, 4, 1, 1, 1, List),
    ("LINSERT", W, 5, 1, 1, 1, List), ("RPOPLPUSH", W, 3, 1, 2, 1, List), ("LMOVE", W, 5, 1, 2, 1, List),
    ("LMPOP", W, -4, 2, -1, 1, List),
    ("BLPOP", W, -3, 1, -2, 1, List), ("BRPOP", W, -3, 1, -2, 1, List),
    ("BRPOPLPUSH", W, 4, 1, 2, 1, List), ("BLMOVE", W, 6, 1, 2, 1, List),
    ("BLMPOP", W, -5, 3, -1, 1, List),
    // sets
    ("SCARD", R, 2, 1, 1, 1, Set), ("SISMEMBER", R, 3, 1, 1, 1, Set), ("SMISMEMBER", R, -3, 1, 1, 1, Set),
    ("SMEMBERS", R, 2, 1, 1, 1, Set), ("SRANDMEMBER", R, -2, 1, 1, 1, Set),
    ("SINTER", R, -2, 1, -1, 1, Set), ("SUNION", R, -2, 1, -1, 1, Set), ("SDIFF", R, -2, 1, -1, 1, Set),
    ("SINTERCARD", R, -3, 2, -1, 1, Set), ("SSCAN", R, -3, 1, 1, 1, Set),
    ("SADD", W, -3, 1, 1, 1, Set), ("SREM", W, -3, 1, 1, 1, Set), ("SPOP", W, -2, 1, 1, 1, Set),
    ("SMOVE", W, 4, 1, 2, 1, Set), ("SINTERSTORE", W, -3, 1, -1, 1, Set),
    ("SUNIONSTORE", W, -3, 1, -1, 1, Set), ("SDIFFSTORE", W, -3, 1, -1, 1, Set),
    // sorted sets
    ("ZCARD", R, 2, 1, 1, 1, ZSet), ("ZSCORE", R, 3, 1, 1, 1, ZSet), ("ZMSCORE", R, -3, 1, 1, 1, ZSet),
    ("ZRANK", R, 3, 1, 1, 1, ZSet), ("ZREVRANK", R, 3, 1, 1, 1, ZSet), ("ZCOUNT", R, 4, 1, 1, 1, ZSet),
    ("ZLEXCOUNT", R, 4, 1, 1, 1, ZSet), ("ZRANGE", R, -4, 1, 1, 1, ZSet),
    ("ZREVRANGE", R, -4, 1, 1, 1, ZSet), ("ZRANGEBYSCORE", R, -4, 1, 1, 1, ZSet),
    ("ZREVRANGEBYSCORE", R, -4, 1, 1, 1, ZSet), ("ZRANGEBYLEX", R, -4, 1, 1, 1, ZSet),
    ("ZREVRANGEBYLEX", R, -4, 1, 1, 1, ZSet), ("ZUNION", R, -3, 2, -1, 1, ZSet),
    ("ZINTER", R, -3, 2, -1, 1, ZSet), ("ZDIFF", R, -3, 2, -1, 1, ZSet),
    ("ZINTERCARD", R, -3, 2, -1, 1, ZSet), ("ZRANDMEMBER", R, -2, 1, 1, 1, ZSet),
    ("ZSCAN", R, -3, 1, 1, 1, ZSet),
    ("ZADD", W, -4, 1, 1, 1, ZSet), ("ZINCRBY", W, 4, 1, 1, 1, ZSet), ("ZREM", W, -3, 1, 1, 1, ZSet),
    ("ZREMRANGEBYSCORE", W, 4, 1, 1, 1, ZSet), ("ZREMRANGEBYRANK", W, 4, 1, 1, 1, ZSet),
    ("ZREMRANGEBYLEX", W, 4, 1, 1, 1, ZSet), ("ZPOPMIN", W, -2, 1, 1, 1, ZSet),
    ("ZPOPMAX", W, -2, 1, 1, 1, ZSet), ("ZMPOP", W, -4, 2, -1, 1, ZSet),
    ("BZPOPMIN", W, -3, 1, -2, 1, ZSet), ("BZPOPMAX", W, -3, 1, -2, 1, ZSet),
    ("BZMPOP", W, -5, 3, -1, 1, ZSet),
    ("ZUNIONSTORE", W, -4, 1, -1, 1, ZSet), ("ZINTERSTORE", W, -4, 1, -1, 1, ZSet),
    ("ZDIFFSTORE", W, -4, 1, -1, 1, ZSet), ("ZRANGESTORE", W, -5, 1, 2, 1, ZSet),
    // streams (XREAD/XREADGROUP keys: the first half after STREAMS, see `keys`)
    ("XLEN", R, 2, 1, 1, 1, Stream), ("XRANGE", R, -4, 1, 1, 1, Stream),
    ("XREVRANGE", R, -4, 1, 1, 1, Stream), ("XREAD", R, -4, 0, 0, 0, Stream),
    ("XPENDING", R, -3, 1, 1, 1, Stream), ("XINFO", R, -2, 2, 2, 1, Stream),
    ("XADD", W, -5, 1, 1, 1, Stream), ("XTRIM", W, -4, 1, 1, 1, Stream), ("XDEL", W, -3, 1, 1, 1, Stream),
    ("XREADGROUP", W, -7, 0, 0, 0, Stream), ("XGROUP", W, -2, 2, 2, 1, Stream),
    ("XACK", W, -4, 1, 1, 1, Stream), ("XCLAIM", W, -6, 1, 1, 1, Stream),
    ("XAUTOCLAIM", W, -6, 1, 1, 1, Stream), ("XSETID", W, -3, 1, 1, 1, Stream),
    // keyspace
    ("EXISTS", R, -2, 1, -1, 1, Keys), ("TYPE", R, 2, 1, 1, 1, Keys), ("TTL", R, 2, 1, 1, 1, Keys),
    ("PTTL", R, 2, 1, 1, 1, Keys), ("EXPIRETIME", R, 2, 1, 1, 1, Keys),
    ("PEXPIRETIME", R, 2, 1, 1, 1, Keys), ("SCAN", R, -2, 0, 0, 0, Keys), ("KEYS", R, 2, 0, 0, 0, Keys),
    ("DBSIZE", R, 1, 0, 0, 0, Keys), ("RANDOMKEY", R, 1, 0, 0, 0, Keys), ("TOUCH", R, -2, 1, -1, 1, Keys),
    ("PING", R, -1, 0, 0, 0, Keys), ("ECHO", R, 2, 0, 0, 0, Keys),
    ("OBJECT", R, -2, 2, 2, 1, Keys), ("MEMORY", R, -2, 2, 2, 1, Keys),
    ("DUMP", R, 2, 1, 1, 1, Keys), ("RESTORE", W, -4, 1, 1, 1, Keys),
    ("DEL", W, -2, 1, -1, 1, Keys), ("UNLINK", W, -2, 1, -1, 1, Keys), ("EXPIRE", W, -3, 1, 1, 1, Keys),
    ("PEXPIRE", W, -3, 1, 1, 1, Keys), ("EXPIREAT", W, -3, 1, 1, 1, Keys),
    ("PEXPIREAT", W, -3, 1, 1, 1, Keys), ("PERSIST", W, 2, 1, 1, 1, Keys),
    ("SORT", W, -2, 1, 1, 1, Keys), ("SORT_RO", R, -2, 1, 1, 1, Keys),
    ("RENAME", W, 3, 1, 2, 1, Keys), ("RENAMENX", W, 3, 1, 2, 1, Keys),     ("FLUSHDB", W, -1, 0, 0, 0, Keys),
    // across databases
    ("MOVE", W, 3, 1, 1, 1, Tables), ("COPY", W, -3, 1, 2, 1, Tables), ("SWAPDB", W, 3, 0, 0, 0, Tables),
    ("FLUSHALL", W, -1, 0, 0, 0, Tables),
    // scripts (they may touch any key of the database: run on the tables)
    ("EVAL", W, -3, 3, -1, 1, Tables), ("EVAL_RO", W, -3, 3, -1, 1, Tables),
    ("SCRIPT", W, -2, 0, 0, 0, Tables), ("FCALL", W, -3, 3, -1, 1, Tables),
    ("FCALL_RO", W, -3, 3, -1, 1, Tables), ("FUNCTION", W, -2, 0, 0, 0, Tables),
];

/// Commands whose keys follow a count (`numkeys`).
const NUMKEYS: &[&str] = &[
    "LMPOP",
    "BLMPOP",
    "BZMPOP",
    "SINTERCARD",
    "ZUNION",
    "ZINTER",
    "ZDIFF",
    "ZINTERCARD",
    "ZMPOP",
    "ZUNIONSTORE",
    "ZINTERSTORE",
    "ZDIFFSTORE",
];

fn table() -> &'static HashMap<&'static str, Spec> {
    static T: OnceLock<HashMap<&'static str, Spec>> = OnceLock::new();
    T.get_or_init(|| {
        TABLE
            .iter()
            .map(|&(name, class, arity, first, last, step, group)| {
                let spec = Spec {
                    class,
                    arity,
                    first,
                    last,
                    step,
                    numkeys: NUMKEYS.contains(&name),
                    group,
                };
                (name, spec)
            })
            .collect()
    })
}

/// The spec of a data command (upper-case name).
pub fn spec(name: &str) -> Option<Spec> {
    table().get(name).copied()
}

/// Commands the data model runs, with their class and arity (negative = at least).
pub fn classify(name: &str) -> Option<(Class, i32)> {
    spec(name).map(|s| (s.class, s.arity))
}

pub fn check_arity(name: &str, argc: usize) -> bool {
    match spec(name) {
        Some(s) if s.arity >= 0 => argc == s.arity as usize,
        Some(s) => argc >= (-s.arity) as usize,
        None => true,
    }
}

/// Every data command, for COMMAND COUNT / COMMAND (with the server's own commands).
pub fn all() -> impl Iterator<Item = (&'static str, Spec)> {
    TABLE.iter().filter_map(|&(n, ..)| spec(n).map(|s| (n, s)))
}

/// The arguments a write may touch as keys (expired ones are dropped before it runs). For
/// commands with a key count every later argument is included: dropping an expired key
/// that happens to share a name with a non-key argument changes nothing visible.
pub fn keys<'a>(name: &str, argv: &'a [Vec<u8>]) -> Vec<&'a [u8]> {
    let Some(s) = spec(name) else {
        return Vec::new();
    };
    if name == "XREAD" || name == "XREADGROUP" {
        return super::stream::read_keys(argv)
            .iter()
            .map(|k| k.as_slice())
            .collect();
    }
    if s.first <= 0 || s.first as usize >= argv.len() {
        return Vec::new();
    }
    let first = s.first as usize;
    if s.numkeys {
        return argv[first..].iter().map(|k| k.as_slice()).collect();
    }
    let last = if s.last < 0 {
        (argv.len() as i32 + s.last) as usize
    } else {
        (s.last as usize).min(argv.len() - 1)
    };
    argv[first..=last.max(first)]
        .iter()
        .step_by(s.step.max(1) as usize)
        .map(|k| k.as_slice())
        .collect()
}

/// Commands that wait for data when a client sends them outside MULTI (inside MULTI, and in
/// the state machine, they run once without waiting).
pub fn is_blocking(name: &str) -> bool {
    matches!(
        name,
        "BLPOP" | "BRPOP" | "BRPOPLPUSH" | "BLMOVE" | "BLMPOP" | "BZPOPMIN" | "BZPOPMAX" | "BZMPOP"
    )
}

/// Whether this command, as sent, waits for data: the blocking pops, and XREAD/XREADGROUP
/// with BLOCK.
pub fn blocks(name: &str, argv: &[Vec<u8>]) -> bool {
    is_blocking(name)
        || ((name == "XREAD" || name == "XREADGROUP") && super::stream::wants_block(argv))
}

/// A blocking command's timeout (seconds, 0 = forever), as Redis parses it.
pub fn block_timeout(name: &str, argv: &[Vec<u8>]) -> Result<f64, crate::resp::Reply> {
    if name == "XREAD" || name == "XREADGROUP" {
        return super::stream::block_timeout(argv);
    }
    let at = match name {
        "BLMPOP" | "BZMPOP" => 1,
        _ => argv.len() - 1,
    };
    let t = std::str::from_utf8(&argv[at])
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|t| t.is_finite())
        .ok_or_else(|| crate::resp::Reply::err("ERR timeout is not a float or out of range"))?;
    if t < 0.0 {
        return Err(crate::resp::Reply::err("ERR timeout is negative"));
    }
    Ok(t)
}

/// The keys a blocking command takes from (BLMOVE's destination is not one of them).
pub fn block_sources(name: &str, argv: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let keys = match name {
        "XREAD" | "XREADGROUP" => super::stream::read_keys(argv),
        "BRPOPLPUSH" | "BLMOVE" => &argv[1..2],
        "BLMPOP" | "BZMPOP" => {
            let n = std::str::from_utf8(&argv[2])
                .ok()
                .and_then(|s| s.parse::<usize>().ok())
                .unwrap_or(0);
            &argv[3.min(argv.len())..(3 + n).min(argv.len())]
        }
        _ => &argv[1..argv.len() - 1],
    };
    keys.to_vec()
}
