"""A bounded PUT/GET load checker. Object content is a function of its key, so any object
found later can be checked. Modes:
  load   — 4 threads PUT (and GET back) objects across ENDPOINTS until STOP_FILE exists or
           LIMIT objects / DEADLINE seconds; each acknowledged PUT is appended to ACKS (key
           sha256) and each failure bumps a line in FAILS. Keys start with PREFIX (if set).
  verify — every key in ACKS must read back exact from every endpoint; every key listed in
           the bucket must hold its key's content (no partial or wrong bytes).
  copy   — CopyObject of every key in ACKS to `<key>-copy` (see `copy`)."""
import hashlib, os, sys, threading, time

import boto3
from botocore.client import Config

eps = os.environ["ENDPOINTS"].split(",")
key, secret = os.environ["KEY"], os.environ["SECRET"]
cfg = Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1},
             connect_timeout=2, read_timeout=15)
clients = [boto3.client("s3", endpoint_url=e, aws_access_key_id=key, aws_secret_access_key=secret,
                        region_name="citadel", config=cfg) for e in eps]
BUCKET = "load"
SIZES = [0, 1, 1000, 300_000, 1_500_000]

def content(k):
    k = k.removesuffix("-copy")  # a CopyObject of k (mode copy)
    n = SIZES[int(hashlib.sha256(k.encode()).hexdigest(), 16) % len(SIZES)]
    out, block = bytearray(), hashlib.sha256(k.encode()).digest()
    while len(out) < n:
        block = hashlib.sha256(block).digest()
        out += block * 64
    return bytes(out[:n])

def load():
    try:
        clients[0].create_bucket(Bucket=BUCKET)
    except clients[0].exceptions.BucketAlreadyOwnedByYou:
        pass  # a second load into the same bucket
    acks, fails = open(os.environ["ACKS"], "a"), open(os.environ["FAILS"], "a")
    lock = threading.Lock()
    counter = [0]
    limit, deadline = int(os.environ.get("LIMIT", "600")), time.time() + float(os.environ.get("DEADLINE", "60"))
    stop = os.environ["STOP_FILE"]

    def worker(t):
        while time.time() < deadline and not os.path.exists(stop):
            with lock:
                counter[0] += 1
                i = counter[0]
            if i > limit:
                return
            k = f"{os.environ.get('PREFIX', '')}obj-{t}-{i:05d}"
            body = content(k)
            c = clients[i % len(clients)]
            try:
                c.put_object(Bucket=BUCKET, Key=k, Body=body)
            except Exception as e:
                with lock:
                    fails.write(f"{k} {type(e).__name__}\n"); fails.flush()
                time.sleep(0.05)
                continue
            with lock:
                acks.write(f"{k} {hashlib.sha256(body).hexdigest()}\n"); acks.flush()
            try:  # read back through the other server when it is up; never wrong bytes
                got = clients[(i + 1) % len(clients)].get_object(Bucket=BUCKET, Key=k)["Body"].read()
                if got != body:
                    print("WRONG BYTES", k, flush=True); os._exit(3)
            except Exception:
                pass

    ts = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for t in ts: t.start()
    for t in ts: t.join()
    print("LOAD DONE", counter[0], flush=True)

def verify():
    acked = {}
    for line in open(os.environ["ACKS"]):
        k, h = line.split()
        acked[k] = h
    for c in clients:
        for k, h in acked.items():
            got = c.get_object(Bucket=BUCKET, Key=k)["Body"].read()
            if hashlib.sha256(got).hexdigest() != h:
                print("LOST OR CORRUPT", k, flush=True); sys.exit(2)
    listed = 0
    for page in clients[0].get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        for o in page.get("Contents", []):
            listed += 1
            got = clients[0].get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read()
            if got != content(o["Key"]):
                print("WRONG CONTENT", o["Key"], flush=True); sys.exit(2)
    print(f"VERIFIED {len(acked)} acknowledged, {listed} listed", flush=True)

def copy():
    """Copies every acknowledged object to `<key>-copy` through the first endpoint, checks
    each copy's bytes, and records the copies as acknowledged too."""
    acked = [line.split() for line in open(os.environ["ACKS"])]
    with open(os.environ["ACKS"], "a") as acks:
        for k, h in acked:
            clients[0].copy_object(Bucket=BUCKET, Key=k + "-copy",
                                   CopySource={"Bucket": BUCKET, "Key": k})
            got = clients[0].get_object(Bucket=BUCKET, Key=k + "-copy")["Body"].read()
            if hashlib.sha256(got).hexdigest() != h:
                print("WRONG COPY", k, flush=True); sys.exit(2)
            acks.write(f"{k}-copy {h}\n")
    print("COPIED", len(acked), flush=True)

{"load": load, "verify": verify, "copy": copy}[sys.argv[1]]()
