"""Evaluation: accuracy, and the hard samples of the hold-out (the paper's search for hard samples).

By default (``rounds.selection.rule: misclassified``, the paper) a hard sample is every hold-out
image whose top-1 prediction is wrong; there is no confidence threshold. The other rules rank
the hold-out by loss, entropy or margin (:mod:`.selection`). Each hard sample's probability of
the true class and its loss are recorded for the builder.
"""
from __future__ import annotations

from dataclasses import dataclass

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from actgen.shards.manifest import HardSample

from .config import SelectionConfig
from .distributed import Runtime, all_gather_objects
from .loop import autocast
from .selection import Hardness, fires, select, selection_record


@dataclass(frozen=True)
class Predictions(Hardness):
    """The per-sample statistics (:class:`~.selection.Hardness`) of a whole split (all ranks), and
    ``indices``: the row indices into the evaluated source they belong to."""

    indices: np.ndarray
    in_top5: Optional[np.ndarray] = None   # whether the label is among the 5 highest logits

    @property
    def accuracy(self) -> float:
        return float((self.predicted == self.labels).mean()) if len(self.labels) else float("nan")

    @property
    def top5_accuracy(self) -> float:
        """Share of samples whose label is among the 5 highest logits (NaN with fewer than 6
        classes, where it says nothing, or none measured)."""
        if self.in_top5 is None or not len(self.labels):
            return float("nan")
        return float(self.in_top5.mean())

    def hard_samples(self, images, class_names: list[str], cfg: SelectionConfig,
                     epoch: int) -> tuple[list[HardSample], dict]:
        """The samples ``cfg`` selects, hardest first, with their stable ids from the
        ``LabeledImages``, and the record for the manifest header (``selection``).

        A round that ended after ``epoch`` below ``cfg``'s start condition selects none, and so
        does one whose selection is empty: either does not fire (``fired: false`` and the reason).
        """
        fired, reason = fires(cfg, epoch, self.accuracy)
        if not fired:
            return [], selection_record(cfg, False, reason, num_candidates=0)
        chosen, num_candidates = select(self, cfg)
        if len(chosen) == 0:
            # Nothing to render near (e.g. every searched image is right): the round does not fire,
            # so the builder spends its budget on class-uniform text-to-image instead of failing.
            return [], selection_record(cfg, False, f"no searched image selected by rule {cfg.rule!r} "
                                                    f"({num_candidates} candidates)", num_candidates)
        samples = [HardSample(id=images.sample_id(int(self.indices[i])), label=int(self.labels[i]),
                              class_name=class_names[int(self.labels[i])], predicted=int(self.predicted[i]),
                              prob_true=float(self.prob_true[i]), loss=float(self.loss[i])) for i in chosen]
        return samples, selection_record(cfg, True, None, num_candidates)


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
        log_probs = logits.log_softmax(dim=-1)
        probs = log_probs.exp()                                           # (B, C)
        prob_true = probs.gather(1, labels[:, None])[:, 0]
        entropy = -(probs * log_probs).sum(dim=-1)                        # log_probs finite: underflowed probs add 0
        margin = prob_true - probs.scatter(1, labels[:, None], float("-inf")).amax(dim=-1)
        # Rank of the label's logit (ties count for the label); NaN-free 0/1, or -1 below 6 classes.
        above = (logits > logits.gather(1, labels[:, None])).sum(dim=-1)
        in_top5 = (above < 5).double() if logits.shape[1] > 5 else torch.full_like(loss, -1.0, dtype=torch.float64)
        # Per-sample statistics only (not the (N, C) probabilities): a 1000-class hold-out stays
        # small to gather. Kept on the device; one transfer at the end instead of one per batch.
        parts.append(torch.stack([positions.to(device).double(), labels.double(), logits.argmax(-1).double(),
                                  prob_true.double(), loss.double(), entropy.double(), margin.double(), in_top5],
                                 dim=1))
    local = torch.cat(parts).cpu().numpy() if parts else np.zeros((0, 8))
    local[:, 0] = np.asarray(source_indices)[local[:, 0].astype(np.int64)] if len(local) else local[:, 0]
    table = np.concatenate(all_gather_objects(local, rt))
    table = table[np.argsort(table[:, 0], kind="stable")]
    return Predictions(indices=table[:, 0].astype(np.int64), labels=table[:, 1].astype(np.int64),
                       predicted=table[:, 2].astype(np.int64), prob_true=table[:, 3], loss=table[:, 4],
                       entropy=table[:, 5], margin=table[:, 6],
                       in_top5=table[:, 7] if len(table) and table[0, 7] >= 0 else None)
