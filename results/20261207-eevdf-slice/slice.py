#!/usr/bin/env python3
"""Ad-hoc: the master's cost with a custom EEVDF slice (sched_attr.sched_runtime)
on the master or on the workers, beside the default, interleaved.

Config syntax: [P][N<K>][m<US>][w<US>]<rr|least|ref>-<N>: P = master on CPU 0, workers on CPU 1; m = master slice in µs,
N = the master at nice -K (N-3: nice +3), w = each worker's slice in µs (0.1 ms ≤ slice ≤ 100 ms, the kernel clamps).
Reuses results/20261207-recv-wait/pool.py for starting and measuring."""
import ctypes, json, os, re, signal, struct, subprocess, sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "20261207-recv-wait"))
import pool  # noqa: E402

libc = ctypes.CDLL(None, use_errno=True)
SYS_sched_setattr, SYS_sched_getattr = 314, 315

def set_slice(pid, slice_us):
    # struct sched_attr, SCHED_ATTR_SIZE_VER0 (48 bytes): size, policy, flags,
    # nice, priority, runtime, deadline, period.
    attr = struct.pack("IIQiIQQQ", 48, 0, 0, 0, 0, slice_us * 1000, 0, 0)
    buf = ctypes.create_string_buffer(attr)
    if libc.syscall(SYS_sched_setattr, pid, buf, 0) != 0:
        raise OSError(ctypes.get_errno(), f"sched_setattr({pid})")

def get_slice(pid):
    buf = ctypes.create_string_buffer(48)
    if libc.syscall(SYS_sched_getattr, pid, buf, 48, 0) != 0:
        raise OSError(ctypes.get_errno(), "sched_getattr")
    return struct.unpack("IIQiIQQQ", buf.raw)[5] // 1000

def parse(cfg):
    m = re.fullmatch(r"(P)?(?:N(-?\d+))?(?:m(\d+))?(?:w(\d+))?([a-z]+)-(\d+)", cfg)
    num = lambda g: int(m.group(g)) if m.group(g) else None
    return bool(m.group(1)), num(2), num(3), num(4), m.group(5), int(m.group(6))

def run(cfg, dur, extra):
    pinned, master_nice, ms, ws_slice, kind, n = parse(cfg)
    p, addr = pool.start(kind, n, extra)
    ws = pool.children(p.pid)
    if pinned:
        os.sched_setaffinity(p.pid, {0})
        for w in ws:
            os.sched_setaffinity(w, {1})
    if master_nice:
        os.setpriority(os.PRIO_PROCESS, p.pid, -master_nice)
    if ms:
        set_slice(p.pid, ms)
    if ws_slice:
        for w in ws:
            set_slice(w, ws_slice)
    slices = (get_slice(p.pid), get_slice(ws[0]))
    return dict(cfg=cfg, slices=slices, **pool.measure(p, addr, ws, dur))

def show(c, x):
    lat = x["r"]["latency_us"]
    return (f"{c:14} slices {x['slices']} master {x['m']:6.2f} µs/c  workers {x['w']:6.2f}  {x['cps']:8.0f} c/s  "
            f"m vol {x['mv']:.3f} inv {x['mn']:.3f}  p50 {lat['p50']} p99 {lat['p99']} µs")

if __name__ == "__main__":
    res = pool.rounds(run, show)
    for c, rs in res.items():
        med = lambda k: sorted(v[k] for v in rs)[len(rs) // 2]
        for v in rs:
            v["p50"], v["p99"] = v["r"]["latency_us"]["p50"], v["r"]["latency_us"]["p99"]
        print(f"{c:14} master {med('m'):6.2f}  workers {med('w'):6.2f}  conn/s {med('cps'):8.0f}  "
              f"preempted {med('mn'):.3f}  p50 {med('p50')} p99 {med('p99')} µs")
