"""``actgen-build``'s configuration: a frozen dataclass tree loaded from YAML, overridable by dotlist.

OmegaConf's structured configs reject unknown keys and mistyped values, naming the full key;
ranges and cross-field rules are checked in ``__post_init__`` with a ``ValueError`` naming the
key and the value. Derived values (the round, the shard count, the data source) are computed by
:mod:`actgen.builder.inputs` and never written back onto the config.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Mapping, Optional, Sequence

from actgen.shards.config import check_value as _check, load_structured, to_dict, to_yaml
from actgen.shards.sources import DataSource
from actgen.shards.writer import LICENSE_ID

from .schedules import BuildMode

TINY = "tiny"

# Bounds on what makes a build unreasonably long or large, checked when the config loads (each
# admits the shipped recipes with room: the ImageNet budget of 867 per round, SDXL at 1024²).
MAX_STEPS = 1000            # guidance.num_steps, reference_steps (and at most the generator's training steps)
MAX_BUDGET = 1_000_000      # budget: images in one round
MAX_BATCH = 4096            # batch_size: images per sampler call
MAX_IMAGE_SIDE = 4096       # output.size, generator.tiny_image_size
MAX_BANK = 1_000_000        # guidance.bank_capacity, bank_sample_size
MAX_PER_SHARD = 100_000     # output.samples_per_shard
MAX_CONTACT_SHEET = 1024    # output.contact_sheet
"""``generator.path`` value for the in-process random tiny generator (tests, smoke runs)."""

SD_LATENT_SIZE = 4 * 64 * 64
"""Values in Stable Diffusion's 512x512 latent, where the paper set the contrastive margin."""

COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
"""The subfolders of a Stable Diffusion 1.x/2.x directory (diffusers layout)."""

SDXL_COMPONENTS = COMPONENTS + ("text_encoder_2", "tokenizer_2")
"""The subfolders of a Stable Diffusion XL directory: a second text encoder and its tokenizer."""

WEIGHTS = {"unet": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model", "text_encoder": "model"}
"""The weights file of each component with weights, without ``.safetensors``: only safetensors
are loaded (``use_safetensors=True``), never ``.bin``/``.pt`` pickles, which can run code."""

SDXL_WEIGHTS = {**WEIGHTS, "text_encoder_2": "model"}

Family = Literal["sd", "sdxl"]
"""``sd``: Stable Diffusion 1.x/2.x; ``sdxl``: Stable Diffusion XL (two text encoders, a UNet
conditioned on the pooled text embedding and the image's size and crop as well)."""

_FAMILY_NAMES = {"sd": "a Stable Diffusion 1.x/2.x", "sdxl": "an SDXL"}


def unet_family(unet_config: Mapping) -> Family:
    """The family a UNet config belongs to: SDXL's UNet is the one with the ``text_time`` added
    conditioning (pooled text embedding and size/crop ids); every other one is read as SD 1.x/2.x."""
    return "sdxl" if unet_config.get("addition_embed_type") == "text_time" else "sd"


def directory_family(directory: Path) -> Family:
    """The family of a local generator directory, from ``unet/config.json``; ``sd`` when there is no
    readable one: :func:`check_components` then names a missing component, and loading the UNet
    names a broken config (where it is read for use, on the worker that loads it)."""
    import json

    try:
        config = json.loads((directory / "unet" / "config.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return "sd"
    return unet_family(config) if isinstance(config, dict) else "sd"


def check_components(directory: Path, key: Optional[str] = "generator.path") -> None:
    """Raise FileNotFoundError naming the first component ``directory`` lacks (SD 1.x/2.x's five, or
    SDXL's seven when ``unet/config.json`` says SDXL), or the first component whose weights are not
    in safetensors (a pickle is never loaded)."""
    where = f"; {key}" if key else ""
    family = directory_family(directory)
    components, weights = (SDXL_COMPONENTS, SDXL_WEIGHTS) if family == "sdxl" else (COMPONENTS, WEIGHTS)
    missing = [c for c in components if not (directory / c).is_dir()]
    if missing:
        raise FileNotFoundError(f"{directory}: missing component '{missing[0]}/' ({_FAMILY_NAMES[family]} "
                                f"directory needs {', '.join(c + '/' for c in components)}{where})")
    for component, stem in weights.items():
        folder = directory / component
        if not any((folder / f"{stem}{suffix}").is_file() for suffix in (".safetensors", ".safetensors.index.json")):
            others = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl"))
            found = f"; found only {others}, pickles, which are never loaded (they can run code)" if others else ""
            raise FileNotFoundError(f"{folder}: no {stem}.safetensors{found} (the builder loads weights from "
                                    "safetensors only; convert them with diffusers/transformers "
                                    f"save_pretrained{where})")


@dataclass(frozen=True)
class GuidanceConfig:
    """Sampling and guidance settings; defaults are the paper code's (digest §2).

    Attributes:
        num_steps: denoising steps ("leading" spacing, the scheduler config's ``steps_offset``).
        sampler: ``ddpm`` (the method: DDPM posterior steps), ``ddim`` (η = ``eta``) or
            ``dpmpp_2m`` (DPM-Solver++, second-order multistep, as diffusers'
            ``DPMSolverMultistepScheduler`` with ``final_sigmas_type: zero``). The guide trajectory
            is advanced by the same solver with x0 = z_g and the same noise; gradient guidance acts
            on the solver's own x̂0; the §1.2 schedules are rescaled to ``num_steps``.
        eta: DDIM's η (0: deterministic; 1: DDPM's variance); ``ddim`` only.
        cfg_scale: classifier-free guidance scale (paper code 7.5; the paper text says 15).
        guidance_strength: s in γ_i = sigmoid(s − i), given at ``reference_steps`` steps and
            scaled by num_steps / reference_steps. ``inf`` holds γ at 1, ``-inf`` at 0.
        guidance_steps: K, the number of leading steps with embedding-gradient guidance, given
            at ``reference_steps`` and scaled likewise (rounded).
        reference_steps: the step count at which ``guidance_strength``/``guidance_steps`` hold.
        step_size: ν in c ← c − ν·ĝ.
        adversarial_weight: λ in L = L_contra − λ·CE.
        margin: ρ in the hinge max(0, ρ − ‖x̂0 − z_k‖₂) (paper code 100; the paper text says 200).
        bank_sample_size: at most this many memory-bank latents of the class are compared.
        bank_capacity: per-class memory-bank size; the oldest entries are evicted first.
        mask: ``"cumulative"``: M_i = 1 + Σ_{j≤i} A_j as in the paper code (≥ 1 everywhere, the
            background is guided too); ``"foreground"``: M_i = min-max-normalised A_i (in [0, 1]).
        mask_threshold: with ``mask="foreground"``, binarise M_i at this value (None: keep soft).
        grad_norm: ``"token"``: F.normalize over the token axis per channel, as in the paper code;
            ``"global"``: divide each sample's gradient by its L2 norm, as in the paper text.
        use_mask, use_contrastive, use_adversarial: ablation switches for the ``actgen`` mode.
        adversarial_chunk: images decoded (and back-propagated) together for the adversarial
            term. The VAE decode of x̂0 at full resolution with its backward pass is the largest
            memory cost of guidance; chunks bound it (the paper code decodes one image at a
            time). A speed/memory knob: it changes no image beyond float rounding.
        margin_scale: ``absolute`` (the method): ρ is used as given. ``latent_dim``: ρ is given
            for Stable Diffusion's 4x64x64 latent (16,384 values, where the paper set ρ = 100) and
            scaled by sqrt(latent size / 16,384) to this generator's latent, so that it keeps its
            share of the typical distance between latents; for a 3x8x8 latent, 100 becomes 10.8.
            Unscaled, a small latent's largest possible distance can lie below ρ and the hinge
            never lets go: the term is then a constant push away from the class's earlier renders
            rather than the paper's penalty on near-duplicates.
        repel_within_batch: the contrastive term also compares each guided render with the
            current x̂0 of the other guided renders of its class in the same batch (detached), so
            that renders of one class rendered together repel each other as the paper's
            one-image-at-a-time bank makes them do. Off (the default) they see only the bank.
        adversarial_decode_size: null (the method): the adversarial term decodes x̂0 at the
            generator's size. An int: x̂0's latents are first resized (bilinear) to
            ``adversarial_decode_size / f`` per side (f: the VAE's downsampling, 8 for Stable
            Diffusion), so the VAE decodes (and back-propagates) a smaller image: for a classifier
            whose input is small (CIFAR's 32², e.g. 64). It changes the method (the classifier sees
            a decode of resized latents), hence off by default.
    """

    num_steps: int = 40
    sampler: Literal["ddpm", "ddim", "dpmpp_2m"] = "ddpm"
    eta: float = 0.0
    cfg_scale: float = 7.5
    guidance_strength: float = 12.5
    guidance_steps: int = 10
    reference_steps: int = 40
    step_size: float = 0.05
    adversarial_weight: float = 0.1
    margin: float = 100.0
    margin_scale: Literal["absolute", "latent_dim"] = "absolute"
    repel_within_batch: bool = False
    bank_sample_size: int = 1024
    bank_capacity: int = 1024
    mask: Literal["cumulative", "foreground"] = "cumulative"
    mask_threshold: Optional[float] = None
    grad_norm: Literal["token", "global"] = "token"
    use_mask: bool = True
    use_contrastive: bool = True
    use_adversarial: bool = True
    adversarial_chunk: int = 4
    adversarial_decode_size: Optional[int] = None

    def __post_init__(self):
        _check(0.0 <= self.eta <= 1.0, "guidance.eta", self.eta, "a number in [0, 1]")
        _check(self.eta == 0.0 or self.sampler == "ddim", "guidance.eta", self.eta, "0 unless guidance.sampler is ddim")
        for name in ("num_steps", "reference_steps", "bank_sample_size", "bank_capacity", "adversarial_chunk"):
            if getattr(self, name) < 1:
                raise ValueError(f"guidance.{name}={getattr(self, name)}: must be >= 1")
        for name, bound in (("num_steps", MAX_STEPS), ("reference_steps", MAX_STEPS), ("bank_capacity", MAX_BANK),
                            ("bank_sample_size", MAX_BANK), ("adversarial_chunk", MAX_BATCH)):
            _check(getattr(self, name) <= bound, f"guidance.{name}", getattr(self, name), f"at most {bound:,}")
        for name in ("guidance_steps", "step_size", "adversarial_weight", "margin", "cfg_scale"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"guidance.{name}={value}: must be finite and >= 0")
        if math.isnan(self.guidance_strength):
            raise ValueError("guidance.guidance_strength=nan: must be a number (±inf allowed)")
        if self.mask not in ("cumulative", "foreground"):
            raise ValueError(f"guidance.mask={self.mask!r}: expected 'cumulative' or 'foreground'")
        if self.margin_scale not in ("absolute", "latent_dim"):
            raise ValueError(f"guidance.margin_scale={self.margin_scale!r}: expected 'absolute' or 'latent_dim'")
        if self.grad_norm not in ("token", "global"):
            raise ValueError(f"guidance.grad_norm={self.grad_norm!r}: expected 'token' or 'global'")
        if self.adversarial_decode_size is not None and self.adversarial_decode_size < 1:
            raise ValueError(f"guidance.adversarial_decode_size={self.adversarial_decode_size}: must be null or an "
                             "int >= 1 (a multiple of the VAE's downsampling, 8 for Stable Diffusion)")
        if self.mask_threshold is not None and self.mask != "foreground":
            raise ValueError(f"guidance.mask_threshold={self.mask_threshold}: only applies to mask='foreground'")

    def effective_margin(self, latent_size: int) -> float:
        """ρ for a generator whose latent has ``latent_size`` values (see ``margin_scale``)."""
        if self.margin_scale == "latent_dim":
            return self.margin * math.sqrt(latent_size / SD_LATENT_SIZE)
        return self.margin

    @property
    def scaled_strength(self) -> float:
        """s at ``num_steps`` (12.5 at 40 steps)."""
        return self.guidance_strength * self.num_steps / self.reference_steps

    @property
    def scaled_guidance_steps(self) -> int:
        """K at ``num_steps`` (10 at 40 steps)."""
        return min(self.num_steps, round(self.guidance_steps * self.num_steps / self.reference_steps))


@dataclass(frozen=True)
class GeneratorConfig:
    """The diffusion model.

    Attributes:
        path: a local Stable Diffusion 1.x/2.x directory (``unet/ vae/ text_encoder/ tokenizer/
            scheduler/``) or SDXL directory (also ``text_encoder_2/ tokenizer_2/``; told apart by
            ``unet/config.json``), a hub id, or ``tiny`` (random weights built in-process; tests,
            smoke runs).
        device: ``auto`` = CUDA when the worker has a GPU, else CPU.
        dtype: ``auto`` = float16 on a GPU, float32 on the CPU; the CPU also runs bfloat16 (fast
            only with AMX or AVX512-BF16; elsewhere emulated and slow), never float16.
        attention_resolution: side of the captured cross-attention maps; null = image side / 32.
        local_files_only: never touch the network for a hub id.
        license: the licence of the generator's weights (a Hub licence id, e.g. ``openrail++`` for
            Stable Diffusion 2.x), recorded in every data set's index and card.
        tiny_seed, tiny_image_size: the ``tiny`` generator's weight seed and image side.
        prompt_template: ``str.format`` template with one ``{}`` for the class's prompt name.
        prompt_names: null: a class's prompt name is its class name; else a file of prompt names
            (:func:`actgen.builder.prompts.load_prompt_names`): a JSON object class name -> prompt
            name (e.g. ``configs/imagenet-simple-names.json`` for ImageNet's WordNet ids), a JSON
            list or a text file in label order. Labels, keys and provenance keep the class names.
        compile: ``torch.compile`` at load: ``none``; ``unet``; ``unet+vae`` (also the VAE decoder,
            which the adversarial term runs with gradients). Each worker compiles on its first
            batches (minutes), then renders faster on a GPU; images change only by float rounding.
        compile_backend: ``torch.compile``'s backend (``inductor``, the default, generates
            kernels; ``aot_eager`` only traces, for checking a model compiles without waiting for
            code generation; any registered backend name).
        channels_last: hold the UNet's and the VAE's weights in channels-last memory format (faster
            convolutions on tensor-core GPUs); images change only by float rounding.
    """

    path: str = TINY
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    attention_resolution: Optional[int] = None
    local_files_only: bool = True
    license: Optional[str] = None
    tiny_seed: int = 0
    tiny_image_size: int = 32
    prompt_template: str = "a photo of {}"
    prompt_names: Optional[str] = None
    compile: Literal["none", "unet", "unet+vae"] = "none"
    compile_backend: str = "inductor"
    channels_last: bool = False

    def __post_init__(self) -> None:
        _check(self.compile in ("none", "unet", "unet+vae"), "generator.compile", self.compile,
               "'none', 'unet' or 'unet+vae'")
        _check(re.fullmatch(r"[a-z_][a-z0-9_]*", self.compile_backend) is not None, "generator.compile_backend",
               self.compile_backend, "a torch.compile backend name, e.g. inductor")
        _check(self.license is None or re.fullmatch(LICENSE_ID, self.license) is not None, "generator.license",
               self.license, "a Hub licence id (lower case letters, digits, '.', '+', '-'), e.g. openrail++")
        _check(self.prompt_names is None or bool(self.prompt_names), "generator.prompt_names", self.prompt_names,
               "null or a prompt-name file")
        _check(bool(self.path), "generator.path", self.path, "a directory, a hub id or 'tiny'")
        _check(self.attention_resolution is None or self.attention_resolution >= 1,
               "generator.attention_resolution", self.attention_resolution, "null or an int >= 1")
        _check(self.tiny_image_size <= MAX_IMAGE_SIDE, "generator.tiny_image_size", self.tiny_image_size,
               f"at most {MAX_IMAGE_SIDE}")
        _check(self.tiny_image_size >= 8 and self.tiny_image_size % 4 == 0, "generator.tiny_image_size",
               self.tiny_image_size, "a multiple of 4, at least 8")
        _check(self.prompt_template.count("{}") == 1, "generator.prompt_template", self.prompt_template,
               "a template with exactly one '{}' for the class name")
        _check(not (self.device == "cpu" and self.dtype == "float16"), "generator.dtype",
               self.dtype, "float32, bfloat16 or auto with generator.device=cpu (no float16 on the CPU)")


@dataclass(frozen=True)
class ScheduleConfig:
    """The per-round mixing of method digest §1.3.

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
        schedule: per-round mode mixing (§1.3).
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
                   "false with mode 'copy' (the §1.3 schedule renders a share text-to-image; copy renders nothing)")
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
