"""Drives the store with boto3 as a user would; each check raises on a wrong answer.
Environment: ENDPOINT, KEY, SECRET. Prints one line per check."""
import datetime, hashlib, os, sys, urllib.request, urllib.error
from concurrent.futures import ThreadPoolExecutor

import boto3
import botocore.auth
from botocore.client import Config
from botocore.exceptions import ClientError

ep, key, secret = os.environ["ENDPOINT"], os.environ["KEY"], os.environ["SECRET"]
cfg = Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1},
             max_pool_connections=16)
s3 = boto3.client("s3", endpoint_url=ep, aws_access_key_id=key,
                  aws_secret_access_key=secret, region_name="citadel", config=cfg)

def code_of(fn):
    try:
        fn()
    except ClientError as e:
        return e.response["Error"]["Code"]
    raise AssertionError("expected an error")

def check(name, cond):
    if not cond:
        raise AssertionError(name)
    print("ok", name, flush=True)

s3.create_bucket(Bucket="photos")
check("bucket listed", [b["Name"] for b in s3.list_buckets()["Buckets"]] == ["photos"])
check("create twice", code_of(lambda: s3.create_bucket(Bucket="photos")) == "BucketAlreadyOwnedByYou")
check("bad bucket name", code_of(lambda: s3.create_bucket(Bucket="Bad_Name")) == "InvalidBucketName")
check("head missing bucket", code_of(lambda: s3.head_bucket(Bucket="nope")) in ("404", "NoSuchBucket"))

sizes = {"empty": 0, "one": 1, "five-mib": 5 * 1024 * 1024}
bodies = {}
for name, n in sizes.items():
    body = os.urandom(n)
    bodies[name] = body
    r = s3.put_object(Bucket="photos", Key=name, Body=body, ContentType="application/x-test",
                      Metadata={"owner": "ann"})
    check(f"etag {name}", r["ETag"].strip('"') == hashlib.md5(body).hexdigest())
for name, body in bodies.items():
    got = s3.get_object(Bucket="photos", Key=name)
    check(f"round trip {name}", got["Body"].read() == body)
    check(f"metadata {name}", got["Metadata"] == {"owner": "ann"} and got["ContentType"] == "application/x-test")
big = bodies["five-mib"]
for rng, want in [("bytes=0-0", big[:1]), ("bytes=1048570-1048600", big[1048570:1048601]),
                  ("bytes=-10", big[-10:]), ("bytes=5000000-", big[5000000:])]:
    got = s3.get_object(Bucket="photos", Key="five-mib", Range=rng)
    check(f"range {rng}", got["Body"].read() == want and got["ResponseMetadata"]["HTTPStatusCode"] == 206)
check("range past end", code_of(lambda: s3.get_object(Bucket="photos", Key="one", Range="bytes=5-9")) == "InvalidRange")
h = s3.head_object(Bucket="photos", Key="five-mib")
check("head size", h["ContentLength"] == len(big))
check("missing key", code_of(lambda: s3.get_object(Bucket="photos", Key="nope")) == "NoSuchKey")
check("if-none-match", code_of(lambda: s3.get_object(Bucket="photos", Key="one", IfNoneMatch=h["ETag"].replace(h["ETag"], '"' + hashlib.md5(bodies["one"]).hexdigest() + '"'))) in ("304", "NotModified"))
check("if-match fails", code_of(lambda: s3.get_object(Bucket="photos", Key="one", IfMatch='"00"')) == "PreconditionFailed")

import base64
good_md5 = base64.b64encode(hashlib.md5(b"hello").digest()).decode()
s3.put_object(Bucket="photos", Key="md5", Body=b"hello", ContentMD5=good_md5)
bad_md5 = base64.b64encode(hashlib.md5(b"other").digest()).decode()
check("bad content-md5", code_of(lambda: s3.put_object(Bucket="photos", Key="md5bad", Body=b"hello", ContentMD5=bad_md5)) == "BadDigest")
check("nothing stored on bad md5", code_of(lambda: s3.head_object(Bucket="photos", Key="md5bad")) in ("404", "NoSuchKey"))

s3.copy_object(Bucket="photos", Key="copy", CopySource={"Bucket": "photos", "Key": "five-mib"})
check("copy", s3.get_object(Bucket="photos", Key="copy")["Body"].read() == big)

# 2,500 keys in a tree, then paginated listing.
s3.create_bucket(Bucket="many")
keys = [f"dir{i % 5}/file{i:05d}" for i in range(2500)]
with ThreadPoolExecutor(8) as ex:
    list(ex.map(lambda k: s3.put_object(Bucket="many", Key=k, Body=k.encode()), keys))
seen, pages = [], 0
for page in s3.get_paginator("list_objects_v2").paginate(Bucket="many"):
    pages += 1
    seen += [o["Key"] for o in page.get("Contents", [])]
check("2500 keys in order over 3 pages", seen == sorted(keys) and pages == 3)
seen = []
for page in s3.get_paginator("list_objects_v2").paginate(Bucket="many", Prefix="dir3/", PaginationConfig={"PageSize": 100}):
    seen += [o["Key"] for o in page.get("Contents", [])]
check("prefix with small pages", seen == sorted(k for k in keys if k.startswith("dir3/")))
r = s3.list_objects_v2(Bucket="many", Delimiter="/")
check("delimiter", [p["Prefix"] for p in r["CommonPrefixes"]] == [f"dir{i}/" for i in range(5)] and "Contents" not in r)
r = s3.list_objects_v2(Bucket="many", Delimiter="/", MaxKeys=2)
r2 = s3.list_objects_v2(Bucket="many", Delimiter="/", MaxKeys=2, ContinuationToken=r["NextContinuationToken"])
check("delimiter pages", [p["Prefix"] for p in r2["CommonPrefixes"]] == ["dir2/", "dir3/"])

check("bucket not empty", code_of(lambda: s3.delete_bucket(Bucket="many")) == "BucketNotEmpty")
for i in range(0, 2500, 1000):
    r = s3.delete_objects(Bucket="many", Delete={"Objects": [{"Key": k} for k in keys[i:i + 1000]]})
    check(f"delete_objects {i}", len(r["Deleted"]) == len(keys[i:i + 1000]))
s3.delete_bucket(Bucket="many")
s3.delete_object(Bucket="photos", Key="one")
check("deleted", code_of(lambda: s3.head_object(Bucket="photos", Key="one")) in ("404", "NoSuchKey"))

# Wrong signature: right key id, wrong secret.
bad = boto3.client("s3", endpoint_url=ep, aws_access_key_id=key, aws_secret_access_key="x" * 40,
                   region_name="citadel", config=cfg)
check("wrong signature", code_of(lambda: bad.put_object(Bucket="photos", Key="evil", Body=b"x")) == "SignatureDoesNotMatch")
check("nothing stored on wrong signature", code_of(lambda: s3.head_object(Bucket="photos", Key="evil")) in ("404", "NoSuchKey"))
unknown = boto3.client("s3", endpoint_url=ep, aws_access_key_id="GKNOSUCHKEY", aws_secret_access_key="x" * 40,
                       region_name="citadel", config=cfg)
check("unknown key", code_of(lambda: unknown.list_buckets()) == "InvalidAccessKeyId")

# Presigned URLs: a good one works, an expired one is refused.
url = s3.generate_presigned_url("get_object", Params={"Bucket": "photos", "Key": "md5"}, ExpiresIn=60)
check("presigned get", urllib.request.urlopen(url).read() == b"hello")
# Signed two minutes ago for one minute (botocore's signing clock set back, no waiting):
# expired a minute ago.
now = botocore.auth.get_current_datetime
botocore.auth.get_current_datetime = lambda: now() - datetime.timedelta(seconds=120)
try:
    url = s3.generate_presigned_url("get_object", Params={"Bucket": "photos", "Key": "md5"}, ExpiresIn=60)
finally:
    botocore.auth.get_current_datetime = now
assert "X-Amz-Expires=60" in url, url
try:
    urllib.request.urlopen(url)
    raise AssertionError("expired URL accepted")
except urllib.error.HTTPError as e:
    body = e.read().decode()
    check("expired presigned", e.code == 403 and "<Code>AccessDenied</Code>" in body)
# x-amz-checksum-* headers are verified (s3s leaves them to us).
wrong_sha = base64.b64encode(hashlib.sha256(b"other").digest()).decode()
check("wrong checksum header", code_of(lambda: s3.put_object(Bucket="photos", Key="sum", Body=b"hello", ChecksumSHA256=wrong_sha)) == "BadDigest")
good_sha = base64.b64encode(hashlib.sha256(b"hello").digest()).decode()
s3.put_object(Bucket="photos", Key="sum", Body=b"hello", ChecksumSHA256=good_sha)
check("good checksum header", s3.get_object(Bucket="photos", Key="sum")["Body"].read() == b"hello")

# A body changed on the wire after the client signed/checksummed it.
modes = []
def tamper(request, **kw):
    modes.append(request.headers.get("x-amz-content-sha256", b""))
    body = request.body
    data = body.read() if hasattr(body, "read") else bytes(body)
    i = data.index(b"\r\n") + 5 if data.startswith(b"1") or b";chunk-signature" in data[:100] else 3
    request.body = data[:i] + bytes([data[i] ^ 1]) + data[i + 1:]
tc = boto3.client("s3", endpoint_url=ep, aws_access_key_id=key, aws_secret_access_key=secret,
                  region_name="citadel", config=cfg)
tc.meta.events.register("before-send.s3.PutObject", tamper)
try:
    tc.put_object(Bucket="photos", Key="tampered", Body=b"0123456789" * 100)
    raise AssertionError("tampered body accepted")
except ClientError as e:
    code = e.response["Error"]["Code"]
    print("tamper mode", modes, "->", code, e.response["Error"].get("Message"))
check("tampered body refused", code in ("BadDigest", "XAmzContentSHA256Mismatch", "SignatureDoesNotMatch"))
check("nothing stored on tampered body", code_of(lambda: s3.head_object(Bucket="photos", Key="tampered")) in ("404", "NoSuchKey"))
# A 5 GiB Content-Length with a 1000-byte body: the client then closes its side.
import socket
from urllib.parse import urlparse
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
u = urlparse(ep)
req = AWSRequest(method="PUT", url=f"{ep}/photos/short", headers={
    "Content-Length": str(5 * 1024 ** 3), "x-amz-content-sha256": "UNSIGNED-PAYLOAD"})
SigV4Auth(Credentials(key, secret), "s3", "citadel").add_auth(req)
head = f"PUT /photos/short HTTP/1.1\r\nHost: {u.netloc}\r\n" + "".join(
    f"{k}: {v}\r\n" for k, v in req.headers.items() if k.lower() != "host") + "\r\n"
sock = socket.create_connection((u.hostname, u.port), timeout=20)
sock.sendall(head.encode() + b"x" * 1000)
sock.shutdown(socket.SHUT_WR)
reply = b""
while True:
    got = sock.recv(65536)
    if not got:
        break
    reply += got
print("short body ->", reply.split(b"\r\n")[0], flush=True)
check("short body refused", b"<Code>IncompleteBody</Code>" in reply and reply.startswith(b"HTTP/1.1 400"))
check("nothing stored on short body", code_of(lambda: s3.head_object(Bucket="photos", Key="short")) in ("404", "NoSuchKey"))
print("ALL OK")
