"""Where the shards are rendered: a pool of Ray actors (one GPU each, or CPU actors), or here.

The unit of work is one shard (:class:`~.render.ShardWriter`); each actor loads the generator once
and renders whole shards, one at a time, returning only their records. ``ray.executor: local``
runs the same writer in this process.
"""
from __future__ import annotations

import dataclasses
import logging
import re
from typing import TYPE_CHECKING, Optional

from actgen.shards.runtime import resolve_device
from actgen.shards.sources import LabeledImages

from .config import BuildConfig

if TYPE_CHECKING:  # the renderer imports torch; the Ray path hands Ray the class, the local one builds it
    from .render import RenderSpec

_logger = logging.getLogger(__name__)

_ERROR_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception): ")   # a traceback's last line


def render_shards(spec: RenderSpec, todo: list[int], cfg: BuildConfig, images: LabeledImages) -> list[dict]:
    """Render and write shards ``todo`` of ``spec.plan``; return their records (never the images).

    ``images`` is the guide data set already loaded here (the local executor reuses it; Ray
    workers load it from ``spec.dataset`` and check its fingerprint).
    """
    from .render import ShardWriter

    if cfg.ray.executor == "local":
        device = resolve_device(cfg.generator.device, key="generator.device")
        writer = ShardWriter(dataclasses.replace(spec, device=device), images=images)
        return [writer.write(n) for n in todo]
    return _render_on_ray(spec, todo, cfg, ShardWriter)


def _render_on_ray(spec: RenderSpec, todo: list[int], cfg: BuildConfig, writer_class: type) -> list[dict]:
    import ray
    import ray.data

    rc = cfg.ray
    started = False
    if not ray.is_initialized():
        # address=None starts a local cluster; anything else joins one (no local resources then).
        ray.init(address=rc.address, num_cpus=rc.num_cpus if rc.address is None else None,
                 include_dashboard=False, configure_logging=False, log_to_driver=True)
        started = True
    try:
        gpus = float(ray.cluster_resources().get("GPU", 0))
        device = resolve_device(cfg.generator.device, has_gpu=gpus > 0, key="generator.device")
        gpus_per_worker = rc.gpus_per_worker if rc.gpus_per_worker is not None else (1.0 if device == "cuda" else 0.0)
        workers = rc.workers or (max(1, int(gpus // max(gpus_per_worker, 1e-9))) if device == "cuda" else 1)
        workers = min(workers, len(todo))
        _logger.info("Ray: %d workers (%g CPU, %g GPU each) on %s; cluster %s", workers, rc.cpus_per_worker,
                     gpus_per_worker, device, {k: v for k, v in ray.cluster_resources().items()
                                               if k in ("CPU", "GPU", "memory")})
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        # One row and one block per shard, so the pool balances shard by shard; one task in
        # flight per actor, so a slow shard never holds others queued behind it.
        ds = ray.data.from_items([{"shard": n} for n in todo], override_num_blocks=len(todo))
        ds = ds.map_batches(
            writer_class, batch_size=1, fn_constructor_kwargs={"spec": dataclasses.replace(spec, device=device)},
            compute=ray.data.ActorPoolStrategy(size=workers, max_tasks_in_flight_per_actor=1),
            num_cpus=rc.cpus_per_worker, num_gpus=gpus_per_worker or None)
        rows = []
        for row in ds.iter_rows():
            rows.append({k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()})
            _logger.info("%s done (%d/%d)", row["filename"], len(rows), len(todo))
        return rows
    except Exception as e:
        raise unwrap_ray_error(e) from None
    finally:
        if started:
            ray.shutdown()


def unwrap_ray_error(e: Exception) -> Exception:
    """The worker's own exception (e.g. a ValueError naming the file) instead of Ray's wrappers.

    Ray Data raises ``RayTaskError(UserCodeException)`` for a failing ``__call__`` and
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
