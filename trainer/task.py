"""The training task: batch augmentation on the device (mixup/cutmix) and the loss.

Returns timm's task dict (``{"loss", "output"}``) so that the loop only backpropagates.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .config import TrainConfig


def create_mixup(cfg: TrainConfig, num_classes: int):
    """timm ``Mixup`` (mixup/cutmix with label smoothing folded into the soft targets), or None."""
    if not cfg.mixup_active:
        return None
    from timm.data import Mixup

    return Mixup(mixup_alpha=cfg.mixup_alpha, cutmix_alpha=cfg.cutmix_alpha, prob=cfg.mixup_prob,
                 switch_prob=cfg.mixup_switch_prob, mode="batch", label_smoothing=cfg.label_smoothing,
                 num_classes=num_classes)


def create_criterion(cfg: TrainConfig) -> nn.Module:
    """Soft-target CE under mixup, label-smoothing CE when smoothing, plain CE otherwise."""
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    if cfg.mixup_active:
        return SoftTargetCrossEntropy()
    if cfg.label_smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=cfg.label_smoothing)
    return nn.CrossEntropyLoss()


class Task:
    """Mixup + ``timm.task.ClassificationTask``: ``task(images, labels) -> {"loss", "output"}``."""

    def __init__(self, model: nn.Module, cfg: TrainConfig, num_classes: int, device: torch.device):
        from timm.task import ClassificationTask

        self.mixup = create_mixup(cfg, num_classes)
        self.inner = ClassificationTask(model, criterion=create_criterion(cfg), device=device, verbose=False)

    def prepare_distributed(self, device_ids: Optional[list] = None) -> None:
        self.inner.prepare_distributed(device_ids=device_ids)

    def compile(self, backend: str) -> None:
        """``torch.compile`` the trained model with ``backend`` (ValueError naming the config key
        for a backend torch does not have)."""
        import torch._dynamo

        known = torch._dynamo.list_backends(exclude_tags=())
        if backend not in known:
            raise ValueError(f"config key 'train.compile' = {backend!r}: not a torch.compile backend; "
                             f"known: {', '.join(sorted(known))}")
        self.inner.compile(backend=backend)

    def no_sync(self):
        """DDP's no-sync context (a no-op in one process): gradients of a micro-batch that is not
        the last of its optimizer step stay local."""
        return self.inner.no_sync()

    @property
    def model(self) -> nn.Module:
        """The trained module (DDP-wrapped in distributed runs)."""
        return self.inner.trainable_module

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        targets = labels
        if self.mixup is not None:
            images, targets = self.mixup(images, labels)  # targets: (B, num_classes) soft labels
        return self.inner(images, targets)
