"""Drives one `citadel up` (see run.sh) and prints, per phase, ops/s, MB/s, p50 and p99 of
a bounded load (CONC threads, each with its own boto3 client, OPS requests in all or DUR
seconds, whichever comes first), then the re-clone of a wiped store while GETs run.
Usage: bench.py CITADEL_BIN"""
import concurrent.futures as cf, json, os, shutil, signal, subprocess, sys, tempfile, threading, time

import boto3
from botocore.client import Config

BIN = sys.argv[1]
CONC = int(os.environ.get("CONC", "16"))
OPS = int(os.environ.get("OPS", "2000"))
DUR = float(os.environ.get("DUR", "20"))
F, B = "127.145.20", "127.145.21"

CLUSTER = f"""
[cluster]
name = "bench"
[segments]
front = "{F}.0/24"
back = "{B}.0/24"
[[host]]
name = "server-1"
[[host]]
name = "server-2"
[[host]]
name = "gate"
[[jail]]
name = "witness"
host = "gate"
role = "witness"
addresses = {{ front = "{F}.3" }}
ports = [7000]
health = {{ check = "tcp", port = 7000 }}
[[jail]]
name = "spare"
host = "gate"
role = "command"
addresses = {{ front = "{F}.4" }}
command = "citadel"
args = ["store", "spare", "--listen", "${{CITADEL_ADDR}}:3901", "--data", "${{CITADEL_DATA}}"]
ports = [3901]
health = {{ check = "tcp", port = 3901 }}
"""
for n in (1, 2):
    CLUSTER += f"""
[[jail]]
name = "db-{n}"
host = "server-{n}"
role = "db"
addresses = {{ front = "{F}.{n}2", back = "{B}.{n}2" }}
ports = [6379, 7000]
health = {{ check = "tcp", port = 6379 }}
[[jail]]
name = "store-{n}"
host = "server-{n}"
role = "store"
addresses = {{ front = "{F}.{n}3", back = "{B}.{n}3" }}
ports = [3900, 3901, 9100]
health = {{ check = "tcp", port = 3900 }}
"""
CLUSTER += '\n[store]\ncatalogue_interval_secs = 1\nspare = "spare"\n'
S3 = [f"http://{F}.13:3900", f"http://{F}.23:3900"]


def cli(state, *args):
    out = subprocess.run([BIN, args[0], "--state", state, *args[1:]], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"citadel {args}: {out.stderr}")
    return out.stdout


def wait(what, cond, within=120):
    deadline = time.time() + within
    while not cond():
        if time.time() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.1)


def healthy(state):
    try:
        jails = json.loads(cli(state, "status", "--json"))["jails"]
    except Exception:
        return False
    return len(jails) == 6 and all(j.get("health") == "healthy" for j in jails)


def clients(key, secret):
    cfg = Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1},
                 max_pool_connections=4, connect_timeout=5, read_timeout=30)
    return [boto3.client("s3", endpoint_url=S3[i % 2], aws_access_key_id=key,
                         aws_secret_access_key=secret, region_name="citadel", config=cfg)
            for i in range(CONC)]


def phase(name, cs, op, ops, size):
    """CONC threads share `ops` requests, bounded by DUR seconds; latency of each."""
    lat, errors, lock, counter = [], [0], threading.Lock(), [0]
    deadline = time.time() + DUR

    def worker(c):
        while time.time() < deadline:
            with lock:
                i = counter[0]
                counter[0] += 1
            if i >= ops:
                return
            t = time.perf_counter()
            try:
                op(c, i)
            except Exception:
                with lock:
                    errors[0] += 1
                continue
            with lock:
                lat.append(time.perf_counter() - t)

    start = time.perf_counter()
    with cf.ThreadPoolExecutor(CONC) as ex:
        list(ex.map(worker, cs))
    took = time.perf_counter() - start
    lat.sort()
    n = len(lat)
    pct = lambda p: lat[min(n - 1, int(n * p))] * 1000 if n else float("nan")
    row = dict(phase=name, ops=n, errors=errors[0], ops_s=n / took, mb_s=n * size / took / 1e6,
               p50_ms=pct(0.5), p99_ms=pct(0.99))
    print(f"{name:<14} {n:>6} ops {errors[0]:>3} err  {row['ops_s']:>8.0f} ops/s "
          f"{row['mb_s']:>7.1f} MB/s  p50 {row['p50_ms']:6.1f} ms  p99 {row['p99_ms']:6.1f} ms", flush=True)
    return row


def main():
    work = tempfile.mkdtemp(prefix="citadel-store-bench.")
    state = os.path.join(work, "state")
    with open(os.path.join(work, "cluster.toml"), "w") as f:
        f.write(CLUSTER)
    up = subprocess.Popen([BIN, "up", "--file", os.path.join(work, "cluster.toml"), "--state", state],
                          stdin=subprocess.DEVNULL, stdout=open(os.path.join(work, "up.out"), "w"),
                          stderr=open(os.path.join(work, "up.log"), "w"))
    try:
        wait("the cluster", lambda: healthy(state))
        k = json.loads(cli(state, "store", "key", "create", "bench", "--json"))
        cs = clients(k["access_key"], k["secret_key"])
        cs[0].create_bucket(Bucket="bench")
        small, large = os.urandom(4096), os.urandom(1024 * 1024)
        big_ops = max(OPS // 7, CONC)
        print(f"CONC={CONC} OPS={OPS} (1 MiB: {big_ops}) DUR<={DUR}s; every PUT fsynced on both servers", flush=True)
        # Distinct content per object: a 4-byte counter prefix defeats block dedup.
        body = lambda base, i: i.to_bytes(4, "big") + base[4:]
        rows = [
            phase("PUT 4 KiB", cs, lambda c, i: c.put_object(Bucket="bench", Key=f"s{i}", Body=body(small, i)), OPS, 4096),
            phase("GET 4 KiB", cs, lambda c, i: c.get_object(Bucket="bench", Key=f"s{i % OPS}")["Body"].read(), OPS, 4096),
            phase("PUT 1 MiB", cs, lambda c, i: c.put_object(Bucket="bench", Key=f"l{i}", Body=body(large, i)), big_ops, len(large)),
            phase("GET 1 MiB", cs, lambda c, i: c.get_object(Bucket="bench", Key=f"l{i % big_ops}")["Body"].read(), big_ops, len(large)),
        ]
        # Re-clone: store-2 emptied and restarted; GETs of 1 MiB meanwhile.
        cli(state, "jail", "stop", "store-2")
        shutil.rmtree(os.path.join(state, "jails", "store-2", "data", "blocks"), ignore_errors=True)
        cli(state, "jail", "start", "store-2")
        t0 = time.time()

        def store2():
            st = json.loads(cli(state, "store", "status", "--json"))
            return next((s for s in st["servers"] if s["name"] == "store-2"), {}).get("reclone", {})

        def reclone():
            r = store2()
            done = r.get("finished", 0) >= int(t0) and not r.get("active") and r.get("done_blocks", 0) > 0
            return r if done else None

        wait("store-2 re-cloning", lambda: store2().get("active") or reclone(), within=60)
        during = phase("GET 1 MiB (during re-clone)", cs, lambda c, i: c.get_object(
            Bucket="bench", Key=f"l{i % big_ops}")["Body"].read(), big_ops, len(large))
        wait("store-2 re-cloned", lambda: reclone() is not None, within=600)
        r = reclone()
        secs = r["elapsed_ms"] / 1000
        print(f"re-clone: {r['done_blocks']} blocks, {r['done_bytes'] / 1e6:.0f} MB in {secs:.1f} s "
              f"= {r['done_bytes'] / secs / 1e6:.1f} MB/s (cap 50 MiB/s = 52.4 MB/s); GET 1 MiB meanwhile "
              f"{during['ops_s'] / rows[3]['ops_s'] * 100:.0f} % of before", flush=True)
        print(json.dumps({"rows": rows + [during], "reclone": r}))
    finally:
        up.send_signal(signal.SIGTERM)
        try:
            up.wait(timeout=30)
        except subprocess.TimeoutExpired:
            up.kill()
            up.wait()
        shutil.rmtree(work, ignore_errors=True)


main()
