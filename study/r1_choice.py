"""The pre-registered choice of the best variant (docs/study/PLAN.md, part 2).

The actgen condition (name starting with ``actgen``) with the highest mean final test accuracy at
budget multiple 1 over the seeds of the selection records; ties go to the condition listed first
in ``actgen.study.conditions.CONDITIONS``. Writes ``<records>/choice.json`` and prints it.

    python -m actgen.study.r1_choice docs/study/r1 --seeds 0-9
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


from .r1_runs import CONDITIONS, seeds_of
from .r1_stats import summarize_records


def choose(records: Path, seeds: list[int]) -> dict:
    """The best variant and every candidate's mean; SystemExit if a candidate lacks a seed."""
    table = summarize_records(records)
    candidates = [c for c in CONDITIONS if c.startswith("actgen") and (c, 1.0) in table]
    if not candidates:
        raise SystemExit(f"{records}: no actgen records at budget multiple 1")
    means = {}
    for c in candidates:
        runs = table[(c, 1.0)]
        missing = sorted(set(seeds) - set(runs))
        if missing:
            raise SystemExit(f"{records}: {c} lacks seeds {missing}; the choice needs every seed of part 1")
        means[c] = sum(runs[s]["final_test_acc"] for s in seeds) / len(seeds)
    best = max(candidates, key=lambda c: (means[c], -candidates.index(c)))
    return {"best": best, "rule": "highest mean final test accuracy at 1x over the seeds; ties to the earlier "
                                   "condition", "seeds": seeds, "means": means}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("records", type=Path)
    p.add_argument("--seeds", default="0-9")
    args = p.parse_args(argv)
    choice = choose(args.records, seeds_of(args.seeds))
    (args.records / "choice.json").write_text(json.dumps(choice, indent=1) + "\n")
    print(json.dumps(choice, indent=1))


if __name__ == "__main__":
    main()
