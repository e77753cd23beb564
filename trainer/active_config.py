"""The active-generation sections of the trainer's config: rounds, hard-sample selection, and
where each round's synthetic data comes from (re-exported by :mod:`.config`, whose tree holds them).
"""
from __future__ import annotations

import string
from dataclasses import dataclass, field
from typing import Literal, Optional

from actgen.shards.config import check_value as _check

SelectionRule = Literal["misclassified", "loss", "entropy", "margin"]
SearchSplit = Literal["holdout", "train"]


@dataclass(frozen=True)
class SelectionConfig:
    """Which searched samples (training images, or the hold-out's) a round hands the builder, and
    when a round fires at all.

    The default, ``loss`` top-64, goes with the default ``rounds.search: train`` (training images
    are mostly classified right, so a round ranks them); the paper's hold-out search takes every
    mistake: ``rule: misclassified`` with ``k: null`` (the paper recipes in ``configs/`` set both).

    Attributes:
        rule: ``misclassified``: every top-1 mistake (the paper); ``loss``: the highest
            cross-entropy of the true class; ``entropy``: the highest entropy of the predictive
            distribution; ``margin``: the smallest margin, probability of the true class minus the
            highest other one. The manifest lists the selection hardest first (misclassified: by loss).
        k: how many to select; ``loss``/``entropy``/``margin`` need ``k`` or ``fraction``; for
            ``misclassified`` it caps the mistakes (the highest-loss ``k``). The default, 64, is
            the builder's default budget per round: one guide per rendered image, as measured.
        fraction: instead of ``k``: that share of the searched images (rounded down, at least one).
        drop_hardest: then drop this share of the selection, hardest first (rounded down; at least
            one sample stays): extremely hard samples tend to be label noise or outliers.
        start_epoch: a round that ends after an earlier epoch does not fire.
        min_holdout_acc: a round whose accuracy on the searched images (hold-out or training) is
            below this does not fire.

    A round that does not fire still writes its checkpoint and a manifest, with no samples and
    ``header.selection.fired: false``; the builder renders that round's budget text-to-image for
    classes drawn uniformly instead.
    """

    rule: SelectionRule = "loss"
    k: Optional[int] = 64
    fraction: Optional[float] = None
    drop_hardest: float = 0.0
    start_epoch: int = 0
    min_holdout_acc: Optional[float] = None

    def __post_init__(self) -> None:
        key = "rounds.selection"
        _check(self.k is None or self.k >= 1, f"{key}.k", self.k, "null or an int >= 1")
        _check(self.fraction is None or 0.0 < self.fraction <= 1.0, f"{key}.fraction", self.fraction,
               "null or a share in (0, 1]")
        _check(self.k is None or self.fraction is None, f"{key}.fraction", self.fraction,
               f"null when {key}.k is set (k = {self.k}); give one of the two")
        _check(self.rule == "misclassified" or self.k is not None or self.fraction is not None, f"{key}.k",
               self.k, f"an int >= 1 (or {key}.fraction) when {key}.rule is {self.rule!r}, which ranks the "
                       "whole hold-out")
        _check(0.0 <= self.drop_hardest < 1.0, f"{key}.drop_hardest", self.drop_hardest, "a share in [0, 1)")
        _check(self.start_epoch >= 0, f"{key}.start_epoch", self.start_epoch, "an int >= 0")
        _check(self.min_holdout_acc is None or 0.0 <= self.min_holdout_acc <= 1.0, f"{key}.min_holdout_acc",
               self.min_holdout_acc, "null or an accuracy in [0, 1]")


@dataclass(frozen=True)
class RoundsConfig:
    """The active schedule: when hard samples are searched and the hold-out merged back.

    Round r ends after epoch ``(r + 1) * every - 1``, for every such epoch below ``horizon``.
    At its end the hold-out is evaluated and ``rounds/<r>/`` written; its synthetic shards
    join training from the next epoch on.

    Attributes:
        enabled: write rounds at all (off: plain training; the hold-out is still split off when
            ``data.holdout_fraction > 0``).
        every: epochs per round (paper: 1).
        horizon: rounds end only at epochs below this one; null = ``int(0.5 * epochs)`` (paper).
        merge_epoch: the hold-out joins training at the start of this epoch; null =
            ``int(0.5 * epochs)`` (paper); ``epochs`` = never. Must be >= the horizon, because
            rounds evaluate the hold-out.
        selection: which hold-out samples a round selects, and when rounds start to fire.
        guide_pool_per_class: training images per class (drawn at random each round, never from
            the hold-out) listed in the manifest's ``header.guide_pool``, which a builder with a
            class-balanced allocation may use as guides where a class has fewer hard samples than
            its share (``allocation.fill: train``); 0 lists none.
        search: where a round looks for hard samples: ``train`` (the default: the training
            images themselves, scored by the round's classifier without augmentation, so that
            nothing is withheld from training; ``data.holdout_fraction`` defaults to 0) or
            ``holdout`` (the paper: images kept out of training until ``merge_epoch``; set
            ``data.holdout_fraction`` > 0 and, for the paper's rule, ``selection.rule:
            misclassified`` with ``selection.k: null``). Training images are mostly classified
            right, so ``train`` is meant with a ranking rule (the default ``loss`` top-``k``).
            It costs one evaluation pass over the training images per round. The default follows
            the accuracy study (docs/study.md, PLAN-2): searching the training images was the
            one variant above training on every image from the start; searching a hold-out was
            level with it.
    """

    enabled: bool = True
    every: int = 1
    horizon: Optional[int] = None
    merge_epoch: Optional[int] = None
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    guide_pool_per_class: int = 16
    search: SearchSplit = "train"

    def resolve(self, epochs: int) -> tuple[int, int]:
        """``(horizon, merge_epoch)`` for a run of ``epochs``, nulls at the paper's ``int(0.5 * epochs)``."""
        half = int(0.5 * epochs)
        return (self.horizon if self.horizon is not None else half,
                self.merge_epoch if self.merge_epoch is not None else half)

    def __post_init__(self) -> None:
        _check(self.every >= 1, "rounds.every", self.every, "an int >= 1")
        _check(self.horizon is None or self.horizon >= 1, "rounds.horizon", self.horizon, "null or an int >= 1")
        _check(self.merge_epoch is None or self.merge_epoch >= 0, "rounds.merge_epoch", self.merge_epoch,
               "null or an int >= 0")
        _check(self.guide_pool_per_class >= 0, "rounds.guide_pool_per_class", self.guide_pool_per_class,
               "an int >= 0")


@dataclass(frozen=True)
class SyntheticConfig:
    """Where each round's synthetic shards come from and how they are mixed in.

    Attributes:
        source: ``shards`` reads data sets written by ``actgen-build`` (or anything else using
            ``actgen.shards.writer``) running as its own job; ``inline`` runs ``actgen-build``
            itself at the end of every round, as a subprocess on this machine, so that one
            command runs the whole active loop; ``none`` trains on real images only.
        pattern: location of round r's data set: a local path, an http(s) URL or an object-store
            URL (``s3://``, ``gs://``, ``hf://``), with ``{run_dir}`` and ``{round}`` placeholders (format specs allowed: ``{round:04d}``).
        on_missing: when round r's data set is not finished (no readable ``index.json``; in a
            round folder, not yet built from the manifest now beside it; over http, also a server
            that cannot be reached or stalls) at the start of the epoch that should use it:
            ``wait`` polls every ``poll_s`` seconds up to ``timeout_s`` and then fails; ``skip``
            goes on without it and looks again at every later epoch start; ``error`` fails at once.
        timeout_s, poll_s: the ``wait`` policy's limits. ``timeout_s`` is wall clock for the whole
            round, http downloads included; under ``skip`` and ``error`` downloads have the
            per-file limits of ``actgen.shards.reader`` only.
        mixing: ``uniform`` samples real and synthetic images alike from their union (paper);
            ``fraction`` gives every batch exactly ``round(fraction * batch_size)`` synthetic
            images once the pool is non-empty, an epoch then being one pass over the real images.
        fraction: the synthetic share for ``mixing: fraction``.
        build_config: ``inline`` only: the ``actgen-build`` YAML config (null = its defaults).
        build_overrides: ``inline`` only: extra ``--set key=value`` overrides for it.
        build_command: ``inline`` only: the builder's console script, looked up beside this
            Python interpreter first, then on PATH.
        class_balance: draw the pool's images with weights that make the synthetic images' class
            prior follow the real training images' (each class's share of the draws is its share
            of the real images, whatever the round rendered of it; with replacement, as many
            draws per epoch as the pool holds). Off: every pool image is drawn once per epoch.
        placebo_per_round: a control for studies, with ``source: none``: every round that would
            have joined the pool by an epoch adds this many *real* images (drawn again from a
            fresh permutation) to the epoch, so a real-only run takes the optimizer steps a
            synthetic run with that budget per round takes (more steps, no new data).
        static: finished data sets received from elsewhere (a merged set, another team's;
            folders, http(s) or object-store URLs), trained on beside the rounds' or alone (with
            ``source: none``). Each is fetched into the run and verified when it joins; its
            classes are matched to the run's by name (another order, or a subset, is fine; a
            class the run lacks is an error).
        static_epoch: the first epoch that trains on the ``static`` data sets.
    """

    source: Literal["shards", "inline", "none"] = "shards"
    pattern: str = "{run_dir}/rounds/{round}/shards"
    on_missing: Literal["wait", "skip", "error"] = "skip"
    timeout_s: float = 3600.0
    poll_s: float = 10.0
    mixing: Literal["uniform", "fraction"] = "uniform"
    fraction: float = 0.25
    build_config: Optional[str] = None
    build_overrides: list[str] = field(default_factory=list)
    build_command: str = "actgen-build"
    class_balance: bool = False
    placebo_per_round: int = 0
    static: list[str] = field(default_factory=list)
    static_epoch: int = 0

    def __post_init__(self) -> None:
        _check_pattern(self.pattern)
        _check(all(isinstance(s, str) and s for s in self.static), "synthetic.static", self.static,
               "a list of data-set locations (folders, http(s) or object-store URLs)")
        _check(len(set(self.static)) == len(self.static), "synthetic.static", self.static, "no location twice")
        _check(self.static_epoch >= 0, "synthetic.static_epoch", self.static_epoch, "an int >= 0")
        _check(self.placebo_per_round >= 0, "synthetic.placebo_per_round", self.placebo_per_round, "an int >= 0")
        _check(self.placebo_per_round == 0 or self.source == "none", "synthetic.placebo_per_round",
               self.placebo_per_round, "0 unless synthetic.source is 'none' (a real-only control)")
        _check(self.source != "inline" or "://" not in self.pattern, "synthetic.pattern", self.pattern,
               "a local path when synthetic.source is 'inline' (the builder writes there)")
        _check(all("=" in o for o in self.build_overrides), "synthetic.build_overrides", self.build_overrides,
               "a list of key=value strings")
        _check(self.timeout_s >= 0, "synthetic.timeout_s", self.timeout_s, "a number >= 0")
        _check(self.poll_s > 0, "synthetic.poll_s", self.poll_s, "a number > 0")
        _check(0.0 < self.fraction < 1.0, "synthetic.fraction", self.fraction, "a number in (0, 1)")


def _check_pattern(pattern: str) -> None:
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(pattern) if name is not None}
    except ValueError as e:
        raise ValueError(f"config key 'synthetic.pattern' = {pattern!r}: not a valid pattern ({e})") from None
    _check(names <= {"run_dir", "round"}, "synthetic.pattern", pattern,
           "only the placeholders {run_dir} and {round}")
    _check("round" in names, "synthetic.pattern", pattern, "a {round} placeholder (one data set per round)")
    try:
        pattern.format(run_dir="runs/x", round=0)
    except (ValueError, KeyError, IndexError) as e:
        raise ValueError(f"config key 'synthetic.pattern' = {pattern!r}: not a valid pattern ({e})") from None


@dataclass(frozen=True)
class CheckpointConfig:
    """What a run keeps of its rounds' classifier bundles (``rounds/<r>/checkpoint/``).

    Attributes:
        keep_rounds: keep the bundles of the last this many rounds whose synthetic data set has
            joined the pool, and of every round whose data set has not (a builder may still need
            it); older bundles are removed, their manifests kept. null: keep every bundle (the
            paper's CIFAR recipe writes 150 of them, about 14 GB for a ResNet-50).
    """

    keep_rounds: Optional[int] = 3

    def __post_init__(self) -> None:
        _check(self.keep_rounds is None or self.keep_rounds >= 1, "checkpoint.keep_rounds", self.keep_rounds,
               "null or an int >= 1")
