//! Documents in the db.
//!
//! Key layout: one hash per document, `doc:<collection>:<id>`, with two fields: `v`, the
//! version (16 hex digits, random, new on every write; the ETag is `"<v>"`), and `b`, the
//! document as compact JSON. Collections and ids are `[A-Za-z0-9_-]+`, so they never contain
//! the `:` separator nor a SCAN glob character.
//!
//! Retries after an unknown outcome are safe because every write carries its own fresh
//! version: a write that finds its own version already stored knows an earlier attempt landed.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use redis::aio::MultiplexedConnection;
use redis::{RedisError, Value as RValue};
use serde_json::Value;

use crate::db::{Db, DbError, Outcome, ReadMode, TxConn};

/// A stored document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Doc {
    pub version: String,
    pub body: String,
}

pub fn doc_key(coll: &str, id: &str) -> String {
    format!("doc:{coll}:{id}")
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    if getrandom::fill(&mut buf).is_err() {
        // No OS randomness: fall back to time and a counter (still unique per process).
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let seed = format!("{t:032x}{n:016x}{:08x}", std::process::id());
        return seed.chars().rev().take(bytes * 2).collect();
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// A fresh version (also the ETag's content).
pub fn new_version() -> String {
    random_hex(8)
}

/// A fresh server-made document id: 24 hex digits.
pub fn new_id() -> String {
    random_hex(12)
}

/// A document id derived from parts (24 hex digits of SHA-256), for idempotent POSTs.
pub fn derived_id(parts: &[&str]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0u8]);
    }
    h.finalize()[..12]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One entity tag of an `If-Match` / `If-None-Match` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag {
    pub weak: bool,
    pub value: String,
}

/// A parsed `If-Match` / `If-None-Match` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tags {
    Any,
    List(Vec<Tag>),
}

impl Tags {
    /// Parses `*` or a comma-separated list of entity tags; `None` if malformed.
    pub fn parse(s: &str) -> Option<Tags> {
        let s = s.trim();
        if s == "*" {
            return Some(Tags::Any);
        }
        let mut out = Vec::new();
        let mut rest = s;
        loop {
            rest = rest.trim_start_matches([' ', '\t', ',']);
            if rest.is_empty() {
                break;
            }
            let weak = rest.starts_with("W/");
            if weak {
                rest = &rest[2..];
            }
            let inner = rest.strip_prefix('"')?;
            let end = inner.find('"')?;
            out.push(Tag {
                weak,
                value: inner[..end].to_string(),
            });
            rest = &inner[end + 1..];
            let r = rest.trim_start_matches([' ', '\t']);
            if !(r.is_empty() || r.starts_with(',')) {
                return None;
            }
        }
        if out.is_empty() {
            return None;
        }
        Some(Tags::List(out))
    }
}

/// Request preconditions (RFC 9110 §13).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Preconditions {
    pub if_match: Option<Tags>,
    pub if_none_match: Option<Tags>,
}

impl Preconditions {
    pub fn is_empty(&self) -> bool {
        self.if_match.is_none() && self.if_none_match.is_none()
    }

    /// `If-Match` with strong comparison.
    pub fn if_match_ok(&self, current: Option<&str>) -> bool {
        match (&self.if_match, current) {
            (None, _) => true,
            (Some(Tags::Any), cur) => cur.is_some(),
            (Some(Tags::List(_)), None) => false,
            (Some(Tags::List(l)), Some(v)) => l.iter().any(|t| !t.weak && t.value == v),
        }
    }

    /// `If-None-Match` with weak comparison.
    pub fn if_none_match_ok(&self, current: Option<&str>) -> bool {
        match (&self.if_none_match, current) {
            (None, _) => true,
            (Some(Tags::Any), cur) => cur.is_none(),
            (Some(Tags::List(_)), None) => true,
            (Some(Tags::List(l)), Some(v)) => !l.iter().any(|t| t.value == v),
        }
    }

    pub fn ok(&self, current: Option<&str>) -> bool {
        self.if_match_ok(current) && self.if_none_match_ok(current)
    }
}

/// Result of a conditional write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Stored; `created` is true if there was no document before.
    Done {
        created: bool,
        version: String,
        body: String,
    },
    NotFound,
    PreconditionFailed,
    /// The patched document breaks a limit or is not an object.
    Invalid {
        code: &'static str,
        msg: String,
    },
}

/// Result of one WATCH/MULTI/EXEC attempt.
enum Tx<T> {
    Finished(T),
    /// EXEC aborted: a concurrent write touched the key. Run again.
    Conflict,
}

/// Drops the WATCH of a transaction that will not EXEC. If the db does not know UNWATCH (it
/// is outside the command subset we rely on), the connection is not reused instead: its
/// WATCH dies with it.
async fn unwatch(c: &mut MultiplexedConnection, reusable: &mut bool) {
    if redis::cmd("UNWATCH").query_async::<()>(c).await.is_err() {
        *reusable = false;
    }
}

async fn read_doc(
    c: &mut MultiplexedConnection,
    key: &str,
) -> Result<Option<(String, String)>, RedisError> {
    let (v, b): (Option<String>, Option<String>) = redis::cmd("HMGET")
        .arg(key)
        .arg("v")
        .arg("b")
        .query_async(c)
        .await?;
    Ok(match (v, b) {
        (Some(v), Some(b)) => Some((v, b)),
        _ => None,
    })
}

/// `WATCH key`, then the stored version.
async fn watch_version(
    c: &mut MultiplexedConnection,
    key: &str,
) -> Result<Option<String>, RedisError> {
    // One round trip: WATCH is in force before HGET runs on the same connection.
    let (v,): (Option<String>,) = redis::pipe()
        .cmd("WATCH")
        .arg(key)
        .ignore()
        .cmd("HGET")
        .arg(key)
        .arg("v")
        .query_async(c)
        .await?;
    Ok(v)
}

/// `WATCH key`, then the stored version and body.
async fn watch_doc(
    c: &mut MultiplexedConnection,
    key: &str,
) -> Result<Option<(String, String)>, RedisError> {
    let ((v, b),): ((Option<String>, Option<String>),) = redis::pipe()
        .cmd("WATCH")
        .arg(key)
        .ignore()
        .cmd("HMGET")
        .arg(key)
        .arg("v")
        .arg("b")
        .query_async(c)
        .await?;
    Ok(v.zip(b))
}

/// Runs a CAS transaction again while EXEC is aborted by concurrent writers (bounded).
async fn cas_loop<T, F, Fut>(db: &Db, key: &str, mut op: F) -> Result<T, DbError>
where
    F: FnMut(TxConn, Outcome) -> Fut,
    Fut: Future<Output = (TxConn, Result<Tx<T>, RedisError>)>,
{
    for _ in 0..64 {
        match db.run_tx(&mut op).await? {
            Tx::Finished(t) => return Ok(t),
            Tx::Conflict => {
                db.metrics().cas_conflicts.fetch_add(1, Ordering::Relaxed);
                tokio::task::yield_now().await;
            }
        }
    }
    Err(DbError::Contention(key.to_string()))
}

/// Reads one document.
pub async fn get(db: &Db, mode: ReadMode, coll: &str, id: &str) -> Result<Option<Doc>, DbError> {
    let key = doc_key(coll, id);
    let key = &key;
    let r = db
        .run(mode, |mut c, _| async move { read_doc(&mut c, key).await })
        .await?;
    Ok(r.map(|(version, body)| Doc { version, body }))
}

/// Stores a document (create or replace) under the given preconditions.
pub async fn put(
    db: &Db,
    coll: &str,
    id: &str,
    body: String,
    pre: &Preconditions,
) -> Result<Write, DbError> {
    let key = doc_key(coll, id);
    let version = new_version();
    let (key, version, body) = (&key, &version, &body);
    if pre.is_empty() {
        // One HSET replaces both fields atomically; repeating it is harmless.
        let added: i64 = db
            .run(ReadMode::Linearizable, |mut c, _| async move {
                redis::cmd("HSET")
                    .arg(key)
                    .arg("v")
                    .arg(version)
                    .arg("b")
                    .arg(body)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        return Ok(Write::Done {
            created: added > 0,
            version: version.clone(),
            body: body.clone(),
        });
    }
    let created = AtomicBool::new(false);
    let created = &created;
    let done = || Write::Done {
        created: created.load(Ordering::Relaxed),
        version: version.clone(),
        body: body.clone(),
    };
    cas_loop(db, key, |tx, _| async move {
        let mut c = tx.conn;
        let mut reusable = true;
        let r = async {
            let cur = watch_version(&mut c, key).await?;
            if cur.as_deref() == Some(version.as_str()) {
                unwatch(&mut c, &mut reusable).await;
                return Ok(Tx::Finished(done()));
            }
            if !pre.ok(cur.as_deref()) {
                unwatch(&mut c, &mut reusable).await;
                return Ok(Tx::Finished(Write::PreconditionFailed));
            }
            created.store(cur.is_none(), Ordering::Relaxed);
            let r: Option<RValue> = redis::pipe()
                .atomic()
                .cmd("HSET")
                .arg(key)
                .arg("v")
                .arg(version)
                .arg("b")
                .arg(body)
                .ignore()
                .query_async(&mut c)
                .await?;
            Ok(match r {
                None => Tx::Conflict,
                Some(_) => Tx::Finished(done()),
            })
        }
        .await;
        (TxConn { conn: c, reusable }, r)
    })
    .await
}

/// Applies a JSON merge patch (RFC 7386) with compare-and-set on the version. `check` is run
/// on the patched document (limits); its error is returned as [`Write::Invalid`].
pub async fn patch(
    db: &Db,
    coll: &str,
    id: &str,
    patch: &Value,
    pre: &Preconditions,
    check: &DocCheck<'_>,
) -> Result<Write, DbError> {
    let key = doc_key(coll, id);
    let version = new_version();
    let (key, version) = (&key, &version);
    let written: Mutex<Option<String>> = Mutex::new(None);
    let written = &written;
    cas_loop(db, key, |tx, _| async move {
        let mut c = tx.conn;
        let mut reusable = true;
        let r = async {
            let cur = watch_doc(&mut c, key).await?;
            let Some((cur_v, cur_b)) = cur else {
                unwatch(&mut c, &mut reusable).await;
                let failed = !pre.ok(None);
                return Ok(Tx::Finished(if failed {
                    Write::PreconditionFailed
                } else {
                    Write::NotFound
                }));
            };
            let earlier = written.lock().ok().and_then(|w| w.clone());
            if &cur_v == version
                && let Some(body) = earlier
            {
                unwatch(&mut c, &mut reusable).await;
                return Ok(Tx::Finished(Write::Done {
                    created: false,
                    version: version.clone(),
                    body,
                }));
            }
            if !pre.ok(Some(&cur_v)) {
                unwatch(&mut c, &mut reusable).await;
                return Ok(Tx::Finished(Write::PreconditionFailed));
            }
            let mut doc: Value = match serde_json::from_str(&cur_b) {
                Ok(d) => d,
                Err(e) => {
                    unwatch(&mut c, &mut reusable).await;
                    return Err(RedisError::from((
                        redis::ErrorKind::Client,
                        "stored document is not JSON",
                        format!("{key}: {e}"),
                    )));
                }
            };
            merge_patch(&mut doc, patch);
            let body = serde_json::to_string(&doc).unwrap_or_default();
            if let Err((code, msg)) = check(&doc, &body) {
                unwatch(&mut c, &mut reusable).await;
                return Ok(Tx::Finished(Write::Invalid { code, msg }));
            }
            if let Ok(mut w) = written.lock() {
                *w = Some(body.clone());
            }
            let r: Option<RValue> = redis::pipe()
                .atomic()
                .cmd("HSET")
                .arg(key)
                .arg("v")
                .arg(version)
                .arg("b")
                .arg(&body)
                .ignore()
                .query_async(&mut c)
                .await?;
            Ok(match r {
                None => Tx::Conflict,
                Some(_) => Tx::Finished(Write::Done {
                    created: false,
                    version: version.clone(),
                    body,
                }),
            })
        }
        .await;
        (TxConn { conn: c, reusable }, r)
    })
    .await
}

/// Deletes a document. After an attempt with an unknown outcome, a missing document counts as
/// deleted by that attempt.
pub async fn delete(db: &Db, coll: &str, id: &str, pre: &Preconditions) -> Result<Write, DbError> {
    let key = doc_key(coll, id);
    let key = &key;
    let done = || Write::Done {
        created: false,
        version: String::new(),
        body: String::new(),
    };
    if pre.is_empty() {
        let n: i64 = db
            .run(ReadMode::Linearizable, |mut c, outcome| async move {
                let n: i64 = redis::cmd("DEL").arg(key).query_async(&mut c).await?;
                Ok(if outcome == Outcome::Unknown { 1 } else { n })
            })
            .await?;
        return Ok(if n > 0 { done() } else { Write::NotFound });
    }
    cas_loop(db, key, |tx, outcome| async move {
        let mut c = tx.conn;
        let mut reusable = true;
        let r = async {
            let cur = watch_version(&mut c, key).await?;
            let Some(cur) = cur else {
                unwatch(&mut c, &mut reusable).await;
                return Ok(Tx::Finished(if outcome == Outcome::Unknown {
                    done()
                } else if !pre.ok(None) {
                    Write::PreconditionFailed
                } else {
                    Write::NotFound
                }));
            };
            if !pre.ok(Some(&cur)) {
                unwatch(&mut c, &mut reusable).await;
                return Ok(Tx::Finished(Write::PreconditionFailed));
            }
            let r: Option<RValue> = redis::pipe()
                .atomic()
                .cmd("DEL")
                .arg(key)
                .ignore()
                .query_async(&mut c)
                .await?;
            Ok(match r {
                None => Tx::Conflict,
                Some(_) => Tx::Finished(done()),
            })
        }
        .await;
        (TxConn { conn: c, reusable }, r)
    })
    .await
}

/// A check of a patched document: `Err((code, message))` if it breaks a limit.
pub type DocCheck<'a> = dyn Fn(&Value, &str) -> Result<(), (&'static str, String)> + Sync + 'a;

/// RFC 7386 JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(serde_json::Map::new());
    }
    if let Value::Object(t) = target {
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// An equality filter on a top-level field: a string field equals the text; any other value
/// equals it when its JSON text is the text (`n=5`, `done=true`, `x=null`).
pub fn matches(doc: &Value, filters: &[(String, String)]) -> bool {
    filters.iter().all(|(field, want)| match doc.get(field) {
        Some(Value::String(s)) => s == want,
        Some(Value::Array(_) | Value::Object(_)) | None => false,
        Some(other) => serde_json::from_str::<Value>(want).is_ok_and(|w| w == *other),
    })
}

/// One page of a list.
#[derive(Debug, Clone)]
pub struct Page {
    pub items: Vec<(String, Doc, Value)>,
    /// Cursor of the next page; `None` when the scan is complete.
    pub next: Option<u64>,
}

/// Lists a collection from `cursor` (0 = start): SCAN with MATCH, then the documents, then the
/// filters. Stops once `limit` items are found, the scan is complete, or after a bounded amount
/// of scanning (then the page may be short, even empty, with a cursor to go on).
pub async fn list(
    db: &Db,
    mode: ReadMode,
    coll: &str,
    cursor: u64,
    limit: usize,
    filters: &[(String, String)],
) -> Result<Page, DbError> {
    let pattern = format!("doc:{coll}:*");
    let prefix_len = pattern.len() - 1;
    let pattern = &pattern;
    db.run(mode, |mut c, _| async move {
        let mut cur = cursor;
        let mut items: Vec<(String, Doc, Value)> = Vec::new();
        let count = limit.clamp(10, 1000);
        for _round in 0..32 {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cur)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(count)
                .query_async(&mut c)
                .await?;
            cur = next;
            if !keys.is_empty() {
                let mut p = redis::pipe();
                for k in &keys {
                    p.cmd("HMGET").arg(k).arg("v").arg("b");
                }
                let docs: Vec<(Option<String>, Option<String>)> = p.query_async(&mut c).await?;
                for (k, (v, b)) in keys.iter().zip(docs) {
                    let (Some(version), Some(body)) = (v, b) else {
                        continue; // deleted since the scan saw it
                    };
                    let Ok(value) = serde_json::from_str::<Value>(&body) else {
                        tracing::warn!(key = %k, "skipping a stored document that is not JSON");
                        continue;
                    };
                    if !matches(&value, filters) {
                        continue;
                    }
                    let id = k.get(prefix_len..).unwrap_or_default().to_string();
                    if items.iter().any(|(i, _, _)| *i == id) {
                        continue;
                    }
                    items.push((id, Doc { version, body }, value));
                }
            }
            if cur == 0 || items.len() >= limit {
                break;
            }
        }
        Ok(Page {
            items,
            next: (cur != 0).then_some(cur),
        })
    })
    .await
}
