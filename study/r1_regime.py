"""PLAN-2's second regime beside R1's records (``docs/study/PLAN-2.md``, its note on the second regime).

The second regime reruns nothing that loads a generator: ``real-all``, ``real`` and ``guide-copy``
on R1's splits 1 and 2, seeds 0-9 (``docs/study/plan-2-r1``). R1's ``actgen`` and ``random`` runs on
the same splits and seeds (``docs/study/r1-confirm-split{1,2}``) supply the rest. The rule fixed in
the plan decides how the two sets pair: when the new ``real`` runs equal R1's ``real-b1`` runs
(final test accuracy at every split and seed), the pairs are exact; otherwise they are pairs across
commits, and the report says so with the size of the mismatch.

Per split and pooled over both, the mean paired difference with its 95% t interval: an estimate
beside PLAN-2's primary analysis (no test, no Holm; two splits give no between-split interval).

    python -m actgen.study.r1_regime --new docs/study/plan-2-r1 --r1 docs/study --out docs/study/plan-2-r1/with-r1
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional

from . import stats
from .report import RECORD_MAX_BYTES, load_records

SPLITS = (1, 2)
SEEDS = tuple(range(10))
R1_CONDITIONS = {"actgen": "actgen-b1", "random": "random-b1", "real (R1)": "real-b1"}
CONTRASTS = (("actgen", "real-all"), ("random", "real-all"), ("guide-copy", "real-all"),
             ("actgen", "guide-copy"), ("real", "real-all"))


def load_r1(folder: Path, split: int) -> dict[str, dict[int, float]]:
    """``{condition: {seed: accuracy in points}}`` of R1's records of ``split`` (each type-checked:
    a record from elsewhere is untrusted)."""
    from actgen.shards._schema import read_json_file
    from actgen.shards.errors import FormatError

    out: dict[str, dict[int, float]] = {}
    for name, stem in R1_CONDITIONS.items():
        for seed in SEEDS:
            path = folder / f"r1-confirm-split{split}" / f"{stem}-s{seed}.json"
            if path.is_symlink() or (path.is_file() and path.stat().st_size > RECORD_MAX_BYTES):
                raise FormatError(str(path), f"a link, or larger than {RECORD_MAX_BYTES} bytes: not a run record")
            data = read_json_file(path)
            acc = data.get("final_test_acc") if isinstance(data, dict) else None
            if (not isinstance(data, dict) or data.get("seed") != seed or isinstance(acc, bool)
                    or not isinstance(acc, (int, float)) or not 0.0 <= acc <= 1.0):
                raise FormatError(str(path), f"expected a run record of seed {seed} with 'final_test_acc' in [0, 1]")
            out.setdefault(name, {})[seed] = 100.0 * acc
    return out


def load_new(folder: Path) -> dict[str, dict[tuple[int, int], float]]:
    """``{condition: {(split, seed): accuracy in points}}`` of the second regime's records."""
    table: dict[str, dict[tuple[int, int], float]] = {}
    for r in load_records(folder):
        table.setdefault(r["condition"], {})[(int(r["split_seed"]), int(r["seed"]))] = 100.0 * r["final_test_acc"]
    return table


def analyse(new: dict[str, dict[tuple[int, int], float]], r1: dict[int, dict[str, dict[int, float]]]) -> dict:
    acc = {c: dict(v) for c, v in new.items()}
    for split, conds in r1.items():
        for c, per_seed in conds.items():
            acc.setdefault(c, {}).update({(split, s): a for s, a in per_seed.items()})
    # The pairing check: the rerun of R1's `real` against R1's own records.
    check = stats.pairs(acc.get("real", {}), acc.get("real (R1)", {}))
    mismatch = max((abs(d) for d in check.values()), default=None)
    expected = len(SPLITS) * len(SEEDS)
    exact = len(check) == expected and mismatch == 0.0
    rows = []
    for a, b in CONTRASTS:
        diffs = stats.pairs(acc.get(a, {}), acc.get(b, {}))
        row = {"contrast": f"{a} - {b}", "pooled": stats.t_summary(list(diffs.values())),
               "per_split": {str(s): stats.t_summary([d for (sp, _), d in diffs.items() if sp == s]) for s in SPLITS}}
        rows.append(row)
    means = {c: {str(s): sum(v for (sp, _), v in runs.items() if sp == s) / max(1, sum(1 for sp, _ in runs if sp == s))
                 for s in SPLITS} for c, runs in sorted(acc.items())}
    return {"pairing": {"exact": exact, "pairs_checked": len(check), "expected": expected,
                        "max_abs_difference_points": mismatch},
            "mean_accuracy": means, "contrasts": rows}


def _cell(t: Optional[dict]) -> str:
    if t is None:
        return "n/a"
    lo, hi = t["ci"]
    return f"{t['mean']:+.2f} [{lo:+.2f}, {hi:+.2f}] (n={t['n']})"


def render(result: dict) -> str:
    p = result["pairing"]
    if p["exact"]:
        pairing = (f"The rerun of R1's `real` equals R1's records at all {p['expected']} (split, seed) pairs: the "
                   "pairs with R1's `actgen` and `random` records are exact.")
    else:
        pairing = (f"The rerun of R1's `real` does **not** equal R1's records ({p['pairs_checked']} of "
                   f"{p['expected']} pairs present, largest difference "
                   f"{'n/a' if p['max_abs_difference_points'] is None else format(p['max_abs_difference_points'], '.2f')}"
                   " points): contrasts that use R1's `actgen` or `random` are pairs across commits.")
    lines = ["# PLAN-2's second regime beside R1's records", "",
             "R1's 10-per-class regime, R1's splits 1 and 2, seeds 0-9 (`docs/study/PLAN-2.md`, note on the second "
             "regime). Accuracy in points; each cell is the mean paired difference, its 95% t interval and the "
             "number of pairs. An estimate beside PLAN-2's primary analysis: two splits give no between-split "
             "interval.", "", pairing, "",
             "| contrast | split 1 | split 2 | both splits (pooled pairs) |", "|---|---|---|---|"]
    for row in result["contrasts"]:
        lines.append(f"| {row['contrast']} | {_cell(row['per_split']['1'])} | {_cell(row['per_split']['2'])} | "
                     f"{_cell(row['pooled'])} |")
    lines += ["", "| condition | split 1 mean accuracy | split 2 mean accuracy |", "|---|---|---|"]
    for c, m in result["mean_accuracy"].items():
        lines.append(f"| {c} | {m['1']:.2f} | {m['2']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--new", type=Path, default=Path("docs/study/plan-2-r1"), help="the second regime's --out")
    p.add_argument("--r1", type=Path, default=Path("docs/study"), help="the folder holding r1-confirm-split*")
    p.add_argument("--out", type=Path, default=None, help="report stem (default: <new>/with-r1)")
    args = p.parse_args(argv)
    result = analyse(load_new(args.new), {s: load_r1(args.r1, s) for s in SPLITS})
    stem = args.out or args.new / "with-r1"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    stem.with_suffix(".md").write_text(render(result))
    print(render(result), end="")


if __name__ == "__main__":
    main()
