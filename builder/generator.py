"""The text-to-image generator a sampler talks to, and its Stable Diffusion implementation.

:class:`Generator` is the whole surface the guided sampler needs: VAE encode/decode, prompt
embeddings, class-token positions, one UNet noise prediction with optional attention capture,
and a few properties. :class:`DiffusersGenerator` implements it over Stable Diffusion 1.x/2.x
components (``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``) loaded with
diffusers/transformers ``from_pretrained``; :func:`.tiny.build_tiny_generator` builds the same
classes with small random weights and a locally written tokenizer, for tests and smoke runs. SDXL is
:class:`~.generator_sdxl.SDXLGenerator`; :func:`.loading.load_pretrained` picks the class a folder
or hub id needs.

Tensors cross this interface in float32 (latents, noise, embeddings, images); each method casts
to the model dtype at the model boundary, so the sampler's arithmetic and the guidance gradients
stay in float32 while the networks run in fp16/bf16 on a GPU.
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import torch

from .attention import AttentionStore, install_attention_capture
from .config import Family, unet_family
from .pretrained import PretrainedSource, check_device_dtype, files_identity  # noqa: F401  (files_identity re-exported)

_logger = logging.getLogger(__name__)

@runtime_checkable
class Generator(Protocol):
    """What the guided sampler needs from a latent text-to-image diffusion model."""

    @property
    def device(self) -> torch.device: ...
    @property
    def dtype(self) -> torch.dtype: ...
    @property
    def image_size(self) -> int:
        """Side of the square images the model renders."""
    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """``(C, h, w)`` of one latent."""
    @property
    def vae_scale_factor(self) -> int: ...
    @property
    def attention(self) -> AttentionStore:
        """Holds the class-token attention of the latest ``predict_noise(capture_attention=True)``."""
    @property
    def alphas_cumprod(self) -> torch.Tensor:
        """Training noise schedule ᾱ_t, float32 on the CPU, ``[num_train_timesteps]``."""
    @property
    def steps_offset(self) -> int: ...

    def weights_hash(self) -> str:
        """sha256 of all weights, tokenizer vocabulary and scheduler config (provenance)."""

    def encode_image(self, images: torch.Tensor, generator: Sequence[torch.Generator]) -> torch.Tensor:
        """``[B, 3, H, W]`` in [-1, 1] -> latents ``[B, C, h, w]``: posterior sample x scaling factor."""

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> images ``[B, 3, H, W]``, nominally in [-1, 1], unclamped, differentiable."""

    def embed_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """Text conditioning ``[B, L, D]``, all of it: what ``predict_noise`` reads and the guidance
        gradients update. The sampler treats it as opaque beyond the batch axis. Stable Diffusion:
        the L = 77 token embeddings of CLIP; SDXL: one more row, which carries the pooled embedding."""

    def embed_unconditional(self, batch_size: int) -> torch.Tensor:
        """The unconditional half of classifier-free guidance, ``[B, L, D]``."""

    def token_indices(self, prompt: str, class_name: str) -> list[int]:
        """Positions of every token of ``class_name`` inside the tokenized ``prompt``."""

    def predict_noise(self, latents: torch.Tensor, t: int, embeddings: torch.Tensor,
                      capture_attention: bool = False) -> torch.Tensor:
        """ε prediction ``[N, C, h, w]`` for latents at timestep ``t`` (grad flows to embeddings)."""


CompileTarget = Literal["none", "unet", "unet+vae"]


class DiffusersGenerator:
    """Stable Diffusion 1.x/2.x components behind the :class:`Generator` interface.

    Args:
        unet, vae, text_encoder, tokenizer: diffusers / transformers components.
        scheduler_config: the ``scheduler/`` config; only its noise schedule (betas,
            ``num_train_timesteps``, ``steps_offset``, ``prediction_type``) is used.
        attention_resolution: side of the cross-attention maps to capture; defaults to
            image_size // 32 (16 for 512x512, as in the paper code).
        device, dtype: where and how the networks run.
        name: id recorded in provenance (hub id or directory).
    """

    family: Family = "sd"

    def __init__(self, unet, vae, text_encoder, tokenizer, scheduler_config: dict, *,
                 attention_resolution: int | None = None, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, name: str = ""):
        from diffusers import DDPMScheduler

        self._check_unet(unet)
        self.name = name
        self._device = torch.device(device)
        self._dtype = dtype
        check_device_dtype(self._device, dtype)
        self.unet = _place(unet, self._device, dtype)
        self._vae_dtype = self._vae_dtype_for(vae, dtype)
        self.vae = _place(vae, self._device, self._vae_dtype)
        self.text_encoder = _place(text_encoder, self._device, dtype)
        self.tokenizer = tokenizer
        # The sampler reads only the noise schedule; DDPMScheduler computes it for every beta
        # schedule SD configs use. clip_sample would corrupt latents (class default is True).
        self.scheduler = DDPMScheduler.from_config(dict(scheduler_config), clip_sample=False,
                                                   timestep_spacing="leading")
        self.scheduler_config = dict(scheduler_config)
        self.prediction_type = self.scheduler.config.prediction_type
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"scheduler prediction_type={self.prediction_type!r} is not supported "
                             f"(expected 'epsilon' or 'v_prediction')")
        self._vae_scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        side = int(self.unet.config.sample_size)
        self._latent_shape = (int(self.unet.config.in_channels), side, side)
        res = attention_resolution if attention_resolution is not None else self.image_size // 32
        self._attention = install_attention_capture(self.unet, side, res)
        self._prompt_cache: dict[str, torch.Tensor] = {}
        self._hash: str | None = None
        self._identity: tuple | None = None     # set by from_pretrained for a local directory
        self.compiled: CompileTarget = "none"   # set by speed_up
        self.channels_last = False

    def _check_unet(self, unet) -> None:
        if unet_family(unet.config) != self.family:
            raise ValueError(f"the UNet has addition_embed_type={unet.config.get('addition_embed_type')!r}, an SDXL "
                             "UNet (pooled text and size conditioning): use SDXLGenerator, or load_pretrained, "
                             "which picks the class")

    def _vae_dtype_for(self, vae, dtype: torch.dtype) -> torch.dtype:
        """The dtype the VAE runs in: the generator's (SDXL keeps its VAE in float32 where needed)."""
        return dtype

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path_or_id: str, *, device: str | None = None, dtype: str | None = None,
                        attention_resolution: int | None = None,
                        local_files_only: bool = False) -> DiffusersGenerator:
        """Load from a local Stable Diffusion directory or a hub id.

        Args:
            path_or_id: directory with ``unet/ vae/ text_encoder/ tokenizer/ scheduler/`` or hub id.
            device: ``"cuda"``, ``"cpu"``, ...; default cuda when available.
            dtype: ``"float16"`` (GPU only), ``"bfloat16"`` or ``"float32"``; default float16 on
                a GPU, float32 on the CPU.
            attention_resolution: see the class docstring.
            local_files_only: never touch the network for a hub id.

        Raises:
            FileNotFoundError: a local directory lacks a component (names both).
            RuntimeError: a component fails to load (names the source and the component).
            ValueError: the folder holds another family (SDXL: use :func:`load_pretrained`).
        """
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        source = PretrainedSource.open(path_or_id, device, dtype, local_files_only, family=cls.family)
        load, torch_dtype = source.load, source.torch_dtype
        # use_safetensors=True: weights in .bin pickles are never loaded (unpickling can run code);
        # a component that has only those fails to load, naming itself.
        unet = load("unet", UNet2DConditionModel.from_pretrained, torch_dtype=torch_dtype, use_safetensors=True)
        vae = load("vae", AutoencoderKL.from_pretrained, torch_dtype=torch_dtype, use_safetensors=True)
        text_encoder = load("text_encoder", CLIPTextModel.from_pretrained, dtype=torch_dtype, use_safetensors=True)
        tokenizer = load("tokenizer", CLIPTokenizer.from_pretrained)
        scheduler_config = load("scheduler", DDPMScheduler.load_config)
        generator = cls(unet, vae, text_encoder, tokenizer, scheduler_config,
                        attention_resolution=attention_resolution, device=source.device, dtype=torch_dtype,
                        name=str(path_or_id))
        return source.finish(generator)

    def save_pretrained(self, directory: str | Path) -> None:
        """Write the five components in the Stable Diffusion layout (weights in the current dtype)."""
        d = Path(directory)
        self.unet.save_pretrained(d / "unet")
        self.vae.save_pretrained(d / "vae")
        self.text_encoder.save_pretrained(d / "text_encoder")
        self.tokenizer.save_pretrained(d / "tokenizer")
        self.scheduler.save_pretrained(d / "scheduler")

    # -- properties ---------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def vae_scale_factor(self) -> int:
        return self._vae_scale

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return self._latent_shape

    @property
    def image_size(self) -> int:
        return self._latent_shape[1] * self._vae_scale

    @property
    def attention(self) -> AttentionStore:
        return self._attention

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return self.scheduler.alphas_cumprod.float().cpu()

    @property
    def steps_offset(self) -> int:
        return int(self.scheduler.config.steps_offset)

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler.config.num_train_timesteps)

    def weights_changed(self) -> None:
        """Forget the weights' hash (and their files' identity) after changing weights in place."""
        self._hash = None
        self._identity = None

    def weights_hash(self) -> str:
        if self._hash is None and self._identity is not None:
            self._hash = _HASHES.get(self._identity)
        if self._hash is None:
            h = hashlib.sha256()
            for prefix, module in self._hashed_modules():
                _hash_state_dict(h, prefix, module.state_dict())
            for tokenizer in self._hashed_tokenizers():
                vocab = sorted(tokenizer.get_vocab().items())
                h.update(json.dumps(vocab).encode())
            # The effective schedule (after defaults), so a saved-and-reloaded copy hashes the same.
            sched = {k: v for k, v in self.scheduler.config.items() if not k.startswith("_")}
            h.update(json.dumps(sched, sort_keys=True, default=str).encode())
            self._hash_extra(h)
            self._hash = h.hexdigest()
            if self._identity is not None:
                _HASHES[self._identity] = self._hash
        return self._hash

    def _hashed_modules(self) -> tuple[tuple[str, torch.nn.Module], ...]:
        return (("unet", self.unet), ("vae", self.vae), ("text_encoder", self.text_encoder))

    def _hashed_tokenizers(self) -> tuple:
        return (self.tokenizer,)

    def _hash_extra(self, h) -> None:
        """Settings beyond weights, vocabulary and schedule that change the images (none for SD)."""

    def speed_up(self, compile: CompileTarget = "none", channels_last: bool = False,
                 backend: str = "inductor") -> None:
        """Compile the UNet (and the VAE decoder) and/or hold them in channels-last memory format.

        In place, once, right after loading: ``nn.Module.compile`` keeps the modules, their
        attention processors and their state-dict keys (so :meth:`weights_hash` is unchanged), and
        compiles on the first calls (``backend``: torch.compile's). Both change images only by
        float rounding.

        Raises:
            ValueError: an unknown ``compile`` value.
            RuntimeError: speed-ups were applied already.
        """
        if compile not in ("none", "unet", "unet+vae"):
            raise ValueError(f"compile={compile!r}: expected 'none', 'unet' or 'unet+vae'")
        if self.compiled != "none" or self.channels_last:
            raise RuntimeError(f"speed-ups already applied (compile={self.compiled!r}, "
                               f"channels_last={self.channels_last}); apply them once, after loading")
        if channels_last:
            self.unet.to(memory_format=torch.channels_last)
            self.vae.to(memory_format=torch.channels_last)
        if compile != "none":
            self.unet.compile(backend=backend)
        if compile == "unet+vae":
            # The decoder alone: it is what the adversarial term runs with gradients at every
            # guided step; the encoder runs once per guide.
            self.vae.decoder.compile(backend=backend)
        self.compiled, self.channels_last = compile, channels_last

    # -- the interface ------------------------------------------------------------------------

    def encode_image(self, images: torch.Tensor, generator: Sequence[torch.Generator]) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W], got {tuple(images.shape)}")
        if len(generator) != images.shape[0]:
            raise ValueError(f"{len(generator)} generators for {images.shape[0]} images")
        dist = self.vae.encode(images.to(self._device, self._vae_dtype)).latent_dist
        # One draw per row from its own generator (CPU), so a sample's latent does not depend
        # on the other rows of the batch.
        noise = torch.stack([torch.randn(dist.mean.shape[1:], generator=g, dtype=torch.float32)
                             for g in generator]).to(self._device)
        z = dist.mean.float() + dist.std.float() * noise
        stats = self._latent_stats()
        if stats is not None:                   # a VAE config with latents_mean/std (as diffusers' pipelines)
            return (z - stats[0]) * self.vae.config.scaling_factor / stats[1]
        return z * self.vae.config.scaling_factor

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        stats = self._latent_stats()
        if stats is not None:
            z = latents * stats[1] / self.vae.config.scaling_factor + stats[0]
        else:
            z = latents / self.vae.config.scaling_factor
        return self.vae.decode(z.to(self._device, self._vae_dtype)).sample.float()

    def _latent_stats(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(mean, std)`` ``[1, C, 1, 1]`` float32 of the VAE config's ``latents_mean``/``latents_std``,
        or None when it has none (every SD 1.x/2.x and SDXL base VAE)."""
        mean = getattr(self.vae.config, "latents_mean", None)
        std = getattr(self.vae.config, "latents_std", None)
        if mean is None or std is None:
            return None
        view = (1, len(mean), 1, 1)
        return (torch.tensor(mean, dtype=torch.float32, device=self._device).view(view),
                torch.tensor(std, dtype=torch.float32, device=self._device).view(view))

    def embed_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        # One prompt per text-encoder call: a batched call's numerics depend on the other rows, and
        # an embedding must not depend on which prompts a worker happened to encode first (the
        # memory bank keeps latents at full precision, so such differences would reach the files).
        for p in dict.fromkeys(prompts):
            if p not in self._prompt_cache:
                with torch.no_grad():
                    self._prompt_cache[p] = self._encode_prompt(p)
        return torch.stack([self._prompt_cache[p] for p in prompts])

    def _encode_prompt(self, prompt: str) -> torch.Tensor:
        """One prompt's conditioning, float32 ``[L, D]``: CLIP's last hidden state."""
        ids = _token_ids(self.tokenizer, prompt, self._device)
        return self.text_encoder(ids)[0][0].float()                             # [L, D]

    def embed_unconditional(self, batch_size: int) -> torch.Tensor:
        return self.embed_prompts([""] * batch_size)

    def token_indices(self, prompt: str, class_name: str) -> list[int]:
        return find_token_indices(self.tokenizer, prompt, class_name)

    def predict_noise(self, latents: torch.Tensor, t: int, embeddings: torch.Tensor,
                      capture_attention: bool = False) -> torch.Tensor:
        store = self._attention
        store.reset()
        store.enabled = capture_attention
        try:
            # The timestep as a tensor, which the UNet makes of an int anyway: a compiled UNet
            # (generator.compile) then reads it as data instead of recompiling for each new value.
            timestep = torch.tensor(int(t), dtype=torch.int64, device=self._device)
            out = self._unet_output(latents.to(self._device, self._dtype), timestep, embeddings).float()
        finally:
            store.enabled = False
        if self.prediction_type == "v_prediction":
            # v = √ᾱ ε − √(1−ᾱ) x  =>  ε = √ᾱ v + √(1−ᾱ) x
            a = self.scheduler.alphas_cumprod[int(t)].to(out.device, torch.float32)
            out = a.sqrt() * out + (1 - a).sqrt() * latents.float()
        return out

    def _unet_output(self, latents: torch.Tensor, t: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        """The UNet's raw output for latents already in the model dtype, at timestep ``t`` (0-d)."""
        return self.unet(latents, t, encoder_hidden_states=embeddings.to(self._device, self._dtype)).sample


def _token_ids(tokenizer, prompt: str, device: torch.device) -> torch.Tensor:
    """``[1, max_length]`` ids of one prompt, padded with the tokenizer's pad token, truncated."""
    return tokenizer([prompt], padding="max_length", max_length=tokenizer.model_max_length,
                     truncation=True, return_tensors="pt").input_ids.to(device)


def find_token_indices(tokenizer, prompt: str, class_name: str) -> list[int]:
    """Positions of all tokens of ``class_name`` in the tokenized ``prompt`` (first occurrence).

    CLIP's BPE splits text into words before merging, so a name tokenizes the same alone and
    inside the prompt; a multi-token name ("aquarium_fish") gives all its positions.

    Raises:
        ValueError: the name's tokens do not occur in the prompt within the max length.
    """
    ids = tokenizer(prompt, truncation=True, max_length=tokenizer.model_max_length).input_ids
    name_ids = tokenizer(class_name, add_special_tokens=False).input_ids
    if not name_ids:
        raise ValueError(f"class name {class_name!r} tokenizes to nothing")
    n = len(name_ids)
    for start in range(len(ids) - n + 1):
        if ids[start:start + n] == name_ids:
            return list(range(start, start + n))
    raise ValueError(f"class name {class_name!r} (tokens {name_ids}) not found in the tokenized prompt "
                     f"{prompt!r} (first {tokenizer.model_max_length} tokens)")


def _place(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """Move, cast only when needed (diffusers warns on any ``to(dtype)``), eval mode, frozen."""
    module = module.to(device)
    if next(module.parameters()).dtype != dtype:
        module = module.to(dtype)
    return module.eval().requires_grad_(False)


# Weights hashes of generators loaded from local directories in this process, by the identity of
# their files (:func:`files_identity`) and the dtype they were loaded in: a worker that reloads an
# unchanged generator (for example after its settings changed) does not hash gigabytes again.
_HASHES: dict[tuple, str] = {}


def _hash_state_dict(h, prefix: str, state: dict[str, torch.Tensor]) -> None:
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        h.update(f"{prefix}.{key}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
