//! Object and bucket metadata in the db (Raft, linearizable), through the stock `redis` crate.
//!
//! Layout (the db has strings and hashes today; listing is built from one hash per bucket):
//! - `s3:buckets` — hash: bucket name → `BucketMeta` (JSON)
//! - `s3:objects:<bucket>` — hash: object key → `ObjectMeta` (JSON)
//! - `s3:keys` — hash: access key id → `AccessKey` (JSON)

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::Error;
use crate::config::DbConfig;

pub const BUCKETS: &str = "s3:buckets";
pub const KEYS: &str = "s3:keys";

pub fn objects_key(bucket: &str) -> String {
    format!("s3:objects:{bucket}")
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BucketMeta {
    /// Unix seconds.
    pub created: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ObjectMeta {
    pub size: u64,
    /// Hex MD5 of the content (the S3 ETag, without quotes).
    pub etag: String,
    pub content_type: Option<String>,
    #[serde(default)]
    pub user_meta: std::collections::BTreeMap<String, String>,
    /// Unix seconds.
    pub modified: i64,
    /// SHA-256 names of the content blocks, in order; each at most `MAX_BLOCK` bytes.
    pub blocks: Vec<String>,
    /// Size of each block (to find the blocks a Range needs without reading them).
    pub block_sizes: Vec<u64>,
    /// Cache-Control, Content-Disposition/-Encoding/-Language and Expires as PUT.
    #[serde(default, skip_serializing_if = "HttpHeaders::is_empty")]
    pub headers: HttpHeaders,
    /// A multipart object: the upload it completed (so a retried Complete is answered
    /// again) and each part's size, in order (GET/HEAD `partNumber`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload_id: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub part_sizes: Vec<u64>,
    /// The x-amz-checksum-* values of the content (verified when it was written): a PUT's
    /// whole-object ones, or a multipart object's composite (a checksum of its parts'
    /// checksums, "…-N"); returned with `x-amz-checksum-mode: ENABLED`.
    #[serde(default, skip_serializing_if = "Checksums::is_empty")]
    pub checksums: Checksums,
    /// A multipart object's parts' checksums, in order (GET/HEAD `partNumber`,
    /// GetObjectAttributes); empty when no part had one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub part_checksums: Vec<Checksums>,
}

/// Stored x-amz-checksum-* values (base64, as S3 sends them) and their type.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Checksums {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crc32: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crc32c: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crc64nvme: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha1: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// `COMPOSITE` (a multipart object's checksum of its parts') or `FULL_OBJECT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

impl Checksums {
    pub fn is_empty(&self) -> bool {
        *self == Checksums::default()
    }

    pub fn from_dto(c: s3s::dto::Checksum, kind: &str) -> Checksums {
        let mut out = Checksums {
            crc32: c.checksum_crc32,
            crc32c: c.checksum_crc32c,
            crc64nvme: c.checksum_crc64nvme,
            sha1: c.checksum_sha1,
            sha256: c.checksum_sha256,
            kind: None,
        };
        if !out.is_empty() {
            out.kind = Some(kind.to_string());
        }
        out
    }

    /// The value of one algorithm (`CRC32`, `CRC32C`, `CRC64NVME`, `SHA1`, `SHA256`).
    pub fn get(&self, alg: &str) -> Option<&String> {
        match alg.to_ascii_uppercase().as_str() {
            "CRC32" => self.crc32.as_ref(),
            "CRC32C" => self.crc32c.as_ref(),
            "CRC64NVME" => self.crc64nvme.as_ref(),
            "SHA1" => self.sha1.as_ref(),
            "SHA256" => self.sha256.as_ref(),
            _ => None,
        }
    }

    pub fn set(&mut self, alg: &str, value: String) {
        let slot = match alg.to_ascii_uppercase().as_str() {
            "CRC32" => &mut self.crc32,
            "CRC32C" => &mut self.crc32c,
            "CRC64NVME" => &mut self.crc64nvme,
            "SHA1" => &mut self.sha1,
            "SHA256" => &mut self.sha256,
            _ => return,
        };
        *slot = Some(value);
    }
}

impl ObjectMeta {
    /// Byte range of part `n` (1-based): a multipart object's part, or the whole of a
    /// single-part object as its part 1. `None`: no such part.
    pub fn part_range(&self, n: i32) -> Option<std::ops::Range<u64>> {
        if self.part_sizes.is_empty() {
            return (n == 1).then_some(0..self.size);
        }
        let i = usize::try_from(n).ok()?.checked_sub(1)?;
        let start: u64 = self.part_sizes.get(..i)?.iter().sum();
        Some(start..start + self.part_sizes.get(i)?)
    }
}

/// The standard headers S3 stores with an object and sends back on GET and HEAD.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HttpHeaders {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_control: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_disposition: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_encoding: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_language: Option<String>,
    /// Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<i64>,
}

impl HttpHeaders {
    pub fn is_empty(&self) -> bool {
        *self == HttpHeaders::default()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccessKey {
    pub name: String,
    /// SigV4 needs the secret itself (HMAC), so it cannot be stored as a one-way hash.
    pub secret: String,
    pub created: i64,
}

/// A db client: one multiplexed connection, re-made on failure against the next member,
/// within a bounded retry budget.
pub struct Db {
    members: Vec<(String, u16)>,
    password: Option<String>,
    conn: Mutex<Option<MultiplexedConnection>>,
}

const RETRY_BUDGET: Duration = Duration::from_secs(8);

impl Db {
    pub fn new(cfg: &DbConfig) -> Result<Db, Error> {
        let mut members = Vec::new();
        for a in &cfg.addrs {
            let (h, p) = a
                .rsplit_once(':')
                .ok_or_else(|| Error::Config(format!("db address {a:?}: expected host:port")))?;
            let p: u16 = p
                .parse()
                .map_err(|_| Error::Config(format!("db address {a:?}: bad port")))?;
            members.push((h.to_string(), p));
        }
        if members.is_empty() {
            return Err(Error::Config("[db] addrs is empty".into()));
        }
        Ok(Db {
            members,
            password: cfg.password.clone(),
            conn: Mutex::new(None),
        })
    }

    async fn connect(&self) -> Result<MultiplexedConnection, String> {
        let mut last = String::new();
        for (h, p) in &self.members {
            let mut settings = RedisConnectionInfo::default();
            if let Some(pw) = &self.password {
                settings = settings.set_password(pw);
            }
            let info = match ConnectionAddr::Tcp(h.clone(), *p).into_connection_info() {
                Ok(i) => i.set_redis_settings(settings),
                Err(e) => {
                    last = format!("{h}:{p}: {e}");
                    continue;
                }
            };
            let client = match redis::Client::open(info) {
                Ok(c) => c,
                Err(e) => {
                    last = format!("{h}:{p}: {e}");
                    continue;
                }
            };
            let cfg = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(1)))
                .set_response_timeout(Some(Duration::from_secs(3)));
            match client
                .get_multiplexed_async_connection_with_config(&cfg)
                .await
            {
                Ok(c) => return Ok(c),
                Err(e) => last = format!("{h}:{p}: {e}"),
            }
        }
        Err(last)
    }

    /// Runs one command, reconnecting on I/O errors until the retry budget is spent.
    /// A write whose reply was lost may be applied twice: every write here is idempotent
    /// (HSET of a whole value, HDEL).
    pub async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, Error> {
        let deadline = tokio::time::Instant::now() + RETRY_BUDGET;
        let mut backoff = Duration::from_millis(50);
        loop {
            let conn = {
                let mut slot = self.conn.lock().await;
                match slot.as_ref() {
                    Some(c) => Ok(c.clone()),
                    None => match self.connect().await {
                        Ok(c) => {
                            *slot = Some(c.clone());
                            Ok(c)
                        }
                        Err(e) => Err(e),
                    },
                }
            };
            let err = match conn {
                Ok(mut c) => match cmd.query_async::<T>(&mut c).await {
                    Ok(v) => return Ok(v),
                    Err(e) if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() => {
                        *self.conn.lock().await = None;
                        e.to_string()
                    }
                    Err(e) => return Err(Error::Db(e.to_string())),
                },
                Err(e) => e,
            };
            if tokio::time::Instant::now() + backoff > deadline {
                return Err(Error::Db(format!("db unavailable: {err}")));
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(800));
        }
    }

    pub async fn hget_json<T: serde::de::DeserializeOwned>(
        &self,
        hash: &str,
        field: &str,
    ) -> Result<Option<T>, Error> {
        let v: Option<String> = self.query(redis::cmd("HGET").arg(hash).arg(field)).await?;
        match v {
            None => Ok(None),
            Some(s) => serde_json::from_str(&s)
                .map(Some)
                .map_err(|e| Error::Db(format!("{hash}/{field}: unreadable record: {e}"))),
        }
    }

    pub async fn hset_json<T: Serialize>(
        &self,
        hash: &str,
        field: &str,
        v: &T,
    ) -> Result<(), Error> {
        let s = serde_json::to_string(v).map_err(|e| Error::Db(e.to_string()))?;
        self.query::<()>(redis::cmd("HSET").arg(hash).arg(field).arg(s))
            .await
    }

    /// The raw record of a hash field (to compare-and-set it with `hset_if`).
    pub async fn hget_raw(&self, hash: &str, field: &str) -> Result<Option<String>, Error> {
        self.query(redis::cmd("HGET").arg(hash).arg(field)).await
    }

    /// Sets a hash field to `value` (or deletes it: `None`) only while it still holds
    /// `expected` (`None`: absent), atomically — one script run in the db, as a compare-and-
    /// set; true when it did. (A retry after a lost answer reads false for a write that
    /// happened: the caller then reports a failed precondition for a write that took.)
    pub async fn hset_if(
        &self,
        hash: &str,
        field: &str,
        expected: Option<&str>,
        value: Option<&str>,
    ) -> Result<bool, Error> {
        const SCRIPT: &str = "local cur = redis.call('HGET', KEYS[1], ARGV[1]) \
            if ARGV[2] == '1' then if cur ~= ARGV[3] then return 0 end \
            elseif cur then return 0 end \
            if ARGV[4] == '1' then redis.call('HSET', KEYS[1], ARGV[1], ARGV[5]) \
            else redis.call('HDEL', KEYS[1], ARGV[1]) end \
            return 1";
        let flag = |b: bool| if b { "1" } else { "0" };
        let done: i64 = self
            .query(
                redis::cmd("EVAL")
                    .arg(SCRIPT)
                    .arg(1)
                    .arg(hash)
                    .arg(field)
                    .arg(flag(expected.is_some()))
                    .arg(expected.unwrap_or(""))
                    .arg(flag(value.is_some()))
                    .arg(value.unwrap_or("")),
            )
            .await?;
        Ok(done == 1)
    }

    /// Sets only when absent; true when this call created it.
    pub async fn hsetnx_json<T: Serialize>(
        &self,
        hash: &str,
        field: &str,
        v: &T,
    ) -> Result<bool, Error> {
        let s = serde_json::to_string(v).map_err(|e| Error::Db(e.to_string()))?;
        self.query(redis::cmd("HSETNX").arg(hash).arg(field).arg(s))
            .await
    }

    pub async fn hdel(&self, hash: &str, field: &str) -> Result<bool, Error> {
        let n: i64 = self.query(redis::cmd("HDEL").arg(hash).arg(field)).await?;
        Ok(n > 0)
    }

    pub async fn hkeys(&self, hash: &str) -> Result<Vec<String>, Error> {
        self.query(redis::cmd("HKEYS").arg(hash)).await
    }

    pub async fn hlen(&self, hash: &str) -> Result<i64, Error> {
        self.query(redis::cmd("HLEN").arg(hash)).await
    }

    pub async fn hgetall_json<T: serde::de::DeserializeOwned>(
        &self,
        hash: &str,
    ) -> Result<Vec<(String, T)>, Error> {
        let v: Vec<(String, String)> = self.query(redis::cmd("HGETALL").arg(hash)).await?;
        v.into_iter()
            .map(|(k, s)| {
                serde_json::from_str(&s)
                    .map(|t| (k.clone(), t))
                    .map_err(|e| Error::Db(format!("{hash}/{k}: unreadable record: {e}")))
            })
            .collect()
    }
}

pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
