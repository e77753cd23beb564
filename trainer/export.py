"""The classifier to take away: ``<run_dir>/final/``, written once the last epoch is done.

    final/
      last/                 bundle of the last weights (the bundle format, shards/FORMAT.md)
      ema/                  bundle of the EMA weights (only with train.ema_decay)
      model.safetensors     the weights a user takes: the EMA's when there is one, else the last
      config.json           timm's layout (architecture, num_classes, label_names, model_args,
                            pretrained_cfg), so that ``timm.create_model("local-dir:<run>/final")``
                            or ``timm.create_model(name, pretrained=True,
                            pretrained_cfg_overlay={"file": ".../model.safetensors"})`` loads it

The folder is built beside its place and moved there in one step: it is complete or absent.
Final bundles carry ``round`` = the number of rounds in the schedule (one past the last round).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

import torch

from actgen.shards.atomic import atomic_directory
from actgen.shards.bundle import WEIGHTS_FILE, write_bundle
from actgen.shards.errors import writing

from .config import Config
from .model import model_identity
from .rounds import bundle_config

_logger = logging.getLogger(__name__)

FINAL_DIR = "final"
TIMM_CONFIG_FILE = "config.json"


def timm_config(cfg: Config, class_names: list[str], classifier: Optional[str]) -> dict:
    """``config.json`` as timm's hub and ``local-dir:`` loaders read it."""
    size = cfg.input.image_size
    pretrained_cfg = {"input_size": [3, size, size], "mean": list(cfg.input.mean), "std": list(cfg.input.std),
                      "interpolation": cfg.input.interpolation, "crop_pct": cfg.input.eval_crop_pct,
                      "crop_mode": "center", "num_classes": len(class_names)}
    if classifier:
        pretrained_cfg["classifier"] = classifier
    architecture, kwargs = model_identity(cfg.model)
    return {"architecture": architecture, "num_classes": len(class_names), "label_names": list(class_names),
            "model_args": kwargs, "pretrained_cfg": pretrained_cfg}


def write_final(run_dir: str | Path, cfg: Config, images, epoch: int, num_rounds: int,
                last: dict[str, torch.Tensor], ema: Optional[dict[str, torch.Tensor]],
                metrics: dict[str, float], classifier: Optional[str]) -> Path:
    """Write ``<run_dir>/final/`` (replacing an earlier one as a whole); return its path.

    Args:
        last, ema: CPU state dicts of the trained model and of its EMA (None: no EMA).
        metrics: recorded in each bundle (the EMA bundle gets ``ema_test_acc`` as its ``test_acc``).
        classifier: the head's module name (timm's ``pretrained_cfg["classifier"]``), so that a
            user who loads it for another label set gets the head dropped.
    """
    from safetensors.torch import save_file

    target = Path(run_dir) / FINAL_DIR
    with writing(target), atomic_directory(target) as tmp:
        write_bundle(tmp / "last", last, bundle_config(cfg, images, num_rounds, epoch,
                                                       {k: v for k, v in metrics.items() if k != "ema_test_acc"}))
        if ema is not None:
            ema_metrics = {"test_acc": metrics.get("ema_test_acc", float("nan"))}
            write_bundle(tmp / "ema", ema, bundle_config(cfg, images, num_rounds, epoch, ema_metrics))
        chosen = ema if ema is not None else last
        save_file({k: v.contiguous() for k, v in chosen.items()}, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        config = timm_config(cfg, list(images.class_names), classifier)
        (tmp / TIMM_CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    _logger.info("final classifier -> %s (%s weights; timm.create_model('local-dir:%s') loads it)", target,
                 "EMA" if ema is not None else "last", target)
    return target
