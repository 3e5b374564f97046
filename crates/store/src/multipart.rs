//! Multipart uploads. Layout in the db:
//! - `s3:uploads:<bucket>` hash: upload id → `Upload` (key, initiated, content type, metadata)
//! - `s3:parts:<upload id>` hash: part number → `PartMeta` (etag, size, blocks)
//!
//! Parts' blocks are written to both servers like a PUT's; Complete only writes metadata
//! (the object's block list is the parts' lists concatenated).

use std::collections::BTreeMap;

use md5::{Digest, Md5};
use s3s::dto::*;
use s3s::{S3Request, S3Response, S3Result, s3_error};
use serde::{Deserialize, Serialize};

use crate::meta::{Checksums, HttpHeaders, ObjectMeta, now_secs, objects_key};
use crate::s3::{
    BodyChecks, Store, check_conditions, check_content_md5, internal, part_checksums, quoted,
    set_checksums, ts,
};

/// S3's smallest part (all parts but the last).
pub const MIN_PART: u64 = 5 * 1024 * 1024;
const MAX_PART_NUMBER: i32 = 10_000;

pub(crate) fn uploads_key(bucket: &str) -> String {
    format!("s3:uploads:{bucket}")
}
pub(crate) fn parts_key(upload: &str) -> String {
    format!("s3:parts:{upload}")
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Upload {
    pub key: String,
    pub initiated: i64,
    pub content_type: Option<String>,
    #[serde(default)]
    pub user_meta: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "HttpHeaders::is_empty")]
    pub headers: HttpHeaders,
    /// The checksum algorithm the upload was created with (`SHA256`…) and its type
    /// (`COMPOSITE`, the default, or `FULL_OBJECT`): Complete then stores the object's
    /// checksum made of its parts' (COMPOSITE only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum_algorithm: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum_type: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartMeta {
    pub etag: String,
    pub size: u64,
    pub modified: i64,
    pub blocks: Vec<String>,
    pub block_sizes: Vec<u64>,
    /// The part's verified x-amz-checksum-* values.
    #[serde(default, skip_serializing_if = "Checksums::is_empty")]
    pub checksums: Checksums,
}

/// A multipart object's COMPOSITE checksum: the algorithm over its parts' raw checksums,
/// concatenated, then `-<parts>` (S3's "checksum of checksums"). `None` when a part has no
/// checksum of that algorithm, or for CRC64NVME (full-object only).
fn composite(alg: &str, parts: &[&Checksums]) -> Option<String> {
    use s3s::crypto::Checksum as _;
    let mut raw = Vec::new();
    for p in parts {
        raw.extend(base64_simd::STANDARD.decode_to_vec(p.get(alg)?).ok()?);
    }
    let digest: Vec<u8> = match alg {
        "SHA256" => s3s::crypto::Sha256::checksum(&raw).as_ref().to_vec(),
        "SHA1" => s3s::crypto::Sha1::checksum(&raw).as_ref().to_vec(),
        "CRC32" => s3s::crypto::Crc32::checksum(&raw).as_ref().to_vec(),
        "CRC32C" => s3s::crypto::Crc32c::checksum(&raw).as_ref().to_vec(),
        _ => return None,
    };
    Some(format!(
        "{}-{}",
        base64_simd::STANDARD.encode_to_string(digest),
        parts.len()
    ))
}

/// A multipart object's FULL_OBJECT checksum (CRC32, CRC32C or CRC64NVME): the CRC of the
/// whole content, made from the parts' CRCs and sizes without reading the bytes. `None`
/// when a part has no checksum of that algorithm, or for the SHA ones (COMPOSITE only).
fn full_object(alg: &str, parts: &[&Checksums], sizes: &[u64]) -> Option<String> {
    // Reflected polynomials (as zlib's crc32_combine takes them).
    let (poly, width) = match alg {
        "CRC32" => (0xEDB8_8320u64, 32),
        "CRC32C" => (0x82F6_3B78u64, 32),
        "CRC64NVME" => (0x9A6C_9329_AC4B_C9B5u64, 64),
        _ => return None,
    };
    let mut crc: Option<u64> = None;
    for (p, &len) in parts.iter().zip(sizes) {
        let raw = base64_simd::STANDARD.decode_to_vec(p.get(alg)?).ok()?;
        if raw.len() != width / 8 {
            return None;
        }
        let part = raw.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
        crc = Some(match crc {
            None => part,
            Some(c) => crc_combine(poly, width, c, part, len),
        });
    }
    let crc = crc?;
    let bytes = crc.to_be_bytes();
    Some(base64_simd::STANDARD.encode_to_string(&bytes[8 - width / 8..]))
}

/// The CRC of A followed by B from crc(A), crc(B) and B's length (zlib's crc32_combine,
/// for any reflected CRC with all-ones init and final xor, as CRC32, CRC32C, CRC64NVME):
/// crc(A) is advanced over len(B) zero bytes by squaring the one-zero-bit operator.
fn crc_combine(poly: u64, width: usize, crc1: u64, crc2: u64, mut len2: u64) -> u64 {
    fn times(mat: &[u64], mut vec: u64) -> u64 {
        let mut sum = 0;
        let mut i = 0;
        while vec != 0 {
            if vec & 1 != 0 {
                sum ^= mat[i];
            }
            vec >>= 1;
            i += 1;
        }
        sum
    }
    fn square(out: &mut [u64], mat: &[u64]) {
        for (n, o) in out.iter_mut().enumerate() {
            *o = times(mat, mat[n]);
        }
    }
    if len2 == 0 {
        return crc1;
    }
    let mut odd = vec![0u64; width];
    let mut even = vec![0u64; width];
    odd[0] = poly; // the operator for one zero bit
    let mut row = 1u64;
    for o in odd.iter_mut().skip(1) {
        *o = row;
        row <<= 1;
    }
    square(&mut even, &odd); // two zero bits
    square(&mut odd, &even); // four
    let mut crc1 = crc1;
    loop {
        square(&mut even, &odd); // eight bits = one byte, then 2, 4… bytes
        if len2 & 1 != 0 {
            crc1 = times(&even, crc1);
        }
        len2 >>= 1;
        if len2 == 0 {
            break;
        }
        square(&mut odd, &even);
        if len2 & 1 != 0 {
            crc1 = times(&odd, crc1);
        }
        len2 >>= 1;
        if len2 == 0 {
            break;
        }
    }
    crc1 ^ crc2
}

/// The `x-amz-copy-source-range` of an UploadPartCopy: `bytes=first-last` within the source.
fn copy_range(r: &str, size: u64) -> S3Result<std::ops::Range<u64>> {
    let bad = || {
        s3_error!(
            InvalidArgument,
            "x-amz-copy-source-range must be bytes=first-last"
        )
    };
    let (first, last) = r
        .strip_prefix("bytes=")
        .and_then(|r| r.split_once('-'))
        .ok_or_else(bad)?;
    let first: u64 = first.parse().map_err(|_| bad())?;
    let last: u64 = last.parse().map_err(|_| bad())?;
    if first > last {
        return Err(bad());
    }
    if last >= size {
        return Err(s3_error!(
            InvalidRange,
            "the range {first}-{last} is not within the source's {size} bytes"
        ));
    }
    Ok(first..last + 1)
}

impl Store {
    async fn upload(&self, bucket: &str, key: &str, id: &str) -> S3Result<Upload> {
        self.bucket_exists(bucket).await?;
        match self.db.hget_json::<Upload>(&uploads_key(bucket), id).await {
            Ok(Some(u)) if u.key == key => Ok(u),
            Ok(_) => Err(s3_error!(NoSuchUpload, "no upload {id} for {key}")),
            Err(e) => Err(internal(e)),
        }
    }

    async fn parts(&self, id: &str) -> S3Result<BTreeMap<i32, PartMeta>> {
        let all = self
            .db
            .hgetall_json::<PartMeta>(&parts_key(id))
            .await
            .map_err(internal)?;
        Ok(all
            .into_iter()
            .filter_map(|(n, p)| n.parse::<i32>().ok().map(|n| (n, p)))
            .collect())
    }

    pub async fn mp_create(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        let i = req.input;
        self.bucket_exists(&i.bucket).await?;
        let id = format!(
            "{:016x}{:016x}",
            crate::blocks::rand_u64(),
            crate::blocks::rand_u64()
        );
        let up = Upload {
            key: i.key.clone(),
            initiated: now_secs(),
            headers: crate::s3::headers_of!(i),
            content_type: i.content_type.map(|c| c.to_string()),
            user_meta: i.metadata.unwrap_or_default().into_iter().collect(),
            checksum_algorithm: i
                .checksum_algorithm
                .as_ref()
                .map(|a| a.as_str().to_ascii_uppercase()),
            checksum_type: i.checksum_type.as_ref().map(|t| t.as_str().to_string()),
        };
        let checksum_type = up.checksum_algorithm.as_ref().map(|_| {
            ChecksumType::from(
                up.checksum_type
                    .clone()
                    .unwrap_or_else(|| ChecksumType::COMPOSITE.to_string()),
            )
        });
        self.db
            .hset_json(&uploads_key(&i.bucket), &id, &up)
            .await
            .map_err(internal)?;
        Ok(S3Response::new(CreateMultipartUploadOutput {
            bucket: Some(i.bucket),
            key: Some(i.key),
            upload_id: Some(id),
            checksum_algorithm: up.checksum_algorithm.map(ChecksumAlgorithm::from),
            checksum_type,
            ..Default::default()
        }))
    }

    pub async fn mp_upload_part(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        let checks = BodyChecks::new(&req, part_checksums(&req.input));
        let i = req.input;
        if !(1..=MAX_PART_NUMBER).contains(&i.part_number) {
            return Err(s3_error!(InvalidArgument, "part number must be 1 to 10000"));
        }
        self.upload(&i.bucket, &i.key, &i.upload_id).await?;
        let body = self.store_body(i.body, i.content_length, checks).await?;
        check_content_md5(i.content_md5.as_deref(), &body.md5)?;
        self.keep_blocks(&body.blocks, body.started, false).await?;
        let part = PartMeta {
            etag: hex::encode(body.md5),
            size: body.total,
            modified: now_secs(),
            blocks: body.blocks,
            block_sizes: body.sizes,
            checksums: body.checksums,
        };
        self.db
            .hset_json(&parts_key(&i.upload_id), &i.part_number.to_string(), &part)
            .await
            .map_err(internal)?;
        let mut out = UploadPartOutput {
            e_tag: Some(quoted(&part.etag)),
            ..Default::default()
        };
        set_checksums!(out, &part.checksums);
        Ok(S3Response::new(out))
    }

    /// UploadPartCopy: a part made of an object's bytes (all, or `x-amz-copy-source-range`).
    /// The bytes are read and stored like an uploaded part's — content-addressed, so blocks
    /// the source already has are only touched, not written twice.
    pub async fn mp_upload_part_copy(
        &self,
        req: S3Request<UploadPartCopyInput>,
    ) -> S3Result<S3Response<UploadPartCopyOutput>> {
        let i = req.input;
        if !(1..=MAX_PART_NUMBER).contains(&i.part_number) {
            return Err(s3_error!(InvalidArgument, "part number must be 1 to 10000"));
        }
        let (src_bucket, src_key) = match &i.copy_source {
            CopySource::Bucket { bucket, key, .. } => (bucket.to_string(), key.to_string()),
            _ => return Err(s3_error!(NotImplemented, "access points are not supported")),
        };
        self.upload(&i.bucket, &i.key, &i.upload_id).await?;
        let src = self.object(&src_bucket, &src_key).await?;
        check_conditions(
            &src,
            i.copy_source_if_match.as_ref(),
            i.copy_source_if_none_match.as_ref(),
            i.copy_source_if_modified_since.as_ref(),
            i.copy_source_if_unmodified_since.as_ref(),
            false,
        )?;
        let range = match &i.copy_source_range {
            Some(r) => copy_range(r, src.size)?,
            None => 0..src.size,
        };
        let len = (range.end - range.start) as i64;
        let bytes = self.stream_range(&src, range);
        let body = self
            .store_body(Some(bytes), Some(len), BodyChecks::none())
            .await?;
        self.keep_blocks(&body.blocks, body.started, false).await?;
        let part = PartMeta {
            etag: hex::encode(body.md5),
            size: body.total,
            modified: now_secs(),
            blocks: body.blocks,
            block_sizes: body.sizes,
            checksums: Checksums::default(),
        };
        self.db
            .hset_json(&parts_key(&i.upload_id), &i.part_number.to_string(), &part)
            .await
            .map_err(internal)?;
        Ok(S3Response::new(UploadPartCopyOutput {
            copy_part_result: Some(CopyPartResult {
                e_tag: Some(quoted(&part.etag)),
                last_modified: Some(ts(part.modified)),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    pub async fn mp_complete(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        let i = req.input;
        let up = match self.upload(&i.bucket, &i.key, &i.upload_id).await {
            Ok(up) => up,
            Err(e) => {
                // A retried Complete (the first answer lost) finds the object it made.
                if let Ok(Some(m)) = self
                    .db
                    .hget_json::<ObjectMeta>(&objects_key(&i.bucket), &i.key)
                    .await
                    && m.upload_id.as_deref() == Some(i.upload_id.as_str())
                {
                    return Ok(S3Response::new(completed(&i.bucket, &i.key, &m)));
                }
                return Err(e);
            }
        };
        self.precheck_write(
            &i.bucket,
            &i.key,
            i.if_match.as_ref(),
            i.if_none_match.as_ref(),
        )
        .await?;
        let listed = i
            .multipart_upload
            .and_then(|m| m.parts)
            .filter(|p| !p.is_empty())
            .ok_or_else(|| s3_error!(MalformedXML, "CompleteMultipartUpload lists no parts"))?;
        let stored = self.parts(&i.upload_id).await?;
        let mut md5s = Md5::new();
        let mut meta = ObjectMeta {
            size: 0,
            etag: String::new(),
            content_type: up.content_type.clone(),
            user_meta: up.user_meta.clone(),
            modified: now_secs(),
            blocks: Vec::new(),
            block_sizes: Vec::new(),
            headers: up.headers.clone(),
            upload_id: Some(i.upload_id.clone()),
            part_sizes: Vec::new(),
            checksums: Checksums::default(),
            part_checksums: Vec::new(),
        };
        let mut part_sums: Vec<&Checksums> = Vec::new();
        let mut last_number = 0;
        for (idx, p) in listed.iter().enumerate() {
            let n = p
                .part_number
                .ok_or_else(|| s3_error!(MalformedXML, "a part without PartNumber"))?;
            if n <= last_number {
                return Err(s3_error!(
                    InvalidPartOrder,
                    "parts must be listed in ascending order"
                ));
            }
            last_number = n;
            let got = stored
                .get(&n)
                .ok_or_else(|| s3_error!(InvalidPart, "part {n} was not uploaded"))?;
            let want = p.e_tag.as_ref().map(|e| e.value().trim_matches('"'));
            if want != Some(got.etag.as_str()) {
                return Err(s3_error!(
                    InvalidPart,
                    "part {n}: the ETag does not match the uploaded part"
                ));
            }
            if idx + 1 < listed.len() && got.size < MIN_PART {
                return Err(s3_error!(
                    EntityTooSmall,
                    "part {n} is {} bytes; every part but the last must be at least {MIN_PART}",
                    got.size
                ));
            }
            md5s.update(
                hex::decode(&got.etag).map_err(|_| s3_error!(InternalError, "bad part etag"))?,
            );
            meta.size += got.size;
            meta.part_sizes.push(got.size);
            meta.blocks.extend(got.blocks.iter().cloned());
            meta.block_sizes.extend(got.block_sizes.iter().copied());
            part_sums.push(&got.checksums);
        }
        meta.etag = format!("{}-{}", hex::encode(md5s.finalize()), listed.len());
        if part_sums.iter().any(|c| !c.is_empty()) {
            meta.part_checksums = part_sums.iter().map(|c| (*c).clone()).collect();
        }
        // The object's checksum of its parts' checksums, checked against the one sent.
        let given = Checksums::from_dto(
            Checksum {
                checksum_crc32: i.checksum_crc32.clone(),
                checksum_crc32c: i.checksum_crc32c.clone(),
                checksum_crc64nvme: i.checksum_crc64nvme.clone(),
                checksum_sha1: i.checksum_sha1.clone(),
                checksum_sha256: i.checksum_sha256.clone(),
                ..Default::default()
            },
            "COMPOSITE",
        );
        let full = up.checksum_type.as_deref() == Some("FULL_OBJECT")
            || up.checksum_algorithm.as_deref() == Some("CRC64NVME");
        if let Some(alg) = up.checksum_algorithm.as_deref() {
            let sum = if full {
                full_object(alg, &part_sums, &meta.part_sizes)
            } else {
                composite(alg, &part_sums)
            };
            if let Some(want) = given.get(alg)
                && sum.as_ref() != Some(want)
            {
                return Err(s3_error!(
                    BadDigest,
                    "the {alg} you specified did not match the parts' checksums"
                ));
            }
            if let Some(sum) = sum {
                meta.checksums.set(alg, sum);
                meta.checksums.kind = Some(if full { "FULL_OBJECT" } else { "COMPOSITE" }.into());
            }
        }
        // Object first, then the upload's records: a crash between leaves an upload that
        // Abort or a later GC removes, never a missing object.
        self.commit_object(
            &i.bucket,
            &i.key,
            &meta,
            i.if_match.as_ref(),
            i.if_none_match.as_ref(),
        )
        .await?;
        self.drop_upload(&i.bucket, &i.upload_id).await?;
        Ok(S3Response::new(completed(&i.bucket, &i.key, &meta)))
    }

    async fn drop_upload(&self, bucket: &str, id: &str) -> S3Result<()> {
        self.db
            .query::<()>(redis::cmd("DEL").arg(parts_key(id)))
            .await
            .map_err(internal)?;
        self.db
            .hdel(&uploads_key(bucket), id)
            .await
            .map_err(internal)?;
        Ok(())
    }

    pub async fn mp_abort(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        let i = req.input;
        self.upload(&i.bucket, &i.key, &i.upload_id).await?;
        self.drop_upload(&i.bucket, &i.upload_id).await?;
        Ok(S3Response::new(AbortMultipartUploadOutput::default()))
    }

    pub async fn mp_list_parts(
        &self,
        req: S3Request<ListPartsInput>,
    ) -> S3Result<S3Response<ListPartsOutput>> {
        let i = req.input;
        let up = self.upload(&i.bucket, &i.key, &i.upload_id).await?;
        let max = i.max_parts.unwrap_or(1000).clamp(1, 1000) as usize;
        let marker = i.part_number_marker.unwrap_or(0);
        let stored = self.parts(&i.upload_id).await?;
        let mut page: Vec<Part> = Vec::new();
        let mut truncated = false;
        for (n, p) in stored.range(marker + 1..) {
            if page.len() == max {
                truncated = true;
                break;
            }
            let mut part = Part {
                e_tag: Some(quoted(&p.etag)),
                last_modified: Some(ts(p.modified)),
                part_number: Some(*n),
                size: Some(p.size as i64),
                ..Default::default()
            };
            set_checksums!(part, &p.checksums);
            page.push(part);
        }
        let next = if truncated {
            page.last().and_then(|p| p.part_number)
        } else {
            None
        };
        Ok(S3Response::new(ListPartsOutput {
            bucket: Some(i.bucket),
            key: Some(i.key),
            upload_id: Some(i.upload_id),
            max_parts: Some(max as i32),
            part_number_marker: i.part_number_marker,
            next_part_number_marker: next,
            is_truncated: Some(truncated),
            parts: Some(page),
            checksum_algorithm: up.checksum_algorithm.map(ChecksumAlgorithm::from),
            ..Default::default()
        }))
    }

    pub async fn mp_list_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        let i = req.input;
        self.bucket_exists(&i.bucket).await?;
        let prefix = i.prefix.clone().unwrap_or_default();
        let max = i.max_uploads.unwrap_or(1000).clamp(1, 1000) as usize;
        let mut all: Vec<(String, String, Upload)> = self
            .db
            .hgetall_json::<Upload>(&uploads_key(&i.bucket))
            .await
            .map_err(internal)?
            .into_iter()
            .filter(|(_, u)| u.key.starts_with(&prefix))
            .map(|(id, u)| (u.key.clone(), id, u))
            .collect();
        // S3 orders uploads by key, then by initiation; ids break ties here.
        all.sort_by(|a, b| (&a.0, a.2.initiated, &a.1).cmp(&(&b.0, b.2.initiated, &b.1)));
        let after = i
            .key_marker
            .clone()
            .map(|k| (k, i.upload_id_marker.clone()));
        let mut page = Vec::new();
        let mut truncated = false;
        for (key, id, u) in all {
            if let Some((mk, mid)) = &after {
                let past = match mid {
                    Some(mid) if !mid.is_empty() => (&key, &id) > (mk, mid),
                    _ => &key > mk,
                };
                if !past {
                    continue;
                }
            }
            if page.len() == max {
                truncated = true;
                break;
            }
            page.push(MultipartUpload {
                key: Some(key),
                upload_id: Some(id),
                initiated: Some(ts(u.initiated)),
                ..Default::default()
            });
        }
        let (nk, nu) = match (truncated, page.last()) {
            (true, Some(l)) => (l.key.clone(), l.upload_id.clone()),
            _ => (None, None),
        };
        Ok(S3Response::new(ListMultipartUploadsOutput {
            bucket: Some(i.bucket),
            prefix: i.prefix,
            key_marker: i.key_marker,
            upload_id_marker: i.upload_id_marker,
            max_uploads: Some(max as i32),
            is_truncated: Some(truncated),
            next_key_marker: nk,
            next_upload_id_marker: nu,
            uploads: Some(page),
            ..Default::default()
        }))
    }
}

/// CompleteMultipartUpload's answer for an object (also to a retried Complete).
fn completed(bucket: &str, key: &str, m: &ObjectMeta) -> CompleteMultipartUploadOutput {
    let mut out = CompleteMultipartUploadOutput {
        bucket: Some(bucket.to_string()),
        key: Some(key.to_string()),
        e_tag: Some(quoted(&m.etag)),
        location: Some(format!("/{bucket}/{key}")),
        checksum_type: m.checksums.kind.clone().map(ChecksumType::from),
        ..Default::default()
    };
    set_checksums!(out, &m.checksums);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use s3s::crypto::Checksum as _;

    fn b64(b: &[u8]) -> String {
        base64_simd::STANDARD.encode_to_string(b)
    }

    #[test]
    fn full_object_crcs_combine_the_parts() {
        let parts: [&[u8]; 3] = [&[b'A'; 5000], &[b'B'; 777], b"tail"];
        let whole: Vec<u8> = parts.concat();
        let sizes: Vec<u64> = parts.iter().map(|p| p.len() as u64).collect();
        let mut sums = Vec::new();
        for p in parts {
            let mut c = Checksums::default();
            c.set("CRC32", b64(s3s::crypto::Crc32::checksum(p).as_ref()));
            c.set("CRC32C", b64(s3s::crypto::Crc32c::checksum(p).as_ref()));
            c.set(
                "CRC64NVME",
                b64(s3s::crypto::Crc64Nvme::checksum(p).as_ref()),
            );
            sums.push(c);
        }
        let refs: Vec<&Checksums> = sums.iter().collect();
        assert_eq!(
            full_object("CRC32", &refs, &sizes),
            Some(b64(s3s::crypto::Crc32::checksum(&whole).as_ref()))
        );
        assert_eq!(
            full_object("CRC32C", &refs, &sizes),
            Some(b64(s3s::crypto::Crc32c::checksum(&whole).as_ref()))
        );
        assert_eq!(
            full_object("CRC64NVME", &refs, &sizes),
            Some(b64(s3s::crypto::Crc64Nvme::checksum(&whole).as_ref()))
        );
        assert_eq!(full_object("SHA256", &refs, &sizes), None);
    }
}
