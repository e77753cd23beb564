"""LoRA fine-tuning of an existing Stable Diffusion 1.x/2.x generator on a labeled data set.

The UNet's attention projections (``to_q``, ``to_k``, ``to_v``, ``to_out.0``) get low-rank
adapters through diffusers' peft integration (``unet.add_adapter``); only the adapters train,
on ``prompt_template.format(class_name)`` with prompt dropout (for classifier-free guidance),
against the generator's own noise schedule and prediction type. The output holds the adapter
alone (``unet_lora/``, diffusers' ``save_lora_adapter`` format) and the generator with the
adapter fused into the UNet, in the Stable Diffusion layout, so the builder loads it unchanged.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from actgen.builder.config import TINY
from actgen.builder.generator import DiffusersGenerator, build_tiny_generator
from actgen.shards.config import to_dict
from actgen.shards.fit_record import FitData, FitRecord, write_fit_record
from actgen.shards.runtime import resolve_device
from actgen.shards.sources import load_source

from .config import LoraFitConfig
from .data import class_prompts, load_images
from .train_step import DiffusionData, draw_batch, lr_factor, train_step

_logger = logging.getLogger(__name__)

ADAPTER_DIR = "unet_lora"


@dataclass(frozen=True)
class LoraResult:
    """What :func:`run_lora` returns: the output directory, the per-step losses, the adapter's
    parameter names (peft naming) and the seconds taken."""

    output: Path
    losses: list[float]
    adapter_parameters: list[str]
    seconds: float


def _load_base(cfg: LoraFitConfig, device: str) -> DiffusersGenerator:
    if cfg.base == TINY:
        return build_tiny_generator(seed=cfg.seed, device=device)
    return DiffusersGenerator.from_pretrained(cfg.base, device=device, dtype="float32",
                                              local_files_only=cfg.local_files_only, attention_resolution=None)


def run_lora(cfg: LoraFitConfig, base: Optional[DiffusersGenerator] = None) -> LoraResult:
    """Fine-tune ``cfg.base`` (or ``base``, already loaded) with LoRA; write the fused generator.

    The UNet trains in float32 (adapters are small; the frozen base could run in half precision on
    a GPU, but fp32 keeps the fused weights exact).

    Raises:
        ValueError: no UNet layer matches ``target_modules``.
        RuntimeError: ``device=cuda`` without a CUDA device.
    """
    from peft import LoraConfig

    t0 = time.time()
    device = resolve_device(cfg.device, key="device")
    gen = base if base is not None else _load_base(cfg, device)
    out = Path(cfg.output)

    # 1. Data at the generator's image size, prompts, latents (one posterior draw per image).
    data = load_source(cfg.data)
    names = list(data.class_names)
    prompts = class_prompts(cfg.prompt_template, names)
    images, labels = load_images(data, gen.image_size)
    rng = torch.Generator().manual_seed(cfg.seed)
    with torch.no_grad():
        latents = torch.cat([gen.encode_image(images[i:i + 32], [torch.Generator().manual_seed(cfg.seed + i + j)
                                                                  for j in range(len(images[i:i + 32]))]).cpu()
                             for i in range(0, len(images), 32)])
        cond = gen.embed_prompts(prompts).cpu()                                    # [K, L, D]
        uncond = gen.embed_unconditional(1).cpu()                                  # [1, L, D]
    batches = DiffusionData(latents=latents, labels=labels, conditions=cond, unconditional=uncond,
                            alphas_cumprod=gen.alphas_cumprod)

    # 2. Adapters on the UNet; only they train.
    unet = gen.unet
    unet.add_adapter(LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, init_lora_weights="gaussian",
                                target_modules=list(cfg.target_modules)))
    params = [p for p in unet.parameters() if p.requires_grad]
    adapter_names = [n for n, p in unet.named_parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"target_modules={list(cfg.target_modules)}: no UNet layer matched")
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg.steps, cfg.warmup_steps, 0.05))
    unet.train()

    # 3. Train: ε (or v) MSE against the generator's own schedule (no flips: none are drawn).
    losses: list[float] = []
    for step in range(cfg.steps):
        batch = draw_batch(batches, cfg.batch_size, cfg.prompt_dropout, rng, prediction_type=gen.prediction_type)
        losses.append(train_step(unet, batch, opt, sched, cfg.grad_clip, torch.device(device)))
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            _logger.info("lora step %d/%d  loss %.4f", step + 1, cfg.steps, losses[-1])
    unet.eval().requires_grad_(False)

    # 4. The adapter alone, then the generator with the adapter fused (the builder's layout).
    unet.save_lora_adapter(str(out / ADAPTER_DIR))
    unet.fuse_lora()
    unet.unload_lora()        # drop the peft layers; their merged base weights stay
    gen.weights_changed()
    gen.save_pretrained(out)
    write_fit_record(out, FitRecord(
        method="lora", base=cfg.base if base is None else gen.name,
        data=FitData(path=cfg.data.path, fingerprint=data.fingerprint, num_images=len(data), class_names=names),
        prompts=prompts, prompt_template=cfg.prompt_template, steps=cfg.steps, seed=cfg.seed,
        seconds=round(time.time() - t0, 1), adapter_parameters=len(adapter_names),
        weights_sha256=gen.weights_hash(), losses=[round(v, 6) for v in losses], config=to_dict(cfg)))
    return LoraResult(output=out, losses=losses, adapter_parameters=adapter_names, seconds=time.time() - t0)
