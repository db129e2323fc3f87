#!/usr/bin/env python3
"""Steady load (concurrency 64), handoff (2 workers) and the reference
master (2 workers) one after the other, each sampled with perf record -g:
where each master's µs per connection go, by system call and by the top
self-time kernel symbols. Run from the repository root:
results/20261207-steady-profile/steady_vs_ref.py [seconds] [rounds]"""
import json, os, subprocess, sys, tempfile, time
sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.getcwd(), "scripts"))
import benchlib as B  # noqa
import syscalls as S  # noqa
import profile as P  # noqa

secs = float(sys.argv[1]) if len(sys.argv) > 1 else 4
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 1
EXTRA = os.environ.get("EXTRA", "").split()

def top(path, n=25):
    subprocess.run(["cp", path, f"/tmp/{os.path.basename(path)}"])
    out = subprocess.run(["perf", "report", "-i", path, "--no-children", "--sort", "sym",
                          "--percent-limit", "0.7", "--stdio"], capture_output=True,
                         text=True, timeout=120).stdout
    rows = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0].endswith("%"):
            rows.append((float(parts[0][:-1]), parts[-1]))
    return rows[:n]

def run(tmp, name, proc, addr, pids):
    B.probe(addr, time.monotonic() + 10)
    path = os.path.join(tmp, f"{name}.data")
    rec = P.Recorder([proc.pid], path, freq=2000)
    cpu0 = B.cpu_ns(proc.pid)
    out = subprocess.run([os.path.join(S.BIN, "handoff-bench"), "--target", addr, "-c", "64",
                          "-d", str(secs), "--warmup", "0", "--json"], capture_output=True,
                         text=True, timeout=secs + 30, check=True).stdout
    cpu1 = B.cpu_ns(proc.pid)
    sh = rec.stop()
    r = json.loads(out.strip().splitlines()[-1])
    us = (cpu1 - cpu0) / 1e3 / r["connections"]
    return us, sh, top(path), r["conns_per_s"], P.switches(proc.pid)

with tempfile.TemporaryDirectory(prefix="svr-") as tmp:
    h, haddr, _ = S.start_master(tmp, "h", EXTRA)
    ref, raddr = S.start_refmaster()
    if os.environ.get("CHRT"):
        subprocess.run(["chrt", "-a", *os.environ["CHRT"].split(), "-p", "0", str(h.pid)], check=True)
    try:
        for i in range(rounds):
            res = {}
            for name, proc, addr in ([("handoff", h, haddr), ("reference", ref, raddr)][:: 1 if i % 2 == 0 else -1]):
                s0 = P.switches(proc.pid)
                us, sh, tp, cps, s1 = run(tmp, f"{name}{i}", proc, addr, [])
                res[name] = (us, sh, tp, cps, s0, s1)
            print(f"## round {i}")
            for name, (us, sh, tp, cps, s0, s1) in res.items():
                print(f"### {name}: {us:.2f} µs/conn (sampled), {cps:,.0f} conn/s, switches vol {s1[0]-s0[0]} invol {s1[1]-s0[1]}")
                for k in P.ENTRIES + P.INSIDE + ["user space"]:
                    if sh.get(k, 0) >= 0.5:
                        print(f"  {k:24s} {sh[k]:5.1f} %  {sh[k]*us/100:5.2f} µs")
                print("  top self:")
                for pct, sym in tp:
                    print(f"    {pct:5.1f} %  {pct*us/100:5.2f} µs  {sym}")
    finally:
        S.stop(h); S.stop(ref)
