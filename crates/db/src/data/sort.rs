//! SORT and SORT_RO: the elements of a list, set or sorted set, ordered by their value or
//! by keys named after them (BY), with LIMIT, GET and STORE, as Redis 7.0.

use std::cmp::Ordering;

use super::{Db, NOT_INT, SYNTAX, Value, parse_f64, parse_i64, upper};
use crate::resp::Reply;

/// What SORT answers: the output (GET values may be missing) and where to store it.
pub(super) struct Sorted {
    pub out: Vec<Option<Vec<u8>>>,
    pub store: Option<Vec<u8>>,
}

/// The value a BY or GET pattern names for `elem`: `#` is the element itself; otherwise the
/// first `*` is replaced by the element, and `key->field` reads a hash field. A pattern
/// without `*`, a missing key or a value of another type give nothing.
fn lookup(db: &Db, pattern: &[u8], elem: &[u8], now: u64) -> Option<Vec<u8>> {
    if pattern == b"#" {
        return Some(elem.to_vec());
    }
    let star = pattern.iter().position(|&b| b == b'*')?;
    let arrow = pattern
        .windows(2)
        .position(|w| w == b"->")
        .filter(|&p| p > star && p + 2 < pattern.len());
    let key_end = arrow.unwrap_or(pattern.len());
    let mut key = pattern[..star].to_vec();
    key.extend_from_slice(elem);
    key.extend_from_slice(&pattern[star + 1..key_end]);
    let value = &db.get_live(&key, now)?.value;
    match (value, arrow) {
        (Value::Str(s), None) => Some(s.clone()),
        (Value::Hash(h), Some(p)) => h.get(&pattern[p + 2..]).cloned(),
        _ => None,
    }
}

pub(super) fn sort(db: &Db, argv: &[Vec<u8>], now: u64, ro: bool) -> Result<Sorted, Reply> {
    let mut desc = false;
    let mut alpha = false;
    let mut limit: Option<(i64, i64)> = None;
    let mut store = None;
    let mut by: Option<&[u8]> = None;
    let mut dontsort = false;
    let mut gets: Vec<&[u8]> = Vec::new();
    let mut i = 2;
    while i < argv.len() {
        let left = argv.len() - i - 1;
        match upper(&argv[i]).as_str() {
            "ASC" => desc = false,
            "DESC" => desc = true,
            "ALPHA" => alpha = true,
            "LIMIT" if left >= 2 => {
                let (Some(o), Some(c)) = (parse_i64(&argv[i + 1]), parse_i64(&argv[i + 2])) else {
                    return Err(Reply::err(NOT_INT));
                };
                limit = Some((o, c));
                i += 2;
            }
            "STORE" if left >= 1 && !ro => {
                store = Some(argv[i + 1].clone());
                i += 1;
            }
            "BY" if left >= 1 => {
                let p = &argv[i + 1][..];
                // A pattern naming no key per element: keep the elements' own order.
                dontsort = !p.contains(&b'*');
                by = Some(p);
                i += 1;
            }
            "GET" if left >= 1 => {
                gets.push(&argv[i + 1]);
                i += 1;
            }
            _ => return Err(Reply::err(SYNTAX)),
        }
        i += 1;
    }
    let source = db.get_live(&argv[1], now).map(|i| &i.value);
    let is_zset = matches!(source, Some(Value::ZSet(_)));
    if dontsort && matches!(source, Some(Value::Set(_))) {
        // A set has no order of its own: Redis sorts it by value then (for scripts and
        // STORE), which any order of a set's members is allowed to be.
        dontsort = false;
        alpha = true;
        by = None;
    }
    let mut elems: Vec<Vec<u8>> = match source {
        None => Vec::new(),
        Some(Value::List(l)) => l.iter().cloned().collect(),
        // Sets iterate in byte order here, so an unsorted SORT of a set is deterministic.
        Some(Value::Set(s)) => s.iter().cloned().collect(),
        Some(Value::ZSet(z)) => z.iter().map(|(m, _)| m.clone()).collect(),
        Some(_) => return Err(Reply::err(super::WRONGTYPE)),
    };
    if !dontsort {
        // The sort key of each element: its BY value (or itself), numeric unless ALPHA.
        enum W {
            Num(f64),
            Str(Option<Vec<u8>>),
        }
        let mut weighted = Vec::with_capacity(elems.len());
        for e in elems {
            let v = match by {
                Some(p) => lookup(db, p, &e, now),
                None => Some(e.clone()),
            };
            let w = if alpha {
                W::Str(v)
            } else {
                match v {
                    None => W::Num(0.0),
                    Some(v) => match parse_f64(&v) {
                        Some(f) if !f.is_nan() => W::Num(f),
                        _ => {
                            return Err(Reply::err(
                                "ERR One or more scores can't be converted into double",
                            ));
                        }
                    },
                }
            };
            weighted.push((w, e));
        }
        weighted.sort_by(|(a, ea), (b, eb)| {
            let o = match (a, b) {
                (W::Num(x), W::Num(y)) => x.partial_cmp(y).unwrap_or(Ordering::Equal),
                (W::Str(x), W::Str(y)) => x.cmp(y),
                _ => Ordering::Equal,
            };
            // Equal weights: by the elements themselves, so the order is always the same.
            let o = o.then_with(|| ea.cmp(eb));
            if desc { o.reverse() } else { o }
        });
        elems = weighted.into_iter().map(|(_, e)| e).collect();
    } else if desc && is_zset {
        // Unsorted but DESC on a sorted set: Redis walks it from the top.
        elems.reverse();
    }
    let n = elems.len() as i64;
    let (start, count) = match limit {
        None => (0, n),
        Some((o, c)) => {
            let start = o.clamp(0, n);
            let count = if c < 0 { n } else { c };
            (start, count.min(n - start))
        }
    };
    let picked = &elems[start as usize..(start + count.max(0)) as usize];
    let mut out = Vec::new();
    for e in picked {
        if gets.is_empty() {
            out.push(Some(e.clone()));
        } else {
            for g in &gets {
                out.push(lookup(db, g, e, now));
            }
        }
    }
    Ok(Sorted { out, store })
}
