"""Stable Diffusion XL behind the :class:`~.generator.Generator` interface.

SDXL differs from SD 1.x/2.x in what conditions its UNet, as diffusers'
``StableDiffusionXLPipeline`` feeds it (diffusers 0.42):

- two text encoders, CLIP ViT-L (``text_encoder``) and OpenCLIP bigG with a projection
  (``text_encoder_2``); the token embeddings are both encoders' penultimate hidden states side by
  side (``[77, 768 + 1280]``), and the second encoder's projected pooled output (``text_embeds``,
  1280) enters the UNet's time embedding;
- six "time ids" ``(original h, original w, crop top, crop left, target h, target w)``, the
  size conditioning of the base model, also added to the time embedding;
- with ``force_zeros_for_empty_prompt`` (``model_index.json``; true for the base model) the
  unconditional half of classifier-free guidance is all zeros, pooled embedding included;
- a VAE that overflows in float16 (``force_upcast`` in its config): it is kept in float32 when
  the generator runs in float16, as the pipeline upcasts it before decoding.

How the pooled embedding travels: :meth:`SDXLGenerator.embed_prompts` returns the 77 token rows
plus one more row, whose first 1280 channels hold the pooled embedding (zeros after them), and
:meth:`~SDXLGenerator.predict_noise` splits it off again. The sampler stays as it is, and its
embedding-gradient steps update the pooled embedding along with the token embeddings, which is
what the paper's "c" is for this model: all of the text conditioning.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

import torch

from .generator import DiffusersGenerator, _place, _token_ids
from .tiny import TINY_WORDS, tiny_tokenizer
from .pretrained import PretrainedSource

_logger = logging.getLogger(__name__)

TIME_IDS = 6
"""``(original_size, crops_coords_top_left, target_size)``, two numbers each."""


class SDXLGenerator(DiffusersGenerator):
    """Stable Diffusion XL components behind the :class:`~.generator.Generator` interface.

    Args:
        unet, vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2: diffusers / transformers
            components (``text_encoder_2`` a ``CLIPTextModelWithProjection``).
        scheduler_config: the ``scheduler/`` config (only its noise schedule is used).
        force_zeros_for_empty_prompt: the unconditional embeddings are zeros (``model_index.json``).
        original_size, crops_coords_top_left, target_size: the size conditioning, ``(h, w)`` and
            ``(top, left)``; default the image size and ``(0, 0)``, as the pipeline's.
        attention_resolution, device, dtype, name: as :class:`~.generator.DiffusersGenerator`'s.
            The class tokens' positions come from ``tokenizer``; both tokenizers split text the
            same way, so they are the positions in the concatenated embeddings too.
    """

    family = "sdxl"

    def __init__(self, unet, vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, scheduler_config: dict, *,
                 force_zeros_for_empty_prompt: bool = True, original_size: tuple[int, int] | None = None,
                 crops_coords_top_left: tuple[int, int] = (0, 0), target_size: tuple[int, int] | None = None,
                 attention_resolution: int | None = None, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, name: str = ""):
        super().__init__(unet, vae, text_encoder, tokenizer, scheduler_config, attention_resolution=attention_resolution,
                         device=device, dtype=dtype, name=name)
        self.text_encoder_2 = _place(text_encoder_2, self._device, dtype)
        self.tokenizer_2 = tokenizer_2
        self.force_zeros_for_empty_prompt = bool(force_zeros_for_empty_prompt)
        if tokenizer.model_max_length != tokenizer_2.model_max_length:
            raise ValueError(f"tokenizer model_max_length={tokenizer.model_max_length} but tokenizer_2's is "
                             f"{tokenizer_2.model_max_length}: the two encoders' token rows must line up")
        self._pooled_dim = int(text_encoder_2.config.projection_dim)
        token_dim = int(text_encoder.config.hidden_size) + int(text_encoder_2.config.hidden_size)
        self._check_shapes(token_dim)
        side = self.image_size
        self.original_size = tuple(original_size or (side, side))
        self.crops_coords_top_left = tuple(crops_coords_top_left)
        self.target_size = tuple(target_size or (side, side))
        ids = [*self.original_size, *self.crops_coords_top_left, *self.target_size]
        if len(ids) != TIME_IDS:
            raise ValueError(f"original_size={original_size}, crops_coords_top_left={crops_coords_top_left}, "
                             f"target_size={target_size}: expected two numbers each")
        self._time_ids = torch.tensor([ids], dtype=torch.float32)                      # [1, 6]
        # 77 token rows plus the pooled row.
        self._embedding_shape = (int(tokenizer.model_max_length) + 1, token_dim)

    def _check_unet(self, unet) -> None:
        if unet.config.get("addition_embed_type") != "text_time":
            raise ValueError(f"the UNet has addition_embed_type={unet.config.get('addition_embed_type')!r}, not "
                             "SDXL's 'text_time': use DiffusersGenerator, or load_pretrained, which picks the class")

    def _check_shapes(self, token_dim: int) -> None:
        """The checks the SDXL pipeline makes, before any image is rendered (names the configs)."""
        unet = self.unet
        if unet.config.cross_attention_dim != token_dim:
            raise ValueError(f"unet cross_attention_dim={unet.config.cross_attention_dim}, but the two text "
                             f"encoders' hidden sizes add up to {token_dim}")
        expected = unet.add_embedding.linear_1.in_features
        passed = unet.config.addition_time_embed_dim * TIME_IDS + self._pooled_dim
        if expected != passed:
            raise ValueError(f"unet add_embedding takes {expected} features, but addition_time_embed_dim="
                             f"{unet.config.addition_time_embed_dim} x {TIME_IDS} time ids + text_encoder_2 "
                             f"projection_dim={self._pooled_dim} make {passed}")
        if self._pooled_dim > token_dim:
            raise ValueError(f"text_encoder_2 projection_dim={self._pooled_dim} exceeds the embedding width "
                             f"{token_dim}: the pooled embedding does not fit in one embedding row")

    def _vae_dtype_for(self, vae, dtype: torch.dtype) -> torch.dtype:
        # SDXL's VAE overflows in float16 (force_upcast in its config); the pipeline decodes in
        # float32 then. bfloat16 has float32's range and runs as it is.
        if dtype == torch.float16 and getattr(vae.config, "force_upcast", False):
            return torch.float32
        return dtype

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path_or_id: str, *, device: str | None = None, dtype: str | None = None,
                        attention_resolution: int | None = None, local_files_only: bool = False) -> SDXLGenerator:
        """Load from a local SDXL directory or a hub id, as :meth:`DiffusersGenerator.from_pretrained
        <.generator.DiffusersGenerator.from_pretrained>` does, with ``text_encoder_2/``,
        ``tokenizer_2/`` and ``model_index.json``'s ``force_zeros_for_empty_prompt``.

        Raises:
            FileNotFoundError: a local directory lacks a component (names both).
            RuntimeError: a component, or a hub id's ``model_index.json``, fails to load.
            ValueError: the folder holds another family.
        """
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

        source = PretrainedSource.open(path_or_id, device, dtype, local_files_only, family=cls.family)
        load, torch_dtype = source.load, source.torch_dtype
        # use_safetensors=True: a pickle is never loaded (see DiffusersGenerator.from_pretrained).
        unet = load("unet", UNet2DConditionModel.from_pretrained, torch_dtype=torch_dtype, use_safetensors=True)
        vae = load("vae", AutoencoderKL.from_pretrained, torch_dtype=torch_dtype, use_safetensors=True)
        text_encoder = load("text_encoder", CLIPTextModel.from_pretrained, dtype=torch_dtype, use_safetensors=True)
        text_encoder_2 = load("text_encoder_2", CLIPTextModelWithProjection.from_pretrained, dtype=torch_dtype,
                              use_safetensors=True)
        tokenizer = load("tokenizer", CLIPTokenizer.from_pretrained)
        tokenizer_2 = load("tokenizer_2", CLIPTokenizer.from_pretrained)
        scheduler_config = load("scheduler", DDPMScheduler.load_config)
        index = _model_index(path_or_id, local_files_only)
        generator = cls(unet, vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, scheduler_config,
                        force_zeros_for_empty_prompt=index.get("force_zeros_for_empty_prompt", True),
                        attention_resolution=attention_resolution, device=source.device, dtype=torch_dtype,
                        name=str(path_or_id))
        return source.finish(generator)

    def save_pretrained(self, directory: str | Path) -> None:
        """Write the seven components and ``model_index.json`` in the SDXL layout."""
        d = Path(directory)
        super().save_pretrained(d)
        self.text_encoder_2.save_pretrained(d / "text_encoder_2")
        self.tokenizer_2.save_pretrained(d / "tokenizer_2")
        index = {"_class_name": "StableDiffusionXLPipeline",
                 "force_zeros_for_empty_prompt": self.force_zeros_for_empty_prompt,
                 "scheduler": ["diffusers", "DDPMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
                 "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
                 "tokenizer": ["transformers", "CLIPTokenizer"], "tokenizer_2": ["transformers", "CLIPTokenizer"],
                 "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}
        (d / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")

    # -- provenance ---------------------------------------------------------------------------

    def _hashed_modules(self) -> tuple[tuple[str, torch.nn.Module], ...]:
        return (*super()._hashed_modules(), ("text_encoder_2", self.text_encoder_2))

    def _hashed_tokenizers(self) -> tuple:
        return (self.tokenizer, self.tokenizer_2)

    def _hash_extra(self, h) -> None:
        # What conditions the UNet beyond weights and vocabularies: the pad tokens (SDXL's second
        # tokenizer pads with "!", and padding positions reach the UNet), zeroed unconditional
        # embeddings, and the size conditioning.
        h.update(json.dumps({"family": self.family, "pad_tokens": [self.tokenizer.pad_token, self.tokenizer_2.pad_token],
                             "force_zeros_for_empty_prompt": self.force_zeros_for_empty_prompt,
                             "time_ids": self._time_ids[0].tolist()}).encode())

    # -- the interface ------------------------------------------------------------------------

    @property
    def time_ids(self) -> torch.Tensor:
        """The size conditioning ``[6]``, float32: original size, crop top-left, target size."""
        return self._time_ids[0].clone()

    def _encode_prompt(self, prompt: str) -> torch.Tensor:
        """``[78, D]``: both encoders' penultimate hidden states side by side (77 rows), then the
        pooled row (the second encoder's projected pooled output, zero-padded to D)."""
        out_1 = self.text_encoder(_token_ids(self.tokenizer, prompt, self._device), output_hidden_states=True)
        out_2 = self.text_encoder_2(_token_ids(self.tokenizer_2, prompt, self._device), output_hidden_states=True)
        tokens = torch.cat([out_1.hidden_states[-2][0], out_2.hidden_states[-2][0]], dim=-1).float()   # [77, D]
        pooled = torch.zeros(1, tokens.shape[1], device=tokens.device)
        pooled[0, :self._pooled_dim] = out_2.text_embeds[0].float()                               # [1, D]
        return torch.cat([tokens, pooled])

    def embed_unconditional(self, batch_size: int) -> torch.Tensor:
        if self.force_zeros_for_empty_prompt:
            return torch.zeros(batch_size, *self._embedding_shape, device=self._device)
        return self.embed_prompts([""] * batch_size)

    def _unet_output(self, latents: torch.Tensor, t: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        if tuple(embeddings.shape[1:]) != self._embedding_shape:
            raise ValueError(f"SDXL embeddings must be [N, {self._embedding_shape[0]}, {self._embedding_shape[1]}] "
                             f"(77 token rows and the pooled row), got {list(embeddings.shape)}")
        emb = embeddings.to(self._device, self._dtype)
        n = latents.shape[0]
        added = {"text_embeds": emb[:, -1, :self._pooled_dim],                                  # [N, P]
                 "time_ids": self._time_ids.to(self._device, self._dtype).expand(n, TIME_IDS)}  # [N, 6]
        return self.unet(latents, t, encoder_hidden_states=emb[:, :-1], added_cond_kwargs=added).sample


def _model_index(path_or_id: str, local_files_only: bool) -> dict:
    """``model_index.json`` of a directory (``{}`` when it has none: the pipeline's defaults hold)
    or of a hub id (required: it says whether the unconditional embeddings are zeros).

    Raises:
        RuntimeError: a hub id's file cannot be loaded, or a file is not a JSON object (names it).
    """
    local = Path(path_or_id)
    if local.is_dir():
        path = local / "model_index.json"
        if not path.is_file():
            _logger.info("%s has no model_index.json: force_zeros_for_empty_prompt defaults to true", local)
            return {}
    else:
        from huggingface_hub import hf_hub_download

        try:
            path = Path(hf_hub_download(path_or_id, "model_index.json", local_files_only=local_files_only))
        except (OSError, ValueError) as e:
            raise RuntimeError(f"{path_or_id}: cannot load model_index.json: {e}") from e
    try:
        index = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RuntimeError(f"{path}: not a readable JSON file ({e})") from None
    if not isinstance(index, dict) or not isinstance(index.get("force_zeros_for_empty_prompt", True), bool):
        raise RuntimeError(f"{path}: expected a JSON object with a boolean force_zeros_for_empty_prompt")
    return index


def build_tiny_sdxl_generator(seed: int = 0, *, image_size: int = 32, device: str = "cpu",
                              **conditioning) -> SDXLGenerator:
    """A random-weight SDXL-architecture generator that runs in milliseconds on a CPU.

    As diffusers' SDXL pipeline tests build theirs: a UNet whose first down block has no attention
    (as SDXL's highest resolution has none) and whose attention blocks stack two transformer
    layers (as SDXL's stack 2 and 10), ``text_time`` added conditioning, two 2-layer CLIP text
    encoders of width 32 (the second with a projection), the tiny tokenizer for both (the second
    padding with ``!`` as SDXL's does). VAE scale factor 2; attention captured at latent / 2.
    ``conditioning``: ``force_zeros_for_empty_prompt``, ``original_size``,
    ``crops_coords_top_left``, ``target_size`` (see :class:`SDXLGenerator`).
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    if image_size % 4:
        raise ValueError(f"image_size={image_size}: must be a multiple of 4")
    latent = image_size // 2
    tokenizer, tokenizer_2 = tiny_tokenizer(), tiny_tokenizer()
    tokenizer_2.pad_token = "!"
    torch.manual_seed(seed)   # diffusers/transformers initialise from the global RNG
    unet = UNet2DConditionModel(
        sample_size=latent, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        norm_num_groups=8, attention_head_dim=(2, 4), use_linear_projection=True, transformer_layers_per_block=(1, 2),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=64, addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=TIME_IDS * 8 + 32)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        norm_num_groups=8, sample_size=image_size, scaling_factor=0.13025, force_upcast=True,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    # eos_token_id = the tiny tokenizer's: the pooled output is read at the first end-of-text token.
    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer.get_vocab()), hidden_size=32, intermediate_size=37, num_attention_heads=4,
        num_hidden_layers=2, max_position_embeddings=77, projection_dim=32, hidden_act="gelu",
        bos_token_id=0, eos_token_id=1, pad_token_id=1)
    text_encoder = CLIPTextModel(text_config)
    text_encoder_2 = CLIPTextModelWithProjection(text_config)
    scheduler_config = {"_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_start": 0.00085,
                        "beta_end": 0.012, "beta_schedule": "scaled_linear", "steps_offset": 1,
                        "clip_sample": False, "prediction_type": "epsilon", "set_alpha_to_one": False}
    return SDXLGenerator(unet, vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, scheduler_config,
                         attention_resolution=latent // 2, device=device, dtype=torch.float32,
                         name=f"tiny-random-sdxl(seed={seed})", **conditioning)


def build_sdxl_from_configs(config_dir: str | Path, *, image_size: int, dtype: torch.dtype = torch.float32,
                            vae_dtype: torch.dtype | None = None, words: Sequence[str] = TINY_WORDS,
                            init_device: str | torch.device = "cpu", device: str | torch.device = "cpu",
                            seed: int = 0, name: str = "sdxl-arch") -> SDXLGenerator:
    """An SDXL generator of a real architecture with random weights, from the component configs
    of an SDXL folder (``unet/ vae/ text_encoder/ text_encoder_2/ tokenizer*/tokenizer_config.json
    scheduler/ model_index.json``, no weights): it costs what the real model costs, so speed and
    memory are measured without the weights.

    Weights are drawn directly in ``dtype`` on ``init_device`` (SDXL's UNet is 10.3 GB in float32;
    a float32 copy on the way would not fit beside a bfloat16 one on a small machine); the VAE in
    ``vae_dtype`` (default ``dtype``; SDXL's overflows in float16, so keep it float32 there). Both
    tokenizers are the tiny BPE tokenizer over ``words``, padded to CLIP's 49,408 ids, with the
    folder's max length and pad token; the text encoders read the pooled output at its
    end-of-text id, as the real ones do at theirs. ``image_size`` sets the UNet's sample size.
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    root = Path(config_dir)
    tokenizers = []
    for folder in ("tokenizer", "tokenizer_2"):
        settings = json.loads((root / folder / "tokenizer_config.json").read_text())
        tokenizer = tiny_tokenizer(words=words, vocab_size=49408, max_length=settings["model_max_length"])
        tokenizer.pad_token = settings["pad_token"]           # "!" for tokenizer_2, as SDXL's
        tokenizers.append(tokenizer)
    torch.manual_seed(seed)   # diffusers/transformers initialise from the global RNG
    before = torch.get_default_dtype()
    try:
        with torch.device(init_device):
            torch.set_default_dtype(dtype)
            unet = UNet2DConditionModel.from_config({**UNet2DConditionModel.load_config(str(root / "unet")),
                                                     "sample_size": image_size // 8})
            torch.set_default_dtype(vae_dtype or dtype)
            vae = AutoencoderKL.from_config(AutoencoderKL.load_config(str(root / "vae")))
            torch.set_default_dtype(dtype)
            encoders = []
            for folder, cls in (("text_encoder", CLIPTextModel), ("text_encoder_2", CLIPTextModelWithProjection)):
                config = CLIPTextConfig.from_pretrained(str(root / folder))
                config.eos_token_id = tokenizers[0].eos_token_id
                encoders.append(cls(config))
    finally:
        torch.set_default_dtype(before)
    index = json.loads((root / "model_index.json").read_text())
    return SDXLGenerator(unet, vae, *encoders, *tokenizers, DDPMScheduler.load_config(str(root / "scheduler")),
                         force_zeros_for_empty_prompt=index["force_zeros_for_empty_prompt"], device=device,
                         dtype=dtype, name=name)
