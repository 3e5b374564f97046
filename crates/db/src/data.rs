//! The data model: numbered databases of keys holding strings or hashes, with per-key TTL.
//!
//! Every mutation runs inside the replicated state machine with the leader's clock (`now_ms`
//! carried in the log entry), so all members compute the same result. Reads use the local
//! clock to hide expired keys; they never mutate.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::resp::{Reply, format_double};

pub const NUM_DBS: usize = 16;

/// Keys are ordered by (hash, key) so that a SCAN cursor can be a plain number (the next
/// hash to visit) that stays valid while keys come and go.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SKey(pub u64, pub Vec<u8>);

impl SKey {
    pub fn new(k: &[u8]) -> SKey {
        SKey(key_hash(k), k.to_vec())
    }
}

/// FNV-1a, 63 bits: stable across members and versions.
pub fn key_hash(k: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for &b in k {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h >> 1
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Value {
    Str(Vec<u8>),
    Hash(BTreeMap<Vec<u8>, Vec<u8>>),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Item {
    pub value: Value,
    /// Absolute expiry, unix ms.
    pub expire_at: Option<u64>,
    /// Log index of the last change (for WATCH).
    pub ver: u64,
}

impl Item {
    fn live(&self, now: u64) -> bool {
        self.expire_at.is_none_or(|t| t > now)
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Db {
    pub map: BTreeMap<SKey, Item>,
    /// Log index of the last deletion (or flush) in this db, for WATCH on absent keys.
    pub last_delete: u64,
}

/// A key the client WATCHed: the version seen then (0 = absent) and the applied index then.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watch {
    pub db: u32,
    pub key: Vec<u8>,
    pub ver: u64,
    pub at: u64,
}

const WRONGTYPE: &str = "WRONGTYPE Operation against a key holding the wrong kind of value";
const NOT_INT: &str = "ERR value is not an integer or out of range";
const NOT_FLOAT: &str = "ERR value is not a valid float";
const SYNTAX: &str = "ERR syntax error";

pub fn arity_err(name: &str) -> Reply {
    Reply::err(format!(
        "ERR wrong number of arguments for '{}' command",
        name.to_ascii_lowercase()
    ))
}

/// How a command touches the data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    Read,
    Write,
}

/// Commands the data model runs, with their class and arity (negative = at least).
pub fn classify(name: &str) -> Option<(Class, i32)> {
    use Class::*;
    Some(match name {
        "GET" => (Read, 2),
        "MGET" => (Read, -2),
        "STRLEN" => (Read, 2),
        "GETRANGE" => (Read, 4),
        "EXISTS" => (Read, -2),
        "TYPE" => (Read, 2),
        "TTL" | "PTTL" | "EXPIRETIME" | "PEXPIRETIME" => (Read, 2),
        "HGET" => (Read, 3),
        "HMGET" => (Read, -3),
        "HGETALL" | "HKEYS" | "HVALS" | "HLEN" => (Read, 2),
        "HEXISTS" | "HSTRLEN" => (Read, 3),
        "SCAN" => (Read, -2),
        "KEYS" => (Read, 2),
        "DBSIZE" => (Read, 1),
        "SET" => (Write, -3),
        "SETNX" => (Write, 3),
        "SETEX" | "PSETEX" => (Write, 4),
        "GETSET" => (Write, 3),
        "GETDEL" => (Write, 2),
        "GETEX" => (Write, -2),
        "APPEND" => (Write, 3),
        "MSET" | "MSETNX" => (Write, -3),
        "INCR" | "DECR" => (Write, 2),
        "INCRBY" | "DECRBY" | "INCRBYFLOAT" => (Write, 3),
        "DEL" | "UNLINK" => (Write, -2),
        "EXPIRE" | "PEXPIRE" | "EXPIREAT" | "PEXPIREAT" => (Write, -3),
        "PERSIST" => (Write, 2),
        "HSET" | "HMSET" => (Write, -4),
        "HSETNX" => (Write, 4),
        "HDEL" => (Write, -3),
        "HINCRBY" | "HINCRBYFLOAT" => (Write, 4),
        "FLUSHDB" => (Write, -1),
        _ => return None,
    })
}

pub fn check_arity(name: &str, argc: usize) -> bool {
    match classify(name) {
        Some((_, a)) if a >= 0 => argc == a as usize,
        Some((_, a)) => argc >= (-a) as usize,
        None => true,
    }
}

fn parse_i64(b: &[u8]) -> Option<i64> {
    std::str::from_utf8(b).ok()?.parse().ok()
}

fn parse_f64(b: &[u8]) -> Option<f64> {
    let v: f64 = std::str::from_utf8(b).ok()?.trim().parse().ok()?;
    if v.is_nan() { None } else { Some(v) }
}

fn upper(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_ascii_uppercase()
}

/// Glob match as Redis's stringmatchlen: * ? [abc] [^a-z] and \ escapes.
pub fn glob_match(pat: &[u8], s: &[u8]) -> bool {
    fn m(p: &[u8], s: &[u8], depth: usize) -> bool {
        if depth > 64 {
            return false;
        }
        let (mut pi, mut si) = (0, 0);
        while pi < p.len() {
            match p[pi] {
                b'*' => {
                    while pi + 1 < p.len() && p[pi + 1] == b'*' {
                        pi += 1;
                    }
                    if pi + 1 == p.len() {
                        return true;
                    }
                    for k in si..=s.len() {
                        if m(&p[pi + 1..], &s[k..], depth + 1) {
                            return true;
                        }
                    }
                    return false;
                }
                b'?' => {
                    if si >= s.len() {
                        return false;
                    }
                    si += 1;
                }
                b'[' => {
                    if si >= s.len() {
                        return false;
                    }
                    pi += 1;
                    let not = pi < p.len() && p[pi] == b'^';
                    if not {
                        pi += 1;
                    }
                    let mut matched = false;
                    while pi < p.len() && p[pi] != b']' {
                        if p[pi] == b'\\' && pi + 1 < p.len() {
                            pi += 1;
                            if p[pi] == s[si] {
                                matched = true;
                            }
                        } else if pi + 2 < p.len() && p[pi + 1] == b'-' && p[pi + 2] != b']' {
                            let (a, b) = (p[pi].min(p[pi + 2]), p[pi].max(p[pi + 2]));
                            if s[si] >= a && s[si] <= b {
                                matched = true;
                            }
                            pi += 2;
                        } else if p[pi] == s[si] {
                            matched = true;
                        }
                        pi += 1;
                    }
                    if matched == not {
                        return false;
                    }
                    si += 1;
                }
                b'\\' if pi + 1 < p.len() => {
                    pi += 1;
                    if si >= s.len() || p[pi] != s[si] {
                        return false;
                    }
                    si += 1;
                }
                c => {
                    if si >= s.len() || c != s[si] {
                        return false;
                    }
                    si += 1;
                }
            }
            pi += 1;
        }
        si == s.len()
    }
    m(pat, s, 0)
}

impl Db {
    fn get_live(&self, k: &[u8], now: u64) -> Option<&Item> {
        self.map.get(&SKey::new(k)).filter(|i| i.live(now))
    }

    /// Version of a key for WATCH (0 when absent or expired).
    pub fn version(&self, k: &[u8], now: u64) -> u64 {
        self.get_live(k, now).map(|i| i.ver).unwrap_or(0)
    }

    /// Drops the key if it has expired (deterministic: `now` is the entry's clock).
    fn reap(&mut self, k: &[u8], now: u64, index: u64) {
        let sk = SKey::new(k);
        if let Some(i) = self.map.get(&sk)
            && !i.live(now)
        {
            self.map.remove(&sk);
            self.last_delete = index;
        }
    }

    /// Drops up to `max` keys that have expired by `now` (the entry's clock); returns how many.
    pub fn sweep(&mut self, now: u64, index: u64, max: usize) -> usize {
        let dead: Vec<SKey> = self
            .map
            .iter()
            .filter(|(_, i)| !i.live(now))
            .map(|(k, _)| k.clone())
            .take(max)
            .collect();
        for k in &dead {
            self.map.remove(k);
        }
        if !dead.is_empty() {
            self.last_delete = index;
        }
        dead.len()
    }

    /// Whether any key has expired by `now` (keys that a sweep would drop).
    pub fn has_expired(&self, now: u64) -> bool {
        self.map.values().any(|i| !i.live(now))
    }

    pub fn live_len(&self, now: u64) -> usize {
        self.map.values().filter(|i| i.live(now)).count()
    }

    /// Runs a read-only command.
    pub fn read(&self, argv: &[Vec<u8>], now: u64) -> Reply {
        let name = upper(&argv[0]);
        match name.as_str() {
            "GET" => match self.get_live(&argv[1], now) {
                None => Reply::Nil,
                Some(Item {
                    value: Value::Str(s),
                    ..
                }) => Reply::bulk(s),
                Some(_) => Reply::err(WRONGTYPE),
            },
            "MGET" => Reply::Array(
                argv[1..]
                    .iter()
                    .map(|k| match self.get_live(k, now) {
                        Some(Item {
                            value: Value::Str(s),
                            ..
                        }) => Reply::bulk(s),
                        _ => Reply::Nil,
                    })
                    .collect(),
            ),
            "STRLEN" => match self.get_live(&argv[1], now) {
                None => Reply::Int(0),
                Some(Item {
                    value: Value::Str(s),
                    ..
                }) => Reply::Int(s.len() as i64),
                Some(_) => Reply::err(WRONGTYPE),
            },
            "GETRANGE" => {
                let (Some(a), Some(b)) = (parse_i64(&argv[2]), parse_i64(&argv[3])) else {
                    return Reply::err(NOT_INT);
                };
                match self.get_live(&argv[1], now) {
                    None => Reply::bulk(""),
                    Some(Item {
                        value: Value::Str(s),
                        ..
                    }) => {
                        let len = s.len() as i64;
                        let norm = |x: i64| if x < 0 { (len + x).max(0) } else { x };
                        let (a, b) = (norm(a), norm(b).min(len - 1));
                        if len == 0 || a > b {
                            Reply::bulk("")
                        } else {
                            Reply::bulk(&s[a as usize..=b as usize])
                        }
                    }
                    Some(_) => Reply::err(WRONGTYPE),
                }
            }
            "EXISTS" => Reply::Int(
                argv[1..]
                    .iter()
                    .filter(|k| self.get_live(k, now).is_some())
                    .count() as i64,
            ),
            "TYPE" => Reply::Simple(
                match self.get_live(&argv[1], now) {
                    None => "none",
                    Some(Item {
                        value: Value::Str(_),
                        ..
                    }) => "string",
                    Some(Item {
                        value: Value::Hash(_),
                        ..
                    }) => "hash",
                }
                .into(),
            ),
            "TTL" | "PTTL" | "EXPIRETIME" | "PEXPIRETIME" => match self.get_live(&argv[1], now) {
                None => Reply::Int(-2),
                Some(Item {
                    expire_at: None, ..
                }) => Reply::Int(-1),
                Some(Item {
                    expire_at: Some(t), ..
                }) => Reply::Int(match name.as_str() {
                    "TTL" => ((t - now) as i64 + 500) / 1000,
                    "PTTL" => (t - now) as i64,
                    "EXPIRETIME" => (*t / 1000) as i64,
                    _ => *t as i64,
                }),
            },
            "HGET" | "HMGET" | "HGETALL" | "HKEYS" | "HVALS" | "HLEN" | "HEXISTS" | "HSTRLEN" => {
                let empty = BTreeMap::new();
                let h = match self.get_live(&argv[1], now) {
                    None => &empty,
                    Some(Item {
                        value: Value::Hash(h),
                        ..
                    }) => h,
                    Some(_) => return Reply::err(WRONGTYPE),
                };
                match name.as_str() {
                    "HGET" => h.get(&argv[2]).map(Reply::bulk).unwrap_or(Reply::Nil),
                    "HMGET" => Reply::Array(
                        argv[2..]
                            .iter()
                            .map(|f| h.get(f).map(Reply::bulk).unwrap_or(Reply::Nil))
                            .collect(),
                    ),
                    "HGETALL" => Reply::Map(
                        h.iter()
                            .map(|(k, v)| (Reply::bulk(k), Reply::bulk(v)))
                            .collect(),
                    ),
                    "HKEYS" => Reply::Array(h.keys().map(Reply::bulk).collect()),
                    "HVALS" => Reply::Array(h.values().map(Reply::bulk).collect()),
                    "HLEN" => Reply::Int(h.len() as i64),
                    "HEXISTS" => Reply::Int(h.contains_key(&argv[2]) as i64),
                    _ => Reply::Int(h.get(&argv[2]).map(|v| v.len()).unwrap_or(0) as i64),
                }
            }
            "SCAN" => self.scan(argv, now),
            "KEYS" => Reply::Array(
                self.map
                    .iter()
                    .filter(|(k, i)| i.live(now) && glob_match(&argv[1], &k.1))
                    .map(|(k, _)| Reply::bulk(&k.1))
                    .collect(),
            ),
            "DBSIZE" => Reply::Int(self.live_len(now) as i64),
            _ => Reply::err(format!(
                "ERR unknown command '{}'",
                name.to_ascii_lowercase()
            )),
        }
    }

    fn scan(&self, argv: &[Vec<u8>], now: u64) -> Reply {
        let Some(cursor) = std::str::from_utf8(&argv[1])
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
        else {
            return Reply::err("ERR invalid cursor");
        };
        let mut pattern: Option<&[u8]> = None;
        let mut count = 10usize;
        let mut typ: Option<String> = None;
        let mut i = 2;
        while i < argv.len() {
            let opt = upper(&argv[i]);
            if i + 1 >= argv.len() {
                return Reply::err(SYNTAX);
            }
            match opt.as_str() {
                "MATCH" => pattern = Some(&argv[i + 1]),
                "COUNT" => match parse_i64(&argv[i + 1]) {
                    Some(c) if c >= 1 => count = c.min(100_000) as usize,
                    _ => return Reply::err(NOT_INT),
                },
                "TYPE" => typ = Some(String::from_utf8_lossy(&argv[i + 1]).to_ascii_lowercase()),
                _ => return Reply::err(SYNTAX),
            }
            i += 2;
        }
        // Cursor c > 0 means "continue from hash c - 1"; 0 starts (and ends) a scan.
        let start = SKey(cursor.saturating_sub(1), Vec::new());
        let mut keys = Vec::new();
        let mut next = 0u64;
        let mut last_hash = None;
        for (visited, (k, item)) in self.map.range(start..).enumerate() {
            // Finish the current hash value before stopping, so the cursor never splits one.
            if visited >= count && last_hash != Some(k.0) {
                next = k.0 + 1;
                break;
            }
            last_hash = Some(k.0);
            if !item.live(now) {
                continue;
            }
            if let Some(p) = pattern
                && !glob_match(p, &k.1)
            {
                continue;
            }
            if let Some(t) = &typ {
                let kt = match item.value {
                    Value::Str(_) => "string",
                    Value::Hash(_) => "hash",
                };
                if t != kt {
                    continue;
                }
            }
            keys.push(Reply::bulk(&k.1));
        }
        Reply::Array(vec![Reply::bulk(next.to_string()), Reply::Array(keys)])
    }

    /// Runs a command inside the state machine; `index` is the log index (the new version).
    pub fn write(&mut self, argv: &[Vec<u8>], now: u64, index: u64) -> Reply {
        let name = upper(&argv[0]);
        match classify(&name) {
            Some((Class::Read, _)) => return self.read(argv, now),
            None => {
                return Reply::err(format!(
                    "ERR unknown command '{}'",
                    name.to_ascii_lowercase()
                ));
            }
            _ => {}
        }
        if !check_arity(&name, argv.len()) {
            return arity_err(&name);
        }
        for k in write_keys(&name, argv) {
            self.reap(k, now, index);
        }
        match name.as_str() {
            "SET" => self.set(argv, now, index),
            "SETNX" => {
                if self.get_live(&argv[1], now).is_some() {
                    return Reply::Int(0);
                }
                self.put_str(&argv[1], argv[2].clone(), None, index);
                Reply::Int(1)
            }
            "SETEX" | "PSETEX" => {
                let Some(t) = parse_i64(&argv[2]).filter(|t| *t > 0) else {
                    return Reply::err(format!(
                        "ERR invalid expire time in '{}' command",
                        name.to_ascii_lowercase()
                    ));
                };
                let ms = if name == "SETEX" {
                    t.saturating_mul(1000)
                } else {
                    t
                };
                self.put_str(
                    &argv[1],
                    argv[3].clone(),
                    Some(now.saturating_add(ms as u64)),
                    index,
                );
                Reply::ok()
            }
            "GETSET" => {
                let old = match self.get_live(&argv[1], now) {
                    None => Reply::Nil,
                    Some(Item {
                        value: Value::Str(s),
                        ..
                    }) => Reply::bulk(s),
                    Some(_) => return Reply::err(WRONGTYPE),
                };
                self.put_str(&argv[1], argv[2].clone(), None, index);
                old
            }
            "GETDEL" => match self.get_live(&argv[1], now) {
                None => Reply::Nil,
                Some(Item {
                    value: Value::Str(s),
                    ..
                }) => {
                    let r = Reply::bulk(s);
                    self.del(&argv[1], index);
                    r
                }
                Some(_) => Reply::err(WRONGTYPE),
            },
            "GETEX" => {
                let r = match self.get_live(&argv[1], now) {
                    None => return Reply::Nil,
                    Some(Item {
                        value: Value::Str(s),
                        ..
                    }) => Reply::bulk(s),
                    Some(_) => return Reply::err(WRONGTYPE),
                };
                if argv.len() > 2 {
                    let opt = upper(&argv[2]);
                    let exp = if opt == "PERSIST" && argv.len() == 3 {
                        None
                    } else if argv.len() == 4 {
                        match expiry_opt(&opt, &argv[3], now) {
                            Ok(e) => Some(e),
                            Err(e) => return e,
                        }
                    } else {
                        return Reply::err(SYNTAX);
                    };
                    if let Some(i) = self.map.get_mut(&SKey::new(&argv[1])) {
                        i.expire_at = exp;
                        i.ver = index;
                    }
                }
                r
            }
            "APPEND" => {
                let sk = SKey::new(&argv[1]);
                match self.map.get_mut(&sk) {
                    None => {
                        let n = argv[2].len();
                        self.put_str(&argv[1], argv[2].clone(), None, index);
                        Reply::Int(n as i64)
                    }
                    Some(Item {
                        value: Value::Str(s),
                        ver,
                        ..
                    }) => {
                        s.extend_from_slice(&argv[2]);
                        *ver = index;
                        Reply::Int(s.len() as i64)
                    }
                    Some(_) => Reply::err(WRONGTYPE),
                }
            }
            "MSET" | "MSETNX" => {
                if argv.len().is_multiple_of(2) {
                    return arity_err(&name);
                }
                if name == "MSETNX"
                    && argv[1..]
                        .chunks(2)
                        .any(|kv| self.get_live(&kv[0], now).is_some())
                {
                    return Reply::Int(0);
                }
                for kv in argv[1..].chunks(2) {
                    self.put_str(&kv[0], kv[1].clone(), None, index);
                }
                if name == "MSET" {
                    Reply::ok()
                } else {
                    Reply::Int(1)
                }
            }
            "INCR" | "DECR" | "INCRBY" | "DECRBY" => {
                let by = match name.as_str() {
                    "INCR" => 1,
                    "DECR" => -1,
                    _ => match parse_i64(&argv[2]) {
                        Some(v) if name == "INCRBY" => v,
                        Some(v) => match v.checked_neg() {
                            Some(n) => n,
                            None => return Reply::err("ERR decrement would overflow"),
                        },
                        None => return Reply::err(NOT_INT),
                    },
                };
                self.incr(&argv[1], by, index)
            }
            "INCRBYFLOAT" => {
                let Some(by) = parse_f64(&argv[2]) else {
                    return Reply::err(NOT_FLOAT);
                };
                let (cur, exp) = match self.number(&argv[1], parse_f64, NOT_FLOAT) {
                    Ok(found) => found,
                    Err(reply) => return reply,
                };
                let v = cur + by;
                if v.is_infinite() {
                    return Reply::err("ERR increment would produce NaN or Infinity");
                }
                let s = format_double(v);
                self.put_str(&argv[1], s.clone().into_bytes(), exp, index);
                Reply::bulk(s)
            }
            "DEL" | "UNLINK" => {
                let mut n = 0;
                for k in &argv[1..] {
                    if self.del(k, index) {
                        n += 1;
                    }
                }
                Reply::Int(n)
            }
            "EXPIRE" | "PEXPIRE" | "EXPIREAT" | "PEXPIREAT" => {
                let Some(t) = parse_i64(&argv[2]) else {
                    return Reply::err(NOT_INT);
                };
                let at: i64 = match name.as_str() {
                    "EXPIRE" => (now as i64).saturating_add(t.saturating_mul(1000)),
                    "PEXPIRE" => (now as i64).saturating_add(t),
                    "EXPIREAT" => t.saturating_mul(1000),
                    _ => t,
                };
                let sk = SKey::new(&argv[1]);
                let Some(item) = self.map.get_mut(&sk) else {
                    return Reply::Int(0);
                };
                let cond = if argv.len() > 3 {
                    upper(&argv[3])
                } else {
                    String::new()
                };
                let cur = item.expire_at;
                let ok = match cond.as_str() {
                    "" => true,
                    "NX" => cur.is_none(),
                    "XX" => cur.is_some(),
                    "GT" => cur.is_some_and(|c| at > c as i64),
                    "LT" => cur.is_none_or(|c| at < c as i64),
                    _ => return Reply::err(format!("ERR Unsupported option {cond}")),
                };
                if !ok {
                    return Reply::Int(0);
                }
                if at <= now as i64 {
                    self.del(&argv[1], index);
                } else {
                    item.expire_at = Some(at as u64);
                    item.ver = index;
                }
                Reply::Int(1)
            }
            "PERSIST" => match self.map.get_mut(&SKey::new(&argv[1])) {
                Some(i) if i.expire_at.is_some() => {
                    i.expire_at = None;
                    i.ver = index;
                    Reply::Int(1)
                }
                _ => Reply::Int(0),
            },
            "HSET" | "HMSET" | "HSETNX" => {
                if !argv.len().is_multiple_of(2) {
                    return arity_err(&name);
                }
                let sk = SKey::new(&argv[1]);
                let item = self.map.entry(sk).or_insert_with(|| Item {
                    value: Value::Hash(BTreeMap::new()),
                    expire_at: None,
                    ver: index,
                });
                let Value::Hash(h) = &mut item.value else {
                    return Reply::err(WRONGTYPE);
                };
                let mut added = 0;
                for fv in argv[2..].chunks(2) {
                    if name == "HSETNX" && h.contains_key(&fv[0]) {
                        continue;
                    }
                    if h.insert(fv[0].clone(), fv[1].clone()).is_none() {
                        added += 1;
                    }
                }
                item.ver = index;
                match name.as_str() {
                    "HMSET" => Reply::ok(),
                    _ => Reply::Int(added),
                }
            }
            "HDEL" => {
                let sk = SKey::new(&argv[1]);
                let Some(item) = self.map.get_mut(&sk) else {
                    return Reply::Int(0);
                };
                let Value::Hash(h) = &mut item.value else {
                    return Reply::err(WRONGTYPE);
                };
                let n = argv[2..].iter().filter(|f| h.remove(*f).is_some()).count();
                item.ver = index;
                if h.is_empty() {
                    self.del(&argv[1], index);
                }
                Reply::Int(n as i64)
            }
            "HINCRBY" | "HINCRBYFLOAT" => {
                let sk = SKey::new(&argv[1]);
                let item = self.map.entry(sk).or_insert_with(|| Item {
                    value: Value::Hash(BTreeMap::new()),
                    expire_at: None,
                    ver: index,
                });
                let Value::Hash(h) = &mut item.value else {
                    return Reply::err(WRONGTYPE);
                };
                let cur = h.get(&argv[2]);
                let reply = if name == "HINCRBY" {
                    let Some(by) = parse_i64(&argv[3]) else {
                        return Reply::err(NOT_INT);
                    };
                    let c = match cur {
                        None => 0,
                        Some(v) => match parse_i64(v) {
                            Some(c) => c,
                            None => return Reply::err("ERR hash value is not an integer"),
                        },
                    };
                    let Some(n) = c.checked_add(by) else {
                        return Reply::err("ERR increment or decrement would overflow");
                    };
                    h.insert(argv[2].clone(), n.to_string().into_bytes());
                    Reply::Int(n)
                } else {
                    let Some(by) = parse_f64(&argv[3]) else {
                        return Reply::err(NOT_FLOAT);
                    };
                    let c = match cur {
                        None => 0.0,
                        Some(v) => match parse_f64(v) {
                            Some(c) => c,
                            None => return Reply::err("ERR hash value is not a float"),
                        },
                    };
                    let s = format_double(c + by);
                    h.insert(argv[2].clone(), s.clone().into_bytes());
                    Reply::bulk(s)
                };
                item.ver = index;
                reply
            }
            "FLUSHDB" => {
                self.map.clear();
                self.last_delete = index;
                Reply::ok()
            }
            _ => Reply::err(format!(
                "ERR unknown command '{}'",
                name.to_ascii_lowercase()
            )),
        }
    }

    fn set(&mut self, argv: &[Vec<u8>], now: u64, index: u64) -> Reply {
        let mut exp: Option<u64> = None;
        let mut keep_ttl = false;
        let (mut nx, mut xx, mut get) = (false, false, false);
        let mut i = 3;
        while i < argv.len() {
            let opt = upper(&argv[i]);
            match opt.as_str() {
                "NX" => nx = true,
                "XX" => xx = true,
                "GET" => get = true,
                "KEEPTTL" => keep_ttl = true,
                "EX" | "PX" | "EXAT" | "PXAT" => {
                    if i + 1 >= argv.len() || exp.is_some() {
                        return Reply::err(SYNTAX);
                    }
                    match expiry_opt(&opt, &argv[i + 1], now) {
                        Ok(e) => exp = Some(e),
                        Err(e) => return e,
                    }
                    i += 1;
                }
                _ => return Reply::err(SYNTAX),
            }
            i += 1;
        }
        if (nx && xx) || (keep_ttl && exp.is_some()) {
            return Reply::err(SYNTAX);
        }
        let cur = self.get_live(&argv[1], now);
        let old = match cur {
            None => Reply::Nil,
            Some(Item {
                value: Value::Str(s),
                ..
            }) => Reply::bulk(s),
            Some(_) if get => return Reply::err(WRONGTYPE),
            Some(_) => Reply::Nil,
        };
        let exists = cur.is_some();
        if keep_ttl {
            exp = cur.and_then(|c| c.expire_at);
        }
        if (nx && exists) || (xx && !exists) {
            return if get { old } else { Reply::Nil };
        }
        self.put_str(&argv[1], argv[2].clone(), exp, index);
        if get { old } else { Reply::ok() }
    }

    fn put_str(&mut self, k: &[u8], v: Vec<u8>, expire_at: Option<u64>, index: u64) {
        self.map.insert(
            SKey::new(k),
            Item {
                value: Value::Str(v),
                expire_at,
                ver: index,
            },
        );
    }

    fn del(&mut self, k: &[u8], index: u64) -> bool {
        let gone = self.map.remove(&SKey::new(k)).is_some();
        if gone {
            self.last_delete = index;
        }
        gone
    }

    /// The number a string key holds (zero when absent) and its expiry, for the INCR family:
    /// an increment keeps the key's TTL.
    fn number<T: Default>(
        &self,
        k: &[u8],
        parse: fn(&[u8]) -> Option<T>,
        not_a_number: &'static str,
    ) -> Result<(T, Option<u64>), Reply> {
        match self.map.get(&SKey::new(k)) {
            None => Ok((T::default(), None)),
            Some(Item {
                value: Value::Str(s),
                expire_at,
                ..
            }) => parse(s)
                .map(|v| (v, *expire_at))
                .ok_or_else(|| Reply::err(not_a_number)),
            Some(_) => Err(Reply::err(WRONGTYPE)),
        }
    }

    fn incr(&mut self, k: &[u8], by: i64, index: u64) -> Reply {
        let (cur, exp) = match self.number(k, parse_i64, NOT_INT) {
            Ok(found) => found,
            Err(reply) => return reply,
        };
        let Some(n) = cur.checked_add(by) else {
            return Reply::err("ERR increment or decrement would overflow");
        };
        self.put_str(k, n.to_string().into_bytes(), exp, index);
        Reply::Int(n)
    }
}

fn expiry_opt(opt: &str, arg: &[u8], now: u64) -> Result<u64, Reply> {
    let Some(t) = parse_i64(arg) else {
        return Err(Reply::err(NOT_INT));
    };
    if t <= 0 {
        return Err(Reply::err("ERR invalid expire time in 'set' command"));
    }
    let t = t as u64;
    Ok(match opt {
        "EX" => now.saturating_add(t.saturating_mul(1000)),
        "PX" => now.saturating_add(t),
        "EXAT" => t.saturating_mul(1000),
        "PXAT" => t,
        _ => return Err(Reply::err(SYNTAX)),
    })
}

/// Keys a write command touches (to reap expired ones first).
fn write_keys<'a>(name: &str, argv: &'a [Vec<u8>]) -> Vec<&'a [u8]> {
    match name {
        "MSET" | "MSETNX" => argv[1..].iter().step_by(2).map(|k| k.as_slice()).collect(),
        "DEL" | "UNLINK" => argv[1..].iter().map(|k| k.as_slice()).collect(),
        "FLUSHDB" => Vec::new(),
        _ => argv.get(1).map(|k| vec![k.as_slice()]).unwrap_or_default(),
    }
}

/// All databases plus what the state machine needs to know about itself.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Tables {
    pub dbs: Vec<Db>,
    /// Replies of recent requests by request id, for exactly-once retries.
    pub recent: std::collections::HashMap<u64, Reply>,
    /// (log index, request id) in apply order, to forget old ids deterministically.
    pub recent_order: std::collections::VecDeque<(u64, u64)>,
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
        }
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
                Some(db) if argv.len() == 1 && argv[0] == SWEEP => {
                    Reply::Int(db.sweep(now, index, SWEEP_MAX) as i64)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Vec<Vec<u8>> {
        s.split(' ').map(|x| x.as_bytes().to_vec()).collect()
    }

    #[test]
    fn strings_and_ttl() {
        let mut db = Db::default();
        assert_eq!(db.write(&a("SET k v EX 10"), 1000, 1), Reply::ok());
        assert_eq!(db.read(&a("GET k"), 1000), Reply::bulk("v"));
        assert_eq!(db.read(&a("TTL k"), 1000), Reply::Int(10));
        assert_eq!(db.read(&a("GET k"), 11_000), Reply::Nil);
        assert_eq!(db.write(&a("INCR n"), 1, 2), Reply::Int(1));
        assert_eq!(db.write(&a("INCRBY n 41"), 1, 3), Reply::Int(42));
        assert_eq!(db.write(&a("INCRBYFLOAT f 1.5"), 1, 4), Reply::bulk("1.5"));
        assert_eq!(db.write(&a("SET k x NX"), 11_000, 5), Reply::ok());
        assert_eq!(db.write(&a("SET k y NX"), 11_000, 6), Reply::Nil);
        assert_eq!(db.write(&a("SET k z XX GET"), 11_000, 7), Reply::bulk("x"));
        assert_eq!(db.write(&a("HSET h a 1 b 2"), 1, 8), Reply::Int(2));
        assert!(db.write(&a("INCR h"), 1, 9).is_error());
        assert_eq!(db.read(&a("TYPE h"), 1), Reply::Simple("hash".into()));
        assert_eq!(db.write(&a("DEL h k nope"), 11_000, 10), Reply::Int(2));
    }

    #[test]
    fn scan_visits_every_key_once_per_pass() {
        let mut db = Db::default();
        for i in 0..100 {
            db.write(&a(&format!("SET key:{i} v")), 0, i + 1);
        }
        let mut seen = std::collections::BTreeSet::new();
        let mut cursor = "0".to_string();
        loop {
            let r = db.read(&a(&format!("SCAN {cursor} MATCH key:* COUNT 7")), 0);
            let Reply::Array(parts) = r else { panic!() };
            let Reply::Bulk(c) = &parts[0] else { panic!() };
            let Reply::Array(keys) = &parts[1] else {
                panic!()
            };
            for k in keys {
                let Reply::Bulk(k) = k else { panic!() };
                seen.insert(k.clone());
            }
            cursor = String::from_utf8(c.clone()).unwrap();
            if cursor == "0" {
                break;
            }
        }
        assert_eq!(seen.len(), 100);
    }

    #[test]
    fn watch_detects_changes() {
        let mut t = Tables::default();
        let set = |v: &str| WriteReq {
            rid: 0,
            now_ms: 0,
            watches: vec![Watch {
                db: 0,
                key: b"k".to_vec(),
                ver: 0,
                at: 0,
            }],
            cmds: vec![(0, a(&format!("SET k {v}")))],
            multi: true,
        };
        assert_eq!(t.apply(&set("1"), 1), Reply::Array(vec![Reply::ok()]));
        // Version moved on: the watch (ver 0) fails.
        assert_eq!(t.apply(&set("2"), 2), Reply::NilArray);
    }

    #[test]
    fn globs() {
        assert!(glob_match(b"key:*", b"key:1"));
        assert!(glob_match(b"h?llo", b"hello"));
        assert!(glob_match(b"h[ae]llo", b"hallo"));
        assert!(!glob_match(b"h[^e]llo", b"hello"));
        assert!(glob_match(b"*", b""));
    }
}
