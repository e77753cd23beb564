"""``actgen-build``'s configuration: a frozen dataclass tree loaded from YAML, overridable by dotlist.

OmegaConf's structured configs reject unknown keys and mistyped values, naming the full key;
ranges and cross-field rules are checked in ``__post_init__`` with a ``ValueError`` naming the
key and the value. Derived values (the round, the shard count, the data source) are computed by
:mod:`actgen.builder.inputs` and never written back onto the config.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Mapping, Optional, Sequence

from actgen.shards.config import check_value as _check, load_structured, to_dict, to_yaml
from actgen.shards.sources import DataSource
from actgen.shards.card import LICENSE_ID

from .generator_config import (  # noqa: F401  (the generator sections, re-exported)
    COMPONENTS, MAX_BANK, MAX_BATCH, MAX_BUDGET, MAX_CONTACT_SHEET, MAX_IMAGE_SIDE, MAX_PER_SHARD, MAX_STEPS,
    SD_LATENT_SIZE, SDXL_COMPONENTS, SDXL_WEIGHTS, TINY, WEIGHTS, Family, GeneratorConfig, GuidanceConfig,
    check_components, directory_family, unet_family)
from .schedules import BuildMode

@dataclass(frozen=True)
class ScheduleConfig:
    """The per-round mixing of generation modes (the method's schedules).

    Attributes:
        enabled: draw each image's mode: plain text-to-image with a share falling from 0.5 at round
            0 to 0 at round ``horizon - 1``, the adversarial term with a probability rising from 0
            to 0.5. Off: every image uses ``mode`` and, for ``actgen``, every image the adversarial term.
        horizon: number of generation rounds R (the paper: half the epochs, e.g. 150 of 300);
            null = the manifest's ``header.num_rounds`` (what the trainer's schedule has).
    """

    enabled: bool = False
    horizon: Optional[int] = None

    def __post_init__(self) -> None:
        if self.enabled:
            _check(self.horizon is None or self.horizon >= 2, "schedule.horizon", self.horizon,
                   "null (the manifest's) or an int >= 2 (the number of generation rounds) when schedule.enabled")


@dataclass(frozen=True)
class AllocationConfig:
    """How a round's budget is spread over its hard samples and classes (``targets: hard``).

    Attributes:
        policy: ``paper``: the official code's rule: a random subset of the round's hard samples,
            one render each, the same random order cycled only when there are fewer hard
            samples than the budget. ``balanced``: the budget split evenly over the classes
            (``budget // C`` each, the remainder to classes drawn at random); within a class its
            hard samples in the manifest's order (hardest first), at most
            ``max_renders_per_sample`` renders each (1 when null), and the rest of the class's
            share filled as ``fill`` says. ``mixed``: ``random_fraction`` of the budget
            text-to-image for classes drawn uniformly, the rest by the ``paper`` rule.
        fill: ``balanced`` only, for the share of a class its hard samples do not use:
            ``txt2img`` renders it from the class prompt without a guide; ``train`` guides it by
            training images of the class, drawn at random from the manifest's
            ``header.guide_pool`` (a manifest without one falls back to ``txt2img``, logged).
        random_fraction: ``mixed`` only: the class-uniform text-to-image share of the budget.

    The default is ``balanced``, by the accuracy study's rule (docs/study.md): ``paper`` fell
    significantly below random generation when a round finds few mistakes, ``balanced`` did not
    in any regime measured.
    """

    policy: Literal["paper", "balanced", "mixed"] = "balanced"
    fill: Literal["txt2img", "train"] = "txt2img"
    random_fraction: float = 0.5

    def __post_init__(self) -> None:
        _check(self.policy in ("paper", "balanced", "mixed"), "allocation.policy", self.policy,
               "'paper', 'balanced' or 'mixed'")
        _check(self.fill in ("txt2img", "train"), "allocation.fill", self.fill, "'txt2img' or 'train'")
        _check(0.0 <= self.random_fraction <= 1.0, "allocation.random_fraction", self.random_fraction,
               "a share in [0, 1]")


@dataclass(frozen=True)
class OutputConfig:
    """Where and how the shard data set is written.

    Attributes:
        path: the data-set directory (the trainer reads ``<run_dir>/rounds/<r>/shards``).
        resize: stored image size: ``none`` keeps the rendered size; ``classifier`` resizes to the
            checkpoint's input size; ``fixed`` to ``size`` x ``size`` (the paper stores 32 for
            CIFAR, 256 for ImageNet).
        size: side for ``resize: fixed``.
        resample: PIL filter for resizing (the paper uses PIL's default, bicubic).
        image_format: image member of each sample.
        prefix: shard names ``<prefix>-000000.tar``.
        samples_per_shard: at most this many images per shard.
        min_shards: at least this many shards (reader ranks x loader workers).
        overwrite: replace a finished or foreign data set at ``path``; without it a finished data
            set built with the same settings is left alone and an unfinished one is resumed.
        contact_sheet: guide/render pairs on ``contact_sheet.png`` (0: none).
        name: data-set name in the index and dataset card.
        license: the data set's licence id on its card (a Hub licence id, e.g. ``cc-by-4.0``);
            null: the generator's (``generator.license``), else ``other``.
        source_terms: the terms of the source data the renders were guided by (free text, e.g.
            ``CIFAR-10: research use``), recorded in the index and card.
        publish: an object-store URL (``s3://bucket/sets/round-{round}``; ``{round}`` is the
            only placeholder) the finished data set is uploaded to, files first and
            ``index.json`` last (``actgen.shards.publish``); null: it stays in ``path``.
    """

    path: str = ""
    resize: Literal["none", "classifier", "fixed"] = "none"
    size: Optional[int] = None
    resample: Literal["bicubic", "bilinear", "lanczos", "nearest"] = "bicubic"
    image_format: Literal["png", "jpg", "webp"] = "png"
    prefix: str = "synth"
    samples_per_shard: int = 256
    min_shards: int = 1
    overwrite: bool = False
    contact_sheet: int = 16
    name: str = "actgen-synthetic"
    license: Optional[str] = None
    source_terms: Optional[str] = None
    publish: Optional[str] = None

    def __post_init__(self) -> None:
        if self.resize == "fixed":
            _check(self.size is not None and self.size >= 1, "output.size", self.size,
                   "an int >= 1 with output.resize=fixed")
        else:
            _check(self.size is None, "output.size", self.size, "null unless output.resize=fixed")
        _check(re.fullmatch(r"[A-Za-z0-9_-]+", self.prefix) is not None, "output.prefix", self.prefix,
               "letters, digits, '_' and '-' only")
        _check(self.publish is None or (re.match(r"^[a-z][a-z0-9+.-]*://", self.publish) is not None
                                        and not self.publish.startswith(("http://", "https://", "file://"))),
               "output.publish", self.publish, "an object-store URL such as s3://bucket/sets/round-{round}")
        _check(self.license is None or re.fullmatch(LICENSE_ID, self.license) is not None, "output.license",
               self.license, "a Hub licence id (lower case letters, digits, '.', '+', '-'), e.g. cc-by-4.0")
        _check(1 <= self.samples_per_shard <= MAX_PER_SHARD, "output.samples_per_shard", self.samples_per_shard,
               f"an int in 1..{MAX_PER_SHARD:,}")
        _check(self.size is None or self.size <= MAX_IMAGE_SIDE, "output.size", self.size, f"at most {MAX_IMAGE_SIDE}")
        _check(self.contact_sheet <= MAX_CONTACT_SHEET, "output.contact_sheet", self.contact_sheet,
               f"at most {MAX_CONTACT_SHEET}")
        _check(self.min_shards >= 1, "output.min_shards", self.min_shards, "an int >= 1")
        _check(self.contact_sheet >= 0, "output.contact_sheet", self.contact_sheet, "an int >= 0")
        _check(bool(self.name), "output.name", self.name, "a non-empty name")


@dataclass(frozen=True)
class RayConfig:
    """Where the rendering runs.

    Attributes:
        executor: ``ray``: a pool of Ray actors (one per GPU, or CPU actors); ``local``: the
            same shard writer, one shard after another in this process (debugging, no Ray).
        address: join this Ray cluster (``auto``, ``ray://host:10001``, ``host:6379``); null starts
            a local one (unless this process already called ``ray.init``).
        num_cpus: CPUs of a local cluster; null = all.
        workers: actor pool size; null = the cluster's GPUs when rendering on CUDA, else 1.
        cpus_per_worker: CPUs reserved per actor (also its torch thread count on a CPU-only worker).
        gpus_per_worker: GPUs per actor; null = 1 when rendering on CUDA, else 0.
        max_restarts: times Ray starts a worker process again after it dies (a lost node, the
            OOM killer); -1 = without limit.
        shard_retries: times a shard whose worker died is rendered again before the build fails.
            Errors raised by the rendering itself are never retried.
    """

    executor: Literal["ray", "local"] = "ray"
    address: Optional[str] = None
    num_cpus: Optional[int] = None
    workers: Optional[int] = None
    cpus_per_worker: float = 1.0
    gpus_per_worker: Optional[float] = None
    max_restarts: int = 3
    shard_retries: int = 2

    def __post_init__(self) -> None:
        _check(self.num_cpus is None or self.num_cpus >= 1, "ray.num_cpus", self.num_cpus, "null or an int >= 1")
        _check(self.workers is None or self.workers >= 1, "ray.workers", self.workers, "null or an int >= 1")
        _check(self.cpus_per_worker > 0, "ray.cpus_per_worker", self.cpus_per_worker, "a number > 0")
        _check(self.gpus_per_worker is None or self.gpus_per_worker >= 0, "ray.gpus_per_worker",
               self.gpus_per_worker, "null or a number >= 0")
        _check(self.max_restarts >= -1, "ray.max_restarts", self.max_restarts, "an int >= -1 (-1: no limit)")
        _check(self.shard_retries >= 0, "ray.shard_retries", self.shard_retries, "an int >= 0")


@dataclass(frozen=True)
class BuildConfig:
    """Everything ``actgen-build`` needs; written resolved into ``build.json`` and the index.

    Attributes:
        checkpoint: the classifier bundle directory (``rounds/<r>/checkpoint``).
        manifest: the hard-sample manifest (``rounds/<r>/hard_samples.json``).
        dataset: the data set the manifest's ids point into. Null: the manifest header's, but only
            when it is the embedded ``builtin:digits`` or lies inside one of ``data_roots`` (a
            manifest never chooses what the builder reads).
        data_roots: folders a manifest's ``header.dataset.path`` may point inside when ``dataset``
            is null (symbolic links resolved); relative ones are taken from the working directory.
        generator: the diffusion model.
        guidance: sampler and guidance settings (defaults: the paper code's).
        mode: ``txt2img`` (text-to-image), ``img2img`` (image guidance only) or ``actgen``; or
            ``copy``: no generation, every planned image is its guide image itself, through the
            same allocation, shards and provenance (a control: what training on the hard samples
            early gives without generation). ``copy`` needs every target guided (``targets: hard``,
            ``schedule.enabled: false``, allocation ``paper``, or ``balanced`` with ``fill: train``);
            a round that did not fire copies training images of the manifest's guide pool, classes
            drawn evenly. No generator is loaded; the set's index is written at version 2.
        targets: ``hard``: every image is rendered for a hard sample (its class; its image as the
            guide), the budget cycled over them; ``uniform``: text-to-image of classes drawn
            uniformly, independent of the hard samples (the paper's random-generation baseline;
            needs ``mode: txt2img``).
        allocation: how the budget is spread over hard samples and classes (``paper``, the
            default; ``balanced``; ``mixed``).
        max_renders_per_sample: with ``allocation.policy: paper``, cap the round's budget at this
            many renders per hard sample (``min(budget, k x hard samples)``); null = always
            ``budget``. Late rounds have few hard samples, and spreading the whole budget over them
            renders each many times. Ignored by ``mixed``. With ``balanced``: the renders per hard
            sample within its class's share (null = 1); the budget is always spent.
        schedule: per-round mode mixing.
        budget: images this round (sampled from the hard samples, cycled when there are fewer).
        seed: run seed; with the manifest and budget it fixes the plan and every image's noise.
        round: the round for keys, schedules and provenance; null = the manifest's.
        batch_size: images per sampler call (memory-bound on a GPU).
        bank_scope: memory bank of the contrastive term. ``run`` (the paper's bank, which lives
            for the whole run): every shard starts from the banks of the run's earlier rounds
            (``bank_sources``) and grows in plan order; every image is a function of the plan and
            the earlier rounds alone, for any worker count and across resumes. ``shard``: a fresh,
            empty bank per shard. ``worker``: one bank per actor for this build only (an image
            then depends on which shards its actor rendered before, which Ray decides). Every
            scope writes the round's additions to ``memory_bank.safetensors``.
        bank_sources: with ``bank_scope: run``, the earlier data sets whose banks to start from,
            in order; null = rounds 0..r-1 of the run when the output is ``<run>/rounds/<r>/shards``
            (the trainer's layout), else none.
        check_checkpoint: the checkpoint's sha256 must be the manifest's ``checkpoint_sha256``.
        guide_preprocess: ``classifier``: a hard sample's guide is the centre crop the bundle's
            evaluation transform shows the classifier (``crop_pct``; the shorter side at 1.0),
            then resized to the generator's size; ``raw``: the whole stored image, resized (a
            non-square one squashed).
        output: where and how to write.
        ray: where to render.
    """

    checkpoint: str = ""
    manifest: str = ""
    dataset: Optional[DataSource] = None
    data_roots: list[str] = field(default_factory=list)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)
    mode: BuildMode = "actgen"
    targets: Literal["hard", "uniform"] = "hard"
    allocation: AllocationConfig = field(default_factory=AllocationConfig)
    max_renders_per_sample: Optional[int] = None
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    budget: int = 64
    seed: int = 0
    round: Optional[int] = None
    batch_size: int = 4
    bank_scope: Literal["run", "worker", "shard"] = "run"
    bank_sources: Optional[list[str]] = None
    check_checkpoint: bool = True
    guide_preprocess: Literal["classifier", "raw"] = "classifier"
    output: OutputConfig = field(default_factory=OutputConfig)
    ray: RayConfig = field(default_factory=RayConfig)

    def __post_init__(self) -> None:
        _check(bool(self.checkpoint), "checkpoint", self.checkpoint, "a classifier bundle directory")
        _check(bool(self.manifest), "manifest", self.manifest, "a hard_samples.json path")
        _check(bool(self.output.path), "output.path", self.output.path, "a directory for the shard data set")
        _check(all(bool(r) for r in self.data_roots), "data_roots", list(self.data_roots), "folder paths, none empty")
        _check(1 <= self.budget <= MAX_BUDGET, "budget", self.budget,
               f"an int in 1..{MAX_BUDGET:,} (images to render this round)")
        _check(self.targets == "hard" or self.mode == "txt2img", "targets", self.targets,
               f"'hard' with mode {self.mode!r} ('uniform' renders text-to-image only: set mode=txt2img)")
        if self.mode == "copy":
            _check(not self.schedule.enabled, "schedule.enabled", self.schedule.enabled,
                   "false with mode 'copy' (the per-round schedule renders a share text-to-image; copy renders nothing)")
            _check(self.allocation.policy == "paper" or (self.allocation.policy == "balanced"
                                                          and self.allocation.fill == "train"),
                   "allocation.policy", self.allocation.policy, "'paper', or 'balanced' with allocation.fill "
                   "'train', with mode 'copy' (every image needs a guide image to copy)")
        _check(self.max_renders_per_sample is None or self.max_renders_per_sample >= 1, "max_renders_per_sample",
               self.max_renders_per_sample, "null or an int >= 1")
        _check(self.seed >= 0, "seed", self.seed, "an int >= 0")
        _check(self.round is None or self.round >= 0, "round", self.round, "null or an int >= 0")
        _check(1 <= self.batch_size <= MAX_BATCH, "batch_size", self.batch_size, f"an int in 1..{MAX_BATCH}")
        _check(self.output.min_shards <= self.budget, "output.min_shards", self.output.min_shards,
               f"at most budget = {self.budget} (every shard holds at least one image)")


def round_overrides(round_dir: Optional[Path] = None, checkpoint: Optional[Path] = None,
                    manifest: Optional[Path] = None, output: Optional[Path] = None) -> dict[str, str]:
    """The three paths of a build, as literal values for :func:`load_config` (``literal=``): those
    given, and for the rest the trainer round folder ``round_dir``'s (``checkpoint/``,
    ``hard_samples.json``, ``shards/``). Literal: a path is never parsed or interpolated, so any
    name a file system allows works (``${``, quotes, ``=``)."""
    from actgen.shards.rounds import CHECKPOINT_DIR, MANIFEST_FILE, SHARDS_DIR

    if round_dir is not None:
        checkpoint = checkpoint or round_dir / CHECKPOINT_DIR
        manifest = manifest or round_dir / MANIFEST_FILE
        output = output or round_dir / SHARDS_DIR
    return {key: str(value) for key, value in
            (("checkpoint", checkpoint), ("manifest", manifest), ("output.path", output)) if value is not None}


def load_config(path: str | Path | None = None, overrides: Sequence[str] = (),
                literal: Optional[Mapping[str, str]] = None) -> BuildConfig:
    """Load a YAML config over the defaults, then apply ``key.sub=value`` overrides.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: an unknown key, a mistyped value, a malformed override or a value out of
            range; the message names the file or the key.
    """
    return load_structured(BuildConfig, path, overrides, literal=literal)


def config_to_dict(cfg: BuildConfig) -> dict:
    """The resolved config as plain JSON-able values (``inf`` stays a float)."""
    return to_dict(cfg)


def config_to_yaml(cfg: BuildConfig) -> str:
    return to_yaml(cfg)
