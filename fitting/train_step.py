"""The one diffusion training step that both fits share: a fit from scratch and a LoRA fine-tune.

A step draws a batch of latents, their class conditioning (with prompt dropout to the
unconditional one, for classifier-free guidance), timesteps and noise from one
``torch.Generator`` in a fixed order (so a resumed fit draws what an uninterrupted one would),
noises the latents along the generator's schedule, and takes one optimizer step on the MSE of
the UNet's prediction (ε or v) against its target.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal, Optional

import torch
import torch.nn.functional as F


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Linear warmup to 1, then cosine down to ``min_ratio`` at ``total`` (step counts from 0)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class DiffusionData:
    """What batches are drawn from.

    Attributes:
        latents: every training latent ``[N, C, H, W]`` (CPU).
        labels: their classes ``[N]``.
        conditions: per-class conditioning ``[K, ...]``: token ids ``[K, L]`` when the text
            encoder trains too, prompt embeddings ``[K, L, D]`` when it is frozen.
        unconditional: the empty prompt's conditioning, one row of the same kind (``[L]`` or
            ``[1, L, D]``).
        alphas_cumprod: the noise schedule's ᾱ_t ``[T]``.
    """

    latents: torch.Tensor
    labels: torch.Tensor
    conditions: torch.Tensor
    unconditional: torch.Tensor
    alphas_cumprod: torch.Tensor


def draw_batch(data: DiffusionData, batch_size: int, prompt_dropout: float, rng: torch.Generator,
               hflip: Optional[float] = None,
               prediction_type: Literal["epsilon", "v_prediction"] = "epsilon") -> dict[str, torch.Tensor]:
    """One training batch: ``x_t``, ``t``, ``cond`` and the prediction ``target``.

    Every draw comes from ``rng``, in this order: indices, flips (only when ``hflip`` is not
    None; a probability of 0 still draws, so the stream does not depend on the value), prompt
    dropout, timesteps, noise.
    """
    b = batch_size
    abar = data.alphas_cumprod
    idx = torch.randint(len(data.latents), (b,), generator=rng)
    x0 = data.latents[idx]                                                      # [B, C, H, W]
    if hflip is not None:
        flip = torch.rand(b, generator=rng) < hflip
        x0 = torch.where(flip.view(b, 1, 1, 1), x0.flip(-1), x0)
    drop = torch.rand(b, generator=rng) < prompt_dropout
    cond = data.conditions[data.labels[idx]]                                    # [B, L] or [B, L, D]
    uncond = data.unconditional.reshape(1, *cond.shape[1:])
    cond = torch.where(drop.view(b, *([1] * (cond.dim() - 1))), uncond, cond)
    t = torch.randint(len(abar), (b,), generator=rng)
    noise = torch.randn(x0.shape, generator=rng)
    a = abar[t].view(b, 1, 1, 1)
    target = noise if prediction_type == "epsilon" else a.sqrt() * noise - (1 - a).sqrt() * x0
    return {"x_t": a.sqrt() * x0 + (1 - a).sqrt() * noise, "t": t, "cond": cond, "target": target}


def train_step(unet: torch.nn.Module, batch: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
               lr_scheduler: torch.optim.lr_scheduler.LRScheduler, grad_clip: float, device: torch.device,
               encode: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
               amp_dtype: Optional[torch.dtype] = None) -> float:
    """One optimizer step on the MSE of the UNet's prediction; returns the loss.

    Args:
        unet: a diffusers ``UNet2DConditionModel`` (its trainable parameters are the optimizer's).
        batch: from :func:`draw_batch`.
        optimizer, lr_scheduler: stepped once each; gradients are clipped to ``grad_clip``
            (0: no clipping) over the optimizer's parameters first.
        device: where the networks are.
        encode: maps ``batch["cond"]`` (token ids) to prompt embeddings, inside the autocast and
            the graph (the text encoder trains too); None: ``cond`` already is the embeddings.
        amp_dtype: autocast dtype of the forward pass; None runs it in float32.
    """
    with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        cond = batch["cond"].to(device)
        emb = encode(cond) if encode is not None else cond                      # [B, L, D]
        pred = unet(batch["x_t"].to(device), batch["t"].to(device), encoder_hidden_states=emb).sample
    loss = F.mse_loss(pred.float(), batch["target"].to(device))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_([p for group in optimizer.param_groups for p in group["params"]], grad_clip)
    optimizer.step()
    lr_scheduler.step()
    return loss.item()
