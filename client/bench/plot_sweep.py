#!/usr/bin/env python3
"""Draws attention-bench concurrency sweeps (its --csv output) as one SVG.

Two panels share the x axis (concurrency, log2 scale): requests/s, and p50/p99
latency in ms. With --core data in the CSV, each throughput point is labelled
with its serving efficiency (served / core GFLOP/s).

  plot_sweep.py --out docs/sweep.svg "E=768 L=128=run.csv" "E=64 L=8=small.csv"

Each argument is LABEL=CSV. Plain Python 3, no plotting library.
"""
import argparse
import csv
import math
import sys

COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"]
W, PANEL_H, LEFT, RIGHT, TOP, GAP = 720, 260, 70, 170, 40, 60


def read(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "Concurrency" not in rows[0]:
        sys.exit(f"{path}: not an attention-bench concurrency CSV")
    return rows


def ticks(top):
    """About five round ticks from 0 to at least `top`."""
    if top <= 0:
        return [0, 1]
    step = 10 ** math.floor(math.log10(top / 5))
    for m in (1, 2, 2.5, 5, 10):
        if top / (step * m) <= 6:
            step *= m
            break
    n = math.ceil(top / step)
    return [i * step for i in range(n + 1)]


def panel(out, y0, series, key_sets, title, unit, xs_all):
    xmin, xmax = min(xs_all), max(xs_all)
    lx = lambda x: math.log2(x)
    def px(x):
        span = lx(xmax) - lx(xmin) or 1
        return LEFT + (lx(x) - lx(xmin)) / span * (W - LEFT - RIGHT)
    scale = lambda key: 1 / 1000.0 if "latency" in key else 1.0  # latencies: µs in the CSV, ms here
    top = max((float(r[k]) * scale(k) for s in series for r in s[1] for k, _ in key_sets), default=1)
    ys = ticks(top * 1.1)
    def py(v):
        return y0 + PANEL_H - v / ys[-1] * PANEL_H
    out.append(f'<text x="{LEFT}" y="{y0 - 10}" font-size="13" font-weight="bold">{title}</text>')
    for v in ys:
        out.append(f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{py(v):.1f}" y2="{py(v):.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{LEFT - 6}" y="{py(v) + 4:.1f}" text-anchor="end">{v:g}</text>')
    for x in sorted(set(xs_all)):
        out.append(f'<text x="{px(x):.1f}" y="{y0 + PANEL_H + 16}" text-anchor="middle">{x:g}</text>')
    out.append(f'<text x="{LEFT - 50}" y="{y0 + PANEL_H / 2}" transform="rotate(-90 {LEFT - 50} {y0 + PANEL_H / 2})" text-anchor="middle">{unit}</text>')
    legend_y = y0 + 10
    for i, (label, rows) in enumerate(series):
        colour = COLOURS[i % len(COLOURS)]
        for key, dash in key_sets:
            pts = [(px(float(r["Concurrency"])), py(float(r[key]) * scale(key))) for r in rows]
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
            out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2" stroke-dasharray="{dash}"/>')
            for (x, y), r in zip(pts, rows):
                out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}"/>')
                if key == "Inferences/Second" and float(r.get("Serving Efficiency", 0) or 0) > 0:
                    out.append(f'<text x="{x + 4:.1f}" y="{y - 6:.1f}" font-size="10" fill="{colour}">{100 * float(r["Serving Efficiency"]):.0f}%</text>')
            name = label if len(key_sets) == 1 else f"{label} {key.split()[0]}"
            out.append(f'<line x1="{W - RIGHT + 10}" x2="{W - RIGHT + 30}" y1="{legend_y}" y2="{legend_y}" stroke="{colour}" stroke-width="2" stroke-dasharray="{dash}"/>')
            out.append(f'<text x="{W - RIGHT + 34}" y="{legend_y + 4}" font-size="11">{name}</text>')
            legend_y += 16


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--title", default="attention-server concurrency sweep")
    ap.add_argument("series", nargs="+", help="LABEL=CSV")
    args = ap.parse_args()
    series = []
    for s in args.series:
        label, _, path = s.rpartition("=")
        series.append((label or path, read(path)))
    xs = [float(r["Concurrency"]) for _, rows in series for r in rows]
    h = TOP + 2 * PANEL_H + GAP + 60
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" font-family="sans-serif" font-size="11">',
           f'<rect width="100%" height="100%" fill="white"/>',
           f'<text x="{LEFT}" y="18" font-size="15" font-weight="bold">{args.title}</text>']
    panel(out, TOP + 20, series, [("Inferences/Second", "")],
          "throughput (labels: served ÷ core GFLOP/s)", "requests/s", xs)
    panel(out, TOP + 20 + PANEL_H + GAP, series, [("p50 latency", "4 3"), ("p99 latency", "")],
          "latency", "ms", xs)
    out.append(f'<text x="{(W - RIGHT + LEFT) / 2}" y="{h - 8}" text-anchor="middle">concurrent clients</text>')
    out.append("</svg>")
    with open(args.out, "w") as f:
        f.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
