//! The data model: numbered databases of keys holding strings, hashes, lists, sets or
//! sorted sets, with per-key TTL. One module per type; this one holds the keyspace core.
//!
//! Every mutation runs inside the replicated state machine with the leader's clock (`now_ms`
//! carried in the log entry), so all members compute the same result. Randomness inside a
//! write (SPOP) comes from a generator seeded by the entry (its index, clock and the
//! command), never from the member. Reads use the local clock to hide expired keys; they
//! never mutate.

mod bits;
pub mod busy;
mod cmds;
mod glob;
mod hash;
mod hll;
pub use hll::selftest as pf_selftest;
mod keyspace;
mod list;
mod lualibs;
pub mod script;
mod set;
mod sort;
mod stream;
mod strings;
mod tables;
mod zset;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::resp::Reply;

pub use cmds::{
    Class, Group, Spec, all as all_commands, block_sources, block_timeout, blocks, check_arity,
    classify, is_blocking, keys as keys_of, spec,
};
pub use glob::glob_match;
pub use keyspace::{Limits, digest};
pub use stream::{NodeCfg, STREAM_CFG};
pub use tables::{
    DEDUPE_MAX, DEDUPE_WINDOW, Proposal, SWEEP, SWEEP_MAX, Tables, WAITER, WriteReq, debug_protocol,
};
pub use zset::ZSet;

pub const NUM_DBS: usize = 16;

/// Keys are ordered by (hash, key) so that a SCAN cursor can be a plain number (the next
/// hash to visit) that stays valid while keys come and go.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SKey(pub u64, pub Vec<u8>);

impl SKey {
    pub fn new(k: &[u8]) -> SKey {
        SKey(key_hash(k), k.to_vec())
    }
}

/// A key as the map orders it, (hash, bytes), whether owned (`SKey`) or borrowed
/// (`KeyRef`): lookups borrow the key they are given instead of copying it into an `SKey`.
pub trait KeyView {
    fn parts(&self) -> (u64, &[u8]);
}

impl KeyView for SKey {
    fn parts(&self) -> (u64, &[u8]) {
        (self.0, &self.1)
    }
}

/// A key borrowed for a lookup.
pub struct KeyRef<'a>(u64, &'a [u8]);

impl<'a> KeyRef<'a> {
    pub fn new(k: &'a [u8]) -> Self {
        KeyRef(key_hash(k), k)
    }

    /// What `BTreeMap<SKey, _>::get` and friends take.
    pub fn view(&self) -> &(dyn KeyView + 'a) {
        self
    }
}

impl KeyView for KeyRef<'_> {
    fn parts(&self) -> (u64, &[u8]) {
        (self.0, self.1)
    }
}

impl<'a> std::borrow::Borrow<dyn KeyView + 'a> for SKey {
    fn borrow(&self) -> &(dyn KeyView + 'a) {
        self
    }
}

// The same order as `SKey`'s derived one: the hash, then the bytes.
impl PartialEq for dyn KeyView + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for dyn KeyView + '_ {}

impl PartialOrd for dyn KeyView + '_ {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for dyn KeyView + '_ {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.parts().cmp(&other.parts())
    }
}

/// FNV-1a, 63 bits: stable across members and versions.
pub fn key_hash(k: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for &b in k {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h >> 1
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Value {
    Str(Vec<u8>),
    Hash(BTreeMap<Vec<u8>, Vec<u8>>),
    List(VecDeque<Vec<u8>>),
    /// Ordered so that iteration (and so SPOP's choice by position) is the same on every
    /// member.
    Set(BTreeSet<Vec<u8>>),
    ZSet(ZSet),
    /// Boxed: a stream's bookkeeping would make every value larger.
    Stream(Box<stream::Stream>),
}

impl Value {
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Str(_) => "string",
            Value::Hash(_) => "hash",
            Value::List(_) => "list",
            Value::Set(_) => "set",
            Value::ZSet(_) => "zset",
            Value::Stream(_) => "stream",
        }
    }

    fn is_empty_container(&self) -> bool {
        match self {
            Value::Str(_) => false,
            Value::Hash(h) => h.is_empty(),
            Value::List(l) => l.is_empty(),
            Value::Set(s) => s.is_empty(),
            Value::ZSet(z) => z.is_empty(),
            // An empty stream stays (XADD MAXLEN 0, XGROUP CREATE MKSTREAM).
            Value::Stream(_) => false,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Item {
    pub value: Value,
    /// Absolute expiry, unix ms.
    pub expire_at: Option<u64>,
    /// Log index of the last change (for WATCH).
    pub ver: u64,
}

impl Item {
    fn live(&self, now: u64) -> bool {
        self.expire_at.is_none_or(|t| t > now)
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Db {
    pub map: BTreeMap<SKey, Item>,
    /// Log index of the last deletion (or flush) in this db, for WATCH on absent keys.
    pub last_delete: u64,
}

/// A key the client WATCHed: the version seen then (0 = absent) and the applied index then.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watch {
    pub db: u32,
    pub key: Vec<u8>,
    pub ver: u64,
    pub at: u64,
}

pub(crate) const WRONGTYPE: &str =
    "WRONGTYPE Operation against a key holding the wrong kind of value";
pub(crate) const NOT_INT: &str = "ERR value is not an integer or out of range";
pub(crate) const NOT_FLOAT: &str = "ERR value is not a valid float";
pub(crate) const SYNTAX: &str = "ERR syntax error";
pub(crate) const NO_KEY: &str = "ERR no such key";
pub(crate) const OUT_OF_RANGE: &str = "ERR index out of range";

pub fn arity_err(name: &str) -> Reply {
    Reply::err(format!(
        "ERR wrong number of arguments for '{}' command",
        name.to_ascii_lowercase()
    ))
}

pub(crate) fn unknown_cmd(name: &str) -> Reply {
    Reply::err(format!(
        "ERR unknown command '{}'",
        name.to_ascii_lowercase()
    ))
}

pub(crate) fn parse_i64(b: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(b).ok()?;
    // Redis refuses "+1", " 1" and "01"-style padding only partly; it refuses a leading '+'.
    if s.starts_with('+') {
        return None;
    }
    s.parse().ok()
}

pub(crate) fn parse_f64(b: &[u8]) -> Option<f64> {
    let s = std::str::from_utf8(b).ok()?;
    if s.is_empty() || s.starts_with(char::is_whitespace) || s.ends_with(char::is_whitespace) {
        return None;
    }
    let v: f64 = match s.to_ascii_lowercase().as_str() {
        "inf" | "+inf" | "infinity" | "+infinity" => f64::INFINITY,
        "-inf" | "-infinity" => f64::NEG_INFINITY,
        l if l.contains("inf") || l.contains("nan") => return None,
        _ => s.parse().ok()?,
    };
    if v.is_nan() { None } else { Some(v) }
}

/// A reply either way: the command's result or its error.
pub(crate) fn flat(r: Result<Reply, Reply>) -> Reply {
    match r {
        Ok(r) | Err(r) => r,
    }
}

/// The optional COUNT of LPOP/SPOP/ZPOPMIN-style commands at `argv[2]`.
pub(crate) fn optional_count(argv: &[Vec<u8>]) -> Result<Option<usize>, Reply> {
    match argv.len() {
        2 => Ok(None),
        // Redis answers a negative and a non-numeric count alike.
        3 => match parse_i64(&argv[2]) {
            Some(c) if c >= 0 => Ok(Some(c as usize)),
            _ => Err(Reply::err("ERR value is out of range, must be positive")),
        },
        _ => Err(Reply::err(SYNTAX)),
    }
}

pub(crate) fn upper(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_ascii_uppercase()
}

/// Resolves Redis's inclusive `start..stop` range (negative = from the end) over `len`.
pub(crate) fn range_of(start: i64, stop: i64, len: usize) -> Option<(usize, usize)> {
    let len = len as i64;
    let start = if start < 0 {
        (len + start).max(0)
    } else {
        start
    };
    let stop = if stop < 0 {
        len + stop
    } else {
        stop.min(len - 1)
    };
    if start > stop || start >= len || len == 0 {
        None
    } else {
        Some((start as usize, stop as usize))
    }
}

/// A small deterministic generator (splitmix64): in a write its seed comes from the log entry.
pub(crate) struct Rng(u64);

impl Rng {
    pub fn seeded(seed: u64) -> Rng {
        Rng(seed)
    }

    /// For reads (SRANDMEMBER, RANDOMKEY): any choice is fine, they change nothing.
    pub fn local() -> Rng {
        use std::sync::atomic::{AtomicU64, Ordering};
        static CTR: AtomicU64 = AtomicU64::new(0);
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Rng(t ^ CTR.fetch_add(0x9e3779b97f4a7c15, Ordering::Relaxed))
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e3779b97f4a7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

/// The clock and position of the write being applied.
#[derive(Clone, Copy, Debug)]
pub struct At {
    pub now: u64,
    pub index: u64,
}

impl At {
    /// A generator seeded by the entry and the command: the same on every member.
    pub(crate) fn rng(&self, argv: &[Vec<u8>]) -> Rng {
        let mut h = self.index.rotate_left(17) ^ self.now;
        for a in argv {
            h = h.rotate_left(5) ^ key_hash(a);
        }
        Rng::seeded(h)
    }
}

macro_rules! typed_access {
    ($get:ident, $get_mut:ident, $create:ident, $variant:ident, $ty:ty) => {
        impl Db {
            /// The live value of this type at `k` (None when absent), WRONGTYPE otherwise.
            pub(crate) fn $get(&self, k: &[u8], now: u64) -> Result<Option<&$ty>, Reply> {
                match self.get_live(k, now) {
                    None => Ok(None),
                    Some(Item {
                        value: Value::$variant(v),
                        ..
                    }) => Ok(Some(v)),
                    Some(_) => Err(Reply::err(WRONGTYPE)),
                }
            }

            /// For writes, which have dropped expired keys already. Call `changed` after.
            pub(crate) fn $get_mut(&mut self, k: &[u8]) -> Result<Option<&mut $ty>, Reply> {
                match self.map.get_mut(KeyRef::new(k).view()) {
                    None => Ok(None),
                    Some(Item {
                        value: Value::$variant(v),
                        ..
                    }) => Ok(Some(v)),
                    Some(_) => Err(Reply::err(WRONGTYPE)),
                }
            }

            /// The value at `k`, created empty when absent. Call `changed` after, which
            /// removes it again if it stayed empty.
            pub(crate) fn $create(&mut self, k: &[u8], index: u64) -> Result<&mut $ty, Reply> {
                let item = self.map.entry(SKey::new(k)).or_insert_with(|| Item {
                    value: Value::$variant(Default::default()),
                    expire_at: None,
                    ver: index,
                });
                match &mut item.value {
                    Value::$variant(v) => Ok(v),
                    _ => Err(Reply::err(WRONGTYPE)),
                }
            }
        }
    };
}

typed_access!(
    hash,
    hash_mut,
    hash_create,
    Hash,
    BTreeMap<Vec<u8>, Vec<u8>>
);
typed_access!(list, list_mut, list_create, List, VecDeque<Vec<u8>>);
typed_access!(set, set_mut, set_create, Set, BTreeSet<Vec<u8>>);
typed_access!(zset, zset_mut, zset_create, ZSet, ZSet);
typed_access!(
    stream,
    stream_mut,
    stream_create,
    Stream,
    Box<stream::Stream>
);

impl Db {
    pub(crate) fn get_live(&self, k: &[u8], now: u64) -> Option<&Item> {
        self.map.get(KeyRef::new(k).view()).filter(|i| i.live(now))
    }

    /// Version of a key for WATCH (0 when absent or expired).
    pub fn version(&self, k: &[u8], now: u64) -> u64 {
        self.get_live(k, now).map(|i| i.ver).unwrap_or(0)
    }

    /// Drops the key if it has expired (deterministic: `now` is the entry's clock).
    fn reap(&mut self, k: &[u8], now: u64, _index: u64) {
        let sk = KeyRef::new(k);
        if let Some(i) = self.map.get(sk.view())
            && !i.live(now)
        {
            // Reclaiming an expired key is no change for a WATCH made after it had expired.
            let ver = i.ver;
            self.map.remove(sk.view());
            self.forgot(ver);
        }
    }

    /// Records a change to `k`: a new version, and an emptied container is removed (Redis
    /// never keeps an empty list, set, hash or sorted set).
    pub(crate) fn changed(&mut self, k: &[u8], index: u64) {
        let sk = KeyRef::new(k);
        let Some(item) = self.map.get_mut(sk.view()) else {
            return;
        };
        item.ver = index;
        if item.value.is_empty_container() {
            self.map.remove(sk.view());
            self.last_delete = index;
        }
    }

    /// Removes an empty container a failed write may have created, without a new version.
    pub(crate) fn drop_if_empty(&mut self, k: &[u8]) {
        let sk = KeyRef::new(k);
        if self
            .map
            .get(sk.view())
            .is_some_and(|i| i.value.is_empty_container())
        {
            self.map.remove(sk.view());
        }
    }

    /// Ends a write to the collection at `k`: on success it gets a new version (and goes if
    /// emptied); on an error, an empty value created on the way goes again.
    pub(crate) fn finish(&mut self, k: &[u8], index: u64, r: Result<Reply, Reply>) -> Reply {
        match r {
            Ok(r) => {
                self.changed(k, index);
                r
            }
            Err(e) => {
                self.drop_if_empty(k);
                e
            }
        }
    }

    /// Stores a value (replacing any), with no TTL unless given.
    pub(crate) fn put(&mut self, k: &[u8], value: Value, expire_at: Option<u64>, index: u64) {
        if value.is_empty_container() {
            self.del(k, index);
            return;
        }
        self.map.insert(
            SKey::new(k),
            Item {
                value,
                expire_at,
                ver: index,
            },
        );
    }

    /// Keys whose last change was at `ver` went without a command touching them (a flush,
    /// a swap, reclaimed expired keys): a WATCH of an absent key fails only if one of them
    /// changed after it (`last_delete` is "the newest change that is gone").
    pub(crate) fn forgot(&mut self, ver: u64) {
        self.last_delete = self.last_delete.max(ver);
    }

    /// Removes every key (FLUSHDB, FLUSHALL): as `forgot` for each.
    pub(crate) fn flush(&mut self) {
        let newest = self.map.values().map(|i| i.ver).max().unwrap_or(0);
        self.map.clear();
        self.forgot(newest);
    }

    pub(crate) fn del(&mut self, k: &[u8], index: u64) -> bool {
        let gone = self.map.remove(KeyRef::new(k).view()).is_some();
        if gone {
            self.last_delete = index;
        }
        gone
    }

    /// Drops up to `max` keys that have expired by `now` (the entry's clock); returns how many.
    /// Drops up to `max` expired keys; the keys it dropped.
    pub fn sweep(&mut self, now: u64, _index: u64, max: usize) -> Vec<Vec<u8>> {
        let dead: Vec<SKey> = self
            .map
            .iter()
            .filter(|(_, i)| !i.live(now))
            .map(|(k, _)| k.clone())
            .take(max)
            .collect();
        for k in &dead {
            if let Some(i) = self.map.remove(k) {
                self.forgot(i.ver);
            }
        }
        dead.into_iter().map(|k| k.1).collect()
    }

    /// Whether any key has expired by `now` (keys that a sweep would drop).
    pub fn has_expired(&self, now: u64) -> bool {
        self.map.values().any(|i| !i.live(now))
    }

    pub fn live_len(&self, now: u64) -> usize {
        self.map.values().filter(|i| i.live(now)).count()
    }

    /// Live keys with a TTL (INFO's keyspace `expires`).
    pub fn expires_len(&self, now: u64) -> usize {
        self.map
            .values()
            .filter(|i| i.live(now) && i.expire_at.is_some())
            .count()
    }

    /// Whether blocking command `name` could take something from `k` now (a live value of
    /// its type): a waiting client proposes only then.
    pub fn can_pop(&self, name: &str, k: &[u8], now: u64) -> bool {
        match self.get_live(k, now).map(|i| &i.value) {
            Some(Value::List(_)) => spec(name).is_some_and(|s| s.group == Group::List),
            Some(Value::ZSet(_)) => spec(name).is_some_and(|s| s.group == Group::ZSet),
            _ => false,
        }
    }

    /// A blocking command's attempt, decided by the log rather than by one member's view:
    /// `[woken 0|1, n, (name, key)×n, command…]`. It takes nothing (answers the timeout
    /// reply) while an earlier waiter (one of the pairs, as the proposing member saw them)
    /// could take from its key, so the longest-waiting client is served first as in Redis.
    /// Once woken it also takes nothing while no source holds a value of the command's type
    /// (a source that turned into another type keeps the client waiting, as in Redis);
    /// otherwise the command runs, and an error such as a destination of the wrong type
    /// reaches the client.
    pub fn write_waiter(&mut self, argv: &[Vec<u8>], now: u64, index: u64) -> Reply {
        let n = match argv.get(1).and_then(|n| parse_i64(n)) {
            Some(n) if n >= 0 && argv.len() > 2 + 2 * n as usize => n as usize,
            _ => return Reply::err(SYNTAX),
        };
        let woken = argv[0] == b"1";
        let (earlier, cmd) = argv[2..].split_at(2 * n);
        let name = upper(&cmd[0]);
        if !check_arity(&name, cmd.len()) {
            return arity_err(&name);
        }
        let nothing = || match name.as_str() {
            "BRPOPLPUSH" | "BLMOVE" => Reply::Nil,
            _ => Reply::NilArray,
        };
        let owed = earlier
            .chunks(2)
            .any(|p| self.can_pop(&upper(&p[0]), &p[1], now));
        if owed {
            return nothing();
        }
        if name == "XREADGROUP" {
            let at = At { now, index };
            return flat(stream::xreadgroup(self, cmd, at, woken));
        }
        if woken
            && !cmds::block_sources(&name, cmd)
                .iter()
                .any(|k| self.can_pop(&name, k, now))
        {
            return nothing();
        }
        self.write(cmd, now, index)
    }

    /// Runs a read-only command.
    pub fn read(&self, argv: &[Vec<u8>], now: u64) -> Reply {
        let name = upper(&argv[0]);
        let Some(s) = spec(&name) else {
            return unknown_cmd(&name);
        };
        if !check_arity(&name, argv.len()) {
            return arity_err(&name);
        }
        let r = match s.group {
            Group::Str => strings::read(self, &name, argv, now),
            Group::Hash => hash::read(self, &name, argv, now),
            Group::List => list::read(self, &name, argv, now),
            Group::Set => set::read(self, &name, argv, now),
            Group::ZSet => zset::read(self, &name, argv, now),
            Group::Keys => keyspace::read(self, &name, argv, now),
            Group::Bits => bits::read(self, &name, argv, now),
            Group::Stream => stream::read(self, &name, argv, now),
            Group::Hll => None,
            Group::Tables => None,
        };
        r.unwrap_or_else(|| unknown_cmd(&name))
    }

    /// Runs a command inside the state machine; `index` is the log index (the new version).
    pub fn write(&mut self, argv: &[Vec<u8>], now: u64, index: u64) -> Reply {
        self.write_cfg(argv, now, index, NodeCfg::default())
    }

    /// As [`Db::write`], with the stream node limits the command was taken with.
    pub fn write_cfg(&mut self, argv: &[Vec<u8>], now: u64, index: u64, cfg: NodeCfg) -> Reply {
        let name = upper(&argv[0]);
        let Some(s) = spec(&name) else {
            return unknown_cmd(&name);
        };
        if s.class == Class::Read {
            return self.read(argv, now);
        }
        if !check_arity(&name, argv.len()) {
            return arity_err(&name);
        }
        for k in cmds::keys(&name, argv) {
            self.reap(k, now, index);
        }
        let at = At { now, index };
        let r = match s.group {
            Group::Str => strings::write(self, &name, argv, at),
            Group::Hash => hash::write(self, &name, argv, at),
            Group::List => list::write(self, &name, argv, at),
            Group::Set => set::write(self, &name, argv, at),
            Group::ZSet => zset::write(self, &name, argv, at),
            Group::Keys => keyspace::write(self, &name, argv, at),
            Group::Bits => bits::write(self, &name, argv, at),
            Group::Hll => hll::write(self, &name, argv, at),
            Group::Stream => stream::write(self, &name, argv, at, cfg),
            Group::Tables => None,
        };
        r.unwrap_or_else(|| unknown_cmd(&name))
    }

    /// Whether a waiting blocking command could take something now (or must hear that its
    /// stream or group went): its attempt is proposed only then.
    pub fn block_ready(&self, name: &str, argv: &[Vec<u8>], keys: &[Vec<u8>], now: u64) -> bool {
        if name == "XREADGROUP" {
            return stream::group_ready(self, argv, now);
        }
        keys.iter().any(|k| self.can_pop(name, k, now))
    }

    /// Whether a blocking command would wait on this state (only XREADGROUP says so).
    pub fn would_block(&self, name: &str, argv: &[Vec<u8>], now: u64) -> bool {
        name == "XREADGROUP" && stream::group_would_block(self, argv, now)
    }

    /// XREAD on this member's state (`waiting`: a blocked client's default COUNT).
    pub fn xread(&self, argv: &[Vec<u8>], now: u64, waiting: Option<usize>) -> Reply {
        flat(stream::xread(self, argv, now, waiting))
    }

    /// XREAD's `$` IDs replaced by the streams' last IDs.
    pub fn xread_resolve(&self, argv: &[Vec<u8>], now: u64) -> Result<Vec<Vec<u8>>, Reply> {
        stream::resolve_dollar(self, argv, now)
    }
}

#[cfg(test)]
mod tests;
