"""``actgen-build --serve``: one builder process for a whole training run, fed round by round.

The trainer's inline builds (``synthetic.source: inline``) start it once, at the first round, and
send one request per finished round on its stdin, one JSON object per line::

    {"round_dir": "runs/x/rounds/3", "output": "runs/x/rounds/3/shards", "dataset": {...} | null}

Each request is built as ``actgen-build --round-dir ROUND_DIR --output OUTPUT --set dataset=...``
with the process's own ``--config`` and ``--set`` overrides would be (a round folder's own
``shards/`` output is marked in ``build_status.json``), but every round shares one
:class:`~.workers.WorkerPool`: Ray starts once and its workers keep their loaded generator. Each
request gets one reply line on stdout, ``actgen-serve {"ok": true, "images": N, "seconds": S}``
or ``actgen-serve {"ok": false, "error": "<one line>"}``; a failed round does not end the server.
Logs go to stderr; the prefix lets a reader skip anything else a library prints. End of input
ends it (and its workers).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Optional, Sequence

from actgen.shards.errors import one_line
from actgen.shards.folders import listing_bound
from actgen.shards.sources import DataSource

from .config import BuildConfig, load_config, round_overrides

REPLY_PREFIX = "actgen-serve "
# A folder a request names (or its manifest names, through data_roots) is listed within this
# bound, so every request is answered within seconds; the server's own configured data set is not
# bounded (a million-image folder stays accepted, with the advice to import it once).
REQUEST_LISTING_SECONDS = 8.0
MAX_REQUEST_CHARS = 1 << 20     # a request is a few paths; anything longer is not one

_logger = logging.getLogger(__name__)


def parse_request(line: str) -> tuple[Path, Optional[Path], Optional[dict]]:
    """``(round_dir, output or None, dataset or None)`` of one request line.

    Raises:
        ValueError: not a JSON object with a string ``round_dir`` (naming what is wrong).
    """
    if len(line) > MAX_REQUEST_CHARS:
        raise ValueError(f"request of {len(line)} characters: expected at most {MAX_REQUEST_CHARS}")
    try:
        request = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"request is not JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(request, dict):
        raise ValueError(f"request is a JSON {type(request).__name__}: expected an object")
    unknown = sorted(set(request) - {"round_dir", "output", "dataset"})
    if unknown:
        raise ValueError(f"request has unknown keys {unknown}: expected round_dir, output, dataset")
    round_dir, output, dataset = request.get("round_dir"), request.get("output"), request.get("dataset")
    if not isinstance(round_dir, str) or not round_dir:
        raise ValueError(f"request round_dir = {round_dir!r}: expected a path")
    if output is not None and not isinstance(output, str):
        raise ValueError(f"request output = {output!r}: expected a path or null")
    if dataset is not None and not isinstance(dataset, dict):
        raise ValueError(f"request dataset = {dataset!r}: expected an object or null")
    return Path(round_dir), Path(output) if output else None, dataset


def request_config(config_path: Optional[Path], overrides: Sequence[str], round_dir: Path, output: Optional[Path],
                   dataset: Optional[dict]) -> BuildConfig:
    """One request's config: the server's config and ``--set`` overrides, then the request's paths
    and data source taken literally (never parsed or interpolated)."""
    cfg = load_config(config_path, overrides, literal=round_overrides(round_dir, output=output))
    if dataset is None:
        return cfg
    try:
        source = DataSource(**dataset)
    except TypeError as e:
        raise ValueError(f"request dataset = {json.dumps(dataset)[:200]}: not a data source ({e})") from None
    bad = [k for k, v in dataclasses.asdict(source).items() if v is not None and not isinstance(v, (str, list))]
    if bad or not isinstance(source.path, str) or not source.path:
        raise ValueError(f"request dataset: field {(bad or ['path'])[0]!r} must be a string")
    return dataclasses.replace(cfg, dataset=source)


def serve(config_path: Optional[Path], overrides: Sequence[str], requests: Iterable[str], replies: IO[str],
          build=None, listing_seconds: Optional[float] = REQUEST_LISTING_SECONDS) -> int:
    """Answer every request of ``requests`` on ``replies``; return how many rounds were built.

    ``build(cfg, round_dir, pool)`` builds one request (tests pass their own). ``listing_seconds``:
    the bound on listing an image folder a request names (None: none; the trainer's own server,
    whose requests name the trainer's configured data set, runs without one).
    """
    from .workers import WorkerPool

    # A typo fails now, not at the first round.
    configured = request_config(config_path, overrides, Path("round"), None, None).dataset
    built = 0
    with WorkerPool() as pool:
        for line in requests:
            if not line.strip():
                continue
            start = time.perf_counter()
            try:
                round_dir, output, dataset = parse_request(line)
                cfg = request_config(config_path, overrides, round_dir, output, dataset)
                bound = listing_seconds if dataset is not None or configured is None else None
                with listing_bound(bound):
                    images = (build or _build)(cfg, round_dir, pool)
                reply = {"ok": True, "images": images, "seconds": round(time.perf_counter() - start, 3)}
                built += 1
            except Exception as e:      # one round's failure is the client's to report; keep serving
                _logger.error("request failed: %s", one_line(e))
                reply = {"ok": False, "error": one_line(e)}
            replies.write(REPLY_PREFIX + json.dumps(reply) + "\n")
            replies.flush()
    return built


def _build(cfg, round_dir: Path, pool) -> int:
    """One request's build, logged where ``--watch`` logs: the round folder's ``build.log`` and,
    for a trainer's round folder (``<run>/rounds/<r>``), the run's ``build.log``."""
    from actgen.shards.runtime import run_log

    from .pipeline import build_and_mark

    run_dir = round_dir.parent.parent if round_dir.parent.name == "rounds" else None
    with run_log(run_dir / "build.log" if run_dir is not None else None), run_log(round_dir / "build.log"):
        return build_and_mark(cfg, round_dir, pool).index.num_samples
