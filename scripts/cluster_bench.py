"""The cluster comparison (`compare.py --suite cluster`, issue 12): what the
L4 hop through HAProxy costs per connection, measured in the same run as
the same kind of handoff instance loaded directly.

Configurations, each loaded by handoff-bench at the same concurrency from
127.0.0.1, every process on this machine's cores:

- `direct`: one handoff instance (master + --direct-workers workers, 2) on
  127.0.0.2, no PROXY protocol, no agent: the bench connects to it.
- `haproxy-1`: HAProxy, run with the shipped deploy/haproxy/haproxy.cfg,
  in front of the same kind of instance on 127.0.0.2 with
  `--proxy-protocol --agent-check 127.0.0.2:0`. The shipped file names
  three servers; this suite writes a copy whose server block (between its
  `BEGIN/END servers` markers) holds one line of the same form, as
  scripts/cluster.sh does for HOSTS other than 3. Nothing else changes.
- `haproxy-3`: HAProxy with the shipped file itself in front of three
  instances on 127.0.0.2-4 with --host-workers (1) worker each.
- Variants of haproxy-1, only if asked for with --configs (they are not
  the shipped config; VARIANTS says what each changes):
  `haproxy-1-nolog`: `no log` instead of `log global` (what the shipped
  config's log line per connection costs); `haproxy-1-smartconnect`:
  `option tcp-smart-connect` in the backend (HAProxy sends its first bytes
  to the instance, the PROXY header and the request, with the handshake's
  last ACK, so the instance's accept returns with the bytes already there).

HAProxy's addresses come from the environment the shipped file reads:
HANDOFF_FRONTEND=fd@N (a listening socket on 127.0.0.1:0 this script binds
and passes, so no port is guessed), HANDOFF_HOSTi / HANDOFF_AGENTi (each
master's address and agent port, both picked by the kernel),
HANDOFF_CLUSTER_DIR (its admin socket). HAProxy logs one line per
connection to its stderr, which goes to a file (deleted after each run).

Every configuration is started afresh for each repetition and stopped
after it (HAProxy first, then each master with SIGINT); repetitions
interleave the configurations, the order reversed every other round. CPU
per process group over exactly the bench's window (schedstat): HAProxy,
the master(s), the workers, the bench (its own getrusage), and the whole
machine's busy time (/proc/stat), each divided by the correct replies.

Writes results.csv and summary.md. What it shares with the other suites is
in benchlib.py (this module imports neither compare.py nor modes.py).
"""

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import time

import benchlib as B
from benchlib import fmt

CONFIGS = ["direct", "haproxy-1", "haproxy-3"]
# Variants of haproxy-1 (a copy of the shipped config, changed): what each changes.
VARIANTS = {
    "nolog": "`no log` instead of `log global`",
    "smartconnect": "`option tcp-smart-connect` in the backend",
}
OPTIONAL_CONFIGS = [f"haproxy-1-{v}" for v in VARIANTS]
SHIPPED_CONFIG = os.path.join(B.ROOT, "deploy", "haproxy", "haproxy.cfg")

FIELDS = [
    "config", "rep", "hosts", "workers_per_host", "haproxy_threads", "concurrency", "window_s",
    "connections", "conns_per_s",
    "errors", "refused", "reset", "timeout", "short_reply", "wrong_reply", "other",
    "p50_us", "p90_us", "p99_us", "max_us",
    "haproxy_cpu_s", "master_cpu_s", "workers_cpu_s", "bench_cpu_s", "machine_busy_s",
    "haproxy_us_per_conn", "master_us_per_conn", "worker_us_per_conn", "server_us_per_conn",
    "bench_us_per_conn", "total_us_per_conn", "other_us_per_conn",
    "haproxy_cpu_pct", "master_cpu_pct", "workers_cpu_pct", "bench_cpu_pct", "machine_cpu_pct",
    "other_cpu_pct", "haproxy_switches_per_conn", "master_switches_per_conn",
    "worker_switches_per_conn", "host_shares",
    "vs_direct_total_us_per_conn", "vs_direct_server_us_per_conn", "vs_direct_p50_us",
    "vs_direct_p99_us", "vs_direct_conns",
    "low_concurrency", "low_conns_per_s", "low_errors", "low_p50_us", "low_p99_us",
    "vs_direct_low_p50_us", "vs_direct_low_p99_us",
]


def defaults(mode):
    """(repetitions, window, warm-up, low-concurrency window, time limit) per run mode."""
    return {"full": (3, 10.0, 2.0, 3.0, 300.0),
            "quick": (2, 3.0, 1.0, 1.0, 60.0),
            "smoke": (1, 0.5, 0.2, 0.3, 40.0)}[mode]


def add_arguments(p):
    g = p.add_argument_group("--suite cluster (through HAProxy vs straight to one "
                             "instance)")
    g.add_argument("--reps", type=int,
                   help="repetitions of every configuration, interleaved [full 3, quick 2, "
                        "smoke 1]")
    g.add_argument("--direct-workers", type=int, default=2,
                   help="workers of the instance of direct and haproxy-1 [2]")
    g.add_argument("--host-workers", type=int, default=1,
                   help="workers of each of haproxy-3's three instances [1]")
    g.add_argument("--low-concurrency", type=int, default=1,
                   help="after each loaded window, a short one at this concurrency: latency "
                        "without queueing (0: none) [1]")
    g.add_argument("--low-window", type=float,
                   help="seconds of that window [full 3, quick 1, smoke 0.3]")
    g.add_argument("--syscalls", action="store_true",
                   help="also count every process group's system calls per connection with "
                        "perf (syscall tracepoints, counting only) over each run, into "
                        "syscalls.md; perf slows the processes, so this run's CPU and rates "
                        "are not comparable with a run without it")
    g.add_argument("--haproxy", help="the haproxy executable [haproxy on PATH, else "
                                     "/usr/sbin/haproxy]")


# ---------------------------------------------------------------- HAProxy

def haproxy_bin(args):
    """--haproxy if given (None if not executable), else haproxy on PATH or in sbin."""
    candidates = [args.haproxy] if args.haproxy else [
        *[os.path.join(d, "haproxy") for d in os.environ.get("PATH", "").split(os.pathsep) if d],
        "/usr/sbin/haproxy", "/usr/local/sbin/haproxy"]
    return next((path for path in candidates if os.access(path, os.X_OK)), None)


def haproxy_version(path):
    try:
        out = subprocess.run([path, "-v"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.splitlines()[0].strip() if out else "unknown"


def server_line(i):
    """Server i's line, in the shipped file's form (as scripts/cluster.sh writes it)."""
    return (f'    server host{i} "${{HANDOFF_HOST{i}-127.0.0.{i + 1}:6001}}" '
            f'agent-port "${{HANDOFF_AGENT{i}-6002}}" port "${{HANDOFF_AGENT{i}-6002}}"')


def haproxy_config(hosts, variant, path):
    """The shipped config, with `hosts` server lines (3 and no variant: the
    shipped file itself), changed as VARIANTS[variant] says. Returns the
    path of the file to run."""
    if hosts == 3 and not variant:
        return SHIPPED_CONFIG
    with open(SHIPPED_CONFIG) as f:
        lines = f.read().splitlines()
    marks = [i for i, line in enumerate(lines)
             if line.strip().startswith(("# BEGIN servers", "# END servers"))]
    if len(marks) != 2:
        raise RuntimeError(f"{SHIPPED_CONFIG}: no BEGIN/END servers markers")
    begin, end = marks
    out = lines[:begin + 1] + [server_line(i) for i in range(1, hosts + 1)] + lines[end:]
    if variant:
        old, new = {"nolog": ("log global", "no log"),
                    "smartconnect": ("balance leastconn",
                                     "balance leastconn\n    option tcp-smart-connect")}[variant]
        if sum(line.strip() == old for line in out) != 1:
            raise RuntimeError(f"{SHIPPED_CONFIG}: no single `{old}` line to change")
        out = [f"    {new}" if line.strip() == old else line for line in out]
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")
    return path


def admin(sock, command, timeout=2.0):
    """One command on HAProxy's runtime API; its answer, or "" if it does not answer."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(sock)
            s.sendall(command.encode() + b"\n")
            chunks = []
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")
    except OSError:
        return ""


def servers(sock):
    """{server: {column: value}} of the `handoff` backend, from `show stat`."""
    lines = admin(sock, "show stat").splitlines()
    if not lines or not lines[0].startswith("# "):
        return {}
    cols = lines[0][2:].split(",")
    out = {}
    for line in lines[1:]:
        row = dict(zip(cols, line.split(",")))
        if row.get("pxname") == "handoff" and row.get("svname", "").startswith("host"):
            out[row["svname"]] = row
    return out


def start_haproxy(ctx, name, cfg, hosts):
    """HAProxy on an inherited listener on 127.0.0.1:0 in front of `hosts`
    [(addr, agent_port)]; (proc, frontend addr, admin socket) once every
    server is UP with its health check and agent check passed."""
    d = os.path.join(ctx.tmp, f"hap-{name}")
    os.makedirs(d, exist_ok=True)
    sock = os.path.join(d, "haproxy.sock")
    listener = socket.socket()
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4096)
        frontend = f"127.0.0.1:{listener.getsockname()[1]}"
        env = {**os.environ, "HANDOFF_FRONTEND": f"fd@{listener.fileno()}",
               "HANDOFF_CLUSTER_DIR": d}
        for i, (addr, agent_port) in enumerate(hosts, 1):
            env[f"HANDOFF_HOST{i}"] = addr
            env[f"HANDOFF_AGENT{i}"] = str(agent_port)
        check = subprocess.run([ctx.haproxy, "-c", "-f", cfg], env=env, capture_output=True,
                               text=True, timeout=10, pass_fds=(listener.fileno(),))
        if check.returncode != 0:
            raise RuntimeError(f"{name}: haproxy -c -f {cfg}: {check.stdout[-300:]}"
                               f"{check.stderr[-300:]}")
        with open(os.path.join(ctx.tmp, f"{name}.haproxy.log"), "w") as log:
            proc = ctx.reaper.spawn([ctx.haproxy, "-f", cfg, "-db"], env=env,
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    pass_fds=(listener.fileno(),))
    finally:
        listener.close()
    deadline = time.monotonic() + 10
    state = {}
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name}: haproxy exited ({proc.returncode}); see "
                               f"{ctx.tmp}/{name}.haproxy.log")
        state = servers(sock)
        if len(state) == len(hosts) and all(
                s.get("status") == "UP" and s.get("check_status", "").startswith("L4OK")
                and s.get("agent_status", "").startswith("L7OK") for s in state.values()):
            return proc, frontend, sock
        time.sleep(0.05)
    raise RuntimeError(f"{name}: servers not UP with checks passed within 10 s: "
                       + "; ".join(f"{k} {v.get('status')} check {v.get('check_status')} agent "
                                   f"{v.get('agent_status')}" for k, v in state.items()))


# ---------------------------------------------------------------- system calls

# The system calls counted one by one (those HAProxy, a master or a worker
# make per connection); "all" counts every system call.
SYSCALLS = ["accept4", "connect", "socket", "close", "shutdown", "sendmsg", "recvmsg",
            "recvfrom", "sendto", "read", "write", "writev", "readv", "splice", "epoll_wait",
            "epoll_ctl", "setsockopt", "getsockopt", "getsockname", "getpeername", "fcntl",
            "ioctl", "getpid", "clock_gettime", "sched_yield", "futex", "poll", "mprotect"]
PERF_EVENTS = (["raw_syscalls:sys_enter", "context-switches"]
               + [f"syscalls:sys_enter_{name}" for name in SYSCALLS])


def _more_fds():
    """perf opens one fd per event and thread: lift its soft limit to the hard one."""
    import resource
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class PerfCount:
    """`perf stat` counting system calls (PERF_EVENTS) and context switches
    on some pids (all their threads) until stopped."""

    def __init__(self, pids, path):
        self.path = path
        self.proc = subprocess.Popen(
            ["perf", "stat", "-x", ",", "-e", ",".join(PERF_EVENTS), "-p",
             ",".join(str(p) for p in sorted(pids)), "-o", path],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            preexec_fn=_more_fds)

    def stop(self):
        """{syscall: count, "all": every system call, "context-switches": n}."""
        try:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        counts = {}
        with open(self.path) as f:
            for line in f:
                parts = line.strip().split(",")
                if len(parts) > 2 and parts[0].replace(".", "").isdigit():
                    name = parts[2].replace("syscalls:sys_enter_", "")
                    counts["all" if name == "raw_syscalls:sys_enter" else name] = float(parts[0])
        if not counts:
            raise RuntimeError(f"perf counted nothing (see {self.path})")
        return counts


def syscalls_table(rows):
    """Markdown: calls per connection of each process group, one column per
    configuration and group."""
    cols = [(r["config"], role, per) for r in rows for role, per in r["syscalls"].items()]
    keys = sorted({k for _, _, per in cols for k, v in per.items()
                   if v >= 0.005 and k not in ("all", "context-switches")},
                  key=lambda k: -max(per.get(k, 0) for _, _, per in cols))
    out = ["| calls per connection | " + " | ".join(f"{c} {role}" for c, role, _ in cols) + " |",
           "|---|" + "---:|" * len(cols)]
    for k in keys + ["all", "context-switches"]:
        label = f"**{k}**" if k == "all" else k
        out.append(f"| {label} | " + " | ".join(f"{per.get(k, 0):.2f}" for _, _, per in cols)
                   + " |")
    return out


def write_syscalls(path, rows, ctx):
    rows = [r for r in rows if r.get("syscalls")]
    if not rows:
        return
    out = ["# System calls per connection: direct vs through HAProxy", "",
           "Counted with perf's syscall tracepoints (`perf stat -e "
           "raw_syscalls:sys_enter,context-switches,syscalls:sys_enter_NAME,... -p PIDS`, "
           "counting only; `all` is every system call) on each process "
           "group over the whole load of each run (warm-up included), divided by the "
           "connections its master(s) accepted meanwhile (`handoff-ctl info`, `accepted`). "
           "HAProxy: all its threads; workers: all workers together. perf slows what it "
           "counts: take the CPU figures from a run without `--syscalls`.", ""]
    for rep in sorted({r["rep"] for r in rows}):
        group = [r for r in rows if r["rep"] == rep]
        if len(rows) != len(group):
            out += [f"## Repetition {rep}", ""]
        out += ["Connections counted: " + ", ".join(f"{r['config']} {r['syscall_conns']:,}"
                                                    for r in group), ""]
        out += syscalls_table(group) + [""]
    out += [f"Command: `{ctx.command}`", ""]
    with open(path, "w") as f:
        f.write("\n".join(out))


# ---------------------------------------------------------------- one run

class Instance:
    """One handoff instance (a "host"): its master, address, run dir, agent port."""

    def __init__(self, proc, addr, run_dir, agent_port):
        self.proc, self.addr, self.run_dir, self.agent_port = proc, addr, run_dir, agent_port


def spec(config, args):
    """(hosts, workers per host, behind HAProxy, variant of the config or "")."""
    if config == "direct":
        return 1, args.direct_workers, False, ""
    if config == "haproxy-1" or config in OPTIONAL_CONFIGS:
        return 1, args.direct_workers, True, config[len("haproxy-1-"):]
    if config == "haproxy-3":
        return 3, args.host_workers, True, ""
    raise ValueError(f"unknown configuration {config}")


def run_once(ctx, config, rep):
    args = ctx.args
    n_hosts, workers, proxied, variant = spec(config, args)
    name = f"{config}-r{rep}"
    instances, hap = [], None
    try:
        for i in range(n_hosts):
            ip = f"127.0.0.{i + 2}"
            extra = ["--proxy-protocol", "--agent-check", f"{ip}:0"] if proxied else []
            proc, addr, run_dir = B.start_master(ctx, f"{name}-host{i + 1}", workers, extra,
                                                 listen=f"{ip}:0")
            agent_port = None
            if proxied:
                info = B.control(run_dir, "info") or {}
                agent = info.get("agent_check")
                if not agent:
                    raise RuntimeError(f"{name}: host{i + 1}'s info has no agent_check")
                agent_port = int(str(agent).rsplit(":", 1)[1])
            instances.append(Instance(proc, addr, run_dir, agent_port))
        if proxied:
            cfg = haproxy_config(n_hosts, variant, os.path.join(ctx.tmp, f"{name}.cfg"))
            hap, target, _ = start_haproxy(ctx, name, cfg,
                                               [(x.addr, x.agent_port) for x in instances])
        else:
            target = instances[0].addr
        if not B.probe(target, time.monotonic() + 20):
            raise RuntimeError(f"{name}: no correct reply on {target}; logs in {ctx.tmp}")

        accepted = [[None] * n_hosts, [None] * n_hosts]

        def on_edge(edge):
            for k, x in enumerate(instances):
                info = B.control(x.run_dir, "info")
                accepted[edge][k] = info.get("accepted") if info else None

        masters = {x.proc.pid for x in instances}
        roles = {
            "haproxy": lambda: {hap.pid} if hap else set(),
            "master": lambda: masters,
            "worker": lambda: set().union(*(B.descendants(pid) for pid in masters)),
        }
        sampler = B.GroupSampler(roles, on_edge)
        counters, counted = {}, None
        if args.syscalls:
            counted = [sum_accepted(instances)]
            counters = {role: PerfCount(pids(), os.path.join(ctx.tmp, f"{name}-{role}.perf"))
                        for role, pids in roles.items() if pids()}
            time.sleep(1.0)  # perf attaches
        try:
            bench = B.run_bench(ctx.bench, target, args, sampler)
        finally:
            if counters:
                time.sleep(0.2)
                perf_counts = {role: c.stop() for role, c in counters.items()}
                counted.append(sum_accepted(instances))
        for p in [x.proc for x in instances] + ([hap] if hap else []):
            if p.poll() is not None:
                raise RuntimeError(f"{name}: a server exited during the run ({p.returncode})")
        cpu = sampler.result()
        low = None
        if args.low_concurrency > 0:
            low = B.run_bench(ctx.bench, target,
                              argparse.Namespace(**{**vars(args),
                                                    "concurrency": args.low_concurrency}),
                              B.GroupSampler({}), window=args.low_window,
                              warmup=min(args.warmup, 0.5))
        shares = None
        if all(a is not None for edge in accepted for a in edge):
            counts = [b - a for a, b in zip(*accepted)]
            total = sum(counts)
            if total:
                shares = "/".join(f"{c * 100 / total:.0f}" for c in counts)
        row = make_row(config, rep, n_hosts, workers, bench, cpu,
                       sampler.threads.get("haproxy", 0), shares)
        if counters and None not in counted and counted[1] > counted[0]:
            n = counted[1] - counted[0]
            row["syscall_conns"] = n
            row["syscalls"] = {role: {k: v / n for k, v in c.items()}
                               for role, c in perf_counts.items()}
        if low:
            row.update(low_concurrency=low["concurrency"], low_conns_per_s=low["conns_per_s"],
                       low_errors=low["errors_total"], low_p50_us=low["latency_us"]["p50"],
                       low_p99_us=low["latency_us"]["p99"])
        return row
    finally:
        if hap:
            ctx.reaper.stop(hap, grace=3.0)
        for x in instances:
            # SIGINT: stop at once (SIGTERM would first tell the agent to drain).
            ctx.reaper.stop(x.proc, grace=5.0, sig=signal.SIGINT)
        if hap:
            try:
                os.unlink(os.path.join(ctx.tmp, f"{name}.haproxy.log"))
            except OSError:
                pass


def sum_accepted(instances):
    """Connections the instances' masters have accepted so far, or None."""
    total = 0
    for x in instances:
        info = B.control(x.run_dir, "info")
        if not info or info.get("accepted") is None:
            return None
        total += info["accepted"]
    return total


def make_row(config, rep, n_hosts, workers, bench, cpu, hap_threads, shares):
    conns = bench["connections"]
    window = bench["window_s"]
    e = bench["errors"]
    bench_s = bench["cpu"]["total_s"]
    hap_s = cpu.get("haproxy", 0.0)
    master_s, workers_s = cpu.get("master", 0.0), cpu.get("worker", 0.0)
    busy = cpu["machine_busy_s"]
    other_s = max(busy - hap_s - master_s - workers_s - bench_s, 0.0)

    def per_conn(seconds):
        return seconds * 1e6 / conns if conns else None

    def pct(seconds):
        return seconds * 100 / window if window else None

    return {
        "config": config, "rep": rep, "hosts": n_hosts, "workers_per_host": workers,
        "haproxy_threads": hap_threads or None, "concurrency": bench["concurrency"],
        "window_s": window, "connections": conns, "conns_per_s": bench["conns_per_s"],
        "errors": bench["errors_total"],
        **{k: e[k] for k in ("refused", "reset", "timeout", "short_reply", "wrong_reply",
                             "other")},
        "p50_us": bench["latency_us"]["p50"], "p90_us": bench["latency_us"]["p90"],
        "p99_us": bench["latency_us"]["p99"], "max_us": bench["latency_us"]["max"],
        "haproxy_cpu_s": hap_s if hap_threads else None, "master_cpu_s": master_s,
        "workers_cpu_s": workers_s, "bench_cpu_s": bench_s, "machine_busy_s": busy,
        "haproxy_us_per_conn": per_conn(hap_s) if hap_threads else None,
        "master_us_per_conn": per_conn(master_s), "worker_us_per_conn": per_conn(workers_s),
        "server_us_per_conn": per_conn(master_s + workers_s),
        "bench_us_per_conn": per_conn(bench_s), "total_us_per_conn": per_conn(busy),
        "other_us_per_conn": per_conn(other_s),
        "haproxy_cpu_pct": pct(hap_s) if hap_threads else None,
        "master_cpu_pct": pct(master_s), "workers_cpu_pct": pct(workers_s),
        "bench_cpu_pct": pct(bench_s), "machine_cpu_pct": pct(busy),
        "other_cpu_pct": pct(other_s),
        "haproxy_switches_per_conn": (cpu["switches"].get("haproxy", 0) / conns
                                      if hap_threads and conns else None),
        "master_switches_per_conn": cpu["switches"].get("master", 0) / conns if conns else None,
        "worker_switches_per_conn": cpu["switches"].get("worker", 0) / conns if conns else None,
        "host_shares": shares,
    }


def add_vs_direct(rows):
    """On every proxied row, its differences from the direct row of the same repetition."""
    direct = {r["rep"]: r for r in rows if r["config"] == "direct"}
    for r in rows:
        d = direct.get(r["rep"])
        if r["config"] == "direct" or not d:
            continue
        for field, key in (("vs_direct_total_us_per_conn", "total_us_per_conn"),
                           ("vs_direct_server_us_per_conn", "server_us_per_conn"),
                           ("vs_direct_p50_us", "p50_us"), ("vs_direct_p99_us", "p99_us"),
                           ("vs_direct_low_p50_us", "low_p50_us"),
                           ("vs_direct_low_p99_us", "low_p99_us")):
            if r.get(key) is not None and d.get(key) is not None:
                r[field] = r[key] - d[key]
        if d["conns_per_s"]:
            r["vs_direct_conns"] = r["conns_per_s"] / d["conns_per_s"]


# ---------------------------------------------------------------- summary

def median(rows, key):
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(values) if values else None


def spread(rows, key, digits=1, scale=1.0):
    """`median (min–max)` of a field over repetitions."""
    values = [r[key] * scale for r in rows if r.get(key) is not None]
    if not values:
        return "–"
    m = statistics.median(values)
    if len(values) == 1:
        return fmt(m, digits)
    return f"{fmt(m, digits)} ({fmt(min(values), digits)}–{fmt(max(values), digits)})"


def describe(config, args):
    n, w, proxied, variant = spec(config, args)
    if not proxied:
        return (f"one handoff instance on 127.0.0.2: master + {w} workers (dispatch, rr), no "
                "PROXY protocol, no agent; the bench connects to it")
    def plural(k, word):
        return f"{k} {word}" + ("" if k == 1 else "s")

    cfg = ("the shipped deploy/haproxy/haproxy.cfg" if n == 3 and not variant else
           f"a copy of the shipped config with {plural(n, 'server line')} in its BEGIN/END "
           "servers block" + (f" and {VARIANTS[variant]}" if variant else ""))
    where = ("one instance on 127.0.0.2: master" if n == 1 else
             f"{n} instances on 127.0.0.2–{n + 1}, each a master")
    return (f"HAProxy ({cfg}) → {where} + {plural(w, 'worker')}, with "
            "`--proxy-protocol --agent-check IP:0`")


def write_summary(path, rows, ctx, notes, configs, reps):
    args = ctx.args
    by = {c: [r for r in rows if r["config"] == c] for c in configs}
    out = ["# Through HAProxy vs straight to one instance", ""]
    out.append(f"One new TCP connection per request (connect, send `hello`, read to EOF), "
               f"concurrency {args.concurrency}, {args.window:g} s measured after "
               f"{args.warmup:g} s of warm-up, every reply checked; {reps} "
               f"repetition{'s' if reps > 1 else ''} of every configuration, interleaved (the "
               "order reversed every other round), each started afresh. CPU per process group "
               "over exactly the measured window (`/proc/<pid>/task/*/schedstat`; the bench: "
               "its own getrusage; `machine`: busy time of all cores from /proc/stat), divided "
               "by correct replies. On loopback the kernel's TCP work lands in whichever "
               "process sends or receives, so each process's figure includes its sockets' "
               "share of the TCP stack (HAProxy: two sockets per connection).")
    out.append("")
    out.append("Configurations:")
    out.append("")
    for c in configs:
        out.append(f"- **{c}**: {describe(c, args)}.")
    if "haproxy-3" in configs:
        hw = args.host_workers
        out.append(f"- haproxy-3 has {hw} worker{'s' if hw > 1 else ''} per instance so "
                   f"that the three instances run {3 * hw} workers, near the "
                   f"{args.direct_workers} of direct/haproxy-1 — but three masters instead of "
                   "one, and all of it on the same cores: it shows the spread over hosts, not "
                   "more capacity.")
    out.append("")
    out.append("## Medians over the repetitions")
    out.append("")
    low = args.low_concurrency
    out.append("| configuration | conn/s | errors | p50 ms | p99 ms | HAProxy µs/conn "
               "| master(s) µs/conn | workers µs/conn | bench µs/conn | machine µs/conn "
               f"| other µs/conn | machine CPU % | host shares % | c={low}: conn/s "
               f"| c={low}: p50 / p99 ms |")
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|")
    for c in configs:
        g = by[c]
        if not g:
            out.append(f"| {c} | not measured |||||||||||| |")
            continue
        out.append(
            f"| {c} | {fmt(median(g, 'conns_per_s'), 0)} | {sum(r['errors'] for r in g)} "
            f"| {fmt(ms(median(g, 'p50_us')), 3)} | {fmt(ms(median(g, 'p99_us')), 2)} "
            f"| {fmt(median(g, 'haproxy_us_per_conn'), 2)} "
            f"| {fmt(median(g, 'master_us_per_conn'), 2)} "
            f"| {fmt(median(g, 'worker_us_per_conn'), 2)} "
            f"| {fmt(median(g, 'bench_us_per_conn'), 2)} "
            f"| {fmt(median(g, 'total_us_per_conn'), 2)} "
            f"| {fmt(median(g, 'other_us_per_conn'), 2)} "
            f"| {fmt(median(g, 'machine_cpu_pct'), 0)} "
            f"| {' '.join(r['host_shares'] or '–' for r in g) if g[0]['hosts'] > 1 else '–'} "
            f"| {fmt(median(g, 'low_conns_per_s'), 0)} "
            f"| {fmt(ms(median(g, 'low_p50_us')), 3)} / {fmt(ms(median(g, 'low_p99_us')), 3)} |")
    out.append("")
    out.append("`errors`: all repetitions together. `machine`: all busy CPU of the machine in "
               "the window per connection (the load generator included); `other`: machine "
               "minus the measured processes (softirq work outside them, this script, anything "
               "else). `host shares`: each instance's part of the connections its master "
               "accepted in the window, per repetition. `c=N`: a second, short window at "
               f"concurrency N ({args.low_window:g} s, same processes, right after the loaded "
               "one): the latency of one connection without queueing (at concurrency "
               f"{args.concurrency} on these 2 busy cores, p50 is mostly queueing: about "
               "concurrency / conn/s, Little's law).")
    out.append("")
    out.extend(hop_lines(by, args))
    out.append("## Every run")
    out.append("")
    out.append("| configuration | rep | conn/s | errors | p50 ms | p99 ms | HAProxy µs/conn "
               "| master(s) µs/conn | workers µs/conn | bench µs/conn | machine µs/conn "
               "| switches/conn HAProxy / master(s) / workers | other CPU % | HAProxy threads "
               f"| c={low}: p50 ms |")
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in sorted(rows, key=lambda r: (r["rep"], configs.index(r["config"]))):
        out.append(
            f"| {r['config']} | {r['rep']} | {fmt(r['conns_per_s'], 0)} | {r['errors']} "
            f"| {fmt(ms(r['p50_us']), 3)} | {fmt(ms(r['p99_us']), 2)} "
            f"| {fmt(r['haproxy_us_per_conn'], 2)} | {fmt(r['master_us_per_conn'], 2)} "
            f"| {fmt(r['worker_us_per_conn'], 2)} | {fmt(r['bench_us_per_conn'], 2)} "
            f"| {fmt(r['total_us_per_conn'], 2)} "
            f"| {fmt(r['haproxy_switches_per_conn'], 2)} / {fmt(r['master_switches_per_conn'], 2)}"
            f" / {fmt(r['worker_switches_per_conn'], 2)} | {fmt(r['other_cpu_pct'], 0)} "
            f"| {fmt(r['haproxy_threads'])} | {fmt(ms(r.get('low_p50_us')), 3)} |")
    out.append("")
    out.append("`switches/conn`: context switches (voluntary + involuntary, all threads) per "
               "connection — about how often each process fell asleep and was woken.")
    out.append("")
    for r in rows:
        if r["other_cpu_pct"] is not None and r["other_cpu_pct"] > B.OTHER_CPU_LIMIT:
            notes.append(f"{r['config']} rep {r['rep']}: {r['other_cpu_pct']:.0f}% of a core "
                         "was busy outside the measured processes during its window; its "
                         "numbers may be disturbed.")
    def fact(k, v):
        if k == "handoff-master options":
            return ("`--backlog 4096` " + (f"`{args.master_args}` " if args.master_args else "")
                    + "plus, behind HAProxy, `--proxy-protocol --agent-check IP:0`")
        if k == "settings":
            return (f"configurations {','.join(configs)}; {reps} repetition(s); concurrency "
                    f"{args.concurrency}, warm-up {args.warmup} s, window {args.window} s, "
                    f"bench threads {args.bench_threads}, payload 5 B (`hello`)")
        return v
    B.notes_and_machine(out, notes, ctx, fact, skip=("python", "loguru"))
    threads = sorted({r["haproxy_threads"] for r in rows if r.get("haproxy_threads")})
    out.append(f"- HAProxy: {ctx.haproxy_version} ({ctx.haproxy}); "
               f"{'/'.join(map(str, threads)) or '?'} thread(s) (the shipped config sets no "
               "`nbthread`: one per CPU)")
    out.append("")
    with open(path, "w") as f:
        f.write("\n".join(out))


def hop_lines(by, args):
    """The L4 hop's cost: HAProxy's CPU per connection, and what haproxy-N
    adds to direct, paired by repetition."""
    direct = by.get("direct") or []
    out = []
    for c in ["haproxy-1", "haproxy-3"] + OPTIONAL_CONFIGS:
        g = by.get(c) or []
        if not g:
            continue
        if not out:
            out += ["## What the L4 hop costs", "",
                    "Median over the repetitions (min–max); `added` is the proxied run minus "
                    "the direct run of the same repetition.", "",
                    "| | HAProxy µs/conn | added machine µs/conn | added master+workers µs/conn "
                    f"| added p50 ms | added p99 ms | added p50 ms at c={args.low_concurrency} "
                    "| conn/s × direct | one HAProxy core, conn/s (1e6 / µs) |",
                    "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        hap = median(g, "haproxy_us_per_conn")
        out.append(
            f"| {c} vs direct | {spread(g, 'haproxy_us_per_conn', 2)} "
            f"| {spread(g, 'vs_direct_total_us_per_conn', 2)} "
            f"| {spread(g, 'vs_direct_server_us_per_conn', 2)} "
            f"| {spread(g, 'vs_direct_p50_us', 3, 1e-3)} "
            f"| {spread(g, 'vs_direct_p99_us', 2, 1e-3)} "
            f"| {spread(g, 'vs_direct_low_p50_us', 3, 1e-3)} "
            f"| {spread(g, 'vs_direct_conns', 2)} "
            f"| {fmt(1e6 / hap if hap else None, 0)} |")
    if not out:
        return []
    h1 = by.get("haproxy-1") or []
    out.append("")
    if h1 and direct:
        hap = median(h1, "haproxy_us_per_conn")
        added = median(h1, "vs_direct_total_us_per_conn")
        p50 = median(h1, "vs_direct_p50_us")
        low_p50 = median(h1, "vs_direct_low_p50_us")
        low_text = (f", {fmt(low_p50, 0)} µs at concurrency {args.low_concurrency} (no "
                    "queueing)" if low_p50 is not None else "")
        out.append(f"- **The L4 hop (haproxy-1 vs direct): HAProxy spends {fmt(hap, 2)} µs of "
                   f"CPU per connection; the machine as a whole spends {fmt(added, 2)} µs more "
                   f"per connection than direct; p50 latency grows by "
                   f"{fmt(ms(p50), 3)} ms at concurrency {args.concurrency}{low_text}.** The "
                   "loaded figure is mostly queueing on the saturated cores. The instance "
                   "behind it is the same kind "
                   f"({args.direct_workers} workers), plus `--proxy-protocol` (the worker "
                   "reads a PROXY v2 header first) and `--agent-check` (one agent connection a "
                   "second).")
        d_srv = median(h1, "vs_direct_server_us_per_conn")
        if d_srv is not None:
            out.append(
                f"- The instance itself: master + workers "
                f"{fmt(median(h1, 'server_us_per_conn'), 2)} µs/conn behind HAProxy vs "
                f"{fmt(median(direct, 'server_us_per_conn'), 2)} direct "
                f"({'+' if d_srv >= 0 else ''}{fmt(d_srv, 2)}); the workers were woken "
                f"{fmt(median(h1, 'worker_switches_per_conn'), 2)} times per connection vs "
                f"{fmt(median(direct, 'worker_switches_per_conn'), 2)} direct, the master "
                f"{fmt(median(h1, 'master_switches_per_conn'), 2)} vs "
                f"{fmt(median(direct, 'master_switches_per_conn'), 2)} (context switches).")
    out.append("")
    return out


def ms(us):
    return us / 1000 if us is not None else None


# ---------------------------------------------------------------- main

def check_args(args, parser):
    """The configurations asked for (parser.error on a bad one, or on a bad count)."""
    configs = ([c.strip() for c in args.configs.split(",") if c.strip()] if args.configs
               else list(CONFIGS))
    for c in configs:
        if c not in CONFIGS + OPTIONAL_CONFIGS:
            parser.error(f"unknown cluster configuration {c!r} (from: "
                         f"{','.join(CONFIGS + OPTIONAL_CONFIGS)})")
    if ((args.reps is not None and args.reps < 1) or args.direct_workers < 1
            or args.host_workers < 1 or args.low_concurrency < 0):
        parser.error("--reps, --direct-workers and --host-workers must be ≥ 1, "
                     "--low-concurrency ≥ 0")
    return configs


def run(ctx, mode, progress, out_dir, parser):
    """Runs the suite; returns (problems, notes, rows) after writing the outputs."""
    args = ctx.args
    d_reps, d_window, d_warmup, d_low_window, d_limit = defaults(mode)
    configs = check_args(args, parser)
    reps = args.reps if args.reps is not None else d_reps
    args.window = args.window if args.window is not None else d_window
    args.warmup = args.warmup if args.warmup is not None else d_warmup
    args.low_window = args.low_window if args.low_window is not None else d_low_window
    time_limit = args.time_limit if args.time_limit is not None else d_limit
    ctx.haproxy = haproxy_bin(args)
    if any(spec(c, args)[2] for c in configs) and not ctx.haproxy:
        return ([f"no haproxy executable{' at ' + args.haproxy if args.haproxy else ''}: "
                 "install it (make deps, or apt-get install haproxy), or --haproxy PATH"],
                [], [])
    ctx.haproxy_version = haproxy_version(ctx.haproxy) if ctx.haproxy else "not used"
    if args.syscalls and not shutil.which("perf"):
        return (["--syscalls needs perf (Debian: linux-perf)"], [], [])

    per_run = (args.window + args.warmup + 1.5 + 0.7  # start, probe, stop, + HAProxy
               + (args.low_window + min(args.warmup, 0.5) + 0.6 if args.low_concurrency else 0))
    started = time.monotonic()
    rows, notes = [], []
    if mode == "smoke":
        notes.append("smoke run: tiny window, (by default) debug binaries — it checks that the "
                     "pipeline works; its numbers mean nothing")
    total = reps * len(configs)
    k = 0
    try:
        for rep in range(1, reps + 1):
            order = configs if rep % 2 == 1 else list(reversed(configs))
            for config in order:
                k += 1
                if time.monotonic() - started + per_run > time_limit:
                    notes.append(f"{config} rep {rep} skipped: the {time_limit:.0f} s time "
                                 "limit")
                    progress(f"[{k}/{total}] {config} rep {rep}: skipped (time limit)")
                    continue
                progress(f"[{k}/{total}] {config} rep {rep}: warm up {args.warmup:g} s, "
                         f"measure {args.window:g} s at concurrency {args.concurrency}")
                try:
                    row = B.measure(lambda: run_once(ctx, config, rep), f"{config} rep {rep}",
                                    notes, progress)
                except (RuntimeError, OSError, ValueError, KeyError,
                        subprocess.TimeoutExpired) as err:
                    notes.append(f"{config} rep {rep} failed: {err}")
                    progress(f"  FAILED: {err}")
                    continue
                rows.append(row)
                progress(f"  {row['conns_per_s']:,.0f} conn/s, {row['errors']} errors, p50 "
                         f"{row['p50_us'] / 1000:.2f} ms, HAProxy "
                         f"{fmt(row['haproxy_us_per_conn'], 2)} µs/conn, master(s) "
                         f"{fmt(row['master_us_per_conn'], 2)}, workers "
                         f"{fmt(row['worker_us_per_conn'], 2)}, bench "
                         f"{fmt(row['bench_us_per_conn'], 2)}, machine "
                         f"{fmt(row['total_us_per_conn'], 2)} µs/conn")
    except KeyboardInterrupt as err:
        notes.append(f"interrupted ({err})")
        progress(f"interrupted ({err}); stopping everything")
    finally:
        ctx.reaper.kill_all()

    add_vs_direct(rows)
    rows.sort(key=lambda r: (configs.index(r["config"]), r["rep"]))
    B.write_csv(os.path.join(out_dir, "results.csv"), rows, FIELDS)
    if args.syscalls:
        notes.append("--syscalls: perf counted every process's system calls during these runs "
                     "(syscalls.md); it slows them, so CPU per connection and rates here are "
                     "inflated — take those from a run without it")
        write_syscalls(os.path.join(out_dir, "syscalls.md"), rows, ctx)
    write_summary(os.path.join(out_dir, "summary.md"), rows, ctx, notes, configs, reps)
    progress(f"done in {time.monotonic() - started:.0f} s of measuring; wrote {out_dir}/"
             "{results.csv,summary.md}")
    if mode != "smoke":
        for line in hop_lines({c: [r for r in rows if r["config"] == c] for c in configs},
                              args)[-3:]:
            if line:
                print(line)
    return B.verify(out_dir, FIELDS, chart=False), notes, rows
