"""Conditional writes and deletes, stored checksums, UploadPartCopy and GetObjectAttributes,
checked with boto3 as a user meets them; each check raises on a wrong answer.
Environment: ENDPOINT, KEY, SECRET."""
import base64, hashlib, os, threading, zlib

import boto3
from botocore.client import Config
from botocore.exceptions import ClientError

ep, key, secret = os.environ["ENDPOINT"], os.environ["KEY"], os.environ["SECRET"]
cfg = Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1})
s3 = boto3.client("s3", endpoint_url=ep, aws_access_key_id=key,
                  aws_secret_access_key=secret, region_name="citadel", config=cfg)
B = "more"


def check(name, cond, got=None):
    if not cond:
        raise AssertionError(f"{name}: {got!r}")
    print("ok", name, flush=True)


def error_of(fn):
    try:
        fn()
    except ClientError as e:
        return e.response["ResponseMetadata"]["HTTPStatusCode"], e.response["Error"]["Code"]
    raise AssertionError("expected an error")


def b64(d):
    return base64.b64encode(d).decode()


s3.create_bucket(Bucket=B)

# --- Conditional writes: If-None-Match: * creates only; If-Match replaces only that ETag.
etag = s3.put_object(Bucket=B, Key="c", Body=b"one", IfNoneMatch="*")["ETag"]
check("If-None-Match * on an existing key: 412",
      error_of(lambda: s3.put_object(Bucket=B, Key="c", Body=b"x", IfNoneMatch="*")) == (412, "PreconditionFailed"))
check("If-Match with another ETag: 412",
      error_of(lambda: s3.put_object(Bucket=B, Key="c", Body=b"x", IfMatch='"0123"')) == (412, "PreconditionFailed"))
etag2 = s3.put_object(Bucket=B, Key="c", Body=b"two", IfMatch=etag)["ETag"]
check("If-Match with the ETag replaces", s3.get_object(Bucket=B, Key="c")["Body"].read() == b"two")
check("If-Match on a missing key: 404 NoSuchKey",
      error_of(lambda: s3.put_object(Bucket=B, Key="none", Body=b"x", IfMatch="*")) == (404, "NoSuchKey"))
check("nothing stored by a failed condition",
      error_of(lambda: s3.head_object(Bucket=B, Key="none"))[0] == 404)

# Eight writers race to create one key with If-None-Match: *: exactly one wins.
wins, losses = [], []
def racer(i):
    try:
        s3.put_object(Bucket=B, Key="race", Body=f"writer {i}".encode(), IfNoneMatch="*")
        wins.append(i)
    except ClientError as e:
        losses.append(e.response["Error"]["Code"])
ts = [threading.Thread(target=racer, args=(i,)) for i in range(8)]
for t in ts: t.start()
for t in ts: t.join()
check("one of eight If-None-Match * writers wins", len(wins) == 1 and set(losses) == {"PreconditionFailed"},
      (wins, losses))
check("the winner's bytes are stored",
      s3.get_object(Bucket=B, Key="race")["Body"].read() == f"writer {wins[0]}".encode())

# Conditional CompleteMultipartUpload.
def mp(k, body=b"abc", **cond):
    u = s3.create_multipart_upload(Bucket=B, Key=k)["UploadId"]
    e = s3.upload_part(Bucket=B, Key=k, UploadId=u, PartNumber=1, Body=body)["ETag"]
    return s3.complete_multipart_upload(Bucket=B, Key=k, UploadId=u,
                                        MultipartUpload={"Parts": [{"ETag": e, "PartNumber": 1}]}, **cond)
mp("m", IfNoneMatch="*")
check("Complete with If-None-Match * on an existing key: 412",
      error_of(lambda: mp("m", IfNoneMatch="*")) == (412, "PreconditionFailed"))
check("Complete with If-Match on a missing key: 404",
      error_of(lambda: mp("m2", IfMatch="*")) == (404, "NoSuchKey"))

# --- Conditional deletes.
check("delete If-Match another ETag: 412",
      error_of(lambda: s3.delete_object(Bucket=B, Key="c", IfMatch='"0123"')) == (412, "PreconditionFailed"))
check("delete If-Match-Size wrong: 412",
      error_of(lambda: s3.delete_object(Bucket=B, Key="c", IfMatchSize=99)) == (412, "PreconditionFailed"))
s3.delete_object(Bucket=B, Key="c", IfMatch=etag2, IfMatchSize=3)
check("delete If-Match the ETag deletes", error_of(lambda: s3.head_object(Bucket=B, Key="c"))[0] == 404)
r = s3.delete_object(Bucket=B, Key="c", IfMatch='"0123"')
check("a conditional delete of a missing key: 204", r["ResponseMetadata"]["HTTPStatusCode"] == 204)
e3 = s3.put_object(Bucket=B, Key="d", Body=b"ddd")["ETag"]
r = s3.delete_objects(Bucket=B, Delete={"Objects": [{"Key": "d", "ETag": '"0123"'}]})
check("DeleteObjects with another ETag: PreconditionFailed",
      r.get("Errors", [{}])[0].get("Code") == "PreconditionFailed", r)
r = s3.delete_objects(Bucket=B, Delete={"Objects": [{"Key": "d", "ETag": e3}]})
check("DeleteObjects with the ETag deletes", r["Deleted"][0]["Key"] == "d", r)

# --- Stored checksums: verified on PUT, returned with ChecksumMode=ENABLED.
body = b"A" * 1024
want = {
    "SHA256": b64(hashlib.sha256(body).digest()),
    "SHA1": b64(hashlib.sha1(body).digest()),
    "CRC32": b64(zlib.crc32(body).to_bytes(4, "big")),
}
check("SHA256 of 1024 A's is the suite's", want["SHA256"] == "arcu6553sHVAiX4MjW0j7I7vD4w6R+Gz9Ok0Q9lTa+0=")
for alg, value in want.items():
    k = f"sum-{alg}"
    r = s3.put_object(Bucket=B, Key=k, Body=body, ChecksumAlgorithm=alg, **{f"Checksum{alg}": value})
    check(f"PUT answers its {alg}", r.get(f"Checksum{alg}") == value, r)
    h = s3.head_object(Bucket=B, Key=k)
    check(f"HEAD without ChecksumMode: no {alg}", f"Checksum{alg}" not in h)
    h = s3.head_object(Bucket=B, Key=k, ChecksumMode="ENABLED")
    check(f"HEAD ChecksumMode=ENABLED: {alg}", h.get(f"Checksum{alg}") == value, h)
    g = s3.get_object(Bucket=B, Key=k, ChecksumMode="ENABLED")
    check(f"GET ChecksumMode=ENABLED: {alg} (and boto3 validates it)",
          g.get(f"Checksum{alg}") == value and g["Body"].read() == body, g)
check("a wrong SHA256: 400 BadDigest",
      error_of(lambda: s3.put_object(Bucket=B, Key="bad", Body=body, ChecksumAlgorithm="SHA256",
                                     ChecksumSHA256=b64(b"x" * 32))) == (400, "BadDigest"))
check("nothing stored by a bad checksum", error_of(lambda: s3.head_object(Bucket=B, Key="bad"))[0] == 404)

# Multipart with SHA256: parts' checksums, the composite one ("checksum of checksums -N").
MiB = 1024 * 1024
p1, p2 = b"A" * (5 * MiB), b"B" * 1000
u = s3.create_multipart_upload(Bucket=B, Key="msum", ChecksumAlgorithm="SHA256")
check("Create echoes the algorithm", u.get("ChecksumAlgorithm") == "SHA256", u)
u = u["UploadId"]
parts, raw = [], b""
for n, p in [(1, p1), (2, p2)]:
    s = b64(hashlib.sha256(p).digest())
    r = s3.upload_part(Bucket=B, Key="msum", UploadId=u, PartNumber=n, Body=p,
                       ChecksumAlgorithm="SHA256", ChecksumSHA256=s)
    check(f"part {n} answers its SHA256", r.get("ChecksumSHA256") == s, r)
    parts.append({"ETag": r["ETag"], "PartNumber": n, "ChecksumSHA256": s})
    raw += hashlib.sha256(p).digest()
lp = s3.list_parts(Bucket=B, Key="msum", UploadId=u)
check("ListParts shows each part's SHA256", [p.get("ChecksumSHA256") for p in lp["Parts"]]
      == [p["ChecksumSHA256"] for p in parts], lp["Parts"])
composite = b64(hashlib.sha256(raw).digest()) + "-2"
check("Complete with a wrong composite: BadDigest",
      error_of(lambda: s3.complete_multipart_upload(
          Bucket=B, Key="msum", UploadId=u, ChecksumSHA256=b64(b"y" * 32) + "-2",
          MultipartUpload={"Parts": parts}))[1] == "BadDigest")
r = s3.complete_multipart_upload(Bucket=B, Key="msum", UploadId=u, ChecksumSHA256=composite,
                                 MultipartUpload={"Parts": parts})
check("Complete answers the composite", r.get("ChecksumSHA256") == composite, r)
h = s3.head_object(Bucket=B, Key="msum", ChecksumMode="ENABLED")
check("HEAD: the composite, type COMPOSITE",
      h.get("ChecksumSHA256") == composite and h.get("ChecksumType") == "COMPOSITE", h)
g = s3.get_object(Bucket=B, Key="msum", PartNumber=2, ChecksumMode="ENABLED")
check("GET partNumber=2: part 2's SHA256",
      g.get("ChecksumSHA256") == parts[1]["ChecksumSHA256"] and g["Body"].read() == p2, g)

# A FULL_OBJECT CRC32 upload: the object's CRC32 is the whole content's (no "-N").
u = s3.create_multipart_upload(Bucket=B, Key="mcrc", ChecksumAlgorithm="CRC32", ChecksumType="FULL_OBJECT")
check("Create echoes FULL_OBJECT", u.get("ChecksumType") == "FULL_OBJECT", u)
u = u["UploadId"]
parts_crc = []
for n, p in [(1, p1), (2, p2)]:
    c = b64(zlib.crc32(p).to_bytes(4, "big"))
    r = s3.upload_part(Bucket=B, Key="mcrc", UploadId=u, PartNumber=n, Body=p,
                       ChecksumAlgorithm="CRC32", ChecksumCRC32=c)
    parts_crc.append({"ETag": r["ETag"], "PartNumber": n, "ChecksumCRC32": c})
whole_crc = b64(zlib.crc32(p1 + p2).to_bytes(4, "big"))
r = s3.complete_multipart_upload(Bucket=B, Key="mcrc", UploadId=u, ChecksumCRC32=whole_crc,
                                 ChecksumType="FULL_OBJECT", MultipartUpload={"Parts": parts_crc})
check("Complete answers the whole content's CRC32",
      r.get("ChecksumCRC32") == whole_crc and r.get("ChecksumType") == "FULL_OBJECT", r)
h = s3.head_object(Bucket=B, Key="mcrc", ChecksumMode="ENABLED")
check("HEAD: the FULL_OBJECT CRC32", h.get("ChecksumCRC32") == whole_crc, h)

# --- GetObjectAttributes.
a = s3.get_object_attributes(Bucket=B, Key="sum-SHA256",
                             ObjectAttributes=["ETag", "Checksum", "ObjectParts", "StorageClass", "ObjectSize"])
check("attributes of a single-part object",
      a["ObjectSize"] == 1024 and a["StorageClass"] == "STANDARD"
      and a["ETag"].strip('"') == hashlib.md5(body).hexdigest()
      and a["Checksum"]["ChecksumSHA256"] == want["SHA256"] and "ObjectParts" not in a, a)
a = s3.get_object_attributes(Bucket=B, Key="msum", ObjectAttributes=["ObjectParts", "ObjectSize", "Checksum"])
check("attributes of a multipart object",
      a["ObjectSize"] == len(p1) + len(p2) and a["ObjectParts"]["TotalPartsCount"] == 2
      and [p["Size"] for p in a["ObjectParts"]["Parts"]] == [len(p1), len(p2)]
      and a["ObjectParts"]["Parts"][1]["ChecksumSHA256"] == parts[1]["ChecksumSHA256"]
      and a["Checksum"]["ChecksumSHA256"] == composite, a)
a = s3.get_object_attributes(Bucket=B, Key="msum", ObjectAttributes=["ObjectParts"], MaxParts=1)
check("ObjectParts paged", a["ObjectParts"]["IsTruncated"] and len(a["ObjectParts"]["Parts"]) == 1
      and a["ObjectParts"]["NextPartNumberMarker"] == 1, a)
a = s3.get_object_attributes(Bucket=B, Key="msum", ObjectAttributes=["ObjectParts"], MaxParts=1,
                             PartNumberMarker=1)
check("ObjectParts second page", [p["PartNumber"] for p in a["ObjectParts"]["Parts"]] == [2]
      and not a["ObjectParts"]["IsTruncated"], a)

# --- UploadPartCopy, with and without x-amz-copy-source-range.
src = os.urandom(6 * MiB + 123)
s3.put_object(Bucket=B, Key="src", Body=src)
u = s3.create_multipart_upload(Bucket=B, Key="copied")["UploadId"]
cs = {"Bucket": B, "Key": "src"}
r1 = s3.upload_part_copy(Bucket=B, Key="copied", UploadId=u, PartNumber=1, CopySource=cs,
                         CopySourceRange=f"bytes=0-{5 * MiB - 1}")
r2 = s3.upload_part_copy(Bucket=B, Key="copied", UploadId=u, PartNumber=2, CopySource=cs)
r3 = s3.upload_part_copy(Bucket=B, Key="copied", UploadId=u, PartNumber=3, CopySource=cs,
                         CopySourceRange=f"bytes={5 * MiB}-{len(src) - 1}")
check("a copied part's ETag is its bytes' MD5",
      r1["CopyPartResult"]["ETag"].strip('"') == hashlib.md5(src[:5 * MiB]).hexdigest(), r1)
check("a range past the source: InvalidRange",
      error_of(lambda: s3.upload_part_copy(Bucket=B, Key="copied", UploadId=u, PartNumber=4, CopySource=cs,
                                           CopySourceRange=f"bytes=0-{len(src)}"))[1] == "InvalidRange")
for bad in ["0-2", "bytes=0", "bytes=hello-world", "bytes=5-2"]:
    check(f"a malformed range {bad!r}: 400 InvalidArgument",
          error_of(lambda: s3.upload_part_copy(Bucket=B, Key="copied", UploadId=u, PartNumber=4,
                                               CopySource=cs, CopySourceRange=bad)) == (400, "InvalidArgument"))
check("a copy from a missing source: NoSuchKey",
      error_of(lambda: s3.upload_part_copy(Bucket=B, Key="copied", UploadId=u, PartNumber=4,
                                           CopySource={"Bucket": B, "Key": "nope"}))[1] == "NoSuchKey")
s3.complete_multipart_upload(Bucket=B, Key="copied", UploadId=u, MultipartUpload={"Parts": [
    {"ETag": r["CopyPartResult"]["ETag"], "PartNumber": n} for n, r in [(1, r1), (2, r2), (3, r3)]]})
got = s3.get_object(Bucket=B, Key="copied")["Body"].read()
check("the copied object is the ranges' and the whole source's bytes",
      got == src[:5 * MiB] + src + src[5 * MiB:], len(got))
print("ALL OK", flush=True)
