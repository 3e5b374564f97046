//! Sorted sets: a member → score map plus a (score, member) order.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use serde::{Deserialize, Serialize};

use super::{
    At, Db, NOT_FLOAT, NOT_INT, Rng, SYNTAX, Value, parse_f64, parse_i64, range_of, upper,
};
use crate::resp::Reply;

/// Members with their scores, in the order a reply lists them.
type Scored = Vec<(Vec<u8>, f64)>;

/// A score with a total order (NaN never gets in).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Score(pub f64);

impl Eq for Score {}

impl PartialOrd for Score {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Score {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ZSet {
    scores: BTreeMap<Vec<u8>, f64>,
    order: BTreeSet<(Score, Vec<u8>)>,
}

impl ZSet {
    pub fn len(&self) -> usize {
        self.scores.len()
    }

    pub fn is_empty(&self) -> bool {
        self.scores.is_empty()
    }

    pub fn score(&self, m: &[u8]) -> Option<f64> {
        self.scores.get(m).copied()
    }

    /// Sets a score; true when the member is new. -0 is stored as 0 (as Redis compares them).
    pub fn insert(&mut self, m: &[u8], s: f64) -> bool {
        let s = if s == 0.0 { 0.0 } else { s };
        let old = self.scores.insert(m.to_vec(), s);
        if let Some(o) = old {
            self.order.remove(&(Score(o), m.to_vec()));
        }
        self.order.insert((Score(s), m.to_vec()));
        old.is_none()
    }

    pub fn remove(&mut self, m: &[u8]) -> bool {
        match self.scores.remove(m) {
            Some(s) => {
                self.order.remove(&(Score(s), m.to_vec()));
                true
            }
            None => false,
        }
    }

    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (&Vec<u8>, f64)> {
        self.order.iter().map(|(s, m)| (m, s.0))
    }

    fn rank(&self, m: &[u8]) -> Option<usize> {
        let s = self.score(m)?;
        Some(self.order.range(..(Score(s), m.to_vec())).count())
    }

    fn in_score(&self, r: &ScoreRange) -> impl DoubleEndedIterator<Item = (&Vec<u8>, f64)> {
        let lo = Bound::Included((Score(r.min), Vec::new()));
        // Every entry scoring at most `max` sorts before (the next float up, empty member).
        let hi = if r.max == f64::INFINITY || r.max < r.min {
            Bound::Unbounded
        } else {
            Bound::Excluded((Score(next_up(r.max)), Vec::new()))
        };
        let empty = r.max < r.min;
        self.order
            .range((lo, hi))
            .map(|(s, m)| (m, s.0))
            .filter(move |(_, s)| !empty && r.below_max(*s) && r.above_min(*s))
    }

    fn in_lex<'a>(
        &'a self,
        r: &'a LexRange,
    ) -> impl DoubleEndedIterator<Item = (&'a Vec<u8>, f64)> {
        // Lex ranges assume equal scores (as Redis): filter in (score, member) order.
        self.iter().filter(move |(m, _)| r.contains(m))
    }
}

/// The smallest float above `x` (finite `x`).
fn next_up(x: f64) -> f64 {
    if x == 0.0 {
        return f64::from_bits(1);
    }
    let b = x.to_bits();
    f64::from_bits(if x > 0.0 { b + 1 } else { b - 1 })
}

pub(crate) struct ScoreRange {
    min: f64,
    max: f64,
    min_ex: bool,
    max_ex: bool,
}

impl ScoreRange {
    fn parse(min: &[u8], max: &[u8]) -> Result<ScoreRange, Reply> {
        let one = |b: &[u8]| -> Result<(f64, bool), Reply> {
            let (ex, v) = match b.first() {
                Some(b'(') => (true, &b[1..]),
                _ => (false, b),
            };
            let f = parse_f64(v).ok_or_else(|| Reply::err("ERR min or max is not a float"))?;
            Ok((f, ex))
        };
        let ((min, min_ex), (max, max_ex)) = (one(min)?, one(max)?);
        Ok(ScoreRange {
            min,
            max,
            min_ex,
            max_ex,
        })
    }
    fn above_min(&self, s: f64) -> bool {
        if self.min_ex {
            s > self.min
        } else {
            s >= self.min
        }
    }
    fn below_max(&self, s: f64) -> bool {
        if self.max_ex {
            s < self.max
        } else {
            s <= self.max
        }
    }
}

pub(crate) struct LexRange {
    min: Bound<Vec<u8>>,
    max: Bound<Vec<u8>>,
    /// "+" as the minimum or "-" as the maximum: nothing is in range.
    empty: bool,
}

impl LexRange {
    fn parse(min: &[u8], max: &[u8]) -> Result<LexRange, Reply> {
        // Ok(None) = the infinity at the wrong end ("+" as min, "-" as max).
        let one = |b: &[u8], inf: u8| -> Result<Option<Bound<Vec<u8>>>, Reply> {
            match b.first() {
                Some(b'[') => Ok(Some(Bound::Included(b[1..].to_vec()))),
                Some(b'(') => Ok(Some(Bound::Excluded(b[1..].to_vec()))),
                Some(&c) if b.len() == 1 && (c == b'-' || c == b'+') => {
                    Ok((c == inf).then_some(Bound::Unbounded))
                }
                _ => Err(Reply::err("ERR min or max not valid string range item")),
            }
        };
        let (lo, hi) = (one(min, b'-')?, one(max, b'+')?);
        Ok(LexRange {
            empty: lo.is_none() || hi.is_none(),
            min: lo.unwrap_or(Bound::Unbounded),
            max: hi.unwrap_or(Bound::Unbounded),
        })
    }
    fn contains(&self, m: &[u8]) -> bool {
        let lo = match &self.min {
            Bound::Unbounded => true,
            Bound::Included(v) => m >= v.as_slice(),
            Bound::Excluded(v) => m > v.as_slice(),
        };
        let hi = match &self.max {
            Bound::Unbounded => true,
            Bound::Included(v) => m <= v.as_slice(),
            Bound::Excluded(v) => m < v.as_slice(),
        };
        !self.empty && lo && hi
    }
}

enum By {
    Rank,
    Score,
    Lex,
}

/// A parsed ZRANGE-family request.
struct RangeReq {
    by: By,
    rev: bool,
    limit: Option<(i64, i64)>,
    withscores: bool,
    min: Vec<u8>,
    max: Vec<u8>,
}

fn scores_reply(items: Vec<(Vec<u8>, f64)>, withscores: bool) -> Reply {
    if withscores {
        Reply::Pairs(
            items
                .into_iter()
                .map(|(m, s)| (Reply::Bulk(m), Reply::Double(s)))
                .collect(),
        )
    } else {
        Reply::Array(items.into_iter().map(|(m, _)| Reply::Bulk(m)).collect())
    }
}

/// Parses ZRANGE's options from `argv[first_opt..]` (the command form decides the rest).
fn parse_range(name: &str, argv: &[Vec<u8>], min_at: usize) -> Result<RangeReq, Reply> {
    let mut r = RangeReq {
        by: By::Rank,
        rev: false,
        limit: None,
        withscores: false,
        min: argv[min_at].clone(),
        max: argv[min_at + 1].clone(),
    };
    match name {
        "ZREVRANGE" => r.rev = true,
        "ZRANGEBYSCORE" => r.by = By::Score,
        "ZREVRANGEBYSCORE" => (r.by, r.rev) = (By::Score, true),
        "ZRANGEBYLEX" => r.by = By::Lex,
        "ZREVRANGEBYLEX" => (r.by, r.rev) = (By::Lex, true),
        _ => {}
    }
    let generic = name == "ZRANGE" || name == "ZRANGESTORE";
    let mut i = min_at + 2;
    while i < argv.len() {
        match upper(&argv[i]).as_str() {
            "WITHSCORES"
                if name != "ZRANGEBYLEX" && name != "ZREVRANGEBYLEX" && name != "ZRANGESTORE" =>
            {
                r.withscores = true
            }
            "LIMIT" if name != "ZRANGE" && name != "ZREVRANGE" || generic => {
                if i + 2 >= argv.len() {
                    return Err(Reply::err(SYNTAX));
                }
                let (Some(o), Some(c)) = (parse_i64(&argv[i + 1]), parse_i64(&argv[i + 2])) else {
                    return Err(Reply::err(NOT_INT));
                };
                r.limit = Some((o, c));
                i += 2;
            }
            "BYSCORE" if generic => r.by = By::Score,
            "BYLEX" if generic => r.by = By::Lex,
            "REV" if generic => r.rev = true,
            _ => return Err(Reply::err(SYNTAX)),
        }
        i += 1;
    }
    if r.limit.is_some() && matches!(r.by, By::Rank) {
        return Err(Reply::err(
            "ERR syntax error, LIMIT is only supported in combination with either BYSCORE or BYLEX",
        ));
    }
    if r.withscores && matches!(r.by, By::Lex) {
        return Err(Reply::err(
            "ERR syntax error, WITHSCORES not supported in combination with BYLEX",
        ));
    }
    // The reversed forms take max before min.
    if r.rev && !matches!(r.by, By::Rank) {
        std::mem::swap(&mut r.min, &mut r.max);
    }
    Ok(r)
}

fn run_range(z: Option<&ZSet>, r: &RangeReq) -> Result<Vec<(Vec<u8>, f64)>, Reply> {
    let empty = ZSet::default();
    let z = z.unwrap_or(&empty);
    let (off, cnt) = r.limit.unwrap_or((0, -1));
    let take = |it: &mut dyn Iterator<Item = (&Vec<u8>, f64)>| -> Vec<(Vec<u8>, f64)> {
        if off < 0 {
            return Vec::new();
        }
        let it = it.skip(off as usize).map(|(m, s)| (m.clone(), s));
        if cnt < 0 {
            it.collect()
        } else {
            it.take(cnt as usize).collect()
        }
    };
    Ok(match r.by {
        By::Rank => {
            let (Some(a), Some(b)) = (parse_i64(&r.min), parse_i64(&r.max)) else {
                return Err(Reply::err(NOT_INT));
            };
            let Some((a, b)) = range_of(a, b, z.len()) else {
                return Ok(Vec::new());
            };
            let n = b - a + 1;
            if r.rev {
                z.iter()
                    .rev()
                    .skip(a)
                    .take(n)
                    .map(|(m, s)| (m.clone(), s))
                    .collect()
            } else {
                z.iter()
                    .skip(a)
                    .take(n)
                    .map(|(m, s)| (m.clone(), s))
                    .collect()
            }
        }
        By::Score => {
            let sr = ScoreRange::parse(&r.min, &r.max)?;
            if r.rev {
                take(&mut z.in_score(&sr).rev())
            } else {
                take(&mut z.in_score(&sr))
            }
        }
        By::Lex => {
            let lr = LexRange::parse(&r.min, &r.max)?;
            if r.rev {
                take(&mut z.in_lex(&lr).rev())
            } else {
                take(&mut z.in_lex(&lr))
            }
        }
    })
}

#[derive(Clone, Copy)]
enum Agg {
    Sum,
    Min,
    Max,
}

/// ZUNION/ZINTER/ZDIFF[STORE]'s inputs: sets count with score 1.
fn input(db: &Db, k: &[u8], now: u64) -> Result<Option<Scored>, Reply> {
    match db.get_live(k, now).map(|i| &i.value) {
        None => Ok(None),
        Some(Value::ZSet(z)) => Ok(Some(
            z.scores.iter().map(|(m, s)| (m.clone(), *s)).collect(),
        )),
        Some(Value::Set(s)) => Ok(Some(s.iter().map(|m| (m.clone(), 1.0)).collect())),
        Some(_) => Err(Reply::err(super::WRONGTYPE)),
    }
}

/// Combines sorted sets: `argv[at]` is numkeys; returns the result and WITHSCORES.
fn combine(
    db: &Db,
    op: &str,
    cmd: &str,
    argv: &[Vec<u8>],
    at: usize,
    now: u64,
    store: bool,
) -> Result<(Scored, bool), Reply> {
    let n = match parse_i64(&argv[at]) {
        Some(n) if n > 0 => n as usize,
        Some(_) => {
            return Err(Reply::err(format!(
                "ERR at least 1 input key is needed for '{}' command",
                cmd.to_ascii_lowercase()
            )));
        }
        None => return Err(Reply::err(NOT_INT)),
    };
    if argv.len() < at + 1 + n {
        return Err(Reply::err(SYNTAX));
    }
    let keys = &argv[at + 1..at + 1 + n];
    let mut weights = vec![1.0; n];
    let mut agg = Agg::Sum;
    let mut withscores = false;
    let mut i = at + 1 + n;
    while i < argv.len() {
        match upper(&argv[i]).as_str() {
            "WEIGHTS" if op != "DIFF" && i + n < argv.len() => {
                for (j, w) in weights.iter_mut().enumerate() {
                    *w = parse_f64(&argv[i + 1 + j])
                        .ok_or_else(|| Reply::err("ERR weight value is not a float"))?;
                }
                i += n;
            }
            "AGGREGATE" if op != "DIFF" && i + 1 < argv.len() => {
                agg = match upper(&argv[i + 1]).as_str() {
                    "SUM" => Agg::Sum,
                    "MIN" => Agg::Min,
                    "MAX" => Agg::Max,
                    _ => return Err(Reply::err(SYNTAX)),
                };
                i += 1;
            }
            "WITHSCORES" if !store => withscores = true,
            _ => return Err(Reply::err(SYNTAX)),
        }
        i += 1;
    }
    let inputs: Vec<Option<Scored>> = keys
        .iter()
        .map(|k| input(db, k, now))
        .collect::<Result<_, _>>()?;
    let weigh = |s: f64, w: f64| {
        let v = s * w;
        if v.is_nan() { 0.0 } else { v }
    };
    let fold = |a: f64, b: f64| match agg {
        Agg::Sum => {
            let v = a + b;
            if v.is_nan() { 0.0 } else { v }
        }
        Agg::Min => a.min(b),
        Agg::Max => a.max(b),
    };
    let mut acc: BTreeMap<Vec<u8>, f64> = BTreeMap::new();
    match op {
        "UNION" => {
            for (inp, w) in inputs.iter().zip(&weights) {
                for (m, s) in inp.iter().flatten() {
                    let v = weigh(*s, *w);
                    acc.entry(m.clone())
                        .and_modify(|c| *c = fold(*c, v))
                        .or_insert(v);
                }
            }
        }
        "INTER" => {
            if inputs.iter().all(|i| i.is_some()) {
                let maps: Vec<BTreeMap<&Vec<u8>, f64>> = inputs
                    .iter()
                    .flatten()
                    .map(|v| v.iter().map(|(m, s)| (m, *s)).collect())
                    .collect();
                for (m, s) in &maps[0] {
                    let mut v = weigh(*s, weights[0]);
                    let mut all = true;
                    for (j, other) in maps.iter().enumerate().skip(1) {
                        match other.get(m) {
                            Some(o) => v = fold(v, weigh(*o, weights[j])),
                            None => {
                                all = false;
                                break;
                            }
                        }
                    }
                    if all {
                        acc.insert((*m).clone(), v);
                    }
                }
            }
        }
        _ => {
            if let Some(first) = &inputs[0] {
                for (m, s) in first {
                    let gone = inputs[1..]
                        .iter()
                        .flatten()
                        .any(|o| o.iter().any(|(x, _)| x == m));
                    if !gone {
                        acc.insert(m.clone(), *s);
                    }
                }
            }
        }
    }
    let mut out: Vec<(Vec<u8>, f64)> = acc.into_iter().collect();
    out.sort_by(|a, b| a.1.total_cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
    Ok((out, withscores))
}

pub(super) fn read(db: &Db, name: &str, argv: &[Vec<u8>], now: u64) -> Option<Reply> {
    Some(super::flat(run_read(db, name, argv, now)))
}

fn run_read(db: &Db, name: &str, argv: &[Vec<u8>], now: u64) -> Result<Reply, Reply> {
    Ok(match name {
        "ZUNION" | "ZINTER" | "ZDIFF" => {
            let (items, ws) = combine(db, &name[1..], name, argv, 1, now, false)?;
            scores_reply(items, ws)
        }
        "ZINTERCARD" => {
            if parse_i64(&argv[1]).is_some_and(|n| n <= 0) {
                return Err(Reply::err(
                    "ERR at least 1 input key is needed for 'zintercard' command",
                ));
            }
            let (keys, limit) = super::set::card_args(argv)?;
            let mut args = vec![b"ZINTER".to_vec(), keys.len().to_string().into_bytes()];
            args.extend(keys);
            let n = combine(db, "INTER", name, &args, 1, now, true)?.0.len();
            Reply::Int(if limit > 0 { n.min(limit) } else { n } as i64)
        }
        _ => {
            let z = db.zset(&argv[1], now)?;
            match name {
                "ZCARD" => Reply::Int(z.map(|z| z.len()).unwrap_or(0) as i64),
                "ZSCORE" => z
                    .and_then(|z| z.score(&argv[2]))
                    .map(Reply::Double)
                    .unwrap_or(Reply::Nil),
                "ZMSCORE" => Reply::Array(
                    argv[2..]
                        .iter()
                        .map(|m| {
                            z.and_then(|z| z.score(m))
                                .map(Reply::Double)
                                .unwrap_or(Reply::Nil)
                        })
                        .collect(),
                ),
                "ZRANK" | "ZREVRANK" => match z.and_then(|z| z.rank(&argv[2]).map(|r| (z, r))) {
                    None => Reply::Nil,
                    Some((z, r)) if name == "ZREVRANK" => Reply::Int((z.len() - 1 - r) as i64),
                    Some((_, r)) => Reply::Int(r as i64),
                },
                "ZCOUNT" => {
                    let r = ScoreRange::parse(&argv[2], &argv[3])?;
                    Reply::Int(z.map(|z| z.in_score(&r).count()).unwrap_or(0) as i64)
                }
                "ZLEXCOUNT" => {
                    let r = LexRange::parse(&argv[2], &argv[3])?;
                    Reply::Int(z.map(|z| z.in_lex(&r).count()).unwrap_or(0) as i64)
                }
                "ZRANGE" | "ZREVRANGE" | "ZRANGEBYSCORE" | "ZREVRANGEBYSCORE" | "ZRANGEBYLEX"
                | "ZREVRANGEBYLEX" => {
                    let r = parse_range(name, argv, 2)?;
                    scores_reply(run_range(z, &r)?, r.withscores)
                }
                "ZRANDMEMBER" => zrandmember(z, argv)?,
                "ZSCAN" => {
                    let empty = ZSet::default();
                    super::keyspace::scan_collection(
                        argv,
                        z.unwrap_or(&empty).scores.iter().map(|(m, s)| {
                            (m.as_slice(), Some(crate::resp::format_g17(*s).into_bytes()))
                        }),
                    )?
                }
                _ => return Err(super::unknown_cmd(name)),
            }
        }
    })
}

fn zrandmember(z: Option<&ZSet>, argv: &[Vec<u8>]) -> Result<Reply, Reply> {
    let items: Vec<(&Vec<u8>, f64)> = z.map(|z| z.iter().collect()).unwrap_or_default();
    let withscores = match argv.len() {
        2 => {
            if items.is_empty() {
                return Ok(Reply::Nil);
            }
            return Ok(Reply::bulk(items[Rng::local().below(items.len())].0));
        }
        3 => false,
        4 if argv[3].eq_ignore_ascii_case(b"WITHSCORES") => true,
        _ => return Err(Reply::err(SYNTAX)),
    };
    let picks = super::set::random_picks(&argv[2], items.len(), withscores)?;
    Ok(scores_reply(
        picks
            .into_iter()
            .map(|i| (items[i].0.clone(), items[i].1))
            .collect(),
        withscores,
    ))
}

pub(super) fn write(db: &mut Db, name: &str, argv: &[Vec<u8>], at: At) -> Option<Reply> {
    let r = match name {
        "ZUNIONSTORE" | "ZINTERSTORE" | "ZDIFFSTORE" => {
            combine(db, &name[1..name.len() - 5], name, argv, 2, at.now, true).map(|(items, _)| {
                let n = items.len();
                store(db, &argv[1], items, at.index);
                Reply::Int(n as i64)
            })
        }
        "ZRANGESTORE" => parse_range(name, argv, 3).and_then(|r| {
            let items = run_range(db.zset(&argv[2], at.now)?, &r)?;
            let n = items.len();
            store(db, &argv[1], items, at.index);
            Ok(Reply::Int(n as i64))
        }),
        "ZMPOP" => mpop_args(argv, 1).and_then(|(keys, max, n)| {
            mpop(db, &keys, max, n, at.index).map(|r| r.unwrap_or(Reply::NilArray))
        }),
        // The blocking forms, run once: the server waits and retries them.
        "BZMPOP" => super::block_timeout(name, argv).and_then(|_| {
            let (keys, max, n) = mpop_args(argv, 2)?;
            mpop(db, &keys, max, n, at.index).map(|r| r.unwrap_or(Reply::NilArray))
        }),
        "BZPOPMIN" | "BZPOPMAX" => super::block_timeout(name, argv).and_then(|_| {
            for k in &argv[1..argv.len() - 1] {
                let got = zpop(db, k, name == "BZPOPMAX", 1)?;
                if let Some((m, s)) = got.into_iter().next() {
                    db.changed(k, at.index);
                    return Ok(Reply::Array(vec![
                        Reply::bulk(k),
                        Reply::Bulk(m),
                        Reply::Double(s),
                    ]));
                }
            }
            Ok(Reply::NilArray)
        }),
        _ => {
            let r = run_write(db, name, argv);
            return Some(db.finish(&argv[1], at.index, r));
        }
    };
    Some(super::flat(r))
}

fn store(db: &mut Db, k: &[u8], items: Vec<(Vec<u8>, f64)>, index: u64) {
    let mut z = ZSet::default();
    for (m, s) in items {
        z.insert(&m, s);
    }
    db.put(k, Value::ZSet(z), None, index);
}

fn pop(z: &mut ZSet, max: bool, n: usize) -> Vec<(Vec<u8>, f64)> {
    let picked: Vec<(Vec<u8>, f64)> = if max {
        z.iter()
            .rev()
            .take(n)
            .map(|(m, s)| (m.clone(), s))
            .collect()
    } else {
        z.iter().take(n).map(|(m, s)| (m.clone(), s)).collect()
    };
    for (m, _) in &picked {
        z.remove(m);
    }
    picked
}

/// Parses ZMPOP/BZMPOP's `numkeys key… MIN|MAX [COUNT n]` from `argv[at..]`.
pub(crate) fn mpop_args(argv: &[Vec<u8>], at: usize) -> Result<(Vec<Vec<u8>>, bool, usize), Reply> {
    let n = match parse_i64(&argv[at]) {
        Some(n) if n > 0 => n as usize,
        _ => return Err(Reply::err("ERR numkeys should be greater than 0")),
    };
    if argv.len() < at + 2 + n {
        return Err(Reply::err(SYNTAX));
    }
    let keys = argv[at + 1..at + 1 + n].to_vec();
    let max = match upper(&argv[at + 1 + n]).as_str() {
        "MIN" => false,
        "MAX" => true,
        _ => return Err(Reply::err(SYNTAX)),
    };
    let rest = &argv[at + 2 + n..];
    let count = match rest.len() {
        0 => 1,
        2 if rest[0].eq_ignore_ascii_case(b"COUNT") => match parse_i64(&rest[1]) {
            Some(c) if c > 0 => c as usize,
            _ => return Err(Reply::err("ERR count should be greater than 0")),
        },
        _ => return Err(Reply::err(SYNTAX)),
    };
    Ok((keys, max, count))
}

/// Pops from the first non-empty sorted set of `keys`: `[key, [[member, score]…]]`.
pub(crate) fn mpop(
    db: &mut Db,
    keys: &[Vec<u8>],
    max: bool,
    n: usize,
    index: u64,
) -> Result<Option<Reply>, Reply> {
    for k in keys {
        if let Some(z) = db.zset_mut(k)?
            && !z.is_empty()
        {
            let got = pop(z, max, n);
            db.changed(k, index);
            return Ok(Some(Reply::Array(vec![
                Reply::bulk(k),
                Reply::Array(
                    got.into_iter()
                        .map(|(m, s)| Reply::Array(vec![Reply::Bulk(m), Reply::Double(s)]))
                        .collect(),
                ),
            ])));
        }
    }
    Ok(None)
}

/// ZPOPMIN/ZPOPMAX's work on one key (also what BZPOPMIN/MAX serve).
pub(crate) fn zpop(
    db: &mut Db,
    k: &[u8],
    max: bool,
    n: usize,
) -> Result<Vec<(Vec<u8>, f64)>, Reply> {
    Ok(match db.zset_mut(k)? {
        Some(z) => pop(z, max, n),
        None => Vec::new(),
    })
}

fn zadd(db: &mut Db, argv: &[Vec<u8>]) -> Result<Reply, Reply> {
    let (mut nx, mut xx, mut gt, mut lt, mut ch, mut incr) =
        (false, false, false, false, false, false);
    let mut i = 2;
    while i < argv.len() {
        match upper(&argv[i]).as_str() {
            "NX" => nx = true,
            "XX" => xx = true,
            "GT" => gt = true,
            "LT" => lt = true,
            "CH" => ch = true,
            "INCR" => incr = true,
            _ => break,
        }
        i += 1;
    }
    let pairs = &argv[i..];
    if pairs.is_empty() || !pairs.len().is_multiple_of(2) {
        return Err(Reply::err(SYNTAX));
    }
    if nx && xx {
        return Err(Reply::err(
            "ERR XX and NX options at the same time are not compatible",
        ));
    }
    if (nx && (gt || lt)) || (gt && lt) {
        return Err(Reply::err(
            "ERR GT, LT, and/or NX options at the same time are not compatible",
        ));
    }
    if incr && pairs.len() > 2 {
        return Err(Reply::err(
            "ERR INCR option supports a single increment-element pair",
        ));
    }
    let parsed: Vec<(f64, &Vec<u8>)> = pairs
        .chunks(2)
        .map(|p| parse_f64(&p[0]).map(|s| (s, &p[1])))
        .collect::<Option<_>>()
        .ok_or_else(|| Reply::err(NOT_FLOAT))?;
    if xx && db.zset_mut(&argv[1])?.is_none() {
        return Ok(if incr { Reply::Nil } else { Reply::Int(0) });
    }
    let z = db.zset_create(&argv[1], 0)?;
    let (mut added, mut changed) = (0, 0);
    let mut last = None;
    for (s, m) in parsed {
        let cur = z.score(m);
        if (nx && cur.is_some()) || (xx && cur.is_none()) {
            continue;
        }
        let new = match (incr, cur) {
            (true, Some(c)) => c + s,
            _ => s,
        };
        if new.is_nan() {
            return Err(Reply::err("ERR resulting score is not a number (NaN)"));
        }
        if let Some(c) = cur
            && ((gt && new <= c) || (lt && new >= c))
        {
            continue;
        }
        last = Some(new);
        match cur {
            None => {
                z.insert(m, new);
                added += 1;
            }
            Some(c) if c != new => {
                z.insert(m, new);
                changed += 1;
            }
            Some(_) => {}
        }
    }
    Ok(if incr {
        last.map(Reply::Double).unwrap_or(Reply::Nil)
    } else if ch {
        Reply::Int(added + changed)
    } else {
        Reply::Int(added)
    })
}

fn run_write(db: &mut Db, name: &str, argv: &[Vec<u8>]) -> Result<Reply, Reply> {
    Ok(match name {
        "ZADD" => zadd(db, argv)?,
        "ZINCRBY" => {
            let by = parse_f64(&argv[2]).ok_or_else(|| Reply::err(NOT_FLOAT))?;
            let z = db.zset_create(&argv[1], 0)?;
            let v = z.score(&argv[3]).unwrap_or(0.0) + by;
            if v.is_nan() {
                return Err(Reply::err("ERR resulting score is not a number (NaN)"));
            }
            z.insert(&argv[3], v);
            Reply::Double(v)
        }
        "ZREM" => match db.zset_mut(&argv[1])? {
            None => Reply::Int(0),
            Some(z) => Reply::Int(argv[2..].iter().filter(|m| z.remove(m)).count() as i64),
        },
        "ZREMRANGEBYSCORE" | "ZREMRANGEBYRANK" | "ZREMRANGEBYLEX" => {
            let by = match name {
                "ZREMRANGEBYSCORE" => By::Score,
                "ZREMRANGEBYRANK" => By::Rank,
                _ => By::Lex,
            };
            let r = RangeReq {
                by,
                rev: false,
                limit: None,
                withscores: false,
                min: argv[2].clone(),
                max: argv[3].clone(),
            };
            let gone = run_range(db.zset_mut(&argv[1])?.map(|z| &*z), &r)?;
            if let Some(z) = db.zset_mut(&argv[1])? {
                for (m, _) in &gone {
                    z.remove(m);
                }
            }
            Reply::Int(gone.len() as i64)
        }
        "ZPOPMIN" | "ZPOPMAX" => {
            let count = super::optional_count(argv)?;
            let got = zpop(db, &argv[1], name == "ZPOPMAX", count.unwrap_or(1))?;
            match count {
                // Without a count: a flat [member, score] in both protocols.
                None => Reply::Array(
                    got.into_iter()
                        .flat_map(|(m, s)| [Reply::Bulk(m), Reply::Double(s)])
                        .collect(),
                ),
                Some(_) => scores_reply(got, true),
            }
        }
        _ => return Err(super::unknown_cmd(name)),
    })
}
