"""Plots runs/loss.csv (written by train.py) as runs/loss.svg: loss per token against step."""

import csv
import os
import sys

here = os.path.dirname(os.path.abspath(__file__))
path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "runs", "loss.csv")
rows = list(csv.DictReader(open(path)))
series = {"weighted loss": "loss", "plain text (training)": "text_loss", "answer tokens": "answer_loss"}
colors = ["#333333", "#1f77b4", "#d62728"]
W, H, L, R, T, B = 720, 360, 56, 16, 28, 44
steps = [int(r["step"]) for r in rows]
x_max, y_max = max(steps), 7.0
sx = lambda s: L + (W - L - R) * s / x_max  # noqa: E731
sy = lambda v: T + (H - T - B) * (1 - min(v, y_max) / y_max)  # noqa: E731
out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
       "<title>kvc-20m-4k training loss (nats/token) against step</title>",
       f'<rect width="{W}" height="{H}" fill="white"/>']
for v in range(0, 8):
    out.append(f'<line x1="{L}" x2="{W - R}" y1="{sy(v):.1f}" y2="{sy(v):.1f}" stroke="#eee"/><text x="{L - 8}" y="{sy(v) + 4:.1f}" text-anchor="end">{v}</text>')
for s in range(0, x_max + 1, 2500):
    out.append(f'<text x="{sx(s):.1f}" y="{H - B + 16}" text-anchor="middle">{s}</text>')
out.append(f'<text x="{(L + W - R) / 2}" y="{H - 8}" text-anchor="middle">step (16 x 4096 tokens)</text>')
# Each later phase restarts from exported weights with a fresh optimiser and its own schedule:
# the learning rate jumps (down for phase 2, up for phase 9) by more than 3x between two rows.
names = iter(["phase 2", "phase 9"])
for i in range(1, len(rows)):
    a, b = float(rows[i - 1]["lr"]), float(rows[i]["lr"])
    if b < a / 3 or b > a * 3:
        x = sx(steps[i])
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{T}" y2="{H - B}" stroke="#999" stroke-dasharray="4 3"/>'
                   f'<text x="{x + 4:.1f}" y="{T + 12}">{next(names, "restart")}</text>')
for (label, key), color, k in zip(series.items(), colors, range(3)):
    pts = " ".join(f"{sx(int(r['step'])):.1f},{sy(float(r[key])):.1f}" for r in rows)
    out.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.2" points="{pts}"/>')
    out.append(f'<rect x="{W - 200}" y="{T + 8 + 16 * k}" width="12" height="3" fill="{color}"/><text x="{W - 182}" y="{T + 13 + 16 * k}">{label}</text>')
out.append("</svg>")
open(os.path.splitext(path)[0] + ".svg", "w").write("\n".join(out) + "\n")
