"""What the comparison suites share (compare.py: issue 4 and the reference
master; modes.py: issue 5; cluster_bench.py: issue 12, HAProxy vs direct),
and the measuring scripts (syscalls.py, profile.py): starting servers on
loopback and stopping them, per-process and per-group CPU (schedstat),
memory and context switches, one load run sampled over exactly the bench's
window, bursts into a stopped master, the rows and files written, and the
comparison with the reference master (`handoff-bench refmaster`).

Dependencies run one way: compare.py, modes.py and cluster_bench.py import
this module (and compare.py imports the other two for `--suite modes` and
`--suite cluster`); this module imports none of them. Standard library only.
"""

import csv
import datetime
import json
import os
import platform
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPLY_PREFIX = b"server get message: "

# Issue 9's targets against the reference master (both suites check them).
TARGET_BURST_VS_REF = 1.05        # burst: median handoff master CPU/conn ≤ 1.05× the reference's
TARGET_BURST_RANGE_SLACK = 0.10   # ... and handoff's max/min ≤ the reference's max/min × 1.1
TARGET_STEADY_MASTER_VS_REF = 0.8  # steady, c=64, 2 workers: master CPU/conn ≤ 0.8× the reference's
TARGET_STEADY_RATE_VS_REF = 0.95   # ... and conn/s ≥ 0.95× the reference's (and 0 errors)

# A measurement during which more than this much of a core (% of one core)
# was busy outside the measured processes is taken again, up to twice (measure).
OTHER_CPU_LIMIT = 15.0

# The host's own speed. On this machine (a 2-vCPU VM) a fixed CPU-bound
# loop takes about 0.75 ms in some seconds and 1.2 ms in others, on either
# vCPU, with nothing else running in the guest: the host's load, which
# /proc/stat does not show (hardly any steal time). Every burst times such a loop
# on each CPU right before SIGCONT and right after the last reply, so a
# run can tell the host's speed changes from the servers' own spread.
HOST_PROBE_LOOPS = 20_000
# A burst whose every probe is within this factor of the run's fastest
# probe counts as measured with the host at its fast speed.
HOST_FAST_SLACK = 1.2


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


def per_thread(pid, name):
    """The text of /proc/<pid>/task/<tid>/<name> for every live thread of pid
    (a thread gone meanwhile is skipped); empty if pid is gone."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    texts = []
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/{name}") as f:
                texts.append(f.read())
        except OSError:
            pass
    return texts


def children(pid):
    """Direct children of pid, from every thread's children list."""
    return {int(x) for text in per_thread(pid, "children") for x in text.split()}


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
    times = [int(text.split()[0]) for text in per_thread(pid, "schedstat") if text.split()]
    return sum(times) if times else None


def ctx_switches(pid):
    """Voluntary + involuntary context switches of every live thread of pid."""
    return sum(switches_split(pid))


def switches_split(pid):
    """(voluntary, involuntary) context switches of every live thread of
    pid: the times it slept (waiting for an event) and the times it was
    preempted (something else was given its CPU)."""
    counts = [0, 0]
    for text in per_thread(pid, "status"):
        for line in text.splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                counts[0] += int(line.split()[1])
            elif line.startswith("nonvoluntary_ctxt_switches:"):
                counts[1] += int(line.split()[1])
    return tuple(counts)


def softirq_daemons():
    """Pids of the kernel's ksoftirqd threads: the loopback TCP work they
    take over under load belongs to the measured connections, not to a
    disturbance."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as f:
                    if f.read().startswith("ksoftirqd/"):
                        pids.append(int(entry))
            except OSError:
                pass
    return pids


def machine_busy_s(interrupts=True):
    """Non-idle CPU seconds of the whole machine so far (/proc/stat).
    `interrupts=False` leaves out the time in hard and soft interrupts:
    the kernel charges it to no process, and on loopback most of it is
    the measured connections' own TCP work."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    irq = 0 if interrupts else sum(fields[5:7])
    # guest time is already inside user/nice
    return (sum(fields[:8]) - idle - irq) / os.sysconf("SC_CLK_TCK")


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


def read_line(pipe, timeout):
    result = []
    t = threading.Thread(target=lambda: result.append(pipe.readline()), daemon=True)
    t.start()
    t.join(timeout)
    return result[0].strip() if result else ""


def control(run_dir, command, timeout=2.0):
    """One command on the master's control socket; its JSON answer, or None."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(os.path.join(run_dir, "control.sock"))
            s.sendall(command.encode() + b"\n")
            buf = b""
            while b"\n" not in buf and len(buf) < 4 << 20:
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        return json.loads(buf.split(b"\n", 1)[0])
    except (OSError, ValueError):
        return None


def wait_workers(run_dir, n, deadline):
    """Waits until the master counts n registered workers."""
    while time.monotonic() < deadline:
        info = control(run_dir, "info")
        if info and info.get("workers", 0) >= n:
            return True
        time.sleep(0.02)
    return False


# ---------------------------------------------------------------- servers

def ready_addr(proc, name, ctx):
    """The address of a server's `listening on ADDR` line (within 10 s)."""
    line = read_line(proc.stdout, 10)
    if not line.startswith("listening on "):
        raise RuntimeError(f"{name}: no ready line (got {line!r}); see {ctx.tmp}/{name}.log")
    return line.split()[-1]


def start_master(ctx, name, n, master_args, listen="127.0.0.1:0"):
    """A handoff master with n spawned workers on `listen` (a loopback
    address; port 0: the kernel picks); (proc, addr, run_dir)."""
    run_dir = os.path.join(ctx.tmp, f"run-{name}-{time.monotonic_ns()}")
    log = open(os.path.join(ctx.tmp, f"{name}.log"), "w")
    proc = ctx.reaper.spawn(
        [os.path.join(ctx.bin_dir, "handoff-master"), "--listen", listen,
         "--workers", str(n), "--run-dir", run_dir, "--backlog", "4096", *master_args,
         *shlex.split(ctx.args.master_args)],
        stdout=subprocess.PIPE, stderr=log, text=True, env={**os.environ, "RUST_LOG": "warn"})
    log.close()
    addr = ready_addr(proc, name, ctx)
    if n and not wait_workers(run_dir, n, time.monotonic() + 10):
        raise RuntimeError(f"{name}: {n} workers did not register within 10 s")
    return proc, addr, run_dir


def start_bench_server(ctx, name, argv):
    """`handoff-bench SUBCOMMAND ...` (serve, refmaster) on 127.0.0.1:0, its
    log in ctx.tmp; (proc, addr) once it printed its ready line."""
    log = open(os.path.join(ctx.tmp, f"{name}.log"), "w")
    proc = ctx.reaper.spawn([ctx.bench, *argv, "--listen", "127.0.0.1:0", "--backlog", "4096"],
                            stdout=subprocess.PIPE, stderr=log, text=True)
    log.close()
    return proc, ready_addr(proc, name, ctx)


def start_refmaster(ctx, name, n):
    """The reference master with n workers; (proc, addr, n). It prints its
    ready line once every worker is connected."""
    proc, addr = start_bench_server(ctx, name, ["refmaster", "--workers", str(n)])
    return proc, addr, n


def is_refmaster(row):
    return row["config"].startswith("refmaster-")


# ---------------------------------------------------------------- one run

class Sampler:
    """Samples CPU at the bench's window edges and memory during the window."""

    def __init__(self, master, window=None, extra_pids=()):
        self.master = master
        self.extra = set(extra_pids)
        self.window = window
        self.tty = sys.stdout.isatty()
        self.start_cpu = {}
        self.end_cpu = {}
        self.rss_max = {}
        self.hwm = {}
        self.stop = threading.Event()
        self.thread = None

    def pids(self):
        """The master, its descendants and the extra pids."""
        return {self.master} | descendants(self.master) | self.extra

    def snapshot(self):
        pids = self.pids()
        cpu = {pid: ns for pid in pids if (ns := cpu_ns(pid)) is not None}
        switches = {pid: ctx_switches(pid) for pid in cpu}
        return cpu, switches, machine_busy_s()

    def sample_memory(self):
        for pid in self.pids():
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


class GroupSampler:
    """CPU time (schedstat, ns) of groups of processes over exactly the
    bench's window, and the machine's busy CPU (/proc/stat) over the same
    window: `roles` maps a role ("haproxy", "master", "worker", ...) to a
    function returning the pids in it at that moment (a pid goes to the first
    role that names it; every thread of a pid is counted). `on_edge(i)` is
    called after each edge's snapshot (i = 0 start, 1 end), e.g. to read the
    servers' counters. Quacks like Sampler for run_bench."""

    def __init__(self, roles, on_edge=None):
        self.roles = roles
        self.on_edge = on_edge
        self.cpu = [None, None]
        self.switches = [None, None]
        self.busy = [None, None]
        self.threads = {}

    def snapshot(self):
        seen, cpu, switches = set(), {}, {}
        for role, pids in self.roles.items():
            cpu[role], switches[role] = {}, {}
            for pid in pids():
                if pid in seen:
                    continue
                seen.add(pid)
                ns = cpu_ns(pid)
                if ns is not None:
                    cpu[role][pid] = ns
                    switches[role][pid] = ctx_switches(pid)
        return cpu, switches, machine_busy_s()

    def _edge(self, i):
        self.cpu[i], self.switches[i], self.busy[i] = self.snapshot()
        if i == 0:
            self.threads = {role: sum(len(per_thread(pid, "stat")) for pid in pids)
                            for role, pids in self.cpu[0].items()}
        if self.on_edge:
            self.on_edge(i)

    def window_start(self):
        self._edge(0)

    def window_end(self):
        self._edge(1)

    def result(self):
        """{role: CPU seconds in the window (processes alive at its end)},
        plus "machine_busy_s", {role: context switches} as "switches" and
        {role: processes} as "processes"."""
        if self.cpu[0] is None or self.cpu[1] is None:
            raise RuntimeError("the bench printed no window marks")
        out = {}
        for role, end in self.cpu[1].items():
            start = self.cpu[0].get(role, {})
            out[role] = sum(ns - start.get(pid, 0) for pid, ns in end.items()) / 1e9
        out["switches"] = {
            role: sum(n - self.switches[0].get(role, {}).get(pid, 0) for pid, n in end.items())
            for role, end in self.switches[1].items()}
        out["machine_busy_s"] = self.busy[1] - self.busy[0]
        out["processes"] = {role: len(pids) for role, pids in self.cpu[1].items()}
        return out


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


def bottleneck(row, cores=None):
    """Who saturates in a measured row, in words: the load generator, the
    master (with how idle its workers were), the workers, or the machine
    as a whole; else that nothing was (the article's finding, "the master
    is smoking while the workers sit idle", is stated where it happens)."""
    cores = cores or os.cpu_count() or 1
    bench, master = row.get("bench_cpu_pct"), row.get("master_cpu_pct")
    workers, other = row.get("workers_cpu_pct"), row.get("other_cpu_pct")
    n = row.get("n_workers") or row.get("workers") or 1
    if bench is not None and bench >= 90:
        return f"saturated: the load generator ({bench:.0f} % of a core)"
    if master is not None and master >= 90:
        idle = max(0.0, 100.0 - (workers or 0.0) / n)
        return f"saturated: the master ({master:.0f} % of its core), workers {idle:.0f} % idle"
    total = sum(x or 0.0 for x in (bench, master, workers, other))
    if total >= 90 * cores:
        return f"saturated: the machine ({total:.0f} % of {cores} cores busy)"
    if workers is not None and workers / n >= 90:
        return f"saturated: the workers ({workers / n:.0f} % of a core each)"
    busiest = max(((bench or 0.0), "the load generator"), ((master or 0.0), "the master"),
                  ((workers or 0.0) / n, "workers, on average,"))
    return (f"not saturated: {total:.0f} % of {cores} cores busy, the busiest "
            f"{busiest[1]} at {busiest[0]:.0f} % of a core")


def verdict_section(rows):
    """The summaries' first section: who saturates, one line per
    configuration."""
    out = ["## Who is the bottleneck, configuration by configuration", "",
           "From the CPU of each process over the measured window (≥ 90 % of a core counts "
           "as saturated; the load generator is checked first, then the master, then the "
           "machine as a whole, then the workers):", ""]
    out.extend(f"- **{r['config']}**: {bottleneck(r)}" for r in rows if r.get("conns_per_s"))
    return out


def other_pct(cpu, bench, window):
    """CPU the machine spent outside the measured processes, % of one core."""
    busy = cpu.get("machine_busy_s")
    if busy is None or not window or cpu.get("workers_cpu_s") is None:
        return None
    ours = (cpu["master_cpu_s"] or 0.0) + cpu["workers_cpu_s"] + bench["cpu"]["total_s"]
    return max(busy - ours, 0.0) * 100 / window


def measure(run_once, name, notes, progress, attempts=3):
    """Runs a measurement; again (after a pause) while something outside the
    measured processes kept more than OTHER_CPU_LIMIT % of a core busy."""
    for attempt in range(1, attempts + 1):
        row = run_once()
        other = row.get("other_cpu_pct")
        if other is None or other <= OTHER_CPU_LIMIT:
            return row
        if attempt < attempts:
            notes.append(f"{name}: {other:.0f}% of a core was busy outside the measured "
                         f"processes; measured again (attempt {attempt + 1})")
            progress(f"  disturbed ({other:.0f}% of a core busy elsewhere): again in 5 s")
            time.sleep(5)
    return row


# ---------------------------------------------------------------- bursts

def host_probe():
    """ms of CPU time the fixed probe loop took on each CPU this process
    may run on (the lower of two tries each), in CPU order."""
    allowed = sorted(os.sched_getaffinity(0))
    times = []
    try:
        for cpu in allowed:
            os.sched_setaffinity(0, {cpu})
            best = None
            for _ in range(2):
                start, x = time.thread_time_ns(), 0
                for k in range(HOST_PROBE_LOOPS):
                    x += k * k
                ms = (time.thread_time_ns() - start) / 1e6
                best = ms if best is None else min(best, ms)
            times.append(best)
    finally:
        os.sched_setaffinity(0, allowed)
    return times


def time_wait_sockets():
    """TCP sockets in TIME_WAIT machine-wide (/proc/net/sockstat), or None:
    after `make bench`'s steady windows the table is full for a minute."""
    try:
        with open("/proc/net/sockstat") as f:
            for line in f:
                if line.startswith("TCP:"):
                    parts = line.split()
                    return int(parts[parts.index("tw") + 1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def burst_once(ctx, proc, addr, clients):
    """SIGSTOP the master, let `clients` connect and send into its backlog,
    SIGCONT it, and measure its CPU (schedstat) until all are answered."""
    port = int(addr.rsplit(":", 1)[1])
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        argv = [ctx.bench, "--target", addr, "--concurrency", str(clients),
                "--requests", str(clients), "--warmup", "0", "--duration", "30",
                "--timeout", "25", "--json"]
        bench = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 10
            queued = 0
            while time.monotonic() < deadline:
                queued = listen_queue(port) or 0
                if queued >= clients:
                    break
                time.sleep(0.02)
            time.sleep(0.05)  # let the last requests' bytes land
            probe_before = host_probe()
            time_wait = time_wait_sockets()
            worker_pids = sorted(descendants(proc.pid))
            workers = worker_pids + softirq_daemons()
            others0 = [cpu_ns(pid) or 0 for pid in workers + [bench.pid]]
            busy0 = machine_busy_s(interrupts=False)
            switches0 = switches_split(proc.pid)
            worker_switches0 = [switches_split(pid) for pid in worker_pids]
            before = cpu_ns(proc.pid)
            t0 = time.monotonic()
            os.kill(proc.pid, signal.SIGCONT)
            out, err = bench.communicate(timeout=40)
            busy1 = machine_busy_s(interrupts=False)
            worker_switches1 = [switches_split(pid) for pid in worker_pids]
            workers_s = sum((cpu_ns(pid) or 0) - at for pid, at in zip(workers, others0)) / 1e9
        finally:
            if bench.poll() is None:
                bench.kill()
                bench.wait()
        elapsed = time.monotonic() - t0
        after = cpu_ns(proc.pid)
        switches1 = switches_split(proc.pid)
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    probe_after = host_probe()
    if bench.returncode != 0:
        raise RuntimeError(f"burst bench failed: {err.strip()[-300:]}")
    result = json.loads(out.strip().splitlines()[-1])
    served = result["connections"]
    master_s = (after - before) / 1e9 if before is not None and after is not None else 0
    # What else kept the machine busy meanwhile (/proc/stat, 10 ms ticks:
    # coarse over a burst of a tenth of a second, but it shows a
    # disturbance). Interrupt time and ksoftirqd count as ours: on loopback
    # they are mostly the connections' own TCP work.
    bench_s = max(result["cpu"]["total_s"] - others0[-1] / 1e9, 0.0)
    other_s = max(busy1 - busy0 - master_s - workers_s - bench_s, 0.0)
    return {
        "queued": queued, "served": served, "errors": result["errors_total"],
        "master_cpu_s": master_s, "elapsed_s": elapsed,
        "other_cpu_s": other_s,
        "other_cpu_pct": other_s * 100 / elapsed if elapsed else None,
        "master_us_per_conn": master_s * 1e6 / served if served else 0.0,
        # How often the master slept and was preempted during the burst: a
        # burst that is all queued needs only a handful of either, so dozens
        # name where its extra µs went (woken for nothing, or pushed off its
        # CPU by the workers it wakes).
        "master_sleeps": switches1[0] - switches0[0],
        "master_preempted": switches1[1] - switches0[1],
        # The same of all its workers together: a worker that keeps up with
        # the master empties its channel and sleeps, and the master's next
        # hand-off wakes it.
        "workers_sleeps": sum(b[0] - a[0] for a, b in zip(worker_switches0, worker_switches1)),
        "workers_preempted": sum(b[1] - a[1] for a, b in zip(worker_switches0, worker_switches1)),
        # The host's speed on each CPU right before and right after.
        "host_probe_ms": probe_before + probe_after,
        "time_wait": time_wait,
        "bench": result,
    }


def burst_runs(ctx, servers, clients, reps):
    """Bursts into each of `servers`, [(label, start)] with start() returning
    (proc, addr, n_workers), all started at once and measured in turn,
    `reps` rounds; the order alternates between rounds so that a drift of
    the machine falls on all of them alike. A warm-up round comes first and
    is not counted: the first burst after the steady windows cost up to
    1.5× its run's median, and it always fell on the same server. Returns
    ({label: (row, samples)}, [failure notes]); the row is the median
    repetition's, config `<label>-burst`."""
    started, samples, failures = {}, {}, []
    try:
        for label, start in servers:
            try:
                proc, addr, n = start()
                started[label] = (proc, addr, n)
                if not probe(addr, time.monotonic() + 20):
                    raise RuntimeError(f"no correct reply on {addr}")
                samples[label] = []
            except (RuntimeError, OSError, ValueError, KeyError) as err:
                failures.append(f"burst {label} failed: {err}")
                ctx.progress(f"  {label} FAILED: {err}")

        def one_burst(label):
            """A burst into `label`'s server, or None (and the server
            dropped from the run) if it failed."""
            proc, addr, _ = started[label]
            try:
                return burst_once(ctx, proc, addr, clients)
            except (RuntimeError, OSError, ValueError, KeyError,
                    subprocess.TimeoutExpired) as err:
                failures.append(f"burst {label} failed: {err}")
                ctx.progress(f"  {label} FAILED: {err}")
                del samples[label]
                return None

        for label in list(samples):
            s = one_burst(label)
            if s:
                ctx.progress(f"  warm-up burst {label}: {s['master_us_per_conn']:.2f} µs/conn "
                             "(not counted)")
        for rep in range(reps):
            order = list(samples) if rep % 2 == 0 else list(reversed(samples))
            for label in order:
                if label not in samples:
                    continue
                s = one_burst(label)
                if s is None:
                    continue
                samples[label].append(s)
                ctx.progress(f"  burst {rep + 1}/{reps} {label}: {s['queued']} queued, "
                             f"{s['served']} answered, {s['errors']} errors, master "
                             f"{s['master_us_per_conn']:.2f} µs/conn, slept "
                             f"{s['master_sleeps']}, preempted {s['master_preempted']}")
        memory = {label: mem_kib(started[label][0].pid) for label in samples}
    finally:
        for proc, _, _ in started.values():
            ctx.reaper.stop(proc)
    probes = [ms for s in samples.values() for one in s for ms in one.get("host_probe_ms", ())]
    fastest = min(probes) if probes else None
    return ({label: (burst_row(label, started[label][2], s, clients, *memory[label], fastest), s)
             for label, s in samples.items() if s}, failures)


def burst_row(label, n_workers, samples, clients, rss, hwm, fastest=None):
    """The row of the median repetition."""
    best = statistics.median(s["master_us_per_conn"] for s in samples)
    mid = min(samples, key=lambda s: abs(s["master_us_per_conn"] - best))
    row = row_from(f"{label}-burst", "burst", n_workers, mid["bench"], {
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
    row["repetitions"] = len(samples)
    values = [s["master_us_per_conn"] for s in samples]
    # The spread, beside the median (not in results.csv's fixed fields).
    row["burst_min_us"], row["burst_max_us"] = min(values), max(values)
    # Over all the repetitions: one burst is too short for /proc/stat's
    # 10 ms ticks to say much on its own.
    window = sum(s["elapsed_s"] for s in samples if s.get("other_cpu_s") is not None)
    row["other_cpu_pct"] = (sum(s["other_cpu_s"] for s in samples if s.get("other_cpu_s")
                                is not None) * 100 / window if window else None)
    probes = [ms for s in samples for ms in s.get("host_probe_ms", ())]
    if probes and fastest:
        row["host_probe_min_ms"], row["host_probe_max_ms"] = min(probes), max(probes)
        fast = [s["master_us_per_conn"] for s in samples
                if s.get("host_probe_ms") and max(s["host_probe_ms"]) <= fastest * HOST_FAST_SLACK]
        row["fast_bursts"] = len(fast)
        if fast:
            row["fast_min_us"], row["fast_max_us"] = min(fast), max(fast)
    return row


def bursts_disturbed(bursts):
    """Whether a burst run ({label: (row, samples)}) was disturbed: for
    either server, more than OTHER_CPU_LIMIT % of a core was busy outside
    the measured processes over its bursts."""
    return any((row.get("other_cpu_pct") or 0) > OTHER_CPU_LIMIT for row, _ in bursts.values())


def burst_missed(bursts):
    """Whether handoff's median burst in `bursts` is above
    TARGET_BURST_VS_REF × the reference master's (False without both)."""
    rows = [row for row, _ in bursts.values()]
    ref = next((r for r in rows if is_refmaster(r)), None)
    mine = [r for r in rows if not is_refmaster(r)]
    if not ref or not mine or not ref["master_us_per_conn"]:
        return False
    return any(r["master_us_per_conn"] / ref["master_us_per_conn"] > TARGET_BURST_VS_REF
               for r in mine)


def disturbance(row):
    """`quiet` or `disturbed (…)`, for a burst row's target line."""
    other = row.get("other_cpu_pct")
    if other is None:
        return "disturbance not measured"
    state = "DISTURBED" if other > OTHER_CPU_LIMIT else "quiet"
    return (f"{state}: {other:.0f} % of a core busy elsewhere over its bursts (limit "
            f"{OTHER_CPU_LIMIT:g} %)")


def spread(row):
    """`min–max µs, max/min ×N` of a burst row, or '' without one."""
    low, high = row.get("burst_min_us"), row.get("burst_max_us")
    if not low or not high:
        return ""
    return f"range {low:.2f}–{high:.2f} µs, max/min {high / low:.2f}×"


def burst_table(bursts):
    """Markdown: every repetition of every burst ({label: (row, samples)}),
    then each one's median."""
    out = ["| server | repetition | queued | answered | errors | master CPU ms "
           "| master µs/conn | ceiling conn/s (1e6 / µs) | master slept | master preempted "
           "| workers slept | workers preempted | other CPU % "
           "| host probe ms, each CPU before → after | TIME_WAIT sockets |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    for label, (_, samples) in bursts.items():
        for i, s in enumerate(samples, 1):
            us = s["master_us_per_conn"]
            out.append(f"| {label} | {i} | {s['queued']} | {s['served']} | {s['errors']} "
                       f"| {s['master_cpu_s'] * 1000:.2f} | {us:.2f} "
                       f"| {fmt(1e6 / us if us else None, 0)} | {fmt(s.get('master_sleeps'), 0)} "
                       f"| {fmt(s.get('master_preempted'), 0)} | {fmt(s.get('workers_sleeps'), 0)} "
                       f"| {fmt(s.get('workers_preempted'), 0)} | {fmt(s.get('other_cpu_pct'), 0)} "
                       f"| {probe_cell(s.get('host_probe_ms'))} | {fmt(s.get('time_wait'), 0)} |")
    out.append("")
    for label, (row, samples) in bursts.items():
        out.append(f"- {label}: median of {len(samples)}, **{row['master_us_per_conn']:.2f} µs** "
                   f"of master CPU per connection ({spread(row)}) → one master core could "
                   f"hand off about **{row['master_ceiling_conns_per_s']:,.0f} connections/s**. "
                   f"{switch_spread(samples)}")
    out.append("")
    out.append("A burst that is all queued needs the master to sleep and be preempted a "
               "handful of times; dozens in one burst name where its extra µs went: woken "
               "for nothing (slept), or pushed off its CPU by the workers it wakes "
               "(preempted).")
    out.append("")
    out.append(f"`host probe`: the CPU time a fixed loop ({HOST_PROBE_LOOPS:,} iterations of "
               "Python) took on each CPU right before SIGCONT and right after the last reply. "
               "It moves only with the host: on a virtual machine the host's own load can slow "
               "every CPU of the guest without any steal time in /proc/stat, and a burst "
               "measured while the probe reads high costs more for that reason alone. The "
               "spread target line adds each server's spread over only the bursts with every "
               f"probe within {HOST_FAST_SLACK:g}× the run's fastest.")
    return out


def probe_cell(probe):
    """'0.74 0.76 → 0.75 0.80': a burst's host probes (before, after)."""
    if not probe:
        return "–"
    half = len(probe) // 2
    return (" ".join(f"{ms:.2f}" for ms in probe[:half]) + " → "
            + " ".join(f"{ms:.2f}" for ms in probe[half:]))


def switch_spread(samples):
    """How often the master slept and was preempted per burst: the median
    and the most, over `samples`."""
    parts = []
    for key, what in (("master_sleeps", "slept"), ("master_preempted", "was preempted")):
        values = [s[key] for s in samples if s.get(key) is not None]
        if values:
            parts.append(f"{what} {statistics.median(values):g} times per burst "
                         f"(at most {max(values)})")
    return f"The master {' and '.join(parts)}." if parts else ""


# ---------------------------------------------------------------- the reference master

def reference_for(rows, r):
    """The reference master's row to compare r with: the same kind (steady
    or burst) and work, the same number of workers if measured, else the
    nearest."""
    refs = [x for x in rows if is_refmaster(x) and x["kind"] == r["kind"]
            and x.get("work") == r.get("work")]
    return min(refs, key=lambda x: (abs(x["workers"] - r["workers"]), x["workers"]),
               default=None)


def ratio(a, b):
    return a / b if a is not None and b else None


def add_reference_ratios(rows):
    """Sets master_vs_refmaster (master CPU per connection) and, steady,
    conns_vs_refmaster (conn/s) on every row with a reference to compare."""
    for r in rows:
        if is_refmaster(r) or r["kind"] not in ("steady", "burst"):
            continue
        ref = reference_for(rows, r)
        if ref:
            r["refmaster"] = ref["config"]
            r["master_vs_refmaster"] = ratio(r["master_us_per_conn"], ref["master_us_per_conn"])
            if r["kind"] == "steady":
                r["conns_vs_refmaster"] = ratio(r["conns_per_s"], ref["conns_per_s"])


def ratio_verdict(value, limit, higher_is_better=False):
    ok = value >= limit if higher_is_better else value <= limit
    return "met" if ok else f"MISSED by {abs(value - limit):.2f}×"


def reference_section(rows, listed, steady, burst):
    """Markdown lines: the `listed` rows against the reference master, then
    issue 9's targets for `steady` (c=64, 2 workers) and `burst` (the rows
    to check, or None; ratios from add_reference_ratios)."""
    out = ["## Against the reference master", "",
           "`refmaster-N` is `handoff-bench refmaster --workers N`, the floor of this design: "
           "a master that blocks in `accept4`, hands each connection to the next of N worker "
           "processes in one `sendmsg` (SCM_RIGHTS) and closes it — three system calls per "
           "connection, nothing else; its workers answer like the article's handler. Measured "
           "in the same run, under the same load; `× ref` divides by the reference with the "
           "same kind of run, work and number of workers (else the nearest).", "",
           "| configuration | kind | master µs/conn | reference | reference µs/conn "
           "| master × ref | conn/s | reference conn/s | conn/s × ref | errors |",
           "|---|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    by = {r["config"]: r for r in rows}
    for r in listed:
        ref = by.get(r.get("refmaster"))
        if not ref:
            continue
        steady_row = r["kind"] == "steady"
        kind = "steady" if steady_row else f"burst (median of {r.get('repetitions', '?')})"
        out.append(
            f"| {r['config']} | {kind} | {fmt(r['master_us_per_conn'], 2)} | {ref['config']} "
            f"| {fmt(ref['master_us_per_conn'], 2)} | {fmt(r.get('master_vs_refmaster'), 2)} "
            f"| {fmt(r['conns_per_s'], 0) if steady_row else '–'} "
            f"| {fmt(ref['conns_per_s'], 0) if steady_row else '–'} "
            f"| {fmt(r.get('conns_vs_refmaster'), 2)} | {r['errors']} |")
    out += ["", "Targets:", ""]
    out += reference_target_lines(rows, steady, burst)
    return out


def reference_target_lines(rows, steady, burst):
    """Issue 9's targets against the reference master, met or missed by how much."""
    by = {r["config"]: r for r in rows}
    lines = []
    ref = by.get(steady.get("refmaster")) if steady else None
    if steady and ref and steady.get("master_vs_refmaster") is not None:
        where = f"steady, concurrency {steady['concurrency']}, {steady['workers']} workers"
        if steady["workers"] != ref["workers"]:
            where += f" (reference: {ref['workers']})"
        v = steady["master_vs_refmaster"]
        lines.append(
            f"- {where}: {steady['config']} master CPU per connection "
            f"{steady['master_us_per_conn']:.2f} µs vs {ref['config']} "
            f"{ref['master_us_per_conn']:.2f} µs = {v:.2f}× the reference (target ≤ "
            f"{TARGET_STEADY_MASTER_VS_REF:g}×): {ratio_verdict(v, TARGET_STEADY_MASTER_VS_REF)}"
            f"{steady_spread(steady, ref)}{steady_switches(steady, ref)}")
        v = steady["conns_vs_refmaster"]
        lines.append(
            f"- {where}: {steady['config']} {steady['conns_per_s']:,.0f} conn/s vs "
            f"{ref['config']} {ref['conns_per_s']:,.0f} = {v:.2f}× the reference (target ≥ "
            f"{TARGET_STEADY_RATE_VS_REF:g}×): {ratio_verdict(v, TARGET_STEADY_RATE_VS_REF, True)}")
        lines.append(f"- {where}: {steady['config']} errors {steady['errors']} (target 0): "
                     f"{'met' if steady['errors'] == 0 else 'MISSED'}")
    else:
        lines.append("- steady against the reference master: not measured in this run")
    ref = by.get(burst.get("refmaster")) if burst else None
    if burst and ref and burst.get("master_vs_refmaster") is not None:
        v = burst["master_vs_refmaster"]
        lines.append(
            f"- burst ({burst['concurrency']} connections queued, median of "
            f"{burst.get('repetitions', '?')} vs {ref.get('repetitions', '?')}): "
            f"{burst['config']} master CPU per connection {burst['master_us_per_conn']:.2f} µs "
            f"vs {ref['config']} {ref['master_us_per_conn']:.2f} µs = {v:.2f}× the reference "
            f"(target ≤ {TARGET_BURST_VS_REF:g}×): {ratio_verdict(v, TARGET_BURST_VS_REF)}"
            f" — spread: handoff {spread(burst) or '?'}; reference {spread(ref) or '?'}; "
            f"{disturbance(burst)}")
        lines.extend(range_target_line(burst, ref))
    else:
        lines.append("- burst against the reference master: not measured in this run")
    return lines


def steady_switches(steady, ref):
    """'; context switches per connection …': under a closed-loop load a
    master that has caught up sleeps, and on this VM a sleep and a
    wake-up across CPUs cost about as much CPU as a hand-off, so how often
    each master is switched out is part of what separates the two
    (docs/performance.md, "The steady master beside the reference's,
    now")."""
    h, r = steady.get("master_switches_per_conn"), ref.get("master_switches_per_conn")
    if h is None or r is None:
        return ""
    return (f"; context switches per connection (asleep or preempted): handoff {h:.2f}, "
            f"reference {r:.2f}")


def steady_spread(steady, ref):
    """' — median of N interleaved windows …' when the steady pair was
    measured more than once (compare.py --steady-pairs), else ''."""
    n = steady.get("steady_windows")
    if not n or n < 2 or not ref.get("steady_windows"):
        return ""
    return (f" — median of {n} vs {ref['steady_windows']} interleaved windows: handoff "
            f"{steady['steady_min_us']:.2f}–{steady['steady_max_us']:.2f} µs, reference "
            f"{ref['steady_min_us']:.2f}–{ref['steady_max_us']:.2f} µs")


def range_target_line(burst, ref):
    """The burst's spread target: handoff's max/min no wider than the
    reference's plus TARGET_BURST_RANGE_SLACK (as a list: empty without
    both ranges)."""
    if not all(r.get("burst_min_us") and r.get("burst_max_us") for r in (burst, ref)):
        return []
    mine = burst["burst_max_us"] / burst["burst_min_us"]
    theirs = ref["burst_max_us"] / ref["burst_min_us"]
    limit = theirs * (1 + TARGET_BURST_RANGE_SLACK)
    return [f"- burst spread: {burst['config']} max/min {mine:.2f}× vs {ref['config']} "
            f"{theirs:.2f}× (target ≤ the reference's + {TARGET_BURST_RANGE_SLACK:.0%} = "
            f"{limit:.2f}×): {ratio_verdict(mine, limit)}{host_speed(burst, ref)}"]


def host_speed(burst, ref):
    """'; host: …' — how far the host's own speed moved over both servers'
    bursts (the probe loop's range), and each server's spread over only the
    bursts measured with the host at its fast speed; '' without probes."""
    rows = (burst, ref)
    if not all(r.get("host_probe_min_ms") for r in rows):
        return ""
    low = min(r["host_probe_min_ms"] for r in rows)
    high = max(r["host_probe_max_ms"] for r in rows)
    text = (f"; host: the probe loop took {low:.2f}–{high:.2f} ms around these bursts "
            f"(max/min {high / low:.2f}×)")
    if all(r.get("fast_bursts", 0) >= 2 for r in rows):
        parts = [f"{r['config']} max/min {r['fast_max_us'] / r['fast_min_us']:.2f}× over "
                 f"{r['fast_bursts']} of {r['repetitions']}" for r in rows]
        text += (f"; with the host at its fast speed (every probe ≤ {HOST_FAST_SLACK:g}× the "
                 f"fastest): {', '.join(parts)}")
    else:
        text += "; too few bursts with the host at its fast speed to compare spreads there"
    return text


# ---------------------------------------------------------------- output

def fmt(value, digits=1):
    if value is None or value == "":
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def mib(kib):
    return "–" if not kib else f"{kib / 1024:.1f}"


def write_csv(path, rows, fields):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for row in rows:
            w.writerow({k: ("" if row.get(k) is None else
                            (f"{row[k]:.3f}" if isinstance(row[k], float) else row[k]))
                        for k in fields})


def notes_and_machine(out, notes, ctx, fact=lambda key, value: value, skip=()):
    """Appends the summaries' closing sections to `out`: "Notes" (if any)
    and "Machine", one line per `machine_facts` entry, each value passed
    through `fact(key, value)` first; keys in `skip` are left out."""
    if notes:
        out.append("## Notes")
        out.append("")
        out.extend(f"- {n}" for n in notes)
        out.append("")
    out.append("## Machine")
    out.append("")
    for k, v in machine_facts(ctx):
        if k in skip:
            continue
        v = fact(k, v)
        out.append(f"- {k}: {v if k != 'command' else '`' + v + '`'}")


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


def verify(out_dir, fields, chart=True):
    """The smoke check: results.csv and summary.md (and chart.svg, if
    `chart`) exist and parse."""
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
    if chart and not os.path.exists(os.path.join(out_dir, "chart.svg")):
        problems.append("chart.svg missing")
    return problems
