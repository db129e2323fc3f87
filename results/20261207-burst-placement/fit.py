"""Ad-hoc: correlate each burst's cost with its host probes (probed.py's JSON);
fits cost = a + b * probe over both servers and prints each server's
max/min before and after scaling every burst to the fast probe (0.75 ms)."""
import json, statistics as st, sys
rows = json.load(open(sys.argv[1]))
def variants(r):
    allmean = sum(r["before"] + r["after"]) / 4
    mcpu = ((r["before"][r["cpu_before"]] + r["after"][r["cpu_after"]]) / 2
            if "cpu_before" in r else allmean)
    mx = max(r["before"] + r["after"]); mn = min(r["before"] + r["after"])
    return dict(allmean=allmean, mastercpu=mcpu, minp=mn, maxp=mx)
for name in ("allmean", "mastercpu", "minp", "maxp"):
    xs = [variants(r)[name] for r in rows]; ys = [r["us"] for r in rows]
    sl, ic = st.linear_regression(xs, ys)
    out = [f"{name:10} corr {st.correlation(xs, ys):.2f} fit {ic:.2f}+{sl:.2f}s"]
    for srv in ("handoff-2", "refmaster-2"):
        rs = [r for r in rows if r["server"] == srv]
        n = sorted(r["us"] * (ic + sl * 0.75) / (ic + sl * variants(r)[name]) for r in rs)
        raw = sorted(r["us"] for r in rs)
        out.append(f"{srv} raw {st.median(raw):.2f} ({raw[-1]/raw[0]:.2f}) norm {st.median(n):.2f} ({n[-1]/n[0]:.2f})")
    print("  ".join(out))
