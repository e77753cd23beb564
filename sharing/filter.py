"""``actgen-data filter``: a new data set keeping the images a scorer assigns to their own label.

Peers drop failed renders with a CLIP or classifier score; here a :class:`Scorer` maps images to
class probabilities, and an image is kept when the probability of its label is at least
``min_prob`` and its label is among the ``max_rank`` most probable classes. The scorer shipped is
a classifier bundle (what ``actgen-train`` writes each round) through its own evaluation
transform; a CLIP-style zero-shot scorer plugs in by implementing the same protocol. The result
is an ordinary data set (the trainer consumes it unchanged); its index and card record the
filter's settings, the scorer's identity (for a bundle, its sha256) and the source.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Protocol, Sequence

import numpy as np

from actgen.shards.reader import ShardRandomAccess
from actgen.shards.verify import verify
from actgen.shards.card import LICENSE_FIELDS, card_license
from actgen.shards.writer import COPIES_KEY, DatasetIndex, ShardSetWriter

from .outputs import check_output, replacing

from .merge import source_record

BATCH = 64


class Scorer(Protocol):
    """Class probabilities of images, in the data set's label order."""

    class_names: list[str]

    def identity(self) -> dict:
        """What the index records about the scorer (kind, and a hash of its weights)."""

    def __call__(self, images: Sequence) -> np.ndarray:
        """PIL images -> probabilities ``(N, C)``."""


class ClassifierScorer:
    """A classifier bundle's softmax, through the bundle's own evaluation transform."""

    def __init__(self, bundle: str | Path, device: str = "cpu"):
        import torch
        from timm.data import create_transform, resolve_data_config

        from actgen.shards.bundle import bundle_sha256, load_classifier

        self.model, config = load_classifier(bundle, device=device)
        self.class_names = list(config.class_names)
        self.transform = create_transform(**resolve_data_config(model=self.model), is_training=False)
        self.device = device
        self._sha = bundle_sha256(bundle)
        self._architecture = config.architecture
        self._torch = torch

    def identity(self) -> dict:
        return {"kind": "classifier", "architecture": self._architecture, "checkpoint_sha256": self._sha}

    def __call__(self, images: Sequence) -> np.ndarray:
        torch = self._torch
        with torch.no_grad():
            x = torch.stack([self.transform(im.convert("RGB")) for im in images]).to(self.device)
            return torch.softmax(self.model(x).float(), dim=1).cpu().numpy()


def keep_mask(probs: np.ndarray, labels: np.ndarray, min_prob: float, max_rank: Optional[int]) -> np.ndarray:
    """Which rows to keep: ``p[label] >= min_prob`` and the label's rank (1 = most probable) <= ``max_rank``."""
    rows = np.arange(len(labels))
    p_true = probs[rows, labels]
    rank = 1 + (probs > p_true[:, None]).sum(axis=1)          # ties rank together, at their best
    keep = p_true >= min_prob
    if max_rank is not None:
        keep &= rank <= max_rank
    return keep


def filter_dataset(dataset: str | Path, output: str | Path, scorer: Scorer, min_prob: float = 0.0,
                   max_rank: Optional[int] = 1, overwrite: bool = False) -> DatasetIndex:
    """Write the samples of ``dataset`` that ``scorer`` assigns to their label into ``output``.

    Raises:
        ValueError: thresholds out of range, class names of the scorer and the data set differ,
            or nothing would be kept (nothing is written then).
        FormatError: ``dataset`` is not a finished data set or fails its check.
    """
    if not 0.0 <= min_prob <= 1.0:
        raise ValueError(f"min_prob = {min_prob}: expected a probability in [0, 1]")
    if max_rank is not None and max_rank < 1:
        raise ValueError(f"max_rank = {max_rank}: expected an int >= 1 (1 = the label is the top class)")
    out = check_output(output, [dataset], overwrite, "data set")
    verify(dataset, decode=False)
    data = ShardRandomAccess(dataset)
    if scorer.class_names != data.class_names:
        raise ValueError(f"filter: the scorer's classes {scorer.class_names} differ from the data set's "
                         f"{data.class_names}")
    labels = np.asarray(data.labels())
    probs = np.concatenate([scorer([data[i][0] for i in range(s, min(s + BATCH, len(data)))])
                            for s in range(0, len(data), BATCH)]) if len(data) else np.zeros((0, len(labels)))
    keep = np.flatnonzero(keep_mask(probs, labels, min_prob, max_rank))
    if len(keep) == 0:
        raise ValueError(f"filter: no image of {dataset} passes (min_prob {min_prob}, max_rank {max_rank}); "
                         "nothing written")
    settings = {"scorer": scorer.identity(), "min_prob": min_prob, "max_rank": max_rank,
                "kept": int(len(keep)), "of": len(data)}
    fmt = data.image_extension(0)
    created = {"filtered_by": "actgen-data filter", "filter": settings, "sources": [source_record(dataset, data)],
               "round": data.index.created.get("round"), "license": {k: v for k, v in card_license(data.index.created).items() if k in LICENSE_FIELDS},
               **({COPIES_KEY: True} if data.index.created.get(COPIES_KEY) is True else {})}
    with replacing(out) as staging, ShardSetWriter(
            staging, data.class_names, len(keep), max(1, min(len(data.index.shards), len(keep))),
            prefix="filtered", image_format=fmt, created=created) as writer:
        for i in keep:
            sample = data.sample(int(i))
            sample.provenance["filter_score"] = round(float(probs[i, labels[i]]), 6)
            writer.write(sample)
        index = writer.close()
    return index
