"""The batch transform: columns in (label, seed, mode, guide...), rendered images out.

:class:`GuidedRenderer` follows Ray's ``map_batches`` convention (heavy set-up in ``__init__``, one
batch per call) and wraps one :class:`~.sampler.GuidedSampler` and its memory bank; a
:class:`~.render.ShardWriter` calls it for each batch of a shard, and a test can call it directly.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .bank import MemoryBank
from .config import GuidanceConfig
from .generator import Generator
from .sampler import GuidanceClassifier, GuidedSampler


class GuidedRenderer:
    """Batch transform for Ray ``map_batches``: heavy setup here, one rendered batch per call.

    Args:
        generator_factory: builds the generator in the worker (e.g. a ``functools.partial`` of
            ``DiffusersGenerator.from_pretrained``), so only the recipe is pickled.
        class_names: names in label order.
        config: guidance settings.
        classifier_factory: builds the :class:`GuidanceClassifier`; None if no sample is adversarial.
        prompt_template: ``str.format`` template with one ``{}`` for the prompt name.
        prompt_names: the prompt name of each class in label order (may repeat); None: the class
            names. The attention mask locates the prompt name's tokens.

    Input columns: ``label`` (int), ``seed`` (int), ``mode`` (str), optional ``adversarial``
    (bool), and ``guide`` (uint8 ``[B, H, W, 3]``, or an object array of HWC uint8 arrays of any
    size; bilinearly resized to the generator's size) unless every row is txt2img. Output: every
    input column except ``guide``, plus ``image`` (uint8 ``[B, S, S, 3]``, S = generator size)
    and ``prompt`` (str).
    """

    def __init__(self, generator_factory: Callable[[], Generator], class_names: Sequence[str],
                 config: GuidanceConfig, classifier_factory: Callable[[], GuidanceClassifier] | None = None,
                 prompt_template: str = "a photo of {}", prompt_names: Sequence[str] | None = None):
        if prompt_template.count("{}") != 1:
            raise ValueError(f"prompt_template={prompt_template!r}: needs exactly one '{{}}'")
        if prompt_names is not None and len(prompt_names) != len(class_names):
            raise ValueError(f"prompt_names has {len(prompt_names)} names for {len(class_names)} classes")
        self.class_names = list(class_names)
        self.prompt_names = list(prompt_names) if prompt_names is not None else list(class_names)
        self.prompt_template = prompt_template
        self.generator = generator_factory()
        classifier = classifier_factory() if classifier_factory is not None else None
        self.bank = MemoryBank(config.bank_capacity, config.bank_sample_size, config.bank_total_capacity)
        self.sampler = GuidedSampler(self.generator, config, classifier, self.bank)

    def reset_bank(self) -> None:
        """Start over with an empty memory bank (e.g. one bank per shard, for determinism)."""
        self.bank = MemoryBank(self.sampler.config.bank_capacity, self.sampler.config.bank_sample_size,
                               self.sampler.config.bank_total_capacity)
        self.sampler.bank = self.bank

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # 1. Columns.
        for col in ("label", "seed", "mode"):
            if col not in batch:
                raise ValueError(f"batch has no column {col!r} (columns: {sorted(batch)})")
        labels = [int(y) for y in batch["label"]]
        for y in labels:
            if not 0 <= y < len(self.class_names):
                raise ValueError(f"label {y} is outside the {len(self.class_names)} class names")
        modes = [str(m) for m in batch["mode"]]
        names = [self.prompt_names[y] for y in labels]
        prompts = [self.prompt_template.format(n) for n in names]
        adversarial = [bool(a) for a in batch["adversarial"]] if "adversarial" in batch else None

        # 2. Guides: uint8 HWC -> [-1, 1] CHW at the generator's size (bilinear, as the paper).
        guides = None
        if "guide" in batch:
            guides = _guides_to_tensor(batch["guide"], self.generator.image_size)

        # 3. Render.
        out = self.sampler.sample(prompts, names, labels, [int(s) for s in batch["seed"]], modes,
                                  adversarial=adversarial, guides=guides)

        # 4. Images -> uint8 NHWC.
        images = ((out.images / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
        result = {k: v for k, v in batch.items() if k != "guide"}
        result["image"] = images.permute(0, 2, 3, 1).cpu().numpy()
        result["prompt"] = np.asarray(prompts)
        return result


def _guides_to_tensor(column: np.ndarray, size: int) -> torch.Tensor:
    out = []
    for i, img in enumerate(column):
        a = np.asarray(img)
        if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
            raise ValueError(f"guide[{i}]: expected uint8 [H, W, 3], got {a.dtype} {a.shape}")
        t = torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None].float() / 127.5 - 1.0
        out.append(F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False))
    return torch.cat(out)
