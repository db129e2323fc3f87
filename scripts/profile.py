#!/usr/bin/env python3
"""Where the master's (and the workers') CPU goes, by system call: samples
the release master and its workers with `perf record -g -e cpu-clock` under
a bounded load on 127.0.0.1 and prints, per process group, the share of its
samples under each system call's entry point (children included), the part
spent in user space, and the CPU µs per connection (schedstat) of the same
load (inflated by the sampling itself: compare the shares, and take µs per
connection from the compare runs). Scenarios: dispatch rr with 2 workers (steady, concurrency 64), the
same master in a burst (stopped, 2000 clients queued, resumed) with
--batch 1 and --batch 16, shared mode with 2 workers (steady), and the load
generator itself against the two baselines and rr-2.

`--steady-vs-ref N` does the same under the steady load: N alternating
windows of --seconds into each, with the switches per connection (asleep
or preempted).

`--burst-vs-ref N` instead profiles handoff (`--batch 1`, 2 workers) and
the reference master (handoff-bench refmaster, 2 workers) side by side: N
bursts into each, interleaved, both sampled throughout, and prints where
each one's µs per connection go (user space, each system call, the
receiver's wake-up inside sendmsg, being switched out) with the
difference, plus the context switches per burst. `--bin-dir` profiles
other binaries (an older build, for a before/after table).

Needs perf (Debian: linux-perf) and release binaries.
Usage: scripts/profile.py [--seconds S] [--burst-vs-ref N | --steady-vs-ref N] [--bin-dir DIR]
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as B  # noqa: E402
import syscalls as S  # noqa: E402

SYSCALLS = ["accept4", "sendmsg", "close", "recvmsg", "epoll_wait", "getsockopt", "ioctl",
            "recvfrom", "sendto", "shutdown", "epoll_ctl", "connect", "write", "read"]
# A system call's entry point is one of these, whichever the kernel kept
# (some are inlined into the others).
ENTRY_FORMS = ["__x64_sys_{}", "__sys_{}", "__do_sys_{}"]
ENTRIES = [f"{s}()" for s in SYSCALLS]
INSIDE = ["__fput", "tcp_close", "sock_def_readable", "try_to_wake_up", "schedule"]


class Recorder:
    def __init__(self, pids, path, freq=1000):
        self.path = path
        self.proc = subprocess.Popen(
            ["perf", "record", "-g", "-e", "cpu-clock", "-F", str(freq), "-o", path, "-p",
             ",".join(str(p) for p in pids)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        time.sleep(0.5)

    def stop(self):
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=30)
        return shares(self.path)


def shares(path):
    """{symbol: % of samples with it on the stack}, plus user-space %."""
    out = subprocess.run(["perf", "report", "-i", path, "--children", "--sort", "sym", "-g",
                          "none", "--percent-limit", "0", "--stdio"],
                         capture_output=True, text=True, timeout=120).stdout
    forms = {form.format(s): f"{s}()" for s in SYSCALLS for form in ENTRY_FORMS}
    forms.update({k: k for k in INSIDE})
    result = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[0].endswith("%") and parts[2] in ("[k]", "[.]"):
            name = forms.get(parts[3])
            if name:
                result[name] = max(result.get(name, 0.0), float(parts[0][:-1]))
    dso = subprocess.run(["perf", "report", "-i", path, "--no-children", "--sort", "dso",
                          "-n", "--stdio"], capture_output=True, text=True, timeout=120).stdout
    kernel = samples = 0.0
    for line in dso.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0].endswith("%") and parts[1].isdigit():
            samples += int(parts[1])
            if "[kernel" in line:
                kernel += float(parts[0][:-1])
    result["user space"] = max(100.0 - kernel, 0.0)
    result["samples"] = int(samples)
    return result


def table(title, load, columns):
    """columns: [(name, shares, us_per_conn)]."""
    print(f"### {title}\n")
    print(f"Load: {load}; samples: "
          + ", ".join(f"{c[0]} {c[1].get('samples', 0):,}" for c in columns) + "\n")
    print("| % of the process's CPU samples | " + " | ".join(c[0] for c in columns) + " |")
    print("|---|" + "---:|" * len(columns))
    print("| CPU µs per connection (schedstat) | "
          + " | ".join(f"{c[2]:.2f}" for c in columns) + " |")
    for k in ENTRIES + INSIDE + ["user space"]:
        if any(c[1].get(k, 0) >= 0.5 for c in columns):
            label = f"… of which in {k}" if k in INSIDE else k
            print(f"| {label} | " + " | ".join(f"{c[1].get(k, 0):.1f}" for c in columns) + " |")
    print()


def steady(tmp, name, extra, seconds, key):
    proc, addr, run_dir = S.start_master(tmp, name, extra)
    try:
        B.probe(addr, time.monotonic() + 10)
        workers = sorted(B.children(proc.pid))
        rm = Recorder([proc.pid], os.path.join(tmp, f"{name}-m.data"))
        rw = Recorder(workers, os.path.join(tmp, f"{name}-w.data"))
        before = B.control(run_dir, "info")
        cpu0 = {p: B.cpu_ns(p) for p in [proc.pid] + workers}
        out = subprocess.run([os.path.join(S.BIN, "handoff-bench"), "--target", addr, "-c", "64",
                              "-d", str(seconds), "--warmup", "0", "--json"],
                             capture_output=True, text=True, timeout=seconds + 30,
                             check=True).stdout
        cpu1 = {p: B.cpu_ns(p) for p in [proc.pid] + workers}
        after = B.control(run_dir, "info")
        m, w = rm.stop(), rw.stop()
        r = json.loads(out.strip().splitlines()[-1])
        conns = after[key] - before[key]
        us_m = (cpu1[proc.pid] - cpu0[proc.pid]) / 1e3 / conns
        us_w = sum(cpu1[p] - cpu0[p] for p in workers) / 1e3 / conns
        table(f"{name}, steady, concurrency 64, {seconds:g} s",
              f"{r['conns_per_s']:,.0f} conn/s while sampled, {r['errors_total']} errors",
              [("master", m, us_m), ("all workers", w, us_w)])
    finally:
        S.stop(proc)


def burst(tmp, batch, reps=10, clients=2000):
    proc, addr, _ = S.start_master(tmp, f"burst-b{batch}", ["--batch", str(batch)])
    port = int(addr.rsplit(":", 1)[1])
    try:
        B.probe(addr, time.monotonic() + 10)
        # A burst is only ~10 ms of master CPU: sample faster, and often.
        rm = Recorder([proc.pid], os.path.join(tmp, f"burst-{batch}.data"), freq=10000)
        spent, served = 0, 0
        for _ in range(reps):
            os.kill(proc.pid, signal.SIGSTOP)
            b = subprocess.Popen([os.path.join(S.BIN, "handoff-bench"), "--target", addr, "-c",
                                  str(clients), "-n", str(clients), "--warmup", "0", "-d", "30",
                                  "--timeout", "25", "--json"], stdout=subprocess.PIPE,
                                 text=True)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and (B.listen_queue(port) or 0) < clients:
                time.sleep(0.02)
            time.sleep(0.05)
            before = B.cpu_ns(proc.pid)
            os.kill(proc.pid, signal.SIGCONT)
            out, _ = b.communicate(timeout=40)
            spent += B.cpu_ns(proc.pid) - before
            served += json.loads(out.strip().splitlines()[-1])["connections"]
            time.sleep(0.3)
        m = rm.stop()
        table(f"dispatch rr, 2 workers, burst, --batch {batch}",
              f"{reps} bursts of {clients} clients queued while the master was stopped, "
              f"{served} answered (the samples also cover the idle gaps between bursts)",
              [("master", m, spent / 1e3 / served)])
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        S.stop(proc)


def bench_side(tmp, seconds):
    """The load generator's own profile against three servers: how much of
    it goes into waking the server up (its connect() completes the
    handshake, and the listener's wake-up runs in its context)."""
    cols, loads = [], []
    for name in ("baseline-2", "baseline-epoll-2", "rr-2"):
        if name.startswith("baseline"):
            proc = subprocess.Popen(
                [os.path.join(S.BIN, "handoff-bench"), "serve", "--listen", "127.0.0.1:0",
                 "--threads", "2", *(["--epoll"] if "epoll" in name else [])],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                start_new_session=True)
            addr = B.read_line(proc.stdout, 10).split()[-1]
        else:
            proc, addr, _ = S.start_master(tmp, f"bench-side-{name}", [])
        try:
            B.probe(addr, time.monotonic() + 10)
            path = os.path.join(tmp, f"bench-{name}.data")
            out = subprocess.run(
                ["perf", "record", "-g", "-e", "cpu-clock", "-F", "1000", "-o", path, "--",
                 os.path.join(S.BIN, "handoff-bench"), "--target", addr, "-c", "64", "-d",
                 str(seconds), "--warmup", "0.5", "--json"],
                capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            cols.append((name, shares(path), r["cpu"]["us_per_conn"]))
            loads.append(f"{name} {r['conns_per_s']:,.0f} conn/s")
        finally:
            S.stop(proc)
    table(f"the load generator (handoff-bench, 1 thread), concurrency 64, {seconds:g} s",
          ", ".join(loads) + "; the column headers name the server", cols)


class BurstBench:
    """What benchlib.burst_once needs of a run's context."""

    def __init__(self):
        self.bench = os.path.join(S.BIN, "handoff-bench")


def switches(pid):
    """(voluntary, involuntary) context switches of pid's main thread."""
    counts = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            counts[key] = value.strip()
    return int(counts["voluntary_ctxt_switches"]), int(counts["nonvoluntary_ctxt_switches"])


# Where a burst's µs per connection go, as (label, what to take from shares()).
BURST_ROWS = [
    ("user space (the process's own code and libc)", "user space"),
    ("accept4()", "accept4()"),
    ("sendmsg()", "sendmsg()"),
    ("… of which the receiver's wake-up (sock_def_readable)", "sock_def_readable"),
    ("close()", "close()"),
    ("epoll_wait()", "epoll_wait()"),
    ("switched out and back (schedule, from any call)", "schedule"),
]


def side_by_side_rows(shares_by_server, us):
    """The table of where handoff's and the reference's µs per connection
    go (BURST_ROWS), from each one's shares of samples and its µs."""
    print("| where the µs per connection go | handoff | reference | difference |")
    print("|---|---:|---:|---:|")
    for label, key in BURST_ROWS:
        h = shares_by_server["handoff"].get(key, 0) * us["handoff"] / 100
        r = shares_by_server["reference"].get(key, 0) * us["reference"] / 100
        print(f"| {label} | {h:.2f} | {r:.2f} | {h - r:+.2f} |")
    print(f"| all | {us['handoff']:.2f} | {us['reference']:.2f} "
          f"| {us['handoff'] - us['reference']:+.2f} |")


def burst_vs_ref(tmp, reps, clients=2000):
    """handoff --batch 1 and the reference master, 2 workers each, `reps`
    interleaved bursts of `clients`, both sampled: the µs per connection
    of each by where they go, and the difference."""
    ctx = BurstBench()
    handoff, haddr, _ = S.start_master(tmp, "burst-vs-ref", ["--batch", "1"])
    ref, raddr = S.start_refmaster()
    servers = [("handoff", handoff, haddr), ("reference", ref, raddr)]
    try:
        for _, proc, addr in servers:
            B.probe(addr, time.monotonic() + 10)
        recorders = {name: Recorder([proc.pid], os.path.join(tmp, f"bvr-{name}.data"), freq=10000)
                     for name, proc, _ in servers}
        spent = {name: [] for name, _, _ in servers}
        switched = {name: [0, 0] for name, _, _ in servers}
        for rep in range(reps):
            for name, proc, addr in (servers if rep % 2 == 0 else servers[::-1]):
                before = switches(proc.pid)
                burst = B.burst_once(ctx, proc, addr, clients)
                after = switches(proc.pid)
                spent[name].append(burst["master_us_per_conn"])
                switched[name][0] += after[0] - before[0]
                switched[name][1] += after[1] - before[1]
                time.sleep(0.2)
        profiles = {name: rec.stop() for name, rec in recorders.items()}
    finally:
        for _, proc, _ in servers:
            S.stop(proc)
    us = {name: statistics.median(v) for name, v in spent.items()}
    print(f"### handoff (--batch 1) and the reference master side by side, burst\n")
    print(f"{reps} bursts into each, interleaved, {clients} clients queued while the master "
          f"was stopped, 2 workers each; perf record -g -e cpu-clock -F 10000 on both masters "
          f"throughout. CPU µs per connection (schedstat, inflated by the sampling), median "
          f"of the bursts: handoff {us['handoff']:.2f} (range {min(spent['handoff']):.2f}–"
          f"{max(spent['handoff']):.2f}), reference {us['reference']:.2f} (range "
          f"{min(spent['reference']):.2f}–{max(spent['reference']):.2f}) = "
          f"{us['handoff'] / us['reference']:.2f}×. Samples: "
          + ", ".join(f"{n} {profiles[n].get('samples', 0):,}" for n in profiles) + ".\n")
    side_by_side_rows(profiles, us)
    for name in ("handoff", "reference"):
        vol, invol = (x / reps for x in switched[name])
        print(f"| context switches per burst, {name}: voluntary / involuntary "
              f"| {vol:.1f} / {invol:.1f} | | |" if name == "handoff" else
              f"| context switches per burst, {name}: voluntary / involuntary "
              f"| | {vol:.1f} / {invol:.1f} | |")
    print()


def steady_vs_ref(tmp, rounds, seconds):
    """handoff (2 workers, default flags) and the reference master (2
    workers) under the same steady load (concurrency 64), `rounds` windows
    each, the order alternating: where each master's µs per connection go,
    and how often it was switched out (asleep, or preempted)."""
    handoff, haddr, _ = S.start_master(tmp, "steady-vs-ref", [])
    ref, raddr = S.start_refmaster()
    servers = [("handoff", handoff, haddr), ("reference", ref, raddr)]
    spent = {name: [] for name, _, _ in servers}
    switched = {name: [0, 0, 0] for name, _, _ in servers}
    profiles = {name: [] for name, _, _ in servers}
    try:
        for name, _, addr in servers:
            if not B.probe(addr, time.monotonic() + 10):
                raise RuntimeError(f"{name} at {addr} does not answer")
        for i in range(rounds):
            for name, proc, addr in (servers if i % 2 == 0 else servers[::-1]):
                rec = Recorder([proc.pid], os.path.join(tmp, f"svr-{name}-{i}.data"), freq=2000)
                before, cpu0 = switches(proc.pid), B.cpu_ns(proc.pid)
                try:
                    out = subprocess.run(
                        [os.path.join(S.BIN, "handoff-bench"), "--target", addr, "-c", "64",
                         "-d", str(seconds), "--warmup", "0", "--json"],
                        capture_output=True, text=True, timeout=seconds + 30, check=True).stdout
                    cpu1, after = B.cpu_ns(proc.pid), switches(proc.pid)
                finally:
                    shares_now = rec.stop()
                profiles[name].append(shares_now)
                conns = json.loads(out.strip().splitlines()[-1])["connections"]
                spent[name].append((cpu1 - cpu0) / 1e3 / conns)
                switched[name][0] += after[0] - before[0]
                switched[name][1] += after[1] - before[1]
                switched[name][2] += conns
    finally:
        for _, proc, _ in servers:
            S.stop(proc)
    us = {name: statistics.median(v) for name, v in spent.items()}
    # The rounds' shares, weighted by their samples.
    share = {}
    for name, profs in profiles.items():
        total = sum(p.get("samples", 0) for p in profs) or 1
        share[name] = {k: sum(p.get(k, 0) * p.get("samples", 0) for p in profs) / total
                       for _, k in BURST_ROWS}
    print("### handoff and the reference master side by side, steady load\n")
    print(f"{rounds} windows of {seconds:g} s each at concurrency 64, the order alternating, "
          f"2 workers each; perf record -g -e cpu-clock -F 2000 on the master. CPU µs per "
          f"connection (schedstat, inflated by the sampling), median of the windows: handoff "
          f"{us['handoff']:.2f}, reference {us['reference']:.2f} = "
          f"{us['handoff'] / us['reference']:.2f}×.\n")
    side_by_side_rows(share, us)
    vol = {n: s[0] / s[2] for n, s in switched.items()}
    invol = {n: s[1] / s[2] for n, s in switched.items()}
    print(f"| switches per connection: voluntary (asleep) | {vol['handoff']:.3f} "
          f"| {vol['reference']:.3f} | {vol['handoff'] - vol['reference']:+.3f} |")
    print(f"| switches per connection: involuntary (preempted) | {invol['handoff']:.3f} "
          f"| {invol['reference']:.3f} | {invol['handoff'] - invol['reference']:+.3f} |")
    print()


def positive(text):
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text}: give at least 1")
    return n


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=4.0)
    side = p.add_mutually_exclusive_group()
    side.add_argument("--burst-vs-ref", type=positive, metavar="N",
                      help="only: N interleaved bursts into handoff and the reference master, "
                           "side by side")
    side.add_argument("--steady-vs-ref", type=positive, metavar="N",
                      help="only: N alternating steady windows (--seconds each) of handoff "
                           "and the reference master, side by side (an even N starts each "
                           "first equally often)")
    p.add_argument("--bin-dir", help="the binaries to profile [target/release]")
    args = p.parse_args()
    if args.bin_dir:
        S.BIN = os.path.abspath(args.bin_dir)
    if args.burst_vs_ref:
        with tempfile.TemporaryDirectory(prefix="handoff-profile-") as tmp:
            print(f"# Where the burst's CPU goes ({os.cpu_count()} cores, "
                  f"{os.uname().release}; binaries: {S.BIN})\n")
            burst_vs_ref(tmp, args.burst_vs_ref)
        return
    if args.steady_vs_ref:
        with tempfile.TemporaryDirectory(prefix="handoff-profile-") as tmp:
            print(f"# Where the steady master's CPU goes ({os.cpu_count()} cores, "
                  f"{os.uname().release}; binaries: {S.BIN})\n")
            steady_vs_ref(tmp, args.steady_vs_ref, args.seconds)
        return
    with tempfile.TemporaryDirectory(prefix="handoff-profile-") as tmp:
        print(f"# Where the CPU goes, by system call ({os.cpu_count()} cores, "
              f"{os.uname().release}; perf record -g -e cpu-clock)\n")
        steady(tmp, "dispatch-rr-2", [], args.seconds, "accepted")
        burst(tmp, 1)
        burst(tmp, 16)
        steady(tmp, "shared-2", ["--mode", "shared"], args.seconds, "worker_accepted")
        bench_side(tmp, args.seconds)


if __name__ == "__main__":
    main()
