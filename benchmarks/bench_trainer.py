"""Trainer benchmark: actgen-train's loop against a bare timm loop, and the real-only baseline.

Three throughput runs over the same model (timm ``resnet18``, 32x32), data (the CIFAR-10 subset in
``../shared/data/cifar10-5k``, same split, same augmentation), batch size (128) and threads (2):

* ``bare``: a loop written directly on timm and torch: a Dataset over the HF rows, a DataLoader,
  SGD, cross-entropy, timm's cosine scheduler stepped per update. Nothing else.
* ``actgen``: ``actgen.trainer.run.run`` with the benchmark config (real images only).
* ``actgen+synthetic``: the same, with a synthetic data set waiting for round 0, mixed in at a
  fixed fraction of 0.5, so every batch after the first epoch is half real, half read from shards.

Each configuration runs ``--epochs`` epochs, ``--repeats`` times, interleaved so that the
machine's drift hits all of them alike; throughput is the training phase alone (evaluation and
round output excluded), the median over every epoch but each run's first. Overhead is the ratio
to ``bare`` measured in this same run.

The accuracy part trains the real-only baseline (synthetic off, same split and seeds as the
config) and reports test accuracy, the number later studies compare against.

    python benchmarks/bench_trainer.py                 # both parts
    python benchmarks/bench_trainer.py --skip-accuracy # throughput only

Prints a table and writes ``benchmarks/results/trainer.json``.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "cifar10-5k" / "train.parquet"
CONFIG = REPO / "configs" / "train-cifar10-5k.yaml"


def _overrides(data: Path, run_dir: Path, epochs: int, extra: list[str]) -> list[str]:
    return [f"data.source.path={data}", f"run_dir={run_dir}", f"train.epochs={epochs}",
            "train.progress=false", "train.device=cpu"] + extra


# ----------------------------------------------------------------------------------- bare loop
class _Rows(torch.utils.data.Dataset):
    """The HF rows at ``indices`` through ``transform``: the least a timm user would write."""

    def __init__(self, hf, indices, image_column, label_column, transform):
        self.hf, self.indices, self.transform = hf, np.asarray(indices), transform
        self.image_column, self.label_column = image_column, label_column

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        row = self.hf[int(self.indices[i])]
        return self.transform(row[self.image_column].convert("RGB")), row[self.label_column]


def bare_loop(cfg, images, train_idx: np.ndarray, epochs: int) -> list[float]:
    """Images/s per epoch of a plain timm training loop with the config's model, data, augmentation
    and optimizer settings."""
    import timm
    from timm.scheduler import CosineLRScheduler
    from torchvision import transforms as T

    torch.manual_seed(cfg.train.seed)
    size = cfg.input.image_size
    transform = T.Compose([T.Resize((size, size)), T.RandomCrop(size, padding=cfg.input.pad),
                           T.RandomHorizontalFlip(cfg.input.hflip), T.ToTensor(),
                           T.Normalize(cfg.input.mean, cfg.input.std)])
    src = cfg.data.source
    dataset = _Rows(images.dataset, train_idx, src.image_column, src.label_column, transform)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=cfg.loader.batch_size, shuffle=True, drop_last=cfg.loader.drop_last,
        num_workers=cfg.loader.num_workers, persistent_workers=cfg.loader.num_workers > 0)
    model = timm.create_model(cfg.model.name, num_classes=len(images.class_names))
    opt = torch.optim.SGD(model.parameters(), lr=cfg.optim.lr, momentum=cfg.optim.momentum,
                          weight_decay=cfg.optim.weight_decay)
    sched = CosineLRScheduler(opt, t_initial=epochs * len(loader), lr_min=cfg.sched.min_lr)
    rates, step = [], 0
    for _ in range(epochs):
        model.train()
        seen, t0 = 0, time.perf_counter()
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            sched.step_update(step)
            seen += x.shape[0]
        rates.append(seen / (time.perf_counter() - t0))
    return rates


# ------------------------------------------------------------------------------- actgen loop
def write_round0_shards(directory: Path, images, indices: np.ndarray, class_names: list[str]) -> int:
    """A synthetic data set where round 0's shards are expected: real training images with their
    colours inverted, PNG-encoded, with full provenance (what actgen-build writes, minus the
    diffusion model)."""
    from PIL import ImageOps

    from actgen.shards import __version__
    from actgen.shards.samples import SyntheticSample, make_key
    from actgen.shards.writer import ShardSetWriter

    with ShardSetWriter(directory, class_names, total=len(indices), num_shards=4,
                        created={"tool": "benchmarks/bench_trainer.py"}) as writer:
        for n, i in enumerate(indices):
            i = int(i)
            label = images.label(i)
            writer.write(SyntheticSample(
                key=make_key(0, images.sample_id(i), n, 0), image=ImageOps.invert(images.image(i)), label=label,
                provenance={"class_name": class_names[label], "source_id": images.sample_id(i),
                            "generator": {"id": "invert"}, "prompt": "", "seed": 0, "guidance": {},
                            "checkpoint_sha256": "0" * 64, "round": 0, "tool_version": __version__}))
    return len(indices)


def actgen_loop(data: Path, epochs: int, synthetic: bool, workdir: Path, n_synthetic: int = 2048) -> list[float]:
    from actgen.shards.sources import load_source
    from actgen.trainer.config import load_config
    from actgen.trainer.data import split_indices
    from actgen.trainer.run import run

    tag = f"{'syn' if synthetic else 'real'}-{time.monotonic_ns()}"
    run_dir, shards_dir = workdir / f"actgen-{tag}", workdir / f"shards-{tag}"
    if synthetic:
        # The run directory must not exist before the run, so round 0's data set waits beside it.
        extra = [f"synthetic.pattern={shards_dir}/round{{round}}", "rounds.enabled=true", "rounds.every=1", "rounds.horizon=1", f"rounds.merge_epoch={epochs}",
                 "synthetic.source=shards", "synthetic.mixing=fraction", "synthetic.fraction=0.5",
                 "synthetic.on_missing=error"]
    else:
        extra = ["rounds.enabled=false", "synthetic.source=none", f"rounds.merge_epoch={epochs}"]
    cfg = load_config(CONFIG, _overrides(data, run_dir, epochs, extra))
    if synthetic:
        images = load_source(cfg.data.source)
        split = split_indices(images.labels(), cfg.data.holdout_fraction, cfg.data.test_fraction, cfg.data.split_seed)
        picked = np.random.default_rng(0).choice(split.train, size=n_synthetic, replace=False)
        write_round0_shards(shards_dir / "round0", images, picked, images.class_names)
    run(cfg)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    if synthetic:
        assert all(r["synthetic_seen"] > 0 for r in rows[1:]), "the synthetic pool was not used"
    return [r["images_per_s"] for r in rows]


# -------------------------------------------------------------------------------- accuracy
def accuracy_baseline(data: Path, epochs: int, workdir: Path) -> dict:
    from actgen.trainer.config import load_config
    from actgen.trainer.run import run

    run_dir = workdir / "baseline"
    cfg = load_config(CONFIG, _overrides(data, run_dir, epochs, ["synthetic.source=none", "rounds.enabled=false"]))
    t0 = time.perf_counter()
    summary = run(cfg)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {"epochs": epochs, "seed": cfg.train.seed, "split_seed": cfg.data.split_seed,
            "holdout_fraction": cfg.data.holdout_fraction, "test_fraction": cfg.data.test_fraction,
            "merge_epoch": "half way (paper)", "final_test_acc": rows[-1]["test_acc"],
            "best_test_acc": max(r["test_acc"] for r in rows), "test_acc_per_epoch": [r["test_acc"] for r in rows],
            "wall_s": round(time.perf_counter() - t0, 1), "summary_final": summary.get("final")}


# ------------------------------------------------------------------------------------ main
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="cifar10-5k parquet (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=4, help="epochs per throughput run (first one is warm-up)")
    p.add_argument("--repeats", type=int, default=2, help="interleaved repeats of each configuration")
    p.add_argument("--accuracy-epochs", type=int, default=30, help="epochs of the real-only baseline")
    p.add_argument("--skip-accuracy", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "trainer.json")
    args = p.parse_args(argv)
    if not args.data.is_file():
        print(f"{args.data}: not found; this benchmark needs ../shared/data/cifar10-5k", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)

    from actgen.shards.sources import load_source
    from actgen.trainer.config import load_config
    from actgen.trainer.data import split_indices

    results: dict = {"machine": {"python": platform.python_version(), "torch": torch.__version__,
                                 "threads": args.threads, "cpu": platform.processor() or platform.machine()},
                     "epochs": args.epochs, "repeats": args.repeats}
    with tempfile.TemporaryDirectory(prefix="actgen-bench-") as tmp:
        work = Path(tmp)
        cfg = load_config(CONFIG, _overrides(args.data, work / "unused", args.epochs, []))
        images = load_source(cfg.data.source)
        split = split_indices(images.labels(), cfg.data.holdout_fraction, cfg.data.test_fraction, cfg.data.split_seed)
        rates: dict[str, list[float]] = {"bare": [], "actgen": [], "actgen+synthetic": []}
        for rep in range(args.repeats):
            for name in rates:
                t0 = time.perf_counter()
                if name == "bare":
                    r = bare_loop(cfg, images, split.train, args.epochs)
                else:
                    r = actgen_loop(args.data, args.epochs, name == "actgen+synthetic", work)
                rates[name] += r[1:]  # drop each run's warm-up epoch
                print(f"repeat {rep} {name:<17} {' '.join(f'{x:7.1f}' for x in r)} img/s "
                      f"({time.perf_counter() - t0:.0f} s)", flush=True)
        base = statistics.median(rates["bare"])
        table = []
        for name, rs in rates.items():
            med = statistics.median(rs)
            table.append({"loop": name, "images_per_s": round(med, 1), "epochs_measured": len(rs),
                          "min": round(min(rs), 1), "max": round(max(rs), 1),
                          "overhead_vs_bare_pct": round(100.0 * (base / med - 1.0), 1)})
        results["throughput"] = table
        results["train_images"] = int(len(split.train))
        if not args.skip_accuracy:
            results["accuracy_baseline"] = accuracy_baseline(args.data, args.accuracy_epochs, work)

    print(f"\n{'loop':<18}{'img/s (median)':>15}{'min':>8}{'max':>8}{'overhead vs bare':>18}")
    for row in results["throughput"]:
        print(f"{row['loop']:<18}{row['images_per_s']:>15.1f}{row['min']:>8.1f}{row['max']:>8.1f}"
              f"{row['overhead_vs_bare_pct']:>17.1f}%")
    if "accuracy_baseline" in results:
        a = results["accuracy_baseline"]
        print(f"\nreal-only baseline, {a['epochs']} epochs, seed {a['seed']}, split seed {a['split_seed']}: "
              f"final test acc {100 * a['final_test_acc']:.2f}%, best {100 * a['best_test_acc']:.2f}% "
              f"({a['wall_s']:.0f} s)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
