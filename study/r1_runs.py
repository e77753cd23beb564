"""The method on trial: accuracy per generated image, actgen against random generation.

A regime where generation can add knowledge: a labeled data set is split, stratified and seeded,
into three disjoint parts,

- a **generator pool**, which only the generator sees (fit it with ``--fit``),
- a **small labeled set** for the classifier (its hold-out, for hard samples, is inside it),
- a **test set**, for reporting;

then every condition trains the same classifier on the labeled set, on the same schedule, with
the same image budget per round rendered by the same generator; only where the images come from
differs:

=================  =======================================================================
real               real images only
real-steps         real only, drawing as many extra real images per epoch as the synthetic
                   runs' pool adds (the same optimizer steps: more steps vs more data)
random             text-to-image of classes drawn uniformly (the paper's random baseline)
txt2img            text-to-image of the hard samples' classes (class-targeted)
img2img            image guidance from the hard samples, no mask and no losses
actgen             the method (its guidance with the per-round schedules, the run's memory bank)
actgen-no-*        ablations: mask, contrastive, adversarial, schedule; bank per shard
actgen-sel-*       hard-sample selection rules (trainer ``rounds.selection``)
=================  =======================================================================

``--budgets`` sweeps the image budget (multiples of ``--budget`` per round) for the conditions
in ``--sweep``, so the output shows accuracy against the number of generated images, and how
many random (or txt2img) images match actgen's accuracy (interpolated on their curve).

Every run is a real ``actgen-train`` process with inline ``actgen-build`` rounds, and writes one
record ``<records>/<condition>-b<budget>-s<seed>.json``; a finished run is read, not rerun.
Seeds pair the runs: seed s trains with ``train.seed = 42 + s`` and builds with ``seed = s`` in
every condition, on the same split (``--split-seed``), so differences are taken within a seed.

    python -m actgen.study.r1_runs --data builtin:digits --out runs/study-digits \\
        --generator runs/generators/digits-pool --fit --fit-config configs/fit-digits.yaml \\
        --records docs/study/digits --seeds 0-9
    python -m actgen.study.r1_runs ... --report-only          # tables + plots from the records

Writes ``<records>/*.json`` (per run), ``<records>/summary.json``, ``<records>/study.md`` and
``<records>/accuracy_vs_images.png``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

from .conditions import CONDITIONS  # noqa: F401  (the registry, shared with actgen-compare)
from .r1_stats import summarize_records, write_report
from .runs import round_record

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = p.add_argument_group("data and split")
    d.add_argument("--data", default="builtin:digits", help="a DataSource path (builtin:digits, a parquet file...)")
    d.add_argument("--data-split", default="train")
    d.add_argument("--pool-fraction", type=float, default=0.5, help="share of each class for the generator pool")
    d.add_argument("--labeled-per-class", type=int, default=10, help="classifier images per class (hold-out inside)")
    d.add_argument("--split-seed", type=int, default=0)
    g = p.add_argument_group("generator (never fitted unless --fit; never written over)")
    g.add_argument("--generator", required=True, help="a fitted generator directory")
    g.add_argument("--fit", action="store_true", help="fit it on the pool first when the directory does not exist")
    g.add_argument("--fit-config", default="configs/fit-digits.yaml")
    g.add_argument("--fit-set", action="append", default=[], metavar="KEY=VALUE")
    r = p.add_argument_group("runs")
    r.add_argument("--train-config", default="configs/train-study-digits.yaml")
    r.add_argument("--build-config", default="configs/build-study-digits.yaml")
    r.add_argument("--train-set", action="append", default=[], metavar="KEY=VALUE", help="actgen-train override")
    r.add_argument("--build-set", action="append", default=[], metavar="KEY=VALUE", help="actgen-build override")
    r.add_argument("--conditions", default="real,random,txt2img,actgen", help=f"comma list of {list(CONDITIONS)}")
    r.add_argument("--budget", type=int, default=48, help="synthetic images per round at 1x")
    r.add_argument("--small-round-ratio", type=float, default=1 / 3,
                   help="actgen-small-rounds: its per-round budget as a share of --budget's")
    r.add_argument("--budgets", default="1", help="comma list of budget multiples, e.g. 0.5,1,2,4")
    r.add_argument("--sweep", default="random,txt2img,actgen", help="conditions run at every budget multiple")
    r.add_argument("--seeds", default="0-9", help="e.g. 0-9 or 0,1,2")
    r.add_argument("--jobs", type=int, default=1, help="runs at a time (each with --threads torch threads)")
    r.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    r.add_argument("--out", required=True, help="run directories")
    r.add_argument("--records", required=True, help="per-run JSON records, tables and plots")
    r.add_argument("--title", default=None, help="plot title (default: from --data)")
    r.add_argument("--report-only", action="store_true")
    return p.parse_args(argv)


def seeds_of(text: str) -> list[int]:
    if "-" in text and "," not in text:
        a, b = (int(x) for x in text.split("-"))
        return list(range(a, b + 1))
    return [int(s) for s in text.split(",") if s.strip()]


# ------------------------------------------------------------------------------------ the split
def make_split(args: argparse.Namespace, out: Path) -> dict:
    """Write ``pool.parquet``, ``labeled.parquet`` and ``test.parquet`` (stratified, seeded,
    disjoint) into ``<out>/data`` (:func:`actgen.study.split.make_split`)."""
    from .split import make_split as split

    try:
        return split(args.data, args.data_split, args.pool_fraction, args.labeled_per_class, args.split_seed,
                     out / "data")
    except ValueError as e:
        raise SystemExit(str(e)) from None


def ensure_generator(args: argparse.Namespace, out: Path) -> None:
    """Use ``--generator``; fit it on the pool only with ``--fit`` and only where nothing exists."""
    from actgen.shards.fit_record import FIT_RECORD_FILE

    from actgen.shards.fit_record import read_fit_record
    from actgen.shards.sources import DataSource, load_source

    gen = Path(args.generator)
    if (gen / FIT_RECORD_FILE).is_file():
        # The generator must have seen the pool and nothing else (it knows nothing of the
        # labeled or the test set): its record's data fingerprint is the pool's.
        pool = load_source(DataSource(path=str(out / "data" / "pool.parquet")))
        fitted = read_fit_record(gen).data.fingerprint
        if fitted != pool.fingerprint:
            raise SystemExit(f"{gen}: fitted on data {fitted[:12]}, this study's pool is {pool.fingerprint[:12]}")
        return
    if gen.exists():
        raise SystemExit(f"{gen}: exists but holds no fitted generator ({FIT_RECORD_FILE}); not written over")
    if not args.fit:
        raise SystemExit(f"{gen}: no generator there; pass --fit to fit one on the pool ({out / 'data'})")
    argv = [_script("actgen-fit-generator"), "--config", args.fit_config, "--output", str(gen),
            "--set", f"data.path={out / 'data' / 'pool.parquet'}"]
    for s in args.fit_set:
        argv += ["--set", s]
    print(f"fitting {gen} on the pool: {' '.join(argv)}", flush=True)
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, cwd=ROOT)
    print(f"fitted in {time.perf_counter() - t0:.0f} s", flush=True)


def _script(name: str) -> str:
    from actgen.trainer.inline import resolve_command

    return resolve_command(name)


# ------------------------------------------------------------------------------------ one run
def run_name(condition: str, multiple: float, seed: int) -> str:
    return f"{condition}-b{multiple:g}-s{seed}"


def overrides(args: argparse.Namespace, meta: dict, out: Path, condition: str, multiple: float,
              seed: int) -> list[str]:
    train, build = CONDITIONS[condition]
    budget = max(1, int(round(multiple * args.budget)))
    # ``{budget_small}``: the same images over rounds.every=1 (three times the rounds of the
    # study's every-3 schedule), so each round renders a third.
    fmt = {"budget": budget, "budget_small": max(1, int(round(budget * args.small_round_ratio)))}
    names = json.dumps(meta["class_names"])
    data = out / "data"
    sets = [f"data.source.path={data / 'labeled.parquet'}", f"data.source.class_names={names}",
            f"data.test_source.path={data / 'test.parquet'}", f"data.test_source.class_names={names}",
            f"train.seed={42 + seed}", "train.progress=false", "loader.num_workers=0",
            *[t.format(**fmt) for t in train], *args.train_set]
    if build is None:
        return sets + ["synthetic.source=none"]
    build_sets = [f"budget={budget}", f"seed={seed}", f"generator.path={Path(args.generator).resolve()}",
                  *[b.format(**fmt) for b in build], *args.build_set]
    quoted = ",".join(json.dumps(o) for o in build_sets)
    return sets + ["synthetic.source=inline", f"synthetic.build_config={args.build_config}",
                   f"synthetic.build_overrides=[{quoted}]"]


def run_one(args: argparse.Namespace, meta: dict, out: Path, condition: str, multiple: float, seed: int,
            env: dict) -> subprocess.Popen | None:
    """Start the run (None when its record exists); the caller waits and records it."""
    name = run_name(condition, multiple, seed)
    if (Path(args.records) / f"{name}.json").is_file():
        return None
    run_dir = out / "runs" / name
    argv = [_script("actgen-train")]
    if (run_dir / "last.pt").is_file():
        argv += ["--run-dir", str(run_dir), "--resume"]
    else:
        if run_dir.exists():       # died before its first checkpoint: start over
            import shutil

            shutil.rmtree(run_dir)
        argv += ["--config", args.train_config, "--run-dir", str(run_dir)]
        for o in overrides(args, meta, out, condition, multiple, seed):
            argv += ["--set", o]
    log = out / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    f = open(log, "a")
    proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    proc.study = (name, condition, multiple, seed, run_dir, log, time.perf_counter(), f)  # type: ignore[attr-defined]
    return proc


def record(args: argparse.Namespace, proc) -> dict:
    name, condition, multiple, seed, run_dir, log, t0, f = proc.study
    f.close()
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed (exit {proc.returncode}); see {log}")
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    pool = {e["round"]: e for e in summary.get("pool", [])}
    train, build = CONDITIONS[condition]
    rec = {"run": name, "condition": condition, "selection": [t for t in train if "selection" in t],
           "budget_multiple": multiple, "budget_per_round": int(round(multiple * args.budget)) if build else 0,
           "seed": seed, "images_generated": summary["synthetic_pool"],
           "final_test_acc": summary["final"]["test_acc"], "best_test_acc": summary["best_test_acc"],
           "rounds": [round_record(r, pool, run_dir) for r in summary["rounds"]],
           "test_acc_per_epoch": [row["test_acc"] for row in rows],
           "synthetic_share_per_epoch": [row.get("synthetic_share") for row in rows],
           "optimizer_steps": summary.get("optimizer_steps"), "wall_time_s": round(time.perf_counter() - t0, 1)}
    path = Path(args.records) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rec, indent=1) + "\n")
    print(f"  {name:<32} test {100 * rec['final_test_acc']:.2f}%  {rec['images_generated']:>4} images  "
          f"{rec['wall_time_s']:.0f} s", flush=True)
    return rec


def plan_runs(args: argparse.Namespace) -> list[tuple[str, float, int]]:
    conditions = [c.strip() for c in args.conditions.split(",") if c.strip()]
    unknown = [c for c in conditions if c not in CONDITIONS]
    if unknown:
        raise SystemExit(f"--conditions: unknown {unknown}; expected some of {list(CONDITIONS)}")
    multiples = [float(m) for m in args.budgets.split(",")]
    sweep = {c.strip() for c in args.sweep.split(",")}
    runs = []
    # Seed-major: a partial study still compares every condition on the same seeds.
    for seed in seeds_of(args.seeds):
        for c in conditions:
            for m in (multiples if c in sweep else [1.0]):
                if CONDITIONS[c][1] is None and c != "real-steps" and m != 1.0:
                    continue
                runs.append((c, m, seed))
    return runs


def main(argv=None) -> None:
    args = parse_args(argv)
    out = Path(args.out)
    records = Path(args.records)
    if not args.report_only:
        meta = make_split(args, out)
        ensure_generator(args, out)
        _check_records(args, records)
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
        todo = plan_runs(args)
        started = time.perf_counter()
        running: list = []
        for c, m, s in todo:
            proc = run_one(args, meta, out, c, m, s, env)
            if proc is None:
                continue
            running.append(proc)
            while len(running) >= args.jobs:
                running = _reap(args, running)
        while running:
            running = _reap(args, running)
        print(f"study: {len(todo)} runs planned, {time.perf_counter() - started:.0f} s", flush=True)
    table = summarize_records(records)
    write_report(table, records, title=args.title or f"{args.data}: accuracy against generated images",
                 budget=args.budget)


def _check_records(args: argparse.Namespace, records: Path) -> None:
    """Records of one study only: the settings that decide a run's outcome are written beside
    them, and a study with other settings is refused (it would mix its runs with these)."""
    settings = {"data": args.data, "split": [args.pool_fraction, args.labeled_per_class, args.split_seed],
                "generator": _generator_identity(Path(args.generator)), "train_config": args.train_config,
                "train_config_text": (ROOT / args.train_config).read_text(), "build_config": args.build_config,
                "build_config_text": (ROOT / args.build_config).read_text(), "train_set": args.train_set,
                "build_set": args.build_set, "budget": args.budget}
    path = records / "settings.json"
    if path.is_file():
        old = json.loads(path.read_text())
        if old != settings:
            changed = sorted(k for k in settings if old.get(k) != settings[k])
            raise SystemExit(f"{records}: holds runs of a study with other settings ({changed}); use another --records")
        return
    records.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings, indent=1) + "\n")


def _generator_identity(path: Path) -> str:
    """The generator as its weights' sha256 (its fit record's), so the same generator on another
    machine or in another folder (a GPU fit brought back) continues the same records."""
    from actgen.shards.fit_record import read_fit_record

    return "sha256:" + read_fit_record(path).weights_sha256


def _reap(args, running: list) -> list:
    while True:
        for proc in running:
            if proc.poll() is not None:
                record(args, proc)
                return [p for p in running if p is not proc]
        time.sleep(0.5)


if __name__ == "__main__":
    main()
