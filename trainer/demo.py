"""``actgen-demo``: the whole active loop on one machine, from one command, to a report.

1. Generator: reuse the fitted generator at ``generator`` when its ``fit_record.json`` was fitted
   on the training data, else fit it with ``actgen-fit-generator`` (resuming an interrupted fit).
2. Active run: ``actgen-train`` with ``synthetic.source: inline``: every round's hard samples go
   to ``actgen-build`` (Ray workers), whose shards join training from the next epoch on.
3. Baseline: the same config, seed and split on real images only (``baseline: true``).
4. Report: ``report.md`` with the accuracy plot and hard samples beside their renderings.

Every step is resumable: a rerun skips finished runs and resumes interrupted ones. The trainer
still imports no builder code: the fit and the builds are the builder's console scripts.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import click

from actgen.shards.config import load_structured
from actgen.shards.errors import cli_errors
from actgen.shards.sources import LabeledImages, load_source

from .config import Config, load_config
from .inline import resolve_command, run_script
from .report import write_report

_logger = logging.getLogger(__name__)

FIT_RECORD = "fit_record.json"
STAGES = 4


@dataclass(frozen=True)
class DemoConfig:
    """What ``actgen-demo`` runs (``configs/demo.yaml``).

    Attributes:
        output: directory of the two runs (``active/``, ``baseline/``) and the report.
        train_config: the trainer config of both runs.
        train_overrides: ``key=value`` overrides for it.
        build_config: the builder config of every round (``synthetic.build_config``).
        build_overrides: ``key=value`` overrides for it (``generator.path`` is set from ``generator``).
        generator: the fitted generator's directory: reused when it was fitted on the training data.
        fit_config: ``actgen-fit-generator`` config that makes it otherwise.
        baseline: also train on real images only, for the comparison.
    """

    output: str = "runs/demo"
    train_config: str = "configs/train-digits.yaml"
    train_overrides: list[str] = field(default_factory=list)
    build_config: str = "configs/build-digits.yaml"
    build_overrides: list[str] = field(default_factory=list)
    generator: str = "runs/generators/digits"
    fit_config: str = "configs/fit-digits.yaml"
    baseline: bool = True


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
    return load_config(cfg.train_config, [*cfg.train_overrides, *extra, f"run_dir={run_dir}"])


def ensure_generator(cfg: DemoConfig, images: LabeledImages) -> str:
    """Reuse or fit the generator; return what was done ("reused", "fitted", "resumed")."""
    path = Path(cfg.generator)
    record = path / FIT_RECORD
    if record.is_file():
        fitted_on = json.loads(record.read_text()).get("data", {}).get("fingerprint")
        if fitted_on != images.fingerprint:
            raise ValueError(f"{record}: this generator was fitted on data set {str(fitted_on)[:12]}, but the "
                             f"demo trains on {images.fingerprint[:12]}; point 'generator' at another directory")
        return "reused"
    resume = (path / "checkpoints" / "last.pt").is_file()
    argv = [resolve_command("actgen-fit-generator"), "--config", cfg.fit_config, "--output", str(path)]
    if resume:
        argv.append("--resume")
    _logger.info("fitting the generator: %s", " ".join(argv))
    run_script(argv, "actgen-fit-generator")
    return "resumed" if resume else "fitted"


def train(run_cfg: Config) -> str:
    """Run, resume or skip one training run; return which."""
    from .run import SUMMARY_FILE, run

    run_dir = run_cfg.resolved_run_dir()
    summary = run_dir / SUMMARY_FILE
    if summary.is_file() and json.loads(summary.read_text()).get("complete"):
        return "finished earlier"
    resume = (run_dir / "last.pt").is_file()
    run(run_cfg, resume=resume)
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


def load_demo_config(path: Optional[Path], overrides: Sequence[str] = ()) -> DemoConfig:
    return load_structured(DemoConfig, path, overrides)


EPILOG = """\b
Examples:
  actgen-demo                                        # configs/demo.yaml: the embedded digits
  actgen-demo --set output=runs/demo2 --set baseline=false
  actgen-demo --set 'train_overrides=["train.epochs=10"]'

\b
Writes into OUTPUT:
  active/     the actgen-train run with inline builds (rounds/<r>/shards: what was rendered)
  baseline/   the same run on real images only
  report.md   with accuracy.png and hard_vs_rendered.png
The generator directory is reused on later runs; delete it to fit again.
"""


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}, epilog=EPILOG)
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              default="configs/demo.yaml", show_default=True, help="Demo config (see configs/demo.yaml).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a demo config value, e.g. --set output=runs/demo2 --set baseline=false.")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging; tracebacks on errors.")
def main(config_path: Path, overrides: tuple[str, ...], verbose: bool) -> None:
    """Run the whole ActGen loop on this machine and write a report.

    Fits (or reuses) a small generator, trains a classifier in rounds while actgen-build renders
    images near each round's hard samples, trains the same classifier on real images only, and
    writes OUTPUT/report.md with an accuracy plot and the hard samples beside their renderings.
    A rerun picks up where an interrupted one stopped.
    """
    from .cli import _setup_logging

    _setup_logging(verbose)
    with cli_errors("actgen-demo", verbose, interrupted="interrupted; rerun the same command to continue"):
        cfg = load_demo_config(config_path, overrides)
        report = run(cfg, command=" ".join(["actgen-demo", *sys.argv[1:]]))
        click.echo(f"report: {report}")
