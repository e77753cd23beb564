"""The synthetic pool: each round's data set is located, awaited, fetched into the run and verified.

The pool persists across rounds (the paper's generated images stay in the training set for good).
Each data set is copied into ``<run_dir>/synthetic/round-<r>`` with ``shards.reader.fetch``
(sha256-checked), so a resumed run never depends on the builder's folder, and then verified
(``shards.verify``: decodable images, labels, keys, and class names equal to the run's) before it
is renamed into place. A data set in a round folder is taken only once it was built from the
manifest now beside it; a resume re-checks every pool copy's shard hashes.

Extension point: ``synthetic.source`` selects where images come from. ``shards`` (this module)
reads what a separate ``actgen-build`` wrote; an inline builder would add a source that renders
the data set into the same layout, after which :func:`acquire` applies unchanged.
"""
from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

from actgen.shards.atomic import replace_directory, temp_sibling
from actgen.shards.composition import dataset_composition
from actgen.shards.errors import FormatError, Unreachable, relocated
from actgen.shards.reader import ShardRandomAccess, fetch, is_url, join_location, read_index
from actgen.shards.transfer import UNREADABLE_SCHEME
from actgen.shards.rounds import MANIFEST_FILE
from actgen.shards.verify import verify
from actgen.shards.writer import INDEX_FILE, file_sha256, file_stamp

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
        index_sha256: sha256 of the copy's ``index.json`` (which holds every shard's sha256), so a
            resume can tell the copy it trained on from a changed one ("" in older checkpoints).
        verified: ``{shard filename: [size, mtime_ns, ctime_ns, inode]}`` when its sha256 was last
            checked; a resume re-hashes only shards whose stat differs. ``ctime`` cannot be set
            back by a user, so a changed file always differs.
        composition: images per class, mode and role, distinct guides and renders per guide
            (``shards.composition``), read from the copy when it joined.
        share_at_join: the pool's share of the training set once it joined (pool / (real + pool)).
    """

    round: int
    directory: str
    location: str
    num_samples: int
    epoch: int
    index_sha256: str = ""
    verified: dict = field(default_factory=dict, compare=False)
    composition: dict = field(default_factory=dict)
    share_at_join: Optional[float] = None

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> dict:
        """The entry without the stat cache (for summaries)."""
        return {k: v for k, v in asdict(self).items() if k != "verified"}


class BuildFailed(RuntimeError):
    """The builder marked the round's build ``failed`` (its ``build_status.json``)."""


def _build_status(location: str):
    """The builder's status of the round folder holding ``location`` (None: none, or not a round)."""
    from actgen.shards.rounds import read_status

    folder = Path(location).parent
    if not (folder / MANIFEST_FILE).is_file():
        return None
    try:
        return read_status(folder)
    except FormatError:
        return None


class StaleDataSet(ValueError):
    """A finished data set built from another manifest than the one now in its round folder."""


def round_location(pattern: str, run_dir: str | Path, round: int) -> str:
    """Round ``round``'s data-set location from ``synthetic.pattern``."""
    return pattern.format(run_dir=str(run_dir), round=round)


def pool_directory(round: int) -> str:
    return f"{POOL_DIR}/round-{round:04d}"


STATIC_ROUND = -1     # a pool entry's ``round`` for a received data set (``synthetic.static``)


def static_directory(position: int) -> str:
    """Where the ``position``-th ``synthetic.static`` data set is copied in the run."""
    return f"{POOL_DIR}/static-{position:04d}"


def round_manifest(location: str) -> Optional[Path]:
    """The manifest a data set must have been built from: ``hard_samples.json`` in its round
    folder (``<run>/rounds/<r>/`` holds the manifest and ``shards/``), or None for a data set
    outside a round folder (a URL, a data set shared as is), which is taken as it is."""
    if is_url(location):
        return None
    manifest = Path(location).parent / MANIFEST_FILE
    return manifest if manifest.is_file() else None


def manifest_problem(index, location: str, manifest: Optional[Path], warn: bool = True) -> Optional[str]:
    """Why ``index`` was not built from ``manifest`` (naming both hashes), or None if it was.

    An index that records no ``manifest_sha256`` was not written by actgen-build from a manifest
    (a hand-made or shared set): it is taken, with a warning (``warn``; else at debug level).
    """
    if manifest is None:
        return None
    built_from = index.created.get("manifest_sha256")
    if built_from is None:
        _logger.log(logging.WARNING if warn else logging.DEBUG, "%s records no created.manifest_sha256, so which "
                    "manifest it was built from is unknown; taking it as it is", Path(location) / INDEX_FILE)
        return None
    now = file_sha256(manifest)
    if built_from != now:
        return (f"was built from another manifest: its {INDEX_FILE} has created.manifest_sha256 {built_from}, "
                f"{manifest} now has sha256 {now}")
    return None


@dataclass(frozen=True)
class _Look:
    """One look at a round's data set: finished, or why not and what ``on_missing: error`` raises."""

    finished: bool
    why: str = ""
    error: Callable[[str], Exception] = FileNotFoundError


def look(location: str, manifest: Optional[Path] = None, timeout_s: Optional[float] = None) -> _Look:
    """Whether a finished data set built from ``manifest`` is at ``location``.

    A local ``index.json`` that exists but does not parse is an error, not "unfinished": writers
    put it in place atomically and last. Over http(s), a connection failure or a stalled server is
    reported as such (not as "not finished"), and the read is bounded by ``timeout_s``.
    """
    try:
        if not is_url(location) and not (Path(location) / INDEX_FILE).is_file():
            status = _build_status(location)
            if status is not None and status.state == "failed":
                return _Look(False, f"failed to build ({status.error or 'no reason given'})", BuildFailed)
            if status is not None and status.state == "retrying":
                return _Look(False, f"is not finished (the builder is retrying after: {status.error})")
            return _Look(False, f"is not finished (no readable {INDEX_FILE})")
        index = read_index(location, timeout_s=timeout_s)  # local: FormatError naming the file
    except FormatError as e:
        if not is_url(location) or e.problem.startswith(UNREADABLE_SCHEME):
            raise
        return _Look(False, f"is not finished ({e.problem.split(':')[0]})")
    except Unreachable as e:     # an unknown host, a missing bucket, access denied: waiting cannot help
        return _Look(False, f"cannot be reached ({e})", Unreachable)
    except ConnectionError as e:
        return _Look(False, f"cannot be reached ({e})", ConnectionError)
    except TimeoutError as e:
        return _Look(False, f"did not answer in time ({e})", TimeoutError)
    problem = manifest_problem(index, location, manifest, warn=False)  # acquire() warns, once
    if problem is not None:
        return _Look(False, problem, StaleDataSet)
    return _Look(True)


def is_finished(location: str, manifest: Optional[Path] = None, timeout_s: Optional[float] = None) -> bool:
    """Whether a finished data set (built from ``manifest``, if given) is at ``location``."""
    return look(location, manifest, timeout_s).finished


def wait_until_finished(location: str, cfg: SyntheticConfig, round: int,
                        sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic,
                        first_look: bool = True, manifest: Optional[Path] = None,
                        deadline: Optional[float] = None) -> bool:
    """Apply ``synthetic.on_missing``; True once the data set is finished, False to go on without.

    ``first_look``: under ``skip`` a missing data set is a warning the first time only; later
    looks at every epoch start log at debug level, so a run without a builder stays readable.
    ``manifest``: the data set must have been built from it (else it is not finished yet).
    ``deadline``: on ``clock``, when ``wait`` gives up (default ``synthetic.timeout_s`` from now):
    wall clock, http reads included; a poll that cannot connect or times out does not end the
    wait. Under ``skip`` and ``error`` an http read has only the per-file limits of shards.reader.

    Raises:
        FileNotFoundError: ``on_missing: error`` and nothing there; ConnectionError/TimeoutError
            when the server cannot be reached or stalls; StaleDataSet when it is built from
            another manifest (both hashes named).
        TimeoutError: ``on_missing: wait`` and nothing there by the deadline.
    """
    deadline = clock() + cfg.timeout_s if deadline is None else deadline

    def poll() -> _Look:
        bounded = is_url(location) and cfg.on_missing == "wait"
        return look(location, manifest, timeout_s=max(deadline - clock(), 0.0) if bounded else None)

    seen = poll()
    if seen.finished:
        return True
    what = f"round {round}'s synthetic data set at {location} {seen.why}"
    if cfg.on_missing == "error" or (seen.error in (BuildFailed, Unreachable) and cfg.on_missing == "wait"):
        # A failed build, an unknown host, a missing bucket will not finish by waiting: fail now.
        raise seen.error(f"{what}; synthetic.on_missing is {cfg.on_missing!r}"
                         + (" (waiting cannot help)" if seen.error is Unreachable else ""))
    if cfg.on_missing == "skip":
        _logger.log(logging.WARNING if first_look else logging.DEBUG,
                    "%s; going on without it (looking again next epoch)", what)
        return False
    _logger.info("%s; waiting up to %.0f s", what, max(deadline - clock(), 0.0))
    while clock() < deadline:
        sleep(min(cfg.poll_s, max(deadline - clock(), 0.0)))
        if clock() >= deadline:        # a poll with no time left would only report "no time left"
            break
        latest = poll()
        if latest.finished:
            return True
        if latest.error in (BuildFailed, Unreachable):    # e.g. the bucket was deleted meanwhile
            raise latest.error(f"round {round}'s synthetic data set at {location} {latest.why}")
        if latest.why != seen.why:
            _logger.info("round %d's synthetic data set at %s %s; still waiting", round, location, latest.why)
            seen = latest
    raise TimeoutError(f"round {round}'s synthetic data set at {location} {seen.why} after waiting "
                       f"{cfg.timeout_s:.0f} s (synthetic.timeout_s)")


def acquire(location: str, run_dir: str | Path, round: int, epoch: int, class_names: list[str],
            manifest: Optional[Path] = None, timeout_s: Optional[float] = None) -> PoolEntry:
    """Fetch a finished data set into the run and verify it against the run's class names.

    The copy is made in a hidden staging folder beside ``synthetic/round-<r>`` and renamed into
    place only once verified, so a failure of any kind leaves nothing in the pool folder.

    Args:
        manifest: the data set must have been built from it (see :func:`manifest_problem`).
        timeout_s: wall-clock budget of the download (http(s) only).

    Raises:
        FormatError: a corrupt or truncated shard, a sha256 mismatch, an image that does not
            decode or is too large, or other class names (both lists shown); StaleDataSet when
            the data set was rebuilt from another manifest meanwhile.
        ConnectionError, TimeoutError: the server cannot be reached or is too slow.
    """
    def check(index) -> None:
        problem = manifest_problem(index, location, manifest)
        if problem is not None:
            raise StaleDataSet(f"round {round}'s synthetic data set at {location} {problem}")

    relative = pool_directory(round)
    destination = Path(run_dir) / relative
    index, report, verified, made_of = _stage_into_pool(location, destination, check, list(class_names), timeout_s)
    _logger.info("round %d: %d synthetic images from %s joined the pool (%s)", round, report.num_samples, location,
                 ", ".join(f"{k} {v}" for k, v in report.class_counts.items() if v))
    _logger.info("round %d: %d distinct guides, at most %d renders per guide (%s)", round,
                 made_of["distinct_guides"], made_of["renders_per_guide_max"],
                 ", ".join(f"{k} {v}" for k, v in made_of["roles"].items()))
    return PoolEntry(round=round, directory=relative, location=str(location), num_samples=index.num_samples,
                     epoch=epoch, index_sha256=file_sha256(destination / INDEX_FILE), verified=verified,
                     composition=made_of)


def acquire_static(location: str, position: int, run_dir: str | Path, epoch: int,
                   class_names: list[str]) -> PoolEntry:
    """Fetch and verify a received data set (``synthetic.static[position]``) into the run.

    Like :func:`acquire`, but the data set's classes need only be among the run's (matched by
    name when the trainer reads it), and no manifest ties it to a round.

    Raises:
        FormatError: a damaged data set (as :func:`acquire`), or a class the run does not have.
        ConnectionError, TimeoutError: the server cannot be reached or is too slow.
    """
    def check(index) -> None:
        unknown = [n for n in index.class_names if n not in class_names]
        if unknown:
            raise FormatError(join_location(location, INDEX_FILE),
                              f"classes {unknown} are not among the run's {list(class_names)} "
                              "(a received data set's classes are matched by name)")

    relative = static_directory(position)
    destination = Path(run_dir) / relative
    index, report, verified, made_of = _stage_into_pool(location, destination, check, None)
    _logger.info("received data set %s: %d synthetic images joined the pool (%s)", location, report.num_samples,
                 ", ".join(f"{k} {v}" for k, v in report.class_counts.items() if v))
    return PoolEntry(round=STATIC_ROUND, directory=relative, location=str(location), num_samples=index.num_samples,
                     epoch=epoch, index_sha256=file_sha256(destination / INDEX_FILE), verified=verified,
                     composition=made_of)


def _stage_into_pool(location: str, destination: Path, check: Callable, class_names: Optional[list[str]],
                     timeout_s: Optional[float] = None):
    """Fetch ``location`` into a hidden staging folder beside ``destination``, ``check`` its index,
    verify it (against ``class_names`` when given), read its composition, then rename it into
    place; on any failure nothing is left. -> ``(index, verify report, shard stats, composition)``."""
    _remove_staging(destination)
    staging = temp_sibling(destination, "unverified")
    try:
        index = fetch(location, staging, timeout_s=timeout_s)
        check(index)
        report = verify(staging, class_names=class_names)
        verified = _shard_stats(staging, index)
        made_of = dataset_composition(ShardRandomAccess(staging))
        replace_directory(staging, destination)  # a rename: the shards keep their stat
    except FormatError as e:
        shutil.rmtree(staging, ignore_errors=True)
        # Name what the user gave (and the member inside it), never the staging copy.
        raise relocated(e, {staging: location}) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return index, report, verified, made_of


def missing_static(locations: list[str], pool: list[PoolEntry]) -> list[tuple[int, str]]:
    """``(position, location)`` of the ``synthetic.static`` data sets not in the pool yet."""
    have = {e.directory for e in pool if e.round == STATIC_ROUND}
    return [(i, loc) for i, loc in enumerate(locations) if static_directory(i) not in have]


def _remove_staging(destination: Path) -> None:
    """Staging folders a killed trainer left beside ``destination`` (only the pool's own: its
    hidden siblings, and theirs)."""
    if destination.parent.is_dir():
        for pattern in (f".{destination.name}.*", f"..{destination.name}.*"):
            for leftover in destination.parent.glob(pattern):
                shutil.rmtree(leftover, ignore_errors=True)


def obtain(location: str, run_dir: str | Path, round: int, epoch: int, class_names: list[str],
           cfg: SyntheticConfig, first_look: bool = True, sleep: Callable[[float], None] = time.sleep,
           clock: Callable[[], float] = time.monotonic) -> Optional[PoolEntry]:
    """Round ``round``'s data set into the pool under ``synthetic.on_missing``; None to go on without.

    ``synthetic.timeout_s`` is the round's wall-clock budget, waiting and downloading together. A
    download that cannot connect or times out, or a data set rebuilt meanwhile, is one more
    failed look: ``wait`` polls again until the deadline, ``skip`` goes on without it, ``error``
    raises.
    """
    manifest = round_manifest(location)
    deadline = clock() + cfg.timeout_s
    while True:
        if not wait_until_finished(location, cfg, round, sleep=sleep, clock=clock, first_look=first_look,
                                   manifest=manifest, deadline=deadline):
            return None
        try:
            bounded = is_url(location) and cfg.on_missing == "wait"
            return acquire(location, run_dir, round, epoch, class_names, manifest=manifest,
                           timeout_s=max(deadline - clock(), 0.0) if bounded else None)
        except (ConnectionError, TimeoutError, StaleDataSet) as e:
            if cfg.on_missing == "error":
                raise
            if cfg.on_missing == "skip":
                _logger.log(logging.WARNING if first_look else logging.DEBUG,
                            "round %d's synthetic data set at %s could not be fetched (%s); going on without it "
                            "(looking again next epoch)", round, location, e)
                return None
            if clock() >= deadline:
                raise TimeoutError(f"round {round}'s synthetic data set at {location} could not be fetched by the "
                                   f"deadline ({e}; synthetic.timeout_s = {cfg.timeout_s:.0f} s)") from None
            _logger.warning("round %d's synthetic data set at %s could not be fetched (%s); trying again", round,
                            location, e)
            sleep(min(cfg.poll_s, max(deadline - clock(), 0.0)))


def pool_size(pool: list[PoolEntry]) -> int:
    return sum(e.num_samples for e in pool)


def pool_from_state(entries: list[dict], run_dir: str | Path) -> list[PoolEntry]:
    """The pool recorded in a checkpoint; each copy must still be the one trained on.

    Re-checked on every resume: the copy's ``index.json`` against the sha256 recorded when it
    joined, then every shard's size and sha256 against that index (hashing, no decoding: the
    copy was fully verified when it joined).

    Raises:
        FormatError: a missing copy, a changed index, or a shard that is missing or changed
            (relabelled, replaced, truncated), naming it.
    """
    pool = [PoolEntry(**e) for e in entries]
    return [check_pool_copy(Path(run_dir), entry) for entry in pool]


def check_pool_copy(run_dir: Path, entry: PoolEntry) -> PoolEntry:
    """``entry`` with a fresh stat cache once its copy proved unchanged (see :func:`pool_from_state`).

    Raises:
        FormatError: naming the copy, its index or the shard that is missing or changed.
    """
    directory = run_dir / entry.directory
    index = read_index(directory)  # FormatError naming the missing copy
    if entry.index_sha256:
        now = file_sha256(directory / INDEX_FILE)
        if now != entry.index_sha256:
            raise FormatError(str(directory / INDEX_FILE), f"changed since the run trained on it: sha256 is {now}, "
                                                           f"the checkpoint recorded {entry.index_sha256}")
    hashed = 0
    for shard in index.shards:
        path = directory / shard.filename
        try:
            stat = _stat(path)
        except FileNotFoundError:
            raise FormatError(str(path), "pool shard is missing (the run trained on it)") from None
        if stat[0] != shard.size_bytes:
            raise FormatError(str(path), f"pool shard changed since the run trained on it: size is {stat[0]} bytes, "
                                         f"index says {shard.size_bytes}")
        if entry.verified.get(shard.filename) == stat:
            continue  # untouched since its sha256 was checked
        digest = file_sha256(path)
        hashed += 1
        if digest != shard.sha256:
            raise FormatError(str(path), f"pool shard changed since the run trained on it: sha256 is {digest}, "
                                         f"index says {shard.sha256}")
    _logger.debug("pool copy %s unchanged (%d of %d shards hashed)", directory, hashed, len(index.shards))
    return dataclasses.replace(entry, verified=_shard_stats(directory, index))


def _stat(path: Path) -> list[int]:
    return list(file_stamp(path))


def _shard_stats(directory: Path, index) -> dict:
    return {shard.filename: _stat(directory / shard.filename) for shard in index.shards}


def missing_rounds(due: list[int], pool: list[PoolEntry]) -> list[int]:
    """Rounds that are due but not yet in the pool, in order."""
    have = {e.round for e in pool}
    return [r for r in due if r not in have]
