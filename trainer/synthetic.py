"""The synthetic pool: each round's data set is located, awaited, fetched into the run and verified.

The pool persists across rounds (the paper's generated images stay in the training set for good).
Each data set is copied into ``<run_dir>/synthetic/round-<r>`` with ``shards.reader.fetch``
(sha256-checked), so a resumed run never depends on the builder's folder, and then verified
(``shards.verify``: decodable images, labels, keys, and class names equal to the run's).

Extension point: ``synthetic.source`` selects where images come from. ``shards`` (this module)
reads what a separate ``actgen-build`` wrote; an inline builder would add a source that renders
the data set into the same layout, after which :func:`acquire` applies unchanged.
"""
from __future__ import annotations

import logging
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from actgen.shards.errors import FormatError
from actgen.shards.reader import fetch, is_url, read_index
from actgen.shards.verify import verify
from actgen.shards.writer import INDEX_FILE

from .config import SyntheticConfig

_logger = logging.getLogger(__name__)

POOL_DIR = "synthetic"


@dataclass(frozen=True)
class PoolEntry:
    """One fetched data set of the pool.

    Attributes:
        round: the round whose hard samples it was built from.
        directory: its copy, relative to the run directory.
        location: where it was fetched from.
        num_samples: images in it.
        epoch: the first epoch that trained on it.
    """

    round: int
    directory: str
    location: str
    num_samples: int
    epoch: int

    def to_dict(self) -> dict:
        return asdict(self)


def round_location(pattern: str, run_dir: str | Path, round: int) -> str:
    """Round ``round``'s data-set location from ``synthetic.pattern``."""
    return pattern.format(run_dir=str(run_dir), round=round)


def pool_directory(round: int) -> str:
    return f"{POOL_DIR}/round-{round:04d}"


def is_finished(location: str) -> bool:
    """Whether a finished data set is at ``location`` (its ``index.json`` reads).

    A local ``index.json`` that exists but does not parse is an error, not "unfinished": writers
    put it in place atomically and last.
    """
    if not is_url(location):
        if not (Path(location) / INDEX_FILE).is_file():
            return False
        read_index(location)  # raises FormatError naming the file
        return True
    try:
        read_index(location)
    except (FormatError, ConnectionError):
        return False
    return True


def wait_until_finished(location: str, cfg: SyntheticConfig, round: int,
                        sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic,
                        first_look: bool = True) -> bool:
    """Apply ``synthetic.on_missing``; True once the data set is finished, False to go on without.

    ``first_look``: under ``skip`` a missing data set is a warning the first time only; later
    looks at every epoch start log at debug level, so a run without a builder stays readable.

    Raises:
        FileNotFoundError: ``on_missing: error`` and nothing there.
        TimeoutError: ``on_missing: wait`` and nothing there after ``timeout_s``.
    """
    if is_finished(location):
        return True
    what = f"round {round}'s synthetic data set at {location} is not finished (no readable {INDEX_FILE})"
    if cfg.on_missing == "error":
        raise FileNotFoundError(f"{what}; synthetic.on_missing is 'error'")
    if cfg.on_missing == "skip":
        _logger.log(logging.WARNING if first_look else logging.DEBUG,
                    "%s; going on without it (looking again next epoch)", what)
        return False
    _logger.info("%s; waiting up to %.0f s", what, cfg.timeout_s)
    deadline = clock() + cfg.timeout_s
    while clock() < deadline:
        sleep(min(cfg.poll_s, max(deadline - clock(), 0.0)))
        if is_finished(location):
            return True
    raise TimeoutError(f"{what} after waiting {cfg.timeout_s:.0f} s (synthetic.timeout_s)")


def acquire(location: str, run_dir: str | Path, round: int, epoch: int, class_names: list[str]) -> PoolEntry:
    """Fetch a finished data set into the run and verify it against the run's class names.

    Raises:
        FormatError: a corrupt or truncated shard, a sha256 mismatch, or other class names
            (both lists shown); the partial copy is removed.
    """
    relative = pool_directory(round)
    destination = Path(run_dir) / relative
    try:
        index = fetch(location, destination)
        report = verify(destination, class_names=list(class_names))
    except FormatError:
        shutil.rmtree(destination, ignore_errors=True)
        raise
    _logger.info("round %d: %d synthetic images from %s joined the pool (%s)", round, report.num_samples, location,
                 ", ".join(f"{k} {v}" for k, v in report.class_counts.items() if v))
    return PoolEntry(round=round, directory=relative, location=str(location), num_samples=index.num_samples,
                     epoch=epoch)


def pool_size(pool: list[PoolEntry]) -> int:
    return sum(e.num_samples for e in pool)


def pool_from_state(entries: list[dict], run_dir: str | Path) -> list[PoolEntry]:
    """The pool recorded in a checkpoint; each copy must still be in the run directory."""
    pool = [PoolEntry(**e) for e in entries]
    for entry in pool:
        read_index(Path(run_dir) / entry.directory)  # FormatError naming the missing copy
    return pool


def missing_rounds(due: list[int], pool: list[PoolEntry]) -> list[int]:
    """Rounds that are due but not yet in the pool, in order."""
    have = {e.round for e in pool}
    return [r for r in due if r not in have]

