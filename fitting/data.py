"""The fits' inputs: the class prompts, and a labeled data set's images as tensors.

A fit from scratch holds its (tiny) data set in memory (:func:`load_images`). A LoRA fine-tune
streams it (:class:`StreamedImages`): a step decodes and resizes only the images it trains on,
so memory is O(batch) whatever the data set's size (CIFAR-10 at 512x512 in float32 would be
about 150 GB). The stream's order is a pure function of the seed and the position, so a resumed
fine-tune needs only the step it stopped at to draw what an uninterrupted one would.
"""
from __future__ import annotations

import re
from typing import Iterator, Optional

import numpy as np
import torch

from actgen.shards.sources import LabeledImages

# Purposes of the seeds mixed from a fit's seed (distinct, so the streams are independent).
_SHUFFLE, _SAMPLE = 0, 1


def prompt_vocabulary(template: str, class_names: list[str]) -> list[str]:
    """Lower-case words of the template and of every class name, in first-seen order."""
    text = " ".join([template.replace("{}", " ")] + list(class_names)).lower()
    return list(dict.fromkeys(re.findall(r"[a-z]+", text)))


def class_prompts(template: str, class_names: list[str]) -> list[str]:
    """``template.format(name)`` per class, in class order."""
    return [template.format(name) for name in class_names]


def _resized(image, size: int) -> np.ndarray:
    """One PIL image as ``[size, size, 3]`` uint8 (RGB, bicubic; the aspect ratio is not kept)."""
    from PIL import Image

    return np.array(image.convert("RGB").resize((size, size), Image.BICUBIC))   # a writable copy, for torch


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``[B, 3, S, S]`` -> float32 in [-1, 1] (the autoencoder's input range)."""
    return images.float() / 127.5 - 1.0


def load_images(data: LabeledImages, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All images ``[N, 3, size, size]`` in [-1, 1] (bicubic resize) and labels ``[N]``.

    Only for data sets that fit in memory at ``size`` (the fit from scratch's); a LoRA
    fine-tune streams instead (:class:`StreamedImages`).
    """
    arrays = np.stack([_resized(data.image(i), size) for i in range(len(data))])   # [N, S, S, 3] uint8
    images = to_unit_range(torch.from_numpy(arrays).permute(0, 3, 1, 2))
    return images, torch.from_numpy(np.asarray(data.labels(), dtype=np.int64))


def mixed_seed(seed: int, purpose: int, value: int) -> int:
    """A 64-bit seed from ``(seed, purpose, value)`` (numpy's SeedSequence: well mixed, no collisions
    between neighbouring values the way ``seed + value`` would collide across purposes)."""
    return int(np.random.SeedSequence([seed, purpose, value]).generate_state(1, np.uint64)[0])


def sample_generator(seed: int, position: int) -> torch.Generator:
    """The CPU generator of stream position ``position``: all of that sample's random draws (its
    latent's posterior noise, prompt dropout, timestep, noise) come from it, so they do not depend
    on how samples are grouped into micro-batches, nor on where a fit was resumed."""
    return torch.Generator().manual_seed(mixed_seed(seed, _SAMPLE, position))


class StreamedImages(torch.utils.data.Dataset):
    """The training stream of a labeled data set, decoded on demand.

    Item ``p`` (a stream position, 0, 1, 2, ...) is ``(image [3, S, S] uint8, label, p)`` for data
    set row ``perm_e[p % N]``, where ``e = p // N`` is the epoch and ``perm_e`` a permutation of the
    rows seeded by ``(seed, e)``: every image once per epoch, in an order that changes per epoch and
    depends on nothing but the seed. Only the labels (``[N]`` int64) and one epoch's permutation
    are held; images are decoded and resized when their position is asked for.

    Args:
        data: the data set (``image(i)``, ``labels()``); it crosses to DataLoader workers by pickling.
        size: the side images are resized to (the generator's).
        seed: the stream's seed.
    """

    def __init__(self, data: LabeledImages, size: int, seed: int):
        if len(data) == 0:
            raise ValueError(f"{data!r}: the data set has no images to fit on")
        self.data, self.size, self.seed = data, size, seed
        self.labels = np.asarray(data.labels(), dtype=np.int64)                  # [N]
        self._epoch: Optional[int] = None
        self._perm: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return len(self.labels)

    def index(self, position: int) -> int:
        """The data set row at stream position ``position``."""
        epoch, offset = divmod(int(position), len(self.labels))
        if epoch != self._epoch:     # one permutation cached: positions arrive in order
            g = torch.Generator().manual_seed(mixed_seed(self.seed, _SHUFFLE, epoch))
            self._perm, self._epoch = torch.randperm(len(self.labels), generator=g).numpy(), epoch
        return int(self._perm[offset])

    def __getitem__(self, position: int) -> tuple[torch.Tensor, int, int]:
        i = self.index(position)
        image = torch.from_numpy(_resized(self.data.image(i), self.size)).permute(2, 0, 1)   # [3, S, S] uint8
        return image, int(self.labels[i]), int(position)


class StreamBatches:
    """A DataLoader ``batch_sampler``: ``count`` consecutive micro-batches of stream positions,
    ``[start, start + size)``, ``[start + size, start + 2 size)``, ..."""

    def __init__(self, start: int, size: int, count: int):
        self.start, self.size, self.count = start, size, count

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[list[int]]:
        for k in range(self.count):
            first = self.start + k * self.size
            yield list(range(first, first + self.size))


def stream_loader(stream: StreamedImages, start: int, size: int, count: int,
                  num_workers: int = 0) -> torch.utils.data.DataLoader:
    """Micro-batches ``(images [B, 3, S, S] uint8, labels [B], positions [B])`` from position
    ``start`` on; with ``num_workers`` processes decoding ahead (2 micro-batches each, so memory
    stays O(batch)), or in this process when 0."""
    kwargs: dict = {"num_workers": num_workers}
    if num_workers > 0:
        kwargs["prefetch_factor"] = 2
    # An explicit generator: without one, creating the iterator draws a seed from torch's global
    # RNG, which would make the caller's later draws depend on whether a fit ran in between.
    return torch.utils.data.DataLoader(stream, batch_sampler=StreamBatches(start, size, count),
                                       generator=torch.Generator().manual_seed(0), **kwargs)
