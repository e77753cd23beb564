"""The one diffusion training step that both fits share: a fit from scratch and a LoRA fine-tune.

A step takes a batch of latents with their class conditioning (with prompt dropout to the
unconditional one, for classifier-free guidance), timesteps and noise, noises the latents along
the generator's schedule, and takes one optimizer step on the MSE of the UNet's prediction (ε or
v) against its target, over one batch or accumulated over several micro-batches.

The draws come from one ``torch.Generator`` in a fixed order (:func:`draw_batch`, the fit from
scratch: a resumed fit restores the generator's state) or from one generator per sample
(:func:`draw_sample_batch`, LoRA: a sample's draws do not depend on the micro-batching).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Literal, Optional, Sequence

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
               prediction_type: Literal["epsilon", "v_prediction"] = "epsilon",
               snr_gamma: Optional[float] = None) -> dict[str, torch.Tensor]:
    """One training batch: ``x_t``, ``t``, ``cond`` and the prediction ``target``; with
    ``snr_gamma``, also each sample's loss ``weight`` (:func:`min_snr_weight`).

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
    cond = _dropped(data.conditions[data.labels[idx]], data.unconditional, drop)   # [B, L] or [B, L, D]
    t = torch.randint(len(abar), (b,), generator=rng)
    noise = torch.randn(x0.shape, generator=rng)
    batch = _noised(x0, noise, t, cond, abar, prediction_type)
    if snr_gamma is not None:
        batch["weight"] = min_snr_weight(abar[t], snr_gamma, prediction_type)
    return batch


def min_snr_weight(abar_t: torch.Tensor, gamma: float,
                   prediction_type: Literal["epsilon", "v_prediction"] = "epsilon") -> torch.Tensor:
    """Min-SNR-γ loss weights (Hang et al., 2023) for timesteps with ᾱ ``abar_t`` ``[B]``.

    SNR = ᾱ / (1 - ᾱ). The weight turns each sample's loss into its x0 error weighted by
    min(SNR, γ): min(SNR, γ) / SNR for an ε target (whose error is SNR times the x0 error),
    min(SNR, γ) / (SNR + 1) for a v target; so noisy timesteps keep weight 1 (ε) and the nearly
    clean ones, whose ε is hard to predict and worth little to the samples, are down-weighted.
    """
    snr = abar_t / (1 - abar_t)
    clamped = torch.clamp(snr, max=gamma)
    return clamped / snr if prediction_type == "epsilon" else clamped / (snr + 1)


def draw_sample_batch(x0: torch.Tensor, labels: torch.Tensor, generators: Sequence[torch.Generator],
                      conditions: torch.Tensor, unconditional: torch.Tensor, alphas_cumprod: torch.Tensor,
                      prompt_dropout: float,
                      prediction_type: Literal["epsilon", "v_prediction"] = "epsilon") -> dict[str, torch.Tensor]:
    """A training batch of given latents, each row's draws from its own generator.

    Row ``i`` draws from ``generators[i]`` (a CPU generator), in this order: prompt dropout,
    timestep, noise; the batch is built where ``x0`` is.

    Args:
        x0: latents ``[B, C, H, W]``.
        labels: their classes ``[B]``.
        generators: one per row.
        conditions, unconditional, alphas_cumprod: as in :class:`DiffusionData`.
        prompt_dropout, prediction_type: as in :func:`draw_batch`.
    """
    b, device = len(x0), x0.device
    if len(generators) != b or len(labels) != b:
        raise ValueError(f"draw_sample_batch: {b} latents, {len(labels)} labels and {len(generators)} generators")
    drop, t, noise = [], [], []
    for g in generators:
        drop.append(bool(torch.rand((), generator=g) < prompt_dropout))
        t.append(int(torch.randint(len(alphas_cumprod), (), generator=g)))
        noise.append(torch.randn(x0.shape[1:], generator=g))
    cond = _dropped(conditions[labels.to(conditions.device)], unconditional,
                    torch.tensor(drop, device=conditions.device))                # [B, L, D]
    return _noised(x0, torch.stack(noise).to(device), torch.tensor(t, device=device), cond,
                   alphas_cumprod.to(device), prediction_type)


def _dropped(cond: torch.Tensor, unconditional: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
    """``cond`` with the rows where ``drop`` is true replaced by the unconditional row."""
    uncond = unconditional.reshape(1, *cond.shape[1:])
    return torch.where(drop.view(len(drop), *([1] * (cond.dim() - 1))), uncond, cond)


def _noised(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, abar: torch.Tensor,
            prediction_type: str) -> dict[str, torch.Tensor]:
    """``x_t = √ᾱ x0 + √(1-ᾱ) ε`` and the prediction target (ε, or v = √ᾱ ε - √(1-ᾱ) x0)."""
    a = abar[t].view(len(t), 1, 1, 1)
    target = noise if prediction_type == "epsilon" else a.sqrt() * noise - (1 - a).sqrt() * x0
    return {"x_t": a.sqrt() * x0 + (1 - a).sqrt() * noise, "t": t, "cond": cond, "target": target}


def diffusion_loss(pred: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The MSE of ``pred`` against ``batch["target"]``, each sample weighted by ``batch["weight"]``
    when the batch has weights (min-SNR: the weighted mean of per-sample MSEs)."""
    target = batch["target"].to(pred.device)
    if "weight" not in batch:
        return F.mse_loss(pred.float(), target)
    per_sample = F.mse_loss(pred.float(), target, reduction="none").flatten(1).mean(1)      # [B]
    return (per_sample * batch["weight"].to(pred.device)).mean()


def train_step(unet: torch.nn.Module, batch: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
               lr_scheduler: torch.optim.lr_scheduler.LRScheduler, grad_clip: float, device: torch.device,
               encode: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
               amp_dtype: Optional[torch.dtype] = None) -> float:
    """One optimizer step on the MSE of the UNet's prediction on one batch; returns the loss.

    Args: as :func:`accumulated_step`'s, with ``batch`` its only micro-batch.
    """
    return accumulated_step(unet, [batch], 1, optimizer, lr_scheduler, grad_clip, device, encode=encode,
                            amp_dtype=amp_dtype)


def accumulated_step(unet: torch.nn.Module, batches: Iterable[dict[str, torch.Tensor]], accumulation: int,
                     optimizer: torch.optim.Optimizer, lr_scheduler: torch.optim.lr_scheduler.LRScheduler,
                     grad_clip: float, device: torch.device,
                     encode: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                     amp_dtype: Optional[torch.dtype] = None,
                     scaler: Optional[torch.amp.GradScaler] = None) -> float:
    """One optimizer step on the MSE of the UNet's prediction, accumulated over micro-batches.

    Each micro-batch's mean loss is divided by ``accumulation`` before its backward pass, so
    ``accumulation`` micro-batches of ``b`` rows give the gradient of one batch of
    ``accumulation x b`` rows (the mean over all rows), while only one micro-batch's activations
    are alive at a time. Returns that mean loss.

    Args:
        unet: a diffusers ``UNet2DConditionModel`` (its trainable parameters are the optimizer's).
        batches: ``accumulation`` micro-batches from :func:`draw_batch` or :func:`draw_sample_batch`;
            may be lazy (a generator), so a micro-batch is made only when its turn comes.
        accumulation: how many ``batches`` yields.
        optimizer, lr_scheduler: stepped once each; gradients are clipped to ``grad_clip``
            (0: no clipping) over the optimizer's parameters first.
        device: where the networks are.
        encode: maps ``batch["cond"]`` (token ids) to prompt embeddings, inside the autocast and
            the graph (the text encoder trains too); None: ``cond`` already is the embeddings.
        amp_dtype: autocast dtype of the forward pass; None runs it in float32.
        scaler: float16's gradient scaler (scales the loss so small gradients do not underflow,
            unscales before clipping, skips a step whose gradients overflowed); None for the others.
    """
    optimizer.zero_grad(set_to_none=True)
    total, seen = torch.zeros((), device=device), 0
    for batch in batches:
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            cond = batch["cond"].to(device)
            emb = encode(cond) if encode is not None else cond                  # [B, L, D]
            pred = unet(batch["x_t"].to(device), batch["t"].to(device), encoder_hidden_states=emb).sample
        loss = diffusion_loss(pred, batch) / accumulation
        (scaler.scale(loss) if scaler is not None else loss).backward()
        total += loss.detach()
        seen += 1
    if seen != accumulation:
        raise ValueError(f"accumulated_step: {seen} micro-batches, expected accumulation={accumulation}")
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if scaler is not None:
        scaler.unscale_(optimizer)
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    lr_scheduler.step()
    return total.item()
