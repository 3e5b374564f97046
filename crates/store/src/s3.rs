//! The S3 operations (s3s does the HTTP, SigV4, presigned URLs and aws-chunked decoding;
//! storage, listing and conditions are ours).

use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use md5::{Digest, Md5};
use s3s::dto::*;
use s3s::{S3, S3Error, S3Request, S3Response, S3Result, s3_error};

use crate::Error;
use crate::blocks::{Block, BlockStore, MAX_BLOCK};
use crate::meta::{BUCKETS, BucketMeta, Checksums, Db, ObjectMeta, now_secs, objects_key};
use crate::replicas::Replicas;
use crate::stats::{Stats, bump};

#[derive(Clone)]
pub struct Store {
    pub db: Arc<Db>,
    pub blocks: BlockStore,
    /// Every server's disk (where each block's copies go: `placement`) and the spare's.
    pub remote: Arc<Replicas>,
    pub region: String,
    pub stats: Arc<Stats>,
    /// See `gc`: how long an unreferenced block is kept.
    pub gc_grace: Duration,
    pub scrub_lock: Arc<tokio::sync::Mutex<()>>,
}

/// A body cut into blocks, on both disks; `started` is before the first block was written.
pub(crate) struct Stored {
    pub blocks: Vec<String>,
    pub sizes: Vec<u64>,
    pub total: u64,
    pub md5: [u8; 16],
    pub started: Instant,
    /// The x-amz-checksum-* values the body was checked against (whole-object ones).
    pub checksums: Checksums,
}

pub(crate) fn internal(e: Error) -> S3Error {
    tracing::error!(error = %e, "store request failed");
    match e {
        Error::Db(m) | Error::Peer(m) => s3_error!(ServiceUnavailable, "{m}"),
        other => s3_error!(InternalError, "{other}"),
    }
}

pub(crate) fn ts(secs: i64) -> Timestamp {
    Timestamp::from(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs.max(0) as u64))
}

pub(crate) fn quoted(etag: &str) -> ETag {
    ETag::Strong(etag.to_string())
}

/// The stored standard headers from a PutObject, CopyObject (REPLACE) or
/// CreateMultipartUpload input. `aws-chunked` is how the body was sent, not how it is
/// stored: it is dropped from Content-Encoding (S3 does the same).
macro_rules! headers_of {
    ($i:expr) => {
        $crate::meta::HttpHeaders {
            cache_control: $i.cache_control.clone(),
            content_disposition: $i.content_disposition.clone(),
            content_encoding: $crate::s3::stored_encoding($i.content_encoding.as_deref()),
            content_language: $i.content_language.clone(),
            expires: $i
                .expires
                .clone()
                .map(|t| time::OffsetDateTime::from(t).unix_timestamp()),
        }
    };
}
pub(crate) use headers_of;

pub(crate) fn stored_encoding(e: Option<&str>) -> Option<String> {
    let e = e?;
    let tokens: Vec<&str> = e.split(',').map(str::trim).collect();
    if !tokens.iter().any(|t| t.eq_ignore_ascii_case("aws-chunked")) {
        return Some(e.to_string()); // as sent
    }
    let kept: Vec<&str> = tokens
        .into_iter()
        .filter(|t| !t.is_empty() && !t.eq_ignore_ascii_case("aws-chunked"))
        .collect();
    (!kept.is_empty()).then(|| kept.join(", "))
}

impl Store {
    pub(crate) async fn bucket_exists(&self, bucket: &str) -> S3Result<()> {
        match self.db.hget_json::<BucketMeta>(BUCKETS, bucket).await {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(s3_error!(NoSuchBucket, "no bucket named {bucket}")),
            Err(e) => Err(internal(e)),
        }
    }

    pub(crate) async fn object(&self, bucket: &str, key: &str) -> S3Result<ObjectMeta> {
        self.bucket_exists(bucket).await?;
        match self
            .db
            .hget_json::<ObjectMeta>(&objects_key(bucket), key)
            .await
        {
            Ok(Some(m)) => Ok(m),
            Ok(None) => Err(s3_error!(NoSuchKey, "no object {key} in {bucket}")),
            Err(e) => Err(internal(e)),
        }
    }

    /// One block on the disks of its two placed servers (`placement`; a fallback for one
    /// that is down: the next server, then the spare), fsynced, before returning.
    async fn write_block(&self, data: Bytes) -> Result<String, Error> {
        let block = Block::new(data);
        self.remote.put(&block, &self.blocks).await?;
        Ok(block.hash().to_string())
    }

    /// The local copy, else another server's (placed ones first). When this server is one
    /// of the block's placed holders, that copy then replaces its missing or rotten one
    /// (read repair) without delaying the reply.
    async fn read_block(&self, hash: &str) -> Result<Bytes, Error> {
        if let Some(b) = self.blocks.get(hash).await? {
            return Ok(b);
        }
        if let Some(b) = self.remote.get(hash).await? {
            if self.remote.placed_here(hash) {
                let (me, copy) = (self.clone(), b.clone());
                tokio::spawn(async move {
                    match me.blocks.repair(&copy).await {
                        Ok(()) => bump(&me.stats.read_repairs, 1),
                        Err(e) => {
                            tracing::warn!(error = %e, block = %copy.hash(), "read repair failed")
                        }
                    }
                });
            }
            return Ok(b.into_data());
        }
        Err(Error::Io(format!("block {hash} is on no server")))
    }

    /// Makes sure GC cannot have taken, nor take, the blocks a metadata commit is about to
    /// name (the rule is in `gc`): a writer that started less than a quarter of the grace
    /// ago may commit; a slower one (or `always`, for a copy of old blocks) touches every
    /// copy of every block first, and fails if a block has fewer than two copies left.
    pub(crate) async fn keep_blocks(
        &self,
        blocks: &[String],
        started: Instant,
        always: bool,
    ) -> S3Result<()> {
        if !always && started.elapsed() < self.gc_grace / 4 {
            return Ok(());
        }
        let mut names = blocks.to_vec();
        names.sort();
        names.dedup();
        let gone = self
            .remote
            .touch(&names, &self.blocks)
            .await
            .map_err(internal)?
            .len();
        if gone > 0 {
            return Err(s3_error!(
                ServiceUnavailable,
                "{gone} block(s) of this upload were collected while it stalled; retry it"
            ));
        }
        Ok(())
    }

    /// Reads the body into blocks (written to both servers as they fill).
    pub(crate) async fn store_body(
        &self,
        body: Option<StreamingBlob>,
        expected_len: Option<i64>,
        mut checks: BodyChecks,
    ) -> S3Result<Stored> {
        let started = Instant::now();
        let mut md5 = Md5::new();
        let mut blocks = Vec::new();
        let mut sizes = Vec::new();
        let mut total: u64 = 0;
        let mut buf = BytesMut::with_capacity(MAX_BLOCK);
        if let Some(mut body) = body {
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| body_error(&*e))?;
                md5.update(&chunk);
                checks.hasher.update(&chunk);
                total += chunk.len() as u64;
                let mut rest = &chunk[..];
                while !rest.is_empty() {
                    let take = (MAX_BLOCK - buf.len()).min(rest.len());
                    buf.extend_from_slice(&rest[..take]);
                    rest = &rest[take..];
                    if buf.len() == MAX_BLOCK {
                        let full = buf.split().freeze();
                        sizes.push(full.len() as u64);
                        blocks.push(self.write_block(full).await.map_err(internal)?);
                    }
                }
            }
        }
        if !buf.is_empty() {
            let last = buf.split().freeze();
            sizes.push(last.len() as u64);
            blocks.push(self.write_block(last).await.map_err(internal)?);
        }
        if let Some(n) = expected_len
            && n >= 0
            && n as u64 != total
        {
            return Err(s3_error!(
                IncompleteBody,
                "Content-Length said {n} bytes, the body had {total}"
            ));
        }
        let checksums = checks.verify()?;
        bump(&self.stats.puts, 1);
        bump(&self.stats.put_bytes, total);
        Ok(Stored {
            blocks,
            sizes,
            total,
            md5: md5.finalize().into(),
            started,
            checksums,
        })
    }

    /// Streams bytes `range` of an object, block by block (a task feeds a bounded channel,
    /// so a large GET holds at most a few blocks in memory).
    pub(crate) fn stream_range(
        &self,
        meta: &ObjectMeta,
        range: std::ops::Range<u64>,
    ) -> StreamingBlob {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(2);
        let me = self.clone();
        let blocks: Vec<(String, u64)> = meta
            .blocks
            .iter()
            .cloned()
            .zip(meta.block_sizes.iter().copied())
            .collect();
        tokio::spawn(async move {
            let mut offset = 0u64;
            for (hash, size) in blocks {
                let (start, end) = (offset, offset + size);
                offset = end;
                if end <= range.start || start >= range.end {
                    continue;
                }
                let data = match me.read_block(&hash).await {
                    Ok(d) => d,
                    Err(e) => {
                        tracing::error!(error = %e, "GET cannot read a block");
                        let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                        return;
                    }
                };
                let from = range.start.saturating_sub(start) as usize;
                let to = (range.end.min(end) - start) as usize;
                if tx.send(Ok(data.slice(from..to))).await.is_err() {
                    return;
                }
            }
        });
        StreamingBlob::wrap(ChannelStream(rx))
    }
}

struct ChannelStream(tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>);

impl futures::Stream for ChannelStream {
    type Item = Result<Bytes, std::io::Error>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

/// The x-amz-checksum-* values a body must match: given as headers, or as trailers after an
/// aws-chunked body (named in x-amz-trailer). s3s verifies signatures and chunk signatures
/// but not these, so we compute each one named and compare.
pub(crate) struct BodyChecks {
    hasher: s3s::checksum::ChecksumHasher,
    headers: Checksum,
    trailers: Option<s3s::TrailingHeaders>,
}

const ALGORITHMS: [&str; 5] = ["crc32", "crc32c", "crc64nvme", "sha1", "sha256"];

impl BodyChecks {
    pub(crate) fn new<T>(req: &S3Request<T>, headers: Checksum) -> BodyChecks {
        let trailer_names: String = req
            .headers
            .get_all("x-amz-trailer")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join(",")
            .to_ascii_lowercase();
        let wanted = |alg: &str, given: bool| {
            given
                || trailer_names
                    .split(',')
                    .any(|n| n.trim() == format!("x-amz-checksum-{alg}"))
        };
        use s3s::crypto::Checksum as _;
        let mut hasher = s3s::checksum::ChecksumHasher::default();
        if wanted(ALGORITHMS[0], headers.checksum_crc32.is_some()) {
            hasher.crc32 = Some(s3s::crypto::Crc32::new());
        }
        if wanted(ALGORITHMS[1], headers.checksum_crc32c.is_some()) {
            hasher.crc32c = Some(s3s::crypto::Crc32c::new());
        }
        if wanted(ALGORITHMS[2], headers.checksum_crc64nvme.is_some()) {
            hasher.crc64nvme = Some(s3s::crypto::Crc64Nvme::new());
        }
        if wanted(ALGORITHMS[3], headers.checksum_sha1.is_some()) {
            hasher.sha1 = Some(s3s::crypto::Sha1::new());
        }
        if wanted(ALGORITHMS[4], headers.checksum_sha256.is_some()) {
            hasher.sha256 = Some(s3s::crypto::Sha256::new());
        }
        BodyChecks {
            hasher,
            headers,
            trailers: req.trailing_headers.clone(),
        }
    }

    /// Checks nothing: a body the store itself produces (UploadPartCopy).
    pub(crate) fn none() -> BodyChecks {
        BodyChecks {
            hasher: s3s::checksum::ChecksumHasher::default(),
            headers: Checksum::default(),
            trailers: None,
        }
    }

    /// Checks every named checksum; the values, to store with the object.
    fn verify(self) -> S3Result<Checksums> {
        let got = self.hasher.finalize();
        let trailer = |alg: &str| {
            self.trailers.as_ref().and_then(|t| {
                t.read(|h| {
                    h.get(format!("x-amz-checksum-{alg}"))
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string)
                })
                .flatten()
            })
        };
        let stored = Checksums::from_dto(got.clone(), "FULL_OBJECT");
        let pairs = [
            (
                ALGORITHMS[0],
                got.checksum_crc32,
                self.headers.checksum_crc32,
            ),
            (
                ALGORITHMS[1],
                got.checksum_crc32c,
                self.headers.checksum_crc32c,
            ),
            (
                ALGORITHMS[2],
                got.checksum_crc64nvme,
                self.headers.checksum_crc64nvme,
            ),
            (ALGORITHMS[3], got.checksum_sha1, self.headers.checksum_sha1),
            (
                ALGORITHMS[4],
                got.checksum_sha256,
                self.headers.checksum_sha256,
            ),
        ];
        for (alg, computed, header) in pairs {
            let Some(computed) = computed else { continue };
            let Some(want) = header.or_else(|| trailer(alg)) else {
                return Err(s3_error!(
                    InvalidRequest,
                    "x-amz-trailer names x-amz-checksum-{alg} but the body did not end with it"
                ));
            };
            if want.trim() != computed {
                return Err(s3_error!(
                    BadDigest,
                    "the {} you specified did not match the calculated checksum",
                    alg.to_ascii_uppercase()
                ));
            }
        }
        Ok(stored)
    }
}

/// Fills the x-amz-checksum-* fields of an output from stored checksums.
macro_rules! set_checksums {
    ($out:expr, $c:expr) => {{
        let c: &$crate::meta::Checksums = $c;
        $out.checksum_crc32 = c.crc32.clone();
        $out.checksum_crc32c = c.crc32c.clone();
        $out.checksum_crc64nvme = c.crc64nvme.clone();
        $out.checksum_sha1 = c.sha1.clone();
        $out.checksum_sha256 = c.sha256.clone();
    }};
}
pub(crate) use set_checksums;

/// The checksums a GET or HEAD returns with `x-amz-checksum-mode: ENABLED`: the object's
/// (whole object asked), or part `n`'s (`partNumber`); none for a byte range.
fn checksums_for(
    meta: &ObjectMeta,
    mode: Option<&ChecksumMode>,
    part: Option<i32>,
    ranged: bool,
) -> Checksums {
    if mode.is_none_or(|m| m.as_str() != ChecksumMode::ENABLED) || ranged {
        return Checksums::default();
    }
    match part {
        Some(n) if !meta.part_sizes.is_empty() => {
            let mut c = usize::try_from(n - 1)
                .ok()
                .and_then(|i| meta.part_checksums.get(i))
                .cloned()
                .unwrap_or_default();
            if !c.is_empty() {
                c.kind = meta.checksums.kind.clone();
            }
            c
        }
        _ => meta.checksums.clone(),
    }
}

/// An ETag condition against a stored record (`*` matches any).
fn etag_matches(c: &ETagCondition, etag: &str) -> bool {
    match c {
        ETagCondition::Any => true,
        ETagCondition::ETag(t) => t.value().trim_matches('"') == etag,
    }
}

/// The preconditions of a conditional delete, against the stored record: `Ok(false)` when
/// there is nothing to delete (S3 answers 204 then, whatever the conditions).
fn delete_conditions(
    cur: Option<&str>,
    if_match: Option<&ETagCondition>,
    size: Option<i64>,
    modified: Option<&Timestamp>,
) -> S3Result<bool> {
    let Some(raw) = cur else { return Ok(false) };
    let m: ObjectMeta = serde_json::from_str(raw)
        .map_err(|e| internal(Error::Db(format!("bad object record: {e}"))))?;
    let ok = if_match.is_none_or(|c| etag_matches(c, &m.etag))
        && size.is_none_or(|n| n >= 0 && n as u64 == m.size)
        && modified.is_none_or(|t| odt(t).unix_timestamp() == m.modified);
    if ok {
        Ok(true)
    } else {
        Err(s3_error!(
            PreconditionFailed,
            "the object does not match the delete's conditions"
        ))
    }
}

/// The preconditions of a conditional write (PUT, CompleteMultipartUpload) against the
/// stored record: If-Match on a missing object is NoSuchKey, as S3 answers.
fn write_conditions(
    cur: Option<&str>,
    if_match: Option<&ETagCondition>,
    if_none_match: Option<&ETagCondition>,
) -> S3Result<()> {
    match cur {
        None if if_match.is_some() => Err(s3_error!(NoSuchKey, "If-Match on a missing object")),
        None => Ok(()),
        Some(raw) => {
            let m: ObjectMeta = serde_json::from_str(raw)
                .map_err(|e| internal(Error::Db(format!("bad object record: {e}"))))?;
            check_conditions(&m, if_match, if_none_match, None, None, false)
        }
    }
}

impl Store {
    /// Checks a write's If-Match / If-None-Match before its body is read (a sure failure
    /// stores nothing); `commit_object` checks them again, atomically.
    pub(crate) async fn precheck_write(
        &self,
        bucket: &str,
        key: &str,
        if_match: Option<&ETagCondition>,
        if_none_match: Option<&ETagCondition>,
    ) -> S3Result<()> {
        if if_match.is_none() && if_none_match.is_none() {
            return Ok(());
        }
        let cur = self
            .db
            .hget_raw(&objects_key(bucket), key)
            .await
            .map_err(internal)?;
        write_conditions(cur.as_deref(), if_match, if_none_match)
    }

    /// Writes an object's record. With If-Match / If-None-Match the record is read, the
    /// conditions checked against it and the new one set only if the record is still the
    /// one checked (compare-and-set in the db): two conditional writers never both win.
    pub(crate) async fn commit_object(
        &self,
        bucket: &str,
        key: &str,
        meta: &ObjectMeta,
        if_match: Option<&ETagCondition>,
        if_none_match: Option<&ETagCondition>,
    ) -> S3Result<()> {
        let hash = objects_key(bucket);
        if if_match.is_none() && if_none_match.is_none() {
            return self.db.hset_json(&hash, key, meta).await.map_err(internal);
        }
        let value = serde_json::to_string(meta).map_err(|e| internal(Error::Db(e.to_string())))?;
        let cur = self.db.hget_raw(&hash, key).await.map_err(internal)?;
        write_conditions(cur.as_deref(), if_match, if_none_match)?;
        if !self
            .db
            .hset_if(&hash, key, cur.as_deref(), Some(&value))
            .await
            .map_err(internal)?
        {
            return Err(s3_error!(
                PreconditionFailed,
                "the object changed while this conditional write ran"
            ));
        }
        Ok(())
    }

    /// Deletes an object's record, under conditions when any are given (compare-and-set,
    /// as `commit_object`).
    pub(crate) async fn delete_object_if(
        &self,
        bucket: &str,
        key: &str,
        if_match: Option<&ETagCondition>,
        size: Option<i64>,
        modified: Option<&Timestamp>,
    ) -> S3Result<()> {
        let hash = objects_key(bucket);
        if if_match.is_none() && size.is_none() && modified.is_none() {
            return self.db.hdel(&hash, key).await.map(|_| ()).map_err(internal);
        }
        let cur = self.db.hget_raw(&hash, key).await.map_err(internal)?;
        if !delete_conditions(cur.as_deref(), if_match, size, modified)? {
            return Ok(());
        }
        if !self
            .db
            .hset_if(&hash, key, cur.as_deref(), None)
            .await
            .map_err(internal)?
        {
            return Err(s3_error!(
                PreconditionFailed,
                "the object changed while this conditional delete ran"
            ));
        }
        Ok(())
    }
}

fn put_checksums(i: &PutObjectInput) -> Checksum {
    Checksum {
        checksum_crc32: i.checksum_crc32.clone(),
        checksum_crc32c: i.checksum_crc32c.clone(),
        checksum_crc64nvme: i.checksum_crc64nvme.clone(),
        checksum_sha1: i.checksum_sha1.clone(),
        checksum_sha256: i.checksum_sha256.clone(),
        ..Default::default()
    }
}

pub(crate) fn part_checksums(i: &UploadPartInput) -> Checksum {
    Checksum {
        checksum_crc32: i.checksum_crc32.clone(),
        checksum_crc32c: i.checksum_crc32c.clone(),
        checksum_crc64nvme: i.checksum_crc64nvme.clone(),
        checksum_sha1: i.checksum_sha1.clone(),
        checksum_sha256: i.checksum_sha256.clone(),
        ..Default::default()
    }
}

/// What a failed body read means. s3s (pinned at =0.14.1) reports payload-hash and chunk
/// signature failures as errors of the body stream whose types are private; their messages
/// are its stable names for them.
fn body_error(e: &(dyn std::error::Error + 'static)) -> S3Error {
    let text = e.to_string();
    if text.contains("Sha256Mismatch") {
        let mut err = S3Error::with_message(
            s3s::S3ErrorCode::Custom("XAmzContentSHA256Mismatch".into()),
            "the body does not match the x-amz-content-sha256 it was signed with",
        );
        err.set_status_code(hyper::StatusCode::BAD_REQUEST);
        err
    } else if text.contains("SignatureMismatch") {
        s3_error!(
            SignatureDoesNotMatch,
            "a chunk of the aws-chunked body has a wrong signature"
        )
    } else if text.contains("FormatError") || text.contains("ChunkMetaTooLarge") {
        s3_error!(InvalidRequest, "the aws-chunked body is malformed")
    } else {
        s3_error!(
            IncompleteBody,
            "the request body ended before its Content-Length: {text}"
        )
    }
}

pub(crate) fn check_content_md5(header: Option<&str>, md5: &[u8; 16]) -> S3Result<()> {
    let Some(h) = header else { return Ok(()) };
    let want = base64_simd::STANDARD
        .decode_to_vec(h.trim())
        .ok()
        .filter(|v| v.len() == 16)
        .ok_or_else(|| s3_error!(InvalidDigest, "Content-MD5 is not the base64 of 16 bytes"))?;
    if want[..] != md5[..] {
        return Err(s3_error!(
            BadDigest,
            "the Content-MD5 you specified did not match what we received"
        ));
    }
    Ok(())
}

/// If-Match / If-None-Match / If-(Un)Modified-Since, as RFC 9110 orders them.
pub(crate) fn check_conditions(
    meta: &ObjectMeta,
    if_match: Option<&ETagCondition>,
    if_none_match: Option<&ETagCondition>,
    if_modified_since: Option<&Timestamp>,
    if_unmodified_since: Option<&Timestamp>,
    read: bool,
) -> S3Result<()> {
    let etag = quoted(&meta.etag);
    let modified = ts(meta.modified);
    let matches = |c: &ETagCondition| match c {
        ETagCondition::Any => true,
        ETagCondition::ETag(t) => t.value() == etag.value(),
    };
    if let Some(c) = if_match {
        if !matches(c) {
            return Err(s3_error!(
                PreconditionFailed,
                "If-Match did not match the ETag"
            ));
        }
    } else if let Some(t) = if_unmodified_since
        && odt(&modified) > odt(t)
    {
        return Err(s3_error!(
            PreconditionFailed,
            "modified since If-Unmodified-Since"
        ));
    }
    if let Some(c) = if_none_match {
        if matches(c) {
            return Err(if read {
                not_modified(meta)
            } else {
                s3_error!(PreconditionFailed, "If-None-Match matched the ETag")
            });
        }
    } else if read
        && let Some(t) = if_modified_since
        && odt(&modified) <= odt(t)
    {
        return Err(not_modified(meta));
    }
    Ok(())
}

/// The bytes of part `n` (GET/HEAD `partNumber`).
fn part_of(meta: &ObjectMeta, n: i32) -> S3Result<std::ops::Range<u64>> {
    if !(1..=10000).contains(&n) {
        return Err(s3_error!(InvalidArgument, "partNumber must be 1 to 10000"));
    }
    meta.part_range(n).ok_or_else(|| {
        let mut e = S3Error::with_message(
            s3s::S3ErrorCode::Custom("InvalidPartNumber".into()),
            format!(
                "the requested part number is not satisfiable: the object has {} parts",
                meta.part_sizes.len().max(1)
            ),
        );
        e.set_status_code(hyper::StatusCode::RANGE_NOT_SATISFIABLE);
        e
    })
}

/// `x-amz-mp-parts-count` when a part was asked of a multipart object.
fn parts_count(meta: &ObjectMeta, part: Option<i32>) -> Option<i32> {
    (part.is_some() && !meta.part_sizes.is_empty()).then_some(meta.part_sizes.len() as i32)
}

/// 304 Not Modified, with the ETag and Last-Modified a 200 would have carried (RFC 9110
/// 15.4.5: a cache updates its stored response from them).
fn not_modified(meta: &ObjectMeta) -> S3Error {
    let mut e = S3Error::new(s3s::S3ErrorCode::Custom("NotModified".into()))
        .with_status(hyper::StatusCode::NOT_MODIFIED);
    let mut h = hyper::HeaderMap::new();
    if let Ok(v) = hyper::header::HeaderValue::from_str(&format!("\"{}\"", meta.etag)) {
        h.insert(hyper::header::ETAG, v);
    }
    let modified = odt(&ts(meta.modified));
    if let Ok(text) = modified.format(&time::format_description::well_known::Rfc2822)
        && let Ok(v) = hyper::header::HeaderValue::from_str(&text.replace("+0000", "GMT"))
    {
        h.insert(hyper::header::LAST_MODIFIED, v);
    }
    e.set_headers(h);
    e
}

fn odt(t: &Timestamp) -> time::OffsetDateTime {
    time::OffsetDateTime::from(t.clone())
}

trait WithStatus {
    fn with_status(self, s: hyper::StatusCode) -> Self;
}
impl WithStatus for S3Error {
    fn with_status(mut self, s: hyper::StatusCode) -> Self {
        self.set_status_code(s);
        self
    }
}

/// S3's bucket naming rules (3–63 chars of a-z 0-9 . -, start/end alphanumeric, not an IP).
fn check_bucket_name(b: &str) -> S3Result<()> {
    let ok = (3..=63).contains(&b.len())
        && b.bytes()
            .all(|c| matches!(c, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-'))
        && b.as_bytes()[0].is_ascii_alphanumeric()
        && b.as_bytes()[b.len() - 1].is_ascii_alphanumeric()
        && !b.contains("..")
        // Each dot-separated label starts and ends alphanumeric (a DNS name, for
        // virtual-host-style addressing).
        && !b.contains(".-")
        && !b.contains("-.")
        && b.parse::<std::net::Ipv4Addr>().is_err();
    if ok {
        Ok(())
    } else {
        Err(s3_error!(
            InvalidBucketName,
            "{b:?} is not a valid bucket name"
        ))
    }
}

#[async_trait::async_trait]
impl S3 for Store {
    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        self.mp_create(req).await
    }

    async fn upload_part_copy(
        &self,
        req: S3Request<UploadPartCopyInput>,
    ) -> S3Result<S3Response<UploadPartCopyOutput>> {
        self.mp_upload_part_copy(req).await
    }

    async fn get_object_attributes(
        &self,
        req: S3Request<GetObjectAttributesInput>,
    ) -> S3Result<S3Response<GetObjectAttributesOutput>> {
        let i = req.input;
        let meta = self.object(&i.bucket, &i.key).await?;
        // One header, comma-separated: s3s 0.14.1 may hand it over as one item.
        let want = |a: &str| {
            i.object_attributes
                .iter()
                .flat_map(|x| x.as_str().split(','))
                .any(|x| x.trim().eq_ignore_ascii_case(a))
        };
        let mut out = GetObjectAttributesOutput {
            last_modified: Some(ts(meta.modified)),
            ..Default::default()
        };
        if want(ObjectAttributes::ETAG) {
            out.e_tag = Some(quoted(&meta.etag));
        }
        if want(ObjectAttributes::OBJECT_SIZE) {
            out.object_size = Some(meta.size as i64);
        }
        if want(ObjectAttributes::STORAGE_CLASS) {
            out.storage_class = Some(StorageClass::from_static(StorageClass::STANDARD));
        }
        if want(ObjectAttributes::CHECKSUM) && !meta.checksums.is_empty() {
            let mut c = Checksum {
                checksum_type: meta.checksums.kind.clone().map(ChecksumType::from),
                ..Default::default()
            };
            set_checksums!(c, &meta.checksums);
            out.checksum = Some(c);
        }
        if want(ObjectAttributes::OBJECT_PARTS) && !meta.part_sizes.is_empty() {
            let max = i.max_parts.unwrap_or(1000).clamp(1, 1000) as usize;
            let marker = i.part_number_marker.unwrap_or(0).max(0) as usize;
            let total = meta.part_sizes.len();
            let mut parts = Vec::new();
            for (idx, size) in meta.part_sizes.iter().enumerate().skip(marker).take(max) {
                let mut p = ObjectPart {
                    part_number: Some(idx as i32 + 1),
                    size: Some(*size as i64),
                    ..Default::default()
                };
                if let Some(c) = meta.part_checksums.get(idx) {
                    set_checksums!(p, c);
                }
                parts.push(p);
            }
            let last = marker + parts.len();
            out.object_parts = Some(GetObjectAttributesParts {
                total_parts_count: Some(total as i32),
                part_number_marker: i.part_number_marker,
                next_part_number_marker: (last < total).then_some(last as i32),
                max_parts: Some(max as i32),
                is_truncated: Some(last < total),
                parts: Some(parts),
            });
        }
        Ok(S3Response::new(out))
    }

    async fn upload_part(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        self.mp_upload_part(req).await
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        self.mp_complete(req).await
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        self.mp_abort(req).await
    }

    async fn list_parts(
        &self,
        req: S3Request<ListPartsInput>,
    ) -> S3Result<S3Response<ListPartsOutput>> {
        self.mp_list_parts(req).await
    }

    async fn list_multipart_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        self.mp_list_uploads(req).await
    }

    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        let b = &req.input.bucket;
        check_bucket_name(b)?;
        let created = self
            .db
            .hsetnx_json(
                BUCKETS,
                b,
                &BucketMeta {
                    created: now_secs(),
                },
            )
            .await
            .map_err(internal)?;
        if !created {
            return Err(s3_error!(BucketAlreadyOwnedByYou, "bucket {b} exists"));
        }
        Ok(S3Response::new(CreateBucketOutput {
            location: Some(format!("/{b}")),
        }))
    }

    async fn delete_bucket(
        &self,
        req: S3Request<DeleteBucketInput>,
    ) -> S3Result<S3Response<DeleteBucketOutput>> {
        let b = &req.input.bucket;
        self.bucket_exists(b).await?;
        if self.db.hlen(&objects_key(b)).await.map_err(internal)? > 0 {
            return Err(s3_error!(BucketNotEmpty, "bucket {b} still holds objects"));
        }
        self.db.hdel(BUCKETS, b).await.map_err(internal)?;
        Ok(S3Response::new(DeleteBucketOutput::default()))
    }

    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        self.bucket_exists(&req.input.bucket).await?;
        Ok(S3Response::new(HeadBucketOutput {
            bucket_region: Some(self.region.clone()),
            ..Default::default()
        }))
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        self.bucket_exists(&req.input.bucket).await?;
        Ok(S3Response::new(GetBucketLocationOutput {
            location_constraint: Some(BucketLocationConstraint::from(self.region.clone())),
        }))
    }

    async fn list_buckets(
        &self,
        _req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        let mut all = self
            .db
            .hgetall_json::<BucketMeta>(BUCKETS)
            .await
            .map_err(internal)?;
        all.sort_by(|a, b| a.0.cmp(&b.0));
        let buckets = all
            .into_iter()
            .map(|(name, m)| Bucket {
                name: Some(name),
                creation_date: Some(ts(m.created)),
                bucket_region: Some(self.region.clone()),
            })
            .collect();
        Ok(S3Response::new(ListBucketsOutput {
            buckets: Some(buckets),
            owner: Some(Owner {
                display_name: Some("citadel".into()),
                id: Some("citadel".into()),
            }),
            ..Default::default()
        }))
    }

    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        let checks = BodyChecks::new(&req, put_checksums(&req.input));
        let input = req.input;
        self.bucket_exists(&input.bucket).await?;
        self.precheck_write(
            &input.bucket,
            &input.key,
            input.if_match.as_ref(),
            input.if_none_match.as_ref(),
        )
        .await?;
        let headers = headers_of!(input);
        let body = self
            .store_body(input.body, input.content_length, checks)
            .await?;
        check_content_md5(input.content_md5.as_deref(), &body.md5)?;
        self.keep_blocks(&body.blocks, body.started, false).await?;
        let meta = ObjectMeta {
            size: body.total,
            etag: hex::encode(body.md5),
            content_type: input.content_type.map(|c| c.to_string()),
            user_meta: input.metadata.unwrap_or_default().into_iter().collect(),
            modified: now_secs(),
            blocks: body.blocks,
            block_sizes: body.sizes,
            headers,
            upload_id: None,
            part_sizes: Vec::new(),
            checksums: body.checksums,
            part_checksums: Vec::new(),
        };
        // Blocks are on two disks (fsynced); only now does the object exist.
        self.commit_object(
            &input.bucket,
            &input.key,
            &meta,
            input.if_match.as_ref(),
            input.if_none_match.as_ref(),
        )
        .await?;
        let mut out = PutObjectOutput {
            e_tag: Some(quoted(&meta.etag)),
            checksum_type: meta.checksums.kind.clone().map(ChecksumType::from),
            ..Default::default()
        };
        set_checksums!(out, &meta.checksums);
        Ok(S3Response::new(out))
    }

    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        let i = &req.input;
        let meta = self.object(&i.bucket, &i.key).await?;
        check_conditions(
            &meta,
            i.if_match.as_ref(),
            i.if_none_match.as_ref(),
            i.if_modified_since.as_ref(),
            i.if_unmodified_since.as_ref(),
            true,
        )?;
        let (range, content_range) = match (&i.range, i.part_number) {
            (Some(_), Some(_)) => {
                return Err(s3_error!(
                    InvalidRequest,
                    "Range and partNumber cannot both be given"
                ));
            }
            (None, Some(n)) => {
                let r = part_of(&meta, n)?;
                let cr = format!(
                    "bytes {}-{}/{}",
                    r.start,
                    r.end.saturating_sub(1),
                    meta.size
                );
                (r, Some(cr))
            }
            (None, None) => (0..meta.size, None),
            (Some(r), None) => {
                let got = r.check(meta.size).map_err(|_| {
                    s3_error!(
                        InvalidRange,
                        "the range is not satisfiable for {} bytes",
                        meta.size
                    )
                })?;
                let cr = format!(
                    "bytes {}-{}/{}",
                    got.start,
                    got.end.saturating_sub(1),
                    meta.size
                );
                (got, Some(cr))
            }
        };
        let body = self.stream_range(&meta, range.clone());
        bump(&self.stats.gets, 1);
        let h = &meta.headers;
        let sums = checksums_for(
            &meta,
            i.checksum_mode.as_ref(),
            i.part_number,
            i.range.is_some(),
        );
        // response-* query parameters (a presigned link's download name, …) override.
        let mut out = GetObjectOutput {
            body: Some(body),
            content_length: Some((range.end - range.start) as i64),
            content_range,
            accept_ranges: Some("bytes".into()),
            content_type: i
                .response_content_type
                .clone()
                .or_else(|| meta.content_type.clone()),
            cache_control: i
                .response_cache_control
                .clone()
                .or_else(|| h.cache_control.clone()),
            content_disposition: i
                .response_content_disposition
                .clone()
                .or_else(|| h.content_disposition.clone()),
            content_encoding: i
                .response_content_encoding
                .clone()
                .or_else(|| h.content_encoding.clone()),
            content_language: i
                .response_content_language
                .clone()
                .or_else(|| h.content_language.clone()),
            expires: i.response_expires.clone().or_else(|| h.expires.map(ts)),
            e_tag: Some(quoted(&meta.etag)),
            last_modified: Some(ts(meta.modified)),
            metadata: Some(meta.user_meta.clone().into_iter().collect()),
            parts_count: parts_count(&meta, i.part_number),
            checksum_type: sums.kind.clone().map(ChecksumType::from),
            ..Default::default()
        };
        set_checksums!(out, &sums);
        Ok(S3Response::new(out))
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        let i = &req.input;
        let meta = self.object(&i.bucket, &i.key).await?;
        check_conditions(
            &meta,
            i.if_match.as_ref(),
            i.if_none_match.as_ref(),
            i.if_modified_since.as_ref(),
            i.if_unmodified_since.as_ref(),
            true,
        )?;
        let h = meta.headers.clone();
        let (length, content_range) = match i.part_number {
            Some(n) => {
                let r = part_of(&meta, n)?;
                let cr = format!(
                    "bytes {}-{}/{}",
                    r.start,
                    r.end.saturating_sub(1),
                    meta.size
                );
                (r.end - r.start, Some(cr))
            }
            None => (meta.size, None),
        };
        let sums = checksums_for(&meta, i.checksum_mode.as_ref(), i.part_number, false);
        let mut out = HeadObjectOutput {
            checksum_type: sums.kind.clone().map(ChecksumType::from),
            content_length: Some(length as i64),
            content_range,
            parts_count: parts_count(&meta, i.part_number),
            accept_ranges: Some("bytes".into()),
            content_type: meta.content_type.clone(),
            cache_control: h.cache_control,
            content_disposition: h.content_disposition,
            content_encoding: h.content_encoding,
            content_language: h.content_language,
            expires: h.expires.map(ts),
            e_tag: Some(quoted(&meta.etag)),
            last_modified: Some(ts(meta.modified)),
            metadata: Some(meta.user_meta.clone().into_iter().collect()),
            ..Default::default()
        };
        set_checksums!(out, &sums);
        Ok(S3Response::new(out))
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        let i = &req.input;
        self.bucket_exists(&i.bucket).await?;
        // S3 answers 204 whether or not the key existed. The blocks go with the next GC pass
        // that finds them unreferenced and past the grace (`gc`).
        self.delete_object_if(
            &i.bucket,
            &i.key,
            i.if_match.as_ref(),
            i.if_match_size,
            i.if_match_last_modified_time.as_ref(),
        )
        .await?;
        Ok(S3Response::new(DeleteObjectOutput::default()))
    }

    async fn delete_objects(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        let i = req.input;
        self.bucket_exists(&i.bucket).await?;
        if i.delete.objects.len() > 1000 {
            return Err(s3_error!(
                MalformedXML,
                "at most 1000 keys per DeleteObjects"
            ));
        }
        let quiet = i.delete.quiet.unwrap_or(false);
        let mut deleted = Vec::new();
        let mut errors = Vec::new();
        for o in i.delete.objects {
            let etag = o.e_tag.clone().map(ETagCondition::ETag);
            let done = self
                .delete_object_if(
                    &i.bucket,
                    &o.key,
                    etag.as_ref(),
                    o.size,
                    o.last_modified_time.as_ref(),
                )
                .await;
            match done {
                Ok(()) => {
                    if !quiet {
                        deleted.push(DeletedObject {
                            key: Some(o.key),
                            ..Default::default()
                        });
                    }
                }
                Err(e) => errors.push(s3s::dto::Error {
                    code: Some(e.code().as_str().to_string()),
                    key: Some(o.key),
                    message: e.message().map(str::to_string),
                    version_id: None,
                }),
            }
        }
        Ok(S3Response::new(DeleteObjectsOutput {
            deleted: Some(deleted),
            errors: if errors.is_empty() {
                None
            } else {
                Some(errors)
            },
            ..Default::default()
        }))
    }

    async fn copy_object(
        &self,
        req: S3Request<CopyObjectInput>,
    ) -> S3Result<S3Response<CopyObjectOutput>> {
        let i = req.input;
        let (src_bucket, src_key) = match &i.copy_source {
            CopySource::Bucket { bucket, key, .. } => (bucket.to_string(), key.to_string()),
            _ => {
                return Err(s3_error!(NotImplemented, "access points are not supported"));
            }
        };
        let mut meta = self.object(&src_bucket, &src_key).await?;
        self.bucket_exists(&i.bucket).await?;
        check_conditions(
            &meta,
            i.copy_source_if_match.as_ref(),
            i.copy_source_if_none_match.as_ref(),
            i.copy_source_if_modified_since.as_ref(),
            i.copy_source_if_unmodified_since.as_ref(),
            false,
        )?;
        let replace = i
            .metadata_directive
            .as_ref()
            .is_some_and(|d| d.as_str() == MetadataDirective::REPLACE);
        if replace {
            meta.user_meta = i.metadata.unwrap_or_default().into_iter().collect();
            meta.headers = headers_of!(i);
            meta.content_type = i.content_type.map(|c| c.to_string());
        } else if src_bucket == i.bucket && src_key == i.key {
            return Err(s3_error!(
                InvalidRequest,
                "copying an object onto itself needs MetadataDirective REPLACE"
            ));
        }
        meta.modified = now_secs();
        // The copy did not come from an upload (its parts stay, as S3 keeps the source's).
        meta.upload_id = None;
        // Blocks are content-addressed and already on both servers: a copy is metadata only,
        // once they are touched (the source may be deleted and collected meanwhile).
        self.keep_blocks(&meta.blocks, Instant::now(), true).await?;
        self.db
            .hset_json(&objects_key(&i.bucket), &i.key, &meta)
            .await
            .map_err(internal)?;
        Ok(S3Response::new(CopyObjectOutput {
            copy_object_result: Some(CopyObjectResult {
                e_tag: Some(quoted(&meta.etag)),
                last_modified: Some(ts(meta.modified)),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        let i = req.input;
        self.bucket_exists(&i.bucket).await?;
        let max = max_keys(i.max_keys);
        // The continuation token is the last key (or common prefix) returned, hex-encoded so
        // any key bytes survive the round trip.
        let after = match &i.continuation_token {
            Some(t) => Some(
                hex::decode(t)
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .ok_or_else(|| {
                        s3_error!(InvalidArgument, "the continuation token is not valid")
                    })?,
            ),
            None => i.start_after.clone(),
        };
        let page = self
            .list_page(
                &i.bucket,
                i.prefix.as_deref().unwrap_or_default(),
                i.delimiter.as_deref(),
                after.as_deref(),
                max,
            )
            .await?;
        let next = if page.truncated {
            page.last.as_ref().map(|k| hex::encode(k.as_bytes()))
        } else {
            None
        };
        let enc = Enc::of(&i.encoding_type);
        let contents: Vec<Object> = page
            .contents
            .into_iter()
            .map(|o| object_entry(&enc, o))
            .collect();
        let key_count = (contents.len() + page.prefixes.len()) as i32;
        Ok(S3Response::new(ListObjectsV2Output {
            name: Some(i.bucket),
            prefix: enc.o(i.prefix),
            delimiter: enc.o(i.delimiter.filter(|d| !d.is_empty())),
            max_keys: Some(max as i32),
            key_count: Some(key_count),
            continuation_token: i.continuation_token,
            start_after: enc.o(i.start_after),
            is_truncated: Some(page.truncated),
            next_continuation_token: next,
            contents: Some(contents),
            common_prefixes: enc.prefixes(page.prefixes),
            encoding_type: i.encoding_type,
            ..Default::default()
        }))
    }

    /// ListObjects (v1): the same listing as v2, paged by `marker` (the last key or common
    /// prefix seen); `NextMarker` is given when truncated with a delimiter (without one the
    /// client continues from the last key, as S3 says).
    async fn list_objects(
        &self,
        req: S3Request<ListObjectsInput>,
    ) -> S3Result<S3Response<ListObjectsOutput>> {
        let i = req.input;
        self.bucket_exists(&i.bucket).await?;
        let max = max_keys(i.max_keys);
        let page = self
            .list_page(
                &i.bucket,
                i.prefix.as_deref().unwrap_or_default(),
                i.delimiter.as_deref(),
                i.marker.as_deref().filter(|m| !m.is_empty()),
                max,
            )
            .await?;
        let next_marker = if page.truncated && i.delimiter.as_deref().is_some_and(|d| !d.is_empty())
        {
            page.last.clone()
        } else {
            None
        };
        let enc = Enc::of(&i.encoding_type);
        Ok(S3Response::new(ListObjectsOutput {
            name: Some(i.bucket),
            // Prefix as sent: boto3 does not decode it in a v1 answer.
            prefix: i.prefix,
            // Always there, empty when none was given.
            marker: Some(enc.s(i.marker.unwrap_or_default())),
            delimiter: enc.o(i.delimiter.filter(|d| !d.is_empty())),
            max_keys: Some(max as i32),
            is_truncated: Some(page.truncated),
            next_marker: enc.o(next_marker),
            contents: Some(
                page.contents
                    .into_iter()
                    .map(|o| object_entry(&enc, o))
                    .collect(),
            ),
            common_prefixes: enc.prefixes(page.prefixes),
            encoding_type: i.encoding_type,
            ..Default::default()
        }))
    }

    /// Buckets are not versioned: every object is its one version, id `null` (what S3 shows
    /// for an object written while versioning was never enabled), so tools that clean up
    /// through the versions listing work.
    async fn list_object_versions(
        &self,
        req: S3Request<ListObjectVersionsInput>,
    ) -> S3Result<S3Response<ListObjectVersionsOutput>> {
        let i = req.input;
        self.bucket_exists(&i.bucket).await?;
        let max = max_keys(i.max_keys);
        let page = self
            .list_page(
                &i.bucket,
                i.prefix.as_deref().unwrap_or_default(),
                i.delimiter.as_deref(),
                i.key_marker.as_deref().filter(|m| !m.is_empty()),
                max,
            )
            .await?;
        let enc = Enc::of(&i.encoding_type);
        let versions = page
            .contents
            .into_iter()
            .map(|(k, m)| ObjectVersion {
                key: Some(enc.s(k)),
                size: Some(m.size as i64),
                e_tag: Some(quoted(&m.etag)),
                last_modified: Some(ts(m.modified)),
                is_latest: Some(true),
                version_id: Some("null".into()),
                storage_class: Some(ObjectVersionStorageClass::from_static(
                    ObjectVersionStorageClass::STANDARD,
                )),
                ..Default::default()
            })
            .collect();
        Ok(S3Response::new(ListObjectVersionsOutput {
            name: Some(i.bucket),
            prefix: enc.o(i.prefix),
            delimiter: enc.o(i.delimiter.filter(|d| !d.is_empty())),
            key_marker: enc.o(i.key_marker),
            version_id_marker: i.version_id_marker,
            max_keys: Some(max as i32),
            is_truncated: Some(page.truncated),
            next_key_marker: enc.o(if page.truncated { page.last } else { None }),
            next_version_id_marker: page.truncated.then(|| "null".to_string()),
            versions: Some(versions),
            common_prefixes: enc.prefixes(page.prefixes),
            encoding_type: i.encoding_type,
            ..Default::default()
        }))
    }
}

/// One page of a bucket listing: objects with their records, common prefixes, and the last
/// key or common prefix returned (where the next page starts).
pub(crate) struct Page {
    pub contents: Vec<(String, ObjectMeta)>,
    pub prefixes: Vec<String>,
    pub truncated: bool,
    pub last: Option<String>,
}

fn max_keys(m: Option<i32>) -> usize {
    m.unwrap_or(1000).clamp(0, 1000) as usize
}

/// `encoding-type=url` on a listing: keys, prefixes, delimiter and markers in the answer are
/// percent-encoded (all but unreserved characters and `/`), so any key bytes survive XML;
/// boto3 asks for it on every ListObjects and ListObjectVersions and decodes the answer.
struct Enc(bool);

impl Enc {
    fn of(e: &Option<EncodingType>) -> Enc {
        Enc(e.as_ref().is_some_and(|e| e.as_str() == EncodingType::URL))
    }

    fn s(&self, s: String) -> String {
        if !self.0 {
            return s;
        }
        let mut out = String::with_capacity(s.len());
        for b in s.bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
                out.push(b as char);
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
        out
    }

    fn o(&self, s: Option<String>) -> Option<String> {
        s.map(|s| self.s(s))
    }

    fn prefixes(&self, p: Vec<String>) -> Option<Vec<CommonPrefix>> {
        if p.is_empty() {
            None
        } else {
            Some(
                p.into_iter()
                    .map(|p| CommonPrefix {
                        prefix: Some(self.s(p)),
                    })
                    .collect(),
            )
        }
    }
}

fn object_entry(enc: &Enc, (k, m): (String, ObjectMeta)) -> Object {
    Object {
        key: Some(enc.s(k)),
        size: Some(m.size as i64),
        e_tag: Some(quoted(&m.etag)),
        last_modified: Some(ts(m.modified)),
        storage_class: Some(ObjectStorageClass::from_static(
            ObjectStorageClass::STANDARD,
        )),
        ..Default::default()
    }
}

impl Store {
    /// The keys after `after` under `prefix`, common prefixes collapsed at `delim`, at most
    /// `max` entries. Reads HKEYS of the bucket's hash, sorts, then HGETs the page's records.
    pub(crate) async fn list_page(
        &self,
        bucket: &str,
        prefix: &str,
        delim: Option<&str>,
        after: Option<&str>,
        max: usize,
    ) -> S3Result<Page> {
        let delim = delim.filter(|d| !d.is_empty());
        let keys: BTreeSet<String> = self
            .db
            .hkeys(&objects_key(bucket))
            .await
            .map_err(internal)?
            .into_iter()
            .filter(|k| k.starts_with(prefix))
            .collect();
        let mut entries: Vec<(String, bool)> = Vec::new(); // (key or common prefix, is_prefix)
        let mut truncated = false;
        let range: Box<dyn Iterator<Item = &String>> = match after {
            Some(a) => Box::new(
                keys.range::<str, _>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded)),
            ),
            None => Box::new(keys.iter()),
        };
        for k in range {
            let entry = match delim {
                Some(d) => match k[prefix.len()..].find(d) {
                    Some(pos) => (k[..prefix.len() + pos + d.len()].to_string(), true),
                    None => (k.clone(), false),
                },
                None => (k.clone(), false),
            };
            if entry.1 {
                if entries.last().is_some_and(|l| l.0 == entry.0) {
                    continue;
                }
                // A common prefix at or before the marker was returned on an earlier page.
                if after.is_some_and(|a| a.starts_with(&entry.0)) {
                    continue;
                }
            }
            if entries.len() == max {
                truncated = true;
                break;
            }
            entries.push(entry);
        }
        let last = entries.last().map(|(k, _)| k.clone());
        let mut contents = Vec::new();
        let mut prefixes = Vec::new();
        let okey = objects_key(bucket);
        for (k, is_prefix) in entries {
            if is_prefix {
                prefixes.push(k);
                continue;
            }
            // Deleted between HKEYS and here: skip it.
            let Some(m) = self
                .db
                .hget_json::<ObjectMeta>(&okey, &k)
                .await
                .map_err(internal)?
            else {
                continue;
            };
            contents.push((k, m));
        }
        Ok(Page {
            contents,
            prefixes,
            truncated,
            last,
        })
    }
}
