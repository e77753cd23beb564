"""Running a comparison: every (split, seed, condition, budget) as a real ``actgen-train``
process with inline ``actgen-build`` rounds, in parallel, resumably.

- :func:`prepare_split` makes a split's data (or takes the fixed splits) and its generator.
- :class:`RunSpec` is one run, resolved by the driver: small and picklable, so the same
  :func:`execute` runs it in a local thread pool (``--jobs``) or as a Ray task on a cluster slot.
- :func:`execute` starts or resumes the run and returns its record (what R1's records hold,
  plus the plan's hash, the commit, the generator's sha256 and the split seed); the driver writes
  it, atomically, only when the run is complete. A record that exists is never run again.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

from .conditions import overrides_for, renders
from .plan import ComparePlan
from .split import ensure_generator, make_split

_logger = logging.getLogger(__name__)

RECORDS_DIR = "records"


@dataclass(frozen=True)
class SplitInputs:
    """A split's data files, class names and generator (None when no condition builds)."""

    split: int
    labeled: str
    test: str
    class_names: list[str]
    generator: Optional[str]
    generator_sha256: Optional[str]


@dataclass(frozen=True)
class RunSpec:
    """One run, everything resolved (picklable: it travels to a Ray worker)."""

    name: str
    split: int
    seed: int
    condition: str
    registry: str
    multiple: float
    budget: int
    argv_config: tuple[str, ...]      # --config/--set arguments of a new run
    run_dir: str
    log: str
    threads: int
    builds: bool
    identity: dict                    # plan hash, commit, generator, split: copied into the record


def record_path(out: Path, split: int, name: str) -> Path:
    return Path(out) / RECORDS_DIR / f"split-{split}" / f"{name}.json"


def run_name(condition: str, multiple: float, seed: int) -> str:
    return f"{condition}-b{multiple:g}-s{seed}"


def prepare_split(plan: ComparePlan, split: int, work: Path, fit_env: Optional[dict] = None) -> SplitInputs:
    """The split's data (made once, reused) and generator (fitted once when the plan fits one)."""
    folder = Path(work) / "splits" / f"split-{split}"
    if plan.data.fixed:
        from actgen.shards.sources import DataSource, load_source

        labeled, test = str(plan.data.labeled), str(plan.data.test)
        names = list(load_source(DataSource(path=labeled)).class_names)
        pool = None
    else:
        meta = make_split(plan.data.source, plan.data.split, plan.data.pool_fraction, plan.data.labeled_per_class,
                          split, folder)
        labeled, test = str(folder / "labeled.parquet"), str(folder / "test.parquet")
        names = list(meta["class_names"])
        pool = folder / "pool.parquet" if meta["sizes"]["pool"] else None
    generator = sha = None
    if plan.renders:       # copies of guide images load no generator: none is fitted or checked
        pinned = plan.generator.sha256.get(str(split))
        if plan.generator.path is not None:
            generator = plan.generator.path
            local = Path(generator).expanduser()
            sha = _local_generator_sha(local) if local.is_dir() else None
            if pinned is not None and sha != pinned:
                raise ValueError(f"generator.path {generator}: weights sha256 {str(sha)[:16]}, the plan pins "
                                 f"{pinned[:16]} for split {split}")
        else:
            target = Path(work) / "generators" / f"split-{split}"
            sha = ensure_generator(target, pool, plan.generator.fit_config, plan.generator.fit_set, pinned,
                                   env=fit_env)
            generator = str(target.resolve())
    return SplitInputs(split, str(Path(labeled).resolve()) if Path(labeled).exists() else labeled,
                       str(Path(test).resolve()) if Path(test).exists() else test, names, generator, sha)


def _local_generator_sha(path: Path) -> Optional[str]:
    from actgen.shards.fit_record import FIT_RECORD_FILE

    from .split import generator_sha256

    return generator_sha256(path) if (path / FIT_RECORD_FILE).is_file() else None


def specs(plan: ComparePlan, inputs: dict[int, SplitInputs], work: Path, identity: dict) -> list[RunSpec]:
    """Every planned run of the splits in ``inputs``, in the plan's order."""
    out = []
    for split, seed, cond, m in plan.runs():
        if split not in inputs:
            continue
        s = inputs[split]
        c = plan.condition(cond)
        budget = max(1, int(round(m * plan.budget)))
        train, build = overrides_for(c.registry, c.train_set, c.build_set or None, budget)
        names = json.dumps(s.class_names)
        sets = [f"data.source.path={s.labeled}", f"data.source.class_names={names}",
                f"data.test_source.path={s.test}", f"data.test_source.class_names={names}",
                f"train.seed={42 + seed}", "train.progress=false", "loader.num_workers=0",
                *plan.train_set, *train]
        rendered = build is not None and renders(c.registry, c.build_set)
        if build is None:
            sets.append("synthetic.source=none")
        else:
            build_sets = [f"budget={budget}", f"seed={seed}",
                          *([f"generator.path={s.generator}"] if rendered else []), *plan.build_set, *build]
            quoted = ",".join(json.dumps(o) for o in build_sets)
            from actgen.shards.config import resolve_config_path

            sets += ["synthetic.source=inline", f"synthetic.build_config={resolve_config_path(plan.build_config)}",
                     f"synthetic.build_overrides=[{quoted}]"]
        argv = ["--config", str(_config_path(plan.train_config))]
        for o in sets:
            argv += ["--set", o]
        name = run_name(cond, m, seed)
        run_dir = Path(work) / "runs" / f"split-{split}" / name
        out.append(RunSpec(name=name, split=split, seed=seed, condition=cond, registry=c.registry, multiple=m,
                           budget=budget if build is not None else 0, argv_config=tuple(argv), run_dir=str(run_dir),
                           log=str(Path(work) / "logs" / f"split-{split}" / f"{name}.log"), threads=plan.threads,
                           builds=build is not None,
                           identity={**identity, "split_seed": split,
                                     "generator": s.generator if rendered else None,
                                     "generator_sha256": s.generator_sha256 if rendered else None}))
    return out


def check_train_configs(plan: ComparePlan) -> None:
    """Load the trainer's config of every condition (the plan's train config, its overrides and
    the condition's) before anything is fitted or run, so that a key a condition needs (a hold-out
    condition on a config without ``data.holdout_fraction``) or a mistyped override is one error
    naming the condition and the key, not a failed first run an hour later.

    Raises:
        ValueError: the first condition whose trainer config does not load.
    """
    from actgen.trainer.config import load_config

    path = _config_path(plan.train_config)
    for c in plan.conditions:
        train, _ = overrides_for(c.registry, c.train_set, c.build_set or None, max(1, plan.budget))
        try:
            load_config(path, [*plan.train_set, *train, "synthetic.source=none"])
        except ValueError as e:
            raise ValueError(f"condition {c.name!r} (train_config {path}): {e}") from None


def _config_path(value: str) -> Path:
    from actgen.shards.config import resolve_config_path

    return resolve_config_path(value).resolve()


def execute(spec: RunSpec) -> dict:
    """Start the run (or resume it from its last checkpoint) and return its record.

    A run folder without a checkpoint (a run killed before its first epoch ended) is started
    over. RuntimeError naming the log when the run fails.
    """
    from actgen.trainer.inline import resolve_command

    run_dir = Path(spec.run_dir)
    argv = [resolve_command("actgen-train")]
    if (run_dir / "last.pt").is_file():
        argv += ["--run-dir", str(run_dir), "--resume"]
    else:
        if run_dir.exists():
            shutil.rmtree(run_dir)
        argv += [*spec.argv_config, "--run-dir", str(run_dir)]
    log = Path(spec.log)
    log.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(spec.threads), MKL_NUM_THREADS=str(spec.threads))
    t0 = time.perf_counter()
    with open(log, "a") as f:
        code = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL).returncode
    if code != 0:
        raise RuntimeError(f"run {spec.name} (split {spec.split}) failed with exit {code}; see {log}")
    return make_record(spec, run_dir, time.perf_counter() - t0)


def make_record(spec: RunSpec, run_dir: Path, seconds: float) -> dict:
    """The run's record: its outcome, each round's hard samples and synthetic set, and its identity."""
    summary = json.loads((run_dir / "summary.json").read_text())
    if not summary.get("complete"):
        raise RuntimeError(f"run {spec.name}: {run_dir / 'summary.json'} says the run is not complete")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    pool = {e["round"]: e for e in summary.get("pool", [])}
    return {
        "run": spec.name, "condition": spec.condition, "registry": spec.registry, "split_seed": spec.split,
        "seed": spec.seed, "budget_multiple": spec.multiple, "budget_per_round": spec.budget,
        "images_generated": summary["synthetic_pool"], "final_test_acc": summary["final"]["test_acc"],
        "best_test_acc": summary["best_test_acc"],
        "rounds": [round_record(r, pool, run_dir) for r in summary["rounds"]],
        "test_acc_per_epoch": [row["test_acc"] for row in rows],
        "synthetic_share_per_epoch": [row.get("synthetic_share") for row in rows],
        "real_images_per_epoch": [row.get("real_images") for row in rows],
        "optimizer_steps": summary.get("optimizer_steps"), "wall_time_s": round(seconds, 1),
        **spec.identity,
    }


def round_record(info: dict, pool: dict, run_dir: Path) -> dict:
    """One round of a record: its hard samples (how many, of how many classes) and what its
    synthetic data set held (images per class, roles, modes, guides, the synthetic share)."""
    rec = {k: info.get(k) for k in ("round", "epoch", "hard_samples", "holdout_acc", "searched")}
    manifest = run_dir / "rounds" / str(info["round"]) / "hard_samples.json"
    if manifest.is_file():
        rec["hard_classes"] = len({s["label"] for s in json.loads(manifest.read_text())["samples"]})
    entry = pool.get(info["round"])
    made_of = (entry or {}).get("composition") or {}
    rec.update({"synthetic_images": entry["num_samples"] if entry else None,
                "synthetic_per_class": made_of.get("per_class"), "roles": made_of.get("roles"),
                "modes": made_of.get("modes"), "distinct_guides": made_of.get("distinct_guides"),
                "renders_per_guide_max": made_of.get("renders_per_guide_max"),
                "renders_per_guide_mean": made_of.get("renders_per_guide_mean"),
                "synthetic_share": entry.get("share_at_join") if entry else None})
    return rec


def write_record(out: Path, record: dict) -> Path:
    from actgen.shards.atomic import atomic_write_text

    path = record_path(out, record["split_seed"], record["run"])
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(record, indent=1) + "\n")
    return path


def run_all(todo: list[RunSpec], out: Path, jobs: int = 1, ray_address: Optional[str] = None,
            gpus_per_run: float = 0.0, on_record: Optional[Callable[[dict], None]] = None) -> int:
    """Run ``todo`` (their records missing) and write each record as its run completes.

    ``ray_address`` None: ``jobs`` runs at a time in this machine's threads (each run is its own
    process). Otherwise one Ray task per run, each asking for ``threads`` CPUs (and
    ``gpus_per_run`` GPUs), so the cluster runs as many at once as it has slots. Every run is
    attempted; RuntimeError naming the failed runs at the end. Returns the records written.
    """
    failures: list[str] = []
    written = 0

    def done(record: dict) -> None:
        nonlocal written
        write_record(out, record)
        written += 1
        if on_record is not None:
            on_record(record)

    if ray_address is None:
        from concurrent.futures import ThreadPoolExecutor, as_completed

        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            futures = {pool.submit(execute, s): s for s in todo}
            for fut in as_completed(futures):
                try:
                    done(fut.result())
                except Exception as e:      # every run is attempted; failures reported at the end
                    failures.append(str(e))
                    _logger.error("%s", e)
    else:
        for outcome in _run_on_ray(todo, ray_address, gpus_per_run):
            if isinstance(outcome, Exception):
                failures.append(str(outcome))
                _logger.error("%s", outcome)
            else:
                done(outcome)
    if failures:
        raise RuntimeError(f"{len(failures)} run(s) failed: " + "; ".join(failures))
    return written


def _run_on_ray(todo: list[RunSpec], address: str, gpus_per_run: float) -> Iterable[object]:
    """One Ray task per run (``execute``), yielded as they finish."""
    import ray

    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=False, include_dashboard=False)
    task = ray.remote(execute)
    refs = {task.options(num_cpus=s.threads, num_gpus=gpus_per_run, max_retries=0).remote(s): s for s in todo}
    pending = list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        try:
            yield ray.get(ready[0])
        except Exception as e:     # a RayTaskError wraps the run's RuntimeError
            yield RuntimeError(f"run {refs[ready[0]].name} (split {refs[ready[0]].split}) failed on Ray: "
                               f"{getattr(e, 'cause', None) or e}")


def commit_of() -> str:
    """The git commit of the actgen checkout running this (with ``+dirty`` when its tracked files
    differ), or the package version when it is not a checkout."""
    from actgen.shards import __version__

    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        if head.returncode != 0:
            raise OSError(head.stderr)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return f"actgen {__version__} (not a git checkout)"

