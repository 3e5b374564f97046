#!/usr/bin/python3
"""Citadel db (2 data members + witness, fsync on) next to a single redis-server
(no persistence), both on this machine; redis-benchmark for throughput, redis-py for
failover. Loopback addresses 127.61.0.x only. Writes RESULTS.md beside this file.

Needs: redis-tools (redis-benchmark, redis-cli), redis-server, python3-redis.
Usage: bench.py BIN [--quick]
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
    def __init__(self, work, bin_path, nid, members):
        self.id = nid
        self.bin = bin_path
        self.cfg = os.path.join(work, f"n{nid}.toml")
        self.log = os.path.join(work, f"n{nid}.log")
        self.proc = None
        with open(self.cfg, "w") as f:
            f.write(f'id = {nid}\ndata_dir = "{work}/n{nid}"\n')
            for mid, kind in members:
                f.write(f'[[members]]\nid = {mid}\nname = "m{mid}"\nkind = "{kind}"\n')
                f.write(f'peer = "{NET}.{mid}:7000"\n')
                if kind == "data":
                    f.write(f'redis = "{NET}.{mid}:6379"\n')

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
    out = subprocess.run(["redis-benchmark", "-h", host, "-p", "6379", "-t", test, "-n", str(n),
                          "-c", "50", "-P", str(pipeline), "-r", "100000", "-q"],
                         capture_output=True, text=True, timeout=600).stdout
    out = out.replace("\r", "\n")
    m = re.findall(r"([\d.]+) requests per second", out)
    return float(m[-1]) if m else 0.0


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
    work = tempfile.mkdtemp(prefix="citadel-db-bench-")
    members = [(1, "data"), (2, "data"), (3, "witness")]
    nodes = {i: Node(work, bin_path, i, members) for i, _ in members}
    rs = subprocess.Popen(["redis-server", "--bind", REDIS_HOST, "--port", "6379", "--save", "",
                           "--appendonly", "no", "--protected-mode", "no"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for n in nodes.values():
            n.start()
        for h in (REDIS_HOST, f"{NET}.1", f"{NET}.2"):
            wait_port(h)
        leader = wait_leader([f"{NET}.1", f"{NET}.2"], [1, 2])
        lh = f"{NET}.{leader}"
        follower = f"{NET}.{3 - leader}"
        rows = []
        only_set = "--set" in sys.argv
        for label, test, n, p in [] if only_failover else [("SET", "set", n1, 1), ("SET", "set", n16, 16)] if only_set else [("SET", "set", n1, 1), ("SET", "set", n16, 16),
                                  ("GET", "get", n1, 1), ("GET", "get", n16, 16)]:
            r = bench(REDIS_HOST, test, n, p)
            c = bench(lh, test, n, p)
            cf = bench(follower, test, n, p)
            rows.append((f"{label} -P {p}", r, c, cf))
            print(f"{label} -P {p}: redis {r:.0f}/s, citadel leader {c:.0f}/s, follower {cf:.0f}/s", flush=True)
        trials = [] if only_set else [failover_trial(nodes, [1, 2]) for _ in range(3 if quick else 10)]
        ok = [t for t in trials if t is not None]
        med = statistics.median(ok) if ok else None
        print("failover trials (s):", ["%.3f" % t if t is not None else "none" for t in trials], flush=True)
        with open(os.path.join(HERE, "RESULTS.md"), "w") as f:
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
            f.write("\nFailover (kill -9 of the leader, time until the first write sent after the kill is "
                    "acknowledged by the surviving data member; default timings: heartbeat 100 ms, "
                    "election 300-600 ms):\n\n")
            f.write(f"- trials: {', '.join('%.3f s' % t if t is not None else 'none' for t in trials)}\n")
            f.write(f"- median: {'%.3f s' % med if med is not None else 'n/a'}\n")
            f.write(ANCHORS)
    finally:
        for n in nodes.values():
            n.kill()
        rs.send_signal(signal.SIGKILL)
        rs.wait()
        if "--keep" in sys.argv:
            print("kept", work)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
