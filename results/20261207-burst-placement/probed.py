#!/usr/bin/env python3
"""Ad-hoc: are the two burst groups the host's CPU speed? Bursts of
handoff-2 and refmaster-2 as in make bench (benchlib.burst_runs, 2000
clients queued, interleaved), with a fixed CPU-bound probe (a Python loop,
about 2-4 ms) run on each of the two CPUs right before SIGCONT and right
after the burst is answered. Prints each burst's cost beside the probes.
Usage: probed.py [reps]"""
import os, sys, tempfile, types, statistics, time, json, signal, subprocess
ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))  # the repository
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import benchlib as B

def probe_ms(cpu):
    os.sched_setaffinity(0, {cpu})
    t = time.thread_time_ns(); x = 0
    for k in range(20000): x += k * k
    return (time.thread_time_ns() - t) / 1e6

def last_cpu(pid):
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[36])

MEM = bytearray(24 << 20)

def mem_probe_ms(cpu):
    """A walk over 24 MiB, one byte per 4160: cache and TLB misses."""
    os.sched_setaffinity(0, {cpu})
    buf, total = MEM, 0
    t = time.thread_time_ns()
    for off in range(0, len(buf), 4160):
        total += buf[off]
    return (time.thread_time_ns() - t) / 1e6

def tw():
    with open("/proc/net/sockstat") as f:
        for line in f:
            if line.startswith("TCP:"):
                parts = line.split()
                return int(parts[parts.index("tw") + 1])

def probes():
    r = [probe_ms(c) for c in (0, 1)] + [mem_probe_ms(c) for c in (0, 1)]
    os.sched_setaffinity(0, {0, 1})
    return r

orig_kill = os.kill
pending = {}
def kill(pid, sig):
    # benchlib.burst_once: the first SIGCONT resumes the burst; probe right before it.
    if sig == signal.SIGCONT and pid in pending and pending[pid] is None:
        pending[pid] = (probes(), last_cpu(pid))
    orig_kill(pid, sig)
orig_communicate = subprocess.Popen.communicate
after = {}
watch = [0]
def communicate(self, *a, **k):
    out = orig_communicate(self, *a, **k)
    if self.args and self.args[0].endswith("handoff-bench") and "--requests" in self.args:
        after["last"] = probes()
        after["cpu"] = last_cpu(watch[0])
    return out
os.kill = kill
subprocess.Popen.communicate = communicate
orig_once = B.burst_once
def once(ctx, proc, addr, clients):
    pending[proc.pid] = None
    watch[:] = [proc.pid]
    s = orig_once(ctx, proc, addr, clients)
    s["probe_before"], s["cpu_before"] = pending.pop(proc.pid)
    s["tw"] = tw()
    s["probe_after"], s["cpu_after"] = after.pop("last"), after.pop("cpu")
    return s
B.burst_once = once

reps = int(sys.argv[1]) if len(sys.argv) > 1 else 9
if os.environ.get("FILL_TW"):
    # Fill the TIME_WAIT table first, as make bench's steady windows do.
    import re as _re
    srv = subprocess.Popen([os.path.join(ROOT, "target", "release", "handoff-bench"), "serve", "--listen", "127.0.0.1:0"],
                           stdout=subprocess.PIPE, text=True)
    addr = srv.stdout.readline().split()[-1]
    subprocess.run([os.path.join(ROOT, "target", "release", "handoff-bench"), "-t", addr, "-c", "64", "-d",
                    os.environ["FILL_TW"], "--warmup", "0"], capture_output=True)
    srv.kill(); srv.wait()
    print("TIME_WAIT after the fill:", tw(), flush=True)
ctx = types.SimpleNamespace(bin_dir=os.path.join(ROOT, "target", "release"))
ctx.bench = os.path.join(ctx.bin_dir, "handoff-bench")
ctx.tmp = tempfile.mkdtemp(prefix="probed-")
ctx.reaper = B.Reaper(None)
ctx.args = types.SimpleNamespace(master_args="")
ctx.progress = lambda msg: None
servers = [("handoff-2", lambda: B.start_master(ctx, "handoff-2", 2, ["--mode", "dispatch"])[:2] + (2,)),
           ("refmaster-2", lambda: B.start_refmaster(ctx, "refmaster-2", 2))]
try:
    bursts, failures = B.burst_runs(ctx, servers, 2000, reps)
finally:
    ctx.reaper.kill_all()
rows = []
for label, (row, samples) in bursts.items():
    for i, s in enumerate(samples):
        pb, pa = s["probe_before"], s["probe_after"]
        rows.append(dict(server=label, rep=i, us=s["master_us_per_conn"], before=pb, after=pa,
                         preempted=s["master_preempted"], slept=s["master_sleeps"],
                         cpu_before=s["cpu_before"], cpu_after=s["cpu_after"], tw=s["tw"]))
        print(f"{label:12} {i:2} {s['master_us_per_conn']:5.2f} µs  alu {pb[0]:.2f} {pb[1]:.2f} -> {pa[0]:.2f} {pa[1]:.2f}  "
              f"mem {pb[2]:.2f} {pb[3]:.2f} -> {pa[2]:.2f} {pa[3]:.2f}  master cpu{s['cpu_before']}->cpu{s['cpu_after']}  preempted {s['master_preempted']}  tw {s['tw']}")
json.dump(rows, open(os.environ.get("OUT", "/tmp/probed.json"), "w"))
print("failures:", failures)
