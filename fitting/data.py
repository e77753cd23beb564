"""The fits' inputs: a labeled data set's images as one tensor, and the class prompts."""
from __future__ import annotations

import re

import numpy as np
import torch

from actgen.shards.sources import LabeledImages


def prompt_vocabulary(template: str, class_names: list[str]) -> list[str]:
    """Lower-case words of the template and of every class name, in first-seen order."""
    text = " ".join([template.replace("{}", " ")] + list(class_names)).lower()
    return list(dict.fromkeys(re.findall(r"[a-z]+", text)))


def class_prompts(template: str, class_names: list[str]) -> list[str]:
    """``template.format(name)`` per class, in class order."""
    return [template.format(name) for name in class_names]


def load_images(data: LabeledImages, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All images ``[N, 3, size, size]`` in [-1, 1] (bicubic resize) and labels ``[N]``."""
    from PIL import Image

    arrays = np.stack([np.asarray(data.image(i).convert("RGB").resize((size, size), Image.BICUBIC))
                       for i in range(len(data))])                               # [N, S, S, 3] uint8
    images = torch.from_numpy(arrays).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return images, torch.from_numpy(np.asarray(data.labels(), dtype=np.int64))
