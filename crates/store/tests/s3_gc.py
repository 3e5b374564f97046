"""Garbage collection checks against one store server (ENDPOINT), with boto3. Modes:
  fill    — PUT N (env) distinct 1.5 MB objects and two keys with the same 1 MB content
            into bucket `gc-test`; prints FILLED.
  delete  — DELETE every object but `twin-b`; prints DELETED.
  twin    — `twin-b` still reads back exact; prints TWIN OK.
  stall   — a signed PUT of 1 MiB + 100 bytes whose body stops after the first 1 MiB (one
            whole block, written to both disks) until that block file is gone from every
            dir in DATA_DIRS (GC found it unreferenced and past the grace), then ends. The PUT
            must be refused (503) and the key absent; a second, prompt PUT of the same
            content must succeed and read back exact. Prints STALL OK.
"""
import hashlib, http.client, os, sys, time, urllib.parse

import boto3
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.client import Config
from botocore.credentials import Credentials

ep, key, secret = os.environ["ENDPOINT"], os.environ["KEY"], os.environ["SECRET"]
s3 = boto3.client("s3", endpoint_url=ep, aws_access_key_id=key, aws_secret_access_key=secret,
                  region_name="citadel",
                  config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))
B = "gc-test"
MIB = 1024 * 1024

def data(seed, n):
    out, h = bytearray(), hashlib.sha256(seed.encode()).digest()
    while len(out) < n:
        h = hashlib.sha256(h).digest()
        out += h * 64
    return bytes(out[:n])

def fill():
    s3.create_bucket(Bucket=B)
    for i in range(int(os.environ["N"])):
        s3.put_object(Bucket=B, Key=f"obj-{i}", Body=data(f"obj-{i}", 1_500_000))
    twin = data("twin", MIB)
    s3.put_object(Bucket=B, Key="twin-a", Body=twin)
    s3.put_object(Bucket=B, Key="twin-b", Body=twin)
    print("FILLED", flush=True)

def delete():
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=B).get("Contents", []) if o["Key"] != "twin-b"]
    s3.delete_objects(Bucket=B, Delete={"Objects": [{"Key": k} for k in keys]})
    left = [o["Key"] for o in s3.list_objects_v2(Bucket=B).get("Contents", [])]
    assert left == ["twin-b"], left
    print("DELETED", len(keys), flush=True)

def twin():
    got = s3.get_object(Bucket=B, Key="twin-b")["Body"].read()
    assert got == data("twin", MIB), "twin-b lost or corrupt"
    print("TWIN OK", flush=True)

def block_path(d, h):
    return os.path.join(d, "blocks", h[:2], h)

def stall():
    body = data("stalled", MIB + 100)
    first = hashlib.sha256(body[:MIB]).hexdigest()
    dirs = os.environ["DATA_DIRS"].split(",")
    url = f"{ep}/{B}/stalled"
    req = AWSRequest(method="PUT", url=url, data=body,
                     headers={"x-amz-content-sha256": "UNSIGNED-PAYLOAD",
                              "Content-Length": str(len(body))})
    S3SigV4Auth(Credentials(key, secret), "s3", "citadel").add_auth(req)
    u = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    conn.putrequest("PUT", u.path, skip_accept_encoding=True)
    for k, v in req.headers.items():
        conn.putheader(k, v)
    conn.endheaders()
    conn.send(body[:MIB])
    # The first block reaches both disks, then GC collects it: nothing references it yet.
    deadline = time.time() + 30
    while not all(os.path.exists(block_path(d, first)) for d in dirs):
        assert time.time() < deadline, "the first block never reached both disks"
        time.sleep(0.02)
    while any(os.path.exists(block_path(d, first)) for d in dirs):
        assert time.time() < deadline, "GC never collected the stalled upload's block"
        time.sleep(0.02)
    conn.send(body[MIB:])
    resp = conn.getresponse()
    text = resp.read().decode(errors="replace")
    assert resp.status == 503, f"the stalled PUT was answered {resp.status}: {text}"
    try:
        s3.head_object(Bucket=B, Key="stalled")
        raise AssertionError("the refused PUT left an object")
    except s3.exceptions.ClientError as e:
        assert e.response["Error"]["Code"] in ("404", "NoSuchKey"), e
    s3.put_object(Bucket=B, Key="stalled", Body=body)
    assert s3.get_object(Bucket=B, Key="stalled")["Body"].read() == body
    print("STALL OK", resp.status, flush=True)

{"fill": fill, "delete": delete, "twin": twin, "stall": stall}[sys.argv[1]]()
