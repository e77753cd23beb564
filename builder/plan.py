"""The round's work list: which hard sample each image comes from, its seed, mode and shard.

A pure function of (hard samples, budget, seed, round, shard count, mode settings), so that any
worker, and any rerun after a crash, agrees on every image's key and inputs. As in the paper
code, the hard samples are drawn in a uniformly random order without replacement; when there
are fewer than the budget, the same permutation is cycled until the budget is filled.
"""
from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np

from actgen.shards.manifest import HardSample
from actgen.shards.samples import make_key
from actgen.shards.writer import shard_name, shard_sizes

from .schedules import Mode, draw_modes

# Salt of the selection RNG, so that it never shares a stream with draw_modes' RNG([seed, round]).
_SELECT_SALT = 0x706C616E   # "plan"
_SEED_SALT = 0x73656564     # "seed"


@dataclass(frozen=True)
class PlannedSample:
    """One image of the round.

    Attributes:
        index: position in the round, 0..budget-1 (also in the key).
        source_id: the hard sample it is rendered near (its guide image); "" for an image of
            uniform targets (no hard sample, no guide).
        label, class_name: the hard sample's true label (the image's label), or the drawn class.
        seed: its own seed (noise, VAE posterior sample, bank draw).
        mode: ``txt2img``, ``img2img`` or ``actgen``.
        adversarial: whether the adversarial term was drawn for it (used by ``actgen`` only).
        key: the sample key in the shards.
    """

    index: int
    source_id: str
    label: int
    class_name: str
    seed: int
    mode: str
    adversarial: bool
    key: str


@dataclass(frozen=True)
class PlannedShard:
    number: int
    filename: str
    samples: tuple[PlannedSample, ...]

    @property
    def keys(self) -> list[str]:
        return [s.key for s in self.samples]


@dataclass(frozen=True)
class BuildPlan:
    round: int
    seed: int
    shards: tuple[PlannedShard, ...]

    @property
    def samples(self) -> list[PlannedSample]:
        return [s for shard in self.shards for s in shard.samples]

    @property
    def num_samples(self) -> int:
        return sum(len(s.samples) for s in self.shards)

    def digest(self) -> str:
        """sha256 over every planned sample and shard name (what a resumed build must match)."""
        h = hashlib.sha256()
        for shard in self.shards:
            h.update(shard.filename.encode())
            for s in shard.samples:
                h.update(json.dumps(asdict(s), sort_keys=True).encode())
        return h.hexdigest()


def num_shards(budget: int, samples_per_shard: int, min_shards: int) -> int:
    """max(min_shards, ceil(budget / samples_per_shard)); ValueError if above the budget."""
    n = max(min_shards, math.ceil(budget / samples_per_shard))
    if n > budget:
        raise ValueError(f"output.min_shards = {min_shards}: more shards than the budget of {budget} images")
    return n


def select_sources(num_hard: int, budget: int, seed: int, round: int) -> np.ndarray:
    """Manifest positions of the round's images: a random permutation, cycled to ``budget``."""
    if num_hard < 1:
        raise ValueError("the manifest lists no hard samples; nothing to render near")
    if budget < 1:
        raise ValueError(f"budget = {budget}: expected an int >= 1")
    perm = np.random.default_rng([seed, round, _SELECT_SALT]).permutation(num_hard)
    return perm[np.arange(budget) % num_hard]


def sample_seed(seed: int, round: int, index: int) -> int:
    """Image ``index``'s seed, a 32-bit value derived from (seed, round, index)."""
    return int(np.random.SeedSequence([seed, round, index, _SEED_SALT]).generate_state(1)[0])


def uniform_labels(num_classes: int, budget: int, seed: int, round: int) -> np.ndarray:
    """Classes for ``budget`` images drawn uniformly and balanced (every class ``budget // C`` or one
    more times, in random order), independent of any hard sample: the paper's random baseline."""
    if num_classes < 1:
        raise ValueError("no class names to draw from")
    return np.random.default_rng([seed, round, _SELECT_SALT]).permutation(np.arange(budget) % num_classes)


def effective_budget(budget: int, num_hard: int, max_per_sample: Optional[int]) -> int:
    """The round's image count: ``budget``, or at most ``max_per_sample`` renders per hard sample."""
    if max_per_sample is None:
        return budget
    return max(1, min(budget, max_per_sample * num_hard))


def make_plan(hard_samples: Sequence[HardSample], budget: int, seed: int, round: int, shards: int,
              mode: Mode = "actgen", horizon: Optional[int] = None, prefix: str = "synth",
              targets: str = "hard", class_names: Sequence[str] = ()) -> BuildPlan:
    """The round's work list.

    Args:
        hard_samples: the manifest's samples, in manifest order.
        budget: images to render.
        seed: run seed.
        round: the round (keys, schedules).
        shards: number of shards; samples are dealt to them in order, sizes differing by at most 1.
        mode: ``txt2img``, ``img2img`` or ``actgen``.
        horizon: with a horizon, modes follow the §1.3 schedules (``draw_modes``); without, every
            image uses ``mode`` and every ``actgen`` image gets the adversarial term.
        prefix: shard file prefix.
        targets: ``hard``: images are rendered near the hard samples (cycled); ``uniform``: text-to-
            image only, classes drawn uniformly from ``class_names`` (the paper's random baseline).
    """
    if not 1 <= shards <= budget:
        raise ValueError(f"shards = {shards}: expected 1..budget ({budget})")
    if targets == "uniform":
        if mode != "txt2img":
            raise ValueError(f"targets 'uniform' renders text-to-image only; mode is {mode!r}")
        return _uniform_plan(budget, seed, round, shards, prefix, class_names)
    picks = select_sources(len(hard_samples), budget, seed, round)
    # 1. Modes: txt2img everywhere, the §1.3 draw, or the guided mode everywhere.
    if mode == "txt2img":
        modes = np.full(budget, "txt2img")
        adversarial = np.zeros(budget, dtype=bool)
    elif horizon is not None:
        drawn = draw_modes(budget, round, horizon, seed, guided_mode=mode)
        modes, adversarial = drawn.modes, drawn.adversarial & (drawn.modes == "actgen")
    else:
        modes = np.full(budget, mode)
        adversarial = np.full(budget, mode == "actgen")
    # 2. Samples, keyed by (round, source, index, seed).
    samples = []
    for i, pick in enumerate(picks.tolist()):
        hard = hard_samples[pick]
        s = sample_seed(seed, round, i)
        samples.append(PlannedSample(index=i, source_id=hard.id, label=hard.label, class_name=hard.class_name,
                                     seed=s, mode=str(modes[i]), adversarial=bool(adversarial[i]),
                                     key=make_key(round, hard.id, i, s)))
    return _deal(samples, shards, seed, round, prefix)


def _uniform_plan(budget: int, seed: int, round: int, shards: int, prefix: str,
                  class_names: Sequence[str]) -> BuildPlan:
    labels = uniform_labels(len(class_names), budget, seed, round)
    samples = []
    for i, y in enumerate(labels.tolist()):
        s = sample_seed(seed, round, i)
        samples.append(PlannedSample(index=i, source_id="", label=int(y), class_name=class_names[y], seed=s,
                                     mode="txt2img", adversarial=False, key=make_key(round, f"c{y}", i, s)))
    return _deal(samples, shards, seed, round, prefix)


def _deal(samples: list[PlannedSample], shards: int, seed: int, round: int, prefix: str) -> BuildPlan:
    """Shards: contiguous runs of the plan, sizes differing by at most 1."""
    out, start = [], 0
    for number, size in enumerate(shard_sizes(len(samples), shards)):
        out.append(PlannedShard(number=number, filename=shard_name(prefix, number),
                                samples=tuple(samples[start:start + size])))
        start += size
    return BuildPlan(round=round, seed=seed, shards=tuple(out))
