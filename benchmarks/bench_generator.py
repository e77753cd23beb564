"""Generator benchmark: quality of a fitted generator as a classification-accuracy score.

1. Fit a generator from scratch with ``actgen.fitting.fit.run`` (``--fit-config``, default the
   embedded digits), timed, with torch limited to ``--threads`` CPU threads.
2. Train a classifier on the real data with ``actgen.trainer.run.run`` (``--train-config``,
   ``synthetic.source=none``, a round at every epoch so the last epoch writes a bundle).
3. Render ``--per-class`` images per class with the builder's ``GuidedSampler`` (txt2img, CFG
   ``--cfg-scale``, ``--steps`` DDPM steps) from the generator as ``DiffusersGenerator.from_pretrained``
   loads it.
4. Classify them through the bundle's own evaluation transform; report per-class and mean
   recognition rate against chance (1 / classes).

    python benchmarks/bench_generator.py                                  # digits: fit + score
    python benchmarks/bench_generator.py --skip-fit --output runs/generators/digits
    python benchmarks/bench_generator.py --fit-config configs/fit-cifar10-5k.yaml \\
        --train-config configs/train-cifar10-5k.yaml --output runs/generators/cifar10-5k

Writes ``benchmarks/results/generator-<name>.json`` and a grid of the scored images next to it.
The builder and the trainer meet here only because a benchmark may use both.
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from actgen.shards.fit_record import read_fit_record

ROOT = Path(__file__).resolve().parents[1]


def fit(fit_config: Path, output: Path, overrides: list[str]) -> dict:
    from actgen.fitting.config import can_resume, load_fit_config
    from actgen.fitting.fit import run

    cfg = load_fit_config(fit_config, ["train.progress=false", *overrides], literal={"output": str(output)})
    t0 = time.time()
    result = run(cfg, resume=can_resume(output))
    return {"seconds": round(time.time() - t0, 1), "steps": result.step, "final_loss": result.losses[-1],
            "grids": [str(p) for p in result.grids]}


def train_classifier(train_config: Path, run_dir: Path, epochs: int | None,
                     overrides: list[str] = ()) -> tuple[Path, dict]:
    from actgen.trainer.config import load_config
    from actgen.trainer.run import run

    base = load_config(train_config, list(overrides))
    e = epochs or base.train.epochs
    cfg = load_config(train_config, [*overrides, "synthetic.source=none", f"train.epochs={e}", f"rounds.horizon={e}",
                                     f"rounds.merge_epoch={e}", "train.progress=false"], literal={"run_dir": str(run_dir)})
    bundle = run_dir / "rounds" / str(e - 1) / "checkpoint"
    summary_path = run_dir / "summary.json"
    if not (bundle.is_dir() and summary_path.exists()):
        run(cfg)
    return bundle, json.loads(summary_path.read_text())


def score(generator_dir: Path, bundle: Path, per_class: int, steps: int, cfg_scale: float, seed: int,
          batch: int, grid_path: Path, device: str = "cpu") -> dict:
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    from actgen.builder.generator import DiffusersGenerator
    from actgen.builder.sampler import GuidanceConfig, GuidedSampler
    from actgen.shards.bundle import load_classifier

    record = read_fit_record(generator_dir)
    names = record.data.class_names
    template = record.prompt_template
    gen = DiffusersGenerator.from_pretrained(
        str(generator_dir), device=device,
        attention_resolution=record.builder_settings["generator.attention_resolution"])
    sampler = GuidedSampler(gen, GuidanceConfig(num_steps=steps, reference_steps=steps, cfg_scale=cfg_scale))
    model, _ = load_classifier(bundle)
    model = model.to(device)
    transform = create_transform(**resolve_data_config(model=model), is_training=False)
    jobs = [(c, j) for c in range(len(names)) for j in range(per_class)]
    t0 = time.time()
    images, preds = [], []
    for i in range(0, len(jobs), batch):
        chunk = jobs[i:i + batch]
        with torch.no_grad():
            out = sampler.sample([template.format(names[c]) for c, _ in chunk], [names[c] for c, _ in chunk],
                                 [c for c, _ in chunk], [seed + c * per_class + j for c, j in chunk],
                                 ["txt2img"] * len(chunk)).images
        pil = [Image.fromarray(((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy())
               for x in out]
        with torch.no_grad():
            logits = model(torch.stack([transform(p) for p in pil]).to(device))
        images += pil
        preds += logits.argmax(1).tolist()
    render_s = time.time() - t0
    labels = np.array([c for c, _ in jobs])
    preds = np.array(preds)
    per_class_rate = {names[c]: float((preds[labels == c] == c).mean()) for c in range(len(names))}
    _save_grid(images, len(names), per_class, grid_path)
    return {"per_class": per_class_rate, "mean": float((preds == labels).mean()), "chance": 1 / len(names),
            "images": len(jobs), "render_seconds": round(render_s, 1), "grid": str(grid_path),
            "confusion": _confusion(labels, preds, len(names))}


def _confusion(labels: np.ndarray, preds: np.ndarray, k: int) -> list[list[int]]:
    m = np.zeros((k, k), dtype=int)
    np.add.at(m, (labels, preds), 1)
    return m.tolist()


def _save_grid(images: list, rows: int, cols: int, path: Path) -> None:
    from PIL import Image

    w, h = images[0].size
    scale = max(1, 32 // w)
    grid = Image.new("RGB", (cols * w * scale, rows * h * scale))
    for i, im in enumerate(images):
        grid.paste(im.resize((w * scale, h * scale), Image.NEAREST), ((i % cols) * w * scale, (i // cols) * h * scale))
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fit-config", type=Path, default=ROOT / "configs/fit-digits.yaml")
    p.add_argument("--train-config", type=Path, default=ROOT / "configs/train-digits.yaml")
    p.add_argument("--output", type=Path, default=ROOT / "runs/generators/digits", help="generator directory")
    p.add_argument("--classifier-dir", type=Path, default=None, help="trainer run dir (default: OUTPUT-classifier)")
    p.add_argument("--name", default=None, help="result name (default: the output directory's name)")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="fit config override")
    p.add_argument("--skip-fit", action="store_true", help="score the generator already in --output")
    p.add_argument("--epochs", type=int, default=None, help="classifier epochs (default: the train config's)")
    p.add_argument("--per-class", type=int, default=20)
    p.add_argument("--steps", type=int, default=25, help="DDPM sampling steps")
    p.add_argument("--cfg-scale", type=float, default=3.0)
    p.add_argument("--seed", type=int, default=10_000, help="first image seed (unlike the fit's grids)")
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="rendering and scoring device (cpu, cuda)")
    p.add_argument("--train-set", action="append", default=[], metavar="KEY=VALUE",
                   help="classifier train config override (e.g. data.source.path=...)")
    p.add_argument("--results-dir", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    for noisy in ("PIL", "datasets", "timm", "diffusers", "transformers", "fsspec", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    name = args.name or args.output.name
    result: dict = {"name": name, "threads": args.threads, "machine": platform.processor() or platform.machine(),
                    "torch": torch.__version__}
    if not args.skip_fit:
        result["fit"] = fit(args.fit_config, args.output, args.overrides)
    record = read_fit_record(args.output)
    result["fit_record"] = {"seconds": record.seconds, "steps": record.steps, "seed": record.seed,
                            "final_loss": record.losses[-1], "fingerprint": record.data.fingerprint}
    clf_dir = args.classifier_dir or args.output.parent / f"{args.output.name}-classifier"
    bundle, summary = train_classifier(args.train_config, clf_dir, args.epochs, args.train_set)
    result["classifier"] = {"bundle": str(bundle), "test_acc": summary.get("final", {}).get("test_acc")}
    results_dir = args.results_dir
    results_dir.mkdir(parents=True, exist_ok=True)
    result["score"] = score(args.output, bundle, args.per_class, args.steps, args.cfg_scale, args.seed,
                            args.batch, results_dir / f"generator-{name}.png", args.device)
    result["sampling"] = {"per_class": args.per_class, "steps": args.steps, "cfg_scale": args.cfg_scale}
    (results_dir / f"generator-{name}.json").write_text(json.dumps(result, indent=1))
    s = result["score"]
    print(f"\n{name}: fit {result['fit_record']['seconds']:.0f} s ({result['fit_record']['steps']} steps, "
          f"{args.threads} threads); classifier test acc {result['classifier']['test_acc']}")
    print(f"{'class':>14}  recognised")
    for cls, rate in s["per_class"].items():
        print(f"{cls:>14}  {rate:6.1%}")
    print(f"{'mean':>14}  {s['mean']:6.1%}   (chance {s['chance']:.1%}, {s['mean'] / s['chance']:.1f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
