//! The keyspace: existence, types, TTLs, SCAN, renames, OBJECT.

use super::{
    At, Db, Item, KeyRef, NO_KEY, NOT_INT, Rng, SKey, SYNTAX, Value, glob_match, parse_i64, upper,
};
use crate::resp::Reply;

/// The size limits Redis 7.0 uses to pick a compact encoding (CONFIG's *-max-* settings),
/// for OBJECT ENCODING.
#[derive(Clone, Debug)]
pub struct Limits {
    pub hash_entries: usize,
    pub hash_value: usize,
    pub zset_entries: usize,
    pub zset_value: usize,
    pub intset_entries: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            hash_entries: 128,
            hash_value: 64,
            zset_entries: 128,
            zset_value: 64,
            intset_entries: 512,
        }
    }
}

fn is_int_repr(s: &[u8]) -> bool {
    s.len() <= 20 && parse_i64(s).is_some_and(|v| v.to_string().as_bytes() == s)
}

impl Db {
    /// OBJECT ENCODING/REFCOUNT/FREQ/IDLETIME: the encoding Redis 7.0 would pick for the
    /// value as it is now.
    pub fn object(&self, argv: &[Vec<u8>], now: u64, limits: &Limits) -> Reply {
        if argv.len() == 2 && argv[1].eq_ignore_ascii_case(b"HELP") {
            return Reply::Array(
                [
                    "OBJECT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
                    "ENCODING <key>",
                    "FREQ <key>",
                    "IDLETIME <key>",
                    "REFCOUNT <key>",
                ]
                .iter()
                .map(Reply::bulk)
                .collect(),
            );
        }
        let sub = upper(&argv[1]);
        if argv.len() != 3 {
            return Reply::err(format!(
                "ERR unknown subcommand or wrong number of arguments for '{}'. Try OBJECT HELP.",
                String::from_utf8_lossy(&argv[1])
            ));
        }
        let Some(item) = self.get_live(&argv[2], now) else {
            return Reply::Nil;
        };
        match sub.as_str() {
            "ENCODING" => Reply::bulk(encoding(&item.value, limits)),
            "REFCOUNT" => Reply::Int(1),
            "IDLETIME" => Reply::Int(0),
            "FREQ" => Reply::err(
                "ERR An LFU maxmemory policy is not selected, access frequency not tracked. Please note that when switching between policies at runtime LRU and LFU data will take some time to adjust.",
            ),
            _ => Reply::err(format!(
                "ERR unknown subcommand '{}'. Try OBJECT HELP.",
                String::from_utf8_lossy(&argv[1])
            )),
        }
    }
}

impl Db {
    /// MEMORY USAGE: the key's encoded size plus a fixed per-key overhead (an estimate, as
    /// Redis's own figure is).
    pub fn memory_usage(&self, k: &[u8], now: u64) -> Option<usize> {
        let item = self.get_live(k, now)?;
        Some(crate::codec::enc(&item.value).map(|b| b.len()).unwrap_or(0) + k.len() + 56)
    }

    /// DEBUG DIGEST-VALUE: a hash of the key's value (40 hex digits, zeros when absent).
    pub fn digest_value(&self, k: &[u8], now: u64) -> String {
        match self.get_live(k, now) {
            None => "0".repeat(40),
            Some(item) => hex40(&[crate::codec::enc(&item.value).unwrap_or_default()]),
        }
    }
}

/// DUMP's format: the value (postcard), a format version, and a checksum of both, so that
/// RESTORE refuses anything else (as Redis's RDB payload + version + CRC64).
const DUMP_VERSION: u8 = 1;

fn dump(v: &Value) -> Vec<u8> {
    let mut out = crate::codec::enc(v).unwrap_or_default();
    out.push(DUMP_VERSION);
    let sum = super::key_hash(&out);
    out.extend_from_slice(&sum.to_le_bytes());
    out
}

fn undump(b: &[u8]) -> Option<Value> {
    if b.len() < 9 {
        return None;
    }
    let (body, sum) = b.split_at(b.len() - 8);
    if super::key_hash(body).to_le_bytes() != sum || body.last() != Some(&DUMP_VERSION) {
        return None;
    }
    crate::codec::dec(&body[..body.len() - 1]).ok()
}

fn restore(db: &mut Db, argv: &[Vec<u8>], at: At) -> Result<Reply, Reply> {
    let ttl = parse_i64(&argv[2]).ok_or_else(|| Reply::err(NOT_INT))?;
    if ttl < 0 {
        return Err(Reply::err("ERR Invalid TTL value, must be >= 0"));
    }
    let (mut replace, mut abs) = (false, false);
    let mut i = 4;
    while i < argv.len() {
        match upper(&argv[i]).as_str() {
            "REPLACE" => replace = true,
            "ABSTTL" => abs = true,
            "IDLETIME" | "FREQ" if i + 1 < argv.len() => {
                match parse_i64(&argv[i + 1]) {
                    Some(v) if v >= 0 => {}
                    _ => return Err(Reply::err("ERR Invalid IDLETIME value, must be >= 0")),
                }
                i += 1;
            }
            _ => return Err(Reply::err(SYNTAX)),
        }
        i += 1;
    }
    if !replace && db.get_live(&argv[1], at.now).is_some() {
        return Err(Reply::err("BUSYKEY Target key name already exists."));
    }
    let value = undump(&argv[3])
        .ok_or_else(|| Reply::err("ERR DUMP payload version or checksum are wrong"))?;
    let expire_at = match (ttl, abs) {
        (0, _) => None,
        (t, true) => Some(t as u64),
        (t, false) => Some(at.now.saturating_add(t as u64)),
    };
    db.del(&argv[1], at.index);
    if expire_at.is_none_or(|e| e > at.now) {
        db.put(&argv[1], value, expire_at, at.index);
    }
    Ok(Reply::ok())
}

/// Two FNV passes over the parts, as 40 hex digits (Redis's digests are SHA-1 sized).
fn hex40(parts: &[Vec<u8>]) -> String {
    let mut a = 0xcbf29ce484222325u64;
    let mut b = 0x84222325cbf29ce4u64;
    for p in parts {
        for &x in p {
            a = (a ^ x as u64).wrapping_mul(0x100000001b3);
            b = (b ^ (x as u64).rotate_left(3)).wrapping_mul(0x100000001b3);
        }
        a = a.rotate_left(7) ^ b;
    }
    format!("{a:016x}{b:016x}{:08x}", (a ^ b) as u32)
}

/// DEBUG DIGEST: a hash of every database's live keys, values and expiries, independent
/// of order (zeros when empty, as Redis).
pub fn digest(t: &super::Tables, now: u64) -> String {
    let mut parts: Vec<Vec<u8>> = Vec::new();
    for (i, db) in t.dbs.iter().enumerate() {
        for (k, item) in db.map.iter().filter(|(_, i)| i.live(now)) {
            let mut p = (i as u32).to_le_bytes().to_vec();
            p.extend_from_slice(&k.1);
            p.extend(crate::codec::enc(&item.value).unwrap_or_default());
            p.extend(item.expire_at.unwrap_or(0).to_le_bytes());
            parts.push(p);
        }
    }
    if parts.is_empty() {
        return "0".repeat(40);
    }
    parts.sort();
    hex40(&parts)
}

fn encoding(v: &Value, l: &Limits) -> &'static str {
    match v {
        Value::Str(s) if is_int_repr(s) => "int",
        Value::Str(s) if s.len() <= 44 => "embstr",
        Value::Str(_) => "raw",
        Value::List(_) => "quicklist",
        Value::Set(s) if s.len() <= l.intset_entries && s.iter().all(|m| is_int_repr(m)) => {
            "intset"
        }
        Value::Set(_) => "hashtable",
        Value::Hash(h)
            if h.len() <= l.hash_entries
                && h.iter()
                    .all(|(k, v)| k.len() <= l.hash_value && v.len() <= l.hash_value) =>
        {
            "listpack"
        }
        Value::Hash(_) => "hashtable",
        Value::ZSet(z)
            if z.len() <= l.zset_entries && z.iter().all(|(m, _)| m.len() <= l.zset_value) =>
        {
            "listpack"
        }
        Value::ZSet(_) => "skiplist",
        Value::Stream(_) => "stream",
    }
}

/// `[cursor, items]` for HSCAN/SSCAN/ZSCAN (`argv` = CMD key cursor [MATCH p] [COUNT n]).
/// The whole collection is returned in one call with cursor 0, as Redis does for its
/// compact encodings; SCAN's guarantees hold trivially.
pub(crate) fn scan_collection<'a>(
    argv: &[Vec<u8>],
    items: impl Iterator<Item = (&'a [u8], Option<Vec<u8>>)>,
) -> Result<Reply, Reply> {
    parse_u64_cursor(&argv[2])?;
    let mut pattern: Option<&[u8]> = None;
    let mut i = 3;
    while i < argv.len() {
        if i + 1 >= argv.len() {
            return Err(Reply::err(SYNTAX));
        }
        match upper(&argv[i]).as_str() {
            "MATCH" => pattern = Some(&argv[i + 1]),
            "COUNT" => match parse_i64(&argv[i + 1]) {
                Some(c) if c >= 1 => {}
                Some(_) => return Err(Reply::err(SYNTAX)),
                None => return Err(Reply::err(NOT_INT)),
            },
            _ => return Err(Reply::err(SYNTAX)),
        }
        i += 2;
    }
    let mut out = Vec::new();
    for (m, v) in items {
        if pattern.is_some_and(|p| !glob_match(p, m)) {
            continue;
        }
        out.push(Reply::bulk(m));
        if let Some(v) = v {
            out.push(Reply::Bulk(v));
        }
    }
    Ok(Reply::Array(vec![Reply::bulk("0"), Reply::Array(out)]))
}

fn parse_u64_cursor(b: &[u8]) -> Result<u64, Reply> {
    std::str::from_utf8(b)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| Reply::err("ERR invalid cursor"))
}

/// A flat [k, v, k, v…] list as pairs (RESP3 shows them as two-element arrays).
pub(crate) fn pairs_reply(flat: Vec<Reply>) -> Reply {
    let mut it = flat.into_iter();
    let mut pairs = Vec::new();
    while let (Some(a), Some(b)) = (it.next(), it.next()) {
        pairs.push((a, b));
    }
    Reply::Pairs(pairs)
}

pub(super) fn read(db: &Db, name: &str, argv: &[Vec<u8>], now: u64) -> Option<Reply> {
    Some(super::flat(run_read(db, name, argv, now)))
}

fn run_read(db: &Db, name: &str, argv: &[Vec<u8>], now: u64) -> Result<Reply, Reply> {
    Ok(match name {
        "EXISTS" | "TOUCH" => Reply::Int(
            argv[1..]
                .iter()
                .filter(|k| db.get_live(k, now).is_some())
                .count() as i64,
        ),
        "TYPE" => Reply::Simple(
            db.get_live(&argv[1], now)
                .map(|i| i.value.type_name())
                .unwrap_or("none")
                .into(),
        ),
        "TTL" | "PTTL" | "EXPIRETIME" | "PEXPIRETIME" => match db.get_live(&argv[1], now) {
            None => Reply::Int(-2),
            Some(Item {
                expire_at: None, ..
            }) => Reply::Int(-1),
            Some(Item {
                expire_at: Some(t), ..
            }) => Reply::Int(match name {
                "TTL" => ((t - now) as i64 + 500) / 1000,
                "PTTL" => (t - now) as i64,
                "EXPIRETIME" => (*t / 1000) as i64,
                _ => *t as i64,
            }),
        },
        "SCAN" => scan(db, argv, now)?,
        "KEYS" => Reply::Array(
            db.map
                .iter()
                .filter(|(k, i)| i.live(now) && glob_match(&argv[1], &k.1))
                .map(|(k, _)| Reply::bulk(&k.1))
                .collect(),
        ),
        "DBSIZE" => Reply::Int(db.live_len(now) as i64),
        // Inside MULTI and scripts (the server answers them directly otherwise).
        "PING" => match argv.get(1) {
            None => Reply::Simple("PONG".into()),
            Some(m) => Reply::bulk(m),
        },
        "ECHO" => Reply::bulk(&argv[1]),
        "RANDOMKEY" => {
            let live: Vec<&SKey> = db
                .map
                .iter()
                .filter(|(_, i)| i.live(now))
                .map(|(k, _)| k)
                .collect();
            if live.is_empty() {
                Reply::Nil
            } else {
                Reply::bulk(&live[Rng::local().below(live.len())].1)
            }
        }
        "OBJECT" => db.object(argv, now, &super::Limits::default()),
        "SORT_RO" | "SORT" => {
            let s = super::sort::sort(db, argv, now, name == "SORT_RO")?;
            if s.store.is_some() {
                return Err(Reply::err(SYNTAX));
            }
            sorted_reply(s.out)
        }
        "DUMP" => db
            .get_live(&argv[1], now)
            .map(|i| Reply::Bulk(dump(&i.value)))
            .unwrap_or(Reply::Nil),
        "MEMORY" => match upper(&argv[1]).as_str() {
            "USAGE" if argv.len() == 3 || argv.len() == 5 => db
                .memory_usage(&argv[2], now)
                .map(|n| Reply::Int(n as i64))
                .unwrap_or(Reply::Nil),
            "DOCTOR" => Reply::bulk("Sam, I have no memory problems"),
            _ => Reply::err(format!(
                "ERR unknown subcommand or wrong number of arguments for '{}'. Try MEMORY HELP.",
                String::from_utf8_lossy(&argv[1])
            )),
        },
        _ => return Err(super::unknown_cmd(name)),
    })
}

fn sorted_reply(out: Vec<Option<Vec<u8>>>) -> Reply {
    Reply::Array(
        out.into_iter()
            .map(|v| v.map(Reply::Bulk).unwrap_or(Reply::Nil))
            .collect(),
    )
}

fn scan(db: &Db, argv: &[Vec<u8>], now: u64) -> Result<Reply, Reply> {
    let cursor = parse_u64_cursor(&argv[1])?;
    let mut pattern: Option<&[u8]> = None;
    let mut count = 10usize;
    let mut typ: Option<String> = None;
    let mut i = 2;
    while i < argv.len() {
        let opt = upper(&argv[i]);
        if i + 1 >= argv.len() {
            return Err(Reply::err(SYNTAX));
        }
        match opt.as_str() {
            "MATCH" => pattern = Some(&argv[i + 1]),
            "COUNT" => match parse_i64(&argv[i + 1]) {
                Some(c) if c >= 1 => count = c.min(100_000) as usize,
                Some(_) => return Err(Reply::err(SYNTAX)),
                None => return Err(Reply::err(NOT_INT)),
            },
            "TYPE" => typ = Some(String::from_utf8_lossy(&argv[i + 1]).to_ascii_lowercase()),
            _ => return Err(Reply::err(SYNTAX)),
        }
        i += 2;
    }
    // Cursor c > 0 means "continue from hash c - 1"; 0 starts (and ends) a scan.
    let start = SKey(cursor.saturating_sub(1), Vec::new());
    let mut keys = Vec::new();
    let mut next = 0u64;
    let mut last_hash = None;
    for (visited, (k, item)) in db.map.range(start..).enumerate() {
        // Finish the current hash value before stopping, so the cursor never splits one.
        if visited >= count && last_hash != Some(k.0) {
            next = k.0 + 1;
            break;
        }
        last_hash = Some(k.0);
        if !item.live(now) {
            continue;
        }
        if pattern.is_some_and(|p| !glob_match(p, &k.1)) {
            continue;
        }
        if typ.as_deref().is_some_and(|t| t != item.value.type_name()) {
            continue;
        }
        keys.push(Reply::bulk(&k.1));
    }
    Ok(Reply::Array(vec![
        Reply::bulk(next.to_string()),
        Reply::Array(keys),
    ]))
}

pub(super) fn write(db: &mut Db, name: &str, argv: &[Vec<u8>], at: At) -> Option<Reply> {
    Some(super::flat(run_write(db, name, argv, at)))
}

fn run_write(db: &mut Db, name: &str, argv: &[Vec<u8>], at: At) -> Result<Reply, Reply> {
    let At { now, index } = at;
    Ok(match name {
        "DEL" | "UNLINK" => {
            Reply::Int(argv[1..].iter().filter(|k| db.del(k, index)).count() as i64)
        }
        "EXPIRE" | "PEXPIRE" | "EXPIREAT" | "PEXPIREAT" => expire(db, name, argv, at)?,
        "RESTORE" => restore(db, argv, at)?,
        "SORT" => {
            let s = super::sort::sort(db, argv, now, false)?;
            match s.store {
                // The output as a list (a missing GET value as an empty string); an empty
                // one deletes the destination.
                Some(dest) => {
                    let n = s.out.len();
                    let l = s.out.into_iter().map(Option::unwrap_or_default).collect();
                    db.put(&dest, Value::List(l), None, index);
                    if n == 0 {
                        // Redis counts the destination as modified even when it was absent.
                        db.last_delete = index;
                    }
                    Reply::Int(n as i64)
                }
                None => sorted_reply(s.out),
            }
        }
        "PERSIST" => match db.map.get_mut(KeyRef::new(&argv[1]).view()) {
            Some(i) if i.expire_at.is_some() => {
                i.expire_at = None;
                i.ver = index;
                Reply::Int(1)
            }
            _ => Reply::Int(0),
        },
        "RENAME" | "RENAMENX" => {
            if db.get_live(&argv[1], now).is_none() {
                return Err(Reply::err(NO_KEY));
            }
            if argv[1] == argv[2] {
                return Ok(if name == "RENAME" {
                    Reply::ok()
                } else {
                    Reply::Int(0)
                });
            }
            if name == "RENAMENX" && db.get_live(&argv[2], now).is_some() {
                return Ok(Reply::Int(0));
            }
            let Some(mut item) = db.take(&argv[1], index) else {
                return Err(Reply::err(NO_KEY));
            };
            item.ver = index;
            db.del(&argv[2], index);
            db.insert_item(&argv[2], item);
            if name == "RENAME" {
                Reply::ok()
            } else {
                Reply::Int(1)
            }
        }
        "FLUSHDB" => {
            if argv.len() > 2
                || argv.get(1).is_some_and(|a| {
                    !a.eq_ignore_ascii_case(b"SYNC") && !a.eq_ignore_ascii_case(b"ASYNC")
                })
            {
                return Err(Reply::err(SYNTAX));
            }
            db.flush();
            Reply::ok()
        }
        _ => return Err(super::unknown_cmd(name)),
    })
}

fn expire(db: &mut Db, name: &str, argv: &[Vec<u8>], at: At) -> Result<Reply, Reply> {
    let At { now, index } = at;
    let Some(t) = parse_i64(&argv[2]) else {
        return Err(Reply::err(NOT_INT));
    };
    let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
    for o in &argv[3..] {
        match upper(o).as_str() {
            "NX" => nx = true,
            "XX" => xx = true,
            "GT" => gt = true,
            "LT" => lt = true,
            other => return Err(Reply::err(format!("ERR Unsupported option {other}"))),
        }
    }
    if nx && (xx || gt || lt) {
        return Err(Reply::err(
            "ERR NX and XX, GT or LT options at the same time are not compatible",
        ));
    }
    if gt && lt {
        return Err(Reply::err(
            "ERR GT and LT options at the same time are not compatible",
        ));
    }
    let bad = || {
        Reply::err(format!(
            "ERR invalid expire time in '{}' command",
            name.to_ascii_lowercase()
        ))
    };
    let ms = match name {
        "EXPIRE" | "EXPIREAT" => t.checked_mul(1000).ok_or_else(bad)?,
        _ => t,
    };
    let at_ms = match name {
        "EXPIRE" | "PEXPIRE" => ms.checked_add(now as i64).ok_or_else(bad)?,
        _ => ms,
    };
    let Some(item) = db.map.get_mut(KeyRef::new(&argv[1]).view()) else {
        return Ok(Reply::Int(0));
    };
    let cur = item.expire_at;
    let ok = (!nx || cur.is_none())
        && (!xx || cur.is_some())
        && (!gt || cur.is_some_and(|c| at_ms > c as i64))
        && (!lt || cur.is_none_or(|c| at_ms < c as i64));
    if !ok {
        return Ok(Reply::Int(0));
    }
    if at_ms <= now as i64 {
        db.del(&argv[1], index);
    } else {
        item.expire_at = Some(at_ms as u64);
        item.ver = index;
    }
    Ok(Reply::Int(1))
}
