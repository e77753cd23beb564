"""Workers that live across rounds: a 4-round build with 1 and 2 CPU Ray workers, two ways.

- ``one-off``: one ``actgen-build --round-dir`` process per round (what inline builds did before
  ``--serve``): each round starts Python, Ray and its workers, and loads the generator again.
- ``watch``: one ``actgen-build --watch`` process for the run: Ray starts once, the workers and
  their loaded generator persist between rounds.

The rounds are a real ``actgen-train`` run on the embedded digits (4 rounds, no synthetic data),
made once in ``--work``; every measurement builds them afresh from a copy. The builder is
``configs/build-smoke.yaml`` (the tiny generator, 8 steps) at ``--budget`` images per round.

Reported per mode and worker count: wall clock of the whole thing (process start-up included),
and per round the overhead = round wall time - rendering time / workers, where rendering time is
the sum of the round's shard times as the workers report them (the driver's log line per shard,
"<shard> done (i/n): N images in S s"). The watch's round wall time is its ``build_status.json`` seconds (the watcher's first
start-up before round 0 is reported apart); a one-off round's is its process's wall clock.

    python benchmarks/bench_watch.py                   # table + benchmarks/results/watch.json

Run it on a quiet machine: with 2 cores, a second busy process ruins every figure.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ROUNDS = 4
_WROTE = re.compile(r"(\S+\.tar) done \(\d+/\d+\): (\d+) images in ([\d.]+) s")   # the driver's line per shard
_ROUND = re.compile(r"round (\d+): (building|done)")


def script(name: str) -> str:
    from actgen.trainer.inline import resolve_command   # beside this interpreter, then on PATH

    return resolve_command(name)


def make_run(work: Path) -> Path:
    """A digits training run with ``ROUNDS`` rounds (checkpoint + manifest each), made once."""
    run = work / "train"
    if (run / "rounds" / str(ROUNDS - 1) / "hard_samples.json").is_file():
        return run
    shutil.rmtree(run, ignore_errors=True)
    subprocess.run([script("actgen-train"), "--config", str(ROOT / "configs/train-digits.yaml"), "--run-dir", str(run),
                    "--set", f"train.epochs={ROUNDS}", "--set", "rounds.every=1", "--set", f"rounds.horizon={ROUNDS}",
                    "--set", f"rounds.merge_epoch={ROUNDS}", "--set", "synthetic.source=none",
                    "--set", "train.progress=false"], check=True, stdout=subprocess.DEVNULL)
    return run


def fresh_copy(run: Path, dest: Path) -> Path:
    """The run's round folders without any shards (checkpoint and manifest only)."""
    shutil.rmtree(dest, ignore_errors=True)
    for r in range(ROUNDS):
        src, dst = run / "rounds" / str(r), dest / "rounds" / str(r)
        shutil.copytree(src / "checkpoint", dst / "checkpoint")
        shutil.copy2(src / "hard_samples.json", dst / "hard_samples.json")
    return dest


def build_sets(workers: int, budget: int) -> list[str]:
    sets = ["ray.executor=ray", f"ray.workers={workers}", f"ray.num_cpus={workers}", "ray.cpus_per_worker=1",
            f"budget={budget}", "output.samples_per_shard=4", "output.contact_sheet=0"]
    return [a for s in sets for a in ("--set", s)]


def shard_seconds(log: str) -> dict[int, float]:
    """Rendering seconds per round from the log: shard lines between 'round r: building' and
    'round r: done' (watch), or every shard line (one-off, round -1)."""
    current, out = -1, {}
    for line in log.splitlines():
        m = _ROUND.search(line)
        if m:
            current = int(m.group(1)) if m.group(2) == "building" else -1
            continue
        m = _WROTE.search(line)
        if m:
            out[current] = out.get(current, 0.0) + float(m.group(3))
    return out


def run_one_off(run: Path, dest: Path, workers: int, budget: int, env: dict) -> dict:
    copy = fresh_copy(run, dest)
    rounds, start = [], time.perf_counter()
    for r in range(ROUNDS):
        t0 = time.perf_counter()
        proc = subprocess.run([script("actgen-build"), "--config", str(ROOT / "configs/build-smoke.yaml"),
                               "--round-dir", str(copy / "rounds" / str(r)), *build_sets(workers, budget)],
                              capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise SystemExit(f"one-off round {r} failed:\n{proc.stderr[-3000:]}")
        wall = time.perf_counter() - t0
        render = shard_seconds(proc.stderr).get(-1, 0.0)
        rounds.append({"round": r, "wall_s": round(wall, 2), "render_s": round(render, 2),
                       "overhead_s": round(wall - render / workers, 2)})
    return {"total_s": round(time.perf_counter() - start, 2), "rounds": rounds}


def run_watch(run: Path, dest: Path, workers: int, budget: int, env: dict) -> dict:
    copy = fresh_copy(run, dest)
    start = time.perf_counter()
    proc = subprocess.run([script("actgen-build"), "--config", str(ROOT / "configs/build-smoke.yaml"),
                           "--watch", str(copy), "--poll", "0.1", "--idle-timeout", "120",
                           *build_sets(workers, budget)], capture_output=True, text=True, env=env)
    total = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"watch failed:\n{proc.stderr[-3000:]}")
    render = shard_seconds(proc.stderr)
    rounds = []
    for r in range(ROUNDS):
        status = json.loads((copy / "rounds" / str(r) / "build_status.json").read_text())
        rounds.append({"round": r, "wall_s": status["seconds"], "render_s": round(render.get(r, 0.0), 2),
                       "overhead_s": round(status["seconds"] - render.get(r, 0.0) / workers, 2)})
    return {"total_s": round(total, 2), "startup_s": round(total - sum(x["wall_s"] for x in rounds), 2),
            "rounds": rounds}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-watch")
    p.add_argument("--budget", type=int, default=32, help="images per round")
    p.add_argument("--workers", default="1,2")
    p.add_argument("--modes", default="one-off,watch")
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "watch.json")
    args = p.parse_args(argv)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", RAY_USAGE_STATS_ENABLED="0")
    run = make_run(args.work)
    results = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
               "budget_per_round": args.budget, "rounds": ROUNDS, "config": "configs/build-smoke.yaml", "runs": {}}
    for mode in args.modes.split(","):
        for w in (int(x) for x in args.workers.split(",")):
            fn = run_watch if mode == "watch" else run_one_off
            res = fn(run, args.work / f"{mode}-{w}", w, args.budget, env)
            results["runs"][f"{mode}/{w}"] = res
            later = [x["overhead_s"] for x in res["rounds"][1:]]
            per_round = ", ".join(f"{x['overhead_s']:.1f}" for x in res["rounds"])
            print(f"{mode:>8} {w} worker(s): {res['total_s']:7.1f} s total; overhead per round {per_round} s "
                  f"(after the first: mean {sum(later) / len(later):.2f} s)", flush=True)
    print("\n| mode | workers | total (s) | round 0 overhead (s) | overhead per later round (s) | speed-up vs 1 worker |")
    print("|---|---|---|---|---|---|")
    for key, res in results["runs"].items():
        mode, w = key.split("/")
        base = results["runs"].get(f"{mode}/1")
        later = [x["overhead_s"] for x in res["rounds"][1:]]
        speed = f"{base['total_s'] / res['total_s']:.2f}×" if base else "—"
        print(f"| {mode} | {w} | {res['total_s']:.1f} | {res['rounds'][0]['overhead_s']:.1f} | "
              f"{sum(later) / len(later):.2f} | {speed} |")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1) + "\n")
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
