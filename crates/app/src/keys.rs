//! API keys per client application, stored in the db.
//!
//! Key layout: one hash per key, `apikey:<id>`, fields `name`, `hash` (SHA-256 of the secret,
//! hex), `created` (Unix seconds) and `revoked` (Unix seconds, 0 while valid). The token a
//! client sends is `cit_<id>_<secret>`; the secret itself is never stored.
//! These functions are what `citadel app key create|list|revoke` calls.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::db::{Db, DbError, ReadMode};
use crate::store::new_id;

/// One API key as listed (never with its secret).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ApiKey {
    pub id: String,
    pub name: String,
    /// Unix seconds.
    pub created: u64,
    /// Unix seconds of the revocation, if revoked.
    pub revoked: Option<u64>,
}

/// What a presented token is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyStatus {
    Valid { id: String },
    Revoked { id: String },
    Unknown,
}

fn key_key(id: &str) -> String {
    format!("apikey:{id}")
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn hash_secret(secret: &str) -> String {
    let d = Sha256::digest(secret.as_bytes());
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Splits `cit_<id>_<secret>`.
fn split_token(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix("cit_")?;
    let (id, secret) = rest.split_once('_')?;
    let ok = |s: &str| !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
    (ok(id) && ok(secret)).then_some((id, secret))
}

/// Creates a key for a client application; returns it and the token (shown once).
pub async fn create(db: &Db, name: &str) -> Result<(ApiKey, String), DbError> {
    let id = new_id()[..12].to_string();
    let secret = format!("{}{}", new_id(), new_id());
    let token = format!("cit_{id}_{secret}");
    let key = ApiKey {
        id: id.clone(),
        name: name.to_string(),
        created: now(),
        revoked: None,
    };
    let k = key_key(&id);
    let hash = hash_secret(&secret);
    let (k, hash, key_ref) = (&k, &hash, &key);
    db.run(ReadMode::Linearizable, |mut c, _| async move {
        redis::cmd("HSET")
            .arg(k)
            .arg("name")
            .arg(&key_ref.name)
            .arg("hash")
            .arg(hash)
            .arg("created")
            .arg(key_ref.created)
            .arg("revoked")
            .arg(0)
            .query_async::<()>(&mut c)
            .await
    })
    .await?;
    Ok((key, token))
}

/// Lists every key, sorted by creation time then id.
pub async fn list(db: &Db) -> Result<Vec<ApiKey>, DbError> {
    let mut out = db
        .run(ReadMode::Linearizable, |mut c, _| async move {
            let mut cursor = 0u64;
            let mut ids = Vec::new();
            loop {
                let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg("apikey:*")
                    .arg("COUNT")
                    .arg(500)
                    .query_async(&mut c)
                    .await?;
                ids.extend(keys);
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
            ids.sort();
            ids.dedup();
            let mut out = Vec::new();
            for k in ids {
                let (name, created, revoked): (Option<String>, Option<u64>, Option<u64>) =
                    redis::cmd("HMGET")
                        .arg(&k)
                        .arg("name")
                        .arg("created")
                        .arg("revoked")
                        .query_async(&mut c)
                        .await?;
                let Some(name) = name else { continue };
                out.push(ApiKey {
                    id: k.trim_start_matches("apikey:").to_string(),
                    name,
                    created: created.unwrap_or(0),
                    revoked: revoked.filter(|r| *r > 0),
                });
            }
            Ok(out)
        })
        .await?;
    out.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
    Ok(out)
}

/// Revokes a key by id. Returns false if there is no such key. Revoking twice is harmless.
pub async fn revoke(db: &Db, id: &str) -> Result<bool, DbError> {
    let k = key_key(id);
    let k = &k;
    let at = now().max(1);
    db.run(ReadMode::Linearizable, |mut c, _| async move {
        let exists: bool = redis::cmd("EXISTS").arg(k).query_async(&mut c).await?;
        if !exists {
            return Ok(false);
        }
        let revoked: Option<u64> = redis::cmd("HGET")
            .arg(k)
            .arg("revoked")
            .query_async(&mut c)
            .await?;
        if revoked.unwrap_or(0) == 0 {
            redis::cmd("HSET")
                .arg(k)
                .arg("revoked")
                .arg(at)
                .query_async::<()>(&mut c)
                .await?;
        }
        Ok(true)
    })
    .await
}

/// Checks a token against the db.
pub async fn verify(db: &Db, token: &str) -> Result<KeyStatus, DbError> {
    let Some((id, secret)) = split_token(token) else {
        return Ok(KeyStatus::Unknown);
    };
    let k = key_key(id);
    let k = &k;
    let (hash, revoked): (Option<String>, Option<u64>) = db
        .run(ReadMode::Linearizable, |mut c, _| async move {
            redis::cmd("HMGET")
                .arg(k)
                .arg("hash")
                .arg("revoked")
                .query_async(&mut c)
                .await
        })
        .await?;
    let Some(hash) = hash else {
        return Ok(KeyStatus::Unknown);
    };
    if !constant_time_eq(hash.as_bytes(), hash_secret(secret).as_bytes()) {
        return Ok(KeyStatus::Unknown);
    }
    Ok(if revoked.unwrap_or(0) > 0 {
        KeyStatus::Revoked { id: id.to_string() }
    } else {
        KeyStatus::Valid { id: id.to_string() }
    })
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Remembers key checks for a short time so that not every request costs a db read.
pub struct KeyCache {
    ttl: Duration,
    entries: Mutex<HashMap<String, (Instant, KeyStatus)>>,
}

impl KeyCache {
    pub fn new(ttl: Duration) -> KeyCache {
        KeyCache {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    pub async fn check(&self, db: &Db, token: &str) -> Result<KeyStatus, DbError> {
        if self.ttl.is_zero() {
            return verify(db, token).await;
        }
        let h = hash_secret(token);
        if let Ok(map) = self.entries.lock()
            && let Some((at, st)) = map.get(&h)
            && at.elapsed() < self.ttl
        {
            return Ok(st.clone());
        }
        let st = verify(db, token).await?;
        if let Ok(mut map) = self.entries.lock() {
            if map.len() > 10_000 {
                map.retain(|_, (at, _)| at.elapsed() < self.ttl);
                if map.len() > 10_000 {
                    map.clear();
                }
            }
            map.insert(h, (Instant::now(), st.clone()));
        }
        Ok(st)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_split_only_when_well_formed() {
        assert_eq!(split_token("cit_ab12_cd34"), Some(("ab12", "cd34")));
        assert_eq!(split_token("cit_ab12"), None);
        assert_eq!(split_token("xyz_ab12_cd34"), None);
        assert_eq!(split_token("cit__cd34"), None);
        assert_eq!(split_token("cit_zz_cd34"), None);
    }
}
