//! Bitmaps: strings addressed by bit (bit 0 is the top bit of the first byte, as Redis).

use super::{At, Db, NOT_INT, SYNTAX, Value, WRONGTYPE, parse_i64, upper};
use crate::resp::Reply;

/// Largest bit offset (Redis's 512 MiB string limit).
const MAX_BIT: u64 = 512 * 1024 * 1024 * 8 - 1;

fn bit_offset(b: &[u8]) -> Result<u64, Reply> {
    match parse_i64(b) {
        Some(o) if o >= 0 && o as u64 <= MAX_BIT => Ok(o as u64),
        _ => Err(Reply::err(
            "ERR bit offset is not an integer or out of range",
        )),
    }
}

fn get_bit(s: &[u8], off: u64) -> u8 {
    let byte = (off / 8) as usize;
    match s.get(byte) {
        Some(b) => (b >> (7 - (off % 8))) & 1,
        None => 0,
    }
}

/// The byte or bit range `[start, end]` (GETRANGE-style negatives) over `len` units.
fn unit_range(start: i64, end: i64, len: i64) -> Option<(i64, i64)> {
    let norm = |x: i64| if x < 0 { (len + x).max(0) } else { x };
    let (a, b) = (norm(start), norm(end).min(len - 1));
    if len == 0 || a > b || (start < 0 && end < 0 && start > end) {
        None
    } else {
        Some((a, b))
    }
}

/// Parses `[start end [BYTE|BIT]]` from `argv[at..]`: (start, end, in bits), or None for
/// the whole string.
fn range_args(
    argv: &[Vec<u8>],
    at: usize,
    end_optional: bool,
) -> Result<Option<(i64, Option<i64>, bool)>, Reply> {
    let rest = &argv[at..];
    if rest.is_empty() {
        return Ok(None);
    }
    if rest.len() == 1 && !end_optional || rest.len() > 3 {
        return Err(Reply::err(SYNTAX));
    }
    let start = parse_i64(&rest[0]).ok_or_else(|| Reply::err(NOT_INT))?;
    let end = match rest.get(1) {
        Some(e) => Some(parse_i64(e).ok_or_else(|| Reply::err(NOT_INT))?),
        None => None,
    };
    let bits = match rest.get(2).map(|u| upper(u)) {
        None => false,
        Some(u) if u == "BYTE" => false,
        Some(u) if u == "BIT" => true,
        Some(_) => return Err(Reply::err(SYNTAX)),
    };
    Ok(Some((start, end, bits)))
}

pub(super) fn read(db: &Db, name: &str, argv: &[Vec<u8>], now: u64) -> Option<Reply> {
    Some(super::flat(run_read(db, name, argv, now)))
}

fn run_read(db: &Db, name: &str, argv: &[Vec<u8>], now: u64) -> Result<Reply, Reply> {
    let empty = Vec::new();
    Ok(match name {
        "GETBIT" => {
            let off = bit_offset(&argv[2])?;
            let s = db.string(&argv[1], now)?.unwrap_or(&empty);
            Reply::Int(get_bit(s, off) as i64)
        }
        "BITCOUNT" => {
            let r = range_args(argv, 2, false)?;
            let s = db.string(&argv[1], now)?.unwrap_or(&empty);
            let n = match r {
                None => s.iter().map(|b| b.count_ones() as u64).sum(),
                Some((a, b, false)) => match unit_range(a, b.unwrap_or(-1), s.len() as i64) {
                    None => 0,
                    Some((a, b)) => s[a as usize..=b as usize]
                        .iter()
                        .map(|b| b.count_ones() as u64)
                        .sum(),
                },
                Some((a, b, true)) => match unit_range(a, b.unwrap_or(-1), s.len() as i64 * 8) {
                    None => 0,
                    Some((a, b)) => (a..=b).map(|i| get_bit(s, i as u64) as u64).sum(),
                },
            };
            Reply::Int(n as i64)
        }
        "BITPOS" => {
            let bit = match parse_i64(&argv[2]) {
                Some(b @ (0 | 1)) => b as u8,
                _ => return Err(Reply::err("ERR The bit argument must be 1 or 0.")),
            };
            let r = range_args(argv, 3, true)?;
            let Some(s) = db.string(&argv[1], now)? else {
                return Ok(Reply::Int(if bit == 1 { -1 } else { 0 }));
            };
            let (a, b, end_given) = match r {
                None => (0, s.len() as i64 * 8 - 1, false),
                Some((a, e, bits)) => {
                    let len = if bits {
                        s.len() as i64 * 8
                    } else {
                        s.len() as i64
                    };
                    match unit_range(a, e.unwrap_or(-1), len) {
                        None => return Ok(Reply::Int(-1)),
                        Some((x, y)) if bits => (x, y, e.is_some()),
                        Some((x, y)) => (x * 8, y * 8 + 7, e.is_some()),
                    }
                }
            };
            for i in a..=b {
                if get_bit(s, i as u64) == bit {
                    return Ok(Reply::Int(i));
                }
            }
            // Looking for a clear bit with no end given: the string counts as padded with
            // zeros on the right.
            Reply::Int(if bit == 0 && !end_given { b + 1 } else { -1 })
        }
        _ => return Err(super::unknown_cmd(name)),
    })
}

pub(super) fn write(db: &mut Db, name: &str, argv: &[Vec<u8>], at: At) -> Option<Reply> {
    Some(super::flat(run_write(db, name, argv, at)))
}

fn run_write(db: &mut Db, name: &str, argv: &[Vec<u8>], at: At) -> Result<Reply, Reply> {
    Ok(match name {
        "SETBIT" => {
            let off = bit_offset(&argv[2])?;
            let on = match argv[3].as_slice() {
                b"0" => false,
                b"1" => true,
                _ => return Err(Reply::err("ERR bit is not an integer or out of range")),
            };
            let cur = db.string(&argv[1], at.now)?;
            let exp = db.get_live(&argv[1], at.now).and_then(|i| i.expire_at);
            let mut s = cur.cloned().unwrap_or_default();
            let byte = (off / 8) as usize;
            if s.len() <= byte {
                s.resize(byte + 1, 0);
            }
            let mask = 1u8 << (7 - (off % 8));
            let old = (s[byte] & mask != 0) as i64;
            if on {
                s[byte] |= mask;
            } else {
                s[byte] &= !mask;
            }
            db.put(&argv[1], Value::Str(s), exp, at.index);
            Reply::Int(old)
        }
        "BITOP" => {
            let op = upper(&argv[1]);
            let srcs = &argv[3..];
            if op == "NOT" && srcs.len() != 1 {
                return Err(Reply::err(
                    "ERR BITOP NOT must be called with a single source key.",
                ));
            }
            if !matches!(op.as_str(), "AND" | "OR" | "XOR" | "NOT") {
                return Err(Reply::err(SYNTAX));
            }
            let mut vals = Vec::new();
            for k in srcs {
                match db.get_live(k, at.now).map(|i| &i.value) {
                    None => vals.push(Vec::new()),
                    Some(Value::Str(s)) => vals.push(s.clone()),
                    Some(_) => return Err(Reply::err(WRONGTYPE)),
                }
            }
            let len = vals.iter().map(|v| v.len()).max().unwrap_or(0);
            let mut out = vec![0u8; len];
            for (i, o) in out.iter_mut().enumerate() {
                let byte = |v: &Vec<u8>| v.get(i).copied().unwrap_or(0);
                *o = match op.as_str() {
                    "NOT" => !byte(&vals[0]),
                    "AND" => vals.iter().map(byte).fold(0xff, |a, b| a & b),
                    "OR" => vals.iter().map(byte).fold(0, |a, b| a | b),
                    _ => vals.iter().map(byte).fold(0, |a, b| a ^ b),
                };
            }
            if out.is_empty() {
                db.del(&argv[2], at.index);
            } else {
                db.put(&argv[2], Value::Str(out), None, at.index);
            }
            Reply::Int(len as i64)
        }
        _ => return Err(super::unknown_cmd(name)),
    })
}
