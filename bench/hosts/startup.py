#!/usr/bin/python3
"""Times `start` → healthy of one jail through a running agent's control socket.

Usage: startup.py SOCKET SOURCE PREFIX SEGMENT FIRST_ADDR COUNT
For i in 0..COUNT: clone SOURCE as PREFIX-i (address FIRST_ADDR + i on SEGMENT, timed),
start it and poll `status` every 2 ms until it is healthy (timed), then destroy it.
Prints one line per jail and the median/min/max. Speaks the control protocol (JSON lines)
directly so no CLI process start is in the figure.
"""
import ipaddress
import json
import socket
import statistics
import sys
import time


def call(path, request):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(path)
        s.sendall((json.dumps(request) + "\n").encode())
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    reply = json.loads(buf)
    if "error" in reply:
        raise SystemExit(f"{request['op']}: {reply['error']}")
    return reply["ok"]


def health(path, name):
    for j in call(path, {"op": "status"})["jails"]:
        if j["name"] == name:
            return j["health"], j
    return None, None


def main():
    path, source, prefix, segment, first, count = sys.argv[1:7]
    first = ipaddress.ip_address(first)
    clones, starts = [], []
    for i in range(int(count)):
        name = f"{prefix}-{i}"
        addr = str(first + i)
        t0 = time.monotonic()
        call(path, {"op": "clone", "source": source, "name": name,
                    "addresses": {segment: addr}})
        t1 = time.monotonic()
        call(path, {"op": "start", "jail": name})
        deadline = t1 + 10
        while True:
            h, j = health(path, name)
            if h == "healthy":
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"{name} not healthy after 10 s: {j}")
            time.sleep(0.002)
        t2 = time.monotonic()
        clones.append((t1 - t0) * 1000)
        starts.append((t2 - t1) * 1000)
        print(f"  {name} at {addr}: clone {clones[-1]:.1f} ms, start → healthy {starts[-1]:.1f} ms")
        call(path, {"op": "destroy", "jail": name})
    for what, xs in (("clone", clones), ("start → healthy", starts)):
        print(f"  {what}: median {statistics.median(xs):.1f} ms "
              f"(min {min(xs):.1f}, max {max(xs):.1f}, n={len(xs)})")


main()
