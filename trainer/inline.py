"""``synthetic.source: inline``: run ``actgen-build`` on each finished round, on this machine.

The trainer never imports builder code (the two programs meet only in ``shards/``): it runs the
builder's console script on the round folder it has just written, exactly as a separate job
would, and the next epoch takes the finished data set through the usual path (wait, fetch,
verify). A rerun after a crash is cheap: the builder keeps complete shards of an unfinished build
with the same settings, and a finished one is left alone; since resume is exact, a re-run round
writes the same checkpoint, so its settings match.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional

from actgen.shards.sources import DataSource

from .config import SyntheticConfig

_logger = logging.getLogger(__name__)


def resolve_command(name: str) -> str:
    """The builder's executable: beside this interpreter first (a venv need not be activated for
    its scripts to run), then on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"synthetic.build_command {name!r}: not found beside {sys.executable} nor on PATH; "
                                "install actgen (it provides actgen-build) or set synthetic.source: shards")
    return found


def builder_argv(cfg: SyntheticConfig, round_dir: Path, output: str, dataset: Optional[DataSource] = None) -> list[str]:
    """The command line that builds round ``round_dir``'s data set into ``output``.

    The builder reads the number of rounds for its §1.3 schedules from the manifest. It reads
    guide images only from a data set it is given (a manifest never chooses what it reads), so
    the trainer's own ``data.source`` is passed along. The config's own ``build_overrides`` come
    last, so they win.
    """
    argv = [resolve_command(cfg.build_command)]
    if cfg.build_config is not None:
        argv += ["--config", cfg.build_config]
    argv += ["--round-dir", str(round_dir), "--output", str(output)]
    if dataset is not None:
        argv += ["--set", f"dataset={json.dumps(dataclasses.asdict(dataset))}"]
    for override in cfg.build_overrides:
        argv += ["--set", override]
    return argv


def build_round(cfg: SyntheticConfig, round_dir: Path, output: str, dataset: Optional[DataSource] = None) -> None:
    """Run the builder for one round (on ``dataset``, the trainer's data source); its output goes
    to this process's stdout/stderr.

    Raises:
        RuntimeError: the builder failed (its own error line is above, on stderr).
    """
    argv = builder_argv(cfg, round_dir, output, dataset)
    _logger.info("building round %s inline: %s", round_dir.name, " ".join(argv))
    run_script(argv, f"inline actgen-build for {round_dir}")


def run_script(argv: list[str], what: str) -> None:
    """Run one of the builder's console scripts here; its output goes to this process's.

    Raises:
        RuntimeError: it failed (its own error line is above, on stderr).
    """
    result = subprocess.run(argv, stdin=subprocess.DEVNULL, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{what} failed with exit status {result.returncode} (command: {' '.join(argv)})")
