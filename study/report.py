"""A comparison's report from its records and frozen plan: ``report.md``, ``report.json`` and
``report.png``, the same bytes (markdown, JSON) every time for the same records.

Accuracies are in points (percent). See :mod:`.stats` for the analysis.
"""
from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Optional

from . import stats
from .plan import PLAN_FILE, ComparePlan
from .runs import RECORDS_DIR

REPORT_MD, REPORT_JSON, REPORT_PNG = "report.md", "report.json", "report.png"


# What the analysis reads of a record, and its type: records may come from other machines (Ray
# workers, a colleague's runs), so each is checked before use, naming the file and the field.
_RECORD_FIELDS = {"condition": str, "budget_multiple": (int, float), "split_seed": int, "seed": int,
                  "final_test_acc": (int, float), "images_generated": int, "rounds": list}
RECORD_MAX_BYTES = 16 << 20


def load_records(out: Path) -> list[dict]:
    """Every record under ``<out>/records``, in a fixed order, each type-checked (FormatError
    naming the file and the field otherwise)."""
    from actgen.shards._schema import read_json_file
    from actgen.shards.errors import FormatError

    records = []
    for path in sorted((Path(out) / RECORDS_DIR).glob("split-*/*.json")):
        if path.is_symlink() or path.stat().st_size > RECORD_MAX_BYTES:
            raise FormatError(str(path), f"a link, or larger than {RECORD_MAX_BYTES} bytes: not a run record")
        data = read_json_file(path)
        if not isinstance(data, dict):
            raise FormatError(str(path), "not a JSON object")
        for key, kind in _RECORD_FIELDS.items():
            value = data.get(key)
            if isinstance(value, bool) or not isinstance(value, kind):
                raise FormatError(str(path), f"field '{key}' must be {getattr(kind, '__name__', 'a number')}, "
                                             f"got {value!r}"[:300])
        if not 0.0 <= data["final_test_acc"] <= 1.0 or data["images_generated"] < 0:
            raise FormatError(str(path), "field 'final_test_acc' must be in [0, 1] and 'images_generated' >= 0")
        for i, rd in enumerate(data["rounds"]):
            per_class = rd.get("synthetic_per_class") if isinstance(rd, dict) else None
            if not isinstance(rd, dict) or not (per_class is None or (isinstance(per_class, dict) and all(
                    isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) for k, v in per_class.items()))):
                raise FormatError(str(path), f"field 'rounds[{i}]' must be an object whose synthetic_per_class maps "
                                             "class names to counts")
        records.append(data)
    return records


def _table(records: list[dict]) -> dict[tuple[str, float], dict[stats.Key, dict]]:
    table: dict = defaultdict(dict)
    for r in records:
        table[(r["condition"], float(r["budget_multiple"]))][(int(r["split_seed"]), int(r["seed"]))] = r
    return table


def _acc(runs: dict[stats.Key, dict]) -> dict[stats.Key, float]:
    return {k: 100.0 * r["final_test_acc"] for k, r in runs.items()}


def _f(x: Optional[float], digits: int = 2, sign: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def _ratio(x: Optional[float]) -> str:
    return "—" if x is None else f"{x:.2f}×"


def _p(x: Optional[float]) -> str:
    return "—" if x is None else ("< 0.001" if x < 0.001 else f"{x:.3f}")


def analyse(plan: ComparePlan, records: list[dict]) -> dict:
    """Everything the report says, as plain data (``report.json``)."""
    a = plan.analysis
    table = _table(records)
    out: dict = {"runs_planned": len(plan.runs()), "runs_recorded": len(records),
                 "splits_recorded": sorted({int(r["split_seed"]) for r in records}),
                 "commits": sorted({str(r.get("commit")) for r in records}),
                 "generators": {str(s): g for s, g in sorted({(int(r["split_seed"]), r.get("generator_sha256"))
                                                               for r in records if r.get("generator_sha256")})},
                 "conditions": [], "primary": [], "secondary": [], "match": [], "power": [], "per_class": {}}
    for c in plan.conditions:
        for m in c.multiples:
            runs = table.get((c.name, m), {})
            if not runs:
                continue
            acc = _acc(runs)
            means = stats.split_means({k: v for k, v in acc.items()})
            over = stats.t_summary(list(means.values()), a.alpha)
            images = sum(r["images_generated"] for r in runs.values()) / len(runs)
            out["conditions"].append({"condition": c.name, "multiple": m, "runs": len(runs), "images": images,
                                      "mean": sum(means.values()) / len(means), "ci": over["ci"] if over else None,
                                      "splits": len(means)})
            out["per_class"][f"{c.name}@{m:g}"] = _per_class(runs.values())

    def one(text: str) -> Optional[dict]:
        (an, am), (bn, bm) = plan.contrast(text)
        ra, rb = table.get((an, am), {}), table.get((bn, bm), {})
        if not ra or not rb:
            return None
        res = stats.contrast(_acc(ra), _acc(rb), a.alpha, a.margin)
        return {"contrast": text, **res}

    for group in a.primary:
        rows = [r for r in (one(t) for t in group.contrasts) if r is not None]
        _adjust(rows, a.alpha, a.margin)
        out["primary"].append({"name": group.name, "contrasts": rows})
    rows = [r for r in (one(t) for t in a.secondary) if r is not None]
    _adjust(rows, a.alpha, a.margin)
    out["secondary"] = rows
    for mp in a.match:
        out["match"].append(_match(plan, table, mp))
    for group in a.primary:
        for text in group.contrasts:
            (an, am), (bn, bm) = plan.contrast(text)
            diffs = stats.pairs(_acc(table.get((an, am), {})), _acc(table.get((bn, bm), {})))
            comp = stats.variance_components(diffs)
            entry = {"contrast": text, "components": comp}
            if comp is not None:
                entry["power"] = stats.power(a.power_effect, len(plan.splits), len(plan.all_seeds), comp["within"],
                                             comp["between"], a.alpha)
                entry["seeds_for_0.8"] = next((n for n in range(1, 201) if stats.power(
                    a.power_effect, len(plan.splits), n, comp["within"], comp["between"], a.alpha) >= 0.8), None)
            out["power"].append(entry)
    return out


def _adjust(rows: list[dict], alpha: float, margin: float) -> None:
    """Holm over a group, for the difference test and for TOST; the verdict from the adjusted p."""
    ok = [r for r in rows if r["random_effect"] is not None]
    for r, p, pt in zip(ok, stats.holm([r["random_effect"]["p"] for r in ok]),
                        stats.holm([r["random_effect"]["p_tost"] for r in ok])):
        r["p_holm"], r["p_tost_holm"] = p, pt
    for r in rows:
        r["verdict"] = stats.verdict(r["random_effect"], r.get("p_holm"), r.get("p_tost_holm"), alpha, margin)


def _per_class(runs) -> dict[str, float]:
    """Synthetic images per class over a run, mean over runs."""
    total: dict[str, float] = defaultdict(float)
    runs = list(runs)
    for r in runs:
        for rd in r.get("rounds", []):
            for name, n in (rd.get("synthetic_per_class") or {}).items():
                total[name] += n
    return {k: v / len(runs) for k, v in total.items()} if runs else {}


def _split_mean(runs: dict[stats.Key, dict]) -> float:
    """Accuracy as the conditions table gives it: the mean of the per-split means."""
    means = stats.split_means(_acc(runs))
    return sum(means.values()) / len(means)


def _match(plan: ComparePlan, table: dict, mp) -> dict:
    """Images ``mp.curve`` needs to reach ``mp.condition``'s accuracy, on its curve (the anchor's
    accuracy at 0 images); accuracies are means of split means, as in the conditions table."""
    points = []
    if mp.anchor:
        anchor = table.get((mp.anchor, 1.0), {})
        if anchor:
            points.append((0.0, _split_mean(anchor)))
    for m in plan.condition(mp.curve).multiples:
        runs = table.get((mp.curve, m), {})
        if runs:
            points.append((sum(r["images_generated"] for r in runs.values()) / len(runs), _split_mean(runs)))
    target = table.get((mp.condition, 1.0), {})
    if not target:
        return {"condition": mp.condition, "curve": mp.curve, "points": points, "images": None}
    acc = _split_mean(target)
    images = sum(r["images_generated"] for r in target.values()) / len(target)
    need = stats.images_to_match(points, acc)
    return {"condition": mp.condition, "curve": mp.curve, "points": points, "accuracy": acc, "condition_images": images,
            "images": need, "ratio": (need / images) if need is not None and images else None}


def render_markdown(plan: ComparePlan, sha: str, result: dict) -> str:
    a = plan.analysis
    lines = [f"# {plan.name}: the comparison's report", "",
             f"Plan `{sha[:16]}` ({PLAN_FILE}); {result['runs_recorded']} of {result['runs_planned']} planned runs "
             f"recorded; splits with records: {', '.join(map(str, result['splits_recorded'])) or 'none'}. "
             f"Accuracy is final test accuracy in points; differences are paired by (split, seed). "
             f"Primary analysis: the split as a random effect (the mean of the per-split mean differences, a t "
             f"interval over splits); pooled pairs beside it. Equivalence: TOST within ±{a.margin:g} points; "
             f"α = {a.alpha:g}; Holm within each group.", ""]
    if plan.notes:
        lines += ["Amendments (dated notes, kept apart from the plan's body):", ""]
        lines += [f"- {n.date}: {n.text.strip()}" + (f" (adds seeds {n.seeds})" if n.seeds else "")
                  for n in plan.notes] + [""]
    lines += ["## Conditions", "", "| condition | budget × | images | runs | splits | accuracy (mean of split means) "
              "| 95% CI over splits |", "|---|---|---|---|---|---|---|"]
    for c in result["conditions"]:
        ci = c["ci"]
        lines.append(f"| {c['condition']} | {c['multiple']:g} | {c['images']:.0f} | {c['runs']} | {c['splits']} | "
                     f"{c['mean']:.2f}% | {'—' if ci is None else f'[{ci[0]:.2f}, {ci[1]:.2f}]'} |")

    def contrast_rows(rows: list[dict]) -> list[str]:
        out = ["| contrast | Δ, split as random effect [95% CI] | p (Holm) | TOST p (Holm) | verdict | pooled Δ "
               "[95% CI], p | seeds higher | per split |", "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            re_, po = r["random_effect"], r["pooled"]
            re_txt = "—" if re_ is None else f"{re_['mean']:+.2f} [{re_['ci'][0]:+.2f}, {re_['ci'][1]:+.2f}]"
            po_txt = "—" if po is None else f"{po['mean']:+.2f} [{po['ci'][0]:+.2f}, {po['ci'][1]:+.2f}], p {_p(po['p'])}"
            per = ", ".join(f"{s}: {d:+.2f}" for s, d in r["per_split"].items())
            out.append(f"| {r['contrast']} | {re_txt} ({r['splits']} splits) | "
                       f"{_p(None if re_ is None else re_['p'])} ({_p(r.get('p_holm'))}) | "
                       f"{_p(None if re_ is None else re_['p_tost'])} ({_p(r.get('p_tost_holm'))}) | "
                       f"**{r['verdict']}** | {po_txt} | {r['wins']}/{r['pairs']} | {per} |")
        return out

    for i, group in enumerate(result["primary"]):
        lines += ["", f"## Primary: {group['name'] or f'group {i + 1}'}", ""] + contrast_rows(group["contrasts"])
    if result["secondary"]:
        lines += ["", "## Secondary (Holm over all of them)", ""] + contrast_rows(result["secondary"])
    if result["match"]:
        lines += ["", "## Images to match (estimates, no test)", "",
                  "| condition | its images | its accuracy | curve | curve points (images: accuracy) | images the "
                  "curve needs | ratio |", "|---|---|---|---|---|---|---|"]
        for m in result["match"]:
            pts = ", ".join(f"{x:.0f}: {y:.2f}%" for x, y in m["points"])
            lines.append(f"| {m['condition']} | {_f(m.get('condition_images'), 0)} | {_f(m.get('accuracy'))}% | "
                         f"{m['curve']} | {pts} | {_f(m['images'], 0)} | "
                         f"{_ratio(m.get('ratio'))} |")
    if result["power"]:
        lines += ["", f"## Power (from the records: {a.power_effect:g} points, the plan's {len(plan.splits)} splits "
                      f"× {len(plan.all_seeds)} seeds)", "",
                  "| contrast | SD within splits | SD between splits | power | seeds per split for power 0.8 |",
                  "|---|---|---|---|---|"]
        for p in result["power"]:
            comp = p["components"]
            if comp is None:
                lines.append(f"| {p['contrast']} | — | — | — (needs 2 splits with 2 seeds) | — |")
                continue
            need = p.get("seeds_for_0.8")
            lines.append(f"| {p['contrast']} | {math.sqrt(comp['within']):.2f} | {math.sqrt(comp['between']):.2f} | "
                         f"{p['power']:.2f} | {'more than 200 (add splits)' if need is None else need} |")
    if result["per_class"]:
        names = list(dict.fromkeys(k for v in result["per_class"].values() for k in v))   # label order
        if names:
            lines += ["", "## Synthetic images per class over a run (mean over runs)", "",
                      "| condition | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
            for cond, counts in result["per_class"].items():
                if counts:
                    lines.append(f"| {cond} | " + " | ".join(f"{counts.get(n, 0):.1f}" for n in names) + " |")
    lines += ["", f"Commits: {', '.join(result['commits']) or '—'}."]
    if result["generators"]:
        lines += ["", "Generators (weights sha256 per split): " +
                  ", ".join(f"{s}: `{g[:12]}`" for s, g in result["generators"].items()) + "."]
    return "\n".join(lines) + "\n"


def write_report(plan: ComparePlan, sha: str, out: Path, plot: bool = True) -> dict:
    """Write ``report.md``, ``report.json`` (and ``report.png``) into ``out``; return the analysis."""
    from actgen.shards.atomic import atomic_write_text

    out = Path(out)
    result = analyse(plan, load_records(out))
    atomic_write_text(out / REPORT_MD, render_markdown(plan, sha, result))
    atomic_write_text(out / REPORT_JSON, json.dumps({"plan_sha256": sha, **_jsonable(result)}, indent=1,
                                                    sort_keys=True) + "\n")
    if plot and result["conditions"]:
        _plot(plan, result, out / REPORT_PNG)
    return result


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _plot(plan: ComparePlan, result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    by: dict[str, list[dict]] = defaultdict(list)
    for c in result["conditions"]:
        by[c["condition"]].append(c)
    for name, rows in by.items():
        rows = sorted(rows, key=lambda r: r["images"])
        xs, ys = [r["images"] for r in rows], [r["mean"] for r in rows]
        errs = [(r["mean"] - r["ci"][0]) if r["ci"] else 0.0 for r in rows]
        if all(x == 0 for x in xs) and len(rows) == 1:
            ax.axhline(ys[0], lw=1, ls="--", color=f"C{len(ax.lines) % 10}", label=f"{name} (no synthetic images)")
            continue
        ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, lw=1.5 if len(rows) > 1 else 0, label=name)
    ax.set_xlabel("synthetic images over a run")
    ax.set_ylabel("final test accuracy (%), mean of split means, 95% CI over splits")
    ax.set_title(plan.name, fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)
