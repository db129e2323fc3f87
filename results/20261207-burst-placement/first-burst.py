#!/usr/bin/env python3
"""Ad-hoc: the first burst into a fresh master against its next ones.
For each of N rounds: start handoff-2 and refmaster-2 fresh, then three
bursts into each, interleaved (handoff first). Prints µs per connection
of each burst; BIN overrides the release directory.
Usage: first-burst.py [rounds]"""
import os, sys, tempfile, types, statistics
ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))  # the repository
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import benchlib as B

rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
ctx = types.SimpleNamespace(bin_dir=os.environ.get("BIN", os.path.join(ROOT, "target", "release")))
ctx.bench = os.path.join(ctx.bin_dir, "handoff-bench")
ctx.tmp = tempfile.mkdtemp(prefix="first-")
ctx.reaper = B.Reaper(None)
ctx.args = types.SimpleNamespace(master_args="")
ctx.progress = lambda msg: None
firsts = {"handoff": [], "ref": []}
rests = {"handoff": [], "ref": []}
try:
    for rnd in range(rounds):
        h = B.start_master(ctx, "handoff-2", 2, ["--mode", "dispatch"])[:2]
        r = B.start_refmaster(ctx, "refmaster-2", 2)[:2]
        for addr in (h[1], r[1]):
            B.probe(addr, __import__("time").monotonic() + 10)
        line = []
        for rep in range(3):
            for name, (proc, addr) in (("handoff", h), ("ref", r)):
                s = B.burst_once(ctx, proc, addr, 2000)
                us = s["master_us_per_conn"]
                (firsts if rep == 0 else rests)[name].append(us)
                line.append(f"{name[0]}{rep + 1} {us:.2f}/{s['master_preempted']}/{max(s['host_probe_ms']):.2f}")
        print(f"round {rnd + 1}: " + "  ".join(line), flush=True)
        ctx.reaper.stop(h[0]); ctx.reaper.stop(r[0])
finally:
    ctx.reaper.kill_all()
for name in ("handoff", "ref"):
    print(f"{name}: first bursts median {statistics.median(firsts[name]):.2f} "
          f"({min(firsts[name]):.2f}-{max(firsts[name]):.2f}), later {statistics.median(rests[name]):.2f}")
