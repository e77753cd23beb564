"""The comparison's statistics: pure functions over records (one dict per run), so a report can
be redone from the records alone.

Runs are paired by (split seed, seed): the same labeled images, test set, generator and training
seed in every condition. A contrast ``A - B`` is analysed two ways:

- **split as a random effect** (the primary analysis): the mean difference within each split,
  then the mean of those split means with a t interval and test over the splits (k - 1 degrees
  of freedom). Splits differ in which images are labeled and which generator was fitted, and a
  user's data is one more split: this interval is the one a claim about new data needs.
- **pooled pairs**: every (split, seed) pair as one observation (treats the splits as fixed,
  narrower; reported beside, never instead).

Equivalence is TOST against the plan's margin m: the difference is "equivalent within ±m" when
both one-sided tests reject (the 1 - 2α interval lies inside ±m). Multiple contrasts of a group
are Holm-adjusted.
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Optional, Sequence

Key = tuple[int, int]          # (split seed, seed)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    adjusted, running = [0.0] * len(pvalues), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in values) / (n - 1)) if n > 1 else 0.0
    return mean, sd


def t_summary(values: Sequence[float], alpha: float = 0.05, margin: Optional[float] = None) -> Optional[dict]:
    """Mean, its (1 - alpha) t interval, the two-sided one-sample p against 0, and with ``margin``
    the TOST p for equivalence within ±margin; None below two values."""
    from scipy import stats

    n = len(values)
    if n < 2:
        return None
    mean, sd = mean_sd(values)
    se = sd / math.sqrt(n)
    df = n - 1
    half = stats.t.ppf(1 - alpha / 2, df) * se
    if se == 0:
        p = 1.0 if mean == 0 else 0.0
        tost = (0.0 if abs(mean) < margin else 1.0) if margin is not None else None
    else:
        p = float(2 * stats.t.sf(abs(mean) / se, df))
        tost = (float(max(stats.t.sf((mean + margin) / se, df), stats.t.cdf((mean - margin) / se, df)))
                if margin is not None else None)
    return {"n": n, "mean": mean, "sd": sd, "se": se, "df": df, "ci": [mean - half, mean + half], "p": p,
            "p_tost": tost}


def pairs(a: dict[Key, float], b: dict[Key, float]) -> dict[Key, float]:
    """Per (split, seed) differences ``a - b`` where both ran."""
    return {k: a[k] - b[k] for k in sorted(set(a) & set(b))}


def split_means(diffs: dict[Key, float]) -> dict[int, float]:
    """Mean difference within each split."""
    by: dict[int, list[float]] = defaultdict(list)
    for (split, _), d in diffs.items():
        by[split].append(d)
    return {s: sum(v) / len(v) for s, v in sorted(by.items())}


def contrast(a: dict[Key, float], b: dict[Key, float], alpha: float, margin: float) -> dict:
    """``a - b``: the random-effect analysis over splits and the pooled pairs (see the module)."""
    diffs = pairs(a, b)
    per_split = split_means(diffs)
    return {"pairs": len(diffs), "splits": len(per_split), "per_split": per_split,
            "wins": sum(d > 0 for d in diffs.values()), "ties": sum(d == 0 for d in diffs.values()),
            "random_effect": t_summary(list(per_split.values()), alpha, margin),
            "pooled": t_summary(list(diffs.values()), alpha, margin)}


def verdict(result: Optional[dict], p: Optional[float], p_tost: Optional[float], alpha: float,
            margin: float) -> str:
    """In words: above / below (the test rejects), equivalent within ±margin (TOST rejects), both,
    or inconclusive."""
    if result is None or p is None:
        return "not enough splits (needs 2)"
    differs, equivalent = p < alpha, p_tost is not None and p_tost < alpha
    side = "above" if result["mean"] > 0 else "below"
    if differs and equivalent:
        return f"{side}, by less than {margin:g} points"
    if differs:
        return side
    if equivalent:
        return f"equivalent within ±{margin:g} points"
    return "inconclusive"


def variance_components(diffs: dict[Key, float]) -> Optional[dict]:
    """Within-split (seed) and between-split variances of a contrast's differences (one-way
    random-effects ANOVA; the between part floored at 0), and the seeds per split."""
    by: dict[int, list[float]] = defaultdict(list)
    for (split, _), d in diffs.items():
        by[split].append(d)
    groups = [v for v in by.values() if len(v) >= 2]
    if len(groups) < 2:
        return None
    within = sum(sum((x - sum(g) / len(g)) ** 2 for x in g) for g in groups) / sum(len(g) - 1 for g in groups)
    n = sum(len(g) for g in groups) / len(groups)
    _, sd_means = mean_sd([sum(g) / len(g) for g in groups])
    between = max(0.0, sd_means ** 2 - within / n)
    return {"within": within, "between": between, "seeds_per_split": n, "splits": len(groups)}


def power(effect: float, splits: int, seeds: int, within: float, between: float, alpha: float) -> float:
    """Power of the random-effect t-test over ``splits`` split means of ``seeds`` seeds each to
    detect ``effect`` (two-sided, level ``alpha``)."""
    from scipy import stats

    if splits < 2:
        return float("nan")
    var = between + within / seeds
    if var <= 0:
        return 1.0
    df = splits - 1
    nc = effect / math.sqrt(var / splits)
    crit = stats.t.ppf(1 - alpha / 2, df)
    return float(stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc))


def curve(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """(images, accuracy) points sorted by images."""
    return sorted(points)


def images_to_match(points: Sequence[tuple[float, float]], accuracy: float) -> Optional[float]:
    """Images a curve needs to reach ``accuracy``, linearly interpolated between its points (None
    if it never does; its first point's images when that already does)."""
    pts = curve(points)
    if not pts:
        return None
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if y0 >= accuracy:
            return x0
        if y1 >= accuracy:
            return x0 + (accuracy - y0) * (x1 - x0) / (y1 - y0)
    return pts[-1][0] if pts[-1][1] >= accuracy else None
