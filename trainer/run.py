"""``run(cfg)``: the whole training run, as numbered steps over the stage modules.

Run directory policy: every input is validated first (config, data sets, splits, model,
initial weights, resume state); the run directory is created only after that, so bad input
never leaves a half-written run behind.

Layout of ``<run_dir>``::

    config.yaml                    resolved config
    last.pt                        exact-resume checkpoint (end of the last finished epoch, or the
                                   step a SIGTERM stopped at: :mod:`.preempt`)
    metrics.csv, metrics.jsonl     one row per epoch
    summary.json                   final numbers (also written when stopping early)
    data_errors.json               the image a run stopped on, if it did (see below)
    rounds/<r>/checkpoint/         classifier bundle after round r
    rounds/<r>/hard_samples.json   hard-sample manifest of round r
    synthetic/round-<r>/           fetched copy of round r's synthetic shards (the pool)
    final/                         the classifier to take away, once the last epoch is done (:mod:`.export`)

Restarts and resumes: see :mod:`.rundir`.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from actgen.shards.atomic import atomic_write_text
from actgen.shards.errors import FormatError, Terminated, writing
from actgen.shards.runtime import add_log_file, remove_log_file
from actgen.shards.sources import LabeledImages, load_source

from . import distributed as dist_utils
from . import preflight
from .config import CONFIG_FILE, Config, config_to_yaml
from .data import MixedBatchSampler, Split, make_train_loader, split_indices
from .distributed import Runtime
from .evaluate import Predictions
from .evaluator import Evaluator
from .export import card_facts, write_final
from .inline import close_builders
from .loop import EpochLoop, EpochStats, create_optimizer, create_scheduler
from .metrics import MetricsLog, log_epoch, pct
from .model import create_model, export_state_dict, sync_batchnorm, unwrap
from .preempt import Preemption
from .progress import Progress, global_batch, restore, resume_point, save_progress, stop_in_epoch
from .rounds import end_round, guide_pool, prune_bundles
from .rundir import check_fixed_images, clear_stopped_run, recording_bad_images, run_dir_state
from .schedule import RoundSchedule
from .loggers import RunLoggers
from .synthetic import (PoolEntry, acquire_static, missing_rounds, missing_static, obtain, pool_size,
                        round_location)
from .task import Task

_logger = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"
LOG_FILE = "train.log"


@dataclass
class _Inputs:
    """Everything validated before the run directory is touched."""

    images: LabeledImages
    test_images: Optional[LabeledImages]
    split: Split
    model: torch.nn.Module
    resume_state: Optional[dict]


def run(cfg: Config, resume: bool = False, stop_after: Optional[int] = None) -> dict[str, Any]:
    """Train as configured; return the summary (also written to ``<run_dir>/summary.json``).

    Args:
        cfg: the run config.
        resume: continue from ``<run_dir>/last.pt`` (the config must match the run's, apart from
            ``rundir.RESUMABLE_CHANGES``).
        stop_after: stop once this many epochs are complete (the run stays resumable).

    Raises:
        ValueError: a config problem (naming the key) or an unusable run directory.
        FileNotFoundError, FormatError: missing or malformed input files (naming the file).
        TimeoutError: a round's synthetic data set did not appear in time (``on_missing: wait``).
    """
    if stop_after is not None and stop_after < 1:
        raise ValueError(f"stop_after = {stop_after}: expected an int >= 1")
    # 1. Process group and device (torchrun's environment, if any).
    rt = dist_utils.setup(cfg.train.device, timeout_s=max(1800.0, cfg.synthetic.timeout_s + 600.0))
    try:
        return _run(cfg, rt, resume, stop_after)
    finally:
        close_builders()          # the inline builder server, if this run started one
        dist_utils.teardown(rt)
        remove_log_file(cfg.resolved_run_dir() / LOG_FILE)


def _run(cfg: Config, rt: Runtime, resume: bool, stop_after: Optional[int]) -> dict[str, Any]:
    run_dir = cfg.resolved_run_dir()
    schedule, epochs = RoundSchedule.from_config(cfg.rounds, cfg.train.epochs), cfg.train.epochs

    # 2. Validate every input before the run directory exists.
    _seed_everything(cfg.train.seed + rt.rank)
    inputs = _validate_inputs(cfg, run_dir, resume)
    images, split = inputs.images, inputs.split
    class_names = list(images.class_names)

    # 3. Model, task, optimizer, LR schedule, EMA (still before the run directory: these reject
    #    unknown optimizer and scheduler names).
    model, ema, task, loop = _training(cfg, rt, inputs)

    # 4. Resume: weights, optimizer/scheduler/EMA, RNGs, pool, rounds.
    progress = Progress()
    if inputs.resume_state is not None:
        progress = restore(inputs.resume_state, model, loop, rt, run_dir, global_batch(cfg, rt))
        _logger.info("resuming %s at epoch %d (%d synthetic images in the pool)", run_dir, progress.epoch,
                     pool_size(progress.pool))

    # 5. The run directory, its resolved config and metrics (rows past a resumed checkpoint dropped).
    dist_utils.barrier(rt)  # every rank has checked the run directory before rank 0 creates it
    metrics = _open_run_dir(cfg, rt, run_dir, inputs.resume_state is not None, progress.epoch)
    board = RunLoggers(cfg, run_dir, rt.is_main, progress.epoch)
    loop.on_log = board.step
    _logger.info("run %s: %d train / %d hold-out / %d test images, %d classes; %s", run_dir, len(split.train),
                 len(split.holdout), _test_size(inputs), len(class_names), schedule.describe())

    # 6. Evaluation loaders (this rank's share of each split).
    evaluator = Evaluator.build(cfg, rt, inputs.images, inputs.test_images, inputs.split)

    # 7. Epochs (a bad image found on the way is recorded, so that a resume accepts it fixed).
    started = time.perf_counter()
    loader, sampler, loader_key = None, None, None
    start, carry = resume_point(progress.in_epoch, rt)
    if start:
        _logger.info("epoch %d continues at batch %d (stopped there by SIGTERM)", progress.epoch, start)
    preemption = Preemption(rt, every=cfg.train.log_interval)
    with recording_bad_images(run_dir, images, lambda: progress.epoch), preemption:
        while progress.epoch < epochs and (stop_after is None or progress.epoch < stop_after):
            epoch = progress.epoch
            t0 = time.perf_counter()
            # 7a. Synthetic data sets due by now join the pool.
            merged = schedule.holdout_merged(epoch)
            num_real = len(split.train) + (len(split.holdout) if merged else 0)
            if cfg.synthetic.source in ("shards", "inline"):
                _join_due_rounds(cfg, rt, run_dir, schedule, progress, epoch, class_names, num_real)
                for joined in (e for e in progress.pool if e.epoch == epoch and e.round >= 0):
                    board.round_image(run_dir, joined.round)
                if rt.is_main:
                    prune_bundles(run_dir, [e.round for e in progress.pool if e.round >= 0], cfg.checkpoint.keep_rounds)
            if epoch >= cfg.synthetic.static_epoch:
                _join_static(cfg, rt, run_dir, progress, epoch, class_names, num_real)
            # 7b. The hold-out joins training at the merge epoch; rebuild the loader when the data change.
            placebo = cfg.synthetic.placebo_per_round * len(schedule.rounds_due_by(epoch))
            key = (tuple(e.directory for e in progress.pool), merged, placebo)
            if key != loader_key:
                loader, sampler = _train_loader(cfg, rt, run_dir, inputs, progress, merged, placebo)
                loader_key = key
                if merged and epoch == schedule.merge_epoch and len(split.holdout):
                    _logger.info("epoch %d: hold-out (%d images) merged into training", epoch, len(split.holdout))
            sampler.set_epoch(epoch, start=start)
            # 7c. Train (a SIGTERM meanwhile stops at the next step boundary, with a checkpoint there).
            with preemption.deferred():
                stats = loop.train_epoch(loader, len(sampler), epoch, epochs, sampler.num_synthetic_images(),
                                         start=start, carry=carry, stop=preemption.due)
            start, carry = 0, None
            if stats.stopped_after is not None:
                stop_in_epoch(cfg, rt, run_dir, progress, model, loop, images, stats, len(sampler))
            _share_bn_statistics(rt, model, ema)
            progress.synthetic_seen_total += stats.synthetic_images
            # 7d. Evaluate.
            eval_model = unwrap(task.model)
            holdout, test_acc, ema_acc, test_top5 = evaluator.evaluate(eval_model, ema, schedule.holdout_evaluated(epoch),
                                                            loop.optimizer_steps)
            # 7e. A round ends: hard samples + checkpoint bundle for the builder.
            round_info = None
            r = schedule.round_ending_at(epoch)
            if r is not None:
                round_info = end_round(cfg, rt, run_dir, r, epoch, eval_model, images,
                                        evaluator.searched(eval_model, holdout), test_acc,
                                        schedule.num_rounds, guide_pool(cfg, images, split.train, r))
                progress.rounds_done.append(round_info)
            # 7f. Metrics, then the checkpoint (a resumed run drops metric rows past its checkpoint).
            progress.epoch = epoch + 1
            row = _metrics_row(epoch, stats, holdout, test_acc, ema_acc, round_info, progress, sampler,
                               time.perf_counter() - t0, test_top5)
            log_epoch(row, epochs)
            if rt.is_main:
                metrics.append(row)
                board.append(row)
            save_progress(cfg, rt, run_dir, progress, model, loop, images)
            dist_utils.barrier(rt)
            if preemption.agreed():     # asked during the epoch, too late for a step boundary in it
                _logger.warning("stopped by SIGTERM after epoch %d; --resume continues at epoch %d", epoch,
                                progress.epoch)
                raise Terminated()

    # 8. The classifier to take away, then the summary.
    board.close()
    if progress.epoch >= epochs and rt.is_main:
        model_out = unwrap(task.model)
        last_row = metrics.rows()[-1] if metrics.rows() else {}
        write_final(run_dir, cfg, images, progress.epoch - 1, schedule.num_rounds, export_state_dict(model_out),
                    export_state_dict(ema.module) if ema is not None else None,
                    {k: last_row[k] for k in ("test_acc", "test_top5", "ema_test_acc", "holdout_acc")
                     if isinstance(last_row.get(k), (int, float))},
                    getattr(model_out, "pretrained_cfg", {}).get("classifier"),
                    card_facts(run_dir, progress.pool, len(progress.rounds_done), last_row))
    return _summary(cfg, run_dir, progress, metrics, time.perf_counter() - started, rt, loop.optimizer_steps)


# ---------------------------------------------------------------------------------------- steps
def _open_run_dir(cfg: Config, rt: Runtime, run_dir: Path, resume: bool, next_epoch: int) -> MetricsLog:
    """Rank 0 creates the run directory, writes the resolved config (a new run) and drops metric
    rows of epochs that will be run again."""
    metrics = MetricsLog(run_dir)
    if rt.is_main:
        fresh = not resume      # no checkpoint (a checkpoint in epoch 0 is one a SIGTERM wrote)
        if fresh:
            clear_stopped_run(run_dir)     # a run that stopped before its first checkpoint: taken over
        run_dir.mkdir(parents=True, exist_ok=True)
        add_log_file(run_dir / LOG_FILE)       # the run keeps its own log (appended on resume)
        if fresh:
            with writing(run_dir / CONFIG_FILE):
                atomic_write_text(run_dir / CONFIG_FILE, config_to_yaml(dataclasses.replace(cfg, run_dir=str(run_dir))))
        metrics.truncate(next_epoch)
    return metrics


def _training(cfg: Config, rt: Runtime, inputs: _Inputs):
    """``(model, ema, task, loop)``: the model on its device, its EMA, the task and the epoch loop."""
    model = inputs.model.to(rt.device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model = sync_batchnorm(model, cfg.train.sync_bn, rt.distributed, rt.device)   # before the EMA copy and DDP
    ema = None
    if cfg.train.ema_decay is not None:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=cfg.train.ema_decay)
    task = Task(model, cfg.train, len(inputs.images.class_names), rt.device)
    if cfg.train.compile:
        task.compile(cfg.train.compile)           # before DDP (timm's task API); evaluation stays eager
    if rt.distributed:
        task.prepare_distributed(device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
    optimizer = create_optimizer(model, cfg.optim)
    train = inputs.split.train
    batches = len(MixedBatchSampler(len(train), 0, cfg.loader.batch_size, "uniform", rank=rt.rank,
                                    world_size=rt.world_size, drop_last=cfg.loader.drop_last))
    # Optimizer steps per epoch: the schedule's grid (micro-batches of a step count once).
    updates_per_epoch = -(-batches // cfg.train.grad_accum_steps)
    if updates_per_epoch == 0:
        raise ValueError(f"config key 'loader.batch_size' = {cfg.loader.batch_size}: larger than the "
                         f"{len(train)} training images per {rt.world_size} process(es); no full batch")
    scheduler = create_scheduler(optimizer, cfg.sched, cfg.train.epochs, updates_per_epoch)
    loop = EpochLoop(task, optimizer, scheduler, cfg.train, cfg.optim, cfg.sched.step_on, updates_per_epoch, rt, ema)
    return model, ema, task, loop


def _train_loader(cfg: Config, rt: Runtime, run_dir: Path, inputs: _Inputs, progress: Progress, merged: bool,
                  placebo: int = 0):
    """``(loader, sampler)`` over the real training images (plus the hold-out once merged) and the pool."""
    split = inputs.split
    real = [split.train] + ([split.holdout] if merged and len(split.holdout) else [])
    return make_train_loader(cfg, inputs.images, real, [run_dir / e.directory for e in progress.pool], rank=rt.rank,
                             world_size=rt.world_size, pin_memory=rt.device.type == "cuda", extra_real=placebo,
                             device=rt.device)


def _share_bn_statistics(rt: Runtime, model, ema) -> None:
    """One set of BN statistics on every rank, for evaluation and bundles (as timm's train.py)."""
    if rt.distributed:
        from timm.utils import distribute_bn

        distribute_bn(model, rt.world_size, reduce=True)
        if ema is not None:
            distribute_bn(ema, rt.world_size, reduce=True)


def _join_due_rounds(cfg: Config, rt: Runtime, run_dir: Path, schedule: RoundSchedule, progress: Progress,
                     epoch: int, class_names: list[str], num_real: int) -> None:
    """Synthetic data sets of the rounds due by ``epoch`` join the pool (those that are ready)."""
    for r in missing_rounds(schedule.rounds_due_by(epoch), progress.pool):
        entry = _acquire_round(cfg, rt, run_dir, r, epoch, class_names, first_look=epoch == schedule.consume_epoch(r))
        if entry is not None:
            pool = pool_size(progress.pool) + entry.num_samples
            progress.pool.append(dataclasses.replace(entry, share_at_join=round(pool / (num_real + pool), 4)))


def _join_static(cfg: Config, rt: Runtime, run_dir: Path, progress: Progress, epoch: int, class_names: list[str],
                 num_real: int) -> None:
    """The received data sets (``synthetic.static``) not in the pool yet join it (rank 0 fetches)."""
    for position, location in missing_static(cfg.synthetic.static, progress.pool):
        outcome: Any = None
        if rt.is_main:
            try:
                outcome = acquire_static(location, position, run_dir, epoch, class_names)
            except Exception as e:
                if rt.distributed:
                    dist_utils.broadcast_object(("error", f"{type(e).__name__}: {e}"), rt)
                raise
        outcome = dist_utils.broadcast_object(outcome, rt)
        if isinstance(outcome, tuple):
            raise RuntimeError(f"rank 0 could not add the received data set {location}: {outcome[1]}")
        pool = pool_size(progress.pool) + outcome.num_samples
        progress.pool.append(dataclasses.replace(outcome, share_at_join=round(pool / (num_real + pool), 4)))


def _validate_inputs(cfg: Config, run_dir: Path, resume: bool) -> _Inputs:
    preflight.check(cfg)
    state = run_dir_state(cfg, run_dir, resume)
    images = load_source(cfg.data.source)
    test_images = None
    if cfg.data.test_source is not None:
        test_images = load_source(cfg.data.test_source)
        if list(test_images.class_names) != list(images.class_names):
            raise FormatError(cfg.data.test_source.path, f"test class names {list(test_images.class_names)} differ "
                                                         f"from the training source's {list(images.class_names)}")
    for source in (images, test_images):
        if source is not None and source.check_images(cfg.data.decode_check_limit):
            _logger.info("%s: all %d images decode", source.source.path, len(source))
    if state is not None and state["dataset_fingerprint"] != images.fingerprint:
        check_fixed_images(state, images, run_dir, cfg.data.source.path)
    split = split_indices(images.labels(), cfg.data.holdout_fraction, cfg.data.test_fraction, cfg.data.split_seed)
    model = create_model(cfg.model, len(images.class_names), list(images.class_names))
    return _Inputs(images=images, test_images=test_images, split=split, model=model, resume_state=state)


def _acquire_round(cfg: Config, rt: Runtime, run_dir: Path, round: int, epoch: int,
                   class_names: list[str], first_look: bool = True) -> Optional[PoolEntry]:
    """Rank 0 waits for, fetches and verifies the data set; every rank gets the outcome."""
    location = round_location(cfg.synthetic.pattern, run_dir, round)
    outcome: Any = None
    if rt.is_main:
        try:
            outcome = obtain(location, run_dir, round, epoch, class_names, cfg.synthetic, first_look=first_look)
        except Exception as e:
            if rt.distributed:  # let the other ranks stop too instead of hanging in the broadcast
                dist_utils.broadcast_object(("error", f"{type(e).__name__}: {e}"), rt)
            raise
    outcome = dist_utils.broadcast_object(outcome, rt)
    if isinstance(outcome, tuple) and outcome and outcome[0] == "error":
        raise RuntimeError(f"rank 0 could not add round {round}'s synthetic data: {outcome[1]}")
    return outcome


def _metrics_row(epoch: int, stats: EpochStats, holdout: Optional[Predictions], test_acc: float, ema_acc: float,
                 round_info: Optional[dict], progress: Progress, sampler: MixedBatchSampler, seconds: float,
                 test_top5: float = float("nan")) -> dict:
    return {
        "epoch": epoch, "loss": stats.loss, "lr": stats.lr, "train_acc": stats.train_acc,
        "holdout_acc": holdout.accuracy if holdout is not None else None, "test_acc": test_acc,
        "test_top5": test_top5, "ema_test_acc": ema_acc,
        "round": round_info["round"] if round_info else None,
        "hard_samples": round_info["hard_samples"] if round_info else None,
        "real_images": sampler.num_real, "synthetic_pool": pool_size(progress.pool),
        "synthetic_seen": stats.synthetic_images, "synthetic_seen_total": progress.synthetic_seen_total,
        # The synthetic share of what this epoch trained on, and of the training set.
        "synthetic_share": round(stats.synthetic_images / stats.images, 4) if stats.images else 0.0,
        "synthetic_set_share": round(pool_size(progress.pool) / (sampler.num_real + pool_size(progress.pool)), 4),
        "images": stats.images, "images_per_s": stats.images_per_s, "epoch_time_s": seconds,
    }


def _summary(cfg: Config, run_dir: Path, progress: Progress, metrics: MetricsLog, seconds: float,
             rt: Runtime, optimizer_steps: int) -> dict:
    """``summary.json`` (written by rank 0, logged) and the summary ``run`` returns."""
    rows = metrics.rows() if rt.is_main else []
    tests = [r["test_acc"] for r in rows if r.get("test_acc") is not None]
    summary = {
        "run_dir": str(run_dir),
        "complete": progress.epoch >= cfg.train.epochs,
        "epochs_completed": progress.epoch,
        "epochs": cfg.train.epochs,
        "final": rows[-1] if rows else {},
        "best_test_acc": max(tests) if tests else None,
        "rounds": progress.rounds_done,
        "synthetic_pool": pool_size(progress.pool),
        "pool": [e.describe() for e in progress.pool],
        "synthetic_seen_total": progress.synthetic_seen_total,
        "wall_time_s": seconds,
        "world_size": rt.world_size,
        "optimizer_steps": optimizer_steps,
    }
    if rt.is_main:
        with writing(run_dir / SUMMARY_FILE):
            atomic_write_text(run_dir / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
        _logger.info("%s %s after %d/%d epochs: test acc %s, hold-out acc %s, %d rounds, %d synthetic images "
                     "in the pool, %d seen", "finished" if summary["complete"] else "stopped", run_dir,
                     progress.epoch, cfg.train.epochs, pct(summary["final"].get("test_acc")),
                     pct(summary["final"].get("holdout_acc")), len(progress.rounds_done),
                     summary["synthetic_pool"], progress.synthetic_seen_total)
    return summary


# -------------------------------------------------------------------------------------- helpers
def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _test_size(inputs: _Inputs) -> int:
    return len(inputs.test_images) if inputs.test_images is not None else len(inputs.split.test)
