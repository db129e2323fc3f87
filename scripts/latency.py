#!/usr/bin/env python3
"""Client latency of two builds side by side: p50 and p99 of a closed loop
at concurrency 1, 8 and 64 against handoff-master (dispatch rr, 2 workers)
from each build, on 127.0.0.1. Both masters run at once; each round
measures every (build, concurrency) for a few seconds, the builds' order
flipped every round, so that a drift of the machine falls on both alike.
Prints a markdown table: per build and concurrency, the median of the
rounds with their range (the run-to-run noise the comparison is judged
against), and the new build's median over the old one's.

For a before/after check of a change to the hot path, e.g.:

    git worktree add /tmp/before <rev>
    (cd /tmp/before && cargo build --release --target-dir /tmp/before-target)
    scripts/latency.py --before /tmp/before-target/release

Usage: scripts/latency.py --before DIR [--after DIR] [--rounds N] [--seconds S]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as B  # noqa: E402

CONCURRENCIES = (1, 8, 64)


def start(bin_dir, run_dir):
    proc = subprocess.Popen(
        [os.path.join(bin_dir, "handoff-master"), "--listen", "127.0.0.1:0", "--workers", "2",
         "--run-dir", run_dir],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "RUST_LOG": "warn"}, start_new_session=True)
    line = B.read_line(proc.stdout, 10) or ""
    if not line.startswith("listening on "):
        proc.kill()
        raise RuntimeError(f"{bin_dir}: no `listening on` line")
    addr = line.split()[-1]
    if not B.wait_workers(run_dir, 2, time.monotonic() + 10) or \
            not B.probe(addr, time.monotonic() + 10):
        proc.kill()
        raise RuntimeError(f"{bin_dir}: workers did not register")
    return proc, addr


def measure(bench, addr, concurrency, seconds):
    out = subprocess.run([bench, "--target", addr, "-c", str(concurrency), "-d", str(seconds),
                          "--warmup", "0.5", "--json"],
                         capture_output=True, text=True, timeout=seconds + 30, check=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    return result["latency_us"]["p50"], result["latency_us"]["p99"], result["errors_total"]


def cell(values):
    low, mid, high = min(values), statistics.median(values), max(values)
    return f"{mid:,.0f} ({low:,.0f}–{high:,.0f})"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--before", required=True, help="the old build's binaries")
    p.add_argument("--after", default=os.path.join(B.ROOT, "target", "release"),
                   help="the new build's binaries [target/release]")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=3.0)
    args = p.parse_args()
    builds = {"before": os.path.abspath(args.before), "after": os.path.abspath(args.after)}
    bench = os.path.join(builds["after"], "handoff-bench")
    samples = {(b, c): [] for b in builds for c in CONCURRENCIES}
    errors = 0
    with tempfile.TemporaryDirectory(prefix="handoff-latency-") as tmp:
        servers = {}
        try:
            for name, bin_dir in builds.items():
                servers[name] = start(bin_dir, os.path.join(tmp, name))
            for rnd in range(args.rounds):
                order = list(builds) if rnd % 2 == 0 else list(reversed(builds))
                for c in CONCURRENCIES:
                    for name in order:
                        p50, p99, errs = measure(bench, servers[name][1], c, args.seconds)
                        samples[(name, c)].append((p50, p99))
                        errors += errs
                        print(f"round {rnd + 1} c={c} {name}: p50 {p50} µs, p99 {p99} µs",
                              file=sys.stderr)
        finally:
            for proc, _ in servers.values():
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
    print(f"Client latency, µs: median of {args.rounds} rounds of {args.seconds:g} s "
          f"(range), handoff-master dispatch rr with 2 workers, 127.0.0.1, "
          f"{os.cpu_count()} cores; errors: {errors}.\n")
    print("| concurrency | p50 before | p50 after | after / before | p99 before | p99 after "
          "| after / before |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for c in CONCURRENCIES:
        row = [str(c)]
        for i in (0, 1):
            old = [s[i] for s in samples[("before", c)]]
            new = [s[i] for s in samples[("after", c)]]
            ratio = statistics.median(new) / statistics.median(old) if statistics.median(old) \
                else float("nan")
            row += [cell(old), cell(new), f"{ratio:.2f}×"]
        print("| " + " | ".join(row) + " |")
    print(f"\nCommand: scripts/latency.py --before {args.before} --rounds {args.rounds} "
          f"--seconds {args.seconds:g}")


if __name__ == "__main__":
    main()
