"""What a round leaves for the builder: ``rounds/<r>/checkpoint/`` and ``rounds/<r>/hard_samples.json``.

The bundle is written first, so that the manifest can record its sha256; the manifest is
written last (atomically), so a builder watching for it always finds the checkpoint complete.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch

from actgen.shards.bundle import BundleConfig, write_bundle
from actgen.shards.manifest import HardSample, HardSampleManifest, ManifestHeader, write_manifest

from .config import Config
from .model import model_kwargs

_logger = logging.getLogger(__name__)

MANIFEST_FILE = "hard_samples.json"
CHECKPOINT_DIR = "checkpoint"


def round_dir(run_dir: str | Path, round: int) -> Path:
    return Path(run_dir) / "rounds" / str(round)


def write_round(run_dir: str | Path, round: int, epoch: int, cfg: Config, state_dict: dict[str, torch.Tensor],
                images, hard_samples: list[HardSample], num_evaluated: int, metrics: dict[str, float]) -> Path:
    """Write round ``round``'s bundle and manifest; return the manifest path.

    Args:
        run_dir: the run directory.
        round, epoch: the round and the epoch it ended after.
        cfg: the run config (model, input and data sections are recorded).
        state_dict: the classifier's weights (the trained model, not the EMA: the paper guides
            generation with the current model).
        images: the training ``LabeledImages`` (class names, fingerprint, source).
        hard_samples: the misclassified hold-out samples.
        num_evaluated: hold-out size.
        metrics: recorded in the bundle (finite floats only).
    """
    directory = round_dir(run_dir, round)
    size = cfg.input.image_size
    bundle = BundleConfig(
        architecture=cfg.model.name, num_classes=len(images.class_names), class_names=list(images.class_names),
        input_size=(3, size, size), mean=tuple(cfg.input.mean), std=tuple(cfg.input.std),
        interpolation=cfg.input.interpolation, dataset_fingerprint=images.fingerprint, round=round, epoch=epoch,
        metrics={k: float(v) for k, v in metrics.items() if v == v}, model_kwargs=model_kwargs(cfg.model))
    sha256 = write_bundle(directory / CHECKPOINT_DIR, state_dict, bundle)
    header = ManifestHeader(
        dataset=dataclasses.asdict(images.source), dataset_fingerprint=images.fingerprint,
        class_names=list(images.class_names), split_seed=cfg.data.split_seed,
        holdout_fraction=cfg.data.holdout_fraction, num_evaluated=num_evaluated, checkpoint_sha256=sha256,
        round=round, epoch=epoch)
    path = directory / MANIFEST_FILE
    write_manifest(path, HardSampleManifest(header=header, samples=list(hard_samples)))
    _logger.info("round %d (after epoch %d): %d hard samples of %d hold-out images -> %s", round, epoch,
                 len(hard_samples), num_evaluated, path)
    return path
