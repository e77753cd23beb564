"""The round folder: where a training run and a builder meet, and how each side marks progress.

A training run directory holds one folder per round::

    <run_dir>/rounds/<r>/checkpoint/         classifier bundle       (trainer, written first)
    <run_dir>/rounds/<r>/hard_samples.json   hard-sample manifest    (trainer, written last: "ready")
    <run_dir>/rounds/<r>/shards/             synthetic data set      (builder; its index.json last)
    <run_dir>/rounds/<r>/build_status.json   the builder's state     (builder: building/retrying/done/failed)

A round is *ready to build* once its manifest reads, and *built* once its shards' ``index.json``
reads; ``build_status.json`` adds who built it, when and how it went, so that a restarted watcher
(or a person) can tell a finished round from an interrupted or failed one. Every file is written
atomically, so either side can be killed at any instant and restarted.
"""
from __future__ import annotations

import dataclasses
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ._schema import check_format, dumps, from_jsonable, read_json_file, utc_now
from .atomic import atomic_write_text
from .errors import FormatError
from .manifest import MANIFEST_FILE  # noqa: F401  (a round folder's manifest; re-exported for both programs)

ROUNDS_DIR = "rounds"
CHECKPOINT_DIR = "checkpoint"
SHARDS_DIR = "shards"
STATUS_FILE = "build_status.json"

STATUS_FORMAT = "actgen.build-status"
STATUS_FORMAT_VERSION = 1

STATES = ("building", "retrying", "done", "failed")


def round_dir(run_dir: str | Path, round: int) -> Path:
    return Path(run_dir) / ROUNDS_DIR / str(round)


def list_rounds(run_dir: str | Path) -> list[int]:
    """Rounds whose manifest exists (ready to build), in order. Other folders are ignored."""
    root = Path(run_dir) / ROUNDS_DIR
    if not root.is_dir():
        return []
    found = [int(p.name) for p in root.iterdir() if p.name.isdigit() and (p / MANIFEST_FILE).is_file()]
    return sorted(found)


@dataclass(frozen=True)
class BuildStatus:
    """What a builder did with one round (``rounds/<r>/build_status.json``).

    Attributes:
        state: ``building`` (started; a kill leaves it so: the next attempt resumes the shards),
            ``retrying`` (an attempt failed, ``error`` says why, and the builder will try again:
            a trainer keeps waiting), ``done`` (the shards' ``index.json`` is written), ``failed``
            (the builder gave up; ``error`` says why).
        round: the round.
        host, pid: who wrote this state.
        updated: UTC time of this state.
        attempts: how many times a builder started on the round.
        images: images in the finished data set (``done``).
        seconds: wall time of the attempt that finished it (``done``).
        error: one line (``retrying``, ``failed``).
    """

    state: str
    round: int
    host: str = ""
    pid: int = 0
    updated: str = ""
    attempts: int = 1
    images: int = 0
    seconds: float = 0.0
    error: str = ""
    format: str = STATUS_FORMAT
    format_version: int = STATUS_FORMAT_VERSION


def read_status(round_directory: str | Path) -> Optional[BuildStatus]:
    """The round's build status, or None when no builder has touched it (FormatError if malformed)."""
    path = Path(round_directory) / STATUS_FILE
    if not path.is_file():
        return None
    data = read_json_file(path)
    check_format(str(path), data, STATUS_FORMAT, STATUS_FORMAT_VERSION)
    status = from_jsonable(BuildStatus, data, str(path))
    if status.state not in STATES:
        raise FormatError(str(path), f"field 'state' must be one of {list(STATES)}, got {status.state!r}")
    return status


def write_status(round_directory: str | Path, status: BuildStatus) -> BuildStatus:
    """Write ``status`` atomically, stamped with this host, pid and the time; return what was written."""
    status = dataclasses.replace(status, host=socket.gethostname(), pid=os.getpid(), updated=utc_now())
    atomic_write_text(Path(round_directory) / STATUS_FILE, dumps(status))
    return status
