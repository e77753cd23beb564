"""Evaluation during a run: this rank's share of the hold-out, the test set and (with
``rounds.search: train``) the training images, and how a model is scored on them."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

from actgen.shards.sources import LabeledImages

from .config import Config
from .data import RealImages, Split, build_eval_loader, shard_for_rank
from .distributed import Runtime
from .evaluate import Predictions, predict
from .model import recompute_bn_statistics
from .transforms import build_eval_transform, on_device


@dataclass
class Evaluator:
    """This rank's share of the hold-out and the test set, and how to score a model on them."""

    cfg: Config
    rt: Runtime
    bn_loader: Any
    holdout_size: int
    holdout_idx: np.ndarray
    holdout_loader: Any
    test_idx: np.ndarray
    test_loader: Any
    search_idx: Optional[np.ndarray] = None
    search_loader: Any = None

    @classmethod
    def build(cls, cfg: Config, rt: Runtime, images: LabeledImages, test_images: Optional[LabeledImages],
              split: Split) -> "Evaluator":
        eval_tf = build_eval_transform(cfg.input, uint8=cfg.loader.normalize == "device")
        holdout_idx = shard_for_rank(split.holdout, rt.rank, rt.world_size)
        own_test = test_images is None
        test_images = images if own_test else test_images
        test_all = split.test if own_test else np.arange(len(test_images))
        test_idx = shard_for_rank(test_all, rt.rank, rt.world_size)
        # Up to 1,024 training images, the same on every rank (each recomputes the same statistics).
        bn_idx = np.asarray(split.train)[:1024]
        bn_loader = eval_loader(images, bn_idx, eval_tf, cfg, rt) if cfg.train.precise_bn_steps else None
        search_idx = search_loader = None
        if cfg.rounds.enabled and cfg.rounds.search == "train":   # rounds score the training images
            search_idx = shard_for_rank(split.train, rt.rank, rt.world_size)
            search_loader = eval_loader(images, search_idx, eval_tf, cfg, rt)
        return cls(cfg, rt, bn_loader, len(split.holdout), holdout_idx, eval_loader(images, holdout_idx, eval_tf, cfg, rt), test_idx,
                   eval_loader(test_images, test_idx, eval_tf, cfg, rt) if len(test_all) else None,
                   search_idx, search_loader)

    def searched(self, model, holdout: Optional[Predictions]) -> Optional[Predictions]:
        """What a round selects from: the hold-out's predictions, or (``rounds.search: train``)
        the training images' under the evaluation transform."""
        if self.search_loader is None:
            return holdout
        return predict(model, self.search_loader, self.search_idx, self.rt, self.cfg.train.amp,
                       self.cfg.train.channels_last)

    def evaluate(self, model, ema, with_holdout: bool,
                 steps: int) -> tuple[Optional[Predictions], float, float, float]:
        """``(hold-out predictions or None, test accuracy, EMA test accuracy, test top-5 accuracy)``;
        NaN where not measured (top-5 also with 5 classes or fewer).

        While the run is young (``steps`` < ``train.precise_bn_steps``) the BN statistics are
        recomputed first (:func:`~.model.recompute_bn_statistics`)."""
        amp, cl = self.cfg.train.amp, self.cfg.train.channels_last
        if self.bn_loader is not None and steps < self.cfg.train.precise_bn_steps:
            images = (batch[0].to(memory_format=torch.channels_last) if cl else batch[0] for batch in self.bn_loader)
            recompute_bn_statistics(model, images, self.rt.device)
        holdout = None
        if with_holdout and self.holdout_size:   # the whole hold-out's size: every rank joins predict's gather
            holdout = predict(model, self.holdout_loader, self.holdout_idx, self.rt, amp, cl)
        test_acc = ema_acc = top5 = float("nan")
        if self.test_loader is not None:
            test = predict(model, self.test_loader, self.test_idx, self.rt, amp, cl)
            test_acc, top5 = test.accuracy, test.top5_accuracy
            if ema is not None:
                ema_acc = predict(ema.module, self.test_loader, self.test_idx, self.rt, amp, cl).accuracy
        return holdout, test_acc, ema_acc, top5


def eval_loader(images: LabeledImages, indices: np.ndarray, transform, cfg: Config, rt: Runtime):
    loader = build_eval_loader(RealImages(images, indices, transform, with_position=True), cfg.loader,
                               pin_memory=rt.device.type == "cuda")
    return on_device(loader, cfg.input, cfg.loader.normalize, rt.device, training=False)
