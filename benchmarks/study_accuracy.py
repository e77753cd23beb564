"""Accuracy study on cifar10-5k: real only vs txt2img vs img2img vs actgen (+ ablations), 3 seeds.

Every condition trains the same ResNet-18 at 32x32 on the same split (``data.split_seed``), on the
same schedule (rounds at the same epochs, hold-out merged at the same epoch), and every condition
with synthetic data gets the same image budget per round, rendered by the same fitted generator
(configs/fit-cifar10-5k.yaml); only the builder's mode and switches differ. Each run is a
separate ``actgen-train`` process with ``synthetic.source: inline``, so the study exercises the
product exactly as a user runs it.

The study is resumable: a finished run (``summary.json`` complete) is read, not rerun; an
interrupted one is resumed from its ``last.pt``.

    python benchmarks/study_accuracy.py                        # the whole study: 24 runs, 94 min
                                                               # here with --threads 1
    python benchmarks/study_accuracy.py --conditions real,actgen --seeds 0
    python benchmarks/study_accuracy.py --report-only          # table + plot from finished runs

Writes ``<out>/study.json``, ``<out>/study.md`` (the table) and ``<out>/study.png`` (the plot).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time
from pathlib import Path

from actgen.shards.fit_record import FIT_RECORD_FILE
from actgen.trainer.inline import resolve_command  # the console scripts beside this interpreter

ROOT = Path(__file__).resolve().parent.parent

# condition -> builder overrides (None: real images only).
CONDITIONS: dict[str, list[str] | None] = {
    "real": None,
    "txt2img": ["mode=txt2img", "schedule.enabled=false"],
    "img2img": ["mode=img2img", "schedule.enabled=false"],
    "actgen": ["mode=actgen", "schedule.enabled=true"],
    # Ablations of the builder's switches, each off the full method.
    "actgen-no-mask": ["mode=actgen", "schedule.enabled=true", "guidance.use_mask=false"],
    "actgen-no-contrastive": ["mode=actgen", "schedule.enabled=true", "guidance.use_contrastive=false"],
    "actgen-no-adversarial": ["mode=actgen", "schedule.enabled=true", "guidance.use_adversarial=false"],
    "actgen-no-schedule": ["mode=actgen", "schedule.enabled=false"],
}
MAIN = ["real", "txt2img", "img2img", "actgen"]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train-config", default="configs/train-cifar10-5k.yaml")
    p.add_argument("--build-config", default="configs/build-cifar10-5k.yaml")
    p.add_argument("--fit-config", default="configs/fit-cifar10-5k.yaml",
                   help="fitted first when the build config's generator directory is missing")
    p.add_argument("--out", default="runs/study-cifar10-5k")
    p.add_argument("--conditions", default=",".join(CONDITIONS), help=f"comma list of {list(CONDITIONS)}")
    p.add_argument("--seeds", default="0,1,2", help="comma list; train.seed = 42 + seed, build seed = seed")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--every", type=int, default=4, help="epochs per round")
    p.add_argument("--horizon", type=int, default=8, help="rounds end at epochs below this one")
    p.add_argument("--budget", type=int, default=120, help="synthetic images per round")
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")),
                   help="torch threads per process (the runs are sequential)")
    p.add_argument("--report-only", action="store_true")
    return p.parse_args()


def train_overrides(args: argparse.Namespace, condition: str, seed: int) -> list[str]:
    build = CONDITIONS[condition]
    sets = [f"train.seed={42 + seed}", f"train.epochs={args.epochs}", f"rounds.every={args.every}",
            f"rounds.horizon={args.horizon}", f"rounds.merge_epoch={args.horizon}", "train.progress=false",
            "loader.num_workers=0"]
    if build is None:
        return sets + ["synthetic.source=none"]
    overrides = [*build, f"budget={args.budget}", f"seed={seed}"]
    quoted = ",".join(json.dumps(o) for o in overrides)
    return sets + ["synthetic.source=inline", f"synthetic.build_config={args.build_config}",
                   f"synthetic.build_overrides=[{quoted}]"]


def ensure_generator(args: argparse.Namespace) -> None:
    from omegaconf import OmegaConf

    path = Path(OmegaConf.load(args.build_config).generator.path)
    if (path / FIT_RECORD_FILE).is_file():
        return
    print(f"generator {path} missing: fitting it with {args.fit_config} (~20 min on 2 cores)", flush=True)
    subprocess.run([resolve_command("actgen-fit-generator"), "--config", args.fit_config, "--output", str(path)],
                   check=True)


def run_one(args: argparse.Namespace, condition: str, seed: int, env: dict) -> dict:
    run_dir = Path(args.out) / f"{condition}-s{seed}"
    summary_path = run_dir / "summary.json"
    if summary_path.is_file() and json.loads(summary_path.read_text())["complete"]:
        return json.loads(summary_path.read_text())
    argv = [resolve_command("actgen-train")]
    if (run_dir / "last.pt").is_file():
        argv += ["--run-dir", str(run_dir), "--resume"]
    else:
        argv += ["--config", args.train_config, "--run-dir", str(run_dir)]
        for o in train_overrides(args, condition, seed):
            argv += ["--set", o]
    log = run_dir.parent / f"{run_dir.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(log, "a") as f:
        result = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    if result.returncode != 0:
        raise SystemExit(f"{condition} seed {seed} failed (exit {result.returncode}); see {log}")
    summary = json.loads(summary_path.read_text())
    print(f"  {condition:<24} seed {seed}: test {100 * summary['final']['test_acc']:.2f}% "
          f"({summary['synthetic_pool']} synthetic, {time.perf_counter() - t0:.0f} s)", flush=True)
    return summary


def read_curve(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r["test_acc"] for r in rows]


def summarise(args: argparse.Namespace, conditions: list[str], seeds: list[int]) -> dict:
    table = {}
    for c in conditions:
        finals, bests, walls, pools, curves, done = [], [], [], [], [], []
        for s in seeds:
            run_dir = Path(args.out) / f"{c}-s{s}"
            path = run_dir / "summary.json"
            if not path.is_file() or not json.loads(path.read_text())["complete"]:
                continue
            summary = json.loads(path.read_text())
            finals.append(summary["final"]["test_acc"])
            bests.append(summary["best_test_acc"])
            walls.append(summary["wall_time_s"])
            pools.append(summary["synthetic_pool"])
            curves.append(read_curve(run_dir))
            done.append(s)
        if finals:
            table[c] = {"seeds": done,
                        "final": finals, "best": bests, "mean": statistics.mean(finals),
                        "std": statistics.stdev(finals) if len(finals) > 1 else 0.0,
                        "best_mean": statistics.mean(bests), "synthetic_images": pools[0],
                        "wall_time_s": statistics.mean(walls), "curves": curves}
    return table


def paired_delta(table: dict, condition: str) -> tuple[float, float, int] | None:
    """Mean and std over seeds of (condition - real only) on the same seed: the runs share the
    split, the initial weights and every draw up to the first synthetic image, so the paired
    difference is far less noisy than the difference of the means."""
    if condition == "real" or "real" not in table:
        return None
    base = dict(zip(table["real"]["seeds"], table["real"]["final"]))
    diffs = [v - base[s] for s, v in zip(table[condition]["seeds"], table[condition]["final"]) if s in base]
    if not diffs:
        return None
    return statistics.mean(diffs), statistics.stdev(diffs) if len(diffs) > 1 else 0.0, len(diffs)


def write_report(args: argparse.Namespace, table: dict) -> None:
    out = Path(args.out)
    lines = ["| condition | runs | final test acc (mean ± std) | Δ vs real only, same seed (mean ± std) "
             "| best-epoch acc (mean) | synthetic images | time per run (train + builds) |",
             "|---|---|---|---|---|---|---|"]
    for c, r in table.items():
        d = paired_delta(table, c)
        delta = "—" if d is None else f"{100 * d[0]:+.2f} ± {100 * d[1]:.2f} pt"
        lines.append(f"| {c} | {len(r['final'])} | {100 * r['mean']:.2f} ± {100 * r['std']:.2f}% | {delta} "
                     f"| {100 * r['best_mean']:.2f}% | {r['synthetic_images']} | {r['wall_time_s']:.0f} s |")
    md = "\n".join(lines) + "\n"
    (out / "study.md").write_text(md)
    (out / "study.json").write_text(json.dumps({"args": vars(args), "results": table}, indent=2) + "\n")
    print(md)
    plot(table, out / "study.png", args)
    print(f"wrote {out / 'study.md'}, {out / 'study.json'}, {out / 'study.png'}")


def plot(table: dict, path: Path, args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (ax1, ax3, ax2) = plt.subplots(1, 3, figsize=(17, 4.8))
    names = list(table)
    means = [100 * table[c]["mean"] for c in names]
    stds = [100 * table[c]["std"] for c in names]
    colors = ["0.6" if c == "real" else "C0" if c in MAIN else "C1" for c in names]
    ax1.bar(range(len(names)), means, yerr=stds, capsize=4, color=colors)
    for i, c in enumerate(names):
        ax1.scatter([i] * len(table[c]["final"]), [100 * v for v in table[c]["final"]], color="k", s=8, zorder=3)
    ax1.set_xticks(range(len(names)), names, rotation=30, ha="right")
    low = min(min(100 * v for v in table[c]["final"]) for c in names)
    ax1.set_ylim(max(0, low - 5), max(means) + max(stds) + 2)
    ax1.set_ylabel("final test accuracy (%)")
    ax1.set_title(f"final test accuracy, mean ± std over seeds ({args.epochs} epochs)", fontsize=10)
    others = [c for c in names if paired_delta(table, c) is not None]
    base = dict(zip(table["real"]["seeds"], table["real"]["final"])) if "real" in table else {}
    for i, c in enumerate(others):
        diffs = [100 * (v - base[s]) for s, v in zip(table[c]["seeds"], table[c]["final"]) if s in base]
        mean, std, _ = paired_delta(table, c)
        ax3.errorbar([i], [100 * mean], yerr=[100 * std], fmt="o", color="C0" if c in MAIN else "C1", capsize=4)
        ax3.scatter([i] * len(diffs), diffs, color="k", s=8, zorder=3)
    ax3.axhline(0, color="0.5", lw=0.8)
    ax3.set_xticks(range(len(others)), others, rotation=30, ha="right")
    ax3.set_ylabel("Δ final test accuracy vs real only (points)")
    ax3.set_title("paired by seed: condition − real only", fontsize=10)
    for i, c in enumerate(names):
        curves = np.array([cv for cv in table[c]["curves"] if len(cv) == len(table[c]["curves"][0])]) * 100
        ax2.plot(range(curves.shape[1]), curves.mean(0), label=c, color=f"C{i}", lw=2 if c in MAIN else 1,
                 ls="-" if c in MAIN else "--")
    for e in range(args.every - 1, args.horizon, args.every):
        ax2.axvline(e + 0.5, color="0.85", lw=0.8, zorder=0)
    ax2.set_xlabel("epoch (grey lines: synthetic data of a round joins)")
    ax2.set_ylabel("test accuracy (%)")
    ax2.legend(fontsize=8)
    ax2.set_title("test accuracy per epoch (mean over seeds)", fontsize=10)
    fig.suptitle(f"cifar10-5k, ResNet-18 at 32x32, {args.budget} synthetic images per round, "
                 f"rounds every {args.every} epochs up to epoch {args.horizon}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    args = parse_args()
    conditions = [c.strip() for c in args.conditions.split(",") if c.strip()]
    unknown = [c for c in conditions if c not in CONDITIONS]
    if unknown:
        raise SystemExit(f"--conditions: unknown {unknown}; expected some of {list(CONDITIONS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    if not args.report_only:
        ensure_generator(args)
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
        started = time.perf_counter()
        # Seed-major order: a partial study still compares every condition on the same seeds.
        for seed in seeds:
            for c in conditions:
                run_one(args, c, seed, env)
        print(f"study: {time.perf_counter() - started:.0f} s", flush=True)
    write_report(args, summarise(args, conditions, seeds))


if __name__ == "__main__":
    main()
