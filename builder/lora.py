"""LoRA fine-tuning of an existing Stable Diffusion 1.x/2.x generator on a labeled data set.

The UNet's attention projections (``to_q``, ``to_k``, ``to_v``, ``to_out.0``) get low-rank
adapters through diffusers' peft integration (``unet.add_adapter``); only the adapters train,
on ``prompt_template.format(class_name)`` with prompt dropout (for classifier-free guidance),
against the generator's own noise schedule and prediction type. The output holds the adapter
alone (``unet_lora/``, diffusers' ``save_lora_adapter`` format) and the generator with the
adapter fused into the UNet, in the Stable Diffusion layout, so the builder loads it unchanged.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, Sequence

import torch
import torch.nn.functional as F

from actgen.shards.config import load_structured, to_dict
from actgen.shards.sources import DataSource, load_source

from .fit import class_prompts, load_images, lr_factor
from .generator import DiffusersGenerator, build_tiny_generator

_logger = logging.getLogger(__name__)

ADAPTER_DIR = "unet_lora"
RECORD = "fit_record.json"
TINY = "tiny"


@dataclass(frozen=True)
class LoraFitConfig:
    """A LoRA fine-tune.

    Attributes:
        base: the generator to adapt: an SD 1.x/2.x directory, a hub id (with
            ``local_files_only: false``) or ``tiny`` (the random tiny generator; tests).
        data: the labeled data set.
        output: directory for the fused generator, the adapter and ``fit_record.json``.
        prompt_template: ``str.format`` template with one ``{}`` for the class name.
        rank, alpha: LoRA rank and scaling numerator (scale = alpha / rank).
        target_modules: UNet linear layers that get adapters.
        steps, batch_size, lr, warmup_steps, prompt_dropout, grad_clip, seed: the optimisation
            (AdamW on the adapters only; linear warmup, cosine to 5% of lr).
        device: ``auto`` = CUDA when available.
        local_files_only: never touch the network for a hub id.
        log_every: steps between log lines.
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
    lr: float = 1e-4
    warmup_steps: int = 50
    prompt_dropout: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    local_files_only: bool = True
    log_every: int = 50

    def __post_init__(self) -> None:
        def check(ok: bool, key: str, expected: str) -> None:
            if not ok:
                raise ValueError(f"config key '{key}' = {getattr(self, key)!r}: expected {expected}")

        check(bool(self.output), "output", "a directory for the fine-tuned generator")
        check(self.prompt_template.count("{}") == 1, "prompt_template", "a template with exactly one '{}'")
        check(self.rank >= 1, "rank", "an int >= 1")
        check(self.alpha > 0, "alpha", "a number > 0")
        check(bool(self.target_modules), "target_modules", "at least one module name")
        for key in ("steps", "batch_size", "log_every"):
            check(getattr(self, key) >= 1, key, "an int >= 1")
        check(self.lr > 0, "lr", "a number > 0")
        check(0 <= self.prompt_dropout <= 1, "prompt_dropout", "a number in [0, 1]")


def load_lora_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> LoraFitConfig:
    """Load a YAML config over the defaults, then apply ``key.sub=value`` overrides."""
    return load_structured(LoraFitConfig, path, overrides)


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
    """
    from peft import LoraConfig

    t0 = time.time()
    device = "cuda" if cfg.device == "auto" and torch.cuda.is_available() else ("cpu" if cfg.device == "auto" else cfg.device)
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
    abar = gen.alphas_cumprod
    unet.train()

    # 3. Train: ε (or v) MSE against the generator's own schedule.
    losses: list[float] = []
    for step in range(cfg.steps):
        b = cfg.batch_size
        idx = torch.randint(len(latents), (b,), generator=rng)
        drop = torch.rand(b, generator=rng) < cfg.prompt_dropout
        emb = torch.where(drop.view(b, 1, 1), uncond, cond[labels[idx]])          # [B, L, D]
        t = torch.randint(len(abar), (b,), generator=rng)
        noise = torch.randn(latents[idx].shape, generator=rng)
        a = abar[t].view(b, 1, 1, 1)
        x0 = latents[idx]
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        target = noise if gen.prediction_type == "epsilon" else a.sqrt() * noise - (1 - a).sqrt() * x0
        pred = unet(x_t.to(device), t.to(device), encoder_hidden_states=emb.to(device)).sample
        loss = F.mse_loss(pred.float(), target.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            _logger.info("lora step %d/%d  loss %.4f", step + 1, cfg.steps, losses[-1])
    unet.eval().requires_grad_(False)

    # 4. The adapter alone, then the generator with the adapter fused (the builder's layout).
    unet.save_lora_adapter(str(out / ADAPTER_DIR))
    unet.fuse_lora()
    unet.unload_lora()        # drop the peft layers; their merged base weights stay
    gen._hash = None          # weights changed
    gen.save_pretrained(out)
    record = {"format": "actgen-fit-record/1", "method": "lora", "base": cfg.base if base is None else gen.name,
              "data": {"path": cfg.data.path, "fingerprint": data.fingerprint, "num_images": len(data),
                       "class_names": names},
              "prompts": prompts, "prompt_template": cfg.prompt_template, "steps": cfg.steps, "seed": cfg.seed,
              "seconds": round(time.time() - t0, 1), "adapter_parameters": len(adapter_names),
              "weights_sha256": gen.weights_hash(), "losses": [round(v, 6) for v in losses], "config": to_dict(cfg)}
    tmp = out / (RECORD + ".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, out / RECORD)
    return LoraResult(output=out, losses=losses, adapter_parameters=adapter_names, seconds=time.time() - t0)
