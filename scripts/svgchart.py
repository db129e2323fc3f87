"""A dependency-free SVG chart for compare.py.

Left: connections/s per configuration (linear). Right: master vs worker CPU
µs per connection per configuration, side by side (log scale, since the
Python servers cost ~100× more), plus the burst master cost when measured.
"""

import math
import os
from xml.sax.saxutils import escape

W, H = 1100, 460
TOP, BOTTOM = 60, 110
MASTER, WORKER, THROUGHPUT, BURST = "#d62728", "#1f77b4", "#2ca02c", "#ff7f0e"


def _text(x, y, s, size=12, anchor="middle", rotate=None, weight="normal", fill="#222"):
    tr = f' transform="rotate({rotate} {x:.1f} {y:.1f})"' if rotate is not None else ""
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" '
            f'font-weight="{weight}" fill="{fill}"{tr}>{escape(str(s))}</text>')


def _nice_max(v):
    if v <= 0:
        return 1.0
    mag = 10 ** math.floor(math.log10(v))
    for m in (1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        if v <= m * mag:
            return m * mag
    return 10 * mag


def _short(v):
    if v == 0:
        return "0"
    if v >= 1e6:
        return f"{v / 1e6:.1f}M"
    if v >= 1e4:
        return f"{v / 1e3:.0f}k"
    if v >= 1e3:
        return f"{v / 1e3:.1f}k"
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def _throughput(rows, x0, width):
    out = [_text(x0 + width / 2, 30, "Connections per second (concurrency "
                 f"{rows[0]['concurrency'] if rows else '?'})", 15, weight="bold")]
    plot_h = H - TOP - BOTTOM
    top = _nice_max(max((r["conns_per_s"] for r in rows), default=1))
    for k in range(6):
        v = top * k / 5
        y = TOP + plot_h - plot_h * k / 5
        out.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x0 + width}" y2="{y:.1f}" '
                   f'stroke="#ddd"/>')
        out.append(_text(x0 - 6, y + 4, _short(v), 11, "end"))
    n = max(len(rows), 1)
    slot = width / n
    for i, r in enumerate(rows):
        h = plot_h * r["conns_per_s"] / top
        x = x0 + i * slot + slot * 0.15
        out.append(f'<rect x="{x:.1f}" y="{TOP + plot_h - h:.1f}" width="{slot * 0.7:.1f}" '
                   f'height="{h:.1f}" fill="{THROUGHPUT}"/>')
        out.append(_text(x + slot * 0.35, TOP + plot_h - h - 5, _short(r["conns_per_s"]), 11))
        out.append(_text(x + slot * 0.35, TOP + plot_h + 14, r["config"], 11, "end", rotate=-35))
    return out


def _cpu(rows, burst, x0, width):
    out = [_text(x0 + width / 2, 30, "CPU µs per connection (log scale)", 15, weight="bold")]
    groups = [(r["config"], r.get("master_us_per_conn"), r.get("worker_us_per_conn"))
              for r in rows]
    if burst:
        groups.append((burst["config"], burst.get("master_us_per_conn"), None))
    values = [v for _, m, w in groups for v in (m, w) if v]
    # A decade of room below the smallest bar, so it is still visible.
    lo = 10 ** math.floor(math.log10(min(values) / 3)) if values else 1
    hi = 10 ** math.ceil(math.log10(max(values))) if values else 10
    if hi <= lo:
        hi = lo * 10
    plot_h = H - TOP - BOTTOM

    def y_of(v):
        frac = (math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))
        return TOP + plot_h - plot_h * frac

    decade = lo
    while decade <= hi * 1.0001:
        y = y_of(decade)
        out.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x0 + width}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(_text(x0 - 6, y + 4, _short(decade), 11, "end"))
        decade *= 10
    n = max(len(groups), 1)
    slot = width / n
    bar = slot * 0.36
    for i, (name, master, worker) in enumerate(groups):
        gx = x0 + i * slot + slot * 0.14
        is_burst = name.endswith("-burst")
        label_ys = []
        for j, (v, color) in enumerate(((master, BURST if is_burst else MASTER),
                                        (worker, WORKER))):
            if not v:
                continue
            y = y_of(max(v, lo))
            x = gx + j * bar
            out.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar * 0.95:.1f}" '
                       f'height="{TOP + plot_h - y:.1f}" fill="{color}"/>')
            ly = y - 4
            if label_ys and abs(label_ys[0] - ly) < 12:
                ly = min(ly, label_ys[0]) - 12  # keep side-by-side labels apart
            label_ys.append(ly)
            out.append(_text(x + bar / 2, ly, _short(v), 10))
        out.append(_text(gx + bar, TOP + plot_h + 14, name, 11, "end", rotate=-35))
    ly = H - 18
    for k, (label, color) in enumerate((("master", MASTER), ("all workers", WORKER),
                                        ("master, burst (all queued)", BURST))):
        lx = x0 + k * 150
        out.append(f'<rect x="{lx}" y="{ly - 10}" width="12" height="12" fill="{color}"/>')
        out.append(_text(lx + 17, ly, label, 11, "start"))
    return out


def render(rows, burst):
    """The SVG document for the steady `rows` and the optional `burst` row."""
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
             f'viewBox="0 0 {W} {H}" font-family="DejaVu Sans, Arial, sans-serif">',
             f'<rect width="{W}" height="{H}" fill="white"/>']
    parts += _throughput(rows, 70, 430)
    parts += _cpu(rows, burst, 620, 450)
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------- the modes suite: every design

BASELINE, DISPATCH, SELF_ACCEPT, SLOWED = "#7f7f7f", "#2ca02c", "#9467bd", "#8c564b"
BENCH, OTHER, DISTURBED = "#bcbd22", "#c7c7c7", "#fde0dd"
# More than this (% of one core) busy outside the measured processes: the
# configuration's numbers may be disturbed (benchlib.OTHER_CPU_LIMIT).
DISTURBED_ABOVE = 15.0


def _disturbed_shade(x, y, width, height):
    """The pink background and label of a disturbed configuration."""
    return [f'<rect x="{x:.1f}" y="{y:.1f}" width="{width:.1f}" height="{height:.1f}" '
            f'fill="{DISTURBED}"/>',
            _text(x + width / 2, y + 10, "disturbed", 8, fill="#a50f15")]


def disturbed(row):
    other = row.get("other_cpu_pct")
    return other is not None and other > DISTURBED_ABOVE


def _family(design):
    if design.startswith("baseline"):
        return BASELINE
    if design in ("shared", "reuseport"):
        return SELF_ACCEPT
    return DISPATCH


def _panel(x0, y0, width, height, title, groups, log=False, unit="", shaded=()):
    """Grouped bars: `groups` is [(label, [(value or None, color), ...])];
    a bar may carry a range, (value, color, low, high), drawn as a
    whisker. Groups whose index is in `shaded` get a pink background and
    the word "disturbed" (the machine was busy elsewhere meanwhile)."""
    out = [_text(x0 + width / 2, y0 + 18, title, 14, weight="bold")]
    top_y, plot_h = y0 + 40, height - 40 - 95
    values = [x for _, bars in groups for bar in bars for x in (bar[0], *bar[2:]) if x]
    if not values:
        out.append(_text(x0 + width / 2, top_y + plot_h / 2, "not measured", 12))
        return out
    if log:
        lo = 10 ** math.floor(math.log10(min(values) / 3))
        hi = 10 ** math.ceil(math.log10(max(values)))
        hi = hi if hi > lo else lo * 10

        def y_of(v):
            v = max(v, lo)
            return top_y + plot_h - plot_h * (math.log10(v) - math.log10(lo)) / (
                math.log10(hi) - math.log10(lo))
        ticks, t = [], lo
        while t <= hi * 1.0001:
            ticks.append(t)
            t *= 10
    else:
        hi = _nice_max(max(values))

        def y_of(v):
            return top_y + plot_h - plot_h * v / hi
        ticks = [hi * k / 5 for k in range(6)]
    for t in ticks:
        y = y_of(t)
        out.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x0 + width}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(_text(x0 - 5, y + 4, _short(t) + unit, 10, "end"))
    slot = width / max(len(groups), 1)
    for i, (label, bars) in enumerate(groups):
        n = max(len(bars), 1)
        bar = slot * 0.8 / n
        gx = x0 + i * slot + slot * 0.1
        if i in shaded:
            out += _disturbed_shade(x0 + i * slot, top_y, slot, plot_h)
        last_ly = None
        for j, (v, color, *whisker) in enumerate(bars):
            if not v:
                continue
            y = y_of(v)
            x = gx + j * bar
            out.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar * 0.92:.1f}" '
                       f'height="{top_y + plot_h - y:.1f}" fill="{color}"/>')
            if len(whisker) == 2 and all(whisker):
                lo_y, hi_y, cx = y_of(whisker[0]), y_of(whisker[1]), x + bar * 0.46
                out.append(f'<line x1="{cx:.1f}" y1="{lo_y:.1f}" x2="{cx:.1f}" y2="{hi_y:.1f}" '
                           'stroke="#222" stroke-width="1.5"/>')
                for wy in (lo_y, hi_y):
                    out.append(f'<line x1="{cx - 5:.1f}" y1="{wy:.1f}" x2="{cx + 5:.1f}" '
                               f'y2="{wy:.1f}" stroke="#222" stroke-width="1.5"/>')
                y = min(y, hi_y)
            ly = y - 3
            if last_ly is not None and abs(last_ly - ly) < 10:
                ly = min(ly, last_ly) - 10
            last_ly = ly
            out.append(_text(x + bar / 2, ly, _short(v), 8 if n > 1 else 9))
        out.append(_text(gx + slot * 0.4, top_y + plot_h + 12, label, 10, "end", rotate=-40))
    return out


def _stacked(x0, y0, width, height, title, groups, total, shaded=()):
    """Stacked bars on a linear axis up to `total`: `groups` is [(label,
    [(value or None, color), ...])], stacked bottom to top."""
    out = [_text(x0 + width / 2, y0 + 18, title, 14, weight="bold")]
    top_y, plot_h = y0 + 40, height - 40 - 95
    if not groups:
        out.append(_text(x0 + width / 2, top_y + plot_h / 2, "not measured", 12))
        return out

    def y_of(v):
        return top_y + plot_h - plot_h * min(v, total) / total
    for k in range(5):
        t = total * k / 4
        y = y_of(t)
        out.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x0 + width}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(_text(x0 - 5, y + 4, f"{t:.0f}%", 10, "end"))
    slot = width / len(groups)
    for i, (label, parts) in enumerate(groups):
        gx = x0 + i * slot + slot * 0.15
        if i in shaded:
            out += _disturbed_shade(x0 + i * slot, top_y, slot, plot_h)
        base = 0.0
        for v, color in parts:
            if not v or v <= 0:
                continue
            y_top, y_bottom = y_of(base + v), y_of(base)
            out.append(f'<rect x="{gx:.1f}" y="{y_top:.1f}" width="{slot * 0.7:.1f}" '
                       f'height="{y_bottom - y_top:.1f}" fill="{color}"/>')
            base += v
        out.append(_text(gx + slot * 0.35, y_of(base) - 3, f"{base:.0f}", 8))
        out.append(_text(gx + slot * 0.35, top_y + plot_h + 12, label, 10, "end", rotate=-40))
    return out


def cpu_shares(row):
    """Master, workers, load generator and the rest, in % of one core."""
    return [(row.get("master_cpu_pct"), MASTER), (row.get("workers_cpu_pct"), WORKER),
            (row.get("bench_cpu_pct"), BENCH), (row.get("other_cpu_pct"), OTHER)]


def render_modes(rows, works, bursts, delay_concurrency):
    """One SVG with every configuration of the modes suite: per work setting,
    conn/s and master vs worker CPU µs per connection; then the --batch burst
    and the slowed-worker p99."""
    steady = [r for r in rows if r["kind"] == "steady"]
    slowed = [r for r in rows if r["kind"] == "slowed"]
    row_h, W5 = 330, 1500
    sections = [w for w in works if any(r["work"].split()[0] == w for r in steady)]
    height = 60 + row_h * (len(sections) + 2) + 50
    cores = os.cpu_count() or 1
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W5}" height="{height}" '
             f'viewBox="0 0 {W5} {height}" font-family="DejaVu Sans, Arial, sans-serif">',
             f'<rect width="{W5}" height="{height}" fill="white"/>',
             _text(W5 / 2, 26, "handoff designs: throughput and CPU per connection "
                   "(2 numbers per CPU group: master, all workers)", 16, weight="bold")]
    y0 = 50
    for work in sections:
        group = [r for r in steady if r["work"].split()[0] == work]
        label = group[0]["work"]
        conc = group[0]["concurrency"]
        shaded = {i for i, r in enumerate(group) if disturbed(r)}
        parts += _panel(70, y0, 640, row_h, f"conn/s — work: {label}, concurrency {conc}",
                        [(r["config"].split("+")[0], [(r["conns_per_s"], _family(r["design"]))])
                         for r in group], shaded=shaded)
        parts += _panel(800, y0, 670, row_h, f"CPU µs per connection (log) — work: {label}",
                        [(r["config"].split("+")[0],
                          [(r["master_us_per_conn"], MASTER), (r["worker_us_per_conn"], WORKER)])
                         for r in group], log=True, shaded=shaded)
        y0 += row_h
    # Where the CPU goes: per configuration, stacked, as % of one core, up
    # to the machine's cores.
    panel_w = (1400 - 60 * (len(sections) - 1)) / max(len(sections), 1)
    for k, work in enumerate(sections):
        group = [r for r in steady if r["work"].split()[0] == work]
        parts += _stacked(70 + k * (panel_w + 60), y0, panel_w, row_h,
                          f"where the CPU goes, % of a core — {group[0]['work']}",
                          [(r["config"].split("+")[0], cpu_shares(r)) for r in group],
                          100.0 * cores, shaded={i for i, r in enumerate(group) if disturbed(r)})
    y0 += row_h
    burst_rows = sorted((r for r in rows if r["kind"] == "burst"),
                        key=lambda r: (r["mode"] == "refmaster", r.get("batch") or 0))
    burst_groups = [("reference" if r["mode"] == "refmaster" else f"--batch {r['batch']}",
                     [(r["master_us_per_conn"], SLOWED if r["mode"] == "refmaster" else BURST,
                       r.get("burst_min_us"), r.get("burst_max_us"))])
                    for r in burst_rows]
    parts += _panel(70, y0, 300, row_h, "burst: master µs/conn, median and range",
                    burst_groups, shaded={i for i, r in enumerate(burst_rows) if disturbed(r)})
    slow_groups = [(("reuseport " if r["mode"] == "reuseport" else "")
                    + f"{r['policy']} cap {r['capacity'] or 'none'}",
                    [(r["p50_us"] / 1000, "#aec7e8"), (r["p99_us"] / 1000, SLOWED)])
                   for r in slowed]
    parts += _panel(480, y0, 520, row_h, "one slowed worker: p50 / p99 ms", slow_groups)
    ly = y0 + row_h + 10
    legend = (("baseline", BASELINE), ("dispatch (master hands off)", DISPATCH),
              ("shared / reuseport (workers accept)", SELF_ACCEPT), ("master", MASTER),
              ("all workers", WORKER), ("load generator", BENCH), ("other", OTHER),
              ("handoff burst", BURST), ("reference burst / p99", SLOWED), ("p50", "#aec7e8"),
              ("disturbed", DISTURBED))
    lx = 70
    for label, color in legend:
        if lx + 28 + 7 * len(label) > W5 - 20:
            lx, ly = 70, ly + 18
        parts.append(f'<rect x="{lx}" y="{ly - 10}" width="12" height="12" fill="{color}"/>')
        parts.append(_text(lx + 16, ly, label, 11, "start"))
        lx += 28 + 7 * len(label)
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def render_scale(rows):
    """The scale suite: master and worker CPU per connection, and the
    workers' memory per held connection, by held connections; then master
    CPU per connection by worker count, rr, least and the reference master."""
    held = [r for r in rows if r["kind"] == "held"]
    pool = [r for r in rows if r["kind"] == "pool"]
    row_h, width = 340, 1500
    height = 60 + row_h + 40
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" font-family="DejaVu Sans, Arial, sans-serif">',
             f'<rect width="{width}" height="{height}" fill="white"/>',
             _text(width / 2, 26, "The scale curve: what the master and the workers pay as "
                   "the work grows", 16, weight="bold")]
    parts += _panel(70, 50, 480, row_h, "CPU µs per connection, by held connections",
                    [(f"{r['held']:,} held", [(r["master_us_per_conn"], MASTER),
                                              (r["worker_us_per_conn"], WORKER)])
                     for r in held])
    parts += _panel(640, 50, 330, row_h, "workers' bytes per held connection",
                    [(f"{r['held']:,} held", [(r.get("bytes_per_held_conn"), WORKER)])
                     for r in held if r["held"]])
    parts += _panel(1060, 50, 410, row_h, "master µs per connection, by workers",
                    [(f"{r['policy']}, {r['workers']} workers",
                      [(r["master_us_per_conn"], MASTER)]) for r in pool])
    ly = 50 + row_h + 15
    lx = 70
    for label, color in (("master", MASTER), ("all workers", WORKER)):
        parts.append(f'<rect x="{lx}" y="{ly - 10}" width="12" height="12" fill="{color}"/>')
        parts.append(_text(lx + 16, ly, label, 11, "start"))
        lx += 28 + 7 * len(label)
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
