"""What ceph/s3-tests found missing or wrong (bench/store/s3-tests.sh), checked with boto3 as
a user meets it; each check raises on a wrong answer. Environment: ENDPOINT, KEY, SECRET."""
import os

import boto3
from botocore.client import Config
from botocore.exceptions import ClientError

ep, key, secret = os.environ["ENDPOINT"], os.environ["KEY"], os.environ["SECRET"]
cfg = Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1})
s3 = boto3.client("s3", endpoint_url=ep, aws_access_key_id=key,
                  aws_secret_access_key=secret, region_name="citadel", config=cfg)


def check(name, cond, got=None):
    if not cond:
        raise AssertionError(f"{name}: {got!r}")
    print("ok", name, flush=True)


def code_of(fn):
    try:
        fn()
    except ClientError as e:
        return e.response["Error"]["Code"]
    raise AssertionError("expected an error")


# ListObjects (v1): marker paging, NextMarker with a delimiter, keys needing encoding.
s3.create_bucket(Bucket="compat")
keys = ["a+b", "a b/c", "a%2F/x", "dir/one", "dir/two", "z\u00e9", "plain"]
for k in keys:
    s3.put_object(Bucket="compat", Key=k, Body=k.encode())
r = s3.list_objects(Bucket="compat")  # boto3 asks for encoding-type=url and decodes
check("v1 lists every key, decoded", [o["Key"] for o in r["Contents"]] == sorted(keys), r.get("Contents"))
seen, marker = [], ""
for _ in range(20):
    r = s3.list_objects(Bucket="compat", MaxKeys=2, Marker=marker)
    seen += [o["Key"] for o in r.get("Contents", [])]
    if not r["IsTruncated"]:
        break
    check("no NextMarker without a delimiter", "NextMarker" not in r, r.get("NextMarker"))
    marker = seen[-1]
check("v1 marker paging", seen == sorted(keys), seen)
r = s3.list_objects(Bucket="compat", Delimiter="/", MaxKeys=2)
check("v1 delimiter page", r["IsTruncated"] and [p["Prefix"] for p in r["CommonPrefixes"]] == ["a b/", "a%2F/"], r)
check("NextMarker is the last prefix", r["NextMarker"] == "a%2F/", r.get("NextMarker"))
r = s3.list_objects(Bucket="compat", Delimiter="/", Marker=r["NextMarker"])
check("v1 page after a prefix marker", [o["Key"] for o in r["Contents"]] == ["a+b", "plain", "z\u00e9"]
      and [p["Prefix"] for p in r["CommonPrefixes"]] == ["dir/"], r)
# v2 with EncodingType=url explicitly: the answer is percent-encoded (boto3 leaves it so).
r = s3.list_objects_v2(Bucket="compat", Delimiter="/", EncodingType="url")
check("v2 url-encoded keys", [o["Key"] for o in r["Contents"]] == ["a%2Bb", "plain", "z%C3%A9"], r["Contents"])
check("v2 url-encoded prefixes", [p["Prefix"] for p in r["CommonPrefixes"]] == ["a%20b/", "a%252F/", "dir/"], r["CommonPrefixes"])
r = s3.list_objects_v2(Bucket="compat", Prefix="a+")
check("v2 without encoding: raw keys", [o["Key"] for o in r["Contents"]] == ["a+b"], r["Contents"])

# ListObjectVersions on an unversioned bucket: each object once, version "null", latest.
vs, km = [], None
for _ in range(20):
    kw = {"Bucket": "compat", "MaxKeys": 3}
    if km:
        kw["KeyMarker"], kw["VersionIdMarker"] = km, "null"
    r = s3.list_object_versions(**kw)
    vs += r.get("Versions", [])
    if not r["IsTruncated"]:
        break
    km = r["NextKeyMarker"]
check("versions: every key once", [v["Key"] for v in vs] == sorted(keys), vs)
check("versions: null, latest", all(v["VersionId"] == "null" and v["IsLatest"] for v in vs), vs)
# The clean-up every S3 tool does: delete what the versions listing shows, then the bucket.
d = s3.delete_objects(Bucket="compat", Delete={"Objects": [{"Key": v["Key"], "VersionId": v["VersionId"]} for v in vs], "Quiet": True})
check("delete by versions: no errors", not d.get("Errors"), d)
check("bucket empty", "Contents" not in s3.list_objects(Bucket="compat"))
s3.delete_bucket(Bucket="compat")
check("bucket gone", code_of(lambda: s3.list_object_versions(Bucket="compat")) == "NoSuchBucket")

# Listing details: an empty delimiter is not echoed; v1 always has Marker.
s3.create_bucket(Bucket="compat2")
s3.put_object(Bucket="compat2", Key="k", Body=b"x")
r = s3.list_objects_v2(Bucket="compat2", Delimiter="")
check("v2: empty delimiter not echoed", "Delimiter" not in r, r)
r = s3.list_objects(Bucket="compat2")
check("v1: Marker always there", r.get("Marker") == "", r)

# Bucket names: every dot-separated label starts and ends alphanumeric.
for bad in ("a.-bc", "ab-.c"):
    check(f"bucket name {bad} refused", code_of(lambda: s3.create_bucket(Bucket=bad)) == "InvalidBucketName")

# 304 carries the ETag and Last-Modified.
put = s3.put_object(Bucket="compat2", Key="cond", Body=b"cond")
try:
    s3.get_object(Bucket="compat2", Key="cond", IfNoneMatch=put["ETag"])
    raise AssertionError("expected 304")
except ClientError as e:
    h = e.response["ResponseMetadata"]["HTTPHeaders"]
    check("304", e.response["ResponseMetadata"]["HTTPStatusCode"] == 304, e.response)
    check("304 has the ETag", h.get("etag") == put["ETag"], h)
    check("304 has Last-Modified", h.get("last-modified", "").endswith("GMT"), h)

# Standard headers stored and returned (PUT, HEAD, GET, copy, multipart), response-* overrides.
import datetime
exp = datetime.datetime(2030, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
std = dict(CacheControl="max-age=60", ContentDisposition='attachment; filename="a.txt"',
           ContentEncoding="gzip", ContentLanguage="fr", Expires=exp)
s3.put_object(Bucket="compat2", Key="h", Body=b"hdr", **std)
for what, r in (("HEAD", s3.head_object(Bucket="compat2", Key="h")),
                ("GET", s3.get_object(Bucket="compat2", Key="h"))):
    for k, v in std.items():
        check(f"{what} {k}", r.get(k) == v, r.get(k))
s3.put_object(Bucket="compat2", Key="h4", Body=b"x", ContentEncoding="deflate, gzip")
r = s3.head_object(Bucket="compat2", Key="h4")
check("Content-Encoding as sent", r["ContentEncoding"] == "deflate, gzip", r.get("ContentEncoding"))
r = s3.get_object(Bucket="compat2", Key="h", ResponseContentDisposition="inline",
                  ResponseCacheControl="no-cache")
check("response-content-disposition", r["ContentDisposition"] == "inline", r["ContentDisposition"])
check("response-cache-control", r["CacheControl"] == "no-cache", r["CacheControl"])
s3.copy_object(Bucket="compat2", Key="h2", CopySource={"Bucket": "compat2", "Key": "h"})
check("copy keeps the headers", s3.head_object(Bucket="compat2", Key="h2")["CacheControl"] == "max-age=60")
s3.copy_object(Bucket="compat2", Key="h3", CopySource={"Bucket": "compat2", "Key": "h"},
               MetadataDirective="REPLACE", CacheControl="no-store")
r = s3.head_object(Bucket="compat2", Key="h3")
check("copy REPLACE sets them", r["CacheControl"] == "no-store" and "ContentDisposition" not in r, r)
up = s3.create_multipart_upload(Bucket="compat2", Key="mp", **std)
p1 = s3.upload_part(Bucket="compat2", Key="mp", UploadId=up["UploadId"], PartNumber=1, Body=b"z" * 10)
s3.complete_multipart_upload(Bucket="compat2", Key="mp", UploadId=up["UploadId"],
                             MultipartUpload={"Parts": [{"ETag": p1["ETag"], "PartNumber": 1}]})
r = s3.head_object(Bucket="compat2", Key="mp")
check("multipart keeps the headers", all(r.get(k) == v for k, v in std.items()), r)

# A retried Complete (its first answer lost) gets the same answer; another upload id does not.
MIB5 = 5 * 1024 * 1024
up = s3.create_multipart_upload(Bucket="compat2", Key="parts")
bodies = [b"a" * MIB5, b"b" * 1000]
parts = []
for n, b in enumerate(bodies, 1):
    e = s3.upload_part(Bucket="compat2", Key="parts", UploadId=up["UploadId"], PartNumber=n, Body=b)["ETag"]
    parts.append({"ETag": e, "PartNumber": n})
done = s3.complete_multipart_upload(Bucket="compat2", Key="parts", UploadId=up["UploadId"], MultipartUpload={"Parts": parts})
again = s3.complete_multipart_upload(Bucket="compat2", Key="parts", UploadId=up["UploadId"], MultipartUpload={"Parts": parts})
check("retried Complete: same ETag", again["ETag"] == done["ETag"], again)
check("Complete of an unknown upload", code_of(lambda: s3.complete_multipart_upload(
    Bucket="compat2", Key="parts", UploadId="0" * 32, MultipartUpload={"Parts": parts})) == "NoSuchUpload")
# GET/HEAD by partNumber: that part's bytes, the parts count, the whole object's ETag.
for n, b in enumerate(bodies, 1):
    r = s3.get_object(Bucket="compat2", Key="parts", PartNumber=n)
    check(f"GET part {n}", r["Body"].read() == b and r["PartsCount"] == 2 and r["ETag"] == done["ETag"], r)
    r = s3.head_object(Bucket="compat2", Key="parts", PartNumber=n)
    check(f"HEAD part {n}", r["ContentLength"] == len(b) and r["PartsCount"] == 2, r)
try:
    s3.get_object(Bucket="compat2", Key="parts", PartNumber=3)
    raise AssertionError("part 3 of 2")
except ClientError as e:
    check("part 3 of 2: 416 InvalidPartNumber", e.response["Error"]["Code"] == "InvalidPartNumber"
          and e.response["ResponseMetadata"]["HTTPStatusCode"] == 416, e.response)
# A presigned URL lives at most 7 days: a longer X-Amz-Expires is refused.
import urllib.request, urllib.error


def status_of(url):
    try:
        with urllib.request.urlopen(url) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code


week = 7 * 24 * 3600
url = s3.generate_presigned_url("get_object", Params={"Bucket": "compat2", "Key": "k"}, ExpiresIn=week)
check("presigned for 7 days: 200", status_of(url) == 200)
url = s3.generate_presigned_url("get_object", Params={"Bucket": "compat2", "Key": "k"}, ExpiresIn=week + 1)
check("presigned for 7 days + 1 s: 403", status_of(url) == 403)
r = s3.get_object(Bucket="compat2", Key="k", PartNumber=1)
check("a single-part object is its part 1", r["Body"].read() == b"x" and "PartsCount" not in r, r)
print("ALL OK")
