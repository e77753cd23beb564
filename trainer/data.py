"""Training and evaluation data: splits, transforms, datasets, the mixing batch sampler, loaders.

The train pipeline is built by :func:`build_train_loader` (and :func:`make_train_loader` from a
config), which the throughput benchmark reuses so that it measures the identical pipeline.

Determinism: the batch sampler draws each epoch's order from ``(seed, epoch)`` alone and hands
every sample a seed with its index. In loader workers the augmentation RNGs are re-seeded from
it per sample, so persistent workers, any worker count and a resumed run all see the same
augmentations; with ``num_workers=0`` the transforms draw from the training process's global
RNGs, which the checkpoint saves.
"""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Literal, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from .config import Config, InputConfig, LoaderConfig
from .pool_images import SyntheticImages
from .samples import _load
from .transforms import build_train_transform, on_device

_logger = logging.getLogger(__name__)

Item = Union[int, tuple[int, int]]  # a plain index, or (index, augmentation seed) from the sampler


# --------------------------------------------------------------------------------------- splits
@dataclass(frozen=True)
class Split:
    """Indices into the training source.

    Attributes:
        train: images trained on from the start.
        holdout: images searched for hard samples (merged into training at the merge epoch).
        test: images carved off for testing (empty with a separate test source or none).
    """

    train: np.ndarray
    holdout: np.ndarray
    test: np.ndarray


def split_indices(labels: np.ndarray, holdout_fraction: float, test_fraction: float, seed: int) -> Split:
    """Stratified, seeded split of ``range(len(labels))`` into train / hold-out / test.

    Both fractions are shares of the whole source: the test split is carved first, then the
    hold-out from the rest, each with ``train_test_split(stratify=..., random_state=seed)``.

    Raises:
        ValueError: a split too small to hold every class, naming the config key.
    """
    from sklearn.model_selection import train_test_split

    labels = np.asarray(labels)
    n = len(labels)
    rest = np.arange(n)
    empty = np.empty(0, dtype=np.int64)

    def carve(pool: np.ndarray, fraction: float, key: str) -> tuple[np.ndarray, np.ndarray]:
        count = int(round(fraction * n))
        if fraction <= 0:
            return pool, empty
        try:
            keep, out = train_test_split(pool, test_size=count, stratify=labels[pool], random_state=seed)
        except ValueError as e:
            raise ValueError(
                f"config key '{key}' = {fraction}: cannot split {count} of {len(pool)} images stratified "
                f"over {len(np.unique(labels[pool]))} classes ({e})") from None
        return np.sort(keep), np.sort(out)

    rest, test = carve(rest, test_fraction, "data.test_fraction")
    train, holdout = carve(rest, holdout_fraction, "data.holdout_fraction")
    return Split(train=train.astype(np.int64), holdout=holdout.astype(np.int64), test=test.astype(np.int64))


def _seed_worker_rngs(seed: int) -> None:
    # torch.default_generator.manual_seed is ~1 us; torch.manual_seed also seeds every
    # accelerator and costs ~50 us, which is too much per sample.
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.default_generator.manual_seed(seed)


# ------------------------------------------------------------------------------------- datasets
class RealImages(Dataset):
    """Images of a ``LabeledImages`` at ``indices``; items are ``(tensor, label)``.

    With ``with_position`` items are ``(tensor, label, position in indices)`` (evaluation).
    """

    def __init__(self, images, indices: Sequence[int], transform: Callable, with_position: bool = False):
        self.images = images
        self.indices = np.asarray(indices, dtype=np.int64)
        self.targets = np.asarray(images.labels(), dtype=np.int64)[self.indices]
        self.transform = transform
        self.with_position = with_position

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int):
        image = self.transform(_load(self.images.image, int(self.indices[position])))
        label = int(self.targets[position])
        return (image, label, position) if self.with_position else (image, label)


class TrainingSet(Dataset):
    """Real parts first, then synthetic parts: index ``>= num_real`` is a synthetic image.

    Accepts the sampler's ``(index, seed)`` items (see the module docstring) or plain indices.
    """

    def __init__(self, real: Sequence[Dataset], synthetic: Sequence[Dataset] = ()):
        self.parts = list(real) + list(synthetic)
        self.num_real = sum(len(p) for p in real)
        self.num_synthetic = sum(len(p) for p in synthetic)
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, item: Item):
        if isinstance(item, tuple):
            item, seed = item
            if get_worker_info() is not None:
                _seed_worker_rngs(seed)
        part = int(np.searchsorted(self.offsets, item, side="right")) - 1
        return self.parts[part][item - int(self.offsets[part])]


# -------------------------------------------------------------------------------------- sampler
class MixedBatchSampler(Sampler):
    """Batches of ``(index, seed)`` over a :class:`TrainingSet`, one process's share.

    ``uniform``: one permutation of real and synthetic images together (paper).
    ``fraction``: every batch holds exactly ``synthetic_per_batch`` synthetic images (drawn by
    cycling through fresh permutations of the pool) and ``batch_size - synthetic_per_batch``
    real ones; an epoch is one pass over the real images. With an empty pool both rules
    reduce to batches of real images. ``extra_real`` (the placebo control) adds that many more
    real draws to an epoch, from fresh permutations of the real images.

    ``synthetic_weights`` (``synthetic.class_balance``): the synthetic draws are made with these
    probabilities, with replacement, instead of a permutation of the pool (as many draws as
    before).

    Distributed: all ranks draw the same global batch list from ``(seed, epoch)``; rank r takes
    batches r, r + world, ... and every rank gets the same number of batches.
    """

    def __init__(self, num_real: int, num_synthetic: int, batch_size: int, mixing: Literal["uniform", "fraction"],
                 synthetic_per_batch: int = 0, seed: int = 0, rank: int = 0, world_size: int = 1,
                 drop_last: bool = True, extra_real: int = 0, synthetic_weights: Optional[np.ndarray] = None):
        if mixing == "fraction" and num_synthetic and not 0 < synthetic_per_batch < batch_size:
            raise ValueError(f"synthetic_per_batch must be in 1..{batch_size - 1}, got {synthetic_per_batch}")
        if synthetic_weights is not None and len(synthetic_weights) != num_synthetic:
            raise ValueError(f"{len(synthetic_weights)} synthetic weights for {num_synthetic} synthetic images")
        self.synthetic_weights = synthetic_weights
        self.num_real, self.num_synthetic = num_real, num_synthetic
        self.batch_size, self.mixing, self.synthetic_per_batch = batch_size, mixing, synthetic_per_batch
        self.seed, self.rank, self.world_size, self.drop_last = seed, rank, world_size, drop_last
        self.extra_real = extra_real
        self.epoch, self.start = 0, 0
        self._cache: tuple[int, list[np.ndarray], list[np.ndarray]] | None = None

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """The epoch to draw; a resumed epoch iterates from this rank's batch ``start`` (its length
        stays the whole epoch's, the grid the LR schedule steps on)."""
        self.epoch, self.start = epoch, start

    def _global_batches(self, rng: np.random.Generator) -> list[np.ndarray]:
        b = self.batch_size
        if self.mixing == "uniform" or self.num_synthetic == 0:
            total = self.num_real + self.num_synthetic
            order = rng.permutation(total + self.extra_real)
            if self.extra_real:      # positions past the data set are further real draws
                passes = -(-self.extra_real // self.num_real)
                again = np.concatenate([rng.permutation(self.num_real) for _ in range(passes)])
                extra = order >= total
                order[extra] = again[order[extra] - total]
            if self.synthetic_weights is not None and self.num_synthetic:
                synthetic = (order >= self.num_real) & (order < total)
                order[synthetic] = self.num_real + rng.choice(self.num_synthetic, size=int(synthetic.sum()),
                                                              p=self.synthetic_weights)
            return _chunks(order, b, self.drop_last)
        n_syn = self.synthetic_per_batch
        real = _chunks(rng.permutation(self.num_real), b - n_syn, self.drop_last)
        if not real:
            return []
        need = len(real) * n_syn
        if self.synthetic_weights is not None:
            stream = rng.choice(self.num_synthetic, size=need, p=self.synthetic_weights)
        else:
            passes = -(-need // self.num_synthetic)
            stream = np.concatenate([rng.permutation(self.num_synthetic) for _ in range(passes)])[:need]
        synthetic = self.num_real + stream.reshape(len(real), n_syn)
        # Shuffle within the batch so that batch-mode mixup pairs synthetic with real images too.
        return [np.concatenate([r, s])[rng.permutation(len(r) + n_syn)] for r, s in zip(real, synthetic)]

    def _rank_batches(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        if self._cache is not None and self._cache[0] == self.epoch:
            return self._cache[1], self._cache[2]
        rng = np.random.default_rng([self.seed, self.epoch])
        batches = self._global_batches(rng)
        seeds = rng.integers(0, 2**62, size=sum(len(x) for x in batches))
        seed_chunks = np.split(seeds, np.cumsum([len(x) for x in batches])[:-1]) if batches else []
        w = self.world_size
        if w > 1:
            per_rank = len(batches) // w if self.drop_last else -(-len(batches) // w)
            # Without drop_last, pad by reusing the first batches so every rank steps equally often.
            picks = [(self.rank + k * w) % max(len(batches), 1) for k in range(per_rank)]
            batches, seed_chunks = [batches[i] for i in picks], [seed_chunks[i] for i in picks]
        self._cache = (self.epoch, batches, seed_chunks)
        return batches, seed_chunks

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        batches, seeds = self._rank_batches()
        for batch, batch_seeds in zip(batches[self.start:], seeds[self.start:]):
            yield list(zip(batch.tolist(), batch_seeds.tolist()))

    def __len__(self) -> int:
        return len(self._rank_batches()[0])

    def num_images(self) -> int:
        """Images this rank trains on in the current epoch."""
        return int(sum(len(b) for b in self._rank_batches()[0]))

    def num_synthetic_images(self) -> int:
        """Synthetic images among them."""
        return int(sum(int((b >= self.num_real).sum()) for b in self._rank_batches()[0]))


def _chunks(order: np.ndarray, size: int, drop_last: bool) -> list[np.ndarray]:
    n = len(order) // size if drop_last else -(-len(order) // size)
    return [order[i * size:(i + 1) * size] for i in range(n)]


def synthetic_per_batch(cfg: Config) -> int:
    """Synthetic images per batch under ``mixing: fraction`` (0 under ``uniform``)."""
    if cfg.synthetic.mixing != "fraction":
        return 0
    return int(round(cfg.synthetic.fraction * cfg.loader.batch_size))


# -------------------------------------------------------------------------------------- loaders
def build_train_loader(dataset: TrainingSet, sampler: MixedBatchSampler, cfg: LoaderConfig,
                       pin_memory: bool = False) -> DataLoader:
    """The training DataLoader; call ``sampler.set_epoch(e)`` before iterating each epoch."""
    return DataLoader(dataset, batch_sampler=sampler, pin_memory=pin_memory, **_loader_kwargs(cfg))


def build_eval_loader(dataset: Dataset, cfg: LoaderConfig, pin_memory: bool = False) -> DataLoader:
    """Sequential evaluation loader (no shuffling, keeps the last partial batch). Its workers end
    with each pass: a run has up to four evaluation loaders (test, hold-out, searched images, BN
    statistics), and persistent workers for all would keep five times ``num_workers`` processes
    per GPU; this way at most the training loader's and one pass's exist at once."""
    return DataLoader(dataset, batch_size=cfg.eval_batch_size, shuffle=False, pin_memory=pin_memory,
                      **_loader_kwargs(cfg, persistent=False))


def _loader_kwargs(cfg: LoaderConfig, persistent: bool = True) -> dict:
    # A private generator: each new loader iterator draws its worker base seed from it instead of
    # from the global torch RNG, so rebuilding loaders (new rounds, resume) leaves that RNG alone.
    kwargs: dict = dict(num_workers=cfg.num_workers, generator=torch.Generator().manual_seed(0))
    if cfg.num_workers > 0:
        kwargs.update(persistent_workers=persistent and cfg.persistent_workers, prefetch_factor=cfg.prefetch_factor)
    return kwargs


def make_training_set(images, real_indices: Sequence[Sequence[int]], synthetic_dirs: Sequence[str | Path],
                      input_cfg: InputConfig, uint8: bool = False) -> TrainingSet:
    """Training set over real index lists (train split, later the hold-out too) and fetched
    synthetic data set directories, all with the same training transform (ending at uint8
    with ``uint8``)."""
    transform = build_train_transform(input_cfg, uint8=uint8)
    real = [RealImages(images, idx, transform) for idx in real_indices if len(idx)]
    synthetic = [SyntheticImages(d, transform, images.class_names) for d in synthetic_dirs]
    return TrainingSet(real, synthetic)


def make_train_loader(cfg: Config, images, real_indices: Sequence[Sequence[int]],
                      synthetic_dirs: Sequence[str | Path] = (), rank: int = 0, world_size: int = 1,
                      pin_memory: bool = False, extra_real: int = 0,
                      device: Optional[torch.device] = None) -> tuple[DataLoader, MixedBatchSampler]:
    """The trainer's exact training pipeline from a config (used by ``run`` and the benchmark).

    Args:
        cfg: the run config (input, loader, synthetic mixing and seed sections are used).
        images: the ``LabeledImages`` training source.
        real_indices: index arrays into ``images`` to train on.
        synthetic_dirs: local synthetic data set directories (the pool).
        rank, world_size: this process's place in a distributed run.
        pin_memory: pin host batches (CUDA only).
        extra_real: further real draws per epoch (``synthetic.placebo_per_round`` x rounds due).
        device: where batches are normalised with ``loader.normalize: device`` (the loader then
            yields them there, as :class:`~.transforms.DeviceBatches`).
    """
    dataset = make_training_set(images, real_indices, synthetic_dirs, cfg.input,
                                uint8=cfg.loader.normalize == "device")
    weights = None
    if cfg.synthetic.class_balance and dataset.num_synthetic:
        real_labels = np.concatenate([images.labels()[np.asarray(idx, dtype=np.int64)] for idx in real_indices])
        pool = dataset.parts[len(dataset.parts) - len(synthetic_dirs):]
        synthetic_labels = np.concatenate([p.labels() for p in pool])
        weights = class_balance_weights(real_labels, synthetic_labels, len(images.class_names))
    sampler = MixedBatchSampler(
        num_real=dataset.num_real, num_synthetic=dataset.num_synthetic, batch_size=cfg.loader.batch_size,
        mixing=cfg.synthetic.mixing, synthetic_per_batch=synthetic_per_batch(cfg), seed=cfg.train.seed,
        rank=rank, world_size=world_size, drop_last=cfg.loader.drop_last, extra_real=extra_real,
        synthetic_weights=weights)
    loader = build_train_loader(dataset, sampler, cfg.loader, pin_memory=pin_memory)
    return on_device(loader, cfg.input, cfg.loader.normalize, device, training=True), sampler


def class_balance_weights(real_labels: np.ndarray, synthetic_labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Draw probabilities over the synthetic images such that the drawn class prior is the real
    images' (among the classes the pool has): ``p_real(y) / n_synthetic(y)`` per image, normalised."""
    real_prior = np.bincount(real_labels, minlength=num_classes).astype(np.float64)
    counts = np.bincount(synthetic_labels, minlength=num_classes).astype(np.float64)
    present = counts > 0
    if not (real_prior[present] > 0).any():       # the pool's classes have no real images: uniform
        return np.full(len(synthetic_labels), 1.0 / len(synthetic_labels))
    per_image = np.where(present, real_prior / np.maximum(counts, 1), 0.0)[synthetic_labels]
    return per_image / per_image.sum()


def shard_for_rank(indices: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """This rank's share of an evaluation split (strided, so shares differ by at most one)."""
    return np.asarray(indices)[rank::world_size]

