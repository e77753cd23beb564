"""What a run carries from epoch to epoch, and its checkpoint: written at each epoch's end or at
the step a SIGTERM stopped at (:mod:`.preempt`), and read back on ``--resume``, on as many or
another number of processes (the global batch kept)."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from actgen.shards.errors import Terminated
from actgen.shards.sources import LabeledImages

from . import distributed as dist_utils
from .checkpoint import CHECKPOINT_FILE, capture_rng, restore_rng, save_checkpoint
from .config import Config
from .distributed import Runtime
from .loop import EpochLoop, EpochStats
from .model import export_state_dict
from .rundir import check_global_batch, labels_sha256
from .synthetic import PoolEntry, pool_from_state

_logger = logging.getLogger(__name__)


@dataclass
class Progress:
    """What changes from epoch to epoch (and is checkpointed)."""

    epoch: int = 0
    pool: list[PoolEntry] = field(default_factory=list)
    rounds_done: list[dict] = field(default_factory=list)
    synthetic_seen_total: int = 0
    in_epoch: Optional[dict] = None
    """A checkpoint written on SIGTERM mid-epoch: where ``epoch`` stopped (see ``checkpoint``)."""


def global_batch(cfg: Config, rt: Runtime) -> int:
    """Images per optimizer step over all processes."""
    return cfg.loader.batch_size * rt.world_size * cfg.train.grad_accum_steps


def restore(state: dict, model: torch.nn.Module, loop: EpochLoop, rt: Runtime, run_dir: Path,
            batch: int) -> Progress:
    model.load_state_dict(state["model"])
    loop.load_state_dict(state["loop"])
    rng = state["rng"]
    check_global_batch(state.get("global_batch"), len(rng), rt.world_size, batch,
                       loop.cfg.grad_accum_steps, run_dir / CHECKPOINT_FILE)
    restore_rng(rng[rt.rank % len(rng)])
    return Progress(epoch=int(state["epoch"]), pool=pool_from_state(state["pool"], run_dir),
                    rounds_done=list(state["rounds_done"]), synthetic_seen_total=int(state["synthetic_seen_total"]),
                    in_epoch=state.get("in_epoch"))


def resume_point(in_epoch: Optional[dict], rt: Runtime) -> tuple[int, Optional[tuple[float, ...]]]:
    """This rank's first batch of a preempted epoch and its sums before it (0, None: a whole epoch).

    Every rank takes batches rank, rank + world, ... of the epoch's global list, so ``n`` batches
    done by each of ``w`` processes are the first ``n * w`` global batches; on ``w'`` processes
    each continues at ``n * w / w'``, which is whole because a resume keeps the global batch
    (``batch_size x grad_accum_steps x w``) and the stop fell on a step boundary. On as many
    processes each rank goes on from its own sums; on another number rank 0 carries them all."""
    if in_epoch is None:
        return 0, None
    w, carry = in_epoch["world_size"], in_epoch["carry"]
    done = in_epoch["batches_done"] * w
    if done % rt.world_size:
        _logger.warning("the preempted epoch's %d batches do not split over %d processes: %d of them are "
                        "trained again", done, rt.world_size, done % rt.world_size)
    if w == rt.world_size:
        mine = carry[rt.rank]
    elif rt.rank == 0:
        mine = [sum(float(rank[k]) for rank in carry) for k in range(5)]
    else:
        mine = [0.0] * 5
    return done // rt.world_size, tuple(float(x) for x in mine)


def stop_in_epoch(cfg: Config, rt: Runtime, run_dir: Path, progress: Progress, model: torch.nn.Module,
                  loop: EpochLoop, images: LabeledImages, stats: EpochStats, num_batches: int) -> None:
    """SIGTERM mid-epoch: checkpoint this step boundary (the epoch in progress, how far it got and
    its sums so far), then stop as the CLI stops on SIGTERM."""
    carry = dist_utils.all_gather_objects([float(x) for x in stats.carry], rt)
    save_progress(cfg, rt, run_dir, progress, model, loop, images,
                  in_epoch={"batches_done": int(stats.stopped_after), "world_size": rt.world_size, "carry": carry})
    dist_utils.barrier(rt)
    _logger.warning("stopped by SIGTERM in epoch %d after batch %d of %d (step %d), checkpoint written; "
                    "--resume continues there", progress.epoch, stats.stopped_after, num_batches, loop.optimizer_steps)
    raise Terminated()


def checkpoint_state(progress: Progress, model: torch.nn.Module, loop: EpochLoop, rng: list,
                     images: LabeledImages, batch: int) -> dict:
    return {
        "epoch": progress.epoch,
        "model": export_state_dict(model),
        "loop": loop.state_dict(),
        "rng": rng,
        "pool": [e.to_dict() for e in progress.pool],
        "rounds_done": progress.rounds_done,
        "synthetic_seen_total": progress.synthetic_seen_total,
        "dataset_fingerprint": images.fingerprint,
        "labels_sha256": labels_sha256(images),
        "class_names": list(images.class_names),
        "global_batch": batch,
    }


def save_progress(cfg: Config, rt: Runtime, run_dir: Path, progress: Progress, model: torch.nn.Module,
                  loop: EpochLoop, images: LabeledImages, in_epoch: Optional[dict] = None) -> None:
    """The checkpoint (every rank's RNG states gathered; rank 0 writes): at an epoch's end, or with
    ``in_epoch`` at the step a SIGTERM stopped the epoch at."""
    rng = dist_utils.all_gather_objects(capture_rng(), rt)
    if rt.is_main:
        state = checkpoint_state(progress, model, loop, rng, images, global_batch(cfg, rt))
        if in_epoch is not None:
            state["in_epoch"] = in_epoch
        save_checkpoint(run_dir / CHECKPOINT_FILE, state)
