//! Hashes.

use std::collections::BTreeMap;

use super::{At, Db, NOT_FLOAT, NOT_INT, Rng, arity_err, parse_f64, parse_i64};
use crate::resp::{Reply, format_double};

pub(super) fn read(db: &Db, name: &str, argv: &[Vec<u8>], now: u64) -> Option<Reply> {
    Some(super::flat(run_read(db, name, argv, now)))
}

fn run_read(db: &Db, name: &str, argv: &[Vec<u8>], now: u64) -> Result<Reply, Reply> {
    let empty = BTreeMap::new();
    let h = db.hash(&argv[1], now)?.unwrap_or(&empty);
    Ok(match name {
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
        "HSTRLEN" => Reply::Int(h.get(&argv[2]).map(|v| v.len()).unwrap_or(0) as i64),
        "HRANDFIELD" => {
            let pairs: Vec<(&Vec<u8>, &Vec<u8>)> = h.iter().collect();
            let with_values = match argv.len() {
                2 => {
                    if pairs.is_empty() {
                        return Ok(Reply::Nil);
                    }
                    let (k, _) = pairs[Rng::local().below(pairs.len())];
                    return Ok(Reply::bulk(k));
                }
                3 => false,
                4 if argv[3].eq_ignore_ascii_case(b"WITHVALUES") => true,
                _ => return Err(Reply::err(super::SYNTAX)),
            };
            let picks = super::set::random_picks(&argv[2], pairs.len(), with_values)?;
            let out: Vec<Reply> = picks
                .into_iter()
                .flat_map(|i| {
                    let (k, v) = pairs[i];
                    let mut one = vec![Reply::bulk(k)];
                    if with_values {
                        one.push(Reply::bulk(v));
                    }
                    one
                })
                .collect();
            if with_values {
                super::keyspace::pairs_reply(out)
            } else {
                Reply::Array(out)
            }
        }
        "HSCAN" => super::keyspace::scan_collection(
            argv,
            h.iter().map(|(k, v)| (k.as_slice(), Some(v.clone()))),
        )?,
        _ => return Err(super::unknown_cmd(name)),
    })
}

pub(super) fn write(db: &mut Db, name: &str, argv: &[Vec<u8>], at: At) -> Option<Reply> {
    let r = run_write(db, name, argv, at);
    Some(db.finish(&argv[1], at.index, r))
}

fn run_write(db: &mut Db, name: &str, argv: &[Vec<u8>], at: At) -> Result<Reply, Reply> {
    Ok(match name {
        "HSET" | "HMSET" | "HSETNX" => {
            if !argv.len().is_multiple_of(2) {
                return Err(arity_err(name));
            }
            let h = db.hash_create(&argv[1], at.index)?;
            let mut added = 0;
            for fv in argv[2..].chunks(2) {
                if name == "HSETNX" && h.contains_key(&fv[0]) {
                    continue;
                }
                if h.insert(fv[0].clone(), fv[1].clone()).is_none() {
                    added += 1;
                }
            }
            match name {
                "HMSET" => Reply::ok(),
                _ => Reply::Int(added),
            }
        }
        "HDEL" => {
            let Some(h) = db.hash_mut(&argv[1])? else {
                return Ok(Reply::Int(0));
            };
            let n = argv[2..].iter().filter(|f| h.remove(*f).is_some()).count();
            Reply::Int(n as i64)
        }
        "HINCRBY" => {
            let Some(by) = parse_i64(&argv[3]) else {
                return Err(Reply::err(NOT_INT));
            };
            let h = db.hash_create(&argv[1], at.index)?;
            let c = match h.get(&argv[2]) {
                None => 0,
                Some(v) => {
                    parse_i64(v).ok_or_else(|| Reply::err("ERR hash value is not an integer"))?
                }
            };
            let Some(n) = c.checked_add(by) else {
                return Err(Reply::err("ERR increment or decrement would overflow"));
            };
            h.insert(argv[2].clone(), n.to_string().into_bytes());
            Reply::Int(n)
        }
        "HINCRBYFLOAT" => {
            let Some(by) = parse_f64(&argv[3]) else {
                return Err(Reply::err(NOT_FLOAT));
            };
            if !by.is_finite() {
                return Err(Reply::err("ERR value is NaN or Infinity"));
            }
            let h = db.hash_create(&argv[1], at.index)?;
            let c = match h.get(&argv[2]) {
                None => 0.0,
                Some(v) => {
                    parse_f64(v).ok_or_else(|| Reply::err("ERR hash value is not a float"))?
                }
            };
            let v = c + by;
            if v.is_infinite() || v.is_nan() {
                return Err(Reply::err("ERR increment would produce NaN or Infinity"));
            }
            let s = format_double(v);
            h.insert(argv[2].clone(), s.clone().into_bytes());
            Reply::bulk(s)
        }
        _ => return Err(super::unknown_cmd(name)),
    })
}
