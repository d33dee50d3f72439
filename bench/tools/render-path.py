#!/usr/bin/env python3
"""Where the time goes between kvsync reading a change from its socket and the file being on disk.

Input: the output of `perf trace -p <kvsync pid> -e recvfrom,openat,fsync,rename -o FILE` taken
while the benchmark's latency scenario runs (see bench/README.md). Each line looks like
    0.163 ( 0.061 ms): kvsync/10896 openat(dfd: CWD, ..., flags: CLOEXEC|CREAT|EXCL|WRONLY, ...) = 14
(start time and duration in ms, thread name/id, syscall).

One render is: the temp file created (openat with CREAT|EXCL), its fsync, the rename over the
destination (the benchmark sees the new file at this point), the directory fsync. The change it
renders is taken to arrive with the first socket read after the previous render ended; a change
read while the previous render was still running is therefore not counted from its own read, so
the first row is a lower bound when renders queue up.
"""
import re
import sys

LINE = re.compile(r"\s*([\d.]+) \(\s*([\d.]+) ms\): (\S+)/(\d+) (\w+)\((.*)\)\s+= (\S+)")


def pct(values, q):
    v = sorted(values)
    return v[min(len(v) - 1, int(round((len(v) - 1) * q)))] if v else float("nan")


def main(path):
    events = []
    for line in open(path):
        m = LINE.match(line)
        if m:
            events.append((float(m.group(1)), float(m.group(2)), m.group(5), m.group(6), m.group(7)))
    events.sort()
    renders, cur, recv, last_end = [], None, None, -1.0
    for t, d, name, args, ret in events:
        if name == "recvfrom" and not ret.startswith("-") and recv is None and t > last_end:
            recv = t
        elif name == "openat" and "CREAT|EXCL" in args:
            cur = {"recv": recv, "open": t, "fsync": []}
        elif cur and name == "fsync":
            cur["fsync"].append(d)
        elif cur and name == "rename":
            cur["rename"], cur["visible"] = d, t + d
        if cur and "rename" in cur and len(cur["fsync"]) == 2:
            cur["end"] = t + d
            renders.append(cur)
            last_end, recv, cur = cur["end"], None, None
    timed = [r for r in renders if r["recv"] is not None]
    rows = [
        ("socket read -> temp file created (decode, engine, hand-offs, render)", [r["open"] - r["recv"] for r in timed]),
        ("file fsync", [r["fsync"][0] for r in renders]),
        ("rename", [r["rename"] for r in renders]),
        ("socket read -> rename done (file visible)", [r["visible"] - r["recv"] for r in timed]),
        ("directory fsync (after the file is visible; delays the next render)", [r["fsync"][1] for r in renders]),
    ]
    print(f"{len(renders)} renders traced (ms)\n")
    print("| step | p50 | p90 | p99 | max |\n|---|---|---|---|---|")
    for name, v in rows:
        print(f"| {name} | {pct(v, .5):.3f} | {pct(v, .9):.3f} | {pct(v, .99):.3f} | {pct(v, 1):.3f} |")


if __name__ == "__main__":
    main(sys.argv[1])
