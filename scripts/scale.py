"""The scale curve (`compare.py --suite scale`, `make bench-scale`): how the
master's and the workers' costs grow as the work grows.

1. Held connections. One master (dispatch rr, 4 workers: a process may hold
   at most 20,000 fds here, so 40,000 need at least 3) with a long
   --read-timeout. Holders (`handoff-bench hold`, up to 10,000 connections
   each, each from its own loopback source address, 127.0.0.2, 127.0.0.3,
   …: one source address has one ephemeral port range) open idle
   connections — connected, nothing sent — up to each level (1k, 5k, 20k,
   40k). At each level the workers' memory is read (VmRSS, user space) and
   a short closed-loop run (concurrency 64, one connection per request)
   measures the master's and the workers' CPU per connection and the
   latency, with that many connections held beside it.
2. Worker count. The same short run with 2, 16 and 64 workers, `rr` and
   `least`, and the reference master (`handoff-bench refmaster`, blocking
   accept4 and sendmsg round-robin) with as many workers: what a larger
   pool costs the master, and how much of that the kernel's own hand-off
   costs any master (each worker's share of the connections shrinks, so
   more of them wait asleep and each hand-off wakes one).

Writes results.csv, summary.md and chart.svg like the other suites.
"""

import json
import os
import subprocess
import time

import benchlib as B
from benchlib import fmt
import modes
import svgchart

FIELDS = ["config", "kind", "held", "workers", "policy", *[
    f for f in modes.FIELDS if f not in ("config", "kind", "workers", "policy")],
    "workers_rss_kib_total", "bytes_per_held_conn", "closed_by_server", "repetitions"]

# Targets: master CPU per connection at ≥ 40k held within 1.2× of its figure
# at 1k; the workers' user-space memory per idle held connection ≤ 1 KiB;
# 64 workers within 1.1× (rr) and 1.3× (least) of 2 workers' master cost.
TARGET_HELD_MASTER = 1.2
TARGET_BYTES_PER_CONN = 1024
TARGET_POOL = {"rr": 1.1, "least": 1.3}
# The pool curve's configurations: handoff's two policies, and the
# reference master (`ref` rows) for the kernel's share.
POOL_POLICIES = ("rr", "least", "ref")

PER_HOLDER = 10_000
HELD_WORKERS = 4


def add_arguments(p):
    g = p.add_argument_group("--suite scale (held connections, worker count)")
    g.add_argument("--held-levels", help="comma-separated held connections "
                                         "[full: 1000,5000,20000,40000; smoke: 100,300]")
    g.add_argument("--pool-sizes", help="comma-separated worker counts [full: 2,16,64; "
                                        "smoke: 2,4]")


def defaults(mode):
    """(held levels, pool sizes, window, warm-up, pool repetitions) per run
    mode."""
    return {"full": ([1000, 5000, 20000, 40000], [2, 16, 64], 3.0, 0.5, 3),
            "quick": ([1000, 20000], [2, 16], 2.0, 0.5, 1),
            "smoke": ([100, 300], [2, 4], 0.5, 0.2, 1)}[mode]


class Holders:
    """`handoff-bench hold` processes, each from its own source address."""

    def __init__(self, ctx, addr):
        self.ctx, self.addr, self.procs, self.held = ctx, addr, [], 0

    def top_up(self, level, deadline):
        while self.held < level:
            count = min(PER_HOLDER, level - self.held)
            source = f"127.0.0.{2 + len(self.procs)}"
            proc = self.ctx.reaper.spawn(
                [self.ctx.bench, "hold", "--target", self.addr, "--count", str(count),
                 "--source", source, "--duration", "900"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=open(os.path.join(self.ctx.tmp, f"hold-{source}.log"), "w"), text=True)
            line = B.read_line(proc.stdout, max(1.0, deadline - time.monotonic()))
            if line != f"held {count}":
                raise RuntimeError(f"holder from {source}: {line!r} (see {self.ctx.tmp})")
            self.procs.append(proc)
            self.held += count

    def release(self):
        """Closes every holder's stdin; returns how many connections the
        server closed while they were held."""
        closed = 0
        for proc in self.procs:
            try:
                proc.stdin.close()
                out = proc.stdout.read()
                proc.wait(timeout=10)
                closed += int(json.loads(out.strip().splitlines()[-1])["closed_by_server"])
            except (OSError, ValueError, KeyError, IndexError, subprocess.TimeoutExpired) as err:
                raise RuntimeError(f"a holder did not report: {err}") from err
        self.procs, self.held = [], 0
        return closed


def workers_rss_kib(master_pid):
    return sum(B.mem_kib(pid)[0] for pid in B.descendants(master_pid))


def held_in_workers(run_dir):
    info = B.control(run_dir, "info") or {}
    return info.get("in_flight")


def wait_settled(master_pid, run_dir, level, deadline):
    """Until the workers hold `level` connections (per `info`) and their
    memory stops growing."""
    last = None
    while time.monotonic() < deadline:
        held = held_in_workers(run_dir)
        rss = workers_rss_kib(master_pid)
        if held is not None and held >= level and rss == last:
            return True
        last = rss
        time.sleep(0.5)
    return False


def short_run(ctx, proc, addr, run_dir, name, n, window, warmup):
    sampler = modes.ModeSampler(proc.pid, window, run_dir)
    bench = B.run_bench(ctx.bench, addr, modes.namespace(ctx.args, concurrency=ctx.args.concurrency),
                        sampler, window=window, warmup=warmup)
    if proc.poll() is not None:
        raise RuntimeError(f"{name}: the master exited during the run ({proc.returncode})")
    return B.row_from(name, "steady", n, bench, sampler.result())


def held_curve(ctx, levels, window, warmup, progress, notes):
    rows = []
    proc, addr, run_dir = B.start_master(
        ctx, "scale-held", HELD_WORKERS,
        ["--mode", "dispatch", "--policy", "rr", "--read-timeout", "900", "--timeout", "0"])
    holders = Holders(ctx, addr)
    try:
        if not B.probe(addr, time.monotonic() + 20):
            raise RuntimeError(f"scale-held: no correct reply on {addr}")
        base_rss = None
        for level in [0, *levels]:
            progress(f"held {level:,}: opening, then {window:g} s at concurrency "
                     f"{ctx.args.concurrency} beside them")
            holders.top_up(level, time.monotonic() + 60)
            if not wait_settled(proc.pid, run_dir, level, time.monotonic() + 30):
                notes.append(f"held {level}: the workers did not report holding them all "
                             "within 30 s")
            rss = workers_rss_kib(proc.pid)
            row = B.measure(lambda: short_run(ctx, proc, addr, run_dir, f"held-{level}",
                                              HELD_WORKERS, window, warmup),
                            f"held {level}", notes, progress)
            if base_rss is None:
                # After the first run: what the closed-loop clients make
                # the workers allocate is not counted as the held ones'.
                rss = base_rss = workers_rss_kib(proc.pid)
            row.update(kind="held", held=level, policy="rr", design="rr", mode="dispatch",
                       workers_rss_kib_total=rss,
                       bytes_per_held_conn=((rss - base_rss) * 1024 / level if level else None))
            rows.append(row)
            progress(f"  master {fmt(row['master_us_per_conn'], 2)} µs/conn, workers "
                     f"{fmt(row['worker_us_per_conn'])} µs/conn, p99 "
                     f"{row['p99_us'] / 1000:.1f} ms, workers' RSS {rss / 1024:.1f} MiB"
                     + (f" ({row['bytes_per_held_conn']:.0f} B per held connection)"
                        if level else ""))
        closed = holders.release()
        for row in rows:
            row["closed_by_server"] = closed
        if closed:
            notes.append(f"the server closed {closed} held connections during the run")
    finally:
        for p in holders.procs:
            ctx.reaper.stop(p)
        ctx.reaper.stop(proc)
    return rows


def pool_curve(ctx, sizes, window, warmup, reps, progress, notes):
    """Every (policy, size) `reps` times, the configurations interleaved
    (rr-2, rr-16, rr-64, least-2, …, then again), so that a slow spell of
    the machine touches them all; the row of each is its median run (by
    master CPU per connection), with the range beside it."""
    runs = {}
    for rep in range(reps):
        for policy in POOL_POLICIES:
            for n in sizes:
                name = f"{policy}-{n}"
                progress(f"pool {name} ({rep + 1}/{reps}): {window:g} s at concurrency "
                         f"{ctx.args.concurrency}")
                if policy == "ref":
                    proc, addr, _ = B.start_refmaster(ctx, f"scale-{name}", n)
                    run_dir = None
                else:
                    proc, addr, run_dir = B.start_master(
                        ctx, f"scale-{name}", n, ["--mode", "dispatch", "--policy", policy])
                try:
                    if not B.probe(addr, time.monotonic() + 20):
                        raise RuntimeError(f"{name}: no correct reply on {addr}")
                    row = B.measure(lambda: short_run(ctx, proc, addr, run_dir, name, n, window,
                                                      warmup), name, notes, progress)
                finally:
                    ctx.reaper.stop(proc)
                row.update(kind="pool", held=0, policy=policy,
                           design="refmaster" if policy == "ref" else policy, mode="dispatch")
                runs.setdefault((policy, n), []).append(row)
                progress(f"  master {fmt(row['master_us_per_conn'], 2)} µs/conn, workers "
                         f"{fmt(row['worker_us_per_conn'])} µs/conn, "
                         f"{row['conns_per_s']:,.0f} conn/s")
    rows = []
    for key, group in runs.items():
        ordered = sorted(group, key=lambda r: r["master_us_per_conn"] or 0)
        row = dict(ordered[len(ordered) // 2])
        row["repetitions"] = len(group)
        row["master_range"] = (ordered[0]["master_us_per_conn"],
                               ordered[-1]["master_us_per_conn"])
        rows.append(row)
    return rows


def target_lines(rows, levels, sizes):
    lines = []
    held = {r["held"]: r for r in rows if r["kind"] == "held"}
    low, high = held.get(min(levels)), held.get(max(levels))
    if low and high and low["master_us_per_conn"]:
        v = high["master_us_per_conn"] / low["master_us_per_conn"]
        lines.append(f"- master CPU per connection with {high['held']:,} held vs "
                     f"{low['held']:,}: {high['master_us_per_conn']:.2f} vs "
                     f"{low['master_us_per_conn']:.2f} µs = {v:.2f}× (target ≤ "
                     f"{TARGET_HELD_MASTER}×): {B.ratio_verdict(v, TARGET_HELD_MASTER)}")
    if high and high.get("bytes_per_held_conn") is not None:
        b = high["bytes_per_held_conn"]
        lines.append(f"- workers' user-space memory per idle held connection at "
                     f"{high['held']:,}: {b:.0f} B (target ≤ {TARGET_BYTES_PER_CONN} B): "
                     f"{'met' if b <= TARGET_BYTES_PER_CONN else 'MISSED'}")
    pool = {(r["policy"], r["workers"]): r for r in rows if r["kind"] == "pool"}
    for policy in POOL_POLICIES:
        small, big = pool.get((policy, min(sizes))), pool.get((policy, max(sizes)))
        if not (small and big and small["master_us_per_conn"]):
            continue
        v = big["master_us_per_conn"] / small["master_us_per_conn"]
        line = (f"- {policy}: master CPU per connection, {max(sizes)} vs {min(sizes)} "
                f"workers, medians of {big.get('repetitions', 1)} runs: "
                f"{big['master_us_per_conn']:.2f} vs {small['master_us_per_conn']:.2f} µs "
                f"= {v:.2f}×")
        if policy in TARGET_POOL:
            limit = TARGET_POOL[policy]
            line += f" (target ≤ {limit}×): {B.ratio_verdict(v, limit)}"
        else:
            line += " (the reference master, for the kernel's share: no target)"
        lines.append(line)
    # Beside the reference at the same worker count: with few workers
    # handoff's are often awake when a hand-off arrives; with 64 nearly
    # every hand-off wakes a sleeping worker, for both (docs/scaling.md).
    cells = []
    for n in sorted({min(sizes), max(sizes)}):
        own, ref = pool.get(("rr", n)), pool.get(("ref", n))
        if own and ref and own["master_us_per_conn"] and ref["master_us_per_conn"]:
            cells.append(f"{n} workers {own['master_us_per_conn'] / ref['master_us_per_conn']:.2f}×")
    if cells:
        lines.append("- rr against the reference master at the same worker count: "
                     + ", ".join(cells) + " (no target)")
    return lines


def write_summary(path, rows, ctx, notes, levels, sizes, window):
    args = ctx.args
    out = ["# The scale curve: held connections and worker count", ""]
    out.append(f"This machine has {os.cpu_count()} cores. Each figure is a {window:g} s "
               f"closed-loop run at concurrency {args.concurrency} (one new connection per "
               "request, `hello`), the master in dispatch mode.")
    out.append("")
    out.append("## Targets")
    out.append("")
    out.extend(target_lines(rows, levels, sizes))
    out.append("")
    out.append(f"## Held connections ({HELD_WORKERS} workers, rr)")
    out.append("")
    out.append("Idle connections (connected, nothing sent) held open beside the run, from "
               f"`handoff-bench hold` processes of up to {PER_HOLDER:,} each, each from its own "
               "loopback source address. Memory: the workers' VmRSS summed, read before the "
               "run (level 0: after it); per held connection: its growth over level 0's.")
    out.append("")
    out.append("| held | conn/s | p50 ms | p99 ms | master µs/conn | workers µs/conn "
               "| workers' RSS MiB | B per held conn | master RSS MiB |")
    out.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        if r["kind"] != "held":
            continue
        out.append(f"| {r['held']:,} | {fmt(r['conns_per_s'], 0)} | {r['p50_us'] / 1000:.2f} "
                   f"| {r['p99_us'] / 1000:.2f} | {fmt(r['master_us_per_conn'], 2)} "
                   f"| {fmt(r['worker_us_per_conn'])} | {r['workers_rss_kib_total'] / 1024:.1f} "
                   f"| {fmt(r['bytes_per_held_conn'], 0)} | {B.mib(r['master_rss_kib'])} |")
    out.append("")
    out.append("## Worker count")
    out.append("")
    out.append("Each configuration run several times, interleaved; the row is its median run "
               "by master CPU per connection, with the range of all its runs. `ref` is the "
               "reference master (`handoff-bench refmaster`: blocking accept4, one sendmsg "
               "round-robin, close) with as many workers: what the kernel's hand-off costs "
               "a master that does nothing else.")
    out.append("")
    out.append("| policy | workers | runs | conn/s | p50 ms | p99 ms | master µs/conn (range) "
               "| workers µs/conn | master switches/conn |")
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        if r["kind"] != "pool":
            continue
        lo, hi = r.get("master_range", (None, None))
        out.append(f"| {r['policy']} | {r['workers']} | {r.get('repetitions', 1)} "
                   f"| {fmt(r['conns_per_s'], 0)} "
                   f"| {r['p50_us'] / 1000:.2f} | {r['p99_us'] / 1000:.2f} "
                   f"| {fmt(r['master_us_per_conn'], 2)} ({fmt(lo, 2)}–{fmt(hi, 2)}) "
                   f"| {fmt(r['worker_us_per_conn'])} "
                   f"| {fmt(r['master_switches_per_conn'], 2)} |")
    out.append("")
    out.append("## Verdicts")
    out.append("")
    for r in rows:
        out.append(f"- {r['config']}: {B.bottleneck(r)}")
    out.append("")

    def fact(k, v):
        if k == "settings":
            return (f"held levels {','.join(map(str, levels))}; pool sizes "
                    f"{','.join(map(str, sizes))}; window {window:g} s, concurrency "
                    f"{args.concurrency}")
        return v
    B.notes_and_machine(out, notes, ctx, fact, skip=("python", "loguru"))
    out.append("")
    with open(path, "w") as f:
        f.write("\n".join(out))


def run(ctx, mode, progress, out_dir, parser):
    args = ctx.args
    d_levels, d_sizes, window, warmup, pool_reps = defaults(mode)
    levels = ([int(x) for x in modes.parse_list(args.held_levels, None, "level", parser)]
              if args.held_levels else d_levels)
    sizes = ([int(x) for x in modes.parse_list(args.pool_sizes, None, "size", parser)]
             if args.pool_sizes else d_sizes)
    if args.window is not None:
        window = args.window
    if any(x < 1 for x in levels + sizes) or levels != sorted(levels):
        parser.error("held levels (ascending) and pool sizes must be ≥ 1")
    if max(levels) > PER_HOLDER * 250:
        parser.error("at most 2,500,000 held connections (250 source addresses)")
    rows, notes = [], []
    if mode == "smoke":
        notes.append("smoke run: tiny levels and window, debug binaries — it checks the "
                     "pipeline; its numbers mean nothing")
    started = time.monotonic()
    try:
        rows += held_curve(ctx, levels, window, warmup, progress, notes)
        rows += pool_curve(ctx, sizes, window, warmup, pool_reps, progress, notes)
    except (RuntimeError, OSError, ValueError, KeyError) as err:
        notes.append(f"scale run failed: {err}")
        progress(f"FAILED: {err}")
    except KeyboardInterrupt as err:
        notes.append(f"interrupted ({err})")
    finally:
        ctx.reaper.kill_all()
    B.write_csv(os.path.join(out_dir, "results.csv"), rows, FIELDS)
    with open(os.path.join(out_dir, "chart.svg"), "w") as f:
        f.write(svgchart.render_scale(rows))
    write_summary(os.path.join(out_dir, "summary.md"), rows, ctx, notes, levels, sizes, window)
    progress(f"done in {time.monotonic() - started:.0f} s; wrote {out_dir}/"
             "{results.csv,summary.md,chart.svg}")
    targets = target_lines(rows, levels, sizes)
    if mode != "smoke":
        for line in targets:
            print(line)
    problems = []
    if sum(r["kind"] == "held" for r in rows) != len(levels) + 1:
        problems.append(f"{sum(r['kind'] == 'held' for r in rows)} held rows, not "
                        f"{len(levels) + 1}")
    if sum(r["kind"] == "pool" for r in rows) != len(POOL_POLICIES) * len(sizes):
        problems.append(f"{sum(r['kind'] == 'pool' for r in rows)} pool rows, not "
                        f"{len(POOL_POLICIES) * len(sizes)}")
    problems += [f"{r['config']}: no master CPU figure" for r in rows
                 if r.get("master_us_per_conn") is None]
    if not any("rr against the reference master at the same worker count" in line
               for line in targets):
        problems.append("no line comparing rr with the reference at the same worker count")
    return problems, notes, rows
