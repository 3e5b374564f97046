#!/usr/bin/python3
"""Citadel db (2 data members + witness, fsync on) next to a single redis-server
(no persistence), both on this machine; redis-benchmark for throughput, redis-py for
failover. Loopback addresses 127.61.0.x only. Writes RESULTS.md beside this file.

Needs: redis-tools (redis-benchmark, redis-cli), redis-server, python3-redis.
Usage: bench.py BIN [--quick] [--set | --types | --memory | --failover | --only=EVAL,XADD]
  (no option: SET and GET, every type's write and EVAL at -P 1 and -P 16, memory per key
  for 1M keys of each type, then failover)
"""

import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import redis

NET = "127.61.0"
REDIS_HOST = f"{NET}.10"
HERE = os.path.dirname(os.path.abspath(__file__))

ANCHORS = """
Anchors and targets (issue 4; anchors measured earlier on these machines): etcd (3 members)
~4K puts/s at 64 connections, failover 1.0-2.4 s; Mnesia (2 nodes, no fsync per commit)
6.4K-12K transactions/s; single Redis without persistence ~62K SET/s and ~64K GET/s
unpipelined, ~500K-600K/s with -P 16. Targets: >= 20K SET/s unpipelined and >= 100K/s with
-P 16; linearizable GET >= 50% of single Redis; failover median <= 1 s.
The machine is shared with other builds, so compare the ratios within one run.
"""


class Node:
    def __init__(self, work, bin_path, nid, members, net=NET):
        self.id = nid
        self.bin = bin_path
        self.cfg = os.path.join(work, f"n{nid}.toml")
        self.log = os.path.join(work, f"n{nid}.log")
        self.proc = None
        with open(self.cfg, "w") as f:
            f.write(f'id = {nid}\ndata_dir = "{work}/n{nid}"\n')
            for mid, kind in members:
                f.write(f'[[members]]\nid = {mid}\nname = "m{mid}"\nkind = "{kind}"\n')
                f.write(f'peer = "{net}.{mid}:7000"\n')
                if kind == "data":
                    f.write(f'redis = "{net}.{mid}:6379"\n')

    def start(self):
        logf = open(self.log, "a")
        self.proc = subprocess.Popen([self.bin, "--config", self.cfg], stdout=subprocess.DEVNULL,
                                     stderr=logf, env=dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "warn")))

    def kill(self):
        if self.proc:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            self.proc = None


def info(host, field):
    try:
        r = redis.Redis(host=host, port=6379, socket_timeout=1, socket_connect_timeout=0.5)
        return str(r.info().get(field, ""))
    except Exception:
        return None


def wait_leader(hosts, data_ids, timeout=30):
    end = time.time() + timeout
    while time.time() < end:
        for h in hosts:
            v = info(h, "raft_leader")
            if v and v.isdigit() and int(v) in data_ids:
                return int(v)
        time.sleep(0.05)
    raise RuntimeError("no data leader")


def wait_port(host, timeout=20):
    end = time.time() + timeout
    while time.time() < end:
        try:
            redis.Redis(host=host, port=6379, socket_connect_timeout=0.3).ping()
            return
        except Exception:
            time.sleep(0.05)
    raise RuntimeError(f"{host} does not answer")


def bench(host, test, n, pipeline):
    """One redis-benchmark run: `test` is a built-in test name, or a command (a list)."""
    what = ["-t", test] if isinstance(test, str) else test
    out = subprocess.run(["redis-benchmark", "-h", host, "-p", "6379", "-n", str(n),
                          "-c", "50", "-P", str(pipeline), "-r", "100000", "-q"] + what,
                         capture_output=True, text=True, timeout=600).stdout
    out = out.replace("\r", "\n")
    m = re.findall(r"([\d.]+) requests per second", out)
    return float(m[-1]) if m else 0.0


SET_GET = [("SET", "set"), ("GET", "get")]

# Issue 11's rows: every type's typical write (and EVAL), built-in tests where
# redis-benchmark has them.
TYPE_TESTS = [
    ("INCR", "incr"), ("LPUSH", "lpush"), ("LPOP", "lpop"), ("SADD", "sadd"),
    ("HSET", "hset"), ("ZADD", "zadd"),
    ("XADD", ["XADD", "stream:__rand_int__", "*", "field", "value"]),
    ("EVAL", ["EVAL", "return redis.call('INCR', KEYS[1])", "1", "counter:__rand_int__"]),
]

# Memory per key: 1M keys of each type, one small value each.
MEMORY_KEYS = 1_000_000
MEMORY_TYPES = [
    ("string", lambda i: ["SET", f"k:{i}", "value-0123456789"]),
    ("hash", lambda i: ["HSET", f"k:{i}", "field", "value-0123456789"]),
    ("list", lambda i: ["RPUSH", f"k:{i}", "value-0123456789"]),
    ("set", lambda i: ["SADD", f"k:{i}", "value-0123456789"]),
    ("zset", lambda i: ["ZADD", f"k:{i}", "1", "value-0123456789"]),
    ("stream", lambda i: ["XADD", f"k:{i}", "1-1", "field", "value-0123456789"]),
]


def resp(cmd):
    out = [f"*{len(cmd)}\r\n"]
    for a in cmd:
        out.append(f"${len(a.encode())}\r\n{a}\r\n")
    return "".join(out)


def rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def load_keys(host, make, n):
    """Loads n keys through `redis-cli --pipe` (bounded: n commands, 600 s)."""
    data = "".join(resp(make(i)) for i in range(n)).encode()
    subprocess.run(["redis-cli", "-h", host, "-p", "6379", "--pipe"], input=data,
                   capture_output=True, timeout=600, check=True)


def settle_rss(pid):
    """RSS once it stops moving (a member applies what it acknowledged, then frees buffers)."""
    last, same = rss(pid), 0
    end = time.time() + 30
    while same < 5 and time.time() < end:
        time.sleep(0.2)
        now = rss(pid)
        same = same + 1 if abs(now - last) < 256 * 1024 else 0
        last = now
    return last


def start_side_by_side(bin_path, net, prefix):
    """A group (2 data members + witness on net.1-3) and a redis-server on net.10, started
    and answering: (work dir, nodes, redis-server process, leader id)."""
    work = tempfile.mkdtemp(prefix=prefix)
    members = [(1, "data"), (2, "data"), (3, "witness")]
    nodes = {i: Node(work, bin_path, i, members, net) for i, _ in members}
    rs = subprocess.Popen(["redis-server", "--bind", f"{net}.10", "--port", "6379", "--save", "",
                           "--appendonly", "no", "--protected-mode", "no"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for n in nodes.values():
        n.start()
    for h in (f"{net}.10", f"{net}.1", f"{net}.2"):
        wait_port(h)
    return work, nodes, rs, wait_leader([f"{net}.1", f"{net}.2"], [1, 2])


def stop_side_by_side(work, nodes, rs, keep=False):
    for n in nodes.values():
        n.kill()
    rs.send_signal(signal.SIGKILL)
    rs.wait()
    if keep:
        print("kept", work)
    else:
        shutil.rmtree(work, ignore_errors=True)


# Memory is measured on fresh processes for each type (an allocator keeps what a FLUSHALL
# frees, so a second type loaded into the same process would look cheaper than it is).
MEM_NET = "127.61.1"


def memory_rows(bin_path, n):
    rows = []
    for name, make in MEMORY_TYPES:
        work, nodes, rs, leader = start_side_by_side(bin_path, MEM_NET, "citadel-db-mem-")
        rs_host = f"{MEM_NET}.10"
        try:
            lh = f"{MEM_NET}.{leader}"
            out = {}
            for host, pid in ((rs_host, rs.pid), (lh, nodes[leader].proc.pid)):
                c = redis.Redis(host=host, port=6379, socket_timeout=60)
                before_rss = settle_rss(pid)
                before_used = int(c.info("memory").get("used_memory", 0))
                load_keys(host, make, n)
                assert c.dbsize() == n, f"{host}: {c.dbsize()} keys of {n}"
                after_rss = settle_rss(pid)
                after_used = int(c.info("memory").get("used_memory", 0))
                out[host] = ((after_rss - before_rss) / n, (after_used - before_used) / n)
            rows.append((name, out[rs_host], out[lh]))
            print(f"memory per {name} key: redis rss {out[rs_host][0]:.0f} B (used_memory "
                  f"{out[rs_host][1]:.0f} B), citadel leader rss {out[lh][0]:.0f} B", flush=True)
        finally:
            stop_side_by_side(work, nodes, rs)
    return rows


def failover_trial(nodes, data_ids):
    """Kill -9 the leader under writes; time until the first write sent after the kill is
    acknowledged."""
    hosts = [f"{NET}.{i}" for i in data_ids]
    leader = wait_leader(hosts, data_ids)
    survivor = [i for i in data_ids if i != leader][0]
    c = redis.Redis(host=f"{NET}.{survivor}", port=6379, socket_timeout=5, socket_connect_timeout=1)
    end = time.time() + 20
    while True:
        try:
            c.set("warm", "1")
            break
        except Exception:
            if time.time() > end:
                raise
            time.sleep(0.05)
    nodes[leader].kill()
    t0 = time.time()
    print(time.strftime("%H:%M:%S", time.gmtime(t0)) + ("%.3f" % (t0 % 1))[1:], f"killed leader {leader}", flush=True)
    took = None
    while time.time() - t0 < 30:
        try:
            c.set("fo", str(time.time()))
            took = time.time() - t0
            break
        except Exception:
            time.sleep(0.005)
    nodes[leader].start()
    wait_port(f"{NET}.{leader}")
    wait_leader(hosts, data_ids)
    # Let the restarted member catch up before the next trial.
    end = time.time() + 20
    while time.time() < end:
        a, b = info(hosts[0], "raft_applied_index"), info(hosts[1], "raft_applied_index")
        if a and b and abs(int(a) - int(b)) < 5:
            break
        time.sleep(0.05)
    return took


def main():
    bin_path = sys.argv[1]
    quick = "--quick" in sys.argv
    n1, n16 = (20000, 100000) if quick else (100000, 500000)
    only_failover = "--failover" in sys.argv
    work, nodes, rs, leader = start_side_by_side(bin_path, NET, "citadel-db-bench-")
    try:
        lh = f"{NET}.{leader}"
        follower = f"{NET}.{3 - leader}"
        rows = []
        only_set = "--set" in sys.argv
        only_types = "--types" in sys.argv
        plan = list(SET_GET)
        if only_set:
            plan = [("SET", "set")]
        if only_types or not (only_set or only_failover):
            plan = ([] if only_types else plan) + TYPE_TESTS
        if only_failover or "--memory" in sys.argv:
            plan = []
        only = [a.split("=", 1)[1].upper().split(",") for a in sys.argv if a.startswith("--only=")]
        if only:
            plan = [(label, test) for label, test in SET_GET + TYPE_TESTS if label in only[0]]
        for label, test, n, p in [(label, test, n, p) for label, test in plan
                                  for n, p in ((n1, 1), (n16, 16))]:
            r = bench(REDIS_HOST, test, n, p)
            c = bench(lh, test, n, p)
            cf = bench(follower, test, n, p)
            rows.append((f"{label} -P {p}", r, c, cf))
            print(f"{label} -P {p}: redis {r:.0f}/s, citadel leader {c:.0f}/s, follower {cf:.0f}/s", flush=True)
        mem = []
        if "--memory" in sys.argv or not (only_set or only_types or only_failover or only):
            mem = memory_rows(bin_path, MEMORY_KEYS // 10 if quick else MEMORY_KEYS)
        skip_failover = only_set or only_types or bool(only) or "--memory" in sys.argv
        trials = [] if skip_failover else [failover_trial(nodes, [1, 2]) for _ in range(3 if quick else 10)]
        ok = [t for t in trials if t is not None]
        med = statistics.median(ok) if ok else None
        print("failover trials (s):", ["%.3f" % t if t is not None else "none" for t in trials], flush=True)
        # A partial run (any option but --quick) prints its figures and leaves RESULTS.md.
        partial = any(a.startswith("--") and a != "--quick" for a in sys.argv[2:])
        with open(os.devnull if partial else os.path.join(HERE, "RESULTS.md"), "w") as f:
            f.write("# citadel-db benchmark results\n\n")
            f.write(f"Made by `bench/db/run.sh` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
                    f"{os.cpu_count()} cores shared with other work; redis-benchmark -c 50 -r 100000.\n")
            f.write("citadel-db: 2 data members + witness on loopback, release build, every write fsynced "
                    "(redb Durability::Immediate) on a majority before it is acknowledged; GETs are "
                    "linearizable (read index). redis-server: one process, no persistence.\n\n")
            f.write("| test | redis-server ops/s | citadel leader ops/s | ratio | citadel follower ops/s | ratio |\n")
            f.write("|---|---|---|---|---|---|\n")
            for name, r, c, cf in rows:
                f.write(f"| {name} | {r:.0f} | {c:.0f} | {c / r if r else 0:.2f} | {cf:.0f} | {cf / r if r else 0:.2f} |\n")
            if mem:
                f.write(f"\nMemory per key ({MEMORY_KEYS // 10 if quick else MEMORY_KEYS} keys of each type, "
                        "one 16-byte element each, loaded with `redis-cli --pipe`; the RSS growth of "
                        "the process; redis-server also by its own `used_memory`):\n\n")
                f.write("| type | redis-server RSS B/key | redis used_memory B/key | citadel leader RSS B/key | ratio (RSS) |\n")
                f.write("|---|---|---|---|---|\n")
                for name, (r_rss, r_used), (c_rss, _) in mem:
                    f.write(f"| {name} | {r_rss:.0f} | {r_used:.0f} | {c_rss:.0f} | "
                            f"{c_rss / r_rss if r_rss else 0:.2f} |\n")
            f.write("\nFailover (kill -9 of the leader, time until the first write sent after the kill is "
                    "acknowledged by the surviving data member; default timings: heartbeat 100 ms, "
                    "election 300-600 ms):\n\n")
            f.write(f"- trials: {', '.join('%.3f s' % t if t is not None else 'none' for t in trials)}\n")
            f.write(f"- median: {'%.3f s' % med if med is not None else 'n/a'}\n")
            f.write(ANCHORS)
    finally:
        stop_side_by_side(work, nodes, rs, keep="--keep" in sys.argv)


if __name__ == "__main__":
    main()
