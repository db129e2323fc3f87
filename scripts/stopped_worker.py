#!/usr/bin/env python3
"""A SIGSTOPped worker under `--mode reuseport`: how many connections are
queued to it before the selection stops choosing it, and what the other
clients' latency does meanwhile.

For each selection (the kernel's hash, `--policy least`) and worker count:
a master on 127.0.0.1, a closed-loop run (handoff-bench, concurrency C,
S seconds) with every worker running, then one worker SIGSTOPped and the
same run again; then SIGCONT. Clients queued to the stopped worker hang
until their --timeout (counted as timeouts; the hash gives it about 1/N of
them); the p99 is over the connections answered. Prints a Markdown table.

  scripts/stopped_worker.py [--seconds S] [--concurrency C] [--workers 2,4]

Needs release binaries (cargo build --release) and root or CAP_BPF for
`least`. Load: 127.0.0.1 only, bounded by S seconds per run.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as B  # noqa: E402

BIN = os.path.join(B.ROOT, "target", "release")


def bench(addr, seconds, concurrency, timeout):
    out = subprocess.run([os.path.join(BIN, "handoff-bench"), "--target", addr,
                          "--concurrency", str(concurrency), "--duration", str(seconds),
                          "--warmup", "0.5", "--timeout", str(timeout), "--drain", "0",
                          "--json"], capture_output=True, text=True, timeout=seconds + 60)
    if out.returncode != 0:
        raise RuntimeError(f"handoff-bench: {out.stderr[-300:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def one(policy, n, args, tmp):
    run_dir = os.path.join(tmp, f"run-{policy}-{n}")
    master = subprocess.Popen(
        [os.path.join(BIN, "handoff-master"), "--listen", "127.0.0.1:0", "--workers", str(n),
         "--mode", "reuseport", "--policy", policy, "--run-dir", run_dir, "--timeout", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    stopped = None
    try:
        line = B.read_line(master.stdout, 10)
        if not line.startswith("listening on "):
            raise RuntimeError(f"no ready line: {line!r}")
        addr = line.split()[-1]
        if not B.wait_workers(run_dir, n, time.monotonic() + 10):
            raise RuntimeError("workers did not register")
        before = bench(addr, args.seconds, args.concurrency, args.timeout)
        workers = (B.control(run_dir, "workers") or {}).get("workers", [])
        stopped = workers[0]["pid"]
        os.kill(stopped, signal.SIGSTOP)
        # The program takes a worker for stopped once its heartbeat is
        # 250 ms old; the run starts at once, so the first SYNs still see
        # it as alive (that is what the queued count measures).
        during = bench(addr, args.seconds, args.concurrency, args.timeout)
        return before, during
    finally:
        if stopped:
            try:
                os.kill(stopped, signal.SIGCONT)
            except ProcessLookupError:
                pass
        try:
            os.killpg(master.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        master.wait(timeout=10)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--timeout", type=float, default=2.0,
                   help="seconds a client waits before it counts as a timeout [2]")
    p.add_argument("--workers", default="2,4")
    args = p.parse_args()
    print(f"concurrency {args.concurrency}, {args.seconds:g} s per run, client timeout "
          f"{args.timeout:g} s, {os.cpu_count()} cores\n")
    print("| selection | workers | p99 ms, none stopped | p99 ms, one stopped | ratio "
          "| timeouts (queued to the stopped worker) | answered |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory(prefix="handoff-stopped-") as tmp:
        for n in [int(x) for x in args.workers.split(",")]:
            for policy, label in (("rr", "kernel hash"), ("least", "program, least")):
                before, during = one(policy, n, args, tmp)
                b99, d99 = before["latency_us"]["p99"], during["latency_us"]["p99"]
                print(f"| {label} | {n} | {b99 / 1000:.2f} | {d99 / 1000:.2f} "
                      f"| {d99 / b99:.2f}× | {during['errors']['timeout']} "
                      f"| {during['connections']:,} |", flush=True)


if __name__ == "__main__":
    main()
