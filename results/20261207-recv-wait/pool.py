#!/usr/bin/env python3
"""Ad-hoc: master cost per conn, rr/least/ref at N workers, interleaved."""
import json, os, subprocess, sys, time, tempfile, re, signal
ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))  # the repository
BIN = os.environ.get("BIN", os.path.join(ROOT, "target", "release"))
BENCH = os.path.join(ROOT, "target", "release", "handoff-bench")
def sched(pid):
    with open(f"/proc/{pid}/schedstat") as f: return int(f.read().split()[0])
def ctx(pid):
    v = n = 0
    with open(f"/proc/{pid}/status") as f:
        for l in f:
            if l.startswith("voluntary_ctxt"): v = int(l.split()[1])
            if l.startswith("nonvoluntary_ctxt"): n = int(l.split()[1])
    return v, n
def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f: return [int(x) for x in f.read().split()]
    except OSError: return []
def start(kind, n, extra):
    tmp = tempfile.mkdtemp(prefix="pool-")
    if kind == "ref":
        argv = [BENCH, "refmaster", "--workers", str(n), "--listen", "127.0.0.1:0", "--backlog", "4096"]
    else:
        bin_dir = BIN
        if kind.startswith("b"):
            bin_dir, kind = os.environ.get("BEFORE_BIN", "/tmp/before/target/release"), kind[1:]
        argv = [f"{bin_dir}/handoff-master", "--listen", "127.0.0.1:0", "--workers", str(n), "--run-dir", tmp,
                "--backlog", "4096", "--mode", "dispatch", "--policy", kind, *extra]
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env={**os.environ, "RUST_LOG": "warn"})
    addr = None
    while True:
        l = p.stdout.readline()
        m = re.search(r"listening on (\S+)", l)
        if m: addr = m.group(1); break
    deadline = time.monotonic() + 10
    while len(children(p.pid)) < n and time.monotonic() < deadline: time.sleep(0.05)
    time.sleep(0.5)
    return p, addr
def run(kind, n, dur, extra):
    nice = None
    if kind.startswith("n"):
        nice, kind = kind[1:kind.index("r")], kind[kind.index("r"):]
    batch_sched = kind.startswith("s")
    if batch_sched:
        kind = kind[1:]
    p, addr = start(kind, n, extra)
    ws = children(p.pid)
    if batch_sched:
        for w in ws:
            subprocess.run(["chrt", "-b", "-p", "0", str(w)], check=True)
    if nice:
        for w in ws:
            subprocess.run(["renice", "-n", nice, "-p", str(w)], check=True, capture_output=True)
    x = measure(p, addr, ws, dur)
    return dict(cfg=(f"n{nice}" if nice else "") + ("s" if batch_sched else "") + f"{kind}-{n}", **x)
def measure(p, addr, ws, dur):
    """Loads `addr` for `dur` s at concurrency 64 and stops the master `p`:
    per-connection CPU (µs) and switches of the master and its workers `ws`,
    conn/s, and handoff-bench's JSON answer as `r`."""
    b = subprocess.Popen([BENCH, "-t", addr, "-c", "64", "-d", str(dur), "--warmup", "0.5", "--json", "--marks"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while "window-start" not in b.stderr.readline(): pass
    m0, c0, w0 = sched(p.pid), ctx(p.pid), sum(sched(w) for w in ws)
    wc0 = [ctx(w) for w in ws]
    while "window-end" not in b.stderr.readline(): pass
    m1, c1, w1 = sched(p.pid), ctx(p.pid), sum(sched(w) for w in ws)
    wc1 = [ctx(w) for w in ws]
    out, _ = b.communicate()
    r = json.loads(out.strip().splitlines()[-1])
    p.send_signal(signal.SIGTERM); p.wait()
    done = r.get("connections")
    if done is None:
        done = r["conns_per_s"] * dur
    wv = sum(a[0] for a in wc1) - sum(a[0] for a in wc0); wn = sum(a[1] for a in wc1) - sum(a[1] for a in wc0)
    return dict(m=(m1-m0)/1e3/done, w=(w1-w0)/1e3/done, cps=done/dur,
                mv=(c1[0]-c0[0])/done, mn=(c1[1]-c0[1])/done, wv=wv/done, wn=wn/done, r=r)
def rounds(run_one, show):
    """Runs every config of argv[1] (comma-separated) in turn, argv[2] rounds
    (3), `DUR` s each, `EXTRA` master options: {config: [result, ...]}."""
    cfgs = sys.argv[1].split(",")  # e.g. rr-2,rr-64,ref-2,ref-64
    reps = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    dur = float(os.environ.get("DUR", "3"))
    extra = os.environ.get("EXTRA", "").split()
    res = {}
    for rep in range(reps):
        for c in cfgs:
            r = run_one(c, dur, extra)
            res.setdefault(c, []).append(r)
            print(show(c, r), flush=True)
    print("medians:")
    return res
def run_config(c, dur, extra):
    kind, n = c.rsplit("-", 1)
    return run(kind, int(n), dur, extra)
if __name__ == "__main__":
    res = rounds(run_config, lambda c, r: f"{r['cfg']:10} master {r['m']:6.2f} µs/c  workers {r['w']:6.2f}  {r['cps']:8.0f} c/s  "
                 f"m vol {r['mv']:.3f} inv {r['mn']:.3f}  w vol {r['wv']:.3f} inv {r['wn']:.3f}")
    for c, rs in res.items():
        ms = sorted(x['m'] for x in rs); ws = sorted(x['w'] for x in rs)
        print(f"{c:10} master {ms[len(ms)//2]:6.2f}  workers {ws[len(ws)//2]:6.2f}")
