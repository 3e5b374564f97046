"""Store benchmark load tool (see run.sh). Per phase: ops/s, MB/s, p50 and p99 of a bounded
load — PROCS processes, each with CONC/PROCS threads and one S3 client per thread (so the
GIL of one process does not cap the load; CLIENT=raw, a lean SigV4 client, or CLIENT=boto3),
OPS requests in all or DUR seconds, whichever comes first — and the CPU the load tool and the
servers used meanwhile (from /proc).

  bench.py citadel CITADEL_BIN OUT.json   # a `citadel up` of its own, the phases, the re-clone
  bench.py s3 NAME ENDPOINTS REGION OUT.json   # the phases against running S3 endpoints
                                          # (comma-separated; key from S3_KEY / S3_SECRET, bucket
                                          # `bench` created here, server PIDs from SERVER_PIDS)
  bench.py compare GARAGE.json CITADEL.json   # the table with ratios (Citadel / Garage)
"""
import hashlib, http.client, io, json, multiprocessing as mp, os, shutil, signal, subprocess, sys, tempfile, threading, time

CLIENT = os.environ.get("CLIENT", "raw")  # raw (lean SigV4, see RawS3) or boto3
CONC = int(os.environ.get("CONC", "16"))
PROCS = max(1, min(CONC, int(os.environ.get("PROCS", "4"))))
OPS = int(os.environ.get("OPS", "2000"))
DUR = float(os.environ.get("DUR", "20"))
SMALL, LARGE = 4096, 1024 * 1024
BIG_OPS = max(OPS // 7, CONC)
TICK = os.sysconf("SC_CLK_TCK")
F, B = "127.145.20", "127.145.21"


# ---- the load: PROCS worker processes, each with its threads and clients ----

def client(endpoint, key, secret, region):
    import boto3
    from botocore.client import Config
    cfg = Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1},
                 max_pool_connections=4, connect_timeout=5, read_timeout=30,
                 # No CRC32 of every body on either side: only the SigV4 payload hash.
                 request_checksum_calculation="when_required",
                 response_checksum_validation="when_required")
    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=key,
                        aws_secret_access_key=secret, region_name=region, config=cfg)


class RawS3:
    """A lean S3 client for the load (CLIENT=raw, the default): one keep-alive HTTP/1.1
    connection, path-style, signed by botocore's SigV4 signer with the payload's SHA-256 — the
    same requests boto3 sends over http, without boto3's per-request pipeline (whose CPU, on 2
    cores, the load tool would otherwise spend more of than the servers)."""

    def __init__(self, endpoint, key, secret, region):
        import urllib.parse
        u = urllib.parse.urlsplit(endpoint)
        self.host, self.port, self.hosthdr = u.hostname, u.port or 80, u.netloc
        self.key, self.secret, self.region = key, secret, region
        self.conn, self.signer = None, None

    def _signer(self):
        # botocore's own SigV4 signer: the signature boto3 would make, without the rest of
        # boto3's per-request pipeline.
        if self.signer is None:
            from botocore.auth import S3SigV4Auth
            from botocore.credentials import Credentials
            self.signer = S3SigV4Auth(Credentials(self.key, self.secret), "s3", self.region)
        return self.signer

    def request(self, method, path, body=b""):
        from botocore.awsrequest import AWSRequest
        req = AWSRequest(method=method, url=f"http://{self.hosthdr}{path}",
                         data=body if method == "PUT" else b"",
                         headers={"x-amz-content-sha256": hashlib.sha256(body).hexdigest()})
        self._signer().add_auth(req)
        headers = dict(req.headers.items())
        if method == "PUT":
            headers["Content-Length"] = str(len(body))
        for attempt in (1, 2):
            reused = self.conn is not None
            try:
                if self.conn is None:
                    self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
                self.conn.request(method, path, body=body if method == "PUT" else None, headers=headers)
                r = self.conn.getresponse()
                data = r.read()
                break
            except Exception as e:
                if self.conn is not None:
                    self.conn.close()
                self.conn = None
                # A kept-alive connection the server closed meanwhile (it restarted): once
                # more on a new one, as urllib3's pool does under boto3.
                stale = isinstance(e, (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError))
                if not (reused and stale and attempt == 1):
                    raise
        if r.status != 200:
            raise RuntimeError(f"{method} {path}: {r.status} {data[:200]!r}")
        return data

    def put_object(self, Bucket, Key, Body):
        self.request("PUT", f"/{Bucket}/{Key}", Body)

    def get_object(self, Bucket, Key):
        return {"Body": io.BytesIO(self.request("GET", f"/{Bucket}/{Key}"))}


def run_op(c, spec, i, bases):
    kind, prefix, size, keys = spec
    if kind == "put":
        # Distinct content per object: a 4-byte counter prefix defeats block dedup.
        c.put_object(Bucket="bench", Key=f"{prefix}{i}", Body=i.to_bytes(4, "big") + bases[size][4:])
    else:
        # Only objects the PUT phase stored (it may have stopped at DUR, or had errors).
        got = c.get_object(Bucket="bench", Key=f"{prefix}{keys[i % len(keys)]}")["Body"].read()
        if len(got) != size:
            raise RuntimeError(f"short read: {len(got)} of {size}")


def worker_main(conn, wid, threads, endpoints, key, secret, region, counter, stop, barrier):
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    make = RawS3 if CLIENT == "raw" else client
    cs = [make(endpoints[(wid * threads + t) % len(endpoints)], key, secret, region)
          for t in range(threads)]
    bases = {SMALL: os.urandom(SMALL), LARGE: os.urandom(LARGE)}
    conn.send("ready")
    while True:
        spec = conn.recv()
        if spec is None:
            return
        ops = spec[4]
        spec = spec[:4]
        lat, errors, lock, stored = [], [0], threading.Lock(), []
        barrier.wait()
        deadline = time.monotonic() + DUR

        def run(c):
            while time.monotonic() < deadline and not stop.value:
                with counter.get_lock():
                    i = counter.value
                    counter.value += 1
                if i >= ops:
                    return
                t = time.monotonic()
                try:
                    run_op(c, spec, i, bases)
                except Exception:
                    with lock:
                        errors[0] += 1
                    continue
                d = time.monotonic() - t
                with lock:
                    lat.append(d)
                    stored.append(i)

        ts = [threading.Thread(target=run, args=(c,)) for c in cs]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        conn.send((lat, errors[0], time.monotonic(), stored if spec[0] == "put" else []))


def cpu_ticks(pids):
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, IndexError, ValueError):
            pass
    return total


def descendants(root):
    """`root` and every process below it (the jails of a `citadel up`)."""
    kids = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(d))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


class Load:
    def __init__(self, endpoints, key, secret, region, server_pids):
        ctx = mp.get_context("fork")
        self.server_pids = server_pids  # a callable: the servers' PIDs now
        self.stored = {}  # prefix -> indices a PUT phase stored
        self.counter = ctx.Value("q", 0)
        self.stop = ctx.Value("b", 0)
        self.barrier = ctx.Barrier(PROCS + 1)
        per = [CONC // PROCS + (1 if w < CONC % PROCS else 0) for w in range(PROCS)]
        self.conns, self.procs = [], []
        for w in range(PROCS):
            a, b = ctx.Pipe()
            p = ctx.Process(target=worker_main, daemon=True,
                            args=(b, w, per[w], endpoints, key, secret, region, self.counter, self.stop, self.barrier))
            p.start()
            self.conns.append(a)
            self.procs.append(p)
        for a in self.conns:
            if not a.poll(120) or a.recv() != "ready":
                raise RuntimeError("load process did not start")

    def phase(self, name, kind, prefix, size, ops, keys=None, until=None):
        """CONC threads over PROCS processes share `ops` requests, bounded by DUR seconds (and
        by `until()` turning true, when given); a GET phase reads the `keys` a PUT phase stored."""
        self.counter.value = 0
        self.stop.value = 0
        for a in self.conns:
            a.send((kind, prefix, size, keys, ops))
        srv = self.server_pids()
        load_pids = [p.pid for p in self.procs]
        self.barrier.wait(timeout=60)
        start = time.monotonic()
        c_load, c_srv = cpu_ticks(load_pids), cpu_ticks(srv)
        if until:
            def watch():
                while not self.stop.value and time.monotonic() < start + DUR:
                    if until():
                        self.stop.value = 1
                    time.sleep(0.1)
            threading.Thread(target=watch, daemon=True).start()
        lat, errors, end, stored = [], 0, start, []
        for a in self.conns:
            if not a.poll(DUR + 60):
                raise RuntimeError(f"{name}: a load process did not finish")
            l, e, t, k = a.recv()
            lat += l
            errors += e
            end = max(end, t)
            stored += k
        self.stop.value = 1
        took = max(end - start, 1e-9)
        c_load, c_srv = cpu_ticks(load_pids) - c_load, cpu_ticks(srv) - c_srv
        lat.sort()
        n = len(lat)
        pct = lambda p: lat[min(n - 1, int(n * p))] * 1000 if n else float("nan")
        row = dict(phase=name, ops=n, errors=errors, secs=took, ops_s=n / took, mb_s=n * size / took / 1e6,
                   p50_ms=pct(0.5), p99_ms=pct(0.99),
                   cpu_load=c_load / TICK / took * 100, cpu_servers=c_srv / TICK / took * 100)
        print(f"{name:<28} {n:>6} ops {errors:>3} err {row['ops_s']:>7.0f} ops/s {row['mb_s']:>7.1f} MB/s"
              f"  p50 {row['p50_ms']:6.1f} ms  p99 {row['p99_ms']:6.1f} ms"
              f"  cpu load tool {row['cpu_load']:3.0f} %, servers {row['cpu_servers']:3.0f} %", flush=True)
        if kind == "put":
            self.stored[prefix] = sorted(stored)
        return row

    def phases(self):
        print(f"CLIENT={CLIENT} CONC={CONC} over PROCS={PROCS} processes, OPS={OPS} (1 MiB: {BIG_OPS}) DUR<={DUR}s, "
              f"load average {os.getloadavg()[0]:.1f}", flush=True)
        rows = [self.phase("PUT 4 KiB", "put", "s", SMALL, OPS)]
        rows.append(self.phase("GET 4 KiB", "get", "s", SMALL, OPS, self.stored["s"]))
        rows.append(self.phase("PUT 1 MiB", "put", "l", LARGE, BIG_OPS))
        rows.append(self.phase("GET 1 MiB", "get", "l", LARGE, BIG_OPS, self.stored["l"]))
        return rows

    def close(self):
        for a in self.conns:
            try:
                a.send(None)
            except OSError:
                pass
        for p in self.procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join()


def save(path, target, rows, **extra):
    with open(path, "w") as f:
        json.dump(dict(target=target, client=CLIENT, conc=CONC, procs=PROCS, ops=OPS, dur=DUR,
                       loadavg=os.getloadavg(), rows=rows, **extra), f, indent=1)


# ---- S3 endpoints already running (Garage) ----

def s3_main(name, endpoints, region, out):
    import boto3  # noqa: F401  (fail here, not in the workers)
    key, secret = os.environ["S3_KEY"], os.environ["S3_SECRET"]
    pids = [int(p) for p in os.environ.get("SERVER_PIDS", "").split()]
    eps = endpoints.split(",")
    # Until the layout has reached both nodes: the bucket, then a PUT and GET through each.
    cs = [client(e, key, secret, region) for e in eps]
    wait("the bucket", lambda: attempt(lambda: cs[0].create_bucket(Bucket="bench"))
         or attempt(lambda: cs[0].head_bucket(Bucket="bench")), within=60)
    for c in cs:
        wait("a PUT and GET", lambda: attempt(lambda: (c.put_object(Bucket="bench", Key="probe", Body=b"x"),
                                                       c.get_object(Bucket="bench", Key="probe"))), within=60)
    load = Load(eps, key, secret, region, lambda: pids)
    try:
        print(f"{name}: {', '.join(eps)}", flush=True)
        save(out, name, load.phases())
    finally:
        load.close()


# ---- Citadel: a `citadel up` of its own ----

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


def cli(bin_, state, *args):
    out = subprocess.run([bin_, args[0], "--state", state, *args[1:]], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"citadel {args}: {out.stderr}")
    return out.stdout


def attempt(f):
    try:
        f()
        return True
    except Exception:
        return False


def wait(what, cond, within=120):
    deadline = time.time() + within
    while not cond():
        if time.time() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.1)


def citadel_main(bin_, out):
    work = tempfile.mkdtemp(prefix="citadel-store-bench.")
    state = os.path.join(work, "state")
    with open(os.path.join(work, "cluster.toml"), "w") as f:
        f.write(CLUSTER)
    up = subprocess.Popen([bin_, "up", "--file", os.path.join(work, "cluster.toml"), "--state", state],
                          stdin=subprocess.DEVNULL, stdout=open(os.path.join(work, "up.out"), "w"),
                          stderr=open(os.path.join(work, "up.log"), "w"))
    load = None

    def healthy():
        try:
            jails = json.loads(cli(bin_, state, "status", "--json"))["jails"]
        except Exception:
            return False
        return len(jails) == 6 and all(j.get("health") == "healthy" for j in jails)

    try:
        wait("the cluster", healthy)
        k = json.loads(cli(bin_, state, "store", "key", "create", "bench", "--json"))
        client(S3[0], k["access_key"], k["secret_key"], "citadel").create_bucket(Bucket="bench")
        load = Load(S3, k["access_key"], k["secret_key"], "citadel", lambda: descendants(up.pid))
        print("citadel: every PUT fsynced on both servers", flush=True)
        rows = load.phases()
        # Re-clone: store-2 emptied and restarted; GETs of 1 MiB meanwhile.
        cli(bin_, state, "jail", "stop", "store-2")
        shutil.rmtree(os.path.join(state, "jails", "store-2", "data", "blocks"), ignore_errors=True)
        cli(bin_, state, "jail", "start", "store-2")
        t0 = time.time()

        def store2():
            st = json.loads(cli(bin_, state, "store", "status", "--json"))
            return next((s for s in st["servers"] if s["name"] == "store-2"), {}).get("reclone", {})

        def reclone():
            r = store2()
            done = r.get("finished", 0) >= int(t0) and not r.get("active") and r.get("done_blocks", 0) > 0
            return r if done else None

        wait("store-2 re-cloning", lambda: store2().get("active") or reclone(), within=60)
        # GETs for as long as the re-clone runs (≤ DUR s), unless it is over already.
        done_before = reclone() is not None
        during = load.phase("GET 1 MiB (during re-clone)", "get", "l", LARGE,
                            BIG_OPS if done_before else 1 << 30, load.stored["l"],
                            until=None if done_before else lambda: reclone() is not None)
        wait("store-2 re-cloned", lambda: reclone() is not None, within=600)
        r = reclone()
        secs = r["elapsed_ms"] / 1000
        # The wiped disk is whole again when the re-clone ends: what it copied itself
        # (done_bytes) plus what GETs meanwhile wrote back by read repair (total - done).
        r["mb_s"] = r["total_bytes"] / secs / 1e6
        r["copied_mb_s"] = r["done_bytes"] / secs / 1e6
        r["kept"] = during["ops_s"] / rows[3]["ops_s"]
        print(f"re-clone: {r['total_blocks']} blocks, {r['total_bytes'] / 1e6:.0f} MB back on the wiped store in "
              f"{secs:.1f} s = {r['mb_s']:.1f} MB/s ({r['done_bytes'] / 1e6:.0f} MB copied by the re-clone "
              f"itself, the rest by read repair of the GETs; cap 50 MiB/s = 52.4 MB/s); GET 1 MiB meanwhile "
              f"{r['kept'] * 100:.0f} % of before", flush=True)
        save(out, "citadel", rows + [during], reclone=r)
    finally:
        if load:
            load.close()
        up.send_signal(signal.SIGTERM)
        try:
            up.wait(timeout=30)
        except subprocess.TimeoutExpired:
            up.kill()
            up.wait()
        shutil.rmtree(work, ignore_errors=True)


# ---- the comparison ----

def compare(gpath, cpath):
    with open(gpath) as f:
        g = json.load(f)
    with open(cpath) as f:
        c = json.load(f)
    gr = {r["phase"]: r for r in g["rows"]}
    print(f"\nCitadel / Garage (CLIENT={c.get('client')} CONC={c['conc']} over {c['procs']} processes; load average "
          f"Garage run {g['loadavg'][0]:.1f}, Citadel run {c['loadavg'][0]:.1f}); p99: lower is better")
    print("| phase | Garage ops/s | Citadel ops/s | ratio | Garage MB/s | Citadel MB/s | ratio "
          "| Garage p99 ms | Citadel p99 ms | ratio | target |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in c["rows"]:
        x = gr.get(r["phase"])
        if not x:
            continue
        ratio = lambda k: r[k] / x[k] if x[k] else float("nan")
        target = ""
        if r["phase"] in ("PUT 4 KiB", "GET 4 KiB"):
            target = "≥ 1.5× " + ("met" if ratio("ops_s") >= 1.5 else "**missed**")
        print(f"| {r['phase']} | {x['ops_s']:.0f} | {r['ops_s']:.0f} | {ratio('ops_s'):.2f}× "
              f"| {x['mb_s']:.1f} | {r['mb_s']:.1f} | {ratio('mb_s'):.2f}× "
              f"| {x['p99_ms']:.1f} | {r['p99_ms']:.1f} | {ratio('p99_ms'):.2f}× | {target} |")
    print("\nCPU during each phase, % of one core (2 cores = 200 %):")
    print("| phase | Garage: load tool | Garage: servers | Citadel: load tool | Citadel: servers |")
    print("|---|---|---|---|---|")
    for r in c["rows"]:
        x = gr.get(r["phase"])
        gx = f"{x['cpu_load']:.0f} | {x['cpu_servers']:.0f}" if x else "— | —"
        print(f"| {r['phase']} | {gx} | {r['cpu_load']:.0f} | {r['cpu_servers']:.0f} |")
    r = c.get("reclone")
    if r:
        print(f"\nre-clone of the wiped store: {r['total_bytes'] / 1e6:.0f} MB back in "
              f"{r['elapsed_ms'] / 1000:.1f} s = {r['mb_s']:.1f} MB/s (target ≥ 50; "
              f"{r.get('copied_mb_s', 0):.1f} MB/s copied by the re-clone itself, the rest read repair), "
              f"clients kept {r['kept'] * 100:.0f} % (target ≥ 80 %)")


if __name__ == "__main__":
    mode = sys.argv[1] if len(sys.argv) > 1 else ""
    if mode == "citadel" and len(sys.argv) == 4:
        citadel_main(sys.argv[2], sys.argv[3])
    elif mode == "s3" and len(sys.argv) == 6:
        s3_main(*sys.argv[2:6])
    elif mode == "compare" and len(sys.argv) == 4:
        compare(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)
