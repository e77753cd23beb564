"""What a round leaves for the builder: ``rounds/<r>/checkpoint/`` and ``rounds/<r>/hard_samples.json``.

The bundle is written first, so that the manifest can record its sha256; the manifest is
written last (atomically), so a builder watching for it always finds the checkpoint complete.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from actgen.shards.bundle import WEIGHTS_FILE, BundleConfig, write_bundle
from actgen.shards.errors import FormatError, writing
from actgen.shards.manifest import HardSample, HardSampleManifest, ManifestHeader, read_manifest, write_manifest
from actgen.shards.rounds import CHECKPOINT_DIR, MANIFEST_FILE, round_dir
from actgen.shards.sources import LabeledImages

from . import distributed as dist_utils
from .checkpoint import writing_weights
from .config import Config
from .distributed import Runtime
from .evaluate import Predictions
from .inline import build_round
from .model import export_state_dict, model_identity
from .synthetic import round_location

_logger = logging.getLogger(__name__)

__all__ = ["CHECKPOINT_DIR", "MANIFEST_FILE", "end_round", "guide_pool", "round_dir", "write_round"]


def write_round(run_dir: str | Path, round: int, epoch: int, cfg: Config, state_dict: dict[str, torch.Tensor],
                images, hard_samples: list[HardSample], num_evaluated: int, metrics: dict[str, float],
                num_rounds: int, selection: Optional[dict] = None, guide_pool: Sequence[str] = ()) -> Path:
    """Write round ``round``'s bundle and manifest; return the manifest path.

    Args:
        run_dir: the run directory.
        round, epoch: the round and the epoch it ended after.
        cfg: the run config (model, input and data sections are recorded).
        state_dict: the classifier's weights (the trained model, not the EMA: the paper guides
            generation with the current model).
        images: the training ``LabeledImages`` (class names, fingerprint, source).
        hard_samples: the selected samples, hardest first (by default the hold-out's misclassified
            ones; with ``rounds.search: train``, training images).
        num_evaluated: size of the split searched.
        metrics: recorded in the bundle (finite floats only).
        num_rounds: rounds in the run's schedule (the builder's per-round schedules need it).
        selection: how ``hard_samples`` were selected and whether the round fired
            (``header.selection``; see ``selection.selection_record``).
        guide_pool: training images (sample ids) a class-balanced builder may guide by
            (``header.guide_pool``).
    """
    directory = round_dir(run_dir, round)
    bundle = bundle_config(cfg, images, round, epoch, metrics)
    with writing_weights(directory / CHECKPOINT_DIR / WEIGHTS_FILE):
        sha256 = write_bundle(directory / CHECKPOINT_DIR, state_dict, bundle)
    header = ManifestHeader(
        dataset=dataclasses.asdict(images.source), dataset_fingerprint=images.fingerprint,
        class_names=list(images.class_names), split_seed=cfg.data.split_seed,
        holdout_fraction=cfg.data.holdout_fraction, num_evaluated=num_evaluated, checkpoint_sha256=sha256,
        round=round, epoch=epoch, num_rounds=num_rounds, selection=dict(selection or {}),
        guide_pool=list(guide_pool), searched=cfg.rounds.search)
    path = directory / MANIFEST_FILE
    manifest = HardSampleManifest(header=header, samples=list(hard_samples))
    if _same_as_written(path, manifest):
        # A resumed run that redoes this epoch writes the same round again: keep the file, so
        # that a builder that already started on it (its sha256 is in build.json) carries on.
        _logger.info("round %d: %s unchanged (epoch %d redone after a resume)", round, path, epoch)
        return path
    with writing(path):
        write_manifest(path, manifest)
    if selection and selection.get("fired") is False:
        _logger.info("round %d (after epoch %d) does not fire (%s): no hard samples; the builder renders "
                     "classes drawn uniformly -> %s", round, epoch, selection.get("reason"), path)
    else:
        _logger.info("round %d (after epoch %d): %d hard samples (rule %s) of %d %s images -> %s", round,
                     epoch, len(hard_samples), (selection or {}).get("rule", "misclassified"), num_evaluated,
                     "training" if cfg.rounds.search == "train" else "hold-out", path)
    return path


def bundle_config(cfg: Config, images, round: int, epoch: int, metrics: dict[str, float]) -> BundleConfig:
    """The bundle's ``config.json`` for a model trained with ``cfg`` on ``images`` (NaN metrics left out)."""
    size = cfg.input.image_size
    architecture, kwargs = model_identity(cfg.model)
    return BundleConfig(
        architecture=architecture, num_classes=len(images.class_names), class_names=list(images.class_names),
        input_size=(3, size, size), mean=tuple(cfg.input.mean), std=tuple(cfg.input.std),
        interpolation=cfg.input.interpolation, dataset_fingerprint=images.fingerprint, round=round, epoch=epoch,
        metrics={k: float(v) for k, v in metrics.items() if v == v}, model_kwargs=kwargs,
        crop_pct=cfg.input.eval_crop_pct)


def _same_as_written(path: Path, manifest: HardSampleManifest) -> bool:
    """Whether ``path`` already holds ``manifest``, apart from when and by which version it was written."""
    if not path.is_file():
        return False
    try:
        old = read_manifest(path)
    except FormatError:
        return False
    stamp = {"created": "", "tool_version": ""}
    return (dataclasses.replace(old.header, **stamp) == dataclasses.replace(manifest.header, **stamp)
            and old.samples == manifest.samples)


def guide_pool(cfg: Config, images: LabeledImages, train: np.ndarray, r: int) -> list[str]:
    """Round ``r``'s ``header.guide_pool``: up to ``rounds.guide_pool_per_class`` training images
    per class, drawn at random (seeded by the run seed and the round), as sample ids."""
    k = cfg.rounds.guide_pool_per_class
    if k == 0 or len(train) == 0:
        return []
    rng = np.random.default_rng([cfg.train.seed, r, 0x706F6F6C])   # "pool"
    labels = images.labels()[train]
    chosen = []
    for y in range(len(images.class_names)):
        rows = np.sort(np.asarray(train)[labels == y])
        chosen += rng.permutation(rows)[:k].tolist()
    return [images.sample_id(int(i)) for i in chosen]


def end_round(cfg: Config, rt: Runtime, run_dir: Path, r: int, epoch: int, model: torch.nn.Module,
               images: LabeledImages, searched: Optional[Predictions], test_acc: float, num_rounds: int,
               pool: list[str] = ()) -> dict:
    """Select the round's hard samples from ``searched`` (the hold-out's or the training images'
    predictions, ``rounds.search``) and write its bundle and manifest."""
    assert searched is not None, "rounds end only while the hold-out is held out"  # schedule invariant
    hard, selection = searched.hard_samples(images, list(images.class_names), cfg.rounds.selection, epoch)
    on_train = cfg.rounds.search == "train"
    chosen = {h.id for h in hard}
    pool = [sid for sid in pool if sid not in chosen]     # searching the training images: no id twice
    acc_key = "search_train_acc" if on_train else "holdout_acc"
    info = {"round": r, "epoch": epoch, "hard_samples": len(hard), "searched": cfg.rounds.search,
            "holdout_acc": None if on_train else searched.accuracy, acc_key: searched.accuracy,
            "manifest": str(round_dir(run_dir, r) / MANIFEST_FILE)}
    if rt.is_main:
        write_round(run_dir, r, epoch, cfg, export_state_dict(model), images, hard, len(searched.indices),
                    {acc_key: searched.accuracy, "test_acc": test_acc}, num_rounds=num_rounds,
                    selection=selection, guide_pool=list(pool))
    dist_utils.barrier(rt)
    if cfg.synthetic.source == "inline":
        if rt.is_main:
            build_round(cfg.synthetic, round_dir(run_dir, r), round_location(cfg.synthetic.pattern, run_dir, r),
                        cfg.data.source)
        dist_utils.barrier(rt)
    return info


def prune_bundles(run_dir: str | Path, joined: Sequence[int], keep: Optional[int]) -> list[int]:
    """Remove the classifier bundles of the rounds in ``joined`` (their data sets are in the pool:
    no builder needs them) but the last ``keep``; manifests stay. Returns the rounds pruned."""
    import shutil

    if keep is None:
        return []
    pruned = []
    for r in sorted(set(joined))[:-keep]:
        bundle = round_dir(run_dir, r) / CHECKPOINT_DIR
        if bundle.is_dir() and not bundle.is_symlink():
            shutil.rmtree(bundle)
            pruned.append(r)
    if pruned:
        _logger.info("removed the classifier bundles of rounds %s (checkpoint.keep_rounds = %d)", pruned, keep)
    return pruned
