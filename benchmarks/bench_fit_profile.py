"""Where a generator fit's time goes: per-step time split into data, forward, backward, optimizer
and EMA, for one or more variants of a fit config, measured in the same process one after another.

Each variant builds its networks from the config (random weights, the config's seed), skips the
autoencoder fit (it runs once per fit and does not change a step's cost), runs ``--warmup``
steps, then times ``--steps`` steps phase by phase with ``time.perf_counter`` (the CPU runs
synchronously, so a phase's wall time is its cost). The step is the fit's own: the same
``draw_batch``, the same text-encoder call, loss, clipping, AdamW, LR schedule and EMA as
``actgen.fitting.fit``. The first variant is the baseline of the ratios.

    python benchmarks/bench_fit_profile.py                                    # fit-digits as configured
    python benchmarks/bench_fit_profile.py --variant base= --variant b32=train.batch_size=32 \\
        --variant threads1=@threads=1 --variant small="train.batch_size=32;model.block_out_channels=[16,32]"

A variant is ``NAME=OVERRIDE[;OVERRIDE...]``: config overrides as ``--set`` takes them, plus
``@threads=N`` (torch threads for that variant). Writes ``benchmarks/results/fit-profile.json``.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("data", "forward", "backward", "optimizer", "ema")


def profile(config: str, overrides: list[str], steps: int, warmup: int, threads: int) -> dict:
    from actgen.fitting.config import load_fit_config
    from actgen.fitting.fit import _Fit, _load_inputs
    from actgen.fitting.models import EMA, ema_decay, encode_all
    from actgen.fitting.train_step import DiffusionData, diffusion_loss, draw_batch

    torch.set_num_threads(threads)
    cfg = load_fit_config(config, ["train.progress=false", *overrides])
    tc = cfg.train
    inputs = _load_inputs(cfg)
    fit = _Fit(cfg, inputs, torch.device("cpu"))
    fit.vae.eval().requires_grad_(False)
    fit.ema = EMA(fit.trainable)
    data = DiffusionData(latents=encode_all(fit.vae, inputs.images, fit.device), labels=inputs.labels,
                         conditions=fit.class_ids, unconditional=fit.uncond_ids, alphas_cumprod=fit.abar)
    def encode(ids):
        return fit.text_encoder(ids)[0]
    params = [p for group in fit.opt.param_groups for p in group["params"]]
    times = {p: [] for p in PHASES}
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        batch = draw_batch(data, tc.batch_size, tc.prompt_dropout, fit.rng, hflip=tc.hflip, snr_gamma=tc.snr_gamma)
        t1 = time.perf_counter()
        with torch.autocast("cpu", dtype=fit.amp_dtype or torch.float32, enabled=fit.amp_dtype is not None):
            pred = fit.unet(batch["x_t"], batch["t"], encoder_hidden_states=encode(batch["cond"])).sample
        loss = diffusion_loss(pred, batch)
        t2 = time.perf_counter()
        fit.opt.zero_grad(set_to_none=True)
        loss.backward()
        t3 = time.perf_counter()
        if tc.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, tc.grad_clip)
        fit.opt.step()
        fit.lr_sched.step()
        t4 = time.perf_counter()
        fit.ema.update(fit.trainable, ema_decay(i, tc.ema_decay))
        t5 = time.perf_counter()
        if i >= warmup:
            for name, (a, b) in zip(PHASES, [(t0, t1), (t1, t2), (t2, t3), (t3, t4), (t4, t5)]):
                times[name].append(b - a)
    ms = {p: 1000 * statistics.median(v) for p, v in times.items()}
    step_ms = 1000 * statistics.median([sum(x) for x in zip(*times.values())])
    return {"config": config, "overrides": overrides, "threads": threads, "batch_size": tc.batch_size,
            "steps_configured": tc.steps, "median_ms": {k: round(v, 2) for k, v in ms.items()},
            "step_ms": round(step_ms, 2), "fit_steps_s": round(step_ms * tc.steps / 1000, 1),
            "share": {k: round(v / sum(ms.values()), 3) for k, v in ms.items()}}


def parse_variant(text: str) -> tuple[str, list[str], int | None]:
    name, _, rest = text.partition("=")
    overrides, threads = [], None
    for item in filter(None, rest.split(";")):
        if item.startswith("@threads="):
            threads = int(item.split("=", 1)[1])
        else:
            overrides.append(item)
    return name, overrides, threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="fit-digits")
    parser.add_argument("--variant", action="append", default=[], help="NAME=OVERRIDE;...;@threads=N")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "fit-profile.json")
    args = parser.parse_args()
    rows = []
    for text in args.variant or ["base="]:
        name, overrides, threads = parse_variant(text)
        row = profile(args.config, overrides, args.steps, args.warmup, threads or args.threads)
        rows.append({"variant": name, **row})
    base = rows[0]["step_ms"]
    print(f"{'variant':<14} {'threads':>7} {'batch':>5} " + " ".join(f"{p:>9}" for p in PHASES)
          + f" {'step ms':>8} {'fit s':>7} {'speed-up':>8}")
    for r in rows:
        r["speedup_vs_first"] = round(base / r["step_ms"], 3)
        print(f"{r['variant']:<14} {r['threads']:>7} {r['batch_size']:>5} "
              + " ".join(f"{r['median_ms'][p]:>9.2f}" for p in PHASES)
              + f" {r['step_ms']:>8.2f} {r['fit_steps_s']:>7.1f} {r['speedup_vs_first']:>7.2f}x")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": {"platform": platform.platform(), "cpu_count": torch.get_num_threads()},
                                     "torch": torch.__version__, "steps": args.steps, "variants": rows}, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
