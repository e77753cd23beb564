"""The generator's side of ``actgen-build``'s configuration: the Stable Diffusion folder layout
(components, weights, families), the ``generator`` section (what to load and how) and the
``guidance`` section (the sampler and the method's guidance), with the bounds that keep a build
reasonable. Re-exported by :mod:`.config`, whose tree holds them.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Mapping, Optional

from actgen.shards.config import check_value as _check
from actgen.shards.card import LICENSE_ID

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
    """Sampling and guidance settings; defaults are the paper code's.

    Attributes:
        num_steps: denoising steps ("leading" spacing, the scheduler config's ``steps_offset``).
        sampler: ``ddpm`` (the method: DDPM posterior steps), ``ddim`` (η = ``eta``) or
            ``dpmpp_2m`` (DPM-Solver++, second-order multistep, as diffusers'
            ``DPMSolverMultistepScheduler`` with ``final_sigmas_type: zero``). The guide trajectory
            is advanced by the same solver with x0 = z_g and the same noise; gradient guidance acts
            on the solver's own x̂0; the guidance schedules are rescaled to ``num_steps``.
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
        bank_total_capacity: the memory bank's size over all classes (null: only the per-class
            cap). Past it the oldest entry of the class holding the most is evicted, so the bank is
            bounded at any class count: at 1,000 classes the per-class cap alone holds up to a
            million latents (4.2 GB of Stable Diffusion latents in float16).
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
    bank_total_capacity: Optional[int] = None
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
        _check(self.bank_total_capacity is None or 1 <= self.bank_total_capacity <= MAX_BANK,
               "guidance.bank_total_capacity", self.bank_total_capacity, f"null or an int in 1..{MAX_BANK:,}")
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
