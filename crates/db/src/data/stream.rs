//! Streams and consumer groups (Redis 7.0 semantics, after `t_stream.c`).
//!
//! Entries live in an ordered map by ID. Redis keeps them in listpack "nodes" of at most
//! `stream-node-max-entries` entries / `stream-node-max-bytes` bytes, and approximate trimming
//! (`MAXLEN ~`, `MINID ~`) only drops whole nodes, so the node boundaries are kept too (first
//! ID → size), which makes `~` trim exactly what Redis would.
//!
//! Determinism: every write runs inside the state machine. An automatic ID (`XADD *`, `ms-*`)
//! takes its milliseconds from the entry's clock (the leader's, fixed when the entry was
//! proposed) and never goes below the stream's last ID; delivery and seen times of consumer
//! groups are the entry's clock too. The node limits come from the member that took the
//! command (the server prefixes XADD/XTRIM with them, see [`STREAM_CFG`]), so every member
//! cuts nodes at the same places. Reads (XPENDING's idle times, XINFO) use the local clock.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::{At, Db, NOT_INT, SYNTAX, parse_i64, upper};
use crate::resp::Reply;

/// Prefix the server puts before XADD and XTRIM: `[STREAM_CFG, node entries, node bytes,
/// command…]`, the member's stream-node-max-entries/bytes at the time it took the command.
pub const STREAM_CFG: &[u8] = b"\0citadel-stream-cfg";

/// stream-node-max-entries / stream-node-max-bytes.
#[derive(Clone, Copy, Debug)]
pub struct NodeCfg {
    pub entries: u64,
    pub bytes: u64,
}

impl Default for NodeCfg {
    fn default() -> Self {
        NodeCfg {
            entries: 100,
            bytes: 4096,
        }
    }
}

#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Id {
    pub ms: u64,
    pub seq: u64,
}

impl Id {
    pub const MIN: Id = Id { ms: 0, seq: 0 };
    pub const MAX: Id = Id {
        ms: u64::MAX,
        seq: u64::MAX,
    };

    pub fn new(ms: u64, seq: u64) -> Id {
        Id { ms, seq }
    }

    fn incr(self) -> Option<Id> {
        if self.seq == u64::MAX {
            if self.ms == u64::MAX {
                None
            } else {
                Some(Id::new(self.ms + 1, 0))
            }
        } else {
            Some(Id::new(self.ms, self.seq + 1))
        }
    }

    fn decr(self) -> Option<Id> {
        if self.seq == 0 {
            if self.ms == 0 {
                None
            } else {
                Some(Id::new(self.ms - 1, u64::MAX))
            }
        } else {
            Some(Id::new(self.ms, self.seq - 1))
        }
    }

    fn is_zero(&self) -> bool {
        *self == Id::MIN
    }

    pub fn text(&self) -> String {
        format!("{}-{}", self.ms, self.seq)
    }

    fn reply(&self) -> Reply {
        Reply::bulk(self.text())
    }
}

/// One listpack node as Redis would have cut it: entries ever put in it (live + deleted),
/// live ones, and an estimate of its size in bytes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Node {
    pub count: u64,
    pub live: u64,
    pub bytes: u64,
}

/// A pending entry: who has it, when it was last delivered (unix ms), how many times.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Nack {
    pub consumer: Vec<u8>,
    pub delivery_time: u64,
    pub delivery_count: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Consumer {
    pub seen_time: u64,
    pub pel: BTreeSet<Id>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CGroup {
    pub last_id: Id,
    /// The logical read counter (None: unknown, Redis's -1).
    pub entries_read: Option<u64>,
    pub pel: BTreeMap<Id, Nack>,
    pub consumers: BTreeMap<Vec<u8>, Consumer>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Stream {
    /// ID → field, value, field, value …
    pub entries: BTreeMap<Id, Vec<Vec<u8>>>,
    /// First ID of each node → the node.
    pub nodes: BTreeMap<Id, Node>,
    pub last_id: Id,
    pub first_id: Id,
    pub max_deleted: Id,
    pub entries_added: u64,
    pub groups: BTreeMap<Vec<u8>, CGroup>,
}

const INVALID_ID: &str = "ERR Invalid stream ID specified as stream command argument";

/// Redis's stream ID parser: `ms-seq`, `ms` (seq = `missing_seq`), `-`, `+` (not when
/// `strict`), and `ms-*` when `seq_star` (then the bool is false: sequence not given).
fn parse_id_full(
    b: &[u8],
    missing_seq: u64,
    strict: bool,
    seq_star: bool,
) -> Result<(Id, bool), Reply> {
    let bad = || Reply::err(INVALID_ID);
    if b.len() > 127 {
        return Err(bad());
    }
    if b == b"-" || b == b"+" {
        if strict {
            return Err(bad());
        }
        return Ok((if b == b"-" { Id::MIN } else { Id::MAX }, true));
    }
    let s = std::str::from_utf8(b).map_err(|_| bad())?;
    let num = |t: &str| -> Result<u64, Reply> {
        if t.is_empty() || t.starts_with('-') {
            return Err(bad());
        }
        t.parse::<u64>().map_err(|_| bad())
    };
    match s.split_once('-') {
        None => Ok((Id::new(num(s)?, missing_seq), true)),
        Some((ms, "*")) if seq_star => Ok((Id::new(num(ms)?, 0), false)),
        Some((ms, seq)) => Ok((Id::new(num(ms)?, num(seq)?), true)),
    }
}

fn parse_id(b: &[u8], missing_seq: u64) -> Result<Id, Reply> {
    parse_id_full(b, missing_seq, false, false).map(|r| r.0)
}

fn parse_strict(b: &[u8]) -> Result<Id, Reply> {
    parse_id_full(b, 0, true, false).map(|r| r.0)
}

/// An interval bound: `(id` excludes (strict parse), otherwise as [`parse_id`].
fn parse_bound(b: &[u8], missing_seq: u64) -> Result<(Id, bool), Reply> {
    if b.len() > 1 && b[0] == b'(' {
        Ok((parse_id_full(&b[1..], missing_seq, true, false)?.0, true))
    } else {
        Ok((parse_id(b, missing_seq)?, false))
    }
}

fn start_bound(b: &[u8]) -> Result<Id, Reply> {
    let (id, ex) = parse_bound(b, 0)?;
    if ex {
        id.incr()
            .ok_or_else(|| Reply::err("ERR invalid start ID for the interval"))
    } else {
        Ok(id)
    }
}

fn end_bound(b: &[u8]) -> Result<Id, Reply> {
    let (id, ex) = parse_bound(b, u64::MAX)?;
    if ex {
        id.decr()
            .ok_or_else(|| Reply::err("ERR invalid end ID for the interval"))
    } else {
        Ok(id)
    }
}

fn int(b: &[u8]) -> Result<i64, Reply> {
    parse_i64(b).ok_or_else(|| Reply::err(NOT_INT))
}

fn int_or(b: &[u8], msg: &str) -> Result<i64, Reply> {
    parse_i64(b).ok_or_else(|| Reply::err(format!("ERR {msg}")))
}

fn entry_reply(id: &Id, fields: &[Vec<u8>]) -> Reply {
    Reply::Array(vec![
        id.reply(),
        Reply::Array(fields.iter().map(Reply::bulk).collect()),
    ])
}

fn nogroup(key: &[u8], group: &[u8]) -> Reply {
    Reply::err(format!(
        "NOGROUP No such key '{}' or consumer group '{}'",
        String::from_utf8_lossy(key),
        String::from_utf8_lossy(group)
    ))
}

/// A listpack element's size, roughly (encoding header + backlen).
fn ele_bytes(b: &[u8]) -> u64 {
    b.len() as u64 + 2
}

impl Stream {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    fn last_valid(&self) -> Option<Id> {
        self.entries.keys().next_back().copied()
    }

    fn has_after(&self, id: Id) -> bool {
        self.last_valid().is_some_and(|l| l > id)
    }

    /// The node holding `id` (the one with the greatest first ID ≤ `id`).
    fn node_of(&self, id: Id) -> Option<Id> {
        self.nodes.range(..=id).next_back().map(|(k, _)| *k)
    }

    fn refresh_first(&mut self) {
        self.first_id = self.entries.keys().next().copied().unwrap_or(Id::MIN);
    }

    /// XADD's ID choice and append (`use_id`: the ID given and whether its sequence was).
    fn append(
        &mut self,
        fields: &[Vec<u8>],
        use_id: Option<(Id, bool)>,
        now: u64,
        cfg: NodeCfg,
    ) -> Result<Id, Reply> {
        let too_small = || {
            Reply::err(
                "ERR The ID specified in XADD is equal or smaller than the target stream top item",
            )
        };
        let id = match use_id {
            Some((id, true)) => id,
            Some((id, false)) => {
                if self.last_id.ms == id.ms {
                    if self.last_id.seq == u64::MAX {
                        return Err(too_small());
                    }
                    Id::new(id.ms, self.last_id.seq + 1)
                } else {
                    id
                }
            }
            None => {
                if now > self.last_id.ms {
                    Id::new(now, 0)
                } else {
                    self.last_id.incr().ok_or_else(too_small)?
                }
            }
        };
        if id <= self.last_id {
            return Err(too_small());
        }
        let size: u64 = fields.iter().map(|f| ele_bytes(f)).sum::<u64>() + 8;
        let max_bytes = if cfg.bytes == 0 || cfg.bytes > (1 << 30) {
            1 << 30
        } else {
            cfg.bytes
        };
        let tail = self
            .nodes
            .iter_mut()
            .next_back()
            .filter(|(_, n)| {
                n.bytes + size < max_bytes && (cfg.entries == 0 || n.count < cfg.entries)
            })
            .map(|(_, n)| n);
        match tail {
            Some(n) => {
                n.count += 1;
                n.live += 1;
                n.bytes += size;
            }
            None => {
                // A new node with its master entry (the fields as reference).
                let master: u64 = fields.iter().step_by(2).map(|f| ele_bytes(f)).sum::<u64>();
                self.nodes.insert(
                    id,
                    Node {
                        count: 1,
                        live: 1,
                        bytes: 7 + master + 8 + size,
                    },
                );
            }
        }
        self.entries.insert(id, fields.to_vec());
        self.entries_added += 1;
        self.last_id = id;
        if self.entries.len() == 1 {
            self.first_id = id;
        }
        Ok(id)
    }

    /// Removes one entry (XDEL): its node goes when it held the last live entry.
    fn delete(&mut self, id: Id) -> bool {
        if self.entries.remove(&id).is_none() {
            return false;
        }
        if let Some(k) = self.node_of(id)
            && let Some(n) = self.nodes.get_mut(&k)
        {
            n.live = n.live.saturating_sub(1);
            if n.live == 0 {
                self.nodes.remove(&k);
            }
        }
        true
    }

    /// Redis's `streamTrim`.
    fn trim(&mut self, t: &Trim) -> u64 {
        use std::ops::Bound::{Excluded, Unbounded};
        let mut deleted = 0u64;
        // Always the first node: each round removes it or stops (no copy of every node's
        // key on each XADD … MAXLEN of a long stream).
        while let Some(&first) = self.nodes.keys().next() {
            let master = &first;
            let next = self
                .nodes
                .range((Excluded(first), Unbounded))
                .next()
                .map(|(k, _)| *k);
            if let Strategy::MaxLen(m) = t.strategy
                && self.len() as u64 <= m
            {
                break;
            }
            let live = self.nodes.get(master).map(|n| n.live).unwrap_or(0);
            if t.limit > 0 && deleted + live > t.limit {
                break;
            }
            let in_node: Vec<Id> = match next {
                Some(n) => self.entries.range(*master..n).map(|(k, _)| *k).collect(),
                None => self.entries.range(*master..).map(|(k, _)| *k).collect(),
            };
            let remove_node = match t.strategy {
                Strategy::MaxLen(m) => self.len() as u64 - live >= m,
                Strategy::MinId(min) => in_node.last().is_none_or(|l| *l < min),
            };
            if remove_node {
                for id in &in_node {
                    self.entries.remove(id);
                }
                self.nodes.remove(master);
                deleted += live;
                continue;
            }
            if t.approx {
                break;
            }
            for id in in_node {
                let stop = match t.strategy {
                    Strategy::MaxLen(m) => self.len() as u64 <= m,
                    Strategy::MinId(min) => id >= min,
                };
                if stop {
                    break;
                }
                self.entries.remove(&id);
                if let Some(n) = self.nodes.get_mut(master) {
                    n.live -= 1;
                }
                deleted += 1;
            }
            break;
        }
        self.refresh_first();
        deleted
    }

    fn range_has_tombstones(&self, start: Option<Id>) -> bool {
        if self.entries.is_empty() || self.max_deleted.is_zero() {
            return false;
        }
        if self.first_id > self.max_deleted {
            return false;
        }
        start.unwrap_or(Id::MIN) <= self.max_deleted
    }

    /// Redis's `streamEstimateDistanceFromFirstEverEntry` (None: unknown).
    fn estimate_distance(&self, id: Id) -> Option<u64> {
        if self.entries_added == 0 {
            return Some(0);
        }
        if self.entries.is_empty() && id <= self.last_id {
            return Some(self.entries_added);
        }
        if id == self.last_id {
            return Some(self.entries_added);
        }
        if id > self.last_id {
            return None;
        }
        if self.max_deleted.is_zero() || self.max_deleted < self.first_id {
            if id < self.first_id {
                return Some(self.entries_added - self.len() as u64);
            }
            if id == self.first_id {
                return Some(self.entries_added - self.len() as u64 + 1);
            }
        }
        None
    }

    fn lag(&self, g: &CGroup) -> Option<u64> {
        if self.entries_added == 0 {
            return Some(0);
        }
        if let Some(r) = g.entries_read
            && !self.range_has_tombstones(Some(g.last_id))
        {
            return Some(self.entries_added.saturating_sub(r));
        }
        self.estimate_distance(g.last_id)
            .map(|r| self.entries_added.saturating_sub(r))
    }

    /// Entries in `[start, end]`, at most `count` (0 = all), forwards or backwards.
    fn range(&self, start: Id, end: Id, count: usize, rev: bool) -> Vec<Reply> {
        if start > end {
            return Vec::new();
        }
        let it = self.entries.range(start..=end);
        let take = if count == 0 { usize::MAX } else { count };
        if rev {
            it.rev()
                .take(take)
                .map(|(k, v)| entry_reply(k, v))
                .collect()
        } else {
            it.take(take).map(|(k, v)| entry_reply(k, v)).collect()
        }
    }

    fn create_group(&mut self, name: &[u8], id: Id, entries_read: Option<u64>) -> bool {
        if self.groups.contains_key(name) {
            return false;
        }
        self.groups.insert(
            name.to_vec(),
            CGroup {
                last_id: id,
                entries_read,
                ..Default::default()
            },
        );
        true
    }

    /// Delivers new entries after `start` (inclusive) to `consumer` of `group` (XREADGROUP
    /// with `>`), as `streamReplyWithRange` with a group.
    fn deliver(
        &mut self,
        group: &[u8],
        consumer: &[u8],
        start: Id,
        count: usize,
        noack: bool,
        now: u64,
    ) -> Vec<Reply> {
        let take = if count == 0 { usize::MAX } else { count };
        let ids: Vec<Id> = self
            .entries
            .range(start..)
            .take(take)
            .map(|(k, _)| *k)
            .collect();
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let tomb = self.range_has_tombstones(Some(id));
            let est = self.estimate_distance(id);
            let added = self.entries_added;
            let Some(g) = self.groups.get_mut(group) else {
                break;
            };
            if id > g.last_id {
                match g.entries_read {
                    Some(r) if !tomb => g.entries_read = Some(r + 1),
                    _ if added > 0 => g.entries_read = est,
                    _ => {}
                }
                g.last_id = id;
            }
            out.push(entry_reply(&id, &self.entries[&id]));
            if !noack {
                if let Some(old) = g.pel.get(&id).map(|n| n.consumer.clone())
                    && let Some(c) = g.consumers.get_mut(&old)
                {
                    c.pel.remove(&id);
                }
                g.pel.insert(
                    id,
                    Nack {
                        consumer: consumer.to_vec(),
                        delivery_time: now,
                        delivery_count: 1,
                    },
                );
                g.consumers
                    .entry(consumer.to_vec())
                    .or_default()
                    .pel
                    .insert(id);
            }
        }
        out
    }

    /// A consumer's own history from `start` (XREADGROUP with an ID).
    fn history(
        &mut self,
        group: &[u8],
        consumer: &[u8],
        start: Id,
        count: usize,
        now: u64,
    ) -> Vec<Reply> {
        let Some(g) = self.groups.get_mut(group) else {
            return Vec::new();
        };
        let take = if count == 0 { usize::MAX } else { count };
        let ids: Vec<Id> = g
            .consumers
            .get(consumer)
            .map(|c| c.pel.range(start..).take(take).copied().collect())
            .unwrap_or_default();
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            match self.entries.get(&id) {
                Some(f) => {
                    out.push(entry_reply(&id, f));
                    if let Some(n) = g.pel.get_mut(&id) {
                        n.delivery_time = now;
                        n.delivery_count += 1;
                    }
                }
                None => out.push(Reply::Array(vec![id.reply(), Reply::NilArray])),
            }
        }
        out
    }
}

impl CGroup {
    /// Looks up (refreshing its seen time) or creates a consumer; true when created.
    fn touch(&mut self, name: &[u8], now: u64) -> bool {
        match self.consumers.get_mut(name) {
            Some(c) => {
                c.seen_time = now;
                false
            }
            None => {
                self.consumers.insert(
                    name.to_vec(),
                    Consumer {
                        seen_time: now,
                        pel: BTreeSet::new(),
                    },
                );
                true
            }
        }
    }

    /// Drops a pending entry from the group and its consumer.
    fn drop_nack(&mut self, id: &Id) -> bool {
        match self.pel.remove(id) {
            Some(n) => {
                if let Some(c) = self.consumers.get_mut(&n.consumer) {
                    c.pel.remove(id);
                }
                true
            }
            None => false,
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Strategy {
    MaxLen(u64),
    MinId(Id),
}

#[derive(Clone, Copy, Debug)]
struct Trim {
    strategy: Strategy,
    approx: bool,
    limit: u64,
}

/// XADD/XTRIM options: the trim, NOMKSTREAM, and for XADD the ID and where the fields start.
struct AddArgs {
    trim: Option<Trim>,
    nomkstream: bool,
    id: Option<(Id, bool)>,
    idpos: usize,
}

fn parse_add_trim(argv: &[Vec<u8>], xadd: bool, cfg: NodeCfg) -> Result<AddArgs, Reply> {
    let mut strategy = None;
    let mut approx = false;
    let mut limit: Option<i64> = None;
    let mut nomkstream = false;
    let mut id = None;
    let mut i = 2;
    while i < argv.len() {
        let more = argv.len() - 1 - i;
        let opt = upper(&argv[i]);
        if xadd && argv[i] == b"*" {
            break;
        } else if (opt == "MAXLEN" || opt == "MINID") && more > 0 {
            if strategy.is_some() {
                return Err(Reply::err(
                    "ERR syntax error, MAXLEN and MINID options at the same time are not compatible",
                ));
            }
            approx = false;
            let next = &argv[i + 1];
            if more >= 2 && next.as_slice() == b"~" {
                approx = true;
                i += 1;
            } else if more >= 2 && next.as_slice() == b"=" {
                i += 1;
            }
            if opt == "MAXLEN" {
                let m = int(&argv[i + 1])?;
                if m < 0 {
                    return Err(Reply::err("ERR The MAXLEN argument must be >= 0."));
                }
                strategy = Some(Strategy::MaxLen(m as u64));
            } else {
                strategy = Some(Strategy::MinId(parse_strict(&argv[i + 1])?));
            }
            i += 1;
        } else if opt == "LIMIT" && more > 0 {
            let l = int(&argv[i + 1])?;
            if l < 0 {
                return Err(Reply::err("ERR The LIMIT argument must be >= 0."));
            }
            limit = Some(l);
            i += 1;
        } else if xadd && opt == "NOMKSTREAM" {
            nomkstream = true;
        } else if xadd {
            id = Some(parse_id_full(&argv[i], 0, true, true)?);
            break;
        } else {
            return Err(Reply::err(SYNTAX));
        }
        i += 1;
    }
    if limit.is_some_and(|l| l != 0) && strategy.is_none() {
        return Err(Reply::err(
            "ERR syntax error, LIMIT cannot be used without specifying a trimming strategy",
        ));
    }
    if !xadd && strategy.is_none() {
        return Err(Reply::err(
            "ERR syntax error, XTRIM must be called with a trimming strategy",
        ));
    }
    let limit = match limit {
        Some(_) if !approx => {
            return Err(Reply::err(
                "ERR syntax error, LIMIT cannot be used without the special ~ option",
            ));
        }
        Some(l) => l as u64,
        None if approx => {
            let l = 100i64.saturating_mul(cfg.entries as i64);
            if l <= 0 {
                10_000
            } else {
                l.min(1_000_000) as u64
            }
        }
        None => 0,
    };
    Ok(AddArgs {
        trim: strategy.map(|strategy| Trim {
            strategy,
            approx,
            limit,
        }),
        nomkstream,
        id,
        idpos: i,
    })
}

/// The parsed options of XREAD/XREADGROUP.
struct ReadArgs {
    block: Option<i64>,
    count: usize,
    /// Index of the first key.
    streams: usize,
    n: usize,
    group: Option<(Vec<u8>, Vec<u8>)>,
    noack: bool,
}

fn parse_read(argv: &[Vec<u8>], group_cmd: bool) -> Result<ReadArgs, Reply> {
    let mut r = ReadArgs {
        block: None,
        count: 0,
        streams: 0,
        n: 0,
        group: None,
        noack: false,
    };
    let mut i = 1;
    while i < argv.len() {
        let more = argv.len() - i - 1;
        let o = upper(&argv[i]);
        if o == "BLOCK" && more > 0 {
            i += 1;
            r.block = Some(block_ms(&argv[i])?);
        } else if o == "COUNT" && more > 0 {
            i += 1;
            r.count = int(&argv[i])?.max(0) as usize;
        } else if o == "STREAMS" && more > 0 {
            r.streams = i + 1;
            let n = argv.len() - r.streams;
            if !n.is_multiple_of(2) {
                return Err(Reply::err(
                    "ERR Unbalanced XREAD list of streams: for each stream key an ID or '$' must be specified.",
                ));
            }
            r.n = n / 2;
            break;
        } else if o == "GROUP" && more >= 2 {
            if !group_cmd {
                return Err(Reply::err(
                    "ERR The GROUP option is only supported by XREADGROUP. You called XREAD instead.",
                ));
            }
            r.group = Some((argv[i + 1].clone(), argv[i + 2].clone()));
            i += 2;
        } else if o == "NOACK" {
            if !group_cmd {
                return Err(Reply::err(
                    "ERR The NOACK option is only supported by XREADGROUP. You called XREAD instead.",
                ));
            }
            r.noack = true;
        } else {
            return Err(Reply::err(SYNTAX));
        }
        i += 1;
    }
    if r.streams == 0 {
        return Err(Reply::err(SYNTAX));
    }
    if group_cmd && r.group.is_none() {
        return Err(Reply::err("ERR Missing GROUP option for XREADGROUP"));
    }
    Ok(r)
}

/// A BLOCK argument (milliseconds, as Redis parses a timeout in ms).
fn block_ms(b: &[u8]) -> Result<i64, Reply> {
    let t =
        parse_i64(b).ok_or_else(|| Reply::err("ERR timeout is not an integer or out of range"))?;
    if t < 0 {
        return Err(Reply::err("ERR timeout is negative"));
    }
    Ok(t)
}

/// Whether an XREAD/XREADGROUP asks to block (a BLOCK option before STREAMS).
pub fn wants_block(argv: &[Vec<u8>]) -> bool {
    let mut i = 1;
    while i < argv.len() {
        let o = upper(&argv[i]);
        match o.as_str() {
            "STREAMS" => return false,
            "BLOCK" if i + 1 < argv.len() => return true,
            "COUNT" => i += 1,
            "GROUP" => i += 2,
            _ => {}
        }
        i += 1;
    }
    false
}

/// The BLOCK timeout in seconds (0 = forever).
pub fn block_timeout(argv: &[Vec<u8>]) -> Result<f64, Reply> {
    let mut i = 1;
    while i + 1 < argv.len() {
        let o = upper(&argv[i]);
        match o.as_str() {
            "BLOCK" => return Ok(block_ms(&argv[i + 1])? as f64 / 1000.0),
            "STREAMS" => break,
            "COUNT" => i += 1,
            "GROUP" => i += 2,
            _ => {}
        }
        i += 1;
    }
    Ok(0.0)
}

/// The keys of XREAD/XREADGROUP (the first half after STREAMS).
pub fn read_keys(argv: &[Vec<u8>]) -> &[Vec<u8>] {
    let Some(s) = argv.iter().position(|a| a.eq_ignore_ascii_case(b"STREAMS")) else {
        return &[];
    };
    let rest = &argv[s + 1..];
    &rest[..rest.len() / 2]
}

pub(super) fn read(db: &Db, name: &str, argv: &[Vec<u8>], now: u64) -> Option<Reply> {
    Some(super::flat(run_read(db, name, argv, now)))
}

fn run_read(db: &Db, name: &str, argv: &[Vec<u8>], now: u64) -> Result<Reply, Reply> {
    match name {
        "XLEN" => Ok(Reply::Int(
            db.stream(&argv[1], now)?.map(|s| s.len()).unwrap_or(0) as i64,
        )),
        "XRANGE" | "XREVRANGE" => xrange(db, argv, name == "XREVRANGE", now),
        "XREAD" => xread(db, argv, now, None),
        "XPENDING" => xpending(db, argv, now),
        "XINFO" => xinfo(db, argv, now),
        _ => Err(super::unknown_cmd(name)),
    }
}

fn xrange(db: &Db, argv: &[Vec<u8>], rev: bool, now: u64) -> Result<Reply, Reply> {
    let (a, b) = if rev {
        (&argv[3], &argv[2])
    } else {
        (&argv[2], &argv[3])
    };
    let start = start_bound(a)?;
    let end = end_bound(b)?;
    let mut count: i64 = -1;
    let mut j = 4;
    while j < argv.len() {
        if argv[j].eq_ignore_ascii_case(b"COUNT") && j + 1 < argv.len() {
            count = int(&argv[j + 1])?.max(0);
            j += 2;
        } else {
            return Err(Reply::err(SYNTAX));
        }
    }
    let Some(s) = db.stream(&argv[1], now)? else {
        return Ok(Reply::Array(Vec::new()));
    };
    if count == 0 {
        return Ok(Reply::NilArray);
    }
    Ok(Reply::Array(s.range(
        start,
        end,
        count.max(0) as usize,
        rev,
    )))
}

/// Replaces every `$` of an XREAD with the stream's last ID (0-0 when absent), as Redis
/// resolves it when the command arrives; errors as XREAD would answer them.
pub fn resolve_dollar(db: &Db, argv: &[Vec<u8>], now: u64) -> Result<Vec<Vec<u8>>, Reply> {
    let a = parse_read(argv, false)?;
    let mut out = argv.to_vec();
    for i in 0..a.n {
        let k = &argv[a.streams + i];
        let s = db.stream(k, now)?;
        let at = a.streams + a.n + i;
        if argv[at] == b"$" {
            out[at] = s.map(|s| s.last_id).unwrap_or(Id::MIN).text().into_bytes();
        }
    }
    Ok(out)
}

/// XREAD. `waiting`: the default COUNT of a blocked client (Redis serves a blocked XREAD
/// at most 1000 entries when no COUNT was given).
pub fn xread(db: &Db, argv: &[Vec<u8>], now: u64, waiting: Option<usize>) -> Result<Reply, Reply> {
    let a = parse_read(argv, false)?;
    let mut ids = Vec::with_capacity(a.n);
    for i in 0..a.n {
        let k = &argv[a.streams + i];
        let s = db.stream(k, now)?;
        let arg = &argv[a.streams + a.n + i];
        if arg.as_slice() == b"$" {
            ids.push(s.map(|s| s.last_id).unwrap_or(Id::MIN));
        } else if arg.as_slice() == b">" {
            return Err(Reply::err(
                "ERR The > ID can be specified only when calling XREADGROUP using the GROUP <group> <consumer> option.",
            ));
        } else {
            ids.push(parse_strict(arg)?);
        }
    }
    let count = match (a.count, waiting) {
        (0, Some(d)) => d,
        (c, _) => c,
    };
    let mut out = Vec::new();
    for (i, gt) in ids.into_iter().enumerate() {
        let k = &argv[a.streams + i];
        let Some(s) = db.stream(k, now)? else {
            continue;
        };
        if !s.has_after(gt) {
            continue;
        }
        let Some(start) = gt.incr() else { continue };
        out.push((
            Reply::bulk(k),
            Reply::Array(s.range(start, Id::MAX, count, false)),
        ));
    }
    Ok(if out.is_empty() {
        Reply::NilArray
    } else {
        Reply::Streams(out)
    })
}

/// Whether a waiting XREADGROUP (`argv` its command) could be served now, or should hear
/// that its key or group went: a blocked client proposes its attempt only then.
pub fn group_ready(db: &Db, argv: &[Vec<u8>], now: u64) -> bool {
    let Ok(a) = parse_read(argv, true) else {
        return true;
    };
    let Some((g, _)) = &a.group else { return true };
    (0..a.n).any(|i| {
        if argv[a.streams + a.n + i] != b">" {
            return true;
        }
        match db.stream(&argv[a.streams + i], now) {
            Ok(Some(s)) => match s.groups.get(g) {
                Some(grp) => s.has_after(grp.last_id),
                None => true,
            },
            _ => true,
        }
    })
}

/// Whether an XREADGROUP would block on this state: every ID is `>`, every key a stream
/// with the group, and nothing new for it. Its first attempt then counts as a blocked
/// client's (a key or group gone by the time the log orders it is reported as gone, as
/// Redis reports it to a client blocked before the deletion).
pub fn group_would_block(db: &Db, argv: &[Vec<u8>], now: u64) -> bool {
    let Ok(a) = parse_read(argv, true) else {
        return false;
    };
    let Some((g, _)) = &a.group else { return false };
    (0..a.n).all(|i| {
        argv[a.streams + a.n + i] == b">"
            && match db.stream(&argv[a.streams + i], now) {
                Ok(Some(s)) => s.groups.get(g).is_some_and(|grp| !s.has_after(grp.last_id)),
                _ => false,
            }
    })
}

/// XREADGROUP. `woken`: a blocked client's later attempt, which answers that its key or
/// group went (as Redis unblocks such clients) and takes nothing otherwise.
pub fn xreadgroup(db: &mut Db, argv: &[Vec<u8>], at: At, woken: bool) -> Result<Reply, Reply> {
    let a = parse_read(argv, true)?;
    let (group, consumer) = a.group.clone().unwrap_or_default();
    let now = at.now;
    if woken {
        for i in 0..a.n {
            let k = &argv[a.streams + i];
            match db.stream(k, now) {
                Ok(Some(s)) => {
                    if !s.groups.contains_key(&group) {
                        return Err(Reply::err(
                            "NOGROUP the consumer group this client was blocked on no longer exists",
                        ));
                    }
                }
                _ => {
                    return Err(Reply::err("UNBLOCKED the stream key no longer exists"));
                }
            }
        }
    }
    // None = ">".
    let mut ids: Vec<Option<Id>> = Vec::with_capacity(a.n);
    for i in 0..a.n {
        let k = &argv[a.streams + i];
        let s = db.stream(k, now)?;
        if !s.is_some_and(|s| s.groups.contains_key(&group)) {
            return Err(Reply::err(format!(
                "NOGROUP No such key '{}' or consumer group '{}' in XREADGROUP with GROUP option",
                String::from_utf8_lossy(k),
                String::from_utf8_lossy(&group)
            )));
        }
        let arg = &argv[a.streams + a.n + i];
        if arg.as_slice() == b"$" {
            return Err(Reply::err(
                "ERR The $ ID is meaningless in the context of XREADGROUP: you want to read the history of this consumer by specifying a proper ID, or use the > ID to get new messages. The $ ID would just return an empty result set.",
            ));
        } else if arg.as_slice() == b">" {
            ids.push(None);
        } else {
            ids.push(Some(parse_strict(arg)?));
        }
    }
    let count = if woken && a.count == 0 { 1000 } else { a.count };
    let mut out = Vec::new();
    for (i, id) in ids.into_iter().enumerate() {
        let k = &argv[a.streams + i];
        let Ok(Some(s)) = db.stream_mut(k) else {
            continue;
        };
        let Some(g) = s.groups.get(&group) else {
            continue;
        };
        let (start, history) = match id {
            Some(id) => (id, true),
            None => {
                if !s.has_after(g.last_id) {
                    continue;
                }
                (g.last_id, false)
            }
        };
        let Some(start) = start.incr() else { continue };
        if let Some(g) = s.groups.get_mut(&group) {
            g.touch(&consumer, now);
        }
        let items = if history {
            s.history(&group, &consumer, start, count, now)
        } else {
            s.deliver(&group, &consumer, start, count, a.noack, now)
        };
        db.changed(k, at.index);
        out.push((Reply::bulk(k), Reply::Array(items)));
    }
    Ok(if out.is_empty() {
        Reply::NilArray
    } else {
        Reply::Streams(out)
    })
}

fn xpending(db: &Db, argv: &[Vec<u8>], now: u64) -> Result<Reply, Reply> {
    let argc = argv.len();
    if argc != 3 && !(6..=9).contains(&argc) {
        return Err(Reply::err(SYNTAX));
    }
    let mut range = None;
    let mut consumer = None;
    let mut minidle = 0i64;
    if argc >= 6 {
        let mut si = 3;
        if argv[3].eq_ignore_ascii_case(b"IDLE") {
            minidle = int(&argv[4])?;
            if argc < 8 {
                return Err(Reply::err(SYNTAX));
            }
            si += 2;
        }
        let count = int(&argv[si + 2])?.max(0) as usize;
        let start = start_bound(&argv[si])?;
        let end = end_bound(&argv[si + 1])?;
        if si + 3 < argc {
            consumer = Some(&argv[si + 3]);
        }
        range = Some((start, end, count));
    }
    let s = db.stream(&argv[1], now)?;
    let Some(g) = s.and_then(|s| s.groups.get(&argv[2])) else {
        return Err(nogroup(&argv[1], &argv[2]));
    };
    let Some((start, end, count)) = range else {
        if g.pel.is_empty() {
            return Ok(Reply::Array(vec![
                Reply::Int(0),
                Reply::Nil,
                Reply::Nil,
                Reply::NilArray,
            ]));
        }
        let first = g.pel.keys().next().copied().unwrap_or_default();
        let last = g.pel.keys().next_back().copied().unwrap_or_default();
        let consumers = g
            .consumers
            .iter()
            .filter(|(_, c)| !c.pel.is_empty())
            .map(|(n, c)| Reply::Array(vec![Reply::bulk(n), Reply::bulk(c.pel.len().to_string())]))
            .collect();
        return Ok(Reply::Array(vec![
            Reply::Int(g.pel.len() as i64),
            first.reply(),
            last.reply(),
            Reply::Array(consumers),
        ]));
    };
    let ids: Vec<Id> = match consumer {
        Some(c) => match g.consumers.get(c.as_slice()) {
            None => return Ok(Reply::Array(Vec::new())),
            Some(c) => {
                if start > end {
                    Vec::new()
                } else {
                    c.pel.range(start..=end).copied().collect()
                }
            }
        },
        None => {
            if start > end {
                Vec::new()
            } else {
                g.pel.range(start..=end).map(|(k, _)| *k).collect()
            }
        }
    };
    let mut out = Vec::new();
    for id in ids {
        if out.len() >= count {
            break;
        }
        let Some(n) = g.pel.get(&id) else { continue };
        let idle = now as i64 - n.delivery_time as i64;
        if minidle != 0 && idle < minidle {
            continue;
        }
        out.push(Reply::Array(vec![
            id.reply(),
            Reply::bulk(&n.consumer),
            Reply::Int(idle.max(0)),
            Reply::Int(n.delivery_count as i64),
        ]));
    }
    Ok(Reply::Array(out))
}

fn help(lines: &[&str], cmd: &str) -> Reply {
    let mut v = vec![Reply::Simple(format!(
        "{cmd} <subcommand> [<arg> [value] [opt] ...]. Subcommands are:"
    ))];
    v.extend(lines.iter().map(|l| Reply::Simple(l.to_string())));
    v.push(Reply::Simple("HELP".into()));
    v.push(Reply::Simple("    Print this help.".into()));
    Reply::Array(v)
}

fn sub_syntax(argv: &[Vec<u8>], cmd: &str) -> Reply {
    Reply::err(format!(
        "ERR unknown subcommand or wrong number of arguments for '{}'. Try {cmd} HELP.",
        String::from_utf8_lossy(&argv[1])
    ))
}

fn sub_arity(argv: &[Vec<u8>], cmd: &str, sub: &str) -> Reply {
    let _ = argv;
    Reply::err(format!(
        "ERR wrong number of arguments for '{}|{}' command",
        cmd.to_ascii_lowercase(),
        sub.to_ascii_lowercase()
    ))
}

fn xinfo(db: &Db, argv: &[Vec<u8>], now: u64) -> Result<Reply, Reply> {
    let sub = upper(&argv[1]);
    let arity_ok = match sub.as_str() {
        "HELP" => argv.len() == 2,
        "CONSUMERS" => argv.len() == 4,
        "GROUPS" => argv.len() == 3,
        "STREAM" => argv.len() >= 3,
        _ => return Err(sub_syntax(argv, "XINFO")),
    };
    if !arity_ok {
        return Err(sub_arity(argv, "XINFO", &sub));
    }
    if sub == "HELP" {
        return Ok(help(
            &[
                "CONSUMERS <key> <groupname>",
                "    Show consumers of <groupname>.",
                "GROUPS <key>",
                "    Show the stream consumer groups.",
                "STREAM <key> [FULL [COUNT <count>]",
                "    Show information about the stream.",
            ],
            "XINFO",
        ));
    }
    let key = &argv[2];
    let Some(s) = db.stream(key, now)? else {
        return Err(Reply::err(super::NO_KEY));
    };
    match sub.as_str() {
        "CONSUMERS" => {
            let Some(g) = s.groups.get(&argv[3]) else {
                return Err(Reply::err(format!(
                    "NOGROUP No such consumer group '{}' for key name '{}'",
                    String::from_utf8_lossy(&argv[3]),
                    String::from_utf8_lossy(key)
                )));
            };
            Ok(Reply::Array(
                g.consumers
                    .iter()
                    .map(|(n, c)| {
                        Reply::Map(vec![
                            (Reply::bulk("name"), Reply::bulk(n)),
                            (Reply::bulk("pending"), Reply::Int(c.pel.len() as i64)),
                            (
                                Reply::bulk("idle"),
                                Reply::Int((now as i64 - c.seen_time as i64).max(0)),
                            ),
                        ])
                    })
                    .collect(),
            ))
        }
        "GROUPS" => Ok(Reply::Array(
            s.groups
                .iter()
                .map(|(n, g)| {
                    Reply::Map(vec![
                        (Reply::bulk("name"), Reply::bulk(n)),
                        (
                            Reply::bulk("consumers"),
                            Reply::Int(g.consumers.len() as i64),
                        ),
                        (Reply::bulk("pending"), Reply::Int(g.pel.len() as i64)),
                        (Reply::bulk("last-delivered-id"), g.last_id.reply()),
                        (Reply::bulk("entries-read"), opt_int(g.entries_read)),
                        (Reply::bulk("lag"), opt_int(s.lag(g))),
                    ])
                })
                .collect(),
        )),
        _ => xinfo_stream(s, argv),
    }
}

fn opt_int(v: Option<u64>) -> Reply {
    v.map(|v| Reply::Int(v as i64)).unwrap_or(Reply::Nil)
}

fn xinfo_stream(s: &Stream, argv: &[Vec<u8>]) -> Result<Reply, Reply> {
    let opts = &argv[3..];
    let mut count: i64 = 10;
    let full = !opts.is_empty();
    if full {
        if (opts.len() != 1 && opts.len() != 3) || !opts[0].eq_ignore_ascii_case(b"FULL") {
            return Err(sub_syntax(argv, "XINFO"));
        }
        if opts.len() == 3 {
            if !opts[1].eq_ignore_ascii_case(b"COUNT") {
                return Err(sub_syntax(argv, "XINFO"));
            }
            count = int(&opts[2])?;
            if count < 0 {
                count = 10;
            }
        }
    }
    let count = count as usize;
    let take = if count == 0 { usize::MAX } else { count };
    let mut m = vec![
        (Reply::bulk("length"), Reply::Int(s.len() as i64)),
        (
            Reply::bulk("radix-tree-keys"),
            Reply::Int(s.nodes.len() as i64),
        ),
        (
            Reply::bulk("radix-tree-nodes"),
            Reply::Int((s.nodes.len() + 1) as i64),
        ),
        (Reply::bulk("last-generated-id"), s.last_id.reply()),
        (Reply::bulk("max-deleted-entry-id"), s.max_deleted.reply()),
        (
            Reply::bulk("entries-added"),
            Reply::Int(s.entries_added as i64),
        ),
        (Reply::bulk("recorded-first-entry-id"), s.first_id.reply()),
    ];
    if !full {
        m.push((Reply::bulk("groups"), Reply::Int(s.groups.len() as i64)));
        let first = s.entries.iter().next();
        let last = s.entries.iter().next_back();
        m.push((
            Reply::bulk("first-entry"),
            first.map(|(k, v)| entry_reply(k, v)).unwrap_or(Reply::Nil),
        ));
        m.push((
            Reply::bulk("last-entry"),
            last.map(|(k, v)| entry_reply(k, v)).unwrap_or(Reply::Nil),
        ));
        return Ok(Reply::Map(m));
    }
    m.push((
        Reply::bulk("entries"),
        Reply::Array(s.range(Id::MIN, Id::MAX, count, false)),
    ));
    let groups = s
        .groups
        .iter()
        .map(|(n, g)| {
            let pending = g
                .pel
                .iter()
                .take(take)
                .map(|(id, nack)| {
                    Reply::Array(vec![
                        id.reply(),
                        Reply::bulk(&nack.consumer),
                        Reply::Int(nack.delivery_time as i64),
                        Reply::Int(nack.delivery_count as i64),
                    ])
                })
                .collect();
            let consumers = g
                .consumers
                .iter()
                .map(|(cn, c)| {
                    let pel = c
                        .pel
                        .iter()
                        .take(take)
                        .map(|id| {
                            let nack = g.pel.get(id);
                            Reply::Array(vec![
                                id.reply(),
                                Reply::Int(nack.map(|n| n.delivery_time).unwrap_or(0) as i64),
                                Reply::Int(nack.map(|n| n.delivery_count).unwrap_or(0) as i64),
                            ])
                        })
                        .collect();
                    Reply::Map(vec![
                        (Reply::bulk("name"), Reply::bulk(cn)),
                        (Reply::bulk("seen-time"), Reply::Int(c.seen_time as i64)),
                        (Reply::bulk("pel-count"), Reply::Int(c.pel.len() as i64)),
                        (Reply::bulk("pending"), Reply::Array(pel)),
                    ])
                })
                .collect();
            Reply::Map(vec![
                (Reply::bulk("name"), Reply::bulk(n)),
                (Reply::bulk("last-delivered-id"), g.last_id.reply()),
                (Reply::bulk("entries-read"), opt_int(g.entries_read)),
                (Reply::bulk("lag"), opt_int(s.lag(g))),
                (Reply::bulk("pel-count"), Reply::Int(g.pel.len() as i64)),
                (Reply::bulk("pending"), Reply::Array(pending)),
                (Reply::bulk("consumers"), Reply::Array(consumers)),
            ])
        })
        .collect();
    m.push((Reply::bulk("groups"), Reply::Array(groups)));
    Ok(Reply::Map(m))
}

pub(super) fn write(
    db: &mut Db,
    name: &str,
    argv: &[Vec<u8>],
    at: At,
    cfg: NodeCfg,
) -> Option<Reply> {
    Some(super::flat(run_write(db, name, argv, at, cfg)))
}

fn run_write(
    db: &mut Db,
    name: &str,
    argv: &[Vec<u8>],
    at: At,
    cfg: NodeCfg,
) -> Result<Reply, Reply> {
    let key = &argv[1];
    match name {
        "XADD" => xadd(db, argv, at, cfg),
        "XTRIM" => {
            let a = parse_add_trim(argv, false, cfg)?;
            let Some(s) = db.stream_mut(key)? else {
                return Ok(Reply::Int(0));
            };
            let n = a.trim.map(|t| s.trim(&t)).unwrap_or(0);
            if n > 0 {
                db.changed(key, at.index);
            }
            Ok(Reply::Int(n as i64))
        }
        "XDEL" => {
            let Some(_) = db.stream_mut(key)? else {
                return Ok(Reply::Int(0));
            };
            let ids = argv[2..]
                .iter()
                .map(|a| parse_strict(a))
                .collect::<Result<Vec<_>, _>>()?;
            let Some(s) = db.stream_mut(key)? else {
                return Ok(Reply::Int(0));
            };
            let mut deleted = 0;
            let mut first = false;
            for id in ids {
                if s.delete(id) {
                    first |= id == s.first_id;
                    if id > s.max_deleted {
                        s.max_deleted = id;
                    }
                    deleted += 1;
                }
            }
            if deleted > 0 {
                if s.entries.is_empty() || first {
                    s.refresh_first();
                }
                db.changed(key, at.index);
            }
            Ok(Reply::Int(deleted))
        }
        "XREADGROUP" => xreadgroup(db, argv, at, false),
        "XGROUP" => xgroup(db, argv, at),
        "XACK" => {
            let Some(s) = db.stream_mut(key)? else {
                return Ok(Reply::Int(0));
            };
            if !s.groups.contains_key(&argv[2]) {
                return Ok(Reply::Int(0));
            }
            let ids = argv[3..]
                .iter()
                .map(|a| parse_strict(a))
                .collect::<Result<Vec<_>, _>>()?;
            let g = s.groups.get_mut(&argv[2]).expect("checked");
            let n = ids.iter().filter(|id| g.drop_nack(id)).count();
            if n > 0 {
                db.changed(key, at.index);
            }
            Ok(Reply::Int(n as i64))
        }
        "XCLAIM" => xclaim(db, argv, at),
        "XAUTOCLAIM" => xautoclaim(db, argv, at),
        "XSETID" => xsetid(db, argv, at),
        _ => Err(super::unknown_cmd(name)),
    }
}

fn xadd(db: &mut Db, argv: &[Vec<u8>], at: At, cfg: NodeCfg) -> Result<Reply, Reply> {
    let key = &argv[1];
    let a = parse_add_trim(argv, true, cfg)?;
    let fpos = a.idpos + 1;
    if argv.len() < fpos + 2 || !(argv.len() - fpos).is_multiple_of(2) {
        return Err(super::arity_err("XADD"));
    }
    if let Some((id, true)) = a.id
        && id.is_zero()
    {
        return Err(Reply::err(
            "ERR The ID specified in XADD must be greater than 0-0",
        ));
    }
    if db.stream(key, at.now)?.is_none() && a.nomkstream {
        return Ok(Reply::Nil);
    }
    let s = db.stream_create(key, at.index)?;
    if s.last_id == Id::MAX {
        return Err(Reply::err(
            "ERR The stream has exhausted the last possible ID, unable to add more items",
        ));
    }
    let id = match s.append(&argv[fpos..], a.id, at.now, cfg) {
        Ok(id) => id,
        Err(e) => {
            // A stream this command created stays only if something went in.
            if s.entries_added == 0 && s.groups.is_empty() && s.last_id.is_zero() {
                db.del(key, at.index);
            }
            return Err(e);
        }
    };
    if let Some(t) = a.trim {
        s.trim(&t);
    }
    db.changed(key, at.index);
    Ok(id.reply())
}

fn xgroup(db: &mut Db, argv: &[Vec<u8>], at: At) -> Result<Reply, Reply> {
    let sub = upper(&argv[1]);
    let arity_ok = match sub.as_str() {
        "HELP" => argv.len() == 2,
        "CREATE" => (5..=8).contains(&argv.len()),
        "SETID" => argv.len() == 5 || argv.len() == 7,
        "DESTROY" => argv.len() == 4,
        "CREATECONSUMER" | "DELCONSUMER" => argv.len() == 5,
        _ => return Err(sub_syntax(argv, "XGROUP")),
    };
    if !arity_ok {
        return Err(sub_arity(argv, "XGROUP", &sub));
    }
    if sub == "HELP" {
        return Ok(help(
            &[
                "CREATE <key> <groupname> <id|$> [option]",
                "    Create a new consumer group. Options are:",
                "    * MKSTREAM",
                "      Create the empty stream if it does not exist.",
                "    * ENTRIESREAD entries_read",
                "      Set the group's entries_read counter (internal use).",
                "CREATECONSUMER <key> <groupname> <consumer>",
                "    Create a new consumer in the specified group.",
                "DELCONSUMER <key> <groupname> <consumer>",
                "    Remove the specified consumer.",
                "DESTROY <key> <groupname>",
                "    Remove the specified group.",
                "SETID <key> <groupname> <id|$> [ENTRIESREAD entries_read]",
                "    Set the current group ID and entries_read counter.",
            ],
            "XGROUP",
        ));
    }
    let key = &argv[2];
    let grp = &argv[3];
    let mut mkstream = false;
    let mut entries_read: Option<u64> = None;
    let mut i = 5;
    while i < argv.len() {
        if sub == "CREATE" && argv[i].eq_ignore_ascii_case(b"MKSTREAM") {
            mkstream = true;
            i += 1;
        } else if (sub == "CREATE" || sub == "SETID")
            && argv[i].eq_ignore_ascii_case(b"ENTRIESREAD")
            && i + 1 < argv.len()
        {
            let v = int(&argv[i + 1])?;
            if v < 0 && v != -1 {
                return Err(Reply::err(
                    "ERR value for ENTRIESREAD must be positive or -1",
                ));
            }
            entries_read = (v >= 0).then_some(v as u64);
            i += 2;
        } else {
            return Err(sub_syntax(argv, "XGROUP"));
        }
    }
    let exists = db.stream(key, at.now)?.is_some();
    if !mkstream {
        if !exists {
            return Err(Reply::err(
                "ERR The XGROUP subcommand requires the key to exist. Note that for CREATE you may want to use the MKSTREAM option to create an empty stream automatically.",
            ));
        }
        let has = db
            .stream(key, at.now)?
            .is_some_and(|s| s.groups.contains_key(grp));
        if !has && matches!(sub.as_str(), "SETID" | "CREATECONSUMER" | "DELCONSUMER") {
            return Err(Reply::err(format!(
                "NOGROUP No such consumer group '{}' for key name '{}'",
                String::from_utf8_lossy(grp),
                String::from_utf8_lossy(key)
            )));
        }
    }
    let now = at.now;
    let r = match sub.as_str() {
        "CREATE" => {
            let id = if argv[4] == b"$" {
                db.stream(key, now)?.map(|s| s.last_id).unwrap_or(Id::MIN)
            } else {
                parse_strict(&argv[4])?
            };
            let s = db.stream_create(key, at.index)?;
            if !s.create_group(grp, id, entries_read) {
                return Err(Reply::err("BUSYGROUP Consumer Group name already exists"));
            }
            Reply::ok()
        }
        "SETID" => {
            let Some(s) = db.stream_mut(key)? else {
                return Err(Reply::err(super::NO_KEY));
            };
            let id = if argv[4] == b"$" {
                s.last_id
            } else {
                parse_id(&argv[4], 0)?
            };
            let Some(g) = s.groups.get_mut(grp) else {
                return Err(nogroup(key, grp));
            };
            g.last_id = id;
            g.entries_read = entries_read;
            Reply::ok()
        }
        "DESTROY" => {
            let Some(s) = db.stream_mut(key)? else {
                return Ok(Reply::Int(0));
            };
            if s.groups.remove(grp.as_slice()).is_none() {
                return Ok(Reply::Int(0));
            }
            Reply::Int(1)
        }
        "CREATECONSUMER" => {
            let Some(g) = db.stream_mut(key)?.and_then(|s| s.groups.get_mut(grp)) else {
                return Err(nogroup(key, grp));
            };
            if g.consumers.contains_key(&argv[4]) {
                return Ok(Reply::Int(0));
            }
            g.touch(&argv[4], now);
            Reply::Int(1)
        }
        _ => {
            // DELCONSUMER
            let Some(g) = db.stream_mut(key)?.and_then(|s| s.groups.get_mut(grp)) else {
                return Err(nogroup(key, grp));
            };
            let Some(c) = g.consumers.remove(&argv[4]) else {
                return Ok(Reply::Int(0));
            };
            for id in &c.pel {
                g.pel.remove(id);
            }
            Reply::Int(c.pel.len() as i64)
        }
    };
    db.changed(key, at.index);
    Ok(r)
}

fn xsetid(db: &mut Db, argv: &[Vec<u8>], at: At) -> Result<Reply, Reply> {
    let id = parse_strict(&argv[2])?;
    let mut entries_added: Option<u64> = None;
    let mut max_xdel = Id::MIN;
    let mut i = 3;
    while i < argv.len() {
        let more = argv.len() - 1 - i;
        let o = upper(&argv[i]);
        if o == "ENTRIESADDED" && more > 0 {
            let v = int(&argv[i + 1])?;
            if v < 0 {
                return Err(Reply::err("ERR entries_added must be positive"));
            }
            entries_added = Some(v as u64);
            i += 2;
        } else if o == "MAXDELETEDID" && more > 0 {
            max_xdel = parse_strict(&argv[i + 1])?;
            if id < max_xdel {
                return Err(Reply::err(
                    "ERR The ID specified in XSETID is smaller than the provided max_deleted_entry_id",
                ));
            }
            i += 2;
        } else {
            return Err(Reply::err(SYNTAX));
        }
    }
    let Some(s) = db.stream_mut(&argv[1])? else {
        return Err(Reply::err(super::NO_KEY));
    };
    if let Some(maxid) = s.last_valid() {
        if id < maxid {
            return Err(Reply::err(
                "ERR The ID specified in XSETID is smaller than the target stream top item",
            ));
        }
        if entries_added.is_some_and(|e| (s.len() as u64) > e) {
            return Err(Reply::err(
                "ERR The entries_added specified in XSETID is smaller than the target stream length",
            ));
        }
    }
    s.last_id = id;
    if let Some(e) = entries_added {
        s.entries_added = e;
    }
    if !max_xdel.is_zero() {
        s.max_deleted = max_xdel;
    }
    db.changed(&argv[1], at.index);
    Ok(Reply::ok())
}

fn xclaim(db: &mut Db, argv: &[Vec<u8>], at: At) -> Result<Reply, Reply> {
    let key = &argv[1];
    let grp = &argv[2];
    let now = at.now as i64;
    let has = db
        .stream(key, at.now)?
        .is_some_and(|s| s.groups.contains_key(grp));
    if !has {
        return Err(nogroup(key, grp));
    }
    let minidle = int_or(&argv[4], "Invalid min-idle-time argument for XCLAIM")?.max(0);
    let mut ids = Vec::new();
    let mut j = 5;
    while j < argv.len() {
        match parse_strict(&argv[j]) {
            Ok(id) => ids.push(id),
            Err(_) => break,
        }
        j += 1;
    }
    let (mut force, mut justid) = (false, false);
    let mut retry: Option<i64> = None;
    let mut delivery: Option<i64> = None;
    let mut last_id = Id::MIN;
    while j < argv.len() {
        let more = argv.len() - 1 - j;
        let o = upper(&argv[j]);
        match o.as_str() {
            "FORCE" => force = true,
            "JUSTID" => justid = true,
            "IDLE" if more > 0 => {
                j += 1;
                delivery = Some(now - int_or(&argv[j], "Invalid IDLE option argument for XCLAIM")?);
            }
            "TIME" if more > 0 => {
                j += 1;
                delivery = Some(int_or(&argv[j], "Invalid TIME option argument for XCLAIM")?);
            }
            "RETRYCOUNT" if more > 0 => {
                j += 1;
                retry = Some(int_or(
                    &argv[j],
                    "Invalid RETRYCOUNT option argument for XCLAIM",
                )?);
            }
            "LASTID" if more > 0 => {
                j += 1;
                last_id = parse_strict(&argv[j])?;
            }
            _ => {
                return Err(Reply::err(format!(
                    "ERR Unrecognized XCLAIM option '{}'",
                    String::from_utf8_lossy(&argv[j])
                )));
            }
        }
        j += 1;
    }
    let delivery = match delivery {
        Some(d) if d < 0 || d > now => now,
        Some(d) => d,
        None => now,
    } as u64;
    let consumer = &argv[3];
    let Some(s) = db.stream_mut(key)? else {
        return Err(nogroup(key, grp));
    };
    let entries = &s.entries;
    let Some(g) = s.groups.get_mut(grp) else {
        return Err(nogroup(key, grp));
    };
    if last_id > g.last_id {
        g.last_id = last_id;
    }
    let mut out = Vec::new();
    let mut touched = false;
    for id in ids {
        if !entries.contains_key(&id) {
            g.drop_nack(&id);
            continue;
        }
        // FORCE creates the pending entry (delivered once, owned by nobody yet).
        let forced = force && !g.pel.contains_key(&id);
        if forced {
            g.pel.insert(
                id,
                Nack {
                    consumer: Vec::new(),
                    delivery_time: now as u64,
                    delivery_count: 1,
                },
            );
        }
        let Some(n) = g.pel.get(&id) else { continue };
        if !forced && minidle > 0 && now - (n.delivery_time as i64) < minidle {
            continue;
        }
        let old = n.consumer.clone();
        if !touched {
            g.touch(consumer, now as u64);
            touched = true;
        }
        if old != *consumer
            && let Some(c) = g.consumers.get_mut(&old)
        {
            c.pel.remove(&id);
        }
        let n = g.pel.get_mut(&id).expect("present");
        n.delivery_time = delivery;
        match retry {
            Some(r) if r >= 0 => n.delivery_count = r as u64,
            _ if !justid => n.delivery_count += 1,
            _ => {}
        }
        n.consumer = consumer.clone();
        g.consumers
            .entry(consumer.clone())
            .or_default()
            .pel
            .insert(id);
        out.push(if justid {
            id.reply()
        } else {
            entry_reply(&id, &entries[&id])
        });
    }
    db.changed(key, at.index);
    Ok(Reply::Array(out))
}

fn xautoclaim(db: &mut Db, argv: &[Vec<u8>], at: At) -> Result<Reply, Reply> {
    let key = &argv[1];
    let grp = &argv[2];
    let now = at.now as i64;
    let minidle = int_or(&argv[4], "Invalid min-idle-time argument for XAUTOCLAIM")?.max(0);
    let start = start_bound(&argv[5])?;
    let mut count: i64 = 100;
    let mut justid = false;
    let mut j = 6;
    while j < argv.len() {
        let more = argv.len() - 1 - j;
        let o = upper(&argv[j]);
        if o == "COUNT" && more > 0 {
            let max = i64::MAX / 16;
            match parse_i64(&argv[j + 1]) {
                Some(c) if (1..=max).contains(&c) => count = c,
                _ => return Err(Reply::err("ERR COUNT must be > 0")),
            }
            j += 1;
        } else if o == "JUSTID" {
            justid = true;
        } else {
            return Err(Reply::err(SYNTAX));
        }
        j += 1;
    }
    let consumer = &argv[3];
    let Some(s) = db.stream_mut(key)? else {
        return Err(nogroup(key, grp));
    };
    let entries = &s.entries;
    let Some(g) = s.groups.get_mut(grp) else {
        return Err(nogroup(key, grp));
    };
    let mut attempts = count.saturating_mul(10);
    let mut out = Vec::new();
    let mut deleted = Vec::new();
    let mut touched = false;
    let mut cursor = start;
    let mut next = None;
    while let Some((&id, _)) = g.pel.range(cursor..).next() {
        if attempts == 0 || count == 0 {
            next = Some(id);
            break;
        }
        attempts -= 1;
        cursor = match id.incr() {
            Some(c) => c,
            None => Id::MAX,
        };
        if !entries.contains_key(&id) {
            g.drop_nack(&id);
            deleted.push(id.reply());
            count -= 1;
        } else {
            let n = &g.pel[&id];
            if minidle > 0 && now - (n.delivery_time as i64) < minidle {
                if id == Id::MAX {
                    break;
                }
                continue;
            }
            let old = n.consumer.clone();
            if !touched {
                g.touch(consumer, now as u64);
                touched = true;
            }
            if old != *consumer
                && let Some(c) = g.consumers.get_mut(&old)
            {
                c.pel.remove(&id);
            }
            let n = g.pel.get_mut(&id).expect("present");
            n.delivery_time = now as u64;
            if !justid {
                n.delivery_count += 1;
            }
            n.consumer = consumer.clone();
            g.consumers
                .entry(consumer.clone())
                .or_default()
                .pel
                .insert(id);
            out.push(if justid {
                id.reply()
            } else {
                entry_reply(&id, &entries[&id])
            });
            count -= 1;
        }
        if id == Id::MAX {
            break;
        }
    }
    db.changed(key, at.index);
    Ok(Reply::Array(vec![
        next.unwrap_or(Id::MIN).reply(),
        Reply::Array(out),
        Reply::Array(deleted),
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Vec<Vec<u8>> {
        s.split_whitespace()
            .map(|w| w.as_bytes().to_vec())
            .collect()
    }

    fn w(db: &mut Db, s: &str, now: u64, index: u64) -> Reply {
        db.write(&b(s), now, index)
    }

    fn bulk(r: &Reply) -> String {
        match r {
            Reply::Bulk(b) => String::from_utf8_lossy(b).into_owned(),
            other => panic!("not a bulk: {other:?}"),
        }
    }

    #[test]
    fn auto_ids_come_from_the_entry_clock_and_never_go_back() {
        let mut db = Db::default();
        assert_eq!(bulk(&w(&mut db, "XADD s * a 1", 1000, 1)), "1000-0");
        assert_eq!(bulk(&w(&mut db, "XADD s * a 2", 1000, 2)), "1000-1");
        // A leader whose clock is behind (after a failover) still moves forward.
        assert_eq!(bulk(&w(&mut db, "XADD s * a 3", 900, 3)), "1000-2");
        assert_eq!(bulk(&w(&mut db, "XADD s 1000-* a 4", 900, 4)), "1000-3");
        assert_eq!(bulk(&w(&mut db, "XADD s 2000-* a 5", 900, 5)), "2000-0");
        assert!(w(&mut db, "XADD s 5-1 a 6", 900, 6).is_error());
        assert_eq!(db.read(&b("XLEN s"), 0), Reply::Int(5));
        // The same log on another member gives the same stream.
        let mut other = Db::default();
        for (i, (cmd, now)) in [
            ("XADD s * a 1", 1000),
            ("XADD s * a 2", 1000),
            ("XADD s * a 3", 900),
            ("XADD s 1000-* a 4", 900),
            ("XADD s 2000-* a 5", 900),
        ]
        .iter()
        .enumerate()
        {
            w(&mut other, cmd, *now, i as u64 + 1);
        }
        assert_eq!(
            db.read(&b("XRANGE s - +"), 0),
            other.read(&b("XRANGE s - +"), 0)
        );
    }

    #[test]
    fn approximate_trim_drops_whole_nodes() {
        let mut db = Db::default();
        let cfg = NodeCfg {
            entries: 10,
            bytes: 4096,
        };
        for i in 0..100 {
            let argv = b(&format!("XADD s * x {i}"));
            db.write_cfg(&argv, 1, i + 1, cfg);
        }
        let r = db.write_cfg(&b("XADD s MAXLEN ~ 55 LIMIT 30 * x v"), 1, 200, cfg);
        assert!(!r.is_error());
        assert_eq!(db.read(&b("XLEN s"), 0), Reply::Int(71));
        db.write_cfg(&b("XTRIM s MAXLEN 3"), 1, 201, cfg);
        assert_eq!(db.read(&b("XLEN s"), 0), Reply::Int(3));
    }

    #[test]
    fn groups_deliver_track_pending_and_ack() {
        let mut db = Db::default();
        w(&mut db, "XADD s 1-0 a 1", 10, 1);
        w(&mut db, "XADD s 2-0 b 2", 10, 2);
        assert_eq!(w(&mut db, "XGROUP CREATE s g 0", 10, 3), Reply::ok());
        let r = w(
            &mut db,
            "XREADGROUP GROUP g alice COUNT 1 STREAMS s >",
            20,
            4,
        );
        assert!(matches!(r, Reply::Streams(ref v) if v.len() == 1));
        let p = db.read(&b("XPENDING s g - + 10"), 50);
        let Reply::Array(items) = p else { panic!() };
        assert_eq!(
            items[0],
            Reply::Array(vec![
                Reply::bulk("1-0"),
                Reply::bulk("alice"),
                Reply::Int(30),
                Reply::Int(1)
            ])
        );
        // Nothing new for `>` once all is delivered: a nil, no change.
        w(&mut db, "XREADGROUP GROUP g bob STREAMS s >", 20, 5);
        assert_eq!(
            w(&mut db, "XREADGROUP GROUP g bob STREAMS s >", 20, 6),
            Reply::NilArray
        );
        assert_eq!(w(&mut db, "XACK s g 1-0 2-0 3-0", 30, 7), Reply::Int(2));
        assert!(w(&mut db, "XREADGROUP GROUP nope c STREAMS s >", 30, 8).is_error());
        assert_eq!(db.read(&b("TYPE s"), 0), Reply::Simple("stream".into()));
        // FORCE makes a pending entry (delivered once, then claimed: twice), idle from TIME.
        let r = w(&mut db, "XCLAIM s g carol 0 2-0 FORCE TIME 35", 40, 9);
        assert!(matches!(r, Reply::Array(ref v) if v.len() == 1), "{r:?}");
        let p = db.read(&b("XPENDING s g - + 10 carol"), 50);
        assert_eq!(
            p,
            Reply::Array(vec![Reply::Array(vec![
                Reply::bulk("2-0"),
                Reply::bulk("carol"),
                Reply::Int(15),
                Reply::Int(2)
            ])])
        );
    }
}
