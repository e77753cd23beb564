"""The R1 study's analysis as docs/study/PLAN.md fixes it, from the committed records alone.

    python -m actgen.study.r1_report            # writes docs/study/r1-report.md, .json, .png

* **Main contrast**: the best variant (``docs/study/r1/choice.json``) minus random generation at
  1x (equal images), paired by (split, seed) over the confirmation splits 1 and 2; each split
  alone too; and the images random generation needs to match the best variant (random's mean
  curve over real-only, 1x and 3x on the confirmation splits, linearly interpolated).
* **Secondary table** (part 1, split 0): every condition minus random at equal images, Holm-
  corrected over all its rows.
* **10-per-class regime** (part 4, ``docs/study/digits``): the new policy and the best variant
  minus random at equal images, Holm-corrected over that table.
* **Default**: the allocation policy never significantly below random (Holm p < 0.05 with a
  negative mean) in any regime where it was measured, with the best mean difference over the
  regimes; measured in fewer than two regimes, a policy cannot show it is never below.
* **Part 6** (when its records exist, ``docs/study/r1-confirm-split0``): the main contrast's
  conditions on split 0 with its refitted generator, 20 seeds: the same difference and images to
  match on that split alone, beside the main contrast and never pooled into it (split 0 chose the
  best variant), and whether the three splits agree in sign.
* **Part 5** (when its records exist): DPM-Solver++ at about half the steps and the adversarial
  decode at half the side against actgen rerun at the same commit, Holm over the two; and
  whether that rerun reproduces part 1's actgen accuracies.
* Per-class synthetic counts and renders per guide from the records' per-round fields.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .r1_stats import curve, images_to_match, mean_ci, paired, summarize_records
from .stats import holm

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "docs" / "study"
POLICIES = {"actgen": "paper", "actgen-balanced": "balanced", "actgen-balanced-train": "balanced (train fill)",
            "actgen-mixed": "mixed"}


def _fmt(d: dict | None, p_key: str = "p") -> str:
    if d is None:
        return "—"
    return (f"{100 * d['mean']:+.2f} [{100 * d['ci95'][0]:+.2f}, {100 * d['ci95'][1]:+.2f}] "
            f"p={d[p_key]:.3f} ({d['wins']}/{d['n']})")


def _acc(runs: dict) -> str:
    m, h = mean_ci([r["final_test_acc"] for r in runs.values()])
    return f"{100 * m:.2f} ± {100 * h:.2f}%"


def contrast_table(table: dict, rows: list[tuple[str, float]], against: str = "random") -> list[dict]:
    """Each (condition, budget multiple) minus ``against`` at the same multiple, Holm over the rows."""
    out = []
    for c, m in rows:
        runs, base = table.get((c, m)), table.get((against, m))
        if not runs or not base:
            continue
        d = paired(runs, base)
        if d is None:
            continue
        images = sum(r["images_generated"] for r in runs.values()) / len(runs)
        out.append({"condition": c, "budget_multiple": m, "images": images, "acc": runs, **d})
    for row, p in zip(out, holm([r["p"] for r in out])):
        row["p_holm"] = p
    return out


def _rows_md(rows: list[dict]) -> list[str]:
    lines = ["| condition | images | final test acc | Δ vs random [95% CI], p (higher seeds) | Holm p |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['condition']} | {r['images']:.0f} | {_acc(r['acc'])} | {_fmt(r)} | {r['p_holm']:.3f} |")
    return lines


def _strip(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "acc"} for r in rows]


def pooled(tables: dict[int, dict], key: tuple[str, float]) -> dict:
    """Runs of ``key`` over several splits, keyed by (split, seed)."""
    return {(s, seed): r for s, t in tables.items() for seed, r in t.get(key, {}).items()}


def match_random(table: dict, best: str) -> dict | None:
    """The images random generation needs to match ``best``'s accuracy at 1x, linearly
    interpolated on random's mean curve (real-only at 0 images, then its budgets); None without
    runs of both."""
    runs = table.get((best, 1.0))
    pts = curve(table, "random")
    if not runs or not pts:
        return None
    best_acc = sum(r["final_test_acc"] for r in runs.values()) / len(runs)
    need = images_to_match(pts, best_acc)
    return {"best_acc": best_acc, "best_images": 64, "random_images_to_match": need,
            "ratio": None if need is None else need / 64, "random_curve": [(x, y) for x, y, *_ in pts]}


def _match_text(match: dict) -> str:
    need = match["random_images_to_match"]
    return (", ".join(f"{x:.0f} images {100 * y:.2f}%" for x, y in match["random_curve"])
            + f"; it matches the best variant's {100 * match['best_acc']:.2f}% with "
            + ("more images than measured" if need is None else f"{need:.0f} images ({need / 64:.2f}× its 64)"))


def equal_seeds(a: dict, b: dict) -> tuple[list, list]:
    """The seeds both record sets ran, and those where their final accuracies are equal."""
    both = [s for s in a if s in b]
    return both, [s for s in both if a[s]["final_test_acc"] == b[s]["final_test_acc"]]


def _generator(records: Path) -> str:
    """The generator a record folder's runs used (its ``settings.json``)."""
    return json.loads((records / "settings.json").read_text()).get("generator", "?")


def class_counts(table: dict, key: tuple[str, float]) -> dict | None:
    """Mean over seeds of the synthetic images per class summed over the rounds, and the guides."""
    runs = table.get(key)
    if not runs:
        return None
    per_class: dict[str, float] = {}
    guides, max_renders, shares = [], [], []
    for r in runs.values():
        for rd in r.get("rounds", []):
            for name, n in rd.get("synthetic_per_class", {}).items():
                per_class[name] = per_class.get(name, 0) + n / len(runs)
            if rd.get("distinct_guides") is not None:
                guides.append(rd["distinct_guides"])
                max_renders.append(rd.get("renders_per_guide_max") or 0)
            if rd.get("synthetic_share") is not None:
                shares.append(rd["synthetic_share"])
    return {"per_class": per_class, "distinct_guides_per_round": sum(guides) / len(guides) if guides else None,
            "renders_per_guide_max": max(max_renders) if max_renders else None,
            "synthetic_share_mean": sum(shares) / len(shares) if shares else None}


def default_policy(regimes: dict[str, list[dict]]) -> dict:
    """PLAN.md's rule over the regimes' contrast rows (Holm p per regime)."""
    per: dict[str, dict] = {}
    for regime, rows in regimes.items():
        for r in rows:
            if r["condition"] not in POLICIES:
                continue
            e = per.setdefault(r["condition"], {"regimes": {}, "below": []})
            e["regimes"].setdefault(regime, []).append(r["mean"])
            if r["p_holm"] < 0.05 and r["mean"] < 0:
                e["below"].append(f"{regime} at {r['images']:.0f} images")
    for c, e in per.items():
        means = [sum(v) / len(v) for v in e["regimes"].values()]
        e["mean_over_regimes"] = sum(means) / len(means)
        e["qualifies"] = len(e["regimes"]) >= 2 and not e["below"]
    qualified = [c for c, e in per.items() if e["qualifies"]]
    pool = qualified or [c for c, e in per.items() if len(e["regimes"]) >= 2] or list(per)
    choice = max(pool, key=lambda c: per[c]["mean_over_regimes"])
    return {"choice": choice, "policy": POLICIES[choice], "qualified": qualified, "per_condition": per,
            "rule": "never significantly below random (Holm p < 0.05, negative mean) in any regime where measured, "
                    "measured in at least two regimes, best mean difference over them; if none qualifies, the "
                    "least below random among those measured in two or more"}


def plot(conf: dict[int, dict], best: str, ten: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    ax = axes[0]
    for split, table in conf.items():
        pts = curve(table, "random")
        ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], "o-", label=f"random, split {split}")
        b = table.get((best, 1.0))
        if b:
            m, h = mean_ci([r["final_test_acc"] for r in b.values()])
            ax.errorbar([64], [100 * m], yerr=[100 * h], fmt="s", capsize=4, label=f"{best}, split {split}")
    ax.set_title("R1, 20 seeds per split (split 0: part 6), 95% CI", fontsize=10)
    ax = axes[1]
    for c in ("random", "actgen", "actgen-balanced", "txt2img"):
        pts = curve(ten, c)
        if pts:
            xs, ys, hs = [p[0] for p in pts], [100 * p[1] for p in pts], [100 * p[2] for p in pts]
            line, = ax.plot(xs, ys, "o-", label=c)
            ax.fill_between(xs, [y - e for y, e in zip(ys, hs)], [y + e for y, e in zip(ys, hs)],
                            color=line.get_color(), alpha=0.15)
    ax.set_title("10 per class, 2 rounds (10 seeds, 95% CI)", fontsize=10)
    for ax in axes:
        ax.set_xlabel("synthetic images generated over the run")
        ax.set_ylabel("final test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--study", type=Path, default=STUDY)
    p.add_argument("--out", type=Path, default=None, help="default: <study>/r1-report.{md,json,png}")
    args = p.parse_args(argv)
    study = args.study
    out = args.out or study / "r1-report"
    best = json.loads((study / "r1" / "choice.json").read_text())["best"]
    part1 = summarize_records(study / "r1")
    conf = {s: summarize_records(study / f"r1-confirm-split{s}") for s in (1, 2)
            if (study / f"r1-confirm-split{s}").is_dir()}
    ten = summarize_records(study / "digits-refit" if (study / "digits-refit").is_dir() else study / "digits")
    lines = ["# R1 study: the analysis fixed in PLAN.md", "",
             "Written by `python -m actgen.study.r1_report` from the records in `docs/study/`. Accuracies are "
             "final test accuracy, mean ± 95% CI over seeds; Δ is paired by seed (and split), with its 95% CI, the "
             "two-sided paired t-test's p and the number of pairs where the first is higher.", ""]
    report: dict = {"best": best}

    # ---- main contrast
    b_runs, r_runs = pooled(conf, (best, 1.0)), pooled(conf, ("random", 1.0))
    main = paired(b_runs, r_runs)
    lines += ["## Main contrast: the best variant minus random generation at equal images (64)", "",
              f"Best variant (chosen on split 0, part 2): `{best}`.", "",
              "| splits | pairs | best variant | random | Δ best − random |", "|---|---|---|---|---|"]
    per_split = {}
    for s, t in conf.items():
        d = paired(t.get((best, 1.0), {}), t.get(("random", 1.0), {}))
        per_split[s] = d
        if d:
            lines.append(f"| {s} | {d['n']} | {_acc(t[(best, 1.0)])} | {_acc(t[('random', 1.0)])} | {_fmt(d)} |")
    if main:
        lines.append(f"| {' + '.join(map(str, conf))} | {main['n']} | {_acc(b_runs)} | {_acc(r_runs)} | **{_fmt(main)}** |")
    # images-to-match on the pooled random curve: real (0), 1x, 3x
    match = match_random({k: pooled(conf, k) for k in ((best, 1.0), ("real", 1.0), ("random", 1.0), ("random", 3.0))},
                         best)
    if match:
        lines += ["", "Random generation's mean curve on the confirmation splits: " + _match_text(match) + "."]
    target = bool(main and main["mean"] >= 0 and main["p"] < 0.05 and match and match["ratio"] and match["ratio"] >= 2)
    lines += ["", f"Target (Δ ≥ 0 with p < 0.05, and random needing ≥ 2× the images): **{'met' if target else 'not met'}**."]
    report["main_contrast"] = {"pooled": main, "per_split": per_split, "images_to_match": match, "target_met": target}

    # ---- secondary table, part 1
    conds = sorted({c for c, _ in part1 if c != "random"}, key=lambda c: (not c.startswith("actgen"), c))
    rows1 = contrast_table(part1, [(c, 1.0) for c in conds] + [(c, 3.0) for c in conds if (c, 3.0) in part1])
    lines += ["", "## Secondary table: part 1 (split 0, 10 seeds), every condition minus random at equal images",
              "", "Holm-corrected over all rows. The best variant was chosen on these runs, so its row here is "
              "optimistic; the confirmation splits are what count for it.", ""] + _rows_md(rows1)
    report["secondary"] = _strip(rows1)

    # ---- 10-per-class regime
    rows10 = contrast_table(ten, [(c, m) for c in dict.fromkeys(["actgen-balanced", best]) for m in (0.5, 2.0)])
    lines += ["", "## The 10-per-class regime (3 held out, 2 rounds, split 0, 10 seeds)", "",
              "The new policy and the best variant minus random at equal images, Holm-corrected over this table. "
              "All three conditions run with split 0's generator refitted (`docs/study/digits-refit`; PLAN.md's note "
              "of 2026-12-04), paired by seed within those records.", ""] + _rows_md(rows10)
    report["ten_per_class"] = _strip(rows10)

    # ---- default
    regimes = {"R1 split 0": rows1, "10 per class": rows10}
    if main:
        regimes["R1 confirmation"] = [{"condition": best, "images": 64, "mean": main["mean"], "p_holm": main["p"]}]
    dflt = default_policy(regimes)
    lines += ["", "## The default allocation (PLAN.md's rule)", "", dflt["rule"] + ".", "",
              "| condition | policy | regimes measured | mean Δ over regimes | significantly below random in |",
              "|---|---|---|---|---|"]
    for c, e in sorted(dflt["per_condition"].items(), key=lambda kv: -kv[1]["mean_over_regimes"]):
        lines.append(f"| {c} | {POLICIES[c]} | {', '.join(e['regimes'])} | {100 * e['mean_over_regimes']:+.2f} | "
                     f"{', '.join(e['below']) or 'nowhere'} |")
    lines += ["", f"Default: **`allocation.policy: {dflt['policy']}`** (`{dflt['choice']}`)"
              + ("" if dflt["qualified"] else "; no policy qualified, so the least below random") + "."]
    report["default"] = dflt

    # ---- per-class counts
    names = None
    lines += ["", "## Synthetic images per class (part 1, 1×; mean over seeds, summed over the 4 rounds)", ""]
    counts = {}
    for c in ("random", "txt2img", "actgen", "actgen-balanced", "actgen-mixed"):
        cc = class_counts(part1, (c, 1.0))
        if not cc:
            continue
        counts[c] = cc
        if names is None:
            names = list(cc["per_class"])
            lines += ["| condition | " + " | ".join(names) + " | guides per round | most renders of a guide | "
                      "synthetic share |", "|---|" + "---|" * (len(names) + 3)]
        lines.append(f"| {c} | " + " | ".join(f"{cc['per_class'].get(n, 0):.1f}" for n in names)
                     + f" | {cc['distinct_guides_per_round'] or 0:.1f} | {cc['renders_per_guide_max'] or 0} | "
                     + (f"{100 * cc['synthetic_share_mean']:.0f}%" if cc["synthetic_share_mean"] is not None else "—")
                     + " |")
    report["class_counts"] = counts

    # ---- part 6: split 0 beside the main contrast, never pooled into it
    p6dir = study / "r1-confirm-split0"
    p6 = summarize_records(p6dir) if p6dir.is_dir() else {}
    if p6.get((best, 1.0)) and p6.get(("random", 1.0)):
        d6 = paired(p6[(best, 1.0)], p6[("random", 1.0)])
        m6 = match_random(p6, best)
        signs = {s: d["mean"] for s, d in {0: d6, **per_split}.items() if d}
        lines += ["", "## Part 6: the same contrast on split 0 (refitted generator, 20 seeds)", "",
                  "Reported beside the main contrast, never pooled into it: split 0 chose the best variant. Its "
                  "generator is split 0's refitted one (PLAN.md's notes of 2026-12-04).", "",
                  "| split | pairs | best variant | random | Δ best − random |", "|---|---|---|---|---|",
                  f"| 0 | {d6['n']} | {_acc(p6[(best, 1.0)])} | {_acc(p6[('random', 1.0)])} | {_fmt(d6)} |", "",
                  "Random generation's curve on split 0: " + _match_text(m6) + ". Per-split Δ over the three splits: "
                  + ", ".join(f"split {s} {100 * m:+.2f}" for s, m in sorted(signs.items())) + "."]
        report["part6"] = {"split0": d6, "random_curve": m6["random_curve"],
                           "random_images_to_match": m6["random_images_to_match"], "ratio": m6["ratio"],
                           "per_split_mean": signs, "seeds": sorted(p6[(best, 1.0)])}

    # ---- part 5
    p5dir = study / "r1-part5"
    if p5dir.is_dir():
        p5 = summarize_records(p5dir)
        rows5 = contrast_table(p5, [("actgen-dpmpp", 1.0), ("actgen-decode-half", 1.0)], against="actgen")
        rerun = p5.get(("actgen", 1.0), {})
        _, same = equal_seeds(rerun, part1.get(("actgen", 1.0), {}))
        p5_gen, p1_gen = _generator(p5dir), _generator(study / "r1")
        both6, same6 = equal_seeds(rerun, p6.get(("actgen", 1.0), {}) if p6 and _generator(p6dir) == p5_gen else {})
        lines += ["", "## Part 5: a faster solver and a smaller adversarial decode (split 0)", "",
                  "Each minus `actgen` rerun in the same part, paired by seed, Holm over the two rows. "
                  f"The rerun equals part 1's `actgen` accuracy on {len(same)} of its {len(rerun)} seeds"
                  + (f" (rerun {_acc(rerun)}, part 1 {_acc(part1[('actgen', 1.0)])}; the generators differ: "
                     f"`{p5_gen[:19]}…` here, `{p1_gen[:19]}…` in part 1)" if p5_gen != p1_gen else "") + "."
                  + (f" With the same generator, part 6 (run from another commit) gave the same accuracy on "
                     f"{len(same6)} of the {len(both6)} seeds both ran." if both6 else ""), "",
                  "| condition | images | final test acc | Δ vs actgen [95% CI], p (higher seeds) | Holm p |",
                  "|---|---|---|---|---|"]
        for r in rows5:
            lines.append(f"| {r['condition']} | {r['images']:.0f} | {_acc(r['acc'])} | {_fmt(r)} | {r['p_holm']:.3f} |")
        report["part5"] = {"rows": _strip(rows5), "rerun_equal_to_part1": len(same), "rerun_seeds": len(rerun)}

    plot({0: p6, **conf} if p6 else conf, best, ten, out.with_suffix(".png"))
    lines += ["", f"![accuracy against images]({out.with_suffix('.png').name})"]
    text = "\n".join(lines) + "\n"
    out.with_suffix(".md").write_text(text)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    print(text)
    print(f"wrote {out.with_suffix('.md')}, {out.with_suffix('.json')}, {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
