"""Fit a small text-conditional diffusion model on a labeled data set, from scratch.

The result is a Stable Diffusion-layout directory (``unet/ vae/ text_encoder/ tokenizer/
scheduler/``) that :meth:`DiffusersGenerator.from_pretrained` loads like any other, plus
``fit_record.json`` (:mod:`actgen.shards.fit_record`: data-set fingerprint, prompts, steps, seed,
loss curve), per-class sample grids under ``samples/`` and a resumable checkpoint under
``checkpoints/`` (:mod:`actgen.fitting.checkpoint`).

Design:

* **Pixel space.** The autoencoder is fitted to the identity first, so the UNet is a pixel-space
  model the builder's loader and guidance handle unchanged (see :mod:`actgen.fitting.models`).
* **Text conditioning.** A CLIP text encoder and a CLIP BPE tokenizer whose whole-word tokens are
  the prompt vocabulary (template words and class-name words), trained jointly with the UNet on
  ``prompt_template.format(class_name)``; with probability ``prompt_dropout`` the prompt is ""
  so the unconditional branch of classifier-free guidance is learned too.
* **Exact resume.** Every random draw after initialisation comes from one ``torch.Generator``
  whose state is checkpointed with the weights, the EMA, the optimizer and the LR schedule.
"""
from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from actgen.builder.generator import DiffusersGenerator
from actgen.shards.fit_record import FitData, FitRecord, write_fit_record
from actgen.shards.runtime import resolve_device
from actgen.shards.sources import LabeledImages, load_source

from .checkpoint import check_resume, load_checkpoint, save_checkpoint
from .config import FitConfig, checkpoint_path, fit_config_to_dict
from .data import class_prompts, load_images, prompt_vocabulary
from .models import EMA, build_models, ema_decay, encode_all, fit_autoencoder, scheduler_config
from .progress import progress_bar
from .train_step import DiffusionData, draw_batch, lr_factor, train_step

_logger = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class _Inputs:
    """The data set as the fit sees it."""

    data: LabeledImages
    images: torch.Tensor            # [N, 3, S, S] in [-1, 1]
    labels: torch.Tensor            # [N]
    prompts: list[str]              # one per class
    vocabulary: list[str]


class _Fit:
    """The networks, the optimisation and the progress of one fit: what a checkpoint holds."""

    def __init__(self, cfg: FitConfig, inputs: _Inputs, device: torch.device):
        tc = cfg.train
        self.cfg, self.device = cfg, device
        self.amp_dtype = {"auto": torch.bfloat16 if device.type == "cuda" else None, "fp32": None,
                          "bf16": torch.bfloat16, "fp16": torch.float16}[tc.precision]
        self.unet, self.vae, self.text_encoder, self.tokenizer = build_models(cfg.model, inputs.vocabulary, tc.seed)
        for module in (self.unet, self.vae, self.text_encoder):
            module.to(device)
        ids = self.tokenizer(inputs.prompts + [""], padding="max_length", max_length=cfg.model.text_max_length,
                             truncation=True, return_tensors="pt").input_ids             # [K+1, L]
        self.class_ids, self.uncond_ids = ids[:-1], ids[-1]
        from diffusers import DDPMScheduler

        self.sched_cfg = scheduler_config(cfg)
        self.abar = DDPMScheduler.from_config(self.sched_cfg).alphas_cumprod.float()
        self.trainable = {"unet": self.unet, "text_encoder": self.text_encoder}
        params = [p for m in self.trainable.values() for p in m.parameters()]
        self.opt = torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay)
        self.lr_sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: lr_factor(s, tc.steps, tc.warmup_steps, tc.min_lr_ratio))
        self.rng = torch.Generator().manual_seed(tc.seed)
        self.ema: Optional[EMA] = None
        self.step, self.losses, self.ae_losses = 0, [], []

    def start(self, images: torch.Tensor) -> None:
        """A new fit: the autoencoder first (see :mod:`actgen.fitting.models`), then the EMA."""
        tc = self.cfg.train
        self.ae_losses = fit_autoencoder(self.vae, images, tc.autoencoder_steps, tc.autoencoder_lr,
                                         min(tc.batch_size, 64), self.rng, self.device)
        if self.ae_losses:
            _logger.info("autoencoder: %d steps, loss %.5f -> %.5f", len(self.ae_losses), self.ae_losses[0],
                         self.ae_losses[-1])
        self.ema = EMA(self.trainable)

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint's state (checked against this config and data already)."""
        self.vae.load_state_dict(state["vae"])
        self.unet.load_state_dict(state["unet"])
        self.text_encoder.load_state_dict(state["text_encoder"])
        self.ema = EMA(self.trainable)
        self.ema.shadow = state["ema"]
        self.opt.load_state_dict(state["optimizer"])
        self.lr_sched.load_state_dict(state["lr_scheduler"])
        self.rng.set_state(state["rng"])
        self.step, self.losses, self.ae_losses = int(state["step"]), list(state["losses"]), list(state["ae_losses"])
        self.vae.eval().requires_grad_(False)

    def state(self, config_dict: dict, fingerprint: str) -> dict[str, Any]:
        """The checkpoint: tensors and plain values only (it is loaded with ``weights_only=True``)."""
        return {"step": self.step, "config": config_dict, "fingerprint": fingerprint,
                "vae": self.vae.state_dict(), "unet": self.unet.state_dict(),
                "text_encoder": self.text_encoder.state_dict(), "ema": self.ema.shadow,
                "optimizer": self.opt.state_dict(), "lr_scheduler": self.lr_sched.state_dict(),
                "rng": self.rng.get_state(), "losses": self.losses, "ae_losses": self.ae_losses}

    def train_one(self, data: DiffusionData) -> float:
        """One optimizer step of the UNet and the text encoder, then the EMA."""
        tc = self.cfg.train
        batch = draw_batch(data, tc.batch_size, tc.prompt_dropout, self.rng, hflip=tc.hflip,
                           snr_gamma=tc.snr_gamma)
        loss = train_step(self.unet, batch, self.opt, self.lr_sched, tc.grad_clip, self.device,
                          encode=lambda ids: self.text_encoder(ids)[0], amp_dtype=self.amp_dtype)
        self.ema.update(self.trainable, ema_decay(self.step, tc.ema_decay))
        self.step += 1
        self.losses.append(loss)
        return loss

    def ema_generator(self) -> DiffusersGenerator:
        """A builder generator over copies of the networks carrying the EMA weights."""
        unet_e, text_e = copy.deepcopy(self.unet), copy.deepcopy(self.text_encoder)
        self.ema.copy_to({"unet": unet_e, "text_encoder": text_e})
        return DiffusersGenerator(unet_e, copy.deepcopy(self.vae), text_e, self.tokenizer, self.sched_cfg,
                                  attention_resolution=self.cfg.model.capture_resolution, device=self.device,
                                  name=f"fit:{self.cfg.output}")


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
        ValueError: the checkpoint was written by a different config or data set, or is not a
            fit checkpoint (FormatError; a file with pickled code is refused unread).
        RuntimeError: ``train.device=cuda`` without a CUDA device.
    """
    t_start = time.time()
    out = Path(cfg.output)
    ckpt_path = checkpoint_path(out)
    if ckpt_path.exists() and not resume:
        raise FileExistsError(f"{ckpt_path}: a fit already started here; pass resume=True (--resume) "
                              f"to continue it, or choose another output")
    device = torch.device(resolve_device(cfg.train.device, key="train.device"))
    config_dict = fit_config_to_dict(cfg)

    # 1. Data and prompts.
    inputs = _load_inputs(cfg)
    # 2. The checkpoint to continue from, checked against this config and data before any work.
    saved = None
    if resume and ckpt_path.exists():
        saved = load_checkpoint(ckpt_path)
        check_resume(saved, config_dict, inputs.data.fingerprint, ckpt_path)
    # 3. Models, tokenized prompts, the noise schedule; then resume, or fit the autoencoder.
    fit = _Fit(cfg, inputs, device)
    if saved is not None:
        fit.restore(saved)
        _logger.info("resumed %s at step %d/%d", ckpt_path, fit.step, cfg.train.steps)
    else:
        fit.start(inputs.images)
    data = DiffusionData(latents=encode_all(fit.vae, inputs.images, device), labels=inputs.labels,
                         conditions=fit.class_ids, unconditional=fit.uncond_ids, alphas_cumprod=fit.abar)
    # 4. Train.
    end = cfg.train.steps if stop_after is None else min(cfg.train.steps, stop_after)
    deadline = None if cfg.train.max_seconds is None else time.time() + cfg.train.max_seconds
    grids = _train(fit, data, inputs, end, config_dict, ckpt_path, deadline)
    # 5. The generator: EMA weights in the Stable Diffusion layout, and the record.
    timed_out = deadline is not None and fit.step < end
    if timed_out:
        _logger.warning("train.max_seconds=%g ran out at step %d/%d: writing the generator of the steps done",
                        cfg.train.max_seconds, fit.step, cfg.train.steps)
    finished = fit.step >= cfg.train.steps or timed_out
    if finished:
        _save_generator(fit, inputs, config_dict, time.time() - t_start)
    return FitResult(output=out, step=fit.step, finished=finished, losses=fit.losses, grids=grids,
                     seconds=time.time() - t_start)


def _load_inputs(cfg: FitConfig) -> _Inputs:
    data = load_source(cfg.data)
    class_names = list(data.class_names)
    images, labels = load_images(data, cfg.model.image_size)
    prompts = class_prompts(cfg.prompt_template, class_names)
    _logger.info("fitting on %s: %d images, %d classes, %dx%d; prompts like %r", cfg.data.path, len(images),
                 len(class_names), cfg.model.image_size, cfg.model.image_size, prompts[0])
    return _Inputs(data=data, images=images, labels=labels, prompts=prompts,
                   vocabulary=prompt_vocabulary(cfg.prompt_template, class_names))


def _train(fit: _Fit, data: DiffusionData, inputs: _Inputs, end: int, config_dict: dict,
           ckpt_path: Path, deadline: Optional[float] = None) -> list[Path]:
    """Steps up to ``end`` (or the ``deadline``): log lines, sample grids and checkpoints on their intervals."""
    cfg, tc = fit.cfg, fit.cfg.train
    grids: list[Path] = []
    bar = progress_bar(tc.progress, fit.step, tc.steps)
    fit.unet.train()
    fit.text_encoder.train()
    t_log, running = time.time(), []
    while fit.step < end:
        running.append(fit.train_one(data))
        step = fit.step
        boxed = deadline is not None and step < end and time.time() >= deadline
        if boxed:
            end = step          # the time box ran out: this step is the last (logged, sampled, checkpointed)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{running[-1]:.4f}", avg=f"{np.mean(running[-50:]):.4f}")
        if step % tc.log_every == 0 or step == end:
            dt = time.time() - t_log
            _logger.info("step %d/%d  loss %.4f (%.4f)  lr %.2e  %.1f it/s", step, tc.steps, running[-1],
                         float(np.mean(running)), fit.lr_sched.get_last_lr()[0], len(running) / max(dt, 1e-9))
            t_log, running = time.time(), []
        if (tc.sample_every and step % tc.sample_every == 0) or step == tc.steps or boxed:
            path = Path(cfg.output) / "samples" / f"step-{step:06d}.png"
            grids.append(write_grid(fit.ema_generator(), list(inputs.data.class_names), inputs.prompts, cfg, path))
        if step % tc.checkpoint_every == 0 or step == end:
            save_checkpoint(ckpt_path, fit.state(config_dict, inputs.data.fingerprint))
    if bar is not None:
        bar.close()
    return grids


def _save_generator(fit: _Fit, inputs: _Inputs, config_dict: dict, seconds: float) -> None:
    """The EMA generator in the Stable Diffusion layout, then ``fit_record.json`` (last: complete)."""
    cfg, out = fit.cfg, Path(fit.cfg.output)
    gen = fit.ema_generator()
    gen.save_pretrained(out)
    data = inputs.data
    write_fit_record(out, FitRecord(
        method="scratch",
        data=FitData(path=cfg.data.path, fingerprint=data.fingerprint, num_images=len(data),
                     class_names=list(data.class_names)),
        prompts=inputs.prompts, prompt_template=cfg.prompt_template, vocabulary=inputs.vocabulary,
        steps=len(fit.losses), seed=cfg.train.seed, seconds=round(seconds, 1),
        builder_settings={"generator.path": str(out),
                          "generator.attention_resolution": cfg.model.capture_resolution,
                          "generator.prompt_template": cfg.prompt_template},
        weights_sha256=gen.weights_hash(), losses=[round(v, 6) for v in fit.losses],
        autoencoder_losses=[round(v, 6) for v in fit.ae_losses], config=config_dict))
    _logger.info("wrote generator %s (load with generator.path=%s generator.attention_resolution=%d)",
                 out, out, cfg.model.capture_resolution)


def write_grid(generator, class_names: list[str], prompts: list[str], cfg: FitConfig, path: Path) -> Path:
    """Render ``sample.per_class`` txt2img images per class with the builder's sampler; one row per class."""
    from PIL import Image

    from actgen.builder.config import GuidanceConfig
    from actgen.builder.sampler import GuidedSampler

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
    grid = ((torch.cat(rows, dim=-2).clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    scale = max(1, 64 // cfg.model.image_size)   # small images are enlarged (nearest) to be seen
    Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST).save(path)
    return path
