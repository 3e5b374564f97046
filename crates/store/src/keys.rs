//! Access keys (`citadel store key create|list|revoke`), in the db hash `s3:keys`.

use serde::Serialize;

use crate::Error;
use crate::meta::{AccessKey, Db, KEYS, now_secs};

#[derive(Debug, Serialize)]
pub struct KeyInfo {
    pub access_key: String,
    pub name: String,
    pub created: i64,
}

fn random_string(len: usize, alphabet: &[u8]) -> String {
    let mut raw = vec![0u8; len];
    getrandom::fill(&mut raw).expect("OS random source");
    // Rejection-free mapping is slightly biased for non-power-of-two alphabets; 62/64
    // symbols leave the secret's entropy well above 128 bits at 40 characters.
    raw.iter()
        .map(|b| alphabet[*b as usize % alphabet.len()] as char)
        .collect()
}

/// Creates a key; returns (access key id, secret). The secret is shown once.
pub async fn create(db: &Db, name: &str) -> Result<(String, String), Error> {
    let id = format!(
        "GK{}",
        random_string(18, b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
    );
    let secret = random_string(
        40,
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/",
    );
    let rec = AccessKey {
        name: name.to_string(),
        secret: secret.clone(),
        created: now_secs(),
    };
    if !db.hsetnx_json(KEYS, &id, &rec).await? {
        return Err(Error::Db(format!("access key {id} already exists (retry)")));
    }
    Ok((id, secret))
}

pub async fn list(db: &Db) -> Result<Vec<KeyInfo>, Error> {
    let mut v: Vec<KeyInfo> = db
        .hgetall_json::<AccessKey>(KEYS)
        .await?
        .into_iter()
        .map(|(id, k)| KeyInfo {
            access_key: id,
            name: k.name,
            created: k.created,
        })
        .collect();
    v.sort_by(|a, b| a.access_key.cmp(&b.access_key));
    Ok(v)
}

/// False when there was no such key.
pub async fn revoke(db: &Db, id: &str) -> Result<bool, Error> {
    db.hdel(KEYS, id).await
}

/// Access beyond the signature (which `DbAuth` checks): every request must be signed, and a
/// presigned URL may live at most 7 days (SigV4's limit, which S3 enforces: a longer
/// `X-Amz-Expires` is refused rather than honoured).
pub struct Access;

pub const MAX_PRESIGNED_SECS: u64 = 7 * 24 * 3600;

#[async_trait::async_trait]
impl s3s::access::S3Access for Access {
    async fn check(&self, cx: &mut s3s::access::S3AccessContext<'_>) -> s3s::S3Result<()> {
        if cx.credentials().is_none() {
            return Err(s3s::s3_error!(AccessDenied, "Signature is required"));
        }
        let expires = cx.uri().query().and_then(|q| {
            q.split('&')
                .find_map(|kv| kv.strip_prefix("X-Amz-Expires="))
        });
        if let Some(v) = expires
            && v.parse::<u64>().map_or(true, |s| s > MAX_PRESIGNED_SECS)
        {
            return Err(s3s::s3_error!(
                AccessDenied,
                "X-Amz-Expires must be at most {MAX_PRESIGNED_SECS} seconds"
            ));
        }
        Ok(())
    }
}
