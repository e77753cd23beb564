"""Where the shards are rendered: a pool of Ray actors (one GPU each, or CPU actors), or here.

The unit of work is one shard (:class:`~.render.ShardWriter`); each actor renders whole shards,
one at a time, returning only their records. ``ray.executor: local`` runs the same writer in
this process.

A :class:`WorkerPool` lives as long as its caller wants: a one-off build uses one for its round,
``--watch`` and ``--serve`` keep one for the whole run, so Ray starts once, the actors persist
between rounds, and each keeps its loaded generator (``resident.resident``: reloaded only when the
generator settings or files change; its weights hashed once). The actors are Ray core actors,
one shard in flight each (:func:`_schedule`, which also gives a dead worker's shard again),
rather than Ray Data's ``map_batches``: Ray Data's actor pool lives only as long as one data
set's execution, so every round would start and load anew.
"""
from __future__ import annotations

import dataclasses
import itertools
import logging
import re
from collections import Counter, deque
from typing import TYPE_CHECKING, Optional

from actgen.shards.cluster import check_file_size_limit
from actgen.shards.runtime import resolve_device
from actgen.shards.sources import LabeledImages

from .config import BuildConfig, RayConfig

if TYPE_CHECKING:  # the renderer imports torch; the Ray path hands Ray the class, the local one builds it
    from .render import RenderSpec

_logger = logging.getLogger(__name__)

_ERROR_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception): ")   # a traceback's last line


def render_shards(spec: RenderSpec, todo: list[int], cfg: BuildConfig, images: LabeledImages,
                  pool: Optional[WorkerPool] = None) -> list[dict]:
    """Render and write shards ``todo`` of ``spec.plan``; return their records (never the images).

    ``images`` is the guide data set already loaded here (the local executor reuses it; Ray
    workers load it from ``spec.dataset`` and check its fingerprint). Without a ``pool``, one is
    made for this call and closed after it.
    """
    if pool is not None:
        return pool.render(spec, todo, cfg, images)
    with WorkerPool() as own:
        return own.render(spec, todo, cfg, images)


class _ShardActor:
    """One Ray worker: a :class:`~.render.ShardWriter` per build, over what stays resident."""

    def __init__(self):
        self._build = None
        self._writer = None

    def write(self, build: int, spec: RenderSpec, number: int) -> dict:
        from .render import ShardWriter

        if build != self._build:
            self._writer, self._build = ShardWriter(spec), build
        return self._writer.write(number)

    def loads(self) -> dict[str, int]:
        """What this worker process has loaded so far (``resident.resident_loads``)."""
        from .resident import resident_loads

        return resident_loads()


class WorkerPool:
    """Render workers that outlive one build (a context manager; :meth:`close` ends them).

    Ray is started on first use (or joined, ``ray.address``) and shut down by :meth:`close` only
    if this pool started it. The actors are made again only when the pool's shape changes
    (workers, CPUs and GPUs per worker, device) or after a failure.
    """

    def __init__(self):
        self._started_ray = False
        self._actors: list = []
        self._shape: Optional[tuple] = None
        self._builds = itertools.count()

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def render(self, spec: RenderSpec, todo: list[int], cfg: BuildConfig, images: LabeledImages) -> list[dict]:
        from .render import ShardWriter

        if cfg.ray.executor == "local":
            device = resolve_device(cfg.generator.device, key="generator.device")
            writer = ShardWriter(dataclasses.replace(spec, device=device), images=images)
            return [writer.write(n) for n in todo]
        try:
            return self._render_on_ray(spec, todo, cfg)
        except Exception as e:
            # A failed actor may be dead, or alive and holding its CPUs/GPU: end them all, so the
            # next build starts afresh instead of waiting for resources the old ones still hold.
            self._kill_actors()
            raise unwrap_ray_error(e) from None

    def _render_on_ray(self, spec: RenderSpec, todo: list[int], cfg: BuildConfig) -> list[dict]:
        import ray

        rc = cfg.ray
        self._init_ray(rc)
        gpus = float(ray.cluster_resources().get("GPU", 0))
        device = resolve_device(cfg.generator.device, has_gpu=gpus > 0, key="generator.device")
        gpus_per_worker = rc.gpus_per_worker if rc.gpus_per_worker is not None else (1.0 if device == "cuda" else 0.0)
        workers = rc.workers or (max(1, int(gpus // max(gpus_per_worker, 1e-9))) if device == "cuda" else 1)
        shape = (workers, rc.cpus_per_worker, gpus_per_worker, device, rc.max_restarts)
        if shape != self._shape:
            self._kill_actors()
            # A worker process that dies (a lost node, the OOM killer, a preempted GPU) is started
            # again by Ray, up to max_restarts times; the shard it held is retried below.
            self._actors = [ray.remote(num_cpus=rc.cpus_per_worker, num_gpus=gpus_per_worker or None,
                                       max_restarts=rc.max_restarts)(_ShardActor).remote() for _ in range(workers)]
            self._shape = shape
            _logger.info("Ray: %d workers (%g CPU, %g GPU each) on %s; cluster %s", workers, rc.cpus_per_worker,
                         gpus_per_worker, device, {k: v for k, v in ray.cluster_resources().items()
                                                   if k in ("CPU", "GPU", "memory")})
        build = next(self._builds)
        spec_ref = ray.put(dataclasses.replace(spec, device=device))    # shipped once, not per shard
        return _schedule(self._actors[:len(todo)], todo, lambda actor, n: actor.write.remote(build, spec_ref, n),
                         rc.shard_retries)

    def _init_ray(self, rc: RayConfig) -> None:
        import ray

        if not ray.is_initialized():
            check_file_size_limit()
            # address=None starts a local cluster; anything else joins one (no local resources then).
            ray.init(address=rc.address, num_cpus=rc.num_cpus if rc.address is None else None,
                     include_dashboard=False, configure_logging=False, log_to_driver=True)
            self._started_ray = True

    def worker_loads(self) -> list[dict[str, int]]:
        """Each live actor's load counts (``resident.resident_loads``); empty without actors."""
        import ray

        return ray.get([a.loads.remote() for a in self._actors]) if self._actors else []

    def _kill_actors(self) -> None:
        actors, self._actors, self._shape = self._actors, [], None
        if actors:
            import ray

            for actor in actors:
                try:
                    ray.kill(actor)
                except Exception as e:        # already gone, or Ray itself is down: nothing to free
                    _logger.debug("could not kill a worker: %s", e)

    def close(self) -> None:
        """End the actors, and Ray if this pool started it."""
        self._kill_actors()
        if self._started_ray:
            import ray

            if ray.is_initialized():
                ray.shutdown()
            self._started_ray = False


def _schedule(actors: list, todo: list[int], submit, retries: int) -> list[dict]:
    """Every shard of ``todo`` rendered on ``actors``, one in flight per actor (a slow shard never
    holds others queued behind it); a shard whose worker process died is given again, at most
    ``retries`` times. A shard is written atomically and renders the same bytes on any worker
    (its seeds are the plan's), so a retry leaves no trace but the time it took.

    Only a worker's death is retried: an exception raised by the rendering code (a bad file, a
    NaN) would fail again, and is raised at once.
    """
    import ray
    from ray.exceptions import NodeDiedError, ObjectLostError, RayActorError, WorkerCrashedError

    queue, free = deque(todo), deque(actors)
    pending: dict = {}
    failures: Counter = Counter()
    rows: list[dict] = []
    while queue or pending:
        while queue and free:
            actor, n = free.popleft(), queue.popleft()
            pending[submit(actor, n)] = (actor, n)
        [ref], _ = ray.wait(list(pending), num_returns=1)
        actor, n = pending.pop(ref)
        try:
            row = ray.get(ref)
        except (RayActorError, WorkerCrashedError, NodeDiedError, ObjectLostError) as e:
            failures[n] += 1
            if failures[n] > retries:
                raise
            _logger.warning("shard %d: its worker died (%s); rendering it again (retry %d of %d)", n,
                            type(e).__name__, failures[n], retries)
            queue.appendleft(n)
            free.append(actor)       # restarted by Ray (max_restarts); one past its restarts fails again
            continue
        free.append(actor)
        rows.append(row)
        _logger.info("%s done (%d/%d): %d images in %.2f s", row["filename"], len(rows), len(todo),
                     row["num_samples"], row["seconds"])
    return rows


def unwrap_ray_error(e: Exception) -> Exception:
    """The worker's own exception (e.g. a ValueError naming the file) instead of Ray's wrappers.

    Ray raises ``RayTaskError`` (wrapping the worker's exception) for a failing method and
    ``ActorDiedError`` for a failing ``__init__``; both carry the worker's traceback as text.
    """
    seen: set[int] = set()
    cause: Optional[BaseException] = e
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if not type(cause).__module__.startswith("ray."):
            return cause if isinstance(cause, Exception) else e
        # The worker's traceback is in the message; its last "SomeError: <message>" line that is
        # not one of Ray's own names the failure.
        message = getattr(cause, "error_msg", None) or str(cause)
        errors = [ln.strip() for ln in message.splitlines()
                  if _ERROR_LINE.match(ln.strip()) and not ln.strip().startswith("ray.")]
        if errors:
            return RuntimeError(f"a Ray worker failed: {errors[-1]}")
        cause = getattr(cause, "cause", None) or cause.__cause__
    return RuntimeError(f"Ray failed: {type(e).__name__}: {' '.join(str(e).split())[:500]}")
