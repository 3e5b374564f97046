//! Sets.

use std::collections::BTreeSet;

use super::{At, Db, NOT_INT, Rng, SYNTAX, parse_i64, upper};
use crate::resp::Reply;

type Set = BTreeSet<Vec<u8>>;

/// Indices for SRANDMEMBER/HRANDFIELD/ZRANDMEMBER with a count: distinct when positive,
/// with repetitions when negative (as Redis).
pub(crate) fn random_picks(count: &[u8], len: usize, pairs: bool) -> Result<Vec<usize>, Reply> {
    let c = parse_i64(count).ok_or_else(|| Reply::err(NOT_INT))?;
    let mut rng = Rng::local();
    if c < 0 {
        let n = c.unsigned_abs();
        if n > (i64::MAX as u64) / 2 || (pairs && n > (i64::MAX as u64) / 4) {
            return Err(Reply::err("ERR value is out of range"));
        }
        if len == 0 {
            return Ok(Vec::new());
        }
        // A repeated pick costs little; a reply this large is refused rather than built.
        if n > 64 * 1024 * 1024 {
            return Err(Reply::err("ERR value is out of range"));
        }
        return Ok((0..n).map(|_| rng.below(len)).collect());
    }
    let n = (c as usize).min(len);
    if n == len {
        return Ok((0..len).collect());
    }
    // Partial Fisher–Yates over the indices.
    let mut idx: Vec<usize> = (0..len).collect();
    for i in 0..n {
        let j = i + rng.below(len - i);
        idx.swap(i, j);
    }
    idx.truncate(n);
    Ok(idx)
}

pub(super) fn read(db: &Db, name: &str, argv: &[Vec<u8>], now: u64) -> Option<Reply> {
    Some(super::flat(run_read(db, name, argv, now)))
}

fn members(items: impl IntoIterator<Item = Vec<u8>>) -> Reply {
    Reply::Array(items.into_iter().map(Reply::Bulk).collect())
}

/// SINTER/SUNION/SDIFF over `keys` (WRONGTYPE if any key holds another type).
fn combine(db: &Db, op: &str, keys: &[Vec<u8>], now: u64) -> Result<Set, Reply> {
    let sets: Vec<Option<&Set>> = keys
        .iter()
        .map(|k| db.set(k, now))
        .collect::<Result<_, _>>()?;
    let empty = Set::new();
    Ok(match op {
        "INTER" => {
            if sets.iter().any(|s| s.is_none()) {
                return Ok(Set::new());
            }
            let mut all: Vec<&Set> = sets.iter().map(|s| s.unwrap_or(&empty)).collect();
            all.sort_by_key(|s| s.len());
            all[0]
                .iter()
                .filter(|m| all[1..].iter().all(|s| s.contains(*m)))
                .cloned()
                .collect()
        }
        "UNION" => sets
            .iter()
            .flatten()
            .flat_map(|s| s.iter().cloned())
            .collect(),
        _ => {
            let first = sets[0].unwrap_or(&empty);
            first
                .iter()
                .filter(|m| !sets[1..].iter().flatten().any(|s| s.contains(*m)))
                .cloned()
                .collect()
        }
    })
}

fn run_read(db: &Db, name: &str, argv: &[Vec<u8>], now: u64) -> Result<Reply, Reply> {
    let empty = Set::new();
    Ok(match name {
        "SCARD" => Reply::Int(db.set(&argv[1], now)?.map(|s| s.len()).unwrap_or(0) as i64),
        "SISMEMBER" => {
            Reply::Int(db.set(&argv[1], now)?.is_some_and(|s| s.contains(&argv[2])) as i64)
        }
        "SMISMEMBER" => {
            let s = db.set(&argv[1], now)?.unwrap_or(&empty);
            Reply::Array(
                argv[2..]
                    .iter()
                    .map(|m| Reply::Int(s.contains(m) as i64))
                    .collect(),
            )
        }
        "SMEMBERS" => members(db.set(&argv[1], now)?.unwrap_or(&empty).iter().cloned()),
        "SRANDMEMBER" => {
            let s = db.set(&argv[1], now)?;
            match argv.len() {
                2 => match s {
                    Some(s) if !s.is_empty() => {
                        let i = Rng::local().below(s.len());
                        s.iter().nth(i).map(Reply::bulk).unwrap_or(Reply::Nil)
                    }
                    _ => Reply::Nil,
                },
                3 => {
                    let v: Vec<&Vec<u8>> = s.map(|s| s.iter().collect()).unwrap_or_default();
                    let picks = random_picks(&argv[2], v.len(), false)?;
                    members(picks.into_iter().map(|i| v[i].clone()))
                }
                _ => return Err(Reply::err(SYNTAX)),
            }
        }
        "SINTER" | "SUNION" | "SDIFF" => members(combine(db, &name[1..], &argv[1..], now)?),
        "SINTERCARD" => {
            let (keys, limit) = card_args(argv)?;
            let n = combine(db, "INTER", &keys, now)?.len();
            Reply::Int(if limit > 0 { n.min(limit) } else { n } as i64)
        }
        "SSCAN" => super::keyspace::scan_collection(
            argv,
            db.set(&argv[1], now)?
                .unwrap_or(&empty)
                .iter()
                .map(|m| (m.as_slice(), None)),
        )?,
        _ => return Err(super::unknown_cmd(name)),
    })
}

/// SINTERCARD/ZINTERCARD's `numkeys key… [LIMIT n]`.
pub(crate) fn card_args(argv: &[Vec<u8>]) -> Result<(Vec<Vec<u8>>, usize), Reply> {
    let n = match parse_i64(&argv[1]) {
        Some(n) if n > 0 => n as usize,
        _ => return Err(Reply::err("ERR numkeys should be greater than 0")),
    };
    if argv.len() < 2 + n {
        return Err(Reply::err(
            "ERR Number of keys can't be greater than number of args",
        ));
    }
    let rest = &argv[2 + n..];
    let limit = match rest.len() {
        0 => 0,
        2 if rest[0].eq_ignore_ascii_case(b"LIMIT") => match parse_i64(&rest[1]) {
            Some(l) if l >= 0 => l as usize,
            _ => return Err(Reply::err("ERR LIMIT can't be negative")),
        },
        _ => return Err(Reply::err(SYNTAX)),
    };
    Ok((argv[2..2 + n].to_vec(), limit))
}

pub(super) fn write(db: &mut Db, name: &str, argv: &[Vec<u8>], at: At) -> Option<Reply> {
    let r = match name {
        "SMOVE" => smove(db, argv, at),
        "SINTERSTORE" | "SUNIONSTORE" | "SDIFFSTORE" => {
            combine(db, &name[1..name.len() - 5], &argv[2..], at.now).map(|s| {
                let n = s.len();
                db.put(&argv[1], super::Value::Set(s), None, at.index);
                Reply::Int(n as i64)
            })
        }
        _ => {
            let r = run_write(db, name, argv, at);
            return Some(db.finish(&argv[1], at.index, r));
        }
    };
    Some(super::flat(r))
}

fn smove(db: &mut Db, argv: &[Vec<u8>], at: At) -> Result<Reply, Reply> {
    let (src, dst, m) = (&argv[1], &argv[2], &argv[3]);
    let has = db.set_mut(src)?.is_some_and(|s| s.contains(m));
    db.set_mut(dst)?;
    if !has {
        return Ok(Reply::Int(0));
    }
    if src == dst {
        return Ok(Reply::Int(1));
    }
    if let Some(s) = db.set_mut(src)? {
        s.remove(m);
    }
    db.changed(src, at.index);
    db.set_create(dst, at.index)?.insert(m.clone());
    db.changed(dst, at.index);
    Ok(Reply::Int(1))
}

fn run_write(db: &mut Db, name: &str, argv: &[Vec<u8>], at: At) -> Result<Reply, Reply> {
    Ok(match name {
        "SADD" => {
            let s = db.set_create(&argv[1], at.index)?;
            Reply::Int(argv[2..].iter().filter(|m| s.insert((*m).clone())).count() as i64)
        }
        "SREM" => match db.set_mut(&argv[1])? {
            None => Reply::Int(0),
            Some(s) => Reply::Int(argv[2..].iter().filter(|m| s.remove(*m)).count() as i64),
        },
        "SPOP" => {
            let count = super::optional_count(argv)?;
            let mut rng = at.rng(argv);
            let Some(s) = db.set_mut(&argv[1])? else {
                return Ok(match count {
                    None => Reply::Nil,
                    Some(_) => Reply::Array(Vec::new()),
                });
            };
            let mut pick = |s: &mut Set| {
                let i = rng.below(s.len());
                let m = s.iter().nth(i).cloned();
                if let Some(m) = &m {
                    s.remove(m);
                }
                m
            };
            match count {
                None => pick(s).map(Reply::Bulk).unwrap_or(Reply::Nil),
                Some(n) if n >= s.len() => members(std::mem::take(s)),
                Some(n) => members((0..n).filter_map(|_| pick(s)).collect::<Vec<_>>()),
            }
        }
        _ => return Err(super::unknown_cmd(&upper(name.as_bytes()))),
    })
}
