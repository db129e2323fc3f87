"""The issue-5 comparison (`compare.py --suite modes`): every design on the
same binaries, against a plain baseline server.

Designs: `baseline` (handoff-bench serve: threads that accept and answer on
their own), `refmaster` (handoff-bench refmaster: the minimal reference
master, blocking accept4 → one sendmsg → close, no simulated work), dispatch
`rr`, `least`, `pull`, `batch` (rr with --batch K), `shared`, `reuseport`;
each × worker counts × work settings:

- `none`: no simulated work, concurrency 64 (as issue 4);
- `cpu`: every worker burns --work-us µs per request, concurrency 64;
- `delay`: every worker replies --delay-ms late without blocking, at
  --delay-concurrency clients (default 2048: Little's law alone would allow
  2048 / 0.05 s = 40,960 conn/s, above what this box can serve, so the rate
  measures the servers, not the delay). `pull` gets --capacity
  ceil(clients / workers) there, so its pool can hold every client.

Then bursts (master stopped, its backlog filled, resumed) with --batch 1,
--batch K and into the reference master, in turn, and the slowed-worker
demonstration: one spawned worker plus one
external worker that also burns --slow-work-us per request, all with
--delay-ms, for rr / least / pull.

Writes results.csv, summary.md and chart.svg like the issue-4 run. What it
shares with compare.py is in benchlib.py (this module does not import
compare.py).
"""

import argparse
import math
import os
import statistics
import subprocess
import time

import benchlib as B
from benchlib import fmt
import svgchart

DESIGNS = ["baseline", "baseline-epoll", "refmaster", "rr", "least", "pull", "batch", "shared",
           "reuseport", "reuseport-least", "reuseport-pull"]
WORKS = ["none", "cpu", "delay"]

# The issue's targets (issue 5; the batch target is issue 9's, which replaced
# issue 5's "at least 25 % lower"; those against the reference master are in
# benchlib).
TARGET_SELF_ACCEPT = 0.9
TARGET_DISPATCH = 0.8
TARGET_BATCH_RATIO = 0.7  # burst: --batch K master CPU/conn ≤ 0.7× --batch 1's
TARGET_BATCH_VS_REF = 0.6  # burst: --batch K master CPU/conn ≤ 0.6× the reference master's
# The kernel balancer (reuseport with the eBPF program) against plain reuseport.
TARGET_KERNEL_RATE = 0.95        # conn/s ≥ 0.95× plain reuseport's
TARGET_KERNEL_WORKER_CPU = 1.05  # worker CPU per connection ≤ 1.05× plain reuseport's
TARGET_KERNEL_SLOW_SHARE = 0.40  # slowed worker's share of connections
TARGET_KERNEL_SLOW_P99 = 1.25    # p99 ≤ 1.25× dispatch least's, same run

# A measurement during which more than this much of a core (% of one core)
# was busy outside the measured processes is taken again, up to twice.
OTHER_CPU_LIMIT = B.OTHER_CPU_LIMIT

FIELDS = [
    "config", "kind", "design", "mode", "policy", "batch", "capacity", "work", "workers",
    "concurrency", "window_s", "connections", "conns_per_s",
    "errors", "refused", "reset", "timeout", "short_reply", "wrong_reply", "other",
    "p50_us", "p90_us", "p99_us", "max_us",
    "master_cpu_s", "workers_cpu_s", "master_cpu_pct", "workers_cpu_pct",
    "master_us_per_conn", "worker_us_per_conn", "master_ceiling_conns_per_s",
    "bench_us_per_conn", "bench_user_us_per_conn", "bench_cpu_pct",
    "master_rss_kib", "master_hwm_kib", "worker_rss_kib", "worker_hwm_kib", "n_workers",
    "master_switches_per_conn", "worker_switches_per_conn", "other_cpu_pct",
    "master_accepted", "worker_accepted", "handoff_packets", "fds_per_packet",
    "slow_share", "slow_handling_p99_us", "fast_handling_p99_us",
    "ratio_to_baseline", "refmaster", "master_vs_refmaster", "conns_vs_refmaster",
]


def defaults(mode):
    """(designs, worker counts, works, window, warm-up, burst clients, burst reps,
    slowed window, slowed policies, kernel pairs, time limit) per run mode."""
    full_slowed = [("rr", False), ("least", False), ("pull", True), ("rr", True),
                   ("least", True), ("reuseport", False), ("reuseport-least", False),
                   ("reuseport-pull", True)]
    return {
        "full": (DESIGNS, [2, 4], WORKS, 6.0, 1.0, 2000, 9, 8.0, full_slowed, 5, 720.0),
        "quick": (["baseline", "baseline-epoll", "refmaster", "rr", "batch", "shared",
                   "reuseport", "reuseport-least"], [2], ["none"], 3.0, 0.5,
                  2000, 2, 3.0, [("rr", False), ("least", False), ("pull", True),
                                 ("reuseport", False), ("reuseport-least", False)], 0, 60.0),
        "smoke": (["baseline", "refmaster", "rr", "shared"], [2], ["none"], 0.5, 0.2, 200, 1,
                  0.5, [("rr", False), ("pull", True)], 0, 40.0),
    }[mode]


def add_arguments(p):
    g = p.add_argument_group("--suite modes (designs × workers × work)")
    g.add_argument("--designs", help="comma-separated, from: " + ",".join(DESIGNS)
                   + " [quick: baseline,baseline-epoll,refmaster,rr,batch,shared,reuseport]")
    g.add_argument("--worker-counts", help="comma-separated [full: 2,4; quick: 2]")
    g.add_argument("--works", help="comma-separated, from: none,cpu,delay [quick: none]")
    g.add_argument("--work-us", type=int, default=50, help="CPU work per request (cpu) [50]")
    g.add_argument("--delay-ms", type=int, default=50, help="reply delay (delay) [50]")
    g.add_argument("--delay-concurrency", type=int, default=2048,
                   help="clients in the delay setting [2048]")
    g.add_argument("--batch-size", type=int, default=16,
                   help="--batch of the `batch` design and of the batched burst [16]")
    g.add_argument("--slow-work-us", type=int, default=2000,
                   help="slowed-worker demo: CPU the slowed worker burns per request [2000]")
    g.add_argument("--slow-capacity", type=int, default=50,
                   help="slowed-worker demo: --capacity of capacity-limited workers [50]")
    g.add_argument("--slow-concurrency", type=int, default=100,
                   help="slowed-worker demo: clients [100]")
    g.add_argument("--slow-window", type=float, help="slowed-worker demo: seconds measured")
    g.add_argument("--no-slowed", action="store_true", help="skip the slowed-worker demo")
    g.add_argument("--kernel-pairs", type=int,
                   help="interleaved reuseport / reuseport-least pairs per worker count "
                        "(no work), whose median ratios decide the kernel balancer's "
                        "no-slow targets [full: 5, quick: 0]")
    g.add_argument("--kernel-pair-window", type=float, default=3.0,
                   help="seconds measured per run of a pair [3]")


def parse_list(text, allowed, what, parser):
    items = [x.strip() for x in text.split(",") if x.strip()]
    for x in items:
        if allowed is not None and x not in allowed:
            parser.error(f"unknown {what} {x!r} (from: {','.join(allowed)})")
    return items


# ---------------------------------------------------------------- helpers

class ModeSampler(B.Sampler):
    """The issue-4 sampler, plus the master's counters (`info`, `workers`) at
    the window's edges."""

    def __init__(self, master, window, run_dir=None, extra_pids=(), want_workers=False):
        super().__init__(master, window, extra_pids)
        self.run_dir = run_dir
        self.want_workers = want_workers
        self.info = [None, None]
        self.workers = [None, None]

    def _counters(self, i):
        if self.run_dir:
            self.info[i] = B.control(self.run_dir, "info")
            if self.want_workers:
                self.workers[i] = B.control(self.run_dir, "workers")

    def window_start(self):
        super().window_start()
        self._counters(0)

    def window_end(self):
        super().window_end()
        self._counters(1)

    def counter(self, key):
        a, b = self.info
        if not a or not b or a.get(key) is None or b.get(key) is None:
            return None
        return b[key] - a[key]


def namespace(args, **changes):
    ns = argparse.Namespace(**vars(args))
    for k, v in changes.items():
        setattr(ns, k, v)
    return ns


# ---------------------------------------------------------------- one configuration

class Spec:
    """One configuration of the matrix."""

    def __init__(self, design, n, work, args):
        self.design, self.n, self.work = design, n, work
        self.batch = args.batch_size if design == "batch" else 1
        self.mode = ("baseline" if design.startswith("baseline") else
                     "reuseport" if design.startswith("reuseport") else
                     design if design in ("shared", "refmaster") else "dispatch")
        self.policy = ({"rr": "rr", "least": "least", "pull": "pull", "batch": "rr",
                        "reuseport-least": "least", "reuseport-pull": "pull"}
                       .get(design, ""))
        self.concurrency = args.delay_concurrency if work == "delay" else args.concurrency
        self.capacity = 0
        if design in ("pull", "reuseport-pull"):
            # Pool semantics: one task per worker at a time; under the delay a
            # pool big enough for every client.
            self.capacity = (math.ceil(self.concurrency / n) if work == "delay" else 1)
        self.work_args = {"none": [], "cpu": ["--work-us", str(args.work_us)],
                          "delay": ["--delay-ms", str(args.delay_ms)]}[work]
        self.work_label = {"none": "none", "cpu": f"cpu {args.work_us} µs",
                           "delay": f"delay {args.delay_ms} ms"}[work]
        self.name = self.display(args) + f"-{n}"
        self.config = self.name + ("" if work == "none" else
                                   {"cpu": f"+cpu{args.work_us}us",
                                    "delay": f"+delay{args.delay_ms}ms"}[work])

    def display(self, args):
        return f"rr-b{args.batch_size}" if self.design == "batch" else self.design

    def master_args(self):
        if self.mode in ("baseline", "refmaster"):
            return []
        out = ["--mode", self.mode]
        if self.mode == "dispatch":
            out += ["--policy", self.policy, "--batch", str(self.batch)]
        elif self.policy:
            out += ["--policy", self.policy]
        if self.capacity:
            out += ["--capacity", str(self.capacity)]
        return out + self.work_args


def steady_run(spec, ctx):
    args = ctx.args
    run_dir = None
    if spec.mode == "baseline":
        proc, addr = B.start_bench_server(
            ctx, spec.config, ["serve", "--threads", str(spec.n), *spec.work_args,
                               *(["--epoll"] if spec.design == "baseline-epoll" else [])])
    elif spec.mode == "refmaster":
        proc, addr, _ = B.start_refmaster(ctx, spec.config, spec.n)
    else:
        proc, addr, run_dir = B.start_master(ctx, spec.config, spec.n, spec.master_args())
    try:
        if not B.probe(addr, time.monotonic() + 20):
            raise RuntimeError(f"{spec.config}: no correct reply on {addr}")
        sampler = ModeSampler(proc.pid, args.window, run_dir)
        bench = B.run_bench(ctx.bench, addr, namespace(args, concurrency=spec.concurrency),
                            sampler)
        if proc.poll() is not None:
            raise RuntimeError(f"{spec.config}: server exited during the run ({proc.returncode})")
        cpu = sampler.result()
        if spec.mode == "baseline":
            # One process whose threads are the workers: no master.
            cpu.update(workers_cpu_s=cpu["master_cpu_s"], master_cpu_s=None,
                       worker_switches=cpu["master_switches"], master_switches=None,
                       worker_rss_kib=cpu["master_rss_kib"], worker_hwm_kib=cpu["master_hwm_kib"],
                       master_rss_kib=None, master_hwm_kib=None, n_workers=spec.n)
        row = B.row_from(spec.config, "steady", spec.n, bench, cpu)
        accepted = sampler.counter("accepted")
        packets = sampler.counter("handoff_packets")
        dispatched = sampler.counter("dispatched")
        row.update(design=spec.display(args), mode=spec.mode, policy=spec.policy,
                   batch=spec.batch if spec.mode == "dispatch" else "",
                   capacity=spec.capacity or "",
                   work=spec.work_label, master_accepted=accepted,
                   worker_accepted=sampler.counter("worker_accepted"), handoff_packets=packets,
                   fds_per_packet=(dispatched / packets if packets else None))
        return row
    finally:
        ctx.reaper.stop(proc)


def slowed_run(ctx, policy, capped):
    """One spawned worker plus one external, slowed worker, all with --delay-ms."""
    args = ctx.args
    cap = args.slow_capacity if capped else 0
    name = f"slowed-{policy}" + (f"-cap{cap}" if cap else "")
    delay = ["--delay-ms", str(args.delay_ms)]
    # "reuseport" (the kernel's hash) or "reuseport-least"/"-pull" (the
    # kernel balancer), else a dispatch policy.
    mode, _, kernel_policy = policy.partition("-") if policy.startswith("reuseport") else \
        ("dispatch", "", policy)
    policy = kernel_policy or "rr"
    proc, addr, run_dir = B.start_master(
        ctx, name, 1, ["--mode", mode, "--policy", policy, "--capacity", str(cap), *delay])
    wlog = open(os.path.join(ctx.tmp, f"{name}-slow-worker.log"), "w")
    worker = ctx.reaper.spawn(
        [os.path.join(ctx.bin_dir, "handoff-worker"), "--run-dir", run_dir, *delay,
         "--work-us", str(args.slow_work_us), "--max-conns", str(cap)],
        stdout=subprocess.DEVNULL, stderr=wlog, env={**os.environ, "RUST_LOG": "warn"})
    wlog.close()
    try:
        if not B.wait_workers(run_dir, 2, time.monotonic() + 10):
            raise RuntimeError(f"{name}: the external worker did not register")
        if not B.probe(addr, time.monotonic() + 20):
            raise RuntimeError(f"{name}: no correct reply on {addr}")
        window = args.slow_window
        sampler = ModeSampler(proc.pid, window, run_dir, extra_pids=[worker.pid],
                              want_workers=True)
        bench = B.run_bench(ctx.bench, addr,
                            namespace(args, concurrency=args.slow_concurrency), sampler,
                            window=window)
        if proc.poll() is not None or worker.poll() is not None:
            raise RuntimeError(f"{name}: a process exited during the run")
        row = B.row_from(name, "slowed", 2, bench, sampler.result())
        share = slow_p99 = fast_p99 = None
        w0, w1 = sampler.workers
        if w0 and w1:
            before = {w["pid"]: w for w in w0.get("workers", [])}
            after = {w["pid"]: w for w in w1.get("workers", [])}
            def given(row):
                # Handed over (dispatch) or accepted itself (reuseport).
                return (row.get("dispatched") or 0) + (row.get("accepted") or 0)
            total = sum(given(a) - given(before.get(pid, {})) for pid, a in after.items())
            slow = after.get(worker.pid)
            if slow and total:
                share = (given(slow) - given(before.get(worker.pid, {}))) / total
                slow_p99 = slow.get("handling_p99_us")
            fast = [a for pid, a in after.items() if pid != worker.pid]
            if fast:
                fast_p99 = fast[0].get("handling_p99_us")
        row.update(design=name, mode=mode, policy=policy, batch=1, capacity=cap,
                   work=f"delay {args.delay_ms} ms; one worker also burns "
                        f"{args.slow_work_us} µs", slow_share=share,
                   slow_handling_p99_us=slow_p99, fast_handling_p99_us=fast_p99)
        return row
    finally:
        ctx.reaper.stop(proc)
        ctx.reaper.stop(worker)


# ---------------------------------------------------------------- targets and summary

def by_config(rows):
    return {r["config"]: r for r in rows}


def faster_baseline(rows, r):
    """The faster of the baselines measured with r's worker count and work."""
    bases = [b for b in rows if b["kind"] == "steady" and b["mode"] == "baseline"
             and b["workers"] == r["workers"] and b["work"] == r["work"] and b["conns_per_s"]]
    return max(bases, key=lambda b: b["conns_per_s"], default=None)


def why_rate(r, base):
    """A short, measured reason for a throughput ratio."""
    parts = [f"bench {fmt(r['bench_cpu_pct'], 0)}% of a core vs {fmt(base['bench_cpu_pct'], 0)}% "
             f"for the baseline (bench µs/conn {fmt(r['bench_us_per_conn'])} vs "
             f"{fmt(base['bench_us_per_conn'])})"]
    total = (r["master_us_per_conn"] or 0) + (r["worker_us_per_conn"] or 0)
    parts.append(f"server CPU {total:.1f} µs/conn (master {fmt(r['master_us_per_conn'])} + "
                 f"workers {fmt(r['worker_us_per_conn'])}) vs the baseline's "
                 f"{fmt(base['worker_us_per_conn'])}")
    return "; ".join(parts)


def batch_bursts(rows, args):
    """The --batch bursts' rows, {K: row}."""
    return {r["batch"]: r for r in rows if r["kind"] == "burst" and r["mode"] == "dispatch"}


def checked_against_reference(rows, args):
    """The rows issue 9's targets are checked on: rr with 2 workers and no
    work (steady), the --batch 1 burst."""
    by = by_config(rows)
    return by.get("rr-2"), batch_bursts(rows, args).get(1)


def disturbed_tag(*rows):
    """` [disturbed: …]` when a row's window had the machine busy elsewhere
    (it was measured again and still was), so a miss may not be the
    design's; '' otherwise."""
    busy = [f"{r['config']} {r['other_cpu_pct']:.0f} %" for r in rows
            if r and r.get("other_cpu_pct") is not None and r["other_cpu_pct"] > OTHER_CPU_LIMIT]
    return f" [disturbed: {', '.join(busy)} of a core busy elsewhere]" if busy else ""


def target_lines(rows, counts, args, pairs=()):
    lines = []
    by = by_config(rows)
    for n in counts:
        probe_row = next((r for r in rows if r["kind"] == "steady" and r["workers"] == n
                          and r["work"] == "none"), None)
        base = faster_baseline(rows, probe_row) if probe_row else None
        if not base:
            lines.append(f"- {n} workers: no baseline measured, ratios not checked")
            continue
        for design, limit in (("shared", TARGET_SELF_ACCEPT), ("reuseport", TARGET_SELF_ACCEPT),
                              ("rr", TARGET_DISPATCH), ("least", TARGET_DISPATCH),
                              ("pull", TARGET_DISPATCH),
                              (f"rr-b{args.batch_size}", TARGET_DISPATCH)):
            r = by.get(f"{design}-{n}")
            if not r:
                continue
            ratio = r["conns_per_s"] / base["conns_per_s"]
            verdict = ("met" if ratio >= limit else
                       f"MISSED by {limit - ratio:.2f} ({ratio / limit:.0%} of target)")
            errors = "" if r["errors"] == 0 else f", {r['errors']} errors"
            lines.append(f"- {design}-{n} / {base['config']} conn/s (no work): {ratio:.2f}× "
                         f"({r['conns_per_s']:,.0f} vs {base['conns_per_s']:,.0f}; target ≥ "
                         f"{limit}×{errors}): {verdict}"
                         + ("" if ratio >= limit else f" — {why_rate(r, base)}")
                         + disturbed_tag(r, base))
    bursts = batch_bursts(rows, args)
    b1, bk = bursts.get(1), bursts.get(args.batch_size)
    if b1 and bk and b1["master_us_per_conn"]:
        v = bk["master_us_per_conn"] / b1["master_us_per_conn"]
        verdict = B.ratio_verdict(v, TARGET_BATCH_RATIO)
        if v > TARGET_BATCH_RATIO:
            verdict += (" — a batch merges only the sendmsg calls; accept4 and close stay one "
                        "per connection (docs/performance.md)")
        lines.append(f"- burst master CPU per connection, --batch {args.batch_size} vs --batch 1: "
                     f"{bk['master_us_per_conn']:.2f} vs {b1['master_us_per_conn']:.2f} µs = "
                     f"{v:.2f}× (target ≤ {TARGET_BATCH_RATIO:g}×): {verdict}")
        ref = next((r for r in rows if r["kind"] == "burst" and B.is_refmaster(r)), None)
        if ref and ref["master_us_per_conn"]:
            v = bk["master_us_per_conn"] / ref["master_us_per_conn"]
            lines.append(f"- burst master CPU per connection, --batch {args.batch_size} vs the "
                         f"reference master: {bk['master_us_per_conn']:.2f} vs "
                         f"{ref['master_us_per_conn']:.2f} µs = {v:.2f}× (target ≤ "
                         f"{TARGET_BATCH_VS_REF:g}×): {B.ratio_verdict(v, TARGET_BATCH_VS_REF)}")
    else:
        lines.append("- burst --batch saving: not measured in this run")
    slowed = {r["config"]: r for r in rows if r["kind"] == "slowed"}
    rr = slowed.get("slowed-rr")
    if rr:
        for name in ("slowed-least", f"slowed-pull-cap{args.slow_capacity}"):
            r = slowed.get(name)
            if not r:
                continue
            ok = r["p99_us"] < rr["p99_us"]
            lines.append(f"- slowed worker, p99 of {name[7:]} vs rr: {r['p99_us'] / 1000:.1f} vs "
                         f"{rr['p99_us'] / 1000:.1f} ms (target: below rr's): "
                         f"{'met' if ok else 'MISSED'}")
    else:
        lines.append("- slowed-worker p99: not measured in this run")
    lines.extend(kernel_balancer_lines(rows, counts, slowed, pairs))
    return lines


def pair_ratios(pairs, n, field):
    """Per interleaved pair with n workers, reuseport-least's `field` over
    plain reuseport's (the two runs of a pair are next to each other in
    time, so a slow spell of the machine moves both)."""
    ratios = []
    for i in sorted({p["pair"] for p in pairs if p["workers"] == n}):
        two = {p["design"]: p for p in pairs if p["workers"] == n and p["pair"] == i}
        plain, least = two.get("reuseport"), two.get("reuseport-least")
        if plain and least and plain.get(field) and least.get(field):
            ratios.append(least[field] / plain[field])
    return ratios


def pair_medians(pairs, n, design, field):
    values = [p[field] for p in pairs if p["workers"] == n and p["design"] == design
              and p.get(field)]
    return statistics.median(values) if values else None


def kernel_pair_lines(pairs, counts):
    """The no-slow targets, decided on the medians of the interleaved pairs."""
    lines = []
    for n in counts:
        for field, what, limit, meets in (
                ("conns_per_s", "conn/s (no work)", TARGET_KERNEL_RATE,
                 lambda v: v >= TARGET_KERNEL_RATE),
                ("worker_us_per_conn", "worker CPU per connection", TARGET_KERNEL_WORKER_CPU,
                 lambda v: v <= TARGET_KERNEL_WORKER_CPU)):
            ratios = pair_ratios(pairs, n, field)
            if not ratios:
                continue
            v = statistics.median(ratios)
            plain = pair_medians(pairs, n, "reuseport", field)
            least = pair_medians(pairs, n, "reuseport-least", field)
            unit = "" if field == "conns_per_s" else " µs"
            sign = "≥" if field == "conns_per_s" else "≤"
            lines.append(
                f"- reuseport-least-{n} / reuseport-{n} {what}, median of {len(ratios)} "
                f"interleaved pairs: {v:.2f}× (pairs {min(ratios):.2f}–{max(ratios):.2f}×; "
                f"medians {least:,.1f} vs {plain:,.1f}{unit}; target {sign} {limit}×): "
                f"{'met' if meets(v) else 'MISSED'}")
    return lines


def kernel_balancer_lines(rows, counts, slowed, pairs=()):
    """The kernel balancer's targets: against plain reuseport (on the
    interleaved pairs when there are some, else on the matrix's single
    rows), and in the slowed-worker scenario against dispatch least."""
    lines = kernel_pair_lines(pairs, counts)
    by = by_config(rows)
    for n in counts if not lines else ():
        plain, least = by.get(f"reuseport-{n}"), by.get(f"reuseport-least-{n}")
        if not (plain and least and plain["conns_per_s"]):
            continue
        rate = least["conns_per_s"] / plain["conns_per_s"]
        lines.append(f"- reuseport-least-{n} / reuseport-{n} conn/s (no work): {rate:.2f}× "
                     f"(target ≥ {TARGET_KERNEL_RATE}×): "
                     f"{'met' if rate >= TARGET_KERNEL_RATE else 'MISSED'}")
        if plain["worker_us_per_conn"] and least["worker_us_per_conn"]:
            cpu = least["worker_us_per_conn"] / plain["worker_us_per_conn"]
            lines.append(f"- reuseport-least-{n} / reuseport-{n} worker CPU per connection: "
                         f"{least['worker_us_per_conn']:.1f} vs "
                         f"{plain['worker_us_per_conn']:.1f} µs = {cpu:.2f}× (target ≤ "
                         f"{TARGET_KERNEL_WORKER_CPU}×): "
                         f"{'met' if cpu <= TARGET_KERNEL_WORKER_CPU else 'MISSED'}")
    kernel, least = slowed.get("slowed-reuseport-least"), slowed.get("slowed-least")
    if kernel and kernel.get("slow_share") is not None:
        share = kernel["slow_share"]
        lines.append(f"- slowed worker's share, reuseport-least: {share:.0%} (target ≤ "
                     f"{TARGET_KERNEL_SLOW_SHARE:.0%}): "
                     f"{'met' if share <= TARGET_KERNEL_SLOW_SHARE else 'MISSED'}")
        if least and least["p99_us"]:
            v = kernel["p99_us"] / least["p99_us"]
            lines.append(f"- slowed worker, p99 of reuseport-least vs dispatch least: "
                         f"{kernel['p99_us'] / 1000:.1f} vs {least['p99_us'] / 1000:.1f} ms = "
                         f"{v:.2f}× (target ≤ {TARGET_KERNEL_SLOW_P99}×): "
                         f"{'met' if v <= TARGET_KERNEL_SLOW_P99 else 'MISSED'}")
    return lines


def table(rows):
    out = ["| configuration | conn/s | × baseline | p50 ms | p99 ms | errors | master µs/conn "
           "| worker µs/conn | master CPU % | workers CPU % | bench µs/conn (% core) "
           "| fds/packet | switches/conn master / workers | RSS master / worker MiB "
           "| other CPU % |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ratio = r.get("ratio_to_baseline")
        out.append(
            f"| {r['config']} | {fmt(r['conns_per_s'], 0)} | {fmt(ratio, 2)} "
            f"| {r['p50_us'] / 1000:.2f} | {r['p99_us'] / 1000:.2f} | {r['errors']} "
            f"| {fmt(r['master_us_per_conn'], 2)} | {fmt(r['worker_us_per_conn'])} "
            f"| {fmt(r['master_cpu_pct'], 0)} | {fmt(r['workers_cpu_pct'], 0)} "
            f"| {fmt(r['bench_us_per_conn'])} ({fmt(r['bench_cpu_pct'], 0)}) "
            f"| {fmt(r.get('fds_per_packet'), 2)} "
            f"| {fmt(r['master_switches_per_conn'], 2)} / "
            f"{fmt(r['worker_switches_per_conn'], 2)} "
            f"| {B.mib(r['master_rss_kib'])} / {B.mib(r['worker_rss_kib'])} "
            f"| {fmt(r['other_cpu_pct'], 0)} |")
    return out


def write_summary(path, rows, bursts, ctx, notes, counts, works, pairs=()):
    args = ctx.args
    steady = [r for r in rows if r["kind"] == "steady"]
    out = ["# handoff designs compared", ""]
    out.append(
        f"This machine has {os.cpu_count()} cores: the load generator takes most of one, so "
        "conn/s is capped "
        "near what it can drive and the designs differ more in CPU per connection than in "
        "rate. ")
    out[-1] += (
        "Same binaries, same protocol (one new TCP connection per request: connect, send "
        "`hello`, read to EOF, every reply checked), the load generator (handoff-bench, one "
        "thread) sharing the machine's cores. `baseline` is `handoff-bench serve`: threads "
        "that each block in `accept` on one listener and answer on their own (accept4, read, "
        "write, close); `baseline-epoll` is `handoff-bench serve --epoll`: a mio loop per "
        "thread on its own SO_REUSEPORT listener, accepting until EAGAIN per wake-up. "
        "`× baseline` divides by the faster of the two (same thread count and work). "
        "Dispatch designs: the master accepts and hands each fd to a worker (`rr` round-robin, "
        "`least` fewest in flight, `pull` only workers with free capacity, "
        f"`rr-b{args.batch_size}` rr with `--batch {args.batch_size}`); `shared`: workers "
        "accept on the master's listening socket (EPOLLEXCLUSIVE); `reuseport`: each worker "
        "its own SO_REUSEPORT listener. The suffix is the number of workers (baseline: "
        f"threads). Each configuration: {args.warmup:g} s warm-up, {args.window:g} s measured; "
        "CPU per process over exactly the measured window (schedstat), per-connection "
        "figures divide by correct replies; `worker` is all workers together (baseline: its "
        "threads). `fds/packet`: connections per hand-off `sendmsg` in the window (master "
        "counters).")
    out.append("")
    out.append("Work settings:")
    out.append("")
    out.append(f"- **none**: no simulated work, concurrency {args.concurrency}.")
    out.append(f"- **cpu**: every worker (and baseline thread) burns {args.work_us} µs of CPU per "
               f"request, concurrency {args.concurrency}.")
    out.append(f"- **delay**: every worker replies {args.delay_ms} ms late without blocking, "
               f"concurrency {args.delay_concurrency}: Little's law alone would allow "
               f"{args.delay_concurrency} / {args.delay_ms / 1000:g} s = "
               f"{args.delay_concurrency * 1000 / args.delay_ms:,.0f} conn/s, more than this "
               f"machine serves, so the rate measures the servers (and p50 − {args.delay_ms} ms "
               f"is queueing). `pull` gets `--capacity` = clients / workers there (a pool that "
               f"can hold every client); elsewhere its default, 1 (Pool semantics). The "
               f"baseline's threads block, so it has no delay variant.")
    out.append("")
    out.extend(B.verdict_section([r for r in rows if r["kind"] in ("steady", "slowed")]))
    out.append("")
    out.append("![every configuration: throughput and CPU per connection](chart.svg)")
    out.append("")
    for work in works:
        group = [r for r in steady if r["work"].split()[0] == work]
        if not group:
            continue
        label = group[0]["work"]
        out.append(f"## Work: {label}, concurrency {group[0]['concurrency']}")
        out.append("")
        out.extend(table(group))
        out.append("")
    if bursts:
        out.append("## Burst: the dispatch master's cost with every connection already "
                   f"queued, --batch 1 vs --batch {args.batch_size} vs the reference master")
        out.append("")
        first = next(iter(bursts.values()))[0]
        out.append(f"rr with {first['workers']} workers (`rr-bK`: `--batch K`) and the reference "
                   f"master with as many, each master stopped (SIGSTOP) while "
                   f"{first['concurrency']} clients connect and send into its backlog; then "
                   "resumed (SIGCONT) and its CPU measured (schedstat) until all are answered. "
                   "The servers run side by side and are measured in turn, the order "
                   "alternating between rounds, after one warm-up burst each that is not "
                   "counted; the median repetition is reported.")
        out.append("")
        out.extend(B.burst_table(bursts))
        out.append("")
        steady_pairs = []
        for n in counts:
            a = next((r for r in steady if r["config"] == f"rr-{n}"), None)
            b = next((r for r in steady if r["config"] == f"rr-b{args.batch_size}-{n}"), None)
            if a and b:
                steady_pairs.append(
                    f"- steady, no work, {n} workers: rr {fmt(a['master_us_per_conn'], 2)} µs "
                    f"({fmt(a['fds_per_packet'], 2)} fds/packet) vs rr-b{args.batch_size} "
                    f"{fmt(b['master_us_per_conn'], 2)} µs ({fmt(b['fds_per_packet'], 2)} "
                    "fds/packet) of master CPU per connection.")
        if steady_pairs:
            out.append("Under the steady load there is less to batch:")
            out.append("")
            out.extend(steady_pairs)
            out.append("")
    slowed = [r for r in rows if r["kind"] == "slowed"]
    if slowed:
        out.append("## One slowed worker: rr vs least vs pull, dispatch vs reuseport")
        out.append("")
        out.append(
            f"`handoff-master --workers 1 --delay-ms {args.delay_ms} --policy P --capacity C` "
            f"plus one worker started by hand, `handoff-worker --run-dir DIR --delay-ms "
            f"{args.delay_ms} --work-us {args.slow_work_us} --max-conns C`: it burns "
            f"{args.slow_work_us} µs per request in its event loop, so it can serve at most "
            f"{1e6 / args.slow_work_us:,.0f} requests/s and its other connections wait "
            f"meanwhile. {args.slow_concurrency} clients, {args.slow_window:g} s measured. "
            f"C = 0 is no cap (rr and least as they come); capacity-limited workers take at "
            f"most C = {args.slow_capacity} connections each, the rest waits in the master. "
            "Mode `reuseport`: the same with `--mode reuseport` (policy rr: the kernel's hash; "
            "least and pull: the kernel balancer's eBPF program). "
            "`slow share`: the slowed worker's part of the connections in the window; "
            "handling p99: receipt to close, per worker over its life (from `workers`).")
        out.append("")
        out.append("| mode | policy | capacity | conn/s | p50 ms | p90 ms | p99 ms | max ms "
                   "| errors | slow share | handling p99 ms fast / slowed worker |")
        out.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in slowed:
            out.append(
                f"| {r['mode']} | {r['policy']} | {r['capacity'] or 'none'} "
                f"| {fmt(r['conns_per_s'], 0)} "
                f"| {r['p50_us'] / 1000:.1f} | {r['p90_us'] / 1000:.1f} "
                f"| {r['p99_us'] / 1000:.1f} | {r['max_us'] / 1000:.1f} | {r['errors']} "
                f"| {fmt(r['slow_share'] * 100 if r['slow_share'] is not None else None, 0)}% "
                f"| {fmt(ms(r['fast_handling_p99_us']))} / "
                f"{fmt(ms(r['slow_handling_p99_us']))} |")
        out.append("")
    listed = ([r for r in steady if r["mode"] == "dispatch" and r["work"] == "none"]
              + [r for r in rows if r["kind"] == "burst" and not B.is_refmaster(r)])
    out.extend(B.reference_section(rows, listed, *checked_against_reference(rows, args)))
    out.append("")
    if pairs:
        out.append("## The kernel balancer against plain reuseport, interleaved pairs")
        out.append("")
        out.append("Plain `reuseport` and `reuseport --policy least`, no work, concurrency "
                   f"{args.concurrency}, {args.kernel_pair_window:g} s each, one after the "
                   "other and the order flipped every pair; the targets are decided on the "
                   "median of the pairs' ratios (kernel_pairs.csv has every run).")
        out.append("")
        out.append("| workers | pair | conn/s plain | conn/s least | ratio | worker µs/conn plain "
                   "| worker µs/conn least | ratio | switches/conn plain / least |")
        out.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for n in counts:
            for i in sorted({p["pair"] for p in pairs if p["workers"] == n}):
                two = {p["design"]: p for p in pairs if p["workers"] == n and p["pair"] == i}
                a, b = two.get("reuseport"), two.get("reuseport-least")
                if not (a and b):
                    continue
                def ratio(field):
                    return (f"{b[field] / a[field]:.2f}×" if a.get(field) and b.get(field)
                            else "–")
                out.append(
                    f"| {n} | {i} | {fmt(a['conns_per_s'], 0)} | {fmt(b['conns_per_s'], 0)} "
                    f"| {ratio('conns_per_s')} | {fmt(a['worker_us_per_conn'])} "
                    f"| {fmt(b['worker_us_per_conn'])} | {ratio('worker_us_per_conn')} "
                    f"| {fmt(a['worker_switches_per_conn'], 2)} / "
                    f"{fmt(b['worker_switches_per_conn'], 2)} |")
        out.append("")
    out.append("## Targets")
    out.append("")
    out.extend(target_lines(rows, counts, args, pairs))
    out.append("")
    for r in steady:
        if r["other_cpu_pct"] is not None and r["other_cpu_pct"] > 15:
            notes.append(f"{r['config']}: {r['other_cpu_pct']:.0f}% of a core was busy outside "
                         "the measured processes during its window; its numbers may be "
                         "disturbed — re-run to compare.")
    def fact(k, v):
        if k == "settings":
            return (f"designs {','.join(args.designs)}; workers {','.join(map(str, counts))}; "
                    f"works {','.join(works)}; warm-up {args.warmup} s, window {args.window} s, "
                    f"bench threads {args.bench_threads}, payload 5 B (`hello`)")
        return v
    B.notes_and_machine(out, notes, ctx, fact, skip=("python", "loguru"))
    out.append("")
    with open(path, "w") as f:
        f.write("\n".join(out))


def ms(us):
    return us / 1000 if us is not None else None


# ---------------------------------------------------------------- main

def run(ctx, mode, progress, out_dir, parser):
    """Runs the suite; returns (problems, notes) after writing the outputs."""
    args = ctx.args
    (d_designs, d_counts, d_works, d_window, d_warmup, d_burst, d_reps, d_slow_window,
     slowed_plan, d_pairs, d_limit) = defaults(mode)
    args.designs = (parse_list(args.designs, DESIGNS, "design", parser) if args.designs
                    else d_designs)
    counts = ([int(x) for x in parse_list(args.worker_counts, None, "count", parser)]
              if args.worker_counts else d_counts)
    works = parse_list(args.works, WORKS, "work setting", parser) if args.works else d_works
    args.window = args.window if args.window is not None else d_window
    args.warmup = args.warmup if args.warmup is not None else d_warmup
    args.slow_window = args.slow_window if args.slow_window is not None else d_slow_window
    burst_clients = args.burst if args.burst is not None else d_burst
    burst_reps = args.burst_reps if args.burst_reps is not None else d_reps
    time_limit = args.time_limit if args.time_limit is not None else d_limit
    kernel_pairs = args.kernel_pairs if args.kernel_pairs is not None else d_pairs
    if not {"reuseport", "reuseport-least"} <= set(args.designs) or "none" not in works:
        kernel_pairs = 0
    if args.no_slowed:
        slowed_plan = []
    if any(n < 1 for n in counts) or args.batch_size < 2 or args.batch_size > 252:
        parser.error("worker counts must be ≥ 1 and --batch-size within 2..252")

    specs = [Spec(design, n, work, args) for work in works for n in counts
             for design in args.designs
             if not (design.startswith("baseline") and work == "delay")
             and not (design == "refmaster" and work != "none")]
    # Seconds each step takes, about (start, probe, stop included).
    per_config = args.window + args.warmup + 1.0
    pair_run = args.kernel_pair_window + PAIR_WARMUP + 1.0
    reserved = ((1.5 + 1.0 * burst_reps) * 3 if burst_clients > 0 else 0) + \
        len(slowed_plan) * (args.slow_window + args.warmup + 1.5) + \
        kernel_pairs * 2 * len(counts) * pair_run
    started = time.monotonic()
    rows, notes, bursts, pairs = [], [], {}, []
    if mode == "smoke":
        notes.append("smoke run: tiny window, (by default) debug binaries — it checks that the "
                     "pipeline works; its numbers mean nothing")
    try:
        for i, spec in enumerate(specs, 1):
            spent = time.monotonic() - started
            if spent + per_config + reserved > time_limit:
                notes.append(f"{spec.config} skipped: the {time_limit:.0f} s time limit")
                progress(f"[{i}/{len(specs)}] {spec.config}: skipped (time limit)")
                continue
            progress(f"[{i}/{len(specs)}] {spec.config}: warm up {args.warmup:g} s, measure "
                     f"{args.window:g} s at concurrency {spec.concurrency}")
            try:
                row = measure(lambda: steady_run(spec, ctx), spec.config, notes, progress)
            except (RuntimeError, OSError, ValueError, KeyError) as err:
                notes.append(f"{spec.config} failed: {err}")
                progress(f"  FAILED: {err}")
                continue
            rows.append(row)
            progress(f"  {row['conns_per_s']:,.0f} conn/s, {row['errors']} errors, p99 "
                     f"{row['p99_us'] / 1000:.1f} ms, master {fmt(row['master_us_per_conn'], 2)}"
                     f" µs/conn, workers {fmt(row['worker_us_per_conn'])} µs/conn, bench "
                     f"{fmt(row['bench_us_per_conn'])} µs/conn")
        if kernel_pairs:
            pairs = kernel_pair_runs(ctx, counts, kernel_pairs, notes, progress)
        if burst_clients > 0:
            bw = args.burst_workers
            servers = [(f"rr-b{k}-{bw}", lambda k=k: start_burst_master(ctx, k))
                       for k in (1, args.batch_size)]
            servers.append((f"refmaster-{bw}",
                            lambda: B.start_refmaster(ctx, f"burst-refmaster-{bw}", bw)))
            progress(f"bursts: {', '.join(label for label, _ in servers)} in turn, "
                     f"{burst_clients} clients into the stopped master's backlog, "
                     f"{burst_reps} time(s) each")
            bursts, failures = B.burst_runs(ctx, servers, burst_clients, burst_reps)
            notes.extend(failures)
            for label, (row, _) in bursts.items():
                if label.startswith("refmaster-"):
                    row.update(design="refmaster", mode="refmaster", policy="", batch="",
                               work="none")
                else:
                    k = int(label.split("-")[1][1:])
                    row.update(design=f"rr-b{k}", mode="dispatch", policy="rr", batch=k,
                               work="none")
                rows.append(row)
        for policy, capped in slowed_plan:
            label = f"{policy}" + (f" --capacity {args.slow_capacity}" if capped else "")
            progress(f"slowed worker: {label}, {args.slow_concurrency} clients, delay "
                     f"{args.delay_ms} ms, one worker +{args.slow_work_us} µs/request, measure "
                     f"{args.slow_window:g} s")
            try:
                row = measure(lambda: slowed_run(ctx, policy, capped), f"slowed {label}", notes,
                              progress)
            except (RuntimeError, OSError, ValueError, KeyError) as err:
                notes.append(f"slowed {label} failed: {err}")
                progress(f"  FAILED: {err}")
                continue
            rows.append(row)
            progress(f"  {row['conns_per_s']:,.0f} conn/s, p99 {row['p99_us'] / 1000:.1f} ms, "
                     f"slowed worker share {fmt((row['slow_share'] or 0) * 100, 0)}%")
    except KeyboardInterrupt as err:
        notes.append(f"interrupted ({err})")
        progress(f"interrupted ({err}); stopping everything")
    finally:
        ctx.reaper.kill_all()

    for r in rows:
        base = faster_baseline(rows, r)
        if r["kind"] == "steady" and base:
            r["ratio_to_baseline"] = r["conns_per_s"] / base["conns_per_s"]
    B.add_reference_ratios(rows)
    B.write_csv(os.path.join(out_dir, "results.csv"), rows, FIELDS)
    if pairs:
        B.write_csv(os.path.join(out_dir, "kernel_pairs.csv"), pairs, ["pair", *FIELDS])
    with open(os.path.join(out_dir, "chart.svg"), "w") as f:
        f.write(svgchart.render_modes(rows, works, batch_bursts(rows, args),
                                      args.delay_concurrency))
    write_summary(os.path.join(out_dir, "summary.md"), rows, bursts, ctx, notes, counts, works,
                  pairs)
    progress(f"done in {time.monotonic() - started:.0f} s of measuring; wrote {out_dir}/"
             "{results.csv,summary.md,chart.svg}")
    if mode != "smoke":
        for line in (B.reference_target_lines(rows, *checked_against_reference(rows, args))
                     + target_lines(rows, counts, args, pairs)):
            print(line)
    return B.verify(out_dir, FIELDS), notes, rows


# Warm-up of each run of an interleaved pair, seconds.
PAIR_WARMUP = 0.5


def kernel_pair_runs(ctx, counts, reps, notes, progress):
    """Plain reuseport and reuseport-least (no work), one after the other,
    `reps` times per worker count, with the order flipped every pair: one
    run each decides nothing when the run-to-run noise is as large as the
    margins (it was: 0.88× in one run, 1.10× in the next)."""
    args = ctx.args
    short = namespace(args, window=args.kernel_pair_window, warmup=PAIR_WARMUP)
    short.designs = args.designs
    out = []
    for n in counts:
        specs = [Spec("reuseport", n, "none", short), Spec("reuseport-least", n, "none", short)]
        progress(f"kernel pairs: reuseport-{n} and reuseport-least-{n} in turn, {reps} times, "
                 f"{args.kernel_pair_window:g} s each")
        ctx.args = short
        try:
            for i in range(reps):
                for spec in specs if i % 2 == 0 else specs[::-1]:
                    try:
                        row = measure(lambda: steady_run(spec, ctx), f"pair {i} {spec.config}",
                                      notes, progress)
                    except (RuntimeError, OSError, ValueError, KeyError) as err:
                        notes.append(f"pair {i} {spec.config} failed: {err}")
                        continue
                    row["pair"] = i
                    out.append(row)
                ratios = pair_ratios(out, n, "worker_us_per_conn")
                rates = pair_ratios(out, n, "conns_per_s")
                if ratios and rates:
                    progress(f"  pair {i}: conn/s {rates[-1]:.2f}×, worker CPU {ratios[-1]:.2f}×")
        finally:
            ctx.args = args
    return out


# Runs a measurement again while something else kept the machine busy
# (shared with the cluster suite).
measure = B.measure


def start_burst_master(ctx, batch):
    proc, addr, _ = B.start_master(ctx, f"burst-b{batch}", ctx.args.burst_workers,
                                   ["--mode", "dispatch", "--policy", "rr", "--batch", str(batch)])
    return proc, addr, ctx.args.burst_workers
