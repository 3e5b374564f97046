//! Strings: GET/SET and friends, counters, ranges, LCS.

use super::{
    At, Db, Item, NOT_FLOAT, NOT_INT, SYNTAX, Value, WRONGTYPE, arity_err, parse_f64, parse_i64,
    upper,
};
use crate::resp::{Reply, format_double};

/// Largest string SETRANGE/APPEND may build (Redis's proto-max-bulk-len default).
const MAX_STRING: usize = 512 * 1024 * 1024;

impl Db {
    /// The live string at `k`: Ok(None) when absent, WRONGTYPE for another type.
    pub(crate) fn string(&self, k: &[u8], now: u64) -> Result<Option<&Vec<u8>>, Reply> {
        match self.get_live(k, now) {
            None => Ok(None),
            Some(Item {
                value: Value::Str(s),
                ..
            }) => Ok(Some(s)),
            Some(_) => Err(Reply::err(WRONGTYPE)),
        }
    }

    fn put_str(&mut self, k: &[u8], v: Vec<u8>, expire_at: Option<u64>, index: u64) {
        self.put(k, Value::Str(v), expire_at, index);
    }
}

pub(super) fn read(db: &Db, name: &str, argv: &[Vec<u8>], now: u64) -> Option<Reply> {
    Some(super::flat(run_read(db, name, argv, now)))
}

fn run_read(db: &Db, name: &str, argv: &[Vec<u8>], now: u64) -> Result<Reply, Reply> {
    Ok(match name {
        "GET" => db
            .string(&argv[1], now)?
            .map(Reply::bulk)
            .unwrap_or(Reply::Nil),
        "MGET" => Reply::Array(
            argv[1..]
                .iter()
                .map(|k| match db.string(k, now) {
                    Ok(Some(s)) => Reply::bulk(s),
                    _ => Reply::Nil,
                })
                .collect(),
        ),
        "STRLEN" => Reply::Int(db.string(&argv[1], now)?.map(|s| s.len()).unwrap_or(0) as i64),
        "GETRANGE" | "SUBSTR" => {
            let (Some(a), Some(b)) = (parse_i64(&argv[2]), parse_i64(&argv[3])) else {
                return Err(Reply::err(NOT_INT));
            };
            let empty = Vec::new();
            let s = db.string(&argv[1], now)?.unwrap_or(&empty);
            let len = s.len() as i64;
            // Redis: a negative end past the start clamps to 0, unlike LRANGE.
            if len == 0 || (a < 0 && b < 0 && a > b) {
                return Ok(Reply::bulk(""));
            }
            let norm = |x: i64| if x < 0 { (len + x).max(0) } else { x };
            let (a, b) = (norm(a), norm(b).min(len - 1));
            if a > b {
                Reply::bulk("")
            } else {
                Reply::bulk(&s[a as usize..=b as usize])
            }
        }
        "LCS" => lcs(db, argv, now)?,
        _ => return Err(super::unknown_cmd(name)),
    })
}

/// LCS key1 key2 [LEN] [IDX] [MINMATCHLEN n] [WITHMATCHLEN], as Redis's dynamic programme.
fn lcs(db: &Db, argv: &[Vec<u8>], now: u64) -> Result<Reply, Reply> {
    let (mut len_only, mut idx, mut with_len, mut min_len) = (false, false, false, 0i64);
    let mut i = 3;
    while i < argv.len() {
        match upper(&argv[i]).as_str() {
            "LEN" => len_only = true,
            "IDX" => idx = true,
            "WITHMATCHLEN" => with_len = true,
            "MINMATCHLEN" if i + 1 < argv.len() => {
                min_len = parse_i64(&argv[i + 1])
                    .ok_or_else(|| Reply::err(NOT_INT))?
                    .max(0);
                i += 1;
            }
            _ => return Err(Reply::err(SYNTAX)),
        }
        i += 1;
    }
    if len_only && idx {
        return Err(Reply::err(
            "ERR If you want both the length and indexes, please just use IDX.",
        ));
    }
    let str_or_empty = |k: &[u8]| -> Result<Vec<u8>, Reply> {
        match db.string(k, now) {
            Ok(s) => Ok(s.cloned().unwrap_or_default()),
            Err(_) => Err(Reply::err(
                "ERR The specified keys must contain string values",
            )),
        }
    };
    let (a, b) = (str_or_empty(&argv[1])?, str_or_empty(&argv[2])?);
    if (a.len() + 1).saturating_mul(b.len() + 1) > 64 * 1024 * 1024 {
        return Err(Reply::err(
            "ERR Insufficient memory, transient memory for LCS exceeds proto-max-bulk-len",
        ));
    }
    let w = b.len() + 1;
    let mut t = vec![0u32; (a.len() + 1) * w];
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            t[i * w + j] = if a[i - 1] == b[j - 1] {
                t[(i - 1) * w + j - 1] + 1
            } else {
                t[(i - 1) * w + j].max(t[i * w + j - 1])
            };
        }
    }
    let total = t[a.len() * w + b.len()] as usize;
    if len_only {
        return Ok(Reply::Int(total as i64));
    }
    // Walk back from the end, collecting the common string and its runs.
    let mut out = vec![0u8; total];
    let mut matches = Vec::new();
    let (mut i, mut j, mut k) = (a.len(), b.len(), total);
    let mut run: Option<(usize, usize, usize, usize)> = None; // a_start, a_end, b_start, b_end
    let flush = |run: &mut Option<(usize, usize, usize, usize)>, matches: &mut Vec<Reply>| {
        if let Some((as_, ae, bs, be)) = run.take() {
            let mlen = ae - as_ + 1;
            if mlen as i64 >= min_len {
                let mut m = vec![
                    Reply::Array(vec![Reply::Int(as_ as i64), Reply::Int(ae as i64)]),
                    Reply::Array(vec![Reply::Int(bs as i64), Reply::Int(be as i64)]),
                ];
                if with_len {
                    m.push(Reply::Int(mlen as i64));
                }
                matches.push(Reply::Array(m));
            }
        }
    };
    while i > 0 && j > 0 {
        if a[i - 1] == b[j - 1] {
            k -= 1;
            out[k] = a[i - 1];
            let (ai, bj) = (i - 1, j - 1);
            run = match run {
                Some((as_, ae, bs, be)) if as_ == ai + 1 && bs == bj + 1 => Some((ai, ae, bj, be)),
                other => {
                    let mut o = other;
                    flush(&mut o, &mut matches);
                    Some((ai, ai, bj, bj))
                }
            };
            i -= 1;
            j -= 1;
        } else if t[(i - 1) * w + j] > t[i * w + j - 1] {
            i -= 1;
        } else {
            j -= 1;
        }
    }
    flush(&mut run, &mut matches);
    if idx {
        Ok(Reply::Map(vec![
            (Reply::bulk("matches"), Reply::Array(matches)),
            (Reply::bulk("len"), Reply::Int(total as i64)),
        ]))
    } else {
        Ok(Reply::Bulk(out))
    }
}

pub(super) fn write(db: &mut Db, name: &str, argv: &[Vec<u8>], at: At) -> Option<Reply> {
    Some(super::flat(run_write(db, name, argv, at)))
}

fn run_write(db: &mut Db, name: &str, argv: &[Vec<u8>], at: At) -> Result<Reply, Reply> {
    let At { now, index } = at;
    Ok(match name {
        "SET" => set(db, argv, now, index)?,
        "SETNX" => {
            if db.get_live(&argv[1], now).is_some() {
                return Ok(Reply::Int(0));
            }
            db.put_str(&argv[1], argv[2].clone(), None, index);
            Reply::Int(1)
        }
        "SETEX" | "PSETEX" => {
            let Some(t) = parse_i64(&argv[2]) else {
                return Err(Reply::err(NOT_INT));
            };
            if t <= 0 {
                return Err(Reply::err(format!(
                    "ERR invalid expire time in '{}' command",
                    name.to_ascii_lowercase()
                )));
            }
            let ms = if name == "SETEX" {
                t.saturating_mul(1000)
            } else {
                t
            };
            db.put_str(
                &argv[1],
                argv[3].clone(),
                Some(now.saturating_add(ms as u64)),
                index,
            );
            Reply::ok()
        }
        "GETSET" => {
            let old = db
                .string(&argv[1], now)?
                .map(Reply::bulk)
                .unwrap_or(Reply::Nil);
            db.put_str(&argv[1], argv[2].clone(), None, index);
            old
        }
        "GETDEL" => match db.string(&argv[1], now)? {
            None => Reply::Nil,
            Some(s) => {
                let r = Reply::bulk(s);
                db.del(&argv[1], index);
                r
            }
        },
        "GETEX" => getex(db, argv, now, index)?,
        "APPEND" => {
            let cur = db.string(&argv[1], now)?.map(|s| s.len()).unwrap_or(0);
            if cur + argv[2].len() > MAX_STRING {
                return Err(Reply::err(
                    "ERR string exceeds maximum allowed size (proto-max-bulk-len)",
                ));
            }
            match db.map.get_mut(super::KeyRef::new(&argv[1]).view()) {
                Some(Item {
                    value: Value::Str(s),
                    ver,
                    ..
                }) => {
                    s.extend_from_slice(&argv[2]);
                    *ver = index;
                    Reply::Int(s.len() as i64)
                }
                _ => {
                    db.put_str(&argv[1], argv[2].clone(), None, index);
                    Reply::Int(argv[2].len() as i64)
                }
            }
        }
        "SETRANGE" => {
            let off = match parse_i64(&argv[2]) {
                Some(o) if o >= 0 => o as usize,
                Some(_) => return Err(Reply::err("ERR offset is out of range")),
                None => return Err(Reply::err(NOT_INT)),
            };
            let cur = db.string(&argv[1], now)?;
            if argv[3].is_empty() {
                return Ok(Reply::Int(cur.map(|s| s.len()).unwrap_or(0) as i64));
            }
            if off.saturating_add(argv[3].len()) > MAX_STRING {
                return Err(Reply::err(
                    "ERR string exceeds maximum allowed size (proto-max-bulk-len)",
                ));
            }
            let exp = db.get_live(&argv[1], now).and_then(|i| i.expire_at);
            let mut s = cur.cloned().unwrap_or_default();
            if s.len() < off + argv[3].len() {
                s.resize(off + argv[3].len(), 0);
            }
            s[off..off + argv[3].len()].copy_from_slice(&argv[3]);
            let n = s.len();
            db.put_str(&argv[1], s, exp, index);
            Reply::Int(n as i64)
        }
        "MSET" | "MSETNX" => {
            if argv.len().is_multiple_of(2) {
                return Err(arity_err(name));
            }
            if name == "MSETNX"
                && argv[1..]
                    .chunks(2)
                    .any(|kv| db.get_live(&kv[0], now).is_some())
            {
                return Ok(Reply::Int(0));
            }
            for kv in argv[1..].chunks(2) {
                db.put_str(&kv[0], kv[1].clone(), None, index);
            }
            if name == "MSET" {
                Reply::ok()
            } else {
                Reply::Int(1)
            }
        }
        "INCR" | "DECR" | "INCRBY" | "DECRBY" => {
            let by = match name {
                "INCR" => 1,
                "DECR" => -1,
                _ => match parse_i64(&argv[2]) {
                    Some(v) if name == "INCRBY" => v,
                    Some(v) => match v.checked_neg() {
                        Some(n) => n,
                        None => return Err(Reply::err("ERR decrement would overflow")),
                    },
                    None => return Err(Reply::err(NOT_INT)),
                },
            };
            let (cur, exp) = number(db, &argv[1], now, parse_i64, NOT_INT)?;
            let Some(n) = cur.checked_add(by) else {
                return Err(Reply::err("ERR increment or decrement would overflow"));
            };
            db.put_str(&argv[1], n.to_string().into_bytes(), exp, index);
            Reply::Int(n)
        }
        "INCRBYFLOAT" => {
            let Some(by) = parse_f64(&argv[2]) else {
                return Err(Reply::err(NOT_FLOAT));
            };
            let (cur, exp) = number(db, &argv[1], now, parse_f64, NOT_FLOAT)?;
            let v = cur + by;
            if v.is_infinite() || v.is_nan() {
                return Err(Reply::err("ERR increment would produce NaN or Infinity"));
            }
            let s = format_double(v);
            db.put_str(&argv[1], s.clone().into_bytes(), exp, index);
            Reply::bulk(s)
        }
        _ => return Err(super::unknown_cmd(name)),
    })
}

fn getex(db: &mut Db, argv: &[Vec<u8>], now: u64, index: u64) -> Result<Reply, Reply> {
    let r = match db.string(&argv[1], now)? {
        None => return Ok(Reply::Nil),
        Some(s) => Reply::bulk(s),
    };
    if argv.len() > 2 {
        let opt = upper(&argv[2]);
        let exp = if opt == "PERSIST" && argv.len() == 3 {
            None
        } else if argv.len() == 4 {
            Some(expiry_opt(&opt, &argv[3], now, "getex")?)
        } else {
            return Err(Reply::err(SYNTAX));
        };
        if let Some(i) = db.map.get_mut(super::KeyRef::new(&argv[1]).view()) {
            i.expire_at = exp;
            i.ver = index;
        }
        if exp.is_some_and(|e| e <= now) {
            db.del(&argv[1], index);
        }
    }
    Ok(r)
}

fn set(db: &mut Db, argv: &[Vec<u8>], now: u64, index: u64) -> Result<Reply, Reply> {
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
                    return Err(Reply::err(SYNTAX));
                }
                exp = Some(expiry_opt(&opt, &argv[i + 1], now, "set")?);
                i += 1;
            }
            _ => return Err(Reply::err(SYNTAX)),
        }
        i += 1;
    }
    if (nx && xx) || (keep_ttl && exp.is_some()) {
        return Err(Reply::err(SYNTAX));
    }
    let cur = db.get_live(&argv[1], now);
    let old = match cur {
        None => Reply::Nil,
        Some(Item {
            value: Value::Str(s),
            ..
        }) => Reply::bulk(s),
        Some(_) if get => return Err(Reply::err(WRONGTYPE)),
        Some(_) => Reply::Nil,
    };
    let exists = cur.is_some();
    if keep_ttl {
        exp = cur.and_then(|c| c.expire_at);
    }
    if (nx && exists) || (xx && !exists) {
        return Ok(if get { old } else { Reply::Nil });
    }
    db.put_str(&argv[1], argv[2].clone(), exp, index);
    Ok(if get { old } else { Reply::ok() })
}

/// The number a string key holds (zero when absent) and its expiry, for the INCR family:
/// an increment keeps the key's TTL.
fn number<T: Default>(
    db: &Db,
    k: &[u8],
    now: u64,
    parse: fn(&[u8]) -> Option<T>,
    not_a_number: &'static str,
) -> Result<(T, Option<u64>), Reply> {
    match db.get_live(k, now) {
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

/// An absolute expiry (unix ms) from SET/GETEX's EX/PX/EXAT/PXAT.
pub(crate) fn expiry_opt(opt: &str, arg: &[u8], now: u64, cmd: &str) -> Result<u64, Reply> {
    let Some(t) = parse_i64(arg) else {
        return Err(Reply::err(NOT_INT));
    };
    let bad = || Reply::err(format!("ERR invalid expire time in '{cmd}' command"));
    if t <= 0 {
        return Err(bad());
    }
    let t = t as u64;
    let ms = match opt {
        "EX" | "EXAT" => t.checked_mul(1000).ok_or_else(bad)?,
        _ => t,
    };
    Ok(match opt {
        "EX" | "PX" => now
            .checked_add(ms)
            .filter(|v| *v <= i64::MAX as u64)
            .ok_or_else(bad)?,
        "EXAT" | "PXAT" => ms,
        _ => return Err(Reply::err(SYNTAX)),
    })
}
