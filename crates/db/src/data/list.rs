//! Lists.

use std::collections::VecDeque;

use super::{At, Db, NO_KEY, NOT_INT, OUT_OF_RANGE, SYNTAX, parse_i64, range_of, upper};
use crate::resp::Reply;

pub(super) fn read(db: &Db, name: &str, argv: &[Vec<u8>], now: u64) -> Option<Reply> {
    Some(super::flat(run_read(db, name, argv, now)))
}

fn run_read(db: &Db, name: &str, argv: &[Vec<u8>], now: u64) -> Result<Reply, Reply> {
    let empty = VecDeque::new();
    Ok(match name {
        "LLEN" => Reply::Int(db.list(&argv[1], now)?.map(|l| l.len()).unwrap_or(0) as i64),
        "LINDEX" => {
            let i = parse_i64(&argv[2]).ok_or_else(|| Reply::err(NOT_INT))?;
            let l = db.list(&argv[1], now)?.unwrap_or(&empty);
            let i = if i < 0 { l.len() as i64 + i } else { i };
            if i < 0 {
                Reply::Nil
            } else {
                l.get(i as usize).map(Reply::bulk).unwrap_or(Reply::Nil)
            }
        }
        "LRANGE" => {
            let (Some(a), Some(b)) = (parse_i64(&argv[2]), parse_i64(&argv[3])) else {
                return Err(Reply::err(NOT_INT));
            };
            let l = db.list(&argv[1], now)?.unwrap_or(&empty);
            match range_of(a, b, l.len()) {
                None => Reply::Array(Vec::new()),
                Some((a, b)) => Reply::Array(l.range(a..=b).map(Reply::bulk).collect()),
            }
        }
        "LPOS" => lpos(db.list(&argv[1], now)?, argv)?,
        _ => return Err(super::unknown_cmd(name)),
    })
}

fn lpos(l: Option<&VecDeque<Vec<u8>>>, argv: &[Vec<u8>]) -> Result<Reply, Reply> {
    let (mut rank, mut count, mut maxlen) = (1i64, None::<usize>, 0usize);
    let mut i = 3;
    while i < argv.len() {
        if i + 1 >= argv.len() {
            return Err(Reply::err(SYNTAX));
        }
        let v = parse_i64(&argv[i + 1]).ok_or_else(|| Reply::err(NOT_INT))?;
        match upper(&argv[i]).as_str() {
            "RANK" => {
                if v == 0 {
                    return Err(Reply::err(
                        "ERR RANK can't be zero: use 1 to start from the first match, 2 from the second ... or use negative to start from the end of the list",
                    ));
                }
                if v == i64::MIN {
                    return Err(Reply::err(
                        "ERR value is out of range, value must between -9223372036854775807 and 9223372036854775807",
                    ));
                }
                rank = v;
            }
            "COUNT" if v < 0 => return Err(Reply::err("ERR COUNT can't be negative")),
            "COUNT" => count = Some(v as usize),
            "MAXLEN" if v < 0 => return Err(Reply::err("ERR MAXLEN can't be negative")),
            "MAXLEN" => maxlen = v as usize,
            _ => return Err(Reply::err(SYNTAX)),
        }
        i += 2;
    }
    let Some(l) = l else {
        return Ok(if count.is_some() {
            Reply::Array(Vec::new())
        } else {
            Reply::Nil
        });
    };
    let want = match count {
        Some(0) => usize::MAX,
        Some(c) => c,
        None => 1,
    };
    let mut skip = rank.unsigned_abs() - 1;
    let mut found = Vec::new();
    let n = l.len();
    let limit = if maxlen == 0 { n } else { maxlen.min(n) };
    for step in 0..limit {
        let idx = if rank > 0 { step } else { n - 1 - step };
        if l[idx] == argv[2] {
            if skip > 0 {
                skip -= 1;
                continue;
            }
            found.push(Reply::Int(idx as i64));
            if found.len() >= want {
                break;
            }
        }
    }
    Ok(match count {
        Some(_) => Reply::Array(found),
        None => found.pop().unwrap_or(Reply::Nil),
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    Left,
    Right,
}

pub(crate) fn end(b: &[u8]) -> Result<End, Reply> {
    match upper(b).as_str() {
        "LEFT" => Ok(End::Left),
        "RIGHT" => Ok(End::Right),
        _ => Err(Reply::err(SYNTAX)),
    }
}

fn pop_n(l: &mut VecDeque<Vec<u8>>, from: End, n: usize) -> Vec<Vec<u8>> {
    let n = n.min(l.len());
    match from {
        End::Left => l.drain(..n).collect(),
        End::Right => (0..n).filter_map(|_| l.pop_back()).collect(),
    }
}

/// Pops up to `n` elements from the first non-empty list of `keys` (LMPOP, BLMPOP):
/// `[key, [elements]]`, or None when every list is empty.
pub(crate) fn mpop(
    db: &mut Db,
    keys: &[Vec<u8>],
    from: End,
    n: usize,
    index: u64,
) -> Result<Option<Reply>, Reply> {
    for k in keys {
        if let Some(l) = db.list_mut(k)?
            && !l.is_empty()
        {
            let got = pop_n(l, from, n);
            db.changed(k, index);
            return Ok(Some(Reply::Array(vec![
                Reply::bulk(k),
                Reply::Array(got.into_iter().map(Reply::Bulk).collect()),
            ])));
        }
    }
    Ok(None)
}

/// LMOVE's work: pops from `src`, pushes onto `dst` (both may be the same list).
pub(crate) fn lmove(
    db: &mut Db,
    src: &[u8],
    dst: &[u8],
    from: End,
    to: End,
    index: u64,
) -> Result<Reply, Reply> {
    match db.list_mut(src)? {
        Some(l) if !l.is_empty() => {}
        _ => return Ok(Reply::Nil),
    }
    // Check the destination's type before taking anything.
    db.list_mut(dst)?;
    let v = match db.list_mut(src)? {
        Some(l) => match from {
            End::Left => l.pop_front(),
            End::Right => l.pop_back(),
        },
        None => None,
    };
    let Some(v) = v else {
        return Ok(Reply::Nil);
    };
    db.changed(src, index);
    let d = db.list_create(dst, index)?;
    match to {
        End::Left => d.push_front(v.clone()),
        End::Right => d.push_back(v.clone()),
    }
    db.changed(dst, index);
    Ok(Reply::Bulk(v))
}

/// Parses LMPOP/BLMPOP's `numkeys key… LEFT|RIGHT [COUNT n]` from `argv[at..]`.
pub(crate) fn mpop_args(argv: &[Vec<u8>], at: usize) -> Result<(Vec<Vec<u8>>, End, usize), Reply> {
    let n = match parse_i64(&argv[at]) {
        Some(n) if n > 0 => n as usize,
        Some(_) => return Err(Reply::err("ERR numkeys should be greater than 0")),
        None => return Err(Reply::err("ERR numkeys should be greater than 0")),
    };
    if argv.len() < at + 1 + n + 1 {
        return Err(Reply::err(SYNTAX));
    }
    let keys = argv[at + 1..at + 1 + n].to_vec();
    let from = end(&argv[at + 1 + n])?;
    let mut count = 1;
    let rest = &argv[at + 2 + n..];
    match rest.len() {
        0 => {}
        2 if rest[0].eq_ignore_ascii_case(b"COUNT") => {
            count = match parse_i64(&rest[1]) {
                Some(c) if c > 0 => c as usize,
                _ => return Err(Reply::err("ERR count should be greater than 0")),
            };
        }
        _ => return Err(Reply::err(SYNTAX)),
    }
    Ok((keys, from, count))
}

pub(super) fn write(db: &mut Db, name: &str, argv: &[Vec<u8>], at: At) -> Option<Reply> {
    let r = match name {
        "RPOPLPUSH" => lmove(db, &argv[1], &argv[2], End::Right, End::Left, at.index),
        "LMOVE" => match (end(&argv[3]), end(&argv[4])) {
            (Ok(f), Ok(t)) => lmove(db, &argv[1], &argv[2], f, t, at.index),
            (Err(e), _) | (_, Err(e)) => Err(e),
        },
        "LMPOP" => mpop_args(argv, 1).and_then(|(keys, from, n)| {
            mpop(db, &keys, from, n, at.index).map(|r| r.unwrap_or(Reply::NilArray))
        }),
        // The blocking forms, run once: the server waits and retries them.
        "BLPOP" | "BRPOP" => super::block_timeout(name, argv).and_then(|_| {
            let from = if name == "BLPOP" {
                End::Left
            } else {
                End::Right
            };
            let got = mpop(db, &argv[1..argv.len() - 1], from, 1, at.index)?;
            Ok(match got {
                Some(Reply::Array(mut kv)) => match (kv.pop(), kv.pop()) {
                    (Some(Reply::Array(mut vals)), Some(k)) => {
                        Reply::Array(vec![k, vals.pop().unwrap_or(Reply::Nil)])
                    }
                    _ => Reply::NilArray,
                },
                _ => Reply::NilArray,
            })
        }),
        "BRPOPLPUSH" => super::block_timeout(name, argv)
            .and_then(|_| lmove(db, &argv[1], &argv[2], End::Right, End::Left, at.index)),
        "BLMOVE" => super::block_timeout(name, argv).and_then(|_| {
            let (f, t) = (end(&argv[3])?, end(&argv[4])?);
            lmove(db, &argv[1], &argv[2], f, t, at.index)
        }),
        "BLMPOP" => super::block_timeout(name, argv).and_then(|_| {
            let (keys, from, n) = mpop_args(argv, 2)?;
            mpop(db, &keys, from, n, at.index).map(|r| r.unwrap_or(Reply::NilArray))
        }),
        _ => {
            let r = run_write(db, name, argv);
            return Some(db.finish(&argv[1], at.index, r));
        }
    };
    Some(super::flat(r))
}

fn run_write(db: &mut Db, name: &str, argv: &[Vec<u8>]) -> Result<Reply, Reply> {
    Ok(match name {
        "LPUSH" | "RPUSH" | "LPUSHX" | "RPUSHX" => {
            let l = if name.ends_with('X') {
                match db.list_mut(&argv[1])? {
                    Some(l) => l,
                    None => return Ok(Reply::Int(0)),
                }
            } else {
                db.list_create(&argv[1], 0)?
            };
            for v in &argv[2..] {
                if name.starts_with('L') {
                    l.push_front(v.clone());
                } else {
                    l.push_back(v.clone());
                }
            }
            Reply::Int(l.len() as i64)
        }
        "LPOP" | "RPOP" => {
            if argv.len() > 3 {
                return Err(super::arity_err(name));
            }
            let count = super::optional_count(argv)?;
            let from = if name == "LPOP" {
                End::Left
            } else {
                End::Right
            };
            let Some(l) = db.list_mut(&argv[1])? else {
                return Ok(if count.is_some() {
                    Reply::NilArray
                } else {
                    Reply::Nil
                });
            };
            match count {
                None => pop_n(l, from, 1)
                    .pop()
                    .map(Reply::Bulk)
                    .unwrap_or(Reply::Nil),
                Some(n) => Reply::Array(pop_n(l, from, n).into_iter().map(Reply::Bulk).collect()),
            }
        }
        "LSET" => {
            let i = parse_i64(&argv[2]).ok_or_else(|| Reply::err(NOT_INT))?;
            let Some(l) = db.list_mut(&argv[1])? else {
                return Err(Reply::err(NO_KEY));
            };
            let i = if i < 0 { l.len() as i64 + i } else { i };
            match usize::try_from(i).ok().and_then(|i| l.get_mut(i)) {
                Some(slot) => *slot = argv[3].clone(),
                None => return Err(Reply::err(OUT_OF_RANGE)),
            }
            Reply::ok()
        }
        "LREM" => {
            let n = parse_i64(&argv[2]).ok_or_else(|| Reply::err(NOT_INT))?;
            let Some(l) = db.list_mut(&argv[1])? else {
                return Ok(Reply::Int(0));
            };
            let limit = if n == 0 {
                usize::MAX
            } else {
                n.unsigned_abs() as usize
            };
            let mut removed = 0;
            if n >= 0 {
                let mut i = 0;
                while i < l.len() && removed < limit {
                    if l[i] == argv[3] {
                        l.remove(i);
                        removed += 1;
                    } else {
                        i += 1;
                    }
                }
            } else {
                let mut i = l.len();
                while i > 0 && removed < limit {
                    i -= 1;
                    if l[i] == argv[3] {
                        l.remove(i);
                        removed += 1;
                    }
                }
            }
            Reply::Int(removed as i64)
        }
        "LTRIM" => {
            let (Some(a), Some(b)) = (parse_i64(&argv[2]), parse_i64(&argv[3])) else {
                return Err(Reply::err(NOT_INT));
            };
            let Some(l) = db.list_mut(&argv[1])? else {
                return Ok(Reply::ok());
            };
            match range_of(a, b, l.len()) {
                None => l.clear(),
                Some((a, b)) => {
                    l.truncate(b + 1);
                    l.drain(..a);
                }
            }
            Reply::ok()
        }
        "LINSERT" => {
            let before = match upper(&argv[2]).as_str() {
                "BEFORE" => true,
                "AFTER" => false,
                _ => return Err(Reply::err(SYNTAX)),
            };
            let Some(l) = db.list_mut(&argv[1])? else {
                return Ok(Reply::Int(0));
            };
            match l.iter().position(|v| *v == argv[3]) {
                None => Reply::Int(-1),
                Some(p) => {
                    l.insert(if before { p } else { p + 1 }, argv[4].clone());
                    Reply::Int(l.len() as i64)
                }
            }
        }
        _ => return Err(super::unknown_cmd(name)),
    })
}
