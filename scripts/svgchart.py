"""A dependency-free SVG chart for compare.py.

Left: connections/s per configuration (linear). Right: master vs worker CPU
µs per connection per configuration, side by side (log scale, since the
Python servers cost ~100× more), plus the burst master cost when measured.
"""

import math
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
                                        ("master, burst (never sleeps)", BURST))):
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
