"""The epoch loop: optimizer, LR schedule, EMA, AMP, channels_last, clipping, DDP, logging.

Inside an epoch the only host syncs are the log lines every ``log_interval`` steps (and, with
several processes, the preemption check at the same steps: :mod:`.preempt`): loss and accuracy
are summed on the device and read once per interval, and once at the epoch's end.
"""
from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Optional, Sequence

import torch
from torch import nn

from .config import OptimConfig, SchedConfig, TrainConfig
from .distributed import Runtime, all_reduce_sum
from .model import unwrap
from .task import Task

_logger = logging.getLogger(__name__)


def create_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """timm ``create_optimizer_v2`` with the config's settings."""
    from timm.optim import create_optimizer_v2

    kwargs = {} if cfg.eps is None else {"eps": cfg.eps}
    try:
        return create_optimizer_v2(model, opt=cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                   momentum=cfg.momentum, filter_bias_and_bn=not cfg.decay_norm_and_bias, **kwargs)
    except (ValueError, AssertionError) as e:  # timm asserts on unknown names
        raise ValueError(f"config key 'optim.opt' = {cfg.opt!r}: {e or 'unknown optimizer'}") from None


def create_scheduler(optimizer: torch.optim.Optimizer, cfg: SchedConfig, epochs: int, updates_per_epoch: int):
    """timm ``create_scheduler_v2``; per-step when ``cfg.step_on == 'step'``."""
    from timm.scheduler import create_scheduler_v2

    try:
        scheduler, _ = create_scheduler_v2(
            optimizer, sched=cfg.sched, num_epochs=epochs, decay_epochs=cfg.decay_epochs, decay_rate=cfg.decay_rate,
            min_lr=cfg.min_lr, warmup_lr=cfg.warmup_lr, warmup_epochs=cfg.warmup_epochs,
            step_on_epochs=cfg.step_on == "epoch", updates_per_epoch=updates_per_epoch)
    except (ValueError, AssertionError) as e:
        raise ValueError(f"config key 'sched.sched' = {cfg.sched!r}: {e or 'unknown scheduler'}") from None
    if scheduler is None:
        raise ValueError(f"config key 'sched.sched' = {cfg.sched!r}: not a timm scheduler")
    return scheduler


def autocast(device: torch.device, amp: str):
    """The autocast context for ``train.amp`` (a no-op for ``none``)."""
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=getattr(torch, amp))


@dataclass(frozen=True)
class EpochStats:
    """One epoch's training numbers, summed over ranks."""

    loss: float
    train_acc: float
    lr: float
    images: int
    synthetic_images: int
    steps: int
    seconds: float
    stopped_after: Optional[int] = None
    """Set when the epoch stopped early (preemption): the batches this rank has done."""
    carry: Optional[tuple[float, ...]] = None
    """With ``stopped_after``: this rank's sums of the epoch so far (loss, correct, images,
    seconds, batches), which the resumed epoch starts from."""

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")


class EpochLoop:
    """Trains one epoch at a time; owns the optimizer step, the LR schedule and the EMA.

    Args:
        task: the training task (model inside, DDP-wrapped when distributed).
        optimizer, scheduler: from :func:`create_optimizer` / :func:`create_scheduler`.
        cfg: the ``train`` section.
        optim: the ``optim`` section (clipping).
        step_on: ``sched.step_on``.
        updates_per_epoch: scheduler updates per epoch (batches of the initial real-only set);
            per-step progress is ``epoch + batch / len(loader)`` mapped onto that grid, so a
            growing synthetic pool does not stretch the schedule.
        rt: the process's runtime.
        ema: timm ``ModelEmaV3`` or None.
        on_log: called with (optimizer step, loss, learning rate) at each log line on rank 0.
    """

    def __init__(self, task: Task, optimizer: torch.optim.Optimizer, scheduler, cfg: TrainConfig,
                 optim: OptimConfig, step_on: str, updates_per_epoch: int, rt: Runtime, ema=None, on_log=None):
        self.task, self.optimizer, self.scheduler, self.ema = task, optimizer, scheduler, ema
        self.cfg, self.optim, self.step_on, self.updates_per_epoch, self.rt = cfg, optim, step_on, updates_per_epoch, rt
        self.scaler = torch.amp.GradScaler(rt.device.type) if cfg.amp == "float16" else None
        self.on_log = on_log        # on_log(optimizer step, loss, lr) at each log line (rank 0)
        self.optimizer_steps = 0

    def state_dict(self) -> dict:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "optimizer_steps": self.optimizer_steps,
        }

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        if self.scaler is not None:
            self.scaler.load_state_dict(state["scaler"])
        self.optimizer_steps = int(state["optimizer_steps"])

    def train_epoch(self, loader: Iterable, num_batches: int, epoch: int, num_epochs: int,
                    synthetic_images: int = 0, start: int = 0, carry: Optional[Sequence[float]] = None,
                    stop: Optional[Callable[[int], bool]] = None) -> EpochStats:
        """One pass over ``loader``: ``num_batches`` batches holding ``synthetic_images`` synthetic
        images on this rank (both known from the sampler, so counting them costs no sync).

        A resumed epoch passes ``start``, the first batch ``loader`` yields (it yields from
        there), and ``carry``, this rank's sums of the batches before it (``EpochStats.carry``;
        the sums go on from these values, so an epoch resumed on as many processes ends with the
        numbers of one never stopped). ``stop(optimizer_steps)`` is
        asked after every optimizer step; when it says yes the epoch ends there, with
        ``stopped_after`` and ``carry`` set (every rank must get the same answer).
        """
        device, cfg = self.rt.device, self.cfg
        model = self.task.model
        model.train()
        loss0, correct0, seen0, seconds0, batches0 = carry if carry is not None else (0.0, 0.0, 0, 0.0, 0)
        loss_sum = torch.tensor(loss0, dtype=torch.float32, device=device)
        correct = torch.tensor(correct0, dtype=torch.float32, device=device)
        interval_loss = torch.zeros((), device=device)
        seen = int(seen0)
        data_time = 0.0
        began = last_log = time.perf_counter()
        bar = self._progress(loader, num_batches, epoch, num_epochs)
        accum = cfg.grad_accum_steps
        end = time.perf_counter()
        stopped_after = None
        for i, (inputs, labels) in enumerate(bar, start=start):
            data_time += time.perf_counter() - end
            inputs = inputs.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            if cfg.channels_last:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            # A step's micro-batches: `accum` of them, fewer in the epoch's last step. Each one's
            # loss is divided by their number, so the gradients add up to their mean; DDP syncs
            # only at the last.
            first = (i // accum) * accum
            micro = min(accum, num_batches - first)
            last_of_step = i + 1 == first + micro
            with contextlib.nullcontext() if last_of_step else self.task.no_sync():
                with autocast(device, cfg.amp):
                    out = self.task(inputs, labels)
                self._backward(out["loss"] / micro if micro > 1 else out["loss"])
            if last_of_step:
                self._optimizer_step()
                self.optimizer_steps += 1
                if self.step_on == "step":
                    # Map progress through this epoch onto the fixed grid of updates_per_epoch.
                    upe = self.updates_per_epoch
                    self.scheduler.step_update(num_updates=epoch * upe + ((i + 1) * upe) // num_batches)
                if self.ema is not None:
                    self.ema.update(unwrap(model), step=self.optimizer_steps)
            batch_loss = out["loss"].detach()
            loss_sum += batch_loss
            interval_loss += batch_loss
            correct += (out["output"].detach().argmax(dim=-1) == labels).sum()
            seen += labels.shape[0]
            if (i + 1) % cfg.log_interval == 0 and self.rt.is_main:
                now = time.perf_counter()
                cur, avg = interval_loss.item() / cfg.log_interval, loss_sum.item() / (i + 1 - start)  # host sync
                interval_loss.zero_()
                rate = cfg.log_interval * labels.shape[0] * self.rt.world_size / max(now - last_log, 1e-9)
                _logger.info("epoch %d/%d [%d/%d] loss %.4f (%.4f) lr %.3e %.0f img/s data %.3fs", epoch, num_epochs,
                             i + 1, num_batches, cur, avg, self.lr, rate, data_time / (i + 1 - start))
                if hasattr(bar, "set_postfix_str"):
                    bar.set_postfix_str(f"loss {avg:.4f}", refresh=False)
                if self.on_log is not None:
                    self.on_log(self.optimizer_steps, cur, self.lr)
                last_log = now
            if last_of_step and stop is not None and stop(self.optimizer_steps):
                stopped_after = i + 1
                break
            end = time.perf_counter()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - began + seconds0
        if self.step_on == "epoch" and stopped_after is None:
            self.scheduler.step(epoch + 1)
        # One all-reduce (and host sync) for the epoch's totals; float64 keeps counts exact.
        done = (num_batches if stopped_after is None else stopped_after) - start + int(batches0)
        local = torch.tensor([seen, synthetic_images, seconds, done], dtype=torch.float64, device=device)
        mine = (float(loss_sum.item()), float(correct.item()), seen, seconds, done) if stopped_after is not None else None
        totals = all_reduce_sum(torch.cat([torch.stack([loss_sum, correct.float()]).double(), local]), self.rt).tolist()
        loss_total, correct_total, seen_total, synthetic_total, seconds_total, steps_total = totals
        return EpochStats(loss=loss_total / steps_total if steps_total else float("nan"),
                          train_acc=correct_total / seen_total if seen_total else float("nan"), lr=self.lr,
                          images=int(seen_total), synthetic_images=int(synthetic_total),
                          steps=int(steps_total) // self.rt.world_size, seconds=seconds_total / self.rt.world_size,
                          stopped_after=stopped_after, carry=mine)

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def _backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def _optimizer_step(self) -> None:
        """Clip, step and clear the gradients the step's micro-batches added up."""
        from timm.utils import dispatch_clip_grad

        clip = self.optim.clip_grad
        params = self.task.model.parameters
        if self.scaler is not None:
            if clip is not None:
                self.scaler.unscale_(self.optimizer)
                dispatch_clip_grad(params(), clip, mode=self.optim.clip_mode)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            if clip is not None:
                dispatch_clip_grad(params(), clip, mode=self.optim.clip_mode)
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def _progress(self, loader: Iterable, total: int, epoch: int, num_epochs: int):
        if not (self.cfg.progress and self.rt.is_main):
            return loader
        from tqdm.auto import tqdm

        # disable=None: tqdm turns itself off when stderr is not a terminal (logs, CI).
        return tqdm(loader, total=total, desc=f"epoch {epoch}/{num_epochs}", leave=False, disable=None,
                    dynamic_ncols=True)
