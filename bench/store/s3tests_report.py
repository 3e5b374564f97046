#!/usr/bin/env python3
"""Per-feature-group figures from a pytest JUnit XML of ceph/s3-tests' test_s3.py.

Groups are by the test name (first rule that matches); `claimed` says whether the store's
feature list (ARCHITECTURE.md, issue 12) names the group. Usage: s3tests_report.py junit.xml
[--md] (a Markdown table for NOTES.md / bench/RESULTS.md instead of plain text)."""
import re
import sys
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict

# (group, claimed, regex on the test name without "test_")
GROUPS = [
    ("bucket logging", False, r"logging"),
    ("SSE (C/S3/KMS)", False, r"sse|encrypt|enc_conflict|copy_enc|copy_part_enc"),
    ("browser POST (post_object)", False, r"post_object"),
    ("tagging", False, r"tags|tagging"),
    ("CORS", False, r"cors"),
    ("ListObjectsV2", True, r"listv2|list_objects_v2"),
    ("ListObjects (v1)", False, r"bucket_list|basic_key_count"),
    ("multipart", True, r"multipart|upload_part"),
    ("CopyObject", True, r"copy"),
    ("conditional requests", True, r"if_?match|if_?none_?match|ifnonmatch|modifiedsince|conditional"),
    ("checksums", True, r"checksum"),
    ("Range", True, r"^ranged"),
    ("buckets", True, r"bucket_create|create_bucket|bucket_delete|bucket_head|bucket_notexist|bucketv2_notexist|buckets_|list_buckets|bucket_recreate|bucket_get_location|head_bucket|account_usage|expected_bucket_owner"),
    ("auth, presigned, anonymous", True, r"presigned|x_amz_expires|anon|authenticated|access_bucket|auth"),
    ("objects (put/get/head/delete, metadata, DeleteObjects)", True, r"object|obj|atomic|100_continue|raw_get"),
    ("other (torrent, attributes, …)", False, r".*"),
]


def group_of(name):
    n = re.sub(r"^test_", "", name.split("[")[0])
    for g, claimed, rx in GROUPS:
        if re.search(rx, n):
            return g
    raise AssertionError(n)


def main():
    path = sys.argv[1]
    md = "--md" in sys.argv
    stats = defaultdict(Counter)
    causes = defaultdict(Counter)
    # A test failing in its call and again in teardown has two <testcase> entries: one
    # outcome per test, the first failure message as its cause.
    outcomes = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        name = case.get("name")
        outcome, msg = "passed", None
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed"
                msg = ((child.get("message") or child.tag).splitlines() or [child.tag])[0][:110]
                break
            if child.tag == "skipped":
                outcome = "skipped"
        prev = outcomes.get(name)
        if prev is None or (prev[0] != "failed" and outcome == "failed"):
            outcomes[name] = (outcome, msg)
    for name, (outcome, msg) in outcomes.items():
        g = group_of(name)
        stats[g][outcome] += 1
        if msg:
            causes[g][msg] += 1
    claimed = {g: c for g, c, _ in GROUPS}
    order = [g for g, _, _ in GROUPS if g in stats]
    tot = Counter()
    ctot = Counter()
    rows = []
    for g in order:
        s = stats[g]
        ran = s["passed"] + s["failed"]
        tot.update(s)
        if claimed[g]:
            ctot.update(s)
        rows.append((g, "yes" if claimed[g] else "no", s["passed"], ran, s["skipped"]))
    pct = lambda p, r: f"{100.0 * p / r:.0f} %" if r else "-"
    if md:
        print("| group | claimed | passed / run | skipped |")
        print("|---|---|---|---|")
        for g, c, p, r, sk in rows:
            print(f"| {g} | {c} | {p} / {r} ({pct(p, r)}) | {sk} |")
    else:
        for g, c, p, r, sk in rows:
            print(f"{g:58} claimed={c:3}  passed {p:3}/{r:<3} {pct(p, r):>5}  skipped {sk}")
    if md:
        print()
    for label, t in (("total", tot), ("claimed groups", ctot)):
        ran = t["passed"] + t["failed"]
        print(f"{'**' if md else ''}{label}: passed {t['passed']}/{ran} ({pct(t['passed'], ran)}), skipped {t['skipped']}{'**' if md else ''}" + ("  " if md else ""))
    if "--causes" in sys.argv:
        for g in order:
            for msg, n in causes[g].most_common(6):
                print(f"  [{g}] {n}× {msg}")


if __name__ == "__main__":
    main()
