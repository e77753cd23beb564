"""What happens to an image between its decoded pixels and the model: the training and evaluation
transforms (run in the loader's workers), and, with ``loader.normalize: device``, the last step
on the training device.

With ``loader.normalize: workers`` (the default) the workers hand over normalised float32
tensors. With ``device`` they stop at uint8 (``timm``'s prefetcher layout: a quarter of the bytes
through the workers' queues and pinned memory, and no float arithmetic on the CPU), and
:class:`DeviceBatches` converts, normalises and randomly erases each batch on the device, as timm's
``PrefetchLoader`` does. The two give the same images up to float rounding, but not the same
random erasing (drawn per batch on the device instead of per image in a worker).
"""
from __future__ import annotations

from typing import Callable, Iterator, Optional, Sequence

import torch

from .config import InputConfig


def build_train_transform(cfg: InputConfig, uint8: bool = False) -> Callable:
    """PIL RGB image of any size -> normalised float tensor (3, S, S), with augmentation; with
    ``uint8`` a uint8 tensor, not normalised and not erased (:class:`DeviceBatches` does both)."""
    from timm.data import create_transform
    from timm.data.random_erasing import RandomErasing
    from torchvision import transforms as T

    size = cfg.image_size
    if cfg.crop == "random_resized":
        return create_transform(
            input_size=size, is_training=True, scale=tuple(cfg.scale), ratio=tuple(cfg.ratio), hflip=cfg.hflip,
            color_jitter=cfg.color_jitter if cfg.color_jitter > 0 else None, auto_augment=cfg.auto_augment,
            interpolation=cfg.interpolation, mean=tuple(cfg.mean), std=tuple(cfg.std), re_prob=cfg.re_prob,
            re_mode=cfg.re_mode, use_prefetcher=uint8)
    steps = [T.Resize((size, size), interpolation=_interpolation(cfg.interpolation))]
    if cfg.crop == "pad" and cfg.pad > 0:
        steps.append(T.RandomCrop(size, padding=cfg.pad))
    if cfg.hflip > 0:
        steps.append(T.RandomHorizontalFlip(cfg.hflip))
    if uint8:
        return T.Compose([*steps, T.PILToTensor()])
    steps += [T.ToTensor(), T.Normalize(mean=tuple(cfg.mean), std=tuple(cfg.std))]
    if cfg.re_prob > 0:
        steps.append(RandomErasing(cfg.re_prob, mode=cfg.re_mode, device="cpu"))
    return T.Compose(steps)


def build_eval_transform(cfg: InputConfig, uint8: bool = False) -> Callable:
    """PIL RGB image -> normalised tensor (3, S, S): resize (and centre crop) only; with ``uint8``
    a uint8 tensor, not normalised."""
    from timm.data import create_transform

    return create_transform(input_size=cfg.image_size, is_training=False, interpolation=cfg.interpolation,
                            mean=tuple(cfg.mean), std=tuple(cfg.std), crop_pct=cfg.eval_crop_pct,
                            use_prefetcher=uint8)


def _interpolation(name: str):
    from torchvision.transforms import InterpolationMode

    return {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC,
            "nearest": InterpolationMode.NEAREST}[name]


class DeviceBatches:
    """A loader whose batches' first element (uint8 images, (B, 3, S, S)) arrives on ``device`` as
    normalised float32, randomly erased when ``training`` and ``cfg.re_prob`` > 0 (timm's
    ``RandomErasing`` on the batch, drawing from this process's RNGs, which a checkpoint saves).
    The other elements (labels, positions) pass unchanged; ``len``, ``sampler`` and the rest are
    the wrapped loader's."""

    def __init__(self, loader, cfg: InputConfig, device: torch.device, training: bool):
        self.loader, self.device = loader, torch.device(device)
        # The uint8 scale folded into the constants: one subtract and one divide per element.
        self.mean = torch.tensor([255.0 * m for m in cfg.mean], device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor([255.0 * s for s in cfg.std], device=self.device).view(1, -1, 1, 1)
        self.erase = None
        if training and cfg.re_prob > 0:
            from timm.data.random_erasing import RandomErasing

            self.erase = RandomErasing(cfg.re_prob, mode=cfg.re_mode, device=self.device)

    def __iter__(self) -> Iterator[Sequence]:
        for batch in self.loader:
            yield (self.normalize(batch[0]), *batch[1:])

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8:
            raise TypeError(f"loader.normalize=device expects uint8 images from the workers, got {images.dtype}")
        x = images.to(self.device, non_blocking=True).float().sub_(self.mean).div_(self.std)
        return self.erase(x) if self.erase is not None else x

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str):
        return getattr(self.loader, name)


def on_device(loader, cfg_input: InputConfig, normalize: str, device: Optional[torch.device], training: bool):
    """``loader`` as the loop sees it: itself with ``normalize: workers``, else :class:`DeviceBatches`."""
    if normalize == "workers":
        return loader
    return DeviceBatches(loader, cfg_input, device if device is not None else torch.device("cpu"), training)
