"""Joining a Ray cluster, for every program that can use one (the builder's actors, ``actgen-data
import`` and ``verify`` on Ray Data): the checks that turn Ray's minute-long retries and silent
start-up failures into one error naming the setting, and the one way those commands hand rows
to Ray Data's workers (:func:`map_on_ray`).

``where`` names the setting the address came from (a config key, a CLI option), so the error
points at what the user typed; ``instead`` says how to go on without that cluster, ``no_ray``
how to go on without Ray at all.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional

# The builder's settings: what its errors name unless a caller names its own.
_WHERE = "config key 'ray.address'"
_INSTEAD = "set ray.address=null for a local one"
_NO_RAY = "set ray.executor=local"

RAY_MIN_FILE_SIZE = 1 << 30
"""The smallest file-size limit (``ulimit -f``) Ray's processes start under: below it they are
killed by SIGXFSZ while writing their logs and session files, and Ray reports only a node that
"timed out during startup"."""


def check_file_size_limit(instead: str = _NO_RAY) -> None:
    """OSError naming the limit when this process's file-size limit is below RAY_MIN_FILE_SIZE
    (checked before Ray starts, instead of a timeout a minute later that names no file)."""
    import errno
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    if soft != resource.RLIM_INFINITY and soft < RAY_MIN_FILE_SIZE:
        raise OSError(errno.EFBIG, f"the file-size limit (ulimit -f, RLIMIT_FSIZE) is {soft:,} bytes: Ray's "
                                   f"processes cannot start under {RAY_MIN_FILE_SIZE:,}; raise the limit, or "
                                   f"{instead} (the output itself needs room too)")


def connect(address: str, where: str = _WHERE, instead: str = _INSTEAD, no_ray: str = _NO_RAY) -> None:
    """Join the Ray cluster at ``address`` now (before anything is written), unless this process
    already has; ConnectionError naming ``where`` when none answers."""
    import ray

    if ray.is_initialized():
        return
    check_file_size_limit(no_ray)
    probe(address, where, instead)
    try:
        ray.init(address=address, include_dashboard=False, configure_logging=False, log_to_driver=True)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise ConnectionError(f"{where} = {address!r}: no Ray cluster answers there "
                              f"({' '.join(str(e).split())[:200]}); start one (ray start --head) or "
                              f"{instead}") from None


def probe(address: str, where: str = _WHERE, instead: str = _INSTEAD, timeout_s: float = 5.0) -> None:
    """A ``host:port`` (or ``ray://host:port``) address answers a TCP connection within
    ``timeout_s``: Ray itself retries a dead address for minutes. ``auto`` is Ray's to resolve."""
    import socket

    target = address.removeprefix("ray://")
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        return
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except OSError as e:
        raise ConnectionError(f"{where} = {address!r}: no Ray cluster answers there "
                              f"({e.strerror or e}); start one (ray start --head) or {instead}") from None


@contextlib.contextmanager
def joined(address: Optional[str], where: str, instead: str) -> Iterator[bool]:
    """Within the block this process is on the Ray cluster at ``address`` (None: no cluster, yields
    False); Ray is shut down afterwards when this block joined it."""
    if address is None:
        yield False
        return
    import ray

    started = not ray.is_initialized()
    connect(address, where, instead, no_ray=instead)     # a command's own way without Ray: leave the option out
    try:
        yield True
    finally:
        if started and ray.is_initialized():
            ray.shutdown()


def ray_workers(rows: int) -> int:
    """Ray Data workers for ``rows`` rows on the cluster this process has joined: one per CPU, at
    most one per row, at least one."""
    import ray

    return max(1, min(rows, int(ray.cluster_resources().get("CPU", 1))))


def map_on_ray(rows: list[dict], worker: type, kwargs: dict) -> Iterator[dict]:
    """Each of ``rows`` through a ``worker(**kwargs)`` actor (Ray Data's ``map_batches``: one CPU
    each, one row at a time, :func:`ray_workers` of them); the results as they come, in no order.
    The worker keeps what it opens across the rows it is given.

    Iterate it in place (``for row in map_on_ray(...)``), not through a variable: a caller that
    raises mid-way must drop the iterator then, while Ray is still up, not when the exception's
    frames are freed after the cluster is left (Ray then logs a traceback of its own)."""
    import ray

    from .runtime import progress_bars

    ray.data.DataContext.get_current().enable_progress_bars = progress_bars()
    done = ray.data.from_items(rows, override_num_blocks=max(1, len(rows))).map_batches(
        worker, fn_constructor_kwargs=kwargs, batch_size=1, num_cpus=1, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=ray_workers(len(rows))))
    return done.iter_rows()
