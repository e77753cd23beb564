"""Fit a small text-conditional diffusion model on a labeled data set, from scratch.

The result is a Stable Diffusion-layout directory (``unet/ vae/ text_encoder/ tokenizer/
scheduler/``) that :meth:`DiffusersGenerator.from_pretrained` loads like any other, plus
``fit_record.json`` (data-set fingerprint, prompts, steps, seed, loss curve), per-class sample
grids under ``samples/`` and a resumable checkpoint under ``checkpoints/``.

Design:

* **Pixel space.** The builder's loader needs an ``AutoencoderKL``. A one-level autoencoder
  (scale factor 1, 3 latent channels) is fitted first to be the identity: its encoder mean is
  trained towards the image itself and its decoder to reconstruct from the image or the encoded
  latent plus a little noise; its log-variance is then pinned to the minimum (-30), so encoding is
  deterministic. Latents are the pixels (up to the autoencoder's small error), so the UNet, its
  cross-attention maps (at ``model.capture_resolution``) and the sampler's gradients through
  ``decode_latents`` are those of a pixel-space model, and the builder's attention-mask and
  embedding-gradient mechanisms run unchanged.
* **Text conditioning.** A CLIP text encoder and a CLIP BPE tokenizer whose whole-word tokens are
  the prompt vocabulary (template words and class-name words), trained jointly with the UNet on
  ``prompt_template.format(class_name)``; with probability ``prompt_dropout`` the prompt is ""
  so the unconditional branch of classifier-free guidance is learned too.
* **Exact resume.** Every random draw after initialisation comes from one ``torch.Generator``
  whose state is checkpointed with the weights, the EMA, the optimizer and the LR schedule.
"""
from __future__ import annotations

import copy
import json
import logging
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F

from actgen.shards.sources import LabeledImages, load_source

from .fit_config import FitConfig, FitModelConfig, fit_config_to_dict
from .generator import DiffusersGenerator, tiny_tokenizer

_logger = logging.getLogger(__name__)

CHECKPOINT = "checkpoints/last.pt"
RECORD = "fit_record.json"
LOGVAR_MIN = -30.0        # DiagonalGaussianDistribution clamps logvar to [-30, 20]


@dataclass(frozen=True)
class FitResult:
    """What :func:`run` returns.

    Attributes:
        output: the generator directory (complete only when ``finished``).
        step: optimizer steps done.
        finished: all ``train.steps`` done and the generator written.
        losses: the per-step training loss, from step 1.
        grids: sample-grid PNGs written by this call.
        seconds: wall time of this call.
    """

    output: Path
    step: int
    finished: bool
    losses: list[float]
    grids: list[Path]
    seconds: float


# -- pure pieces ------------------------------------------------------------------------------


def prompt_vocabulary(template: str, class_names: list[str]) -> list[str]:
    """Lower-case words of the template and of every class name, in first-seen order."""
    text = " ".join([template.replace("{}", " ")] + list(class_names)).lower()
    return list(dict.fromkeys(re.findall(r"[a-z]+", text)))


def class_prompts(template: str, class_names: list[str]) -> list[str]:
    return [template.format(name) for name in class_names]


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Linear warmup to 1, then cosine down to ``min_ratio`` at ``total`` (step counts from 0)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def ema_decay(step: int, decay: float) -> float:
    """The usual warmup of the EMA decay, so early averages are not dominated by the random init."""
    return min(decay, (1 + step) / (10 + step))


# -- models -----------------------------------------------------------------------------------


def build_models(cfg: FitModelConfig, vocabulary: list[str], seed: int):
    """Random-weight UNet, autoencoder, text encoder and tokenizer for ``cfg``."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = tiny_tokenizer(vocabulary, max_length=cfg.text_max_length)
    levels = len(cfg.block_out_channels)
    torch.manual_seed(seed)   # diffusers/transformers initialise from the global RNG
    unet = UNet2DConditionModel(
        sample_size=cfg.image_size, in_channels=3, out_channels=3, layers_per_block=cfg.layers_per_block,
        block_out_channels=tuple(cfg.block_out_channels), norm_num_groups=8,
        cross_attention_dim=cfg.cross_attention_dim, attention_head_dim=cfg.attention_head_dim,
        down_block_types=("CrossAttnDownBlock2D",) * levels, up_block_types=("CrossAttnUpBlock2D",) * levels)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=3, block_out_channels=(cfg.autoencoder_channels,),
        layers_per_block=1, norm_num_groups=8, sample_size=cfg.image_size, scaling_factor=1.0,
        mid_block_add_attention=False,
        down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",))
    d = cfg.cross_attention_dim
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer.get_vocab()), hidden_size=d, intermediate_size=2 * d,
        num_attention_heads=max(1, d // 16), num_hidden_layers=cfg.text_layers,
        max_position_embeddings=cfg.text_max_length, bos_token_id=0, eos_token_id=1, pad_token_id=1))
    return unet, vae, text_encoder, tokenizer


def scheduler_config(cfg: FitConfig) -> dict:
    return {"_class_name": "DDPMScheduler", "num_train_timesteps": cfg.num_train_timesteps,
            "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": cfg.noise_schedule, "steps_offset": 1,
            "clip_sample": False, "prediction_type": "epsilon", "set_alpha_to_one": False,
            "timestep_spacing": "leading"}


def load_images(data: LabeledImages, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All images ``[N, 3, size, size]`` in [-1, 1] (bicubic resize) and labels ``[N]``."""
    from PIL import Image

    arrays = np.stack([np.asarray(data.image(i).convert("RGB").resize((size, size), Image.BICUBIC))
                       for i in range(len(data))])                               # [N, S, S, 3] uint8
    images = torch.from_numpy(arrays).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return images, torch.from_numpy(np.asarray(data.labels(), dtype=np.int64))


def fit_autoencoder(vae, images: torch.Tensor, steps: int, lr: float, batch_size: int,
                    rng: torch.Generator, device: torch.device) -> list[float]:
    """Train ``vae`` towards the identity (see the module docstring), then pin its variance."""
    vae.train().requires_grad_(True)
    opt = torch.optim.Adam(vae.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        x = images[torch.randint(len(images), (batch_size,), generator=rng)].to(device)
        noise = torch.randn(x.shape, generator=rng).to(device)
        # The encoder mean is the image; the decoder maps the image or the encoded latent, each
        # with a little noise (latents from diffusion are never exact), back to the image.
        mean = vae.encode(x).latent_dist.mean
        z = torch.cat([mean, x]) + 0.05 * torch.cat([noise, noise])
        loss = F.mse_loss(mean, x) + F.mse_loss(vae.decode(z).sample, torch.cat([x, x]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        # quant_conv maps [mean | logvar] -> [mean | logvar]; zero the logvar rows and set their bias
        # to the minimum: std = exp(-15), so encode_image is deterministic.
        c = vae.config.latent_channels
        vae.quant_conv.weight[c:] = 0
        vae.quant_conv.bias[c:] = LOGVAR_MIN
    vae.eval().requires_grad_(False)
    return losses


class EMA:
    """Exponential moving average of a set of modules' float parameters (float32 copies)."""

    def __init__(self, modules: dict[str, torch.nn.Module]):
        self.shadow = {f"{name}.{k}": p.detach().float().clone()
                       for name, m in modules.items() for k, p in m.named_parameters()}

    @torch.no_grad()
    def update(self, modules: dict[str, torch.nn.Module], decay: float) -> None:
        for name, m in modules.items():
            for k, p in m.named_parameters():
                self.shadow[f"{name}.{k}"].lerp_(p.detach().float(), 1 - decay)

    @torch.no_grad()
    def copy_to(self, modules: dict[str, torch.nn.Module]) -> None:
        for name, m in modules.items():
            for k, p in m.named_parameters():
                p.copy_(self.shadow[f"{name}.{k}"].to(p.dtype))


# -- the fit ----------------------------------------------------------------------------------


def run(cfg: FitConfig, resume: bool = False, stop_after: Optional[int] = None) -> FitResult:
    """Fit the generator; write it to ``cfg.output``.

    Args:
        cfg: the fit.
        resume: continue from ``<output>/checkpoints/last.pt`` (same config required).
        stop_after: stop after this many steps in total (checkpointing), without writing the
            generator; for tests and time-boxed runs.

    Raises:
        FileExistsError: ``output`` holds a checkpoint and ``resume`` is false.
        ValueError: the checkpoint was written by a different config or data set.
    """
    t_start = time.time()
    out = Path(cfg.output)
    ckpt_path = out / CHECKPOINT
    if ckpt_path.exists() and not resume:
        raise FileExistsError(f"{ckpt_path}: a fit already started here; pass resume=True (--resume) "
                              f"to continue it, or choose another output")
    tc = cfg.train
    device = torch.device("cuda" if tc.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if tc.device == "auto" else tc.device))
    amp_dtype = {"auto": torch.bfloat16 if device.type == "cuda" else None, "fp32": None,
                 "bf16": torch.bfloat16, "fp16": torch.float16}[tc.precision]

    # 1. Data and prompts.
    data = load_source(cfg.data)
    class_names = list(data.class_names)
    images, labels = load_images(data, cfg.model.image_size)
    prompts = class_prompts(cfg.prompt_template, class_names)
    vocabulary = prompt_vocabulary(cfg.prompt_template, class_names)
    _logger.info("fitting on %s: %d images, %d classes, %dx%d; prompts like %r", cfg.data.path, len(images),
                 len(class_names), cfg.model.image_size, cfg.model.image_size, prompts[0])

    # 2. Models, tokenized prompts, the noise schedule.
    unet, vae, text_encoder, tokenizer = build_models(cfg.model, vocabulary, tc.seed)
    for module in (unet, vae, text_encoder):
        module.to(device)
    ids = tokenizer(prompts + [""], padding="max_length", max_length=cfg.model.text_max_length,
                    truncation=True, return_tensors="pt").input_ids                      # [K+1, L]
    class_ids, uncond_ids = ids[:-1], ids[-1]
    from diffusers import DDPMScheduler

    sched_cfg = scheduler_config(cfg)
    noise_scheduler = DDPMScheduler.from_config(sched_cfg)
    abar = noise_scheduler.alphas_cumprod.float()
    trainable = {"unet": unet, "text_encoder": text_encoder}
    params = [p for m in trainable.values() for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay)
    lr_sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, tc.steps, tc.warmup_steps, tc.min_lr_ratio))
    rng = torch.Generator().manual_seed(tc.seed)
    config_dict = fit_config_to_dict(cfg)

    # 3. Start or resume.
    step, losses, ae_losses = 0, [], []
    if resume and ckpt_path.exists():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        _check_resume(state, config_dict, data.fingerprint, ckpt_path)
        vae.load_state_dict(state["vae"])
        unet.load_state_dict(state["unet"])
        text_encoder.load_state_dict(state["text_encoder"])
        ema = EMA(trainable)
        ema.shadow = state["ema"]
        opt.load_state_dict(state["optimizer"])
        lr_sched.load_state_dict(state["lr_scheduler"])
        rng.set_state(state["rng"])
        step, losses, ae_losses = int(state["step"]), list(state["losses"]), list(state["ae_losses"])
        vae.eval().requires_grad_(False)
        _logger.info("resumed %s at step %d/%d", ckpt_path, step, tc.steps)
    else:
        ae_losses = fit_autoencoder(vae, images, tc.autoencoder_steps, tc.autoencoder_lr,
                                    min(tc.batch_size, 64), rng, device)
        if ae_losses:
            _logger.info("autoencoder: %d steps, loss %.5f -> %.5f", len(ae_losses), ae_losses[0], ae_losses[-1])
        ema = EMA(trainable)
    with torch.no_grad():   # the encoder is deterministic (pinned variance): cache every latent
        latents = torch.cat([vae.encode(images[i:i + 256].to(device)).latent_dist.mean.cpu()
                             for i in range(0, len(images), 256)])                  # [N, 3, S, S]

    # 4. Train.
    end = tc.steps if stop_after is None else min(tc.steps, stop_after)
    grids: list[Path] = []
    bar = _progress(tc.progress, step, tc.steps)
    unet.train()
    text_encoder.train()
    t_log, running = time.time(), []
    while step < end:
        batch = _draw_batch(latents, labels, class_ids, uncond_ids, abar, tc, rng)
        loss = _train_step(unet, text_encoder, batch, device, amp_dtype)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if tc.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, tc.grad_clip)
        opt.step()
        lr_sched.step()
        ema.update(trainable, ema_decay(step, tc.ema_decay))
        step += 1
        losses.append(loss.item())
        running.append(losses[-1])
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4f}", avg=f"{np.mean(running[-50:]):.4f}")
        if step % tc.log_every == 0 or step == end:
            dt = time.time() - t_log
            _logger.info("step %d/%d  loss %.4f (%.4f)  lr %.2e  %.1f it/s", step, tc.steps, losses[-1],
                         float(np.mean(running)), lr_sched.get_last_lr()[0], len(running) / max(dt, 1e-9))
            t_log, running = time.time(), []
        if (tc.sample_every and step % tc.sample_every == 0) or step == tc.steps:
            gen = _ema_generator(cfg, unet, vae, text_encoder, tokenizer, ema, sched_cfg, device)
            grids.append(write_grid(gen, class_names, prompts, cfg, out / "samples" / f"step-{step:06d}.png"))
        if step % tc.checkpoint_every == 0 or step == end:
            _save_checkpoint(ckpt_path, {
                "step": step, "config": config_dict, "fingerprint": data.fingerprint,
                "vae": vae.state_dict(), "unet": unet.state_dict(), "text_encoder": text_encoder.state_dict(),
                "ema": ema.shadow, "optimizer": opt.state_dict(), "lr_scheduler": lr_sched.state_dict(),
                "rng": rng.get_state(), "losses": losses, "ae_losses": ae_losses})
    if bar is not None:
        bar.close()

    # 5. The generator: EMA weights in the Stable Diffusion layout, and the record.
    finished = step >= tc.steps
    if finished:
        gen = _ema_generator(cfg, unet, vae, text_encoder, tokenizer, ema, sched_cfg, device)
        gen.save_pretrained(out)
        _write_record(out, cfg, config_dict, data, prompts, vocabulary, losses, ae_losses, gen, time.time() - t_start)
        _logger.info("wrote generator %s (load with generator.path=%s generator.attention_resolution=%d)",
                     out, out, cfg.model.capture_resolution)
    return FitResult(output=out, step=step, finished=finished, losses=losses, grids=grids,
                     seconds=time.time() - t_start)


def _draw_batch(latents, labels, class_ids, uncond_ids, abar, tc, rng) -> dict[str, torch.Tensor]:
    """One training batch; every draw from ``rng`` in a fixed order (exact resume)."""
    b = tc.batch_size
    idx = torch.randint(len(latents), (b,), generator=rng)
    x0 = latents[idx]                                                          # [B, 3, S, S]
    flip = torch.rand(b, generator=rng) < tc.hflip
    x0 = torch.where(flip.view(b, 1, 1, 1), x0.flip(-1), x0)
    drop = torch.rand(b, generator=rng) < tc.prompt_dropout
    ids = torch.where(drop.view(b, 1), uncond_ids.view(1, -1), class_ids[labels[idx]])   # [B, L]
    t = torch.randint(len(abar), (b,), generator=rng)
    noise = torch.randn(x0.shape, generator=rng)
    a = abar[t].view(b, 1, 1, 1)
    return {"x_t": a.sqrt() * x0 + (1 - a).sqrt() * noise, "t": t, "ids": ids, "noise": noise}


def _train_step(unet, text_encoder, batch, device, amp_dtype) -> torch.Tensor:
    """ε-prediction MSE; the networks run under autocast when ``amp_dtype`` is set."""
    with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        emb = text_encoder(batch["ids"].to(device))[0]                             # [B, L, D]
        pred = unet(batch["x_t"].to(device), batch["t"].to(device), encoder_hidden_states=emb).sample
    return F.mse_loss(pred.float(), batch["noise"].to(device))


def _ema_generator(cfg, unet, vae, text_encoder, tokenizer, ema, sched_cfg, device) -> DiffusersGenerator:
    """A builder generator over copies of the networks carrying the EMA weights."""
    unet_e, text_e = copy.deepcopy(unet), copy.deepcopy(text_encoder)
    ema.copy_to({"unet": unet_e, "text_encoder": text_e})
    return DiffusersGenerator(unet_e, copy.deepcopy(vae), text_e, tokenizer, sched_cfg,
                              attention_resolution=cfg.model.capture_resolution, device=device,
                              name=f"fit:{cfg.output}")


def write_grid(generator, class_names: list[str], prompts: list[str], cfg: FitConfig, path: Path) -> Path:
    """Render ``sample.per_class`` txt2img images per class with the builder's sampler; one row per class."""
    from PIL import Image

    from .sampler import GuidanceConfig, GuidedSampler

    sc = cfg.sample
    sampler = GuidedSampler(generator, GuidanceConfig(num_steps=sc.num_steps, reference_steps=sc.num_steps,
                                                      cfg_scale=sc.cfg_scale))
    rows = []
    for label, (name, prompt) in enumerate(zip(class_names, prompts)):
        n = sc.per_class
        with torch.no_grad():
            images = sampler.sample([prompt] * n, [name] * n, [label] * n,
                                    [sc.seed + label * n + j for j in range(n)], ["txt2img"] * n).images
        rows.append(torch.cat(list(images), dim=-1))                              # [3, S, n*S]
    grid = ((torch.cat(rows, dim=-2).clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    scale = max(1, 64 // cfg.model.image_size)   # small images are enlarged (nearest) to be seen
    Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST).save(path)
    return path


def _progress(enabled: bool, initial: int, total: int):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="fit", unit="step", dynamic_ncols=True)


def _check_resume(state: dict, config_dict: dict, fingerprint: str, path: Path) -> None:
    if state["fingerprint"] != fingerprint:
        raise ValueError(f"{path}: written for data set {state['fingerprint'][:12]}, data is {fingerprint[:12]}")
    if state["config"] != config_dict:
        keys = sorted(_diff(state["config"], config_dict))
        raise ValueError(f"{path}: written with another config (differs at {', '.join(keys)}); "
                         f"resume with the same config")


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [k for key in sorted(set(a) | set(b)) for k in _diff(a.get(key), b.get(key), f"{prefix}{key}.")]
    return [] if a == b else [prefix.rstrip(".")]


def _save_checkpoint(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)   # atomic: a kill mid-write leaves the previous checkpoint


def _write_record(out: Path, cfg: FitConfig, config_dict: dict, data: LabeledImages, prompts: list[str],
                  vocabulary: list[str], losses: list[float], ae_losses: list[float], gen: DiffusersGenerator,
                  seconds: float) -> None:
    record = {
        "format": "actgen-fit-record/1",
        "data": {"path": cfg.data.path, "fingerprint": data.fingerprint, "num_images": len(data),
                 "class_names": list(data.class_names)},
        "prompts": prompts, "prompt_template": cfg.prompt_template, "vocabulary": vocabulary,
        "steps": len(losses), "seed": cfg.train.seed, "seconds": round(seconds, 1),
        "builder_settings": {"generator.path": str(out),
                             "generator.attention_resolution": cfg.model.capture_resolution,
                             "generator.prompt_template": cfg.prompt_template},
        "weights_sha256": gen.weights_hash(),
        "losses": [round(v, 6) for v in losses], "autoencoder_losses": [round(v, 6) for v in ae_losses],
        "config": config_dict,
    }
    tmp = out / (RECORD + ".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, out / RECORD)
