"""``actgen-fit-generator``'s configurations: frozen dataclass trees loaded from YAML, overridable by dotlist.

:class:`FitConfig` is a fit from scratch (:mod:`actgen.fitting.fit`), :class:`LoraFitConfig` a LoRA
fine-tune (:mod:`actgen.fitting.lora`). Same rules as :mod:`actgen.builder.config`: OmegaConf
structured configs reject unknown keys and mistyped values naming the key; ranges are checked in
``__post_init__`` with a ``ValueError`` naming the key and the value.

No torch here: the CLI's ``--help`` and the demo read this module only.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Mapping, Optional, Sequence

from actgen.builder.config import TINY   # the random tiny generator: LoRA's ``base`` for tests
from actgen.shards.config import check_value as _check, load_structured, to_dict
from actgen.shards.sources import DataSource

CHECKPOINT = "checkpoints/last.pt"
"""The resumable checkpoint of a fit from scratch, relative to its output directory."""
LORA_CHECKPOINT = "checkpoints/lora.safetensors"
"""The resumable checkpoint of a LoRA fine-tune, relative to its output directory."""


def checkpoint_path(output: str | Path) -> Path:
    """Where a fit from scratch into ``output`` keeps its resumable checkpoint."""
    return Path(output) / CHECKPOINT


def lora_checkpoint_path(output: str | Path) -> Path:
    """Where a LoRA fine-tune into ``output`` keeps its resumable checkpoint."""
    return Path(output) / LORA_CHECKPOINT


def can_resume(output: str | Path) -> bool:
    """Whether ``output`` holds an interrupted (or finished) fit's checkpoint, so ``--resume`` applies."""
    return checkpoint_path(output).is_file()


@dataclass(frozen=True)
class FitModelConfig:
    """Architecture of the generator fitted from scratch.

    Attributes:
        image_size: side the data set's images are resized to; the UNet runs at this side
            (the autoencoder has scale factor 1: pixel-space diffusion).
        block_out_channels: UNet channels per level (side image_size / 2**i at level i).
        layers_per_block: resnet+transformer layers per UNet block.
        attention_head_dim: channels per attention head.
        cross_attention_dim: text-embedding width (= the text encoder's hidden size).
        text_layers: CLIP text-encoder layers.
        text_max_length: tokenizer max length (prompt embeddings are ``[text_max_length, D]``).
        autoencoder_channels: channels of the one-level autoencoder (pixel <-> latent, scale 1).
        attention_resolution: side at which the builder captures cross-attention; null =
            image_size // 2 (the coarser level of a two-level UNet, as 16 is of SD's 64 latent).
        attention_sides: the sides whose UNet blocks attend to the class tokens (self- and
            cross-attention); the others are plain resnet blocks. Null = every side. Must hold
            the capture side. Attention at the finest side is the costliest part of a small
            UNet's step (64 tokens at 8x8 against 16 at 4x4).
    """

    image_size: int = 16
    block_out_channels: tuple[int, ...] = (32, 64)
    layers_per_block: int = 1
    attention_head_dim: int = 8
    cross_attention_dim: int = 64
    text_layers: int = 2
    text_max_length: int = 16
    autoencoder_channels: int = 32
    attention_resolution: Optional[int] = None
    attention_sides: Optional[tuple[int, ...]] = None

    def __post_init__(self) -> None:
        levels = len(self.block_out_channels)
        _check(levels >= 1 and all(c >= 8 and c % 8 == 0 for c in self.block_out_channels),
               "model.block_out_channels", self.block_out_channels, "one or more multiples of 8")
        _check(self.image_size >= 4 and self.image_size % 2 ** (levels - 1) == 0, "model.image_size",
               self.image_size, f"a multiple of {2 ** (levels - 1)} (2 ** (levels - 1)), at least 4")
        _check(self.layers_per_block >= 1, "model.layers_per_block", self.layers_per_block, "an int >= 1")
        _check(self.attention_head_dim >= 1 and all(c % self.attention_head_dim == 0 for c in self.block_out_channels),
               "model.attention_head_dim", self.attention_head_dim, "a divisor of every block_out_channels entry")
        _check(self.cross_attention_dim >= 8 and self.cross_attention_dim % 4 == 0, "model.cross_attention_dim",
               self.cross_attention_dim, "a multiple of 4, at least 8")
        _check(self.text_layers >= 1, "model.text_layers", self.text_layers, "an int >= 1")
        _check(self.text_max_length >= 4, "model.text_max_length", self.text_max_length, "an int >= 4")
        _check(self.autoencoder_channels >= 8 and self.autoencoder_channels % 8 == 0,
               "model.autoencoder_channels", self.autoencoder_channels, "a multiple of 8")
        sides = {self.image_size // 2 ** i for i in range(levels)}
        _check(self.attention_resolution is None or self.attention_resolution in sides,
               "model.attention_resolution", self.attention_resolution, f"null or one of {sorted(sides)}")
        if self.attention_sides is not None:
            _check(len(self.attention_sides) >= 1 and set(self.attention_sides) <= sides, "model.attention_sides",
                   self.attention_sides, f"null or a non-empty list of sides from {sorted(sides)}")
            _check(self.capture_resolution in self.attention_sides, "model.attention_sides", self.attention_sides,
                   f"a list holding the capture side {self.capture_resolution} (model.attention_resolution)")

    def attends(self, level: int) -> bool:
        """Whether the UNet's blocks at ``level`` (side image_size / 2**level) attend to the class tokens."""
        return self.attention_sides is None or self.image_size // 2 ** level in self.attention_sides

    @property
    def capture_resolution(self) -> int:
        """The attention-capture side the builder should use with this generator."""
        if self.attention_resolution is not None:
            return self.attention_resolution
        return self.image_size // 2 if len(self.block_out_channels) > 1 else self.image_size


@dataclass(frozen=True)
class FitTrainConfig:
    """The optimisation.

    Attributes:
        steps: optimizer steps of the diffusion model.
        batch_size: images per step.
        lr: AdamW peak learning rate (linear warmup, then cosine to ``min_lr_ratio`` x lr).
        warmup_steps, min_lr_ratio, weight_decay, grad_clip: the usual.
        prompt_dropout: probability a training prompt is replaced by "" (classifier-free guidance).
        ema_decay: EMA of the UNet and text-encoder weights (the saved generator uses the EMA).
        snr_gamma: Min-SNR-γ loss weighting (Hang et al., 2023): each sample's loss is weighted
            by min(SNR(t), γ) / SNR(t) (ε-prediction), so the nearly noise-free timesteps, whose
            ε is hard to predict and worth little, stop dominating the gradient; the paper finds
            γ = 5 converges several times faster. Null: the plain MSE.
        autoencoder_steps, autoencoder_lr: the autoencoder's fit (before the diffusion model).
        hflip: probability of a horizontal flip of a training image (0 for digits).
        seed: every random draw of the fit (init, batches, noise, timesteps, dropout).
        device: ``auto`` = CUDA when available.
        precision: ``auto`` = bf16 autocast on CUDA, fp32 on the CPU.
        log_every: steps between log lines and loss-curve points of the progress log.
        sample_every: steps between per-class sample grids (0: only at the end).
        checkpoint_every: steps between checkpoints (the last step always checkpoints).
        progress: show a tqdm progress bar.
        max_seconds: a time box for the diffusion steps (null: none). When it runs out the fit
            stops at the step it reached, checkpoints, and writes the generator as if finished;
            the record's ``steps`` says how many were done (the learning-rate schedule is still
            the one over ``steps``, so set ``steps`` near what the box allows). For a lent GPU.
    """

    steps: int = 3000
    batch_size: int = 128
    lr: float = 1e-3
    warmup_steps: int = 100
    min_lr_ratio: float = 0.05
    weight_decay: float = 1e-2
    grad_clip: float = 1.0
    prompt_dropout: float = 0.1
    ema_decay: float = 0.999
    snr_gamma: Optional[float] = None
    autoencoder_steps: int = 300
    autoencoder_lr: float = 2e-3
    hflip: float = 0.0
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    log_every: int = 100
    sample_every: int = 1000
    checkpoint_every: int = 500
    progress: bool = True
    max_seconds: Optional[float] = None

    def __post_init__(self) -> None:
        _check(self.max_seconds is None or self.max_seconds > 0, "train.max_seconds", self.max_seconds,
               "null or a number of seconds > 0")
        for key in ("steps", "batch_size", "log_every", "checkpoint_every"):
            _check(getattr(self, key) >= 1, f"train.{key}", getattr(self, key), "an int >= 1")
        for key in ("warmup_steps", "autoencoder_steps", "sample_every", "seed"):
            _check(getattr(self, key) >= 0, f"train.{key}", getattr(self, key), "an int >= 0")
        for key in ("lr", "autoencoder_lr"):
            _check(getattr(self, key) > 0, f"train.{key}", getattr(self, key), "a number > 0")
        for key in ("prompt_dropout", "hflip", "min_lr_ratio"):
            _check(0 <= getattr(self, key) <= 1, f"train.{key}", getattr(self, key), "a number in [0, 1]")
        _check(self.snr_gamma is None or self.snr_gamma > 0, "train.snr_gamma", self.snr_gamma,
               "null or a number > 0")
        _check(0 <= self.ema_decay < 1, "train.ema_decay", self.ema_decay, "a number in [0, 1)")
        _check(self.weight_decay >= 0, "train.weight_decay", self.weight_decay, "a number >= 0")
        _check(self.grad_clip >= 0, "train.grad_clip", self.grad_clip, "a number >= 0 (0: no clipping)")
        _check(not (self.device == "cpu" and self.precision in ("bf16", "fp16")), "train.precision",
               self.precision, "fp32 or auto with train.device=cpu")


@dataclass(frozen=True)
class FitSampleConfig:
    """The periodic sample grids (rendered with the builder's sampler, txt2img with CFG).

    Attributes:
        per_class: images per class (one grid row per class).
        num_steps: DDPM steps.
        cfg_scale: classifier-free guidance scale.
        seed: seeds of the grid's images (the same every time, so grids are comparable).
    """

    per_class: int = 8
    num_steps: int = 25
    cfg_scale: float = 3.0
    seed: int = 0

    def __post_init__(self) -> None:
        _check(self.per_class >= 1, "sample.per_class", self.per_class, "an int >= 1")
        _check(self.num_steps >= 1, "sample.num_steps", self.num_steps, "an int >= 1")
        _check(self.cfg_scale >= 0, "sample.cfg_scale", self.cfg_scale, "a number >= 0")


@dataclass(frozen=True)
class FitConfig:
    """Everything ``actgen-fit-generator`` needs; written resolved into ``fit_record.json``.

    Attributes:
        data: the labeled data set to fit.
        output: the generator directory (diffusers layout + ``fit_record.json``, ``samples/``,
            ``checkpoints/``).
        prompt_template: ``str.format`` template with one ``{}`` for the class name; use the
            builder's ``generator.prompt_template``.
        noise_schedule: DDPM betas (``squaredcos_cap_v2`` = cosine) over ``num_train_timesteps``.
        model, train, sample: see their classes.
    """

    data: DataSource = field(default_factory=DataSource)
    output: str = ""
    prompt_template: str = "a photo of {}"
    noise_schedule: Literal["squaredcos_cap_v2", "scaled_linear", "linear"] = "squaredcos_cap_v2"
    num_train_timesteps: int = 1000
    model: FitModelConfig = field(default_factory=FitModelConfig)
    train: FitTrainConfig = field(default_factory=FitTrainConfig)
    sample: FitSampleConfig = field(default_factory=FitSampleConfig)

    def __post_init__(self) -> None:
        _check(bool(self.output), "output", self.output, "a directory for the generator")
        _check(self.prompt_template.count("{}") == 1, "prompt_template", self.prompt_template,
               "a template with exactly one '{}' for the class name")
        _check(self.num_train_timesteps >= 10, "num_train_timesteps", self.num_train_timesteps, "an int >= 10")


def load_fit_config(path: str | Path | None = None, overrides: Sequence[str] = (),
                    literal: Optional[Mapping[str, str]] = None) -> FitConfig:
    """Load a YAML config over the defaults, then apply ``key.sub=value`` overrides.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: an unknown key, a mistyped value or a value out of range (names the key).
    """
    return load_structured(FitConfig, path, overrides, literal=literal)


def fit_config_to_dict(cfg: FitConfig) -> dict:
    """The resolved config as plain JSON-able values."""
    return to_dict(cfg)


@dataclass(frozen=True)
class LoraFitConfig:
    """A LoRA fine-tune.

    Attributes:
        base: the generator to adapt: an SD 1.x/2.x directory, a hub id (with
            ``local_files_only: false``) or ``tiny`` (the random tiny generator; tests).
        data: the labeled data set; streamed (each step decodes and resizes only its images to
            the generator's side), so it may be any size.
        output: directory for the fused generator, the adapter, ``fit_record.json`` and the
            resumable checkpoint ``checkpoints/lora.safetensors``.
        prompt_template: ``str.format`` template with one ``{}`` for the class name.
        rank, alpha: LoRA rank and scaling numerator (scale = alpha / rank).
        target_modules: UNet linear layers that get adapters.
        steps: optimizer steps.
        batch_size: images per micro-batch (what is on the device at once).
        grad_accumulation: micro-batches per optimizer step; a step trains on
            ``batch_size x grad_accumulation`` images with the gradient of one batch of that size.
        lr, warmup_steps, prompt_dropout, grad_clip, seed: the optimisation (AdamW on the adapters
            only; linear warmup, cosine to 5% of lr). ``seed`` fixes the adapters' initialisation,
            the image order (a new permutation every epoch) and every sample's noise.
        device: ``auto`` = CUDA when available.
        precision: the frozen UNet's dtype and the forward pass's autocast dtype; the adapters and
            their optimizer stay float32, and the saved generator is float32 (the adapter fused
            into the base's float32 weights). ``auto`` = bf16 on a CUDA device that supports it,
            else fp16 on CUDA, fp32 on the CPU. ``fp16`` needs CUDA (with a gradient scaler);
            ``bf16`` also runs on the CPU.
        local_files_only: never touch the network for a hub id.
        num_workers: DataLoader processes decoding images ahead of the step (0: in the fit's process).
        log_every: steps between log lines.
        checkpoint_every: steps between checkpoints (the last step, and a stop, always checkpoint).
        progress: show a tqdm progress bar when stderr is a terminal.
    """

    base: str = TINY
    data: DataSource = field(default_factory=DataSource)
    output: str = ""
    prompt_template: str = "a photo of {}"
    rank: int = 4
    alpha: float = 4.0
    target_modules: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
    steps: int = 1000
    batch_size: int = 4
    grad_accumulation: int = 1
    lr: float = 1e-4
    warmup_steps: int = 50
    prompt_dropout: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    local_files_only: bool = True
    num_workers: int = 0
    log_every: int = 50
    checkpoint_every: int = 200
    progress: bool = True

    def __post_init__(self) -> None:
        _check(bool(self.output), "output", self.output, "a directory for the fine-tuned generator")
        _check(self.prompt_template.count("{}") == 1, "prompt_template", self.prompt_template,
               "a template with exactly one '{}'")
        _check(self.rank >= 1, "rank", self.rank, "an int >= 1")
        _check(self.alpha > 0, "alpha", self.alpha, "a number > 0")
        _check(bool(self.target_modules), "target_modules", self.target_modules, "at least one module name")
        for key in ("steps", "batch_size", "grad_accumulation", "log_every", "checkpoint_every"):
            _check(getattr(self, key) >= 1, key, getattr(self, key), "an int >= 1")
        for key in ("warmup_steps", "seed", "num_workers"):
            _check(getattr(self, key) >= 0, key, getattr(self, key), "an int >= 0")
        _check(self.lr > 0, "lr", self.lr, "a number > 0")
        _check(0 <= self.prompt_dropout <= 1, "prompt_dropout", self.prompt_dropout, "a number in [0, 1]")
        _check(self.grad_clip >= 0, "grad_clip", self.grad_clip, "a number >= 0 (0: no clipping)")
        _check(not (self.device == "cpu" and self.precision == "fp16"), "precision", self.precision,
               "fp32, bf16 or auto with device=cpu (fp16 needs CUDA)")


def load_lora_config(path: str | Path | None = None, overrides: Sequence[str] = (),
                     literal: Optional[Mapping[str, str]] = None) -> LoraFitConfig:
    """Load a YAML config over the defaults, then apply ``key.sub=value`` overrides.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: an unknown key, a mistyped value or a value out of range (names the key).
    """
    return load_structured(LoraFitConfig, path, overrides, literal=literal)
