"""Two-job mode: watch a training run's round folders, build each new round, mark it done.

``actgen-train`` (with ``synthetic.source: shards`` and ``on_missing: wait``) writes
``rounds/<r>/checkpoint/`` and then ``rounds/<r>/hard_samples.json``; this loop, in another process
or on a Ray cluster, notices the manifest, builds ``rounds/<r>/shards/`` and marks
the round in ``rounds/<r>/build_status.json`` with :func:`~.pipeline.build_round`, as a one-off
``--round-dir`` build does (the layout is ``actgen.shards.rounds``'s, the contract both programs share).

Either side may be killed at any moment and restarted:

- the trainer resumes from its ``last.pt`` and waits for whatever round it needs next;
- the watcher skips rounds marked ``done`` whose index reads, and rebuilds the rest: a round killed
  half way keeps its complete shards (the pipeline's resume), so no finished work is redone.

The watcher stops once every round of the run's schedule is built (the manifests record how many
there are: ``header.num_rounds``), or with an error after ``idle_timeout_s`` without a new round.
One watcher per run directory: it holds a lock file beside the run directory
(``.<run name>.actgen-watch.lock``: the trainer wants its run directory to itself) for its
lifetime, and a second watcher exits naming the first (its pid, host and start time); the lock of
a watcher that died is taken over. Each build also holds its output folder's lock.
"""
from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Sequence

from actgen.shards.errors import FormatError, one_line
from actgen.shards.locks import hold_lock, sibling_lock_path
from actgen.shards.manifest import read_manifest
from actgen.shards.reader import read_index
from actgen.shards.rounds import MANIFEST_FILE, SHARDS_DIR, STATUS_FILE, list_rounds, read_status, round_dir
from actgen.shards.writer import file_sha256

from .config import BuildConfig, load_config, round_overrides

if TYPE_CHECKING:  # the pipeline imports torch and Ray; a watcher loads it only to build
    from .pipeline import BuildResult

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WatchOptions:
    """How to watch.

    Attributes:
        run_dir: the training run directory (the one holding ``rounds/``); it may not exist yet.
        poll_s: seconds between looks for a new round.
        idle_timeout_s: give up (TimeoutError) after this long without a new round to build;
            None waits for ever.
        retries: attempts after a round's first failed one before the watcher gives up (a node
            lost, a file system that hiccuped: a cluster's faults are often transient).
        backoff_s: wait before the first retry; each further retry waits twice as long.
    """

    run_dir: Path
    poll_s: float = 10.0
    idle_timeout_s: Optional[float] = None
    retries: int = 2
    backoff_s: float = 30.0

    def __post_init__(self) -> None:
        if self.poll_s <= 0:
            raise ValueError(f"--poll = {self.poll_s}: expected a number of seconds > 0")
        if self.idle_timeout_s is not None and self.idle_timeout_s <= 0:
            raise ValueError(f"--idle-timeout = {self.idle_timeout_s}: expected a number of seconds > 0")
        if self.retries < 0:
            raise ValueError(f"--retries = {self.retries}: expected an int >= 0")
        if self.backoff_s < 0:
            raise ValueError(f"--retry-backoff = {self.backoff_s}: expected a number of seconds >= 0")


def is_built(directory: Path) -> bool:
    """Marked done, its index reads, and it was built from the manifest now in the folder.

    A status without its data set is not trusted; a data set built from an earlier manifest (a
    trainer killed before its checkpoint redoes the epoch and may write the round anew) is stale.
    """
    status = read_status(directory)
    if status is None or status.state != "done":
        return False
    try:
        index = read_index(directory / SHARDS_DIR)
    except FormatError:
        return False
    return index.created.get("manifest_sha256") == file_sha256(directory / MANIFEST_FILE)


def expected_rounds(run_dir: Path, ready: Sequence[int]) -> Optional[int]:
    """How many rounds the run's schedule has, from its latest manifest (None: not recorded yet)."""
    if not ready:
        return None
    return read_manifest(round_dir(run_dir, ready[-1]) / MANIFEST_FILE).header.num_rounds


def load_round_config(config_path: Optional[Path], overrides: Sequence[str], directory: Path) -> BuildConfig:
    """The config of one round folder in watch mode.

    ``output.overwrite``: the folder belongs to the run, so an unfinished build of the same
    settings is resumed (its shards kept) and one made from an earlier manifest is replaced.
    """
    return load_config(config_path, ["output.overwrite=true", *overrides], literal=round_overrides(directory))


def watch(config_path: Optional[Path], overrides: Sequence[str], opts: WatchOptions,
          build: Optional[Callable[[BuildConfig], BuildResult]] = None, sleep: Callable[[float], None] = time.sleep,
          clock: Callable[[], float] = time.monotonic) -> list[int]:
    """Build every round of ``opts.run_dir`` as it appears; return the rounds this call built.

    Raises:
        TimeoutError: nothing new for ``opts.idle_timeout_s``.
        ValueError, OSError, RuntimeError: a round failed to build ``1 + opts.retries`` times
            (marked ``retrying`` between attempts, ``failed`` when the watcher gives up).
    """
    from .pipeline import build_round, run   # torch and Ray: loaded once there may be a round to build
    from .workers import WorkerPool

    # Check the config once up front, so a typo fails now and not at the first round.
    load_round_config(config_path, overrides, Path("round"))
    run_dir = Path(opts.run_dir)
    # One pool for the whole run: Ray starts once, its workers keep their loaded generator.
    with hold_lock(watch_lock_path(run_dir), f"run directory {run_dir} (actgen-build --watch)"), \
            WorkerPool() as pool:
        return _watch(run_dir, config_path, overrides, opts, build or functools.partial(run, pool=pool),
                      build_round, sleep, clock)


def watch_lock_path(run_dir: Path) -> Path:
    """The watcher's lock file: ``.<run name>.actgen-watch.lock`` beside the run directory."""
    return sibling_lock_path(run_dir, "actgen-watch")


def _watch(run_dir: Path, config_path: Optional[Path], overrides: Sequence[str], opts: WatchOptions,
           build: Callable[[BuildConfig], BuildResult], build_round: Callable, sleep: Callable[[float], None],
           clock: Callable[[], float]) -> list[int]:
    built: list[int] = []
    # Rounds seen built, by their manifest's mtime: a long run has many rounds, and hashing every
    # manifest at every poll would cost more than the poll.
    confirmed: dict[int, int] = {}

    def built_now(r: int) -> bool:
        manifest = round_dir(run_dir, r) / MANIFEST_FILE
        stamp = manifest.stat().st_mtime_ns if manifest.is_file() else -1
        if confirmed.get(r) == stamp:
            return True
        if is_built(round_dir(run_dir, r)):
            confirmed[r] = stamp
            return True
        return False

    last_news = clock()
    waiting_for = None
    while True:
        ready = list_rounds(run_dir)
        for r in ready:
            directory = round_dir(run_dir, r)
            if built_now(r):
                continue
            _logger.info("round %d: building %s", r, directory / SHARDS_DIR)
            status = _build_with_retries(r, directory, load_round_config(config_path, overrides, directory),
                                         build, build_round, opts, sleep)
            _logger.info("round %d: done, %d images in %.1f s (attempt %d)", r, status.images, status.seconds,
                         status.attempts)
            built.append(r)
            last_news = clock()
        expected = expected_rounds(run_dir, ready)
        if expected is not None and all(built_now(r) for r in range(expected)):
            _logger.info("%s: all %d rounds built (%d by this watcher); stopping", run_dir, expected, len(built))
            return built
        nxt = next((r for r in range(expected or len(ready) + 1) if r not in ready), len(ready))
        if nxt != waiting_for:
            total = f" of {expected}" if expected is not None else ""
            _logger.info("waiting for round %d%s in %s (looking every %.0f s)", nxt, total, run_dir / "rounds",
                         opts.poll_s)
            waiting_for = nxt
        if opts.idle_timeout_s is not None and clock() - last_news > opts.idle_timeout_s:
            raise TimeoutError(f"{run_dir}: no new round to build for {opts.idle_timeout_s:.0f} s "
                               f"(--idle-timeout); round {nxt} never appeared")
        sleep(opts.poll_s)


def _build_with_retries(r: int, directory: Path, cfg: BuildConfig, build: Callable[[BuildConfig], BuildResult],
                        build_round: Callable, opts: WatchOptions, sleep: Callable[[float], None]):
    """One round, retried ``opts.retries`` times with doubling waits; the last error is raised.

    Every attempt resumes the shards the failed ones finished (the pipeline's resume), so a retry
    redoes only what was lost. An interrupt is never retried.
    """
    for attempt in range(opts.retries + 1):
        last = attempt == opts.retries
        try:
            status, _ = build_round(directory, cfg, build, will_retry=not last)
            return status
        except Exception as e:
            if last:
                _logger.error("round %d: build failed %d times; giving up (marked failed in %s): %s", r,
                              attempt + 1, directory / STATUS_FILE, one_line(e))
                raise
            wait = opts.backoff_s * 2 ** attempt
            _logger.warning("round %d: build failed (%s); retry %d of %d in %.0f s", r, one_line(e), attempt + 1,
                            opts.retries, wait)
            sleep(wait)
    raise AssertionError("unreachable")
