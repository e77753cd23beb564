"""Evaluation: accuracy, and the hard samples of the hold-out (paper §1.1 2b).

A hard sample is every hold-out image whose top-1 prediction is wrong; there is no confidence
threshold. Its probability of the true class and its loss are recorded for the builder.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from actgen.shards.manifest import HardSample

from .distributed import Runtime, all_gather_objects
from .loop import autocast


@dataclass(frozen=True)
class Predictions:
    """Per-sample results over a whole split (all ranks), ordered by ``indices``.

    Attributes:
        indices: row indices into the evaluated source.
        labels, predicted: true and top-1 labels.
        prob_true: softmax probability of the true class.
        loss: cross-entropy of the true class.
    """

    indices: np.ndarray
    labels: np.ndarray
    predicted: np.ndarray
    prob_true: np.ndarray
    loss: np.ndarray

    @property
    def accuracy(self) -> float:
        return float((self.predicted == self.labels).mean()) if len(self.labels) else float("nan")

    def hard_samples(self, images, class_names: list[str]) -> list[HardSample]:
        """Every top-1-misclassified sample, with its stable id from the ``LabeledImages``."""
        wrong = np.flatnonzero(self.predicted != self.labels)
        return [HardSample(id=images.sample_id(int(self.indices[i])), label=int(self.labels[i]),
                           class_name=class_names[int(self.labels[i])], predicted=int(self.predicted[i]),
                           prob_true=float(self.prob_true[i]), loss=float(self.loss[i])) for i in wrong]


@torch.no_grad()
def predict(model: nn.Module, loader, source_indices: np.ndarray, rt: Runtime, amp: str = "none",
            channels_last: bool = False) -> Predictions:
    """Run ``model`` over ``loader`` (this rank's share, items ``(image, label, position)``) and
    gather every rank's results.

    Args:
        source_indices: this rank's row indices; ``position`` indexes into them.
    """
    model.eval()
    device = rt.device
    parts: list[torch.Tensor] = []
    for inputs, labels, positions in loader:
        inputs = inputs.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        if channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp):
            logits = model(inputs)
        logits = logits.float()  # (B, C); softmax and CE in float32 under AMP
        loss = F.cross_entropy(logits, labels, reduction="none")
        prob_true = logits.softmax(dim=-1).gather(1, labels[:, None])[:, 0]
        # Kept on the device; one transfer at the end instead of one per batch.
        parts.append(torch.stack([positions.to(device).double(), labels.double(), logits.argmax(-1).double(),
                                  prob_true.double(), loss.double()], dim=1))
    local = torch.cat(parts).cpu().numpy() if parts else np.zeros((0, 5))
    local[:, 0] = np.asarray(source_indices)[local[:, 0].astype(np.int64)] if len(local) else local[:, 0]
    table = np.concatenate(all_gather_objects(local, rt))
    table = table[np.argsort(table[:, 0], kind="stable")]
    return Predictions(indices=table[:, 0].astype(np.int64), labels=table[:, 1].astype(np.int64),
                       predicted=table[:, 2].astype(np.int64), prob_true=table[:, 3], loss=table[:, 4])
