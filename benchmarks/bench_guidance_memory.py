"""Peak memory of guided sampling with the full-size SD 2.1-base architecture, on the CPU.

The worst case for memory: batch 8, every row ``actgen`` with the adversarial term, so each of the
first K steps decodes x̂0 through the VAE and back-propagates it (and the UNet) for all 8 rows.
``adversarial_chunk`` decodes and back-propagates that many rows at a time; ``--chunks 8,1``
compares one decode of the whole batch (what the builder did before chunking) with one image at a
time (the paper code). Each setting runs in a fresh process and reports its peak resident memory
(``ru_maxrss``) above the memory held once the models are built.

The UNet runs at a reduced side (``--size``, default 128: latents 16x16), which scales the
activations but not the weights; at 512 the activation share grows 16x.

    python benchmarks/bench_guidance_memory.py                      # batch 8, size 128, chunks 8,4,1
    python benchmarks/bench_guidance_memory.py --size 96 --steps 2  # quicker

Writes ``benchmarks/results/guidance_memory.json``.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "guidance_memory.json"


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0     # Linux: KiB


def one(size: int, batch: int, steps: int, chunk: int) -> dict:
    """Run in this process: build, render one batch, report peaks."""
    import torch

    sys.path.insert(0, str(REPO / "benchmarks"))
    from bench_builder import NAMES, build_classifier, build_components

    from actgen.builder.config import GuidanceConfig
    from actgen.builder.sampler import GuidedSampler

    torch.set_num_threads(2)
    gen, _ = build_components("sd21", "cpu", torch.float32, size=size)
    classifier = build_classifier("sd21", "cpu")
    # x0 of a K-step guided schedule: all `steps` steps guided (the cost per guided step is what matters).
    cfg = GuidanceConfig(num_steps=steps, reference_steps=steps, guidance_steps=steps, adversarial_chunk=chunk)
    sampler = GuidedSampler(gen, cfg, classifier)
    names = [NAMES[i % len(NAMES)] for i in range(batch)]
    guides = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    # Warm-up allocations of the models' first forward are part of "models" (no grad).
    with torch.no_grad():
        gen.decode_latents(torch.zeros(1, *gen.latent_shape))
    base = _rss_mib()
    start = time.perf_counter()
    sampler.sample([f"a photo of {n}" for n in names], names, [i % 4 for i in range(batch)], list(range(batch)),
                   ["actgen"] * batch, adversarial=[True] * batch, guides=guides)
    return {"size": size, "batch": batch, "steps": steps, "adversarial_chunk": chunk,
            "models_mib": round(base), "peak_mib": round(_rss_mib()),
            "guidance_peak_mib": round(_rss_mib() - base), "seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=3, help="sampler steps, all of them guided")
    p.add_argument("--chunks", default="8,4,1", help="adversarial_chunk values; the batch size = no chunking")
    p.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)   # child process
    args = p.parse_args()
    if args.one is not None:
        print(json.dumps(one(args.size, args.batch, args.steps, args.one)))
        return
    rows = []
    for chunk in (int(c) for c in args.chunks.split(",")):
        out = subprocess.run([sys.executable, __file__, "--size", str(args.size), "--batch", str(args.batch),
                              "--steps", str(args.steps), "--one", str(chunk)], capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"chunk {chunk} failed:\n{out.stderr[-2000:]}")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"chunk {chunk}: {rows[-1]}", flush=True)
    base = rows[0]["guidance_peak_mib"]
    print(f"\nSD 2.1-base architecture, CPU, {args.size}x{args.size}, batch {args.batch}, every row adversarial")
    print(f"{'adversarial_chunk':>18} {'models MiB':>11} {'guidance peak MiB':>18} {'vs first':>9} {'s':>6}")
    for r in rows:
        print(f"{r['adversarial_chunk']:>18} {r['models_mib']:>11} {r['guidance_peak_mib']:>18} "
              f"{r['guidance_peak_mib'] / base:>9.2f} {r['seconds']:>6}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"rows": rows}, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
