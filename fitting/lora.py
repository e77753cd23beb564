"""LoRA fine-tuning of an existing Stable Diffusion 1.x/2.x generator on a labeled data set.

The UNet's attention projections (``to_q``, ``to_k``, ``to_v``, ``to_out.0``) get low-rank
adapters through diffusers' peft integration (``unet.add_adapter``); only the adapters train,
on ``prompt_template.format(class_name)`` with prompt dropout (for classifier-free guidance),
against the generator's own noise schedule and prediction type. The output holds the adapter
alone (``unet_lora/``, diffusers' ``save_lora_adapter`` format) and the generator with the
adapter fused into the UNet, in the Stable Diffusion layout, so the builder loads it unchanged,
plus ``fit_record.json``.

Design:

* **Streaming.** Images are decoded and resized to the generator's side per micro-batch
  (:class:`~actgen.fitting.data.StreamedImages`, optionally in DataLoader workers) and encoded
  by the VAE there; nothing is held per data-set image but its label.
* **Precision.** The frozen UNet runs in ``precision`` (bf16/fp16 on a GPU) under autocast; the
  adapters and AdamW's state stay float32, fp16 adds a gradient scaler. The base's float32
  weights wait on the CPU and the adapter is fused into them, so the saved generator is float32.
* **Accumulation.** ``grad_accumulation`` micro-batches of ``batch_size`` make one step.
* **Exact resume.** Every sample's draws come from its own generator seeded by (seed, stream
  position), so the state to continue from is the step plus the adapters, the optimizer, the LR
  schedule and the scaler: ``checkpoints/lora.safetensors``, never unpickled
  (:func:`~actgen.fitting.checkpoint.save_tensor_checkpoint`).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import torch

from actgen.builder.config import TINY
from actgen.builder.generator import DiffusersGenerator
from actgen.builder.tiny import build_tiny_generator
from actgen.shards.config import to_dict
from actgen.shards.fit_record import FitData, FitRecord, write_fit_record
from actgen.shards.runtime import resolve_device
from actgen.shards.sources import load_source

from .checkpoint import check_resume, load_tensor_checkpoint, save_tensor_checkpoint
from .config import LoraFitConfig, lora_checkpoint_path
from .data import StreamedImages, class_prompts, sample_generator, stream_loader, to_unit_range
from .progress import IntervalLog, progress_bar
from .train_step import accumulated_step, draw_sample_batch, lr_factor

_logger = logging.getLogger(__name__)

ADAPTER_DIR = "unet_lora"
_ADAPTER = "adapter/"          # the adapter weights' prefix in the checkpoint
_STATE_FIELDS = ("step", "config", "fingerprint", "losses", "optimizer", "lr_scheduler", "scaler")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Keys that change how a fit reports and feeds itself, not what it computes: a resume may change them.
_FREE_ON_RESUME = ("num_workers", "log_every", "checkpoint_every", "progress")


@dataclass(frozen=True)
class LoraResult:
    """What :func:`run_lora` returns.

    Attributes:
        output: the output directory (holds the generator only when ``finished``).
        step: optimizer steps done.
        finished: all ``steps`` done and the generator written.
        losses: the per-step training loss (the mean over the step's micro-batches), from step 1.
        adapter_parameters: the adapter's parameter names (peft naming).
        precision: the dtype the frozen UNet and the forward pass ran in (``auto`` resolved).
        seconds: wall time of this call.
    """

    output: Path
    step: int
    finished: bool
    losses: list[float]
    adapter_parameters: list[str]
    precision: torch.dtype
    seconds: float


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """``precision`` (``auto``, ``fp32``, ``bf16``, ``fp16``) as the dtype to run in on ``device``.

    Raises:
        ValueError: ``fp16`` off CUDA (the CPU has no fp16 training path with a gradient scaler).
    """
    if precision == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(f"config key 'precision' = 'fp16' needs a CUDA device, the fit runs on {device.type}; "
                         f"use bf16 or fp32")
    return _DTYPES[precision]


def _load_base(cfg: LoraFitConfig, device: torch.device) -> DiffusersGenerator:
    # float32 always: the fit keeps the base's float32 weights to fuse the adapter into, and
    # casts only the frozen UNet to cfg.precision itself.
    if cfg.base == TINY:
        return build_tiny_generator(seed=cfg.seed, device=str(device))
    return DiffusersGenerator.from_pretrained(cfg.base, device=str(device), dtype="float32",
                                              local_files_only=cfg.local_files_only, attention_resolution=None)


class _LoraFit:
    """The adapted UNet, its optimisation and the progress of one fine-tune: what a checkpoint holds."""

    def __init__(self, cfg: LoraFitConfig, gen: DiffusersGenerator, device: torch.device, dtype: torch.dtype,
                 conditions: torch.Tensor, unconditional: torch.Tensor):
        from actgen.shards.runtime import require

        require("peft", "actgen-fit-generator --lora")
        from peft import LoraConfig

        self.cfg, self.gen, self.device, self.dtype = cfg, gen, device, dtype
        self.conditions, self.unconditional = conditions, unconditional        # [K, L, D], [1, L, D]
        self.amp_dtype = None if dtype == torch.float32 else dtype
        unet = self.unet = gen.unet
        # peft initialises the adapters from torch's global RNG: seed it, and leave the caller's as it was.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            unet.add_adapter(LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, init_lora_weights="gaussian",
                                        target_modules=list(cfg.target_modules)))
        self.adapter = {n: p for n, p in unet.named_parameters() if p.requires_grad}
        if not self.adapter:
            unet.unload_lora()
            raise ValueError(f"config key 'target_modules' = {list(cfg.target_modules)}: no UNet layer matched")
        # The frozen base in the low precision (half the memory, the fast kernels); its float32
        # weights wait on the CPU for the fuse at the end: fusing into bf16 weights would round the
        # whole UNet. The adapters stay float32, so their small updates are not rounded away.
        self.master: Optional[dict[str, torch.Tensor]] = None
        if dtype != torch.float32:
            frozen = {n: p for n, p in unet.named_parameters() if not p.requires_grad}
            self.master = {n: p.detach().to("cpu", copy=True) for n, p in frozen.items()}
            for p in frozen.values():
                p.data = p.data.to(dtype)
        self.opt = torch.optim.AdamW(list(self.adapter.values()), lr=cfg.lr, weight_decay=0.0)
        self.lr_sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: lr_factor(s, cfg.steps, cfg.warmup_steps, 0.05))
        self.scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
        self.step, self.losses = 0, []

    # -- checkpoint ---------------------------------------------------------------------------

    def state(self, config_dict: dict, fingerprint: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The checkpoint: the adapter's tensors, and the state (tensors and plain values)."""
        tensors = {_ADAPTER + n: p for n, p in self.adapter.items()}
        return tensors, {"step": self.step, "config": config_dict, "fingerprint": fingerprint,
                         "losses": self.losses, "optimizer": self.opt.state_dict(),
                         "lr_scheduler": self.lr_sched.state_dict(),
                         "scaler": self.scaler.state_dict() if self.scaler is not None else None}

    def restore(self, tensors: dict[str, torch.Tensor], state: dict[str, Any], path: Path) -> None:
        """Continue from a checkpoint (checked against this config and data already)."""
        saved = {n[len(_ADAPTER):]: t for n, t in tensors.items() if n.startswith(_ADAPTER)}
        mismatched = sorted(set(saved) ^ set(self.adapter)) or sorted(
            n for n in saved if saved[n].shape != self.adapter[n].shape)
        if mismatched:
            raise ValueError(f"{path}: its adapter does not fit this base's UNet (differs at {mismatched[:3]}, "
                             f"{len(mismatched)} in all); resume with the same base")
        with torch.no_grad():
            for n, p in self.adapter.items():
                p.copy_(saved[n])
        self.opt.load_state_dict(state["optimizer"])
        self.lr_sched.load_state_dict(state["lr_scheduler"])
        if self.scaler is not None:
            self.scaler.load_state_dict(state["scaler"])
        self.step, self.losses = int(state["step"]), [float(v) for v in state["losses"]]

    # -- training -----------------------------------------------------------------------------

    def train_one(self, micro_batches: Iterator) -> tuple[float, float]:
        """One optimizer step over ``grad_accumulation`` micro-batches -> (loss, seconds waiting for data)."""
        waited = [0.0]
        loss = accumulated_step(self.unet, self._batches(micro_batches, waited), self.cfg.grad_accumulation,
                                self.opt, self.lr_sched, self.cfg.grad_clip, self.device,
                                amp_dtype=self.amp_dtype, scaler=self.scaler)
        self.step += 1
        self.losses.append(loss)
        return loss, waited[0]

    def _batches(self, micro_batches: Iterator, waited: list[float]) -> Iterator[dict[str, torch.Tensor]]:
        """The step's micro-batches, each made only when the step asks for it (one micro-batch of
        images and latents is alive at a time)."""
        gen, cfg = self.gen, self.cfg
        for _ in range(cfg.grad_accumulation):
            t0 = time.time()
            images, labels, positions = next(micro_batches)       # [B, 3, S, S] uint8, [B], [B]
            waited[0] += time.time() - t0
            generators = [sample_generator(cfg.seed, int(p)) for p in positions]
            with torch.no_grad(), torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                                                 enabled=self.amp_dtype is not None):
                # The posterior draw comes first from each sample's generator, then draw_sample_batch's.
                x0 = gen.encode_image(to_unit_range(images.to(self.device)), generators)   # [B, 4, s, s] fp32
            yield draw_sample_batch(x0, labels, generators, self.conditions, self.unconditional,
                                    gen.alphas_cumprod, cfg.prompt_dropout, prediction_type=gen.prediction_type)

    # -- the end ------------------------------------------------------------------------------

    def fuse(self, out: Path) -> None:
        """Save the adapter alone, then fuse it into the float32 base and drop the peft layers."""
        from diffusers.utils import logging as diffusers_logging

        self.unet.eval().requires_grad_(False)
        # save_lora_adapter calls unet.to(dtype=None), a no-op on which diffusers warns that
        # "modules should be kept in float32: []": noise in every fit's log, so it is muted here.
        level = diffusers_logging.get_verbosity()
        diffusers_logging.set_verbosity_error()
        try:
            self.unet.save_lora_adapter(str(out / ADAPTER_DIR))
        finally:
            diffusers_logging.set_verbosity(level)
        self._restore_base()
        self.unet.fuse_lora()
        self.unet.unload_lora()        # drop the peft layers; their merged base weights stay
        self.gen.weights_changed()

    def detach(self) -> None:
        """Leave the base as it was (float32, no adapters): a stopped fit continues from its checkpoint."""
        self._restore_base()
        self.unet.unload_lora()
        self.unet.eval().requires_grad_(False)

    def _restore_base(self) -> None:
        if self.master is None:
            return
        with torch.no_grad():
            for n, p in self.unet.named_parameters():
                if n in self.master:
                    p.data = self.master[n].to(p.device)
        self.master = None


# -- the fine-tune --------------------------------------------------------------------------


def run_lora(cfg: LoraFitConfig, base: Optional[DiffusersGenerator] = None, resume: bool = False,
             stop_after: Optional[int] = None) -> LoraResult:
    """Fine-tune ``cfg.base`` (or ``base``, already loaded in float32) with LoRA; write the fused generator.

    Args:
        cfg: the fine-tune.
        base: the generator to adapt instead of loading ``cfg.base``; on ``cfg.device``, float32.
            Its UNet is changed in place when the fit finishes (the adapter fused), and left as it
            was when it stops early.
        resume: continue from ``<output>/checkpoints/lora.safetensors`` (same data, same config
            but for ``num_workers``, ``log_every``, ``checkpoint_every`` and ``progress``).
        stop_after: stop after this many steps in total (checkpointing), without writing the
            generator; for tests and time-boxed runs.

    Raises:
        FileExistsError: ``output`` holds a checkpoint and ``resume`` is false.
        ValueError: no UNet layer matches ``target_modules``; ``base`` is not float32 or not on
            ``device``; the checkpoint was written by another config, data set or base, or is not
            a LoRA checkpoint (FormatError).
        RuntimeError: ``device=cuda`` without a CUDA device.
    """
    t_start = time.time()
    out = Path(cfg.output)
    ckpt_path = lora_checkpoint_path(out)
    if ckpt_path.exists() and not resume:
        raise FileExistsError(f"{ckpt_path}: a LoRA fit already started here; pass resume=True (--resume) "
                              f"to continue it, or choose another output")
    device = torch.device(resolve_device(cfg.device, key="device"))
    dtype = resolve_precision(cfg.precision, device)
    config_dict = to_dict(cfg)

    # 1. The data set (nothing decoded yet) and the prompts.
    data = load_source(cfg.data)
    names = list(data.class_names)
    prompts = class_prompts(cfg.prompt_template, names)
    # 2. The checkpoint to continue from, checked against this config and data before any work.
    saved = None
    if resume and ckpt_path.exists():
        saved = load_tensor_checkpoint(ckpt_path, _STATE_FIELDS)
        state = saved[1]
        check_resume({**state, "config": _computing(state["config"])}, _computing(config_dict), data.fingerprint,
                     ckpt_path)
    # 3. The generator, the prompt embeddings, the adapters and their optimisation.
    gen = _check_base(base, device) if base is not None else _load_base(cfg, device)
    with torch.no_grad():
        conditions = gen.embed_prompts(prompts)                                   # [K, L, D]
        unconditional = gen.embed_unconditional(1)                                # [1, L, D]
    stream = StreamedImages(data, gen.image_size, cfg.seed)
    fit = _LoraFit(cfg, gen, device, dtype, conditions, unconditional)
    if saved is not None:
        fit.restore(*saved, ckpt_path)
        _logger.info("resumed %s at step %d/%d", ckpt_path, fit.step, cfg.steps)
    _logger.info("lora on %s: %d images, %d classes, streamed at %dx%d; %d adapter tensors (%s parameters); "
                 "%s on %s; %d x %d images a step", cfg.data.path, len(stream), len(names), gen.image_size,
                 gen.image_size, len(fit.adapter), f"{sum(p.numel() for p in fit.adapter.values()):,}",
                 str(dtype).removeprefix("torch."), device, cfg.batch_size, cfg.grad_accumulation)
    # 4. Train.
    end = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
    _train(fit, stream, end, config_dict, data.fingerprint, ckpt_path)
    # 5. The adapter, the fused generator (the builder's layout) and the record; or, stopped early,
    #    the base as it was.
    finished = fit.step >= cfg.steps
    if finished:
        fit.fuse(out)
        gen.save_pretrained(out)
        write_fit_record(out, FitRecord(
            method="lora", base=cfg.base if base is None else gen.name,
            data=FitData(path=cfg.data.path, fingerprint=data.fingerprint, num_images=len(data), class_names=names),
            prompts=prompts, prompt_template=cfg.prompt_template, steps=len(fit.losses), seed=cfg.seed,
            seconds=round(time.time() - t_start, 1), adapter_parameters=len(fit.adapter),
            weights_sha256=gen.weights_hash(), losses=[round(v, 6) for v in fit.losses], config=config_dict))
        _logger.info("wrote the fused generator and %s/ to %s", ADAPTER_DIR, out)
    else:
        fit.detach()
    return LoraResult(output=out, step=fit.step, finished=finished, losses=list(fit.losses),
                      adapter_parameters=list(fit.adapter), precision=dtype, seconds=time.time() - t_start)


def _computing(config: Any) -> Any:
    """The config without :data:`_FREE_ON_RESUME` (a checkpoint's config is compared on the rest)."""
    if not isinstance(config, dict):
        return config        # check_resume reports the mismatch
    return {k: v for k, v in config.items() if k not in _FREE_ON_RESUME}


def _check_base(base: DiffusersGenerator, device: torch.device) -> DiffusersGenerator:
    if base.dtype != torch.float32:
        raise ValueError(f"base generator {base.name!r} is loaded in {base.dtype}; pass it in float32 "
                         f"(config key 'precision' sets what the fit runs in)")
    if base.device.type != device.type:
        raise ValueError(f"base generator {base.name!r} is on {base.device}, config key 'device' resolves "
                         f"to {device}")
    return base


def _train(fit: _LoraFit, stream: StreamedImages, end: int, config_dict: dict, fingerprint: str,
           ckpt_path: Path) -> None:
    """Steps up to ``end``: log lines and checkpoints on their intervals (and at ``end``)."""
    cfg = fit.cfg
    if fit.step >= end:
        return
    per_step = cfg.batch_size * cfg.grad_accumulation
    loader = stream_loader(stream, start=fit.step * per_step, size=cfg.batch_size,
                           count=(end - fit.step) * cfg.grad_accumulation, num_workers=cfg.num_workers)
    micro_batches = iter(loader)
    bar = progress_bar(cfg.progress, fit.step, cfg.steps, desc="lora")
    log = IntervalLog("lora step", cfg.steps, per_step, _logger)
    fit.unet.train()
    try:
        while fit.step < end:
            loss, waited = fit.train_one(micro_batches)
            log.add(loss, waited)
            step = fit.step
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}")
            if step % cfg.log_every == 0 or step == end:
                log.line(step, fit.lr_sched.get_last_lr()[0])
            if step % cfg.checkpoint_every == 0 or step == end:
                save_tensor_checkpoint(ckpt_path, *fit.state(config_dict, fingerprint))
    finally:
        if bar is not None:
            bar.close()
        del micro_batches             # stops the loader's workers
