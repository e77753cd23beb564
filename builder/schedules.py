"""Per-round mixing of generation modes (the method's schedules). Pure functions, no torch.

Over a horizon of R generation rounds (the paper: the first half of training, one round per
epoch), the share of plain text-to-image images falls linearly from 0.5 at round 0 to 0 at
round R-1, and the probability that a guided image also gets the adversarial classifier term
rises from 0 to 0.5. Both follow the paper code, where one image draws two independent uniforms
u1, u2: text-to-image if u1 < share, adversarial if u2 > share + 0.5.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

Mode = Literal["txt2img", "img2img", "actgen"]
"""txt2img: plain text-to-image (the random baseline); img2img: image guidance without mask or
losses; actgen: image guidance with attention mask and embedding-gradient guidance."""
MODES: tuple[str, ...] = ("txt2img", "img2img", "actgen")
BuildMode = Literal["txt2img", "img2img", "actgen", "copy"]
"""A build's mode: a rendering mode, or ``copy``: no generation, each planned image is its guide
image itself (a control that separates generation from early use of the hard samples)."""


def _progress(round: int, horizon: int) -> float:
    if horizon < 2:
        raise ValueError(f"horizon={horizon}: the schedules need at least 2 generation rounds")
    if round < 0:
        raise ValueError(f"round={round}: must be >= 0")
    return round / (horizon - 1)


def random_txt2img_share(round: int, horizon: int) -> float:
    """0.5 * max(1 - r/(R-1), 0): 0.5 at round 0, 0 from round R-1 on."""
    return 0.5 * max(1.0 - _progress(round, horizon), 0.0)


def adversarial_probability(round: int, horizon: int) -> float:
    """0.5 * min(r/(R-1), 1): 0 at round 0, 0.5 from round R-1 on."""
    return 0.5 * min(_progress(round, horizon), 1.0)


@dataclass(frozen=True)
class ModePlan:
    """Per-image modes for one round.

    Attributes:
        modes: ``[N]`` strings, ``"txt2img"`` or the guided mode.
        adversarial: ``[N]`` bools; always False for text-to-image images.
    """

    modes: np.ndarray
    adversarial: np.ndarray


def draw_modes(count: int, round: int, horizon: int, seed: int, guided_mode: Mode = "actgen") -> ModePlan:
    """Draw each image's mode from an RNG seeded by ``(seed, round)``.

    Args:
        count: number of images in the round.
        round: 0-based generation round.
        horizon: number of generation rounds R the schedules run over.
        seed: run seed; the same (seed, round, count) always gives the same plan.
        guided_mode: mode of the images that are not plain text-to-image.
    """
    if count < 0:
        raise ValueError(f"count={count}: must be >= 0")
    if guided_mode not in ("img2img", "actgen"):
        raise ValueError(f"guided_mode={guided_mode!r}: expected 'img2img' or 'actgen'")
    share = random_txt2img_share(round, horizon)
    rng = np.random.default_rng([seed, round])
    u = rng.random((count, 2))                                   # [N, (u1, u2)]
    random = u[:, 0] < share
    modes = np.where(random, "txt2img", guided_mode)
    adversarial = (u[:, 1] > share + 0.5) & ~random
    return ModePlan(modes=modes, adversarial=adversarial)
