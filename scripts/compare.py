#!/usr/bin/env python3
"""Throughput comparison: handoff against the article's Python servers.

Runs each configuration (python-pool, python-executor, handoff-N) on its own
free port on 127.0.0.1, warms it up, loads it with handoff-bench for a fixed
window at the same concurrency, and samples the CPU time (schedstat, ns) of
the master and of all workers separately over exactly the bench's measured
window (handoff-bench --marks tells when it starts and ends), plus their
resident memory. Then a burst run: the handoff master is stopped (SIGSTOP),
N clients connect and send into its backlog, it is resumed, and its CPU is
measured until all are answered.

Writes results.csv, summary.md and chart.svg into the output directory.
Standard library only; every process it starts runs in its own process group
and is killed on the way out (compare.sh also kills the groups on EXIT).
"""

import argparse
import csv
import datetime
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import svgchart  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALL_CONFIGS = ["python-pool", "python-executor", "handoff-1", "handoff-2", "handoff-4",
               "handoff-8", "handoff-16"]
QUICK_CONFIGS = ["python-pool", "handoff-2"]
REPLY_PREFIX = b"server get message: "

# The targets, checked in the summary.
TARGET_RATIO = 15.0
TARGET_MASTER_US = 20.0
TARGET_WORKER_US = 30.0
TARGET_BURST_US = 6.0
TARGET_RSS_KIB = 10 * 1024

CSV_FIELDS = [
    "config", "kind", "workers", "concurrency", "window_s", "connections", "conns_per_s",
    "errors", "refused", "reset", "timeout", "short_reply", "wrong_reply", "other",
    "p50_us", "p90_us", "p99_us", "max_us",
    "master_cpu_s", "workers_cpu_s", "master_cpu_pct", "workers_cpu_pct",
    "master_us_per_conn", "worker_us_per_conn", "master_ceiling_conns_per_s",
    "bench_us_per_conn", "bench_user_us_per_conn", "bench_cpu_pct",
    "master_rss_kib", "master_hwm_kib", "worker_rss_kib", "worker_hwm_kib", "n_workers",
    "master_switches_per_conn", "worker_switches_per_conn", "other_cpu_pct",
    "ratio_to_python_pool",
]


# ---------------------------------------------------------------- processes

class Reaper:
    """Remembers every process group started, and kills them all on exit."""

    def __init__(self, pgid_file):
        self.pgids = []
        self.pgid_file = pgid_file

    def spawn(self, argv, **kwargs):
        proc = subprocess.Popen(argv, start_new_session=True, **kwargs)
        self.pgids.append(proc.pid)
        if self.pgid_file:
            with open(self.pgid_file, "a") as f:
                f.write(f"{proc.pid}\n")
        return proc

    def stop(self, proc, grace=3.0, sig=signal.SIGTERM):
        """Signals the process (handoff: graceful stop), then kills its group."""
        if proc.poll() is None:
            try:
                proc.send_signal(sig)
                proc.wait(timeout=grace)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                pass
        self.kill_group(proc.pid, grace)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass

    def kill_group(self, pgid, grace=3.0):
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline:
                try:
                    os.killpg(pgid, 0)
                except ProcessLookupError:
                    return
                time.sleep(0.05)

    def kill_all(self):
        for pgid in self.pgids:
            try:
                os.killpg(pgid, signal.SIGCONT)
            except ProcessLookupError:
                continue
            self.kill_group(pgid, grace=1.0)


def children(pid):
    """Direct children of pid, from every thread's children list."""
    out = set()
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out.update(int(x) for x in f.read().split())
        except OSError:
            pass
    return out


def descendants(pid):
    found, todo = set(), [pid]
    while todo:
        for child in children(todo.pop()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def cpu_ns(pid):
    """CPU time of every live thread of pid, in ns (schedstat), or None."""
    total, seen = 0, False
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
                seen = True
        except (OSError, ValueError, IndexError):
            pass
    return total if seen else None


def ctx_switches(pid):
    """Voluntary + involuntary context switches of every live thread of pid."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith(("voluntary_ctxt_switches:",
                                        "nonvoluntary_ctxt_switches:")):
                        total += int(line.split()[1])
        except (OSError, ValueError, IndexError):
            pass
    return total


def machine_busy_s():
    """Non-idle CPU seconds of the whole machine so far (/proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    # guest time is already inside user/nice
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def mem_kib(pid):
    """(VmRSS, VmHWM) of pid in KiB, or (0, 0)."""
    rss = hwm = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return rss, hwm


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def probe(addr, deadline):
    """One request in the article's protocol; retried until it answers right.

    It does not wait for EOF: the Python servers' master keeps its copy of
    the last accepted socket until the next accept returns, so the last
    client's EOF comes only with the next connection."""
    host, port = addr.rsplit(":", 1)
    want = REPLY_PREFIX + b"probe"
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, int(port)), timeout=2) as s:
                s.sendall(b"probe")
                reply = b""
                while len(reply) < len(want):
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    reply += chunk
                if reply == want:
                    return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


def listen_queue(port):
    """Connections waiting in the accept queue of the listener on port: the
    rx_queue of its LISTEN line in /proc/net/tcp (the kernel's sk_ack_backlog)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if len(parts) < 5 or parts[3] != "0A":
                        continue
                    if int(parts[1].rsplit(":", 1)[1], 16) == port:
                        return int(parts[4].split(":")[1], 16)
        except (OSError, ValueError, IndexError, StopIteration):
            continue
    return None


# ---------------------------------------------------------------- one run

class Sampler:
    """Samples CPU at the bench's window edges and memory during the window."""

    def __init__(self, master, window=None):
        self.master = master
        self.window = window
        self.tty = sys.stdout.isatty()
        self.start_cpu = {}
        self.end_cpu = {}
        self.rss_max = {}
        self.hwm = {}
        self.stop = threading.Event()
        self.thread = None

    def snapshot(self):
        pids = {self.master} | descendants(self.master)
        cpu = {pid: ns for pid in pids if (ns := cpu_ns(pid)) is not None}
        switches = {pid: ctx_switches(pid) for pid in cpu}
        return cpu, switches, machine_busy_s()

    def sample_memory(self):
        for pid in {self.master} | descendants(self.master):
            rss, hwm = mem_kib(pid)
            if rss:
                self.rss_max[pid] = max(self.rss_max.get(pid, 0), rss)
                self.hwm[pid] = max(self.hwm.get(pid, 0), hwm)

    def window_start(self):
        self.start_cpu, self.start_cs, self.start_busy = self.snapshot()
        self.thread = threading.Thread(target=self._memory_loop, daemon=True)
        self.thread.start()

    def _memory_loop(self):
        started = time.monotonic()
        while not self.stop.wait(0.5):
            self.sample_memory()
            if self.tty and self.window:
                print(f"\r  measuring {time.monotonic() - started:4.1f} / {self.window:g} s",
                      end="", flush=True)
        if self.tty and self.window:
            print("\r" + " " * 40 + "\r", end="", flush=True)

    def window_end(self):
        self.end_cpu, self.end_cs, self.end_busy = self.snapshot()
        self.stop.set()
        if self.thread:
            self.thread.join(timeout=2)
        self.sample_memory()

    def result(self):
        """(master s, workers s, n workers, master rss/hwm, worker max rss/hwm) in the window."""
        def delta(pid):
            return (self.end_cpu.get(pid, 0) - self.start_cpu.get(pid, 0)) / 1e9

        def switches(pid):
            return self.end_cs.get(pid, 0) - self.start_cs.get(pid, 0)

        workers = (set(self.start_cpu) | set(self.end_cpu)) - {self.master}
        master_s = delta(self.master)
        workers_s = sum(delta(pid) for pid in workers if pid in self.end_cpu)
        worker_rss = max((self.rss_max.get(p, 0) for p in workers), default=0)
        worker_hwm = max((self.hwm.get(p, 0) for p in workers), default=0)
        return {
            "master_cpu_s": master_s,
            "workers_cpu_s": workers_s,
            "n_workers": len(workers),
            "master_rss_kib": self.rss_max.get(self.master, 0),
            "master_hwm_kib": self.hwm.get(self.master, 0),
            "worker_rss_kib": worker_rss,
            "worker_hwm_kib": worker_hwm,
            "master_switches": switches(self.master),
            "worker_switches": sum(switches(p) for p in workers if p in self.end_cs),
            "machine_busy_s": self.end_busy - self.start_busy,
        }


def run_bench(bench, addr, args, sampler, extra=(), window=None, warmup=None, log=None):
    """Runs handoff-bench with --marks, sampling on the marks; returns its JSON."""
    argv = [bench, "--target", addr, "--concurrency", str(args.concurrency),
            "--threads", str(args.bench_threads),
            "--duration", str(window if window is not None else args.window),
            "--warmup", str(warmup if warmup is not None else args.warmup),
            "--timeout", "5", "--json", "--marks", *extra]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    other = []
    try:
        for line in proc.stderr:
            line = line.strip()
            if line == "handoff-bench: window-start":
                sampler.window_start()
            elif line == "handoff-bench: window-end":
                sampler.window_end()
            elif line:
                other.append(line)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"handoff-bench failed ({proc.returncode}): {' '.join(other)[-500:]}")
    if log:
        log.write(out)
    return json.loads(out.strip().splitlines()[-1])


def start_server(config, ctx):
    """Starts a configuration; returns (proc, addr, n_workers)."""
    logs = ctx.tmp
    if config.startswith("handoff-"):
        n = int(config.split("-", 1)[1])
        run_dir = os.path.join(ctx.tmp, f"run-{config}")
        proc = ctx.reaper.spawn(
            [os.path.join(ctx.bin_dir, "handoff-master"), "--listen", "127.0.0.1:0",
             "--workers", str(n), "--run-dir", run_dir, "--backlog", "4096",
             *shlex.split(ctx.args.master_args)],
            stdout=subprocess.PIPE, stderr=open(os.path.join(logs, f"{config}.log"), "w"),
            text=True, env={**os.environ, "RUST_LOG": "warn"})
        line = read_line(proc.stdout, 10)
        if not line.startswith("listening on "):
            raise RuntimeError(f"{config}: no ready line (got {line!r}); see {logs}/{config}.log")
        addr = line.split()[-1]
        deadline = time.monotonic() + 10
        while len(children(proc.pid)) < n and time.monotonic() < deadline:
            time.sleep(0.02)
        return proc, addr, n
    port = free_port()
    script = {"python-pool": "pool_server.py", "python-executor": "executor_server.py"}[config]
    proc = ctx.reaper.spawn(
        [ctx.python, os.path.join(ROOT, "scripts", "python", script), str(port)],
        stdout=subprocess.DEVNULL, stderr=open(os.path.join(logs, f"{config}.log"), "w"),
        env={**os.environ, "HOST": "127.0.0.1"}, cwd=ctx.tmp)
    n = 16 if config == "python-pool" else os.cpu_count()
    return proc, f"127.0.0.1:{port}", n


def read_line(pipe, timeout):
    result = []
    t = threading.Thread(target=lambda: result.append(pipe.readline()), daemon=True)
    t.start()
    t.join(timeout)
    return result[0].strip() if result else ""


def steady_run(config, ctx):
    proc, addr, n = start_server(config, ctx)
    try:
        if not probe(addr, time.monotonic() + 20):
            raise RuntimeError(f"{config}: no correct reply on {addr}; see {ctx.tmp}/{config}.log")
        sampler = Sampler(proc.pid, ctx.args.window)
        bench = run_bench(ctx.bench, addr, ctx.args, sampler)
        if proc.poll() is not None:
            raise RuntimeError(f"{config}: server exited during the run ({proc.returncode})")
        return row_from(config, "steady", n, bench, sampler.result())
    finally:
        ctx.reaper.stop(proc)


def burst_run(ctx, n_workers, clients, reps, start=None, label=None):
    """SIGSTOP the master, fill its backlog with `clients`, SIGCONT, measure.

    `start` (returning proc, addr, n) and `label` let the modes suite run it
    with other master options."""
    config = label or f"handoff-{n_workers}"
    proc, addr, _ = start() if start else start_server(config, ctx)
    port = int(addr.rsplit(":", 1)[1])
    samples = []
    try:
        if not probe(addr, time.monotonic() + 20):
            raise RuntimeError(f"burst: no correct reply on {addr}")
        for rep in range(reps):
            os.kill(proc.pid, signal.SIGSTOP)
            argv = [ctx.bench, "--target", addr, "--concurrency", str(clients),
                    "--requests", str(clients), "--warmup", "0", "--duration", "30",
                    "--timeout", "25", "--json"]
            bench = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
            deadline = time.monotonic() + 10
            queued = 0
            while time.monotonic() < deadline:
                queued = listen_queue(port) or 0
                if queued >= clients:
                    break
                time.sleep(0.02)
            time.sleep(0.05)  # let the last requests' bytes land
            before = cpu_ns(proc.pid)
            t0 = time.monotonic()
            os.kill(proc.pid, signal.SIGCONT)
            try:
                out, err = bench.communicate(timeout=40)
            finally:
                if bench.poll() is None:
                    bench.kill()
                    bench.wait()
            elapsed = time.monotonic() - t0
            after = cpu_ns(proc.pid)
            if bench.returncode != 0:
                raise RuntimeError(f"burst bench failed: {err.strip()[-300:]}")
            result = json.loads(out.strip().splitlines()[-1])
            served = result["connections"]
            master_s = (after - before) / 1e9 if before is not None and after is not None else 0
            samples.append({
                "queued": queued, "served": served, "errors": result["errors_total"],
                "master_cpu_s": master_s, "elapsed_s": elapsed,
                "master_us_per_conn": master_s * 1e6 / served if served else 0.0,
                "bench": result,
            })
            ctx.progress(f"  burst {rep + 1}/{reps}: {queued} queued, {served} answered, "
                         f"{result['errors_total']} errors, master "
                         f"{samples[-1]['master_us_per_conn']:.2f} µs/conn")
        rss, hwm = mem_kib(proc.pid)
    finally:
        ctx.reaper.stop(proc)
    best = statistics.median(s["master_us_per_conn"] for s in samples)
    mid = min(samples, key=lambda s: abs(s["master_us_per_conn"] - best))
    b = mid["bench"]
    row = row_from(f"{config}-burst", "burst", n_workers, b, {
        "master_cpu_s": mid["master_cpu_s"], "workers_cpu_s": None, "n_workers": n_workers,
        "master_rss_kib": rss, "master_hwm_kib": hwm, "worker_rss_kib": None,
        "worker_hwm_kib": None})
    row["window_s"] = mid["elapsed_s"]
    row["master_cpu_pct"] = mid["master_cpu_s"] * 100 / mid["elapsed_s"]
    row["conns_per_s"] = mid["served"] / mid["elapsed_s"] if mid["elapsed_s"] else 0
    row["master_us_per_conn"] = mid["master_us_per_conn"]
    row["master_ceiling_conns_per_s"] = (1e6 / mid["master_us_per_conn"]
                                         if mid["master_us_per_conn"] else 0)
    row["concurrency"] = clients
    return row, samples


def row_from(config, kind, n_workers, bench, cpu):
    conns = bench["connections"]
    window = bench["window_s"]
    e = bench["errors"]

    def per_conn(seconds):
        return seconds * 1e6 / conns if conns and seconds is not None else None

    def pct(seconds):
        return seconds * 100 / window if window and seconds is not None else None

    master_us = per_conn(cpu["master_cpu_s"])
    completed = conns + bench["errors_total"]
    return {
        "config": config, "kind": kind, "workers": n_workers,
        "concurrency": bench["concurrency"], "window_s": window,
        "connections": conns, "conns_per_s": bench["conns_per_s"],
        "errors": bench["errors_total"], **{k: e[k] for k in
                                            ("refused", "reset", "timeout", "short_reply",
                                             "wrong_reply", "other")},
        "p50_us": bench["latency_us"]["p50"], "p90_us": bench["latency_us"]["p90"],
        "p99_us": bench["latency_us"]["p99"], "max_us": bench["latency_us"]["max"],
        "master_cpu_s": cpu["master_cpu_s"], "workers_cpu_s": cpu["workers_cpu_s"],
        "master_cpu_pct": pct(cpu["master_cpu_s"]), "workers_cpu_pct": pct(cpu["workers_cpu_s"]),
        "master_us_per_conn": master_us, "worker_us_per_conn": per_conn(cpu["workers_cpu_s"]),
        "master_ceiling_conns_per_s": 1e6 / master_us if master_us else None,
        "bench_us_per_conn": bench["cpu"]["us_per_conn"],
        "bench_user_us_per_conn": (bench["cpu"]["user_s"] * 1e6 / completed
                                   if completed else None),
        "bench_cpu_pct": bench["cpu"]["percent"],
        "master_rss_kib": cpu["master_rss_kib"], "master_hwm_kib": cpu["master_hwm_kib"],
        "worker_rss_kib": cpu["worker_rss_kib"], "worker_hwm_kib": cpu["worker_hwm_kib"],
        "n_workers": cpu["n_workers"],
        "master_switches_per_conn": (cpu["master_switches"] / conns
                                     if conns and cpu.get("master_switches") is not None
                                     else None),
        "worker_switches_per_conn": (cpu["worker_switches"] / conns
                                     if conns and cpu.get("worker_switches") is not None
                                     else None),
        "other_cpu_pct": other_pct(cpu, bench, window),
        "ratio_to_python_pool": None,
    }


def other_pct(cpu, bench, window):
    """CPU the machine spent outside the measured processes, % of one core."""
    busy = cpu.get("machine_busy_s")
    if busy is None or not window or cpu.get("workers_cpu_s") is None:
        return None
    ours = (cpu["master_cpu_s"] or 0.0) + cpu["workers_cpu_s"] + bench["cpu"]["total_s"]
    return max(busy - ours, 0.0) * 100 / window


# ---------------------------------------------------------------- output

def fmt(value, digits=1):
    if value is None or value == "":
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def mib(kib):
    return "–" if not kib else f"{kib / 1024:.1f}"


def write_csv(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        for row in rows:
            w.writerow({k: ("" if row.get(k) is None else
                            (f"{row[k]:.3f}" if isinstance(row[k], float) else row[k]))
                        for k in CSV_FIELDS})


def machine_facts(ctx):
    def cmd(argv):
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=10,
                                  cwd=ROOT).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return "unknown"

    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")),
                         "unknown")
    except OSError:
        pass
    commit = cmd(["git", "rev-parse", "--short", "HEAD"])
    if cmd(["git", "status", "--porcelain", "--", "crates"]):
        commit += " (crates/ modified)"
    return [
        ("cores", f"{os.cpu_count()} ({model}); the load generator shares them"),
        ("kernel", platform.release()),
        ("rustc", cmd(["rustc", "-V"])),
        ("python", cmd([ctx.python, "-V"]) if ctx.python else "not used"),
        ("loguru", cmd([ctx.python, "-c", "import loguru; print(loguru.__version__)"])
         if ctx.python else "not used"),
        ("handoff commit", commit),
        ("date", datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")),
        ("command", ctx.command),
        ("handoff-master options", f"`--backlog 4096 {ctx.args.master_args}`".replace(" `", "`")),
        ("settings", f"concurrency {ctx.args.concurrency}, warm-up {ctx.args.warmup} s, "
                     f"window {ctx.args.window} s, bench threads {ctx.args.bench_threads}, "
                     f"payload 5 B (`hello`)"),
    ]


def target_lines(rows, burst):
    """Each target of the issue, met or missed by how much (measured values only)."""
    by = {r["config"]: r for r in rows}
    lines = []

    def check(name, value, limit, higher_is_better=False, unit="", why=""):
        if value is None:
            lines.append(f"- {name}: not measured in this run")
            return
        ok = value >= limit if higher_is_better else value <= limit
        if ok:
            verdict = "met"
        elif higher_is_better:
            verdict = f"MISSED by {limit - value:,.1f}{unit} ({value / limit:.0%} of target)"
        else:
            verdict = f"MISSED by {value - limit:,.1f}{unit} ({value / limit:.1f}× the limit)"
        op = "≥" if higher_is_better else "≤"
        why_text = f" — {why}" if why and not ok else ""
        lines.append(f"- {name}: {value:,.1f}{unit} (target {op} {limit:g}{unit}): {verdict}"
                     f"{why_text}")

    h2 = by.get("handoff-2")
    pool = by.get("python-pool")
    if h2 and pool and h2.get("ratio_to_python_pool") is not None:
        check("handoff-2 / python-pool connections/s", h2["ratio_to_python_pool"], TARGET_RATIO,
              True, "×",
              why=(f"handoff-2 is held back by the load generator, not by its master: bench at "
                   f"{fmt(h2['bench_cpu_pct'], 0)}% of a core ({fmt(h2['bench_us_per_conn'])} "
                   f"µs/conn) while the master used {fmt(h2['master_cpu_pct'], 0)}%; "
                   f"python-pool did {fmt(pool['conns_per_s'], 0)} conn/s with its master at "
                   f"{fmt(pool['master_cpu_pct'], 0)}% (on 2 cores the pool gets the core the "
                   f"bench leaves it)"))
    else:
        lines.append("- handoff-2 / python-pool: not measured in this run")
    if h2:
        lines.append(f"- handoff-2 errors: {h2['errors']} (target 0): "
                     f"{'met' if h2['errors'] == 0 else 'MISSED'}")
        check("handoff-2 steady master CPU per connection", h2["master_us_per_conn"],
              TARGET_MASTER_US, unit=" µs",
              why=(f"{fmt(h2['master_switches_per_conn'], 2)} context switches per connection: "
                   "sleeping and being woken is paid per wake-up"))
        check("handoff-2 steady worker CPU per connection", h2["worker_us_per_conn"],
              TARGET_WORKER_US, unit=" µs")
    if burst:
        check("burst master CPU per connection", burst["master_us_per_conn"], TARGET_BURST_US,
              unit=" µs",
              why=("per connection the master makes one accept4, one sendmsg and one close, and "
                   "its close is the socket's last reference (the worker closed its copy "
                   "first), so it pays the socket's teardown; profile and syscall counts in "
                   "docs/performance.md (scripts/syscalls.py)"))
    handoff = [r for r in rows if r["config"].startswith("handoff-") and r["kind"] == "steady"]
    if handoff:
        m = max(r["master_hwm_kib"] or 0 for r in handoff)
        w = max(r["worker_hwm_kib"] or 0 for r in handoff)
        check("handoff master peak RSS (VmHWM, all configurations)", m / 1024,
              TARGET_RSS_KIB / 1024, unit=" MiB")
        check("handoff worker peak RSS (VmHWM, largest worker)", w / 1024,
              TARGET_RSS_KIB / 1024, unit=" MiB")
    return lines


def write_summary(path, rows, burst, samples, ctx, notes):
    steady = [r for r in rows if r["kind"] == "steady"]
    out = ["# handoff vs the article's Python servers", ""]
    out.append(f"One new TCP connection per request (connect, send `hello`, read to EOF), "
               f"concurrency {ctx.args.concurrency}, {ctx.args.window} s measured after "
               f"{ctx.args.warmup} s of warm-up, every reply checked. CPU is per process over "
               f"exactly the measured window (`/proc/<pid>/task/*/schedstat`); "
               f"per-connection figures divide by correct replies. Workers' CPU is the sum over "
               f"all workers. RSS is the largest VmRSS sampled during the window (worker: the "
               f"largest worker). `bench` is handoff-bench itself (its CPU is mostly kernel TCP "
               f"work on loopback; `user` is its own code).")
    out.append("")
    out.append("![throughput and CPU per connection](chart.svg)")
    out.append("")
    out.append("| configuration | conn/s | × pool | p50 ms | p99 ms | errors | master CPU % | "
               "workers CPU % | master µs/conn | worker µs/conn | bench µs/conn (user) | "
               "RSS master / worker MiB | switches/conn master / workers | other CPU % |")
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in steady:
        out.append(
            f"| {r['config']} | {fmt(r['conns_per_s'], 0)} | {fmt(r['ratio_to_python_pool'], 1)} "
            f"| {r['p50_us'] / 1000:.2f} | {r['p99_us'] / 1000:.2f} | {r['errors']} "
            f"| {fmt(r['master_cpu_pct'], 0)} | {fmt(r['workers_cpu_pct'], 0)} "
            f"| {fmt(r['master_us_per_conn'])} | {fmt(r['worker_us_per_conn'])} "
            f"| {fmt(r['bench_us_per_conn'])} ({fmt(r['bench_user_us_per_conn'])}) "
            f"| {mib(r['master_rss_kib'])} / {mib(r['worker_rss_kib'])} "
            f"| {fmt(r['master_switches_per_conn'], 2)} / {fmt(r['worker_switches_per_conn'], 2)} "
            f"| {fmt(r['other_cpu_pct'], 0)} |")
    out.append("")
    out.append("`switches/conn`: context switches (voluntary + involuntary, all threads) per "
               "connection — about how often the process fell asleep and was woken. `other CPU "
               "%`: busy CPU of the whole machine (/proc/stat) minus master, workers and bench, "
               "in % of one core (ksoftirqd, this script, anything else running).")
    out.append("")
    for r in steady:
        if r["other_cpu_pct"] is not None and r["other_cpu_pct"] > 15:
            notes.append(f"{r['config']}: {r['other_cpu_pct']:.0f}% of a core was busy outside "
                         "the measured processes during its window; its numbers may be "
                         "disturbed — re-run to compare.")
    if burst:
        out.append("## Burst: the master's cost when it never sleeps")
        out.append("")
        out.append(f"{burst['config'][:-6]} with its master stopped (SIGSTOP) while "
                   f"{burst['concurrency']} clients connect and send into the backlog; then "
                   f"resumed (SIGCONT) and its CPU measured until all are answered. "
                   f"{len(samples)} repetition(s); the median is reported.")
        out.append("")
        out.append("| repetition | queued | answered | errors | master CPU ms | "
                   "master µs/conn | ceiling conn/s (1e6 / µs) |")
        out.append("|---:|---:|---:|---:|---:|---:|---:|")
        for i, s in enumerate(samples, 1):
            us = s["master_us_per_conn"]
            out.append(f"| {i} | {s['queued']} | {s['served']} | {s['errors']} "
                       f"| {s['master_cpu_s'] * 1000:.2f} | {us:.2f} "
                       f"| {fmt(1e6 / us if us else None, 0)} |")
        out.append("")
        out.append(f"Median: **{burst['master_us_per_conn']:.2f} µs** of master CPU per "
                   f"connection → one master core could hand off about "
                   f"**{burst['master_ceiling_conns_per_s']:,.0f} connections/s**.")
        out.append("")
    out.append("## Targets (issue 4)")
    out.append("")
    out.extend(target_lines(rows, burst))
    out.append("")
    if notes:
        out.append("## Notes")
        out.append("")
        out.extend(f"- {n}" for n in notes)
        out.append("")
    out.append("## Machine")
    out.append("")
    for k, v in machine_facts(ctx):
        out.append(f"- {k}: {v if k != 'command' else '`' + v + '`'}")
    out.append("")
    with open(path, "w") as f:
        f.write("\n".join(out))


def verify(out_dir, fields=None):
    """The smoke check: results.csv and summary.md exist and parse."""
    fields = fields or CSV_FIELDS
    csv_path = os.path.join(out_dir, "results.csv")
    md_path = os.path.join(out_dir, "summary.md")
    problems = []
    try:
        with open(csv_path, newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames != fields:
                problems.append(f"results.csv header is {reader.fieldnames}")
            rows = list(reader)
        if not rows:
            problems.append("results.csv has no rows")
        for row in rows:
            keys = ["connections", "conns_per_s", "errors", "p50_us", "p99_us"]
            if row.get("mode") != "baseline":  # the baseline has no master
                keys += ["master_cpu_s", "master_us_per_conn"]
            for key in keys:
                try:
                    float(row[key])
                except (TypeError, ValueError):
                    problems.append(f"results.csv: {row.get('config')}: {key}={row.get(key)!r}")
    except OSError as err:
        problems.append(f"cannot read results.csv: {err}")
    try:
        with open(md_path) as f:
            text = f.read()
        if "| configuration |" not in text or "## Machine" not in text:
            problems.append("summary.md lacks the table or the machine facts")
    except OSError as err:
        problems.append(f"cannot read summary.md: {err}")
    if not os.path.exists(os.path.join(out_dir, "chart.svg")):
        problems.append("chart.svg missing")
    return problems


# ---------------------------------------------------------------- main

class Context:
    pass


def main():
    import modes  # the issue-5 suite; it imports this module, so not at the top

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--suite", choices=["issue4", "modes"], default="issue4",
                   help="issue4: handoff-N vs the Python servers (make bench); modes: every "
                        "--mode/--policy/--batch × workers × simulated work against a plain "
                        "baseline server, a --batch burst and the slowed-worker p99 demo "
                        "(make bench-modes; full ≤ 10 min, --quick ≤ 60 s) [issue4]")
    p.add_argument("--configs", help="issue4 suite: comma-separated, from: "
                                     + ",".join(ALL_CONFIGS))
    p.add_argument("--quick", action="store_true", help="python-pool and handoff-2, short (≤ 60 s)")
    p.add_argument("--smoke", action="store_true",
                   help="a few seconds: handoff-2 only, tiny window, small burst; checks the "
                        "outputs parse (for make test)")
    p.add_argument("--out", help="output directory [default: results/<timestamp>]")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--window", type=float, help="measured seconds per configuration")
    p.add_argument("--warmup", type=float, help="warm-up seconds per configuration")
    p.add_argument("--bench-threads", type=int, default=1)
    p.add_argument("--burst", type=int, help="clients in the burst run (0: no burst)")
    p.add_argument("--burst-reps", type=int, help="burst repetitions (median reported)")
    p.add_argument("--burst-workers", type=int, default=2)
    p.add_argument("--master-args", default="",
                   help="extra handoff-master options, e.g. '--mode shared' (one string)")
    p.add_argument("--bin-dir", help="where handoff-{master,worker,bench} are "
                                     "[default: target/release; --smoke: target/debug]")
    p.add_argument("--no-build", action="store_true", help="do not run cargo build first")
    p.add_argument("--time-limit", type=float,
                   help="seconds the measurements may take in all [default 300; quick 60; "
                        "smoke 30]")
    p.add_argument("--pgid-file", help=argparse.SUPPRESS)
    modes.add_arguments(p)
    args = p.parse_args()

    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    defaults = {"full": (ALL_CONFIGS, 15.0, 2.0, 2000, 3, 300.0),
                "quick": (QUICK_CONFIGS, 5.0, 1.0, 1500, 3, 60.0),
                "smoke": (["handoff-2"], 0.5, 0.2, 200, 1, 30.0)}[mode]
    if args.suite == "modes":
        if args.configs:
            p.error("--configs is for the issue4 suite; use --designs, --worker-counts, --works")
        configs = []
    else:
        configs = args.configs.split(",") if args.configs else defaults[0]
    for c in configs:
        if c not in ALL_CONFIGS and not (c.startswith("handoff-") and c[8:].isdigit()):
            p.error(f"unknown configuration {c}")
    if args.suite == "issue4":
        args.window = args.window if args.window is not None else defaults[1]
        args.warmup = args.warmup if args.warmup is not None else defaults[2]
    burst_clients = args.burst if args.burst is not None else defaults[3]
    burst_reps = args.burst_reps if args.burst_reps is not None else defaults[4]
    time_limit = args.time_limit if args.time_limit is not None else defaults[5]

    ctx = Context()
    ctx.args = args
    argv = sys.argv[1:]
    if "--pgid-file" in argv:
        k = argv.index("--pgid-file")
        del argv[k:k + 2]
    ctx.command = " ".join(shlex.quote(a) for a in
                           [os.environ.get("HANDOFF_COMPARE_CMD", sys.argv[0])] + argv)
    started = time.monotonic()

    def progress(msg):
        print(f"[{time.monotonic() - started:6.1f}s] {msg}", flush=True)

    ctx.progress = progress

    if not args.no_build:
        progress("building release binaries (cargo build --release --workspace --bins)"
                 if mode != "smoke" else "building debug binaries (cargo build --workspace --bins)")
        build = ["cargo", "build", "--workspace", "--bins"] + ([] if mode == "smoke" else
                                                               ["--release"])
        subprocess.run(build, cwd=ROOT, check=True)
    ctx.bin_dir = args.bin_dir or os.path.join(ROOT, "target",
                                               "debug" if mode == "smoke" else "release")
    ctx.bench = os.path.join(ctx.bin_dir, "handoff-bench")
    for name in ("handoff-master", "handoff-worker", "handoff-bench"):
        if not os.access(os.path.join(ctx.bin_dir, name), os.X_OK):
            sys.exit(f"compare: {ctx.bin_dir}/{name} missing (run cargo build)")
    ctx.python = None
    if any(c.startswith("python-") for c in configs):
        progress("python venv (scripts/python/setup.sh)")
        ctx.python = subprocess.run([os.path.join(ROOT, "scripts", "python", "setup.sh")],
                                    check=True, capture_output=True, text=True).stdout.strip()

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    suffix = ("" if args.suite == "issue4" else "-modes") + ("" if mode == "full" else f"-{mode}")
    out_dir = args.out or os.path.join(ROOT, "results", stamp + suffix)
    os.makedirs(out_dir, exist_ok=True)
    ctx.tmp = tempfile.mkdtemp(prefix="handoff-compare-")
    ctx.reaper = Reaper(args.pgid_file)

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    if args.suite == "modes":
        problems, notes, rows = modes.run(ctx, mode, progress, out_dir, p)
        for problem in problems:
            print(f"compare: {problem}", file=sys.stderr)
        if problems or any("failed" in n for n in notes) or not rows:
            print(f"compare: server logs kept in {ctx.tmp}", file=sys.stderr)
            sys.exit(1)
        shutil.rmtree(ctx.tmp, ignore_errors=True)
        return

    measure_start = time.monotonic()
    rows, notes, burst, samples = [], [], None, []
    if mode == "smoke":
        notes.append("smoke run: tiny window, (by default) debug binaries — it checks that the "
                     "pipeline works; its numbers mean nothing")
    per_config = args.window + args.warmup + 6
    try:
        for i, config in enumerate(configs, 1):
            spent = time.monotonic() - measure_start
            if spent + per_config > time_limit:
                notes.append(f"{config} skipped: the {time_limit:.0f} s time limit")
                progress(f"[{i}/{len(configs)}] {config}: skipped (time limit)")
                continue
            progress(f"[{i}/{len(configs)}] {config}: start, warm up {args.warmup:g} s, "
                     f"measure {args.window:g} s at concurrency {args.concurrency}")
            try:
                row = steady_run(config, ctx)
            except (RuntimeError, OSError, ValueError, KeyError) as err:
                notes.append(f"{config} failed: {err}")
                progress(f"  FAILED: {err}")
                continue
            rows.append(row)
            progress(f"  {row['conns_per_s']:,.0f} conn/s, {row['errors']} errors, "
                     f"p99 {row['p99_us'] / 1000:.1f} ms, master {fmt(row['master_us_per_conn'])} "
                     f"µs/conn, workers {fmt(row['worker_us_per_conn'])} µs/conn, bench "
                     f"{fmt(row['bench_us_per_conn'])} µs/conn")
        if burst_clients > 0:
            spent = time.monotonic() - measure_start
            if spent + 8 * burst_reps > time_limit + 30:
                notes.append("burst skipped: time limit")
            else:
                progress(f"burst: handoff-{args.burst_workers}, {burst_clients} clients into "
                         f"the stopped master's backlog, {burst_reps} time(s)")
                try:
                    burst, samples = burst_run(ctx, args.burst_workers, burst_clients, burst_reps)
                    rows.append(burst)
                except (RuntimeError, OSError, ValueError, KeyError) as err:
                    notes.append(f"burst failed: {err}")
                    progress(f"  FAILED: {err}")
    except KeyboardInterrupt as err:
        notes.append(f"interrupted ({err})")
        progress(f"interrupted ({err}); stopping everything")
    finally:
        ctx.reaper.kill_all()

    pool = next((r for r in rows if r["config"] == "python-pool"), None)
    for r in rows:
        if pool and pool["conns_per_s"] and r["kind"] == "steady":
            r["ratio_to_python_pool"] = r["conns_per_s"] / pool["conns_per_s"]
    write_csv(os.path.join(out_dir, "results.csv"), rows)
    with open(os.path.join(out_dir, "chart.svg"), "w") as f:
        f.write(svgchart.render([r for r in rows if r["kind"] == "steady"], burst))
    write_summary(os.path.join(out_dir, "summary.md"), rows, burst, samples, ctx, notes)

    progress(f"done in {time.monotonic() - measure_start:.0f} s of measuring; wrote {out_dir}/"
             "{results.csv,summary.md,chart.svg}")
    if mode != "smoke":  # a smoke run's numbers mean nothing
        for line in target_lines(rows, burst):
            print(line)
    problems = verify(out_dir)
    for problem in problems:
        print(f"compare: {problem}", file=sys.stderr)
    failed = [n for n in notes if "failed" in n]
    if problems or failed or not rows:
        print(f"compare: server logs kept in {ctx.tmp}", file=sys.stderr)
        sys.exit(1)
    shutil.rmtree(ctx.tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
