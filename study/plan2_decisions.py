"""PLAN-2's fixed decisions (``docs/study/PLAN-2.md``, "Decisions fixed here"), applied to its report.

- default ``allocation.policy``: ``paper`` or ``balanced``, the one whose variant has the larger
  random-effect mean difference against ``real-all``; within 0.1 points of each other, ``balanced``;
- default ``rounds.search``: ``train`` when ``actgen-train-search - real-all`` has a larger
  random-effect mean than both hold-out variants' and its verdict is not "below", else ``holdout``;
- the README's advice from primary (b): every variant "below" -> training on every image is
  better; one "above" -> name it; otherwise the study cannot tell.

    python -m actgen.study.plan2_decisions docs/study/plan-2     # writes <out>/decisions.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

VARIANTS = {"actgen - real-all": "paper", "actgen-balanced - real-all": "balanced"}
TRAIN_SEARCH = "actgen-train-search - real-all"
TIE_POINTS = 0.1


def _primary_b(report: dict) -> dict[str, dict]:
    rows = {c["contrast"]: c for group in report["primary"] for c in group["contrasts"]}
    missing = [c for c in (*VARIANTS, TRAIN_SEARCH) if c not in rows or rows[c].get("random_effect") is None]
    if missing:
        raise ValueError(f"report lacks the random-effect estimate of {missing}; run the whole plan first")
    return rows


def decide(report: dict) -> dict:
    """The decisions and the numbers they were taken from."""
    rows = _primary_b(report)
    mean = {c: rows[c]["random_effect"]["mean"] for c in (*VARIANTS, TRAIN_SEARCH)}
    paper, balanced = mean["actgen - real-all"], mean["actgen-balanced - real-all"]
    policy = "balanced" if abs(paper - balanced) <= TIE_POINTS or balanced > paper else "paper"
    search_wins = (mean[TRAIN_SEARCH] > max(paper, balanced) and rows[TRAIN_SEARCH]["verdict"] != "below")
    verdicts = {c: rows[c]["verdict"] for c in (*VARIANTS, TRAIN_SEARCH)}
    above = [c.split(" - ")[0] for c, v in verdicts.items() if v == "above"]
    if all(v == "below" for v in verdicts.values()):
        advice = "below"
    elif above:
        advice = "above: " + ", ".join(above)
    else:
        advice = "cannot tell"
    return {"allocation.policy": policy, "rounds.search": "train" if search_wins else "holdout",
            "readme_advice": advice, "random_effect_means": mean, "verdicts": verdicts,
            "rule": "PLAN-2.md, 'Decisions fixed here'", "tie_points": TIE_POINTS}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, help="the comparison's --out (holds report.json)")
    args = p.parse_args(argv)
    from actgen.shards._schema import read_json_file

    result = decide(read_json_file(args.out / "report.json"))
    (args.out / "decisions.json").write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(json.dumps(result, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
