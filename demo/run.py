"""``actgen-demo``'s stages: the whole active loop on one machine, from one config, to a report.

1. Generator: reuse the fitted generator at ``generator`` when its ``fit_record.json`` was fitted
   on the training data, else fit it with ``actgen-fit-generator`` (resuming an interrupted fit).
2. Active run: ``actgen-train`` with ``synthetic.source: inline``: every round's hard samples go
   to ``actgen-build`` (Ray workers), whose shards join training from the next epoch on.
3. Baseline: the same config, seed and split on real images only (``baseline: true``).
4. Report: ``report.md`` with the accuracy plot and hard samples beside their renderings.

Every stage is resumable: a rerun skips finished runs and resumes interrupted ones. The trainer
still imports no builder code: the fit and the builds are console scripts run as subprocesses;
the demo reads only their files (``fit_record.json``, the run directories).
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from actgen.fitting.config import can_resume
from actgen.shards.fit_record import FIT_RECORD_FILE, read_fit_record
from actgen.shards.sources import LabeledImages, load_source
from actgen.trainer.config import Config, load_config
from actgen.trainer.inline import resolve_command, run_script

from .config import DemoConfig
from .report import write_report

_logger = logging.getLogger(__name__)

STAGES = 4


def stage(number: int, text: str) -> None:
    """The progress line the user follows: which stage of the loop is running."""
    _logger.info("[demo %d/%d] %s", number, STAGES, text)


def train_config(cfg: DemoConfig, which: str) -> Config:
    """The trainer config of the ``active`` or ``baseline`` run."""
    run_dir = Path(cfg.output) / which
    if which == "baseline":
        extra = ["synthetic.source=none"]
    else:
        builds = [f"generator.path={Path(cfg.generator).absolute()}", *cfg.build_overrides]
        extra = ["synthetic.source=inline", f"synthetic.build_config={cfg.build_config}",
                 "synthetic.build_overrides=[" + ",".join(json.dumps(b) for b in builds) + "]",
                 "synthetic.on_missing=error"]
    return load_config(cfg.train_config, [*cfg.train_overrides, *extra], literal={"run_dir": str(run_dir)})


def ensure_generator(cfg: DemoConfig, images: LabeledImages) -> str:
    """Reuse or fit the generator; return what was done ("reused", "fitted", "resumed").

    Raises:
        ValueError: the generator was fitted on another data set, or its record is malformed
            (FormatError).
    """
    path = Path(cfg.generator)
    if (path / FIT_RECORD_FILE).is_file():
        fitted_on = read_fit_record(path).data.fingerprint
        if fitted_on != images.fingerprint:
            raise ValueError(f"{path / FIT_RECORD_FILE}: this generator was fitted on data set {fitted_on[:12]}, "
                             f"but the demo trains on {images.fingerprint[:12]}; point 'generator' at another "
                             f"directory")
        return "reused"
    resume = can_resume(path)
    argv = [resolve_command("actgen-fit-generator"), "--config", cfg.fit_config, "--output", str(path)]
    if resume:
        argv.append("--resume")
    _logger.info("fitting the generator: %s", " ".join(argv))
    run_script(argv, "actgen-fit-generator")
    return "resumed" if resume else "fitted"


def train(run_cfg: Config) -> str:
    """Run, resume or skip one training run; return which."""
    from actgen.trainer.checkpoint import CHECKPOINT_FILE
    from actgen.trainer.run import SUMMARY_FILE, run as run_training

    run_dir = run_cfg.resolved_run_dir()
    summary = run_dir / SUMMARY_FILE
    if summary.is_file() and json.loads(summary.read_text()).get("complete"):
        return "finished earlier"
    resume = (run_dir / CHECKPOINT_FILE).is_file()
    run_training(run_cfg, resume=resume)
    return "resumed" if resume else "trained"


def run(cfg: DemoConfig, command: str = "") -> Path:
    """The whole loop (see the module docstring); return the report's path."""
    timings: dict[str, float] = {}
    active_cfg = train_config(cfg, "active")       # validates both configs before any work
    baseline_cfg = train_config(cfg, "baseline") if cfg.baseline else None
    images = load_source(active_cfg.data.source)

    t = time.perf_counter()
    stage(1, f"generator {cfg.generator}: reusing it if fitted on this data, else fitting it")
    how = ensure_generator(cfg, images)
    timings[f"generator ({how})"] = time.perf_counter() - t
    stage(1, f"generator {how}")

    t = time.perf_counter()
    stage(2, f"active run {active_cfg.resolved_run_dir()}: {active_cfg.train.epochs} epochs; each round's hard "
             "samples -> actgen-build -> shards -> training")
    how = train(active_cfg)
    timings[f"active run ({how}; builds included)"] = time.perf_counter() - t

    if baseline_cfg is not None:
        t = time.perf_counter()
        stage(3, f"baseline {baseline_cfg.resolved_run_dir()}: the same run on real images only")
        how = train(baseline_cfg)
        timings[f"baseline run ({how})"] = time.perf_counter() - t
    else:
        stage(3, "baseline skipped (baseline: false)")

    stage(4, f"report -> {Path(cfg.output) / 'report.md'}")
    return write_report(cfg.output, active_cfg.resolved_run_dir(),
                        baseline_cfg.resolved_run_dir() if baseline_cfg is not None else None, images,
                        command=command, timings=timings)
