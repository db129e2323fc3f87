#!/usr/bin/env python3
"""Ad-hoc: are the two burst groups the host's CPU speed? Bursts of
handoff-2 and refmaster-2 as in make bench (benchlib.burst_runs, 2000
clients queued, interleaved), with a fixed CPU-bound probe (a Python loop,
about 2-4 ms) run on each of the two CPUs right before SIGCONT and right
after the burst is answered. Prints each burst's cost beside the probes.
Usage: probed.py [reps]"""
import os, sys, tempfile, types, statistics, time, json, signal, subprocess
sys.path.insert(0, "/work/main/scripts")
import benchlib as B

def probe_ms(cpu):
    os.sched_setaffinity(0, {cpu})
    t = time.thread_time_ns(); x = 0
    for k in range(20000): x += k * k
    return (time.thread_time_ns() - t) / 1e6

def last_cpu(pid):
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[36])

def probes():
    r = [probe_ms(c) for c in (0, 1)]
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
    s["probe_after"], s["cpu_after"] = after.pop("last"), after.pop("cpu")
    return s
B.burst_once = once

reps = int(sys.argv[1]) if len(sys.argv) > 1 else 9
ctx = types.SimpleNamespace(bin_dir="/work/main/target/release")
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
                         cpu_before=s["cpu_before"], cpu_after=s["cpu_after"]))
        print(f"{label:12} {i:2} {s['master_us_per_conn']:5.2f} µs  probe before cpu0 {pb[0]:4.1f} cpu1 {pb[1]:4.1f}  "
              f"after cpu0 {pa[0]:4.1f} cpu1 {pa[1]:4.1f} ms  master on cpu{s['cpu_before']}->cpu{s['cpu_after']}  preempted {s['master_preempted']}")
json.dump(rows, open(os.environ.get("OUT", "/tmp/probed.json"), "w"))
print("failures:", failures)
