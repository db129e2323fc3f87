#!/usr/bin/env python3
"""Ad-hoc: burst cost of handoff-2 and refmaster-2 with the scheduler's two
placements forced by CPU affinity, to test whether the two burst groups are
"master alone on its core" and "a worker beside the master".

  apart:  master on CPU 0, both workers on CPU 1
  beside: master and one worker on CPU 0, the other worker on CPU 1
  free:   no affinity (what make bench measures)
  alone:  master on CPU 0; both workers and the load generator's burst
          clients on CPU 1

The load generator is not pinned. Bursts as in make bench (benchlib's
burst_runs: 2000 clients queued while the master is stopped, interleaved).
Usage: pinned.py [reps] [placements]  (default 7 apart,beside,free)"""
import os, sys, tempfile, types, statistics, subprocess
ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))  # the repository
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import benchlib as B

reps = int(sys.argv[1]) if len(sys.argv) > 1 else 7
placements = (sys.argv[2] if len(sys.argv) > 2 else "apart,beside,free").split(",")
ctx = types.SimpleNamespace()
ctx.bin_dir = os.environ.get("BIN", os.path.join(ROOT, "target", "release"))
ctx.bench = os.path.join(ctx.bin_dir, "handoff-bench")
ctx.tmp = tempfile.mkdtemp(prefix="pinned-")
ctx.reaper = B.Reaper(None)
ctx.args = types.SimpleNamespace(master_args=os.environ.get("MASTER_ARGS", ""))
ctx.progress = lambda msg: print(msg, flush=True)

def pin(proc, placement):
    workers = sorted(B.descendants(proc.pid))
    assert len(workers) == 2, workers
    if placement in ("apart", "alone"):
        os.sched_setaffinity(proc.pid, {0}); os.sched_setaffinity(workers[0], {1}); os.sched_setaffinity(workers[1], {1})
    elif placement == "beside":
        os.sched_setaffinity(proc.pid, {0}); os.sched_setaffinity(workers[0], {0}); os.sched_setaffinity(workers[1], {1})

def handoff(placement):
    def start():
        proc, addr, _ = B.start_master(ctx, f"handoff-{placement}", 2, ["--mode", "dispatch"])
        pin(proc, placement)
        return proc, addr, 2
    return start

def ref(placement):
    def start():
        proc, addr, n = B.start_refmaster(ctx, f"ref-{placement}", 2)
        pin(proc, placement)
        return proc, addr, n
    return start

# The burst's load generator: pinned to CPU 1 for the `alone` servers.
client_cpu = {}
_popen = subprocess.Popen
class Popen(_popen):
    def __init__(self, argv, *a, **k):
        super().__init__(argv, *a, **k)
        if "--requests" in argv:
            port = argv[argv.index("--target") + 1].rsplit(":", 1)[1]
            if client_cpu.get(port) is not None:
                os.sched_setaffinity(self.pid, {client_cpu[port]})
B.subprocess.Popen = Popen

def pinned_start(start, placement):
    def wrapped():
        proc, addr, n = start()
        client_cpu[addr.rsplit(":", 1)[1]] = 1 if placement == "alone" else None
        return proc, addr, n
    return wrapped

servers = []
for p in placements:
    servers += [(f"handoff-{p}", pinned_start(handoff(p), p)), (f"ref-{p}", pinned_start(ref(p), p))]
try:
    bursts, failures = B.burst_runs(ctx, servers, 2000, reps)
finally:
    ctx.reaper.kill_all()
print("failures:", failures)
for label, (row, samples) in bursts.items():
    v = sorted(s["master_us_per_conn"] for s in samples)
    pre = sorted(s["master_preempted"] for s in samples)
    print(f"{label:16} median {statistics.median(v):5.2f} µs  range {v[0]:.2f}-{v[-1]:.2f} "
          f"max/min {v[-1]/v[0]:.2f}  preempted median {statistics.median(pre)} max {pre[-1]}")
