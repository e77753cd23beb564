"""The study's analysis: per-run records -> paired differences with 95% CIs and p-values, the
accuracy-against-images curves, and how many images of one mode match another's accuracy.

Pure functions over the records ``r1_runs.py`` writes (one JSON per run), so the report can be
redone from ``docs/study/<name>/`` alone.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

PAIRED_AGAINST = ("real", "random", "txt2img")


def load_records(directory: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(Path(directory).glob("*-s*.json"))]


def summarize_records(directory: Path) -> dict:
    """``{(condition, budget_multiple): {seed: record}}`` of the finished runs."""
    table: dict = {}
    for r in load_records(directory):
        table.setdefault((r["condition"], float(r["budget_multiple"])), {})[int(r["seed"])] = r
    return table


def paired(a: dict, b: dict, key: str = "final_test_acc") -> Optional[dict]:
    """Mean of (a - b) over the seeds both have, its 95% CI (t) and the paired t-test's p-value."""
    from scipy import stats

    seeds = sorted(set(a) & set(b))
    if len(seeds) < 2:
        return None
    d = [a[s][key] - b[s][key] for s in seeds]
    n = len(d)
    mean = sum(d) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
    half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    p = 1.0 if sd == 0 else float(stats.ttest_rel([a[s][key] for s in seeds], [b[s][key] for s in seeds]).pvalue)
    wins = sum(x > 0 for x in d)
    return {"n": n, "mean": mean, "ci95": [mean - half, mean + half], "p": p, "wins": wins, "ties": sum(x == 0 for x in d)}


def mean_ci(values: list[float]) -> tuple[float, float]:
    from scipy import stats

    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    sd = math.sqrt(sum((x - mean) ** 2 for x in values) / (n - 1))
    return mean, stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)


def curve(table: dict, condition: str) -> list[tuple[float, float, float, int]]:
    """``[(mean images generated, mean accuracy, CI half-width, runs)]`` over budget multiples,
    starting at real-only training (0 images generated) when the table has it."""
    points = []
    real = table.get(("real", 1.0))
    if real and condition not in ("real", "real-steps"):
        acc, half = mean_ci([r["final_test_acc"] for r in real.values()])
        points.append((0.0, acc, half, len(real)))
    for (c, m), runs in sorted(table.items(), key=lambda kv: kv[0][1]):
        if c != condition or not runs:
            continue
        acc, half = mean_ci([r["final_test_acc"] for r in runs.values()])
        images = sum(r["images_generated"] for r in runs.values()) / len(runs)
        points.append((images, acc, half, len(runs)))
    return points


def images_to_match(points: list[tuple[float, float, float, int]], accuracy: float) -> Optional[float]:
    """Images a mode needs to reach ``accuracy``, linearly interpolated on its mean curve (None if
    its curve never reaches it; 0 when its smallest budget already does)."""
    if not points:
        return None
    for (x0, y0, *_), (x1, y1, *_) in zip(points, points[1:]):
        if y0 >= accuracy:
            return x0
        if y1 >= accuracy:
            return x0 + (accuracy - y0) * (x1 - x0) / (y1 - y0)
    return points[-1][0] if points[-1][1] >= accuracy else None


def write_report(table: dict, out: Path, title: str, budget: int) -> dict:
    out = Path(out)
    lines = [f"# {title}", "", "Final test accuracy per condition and budget (mean over seeds, 95% CI), and the paired "
             "difference against each baseline at the same budget and seed (mean, 95% CI, paired t-test p, "
             "seeds where the condition is higher).", "",
             "| condition | budget × | images | runs | final test acc | Δ vs real | Δ vs random | Δ vs txt2img |",
             "|---|---|---|---|---|---|---|---|"]
    summary = {"conditions": {}, "match": {}}
    for (c, m), runs in sorted(table.items(), key=lambda kv: (kv[0][0] != "real", kv[0][0], kv[0][1])):
        acc, half = mean_ci([r["final_test_acc"] for r in runs.values()])
        images = sum(r["images_generated"] for r in runs.values()) / len(runs)
        cells, entry = [], {"budget_multiple": m, "images": images, "runs": len(runs), "acc": acc, "ci95": half}
        for base in PAIRED_AGAINST:
            other = table.get((base, m)) or table.get((base, 1.0)) if base == "real" else table.get((base, m))
            d = paired(runs, other) if other and base != c else None
            entry[f"vs_{base}"] = d
            cells.append("—" if d is None else f"{100 * d['mean']:+.2f} [{100 * d['ci95'][0]:+.2f}, "
                                               f"{100 * d['ci95'][1]:+.2f}] p={d['p']:.3f} ({d['wins']}/{d['n']})")
        summary["conditions"][f"{c}@{m:g}"] = entry
        lines.append(f"| {c} | {m:g} | {images:.0f} | {len(runs)} | {100 * acc:.2f} ± {100 * half:.2f}% | "
                     + " | ".join(cells) + " |")
    lines += ["", "Images needed to match actgen's mean accuracy at each budget (interpolated on the mean "
              "curve; — = the curve never reaches it):", "",
              "| actgen budget × | actgen images | actgen acc | random images to match | ratio | txt2img images to "
              "match | ratio |", "|---|---|---|---|---|---|---|"]
    for m in sorted(mm for c, mm in table if c == "actgen"):
        runs = table[("actgen", m)]
        images = sum(r["images_generated"] for r in runs.values()) / len(runs)
        acc = sum(r["final_test_acc"] for r in runs.values()) / len(runs)
        row = [f"{images:.0f}", f"{100 * acc:.2f}%"]
        for base in ("random", "txt2img"):
            need = images_to_match(curve(table, base), acc)
            row += ["—" if need is None else f"{need:.0f}", "—" if need is None or images == 0 else f"{need / images:.2f}×"]
            summary["match"].setdefault(base, []).append({"actgen_images": images, "actgen_acc": acc, "images": need})
        lines.append(f"| {m:g} | " + " | ".join(row) + " |")
    text = "\n".join(lines) + "\n"
    (out / "study.md").write_text(text)
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    plot(table, out / "accuracy_vs_images.png", title, budget)
    print(text)
    print(f"wrote {out / 'study.md'}, {out / 'summary.json'}, {out / 'accuracy_vs_images.png'}")
    return summary


def plot(table: dict, path: Path, title: str, budget: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    real = table.get(("real", 1.0))
    if real:
        acc, half = mean_ci([r["final_test_acc"] for r in real.values()])
        ax.axhspan(100 * (acc - half), 100 * (acc + half), color="0.85", zorder=0)
        ax.axhline(100 * acc, color="0.4", lw=1, label=f"real only ({len(real)} seeds, 95% CI)")
    conditions = sorted({c for c, _ in table if c != "real"}, key=lambda c: (c not in ("random", "txt2img", "actgen"), c))
    for i, c in enumerate(conditions):
        pts = curve(table, c)
        if not pts:
            continue
        xs, ys, hs = [p[0] for p in pts], [100 * p[1] for p in pts], [100 * p[2] for p in pts]
        main = c in ("random", "txt2img", "actgen")
        line, = ax.plot(xs, ys, "o-" if len(pts) > 1 else "s", lw=2 if main else 1, ms=5 if main else 4,
                        label=f"{c} ({pts[0][3]} seeds)", alpha=1 if main else 0.7)
        if len(pts) > 1:
            ax.fill_between(xs, [y - h for y, h in zip(ys, hs)], [y + h for y, h in zip(ys, hs)],
                            color=line.get_color(), alpha=0.15)
        else:
            ax.errorbar(xs, ys, yerr=hs, color=line.get_color(), capsize=3, lw=1)
    ax.set_xlabel("synthetic images generated over the run")
    ax.set_ylabel("final test accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
