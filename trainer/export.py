"""The classifier to take away: ``<run_dir>/final/``, written once the last epoch is done.

    final/
      model.safetensors     the weights a user takes: the EMA's when there is one, else the last
      config.json           one file for both readers: a classifier bundle (format version 2, the
                            builder's and actgen-data filter's) carrying timm's own keys
                            (label_names, model_args, pretrained_cfg), so that
                            ``timm.create_model("local-dir:<run>/final")`` or
                            ``timm.create_model(name, pretrained=True,
                            pretrained_cfg_overlay={"file": ".../model.safetensors"})`` loads it
      last/                 with EMA only: the bundle of the last weights (the other weights)
      README.md             a model card: data, rounds, synthetic share, accuracy, the generators
                            of the synthetic images and their licences

Each weight file is stored once. The folder is built beside its place and moved there in one
step: it is complete or absent. Final bundles carry ``round`` = the number of rounds in the
schedule (one past the last round).
"""
from __future__ import annotations

import dataclasses
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


def card_facts(run_dir: Path, pool: list, rounds: int, last_row: dict) -> dict:
    """What the model card says of the run: rounds, images, and each synthetic data set's
    generator and licences (from its index, as received: the card escapes them)."""
    from actgen.shards.reader import read_index

    sources = []
    for entry in pool:
        try:
            created = read_index(run_dir / entry.directory).created
        except Exception:       # a copy gone since it joined: the card says what the pool recorded
            created = {}
        generator = created.get("generator") if isinstance(created.get("generator"), dict) else {}
        licence = created.get("license") if isinstance(created.get("license"), dict) else {}
        sources.append({"round": entry.round, "num_samples": entry.num_samples, "generator": generator.get("name"),
                        "weights_sha256": generator.get("weights_sha256"),
                        "generator_license": licence.get("generator"), "license": licence.get("dataset")})
    return {"rounds": rounds, "real_images": last_row.get("real_images"),
            "synthetic_images": sum(e.num_samples for e in pool), "synthetic_set_share": last_row.get("synthetic_set_share"),
            "sources": sources}


def model_card(cfg: Config, images, metrics: dict, facts: dict, architecture: str) -> str:
    """``final/README.md``: a Hugging Face model card. ``facts``: ``rounds`` (rounds done),
    ``real_images``, ``synthetic_images``, ``synthetic_set_share`` and ``sources`` (one per
    synthetic data set: round, images, generator name and weights sha256, licences), read from the
    run's pool; what came from received files is shown escaped, in code spans."""
    from huggingface_hub import ModelCard, ModelCardData

    from actgen.shards.portable import portable_path

    def code(value) -> str:
        return "`" + json.dumps(value, ensure_ascii=False).replace("`", "\\u0060") + "`"

    def pct(key) -> str:
        v = metrics.get(key)
        return f"{100 * v:.2f}%" if isinstance(v, (int, float)) and v == v else "not measured"

    data = ModelCardData(library_name="timm", tags=["image-classification", "timm", "actgen"], license="other",
                         license_name="unspecified")
    source = cfg.data.source
    import re

    lines = [f"# {cfg.name if re.fullmatch(r'[A-Za-z0-9_. -]+', cfg.name) else code(cfg.name)}", "",
             "An image classifier trained by `actgen-train` with active generation: after each round, the "
             "held-out images it got wrong guided a diffusion model, whose renders joined its training data.", "",
             f"- Architecture: {code(architecture)} (timm), {len(images.class_names)} classes: "
             f"{code(list(images.class_names))}",
             f"- Data: {code(portable_path(source.path))} split {code(source.split)}, content fingerprint "
             f"{code(images.fingerprint[:12])}; {facts.get('real_images', 0)} real training images",
             f"- Rounds of active generation: {facts.get('rounds', 0)}; synthetic images in training: "
             f"{facts.get('synthetic_images', 0)} ({100 * float(facts.get('synthetic_set_share') or 0):.1f}% of the "
             "training set at the end)",
             f"- Test accuracy: top-1 {pct('test_acc')}, top-5 {pct('test_top5')}, EMA top-1 {pct('ema_test_acc')}",
             f"- Epochs: {cfg.train.epochs}; input {cfg.input.image_size} px, mean {code(list(cfg.input.mean))}, "
             f"std {code(list(cfg.input.std))}"]
    for src in facts.get("sources", []):
        lines.append(f"- Synthetic images of round {code(src.get('round'))}: {code(src.get('num_samples'))} by "
                     f"generator {code(src.get('generator'))} (weights sha256 {code(src.get('weights_sha256'))}; "
                     f"its licence {code(src.get('generator_license'))}, the data set's {code(src.get('license'))})")
    lines += ["", "Load it with timm: `timm.create_model(\"local-dir:<this folder>\", pretrained=True)`.", "",
              "The weights' terms follow those of the training data and of the licences of the generators "
              "whose images it trained on (listed above); actgen sets none of its own.", ""]
    return str(ModelCard("---\n" + data.to_yaml() + "\n---\n\n" + "\n".join(lines)))


def write_final(run_dir: str | Path, cfg: Config, images, epoch: int, num_rounds: int,
                last: dict[str, torch.Tensor], ema: Optional[dict[str, torch.Tensor]],
                metrics: dict[str, float], classifier: Optional[str], facts: Optional[dict] = None) -> Path:
    """Write ``<run_dir>/final/`` (replacing an earlier one as a whole); return its path.

    Args:
        last, ema: CPU state dicts of the trained model and of its EMA (None: no EMA).
        metrics: recorded in each bundle (the EMA bundle gets ``ema_test_acc`` as its ``test_acc``).
        classifier: the head's module name (timm's ``pretrained_cfg["classifier"]``), so that a
            user who loads it for another label set gets the head dropped.
    """
    target = Path(run_dir) / FINAL_DIR
    timm_keys = timm_config(cfg, list(images.class_names), classifier)
    chosen_metrics = ({"test_acc": metrics.get("ema_test_acc", float("nan"))} if ema is not None else
                      {k: v for k, v in metrics.items() if k != "ema_test_acc"})
    chosen = dataclasses.replace(bundle_config(cfg, images, num_rounds, epoch, chosen_metrics),
                                 label_names=timm_keys["label_names"], model_args=timm_keys["model_args"],
                                 pretrained_cfg=timm_keys["pretrained_cfg"])
    with writing(target), atomic_directory(target) as tmp:
        write_bundle(tmp / "bundle", ema if ema is not None else last, chosen)
        for f in (WEIGHTS_FILE, TIMM_CONFIG_FILE):     # the bundle is the folder itself
            (tmp / "bundle" / f).rename(tmp / f)
        (tmp / "bundle").rmdir()
        if ema is not None:
            write_bundle(tmp / "last", last, bundle_config(cfg, images, num_rounds, epoch,
                                                           {k: v for k, v in metrics.items() if k != "ema_test_acc"}))
        (tmp / "README.md").write_text(model_card(cfg, images, metrics, facts or {}, chosen.architecture),
                                       encoding="utf-8")
    _logger.info("final classifier -> %s (%s weights; timm.create_model('local-dir:%s') loads it)", target,
                 "EMA" if ema is not None else "last", target)
    return target
