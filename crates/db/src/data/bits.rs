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
        "BITFIELD_RO" => bitfield(db.string(&argv[1], now)?, argv, true)?.0,
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
        "BITFIELD" => {
            let cur = db.string(&argv[1], at.now)?.cloned();
            let exp = db.get_live(&argv[1], at.now).and_then(|i| i.expire_at);
            let (r, new) = bitfield(cur.as_ref(), argv, false)?;
            if let Some(new) = new {
                db.put(&argv[1], Value::Str(new), exp, at.index);
            }
            r
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

#[derive(Clone, Copy, PartialEq, Eq)]
enum Overflow {
    Wrap,
    Sat,
    Fail,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum FieldOp {
    Get,
    Set(i64),
    IncrBy(i64),
}

struct Field {
    op: FieldOp,
    signed: bool,
    bits: u32,
    offset: u64,
    overflow: Overflow,
}

fn field_type(b: &[u8]) -> Result<(bool, u32), Reply> {
    let bad = || {
        Reply::err(
            "ERR Invalid bitfield type. Use something like i16 u8. Note that u64 is not supported but i64 is.",
        )
    };
    let signed = match b.first() {
        Some(b'i') => true,
        Some(b'u') => false,
        _ => return Err(bad()),
    };
    match parse_i64(&b[1..]) {
        Some(n) if n >= 1 && (signed && n <= 64 || !signed && n <= 63) => Ok((signed, n as u32)),
        _ => Err(bad()),
    }
}

fn field_offset(b: &[u8], bits: u32) -> Result<u64, Reply> {
    let err = || Reply::err("ERR bit offset is not an integer or out of range");
    let (hash, digits) = match b.first() {
        Some(b'#') => (true, &b[1..]),
        _ => (false, b),
    };
    let mut o = parse_i64(digits).ok_or_else(err)? as i128;
    if hash {
        o *= bits as i128;
    }
    if o < 0 || (o >> 3) >= 512 * 1024 * 1024 {
        return Err(err());
    }
    Ok(o as u64)
}

fn get_field(s: &[u8], off: u64, bits: u32) -> u64 {
    (0..bits as u64).fold(0u64, |v, i| (v << 1) | get_bit(s, off + i) as u64)
}

fn set_field(s: &mut [u8], off: u64, bits: u32, v: u64) {
    for i in 0..bits as u64 {
        let bit = (v >> (bits as u64 - 1 - i)) & 1;
        let pos = off + i;
        let mask = 1u8 << (7 - (pos % 8));
        let byte = &mut s[(pos / 8) as usize];
        if bit == 1 {
            *byte |= mask;
        } else {
            *byte &= !mask;
        }
    }
}

/// Fits `v` into the field's range: `(value, overflowed)` by the overflow rule (Redis's
/// checkSignedBitfieldOverflow / checkUnsignedBitfieldOverflow, in exact arithmetic).
fn fit(v: i128, signed: bool, bits: u32, ow: Overflow) -> (i128, bool) {
    let (min, max) = if signed {
        (-(1i128 << (bits - 1)), (1i128 << (bits - 1)) - 1)
    } else {
        (0, (1i128 << bits) - 1)
    };
    if v >= min && v <= max {
        return (v, false);
    }
    let r = match ow {
        Overflow::Sat if v > max => max,
        Overflow::Sat => min,
        _ => {
            let m = v.rem_euclid(1i128 << bits);
            if signed && m > max {
                m - (1i128 << bits)
            } else {
                m
            }
        }
    };
    (r, true)
}

/// BITFIELD / BITFIELD_RO over the string `cur`: the reply and, when something was written,
/// the new string (grown to the farthest field written, as Redis grows it up front).
fn bitfield(
    cur: Option<&Vec<u8>>,
    argv: &[Vec<u8>],
    ro: bool,
) -> Result<(Reply, Option<Vec<u8>>), Reply> {
    let mut ops = Vec::new();
    let mut ow = Overflow::Wrap;
    let mut j = 2;
    while j < argv.len() {
        let rem = argv.len() - j - 1;
        let sub = upper(&argv[j]);
        let op = match sub.as_str() {
            "GET" if rem >= 2 => FieldOp::Get,
            "SET" | "INCRBY" if rem >= 3 => FieldOp::Set(0),
            "OVERFLOW" if rem >= 1 => {
                ow = match upper(&argv[j + 1]).as_str() {
                    "WRAP" => Overflow::Wrap,
                    "SAT" => Overflow::Sat,
                    "FAIL" => Overflow::Fail,
                    _ => return Err(Reply::err("ERR Invalid OVERFLOW type specified")),
                };
                j += 2;
                continue;
            }
            _ => return Err(Reply::err(SYNTAX)),
        };
        let (signed, bits) = field_type(&argv[j + 1])?;
        let offset = field_offset(&argv[j + 2], bits)?;
        let op = match op {
            FieldOp::Get => FieldOp::Get,
            _ => {
                let v = parse_i64(&argv[j + 3]).ok_or_else(|| Reply::err(NOT_INT))?;
                if sub == "SET" {
                    FieldOp::Set(v)
                } else {
                    FieldOp::IncrBy(v)
                }
            }
        };
        ops.push(Field {
            op,
            signed,
            bits,
            offset,
            overflow: ow,
        });
        j += if op == FieldOp::Get { 3 } else { 4 };
    }
    let writes = ops.iter().any(|f| f.op != FieldOp::Get);
    if writes && ro {
        return Err(Reply::err(
            "ERR BITFIELD_RO only supports the GET subcommand",
        ));
    }
    let mut s = cur.cloned().unwrap_or_default();
    if writes {
        let end = ops
            .iter()
            .filter(|f| f.op != FieldOp::Get)
            .map(|f| f.offset + f.bits as u64 - 1)
            .max()
            .unwrap_or(0);
        let need = (end / 8 + 1) as usize;
        if s.len() < need {
            s.resize(need, 0);
        }
    }
    let mut out = Vec::with_capacity(ops.len());
    for f in &ops {
        let raw = get_field(&s, f.offset, f.bits);
        let old: i128 = if f.signed && f.bits < 64 && raw >> (f.bits - 1) & 1 == 1 {
            raw as i128 - (1i128 << f.bits)
        } else if f.signed {
            raw as i64 as i128
        } else {
            raw as i128
        };
        let (new, over, ret) = match f.op {
            FieldOp::Get => {
                out.push(Reply::Int(old as i64));
                continue;
            }
            FieldOp::Set(v) => {
                // An unsigned field takes the value's 64 bits as unsigned, as Redis does.
                let v = if f.signed {
                    v as i128
                } else {
                    v as u64 as i128
                };
                let (n, o) = fit(v, f.signed, f.bits, f.overflow);
                (n, o, old)
            }
            FieldOp::IncrBy(d) => {
                let (n, o) = fit(old + d as i128, f.signed, f.bits, f.overflow);
                (n, o, n)
            }
        };
        if over && f.overflow == Overflow::Fail {
            out.push(Reply::Nil);
            continue;
        }
        out.push(Reply::Int(ret as i64));
        set_field(&mut s, f.offset, f.bits, new as u64);
    }
    Ok((Reply::Array(out), writes.then_some(s)))
}

#[cfg(test)]
mod bitfield_tests {
    use super::super::Db;
    use crate::resp::Reply;

    fn run(db: &mut Db, s: &str) -> Reply {
        let argv: Vec<Vec<u8>> = s
            .split_whitespace()
            .map(|w| w.as_bytes().to_vec())
            .collect();
        db.write(&argv, 0, 1)
    }

    fn ints(v: &[i64]) -> Reply {
        Reply::Array(v.iter().map(|i| Reply::Int(*i)).collect())
    }

    #[test]
    fn bitfield_gets_sets_and_overflows_as_redis() {
        let mut db = Db::default();
        assert_eq!(
            run(&mut db, "BITFIELD b SET i8 0 255 SET i8 0 100 GET i8 0"),
            ints(&[0, -1, 100])
        );
        assert_eq!(
            run(&mut db, "BITFIELD b SET u8 0 255 INCRBY u8 0 100 GET u8 0"),
            ints(&[100, 99, 99])
        );
        run(&mut db, "DEL b");
        run(&mut db, "BITFIELD b SET u8 #0 65 SET u8 #1 66 SET u8 #2 67");
        assert_eq!(
            db.read(&[b"GET".to_vec(), b"b".to_vec()], 0),
            Reply::bulk("ABC")
        );
        run(&mut db, "DEL b");
        run(&mut db, "BITFIELD b SET u8 #0 100");
        assert_eq!(
            run(&mut db, "BITFIELD b OVERFLOW SAT INCRBY i8 #0 257"),
            ints(&[127])
        );
        assert_eq!(
            run(&mut db, "BITFIELD b OVERFLOW SAT INCRBY i8 #0 -255"),
            ints(&[-128])
        );
        assert_eq!(
            run(&mut db, "BITFIELD b OVERFLOW WRAP INCRBY u8 #0 257"),
            ints(&[129])
        );
        assert_eq!(
            run(&mut db, "BITFIELD b OVERFLOW FAIL INCRBY u8 #0 200"),
            Reply::Array(vec![Reply::Nil])
        );
        run(&mut db, "DEL m");
        assert_eq!(
            run(
                &mut db,
                "BITFIELD m SET i8 0 10 SET i8 64 10 INCRBY i8 10 99900"
            ),
            ints(&[0, 0, 60])
        );
        assert_eq!(run(&mut db, "BITFIELD m"), Reply::Array(vec![]));
        assert!(run(&mut db, "BITFIELD m GET u64 0").is_error());
        let ro: Vec<Vec<u8>> = ["BITFIELD_RO", "m", "SET", "u8", "0", "1"]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect();
        assert!(matches!(db.read(&ro, 0), Reply::Error(e) if e.contains("only supports the GET")));
    }
}
