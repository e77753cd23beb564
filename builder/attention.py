"""Capture class-token cross-attention from a diffusers UNet (ActGen's attentive image guidance).

A :class:`CaptureAttnProcessor` is installed, with ``unet.set_attn_processor(dict)``, only on the
cross-attention layers (``attn2``) of the down and up blocks whose feature map has the chosen
resolution (1/32 of the image side for Stable Diffusion: 16x16 at 512x512, i.e.
``down_blocks.2`` and ``up_blocks.1`` of SD 2.1; 32x32 at SDXL's 1024x1024, i.e. ``down_blocks.2``
and ``up_blocks.0``, 50 layers, as SDXL stacks ten transformer layers in each of their attention
blocks). Every other layer keeps the processor it had (diffusers' SDPA ``AttnProcessor2_0`` by
default). The mid block is never captured, as in the paper code. No diffusers model is edited.

The captured maps are softmax probabilities over the 77 text tokens, averaged over heads when
recorded and over layers when read. :meth:`AttentionStore.mask` also averages the two
classifier-free-guidance halves (as the paper code does) and the class-name tokens.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

_logger = logging.getLogger(__name__)


class AttentionStore:
    """Cross-attention probabilities recorded during the latest UNet call.

    Args:
        resolution: side of the square feature maps that are captured.
    """

    def __init__(self, resolution: int):
        if resolution < 1:
            raise ValueError(f"attention resolution must be >= 1, got {resolution}")
        self.resolution = resolution
        self.enabled = False
        self.layers: list[str] = []          # names of the layers a processor is installed on
        self._maps: dict[str, torch.Tensor] = {}

    def reset(self) -> None:
        self._maps = {}

    def record(self, layer: str, probs: torch.Tensor, heads: int) -> None:
        """Keep one layer's probabilities.

        Args:
            layer: processor name, e.g. ``up_blocks.1.attentions.0.transformer_blocks.0.attn2``.
            probs: ``[N * heads, Q, T]`` softmax output (N = UNet batch, Q = res², T = tokens).
            heads: number of attention heads.
        """
        nh, q, t = probs.shape
        if q != self.resolution**2:
            # Installation picks layers by their static resolution; a mismatch means the UNet
            # was called at a latent size the generator was not built for.
            raise RuntimeError(
                f"attention layer {layer}: query length {q} does not match the capture "
                f"resolution {self.resolution}x{self.resolution}; was the UNet called at another size?")
        # [N*heads, Q, T] -> [N, heads, Q, T] -> mean over heads -> [N, Q, T]; detached because
        # the mask steers the latent update, it is never differentiated through.
        self._maps[layer] = probs.detach().reshape(nh // heads, heads, q, t).float().mean(dim=1)

    def maps(self) -> torch.Tensor:
        """Probabilities averaged over the captured layers, ``[N, res, res, T]`` (sum 1 over T)."""
        if not self._maps:
            raise RuntimeError("no attention was captured; call predict_noise(..., capture_attention=True)")
        stacked = torch.stack(list(self._maps.values()))            # [L, N, Q, T]
        mean = stacked.mean(dim=0)                                  # [N, Q, T]
        n, _, t = mean.shape
        return mean.reshape(n, self.resolution, self.resolution, t)

    def mask(self, token_indices: Sequence[Sequence[int]], cfg_halves: int = 2) -> torch.Tensor:
        """Per-sample class-token attention, ``[B, res, res]``.

        Args:
            token_indices: for each of the B samples, the positions of its class-name tokens
                (averaged when a name has several).
            cfg_halves: how many stacked copies of the batch the UNet saw (2 with classifier-free
                guidance, laid out ``[uncond; cond]``); they are averaged, as in the paper code.
        """
        maps = self.maps()                                          # [N, r, r, T]
        n = maps.shape[0]
        b = len(token_indices)
        if n != cfg_halves * b:
            raise ValueError(f"UNet batch {n} is not cfg_halves={cfg_halves} x {b} samples")
        maps = maps.reshape(cfg_halves, b, *maps.shape[1:]).mean(dim=0)   # [B, r, r, T]
        out = []
        for i, idx in enumerate(token_indices):
            if len(idx) == 0:
                raise ValueError(f"sample {i}: empty token index list")
            out.append(maps[i, :, :, list(idx)].mean(dim=-1))
        return torch.stack(out)                                     # [B, r, r]


class CaptureAttnProcessor:
    """Plain (non-SDPA) attention that also records the probabilities while the store is enabled.

    Computes exactly what diffusers' ``AttnProcessor`` computes; the probabilities must be
    materialised to be recorded, which SDPA does not do, so only the captured layers pay for it.
    """

    def __init__(self, store: AttentionStore, layer: str):
        self.store = store
        self.layer = layer

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 *args, **kwargs) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape)
        attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)

        query = attn.head_to_batch_dim(query)                       # [N*heads, Q, d]
        key = attn.head_to_batch_dim(key)                           # [N*heads, T, d]
        value = attn.head_to_batch_dim(value)
        probs = attn.get_attention_scores(query, key, attention_mask)   # [N*heads, Q, T]
        if self.store.enabled:
            self.store.record(self.layer, probs, attn.heads)
        hidden_states = torch.bmm(probs, value)
        hidden_states = attn.batch_to_head_dim(hidden_states)

        hidden_states = attn.to_out[0](hidden_states)               # linear proj
        hidden_states = attn.to_out[1](hidden_states)               # dropout
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def block_resolutions(unet, latent_size: int) -> dict[str, int]:
    """Feature-map side of each down/up block (``'down_blocks.2' -> 16``) for a square latent.

    Read from the module structure: a down block halves the side after itself when it has a
    downsampler, an up block doubles it after itself when it has an upsampler.
    """
    out: dict[str, int] = {}
    side = latent_size
    for i, block in enumerate(unet.down_blocks):
        out[f"down_blocks.{i}"] = side
        if getattr(block, "downsamplers", None) is not None:
            side //= 2
    for i, block in enumerate(unet.up_blocks):
        out[f"up_blocks.{i}"] = side
        if getattr(block, "upsamplers", None) is not None:
            side *= 2
    return out


def install_attention_capture(unet, latent_size: int, resolution: int) -> AttentionStore:
    """Install capture processors on the matching cross-attention layers; return their store.

    Raises:
        ValueError: no down/up block of the UNet has feature maps of side ``resolution``.
    """
    sides = block_resolutions(unet, latent_size)
    store = AttentionStore(resolution)
    processors = dict(unet.attn_processors)        # keep every existing processor by default
    for name in processors:
        block = ".".join(name.split(".")[:2])        # 'up_blocks.1'
        if name.endswith("attn2.processor") and sides.get(block) == resolution:
            layer = name[: -len(".processor")]
            processors[name] = CaptureAttnProcessor(store, layer)
            store.layers.append(layer)
    if not store.layers:
        # Only the sides that have cross-attention: SDXL's highest resolution has none.
        available = sorted({sides[".".join(n.split(".")[:2])] for n in processors
                            if n.endswith("attn2.processor") and ".".join(n.split(".")[:2]) in sides})
        raise ValueError(f"attention_resolution={resolution}: no down/up cross-attention layer has that "
                         f"feature-map side at latent size {latent_size}; available sides: {available}")
    unet.set_attn_processor(processors)
    _logger.debug("capturing cross-attention at %dx%d on %s", resolution, resolution, store.layers)
    return store
