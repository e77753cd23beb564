"""The round's work list: which hard sample each image comes from, its seed, mode and shard.

A pure function of (hard samples, budget, seed, round, shard count, allocation, mode settings),
so that any worker, and any rerun after a crash, agrees on every image's key and inputs.

Allocation (``BuildConfig.allocation``) decides what each image is rendered for:

- ``paper``: as in the paper code, the hard samples are drawn in a uniformly random order
  without replacement, one render each; when there are fewer than the budget, the same
  permutation is cycled until the budget is filled.
- ``balanced``: the budget split evenly over the classes; within a class its hard samples in the
  manifest's order (hardest first), at most ``max_per_sample`` renders each, the rest of the
  class's share rendered without a guide or guided by training images of the class.
- ``mixed``: a share of the budget text-to-image for classes drawn uniformly, the rest ``paper``.
"""
from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import NamedTuple, Optional

import numpy as np

from actgen.shards.manifest import HardSample
from actgen.shards.samples import make_key
from actgen.shards.writer import shard_name, shard_sizes

from .schedules import BuildMode, draw_modes

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
        mode: ``txt2img``, ``img2img``, ``actgen`` or ``copy`` (the guide image itself).
        adversarial: whether the adversarial term was drawn for it (used by ``actgen`` only).
        key: the sample key in the shards.
        role: ``hard`` (rendered for a hard sample), ``fill`` (a balanced class share beyond its
            hard samples: guided by a training image of the class, or none) or ``random`` (a
            class drawn uniformly, text-to-image).
    """

    index: int
    source_id: str
    label: int
    class_name: str
    seed: int
    mode: str
    adversarial: bool
    key: str
    role: str = "hard"


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
    more times, in random order), independent of any hard sample: the paper's random baseline.

    The ``budget % C`` classes that get one more image are drawn at random each round: taking the
    first classes every time (``arange(budget) % C``) gave classes 0-5 twice the images of 6-9
    over a run of 16-image rounds on 10 classes.
    """
    if num_classes < 1:
        raise ValueError("no class names to draw from")
    rng = np.random.default_rng([seed, round, _SELECT_SALT])
    extra = rng.permutation(num_classes)[:budget % num_classes]
    labels = np.concatenate([np.repeat(np.arange(num_classes), budget // num_classes), extra])
    return rng.permutation(labels)


def effective_budget(budget: int, num_hard: int, max_per_sample: Optional[int]) -> int:
    """The round's image count: ``budget``, or at most ``max_per_sample`` renders per hard sample."""
    if max_per_sample is None:
        return budget
    return max(1, min(budget, max_per_sample * num_hard))


class Target(NamedTuple):
    """What one image is rendered for: a guide image (``source_id``, "" for none) and a class."""

    source_id: str
    label: int
    class_name: str
    role: str            # "hard", "fill" or "random"


def allocate(hard_samples: Sequence[HardSample], budget: int, seed: int, round: int, policy: str = "paper",
             class_names: Sequence[str] = (), max_per_sample: Optional[int] = None, fill: str = "txt2img",
             random_fraction: float = 0.5, guide_pool: Sequence[tuple[str, int]] = ()) -> list[Target]:
    """The round's ``budget`` targets under an allocation policy (see the module docstring).

    Args:
        hard_samples: the manifest's samples, hardest first.
        policy: ``paper``, ``balanced`` or ``mixed``.
        class_names: every class, in label order (``balanced``, ``mixed``).
        max_per_sample: ``balanced``: renders per hard sample within its class's share (None = 1).
        fill: ``balanced``: ``txt2img`` (no guide) or ``train`` (guided by ``guide_pool`` images).
        random_fraction: ``mixed``: the class-uniform text-to-image share.
        guide_pool: ``(sample id, label)`` of training images a ``train`` fill may use as guides.
    """
    if budget < 1:
        raise ValueError(f"budget = {budget}: expected an int >= 1")

    def hard(h: HardSample) -> Target:
        return Target(h.id, h.label, h.class_name, "hard")

    if policy == "paper":
        return [hard(hard_samples[p]) for p in select_sources(len(hard_samples), budget, seed, round).tolist()]
    if policy == "mixed":
        n_random = round_half_up(random_fraction * budget)
        randoms = [Target("", int(y), class_names[y], "random")
                   for y in uniform_labels(len(class_names), n_random, seed, round).tolist()] if n_random else []
        active = ([hard(hard_samples[p]) for p in select_sources(len(hard_samples), budget - n_random, seed,
                                                                  round).tolist()] if budget > n_random else [])
        return _shuffled(active + randoms, seed, round)
    if policy == "balanced":
        return _balanced(hard_samples, budget, seed, round, class_names, max_per_sample or 1, fill, guide_pool)
    raise ValueError(f"allocation policy {policy!r}: expected 'paper', 'balanced' or 'mixed'")


def round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def class_shares(num_classes: int, budget: int, seed: int, round: int) -> np.ndarray:
    """``budget // C`` images per class, one more for ``budget % C`` classes drawn at random."""
    shares = np.full(num_classes, budget // num_classes)
    extra = np.random.default_rng([seed, round, _SELECT_SALT, 1]).permutation(num_classes)[:budget % num_classes]
    shares[extra] += 1
    return shares


def _balanced(hard_samples: Sequence[HardSample], budget: int, seed: int, round: int, class_names: Sequence[str],
              per_sample: int, fill: str, guide_pool: Sequence[tuple[str, int]]) -> list[Target]:
    if not class_names:
        raise ValueError("allocation 'balanced' needs the class names")
    rng = np.random.default_rng([seed, round, _SELECT_SALT, 2])
    targets: list[Target] = []
    for y, share in enumerate(class_shares(len(class_names), budget, seed, round).tolist()):
        mine = [h for h in hard_samples if h.label == y]            # manifest order: hardest first
        # Round-robin over the class's hard samples, hardest first, at most per_sample each.
        n_hard = min(share, per_sample * len(mine))
        targets += [Target(mine[k % len(mine)].id, y, class_names[y], "hard") for k in range(n_hard)]
        rest = share - n_hard
        pool = [sid for sid, label in guide_pool if label == y]
        if rest and fill == "train" and pool:
            order = rng.permutation(len(pool))
            targets += [Target(pool[order[k % len(pool)]], y, class_names[y], "fill") for k in range(rest)]
        else:
            targets += [Target("", y, class_names[y], "fill")] * rest
    return _shuffled(targets, seed, round)


def _shuffled(targets: list[Target], seed: int, round: int) -> list[Target]:
    """A seeded random order, so that shards and the per-round mode draw mix classes and roles."""
    order = np.random.default_rng([seed, round, _SELECT_SALT, 3]).permutation(len(targets))
    return [targets[i] for i in order.tolist()]


def make_plan(hard_samples: Sequence[HardSample], budget: int, seed: int, round: int, shards: int,
              mode: BuildMode = "actgen", horizon: Optional[int] = None, prefix: str = "synth",
              targets: str = "hard", class_names: Sequence[str] = (), allocation: str = "paper",
              max_per_sample: Optional[int] = None, fill: str = "txt2img", random_fraction: float = 0.5,
              guide_pool: Sequence[tuple[str, int]] = ()) -> BuildPlan:
    """The round's work list.

    Args:
        hard_samples: the manifest's samples, in manifest order.
        budget: images to render.
        seed: run seed.
        round: the round (keys, schedules).
        shards: number of shards; samples are dealt to them in order, sizes differing by at most 1.
        mode: ``txt2img``, ``img2img``, ``actgen`` or ``copy`` (every image its guide, unrendered).
        horizon: with a horizon, modes follow the per-round schedules (``draw_modes``); without, every
            image uses ``mode`` and every ``actgen`` image gets the adversarial term.
        prefix: shard file prefix.
        targets: ``hard``: images are rendered for the hard samples as ``allocation`` says;
            ``uniform``: text-to-image only, classes drawn uniformly from ``class_names`` (the
            paper's random baseline).
        allocation, max_per_sample, fill, random_fraction, guide_pool: see :func:`allocate`.
            An image without a guide (a ``random`` one, a ``txt2img`` fill) is always text-to-image.
    """
    if not 1 <= shards <= budget:
        raise ValueError(f"shards = {shards}: expected 1..budget ({budget})")
    if targets == "uniform":
        if mode != "txt2img":
            raise ValueError(f"targets 'uniform' renders text-to-image only; mode is {mode!r}")
        return _uniform_plan(budget, seed, round, shards, prefix, class_names)
    chosen = allocate(hard_samples, budget, seed, round, allocation, class_names, max_per_sample, fill,
                      random_fraction, guide_pool)
    # 1. Modes: txt2img everywhere, the per-round draw, or the guided mode (or copy) everywhere.
    if mode == "copy":
        unguided = next((t for t in chosen if not t.source_id), None)
        if unguided is not None:
            raise ValueError(f"mode 'copy': an image of class {unguided.class_name!r} ({unguided.role}) has no guide "
                             "image to copy (allocation.fill 'txt2img', or no guide-pool image of the class)")
        modes = np.full(budget, "copy")
        adversarial = np.zeros(budget, dtype=bool)
    elif mode == "txt2img":
        modes = np.full(budget, "txt2img")
        adversarial = np.zeros(budget, dtype=bool)
    elif horizon is not None:
        drawn = draw_modes(budget, round, horizon, seed, guided_mode=mode)
        modes, adversarial = drawn.modes, drawn.adversarial & (drawn.modes == "actgen")
    else:
        modes = np.full(budget, mode)
        adversarial = np.full(budget, mode == "actgen")
    # 2. Samples, keyed by (round, source or class, index, seed).
    samples = []
    for i, target in enumerate(chosen):
        s = sample_seed(seed, round, i)
        guided = bool(target.source_id)
        samples.append(PlannedSample(
            index=i, source_id=target.source_id, label=target.label, class_name=target.class_name, seed=s,
            mode=str(modes[i]) if guided else "txt2img", adversarial=bool(adversarial[i]) and guided,
            key=make_key(round, target.source_id if guided else f"c{target.label}", i, s), role=target.role))
    return _deal(samples, shards, seed, round, prefix)


def plan_stats(plan: BuildPlan, class_names: Sequence[str]) -> dict:
    """What a round's images are spread over: images per class, per role and per mode, the
    number of distinct guides, and renders per guide (max, mean). Recorded in ``build.json`` and
    the index, so that a data set says how concentrated it is."""
    per_class = {name: 0 for name in class_names}
    roles: dict[str, int] = {}
    modes: dict[str, int] = {}
    per_guide: dict[str, int] = {}
    for s in plan.samples:
        per_class[s.class_name] = per_class.get(s.class_name, 0) + 1
        roles[s.role] = roles.get(s.role, 0) + 1
        modes[s.mode] = modes.get(s.mode, 0) + 1
        if s.source_id and s.mode != "txt2img":
            per_guide[s.source_id] = per_guide.get(s.source_id, 0) + 1
    counts = list(per_guide.values())
    return {"images": plan.num_samples, "per_class": per_class, "roles": roles, "modes": modes,
            "distinct_guides": len(counts), "renders_per_guide_max": max(counts, default=0),
            "renders_per_guide_mean": round(sum(counts) / len(counts), 3) if counts else 0.0}


def _uniform_plan(budget: int, seed: int, round: int, shards: int, prefix: str,
                  class_names: Sequence[str]) -> BuildPlan:
    labels = uniform_labels(len(class_names), budget, seed, round)
    samples = []
    for i, y in enumerate(labels.tolist()):
        s = sample_seed(seed, round, i)
        samples.append(PlannedSample(index=i, source_id="", label=int(y), class_name=class_names[y], seed=s,
                                     mode="txt2img", adversarial=False, key=make_key(round, f"c{y}", i, s),
                                     role="random"))
    return _deal(samples, shards, seed, round, prefix)


def _deal(samples: list[PlannedSample], shards: int, seed: int, round: int, prefix: str) -> BuildPlan:
    """Shards: contiguous runs of the plan, sizes differing by at most 1."""
    out, start = [], 0
    for number, size in enumerate(shard_sizes(len(samples), shards)):
        out.append(PlannedShard(number=number, filename=shard_name(prefix, number),
                                samples=tuple(samples[start:start + size])))
        start += size
    return BuildPlan(round=round, seed=seed, shards=tuple(out))
