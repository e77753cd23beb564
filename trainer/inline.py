"""``synthetic.source: inline``: ``actgen-build`` builds each finished round, on this machine.

The trainer never imports builder code (the two programs meet only in ``shards/``): it starts the
builder's console script once per run, in server mode (``actgen-build --serve``), and sends it
one request per finished round: the round folder, the output, the trainer's data source (see
``actgen.builder.serve`` for the line protocol). The builder keeps Ray and its workers, with
their loaded generator, across rounds; the next epoch takes the finished data set through the
usual path (wait, fetch, verify). A rerun after a crash is cheap: the builder keeps complete
shards of an unfinished build with the same settings, and a finished one is left alone; since
resume is exact, a re-run round writes the same checkpoint, so its settings match.
"""
from __future__ import annotations

import atexit
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


REPLY_PREFIX = "actgen-serve "    # actgen.builder.serve's; the trainer does not import it


def server_argv(cfg: SyntheticConfig) -> list[str]:
    """The command line of the run's builder server; the config's own ``build_overrides`` are
    its ``--set`` overrides, applied after each round's paths, so they win."""
    # The requests name the trainer's own configured data set: no bound on listing it (a folder of
    # a million images stays accepted; the builder says once what importing it would save).
    argv = [resolve_command(cfg.build_command), "--serve", "--request-listing-seconds", "0"]
    if cfg.build_config is not None:
        argv += ["--config", cfg.build_config]
    for override in cfg.build_overrides:
        argv += ["--set", override]
    return argv


def check_builder(cfg: SyntheticConfig) -> None:
    """``actgen-build --check`` with the run's build config and overrides: a bad generator path or
    key fails before the run folder exists, in the builder's own words (the trainer never imports
    the builder). ValueError naming ``synthetic.build_config``/``build_overrides``."""
    argv = [resolve_command(cfg.build_command), "--check"]
    if cfg.build_config is not None:
        argv += ["--config", cfg.build_config]
    for override in cfg.build_overrides:
        argv += ["--set", override]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise ValueError(f"synthetic.build_config: {' '.join(argv[1:])} did not answer within 600 s") from None
    if out.returncode != 0:
        lines = [line for line in out.stderr.strip().splitlines() if line.strip()]
        reason = lines[-1].removeprefix("actgen-build: error: ").removeprefix("actgen-build: failed: ") \
            if lines else f"exit {out.returncode}"
        raise ValueError(f"config keys 'synthetic.build_config' / 'synthetic.build_overrides': the builder refuses "
                         f"them: {reason}")


def request_line(round_dir: Path, output: str, dataset: Optional[DataSource] = None) -> str:
    """One round's request. The builder reads the number of rounds for its per-round schedules from
    the manifest; it reads guide images only from a data set it is given (a manifest never
    chooses what it reads), so the trainer's own ``data.source`` is passed along."""
    return json.dumps({"round_dir": str(round_dir), "output": str(output),
                       "dataset": dataclasses.asdict(dataset) if dataset is not None else None}) + "\n"


class InlineBuilder:
    """The run's ``actgen-build --serve`` process: started at the first round, ended by :meth:`close`
    (or at exit). Its log goes to this process's stderr."""

    def __init__(self, cfg: SyntheticConfig):
        self.cfg = cfg
        self.proc: Optional[subprocess.Popen] = None

    def build(self, round_dir: Path, output: str, dataset: Optional[DataSource] = None) -> dict:
        """Build one round; return the builder's reply (``images``, ``seconds``).

        Raises:
            RuntimeError: the round failed (the builder's error line), or the builder exited.
        """
        if self.proc is None or self.proc.poll() is not None:
            argv = server_argv(self.cfg)
            _logger.info("starting the inline builder: %s", " ".join(argv))
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        _logger.info("building round %s inline into %s", round_dir.name, output)
        try:
            self.proc.stdin.write(request_line(round_dir, output, dataset))
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass     # it died: the reply loop below reports its exit status
        for line in self.proc.stdout:
            if line.startswith(REPLY_PREFIX):
                reply = json.loads(line[len(REPLY_PREFIX):])
                if not reply.get("ok"):
                    raise RuntimeError(f"inline actgen-build for {round_dir} failed: {reply.get('error')}")
                return reply
        status = self.proc.wait()
        raise RuntimeError(f"inline actgen-build exited with status {status} while building {round_dir} "
                           f"(its own error line is above, on stderr)")

    def close(self, timeout: float = 60.0) -> None:
        """End the builder: end of input, then wait (kill after ``timeout`` seconds)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            proc.stdin.close()
            proc.wait(timeout=timeout)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()


_BUILDERS: dict[str, InlineBuilder] = {}


def build_round(cfg: SyntheticConfig, round_dir: Path, output: str, dataset: Optional[DataSource] = None) -> dict:
    """Build one round with the builder server of ``cfg`` (started on first use).

    Raises:
        RuntimeError: the builder failed (its error line is in the message and on stderr).
    """
    key = json.dumps(dataclasses.asdict(cfg), sort_keys=True, default=str)
    builder = _BUILDERS.get(key)
    if builder is None:
        builder = _BUILDERS[key] = InlineBuilder(cfg)
    return builder.build(round_dir, output, dataset)


def close_builders() -> None:
    """End every builder server this process started (the end of a run)."""
    while _BUILDERS:
        _BUILDERS.popitem()[1].close()


atexit.register(close_builders)


def run_script(argv: list[str], what: str) -> None:
    """Run one of the builder's console scripts here; its output goes to this process's.

    Raises:
        RuntimeError: it failed (its own error line is above, on stderr).
    """
    result = subprocess.run(argv, stdin=subprocess.DEVNULL, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{what} failed with exit status {result.returncode} (command: {' '.join(argv)})")
